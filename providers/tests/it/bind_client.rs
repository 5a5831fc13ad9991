//! RFC 2136 clients of the test's BIND: the harness exposes the server's
//! address and TSIG key only, since it does not depend on this crate.

use mxkeys_providers::rfc2136::{Rfc2136, Rfc2136Config, TsigAlgorithm};
use mxkeys_testsupport::bind::{Bind, KEY_NAME};

/// A provider of this crate for a [`Bind`].
pub trait BindClient {
    /// The configuration for the zone `example.test`, signed with
    /// [`KEY_NAME`].
    fn config(&self) -> Rfc2136Config;

    /// A provider for the zone `example.test`.
    fn provider(&self) -> Rfc2136 {
        Rfc2136::new(self.config()).unwrap()
    }

    /// A provider that finds the zone of each name by SOA lookup.
    fn provider_any_zone(&self) -> Rfc2136 {
        Rfc2136::new(Rfc2136Config {
            zone: None,
            ..self.config()
        })
        .unwrap()
    }
}

impl BindClient for Bind {
    fn config(&self) -> Rfc2136Config {
        Rfc2136Config {
            server: self.addr(),
            zone: Some("example.test".to_owned()),
            tsig_name: KEY_NAME.to_owned(),
            tsig_algorithm: TsigAlgorithm::HmacSha256,
            tsig_secret: self.secret.clone(),
        }
    }
}

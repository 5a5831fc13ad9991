//! The `[acme]` table (the CA and the account) and `type = "acme"` sources
//! (what to order and how to prove control).
//!
//! Pure: names, challenges and directories are checked here; the account
//! and orders live in `crate::acme`. Rules: a source's name is a safe
//! directory name, wildcards need dns-01, a dns-01 source names a
//! `[dns.NAME]` table that exists, secrets are named (a file or a
//! variable), never held.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::dns::DnsProvider;
use super::raw::{RawAcme, RawAcmeSource};
use super::source::{SourceConfig, SourceKind};
use super::value::{Secret, at, dns_names, parse_listen};
use super::{ConfigError, Context};
use crate::names::DnsName;

/// A `type = "acme"` source: what to order and how to prove control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSource {
    /// Its state lives in `state_dir/acme/NAME/`.
    pub name: String,
    pub domains: Vec<DnsName>,
    pub challenge: Challenge,
    pub key_type: AcmeKeyType,
    /// Keep the private key across renewals (DANE pins it).
    pub reuse_key: bool,
    pub dir: crate::state::AcmeSourceDir,
    /// The `[target.dane]` targets whose every domain this source's names
    /// cover: the source keeps a standby key for them and reuses its key on
    /// renewal (issue 14). Filled by [`link_dane_targets`].
    pub dane_targets: Vec<String>,
    /// Ordered once for every host of a `[cluster]`: the leader of job
    /// `acme/NAME` orders and stores the result (key sealed) in the
    /// cluster; every host installs it (`crate::cluster`).
    pub shared: bool,
}

/// How an `acme` source proves control of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// The built-in responder, listening only while an order runs.
    Http01Listen(std::net::SocketAddr),
    /// Token files written where a web server already serves them.
    Http01Webroot(PathBuf),
    /// TXT records through a `[dns.NAME]` provider.
    Dns01 { provider: String },
}

/// The key of certificates an `acme` source orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AcmeKeyType {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl AcmeKeyType {
    /// Whether a certificate's key is of this type.
    pub fn matches(self, key: crate::cert::KeyType) -> bool {
        use crate::cert::{Curve, KeyType};
        matches!(
            (self, key),
            (AcmeKeyType::EcdsaP256, KeyType::Ecdsa(Curve::P256))
                | (AcmeKeyType::EcdsaP384, KeyType::Ecdsa(Curve::P384))
                | (AcmeKeyType::Rsa2048, KeyType::Rsa { bits: 2048 })
                | (AcmeKeyType::Rsa3072, KeyType::Rsa { bits: 3072 })
                | (AcmeKeyType::Rsa4096, KeyType::Rsa { bits: 4096 })
        )
    }
}

/// The `[acme]` table: the CA and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// The directory URL (aliases resolved).
    pub directory: String,
    pub email: Option<String>,
    /// Roots to trust for the ACME server, besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// External account binding: key id and where its HMAC key is.
    pub eab: Option<(String, Secret)>,
    pub profile: Option<String>,
}

/// Let's Encrypt's production directory, the default.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Validates an `acme` source; `entry` ("source #2") starts its errors.
pub(super) fn source(
    raw: RawAcmeSource,
    state_dir: &crate::state::StateDir,
    entry: &str,
    ctx: &Context,
) -> Result<AcmeSource, ConfigError> {
    let RawAcmeSource {
        name,
        domains,
        challenge,
        http_listen,
        webroot,
        dns,
        key_type,
        reuse_key,
        shared,
    } = raw;
    let fail =
        |m: &dyn std::fmt::Display| ctx.error(format_args!("{entry}: acme source {name:?}: {m}"));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(fail(
            &"key `name`: letters, digits, '-', '_' and '.' only (it names a directory)",
        ));
    }
    if domains.is_empty() {
        return Err(fail(&"key `domains`: at least one name"));
    }
    let domains = dns_names(&domains).map_err(|e| fail(&at("domains")(e)))?;
    let challenge = match (challenge.as_str(), http_listen, webroot, dns) {
        ("http-01", Some(_), Some(_), _) => {
            return Err(fail(&"set `http_listen` or `webroot`, not both"));
        }
        ("http-01", _, _, Some(_)) => {
            return Err(fail(&"key `dns` goes with challenge = \"dns-01\""));
        }
        ("http-01", None, Some(root), None) => Challenge::Http01Webroot(ctx.abs(&root)),
        ("http-01", listen, None, None) => {
            let listen = listen.as_deref().unwrap_or("0.0.0.0:80");
            Challenge::Http01Listen(
                parse_listen(listen, "0.0.0.0:80").map_err(|e| fail(&at("http_listen")(e)))?,
            )
        }
        ("dns-01", None, None, Some(provider)) => Challenge::Dns01 { provider },
        ("dns-01", _, _, None) => {
            return Err(fail(
                &"challenge = \"dns-01\" needs `dns`, the name of a [dns.NAME] provider",
            ));
        }
        ("dns-01", _, _, Some(_)) => {
            return Err(fail(
                &"`http_listen` and `webroot` go with challenge = \"http-01\"",
            ));
        }
        (other, _, _, _) => {
            return Err(fail(&format_args!(
                "key `challenge`: {other:?} is not \"http-01\" or \"dns-01\""
            )));
        }
    };
    if !matches!(challenge, Challenge::Dns01 { .. })
        && let Some(w) = domains.iter().find(|d| d.is_wildcard())
    {
        return Err(fail(&format_args!(
            "{w} is a wildcard: CAs issue wildcards only through dns-01"
        )));
    }
    let dir = state_dir.acme_source(&name);
    Ok(AcmeSource {
        name,
        domains,
        challenge,
        key_type,
        reuse_key,
        dir,
        dane_targets: Vec::new(),
        shared,
    })
}

/// Links every `acme` source to the DANE targets it can serve: those whose
/// every domain one of its names covers (a wildcard covers one label).
pub(super) fn link_dane_targets(sources: &mut [SourceConfig], targets: &[super::Target]) {
    for s in sources {
        if let SourceKind::Acme(a) = &mut s.kind {
            a.dane_targets = targets
                .iter()
                .filter(|t| t.dane.is_some())
                .filter(|t| {
                    t.domains.iter().all(|want| {
                        a.domains
                            .iter()
                            .any(|have| crate::names::covers(have.as_str(), want).is_some())
                    })
                })
                .map(|t| t.name.clone())
                .collect();
        }
    }
}

/// Every dns-01 source names a `[dns.NAME]` table that exists.
pub(super) fn check_providers(
    sources: &[SourceConfig],
    dns: &BTreeMap<String, DnsProvider>,
    ctx: &Context,
) -> Result<(), ConfigError> {
    for s in sources {
        if let SourceKind::Acme(AcmeSource {
            name,
            challenge: Challenge::Dns01 { provider },
            ..
        }) = &s.kind
            && !dns.contains_key(provider)
        {
            return Err(ctx.error(format!(
                "acme source {name:?}: key `dns`: no [dns.{provider}] table"
            )));
        }
    }
    Ok(())
}

/// Validates the `[acme]` table (defaults when absent).
pub(super) fn account(raw: RawAcme, ctx: &Context) -> Result<AcmeAccount, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[acme]: {m}"));
    let directory = match raw.directory.as_deref() {
        None | Some("letsencrypt") => LETSENCRYPT.to_owned(),
        Some("letsencrypt-staging") => LETSENCRYPT_STAGING.to_owned(),
        Some(url) if url.starts_with("https://") => url.to_owned(),
        Some(other) => {
            return Err(fail(&format_args!(
                "key `directory`: {other:?} is not an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
            )));
        }
    };
    let eab = match (raw.eab_kid, raw.eab_hmac_key_file, raw.eab_hmac_key_env) {
        (None, None, None) => None,
        (Some(kid), Some(f), None) => Some((kid, Secret::File(ctx.abs(&f)))),
        (Some(kid), None, Some(e)) => Some((kid, Secret::Env(e))),
        (None, _, _) => return Err(fail(&"`eab_hmac_key_file`/`_env` needs `eab_kid`")),
        (Some(_), None, None) => {
            return Err(fail(
                &"`eab_kid` needs `eab_hmac_key_file` or `eab_hmac_key_env`",
            ));
        }
        (Some(_), Some(_), Some(_)) => {
            return Err(fail(
                &"set only one of `eab_hmac_key_file` and `eab_hmac_key_env`",
            ));
        }
    };
    if let Some(email) = &raw.email
        && (!email.contains('@') || email.contains(char::is_whitespace))
    {
        return Err(fail(&format_args!(
            "key `email`: {email:?} is not an e-mail address"
        )));
    }
    Ok(AcmeAccount {
        directory,
        email: raw.email,
        ca_bundle: raw.ca_bundle.as_deref().map(|p| ctx.abs(p)),
        eab,
        profile: raw.profile,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::{AcmeKeyType, Challenge, LETSENCRYPT_STAGING};
    use std::path::PathBuf;
    #[test]
    fn acme_sources_and_account() {
        let c = parse(
            "[acme]\ndirectory = \"letsencrypt-staging\"\nemail = \"admin@example.com\"\nca_bundle = \"ca.pem\"\nprofile = \"tlsserver\"\n[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"T\"\n[[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.com\", \"*.example.com\"]\nchallenge = \"dns-01\"\ndns = \"cf\"\nkey_type = \"rsa-3072\"\n[[source]]\ntype = \"acme\"\nname = \"web\"\ndomains = [\"www.example.com\"]\nchallenge = \"http-01\"\n",
        )
        .unwrap();
        assert_eq!(c.acme.directory, LETSENCRYPT_STAGING);
        assert_eq!(c.acme.ca_bundle, Some("/etc/mxkeys/ca.pem".into()));
        let sources: Vec<_> = c.acme_sources().collect();
        assert_eq!(sources[0].key_type, AcmeKeyType::Rsa3072);
        assert_eq!(sources[0].dir, PathBuf::from("/var/lib/mxkeys/acme/mail"));
        assert_eq!(
            sources[1].challenge,
            Challenge::Http01Listen("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(c.sources[0].label, "acme:mail");
        for (text, needle) in [
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"*.example.com\"]\nchallenge = \"http-01\"\n",
                "wildcard",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"dns-01\"\ndns = \"nope\"\n",
                "[dns.nope]",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"../x\"\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\n",
                "name",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"tls-alpn-01\"\n",
                "tls-alpn-01",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\nkey_type = \"rsa-1024\"\n",
                "rsa-1024",
            ),
            ("[acme]\ndirectory = \"http://ca.example/dir\"\n", "https"),
            ("[acme]\neab_kid = \"k\"\n", "eab_hmac_key"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}

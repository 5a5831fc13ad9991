//! `host_id` and the `[cluster]` table: what scopes this host's writes,
//! and where hosts that must agree meet.
//!
//! Pure. Rules: a host id is one DNS label (it goes into DKIM selectors
//! and etcd keys); `[cluster]` names the backend (only `"etcd"`), at least
//! one endpoint URL, a prefix that is an absolute key path, and the file of
//! the key that seals private keys stored in the cluster (never the key
//! itself). Client certificate and key go together; a password is named (a
//! file or a variable), never held. A `shared = true` source or `[dkim]`
//! needs `[cluster]` ([`check_shared`]).

use std::path::PathBuf;
use std::time::Duration;

use super::raw::RawCluster;
use super::value::{Secret, selector_label};
use super::{ConfigError, Context};
use crate::names::DnsName;

/// What scopes everything this host writes: its DKIM selectors (`{host}`
/// in the template), its etcd session, the name it signs shared results
/// with. One DNS label, lower case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(String);

impl HostId {
    /// A host id from the `host_id` key: one DNS label (letters, digits,
    /// '-'), lower-cased.
    pub fn parse(s: &str) -> Result<HostId, String> {
        let lower = s.to_ascii_lowercase();
        selector_label(&lower).map_err(|e| e.to_string())?;
        Ok(HostId(lower))
    }

    /// The default: the first label of the machine's host name.
    pub fn from_hostname(name: &DnsName) -> Option<HostId> {
        let first = name.as_str().split('.').next()?;
        HostId::parse(first).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HostId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The default time a leader's etcd lease lives without a keep-alive.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// The default key prefix of everything mxkeys stores in the cluster.
pub const DEFAULT_PREFIX: &str = "/mxkeys";

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub backend: ClusterBackend,
    /// `http://HOST:PORT` or `https://HOST:PORT`, tried in order.
    pub endpoints: Vec<String>,
    /// Absolute key prefix, without a trailing '/': `/mxkeys` by default.
    /// Every key mxkeys writes is `PREFIX/...`.
    pub prefix: String,
    /// TLS to the endpoints (needed for `https://` endpoints).
    pub tls: Option<ClusterTls>,
    /// etcd user and the password's file or variable.
    pub credentials: Option<(String, Secret)>,
    /// The file holding the key (32 bytes, base64) that seals private keys
    /// stored in the cluster; every host has the same file.
    pub shared_key_file: PathBuf,
    /// How long a leader's lease lives without a keep-alive: a paused or
    /// dead leader loses its jobs after this.
    pub lease_ttl: Duration,
}

/// The one backend so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterBackend {
    Etcd,
}

/// TLS to the cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA that signed the endpoints' certificates.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, when the cluster asks for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

pub(super) fn host_id(
    raw: Option<&str>,
    hostname: Option<&DnsName>,
    ctx: &Context,
) -> Result<Option<HostId>, ConfigError> {
    match raw {
        Some(s) => HostId::parse(s)
            .map(Some)
            .map_err(|e| ctx.error(format_args!("key `host_id`: {e}"))),
        None => Ok(hostname.and_then(HostId::from_hostname)),
    }
}

pub(super) fn cluster(raw: RawCluster, ctx: &Context) -> Result<Cluster, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[cluster]: {m}"));
    let backend = match raw.backend.as_str() {
        "etcd" => ClusterBackend::Etcd,
        other => {
            return Err(fail(&format_args!(
                "key `backend`: {other:?} is not \"etcd\""
            )));
        }
    };
    if raw.endpoints.is_empty() {
        return Err(fail(&"key `endpoints`: at least one URL"));
    }
    for e in &raw.endpoints {
        if let Err(why) = check_endpoint(e) {
            return Err(fail(&format_args!("key `endpoints`: {e:?} {why}")));
        }
    }
    let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    let prefix = prefix.trim_end_matches('/').to_owned();
    if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
        return Err(fail(&format_args!(
            "key `prefix`: {prefix:?} must be an absolute key path such as \"/mxkeys/example\""
        )));
    }
    let client = match (raw.cert_file, raw.key_file) {
        (Some(c), Some(k)) => Some((ctx.abs(&c), ctx.abs(&k))),
        (None, None) => None,
        _ => return Err(fail(&"`cert_file` and `key_file` go together")),
    };
    let tls = (raw.ca_file.is_some() || client.is_some()).then(|| ClusterTls {
        ca_file: raw.ca_file.as_deref().map(|p| ctx.abs(p)),
        client,
    });
    if tls.is_some() && raw.endpoints.iter().any(|e| e.starts_with("http://")) {
        return Err(fail(
            &"TLS keys are set but an endpoint is http://: use https:// for every endpoint",
        ));
    }
    let password = match (raw.password_file, raw.password_env) {
        (Some(f), None) => Some(Secret::File(ctx.abs(&f))),
        (None, Some(e)) => Some(Secret::Env(e)),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(fail(&"set only one of `password_file` and `password_env`"));
        }
    };
    let credentials = match (raw.user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => {
            return Err(fail(
                &"`user` needs `password_file` or `password_env` (and they need `user`)",
            ));
        }
    };
    let Some(shared_key_file) = raw.shared_key_file else {
        return Err(fail(
            &"key `shared_key_file`: the file of the key that seals private keys in the cluster (the same on every host; make one with `openssl rand -base64 32`)",
        ));
    };
    let lease_ttl = raw.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
    if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(300) {
        return Err(fail(&"key `lease_ttl`: between 2s and 5m"));
    }
    Ok(Cluster {
        backend,
        endpoints: raw.endpoints,
        prefix,
        tls,
        credentials,
        shared_key_file: ctx.abs(&shared_key_file),
        lease_ttl,
    })
}

/// `shared = true` (an `acme` source, `[dkim]`) needs `[cluster]` and a
/// host id.
/// Whether `e` is `http://HOST:PORT` or `https://HOST:PORT`, HOST a name,
/// an IPv4 address or an IPv6 address in brackets (`http://[::1]:2379`).
/// Pure. The error completes "`e` ...".
fn check_endpoint(e: &str) -> Result<(), String> {
    const FORM: &str = "is not http://HOST:PORT or https://HOST:PORT";
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or(FORM)?;
    if rest.contains('/') {
        return Err(FORM.into());
    }
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (addr, after) = inner.split_once(']').ok_or(FORM)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{FORM}: [{addr}] is not an IPv6 address"));
        }
        (addr, after.strip_prefix(':').ok_or(FORM)?)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or(FORM)?;
        if host.contains(':') {
            return Err(format!(
                "{FORM}: write an IPv6 address in brackets, as in http://[::1]:2379"
            ));
        }
        (host, port)
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(FORM.into());
    }
    Ok(())
}

pub(super) fn check_shared(
    shared: impl Iterator<Item = String>,
    cluster: Option<&Cluster>,
    host_id: Option<&HostId>,
    ctx: &Context,
) -> Result<(), ConfigError> {
    for what in shared {
        if cluster.is_none() {
            return Err(ctx.error(format_args!(
                "{what}: `shared = true` needs a [cluster] table (hosts agree through etcd)"
            )));
        }
        if host_id.is_none() {
            return Err(ctx.error(format_args!(
                "{what}: `shared = true` needs `host_id` (the machine's host name is not usable)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_id_is_one_lower_case_label_and_defaults_to_the_first_label_of_the_host_name() {
        assert_eq!(HostId::parse("MX1").unwrap().as_str(), "mx1");
        assert!(HostId::parse("mx1.example.com").is_err());
        assert!(HostId::parse("mx_1").is_err());
        assert!(HostId::parse("").is_err());
        let name = DnsName::parse("Mail-2.Example.com").unwrap();
        assert_eq!(HostId::from_hostname(&name).unwrap().as_str(), "mail-2");
    }

    #[test]
    fn an_endpoint_is_a_url_with_a_host_and_a_port_and_an_ipv6_address_goes_in_brackets() {
        for ok in [
            "http://127.0.0.1:2379",
            "https://etcd1.example.com:2379",
            "http://[::1]:2379",
            "https://[2001:db8::7]:2379",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("http://::1:2379", "in brackets"),
            ("http://2001:db8::7:2379", "in brackets"),
            ("http://[::1]", "HOST:PORT"),
            ("http://[not-v6]:2379", "not an IPv6 address"),
            ("http://127.0.0.1", "HOST:PORT"),
            ("http://127.0.0.1:0", "HOST:PORT"),
            ("http://:2379", "HOST:PORT"),
            ("http://etcd:2379/v3", "HOST:PORT"),
            ("etcd:2379", "HOST:PORT"),
            ("", "HOST:PORT"),
        ] {
            let why = check_endpoint(bad).expect_err(bad);
            assert!(why.contains(says), "{bad}: {why}");
        }
    }
}

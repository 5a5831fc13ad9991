//! The `[mta_sts]` and `[tls_rpt]` tables (issue 15): which domains
//! publish an MTA-STS policy and how it is served, and where senders send
//! their TLS reports.
//!
//! Pure. Rules: `[mta_sts]` names at least one domain (no wildcard), a
//! mode of the policy (`testing` by default, as RFC 8461 advises for a
//! start), MX patterns or none (then the domains' MX hosts are read from
//! DNS), a `max_age` of whole seconds up to 31,557,600 (default one week),
//! a DNS provider that exists, and exactly one way to serve the policy
//! (`listen`, on an address no other listener of mxkeys binds, or
//! `webroot`). `[tls_rpt]` names at least one `rua` URI, each
//! `mailto:` or `https:`; its `domains` and `dns` default to `[mta_sts]`'s.
//! The values themselves are `crate::mta_sts::policy` and
//! `crate::tls_rpt::record`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::dns::DnsProvider;
use super::raw::{RawMtaSts, RawTlsRpt};
use super::value::{at, dns_names, parse_listen};
use super::{ConfigError, Context};
use crate::mta_sts::policy::{MAX_AGE_LIMIT, Mode, MxPattern, Policy, PolicyError};
use crate::names::DnsName;
use crate::tls_rpt::record::Rua;

/// `max_age` when the table gives none: one week.
pub const DEFAULT_MTA_STS_MAX_AGE: u32 = 7 * 86_400;

/// The `[mta_sts]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaSts {
    /// The domains whose policy is published, sorted, no duplicates.
    pub domains: Vec<DnsName>,
    pub mode: Mode,
    /// The `mx` patterns as configured, sorted, no duplicates; empty:
    /// the domains' current MX hosts, read from DNS.
    pub mx: Vec<MxPattern>,
    /// Seconds, at most [`MAX_AGE_LIMIT`].
    pub max_age: u32,
    /// A `[dns.NAME]` provider: where the `_mta-sts` TXT records go.
    pub dns: String,
    pub serve: Serve,
    /// Where the policy is fetched back from over HTTPS (with SNI
    /// `mta-sts.DOMAIN`) before its id is published; empty: the `listen`
    /// address (a wildcard one read as loopback), or with `webroot` the
    /// addresses `mta-sts.DOMAIN` resolves to.
    pub responders: Vec<SocketAddr>,
    /// Certificates trusted besides the system's roots when fetching the
    /// policy back and checking the MX hosts' STARTTLS certificates.
    pub ca_bundle: Option<PathBuf>,
}

/// How the policy reaches `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serve {
    /// mxkeys' own HTTPS responder on this address.
    Listen(SocketAddr),
    /// Files under this directory, for an existing web server.
    Webroot(PathBuf),
}

impl MtaSts {
    /// The policy to publish: the configured `mx` patterns, or when there
    /// are none, `dns_mx` (the domains' MX hosts as read from DNS).
    pub fn policy(&self, dns_mx: &[MxPattern]) -> Result<Policy, PolicyError> {
        let mx = if self.mx.is_empty() {
            dns_mx.to_vec()
        } else {
            self.mx.clone()
        };
        Policy::new(self.mode, mx, self.max_age)
    }
}

/// The `[tls_rpt]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRpt {
    /// Where senders send reports, in configuration order.
    pub rua: Vec<Rua>,
    /// The domains given a `_smtp._tls` record, sorted, no duplicates.
    pub domains: Vec<DnsName>,
    /// A `[dns.NAME]` provider.
    pub dns: String,
}

/// Validates `[mta_sts]`; `dns` holds the validated providers.
pub(super) fn mta_sts(
    raw: RawMtaSts,
    dns: &BTreeMap<String, DnsProvider>,
    ctx: &Context,
) -> Result<MtaSts, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[mta_sts]: {m}"));
    let domains = domains(&raw.domains).map_err(|m| fail(&m))?;
    let mode = match raw.mode.as_deref() {
        None => Mode::Testing,
        Some(m) => m.parse().map_err(|_| {
            fail(&format_args!(
                "key `mode`: {m:?} is not \"testing\", \"enforce\" or \"none\""
            ))
        })?,
    };
    let mut mx = raw
        .mx
        .unwrap_or_default()
        .iter()
        .map(|p| MxPattern::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&format_args!("key `mx`: {e}")))?;
    mx.sort();
    mx.dedup();
    let max_age = match raw.max_age {
        None => DEFAULT_MTA_STS_MAX_AGE,
        Some(d) => max_age(d).ok_or_else(|| {
            fail(&format_args!(
                "key `max_age`: {} is not whole seconds from 0 to {MAX_AGE_LIMIT} (1y)",
                humantime::format_duration(d)
            ))
        })?,
    };
    provider(&raw.dns, dns).map_err(|m| fail(&m))?;
    let serve = match (raw.listen, raw.webroot) {
        (Some(l), None) => {
            Serve::Listen(parse_listen(&l, "0.0.0.0:443").map_err(|e| fail(&at("listen")(e)))?)
        }
        (None, Some(w)) => Serve::Webroot(ctx.abs(&w)),
        _ => {
            return Err(fail(
                &"exactly one of `listen` (mxkeys serves the policy) or `webroot` (a web server does)",
            ));
        }
    };
    let responders = raw
        .responders
        .unwrap_or_default()
        .iter()
        .map(|r| parse_listen(r, "192.0.2.1:443"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&at("responders")(e)))?;
    Ok(MtaSts {
        domains,
        mode,
        mx,
        max_age,
        dns: raw.dns,
        serve,
        responders,
        ca_bundle: raw.ca_bundle.as_deref().map(|p| ctx.abs(p)),
    })
}

/// Validates `[tls_rpt]`; `mta_sts` gives the defaults of `domains` and
/// `dns`.
pub(super) fn tls_rpt(
    raw: RawTlsRpt,
    mta_sts: Option<&MtaSts>,
    dns: &BTreeMap<String, DnsProvider>,
    ctx: &Context,
) -> Result<TlsRpt, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[tls_rpt]: {m}"));
    if raw.rua.is_empty() {
        return Err(fail(
            &"key `rua`: at least one \"mailto:...\" or \"https://...\" URI",
        ));
    }
    let rua = raw
        .rua
        .iter()
        .map(|u| Rua::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&format_args!("key `rua`: {e}")))?;
    let domains = match (raw.domains, mta_sts) {
        (Some(d), _) => domains(&d).map_err(|m| fail(&m))?,
        (None, Some(m)) => m.domains.clone(),
        (None, None) => return Err(fail(&"key `domains`: required without an [mta_sts] table")),
    };
    let dns_name = match (raw.dns, mta_sts) {
        (Some(d), _) => d,
        (None, Some(m)) => m.dns.clone(),
        (None, None) => return Err(fail(&"key `dns`: required without an [mta_sts] table")),
    };
    provider(&dns_name, dns).map_err(|m| fail(&m))?;
    Ok(TlsRpt {
        rua,
        domains,
        dns: dns_name,
    })
}

/// Refuses a `[mta_sts] listen` address another listener of mxkeys binds
/// too (the metrics endpoint, an `acme` source's HTTP-01 responder): the
/// second bind would fail only at run time.
pub(super) fn check_listen(
    mta_sts: Option<&MtaSts>,
    metrics: Option<SocketAddr>,
    sources: &[super::SourceConfig],
    ctx: &Context,
) -> Result<(), ConfigError> {
    let Some(Serve::Listen(listen)) = mta_sts.map(|m| &m.serve) else {
        return Ok(());
    };
    let http01 = sources.iter().filter_map(|s| match &s.kind {
        super::SourceKind::Acme(a) => match a.challenge {
            super::Challenge::Http01Listen(addr) => {
                Some((format!("source {:?} `http_listen`", a.name), addr))
            }
            _ => None,
        },
        _ => None,
    });
    let others = metrics
        .map(|m| ("[metrics] `listen`".to_owned(), m))
        .into_iter()
        .chain(http01);
    for (what, other) in others {
        if same_socket(*listen, other) {
            return Err(ctx.error(format_args!(
                "[mta_sts]: key `listen`: {listen} is also {what} ({other}): give each its own address or port"
            )));
        }
    }
    Ok(())
}

/// Whether binding both addresses would clash: the same port, and the
/// same address, or a wildcard covering the other (`[::]` covers IPv4
/// too, as Linux binds it by default; `0.0.0.0` covers IPv4 only).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// A `domains` list: at least one, no wildcard; sorted, deduplicated.
fn domains(raw: &[String]) -> Result<Vec<DnsName>, String> {
    if raw.is_empty() {
        return Err("key `domains`: at least one domain".to_owned());
    }
    let mut domains = dns_names(raw).map_err(|e| at("domains")(e).to_string())?;
    if let Some(w) = domains.iter().find(|d| d.is_wildcard()) {
        return Err(format!(
            "key `domains`: {w}: a policy domain cannot be a wildcard"
        ));
    }
    domains.sort();
    domains.dedup();
    Ok(domains)
}

/// Whole seconds up to the RFC 8461 limit.
fn max_age(d: Duration) -> Option<u32> {
    if d.subsec_nanos() != 0 {
        return None;
    }
    u32::try_from(d.as_secs())
        .ok()
        .filter(|s| *s <= MAX_AGE_LIMIT)
}

/// A `dns` key naming a `[dns.NAME]` table that exists.
fn provider(name: &str, dns: &BTreeMap<String, DnsProvider>) -> Result<(), String> {
    if dns.contains_key(name) {
        Ok(())
    } else {
        Err(format!("key `dns`: no [dns.{name}] table"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

    const DNS: &str = "[dns.bind]\ntype = \"manual\"\n";

    fn table(text: &str) -> Result<super::super::Config, String> {
        parse(&format!("{DNS}{text}")).map_err(|e| e.to_string())
    }

    #[test]
    fn mta_sts_defaults_to_testing_one_week_and_the_mx_hosts_from_dns() {
        let c = table(
            "[mta_sts]\ndomains = [\"Example.org\", \"example.com\", \"example.org\"]\ndns = \"bind\"\nwebroot = \"www\"\n",
        )
        .unwrap();
        let m = c.mta_sts.unwrap();
        assert_eq!(
            m.domains.iter().map(DnsName::as_str).collect::<Vec<_>>(),
            ["example.com", "example.org"]
        );
        assert_eq!(m.mode, Mode::Testing);
        assert!(m.mx.is_empty());
        assert_eq!(m.max_age, 604_800);
        assert_eq!(m.dns, "bind");
        assert_eq!(m.serve, Serve::Webroot(PathBuf::from("/etc/mxkeys/www")));
        assert_eq!(c.tls_rpt, None);
    }

    #[test]
    fn mta_sts_takes_every_key_as_written() {
        let c = table(
            "[mta_sts]\ndomains = [\"example.com\"]\nmode = \"enforce\"\nmx = [\"MX2.example.com\", \"*.example.net\", \"mx2.example.com\"]\nmax_age = \"1y\"\ndns = \"bind\"\nlisten = \"[::]:443\"\n",
        )
        .unwrap();
        let m = c.mta_sts.unwrap();
        assert_eq!(m.mode, Mode::Enforce);
        assert_eq!(
            m.mx.iter().map(MxPattern::as_str).collect::<Vec<_>>(),
            ["*.example.net", "mx2.example.com"]
        );
        assert_eq!(m.max_age, MAX_AGE_LIMIT);
        assert_eq!(m.serve, Serve::Listen("[::]:443".parse().unwrap()));
        for (max_age, seconds) in [("0s", 0), ("1w", 604_800), ("86400s", 86_400)] {
            let c = table(&format!(
                "[mta_sts]\ndomains = [\"example.com\"]\nmax_age = \"{max_age}\"\ndns = \"bind\"\nwebroot = \"/w\"\n"
            ))
            .unwrap();
            assert_eq!(c.mta_sts.unwrap().max_age, seconds, "{max_age}");
        }
    }

    #[test]
    fn the_policy_lists_the_configured_mx_else_the_ones_read_from_dns() {
        let from_dns = [MxPattern::parse("mx.example.com").unwrap()];
        let common = "[mta_sts]\ndomains = [\"example.com\"]\ndns = \"bind\"\nwebroot = \"/w\"\nmax_age = \"1d\"\n";
        let m = table(common).unwrap().mta_sts.unwrap();
        let p = m.policy(&from_dns).unwrap();
        assert_eq!(
            (p.mode(), p.mx(), p.max_age()),
            (Mode::Testing, &from_dns[..], 86_400)
        );
        assert_eq!(m.policy(&[]), Err(PolicyError::NoMx(Mode::Testing)));
        let m = table(&format!("{common}mx = [\"*.example.net\"]\n"))
            .unwrap()
            .mta_sts
            .unwrap();
        let p = m.policy(&from_dns).unwrap();
        assert_eq!(p.mx(), [MxPattern::parse("*.example.net").unwrap()]);
    }

    #[test]
    fn each_bad_mta_sts_key_is_refused_naming_the_key() {
        let ok = "domains = [\"example.com\"]\ndns = \"bind\"\nwebroot = \"/w\"\n";
        assert!(table(&format!("[mta_sts]\n{ok}")).is_ok());
        for (text, needle) in [
            (
                "domains = []\ndns = \"bind\"\nwebroot = \"/w\"\n",
                "[mta_sts]: key `domains`: at least one domain",
            ),
            (
                "domains = [\"*.example.com\"]\ndns = \"bind\"\nwebroot = \"/w\"\n",
                "[mta_sts]: key `domains`: *.example.com: a policy domain cannot be a wildcard",
            ),
            (
                "domains = [\"a b\"]\ndns = \"bind\"\nwebroot = \"/w\"\n",
                "[mta_sts]: key `domains`: \"a b\"",
            ),
            (
                &format!("{ok}mode = \"strict\"\n"),
                "[mta_sts]: key `mode`: \"strict\" is not \"testing\", \"enforce\" or \"none\"",
            ),
            (
                &format!("{ok}mx = [\"mx_1.example.com\"]\n"),
                "[mta_sts]: key `mx`: MTA-STS mx pattern \"mx_1.example.com\"",
            ),
            (
                &format!("{ok}mx = [\"a.*.example.com\"]\n"),
                "[mta_sts]: key `mx`: MTA-STS mx pattern \"a.*.example.com\"",
            ),
            (
                &format!("{ok}max_age = \"31557601s\"\n"),
                "[mta_sts]: key `max_age`: 1year 1s is not whole seconds from 0 to 31557600 (1y)",
            ),
            (
                &format!("{ok}max_age = \"1500ms\"\n"),
                "[mta_sts]: key `max_age`: 1s 500ms is not whole seconds",
            ),
            (&format!("{ok}max_age = 3600\n"), "max_age"),
            (
                "domains = [\"example.com\"]\ndns = \"cf\"\nwebroot = \"/w\"\n",
                "[mta_sts]: key `dns`: no [dns.cf] table",
            ),
            (
                "domains = [\"example.com\"]\ndns = \"bind\"\n",
                "[mta_sts]: exactly one of `listen` (mxkeys serves the policy) or `webroot`",
            ),
            (
                &format!("{ok}listen = \"0.0.0.0:443\"\n"),
                "[mta_sts]: exactly one of `listen`",
            ),
            (
                "domains = [\"example.com\"]\ndns = \"bind\"\nlisten = \"mta-sts.example.com:443\"\n",
                "[mta_sts]: key `listen`: \"mta-sts.example.com:443\" is not an address:port like \"0.0.0.0:443\"",
            ),
            ("domains = [\"example.com\"]\nwebroot = \"/w\"\n", "dns"),
            (&format!("{ok}policy = \"x\"\n"), "policy"),
        ] {
            let e = table(&format!("[mta_sts]\n{text}")).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_shipped_configuration_documents_and_checks_every_key() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mxkeys.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = parse(&text).unwrap();
        let m = c.mta_sts.unwrap();
        assert_eq!(m.mode, Mode::Testing);
        assert_eq!(m.serve, Serve::Webroot(PathBuf::from("/var/www/mta-sts")));
        assert_eq!(c.tls_rpt.unwrap().domains, m.domains);
        let section = |name: &str| {
            let start = text.find(&format!("\n[{name}]\n")).unwrap();
            let rest = &text[start + 1..];
            let end = rest[1..].find("\n[").map_or(rest.len(), |e| e + 1);
            rest[..end].to_owned()
        };
        for (name, keys) in [
            (
                "mta_sts",
                &[
                    "domains", "mode", "mx", "max_age", "dns", "listen", "webroot",
                ][..],
            ),
            ("tls_rpt", &["rua", "domains", "dns"]),
        ] {
            let s = section(name);
            for key in keys {
                assert!(
                    s.contains(&format!("\n{key} = ")) || s.contains(&format!("\n# {key} = ")),
                    "[{name}] {key}"
                );
            }
        }
    }

    #[test]
    fn a_listen_address_another_listener_of_mxkeys_binds_is_refused() {
        let mta_sts = |listen: &str| {
            format!(
                "[mta_sts]\ndomains = [\"example.com\"]\ndns = \"bind\"\nlisten = \"{listen}\"\n"
            )
        };
        let acme = "[[source]]\ntype = \"acme\"\nname = \"le\"\ndomains = [\"mta-sts.example.com\"]\nchallenge = \"http-01\"\nhttp_listen = \"0.0.0.0:80\"\n";
        for (listen, others, clash) in [
            (
                "127.0.0.1:9325",
                "[metrics]\nlisten = \"127.0.0.1:9325\"\n",
                true,
            ),
            (
                "0.0.0.0:9325",
                "[metrics]\nlisten = \"127.0.0.1:9325\"\n",
                true,
            ),
            (
                "127.0.0.1:9325",
                "[metrics]\nlisten = \"[::]:9325\"\n",
                true,
            ),
            (
                "0.0.0.0:9325",
                "[metrics]\nlisten = \"[::1]:9325\"\n",
                false,
            ),
            (
                "0.0.0.0:443",
                "[metrics]\nlisten = \"0.0.0.0:9325\"\n",
                false,
            ),
            ("192.0.2.1:80", acme, true),
            ("192.0.2.1:443", acme, false),
        ] {
            let got = table(&format!("{others}{}", mta_sts(listen)));
            match (clash, got) {
                (false, Ok(_)) => {}
                (true, Err(e)) => assert!(
                    e.contains("[mta_sts]: key `listen`: ") && e.contains("is also"),
                    "{e}"
                ),
                (_, other) => panic!("{listen} with {others:?}: {other:?}"),
            }
        }
        let e = table(&format!("{acme}{}", mta_sts("[::]:80"))).unwrap_err();
        assert!(
            e.ends_with("[mta_sts]: key `listen`: [::]:80 is also source \"le\" `http_listen` (0.0.0.0:80): give each its own address or port"),
            "{e}"
        );
    }

    #[test]
    fn tls_rpt_takes_its_domains_and_dns_from_mta_sts_unless_given() {
        let mta_sts = "[mta_sts]\ndomains = [\"example.com\"]\ndns = \"bind\"\nwebroot = \"/w\"\n";
        let c = table(&format!(
            "{mta_sts}[tls_rpt]\nrua = [\"mailto:tlsrpt@example.com\", \"https://mta-sts.example.com/tlsrpt\"]\n"
        ))
        .unwrap();
        let t = c.tls_rpt.unwrap();
        assert_eq!(
            t.rua.iter().map(Rua::as_str).collect::<Vec<_>>(),
            [
                "mailto:tlsrpt@example.com",
                "https://mta-sts.example.com/tlsrpt"
            ]
        );
        assert_eq!(t.domains, c.mta_sts.unwrap().domains);
        assert_eq!(t.dns, "bind");
        let c = table(
            "[dns.other]\ntype = \"manual\"\n[tls_rpt]\nrua = [\"mailto:r@example.net\"]\ndomains = [\"example.net\"]\ndns = \"other\"\n",
        )
        .unwrap();
        let t = c.tls_rpt.unwrap();
        assert_eq!(t.domains, [DnsName::parse("example.net").unwrap()]);
        assert_eq!(t.dns, "other");
        assert_eq!(c.mta_sts, None);
    }

    #[test]
    fn each_bad_tls_rpt_key_is_refused_naming_the_key() {
        let with_domains = "domains = [\"example.com\"]\ndns = \"bind\"\n";
        for (text, needle) in [
            (
                format!("rua = []\n{with_domains}"),
                "[tls_rpt]: key `rua`: at least one",
            ),
            (
                format!("rua = [\"http://r.example.com/\"]\n{with_domains}"),
                "[tls_rpt]: key `rua`: TLS-RPT rua \"http://r.example.com/\"",
            ),
            (
                format!("rua = [\"mailto:a@example.com,mailto:b@example.com\"]\n{with_domains}"),
                "[tls_rpt]: key `rua`: TLS-RPT rua",
            ),
            (
                "rua = [\"mailto:a@example.com\"]\ndns = \"bind\"\n".to_owned(),
                "[tls_rpt]: key `domains`: required without an [mta_sts] table",
            ),
            (
                "rua = [\"mailto:a@example.com\"]\ndomains = [\"example.com\"]\n".to_owned(),
                "[tls_rpt]: key `dns`: required without an [mta_sts] table",
            ),
            (
                "rua = [\"mailto:a@example.com\"]\ndomains = []\ndns = \"bind\"\n".to_owned(),
                "[tls_rpt]: key `domains`: at least one domain",
            ),
            (
                "rua = [\"mailto:a@example.com\"]\ndomains = [\"example.com\"]\ndns = \"cf\"\n"
                    .to_owned(),
                "[tls_rpt]: key `dns`: no [dns.cf] table",
            ),
            (with_domains.to_owned(), "rua"),
        ] {
            let e = table(&format!("[tls_rpt]\n{text}")).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}

//! Delegation by CNAME: records at a user's names, data in a zone mxkeys
//! can write.
//!
//! Rule: under `[dns.NAME] delegate_to = "ZONE"`, every record mxkeys
//! publishes at a user's name `N` (`_acme-challenge.NAME`,
//! `SELECTOR._domainkey.DOMAIN`, `_PORT._tcp.HOST`, `_mta-sts.DOMAIN`) is
//! written at [`target`]`(N, ZONE)` = `N.ZONE`, and the user creates, once,
//! the CNAME `N. IN CNAME N.ZONE.` in their own zone. The mapping is
//! readable and collision-free (distinct names give distinct targets), so
//! the CNAMEs never change; DKIM keys rotate through a fixed set of
//! selector slots (`{slot}`) for the same reason. A name whose target
//! would pass 253 octets is refused, naming it.
//!
//! Pure; the checks that ask DNS are in [`check`].

pub mod check;

use std::collections::BTreeMap;

use mxkeys_providers::Error;

use crate::config::Challenge;
use crate::config::Config;
use crate::dkim::machine::DkimAlgorithm;

/// The longest DNS name in presentation form without the trailing dot.
const MAX_NAME: usize = 253;

/// Where the data of the user's `name` lives under delegation to `zone`:
/// `name.zone`, lower case, no trailing dot.
pub fn target(name: &str, zone: &str) -> Result<String, Error> {
    let name = mxkeys_providers::canonical_name(name);
    let zone = mxkeys_providers::canonical_name(zone);
    let target = format!("{name}.{zone}");
    if target.len() > MAX_NAME {
        return Err(Error::Config(format!(
            "{name} delegated to {zone}: {target} is longer than {MAX_NAME} octets; choose a shorter `delegate_to`"
        )));
    }
    Ok(target)
}

/// The DKIM selector template used under delegation when the configured
/// one has no `{slot}` (the `[dkim]` default when its provider delegates).
pub const DEFAULT_SLOT_TEMPLATE: &str = "mx{slot}{alg}";

/// The DKIM selector slots a group rotates through under delegation.
const SLOTS: u32 = 2;

/// What mxkeys publishes at a delegated name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// DNS-01 challenges of the `acme` source.
    Acme { source: String },
    /// A DKIM key's record in slot `slot` of the group.
    Dkim { domain: String, selector: String },
    /// The TLSA records of a target's `[target.dane]`.
    Dane { target: String },
    /// The `_mta-sts` TXT record.
    MtaSts,
    /// The `_smtp._tls` TLS-RPT record.
    TlsRpt,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Purpose::Acme { source } => write!(f, "ACME DNS-01 of source {source}"),
            Purpose::Dkim { domain, selector } => write!(f, "DKIM {domain} selector {selector}"),
            Purpose::Dane { target } => write!(f, "DANE TLSA of target {target}"),
            Purpose::MtaSts => f.write_str("MTA-STS policy id"),
            Purpose::TlsRpt => f.write_str("TLS-RPT"),
        }
    }
}

/// One CNAME the user creates: `name. IN CNAME target.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegated {
    /// The user's name (lower case, no trailing dot).
    pub name: String,
    /// Where mxkeys writes its data: [`target`]`(name, delegate_to)`.
    pub target: String,
    /// The domain the name belongs to (the name without its `_service`
    /// labels): the comment header the CNAME is listed under.
    pub domain: String,
    pub purpose: Purpose,
    /// A TLSA name: DANE works through the CNAME only when both the
    /// user's zone and the delegated zone are DNSSEC-signed.
    pub needs_dnssec: bool,
}

impl Delegated {
    /// The zone-file line to create, with its purpose as a comment.
    pub fn zone_line(&self) -> String {
        let dnssec = if self.needs_dnssec {
            "; both zones must be DNSSEC-signed"
        } else {
            ""
        };
        format!(
            "{}. IN CNAME {}. ; {}{dnssec}",
            self.name, self.target, self.purpose
        )
    }
}

/// The selectors of a DKIM group under delegation: the template's `{slot}`
/// 1 and 2, `{alg}` r/e, `{host}` the host id (mirrors the slots helper's
/// `crate::dkim::machine::slot_selectors`, not yet on this branch).
fn slot_selectors(template: &str, algorithm: DkimAlgorithm, host: Option<&str>) -> Vec<String> {
    let template = if template.contains("{slot}") {
        template
    } else {
        DEFAULT_SLOT_TEMPLATE
    };
    let letter = if algorithm.is_rsa() { "r" } else { "e" };
    let base = template
        .replace("{host}", host.unwrap_or_default())
        .replace("{alg}", letter);
    (1..=SLOTS)
        .map(|n| base.replace("{slot}", &n.to_string()))
        .collect()
}

/// Every name mxkeys publishes through the `[dns.PROVIDER]` table, with
/// its target under the table's `delegate_to`, in this order: ACME DNS-01
/// (`_acme-challenge.BASE`, a wildcard and its base once), DKIM
/// (`SELECTOR._domainkey.DOMAIN` per domain, algorithm and slot), DANE
/// (`_PORT._tcp.HOST`), MTA-STS (`_mta-sts.DOMAIN`), TLS-RPT
/// (`_smtp._tls.DOMAIN`). A name listed twice is kept once, first purpose
/// first. Empty when the table does not exist or does not delegate; an
/// error when a target is too long.
pub fn records(config: &Config, provider: &str) -> Result<Vec<Delegated>, Error> {
    let Some(zone) = config
        .dns
        .get(provider)
        .and_then(|p| p.delegate_to.as_deref())
    else {
        return Ok(Vec::new());
    };
    // (service labels, domain, purpose, needs_dnssec)
    let mut wanted: Vec<(String, String, Purpose, bool)> = Vec::new();
    for source in config.acme_sources() {
        if !matches!(&source.challenge, Challenge::Dns01 { provider: p } if p == provider) {
            continue;
        }
        for name in &source.domains {
            let base = name.as_str().strip_prefix("*.").unwrap_or(name.as_str());
            wanted.push((
                "_acme-challenge".to_owned(),
                base.to_owned(),
                Purpose::Acme {
                    source: source.name.clone(),
                },
                false,
            ));
        }
    }
    if let Some(dkim) = config.dkim.as_ref().filter(|d| d.dns == provider) {
        let host = config.host_id.as_ref().map(|h| h.as_str());
        for domain in &dkim.domains {
            for algorithm in &dkim.algorithms {
                for selector in slot_selectors(&dkim.selector, *algorithm, host) {
                    wanted.push((
                        format!("{selector}._domainkey"),
                        domain.as_str().to_owned(),
                        Purpose::Dkim {
                            domain: domain.as_str().to_owned(),
                            selector,
                        },
                        false,
                    ));
                }
            }
        }
    }
    for t in &config.targets {
        let Some(dane) = t.dane.as_ref().filter(|d| d.dns == provider) else {
            continue;
        };
        for host in &dane.hosts {
            for port in &dane.ports {
                wanted.push((
                    format!("_{port}._tcp"),
                    host.as_str().to_owned(),
                    Purpose::Dane {
                        target: t.name.clone(),
                    },
                    true,
                ));
            }
        }
    }
    if let Some(m) = config.mta_sts.as_ref().filter(|m| m.dns == provider) {
        for domain in &m.domains {
            wanted.push((
                "_mta-sts".to_owned(),
                domain.as_str().to_owned(),
                Purpose::MtaSts,
                false,
            ));
        }
    }
    if let Some(r) = config.tls_rpt.as_ref().filter(|r| r.dns == provider) {
        for domain in &r.domains {
            wanted.push((
                "_smtp._tls".to_owned(),
                domain.as_str().to_owned(),
                Purpose::TlsRpt,
                false,
            ));
        }
    }
    let mut out: Vec<Delegated> = Vec::with_capacity(wanted.len());
    for (labels, domain, purpose, needs_dnssec) in wanted {
        let domain = mxkeys_providers::canonical_name(&domain);
        let name = format!("{labels}.{domain}");
        if out.iter().any(|d| d.name == name) {
            continue;
        }
        out.push(Delegated {
            target: target(&name, zone)?,
            name,
            domain,
            purpose,
            needs_dnssec,
        });
    }
    Ok(out)
}

/// The zone-file lines for `records` of the `[dns.PROVIDER]` table
/// delegating to `zone`: a header naming both, then per domain (sorted) a
/// comment line and its CNAMEs in the order given.
pub fn render(provider: &str, zone: &str, records: &[Delegated]) -> String {
    let mut by_domain: BTreeMap<&str, Vec<&Delegated>> = BTreeMap::new();
    for r in records {
        by_domain.entry(r.domain.as_str()).or_default().push(r);
    }
    let mut out = format!(
        "; [dns.{provider}] writes under {zone}: create these CNAMEs once, in the zone holding each name\n"
    );
    for (domain, records) in by_domain {
        out.push_str(&format!("; {domain}\n"));
        for r in records {
            out.push_str(&r.zone_line());
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Host;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let host = Host {
            cwd: "/".into(),
            hostname: None,
        };
        Config::parse(Path::new("/etc/mxkeys/mxkeys.toml"), text, &host).unwrap()
    }

    const DELEGATING: &str = "state_dir = \"/var/lib/mxkeys\"\n[dns.deleg]\ntype = \"manual\"\ndelegate_to = \"d.example.net\"\n[dns.direct]\ntype = \"manual\"\n";

    #[test]
    fn a_delegated_name_is_the_users_name_under_the_zone() {
        for (name, zone, want) in [
            (
                "_acme-challenge.Mail.Example.COM.",
                "acme.example.net",
                "_acme-challenge.mail.example.com.acme.example.net",
            ),
            (
                "mx1r._domainkey.example.com",
                "dkim.example.net.",
                "mx1r._domainkey.example.com.dkim.example.net",
            ),
        ] {
            assert_eq!(target(name, zone).unwrap(), want);
        }
        let e = target(&format!("{}x", "x.".repeat(120)), "delegated.example.net")
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than 253"), "{e}");
    }

    /// Every section that publishes DNS records, each through `dns`.
    fn everything(dns: &str) -> String {
        format!(
            "{DELEGATING}[[source]]\ntype = \"acme\"\nname = \"le\"\ndomains = [\"Mail.example.com\", \"*.example.com\", \"example.com\"]\nchallenge = \"dns-01\"\ndns = \"{dns}\"\n\
             [dkim]\ndomains = [\"example.com\"]\nalgorithms = [\"ed25519\", \"rsa-2048\"]\ndns = \"{dns}\"\nsigner = \"opendkim\"\nsigner_dir = \"/etc/opendkim\"\n\
             [mta_sts]\ndomains = [\"example.com\"]\ndns = \"{dns}\"\nwebroot = \"/w\"\n\
             [tls_rpt]\nrua = [\"mailto:r@example.com\"]\n\
             [[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\nkey = \"k\"\n[target.dane]\ndns = \"{dns}\"\nports = [25, 465]\n"
        )
    }

    #[test]
    fn every_name_published_through_a_delegating_provider_is_listed_with_its_target() {
        let c = config(&everything("deleg"));
        let got: Vec<(String, String, bool)> = records(&c, "deleg")
            .unwrap()
            .into_iter()
            .map(|d| (d.name, d.target, d.needs_dnssec))
            .collect();
        let want: Vec<(String, String, bool)> = [
            ("_acme-challenge.mail.example.com", false),
            // The wildcard and its base share one name.
            ("_acme-challenge.example.com", false),
            // The configuration orders the algorithms RSA first.
            ("mx1r._domainkey.example.com", false),
            ("mx2r._domainkey.example.com", false),
            ("mx1e._domainkey.example.com", false),
            ("mx2e._domainkey.example.com", false),
            ("_25._tcp.mail.example.com", true),
            ("_465._tcp.mail.example.com", true),
            ("_mta-sts.example.com", false),
            ("_smtp._tls.example.com", false),
        ]
        .into_iter()
        .map(|(n, dnssec)| (n.to_owned(), format!("{n}.d.example.net"), dnssec))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_provider_that_does_not_delegate_or_does_not_exist_lists_nothing() {
        let c = config(&everything("direct"));
        assert_eq!(records(&c, "direct").unwrap(), vec![]);
        assert_eq!(records(&c, "deleg").unwrap(), vec![]);
        assert_eq!(records(&c, "nosuch").unwrap(), vec![]);
    }

    #[test]
    fn dkim_selectors_come_from_the_slots_of_the_template() {
        for (template, host, want) in [
            ("mx{slot}{alg}", None, ["mx1e", "mx2e"]),
            ("{alg}{date}", None, ["mx1e", "mx2e"]),
            ("k{slot}-{host}", Some("a"), ["k1-a", "k2-a"]),
        ] {
            assert_eq!(
                slot_selectors(template, DkimAlgorithm::Ed25519, host),
                want,
                "{template}"
            );
        }
    }

    #[test]
    fn the_zone_file_lines_are_grouped_per_domain_with_a_header() {
        let c = config(&everything("deleg"));
        let mut rs = records(&c, "deleg").unwrap();
        rs.retain(|d| !matches!(d.purpose, Purpose::Dkim { .. }));
        let text = render("deleg", "d.example.net", &rs);
        let want = "; [dns.deleg] writes under d.example.net: create these CNAMEs once, in the zone holding each name
; example.com
_acme-challenge.example.com. IN CNAME _acme-challenge.example.com.d.example.net. ; ACME DNS-01 of source le
_mta-sts.example.com. IN CNAME _mta-sts.example.com.d.example.net. ; MTA-STS policy id
_smtp._tls.example.com. IN CNAME _smtp._tls.example.com.d.example.net. ; TLS-RPT
; mail.example.com
_acme-challenge.mail.example.com. IN CNAME _acme-challenge.mail.example.com.d.example.net. ; ACME DNS-01 of source le
_25._tcp.mail.example.com. IN CNAME _25._tcp.mail.example.com.d.example.net. ; DANE TLSA of target t; both zones must be DNSSEC-signed
_465._tcp.mail.example.com. IN CNAME _465._tcp.mail.example.com.d.example.net. ; DANE TLSA of target t; both zones must be DNSSEC-signed
";
        assert_eq!(text, want);
    }
}

//! The `[dkim]` table: which keys to keep, how to rotate them, where the
//! signer reads them.
//!
//! Pure. Rules: at least one RSA algorithm (Ed25519 alone is not verified
//! by large receivers), one RSA size at a time, none that cannot be
//! generated, a selector template that gives one DNS label, a DNS provider
//! that exists (or "manual"). Under delegation (the provider has
//! `delegate_to`) the template names fixed slots (`{slot}`, default
//! `mx{slot}{alg}`) so the user's CNAMEs never change; a slot template
//! rotates slower than a key takes to leave its slot (drain + revoke_hold +
//! revoke_settle), so the other slot is free whenever a rotation is due.
//! The key life cycle itself is
//! `crate::dkim::machine`, which owns [`DkimAlgorithm`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::dns::DnsProvider;
use super::raw::RawAdopt;
use super::raw::RawDkim;
use super::value::{Reload, at, dns_names, key_mode, reloads, selector_label};
use super::{ConfigError, Context, target::DEFAULT_RELOAD_TIMEOUT};
use crate::dkim::machine::DkimAlgorithm;
use crate::names::DnsName;

/// The `[dkim]` table: which keys to keep, how to rotate them, where the
/// signer reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dkim {
    pub domains: Vec<DnsName>,
    pub algorithms: Vec<DkimAlgorithm>,
    /// Selector template: `{alg}` (r/e), `{date}` (YYYYMMDD), `{n}`,
    /// `{host}`, or `{slot}` (1, 2: fixed selectors, reused in turn).
    pub selector: String,
    pub key_dir: PathBuf,
    /// Where each key's record is also written as
    /// `DOMAIN.SELECTOR._domainkey.txt` (`crate::dkim::record_file`).
    pub record_dir: Option<PathBuf>,
    /// A `[dns.NAME]` provider, or "manual".
    pub dns: String,
    pub ttl: u32,
    pub rotate_every: Duration,
    pub lead: Duration,
    pub drain: Duration,
    pub revoke_hold: Duration,
    /// After a signer reload, how long sessions it accepted before may
    /// still sign with a key it dropped: `p=` waits this long.
    pub revoke_settle: Duration,
    pub signer: Signer,
    pub signer_dir: PathBuf,
    pub key_owner: Option<String>,
    pub key_group: Option<String>,
    pub key_mode: u32,
    pub reload: Vec<Reload>,
    pub reload_timeout: Duration,
    /// Keys the host's signer already signs with, taken over as active
    /// (`[[dkim.adopt]]`), in the order written.
    pub adopt: Vec<Adopt>,
    /// One key set for every host of a `[cluster]`: the leader of job
    /// `dkim` rotates it and stores it (sealed) in the cluster; every
    /// host's signer uses it (`crate::cluster`).
    pub shared: bool,
}

/// One `[[dkim.adopt]]` entry: where keys the host's signer already signs
/// with are, and what must hold before one is called active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopt {
    pub from: AdoptFrom,
    pub check: AdoptCheck,
}

/// The layouts `[[dkim.adopt]]` and `mxkeys dkim import --from` read
/// (`crate::dkim::adopt` reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptFrom {
    /// OpenDKIM's KeyTable, or an opendkim.conf naming one (or
    /// `Domain`/`Selector`/`KeyFile`).
    Opendkim(PathBuf),
    /// Rspamd's dkim_signing.conf.
    Rspamd(PathBuf),
    /// amavis' configuration file with `dkim_key(...)` lines, or a
    /// directory of them (conf.d).
    Amavis(PathBuf),
    /// docker-mailserver's `config` directory (its `opendkim` and
    /// `rspamd/dkim` trees).
    Dms(PathBuf),
    /// A directory of `opendkim-genkey` output (`SELECTOR.private`,
    /// `SELECTOR.txt`); the domain from the .txt comment unless given.
    Dir {
        dir: PathBuf,
        domain: Option<DnsName>,
    },
    /// One PEM key file.
    Key {
        file: PathBuf,
        domain: DnsName,
        selector: String,
    },
    /// A PEM key held in an environment variable (a container's
    /// `DKIM_PRIVATEKEY`; the BEGIN/END lines may be left out). Only the
    /// variable's name is configuration: `mxkeys config` never prints a key.
    Env {
        var: String,
        domain: DnsName,
        selector: String,
    },
}

/// What must hold before an adopted key is called active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptCheck {
    /// Its record is seen with exactly its value on every authoritative
    /// server (a mismatch is reported and the key is not adopted).
    Dns,
    /// Nothing is looked up: the signer signs with it already and nothing
    /// can publish (a sidecar without a DNS provider). The record to
    /// publish is printed.
    None,
}

/// Which signer's configuration mxkeys writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signer {
    Opendkim,
    Rspamd,
    Amavis,
}

impl Signer {
    /// OpenDKIM's key table, one of its [`Signer::files`].
    pub const KEY_TABLE: &'static str = "KeyTable";
    /// OpenDKIM's signing table, one of its [`Signer::files`].
    pub const SIGNING_TABLE: &'static str = "SigningTable";

    /// The files mxkeys writes in `signer_dir` for this signer (the one
    /// list of their names: `dkim::signer` renders them in this order).
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Signer::Opendkim => &[Signer::KEY_TABLE, Signer::SIGNING_TABLE],
            Signer::Rspamd => &["dkim_signing.conf"],
            Signer::Amavis => &["dkim_keys.conf"],
        }
    }
}

/// A duration as days, hours, minutes and seconds ("37d 5s"), for errors.
fn show(d: Duration) -> String {
    let s = d.as_secs();
    let parts: Vec<String> = [
        (s / 86_400, "d"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, u)| format!("{n}{u}"))
    .collect();
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

const fn days(d: u64) -> Duration {
    Duration::from_secs(d * 86_400)
}

/// Validates the `[dkim]` table; `dns` holds the validated providers.
pub(super) fn dkim(
    raw: RawDkim,
    state_dir: &crate::state::StateDir,
    dns: &BTreeMap<String, DnsProvider>,
    ctx: &Context,
) -> Result<Dkim, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[dkim]: {m}"));
    if raw.domains.is_empty() {
        return Err(fail(&"key `domains`: at least one domain"));
    }
    let domains = dns_names(&raw.domains).map_err(|e| fail(&at("domains")(e)))?;
    if let Some(w) = domains.iter().find(|d| d.is_wildcard()) {
        return Err(fail(&format_args!(
            "key `domains`: {w}: DKIM domains cannot be wildcards"
        )));
    }
    let mut algorithms = raw
        .algorithms
        .unwrap_or_else(|| vec![DkimAlgorithm::Rsa2048]);
    algorithms.sort();
    algorithms.dedup();
    if algorithms.is_empty() {
        return Err(fail(&"key `algorithms`: at least one"));
    }
    if !algorithms.iter().any(|a| a.is_rsa()) {
        return Err(fail(
            &"key `algorithms`: Ed25519 alone is refused: large receivers still do not verify it (RFC 8463); add \"rsa-2048\"",
        ));
    }
    if algorithms.contains(&DkimAlgorithm::Rsa1024) {
        return Err(fail(
            &"key `algorithms`: \"rsa-1024\" cannot be generated (aws-lc-rs makes RSA keys of 2048 bits or more; RFC 8301 recommends 2048): use \"rsa-2048\" (an existing rsa-1024 key can still be adopted with `mxkeys dkim import`)",
        ));
    }
    if algorithms.iter().filter(|a| a.is_rsa()).count() > 1 {
        return Err(fail(&"key `algorithms`: one RSA size at a time"));
    }
    if raw.signer == Signer::Amavis && algorithms.contains(&DkimAlgorithm::Ed25519) {
        return Err(fail(
            &"amavis signs with RSA only: remove \"ed25519\" or use opendkim or rspamd",
        ));
    }
    if !dns.contains_key(&raw.dns) && raw.dns != "manual" {
        return Err(fail(&format_args!(
            "key `dns`: no [dns.{}] table (or \"manual\")",
            raw.dns
        )));
    }
    let delegate_to = dns.get(&raw.dns).and_then(|p| p.delegate_to.as_deref());
    let selector = raw.selector.unwrap_or_else(|| {
        if delegate_to.is_some() {
            DELEGATED_SELECTOR.to_owned()
        } else {
            "{alg}{date}".to_owned()
        }
    });
    slots(&selector, delegate_to, &raw.dns, &algorithms).map_err(|m| fail(&m))?;
    let sample = selector
        .replace("{slot}", "1")
        .replace("{alg}", "r")
        .replace("{date}", "20260101")
        .replace("{n}", "1")
        .replace("{host}", "mx1");
    if selector_label(&sample).is_err() {
        return Err(fail(&format_args!(
            "key `selector`: {selector:?} must give a DNS label of letters, digits and '-' ({{alg}}, {{date}}, {{n}}, {{host}}, {{slot}} are replaced)"
        )));
    }
    let rotate_every = raw.rotate_every.unwrap_or(days(90));
    if rotate_every < Duration::from_secs(60) {
        return Err(fail(&"key `rotate_every`: at least 1m"));
    }
    let lead = raw.lead.unwrap_or(Duration::from_secs(48 * 3600));
    let drain = raw.drain.unwrap_or(days(7));
    let revoke_hold = raw.revoke_hold.unwrap_or(days(30));
    let revoke_settle = raw.revoke_settle.unwrap_or(Duration::from_secs(5));
    if selector.contains("{slot}") {
        // A key leaves its slot when deleted: it drains from the moment
        // its successor signs, is revoked `drain` later (the last reload
        // settled), deleted `revoke_hold` after that; the successor's
        // rotation is due `rotate_every` after it signed.
        let held = drain + revoke_hold + revoke_settle;
        if rotate_every <= held {
            return Err(fail(&format_args!(
                "key `rotate_every` ({}) must be longer than drain + revoke_hold + revoke_settle ({}) with a {{slot}} selector: a key frees its slot only when deleted, so a shorter rotation would wait for a free slot",
                show(rotate_every),
                show(held),
            )));
        }
    }
    let key_mode = key_mode(raw.key_mode.as_deref()).map_err(|e| fail(&at("key_mode")(e)))?;
    let reload = reloads(raw.reload, raw.reload_signal, &|p| ctx.abs(p)).map_err(|e| fail(&e))?;
    let adopt = raw
        .adopt
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            adopt(a, &domains, ctx)
                .map_err(|m| fail(&format_args!("[[dkim.adopt]] #{}: {m}", i + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dkim {
        domains,
        algorithms,
        selector,
        key_dir: raw
            .key_dir
            .as_deref()
            .map(|p| ctx.abs(p))
            .unwrap_or_else(|| state_dir.default_dkim_key_dir()),
        record_dir: raw.record_dir.as_deref().map(|p| ctx.abs(p)),
        dns: raw.dns,
        ttl: raw.ttl.unwrap_or(300),
        rotate_every,
        lead,
        drain,
        revoke_hold,
        revoke_settle,
        signer: raw.signer,
        signer_dir: ctx.abs(&raw.signer_dir),
        key_owner: raw.key_owner,
        key_group: raw.key_group,
        key_mode,
        reload,
        reload_timeout: raw.reload_timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT),
        adopt,
        shared: raw.shared,
    })
}

/// The selector template when `[dkim] dns` delegates (`delegate_to`) and
/// none is written: two fixed slots per algorithm family (mx1r, mx2r,
/// mx1e, mx2e).
pub const DELEGATED_SELECTOR: &str = "mx{slot}{alg}";

/// A slot template's rules: `{slot}` never with `{date}` or `{n}` (its
/// selectors are a fixed set), `{alg}` in it when both families are
/// configured (each has its own slots), and `{slot}` required when the
/// provider delegates (one CNAME per selector, made once).
fn slots(
    selector: &str,
    delegate_to: Option<&str>,
    provider: &str,
    algorithms: &[DkimAlgorithm],
) -> Result<(), String> {
    let slot = selector.contains("{slot}");
    let moving = selector.contains("{date}") || selector.contains("{n}");
    if let Some(zone) = delegate_to
        && (!slot || moving)
    {
        return Err(format!(
            "key `selector`: {selector:?}: [dns.{provider}] delegates to {zone}, so each selector needs a CNAME made once: use {{slot}} and neither {{date}} nor {{n}} (default {DELEGATED_SELECTOR:?})"
        ));
    }
    if slot && moving {
        return Err(format!(
            "key `selector`: {selector:?}: {{slot}} names a fixed set of selectors and cannot be used with {{date}} or {{n}}"
        ));
    }
    if slot && !selector.contains("{alg}") && algorithms.iter().any(|a| !a.is_rsa()) {
        return Err(format!(
            "key `selector`: {selector:?}: with RSA and Ed25519 keys a {{slot}} template needs {{alg}} (each family has its own slots)"
        ));
    }
    Ok(())
}

/// Validates one `[[dkim.adopt]]` entry: the keys its `from` needs and no
/// other, a domain among `domains`, a selector that is one DNS label.
fn adopt(raw: RawAdopt, domains: &[DnsName], ctx: &Context) -> Result<Adopt, String> {
    let check = match raw.check.as_deref() {
        None | Some("dns") => AdoptCheck::Dns,
        Some("none") => AdoptCheck::None,
        Some(other) => return Err(format!("key `check`: {other:?} is not \"dns\" or \"none\"")),
    };
    let domain = || -> Result<Option<DnsName>, String> {
        match &raw.domain {
            None => Ok(None),
            Some(d) => {
                let d = DnsName::parse(d).map_err(|e| format!("key `domain`: {e}"))?;
                if !domains.contains(&d) {
                    return Err(format!("key `domain`: {d} is not one of [dkim] domains"));
                }
                Ok(Some(d))
            }
        }
    };
    let needed_domain = || -> Result<DnsName, String> {
        domain()?.ok_or_else(|| format!("from = {:?} needs key `domain`", raw.from))
    };
    let selector = || -> Result<String, String> {
        let s = raw
            .selector
            .clone()
            .ok_or_else(|| format!("from = {:?} needs key `selector`", raw.from))?;
        selector_label(&s).map_err(|e| format!("key `selector`: {e}"))?;
        Ok(s)
    };
    let path = || -> Result<PathBuf, String> {
        raw.path
            .as_deref()
            .map(|p| ctx.abs(p))
            .ok_or_else(|| format!("from = {:?} needs key `path`", raw.from))
    };
    let only = |allowed: &[&str]| -> Result<(), String> {
        for (key, set) in [
            ("path", raw.path.is_some()),
            ("domain", raw.domain.is_some()),
            ("selector", raw.selector.is_some()),
            ("var", raw.var.is_some()),
        ] {
            if set && !allowed.contains(&key) {
                return Err(format!("from = {:?} takes no key `{key}`", raw.from));
            }
        }
        Ok(())
    };
    let from = match raw.from.as_str() {
        "opendkim" | "rspamd" | "amavis" | "dms" => {
            only(&["path"])?;
            let p = path()?;
            match raw.from.as_str() {
                "opendkim" => AdoptFrom::Opendkim(p),
                "rspamd" => AdoptFrom::Rspamd(p),
                "amavis" => AdoptFrom::Amavis(p),
                _ => AdoptFrom::Dms(p),
            }
        }
        "dir" => {
            only(&["path", "domain"])?;
            AdoptFrom::Dir {
                dir: path()?,
                domain: domain()?,
            }
        }
        "key" => {
            only(&["path", "domain", "selector"])?;
            AdoptFrom::Key {
                file: path()?,
                domain: needed_domain()?,
                selector: selector()?,
            }
        }
        "env" => {
            only(&["var", "domain", "selector"])?;
            let var = raw
                .var
                .clone()
                .filter(|v| !v.is_empty() && !v.contains('='))
                .ok_or("from = \"env\" needs key `var` (the variable's name)")?;
            AdoptFrom::Env {
                var,
                domain: needed_domain()?,
                selector: selector()?,
            }
        }
        other => {
            return Err(format!(
                "key `from`: {other:?} is not one of opendkim, rspamd, amavis, dms, dir, key, env"
            ));
        }
    };
    Ok(Adopt { from, check })
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::DkimAlgorithm;
    use std::path::PathBuf;
    use std::time::Duration;
    #[test]
    fn dkim_table() {
        let c = parse(
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"T\"\n[dkim]\ndomains = [\"example.com\", \"example.org\"]\nalgorithms = [\"ed25519\", \"rsa-2048\"]\ndns = \"cf\"\nlead = \"0s\"\nsigner = \"opendkim\"\nsigner_dir = \"/etc/opendkim\"\nreload = [\"sh\", \"-c\", \"kill -USR1 1\"]\n",
        )
        .unwrap();
        let d = c.dkim.unwrap();
        assert_eq!(
            d.algorithms,
            vec![DkimAlgorithm::Rsa2048, DkimAlgorithm::Ed25519]
        );
        assert_eq!(d.selector, "{alg}{date}");
        assert_eq!(d.lead, Duration::ZERO);
        assert_eq!(d.rotate_every, Duration::from_secs(90 * 86_400));
        assert_eq!(d.key_dir, PathBuf::from("/var/lib/mxkeys/dkim"));
        for (text, needle) in [
            (
                "algorithms = [\"ed25519\"]\nsigner = \"opendkim\"\n",
                "Ed25519 alone",
            ),
            (
                "algorithms = [\"rsa-2048\", \"ed25519\"]\nsigner = \"amavis\"\n",
                "amavis",
            ),
            (
                "signer = \"opendkim\"\nselector = \"bad_sel\"\n",
                "selector",
            ),
            ("signer = \"postfix\"\n", "postfix"),
            (
                "signer = \"opendkim\"\nalgorithms = [\"rsa-512\"]\n",
                "rsa-512",
            ),
            (
                "signer = \"opendkim\"\nalgorithms = [\"rsa-1024\"]\n",
                "\"rsa-1024\" cannot be generated",
            ),
        ] {
            let e = parse(&format!(
                "[dkim]\ndomains = [\"example.com\"]\ndns = \"manual\"\nsigner_dir = \"/x\"\n{text}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_delegating_provider_makes_the_selector_a_slot_template() {
        let provider = "[dns.d]\ntype = \"cloudflare\"\napi_token_env = \"T\"\ndelegate_to = \"delegated.test\"\n";
        let head =
            "[dkim]\ndomains = [\"example.com\"]\nsigner = \"opendkim\"\nsigner_dir = \"/x\"\n";
        // Delegating, no selector: two slots per family.
        let c = parse(&format!("{provider}{head}dns = \"d\"\n")).unwrap();
        assert_eq!(c.dkim.unwrap().selector, "mx{slot}{alg}");
        // Not delegating: the dated default, and {slot} allowed.
        let c = parse(&format!("{head}dns = \"manual\"\n")).unwrap();
        assert_eq!(c.dkim.unwrap().selector, "{alg}{date}");
        let c = parse(&format!(
            "{head}dns = \"manual\"\nselector = \"k{{slot}}{{alg}}\"\n"
        ))
        .unwrap();
        assert_eq!(c.dkim.unwrap().selector, "k{slot}{alg}");
        // (provider, extra keys, what the error says)
        for (provider, text, needle) in [
            (
                provider,
                "dns = \"d\"\nselector = \"{alg}{date}\"\n",
                "delegates to delegated.test, so each selector needs a CNAME made once",
            ),
            (
                provider,
                "dns = \"d\"\nselector = \"{alg}{slot}{n}\"\n",
                "neither {date} nor {n}",
            ),
            (
                "",
                "dns = \"manual\"\nselector = \"{slot}{alg}{date}\"\n",
                "cannot be used with {date} or {n}",
            ),
            (
                "",
                "dns = \"manual\"\nselector = \"mx{slot}\"\nalgorithms = [\"rsa-2048\", \"ed25519\"]\n",
                "needs {alg}",
            ),
            (
                "",
                "dns = \"manual\"\nselector = \"mx{slot}{alg}\"\nrotate_every = \"37days\"\n",
                "key `rotate_every` (37d) must be longer than drain + revoke_hold + revoke_settle (37d 5s)",
            ),
            (
                provider,
                "dns = \"d\"\nrotate_every = \"30days\"\ndrain = \"1day\"\nrevoke_hold = \"29days\"\nrevoke_settle = \"0s\"\n",
                "(30d) must be longer than drain + revoke_hold + revoke_settle (30d)",
            ),
        ] {
            let e = parse(&format!("{provider}{head}{text}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        // Just longer than what a key holds its slot for: accepted.
        parse(&format!(
            "{head}dns = \"manual\"\nselector = \"mx{{slot}}{{alg}}\"\nrotate_every = \"37days 6s\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn adopt_entries_take_the_keys_their_layout_needs_and_no_other() {
        use super::{Adopt, AdoptCheck, AdoptFrom};
        let head = "[dkim]\ndomains = [\"example.com\"]\ndns = \"manual\"\nsigner = \"opendkim\"\nsigner_dir = \"/x\"\n[[dkim.adopt]]\n";
        let name = |n: &str| crate::names::DnsName::parse(n).unwrap();
        for (entry, want) in [
            (
                "from = \"opendkim\"\npath = \"/etc/opendkim/KeyTable\"\n",
                Adopt {
                    from: AdoptFrom::Opendkim(PathBuf::from("/etc/opendkim/KeyTable")),
                    check: AdoptCheck::Dns,
                },
            ),
            (
                "from = \"dir\"\npath = \"/k\"\ncheck = \"none\"\n",
                Adopt {
                    from: AdoptFrom::Dir {
                        dir: PathBuf::from("/k"),
                        domain: None,
                    },
                    check: AdoptCheck::None,
                },
            ),
            (
                "from = \"env\"\nvar = \"DKIM_PRIVATEKEY\"\ndomain = \"example.com\"\nselector = \"default\"\n",
                Adopt {
                    from: AdoptFrom::Env {
                        var: "DKIM_PRIVATEKEY".into(),
                        domain: name("example.com"),
                        selector: "default".into(),
                    },
                    check: AdoptCheck::Dns,
                },
            ),
        ] {
            let c = parse(&format!("{head}{entry}")).unwrap();
            assert_eq!(c.dkim.unwrap().adopt, vec![want], "{entry}");
        }
        for (entry, needle) in [
            ("from = \"opendkim\"\n", "needs key `path`"),
            (
                "from = \"key\"\npath = \"/k\"\nselector = \"s\"\n",
                "needs key `domain`",
            ),
            (
                "from = \"key\"\npath = \"/k\"\ndomain = \"example.org\"\nselector = \"s\"\n",
                "example.org is not one of [dkim] domains",
            ),
            (
                "from = \"key\"\npath = \"/k\"\ndomain = \"example.com\"\nselector = \"a_b\"\n",
                "key `selector`",
            ),
            (
                "from = \"rspamd\"\npath = \"/r\"\nvar = \"X\"\n",
                "takes no key `var`",
            ),
            (
                "from = \"env\"\ndomain = \"example.com\"\nselector = \"s\"\n",
                "needs key `var`",
            ),
            ("from = \"postfix\"\n", "\"postfix\" is not one of"),
            (
                "from = \"dms\"\npath = \"/d\"\ncheck = \"maybe\"\n",
                "key `check`",
            ),
        ] {
            let e = parse(&format!("{head}{entry}")).unwrap_err().to_string();
            assert!(
                e.contains("[[dkim.adopt]] #1") && e.contains(needle),
                "{entry:?}: {e}"
            );
        }
    }

    #[test]
    fn algorithms_keep_the_names_of_the_configuration_and_the_state_file() {
        for (algorithm, name) in [
            (DkimAlgorithm::Rsa1024, "rsa-1024"),
            (DkimAlgorithm::Rsa2048, "rsa-2048"),
            (DkimAlgorithm::Rsa3072, "rsa-3072"),
            (DkimAlgorithm::Ed25519, "ed25519"),
        ] {
            assert_eq!(algorithm.name(), name);
            assert_eq!(
                serde_json::to_string(&algorithm).unwrap(),
                format!("\"{name}\"")
            );
            let back: DkimAlgorithm = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, algorithm);
        }
    }
}

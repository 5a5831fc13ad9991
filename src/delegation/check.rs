//! Whether the user created the CNAMEs delegation needs: asks every
//! authoritative server of a user's name, directly and with RD=0 (the
//! machinery of `mxkeys_providers::propagation`), whether the name is a
//! CNAME to exactly its target.
//!
//! Rule: a name counts as delegated only when EVERY authoritative server
//! of its zone answers the CNAME to the expected target; a server that
//! answers nothing, another target, or no usable answer is an error naming
//! the name, the server and what to create or fix, in one line. For a TLSA
//! name, DANE only works through the CNAME when both the user's zone and
//! the delegated zone are DNSSEC-signed: [`signed`] checks both.
//!
//! Effects (DNS questions); what to create is decided in the pure
//! [`super`] module.

use mxkeys_providers::RData;
use mxkeys_providers::RecordType;
use mxkeys_providers::propagation::Propagation;

/// Why a delegation CNAME is not in place, in one line naming the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// A server answers no CNAME at the name.
    #[error("{name}: no CNAME on {server}; create \"{name}. IN CNAME {target}.\"")]
    Missing {
        name: String,
        server: String,
        target: String,
    },
    /// A server answers a CNAME to another name.
    #[error(
        "{name}: CNAME on {server} points to {found}., not {target}.; change it to \"{name}. IN CNAME {target}.\""
    )]
    Wrong {
        name: String,
        server: String,
        found: String,
        target: String,
    },
    /// A zone a TLSA name depends on is not DNSSEC-signed.
    #[error(
        "{name}: the zone of {zone_of} is not DNSSEC-signed; a CNAME at a TLSA name works for DANE only when both the user's zone and the delegated zone are signed"
    )]
    Unsigned { name: String, zone_of: String },
    /// The servers could not be asked, or gave no usable answer.
    #[error("{name}: cannot check the delegation CNAME: {reason}")]
    Lookup { name: String, reason: String },
}

impl DelegationError {
    /// The one word `mxkeys dns delegation` prints for it.
    pub fn status(&self) -> &'static str {
        match self {
            DelegationError::Missing { .. } => "missing",
            DelegationError::Wrong { .. } => "wrong",
            DelegationError::Unsigned { .. } => "unsigned",
            DelegationError::Lookup { .. } => "error",
        }
    }
}

/// Checks on every authoritative server of `name`'s zone that `name` is a
/// CNAME to exactly `target` (names compared in canonical form: lower
/// case, no trailing dot). The first server that differs is named.
pub async fn cname(prop: &Propagation, name: &str, target: &str) -> Result<(), DelegationError> {
    let name = mxkeys_providers::canonical_name(name);
    let target = mxkeys_providers::canonical_name(target);
    let observed =
        prop.observe(&name, RecordType::Cname)
            .await
            .map_err(|e| DelegationError::Lookup {
                name: name.clone(),
                reason: e.to_string(),
            })?;
    if observed.is_empty() {
        return Err(DelegationError::Lookup {
            name,
            reason: "no authoritative server answered".to_owned(),
        });
    }
    for o in &observed {
        let server = if o.host == o.server.to_string() {
            o.host.clone()
        } else {
            format!("{} ({})", o.host, o.server)
        };
        let found = o.values.iter().find_map(|v| match v {
            RData::Cname(t) => Some(mxkeys_providers::canonical_name(t)),
            _ => None,
        });
        match found {
            None => {
                return Err(DelegationError::Missing {
                    name,
                    server,
                    target,
                });
            }
            Some(found) if found != target => {
                return Err(DelegationError::Wrong {
                    name,
                    server,
                    found,
                    target,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// For a TLSA name delegated to `target`: both the zone holding `name`
/// (the user's) and the zone holding `target` (the delegated one) are
/// DNSSEC-signed on every authoritative server.
pub async fn signed(prop: &Propagation, name: &str, target: &str) -> Result<(), DelegationError> {
    let name = mxkeys_providers::canonical_name(name);
    let target = mxkeys_providers::canonical_name(target);
    // The servers answer a CNAME owner's SOA question with the CNAME (and
    // the target's zone): ask about its parent, which is in the same zone
    // (a CNAME is never at a zone's apex).
    let parent = name.split_once('.').map_or(name.as_str(), |(_, p)| p);
    for (zone_of, asked) in [(&name, parent), (&target, target.as_str())] {
        match prop.zone_signed(asked).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(DelegationError::Unsigned {
                    name: name.clone(),
                    zone_of: zone_of.clone(),
                });
            }
            Err(e) => {
                return Err(DelegationError::Lookup {
                    name: name.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// What a TLSA name needs: the CNAME, then both zones signed.
pub async fn tlsa(prop: &Propagation, name: &str, target: &str) -> Result<(), DelegationError> {
    cname(prop, name, target).await?;
    signed(prop, name, target).await
}

/// Everything one delegated name needs: its CNAME, and for a TLSA name
/// both zones signed.
pub async fn delegated(prop: &Propagation, d: &super::Delegated) -> Result<(), DelegationError> {
    if d.needs_dnssec {
        tlsa(prop, &d.name, &d.target).await
    } else {
        cname(prop, &d.name, &d.target).await
    }
}

/// Before anything is written through `cfg`: when it delegates, each of
/// the user's `names` is a CNAME to its target on every authoritative
/// server (the first problem is the error). Nothing to check otherwise.
pub async fn preflight(
    cfg: &crate::config::DnsProvider,
    names: &[String],
) -> Result<(), DelegationError> {
    let Some(zone) = cfg.delegate_to.as_deref() else {
        return Ok(());
    };
    let prop = crate::dns::propagation(cfg);
    for name in names {
        let target = super::target(name, zone).map_err(|e| DelegationError::Lookup {
            name: name.clone(),
            reason: e.to_string(),
        })?;
        cname(&prop, name, &target).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_is_one_line_naming_the_name_and_what_to_do() {
        let missing = DelegationError::Missing {
            name: "_acme-challenge.mail.example.com".into(),
            server: "127.0.0.1:5300".into(),
            target: "_acme-challenge.mail.example.com.acme.example.net".into(),
        };
        assert_eq!(
            missing.to_string(),
            "_acme-challenge.mail.example.com: no CNAME on 127.0.0.1:5300; create \
             \"_acme-challenge.mail.example.com. IN CNAME _acme-challenge.mail.example.com.acme.example.net.\""
        );
        let wrong = DelegationError::Wrong {
            name: "a.example.com".into(),
            server: "ns1.example.com (192.0.2.1:53)".into(),
            found: "elsewhere.example.org".into(),
            target: "a.example.com.d.example.net".into(),
        };
        let text = wrong.to_string();
        assert!(
            text.contains("elsewhere.example.org.")
                && text.contains("a.example.com.d.example.net."),
            "{text}"
        );
        for e in [missing, wrong] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}

//! DNS-01 challenge records: where each `_acme-challenge` value goes, its
//! publication through a `[dns.NAME]` provider, the wait until every
//! authoritative server answers it, and its removal.
//!
//! Rule: an order adds and removes only its own values. Other clients
//! answer challenges at the same names (a second `acme` source for the same
//! names, certbot, another host): their values are never replaced or
//! deleted, and the wait asks only that each server's set contains ours.
//!
//! Delegation: `_acme-challenge.NAME` may be a CNAME into a zone kept for
//! challenges, so the main zone's credentials need not be on the mail host.
//! The chain is followed through public resolution, as the CA will follow
//! it ([`Propagation::follow_cnames`]), never through the provider, whose
//! credentials may reach only the challenge zone. The values are written at
//! the end of the chain, and the wait asks that name's servers.
//!
//! Under `[dns.NAME] delegate_to` the other way round: the provider maps
//! each user's name to its place in the delegated zone itself, so the
//! values are written at the user's name (following the chain first would
//! map twice), the wait asks the user's name (propagation follows the
//! CNAME), and [`preflight`] checks every challenge name's CNAME before
//! the order is created at the CA.
//!
//! The order (`order.rs`) decides which challenges to answer; this module
//! only acts on DNS. Errors name the record and the provider.

use std::collections::BTreeMap;

use crate::dns::Provider;
use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::{RData, RecordStore, RecordType};

/// TTL of DNS-01 TXT records.
const CHALLENGE_TTL: u32 = 60;

/// One DNS-01 challenge to answer.
pub struct Challenge<'a> {
    /// As the CA shows it (`*.example.com` for a wildcard).
    pub identifier: &'a str,
    /// The TXT value (the key authorization's digest).
    pub value: &'a str,
}

/// `_acme-challenge.` names and their TXT values (a wildcard and its base
/// name share one name, with two values).
fn dns_records(challenges: &[Challenge<'_>]) -> BTreeMap<String, Vec<RData>> {
    let mut records: BTreeMap<String, Vec<RData>> = BTreeMap::new();
    for c in challenges {
        let base = c.identifier.strip_prefix("*.").unwrap_or(c.identifier);
        records
            .entry(format!("_acme-challenge.{base}"))
            .or_default()
            .push(RData::Txt(c.value.to_owned()));
    }
    records
}

/// Why the DNS-01 challenge records could not be put in place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Dns01Error {
    #[error("dns-01: following CNAMEs from {name}: {source}")]
    FollowCnames {
        name: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    /// A delegation CNAME is missing or wrong (checked before ordering).
    #[error("dns-01: {0}")]
    Delegation(#[from] crate::delegation::check::DelegationError),
    #[error("dns-01: no [dns.{0}] provider")]
    NoProvider(String),
    #[error("dns-01: adding to {target} through [dns.{provider}]: {source}")]
    Add {
        target: String,
        provider: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    /// The values were not seen on every authoritative server in time.
    #[error("dns-01: {target}: {source}")]
    Propagation {
        target: String,
        #[source]
        source: mxkeys_providers::Error,
    },
}

/// Where the record `name` is written: the end of its CNAME chain, as the
/// CA sees it; the user's name itself under `delegate_to` (the provider
/// maps it).
async fn delegated(
    provider: &Provider,
    propagation: &Propagation,
    name: &str,
) -> Result<String, Dns01Error> {
    if provider.delegate_to().is_some() {
        return Ok(name.to_owned());
    }
    propagation
        .follow_cnames(name)
        .await
        .map_err(|source| Dns01Error::FollowCnames {
            name: name.to_owned(),
            source,
        })
}

/// Before the order is created: under `delegate_to`, every challenge name
/// of `identifiers` (`_acme-challenge.BASE`, a wildcard with its base) is
/// a CNAME to its target on every authoritative server of the user's
/// zone. Nothing to check without delegation.
pub async fn preflight(
    name: &str,
    dns: Option<(&Provider, &Propagation)>,
    identifiers: &[&str],
) -> Result<(), Dns01Error> {
    let (provider, propagation) = dns.ok_or_else(|| Dns01Error::NoProvider(name.to_owned()))?;
    let Some(zone) = provider.delegate_to() else {
        return Ok(());
    };
    let challenges: Vec<Challenge<'_>> = identifiers
        .iter()
        .map(|identifier| Challenge {
            identifier,
            value: "",
        })
        .collect();
    for record in dns_records(&challenges).into_keys() {
        let target = crate::delegation::target(&record, zone).map_err(|e| {
            crate::delegation::check::DelegationError::Lookup {
                name: record.clone(),
                reason: e.to_string(),
            }
        })?;
        crate::delegation::check::cname(propagation, &record, &target).await?;
    }
    Ok(())
}

/// Adds every challenge value through the provider `name`, then waits until
/// every authoritative server's set contains them.
pub async fn publish(
    name: &str,
    dns: Option<(&Provider, &Propagation)>,
    challenges: &[Challenge<'_>],
) -> Result<(), Dns01Error> {
    let (provider, propagation) = dns.ok_or_else(|| Dns01Error::NoProvider(name.to_owned()))?;
    let mut written = Vec::new();
    for (record, values) in dns_records(challenges) {
        let target = delegated(provider, propagation, &record).await?;
        provider
            .add(&target, CHALLENGE_TTL, &values)
            .await
            .map_err(|source| Dns01Error::Add {
                target: target.clone(),
                provider: name.to_owned(),
                source,
            })?;
        written.push((target, values));
    }
    for (target, values) in &written {
        propagation
            .wait_contains(target, RecordType::Txt, values)
            .await
            .map_err(|source| Dns01Error::Propagation {
                target: target.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Removes this order's challenge values, and only them (errors are logged:
/// the order's outcome matters more).
pub async fn unpublish(
    name: &str,
    dns: Option<(&Provider, &Propagation)>,
    challenges: &[Challenge<'_>],
) {
    let Some((provider, propagation)) = dns else {
        return;
    };
    for (record, values) in dns_records(challenges) {
        let target = match delegated(provider, propagation, &record).await {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!("{e}: its values stay");
                continue;
            }
        };
        if let Err(e) = provider.remove_values(&target, &values).await {
            tracing::warn!("dns-01: cannot remove values of {target} through [dns.{name}]: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge<'a>(identifier: &'a str, value: &'a str) -> Challenge<'a> {
        Challenge { identifier, value }
    }

    #[test]
    fn a_wildcard_and_its_base_share_one_record_with_two_values() {
        let records = dns_records(&[
            challenge("*.example.com", "a"),
            challenge("example.com", "b"),
            challenge("mail.example.com", "c"),
        ]);
        assert_eq!(
            records["_acme-challenge.example.com"],
            vec![RData::Txt("a".into()), RData::Txt("b".into())]
        );
        assert_eq!(
            records["_acme-challenge.mail.example.com"],
            vec![RData::Txt("c".into())]
        );
    }
}

//! DNS-01 challenge records: where each `_acme-challenge` value goes, its
//! publication through a `[dns.NAME]` provider, the wait until every
//! authoritative server answers it, and its removal.
//!
//! The order (`order.rs`) decides which challenges to answer; this module
//! only acts on DNS. Errors name the record and the provider.

use std::collections::BTreeMap;

use crate::dns::Provider;
use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::{RData, RecordStore};

/// TTL of DNS-01 TXT records.
const CHALLENGE_TTL: u32 = 60;

/// One DNS-01 challenge to answer.
pub struct Challenge<'a> {
    /// As the CA shows it (`*.example.com` for a wildcard).
    pub identifier: &'a str,
    /// The TXT value (the key authorization's digest).
    pub value: &'a str,
}

/// Where a challenge record really goes: `_acme-challenge.NAME` is often a
/// CNAME into a zone kept for challenges (so the main zone's credentials
/// need not be on the mail host); the record is written at the end of the
/// chain, as the CA will look it up.
async fn delegated(provider: &Provider, name: &str) -> String {
    let mut name = name.to_owned();
    for _ in 0..8 {
        match provider
            .read(&name, mxkeys_providers::RecordType::Cname)
            .await
        {
            Ok(targets) => match targets.first() {
                Some(RData::Cname(target)) => name = target.clone(),
                _ => break,
            },
            Err(_) => break,
        }
    }
    name
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

/// Writes every challenge record through the provider `name`, then waits
/// until every authoritative server answers them.
pub async fn publish(
    name: &str,
    dns: Option<(&Provider, &Propagation)>,
    challenges: &[Challenge<'_>],
) -> Result<(), String> {
    let (provider, propagation) = dns.ok_or_else(|| format!("dns-01: no [dns.{name}] provider"))?;
    let records = dns_records(challenges);
    for (record, values) in &records {
        let target = delegated(provider, record).await;
        provider
            .replace(&target, CHALLENGE_TTL, values)
            .await
            .map_err(|e| format!("dns-01: writing {target} through [dns.{name}]: {e}"))?;
    }
    for (record, values) in &records {
        propagation
            .wait(record, mxkeys_providers::RecordType::Txt, values)
            .await
            .map_err(|e| format!("dns-01: {record}: {e}"))?;
    }
    Ok(())
}

/// Removes the challenge records (errors are logged: the order's outcome
/// matters more).
pub async fn unpublish(
    name: &str,
    dns: Option<(&Provider, &Propagation)>,
    challenges: &[Challenge<'_>],
) {
    let Some((provider, _)) = dns else { return };
    for record in dns_records(challenges).keys() {
        let target = delegated(provider, record).await;
        if let Err(e) = provider
            .remove(&target, mxkeys_providers::RecordType::Txt)
            .await
        {
            tracing::warn!("dns-01: cannot remove {target} through [dns.{name}]: {e}");
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

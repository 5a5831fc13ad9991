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

use mxkeys_providers::Error;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

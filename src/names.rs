//! DNS names as selection compares them: normalisation and wildcard coverage.
//!
//! Names are compared case-insensitively with a trailing dot ignored. A
//! wildcard `*.example.com` covers exactly one label in its place: it covers
//! `mail.example.com`, not `example.com` and not `a.b.example.com` (RFC 6125).

use std::fmt;

/// A DNS name in canonical form: lower case ASCII, no trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

/// Why a string is not a usable DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("{0:?}: empty label")]
    EmptyLabel(String),
    #[error("{0:?}: character {1:?} is not allowed in a host name")]
    BadChar(String, char),
    #[error("{0:?}: a wildcard is allowed only as the whole leftmost label")]
    BadWildcard(String),
    #[error("{0:?}: longer than 253 characters")]
    TooLong(String),
}

impl DnsName {
    /// Parses a host name or wildcard as written in a configuration.
    pub fn parse(input: &str) -> Result<Self, NameError> {
        let name = canonical(input);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > 253 {
            return Err(NameError::TooLong(input.to_owned()));
        }
        for (i, label) in name.split('.').enumerate() {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(input.to_owned()));
            }
            if label.contains('*') && (i != 0 || label != "*") {
                return Err(NameError::BadWildcard(input.to_owned()));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '*'))
            {
                return Err(NameError::BadChar(input.to_owned(), c));
            }
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lower-cases a name and strips one trailing dot.
pub fn canonical(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// How a certificate name covers a wanted name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coverage {
    Exact,
    Wildcard,
}

/// Does the certificate name `presented` (canonical form) cover `wanted`?
pub fn covers(presented: &str, wanted: &DnsName) -> Option<Coverage> {
    let wanted = wanted.as_str();
    if presented == wanted {
        return Some(Coverage::Exact);
    }
    // `*.example.com` covers `x.example.com`: one label, never the bare parent.
    let suffix = presented.strip_prefix("*.")?;
    if wanted.starts_with("*.") {
        return None;
    }
    let (first, rest) = wanted.split_once('.')?;
    (!first.is_empty() && rest == suffix).then_some(Coverage::Wildcard)
}

/// Does any of the certificate names `presented` cover any `wanted` name?
/// `cover_all` lists what is missing; this answers without allocating, for
/// the many certificates of a large store that concern none of a target's
/// names.
pub fn covers_any(presented: &[String], wanted: &[DnsName]) -> bool {
    presented
        .iter()
        .any(|p| wanted.iter().any(|w| covers(p, w).is_some()))
}

/// How well a set of certificate names covers every wanted name: `None` when
/// one is not covered, else the number of names covered only by a wildcard.
pub fn cover_all(presented: &[String], wanted: &[DnsName]) -> Result<usize, Vec<DnsName>> {
    let mut wildcards = 0;
    let mut missing = Vec::new();
    for name in wanted {
        match presented.iter().filter_map(|p| covers(p, name)).min() {
            Some(Coverage::Exact) => {}
            Some(Coverage::Wildcard) => wildcards += 1,
            None => missing.push(name.clone()),
        }
    }
    if missing.is_empty() {
        Ok(wildcards)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> DnsName {
        DnsName::parse(s).unwrap()
    }

    #[test]
    fn exact_is_case_insensitive_and_ignores_trailing_dot() {
        assert_eq!(n("Mail.Example.COM."), n("mail.example.com"));
        assert_eq!(
            covers("mail.example.com", &n("MAIL.example.com.")),
            Some(Coverage::Exact)
        );
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        assert_eq!(
            covers("*.example.com", &n("mail.example.com")),
            Some(Coverage::Wildcard)
        );
        assert_eq!(covers("*.example.com", &n("example.com")), None);
        assert_eq!(covers("*.example.com", &n("a.b.example.com")), None);
        assert_eq!(covers("*.example.com", &n("mail.example.org")), None);
        assert_eq!(
            covers("*.example.com", &n("*.example.com")),
            Some(Coverage::Exact)
        );
        assert_eq!(covers("mail.example.com", &n("*.example.com")), None);
    }

    #[test]
    fn cover_all_counts_wildcards_and_lists_missing() {
        let sans = vec!["*.example.com".to_owned(), "example.com".to_owned()];
        assert_eq!(
            cover_all(&sans, &[n("example.com"), n("mail.example.com")]),
            Ok(1)
        );
        assert_eq!(cover_all(&sans, &[n("example.com")]), Ok(0));
        assert_eq!(
            cover_all(&sans, &[n("a.b.example.com")]),
            Err(vec![n("a.b.example.com")])
        );
    }

    #[test]
    fn covers_any_is_true_when_cover_all_misses_only_some_names() {
        let sans = vec!["*.example.com".to_owned(), "example.com".to_owned()];
        for (wanted, any) in [
            (vec![n("mail.example.com")], true),
            (vec![n("a.b.example.com"), n("example.com")], true),
            (vec![n("a.b.example.com")], false),
            (vec![n("example.net"), n("mail.example.net")], false),
            (vec![], false),
        ] {
            assert_eq!(covers_any(&sans, &wanted), any, "{wanted:?}");
            let missed_all = cover_all(&sans, &wanted).is_err_and(|m| m.len() == wanted.len());
            assert_eq!(!any && !wanted.is_empty(), missed_all, "{wanted:?}");
        }
    }

    #[test]
    fn parse_rejects_bad_names() {
        assert!(DnsName::parse("").is_err());
        assert!(DnsName::parse("a..b").is_err());
        assert!(DnsName::parse("mail.*.example.com").is_err());
        assert!(DnsName::parse("m*.example.com").is_err());
        assert!(DnsName::parse("mail example.com").is_err());
        assert!(DnsName::parse("*.example.com").unwrap().is_wildcard());
    }
}

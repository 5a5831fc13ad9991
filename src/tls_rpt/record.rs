//! The `_smtp._tls.DOMAIN` TXT record (RFC 8460 §3): `v=TLSRPTv1;
//! rua=URI,URI`, telling senders where to send their daily TLS reports.
//!
//! Pure: text in, values out. The rule: every `rua` URI is `mailto:` with
//! an address or `https://` with a host, and holds no character that would
//! break the record (`,` `;` `!` and spaces must be percent-encoded, RFC
//! 8460 §3); a record is read back tolerant of spaces, and refused with a
//! one-line reason for a wrong version, a missing `rua` or a bad URI.

use std::fmt;

/// Why a `rua` URI or a TLS-RPT record could not be read or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error(
        "TLS-RPT rua {0:?}: expected \"mailto:ADDRESS\" or \"https://HOST/PATH\" without spaces, ',', ';' or '!'"
    )]
    BadUri(String),
    #[error("_smtp._tls TXT record: does not start with \"v=TLSRPTv1\"")]
    BadVersion,
    #[error("_smtp._tls TXT record: no `rua` field")]
    NoRua,
}

/// One report destination: `mailto:` or `https:` (RFC 8460 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rua(String);

impl Rua {
    /// Checks a URI as written (surrounding spaces removed).
    pub fn parse(input: &str) -> Result<Self, RecordError> {
        let bad = || RecordError::BadUri(input.to_owned());
        let uri = input.trim();
        if uri.is_empty()
            || uri
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ",;!".contains(c))
        {
            return Err(bad());
        }
        let ok = if let Some(address) = strip_prefix_ignore_case(uri, "mailto:") {
            // `local@domain.tld` before any `?headers`, neither side empty.
            let address = address.split('?').next().unwrap_or_default();
            matches!(address.rsplit_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.'))
        } else if let Some(rest) = strip_prefix_ignore_case(uri, "https://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let host = host.split(':').next().unwrap_or_default();
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        } else {
            false
        };
        if ok {
            Ok(Self(uri.to_owned()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether reports go to an HTTPS endpoint (else by mail).
    pub fn is_https(&self) -> bool {
        strip_prefix_ignore_case(&self.0, "https://").is_some()
    }
}

impl fmt::Display for Rua {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The name of a domain's TLS-RPT record.
pub fn record_name(domain: &crate::names::DnsName) -> String {
    format!("_smtp._tls.{domain}")
}

/// The `_smtp._tls.DOMAIN` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    rua: Vec<Rua>,
}

impl TlsRptRecord {
    /// A record for these destinations, in the order given; `None` when
    /// there are none (a record without `rua` is invalid).
    pub fn new(rua: Vec<Rua>) -> Option<Self> {
        (!rua.is_empty()).then_some(Self { rua })
    }

    pub fn rua(&self) -> &[Rua] {
        &self.rua
    }

    /// The TXT value as published: `v=TLSRPTv1; rua=URI,URI`.
    pub fn render(&self) -> String {
        let list: Vec<&str> = self.rua.iter().map(Rua::as_str).collect();
        format!("v=TLSRPTv1; rua={}", list.join(","))
    }

    /// Reads a TXT value: `v=TLSRPTv1` first, fields separated by `;`,
    /// spaces around fields, `=` and `,` allowed; the `rua` field is
    /// required (the first counts), other fields are ignored.
    pub fn parse(txt: &str) -> Result<Self, RecordError> {
        let mut fields = txt.split(';').map(str::trim);
        match fields.next().and_then(|f| f.split_once('=')) {
            Some((k, v)) if k.trim() == "v" && v.trim() == "TLSRPTv1" => {}
            _ => return Err(RecordError::BadVersion),
        }
        let list = fields
            .filter_map(|f| f.split_once('='))
            .find(|(k, _)| k.trim() == "rua")
            .map(|(_, v)| v)
            .ok_or(RecordError::NoRua)?;
        let rua = list
            .split(',')
            .map(Rua::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(rua).ok_or(RecordError::NoRua)
    }
}

impl fmt::Display for TlsRptRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_uris_are_mailto_addresses_or_https_urls() {
        for (uri, ok) in [
            ("mailto:tlsrpt@example.com", true),
            ("MAILTO:tlsrpt@example.com", true),
            ("mailto:tls+rpt@mail.example.com", true),
            ("https://reporting.example.com/v1/tlsrpt", true),
            ("https://reporting.example.com:8443/tlsrpt?x=1", true),
            ("https://mta-sts.example.com", true),
            ("http://reporting.example.com/tlsrpt", false),
            ("mailto:", false),
            ("mailto:@example.com", false),
            ("mailto:tlsrpt", false),
            ("mailto:tlsrpt@localhost", false),
            ("https://", false),
            ("https:///path", false),
            ("https://a b.example/", false),
            ("mailto:a@example.com,mailto:b@example.com", false),
            ("mailto:a@example.com!10m", false),
            ("mailto:a@example.com;", false),
            ("ftp://example.com/", false),
            ("", false),
        ] {
            assert_eq!(Rua::parse(uri).is_ok(), ok, "{uri:?}");
        }
        assert!(Rua::parse("https://r.example/x").unwrap().is_https());
        assert!(!Rua::parse("mailto:r@example.com").unwrap().is_https());
    }

    #[test]
    fn the_tls_rpt_record_renders_and_parses_back() {
        let rua = vec![
            Rua::parse("mailto:tlsrpt@example.com").unwrap(),
            Rua::parse("https://mta-sts.example.com/tlsrpt").unwrap(),
        ];
        let r = TlsRptRecord::new(rua.clone()).unwrap();
        assert_eq!(
            r.render(),
            "v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt"
        );
        assert_eq!(TlsRptRecord::parse(&r.render()), Ok(r.clone()));
        for txt in [
            "v=TLSRPTv1;rua=mailto:tlsrpt@example.com,https://mta-sts.example.com/tlsrpt",
            " v = TLSRPTv1 ; rua = mailto:tlsrpt@example.com , https://mta-sts.example.com/tlsrpt ;",
            "v=TLSRPTv1; ext=1; rua=mailto:tlsrpt@example.com, https://mta-sts.example.com/tlsrpt",
        ] {
            assert_eq!(TlsRptRecord::parse(txt).unwrap().rua(), &rua[..], "{txt:?}");
        }
        assert_eq!(
            record_name(&crate::names::DnsName::parse("Example.com.").unwrap()),
            "_smtp._tls.example.com"
        );
        assert_eq!(TlsRptRecord::new(vec![]), None);
    }

    #[test]
    fn a_tls_rpt_record_with_a_wrong_version_or_a_bad_uri_is_refused() {
        for (txt, want) in [
            (
                "v=TLSRPTv2; rua=mailto:a@example.com",
                RecordError::BadVersion,
            ),
            (
                "rua=mailto:a@example.com; v=TLSRPTv1",
                RecordError::BadVersion,
            ),
            ("v=STSv1; id=abc", RecordError::BadVersion),
            ("v=TLSRPTv1;", RecordError::NoRua),
            ("v=TLSRPTv1; rua=", RecordError::BadUri(String::new())),
            (
                "v=TLSRPTv1; rua=mailto:a@example.com,http://r.example/",
                RecordError::BadUri("http://r.example/".into()),
            ),
            (
                "v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com",
                RecordError::BadUri(String::new()),
            ),
        ] {
            assert_eq!(TlsRptRecord::parse(txt), Err(want), "{txt:?}");
        }
    }
}

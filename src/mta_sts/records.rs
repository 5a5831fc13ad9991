//! `mxkeys mta-sts records`: what to publish by hand, for hosts whose DNS is
//! `manual` or whose policy a web server serves from `webroot` — the
//! policy body, its id, and the `_mta-sts` and `_smtp._tls` TXT records as
//! zone-file lines, computed exactly as the MTA-STS pass will publish them.
//!
//! Pure: the configuration in, text out. Reading the MX hosts from DNS
//! (an `[mta_sts]` table without `mx`) belongs to the MTA-STS pass; here
//! such a table is an error saying to set `mx`.

use std::fmt::Write as _;

use super::policy::{Policy, PolicyError, StsRecord, sts_record_name};
use crate::config::{MtaSts, TlsRpt};
use crate::tls_rpt::record::{TlsRptRecord, record_name};

/// Why the records cannot be printed: one line naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("neither [mta_sts] nor [tls_rpt] is configured: nothing to publish")]
    NothingConfigured,
    #[error(
        "[mta_sts]: key `mx` is not set; reading the MX hosts from DNS comes with the MTA-STS pass, so list them here to print the records"
    )]
    MxFromDns,
    #[error("[mta_sts]: {0}")]
    Policy(#[from] PolicyError),
}

/// The text `mxkeys mta-sts records` prints: for `[mta_sts]`, the body to
/// serve at each `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` and one
/// `_mta-sts` TXT line per domain; for `[tls_rpt]`, one `_smtp._tls` TXT
/// line per domain.
pub fn render(mta_sts: Option<&MtaSts>, tls_rpt: Option<&TlsRpt>) -> Result<String, RecordsError> {
    if mta_sts.is_none() && tls_rpt.is_none() {
        return Err(RecordsError::NothingConfigured);
    }
    let mut out = String::new();
    if let Some(m) = mta_sts {
        if m.mx.is_empty() {
            return Err(RecordsError::MxFromDns);
        }
        let policy: Policy = m.policy(&[])?;
        let record = StsRecord::for_policy(&policy);
        let _ = writeln!(
            out,
            "; MTA-STS policy {} (mode {}), served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt",
            record.id(),
            policy.mode()
        );
        let _ = writeln!(
            out,
            "; body (each line ends CRLF; serve it before publishing a new id):"
        );
        for line in policy.canonical().lines() {
            let _ = writeln!(out, ";   {}", line.trim_end_matches('\r'));
        }
        for d in &m.domains {
            let _ = writeln!(
                out,
                "{}. IN TXT \"{}\"",
                sts_record_name(d),
                record.render()
            );
        }
    }
    if let Some(t) = tls_rpt
        && let Some(record) = TlsRptRecord::new(t.rua.clone())
    {
        let _ = writeln!(out, "; TLS-RPT: where senders report");
        for d in &t.domains {
            let _ = writeln!(out, "{}. IN TXT \"{}\"", record_name(d), record.render());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Host};
    use std::path::{Path, PathBuf};

    fn config(tables: &str) -> Config {
        let host = Host {
            cwd: PathBuf::from("/srv"),
            hostname: None,
        };
        Config::parse(
            Path::new("/etc/mxkeys/t.toml"),
            &format!("[dns.ns]\ntype = \"manual\"\n{tables}"),
            &host,
        )
        .unwrap()
    }

    const STS: &str = "[mta_sts]\ndomains = [\"example.org\", \"example.com\"]\nmode = \"enforce\"\nmx = [\"MX2.example.com\", \"mx1.example.com\"]\ndns = \"ns\"\nwebroot = \"/var/www\"\n";

    #[test]
    fn the_records_carry_the_policys_own_id_for_every_domain_and_the_body_to_serve() {
        let c = config(&format!(
            "{STS}[tls_rpt]\nrua = [\"mailto:tlsrpt@example.com\", \"https://r.example.com/v1\"]\n"
        ));
        let m = c.mta_sts.as_ref().unwrap();
        let id = m.policy(&[]).unwrap().id();
        let text = render(c.mta_sts.as_ref(), c.tls_rpt.as_ref()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
        assert_eq!(
            lines,
            [
                format!("_mta-sts.example.com. IN TXT \"v=STSv1; id={id};\""),
                format!("_mta-sts.example.org. IN TXT \"v=STSv1; id={id};\""),
                "_smtp._tls.example.com. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example.com/v1\"".to_owned(),
                "_smtp._tls.example.org. IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://r.example.com/v1\"".to_owned(),
            ]
        );
        for body_line in [
            ";   version: STSv1",
            ";   mode: enforce",
            ";   mx: mx1.example.com",
            ";   mx: mx2.example.com",
            ";   max_age: 604800",
        ] {
            assert!(text.lines().any(|l| l == body_line), "{body_line}\n{text}");
        }
    }

    #[test]
    fn without_mx_or_any_table_the_command_says_what_to_set() {
        let no_mx = STS.replace("mx = [\"MX2.example.com\", \"mx1.example.com\"]\n", "");
        let c = config(&no_mx);
        assert_eq!(
            render(c.mta_sts.as_ref(), None),
            Err(RecordsError::MxFromDns)
        );
        assert_eq!(render(None, None), Err(RecordsError::NothingConfigured));
    }
}

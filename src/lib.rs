//! mxkeys keeps a mail server's TLS certificates valid and live.
//!
//! One reconcile pipeline, in the order data flows:
//! [`source`] reads certificates into candidates, [`select`] picks one per
//! target, [`install`] writes the target's files atomically, [`reload`]
//! tells the services; [`pipeline`] drives those steps for every command.
//! Pure logic ([`names`], [`cert`], [`select`], [`config`]) is kept apart from
//! effects (files, processes) so most of it is tested without servers.

pub mod acme;
pub mod cert;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod dane;
pub mod delegation;
pub mod dkim;
pub mod dns;
pub mod docs;
pub mod init;
pub mod install;
pub mod listen;
pub mod mta_sts;
pub mod names;
pub mod pipeline;
pub mod reload;
pub mod select;
pub mod source;
pub mod state;
pub mod status;
pub mod tls_rpt;
pub mod verify;

/// The single-threaded tokio runtime the async parts run on (the
/// reconcile's CPU work runs on rayon and the blocking pool). Logs why it
/// could not start.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            None
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A Unix time as RFC 3339 in UTC, e.g. `2026-11-21T08:00:00Z`.
pub fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{ts}"))
}

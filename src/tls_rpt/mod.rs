//! TLS-RPT (RFC 8460, issue 15): the `_smtp._tls.DOMAIN` record that tells
//! senders where to report, and the reports they send back, read safely
//! (bounded size, typed refusals) so a broken DANE or MTA-STS setup is
//! seen from the senders' side.

pub mod metrics;
pub mod record;
pub mod report;
pub mod store;

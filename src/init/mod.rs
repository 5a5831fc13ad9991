//! What `mxkeys init` learns from the host before it writes a configuration
//! (issue 16). Rule: read-only — nothing here writes a file, changes a
//! setting or signals a service; it only runs the servers' own
//! configuration printers and reads PEM labels.
//!
//! [`mail`]: which certificate files Postfix and Dovecot serve, and on which
//! TLS ports. Not yet wired into the CLI.

pub mod mail;

//! The integration tests of `mxkeys`, in one test binary (as ripgrep does:
//! one link instead of one per file), one module per topic. They drive the
//! `mxkeys` binary and real programs (BIND, pebble, Postfix, Dovecot,
//! OpenDKIM, Rspamd, systemd in nspawn) on loopback ports in temporary
//! directories; the harness is the `mxkeys-testsupport` crate.
//!
//! Tests run in parallel, as the separate binaries ran theirs: nothing here
//! changes the process's environment, working directory or umask; every
//! server port comes from the one pool of the process; and the tests that
//! need a namespace of their own (`single_family`) re-run this binary
//! inside it with one test selected by its full name.

mod acme;
mod adopt_host;
mod cluster;
mod cluster_acme;
mod cluster_dkim;
mod cluster_store;
mod config;
mod container_env;
mod crash;
mod daemon;
mod dane;
mod dane_check;
mod dane_gate;
mod dane_loop;
mod dane_pass;
mod deb;
mod delegation;
mod delegation_check;
mod dkim;
mod dkim_adopt;
mod dkim_import_from;
mod dkim_slots;
mod dns;
mod dns_longtail;
mod docs;
mod hostile_fs;
mod hostile_keydir;
mod image;
mod init_cmd;
mod init_mail;
mod init_sources;
mod mail_servers;
mod malformed;
mod monitoring;
mod monitoring_names;
mod mta_sts;
mod mta_sts_cli;
mod mta_sts_pass;
mod mta_sts_policy;
mod mta_sts_probe;
mod mta_sts_send;
mod properties;
mod secrets;
mod selection;
mod sidecar_dkim;
mod single_family;
mod sources;
mod status;
mod status_page;
mod sync;
mod systemd;
mod tls_rpt;
mod tls_rpt_http;
mod two_hosts;

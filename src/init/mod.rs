//! `mxkeys init`: inspect the host, write a commented configuration that
//! takes it over as it is (issue 16).
//!
//! Rule: read-only until the very end. Discovery ([`mail`], [`sources`],
//! [`dkim`]) only runs the servers' own configuration printers and reads
//! files (size-capped, regular files only); [`render`] is pure and turns
//! what was found ([`Discovered`]) into TOML text with a comment for every
//! thing it could not decide; [`run`] prints it or, with `--write`, creates
//! the configuration file (never replacing one without `--force`). The
//! configuration written changes nothing on a host whose files are already
//! right: its targets are the files the servers read now, named for the
//! certificate they hold now, and the DKIM keys the signer uses now are
//! adopted (`[[dkim.adopt]]`) before mxkeys makes any of its own.

pub mod mail;

use std::path::PathBuf;

/// Where `mxkeys init` looks. Every default is the usual place on a Debian
/// host; tests (and unusual hosts) point each at their own.
#[derive(Clone, Debug)]
pub struct Look {
    /// `postconf -c DIR`; `None`: Postfix's default. `skip_postfix`: none.
    pub postfix_config: Option<PathBuf>,
    pub skip_postfix: bool,
    /// `doveconf -c FILE`; `None`: Dovecot's default. `skip_dovecot`: none.
    pub dovecot_config: Option<PathBuf>,
    pub skip_dovecot: bool,
    /// Certbot's configuration directory (default /etc/letsencrypt).
    pub letsencrypt: PathBuf,
    /// lego `--path` directories (default: /etc/lego, /var/lib/lego,
    /// /root/.lego, ./.lego, whichever exist).
    pub lego: Vec<PathBuf>,
    /// Traefik acme.json files (default: /etc/traefik/acme.json,
    /// /etc/traefik/acme/acme.json, /letsencrypt/acme.json,
    /// /acme/acme.json, /data/acme.json, whichever exist).
    pub acme_json: Vec<PathBuf>,
    /// OpenDKIM's configuration (default /etc/opendkim.conf).
    pub opendkim_config: PathBuf,
    /// Rspamd's dkim_signing.conf (default
    /// /etc/rspamd/local.d/dkim_signing.conf).
    pub rspamd_config: PathBuf,
    /// amavis' configuration directory (default /etc/amavis/conf.d).
    pub amavis_config: PathBuf,
    /// docker-mailserver's `config` directory, when given.
    pub dms: Option<PathBuf>,
    /// `state_dir` to write (default: mxkeys' default).
    pub state_dir: Option<PathBuf>,
    /// `hostname` to write (default: the host's name).
    pub hostname: Option<String>,
}

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

pub mod dkim;
pub mod mail;
pub mod render;
pub mod run;
pub mod sources;

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

/// A certificate store found on the host ([`sources`] finds them): one
/// `[[source]]` to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundSource {
    pub kind: FoundKind,
    /// The path to write as the source's `path` (Certbot's configuration
    /// directory, lego's `--path`, the acme.json file).
    pub path: PathBuf,
    /// The certificates it holds now, to match with what the servers serve.
    pub certs: Vec<FoundCert>,
    /// What the admin should know (one line each, written as comments):
    /// a lineage without `reuse_key`, a renewal hook that copies files,
    /// an entry that could not be read...
    pub notes: Vec<String>,
}

/// Which kind of `[[source]]` a [`FoundSource`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoundKind {
    Certbot,
    Lego,
    Traefik,
}

/// One certificate a source holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundCert {
    /// Certbot's lineage name, lego's file stem, Traefik's resolver/main.
    pub label: String,
    /// The leaf's DNS names (subjectAltName), in its order.
    pub names: Vec<String>,
    pub key_type: mail::KeyTypeHint,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lower-case hex: tells which source holds
    /// the certificate a server serves now.
    pub sha256: String,
    /// Certbot: the lineage's `reuse_key` (renewal/NAME.conf); `None`
    /// elsewhere.
    pub reuse_key: Option<bool>,
}

/// A DKIM signer found on the host ([`dkim`] finds it): the `[dkim]` table
/// to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundDkim {
    pub signer: crate::config::Signer,
    /// Where its tables are (`signer_dir`): KeyTable's directory,
    /// Rspamd's local.d, amavis' conf.d.
    pub signer_dir: PathBuf,
    /// The `[[dkim.adopt]]` entries that take over its keys.
    pub adopt: Vec<crate::config::Adopt>,
    /// The keys those entries hold now (their domains become `domains`,
    /// their selectors and algorithms are told in comments).
    pub keys: Vec<FoundKey>,
    /// The reload that fits (`["systemctl", "reload", "opendkim"]`, a pid
    /// file and signal); `None`: undecided, left as a comment.
    pub reload: Option<Vec<String>>,
    pub reload_signal: Option<(PathBuf, String)>,
    /// Entries that could not be read, and what the admin should know (one
    /// line each, written as comments).
    pub notes: Vec<String>,
}

/// One key a signer uses now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundKey {
    pub domain: crate::names::DnsName,
    pub selector: String,
    pub algorithm: crate::config::DkimAlgorithm,
    pub key_file: PathBuf,
}

/// What a server serves now, read from its files: the leaf of each slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedCert {
    /// The file holding the chain (the combined file, fullchain, cert).
    pub chain: PathBuf,
    pub names: Vec<String>,
    pub key_type: mail::KeyTypeHint,
    pub not_after: i64,
    pub sha256: String,
}

/// Who owns a file holding a private key now, and its mode: the target
/// keeps them, so a server that reads its key as a group member still can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyFileMeta {
    /// Permission bits (`0o640`).
    pub mode: u32,
    /// The owner's and group's names (their numbers when they have none);
    /// `None` when they are the user and group init runs as (the
    /// default of a target).
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Everything [`render`] needs: what discovery found, and what went wrong
/// (one line each; written as comments, reading goes on).
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    pub hostname: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub postfix: Option<mail::PostfixTls>,
    /// The Postfix instance's configuration directory when not the default
    /// (`postfix -c DIR reload` then reloads that instance).
    pub postfix_config: Option<PathBuf>,
    pub dovecot: Option<mail::DovecotTls>,
    /// Dovecot's configuration file when not the default (`doveadm -c
    /// FILE reload`).
    pub dovecot_config: Option<PathBuf>,
    /// The leaf each Postfix and Dovecot slot serves now.
    pub served: Vec<ServedCert>,
    /// The slots' files that are symbolic links now, with where each
    /// points: mxkeys replaces files and never writes through a link.
    pub links: std::collections::BTreeMap<PathBuf, PathBuf>,
    /// Owner, group and mode of each file holding a slot's private key.
    pub key_files: std::collections::BTreeMap<PathBuf, KeyFileMeta>,
    pub sources: Vec<FoundSource>,
    pub dkim: Vec<FoundDkim>,
    pub problems: Vec<String>,
}

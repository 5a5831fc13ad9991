//! `mxkeys init`'s effects: look at the host, then print or write the
//! configuration [`super::render`] makes of it.
//!
//! Rule: read-only until the very end. [`discover`] runs `postconf` and
//! `doveconf` and reads files through the discovery functions; whatever
//! fails there is a problem written as a comment, never a failure. Only
//! [`write_config`] writes, and only the configuration file: created with
//! mode 0644 in a directory that must exist, never over an existing file
//! without `force` (then replaced atomically).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::mail::{DovecotProbe, DovecotSource, PostfixProbe, probe_dovecot, probe_postfix};
use super::{Discovered, KeyFileMeta, Look};

/// The most one `postconf`/`doveconf` run may take (postconf stalls up to
/// 2 s after main.cf changed).
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// lego `--path` directories looked at when none is given.
pub const DEFAULT_LEGO: &[&str] = &["/etc/lego", "/var/lib/lego", "/root/.lego", ".lego"];

/// Traefik acme.json files looked at when none is given.
pub const DEFAULT_ACME_JSON: &[&str] = &[
    "/etc/traefik/acme.json",
    "/etc/traefik/acme/acme.json",
    "/letsencrypt/acme.json",
    "/acme/acme.json",
    "/data/acme.json",
];

/// The defaults of [`Look`]'s lists: those of `defaults` that exist.
pub fn existing(defaults: &[&str]) -> Vec<PathBuf> {
    defaults
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect()
}

/// A program by name: on `PATH`, else in the sbin directories Debian puts
/// `postconf` in (often not on a user's `PATH`); else the bare name, so
/// running it fails with a message naming it.
fn program(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|c| c.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Everything `init` finds on the host; what fails is a problem line.
pub fn discover(look: &Look) -> Discovered {
    let mut d = Discovered {
        hostname: look.hostname.clone().or_else(|| {
            crate::config::Host::current()
                .hostname
                .map(|h| h.to_string())
        }),
        state_dir: look.state_dir.clone(),
        postfix_config: look.postfix_config.clone(),
        dovecot_config: look.dovecot_config.clone(),
        ..Discovered::default()
    };
    if !look.skip_postfix {
        let probe = PostfixProbe {
            postconf: program("postconf"),
            config_dir: look.postfix_config.clone(),
            timeout: PROBE_TIMEOUT,
        };
        match probe_postfix(&probe) {
            Ok(t) => d.postfix = Some(t),
            Err(e) => d.problems.push(format!("Postfix: {e}")),
        }
    }
    if !look.skip_dovecot {
        let probe = DovecotProbe {
            doveconf: program("doveconf"),
            config: look.dovecot_config.clone(),
            timeout: PROBE_TIMEOUT,
        };
        match probe_dovecot(&probe) {
            Ok(t) => d.dovecot = Some(t),
            Err(e) => d.problems.push(format!("Dovecot: {e}")),
        }
    }
    let mut chains: Vec<PathBuf> = Vec::new();
    let mut keys: Vec<PathBuf> = Vec::new();
    if let Some(p) = &d.postfix {
        chains.extend(p.slots.iter().map(|s| s.chain.clone()));
        keys.extend(p.slots.iter().map(|s| s.key.clone()));
    }
    if let Some(t) = &d.dovecot {
        for pair in [&t.main, &t.alt].into_iter().flatten() {
            if let DovecotSource::File(f) = &pair.key {
                keys.push(f.clone());
            }
        }
    }
    for f in chains.iter().chain(&keys) {
        if let Ok(to) = std::fs::read_link(f) {
            d.links.insert(f.clone(), to);
        }
    }
    for k in keys {
        if let Some(meta) = key_file_meta(&k) {
            d.key_files.insert(k, meta);
        }
    }
    if let Some(t) = &d.dovecot {
        for pair in [&t.main, &t.alt].into_iter().flatten() {
            if let DovecotSource::File(f) = &pair.cert {
                chains.push(f.clone());
            }
        }
    }
    chains.dedup();
    let mut seen = std::collections::BTreeSet::new();
    chains.retain(|c| seen.insert(c.clone()));
    let (served, notes) = super::sources::served(&chains);
    d.served = served;
    d.problems.extend(notes);
    d.sources = super::sources::sources(look);
    d.dkim = super::dkim::dkim(look);
    d
}

/// Owner, group and mode of the key file `path` (not followed when it is
/// a symlink: a link's target is no file a target writes); `None` when it
/// cannot be looked at.
fn key_file_meta(path: &Path) -> Option<KeyFileMeta> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_file() {
        return None;
    }
    let owner = (m.uid() != nix::unistd::geteuid().as_raw()).then(|| {
        nix::unistd::User::from_uid(m.uid().into())
            .ok()
            .flatten()
            .map_or_else(|| m.uid().to_string(), |u| u.name)
    });
    let group = (m.gid() != nix::unistd::getegid().as_raw()).then(|| {
        nix::unistd::Group::from_gid(m.gid().into())
            .ok()
            .flatten()
            .map_or_else(|| m.gid().to_string(), |g| g.name)
    });
    Some(KeyFileMeta {
        mode: m.mode() & 0o7777,
        owner,
        group,
    })
}

/// Why the configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Exit status 2: the file is there and `--force` was not given.
    #[error("{}: exists; not replaced (use --force to replace it)", .0.display())]
    Exists(PathBuf),
    #[error("{}: {reason}", path.display())]
    Io { path: PathBuf, reason: String },
}

/// Creates `path` holding `text` (mode 0644); with `force`, replaces it
/// atomically. The directory must exist. A file written without `force`
/// appears whole or not at all: it is written under a temporary name, then
/// linked to `path` (which fails when `path` exists).
pub fn write_config(path: &Path, text: &str, force: bool) -> Result<(), WriteError> {
    let io = |e: std::io::Error| WriteError::Io {
        path: path.to_owned(),
        reason: crate::source::io_reason(&e),
    };
    if force {
        return crate::install::write_atomic(path, text.as_bytes(), 0o644, None).map_err(io);
    }
    if path.symlink_metadata().is_ok() {
        return Err(WriteError::Exists(path.to_owned()));
    }
    let name = path
        .file_name()
        .ok_or_else(|| io(std::io::Error::other("not a file name")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".init-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    crate::install::write_atomic(&tmp, text.as_bytes(), 0o644, None).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(WriteError::Exists(path.to_owned()))
        }
        Err(e) => Err(io(e)),
    }
}

//! `mxkeys init`'s look at the DKIM signers a host runs: OpenDKIM, Rspamd,
//! amavis, docker-mailserver.
//!
//! Rule: read only, and every entry on its own. For each signer whose
//! configuration exists, this says which `[dkim]` table takes it over: the
//! signer, its `signer_dir`, the `[[dkim.adopt]]` entry that adopts the
//! keys it signs with now (so signing never stops), and the reload that
//! fits. The keys are found by the readers of [`crate::dkim::adopt`] (the
//! same ones `[[dkim.adopt]]` and `mxkeys dkim import` run), their
//! algorithm by [`crate::dkim::keys::inspect`]; a bad entry is one note
//! (one line, never key material) and the rest is still found. Key bytes
//! are read into zeroized buffers and dropped. A configuration that does
//! not exist is silently absent: the paths in [`Look`] are the usual
//! places, not promises.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{FoundDkim, FoundKey, Look};
use crate::config::{Adopt, AdoptCheck, AdoptFrom, Signer};
use crate::dkim::adopt::{self, Adopted};
use crate::source::read_limited;

/// Largest signer configuration read.
const CONF_LIMIT: u64 = 1 << 20;
/// Largest key file read.
const KEY_LIMIT: u64 = 64 << 10;

/// Every signer `look` names whose configuration exists: OpenDKIM, Rspamd,
/// amavis, docker-mailserver, in that order.
pub fn dkim(look: &Look) -> Vec<FoundDkim> {
    let mut out = Vec::new();
    if exists(&look.opendkim_config) {
        out.push(opendkim(&look.opendkim_config));
    }
    if exists(&look.rspamd_config) {
        out.push(rspamd(&look.rspamd_config));
    }
    if exists(&look.amavis_config)
        && let Some(found) = amavis(&look.amavis_config)
    {
        out.push(found);
    }
    if let Some(dir) = look.dms.as_deref().filter(|d| exists(d)) {
        out.push(dms(dir));
    }
    out
}

fn exists(path: &Path) -> bool {
    !matches!(path.symlink_metadata(), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// An entry adopting `from`, checked against DNS before it is called
/// active.
fn adopt_entry(from: AdoptFrom) -> Adopt {
    Adopt {
        from,
        check: AdoptCheck::Dns,
    }
}

/// A signer with no keys yet, adopting `from`.
fn signer(signer: Signer, signer_dir: PathBuf, from: AdoptFrom) -> FoundDkim {
    FoundDkim {
        signer,
        signer_dir,
        adopt: vec![adopt_entry(from)],
        keys: Vec::new(),
        reload: None,
        reload_signal: None,
        notes: Vec::new(),
    }
}

/// Adds what a reader found: each key with its algorithm, each bad entry
/// as a note.
fn add_keys(found: &mut FoundDkim, adopted: Adopted) {
    found
        .notes
        .extend(adopted.errors.iter().map(ToString::to_string));
    for key in adopted.found {
        match algorithm(&key.key_file) {
            Ok(algorithm) => found.keys.push(FoundKey {
                domain: key.domain,
                selector: key.selector,
                algorithm,
                key_file: key.key_file,
            }),
            Err(reason) => found
                .notes
                .push(format!("key file {}: {reason}", key.key_file.display())),
        }
    }
}

/// The algorithm of the key in `file`.
fn algorithm(file: &Path) -> Result<crate::config::DkimAlgorithm, String> {
    let bytes = Zeroizing::new(read_limited(file, KEY_LIMIT).map_err(|e| e.to_string())?);
    let text = std::str::from_utf8(&bytes).map_err(|_| "not text".to_owned())?;
    crate::dkim::keys::inspect(text)
        .map(|(algorithm, _)| algorithm)
        .map_err(|e| e.to_string())
}

/// The value of the last `KEY value` line of an `opendkim.conf` (keywords
/// are case-insensitive, `#` starts a comment line). Pure.
fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .filter(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim().to_owned())
        .rfind(|v| !v.is_empty())
}

/// `value` as a path: OpenDKIM's dataset prefixes (`file:`, `refile:`)
/// stripped, relative to `conf`'s directory when relative.
fn conf_path(conf: &Path, value: &str) -> PathBuf {
    let value = value
        .strip_prefix("refile:")
        .or_else(|| value.strip_prefix("file:"))
        .unwrap_or(value);
    conf.parent().unwrap_or(Path::new("")).join(value)
}

/// OpenDKIM: its conf adopted (the reader follows its KeyTable or
/// Domain/Selector/KeyFile); `signer_dir` is the KeyTable's directory; the
/// reload is USR1 to its PidFile, else `systemctl reload opendkim`.
fn opendkim(conf: &Path) -> FoundDkim {
    let mut found = signer(
        Signer::Opendkim,
        PathBuf::new(),
        AdoptFrom::Opendkim(conf.to_owned()),
    );
    let text = match read_limited(conf, CONF_LIMIT) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            found.notes.push(format!("{}: {e}", conf.display()));
            found.adopt.clear();
            return found;
        }
    };
    let key_table = conf_value(&text, "KeyTable").map(|v| conf_path(conf, &v));
    let key_file = conf_value(&text, "KeyFile").map(|v| conf_path(conf, &v));
    let dir_of = |p: &Path| p.parent().unwrap_or(Path::new("/")).to_owned();
    match (&key_table, &key_file) {
        (Some(table), _) => found.signer_dir = dir_of(table),
        (None, Some(key)) => {
            found.signer_dir = dir_of(key);
            found.notes.push(format!(
                "{} signs with one KeyFile and names no KeyTable: mxkeys writes KeyTable and \
                 SigningTable in {}; name them in opendkim.conf (`KeyTable file:{}/KeyTable`, \
                 `SigningTable refile:{}/SigningTable`) before mxkeys rotates a key",
                conf.display(),
                found.signer_dir.display(),
                found.signer_dir.display(),
                found.signer_dir.display()
            ));
        }
        (None, None) => {
            // It signs with no key now (Debian's opendkim.conf as
            // installed): nothing to adopt.
            found.signer_dir = dir_of(conf);
            found.adopt.clear();
            found.notes.push(format!(
                "{} names no KeyTable and no KeyFile: set signer_dir to the directory of the \
                 KeyTable OpenDKIM is to read",
                conf.display()
            ));
        }
    }
    match conf_value(&text, "PidFile") {
        Some(pid) => found.reload_signal = Some((conf_path(conf, &pid), "USR1".to_owned())),
        None => {
            found.reload = Some(
                ["systemctl", "reload", "opendkim"]
                    .map(str::to_owned)
                    .to_vec(),
            );
        }
    }
    if !found.adopt.is_empty() {
        add_keys(&mut found, adopt::opendkim(conf));
    }
    found
}

/// Rspamd: its dkim_signing.conf adopted; `signer_dir` is its directory
/// (local.d); the reload is left to the admin (Rspamd re-reads on SIGHUP).
fn rspamd(conf: &Path) -> FoundDkim {
    let dir = conf.parent().unwrap_or(Path::new("/")).to_owned();
    let mut found = signer(Signer::Rspamd, dir, AdoptFrom::Rspamd(conf.to_owned()));
    found.notes.push(
        "Rspamd re-reads its keys on SIGHUP: set `reload = [\"systemctl\", \"reload\", \
         \"rspamd\"]`, or `reload_signal` with its pid file and HUP"
            .to_owned(),
    );
    add_keys(&mut found, adopt::rspamd(conf));
    found
}

/// amavis: each file of its conf.d (or the one file given) with
/// `dkim_key(` lines adopted; `None` when no file has one.
fn amavis(config: &Path) -> Option<FoundDkim> {
    let files: Vec<PathBuf> = if config.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(config)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    } else {
        vec![config.to_owned()]
    };
    let mut notes = Vec::new();
    let with_keys: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| match read_limited(f, CONF_LIMIT) {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("dkim_key(")),
            Err(e) => {
                notes.push(format!("{}: {e}", f.display()));
                false
            }
        })
        .collect();
    if with_keys.is_empty() && notes.is_empty() {
        return None;
    }
    let dir = if config.is_dir() {
        config.to_owned()
    } else {
        config.parent().unwrap_or(Path::new("/")).to_owned()
    };
    let mut found = FoundDkim {
        signer: Signer::Amavis,
        signer_dir: dir,
        adopt: with_keys
            .iter()
            .map(|f| adopt_entry(AdoptFrom::Amavis(f.clone())))
            .collect(),
        keys: Vec::new(),
        reload: None,
        reload_signal: None,
        notes,
    };
    for f in &with_keys {
        add_keys(&mut found, crate::dkim::adopt::amavis(f));
    }
    found.notes.push(
        "amavis re-reads dkim_key lines only on reload: set `reload = [\"systemctl\", \
         \"reload\", \"amavis\"]` if that is how it runs here"
            .to_owned(),
    );
    Some(found)
}

/// docker-mailserver's `config` directory: adopted whole; the signer is
/// OpenDKIM when `opendkim/KeyTable` is there, else Rspamd.
fn dms(dir: &Path) -> FoundDkim {
    let opendkim_dir = dir.join("opendkim");
    let (signer_kind, signer_dir) = if opendkim_dir.join(Signer::KEY_TABLE).exists() {
        (Signer::Opendkim, opendkim_dir)
    } else {
        (Signer::Rspamd, dir.join("rspamd").join("override.d"))
    };
    let mut found = signer(signer_kind, signer_dir, AdoptFrom::Dms(dir.to_owned()));
    found.notes.push(
        "docker-mailserver copies its config directory into the container when it starts: \
         set the reload that restarts or reloads its signer there"
            .to_owned(),
    );
    add_keys(&mut found, adopt::dms(dir));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opendkim_conf_value_is_its_last_uncommented_setting_of_any_case() {
        let text = "# KeyTable /commented\nkeytable file:/a/KeyTable\n\
                    KeyTable\trefile:/b/KeyTable\nPidFile /run/opendkim/opendkim.pid\nSelector\n";
        assert_eq!(
            conf_value(text, "KeyTable").as_deref(),
            Some("refile:/b/KeyTable")
        );
        assert_eq!(
            conf_path(Path::new("/etc/opendkim.conf"), "refile:/b/KeyTable"),
            PathBuf::from("/b/KeyTable")
        );
        assert_eq!(
            conf_path(Path::new("/etc/opendkim.conf"), "file:tables/KeyTable"),
            PathBuf::from("/etc/tables/KeyTable")
        );
        assert_eq!(conf_value(text, "Selector"), None);
        assert_eq!(conf_value(text, "Domain"), None);
    }
}

//! Readers of the DKIM key layouts a mail host already has, behind
//! `mxkeys dkim import --from opendkim FILE | rspamd FILE | amavis PATH |
//! dms DIR | dir DIR` and `[[dkim.adopt]]`.
//!
//! The rule: read only, and every entry on its own. Each reader returns the
//! keys its layout names ([`Found`]: domain, selector, key file, record file
//! when there is one) and one [`EntryError`] per bad entry (the file, the
//! line or entry, the reason); reading goes on after a bad entry. A key
//! file counts as found only when it is a regular file (no symlink in its
//! place: key directories may belong to the signer's user), within the
//! size cap, that holds an RSA or Ed25519 private key. Key contents are
//! read into zeroized buffers and never into an error. Nothing here checks
//! DNS or changes a file: `dkim import` does that for each key found.
//!
//! Parsing reuses [`super::signer::key_table_entries`] (OpenDKIM's
//! KeyTable, the same parser that reads an admin's signer files) and
//! [`super::keys::inspect`] (what a key file holds). The parser of
//! Rspamd's configuration language (`ucl`, the subset `dkim_signing.conf`
//! uses) is pure; the readers around it do the reading.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::signer::key_table_entries;
use crate::install::TargetDir;
use crate::names::{DnsName, NameError};
use crate::source::{ReadError, io_reason, read_limited};

/// Largest configuration file or table read.
const CONF_LIMIT: u64 = 1 << 20;
/// Largest key or record file read.
const KEY_LIMIT: u64 = 64 << 10;

/// A key a layout holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub domain: DnsName,
    pub selector: String,
    pub key_file: PathBuf,
    /// The record to publish as the layout wrote it (`SELECTOR.txt`,
    /// docker-mailserver's `*.public.txt`), when there is one.
    pub record_file: Option<PathBuf>,
}

/// What a layout yields: the keys found and one error per bad entry.
#[derive(Debug, Default)]
pub struct Adopted {
    pub found: Vec<Found>,
    pub errors: Vec<EntryError>,
}

/// One bad entry: `FILE: ENTRY: REASON` on one line, never key material.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {reason}", .file.display(), .entry.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct EntryError {
    /// The table, configuration, key or directory the entry is in.
    pub file: PathBuf,
    /// `line N`, `domain NAME` or a file name; `None` for the whole file.
    pub entry: Option<String>,
    pub reason: Reason,
}

/// Why an entry was not adopted.
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    /// The layout's file itself could not be read.
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Io(String),
    #[error("not of the form `ID DOMAIN:SELECTOR:KEYFILE`")]
    NotKeyTableLine,
    #[error(
        "domain `%` (the message's domain) names no domain: import it with `--from dir` giving the domain"
    )]
    AnyDomain,
    #[error("{0}")]
    Domain(#[from] NameError),
    #[error("{0}")]
    Selector(crate::config::ValueError),
    #[error("names no key file")]
    NoKeyFile,
    /// The key file is missing, a symlink, not a regular file, too large.
    #[error("key file {}: {reason}", .path.display())]
    KeyFile { path: PathBuf, reason: String },
    #[error("key file {}: {source}", .path.display())]
    NotAKey {
        path: PathBuf,
        #[source]
        source: super::keys::KeyError,
    },
    /// Rspamd's raw Ed25519 form, which `dkim import` does not read yet.
    #[error("key file {}: an Ed25519 key in Rspamd's raw base64 form, not PEM: not importable yet (convert it to PKCS#8 PEM)", .0.display())]
    RawEd25519(PathBuf),
    /// Something in the file's form this reader does not understand.
    #[error("{0}")]
    Form(String),
}

impl Adopted {
    fn error(&mut self, file: &Path, entry: Option<String>, reason: impl Into<Reason>) {
        self.errors.push(EntryError {
            file: file.to_owned(),
            entry,
            reason: reason.into(),
        });
    }

    /// Checks one named key and records it as found or as an error.
    fn key(
        &mut self,
        file: &Path,
        entry: Option<String>,
        domain: &str,
        selector: &str,
        key_file: PathBuf,
        record_file: Option<PathBuf>,
    ) {
        let checked = (|| {
            let domain = DnsName::parse(domain)?;
            if domain.is_wildcard() {
                return Err(Reason::Form(format!(
                    "{domain}: a wildcard is not a domain"
                )));
            }
            crate::config::selector_label(selector).map_err(Reason::Selector)?;
            check_key_file(&key_file)?;
            Ok(domain)
        })();
        match checked {
            Ok(domain) => self.found.push(Found {
                domain,
                selector: selector.to_owned(),
                key_file,
                record_file,
            }),
            Err(reason) => self.error(file, entry, reason),
        }
    }

    fn extend(&mut self, other: Adopted) {
        self.found.extend(other.found);
        self.errors.extend(other.errors);
    }
}

/// Opens `path`'s directory and reads `path` there without following a
/// link in its place: `None` when it does not exist.
fn read_no_follow(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| "not a file name".to_owned())?;
    let dir = TargetDir::open(path.parent().unwrap_or(Path::new(""))).map_err(|e| io_reason(&e))?;
    Ok(dir
        .read_small(name, KEY_LIMIT)
        .map_err(|e| io_reason(&e))?
        .map(Zeroizing::new))
}

/// A key file is a regular file (not a symlink) holding an RSA or Ed25519
/// private key.
fn check_key_file(path: &Path) -> Result<(), Reason> {
    let text = read_key(path)?;
    let text = text.as_str();
    super::keys::inspect(text).map_err(|source| {
        if is_raw_ed25519(text) {
            Reason::RawEd25519(path.to_owned())
        } else {
            Reason::NotAKey {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    Ok(())
}

/// Whether `text` is Rspamd's own Ed25519 form (what `rspamadm dkim_keygen
/// -t ed25519` writes): one line of base64 holding a 32-byte seed or a
/// 64-byte seed and public key.
fn is_raw_ed25519(text: &str) -> bool {
    use base64::Engine as _;
    let line = text.trim();
    !line.contains('\n')
        && base64::engine::general_purpose::STANDARD
            .decode(line)
            .map(Zeroizing::new)
            .is_ok_and(|b| b.len() == 32 || b.len() == 64)
}

fn read_text(path: &Path, out: &mut Adopted) -> Option<String> {
    match read_limited(path, CONF_LIMIT) {
        Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => {
            out.error(path, None, e);
            None
        }
    }
}

/// Strips OpenDKIM's dataset prefixes (`file:`, `refile:`).
fn dataset_path(value: &str) -> &str {
    value
        .strip_prefix("refile:")
        .or_else(|| value.strip_prefix("file:"))
        .unwrap_or(value)
}

/// Resolves `value` relative to the directory of `base` when relative.
fn beside(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.parent().unwrap_or(Path::new("")).join(p)
    }
}

/// `--from opendkim FILE`: an OpenDKIM KeyTable, or an `opendkim.conf`
/// naming one (`KeyTable`) or one key (`Domain`, `Selector`, `KeyFile`).
pub fn opendkim(file: &Path) -> Adopted {
    let mut out = Adopted::default();
    let Some(text) = read_text(file, &mut out) else {
        return out;
    };
    let conf = conf_settings(&text);
    if conf.is_empty() {
        out.extend(key_table(file, &text, |p| Ok(beside(file, p))));
    } else {
        out.extend(opendkim_conf(file, &conf));
    }
    out
}

/// The settings of an `opendkim.conf` this reader uses, by line.
fn conf_settings(text: &str) -> Vec<(usize, String, String)> {
    const KEYWORDS: [&str; 4] = ["keytable", "domain", "selector", "keyfile"];
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (k, v) = line.split_once(char::is_whitespace)?;
            let k = k.to_ascii_lowercase();
            KEYWORDS
                .contains(&k.as_str())
                .then(|| (i + 1, k, v.trim().to_owned()))
        })
        .collect()
}

fn opendkim_conf(file: &Path, conf: &[(usize, String, String)]) -> Adopted {
    let mut out = Adopted::default();
    let get = |key: &str| conf.iter().rev().find(|(_, k, _)| k == key);
    if let Some((_, _, table)) = get("keytable") {
        let table = beside(file, dataset_path(table));
        if let Some(text) = read_text(&table, &mut out) {
            out.extend(key_table(&table, &text, |p| Ok(beside(&table, p))));
        }
        return out;
    }
    match (get("domain"), get("selector"), get("keyfile")) {
        (Some((line, _, domains)), Some((_, _, selector)), Some((_, _, key))) => {
            let key = beside(file, key);
            // `Domain` is a dataset: a list (comma or space separated) or
            // a file of names (`file:PATH`, `refile:PATH` or an absolute path).
            let named = dataset_path(domains);
            let from_file = named != domains || Path::new(named).is_absolute();
            let source = if from_file {
                beside(file, named)
            } else {
                file.to_owned()
            };
            let list: Vec<(usize, String)> = if from_file {
                let dfile = source.clone();
                match read_text(&dfile, &mut out) {
                    Some(t) => t
                        .lines()
                        .enumerate()
                        .map(|(i, l)| (i + 1, l.trim().to_owned()))
                        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
                        .collect(),
                    None => return out,
                }
            } else {
                domains
                    .split([',', ' ', '\t'])
                    .filter(|d| !d.is_empty())
                    .map(|d| (*line, d.to_owned()))
                    .collect()
            };
            for (line, domain) in list {
                out.key(
                    &source,
                    Some(format!("line {line}")),
                    &domain,
                    selector,
                    key.clone(),
                    None,
                );
            }
        }
        _ => out.error(
            file,
            None,
            Reason::Form(
                "names neither a KeyTable nor all of Domain, Selector and KeyFile".to_owned(),
            ),
        ),
    }
    out
}

/// The keys of a KeyTable at `file`; `locate` maps a key path as written to
/// the file to check.
fn key_table(file: &Path, text: &str, locate: impl Fn(&str) -> Result<PathBuf, String>) -> Adopted {
    let mut out = Adopted::default();
    for entry in key_table_entries(text) {
        let e = match entry {
            Ok(e) => e,
            Err(line) => {
                out.error(file, Some(format!("line {line}")), Reason::NotKeyTableLine);
                continue;
            }
        };
        let at = Some(format!("line {}", e.line));
        let Some(domain) = e.domain else {
            out.error(file, at, Reason::AnyDomain);
            continue;
        };
        let Some(key) = e.key_file.filter(|k| !k.is_empty()) else {
            out.error(file, at, Reason::NoKeyFile);
            continue;
        };
        match locate(&key) {
            Ok(key) => {
                let record = genkey_record(&key);
                out.key(file, at, &domain, &e.selector, key, record);
            }
            Err(reason) => out.error(file, at, Reason::Form(reason)),
        }
    }
    out
}

/// `SELECTOR.txt` beside `SELECTOR.private`, when it is there.
fn genkey_record(key: &Path) -> Option<PathBuf> {
    let record = key.with_extension("txt");
    (key.extension().is_some_and(|x| x == "private")
        && record.symlink_metadata().is_ok_and(|m| m.is_file()))
    .then_some(record)
}

/// The names in `dir` (not followed through a link), sorted.
fn list(dir: &Path, out: &mut Adopted) -> Option<Vec<(String, std::fs::FileType)>> {
    if let Err(e) = TargetDir::open(dir) {
        out.error(dir, None, Reason::Io(io_reason(&e)));
        return None;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.error(dir, None, Reason::Io(io_reason(&e)));
            return None;
        }
    };
    let mut names: Vec<_> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    Some(names)
}

/// `--from dir DIR`: `opendkim-genkey` output, `SELECTOR.private` with
/// `SELECTOR.txt`. The domain is `domain` when given, else read from the
/// `.txt` file's closing comment (`; ----- DKIM key SELECTOR for DOMAIN`).
pub fn genkey_dir(dir: &Path, domain: Option<&DnsName>) -> Adopted {
    let mut out = Adopted::default();
    let Some(names) = list(dir, &mut out) else {
        return out;
    };
    for (name, _) in names {
        let Some(selector) = name.strip_suffix(".private") else {
            continue;
        };
        let key = dir.join(&name);
        let record = genkey_record(&key);
        let domain = match (domain, &record) {
            (Some(d), _) => d.as_str().to_owned(),
            (None, Some(txt)) => match read_no_follow(txt) {
                Ok(Some(text)) => match genkey_comment_domain(&String::from_utf8_lossy(&text)) {
                    Some(d) => d,
                    None => {
                        out.error(
                            txt,
                            None,
                            Reason::Form(
                                "no `DKIM key SELECTOR for DOMAIN` comment: give the domain"
                                    .to_owned(),
                            ),
                        );
                        continue;
                    }
                },
                Ok(None) => {
                    out.error(txt, None, Reason::Io("not found".to_owned()));
                    continue;
                }
                Err(reason) => {
                    out.error(txt, None, Reason::Io(reason));
                    continue;
                }
            },
            (None, None) => {
                out.error(
                    &key,
                    None,
                    Reason::Form(format!(
                        "no {selector}.txt beside it to name the domain: give the domain"
                    )),
                );
                continue;
            }
        };
        out.key(dir, Some(name.clone()), &domain, selector, key, record);
    }
    out
}

/// The domain in `opendkim-genkey`'s comment `----- DKIM key SEL for DOMAIN`.
fn genkey_comment_domain(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("----- DKIM key ")?;
    let (_, domain) = rest.split_once(" for ")?;
    Some(domain.split_whitespace().next()?.to_owned())
}

/// `--from dms DIR`: docker-mailserver's configuration directory (mounted
/// at `/tmp/docker-mailserver` in the container) as `setup config dkim`
/// writes it: `opendkim/KeyTable` naming `/etc/opendkim/keys/DOMAIN/
/// SELECTOR.private` (the container's copy of `opendkim/keys/`; without a
/// KeyTable, every `opendkim/keys/DOMAIN/*.private`), and
/// `rspamd/dkim/{rsa-BITS,ed25519}-SELECTOR-DOMAIN.private.txt` with
/// their `.public.txt` (zone form) and `.public.dns.txt` (record value).
pub fn dms(dir: &Path) -> Adopted {
    let mut out = Adopted::default();
    let opendkim = dir.join("opendkim");
    let table = opendkim.join("KeyTable");
    if table.symlink_metadata().is_ok() {
        if let Some(text) = read_text(&table, &mut out) {
            out.extend(key_table(&table, &text, |p| dms_path(dir, p)));
        }
    } else if opendkim.join("keys").is_dir() {
        let keys = opendkim.join("keys");
        for (name, kind) in list(&keys, &mut out).unwrap_or_default() {
            if kind.is_symlink() {
                out.error(
                    &keys,
                    Some(name),
                    Reason::Io(
                        "a symbolic link: refused (key directories are never followed through links)"
                            .to_owned(),
                    ),
                );
                continue;
            }
            if !kind.is_dir() {
                continue;
            }
            match DnsName::parse(&name) {
                Ok(domain) => out.extend(genkey_dir(&keys.join(&name), Some(&domain))),
                Err(e) => out.error(&keys, Some(name), e),
            }
        }
    }
    let rspamd = dir.join("rspamd").join("dkim");
    if rspamd.is_dir() {
        for (name, _) in list(&rspamd, &mut out).unwrap_or_default() {
            let Some(base) = name.strip_suffix(".private.txt") else {
                continue;
            };
            let public = rspamd.join(format!("{base}.public.txt"));
            let dns = rspamd.join(format!("{base}.public.dns.txt"));
            let zone = read_no_follow(&public).ok().flatten();
            let zone_selector = zone.as_ref().and_then(|z| {
                let z = String::from_utf8_lossy(z);
                Some(z.split_once("._domainkey")?.0.trim().to_owned())
            });
            match dms_rspamd_name(base, zone_selector.as_deref()) {
                Ok((selector, domain)) => {
                    let record = [dns, public]
                        .into_iter()
                        .find(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()));
                    out.key(
                        &rspamd,
                        Some(name.clone()),
                        &domain,
                        &selector,
                        rspamd.join(&name),
                        record,
                    );
                }
                Err(reason) => out.error(&rspamd, Some(name.clone()), Reason::Form(reason)),
            }
        }
    }
    if out.found.is_empty() && out.errors.is_empty() {
        out.error(
            dir,
            None,
            Reason::Form(
                "holds neither opendkim/KeyTable, opendkim/keys/ nor rspamd/dkim/: give docker-mailserver's config directory".to_owned(),
            ),
        );
    }
    out
}

/// Where a key path of docker-mailserver's KeyTable (a container path) is
/// in its configuration directory `dir`.
fn dms_path(dir: &Path, key: &str) -> Result<PathBuf, String> {
    let rest = key
        .strip_prefix("/etc/opendkim/")
        .or_else(|| key.strip_prefix("/tmp/docker-mailserver/opendkim/"))
        .map(|r| ("opendkim", r))
        .or_else(|| key.strip_prefix("/tmp/docker-mailserver/").map(|r| ("", r)));
    match rest {
        Some((sub, r)) if !r.split('/').any(|c| c == "..") => Ok(dir.join(sub).join(r)),
        _ if !Path::new(key).is_absolute() && !key.split('/').any(|c| c == "..") => {
            Ok(dir.join("opendkim").join(key))
        }
        _ => Err(format!(
            "{key}: not under /etc/opendkim or /tmp/docker-mailserver, the container's copies of this directory"
        )),
    }
}

/// (selector, domain) of `rsa-BITS-SELECTOR-DOMAIN` or
/// `ed25519-SELECTOR-DOMAIN`; both may hold `-`, so the selector of the
/// zone file (`SELECTOR._domainkey IN TXT ...`) decides when given, else
/// the split must be the only one giving a selector and a dotted domain.
fn dms_rspamd_name(base: &str, zone_selector: Option<&str>) -> Result<(String, String), String> {
    let rest = base
        .strip_prefix("ed25519-")
        .or_else(|| {
            let r = base.strip_prefix("rsa-")?;
            let (bits, r) = r.split_once('-')?;
            bits.bytes().all(|b| b.is_ascii_digit()).then_some(r)
        })
        .ok_or_else(|| {
            "not named rsa-BITS-SELECTOR-DOMAIN or ed25519-SELECTOR-DOMAIN".to_owned()
        })?;
    if let Some(s) = zone_selector {
        return rest
            .strip_prefix(s)
            .and_then(|d| d.strip_prefix('-'))
            .map(|d| (s.to_owned(), d.to_owned()))
            .ok_or_else(|| format!("its public file names selector {s}, not in its name"));
    }
    let splits: Vec<(String, String)> = rest
        .match_indices('-')
        .map(|(i, _)| (rest[..i].to_owned(), rest[i + 1..].to_owned()))
        .filter(|(s, d)| {
            crate::config::selector_label(s).is_ok() && d.contains('.') && DnsName::parse(d).is_ok()
        })
        .collect();
    match &splits[..] {
        [one] => Ok(one.clone()),
        [] => Err("no SELECTOR-DOMAIN in its name".to_owned()),
        _ => Err(
            "selector and domain are ambiguous in its name and no .public.txt names the selector"
                .to_owned(),
        ),
    }
}

/// `--from amavis PATH`: amavis' `dkim_key('DOMAIN', 'SELECTOR',
/// '/path/key.pem');` lines (Perl quoting, `'...'` or `"..."`; further
/// arguments are options and ignored), in one file or in every regular
/// file of a directory (`conf.d`).
pub fn amavis(path: &Path) -> Adopted {
    let mut out = Adopted::default();
    let is_dir = path.symlink_metadata().is_ok_and(|m| m.is_dir());
    if !is_dir {
        if let Some(text) = read_text(path, &mut out) {
            amavis_lines(path, &text, &mut out);
        }
    } else {
        for (name, kind) in list(path, &mut out).unwrap_or_default() {
            if kind.is_file() {
                let file = path.join(&name);
                if let Some(text) = read_text(&file, &mut out) {
                    amavis_lines(&file, &text, &mut out);
                }
            }
        }
    }
    if out.found.is_empty() && out.errors.is_empty() {
        out.error(
            path,
            None,
            Reason::Form("holds no dkim_key(...) line".to_owned()),
        );
    }
    out
}

/// The `dkim_key(...)` calls of one amavis file.
fn amavis_lines(file: &Path, text: &str, out: &mut Adopted) {
    for (i, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("");
        let Some((_, args)) = code.split_once("dkim_key(") else {
            continue;
        };
        let at = Some(format!("line {}", i + 1));
        match perl_strings(args).as_slice() {
            [domain, selector, key, ..] => {
                let key = beside(file, key);
                let record = genkey_record(&key);
                out.key(file, at, domain, selector, key, record);
            }
            _ => out.error(
                file,
                at,
                Reason::Form(
                    "not of the form dkim_key('DOMAIN', 'SELECTOR', 'KEYFILE') on one line"
                        .to_owned(),
                ),
            ),
        }
    }
}

/// The quoted strings (`'...'` or `"..."`, backslash escapes) before the
/// closing `)` of a Perl argument list. Pure.
fn perl_strings(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match c {
            ')' => break,
            '\'' | '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => s.extend(chars.next()),
                        d if d == c => {
                            closed = true;
                            break;
                        }
                        d => s.push(d),
                    }
                }
                if !closed {
                    break;
                }
                out.push(s);
            }
            _ => {}
        }
    }
    out
}

/// `from = "key"`: one PEM key file that signs for `domain` with `selector`.
pub fn key_file(file: &Path, domain: &DnsName, selector: &str) -> Adopted {
    let mut out = Adopted::default();
    out.key(file, None, domain.as_str(), selector, file.to_owned(), None);
    out
}

/// The PEM text of a key file a reader found, read without following a
/// link in its place, zeroized.
pub fn read_key(path: &Path) -> Result<Zeroizing<String>, Reason> {
    let key_error = |reason: String| Reason::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let bytes = read_no_follow(path)
        .map_err(key_error)?
        .ok_or_else(|| key_error("not found".to_owned()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| key_error("not text".to_owned()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// A PEM key given as text (an environment variable's value): as it is
/// when it has its BEGIN line, else the bare base64 wrapped as PKCS#8,
/// then as PKCS#1 RSA, whichever holds a key. Never echoes the text.
pub fn pem_text(value: &str) -> Result<Zeroizing<String>, super::keys::KeyError> {
    if value.contains("-----BEGIN") {
        let pem = Zeroizing::new(value.to_owned());
        super::keys::inspect(&pem)?;
        return Ok(pem);
    }
    let b64: Zeroizing<String> = Zeroizing::new(
        value
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
            .collect(),
    );
    let mut first = None;
    for label in ["PRIVATE KEY", "RSA PRIVATE KEY"] {
        let mut pem = Zeroizing::new(format!("-----BEGIN {label}-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {label}-----\n"));
        match super::keys::inspect(&pem) {
            Ok(_) => return Ok(pem),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or(super::keys::KeyError::NotRsaOrEd25519))
}

/// Whether a published TXT value publishes the key whose record (as
/// mxkeys writes it: `v=DKIM1; k=...; p=...`) is `ours`: the same public
/// key (`p=`, whitespace aside) and key type (`k=`, default `rsa`), and
/// `v=DKIM1` when `v=` is there. Other tags a tool wrote (`h=sha256`,
/// `s=email`, `t=s` from `opendkim-genkey`) are the admin's and do not
/// stop the key from verifying. Pure.
pub fn record_publishes(published: &str, ours: &str) -> bool {
    fn tags(record: &str) -> Vec<(String, String)> {
        record
            .split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.chars().filter(|c| !c.is_whitespace()).collect(),
                )
            })
            .collect()
    }
    let (theirs, ours) = (tags(published), tags(ours));
    let get = |tags: &[(String, String)], key: &str| {
        tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    };
    let p = get(&ours, "p");
    p.as_deref().is_some_and(|p| !p.is_empty())
        && get(&theirs, "p") == p
        && get(&theirs, "k").unwrap_or_else(|| "rsa".to_owned())
            == get(&ours, "k").unwrap_or_else(|| "rsa".to_owned())
        && get(&theirs, "v").is_none_or(|v| v == "DKIM1")
}

/// `--from rspamd FILE`: Rspamd's `dkim_signing.conf`: `domain { NAME {
/// path = ...; selector = ...; } }` (also with `selectors [ { ... } ]`),
/// and the top-level `path`/`selector` that apply to every domain, where
/// `$domain` and `$selector` in a path are filled in; a top-level path
/// with `$domain` and no `domain` block finds its domains among the files
/// of its directory.
pub fn rspamd(file: &Path) -> Adopted {
    let mut out = Adopted::default();
    let Some(text) = read_text(file, &mut out) else {
        return out;
    };
    let root = match ucl::parse(&text) {
        Ok(root) => root,
        Err((line, reason)) => {
            out.error(file, Some(format!("line {line}")), Reason::Form(reason));
            return out;
        }
    };
    let global_path = root.string("path");
    let global_selector = root.string("selector");
    let domains = root.object("domain");
    for (line, name, node) in domains.iter().flat_map(|d| d.entries()) {
        let at = Some(format!("line {line}: domain {name}"));
        let mut pairs = Vec::new();
        let selectors = node.array("selectors");
        if selectors.is_empty() {
            pairs.push((node.string("path"), node.string("selector")));
        } else {
            pairs.extend(
                selectors
                    .iter()
                    .map(|s| (s.string("path"), s.string("selector"))),
            );
        }
        for (path, selector) in pairs {
            let (Some(path), Some(selector)) = (
                path.or(global_path.clone()),
                selector.or(global_selector.clone()),
            ) else {
                out.error(
                    file,
                    at.clone(),
                    Reason::Form("no path or no selector".to_owned()),
                );
                continue;
            };
            let key = beside(
                file,
                &path
                    .replace("$domain", name)
                    .replace("$selector", &selector),
            );
            out.key(file, at.clone(), name, &selector, key, None);
        }
    }
    if domains.is_none() {
        match (global_path, global_selector) {
            (Some(path), Some(selector)) => out.extend(rspamd_template(
                file,
                &path.replace("$selector", &selector),
                &selector,
            )),
            _ => out.error(
                file,
                None,
                Reason::Form("names no domain block and no top-level path and selector".to_owned()),
            ),
        }
    }
    out
}

/// The keys a top-level path `DIR/PREFIX$domainSUFFIX` names: every file of
/// DIR so named.
fn rspamd_template(file: &Path, path: &str, selector: &str) -> Adopted {
    let mut out = Adopted::default();
    let path = beside(file, path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        out.error(file, None, Reason::Form("path names no file".to_owned()));
        return out;
    };
    let Some((prefix, suffix)) = name.split_once("$domain") else {
        out.error(
            file,
            None,
            Reason::Form("a top-level path without $domain names no domain".to_owned()),
        );
        return out;
    };
    if dir.to_string_lossy().contains('$') {
        out.error(
            file,
            None,
            Reason::Form("$domain in a directory of path is not read".to_owned()),
        );
        return out;
    }
    for (entry, _) in list(dir, &mut out).unwrap_or_default() {
        let Some(domain) = entry
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .filter(|d| !d.is_empty())
        else {
            continue;
        };
        out.key(
            file,
            Some(entry.clone()),
            domain,
            selector,
            dir.join(&entry),
            None,
        );
    }
    out
}

/// The part of UCL (Rspamd's configuration language) `dkim_signing.conf`
/// uses: `key = value;`, `key: value`, `key { ... }`, `key [ ... ]`, quoted
/// or bare strings, `#` comments. Pure.
mod ucl {
    /// A value, with the line its key was on.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Node {
        Str(String),
        Obj(Vec<(usize, String, Node)>),
        Arr(Vec<Node>),
    }

    impl Node {
        fn get(&self, key: &str) -> Option<&Node> {
            match self {
                Node::Obj(entries) => entries
                    .iter()
                    .rev()
                    .find(|(_, k, _)| k == key)
                    .map(|(_, _, v)| v),
                _ => None,
            }
        }

        pub fn string(&self, key: &str) -> Option<String> {
            match self.get(key)? {
                Node::Str(s) => Some(s.clone()),
                _ => None,
            }
        }

        pub fn object(&self, key: &str) -> Option<&Node> {
            self.get(key).filter(|n| matches!(n, Node::Obj(_)))
        }

        pub fn array(&self, key: &str) -> Vec<Node> {
            match self.get(key) {
                Some(Node::Arr(items)) => items.clone(),
                _ => Vec::new(),
            }
        }

        /// (line, key, value) of an object.
        pub fn entries(&self) -> impl Iterator<Item = (usize, &str, &Node)> {
            let entries: &[(usize, String, Node)] = match self {
                Node::Obj(e) => e,
                _ => &[],
            };
            entries.iter().map(|(l, k, v)| (*l, k.as_str(), v))
        }
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Word(String),
        Open,
        Close,
        LBr,
        RBr,
        Assign,
        End,
    }

    fn lex(text: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let mut chars = line.char_indices().peekable();
            while let Some((_, c)) = chars.next() {
                match c {
                    '#' => break,
                    c if c.is_whitespace() => {}
                    '{' => out.push((n, Tok::Open)),
                    '}' => out.push((n, Tok::Close)),
                    '[' => out.push((n, Tok::LBr)),
                    ']' => out.push((n, Tok::RBr)),
                    '=' | ':' => out.push((n, Tok::Assign)),
                    ';' | ',' => out.push((n, Tok::End)),
                    '"' | '\'' => {
                        let mut s = String::new();
                        let mut closed = false;
                        while let Some((_, d)) = chars.next() {
                            match d {
                                '\\' => {
                                    if let Some((_, e)) = chars.next() {
                                        s.push(e);
                                    }
                                }
                                d if d == c => {
                                    closed = true;
                                    break;
                                }
                                d => s.push(d),
                            }
                        }
                        if !closed {
                            return Err((n, "a string is not closed on its line".to_owned()));
                        }
                        out.push((n, Tok::Word(s)));
                    }
                    c => {
                        let mut s = String::from(c);
                        while let Some(&(_, d)) = chars.peek() {
                            if d.is_whitespace() || "{}[]=:;,#\"'".contains(d) {
                                break;
                            }
                            s.push(d);
                            chars.next();
                        }
                        out.push((n, Tok::Word(s)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The top-level object of `text`, or the line and reason it fails.
    pub fn parse(text: &str) -> Result<Node, (usize, String)> {
        let toks = lex(text)?;
        let mut pos = 0;
        let node = object(&toks, &mut pos, false)?;
        Ok(node)
    }

    fn line_at(toks: &[(usize, Tok)], pos: usize) -> usize {
        toks.get(pos).or(toks.last()).map_or(1, |t| t.0)
    }

    fn object(
        toks: &[(usize, Tok)],
        pos: &mut usize,
        nested: bool,
    ) -> Result<Node, (usize, String)> {
        let mut entries = Vec::new();
        loop {
            match toks.get(*pos) {
                None if nested => {
                    return Err((line_at(toks, *pos), "a `{` is not closed".to_owned()));
                }
                None => return Ok(Node::Obj(entries)),
                Some((_, Tok::Close)) if nested => {
                    *pos += 1;
                    return Ok(Node::Obj(entries));
                }
                Some((_, Tok::End)) => *pos += 1,
                Some((line, Tok::Word(key))) => {
                    *pos += 1;
                    if let Some((_, Tok::Assign)) = toks.get(*pos) {
                        *pos += 1;
                    }
                    let value = value(toks, pos)?;
                    entries.push((*line, key.clone(), value));
                }
                Some((line, t)) => return Err((*line, format!("unexpected {t:?}"))),
            }
        }
    }

    fn value(toks: &[(usize, Tok)], pos: &mut usize) -> Result<Node, (usize, String)> {
        match toks.get(*pos) {
            Some((_, Tok::Word(w))) => {
                *pos += 1;
                Ok(Node::Str(w.clone()))
            }
            Some((_, Tok::Open)) => {
                *pos += 1;
                object(toks, pos, true)
            }
            Some((_, Tok::LBr)) => {
                *pos += 1;
                let mut items = Vec::new();
                loop {
                    match toks.get(*pos) {
                        Some((_, Tok::RBr)) => {
                            *pos += 1;
                            return Ok(Node::Arr(items));
                        }
                        Some((_, Tok::End)) => *pos += 1,
                        Some(_) => items.push(value(toks, pos)?),
                        None => {
                            return Err((line_at(toks, *pos), "a `[` is not closed".to_owned()));
                        }
                    }
                }
            }
            other => Err((
                line_at(toks, *pos),
                format!("expected a value, found {other:?}"),
            )),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dkim_signing_forms_parse_into_their_tree() {
            let text = "# c\nselector = \"dkim\";\npath: '/k/$domain.$selector.key'\ndomain {\n  example.com {\n    selectors [ { selector = \"s1\"; path = \"/a\"; }, { selector: s2, path = /b } ]\n  }\n}\n";
            let root = parse(text).unwrap();
            assert_eq!(root.string("selector").as_deref(), Some("dkim"));
            assert_eq!(
                root.string("path").as_deref(),
                Some("/k/$domain.$selector.key")
            );
            let d: Vec<_> = root.object("domain").unwrap().entries().collect();
            assert_eq!(d.len(), 1);
            assert_eq!((d[0].0, d[0].1), (5, "example.com"));
            let s = d[0].2.array("selectors");
            assert_eq!(s[1].string("path").as_deref(), Some("/b"));
            assert_eq!(parse("domain {\n x { }\n").unwrap_err().0, 2);
            assert_eq!(parse("path = \"/a;\n").unwrap_err().0, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dms_rspamd_file_names_split_into_selector_and_domain() {
        type Row<'a> = (&'a str, Option<&'a str>, Result<(&'a str, &'a str), ()>);
        let table: &[Row] = &[
            (
                "rsa-2048-mail-example.com",
                None,
                Ok(("mail", "example.com")),
            ),
            (
                "ed25519-mail-example.com",
                None,
                Ok(("mail", "example.com")),
            ),
            (
                "rsa-4096-2023-dkim-example.com",
                Some("2023-dkim"),
                Ok(("2023-dkim", "example.com")),
            ),
            // Without the public file, `2023` + `dkim-example.com` is as good.
            ("rsa-4096-2023-dkim-example.com", None, Err(())),
            ("rsa-2048-mail-example.com", Some("other"), Err(())),
            ("dsa-2048-mail-example.com", None, Err(())),
            ("rsa-x-mail-example.com", None, Err(())),
        ];
        for (base, zone, want) in table {
            let got = dms_rspamd_name(base, *zone);
            match want {
                Ok((s, d)) => assert_eq!(got, Ok(((*s).to_owned(), (*d).to_owned())), "{base}"),
                Err(()) => assert!(got.is_err(), "{base}: {got:?}"),
            }
        }
    }

    #[test]
    fn dms_key_paths_map_into_the_config_directory_and_never_out_of_it() {
        let dir = Path::new("/srv/dms/config");
        let ok = |k: &str, want: &str| assert_eq!(dms_path(dir, k), Ok(PathBuf::from(want)), "{k}");
        ok(
            "/etc/opendkim/keys/example.com/mail.private",
            "/srv/dms/config/opendkim/keys/example.com/mail.private",
        );
        ok(
            "/tmp/docker-mailserver/opendkim/keys/a.org/s.private",
            "/srv/dms/config/opendkim/keys/a.org/s.private",
        );
        ok(
            "keys/a.org/s.private",
            "/srv/dms/config/opendkim/keys/a.org/s.private",
        );
        for bad in ["/root/k.private", "/etc/opendkim/../shadow", "../k"] {
            assert!(dms_path(dir, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_genkey_comment_names_the_domain() {
        let txt = "mail._domainkey\tIN\tTXT\t( \"v=DKIM1; k=rsa; \"\n\t  \"p=AB\" )  ; ----- DKIM key mail for example.com\n";
        assert_eq!(genkey_comment_domain(txt).as_deref(), Some("example.com"));
        assert_eq!(genkey_comment_domain("mail._domainkey IN TXT \"p=\""), None);
    }

    #[test]
    fn a_published_record_publishes_a_key_when_its_key_and_type_are_the_same() {
        let ours = "v=DKIM1; k=rsa; p=MIIBIjAN";
        for (published, want) in [
            ("v=DKIM1; k=rsa; p=MIIBIjAN", true),
            // opendkim-genkey's form, strings joined.
            ("v=DKIM1; h=sha256; k=rsa; s=email; p=MIIB IjAN", true),
            ("p=MIIBIjAN", true),
            ("v=DKIM1; k=rsa; p=MIIBIjAO", false),
            ("v=DKIM1; k=ed25519; p=MIIBIjAN", false),
            ("v=DKIM2; k=rsa; p=MIIBIjAN", false),
            ("v=DKIM1; k=rsa; p=", false),
            ("v=DKIM1; k=rsa", false),
            ("", false),
        ] {
            assert_eq!(record_publishes(published, ours), want, "{published}");
        }
        assert!(!record_publishes("v=DKIM1; p=", "v=DKIM1; k=rsa; p="));
    }

    #[test]
    fn amavis_dkim_key_calls_give_domain_selector_and_key_in_either_quoting() {
        for (args, want) in [
            (
                "'example.com', 'sel', '/k/a.pem');",
                &["example.com", "sel", "/k/a.pem"][..],
            ),
            (
                "\"example.com\", \"sel\", \"/k/a.pem\", t => 's');",
                &["example.com", "sel", "/k/a.pem", "s"],
            ),
            ("'a\\'b', 'c') 'after'", &["a'b", "c"]),
            ("'unclosed", &[]),
        ] {
            assert_eq!(perl_strings(args), want, "{args}");
        }
    }

    #[test]
    fn a_bare_base64_key_is_wrapped_and_pem_is_kept() {
        let new =
            crate::dkim::keys::generate(crate::dkim::machine::DkimAlgorithm::Rsa2048).unwrap();
        let body: String = new
            .pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let wrapped = pem_text(&body).unwrap();
        assert_eq!(crate::dkim::keys::inspect(&wrapped).unwrap().1, new.record);
        assert_eq!(*pem_text(&new.pem).unwrap(), *new.pem);
        let e = pem_text("bm90IGEga2V5").unwrap_err().to_string();
        assert!(!e.contains("bm90"), "{e}");
    }

    #[test]
    fn an_entry_error_is_one_line_naming_file_entry_and_reason() {
        let e = EntryError {
            file: "/etc/opendkim/KeyTable".into(),
            entry: Some("line 3".into()),
            reason: Reason::KeyFile {
                path: "/etc/dkimkeys/a.private".into(),
                reason: "not found".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "/etc/opendkim/KeyTable: line 3: key file /etc/dkimkeys/a.private: not found"
        );
    }
}

//! Signer configuration, rendered from the keys that are active: OpenDKIM's
//! KeyTable and SigningTable, Rspamd's `dkim_signing.conf`, or a file of
//! amavis `dkim_key(...)` lines. Written atomically, only when changed;
//! then the signer is reloaded once.
//!
//! The rule: mxkeys never takes signing away that it did not give. It
//! writes a signer file only when the file does not exist or starts with
//! its [`MARKER`]; a file without it (the admin's) is left untouched until
//! `mxkeys dkim import` adopted every key it names. And it writes nothing
//! while a configured domain has no active key (before the first
//! activation, or after `state_dir` was lost, the files on disk keep
//! signing), except to take out a key of its own that must stop signing.
//! [`decide`] makes that choice (pure); the caller reads and writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::machine::{Book, Key, KeyState};
use crate::config::{DkimAlgorithm, Signer};

/// The first line of every signer file mxkeys writes: the mark of a file
/// it may rewrite.
const MARKER: &str = "# Written by mxkeys";

const HEADER: &str =
    "# Written by mxkeys from its DKIM key state: do not edit (changes are overwritten).\n";

/// Whether a file's content carries mxkeys' [`MARKER`] as its first line.
fn is_ours(content: &[u8]) -> bool {
    content.starts_with(MARKER.as_bytes())
}

/// What may be done with the signer's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write the rendered files (those that differ).
    Write,
    /// Leave them: `domain` has no active key yet, and the files on disk
    /// name no key of mxkeys' that must stop signing.
    Withhold { domain: String },
    /// Leave them: `file` was not written by mxkeys; `missing` lists the
    /// keys it names that were not imported (record names).
    Foreign { file: PathBuf, missing: Vec<String> },
}

impl Decision {
    /// The one line reporting it.
    pub fn describe(&self) -> String {
        match self {
            Decision::Write => "signer files written".to_owned(),
            Decision::Withhold { domain } => format!(
                "signer files left as they are: {domain} has no active key yet (the files on disk keep signing)"
            ),
            Decision::Foreign { file, missing } => {
                let mut line = format!(
                    "{}: not written by mxkeys (no `{MARKER}` first line), left untouched: `mxkeys dkim import` the keys it names first, or remove the file",
                    file.display()
                );
                if !missing.is_empty() {
                    line.push_str(&format!(" (not imported yet: {})", missing.join(", ")));
                }
                line
            }
        }
    }
}

/// Whether the signer's files may be written now. `on_disk` holds each
/// rendered file's current content (`None`: absent), in `rendered` order;
/// `domains` are the configured domains; `adopt`: `mxkeys dkim import`
/// asks to take over files not written by mxkeys, which it does only when
/// every key they name was imported (so nothing they sign is lost: an
/// imported key signs until a later import or successor replaces it).
pub fn decide(
    signer: Signer,
    rendered: &[(PathBuf, String)],
    on_disk: &[Option<Vec<u8>>],
    book: &Book,
    domains: &[String],
    adopt: bool,
) -> Decision {
    // Imported: signing, or drained by a later import of the same group.
    let held = |domain: Option<&str>, selector: &str| {
        book.keys.iter().any(|k| {
            matches!(k.state, KeyState::Active | KeyState::Draining)
                && k.selector == selector
                && domain.is_none_or(|d| d.eq_ignore_ascii_case(&k.domain))
        })
    };
    let lacking = domains.iter().find(|d| {
        !book
            .keys
            .iter()
            .any(|k| k.state == KeyState::Active && &k.domain == *d)
    });
    let mut adopted = false;
    for ((path, _), old) in rendered.iter().zip(on_disk) {
        let Some(old) = old else { continue };
        if is_ours(old) {
            continue;
        }
        let text = String::from_utf8_lossy(old);
        let named = foreign_keys(signer, path, &text);
        let missing: Vec<String> = named
            .iter()
            .filter(|(d, s)| !held(d.as_deref(), s))
            .map(|(d, s)| format!("{s}._domainkey.{}", d.as_deref().unwrap_or("*")))
            .collect();
        // A file naming no key mxkeys can read (an empty table, a form it
        // does not parse) is adopted only once every domain has a key; a
        // SigningTable names its keys through the KeyTable, checked too.
        let signing_table = signer == Signer::Opendkim && path.ends_with(Signer::SIGNING_TABLE);
        let complete = if named.is_empty() && !signing_table {
            lacking.is_none()
        } else {
            missing.is_empty()
        };
        if !(adopt && complete) {
            return Decision::Foreign {
                file: path.clone(),
                missing,
            };
        }
        adopted = true;
    }
    if adopted {
        return Decision::Write;
    }
    // A key of mxkeys' own that no longer signs (draining, revoked) and
    // that the files still name must come out, whatever else is missing.
    let stale = book
        .keys
        .iter()
        .filter(|k| k.state != KeyState::Active)
        .any(|k| {
            let file = derived_key_file(signer, k).unwrap_or_else(|| k.file.clone());
            let file = file.display().to_string();
            on_disk
                .iter()
                .flatten()
                .any(|old| String::from_utf8_lossy(old).contains(&file))
        });
    match lacking {
        Some(domain) if !stale => Decision::Withhold {
            domain: domain.clone(),
        },
        _ => Decision::Write,
    }
}

/// The keys (domain when the form names it, selector) a signer file not
/// written by mxkeys names, as far as its form can be read: OpenDKIM
/// KeyTable lines `ID DOMAIN:SELECTOR:KEY`, amavis `dkim_key('DOMAIN',
/// 'SELECTOR', ...)`, Rspamd `selector = "SELECTOR"`. A SigningTable
/// names key IDs only: none.
fn foreign_keys(signer: Signer, path: &Path, text: &str) -> BTreeSet<(Option<String>, String)> {
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut out = BTreeSet::new();
    match signer {
        Signer::Opendkim if path.ends_with(Signer::KEY_TABLE) => {
            out.extend(
                key_table_entries(text)
                    .into_iter()
                    .flatten()
                    .map(|e| (e.domain, e.selector)),
            );
        }
        Signer::Opendkim => {}
        Signer::Amavis => {
            for line in lines {
                let Some(args) = line.split_once("dkim_key(").map(|(_, a)| a) else {
                    continue;
                };
                let quoted: Vec<&str> =
                    args.split(['\'', '"']).skip(1).step_by(2).take(2).collect();
                if let [d, s] = quoted[..] {
                    out.insert((Some(d.to_ascii_lowercase()), s.to_owned()));
                }
            }
        }
        Signer::Rspamd => {
            for line in lines {
                let mut rest = line;
                while let Some(i) = rest.find("selector") {
                    rest = &rest[i + "selector".len()..];
                    let value = rest.trim_start();
                    let Some(value) = value.strip_prefix(['=', ':']) else {
                        continue;
                    };
                    let value = value.trim_start();
                    if let Some(v) = value.strip_prefix('"')
                        && let Some(end) = v.find('"')
                    {
                        out.insert((None, v[..end].to_owned()));
                    }
                }
            }
        }
    }
    out
}

/// One key an OpenDKIM KeyTable line names: `ID DOMAIN:SELECTOR:KEYFILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyTableEntry {
    /// 1-based line number in the table.
    pub line: usize,
    /// Lower-cased; `None` for `%` (the signing domain) or empty.
    pub domain: Option<String>,
    pub selector: String,
    /// The key file as written (`None` when the line has no third field).
    pub key_file: Option<String>,
}

/// Every entry of an OpenDKIM KeyTable, in order; comments and blank lines
/// skipped; `Err(line)` for a line not of the form `ID DOMAIN:SELECTOR[:KEY]`.
pub(crate) fn key_table_entries(text: &str) -> Vec<Result<KeyTableEntry, usize>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(value) = line.split_whitespace().nth(1) else {
            out.push(Err(i + 1));
            continue;
        };
        let mut parts = value.splitn(3, ':');
        match (parts.next(), parts.next()) {
            (Some(d), Some(s)) => out.push(Ok(KeyTableEntry {
                line: i + 1,
                domain: (d != "%" && !d.is_empty()).then(|| d.to_ascii_lowercase()),
                selector: s.to_owned(),
                key_file: parts.next().map(str::to_owned),
            })),
            _ => out.push(Err(i + 1)),
        }
    }
    out
}

/// The file holding `k` in the form `signer` reads, when that is not the
/// PEM file itself: Rspamd reads Ed25519 keys only as a base64 seed
/// (see [`super::keys::rspamd_ed25519`]), written beside the PEM file as
/// `SELECTOR.rspamd`.
pub fn derived_key_file(signer: Signer, k: &Key) -> Option<PathBuf> {
    (signer == Signer::Rspamd && k.algorithm == DkimAlgorithm::Ed25519)
        .then(|| rspamd_key_file(&k.file))
}

/// Where the Rspamd form of the key in `pem_file` is written.
pub fn rspamd_key_file(pem_file: &Path) -> PathBuf {
    pem_file.with_extension("rspamd")
}

/// The files a signer reads, with their content.
pub fn render(signer: Signer, dir: &Path, book: &Book) -> Vec<(PathBuf, String)> {
    let mut active: Vec<_> = book
        .keys
        .iter()
        .filter(|k| k.state == KeyState::Active)
        .collect();
    // Stable order: by domain, RSA before Ed25519 (the signature every
    // receiver verifies first).
    active.sort_by(|a, b| (&a.domain, a.algorithm).cmp(&(&b.domain, b.algorithm)));
    // One text per file, in the order `Signer::files` names them.
    let texts = match signer {
        Signer::Opendkim => {
            let multiple = active.windows(2).any(|w| w[0].domain == w[1].domain);
            let mut key_table = HEADER.to_owned();
            let mut signing_table = HEADER.to_owned();
            if multiple {
                signing_table.push_str(
                    "# Some domains have two keys (RSA and Ed25519): opendkim.conf needs `MultipleSignatures yes`.\n",
                );
            }
            for k in &active {
                let id = k.record_name();
                key_table.push_str(&format!(
                    "{id} {}:{}:{}\n",
                    k.domain,
                    k.selector,
                    k.file.display()
                ));
                signing_table.push_str(&format!("*@{} {id}\n", k.domain));
            }
            vec![key_table, signing_table]
        }
        Signer::Rspamd => {
            let mut conf = HEADER.to_owned();
            conf.push_str("domain {\n");
            let mut i = 0;
            while i < active.len() {
                let domain = &active[i].domain;
                conf.push_str(&format!("  {domain} {{\n    selectors [\n"));
                while i < active.len() && &active[i].domain == domain {
                    let k = active[i];
                    let file = derived_key_file(signer, k).unwrap_or_else(|| k.file.clone());
                    conf.push_str(&format!(
                        "      {{ selector = \"{}\"; path = \"{}\"; }},\n",
                        k.selector,
                        file.display()
                    ));
                    i += 1;
                }
                conf.push_str("    ]\n  }\n");
            }
            conf.push_str("}\n");
            vec![conf]
        }
        Signer::Amavis => {
            let mut conf = HEADER.to_owned();
            for k in active.iter().filter(|k| k.algorithm.is_rsa()) {
                conf.push_str(&format!(
                    "dkim_key('{}', '{}', '{}');\n",
                    k.domain,
                    k.selector,
                    k.file.display()
                ));
            }
            conf.push_str("1;\n");
            vec![conf]
        }
    };
    signer
        .files()
        .iter()
        .map(|name| dir.join(name))
        .zip(texts)
        .collect()
}

/// Whether any rendered file differs from what is on disk.
pub fn differs(files: &[(PathBuf, String)]) -> bool {
    files
        .iter()
        .any(|(path, content)| !std::fs::read(path).is_ok_and(|old| old == content.as_bytes()))
}

/// A signer file (or its directory) that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SignerWriteError {
    #[error("{}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {}", .path.display(), crate::source::io_reason(.source))]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the rendered files that differ; returns whether any did.
///
/// OpenDKIM's two tables are written so that, whenever a run stops, every
/// key the SigningTable names is in the KeyTable: first a KeyTable holding
/// old and new keys, then the SigningTable, then the final KeyTable.
pub fn write(files: &[(PathBuf, String)]) -> Result<bool, SignerWriteError> {
    let key_table = files.iter().find(|(p, _)| p.ends_with(Signer::KEY_TABLE));
    let signing = files
        .iter()
        .any(|(p, _)| p.ends_with(Signer::SIGNING_TABLE));
    if let (Some((kt_path, kt_new)), true) = (key_table, signing) {
        let old = std::fs::read_to_string(kt_path).unwrap_or_default();
        let mut union = kt_new.clone();
        for line in old
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            if !kt_new.lines().any(|n| n == line) {
                union.push_str(line);
                union.push('\n');
            }
        }
        let mut changed = write_plain(&[(kt_path.clone(), union)])?;
        changed |= write_plain(
            &files
                .iter()
                .filter(|(p, _)| !p.ends_with(Signer::KEY_TABLE))
                .cloned()
                .collect::<Vec<_>>(),
        )?;
        changed |= write_plain(&[(kt_path.clone(), kt_new.clone())])?;
        return Ok(changed);
    }
    write_plain(files)
}

fn write_plain(files: &[(PathBuf, String)]) -> Result<bool, SignerWriteError> {
    let mut changed = false;
    for (path, content) in files {
        if std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SignerWriteError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        crate::install::write_atomic(path, content.as_bytes(), 0o644, None).map_err(|source| {
            SignerWriteError::Write {
                path: path.clone(),
                source,
            }
        })?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkim::machine::DkimAlgorithm;
    use crate::dkim::machine::Key;

    fn key(domain: &str, algorithm: DkimAlgorithm, selector: &str, state: KeyState) -> Key {
        Key {
            domain: domain.into(),
            algorithm,
            selector: selector.into(),
            file: PathBuf::from(format!("/var/lib/mxkeys/dkim/{domain}/{selector}.pem")),
            record: String::new(),
            state,
            since: 0,
            created_at: 0,
            verified_at: Some(0),
            activated_at: Some(0),
            entered: Default::default(),
        }
    }

    fn book() -> Book {
        Book {
            keys: vec![
                key(
                    "example.org",
                    DkimAlgorithm::Rsa2048,
                    "r1",
                    KeyState::Active,
                ),
                key(
                    "example.com",
                    DkimAlgorithm::Ed25519,
                    "e2",
                    KeyState::Active,
                ),
                key(
                    "example.com",
                    DkimAlgorithm::Rsa2048,
                    "r2",
                    KeyState::Active,
                ),
                key(
                    "example.com",
                    DkimAlgorithm::Rsa2048,
                    "r1",
                    KeyState::Draining,
                ),
                key(
                    "example.com",
                    DkimAlgorithm::Rsa2048,
                    "r3",
                    KeyState::Published,
                ),
            ],
            ..Book::default()
        }
    }

    #[test]
    fn opendkim_tables_hold_active_keys_only() {
        let files = render(Signer::Opendkim, Path::new("/etc/opendkim"), &book());
        let (kt, st) = (&files[0].1, &files[1].1);
        assert!(kt.contains(
            "r2._domainkey.example.com example.com:r2:/var/lib/mxkeys/dkim/example.com/r2.pem\n"
        ));
        assert!(kt.contains("e2._domainkey.example.com example.com:e2:"));
        assert!(
            !kt.contains(":r1:/var/lib/mxkeys/dkim/example.com") && !kt.contains("r3._domainkey")
        );
        assert!(st.contains(
            "*@example.com r2._domainkey.example.com\n*@example.com e2._domainkey.example.com\n"
        ));
        assert!(st.contains("MultipleSignatures yes"));
        assert_eq!(files[0].0, PathBuf::from("/etc/opendkim/KeyTable"));
    }

    #[test]
    fn rspamd_and_amavis() {
        let r = &render(Signer::Rspamd, Path::new("/etc/rspamd/local.d"), &book())[0];
        assert_eq!(r.0, PathBuf::from("/etc/rspamd/local.d/dkim_signing.conf"));
        assert!(r.1.contains("  example.com {\n    selectors [\n      { selector = \"r2\"; path = \"/var/lib/mxkeys/dkim/example.com/r2.pem\"; },\n      { selector = \"e2\"; path = \"/var/lib/mxkeys/dkim/example.com/e2.rspamd\"; },\n"));
        let a = &render(Signer::Amavis, Path::new("/etc/amavis"), &book())[0];
        assert!(
            a.1.contains(
                "dkim_key('example.com', 'r2', '/var/lib/mxkeys/dkim/example.com/r2.pem');"
            )
        );
        assert!(!a.1.contains("'e2'"), "amavis signs with RSA only");
        assert!(a.1.ends_with("1;\n"));
    }

    fn on_disk(files: &[(PathBuf, String)], contents: &[Option<&str>]) -> Vec<Option<Vec<u8>>> {
        assert_eq!(files.len(), contents.len());
        contents
            .iter()
            .map(|c| c.map(|c| c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn foreign_files_are_never_written_unless_import_adopted_every_key_they_name() {
        let b = book();
        let files = render(Signer::Opendkim, Path::new("/etc/opendkim"), &b);
        let domains = ["example.com".to_owned(), "example.org".to_owned()];
        let ours = files[0].1.clone();
        let admin_kt = "mail._domainkey.example.com example.com:mail:/etc/dkimkeys/mail.private\n";
        let admin_r2 = "r2._domainkey.example.com example.com:r2:/etc/dkimkeys/r2.private\n";
        let admin_st = "*@example.com mail._domainkey.example.com\n";
        let admin_r1_r2 = format!(
            "r1._domainkey.example.com example.com:r1:/etc/dkimkeys/r1.private\n{admin_r2}"
        );
        // (KeyTable on disk, SigningTable on disk, import adopting, decision)
        let foreign = |missing: &[&str]| Decision::Foreign {
            file: files[0].0.clone(),
            missing: missing.iter().map(|s| (*s).to_owned()).collect(),
        };
        let table: Vec<(Option<&str>, Option<&str>, bool, Decision)> = vec![
            (None, None, false, Decision::Write),
            (Some(&ours), Some(&ours), false, Decision::Write),
            (
                Some(admin_kt),
                Some(admin_st),
                false,
                foreign(&["mail._domainkey.example.com"]),
            ),
            // Import of another key does not adopt them.
            (
                Some(admin_kt),
                Some(admin_st),
                true,
                foreign(&["mail._domainkey.example.com"]),
            ),
            // Every key the admin's KeyTable names is active in mxkeys: adopted.
            (Some(admin_r2), Some(admin_st), true, Decision::Write),
            (Some(admin_r2), Some(admin_st), false, foreign(&[])),
            // A key imported, then replaced by a later import (draining),
            // counts as imported.
            (Some(&admin_r1_r2), Some(admin_st), true, Decision::Write),
            // A SigningTable of the admin's beside mxkeys' KeyTable.
            (
                Some(&ours),
                Some(admin_st),
                false,
                Decision::Foreign {
                    file: files[1].0.clone(),
                    missing: vec![],
                },
            ),
        ];
        for (kt, st, adopt, want) in table {
            let disk = on_disk(&files, &[kt, st]);
            assert_eq!(
                decide(Signer::Opendkim, &files, &disk, &b, &domains, adopt),
                want,
                "{kt:?} {st:?} adopt {adopt}"
            );
        }
        assert!(foreign(&["x"]).describe().contains("`mxkeys dkim import`"));
        assert!(
            foreign(&[])
                .describe()
                .starts_with("/etc/opendkim/KeyTable: ")
        );
    }

    #[test]
    fn nothing_is_written_while_a_domain_has_no_active_key_unless_an_old_key_must_stop() {
        let domains = ["example.com".to_owned(), "example.org".to_owned()];
        let mut before_activation = book();
        for k in &mut before_activation.keys {
            k.state = KeyState::Published;
        }
        let empty = Book::default();
        let all = book();
        let mut one_drained = book();
        // example.org has no active key; example.com's r1 drains.
        one_drained.keys.retain(|k| k.domain == "example.com");
        let dir = Path::new("/etc/opendkim");
        let r1_line =
            "r1._domainkey.example.com example.com:r1:/var/lib/mxkeys/dkim/example.com/r1.pem\n";
        let ours_with_r1 = format!("{HEADER}{r1_line}");
        let ours_with_unknown =
            format!("{HEADER}old._domainkey.example.com example.com:old:/k/old.pem\n");
        let withhold = |d: &str| Decision::Withhold {
            domain: d.to_owned(),
        };
        // (book, KeyTable on disk, decision)
        let table: Vec<(&Book, Option<&str>, Decision)> = vec![
            // Before the first activation: absent stays absent.
            (&before_activation, None, withhold("example.com")),
            (&empty, None, withhold("example.com")),
            // state_dir lost: mxkeys' own files, naming keys it no longer knows, stay.
            (&empty, Some(&ours_with_unknown), withhold("example.com")),
            // Every domain signs: written.
            (&all, None, Decision::Write),
            (&all, Some(&ours_with_unknown), Decision::Write),
            // A domain without a key, but a drained key of mxkeys' still
            // named: it must stop signing, so the files are written.
            (&one_drained, Some(&ours_with_r1), Decision::Write),
            (
                &one_drained,
                Some(&ours_with_unknown),
                withhold("example.org"),
            ),
        ];
        for (i, (b, kt, want)) in table.into_iter().enumerate() {
            let files = render(Signer::Opendkim, dir, b);
            let disk = on_disk(&files, &[kt, kt]);
            assert_eq!(
                decide(Signer::Opendkim, &files, &disk, b, &domains, false),
                want,
                "row {i}"
            );
        }
    }

    #[test]
    fn keys_named_by_foreign_files_are_read_from_each_signers_form() {
        let set = |v: &[(Option<&str>, &str)]| {
            v.iter()
                .map(|(d, s)| (d.map(str::to_owned), (*s).to_owned()))
                .collect::<BTreeSet<_>>()
        };
        type Named<'a> = &'a [(Option<&'a str>, &'a str)];
        let table: &[(Signer, &str, &str, Named)] = &[
            (
                Signer::Opendkim,
                "KeyTable",
                "# comment\nmail._domainkey.Example.com\tExample.com:mail:/etc/k.private\n%k %:s2:/k2\n\n",
                &[(Some("example.com"), "mail"), (None, "s2")],
            ),
            (
                Signer::Opendkim,
                "SigningTable",
                "*@example.com mail._domainkey.example.com\n",
                &[],
            ),
            (
                Signer::Amavis,
                "dkim_keys.conf",
                "dkim_key('example.com', 'mail', '/k.pem');\ndkim_key(\"example.org\", \"s\", \"/k2\");\n1;\n",
                &[(Some("example.com"), "mail"), (Some("example.org"), "s")],
            ),
            (
                Signer::Rspamd,
                "dkim_signing.conf",
                "selector = \"dkim\";\npath = \"/var/lib/rspamd/dkim/$domain.$selector.key\";\ndomain {\n  example.org {\n    selectors [ { selector: \"s1\"; path = \"/k\"; } ]\n  }\n}\n",
                &[(None, "dkim"), (None, "s1")],
            ),
        ];
        for (signer, file, text, want) in table {
            assert_eq!(
                foreign_keys(*signer, Path::new(file), text),
                set(want),
                "{file}"
            );
        }
    }
}

//! Signer configuration, rendered from the keys that are active: OpenDKIM's
//! KeyTable and SigningTable, Rspamd's `dkim_signing.conf`, or a file of
//! amavis `dkim_key(...)` lines. Written atomically, only when changed;
//! then the signer is reloaded once.

use std::path::{Path, PathBuf};

use super::machine::{Book, Key, KeyState};
use crate::config::{DkimAlgorithm, Signer};

const HEADER: &str =
    "# Written by mxkeys from its DKIM key state: do not edit (changes are overwritten).\n";

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
    match signer {
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
            vec![
                (dir.join("KeyTable"), key_table),
                (dir.join("SigningTable"), signing_table),
            ]
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
            vec![(dir.join("dkim_signing.conf"), conf)]
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
            vec![(dir.join("dkim_keys.conf"), conf)]
        }
    }
}

/// Whether any rendered file differs from what is on disk.
pub fn differs(files: &[(PathBuf, String)]) -> bool {
    files
        .iter()
        .any(|(path, content)| !std::fs::read(path).is_ok_and(|old| old == content.as_bytes()))
}

/// Writes the rendered files that differ; returns whether any did.
///
/// OpenDKIM's two tables are written so that, whenever a run stops, every
/// key the SigningTable names is in the KeyTable: first a KeyTable holding
/// old and new keys, then the SigningTable, then the final KeyTable.
pub fn write(files: &[(PathBuf, String)]) -> Result<bool, String> {
    let key_table = files.iter().find(|(p, _)| p.ends_with("KeyTable"));
    let signing = files.iter().any(|(p, _)| p.ends_with("SigningTable"));
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
                .filter(|(p, _)| !p.ends_with("KeyTable"))
                .cloned()
                .collect::<Vec<_>>(),
        )?;
        changed |= write_plain(&[(kt_path.clone(), kt_new.clone())])?;
        return Ok(changed);
    }
    write_plain(files)
}

fn write_plain(files: &[(PathBuf, String)]) -> Result<bool, String> {
    let mut changed = false;
    for (path, content) in files {
        if std::fs::read(path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::install::write_atomic(path, content.as_bytes(), 0o644, None)
            .map_err(|e| format!("{}: {}", path.display(), crate::source::io_reason(&e)))?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimAlgorithm;
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
}

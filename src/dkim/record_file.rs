//! `[dkim] record_dir`: the record each key needs published, one file per
//! key named `DOMAIN.SELECTOR._domainkey.txt`, the layout mlan/docker-
//! postfix's users read the record to publish from
//! (`/var/db/dkim/DOMAIN.SELECTOR._domainkey.txt`).
//!
//! Rule: a file holds exactly what `mxkeys dkim records` prints for its key
//! (a zone-file line, strings split at 255), after one `;` comment line
//! naming the key's state, so it is current after every pass: a key once
//! published gets its file, a revoked key's file says `p=` empty. A file is
//! written only when its text changes (atomically, mode 0644: a record is
//! public), never for a key that is only generated, and never removed
//! (a deleted key's file stays, saying what was last published). A failed
//! write is one error line naming the file; the pass goes on.
//! [`record_text`] is pure; [`write`] acts.

use std::path::{Path, PathBuf};

use mxkeys_providers::RData;

use super::keys;
use super::machine::{Book, Key, KeyState};
use crate::config::Dkim;

/// The value the record of `k` must hold now, or `None` while it is only
/// generated (not to be published yet).
pub fn published_value(k: &Key) -> Option<String> {
    match k.state {
        KeyState::Generated => None,
        KeyState::Revoked => Some(keys::revoked_record(k.algorithm)),
        _ => Some(k.record.clone()),
    }
}

/// The file of `k` in `dir`: `DOMAIN.SELECTOR._domainkey.txt`.
pub fn file_of(dir: &Path, k: &Key) -> PathBuf {
    dir.join(format!("{}.{}._domainkey.txt", k.domain, k.selector))
}

/// The text of `k`'s file, or `None` when it has none (yet).
pub fn record_text(k: &Key, ttl: u32) -> Option<String> {
    let value = published_value(k)?;
    Some(format!(
        "; Written by mxkeys: the DKIM record of {} ({}, {})\n{}",
        k.record_name(),
        k.algorithm.name(),
        k.state,
        mxkeys_providers::manual::zone_lines(&k.record_name(), ttl, &[RData::Txt(value)])
    ))
}

/// Writes the file of every key whose text changed into `record_dir`,
/// when configured. Failures are logged, one line each.
pub fn write(d: &Dkim, book: &Book) {
    let Some(dir) = d.record_dir.as_deref() else {
        return;
    };
    for k in &book.keys {
        let Some(text) = record_text(k, d.ttl) else {
            continue;
        };
        let path = file_of(dir, k);
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        match std::fs::create_dir_all(dir)
            .and_then(|()| crate::install::write_atomic(&path, text.as_bytes(), 0o644, None))
        {
            Ok(()) => tracing::info!(
                "dkim: wrote the record of {} to {}",
                k.record_name(),
                path.display()
            ),
            Err(e) => tracing::error!(
                "dkim: record file {}: {}",
                path.display(),
                crate::source::io_reason(&e)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimAlgorithm;

    fn key(state: KeyState) -> Key {
        Key {
            domain: "example.com".into(),
            algorithm: DkimAlgorithm::Rsa2048,
            selector: "default".into(),
            file: "/k/example.com/default.pem".into(),
            record: format!("v=DKIM1; k=rsa; p={}", "A".repeat(300)),
            state,
            since: 0,
            created_at: 0,
            verified_at: None,
            activated_at: None,
            entered: Default::default(),
        }
    }

    #[test]
    fn a_key_gets_the_line_dkim_records_prints_once_it_is_to_be_published() {
        assert_eq!(record_text(&key(KeyState::Generated), 300), None);
        for state in [KeyState::Published, KeyState::Active, KeyState::Draining] {
            let k = key(state);
            let text = record_text(&k, 600).unwrap();
            let (comment, line) = text.split_once('\n').unwrap();
            assert!(
                comment.starts_with("; Written by mxkeys") && comment.contains(&state.to_string())
            );
            assert!(
                line.starts_with("default._domainkey.example.com. 600 IN TXT "),
                "{line}"
            );
            let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
            assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
            assert_eq!(strings.concat(), k.record);
        }
        let revoked = record_text(&key(KeyState::Revoked), 300).unwrap();
        assert!(
            revoked.ends_with("TXT \"v=DKIM1; k=rsa; p=\"\n"),
            "{revoked}"
        );
        assert_eq!(
            file_of(Path::new("/var/db/dkim"), &key(KeyState::Active)),
            Path::new("/var/db/dkim/example.com.default._domainkey.txt")
        );
    }
}

//! lego's output: `certificates/NAME.crt` (leaf plus issuer bundle unless
//! lego ran with `--no-bundle`), `NAME.key`, `NAME.issuer.crt`. A wildcard
//! `*.example.com` is stored as `_.example.com`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use super::{Harvest, Intermediates, Reader, SourceErrorKind};

/// `path` is lego's `--path` directory or its `certificates/` directory.
pub fn read(reader: &Reader, path: &Path) -> Harvest {
    let mut harvest = Harvest::default();
    let nested = path.join("certificates");
    let dir = if nested.is_dir() {
        nested
    } else {
        path.to_owned()
    };
    // Stems of `NAME.crt` files, as bytes: a name need not be UTF-8.
    let mut stems: Vec<Vec<u8>> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().as_bytes().to_vec())
            .filter(|n| n.ends_with(b".crt") && !n.ends_with(b".issuer.crt"))
            .map(|mut n| {
                n.truncate(n.len() - b".crt".len());
                n
            })
            .collect(),
        Err(e) => {
            let entry = (dir != path).then(|| dir.display().to_string());
            harvest.errors.push(reader.error(
                entry,
                SourceErrorKind::Unreadable,
                super::io_reason(&e),
            ));
            return harvest;
        }
    };
    stems.sort();
    for (index, stem) in stems.iter().enumerate() {
        let file = |suffix: &str| {
            let mut name = stem.clone();
            name.extend_from_slice(suffix.as_bytes());
            dir.join(OsStr::from_bytes(&name))
        };
        let shown = String::from_utf8_lossy(stem);
        let entry = format!("certificates/{shown}.crt");
        let crt = file(".crt");
        let key = file(".key");
        let issuer = file(".issuer.crt");
        reader.add_pem_files(
            &mut harvest,
            (entry.clone(), index),
            (&crt, entry),
            (&key, format!("certificates/{shown}.key")),
            // With --no-bundle the .crt holds only the leaf.
            Intermediates::IfLeafOnly(&issuer),
        );
    }
    harvest
}

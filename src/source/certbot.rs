//! Certbot's configuration directory: `live/NAME/{fullchain,privkey}.pem`
//! are relative symlinks into `archive/NAME/`, which reading follows.
//!
//! The configured path may be the config dir (holding `live/`), the `live/`
//! directory itself, or a single `live/NAME` directory.

use std::path::{Path, PathBuf};

use super::{Harvest, Intermediates, Reader, SourceErrorKind};

pub fn read(reader: &Reader, path: &Path) -> Harvest {
    let mut harvest = Harvest::default();
    let dirs = match lineage_dirs(path) {
        Ok(d) => d,
        Err(reason) => {
            harvest
                .errors
                .push(reader.error(None, SourceErrorKind::Unreadable, reason));
            return harvest;
        }
    };
    for (index, (name, dir)) in dirs.into_iter().enumerate() {
        let entry = format!("live/{name}");
        reader.add_pem_files(
            &mut harvest,
            (entry.clone(), index),
            (&dir.join("fullchain.pem"), format!("{entry}/fullchain.pem")),
            (&dir.join("privkey.pem"), format!("{entry}/privkey.pem")),
            Intermediates::InCertFile,
        );
    }
    harvest
}

/// The lineage directories (`live/NAME`) under `path`, sorted by name.
fn lineage_dirs(path: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let meta = std::fs::metadata(path).map_err(|e| super::io_reason(&e))?;
    if !meta.is_dir() {
        return Err(
            "is not a directory (expected a Certbot config, live/ or live/NAME directory)"
                .to_owned(),
        );
    }
    if path.join("fullchain.pem").symlink_metadata().is_ok()
        || path.join("privkey.pem").symlink_metadata().is_ok()
    {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![(name, path.to_owned())]);
    }
    let live = if path.join("live").is_dir() {
        path.join("live")
    } else {
        path.to_owned()
    };
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&live)
        .map_err(|e| format!("{}: {}", live.display(), super::io_reason(&e)))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        // A name that is not UTF-8 is still a lineage: shown lossily.
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    Ok(dirs)
}

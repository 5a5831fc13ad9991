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
        Err(e) => {
            harvest
                .errors
                .push(reader.error(None, SourceErrorKind::Unreadable, e.to_string()));
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

/// Why a Certbot directory holds no lineage to read.
#[derive(Debug, thiserror::Error)]
enum LineageError {
    /// The configured path cannot be inspected.
    #[error("{}", super::io_reason(.0))]
    Path(#[source] std::io::Error),
    #[error("is not a directory (expected a Certbot config, live/ or live/NAME directory)")]
    NotDirectory,
    /// The `live/` directory (or the path itself) cannot be listed.
    #[error("{}: {}", .dir.display(), super::io_reason(.source))]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lineage directories (`live/NAME`) under `path`, sorted by name.
fn lineage_dirs(path: &Path) -> Result<Vec<(String, PathBuf)>, LineageError> {
    let meta = std::fs::metadata(path).map_err(LineageError::Path)?;
    if !meta.is_dir() {
        return Err(LineageError::NotDirectory);
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
        .map_err(|source| LineageError::List {
            dir: live.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        // A name that is not UTF-8 is still a lineage: shown lossily.
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    Ok(dirs)
}

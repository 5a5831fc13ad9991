//! A JSON record in the state directory: read whole, written atomically
//! with its mode (its directory created 0700 when missing). Reading says
//! apart a missing record (`Ok(None)`), one that cannot be read and one
//! that is not the JSON expected; what each means is its owner's decision.
//! Both buffers are zeroized (an account record holds its private key).

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

/// Where a record of type `T` lives, and the mode it is written with.
#[derive(Debug)]
pub struct Record<T> {
    path: PathBuf,
    mode: u32,
    kind: PhantomData<fn() -> T>,
}

/// Why a record could not be read or written: one line naming the file,
/// never its content.
#[derive(Debug)]
pub enum RecordError {
    /// The file exists but cannot be read.
    Unreadable { path: PathBuf, error: io::Error },
    /// The file is not the record expected.
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// Its directory cannot be created.
    Directory { dir: PathBuf, error: io::Error },
    /// It cannot be written.
    Write { path: PathBuf, error: io::Error },
}

impl<T> Record<T> {
    pub(super) fn new(path: PathBuf, mode: u32) -> Record<T> {
        Record {
            path,
            mode,
            kind: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T: DeserializeOwned> Record<T> {
    /// The record; `None` only when the file does not exist.
    pub fn load(&self) -> Result<Option<T>, RecordError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(RecordError::Unreadable {
                    path: self.path.clone(),
                    error,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| RecordError::Corrupt {
                path: self.path.clone(),
                error,
            })
    }
}

impl<T: DeserializeOwned + Default> Record<T> {
    /// [`Self::load`], with the default value when there is no file yet.
    pub fn load_or_default(&self) -> Result<T, RecordError> {
        self.load().map(Option::unwrap_or_default)
    }
}

impl<T: Serialize> Record<T> {
    /// Replaces the record atomically, creating its directory (0700).
    pub fn save(&self, value: &T) -> Result<(), RecordError> {
        let write = |error| RecordError::Write {
            path: self.path.clone(),
            error,
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(value).map_err(|e| write(e.into()))?);
        if let Some(dir) = self.path.parent() {
            super::ensure_dir(dir).map_err(|error| RecordError::Directory {
                dir: dir.to_owned(),
                error,
            })?;
        }
        crate::install::write_atomic(&self.path, &json, self.mode, None).map_err(write)
    }
}

impl RecordError {
    /// The underlying I/O error (a corrupt record is `InvalidData`).
    pub fn into_io(self) -> io::Error {
        match self {
            RecordError::Unreadable { error, .. }
            | RecordError::Directory { error, .. }
            | RecordError::Write { error, .. } => error,
            RecordError::Corrupt { error, .. } => error.into(),
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Unreadable { path, error } => {
                write!(f, "{}: {}", path.display(), crate::source::io_reason(error))
            }
            RecordError::Corrupt { path, error } => write!(f, "{}: {error}", path.display()),
            RecordError::Directory { dir, error } => write!(f, "{}: {error}", dir.display()),
            RecordError::Write { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for RecordError {}

//! Installing: turning a chosen bundle into a target's files.
//!
//! Each file is written as a temporary file in the same directory, created
//! with a mode that lets no one else read it, given its final owner and
//! mode, written, fsynced, renamed over the old file, and the directory
//! fsynced: a reader sees the old file or the new one, never half of one,
//! and a key is never readable by others. Files are written only when their
//! bytes differ. If writing one file of a target fails, the files of that
//! target already replaced are put back, so a server never sees a key from
//! one certificate and a chain from another.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use zeroize::Zeroizing;

use crate::cert::Bundle;
use crate::config::{FileRole, Slot, Target, TargetFiles};

/// Owner and group to give files, as numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ownership {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One file a target should hold.
pub struct Planned {
    pub role: FileRole,
    pub path: PathBuf,
    pub bytes: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bytes may be a private key: never print them.
        f.debug_struct("Planned")
            .field("role", &self.role)
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// The files of a target's slot for a bundle, in write order.
pub fn planned_files(target: &Target, slot: &Slot, bundle: &Bundle) -> Vec<Planned> {
    slot.files
        .iter()
        .map(|(role, path)| {
            let bytes: Zeroizing<Vec<u8>> = match role {
                FileRole::Key => Zeroizing::new(bundle.key.to_pem().as_bytes().to_vec()),
                FileRole::Combined => Zeroizing::new(bundle.combined_pem().as_bytes().to_vec()),
                FileRole::Fullchain => Zeroizing::new(bundle.fullchain_pem().into_bytes()),
                FileRole::Cert => Zeroizing::new(bundle.leaf_pem().into_bytes()),
                FileRole::Chain => Zeroizing::new(bundle.chain_pem().into_bytes()),
            };
            let mode = if role.holds_key() {
                target.key_mode
            } else {
                0o644
            };
            Planned {
                role,
                path: path.to_owned(),
                bytes,
                mode,
            }
        })
        .collect()
}

/// Resolves a target's `owner` and `group` names (or numbers) to ids.
pub fn ownership(target: &Target) -> Result<Ownership, String> {
    let uid = match &target.owner {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::User::from_name(name)
                .map_err(|e| format!("owner {name:?}: {e}"))?
                .ok_or_else(|| format!("owner {name:?}: no such user"))?
                .uid
                .as_raw(),
        }),
    };
    let gid = match &target.group {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(name)
                .map_err(|e| format!("group {name:?}: {e}"))?
                .ok_or_else(|| format!("group {name:?}: no such group"))?
                .gid
                .as_raw(),
        }),
    };
    Ok(Ownership { uid, gid })
}

/// What installing a target did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Files whose content was replaced.
    pub changed: Vec<PathBuf>,
    /// Files whose content was right but whose mode or owner was fixed.
    pub fixed: Vec<PathBuf>,
    /// How to put the replaced files back.
    pub undo: Undo,
}

/// The previous content of files an install replaced, to restore them when
/// the service refuses the new ones. Never printed (it may hold a key).
#[derive(Default)]
pub struct Undo {
    entries: Vec<(PathBuf, Previous)>,
    owner: Ownership,
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self.entries.iter().map(|(p, _)| p).collect();
        f.debug_struct("Undo").field("paths", &paths).finish()
    }
}

impl Undo {
    /// Puts every replaced file back (a file that did not exist is
    /// removed), last written first. Errors name the files.
    pub fn restore(&self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (path, old) in self.entries.iter().rev() {
            let result = match old {
                Some((bytes, mode)) => write_atomic(path, bytes, *mode, Some(self.owner)),
                None => fs::remove_file(path),
            };
            if let Err(e) = result {
                failed.push(format!(
                    "{}: {}",
                    path.display(),
                    crate::source::io_reason(&e)
                ));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("cannot restore {}", failed.join("; ")))
        }
    }
}

/// Whether a file's content differs from `bytes` (a missing file differs).
pub fn differs(path: &Path, bytes: &[u8]) -> bool {
    match fs::read(path) {
        Ok(old) => {
            let old = Zeroizing::new(old);
            old.as_slice() != bytes
        }
        Err(_) => true,
    }
}

/// A file's content and mode before mxkeys replaced it (`None`: it did not exist).
type Previous = Option<(Zeroizing<Vec<u8>>, u32)>;

/// Writes a target's planned files. On failure, files already replaced are
/// restored (or removed if they did not exist) and the error names the file.
pub fn apply(planned: &[Planned], owner: Ownership) -> Result<Outcome, String> {
    let mut outcome = Outcome {
        undo: Undo {
            entries: Vec::new(),
            owner,
        },
        ..Outcome::default()
    };
    for p in planned {
        let old = match fs::read(&p.path) {
            Ok(b) => {
                let mode = fs::metadata(&p.path)
                    .map(|m| m.mode() & 0o7777)
                    .unwrap_or(p.mode);
                Some((Zeroizing::new(b), mode))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                restore_or_log(&outcome.undo);
                return Err(format!(
                    "{} ({}): cannot read: {}",
                    p.path.display(),
                    p.role.as_str(),
                    crate::source::io_reason(&e)
                ));
            }
        };
        if old
            .as_ref()
            .is_some_and(|(b, _)| b.as_slice() == p.bytes.as_slice())
        {
            match fix_metadata(&p.path, p.mode, owner) {
                Ok(true) => outcome.fixed.push(p.path.clone()),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    "{}: cannot fix mode or owner: {}",
                    p.path.display(),
                    crate::source::io_reason(&e)
                ),
            }
            continue;
        }
        let written = ensure_parent(&p.path)
            .and_then(|()| write_atomic(&p.path, &p.bytes, p.mode, Some(owner)));
        if let Err(e) = written {
            restore_or_log(&outcome.undo);
            return Err(format!(
                "{} ({}): cannot write: {}",
                p.path.display(),
                p.role.as_str(),
                crate::source::io_reason(&e)
            ));
        }
        outcome.undo.entries.push((p.path.clone(), old));
        outcome.changed.push(p.path.clone());
    }
    Ok(outcome)
}

fn restore_or_log(undo: &Undo) {
    if let Err(e) = undo.restore() {
        tracing::error!("{e}");
    }
}

/// Sets mode and owner of an existing file when they differ. Returns
/// whether anything changed.
fn fix_metadata(path: &Path, mode: u32, owner: Ownership) -> io::Result<bool> {
    let meta = fs::metadata(path)?;
    let mut changed = false;
    let uid_off = owner.uid.is_some_and(|u| u != meta.uid());
    let gid_off = owner.gid.is_some_and(|g| g != meta.gid());
    if uid_off || gid_off {
        std::os::unix::fs::chown(path, owner.uid, owner.gid)?;
        changed = true;
    }
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        changed = true;
    }
    Ok(changed)
}

/// Creates a file's missing parent directories (mode 0755: the files in
/// them carry their own modes).
fn ensure_parent(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir),
        _ => Ok(()),
    }
}

/// Removes temporary files left in `dir` by mxkeys runs that were killed
/// (`.NAME.mxkeys-PID-N.tmp` whose process is gone). They were never
/// renamed into place, so no service reads them; they may hold a key.
pub fn clean_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let pid = name
            .strip_suffix(".tmp")
            .filter(|_| name.starts_with('.'))
            .and_then(|n| n.rsplit_once(".mxkeys-"))
            .and_then(|(_, rest)| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok());
        let Some(pid) = pid else { continue };
        let alive = i32::try_from(std::process::id()).is_ok_and(|me| me == pid)
            || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive && fs::remove_file(entry.path()).is_ok() {
            tracing::debug!(
                "removed {} left by an interrupted run",
                entry.path().display()
            );
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically: temporary file created 0600 in
/// the same directory, owner and mode set, data written and fsynced,
/// renamed over `path`, directory fsynced.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Ownership>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.mxkeys-{}-{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some(o) = owner
            && (o.uid.is_some() || o.gid.is_some())
        {
            std::os::unix::fs::fchown(&file, o.uid, o.gid)?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The certificates a slot's files hold now, leaf first: from the
/// combined file, else fullchain, else cert plus chain.
pub fn installed_certs(
    f: &TargetFiles,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    let read = |p: &Path| {
        let text = Zeroizing::new(crate::source::read_limited(
            p,
            crate::source::PEM_SIZE_LIMIT,
        )?);
        crate::cert::parse_pem_certs(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    if let Some(p) = f.combined.as_deref().or(f.fullchain.as_deref()) {
        return read(p);
    }
    if let Some(p) = f.cert.as_deref() {
        let mut certs = read(p)?;
        if let Some(c) = f.chain.as_deref() {
            certs.extend(read(c).unwrap_or_default());
        }
        return Ok(certs);
    }
    Err("the target writes no certificate file".to_owned())
}

/// The bundle a slot's files hold now (certificates and key).
pub fn installed_bundle(files: &TargetFiles) -> Result<Bundle, String> {
    let certs = installed_certs(files)?;
    let key_path = files
        .combined
        .as_deref()
        .or(files.key.as_deref())
        .ok_or("the target writes no key file")?;
    let text = Zeroizing::new(crate::source::read_limited(
        key_path,
        crate::source::PEM_SIZE_LIMIT,
    )?);
    let key = crate::cert::PrivateKey::from_pem(&text).map_err(|e| e.to_string())?;
    Ok(Bundle { certs, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", 0o600, None).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        write_atomic(&p, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporary_files_of_dead_runs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".key.pem.mxkeys-2147483646-0.tmp");
        let mine = dir
            .path()
            .join(format!(".key.pem.mxkeys-{}-7.tmp", std::process::id()));
        let other = dir.path().join(".not-ours.tmp");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        clean_stale_temps(dir.path());
        assert!(!dead.exists());
        assert!(mine.exists() && other.exists());
    }

    #[test]
    fn a_failed_write_restores_files_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("key.pem");
        fs::write(&good, b"old key").unwrap();
        // A directory where the file belongs: the rename cannot replace it.
        let blocked = dir.path().join("fullchain.pem");
        fs::create_dir(blocked.join("x")).ok();
        fs::create_dir_all(blocked.join("x")).unwrap();
        let planned = vec![
            Planned {
                role: FileRole::Key,
                path: good.clone(),
                bytes: Zeroizing::new(b"new key".to_vec()),
                mode: 0o600,
            },
            Planned {
                role: FileRole::Fullchain,
                path: blocked.clone(),
                bytes: Zeroizing::new(b"chain".to_vec()),
                mode: 0o644,
            },
        ];
        let e = apply(&planned, Ownership::default()).unwrap_err();
        assert!(e.contains("fullchain"), "{e}");
        assert_eq!(fs::read(&good).unwrap(), b"old key");
    }
}

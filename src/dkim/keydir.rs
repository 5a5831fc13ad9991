//! Key directories by descriptor. The rule: KEY_DIR belongs to root and
//! only root writes it; mxkeys never changes its owner. `KEY_DIR/DOMAIN`
//! may belong to the signer's user (`key_owner`/`key_group`), so nothing
//! in it is trusted by path: KEY_DIR is opened with O_NOFOLLOW and
//! checked, the domain directory is created with mkdirat and opened with
//! openat(O_DIRECTORY|O_NOFOLLOW) relative to it, its owner and mode are
//! set with fchown/fchmod on that descriptor, and every key file is
//! created (O_CREAT|O_EXCL|O_NOFOLLOW, final mode), renamed, read
//! (O_NOFOLLOW, regular files only, size-capped) and removed relative to
//! it. A symlink (or anything not a directory) at `KEY_DIR/DOMAIN` is an
//! error naming the path, and nothing outside KEY_DIR changes.
//!
//! This is the effect layer; [`refusal`] is the pure decision on KEY_DIR's
//! owner and mode.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fsync, unlinkat};
use zeroize::Zeroizing;

use crate::install::{Ownership, is_stale_temp, temp_name};

/// Largest key file mxkeys reads.
const KEY_SIZE_LIMIT: u64 = 64 << 10;

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A key file or key directory that could not be used, naming it.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    /// The system refused an operation on `path`.
    #[error("{}: {}", .path.display(), crate::source::io_reason(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Unlinking a key file failed.
    #[error("cannot remove {}: {}", .path.display(), crate::source::io_reason(.source))]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: a symlink or not a directory: refused (key directories are never followed through links)", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: not a KEY_DIR/DOMAIN/FILE path", .0.display())]
    NotAKeyPath(PathBuf),
    #[error("{}: a symlink: refused", .0.display())]
    Symlink(PathBuf),
    #[error("{}: not a regular file: refused", .0.display())]
    NotRegular(PathBuf),
    #[error("{}: larger than a key file", .0.display())]
    TooLarge(PathBuf),
    #[error("{}: not text", .0.display())]
    NotText(PathBuf),
    /// KEY_DIR may be written by someone other than root.
    #[error(transparent)]
    Unsafe(#[from] UnsafeKeyDir),
}

/// A KEY_DIR someone other than root (or mxkeys' own user) may write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{p}: key_dir must belong to root and be writable by root only, else the signer's user can swap a key directory for a link (owner uid {uid}, mode {mode:04o}); fix: chown {owner} {p}; chmod 755 {p}", p = .path.display(), mode = .mode & 0o7777, owner = if *.me == 0 { "root:root".to_owned() } else { .me.to_string() })]
pub struct UnsafeKeyDir {
    pub path: PathBuf,
    pub uid: u32,
    pub mode: u32,
    pub me: u32,
}

fn reason(path: &Path, e: Errno) -> KeyDirError {
    KeyDirError::Io {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> KeyDirError + '_ {
    move |source| KeyDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Why a KEY_DIR owned by `uid` with `mode` is refused, or `None`. Pure.
/// `me` is mxkeys' own user (root in production), which may own it too.
pub fn refusal(path: &Path, uid: u32, mode: u32, me: u32) -> Option<UnsafeKeyDir> {
    if (uid == 0 || uid == me) && mode & 0o022 == 0 {
        return None;
    }
    Some(UnsafeKeyDir {
        path: path.to_owned(),
        uid,
        mode,
        me,
    })
}

/// Opens KEY_DIR (created root-owned, mode 0755, when absent; the
/// directories above it are root's) and refuses it unless only root can
/// write it.
pub fn open_key_dir(key_dir: &Path) -> Result<OwnedFd, KeyDirError> {
    let fd = match open(key_dir, DIR_FLAGS, Mode::empty()) {
        Err(Errno::ENOENT) => {
            if let Some(parent) = key_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io(parent))?;
            }
            let created = match std::fs::DirBuilder::new().mode(0o755).create(key_dir) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(io(key_dir)(e)),
            };
            let fd = open(key_dir, DIR_FLAGS, Mode::empty()).map_err(|e| not_dir(key_dir, e))?;
            if created {
                // The umask may have taken bits the signer needs (x).
                fchmod(&fd, Mode::from_bits_truncate(0o755)).map_err(|e| reason(key_dir, e))?;
            }
            fd
        }
        r => r.map_err(|e| not_dir(key_dir, e))?,
    };
    let st = fstat(&fd).map_err(|e| reason(key_dir, e))?;
    if let Some(why) = refusal(key_dir, st.st_uid, st.st_mode, Uid::effective().as_raw()) {
        return Err(why.into());
    }
    Ok(fd)
}

fn not_dir(path: &Path, e: Errno) -> KeyDirError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => KeyDirError::NotADirectory(path.to_owned()),
        e => reason(path, e),
    }
}

/// `path` split into KEY_DIR, the domain directory's name and the file's
/// name: key files are `KEY_DIR/DOMAIN/NAME`.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr, &std::ffi::OsStr), KeyDirError> {
    let bad = || KeyDirError::NotAKeyPath(path.to_owned());
    let name = path.file_name().ok_or_else(bad)?;
    let dir = path.parent().ok_or_else(bad)?;
    let domain = dir.file_name().ok_or_else(bad)?;
    let key_dir = dir.parent().ok_or_else(bad)?;
    Ok((key_dir, domain, name))
}

/// The domain directory of a key file, opened by descriptor.
struct DomainDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl DomainDir {
    /// Opens `KEY_DIR/DOMAIN`; `None` when it does not exist.
    fn open(key_dir: &Path, domain: &std::ffi::OsStr) -> Result<Option<DomainDir>, KeyDirError> {
        let kd = open_key_dir(key_dir)?;
        let path = key_dir.join(domain);
        match openat(&kd, domain, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(DomainDir { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(not_dir(&path, e)),
        }
    }

    /// Creates (mode 0700) and opens `KEY_DIR/DOMAIN`. With `key_owner` or
    /// `key_group` the signer must enter it: it then belongs to them, mode
    /// 0700 for an owner alone, 0750 with a group.
    fn create(
        key_dir: &Path,
        domain: &std::ffi::OsStr,
        owner: Ownership,
    ) -> Result<DomainDir, KeyDirError> {
        let kd = open_key_dir(key_dir)?;
        let path = key_dir.join(domain);
        match mkdirat(&kd, domain, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(reason(&path, e)),
        }
        let fd = openat(&kd, domain, DIR_FLAGS, Mode::empty()).map_err(|e| not_dir(&path, e))?;
        if owner.uid.is_some() || owner.gid.is_some() {
            let mode = if owner.gid.is_some() { 0o750 } else { 0o700 };
            fchown(
                &fd,
                owner.uid.map(Uid::from_raw),
                owner.gid.map(Gid::from_raw),
            )
            .map_err(|e| reason(&path, e))?;
            fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| reason(&path, e))?;
        }
        Ok(DomainDir { fd, path })
    }
}

/// Writes a key file `KEY_DIR/DOMAIN/NAME` atomically: a temporary file
/// created in the domain directory with its final mode, owner set, data
/// written and fsynced, renamed over NAME, directory fsynced.
pub fn write(path: &Path, bytes: &[u8], mode: u32, owner: Ownership) -> Result<(), KeyDirError> {
    let (key_dir, domain, name) = split(path)?;
    let dir = DomainDir::create(key_dir, domain, owner)?;
    let tmp = temp_name(name);
    let fail = |e: Errno| reason(path, e);
    let file_mode = Mode::from_bits_truncate(mode & 0o777);
    let fd = openat(
        &dir.fd,
        tmp.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        file_mode,
    )
    .map_err(fail)?;
    let result = (|| {
        if owner.uid.is_some() || owner.gid.is_some() {
            fchown(
                &fd,
                owner.uid.map(Uid::from_raw),
                owner.gid.map(Gid::from_raw),
            )
            .map_err(fail)?;
        }
        // The umask may have taken bits of the configured mode.
        fchmod(&fd, file_mode).map_err(fail)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes).map_err(io(path))?;
        fsync(&file).map_err(fail)?;
        drop(file);
        renameat(&dir.fd, tmp.as_str(), &dir.fd, name).map_err(fail)?;
        fsync(&dir.fd).map_err(|e| reason(&dir.path, e))
    })();
    if result.is_err() {
        let _ = unlinkat(&dir.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Reads a key file; `None` when it (or its directory) does not exist. A
/// symlink, FIFO, device or directory in its place is an error naming it.
pub fn read(path: &Path) -> Result<Option<Zeroizing<String>>, KeyDirError> {
    let (key_dir, domain, name) = split(path)?;
    let Some(dir) = DomainDir::open(key_dir, domain)? else {
        return Ok(None);
    };
    let fd = match openat(
        &dir.fd,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(KeyDirError::Symlink(path.to_owned())),
        Err(e) => return Err(reason(path, e)),
    };
    let st = fstat(&fd).map_err(|e| reason(path, e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(KeyDirError::NotRegular(path.to_owned()));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::from(fd)
        .take(KEY_SIZE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > KEY_SIZE_LIMIT {
        return Err(KeyDirError::TooLarge(path.to_owned()));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| KeyDirError::NotText(path.to_owned()))?
        .to_owned();
    Ok(Some(Zeroizing::new(text)))
}

/// Removes a key file (gone already is fine).
pub fn remove(path: &Path) -> Result<(), KeyDirError> {
    let (key_dir, domain, name) = split(path)?;
    let Some(dir) = DomainDir::open(key_dir, domain)? else {
        return Ok(());
    };
    match unlinkat(&dir.fd, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(KeyDirError::Remove {
                path: path.to_owned(),
                source: std::io::Error::from(e),
            });
        }
    }
    fsync(&dir.fd).map_err(|e| reason(&dir.path, e))
}

/// Removes temporary files killed runs left in `KEY_DIR/DOMAIN`, through
/// its descriptor (a link in its place is left alone).
pub fn clean_temps(dir: &Path) {
    let (Some(key_dir), Some(domain)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let Ok(Some(d)) = DomainDir::open(key_dir, domain) else {
        return;
    };
    let listing = PathBuf::from(format!("/proc/self/fd/{}", d.fd.as_fd().as_raw_fd()));
    let Ok(entries) = std::fs::read_dir(listing) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // A [`temp_name`] as written by [`write`].
        if is_stale_temp(name) && unlinkat(&d.fd, name, UnlinkatFlags::NoRemoveDir).is_ok() {
            tracing::debug!(
                "removed {} left by an interrupted run",
                d.path.join(name).display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_dir_is_refused_unless_only_root_writes_it() {
        let p = Path::new("/etc/dkimkeys");
        for (uid, mode, me, refused) in [
            (0, 0o40755, 0, false),
            (0, 0o40700, 0, false),
            (0, 0o40711, 0, false),
            (0, 0o40775, 0, true),
            (0, 0o40757, 0, true),
            (0, 0o41777, 0, true),
            (110, 0o40700, 0, true),
            (110, 0o40755, 0, true),
            (1000, 0o40755, 1000, false),
            (110, 0o40755, 1000, true),
        ] {
            assert_eq!(
                refusal(p, uid, mode, me).is_some(),
                refused,
                "uid {uid} mode {mode:o} me {me}"
            );
        }
        let line = refusal(p, 110, 0o40700, 0).unwrap().to_string();
        assert!(
            line.contains("chown root:root /etc/dkimkeys; chmod 755 /etc/dkimkeys"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_killed_runs_temporary_key_file_is_removed_and_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let key_dir = root.path().join("keys");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&key_dir)
            .unwrap();
        let dir = key_dir.join("example.test");
        std::fs::create_dir(&dir).unwrap();
        let dead = dir.join(".sel.private.mxkeys-2147483646-0.tmp");
        let mine = dir.join(temp_name("sel.private".as_ref()));
        let key = dir.join("sel.private");
        let other = dir.join(".not-ours.tmp");
        for p in [&dead, &mine, &key, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        clean_temps(&dir);
        assert!(!dead.exists());
        assert!(mine.exists() && key.exists() && other.exists());
    }
}

//! Installing: turning a chosen bundle into a target's files.
//!
//! Rule: a target's directory is opened once, without following a symlink
//! (O_DIRECTORY|O_NOFOLLOW), and every read, temporary file, owner and mode
//! change, rename, undo and fsync is done relative to that descriptor, so
//! whoever can write the directory cannot redirect mxkeys (running as root)
//! to a file elsewhere. The old file is read only when it is a regular file
//! (opened with O_NOFOLLOW|O_NONBLOCK, then checked with fstat) no larger
//! than [`TARGET_SIZE_LIMIT`]; a symlink, FIFO, device or directory at a
//! target path is an error naming the path, found before anything is written.
//!
//! Each file is written as a temporary file in the same directory (created
//! O_EXCL|O_NOFOLLOW with its final mode), given its final owner and mode,
//! written, fsynced, renamed over the old file, and the directory fsynced:
//! a reader sees the old file or the new one, never half of one, and a key
//! is never readable by others. Files are written only when what they hold
//! differs: the same certificates and key in another PEM encoding or
//! layout are no difference ([`same_content`]). If writing one file of a target fails, the files of that target
//! already replaced (including one whose rename succeeded but whose
//! directory fsync failed) are put back, so a server never sees a key from
//! one certificate and a chain from another.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat, renameat};
use nix::sys::stat::Mode;
use zeroize::Zeroizing;

use crate::cert::Bundle;
use crate::config::{FileRole, Slot, Target, TargetFiles};

/// Largest target file mxkeys reads back (to compare it, and to keep it
/// for the undo). A larger file at a target path is an error.
const TARGET_SIZE_LIMIT: u64 = crate::source::PEM_SIZE_LIMIT;

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

/// Why a target's files were not written (those already replaced were
/// restored): the file, its role and the reason.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// The file's directory could not be made or opened.
    #[error("{} ({}): {}", .path.display(), .role.as_str(), crate::source::io_reason(.source))]
    Directory {
        path: PathBuf,
        role: FileRole,
        #[source]
        source: io::Error,
    },
    /// The file in place could not be read before the write.
    #[error("{} ({}): cannot read: {}", .path.display(), .role.as_str(), crate::source::io_reason(.source))]
    ReadOld {
        path: PathBuf,
        role: FileRole,
        #[source]
        source: io::Error,
    },
    #[error("{} ({}): cannot write: {}", .path.display(), .role.as_str(), crate::source::io_reason(.source))]
    Write {
        path: PathBuf,
        role: FileRole,
        #[source]
        source: io::Error,
    },
}

/// Files an [`Undo`] could not put back: each file and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot restore {}", .0.iter().map(|(p, e)| format!("{}: {}", p.display(), crate::source::io_reason(e))).collect::<Vec<_>>().join("; "))]
pub struct RestoreError(pub Vec<(PathBuf, io::Error)>);

/// Why the certificate or key a slot's files hold now could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    /// An installed file could not be read (the reason only).
    #[error("{}", crate::source::io_reason(.0))]
    Read(#[source] io::Error),
    #[error("not found")]
    NotFound,
    #[error("{}: {source}", .path.display())]
    Certificates {
        path: PathBuf,
        #[source]
        source: crate::cert::CertError,
    },
    #[error("the target writes no certificate file")]
    NoCertificateFile,
    #[error("the target writes no key file")]
    NoKeyFile,
    #[error("{0}")]
    Key(#[source] crate::cert::CertError),
    /// The files hold no certificate at all.
    #[error("no certificate")]
    NoCertificate,
    /// The leaf does not parse.
    #[error("{0}")]
    Leaf(#[source] crate::cert::CertError),
}

/// An `owner` or `group` name that names no account.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("owner {name:?}: {source}")]
    LookUpUser {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("owner {0:?}: no such user")]
    NoSuchUser(String),
    #[error("group {name:?}: {source}")]
    LookUpGroup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("group {0:?}: no such group")]
    NoSuchGroup(String),
}

/// Resolves a target's `owner` and `group` names (or numbers) to ids.
pub fn ownership(target: &Target) -> Result<Ownership, OwnershipError> {
    let uid = match &target.owner {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::User::from_name(name)
                .map_err(|source| OwnershipError::LookUpUser {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| OwnershipError::NoSuchUser(name.clone()))?
                .uid
                .as_raw(),
        }),
    };
    let gid = match &target.group {
        None => None,
        Some(name) => Some(match name.parse::<u32>() {
            Ok(n) => n,
            Err(_) => nix::unistd::Group::from_name(name)
                .map_err(|source| OwnershipError::LookUpGroup {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| OwnershipError::NoSuchGroup(name.clone()))?
                .gid
                .as_raw(),
        }),
    };
    Ok(Ownership { uid, gid })
}

/// A directory mxkeys writes into, opened once. Every operation on its
/// files goes through this descriptor, never through the path again.
#[derive(Debug)]
pub(crate) struct TargetDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A file's content and metadata before mxkeys replaced it, read from a
/// regular file through a descriptor that stays open (its owner and mode
/// are fixed through that same descriptor).
struct Old {
    file: File,
    bytes: Zeroizing<Vec<u8>>,
    mode: u32,
}

/// Why writing a file failed, and whether it was already renamed into
/// place (then it must be undone like a file written successfully).
#[derive(Debug)]
pub(crate) struct WriteError {
    pub error: io::Error,
    pub renamed: bool,
}

impl From<io::Error> for WriteError {
    fn from(error: io::Error) -> Self {
        WriteError {
            error,
            renamed: false,
        }
    }
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// What a non-regular file is, for messages.
fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

impl TargetDir {
    /// Opens `dir` as a directory, refusing a symlink at its last component
    /// (the error says so).
    pub fn open(dir: &Path) -> io::Result<TargetDir> {
        Self::open_with(dir, OFlag::O_NOFOLLOW)
    }

    /// Opens `dir` following symlinks: for mxkeys' own directories
    /// (state_dir, webroot) whose path the administrator chose, not for
    /// targets.
    pub(crate) fn open_following(dir: &Path) -> io::Result<TargetDir> {
        Self::open_with(dir, OFlag::empty())
    }

    fn open_with(dir: &Path, extra: OFlag) -> io::Result<TargetDir> {
        let path = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | extra;
        match openat(AT_FDCWD, path, flags, Mode::empty()) {
            Ok(fd) => Ok(TargetDir {
                fd,
                path: path.to_owned(),
            }),
            // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR (or
            // ELOOP): say which.
            Err(Errno::ELOOP | Errno::ENOTDIR)
                if extra.contains(OFlag::O_NOFOLLOW)
                    && fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                Err(refused(format!(
                    "directory {} is a symbolic link; configure the directory it points to",
                    path.display()
                )))
            }
            Err(Errno::ENOTDIR) => Err(refused(format!("{} is not a directory", path.display()))),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// The directory `name` in this one, opened O_DIRECTORY|O_NOFOLLOW, so
    /// a symlink planted in its place is refused (the error says so);
    /// with `public`, created 0755 when missing and given the r-x bits for
    /// group and others it lacks (never narrowed), for a web server
    /// running as another user. `None`: it does not exist (only without
    /// `public`).
    pub(crate) fn subdir(&self, name: &str, public: bool) -> io::Result<Option<TargetDir>> {
        let path = self.path.join(name);
        if public {
            match nix::sys::stat::mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !public => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(refused(format!(
                    "{} is not a directory (a symbolic link or a file in its place)",
                    path.display()
                )));
            }
            Err(e) => return Err(io::Error::from(e)),
        };
        let dir = File::from(fd);
        if public {
            let mode = dir.metadata()?.mode() & 0o7777;
            if mode & 0o755 != 0o755 {
                dir.set_permissions(fs::Permissions::from_mode(mode | 0o755))?;
            }
        }
        Ok(Some(TargetDir {
            fd: OwnedFd::from(dir),
            path,
        }))
    }

    /// The bytes of the regular file `name` within `limit` (`None`: there
    /// is none), read as [`Self::read_old`] reads: never following a link,
    /// never blocking on a FIFO.
    pub(crate) fn read_small(&self, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .read_old(OsStr::new(name), limit)?
            .map(|old| old.bytes.to_vec()))
    }

    /// This directory's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file `name` if it is a regular file within `limit` bytes
    /// (`None`: there is none). A symlink, FIFO, device or directory is an
    /// error; opening never blocks and never follows a link.
    fn read_old(&self, name: &OsStr, limit: u64) -> io::Result<Option<Old>> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(refused(
                    "is a symbolic link, expected a regular file".to_owned(),
                ));
            }
            Err(Errno::ENXIO) => {
                return Err(refused("is a socket, expected a regular file".to_owned()));
            }
            Err(e) => return Err(io::Error::from(e)),
        };
        let file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(refused(format!(
                "is {}, expected a regular file",
                kind_of(&meta)
            )));
        }
        if meta.len() > limit {
            return Err(refused(format!(
                "too large: {} bytes, the limit is {limit}",
                meta.len()
            )));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        (&file).take(limit + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(refused(format!("grew past the limit of {limit} bytes")));
        }
        Ok(Some(Old {
            file,
            bytes,
            mode: meta.mode() & 0o7777,
        }))
    }

    /// Replaces `name` with `bytes` atomically: a temporary file created
    /// O_EXCL|O_NOFOLLOW in this directory with the final mode, owner and
    /// mode set on its descriptor, data written and fsynced, renamed over
    /// `name`, directory fsynced. `renamed` in the error tells whether
    /// `name` was already replaced.
    pub fn write(
        &self,
        name: &OsStr,
        bytes: &[u8],
        mode: u32,
        owner: Option<Ownership>,
    ) -> Result<(), WriteError> {
        let tmp = OsString::from(temp_name(name));
        let created = (|| -> io::Result<()> {
            let fd = openat(
                self.fd.as_fd(),
                tmp.as_os_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode & 0o777),
            )?;
            let mut file = File::from(fd);
            if let Some(o) = owner
                && (o.uid.is_some() || o.gid.is_some())
            {
                std::os::unix::fs::fchown(&file, o.uid, o.gid)?;
            }
            // Exactly `mode`, whatever the umask took away.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            renameat(self.fd.as_fd(), tmp.as_os_str(), self.fd.as_fd(), name)?;
            Ok(())
        })();
        if let Err(error) = created {
            let _ = self.remove(&tmp);
            return Err(WriteError {
                error,
                renamed: false,
            });
        }
        self.sync().map_err(|error| WriteError {
            error,
            renamed: true,
        })
    }

    /// Removes the entry `name` of this directory (not a directory).
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        )
        .map_err(io::Error::from)
    }

    /// Fsyncs the directory (so a rename in it is durable).
    fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if faults::take_dir_fsync_failure() {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        nix::unistd::fsync(self.fd.as_fd()).map_err(io::Error::from)
    }
}

/// Test-only fault injection: make the next directory fsyncs fail.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;

    thread_local! {
        /// Fsyncs to let succeed before one fails (`None`: never fail).
        static FAIL_AFTER: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// The directory fsync after `ok` successful ones fails (once).
    pub fn fail_dir_fsync_after(ok: usize) {
        FAIL_AFTER.with(|c| c.set(Some(ok)));
    }

    pub(super) fn take_dir_fsync_failure() -> bool {
        FAIL_AFTER.with(|c| match c.get() {
            Some(0) => {
                c.set(None);
                true
            }
            Some(n) => {
                c.set(Some(n - 1));
                false
            }
            None => false,
        })
    }
}

/// The directory and file name of a target path.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| refused("names no file".to_owned()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Who besides root and the target's owner can write a target directory,
/// as a phrase (`None`: no one). Pure: from the directory's owner, group
/// and mode.
fn dir_exposure(uid: u32, gid: u32, mode: u32, owner: Ownership) -> Option<String> {
    if mode & 0o002 != 0 {
        Some("is world-writable".to_owned())
    } else if mode & 0o020 != 0 && gid != 0 {
        Some(format!("is writable by group {gid}"))
    } else if mode & 0o200 != 0 && uid != 0 && owner.uid != Some(uid) {
        Some(format!("is owned and writable by user {uid}"))
    } else {
        None
    }
}

/// Checks that no user other than root and the target's owner can write
/// the existing directories of the targets' files. Returns one line per
/// exposed directory (`chmod` advice included); the caller warns, or
/// refuses the configuration for a target with `strict_permissions`.
pub fn exposed_target_dirs(targets: &[Target]) -> Vec<(bool, String)> {
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in targets {
        let owner = ownership(t).unwrap_or_default();
        for slot in &t.slots {
            for (_, path) in slot.files.iter() {
                let Ok((dir, _)) = split(path) else { continue };
                if !seen.insert((t.name.clone(), dir.to_owned())) {
                    continue;
                }
                // A symlinked directory is refused when installing, with
                // its own message; a link's own mode says nothing.
                let Ok(meta) = fs::symlink_metadata(dir) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    continue;
                }
                if let Some(why) = dir_exposure(meta.uid(), meta.gid(), meta.mode(), owner) {
                    out.push((
                        t.strict_permissions,
                        format!(
                            "target {}: directory {} {why}: another user could put a symlink \
                             or FIFO where mxkeys writes; make it writable by root only \
                             (chown root {1}; chmod go-w {1})",
                            t.name,
                            dir.display()
                        ),
                    ));
                }
            }
        }
    }
    out
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

/// One replaced file: its directory (by descriptor), name, and what it held.
struct UndoEntry {
    dir: Arc<TargetDir>,
    name: OsString,
    path: PathBuf,
    old: Previous,
}

/// The previous content of files an install replaced, to restore them when
/// the service refuses the new ones. Never printed (it may hold a key).
#[derive(Default)]
pub struct Undo {
    entries: Vec<UndoEntry>,
    owner: Ownership,
}

impl std::fmt::Debug for Undo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let paths: Vec<_> = self.entries.iter().map(|e| &e.path).collect();
        f.debug_struct("Undo").field("paths", &paths).finish()
    }
}

impl Undo {
    /// Puts every replaced file back (a file that did not exist is
    /// removed), last written first, through the directory descriptors
    /// the install used. Errors name the files.
    pub fn restore(&self) -> Result<(), RestoreError> {
        let mut failed = Vec::new();
        for e in self.entries.iter().rev() {
            let result = match &e.old {
                Some((bytes, mode)) => e
                    .dir
                    .write(&e.name, bytes, *mode, Some(self.owner))
                    .map_err(|w| w.error),
                None => e.dir.remove(&e.name),
            };
            if let Err(err) = result {
                failed.push((e.path.clone(), err));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RestoreError(failed))
        }
    }

    /// Records a file as replaced. Called for every write that reached
    /// the rename, failed or not (see [`must_undo`]).
    fn push(&mut self, dir: &Arc<TargetDir>, name: &OsStr, path: &Path, old: Previous) {
        self.entries.push(UndoEntry {
            dir: dir.clone(),
            name: name.to_owned(),
            path: path.to_owned(),
            old,
        });
    }
}

/// Whether a write's result leaves the file replaced, so that it belongs in
/// the undo list: on success, and on a failure after the rename (a failed
/// directory fsync). Pure.
fn must_undo(result: &Result<(), WriteError>) -> bool {
    match result {
        Ok(()) => true,
        Err(e) => e.renamed,
    }
}

/// Whether a file's content differs from `bytes` by what it holds
/// ([`same_content`]; a missing or unreadable file, or one mxkeys would
/// refuse, differs). Never follows a symlink and
/// never blocks on a FIFO.
pub fn differs(path: &Path, bytes: &[u8]) -> bool {
    let Ok((dir, name)) = split(path) else {
        return true;
    };
    match TargetDir::open(dir).and_then(|d| d.read_old(name, TARGET_SIZE_LIMIT)) {
        Ok(Some(old)) => !same_content(&old.bytes, bytes),
        _ => true,
    }
}

/// Whether a target file holding `old` already holds what `new` (the PEM
/// text mxkeys would write) says: the same blocks in the same order,
/// certificates byte for byte (DER) and private keys by the key itself,
/// whatever its encoding (PKCS#1, SEC1, PKCS#8), line length, line endings
/// or trailing newline. A host adopted as it is (a combined file made with
/// `cat privkey.pem fullchain.pem`, a key converted by `openssl pkey`) is
/// then up to date: not rewritten, not reloaded. Text outside the blocks
/// is ignored, as servers ignore it; damaged armor, a block of another
/// kind, an encrypted key or any other difference is a difference.
fn same_content(old: &[u8], new: &[u8]) -> bool {
    if old == new {
        return true;
    }
    match (pem_blocks(old), pem_blocks(new)) {
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter().zip(&b).all(|pair| match pair {
                    (Block::Cert(x), Block::Cert(y)) => x == y,
                    (Block::Key(x), Block::Key(y)) => x.same_key(y),
                    _ => false,
                })
        }
        _ => false,
    }
}

/// One PEM block of a target file, as a server reads it.
enum Block {
    Cert(Vec<u8>),
    Key(crate::cert::PrivateKey),
}

/// The certificate and key blocks of a PEM text, in order; `None` when
/// it holds none, its armor is damaged or it holds a block of any other
/// kind (one the reader would skip included).
fn pem_blocks(text: &[u8]) -> Option<Vec<Block>> {
    use rustls_pki_types::pem::{PemObject as _, SectionKind};
    // The armor check of the certificate reader (a text without
    // certificates passes it too).
    match crate::cert::parse_pem_certs(text) {
        Ok(_) | Err(crate::cert::CertError::NoPemCertificate) => {}
        Err(_) => return None,
    }
    let mut blocks = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
        let (kind, der) = section.ok()?;
        blocks.push(match kind {
            SectionKind::Certificate => Block::Cert(der),
            kind => Block::Key(crate::cert::PrivateKey::from_section(kind, der)?),
        });
    }
    let begins = text
        .split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"-----BEGIN "))
        .count();
    (!blocks.is_empty() && begins == blocks.len()).then_some(blocks)
}

/// A file's content and mode before mxkeys replaced it (`None`: it did not exist).
type Previous = Option<(Zeroizing<Vec<u8>>, u32)>;

/// Opens (creating when missing) the directory of each planned file, once
/// per directory.
fn open_dirs(planned: &[Planned]) -> Result<Vec<(Arc<TargetDir>, &OsStr)>, InstallError> {
    let mut opened: Vec<Arc<TargetDir>> = Vec::new();
    let mut out = Vec::new();
    for p in planned {
        let fail = |source| InstallError::Directory {
            path: p.path.clone(),
            role: p.role,
            source,
        };
        let (dir, name) = split(&p.path).map_err(fail)?;
        let d = match opened.iter().find(|d| d.path == dir) {
            Some(d) => d.clone(),
            None => {
                let d = ensure_dir(dir)
                    .and_then(|()| TargetDir::open(dir))
                    .map(Arc::new)
                    .map_err(fail)?;
                opened.push(d.clone());
                d
            }
        };
        out.push((d, name));
    }
    Ok(out)
}

/// Writes a target's planned files. Every old file is checked (regular,
/// within the size cap) before anything is written; on a later failure,
/// files already replaced are restored (or removed if they did not exist)
/// and the error names the file.
pub fn apply(planned: &[Planned], owner: Ownership) -> Result<Outcome, InstallError> {
    let mut outcome = Outcome {
        undo: Undo {
            entries: Vec::new(),
            owner,
        },
        ..Outcome::default()
    };
    let dirs = open_dirs(planned)?;
    let mut olds = Vec::with_capacity(planned.len());
    for (p, (dir, name)) in planned.iter().zip(&dirs) {
        let old =
            dir.read_old(name, TARGET_SIZE_LIMIT)
                .map_err(|source| InstallError::ReadOld {
                    path: p.path.clone(),
                    role: p.role,
                    source,
                })?;
        olds.push(old);
    }
    for ((p, (dir, name)), old) in planned.iter().zip(&dirs).zip(olds) {
        if let Some(o) = &old
            && same_content(&o.bytes, &p.bytes)
        {
            match fix_metadata(&o.file, p.mode, owner) {
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
        let previous: Previous = old.map(|o| (o.bytes, o.mode));
        let written = dir.write(name, &p.bytes, p.mode, Some(owner));
        if must_undo(&written) {
            outcome.undo.push(dir, name, &p.path, previous);
        }
        if let Err(e) = written {
            restore_or_log(&outcome.undo);
            return Err(InstallError::Write {
                path: p.path.clone(),
                role: p.role,
                source: e.error,
            });
        }
        outcome.changed.push(p.path.clone());
    }
    Ok(outcome)
}

fn restore_or_log(undo: &Undo) {
    if let Err(e) = undo.restore() {
        tracing::error!("{e}");
    }
}

/// Sets mode and owner of an open file when they differ. Returns whether
/// anything changed.
fn fix_metadata(file: &File, mode: u32, owner: Ownership) -> io::Result<bool> {
    let meta = file.metadata()?;
    let mut changed = false;
    let uid_off = owner.uid.is_some_and(|u| u != meta.uid());
    let gid_off = owner.gid.is_some_and(|g| g != meta.gid());
    if uid_off || gid_off {
        std::os::unix::fs::fchown(file, owner.uid, owner.gid)?;
        changed = true;
    }
    if meta.mode() & 0o7777 != mode {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        changed = true;
    }
    Ok(changed)
}

/// Creates a missing directory and its parents (mode 0755: the files in
/// them carry their own modes).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.as_os_str().is_empty() || fs::symlink_metadata(dir).is_ok() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

/// Removes temporary files left in `dir` by mxkeys runs that were killed
/// (`.NAME.mxkeys-PID-N.tmp` whose process is gone). They were never
/// renamed into place, so no service reads them; they may hold a key.
/// Removal goes through the directory's descriptor (a symlinked `dir` is
/// left alone).
pub fn clean_stale_temps(dir: &Path) {
    let Ok(d) = TargetDir::open(dir) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if is_stale_temp(text) && d.remove(&name).is_ok() {
            tracing::debug!(
                "removed {} left by an interrupted run",
                entry.path().display()
            );
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name a file `name` is written under before its rename
/// into place, in the same directory: `.NAME.mxkeys-PID-N.tmp`, unique in
/// this process (N counts up) and naming it (PID), so that
/// [`is_stale_temp`] can tell a killed run's leftovers.
pub(crate) fn temp_name(name: &OsStr) -> String {
    format!(
        ".{}.mxkeys-{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `name` is a [`temp_name`] whose process is gone (a run killed
/// before its rename): never one of this process, nor of a live one.
pub(crate) fn is_stale_temp(name: &str) -> bool {
    let pid = name
        .strip_suffix(".tmp")
        .filter(|_| name.starts_with('.'))
        .and_then(|n| n.rsplit_once(".mxkeys-"))
        .and_then(|(_, rest)| rest.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<i32>().ok());
    let Some(pid) = pid else { return false };
    let alive = i32::try_from(std::process::id()).is_ok_and(|me| me == pid)
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    !alive
}

/// Replaces `path` with `bytes` atomically (see [`TargetDir::write`]), for
/// mxkeys' own files (state, ACME account and orders, DKIM keys): the
/// directory's path is followed as configured, the file itself never.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<Ownership>,
) -> io::Result<()> {
    let (dir, name) = split(path)?;
    TargetDir::open_following(dir)?
        .write(name, bytes, mode, owner)
        .map_err(|e| e.error)
}

/// The certificates a slot's files hold now, leaf first: from the
/// combined file, else fullchain, else cert plus chain.
pub fn installed_certs(
    f: &TargetFiles,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, InstalledError> {
    let read = |p: &Path| {
        let text = read_installed(p)?;
        crate::cert::parse_pem_certs(&text).map_err(|source| InstalledError::Certificates {
            path: p.to_owned(),
            source,
        })
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
    Err(InstalledError::NoCertificateFile)
}

/// The bundle a slot's files hold now (certificates and key).
pub fn installed_bundle(files: &TargetFiles) -> Result<Bundle, InstalledError> {
    let certs = installed_certs(files)?;
    let key_path = files
        .combined
        .as_deref()
        .or(files.key.as_deref())
        .ok_or(InstalledError::NoKeyFile)?;
    let text = read_installed(key_path)?;
    let key = crate::cert::PrivateKey::from_pem(&text).map_err(InstalledError::Key)?;
    Ok(Bundle { certs, key })
}

/// An installed file's bytes, read like an old file before a write:
/// through its directory's descriptor, only a regular file, within
/// [`crate::source::PEM_SIZE_LIMIT`]. The reason is one line.
fn read_installed(p: &Path) -> Result<Zeroizing<Vec<u8>>, InstalledError> {
    let (dir, name) = split(p).map_err(InstalledError::Read)?;
    match TargetDir::open(dir).and_then(|d| d.read_old(name, crate::source::PEM_SIZE_LIMIT)) {
        Ok(Some(old)) => Ok(old.bytes),
        Ok(None) => Err(InstalledError::NotFound),
        Err(e) => Err(InstalledError::Read(e)),
    }
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

    /// A P-256 key as PKCS#8 and as SEC1 (RFC 5915) DER.
    fn ec_key() -> (Vec<u8>, Vec<u8>) {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING as P256, EcdsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&P256, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&P256, pkcs8.as_ref()).unwrap();
        let sec1 = pair.private_key().as_der().unwrap();
        (pkcs8.as_ref().to_vec(), sec1.as_ref().to_vec())
    }

    #[test]
    fn a_file_holding_the_same_certificates_and_key_in_another_encoding_is_the_same() {
        use crate::cert::pem_encode;
        let (pkcs8, sec1) = ec_key();
        let (other, _) = ec_key();
        let leaf = pem_encode("CERTIFICATE", b"the leaf's DER").to_string();
        let inter = pem_encode("CERTIFICATE", b"the intermediate's DER").to_string();
        let key8 = pem_encode("PRIVATE KEY", &pkcs8).to_string();
        let key1 = pem_encode("EC PRIVATE KEY", &sec1).to_string();
        let other8 = pem_encode("PRIVATE KEY", &other).to_string();
        // What mxkeys writes for a combined file.
        let written = format!("{key8}{leaf}{inter}");
        let params =
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";
        let cases: Vec<(&str, String, bool)> = vec![
            ("the same bytes", written.clone(), true),
            ("the key in SEC1", format!("{key1}{leaf}{inter}"), true),
            ("CRLF line ends", written.replace('\n', "\r\n"), true),
            ("no final newline", written.trim_end().to_owned(), true),
            (
                "text around the blocks",
                format!("subject=CN = mail\n{key1}\n{leaf}{inter}\n\n"),
                true,
            ),
            ("another key", format!("{other8}{leaf}{inter}"), false),
            ("the chain reversed", format!("{key8}{inter}{leaf}"), false),
            ("no intermediate", format!("{key8}{leaf}"), false),
            (
                "an extra certificate",
                format!("{key8}{leaf}{inter}{inter}"),
                false,
            ),
            ("the key last", format!("{leaf}{inter}{key8}"), false),
            (
                "a block of another kind",
                format!("{params}{key1}{leaf}{inter}"),
                false,
            ),
            (
                "damaged armor",
                written.replacen("BEGIN CERTIFICATE", "BEGHN CERTIFICATE", 1),
                false,
            ),
            ("empty", String::new(), false),
        ];
        // Texts without PEM blocks are the same only byte for byte.
        assert!(!same_content(b"old key", b"new key"));
        for (what, old, same) in cases {
            assert_eq!(
                same_content(old.as_bytes(), written.as_bytes()),
                same,
                "{what}"
            );
        }
        // A key file alone, and a certificate file alone.
        assert!(same_content(key1.as_bytes(), key8.as_bytes()));
        assert!(!same_content(other8.as_bytes(), key8.as_bytes()));
        assert!(same_content(
            format!("{leaf}{inter}").trim_end().as_bytes(),
            format!("{leaf}{inter}").as_bytes()
        ));
    }

    #[test]
    fn a_target_file_holding_the_chosen_key_in_another_encoding_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, sec1) = ec_key();
        let path = dir.path().join("chain.pem");
        let leaf = crate::cert::pem_encode("CERTIFICATE", b"the leaf's DER").to_string();
        let host = format!(
            "{}{leaf}",
            crate::cert::pem_encode("PRIVATE KEY", &pkcs8).as_str()
        );
        write_atomic(&path, host.as_bytes(), 0o600, None).unwrap();
        let ino = fs::metadata(&path).unwrap().ino();
        let ours = format!(
            "{}{leaf}",
            crate::cert::pem_encode("EC PRIVATE KEY", &sec1).as_str()
        );
        let plan = [planned(FileRole::Combined, &path, ours.as_bytes(), 0o600)];

        assert!(!differs(&path, ours.as_bytes()), "check sees it up to date");
        let o = apply(&plan, Ownership::default()).unwrap();
        assert!(o.changed.is_empty(), "{:?}", o.changed);
        assert_eq!(fs::read_to_string(&path).unwrap(), host);
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
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
        let e = apply(&planned, Ownership::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("fullchain"), "{e}");
        assert_eq!(fs::read(&good).unwrap(), b"old key");
    }

    fn planned(role: FileRole, path: &Path, bytes: &[u8], mode: u32) -> Planned {
        Planned {
            role,
            path: path.to_owned(),
            bytes: Zeroizing::new(bytes.to_vec()),
            mode,
        }
    }

    #[test]
    fn a_file_whose_directory_fsync_failed_after_the_rename_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let chain = dir.path().join("fullchain.pem");
        fs::write(&key, b"old key").unwrap();
        fs::write(&chain, b"old chain").unwrap();
        let plan = [
            planned(FileRole::Key, &key, b"new key", 0o600),
            planned(FileRole::Fullchain, &chain, b"new chain", 0o644),
        ];
        // The key's directory fsync succeeds, the chain's fails after its
        // rename: the chain is already replaced and must be undone too.
        faults::fail_dir_fsync_after(1);
        let e = apply(&plan, Ownership::default()).unwrap_err().to_string();
        assert!(e.contains("fullchain.pem") && e.contains("injected"), "{e}");
        assert_eq!(fs::read(&key).unwrap(), b"old key");
        assert_eq!(fs::read(&chain).unwrap(), b"old chain");
    }

    #[test]
    fn only_writes_that_reached_the_rename_are_undone() {
        let err = |renamed| {
            Err(WriteError {
                error: io::Error::other("x"),
                renamed,
            })
        };
        for (result, undo) in [(Ok(()), true), (err(true), true), (err(false), false)] {
            assert_eq!(must_undo(&result), undo, "{result:?}");
        }
    }

    #[test]
    fn a_symlink_fifo_or_directory_at_a_target_path_is_refused_before_any_write() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"secret").unwrap();
        let t = dir.path().join("t");
        fs::create_dir(&t).unwrap();
        let key = t.join("key.pem");
        fs::write(&key, b"old key").unwrap();
        let bad = t.join("fullchain.pem");
        let plants: [(&str, &dyn Fn()); 4] = [
            ("a symbolic link", &|| symlink(&outside, &bad).unwrap()),
            ("a FIFO", &|| {
                nix::unistd::mkfifo(&bad, Mode::from_bits_truncate(0o600)).unwrap()
            }),
            ("a directory", &|| fs::create_dir(&bad).unwrap()),
            ("a device", &|| symlink("/dev/zero", &bad).unwrap()),
        ];
        for (what, plant) in plants {
            plant();
            let before = fs::metadata(&key).unwrap().ino();
            let plan = [
                planned(FileRole::Key, &key, b"new key", 0o600),
                planned(FileRole::Fullchain, &bad, b"chain", 0o644),
            ];
            // Never blocks on the FIFO, never reads /dev/zero.
            assert!(differs(&bad, b"chain"), "{what}");
            let e = apply(&plan, Ownership::default()).unwrap_err().to_string();
            assert!(e.contains(&bad.display().to_string()), "{what}: {e}");
            assert!(e.contains("expected a regular file"), "{what}: {e}");
            assert_eq!(fs::read(&key).unwrap(), b"old key", "{what}");
            assert_eq!(
                fs::metadata(&key).unwrap().ino(),
                before,
                "{what}: key rewritten"
            );
            assert_eq!(fs::read(&outside).unwrap(), b"secret");
            match fs::remove_file(&bad) {
                Ok(()) => {}
                Err(_) => fs::remove_dir(&bad).unwrap(),
            }
        }
    }

    #[test]
    fn a_target_directory_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let plan = [planned(FileRole::Key, &link.join("key.pem"), b"k", 0o600)];
        let e = apply(&plan, Ownership::default()).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&real).unwrap().count(), 0);
    }

    #[test]
    fn a_target_file_over_the_size_cap_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let f = File::create(&key).unwrap();
        f.set_len(TARGET_SIZE_LIMIT + 1).unwrap();
        let plan = [planned(FileRole::Key, &key, b"k", 0o600)];
        let e = apply(&plan, Ownership::default()).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn who_else_can_write_a_target_directory() {
        let me = Ownership {
            uid: Some(110),
            gid: Some(120),
        };
        let cases: [(u32, u32, u32, Option<&str>); 7] = [
            (0, 0, 0o755, None),
            (0, 0, 0o775, None),
            (0, 120, 0o750, None),
            (110, 120, 0o755, None),
            (0, 120, 0o770, Some("group 120")),
            (0, 0, 0o1777, Some("world-writable")),
            (1000, 0, 0o755, Some("user 1000")),
        ];
        for (uid, gid, mode, want) in cases {
            let got = dir_exposure(uid, gid, mode, me);
            match want {
                None => assert_eq!(got, None, "{uid}:{gid} {mode:o}"),
                Some(w) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(w)),
                    "{uid}:{gid} {mode:o}: {got:?}"
                ),
            }
        }
    }
}

//! Sources: where certificates come from.
//!
//! Every reader turns its files into [`Candidate`]s: a parsed leaf (enough
//! for selection to judge names, dates and key type) plus the material to
//! build the full [`Bundle`] later, which is only done for candidates that
//! could serve a target. A reader never stops at a bad entry: it reports a
//! [`SourceError`] naming the source, the entry and the reason, and goes on.

pub mod acme;
pub mod certbot;
pub mod files;
pub mod lego;
pub mod selfsigned;
#[cfg(test)]
pub(crate) mod testing;
pub mod traefik;

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use crate::cert::{Bundle, CertError, Leaf, PrivateKey};
use crate::config::{Config, SourceConfig, SourceKind};

/// Largest PEM file (certificate, chain or key) mxkeys reads.
pub const PEM_SIZE_LIMIT: u64 = 1 << 20;
/// Largest acme.json mxkeys reads.
pub const ACME_JSON_SIZE_LIMIT: u64 = 256 << 20;

/// Where a candidate came from, for messages and ranking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The source's label (its `name`, or `TYPE:PATH`).
    pub source: Arc<str>,
    /// Position of the source in the configuration.
    pub source_index: usize,
    /// The entry inside the source, e.g. `resolver "le" #2 (main "x")`.
    pub entry: String,
    /// Position of the entry inside the source.
    pub entry_index: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.entry)
    }
}

/// A certificate some source offers, judged by selection. Its `Debug`
/// never shows the private key.
pub struct Candidate {
    pub origin: Origin,
    pub leaf: Leaf,
    /// Offered by the self-signed source: used only when nothing else is valid.
    pub fallback: bool,
    material: Material,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("origin", &self.origin)
            .field("leaf", &self.leaf)
            .field("fallback", &self.fallback)
            .field("material", &self.material)
            .finish()
    }
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Material::Parsed { certs, .. } => f
                .debug_struct("Parsed")
                .field("certs", &certs.len())
                .field("key", &"<redacted>")
                .finish(),
            Material::AcmeJson(m) => f.debug_tuple("AcmeJson").field(m).finish(),
        }
    }
}

/// What a candidate's bundle is built from.
enum Material {
    /// Certificates and key already parsed (files, Certbot, lego, self-signed).
    Parsed {
        certs: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: Arc<PrivateKey>,
    },
    /// Base64 fields of an acme.json entry, decoded on demand.
    AcmeJson(traefik::EntryMaterial),
}

impl Candidate {
    /// Builds the full bundle (all certificates and the key). The key is not
    /// yet checked against the leaf: see [`Bundle::verify`].
    pub fn bundle(&self) -> Result<Bundle, CertError> {
        match &self.material {
            Material::Parsed { certs, key } => Ok(Bundle {
                certs: certs.clone(),
                key: PrivateKey::clone(key),
            }),
            Material::AcmeJson(m) => m.bundle(&self.leaf),
        }
    }
}

/// An entry or a whole source that could not be read. One line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    pub source: Arc<str>,
    pub entry: Option<String>,
    pub kind: SourceErrorKind,
    pub reason: String,
}

/// What kind of problem a [`SourceError`] is: with the source and the
/// entry, its identity (the daemon tells a new error from one it already
/// reported by these, never by the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceErrorKind {
    /// Missing, not readable, not a regular file, too large, or empty.
    Unreadable,
    /// Read, but not what its format says (JSON, PEM, base64, DER).
    Malformed,
    /// Parsed, but unusable: its key does not match its certificate or its
    /// chain is broken (found when selection builds the bundle).
    Broken,
    /// The self-signed fallback could not make or store its certificate.
    Fallback,
}

impl SourceError {
    /// What tells this error from another, whatever its wording.
    pub fn identity(&self) -> (&str, Option<&str>, SourceErrorKind) {
        (&self.source, self.entry.as_deref(), self.kind)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.entry {
            Some(entry) => write!(f, "source {}: {entry}: {}", self.source, self.reason),
            None => write!(f, "source {}: {}", self.source, self.reason),
        }
    }
}

/// What reading one source produced.
#[derive(Debug, Default)]
pub struct Harvest {
    pub candidates: Vec<Candidate>,
    pub errors: Vec<SourceError>,
    pub warnings: Vec<String>,
}

impl Harvest {
    fn merge(&mut self, other: Harvest) {
        self.candidates.extend(other.candidates);
        self.errors.extend(other.errors);
        self.warnings.extend(other.warnings);
    }
}

/// Context a reader gets: its label and position, for [`Origin`]s.
#[derive(Debug, Clone)]
pub struct Reader {
    pub label: Arc<str>,
    pub index: usize,
}

impl Reader {
    fn origin(&self, entry: String, entry_index: usize) -> Origin {
        Origin {
            source: self.label.clone(),
            source_index: self.index,
            entry,
            entry_index,
        }
    }

    fn error(
        &self,
        entry: Option<String>,
        kind: SourceErrorKind,
        reason: impl Into<String>,
    ) -> SourceError {
        SourceError {
            source: self.label.clone(),
            entry,
            kind,
            reason: reason.into(),
        }
    }

    /// A candidate from PEM texts: a chain (leaf first, or put in that
    /// order by [`crate::cert::order_chain`]) and a key.
    fn pem_candidate(
        &self,
        entry: String,
        entry_index: usize,
        certs: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Candidate, SourceError> {
        let certs = crate::cert::order_chain(certs, &key);
        let leaf_der = certs.first().ok_or_else(|| {
            self.error(
                Some(entry.clone()),
                SourceErrorKind::Malformed,
                CertError::NoPemCertificate.to_string(),
            )
        })?;
        let leaf = Leaf::parse(leaf_der.as_ref()).map_err(|e| {
            self.error(
                Some(entry.clone()),
                SourceErrorKind::Malformed,
                e.to_string(),
            )
        })?;
        Ok(Candidate {
            origin: self.origin(entry, entry_index),
            leaf,
            fallback: false,
            material: Material::Parsed {
                certs,
                key: Arc::new(key),
            },
        })
    }
}

/// Where a PEM source's intermediates come from, besides its certificate
/// file.
pub(crate) enum Intermediates<'p> {
    /// The certificate file holds the whole chain.
    InCertFile,
    /// A separate chain file, appended; an error if unreadable.
    File { path: &'p Path, entry: String },
    /// Appended only when the certificate file holds just the leaf, and
    /// only if readable (lego's `NAME.issuer.crt` beside `--no-bundle`).
    IfLeafOnly(&'p Path),
}

impl Reader {
    /// Reads a certificate file and a key file into one candidate, or
    /// records every reason it cannot. `entry` names the candidate; each
    /// file's error names that file's entry.
    pub(crate) fn add_pem_files(
        &self,
        harvest: &mut Harvest,
        (entry, index): (String, usize),
        cert: (&Path, String),
        key: (&Path, String),
        intermediates: Intermediates<'_>,
    ) {
        let certs = read_pem_certs(cert.0).map_err(|(k, r)| self.error(Some(cert.1), k, r));
        let key = read_pem_key(key.0).map_err(|(k, r)| self.error(Some(key.1), k, r));
        let extra = match intermediates {
            Intermediates::InCertFile => Ok(Vec::new()),
            Intermediates::File { path, entry } => {
                read_pem_certs(path).map_err(|(k, r)| self.error(Some(entry), k, r))
            }
            Intermediates::IfLeafOnly(path) => Ok(match &certs {
                Ok(c) if c.len() == 1 && path.exists() => read_pem_certs(path).unwrap_or_default(),
                _ => Vec::new(),
            }),
        };
        match (certs, key, extra) {
            (Ok(mut certs), Ok(key), Ok(extra)) => {
                certs.extend(extra);
                match self.pem_candidate(entry, index, certs, key) {
                    Ok(c) => harvest.candidates.push(c),
                    Err(e) => harvest.errors.push(e),
                }
            }
            (certs, key, extra) => {
                harvest.errors.extend(certs.err());
                harvest.errors.extend(key.err());
                harvest.errors.extend(extra.err());
            }
        }
    }
}

/// What self-signed generation needs to know of the whole configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Store generated keys and certificates (`sync`).
    Yes,
    /// Generate in memory only (`check` writes nothing).
    No,
}

/// How an acme.json is read ([`traefik`]); the other sources ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Read through a window of `window` bytes (grown only for a single
    /// value larger than it), each window's entries judged in parallel:
    /// memory is bounded by the window, not the file. Anything the
    /// streaming reader does not handle itself (malformed JSON above all)
    /// is handed to [`Ingest::Whole`], so both give the same harvest.
    Streaming { window: usize },
    /// The whole file read and parsed at once, entries judged one by one:
    /// the reference the streaming reader is tested against.
    Whole,
}

impl Default for Ingest {
    fn default() -> Self {
        // 512 KiB: measured best between 128 KiB and 2 MiB at 10,000
        // entries (BENCHMARKS.md, "acme.json ingest").
        Ingest::Streaming { window: 512 << 10 }
    }
}

/// Reads every configured source, in parallel, in configuration order.
pub fn read_all(config: &Config, persist: Persist) -> Harvest {
    read_all_with(config, persist, Ingest::default())
}

/// [`read_all`] with a chosen way of reading acme.json files.
pub fn read_all_with(config: &Config, persist: Persist, ingest: Ingest) -> Harvest {
    let harvests: Vec<Harvest> = config
        .sources
        .par_iter()
        .enumerate()
        .map(|(index, source)| read_one(config, index, source, persist, ingest))
        .collect();
    let mut all = Harvest::default();
    for (source, mut h) in config.sources.iter().zip(harvests) {
        let silent = h.candidates.is_empty() && h.errors.is_empty() && h.warnings.is_empty();
        if silent && !matches!(source.kind, SourceKind::SelfSigned { .. }) {
            h.warnings
                .push(format!("source {}: holds no certificate", source.label));
        }
        all.merge(h);
    }
    all
}

fn read_one(
    config: &Config,
    index: usize,
    source: &SourceConfig,
    persist: Persist,
    ingest: Ingest,
) -> Harvest {
    let reader = Reader {
        label: Arc::from(source.label.as_str()),
        index,
    };
    match &source.kind {
        SourceKind::Traefik { path, resolvers } => {
            traefik::read(&reader, path, resolvers.as_deref(), ingest)
        }
        SourceKind::Certbot { path } => certbot::read(&reader, path),
        SourceKind::Lego { path } => lego::read(&reader, path),
        SourceKind::Files { cert, key, chain } => files::read(&reader, cert, key, chain.as_deref()),
        SourceKind::Acme(source) => acme::read(&reader, source),
        SourceKind::SelfSigned { dir, days } => {
            selfsigned::read(&reader, dir, *days, &selfsigned::wanted(config), persist)
        }
    }
}

/// Why a file could not be read, in words an admin acts on. Never includes
/// file content.
pub fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "not found".to_owned(),
        ErrorKind::PermissionDenied => "permission denied".to_owned(),
        ErrorKind::IsADirectory => "is a directory, expected a file".to_owned(),
        _ => match e.raw_os_error() {
            Some(40) => "too many levels of symbolic links (a symlink loop)".to_owned(),
            _ => e.to_string(),
        },
    }
}

/// Why a file could not be read ([`read_limited`]), one line in words an
/// admin acts on; never the file's content.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path is a symlink whose target does not exist.
    #[error("dangling symlink: its target is not found")]
    DanglingSymlink,
    /// Opening, inspecting or reading it failed.
    #[error("{}", io_reason(.0))]
    Io(#[source] std::io::Error),
    #[error("is a directory, expected a file")]
    Directory,
    /// A FIFO, a socket, a device or another special file.
    #[error("is {0}, expected a regular file")]
    NotRegular(&'static str),
    #[error("too large: {size} bytes, the limit is {limit}")]
    TooLarge { size: u64, limit: u64 },
    /// It grew past the limit while being read.
    #[error("too large: over the limit of {limit} bytes")]
    GrewTooLarge { limit: u64 },
    /// Empty, or only whitespace.
    #[error("empty file")]
    Empty,
}

/// Reads a whole file that must be a regular file no larger than `limit`.
/// The error names the problem (not found, dangling symlink, directory,
/// permission denied, too large, empty) in one line.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let (file, len) = open_regular(path, limit)?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::GrewTooLarge { limit });
    }
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Err(ReadError::Empty);
    }
    Ok(buf)
}

/// Opens a file that must be a regular file no larger than `limit` (its
/// size now, which is returned); [`read_limited`] says the rest.
pub(crate) fn open_regular(path: &Path, limit: u64) -> Result<(std::fs::File, u64), ReadError> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    // Non-blocking, so a FIFO in a file's place cannot hang the run (and
    // hold the lock); it is refused below like any non-regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && path.symlink_metadata().is_ok() {
                ReadError::DanglingSymlink
            } else {
                ReadError::Io(e)
            }
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    if meta.is_dir() {
        return Err(ReadError::Directory);
    }
    if !meta.is_file() {
        let kind = match meta.file_type() {
            t if t.is_fifo() => "a FIFO",
            t if t.is_socket() => "a socket",
            t if t.is_block_device() || t.is_char_device() => "a device",
            _ => "not a regular file",
        };
        return Err(ReadError::NotRegular(kind));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok((file, meta.len()))
}

/// Why a file of a source could not be used: its kind and the reason.
type FileError = (SourceErrorKind, String);

/// Reads a PEM certificate file: every certificate in it, leaf first.
fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, FileError> {
    let text = read_limited(path, PEM_SIZE_LIMIT)
        .map_err(|r| (SourceErrorKind::Unreadable, r.to_string()))?;
    crate::cert::parse_pem_certs(&text).map_err(|e| (SourceErrorKind::Malformed, e.to_string()))
}

/// Reads a PEM private key file.
fn read_pem_key(path: &Path) -> Result<PrivateKey, FileError> {
    let text = zeroize::Zeroizing::new(
        read_limited(path, PEM_SIZE_LIMIT)
            .map_err(|r| (SourceErrorKind::Unreadable, r.to_string()))?,
    );
    PrivateKey::from_pem(&text).map_err(|e| (SourceErrorKind::Malformed, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::testing::{Alg, Ca};
    use super::*;

    const NOW: i64 = 1_767_225_600;

    fn reader() -> Reader {
        Reader {
            label: Arc::from("files:/etc/ssl/mx.pem"),
            index: 3,
        }
    }

    #[test]
    fn a_pem_chain_in_any_order_becomes_a_candidate_with_its_leaf_first() {
        let issued = Ca::new().issue(&["mx.example"], Alg::Ecdsa, NOW, NOW + 86_400);
        let mut reversed = issued.certs.clone();
        reversed.reverse();
        for (what, certs) in [("in order", issued.certs.clone()), ("reversed", reversed)] {
            let c = reader()
                .pem_candidate("mx.pem".to_owned(), 2, certs, issued.key.clone())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(c.leaf.names, ["mx.example"], "{what}");
            assert_eq!(c.origin.to_string(), "files:/etc/ssl/mx.pem: mx.pem");
            assert_eq!((c.origin.source_index, c.origin.entry_index), (3, 2));
            let bundle = c.bundle().unwrap();
            assert_eq!(bundle.certs, issued.certs, "{what}");
            assert!(bundle.verify().is_ok(), "{what}");
        }
    }

    #[test]
    fn a_pem_file_without_certificates_is_a_malformed_entry() {
        let issued = Ca::new().issue(&["mx.example"], Alg::Ecdsa, NOW, NOW + 86_400);
        let e = reader()
            .pem_candidate("mx.pem".to_owned(), 0, Vec::new(), issued.key)
            .unwrap_err();
        assert_eq!(e.kind, SourceErrorKind::Malformed);
        assert_eq!(
            e.to_string(),
            "source files:/etc/ssl/mx.pem: mx.pem: no PEM certificate found (the text is not PEM)"
        );
        assert_eq!(
            e.identity(),
            (
                "files:/etc/ssl/mx.pem",
                Some("mx.pem"),
                SourceErrorKind::Malformed
            )
        );
    }

    #[test]
    fn a_source_error_without_an_entry_names_only_the_source() {
        let e = reader().error(None, SourceErrorKind::Unreadable, "not found");
        assert_eq!(e.to_string(), "source files:/etc/ssl/mx.pem: not found");
    }

    #[test]
    fn each_unreadable_file_is_refused_with_the_reason_it_always_had() {
        let tmp = tempfile::tempdir().unwrap();
        let at = |name: &str| tmp.path().join(name);
        std::os::unix::fs::symlink(at("nowhere"), at("dangling")).unwrap();
        std::fs::create_dir(at("dir")).unwrap();
        nix::unistd::mkfifo(&at("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(at("big"), [b'x'; 11]).unwrap();
        std::fs::write(at("blank"), b" \n\t\n").unwrap();
        std::fs::write(at("ok"), b"x").unwrap();
        for (name, want) in [
            ("missing", "not found"),
            ("dangling", "dangling symlink: its target is not found"),
            ("dir", "is a directory, expected a file"),
            ("fifo", "is a FIFO, expected a regular file"),
            ("big", "too large: 11 bytes, the limit is 10"),
            ("blank", "empty file"),
        ] {
            let got = read_limited(&at(name), 10).unwrap_err().to_string();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(read_limited(&at("ok"), 10).unwrap(), b"x");
    }
}

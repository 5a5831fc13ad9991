//! Sealing private keys stored in the cluster: AES-256-GCM (aws-lc-rs)
//! under a key every host reads from the same file (`shared_key_file`).
//!
//! The rule: a private key leaves the host only sealed, and a sealed value
//! opens only under the name it was sealed for (the name is the additional
//! data), so a value moved to another key in etcd does not open. The key
//! file holds 32 bytes in base64 (`openssl rand -base64 32`); it is read
//! as a regular file with a size cap and kept zeroized. Errors name the
//! file or the value's name, never a byte of a key.
//!
//! Sealed form: `v1.` + base64(nonce ‖ ciphertext ‖ tag), nonce random.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use zeroize::Zeroizing;

const VERSION: &str = "v1.";
/// The largest key file read: base64 of 32 bytes and some whitespace.
const KEY_FILE_CAP: u64 = 1024;

/// Why a key could not be sealed or opened, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("shared key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("sealed value for {name}: {reason}")]
    Open { name: String, reason: String },
    #[error("sealing for {name} failed")]
    Seal { name: String },
}

/// The cluster's sealing key.
pub struct SealKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

impl SealKey {
    /// Reads the key file: base64 of exactly 32 bytes.
    pub fn load(path: &Path) -> Result<SealKey, SealError> {
        let fail = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = Zeroizing::new(
            crate::source::read_limited(path, KEY_FILE_CAP).map_err(|e| fail(e.to_string()))?,
        );
        let trimmed: Vec<u8> = text
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let trimmed = Zeroizing::new(trimmed);
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(&*trimmed)
                .map_err(|_| fail("not base64 (make one with `openssl rand -base64 32`)".into()))?,
        );
        SealKey::from_bytes(&bytes)
            .ok_or_else(|| fail(format!("{} bytes, expected 32", bytes.len())))
    }

    /// A key from its 32 bytes; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<SealKey> {
        if bytes.len() != 32 {
            return None;
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(SealKey {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Seals `plain` for `name` (the key it is stored under).
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<String, SealError> {
        let fail = || SealError::Seal {
            name: name.to_owned(),
        };
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| fail())?;
        let mut buf = Zeroizing::new(plain.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| fail())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{VERSION}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// Opens a value sealed for `name`.
    pub fn open(&self, name: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let fail = |reason: &str| SealError::Open {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let body = sealed
            .strip_prefix(VERSION)
            .ok_or_else(|| fail("not a v1 sealed value"))?;
        let mut bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|_| fail("not base64"))?,
        );
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(fail("too short"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| {
                fail("does not open (another shared key, or stored under another name)")
            })?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealKey {
        SealKey::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_under_its_name_and_the_same_shared_key_only() {
        let k = key(7);
        let sealed = k.seal("acme/mx", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            &*k.open("acme/mx", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(k.open("acme/other", &sealed).is_err());
        assert!(key(8).open("acme/mx", &sealed).is_err());
        assert!(k.open("acme/mx", "v1.AAAA").is_err());
        assert!(k.open("acme/mx", "garbage").is_err());
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let k = key(1);
        assert_ne!(k.seal("n", b"x").unwrap(), k.seal("n", b"x").unwrap());
    }

    #[test]
    fn the_key_file_must_hold_32_bytes_of_base64_and_errors_never_show_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(
            &p,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode([3u8; 32])
            ),
        )
        .unwrap();
        assert!(SealKey::load(&p).is_ok());
        std::fs::write(
            &p,
            base64::engine::general_purpose::STANDARD.encode([3u8; 16]),
        )
        .unwrap();
        let e = SealKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("16 bytes, expected 32"), "{e}");
        std::fs::write(&p, "not-base64!!").unwrap();
        let e = SealKey::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("not base64") && !e.contains("not-base64!!"),
            "{e}"
        );
    }
}

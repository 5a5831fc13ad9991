//! `mxkeys init`'s look at the certificate stores a host has (Certbot,
//! lego, Traefik's acme.json) and at what its servers serve now.
//!
//! Rule: read only, and every entry on its own. Certificates are read by
//! the sources' own readers ([`crate::source::certbot`], [`lego`],
//! [`traefik`]), never parsed again here; a store that cannot be read, or
//! an entry that is bad, becomes one note (one line, never key material)
//! and reading goes on. A store path that does not exist is silently
//! absent: the defaults in [`Look`] are guesses. Certbot's renewal
//! configuration (`renewal/NAME.conf`) is read here for what the readers do
//! not need: `reuse_key` and the hooks mxkeys takes over. [`served`] reads
//! only the certificates of the servers' chain files (a combined file's
//! key is read into a zeroized buffer and dropped, never kept).
//!
//! [`lego`]: crate::source::lego
//! [`traefik`]: crate::source::traefik

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::mail::KeyTypeHint;
use super::{FoundCert, FoundKind, FoundSource, Look, ServedCert};
use crate::cert::{Leaf, fingerprint, first_pem_cert};
use crate::source::{
    Harvest, Ingest, PEM_SIZE_LIMIT, Reader, certbot, lego, read_limited, traefik,
};

/// Largest Certbot renewal configuration read.
const RENEWAL_CONF_LIMIT: u64 = 64 << 10;

/// Every store `look` names that exists: Certbot's configuration directory,
/// each lego `--path`, each acme.json, in that order.
pub fn sources(look: &Look) -> Vec<FoundSource> {
    let mut out = Vec::new();
    if exists(&look.letsencrypt) {
        out.push(certbot_store(&look.letsencrypt));
    }
    for dir in look.lego.iter().filter(|p| exists(p)) {
        out.push(store(
            FoundKind::Lego,
            dir,
            |r| lego::read(r, dir),
            |e| {
                e.strip_prefix("certificates/")
                    .and_then(|e| e.strip_suffix(".crt"))
                    .unwrap_or(e)
                    .to_owned()
            },
        ));
    }
    for file in look.acme_json.iter().filter(|p| exists(p)) {
        out.push(store(
            FoundKind::Traefik,
            file,
            |r| traefik::read(r, file, None, Ingest::default()),
            str::to_owned,
        ));
    }
    out
}

/// Whether `path` is there at all (a link, even a dangling one, is: its
/// reader then says what is wrong with it).
fn exists(path: &Path) -> bool {
    !matches!(path.symlink_metadata(), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

fn kind_name(kind: FoundKind) -> &'static str {
    match kind {
        FoundKind::Certbot => "certbot",
        FoundKind::Lego => "lego",
        FoundKind::Traefik => "traefik",
    }
}

/// One store read by its reader; `label` turns an entry's name into the
/// certificate's label.
fn store(
    kind: FoundKind,
    path: &Path,
    read: impl FnOnce(&Reader) -> Harvest,
    label: impl Fn(&str) -> String,
) -> FoundSource {
    let reader = Reader {
        label: Arc::from(format!("{}:{}", kind_name(kind), path.display())),
        index: 0,
    };
    let harvest = read(&reader);
    let mut found = FoundSource {
        kind,
        path: path.to_owned(),
        certs: Vec::new(),
        notes: harvest.errors.iter().map(ToString::to_string).collect(),
    };
    found.notes.extend(harvest.warnings);
    for candidate in harvest.candidates {
        // The leaf's DER comes with the bundle; the key is dropped here.
        match candidate.bundle() {
            Ok(bundle) => found.certs.push(FoundCert {
                label: label(&candidate.origin.entry),
                names: candidate.leaf.names.clone(),
                key_type: KeyTypeHint::from(candidate.leaf.key_type),
                not_after: candidate.leaf.validity.not_after,
                sha256: fingerprint(bundle.leaf_der()),
                reuse_key: None,
            }),
            Err(e) => found.notes.push(format!("{}: {e}", candidate.origin)),
        }
    }
    found
}

/// Certbot's configuration directory: each `live/NAME` lineage, with
/// `reuse_key` and the hooks of `renewal/NAME.conf`.
fn certbot_store(dir: &Path) -> FoundSource {
    let mut found = store(
        FoundKind::Certbot,
        dir,
        |r| certbot::read(r, dir),
        |e| e.strip_prefix("live/").unwrap_or(e).to_owned(),
    );
    let mut notes = Vec::new();
    for cert in &mut found.certs {
        let conf = dir.join("renewal").join(format!("{}.conf", cert.label));
        let text = match read_limited(&conf, RENEWAL_CONF_LIMIT) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                notes.push(format!(
                    "lineage {}: {}: {e}: whether renewal keeps the key is unknown",
                    cert.label,
                    conf.display()
                ));
                continue;
            }
        };
        let renewal = renewal_params(&text);
        let reuse = renewal.iter().any(|(k, v)| k == "reuse_key" && is_true(v));
        cert.reuse_key = Some(reuse);
        if !reuse {
            notes.push(format!(
                "lineage {}: renewal makes a new key each time (no reuse_key in {}): \
                 a TLSA record of the key breaks at each renewal; renew once with \
                 `certbot renew --cert-name {} --reuse-key` and it is kept from then on",
                cert.label,
                conf.display(),
                cert.label
            ));
        }
        for (key, hook) in renewal.iter().filter(|(k, _)| is_deploy_hook(k)) {
            notes.push(format!(
                "lineage {}: {key} `{hook}` in {} runs after each renewal: \
                 mxkeys now installs the certificate and reloads the servers, \
                 remove the hook once the configuration below runs",
                cert.label,
                conf.display()
            ));
        }
    }
    // Hooks Certbot runs for every lineage.
    let hooks = dir.join("renewal-hooks").join("deploy");
    if let Ok(entries) = std::fs::read_dir(&hooks) {
        let mut names: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        names.sort();
        for hook in names {
            notes.push(format!(
                "deploy hook {} runs after each renewal: mxkeys now installs the \
                 certificate and reloads the servers, remove the hook once the \
                 configuration below runs",
                hook.display()
            ));
        }
    }
    found.notes.extend(notes);
    found
}

/// The `key = value` lines of a renewal configuration's `[renewalparams]`
/// section (ConfigObj syntax), in order. Pure.
fn renewal_params(text: &str) -> Vec<(String, String)> {
    let mut in_params = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            in_params = line == "[renewalparams]";
            continue;
        }
        if !in_params {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.push((k.trim().to_owned(), v.to_owned()));
        }
    }
    out
}

fn is_true(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
}

/// `renew_hook` is where Certbot keeps `--deploy-hook` (and the older
/// `--renew-hook`); `deploy_hook` is accepted too.
fn is_deploy_hook(key: &str) -> bool {
    key == "renew_hook" || key == "deploy_hook"
}

/// The leaf each chain file holds (each file once, in order), and one line
/// per file that cannot be read.
pub fn served(chain_files: &[PathBuf]) -> (Vec<ServedCert>, Vec<String>) {
    let mut certs = Vec::new();
    let mut problems = Vec::new();
    let mut seen: Vec<&PathBuf> = Vec::new();
    for file in chain_files {
        if seen.contains(&file) {
            continue;
        }
        seen.push(file);
        match served_leaf(file) {
            Ok(cert) => certs.push(cert),
            Err(reason) => problems.push(format!("{}: {reason}", file.display())),
        }
    }
    (certs, problems)
}

fn served_leaf(file: &Path) -> Result<ServedCert, String> {
    // A combined file holds the key too: its bytes are zeroized on drop.
    let bytes = Zeroizing::new(read_limited(file, PEM_SIZE_LIMIT).map_err(|e| e.to_string())?);
    let der = first_pem_cert(&bytes).map_err(|e| e.to_string())?;
    let leaf = Leaf::parse(der.as_ref()).map_err(|e| e.to_string())?;
    Ok(ServedCert {
        chain: file.to_owned(),
        names: leaf.names,
        key_type: KeyTypeHint::from(leaf.key_type),
        not_after: leaf.validity.not_after,
        sha256: fingerprint(der.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_params_are_read_from_their_section_only() {
        let text = "version = 2.1.0\narchive_dir = /etc/letsencrypt/archive/a\n\
                    reuse_key = False\n\n# Options used in the renewal process\n\
                    [renewalparams]\naccount = 0123\nreuse_key = True\n\
                    renew_hook = \"cp /etc/letsencrypt/live/a/*.pem /etc/postfix/\"\n\
                    [[webroot_map]]\nreuse_key = False\n";
        let got = renewal_params(text);
        assert_eq!(
            got,
            vec![
                ("account".to_owned(), "0123".to_owned()),
                ("reuse_key".to_owned(), "True".to_owned()),
                (
                    "renew_hook".to_owned(),
                    "cp /etc/letsencrypt/live/a/*.pem /etc/postfix/".to_owned()
                ),
            ]
        );
        for (v, want) in [
            ("True", true),
            ("true", true),
            ("False", false),
            ("", false),
        ] {
            assert_eq!(is_true(v), want, "{v}");
        }
    }
}

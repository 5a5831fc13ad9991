//! The `[[source]]` tables: where certificates are read from.
//!
//! Pure: paths are made absolute, `self-signed` and `acme` sources get
//! their directory under `state_dir`, and every source gets a label unique
//! in the file (its `name`, else `TYPE:PATH`), which messages, state and
//! metrics use. An `acme` source is validated by [`super::acme`].

use std::collections::HashSet;
use std::path::PathBuf;

use super::acme::AcmeSource;
use super::raw::RawSource;
use super::{ConfigError, Context};

/// One `[[source]]`, with paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// A short label for messages: `name` when given, else `TYPE:PATH`.
    pub label: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Traefik {
        path: PathBuf,
        resolvers: Option<Vec<String>>,
    },
    Certbot {
        path: PathBuf,
    },
    Lego {
        path: PathBuf,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
    SelfSigned {
        dir: crate::state::SelfSignedDir,
        days: u32,
    },
    /// Certificates mxkeys orders itself (`mxkeys renew`, or `run`).
    Acme(AcmeSource),
}

/// Validates the sources in order; errors name the source by position.
pub(super) fn sources(
    raw: Vec<RawSource>,
    state_dir: &crate::state::StateDir,
    ctx: &Context,
) -> Result<Vec<SourceConfig>, ConfigError> {
    let mut sources = Vec::new();
    let mut labels = HashSet::new();
    for (i, s) in raw.into_iter().enumerate() {
        let entry = format!("source #{}", i + 1);
        let (name, kind, default_label) = match s {
            RawSource::Traefik {
                name,
                path,
                resolvers,
            } => {
                let path = ctx.abs(&path);
                let label = format!("traefik:{}", path.display());
                (name, SourceKind::Traefik { path, resolvers }, label)
            }
            RawSource::Certbot { name, path } => {
                let path = ctx.abs(&path);
                let label = format!("certbot:{}", path.display());
                (name, SourceKind::Certbot { path }, label)
            }
            RawSource::Lego { name, path } => {
                let path = ctx.abs(&path);
                let label = format!("lego:{}", path.display());
                (name, SourceKind::Lego { path }, label)
            }
            RawSource::Files {
                name,
                cert,
                key,
                chain,
            } => {
                let cert = ctx.abs(&cert);
                let label = format!("files:{}", cert.display());
                let kind = SourceKind::Files {
                    cert,
                    key: ctx.abs(&key),
                    chain: chain.as_deref().map(|p| ctx.abs(p)),
                };
                (name, kind, label)
            }
            RawSource::SelfSigned { name, days } => {
                let days = days.unwrap_or(90);
                if !(2..=3650).contains(&days) {
                    return Err(
                        ctx.error(format!("{entry}: key `days`: {days} is outside 2..=3650"))
                    );
                }
                let dir = state_dir.self_signed();
                let label = "self-signed".to_owned();
                (name, SourceKind::SelfSigned { dir, days }, label)
            }
            RawSource::Acme(raw) => {
                let source = super::acme::source(raw, state_dir, &entry, ctx)?;
                // An acme source's label is always its name.
                let label = format!("acme:{}", source.name);
                (None, SourceKind::Acme(source), label)
            }
        };
        let label = name.unwrap_or(default_label);
        if !labels.insert(label.clone()) {
            return Err(ctx.error(format!(
                "{entry}: two sources are both called {label:?}; give one a `name`"
            )));
        }
        sources.push(SourceConfig { label, kind });
    }
    Ok(sources)
}

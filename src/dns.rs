//! DNS providers as mxkeys uses them: built from `[dns.NAME]` tables (secrets
//! read only now, from their file or environment variable), and `mxkeys dns
//! test`, the first thing to run after configuring credentials.

use std::io::Write;
use std::time::Instant;

use mxkeys_providers::cloudflare::{Cloudflare, CloudflareConfig};
use mxkeys_providers::exec::Exec;
use mxkeys_providers::longtail::{LongTail, LongTailConfig};
use mxkeys_providers::manual::Manual;
use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::rfc2136::{Rfc2136, Rfc2136Config};
use mxkeys_providers::{Change, Error, RData, RecordStore, RecordType};

use crate::config::{DnsKind, DnsProvider};

/// A `[dns.NAME]` table whose provider could not be built. Names the
/// table and where its secret was looked for, never the secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("[dns.{table}]: {problem}")]
pub struct BuildError {
    pub table: String,
    #[source]
    pub problem: BuildProblem,
}

/// What went wrong building a provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildProblem {
    /// The API token could not be read (where, never what).
    #[error("api token: {0}")]
    ApiToken(crate::config::SecretError),
    /// A credential of a long-tail provider could not be read (which key
    /// and where, never what).
    #[error("{key}: {source}")]
    Credential {
        key: String,
        source: crate::config::SecretError,
    },
    /// The TSIG secret could not be read (where, never what).
    #[error("TSIG secret: {0}")]
    TsigRead(crate::config::SecretError),
    /// The TSIG secret's file does not hold a usable secret.
    #[error("TSIG secret in {secret}: {problem}")]
    TsigSecret {
        /// Where the secret was read from (file or variable).
        secret: String,
        #[source]
        problem: TsigFileError,
    },
    #[error("unknown TSIG algorithm {0}")]
    TsigAlgorithm(String),
    /// The provider refused its configuration.
    #[error("{0}")]
    Provider(#[source] Error),
}

/// Why a TSIG secret file holds no usable secret. Never quotes the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsigFileError {
    #[error("not valid base64 (expected the secret of a tsig-keygen key)")]
    NotBase64,
    #[error("an unterminated /* comment")]
    UnterminatedComment,
    #[error("an unterminated quoted string")]
    UnterminatedQuote,
    #[error("key {0:?}: no closing `}}`")]
    NoClosingBrace(String),
    #[error("key {0:?}: no `;` after its closing `}}`")]
    NoSemicolon(String),
    #[error("expected `key NAME {{ algorithm ...; secret \"...\"; }};`")]
    NotAKeyStatement,
    #[error("key {0:?}: a clause that is not `keyword value;`")]
    BadClause(String),
    #[error("key {0:?} has no `secret` clause")]
    NoSecret(String),
    /// `names` are the keys the file holds.
    #[error("no key named {wanted:?} in the key file (it holds {})", if .names.is_empty() { "no key".to_owned() } else { .names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ") })]
    NoSuchKey { wanted: String, names: Vec<String> },
}

/// Why `mxkeys dns test` failed: which step.
#[derive(Debug, thiserror::Error)]
pub enum DnsTestError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("[dns.{0}] has no `zone`: name the probe record with --name _mxkeys-probe.YOUR.ZONE")]
    NoZone(String),
    #[error("writing {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: Error,
    },
    #[error("propagation of {name}: {source}")]
    Propagation {
        name: String,
        #[source]
        source: Error,
    },
    #[error("removing {name}: {source}")]
    Remove {
        name: String,
        #[source]
        source: Error,
    },
}

/// Any configured provider, with the delegation its table asks for: under
/// `delegate_to = "ZONE"` every name is mapped to
/// [`crate::delegation::target`] before the backend sees it, so callers
/// always speak of the user's names.
pub struct Provider {
    backend: Backend,
    delegate_to: Option<String>,
}

/// The provider proper: who writes the records.
pub enum Backend {
    Cloudflare(Cloudflare),
    Rfc2136(Rfc2136),
    Exec(Exec),
    Manual(Manual),
    /// Route 53, Hetzner, OVH... through the `dns-update` crate.
    LongTail(LongTail),
}

impl Provider {
    /// Builds the provider of a `[dns.NAME]` table, reading its secret.
    /// Errors name the table and where the secret was looked for, never
    /// the secret.
    pub fn build(cfg: &DnsProvider) -> Result<Provider, BuildError> {
        Ok(Provider {
            backend: Backend::build(cfg)?,
            delegate_to: cfg.delegate_to.clone(),
        })
    }

    /// `dns = "manual"` without a `[dns.manual]` table: print what to set.
    pub fn manual() -> Provider {
        Provider {
            backend: Backend::Manual(Manual::default()),
            delegate_to: None,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The zone names are delegated to (`delegate_to`), if any.
    pub fn delegate_to(&self) -> Option<&str> {
        self.delegate_to.as_deref()
    }

    /// Where the backend writes the records of the user's `name`.
    fn at(&self, name: &str) -> Result<String, Error> {
        match &self.delegate_to {
            Some(zone) => crate::delegation::target(name, zone),
            None => Ok(name.to_owned()),
        }
    }
}

impl Backend {
    fn build(cfg: &DnsProvider) -> Result<Backend, BuildError> {
        let err = |problem| BuildError {
            table: cfg.name.clone(),
            problem,
        };
        Ok(match &cfg.kind {
            DnsKind::Cloudflare { api_token, api_url } => {
                let token = api_token
                    .read()
                    .map_err(|e| err(BuildProblem::ApiToken(e)))?;
                Backend::Cloudflare(
                    Cloudflare::new(CloudflareConfig {
                        api_token: token.to_string(),
                        api_url: api_url.clone(),
                        zone: cfg.zone.clone(),
                    })
                    .map_err(|e| err(BuildProblem::Provider(e)))?,
                )
            }
            DnsKind::Rfc2136 {
                server,
                tsig_name,
                tsig_algorithm,
                tsig_secret,
            } => {
                let text = tsig_secret
                    .read()
                    .map_err(|e| err(BuildProblem::TsigRead(e)))?;
                let secret = tsig_secret_bytes(&text, tsig_name).map_err(|problem| {
                    err(BuildProblem::TsigSecret {
                        secret: tsig_secret.to_string(),
                        problem,
                    })
                })?;
                Backend::Rfc2136(
                    Rfc2136::new(Rfc2136Config {
                        server: *server,
                        zone: cfg.zone.clone(),
                        tsig_name: tsig_name.clone(),
                        tsig_algorithm: tsig_algorithm.parse().map_err(|_| {
                            err(BuildProblem::TsigAlgorithm(tsig_algorithm.clone()))
                        })?,
                        tsig_secret: secret.to_vec(),
                    })
                    .map_err(|e| err(BuildProblem::Provider(e)))?,
                )
            }
            DnsKind::Exec { command } => Backend::Exec(
                Exec::new(command.clone()).map_err(|e| err(BuildProblem::Provider(e)))?,
            ),
            DnsKind::Manual => Backend::Manual(Manual::default()),
            DnsKind::LongTail {
                kind,
                secrets,
                settings,
            } => {
                // Read now, zeroized when the config below is dropped.
                let mut read = std::collections::BTreeMap::new();
                for (key, secret) in secrets {
                    let value = secret.read().map_err(|source| {
                        err(BuildProblem::Credential {
                            key: key.clone(),
                            source,
                        })
                    })?;
                    read.insert(key.clone(), value);
                }
                Backend::LongTail(
                    LongTail::new(LongTailConfig {
                        kind: (*kind).to_owned(),
                        secrets: read,
                        settings: settings.clone(),
                        zone: cfg.zone.clone(),
                        zones: propagation(cfg),
                    })
                    .map_err(|e| err(BuildProblem::Provider(e)))?,
                )
            }
        })
    }

    fn kind(&self) -> &'static str {
        match self {
            Backend::Cloudflare(_) => "cloudflare",
            Backend::Rfc2136(_) => "rfc2136",
            Backend::Exec(_) => "exec",
            Backend::Manual(_) => "manual",
            Backend::LongTail(p) => p.kind(),
        }
    }
}

impl RecordStore for Provider {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        self.backend.read(&self.at(name)?, rtype).await
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        self.backend.replace(&self.at(name)?, ttl, values).await
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        self.backend.remove(&self.at(name)?, rtype).await
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        self.backend.add(&self.at(name)?, ttl, values).await
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        self.backend.remove_values(&self.at(name)?, values).await
    }
}

impl RecordStore for Backend {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        match self {
            Backend::Cloudflare(p) => p.read(name, rtype).await,
            Backend::Rfc2136(p) => p.read(name, rtype).await,
            Backend::Exec(p) => p.read(name, rtype).await,
            Backend::Manual(p) => p.read(name, rtype).await,
            Backend::LongTail(p) => p.read(name, rtype).await,
        }
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        match self {
            Backend::Cloudflare(p) => p.replace(name, ttl, values).await,
            Backend::Rfc2136(p) => p.replace(name, ttl, values).await,
            Backend::Exec(p) => p.replace(name, ttl, values).await,
            Backend::Manual(p) => p.replace(name, ttl, values).await,
            Backend::LongTail(p) => p.replace(name, ttl, values).await,
        }
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        match self {
            Backend::Cloudflare(p) => p.remove(name, rtype).await,
            Backend::Rfc2136(p) => p.remove(name, rtype).await,
            Backend::Exec(p) => p.remove(name, rtype).await,
            Backend::Manual(p) => p.remove(name, rtype).await,
            Backend::LongTail(p) => p.remove(name, rtype).await,
        }
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        match self {
            Backend::Cloudflare(p) => p.add(name, ttl, values).await,
            Backend::Rfc2136(p) => p.add(name, ttl, values).await,
            Backend::Exec(p) => p.add(name, ttl, values).await,
            Backend::Manual(p) => p.add(name, ttl, values).await,
            Backend::LongTail(p) => p.add(name, ttl, values).await,
        }
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        match self {
            Backend::Cloudflare(p) => p.remove_values(name, values).await,
            Backend::Rfc2136(p) => p.remove_values(name, values).await,
            Backend::Exec(p) => p.remove_values(name, values).await,
            Backend::Manual(p) => p.remove_values(name, values).await,
            Backend::LongTail(p) => p.remove_values(name, values).await,
        }
    }
}

/// The propagation check a `[dns.NAME]` table asks for: its `nameservers`
/// serve its `zone` only (every name without a `zone`); other names are
/// looked up through its `resolver`.
pub fn propagation(cfg: &DnsProvider) -> Propagation {
    Propagation {
        nameservers: cfg.nameservers.clone(),
        zone: cfg.zone.clone(),
        resolver: cfg.resolver,
        interval: cfg.propagation_interval,
        timeout: cfg.propagation_timeout,
    }
}

/// The TSIG secret's bytes from a file holding either the bare base64
/// secret or BIND key statements (`key "NAME" { algorithm X; secret "...";
/// };`, as `tsig-keygen` writes them, comments allowed). With statements,
/// the secret is the one of the key named `key_name`. Errors never quote
/// the file.
fn tsig_secret_bytes(
    text: &str,
    key_name: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, TsigFileError> {
    use base64::Engine as _;
    let tokens = bind_tokens(text)?;
    let b64 = match tokens.first() {
        Some(BindToken::Word(w)) if w.eq_ignore_ascii_case("key") => {
            key_statement_secret(&tokens, key_name)?
        }
        _ => text.trim(),
    };
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map(zeroize::Zeroizing::new)
        .map_err(|_| TsigFileError::NotBase64)
}

/// A token of BIND's configuration syntax, borrowed from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindToken<'a> {
    Word(&'a str),
    Quoted(&'a str),
    Open,
    Close,
    Semicolon,
}

/// Splits BIND configuration text into tokens, skipping `#`, `//` and
/// `/* */` comments.
fn bind_tokens(text: &str) -> Result<Vec<BindToken<'_>>, TsigFileError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b if b.is_ascii_whitespace() => i += 1,
            b'#' => i = text[i..].find('\n').map_or(bytes.len(), |n| i + n),
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i + 2..]
                    .find("*/")
                    .map(|n| i + 2 + n + 2)
                    .ok_or(TsigFileError::UnterminatedComment)?
            }
            b'{' => {
                tokens.push(BindToken::Open);
                i += 1;
            }
            b'}' => {
                tokens.push(BindToken::Close);
                i += 1;
            }
            b';' => {
                tokens.push(BindToken::Semicolon);
                i += 1;
            }
            b'"' => {
                let end = text[i + 1..]
                    .find('"')
                    .map(|n| i + 1 + n)
                    .ok_or(TsigFileError::UnterminatedQuote)?;
                tokens.push(BindToken::Quoted(&text[i + 1..end]));
                i = end + 1;
            }
            _ => {
                let end = text[i..]
                    .find(|c: char| c.is_ascii_whitespace() || "{};\"#".contains(c))
                    .map_or(bytes.len(), |n| i + n);
                tokens.push(BindToken::Word(&text[i..end]));
                i = end;
            }
        }
    }
    Ok(tokens)
}

/// The `secret` of the key named `key_name` among `key NAME { ... };`
/// statements.
fn key_statement_secret<'a>(
    tokens: &[BindToken<'a>],
    key_name: &str,
) -> Result<&'a str, TsigFileError> {
    let wanted = mxkeys_providers::canonical_name(key_name);
    let mut names = Vec::new();
    let mut rest = tokens;
    while !rest.is_empty() {
        let (name, body, after) = match rest {
            [
                BindToken::Word(k),
                BindToken::Word(n) | BindToken::Quoted(n),
                BindToken::Open,
                tail @ ..,
            ] if k.eq_ignore_ascii_case("key") => {
                let close = tail
                    .iter()
                    .position(|t| *t == BindToken::Close)
                    .ok_or_else(|| TsigFileError::NoClosingBrace((*n).to_owned()))?;
                let after = match &tail[close + 1..] {
                    [BindToken::Semicolon, after @ ..] => after,
                    _ => return Err(TsigFileError::NoSemicolon((*n).to_owned())),
                };
                (*n, &tail[..close], after)
            }
            _ => return Err(TsigFileError::NotAKeyStatement),
        };
        names.push(name);
        rest = after;
        if mxkeys_providers::canonical_name(name) != wanted {
            continue;
        }
        // Clauses: a keyword, its value, `;`.
        let mut secret = None;
        for clause in body.split(|t| *t == BindToken::Semicolon) {
            match clause {
                [] => {}
                [
                    BindToken::Word(w),
                    BindToken::Quoted(v) | BindToken::Word(v),
                ] if w.eq_ignore_ascii_case("secret") => secret = Some(*v),
                [BindToken::Word(_), ..] => {}
                _ => {
                    return Err(TsigFileError::BadClause(name.to_owned()));
                }
            }
        }
        return secret.ok_or_else(|| TsigFileError::NoSecret(name.to_owned()));
    }
    Err(TsigFileError::NoSuchKey {
        wanted,
        names: names.into_iter().map(str::to_owned).collect(),
    })
}

/// `mxkeys dns test`: writes a probe TXT record, waits until every
/// authoritative server answers it, removes it, and prints each step with
/// its time. `Err` says which step failed.
pub async fn test(
    cfg: &DnsProvider,
    name: Option<&str>,
    out: &mut impl Write,
) -> Result<(), DnsTestError> {
    // The probe tests where the backend writes: under `delegate_to` that is
    // the delegated zone, so the name is never mapped (no CNAME leads to it).
    let provider = Provider::build(cfg)?.backend;
    let name = match (name, &cfg.delegate_to, &cfg.zone) {
        (Some(n), _, _) => mxkeys_providers::canonical_name(n),
        (None, Some(zone), _) | (None, None, Some(zone)) => format!("_mxkeys-probe.{zone}"),
        (None, None, None) => {
            return Err(DnsTestError::NoZone(cfg.name.clone()));
        }
    };
    let value = format!(
        "mxkeys-probe {} {:08x}",
        crate::rfc3339(crate::now()),
        std::process::id() ^ (crate::now() as u32)
    );
    let expected = [RData::Txt(value.clone())];
    let start = Instant::now();
    let step = |out: &mut dyn Write, what: &str| {
        let _ = writeln!(out, "{:7.2}s  {what}", start.elapsed().as_secs_f64());
    };
    let _ = writeln!(
        out,
        "dns test {} ({}): probe {name} TXT {value:?}",
        cfg.name,
        provider.kind()
    );
    step(out, "writing the probe record");
    provider
        .replace(&name, 60, &expected)
        .await
        .map_err(|source| DnsTestError::Write {
            name: name.clone(),
            source,
        })?;
    let written = start.elapsed();
    step(
        out,
        "written; asking every authoritative server until each answers it",
    );
    let check = propagation(cfg);
    let outcome = check.wait(&name, RecordType::Txt, &expected).await;
    let seen = start.elapsed();
    match &outcome {
        Ok(answers) => {
            for a in answers {
                step(
                    out,
                    &format!(
                        "{} answers {} for {} ({:.2}s after the write)",
                        a.server,
                        a.answer,
                        a.name,
                        a.first_matched_after.as_secs_f64()
                    ),
                );
            }
        }
        Err(e) => step(out, &format!("not seen everywhere: {e}")),
    }
    step(out, "removing the probe record");
    let removed = provider.remove(&name, RecordType::Txt).await;
    step(
        out,
        if removed.is_ok() {
            "removed"
        } else {
            "removal failed"
        },
    );
    outcome.map_err(|source| DnsTestError::Propagation {
        name: name.clone(),
        source,
    })?;
    removed.map_err(|source| DnsTestError::Remove {
        name: name.clone(),
        source,
    })?;
    let _ = writeln!(
        out,
        "ok: [dns.{}] works: write {:.2}s, seen on every authoritative server after {:.2}s, removal {:.2}s",
        cfg.name,
        written.as_secs_f64(),
        (seen - written).as_secs_f64(),
        (start.elapsed() - seen).as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_long_tail_type_with_the_keys_of_its_spec() {
        let readme = include_str!("../README.md");
        let rows = mxkeys_providers::longtail::readme_rows();
        assert!(
            readme.contains(&format!("|---|---|---|\n{rows}")),
            "README's table of DNS providers differs from longtail::SPECS; it should read:\n{rows}"
        );
        let config = include_str!("../config/mxkeys.toml");
        for spec in mxkeys_providers::longtail::SPECS {
            assert!(
                config.contains(&format!(" {}", spec.kind)),
                "config/mxkeys.toml does not list type {}",
                spec.kind
            );
        }
    }

    #[test]
    fn tsig_secret_from_bind_key_file_or_bare_base64() {
        let key =
            "key \"mxkeys\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n";
        assert_eq!(
            tsig_secret_bytes(key, "mxkeys").unwrap().as_slice(),
            b"secret-bytes"
        );
        assert_eq!(
            tsig_secret_bytes("c2VjcmV0LWJ5dGVz\n", "mxkeys")
                .unwrap()
                .as_slice(),
            b"secret-bytes"
        );
        let e = tsig_secret_bytes("not base64 !!", "mxkeys")
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("not base64 !!"),
            "the error must not echo the secret: {e}"
        );
    }

    #[test]
    fn the_word_secret_in_a_key_name_is_not_the_secret_clause() {
        let key = "key \"my-secret-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0LWJ5dGVz\";\n};\n";
        assert_eq!(
            tsig_secret_bytes(key, "my-secret-key").unwrap().as_slice(),
            b"secret-bytes"
        );
        // Unquoted names, comments, and a second key: the named one counts.
        let two = "# made by tsig-keygen\nkey secret.example. { algorithm hmac-sha256; secret \"b3RoZXI=\"; };\n\
                   /* ours */ key \"mxkeys\" { secret \"c2VjcmV0LWJ5dGVz\"; // the secret\n algorithm hmac-sha512; };";
        assert_eq!(
            tsig_secret_bytes(two, "mxkeys").unwrap().as_slice(),
            b"secret-bytes"
        );
        assert_eq!(
            tsig_secret_bytes(two, "Secret.Example").unwrap().as_slice(),
            b"other"
        );
        let e = tsig_secret_bytes(two, "nobody").unwrap_err().to_string();
        assert!(e.contains("\"nobody\"") && e.contains("\"mxkeys\""), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
        let e = tsig_secret_bytes("key \"k\" { algorithm hmac-sha256; };", "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `secret`"), "{e}");
    }
}

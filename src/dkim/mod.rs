//! DKIM keys: generated, published, verified on every authoritative server,
//! signing, drained, revoked and deleted in that order only, with the
//! signer (OpenDKIM, Rspamd, amavis) configured from the keys that sign.
//!
//! [`machine`] decides (pure); this module acts: it performs one step,
//! saves the state (`state_dir/dkim/state.json`), and asks for the next, so
//! a crash anywhere leaves a state the next run continues from. The signer
//! files are rendered from the state after every change of the signing set
//! and the signer is reloaded once at the end of a pass, or earlier when a
//! revocation waits for it (`p=` is published only after a successful
//! reload without the key, and `revoke_settle` later); a failed reload
//! stays owed in the state and is retried on the next pass, 30 s later.
//! Files mxkeys did not write are never written (see [`signer`]), and a
//! record name that already holds a record is never published over: its
//! selector is passed over for the next free one. Under delegation
//! (`delegate_to`), a key is published only once the user's CNAME from its
//! record name to the delegated target is seen on every authoritative
//! server; until then it stays generated and the signing keys sign.
//!
//! Keys the host's signer already signs with (`[[dkim.adopt]]` at the start
//! of every pass, `dkim import`) are adopted by one function, `adopt_one`:
//! record checked, key copied into KEY_DIR, active; a domain whose keys are
//! not all adopted gets no key of mxkeys' own in that pass.

pub mod adopt;
pub mod keydir;
pub mod keys;
pub mod machine;
pub mod record_file;
pub mod signer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use machine::{Book, Key, KeyState, Policy, Step};
use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::{RData, RecordStore, RecordType};
use serde::Serialize;

use crate::config::{Config, Dkim, DkimAlgorithm};
use crate::dns::Provider;

/// Why a DKIM command or step did not complete: one line naming the state
/// file, key file, record, selector or reload command. Never carries key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("no [dkim] table in the configuration")]
    NotConfigured,
    #[error("{0} is not one of [dkim] domains")]
    UnknownDomain(String),
    #[error("dkim lock: {0}")]
    Lock(#[source] std::io::Error),
    /// The key book could not be read or written (its file and why).
    #[error("{0}")]
    State(#[from] crate::state::RecordError),
    #[error(transparent)]
    Dns(#[from] crate::dns::BuildError),
    #[error(transparent)]
    KeyDir(#[from] keydir::KeyDirError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// A key file that does not hold a usable key.
    #[error("{}: {source}", .file.display())]
    KeyFile {
        file: PathBuf,
        #[source]
        source: keys::KeyError,
    },
    #[error("{}: {}", .0.display(), crate::source::io_reason(.1))]
    ReadImport(PathBuf, #[source] std::io::Error),
    #[error("{}: not found", .0.display())]
    KeyFileMissing(PathBuf),
    #[error("{}: the key file is missing or holds another key", .0.display())]
    KeyFileMismatch(PathBuf),
    #[error(transparent)]
    Ownership(#[from] crate::install::OwnershipError),
    #[error(transparent)]
    SignerWrite(#[from] signer::SignerWriteError),
    /// A signer file mxkeys did not write (left alone until `dkim import`).
    #[error("{}", .0.describe())]
    ForeignSignerFile(signer::Decision),
    #[error("{domain}: the next 100 selectors from `{pattern}` all hold records already")]
    SelectorsExhausted { domain: String, pattern: String },
    /// Every free slot of a `{slot}` template holds a record mxkeys did
    /// not write.
    #[error(
        "{domain}: no free {family} slot: {} hold records mxkeys did not write; delete them or change `selector`",
        .names.join(", ")
    )]
    SlotsOccupied {
        domain: String,
        family: &'static str,
        names: Vec<String>,
    },
    /// Under delegation, the user's CNAME for a key's record name is not
    /// in place: the key is not published (the signing keys keep signing).
    #[error("{0}; the new key stays unpublished until it is")]
    Delegation(#[from] crate::delegation::check::DelegationError),
    /// A selector that is not a DNS label (the configuration's reason).
    #[error("{0}")]
    Selector(crate::config::ValueError),
    #[error("selector {selector} was already used for {domain}: selectors are never reused")]
    SelectorReused { selector: String, domain: String },
    #[error("reading {name} before publishing: {source}")]
    ReadRecord {
        name: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    /// Writing a record (`what`: publishing, revoking) failed.
    #[error("{what} {name}: {source}")]
    WriteRecord {
        what: &'static str,
        name: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    #[error("deleting {name}: {source}")]
    DeleteRecord {
        name: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    #[error("{name}: not revoked yet: {} still names it", .file.display())]
    StillNamedBySigner { name: String, file: PathBuf },
    /// `dkim import`: the record is not seen with the key's value.
    #[error(
        "{name} does not publish this key on every authoritative server ({source}); publish `{record}` first"
    )]
    NotPublished {
        name: String,
        record: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    /// `[[dkim.adopt]]`, `dkim import --from`: a layout's bad entry.
    #[error("adopt {0}")]
    Adopt(#[from] adopt::EntryError),
    /// An adopted key's record is another value or absent on an
    /// authoritative server (looked at once).
    #[error("adopt {origin}: {name}: published record does not match the key")]
    RecordMismatch { origin: String, name: String },
    /// The one look at the authoritative servers failed.
    #[error("adopt {origin}: {name}: {source}")]
    AdoptLookup {
        origin: String,
        name: String,
        #[source]
        source: mxkeys_providers::Error,
    },
    /// A key in an environment variable that is unset or holds no key.
    #[error("adopt ${var}: {reason}")]
    AdoptEnv { var: String, reason: String },
    #[error("reload `{action}`: {source}")]
    Reload {
        action: crate::config::Reload,
        #[source]
        source: crate::reload::ReloadError,
    },
    /// `dkim revoke`: the key left the signer's files, but `p=` still
    /// waits for a successful signer reload.
    #[error(
        "{0} left the signer's files but is not revoked yet (p= waits for a successful signer reload; retried by the next pass)"
    )]
    NotRevokedYet(String),
    #[error("no key {selector} for {domain}")]
    NoSuchKey { selector: String, domain: String },
    #[error("{0} is already revoked")]
    AlreadyRevoked(String),
    /// `[dkim] shared`: a command that would change keys on this host alone.
    #[error(
        "`mxkeys {0}` is not available with [dkim] shared = true: only the cluster's leader changes the shared keys (in its DKIM passes)"
    )]
    SharedCommand(&'static str),
    /// `[dkim] shared`: the cluster refused, or holds what cannot be used.
    #[error("shared dkim: {0}")]
    Shared(#[from] crate::cluster::dkim::SharedDkimError),
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn policy(config: &Config, d: &Dkim) -> Policy {
    let host = config.host_id.as_ref().map(|h| h.as_str());
    Policy {
        rotate_every: secs(d.rotate_every),
        lead: secs(d.lead),
        drain: secs(d.drain),
        revoke_hold: secs(d.revoke_hold),
        revoke_settle: secs(d.revoke_settle),
        slots: machine::is_slot_template(&d.selector)
            .then(|| machine::host_template(&d.selector, host)),
    }
}

/// Loads the key book (empty when none yet; an unreadable or corrupt one
/// is an error naming the file).
pub fn load(config: &Config) -> Result<Book, DkimError> {
    let book = config.state_dir.dkim_record().load()?;
    Ok(book.unwrap_or_default())
}

pub(crate) fn save(config: &Config, book: &Book) -> Result<(), DkimError> {
    Ok(config.state_dir.dkim_record().save(book)?)
}

/// The `[dkim]` table, or [`DkimError::NotConfigured`].
fn dkim_table(config: &Config) -> Result<&Dkim, DkimError> {
    config.dkim.as_ref().ok_or(DkimError::NotConfigured)
}

/// Takes the DKIM state's lock.
pub(crate) fn lock(config: &Config) -> Result<crate::state::Lock, DkimError> {
    config.state_dir.lock_dkim().map_err(DkimError::Lock)
}

/// What a pass or command that changes keys starts with: the `[dkim]`
/// table, `only` (a `--domain`) one of its domains, the lock held, KEY_DIR
/// checked, the book loaded.
fn begin<'c>(
    config: &'c Config,
    only: Option<&str>,
) -> Result<(&'c Dkim, crate::state::Lock, Book), DkimError> {
    let d = dkim_table(config)?;
    if let Some(o) = only
        && !d.domains.iter().any(|x| x.as_str() == o)
    {
        return Err(DkimError::UnknownDomain(o.to_owned()));
    }
    let lock = lock(config)?;
    keydir::open_key_dir(&d.key_dir)?;
    let book = load(config)?;
    Ok((d, lock, book))
}

/// The provider and propagation check `[dkim] dns` names.
fn dns(config: &Config, d: &Dkim) -> Result<(Provider, Propagation), DkimError> {
    match config.dns.get(&d.dns) {
        Some(cfg) => Ok((Provider::build(cfg)?, crate::dns::propagation(cfg))),
        None => Ok((Provider::manual(), Propagation::default())),
    }
}

/// How long one pass waits for a key's record on every authoritative
/// server: the `propagation_timeout` of the provider `[dkim] dns` names.
pub fn propagation_timeout(config: &Config) -> Option<std::time::Duration> {
    let d = config.dkim.as_ref()?;
    Some(
        config
            .dns
            .get(&d.dns)
            .map_or(Propagation::default().timeout, |c| c.propagation_timeout),
    )
}

/// What a pass did, for printing.
#[derive(Debug, Default)]
pub struct Pass {
    pub done: Vec<String>,
    /// Keys whose record is not yet seen everywhere.
    pub waiting: Vec<String>,
    pub signer_changed: bool,
    /// What failed (rendered where the pass is printed or counted).
    pub errors: Vec<DkimError>,
}

fn today() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!("[year][month][day]"))
        .unwrap_or_else(|_| "00000000".to_owned())
}

/// Runs the state machine until nothing more is due now: `mxkeys dkim
/// rotate` (`force`: start a successor now), and a pass of `run`/`renew`.
/// With `[dkim] shared = true` the pass goes through the cluster
/// ([`crate::cluster::dkim`]): this host acts only while it leads job
/// `dkim`, and otherwise follows the stored key set.
pub async fn rotate(config: &Config, only: Option<&str>, force: bool) -> Result<Pass, DkimError> {
    if dkim_table(config)?.shared {
        return crate::cluster::dkim::rotate(config, only, force).await;
    }
    rotate_local(config, only, force).await
}

/// [`rotate`] on this host's own book, whatever `shared` says (the
/// cluster's leader runs it).
pub(crate) async fn rotate_local(
    config: &Config,
    only: Option<&str>,
    force: bool,
) -> Result<Pass, DkimError> {
    let (d, _lock, mut book) = begin(config, only)?;
    // A run stopped between `p=` and forgetting its request left it behind.
    if machine::forget_finished_revocations(&mut book) {
        save(config, &book)?;
    }
    let (provider, propagation) = dns(config, d)?;
    let policy = policy(config, d);
    let wanted = wanted(d);
    let forced: BTreeSet<(String, DkimAlgorithm)> = if force {
        wanted
            .iter()
            .filter(|(dom, _)| only.is_none_or(|o| o == dom))
            .cloned()
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut pass = Pass::default();
    let mut waiting = BTreeSet::new();
    let mut forced_left = forced;
    install_clean(d, &book);
    // The keys the host's signer already signs with first: a domain whose
    // keys are not all adopted gets no key of mxkeys' own.
    let blocked = adopt_entries(config, d, &mut book, &propagation, &mut pass).await;
    for domain in &blocked {
        tracing::info!(
            "dkim: {domain}: no key of mxkeys' own while a key [[dkim.adopt]] names is not adopted"
        );
    }
    // With [[dkim.adopt]], the signer's own files are taken over once
    // every key they name is held (as `dkim import` does).
    let take_over = !d.adopt.is_empty();
    let mut wanted = wanted;
    wanted.sort_by_key(|(domain, _)| blocked.contains(domain));
    // Keep the signer in step with the state even when nothing moves (a
    // crash may have happened between a change and the signer's files, or
    // before the reload).
    pass.signer_changed |= book.signer_reload_pending;
    pass.signer_changed |= update_signer(config, d, &mut book, take_over)?;
    // A revocation waits for the signer to be reloaded without the key:
    // when nothing else is due and a reload is owed, it is done now (once
    // a pass) and the pass goes on if it succeeded.
    let mut reload_failed = false;
    for _ in 0..10_000 {
        let now = crate::now();
        // Generate steps come after every step of existing keys, and
        // blocked domains' groups come last in `wanted`: one for a blocked
        // domain means nothing else is due.
        let Some(step) = machine::next_step(&book, &wanted, &policy, now, &forced_left, &waiting)
            .filter(|s| !matches!(s, Step::Generate { domain, .. } if blocked.contains(domain)))
        else {
            if book.signer_reload_pending && !reload_failed {
                if reload_signer(config, d, &mut book, &mut pass)? {
                    continue;
                }
                reload_failed = true;
            }
            // A revocation asked for waits for the reload to settle: in
            // this pass (seconds), not the next one.
            if !reload_failed && let Some(at) = settling_revocation(&book, &policy, now) {
                let wait = u64::try_from(at - now).unwrap_or(0);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            break;
        };
        if let Step::Generate { domain, algorithm } = &step {
            forced_left.remove(&(domain.clone(), *algorithm));
        }
        let signs_changed = matches!(step, Step::Activate(_) | Step::Drain(_));
        match perform(config, d, &mut book, &step, &provider, &propagation).await {
            Ok(Some(line)) => {
                tracing::info!("dkim: {line}");
                pass.done.push(line);
            }
            Ok(None) => {}
            Err(StepError::Waiting(i, why)) => {
                let k = &book.keys[i];
                let line = format!(
                    "{} not yet on every authoritative server: {why}",
                    k.record_name()
                );
                tracing::warn!("dkim: {line}");
                pass.waiting.push(line);
                waiting.insert(i);
            }
            Err(StepError::Failed(e)) => {
                tracing::error!("dkim: {e}");
                pass.errors.push(e);
                break;
            }
        }
        if signs_changed {
            pass.signer_changed |= update_signer(config, d, &mut book, take_over)?;
        }
    }
    if book.signer_reload_pending && !reload_failed {
        reload_signer(config, d, &mut book, &mut pass)?;
    }
    // A group due (or forced) with both slots held waits: said once a pass.
    let now = crate::now();
    for (domain, algorithm) in &wanted {
        let forced = forced_left.contains(&(domain.clone(), *algorithm));
        if let Some(why) = machine::slot_wait(&book, domain, *algorithm, &policy, now, forced) {
            tracing::info!("dkim: {why}");
            if forced {
                pass.waiting.push(why);
            }
        }
    }
    record_file::write(d, &book);
    Ok(pass)
}

/// A follower's signer kept in step with `book` (mirrored from the
/// cluster): its files written when they differ, and the reload done when
/// one is owed. Returns whether the files changed.
pub(crate) fn follow_signer(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    pass: &mut Pass,
) -> Result<bool, DkimError> {
    let changed = update_signer(config, d, book, !d.adopt.is_empty())?;
    if book.signer_reload_pending {
        reload_signer(config, d, book, pass)?;
    }
    Ok(changed)
}

/// Runs every `[dkim] reload` action; when all succeed, the owed reload
/// is cleared and saved. Returns whether all succeeded (a failure is in
/// `pass.errors`, and the reload stays owed for the next pass).
fn reload_signer(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    pass: &mut Pass,
) -> Result<bool, DkimError> {
    let mut reloaded = true;
    for action in &d.reload {
        match crate::reload::run(action, d.reload_timeout) {
            Ok(()) => tracing::info!("dkim: reload `{action}`: done"),
            Err(source) => {
                reloaded = false;
                let e = DkimError::Reload {
                    action: action.clone(),
                    source,
                };
                tracing::error!("dkim: {e}");
                pass.errors.push(e);
            }
        }
    }
    if reloaded {
        book.signer_reload_pending = false;
        book.signer_reloaded_at = Some(crate::now());
        save(config, book)?;
    }
    Ok(reloaded)
}

/// When a revocation asked for (`dkim revoke`) becomes due, if that is
/// later than `now` but within `revoke_settle` (it waits only for the
/// last signer reload to settle).
fn settling_revocation(book: &Book, policy: &Policy, now: i64) -> Option<i64> {
    if book.signer_reload_pending {
        return None;
    }
    book.keys
        .iter()
        .filter(|k| k.state == KeyState::Draining && book.revoke_now.contains(&k.record_name()))
        .map(|k| machine::revoke_at(book, k, policy))
        .filter(|at| *at > now && *at <= now + policy.revoke_settle)
        .min()
}

/// Writes the signer's files from the state when they differ and
/// [`signer::decide`] allows it, recording first that a reload is owed.
/// Returns whether anything was written; a signer file not written by
/// mxkeys is an error naming it (nothing is written). `adopt`: `mxkeys dkim
/// import` may take over such files.
fn update_signer(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    adopt: bool,
) -> Result<bool, DkimError> {
    let (files, decision) = signer_decision(d, book, adopt);
    match decision {
        signer::Decision::Write => {}
        foreign @ signer::Decision::Foreign { .. } => {
            return Err(DkimError::ForeignSignerFile(foreign));
        }
        withhold @ signer::Decision::Withhold { .. } => {
            if signer::differs(&files) {
                tracing::info!("dkim: {}", withhold.describe());
            }
            return Ok(false);
        }
    }
    // Key files in the signer's own form first: the configuration names them.
    for k in book.keys.iter().filter(|k| k.state == KeyState::Active) {
        if let Some(path) = signer::derived_key_file(d.signer, k) {
            let pem =
                keydir::read(&k.file)?.ok_or_else(|| DkimError::KeyFileMissing(k.file.clone()))?;
            let derived = keys::rspamd_ed25519(&pem).map_err(|source| DkimError::KeyFile {
                file: k.file.clone(),
                source,
            })?;
            if !keydir::read(&path).is_ok_and(|old| old.is_some_and(|o| *o == *derived)) {
                write_key(d, &path, &derived)?;
            }
        }
    }
    if !signer::differs(&files) {
        return Ok(false);
    }
    if !book.signer_reload_pending {
        book.signer_reload_pending = true;
        save(config, book)?;
    }
    Ok(signer::write(&files)?)
}

/// The signer's files rendered from `book`, and whether they may be
/// written (reads the files on disk).
fn signer_decision(
    d: &Dkim,
    book: &Book,
    adopt: bool,
) -> (Vec<(PathBuf, String)>, signer::Decision) {
    let files = signer::render(d.signer, &d.signer_dir, book);
    let on_disk: Vec<Option<Vec<u8>>> = files.iter().map(|(p, _)| std::fs::read(p).ok()).collect();
    let decision = signer::decide(d.signer, &files, &on_disk, book, &domains(d), adopt);
    (files, decision)
}

/// The signer file on disk that still names key `k` (its key file, or
/// the signer's own copy of it), if any.
fn named_by_signer(d: &Dkim, book: &Book, k: &Key) -> Option<PathBuf> {
    let file = signer::derived_key_file(d.signer, k).unwrap_or_else(|| k.file.clone());
    let file = file.display().to_string();
    signer::render(d.signer, &d.signer_dir, book)
        .into_iter()
        .map(|(path, _)| path)
        .find(|path| {
            std::fs::read(path).is_ok_and(|old| String::from_utf8_lossy(&old).contains(&file))
        })
}

/// The configured domains, as the state names them.
fn domains(d: &Dkim) -> Vec<String> {
    d.domains.iter().map(|x| x.as_str().to_owned()).collect()
}

/// The configured groups: every domain with every algorithm.
pub(crate) fn wanted(d: &Dkim) -> Vec<(String, DkimAlgorithm)> {
    d.domains
        .iter()
        .flat_map(|dom| {
            d.algorithms
                .iter()
                .map(move |a| (dom.as_str().to_owned(), *a))
        })
        .collect()
}

/// The line saying a signer file was not written by mxkeys (so it is left
/// alone until `mxkeys dkim import`), for `dkim status` and `check`.
pub fn signer_notice(config: &Config) -> Option<String> {
    let d = config.dkim.as_ref()?;
    let book = load(config).ok()?;
    match signer_decision(d, &book, false).1 {
        foreign @ signer::Decision::Foreign { .. } => Some(foreign.describe()),
        _ => None,
    }
}

/// What the daemon's health and metrics need from the DKIM state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The signer's files changed and its reload has not succeeded yet.
    pub reload_pending: bool,
    /// A signer file not written by mxkeys blocks its passes.
    pub foreign_signer_file: bool,
}

/// The DKIM state's [`Health`] (default when there is no `[dkim]`).
pub fn health(config: &Config) -> Health {
    if config.dkim.is_none() {
        return Health::default();
    }
    Health {
        reload_pending: load(config).is_ok_and(|b| b.signer_reload_pending),
        foreign_signer_file: signer_notice(config).is_some(),
    }
}

/// Removes temporary files killed runs left beside keys and signer files.
fn install_clean(d: &Dkim, book: &Book) {
    crate::install::clean_stale_temps(&d.signer_dir);
    let dirs: BTreeSet<PathBuf> = book
        .keys
        .iter()
        .filter_map(|k| k.file.parent().map(Path::to_path_buf))
        .collect();
    for dir in dirs {
        keydir::clean_temps(&dir);
    }
}

enum StepError {
    /// A verification did not see the record everywhere yet.
    Waiting(usize, mxkeys_providers::Error),
    Failed(DkimError),
}

/// Performs one step and saves the state. `Ok(Some(line))` says what was done.
async fn perform(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    step: &Step,
    provider: &Provider,
    propagation: &Propagation,
) -> Result<Option<String>, StepError> {
    let now = crate::now();
    let line = match step {
        Step::Generate { domain, algorithm } => {
            generate_key(config, d, book, domain, *algorithm, provider, now).await?
        }
        Step::Publish(i) => publish_key(config, d, book, *i, provider, propagation).await?,
        Step::Verify(i) => verify_key(config, book, *i, propagation).await?,
        Step::Activate(i) => activate_key(config, book, *i, now)?,
        Step::Drain(i) => drain_key(config, book, *i, now)?,
        Step::Revoke(i) => revoke_key(config, d, book, *i, provider).await?,
        Step::Delete(i) => delete_key(config, book, *i, provider).await?,
    };
    Ok(Some(line))
}

impl From<DkimError> for StepError {
    fn from(e: DkimError) -> Self {
        StepError::Failed(e)
    }
}

/// [`Step::Generate`]: a new key under a free selector, the selector
/// recorded as used before the key file is written.
async fn generate_key(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    domain: &str,
    algorithm: DkimAlgorithm,
    provider: &Provider,
    now: i64,
) -> Result<String, DkimError> {
    let new = keys::generate(algorithm)?;
    let policy = policy(config, d);
    let selector = if policy.slots.is_some() {
        // A slot is held by its key until deleted: no used-selector record.
        free_slot(book, &policy, domain, algorithm, provider).await?
    } else {
        let used = book.used_selectors.get(domain).cloned().unwrap_or_default();
        let host = config.host_id.as_ref().map(|h| h.as_str());
        let selector = free_selector(d, host, domain, algorithm, &used, provider).await?;
        book.used_selectors
            .entry(domain.to_owned())
            .or_default()
            .insert(selector.clone());
        selector
    };
    let file = d.key_dir.join(domain).join(format!("{selector}.pem"));
    // The selector is recorded as used before its file exists: it is
    // never handed out twice, whatever happens next.
    book.keys.push(Key {
        domain: domain.to_owned(),
        algorithm,
        selector: selector.clone(),
        file: file.clone(),
        record: new.record.clone(),
        state: KeyState::Generated,
        since: now,
        created_at: now,
        verified_at: None,
        activated_at: None,
        entered: [(KeyState::Generated, now)].into(),
    });
    save(config, book)?;
    write_key(d, &file, &new.pem)?;
    Ok(format!("{domain}: new {} key {selector}", algorithm.name()))
}

/// [`Step::Publish`]: the key's record, unless its name already holds one
/// mxkeys did not write (the key is then dropped and its selector passed
/// over). Under delegation the user's CNAME from the record name to its
/// target is checked on every authoritative server first: without it the
/// key stays generated ([`DkimError::Delegation`]).
async fn publish_key(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    i: usize,
    provider: &Provider,
    propagation: &Propagation,
) -> Result<String, DkimError> {
    ensure_key_file(d, &mut book.keys[i])?;
    save(config, book)?;
    if let Some(zone) = provider.delegate_to() {
        let name = book.keys[i].record_name();
        let target =
            crate::delegation::target(&name, zone).map_err(|source| DkimError::WriteRecord {
                what: "publishing",
                name: name.clone(),
                source,
            })?;
        crate::delegation::check::cname(propagation, &name, &target).await?;
    }
    let value = book.keys[i].record.clone();
    // The name was free when the selector was chosen; if a record
    // appeared since (or an interrupted run chose it before this
    // check existed), the key is dropped, never published over: the
    // next pass step makes one under the next free selector.
    let name = book.keys[i].record_name();
    let existing = existing_records(provider, &name).await?;
    if !machine::name_is_free(&existing, Some(&value)) {
        let k = book.keys.remove(i);
        save(config, book)?;
        keydir::remove(&k.file)?;
        return Ok(format!(
            "{name} already holds a record mxkeys did not write: selector {} passed over",
            k.selector
        ));
    }
    write_record(
        config,
        d,
        book,
        i,
        provider,
        value,
        KeyState::Published,
        "publishing",
    )
    .await?;
    Ok(format!("published {}", book.keys[i].record_name()))
}

/// [`Step::Verify`]: the record seen on every authoritative server, or
/// [`StepError::Waiting`].
async fn verify_key(
    config: &Config,
    book: &mut Book,
    i: usize,
    propagation: &Propagation,
) -> Result<String, StepError> {
    let k = &book.keys[i];
    match propagation
        .wait(
            &k.record_name(),
            RecordType::Txt,
            &[RData::Txt(k.record.clone())],
        )
        .await
    {
        Ok(_) => {
            book.keys[i].verified_at = Some(crate::now());
            save(config, book)?;
            Ok(format!(
                "verified {} on every authoritative server",
                book.keys[i].record_name()
            ))
        }
        Err(e) => Err(StepError::Waiting(i, e)),
    }
}

/// [`Step::Activate`]: the key signs.
fn activate_key(config: &Config, book: &mut Book, i: usize, now: i64) -> Result<String, DkimError> {
    let k = &mut book.keys[i];
    k.enter(KeyState::Active, now);
    k.activated_at = Some(now);
    save(config, book)?;
    Ok(format!(
        "{}: {} signs",
        book.keys[i].domain, book.keys[i].selector
    ))
}

/// [`Step::Drain`]: the key stops signing; its record stays.
fn drain_key(config: &Config, book: &mut Book, i: usize, now: i64) -> Result<String, DkimError> {
    let k = &mut book.keys[i];
    k.enter(KeyState::Draining, now);
    save(config, book)?;
    Ok(format!(
        "{}: {} no longer signs; its record stays while mail drains",
        book.keys[i].domain, book.keys[i].selector
    ))
}

/// [`Step::Revoke`]: `p=` published, only once the signer's files no
/// longer name the key.
async fn revoke_key(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    i: usize,
    provider: &Provider,
) -> Result<String, DkimError> {
    // p= only once the signer's files no longer name the key (the
    // machine already waited for their reload).
    if let Some(file) = named_by_signer(d, book, &book.keys[i]) {
        return Err(DkimError::StillNamedBySigner {
            name: book.keys[i].record_name(),
            file,
        });
    }
    let value = keys::revoked_record(book.keys[i].algorithm);
    // The request is forgotten in the same save that records the key
    // revoked: a run stopped in between must not leave it owed (a later
    // key in the same slot would inherit it).
    let name = book.keys[i].record_name();
    let asked = book.revoke_now.remove(&name);
    let written = write_record(
        config,
        d,
        book,
        i,
        provider,
        value,
        KeyState::Revoked,
        "revoking",
    )
    .await;
    if let Err(e) = written {
        if asked && book.keys[i].state != KeyState::Revoked {
            book.revoke_now.insert(name);
        }
        return Err(e);
    }
    Ok(format!("revoked {name} (p=)"))
}

/// [`Step::Delete`]: the record (when it was published), the key file and
/// the signer's copy of it, then the key from the state.
async fn delete_key(
    config: &Config,
    book: &mut Book,
    i: usize,
    provider: &Provider,
) -> Result<String, DkimError> {
    let k = book.keys[i].clone();
    if k.state != KeyState::Generated {
        provider
            .remove(&k.record_name(), RecordType::Txt)
            .await
            .map_err(|source| DkimError::DeleteRecord {
                name: k.record_name(),
                source,
            })?;
    }
    // The signer's own copy (written when the key signed) goes too.
    for file in [k.file.clone(), signer::rspamd_key_file(&k.file)] {
        keydir::remove(&file)?;
    }
    book.keys.remove(i);
    save(config, book)?;
    Ok(format!("deleted {} and its key", k.record_name()))
}

/// A new selector for `domain` whose record name holds nothing in DNS
/// (read through the provider): a name already holding a record (another
/// host's key, a live record after `state_dir` was lost) is passed over,
/// never published over. Providers that cannot read (manual) are trusted.
async fn free_selector(
    d: &Dkim,
    host: Option<&str>,
    domain: &str,
    algorithm: DkimAlgorithm,
    used: &BTreeSet<String>,
    provider: &Provider,
) -> Result<String, DkimError> {
    let date = today();
    let template = machine::host_template(&d.selector, host);
    let mut occupied = BTreeSet::new();
    loop {
        let selector = machine::free_selector(&template, algorithm, &date, used, &occupied);
        let name = format!("{selector}._domainkey.{domain}");
        // DNS unreachable now: the selector is taken as it is; Publish
        // reads the name again before writing (and fails until it can).
        let existing = match existing_records(provider, &name).await {
            Ok(existing) => existing,
            Err(e) => {
                tracing::debug!("dkim: {e}");
                return Ok(selector);
            }
        };
        if machine::name_is_free(&existing, None) {
            return Ok(selector);
        }
        tracing::warn!(
            "dkim: {name} already holds a record mxkeys did not write ({}): selector {selector} passed over",
            existing.join(", ")
        );
        occupied.insert(selector);
        if occupied.len() >= 100 {
            return Err(DkimError::SelectorsExhausted {
                domain: domain.to_owned(),
                pattern: d.selector.clone(),
            });
        }
    }
}

/// The slot for a new key of `domain` (a `{slot}` template): the first
/// slot no key of the book holds ([`machine::free_slots`]) whose record
/// name holds nothing in DNS either; a slot holding a record mxkeys did not
/// write is passed over, never published over.
async fn free_slot(
    book: &Book,
    policy: &Policy,
    domain: &str,
    algorithm: DkimAlgorithm,
    provider: &Provider,
) -> Result<String, DkimError> {
    let slots = machine::free_slots(book, domain, algorithm, policy);
    for selector in &slots {
        let name = format!("{selector}._domainkey.{domain}");
        // DNS unreachable now: Publish reads the name again before writing.
        let existing = match existing_records(provider, &name).await {
            Ok(existing) => existing,
            Err(e) => {
                tracing::debug!("dkim: {e}");
                return Ok(selector.clone());
            }
        };
        if machine::name_is_free(&existing, None) {
            return Ok(selector.clone());
        }
        tracing::warn!(
            "dkim: {name} already holds a record mxkeys did not write ({}): slot {selector} passed over",
            existing.join(", ")
        );
    }
    Err(DkimError::SlotsOccupied {
        domain: domain.to_owned(),
        family: algorithm.family(),
        names: slots
            .iter()
            .map(|s| format!("{s}._domainkey.{domain}"))
            .collect(),
    })
}

/// What `name` holds in DNS (TXT values, and a CNAME where the provider
/// can tell), read through the provider; empty for a provider that cannot
/// read (manual).
async fn existing_records(provider: &Provider, name: &str) -> Result<Vec<String>, DkimError> {
    let mut existing = Vec::new();
    match provider.read(name, RecordType::Txt).await {
        // A provider returns only the type asked: every value is a TXT.
        Ok(values) => existing.extend(values.into_iter().filter_map(|v| match v {
            RData::Txt(t) => Some(t),
            _ => None,
        })),
        Err(mxkeys_providers::Error::Unsupported(_)) => {}
        Err(source) => {
            return Err(DkimError::ReadRecord {
                name: name.to_owned(),
                source,
            });
        }
    }
    // A CNAME (delegated signing) where the provider can tell.
    if let Ok(values) = provider.read(name, RecordType::Cname).await {
        existing.extend(values.iter().map(|v| format!("CNAME {v}")));
    }
    Ok(existing)
}

/// Writes key `i`'s record with `value`, then moves the key to `state`
/// and saves: the record is in place before the state says so.
#[allow(clippy::too_many_arguments)]
async fn write_record(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    i: usize,
    provider: &Provider,
    value: String,
    state: KeyState,
    what: &'static str,
) -> Result<(), DkimError> {
    let name = book.keys[i].record_name();
    provider
        .replace(&name, d.ttl, &[RData::Txt(value)])
        .await
        .map_err(|source| DkimError::WriteRecord {
            what,
            name: name.clone(),
            source,
        })?;
    book.keys[i].enter(state, crate::now());
    save(config, book)
}

/// Writes a key file under its own name, never over another key, through
/// the descriptor of its domain directory (see [`keydir`]): created mode
/// 0700, and with `key_owner` or `key_group` (the signer runs as that user
/// or group and must enter it) theirs, mode 0700 for an owner alone, 0750
/// with a group. KEY_DIR itself stays root's.
pub(crate) fn write_key(d: &Dkim, path: &Path, pem: &str) -> Result<(), DkimError> {
    let owner = key_ownership(d)?;
    Ok(keydir::write(path, pem.as_bytes(), d.key_mode, owner)?)
}

/// The owner and group `key_owner` and `key_group` name.
fn key_ownership(d: &Dkim) -> Result<crate::install::Ownership, crate::install::OwnershipError> {
    let target = crate::config::Target {
        name: "dkim".into(),
        domains: Vec::new(),
        slots: Vec::new(),
        key_mode: d.key_mode,
        owner: d.key_owner.clone(),
        group: d.key_group.clone(),
        reloads: Vec::new(),
        reload_timeout: d.reload_timeout,
        verify: Vec::new(),
        verify_timeout: d.reload_timeout,
        strict_permissions: false,
        dane: None,
    };
    crate::install::ownership(&target)
}

/// Before publishing: the key file must exist and hold the key the record
/// names. A generated key whose file was lost (a crash right after its
/// selector was recorded) gets a new key under the same, never published,
/// selector.
fn ensure_key_file(d: &Dkim, k: &mut Key) -> Result<(), DkimError> {
    let matches = keydir::read(&k.file)
        .ok()
        .flatten()
        .and_then(|pem| keys::inspect(&pem).ok())
        .is_some_and(|(_, record)| record == k.record);
    if matches {
        return Ok(());
    }
    if k.state != KeyState::Generated {
        return Err(DkimError::KeyFileMismatch(k.file.clone()));
    }
    let new = keys::generate(k.algorithm)?;
    write_key(d, &k.file, &new.pem)?;
    k.record = new.record;
    Ok(())
}

/// `mxkeys dkim records`: the records mxkeys wants published now, as
/// zone-file lines.
pub fn records(config: &Config) -> Result<String, DkimError> {
    let d = dkim_table(config)?;
    let book = load(config)?;
    let mut out = String::new();
    for k in &book.keys {
        let Some(value) = record_file::published_value(k) else {
            continue;
        };
        out.push_str(&mxkeys_providers::manual::zone_lines(
            &k.record_name(),
            d.ttl,
            &[RData::Txt(value)],
        ));
    }
    Ok(out)
}

/// One key in `mxkeys dkim status`.
#[derive(Debug, Serialize)]
pub struct KeyStatus {
    pub domain: String,
    pub selector: String,
    pub algorithm: &'static str,
    pub state: String,
    pub since: String,
    pub next: Option<String>,
    pub next_at: Option<String>,
    pub file: PathBuf,
}

/// A key and its next transition (when, and what), if one is scheduled.
pub type Scheduled = (Key, Option<(i64, &'static str)>);

/// Every key in the book, by domain then age, with its next transition
/// as the machine schedules it.
pub fn timeline(config: &Config) -> Result<Vec<Scheduled>, DkimError> {
    let d = dkim_table(config)?;
    let book = load(config)?;
    let policy = policy(config, d);
    let mut keys: Vec<&Key> = book.keys.iter().collect();
    keys.sort_by(|a, b| (&a.domain, a.created_at).cmp(&(&b.domain, b.created_at)));
    Ok(keys
        .into_iter()
        .map(|k| (k.clone(), machine::next_transition(&book, k, &policy)))
        .collect())
}

/// `mxkeys dkim status`: every key, per domain.
pub fn status(config: &Config) -> Result<Vec<KeyStatus>, DkimError> {
    Ok(timeline(config)?
        .into_iter()
        .map(|(k, next)| KeyStatus {
            domain: k.domain.clone(),
            selector: k.selector.clone(),
            algorithm: k.algorithm.name(),
            state: k.state.to_string(),
            since: crate::rfc3339(k.since),
            next: next.map(|(_, what)| what.to_owned()),
            next_at: next.map(|(t, _)| crate::rfc3339(t)),
            file: k.file.clone(),
        })
        .collect())
}

/// When the next DKIM pass is due (the daemon's DKIM wake-up): see
/// [`machine::next_due`]; soon while a signer reload is owed.
pub fn next_due(config: &Config) -> Option<i64> {
    let d = config.dkim.as_ref()?;
    let book = load(config).ok()?;
    let now = crate::now();
    let due = machine::next_due(&book, &wanted(d), &policy(config, d), now);
    // Shared: a follower learns of the leader's changes only by looking.
    if d.shared {
        return Some(due.unwrap_or(i64::MAX).min(now + SHARED_POLL));
    }
    let due = due?;
    // A signer file not written by mxkeys stops every pass until `dkim
    // import`: look again every few minutes, not every 30 s.
    if matches!(
        signer_decision(d, &book, false).1,
        signer::Decision::Foreign { .. }
    ) {
        return Some(due.max(now + FOREIGN_RECHECK));
    }
    // A domain held back by a `[[dkim.adopt]]` key not adopted yet (its
    // record not published, or another) keeps a Generate step due: look
    // again every few minutes, not every 30 s with the same error line.
    if due <= now && !d.adopt.is_empty() && !without_active_key(d, &book).is_empty() {
        return Some(now + FOREIGN_RECHECK);
    }
    Some(due)
}

/// How often a `shared` host looks at the cluster's DKIM book, in seconds.
const SHARED_POLL: i64 = 60;

/// How often the daemon looks again at a signer file not written by
/// mxkeys, or at a `[[dkim.adopt]]` key not adopted yet, in seconds.
const FOREIGN_RECHECK: i64 = 300;

/// `[dkim] shared`: commands that change keys on one host alone would
/// make it disagree with the cluster's book, and a follower never writes
/// DNS: refused.
fn refuse_shared(d: &Dkim, command: &'static str) -> Result<(), DkimError> {
    if d.shared {
        return Err(DkimError::SharedCommand(command));
    }
    Ok(())
}

/// `mxkeys dkim import`: adopts an existing private key as active, once its
/// record is seen with exactly its value on every authoritative server.
pub async fn import(
    config: &Config,
    domain: &str,
    selector: &str,
    file: &Path,
) -> Result<String, DkimError> {
    let d = dkim_table(config)?;
    refuse_shared(d, "dkim import")?;
    if !d.domains.iter().any(|x| x.as_str() == domain) {
        return Err(DkimError::UnknownDomain(domain.to_owned()));
    }
    // It goes into file paths and the signer's configuration.
    crate::config::selector_label(selector).map_err(DkimError::Selector)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(file).map_err(|e| DkimError::ReadImport(file.to_owned(), e))?,
    );
    keys::inspect(&pem).map_err(|source| DkimError::KeyFile {
        file: file.to_owned(),
        source,
    })?;
    let _lock = lock(config)?;
    keydir::open_key_dir(&d.key_dir)?;
    let mut book = load(config)?;
    let (_, propagation) = dns(config, d)?;
    let candidate = Candidate {
        domain: domain.to_owned(),
        selector: selector.to_owned(),
        origin: file.display().to_string(),
        pem,
    };
    let imported = adopt_one(config, d, &mut book, &candidate, Check::Wait, &propagation).await?;
    take_over_signer(config, d, &mut book)?;
    Ok(imported)
}

/// One key to adopt: what it signs, where it came from (a file, or
/// `$VAR`: named in every line about it), and its PEM text.
pub struct Candidate {
    pub domain: String,
    pub selector: String,
    pub origin: String,
    pub pem: zeroize::Zeroizing<String>,
}

/// How a key's published record is checked before it is adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Wait until every authoritative server answers it (`dkim import
    /// --domain --selector`).
    Wait,
    /// One look at every authoritative server: each must answer one
    /// record publishing the key ([`adopt::record_publishes`]), anything
    /// else is a mismatch (`[[dkim.adopt]]`, `dkim import --from`).
    Once,
    /// No lookup: the record to publish is logged as a zone-file line.
    None,
}

impl From<crate::config::AdoptCheck> for Check {
    fn from(c: crate::config::AdoptCheck) -> Self {
        match c {
            crate::config::AdoptCheck::Dns => Check::Once,
            crate::config::AdoptCheck::None => Check::None,
        }
    }
}

/// Whether a key of the book holds `selector` for `domain` (under a slot
/// template the only record of a selector in use).
fn held(book: &Book, domain: &str, selector: &str) -> bool {
    book.keys
        .iter()
        .any(|k| k.domain == domain && k.selector == selector)
}

/// Adopts one existing key as active, the one way `dkim import` and
/// `[[dkim.adopt]]` both do it: the record checked (`check`), the key
/// copied into KEY_DIR with its final mode, its selector recorded as
/// used, the active key of its group (if any) draining, and the book
/// saved. The signer's files are left to [`take_over_signer`] or the pass.
async fn adopt_one(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    c: &Candidate,
    check: Check,
    propagation: &Propagation,
) -> Result<String, DkimError> {
    let domain = c.domain.as_str();
    let selector = c.selector.as_str();
    if !d.domains.iter().any(|x| x.as_str() == domain) {
        return Err(DkimError::UnknownDomain(domain.to_owned()));
    }
    crate::config::selector_label(selector).map_err(DkimError::Selector)?;
    let (algorithm, record) = keys::inspect(&c.pem).map_err(|source| DkimError::KeyFile {
        file: PathBuf::from(&c.origin),
        source,
    })?;
    if book
        .used_selectors
        .get(domain)
        .is_some_and(|u| u.contains(selector))
        || held(book, domain, selector)
    {
        return Err(DkimError::SelectorReused {
            selector: selector.to_owned(),
            domain: domain.to_owned(),
        });
    }
    let name = format!("{selector}._domainkey.{domain}");
    let expected = [RData::Txt(record.clone())];
    match check {
        Check::Wait => {
            propagation
                .wait(&name, RecordType::Txt, &expected)
                .await
                .map_err(|source| DkimError::NotPublished {
                    name: name.clone(),
                    record: record.clone(),
                    source,
                })?;
        }
        Check::Once => {
            let seen = propagation
                .observe(&name, RecordType::Txt)
                .await
                .map_err(|source| DkimError::AdoptLookup {
                    origin: c.origin.clone(),
                    name: name.clone(),
                    source,
                })?;
            let publishes = |values: &[RData]| match values {
                [RData::Txt(value)] => adopt::record_publishes(value, &record),
                _ => false,
            };
            if seen.is_empty() || !seen.iter().all(|o| publishes(&o.values)) {
                return Err(DkimError::RecordMismatch {
                    origin: c.origin.clone(),
                    name,
                });
            }
        }
        Check::None => {
            let line = mxkeys_providers::manual::zone_lines(&name, d.ttl, &expected);
            tracing::info!(
                "dkim: adopt {}: adopted without a DNS check; the record to publish: {}",
                c.origin,
                line.trim_end()
            );
        }
    }
    let now = crate::now();
    let dest = d.key_dir.join(domain).join(format!("{selector}.pem"));
    write_key(d, &dest, &c.pem)?;
    book.used_selectors
        .entry(domain.to_owned())
        .or_default()
        .insert(selector.to_owned());
    for k in book
        .keys
        .iter_mut()
        .filter(|k| machine::in_group(k, domain, algorithm) && k.state == KeyState::Active)
    {
        k.enter(KeyState::Draining, now);
    }
    book.keys.push(Key {
        domain: domain.to_owned(),
        algorithm,
        selector: selector.to_owned(),
        file: dest,
        record,
        state: KeyState::Active,
        since: now,
        created_at: now,
        verified_at: (check != Check::None).then_some(now),
        activated_at: Some(now),
        entered: [(KeyState::Active, now)].into(),
    });
    save(config, book)?;
    Ok(format!(
        "{domain}: imported {selector} ({}) as the active key",
        algorithm.name()
    ))
}

/// After `dkim import`: the admin's signer files are taken over (written
/// and the signer reloaded) once every key they name is held; until then
/// they stay as they are.
fn take_over_signer(config: &Config, d: &Dkim, book: &mut Book) -> Result<(), DkimError> {
    if let (_, foreign @ signer::Decision::Foreign { .. }) = signer_decision(d, book, true) {
        tracing::warn!("dkim: {}", foreign.describe());
        return Ok(());
    }
    if update_signer(config, d, book, true)? || book.signer_reload_pending {
        for action in &d.reload {
            crate::reload::run(action, d.reload_timeout).map_err(|source| DkimError::Reload {
                action: action.clone(),
                source,
            })?;
        }
        book.signer_reload_pending = false;
        save(config, book)?;
    }
    Ok(())
}

/// The keys one `[[dkim.adopt]]` entry (or `dkim import --from`) names:
/// the readers of [`adopt`] for layouts, the variable for `env`.
fn adopt_candidates(from: &crate::config::AdoptFrom) -> (Vec<Candidate>, Vec<DkimError>) {
    use crate::config::AdoptFrom;
    let found = match from {
        AdoptFrom::Opendkim(p) => adopt::opendkim(p),
        AdoptFrom::Rspamd(p) => adopt::rspamd(p),
        AdoptFrom::Amavis(p) => adopt::amavis(p),
        AdoptFrom::Dms(p) => adopt::dms(p),
        AdoptFrom::Dir { dir, domain } => adopt::genkey_dir(dir, domain.as_ref()),
        AdoptFrom::Key {
            file,
            domain,
            selector,
        } => adopt::key_file(file, domain, selector),
        AdoptFrom::Env {
            var,
            domain,
            selector,
        } => {
            let env_error = |reason: String| DkimError::AdoptEnv {
                var: var.clone(),
                reason,
            };
            let value =
                std::env::var_os(var).map(|v| zeroize::Zeroizing::new(v.into_encoded_bytes()));
            let result = match value.as_ref().map(|v| std::str::from_utf8(v)) {
                None => Err(env_error("not set".to_owned())),
                Some(Err(_)) => Err(env_error("not text".to_owned())),
                Some(Ok(text)) => adopt::pem_text(text).map_err(|e| env_error(e.to_string())),
            };
            return match result {
                Ok(pem) => (
                    vec![Candidate {
                        domain: domain.as_str().to_owned(),
                        selector: selector.clone(),
                        origin: format!("${var}"),
                        pem,
                    }],
                    Vec::new(),
                ),
                Err(e) => (Vec::new(), vec![e]),
            };
        }
    };
    let mut errors: Vec<DkimError> = found.errors.into_iter().map(DkimError::Adopt).collect();
    let mut candidates = Vec::new();
    for f in found.found {
        match adopt::read_key(&f.key_file) {
            Ok(pem) => candidates.push(Candidate {
                domain: f.domain.as_str().to_owned(),
                selector: f.selector,
                origin: f.key_file.display().to_string(),
                pem,
            }),
            Err(reason) => errors.push(DkimError::Adopt(adopt::EntryError {
                file: f.key_file,
                entry: None,
                reason,
            })),
        }
    }
    (candidates, errors)
}

/// The start of every pass: each key `[[dkim.adopt]]` names that mxkeys
/// does not hold yet (its selector never used for its domain) is adopted
/// with [`adopt_one`]. A key for a domain not in `domains` is one line and
/// skipped; a failure is one error in `pass`, repeated every pass. Returns
/// the domains whose keys are not all adopted: they get no key of
/// mxkeys' own this pass (a second key beside the signer's).
async fn adopt_entries(
    config: &Config,
    d: &Dkim,
    book: &mut Book,
    propagation: &Propagation,
    pass: &mut Pass,
) -> BTreeSet<String> {
    let mut blocked = BTreeSet::new();
    for entry in &d.adopt {
        let (candidates, errors) = adopt_candidates(&entry.from);
        if !errors.is_empty() {
            // Which domains a bad entry was for is not known: every
            // domain still without an active key waits.
            blocked.extend(
                entry_domain(&entry.from)
                    .map(|x| vec![x])
                    .unwrap_or_else(|| without_active_key(d, book)),
            );
        }
        for e in errors {
            tracing::error!("dkim: {e}");
            pass.errors.push(e);
        }
        for c in candidates {
            if !d.domains.iter().any(|x| x.as_str() == c.domain) {
                tracing::warn!(
                    "dkim: adopt {}: {} is not one of [dkim] domains: skipped",
                    c.origin,
                    c.domain
                );
                continue;
            }
            // Used before, or held by a key of the book (a slot's key
            // is not recorded as used: the signer's files name it).
            if book
                .used_selectors
                .get(&c.domain)
                .is_some_and(|u| u.contains(&c.selector))
                || held(book, &c.domain, &c.selector)
            {
                continue;
            }
            match adopt_one(config, d, book, &c, entry.check.into(), propagation).await {
                Ok(line) => {
                    tracing::info!("dkim: {line}");
                    pass.done.push(line);
                }
                Err(e) => {
                    tracing::error!("dkim: {e}");
                    pass.errors.push(e);
                    blocked.insert(c.domain.clone());
                }
            }
        }
    }
    blocked
}

/// The one domain an entry names, when it names one.
fn entry_domain(from: &crate::config::AdoptFrom) -> Option<String> {
    use crate::config::AdoptFrom;
    match from {
        AdoptFrom::Dir {
            domain: Some(domain),
            ..
        }
        | AdoptFrom::Key { domain, .. }
        | AdoptFrom::Env { domain, .. } => Some(domain.as_str().to_owned()),
        _ => None,
    }
}

/// The configured domains with no active key.
fn without_active_key(d: &Dkim, book: &Book) -> Vec<String> {
    domains(d)
        .into_iter()
        .filter(|x| {
            !book
                .keys
                .iter()
                .any(|k| k.state == KeyState::Active && &k.domain == x)
        })
        .collect()
}

/// One key `dkim import --from` looked at: its line, and whether it was
/// adopted (or held already).
pub struct ImportLine {
    pub line: String,
    pub adopted: bool,
}

/// `mxkeys dkim import --from LAYOUT PATH`: every key the layout names
/// (only `only`'s when given) adopted with [`adopt_one`] after one look at
/// the authoritative servers (`check` none: none), one line per key; then
/// the signer's files are taken over once every key they name is held.
pub async fn import_from(
    config: &Config,
    from: &crate::config::AdoptFrom,
    only: Option<&str>,
    check: crate::config::AdoptCheck,
) -> Result<Vec<ImportLine>, DkimError> {
    let (d, _lock, mut book) = begin(config, only)?;
    refuse_shared(d, "dkim import --from")?;
    let (_, propagation) = dns(config, d)?;
    let (candidates, errors) = adopt_candidates(from);
    let mut lines: Vec<ImportLine> = errors
        .into_iter()
        .map(|e| ImportLine {
            line: format!("not adopted: {e}"),
            adopted: false,
        })
        .collect();
    for c in candidates {
        if only.is_some_and(|o| o != c.domain) {
            continue;
        }
        let name = format!("{}._domainkey.{}", c.selector, c.domain);
        let held = book
            .keys
            .iter()
            .any(|k| k.domain == c.domain && k.selector == c.selector);
        if held {
            lines.push(ImportLine {
                line: format!("{name}: held already"),
                adopted: true,
            });
            continue;
        }
        lines.push(
            match adopt_one(config, d, &mut book, &c, check.into(), &propagation).await {
                Ok(line) => ImportLine {
                    line: format!("adopted {name} from {}: {line}", c.origin),
                    adopted: true,
                },
                Err(e @ (DkimError::RecordMismatch { .. } | DkimError::AdoptLookup { .. })) => {
                    ImportLine {
                        line: format!("not adopted: {e}"),
                        adopted: false,
                    }
                }
                Err(e) => ImportLine {
                    line: format!("not adopted: adopt {}: {name}: {e}", c.origin),
                    adopted: false,
                },
            },
        );
    }
    take_over_signer(config, d, &mut book)?;
    Ok(lines)
}

/// `mxkeys dkim revoke`: emergency, in a safe order. The key leaves the
/// signer's files (a verified successor of its family signs at once,
/// whatever the lead says), the signer is reloaded, and only once every
/// reload action succeeded is `p=` published: DNS never calls a key
/// revoked while the signer may still sign with it. A failed reload leaves
/// the revocation owed (saved; the next pass reloads, then publishes
/// `p=`). Revoking the only key of a configured family that signs for the
/// domain is refused without `force` ([`RevokeError::OnlyKey`]). Whatever is
/// missing then (a successor) is made by an ordinary pass with a zero lead.
pub async fn revoke(
    config: &Config,
    domain: &str,
    selector: &str,
    force: bool,
) -> Result<Pass, RevokeError> {
    let d = dkim_table(config)?;
    refuse_shared(d, "dkim revoke")?;
    {
        let _lock = lock(config)?;
        let mut book = load(config)?;
        let i = book
            .keys
            .iter()
            .position(|k| k.domain == domain && k.selector == selector)
            .ok_or_else(|| DkimError::NoSuchKey {
                selector: selector.to_owned(),
                domain: domain.to_owned(),
            })?;
        let name = book.keys[i].record_name();
        let family = if book.keys[i].algorithm.is_rsa() {
            "RSA"
        } else {
            "Ed25519"
        };
        match machine::request_revoke(&mut book, &wanted(d), i, crate::now(), force) {
            Ok(()) => {}
            Err(machine::RevokeRefused::AlreadyRevoked) => {
                return Err(DkimError::AlreadyRevoked(name).into());
            }
            Err(machine::RevokeRefused::OnlyKey) => {
                return Err(RevokeError::OnlyKey {
                    name,
                    family,
                    domain: domain.to_owned(),
                });
            }
        }
        save(config, &book)?;
        update_signer(config, d, &mut book, false)?;
    }
    // The pass reloads the signer (now without the key), publishes p= only
    // once that succeeded, then makes whatever is missing.
    let mut urgent = config.clone();
    if let Some(dk) = urgent.dkim.as_mut() {
        dk.lead = Duration::ZERO;
    }
    let mut pass = rotate(&urgent, Some(domain), false).await?;
    let book = load(config)?;
    if book
        .revoke_now
        .contains(&format!("{selector}._domainkey.{domain}"))
    {
        let e = DkimError::NotRevokedYet(format!("{selector}._domainkey.{domain}"));
        tracing::error!("dkim: {e}");
        pass.errors.push(e);
    }
    Ok(pass)
}

/// Why `mxkeys dkim revoke` did not run.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The key is the only one of its family signing for its domain and
    /// `--force` was not given (exit status 2: nothing was changed).
    #[error(
        "refused: {name} is the only {family} key signing for {domain}; \
         revoking it leaves {domain} without an {family} signature until a new key is \
         published and verified: add --force to revoke it anyway"
    )]
    OnlyKey {
        name: String,
        /// `RSA` or `Ed25519`.
        family: &'static str,
        domain: String,
    },
    #[error(transparent)]
    Failed(#[from] DkimError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dkim_problems_render_one_line_naming_their_subject() {
        let table = [
            (
                RevokeError::OnlyKey {
                    name: "s1._domainkey.example.com".into(),
                    family: "RSA",
                    domain: "example.com".into(),
                }
                .to_string(),
                "refused: s1._domainkey.example.com is the only RSA key signing for example.com; \
                 revoking it leaves example.com without an RSA signature until a new key is \
                 published and verified: add --force to revoke it anyway",
            ),
            (
                RevokeError::from(DkimError::AlreadyRevoked(
                    "s1._domainkey.example.com".into(),
                ))
                .to_string(),
                "s1._domainkey.example.com is already revoked",
            ),
            (
                DkimError::NotRevokedYet("s1._domainkey.example.com".into()).to_string(),
                "s1._domainkey.example.com left the signer's files but is not revoked yet \
                 (p= waits for a successful signer reload; retried by the next pass)",
            ),
            (
                DkimError::SelectorReused {
                    selector: "s1".into(),
                    domain: "example.com".into(),
                }
                .to_string(),
                "selector s1 was already used for example.com: selectors are never reused",
            ),
            (
                DkimError::KeyFileMismatch("/k/example.com/s1.pem".into()).to_string(),
                "/k/example.com/s1.pem: the key file is missing or holds another key",
            ),
            (
                DkimError::SlotsOccupied {
                    domain: "example.com".into(),
                    family: "rsa",
                    names: vec![
                        "mx1r._domainkey.example.com".into(),
                        "mx2r._domainkey.example.com".into(),
                    ],
                }
                .to_string(),
                "example.com: no free rsa slot: mx1r._domainkey.example.com, \
                 mx2r._domainkey.example.com hold records mxkeys did not write; delete them or \
                 change `selector`",
            ),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
            assert!(!got.contains('\n'), "{got}");
        }
    }
}

//! One DKIM key set for every host of a cluster (`[dkim] shared = true`).
//!
//! The rule: only the leader of job `dkim` acts on keys and DNS. Each pass
//! it first takes the cluster's book if another host stored one since its
//! own last write, runs the normal DKIM pass ([`crate::dkim`]: generate,
//! publish, verify on every authoritative server, sign, drain, revoke,
//! delete), then stores the book (`dkim/book`, JSON of
//! [`machine::Book`]) and every key whose private half may still be needed
//! (`dkim/key/SELECTOR.DOMAIN`, sealed for that name), each write fenced
//! by its leadership and the book's a compare-and-set on the revision it
//! last read or wrote. A refused write stops the pass with one error line:
//! another host leads now and its book wins.
//!
//! Every other host follows: it never writes DNS nor runs a machine step;
//! it reads the book, opens every key the book says is generated,
//! published or signing (each must open under its name and match the
//! record the book names, else nothing of this book is installed), writes
//! the key files that differ into its own `key_dir` (final mode,
//! atomically), saves the book with its paths moved to its `key_dir`, and
//! writes its signer's files from it, reloading the signer when they
//! changed. The signer's files are rendered from the book's active keys
//! only, so a key the book calls draining, revoked or deleted leaves the
//! follower's signer at its first pass that sees it, and its key file is
//! removed once the signer no longer names it; a key not in the book never
//! signs.
//!
//! A follower cut off from the cluster keeps its last book and signer
//! configuration (mail stays signed) and every pass fails with one line.
//! The risk, stated plainly: cut off for longer than `drain`, it may still
//! sign with a key the leader has since drained and then revoked (`p=`
//! published), so its mail fails DKIM until it reaches the cluster again;
//! `status` shows the error of every failed pass meanwhile. The leader
//! does not wait for followers before revoking.
//!
//! A leader whose store was refused (it was paused past its lease, or lost
//! the cluster mid-pass) takes the cluster's book at its next pass and
//! drops what it did but could not store: a key it generated then is
//! forgotten, and a record it published for that key stays in DNS until
//! removed by hand (never one the book names: selectors are never reused).
//!
//! The functions above [`pass`] are pure (what is stored, what a follower
//! installs, what is removed); [`pass`] and below act.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::seal::{SealError, SealKey};
use super::{ClusterError, Expect, Leadership, SharedStore, Written};
use crate::config::{Config, Dkim};
use crate::dkim::machine::{Book, Key, KeyState};
use crate::dkim::{self, DkimError, Pass, keydir, keys, signer};

/// The job whose leader rotates the shared keys.
pub const JOB: &str = "dkim";
/// Where the book is stored (relative to the prefix).
pub const BOOK: &str = "dkim/book";
/// Where the sealed keys are stored (relative to the prefix).
pub const KEYS: &str = "dkim/key/";

/// Why a shared DKIM pass stopped, in one line without key material.
#[derive(Debug, thiserror::Error)]
pub enum SharedDkimError {
    #[error(transparent)]
    Store(#[from] ClusterError),
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The leadership this pass acted under is gone (a paused former
    /// leader): it stores nothing more.
    #[error("{key}: not stored: this host no longer leads job dkim; the pass stops")]
    Fenced { key: String },
    /// The value changed since it was read: another host stored a book.
    #[error("{key}: not stored: another host changed it since it was read; the pass stops")]
    Conflict { key: String },
    /// The book names a key the cluster does not hold, or holds another.
    #[error("{key}: {reason}; the book is not installed")]
    BadKey { key: String, reason: String },
    /// The stored book is not a book, or names what the configuration
    /// does not allow.
    #[error("dkim/book: {0}; not installed")]
    BadBook(String),
}

// ---------------------------------------------------------------------------
// Pure: what is stored, what a follower installs
// ---------------------------------------------------------------------------

/// Whether a key's private half is kept in the cluster and on followers:
/// while it may sign (generated, published, active). A draining key never
/// signs again; its record alone stays.
pub fn keeps_private_key(state: KeyState) -> bool {
    matches!(
        state,
        KeyState::Generated | KeyState::Published | KeyState::Active
    )
}

/// The cluster key holding `k`'s sealed private key (also its seal name).
pub fn key_name(k: &Key) -> String {
    format!("{KEYS}{}.{}", k.selector, k.domain)
}

/// The book as stored: this host's signer bookkeeping left out.
pub fn for_cluster(book: &Book) -> Book {
    Book {
        signer_reload_pending: false,
        signer_reloaded_at: None,
        ..book.clone()
    }
}

/// The book a host installs from the cluster's `shared`: key files in its
/// own `key_dir` (`KEY_DIR/DOMAIN/SELECTOR.pem`, as the leader names
/// them), its own signer bookkeeping kept from `local`.
pub fn localize(shared: &Book, local: &Book, key_dir: &Path) -> Book {
    let mut book = shared.clone();
    for k in &mut book.keys {
        k.file = key_dir.join(&k.domain).join(format!("{}.pem", k.selector));
    }
    book.signer_reload_pending = local.signer_reload_pending;
    book.signer_reloaded_at = local.signer_reloaded_at;
    book
}

/// The stored book's entries a configuration refuses: a domain it does
/// not list, a selector that is not one DNS label (it goes into paths).
pub fn refusal(book: &Book, domains: &[String]) -> Option<String> {
    book.keys.iter().find_map(|k| {
        if !domains.contains(&k.domain) {
            Some(format!("{} is not one of [dkim] domains", k.domain))
        } else {
            crate::config::selector_label(&k.selector)
                .err()
                .map(|e| e.to_string())
        }
    })
}

/// The key files `old` kept that `new` does not keep (the PEM file and
/// the signer's own copy of it): removed once the signer no longer names
/// them.
pub fn files_to_remove(old: &Book, new: &Book) -> Vec<PathBuf> {
    let kept: BTreeSet<&Path> = new
        .keys
        .iter()
        .filter(|k| keeps_private_key(k.state))
        .map(|k| k.file.as_path())
        .collect();
    old.keys
        .iter()
        .filter(|k| !kept.contains(k.file.as_path()))
        .flat_map(|k| [k.file.clone(), signer::rspamd_key_file(&k.file)])
        .collect()
}

/// The stored sealed keys (`listed`, full cluster keys) `book` no longer
/// keeps: deleted after the book is stored.
pub fn stale_keys(book: &Book, listed: &[String]) -> Vec<String> {
    let kept: BTreeSet<String> = book
        .keys
        .iter()
        .filter(|k| keeps_private_key(k.state))
        .map(key_name)
        .collect();
    listed
        .iter()
        .filter(|k| !kept.contains(*k))
        .cloned()
        .collect()
}

/// What this host remembers of the cluster's book: the revision its own
/// book was last equal to (read or written). Another revision in the
/// cluster means another host stored a book since.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub revision: i64,
}

// ---------------------------------------------------------------------------
// Effects
// ---------------------------------------------------------------------------

/// One DKIM pass of a `shared` `[dkim]` on this host, through `store`:
/// the leader's normal pass and its results stored, or a follower's
/// mirror of the stored book. `only` and `force` are `dkim rotate`'s and
/// apply to the leader only.
pub async fn pass<S: SharedStore>(
    config: &Config,
    store: &S,
    seal: &SealKey,
    only: Option<&str>,
    force: bool,
) -> Result<Pass, DkimError> {
    let d = config.dkim.as_ref().ok_or(DkimError::NotConfigured)?;
    let lead = match &config.host_id {
        Some(host) => super::campaign_if_free(store, JOB, host.as_str()).await,
        None => store.campaign(JOB).await,
    }
    .map_err(shared)?;
    let Some(lead) = lead else {
        let mut pass = Pass::default();
        follow(config, d, store, seal, &mut pass).await?;
        return Ok(pass);
    };
    // A book another host stored since this host's last write (it led
    // before, or this host followed) is where this pass continues from.
    let mut pass = Pass::default();
    follow(config, d, store, seal, &mut pass).await?;
    let mut done = dkim::rotate_local(config, only, force).await?;
    done.done.splice(0..0, pass.done);
    done.signer_changed |= pass.signer_changed;
    done.errors.extend(pass.errors);
    if let Err(e) = store_book(config, d, store, seal, &lead).await {
        tracing::error!("dkim: {e}");
        done.errors.push(e);
    }
    Ok(done)
}

fn shared(e: impl Into<SharedDkimError>) -> DkimError {
    DkimError::Shared(e.into())
}

fn synced_record(config: &Config) -> crate::state::Record<Synced> {
    config.state_dir.dkim_cluster_record()
}

/// Installs the cluster's book when its revision is not the one this host
/// last saw: key files first, then the book, then the signer's files (and
/// a reload), then the key files no longer kept.
async fn follow<S: SharedStore>(
    config: &Config,
    d: &Dkim,
    store: &S,
    seal: &SealKey,
    pass: &mut Pass,
) -> Result<(), DkimError> {
    let _lock = dkim::lock(config)?;
    keydir::open_key_dir(&d.key_dir)?;
    let mut local = dkim::load(config)?;
    let synced = synced_record(config).load()?.unwrap_or_default();
    let Some(stored) = store.get(BOOK).await.map_err(shared)? else {
        return Ok(());
    };
    if stored.revision == synced.revision {
        // Nothing new; the signer still follows the book (an owed reload),
        // and key files a failed reload kept go now.
        pass.signer_changed |= dkim::follow_signer(config, d, &mut local, pass)?;
        if !local.signer_reload_pending {
            for file in files_to_remove(&local, &local) {
                keydir::remove(&file)?;
            }
        }
        return Ok(());
    }
    let theirs: Book = serde_json::from_slice(&stored.value)
        .map_err(|e| shared(SharedDkimError::BadBook(format!("not a DKIM book ({e})"))))?;
    let domains: Vec<String> = d.domains.iter().map(|x| x.as_str().to_owned()).collect();
    if let Some(reason) = refusal(&theirs, &domains) {
        return Err(shared(SharedDkimError::BadBook(reason)));
    }
    let mut book = localize(&theirs, &local, &d.key_dir);
    // Every key it keeps opened and checked before anything is written.
    let mut pems = Vec::new();
    for k in book.keys.iter().filter(|k| keeps_private_key(k.state)) {
        let name = key_name(k);
        let bad = |reason: &str| {
            shared(SharedDkimError::BadKey {
                key: name.clone(),
                reason: reason.to_owned(),
            })
        };
        let value = store
            .get(&name)
            .await
            .map_err(shared)?
            .ok_or_else(|| bad("not in the cluster"))?;
        let text = std::str::from_utf8(&value.value).map_err(|_| bad("not a sealed value"))?;
        let pem = seal.open(&name, text).map_err(shared)?;
        let pem = zeroize::Zeroizing::new(
            String::from_utf8(pem.to_vec()).map_err(|_| bad("not a PEM key"))?,
        );
        match keys::inspect(&pem) {
            Ok((_, record)) if record == k.record => {}
            _ => return Err(bad("does not hold the key the book's record names")),
        }
        pems.push((k.file.clone(), pem));
    }
    for (file, pem) in &pems {
        if !keydir::read(file).is_ok_and(|old| old.is_some_and(|o| *o == **pem)) {
            dkim::write_key(d, file, pem)?;
        }
    }
    dkim::save(config, &book)?;
    synced_record(config).save(&Synced {
        revision: stored.revision,
    })?;
    pass.done.push(format!(
        "took the cluster's DKIM book (revision {})",
        stored.revision
    ));
    tracing::info!(
        "dkim: took the cluster's DKIM book (revision {})",
        stored.revision
    );
    pass.signer_changed |= dkim::follow_signer(config, d, &mut book, pass)?;
    // Key files no longer kept go once the signer does not name them
    // (its files rewritten and reloaded); else the next pass retries.
    if !book.signer_reload_pending {
        for file in files_to_remove(&local, &book) {
            keydir::remove(&file)?;
        }
    }
    Ok(())
}

/// Stores the leader's book and keys, fenced: keys first (a follower
/// reading the book finds them), then the book, then the sealed keys it no
/// longer keeps are deleted.
async fn store_book<S: SharedStore>(
    config: &Config,
    d: &Dkim,
    store: &S,
    seal: &SealKey,
    lead: &Leadership,
) -> Result<(), DkimError> {
    let _lock = dkim::lock(config)?;
    keydir::open_key_dir(&d.key_dir)?;
    let book = dkim::load(config)?;
    for k in book.keys.iter().filter(|k| keeps_private_key(k.state)) {
        let Some(pem) = keydir::read(&k.file)? else {
            if k.state == KeyState::Generated {
                // Lost before it was published: Publish makes it again.
                continue;
            }
            return Err(DkimError::KeyFileMissing(k.file.clone()));
        };
        let name = key_name(k);
        let expect = match store.get(&name).await.map_err(shared)? {
            None => Expect::Absent,
            Some(s) => {
                let same = std::str::from_utf8(&s.value)
                    .ok()
                    .and_then(|t| seal.open(&name, t).ok())
                    .is_some_and(|p| *p == *pem.as_bytes());
                if same {
                    continue;
                }
                Expect::Revision(s.revision)
            }
        };
        let sealed = seal.seal(&name, pem.as_bytes()).map_err(shared)?;
        written(
            store
                .put_fenced(lead, &name, sealed.as_bytes(), expect)
                .await,
            &name,
        )?;
    }
    let json = serde_json::to_vec(&for_cluster(&book))
        .map_err(|e| shared(SharedDkimError::BadBook(e.to_string())))?;
    let synced = synced_record(config).load()?.unwrap_or_default();
    let current = store.get(BOOK).await.map_err(shared)?;
    let revision = match current {
        Some(s) if s.value == json && s.revision == synced.revision => s.revision,
        other => {
            let expect = match other {
                None => Expect::Absent,
                Some(_) => Expect::Revision(synced.revision),
            };
            written(store.put_fenced(lead, BOOK, &json, expect).await, BOOK)?
        }
    };
    synced_record(config).save(&Synced { revision })?;
    let listed: Vec<String> = store
        .list(KEYS)
        .await
        .map_err(shared)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for key in stale_keys(&book, &listed) {
        store.delete(&key).await.map_err(shared)?;
    }
    Ok(())
}

/// A fenced write's revision, or the error that stops the pass.
fn written(w: Result<Written, ClusterError>, key: &str) -> Result<i64, DkimError> {
    match w.map_err(shared)? {
        Written::Stored(rev) => Ok(rev),
        Written::Fenced => Err(shared(SharedDkimError::Fenced {
            key: key.to_owned(),
        })),
        Written::Conflict => Err(shared(SharedDkimError::Conflict {
            key: key.to_owned(),
        })),
    }
}

/// The process's cluster connection, made at the first shared pass.
static BACKEND: tokio::sync::OnceCell<super::Backend> = tokio::sync::OnceCell::const_new();

/// A shared pass as `dkim rotate`, `run` and `renew` call it: the
/// configured cluster (connected once per process) and sealing key.
pub async fn rotate(config: &Config, only: Option<&str>, force: bool) -> Result<Pass, DkimError> {
    let (Some(cluster), Some(host)) = (config.cluster.as_ref(), config.host_id.as_ref()) else {
        return Err(shared(ClusterError::Config(
            "[dkim] shared = true needs [cluster] and host_id".into(),
        )));
    };
    let seal = SealKey::load(&cluster.shared_key_file).map_err(shared)?;
    let store = BACKEND
        .get_or_try_init(|| super::Backend::connect(cluster, host))
        .await
        .map_err(shared)?;
    pass(config, store, &seal, only, force).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::memory::Memory;
    use crate::config::DkimAlgorithm;
    use std::os::unix::fs::PermissionsExt as _;

    fn key(selector: &str, state: KeyState, file: &str) -> Key {
        Key {
            domain: "example.test".into(),
            algorithm: DkimAlgorithm::Ed25519,
            selector: selector.into(),
            file: PathBuf::from(file),
            record: format!("v=DKIM1; k=ed25519; p={selector}"),
            state,
            since: 0,
            created_at: 0,
            verified_at: None,
            activated_at: None,
            entered: Default::default(),
        }
    }

    #[test]
    fn only_keys_that_may_still_sign_keep_their_private_half() {
        for (state, kept) in [
            (KeyState::Generated, true),
            (KeyState::Published, true),
            (KeyState::Active, true),
            (KeyState::Draining, false),
            (KeyState::Revoked, false),
        ] {
            assert_eq!(keeps_private_key(state), kept, "{state:?}");
        }
    }

    #[test]
    fn a_follower_takes_the_book_with_its_own_paths_and_its_own_reload_bookkeeping() {
        let shared = Book {
            keys: vec![key(
                "s1",
                KeyState::Active,
                "/leader/keys/example.test/s1.pem",
            )],
            signer_reload_pending: true,
            signer_reloaded_at: Some(5),
            ..Book::default()
        };
        let local = Book {
            signer_reloaded_at: Some(9),
            ..Book::default()
        };
        let mine = localize(&shared, &local, Path::new("/f/keys"));
        assert_eq!(
            mine.keys[0].file,
            PathBuf::from("/f/keys/example.test/s1.pem")
        );
        assert!(!mine.signer_reload_pending);
        assert_eq!(mine.signer_reloaded_at, Some(9));
        let stored = for_cluster(&shared);
        assert!(!stored.signer_reload_pending && stored.signer_reloaded_at.is_none());
    }

    #[test]
    fn a_stored_book_naming_another_domain_or_a_path_as_selector_is_refused() {
        let domains = vec!["example.test".to_owned()];
        let ok = Book {
            keys: vec![key("s1", KeyState::Active, "/k/example.test/s1.pem")],
            ..Book::default()
        };
        assert_eq!(refusal(&ok, &domains), None);
        let mut other = ok.clone();
        other.keys[0].domain = "evil.test".into();
        assert!(refusal(&other, &domains).is_some());
        let mut path = ok.clone();
        path.keys[0].selector = "../../etc".into();
        assert!(refusal(&path, &domains).is_some());
    }

    #[test]
    fn keys_no_longer_kept_leave_the_follower_and_the_cluster() {
        let old = Book {
            keys: vec![
                key("s1", KeyState::Active, "/k/example.test/s1.pem"),
                key("s2", KeyState::Published, "/k/example.test/s2.pem"),
            ],
            ..Book::default()
        };
        let new = Book {
            keys: vec![
                key("s1", KeyState::Draining, "/k/example.test/s1.pem"),
                key("s2", KeyState::Active, "/k/example.test/s2.pem"),
            ],
            ..Book::default()
        };
        assert_eq!(
            files_to_remove(&old, &new),
            vec![
                PathBuf::from("/k/example.test/s1.pem"),
                PathBuf::from("/k/example.test/s1.rspamd")
            ]
        );
        assert!(files_to_remove(&new, &new).len() == 2, "draining: gone");
        let listed = vec![
            "dkim/key/s1.example.test".to_owned(),
            "dkim/key/s2.example.test".to_owned(),
        ];
        assert_eq!(
            stale_keys(&new, &listed),
            vec!["dkim/key/s1.example.test".to_owned()]
        );
    }

    /// One host: a configuration in `dir` (state, keys, signer, reload log).
    fn host(dir: &Path, id: &str) -> Config {
        let base = dir.join(id);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let seal = dir.join("seal.key");
        std::fs::write(&seal, format!("{}\n", "A".repeat(43) + "=")).unwrap();
        let text = format!(
            "state_dir = \"state\"\n\
             host_id = \"{id}\"\n\
             [cluster]\n\
             backend = \"etcd\"\n\
             endpoints = [\"http://127.0.0.1:1\"]\n\
             shared_key_file = \"{seal}\"\n\
             [dns.m]\n\
             type = \"manual\"\n\
             [dkim]\n\
             dns = \"m\"\n\
             shared = true\n\
             domains = [\"example.test\"]\n\
             algorithms = [\"rsa-2048\"]\n\
             key_dir = \"keys\"\n\
             signer = \"opendkim\"\n\
             signer_dir = \"signer\"\n\
             reload = [\"sh\", \"-c\", \"[ ! -e {fail} ] && echo reload >> {log}\"]\n",
            seal = seal.display(),
            log = base.join("reloads.log").display(),
            fail = base.join("fail").display(),
        );
        let path = base.join("mxkeys.toml");
        std::fs::write(&path, &text).unwrap();
        Config::parse(&path, &text, &crate::config::Host::current()).unwrap()
    }

    /// The leader's book: one RSA key (the one algorithm configured),
    /// made now, its file written.
    fn leader_book(config: &Config, selector: &str, state: KeyState) -> Book {
        let d = config.dkim.as_ref().unwrap();
        keydir::open_key_dir(&d.key_dir).unwrap();
        let new = keys::generate(DkimAlgorithm::Rsa2048).unwrap();
        let now = crate::now();
        let mut k = Key {
            algorithm: DkimAlgorithm::Rsa2048,
            since: now,
            created_at: now,
            verified_at: Some(now),
            activated_at: Some(now),
            ..key(selector, state, "")
        };
        k.file = d
            .key_dir
            .join("example.test")
            .join(format!("{selector}.pem"));
        k.record = new.record;
        dkim::write_key(d, &k.file, &new.pem).unwrap();
        let book = Book {
            keys: vec![k],
            ..Book::default()
        };
        dkim::save(config, &book).unwrap();
        book
    }

    fn seal_key() -> SealKey {
        SealKey::from_bytes(&[0u8; 32]).unwrap()
    }

    #[tokio::test]
    async fn a_follower_signs_with_the_leaders_key_and_drops_it_when_the_book_drains_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host(dir.path(), "a"), host(dir.path(), "b"));
        let sa = Memory::new("a");
        let sb = sa.session("b");
        let seal = seal_key();
        let lead = sa.campaign(JOB).await.unwrap().unwrap();
        let book = leader_book(&a, "s1", KeyState::Active);
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &lead)
            .await
            .unwrap();
        let stored = sa.get(&key_name(&book.keys[0])).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored.value).contains("PRIVATE"));

        let first = pass(&b, &sb, &seal, None, false).await.unwrap();
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        let bd = b.dkim.as_ref().unwrap();
        let mine = bd.key_dir.join("example.test/s1.pem");
        assert_eq!(
            std::fs::read(&mine).unwrap(),
            std::fs::read(&book.keys[0].file).unwrap()
        );
        assert_eq!(
            std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let table = std::fs::read_to_string(bd.signer_dir.join("KeyTable")).unwrap();
        assert!(table.contains(&mine.display().to_string()), "{table}");
        let reloads = || {
            std::fs::read_to_string(dir.path().join("b/reloads.log"))
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(reloads(), 1);

        // A follower looks at the cluster again within a minute, whatever
        // its book says is due next.
        let due = dkim::next_due(&b).unwrap();
        assert!(due <= crate::now() + 60, "{due}");

        // Nothing new: nothing written, no reload.
        pass(&b, &sb, &seal, None, false).await.unwrap();
        assert_eq!(reloads(), 1);

        // The leader drains it: the follower's signer drops it at once.
        let mut drained = dkim::load(&a).unwrap();
        drained.keys[0].state = KeyState::Draining;
        dkim::save(&a, &drained).unwrap();
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &lead)
            .await
            .unwrap();
        assert!(
            sa.get(&key_name(&book.keys[0])).await.unwrap().is_none(),
            "a draining key's private half leaves the cluster"
        );
        pass(&b, &sb, &seal, None, false).await.unwrap();
        let table = std::fs::read_to_string(bd.signer_dir.join("KeyTable")).unwrap_or_default();
        assert!(!table.contains("s1"), "{table}");
        assert_eq!(reloads(), 2);
        assert!(!mine.exists(), "its key file is gone");
    }

    #[tokio::test]
    async fn a_follower_keeps_a_dropped_keys_file_until_its_signer_reloaded_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host(dir.path(), "a"), host(dir.path(), "b"));
        let sa = Memory::new("a");
        let sb = sa.session("b");
        let seal = seal_key();
        let lead = sa.campaign(JOB).await.unwrap().unwrap();
        leader_book(&a, "s1", KeyState::Active);
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &lead)
            .await
            .unwrap();
        pass(&b, &sb, &seal, None, false).await.unwrap();
        let bd = b.dkim.as_ref().unwrap();
        let mine = bd.key_dir.join("example.test/s1.pem");
        assert!(mine.exists());

        let mut drained = dkim::load(&a).unwrap();
        drained.keys[0].state = KeyState::Draining;
        dkim::save(&a, &drained).unwrap();
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &lead)
            .await
            .unwrap();
        let flag = dir.path().join("b/fail");
        std::fs::write(&flag, "").unwrap();
        let failed = pass(&b, &sb, &seal, None, false).await.unwrap();
        assert_eq!(failed.errors.len(), 1, "{:?}", failed.errors);
        let table = std::fs::read_to_string(bd.signer_dir.join("KeyTable")).unwrap_or_default();
        assert!(
            !table.contains("s1"),
            "dropped from the files at once: {table}"
        );
        assert!(mine.exists(), "kept while the signer may still read it");

        std::fs::remove_file(&flag).unwrap();
        let ok = pass(&b, &sb, &seal, None, false).await.unwrap();
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
        assert!(!mine.exists(), "gone once the signer reloaded");
    }

    #[tokio::test]
    async fn a_follower_installs_nothing_of_a_book_whose_key_is_missing_or_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host(dir.path(), "a"), host(dir.path(), "b"));
        let sa = Memory::new("a");
        let sb = sa.session("b");
        let seal = seal_key();
        let lead = sa.campaign(JOB).await.unwrap().unwrap();
        let book = leader_book(&a, "s1", KeyState::Active);
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &lead)
            .await
            .unwrap();
        let name = key_name(&book.keys[0]);
        let bd = b.dkim.as_ref().unwrap();
        let untouched = || {
            assert!(!bd.key_dir.join("example.test/s1.pem").exists());
            assert!(!bd.signer_dir.join("KeyTable").exists());
            assert!(dkim::load(&b).unwrap().keys.is_empty());
        };

        sa.delete(&name).await.unwrap();
        let e = pass(&b, &sb, &seal, None, false).await.unwrap_err();
        assert!(e.to_string().contains("not in the cluster"), "{e}");
        untouched();

        let other = keys::generate(DkimAlgorithm::Ed25519).unwrap();
        let sealed = seal.seal(&name, other.pem.as_bytes()).unwrap();
        sa.put_fenced(&lead, &name, sealed.as_bytes(), Expect::Absent)
            .await
            .unwrap();
        let e = pass(&b, &sb, &seal, None, false).await.unwrap_err();
        assert!(e.to_string().contains("does not hold the key"), "{e}");
        assert!(!e.to_string().contains("PRIVATE"), "{e}");
        untouched();

        // Sealed under another shared key: refused too.
        let wrong = SealKey::from_bytes(&[9u8; 32]).unwrap();
        assert!(pass(&b, &sb, &wrong, None, false).await.is_err());
        untouched();
    }

    #[tokio::test]
    async fn commands_that_change_keys_on_one_host_alone_are_refused_when_shared() {
        let dir = tempfile::tempdir().unwrap();
        let b = host(dir.path(), "b");
        let e = dkim::revoke(&b, "example.test", "s1", true)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`mxkeys dkim revoke` is not available"), "{e}");
        let file = dir.path().join("k.pem");
        std::fs::write(&file, keys::generate(DkimAlgorithm::Rsa2048).unwrap().pem).unwrap();
        let e = dkim::import(&b, "example.test", "s1", &file)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("`mxkeys dkim import` is not available"), "{e}");
        assert!(dkim::load(&b).unwrap().keys.is_empty());
    }

    #[tokio::test]
    async fn a_fenced_former_leaders_store_is_refused_and_the_successors_book_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (host(dir.path(), "a"), host(dir.path(), "b"));
        let sa = Memory::new("a");
        let sb = sa.session("b");
        let seal = seal_key();
        let la = sa.campaign(JOB).await.unwrap().unwrap();
        leader_book(&a, "s1", KeyState::Active);
        store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &la)
            .await
            .unwrap();
        // a pauses past its lease; b leads and stores its book.
        sa.expire();
        let lb = sb.campaign(JOB).await.unwrap().unwrap();
        let bd = b.dkim.as_ref().unwrap();
        follow(&b, bd, &sb, &seal, &mut Pass::default())
            .await
            .unwrap();
        leader_book(&b, "s2", KeyState::Active);
        store_book(&b, b.dkim.as_ref().unwrap(), &sb, &seal, &lb)
            .await
            .unwrap();
        let before = sb.get(BOOK).await.unwrap().unwrap();
        // a resumes with its old leadership and a book of its own.
        leader_book(&a, "s3", KeyState::Active);
        let e = store_book(&a, a.dkim.as_ref().unwrap(), &sa, &seal, &la)
            .await
            .unwrap_err();
        assert!(
            matches!(e, DkimError::Shared(SharedDkimError::Fenced { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("no longer leads"), "{e}");
        assert_eq!(sb.get(BOOK).await.unwrap().unwrap(), before);
        assert!(sb.get("dkim/key/s3.example.test").await.unwrap().is_none());
    }
}

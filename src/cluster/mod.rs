//! Several MX hosts that must agree (issue 18): one order per shared
//! certificate, one shared DKIM key set, through etcd.
//!
//! The rule: a job (ordering a shared certificate, rotating the shared DKIM
//! keys) has at most one leader, chosen by a lease-based lock, and every
//! write of its result is fenced: it is applied only while the lock the
//! writer took still exists with the revision it was created at
//! ([`Fence`]), so a leader paused past its lease and resumed cannot
//! overwrite what its successor stored. Results are stored with
//! compare-and-set ([`Expect`]); private keys only sealed ([`seal`]).
//! Every host watches the prefix and installs what it finds through its
//! normal pipeline (the same checks, atomic install, reload, verify).
//! Losing the cluster never removes an installed certificate: shared orders
//! stop and [`Health`] says so (status, metrics).
//!
//! [`SharedStore`] is the one interface the jobs use, as `RecordStore` is
//! for DNS: [`etcd`] is the real one (feature `etcd`), [`memory`] a pure
//! in-process one for the policy tests. Keys given to a store are relative
//! to the configured prefix (`acme/NAME`, `lock/acme/NAME`,
//! `http01/TOKEN`, `dkim/...`); the store adds the prefix.
//!
//! Layout under the prefix:
//! - `lock/JOB`: the job's lock, attached to the holder's lease; its value
//!   is the holder's host id, its create revision the fencing token.
//! - `acme/NAME`: the shared certificate of acme source NAME ([`SharedCert`]).
//! - `http01/TOKEN`: an HTTP-01 key authorization, on the leader's lease,
//!   so any host the CA reaches can answer.
//! - `responders/SOURCE/HOST` and `http01-ack/TOKEN/HOST`: a daemon that
//!   answers shared source SOURCE's tokens, and its word that it answers
//!   TOKEN, both on its lease; the leader asks the CA once all have it
//!   ([`acme::wait_for_answers`]).
//! - `dkim/...`: the shared DKIM book and sealed keys.

use std::future::Future;

pub mod acme;
pub mod dkim;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
pub mod seal;
pub mod shared;

/// The store a configuration names, built once per process.
#[derive(Debug, Clone)]
pub enum Backend {
    #[cfg(feature = "etcd")]
    Etcd(etcd::Etcd),
    Memory(memory::Memory),
}

impl Backend {
    /// Connects to the configured cluster as `host`.
    pub async fn connect(
        cluster: &crate::config::Cluster,
        host: &crate::config::HostId,
    ) -> Result<Backend, ClusterError> {
        match cluster.backend {
            #[cfg(feature = "etcd")]
            crate::config::ClusterBackend::Etcd => {
                etcd::Etcd::connect(cluster, host).await.map(Backend::Etcd)
            }
            #[cfg(not(feature = "etcd"))]
            crate::config::ClusterBackend::Etcd => {
                let _ = host;
                Err(ClusterError::NotBuilt)
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            #[cfg(feature = "etcd")]
            Backend::Etcd($s) => $e,
            Backend::Memory($s) => $e,
        }
    };
}

impl SharedStore for Backend {
    async fn campaign(&self, job: &Job) -> Result<Option<Leadership>, ClusterError> {
        delegate!(self, s => s.campaign(job).await)
    }
    async fn holds(&self, lead: &Leadership) -> Result<bool, ClusterError> {
        delegate!(self, s => s.holds(lead).await)
    }
    async fn resign(&self, lead: &Leadership) -> Result<(), ClusterError> {
        delegate!(self, s => s.resign(lead).await)
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, ClusterError> {
        delegate!(self, s => s.get(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Stored)>, ClusterError> {
        delegate!(self, s => s.list(prefix).await)
    }
    async fn put_fenced(
        &self,
        lead: &Leadership,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Written, ClusterError> {
        delegate!(self, s => s.put_fenced(lead, key, value, expect).await)
    }
    async fn put_leased(&self, key: &str, value: &[u8]) -> Result<(), ClusterError> {
        delegate!(self, s => s.put_leased(key, value).await)
    }
    async fn delete(&self, key: &str) -> Result<(), ClusterError> {
        delegate!(self, s => s.delete(key).await)
    }
    async fn watch(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Event>, ClusterError> {
        delegate!(self, s => s.watch(prefix, after_revision).await)
    }
}

/// A job's name, e.g. `acme/NAME` or `dkim`.
pub type Job = str;

/// The fencing token of a leadership: the etcd revision at which this
/// host's lock key for the job was created. Larger is later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub i64);

/// This host leads `job` while its lock exists with `fence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub job: String,
    pub fence: Fence,
}

/// A stored value and the revision it was last written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub value: Vec<u8>,
    /// The key's mod revision: what [`Expect::Revision`] compares.
    pub revision: i64,
}

/// What a compare-and-set write expects to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must be at this mod revision (as read).
    Revision(i64),
}

/// How a fenced write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored, at this revision.
    Stored(i64),
    /// Not stored: the lock is gone or was taken again (a paused former
    /// leader). The writer must stop acting for the job.
    Fenced,
    /// Not stored: the value changed since it was read.
    Conflict,
}

/// A change under the prefix, as a watch reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put { key: String, stored: Stored },
    Delete { key: String },
}

/// What went wrong, in one line without secrets or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No endpoint answered, or no quorum: shared jobs wait.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// Credentials or certificates refused or unreadable.
    #[error("cluster authentication: {0}")]
    Auth(String),
    /// The configuration cannot work (a TLS file, the shared key file).
    #[error("cluster configuration: {0}")]
    Config(String),
    /// A stored value could not be read (bad JSON, a seal that does not
    /// open): names the key, never the value.
    #[error("cluster value {key}: {reason}")]
    BadValue { key: String, reason: String },
    /// This build has no etcd client (built without feature `etcd`).
    #[error("this mxkeys was built without etcd support (cargo feature `etcd`)")]
    NotBuilt,
}

/// The store shared jobs use. Keys are relative to the prefix.
pub trait SharedStore: Send + Sync {
    /// Tries once to take `job`'s lock on this host's lease. `None`: another
    /// host holds it (it never waits for it).
    fn campaign(
        &self,
        job: &Job,
    ) -> impl Future<Output = Result<Option<Leadership>, ClusterError>> + Send;

    /// Whether the lock still exists with this leadership's fence.
    fn holds(&self, lead: &Leadership) -> impl Future<Output = Result<bool, ClusterError>> + Send;

    /// Gives the lock up (a finished job); missing is fine.
    fn resign(&self, lead: &Leadership) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// The value at `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Stored>, ClusterError>> + Send;

    /// Every key under `prefix` (relative, e.g. `acme/`), with its value.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, Stored)>, ClusterError>> + Send;

    /// Stores `value` at `key` only while `lead` holds its lock and the key
    /// is as `expect`ed, in one transaction.
    fn put_fenced(
        &self,
        lead: &Leadership,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> impl Future<Output = Result<Written, ClusterError>> + Send;

    /// Stores `value` at `key` on this host's lease: it disappears when the
    /// host stops or is paused past its lease (HTTP-01 tokens).
    fn put_leased(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Removes `key`; missing is fine.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), ClusterError>> + Send;

    /// Changes under `prefix` after `after_revision` (0: from now). The
    /// receiver ends when the watch breaks; the caller lists again and
    /// watches from there.
    fn watch(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<Event>, ClusterError>> + Send;
}

/// Campaigns for `job` only when its lock is free or already `host`'s. A
/// host that finds another holder has only read: a campaign that loses is
/// still a Raft proposal, and hosts look at shared jobs at every pass.
/// `None` while another host holds the job.
pub async fn campaign_if_free(
    store: &impl SharedStore,
    job: &Job,
    host: &str,
) -> Result<Option<Leadership>, ClusterError> {
    if let Some(held) = store.get(&format!("lock/{job}")).await?
        && String::from_utf8_lossy(&held.value).trim() != host
    {
        return Ok(None);
    }
    store.campaign(job).await
}

/// A shared certificate as stored at `acme/NAME`: JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedCert {
    /// The chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key's PEM, sealed for the key name `acme/NAME`
    /// ([`seal::SealKey::seal`]), base64.
    pub key_sealed: String,
    /// The host that ordered it.
    pub host: String,
    /// The leaf's notAfter and the time it was stored (Unix seconds).
    pub not_after: i64,
    pub stored_at: i64,
}

/// What `status` and the metrics say about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Health {
    /// Whether the last request reached a quorum.
    pub reachable: bool,
    /// Since when (Unix seconds) `reachable` has been what it is.
    pub since: i64,
    /// The last error, one line.
    pub last_error: Option<String>,
    /// The jobs this host leads now.
    pub leading: Vec<String>,
    /// Fenced writes refused since start (a paused leader's).
    pub fenced_writes: u64,
}

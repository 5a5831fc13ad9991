//! The etcd backend of [`SharedStore`] (feature `etcd`): etcd-client over
//! tonic, with rustls on aws-lc-rs for `https://` endpoints.
//!
//! The rule: every request is bounded (connect and request timeouts, and
//! a deadline around each call, so a lost quorum is
//! [`ClusterError::Unavailable`] within seconds, never a hung pass), and
//! every decision is one etcd transaction. This host's session is one
//! lease, granted at connect and kept alive every `lease_ttl / 3` by a
//! background task; when the lease is found gone (the process was paused
//! past its TTL, or it was revoked) a new one is granted for new work,
//! while the leaderships taken on the old one stay dead: their lock keys
//! died with it, so their fenced writes are refused.
//!
//! Effects only: the policy lives in the jobs; the pure stand-in with the
//! same semantics is [`super::memory`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use super::{ClusterError, Event, Expect, Fence, Job, Leadership, SharedStore, Stored, Written};
use crate::config::{Cluster, ClusterTls, HostId};

/// The longest one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest the first TCP/TLS connection to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One host's connection and lease.
#[derive(Clone)]
pub struct Etcd {
    /// Shared: the client is large, and `Backend` holds an `Etcd` by value.
    client: Arc<Client>,
    /// The configured prefix followed by '/'.
    prefix: String,
    /// "etcd ENDPOINTS": what error messages name.
    what: String,
    host: String,
    /// This host's current lease (0 while none is granted).
    lease: Arc<AtomicI64>,
    /// Serializes granting a new lease.
    granting: Arc<tokio::sync::Mutex<()>>,
    ttl: i64,
    /// Stops the keep-alive task when the last clone is dropped.
    _keeper: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .field("host", &self.host)
            .field("lease", &self.lease.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Etcd {
    /// Connects to the endpoints (TLS, credentials as configured), grants
    /// this host's lease (`lease_ttl`) and keeps it alive in a background
    /// task on the current tokio runtime.
    pub async fn connect(cluster: &Cluster, host: &HostId) -> Result<Etcd, ClusterError> {
        let mut options = ConnectOptions::new()
            // No `with_timeout`: it becomes a gRPC deadline that would cut
            // the watch and keep-alive streams; each call is bounded here.
            .with_connect_timeout(CONNECT_TIMEOUT)
            // HTTP/2 pings find a dead connection; etcd sends GOAWAY to a
            // client pinging more often than every 5s
            // (--grpc-keepalive-min-time), which would break every stream.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            // A member that lost its leader answers "no leader" at once
            // instead of waiting for one.
            .with_require_leader(true);
        if let Some(tls) = &cluster.tls {
            options = options.with_tls(tls_options(tls)?);
        } else if cluster.endpoints.iter().any(|e| e.starts_with("https://")) {
            // No CA named: the system's roots.
            options = options.with_tls(TlsOptions::new().with_native_roots());
        }
        if let Some((user, secret)) = &cluster.credentials {
            let password = secret
                .read()
                .map_err(|e| ClusterError::Auth(format!("user {user}: password {e}")))?;
            // etcd-client keeps its own copy (a String) to renew the token;
            // ours is zeroized when dropped.
            options = options
                .with_user(user.clone(), password.as_str())
                .with_auto_token_refresh(true);
        }
        let endpoints = format!("etcd {}", shown(&cluster.endpoints));
        let client = bounded(&endpoints, || {
            Client::connect(cluster.endpoints.clone(), Some(options.clone()))
        })
        .await?;
        let ttl = i64::try_from(cluster.lease_ttl.as_secs())
            .unwrap_or(i64::MAX)
            .max(2);
        let lease = Arc::new(AtomicI64::new(0));
        let granting = Arc::new(tokio::sync::Mutex::new(()));
        grant(&client, &endpoints, &lease, &granting, ttl, 0).await?;
        let task = tokio::spawn(keep_alive(
            client.clone(),
            endpoints.clone(),
            lease.clone(),
            granting.clone(),
            ttl,
        ));
        Ok(Etcd {
            client: Arc::new(client),
            prefix: format!("{}/", cluster.prefix),
            what: endpoints.clone(),
            host: host.as_str().to_owned(),
            lease,
            granting,
            ttl,
            _keeper: Arc::new(AbortOnDrop(task.abort_handle())),
        })
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn lock_key(&self, job: &Job) -> String {
        self.key(&format!("lock/{job}"))
    }

    fn where_(&self) -> String {
        self.what.clone()
    }

    /// Runs `op` (each attempt on a fresh handle) within
    /// [`REQUEST_TIMEOUT`], see [`bounded`].
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        bounded(&self.where_(), || op(Client::clone(&self.client))).await
    }

    /// This host's current lease, granting one if it has none.
    async fn lease(&self) -> Result<i64, ClusterError> {
        match self.lease.load(Ordering::SeqCst) {
            0 => {
                grant(
                    &self.client,
                    &self.where_(),
                    &self.lease,
                    &self.granting,
                    self.ttl,
                    0,
                )
                .await
            }
            id => Ok(id),
        }
    }

    /// Runs `op` on this host's lease; when etcd says the lease is gone
    /// (found before the keep-alive did), grants a new one and runs it
    /// once more.
    async fn on_lease<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: Fn(Client, i64) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let lease = self.lease().await?;
        match bounded_raw(|| op(Client::clone(&self.client), lease)).await {
            Err(Some(e)) if lease_not_found(&e) => {
                let new = grant(
                    &self.client,
                    &self.where_(),
                    &self.lease,
                    &self.granting,
                    self.ttl,
                    lease,
                )
                .await?;
                self.call(|c| op(c, new)).await
            }
            r => r.map_err(|e| finish(&self.where_(), e)),
        }
    }
}

/// The endpoints as messages name them: without any `user:password@`.
fn shown(endpoints: &[String]) -> String {
    endpoints
        .iter()
        .map(|e| match (e.find("://"), e.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{}", &e[..s + 3], &e[at + 1..]),
            _ => e.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `op` within [`REQUEST_TIMEOUT`], its error mapped. An attempt that
/// never reached a member (connection refused: a member is down while the
/// others keep the quorum) is tried again, on whichever member answers.
async fn bounded<T, F, Fut>(what: &str, op: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    bounded_raw(op).await.map_err(|e| finish(what, e))
}

/// [`bounded`] with the last error unmapped (`None`: out of time).
async fn bounded_raw<T, F, Fut>(mut op: F) -> Result<T, Option<etcd_client::Error>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if not_sent(&e) => last = Some(e),
            Ok(Err(e)) => return Err(Some(e)),
            Err(_) => return Err(last),
        }
        if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(100)))
            .await
            .is_err()
        {
            return Err(last);
        }
    }
}

fn finish(what: &str, e: Option<etcd_client::Error>) -> ClusterError {
    match e {
        Some(e) => map_error(what, &e),
        None => timed_out(what),
    }
}

/// Whether the request failed before any member received it.
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            // UNAVAILABLE from the channel itself: connecting failed.
            i32::from(s.code()) == 14 && chain(s).contains("connect")
        }
        _ => false,
    }
}

/// An error and its sources, one line, each text once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn timed_out(what: &str) -> ClusterError {
    ClusterError::Unavailable(format!(
        "{what}: no answer within {}s (no quorum?)",
        REQUEST_TIMEOUT.as_secs()
    ))
}

fn lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found"))
}

/// Grants a new lease unless another task already replaced `stale` (0:
/// grant only if there is none).
async fn grant(
    client: &Client,
    what: &str,
    lease: &AtomicI64,
    granting: &tokio::sync::Mutex<()>,
    ttl: i64,
    stale: i64,
) -> Result<i64, ClusterError> {
    let _one = granting.lock().await;
    let current = lease.load(Ordering::SeqCst);
    if current != stale {
        return Ok(current);
    }
    let granted = bounded(what, || {
        let mut c = client.clone();
        async move { c.lease_grant(ttl, None).await }
    })
    .await?;
    lease.store(granted.id(), Ordering::SeqCst);
    Ok(granted.id())
}

/// Keeps this host's lease alive every ttl/3; grants a new one when etcd
/// says it is gone. Runs until aborted.
async fn keep_alive(
    client: Client,
    what: String,
    lease: Arc<AtomicI64>,
    granting: Arc<tokio::sync::Mutex<()>>,
    ttl: i64,
) {
    let period = Duration::from_millis(u64::try_from(ttl).unwrap_or(3) * 1000 / 3);
    let mut stream: Option<(
        i64,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    )> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let id = lease.load(Ordering::SeqCst);
        if id == 0 {
            // Lost earlier and no grant succeeded yet (no quorum).
            let _ = grant(&client, &what, &lease, &granting, ttl, 0).await;
            continue;
        }
        if stream.as_ref().is_none_or(|s| s.0 != id) {
            let mut c = client.clone();
            stream = match tokio::time::timeout(REQUEST_TIMEOUT, c.lease_keep_alive(id)).await {
                Ok(Ok((k, s))) => Some((id, k, s)),
                _ => None,
            };
        }
        let Some((_, keeper, responses)) = stream.as_mut() else {
            continue;
        };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match answer {
            Ok(Ok(Some(r))) if r.ttl() <= 0 => {
                // The lease is gone: its locks died with it. New work gets
                // a new lease.
                stream = None;
                if grant(&client, &what, &lease, &granting, ttl, id)
                    .await
                    .is_err()
                {
                    let _ = lease.compare_exchange(id, 0, Ordering::SeqCst, Ordering::SeqCst);
                }
            }
            Ok(Ok(Some(_))) => {}
            // A broken stream or no answer: open a new one next time.
            _ => stream = None,
        }
    }
}

fn tls_options(tls: &ClusterTls) -> Result<TlsOptions, ClusterError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map(zeroize::Zeroizing::new).map_err(|e| {
            ClusterError::Config(format!("{}: {}", p.display(), crate::source::io_reason(&e)))
        })
    };
    let mut options = TlsOptions::new();
    match &tls.ca_file {
        Some(ca) => {
            options = options.ca_certificate(Certificate::from_pem(read(ca)?.as_slice()));
        }
        // A client certificate without `ca_file`: the system's roots.
        None => options = options.with_native_roots(),
    }
    if let Some((cert, key)) = &tls.client {
        let cert = read(cert)?;
        let key = read(key)?;
        options = options.identity(Identity::from_pem(cert.as_slice(), key.as_slice()));
    }
    Ok(options)
}

/// One line naming where and why, never a credential.
fn map_error(what: &str, e: &etcd_client::Error) -> ClusterError {
    use etcd_client::Error as E;
    // gRPC status codes (stable numbers of the gRPC protocol).
    const INVALID_ARGUMENT: i32 = 3;
    const PERMISSION_DENIED: i32 = 7;
    const FAILED_PRECONDITION: i32 = 9;
    const OUT_OF_RANGE: i32 = 11;
    const UNIMPLEMENTED: i32 = 12;
    const UNAUTHENTICATED: i32 = 16;
    match e {
        E::GRpcStatus(s) => {
            let mut msg = format!("{what}: {}", s.message());
            if let Some(src) = std::error::Error::source(s) {
                let more = chain(src);
                if !msg.contains(&more) {
                    msg = format!("{msg}: {more}");
                }
            }
            let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
            // etcd refuses a wrong password or user as INVALID_ARGUMENT.
            let refused = ["authentication failed", "user name", "permission denied"]
                .iter()
                .any(|m| s.message().contains(m));
            match i32::from(s.code()) {
                UNAUTHENTICATED | PERMISSION_DENIED => ClusterError::Auth(msg),
                _ if refused => ClusterError::Auth(msg),
                INVALID_ARGUMENT | FAILED_PRECONDITION | OUT_OF_RANGE | UNIMPLEMENTED
                    if !s.message().contains("leader") =>
                {
                    ClusterError::Config(msg)
                }
                _ => ClusterError::Unavailable(msg),
            }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) => {
            ClusterError::Config(format!("{what}: {}", chain(e)))
        }
        _ => {
            let msg = format!("{what}: {}", chain(e));
            // A TLS alert about our certificate: the members refuse it.
            if msg.contains("BadCertificate") || msg.contains("CertificateRequired") {
                ClusterError::Auth(msg)
            } else {
                ClusterError::Unavailable(msg)
            }
        }
    }
}

fn stored(kv: &etcd_client::KeyValue) -> Stored {
    Stored {
        value: kv.value().to_vec(),
        revision: kv.mod_revision(),
    }
}

/// The first key-value of the `index`th response of a transaction.
fn txn_kv(responses: &[TxnOpResponse], index: usize) -> Option<&etcd_client::KeyValue> {
    match responses.get(index) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first(),
        _ => None,
    }
}

impl SharedStore for Etcd {
    async fn campaign(&self, job: &Job) -> Result<Option<Leadership>, ClusterError> {
        let lock = self.lock_key(job);
        let host = self.host.clone();
        let (resp, lease) = self
            .on_lease(|mut c, lease| {
                let txn = Txn::new()
                    .when([Compare::create_revision(lock.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        lock.clone(),
                        host.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(lock.clone(), None)]);
                async move { c.txn(txn).await.map(|r| (r, lease)) }
            })
            .await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Some(Leadership {
                job: job.to_owned(),
                fence: Fence(revision),
            }));
        }
        // Held already: ours only if it is on our current lease.
        let responses = resp.op_responses();
        Ok(txn_kv(&responses, 0)
            .filter(|kv| kv.lease() == lease)
            .map(|kv| Leadership {
                job: job.to_owned(),
                fence: Fence(kv.create_revision()),
            }))
    }

    async fn holds(&self, lead: &Leadership) -> Result<bool, ClusterError> {
        let lock = self.lock_key(&lead.job);
        let resp = self
            .call(|mut c| {
                let lock = lock.clone();
                async move { c.get(lock, None).await }
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == lead.fence.0))
    }

    async fn resign(&self, lead: &Leadership) -> Result<(), ClusterError> {
        let lock = self.lock_key(&lead.job);
        let txn = Txn::new()
            .when([Compare::create_revision(
                lock.clone(),
                CompareOp::Equal,
                lead.fence.0,
            )])
            .and_then([TxnOp::delete(lock, None)]);
        self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, ClusterError> {
        let key = self.key(key);
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(stored))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Stored)>, ClusterError> {
        let key = self.key(prefix);
        let resp = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let Some(rel) = kv.key().strip_prefix(self.prefix.as_bytes()) else {
                continue;
            };
            let rel = String::from_utf8(rel.to_vec()).map_err(|_| ClusterError::BadValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                reason: "the key is not UTF-8".into(),
            })?;
            out.push((rel, stored(kv)));
        }
        Ok(out)
    }

    async fn put_fenced(
        &self,
        lead: &Leadership,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Written, ClusterError> {
        let lock = self.lock_key(&lead.job);
        let key = self.key(key);
        let expectation = match expect {
            Expect::Absent => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Expect::Revision(r) => Compare::mod_revision(key.clone(), CompareOp::Equal, r),
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(lock.clone(), CompareOp::Equal, lead.fence.0),
                expectation,
            ])
            .and_then([TxnOp::put(key, value.to_vec(), None)])
            // Read the lock back to tell a lost leadership from a conflict.
            .or_else([TxnOp::get(lock, None)]);
        let resp = self
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(Written::Stored(
                resp.header().map(|h| h.revision()).unwrap_or(0),
            ));
        }
        let responses = resp.op_responses();
        let lock_holds =
            txn_kv(&responses, 0).is_some_and(|kv| kv.create_revision() == lead.fence.0);
        Ok(if lock_holds {
            Written::Conflict
        } else {
            Written::Fenced
        })
    }

    async fn put_leased(&self, key: &str, value: &[u8]) -> Result<(), ClusterError> {
        let key = self.key(key);
        self.on_lease(|mut c, lease| {
            let (key, value) = (key.clone(), value.to_vec());
            async move {
                c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), ClusterError> {
        let key = self.key(key);
        self.call(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None::<DeleteOptions>).await }
        })
        .await?;
        Ok(())
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Event>, ClusterError> {
        let what = self.where_();
        let key = self.key(prefix);
        let after = if after_revision > 0 {
            after_revision
        } else {
            // "Now" as the quorum sees it (a linearizable read): a watch
            // without a start revision starts at the revision of the member
            // it lands on, which may be behind and replay older writes.
            let resp = self
                .call(|mut c| {
                    let key = key.clone();
                    async move {
                        c.get(key, Some(GetOptions::new().with_prefix().with_count_only()))
                            .await
                    }
                })
                .await?;
            resp.header().map(|h| h.revision()).unwrap_or(0)
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1);
        let mut stream = self
            .call(|mut c| {
                let (key, options) = (key.clone(), options.clone());
                async move { c.watch(key, Some(options)).await }
            })
            .await?;
        // Wait until etcd has created the watch: what happens after this
        // returns is delivered.
        let first = match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
            Ok(r) => r.map_err(|e| map_error(&what, &e))?,
            Err(_) => return Err(timed_out(&what)),
        };
        match first {
            Some(r) if r.created() && !r.canceled() => {}
            Some(r) => {
                return Err(ClusterError::Unavailable(format!(
                    "{what}: watch refused: {}",
                    r.cancel_reason()
                )));
            }
            None => return Err(ClusterError::Unavailable(format!("{what}: watch ended"))),
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let base = self.prefix.clone();
        tokio::spawn(async move {
            // Any error, a cancel (compaction, lost leader) or the
            // receiver going away ends the watch; the caller re-lists.
            loop {
                // A dropped receiver ends the watch at once, even when no
                // event comes.
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    next = stream.message() => next,
                };
                let Ok(Some(resp)) = next else { break };
                if resp.canceled() {
                    break;
                }
                for e in resp.events() {
                    let Some(kv) = e.kv() else { continue };
                    let Some(rel) = kv.key().strip_prefix(base.as_bytes()) else {
                        continue;
                    };
                    let key = String::from_utf8_lossy(rel).into_owned();
                    let event = match e.event_type() {
                        EventType::Put => Event::Put {
                            key,
                            stored: stored(kv),
                        },
                        EventType::Delete => Event::Delete { key },
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn messages_name_the_endpoints_without_credentials_in_them() {
        let eps = [
            "http://10.0.0.1:2379".to_owned(),
            "https://u:secret@10.0.0.2:2379".to_owned(),
        ];
        assert_eq!(shown(&eps), "http://10.0.0.1:2379,https://10.0.0.2:2379");
    }
}

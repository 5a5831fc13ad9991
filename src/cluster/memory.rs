//! An in-process [`SharedStore`] with etcd's semantics, for the policy
//! tests: revisions, lock keys on leases, fenced and compare-and-set
//! writes, watches. Pure apart from its mutex: no clock, no network; a
//! test ends a host's lease with [`Memory::expire`] (a paused or killed
//! leader) and takes the quorum away with [`Memory::set_available`].
//!
//! Several hosts share one store through [`Memory::session`]: each session
//! is one host's lease.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{ClusterError, Event, Expect, Fence, Job, Leadership, SharedStore, Stored, Written};

#[derive(Debug, Default)]
struct Inner {
    revision: i64,
    /// key -> (value, create revision, mod revision, lease)
    kv: BTreeMap<String, (Vec<u8>, i64, i64, Option<u64>)>,
    next_lease: u64,
    available: bool,
    watchers: Vec<(String, tokio::sync::mpsc::Sender<Event>)>,
}

/// One host's view of a shared in-process store: its own lease.
#[derive(Debug, Clone)]
pub struct Memory {
    inner: Arc<Mutex<Inner>>,
    lease: Arc<Mutex<u64>>,
    host: String,
}

impl Memory {
    /// A new, empty store, and the first host's session on it.
    pub fn new(host: &str) -> Memory {
        let inner = Inner {
            available: true,
            next_lease: 1,
            ..Inner::default()
        };
        let m = Memory {
            inner: Arc::new(Mutex::new(inner)),
            lease: Arc::new(Mutex::new(0)),
            host: host.to_owned(),
        };
        *m.lease.lock().unwrap_or_else(|e| e.into_inner()) = m.grant();
        m
    }

    /// Another host's session on the same store.
    pub fn session(&self, host: &str) -> Memory {
        let m = Memory {
            inner: self.inner.clone(),
            lease: Arc::new(Mutex::new(0)),
            host: host.to_owned(),
        };
        *m.lease.lock().unwrap_or_else(|e| e.into_inner()) = m.grant();
        m
    }

    fn grant(&self) -> u64 {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.next_lease += 1;
        i.next_lease
    }

    /// This session's lease ends (as after a pause past its TTL): its lock
    /// and leased keys are deleted; the session continues on a new lease.
    pub fn expire(&self) {
        let old = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> =
                i.kv.iter()
                    .filter(|(_, v)| v.3 == Some(old))
                    .map(|(k, _)| k.clone())
                    .collect();
            for k in gone {
                i.revision += 1;
                i.kv.remove(&k);
                notify(&mut i, Event::Delete { key: k });
            }
        }
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = self.grant();
    }

    /// Takes the quorum away (`false`) or gives it back.
    pub fn set_available(&self, up: bool) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .available = up;
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner, u64) -> T) -> Result<T, ClusterError> {
        let lease = *self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !i.available {
            return Err(ClusterError::Unavailable("no quorum (test)".into()));
        }
        Ok(f(&mut i, lease))
    }
}

fn notify(i: &mut Inner, e: Event) {
    let key = match &e {
        Event::Put { key, .. } | Event::Delete { key } => key.clone(),
    };
    i.watchers.retain(|(p, tx)| {
        if key.starts_with(p.as_str()) {
            tx.try_send(e.clone()).is_ok()
        } else {
            !tx.is_closed()
        }
    });
}

fn put(i: &mut Inner, key: &str, value: &[u8], lease: Option<u64>) -> i64 {
    i.revision += 1;
    let rev = i.revision;
    let create = i.kv.get(key).map(|v| v.1).unwrap_or(rev);
    i.kv.insert(key.to_owned(), (value.to_vec(), create, rev, lease));
    notify(
        i,
        Event::Put {
            key: key.to_owned(),
            stored: Stored {
                value: value.to_vec(),
                revision: rev,
            },
        },
    );
    rev
}

fn lock_key(job: &Job) -> String {
    format!("lock/{job}")
}

impl SharedStore for Memory {
    async fn campaign(&self, job: &Job) -> Result<Option<Leadership>, ClusterError> {
        let host = self.host.clone();
        self.with(|i, lease| {
            let k = lock_key(job);
            if let Some(v) = i.kv.get(&k) {
                // Our own lock on this lease: still ours.
                return (v.3 == Some(lease)).then(|| Leadership {
                    job: job.to_owned(),
                    fence: Fence(v.1),
                });
            }
            let rev = put(i, &k, host.as_bytes(), Some(lease));
            Some(Leadership {
                job: job.to_owned(),
                fence: Fence(rev),
            })
        })
    }

    async fn holds(&self, lead: &Leadership) -> Result<bool, ClusterError> {
        self.with(|i, _| {
            i.kv.get(&lock_key(&lead.job))
                .is_some_and(|v| v.1 == lead.fence.0)
        })
    }

    async fn resign(&self, lead: &Leadership) -> Result<(), ClusterError> {
        self.with(|i, _| {
            let k = lock_key(&lead.job);
            if i.kv.get(&k).is_some_and(|v| v.1 == lead.fence.0) {
                i.revision += 1;
                i.kv.remove(&k);
                notify(i, Event::Delete { key: k });
            }
        })
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, ClusterError> {
        self.with(|i, _| {
            i.kv.get(key).map(|v| Stored {
                value: v.0.clone(),
                revision: v.2,
            })
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Stored)>, ClusterError> {
        self.with(|i, _| {
            i.kv.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Stored {
                            value: v.0.clone(),
                            revision: v.2,
                        },
                    )
                })
                .collect()
        })
    }

    async fn put_fenced(
        &self,
        lead: &Leadership,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<Written, ClusterError> {
        self.with(|i, _| {
            let held =
                i.kv.get(&lock_key(&lead.job))
                    .is_some_and(|v| v.1 == lead.fence.0);
            if !held {
                return Written::Fenced;
            }
            let current = i.kv.get(key).map(|v| v.2);
            let ok = match expect {
                Expect::Absent => current.is_none(),
                Expect::Revision(r) => current == Some(r),
            };
            if !ok {
                return Written::Conflict;
            }
            Written::Stored(put(i, key, value, None))
        })
    }

    async fn put_leased(&self, key: &str, value: &[u8]) -> Result<(), ClusterError> {
        self.with(|i, lease| {
            put(i, key, value, Some(lease));
        })
    }

    async fn delete(&self, key: &str) -> Result<(), ClusterError> {
        self.with(|i, _| {
            if i.kv.remove(key).is_some() {
                i.revision += 1;
                notify(
                    i,
                    Event::Delete {
                        key: key.to_owned(),
                    },
                );
            }
        })
    }

    async fn watch(
        &self,
        prefix: &str,
        _after_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Event>, ClusterError> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        self.with(|i, _| i.watchers.push((prefix.to_owned(), tx)))?;
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_host_leads_a_job_and_a_paused_leader_cannot_write_after_its_lease_ends() {
        let a = Memory::new("a");
        let b = a.session("b");
        let la = a.campaign("acme/mx").await.unwrap().unwrap();
        assert!(b.campaign("acme/mx").await.unwrap().is_none());
        assert_eq!(
            a.put_fenced(&la, "acme/mx", b"1", Expect::Absent)
                .await
                .unwrap(),
            Written::Stored(2)
        );
        a.expire();
        let lb = b.campaign("acme/mx").await.unwrap().unwrap();
        assert!(lb.fence > la.fence);
        let rev = b.get("acme/mx").await.unwrap().unwrap().revision;
        assert_eq!(
            a.put_fenced(&la, "acme/mx", b"old", Expect::Revision(rev))
                .await
                .unwrap(),
            Written::Fenced
        );
        assert_eq!(
            b.put_fenced(&lb, "acme/mx", b"2", Expect::Absent)
                .await
                .unwrap(),
            Written::Conflict
        );
        assert!(matches!(
            b.put_fenced(&lb, "acme/mx", b"2", Expect::Revision(rev))
                .await
                .unwrap(),
            Written::Stored(_)
        ));
        a.set_available(false);
        assert!(b.get("acme/mx").await.is_err());
    }
}

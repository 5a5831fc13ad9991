//! The etcd backend of [`SharedStore`] (feature `etcd`): etcd-client over
//! tonic, with rustls on aws-lc-rs for `https://` endpoints.
//!
//! CONTRACT STUB: the etcd helper replaces this file. The signatures of
//! [`Etcd::connect`] and the trait are fixed.

use super::{ClusterError, Event, Expect, Job, Leadership, SharedStore, Stored, Written};
use crate::config::{Cluster, HostId};

/// One host's connection and lease.
#[derive(Debug, Clone)]
pub struct Etcd {}

impl Etcd {
    /// Connects to the endpoints (TLS, credentials as configured), grants
    /// this host's lease (`lease_ttl`) and keeps it alive in a background
    /// task on the current tokio runtime.
    pub async fn connect(_cluster: &Cluster, _host: &HostId) -> Result<Etcd, ClusterError> {
        Err(ClusterError::Unavailable(
            "etcd backend not written yet".into(),
        ))
    }
}

impl SharedStore for Etcd {
    async fn campaign(&self, _job: &Job) -> Result<Option<Leadership>, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn holds(&self, _lead: &Leadership) -> Result<bool, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn resign(&self, _lead: &Leadership) -> Result<(), ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn get(&self, _key: &str) -> Result<Option<Stored>, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn list(&self, _prefix: &str) -> Result<Vec<(String, Stored)>, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn put_fenced(
        &self,
        _lead: &Leadership,
        _key: &str,
        _value: &[u8],
        _expect: Expect,
    ) -> Result<Written, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn put_leased(&self, _key: &str, _value: &[u8]) -> Result<(), ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn delete(&self, _key: &str) -> Result<(), ClusterError> {
        Err(ClusterError::NotBuilt)
    }
    async fn watch(
        &self,
        _prefix: &str,
        _after_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Event>, ClusterError> {
        Err(ClusterError::NotBuilt)
    }
}

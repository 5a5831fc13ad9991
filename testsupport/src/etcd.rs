//! A real etcd cluster for the cluster tests: `members` etcd servers
//! (Debian's etcd-server) on loopback pool ports, each in its own data
//! directory under the test's, stopped when the guard is dropped.
//!
//! With [`EtcdTls`] the members serve clients over TLS from a CA made at
//! test time and ask for a client certificate signed by it. Members can
//! be stopped, paused and started again to take the quorum away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::servers::{Need, prog, terminate_child, wait_port};
use crate::{days, free_port, write};

pub const ETCD: &[Need] = &[("etcd", "etcd-server"), ("etcdctl", "etcd-client")];

/// The files of a TLS cluster: its CA, and a client certificate and key
/// the members accept.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    pub dir: PathBuf,
    pub tls: Option<EtcdTls>,
    members: Vec<Member>,
    initial: String,
    /// The loopback address members listen on: `127.0.0.1` or `[::1]`.
    ip: &'static str,
}

impl EtcdCluster {
    /// `members` plain-HTTP members on loopback.
    #[track_caller]
    pub fn start(dir: &Path, members: usize) -> EtcdCluster {
        EtcdCluster::start_inner(dir, members, false, "127.0.0.1")
    }

    /// `members` plain-HTTP members listening on `[::1]` only (clients and
    /// peers), for an IPv6-only host.
    #[track_caller]
    pub fn start_ipv6(dir: &Path, members: usize) -> EtcdCluster {
        EtcdCluster::start_inner(dir, members, false, "[::1]")
    }

    /// `members` members serving clients over TLS with client certificates.
    #[track_caller]
    pub fn start_tls(dir: &Path, members: usize) -> EtcdCluster {
        EtcdCluster::start_inner(dir, members, true, "127.0.0.1")
    }

    #[track_caller]
    fn start_inner(dir: &Path, n: usize, tls: bool, ip: &'static str) -> EtcdCluster {
        std::fs::create_dir_all(dir).unwrap();
        let tls = tls.then(|| make_tls(dir));
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{ip}:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            tls,
            members,
            initial,
            ip,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            let addr = format!("{ip}:{}", cluster.members[i].client_port);
            wait_port(&addr, "etcd", || cluster.log());
        }
        // Wait for a leader: a write succeeds.
        crate::servers::poll(
            "the etcd cluster to elect a leader",
            crate::servers::SERVER_DEADLINE,
            || {
                let out = cluster.etcdctl(&["put", "/etcd-test-ready", "1"]).ok()?;
                out.status.success().then_some(())
            },
            || cluster.log(),
        );
        cluster
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) {
        let scheme = self.scheme();
        let m = &self.members[i];
        let data = self.dir.join(format!("{}.data", m.name));
        let client = format!("{scheme}://{}:{}", self.ip, m.client_port);
        let peer = format!("http://{}:{}", self.ip, m.peer_port);
        let mut cmd = Command::new(prog("etcd"));
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", "mxkeys-test"])
            .args(["--initial-cluster-state", "new"])
            // Fast elections on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-outputs", "stderr", "--logger", "zap"]);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn etcd: {e}"));
        self.members[i].child = Some(child);
    }

    /// The client URLs, for `[cluster] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}:{}", self.ip, m.client_port))
            .collect()
    }

    /// `endpoints = [...]` as TOML.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Runs `etcdctl` (API v3) against every member.
    pub fn etcdctl(&self, args: &[&str]) -> Result<std::process::Output, String> {
        let mut cmd = Command::new(prog("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        cmd.args(args);
        crate::servers::output_within(cmd, std::time::Duration::from_secs(15))
    }

    /// The value at the absolute key `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .etcdctl(&["get", "--print-value-only", key])
            .expect("etcdctl get");
        assert!(
            out.status.success(),
            "etcdctl get {key}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v = out.stdout;
        if v.is_empty() {
            return None;
        }
        if v.last() == Some(&b'\n') {
            v.pop();
        }
        Some(v)
    }

    /// Every key under the absolute prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .expect("etcdctl get");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Stops member `i` (SIGTERM, then SIGKILL).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            terminate_child(&mut c);
        }
    }

    /// Starts member `i` again with its data.
    pub fn start_member(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            self.spawn(i);
            let addr = format!("{}:{}", self.ip, self.members[i].client_port);
            wait_port(&addr, "etcd", || self.log());
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            s.push_str(&format!("--- etcd {} (last lines)\n", m.name));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                terminate_child(&mut c);
            }
        }
    }
}

/// A CA, a server certificate for 127.0.0.1/localhost, and a client
/// certificate, all made now.
fn make_tls(dir: &Path) -> EtcdTls {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
    let (ca_cert, issuer) = crate::server_ca("etcd test CA");
    let leaf = |names: Vec<String>, eku: ExtendedKeyUsagePurpose, cn: &str, file: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        p.not_before = days(-1);
        p.not_after = days(30);
        let cert = p.signed_by(&key, &issuer).unwrap();
        write(&dir.join(format!("{file}.pem")), cert.pem());
        write(&dir.join(format!("{file}-key.pem")), key.serialize_pem());
        crate::set_mode(&dir.join(format!("{file}-key.pem")), 0o600);
    };
    leaf(
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "etcd",
        "server",
    );
    leaf(
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        "mxkeys",
        "client",
    );
    let ca_path = dir.join("ca.pem");
    write(&ca_path, ca_cert.pem());
    EtcdTls {
        ca: ca_path,
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    }
}

//! A real BIND 9 on loopback for one test: a temp dir with a generated TSIG
//! key, a named.conf listening on 127.0.0.1 on a free port, zones
//! `example.test` and `delegated.test` (updatable with the key) and
//! `readonly.test` (no updates), `named -g` in the foreground, killed on
//! Drop.
//!
//! [`Bind::start_split`] gives the key only the challenge zone: a second
//! key ([`MAIN_KEY_NAME`], in `main.key`) updates `example.test`, whose
//! records the server answers to anyone except requests signed with
//! [`KEY_NAME`] (as a provider whose credentials reach only the challenge
//! zone), while [`KEY_NAME`] updates `delegated.test`. That server also
//! recurses for 127.0.0.1, over a root zone of its own (nothing leaves
//! loopback), so a client asking with RD=1 (pebble's validator) gets a CNAME
//! from `example.test` into `delegated.test` chased, as a CA's resolver
//! would; without recursion BIND chases CNAMEs only within one zone.
//!
//! Without `named`: the test is skipped with a loud message, or fails when
//! `CI=true`.
//!
//! The harness speaks DNS only through `dig`: a test builds its RFC 2136
//! client from [`Bind::addr`], [`KEY_NAME`] and [`Bind::secret`] (this crate
//! does not depend on `mxkeys-providers`, whose own tests use it).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

pub const KEY_NAME: &str = "mxkeys-test";
/// The main zone's own key in [`Bind::start_split`].
pub const MAIN_KEY_NAME: &str = "main-zone-key";

pub struct Bind {
    dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
    /// The key's secret, decoded.
    pub secret: Vec<u8>,
    /// The key's secret as written in the key file.
    pub secret_b64: String,
}

fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `named`, `tsig-keygen` and `dig`, or `None` (skip) when missing outside
/// CI.
fn tools() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let found = (find("named"), find("tsig-keygen"), find("dig"));
    if let (Some(named), Some(keygen), Some(dig)) = found {
        return Some((named, keygen, dig));
    }
    let message = "BIND 9 is not installed (named, tsig-keygen, dig): install the Debian \
                   packages `bind9` and `bind9-dnsutils` to run the RFC 2136 and propagation \
                   tests";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}");
    }
    eprintln!("\n*** SKIPPED: {message} ***\n");
    None
}

use crate::ports::free_port;

const ZONE_EXAMPLE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
_acme-challenge IN CNAME x.delegated.test.
loop1 IN CNAME loop2.example.test.
loop2 IN CNAME loop1.example.test.
; a0 -> a8: 8 CNAME links; b0 -> b9: 9 links
a0 IN CNAME a1
a1 IN CNAME a2
a2 IN CNAME a3
a3 IN CNAME a4
a4 IN CNAME a5
a5 IN CNAME a6
a6 IN CNAME a7
a7 IN CNAME a8
a8 IN TXT \"end\"
b0 IN CNAME b1
b1 IN CNAME b2
b2 IN CNAME b3
b3 IN CNAME b4
b4 IN CNAME b5
b5 IN CNAME b6
b6 IN CNAME b7
b7 IN CNAME b8
b8 IN CNAME b9
b9 IN TXT \"end\"
";

const ZONE_DELEGATED: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
";

const ZONE_READONLY: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
";

impl Bind {
    /// Starts a server, or returns `None` when BIND is missing (and not in
    /// CI).
    pub fn start() -> Option<Bind> {
        Bind::start_with_zone(ZONE_EXAMPLE)
    }

    /// Like [`Bind::start`], with `example_zone` (a whole zone file) as the
    /// zone `example.test`: e.g. without the `_acme-challenge` CNAME and
    /// with a wildcard A record, so an ACME CA resolving names through this
    /// server finds every name at 127.0.0.1.
    pub fn start_with_zone(example_zone: &str) -> Option<Bind> {
        Bind::start_inner(example_zone, false)
    }

    /// Like [`Bind::start_with_zone`], with `example.test` updatable only
    /// with [`MAIN_KEY_NAME`] and not even readable with [`KEY_NAME`],
    /// which updates `delegated.test` only.
    pub fn start_split(example_zone: &str) -> Option<Bind> {
        Bind::start_inner(example_zone, true)
    }

    fn start_inner(example_zone: &str, split: bool) -> Option<Bind> {
        let (named, keygen, _) = tools()?;
        let dir = tempfile::tempdir().unwrap();
        let key = Command::new(&keygen)
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .unwrap();
        assert!(key.status.success(), "tsig-keygen failed: {key:?}");
        let key_text = String::from_utf8(key.stdout).unwrap();
        let secret_b64 = key_text
            .split("secret \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a secret in tsig-keygen's output")
            .to_owned();
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&secret_b64)
            .unwrap();
        std::fs::write(dir.path().join("tsig.key"), &key_text).unwrap();
        let main_key = Command::new(&keygen)
            .args(["-a", "hmac-sha256", MAIN_KEY_NAME])
            .output()
            .unwrap();
        assert!(
            main_key.status.success(),
            "tsig-keygen failed: {main_key:?}"
        );
        std::fs::write(dir.path().join("main.key"), &main_key.stdout).unwrap();

        let mut last_log = String::new();
        // The port is free when chosen; another process may take it before
        // named binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            write_config(dir.path(), port, example_zone, split);
            let log = std::fs::File::create(dir.path().join("named.log")).unwrap();
            let mut child = Command::new(&named)
                .args(["-g", "-4", "-c"])
                .arg(dir.path().join("named.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            if wait_ready(&mut child, port) {
                return Some(Bind {
                    dir,
                    child,
                    port,
                    secret,
                    secret_b64,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(dir.path().join("named.log")).unwrap_or_default();
        }
        panic!("named did not start; its log:\n{last_log}");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `dig @127.0.0.1 -p PORT ARGS`, stdout.
    pub fn dig(&self, args: &[&str]) -> String {
        dig(self.port, args)
    }

    /// `dig TYPE NAME +short`: one line per record.
    pub fn short(&self, rtype: &str, name: &str) -> Vec<String> {
        self.dig(&[rtype, name, "+short"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// TXT values as verifiers see them: each record's quoted strings
    /// joined.
    pub fn txt_values(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .short("TXT", name)
            .iter()
            .map(|line| {
                line.split('"')
                    .enumerate()
                    .filter(|(i, _)| i % 2 == 1)
                    .map(|(_, s)| s)
                    .collect::<String>()
            })
            .collect();
        values.sort();
        values
    }

    /// The number of character-strings of each TXT record, as dig prints
    /// them.
    pub fn txt_string_counts(&self, name: &str) -> Vec<usize> {
        self.short("TXT", name)
            .iter()
            .map(|line| line.matches('"').count() / 2)
            .collect()
    }

    /// The zone's SOA serial.
    pub fn serial(&self, zone: &str) -> u32 {
        let line = self.short("SOA", zone).join(" ");
        line.split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no SOA serial in {line:?}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `dig @127.0.0.1 -p PORT +norecurse ARGS`, stdout.
fn dig(port: u16, args: &[&str]) -> String {
    let dig = find("dig").expect("dig");
    let out = Command::new(dig)
        .args(["@127.0.0.1", "-p", &port.to_string(), "+norecurse"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Until the server answers an SOA query (false if it exits first).
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let out = dig(
            port,
            &["+time=1", "+tries=1", "SOA", "example.test", "+short"],
        );
        if out.contains("hostmaster.example.test.") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn write_config(dir: &Path, port: u16, example_zone: &str, split: bool) {
    for (zone, text) in [
        ("example.test", example_zone),
        ("delegated.test", ZONE_DELEGATED),
        ("readonly.test", ZONE_READONLY),
    ] {
        std::fs::write(dir.join(format!("{zone}.zone")), text).unwrap();
        // Updates land in a journal that would override the zone file.
        let _ = std::fs::remove_file(dir.join(format!("{zone}.zone.jnl")));
    }
    let d = dir.display();
    // (recursion option, extra zone statement)
    let (recursion, root_zone) = if split {
        std::fs::write(
            dir.join("root.zone"),
            "$TTL 300\n. IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
             . IN NS ns.example.test.\nns.example.test. IN A 127.0.0.1\n",
        )
        .unwrap();
        (
            "recursion yes; allow-recursion { 127.0.0.1; };",
            format!("zone \".\" {{ type primary; file \"{d}/root.zone\"; }};"),
        )
    } else {
        ("recursion no;", String::new())
    };
    let example_access = if split {
        format!(
            "allow-update {{ key \"{MAIN_KEY_NAME}\"; }}; allow-query {{ !key \"{KEY_NAME}\"; any; }};"
        )
    } else {
        format!("allow-update {{ key \"{KEY_NAME}\"; }};")
    };
    let conf = format!(
        r#"include "{d}/tsig.key";
include "{d}/main.key";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    {recursion}
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
zone "example.test" {{ type primary; file "{d}/example.test.zone"; {example_access} }};
zone "delegated.test" {{ type primary; file "{d}/delegated.test.zone"; allow-update {{ key "{KEY_NAME}"; }}; }};
zone "readonly.test" {{ type primary; file "{d}/readonly.test.zone"; }};
{root_zone}
"#
    );
    std::fs::write(dir.join("named.conf"), conf).unwrap();
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

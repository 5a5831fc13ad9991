//! An MTA-STS lab for end-to-end tests with real senders, inside the
//! network + mount namespace of [`crate::dnssec`] (an inner test calls
//! [`Lab::start`] after [`crate::dnssec::run_in_namespace`] re-ran it there).
//!
//! The rule: everything a sender uses is a real program on an address of
//! the test's own namespace, and nothing in the lab knows about mxkeys; a
//! test writes the policy body into [`Lab::webroot`] and the `_mta-sts` TXT
//! into the zone (by hand, or by running mxkeys), and looks at what the
//! senders do:
//! - BIND serves `example.test` ([`crate::dnssec::SignedZone`]; MTA-STS
//!   needs no DNSSEC, the zone being signed changes nothing) with `mx1` at
//!   [`MX1_IP`], `mx2` at [`MX2_IP`], `mta-sts` at [`WEB_IP`], and an MX
//!   set [`Lab::set_mx`] replaces;
//! - two Postfix MX hosts on port 25 of [`MX1_IP`] and [`MX2_IP`],
//!   accepting mail for `example.test` (and discarding it once queued):
//!   mx1 serves a test-CA certificate for its name, mx2 one for its name
//!   too, or a self-signed one ([`Mx2::SelfSigned`]);
//! - nginx (`nginx-light`) on [`WEB_IP`]:443 serving `WEBROOT/$host` with a
//!   test-CA certificate for `mta-sts.example.test`, the layout mxkeys'
//!   `webroot` writes;
//! - `mta-sts-daemon` (postfix-mta-sts-resolver) on 127.0.0.1:PORT, its
//!   cache grace 1 s, trusting the test CA through `SSL_CERT_FILE`,
//!   resolving through the namespace's Unbound;
//! - a Postfix sender on [`crate::dnssec::SENDER`] with
//!   `smtp_tls_policy_maps = socketmap:inet:127.0.0.1:PORT:postfix`, the
//!   test CA as its only trust anchor, taking mail on a loopback port.
//!
//! Gotchas met on the way:
//! - The namespace's `lo` routes all of 127.0.0.0/8, but Postfix's
//!   `inet_interfaces` must be an interface's address: the lab adds the MX
//!   and web addresses to `lo` (inside the namespace only).
//! - nginx started by root runs its workers as `nobody`, who cannot enter
//!   a 0700 temporary directory: the lab runs it with `master_process off`
//!   (one process, root), in the foreground as the test's child.
//! - `mta-sts-daemon` re-fetches a policy only when the TXT id changes and
//!   after `cache_grace` (60 s by default): the lab sets 1 s.
//! - The resolver answers `testing` policies with `NOTFOUND` (unless
//!   `strict_testing`), so only `enforce` changes what the sender does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dnssec::{self, SENDER, SignedZone, TTL, ZONE};
use crate::servers::{Need, Postfix, combined_pem, output_within, prog};
use crate::{Ca, KillOnDrop, LeafSpec, pem_block, self_signed_leaf, set_mode, write};

/// The first MX host, and its address in the namespace.
pub const MX1: &str = "mx1.example.test";
pub const MX1_IP: &str = "127.0.0.4";
/// The second MX host, and its address in the namespace.
pub const MX2: &str = "mx2.example.test";
pub const MX2_IP: &str = "127.0.0.5";
/// Where `mta-sts.example.test` points at first: nginx's address.
pub const WEB_IP: &str = "127.0.0.6";
/// A free address for mxkeys' own responder (`listen`); point the policy
/// host there with [`Lab::point_policy_host`].
pub const RESPONDER_IP: &str = "127.0.0.7";
/// The policy host of [`ZONE`].
pub const POLICY_HOST: &str = "mta-sts.example.test";
/// The policy's path under a policy host's directory of the webroot.
pub const POLICY_PATH: &str = ".well-known/mta-sts.txt";

/// The programs the lab needs besides [`crate::dnssec::NEEDS`].
pub const NEEDS: &[Need] = &[
    ("postfix", "postfix"),
    ("postmap", "postfix"),
    ("nginx", "nginx-light"),
    ("curl", "curl"),
    ("mta-sts-daemon", "postfix-mta-sts-resolver"),
    ("mta-sts-query", "postfix-mta-sts-resolver"),
];

/// How long a sender or a resolver may take to act.
const DEADLINE: Duration = Duration::from_secs(60);

/// Which certificate mx2 serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mx2 {
    /// One from the test CA for mx2.example.test, as mx1 has.
    TestCa,
    /// A self-signed one for mx2.example.test: no sender validates it.
    SelfSigned,
}

/// What the sender did with one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub rcpt: String,
    /// `sent`, `deferred` or `bounced`.
    pub status: String,
    /// Every sender log line about the message (its queue id).
    pub lines: Vec<String>,
}

/// The lab, its programs killed (in field order) on Drop.
pub struct Lab {
    pub sender: Postfix,
    _resolver: KillOnDrop,
    _nginx: KillOnDrop,
    pub mx1: Postfix,
    pub mx2: Postfix,
    pub zone: SignedZone,
    pub ca: Ca,
    /// The test CA's root, PEM: what every client trusts.
    pub root: PathBuf,
    /// nginx's root: `WEBROOT/mta-sts.example.test/.well-known/mta-sts.txt`.
    pub webroot: PathBuf,
    /// Where `mta-sts-daemon` answers on 127.0.0.1.
    pub resolver_port: u16,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Starts everything, the MX set being [`MX1`] alone; no policy, no
    /// `_mta-sts` record.
    #[track_caller]
    pub fn start(mx2: Mx2) -> Lab {
        dnssec::assert_in_namespace();
        for ip in [MX1_IP, MX2_IP, WEB_IP, RESPONDER_IP] {
            let mut c = Command::new(prog("ip"));
            c.args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
            crate::servers::run_ok(c);
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let zone = SignedZone::start(
            &d.join("dns"),
            &format!(
                "mx1 IN A {MX1_IP}\nmx2 IN A {MX2_IP}\nmta-sts IN A {WEB_IP}\n\
                 sender IN A {SENDER}\n"
            ),
        );
        let ca = Ca::new("mta-sts-lab");
        let root = d.join("root.pem");
        write(&root, pem_block("CERTIFICATE", &ca.root_der));

        let tls = d.join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let combined = |name: &str, leaf: &crate::Leaf| {
            let p = tls.join(format!("{name}.pem"));
            write(&p, combined_pem(leaf));
            set_mode(&p, 0o600);
            p
        };
        let mx1_file = combined("mx1", &ca.issue(&LeafSpec::new(&[MX1])));
        let mx2_leaf = match mx2 {
            Mx2::TestCa => ca.issue(&LeafSpec::new(&[MX2])),
            Mx2::SelfSigned => self_signed_leaf(&LeafSpec::new(&[MX2])),
        };
        let mx2_file = combined("mx2", &mx2_leaf);
        let mx1 = Postfix::start_sink_at(&d.join("mx1"), MX1_IP, &[&mx1_file], 25);
        let mx2 = Postfix::start_sink_at(&d.join("mx2"), MX2_IP, &[&mx2_file], 25);

        let webroot = d.join("www");
        std::fs::create_dir_all(webroot.join(POLICY_HOST).join(".well-known")).unwrap();
        let web = ca.issue(&LeafSpec::new(&[POLICY_HOST]));
        let nginx = start_nginx(&d.join("nginx"), &webroot, &web);

        let resolver_port = crate::free_port();
        let resolver = start_resolver(&d.join("resolver"), resolver_port, &root);
        let sender = Postfix::start_sender_with(
            &d.join("sender"),
            &format!(
                "myhostname = sender.example.test\n\
                 inet_interfaces = {SENDER}\n\
                 relay_domains =\n\
                 smtp_tls_security_level = may\n\
                 smtp_tls_CAfile = {root}\n\
                 smtp_tls_policy_maps = socketmap:inet:127.0.0.1:{resolver_port}:postfix\n\
                 smtp_tls_loglevel = 1\n\
                 maximal_backoff_time = 10s\n\
                 minimal_backoff_time = 5s\n\
                 queue_run_delay = 5s\n",
                root = root.display()
            ),
        );
        let lab = Lab {
            sender,
            _resolver: resolver,
            _nginx: nginx,
            mx1,
            mx2,
            zone,
            ca,
            root,
            webroot,
            resolver_port,
            dir,
        };
        lab.set_mx(&[MX1]);
        lab
    }

    /// Replaces the zone's MX set by `hosts` (preference 10 each) and
    /// waits until the resolver answers exactly that set.
    #[track_caller]
    pub fn set_mx(&self, hosts: &[&str]) {
        let mut commands = format!("update delete {ZONE} MX\n");
        for h in hosts {
            commands.push_str(&format!("update add {ZONE} {TTL} MX 10 {h}.\n"));
        }
        self.zone.update(&commands);
        let mut want: Vec<String> = hosts.iter().map(|h| format!("10 {h}.")).collect();
        want.sort();
        self.zone.wait("the resolver to answer the new MX set", || {
            let mut got = dnssec::answer(&self.zone.resolve(&["MX", ZONE]), "MX");
            got.sort();
            (got == want).then_some(())
        });
    }

    /// Writes a policy body by hand where nginx serves it.
    pub fn write_policy(&self, body: &str) {
        let path = self.policy_file();
        let tmp = path.with_extension("tmp");
        write(&tmp, body);
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// The file nginx serves as `https://mta-sts.example.test/.well-known/mta-sts.txt`.
    pub fn policy_file(&self) -> PathBuf {
        self.webroot.join(POLICY_HOST).join(POLICY_PATH)
    }

    /// Publishes `v=STSv1; id=ID` at `_mta-sts.example.test` by hand and
    /// waits until the resolver answers it.
    #[track_caller]
    pub fn set_txt(&self, id: &str) {
        let owner = format!("_mta-sts.{ZONE}");
        self.zone.update(&format!(
            "update delete {owner} TXT\nupdate add {owner} {TTL} TXT \"v=STSv1; id={id};\"\n"
        ));
        self.zone.wait("the resolver to answer the new TXT", || {
            let out = self.zone.resolve(&["TXT", &owner]);
            out.contains(&format!("id={id}")).then_some(())
        });
    }

    /// The id in the `_mta-sts` TXT record BIND serves (None: no record).
    pub fn served_id(&self) -> Option<String> {
        let out = self
            .zone
            .authoritative(&["TXT", &format!("_mta-sts.{ZONE}")]);
        dnssec::answer(&out, "TXT").iter().find_map(|t| {
            let t = t.replace("\" \"", "").replace('"', "");
            let rest = t.split("id=").nth(1)?;
            Some(
                rest.split(|c: char| c == ';' || c.is_whitespace())
                    .next()?
                    .to_owned(),
            )
        })
    }

    /// The body nginx serves for `mta-sts.example.test` (curl trusting
    /// only the test CA, the name resolved through the namespace's DNS);
    /// None unless 200.
    pub fn fetch_body(&self) -> Option<String> {
        let mut c = Command::new(prog("curl"));
        c.args(["-sS", "--noproxy", "*", "--max-time", "10", "--fail"])
            .arg("--cacert")
            .arg(&self.root)
            .arg(format!("https://{POLICY_HOST}/{POLICY_PATH}"));
        let out = output_within(c, Duration::from_secs(20)).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `mta-sts-query example.test`: what the resolver's own fetcher finds
    /// (stdout and stderr).
    pub fn query(&self) -> String {
        let mut c = Command::new(prog("mta-sts-query"));
        c.arg(ZONE).env("SSL_CERT_FILE", &self.root);
        clear_proxies(&mut c);
        let out = output_within(c, DEADLINE).unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// What `mta-sts-daemon` tells Postfix for example.test, as Postfix
    /// asks it (`postmap -q`): e.g. `secure match=mx1.example.test
    /// servername=hostname`, or empty (no policy to apply).
    pub fn resolver_answer(&self) -> String {
        let mut c = Command::new(prog("postmap"));
        c.arg("-c").arg(&self.sender.dir).args([
            "-q",
            ZONE,
            &format!("socketmap:inet:127.0.0.1:{}:postfix", self.resolver_port),
        ]);
        let out = output_within(c, DEADLINE).unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the resolver's answer satisfies `ok` (it re-fetches
    /// after its 1 s grace once the TXT id changed).
    #[track_caller]
    pub fn wait_resolver(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let got = self.resolver_answer();
            if ok(&got) {
                return got;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for the resolver to answer {what}; last: {got:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends one message to `rcpt` (…@example.test) through the sender and
    /// waits until its log says what became of it: sent, deferred or
    /// bounced.
    #[track_caller]
    pub fn send(&self, rcpt: &str) -> Delivery {
        let message = format!(
            "From: <test@sender.example.test>\r\nTo: <{rcpt}>\r\nSubject: mta-sts lab\r\n\r\nhello\r\n"
        );
        crate::mailloop::submit(
            &self.sender.addr(),
            "test@sender.example.test",
            rcpt,
            message.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("the sender refused the message: {e}\n{}", self.logs()));
        let start = Instant::now();
        loop {
            let log =
                std::fs::read_to_string(self.sender.dir.join("postfix.log")).unwrap_or_default();
            let found = log
                .lines()
                .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains(" status="));
            if let Some(line) = found {
                let qid = queue_id(line).unwrap_or_default();
                let status = line
                    .split(" status=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or_default()
                    .to_owned();
                let lines = log
                    .lines()
                    .filter(|l| {
                        !qid.is_empty() && l.contains(&qid) || l.contains(MX1) || l.contains(MX2)
                    })
                    .map(str::to_owned)
                    .collect();
                return Delivery {
                    rcpt: rcpt.to_owned(),
                    status,
                    lines,
                };
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for the sender to deliver or defer {rcpt}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A `[dns.lab]` provider for mxkeys and an `[mta_sts]` table for
    /// example.test in `mode`, writing into the lab's webroot, trusting the
    /// test CA, fetching back from nginx; `extra` are more lines of the
    /// table (e.g. `mx = [...]`, `max_age = "1d"`).
    pub fn mxkeys_toml(&self, mode: &str, extra: &str) -> String {
        let serve = format!(
            "webroot = \"{}\"\nresponders = [\"{WEB_IP}:443\"]",
            self.webroot.display()
        );
        self.mxkeys_toml_serving(mode, &serve, extra)
    }

    /// Like [`Lab::mxkeys_toml`], served as `serve` says (TOML lines, e.g.
    /// `listen = "127.0.0.7:443"`).
    pub fn mxkeys_toml_serving(&self, mode: &str, serve: &str, extra: &str) -> String {
        format!(
            "{dns}\n[mta_sts]\n\
             domains = [\"{ZONE}\"]\n\
             mode = \"{mode}\"\n\
             dns = \"lab\"\n\
             {serve}\n\
             ca_bundle = \"{root}\"\n\
             {extra}\n",
            dns = self.zone.rfc2136_toml("lab", ZONE),
            root = self.root.display(),
        )
    }

    /// Points `mta-sts.example.test` at `ip` and waits until the resolver
    /// answers it.
    #[track_caller]
    pub fn point_policy_host(&self, ip: &str) {
        self.zone.update(&format!(
            "update delete {POLICY_HOST} A\nupdate add {POLICY_HOST} {TTL} A {ip}\n"
        ));
        self.zone
            .wait("the resolver to answer the policy host's address", || {
                (dnssec::answer(&self.zone.resolve(&["A", POLICY_HOST]), "A") == [ip]).then_some(())
            });
    }

    /// The end of every program's log, for failure messages.
    pub fn logs(&self) -> String {
        let d = self.dir.path();
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.sender.log(),
            self.mx1.log(),
            self.mx2.log()
        );
        for f in [
            d.join("resolver/daemon.log"),
            d.join("nginx/error.log"),
            d.join("nginx/access.log"),
        ] {
            s.push_str(&format!(
                "--- {} ---\n{}\n",
                f.display(),
                crate::servers::tail(&f, 3000)
            ));
        }
        s.push_str(&self.zone.logs());
        s
    }
}

/// The queue id of a Postfix log line (`... smtp[PID]: QUEUEID: to=...`).
fn queue_id(line: &str) -> Option<String> {
    let after = line.split("]: ").nth(1)?;
    let (id, _) = after.split_once(':')?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then(|| id.to_owned())
}

/// Removes every proxy variable from `c`'s environment: test traffic goes
/// to loopback only.
pub fn clear_proxies(c: &mut Command) {
    for v in [
        "https_proxy",
        "HTTPS_PROXY",
        "http_proxy",
        "HTTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
}

/// nginx on [`WEB_IP`]:443 serving `webroot/$host` with `leaf`.
fn start_nginx(dir: &Path, webroot: &Path, leaf: &crate::Leaf) -> KillOnDrop {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let cert = dir.join("fullchain.pem");
    let key = dir.join("key.pem");
    write(&cert, leaf.fullchain_pem());
    write(&key, leaf.key_pem());
    set_mode(&key, 0o600);
    let d = dir.display();
    write(
        &dir.join("nginx.conf"),
        format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    server {{
        listen {WEB_IP}:443 ssl;
        server_name {POLICY_HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {webroot}/$host;
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            webroot = webroot.display(),
        ),
    );
    let log = std::fs::File::create(dir.join("nginx.out")).unwrap();
    let child = Command::new(prog("nginx"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn nginx");
    let guard = KillOnDrop(child);
    crate::servers::poll(
        "nginx to listen",
        DEADLINE,
        || std::net::TcpStream::connect((WEB_IP, 443)).ok().map(|_| ()),
        || {
            format!(
                "{}\n{}",
                crate::servers::tail(&dir.join("nginx.out"), 3000),
                crate::servers::tail(&dir.join("error.log"), 3000)
            )
        },
    );
    guard
}

/// `mta-sts-daemon` on 127.0.0.1:`port`, trusting `root`.
fn start_resolver(dir: &Path, port: u16, root: &Path) -> KillOnDrop {
    std::fs::create_dir_all(dir).unwrap();
    write(
        &dir.join("daemon.yml"),
        format!(
            "host: 127.0.0.1\nport: {port}\nreuse_port: true\ncache_grace: 1\n\
             cache:\n  type: internal\n  options:\n    cache_size: 100\n\
             default_zone:\n  strict_testing: false\n  timeout: 4\n"
        ),
    );
    let mut c = Command::new(prog("mta-sts-daemon"));
    c.arg("-c")
        .arg(dir.join("daemon.yml"))
        .args(["-v", "debug", "-l"])
        .arg(dir.join("daemon.log"))
        .env("SSL_CERT_FILE", root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("daemon.err")).unwrap());
    clear_proxies(&mut c);
    let guard = KillOnDrop(c.spawn().expect("spawn mta-sts-daemon"));
    crate::servers::poll(
        "mta-sts-daemon to listen",
        DEADLINE,
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
        || {
            format!(
                "{}\n{}",
                crate::servers::tail(&dir.join("daemon.err"), 3000),
                crate::servers::tail(&dir.join("daemon.log"), 3000)
            )
        },
    );
    guard
}

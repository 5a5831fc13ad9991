//! Real servers for end-to-end tests: Postfix, Dovecot, pebble (with
//! pebble-challtestsrv as its DNS), certbot against pebble, and probes with
//! the `openssl` command line (independent of mxkeys' own TLS code).
//!
//! Every server runs on loopback ports picked at start, in its own directory
//! with its own configuration, and is stopped when its guard is dropped,
//! even when the test fails.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{KeyKind, Leaf, days, free_port, pem_blocks, set_mode, sha256_hex, write};

/// The mail server's name in these tests.
pub const MAIL: &str = "mail.example.test";

/// How long a server may take to come up or to show a change.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(45);

// ---------------------------------------------------------------------------
// Required programs
// ---------------------------------------------------------------------------

/// (program name or absolute path, Debian package providing it)
pub type Need = (&'static str, &'static str);

pub const OPENSSL: &[Need] = &[("openssl", "openssl")];
pub const POSTFIX: &[Need] = &[("postfix", "postfix")];
pub const DOVECOT: &[Need] = &[
    ("dovecot", "dovecot-core"),
    ("doveadm", "dovecot-core"),
    ("/usr/lib/dovecot/imap-login", "dovecot-imapd"),
    ("/usr/lib/dovecot/imap", "dovecot-imapd"),
    ("/usr/lib/dovecot/pop3-login", "dovecot-pop3d"),
];
pub const PEBBLE: &[Need] = &[("pebble", "pebble"), ("pebble-challtestsrv", "pebble")];
pub const CERTBOT: &[Need] = &[("certbot", "certbot")];

/// Where a program is: an absolute path as is, else searched in PATH and
/// the sbin directories (Postfix and Dovecot live in /usr/sbin).
pub fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|c| c.is_file())
}

/// Path of a program that [`require`] has found.
pub fn prog(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| panic!("{program} is not installed"))
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True when every program of `needs` is installed and we are root (the
/// servers run as root, as they do in production). Otherwise: with
/// `CI=true` the test fails (installing them is `.ci/test`'s job); without
/// it, a loud message names what to install and the caller returns.
pub fn require(test: &str, needs: &[&[Need]]) -> bool {
    check_needs(test, needs, true)
}

/// Like [`require`], for tests that start no server needing root.
pub fn require_programs(test: &str, needs: &[&[Need]]) -> bool {
    check_needs(test, needs, false)
}

fn check_needs(test: &str, needs: &[&[Need]], as_root: bool) -> bool {
    let mut missing_progs = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for (p, pkg) in needs.iter().flat_map(|n| n.iter()) {
        if which(p).is_none() {
            missing_progs.push(*p);
            if !packages.contains(pkg) {
                packages.push(pkg);
            }
        }
    }
    let mut problems = Vec::new();
    if !missing_progs.is_empty() {
        problems.push(format!(
            "missing {}: install the Debian package(s) with `apt-get install {}` (or run `bash .ci/test` as root)",
            missing_progs.join(", "),
            packages.join(" ")
        ));
    }
    if as_root && !nix::unistd::geteuid().is_root() {
        problems.push("the mail servers must be started as root".to_string());
    }
    if problems.is_empty() {
        return true;
    }
    let msg = problems.join("; ");
    if is_ci() {
        panic!("{test}: CI=true and {msg}");
    }
    eprintln!(
        "\n************************************************************\n\
         SKIPPING {test}: {msg}\n\
         ************************************************************\n"
    );
    false
}

// ---------------------------------------------------------------------------
// Small process and file helpers
// ---------------------------------------------------------------------------

/// Run `cmd` with stdin closed; kill it after `limit`. Err when it could not
/// be started or timed out.
pub fn output_within(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    use wait_timeout::ChildExt as _;
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {desc}: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = match child.wait_timeout(limit).map_err(|e| e.to_string())? {
        Some(s) => s,
        None => {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{desc} did not finish within {limit:?}"));
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    })
}

/// Run a command that must succeed; panics with its output otherwise.
#[track_caller]
pub fn run_ok(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    let o = output_within(cmd, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.status.success(),
        "{desc} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Poll `probe` every 50 ms until it returns `Some`, or panic after
/// `deadline` with `what` and `context()`.
#[track_caller]
pub fn poll<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replace `path` atomically (temporary file + rename), as a careful
/// deployment tool would.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    let tmp = path.with_extension("tmp-hand");
    write(&tmp, contents);
    set_mode(&tmp, mode);
    std::fs::rename(&tmp, path).unwrap();
}

/// Key, leaf, intermediates: the combined file Postfix's
/// `smtpd_tls_chain_files` reads.
pub fn combined_pem(leaf: &Leaf) -> String {
    format!("{}{}", leaf.key_pem(), leaf.fullchain_pem())
}

/// DER of the first CERTIFICATE block of a PEM file (the leaf).
pub fn first_cert(path: &Path) -> Vec<u8> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    pem_blocks(&text)
        .into_iter()
        .find(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("{} holds no certificate", path.display()))
}

/// Make `dir` traversable by the servers' unprivileged users (tempfile
/// creates 0700 directories).
pub fn open_dir(dir: &Path) {
    set_mode(dir, 0o755);
}

pub(crate) fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

/// Set a file's mtime in the past (Postfix commands stall for up to 2 s
/// after main.cf changed).
fn age_file(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    f.set_times(
        std::fs::FileTimes::new()
            .set_modified(past)
            .set_accessed(past),
    )
    .unwrap();
}

pub fn wait_port(addr: &str, what: &str, context: impl Fn() -> String) {
    poll(
        &format!("{what} to listen on {addr}"),
        SERVER_DEADLINE,
        || TcpStream::connect(addr).ok().map(|_| ()),
        context,
    );
}

/// Send SIGTERM to our own child, wait up to 10 s, then SIGKILL it.
pub fn terminate_child(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use wait_timeout::ChildExt as _;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = kill(pid, Signal::SIGTERM);
    if !matches!(child.wait_timeout(Duration::from_secs(10)), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---------------------------------------------------------------------------
// Postfix
// ---------------------------------------------------------------------------

/// The master.cf services an instance needs to queue and deliver mail.
const DELIVERY_SERVICES: &str = "\
            pickup    unix  n       -       n       60      1       pickup\n\
            cleanup   unix  n       -       n       -       0       cleanup\n\
            qmgr      unix  n       -       n       300     1       qmgr\n\
            rewrite   unix  -       -       n       -       -       trivial-rewrite\n\
            bounce    unix  -       -       n       -       0       bounce\n\
            defer     unix  -       -       n       -       0       bounce\n\
            trace     unix  -       -       n       -       0       bounce\n\
            verify    unix  -       -       n       -       1       verify\n\
            flush     unix  n       -       n       1000?   0       flush\n\
            proxymap  unix  -       -       n       -       -       proxymap\n\
            smtp      unix  -       -       n       -       -       smtp\n\
            relay     unix  -       -       n       -       -       smtp\n\
            showq     unix  n       -       n       -       -       showq\n\
            error     unix  -       -       n       -       -       error\n\
            retry     unix  -       -       n       -       -       error\n\
            discard   unix  -       -       n       -       -       discard\n\
            scache    unix  -       -       n       -       1       scache\n";

/// The main.cf lines of an smtpd serving `chain_files` (each: key then
/// certificates) with STARTTLS.
pub(crate) fn smtpd_tls_cf(chain_files: &[&Path]) -> String {
    let chain: Vec<String> = chain_files
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    format!(
        "smtpd_banner = $myhostname ESMTP\n\
         smtpd_tls_security_level = may\n\
         smtpd_tls_chain_files = {chain}\n\
         smtpd_tls_loglevel = 1\n\
         tls_medium_cipherlist = DEFAULT:@SECLEVEL=2\n",
        chain = chain.join(", "),
    )
}

/// A Postfix instance (`postfix -c DIR`) with one smtpd on 127.0.0.1:port.
pub struct Postfix {
    /// The configuration directory (main.cf, master.cf).
    pub dir: PathBuf,
    pub port: u16,
    /// The address its smtpd listens on (127.0.0.1 unless started `_at`).
    ip: String,
    running: bool,
}

impl Postfix {
    /// Configure Postfix in `dir` with `smtpd_tls_chain_files = chain_files`
    /// (each: key then certificates; they must exist) and start it.
    ///
    /// Postfix sets OpenSSL's security level to 0 (it serves an RSA-1024 key
    /// or a SHA-1-signed chain without complaint); `@SECLEVEL=2` in the
    /// cipher list (smtpd's default grade is "medium") restores Debian's
    /// system default for handshakes, as Dovecot has it.
    #[track_caller]
    pub fn start(dir: &Path, chain_files: &[&Path]) -> Postfix {
        Postfix::start_on(dir, chain_files, free_port())
    }

    /// Like [`Postfix::start`], with smtpd on 127.0.0.1:`port` (e.g. 25 in
    /// a network namespace of the test's own, where DANE clients look).
    #[track_caller]
    pub fn start_on(dir: &Path, chain_files: &[&Path], port: u16) -> Postfix {
        Postfix::launch_on(dir, port, &smtpd_tls_cf(chain_files), "")
    }

    /// Like [`Postfix::start_on`], and it accepts mail for `example.test`
    /// and discards it once queued: the receiving end of a mail loop.
    #[track_caller]
    pub fn start_sink_on(dir: &Path, chain_files: &[&Path], port: u16) -> Postfix {
        let cf = format!(
            "{}relay_domains = example.test\nrelay_transport = discard\n",
            smtpd_tls_cf(chain_files)
        );
        Postfix::launch_on(dir, port, &cf, DELIVERY_SERVICES)
    }

    /// Like [`Postfix::start_sink_on`], with smtpd on `ip`:`port` (an
    /// address of the test's namespace) and `inet_interfaces = ip`: one of
    /// several MX hosts on port 25.
    #[track_caller]
    pub fn start_sink_at(dir: &Path, ip: &str, chain_files: &[&Path], port: u16) -> Postfix {
        let cf = format!(
            "{}relay_domains = example.test\nrelay_transport = discard\ninet_interfaces = {ip}\n",
            smtpd_tls_cf(chain_files)
        );
        Postfix::launch_at(dir, ip, port, &cf, DELIVERY_SERVICES)
    }

    /// A sender with the common settings and `main_cf_extra` (its own
    /// `myhostname`, `inet_interfaces`, TLS policy): its smtpd (127.0.0.1, a
    /// free port) takes mail from loopback clients and relays it.
    #[track_caller]
    pub fn start_sender_with(dir: &Path, main_cf_extra: &str) -> Postfix {
        Postfix::launch(dir, main_cf_extra, DELIVERY_SERVICES)
    }

    /// A sender in DANE mode: its smtpd (127.0.0.1, a free port) takes mail
    /// from loopback clients and relays it to the recipient domain's MX
    /// hosts, found through the system resolver, requiring TLS verified
    /// against DNSSEC-validated TLSA records. Its own name and
    /// `inet_interfaces` differ from a receiver's (else Postfix says "mail
    /// loops back to myself"); `dnssec_probe` asks the test zone (the
    /// default probes the root, unreachable in a test's namespace).
    #[track_caller]
    pub fn start_dane_sender(dir: &Path) -> Postfix {
        let cf = "myhostname = sender.example.test\n\
                  inet_interfaces = 127.0.0.3\n\
                  relay_domains =\n\
                  smtp_dns_support_level = dnssec\n\
                  smtp_tls_security_level = dane\n\
                  dnssec_probe = ns:example.test\n\
                  smtp_tls_loglevel = 1\n";
        Postfix::launch(dir, cf, DELIVERY_SERVICES)
    }

    /// Configure Postfix in `dir` to accept mail, pass it through the
    /// milter at 127.0.0.1:`milter_port` and relay everything to
    /// 127.0.0.1:`relay_port`, and start it.
    #[track_caller]
    pub fn start_relay(dir: &Path, milter_port: u16, relay_port: u16) -> Postfix {
        let relay_cf = format!(
            "relay_domains =\n\
             relayhost = [127.0.0.1]:{relay_port}\n\
             smtp_dns_support_level = disabled\n\
             smtp_tls_security_level = none\n\
             smtpd_milters = inet:127.0.0.1:{milter_port}\n\
             non_smtpd_milters =\n\
             milter_default_action = accept\n"
        );
        Postfix::launch(dir, &relay_cf, DELIVERY_SERVICES)
    }

    /// Write main.cf (the common settings, then `main_cf_extra`) and
    /// master.cf (smtpd on a free loopback port and the services every
    /// instance needs, then `master_cf_extra`), start Postfix and wait for
    /// smtpd's banner.
    #[track_caller]
    pub(crate) fn launch(dir: &Path, main_cf_extra: &str, master_cf_extra: &str) -> Postfix {
        Postfix::launch_on(dir, free_port(), main_cf_extra, master_cf_extra)
    }

    #[track_caller]
    fn launch_on(dir: &Path, port: u16, main_cf_extra: &str, master_cf_extra: &str) -> Postfix {
        Postfix::launch_at(dir, "127.0.0.1", port, main_cf_extra, master_cf_extra)
    }

    #[track_caller]
    fn launch_at(
        dir: &Path,
        ip: &str,
        port: u16,
        main_cf_extra: &str,
        master_cf_extra: &str,
    ) -> Postfix {
        std::fs::create_dir_all(dir).unwrap();
        let queue = dir.join("queue");
        let data = dir.join("data");
        std::fs::create_dir_all(&queue).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        let postfix = nix::unistd::User::from_name("postfix")
            .unwrap()
            .expect("user postfix exists");
        nix::unistd::chown(&data, Some(postfix.uid), Some(postfix.gid)).unwrap();
        open_dir(dir);
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             mail_owner = postfix\n\
             myhostname = {MAIL}\n\
             mydomain = example.test\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             alias_maps =\n\
             alias_database =\n\
             local_recipient_maps =\n\
             biff = no\n\
             maillog_file = {log}\n\
             maillog_file_prefixes = {dir}\n\
             {main_cf_extra}",
            queue = queue.display(),
            data = data.display(),
            log = dir.join("postfix.log").display(),
            dir = dir.display(),
        );
        let master_cf = format!(
            "{ip}:{port} inet n - n - - smtpd\n\
             tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n\
             anvil     unix  -       -       n       -       1       anvil\n\
             postlog   unix-dgram n  -       n       -       1       postlogd\n\
             {master_cf_extra}"
        );
        write(&dir.join("main.cf"), main_cf);
        write(&dir.join("master.cf"), master_cf);
        age_file(&dir.join("main.cf"));
        age_file(&dir.join("master.cf"));
        let pf = Postfix {
            dir: dir.to_path_buf(),
            port,
            ip: ip.to_owned(),
            running: false,
        };
        run_ok(pf.command("check"));
        let mut pf = pf;
        run_ok(pf.command("start"));
        pf.running = true;
        let addr = pf.addr();
        wait_port(&addr, "postfix", || pf.log());
        // The banner shows smtpd itself is up, not only master's socket.
        poll(
            "the Postfix banner",
            SERVER_DEADLINE,
            || smtp_banner(&addr).ok().filter(|b| b.starts_with("220")),
            || pf.log(),
        );
        pf
    }

    /// `postfix -c DIR ARG`.
    pub fn command(&self, arg: &str) -> Command {
        let mut c = Command::new(prog("postfix"));
        c.arg("-c").arg(&self.dir).arg(arg);
        c
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// The reload command for mxkeys: `postfix -c DIR reload`.
    pub fn reload_argv(&self) -> Vec<String> {
        vec![
            prog("postfix").to_str().unwrap().to_string(),
            "-c".into(),
            self.dir.to_str().unwrap().to_string(),
            "reload".into(),
        ]
    }

    #[track_caller]
    pub fn reload(&self) {
        run_ok(self.command("reload"));
    }

    /// The end of Postfix's log, for failure messages.
    pub fn log(&self) -> String {
        format!(
            "--- postfix log ({}) ---\n{}",
            self.dir.display(),
            tail(&self.dir.join("postfix.log"), 6000)
        )
    }

    fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let pid = self.master_pid();
        let _ = output_within(self.command("stop"), Duration::from_secs(30));
        if let Some(pid) = pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            let start = Instant::now();
            while nix::sys::signal::kill(pid, None).is_ok() {
                if start.elapsed() > Duration::from_secs(10) {
                    // This instance's master, by the pid it recorded.
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Dovecot
// ---------------------------------------------------------------------------

/// The certificate files a Dovecot instance reads.
pub struct DovecotTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    /// `ssl_alt_cert` / `ssl_alt_key` (a second key type).
    pub alt: Option<(&'a Path, &'a Path)>,
}

/// A Dovecot instance (`dovecot -F -c FILE`, our child) with IMAP
/// (STARTTLS), IMAPS and POP3 (STLS) on loopback.
pub struct Dovecot {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub pop3_port: u16,
    child: Child,
}

impl Dovecot {
    #[track_caller]
    pub fn start(dir: &Path, tls: DovecotTls<'_>) -> Dovecot {
        std::fs::create_dir_all(dir).unwrap();
        open_dir(dir);
        let (imap_port, imaps_port, pop3_port) = (free_port(), free_port(), free_port());
        let alt = match tls.alt {
            Some((c, k)) => format!(
                "ssl_alt_cert = <{}\nssl_alt_key = <{}\n",
                c.display(),
                k.display()
            ),
            None => String::new(),
        };
        let conf = dir.join("dovecot.conf");
        let log = dir.join("dovecot.log");
        let text = format!(
            "base_dir = {dir}/run\n\
             state_dir = {dir}/state\n\
             log_path = {log}\n\
             info_log_path = {log}\n\
             protocols = imap pop3\n\
             listen = 127.0.0.1\n\
             ssl = yes\n\
             ssl_cert = <{cert}\n\
             ssl_key = <{key}\n\
             {alt}\
             default_internal_user = dovecot\n\
             default_internal_group = dovecot\n\
             default_login_user = dovenull\n\
             disable_plaintext_auth = yes\n\
             auth_mechanisms = plain\n\
             mail_location = maildir:~/Maildir\n\
             passdb {{\n  driver = static\n  args = password=test\n}}\n\
             userdb {{\n  driver = static\n  args = uid=dovecot gid=dovecot home={dir}/home/%u\n}}\n\
             service imap-login {{\n\
               inet_listener imap {{\n    port = {imap_port}\n  }}\n\
               inet_listener imaps {{\n    port = {imaps_port}\n    ssl = yes\n  }}\n\
             }}\n\
             service pop3-login {{\n\
               inet_listener pop3 {{\n    port = {pop3_port}\n  }}\n\
               inet_listener pop3s {{\n    port = 0\n  }}\n\
             }}\n",
            dir = dir.display(),
            log = log.display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
        );
        write(&conf, text);
        let mut cmd = Command::new(prog("dovecot"));
        cmd.arg("-F").arg("-c").arg(&conf);
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("dovecot.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("dovecot.stderr")).unwrap());
        let child = cmd.spawn().expect("spawn dovecot");
        let mut dv = Dovecot {
            dir: dir.to_path_buf(),
            conf,
            imap_port,
            imaps_port,
            pop3_port,
            child,
        };
        for port in [imap_port, imaps_port, pop3_port] {
            let addr = format!("127.0.0.1:{port}");
            let start = Instant::now();
            while TcpStream::connect(&addr).is_err() {
                if let Ok(Some(status)) = dv.child.try_wait() {
                    panic!("dovecot exited ({status}) at start\n{}", dv.log());
                }
                if start.elapsed() > SERVER_DEADLINE {
                    panic!("dovecot does not listen on {addr}\n{}", dv.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        dv
    }

    pub fn imap_addr(&self) -> String {
        format!("127.0.0.1:{}", self.imap_port)
    }
    pub fn imaps_addr(&self) -> String {
        format!("127.0.0.1:{}", self.imaps_port)
    }
    pub fn pop3_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pop3_port)
    }

    /// The reload command for mxkeys: `doveadm -c FILE reload`.
    pub fn reload_argv(&self) -> Vec<String> {
        vec![
            prog("doveadm").to_str().unwrap().to_string(),
            "-c".into(),
            self.conf.to_str().unwrap().to_string(),
            "reload".into(),
        ]
    }

    #[track_caller]
    pub fn reload(&self) {
        let mut c = Command::new(prog("doveadm"));
        c.arg("-c").arg(&self.conf).arg("reload");
        run_ok(c);
    }

    /// Panics when the master has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("dovecot exited ({status})\n{}", self.log());
        }
    }

    pub fn log(&self) -> String {
        format!(
            "--- dovecot log ({}) ---\n{}{}",
            self.dir.display(),
            tail(&self.dir.join("dovecot.log"), 6000),
            tail(&self.dir.join("dovecot.stderr"), 2000)
        )
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        terminate_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------
// pebble + pebble-challtestsrv
// ---------------------------------------------------------------------------

/// pebble (an ACME CA) resolving every name to 127.0.0.1 through its own
/// pebble-challtestsrv, or through a DNS server of the test's
/// ([`Pebble::start_with_dns`]). HTTP-01 validation connects to the name's
/// address, port http_port.
pub struct Pebble {
    pub dir: PathBuf,
    /// The ACME directory URL.
    pub url: String,
    /// PEM of the CA that issued pebble's HTTPS certificate (for clients).
    pub https_ca: PathBuf,
    pub mgmt_port: u16,
    /// Where pebble's validator connects for HTTP-01 (certbot listens there).
    pub http_port: u16,
    // Dropped in order: pebble first, then its DNS server (none when the
    // test brings its own).
    pebble: Child,
    dns: Option<Child>,
}

impl Pebble {
    #[track_caller]
    pub fn start(dir: &Path) -> Pebble {
        Pebble::start_inner(dir, None)
    }

    /// pebble resolving names (A records for HTTP-01, TXT records for
    /// DNS-01) through the DNS server at `dns` (e.g. a test's BIND), with no
    /// pebble-challtestsrv.
    #[track_caller]
    pub fn start_with_dns(dir: &Path, dns: std::net::SocketAddr) -> Pebble {
        Pebble::start_inner(dir, Some(dns))
    }

    #[track_caller]
    fn start_inner(dir: &Path, dns_server: Option<std::net::SocketAddr>) -> Pebble {
        use rcgen::{CertificateParams, DnType, KeyPair, SanType};
        std::fs::create_dir_all(dir).unwrap();
        // pebble's HTTPS certificate, from a CA of our own.
        let (ca_cert, issuer) = crate::server_ca("pebble HTTPS test root");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.not_before = days(-1);
        p.not_after = days(30);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let https_ca = dir.join("https-ca.pem");
        write(&https_ca, ca_cert.pem());
        write(&dir.join("https-cert.pem"), cert.pem());
        write(&dir.join("https-key.pem"), key.serialize_pem());

        let (listen, mgmt_port, http_port, tls_port) =
            (free_port(), free_port(), free_port(), free_port());
        let (dns_port, dns_mgmt) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": dir.join("https-cert.pem"),
                "privateKey": dir.join("https-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": 7776000
            }
        });
        write(
            &dir.join("pebble.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        );

        let spawn = |mut cmd: Command, tag: &str| -> Child {
            cmd.stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join(format!("{tag}.log"))).unwrap())
                .stderr(std::fs::File::create(dir.join(format!("{tag}.stderr"))).unwrap());
            cmd.spawn().unwrap_or_else(|e| panic!("spawn {tag}: {e}"))
        };
        let (dns, dns_addr) = match dns_server {
            Some(addr) => (None, addr.to_string()),
            None => {
                let mut dns = Command::new(prog("pebble-challtestsrv"));
                dns.args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{dns_mgmt}")]);
                (
                    Some(spawn(dns, "challtestsrv")),
                    format!("127.0.0.1:{dns_port}"),
                )
            }
        };
        let mut pb = Command::new(prog("pebble"));
        pb.arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns_addr])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = spawn(pb, "pebble");
        let pebble = Pebble {
            dir: dir.to_path_buf(),
            url: format!("https://127.0.0.1:{listen}/dir"),
            https_ca,
            mgmt_port,
            http_port,
            pebble,
            dns,
        };
        if pebble.dns.is_some() {
            wait_port(
                &format!("127.0.0.1:{dns_mgmt}"),
                "pebble-challtestsrv",
                || pebble.log(),
            );
        }
        wait_port(&format!("127.0.0.1:{listen}"), "pebble", || pebble.log());
        wait_port(
            &format!("127.0.0.1:{mgmt_port}"),
            "pebble management",
            || pebble.log(),
        );
        pebble
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        for f in [
            "pebble.log",
            "pebble.stderr",
            "challtestsrv.log",
            "challtestsrv.stderr",
        ] {
            s.push_str(&format!("--- {f} ---\n{}\n", tail(&self.dir.join(f), 4000)));
        }
        s
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        // Our own children, by their handles.
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        if let Some(dns) = &mut self.dns {
            let _ = dns.kill();
            let _ = dns.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// certbot against pebble
// ---------------------------------------------------------------------------

/// A Certbot configuration directory fed by pebble.
pub struct CertbotDir {
    /// `--config-dir` (what mxkeys' certbot source reads).
    pub config: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
}

impl CertbotDir {
    pub fn new(root: &Path) -> CertbotDir {
        let d = CertbotDir {
            config: root.join("config"),
            work: root.join("work"),
            logs: root.join("logs"),
        };
        for p in [&d.config, &d.work, &d.logs] {
            std::fs::create_dir_all(p).unwrap();
        }
        d
    }

    fn command(&self, pebble: &Pebble, args: &[&str]) -> Command {
        let mut c = Command::new(prog("certbot"));
        c.args(args)
            .args(["--non-interactive", "--config-dir"])
            .arg(&self.config)
            .arg("--work-dir")
            .arg(&self.work)
            .arg("--logs-dir")
            .arg(&self.logs)
            // The trust for this command only.
            .env("REQUESTS_CA_BUNDLE", &pebble.https_ca);
        c
    }

    /// `live/NAME/`.
    pub fn live(&self, name: &str) -> PathBuf {
        self.config.join("live").join(name)
    }

    /// DER of the leaf `live/NAME/cert.pem` points at now.
    pub fn live_leaf(&self, name: &str) -> Vec<u8> {
        first_cert(&self.live(name).join("cert.pem"))
    }

    pub fn log(&self) -> String {
        format!(
            "--- certbot log ---\n{}",
            tail(&self.logs.join("letsencrypt.log"), 6000)
        )
    }
}

/// `certbot certonly --standalone` for `domains` as lineage `name`.
#[track_caller]
pub fn certbot_certonly(pebble: &Pebble, dir: &CertbotDir, name: &str, domains: &[&str]) {
    certbot_certonly_with(pebble, dir, name, domains, &[]);
}

/// [`certbot_certonly`] with more options (`--reuse-key`, `--key-type`,
/// `--deploy-hook`...).
#[track_caller]
pub fn certbot_certonly_with(
    pebble: &Pebble,
    dir: &CertbotDir,
    name: &str,
    domains: &[&str],
    extra: &[&str],
) {
    let port = pebble.http_port.to_string();
    let mut args = vec![
        "certonly",
        "--standalone",
        "--agree-tos",
        "--register-unsafely-without-email",
        "--preferred-challenges",
        "http",
        "--http-01-port",
        &port,
        "--http-01-address",
        "127.0.0.1",
        "--server",
        &pebble.url,
        "--cert-name",
        name,
    ];
    for d in domains {
        args.push("-d");
        args.push(d);
    }
    args.extend_from_slice(extra);
    let cmd = dir.command(pebble, &args);
    run_certbot(cmd, pebble, dir);
}

/// `certbot renew --force-renewal` of lineage `name`.
#[track_caller]
pub fn certbot_renew_force(pebble: &Pebble, dir: &CertbotDir, name: &str) {
    let cmd = dir.command(
        pebble,
        &[
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            "--cert-name",
            name,
        ],
    );
    run_certbot(cmd, pebble, dir);
}

#[track_caller]
fn run_certbot(cmd: Command, pebble: &Pebble, dir: &CertbotDir) {
    let desc = format!("{cmd:?}");
    let o = output_within(cmd, Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.status.success(),
        "{desc} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        dir.log(),
        pebble.log()
    );
}

// ---------------------------------------------------------------------------
// Probes (openssl s_client)
// ---------------------------------------------------------------------------

/// How a client reaches TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// SMTP STARTTLS
    Smtp,
    /// IMAP STARTTLS
    Imap,
    /// POP3 STLS
    Pop3,
    /// Implicit TLS
    Tls,
}

impl Proto {
    /// The `protocol` value of mxkeys' `verify` entries.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Smtp => "smtp",
            Proto::Imap => "imap",
            Proto::Pop3 => "pop3",
            Proto::Tls => "tls",
        }
    }
}

/// Which signature algorithms the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    Any,
    RsaOnly,
    EcdsaOnly,
}

/// The leaf certificate (DER) the server at `addr` serves, by `openssl
/// s_client`. Err when the connection, STARTTLS or the handshake fails.
pub fn served_leaf(
    addr: &str,
    proto: Proto,
    sni: Option<&str>,
    offer: Offer,
) -> Result<Vec<u8>, String> {
    let mut c = Command::new(prog("openssl"));
    c.args(["s_client", "-connect", addr]);
    match sni {
        Some(n) => c.args(["-servername", n]),
        None => c.arg("-noservername"),
    };
    match proto {
        Proto::Smtp => c.args(["-starttls", "smtp", "-name", "probe.example.test"]),
        Proto::Imap => c.args(["-starttls", "imap"]),
        Proto::Pop3 => c.args(["-starttls", "pop3"]),
        Proto::Tls => &mut c,
    };
    match offer {
        Offer::Any => &mut c,
        Offer::RsaOnly => c.args([
            "-sigalgs",
            "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pkcs1_sha256:rsa_pkcs1_sha384",
        ]),
        Offer::EcdsaOnly => c.args(["-sigalgs", "ecdsa_secp256r1_sha256:ecdsa_secp384r1_sha384"]),
    };
    let desc = format!("openssl s_client {addr} {proto:?} {offer:?}");
    let o = output_within(c, Duration::from_secs(30))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let fail = |why: &str| {
        let err_lines: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("error") || l.contains("454") || l.contains("didn't")
            })
            .take(6)
            .collect();
        Err(format!(
            "{desc}: {why} ({}): {}",
            o.status,
            err_lines.join(" | ")
        ))
    };
    if !o.status.success() {
        return fail("failed");
    }
    // s_client prints the leaf under "Server certificate".
    let Some(pos) = stdout.find("Server certificate") else {
        return fail("no server certificate");
    };
    match pem_blocks(&stdout[pos..])
        .into_iter()
        .find(|(l, _)| l == "CERTIFICATE")
    {
        Some((_, der)) => Ok(der),
        None => fail("no certificate block"),
    }
}

/// Whether a client can complete TLS with the server (any certificate).
pub fn tls_works(addr: &str, proto: Proto, sni: Option<&str>) -> Result<(), String> {
    served_leaf(addr, proto, sni, Offer::Any).map(|_| ())
}

fn read_reply_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("connection closed".into());
    }
    Ok(line.trim_end().to_string())
}

/// The first line of an SMTP server's greeting.
pub fn smtp_banner(addr: &str) -> Result<String, String> {
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    read_reply_line(&mut r)
}

/// The server's plain-text reply to STARTTLS / STLS (e.g. `220 2.0.0 Ready
/// to start TLS` or `454 4.7.0 TLS not available due to local problem`).
pub fn starttls_reply(addr: &str, proto: Proto) -> Result<String, String> {
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let io = |e: std::io::Error| e.to_string();
    match proto {
        Proto::Smtp => {
            // Greeting and EHLO replies may be multi-line ("220-", "250-").
            while read_reply_line(&mut r)?.starts_with("220-") {}
            w.write_all(b"EHLO probe.example.test\r\n").map_err(io)?;
            while read_reply_line(&mut r)?.starts_with("250-") {}
            w.write_all(b"STARTTLS\r\n").map_err(io)?;
        }
        Proto::Imap => {
            read_reply_line(&mut r)?;
            w.write_all(b"a1 STARTTLS\r\n").map_err(io)?;
        }
        Proto::Pop3 => {
            read_reply_line(&mut r)?;
            w.write_all(b"STLS\r\n").map_err(io)?;
        }
        Proto::Tls => return Err("implicit TLS has no STARTTLS".into()),
    }
    read_reply_line(&mut r)
}

/// Poll until `addr` serves `want` (DER) to a client offering `offer`.
#[track_caller]
pub fn wait_served(
    addr: &str,
    proto: Proto,
    sni: Option<&str>,
    offer: Offer,
    want: &[u8],
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    loop {
        let last = served_leaf(addr, proto, sni, offer);
        if last.as_deref() == Ok(want) {
            return;
        }
        if start.elapsed() > SERVER_DEADLINE {
            panic!(
                "timed out after {SERVER_DEADLINE:?}: {addr} ({proto:?}, {offer:?}) does not serve {}; last probe: {}\n{}",
                sha256_hex(want),
                match &last {
                    Ok(d) => format!("served {}", sha256_hex(d)),
                    Err(e) => e.clone(),
                },
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One endpoint a [`ProbeLoop`] hits.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub label: String,
    pub addr: String,
    pub proto: Proto,
    pub sni: Option<String>,
}

impl Endpoint {
    pub fn new(label: &str, addr: &str, proto: Proto, sni: Option<&str>) -> Endpoint {
        Endpoint {
            label: label.into(),
            addr: addr.into(),
            proto,
            sni: sni.map(str::to_owned),
        }
    }
}

/// (endpoint label, served leaf or why the probe failed)
pub type ProbeResult = (String, Result<Vec<u8>, String>);

/// A thread probing endpoints round-robin, as fast as it can, until
/// stopped; every result is recorded.
pub struct ProbeLoop {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<ProbeResult>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ProbeLoop {
    pub fn start(endpoints: Vec<Endpoint>) -> ProbeLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), results.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for e in &endpoints {
                    let got = served_leaf(&e.addr, e.proto, e.sni.as_deref(), Offer::Any);
                    r.lock().unwrap().push((e.label.clone(), got));
                }
            }
        });
        ProbeLoop {
            stop,
            results,
            handle: Some(handle),
        }
    }

    /// How many probes finished so far.
    pub fn count(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// Stop and return every (endpoint label, result).
    pub fn finish(mut self) -> Vec<ProbeResult> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().expect("probe thread");
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for ProbeLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// A certificate the servers refuse though mxkeys accepts it
// ---------------------------------------------------------------------------

/// A P-256 leaf for `names`, valid for 90 days, issued (SHA-256) by an
/// intermediate that its root signed with ECDSA-SHA1. mxkeys checks the
/// leaf's signature by the intermediate, not the intermediate's own
/// signature (its issuer is not in the chain), so the candidate is valid for
/// it; OpenSSL at Debian's security level 2 refuses the chain ("ca md too
/// weak"): Dovecot fails every handshake, Postfix (with `@SECLEVEL=2`, see
/// [`Postfix::start`]) too. (An RSA-1024 leaf is no such case: mxkeys
/// refuses the key itself, aws-lc takes RSA keys of 2048 bits and more.)
pub fn weak_chain_leaf(dir: &Path, names: &[&str]) -> Leaf {
    std::fs::create_dir_all(dir).unwrap();
    let p = |f: &str| dir.join(f);
    let ossl = |args: &[&str]| {
        let mut c = Command::new(prog("openssl"));
        c.args(args).current_dir(dir);
        run_ok(c);
    };
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    write(
        &p("ca.ext"),
        "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n",
    );
    write(
        &p("leaf.ext"),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            san.join(",")
        ),
    );
    for k in ["root.key", "inter.key", "leaf.key"] {
        ossl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            k,
        ]);
    }
    ossl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root.key",
        "-subj",
        "/CN=Weak Root",
        "-days",
        "30",
        "-out",
        "root.pem",
    ]);
    ossl(&[
        "req",
        "-new",
        "-key",
        "inter.key",
        "-subj",
        "/CN=SHA-1 Signed Intermediate",
        "-out",
        "inter.csr",
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        "inter.csr",
        "-CA",
        "root.pem",
        "-CAkey",
        "root.key",
        "-set_serial",
        "2",
        "-sha1",
        "-days",
        "30",
        "-extfile",
        "ca.ext",
        "-out",
        "inter.pem",
    ]);
    ossl(&[
        "req",
        "-new",
        "-key",
        "leaf.key",
        "-subj",
        &format!("/CN={}", names[0]),
        "-out",
        "leaf.csr",
    ]);
    ossl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "inter.pem",
        "-CAkey",
        "inter.key",
        "-set_serial",
        "3",
        "-sha256",
        "-days",
        "90",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    let key_pem = std::fs::read_to_string(p("leaf.key")).unwrap();
    let (label, key_pkcs8) = pem_blocks(&key_pem).remove(0);
    assert_eq!(label, "PRIVATE KEY", "genpkey writes PKCS#8");
    Leaf {
        der: first_cert(&p("leaf.pem")),
        chain: vec![first_cert(&p("inter.pem"))],
        key_pkcs8,
        kind: KeyKind::P256,
        not_before: days(0),
        not_after: days(90),
    }
}

//! Third-party DKIM tools for the DKIM tests, all on loopback: dkimpy
//! (signing with a key file, verifying through a given DNS server),
//! `opendkim-testkey` (through libunbound pointed at that server), the
//! OpenDKIM milter, Rspamd (signing through `rspamc`), an SMTP sink run by
//! the test (behind `servers::Postfix::start_relay`), and `openssl` to
//! compute a key file's DKIM record independently of mxkeys; and the
//! DKIM tests' own set-up: BIND with a work directory, a configuration
//! publishing through it, and `mx`, mxkeys itself run as these tests run it.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::bind::{Bind, KEY_NAME};
use super::servers::{Need, output_within, poll, prog, require, run_ok, which};
use super::{free_port, write};

/// Debian's Python with dkimpy, dnspython and PyNaCl (Ed25519).
pub const PYTHON: &str = "/usr/bin/python3";

pub const DKIMPY: &[Need] = &[
    (PYTHON, "python3"),
    (
        "/usr/lib/python3/dist-packages/dkim/__init__.py",
        "python3-dkim",
    ),
    (
        "/usr/lib/python3/dist-packages/dns/resolver.py",
        "python3-dnspython",
    ),
    (
        "/usr/lib/python3/dist-packages/nacl/signing.py",
        "python3-nacl",
    ),
];
pub const OPENSSL: &[Need] = &[("openssl", "openssl")];
pub const BIND_TOOLS: &[Need] = &[
    ("named", "bind9"),
    ("dig", "bind9-dnsutils"),
    ("nsupdate", "bind9-dnsutils"),
    ("named-checkzone", "bind9-utils"),
];
pub const OPENDKIM_TESTKEY: &[Need] = &[("opendkim-testkey", "opendkim-tools")];
pub const OPENDKIM: &[Need] = &[("opendkim", "opendkim")];
pub const POSTFIX: &[Need] = &[("postfix", "postfix")];
pub const PERL: &[Need] = &[("perl", "perl-base")];
pub const RSPAMD: &[Need] = &[("rspamd", "rspamd"), ("rspamc", "rspamd")];

/// The deadline of every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The BIND server and a work directory for mxkeys in it, or `None` (skip)
/// when a program is missing outside CI: BIND's tools, openssl and `needs`.
pub fn setup(test: &str, needs: &[&[Need]]) -> Option<(Bind, PathBuf)> {
    let mut all: Vec<&[Need]> = vec![BIND_TOOLS, OPENSSL];
    all.extend_from_slice(needs);
    if !require(test, &all) {
        return None;
    }
    let bind = Bind::start()?;
    let work = bind.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Some((bind, work))
}

/// Writes `work/mxkeys.toml`: state in `work/state`, the rfc2136 provider
/// `bind` for the BIND server (zone example.test), and the `[dkim]` table
/// of `dkim` lines; returns its path.
pub fn write_dkim_config(bind: &Bind, work: &Path, dkim: &str) -> PathBuf {
    let config = format!(
        "state_dir = \"state\"\n\
         [dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{addr}\"\n\
         zone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = \"{tsig}\"\n\
         nameservers = [\"{addr}\"]\n\
         propagation_interval = \"100ms\"\n\
         propagation_timeout = \"3s\"\n\
         [dkim]\n{dkim}",
        addr = bind.addr(),
        tsig = bind.dir().join("tsig.key").display(),
    );
    let path = work.join("mxkeys.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `mxkeys --config CONFIG ARGS` (never panicking).
pub fn mx(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(super::bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MXKEYS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "mxkeys panicked:\n{stderr}");
    out
}

/// `mxkeys --config CONFIG ARGS` that must exit 0; its stdout.
#[track_caller]
pub fn mx_ok(config: &Path, args: &[&str]) -> String {
    let out = mx(config, args);
    assert!(
        out.status.success(),
        "mxkeys {args:?} failed:\n{}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A run's exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Records, computed by openssl from a key file
// ---------------------------------------------------------------------------

/// Writes a new RSA private key of `bits` bits to `path` (PKCS#8 PEM), made
/// by `openssl genpkey`, not by mxkeys.
pub fn rsa_key_file(path: &Path, bits: u32) {
    let mut c = Command::new(prog("openssl"));
    c.args([
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        &format!("rsa_keygen_bits:{bits}"),
        "-out",
    ])
    .arg(path);
    run_ok(c);
}

/// The DKIM record value that publishes the private key in `file`,
/// computed without mxkeys' code: RSA `p=` is the SubjectPublicKeyInfo
/// from `openssl pkey`; Ed25519 `p=` the raw 32-byte public key (RFC
/// 8463), from the seed by PyNaCl (OpenSSL 3.0 cannot read the PKCS#8 v2
/// form mxkeys writes Ed25519 keys in: see
/// `ed25519_key_files_load_in_openssl` in tests/it/dkim.rs).
pub fn record_of_key_file(file: &Path) -> String {
    let mut py = Command::new(PYTHON);
    py.arg("-c").arg(ED25519_RECORD).arg(file);
    let out = run_ok(py);
    let ed = text(&out.stdout).trim().to_owned();
    if !ed.is_empty() {
        return ed;
    }
    let mut c = Command::new(prog("openssl"));
    c.args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(file);
    let spki = run_ok(c).stdout;
    format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    )
}

/// Prints the Ed25519 DKIM record of the PKCS#8 key file argv[1], or
/// nothing when it is not an Ed25519 key.
const ED25519_RECORD: &str = r#"
import base64, sys
import nacl.signing
text = open(sys.argv[1], 'rb').read()
der = base64.b64decode(b''.join(l for l in text.splitlines() if l and not l.startswith(b'-----')))
def tlv(b, i):
    tag = b[i]; n = b[i + 1]; i += 2
    if n & 0x80:
        k = n & 0x7f
        n = int.from_bytes(b[i:i + k], 'big'); i += k
    return tag, b[i:i + n], i + n
_, seq, _ = tlv(der, 0)
_, _, i = tlv(seq, 0)
_, alg, i = tlv(seq, i)
_, inner, i = tlv(seq, i)
if b'\x06\x03\x2b\x65\x70' in alg:
    _, seed, _ = tlv(inner, 0)
    pub = nacl.signing.SigningKey(seed).verify_key.encode()
    print('v=DKIM1; k=ed25519; p=' + base64.b64encode(pub).decode())
"#;

// ---------------------------------------------------------------------------
// dkimpy
// ---------------------------------------------------------------------------

const DKIMPY_SCRIPT: &str = r#"
import json, sys, base64
import dkim
import dns.resolver

def tlv(b, i):
    tag = b[i]; n = b[i + 1]; i += 2
    if n & 0x80:
        k = n & 0x7f
        n = int.from_bytes(b[i:i + k], 'big'); i += k
    return tag, b[i:i + n], i + n

def private_key(path):
    """dkimpy wants an RSA key as PKCS#1 and an Ed25519 key as the base64
    32-byte seed: both are inside the PKCS#8 PrivateKeyInfo."""
    text = open(path, 'rb').read()
    if b'-----BEGIN PRIVATE KEY-----' not in text:
        raise SystemExit('not a PKCS#8 PEM key: %r' % text[:40])
    body = b''.join(l for l in text.splitlines() if l and not l.startswith(b'-----'))
    der = base64.b64decode(body)
    _, seq, _ = tlv(der, 0)
    _, _, i = tlv(seq, 0)                # version
    _, alg, i = tlv(seq, i)              # AlgorithmIdentifier
    tag, inner, i = tlv(seq, i)          # privateKey OCTET STRING
    assert tag == 0x04
    if b'\x06\x03\x2b\x65\x70' in alg:   # 1.3.101.112, Ed25519
        _, seed, _ = tlv(inner, 0)
        assert len(seed) == 32
        return b'ed25519-sha256', base64.b64encode(seed)
    pem = b'-----BEGIN RSA PRIVATE KEY-----\n' + base64.encodebytes(inner) + b'-----END RSA PRIVATE KEY-----\n'
    return b'rsa-sha256', pem

def dnsfunc(port):
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ['127.0.0.1']
    r.port = port
    def get(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            a = r.resolve(name, 'TXT', lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b''.join(a.rrset[0].strings)
    return get

cmd = sys.argv[1]
if cmd == 'sign':
    key, domain, selector, msg = sys.argv[2:6]
    alg, priv = private_key(key)
    message = open(msg, 'rb').read()
    sig = dkim.sign(message, selector.encode(), domain.encode(), priv,
                    signature_algorithm=alg,
                    include_headers=[b'from', b'to', b'subject', b'date'])
    sys.stdout.buffer.write(sig + message)
elif cmd == 'verify':
    port, msg = int(sys.argv[2]), sys.argv[3]
    message = open(msg, 'rb').read()
    d = dkim.DKIM(message)
    out = []
    for idx, h in enumerate(x for x in d.headers if x[0].lower() == b'dkim-signature'):
        tags = dkim.util.parse_tag_value(h[1])
        r = {'selector': tags.get(b's', b'').decode(), 'domain': tags.get(b'd', b'').decode(),
             'algorithm': tags.get(b'a', b'').decode()}
        try:
            r['ok'] = bool(d.verify(idx=idx, dnsfunc=dnsfunc(port)))
            r['error'] = '' if r['ok'] else 'signature did not verify'
        except dkim.DKIMException as e:
            r['ok'] = False
            r['error'] = '%s: %s' % (type(e).__name__, e)
        out.append(r)
    print(json.dumps(out))
else:
    raise SystemExit('unknown command ' + cmd)
"#;

/// One DKIM-Signature of a message, as dkimpy verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub selector: String,
    pub domain: String,
    pub algorithm: String,
    pub ok: bool,
    pub error: String,
}

/// dkimpy, resolving through the DNS server on 127.0.0.1:`port`.
pub struct Dkimpy {
    dir: PathBuf,
    script: PathBuf,
    pub port: u16,
}

impl Dkimpy {
    pub fn new(dir: &Path, port: u16) -> Dkimpy {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("dkimtool.py");
        write(&script, DKIMPY_SCRIPT);
        Dkimpy {
            dir: dir.to_path_buf(),
            script,
            port,
        }
    }

    /// `message` with a DKIM-Signature made by dkimpy with the key in
    /// `key` (RSA: rsa-sha256; Ed25519: ed25519-sha256).
    #[track_caller]
    pub fn sign(&self, key: &Path, domain: &str, selector: &str, message: &[u8]) -> Vec<u8> {
        let msg = self.dir.join("to-sign.eml");
        write(&msg, message);
        let mut c = Command::new(PYTHON);
        c.arg(&self.script)
            .args(["sign", key.to_str().unwrap(), domain, selector])
            .arg(&msg);
        run_ok(c).stdout
    }

    /// Every signature of `message`, verified through the local DNS.
    #[track_caller]
    pub fn verify(&self, message: &[u8]) -> Vec<Verdict> {
        let msg = self.dir.join("to-verify.eml");
        write(&msg, message);
        let mut c = Command::new(PYTHON);
        c.arg(&self.script)
            .args(["verify", &self.port.to_string()])
            .arg(&msg);
        let out = run_ok(c);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("dkimpy printed no JSON ({e}): {}", text(&out.stdout)));
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| Verdict {
                selector: r["selector"].as_str().unwrap().to_owned(),
                domain: r["domain"].as_str().unwrap().to_owned(),
                algorithm: r["algorithm"].as_str().unwrap().to_owned(),
                ok: r["ok"].as_bool().unwrap(),
                error: r["error"].as_str().unwrap().to_owned(),
            })
            .collect()
    }

    /// The verdict of a message carrying exactly one signature.
    #[track_caller]
    pub fn verify_one(&self, message: &[u8]) -> Verdict {
        let mut v = self.verify(message);
        assert_eq!(v.len(), 1, "expected one DKIM-Signature: {v:?}");
        v.pop().unwrap()
    }
}

/// A small message from `from@domain`, CRLF line ends.
pub fn message(domain: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@{domain}>\r\n\
         To: Bob <bob@receiver.test>\r\n\
         Subject: {subject}\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{subject}.{n}@{domain}>\r\n\
         \r\n\
         DKIM rotation test: {subject}.\r\n\
         A second line of body.\r\n",
        n = std::process::id(),
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------
// opendkim-testkey through libunbound
// ---------------------------------------------------------------------------

/// Writes an unbound configuration for libunbound that asks only the DNS
/// server on 127.0.0.1:`port`, and an opendkim.conf that uses it; returns
/// the latter.
pub fn testkey_conf(dir: &Path, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let unbound = dir.join("unbound.conf");
    write(
        &unbound,
        format!(
            "server:\n\
             \x20 do-not-query-localhost: no\n\
             \x20 local-zone: \"test.\" nodefault\n\
             \x20 module-config: \"iterator\"\n\
             \x20 qname-minimisation: no\n\
             forward-zone:\n\
             \x20 name: \".\"\n\
             \x20 forward-addr: 127.0.0.1@{port}\n"
        ),
    );
    let conf = dir.join("testkey.conf");
    write(
        &conf,
        format!("ResolverConfiguration {}\n", unbound.display()),
    );
    conf
}

/// `opendkim-testkey -x CONF -d DOMAIN -s SELECTOR -k KEY -vvv`: (exit
/// success, stdout + stderr).
pub fn opendkim_testkey(conf: &Path, domain: &str, selector: &str, key: &Path) -> (bool, String) {
    let mut c = Command::new(prog("opendkim-testkey"));
    c.arg("-x")
        .arg(conf)
        .args(["-d", domain, "-s", selector, "-k"])
        .arg(key)
        .arg("-vvv");
    let out = output_within(c, Duration::from_secs(60)).unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Waits until `ready()`; panics with `log()` if `child` (`what`) exits
/// first or is not ready within [`DEADLINE`].
#[track_caller]
fn wait_ready(child: &mut Child, what: &str, ready: impl Fn() -> bool, log: impl Fn() -> String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}): {}", log());
        }
        if ready() {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what} did not listen: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// The OpenDKIM milter
// ---------------------------------------------------------------------------

/// `opendkim -f` signing with the KeyTable and SigningTable in
/// `signer_dir`, on 127.0.0.1:port.
pub struct OpenDkim {
    child: Child,
    pub port: u16,
    pub pidfile: PathBuf,
    log: PathBuf,
}

impl OpenDkim {
    #[track_caller]
    pub fn start(dir: &Path, signer_dir: &Path) -> OpenDkim {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let pidfile = dir.join("opendkim.pid");
        let conf = dir.join("opendkim.conf");
        write(
            &conf,
            format!(
                "Syslog no\n\
                 Mode s\n\
                 Socket inet:{port}@127.0.0.1\n\
                 PidFile {pid}\n\
                 KeyTable file:{signer}/KeyTable\n\
                 SigningTable refile:{signer}/SigningTable\n\
                 Canonicalization relaxed/simple\n\
                 SignatureAlgorithm rsa-sha256\n\
                 RequireSafeKeys false\n\
                 InternalHosts 127.0.0.1\n",
                pid = pidfile.display(),
                signer = signer_dir.display(),
            ),
        );
        let log = dir.join("opendkim.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(prog("opendkim"))
            .arg("-x")
            .arg(&conf)
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut o = OpenDkim {
            child,
            port,
            pidfile,
            log,
        };
        let (pidfile, log) = (o.pidfile.clone(), o.log.clone());
        wait_ready(
            &mut o.child,
            "opendkim",
            || TcpStream::connect(("127.0.0.1", port)).is_ok() && pidfile.exists(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        o
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("opendkim exited ({status}): {}", self.log());
        }
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// An SMTP sink and a tiny SMTP client
// ---------------------------------------------------------------------------

/// Accepts SMTP on 127.0.0.1 and keeps every message's DATA.
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let store = messages.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let store = store.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &store);
                });
            }
        });
        SmtpSink { port, messages }
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }

    /// The message whose Subject is `subject`, waiting for it.
    #[track_caller]
    pub fn wait_for(&self, subject: &str, context: impl Fn() -> String) -> Vec<u8> {
        let needle = format!("Subject: {subject}\r\n");
        poll(
            &format!("the message {subject:?} to reach the sink"),
            DEADLINE,
            || {
                self.messages()
                    .into_iter()
                    .find(|m| text(m).contains(&needle))
            },
            context,
        )
    }
}

fn serve(conn: TcpStream, store: &Mutex<Vec<Vec<u8>>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    out.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let cmd = text(&line).to_ascii_uppercase();
        if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
            out.write_all(b"250-sink.test\r\n250 8BITMIME\r\n")?;
        } else if cmd.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            let mut data = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" || line == b".\n" {
                    break;
                }
                let l = if line.starts_with(b"..") {
                    &line[1..]
                } else {
                    &line[..]
                };
                data.extend_from_slice(l);
            }
            store.lock().unwrap().push(data);
            out.write_all(b"250 2.0.0 kept\r\n")?;
        } else if cmd.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}

fn smtp_reply(r: &mut BufReader<TcpStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

/// Sends `message` from `from` to `to` through the SMTP server at `addr`;
/// panics unless it is accepted.
#[track_caller]
pub fn smtp_send(addr: &str, from: &str, to: &str, message: &[u8]) {
    let conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    let expect = |r: &mut BufReader<TcpStream>, code: &str, what: &str| {
        let reply = smtp_reply(r);
        assert!(
            reply.starts_with(code),
            "SMTP {what}: expected {code}, got {reply:?}"
        );
    };
    expect(&mut r, "220", "banner");
    for (cmd, code) in [
        ("EHLO client.test".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        expect(&mut r, code, &cmd);
    }
    for l in message.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            w.write_all(b".").unwrap();
        }
        w.write_all(l).unwrap();
    }
    w.write_all(b".\r\n").unwrap();
    expect(&mut r, "250", "end of DATA");
    w.write_all(b"QUIT\r\n").unwrap();
    let _ = smtp_reply(&mut r);
}

// ---------------------------------------------------------------------------
// Rspamd
// ---------------------------------------------------------------------------

/// Rspamd (`rspamd -f`, our child) on Debian's `/etc/rspamd` configuration
/// with everything it writes in `dir`: LOCAL_CONFDIR is `dir/local`, so the
/// `dkim_signing.conf` mxkeys writes to [`Rspamd::local_d`] is what it
/// signs with. The normal worker and the controller listen on free
/// loopback ports, the proxy is off, and DNS goes to 127.0.0.1:`dns_port`
/// (an authoritative-only server: nothing leaves loopback). Workers run as
/// `_rspamd`, as Debian runs them.
pub struct Rspamd {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Rspamd {
    pub const USER: &str = "_rspamd";

    #[track_caller]
    pub fn start(dir: &Path, dns_port: u16) -> Rspamd {
        let user = nix::unistd::User::from_name(Rspamd::USER)
            .unwrap()
            .expect("user _rspamd exists (package rspamd)");
        for sub in ["local/local.d", "local/override.d", "db", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for sub in ["db", "run", "log"] {
            nix::unistd::chown(&dir.join(sub), Some(user.uid), Some(user.gid)).unwrap();
        }
        super::servers::open_dir(dir);
        let (port, controller) = (free_port(), free_port());
        let local = dir.join("local");
        write(
            &local.join("override.d/worker-normal.inc"),
            format!("bind_socket = \"127.0.0.1:{port}\";\ncount = 1;\n"),
        );
        write(
            &local.join("override.d/worker-controller.inc"),
            format!("bind_socket = \"127.0.0.1:{controller}\";\ncount = 1;\n"),
        );
        write(
            &local.join("override.d/worker-proxy.inc"),
            "enabled = false;\n",
        );
        write(
            &local.join("override.d/logging.inc"),
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                dir.join("log/rspamd.log").display()
            ),
        );
        write(
            &local.join("local.d/options.inc"),
            format!("dns {{ nameserver = [\"127.0.0.1:{dns_port}\"]; }}\n"),
        );
        let out = std::fs::File::create(dir.join("rspamd.out")).unwrap();
        let mut c = Command::new(prog("rspamd"));
        c.args([
            "-f",
            "-u",
            Rspamd::USER,
            "-g",
            Rspamd::USER,
            "-c",
            "/etc/rspamd/rspamd.conf",
        ]);
        for (var, sub) in [
            ("LOCAL_CONFDIR", "local"),
            ("DBDIR", "db"),
            ("RUNDIR", "run"),
            ("LOGDIR", "log"),
        ] {
            c.arg(format!("--var={var}={}", dir.join(sub).display()));
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut r = Rspamd {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        // The first start compiles Rspamd's regular expressions: seconds.
        let log = Rspamd::log_of(&r.dir);
        wait_ready(
            &mut r.child,
            "rspamd",
            || TcpStream::connect(("127.0.0.1", port)).is_ok(),
            log,
        );
        r
    }

    /// Where mxkeys writes `dkim_signing.conf` (its `signer_dir`).
    pub fn local_d(&self) -> PathBuf {
        self.dir.join("local/local.d")
    }

    /// The reload command for mxkeys: SIGHUP to Rspamd's main process,
    /// which re-reads its configuration and restarts its workers.
    pub fn reload_argv(&self) -> Vec<String> {
        vec!["kill".into(), "-HUP".into(), self.child.id().to_string()]
    }

    /// The message as Rspamd returns it (`rspamc --mime`) when submitted by
    /// the authenticated user `user` from 127.0.0.1: with the signatures
    /// its dkim_signing module added.
    pub fn sign(&self, message: &[u8], user: &str) -> Vec<u8> {
        let msg = self.dir.join("to-sign.eml");
        write(&msg, message);
        let mut c = Command::new(prog("rspamc"));
        c.arg("-h")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-i", "127.0.0.1", "-u", user, "-F", user, "--mime"])
            .arg(&msg);
        let out = run_ok(c);
        // rspamc writes LF line ends; DKIM verification wants the CRLF
        // message Rspamd signed.
        let text = String::from_utf8(out.stdout).unwrap();
        text.replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    pub fn log(&self) -> String {
        Rspamd::log_of(&self.dir)()
    }

    /// What Rspamd in `dir` printed, and its log lines about DKIM and errors.
    fn log_of(dir: &Path) -> impl Fn() -> String + use<> {
        let dir = dir.to_path_buf();
        move || {
            format!(
                "--- rspamd ---\n{}\n{}",
                std::fs::read_to_string(dir.join("rspamd.out")).unwrap_or_default(),
                std::fs::read_to_string(dir.join("log/rspamd.log"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("dkim") || l.contains("error") || l.contains("cannot"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        // Our own child: SIGTERM lets it stop its workers.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.wait();
    }
}

/// Whether `program` is installed (for messages).
pub fn installed(program: &str) -> bool {
    which(program).is_some()
}

//! Secrets never leak: every command runs with a Cloudflare token (in a
//! file and in an environment variable), a TSIG secret (in a file) and
//! private keys in play (source keys, installed keys, DKIM keys), at the
//! highest verbosity, and all of its stdout and stderr, and every file
//! mxkeys wrote other than key files, are searched for the token, the TSIG
//! secret (base64, decoded, hex) and the keys' base64 bodies.
//!
//! Everything networked points at closed loopback ports, so each command
//! fails fast after having used its secrets as far as it can.

use mxkeys_testsupport as common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;

const CF_FILE_TOKEN: &str = "CfFileCanary7d3be19a4c52Zq8Xw0Rk";
const CF_ENV_TOKEN: &str = "CfEnvCanary58e1f0c27b3dYt4Vn6Lp";
const CF_ENV_VAR: &str = "MXKEYS_TEST_CF_TOKEN";
/// The decoded TSIG secret (ASCII, so its raw bytes are searchable too).
const TSIG_RAW: &str = "TsigCanary:3f9a61c0e2d84b75";

/// One secret to look for, and what it is.
struct Needle {
    what: String,
    text: String,
}

fn tsig_b64() -> String {
    B64.encode(TSIG_RAW)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Needles for a PEM private key: its whole base64 body, and every body
/// line (a partial leak is a leak).
fn key_needles(what: &str, pem: &str) -> Vec<Needle> {
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.contains(':') && l.len() >= 24)
        .collect();
    assert!(!body.is_empty(), "{what}: no PEM body");
    let mut out = vec![Needle {
        what: format!("{what} (whole body)"),
        text: body.concat(),
    }];
    for (i, l) in body.iter().enumerate() {
        out.push(Needle {
            what: format!("{what} (line {})", i + 1),
            text: (*l).to_owned(),
        });
    }
    out
}

struct World {
    env: Env,
    postfix: Target,
    other: Target,
    /// Files that legitimately hold secrets (keys, secret files): not
    /// searched. Everything else under the root is.
    exempt: BTreeSet<PathBuf>,
    key_pems: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
}

impl World {
    fn new() -> World {
        let env = Env::new();
        let ca = Ca::new("secrets");
        let good = ca.issue(&LeafSpec::new(&[HOST]));
        let other_leaf = ca.issue(&LeafSpec::new(&[OTHER]).kind(KeyKind::Rsa2048));
        let postfix = Target::new(&env, "postfix").all_outputs();
        let other = Target::new(&env, "other").domains(&[OTHER]);

        // Sources holding private keys: plain files and a Certbot tree.
        let files_src = files_source(&env.path("src"), &good);
        let cb = Certbot::new(&env.path("letsencrypt"));
        cb.add("othercert", &other_leaf);

        // Secrets.
        let secrets = env.path("secrets");
        write(&secrets.join("cf.token"), format!("{CF_FILE_TOKEN}\n"));
        write(&secrets.join("tsig.key"), format!("{}\n", tsig_b64()));

        let closed = free_port();
        let http = free_port();
        let top = format!(
            r#"
[acme]
directory = "https://127.0.0.1:{closed}/directory"
email = "admin@example.com"

[dns.bind]
type = "rfc2136"
server = "127.0.0.1:{closed}"
zone = "example.com"
tsig_name = "mxkeys"
tsig_secret_file = {tsig}
nameservers = ["127.0.0.1:{closed}"]
propagation_interval = "100ms"
propagation_timeout = "1s"

[dns.cf_file]
type = "cloudflare"
api_token_file = {cf}
api_url = "http://127.0.0.1:{closed}/client/v4"
zone = "example.com"
nameservers = ["127.0.0.1:{closed}"]
propagation_interval = "100ms"
propagation_timeout = "1s"

[dns.cf_env]
type = "cloudflare"
api_token_env = "{CF_ENV_VAR}"
api_url = "http://127.0.0.1:{closed}/client/v4"
zone = "example.com"
nameservers = ["127.0.0.1:{closed}"]
propagation_interval = "100ms"
propagation_timeout = "1s"

[dkim]
domains = ["example.com"]
algorithms = ["rsa-2048", "ed25519"]
dns = "cf_file"
key_dir = {dkim}
signer = "opendkim"
signer_dir = {signer}
"#,
            tsig = qp(&secrets.join("tsig.key")),
            cf = qp(&secrets.join("cf.token")),
            dkim = qp(&env.path("dkimkeys")),
            signer = qp(&env.path("opendkim")),
        );
        let acme_src = format!(
            "[[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [{}]\nchallenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{http}\"\n",
            q(HOST)
        );
        env.write_config_with(
            &top,
            &[files_src, src_certbot(&cb.root), acme_src],
            &[&postfix, &other],
        );

        let mut exempt = BTreeSet::new();
        exempt.insert(secrets.join("cf.token"));
        exempt.insert(secrets.join("tsig.key"));
        exempt.insert(env.path("src/privkey.pem"));
        exempt.insert(cb.root.join("archive/othercert/privkey1.pem"));
        for t in [&postfix, &other] {
            exempt.extend(t.key.clone());
            exempt.extend(t.combined.clone());
        }
        World {
            key_pems: vec![
                ("source key (files)".into(), good.key_pem()),
                ("source key (certbot, RSA)".into(), other_leaf.key_pem()),
            ],
            env,
            postfix,
            other,
            exempt,
            outputs: Vec::new(),
        }
    }

    /// Run a command (with the token variable set, and `extra_env`),
    /// keeping its output for the search.
    fn run(&mut self, args: &[&str], extra_env: &[(&str, &str)]) -> Run {
        let mut c = self.env.cmd(args);
        c.env(CF_ENV_VAR, CF_ENV_TOKEN).env_remove("MXKEYS_LOG");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let label = format!(
            "mxkeys {}{}",
            args.join(" "),
            if extra_env.is_empty() {
                String::new()
            } else {
                format!(" {extra_env:?}")
            }
        );
        let r = Run::from_output(label.clone(), run_with_timeout(c));
        self.outputs
            .push((format!("{label}: stdout"), r.stdout.clone()));
        self.outputs
            .push((format!("{label}: stderr"), r.stderr.clone()));
        r
    }

    fn needles(&self) -> Vec<Needle> {
        let mut n = vec![
            Needle {
                what: "Cloudflare token (file)".into(),
                text: CF_FILE_TOKEN.into(),
            },
            Needle {
                what: "Cloudflare token (env)".into(),
                text: CF_ENV_TOKEN.into(),
            },
            Needle {
                what: "TSIG secret (base64)".into(),
                text: tsig_b64(),
            },
            Needle {
                what: "TSIG secret (decoded)".into(),
                text: TSIG_RAW.into(),
            },
            Needle {
                what: "TSIG secret (hex)".into(),
                text: hex(TSIG_RAW.as_bytes()),
            },
            Needle {
                what: "TSIG secret (HEX)".into(),
                text: hex(TSIG_RAW.as_bytes()).to_uppercase(),
            },
        ];
        for (what, pem) in &self.key_pems {
            n.extend(key_needles(what, pem));
        }
        n
    }

    /// Every regular file under the root that is not exempt.
    fn written_files(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = fs::read_dir(p) else { return };
            for e in rd.flatten() {
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    walk(&e.path(), out);
                } else if ft.is_file() {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.env.root, &mut out);
        out.retain(|p| !self.exempt.contains(p));
        out.sort();
        out
    }

    /// Assert no needle is in any output or non-exempt file.
    #[track_caller]
    fn assert_no_leak(&self) {
        let needles = self.needles();
        // The search itself works: each secret is found where it belongs.
        let contains = |p: &Path, n: &str| fs::read_to_string(p).unwrap().contains(n);
        let secrets = self.env.path("secrets");
        assert!(contains(&secrets.join("cf.token"), CF_FILE_TOKEN));
        assert!(contains(&secrets.join("tsig.key"), &tsig_b64()));
        let mut src_key = key_needles("k", &self.key_pems[0].1);
        src_key.retain(|n| !n.what.contains("whole body"));
        assert!(
            src_key
                .iter()
                .all(|n| contains(&self.env.path("src/privkey.pem"), &n.text))
        );
        let installed = self.postfix.key.as_ref().unwrap();
        assert!(src_key.iter().all(|n| contains(installed, &n.text)));
        let mut leaks = Vec::new();
        for (label, text) in &self.outputs {
            for n in &needles {
                if text.contains(&n.text) {
                    leaks.push(format!("{} in the output of {label}", n.what));
                }
            }
        }
        let files = self.written_files();
        for f in &files {
            let bytes = fs::read(f).unwrap();
            for n in &needles {
                if bytes.windows(n.text.len()).any(|w| w == n.text.as_bytes()) {
                    leaks.push(format!("{} in {}", n.what, f.display()));
                }
            }
        }
        assert!(
            leaks.is_empty(),
            "secrets leaked:\n  {}\nfiles searched: {}",
            leaks.join("\n  "),
            files.len()
        );
        eprintln!(
            "searched {} outputs and {} files for {} needles: no leak\nfiles: {:?}",
            self.outputs.len(),
            files.len(),
            needles.len(),
            files
                .iter()
                .map(|f| f.strip_prefix(&self.env.root).unwrap())
                .collect::<Vec<_>>()
        );
    }
}

/// Every command, then the search.
#[test]
fn no_command_leaks_a_secret() {
    let mut w = World::new();

    // Installs the keys (source keys in play, installed keys on disk).
    let r = w.run(&["-vv", "sync"], &[]);
    r.ok();
    assert!(w.postfix.installed_fp().is_some() && w.other.installed_fp().is_some());
    w.run(&["-vv", "check"], &[]).ok();
    w.run(&["status"], &[]);
    w.run(&["status", "--json"], &[]);
    w.run(&["-vv", "config"], &[]).ok();

    // Networked commands, failing fast against closed ports.
    // The order must have failed and said so (the exit status is 1: the
    // acme source has no certificate, so it is failing where it matters).
    let r = w.run(&["-vv", "renew", "--force"], &[]);
    r.assert_err_line(&["ERROR", "renew", "ACME"]);
    for provider in ["bind", "cf_file", "cf_env"] {
        let r = w.run(&["-vv", "dns", "test", provider], &[]);
        r.assert_code(1);
        // Dependencies' traces too.
        w.run(&["dns", "test", provider], &[("MXKEYS_LOG", "trace")]);
    }
    w.run(&["-vv", "dkim", "rotate"], &[]);
    w.run(&["-vv", "dkim", "rotate"], &[("MXKEYS_LOG", "trace")]);
    w.run(&["-vv", "dkim", "status"], &[]);
    w.run(&["-vv", "dkim", "status", "--json"], &[]);
    w.run(&["-vv", "dkim", "records"], &[]);

    // The daemon, for about two seconds, with JSON logs.
    let mut c = w.env.cmd(&["-vv", "--log-format", "json", "run"]);
    for v in DAEMON_ENV_REMOVE {
        c.env_remove(v);
    }
    c.env(CF_ENV_VAR, CF_ENV_TOKEN);
    let mut d = Daemon::spawn(c, &w.env.root.join("logs"), "daemon");
    std::thread::sleep(StdDuration::from_secs(2));
    d.assert_running();
    d.terminate();
    let (out, err) = (d.stdout(), d.stderr());
    assert!(!err.contains("panicked"), "{}", d.describe());
    assert!(
        err.lines().any(|l| l.trim_start().starts_with('{')),
        "the daemon logged no JSON line\n{}",
        d.describe()
    );
    w.outputs.push(("run: stdout".into(), out));
    w.outputs.push(("run: stderr".into(), err));
    // A final sync, status and check after the daemon.
    w.run(&["-vv", "sync"], &[]);
    w.run(&["status", "--json"], &[]);

    // DKIM keys written by rotate are keys in play too: exempt their files,
    // look for their bodies everywhere else.
    let dkim_dir = w.env.path("dkimkeys");
    let mut dkim_keys = Vec::new();
    fn pems(p: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                pems(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    pems(&dkim_dir, &mut dkim_keys);
    for k in &dkim_keys {
        let text = fs::read_to_string(k).unwrap();
        if text.contains("PRIVATE KEY") {
            w.key_pems.push((format!("DKIM key {}", k.display()), text));
            w.exempt.insert(k.clone());
        }
    }
    // The installed keys as written (same key, mxkeys's own layout).
    for p in [&w.postfix.key, &w.other.key].into_iter().flatten() {
        let text = fs::read_to_string(p).unwrap();
        w.key_pems
            .push((format!("installed key {}", p.display()), text));
    }
    assert!(
        w.key_pems.len() > 4,
        "dkim rotate wrote no key; the search would miss DKIM keys\n{}",
        w.outputs
            .iter()
            .filter(|(l, _)| l.contains("dkim rotate"))
            .map(|(l, t)| format!("{l}:\n{t}"))
            .collect::<String>()
    );
    w.assert_no_leak();
}

/// A secret written into the configuration by mistake is never echoed by
/// the configuration error (exit 2).
#[test]
fn config_errors_never_echo_a_secret() {
    let cases: &[(&str, &str)] = &[
        (
            "api_token instead of api_token_file",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token = \"LEAKME-cf-0a1b2c3d\"\n",
        ),
        (
            "tsig_secret instead of tsig_secret_file",
            "[dns.b]\ntype = \"rfc2136\"\nserver = \"127.0.0.1:53\"\ntsig_name = \"k\"\ntsig_secret = \"LEAKME-tsig-4e5f6a7b\"\n",
        ),
        (
            "eab_hmac_key instead of eab_hmac_key_file",
            "[acme]\neab_kid = \"kid\"\neab_hmac_key = \"LEAKME-eab-8c9d0e1f\"\n",
        ),
        (
            "api_token_env given a list",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_env = [\"LEAKME-list-2a3b4c5d\"]\n",
        ),
        (
            "token as a number",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_file = 12345678901234567890LEAKME\n",
        ),
        (
            "a token pasted alone on its own line",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_file = \"/run/secrets/cf\"\nLEAKMEpasted9f8e7d6c5b4a3928\n",
        ),
        (
            "a token pasted after the value",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_file = \"/run/secrets/cf\" LEAKMEafter1a2b3c\n",
        ),
        (
            "an unterminated string holding the token",
            "[dns.cf]\ntype = \"cloudflare\"\napi_token = \"LEAKME-open-7a6b5c4d\n",
        ),
    ];
    let env = Env::new();
    let mut failures = Vec::new();
    for (what, table) in cases {
        env.write_config_raw(&format!(
            "hostname = {}\nstate_dir = {}\n{table}",
            q(HOST),
            qp(&env.state)
        ));
        for args in [&["check"][..], &["config"][..], &["dns", "test", "cf"][..]] {
            let r = env.run(args);
            if r.code != 2 {
                failures.push(format!(
                    "{what}: exit {} (expected 2)\n{}",
                    r.code,
                    r.describe()
                ));
            }
            if r.stderr.contains("LEAKME") || r.stdout.contains("LEAKME") {
                failures.push(format!("{what}: the value is echoed\n{}", r.describe()));
            }
            if !r.stderr.contains(env.config.to_str().unwrap()) {
                failures.push(format!(
                    "{what}: the error does not name the file\n{}",
                    r.describe()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `Debug` of everything a source read (candidates built from an
/// acme.json, whose buffer holds every key, and from PEM files) never
/// shows a private key, neither as text nor as a list of bytes; nor does
/// the Cloudflare provider's `Debug` show its token.
#[test]
fn debug_output_of_key_holding_values_never_shows_a_key() {
    use mxkeys::source::{Ingest, Reader, files, traefik};
    let env = Env::new();
    let leaf = Ca::new("debug").issue(&LeafSpec::new(&[HOST]));
    let key_b64 = B64.encode(leaf.key_pem());
    // A stretch of the key's base64 that the certificate's cannot share.
    let middle = &key_b64[80..144];
    let as_bytes = format!("{:?}", middle.as_bytes());
    let as_bytes = as_bytes.trim_start_matches('[').trim_end_matches(']');
    let mut needles = key_needles("source key", &leaf.key_pem());
    for (what, text) in [("key base64", middle), ("key base64 as bytes", as_bytes)] {
        needles.push(Needle {
            what: what.to_owned(),
            text: text.to_owned(),
        });
    }
    let reader = Reader {
        label: "t".into(),
        index: 0,
    };
    let plain = env.path("acme.json");
    write_json(
        &plain,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&leaf, HOST)]))]),
    );
    // JSON escapes make the reader keep its own copy of the fields.
    let escaped = env.path("escaped.json");
    write(
        &escaped,
        fs::read_to_string(&plain).unwrap().replace('/', "\\/"),
    );
    let src = env.path("pem");
    files_source(&src, &leaf);
    let mut shown = Vec::new();
    for path in [&plain, &escaped] {
        let h = traefik::read(&reader, path, None, Ingest::default());
        assert_eq!(h.candidates.len(), 1, "{}: {:?}", path.display(), h.errors);
        shown.push(format!("{h:?}"));
    }
    let pems: Vec<PathBuf> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let cert = pems
        .iter()
        .find(|p| !fs::read_to_string(p).unwrap().contains("PRIVATE"));
    let key = pems
        .iter()
        .find(|p| fs::read_to_string(p).unwrap().contains("PRIVATE"));
    if let (Some(cert), Some(key)) = (cert, key) {
        let h = files::read(&reader, cert, key, None);
        shown.push(format!("{h:?}"));
    }
    for s in &shown {
        for n in &needles {
            assert!(!s.contains(&n.text), "Debug shows the {}:\n{s}", n.what);
        }
    }

    let cf = mxkeys_providers::cloudflare::Cloudflare::new(
        mxkeys_providers::cloudflare::CloudflareConfig {
            api_token: CF_FILE_TOKEN.to_owned(),
            api_url: Some("https://127.0.0.1:1/client/v4/".to_owned()),
            zone: None,
        },
    )
    .unwrap();
    assert!(!format!("{cf:?}").contains(CF_FILE_TOKEN), "{cf:?}");
}

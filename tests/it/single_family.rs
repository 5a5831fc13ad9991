//! DNS propagation on single-family hosts, in network namespaces the test
//! makes: mxkeys finds the zone's servers through the system resolver
//! (`/etc/resolv.conf`, bind-mounted inside the namespace only), and their NS
//! names have both A and AAAA records, one family of which has no route.
//!
//! - IPv4-only: IPv6 is disabled in the namespace; the NS names are A
//!   127.0.0.1 and AAAA 2001:db8::1 (no route: `EADDRNOTAVAIL`).
//! - IPv6-only: the NS names are A 192.0.2.1 (TEST-NET-1, no route in the
//!   namespace: `ENETUNREACH`, nothing is sent) and AAAA ::1.
//!
//! In each, a real BIND serves `example.test` on port 53 (the port mxkeys
//! asks discovered servers at; free in a namespace of our own), and
//! `mxkeys dns test`, a DKIM key's activation, a DNS-01 order against a
//! real pebble (also inside the namespace) and an MTA-STS `sync` (the
//! policy fetched back from the reachable address of `mta-sts.DOMAIN`,
//! its id published) complete; a server with only an
//! address of the missing family (an NS name of `other.test`, or a
//! configured `nameservers` entry) fails the check naming it. Nothing
//! leaves the namespace: it has only a loopback interface.
//!
//! Each outer test re-runs this test binary inside `unshare --net --mount`
//! with one ignored inner test selected; the inner tests refuse to run
//! outside a namespace made by their outer test.
//!
//! Needs root, `unshare` and `mount` (util-linux), `ip` (iproute2), BIND 9
//! and pebble: without them a test is skipped loudly, or fails with
//! `CI=true`.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::servers::{Need, Pebble, prog, require};
use common::*;
use serde_json::Value;

const NEEDS: &[Need] = &[
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("ip", "iproute2"),
    ("named", "bind9"),
    ("tsig-keygen", "bind9"),
    ("dig", "bind9-dnsutils"),
    ("pebble", "pebble"),
];

/// Set in the namespace to the family it keeps.
const MARK: &str = "MXKEYS_TEST_NETNS";
const KEY_NAME: &str = "mxkeys-test";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn tag(self) -> &'static str {
        match self {
            Family::V4 => "ipv4-only",
            Family::V6 => "ipv6-only",
        }
    }

    /// Where the namespace's BIND is reached, for updates and as resolver.
    fn server(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1",
            Family::V6 => "::1",
        }
    }

    fn server_addr(self) -> String {
        match self {
            Family::V4 => "127.0.0.1:53".to_owned(),
            Family::V6 => "[::1]:53".to_owned(),
        }
    }

    /// The NS names' addresses: (A, AAAA), one of them without a route.
    fn ns_addresses(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("127.0.0.1", "2001:db8::1"),
            Family::V6 => ("192.0.2.1", "::1"),
        }
    }

    /// The address no route leads to.
    fn unreachable(self) -> &'static str {
        match self {
            Family::V4 => "[2001:db8::1]:53",
            Family::V6 => "192.0.2.1:53",
        }
    }
}

// ---------------------------------------------------------------------------
// The outer tests: make the namespace, run the inner test in it
// ---------------------------------------------------------------------------

/// Runs the ignored test `inner` of this binary inside a new network and
/// mount namespace keeping `family`, with a resolv.conf naming the
/// namespace's BIND bind-mounted over /etc/resolv.conf there.
fn in_namespace(family: Family, outer: &str, inner: &str) {
    if !require(outer, &[NEEDS]) {
        return;
    }
    let setup = match family {
        // No IPv6 at all; loopback keeps 127.0.0.1.
        Family::V4 => "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
        // IPv6 on; 127.0.0.1 stays on loopback (it always does), but no
        // route leads to any other IPv4 address.
        Family::V6 => "true",
    };
    // The inner test's full name in this binary (`single_family::inside_...`:
    // the module path without the crate's name), for `--exact`.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    common::netns::run_inner(
        &format!("{module}::{inner}"),
        &format!("an {} namespace", family.tag()),
        setup,
        &format!("nameserver {}\n", family.server()),
        (MARK, family.tag()),
    );
}

#[test]
fn on_an_ipv4_only_host_dns_test_dkim_activation_and_a_dns01_order_complete() {
    in_namespace(
        Family::V4,
        "on_an_ipv4_only_host_dns_test_dkim_activation_and_a_dns01_order_complete",
        "inside_ipv4_only",
    );
}

#[test]
fn on_an_ipv6_only_host_dns_test_dkim_activation_and_a_dns01_order_complete() {
    in_namespace(
        Family::V6,
        "on_an_ipv6_only_host_dns_test_dkim_activation_and_a_dns01_order_complete",
        "inside_ipv6_only",
    );
}

#[test]
#[ignore = "run inside a network namespace by on_an_ipv4_only_host_..."]
fn inside_ipv4_only() {
    inside(Family::V4);
}

#[test]
#[ignore = "run inside a network namespace by on_an_ipv6_only_host_..."]
fn inside_ipv6_only() {
    inside(Family::V6);
}

// ---------------------------------------------------------------------------
// Inside the namespace
// ---------------------------------------------------------------------------

fn inside(family: Family) {
    assert_eq!(
        std::env::var(MARK).as_deref(),
        Ok(family.tag()),
        "this test binds port 53 and relies on a private /etc/resolv.conf: \
         it runs only inside the namespace its outer test makes"
    );
    // The namespace is what the test says it is.
    let (a, aaaa) = family.ns_addresses();
    let v4_route = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect((a, 53)))
        .is_ok();
    let v6_route = std::net::UdpSocket::bind("[::]:0")
        .and_then(|s| s.connect((aaaa, 53)))
        .is_ok();
    assert_eq!(
        (v4_route, v6_route),
        (family == Family::V4, family == Family::V6),
        "routes to the NS addresses {a} and {aaaa}"
    );

    let env = Env::new();
    let bind = NsBind::start(&env.path("bind"), family);
    let pebble = Pebble::start_with_dns(&env.path("pebble"), "127.0.0.1:53".parse().unwrap());

    dns_test_passes(&env, &bind, family);
    servers_without_a_reachable_address_are_named(&env, &bind, family);
    dkim_key_activates(&env, &bind, family);
    delegated_dkim_key_activates(&env, &bind, family);
    dns01_order_completes(&env, &bind, &pebble);
    mta_sts_policy_is_fetched_back_over_the_family_this_host_has(&env, &bind, family);
}

/// `[dns.bind]` without `nameservers`: the servers are found through the
/// system resolver, i.e. the namespace's BIND.
fn dns_table(bind: &NsBind, family: Family) -> String {
    format!(
        "[dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{}\"\n\
         zone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = {}\n\
         propagation_interval = \"200ms\"\n\
         propagation_timeout = \"20s\"\n",
        family.server_addr(),
        qp(&bind.dir.join("tsig.key")),
    )
}

fn dns_test_passes(env: &Env, bind: &NsBind, family: Family) {
    env.write_config_raw(&format!(
        "state_dir = {}\n{}",
        qp(&env.state),
        dns_table(bind, family)
    ));
    let mut cmd = env.cmd(&["dns", "test", "bind"]);
    cmd.env("MXKEYS_LOG", "mxkeys_providers=debug,mxkeys=info");
    let run = Run::from_output("mxkeys dns test bind".to_owned(), cmd.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.describe());
    let reachable = match family {
        Family::V4 => "127.0.0.1:53",
        Family::V6 => "[::1]:53",
    };
    // Both NS names share the reachable address: asked (and shown) once.
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.contains(&format!("{reachable} answers")))
            .count(),
        1,
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.contains("ok: [dns.bind] works"),
        "{}",
        run.describe()
    );
    // The unreachable family is skipped, said once, at debug level.
    let skipped: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("address skipped") && l.contains(family.unreachable()))
        .collect();
    assert_eq!(skipped.len(), 1, "{}", run.describe());
    assert!(skipped[0].contains("DEBUG"), "{}", run.describe());
    assert!(
        !run.stdout.contains(family.unreachable()),
        "{}",
        run.describe()
    );
}

/// A zone whose only NS name has only an address of the missing family,
/// and a configured `nameservers` list with such an address: the check
/// fails naming the server, it does not pass on the others alone.
fn servers_without_a_reachable_address_are_named(env: &Env, bind: &NsBind, family: Family) {
    let secret = qp(&bind.dir.join("tsig.key"));
    let server = family.server_addr();
    env.write_config_raw(&format!(
        "state_dir = {}\n\
         [dns.other]\ntype = \"rfc2136\"\nserver = \"{server}\"\nzone = \"other.test\"\n\
         tsig_name = \"{KEY_NAME}\"\ntsig_secret_file = {secret}\n\
         propagation_interval = \"100ms\"\npropagation_timeout = \"1s\"\n\
         [dns.listed]\ntype = \"rfc2136\"\nserver = \"{server}\"\nzone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\ntsig_secret_file = {secret}\n\
         nameservers = [\"{server}\", \"{}\"]\n\
         propagation_interval = \"100ms\"\npropagation_timeout = \"1s\"\n",
        qp(&env.state),
        family.unreachable(),
    ));
    // `dns test` of `provider` fails, naming `server` as unreachable.
    let fails_naming = |provider: &str, server: &str| {
        let run = env.run(&["dns", "test", provider]);
        assert_ne!(run.code, 0, "{}", run.describe());
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(
            all.contains(&format!(
                "{server}: no address this host can reach ({}",
                family.unreachable()
            )),
            "{}",
            run.describe()
        );
    };
    fails_naming("other", "ns.other.test");
    fails_naming("listed", family.unreachable());
}

fn dkim_key_activates(env: &Env, bind: &NsBind, family: Family) {
    env.write_config_raw(&format!(
        "state_dir = {}\n{}\n[dkim]\n\
         domains = [\"example.test\"]\n\
         algorithms = [\"rsa-2048\"]\n\
         key_dir = {}\n\
         dns = \"bind\"\n\
         signer = \"opendkim\"\n\
         signer_dir = {}\n\
         rotate_every = \"1m\"\n\
         lead = \"0s\"\n\
         ttl = 60\n\
         reload = [\"true\"]\n",
        qp(&env.state),
        dns_table(bind, family),
        qp(&env.path("dkim-keys")),
        qp(&env.path("signer")),
    ));
    let start = Instant::now();
    let mut transcript = String::new();
    loop {
        let run = env.run(&["dkim", "rotate"]);
        transcript.push_str(&run.describe());
        assert_eq!(run.code, 0, "{transcript}");
        let state: Value = serde_json::from_slice(
            &std::fs::read(env.state.join("dkim/state.json")).unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let keys = state["keys"].as_array().cloned().unwrap_or_default();
        if keys.iter().any(|k| k["state"] == "active") {
            assert!(
                transcript.contains("on every authoritative server"),
                "{transcript}"
            );
            let selector = keys[0]["selector"].as_str().unwrap();
            let name = format!("{selector}._domainkey.example.test");
            assert!(
                bind.dig(&["TXT", &name, "+short"]).contains("v=DKIM1"),
                "{name} not published"
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no DKIM key became active:\n{transcript}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Delegation by CNAME on a single-family host: `mxkeys dns delegation`
/// finds the user zone's servers through the resolver and checks both slot
/// CNAMEs on the address it can reach, and a DKIM key in slot mx1r is
/// written at its delegated name and activates once seen through the
/// CNAME on every server.
fn delegated_dkim_key_activates(env: &Env, bind: &NsBind, family: Family) {
    let state = env.path("state-delegated");
    let table = dns_table(bind, family)
        .replace("[dns.bind]", "[dns.d]")
        .replace(
            "zone = \"example.test\"\n",
            "zone = \"example.test\"\ndelegate_to = \"dlg.example.test\"\n",
        );
    env.write_config_raw(&format!(
        "state_dir = {}\n{table}\n[dkim]\n\
         domains = [\"example.test\"]\n\
         algorithms = [\"rsa-2048\"]\n\
         key_dir = {}\n\
         dns = \"d\"\n\
         signer = \"opendkim\"\n\
         signer_dir = {}\n\
         rotate_every = \"1m\"\n\
         drain = \"1s\"\n\
         revoke_hold = \"1s\"\n\
         lead = \"0s\"\n\
         ttl = 60\n\
         reload = [\"true\"]\n",
        qp(&state),
        qp(&env.path("dkim-keys-delegated")),
        qp(&env.path("signer-delegated")),
    ));
    let run = env.run(&["dns", "delegation", "d"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    for slot in ["mx1r", "mx2r"] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with("ok")
                    && l.contains(&format!("{slot}._domainkey.example.test"))),
            "{}",
            run.describe()
        );
    }
    assert!(
        !format!("{}{}", run.stdout, run.stderr).contains(family.unreachable()),
        "{}",
        run.describe()
    );
    let start = Instant::now();
    let mut transcript = String::new();
    loop {
        let run = env.run(&["dkim", "rotate"]);
        transcript.push_str(&run.describe());
        assert_eq!(run.code, 0, "{transcript}");
        let book: Value = serde_json::from_slice(
            &std::fs::read(state.join("dkim/state.json")).unwrap_or_default(),
        )
        .unwrap_or(Value::Null);
        let keys = book["keys"].as_array().cloned().unwrap_or_default();
        if let Some(active) = keys.iter().find(|k| k["state"] == "active") {
            assert_eq!(active["selector"], "mx1r", "{transcript}");
            assert!(
                bind.dig(&[
                    "TXT",
                    "mx1r._domainkey.example.test.dlg.example.test",
                    "+short"
                ])
                .contains("v=DKIM1"),
                "not published at the delegated name:\n{transcript}"
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no delegated DKIM key became active:\n{transcript}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `mxkeys sync` with an MTA-STS `webroot` and no `responders`: the
/// policy is fetched back from the addresses `mta-sts.example.test`
/// resolves to (A and AAAA, one family without a route), the one this host
/// can reach serving it (`openssl s_server -WWW` with a test-CA
/// certificate), and its id is published. Without the route filter the
/// unreachable address counts as a responder not serving the body, and
/// the id is never published.
fn mta_sts_policy_is_fetched_back_over_the_family_this_host_has(
    env: &Env,
    bind: &NsBind,
    family: Family,
) {
    let ca = Ca::new("single-family-mta-sts");
    let leaf = ca.issue(&LeafSpec::new(&["mta-sts.example.test"]));
    write(
        &env.path("mta-sts-ca.pem"),
        pem_block("CERTIFICATE", &ca.root_der),
    );
    write(&env.path("mta-sts-cert.pem"), leaf.cert_pem());
    write(&env.path("mta-sts-chain.pem"), leaf.chain_pem());
    write(&env.path("mta-sts-key.pem"), leaf.key_pem());
    let www = env.path("www");
    let root = www.join("mta-sts.example.test");
    std::fs::create_dir_all(&root).unwrap();
    let accept = match family {
        Family::V4 => "127.0.0.1:443",
        Family::V6 => "[::1]:443",
    };
    let server = Command::new(prog("openssl"))
        .args(["s_server", "-WWW", "-quiet", "-accept", accept, "-cert"])
        .arg(env.path("mta-sts-cert.pem"))
        .arg("-cert_chain")
        .arg(env.path("mta-sts-chain.pem"))
        .arg("-key")
        .arg(env.path("mta-sts-key.pem"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(server);
    let reach: std::net::SocketAddr = accept.parse().unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(reach).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "s_server did not listen on {accept}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.write_config_raw(&format!(
        "state_dir = {}\n{}\n[mta_sts]\n\
         domains = [\"example.test\"]\n\
         mode = \"testing\"\n\
         mx = [\"mx.example.test\"]\n\
         dns = \"bind\"\n\
         webroot = {}\n\
         ca_bundle = {}\n",
        qp(&env.state),
        dns_table(bind, family),
        qp(&www),
        qp(&env.path("mta-sts-ca.pem")),
    ));
    let mut cmd = env.cmd(&["sync"]);
    cmd.env("MXKEYS_LOG", "mxkeys=debug");
    let run = Run::from_output("mxkeys sync".to_owned(), cmd.output().unwrap());
    assert_eq!(run.code, 0, "{}", run.describe());
    let id = mxkeys::mta_sts::policy::id_of(
        mxkeys::mta_sts::policy::Mode::Testing,
        &["mx.example.test".to_owned()].into(),
        604_800,
    );
    let txt = bind.dig(&["TXT", "_mta-sts.example.test", "+short"]);
    assert!(
        txt.contains(&format!("id={id}")),
        "TXT {txt:?}\n{}",
        run.describe()
    );
    let skipped = match family {
        Family::V4 => "[2001:db8::1]:443",
        Family::V6 => "192.0.2.1:443",
    };
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("address skipped") && l.contains(skipped)),
        "{}",
        run.describe()
    );
}

fn dns01_order_completes(env: &Env, bind: &NsBind, pebble: &Pebble) {
    let out = env.out.join("chain.pem");
    env.write_config_raw(&format!(
        "state_dir = {}\n\n[acme]\ndirectory = {}\nemail = \"admin@example.test\"\nca_bundle = {}\n\n{}\n\
         [[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.test\"]\n\
         challenge = \"dns-01\"\ndns = \"bind\"\n\n\
         [[target]]\nname = \"postfix\"\ndomains = [\"mail.example.test\"]\ncombined = {}\n",
        qp(&env.state),
        q(&pebble.url),
        qp(&pebble.https_ca),
        dns_table(bind, bind.family),
        qp(&out),
    ));
    let run = env.run(&["renew"]);
    let log = std::fs::read_to_string(pebble.dir.join("pebble.log")).unwrap_or_default();
    assert_eq!(run.code, 0, "{}\n--- pebble.log ---\n{log}", run.describe());
    let certs = read_certs(&out);
    assert!(!certs.is_empty(), "no certificate in {}", out.display());
    assert!(
        cert_info(&certs[0])
            .dns_sans
            .iter()
            .any(|s| s == "mail.example.test"),
        "the installed certificate does not name mail.example.test"
    );
    assert!(
        bind.dig(&["TXT", "_acme-challenge.mail.example.test", "+short"])
            .trim()
            .is_empty(),
        "the challenge record was not removed"
    );
}

// ---------------------------------------------------------------------------
// BIND on port 53 of the namespace
// ---------------------------------------------------------------------------

/// `named` serving `example.test` (updatable with a TSIG key) on port 53 of
/// the namespace's loopback addresses of `family`, in the foreground,
/// killed on Drop.
struct NsBind {
    dir: PathBuf,
    family: Family,
    child: Child,
}

impl NsBind {
    fn start(dir: &Path, family: Family) -> NsBind {
        std::fs::create_dir_all(dir).unwrap();
        let key = Command::new(prog("tsig-keygen"))
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .unwrap();
        assert!(key.status.success(), "tsig-keygen: {key:?}");
        write(&dir.join("tsig.key"), &key.stdout);
        let (a, aaaa) = family.ns_addresses();
        write(
            &dir.join("example.test.zone"),
            format!(
                "$TTL 60\n\
                 @ IN SOA ns1.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
                 @ IN NS ns1.example.test.\n\
                 @ IN NS ns2.example.test.\n\
                 ns1 IN A {a}\nns1 IN AAAA {aaaa}\n\
                 ns2 IN A {a}\nns2 IN AAAA {aaaa}\n\
                 @ IN A 127.0.0.1\n\
                 * IN A 127.0.0.1\n\
                 mta-sts IN A {a}\nmta-sts IN AAAA {aaaa}\n\
                 ; delegation by CNAME (`delegate_to = \"dlg.example.test\"`)\n\
                 mx1r._domainkey IN CNAME mx1r._domainkey.example.test.dlg.example.test.\n\
                 mx2r._domainkey IN CNAME mx2r._domainkey.example.test.dlg.example.test.\n"
            ),
        );
        // A zone whose only NS name has only the address without a route.
        let lone = match family {
            Family::V4 => "AAAA 2001:db8::1",
            Family::V6 => "A 192.0.2.1",
        };
        write(
            &dir.join("other.test.zone"),
            format!(
                "$TTL 60\n\
                 @ IN SOA ns.other.test. hostmaster.other.test. 1 3600 600 86400 60\n\
                 @ IN NS ns.other.test.\n\
                 ns IN {lone}\n"
            ),
        );
        let (v4, v6) = match family {
            Family::V4 => ("127.0.0.1;", "none;"),
            Family::V6 => ("127.0.0.1;", "::1;"),
        };
        let d = dir.display();
        write(
            &dir.join("named.conf"),
            format!(
                r#"include "{d}/tsig.key";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port 53 {{ {v4} }};
    listen-on-v6 port 53 {{ {v6} }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
zone "example.test" {{ type primary; file "{d}/example.test.zone"; allow-update {{ key "{KEY_NAME}"; }}; }};
zone "other.test" {{ type primary; file "{d}/other.test.zone"; allow-update {{ key "{KEY_NAME}"; }}; }};
"#
            ),
        );
        let log = std::fs::File::create(dir.join("named.log")).unwrap();
        let mut cmd = Command::new(prog("named"));
        cmd.arg("-g");
        if family == Family::V4 {
            cmd.arg("-4");
        }
        let child = cmd
            .arg("-c")
            .arg(dir.join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut bind = NsBind {
            dir: dir.to_path_buf(),
            family,
            child,
        };
        let start = Instant::now();
        loop {
            if bind
                .dig(&["+time=1", "+tries=1", "SOA", "example.test", "+short"])
                .contains("hostmaster.example.test.")
            {
                return bind;
            }
            let exited = bind.child.try_wait().unwrap().is_some();
            if exited || start.elapsed() > Duration::from_secs(15) {
                panic!(
                    "named did not start:\n{}",
                    std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `dig @SERVER -p 53 +norecurse ARGS`, stdout.
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new(prog("dig"))
            .arg(format!("@{}", self.family.server()))
            .args(["-p", "53", "+norecurse"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NsBind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// The cluster on a single-family host (issue 18)
// ---------------------------------------------------------------------------

/// The cluster (issue 18) on single-family hosts: a three-member etcd
/// (Debian's etcd-server) listening on that family's loopback only, in the
/// same kind of namespace; configurations naming `http://[::1]:PORT`
/// validate, hosts connect, elect one leader, and share a certificate
/// through it. Built with the etcd client only (feature `etcd`); without
/// etcd a test is skipped naming the package, or fails with `CI=true`.
#[cfg(feature = "etcd")]
mod cluster {
    use super::*;

    /// Like [`in_namespace`], also needing etcd.
    fn cluster_in_namespace(family: Family, outer: &str, inner: &str) {
        if !require(outer, &[NEEDS, common::etcd::ETCD]) {
            return;
        }
        let setup = match family {
            Family::V4 => "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
            Family::V6 => "true",
        };
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        common::netns::run_inner(
            &format!("{module}::{inner}"),
            &format!("an {} namespace", family.tag()),
            setup,
            "nameserver 127.0.0.1\n",
            (MARK, family.tag()),
        );
    }

    #[test]
    fn on_an_ipv6_only_host_two_hosts_share_a_job_and_a_certificate_through_etcd_on_ipv6_loopback()
    {
        cluster_in_namespace(
            Family::V6,
            "on_an_ipv6_only_host_two_hosts_share_a_job_and_a_certificate_through_etcd_on_ipv6_loopback",
            "inside_ipv6_only_cluster",
        );
    }

    #[test]
    fn on_an_ipv4_only_host_two_hosts_share_a_job_and_a_certificate_through_etcd() {
        cluster_in_namespace(
            Family::V4,
            "on_an_ipv4_only_host_two_hosts_share_a_job_and_a_certificate_through_etcd",
            "inside_ipv4_only_cluster",
        );
    }

    #[test]
    #[ignore = "run inside a network namespace by on_an_ipv6_only_host_two_hosts_..."]
    fn inside_ipv6_only_cluster() {
        inside_cluster(Family::V6);
    }

    #[test]
    #[ignore = "run inside a network namespace by on_an_ipv4_only_host_two_hosts_..."]
    fn inside_ipv4_only_cluster() {
        inside_cluster(Family::V4);
    }

    /// Inside the namespace: a three-member etcd on the family's loopback
    /// only (`[::1]` on the IPv6-only host), two hosts' configurations with
    /// `[cluster]` naming its endpoints and a `shared = true` source are
    /// accepted, and the two hosts, connected with the daemon's own
    /// `Backend::connect`, elect one leader for the source's job; the
    /// leader's fenced write reaches the other host's watch. Then the
    /// one-shot commands share a real certificate the same way
    /// ([`shared_renew_and_sync_complete`]).
    fn inside_cluster(family: Family) {
        assert_eq!(
            std::env::var(MARK).as_deref(),
            Ok(family.tag()),
            "this test relies on a namespace of its own: it runs only inside \
             the namespace its outer test makes"
        );
        use mxkeys::cluster::{Backend, Event, Expect, SharedStore, Written};
        use mxkeys::config::{Config, Host};

        let env = Env::new();
        let etcd = match family {
            Family::V4 => common::etcd::EtcdCluster::start(&env.path("etcd"), 3),
            Family::V6 => common::etcd::EtcdCluster::start_ipv6(&env.path("etcd"), 3),
        };
        let want = match family {
            Family::V4 => "http://127.0.0.1:",
            Family::V6 => "http://[::1]:",
        };
        assert!(
            etcd.endpoints().iter().all(|e| e.starts_with(want)),
            "{:?}",
            etcd.endpoints()
        );
        if family == Family::V6 {
            // The members listen on [::1] only: nothing answers on 127.0.0.1.
            for e in etcd.endpoints() {
                let port = e.rsplit(':').next().unwrap();
                assert!(
                    std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
                    "an etcd member answers on 127.0.0.1:{port}"
                );
            }
        }
        let key_file = env.path("shared.key");
        write(&key_file, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n");
        set_mode(&key_file, 0o600);
        let config = |id: &str| {
            let text = format!(
                "hostname = \"{id}.example.test\"\nhost_id = \"{id}\"\nstate_dir = {state}\n\n\
                 [acme]\ndirectory = \"https://acme.invalid/dir\"\nemail = \"admin@example.test\"\n\n\
                 [cluster]\nbackend = \"etcd\"\nendpoints = {endpoints}\nprefix = \"/mxkeys-sf\"\n\
                 shared_key_file = {key}\nlease_ttl = \"3s\"\n\n\
                 [[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.test\"]\n\
                 challenge = \"http-01\"\nshared = true\n\n\
                 [[target]]\nname = \"t\"\ndomains = [\"mail.example.test\"]\ncombined = {out}\n",
                state = qp(&env.state),
                endpoints = etcd.endpoints_toml(),
                key = qp(&key_file),
                out = qp(&env.out.join("combined.pem")),
            );
            let path = env.path(&format!("{id}.toml"));
            write(&path, &text);
            Config::parse(&path, &text, &Host::current())
                .unwrap_or_else(|e| panic!("{id}'s configuration is refused: {e}"))
        };
        let configs = [config("mx1"), config("mx2")];

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bound = Duration::from_secs(30);
            let mut hosts = Vec::new();
            for c in &configs {
                let cluster = c.cluster.as_ref().expect("[cluster] parsed");
                let id = c.host_id.as_ref().expect("host_id parsed");
                let b = tokio::time::timeout(bound, Backend::connect(cluster, id))
                    .await
                    .expect("connect returned within its bound")
                    .unwrap_or_else(|e| panic!("{id} connects to {:?}: {e}", cluster.endpoints));
                hosts.push(b);
            }
            // The follower watches before the leader writes.
            let mut events = hosts[1].watch("acme/", 0).await.expect("watch");
            let (a, b) = tokio::join!(
                hosts[0].campaign("acme/mail"),
                hosts[1].campaign("acme/mail")
            );
            let (a, b) = (a.expect("campaign"), b.expect("campaign"));
            assert!(a.is_some() != b.is_some(), "one leader: {a:?} {b:?}");
            let (leader, lead) = match (a, b) {
                (Some(l), None) => (0, l),
                (None, Some(l)) => (1, l),
                _ => unreachable!(),
            };
            assert_eq!(
                etcd.get("/mxkeys-sf/lock/acme/mail").as_deref(),
                Some(format!("mx{}", leader + 1).as_bytes())
            );
            let w = hosts[leader]
                .put_fenced(&lead, "acme/mail", b"sealed", Expect::Absent)
                .await
                .expect("put_fenced");
            assert!(matches!(w, Written::Stored(_)), "{w:?}");
            let seen = tokio::time::timeout(bound, async {
                while let Some(e) = events.recv().await {
                    if let Event::Put { key, .. } = &e
                        && key == "acme/mail"
                    {
                        return Some(e);
                    }
                }
                None
            })
            .await
            .expect("the watch reported the write within its bound");
            assert!(seen.is_some(), "the watch ended without the write");
            // The other host reads it back.
            let other = 1 - leader;
            assert!(hosts[other].get("acme/mail").await.unwrap().is_some());
        });
        assert_eq!(
            etcd.get("/mxkeys-sf/acme/mail").as_deref(),
            Some(&b"sealed"[..])
        );
        shared_renew_and_sync_complete(&env, &etcd, family);
    }

    /// The one-shot commands of two hosts with a shared DNS-01 source
    /// (pebble and BIND in the namespace): `mxkeys renew` on mx1 orders
    /// and stores the certificate in etcd, `mxkeys sync` on mx2 installs
    /// the same certificate from there; pebble saw one order.
    fn shared_renew_and_sync_complete(
        root: &Env,
        etcd: &common::etcd::EtcdCluster,
        family: Family,
    ) {
        let bind = NsBind::start(&root.path("bind"), family);
        let pebble = Pebble::start_with_dns(&root.path("pebble"), "127.0.0.1:53".parse().unwrap());
        let key_file = root.path("shared.key");
        let hosts: Vec<(&str, Env)> = ["mx1", "mx2"].map(|id| (id, Env::new())).into();
        for (id, env) in &hosts {
            env.write_config_raw(&format!(
                "state_dir = {state}
host_id = \"{id}\"\n\n\
                 [cluster]\nbackend = \"etcd\"\nendpoints = {endpoints}\nprefix = \"/mxkeys-sf-renew\"\n\
                 shared_key_file = {key}\nlease_ttl = \"3s\"\n\n\
                 [acme]\ndirectory = {dir}\nemail = \"admin@example.test\"\nca_bundle = {ca}\n\n{dns}\n\
                 [[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.test\"]\n\
                 challenge = \"dns-01\"\ndns = \"bind\"\nshared = true\n\n\
                 [[target]]\nname = \"postfix\"\ndomains = [\"mail.example.test\"]\ncombined = {out}\n",
                state = qp(&env.state),
                endpoints = etcd.endpoints_toml(),
                key = qp(&key_file),
                dir = q(&pebble.url),
                ca = qp(&pebble.https_ca),
                dns = dns_table(&bind, family),
                out = qp(&env.out.join("chain.pem")),
            ));
        }
        let pebble_log =
            || std::fs::read_to_string(pebble.dir.join("pebble.log")).unwrap_or_default();
        let run = hosts[0].1.run(&["renew"]);
        assert_eq!(
            run.code,
            0,
            "{}\n--- pebble.log ---\n{}",
            run.describe(),
            pebble_log()
        );
        let stored = etcd
            .get("/mxkeys-sf-renew/acme/mail")
            .unwrap_or_else(|| panic!("not stored in etcd\n{}", run.describe()));
        assert!(!String::from_utf8_lossy(&stored).contains("PRIVATE KEY"));
        let run = hosts[1].1.run(&["sync"]);
        assert_eq!(run.code, 0, "{}", run.describe());
        let leaves: Vec<Vec<u8>> = hosts
            .iter()
            .map(|(id, env)| {
                let certs = read_certs(&env.out.join("chain.pem"));
                assert!(!certs.is_empty(), "{id}: nothing installed");
                certs[0].clone()
            })
            .collect();
        assert_eq!(leaves[0], leaves[1], "the hosts installed different leaves");
        assert!(
            cert_info(&leaves[0])
                .issuer
                .to_lowercase()
                .contains("pebble")
        );
        let orders = pebble_log()
            .lines()
            .filter(|l| l.contains("POST /order-plz -> calling handler()"))
            .count();
        assert_eq!(orders, 1, "one order at pebble");
    }
}

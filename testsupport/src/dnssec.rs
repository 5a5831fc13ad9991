//! A DNSSEC test bed for DANE: a signed `example.test` and a validating
//! resolver, inside a network + mount namespace the test makes, so that real
//! DANE clients (`posttls-finger`, `ldns-dane`, a Postfix sender) resolving
//! through libc get validated (`ad`) answers.
//!
//! The rule: everything runs inside a namespace of the test's own (only a
//! loopback interface, nothing leaves it), where the well-known ports are
//! free and /etc/resolv.conf may be replaced:
//! - BIND 9 serves `example.test` on 127.0.0.1:53, signed by itself
//!   (`dnssec-policy` with one ECDSA P-256 CSK, `inline-signing yes`), every
//!   TTL 2 s so "2 × TTL" waits take seconds; RFC 2136 updates signed with a
//!   generated TSIG key ([`KEY_NAME`]) are allowed and re-signed at once;
//! - Unbound listens on 127.0.0.2:53 with a `stub-zone` for `example.test`
//!   pointing at that BIND and the zone's DNSKEY (read from BIND once it has
//!   signed) as its only trust anchor: its answers carry `ad`;
//! - BIND also serves [`UNSIGNED_ZONE`] unsigned, which Unbound answers
//!   without `ad` (for tests of what must refuse an unsigned zone);
//! - /etc/resolv.conf, inside the namespace only, names Unbound.
//!
//! An outer test calls [`run_in_namespace`], which re-runs the current test
//! binary inside `unshare --net --mount` with one ignored inner test
//! selected; the inner test calls [`assert_in_namespace`] first, then
//! [`SignedZone::start`]. Inner tests each get a namespace of their own, so
//! they may run in parallel.
//!
//! Gotchas met on the way (Debian 12: BIND 9.18, Unbound 1.17, glibc 2.36):
//! - Unbound serves `test.` itself as an RFC 6761 local zone (NXDOMAIN for
//!   everything) unless told `local-zone: "test." nodefault`.
//! - Unbound does not query 127.0.0.0/8 servers unless
//!   `do-not-query-localhost: no`.
//! - glibc (2.31 and later) clears the `ad` flag of answers unless
//!   resolv.conf says `options trust-ad` or the program asks for
//!   `RES_TRUSTAD`. Postfix asks (posttls-finger verifies without the
//!   option, checked); resolv.conf has it anyway, for clients that do not.
//! - `ldns-dane` uses ldns' own stub resolver (reading /etc/resolv.conf)
//!   and, without `-S`, trusts the resolver's `ad`: no `-k` anchor needed.
//! - `posttls-finger` reads main.cf: without /etc/postfix/main.cf, set
//!   `MAIL_CONFIG` to an instance's configuration directory.
//! - Unbound caches NXDOMAIN for the SOA minimum; a record added later is
//!   seen once that expires: the zone's SOA minimum is 2 s and Unbound's
//!   `cache-max-negative-ttl` is 1.
//! - 127.0.0.2 needs no address of its own for Unbound: a namespace's `lo`,
//!   once up, routes all of 127.0.0.0/8. Postfix is stricter: its
//!   `inet_interfaces` must be an interface's address (else `postfix check`
//!   exits 1, silently), so the namespace gets 127.0.0.3 on `lo` for a
//!   sender ([`SENDER`]), whose address must differ from the receiver's.
//!
//! - A new network namespace starts with `net.unix.max_dgram_qlen` = 10.
//!   Postfix's postlogd reads the `postlog` datagram socket and also sends
//!   its own messages to it: when a burst (postfix-script's start-up
//!   warnings, then smtpd's lines) fills ten datagrams, postlogd blocks on
//!   itself, and so does every process that logs next (an smtpd then
//!   hangs mid-session: seen as a mail loop whose submissions time out).
//!   The namespace gets 512.
//!
//! Without root or one of the programs ([`NEEDS`]) the outer test is skipped
//! loudly, or fails with `CI=true`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::{Need, output_within, prog, require};
use crate::{sha256_hex, write};

/// The signed zone.
pub const ZONE: &str = "example.test";
/// A zone the same BIND serves unsigned (updatable with the same key):
/// Unbound answers it without `ad` (no trust anchor covers it), as a
/// resolver answers a zone without DNSSEC.
pub const UNSIGNED_ZONE: &str = "unsigned.test";
/// The TSIG key allowed to update [`ZONE`] and [`UNSIGNED_ZONE`].
pub const KEY_NAME: &str = "mxkeys-test";
/// Where BIND answers, inside the namespace.
pub const AUTHORITATIVE: &str = "127.0.0.1";
/// Where Unbound answers, inside the namespace (and what resolv.conf names).
pub const RESOLVER: &str = "127.0.0.2";
/// A Postfix sender's address, inside the namespace
/// (`Postfix::start_dane_sender`).
pub const SENDER: &str = "127.0.0.3";
/// The zone's TTLs, in seconds (records, negative answers, DNSKEY).
pub const TTL: u32 = 2;

/// The programs the namespace and the two servers need.
pub const NEEDS: &[Need] = &[
    ("unshare", "util-linux"),
    ("mount", "mount"),
    ("ip", "iproute2"),
    ("named", "bind9"),
    ("tsig-keygen", "bind9"),
    ("dig", "bind9-dnsutils"),
    ("nsupdate", "bind9-dnsutils"),
    ("unbound", "unbound"),
];

/// Set in the namespace by [`run_in_namespace`].
const MARK: &str = "MXKEYS_TEST_DNSSEC_NETNS";

/// How long BIND may take to sign, or Unbound to see a change.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the ignored test `inner` (its full name in this test binary, e.g.
/// `dane::inside_x`) inside a new network and mount namespace with `lo` up
/// and a resolv.conf naming [`RESOLVER`] bind-mounted over /etc/resolv.conf,
/// and panics with its output unless it passed. `needs` are the programs
/// the inner test uses besides [`NEEDS`]. Returns false (skip) when
/// something is missing outside CI.
pub fn run_in_namespace(outer: &str, inner: &str, needs: &[&[Need]]) -> bool {
    let mut all = vec![NEEDS];
    all.extend_from_slice(needs);
    if !require(outer, &all) {
        return false;
    }
    // trust-ad: see the module doc. 127.0.0.3: a Postfix sender's own
    // address (its `inet_interfaces` must name an address of an
    // interface, and differ from the receiver's). max_dgram_qlen: see the
    // module doc (postlogd).
    crate::netns::run_inner(
        inner,
        "its namespace",
        "ip addr add 127.0.0.3/32 dev lo\necho 512 > /proc/sys/net/unix/max_dgram_qlen",
        &format!("nameserver {RESOLVER}\noptions edns0 trust-ad\n"),
        (MARK, inner),
    );
    true
}

/// Panics unless this process runs in the namespace [`run_in_namespace`]
/// made for it: an inner test binds port 53 and relies on a private
/// /etc/resolv.conf.
pub fn assert_in_namespace() {
    assert!(
        std::env::var_os(MARK).is_some(),
        "this test binds ports 53 and 25 and relies on a private /etc/resolv.conf: \
         it runs only inside the namespace its outer test makes"
    );
}

/// BIND signing [`ZONE`] and Unbound validating it, killed on Drop.
pub struct SignedZone {
    pub dir: PathBuf,
    named: Child,
    unbound: Option<Child>,
}

impl SignedZone {
    /// Starts both servers in `dir` (created) with `records` (zone-file
    /// lines, relative to the zone, TTL [`TTL`]) next to the SOA, NS and
    /// `ns`/`mail` A 127.0.0.1 records, and waits until Unbound answers the
    /// zone's SOA with `ad`.
    #[track_caller]
    pub fn start(dir: &Path, records: &str) -> SignedZone {
        assert_in_namespace();
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let key = Command::new(prog("tsig-keygen"))
            .args(["-a", "hmac-sha256", KEY_NAME])
            .output()
            .unwrap();
        assert!(key.status.success(), "tsig-keygen failed: {key:?}");
        write(&dir.join("tsig.key"), &key.stdout);
        write(
            &dir.join("example.test.zone"),
            format!(
                "$TTL {TTL}\n\
                 @ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 {TTL}\n\
                 @ IN NS ns.example.test.\n\
                 @ IN MX 10 mail.example.test.\n\
                 ns IN A 127.0.0.1\n\
                 mail IN A 127.0.0.1\n\
                 {records}\n"
            ),
        );
        write(
            &dir.join("unsigned.test.zone"),
            format!(
                "$TTL {TTL}\n\
                 @ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 {TTL}\n\
                 @ IN NS ns.example.test.\n\
                 mail IN A 127.0.0.1\n"
            ),
        );
        let d = dir.display();
        // Safety margins 0 and 2 s TTLs: the one CSK is published and used
        // at once. `inline-signing yes`: updates go to the unsigned zone and
        // BIND re-signs what changed.
        write(
            &dir.join("named.conf"),
            format!(
                r#"include "{d}/tsig.key";
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port 53 {{ {AUTHORITATIVE}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ none; }};
}};
controls {{ }};
dnssec-policy "test" {{
    keys {{ csk key-directory lifetime unlimited algorithm ecdsap256sha256; }};
    dnskey-ttl {TTL};
    max-zone-ttl {TTL};
    zone-propagation-delay 0;
    publish-safety 0;
    retire-safety 0;
    parent-ds-ttl {TTL};
    parent-propagation-delay 0;
}};
zone "{ZONE}" {{
    type primary;
    file "{d}/example.test.zone";
    key-directory "{d}/keys";
    dnssec-policy "test";
    inline-signing yes;
    allow-update {{ key "{KEY_NAME}"; }};
}};
zone "{UNSIGNED_ZONE}" {{
    type primary;
    file "{d}/unsigned.test.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#
            ),
        );
        let log = std::fs::File::create(dir.join("named.log")).unwrap();
        let named = Command::new(prog("named"))
            .args(["-g", "-4", "-c"])
            .arg(dir.join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut zone = SignedZone {
            dir: dir.to_path_buf(),
            named,
            unbound: None,
        };
        // Signed: the DNSKEY set is served, with its RRSIG.
        let dnskeys = zone.wait("BIND to sign the zone", || {
            let out = dig(
                AUTHORITATIVE,
                &["+norecurse", "+dnssec", "+noall", "+answer", "DNSKEY", ZONE],
            );
            let keys: Vec<&str> = out
                .lines()
                .filter(|l| l.split_whitespace().nth(3) == Some("DNSKEY"))
                .collect();
            (!keys.is_empty() && out.contains("RRSIG")).then(|| keys.join("\n"))
        });
        write(&dir.join("anchor.key"), format!("{dnskeys}\n"));
        write(
            &dir.join("unbound.conf"),
            format!(
                r#"server:
    interface: {RESOLVER}
    port: 53
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    verbosity: 1
    val-log-level: 2
    do-not-query-localhost: no
    local-zone: "test." nodefault
    trust-anchor-file: "{d}/anchor.key"
    module-config: "validator iterator"
    cache-max-negative-ttl: 1
remote-control:
    control-enable: no
stub-zone:
    name: "{ZONE}"
    stub-addr: {AUTHORITATIVE}@53
stub-zone:
    name: "{UNSIGNED_ZONE}"
    stub-addr: {AUTHORITATIVE}@53
"#
            ),
        );
        let log = std::fs::File::create(dir.join("unbound.log")).unwrap();
        zone.unbound = Some(
            Command::new(prog("unbound"))
                .args(["-d", "-c"])
                .arg(dir.join("unbound.conf"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        zone.wait("Unbound to answer the zone's SOA with ad", || {
            let out = zone.resolve(&["SOA", ZONE]);
            (flags(&out).contains(&"ad".to_owned()) && out.contains("hostmaster")).then_some(())
        });
        zone
    }

    /// `dig @RESOLVER +dnssec ARGS`: the full answer as a validating
    /// resolver gives it.
    pub fn resolve(&self, args: &[&str]) -> String {
        dig(
            RESOLVER,
            &[&["+dnssec", "+time=2", "+tries=1"][..], args].concat(),
        )
    }

    /// `dig @AUTHORITATIVE +norecurse +dnssec ARGS`.
    pub fn authoritative(&self, args: &[&str]) -> String {
        dig(
            AUTHORITATIVE,
            &[&["+norecurse", "+dnssec", "+time=2", "+tries=1"][..], args].concat(),
        )
    }

    /// Sends `commands` (nsupdate lines, e.g. `update add NAME TTL TLSA
    /// ...`) to BIND as one RFC 2136 update signed with [`KEY_NAME`].
    #[track_caller]
    pub fn update(&self, commands: &str) {
        self.update_zone(ZONE, commands);
    }

    /// Like [`SignedZone::update`], in `zone` (e.g. [`UNSIGNED_ZONE`]).
    #[track_caller]
    pub fn update_zone(&self, zone: &str, commands: &str) {
        let script = self.dir.join("update.txt");
        write(
            &script,
            format!("server {AUTHORITATIVE} 53\nzone {zone}\n{commands}\nsend\n"),
        );
        let mut cmd = Command::new(prog("nsupdate"));
        cmd.arg("-k").arg(self.dir.join("tsig.key")).arg(&script);
        let out = output_within(cmd, Duration::from_secs(30)).unwrap();
        assert!(
            out.status.success(),
            "nsupdate failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// Replaces the TLSA set at `owner` (e.g. `_25._tcp.mail.example.test`)
    /// with `records` (each e.g. `3 1 1 HEX`) and waits until Unbound
    /// answers exactly that set with `ad`.
    #[track_caller]
    pub fn set_tlsa(&self, owner: &str, records: &[&str]) {
        let mut commands = format!("update delete {owner} TLSA\n");
        for r in records {
            commands.push_str(&format!("update add {owner} {TTL} TLSA {r}\n"));
        }
        self.update(&commands);
        let mut want: Vec<String> = records.iter().map(|r| normalize(r)).collect();
        want.sort();
        self.wait("Unbound to answer the new TLSA set with ad", || {
            let out = self.resolve(&["TLSA", owner]);
            let mut got: Vec<String> = answer(&out, "TLSA").iter().map(|r| normalize(r)).collect();
            got.sort();
            (got == want && flags(&out).contains(&"ad".to_owned())).then_some(())
        });
    }

    /// The TLSA set BIND serves at `owner` (canonical `3 1 1 hex` strings,
    /// sorted; empty when there is none).
    pub fn served_tlsa(&self, owner: &str) -> Vec<String> {
        let out = self.authoritative(&["TLSA", owner]);
        let mut set: Vec<String> = answer(&out, "TLSA").iter().map(|r| normalize(r)).collect();
        set.sort();
        set
    }

    /// The TLSA set Unbound answers at `owner`, sorted, when the answer is
    /// validated (`ad`); None when it is not.
    pub fn resolved_tlsa(&self, owner: &str) -> Option<Vec<String>> {
        let out = self.resolve(&["TLSA", owner]);
        if !flags(&out).contains(&"ad".to_owned()) {
            return None;
        }
        let mut set: Vec<String> = answer(&out, "TLSA").iter().map(|r| normalize(r)).collect();
        set.sort();
        Some(set)
    }

    /// Adds `record` (e.g. `3 1 1 HEX`) to the TLSA set at `owner`, keeping
    /// what is there (as another host or an administrator would), and
    /// waits until Unbound answers it with `ad`.
    #[track_caller]
    pub fn add_tlsa(&self, owner: &str, record: &str) {
        self.update(&format!("update add {owner} {TTL} TLSA {record}"));
        let want = normalize(record);
        self.wait("Unbound to answer the added TLSA record with ad", || {
            self.resolved_tlsa(owner)
                .filter(|set| set.contains(&want))
                .map(|_| ())
        });
    }

    /// A `[dns.NAME]` table for mxkeys: RFC 2136 to this BIND for `zone`
    /// (e.g. [`ZONE`] or [`UNSIGNED_ZONE`]) with the lab's TSIG key, BIND
    /// as the zone's only nameserver and Unbound as the resolver.
    pub fn rfc2136_toml(&self, name: &str, zone: &str) -> String {
        format!(
            "[dns.{name}]\n\
             type = \"rfc2136\"\n\
             server = \"{AUTHORITATIVE}:53\"\n\
             zone = \"{zone}\"\n\
             tsig_name = \"{KEY_NAME}\"\n\
             tsig_algorithm = \"hmac-sha256\"\n\
             tsig_secret_file = \"{key}\"\n\
             nameservers = [\"{AUTHORITATIVE}\"]\n\
             resolver = \"{RESOLVER}:53\"\n\
             propagation_interval = \"1s\"\n",
            key = self.dir.join("tsig.key").display(),
        )
    }

    /// The end of both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["named.log", "unbound.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let start = text.len().saturating_sub(4000);
            let start = (start..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(text.len());
            s.push_str(&format!("--- {name} ---\n{}\n", &text[start..]));
        }
        s
    }

    /// Polls `probe` every 100 ms until it returns `Some`; panics with the
    /// servers' logs after [`DEADLINE`].
    #[track_caller]
    pub fn wait<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        for child in self.unbound.iter_mut().chain([&mut self.named]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `dig @SERVER ARGS`, stdout.
fn dig(server: &str, args: &[&str]) -> String {
    let out = Command::new(prog("dig"))
        .arg(format!("@{server}"))
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The header flags of a dig answer (`qr`, `rd`, `ra`, `ad`, ...).
pub fn flags(dig_output: &str) -> Vec<String> {
    dig_output
        .lines()
        .find_map(|l| l.strip_prefix(";; flags:"))
        .and_then(|rest| rest.split(';').next())
        .map(|f| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The data of the answer section's records of `rtype` in a dig answer.
pub fn answer(dig_output: &str, rtype: &str) -> Vec<String> {
    let mut in_answer = false;
    let mut out = Vec::new();
    for line in dig_output.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            in_answer = true;
            continue;
        }
        if in_answer && line.trim().is_empty() {
            break;
        }
        if in_answer && !line.starts_with(';') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&rtype) {
                out.push(fields[4..].join(" "));
            }
        }
    }
    out
}

/// A TLSA record's data in one canonical form (lower-case, no spaces in the
/// hex, which dig splits).
pub fn normalize(record: &str) -> String {
    let fields: Vec<&str> = record.split_whitespace().collect();
    if fields.len() < 4 {
        return record.to_lowercase();
    }
    format!(
        "{} {} {} {}",
        fields[0],
        fields[1],
        fields[2],
        fields[3..].concat().to_lowercase()
    )
}

/// The `3 1 1` TLSA data for a certificate (DER): SHA-256 of its
/// SubjectPublicKeyInfo.
pub fn tlsa_3_1_1(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).expect("a certificate");
    format!("3 1 1 {}", sha256_hex(cert.tbs_certificate.subject_pki.raw))
}

/// The `2 1 1` TLSA data for a CA certificate (DER) in a served chain:
/// SHA-256 of its SubjectPublicKeyInfo.
pub fn tlsa_2_1_1(ca_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der).expect("a certificate");
    format!("2 1 1 {}", sha256_hex(cert.tbs_certificate.subject_pki.raw))
}

/// The DANE client tests' bed, inside a namespace: the signed zone, and a
/// Postfix receiver on 127.0.0.1:25 serving a fresh leaf for
/// mail.example.test (`leaf`), with a leaf of another key from the same
/// CA (`other`) for the records that must not match.
pub struct ReceiverBed {
    // Dropped in this order: Postfix, then the DNS servers, then the files.
    pub postfix: crate::servers::Postfix,
    pub zone: SignedZone,
    pub dir: tempfile::TempDir,
    pub leaf: crate::Leaf,
    pub other: crate::Leaf,
}

impl ReceiverBed {
    /// Starts the zone and Postfix; `ca` names the test CA.
    pub fn start(ca: &str) -> ReceiverBed {
        assert_in_namespace();
        let dir = tempfile::tempdir().unwrap();
        let zone = SignedZone::start(&dir.path().join("dns"), "");
        let ca = crate::Ca::new(ca);
        let leaf = ca.issue(&crate::LeafSpec::new(&[crate::servers::MAIL]));
        let other = ca.issue(&crate::LeafSpec::new(&[crate::servers::MAIL]));
        let files = dir.path().join("tls");
        std::fs::create_dir_all(&files).unwrap();
        let chain = files.join("chain.pem");
        write(&chain, crate::servers::combined_pem(&leaf));
        crate::set_mode(&chain, 0o600);
        let postfix =
            crate::servers::Postfix::start_sink_on(&dir.path().join("postfix"), &[&chain], 25);
        ReceiverBed {
            postfix,
            zone,
            dir,
            leaf,
            other,
        }
    }
}

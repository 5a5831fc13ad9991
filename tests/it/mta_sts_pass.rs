//! The MTA-STS pass (issue 15) against real programs: BIND (on a port of
//! the pool, written over RFC 2136 with TSIG) holds the MX set and the
//! `_mta-sts` TXT record, and `openssl s_server -WWW` serves the webroot
//! the pass writes, over HTTPS with a test-CA certificate for
//! `mta-sts.example.test` (generated at test time; `responders` points at
//! the server, `ca_bundle` trusts the CA). `mxkeys sync` runs as a
//! process; the MX-order and `disable` tests call the pass in this
//! process with a later `now`, to move the clock over TTLs and `max_age`
//! without waiting for them.
//!
//! `[tls_rpt]` rides along: its `_smtp._tls` record is published with the
//! policy and goes with it after `disable`.
//!
//! Needs BIND (bind9, bind9-dnsutils) and openssl: without them a test is
//! skipped loudly, or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bind::{self, Bind};
use common::servers::{Need, OPENSSL, prog, require_programs};
use common::*;
use mxkeys::config::{Config, Host};
use mxkeys::mta_sts::order::{Step, WaitReason};
use mxkeys::mta_sts::pass::{self, MtaStsPass};
use mxkeys::mta_sts::policy::{Mode, StsRecord, id_of};
use mxkeys::names::DnsName;

const NSUPDATE: &[Need] = &[("nsupdate", "bind9-dnsutils"), ("named", "bind9")];
const DOMAIN: &str = "example.test";
const STS: &str = "_mta-sts.example.test";
const RPT: &str = "_smtp._tls.example.test";
const MX1: &str = "mx1.example.test";
const MX2: &str = "mx2.example.test";
/// The TTL of every record in the zone (the MX TTL the pass waits out).
const TTL: i64 = 300;
const DAY: i64 = 86_400;

const ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
@ IN MX 10 mx1.example.test.
ns IN A 127.0.0.1
mx1 IN A 127.0.0.1
mx2 IN A 127.0.0.1
mta-sts IN A 127.0.0.1
";

/// BIND, the web server over the webroot, and a configuration naming both.
struct Lab {
    env: Env,
    bind: Bind,
    www: PathBuf,
    https: u16,
    server: Option<Child>,
}

impl Lab {
    fn start(test: &str) -> Option<Lab> {
        if !require_programs(test, &[NSUPDATE, OPENSSL]) {
            return None;
        }
        let bind = Bind::start_with_zone(ZONE)?;
        let env = Env::new();
        let ca = Ca::new("mta-sts-pass");
        let leaf = ca.issue(&LeafSpec::new(&["mta-sts.example.test"]));
        write(
            &env.path("root.pem"),
            pem_block("CERTIFICATE", &ca.root_der),
        );
        write(&env.path("cert.pem"), leaf.cert_pem());
        write(&env.path("chain.pem"), leaf.chain_pem());
        write(&env.path("key.pem"), leaf.key_pem());
        set_mode(&env.path("key.pem"), 0o600);
        let www = env.path("www");
        std::fs::create_dir_all(www.join("mta-sts.example.test")).unwrap();
        let mut lab = Lab {
            env,
            bind,
            www,
            https: free_port(),
            server: None,
        };
        lab.serve();
        Some(lab)
    }

    /// Starts `openssl s_server -WWW` in the domain's document root.
    fn serve(&mut self) {
        let log = std::fs::File::create(self.env.path("s_server.log")).unwrap();
        let child = Command::new(prog("openssl"))
            .args(["s_server", "-WWW", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{}", self.https))
            .arg("-cert")
            .arg(self.env.path("cert.pem"))
            .arg("-cert_chain")
            .arg(self.env.path("chain.pem"))
            .arg("-key")
            .arg(self.env.path("key.pem"))
            .current_dir(self.www.join("mta-sts.example.test"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.https)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s_server did not listen: {}",
                std::fs::read_to_string(self.env.path("s_server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_serving(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes the configuration with these `mx` lines (none: from DNS).
    fn write_config(&self, mx: &[&str]) {
        let addr = self.bind.addr();
        let text = format!(
            "{header}\n[dns.bind]\ntype = \"rfc2136\"\nserver = \"{addr}\"\n\
             tsig_name = \"{key}\"\ntsig_secret_file = {secret}\nzone = \"{DOMAIN}\"\n\
             nameservers = [\"{addr}\"]\npropagation_interval = \"200ms\"\n\
             propagation_timeout = \"10s\"\n\n\
             [mta_sts]\ndomains = [\"{DOMAIN}\"]\nmode = \"testing\"\nmx = {mx}\n\
             max_age = \"1d\"\ndns = \"bind\"\nwebroot = {www}\n\
             responders = [\"127.0.0.1:{https}\"]\nca_bundle = {root}\n\n\
             [tls_rpt]\nrua = [\"mailto:tlsrpt@example.test\"]\n",
            header = self.env.header(),
            key = bind::KEY_NAME,
            secret = qp(&self.bind.dir().join("tsig.key")),
            mx = q_list(mx),
            www = qp(&self.www),
            https = self.https,
            root = qp(&self.env.path("root.pem")),
        );
        self.env.write_config_raw(&text);
    }

    fn config(&self) -> Config {
        let text = std::fs::read_to_string(&self.env.config).unwrap();
        Config::parse(&self.env.config, &text, &Host::current()).unwrap()
    }

    async fn pass(&self, now: i64) -> MtaStsPass {
        pass::pass(&self.config(), now).await
    }

    /// `nsupdate` against BIND with the test's key.
    fn update(&self, commands: &str) {
        let script = format!(
            "server 127.0.0.1 {}\nzone {DOMAIN}\n{commands}\nsend\n",
            self.bind.port
        );
        let mut child = Command::new(prog("nsupdate"))
            .arg("-k")
            .arg(self.bind.dir().join("tsig.key"))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nsupdate: {commands}");
    }

    /// The `_mta-sts` TXT values BIND serves.
    fn txt(&self) -> Vec<String> {
        self.bind.txt_values(STS)
    }

    fn body(&self) -> Option<String> {
        std::fs::read_to_string(
            self.www
                .join("mta-sts.example.test/.well-known/mta-sts.txt"),
        )
        .ok()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

fn id(mode: Mode, mx: &[&str], max_age: u64) -> String {
    id_of(mode, &mx.iter().map(|m| (*m).to_owned()).collect(), max_age)
}

fn record(id: &str) -> Vec<String> {
    vec![StsRecord::new(id).unwrap().render()]
}

fn step(out: &MtaStsPass) -> Step {
    out.domains[0]
        .plan
        .as_ref()
        .unwrap_or_else(|| panic!("no plan: {out:#?}"))
        .step
        .clone()
}

#[test]
fn sync_serves_a_changed_mx_set_first_and_changes_the_id_only_once_the_body_is_fetched_back() {
    let Some(mut lab) = Lab::start(
        "sync_serves_a_changed_mx_set_first_and_changes_the_id_only_once_the_body_is_fetched_back",
    ) else {
        return;
    };
    lab.write_config(&[]);
    let run = lab.env.sync();
    run.ok();
    let one = id(Mode::Testing, &[MX1], DAY as u64);
    assert_eq!(lab.txt(), record(&one), "{}", run.describe());
    assert_eq!(
        lab.body().as_deref(),
        Some("version: STSv1\r\nmode: testing\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n")
    );

    // A new MX host in DNS: a new policy, whose body cannot be fetched
    // back while the web server is down: the old id stays.
    lab.update(&format!("update add {DOMAIN} {TTL} MX 20 {MX2}."));
    lab.stop_serving();
    let run = lab.env.sync();
    let both = id(Mode::Testing, &[MX1, MX2], DAY as u64);
    assert_ne!(both, one);
    assert!(
        lab.body()
            .is_some_and(|b| b.contains("mx: mx2.example.test\r\n")),
        "{}",
        run.describe()
    );
    assert_eq!(lab.txt(), record(&one), "{}", run.describe());
    assert!(
        run.stderr.contains("not served by 127.0.0.1:"),
        "{}",
        run.describe()
    );

    // Served again: the next sync fetches it back and publishes its id.
    lab.serve();
    let run = lab.env.sync();
    run.ok();
    assert_eq!(lab.txt(), record(&both), "{}", run.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_host_is_listed_before_its_record_is_added_and_after_its_record_goes_for_one_mx_ttl()
{
    let Some(lab) = Lab::start(
        "an_mx_host_is_listed_before_its_record_is_added_and_after_its_record_goes_for_one_mx_ttl",
    ) else {
        return;
    };
    let both = id(Mode::Testing, &[MX1, MX2], DAY as u64);
    let one = id(Mode::Testing, &[MX1], DAY as u64);
    let t0 = mxkeys::now();

    // Adding mx2: the policy lists it first, the MX record may follow one
    // TXT TTL after its id is seen everywhere.
    lab.write_config(&[MX1, MX2]);
    let out = lab.pass(t0).await;
    assert_eq!(lab.txt(), record(&both), "{out:#?}");
    let Step::AddMxAfter { host, at } = step(&out) else {
        panic!("{out:#?}");
    };
    assert_eq!(host, MX2);
    assert!(at >= t0 + TTL, "{at} {t0}");
    assert_eq!(out.next_wake, Some(at));
    lab.update(&format!("update add {DOMAIN} {TTL} MX 20 {MX2}."));
    let out = lab.pass(at).await;
    assert_eq!(step(&out), Step::InStep { id: both.clone() });

    // Removing mx2: its MX record goes first, the policy keeps it for one
    // MX TTL after the record is seen gone.
    lab.write_config(&[MX1]);
    let t1 = at + 10;
    let out = lab.pass(t1).await;
    assert_eq!(
        step(&out),
        Step::RemoveMx {
            host: MX2.to_owned()
        }
    );
    assert_eq!(lab.txt(), record(&both));
    lab.update(&format!("update delete {DOMAIN} MX 20 {MX2}."));
    let t2 = t1 + 10;
    let out = lab.pass(t2).await;
    let until = t2 + TTL;
    assert_eq!(
        step(&out),
        Step::Wait {
            until: Some(until),
            reason: WaitReason::MxTtl {
                host: MX2.to_owned(),
                until
            }
        }
    );
    let out = lab.pass(until - 1).await;
    assert!(matches!(step(&out), Step::Wait { .. }), "{out:#?}");
    assert_eq!(lab.txt(), record(&both));
    assert!(lab.body().is_some_and(|b| b.contains(MX2)));

    let out = lab.pass(until).await;
    assert_eq!(step(&out), Step::InStep { id: one.clone() }, "{out:#?}");
    assert_eq!(lab.txt(), record(&one));
    assert!(lab.body().is_some_and(|b| !b.contains(MX2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_publishes_mode_none_and_deletes_both_txt_records_and_the_file_only_after_the_old_max_age()
 {
    let Some(lab) = Lab::start(
        "disable_publishes_mode_none_and_deletes_both_txt_records_and_the_file_only_after_the_old_max_age",
    ) else {
        return;
    };
    lab.write_config(&[MX1]);
    let t0 = mxkeys::now();
    let out = lab.pass(t0).await;
    let testing = id(Mode::Testing, &[MX1], DAY as u64);
    assert_eq!(step(&out), Step::InStep { id: testing }, "{out:#?}");
    let rua = "v=TLSRPTv1; rua=mailto:tlsrpt@example.test";
    assert_eq!(lab.bind.txt_values(RPT), [rua]);

    pass::disable(&lab.config(), &DnsName::parse(DOMAIN).unwrap()).unwrap();
    let t1 = t0 + 60;
    let out = lab.pass(t1).await;
    let none = id(Mode::None, &[MX1], DAY as u64);
    assert_eq!(lab.txt(), record(&none), "{out:#?}");
    assert!(lab.body().is_some_and(|b| b.contains("mode: none\r\n")));
    let Step::Wait {
        until: Some(until),
        reason: WaitReason::OldMaxAge { .. },
    } = step(&out)
    else {
        panic!("{out:#?}");
    };
    assert!(until >= t1 + DAY, "{until} {t1}");

    let out = lab.pass(until - 1).await;
    assert!(matches!(step(&out), Step::Wait { .. }), "{out:#?}");
    assert_eq!(lab.txt(), record(&none));
    assert!(lab.body().is_some());
    assert_eq!(lab.bind.txt_values(RPT), [rua], "reports still wanted");

    let out = lab.pass(until).await;
    assert_eq!(lab.txt(), Vec::<String>::new(), "{out:#?}");
    assert_eq!(lab.body(), None);
    assert_eq!(lab.bind.txt_values(RPT), Vec::<String>::new());
    assert_eq!(out.problems, Vec::<String>::new());

    // Deleted stays deleted while the domain is disabled...
    let out = lab.pass(until + 60).await;
    assert_eq!(lab.txt(), Vec::<String>::new(), "{out:#?}");
    // ...until `enable`: the configured policy is served and published again.
    let domain = DnsName::parse(DOMAIN).unwrap();
    assert!(pass::enable(&lab.config(), &domain).unwrap());
    assert!(!pass::enable(&lab.config(), &domain).unwrap());
    let out = lab.pass(until + 120).await;
    let testing = id(Mode::Testing, &[MX1], DAY as u64);
    assert_eq!(lab.txt(), record(&testing), "{out:#?}");
    assert!(lab.body().is_some_and(|b| b.contains("mode: testing\r\n")));
    assert_eq!(lab.bind.txt_values(RPT), [rua]);
}

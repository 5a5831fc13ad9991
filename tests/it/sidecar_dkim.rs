//! Sidecar mode's DKIM: each seed container's DKIM variables (mlan/docker-
//! postfix, mikenye/postfix, boky/postfix, docker-mailserver) and
//! MXKEYS_DNS_* build the `[dkim]` (with `[[dkim.adopt]]`) and `[dns.env]`
//! TOML that the configuration loader parses. For every seed, what
//! `mxkeys config` prints (run as a process with only that environment) is
//! byte for byte the hand-written equivalent file, and the configuration
//! loaded from the environment equals the one loaded from that file.
//! Conflicting variables are one error naming both; a key given in the
//! environment is never printed; the `[dns.env]` the variables make works
//! against a real BIND (`mxkeys dns test env`). mlan's users read the
//! record to publish from `DOMAIN.SELECTOR._domainkey.txt`: `[dkim]
//! record_dir` writes it on every pass (checked against the real BIND).

use mxkeys_testsupport as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::dkim_adopt::{GENKEY, genkey};
use common::bind::{Bind, KEY_NAME};
use common::dkim_tools::{mx_ok, record_of_key_file, setup, write_dkim_config};
use common::servers::require_programs;
use common::{Run, bin, run_with_timeout, write};
use mxkeys::config::{Config, Host, env};

/// The first line `mxkeys config` prints before the TOML.
const HEADER: &str = "# configuration from the environment\n";

/// A sidecar's environment: nothing but PATH and the variables set, a
/// configuration path that does not exist, state in a temp dir.
struct Sidecar {
    tmp: tempfile::TempDir,
    vars: BTreeMap<String, String>,
}

impl Sidecar {
    fn new() -> Sidecar {
        let tmp = tempfile::Builder::new()
            .prefix("mxkeys-sidecar-dkim-")
            .tempdir()
            .unwrap();
        let mut s = Sidecar {
            tmp,
            vars: BTreeMap::new(),
        };
        let state = s.path("state");
        s.set("MXKEYS_STATE_DIR", state.to_str().unwrap());
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.insert(k.to_owned(), v.to_owned());
        self
    }

    fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(bin());
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .envs(&self.vars)
            .arg("--config")
            .arg(self.path("absent/mxkeys.toml"))
            .args(args)
            .current_dir(self.tmp.path());
        let shown: Vec<String> = self.vars.keys().map(|k| format!("{k}=...")).collect();
        Run::from_output(
            format!("env -i {} mxkeys {}", shown.join(" "), args.join(" ")),
            run_with_timeout(c),
        )
    }

    /// The TOML `mxkeys config` prints, after its comment line.
    #[track_caller]
    fn printed(&self) -> String {
        let r = self.run(&["config"]);
        r.ok();
        r.stdout
            .strip_prefix(HEADER)
            .unwrap_or_else(|| panic!("no {HEADER:?} first\n{}", r.describe()))
            .to_owned()
    }

    /// The printed TOML is `hand_written` byte for byte, and the
    /// configuration the environment means (built by the same function
    /// the binary calls) equals the one read from the hand-written file.
    #[track_caller]
    fn assert_means(&self, hand_written: &str) {
        let printed = self.printed();
        assert_eq!(
            printed, hand_written,
            "the printed configuration is not the hand-written one"
        );
        let file = self.path("hand-written.toml");
        write(&file, hand_written);
        let host = Host {
            cwd: self.tmp.path().to_owned(),
            hostname: None,
        };
        let text = env::toml_from(&|k| self.vars.get(k).cloned(), &|p| p.exists())
            .unwrap()
            .expect("the environment asks for mxkeys");
        let from_env = Config::parse(Path::new("(environment)"), &text, &host)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let from_file = Config::parse(&file, hand_written, &host).unwrap();
        assert_eq!(from_env.state_dir, from_file.state_dir);
        assert_eq!(from_env.dkim, from_file.dkim);
        assert!(from_env.dkim.is_some());
        assert_eq!(from_env.dns, from_file.dns);
        assert!(from_env.sources.is_empty() && from_env.targets.is_empty());
        // The binary loads it too (the same checks `run` starts with).
        self.run(&["check"]).ok();
    }

    fn state(&self) -> String {
        self.vars["MXKEYS_STATE_DIR"].clone()
    }
}

/// mlan/docker-postfix: MAIL_DOMAIN's first domain is signed by amavis with
/// DKIM_PRIVATEKEY (BEGIN/END lines left out, as its README allows); the
/// key is adopted by the variable's name and never printed. DKIM_KEYBITS
/// sizes the keys mxkeys makes; DKIM_SELECTOR defaults to `default`.
#[test]
fn mlan_private_key_variable_is_adopted_by_name_as_the_equivalent_toml_says() {
    if !require_programs("mlan sidecar", &[GENKEY]) {
        return;
    }
    let mut s = Sidecar::new();
    let key = genkey(&s.path("made"), "example.com", "default");
    let pem = std::fs::read_to_string(&key).unwrap();
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    s.set("MAIL_DOMAIN", "example.com example.org")
        .set("DKIM_KEYBITS", "3072")
        .set("DKIM_PRIVATEKEY", &body);
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
algorithms = ["rsa-3072"]
dns = "manual"
domains = ["example.com", "example.org"]
record_dir = "/var/db/dkim"
selector = "default"
signer = "amavis"
signer_dir = "/var/db/dkim"

[[dkim.adopt]]
check = "none"
domain = "example.com"
from = "env"
selector = "default"
var = "DKIM_PRIVATEKEY"
"#
    ));
    let printed = s.printed();
    let inner = body.get(200..260).unwrap();
    assert!(!printed.contains(inner), "the key is printed:\n{printed}");
}

/// mikenye/postfix: OPENDKIM_KEYFILE (with OPENDKIM_DOMAIN and
/// OPENDKIM_SELECTOR) is adopted as that key; OPENDKIM_KEYTABLE and
/// OPENDKIM_SIGNINGTABLE instead: the table is adopted and mxkeys writes
/// its tables beside it.
#[test]
fn mikenye_key_file_or_key_table_is_adopted_as_the_equivalent_toml_says() {
    if !require_programs("mikenye sidecar", &[GENKEY]) {
        return;
    }
    let mut s = Sidecar::new();
    let key = genkey(&s.path("keys"), "example.com", "mail");
    s.set("OPENDKIM_DOMAIN", "example.com")
        .set("OPENDKIM_SELECTOR", "mail")
        .set("OPENDKIM_KEYFILE", key.to_str().unwrap());
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
dns = "manual"
domains = ["example.com"]
selector = "mail"
signer = "opendkim"
signer_dir = "/etc/opendkim"

[[dkim.adopt]]
check = "none"
domain = "example.com"
from = "key"
path = "{key}"
selector = "mail"
"#,
        key = key.display()
    ));

    let mut s = Sidecar::new();
    let tables = s.path("opendkim");
    let key = genkey(&tables.join("keys"), "example.org", "s1");
    write(
        &tables.join("KeyTable"),
        format!(
            "s1._domainkey.example.org example.org:s1:{}\n",
            key.display()
        ),
    );
    write(
        &tables.join("SigningTable"),
        "*@example.org s1._domainkey.example.org\n",
    );
    s.set("OPENDKIM_DOMAIN", "example.org")
        .set(
            "OPENDKIM_KEYTABLE",
            tables.join("KeyTable").to_str().unwrap(),
        )
        .set(
            "OPENDKIM_SIGNINGTABLE",
            tables.join("SigningTable").to_str().unwrap(),
        );
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
dns = "manual"
domains = ["example.org"]
signer = "opendkim"
signer_dir = "{dir}"

[[dkim.adopt]]
check = "none"
from = "opendkim"
path = "{dir}/KeyTable"
"#,
        dir = tables.display()
    ));
}

/// boky/postfix: DKIM_AUTOGENERATE with no key in /etc/opendkim/keys: no
/// entry to adopt, mxkeys makes each domain's key with DKIM_SELECTOR's
/// selector; ALLOWED_SENDER_DOMAINS may be separated by commas and spaces.
#[test]
fn boky_autogenerate_makes_keys_with_its_selector_as_the_equivalent_toml_says() {
    let mut s = Sidecar::new();
    s.set("ALLOWED_SENDER_DOMAINS", "example.com, example.net")
        .set("DKIM_AUTOGENERATE", "true")
        .set("DKIM_SELECTOR", "dkim2026");
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
dns = "manual"
domains = ["example.com", "example.net"]
selector = "dkim2026"
signer = "opendkim"
signer_dir = "/etc/opendkim"
"#
    ));
}

/// docker-mailserver with Rspamd: its mounted config directory (here
/// MXKEYS_DMS_CONFIG) is adopted, mxkeys writes Rspamd's
/// dkim_signing.conf into its override.d; MXKEYS_DKIM_DOMAINS names the
/// domains and MXKEYS_DKIM_RELOAD_PIDFILE signals Rspamd (HUP).
#[test]
fn docker_mailserver_rspamd_tree_is_adopted_as_the_equivalent_toml_says() {
    let mut s = Sidecar::new();
    let config = s.path("dms/config");
    std::fs::create_dir_all(config.join("rspamd/dkim")).unwrap();
    s.set("ENABLE_RSPAMD", "1")
        .set("ENABLE_OPENDKIM", "0")
        .set("MXKEYS_DMS_CONFIG", config.to_str().unwrap())
        .set("MXKEYS_DKIM_DOMAINS", "example.com")
        .set("MXKEYS_DKIM_RELOAD_PIDFILE", "/run/rspamd/rspamd.pid");
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
dns = "manual"
domains = ["example.com"]
signer = "rspamd"
signer_dir = "{config}/rspamd/override.d"

[[dkim.adopt]]
check = "none"
from = "dms"
path = "{config}"

[dkim.reload_signal]
pidfile = "/run/rspamd/rspamd.pid"
signal = "HUP"
"#,
        config = config.display()
    ));
}

/// Variables that cannot both hold are one error line naming both (exit
/// 2), and never the key.
#[test]
fn conflicting_variables_are_an_error_naming_both() {
    let key = "MIIEowIBAAKCAQEAsecretkeymaterial";
    for (vars, a, b) in [
        (
            &[
                ("MAIL_DOMAIN", "example.com"),
                ("DKIM_PRIVATEKEY", key),
                ("DKIM_AUTOGENERATE", "1"),
            ][..],
            "DKIM_PRIVATEKEY",
            "DKIM_AUTOGENERATE",
        ),
        (
            &[
                ("OPENDKIM_DOMAIN", "example.com"),
                ("OPENDKIM_KEYFILE", "/k/mail.private"),
                ("OPENDKIM_KEYTABLE", "/etc/opendkim/KeyTable"),
            ][..],
            "OPENDKIM_KEYFILE",
            "OPENDKIM_KEYTABLE",
        ),
        (
            &[
                ("ENABLE_OPENDKIM", "1"),
                ("ENABLE_RSPAMD", "1"),
                ("MXKEYS_DKIM_DOMAINS", "example.com"),
            ][..],
            "ENABLE_OPENDKIM",
            "ENABLE_RSPAMD",
        ),
        (
            &[
                ("DKIM_PRIVATEKEY", key),
                ("MAIL_DOMAIN", "example.com"),
                ("OPENDKIM_KEYFILE", "/k/mail.private"),
            ][..],
            "DKIM_PRIVATEKEY",
            "OPENDKIM_KEYFILE",
        ),
        (
            &[
                ("ALLOWED_SENDER_DOMAINS", "example.com"),
                ("DKIM_AUTOGENERATE", "1"),
                ("MXKEYS_DNS_TYPE", "rfc2136"),
                ("MXKEYS_DNS_SERVER", "127.0.0.1"),
                ("MXKEYS_DNS_TSIG_NAME", "k"),
                ("MXKEYS_DNS_TSIG_SECRET_FILE", "/s"),
                ("MXKEYS_DNS_TSIG_SECRET_ENV", "S"),
            ][..],
            "MXKEYS_DNS_TSIG_SECRET_FILE",
            "MXKEYS_DNS_TSIG_SECRET_ENV",
        ),
        (
            &[
                ("ALLOWED_SENDER_DOMAINS", "example.com"),
                ("DKIM_AUTOGENERATE", "1"),
                ("MXKEYS_DNS_TYPE", "cloudflare"),
                ("MXKEYS_DNS_API_TOKEN_FILE", "/t"),
                ("MXKEYS_DNS_API_TOKEN_ENV", "T"),
            ][..],
            "MXKEYS_DNS_API_TOKEN_FILE",
            "MXKEYS_DNS_API_TOKEN_ENV",
        ),
    ] {
        let mut s = Sidecar::new();
        for (k, v) in vars {
            s.set(k, v);
        }
        for args in [&["config"][..], &["check"][..]] {
            let r = s.run(args);
            r.assert_code(2);
            r.assert_err_line(&[a, b]);
            assert!(
                !r.stderr.contains(key) && !r.stdout.contains(key),
                "the key is shown\n{}",
                r.describe()
            );
        }
    }
}

/// MXKEYS_DNS_* make `[dns.env]` (the TSIG secret named by its variable,
/// never printed) and `[dkim] dns = "env"`, adopted keys then checked
/// against DNS (no `check = "none"`); `mxkeys dns test env` writes, sees
/// and removes a record through it on a real BIND.
#[test]
fn dns_variables_make_a_provider_that_works_against_bind() {
    if !require_programs("sidecar dns", &[GENKEY]) {
        return;
    }
    let Some(bind) = Bind::start() else { return };
    let mut s = Sidecar::new();
    let key = genkey(&s.path("keys"), "example.test", "mail");
    let addr = bind.addr().to_string();
    s.set("OPENDKIM_DOMAIN", "example.test")
        .set("OPENDKIM_SELECTOR", "mail")
        .set("OPENDKIM_KEYFILE", key.to_str().unwrap())
        .set("MXKEYS_DNS_TYPE", "rfc2136")
        .set("MXKEYS_DNS_SERVER", &addr)
        .set("MXKEYS_DNS_ZONE", "example.test")
        .set("MXKEYS_DNS_TSIG_NAME", KEY_NAME)
        .set("MXKEYS_DNS_TSIG_SECRET_ENV", "SIDECAR_TSIG")
        .set("SIDECAR_TSIG", &bind.secret_b64)
        .set("MXKEYS_DNS_NAMESERVERS", &addr)
        .set("MXKEYS_DNS_PROPAGATION_INTERVAL", "100ms")
        .set("MXKEYS_DNS_PROPAGATION_TIMEOUT", "10s");
    let state = s.state();
    s.assert_means(&format!(
        r#"state_dir = "{state}"

[dkim]
dns = "env"
domains = ["example.test"]
selector = "mail"
signer = "opendkim"
signer_dir = "/etc/opendkim"

[[dkim.adopt]]
domain = "example.test"
from = "key"
path = "{key}"
selector = "mail"

[dns.env]
nameservers = ["{addr}"]
propagation_interval = "100ms"
propagation_timeout = "10s"
server = "{addr}"
tsig_name = "{KEY_NAME}"
tsig_secret_env = "SIDECAR_TSIG"
type = "rfc2136"
zone = "example.test"
"#,
        key = key.display()
    ));
    let r = s.run(&["dns", "test", "env"]);
    r.ok();
    assert!(r.stdout.contains("ok: [dns.env] works"), "{}", r.describe());
    assert!(bind.txt_values("_mxkeys-probe.example.test").is_empty());
    let printed = s.printed();
    for text in [&printed, &r.stdout, &r.stderr] {
        assert!(!text.contains(&bind.secret_b64), "the secret is shown");
    }
}

/// `[dkim] record_dir` (which mlan's variables set to /var/db/dkim): after
/// a pass through a real BIND, each key's file holds the record the server
/// answers and openssl derives from the key file; a revoked key's file
/// says `p=` empty.
#[test]
fn record_dir_holds_the_record_bind_serves_for_each_key() {
    let Some((bind, work)) = setup("record_dir_holds_the_record_bind_serves_for_each_key", &[])
    else {
        return;
    };
    let config = write_dkim_config(
        &bind,
        &work,
        "domains = [\"example.test\"]\nkey_dir = \"keys\"\ndns = \"bind\"\nsigner = \"opendkim\"\nsigner_dir = \"signer\"\nlead = \"0s\"\nselector = \"default\"\nrecord_dir = \"records\"\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let file = work.join("records/example.test.default._domainkey.txt");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let line = text
        .lines()
        .find(|l| l.starts_with("default._domainkey.example.test. "))
        .unwrap_or_else(|| panic!("no record line in:\n{text}"));
    let value: String = line.split('"').skip(1).step_by(2).collect();
    assert_eq!(
        bind.txt_values("default._domainkey.example.test"),
        vec![value.clone()],
        "the file is not what BIND serves"
    );
    assert_eq!(
        value,
        record_of_key_file(&work.join("keys/example.test/default.pem"))
    );
    assert_eq!(mode_of(&file) & 0o777, 0o644);

    // Revoked: the file follows at the next pass.
    mx_ok(
        &config,
        &[
            "dkim",
            "revoke",
            "--domain",
            "example.test",
            "--selector",
            "default",
            "--force",
        ],
    );
    mx_ok(&config, &["dkim", "rotate"]);
    assert_eq!(
        bind.txt_values("default._domainkey.example.test"),
        vec!["v=DKIM1; k=rsa; p="]
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("TXT \"v=DKIM1; k=rsa; p=\"\n"),
        "not revoked:\n{text}"
    );
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode()
}

/// An mlan/docker-postfix sidecar end to end, from its environment alone
/// and without a DNS provider: `mxkeys sync` adopts `DKIM_PRIVATEKEY` (the
/// base64 body alone) as the active key without a lookup, writes amavis'
/// `dkim_keys.conf` naming mxkeys' copy of it with mlan's selector, writes
/// the record to publish where mlan's users read it (its DKIM volume,
/// mounted here at MXKEYS_DKIM_SIGNER_DIR) and prints it, never the key.
#[test]
fn an_mlan_sidecar_without_dns_adopts_its_key_and_prints_the_record_to_publish() {
    if !require_programs("mlan sidecar sync", &[GENKEY]) {
        return;
    }
    let mut s = Sidecar::new();
    let key = genkey(&s.path("made"), "example.com", "default");
    let record = record_of_key_file(&key);
    let pem = std::fs::read_to_string(&key).unwrap();
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    let volume = s.path("var-db-dkim");
    std::fs::create_dir_all(&volume).unwrap();
    let keys = s.path("keys");
    s.set("MAIL_DOMAIN", "example.com")
        .set("DKIM_PRIVATEKEY", &body)
        .set("MXKEYS_DKIM_SIGNER_DIR", volume.to_str().unwrap())
        .set("MXKEYS_DKIM_KEY_DIR", keys.to_str().unwrap());
    let sync = s.run(&["sync"]);
    sync.ok();
    let all = format!("{}{}", sync.stdout, sync.stderr);
    assert!(
        !all.contains(&body[100..160]),
        "the key was printed:\n{all}"
    );
    // The record to publish, as a zone-file line, printed and in the file.
    let copy = keys.join("example.com/default.pem");
    assert_eq!(
        record_of_key_file(&copy),
        record,
        "mxkeys' copy is another key"
    );
    let file = volume.join("example.com.default._domainkey.txt");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}\n{all}", file.display()));
    let line = text
        .lines()
        .find(|l| l.starts_with("default._domainkey.example.com. "))
        .unwrap_or_else(|| panic!("no record line in:\n{text}"));
    let value: String = line.split('"').skip(1).step_by(2).collect();
    assert_eq!(value, record);
    assert!(
        all.contains(&record[..60]),
        "the record to publish is not printed:\n{all}"
    );
    // amavis signs with it, under mlan's selector.
    let conf = std::fs::read_to_string(volume.join("dkim_keys.conf")).unwrap();
    assert!(
        conf.contains(&format!(
            "dkim_key('example.com', 'default', '{}');",
            copy.display()
        )),
        "{conf}"
    );
    // The next sync finds it held: nothing changes.
    let before = std::fs::read_to_string(volume.join("dkim_keys.conf")).unwrap();
    s.run(&["sync"]).ok();
    assert_eq!(
        std::fs::read_to_string(volume.join("dkim_keys.conf")).unwrap(),
        before
    );
}

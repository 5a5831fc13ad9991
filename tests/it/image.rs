//! The shipped Dockerfile, built and run for real in its compose shape: a
//! mail container running Postfix (a local Debian image) and the mxkeys
//! sidecar, configured by the environment alone, sharing the TLS volume,
//! Postfix's pid directory and the mail container's PID namespace, both on
//! the host's network. What Postfix serves is read from the host with
//! `openssl s_client -starttls smtp` on a loopback port of the pool.
//!
//! No registry is reachable here, so the Dockerfile is built with its bases
//! given as build arguments and a binary built on the host (PREBUILT): the
//! mail container's base is Debian made by mmdebstrap (cached under
//! target/), the sidecar's a near-static one holding only the binary's
//! libraries, CA roots and busybox, so the image weighs the binary and a
//! few MB (checked). Containers, volumes and the built image are removed
//! when the test ends, pass or fail.

use mxkeys_testsupport as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::podman::{Pod, available, base_image, binary_context, podman, tiny_base};
use common::servers::{
    OPENSSL, Offer, Proto, poll, require, served_leaf, smtp_banner, wait_served,
};
use common::*;

/// Postfix's log line for a reload (SIGHUP to its master).
const RELOAD_LINE: &str = "reload -- version";

/// Reloads Postfix logged so far.
fn reloads(pod: &Pod, mail: &str) -> usize {
    pod.logs(mail).matches(RELOAD_LINE).count()
}

/// The mail container's command: Postfix listening on 127.0.0.1:`port`
/// only (host networking: it binds the host's port), TLS from the shared
/// volume, logging to stdout, its master in the foreground (the
/// container's init, catatonit, is PID 1).
fn postfix_command(port: u16) -> String {
    let main = [
        "maillog_file=/dev/stdout",
        "myhostname=mail.example.com",
        "mydestination=",
        "alias_maps=",
        "alias_database=",
        "inet_interfaces=loopback-only",
        "inet_protocols=ipv4",
        "smtpd_tls_cert_file=/tls/fullchain.pem",
        "smtpd_tls_key_file=/tls/privkey.pem",
        "smtpd_tls_security_level=may",
    ]
    .map(sh_quote)
    .join(" ");
    let listener = sh_quote(format!(
        "127.0.0.1:{port}/inet=127.0.0.1:{port} inet n - n - - smtpd"
    ));
    format!(
        "postconf -e {main} && postconf -M# smtp/inet && postconf -M {listener} && exec postfix start-fg"
    )
}

#[test]
fn the_sidecar_image_makes_postfix_in_its_mail_container_serve_each_acme_json_change() {
    let test = "the_sidecar_image_makes_postfix_in_its_mail_container_serve_each_acme_json_change";
    if !require(test, &[OPENSSL]) || !available(test) {
        return;
    }
    let env = Env::new();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("podman-bases");
    let started = Instant::now();
    // The sidecar's base is near-static (the binary's libraries, CA roots,
    // busybox): no distribution. The mail container's is Debian with Postfix.
    let ctx = binary_context(&env.root, Path::new(bin())).unwrap();
    let binary = ctx.join("mxkeys");
    let sidecar_base = tiny_base(&cache, &binary).unwrap();
    let mail_base = base_image(&cache, "mail", &["postfix", "openssl"]).unwrap();
    eprintln!("bases ready after {:?}", started.elapsed());

    let port = free_port();
    let id = format!("{}-{port}", std::process::id());
    let (mail, sidecar) = (format!("mxkeys-mail-{id}"), format!("mxkeys-sidecar-{id}"));
    let (tls, pid) = (format!("mxkeys-tls-{id}"), format!("mxkeys-pid-{id}"));
    let image = format!("localhost/mxkeys-sidecar:test-{id}");
    let mut pod = Pod::new();

    // The shipped Dockerfile, on the local bases, with the host's binary.
    let built = Instant::now();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    pod.build(
        &image,
        &[
            "--build-arg",
            &format!("BUILD_IMAGE={sidecar_base}"),
            "--build-arg",
            &format!("RUNTIME_IMAGE={sidecar_base}"),
            "--build-arg",
            "PREBUILT=mxkeys",
            "-f",
            dockerfile.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    )
    .unwrap();
    let size = podman(&["image", "inspect", "--format", "{{.Size}}", &image]).unwrap();
    let size: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap();
    let binary_size = std::fs::metadata(&binary).unwrap().len();
    eprintln!(
        "built {image} in {:?}: {size} bytes, the binary {binary_size} (base {sidecar_base})",
        built.elapsed(),
    );
    // As small as a near-static build allows: the binary and a few MB
    // (glibc, CA roots, busybox), not a distribution.
    assert!(
        size < binary_size + 12_000_000,
        "the image is {size} bytes for a {binary_size}-byte binary"
    );

    // Traefik's acme.json, written by the test, mounted read-only.
    let ca = Ca::new("image");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&[HOST]).days(60));
    let acme_dir = env.path("acme");
    let acme = acme_dir.join("acme.json");
    let json = |l: &Leaf| acme_v3(&[("le", Some(vec![AcmeEntry::new(l, HOST)]))]);
    write_json(&acme, &json(&a));

    pod.volume(&tls).unwrap();
    pod.volume(&pid).unwrap();
    let ran = Instant::now();
    pod.run(
        &mail,
        &[
            "--network=host",
            // catatonit as PID 1: mxkeys never signals a pid 1 (on a host
            // that is init), so Postfix's master must be another process.
            "--init",
            "-v",
            &format!("{tls}:/tls:ro"),
            "-v",
            &format!("{pid}:/var/spool/postfix/pid"),
            &mail_base,
            "sh",
            "-c",
            &postfix_command(port),
        ],
    )
    .unwrap();
    let addr = format!("127.0.0.1:{port}");
    poll(
        "Postfix's greeting",
        Duration::from_secs(60),
        || smtp_banner(&addr).ok(),
        || pod.describe(),
    );
    pod.run(
        &sidecar,
        &[
            "--network=host",
            "--pid",
            &format!("container:{mail}"),
            "-v",
            &format!("{tls}:/tls"),
            "-v",
            &format!("{pid}:/run/postfix-pid:ro"),
            "-v",
            &format!("{}:/acme:ro", acme_dir.display()),
            "-e",
            "ACME_FILE=/acme/acme.json",
            "-e",
            &format!("SSL_DOMAIN={HOST}"),
            "-e",
            "MXKEYS_RELOAD_PIDFILE=/run/postfix-pid/master.pid",
            &image,
        ],
    )
    .unwrap();

    // At start: installed, Postfix signalled, the certificate served.
    wait_served(&addr, Proto::Smtp, None, Offer::Any, &a.der, || {
        pod.describe()
    });
    eprintln!("first certificate served {:?} after start", ran.elapsed());
    let before = settle(Duration::from_millis(1500), || reloads(&pod, &mail));
    assert!(before >= 1, "no reload at start\n{}", pod.describe());

    // Traefik rewrites acme.json in place.
    let changed = Instant::now();
    let bytes = serde_json::to_vec_pretty(&json(&b)).unwrap();
    write_in_place(&acme, &bytes);
    wait_served(&addr, Proto::Smtp, None, Offer::Any, &b.der, || {
        pod.describe()
    });
    eprintln!("the change was served {:?} after it", changed.elapsed());
    let after = settle(Duration::from_millis(1500), || reloads(&pod, &mail));
    assert_eq!(
        after,
        before + 1,
        "one reload per change\n{}",
        pod.describe()
    );
    assert_eq!(
        served_leaf(&addr, Proto::Smtp, None, Offer::Any).as_deref(),
        Ok(&b.der[..])
    );
}

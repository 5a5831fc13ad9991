//! The configuration `mxkeys init` writes, from what discovery found.
//!
//! Pure: [`render`] turns a [`Discovered`] into TOML text (no files, no
//! processes, no clock) and is table-tested against the real loader. Rules:
//! every line it writes is TOML the loader accepts (or a comment); the
//! targets are the files Postfix and Dovecot read now, named for the
//! certificate they serve now, so the first `sync` installs nothing; a file
//! inside a Certbot `live/` or `archive/` tree is never a target (mxkeys
//! would write into Certbot's tree): that target is written commented out,
//! with the lines that point the server at files of mxkeys' own; everything
//! it cannot decide is a `# FILL IN: ...` comment saying what to fill.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::mail::{DovecotPair, DovecotSource, KeyTypeHint, Listener, PostfixParams, TlsMode};
use super::{Discovered, FoundDkim, FoundKind, FoundSource, KeyFileMeta, ServedCert};
use crate::config::{AdoptCheck, AdoptFrom};

/// Where a commented-out target (one whose server reads Certbot's files
/// today) points the server instead.
pub const MXKEYS_TLS_DIR: &str = "/etc/mxkeys/tls";

/// The start of every comment that asks for a decision.
pub const FILL_IN: &str = "# FILL IN: ";

/// The commented configuration for what was found.
pub fn render(d: &Discovered) -> String {
    let mut out = Out::default();
    out.line("# mxkeys configuration written by `mxkeys init` from what this host runs now.");
    out.line("# Targets are the files Postfix and Dovecot read now, named for the certificate");
    out.line("# they serve now; DKIM keys the signer uses now are adopted as active. Lines");
    out.line("# starting with \"# FILL IN:\" need a decision. `mxkeys check` prints the plan;");
    out.line("# every key is documented in config/mxkeys.toml.");
    out.blank();
    match &d.hostname {
        Some(h) => out.line(&format!("hostname = {}", q(h))),
        None => out.fill_in(
            "hostname = \"mail.example.com\": this host's name is not a usable DNS name; targets without `domains` serve it",
        ),
    }
    match &d.state_dir {
        Some(s) => out.line(&format!("state_dir = {}", qp(s))),
        None => out.comment("state_dir = \"/var/lib/mxkeys\" (the default)"),
    }
    if !d.problems.is_empty() {
        out.blank();
        out.comment("Found while looking (each one was skipped; fix it or ignore it):");
        for p in &d.problems {
            out.comment(&format!("- {p}"));
        }
    }
    sources(&mut out, d);
    let mut written = targets(&mut out, d);
    written.extend(dkim(&mut out, &d.dkim));
    unit_note(&mut out, &written, &unit_writable(SHIPPED_UNIT));
    out.text
}

/// The shipped unit, whose `ReadWritePaths=` say where `mxkeys run` under
/// it may write (ProtectSystem=strict: nowhere else outside its state).
const SHIPPED_UNIT: &str = include_str!("../../systemd/mxkeys.service");

/// The directories a unit's `ReadWritePaths=` lines open (the `-` prefix,
/// "skip when missing", dropped).
fn unit_writable(unit: &str) -> Vec<PathBuf> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .map(|p| PathBuf::from(p.trim_start_matches('-')))
        .collect()
}

/// Says which directories the configuration writes that the shipped unit
/// does not open, with the drop-in that opens them: without it, `mxkeys
/// run` under the unit fails at the first renewal, not at the first sync.
fn unit_note(out: &mut Out, written: &[PathBuf], writable: &[PathBuf]) {
    let mut closed: Vec<&PathBuf> = written
        .iter()
        .filter(|d| !writable.iter().any(|w| d.starts_with(w)))
        .collect();
    closed.sort();
    closed.dedup();
    if closed.is_empty() {
        return;
    }
    let dirs: Vec<String> = closed.iter().map(|d| d.display().to_string()).collect();
    out.blank();
    out.comment(&format!(
        "systemd: the shipped mxkeys.service may write only below its ReadWritePaths; this configuration also writes {}. Before `mxkeys run` under it (and the timer's `mxkeys renew`): `systemctl edit mxkeys` and `systemctl edit mxkeys-renew`, each with `[Service]` and `ReadWritePaths={}`.",
        dirs.join(", "),
        dirs.join(" ")
    ));
}

/// Text being built, one line at a time; comments never span lines.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, l: &str) {
        self.text.push_str(l);
        self.text.push('\n');
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }

    fn comment(&mut self, c: &str) {
        self.line(&format!("# {}", one_line(c)));
    }

    fn fill_in(&mut self, c: &str) {
        self.line(&format!("{FILL_IN}{}", one_line(c)));
    }

    /// Lines written as they are, or each behind `# ` (a table written
    /// commented out).
    fn lines(&mut self, lines: &[String], commented: bool) {
        for l in lines {
            if commented && !l.starts_with('#') {
                self.line(&format!("# {l}"));
            } else {
                self.line(l);
            }
        }
    }
}

/// A text from the host (a note, a file name) made safe for one comment
/// line: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A TOML basic string.
fn q(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

fn qa<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn hint_name(h: KeyTypeHint) -> &'static str {
    match h {
        KeyTypeHint::Rsa => "rsa",
        KeyTypeHint::Ecdsa => "ecdsa",
        KeyTypeHint::Ed25519 => "ed25519",
        KeyTypeHint::Unknown => "unknown key type",
    }
}

fn kind_name(k: FoundKind) -> &'static str {
    match k {
        FoundKind::Certbot => "certbot",
        FoundKind::Lego => "lego",
        FoundKind::Traefik => "traefik",
    }
}

// ---------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------

fn sources(out: &mut Out, d: &Discovered) {
    out.blank();
    out.comment("Certificate stores found on this host.");
    if d.sources.is_empty() {
        out.fill_in(
            "no certificate store was found (Certbot, lego, Traefik acme.json): add the [[source]] that renews the certificates below (see config/mxkeys.toml)",
        );
    }
    for s in &d.sources {
        source(out, s);
    }
    for served in &d.served {
        let held = d
            .sources
            .iter()
            .flat_map(|s| &s.certs)
            .any(|c| c.sha256 == served.sha256);
        if !held {
            out.fill_in(&format!(
                "no source found holds the certificate {} serves now ({}; sha256 {}): add the [[source]] that renews it, or the first `sync` installs another source's certificate there",
                served.chain.display(),
                served.names.join(", "),
                served.sha256
            ));
        }
    }
}

fn source(out: &mut Out, s: &FoundSource) {
    out.blank();
    for c in &s.certs {
        let reuse = match c.reuse_key {
            Some(true) => "; reuse_key = true",
            Some(false) => "; reuse_key = false: each renewal makes a new key",
            None => "",
        };
        out.comment(&format!(
            "holds {:?}: {} ({}{}; sha256 {})",
            c.label,
            c.names.join(", "),
            hint_name(c.key_type),
            reuse,
            c.sha256
        ));
    }
    for n in &s.notes {
        out.comment(&format!("note: {n}"));
    }
    out.line("[[source]]");
    out.line(&format!("type = {}", q(kind_name(s.kind))));
    out.line(&format!("path = {}", qp(&s.path)));
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

/// The files of one certificate: `combined`, or `fullchain` and `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Files {
    Combined(PathBuf),
    Split { fullchain: PathBuf, key: PathBuf },
}

impl Files {
    fn paths(&self) -> Vec<&Path> {
        match self {
            Files::Combined(p) => vec![p],
            Files::Split { fullchain, key } => vec![fullchain, key],
        }
    }

    /// The file holding the private key.
    fn key(&self) -> &Path {
        match self {
            Files::Combined(p) => p,
            Files::Split { key, .. } => key,
        }
    }

    /// The file whose first certificate is the leaf served.
    fn chain(&self) -> &Path {
        match self {
            Files::Combined(p) => p,
            Files::Split { fullchain, .. } => fullchain,
        }
    }

    fn lines(&self) -> Vec<String> {
        match self {
            Files::Combined(p) => vec![format!("combined = {}", qp(p))],
            Files::Split { fullchain, key } => vec![
                format!("fullchain = {}", qp(fullchain)),
                format!("key = {}", qp(key)),
            ],
        }
    }
}

/// One certificate a target writes, or the two of a dual target.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Single(Files, KeyTypeHint),
    Dual { ecdsa: Files, rsa: Files },
}

impl Shape {
    fn files(&self) -> Vec<&Files> {
        match self {
            Shape::Single(f, _) => vec![f],
            Shape::Dual { ecdsa, rsa } => vec![ecdsa, rsa],
        }
    }

    fn paths(&self) -> BTreeSet<&Path> {
        self.files().into_iter().flat_map(Files::paths).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Postfix,
    Dovecot,
}

/// A `[[target]]` to write.
struct Plan {
    name: String,
    servers: Vec<Server>,
    shape: Shape,
    /// Which settings name the files, for the comment above.
    from: String,
    domains: Vec<String>,
    verify: Vec<(String, &'static str)>,
    /// Written above the table.
    comments: Vec<String>,
    /// Why the table is written commented out, when it is.
    disabled: Option<String>,
}

/// Writes the targets; returns the directories the uncommented ones write.
fn targets(out: &mut Out, d: &Discovered) -> Vec<PathBuf> {
    let mut written = Vec::new();
    out.blank();
    out.comment("Targets: the files the mail servers read now.");
    let mut plans = Vec::new();
    let mut notes = Vec::new();
    if let Some(p) = &d.postfix {
        plans.extend(postfix_plan(p, &d.served, &mut notes));
    }
    let dovecot = d
        .dovecot
        .as_ref()
        .and_then(|t| dovecot_plan(t, &d.served, &mut notes));
    if let Some(dv) = dovecot {
        match plans
            .iter_mut()
            .find(|p| p.shape.paths() == dv.shape.paths())
        {
            Some(pf) => {
                pf.name = "mail".to_owned();
                pf.servers.push(Server::Dovecot);
                pf.from = format!("{}; Dovecot {}", pf.from, dv.from);
                pf.verify.extend(dv.verify);
                pf.comments.extend(dv.comments);
            }
            None => plans.push(dv),
        }
    }
    for n in &notes {
        out.fill_in(n);
    }
    if plans.is_empty() {
        out.fill_in(
            "no server reads a certificate file mxkeys can write: add a [[target]] (see config/mxkeys.toml)",
        );
    }
    let certbot_roots: Vec<&Path> = d
        .sources
        .iter()
        .filter(|s| s.kind == FoundKind::Certbot)
        .map(|s| s.path.as_path())
        .collect();
    // A file is written by one target only: a target sharing some (not
    // all) files with one before it is left to the admin.
    let mut taken: BTreeSet<PathBuf> = BTreeSet::new();
    for mut plan in plans {
        let paths: Vec<PathBuf> = plan
            .shape
            .paths()
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        if paths.iter().any(|p| taken.contains(p)) {
            plan.disabled = Some(format!(
                "{} some of the files of a target above, not all: a file is written by one target only; point both servers at the same files, or this one at files of its own, and write this target",
                reads(&plan.servers)
            ));
        } else if let Some(whose) = not_to_write(&paths, &certbot_roots, &d.links) {
            let redirect = redirect(&mut plan);
            plan.disabled = Some(format!(
                "{} {whose}, which mxkeys must not write. To let mxkeys serve it: create {MXKEYS_TLS_DIR}, remove the `#` of the lines below, run `mxkeys sync` (it writes the files), then {}",
                reads(&plan.servers),
                redirect.join("; ")
            ));
        }
        taken.extend(paths);
        write_plan(out, &plan, &reloads(d), &d.key_files);
        if plan.disabled.is_none() {
            written.extend(
                plan.shape
                    .paths()
                    .into_iter()
                    .filter_map(|p| p.parent().map(Path::to_path_buf)),
            );
        }
    }
    written
}

/// The reload command of each server: its own tool, told the instance's
/// configuration when init was pointed at one that is not the default.
struct Reloads {
    postfix: Vec<String>,
    dovecot: Vec<String>,
}

fn reloads(d: &Discovered) -> Reloads {
    let with = |tool: &str, config: &Option<PathBuf>| {
        let mut argv = vec![tool.to_owned()];
        if let Some(c) = config {
            argv.extend(["-c".to_owned(), c.display().to_string()]);
        }
        argv.push("reload".to_owned());
        argv
    };
    Reloads {
        postfix: with("postfix", &d.postfix_config),
        dovecot: with("doveadm", &d.dovecot_config),
    }
}

/// `argv` as one `sh -c` word list: each word single-quoted unless plain.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn server_names(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| match s {
            Server::Postfix => "Postfix",
            Server::Dovecot => "Dovecot",
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// "Postfix reads", "Postfix and Dovecot read".
fn reads(servers: &[Server]) -> String {
    let verb = if servers.len() > 1 { "read" } else { "reads" };
    format!("{} {verb}", server_names(servers))
}

/// The files of a Postfix slot (`smtpd_tls_chain_files` or the older
/// cert/key pairs) with the key type it serves.
fn postfix_plan(
    p: &super::mail::PostfixTls,
    served: &[ServedCert],
    notes: &mut Vec<String>,
) -> Option<Plan> {
    for s in &p.own_files {
        notes.push(format!(
            "Postfix service {s:?} (master.cf) sets certificate files of its own: add a [[target]] for them"
        ));
    }
    let from = match p.from {
        PostfixParams::ChainFiles => "smtpd_tls_chain_files",
        PostfixParams::Legacy => "smtpd_tls_cert_file/smtpd_tls_key_file",
        PostfixParams::None => {
            notes.push(
                "Postfix serves no certificate (neither smtpd_tls_chain_files nor smtpd_tls_cert_file is set)".to_owned(),
            );
            return None;
        }
    };
    let certs: Vec<(Files, KeyTypeHint)> = p
        .slots
        .iter()
        .map(|s| {
            let files = if s.is_combined() {
                Files::Combined(s.chain.clone())
            } else {
                Files::Split {
                    fullchain: s.chain.clone(),
                    key: s.key.clone(),
                }
            };
            let hint = served_of(served, &s.chain).map_or(s.key_type_hint, |c| c.key_type);
            (files, hint)
        })
        .collect();
    let mut comments = Vec::new();
    let shape = shape("Postfix", certs, &mut comments)?;
    let verify = verify_entries(&p.ports, Server::Postfix, &mut comments);
    Some(plan(
        "postfix",
        Server::Postfix,
        shape,
        from.to_owned(),
        served,
        verify,
        comments,
    ))
}

fn dovecot_plan(
    t: &super::mail::DovecotTls,
    served: &[ServedCert],
    notes: &mut Vec<String>,
) -> Option<Plan> {
    for s in &t.scoped {
        notes.push(format!(
            "Dovecot's block `{s}` sets a certificate of its own: add a [[target]] for it"
        ));
    }
    let mut certs = Vec::new();
    for (setting, pair) in [("ssl_cert", &t.main), ("ssl_alt_cert", &t.alt)] {
        let Some(DovecotPair { cert, key }) = pair else {
            continue;
        };
        match (cert, key) {
            (DovecotSource::File(c), DovecotSource::File(k)) => {
                let files = if c == k {
                    Files::Combined(c.clone())
                } else {
                    Files::Split {
                        fullchain: c.clone(),
                        key: k.clone(),
                    }
                };
                let hint = served_of(served, c).map_or(KeyTypeHint::Unknown, |s| s.key_type);
                certs.push((files, hint));
            }
            _ => notes.push(format!(
                "Dovecot's {setting} (or its key) is written inline in its configuration: mxkeys writes files; point Dovecot at files (`{setting} = <{MXKEYS_TLS_DIR}/dovecot.crt`) and add a [[target]] writing them"
            )),
        }
    }
    if t.main.is_none() && t.alt.is_none() {
        notes.push("Dovecot serves no certificate (ssl_cert is not set)".to_owned());
    }
    let mut comments = Vec::new();
    let shape = shape("Dovecot", certs, &mut comments)?;
    let verify = verify_entries(&t.ports, Server::Dovecot, &mut comments);
    let from = if matches!(shape, Shape::Dual { .. }) {
        "ssl_cert/ssl_key and ssl_alt_cert/ssl_alt_key"
    } else {
        "ssl_cert/ssl_key"
    };
    Some(plan(
        "dovecot",
        Server::Dovecot,
        shape,
        from.to_owned(),
        served,
        verify,
        comments,
    ))
}

fn served_of<'a>(served: &'a [ServedCert], chain: &Path) -> Option<&'a ServedCert> {
    served.iter().find(|s| s.chain == chain)
}

/// One certificate, or an RSA and an ECDSA one (a dual target); anything
/// else keeps the first and says so.
fn shape(
    server: &str,
    certs: Vec<(Files, KeyTypeHint)>,
    comments: &mut Vec<String>,
) -> Option<Shape> {
    let mut it = certs.iter();
    let (first, second) = (it.next()?, it.next());
    let Some(second) = second else {
        return Some(Shape::Single(first.0.clone(), first.1));
    };
    let shares_a_file = first.0.paths().iter().any(|p| second.0.paths().contains(p));
    match (first.1, second.1, certs.len(), shares_a_file) {
        (KeyTypeHint::Ecdsa, KeyTypeHint::Rsa, 2, false) => Some(Shape::Dual {
            ecdsa: first.0.clone(),
            rsa: second.0.clone(),
        }),
        (KeyTypeHint::Rsa, KeyTypeHint::Ecdsa, 2, false) => Some(Shape::Dual {
            ecdsa: second.0.clone(),
            rsa: first.0.clone(),
        }),
        _ => {
            let all: Vec<String> = certs
                .iter()
                .map(|(f, h)| format!("{} ({})", f.chain().display(), hint_name(*h)))
                .collect();
            comments.push(format!(
                "{server} serves {} certificates ({}); a target writes one, or one RSA and one ECDSA in files of their own: only the first is written here; add the others",
                certs.len(),
                all.join(", ")
            ));
            Some(Shape::Single(first.0.clone(), first.1))
        }
    }
}

fn plan(
    name: &str,
    server: Server,
    shape: Shape,
    from: String,
    served: &[ServedCert],
    verify: Vec<(String, &'static str)>,
    mut comments: Vec<String>,
) -> Plan {
    let names: Vec<Option<&ServedCert>> = shape
        .files()
        .iter()
        .map(|f| served_of(served, f.chain()))
        .collect();
    let domains = match names.as_slice() {
        [Some(a)] => a.names.clone(),
        [Some(a), Some(b)] => {
            let both: Vec<String> = a
                .names
                .iter()
                .filter(|n| b.names.contains(n))
                .cloned()
                .collect();
            if both.len() != a.names.len() || both.len() != b.names.len() {
                comments.push(format!(
                    "the two certificates serve different names ({} and {}): `domains` holds those both serve",
                    a.names.join(", "),
                    b.names.join(", ")
                ));
            }
            both
        }
        _ => Vec::new(),
    };
    if domains.is_empty() {
        comments.push(
            "domains = [\"mail.example.com\"]: the names this target must serve (the certificate served now could not be read; without `domains` it serves `hostname`)".to_owned(),
        );
    }
    Plan {
        name: name.to_owned(),
        servers: vec![server],
        shape,
        from,
        domains,
        verify,
        comments,
        disabled: None,
    }
}

/// A `verify` entry per listening TLS port; the ones that cannot be
/// written are comments.
fn verify_entries(
    listeners: &[Listener],
    server: Server,
    comments: &mut Vec<String>,
) -> Vec<(String, &'static str)> {
    let mut entries = Vec::new();
    for l in listeners {
        let Some(port) = l.port else {
            comments.push(format!(
                "{}: its port is not known: add a verify entry for it",
                l.service
            ));
            continue;
        };
        let protocol = match (l.tls, server) {
            (TlsMode::Implicit, _) => "tls",
            (TlsMode::StartTls, Server::Postfix) => "smtp",
            (TlsMode::StartTls, Server::Dovecot) => {
                match l.service.split('/').next().unwrap_or_default() {
                    "imap-login" => "imap",
                    "pop3-login" => "pop3",
                    "submission-login" => "smtp",
                    _ => {
                        comments.push(format!(
                            "{} (port {port}) offers STARTTLS in a protocol mxkeys does not verify: add a verify entry if one fits",
                            l.service
                        ));
                        continue;
                    }
                }
            }
        };
        entries.push((verify_address(l.address.as_deref(), port), protocol));
    }
    entries
}

/// `127.0.0.1:PORT` unless the listener binds one address of its own.
fn verify_address(address: Option<&str>, port: u16) -> String {
    let first = address
        .and_then(|a| a.split([',', ' ']).find(|s| !s.is_empty()))
        .map(|a| a.trim_start_matches('[').trim_end_matches(']'));
    match first {
        None | Some("*" | "0.0.0.0") => format!("127.0.0.1:{port}"),
        Some("::") => format!("[::1]:{port}"),
        Some(a) if a.contains(':') => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
    }
}

/// Inside a Certbot `live/` or `archive/` tree: one of the Certbot
/// sources found, or any `letsencrypt/live` or `letsencrypt/archive`.
fn in_certbot_tree(p: &Path, roots: &[&Path]) -> bool {
    let found = roots
        .iter()
        .any(|r| p.starts_with(r.join("live")) || p.starts_with(r.join("archive")));
    let names: Vec<&std::ffi::OsStr> = p.iter().collect();
    found
        || names
            .windows(2)
            .any(|w| w[0] == "letsencrypt" && (w[1] == "live" || w[1] == "archive"))
}

/// Points the plan at files under [`MXKEYS_TLS_DIR`] and returns the
/// settings that make the servers read them.
/// Why files a server reads now are not files mxkeys may write, if they
/// are not: Certbot's tree (its renewals replace them), the system's
/// shared certificates in /etc/ssl (Debian's snakeoil pair, read by other
/// services too), or a link (mxkeys replaces files, never writes through a
/// link into another directory).
fn not_to_write(
    paths: &[PathBuf],
    certbot_roots: &[&Path],
    links: &std::collections::BTreeMap<PathBuf, PathBuf>,
) -> Option<String> {
    if paths.iter().any(|p| in_certbot_tree(p, certbot_roots)) {
        return Some("Certbot's files".to_owned());
    }
    if let Some(p) = paths.iter().find(|p| p.starts_with(SYSTEM_SSL_DIR)) {
        return Some(format!(
            "{}, a certificate file the system shares with other services",
            p.display()
        ));
    }
    paths.iter().find_map(|p| {
        links
            .get(p)
            .map(|to| format!("{}, a link to {}", p.display(), to.display()))
    })
}

/// The system's shared certificate store (Debian's ssl-cert package).
const SYSTEM_SSL_DIR: &str = "/etc/ssl";

fn redirect(plan: &mut Plan) -> Vec<String> {
    let dir = Path::new(MXKEYS_TLS_DIR);
    let pair = |suffix: &str| Files::Split {
        fullchain: dir.join(format!("{}{suffix}.crt", plan.name)),
        key: dir.join(format!("{}{suffix}.key", plan.name)),
    };
    plan.shape = match &plan.shape {
        Shape::Single(_, h) => Shape::Single(pair(""), *h),
        Shape::Dual { .. } => Shape::Dual {
            ecdsa: pair("-ecdsa"),
            rsa: pair("-rsa"),
        },
    };
    let split = |f: &Files| match f {
        Files::Split { fullchain, key } => {
            (fullchain.display().to_string(), key.display().to_string())
        }
        Files::Combined(p) => (p.display().to_string(), p.display().to_string()),
    };
    let mut lines = Vec::new();
    let files = plan.shape.files();
    if plan.servers.contains(&Server::Postfix) {
        let chain: Vec<String> = files
            .iter()
            .map(|f| {
                let (c, k) = split(f);
                format!("{k}, {c}")
            })
            .collect();
        lines.push(format!(
            "`postconf -e 'smtpd_tls_chain_files = {}'` and `postfix reload`",
            chain.join(", ")
        ));
    }
    if plan.servers.contains(&Server::Dovecot) {
        let mut set = Vec::new();
        for (f, prefix) in files.iter().zip(["ssl_", "ssl_alt_"]) {
            let (c, k) = split(f);
            set.push(format!("{prefix}cert = <{c}  {prefix}key = <{k}"));
        }
        lines.push(format!(
            "set Dovecot's `{}` and `doveadm reload`",
            set.join("  ")
        ));
    }
    lines
}

/// The `mode`, `owner` and `group` lines that keep what the key files have
/// now (nothing for the defaults: 0600, init's own user and group), or
/// the comment that says why not.
fn key_file_lines(
    shape: &Shape,
    metas: &std::collections::BTreeMap<PathBuf, KeyFileMeta>,
) -> Vec<String> {
    let files: Vec<&Path> = shape.files().into_iter().map(Files::key).collect();
    let found: Vec<&KeyFileMeta> = files.iter().filter_map(|f| metas.get(*f)).collect();
    let Some(first) = found.first() else {
        return Vec::new();
    };
    if found.len() != files.len() || found.iter().any(|m| m != first) {
        return vec![format!(
            "{FILL_IN}mode, owner, group: the key files differ in them now ({}); one setting applies to all",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )];
    }
    let mut lines = Vec::new();
    if first.mode & 0o007 != 0 {
        lines.push(format!(
            "# The key files are mode {:04o} now, readable by every user: mxkeys writes them 0600.",
            first.mode
        ));
    } else if first.mode != 0o600 {
        lines.push(format!("mode = \"{:04o}\"", first.mode));
    }
    if let Some(o) = &first.owner {
        lines.push(format!("owner = {}", q(o)));
    }
    if let Some(g) = &first.group {
        lines.push(format!("group = {}", q(g)));
    }
    lines
}

fn write_plan(
    out: &mut Out,
    p: &Plan,
    reloads: &Reloads,
    metas: &std::collections::BTreeMap<PathBuf, KeyFileMeta>,
) {
    out.blank();
    out.comment(&format!(
        "{} these files now ({}).",
        reads(&p.servers),
        p.from
    ));
    let commented = p.disabled.is_some();
    if let Some(why) = &p.disabled {
        out.fill_in(why);
    }
    for c in &p.comments {
        out.fill_in(c);
    }
    let mut lines = vec!["[[target]]".to_owned(), format!("name = {}", q(&p.name))];
    if !p.domains.is_empty() {
        lines.push(format!("domains = {}", qa(&p.domains)));
    }
    if let Shape::Single(files, hint) = &p.shape {
        match hint {
            KeyTypeHint::Rsa | KeyTypeHint::Ecdsa => {
                lines.push(format!("key_type = {}", q(hint_name(*hint))))
            }
            _ => {}
        }
        lines.extend(files.lines());
    }
    lines.extend(key_file_lines(&p.shape, metas));
    match p.servers.as_slice() {
        [Server::Postfix] => lines.push(format!("reload = {}", qa(&reloads.postfix))),
        [Server::Dovecot] => lines.push(format!("reload = {}", qa(&reloads.dovecot))),
        _ => {
            lines.push(
                "# A target runs one reload command: both servers read these files.".to_owned(),
            );
            let both = format!(
                "{} && {}",
                shell_words(&reloads.postfix),
                shell_words(&reloads.dovecot)
            );
            lines.push(format!("reload = {}", qa(&["sh", "-c", &both])));
        }
    }
    if !p.verify.is_empty() {
        lines.push("verify = [".to_owned());
        for (address, protocol) in &p.verify {
            lines.push(format!(
                "  {{ address = {}, protocol = {} }},",
                q(address),
                q(protocol)
            ));
        }
        lines.push("]".to_owned());
    }
    if let Shape::Dual { ecdsa, rsa } = &p.shape {
        lines.push("[target.ecdsa]".to_owned());
        lines.extend(ecdsa.lines());
        lines.push("[target.rsa]".to_owned());
        lines.extend(rsa.lines());
    }
    out.lines(&lines, commented);
}

// ---------------------------------------------------------------------------
// DKIM
// ---------------------------------------------------------------------------

/// Writes the `[dkim]` table; returns its `signer_dir` when it is written
/// uncommented.
fn dkim(out: &mut Out, found: &[FoundDkim]) -> Option<PathBuf> {
    out.blank();
    let Some((first, others)) = found.split_first() else {
        out.comment(
            "No DKIM signer was found (OpenDKIM, Rspamd, amavis): add a [dkim] table to have mxkeys keep the keys (see config/mxkeys.toml).",
        );
        return None;
    };
    let signer = signer_name(first.signer);
    for o in others {
        out.fill_in(&format!(
            "{} signs here too (signer_dir {}, {} keys): mxkeys writes one signer's tables; the [dkim] below is {signer}'s",
            signer_name(o.signer),
            o.signer_dir.display(),
            o.keys.len()
        ));
    }
    if first.keys.is_empty() {
        out.comment(&format!(
            "DKIM: {signer} is configured here, but no key it signs with was found."
        ));
    } else {
        out.comment(&format!(
            "DKIM: {signer} signs with the keys below; [[dkim.adopt]] takes them over as active, so signing never stops."
        ));
    }
    for k in &first.keys {
        out.comment(&format!(
            "adopts {}._domainkey.{} ({}, {})",
            k.selector,
            k.domain,
            k.algorithm.name(),
            k.key_file.display()
        ));
    }
    for n in &first.notes {
        out.comment(&format!("note: {n}"));
    }
    let mut domains: Vec<String> = first.keys.iter().map(|k| k.domain.to_string()).collect();
    for a in &first.adopt {
        if let AdoptFrom::Dir {
            domain: Some(d), ..
        }
        | AdoptFrom::Key { domain: d, .. }
        | AdoptFrom::Env { domain: d, .. } = &a.from
        {
            domains.push(d.to_string());
        }
    }
    domains.sort();
    domains.dedup();
    let commented = domains.is_empty();
    if commented {
        out.fill_in(
            "domains = [\"example.com\"]: no key was found to tell the domains signed; fill them in and remove the `#` of the lines below",
        );
    }
    let mut lines = vec!["[dkim]".to_owned()];
    if !commented {
        lines.push(format!("domains = {}", qa(&domains)));
    }
    lines.push(format!(
        "{FILL_IN}dns = the [dns.NAME] provider that publishes the records; \"manual\": publish what `mxkeys dkim records` prints by hand"
    ));
    lines.push(format!("dns = {}", q("manual")));
    lines.push(format!("signer = {}", q(signer)));
    lines.push(format!("signer_dir = {}", qp(&first.signer_dir)));
    if let Some(argv) = &first.reload {
        lines.push(format!("reload = {}", qa(argv)));
    }
    if let Some((pidfile, signal)) = &first.reload_signal {
        lines.push(format!(
            "reload_signal = {{ pidfile = {}, signal = {} }}",
            qp(pidfile),
            q(signal)
        ));
    }
    if first.reload.is_none() && first.reload_signal.is_none() {
        lines.push(format!(
            "{FILL_IN}reload = [...]: the command that makes {signer} read its tables again"
        ));
    }
    for a in &first.adopt {
        lines.push("[[dkim.adopt]]".to_owned());
        lines.extend(adopt_lines(&a.from));
        if a.check == AdoptCheck::None {
            lines.push(format!("check = {}", q("none")));
        }
    }
    out.lines(&lines, commented);
    (!commented).then(|| first.signer_dir.clone())
}

fn signer_name(s: crate::config::Signer) -> &'static str {
    match s {
        crate::config::Signer::Opendkim => "opendkim",
        crate::config::Signer::Rspamd => "rspamd",
        crate::config::Signer::Amavis => "amavis",
    }
}

fn adopt_lines(from: &AdoptFrom) -> Vec<String> {
    let f = |name: &str| format!("from = {}", q(name));
    let path = |p: &Path| format!("path = {}", qp(p));
    match from {
        AdoptFrom::Opendkim(p) => vec![f("opendkim"), path(p)],
        AdoptFrom::Rspamd(p) => vec![f("rspamd"), path(p)],
        AdoptFrom::Amavis(p) => vec![f("amavis"), path(p)],
        AdoptFrom::Dms(p) => vec![f("dms"), path(p)],
        AdoptFrom::Dir { dir, domain } => {
            let mut l = vec![f("dir"), path(dir)];
            if let Some(d) = domain {
                l.push(format!("domain = {}", q(d.as_str())));
            }
            l
        }
        AdoptFrom::Key {
            file,
            domain,
            selector,
        } => vec![
            f("key"),
            path(file),
            format!("domain = {}", q(domain.as_str())),
            format!("selector = {}", q(selector)),
        ],
        AdoptFrom::Env {
            var,
            domain,
            selector,
        } => vec![
            f("env"),
            format!("var = {}", q(var)),
            format!("domain = {}", q(domain.as_str())),
            format!("selector = {}", q(selector)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Adopt, Config, Host, KeyTypeFilter, Reload, Signer, SourceKind, TargetFiles, VerifyProtocol,
    };
    use crate::init::mail::{DovecotTls, PostfixTls, Slot};
    use crate::init::{FoundCert, FoundKey};
    use crate::names::DnsName;

    const MAIL: &str = "mail.example.test";

    #[test]
    fn key_files_keep_their_mode_owner_and_group_unless_every_user_could_read_them() {
        let meta = |mode, owner: Option<&str>, group: Option<&str>| KeyFileMeta {
            mode,
            owner: owner.map(str::to_owned),
            group: group.map(str::to_owned),
        };
        let a = PathBuf::from("/tls/a.pem");
        let b = PathBuf::from("/tls/b.key");
        let dual = Shape::Dual {
            ecdsa: Files::Combined(a.clone()),
            rsa: Files::Split {
                fullchain: PathBuf::from("/tls/b.pem"),
                key: b.clone(),
            },
        };
        let single = Shape::Single(Files::Combined(a.clone()), KeyTypeHint::Ecdsa);
        let g640 = meta(0o640, None, Some("dovecot"));
        for (what, shape, metas, want) in [
            (
                "defaults say nothing",
                &single,
                vec![(&a, meta(0o600, None, None))],
                vec![],
            ),
            (
                "a group-readable key keeps mode and group",
                &single,
                vec![(&a, g640.clone())],
                vec!["mode = \"0640\"", "group = \"dovecot\""],
            ),
            (
                "another owner is kept",
                &single,
                vec![(&a, meta(0o600, Some("_rspamd"), None))],
                vec!["owner = \"_rspamd\""],
            ),
            (
                "a world-readable key is written 0600, and said so",
                &single,
                vec![(&a, meta(0o644, None, None))],
                vec![
                    "# The key files are mode 0644 now, readable by every user: mxkeys writes them 0600.",
                ],
            ),
            (
                "both key files of a dual target alike",
                &dual,
                vec![(&a, g640.clone()), (&b, g640.clone())],
                vec!["mode = \"0640\"", "group = \"dovecot\""],
            ),
            ("nothing known", &single, vec![], vec![]),
        ] {
            let metas = metas.into_iter().map(|(p, m)| (p.clone(), m)).collect();
            assert_eq!(key_file_lines(shape, &metas), want, "{what}");
        }
        let metas = [(a.clone(), g640), (b, meta(0o600, None, None))]
            .into_iter()
            .collect();
        let lines = key_file_lines(&dual, &metas);
        assert!(
            lines.len() == 1 && lines[0].starts_with(FILL_IN) && lines[0].contains("/tls/b.key"),
            "key files that differ: {lines:?}"
        );
    }

    #[test]
    fn certbots_files_the_systems_snakeoil_and_links_are_never_written() {
        let p = |s: &str| PathBuf::from(s);
        let le = p("/etc/letsencrypt");
        let roots = [le.as_path()];
        let links: std::collections::BTreeMap<PathBuf, PathBuf> = [(
            p("/etc/dovecot/private/dovecot.pem"),
            p("/etc/ssl/certs/ssl-cert-snakeoil.pem"),
        )]
        .into_iter()
        .collect();
        for (paths, want) in [
            (vec![p("/etc/postfix/tls/chain.pem")], None),
            (
                vec![p("/etc/letsencrypt/live/mail/fullchain.pem")],
                Some("Certbot's files"),
            ),
            (
                vec![
                    p("/etc/ssl/certs/ssl-cert-snakeoil.pem"),
                    p("/etc/ssl/private/ssl-cert-snakeoil.key"),
                ],
                Some(
                    "/etc/ssl/certs/ssl-cert-snakeoil.pem, a certificate file the system shares with other services",
                ),
            ),
            (
                vec![
                    p("/etc/dovecot/private/dovecot.pem"),
                    p("/etc/dovecot/private/own.key"),
                ],
                Some(
                    "/etc/dovecot/private/dovecot.pem, a link to /etc/ssl/certs/ssl-cert-snakeoil.pem",
                ),
            ),
            (vec![p("/etc/sslx/mail.pem")], None),
        ] {
            assert_eq!(
                not_to_write(&paths, &roots, &links).as_deref(),
                want,
                "{paths:?}"
            );
        }
    }

    #[test]
    fn directories_the_shipped_unit_does_not_open_are_named_with_the_drop_in() {
        let writable = unit_writable(SHIPPED_UNIT);
        for open in ["/etc/postfix/tls", "/etc/dovecot/tls", "/etc/opendkim"] {
            assert!(writable.contains(&PathBuf::from(open)), "{writable:?}");
        }
        let note = |written: &[&str]| {
            let mut out = Out::default();
            let written: Vec<PathBuf> = written.iter().map(PathBuf::from).collect();
            unit_note(&mut out, &written, &writable);
            out.text
        };
        assert_eq!(
            note(&["/etc/postfix/tls", "/etc/opendkim", "/etc/dovecot/tls/rsa"]),
            ""
        );
        let text = note(&[
            "/etc/postfix/ssl",
            "/etc/postfix/tls",
            "/srv/tls",
            "/etc/postfix/ssl",
        ]);
        assert_eq!(
            text.lines().filter(|l| l.starts_with('#')).count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("writes /etc/postfix/ssl, /srv/tls.")
                && text.contains("`ReadWritePaths=/etc/postfix/ssl /srv/tls`"),
            "{text}"
        );
    }

    #[test]
    fn reloads_name_the_instance_init_was_pointed_at_and_quote_it_for_the_shell() {
        let mut d = Discovered::default();
        let r = reloads(&d);
        assert_eq!(r.postfix, ["postfix", "reload"]);
        assert_eq!(r.dovecot, ["doveadm", "reload"]);
        d.postfix_config = Some(PathBuf::from("/etc/postfix-out"));
        d.dovecot_config = Some(PathBuf::from("/srv/dove cot/it's.conf"));
        let r = reloads(&d);
        assert_eq!(r.postfix, ["postfix", "-c", "/etc/postfix-out", "reload"]);
        assert_eq!(
            r.dovecot,
            ["doveadm", "-c", "/srv/dove cot/it's.conf", "reload"]
        );
        assert_eq!(
            shell_words(&r.dovecot),
            "doveadm -c '/srv/dove cot/it'\\''s.conf' reload"
        );
        assert_eq!(
            shell_words(&r.postfix),
            "postfix -c /etc/postfix-out reload"
        );
    }

    fn host() -> Host {
        Host {
            cwd: "/".into(),
            hostname: None,
        }
    }

    /// The text as the real loader reads it; a refusal fails the test with
    /// the text.
    fn load(text: &str) -> Config {
        Config::parse(Path::new("/etc/mxkeys/mxkeys.toml"), text, &host())
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn served(chain: &str, key_type: KeyTypeHint, sha: &str) -> ServedCert {
        ServedCert {
            chain: p(chain),
            names: vec![MAIL.to_owned(), "smtp.example.test".to_owned()],
            key_type,
            not_after: 2_000_000_000,
            sha256: sha.to_owned(),
        }
    }

    fn slot(key: &str, chain: &str, h: KeyTypeHint) -> Slot {
        Slot {
            key: p(key),
            chain: p(chain),
            key_type_hint: h,
        }
    }

    fn listener(service: &str, address: Option<&str>, port: u16, tls: TlsMode) -> Listener {
        Listener {
            service: service.to_owned(),
            address: address.map(str::to_owned),
            port: Some(port),
            tls,
        }
    }

    fn postfix(slots: Vec<Slot>, from: PostfixParams) -> PostfixTls {
        PostfixTls {
            combined: slots.iter().all(Slot::is_combined) && !slots.is_empty(),
            slots,
            from,
            ports: vec![
                listener("smtp", None, 25, TlsMode::StartTls),
                listener("submissions", None, 465, TlsMode::Implicit),
            ],
            own_files: vec![],
        }
    }

    fn file_pair(cert: &str, key: &str) -> Option<DovecotPair> {
        Some(DovecotPair {
            cert: DovecotSource::File(p(cert)),
            key: DovecotSource::File(p(key)),
        })
    }

    fn dovecot(main: Option<DovecotPair>, alt: Option<DovecotPair>) -> DovecotTls {
        DovecotTls {
            main,
            alt,
            ports: vec![
                listener("imap-login/imap", Some("192.0.2.7"), 143, TlsMode::StartTls),
                listener("imap-login/imaps", None, 993, TlsMode::Implicit),
            ],
            scoped: vec![],
        }
    }

    fn discovered() -> Discovered {
        Discovered {
            hostname: Some(MAIL.to_owned()),
            state_dir: Some(p("/var/lib/mxkeys-test")),
            ..Discovered::default()
        }
    }

    fn combined(f: &str) -> TargetFiles {
        TargetFiles {
            combined: Some(p(f)),
            ..TargetFiles::default()
        }
    }

    fn split(chain: &str, key: &str) -> TargetFiles {
        TargetFiles {
            fullchain: Some(p(chain)),
            key: Some(p(key)),
            ..TargetFiles::default()
        }
    }

    fn cmd(argv: &[&str]) -> Reload {
        Reload::Command(argv.iter().map(|s| s.to_string()).collect())
    }

    /// name, slots as (label, key_type, files), reloads.
    type Want = (
        &'static str,
        Vec<(Option<&'static str>, KeyTypeFilter, TargetFiles)>,
        Vec<Reload>,
    );

    #[test]
    fn targets_are_the_files_the_servers_read_now_single_dual_legacy_or_shared() {
        use KeyTypeHint::*;
        let postfix_reload = || vec![cmd(&["postfix", "reload"])];
        let dovecot_reload = || vec![cmd(&["doveadm", "reload"])];
        let table: Vec<(&str, Discovered, Vec<Want>)> = vec![
            (
                "combined chain file and Dovecot's own pair",
                Discovered {
                    postfix: Some(postfix(
                        vec![slot("/t/pf.pem", "/t/pf.pem", Unknown)],
                        PostfixParams::ChainFiles,
                    )),
                    dovecot: Some(dovecot(file_pair("/t/dv.crt", "/t/dv.key"), None)),
                    served: vec![
                        served("/t/pf.pem", Ecdsa, "aa"),
                        served("/t/dv.crt", Rsa, "bb"),
                    ],
                    ..discovered()
                },
                vec![
                    (
                        "postfix",
                        vec![(None, KeyTypeFilter::Ecdsa, combined("/t/pf.pem"))],
                        postfix_reload(),
                    ),
                    (
                        "dovecot",
                        vec![(None, KeyTypeFilter::Rsa, split("/t/dv.crt", "/t/dv.key"))],
                        dovecot_reload(),
                    ),
                ],
            ),
            (
                "two chain-file slots of different key types: one dual target",
                Discovered {
                    postfix: Some(postfix(
                        vec![
                            slot("/t/rsa.pem", "/t/rsa.pem", Rsa),
                            slot("/t/ec.key", "/t/ec.crt", Ecdsa),
                        ],
                        PostfixParams::ChainFiles,
                    )),
                    served: vec![
                        served("/t/rsa.pem", Rsa, "aa"),
                        served("/t/ec.crt", Ecdsa, "bb"),
                    ],
                    ..discovered()
                },
                vec![(
                    "postfix",
                    vec![
                        (
                            Some("ecdsa"),
                            KeyTypeFilter::Ecdsa,
                            split("/t/ec.crt", "/t/ec.key"),
                        ),
                        (Some("rsa"), KeyTypeFilter::Rsa, combined("/t/rsa.pem")),
                    ],
                    postfix_reload(),
                )],
            ),
            (
                "the older cert/key pair and Dovecot's main and alt pairs",
                Discovered {
                    postfix: Some(postfix(
                        vec![slot("/t/old.key", "/t/old.crt", Rsa)],
                        PostfixParams::Legacy,
                    )),
                    dovecot: Some(dovecot(
                        file_pair("/t/e.crt", "/t/e.key"),
                        file_pair("/t/r.pem", "/t/r.pem"),
                    )),
                    served: vec![
                        served("/t/old.crt", Rsa, "aa"),
                        served("/t/e.crt", Ecdsa, "bb"),
                        served("/t/r.pem", Rsa, "cc"),
                    ],
                    ..discovered()
                },
                vec![
                    (
                        "postfix",
                        vec![(None, KeyTypeFilter::Rsa, split("/t/old.crt", "/t/old.key"))],
                        postfix_reload(),
                    ),
                    (
                        "dovecot",
                        vec![
                            (
                                Some("ecdsa"),
                                KeyTypeFilter::Ecdsa,
                                split("/t/e.crt", "/t/e.key"),
                            ),
                            (Some("rsa"), KeyTypeFilter::Rsa, combined("/t/r.pem")),
                        ],
                        dovecot_reload(),
                    ),
                ],
            ),
            (
                "Postfix and Dovecot reading the same files: one target, both reloads",
                Discovered {
                    postfix: Some(postfix(
                        vec![slot("/t/k.pem", "/t/c.pem", Unknown)],
                        PostfixParams::Legacy,
                    )),
                    dovecot: Some(dovecot(file_pair("/t/c.pem", "/t/k.pem"), None)),
                    served: vec![served("/t/c.pem", Ecdsa, "aa")],
                    ..discovered()
                },
                vec![(
                    "mail",
                    vec![(None, KeyTypeFilter::Ecdsa, split("/t/c.pem", "/t/k.pem"))],
                    vec![cmd(&["sh", "-c", "postfix reload && doveadm reload"])],
                )],
            ),
            (
                "Dovecot sharing one file, not all, with Postfix: left to the admin",
                Discovered {
                    postfix: Some(postfix(
                        vec![slot("/t/k.pem", "/t/c.pem", Rsa)],
                        PostfixParams::Legacy,
                    )),
                    dovecot: Some(dovecot(file_pair("/t/other.pem", "/t/k.pem"), None)),
                    ..discovered()
                },
                vec![(
                    "postfix",
                    vec![(None, KeyTypeFilter::Rsa, split("/t/c.pem", "/t/k.pem"))],
                    postfix_reload(),
                )],
            ),
        ];
        for (what, d, want) in table {
            let text = render(&d);
            let c = load(&text);
            let got: Vec<Want> = c
                .targets
                .iter()
                .map(|t| {
                    let name: &'static str = match t.name.as_str() {
                        "postfix" => "postfix",
                        "dovecot" => "dovecot",
                        "mail" => "mail",
                        other => panic!("{what}: target {other}"),
                    };
                    let slots = t
                        .slots
                        .iter()
                        .map(|s| (s.label, s.key_type, s.files.clone()))
                        .collect();
                    (name, slots, t.reloads.clone())
                })
                .collect();
            assert_eq!(got, want, "{what}\n{text}");
            for t in &c.targets {
                if !d.served.is_empty() {
                    let names: Vec<&str> = t.domains.iter().map(DnsName::as_str).collect();
                    assert_eq!(names, [MAIL, "smtp.example.test"], "{what}");
                }
            }
        }
    }

    #[test]
    fn verify_entries_follow_the_listening_ports_and_shared_files_verify_both_servers() {
        use KeyTypeHint::*;
        let d = Discovered {
            postfix: Some(postfix(
                vec![slot("/t/k.pem", "/t/c.pem", Rsa)],
                PostfixParams::Legacy,
            )),
            dovecot: Some(dovecot(file_pair("/t/c.pem", "/t/k.pem"), None)),
            served: vec![served("/t/c.pem", Rsa, "aa")],
            ..discovered()
        };
        let c = load(&render(&d));
        let got: Vec<(&str, VerifyProtocol)> = c.targets[0]
            .verify
            .iter()
            .map(|v| (v.address.as_str(), v.protocol))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:25", VerifyProtocol::Smtp),
                ("127.0.0.1:465", VerifyProtocol::Tls),
                ("192.0.2.7:143", VerifyProtocol::Imap),
                ("127.0.0.1:993", VerifyProtocol::Tls),
            ]
        );
        for (address, want) in [
            (None, "127.0.0.1:587"),
            (Some("*"), "127.0.0.1:587"),
            (Some("*, ::"), "127.0.0.1:587"),
            (Some("::"), "[::1]:587"),
            (Some("::1"), "[::1]:587"),
            (Some("[::1]"), "[::1]:587"),
            (Some("10.0.0.1 10.0.0.2"), "10.0.0.1:587"),
        ] {
            assert_eq!(verify_address(address, 587), want, "{address:?}");
        }
    }

    /// The lines of a table written commented out, with their `# ` taken
    /// away (comments of prose stay comments).
    fn uncomment(text: &str) -> String {
        let keys = [
            "[[target]]",
            "[target.",
            "name =",
            "domains =",
            "key_type =",
            "fullchain =",
            "key =",
            "combined =",
            "reload =",
            "verify =",
            "  {",
            "]",
            "[dkim]",
            "[[dkim.adopt]]",
            "dns =",
            "signer",
            "from =",
            "path =",
        ];
        text.lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn files_in_certbots_tree_are_never_targets_and_the_commented_target_points_at_mxkeys_files() {
        use KeyTypeHint::*;
        let le = "/etc/letsencrypt/live/mail";
        let d = Discovered {
            postfix: Some(postfix(
                vec![slot(
                    &format!("{le}/privkey.pem"),
                    &format!("{le}/fullchain.pem"),
                    Unknown,
                )],
                PostfixParams::Legacy,
            )),
            // A Certbot directory elsewhere, known from the source found.
            dovecot: Some(dovecot(file_pair("/srv/le/archive/m/c1.pem", "/t/k"), None)),
            served: vec![served(&format!("{le}/fullchain.pem"), Ecdsa, "aa")],
            sources: vec![FoundSource {
                kind: FoundKind::Certbot,
                path: p("/srv/le"),
                certs: vec![],
                notes: vec![],
            }],
            ..discovered()
        };
        let text = render(&d);
        assert!(load(&text).targets.is_empty(), "{text}");
        assert!(
            text.contains("`postconf -e 'smtpd_tls_chain_files = /etc/mxkeys/tls/postfix.key, /etc/mxkeys/tls/postfix.crt'`"),
            "{text}"
        );
        assert!(
            text.contains(
                "ssl_cert = </etc/mxkeys/tls/dovecot.crt  ssl_key = </etc/mxkeys/tls/dovecot.key"
            ),
            "{text}"
        );
        // Taken out of their comments, the targets load and write only
        // mxkeys' files.
        let c = load(&uncomment(&text));
        let files: Vec<&TargetFiles> = c
            .targets
            .iter()
            .flat_map(|t| t.slots.iter().map(|s| &s.files))
            .collect();
        assert_eq!(
            files,
            [
                &split("/etc/mxkeys/tls/postfix.crt", "/etc/mxkeys/tls/postfix.key"),
                &split("/etc/mxkeys/tls/dovecot.crt", "/etc/mxkeys/tls/dovecot.key"),
            ]
        );
        assert_eq!(c.targets[0].slots[0].key_type, KeyTypeFilter::Ecdsa);
    }

    fn found_cert(sha: &str, reuse_key: Option<bool>) -> FoundCert {
        FoundCert {
            label: "mail".to_owned(),
            names: vec![MAIL.to_owned()],
            key_type: KeyTypeHint::Ecdsa,
            not_after: 2_000_000_000,
            sha256: sha.to_owned(),
            reuse_key,
        }
    }

    #[test]
    fn every_store_found_is_a_source_and_a_served_certificate_no_source_holds_is_said() {
        let d = Discovered {
            postfix: Some(postfix(
                vec![slot("/t/a.pem", "/t/a.pem", KeyTypeHint::Ecdsa)],
                PostfixParams::ChainFiles,
            )),
            served: vec![served("/t/a.pem", KeyTypeHint::Ecdsa, "aa")],
            sources: vec![
                FoundSource {
                    kind: FoundKind::Certbot,
                    path: p("/etc/letsencrypt"),
                    certs: vec![found_cert("aa", Some(false))],
                    notes: vec!["renewal hook copies files:\nmxkeys replaces it".to_owned()],
                },
                FoundSource {
                    kind: FoundKind::Lego,
                    path: p("/etc/lego"),
                    certs: vec![],
                    notes: vec![],
                },
                FoundSource {
                    kind: FoundKind::Traefik,
                    path: p("/etc/traefik/acme.json"),
                    certs: vec![],
                    notes: vec![],
                },
            ],
            ..discovered()
        };
        let text = render(&d);
        let kinds: Vec<SourceKind> = load(&text).sources.into_iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SourceKind::Certbot {
                    path: p("/etc/letsencrypt")
                },
                SourceKind::Lego {
                    path: p("/etc/lego")
                },
                SourceKind::Traefik {
                    path: p("/etc/traefik/acme.json"),
                    resolvers: None
                },
            ]
        );
        assert!(!text.contains("no source found holds"), "{text}");
        assert!(text.contains("reuse_key = false"), "{text}");
        // The note's line break stays inside one comment.
        assert!(text.contains("# note: renewal hook copies files: mxkeys replaces it\n"));
        // Held by no source: said, with the file and fingerprint.
        let d = Discovered {
            sources: vec![],
            ..d
        };
        let text = render(&d);
        load(&text);
        assert!(
            text.contains(
                "# FILL IN: no source found holds the certificate /t/a.pem serves now (mail.example.test, smtp.example.test; sha256 aa)"
            ),
            "{text}"
        );
        assert!(text.contains("# FILL IN: no certificate store was found"));
    }

    fn dkim_found(signer: Signer, domains: &[&str]) -> FoundDkim {
        FoundDkim {
            signer,
            signer_dir: p("/etc/opendkim"),
            adopt: vec![Adopt {
                from: AdoptFrom::Opendkim(p("/etc/opendkim.conf")),
                check: AdoptCheck::Dns,
            }],
            keys: domains
                .iter()
                .map(|d| FoundKey {
                    domain: DnsName::parse(d).unwrap(),
                    selector: "default".to_owned(),
                    algorithm: crate::config::DkimAlgorithm::Rsa2048,
                    key_file: p("/etc/dkimkeys/default.private"),
                })
                .collect(),
            reload: None,
            reload_signal: Some((p("/run/opendkim/opendkim.pid"), "USR1".to_owned())),
            notes: vec![],
        }
    }

    #[test]
    fn a_dkim_signer_found_is_adopted_and_what_cannot_be_decided_is_a_fill_in_comment() {
        let mut rspamd = dkim_found(Signer::Rspamd, &["example.org"]);
        rspamd.signer_dir = p("/etc/rspamd/local.d");
        rspamd.adopt.push(Adopt {
            from: AdoptFrom::Key {
                file: p("/k.pem"),
                domain: DnsName::parse("example.net").unwrap(),
                selector: "s1".to_owned(),
            },
            check: AdoptCheck::None,
        });
        let d = Discovered {
            dkim: vec![
                dkim_found(Signer::Opendkim, &["example.test", "example.com"]),
                rspamd.clone(),
            ],
            ..discovered()
        };
        let text = render(&d);
        let k = load(&text).dkim.expect("[dkim]");
        let domains: Vec<&str> = k.domains.iter().map(DnsName::as_str).collect();
        assert_eq!(domains, ["example.com", "example.test"]);
        assert_eq!((k.signer, k.dns.as_str()), (Signer::Opendkim, "manual"));
        assert_eq!(
            k.adopt,
            [Adopt {
                from: AdoptFrom::Opendkim(p("/etc/opendkim.conf")),
                check: AdoptCheck::Dns
            }]
        );
        assert_eq!(
            k.reload,
            [Reload::Signal {
                pidfile: p("/run/opendkim/opendkim.pid"),
                signal: nix::sys::signal::Signal::SIGUSR1
            }]
        );
        assert!(text.contains("# FILL IN: rspamd signs here too"), "{text}");
        assert!(text.contains("# FILL IN: dns = "), "{text}");
        // The adopt entries of every layout load, their domains with them.
        let d = Discovered {
            dkim: vec![rspamd],
            ..discovered()
        };
        let k = load(&render(&d)).dkim.expect("[dkim]");
        assert_eq!(k.adopt.len(), 2);
        assert_eq!(k.adopt[1].check, AdoptCheck::None);
        assert_eq!(k.domains.len(), 2);
        // No key found: no domains to sign, so the table waits commented
        // out (and loads once filled in).
        let mut bare = dkim_found(Signer::Opendkim, &[]);
        bare.reload_signal = None;
        let d = Discovered {
            dkim: vec![bare],
            ..discovered()
        };
        let text = render(&d);
        assert!(load(&text).dkim.is_none(), "{text}");
        assert!(text.contains("# FILL IN: domains = "), "{text}");
        assert!(text.contains("# FILL IN: reload = [...]"), "{text}");
        let filled = uncomment(&text).replace("[dkim]\n", "[dkim]\ndomains = [\"example.com\"]\n");
        assert_eq!(load(&filled).dkim.expect("[dkim]").signer, Signer::Opendkim);
    }

    #[test]
    fn nothing_found_still_loads_and_says_what_to_fill_in() {
        let d = Discovered {
            problems: vec!["Postfix: postconf: fatal:\nno main.cf".to_owned()],
            ..Discovered::default()
        };
        let text = render(&d);
        let c = load(&text);
        assert!(c.targets.is_empty() && c.sources.is_empty() && c.dkim.is_none());
        for needle in [
            "# FILL IN: hostname = ",
            "# - Postfix: postconf: fatal: no main.cf\n",
            "# FILL IN: no server reads a certificate file",
            "# state_dir = \"/var/lib/mxkeys\" (the default)",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        // An unreadable served certificate: no `domains`, a comment instead.
        let d = Discovered {
            postfix: Some(postfix(
                vec![slot("/t/a.pem", "/t/a.pem", KeyTypeHint::Rsa)],
                PostfixParams::ChainFiles,
            )),
            ..discovered()
        };
        let text = render(&d);
        let t = &load(&text).targets[0];
        assert_eq!(t.domains[0].as_str(), MAIL);
        assert!(text.contains("# FILL IN: domains = "), "{text}");
    }

    #[test]
    fn what_a_target_cannot_hold_is_a_fill_in_comment_and_the_rest_still_loads() {
        use KeyTypeHint::*;
        let mut pf = postfix(
            vec![
                slot("/t/r.pem", "/t/r.pem", Rsa),
                slot("/t/e.pem", "/t/e.pem", Ecdsa),
                slot("/t/x.pem", "/t/x.pem", Ed25519),
            ],
            PostfixParams::ChainFiles,
        );
        pf.own_files = vec!["submission".to_owned()];
        let mut dv = dovecot(
            Some(DovecotPair {
                cert: DovecotSource::Inline,
                key: DovecotSource::Inline,
            }),
            None,
        );
        dv.scoped = vec!["local_name imap.example.test".to_owned()];
        dv.ports.push(Listener {
            service: "lmtp/lmtps".to_owned(),
            address: None,
            port: None,
            tls: TlsMode::Implicit,
        });
        let d = Discovered {
            postfix: Some(pf),
            dovecot: Some(dv),
            ..discovered()
        };
        let text = render(&d);
        let c = load(&text);
        // Postfix: the first of its three certificates; Dovecot: none.
        assert_eq!(c.targets.len(), 1, "{text}");
        assert_eq!(c.targets[0].slots[0].files, combined("/t/r.pem"));
        for needle in [
            "# FILL IN: Postfix serves 3 certificates (/t/r.pem (rsa), /t/e.pem (ecdsa), /t/x.pem (ed25519))",
            "# FILL IN: Postfix service \"submission\" (master.cf) sets certificate files of its own",
            "# FILL IN: Dovecot's block `local_name imap.example.test` sets a certificate of its own",
            "# FILL IN: Dovecot's ssl_cert (or its key) is written inline",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
        // Two slots of one key type are not a dual target either.
        let d = Discovered {
            postfix: Some(postfix(
                vec![
                    slot("/t/a.pem", "/t/a.pem", Rsa),
                    slot("/t/b.pem", "/t/b.pem", Rsa),
                ],
                PostfixParams::ChainFiles,
            )),
            ..discovered()
        };
        let text = render(&d);
        assert_eq!(load(&text).targets[0].slots.len(), 1, "{text}");
        assert!(
            text.contains("# FILL IN: Postfix serves 2 certificates"),
            "{text}"
        );
    }
}

//! The command line: parsing, logging set-up, dispatch, and exit statuses.
//!
//! Exit statuses: 0 when everything worked; 1 when a source could not be
//! read, a target could not be served, or a write or reload failed; 2 for a
//! bad command line or configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::config::{self, ConfigSource};
use crate::pipeline::{self, Action, Mode, Report};
use crate::status::Status;

#[derive(Debug, Parser)]
#[command(
    name = "mxkeys",
    version,
    about = "Keeps a mail server's TLS certificates valid and live"
)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, env = "MXKEYS_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,

    /// More detail: -v explains every refused candidate, -vv traces.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum DkimCommand {
    /// Advance every due transition now; start a successor where a domain
    /// has no key or its rotation is due (--force: now).
    Rotate {
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Every key per domain: selector, algorithm, state, since, next transition.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The records mxkeys wants published now, as zone-file lines.
    Records,
    /// Adopt an existing private key as the active key (its record must
    /// already be published and is verified first): one key with
    /// --domain and --selector (waits for its record), or every key of a
    /// signer's layout with --from (one look at DNS: a record that does not
    /// match is reported, the key not adopted; exit status 1).
    Import {
        /// The key's domain; with --from, only keys of this domain (and
        /// the domain of `dir` keys).
        #[arg(long, required_unless_present = "from")]
        domain: Option<String>,
        #[arg(long, required_unless_present = "from", conflicts_with = "from")]
        selector: Option<String>,
        /// Read every key of this layout from FILE_OR_DIR.
        #[arg(long, value_enum)]
        from: Option<ImportFrom>,
        /// With --from: `none` adopts without looking at DNS (the record to
        /// publish is logged).
        #[arg(long, value_enum, requires = "from")]
        check: Option<ImportCheck>,
        /// The private key (PEM), or with --from the layout's file or
        /// directory.
        #[arg(value_name = "FILE_OR_DIR")]
        file: PathBuf,
    },
    /// Emergency: take a key out of the signer, reload it, then publish
    /// its empty `p=` record, and bring a successor to signing. Revoking
    /// the only key of a family signing for the domain is refused (exit
    /// status 2) without `--force`.
    Revoke {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// Revoke even the only key of its family signing for the domain
        /// (the domain goes without that signature until a successor signs).
        #[arg(long)]
        force: bool,
    },
}

/// The layouts `dkim import --from` reads (`dkim::adopt`).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportFrom {
    /// An OpenDKIM KeyTable or opendkim.conf.
    Opendkim,
    /// Rspamd's dkim_signing.conf.
    Rspamd,
    /// amavis' dkim_key(...) lines: a file or a directory of them.
    Amavis,
    /// docker-mailserver's config directory.
    Dms,
    /// A directory of opendkim-genkey output.
    Dir,
}

/// `dkim import --check`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ImportCheck {
    /// One look at every authoritative server (the default).
    Dns,
    /// No DNS lookup.
    None,
}

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Write a probe TXT record through a provider, wait until every
    /// authoritative server answers it, remove it; print each step's time.
    Test {
        /// The `[dns.NAME]` provider to test.
        provider: String,
        /// The probe record's name. Default: _mxkeys-probe.ZONE.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the CNAMEs a delegating provider (`delegate_to`) needs in the
    /// user's zones, as zone-file lines, then check each on every
    /// authoritative server: ok, missing, wrong, or unsigned (a TLSA name
    /// needs both zones DNSSEC-signed). Exit 1 unless all are ok, 2 for an
    /// unknown provider or one without delegate_to.
    Delegation {
        /// Only this `[dns.NAME]` provider (default: every delegating one).
        provider: Option<String>,
        /// Only print the CNAMEs; ask no DNS server.
        #[arg(long)]
        no_check: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DaneCommand {
    /// Per DANE target and owner name: the records published, what each
    /// stands for (installed, candidate, standby), since when it is seen
    /// signed everywhere and when it is aged; the gate's last decision.
    Status,
    /// Connect to every DANE host and port like a DANE sender: match each
    /// address's chain against the DNSSEC-validated TLSA records. Exit 1 on
    /// any mismatch, unvalidated answer or unreachable address.
    Check {
        /// Only this target (default: every target with `[target.dane]`).
        target: Option<String>,
    },
    /// Roll a DANE target's key over to the standby key of the acme
    /// sources serving it (its TLSA record is published already): recorded
    /// at once (a stopped run keeps it), ordered now, then synced. Exit
    /// status 2 for a target without DANE or served by no acme source.
    Rollover {
        /// The `[[target]]` name.
        target: String,
    },
}

#[derive(Debug, Subcommand)]
enum MtaStsCommand {
    /// Print the policy body to serve and the `_mta-sts` and `_smtp._tls`
    /// TXT records to publish (zone-file lines), as mxkeys computes them.
    /// Exit 2 when neither table is configured or `mx` is not set.
    Records,
    /// Per policy domain: the policy live everywhere, the id published,
    /// the next step and any refusal of enforce, from the ledger (no
    /// network); the TLS-RPT sessions senders reported. Exit 2 when
    /// neither table is configured.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Look now as senders look: the `_mta-sts` id on every authoritative
    /// server, the body every responder serves (fetched over HTTPS, its
    /// certificate validated), each MX host's STARTTLS certificate. One
    /// line per disagreement; exit 1 when any, 2 without `[mta_sts]`.
    Check,
    /// Withdraw a domain's policy (RFC 8461 §8.3): publish `mode: none`
    /// with a short max_age, then delete the records once every policy
    /// served before may have expired. Exit 2 for a domain that is not an
    /// `[mta_sts]` domain.
    Disable {
        /// The policy domain.
        domain: String,
    },
    /// Undo `disable`: serve and publish the configured policy again, with
    /// its own id (the same order as any policy change). Exit 2 for a
    /// domain that is not an `[mta_sts]` domain.
    Enable {
        /// The policy domain.
        domain: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read every source, install what changed, reload what is affected.
    Sync,
    /// Read and select like sync, print the plan; write and run nothing.
    Check,
    /// Order what `acme` sources need (or everything, with --force), then
    /// sync. For timers; `run` schedules renewals itself.
    Renew {
        /// Order now, whatever the schedule or a previous failure says.
        #[arg(long)]
        force: bool,
        /// Only this `acme` source.
        #[arg(long)]
        source: Option<String>,
    },
    /// Run as a daemon: reconcile at start, on every source change, and
    /// periodically; SIGHUP re-reads the configuration.
    Run,
    /// Print the configuration in use as TOML (useful in container mode,
    /// where it is built from the environment).
    Config,
    /// DKIM keys: rotation, status, records, import, revocation.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// DANE: TLSA records of the targets with `[target.dane]`.
    Dane {
        #[command(subcommand)]
        command: DaneCommand,
    },
    /// MTA-STS and TLS-RPT (`[mta_sts]`, `[tls_rpt]`).
    #[command(name = "mta-sts")]
    MtaSts {
        #[command(subcommand)]
        command: MtaStsCommand,
    },
    /// DNS providers.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Show what each target holds now.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also write the status as one self-contained HTML page (no
        /// scripts, no external assets) to FILE, replaced atomically,
        /// mode 0644: the page [metrics] serves at GET /status.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Look at this host (Postfix, Dovecot, Certbot, lego, Traefik, DKIM
    /// signers) and print a commented configuration that takes it over as
    /// it is; --write creates the --config file instead. Needs no
    /// configuration; what it cannot decide is a `# FILL IN:` comment.
    Init(InitArgs),
    /// Write the man pages or the shell completions (for packagers).
    #[command(hide = true, subcommand)]
    Generate(GenerateCommand),
}

/// `mxkeys generate`: documentation built from these definitions
/// (`crate::docs`), written at package build time.
#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// mxkeys.1, one mxkeys-COMMAND.1 per subcommand, and mxkeys.toml.5.
    Man {
        /// The directory to write the pages in (created if missing).
        dir: PathBuf,
    },
    /// mxkeys.bash, _mxkeys (zsh) and mxkeys.fish.
    Completions {
        /// The directory to write the scripts in (created if missing).
        dir: PathBuf,
    },
}

/// The command-line definition, for the man pages and completions.
pub fn command() -> clap::Command {
    Cli::command()
}

/// `mxkeys init`'s options: where to look (each default is the usual
/// place on a Debian host) and whether to write.
#[derive(Debug, clap::Args)]
struct InitArgs {
    /// Create the --config file (mode 0644; its directory must exist)
    /// instead of printing; an existing file is not replaced.
    #[arg(long)]
    write: bool,
    /// With --write: replace an existing file (atomically).
    #[arg(long, requires = "write")]
    force: bool,
    /// A Traefik acme.json (repeatable). Default: the usual places that exist.
    #[arg(long, value_name = "FILE")]
    acme_json: Vec<PathBuf>,
    /// Certbot's configuration directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/letsencrypt")]
    letsencrypt: PathBuf,
    /// A lego --path directory (repeatable). Default: /etc/lego,
    /// /var/lib/lego, /root/.lego, ./.lego, those that exist.
    #[arg(long, value_name = "DIR")]
    lego: Vec<PathBuf>,
    /// Postfix's configuration directory (postconf -c). Default: Postfix's.
    #[arg(long, value_name = "DIR", conflicts_with = "no_postfix")]
    postfix_config: Option<PathBuf>,
    /// Do not look at Postfix.
    #[arg(long)]
    no_postfix: bool,
    /// Dovecot's configuration file (doveconf -c). Default: Dovecot's.
    #[arg(long, value_name = "FILE", conflicts_with = "no_dovecot")]
    dovecot_config: Option<PathBuf>,
    /// Do not look at Dovecot.
    #[arg(long)]
    no_dovecot: bool,
    /// OpenDKIM's configuration.
    #[arg(long, value_name = "FILE", default_value = "/etc/opendkim.conf")]
    opendkim_config: PathBuf,
    /// Rspamd's dkim_signing.conf.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/rspamd/local.d/dkim_signing.conf"
    )]
    rspamd_config: PathBuf,
    /// amavis' configuration (a file, or a directory of them).
    #[arg(long, value_name = "PATH", default_value = "/etc/amavis/conf.d")]
    amavis_config: PathBuf,
    /// docker-mailserver's `config` directory.
    #[arg(long, value_name = "DIR")]
    dms: Option<PathBuf>,
    /// `state_dir` to write. Default: mxkeys' default.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// `hostname` to write. Default: this host's name.
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
}

/// Runs mxkeys with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    // init works where there is no configuration yet.
    if let Command::Init(args) = &cli.command {
        return init(&cli.config, args);
    }
    if let Command::Generate(what) = &cli.command {
        let written = match what {
            GenerateCommand::Man { dir } => crate::docs::write_man_pages(dir),
            GenerateCommand::Completions { dir } => crate::docs::write_completions(dir),
        };
        return match written {
            Ok(files) => {
                for file in files {
                    println!("{}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("generate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let loaded = ConfigSource::choose(&cli.config).and_then(|source| {
        let config = source.load(&config::Host::current())?;
        Ok((source, config))
    });
    let (source, config) = match loaded {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Sync => {
            // Shared certificates: what the cluster holds first.
            let mirror_ok = cluster_mirror(&config);
            // DANE: publish the next key's record before the reconcile,
            // retire the old one after it (once the new key is served).
            dane_pass(&config);
            let report = pipeline::reconcile(&config, Mode::Apply);
            for (_, warning) in report.expiring(config.daemon.expiry_warning, crate::now()) {
                tracing::warn!("{warning}");
            }
            let dane_ok = dane_pass(&config);
            let mta_sts_ok = mta_sts_pass(&config).is_none_or(|p| p.problems.is_empty());
            let dkim_ok = dkim_sync_pass(&config);
            if dane_ok && mta_sts_ok && dkim_ok && mirror_ok {
                exit(&report)
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Run => crate::daemon::run(source, config),
        Command::Renew { force, source } => renew(&config, force, source.as_deref()),
        Command::Dns {
            command: DnsCommand::Test { provider, name },
        } => dns_test(&config, &provider, name.as_deref()),
        Command::Dns {
            command: DnsCommand::Delegation { provider, no_check },
        } => dns_delegation(&config, provider.as_deref(), no_check),
        Command::Dkim { command } => dkim(&config, command),
        Command::Dane {
            command: DaneCommand::Status,
        } => match crate::dane::status_text(&config, crate::now()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("dane status: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dane {
            command: DaneCommand::Check { target },
        } => dane_check(&config, target.as_deref()),
        Command::Dane {
            command: DaneCommand::Rollover { target },
        } => dane_rollover(&config, &target),
        Command::MtaSts {
            command: MtaStsCommand::Records,
        } => {
            match crate::mta_sts::records::render(config.mta_sts.as_ref(), config.tls_rpt.as_ref())
            {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("mta-sts records: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::MtaSts {
            command: MtaStsCommand::Status { json },
        } => mta_sts_status(&config, json),
        Command::MtaSts {
            command: MtaStsCommand::Check,
        } => mta_sts_check(&config),
        Command::MtaSts {
            command: MtaStsCommand::Disable { domain },
        } => mta_sts_disable(&config, &domain),
        Command::MtaSts {
            command: MtaStsCommand::Enable { domain },
        } => mta_sts_enable(&config, &domain),
        Command::Config => match source.text() {
            Ok(text) => {
                println!("# configuration from {source}");
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Check => {
            let report = pipeline::reconcile(&config, Mode::Check);
            print!("{}", plan_text(&report));
            for line in crate::daemon::mta_sts::check_lines(&config) {
                println!("{line}");
            }
            if let Some(line) = crate::dkim::signer_notice(&config) {
                println!("dkim: {line}");
            }
            exit(&report)
        }
        Command::Status { json, html } => {
            let status = Status::gather(&config);
            if let Some(file) = html {
                let page = crate::status::html::render(&status);
                if let Err(e) = crate::install::write_atomic(&file, page.as_bytes(), 0o644, None) {
                    tracing::error!("{}: cannot write the status page: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            }
            if !print_status(&status, json, || status.to_text()) {
                return ExitCode::FAILURE;
            }
            if status.healthy() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Init(_) | Command::Generate(_) => {
            unreachable!("init and generate run before the configuration is loaded")
        }
    }
}

fn dkim(config: &config::Config, command: DkimCommand) -> ExitCode {
    if config.dkim.is_none() {
        tracing::error!("configuration {}: no [dkim] table", config.path.display());
        return ExitCode::from(2);
    }
    let print_pass = |pass: crate::dkim::Pass| {
        for line in &pass.done {
            println!("{line}");
        }
        for line in &pass.waiting {
            println!("waiting: {line}");
        }
        if pass.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    };
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let result = match command {
        DkimCommand::Rotate { domain, force } => rt
            .block_on(crate::dkim::rotate(config, domain.as_deref(), force))
            .map(print_pass),
        DkimCommand::Revoke {
            domain,
            selector,
            force,
        } => {
            // KEY_DIR is checked before DNS changes, as at each pass.
            let key_dir = config.dkim.as_ref().map(|d| d.key_dir.as_path());
            if let Some(Err(e)) = key_dir.map(crate::dkim::keydir::open_key_dir) {
                tracing::error!("dkim: {e}");
                return ExitCode::FAILURE;
            }
            match rt.block_on(crate::dkim::revoke(config, &domain, &selector, force)) {
                Ok(pass) => Ok(print_pass(pass)),
                Err(e @ crate::dkim::RevokeError::OnlyKey { .. }) => {
                    tracing::error!("dkim: {e}");
                    return ExitCode::from(2);
                }
                Err(crate::dkim::RevokeError::Failed(e)) => Err(e),
            }
        }
        DkimCommand::Import {
            domain,
            selector: _,
            from: Some(from),
            check,
            file,
        } => {
            import_from(config, &rt, from, check, domain.as_deref(), file)
        }
        DkimCommand::Import {
            domain: Some(domain),
            selector: Some(selector),
            from: None,
            file,
            ..
        } => {
            // Checked before anything is read or written: the selector goes
            // into file paths and the signer's configuration.
            if let Err(e) = config::selector_label(&selector) {
                tracing::error!("dkim import: {e}");
                return ExitCode::from(2);
            }
            rt
            .block_on(crate::dkim::import(config, &domain, &selector, &file))
            .map(|line| {
                println!("{line}");
                ExitCode::SUCCESS
            })
        }
        DkimCommand::Import { .. } => {
            tracing::error!("dkim import: give --domain and --selector, or --from");
            return ExitCode::from(2);
        }
        DkimCommand::Records => crate::dkim::records(config).map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        DkimCommand::Status { json } => crate::dkim::status(config).map(|keys| {
            // A signer file not written by mxkeys: import its keys first.
            let notice = crate::dkim::signer_notice(config);
            if let (Some(line), true) = (&notice, json) {
                tracing::warn!("dkim: {line}");
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keys).unwrap_or_default()
                );
            } else {
                for k in &keys {
                    println!(
                        "{} {} {} {} since {}{}",
                        k.domain,
                        k.selector,
                        k.algorithm,
                        k.state,
                        k.since,
                        match (&k.next, &k.next_at) {
                            (Some(what), Some(at)) => format!("; next: {what} at {at}"),
                            _ => String::new(),
                        }
                    );
                }
            }
            if let (Some(line), false) = (&notice, json) {
                println!("{line}");
            }
            if !json && crate::dkim::health(config).reload_pending {
                println!("signer reload pending: retried within a minute by `mxkeys run`, or by the next `mxkeys dkim rotate`");
            }
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| {
        tracing::error!("dkim: {e}");
        ExitCode::FAILURE
    })
}

/// `sync`'s DKIM pass, with `[[dkim.adopt]]` entries only (a host being
/// taken over: its keys adopted, the signer's files taken over): adopts
/// and does what is due. Whether it had no error.
fn dkim_sync_pass(config: &config::Config) -> bool {
    if config.dkim.as_ref().is_none_or(|d| d.adopt.is_empty()) {
        return true;
    }
    let Some(rt) = crate::runtime() else {
        return false;
    };
    match rt.block_on(crate::dkim::rotate(config, None, false)) {
        Ok(pass) => {
            for line in pass.done.iter().chain(&pass.waiting) {
                println!("dkim: {line}");
            }
            pass.errors.is_empty()
        }
        Err(e) => {
            tracing::error!("dkim: {e}");
            false
        }
    }
}

/// `mxkeys dkim import --from LAYOUT PATH`: one line per key; exit 1 when
/// one was not adopted, 2 for a domain not configured.
fn import_from(
    config: &config::Config,
    rt: &tokio::runtime::Runtime,
    from: ImportFrom,
    check: Option<ImportCheck>,
    domain: Option<&str>,
    path: PathBuf,
) -> Result<ExitCode, crate::dkim::DkimError> {
    use crate::config::{AdoptCheck, AdoptFrom};
    let dir_domain = match (from, domain) {
        (ImportFrom::Dir, Some(d)) => match crate::names::DnsName::parse(d) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!("dkim import: --domain: {e}");
                return Ok(ExitCode::from(2));
            }
        },
        _ => None,
    };
    let from = match from {
        ImportFrom::Opendkim => AdoptFrom::Opendkim(path),
        ImportFrom::Rspamd => AdoptFrom::Rspamd(path),
        ImportFrom::Amavis => AdoptFrom::Amavis(path),
        ImportFrom::Dms => AdoptFrom::Dms(path),
        ImportFrom::Dir => AdoptFrom::Dir {
            dir: path,
            domain: dir_domain,
        },
    };
    let check = match check {
        Some(ImportCheck::None) => AdoptCheck::None,
        _ => AdoptCheck::Dns,
    };
    match rt.block_on(crate::dkim::import_from(config, &from, domain, check)) {
        Ok(lines) => {
            for l in &lines {
                println!("{}", l.line);
            }
            if lines.is_empty() {
                tracing::error!("dkim import: no key found");
            }
            Ok(if !lines.is_empty() && lines.iter().all(|l| l.adopted) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e @ crate::dkim::DkimError::UnknownDomain(_)) => {
            tracing::error!("dkim import: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e),
    }
}

/// The cluster of a configuration with `[cluster]`, connected; `None`
/// without one, or (one error line) when it cannot be reached: shared
/// sources are then not ordered and everything installed stays.
fn cluster_ctx(
    config: &config::Config,
    runtime: &tokio::runtime::Runtime,
) -> Option<crate::cluster::acme::Ctx> {
    match runtime.block_on(crate::cluster::acme::Ctx::connect(config)) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::error!("{e}; shared certificates wait, everything installed stays");
            None
        }
    }
}

/// `sync` with `[cluster]`: installs into each shared source what the
/// cluster holds when better. Whether it had no problem.
fn cluster_mirror(config: &config::Config) -> bool {
    if config.cluster.is_none() || !config.acme_sources().any(|s| s.shared) {
        return true;
    }
    let Some(runtime) = crate::runtime() else {
        return false;
    };
    let Some(ctx) = cluster_ctx(config, &runtime) else {
        return false;
    };
    let mirrored = runtime.block_on(crate::cluster::acme::mirror(config, &ctx.store, &ctx.seal));
    for line in &mirrored.installed {
        println!("{line}");
    }
    mirrored.problems.is_empty()
}

/// `mxkeys renew`: orders what is due, then syncs. Exit 0 when every
/// target is served and no `acme` source is failing while its certificate
/// is missing or within its renewal window; a source that merely backs off
/// with a healthy certificate does not fail it.
fn renew(config: &config::Config, force: bool, only: Option<&str>) -> ExitCode {
    let Some(runtime) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let mut failing = false;
    let cluster = cluster_ctx(config, &runtime);
    match runtime.block_on(crate::acme::renew_with(
        config,
        force,
        only,
        cluster.as_ref(),
    )) {
        Ok(outcomes) => {
            for o in &outcomes {
                println!("{}", crate::acme::describe(o));
            }
            failing = crate::acme::failing(&outcomes);
        }
        Err(e) => {
            tracing::error!("renew: {e}");
            if matches!(e, crate::acme::AcmeError::UnknownSource { .. }) {
                return ExitCode::from(2);
            }
        }
    }
    // renew does a DKIM pass too.
    if config.dkim.is_some() {
        match runtime.block_on(crate::dkim::rotate(config, None, false)) {
            Ok(pass) => {
                for line in pass.done.iter().chain(&pass.waiting) {
                    println!("dkim: {line}");
                }
            }
            Err(e) => tracing::error!("dkim: {e}"),
        }
    }
    let report = pipeline::reconcile(config, Mode::Apply);
    for (_, warning) in report.expiring(config.daemon.expiry_warning, crate::now()) {
        tracing::warn!("{warning}");
    }
    if failing {
        tracing::error!(
            "renew: an acme source is failing and its certificate is missing or due for renewal"
        );
        return ExitCode::FAILURE;
    }
    exit(&report)
}

/// `mxkeys dane rollover TARGET`: records the request on every acme source
/// serving the target, orders their certificates for the standby keys,
/// then syncs. Exit 1 when a source did not roll over (its request stays
/// for the next pass).
fn dane_rollover(config: &config::Config, target: &str) -> ExitCode {
    use crate::acme::RolloverError;
    let sources = match crate::acme::standby::request(config, target) {
        Ok(sources) => sources,
        Err(e @ (RolloverError::UnknownTarget { .. } | RolloverError::NotServed(_))) => {
            tracing::error!("dane rollover: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            tracing::error!("dane rollover: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(runtime) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let mut rolled = true;
    let cluster = cluster_ctx(config, &runtime);
    for source in &sources {
        println!("dane rollover {target}: requested for acme source {source}");
        match runtime.block_on(crate::acme::renew_with(
            config,
            false,
            Some(source),
            cluster.as_ref(),
        )) {
            Ok(outcomes) => {
                for o in &outcomes {
                    println!("{}", crate::acme::describe(o));
                    rolled &= matches!(o.result, Some(Ok(_)));
                }
            }
            Err(e) => {
                tracing::error!("dane rollover: {e}");
                rolled = false;
            }
        }
    }
    let report = pipeline::reconcile(config, Mode::Apply);
    if !rolled {
        tracing::error!(
            "dane rollover {target}: not every source rolled over; the request stays for the next pass"
        );
        return ExitCode::FAILURE;
    }
    exit(&report)
}

fn dns_test(config: &config::Config, provider: &str, name: Option<&str>) -> ExitCode {
    let Some(cfg) = config.dns.get(provider) else {
        let known: Vec<&str> = config.dns.keys().map(String::as_str).collect();
        tracing::error!(
            "configuration {}: no [dns.{provider}] (configured: {})",
            config.path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(2);
    };
    let Some(runtime) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout();
    match runtime.block_on(crate::dns::test(cfg, name, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("dns test {provider}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mxkeys dns delegation [PROVIDER] [--no-check]`: the CNAMEs of each
/// delegating provider (or PROVIDER), then one status line per name.
fn dns_delegation(config: &config::Config, provider: Option<&str>, no_check: bool) -> ExitCode {
    let chosen: Vec<(&String, &config::DnsProvider)> = match provider {
        Some(name) => match config.dns.get_key_value(name) {
            Some((n, cfg)) if cfg.delegate_to.is_some() => vec![(n, cfg)],
            Some(_) => {
                tracing::error!(
                    "configuration {}: [dns.{name}] has no delegate_to",
                    config.path.display()
                );
                return ExitCode::from(2);
            }
            None => {
                tracing::error!("configuration {}: no [dns.{name}]", config.path.display());
                return ExitCode::from(2);
            }
        },
        None => config
            .dns
            .iter()
            .filter(|(_, cfg)| cfg.delegate_to.is_some())
            .collect(),
    };
    if chosen.is_empty() {
        tracing::error!(
            "configuration {}: no [dns.NAME] table has delegate_to",
            config.path.display()
        );
        return ExitCode::from(2);
    }
    let mut all = Vec::new();
    for (name, cfg) in &chosen {
        let zone = cfg.delegate_to.as_deref().unwrap_or_default();
        match crate::delegation::records(config, name) {
            Ok(records) => {
                print!("{}", crate::delegation::render(name, zone, &records));
                all.push((*cfg, records));
            }
            Err(e) => {
                tracing::error!("dns delegation {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if no_check {
        return ExitCode::SUCCESS;
    }
    let Some(runtime) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let mut ok = true;
    println!();
    for (cfg, records) in all {
        let prop = crate::dns::propagation(cfg);
        for d in records {
            match runtime.block_on(crate::delegation::check::delegated(&prop, &d)) {
                Ok(()) => println!("{:<8} {}", "ok", d.name),
                Err(e) => {
                    ok = false;
                    println!("{:<8} {e}", e.status());
                }
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One DANE pass (when a target has `[target.dane]`; it logs what it did);
/// false when it had problems (already logged).
fn dane_pass(config: &config::Config) -> bool {
    if !config.targets.iter().any(|t| t.dane.is_some()) {
        return true;
    }
    let Some(rt) = crate::runtime() else {
        return false;
    };
    rt.block_on(crate::dane::pass(config, crate::now()))
        .problems
        .is_empty()
}

/// One MTA-STS pass (when `[mta_sts]` or `[tls_rpt]` is set; the pass logs
/// its lines); `None` when there is nothing to do or no runtime.
fn mta_sts_pass(config: &config::Config) -> Option<crate::mta_sts::pass::MtaStsPass> {
    if config.mta_sts.is_none() && config.tls_rpt.is_none() {
        return None;
    }
    let rt = crate::runtime()?;
    Some(rt.block_on(crate::mta_sts::pass::pass(config, crate::now())))
}

/// `mxkeys mta-sts status`: the ledger and the plan at now, no network.
fn mta_sts_status(config: &config::Config, json: bool) -> ExitCode {
    let Some(status) = crate::status::MtaStsStatus::gather(config, crate::now()) else {
        tracing::error!(
            "configuration {}: no [mta_sts] or [tls_rpt] table",
            config.path.display()
        );
        return ExitCode::from(2);
    };
    if !print_status(&status, json, || status.to_text()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `mxkeys mta-sts disable DOMAIN`: marks the domain, runs one pass, says
/// what happens next.
/// Prints a status as JSON or as `text`; false (the error logged) when it
/// cannot be encoded.
fn print_status<T: serde::Serialize>(
    status: &T,
    json: bool,
    text: impl FnOnce() -> String,
) -> bool {
    if !json {
        print!("{}", text());
        return true;
    }
    match serde_json::to_string_pretty(status) {
        Ok(s) => {
            println!("{s}");
            true
        }
        Err(e) => {
            tracing::error!("cannot encode the status: {e}");
            false
        }
    }
}

/// `domain` when it is one of `[mta_sts] domains`; else the error line
/// for `mxkeys mta-sts WHAT` is logged.
fn mta_sts_domain(
    config: &config::Config,
    what: &str,
    domain: &str,
) -> Option<crate::names::DnsName> {
    let name = crate::names::DnsName::parse(domain).ok().filter(|d| {
        config
            .mta_sts
            .as_ref()
            .is_some_and(|m| m.domains.contains(d))
    });
    if name.is_none() {
        tracing::error!(
            "mta-sts {what}: {domain} is not a domain of [mta_sts] in {}",
            config.path.display()
        );
    }
    name
}

/// `mxkeys mta-sts enable DOMAIN`: clears `disable`, then one pass.
fn mta_sts_enable(config: &config::Config, domain: &str) -> ExitCode {
    let Some(name) = mta_sts_domain(config, "enable", domain) else {
        return ExitCode::from(2);
    };
    match crate::mta_sts::pass::enable(config, &name) {
        Ok(true) => println!(
            "mta-sts enable {name}: recorded; the configured policy is served and published again"
        ),
        Ok(false) => println!("mta-sts enable {name}: it was not disabled"),
        Err(e) => {
            tracing::error!("mta-sts enable {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let pass = mta_sts_pass(config);
    let plan = pass
        .iter()
        .flat_map(|p| &p.domains)
        .find(|d| d.domain == name.as_str())
        .and_then(|d| d.plan.as_ref());
    if let Some(plan) = plan {
        println!("mta-sts enable {name}: next: {}", plan.step);
    }
    if pass.is_some_and(|p| !p.problems.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn mta_sts_disable(config: &config::Config, domain: &str) -> ExitCode {
    let Some(name) = mta_sts_domain(config, "disable", domain) else {
        return ExitCode::from(2);
    };
    if let Err(e) = crate::mta_sts::pass::disable(config, &name) {
        tracing::error!("mta-sts disable {name}: {e}");
        return ExitCode::FAILURE;
    }
    println!("mta-sts disable {name}: recorded; the policy becomes mode none, then its records go");
    let pass = mta_sts_pass(config);
    for line in pass.iter().flat_map(|p| &p.done) {
        println!("{line}");
    }
    let plan = pass
        .iter()
        .flat_map(|p| &p.domains)
        .find(|d| d.domain == name.as_str())
        .and_then(|d| d.plan.as_ref());
    match plan.map(|p| &p.step) {
        Some(crate::mta_sts::order::Step::Wait {
            reason: crate::mta_sts::order::WaitReason::OldMaxAge { until },
            ..
        }) => println!(
            "mta-sts disable {name}: mode none is live; the records are deleted at {}",
            crate::rfc3339(*until)
        ),
        Some(step) => println!("mta-sts disable {name}: next: {step}"),
        None => println!(
            "mta-sts disable {name}: the next pass (`mxkeys sync` or the daemon) continues"
        ),
    }
    if pass.is_some_and(|p| !p.problems.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `mxkeys mta-sts check`: what senders see now against the policy
/// mxkeys serves (the plan from the ledger), one line each; exit 1 on any
/// disagreement, 2 without `[mta_sts]`.
fn mta_sts_check(config: &config::Config) -> ExitCode {
    let Some(m) = &config.mta_sts else {
        tracing::error!(
            "configuration {}: no [mta_sts] table",
            config.path.display()
        );
        return ExitCode::from(2);
    };
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let lines = rt.block_on(mta_sts_look(config, m));
    let mut bad = 0;
    for (ok, line) in &lines {
        if *ok {
            println!("{line}");
        } else {
            bad += 1;
            println!("DISAGREES {line}");
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        tracing::error!("mta-sts check: {bad} disagreements");
        ExitCode::FAILURE
    }
}

/// The lines of `mta-sts check`: (agrees, line).
async fn mta_sts_look(config: &config::Config, m: &config::MtaSts) -> Vec<(bool, String)> {
    use crate::mta_sts::{policy::Policy, probe};
    let mut out = Vec::new();
    let trust = match probe::Trust::new(m.ca_bundle.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            out.push((false, format!("mta-sts: trust roots: {e}")));
            return out;
        }
    };
    let prop = config.dns.get(&m.dns).map(crate::dns::propagation);
    let ledger = config
        .state_dir
        .mta_sts_record::<crate::mta_sts::ledger::Ledger>()
        .load()
        .ok()
        .flatten()
        .unwrap_or_default();
    let plans = crate::status::mta_sts_plans(config, &ledger, crate::now());
    for (domain, _, plan) in plans {
        let Ok(d) = crate::names::DnsName::parse(&domain) else {
            continue;
        };
        let want = &plan.policy.id;
        out.push((
            true,
            format!(
                "{d}: policy id {want}, mode {} (next step: {})",
                plan.policy.mode, plan.step
            ),
        ));
        if let Some(r) = &plan.refused {
            out.push((false, format!("{d}: {r}")));
        }
        if let Some(prop) = &prop {
            match probe::observe_ids(prop, &d).await {
                Ok(ids) => {
                    for v in ids {
                        let id = v.id.as_deref().unwrap_or("none");
                        out.push((
                            v.id.as_deref() == Some(want.as_str()),
                            format!("{d}: _mta-sts id on {}: {id}", v.server),
                        ));
                    }
                }
                Err(e) => out.push((false, format!("{d}: _mta-sts: {e}"))),
            }
        }
        match probe::responders(m, &d).await {
            Ok(responders) => {
                for at in responders {
                    let line = match probe::fetch_policy(at, &d, &trust).await {
                        Ok(body) => match Policy::parse(&body) {
                            Ok(p) if p.id() == *want => (true, format!("serves id {want}")),
                            Ok(p) => (false, format!("serves id {}, not {want}", p.id())),
                            Err(e) => (false, format!("serves a body that does not parse: {e}")),
                        },
                        Err(e) => (false, format!("fetch failed: {e}")),
                    };
                    out.push((line.0, format!("{d}: responder {at}: {}", line.1)));
                }
            }
            Err(e) => out.push((false, format!("{d}: responders: {e}"))),
        }
        if let Some(not_after) = mta_sts_cert_expiry(config, &d) {
            let left = (not_after - crate::now()).div_euclid(86_400);
            out.push((
                left >= 0,
                format!(
                    "{d}: certificate of mta-sts.{d} installed until {} ({left} days)",
                    crate::rfc3339(not_after)
                ),
            ));
        }
        if let Some(prop) = &prop {
            match probe::observe_mx(prop, &d).await {
                Ok(mx) => {
                    for host in &mx.hosts {
                        let line = match probe::starttls(host, &trust).await {
                            Ok(()) => (true, "STARTTLS certificate valid".to_owned()),
                            Err(e) => (false, format!("STARTTLS: {e}")),
                        };
                        out.push((line.0, format!("{d}: MX {host}: {}", line.1)));
                    }
                }
                Err(e) => out.push((false, format!("{d}: MX: {e}"))),
            }
        }
    }
    out
}

/// The notAfter of the certificate installed for `mta-sts.DOMAIN` by the
/// first target covering it (with `[mta_sts] listen`).
fn mta_sts_cert_expiry(config: &config::Config, domain: &crate::names::DnsName) -> Option<i64> {
    let name = crate::names::DnsName::parse(&format!("mta-sts.{domain}")).ok()?;
    let files = crate::daemon::mta_sts::responder_certs(config)
        .certs
        .into_iter()
        .find(|f| {
            f.names
                .iter()
                .any(|n| crate::names::covers(n.as_str(), &name).is_some())
        })?;
    let text = std::fs::read(&files.fullchain).ok()?;
    let certs = crate::cert::parse_pem_certs(&text).ok()?;
    let leaf = crate::cert::Leaf::parse(certs.first()?.as_ref()).ok()?;
    Some(leaf.validity.not_after)
}

/// `mxkeys dane check`: one line per host, port and address; exit 1 on any
/// failure, 2 when there is nothing to check (or no such DANE target).
fn dane_check(config: &config::Config, only: Option<&str>) -> ExitCode {
    let endpoints = match crate::dane::check::endpoints(config, only) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("dane check: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let checks = rt.block_on(crate::dane::check::check_all(&endpoints));
    for line in checks.iter().flat_map(|c| c.lines()) {
        println!("{line}");
    }
    let failed = checks.iter().filter(|c| !c.ok()).count();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        tracing::error!("dane check: {failed} of {} endpoints failed", checks.len());
        ExitCode::FAILURE
    }
}

/// `mxkeys init`: print the configuration, or write it (exit 2 when the
/// file exists and --force was not given, 1 when writing failed).
fn init(config: &std::path::Path, a: &InitArgs) -> ExitCode {
    use crate::init::{Look, render, run};
    let or_defaults = |given: &Vec<PathBuf>, defaults| {
        if given.is_empty() {
            run::existing(defaults)
        } else {
            given.clone()
        }
    };
    let look = Look {
        postfix_config: a.postfix_config.clone(),
        skip_postfix: a.no_postfix,
        dovecot_config: a.dovecot_config.clone(),
        skip_dovecot: a.no_dovecot,
        letsencrypt: a.letsencrypt.clone(),
        lego: or_defaults(&a.lego, run::DEFAULT_LEGO),
        acme_json: or_defaults(&a.acme_json, run::DEFAULT_ACME_JSON),
        opendkim_config: a.opendkim_config.clone(),
        rspamd_config: a.rspamd_config.clone(),
        amavis_config: a.amavis_config.clone(),
        dms: a.dms.clone(),
        state_dir: a.state_dir.clone(),
        hostname: a.hostname.clone(),
    };
    let text = render::render(&run::discover(&look));
    if !a.write {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    match run::write_config(config, &text, a.force) {
        Ok(()) => {
            tracing::info!(
                "wrote {}; `mxkeys -c {} check` prints its plan",
                config.display(),
                config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ run::WriteError::Exists(_)) => {
            tracing::error!("init: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!("init: {e}");
            ExitCode::FAILURE
        }
    }
}

fn exit(report: &Report) -> ExitCode {
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MXKEYS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("mxkeys={level},warn")));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false);
    // One-shot commands print bare lines; the daemon stamps them, except
    // under systemd, whose journal stamps them itself.
    let stamped =
        matches!(cli.command, Command::Run) && std::env::var_os("JOURNAL_STREAM").is_none();
    match (cli.log_format, stamped) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.init(),
        (LogFormat::Text, false) => builder.without_time().init(),
    }
}

/// The plan `check` prints: one line per target with its name and the
/// chosen certificate's fingerprint, then details.
fn plan_text(report: &Report) -> String {
    let mut out = String::new();
    for t in &report.targets {
        match &t.served {
            Some(s) => {
                let what = match &t.action {
                    Action::UpToDate => "up to date",
                    Action::Changed(_) => "would install",
                    Action::KeptInstalled => "keeps the installed certificate",
                    Action::Unserved(_) | Action::WriteFailed(_) => "cannot be served",
                    Action::RolledBack(_) => "was rolled back",
                    Action::Deferred(_) => "was refused by the service; retried later",
                    Action::Unconfirmed(_) => "was installed but its reload is owed",
                    Action::Held(_) => "keeps the installed certificate (DANE gate)",
                };
                out.push_str(&format!("{}: {} {what}\n", t.name, s.sha256));
                out.push_str(&format!(
                    "  from      {}{}\n",
                    s.origin,
                    if s.fallback {
                        " (self-signed fallback)"
                    } else {
                        ""
                    }
                ));
                out.push_str(&format!("  names     {}\n", s.names.join(", ")));
                out.push_str(&format!("  key       {}\n", s.key_type));
                out.push_str(&format!("  not after {}\n", crate::rfc3339(s.not_after)));
                if let Action::Changed(files) = &t.action {
                    for f in files {
                        out.push_str(&format!("  write     {}\n", f.display()));
                    }
                }
                if let Some(h) = t.held() {
                    out.push_str(&format!("  held      {h}\n"));
                }
            }
            None => {
                let why = t.action.why().unwrap_or_default();
                out.push_str(&format!("{}: no certificate: {why}\n", t.name));
            }
        }
        for (origin, why) in &t.refused {
            out.push_str(&format!("  refused   {origin}: {why}\n"));
        }
    }
    for r in &report.reloads {
        out.push_str(&format!("reload {}\n", r.action));
    }
    out.push_str(&format!(
        "{} candidates, {} source errors\n",
        report.candidates,
        report.errors.len()
    ));
    out
}

//! The top-level keys of `mxkeys run`: how it watches, how often it acts on
//! its own, where it serves metrics, how long it waits on SIGTERM.
//!
//! Pure: defaults are filled in and floors enforced (a poll or resync so
//! short it would spin is refused); nothing is watched or bound here.

use std::time::Duration;

use serde::Deserialize;

use super::raw::RawConfig;
use super::value::{at, at_least, parse_listen};
use super::{ConfigError, Context};

/// How `mxkeys run` watches and when it acts on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub watch: WatchMode,
    /// How often the polling watcher looks at the sources.
    pub poll_interval: Duration,
    /// Quiet time after a change before reading the sources.
    pub debounce: Duration,
    /// A full reconcile this often, whatever the watcher says.
    pub resync_interval: Duration,
    /// Warn when a target's certificate has less than this left.
    pub expiry_warning: Duration,
    /// Where to serve /metrics and /healthz (off when `None`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM, how long an ACME pass under way may take to finish
    /// before it is cut (and recorded as cut).
    pub stop_timeout: Duration,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            watch: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
            debounce: Duration::from_millis(50),
            resync_interval: Duration::from_secs(3600),
            expiry_warning: Duration::from_secs(14 * 86_400),
            metrics_listen: None,
            stop_timeout: Duration::from_secs(60),
        }
    }
}

/// How `mxkeys run` notices that a source changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify, falling back to polling for paths it cannot watch.
    #[default]
    Auto,
    /// inotify only.
    Inotify,
    /// Polling only (NFS, some container volumes).
    Poll,
}

/// The shortest `poll_interval` accepted.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest `resync_interval` accepted.
const MIN_RESYNC_INTERVAL: Duration = Duration::from_secs(10);

/// Validates the daemon's keys of the top-level table and `[metrics]`.
pub(super) fn daemon(raw: &RawConfig, ctx: &Context) -> Result<Daemon, ConfigError> {
    let defaults = Daemon::default();
    let metrics_listen = raw
        .metrics
        .as_ref()
        .and_then(|m| m.listen.as_deref())
        .map(|l| parse_listen(l, "127.0.0.1:9325").map_err(at("metrics.listen")))
        .transpose()
        .map_err(|e| ctx.error(e))?;
    let poll_interval = at_least(
        raw.poll_interval.unwrap_or(defaults.poll_interval),
        MIN_POLL_INTERVAL,
    )
    .map_err(|e| ctx.error(at("poll_interval")(e)))?;
    let resync_interval = at_least(
        raw.resync_interval.unwrap_or(defaults.resync_interval),
        MIN_RESYNC_INTERVAL,
    )
    .map_err(|e| ctx.error(at("resync_interval")(e)))?;
    Ok(Daemon {
        watch: raw.watch.unwrap_or(defaults.watch),
        poll_interval,
        debounce: raw.debounce.unwrap_or(defaults.debounce),
        resync_interval,
        expiry_warning: raw.expiry_warning.unwrap_or(defaults.expiry_warning),
        metrics_listen,
        stop_timeout: raw.stop_timeout.unwrap_or(defaults.stop_timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TARGET, parse};
    use super::super::{Reload, WatchMode};
    use std::time::Duration;

    #[test]
    fn daemon_keys_and_reload_signal() {
        let c = parse(&format!(
            "watch = \"poll\"\npoll_interval = \"500ms\"\nexpiry_warning = \"7d\"\n[metrics]\nlisten = \"127.0.0.1:9325\"\n{TARGET}key = \"k\"\nreload = [\"postfix\", \"reload\"]\nreload_signal = {{ pidfile = \"/run/dovecot/master.pid\", signal = \"usr1\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.daemon.watch, WatchMode::Poll);
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(500));
        assert_eq!(c.daemon.expiry_warning, Duration::from_secs(7 * 86_400));
        assert_eq!(
            c.daemon.metrics_listen,
            Some("127.0.0.1:9325".parse().unwrap())
        );
        assert_eq!(
            c.targets[0].reloads,
            vec![
                Reload::Command(vec!["postfix".into(), "reload".into()]),
                Reload::Signal {
                    pidfile: "/run/dovecot/master.pid".into(),
                    signal: nix::sys::signal::Signal::SIGUSR1
                }
            ]
        );
        let e = parse(&format!(
            "{TARGET}key = \"k\"\nreload_signal = {{ pidfile = \"/p\", signal = \"NOPE\" }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("reload_signal.signal"), "{e}");
        let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    }
}

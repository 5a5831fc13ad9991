//! Watching sources for changes: directories, not files.
//!
//! A file's inode changes when it is replaced by rename, and a watch on the
//! old inode goes deaf; so mxkeys watches the directory that holds each
//! source file (and, for a bind-mounted single file whose directory sees no
//! events, the file too, re-armed whenever its inode changes). Certbot's
//! `live/` and `archive/` trees and lego's `certificates/` are watched
//! whole. A path that does not exist yet is watched through its nearest
//! existing ancestor until it appears. Where inotify cannot watch (NFS,
//! some container volumes, or `watch = "poll"`), a polling watcher does.
//!
//! Events go to the daemon raw; the daemon debounces them (a quiet period
//! after the last one). notify's debouncer crates wake on a fixed tick
//! forever, even when nothing happens; inotify's thread sleeps until an
//! event arrives, so an idle daemon wakes only for its own timers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};
use std::os::unix::fs::MetadataExt as _;

use crate::config::{Config, SourceKind, WatchMode};

/// Something to watch, and which events under it matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub path: PathBuf,
    pub recursive: bool,
    /// `None`: any event under `path`. `Some`: only events naming these.
    pub files: Option<Vec<PathBuf>>,
}

/// What to watch for a configuration's sources.
fn specs(config: &Config) -> Vec<Spec> {
    let mut out: Vec<Spec> = Vec::new();
    let mut files_in_dir = |file: &Path| {
        let dir = file.parent().unwrap_or(Path::new("/")).to_owned();
        match out.iter_mut().find(|s| s.path == dir && s.files.is_some()) {
            Some(s) => s.files.get_or_insert_with(Vec::new).push(file.to_owned()),
            None => out.push(Spec {
                path: dir,
                recursive: false,
                files: Some(vec![file.to_owned()]),
            }),
        }
        // The file itself too: a bind-mounted file's directory never hears
        // about writes made through the host's path. Re-armed when the
        // file is replaced (its inode changes).
        out.push(Spec {
            path: file.to_owned(),
            recursive: false,
            files: None,
        });
    };
    let mut trees = Vec::new();
    for source in &config.sources {
        match &source.kind {
            SourceKind::Traefik { path, .. } => files_in_dir(path),
            SourceKind::Files { cert, key, chain } => {
                files_in_dir(cert);
                files_in_dir(key);
                if let Some(c) = chain {
                    files_in_dir(c);
                }
            }
            SourceKind::Certbot { path } => {
                if path.join("live").is_dir() || !path.exists() {
                    trees.push(path.join("live"));
                    trees.push(path.join("archive"));
                } else if path.join("fullchain.pem").symlink_metadata().is_ok() {
                    // One lineage: its live dir, and the archive dir its links lead to.
                    trees.push(path.clone());
                    if let Ok(real) = path.join("fullchain.pem").canonicalize()
                        && let Some(archive) = real.parent()
                    {
                        trees.push(archive.to_owned());
                    }
                } else {
                    trees.push(path.clone());
                    if let Some(parent) = path.parent() {
                        trees.push(parent.join("archive"));
                    }
                }
            }
            SourceKind::Lego { path } => {
                let nested = path.join("certificates");
                if nested.is_dir() || !path.exists() {
                    trees.push(nested);
                } else {
                    trees.push(path.clone());
                }
            }
            // Written by mxkeys itself, but maybe by a `renew` timer beside
            // a running daemon.
            SourceKind::Acme(a) => files_in_dir(&crate::source::acme::bundle_path(a)),
            SourceKind::SelfSigned { .. } => {}
        }
    }
    for t in trees {
        if !out.iter().any(|s| s.path == t) {
            out.push(Spec {
                path: t,
                recursive: true,
                files: None,
            });
        }
    }
    out.dedup();
    out
}

/// A change that may matter: reconcile.
#[derive(Debug, Clone)]
pub struct Changed {
    pub paths: Vec<PathBuf>,
}

type Sender = tokio::sync::mpsc::UnboundedSender<Changed>;

/// What is armed for one spec: the watched path (the spec's own or its
/// nearest existing ancestor) and its inode when armed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Armed {
    at: PathBuf,
    inode: Option<u64>,
    polled: bool,
}

/// The live watches of a daemon.
pub struct Watcher {
    mode: WatchMode,
    specs: Vec<Spec>,
    armed: HashMap<PathBuf, Armed>,
    inotify: Option<RecommendedWatcher>,
    poll: Option<PollWatcher>,
    tx: Sender,
    poll_interval: Duration,
}

impl Watcher {
    pub fn new(config: &Config, tx: Sender) -> Watcher {
        let mut w = Watcher {
            mode: config.daemon.watch,
            specs: specs(config),
            armed: HashMap::new(),
            inotify: None,
            poll: None,
            tx,
            poll_interval: config.daemon.poll_interval,
        };
        w.rearm();
        w
    }

    /// Paths armed now, with how (for status and logs).
    pub fn describe(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .armed
            .values()
            .map(|a| {
                format!(
                    "{}{}",
                    a.at.display(),
                    if a.polled { " (polling)" } else { "" }
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Does an event on `paths` matter to a source?
    pub fn relevant(&self, paths: &[PathBuf]) -> bool {
        self.specs.iter().any(|spec| {
            let armed_at = self.armed.get(&spec.path).map(|a| &a.at);
            paths.iter().any(|p| {
                // Something on the way to a missing path appeared.
                if armed_at.is_some_and(|at| at != &spec.path) {
                    return spec.path.starts_with(p) || p.starts_with(&spec.path);
                }
                match &spec.files {
                    None => p.starts_with(&spec.path),
                    Some(files) => files.iter().any(|f| f == p),
                }
            })
        })
    }

    /// (Re)arms every spec: watches paths that appeared since, and re-adds
    /// watches whose inode changed (a file replaced by rename).
    pub fn rearm(&mut self) {
        for spec in self.specs.clone() {
            let at = nearest_existing(&spec.path);
            let inode = std::fs::metadata(&at).ok().map(|m| m.ino());
            let wanted = (at.clone(), inode);
            if let Some(a) = self.armed.get(&spec.path)
                && (a.at.clone(), a.inode) == wanted
            {
                continue;
            }
            if let Some(old) = self.armed.remove(&spec.path) {
                self.unwatch(&old);
            }
            let recursive = spec.recursive && at == spec.path;
            match self.watch(&at, recursive) {
                Ok(polled) => {
                    tracing::debug!(
                        "watching {}{}",
                        at.display(),
                        if polled { " by polling" } else { "" }
                    );
                    let armed = Armed { at, inode, polled };
                    self.armed.insert(spec.path.clone(), armed);
                }
                Err(e) => tracing::warn!(
                    "cannot watch {}: {e}; relying on the periodic resync",
                    at.display()
                ),
            }
        }
    }

    fn watch(&mut self, path: &Path, recursive: bool) -> notify::Result<bool> {
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if self.mode != WatchMode::Poll {
            let result = self.inotify_watcher().and_then(|w| w.watch(path, mode));
            match result {
                Ok(()) => return Ok(false),
                Err(e) if self.mode == WatchMode::Inotify => return Err(e),
                Err(e) => {
                    tracing::info!("inotify cannot watch {} ({e}); polling it", path.display())
                }
            }
        }
        self.poll_watcher()?.watch(path, mode)?;
        Ok(true)
    }

    fn unwatch(&mut self, armed: &Armed) {
        // Another spec may share the watch: keep it if so.
        if self.armed.values().any(|a| a.at == armed.at) {
            return;
        }
        let result = match (armed.polled, &mut self.poll, &mut self.inotify) {
            (true, Some(p), _) => p.unwatch(&armed.at),
            (false, _, Some(i)) => i.unwatch(&armed.at),
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::debug!("unwatch {}: {e}", armed.at.display());
        }
    }

    fn handler(&self) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
        let tx = self.tx.clone();
        move |result: notify::Result<notify::Event>| match result {
            // mxkeys' own reads show up as access events: ignore them.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(event) => {
                let _ = tx.send(Changed { paths: event.paths });
            }
            Err(e) => {
                tracing::warn!("watch error: {e}");
                // A lost event (queue overflow) could hide a change.
                let _ = tx.send(Changed { paths: Vec::new() });
            }
        }
    }

    fn inotify_watcher(&mut self) -> notify::Result<&mut RecommendedWatcher> {
        if self.inotify.is_none() {
            let handler = self.handler();
            self.inotify = Some(RecommendedWatcher::new(handler, notify::Config::default())?);
        }
        Ok(self.inotify.as_mut().expect("set above"))
    }

    fn poll_watcher(&mut self) -> notify::Result<&mut PollWatcher> {
        if self.poll.is_none() {
            let config = notify::Config::default().with_poll_interval(self.poll_interval);
            self.poll = Some(PollWatcher::new(self.handler(), config)?);
        }
        Ok(self.poll.as_mut().expect("set above"))
    }
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_owned();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traefik_watches_its_directory_for_that_file_and_the_file() {
        let c = Config::parse(
            Path::new("/etc/mxkeys/m.toml"),
            "[[source]]\ntype = \"traefik\"\npath = \"/acme/acme.json\"\n[[source]]\ntype = \"lego\"\npath = \"/nonexistent/lego\"\n",
            &crate::config::Host::current(),
        )
        .unwrap();
        let s = specs(&c);
        assert_eq!(
            s[0],
            Spec {
                path: "/acme".into(),
                recursive: false,
                files: Some(vec!["/acme/acme.json".into()]),
            }
        );
        assert_eq!(s[1].path, PathBuf::from("/acme/acme.json"));
        assert_eq!(s[2].path, PathBuf::from("/nonexistent/lego/certificates"));
        assert!(s[2].recursive);
    }

    #[test]
    fn nearest_existing_walks_up() {
        assert_eq!(
            nearest_existing(Path::new("/nonexistent/a/b")),
            PathBuf::from("/")
        );
        assert_eq!(
            nearest_existing(Path::new("/tmp/nonexistent-mxkeys/x")),
            PathBuf::from("/tmp")
        );
    }
}

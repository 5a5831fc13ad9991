//! How the daemon's tasks run their long passes and stop: the rule is that
//! no pass of one task (an ACME order, a DKIM propagation wait, a slow
//! reload) ever holds up another task, a signal, or the watchdog.
//!
//! [`off_runtime`] runs one pass (ACME or DKIM) on a thread of the
//! blocking pool, driven there by the runtime's handle: its network waits
//! stay asynchronous, and whatever it does synchronously (key generation,
//! reload commands, file IO) blocks only that thread, never the runtime's
//! own. On stop, a pass under way gets a grace period to finish; after
//! that it is cut at its next await point and the caller learns so
//! ([`Pass::Cut`]) to record it. [`watchdog`] pings systemd on its own
//! timer while every task is alive.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

/// How long a cut pass may take to reach its next await point (a
/// synchronous step such as a key generation ends first) before the
/// daemon stops waiting for it.
const CUT_WAIT: Duration = Duration::from_secs(5);

/// How a pass ended.
#[derive(Debug)]
pub enum Pass<T> {
    /// It ran to its end.
    Done(T),
    /// It was cut short at shutdown, after its grace period.
    Cut,
    /// It panicked (the message says where).
    Failed(String),
}

/// Runs the future `make` returns on a blocking-pool thread until it ends,
/// or, once `stop` turns true, for at most `grace` more, then cuts it.
pub async fn off_runtime<T, F, Fut>(
    stop: &mut watch::Receiver<bool>,
    grace: Duration,
    make: F,
) -> Pass<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    // Dropping the sender cuts the pass too: nothing outlives its caller.
    let (cut_tx, cut_rx) = oneshot::channel::<()>();
    let mut job = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            tokio::select! {
                biased;
                _ = cut_rx => None,
                v = make() => Some(v),
            }
        })
    });
    let ended = |r: Result<Option<T>, tokio::task::JoinError>| match r {
        Ok(Some(v)) => Pass::Done(v),
        Ok(None) => Pass::Cut,
        Err(e) => Pass::Failed(e.to_string()),
    };
    if !*stop.borrow() {
        tokio::select! {
            r = &mut job => return ended(r),
            _ = stop.changed() => {}
        }
    }
    if let Ok(r) = tokio::time::timeout(grace, &mut job).await {
        return ended(r);
    }
    let _ = cut_tx.send(());
    match tokio::time::timeout(CUT_WAIT, &mut job).await {
        Ok(r) => match ended(r) {
            // It ended at the very moment it was cut.
            Pass::Done(v) => Pass::Done(v),
            _ => Pass::Cut,
        },
        Err(_) => Pass::Cut,
    }
}

/// Pings systemd's watchdog every half `WATCHDOG_USEC` while none of
/// `tasks` has ended; a task that ended (it panicked) stops the pings, so
/// systemd restarts mxkeys. Returns at once when no watchdog is set.
pub async fn watchdog(tasks: Vec<(&'static str, AbortHandle)>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut told = false;
    loop {
        tokio::time::sleep(period / 2).await;
        match tasks.iter().find(|(_, t)| t.is_finished()) {
            None => super::notify(&[NotifyState::Watchdog]),
            Some((name, _)) if !told => {
                tracing::error!(
                    "the {name} task ended; no more watchdog pings, so that systemd restarts mxkeys"
                );
                told = true;
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_pass_that_blocks_its_thread_does_not_block_the_runtime() {
        runtime().block_on(async {
            let (_stop_tx, mut stop) = watch::channel(false);
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let pass = tokio::spawn(async move {
                off_runtime(&mut stop, Duration::from_secs(1), move || async move {
                    // Blocks its thread until the runtime's own task answers.
                    rx.recv().unwrap();
                    7
                })
                .await
            });
            // This timer and this send run on the runtime while the pass blocks.
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(()).unwrap();
            assert!(matches!(pass.await.unwrap(), Pass::Done(7)));
        });
    }

    #[test]
    fn a_pass_still_waiting_after_its_grace_is_cut() {
        runtime().block_on(async {
            let (stop_tx, mut stop) = watch::channel(false);
            let pass = tokio::spawn(async move {
                off_runtime(&mut stop, Duration::from_millis(50), || async {
                    std::future::pending::<()>().await;
                })
                .await
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop_tx.send(true).unwrap();
            assert!(matches!(pass.await.unwrap(), Pass::Cut));
        });
    }

    #[test]
    fn a_pass_that_ends_within_its_grace_is_done() {
        runtime().block_on(async {
            let (stop_tx, mut stop) = watch::channel(false);
            stop_tx.send(true).unwrap();
            let pass = off_runtime(&mut stop, Duration::from_secs(5), || async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                "finished"
            })
            .await;
            assert!(matches!(pass, Pass::Done("finished")));
        });
    }
}

//! A mail loop for the DANE tests: a thread submits one message a second to
//! a Postfix sender in `dane` mode (`Postfix::start_dane_sender`), and a
//! reader of that sender's log tells, message by message, whether it was
//! delivered over a DANE-verified TLS connection or deferred.
//!
//! The rule: a message counts as verified only when its `status=sent` line
//! follows, from the same `postfix/smtp[PID]`, a "Verified TLS connection
//! established" (DANE-EE, `3 1 1`) or "Trusted TLS connection established"
//! (DANE-TA, `2 1 1`) line; every deferral, bounce, TLSA or certificate
//! verification complaint of the loop's period is kept as a line of
//! [`Tally::deferred`], and so is a message with no status at all when the
//! loop stops (it waits a bounded time for the last ones). A test then
//! asserts [`Tally::assert_every_message_verified`]: it fails on any message
//! not delivered verified, so the loop can catch a moment when the served
//! key lacked a published record.
//!
//! Gotchas (Postfix 3.7): a `2 1 1` (DANE-TA) match is logged "Verified"
//! too, as the name is checked (seen in the lab); the sender's smtp client
//! keeps no TLS session cache and does not reuse TLS connections
//! (`smtp_tls_connection_reuse = no`, the default), so every delivery
//! opens a connection of its own and logs its own trust line, from the
//! smtp process that then logs the delivery; deferred messages wait for the
//! next queue run (minutes), so a deferral is seen once per message.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::servers::Postfix;

/// How long [`MailLoop::stop`] waits for the last submitted messages to get
/// a status line.
const SETTLE: Duration = Duration::from_secs(60);

/// The interval between two submissions.
const INTERVAL: Duration = Duration::from_secs(1);

/// What a loop saw, from its start to its stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages the sender accepted from the loop.
    pub submitted: usize,
    /// Messages the sender delivered (`status=sent`).
    pub delivered: usize,
    /// Delivered messages whose connection was DANE-authenticated
    /// ("Verified" or "Trusted" TLS connection).
    pub verified: usize,
    /// Every sign of a message not delivered verified: the sender's
    /// deferral, bounce, TLSA and certificate verification lines, a
    /// submission the sender refused, a delivered message without a
    /// verified connection, a message with no status when the loop stopped.
    pub deferred: Vec<String>,
}

impl Tally {
    /// True when at least one message went round and every message was
    /// delivered over a DANE-verified connection, with no complaint.
    pub fn all_verified(&self) -> bool {
        self.submitted > 0
            && self.delivered == self.submitted
            && self.verified == self.delivered
            && self.deferred.is_empty()
    }

    /// Panics, naming what went wrong and `context()`, unless
    /// [`Tally::all_verified`].
    #[track_caller]
    pub fn assert_every_message_verified(&self, context: impl Fn() -> String) {
        assert!(
            self.all_verified(),
            "the mail loop lost verification: {} submitted, {} delivered, {} verified; \
             problems:\n{}\n{}",
            self.submitted,
            self.delivered,
            self.verified,
            self.deferred.join("\n"),
            context()
        );
    }
}

/// One submission every second to a DANE sender, until [`MailLoop::stop`].
pub struct MailLoop {
    stop: Arc<AtomicBool>,
    submitted: Arc<AtomicU64>,
    /// Submissions the sender refused (or that failed), one line each.
    refused: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
    log: PathBuf,
    /// Where the sender's log stood when the loop started.
    offset: usize,
    /// Recipients are `{tag}-{n}@example.test`.
    tag: String,
}

/// Distinguishes loops started in one process on one sender.
static LOOPS: AtomicU64 = AtomicU64::new(0);

impl MailLoop {
    /// Starts submitting to `sender`'s smtpd, one message a second, to
    /// recipients at `example.test` (whose MX is the receiver under test).
    pub fn start(sender: &Postfix) -> MailLoop {
        let log = sender.dir.join("postfix.log");
        let offset = std::fs::read(&log).map(|b| b.len()).unwrap_or(0);
        let tag = format!(
            "loop{}x{}",
            std::process::id(),
            LOOPS.fetch_add(1, Ordering::Relaxed)
        );
        let stop = Arc::new(AtomicBool::new(false));
        let submitted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let addr = sender.addr();
        let thread = {
            let (stop, submitted, tag) = (stop.clone(), submitted.clone(), tag.clone());
            let refused = refused.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let to = format!("{tag}-{n}@example.test");
                    let message =
                        format!("Subject: mail loop {n}\r\nTo: <{to}>\r\n\r\nmessage {n}\r\n");
                    match submit(&addr, "loop@sender.example.test", &to, message.as_bytes()) {
                        Ok(()) => {
                            n += 1;
                            submitted.store(n, Ordering::Relaxed);
                        }
                        Err(e) => refused
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("submission to {addr} for {to}: {e}")),
                    }
                    while started.elapsed() < INTERVAL && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        MailLoop {
            stop,
            submitted,
            refused,
            thread: Some(thread),
            log,
            offset,
            tag,
        }
    }

    /// What the loop saw so far (messages still in flight count as
    /// neither delivered nor deferred).
    pub fn tally(&self) -> Tally {
        let submitted = self.submitted.load(Ordering::Relaxed) as usize;
        self.read(submitted).0
    }

    /// Waits (at most `limit`) until `n` more messages were delivered than
    /// at the call; false if the limit passed first.
    pub fn wait_delivered(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        let base = self.tally().delivered;
        while start.elapsed() < limit {
            if self.tally().delivered >= base + n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Stops submitting, waits (bounded) until every submitted message has a
    /// status line, and returns the tally.
    pub fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let panicked = matches!(self.thread.take().map(JoinHandle::join), Some(Err(_)));
        let submitted = self.submitted.load(Ordering::Relaxed) as usize;
        let start = Instant::now();
        loop {
            let (mut tally, unsettled) = self.read(submitted);
            if panicked {
                tally
                    .deferred
                    .push("the mail loop's thread panicked".to_owned());
            }
            if unsettled.is_empty() {
                return tally;
            }
            if start.elapsed() > SETTLE {
                tally.deferred.extend(
                    unsettled.into_iter().map(|to| {
                        format!("no status for <{to}> {SETTLE:?} after the loop stopped")
                    }),
                );
                return tally;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Reads the sender's log since the loop started: the tally of the
    /// first `submitted` messages, and the recipients among them with no
    /// status line yet.
    fn read(&self, submitted: usize) -> (Tally, Vec<String>) {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(bytes.get(self.offset..).unwrap_or_default());
        let parsed = parse_log(&text, &self.tag);
        let mut tally = Tally {
            submitted,
            ..Tally::default()
        };
        let mut unsettled = Vec::new();
        for n in 0..submitted {
            let to = format!("{}-{n}@example.test", self.tag);
            match parsed.status.get(&to) {
                Some(Status::Sent { verified: true }) => {
                    tally.delivered += 1;
                    tally.verified += 1;
                }
                Some(Status::Sent { verified: false }) => {
                    tally.delivered += 1;
                    tally.deferred.push(format!(
                        "<{to}> delivered over a connection not DANE-verified"
                    ));
                }
                Some(Status::Other) => {}
                None => unsettled.push(to),
            }
        }
        tally.deferred.extend(
            self.refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        tally.deferred.extend(parsed.complaints);
        (tally, unsettled)
    }
}

impl Drop for MailLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// `status=sent`, over a connection whose trust line said Verified or
    /// Trusted (`verified`) or something else.
    Sent { verified: bool },
    /// Deferred or bounced (the line is among the complaints).
    Other,
}

struct Parsed {
    /// By recipient, the last status seen.
    status: BTreeMap<String, Status>,
    /// The lines that show a message not delivered verified, in log order.
    complaints: Vec<String>,
}

/// Reads a sender's log (`maillog_file` lines): which loop message (its
/// recipient starts with `tag-`) got which status, and the complaints.
fn parse_log(text: &str, tag: &str) -> Parsed {
    // The trust of the last TLS connection each smtp process opened.
    let mut trust: BTreeMap<&str, bool> = BTreeMap::new();
    let mut status = BTreeMap::new();
    let mut complaints = Vec::new();
    let mut seen = BTreeSet::new();
    let prefix = format!("to=<{tag}-");
    for line in text.lines() {
        let pid = smtp_pid(line);
        if let Some(pid) = pid
            && line.contains("TLS connection established to")
        {
            let ok =
                line.contains("Verified TLS connection") || line.contains("Trusted TLS connection");
            trust.insert(pid, ok);
        }
        let ours = line.contains(&prefix);
        if ours {
            let to = recipient(line);
            if line.contains("status=sent") {
                let verified = pid.and_then(|p| trust.get(p)).copied().unwrap_or(false);
                if let Some(to) = to {
                    status.insert(to.to_owned(), Status::Sent { verified });
                }
                continue;
            }
            if line.contains("status=")
                && let Some(to) = to
            {
                status.insert(to.to_owned(), Status::Other);
            }
        }
        let lower = line.to_ascii_lowercase();
        let complaint = (ours
            && (line.contains("status=deferred") || line.contains("status=bounced")))
            || line.contains("dsn=4.7.5")
            || line.contains("TLSA")
            || lower.contains("certificate verification failed")
            || lower.contains("certificate not verified")
            || line.contains("Untrusted TLS connection")
            || line.contains("Anonymous TLS connection");
        if complaint && seen.insert(line.to_owned()) {
            complaints.push(line.to_owned());
        }
    }
    Parsed { status, complaints }
}

/// The PID of a `postfix/smtp[PID]:` line.
fn smtp_pid(line: &str) -> Option<&str> {
    let rest = line.split_once("postfix/smtp[")?.1;
    Some(rest.split_once(']')?.0)
}

/// The recipient of a `to=<...>` line.
fn recipient(line: &str) -> Option<&str> {
    let rest = line.split_once("to=<")?.1;
    Some(rest.split_once('>')?.0)
}

/// Sends one message through the SMTP server at `addr`; an error names the
/// step the server refused.
pub fn submit(addr: &str, from: &str, to: &str, message: &[u8]) -> Result<(), String> {
    let conn = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = conn.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(conn);
    let expect = |r: &mut BufReader<TcpStream>, code: &str, what: &str| {
        let reply = reply(r)?;
        if reply.starts_with(code) {
            Ok(())
        } else {
            Err(format!("{what}: expected {code}, got {reply:?}"))
        }
    };
    expect(&mut r, "220", "banner")?;
    for (cmd, code) in [
        ("EHLO loop.test".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .map_err(|e| format!("{cmd}: {e}"))?;
        expect(&mut r, code, &cmd)?;
    }
    w.write_all(message).map_err(|e| format!("DATA: {e}"))?;
    w.write_all(b".\r\n").map_err(|e| format!("DATA: {e}"))?;
    expect(&mut r, "250", "end of DATA")?;
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

/// One SMTP reply (all its lines).
fn reply(r: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {all:?}"));
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
Nov 29 22:10:01 sender postfix/smtp[100]: Verified TLS connection established to mail.example.test[127.0.0.1]:25: TLSv1.3
Nov 29 22:10:01 sender postfix/smtp[100]: AAA: to=<t-0@example.test>, relay=mail.example.test[127.0.0.1]:25, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Nov 29 22:10:02 sender postfix/smtp[101]: Untrusted TLS connection established to mail.example.test[127.0.0.1]:25: TLSv1.3
Nov 29 22:10:02 sender postfix/smtp[101]: BBB: to=<t-1@example.test>, relay=mail.example.test[127.0.0.1]:25, dsn=4.7.5, status=deferred (Server certificate not verified)
Nov 29 22:10:03 sender postfix/smtp[102]: Trusted TLS connection established to mail.example.test[127.0.0.1]:25: TLSv1.3
Nov 29 22:10:03 sender postfix/smtp[102]: CCC: to=<t-2@example.test>, relay=mail.example.test[127.0.0.1]:25, dsn=2.0.0, status=sent (250 2.0.0 Ok)
Nov 29 22:10:04 sender postfix/smtp[103]: DDD: to=<u-0@example.test>, relay=mail.example.test[127.0.0.1]:25, dsn=2.0.0, status=sent (250 2.0.0 Ok)
";

    #[test]
    fn a_delivery_counts_as_verified_only_after_a_verified_or_trusted_line_of_its_own_process() {
        let p = parse_log(LOG, "t");
        assert_eq!(
            p.status["t-0@example.test"],
            Status::Sent { verified: true }
        );
        assert_eq!(p.status["t-1@example.test"], Status::Other);
        assert_eq!(
            p.status["t-2@example.test"],
            Status::Sent { verified: true }
        );
        assert!(!p.status.contains_key("u-0@example.test"));
        let p = parse_log(LOG, "u");
        assert_eq!(
            p.status["u-0@example.test"],
            Status::Sent { verified: false },
            "no trust line from smtp[103]"
        );
    }

    #[test]
    fn a_deferral_and_an_untrusted_connection_are_complaints() {
        let p = parse_log(LOG, "t");
        assert_eq!(p.complaints.len(), 2, "{:?}", p.complaints);
        assert!(p.complaints[0].contains("Untrusted"));
        assert!(p.complaints[1].contains("dsn=4.7.5"));
    }

    #[test]
    fn a_tally_with_any_problem_or_nothing_sent_is_not_all_verified() {
        let good = Tally {
            submitted: 3,
            delivered: 3,
            verified: 3,
            deferred: vec![],
        };
        assert!(good.all_verified());
        assert!(!Tally::default().all_verified());
        assert!(
            !Tally {
                deferred: vec!["x".into()],
                ..good.clone()
            }
            .all_verified()
        );
        assert!(
            !Tally {
                verified: 2,
                ..good.clone()
            }
            .all_verified()
        );
        assert!(
            !Tally {
                delivered: 2,
                verified: 2,
                ..good
            }
            .all_verified()
        );
    }
}

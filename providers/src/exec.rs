//! A program the user names, for any DNS host without a built-in provider
//! (the way lego's exec provider is used). mxkeys runs it as:
//!
//! ```text
//! PROGRAM [ARGS...] replace NAME TYPE TTL VALUE [VALUE...]   make the set exactly these values
//! PROGRAM [ARGS...] remove  NAME TYPE                        delete the set
//! PROGRAM [ARGS...] read    NAME TYPE                        print the set's values, one per line
//! ```
//!
//! NAME is absolute without the trailing dot; TXT values are whole (not
//! split). Exit 0 means done. A program that cannot read exits non-zero to
//! `read`: mxkeys then writes without comparing first. Nothing secret is
//! passed on the command line; the program has its own credentials.
//!
//! Adding or removing single values (ACME DNS-01 shares `_acme-challenge`
//! names with other clients) uses the same three actions: mxkeys `read`s
//! the set, and `replace`s it with the values added or removed (or
//! `remove`s it when none are left), so values other clients put there
//! stay. Within this process, changes to one name take turns, so two orders
//! never lose each other's values; the program must itself keep a `replace`
//! from racing with writers in other processes. A program that cannot
//! `read` gets, instead of the current set, the values this process added
//! to that name and has not removed: another client's values there would
//! be replaced (a warning says so).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use crate::{Change, Error, NameLocks, RData, RecordStore, RecordType};

/// How long one run of the program may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The TTL a set keeps when values are removed from it and the others
/// stay, if this process never added to it.
const DEFAULT_TTL: u32 = 300;

/// Values this process added to a set (name, type), and their TTL.
type Added = HashMap<(String, RecordType), (u32, Vec<RData>)>;

/// A record store that runs a program the user names for every read and
/// write (the provider for DNS hosts mxkeys has no API client for).
#[derive(Debug, Clone)]
pub struct Exec {
    argv: Vec<String>,
    timeout: Duration,
    /// Turns for adding and removing values of one name.
    locks: NameLocks,
    added: Arc<Mutex<Added>>,
}

impl Exec {
    /// `argv`: the program and its leading arguments.
    pub fn new(argv: Vec<String>) -> Result<Exec, Error> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(Error::Config("exec: `command` needs a program".to_owned()));
        }
        Ok(Exec {
            argv,
            timeout: TIMEOUT,
            locks: NameLocks::default(),
            added: Arc::default(),
        })
    }

    /// How long one run of the program may take before it is killed and
    /// the call fails (default 120 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Exec {
        self.timeout = timeout;
        self
    }

    /// Runs the program with `args`; its stdout on success.
    async fn run(&self, args: &[String]) -> Result<String, Error> {
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!(
            "{} {}",
            self.argv[0],
            args.first().map_or("", String::as_str)
        );
        let child = cmd
            .spawn()
            .map_err(|e| Error::Config(format!("exec: cannot start {}: {e}", self.argv[0])))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                Error::Transport(format!("exec: {what} timed out after {:?}", self.timeout))
            })?
            .map_err(|e| Error::Transport(format!("exec: {what}: {e}")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
            let tail: String = tail
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(Error::Refused(format!(
                "exec: {what} failed ({}): {tail}",
                output.status
            )))
        }
    }
}

impl Exec {
    /// `replace NAME TYPE TTL VALUE...` without reading first.
    async fn write_set(
        &self,
        name: &str,
        rtype: RecordType,
        ttl: u32,
        values: &[RData],
    ) -> Result<Change, Error> {
        let mut args = vec![
            "replace".to_owned(),
            name.to_owned(),
            rtype.to_string(),
            ttl.to_string(),
        ];
        args.extend(values.iter().map(value_arg));
        self.run(&args).await.map(|_| Change::Changed)
    }

    /// The current set, or (when the program cannot read) the values this
    /// process added to it.
    async fn current(&self, name: &str, rtype: RecordType) -> (Vec<RData>, bool) {
        match self.read(name, rtype).await {
            Ok(values) => (values, true),
            Err(e) => {
                tracing::warn!(
                    %name, %rtype,
                    "exec: cannot read the set ({e}); writing the values mxkeys added, \
                     which replaces any other client's values there"
                );
                let added = self.added.lock().unwrap_or_else(|e| e.into_inner());
                let own = added
                    .get(&(name.to_owned(), rtype))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (own, false)
            }
        }
    }

    fn note_added(&self, name: &str, rtype: RecordType, ttl: u32, values: &[RData]) {
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let entry = added
            .entry((name.to_owned(), rtype))
            .or_insert((ttl, Vec::new()));
        entry.0 = ttl;
        for v in values {
            if !entry.1.contains(v) {
                entry.1.push(v.clone());
            }
        }
    }

    /// Forgets `values` as added; returns the TTL the set was written with.
    fn note_removed(&self, name: &str, rtype: RecordType, values: &[RData]) -> u32 {
        let mut added = self.added.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_owned(), rtype);
        let Some(entry) = added.get_mut(&key) else {
            return DEFAULT_TTL;
        };
        entry.1.retain(|v| !values.contains(v));
        let ttl = entry.0;
        if entry.1.is_empty() {
            added.remove(&key);
        }
        ttl
    }
}

fn value_arg(value: &RData) -> String {
    match value {
        RData::Txt(v) => v.clone(),
        other => other.to_string(),
    }
}

fn parse_value(rtype: RecordType, line: &str) -> Option<RData> {
    match rtype {
        RecordType::Txt => Some(RData::Txt(line.to_owned())),
        RecordType::Cname => Some(RData::Cname(crate::canonical_name(line))),
        RecordType::A => line.trim().parse().ok().map(RData::A),
        RecordType::Aaaa => line.trim().parse().ok().map(RData::Aaaa),
        RecordType::Mx => {
            let mut parts = line.split_whitespace();
            let preference = parts.next()?.parse().ok()?;
            let exchange = parts.next()?;
            if parts.next().is_some() {
                return None;
            }
            Some(RData::Mx {
                preference,
                exchange: crate::mx_exchange(exchange),
            })
        }
        RecordType::Tlsa => {
            let mut parts = line.split_whitespace();
            let usage = parts.next()?.parse().ok()?;
            let selector = parts.next()?.parse().ok()?;
            let matching = parts.next()?.parse().ok()?;
            let hex: String = parts.collect();
            let data = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some(RData::Tlsa {
                usage,
                selector,
                matching,
                data,
            })
        }
    }
}

impl RecordStore for Exec {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        let out = self
            .run(&[
                "read".to_owned(),
                crate::canonical_name(name),
                rtype.to_string(),
            ])
            .await?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                parse_value(rtype, l.trim_end_matches('\r')).ok_or_else(|| {
                    Error::Transport(format!(
                        "exec: read printed a {rtype} value mxkeys cannot parse: {l:?}"
                    ))
                })
            })
            .collect()
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let Some(rtype) = values.first().map(RData::record_type) else {
            return Err(Error::Config(
                "replace needs at least one value; use remove".to_owned(),
            ));
        };
        // A program that can read lets mxkeys skip writes already in place.
        if let Ok(current) = self.read(name, rtype).await
            && crate::same_set(&current, values)
        {
            return Ok(Change::Unchanged);
        }
        self.write_set(&crate::canonical_name(name), rtype, ttl, values)
            .await
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        self.run(&[
            "remove".to_owned(),
            crate::canonical_name(name),
            rtype.to_string(),
        ])
        .await
        .map(|_| Change::Changed)
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = crate::values_type(values)?;
        let name = crate::canonical_name(name);
        let _turn = self.locks.lock(&name).await;
        let (current, read) = self.current(&name, rtype).await;
        let mut set = current.clone();
        for v in values {
            if !set.contains(v) {
                set.push(v.clone());
            }
        }
        if read && set.len() == current.len() {
            return Ok(Change::Unchanged);
        }
        self.write_set(&name, rtype, ttl, &set).await?;
        self.note_added(&name, rtype, ttl, values);
        Ok(Change::Changed)
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        let rtype = crate::values_type(values)?;
        let name = crate::canonical_name(name);
        let _turn = self.locks.lock(&name).await;
        let (current, read) = self.current(&name, rtype).await;
        let ttl = self.note_removed(&name, rtype, values);
        let rest: Vec<RData> = current
            .iter()
            .filter(|v| !values.contains(v))
            .cloned()
            .collect();
        if read && rest.len() == current.len() {
            return Ok(Change::Unchanged);
        }
        if rest.is_empty() {
            self.remove(&name, rtype).await
        } else {
            self.write_set(&name, rtype, ttl, &rest).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn mx_lines_read_as_preference_and_exchange() {
        let mx = |preference, exchange: &str| {
            Some(RData::Mx {
                preference,
                exchange: exchange.to_owned(),
            })
        };
        // (line, value)
        let table: &[(&str, Option<RData>)] = &[
            ("10 mx.example.com", mx(10, "mx.example.com")),
            ("10 MX.Example.COM.", mx(10, "mx.example.com")),
            ("  5\tmx2.example.com ", mx(5, "mx2.example.com")),
            ("0 .", mx(0, ".")),
            ("mx.example.com", None),
            ("10", None),
            ("70000 mx.example.com", None),
            ("10 mx.example.com extra", None),
        ];
        for (line, want) in table {
            assert_eq!(parse_value(RecordType::Mx, line), *want, "{line:?}");
        }
    }

    /// A program that keeps record sets in files named after NAME and TYPE.
    fn store_script(dir: &std::path::Path) -> std::path::PathBuf {
        let script = dir.join("dns-hook");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nset -e\nd={}\naction=$1; name=$2; type=$3; shift 3\necho \"$action $name $type\" >> $d/calls\ncase $action in\n  read) cat \"$d/$name.$type\" 2>/dev/null || true ;;\n  replace) shift; : > \"$d/$name.$type\"; for v in \"$@\"; do printf '%s\\n' \"$v\" >> \"$d/$name.$type\"; done ;;\n  remove) rm -f \"$d/$name.$type\" ;;\n  *) echo \"bad action $action\" >&2; exit 2 ;;\nesac\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[tokio::test]
    async fn replace_read_remove_through_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let store = Exec::new(vec![store_script(dir.path()).display().to_string()]).unwrap();
        let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        let values = vec![RData::Txt(long.clone()), RData::Txt("second value".into())];
        assert_eq!(
            store
                .replace("sel._domainkey.example.test.", 300, &values)
                .await,
            Ok(Change::Changed)
        );
        let read = store
            .read("sel._domainkey.example.test", RecordType::Txt)
            .await
            .unwrap();
        assert!(crate::same_set(&read, &values), "{read:?}");
        // Already in place: read, no replace call.
        assert_eq!(
            store
                .replace("sel._domainkey.example.test", 300, &values)
                .await,
            Ok(Change::Unchanged)
        );
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(calls.matches("replace ").count(), 1, "{calls}");
        assert_eq!(
            store
                .remove("sel._domainkey.example.test", RecordType::Txt)
                .await,
            Ok(Change::Changed)
        );
        assert!(
            store
                .read("sel._domainkey.example.test", RecordType::Txt)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adding_and_removing_values_keeps_other_values_also_when_concurrent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Exec::new(vec![store_script(dir.path()).display().to_string()]).unwrap();
        let name = "_acme-challenge.example.test";
        let foreign = RData::Txt("certbot's value".into());
        store
            .replace(name, 60, std::slice::from_ref(&foreign))
            .await
            .unwrap();
        // Two orders add their values at once, through one provider.
        let (a, b) = (RData::Txt("order-a".into()), RData::Txt("order-b".into()));
        let (s1, s2) = (store.clone(), store.clone());
        let (va, vb) = (a.clone(), b.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.add(name, 60, &[va]).await }),
            tokio::spawn(async move { s2.add(name, 60, &[vb]).await })
        );
        assert_eq!(r1.unwrap(), Ok(Change::Changed));
        assert_eq!(r2.unwrap(), Ok(Change::Changed));
        let read = store.read(name, RecordType::Txt).await.unwrap();
        assert!(
            crate::same_set(&read, &[foreign.clone(), a.clone(), b.clone()]),
            "{read:?}"
        );
        assert_eq!(
            store.add(name, 60, std::slice::from_ref(&a)).await,
            Ok(Change::Unchanged)
        );
        assert_eq!(
            store.remove_values(name, std::slice::from_ref(&a)).await,
            Ok(Change::Changed)
        );
        assert_eq!(
            store.remove_values(name, std::slice::from_ref(&a)).await,
            Ok(Change::Unchanged)
        );
        let read = store.read(name, RecordType::Txt).await.unwrap();
        assert!(
            crate::same_set(&read, &[foreign.clone(), b.clone()]),
            "{read:?}"
        );
        store.remove_values(name, &[foreign, b]).await.unwrap();
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert!(calls.ends_with(&format!("remove {name} TXT\n")), "{calls}");
    }

    /// A program that cannot read gets the values this process added, and
    /// nothing of a value it removed.
    #[tokio::test]
    async fn a_program_that_cannot_read_gets_the_values_mxkeys_added() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let store = Exec::new(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "[ \"$1\" = read ] && exit 1; echo \"$*\" >> {}",
                log.display()
            ),
            "hook".into(),
        ])
        .unwrap();
        let name = "_acme-challenge.example.test";
        let (a, b) = (RData::Txt("order-a".into()), RData::Txt("order-b".into()));
        store.add(name, 60, std::slice::from_ref(&a)).await.unwrap();
        store.add(name, 60, std::slice::from_ref(&b)).await.unwrap();
        store
            .remove_values(name, std::slice::from_ref(&a))
            .await
            .unwrap();
        store
            .remove_values(name, std::slice::from_ref(&b))
            .await
            .unwrap();
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            calls,
            format!(
                "replace {name} TXT 60 order-a\n\
                 replace {name} TXT 60 order-a order-b\n\
                 replace {name} TXT 60 order-b\n\
                 remove {name} TXT\n"
            )
        );
    }

    #[tokio::test]
    async fn a_failing_program_is_an_error_with_its_stderr() {
        let store = Exec::new(vec![
            "sh".into(),
            "-c".into(),
            "echo 'no such zone' >&2; exit 4".into(),
            "hook".into(),
        ])
        .unwrap();
        let e = store
            .remove("x.example.test", RecordType::Txt)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no such zone"), "{e}");
        let slow = Exec::new(vec![
            "sh".into(),
            "-c".into(),
            "sleep 5".into(),
            "hook".into(),
        ])
        .unwrap()
        .with_timeout(Duration::from_millis(100));
        let e = slow
            .remove("x.example.test", RecordType::Txt)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}

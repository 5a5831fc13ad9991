//! Manual DNS: nothing is written. mxkeys prints the records to set (or to
//! delete) as zone-file lines, and the propagation check decides when they
//! are there. Adding or removing single values asks to add or delete just
//! those records and to keep the set's others.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::{Change, Error, RData, RecordStore, RecordType};

/// Prints instructions to its writer (stdout by default).
#[derive(Clone)]
pub struct Manual {
    out: Arc<Mutex<dyn Write + Send>>,
}

impl std::fmt::Debug for Manual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Manual")
    }
}

impl Default for Manual {
    fn default() -> Self {
        Manual::new(std::io::stdout())
    }
}

impl Manual {
    /// Prints to `out` instead of stdout (the tests read what was asked).
    pub fn new(out: impl Write + Send + 'static) -> Manual {
        Manual {
            out: Arc::new(Mutex::new(out)),
        }
    }

    fn say(&self, text: &str) -> Result<(), Error> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| Error::Transport("manual: output unavailable".to_owned()))?;
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::Transport(format!("manual: cannot print: {e}")))
    }
}

/// Zone-file lines for a set.
pub fn zone_lines(name: &str, ttl: u32, values: &[RData]) -> String {
    values
        .iter()
        .map(|v| {
            format!(
                "{}. {ttl} IN {} {v}\n",
                crate::canonical_name(name),
                v.record_type()
            )
        })
        .collect()
}

impl RecordStore for Manual {
    /// Manual users' zones cannot be read through mxkeys: the propagation
    /// check reads the authoritative servers instead.
    async fn read(&self, _name: &str, _rtype: RecordType) -> Result<Vec<RData>, Error> {
        Err(Error::Unsupported(
            "a manual zone is read by the propagation check only".to_owned(),
        ))
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = values
            .first()
            .map(RData::record_type)
            .unwrap_or(RecordType::Txt);
        self.say(&format!(
            "Set the {rtype} records of {} to exactly:\n{}",
            crate::canonical_name(name),
            zone_lines(name, ttl, values)
        ))?;
        Ok(Change::Changed)
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        self.say(&format!(
            "Delete the {rtype} records of {}.\n",
            crate::canonical_name(name)
        ))?;
        Ok(Change::Changed)
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = crate::values_type(values)?;
        self.say(&format!(
            "Add these {rtype} records to {} (keep any others there):\n{}",
            crate::canonical_name(name),
            zone_lines(name, ttl, values)
        ))?;
        Ok(Change::Changed)
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        let rtype = crate::values_type(values)?;
        self.say(&format!(
            "Delete these {rtype} records of {} (keep any others there):\n{}",
            crate::canonical_name(name),
            zone_lines(name, 0, values)
        ))?;
        Ok(Change::Changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn prints_zone_file_lines_split_at_255() {
        let buf = Buf::default();
        let m = Manual::new(buf.clone());
        let value = format!("v=DKIM1; k=rsa; p={}", "B".repeat(392));
        m.replace("s1._domainkey.Example.test.", 300, &[RData::Txt(value)])
            .await
            .unwrap();
        m.remove("old._domainkey.example.test", RecordType::Txt)
            .await
            .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().find(|l| l.contains(" IN TXT ")).unwrap();
        assert!(
            line.starts_with("s1._domainkey.example.test. 300 IN TXT \"v=DKIM1; k=rsa; p="),
            "{line}"
        );
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert!(text.contains("Delete the TXT records of old._domainkey.example.test"));
        assert!(m.read("x", RecordType::Txt).await.is_err());
    }

    #[tokio::test]
    async fn single_values_are_added_and_deleted_keeping_the_others() {
        let buf = Buf::default();
        let m = Manual::new(buf.clone());
        let name = "_acme-challenge.example.test";
        m.add(name, 60, &[RData::Txt("mine".into())]).await.unwrap();
        m.remove_values(name, &[RData::Txt("mine".into())])
            .await
            .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("Add these TXT records to _acme-challenge.example.test (keep any others there):\n_acme-challenge.example.test. 60 IN TXT \"mine\"\n"),
            "{text}"
        );
        assert!(
            text.contains("Delete these TXT records of _acme-challenge.example.test (keep any others there):\n"),
            "{text}"
        );
        assert!(!text.contains("exactly"), "{text}");
    }
}

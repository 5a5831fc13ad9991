//! The streaming acme.json reader: memory bounded by a window, not by the
//! file.
//!
//! The file is read through a window of a few hundred kilobytes. This module
//! walks the layout's outer levels itself (the top-level object, each
//! resolver's object, each `Certificates` list) and cuts every other value
//! out whole by its shape alone ([`value_end`]: strings, nesting, scalars).
//! serde_json then parses every piece it cut, with the whole-file reader's
//! lenient types. Each window's entries go to the rayon pool as one batch,
//! judged (in parallel within the batch) while the next window is read and
//! walked; at most [`IN_FLIGHT`] batches wait, so memory stays a few
//! windows. Verdicts are put back in file order. A candidate keeps its
//! entry's offset in the open file, not its text.
//!
//! Its rule: it gives exactly the harvest the whole-file reader
//! ([`super::read_whole`]) would give, or it defers to that reader. It
//! checks the separators between the pieces, and serde_json checks every
//! piece, so the file it accepts is valid JSON. It defers on anything it
//! does not mirror one for one: malformed or truncated JSON (whose message,
//! with line and column, the whole-file parse gives), a duplicate
//! `Certificates` key in a resolver, deep nesting, an unreadable file.

use std::fs::File;
use std::io::Read as _;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, mpsc};

use rayon::prelude::*;
use serde::de::IgnoredAny;
use zeroize::Zeroizing;

use super::{
    Certificates, EntryMaterial, ResolverValue, V1_KEYS, Where, certificates_not_a_list,
    entry_name, group_name, judge_entry, missing_resolver, resolver_not_an_object,
};
use crate::source::{ACME_JSON_SIZE_LIMIT, Candidate, Harvest, Material, Reader, SourceError};
use crate::source::{SourceErrorKind, open_regular};

/// The streaming reader gives the file to the whole-file reader, which
/// reads it again and says what is wrong with it.
#[derive(Debug)]
pub(super) struct Defer;

/// Nesting deeper than this inside one cut value defers (serde_json's own
/// limit is 128 levels, counted from the file's top).
const MAX_DEPTH: usize = 64;

/// Reads the acme.json at `path` through a window of `window` bytes.
pub(super) fn read(
    reader: &Reader,
    path: &Path,
    resolvers: Option<&[String]>,
    window: usize,
) -> Result<Harvest, Defer> {
    let (file, size) = open_regular(path, ACME_JSON_SIZE_LIMIT).map_err(|_| Defer)?;
    let (tx, rx) = mpsc::channel();
    let walked = rayon::in_place_scope(|scope| {
        let mut s = Stream {
            reader,
            scope,
            tx,
            rx: &rx,
            file: Arc::new(file),
            size,
            window: window.max(1),
            buf: Zeroizing::new(Vec::new()),
            free: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            read: 0,
            pending: Vec::new(),
            batches: 0,
            in_flight: 0,
            judged: Vec::new(),
            next_index: 0,
            resolvers: Vec::new(),
            group_errors: Vec::new(),
        };
        s.fill()?;
        s.file_object(resolvers)?;
        let last = std::mem::take(&mut s.buf);
        s.hand_off(last, s.base);
        Ok::<_, Defer>((s.judged, s.resolvers, s.group_errors))
    });
    // The scope waited for every batch: the rest of the verdicts are in.
    let (mut judged, resolvers_seen, group_errors) = walked?;
    judged.extend(rx.try_iter().map(|done| (done.batch, done.verdicts)));
    judged.sort_unstable_by_key(|(batch, _)| *batch);

    let mut harvest = Harvest::default();
    if let Some(wanted) = resolvers {
        for name in wanted {
            if !resolvers_seen.iter().any(|r| r == name) {
                harvest.warnings.push(missing_resolver(reader, name));
            }
        }
    }
    harvest.errors = group_errors;
    for (_, verdicts) in judged {
        for verdict in verdicts? {
            match verdict {
                Judged::Candidate(c) => harvest.candidates.push(c),
                Judged::Error(e) => harvest.errors.push(e),
                Judged::Valid => {}
            }
        }
    }
    Ok(harvest)
}

/// The reader's state: the window, the entries cut but not yet judged,
/// the batches handed to the pool, and what was found so far.
struct Stream<'r, 'a, 's> {
    reader: &'r Reader,
    /// Where each window's entries are judged while the next is walked.
    scope: &'a rayon::Scope<'s>,
    tx: mpsc::Sender<Done>,
    rx: &'a mpsc::Receiver<Done>,
    file: Arc<File>,
    /// The file's size when opened: no buffer is made larger than what is
    /// left to read (plus one byte, to see the end).
    size: u64,
    /// How much is read at a time.
    window: usize,
    /// The window: the file's bytes from `base` on.
    buf: Zeroizing<Vec<u8>>,
    /// Buffers whose batch was judged, to be filled again.
    free: Vec<Zeroizing<Vec<u8>>>,
    base: u64,
    /// The cursor in `buf`: everything before it has been walked.
    pos: usize,
    eof: bool,
    /// Bytes read so far, against the size limit.
    read: u64,
    /// Entries cut from `buf`, to be judged as one batch.
    pending: Vec<Pending>,
    /// Batches handed off so far, and how many are not judged yet.
    batches: usize,
    in_flight: usize,
    /// Verdicts received while walking: (batch, its entries' verdicts).
    judged: Vec<(usize, Verdicts)>,
    /// The running position of an entry among the used resolvers' entries.
    next_index: usize,
    /// Every resolver's name in the file (for the missing-resolver warning).
    resolvers: Vec<String>,
    /// Errors of whole resolvers, in file order (they come before entries').
    group_errors: Vec<SourceError>,
}

/// A batch's entries judged, in file order; `Err` if one is not valid JSON.
type Verdicts = Result<Vec<Judged>, Defer>;

/// A judged batch, and its window, to be filled again.
struct Done {
    batch: usize,
    verdicts: Verdicts,
    buf: Zeroizing<Vec<u8>>,
}

/// Batches handed off and not yet judged before walking waits: bounds
/// memory to a few windows however large the file.
const IN_FLIGHT: usize = 2;

/// An entry cut from the window.
struct Pending {
    /// Its range in the window.
    at: Range<usize>,
    /// `None` for an entry of a resolver the configuration leaves out: it
    /// is only parsed, as the whole-file parse does.
    used: Option<Used>,
}

struct Used {
    /// How messages name its resolver.
    group: Arc<str>,
    /// Its position in its resolver's list.
    i: usize,
    /// Its position among all used entries.
    index: usize,
}

enum Judged {
    Candidate(Candidate),
    Error(SourceError),
    /// Valid JSON, and nothing more asked of it.
    Valid,
}

impl<'r: 's, 's> Stream<'r, '_, 's> {
    /// Reads the first window.
    fn fill(&mut self) -> Result<(), Defer> {
        let want = self.want(0);
        // Room for a window and the partial value carried over from the
        // last one: the buffers are not reallocated (and their pages not
        // faulted in again) on every refill.
        self.buf.reserve_exact(want.saturating_mul(2));
        let n = read_more(&self.file, &mut self.buf, want).map_err(|_| Defer)?;
        self.account(n, want)
    }

    /// How much to read next, when `tail` bytes are carried over: a window,
    /// or more for a value longer than that (read in ever larger steps, so
    /// cutting it again from its start after each step stays linear), but
    /// not more than the file's size leaves.
    fn want(&self, tail: usize) -> usize {
        let left = self.size.saturating_sub(self.read).saturating_add(1);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        self.window.max(tail).min(left)
    }

    /// Counts `n` bytes read of `want` asked: fewer means the file ended.
    fn account(&mut self, n: usize, want: usize) -> Result<(), Defer> {
        self.read += n as u64;
        self.eof = n < want;
        if self.read > ACME_JSON_SIZE_LIMIT {
            return Err(Defer);
        }
        Ok(())
    }

    /// Hands the window's cut entries to the pool, carries the unwalked
    /// bytes over to a fresh window and reads more after them.
    fn refill(&mut self) -> Result<(), Defer> {
        let want = self.want(self.buf.len() - self.pos);
        let mut next = self.spare();
        next.reserve_exact(self.buf.capacity());
        next.extend_from_slice(&self.buf[self.pos..]);
        let full = std::mem::replace(&mut self.buf, next);
        let base = self.base;
        self.base += self.pos as u64;
        self.pos = 0;
        self.hand_off(full, base);
        let n = read_more(&self.file, &mut self.buf, want).map_err(|_| Defer)?;
        self.account(n, want)
    }

    /// Judges `buf`'s cut entries in the pool (`base`: its offset in the
    /// file), after waiting until fewer than [`IN_FLIGHT`] batches are.
    fn hand_off(&mut self, buf: Zeroizing<Vec<u8>>, base: u64) {
        if self.pending.is_empty() {
            self.free.push(buf);
            return;
        }
        while self.in_flight >= IN_FLIGHT {
            self.wait();
        }
        let pending = std::mem::take(&mut self.pending);
        let (batch, reader, file, tx) = (
            self.batches,
            self.reader,
            self.file.clone(),
            self.tx.clone(),
        );
        self.batches += 1;
        self.in_flight += 1;
        self.scope.spawn(move |_| {
            let verdicts = judge_all(reader, &file, base, &buf, &pending);
            // The receiver outlives the scope: sending cannot fail.
            let _ = tx.send(Done {
                batch,
                verdicts,
                buf,
            });
        });
    }

    /// Takes one judged batch, helping the pool meanwhile.
    fn wait(&mut self) {
        let done = loop {
            match self.rx.try_recv() {
                Ok(done) => break done,
                Err(mpsc::TryRecvError::Empty) => match rayon::yield_now() {
                    Some(rayon::Yield::Executed) => {}
                    Some(rayon::Yield::Idle) => std::thread::yield_now(),
                    // Not a pool thread: the batches run in the pool.
                    None => match self.rx.recv() {
                        Ok(done) => break done,
                        Err(mpsc::RecvError) => return,
                    },
                },
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        };
        self.took(done);
    }

    fn took(&mut self, done: Done) {
        self.in_flight -= 1;
        self.judged.push((done.batch, done.verdicts));
        self.free.push(done.buf);
    }

    /// A buffer to fill: one whose batch was judged, or a new one.
    fn spare(&mut self) -> Zeroizing<Vec<u8>> {
        while let Ok(done) = self.rx.try_recv() {
            self.took(done);
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf
    }

    /// The next byte that is not JSON whitespace, or `None` at the end of
    /// the file. The cursor stops on it.
    fn peek(&mut self) -> Result<Option<u8>, Defer> {
        loop {
            let rest = &self.buf[self.pos..];
            if let Some(k) = rest
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            {
                self.pos += k;
                return Ok(Some(rest[k]));
            }
            self.pos = self.buf.len();
            if self.eof {
                return Ok(None);
            }
            self.refill()?;
        }
    }

    /// Steps over `byte`, which must come next.
    fn expect(&mut self, byte: u8) -> Result<(), Defer> {
        match self.peek()? {
            Some(b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(Defer),
        }
    }

    /// Cuts the next value out: its range in the window, good until the
    /// next refill. The cursor moves past it.
    fn value(&mut self) -> Result<Range<usize>, Defer> {
        self.peek()?.ok_or(Defer)?;
        loop {
            match value_end(&self.buf[self.pos..], self.eof)? {
                Some(n) => {
                    let at = self.pos..self.pos + n;
                    self.pos += n;
                    return Ok(at);
                }
                None if self.eof => return Err(Defer),
                None => self.refill()?,
            }
        }
    }

    /// Skips the next value, checking that it is valid JSON.
    fn skip(&mut self) -> Result<(), Defer> {
        let at = self.value()?;
        serde_json::from_slice::<IgnoredAny>(&self.buf[at]).map_err(|_| Defer)?;
        Ok(())
    }

    /// Walks an object's members: `each` gets every key, with the cursor
    /// on its value, and must step over that value.
    fn members(
        &mut self,
        mut each: impl FnMut(&mut Self, String) -> Result<(), Defer>,
    ) -> Result<(), Defer> {
        self.expect(b'{')?;
        if self.peek()? == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek()? != Some(b'"') {
                return Err(Defer);
            }
            let at = self.value()?;
            let key: String = serde_json::from_slice(&self.buf[at]).map_err(|_| Defer)?;
            self.expect(b':')?;
            each(self, key)?;
            match self.peek()? {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(Defer),
            }
        }
    }

    /// The top-level object (v2/v3 resolvers, or the v1 layout), then
    /// nothing but whitespace.
    fn file_object(&mut self, filter: Option<&[String]>) -> Result<(), Defer> {
        if self.peek()? != Some(b'{') {
            return Err(Defer);
        }
        self.members(|s, key| {
            if key == "Certificates" {
                let group = group_name(None);
                let used = Some(Arc::from(group.as_str()));
                if let Certificates::Invalid(kind) = s.certificates(used)? {
                    let e = certificates_not_a_list(s.reader, group, kind);
                    s.group_errors.push(e);
                }
                Ok(())
            } else if V1_KEYS.contains(&key.as_str()) {
                s.skip()
            } else {
                s.resolver(key, filter)
            }
        })?;
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(Defer),
        }
    }

    /// One v2/v3 resolver's value.
    fn resolver(&mut self, name: String, filter: Option<&[String]>) -> Result<(), Defer> {
        let used = filter.is_none_or(|f| f.contains(&name));
        let group = group_name(Some(&name));
        self.resolvers.push(name);
        let certificates = if self.peek()? == Some(b'{') {
            let shared: Arc<str> = Arc::from(group.as_str());
            let mut certificates = None;
            self.members(|s, key| {
                if key != "Certificates" {
                    return s.skip();
                }
                if certificates.is_some() {
                    // The whole-file parse keeps the last list only.
                    return Err(Defer);
                }
                certificates = Some(s.certificates(used.then(|| shared.clone()))?);
                Ok(())
            })?;
            certificates.unwrap_or(Certificates::Absent)
        } else {
            let at = self.value()?;
            let value: ResolverValue<'_> =
                serde_json::from_slice(&self.buf[at]).map_err(|_| Defer)?;
            if let (true, Some(kind)) = (used, value.invalid) {
                self.group_errors
                    .push(resolver_not_an_object(self.reader, group.clone(), kind));
            }
            // Not an object: its `certificates` is Absent or Null.
            value.certificates
        };
        if let (true, Certificates::Invalid(kind)) = (used, &certificates) {
            self.group_errors
                .push(certificates_not_a_list(self.reader, group, kind));
        }
        Ok(())
    }

    /// A `Certificates` value: a list's entries are cut and queued; any
    /// other value is parsed as the whole-file reader does. `group` is
    /// `None` for a resolver the configuration leaves out.
    fn certificates(&mut self, group: Option<Arc<str>>) -> Result<Certificates<'static>, Defer> {
        if self.peek()? != Some(b'[') {
            let at = self.value()?;
            let value: Certificates<'_> =
                serde_json::from_slice(&self.buf[at]).map_err(|_| Defer)?;
            return match value {
                Certificates::Absent => Ok(Certificates::Absent),
                Certificates::Null => Ok(Certificates::Null),
                Certificates::Invalid(kind) => Ok(Certificates::Invalid(kind)),
                Certificates::List(_) => Err(Defer),
            };
        }
        self.pos += 1;
        if self.peek()? == Some(b']') {
            self.pos += 1;
            return Ok(Certificates::List(Vec::new()));
        }
        let mut i = 0;
        loop {
            let at = self.value()?;
            let used = group.as_ref().map(|group| {
                let index = self.next_index;
                self.next_index += 1;
                Used {
                    group: group.clone(),
                    i,
                    index,
                }
            });
            self.pending.push(Pending { at, used });
            i += 1;
            match self.peek()? {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Certificates::List(Vec::new()));
                }
                _ => return Err(Defer),
            }
        }
    }
}

/// Judges the cut entries of one window, in parallel; defers if one is
/// not valid JSON.
fn judge_all(
    reader: &Reader,
    file: &Arc<File>,
    base: u64,
    buf: &[u8],
    pending: &[Pending],
) -> Result<Vec<Judged>, Defer> {
    pending
        .par_iter()
        .map(|p| judge(reader, file, base, buf, p))
        .collect()
}

fn judge(
    reader: &Reader,
    file: &Arc<File>,
    base: u64,
    buf: &[u8],
    p: &Pending,
) -> Result<Judged, Defer> {
    let bytes = &buf[p.at.clone()];
    // Parsed as the whole-file parse does, even when unused: it checks the
    // keys' UTF-8, where IgnoredAny would not.
    let entry: super::Entry<'_> = serde_json::from_slice(bytes).map_err(|_| Defer)?;
    let Some(used) = &p.used else {
        return Ok(Judged::Valid);
    };
    let name = entry_name(&used.group, used.i, &entry);
    Ok(match judge_entry(&entry) {
        Ok(leaf) => Judged::Candidate(Candidate {
            origin: reader.origin(name, used.index),
            leaf,
            fallback: false,
            material: Material::AcmeJson(EntryMaterial(Where::File {
                file: file.clone(),
                offset: base + p.at.start as u64,
                len: bytes.len(),
            })),
        }),
        Err(e) => {
            Judged::Error(reader.error(Some(name), SourceErrorKind::Malformed, e.to_string()))
        }
    })
}

/// Appends up to `want` bytes of `file` to `buf`; fewer means its end.
fn read_more(file: &File, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    buf.reserve(want);
    file.take(want as u64).read_to_end(buf)
}

/// Where the JSON value that starts at `s[0]` ends (exclusive), judged by
/// its shape only: a string ends at its closing quote, an object or a list
/// where its brackets balance, a scalar at the next delimiter. `Ok(None)`:
/// it goes on past `s` (`eof`: nothing comes after `s`). Pure.
///
/// The cut need not be right for malformed JSON: serde_json parses every
/// piece, and a piece cut wrong does not parse. A valid value's brackets
/// balance first at its own end, so valid JSON is always cut right.
fn value_end(s: &[u8], eof: bool) -> Result<Option<usize>, Defer> {
    match s.first() {
        None => Ok(None),
        Some(b'"') => Ok(string_end(s, 1)),
        Some(b'{' | b'[') => nested_end(s),
        Some(_) => Ok(
            match s
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                Some(n) => Some(n),
                None if eof => Some(s.len()),
                None => None,
            },
        ),
    }
}

/// The end (after the closing quote) of a string whose content starts at
/// `s[from]`.
fn string_end(s: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let k = memchr::memchr2(b'"', b'\\', s.get(i..)?)?;
        if s[i + k] == b'"' {
            return Some(i + k + 1);
        }
        // A backslash: the next byte is escaped, whatever it is.
        i += k + 2;
    }
}

/// The end of an object or list that starts at `s[0]`.
fn nested_end(s: &[u8]) -> Result<Option<usize>, Defer> {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => match string_end(s, i + 1) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => return Ok(None),
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Defer);
                }
            }
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(Some(i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(s: &str, eof: bool) -> Option<usize> {
        value_end(s.as_bytes(), eof).unwrap_or_else(|Defer| panic!("deferred on {s:?}"))
    }

    #[test]
    fn a_value_is_cut_where_it_ends_whatever_follows() {
        for (text, end) in [
            (r#""abc" , 1"#, 5),
            (r#""a\"b\\" x"#, 8),
            (r#"{"k": "}", "l": [1, {"m": "]"}]} rest"#, 32),
            ("[[], {}]]", 8),
            ("12.5e3, 4", 6),
            ("true}", 4),
            ("null\n", 4),
        ] {
            assert_eq!(cut(text, false), Some(end), "{text:?}");
        }
    }

    #[test]
    fn a_value_that_runs_past_the_window_asks_for_more() {
        for text in [
            r#""abc"#,
            r#""ab\"#,
            r#"{"k": [1, 2"#,
            r#"{"k": "}"#,
            "12",
            "tru",
        ] {
            assert_eq!(cut(text, false), None, "{text:?}");
        }
        assert_eq!(cut("12", true), Some(2), "a number at the end of the file");
        assert_eq!(cut(r#"{"k": 1"#, true), None, "an object cut by the end");
    }

    #[test]
    fn nesting_deeper_than_the_limit_defers() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(value_end(deep.as_bytes(), false).is_err());
        let fine = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(cut(&fine, false), Some(2 * MAX_DEPTH));
    }
}

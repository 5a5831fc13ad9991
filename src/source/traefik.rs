//! Traefik's acme.json (v1, v2 and v3 layouts).
//!
//! v2/v3: `{RESOLVER: {"Account": ..., "Certificates": [{"domain": {...},
//! "certificate": B64, "key": B64, "Store": ...}] | null}}`. v1: one
//! top-level `{"Account", "Certificates": [{"Domain", "Certificate", "Key"}],
//! "HTTPChallenges", ...}`. The `main`/`sans` fields are used only to name
//! entries in messages: what a certificate covers is read from the
//! certificate itself.
//!
//! Speed and memory matter here (an acme.json can hold thousands of
//! certificates, and the daemon reads it again on every change). The
//! streaming reader ([`stream`], the default) reads the file through a
//! window, so memory does not grow with the file, and judges each window's
//! entries in parallel while the next is read. Each entry is judged
//! leniently (a wrong type in one entry is that entry's error, not the
//! file's). Only the leaf of each chain is base64-decoded and parsed, and
//! keys are decoded only for the candidates selection tries, from the
//! entry's bytes read again from the file. The whole-file reader
//! ([`read_whole`]) is the reference the streaming one must match; it
//! reports malformed JSON.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use rayon::prelude::*;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use super::{Candidate, Harvest, Ingest, Material, Reader, SourceErrorKind};
use crate::cert::{self, Bundle, CertError, Leaf, PrivateKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

mod stream;

/// Reads one acme.json. `resolvers` limits which resolvers are used.
pub fn read(reader: &Reader, path: &Path, resolvers: Option<&[String]>, ingest: Ingest) -> Harvest {
    match ingest {
        Ingest::Streaming { window } => stream::read(reader, path, resolvers, window)
            .unwrap_or_else(|stream::Defer| read_whole(reader, path, resolvers, true)),
        Ingest::Whole => read_whole(reader, path, resolvers, false),
    }
}

/// Reads the whole file into memory and parses it at once: the reference
/// reader, and the one that reports malformed JSON.
fn read_whole(
    reader: &Reader,
    path: &Path,
    resolvers: Option<&[String]>,
    parallel: bool,
) -> Harvest {
    match super::read_limited(path, super::ACME_JSON_SIZE_LIMIT) {
        // Arc::new keeps the allocation: Vec -> Arc<[u8]> would copy the file.
        Ok(b) => parse(reader, Arc::new(b), resolvers, parallel),
        Err(e) => {
            let mut harvest = Harvest::default();
            harvest
                .errors
                .push(reader.error(None, SourceErrorKind::Unreadable, e.to_string()));
            harvest
        }
    }
}

/// Parses the text of an acme.json (no I/O): its candidates, and an
/// error for the file or for each entry that cannot be used.
fn parse(
    reader: &Reader,
    buf: Arc<Vec<u8>>,
    resolvers: Option<&[String]>,
    parallel: bool,
) -> Harvest {
    let mut harvest = Harvest::default();
    let file: AcmeFile<'_> = match serde_json::from_slice(&buf) {
        Ok(f) => f,
        Err(e) => {
            harvest
                .errors
                .push(reader.error(None, SourceErrorKind::Malformed, json_reason(&e)));
            return harvest;
        }
    };
    let groups = match file {
        AcmeFile::Object(groups) => groups,
        AcmeFile::NotObject(kind) => {
            harvest.errors.push(reader.error(
                None,
                SourceErrorKind::Malformed,
                format!("not a Traefik acme.json: the top level is {kind}, expected an object"),
            ));
            return harvest;
        }
    };

    if let Some(wanted) = resolvers {
        for name in wanted {
            if !groups
                .iter()
                .any(|g| g.resolver.as_deref() == Some(name.as_str()))
            {
                harvest.warnings.push(missing_resolver(reader, name));
            }
        }
    }

    // Flatten to (group, entry) with a running index so ranking and
    // messages follow file order.
    let mut work = Vec::new();
    for group in &groups {
        if let (Some(filter), Some(name)) = (resolvers, group.resolver.as_deref())
            && !filter.iter().any(|f| f == name)
        {
            continue;
        }
        let group_name = group_name(group.resolver.as_deref());
        match &group.certificates {
            Certificates::List(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    work.push((group_name.clone(), i, entry));
                }
            }
            Certificates::Absent | Certificates::Null => {}
            Certificates::Invalid(kind) => {
                harvest
                    .errors
                    .push(certificates_not_a_list(reader, group_name.clone(), kind))
            }
        }
        if let Some(kind) = group.invalid {
            harvest
                .errors
                .push(resolver_not_an_object(reader, group_name, kind));
        }
    }

    let judge = |(index, (group, i, entry)): (usize, &(String, usize, &Entry<'_>))| {
        let name = entry_name(group, *i, entry);
        judge_entry(entry)
            .and_then(|leaf| Ok((leaf, EntryMaterial::in_buffer(&buf, entry)?)))
            .map(|(leaf, material)| Candidate {
                origin: reader.origin(name.clone(), index),
                leaf,
                fallback: false,
                material: Material::AcmeJson(material),
            })
            .map_err(|e| reader.error(Some(name), SourceErrorKind::Malformed, e.to_string()))
    };
    let results: Vec<Result<Candidate, super::SourceError>> = if parallel {
        work.par_iter().enumerate().map(judge).collect()
    } else {
        work.iter().enumerate().map(judge).collect()
    };
    for r in results {
        match r {
            Ok(c) => harvest.candidates.push(c),
            Err(e) => harvest.errors.push(e),
        }
    }
    harvest
}

/// How messages name a resolver's entries (`None`: the v1 layout's).
fn group_name(resolver: Option<&str>) -> String {
    match resolver {
        Some(r) => format!("resolver {r:?}"),
        None => "v1 Certificates".to_owned(),
    }
}

/// The warning for a resolver the configuration names and the file lacks.
fn missing_resolver(reader: &Reader, name: &str) -> String {
    format!(
        "source {}: resolver {name:?} is not in the file",
        reader.label
    )
}

/// The error for a `Certificates` value that is not a list.
fn certificates_not_a_list(reader: &Reader, group: String, kind: &str) -> super::SourceError {
    reader.error(
        Some(group),
        SourceErrorKind::Malformed,
        format!("`Certificates` is {kind}, expected a list"),
    )
}

/// The error for a resolver whose value is not an object.
fn resolver_not_an_object(reader: &Reader, group: String, kind: &str) -> super::SourceError {
    reader.error(
        Some(group),
        SourceErrorKind::Malformed,
        format!("not a Traefik acme.json resolver: it is {kind}, expected an object"),
    )
}

fn json_reason(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => format!(
            "truncated JSON: the file ends too early (line {}, column {}); a writer may be mid-write",
            e.line(),
            e.column()
        ),
        serde_json::error::Category::Data => format!("not a Traefik acme.json: {e}"),
        _ => format!("invalid JSON: {e}"),
    }
}

fn entry_name(group: &str, i: usize, entry: &Entry<'_>) -> String {
    match &entry.main {
        Field::Str(main) => format!("{group} #{} (main {main:?})", i + 1),
        _ => format!("{group} #{}", i + 1),
    }
}

/// Where an entry's `certificate` and `key` fields are, to build its
/// bundle when selection asks. Its `Debug` shows sizes only: the buffer is
/// the whole acme.json, every key included.
pub struct EntryMaterial(Where);

enum Where {
    /// Spans of the whole file, kept in memory (the whole-file reader), or
    /// owned copies when JSON escapes made them necessary.
    Buffer {
        buf: Arc<Vec<u8>>,
        cert: Text,
        key: Text,
    },
    /// The entry's bytes in the open file (the streaming reader), read
    /// again when the bundle is built: memory does not grow with the file.
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    },
}

impl fmt::Debug for EntryMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("EntryMaterial");
        match &self.0 {
            Where::Buffer { buf, cert, .. } => d.field("cert_len", &cert.get(buf).len()),
            Where::File { offset, len, .. } => d.field("offset", offset).field("entry_len", len),
        };
        d.field("key", &"<redacted>").finish()
    }
}

/// Never printed (it may be a key): see [`EntryMaterial`]'s `Debug`.
enum Text {
    Span(Range<usize>),
    Owned(Box<str>),
}

impl Text {
    /// A span when `s` lies inside `buf` (borrowed by the JSON parser),
    /// else an owned copy.
    fn new(s: &str, buf: &Arc<Vec<u8>>) -> Self {
        let range = buf.as_ptr_range();
        let start = s.as_ptr();
        if range.contains(&start) && (start as usize + s.len()) <= range.end as usize {
            let off = start as usize - range.start as usize;
            Text::Span(off..off + s.len())
        } else {
            Text::Owned(s.into())
        }
    }

    fn get<'b>(&'b self, buf: &'b [u8]) -> &'b [u8] {
        match self {
            Text::Span(r) => buf.get(r.clone()).unwrap_or_default(),
            Text::Owned(s) => s.as_bytes(),
        }
    }
}

impl EntryMaterial {
    /// The entry's bundle, refused unless its leaf is `judged`, the leaf
    /// selection judged: the file may have been rewritten in place since it
    /// was read, or a chain out of order may have made another certificate
    /// the leaf.
    pub(super) fn bundle(&self, judged: &Leaf) -> Result<Bundle, CertError> {
        let bundle = match &self.0 {
            Where::Buffer { buf, cert, key } => decode_bundle(cert.get(buf), key.get(buf))?,
            Where::File { file, offset, len } => {
                use std::os::unix::fs::FileExt as _;
                let mut bytes = Zeroizing::new(vec![0; *len]);
                file.read_exact_at(&mut bytes, *offset)
                    .map_err(|_| CertError::NotJudged)?;
                let entry: Entry<'_> =
                    serde_json::from_slice(&bytes).map_err(|_| CertError::NotJudged)?;
                let (cert, key) = entry.fields().map_err(|_| CertError::NotJudged)?;
                decode_bundle(cert.as_bytes(), key.as_bytes())?
            }
        };
        match Leaf::parse(bundle.leaf_der()) {
            Ok(leaf) if leaf == *judged => Ok(bundle),
            _ => Err(CertError::NotJudged),
        }
    }

    fn in_buffer(buf: &Arc<Vec<u8>>, entry: &Entry<'_>) -> Result<Self, EntryError> {
        let (cert, key) = entry.fields()?;
        Ok(EntryMaterial(Where::Buffer {
            buf: buf.clone(),
            cert: Text::new(cert, buf),
            key: Text::new(key, buf),
        }))
    }
}

/// Decodes an entry's base64 `certificate` (a PEM chain) and `key`.
fn decode_bundle(cert_b64: &[u8], key_b64: &[u8]) -> Result<Bundle, CertError> {
    let chain = B64
        .decode(cert_b64)
        .map_err(|e| CertError::BadPem(format!("`certificate` is not valid base64: {e}")))?;
    let certs = cert::parse_pem_certs(&chain)?;
    let key_pem = Zeroizing::new(
        B64.decode(key_b64)
            .map_err(|_| CertError::BadPem("`key` is not valid base64".to_owned()))?,
    );
    let key = PrivateKey::from_pem(&key_pem)?;
    let certs = cert::order_chain(certs, &key);
    Ok(Bundle { certs, key })
}

/// Why an entry offers no candidate. One line, never the key.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    /// The entry is not a JSON object (`kind` is its JSON type).
    #[error("the entry is {0}, expected an object")]
    NotObject(&'static str),
    /// A required field is absent, null or empty.
    #[error("no {0} (`{0}` is missing or empty)")]
    Missing(&'static str),
    /// A required field is not a string.
    #[error("`{field}` is {kind}, expected a base64 string")]
    NotString {
        field: &'static str,
        kind: &'static str,
    },
    /// `certificate` has a byte base64 does not allow, at `offset`.
    #[error("`certificate` is not valid base64: byte {byte:#04x} at offset {offset}")]
    CertificateByte { byte: u8, offset: usize },
    #[error("`certificate` is not valid base64: {0}")]
    CertificateBase64(base64::DecodeError),
    /// The certificate does not parse.
    #[error("certificate: {0}")]
    Certificate(CertError),
    /// The whole entry (decoded to find the leaf of a chain out of order)
    /// does not parse.
    #[error(transparent)]
    Bundle(CertError),
}

/// Judges one entry (no I/O): the facts of its leaf.
fn judge_entry(entry: &Entry<'_>) -> Result<Leaf, EntryError> {
    let (cert_b64, key_b64) = entry.fields()?;
    let leaf_der = decode_leaf(cert_b64.as_bytes())?;
    // A chain that starts with a CA certificate is out of order: only then
    // is the whole entry decoded, to find its leaf (see cert::order_chain).
    let first = Leaf::parse(leaf_der.as_ref()).map_err(EntryError::Certificate)?;
    if !first.is_ca {
        return Ok(first);
    }
    let bundle =
        decode_bundle(cert_b64.as_bytes(), key_b64.as_bytes()).map_err(EntryError::Bundle)?;
    Leaf::parse(bundle.leaf_der()).map_err(EntryError::Certificate)
}

/// Decodes only as much of the base64 PEM chain as holds the first
/// certificate, and returns that certificate's DER.
fn decode_leaf(b64: &[u8]) -> Result<rustls_pki_types::CertificateDer<'static>, EntryError> {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    const CHUNK: usize = 256; // base64 characters, a multiple of 4: past the END line, at most 192 bytes are decoded for nothing
    let mut pem = Vec::with_capacity(2048);
    let mut at = 0;
    let mut searched: usize = 0;
    while at < b64.len() {
        let end = (at + CHUNK).min(b64.len());
        B64.decode_vec(&b64[at..end], &mut pem).map_err(|e| {
            // Offsets inside a chunk are relative to it; report the absolute one.
            match e {
                base64::DecodeError::InvalidByte(off, byte) => EntryError::CertificateByte {
                    byte,
                    offset: at + off,
                },
                other => EntryError::CertificateBase64(other),
            }
        })?;
        at = end;
        let window_start = searched.saturating_sub(END.len());
        if memchr::memmem::find(&pem[window_start..], END).is_some() {
            break;
        }
        searched = pem.len();
    }
    cert::first_pem_cert(&pem).map_err(EntryError::Certificate)
}

// ---- Lenient deserialisation -------------------------------------------

/// The top level: an object of resolvers (v2/v3) or the v1 object.
enum AcmeFile<'a> {
    Object(Vec<Group<'a>>),
    NotObject(&'static str),
}

/// A set of certificates: one resolver (v2/v3) or the v1 file itself.
struct Group<'a> {
    /// `None` for the v1 layout.
    resolver: Option<String>,
    certificates: Certificates<'a>,
    /// Set when the resolver's value is not an object.
    invalid: Option<&'static str>,
}

enum Certificates<'a> {
    Absent,
    Null,
    List(Vec<Entry<'a>>),
    Invalid(&'static str),
}

#[derive(Default)]
struct Entry<'a> {
    main: Field<'a>,
    certificate: Field<'a>,
    key: Field<'a>,
    invalid: Option<&'static str>,
}

/// A string field that may be absent, null or of the wrong type.
#[derive(Default)]
enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Other(&'static str),
}

impl Entry<'_> {
    /// The `certificate` and `key` fields, both required.
    fn fields(&self) -> Result<(&str, &str), EntryError> {
        if let Some(kind) = self.invalid {
            return Err(EntryError::NotObject(kind));
        }
        Ok((
            self.certificate.require("certificate")?.as_ref(),
            self.key.require("key")?.as_ref(),
        ))
    }
}

impl<'a> Field<'a> {
    fn require(&self, name: &'static str) -> Result<&Cow<'a, str>, EntryError> {
        match self {
            Field::Str(s) if !s.trim().is_empty() => Ok(s),
            Field::Str(_) | Field::Absent | Field::Null => Err(EntryError::Missing(name)),
            Field::Other(kind) => Err(EntryError::NotString { field: name, kind }),
        }
    }
}

/// Drains whatever value comes and names its JSON type.
fn skip_kind<'de, A: MapAccess<'de>>(map: &mut A) -> Result<(), A::Error> {
    map.next_value::<IgnoredAny>().map(|_| ())
}

macro_rules! other_kinds {
    ($out:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($out("a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($out("a number"))
        }
    };
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other("a list"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an object"))
            }
            other_kinds!(Field::Other);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `domain` / `Domain`: only `main` is kept, for naming the entry.
struct Domain<'a>(Field<'a>);

impl<'de: 'a, 'a> de::Deserialize<'de> for Domain<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Domain<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut main = Field::Absent;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if k == "main" || k == "Main" {
                        main = m.next_value()?;
                    } else {
                        skip_kind(&mut m)?;
                    }
                }
                Ok(Domain(main))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Domain(Field::Absent))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Domain(Field::Absent))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Domain(Field::Absent))
            }
            other_kinds!(|_| Domain(Field::Absent));
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Entry<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entry<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut e = Entry::default();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    match k.as_ref() {
                        "domain" | "Domain" => e.main = m.next_value::<Domain<'a>>()?.0,
                        "certificate" | "Certificate" => e.certificate = m.next_value()?,
                        "key" | "Key" => e.key = m.next_value()?,
                        _ => skip_kind(&mut m)?,
                    }
                }
                Ok(e)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(invalid_entry("a list"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(invalid_entry("a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(invalid_entry("null"))
            }
            other_kinds!(invalid_entry);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn invalid_entry(kind: &'static str) -> Entry<'static> {
    Entry {
        invalid: Some(kind),
        ..Entry::default()
    }
}

impl<'de: 'a, 'a> de::Deserialize<'de> for Certificates<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Certificates<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(s.size_hint().unwrap_or(0));
                while let Some(e) = s.next_element()? {
                    v.push(e);
                }
                Ok(Certificates::List(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Certificates::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Certificates::Invalid("an object"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Certificates::Invalid("a string"))
            }
            other_kinds!(Certificates::Invalid);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A v2/v3 resolver value: `{"Account": ..., "Certificates": ...}`.
struct ResolverValue<'a> {
    certificates: Certificates<'a>,
    invalid: Option<&'static str>,
}

impl<'de: 'a, 'a> de::Deserialize<'de> for ResolverValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        fn bad<'a>(kind: &'static str) -> ResolverValue<'a> {
            ResolverValue {
                certificates: Certificates::Absent,
                invalid: Some(kind),
            }
        }
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ResolverValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut certificates = Certificates::Absent;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if k == "Certificates" {
                        certificates = m.next_value()?;
                    } else {
                        skip_kind(&mut m)?;
                    }
                }
                Ok(ResolverValue {
                    certificates,
                    invalid: None,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(bad("a list"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(bad("a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(ResolverValue {
                    certificates: Certificates::Null,
                    invalid: None,
                })
            }
            other_kinds!(bad);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Top-level keys that mark the v1 layout.
const V1_KEYS: [&str; 5] = [
    "Account",
    "HTTPChallenges",
    "TLSChallenges",
    "DNSChallenges",
    "Certificates",
];

impl<'de: 'a, 'a> de::Deserialize<'de> for AcmeFile<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = AcmeFile<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut groups = Vec::new();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    if k == "Certificates" {
                        groups.push(Group {
                            resolver: None,
                            certificates: m.next_value()?,
                            invalid: None,
                        });
                    } else if V1_KEYS.contains(&k.as_ref()) {
                        skip_kind(&mut m)?;
                    } else {
                        let value: ResolverValue<'a> = m.next_value()?;
                        groups.push(Group {
                            resolver: Some(k.into_owned()),
                            certificates: value.certificates,
                            invalid: value.invalid,
                        });
                    }
                }
                Ok(AcmeFile::Object(groups))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(AcmeFile::NotObject("a list"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(AcmeFile::NotObject("a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(AcmeFile::NotObject("null"))
            }
            other_kinds!(AcmeFile::NotObject);
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceErrorKind;
    use crate::source::testing::{Alg, Ca};

    const NOW: i64 = 1_767_225_600;

    fn reader() -> Reader {
        Reader {
            label: Arc::from("traefik"),
            index: 0,
        }
    }

    /// The base64 `certificate` and `key` fields of an entry for `names`.
    fn fields(ca: &Ca, names: &[&str]) -> (String, String) {
        let b = ca.issue(names, Alg::Ecdsa, NOW, NOW + 90 * 86_400).bundle();
        (
            B64.encode(b.fullchain_pem()),
            B64.encode(b.key.to_pem().as_bytes()),
        )
    }

    /// What a harvest found, to compare two readers' harvests.
    type Found = (Vec<(String, usize, Leaf)>, Vec<String>, Vec<String>);

    fn found(h: &Harvest) -> Found {
        let candidates = h.candidates.iter();
        (
            candidates
                .map(|c| (c.origin.entry.clone(), c.origin.entry_index, c.leaf.clone()))
                .collect(),
            h.errors.iter().map(ToString::to_string).collect(),
            h.warnings.clone(),
        )
    }

    /// Reads `text` as an acme.json with the whole-file reader and with the
    /// streaming one through windows of many sizes, checks that they agree,
    /// and returns the streaming reader's harvest.
    fn parse_text(text: &str, resolvers: Option<&[String]>) -> Harvest {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("acme.json");
        std::fs::write(&path, text).unwrap();
        let whole = read(&reader(), &path, resolvers, Ingest::Whole);
        for window in [1, 2, 7, 64, 4096] {
            let streamed = read(&reader(), &path, resolvers, Ingest::Streaming { window });
            assert_eq!(found(&streamed), found(&whole), "window {window}");
        }
        read(&reader(), &path, resolvers, Ingest::default())
    }

    fn entries(h: &Harvest) -> Vec<String> {
        h.candidates
            .iter()
            .map(|c| c.origin.entry.clone())
            .collect()
    }

    fn errors(h: &Harvest) -> Vec<(Option<&str>, SourceErrorKind, &str)> {
        h.errors
            .iter()
            .map(|e| (e.entry.as_deref(), e.kind, e.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_v2_file_yields_one_candidate_per_entry_named_by_resolver_and_main() {
        let ca = Ca::new();
        let (c1, k1) = fields(&ca, &["mx.example"]);
        let (c2, k2) = fields(&ca, &["imap.example"]);
        let text = format!(
            r#"{{"le": {{"Account": {{}}, "Certificates": [
                {{"domain": {{"main": "mx.example"}}, "certificate": "{c1}", "key": "{k1}", "Store": "default"}},
                {{"domain": {{"main": "imap.example", "sans": []}}, "certificate": "{c2}", "key": "{k2}"}}
            ]}}, "other": {{"Certificates": null}}}}"#
        );
        let h = parse_text(&text, None);
        assert_eq!(errors(&h), []);
        assert_eq!(
            entries(&h),
            [
                r#"resolver "le" #1 (main "mx.example")"#,
                r#"resolver "le" #2 (main "imap.example")"#
            ]
        );
        assert_eq!(h.candidates[1].leaf.names, ["imap.example"]);
        assert!(h.candidates.iter().all(|c| c.bundle().is_ok()));
    }

    #[test]
    fn a_v1_file_is_read_too() {
        let ca = Ca::new();
        let (c, k) = fields(&ca, &["mx.example"]);
        let text = format!(
            r#"{{"Account": {{}}, "Certificates": [{{"Domain": {{"Main": "mx.example", "SANs": null}}, "Certificate": "{c}", "Key": "{k}"}}], "HTTPChallenges": {{}}}}"#
        );
        let h = parse_text(&text, None);
        assert_eq!(errors(&h), []);
        assert_eq!(entries(&h), [r#"v1 Certificates #1 (main "mx.example")"#]);
    }

    #[test]
    fn a_resolver_filter_keeps_only_those_resolvers_and_names_missing_ones() {
        let ca = Ca::new();
        let (c, k) = fields(&ca, &["mx.example"]);
        let entry = format!(r#"[{{"certificate": "{c}", "key": "{k}"}}]"#);
        let text =
            format!(r#"{{"a": {{"Certificates": {entry}}}, "b": {{"Certificates": {entry}}}}}"#);
        let wanted = ["b".to_owned(), "c".to_owned()];
        let h = parse_text(&text, Some(&wanted));
        assert_eq!(entries(&h), [r#"resolver "b" #1"#]);
        assert_eq!(
            h.warnings,
            [r#"source traefik: resolver "c" is not in the file"#]
        );
    }

    #[test]
    fn each_malformed_input_is_one_error_of_its_kind_and_the_rest_is_read() {
        let ca = Ca::new();
        let (c, k) = fields(&ca, &["mx.example"]);
        use SourceErrorKind::Malformed;
        // (what, text, errors (entry, reason), candidates)
        type Row = (
            &'static str,
            String,
            Vec<(Option<&'static str>, &'static str)>,
            usize,
        );
        let table: Vec<Row> = vec![
            (
                "truncated",
                r#"{"le": {"Certificates": ["#.to_owned(),
                vec![(
                    None,
                    "truncated JSON: the file ends too early (line 1, column 25); a writer may be mid-write",
                )],
                0,
            ),
            (
                "a list at the top",
                "[]".to_owned(),
                vec![(
                    None,
                    "not a Traefik acme.json: the top level is a list, expected an object",
                )],
                0,
            ),
            (
                "Certificates not a list",
                r#"{"le": {"Certificates": 3}}"#.to_owned(),
                vec![(
                    Some(r#"resolver "le""#),
                    "`Certificates` is a number, expected a list",
                )],
                0,
            ),
            (
                "one entry without a key",
                format!(
                    r#"{{"le": {{"Certificates": [{{"certificate": "{c}"}}, {{"certificate": "{c}", "key": "{k}"}}]}}}}"#
                ),
                vec![(
                    Some(r#"resolver "le" #1"#),
                    "no key (`key` is missing or empty)",
                )],
                1,
            ),
            (
                "one entry with bad base64",
                format!(
                    r#"{{"le": {{"Certificates": [{{"certificate": "@@@@", "key": "{k}"}}, {{"certificate": "{c}", "key": "{k}"}}]}}}}"#
                ),
                vec![(
                    Some(r#"resolver "le" #1"#),
                    "`certificate` is not valid base64: byte 0x40 at offset 0",
                )],
                1,
            ),
            (
                "one entry a string",
                format!(
                    r#"{{"le": {{"Certificates": ["x", {{"certificate": "{c}", "key": "{k}"}}]}}}}"#
                ),
                vec![(
                    Some(r#"resolver "le" #1"#),
                    "the entry is a string, expected an object",
                )],
                1,
            ),
        ];
        for (what, text, want, found) in table {
            let h = parse_text(&text, None);
            let want: Vec<_> = want.into_iter().map(|(e, r)| (e, Malformed, r)).collect();
            assert_eq!(errors(&h), want, "{what}");
            assert_eq!(h.candidates.len(), found, "{what}");
        }
    }

    #[test]
    fn the_streaming_reader_takes_valid_files_itself_and_defers_the_rest() {
        let ca = Ca::new();
        let (c, k) = fields(&ca, &["mx.example"]);
        let entry = format!(r#"{{"certificate": "{c}", "key": "{k}"}}"#);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("acme.json");
        for (what, text, itself) in [
            (
                "v2",
                format!(r#"{{"le": {{"Certificates": [{entry}]}}}}"#),
                true,
            ),
            ("v1", format!(r#"{{"Certificates": [{entry}]}}"#), true),
            (
                "escaped key",
                format!(r#"{{"l\u0065": {{"Certificates": [{entry}]}}}}"#),
                true,
            ),
            ("empty", "{}".to_owned(), true),
            (
                "truncated",
                format!(r#"{{"le": {{"Certificates": [{entry}"#),
                false,
            ),
            (
                "trailing",
                format!(r#"{{"le": {{"Certificates": [{entry}]}}}} x"#),
                false,
            ),
            (
                "a missing comma",
                format!(r#"{{"le": {{"Certificates": [{entry} {entry}]}}}}"#),
                false,
            ),
            (
                "a bad entry",
                r#"{"le": {"Certificates": [{"a" 1}]}}"#.to_owned(),
                false,
            ),
            (
                "two lists in one resolver",
                format!(r#"{{"le": {{"Certificates": [{entry}], "Certificates": []}}}}"#),
                false,
            ),
            ("a list at the top", "[]".to_owned(), false),
            ("blank", " \n".to_owned(), false),
        ] {
            std::fs::write(&path, &text).unwrap();
            for window in [1, 5, 1 << 20] {
                let streamed = stream::read(&reader(), &path, None, window);
                assert_eq!(streamed.is_ok(), itself, "{what}, window {window}");
            }
        }
    }

    #[test]
    fn a_streamed_candidate_is_built_from_the_file_and_refused_once_the_file_changes() {
        let ca = Ca::new();
        let (c1, k1) = fields(&ca, &["mx.example"]);
        // The same names, issued a day later.
        let later = ca.issue(&["mx.example"], Alg::Ecdsa, NOW + 86_400, NOW + 91 * 86_400);
        let (c2, k2) = (
            B64.encode(later.bundle().fullchain_pem()),
            B64.encode(later.bundle().key.to_pem().as_bytes()),
        );
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("acme.json");
        let text = |c: &str, k: &str| {
            format!(r#"{{"le": {{"Certificates": [{{"certificate": "{c}", "key": "{k}"}}]}}}}"#)
        };
        std::fs::write(&path, text(&c1, &k1)).unwrap();
        let h = read(&reader(), &path, None, Ingest::default());
        assert!(
            format!("{:?}", h.candidates[0]).contains("offset"),
            "read by streaming"
        );
        assert!(h.candidates[0].bundle().is_ok_and(|b| b.verify().is_ok()));
        // Rewritten in place (same inode), as Traefik does: another
        // certificate now sits where the judged one was.
        std::fs::write(&path, text(&c2, &k2)).unwrap();
        let e = h.candidates[0].bundle().unwrap_err();
        assert!(matches!(e, CertError::NotJudged), "{e}");
    }
}

//! RFC 2136 dynamic updates signed with TSIG (RFC 8945), against a zone's
//! primary server (BIND, Knot, PowerDNS...).
//!
//! Every request goes to the one configured server: reads are plain queries
//! (TSIG-signed too, so a server that only answers the key works) with
//! recursion not desired; writes are UPDATE messages. Replacing a set is one
//! UPDATE that deletes the RRset and adds the new records: the server applies
//! it atomically, so no reader ever sees the set empty. Adding or removing
//! single values is one UPDATE that adds those records or deletes those
//! records only (RFC 2136 2.5.1, 2.5.4): the server applies each atomically
//! to the set as it is then, so clients sharing a set (two ACME orders for
//! one `_acme-challenge` name, in this process or not) never undo each
//! other's values. A write reads first
//! and sends nothing when the set already is as asked, then reads back to
//! check the server really applied it (a server silently ignores, for
//! example, a CNAME added next to other data).
//!
//! Transport: UDP, or TCP when the request is larger than 512 bytes (a
//! 2048-bit DKIM TXT makes a ~500-byte UPDATE) or the answer comes back
//! truncated.
//!
//! The TSIG signing and verification are hickory-proto's
//! ([`TSigner`], [`Message::finalize`]); the exchange itself is done here
//! rather than with hickory-net's client, because that client verifies the
//! TSIG of every answer before returning it, and the answers that say *why*
//! an update was refused (NOTAUTH with TSIG error BADSIG or BADKEY) are
//! unsigned by definition: the client would report a MAC error instead of
//! the server's reason.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm as HickoryTsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{CNAME, MX, TLSA, TXT};
use hickory_proto::rr::{
    DNSClass, Name, RData as WireRData, Record, RecordType as WireType, TSigner,
};

use crate::{Change, Error, RData, RecordStore, RecordType, txt};

/// Allowed clock difference between mxkeys and the server, in seconds.
const TSIG_FUDGE: u16 = 300;

/// How long one exchange may wait for its answer, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6);

/// How long a write's read-back waits for the server to apply it (a
/// server signing inline applies it to the signed zone moments later).
const READ_BACK_WAIT: Duration = Duration::from_secs(2);

/// The TSIG algorithms mxkeys signs with (those BIND's `tsig-keygen` makes
/// and hickory implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsigAlgorithm {
    /// HMAC-SHA256: `tsig-keygen`'s default, and ours.
    #[default]
    HmacSha256,
    /// HMAC-SHA384.
    HmacSha384,
    /// HMAC-SHA512.
    HmacSha512,
}

impl TsigAlgorithm {
    fn to_hickory(self) -> HickoryTsigAlgorithm {
        match self {
            TsigAlgorithm::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        })
    }
}

impl FromStr for TsigAlgorithm {
    type Err = Error;

    /// Accepts BIND's names (`hmac-sha256`), in any case, with or without a
    /// trailing dot.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            other => Err(Error::Config(format!(
                "unsupported TSIG algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"
            ))),
        }
    }
}

/// Where and how to send updates.
#[derive(Clone)]
pub struct Rfc2136Config {
    /// The zone's primary server (updates go there; secondaries follow by
    /// NOTIFY and zone transfer).
    pub server: SocketAddr,
    /// The zone to update. Default: found for each name by asking `server`
    /// for the SOA of the name.
    pub zone: Option<String>,
    /// The key's name, as in BIND's `key "NAME" { ... }`.
    pub tsig_name: String,
    /// The key's algorithm, as in BIND's `algorithm` line; it must be the one
    /// the server has for `tsig_name`.
    pub tsig_algorithm: TsigAlgorithm,
    /// The key's secret, decoded from the base64 in BIND's key file.
    pub tsig_secret: Vec<u8>,
}

impl fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("tsig_name", &self.tsig_name)
            .field("tsig_algorithm", &self.tsig_algorithm)
            .field("tsig_secret", &"<redacted>")
            .finish()
    }
}

/// An RFC 2136 record store.
#[derive(Clone)]
pub struct Rfc2136 {
    server: SocketAddr,
    zone: Option<Name>,
    key_name: String,
    algorithm: TsigAlgorithm,
    signer: TSigner,
    timeout: Duration,
}

impl fmt::Debug for Rfc2136 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rfc2136")
            .field("server", &self.server)
            .field("zone", &self.zone.as_ref().map(display_name))
            .field("tsig_name", &self.key_name)
            .field("tsig_algorithm", &self.algorithm)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Rfc2136 {
    /// Checks the key's name, secret and the zone name; contacts no server.
    pub fn new(config: Rfc2136Config) -> Result<Rfc2136, Error> {
        let key_name = crate::canonical_name(&config.tsig_name);
        if key_name.is_empty() {
            return Err(Error::Config(
                "rfc2136: the TSIG key needs a name".to_owned(),
            ));
        }
        if config.tsig_secret.is_empty() {
            return Err(Error::Config(format!(
                "rfc2136: the TSIG key {key_name} has an empty secret"
            )));
        }
        let signer_name = parse_name(&key_name)
            .map_err(|_| Error::Config(format!("rfc2136: invalid TSIG key name {key_name:?}")))?;
        let zone = match &config.zone {
            Some(zone) => Some(
                parse_name(zone)
                    .map_err(|_| Error::Config(format!("rfc2136: invalid zone name {zone:?}")))?,
            ),
            None => None,
        };
        let signer = TSigner::new(
            config.tsig_secret,
            config.tsig_algorithm.to_hickory(),
            signer_name,
            TSIG_FUDGE,
        )
        .map_err(|e| Error::Config(format!("rfc2136: TSIG key {key_name}: {e}")))?;
        Ok(Rfc2136 {
            server: config.server,
            zone,
            key_name,
            algorithm: config.tsig_algorithm,
            signer,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long one exchange waits for the server's answer (default 6 s;
    /// over UDP the request is sent three times within it).
    pub fn with_timeout(mut self, timeout: Duration) -> Rfc2136 {
        self.timeout = timeout;
        self
    }

    /// The zone `name` is updated in: the configured zone, or the one the
    /// server says holds `name` (the owner of the SOA it answers for the
    /// name or one of its parents).
    pub async fn zone_for(&self, name: &str) -> Result<String, Error> {
        let name = parse_name(name)?;
        self.zone_of(&name).await.map(|z| display_name(&z))
    }

    async fn zone_of(&self, name: &Name) -> Result<Name, Error> {
        if let Some(zone) = &self.zone {
            if zone.zone_of(name) {
                return Ok(zone.clone());
            }
            return Err(Error::NoZone(format!(
                "{} (not inside the configured zone {})",
                display_name(name),
                display_name(zone)
            )));
        }
        let mut candidate = name.clone();
        loop {
            let response = self
                .exchange(query_message(&candidate, WireType::SOA), "query")
                .await?;
            match response.metadata.response_code {
                ResponseCode::NoError | ResponseCode::NXDomain => {}
                ResponseCode::Refused | ResponseCode::NotAuth => {
                    return Err(Error::NoZone(format!(
                        "{} at {}: the server is not authoritative for it ({})",
                        display_name(name),
                        self.server,
                        rcode_text(response.metadata.response_code)
                    )));
                }
                other => {
                    return Err(Error::Transport(format!(
                        "SOA query for {} at {} failed: {}",
                        display_name(&candidate),
                        self.server,
                        rcode_text(other)
                    )));
                }
            }
            // The apex itself, or the zone named by the SOA of a negative
            // answer; an SOA outside `name`'s ancestry belongs to a CNAME's
            // target and says nothing about where `name` lives.
            let soa_owner = response
                .answers
                .iter()
                .chain(response.authorities.iter())
                .filter(|r| r.record_type() == WireType::SOA)
                .map(|r| r.name.clone())
                .find(|owner| owner.zone_of(name));
            if let (Some(owner), true) = (soa_owner, response.metadata.authoritative) {
                return Ok(owner);
            }
            if candidate.is_root() {
                return Err(Error::NoZone(format!(
                    "{} at {}: no SOA found",
                    display_name(name),
                    self.server
                )));
            }
            candidate = candidate.base_name();
        }
    }

    /// The records of the set with their TTLs. `what` names the operation
    /// in errors ("update" when reading before a write).
    async fn read_wire(
        &self,
        name: &Name,
        rtype: RecordType,
        what: &str,
    ) -> Result<Vec<(RData, u32)>, Error> {
        let response = self
            .exchange(query_message(name, wire_type(rtype)), what)
            .await?;
        match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            other => {
                return Err(refusal(
                    other,
                    format!("read of {} {rtype} at {}", display_name(name), self.server),
                ));
            }
        }
        Ok(response
            .answers
            .iter()
            .filter(|r| r.name == *name && r.record_type() == wire_type(rtype))
            .filter_map(|r| from_wire(&r.data).map(|d| (d, r.ttl)))
            .collect())
    }

    /// [`Self::read_wire`] without the TTLs: the values of `name`'s set.
    async fn read_values(
        &self,
        name: &Name,
        rtype: RecordType,
        what: &str,
    ) -> Result<Vec<RData>, Error> {
        Ok(self
            .read_wire(name, rtype, what)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    /// Reads the set back after a write until `applied` holds, for at most
    /// [`READ_BACK_WAIT`]: a server signing inline (BIND `inline-signing`)
    /// applies an update to its signed zone moments after answering it.
    async fn read_back(
        &self,
        name: &Name,
        rtype: RecordType,
        applied: impl Fn(&[RData]) -> bool,
    ) -> Result<bool, Error> {
        let deadline = tokio::time::Instant::now() + READ_BACK_WAIT;
        loop {
            let written = self.read_values(name, rtype, "update").await?;
            if applied(&written) {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(READ_BACK_WAIT / 20).await;
        }
    }

    /// A write the server accepted (`what`: "the update of") but whose
    /// read-back shows it did not apply.
    fn not_applied(&self, what: &str, name: &Name, rtype: RecordType) -> Error {
        Error::Refused(format!(
            "{} accepted {what} {} {rtype} but did not apply it (a CNAME next to other data?)",
            self.server,
            display_name(name)
        ))
    }

    async fn update(&self, message: Message, name: &Name, zone: &Name) -> Result<(), Error> {
        let response = self.exchange(message, "update").await?;
        match response.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            ResponseCode::Refused => Err(Error::Refused(format!(
                "update refused by {}: REFUSED (key {} may not update {} in zone {}: check \
                 allow-update / update-policy)",
                self.server,
                self.key_name,
                display_name(name),
                display_name(zone)
            ))),
            ResponseCode::NotAuth => Err(Error::Refused(format!(
                "update refused by {}: not authoritative for zone {} (NOTAUTH)",
                self.server,
                display_name(zone)
            ))),
            ResponseCode::NotZone => Err(Error::Refused(format!(
                "update refused by {}: {} is not in zone {} (NOTZONE)",
                self.server,
                display_name(name),
                display_name(zone)
            ))),
            other => Err(Error::Refused(format!(
                "update of {} failed at {}: {}",
                display_name(name),
                self.server,
                rcode_text(other)
            ))),
        }
    }

    /// Signs `message`, sends it, and returns the verified answer. TSIG
    /// errors (an unsigned NOTAUTH naming BADSIG, BADKEY, BADTIME) become
    /// [`Error::Auth`].
    async fn exchange(&self, mut message: Message, what: &str) -> Result<Message, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut verifier = message
            .finalize(&self.signer, now)
            .map_err(|e| Error::Transport(format!("cannot sign the {what}: {e}")))?;
        let bytes = message
            .to_vec()
            .map_err(|e| Error::Transport(format!("cannot encode the {what}: {e}")))?;
        let raw = wire::exchange(self.server, &bytes, message.metadata.id, self.timeout).await?;
        let response = Message::from_vec(&raw).map_err(|e| {
            Error::Transport(format!("{} sent an unreadable answer: {e}", self.server))
        })?;
        check_question(&message, &response, self.server)?;
        if let Some(tsig) = response.signature()
            && let Some(error) = tsig.data.error
        {
            return Err(self.tsig_refusal(what, error));
        }
        if response.signature().is_none()
            && response.metadata.response_code == ResponseCode::NotAuth
        {
            // A TSIG rejection always comes with an (unsigned) TSIG record
            // naming the error; a bare NOTAUTH to a signed request means the
            // key was not accepted or the server is not the zone's primary.
            return Err(Error::Auth(format!(
                "{what} refused by {}: NOTAUTH without TSIG (TSIG key {} ({}) not accepted, \
                 or the server is not authoritative for the zone)",
                self.server, self.key_name, self.algorithm
            )));
        }
        match verifier.as_mut() {
            Some(verifier) => verifier.verify(&raw).map(|_| ()).map_err(|e| {
                Error::Auth(format!(
                    "the answer from {} to a {what} signed with TSIG key {} failed verification: {e}",
                    self.server, self.key_name
                ))
            })?,
            None => {
                return Err(Error::Transport(format!(
                    "the {what} to {} was not signed",
                    self.server
                )));
            }
        }
        Ok(response)
    }

    fn tsig_refusal(&self, what: &str, error: TsigError) -> Error {
        let reason = match error {
            TsigError::BadSig => "BADSIG: the secret differs from the server's".to_owned(),
            TsigError::BadKey => format!(
                "BADKEY: the server has no key of that name with algorithm {}",
                self.algorithm
            ),
            TsigError::BadTime => "BADTIME: the clocks differ by more than 5 minutes".to_owned(),
            TsigError::BadTrunc => "BADTRUNC".to_owned(),
            TsigError::Unknown(code) => format!("TSIG error {code}"),
        };
        Error::Auth(format!(
            "{what} refused by {}: TSIG key {} rejected ({reason})",
            self.server, self.key_name
        ))
    }
}

impl RecordStore for Rfc2136 {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        let name = parse_name(name)?;
        self.read_values(&name, rtype, "query").await
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = set_type(values)?;
        let wire_name = parse_name(name)?;
        let current = self.read_wire(&wire_name, rtype, "update").await?;
        let current_values: Vec<RData> = current.iter().map(|(d, _)| d.clone()).collect();
        if crate::same_set(&current_values, values) && current.iter().all(|(_, t)| *t == ttl) {
            return Ok(Change::Unchanged);
        }
        let zone = self.zone_of(&wire_name).await?;
        let message = replace_message(&zone, &wire_name, ttl, values)?;
        self.update(message, &wire_name, &zone).await?;
        if !self
            .read_back(&wire_name, rtype, |w| crate::same_set(w, values))
            .await?
        {
            return Err(self.not_applied("the update of", &wire_name, rtype));
        }
        tracing::info!(name = %display_name(&wire_name), %rtype, server = %self.server, "record set replaced");
        Ok(Change::Changed)
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        let wire_name = parse_name(name)?;
        if self
            .read_wire(&wire_name, rtype, "update")
            .await?
            .is_empty()
        {
            return Ok(Change::Unchanged);
        }
        let zone = self.zone_of(&wire_name).await?;
        self.update(remove_message(&zone, &wire_name, rtype), &wire_name, &zone)
            .await?;
        tracing::info!(name = %display_name(&wire_name), %rtype, server = %self.server, "record set removed");
        Ok(Change::Changed)
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        self.add_values(name, ttl, values).await
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        self.delete_values(name, values).await
    }
}

impl Rfc2136 {
    /// [`RecordStore::add`]: one UPDATE adding the missing records.
    async fn add_values(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = set_type(values)?;
        let wire_name = parse_name(name)?;
        let current = self.read_values(&wire_name, rtype, "update").await?;
        let mut missing: Vec<RData> = values
            .iter()
            .filter(|v| !current.contains(v))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(Change::Unchanged);
        }
        let zone = self.zone_of(&wire_name).await?;
        let mut message = update_message(&zone);
        for value in &missing {
            message.add_authority(Record::from_rdata(wire_name.clone(), ttl, to_wire(value)?));
        }
        self.update(message, &wire_name, &zone).await?;
        if !self
            .read_back(&wire_name, rtype, |w| crate::contains_all(w, &missing))
            .await?
        {
            return Err(self.not_applied("the addition to", &wire_name, rtype));
        }
        tracing::info!(name = %display_name(&wire_name), %rtype, server = %self.server, added = missing.len(), "records added");
        Ok(Change::Changed)
    }

    /// [`RecordStore::remove_values`]: one UPDATE deleting those records.
    async fn delete_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        let rtype = crate::values_type(values)?;
        let wire_name = parse_name(name)?;
        let current = self.read_values(&wire_name, rtype, "update").await?;
        let present: Vec<&RData> = current.iter().filter(|v| values.contains(v)).collect();
        if present.is_empty() {
            return Ok(Change::Unchanged);
        }
        let zone = self.zone_of(&wire_name).await?;
        let message = remove_values_message(&zone, &wire_name, values)?;
        self.update(message, &wire_name, &zone).await?;
        tracing::info!(name = %display_name(&wire_name), %rtype, server = %self.server, removed = present.len(), "records removed");
        Ok(Change::Changed)
    }
}

/// The UPDATE deleting exactly `values` from `name`'s set: "delete an RR
/// from an RRset" (RFC 2136 2.5.4: class NONE, TTL 0, the record's data)
/// for each; the set's other records stay.
pub(crate) fn remove_values_message(
    zone: &Name,
    name: &Name,
    values: &[RData],
) -> Result<Message, Error> {
    crate::values_type(values)?;
    let mut message = update_message(zone);
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    for value in &values {
        let mut record = Record::from_rdata(name.clone(), 0, to_wire(value)?);
        record.dns_class = DNSClass::NONE;
        message.add_authority(record);
    }
    Ok(message)
}

/// The type of a set to write: one type, one target for a CNAME.
fn set_type(values: &[RData]) -> Result<RecordType, Error> {
    let Some(rtype) = values.first().map(RData::record_type) else {
        return Err(Error::Config(
            "replace needs at least one value; use remove".to_owned(),
        ));
    };
    if let Some(other) = values.iter().find(|v| v.record_type() != rtype) {
        return Err(Error::Unsupported(format!(
            "a record set holds one type, got {rtype} and {}",
            other.record_type()
        )));
    }
    if rtype == RecordType::Cname {
        let mut targets: Vec<&RData> = values.iter().collect();
        targets.sort();
        targets.dedup();
        if targets.len() > 1 {
            return Err(Error::Unsupported(
                "a CNAME set holds one target".to_owned(),
            ));
        }
    }
    Ok(rtype)
}

/// The UPDATE that makes `name`'s set exactly `values`: in one message,
/// delete the RRset (RFC 2136 2.5.2) then add each record (2.5.1). The
/// server applies the whole message or nothing.
pub(crate) fn replace_message(
    zone: &Name,
    name: &Name,
    ttl: u32,
    values: &[RData],
) -> Result<Message, Error> {
    let rtype = set_type(values)?;
    let mut message = update_message(zone);
    message.add_authority(delete_rrset_record(name, rtype));
    let mut values = values.to_vec();
    values.sort();
    values.dedup();
    for value in &values {
        message.add_authority(Record::from_rdata(name.clone(), ttl, to_wire(value)?));
    }
    Ok(message)
}

pub(crate) fn remove_message(zone: &Name, name: &Name, rtype: RecordType) -> Message {
    let mut message = update_message(zone);
    message.add_authority(delete_rrset_record(name, rtype));
    message
}

fn update_message(zone: &Name) -> Message {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Update;
    message.metadata.recursion_desired = false;
    // The zone section: the zone's name, type SOA, class IN.
    message.add_query(Query::query(zone.clone(), WireType::SOA));
    message
}

/// "Delete an RRset": class ANY, TTL 0, empty RDATA.
fn delete_rrset_record(name: &Name, rtype: RecordType) -> Record {
    let mut record = Record::update0(name.clone(), 0, wire_type(rtype));
    record.dns_class = DNSClass::ANY;
    record
}

/// A query for `name`/`rtype`, recursion not desired, EDNS with a 1232-byte
/// payload.
pub(crate) fn query_message(name: &Name, rtype: WireType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(wire::EDNS_PAYLOAD);
    message.edns = Some(edns);
    message
}

/// The answer must be a response to the question asked.
pub(crate) fn check_question(
    request: &Message,
    response: &Message,
    server: SocketAddr,
) -> Result<(), Error> {
    if response.metadata.message_type != MessageType::Response
        || response.metadata.id != request.metadata.id
        || (!response.queries.is_empty() && response.queries != request.queries)
    {
        return Err(Error::Transport(format!(
            "{server} answered another question"
        )));
    }
    Ok(())
}

fn refusal(code: ResponseCode, what: String) -> Error {
    match code {
        ResponseCode::Refused | ResponseCode::NotAuth => {
            Error::Refused(format!("{what} refused: {}", rcode_text(code)))
        }
        other => Error::Transport(format!("{what} failed: {}", rcode_text(other))),
    }
}

pub(crate) fn rcode_text(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".to_owned(),
        ResponseCode::FormErr => "FORMERR".to_owned(),
        ResponseCode::ServFail => "SERVFAIL".to_owned(),
        ResponseCode::NXDomain => "NXDOMAIN".to_owned(),
        ResponseCode::NotImp => "NOTIMP".to_owned(),
        ResponseCode::Refused => "REFUSED".to_owned(),
        ResponseCode::YXDomain => "YXDOMAIN".to_owned(),
        ResponseCode::YXRRSet => "YXRRSET".to_owned(),
        ResponseCode::NXRRSet => "NXRRSET".to_owned(),
        ResponseCode::NotAuth => "NOTAUTH".to_owned(),
        ResponseCode::NotZone => "NOTZONE".to_owned(),
        other => format!("rcode {}", u16::from(other)),
    }
}

/// A DNS name from mxkeys' form (absolute, with or without the final dot).
pub(crate) fn parse_name(name: &str) -> Result<Name, Error> {
    let canonical = crate::canonical_name(name);
    if canonical.is_empty() {
        return Err(Error::Config("empty DNS name".to_owned()));
    }
    let mut parsed = Name::from_ascii(&canonical)
        .map_err(|e| Error::Config(format!("invalid DNS name {canonical:?}: {e}")))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// mxkeys' form of a name: lower case, no final dot.
pub(crate) fn display_name(name: &Name) -> String {
    crate::canonical_name(&name.to_ascii())
}

pub(crate) fn wire_type(rtype: RecordType) -> WireType {
    match rtype {
        RecordType::Txt => WireType::TXT,
        RecordType::Tlsa => WireType::TLSA,
        RecordType::Cname => WireType::CNAME,
        RecordType::A => WireType::A,
        RecordType::Aaaa => WireType::AAAA,
        RecordType::Mx => WireType::MX,
    }
}

pub(crate) fn to_wire(value: &RData) -> Result<WireRData, Error> {
    Ok(match value {
        RData::Txt(text) => WireRData::TXT(TXT::from_bytes(
            txt::split(text).into_iter().map(str::as_bytes).collect(),
        )),
        RData::Tlsa {
            usage,
            selector,
            matching,
            data,
        } => WireRData::TLSA(TLSA::new(
            CertUsage::from(*usage),
            Selector::from(*selector),
            Matching::from(*matching),
            data.clone(),
        )),
        RData::Cname(target) => WireRData::CNAME(CNAME(parse_name(target)?)),
        RData::A(ip) => WireRData::A((*ip).into()),
        RData::Aaaa(ip) => WireRData::AAAA((*ip).into()),
        RData::Mx {
            preference,
            exchange,
        } => WireRData::MX(MX::new(
            *preference,
            if exchange == "." {
                Name::root()
            } else {
                parse_name(exchange)?
            },
        )),
    })
}

/// mxkeys' form of wire record data (`None` for types it does not handle).
pub(crate) fn from_wire(data: &WireRData) -> Option<RData> {
    match data {
        WireRData::TXT(t) => Some(RData::Txt(txt::join(&t.txt_data))),
        WireRData::TLSA(t) => Some(RData::Tlsa {
            usage: u8::from(t.cert_usage),
            selector: u8::from(t.selector),
            matching: u8::from(t.matching),
            data: t.cert_data.clone(),
        }),
        WireRData::CNAME(c) => Some(RData::Cname(display_name(&c.0))),
        WireRData::A(a) => Some(RData::A(a.0)),
        WireRData::AAAA(a) => Some(RData::Aaaa(a.0)),
        WireRData::MX(mx) => Some(RData::Mx {
            preference: mx.preference,
            exchange: crate::mx_exchange(&mx.exchange.to_ascii()),
        }),
        _ => None,
    }
}

/// One DNS exchange over UDP, or TCP for large requests and truncated
/// answers.
pub(crate) mod wire {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpStream, UdpSocket};
    use tokio::time::{Instant, timeout, timeout_at};

    use crate::Error;

    /// The EDNS payload size mxkeys advertises (the DNS flag day 2020 value).
    pub(crate) const EDNS_PAYLOAD: u16 = 1232;
    /// Requests larger than this go over TCP (the classic UDP limit, safe
    /// whatever the server's EDNS size).
    const UDP_REQUEST_MAX: usize = 512;
    const UDP_TRIES: u32 = 3;

    /// Sends `request` (whose ID is `id`) to `server` and returns the raw
    /// answer. `limit` bounds the wait for each transport.
    pub(crate) async fn exchange(
        server: SocketAddr,
        request: &[u8],
        id: u16,
        limit: Duration,
    ) -> Result<Vec<u8>, Error> {
        if request.len() > UDP_REQUEST_MAX {
            return tcp(server, request, id, limit).await;
        }
        let answer = udp(server, request, id, limit).await?;
        // TC is bit 1 of the third header byte.
        if answer[2] & 0x02 != 0 {
            tracing::debug!(%server, "answer truncated over UDP, retrying over TCP");
            return tcp(server, request, id, limit).await;
        }
        Ok(answer)
    }

    fn matches(answer: &[u8], id: u16) -> bool {
        // ID, and QR set.
        answer.len() >= 12
            && u16::from_be_bytes([answer[0], answer[1]]) == id
            && answer[2] & 0x80 != 0
    }

    async fn udp(
        server: SocketAddr,
        request: &[u8],
        id: u16,
        limit: Duration,
    ) -> Result<Vec<u8>, Error> {
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let io = |e: std::io::Error| Error::Transport(format!("UDP to {server}: {e}"));
        let socket = UdpSocket::bind(local).await.map_err(io)?;
        // Connected: the kernel drops datagrams from anyone else.
        socket.connect(server).await.map_err(io)?;
        let mut buf = vec![0u8; 65535];
        let per_try = limit / UDP_TRIES;
        for _ in 0..UDP_TRIES {
            socket.send(request).await.map_err(io)?;
            let deadline = Instant::now() + per_try;
            loop {
                match timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(io(e)),
                    Ok(Ok(n)) if matches(&buf[..n], id) => return Ok(buf[..n].to_vec()),
                    Ok(Ok(_)) => continue,
                }
            }
        }
        Err(Error::Transport(format!(
            "no answer from {server} within {limit:?} (UDP, {UDP_TRIES} tries)"
        )))
    }

    async fn tcp(
        server: SocketAddr,
        request: &[u8],
        id: u16,
        limit: Duration,
    ) -> Result<Vec<u8>, Error> {
        let exchange = async {
            let mut stream = TcpStream::connect(server).await?;
            let len = u16::try_from(request.len()).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too large")
            })?;
            let mut framed = Vec::with_capacity(request.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(request);
            stream.write_all(&framed).await?;
            loop {
                let len = stream.read_u16().await? as usize;
                let mut answer = vec![0u8; len];
                stream.read_exact(&mut answer).await?;
                if matches(&answer, id) {
                    return Ok::<_, std::io::Error>(answer);
                }
            }
        };
        match timeout(limit, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Error::Transport(format!("TCP to {server}: {e}"))),
            Err(_) => Err(Error::Transport(format!(
                "no answer from {server} within {limit:?} (TCP)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        parse_name(s).unwrap()
    }

    #[test]
    fn replace_is_one_update_deleting_then_adding() {
        let dkim = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        let values = [RData::Txt(dkim.clone()), RData::Txt("second".to_owned())];
        let msg = replace_message(
            &name("example.test"),
            &name("sel._domainkey.example.test"),
            300,
            &values,
        )
        .unwrap();
        assert_eq!(msg.metadata.op_code, OpCode::Update);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.queries[0].name(), &name("example.test"));
        assert_eq!(msg.queries[0].query_type(), WireType::SOA);
        assert!(msg.answers.is_empty(), "no prerequisites");
        let updates = &msg.authorities;
        assert_eq!(updates.len(), 3);
        // First the RRset deletion...
        assert_eq!(updates[0].dns_class, DNSClass::ANY);
        assert_eq!(updates[0].ttl, 0);
        assert_eq!(updates[0].data, WireRData::Update0(WireType::TXT));
        // ...then the additions, in the same message.
        for add in &updates[1..] {
            assert_eq!(add.dns_class, DNSClass::IN);
            assert_eq!(add.ttl, 300);
            assert_eq!(add.name, name("sel._domainkey.example.test"));
        }
        let added: Vec<RData> = updates[1..]
            .iter()
            .filter_map(|r| from_wire(&r.data))
            .collect();
        assert!(crate::same_set(&added, &values));
        // The long value travels as 255-byte strings.
        let WireRData::TXT(t) = &updates
            .iter()
            .find(|r| matches!(&r.data, WireRData::TXT(t) if t.txt_data.len() == 2))
            .unwrap()
            .data
        else {
            unreachable!()
        };
        assert_eq!(t.txt_data[0].len(), 255);
        // And it round-trips through the wire format.
        let parsed = Message::from_vec(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(parsed.authorities.len(), 3);
    }

    #[test]
    fn remove_is_one_rrset_deletion() {
        let msg = remove_message(
            &name("example.test"),
            &name("x.example.test"),
            RecordType::Tlsa,
        );
        assert_eq!(msg.authorities.len(), 1);
        assert_eq!(msg.authorities[0].dns_class, DNSClass::ANY);
        assert_eq!(msg.authorities[0].data, WireRData::Update0(WireType::TLSA));
    }

    #[test]
    fn removing_values_deletes_those_records_only() {
        let values = [RData::Txt("mine".into()), RData::Txt("mine".into())];
        let msg = remove_values_message(
            &name("example.test"),
            &name("_acme-challenge.example.test"),
            &values,
        )
        .unwrap();
        assert_eq!(msg.authorities.len(), 1, "duplicates are sent once");
        let rr = &msg.authorities[0];
        assert_eq!(rr.dns_class, DNSClass::NONE);
        assert_eq!(rr.ttl, 0);
        assert_eq!(from_wire(&rr.data), Some(RData::Txt("mine".into())));
        let parsed = Message::from_vec(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(parsed.authorities[0].dns_class, DNSClass::NONE);
    }

    #[test]
    fn mixed_or_empty_sets_are_rejected() {
        let z = name("example.test");
        let n = name("a.example.test");
        assert!(matches!(
            replace_message(&z, &n, 60, &[]),
            Err(Error::Config(_))
        ));
        let mixed = [
            RData::Txt("a".into()),
            RData::Cname("b.example.test".into()),
        ];
        assert!(matches!(
            replace_message(&z, &n, 60, &mixed),
            Err(Error::Unsupported(_))
        ));
        let two = [RData::Cname("a.test".into()), RData::Cname("b.test".into())];
        assert!(matches!(
            replace_message(&z, &n, 60, &two),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn algorithms_parse_from_bind_names() {
        assert_eq!(
            "hmac-sha256".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha256
        );
        assert_eq!(
            "HMAC-SHA384.".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha384
        );
        assert_eq!(
            "hmac-sha512".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha512
        );
        assert!("hmac-md5".parse::<TsigAlgorithm>().is_err());
        assert_eq!(TsigAlgorithm::default().to_string(), "hmac-sha256");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let config = Rfc2136Config {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: None,
            tsig_name: "mxkeys".to_owned(),
            tsig_algorithm: TsigAlgorithm::HmacSha256,
            tsig_secret: b"s3cr3t-bytes".to_vec(),
        };
        let text = format!("{config:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("115, 51"),
            "{text}"
        );
        let store = Rfc2136::new(config).unwrap();
        let text = format!("{store:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("115, 51"),
            "{text}"
        );
    }

    #[test]
    fn new_rejects_unusable_keys() {
        let config = Rfc2136Config {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: None,
            tsig_name: "mxkeys".to_owned(),
            tsig_algorithm: TsigAlgorithm::HmacSha256,
            tsig_secret: Vec::new(),
        };
        assert!(matches!(
            Rfc2136::new(config.clone()),
            Err(Error::Config(_))
        ));
        let config = Rfc2136Config {
            tsig_name: String::new(),
            tsig_secret: vec![1; 32],
            ..config
        };
        assert!(matches!(Rfc2136::new(config), Err(Error::Config(_))));
    }

    #[test]
    fn tlsa_and_cname_convert_both_ways() {
        let tlsa = RData::Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        };
        assert_eq!(from_wire(&to_wire(&tlsa).unwrap()), Some(tlsa));
        let cname = RData::Cname("x.delegated.test".to_owned());
        assert_eq!(from_wire(&to_wire(&cname).unwrap()), Some(cname));
        let txt = RData::Txt(String::new());
        assert_eq!(from_wire(&to_wire(&txt).unwrap()), Some(txt));
    }

    #[test]
    fn mx_converts_both_ways_lower_case_without_the_dot_and_keeps_the_null_mx() {
        let mx = RData::Mx {
            preference: 10,
            exchange: "mx1.example.test".to_owned(),
        };
        assert_eq!(from_wire(&to_wire(&mx).unwrap()), Some(mx));
        let null = RData::Mx {
            preference: 0,
            exchange: ".".to_owned(),
        };
        assert_eq!(from_wire(&to_wire(&null).unwrap()), Some(null));
        let upper = WireRData::MX(MX::new(20, Name::from_ascii("MX2.Example.TEST.").unwrap()));
        assert_eq!(
            from_wire(&upper),
            Some(RData::Mx {
                preference: 20,
                exchange: "mx2.example.test".to_owned()
            })
        );
    }

    /// A UDP "server" that answers with TC set, and a TCP listener on the
    /// same port that answers fully: the exchange must end over TCP.
    #[tokio::test]
    async fn truncated_udp_answer_is_retried_over_tcp() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = tokio::net::UdpSocket::bind(addr).await.unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, from) = udp.recv_from(&mut buf).await.unwrap();
            let mut answer = buf[..n].to_vec();
            answer[2] |= 0x80 | 0x02; // QR, TC
            udp.send_to(&answer, from).await.unwrap();
        });
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = tcp.accept().await.unwrap();
            let len = s.read_u16().await.unwrap() as usize;
            let mut req = vec![0u8; len];
            s.read_exact(&mut req).await.unwrap();
            req[2] |= 0x80; // QR, no TC
            req.push(0xee); // marks the TCP answer
            s.write_all(&(req.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&req).await.unwrap();
        });
        let request = query_message(&name("a.example.test"), WireType::TXT);
        let bytes = request.to_vec().unwrap();
        let answer = wire::exchange(addr, &bytes, request.metadata.id, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.last(), Some(&0xee));
        assert_eq!(answer[2] & 0x02, 0);
    }
}

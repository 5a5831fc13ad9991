//! Cloudflare DNS through the API v4, with the `cloudflare` crate's endpoint
//! definitions.
//!
//! Every call is this module's own [`EndpointSpec`] type: the crate's DNS types model
//! only a few record types (a listing holding a CAA, TLSA, SVCB... record
//! fails to parse) and its zone type requires fields real responses do not
//! always carry. Responses are taken as raw bytes and parsed here, leniently:
//! records of other types are skipped, never fatal.
//!
//! Record sets are replaced in place: records already right stay, records to
//! change are updated (PATCH), only the surplus is created or deleted, and
//! creations come before deletions, so the set is never empty in between.
//! Writing a set that is already in place makes no write request.
//!
//! Cloudflare keeps each record on its own, so adding or removing single
//! values creates or deletes those records only (never touching the set's
//! other records, whoever made them); within this process, changes to one
//! name take turns ([`NameLocks`]), so two tasks never create the same
//! record twice.
//!
//! TXT values longer than 255 bytes (DKIM keys) are sent as quoted
//! character-strings (`"part1" "part2"`), the form Cloudflare documents; on
//! read both quoted and raw content are accepted and joined.
//!
//! Requests are sent on reqwest (the crate's own transport, with rustls on
//! aws-lc-rs), built from the endpoint spec (`url`, `method`, `body`) and
//! the crate's `Credentials` headers: the crate's `async_api::Client` drops
//! the headers of a non-2xx answer and parses error codes as u16 (DNS errors
//! such as 81058 do not fit), so it can neither honour `Retry-After` nor
//! report those errors.
//!
//! HTTP 429 is waited out as its `Retry-After` says (each wait capped, see
//! [`Cloudflare::with_max_wait`], at most three waits and five minutes in
//! all); without the header, the waits follow a schedule spanning
//! Cloudflare's five-minute rate-limit window.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use cloudflare::framework::Environment;
use cloudflare::framework::auth::Credentials;
use cloudflare::framework::endpoint::spec::EndpointSpec;
use cloudflare::framework::endpoint::{Method, RequestBody, serialize_query};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::{Change, Error, NameLocks, RData, RecordStore, RecordType};

/// The production API.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4/";

/// Waits after successive HTTP 429 answers without `Retry-After`. Together
/// they cover Cloudflare's five-minute rate-limit window.
const RATE_LIMIT_WAITS: [Duration; 3] = [
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(230),
];
/// Longest single wait in production.
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(230);
/// Longest total wait for one request.
const TOTAL_WAIT_CAP: Duration = Duration::from_secs(300);
/// Records per listing page (Cloudflare's default; it may return fewer).
const PER_PAGE: u32 = 100;
/// A listing longer than this many pages is treated as a broken answer.
const MAX_PAGES: u32 = 10_000;
/// Time limit of one HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the Cloudflare provider needs. The token comes from a file or an
/// environment variable (mxkeys' configuration reads it).
#[derive(Clone, Default)]
pub struct CloudflareConfig {
    /// An API token with DNS edit (and zone read) permission.
    /// [`Cloudflare::new`] wipes it (zeroize) once copied.
    pub api_token: String,
    /// API base URL; default [`DEFAULT_API_URL`] (tests point it elsewhere).
    pub api_url: Option<String>,
    /// The zone name; default: the longest zone the token sees that
    /// contains the record name.
    pub zone: Option<String>,
}

impl fmt::Debug for CloudflareConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareConfig")
            .field("api_token", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("zone", &self.zone)
            .finish()
    }
}

/// The Cloudflare DNS provider.
pub struct Cloudflare {
    client: reqwest::Client,
    environment: Environment,
    credentials: Credentials,
    /// Only to keep it out of error messages; never printed, wiped on drop.
    token: Zeroizing<String>,
    api_url: String,
    zone: Option<String>,
    max_wait: Duration,
    /// Zone name -> zone id, for zones found.
    zone_ids: Mutex<HashMap<String, String>>,
    /// Record name -> zone id.
    name_zones: Mutex<HashMap<String, String>>,
    /// Turns for adding and removing values of one name.
    locks: NameLocks,
}

impl fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api_token", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("zone", &self.zone)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Drop for Cloudflare {
    /// Wipes the token's copy inside the crate's credentials (`token`
    /// wipes itself).
    fn drop(&mut self) {
        if let Credentials::UserAuthToken { token } = &mut self.credentials {
            token.zeroize();
        }
    }
}

impl Cloudflare {
    /// Builds the provider: checks the configuration and makes the HTTP
    /// client (rustls with aws-lc-rs, installed as the process default
    /// provider). No request is made.
    pub fn new(mut config: CloudflareConfig) -> Result<Cloudflare, Error> {
        let token = Zeroizing::new(config.api_token.trim().to_owned());
        config.api_token.zeroize();
        if token.is_empty() {
            return Err(Error::Config(
                "cloudflare: the API token is empty".to_owned(),
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Config(
                "cloudflare: the API token holds characters a token cannot have".to_owned(),
            ));
        }
        let api_url = match config.api_url.as_deref().map(str::trim) {
            None | Some("") => DEFAULT_API_URL.to_owned(),
            Some(url) => {
                check_api_url(url)?;
                // The crate joins relative paths onto the base: it must end
                // with a slash or its last segment would be replaced.
                if url.ends_with('/') {
                    url.to_owned()
                } else {
                    format!("{url}/")
                }
            }
        };
        let zone = match config.zone.as_deref().map(crate::canonical_name) {
            None => None,
            Some(z) if z.is_empty() => None,
            Some(z) => {
                if !valid_name(&z) {
                    return Err(Error::Config(format!(
                        "cloudflare: invalid zone name {z:?}"
                    )));
                }
                Some(z)
            }
        };

        // aws-lc-rs is the only crypto backend; another part of the process
        // may have installed it already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let environment = if api_url == DEFAULT_API_URL {
            Environment::Production
        } else {
            Environment::Custom(api_url.clone())
        };
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(HTTP_TIMEOUT)
            .user_agent(concat!("mxkeys/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::Transport(format!(
                    "cloudflare: cannot build the HTTP client: {}",
                    error_chain(&e)
                ))
            })?;
        let credentials = Credentials::UserAuthToken {
            token: String::clone(&token),
        };
        Ok(Cloudflare {
            client,
            environment,
            credentials,
            token,
            api_url,
            zone,
            max_wait: DEFAULT_MAX_WAIT,
            zone_ids: Mutex::new(HashMap::new()),
            name_zones: Mutex::new(HashMap::new()),
            locks: NameLocks::default(),
        })
    }

    /// Caps each wait after an HTTP 429 (default 230 s; the total stays
    /// under five minutes). Tests use a few milliseconds.
    pub fn with_max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Removes the token from a message, should a server echo it.
    fn scrub(&self, message: String) -> String {
        if message.contains(self.token.as_str()) {
            message.replace(self.token.as_str(), "<redacted>")
        } else {
            message
        }
    }

    fn scrub_error(&self, error: Error) -> Error {
        match error {
            Error::Auth(m) => Error::Auth(self.scrub(m)),
            Error::NoZone(m) => Error::NoZone(self.scrub(m)),
            Error::Refused(m) => Error::Refused(self.scrub(m)),
            Error::RateLimited(m) => Error::RateLimited(self.scrub(m)),
            Error::Transport(m) => Error::Transport(self.scrub(m)),
            Error::Unsupported(m) => Error::Unsupported(self.scrub(m)),
            Error::Config(m) => Error::Config(self.scrub(m)),
        }
    }

    /// One API call: the `result` of a successful envelope, and its
    /// `result_info`. HTTP 429 is waited out a bounded number of times.
    async fn call<T: DeserializeOwned>(
        &self,
        request: &ApiRequest,
    ) -> Result<(T, Option<ResultInfo>), Error> {
        self.call_inner(request)
            .await
            .map_err(|e| self.scrub_error(e))
    }

    async fn call_inner<T: DeserializeOwned>(
        &self,
        request: &ApiRequest,
    ) -> Result<(T, Option<ResultInfo>), Error> {
        let what = request.describe();
        let mut waited = Duration::ZERO;
        let mut waits = 0;
        loop {
            tracing::debug!(request = %what, "cloudflare API call");
            let answer = self.send(request).await?;
            match answer.status {
                200..=299 => return parse_envelope(&what, &answer.body),
                429 => {
                    let budget = TOTAL_WAIT_CAP.saturating_sub(waited);
                    if waits >= RATE_LIMIT_WAITS.len() || budget.is_zero() {
                        return Err(Error::RateLimited(format!(
                            "cloudflare: {what}: still HTTP 429 after {waits} waits ({:.1} s){}",
                            waited.as_secs_f64(),
                            describe_messages(&error_messages(&answer.body)),
                        )));
                    }
                    let asked = answer.retry_after.unwrap_or(RATE_LIMIT_WAITS[waits]);
                    let wait = asked.min(self.max_wait).min(budget);
                    tracing::warn!(
                        request = %what,
                        retry_after_s = answer.retry_after.map(|d| d.as_secs()),
                        wait_ms = wait.as_millis() as u64,
                        "cloudflare API rate limit (HTTP 429); waiting"
                    );
                    tokio::time::sleep(wait).await;
                    waited += wait;
                    waits += 1;
                }
                status => {
                    return Err(status_error(&what, status, &error_messages(&answer.body)));
                }
            }
        }
    }

    /// Sends one request built from the endpoint spec, with the token's
    /// headers, and returns the status, `Retry-After` and body.
    async fn send(&self, request: &ApiRequest) -> Result<Answer, Error> {
        let what = request.describe();
        let mut builder = self
            .client
            .request(request.method(), request.url(&self.environment).as_str());
        for (name, value) in self.credentials.headers() {
            builder = builder.header(name, value);
        }
        if let (Some(RequestBody::Json(body)), Some(content_type)) =
            (request.body(), request.content_type())
        {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type.as_ref())
                .body(body);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| Error::Transport(format!("cloudflare: {what}: {}", error_chain(&e))))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| {
            Error::Transport(format!(
                "cloudflare: {what}: reading the answer: {}",
                error_chain(&e)
            ))
        })?;
        Ok(Answer {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }

    async fn zone_id(&self, zone: &str) -> Result<Option<String>, Error> {
        if let Some(id) = self.zone_ids.lock().unwrap().get(zone) {
            return Ok(Some(id.clone()));
        }
        let query = serialize_query(&ZoneQuery { name: zone });
        let request = ApiRequest::new(Method::GET, "zones".to_owned(), query, None);
        let (zones, _): (Vec<ZoneInfo>, _) = self.call(&request).await?;
        let mut matching: Vec<&ZoneInfo> = zones
            .iter()
            .filter(|z| crate::canonical_name(&z.name) == zone)
            .collect();
        // A zone name can appear more than once (a pending copy in another
        // account): prefer the active one.
        matching.sort_by_key(|z| z.status.as_deref() != Some("active"));
        let Some(found) = matching.first() else {
            return Ok(None);
        };
        check_id(&found.id)?;
        self.zone_ids
            .lock()
            .unwrap()
            .insert(zone.to_owned(), found.id.clone());
        Ok(Some(found.id.clone()))
    }

    /// The id of the zone holding `name`: the configured zone, or the
    /// longest zone found from the name's suffixes.
    async fn zone_for(&self, name: &str) -> Result<String, Error> {
        if let Some(id) = self.name_zones.lock().unwrap().get(name) {
            return Ok(id.clone());
        }
        let candidates: Vec<&str> = match &self.zone {
            Some(zone) => {
                if !in_zone(name, zone) {
                    return Err(Error::NoZone(format!("{name} (configured zone {zone})")));
                }
                vec![zone.as_str()]
            }
            None => suffixes(name),
        };
        for candidate in candidates {
            if let Some(id) = self.zone_id(candidate).await? {
                tracing::debug!(%name, zone = %candidate, "cloudflare zone found");
                self.name_zones
                    .lock()
                    .unwrap()
                    .insert(name.to_owned(), id.clone());
                return Ok(id);
            }
        }
        Err(Error::NoZone(name.to_owned()))
    }

    /// Every record of the set `name`/`rtype`, all pages.
    async fn list(
        &self,
        zone_id: &str,
        name: &str,
        rtype: RecordType,
    ) -> Result<Vec<Existing>, Error> {
        let type_name = rtype.to_string();
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            let query = serialize_query(&RecordQuery {
                name,
                rtype: &type_name,
                page,
                per_page: PER_PAGE,
            });
            let request = ApiRequest::new(
                Method::GET,
                format!("zones/{zone_id}/dns_records"),
                query,
                None,
            );
            let (records, info): (Vec<serde_json::Value>, _) = self.call(&request).await?;
            let count = records.len();
            for record in records {
                if let Some(existing) = parse_record(record, name, rtype)? {
                    out.push(existing);
                }
            }
            let total_pages = info.and_then(|i| i.total_pages).unwrap_or(1);
            if count == 0 || page >= total_pages {
                break;
            }
            if page >= MAX_PAGES {
                return Err(Error::Transport(format!(
                    "cloudflare: listing {name} {type_name} has more than {MAX_PAGES} pages"
                )));
            }
            page += 1;
        }
        Ok(out)
    }

    /// Writes one record: a new one (POST) or, with `record_id`, over that
    /// record in place (PATCH).
    async fn write_record(
        &self,
        zone_id: &str,
        record_id: Option<&str>,
        name: &str,
        ttl: u32,
        value: &RData,
    ) -> Result<(), Error> {
        let body = RecordBody::new(name, ttl, value);
        let (method, path) = match record_id {
            None => (Method::POST, format!("zones/{zone_id}/dns_records")),
            Some(id) => (Method::PATCH, format!("zones/{zone_id}/dns_records/{id}")),
        };
        let request = ApiRequest::new(method, path, None, Some(to_json(&body)?));
        let _: (serde_json::Value, _) = self.call(&request).await?;
        Ok(())
    }

    async fn delete(&self, zone_id: &str, record_id: &str) -> Result<(), Error> {
        let request = ApiRequest::new(
            Method::DELETE,
            format!("zones/{zone_id}/dns_records/{record_id}"),
            None,
            None,
        );
        let _: (serde_json::Value, _) = self.call(&request).await?;
        Ok(())
    }
}

impl RecordStore for Cloudflare {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        let name = checked_name(name)?;
        let zone_id = self.zone_for(&name).await?;
        let records = self.list(&zone_id, &name, rtype).await?;
        Ok(records.into_iter().map(|r| r.value).collect())
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let name = checked_name(name)?;
        let Some(rtype) = values.first().map(RData::record_type) else {
            return Err(Error::Config(
                "replace needs at least one value; use remove".to_owned(),
            ));
        };
        if values.iter().any(|v| v.record_type() != rtype) {
            return Err(Error::Config(format!(
                "replace of {name}: all values must be of one type"
            )));
        }
        for value in values {
            check_value(value)?;
        }
        let mut wanted: Vec<&RData> = values.iter().collect();
        wanted.sort();
        wanted.dedup();

        let zone_id = self.zone_for(&name).await?;
        let existing = self.list(&zone_id, &name, rtype).await?;
        let plan = plan(&existing, &wanted, ttl);
        if plan.is_empty() {
            tracing::debug!(%name, %rtype, "cloudflare set already in place");
            return Ok(Change::Unchanged);
        }
        tracing::info!(
            %name,
            %rtype,
            update = plan.update.len(),
            create = plan.create.len(),
            delete = plan.delete.len(),
            "cloudflare replacing record set"
        );
        // Updates and creations first, deletions last: the set is never empty.
        for (record_id, value) in &plan.update {
            self.write_record(&zone_id, Some(record_id), &name, ttl, value)
                .await?;
        }
        for value in &plan.create {
            self.write_record(&zone_id, None, &name, ttl, value).await?;
        }
        for record_id in &plan.delete {
            self.delete(&zone_id, record_id).await?;
        }
        Ok(Change::Changed)
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        let name = checked_name(name)?;
        refuse_mx(rtype)?;
        let zone_id = self.zone_for(&name).await?;
        let existing = self.list(&zone_id, &name, rtype).await?;
        if existing.is_empty() {
            return Ok(Change::Unchanged);
        }
        tracing::info!(%name, %rtype, count = existing.len(), "cloudflare removing record set");
        for record in &existing {
            self.delete(&zone_id, &record.id).await?;
        }
        Ok(Change::Changed)
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let name = checked_name(name)?;
        let rtype = crate::values_type(values)?;
        for value in values {
            check_value(value)?;
        }
        let zone_id = self.zone_for(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let existing = self.list(&zone_id, &name, rtype).await?;
        let mut missing: Vec<&RData> = values
            .iter()
            .filter(|v| !existing.iter().any(|e| e.value == **v))
            .collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(Change::Unchanged);
        }
        tracing::info!(%name, %rtype, create = missing.len(), "cloudflare adding records");
        for value in missing {
            self.write_record(&zone_id, None, &name, ttl, value).await?;
        }
        Ok(Change::Changed)
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        let name = checked_name(name)?;
        let rtype = crate::values_type(values)?;
        refuse_mx(rtype)?;
        let zone_id = self.zone_for(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let existing = self.list(&zone_id, &name, rtype).await?;
        let doomed: Vec<&Existing> = existing
            .iter()
            .filter(|e| values.contains(&e.value))
            .collect();
        if doomed.is_empty() {
            return Ok(Change::Unchanged);
        }
        tracing::info!(%name, %rtype, delete = doomed.len(), "cloudflare removing records");
        for record in doomed {
            self.delete(&zone_id, &record.id).await?;
        }
        Ok(Change::Changed)
    }
}

/// The writes that turn the existing records into the wanted set.
#[derive(Debug, Default)]
struct Plan<'a> {
    /// Record id and its new value (or only its new TTL).
    update: Vec<(String, &'a RData)>,
    create: Vec<&'a RData>,
    delete: Vec<String>,
}

impl Plan<'_> {
    fn is_empty(&self) -> bool {
        self.update.is_empty() && self.create.is_empty() && self.delete.is_empty()
    }
}

fn plan<'a>(existing: &[Existing], wanted: &[&'a RData], ttl: u32) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut used = vec![false; existing.len()];
    let mut missing = Vec::new();
    // Records already holding a wanted value stay (a TTL change is an
    // update in place).
    for &value in wanted {
        match (0..existing.len()).find(|&i| !used[i] && existing[i].value == *value) {
            Some(i) => {
                used[i] = true;
                if existing[i].ttl != Some(ttl) {
                    plan.update.push((existing[i].id.clone(), value));
                }
            }
            None => missing.push(value),
        }
    }
    // The other records take the missing values in place; the rest is
    // created or deleted.
    let mut spare = (0..existing.len()).filter(|&i| !used[i]);
    for value in missing {
        match spare.next() {
            Some(i) => plan.update.push((existing[i].id.clone(), value)),
            None => plan.create.push(value),
        }
    }
    plan.delete = spare.map(|i| existing[i].id.clone()).collect();
    plan
}

/// A record of the set as listed.
#[derive(Debug)]
struct Existing {
    id: String,
    ttl: Option<u32>,
    value: RData,
}

/// An HTTP answer: status, `Retry-After` (seconds form), body.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// The `errors` of a v4 envelope, read leniently (codes are i64: DNS
/// errors like 81058 do not fit the crate's u16). Empty when unreadable.
fn error_messages(body: &[u8]) -> Vec<ApiMessage> {
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.errors)
        .unwrap_or_default()
}

/// One API request: this crate's endpoint type (the crate's `EndpointSpec`).
/// The body comes back raw and is parsed here.
#[derive(Debug)]
struct ApiRequest {
    method: Method,
    path: String,
    query: Option<String>,
    body: Option<String>,
}

impl ApiRequest {
    fn new(method: Method, path: String, query: Option<String>, body: Option<String>) -> Self {
        ApiRequest {
            method,
            path,
            query,
            body,
        }
    }

    fn describe(&self) -> String {
        match &self.query {
            Some(q) => format!("{} /{}?{q}", self.method, self.path),
            None => format!("{} /{}", self.method, self.path),
        }
    }
}

impl EndpointSpec for ApiRequest {
    const IS_RAW_BODY: bool = true;
    type JsonResponse = ();
    type ResponseType = Vec<u8>;

    fn method(&self) -> Method {
        self.method.clone()
    }

    fn path(&self) -> String {
        self.path.clone()
    }

    fn query(&self) -> Option<String> {
        self.query.clone()
    }

    fn body(&self) -> Option<RequestBody<'_>> {
        self.body.clone().map(RequestBody::Json)
    }
}

#[derive(Serialize)]
struct ZoneQuery<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct RecordQuery<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    rtype: &'a str,
    page: u32,
    per_page: u32,
}

/// The body of a create or update.
#[derive(Serialize)]
struct RecordBody<'a> {
    #[serde(rename = "type")]
    rtype: String,
    name: &'a str,
    ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<TlsaData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxied: Option<bool>,
}

impl<'a> RecordBody<'a> {
    fn new(name: &'a str, ttl: u32, value: &RData) -> Self {
        let mut body = RecordBody {
            rtype: value.record_type().to_string(),
            name,
            ttl,
            content: None,
            data: None,
            proxied: None,
        };
        match value {
            RData::Txt(text) => body.content = Some(txt_content(text)),
            RData::Tlsa {
                usage,
                selector,
                matching,
                data,
            } => {
                body.data = Some(TlsaData {
                    usage: *usage,
                    selector: *selector,
                    matching_type: *matching,
                    certificate: hex(data),
                });
            }
            RData::Cname(target) => {
                body.content = Some(target.clone());
                // An ACME delegation target must be answered as a CNAME.
                body.proxied = Some(false);
            }
            RData::A(_) | RData::Aaaa(_) => {
                body.content = Some(value.to_string());
                // The address itself, not Cloudflare's proxy.
                body.proxied = Some(false);
            }
            // Refused by `check_value` before any write.
            RData::Mx { exchange, .. } => body.content = Some(exchange.clone()),
        }
        body
    }
}

#[derive(Serialize, Deserialize)]
struct TlsaData {
    usage: u8,
    selector: u8,
    matching_type: u8,
    certificate: String,
}

/// The v4 envelope, leniently: unknown fields are ignored, codes may be
/// any size.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default = "yes")]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: serde_json::Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: Option<u32>,
}

#[derive(Deserialize)]
struct ZoneInfo {
    id: String,
    name: String,
    #[serde(default)]
    status: Option<String>,
}

/// A listed record, only the fields used.
#[derive(Deserialize)]
struct ListedRecord {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    rtype: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    /// An MX record's preference.
    #[serde(default)]
    priority: Option<u16>,
    #[serde(default)]
    ttl: Option<u32>,
}

fn parse_envelope<T: DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<(T, Option<ResultInfo>), Error> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        Error::Transport(format!(
            "cloudflare: {what}: answer is not an API envelope: {e}"
        ))
    })?;
    if !envelope.success {
        return Err(Error::Refused(format!(
            "cloudflare: {what}: refused{}",
            describe_messages(&envelope.errors)
        )));
    }
    let result = serde_json::from_value(envelope.result)
        .map_err(|e| Error::Transport(format!("cloudflare: {what}: unexpected result: {e}")))?;
    Ok((result, envelope.result_info))
}

/// A listed record as a value of the set, or `None` for a record of
/// another name or type (which a filtered listing should not hold).
fn parse_record(
    record: serde_json::Value,
    name: &str,
    rtype: RecordType,
) -> Result<Option<Existing>, Error> {
    let type_matches = record
        .get("type")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case(&rtype.to_string()));
    if !type_matches {
        return Ok(None);
    }
    let record: ListedRecord = serde_json::from_value(record).map_err(|e| {
        Error::Transport(format!(
            "cloudflare: unreadable {rtype} record of {name}: {e}"
        ))
    })?;
    if record
        .name
        .as_deref()
        .is_some_and(|n| crate::canonical_name(n) != name)
        || !record.rtype.eq_ignore_ascii_case(&rtype.to_string())
    {
        return Ok(None);
    }
    check_id(&record.id)?;
    let unreadable = || {
        Error::Transport(format!(
            "cloudflare: cannot read {rtype} record {} of {name}",
            record.id
        ))
    };
    let value = match rtype {
        RecordType::Txt => RData::Txt(parse_txt_content(
            record.content.as_deref().ok_or_else(unreadable)?,
        )),
        RecordType::Cname => RData::Cname(crate::canonical_name(
            record.content.as_deref().ok_or_else(unreadable)?,
        )),
        RecordType::A => RData::A(
            record
                .content
                .as_deref()
                .and_then(|c| c.parse().ok())
                .ok_or_else(unreadable)?,
        ),
        RecordType::Aaaa => RData::Aaaa(
            record
                .content
                .as_deref()
                .and_then(|c| c.parse().ok())
                .ok_or_else(unreadable)?,
        ),
        RecordType::Mx => RData::Mx {
            preference: record.priority.ok_or_else(unreadable)?,
            exchange: crate::mx_exchange(record.content.as_deref().ok_or_else(unreadable)?),
        },
        RecordType::Tlsa => {
            let from_data = record
                .data
                .clone()
                .and_then(|d| serde_json::from_value::<TlsaData>(d).ok())
                .and_then(|d| {
                    Some(RData::Tlsa {
                        usage: d.usage,
                        selector: d.selector,
                        matching: d.matching_type,
                        data: unhex(&d.certificate)?,
                    })
                });
            match from_data {
                Some(v) => v,
                None => parse_tlsa_content(record.content.as_deref().unwrap_or(""))
                    .ok_or_else(unreadable)?,
            }
        }
    };
    Ok(Some(Existing {
        id: record.id,
        ttl: record.ttl,
        value,
    }))
}

/// TXT content as sent: raw when it fits one character-string and has
/// nothing to escape, otherwise quoted character-strings of at most 255
/// bytes.
fn txt_content(value: &str) -> String {
    if value.len() <= crate::txt::MAX_STRING
        && !value.contains(['"', '\\'])
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
    {
        value.to_owned()
    } else {
        crate::txt::zone_file_strings(value)
    }
}

/// TXT content as listed: quoted character-strings (joined) or a raw value.
fn parse_txt_content(content: &str) -> String {
    if content.trim_start().starts_with('"')
        && let Some(strings) = parse_quoted_strings(content)
    {
        return crate::txt::join(&strings);
    }
    content.to_owned()
}

/// `"a" "b\"c"` -> [a, b"c]; `None` when the text is not only quoted
/// strings. Understands `\X` and `\DDD` escapes.
fn parse_quoted_strings(text: &str) -> Option<Vec<Vec<u8>>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        if bytes[i] != b'"' {
            return None;
        }
        i += 1;
        let mut current = Vec::new();
        loop {
            match *bytes.get(i)? {
                b'"' => {
                    i += 1;
                    break;
                }
                b'\\' => {
                    let next = *bytes.get(i + 1)?;
                    if next.is_ascii_digit() {
                        let digits = bytes.get(i + 1..i + 4)?;
                        if !digits.iter().all(u8::is_ascii_digit) {
                            return None;
                        }
                        let n = digits
                            .iter()
                            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                        current.push(u8::try_from(n).ok()?);
                        i += 4;
                    } else {
                        current.push(next);
                        i += 2;
                    }
                }
                b => {
                    current.push(b);
                    i += 1;
                }
            }
        }
        // Strings are separated by white space.
        if i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            return None;
        }
        out.push(current);
    }
    (!out.is_empty()).then_some(out)
}

/// `3 1 1 ABCD...` -> TLSA.
fn parse_tlsa_content(content: &str) -> Option<RData> {
    let mut fields = content.split_ascii_whitespace();
    let usage = fields.next()?.parse().ok()?;
    let selector = fields.next()?.parse().ok()?;
    let matching = fields.next()?.parse().ok()?;
    let data = unhex(&fields.collect::<String>())?;
    Some(RData::Tlsa {
        usage,
        selector,
        matching,
        data,
    })
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// An error answer (not 429) as one line.
fn status_error(what: &str, status: u16, errors: &[ApiMessage]) -> Error {
    let details = if errors.is_empty() {
        " (no readable error details)".to_owned()
    } else {
        describe_messages(errors)
    };
    match status {
        401 | 403 => Error::Auth(format!(
            "cloudflare refused the API token: {what}: HTTP {status}{details}"
        )),
        _ => Error::Refused(format!("cloudflare: {what}: HTTP {status}{details}")),
    }
}

fn describe_messages(errors: &[ApiMessage]) -> String {
    if errors.is_empty() {
        return " (no error details)".to_owned();
    }
    join_errors(errors.iter().map(|e| (e.code, e.message.as_str())))
}

fn join_errors<'a>(errors: impl Iterator<Item = (i64, &'a str)>) -> String {
    let parts: Vec<String> = errors
        .map(|(code, message)| format!("{code} {}", one_line(message)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join("; "))
    }
}

/// An error and its causes, in one line (reqwest's own message leaves the
/// cause out).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    one_line(&out)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn to_json<T: Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value)
        .map_err(|e| Error::Unsupported(format!("cloudflare: cannot encode a request: {e}")))
}

/// Record and zone ids go into URL paths: only plain tokens are accepted.
fn check_id(id: &str) -> Result<(), Error> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(Error::Transport(format!(
            "cloudflare: the API returned an unusable id {id:?}"
        )))
    }
}

fn checked_name(name: &str) -> Result<String, Error> {
    let name = crate::canonical_name(name);
    if valid_name(&name) {
        Ok(name)
    } else {
        Err(Error::Unsupported(format!(
            "cloudflare: invalid record name {name:?}"
        )))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
        })
}

fn check_value(value: &RData) -> Result<(), Error> {
    match value {
        RData::Txt(_) => Ok(()),
        RData::Tlsa { data, .. } if data.is_empty() => Err(Error::Unsupported(
            "cloudflare: a TLSA record needs certificate data".to_owned(),
        )),
        RData::Tlsa { .. } => Ok(()),
        RData::Cname(target) if valid_name(&crate::canonical_name(target)) => Ok(()),
        RData::Cname(target) => Err(Error::Unsupported(format!(
            "cloudflare: invalid CNAME target {target:?}"
        ))),
        RData::A(_) | RData::Aaaa(_) => Ok(()),
        RData::Mx { .. } => refuse_mx(RecordType::Mx),
    }
}

/// mxkeys reads MX sets (MTA-STS) but never writes them: the mail routing
/// is the administrator's.
fn refuse_mx(rtype: RecordType) -> Result<(), Error> {
    if rtype == RecordType::Mx {
        return Err(Error::Unsupported(
            "cloudflare: mxkeys reads MX records but never writes them".to_owned(),
        ));
    }
    Ok(())
}

fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// `a.b.example.com` -> [a.b.example.com, b.example.com, example.com]: the
/// candidate zones, longest first (a zone has at least two labels, unless
/// the name has only one).
fn suffixes(name: &str) -> Vec<&str> {
    let mut out = vec![name];
    let mut rest = name;
    while let Some((_, tail)) = rest.split_once('.') {
        if !tail.contains('.') {
            break;
        }
        out.push(tail);
        rest = tail;
    }
    out
}

/// Rejects a base URL the crate's URL parsing would panic on.
fn check_api_url(url: &str) -> Result<(), Error> {
    let bad = || Error::Config(format!("cloudflare: invalid api_url {url:?}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad());
    }
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(bad());
        }
        after.strip_prefix(':')
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(bad());
        }
        port
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_records_are_read_but_never_written() {
        let listed = serde_json::json!({
            "id": "0123456789abcdef0123456789abcdef",
            "name": "example.test",
            "type": "MX",
            "content": "MX1.Example.test",
            "priority": 10,
            "ttl": 300,
        });
        let read = parse_record(listed, "example.test", RecordType::Mx).unwrap();
        assert_eq!(
            read.map(|r| r.value),
            Some(RData::Mx {
                preference: 10,
                exchange: "mx1.example.test".to_owned()
            })
        );
        let mx = RData::Mx {
            preference: 10,
            exchange: "mx1.example.test".to_owned(),
        };
        match check_value(&mx) {
            Err(Error::Unsupported(message)) => {
                assert!(message.contains("never writes"), "{message}")
            }
            other => panic!("an MX write must be refused, got {other:?}"),
        }
        assert!(refuse_mx(RecordType::Mx).is_err());
        assert!(refuse_mx(RecordType::Txt).is_ok());
    }

    #[test]
    fn txt_content_round_trips() {
        let dkim = format!("v=DKIM1; k=rsa; p={}", "A".repeat(392));
        for value in [
            "plain".to_owned(),
            String::new(),
            "with \"quote\" and \\".to_owned(),
            " leading space".to_owned(),
            "x".repeat(255),
            "x".repeat(256),
            dkim.clone(),
            "é".repeat(200),
        ] {
            let sent = txt_content(&value);
            assert_eq!(parse_txt_content(&sent), value, "{sent}");
        }
        assert_eq!(txt_content("plain"), "plain");
        let sent = txt_content(&dkim);
        assert!(sent.starts_with('"') && sent.contains("\" \""));
    }

    #[test]
    fn txt_content_read_forms() {
        assert_eq!(parse_txt_content("\"ab\" \"cd\""), "abcd");
        assert_eq!(parse_txt_content("\"a\\\"b\\092\""), "a\"b\\");
        assert_eq!(parse_txt_content("raw value"), "raw value");
        assert_eq!(parse_txt_content("\"unterminated"), "\"unterminated");
        assert_eq!(parse_txt_content("\"a\"b"), "\"a\"b");
    }

    #[test]
    fn plan_keeps_updates_and_diffs() {
        let existing = vec![
            Existing {
                id: "1".into(),
                ttl: Some(300),
                value: RData::Txt("a".into()),
            },
            Existing {
                id: "2".into(),
                ttl: Some(300),
                value: RData::Txt("b".into()),
            },
        ];
        let a = RData::Txt("a".into());
        let c = RData::Txt("c".into());
        let d = RData::Txt("d".into());
        let p = plan(&existing, &[&a, &c, &d], 300);
        assert_eq!(p.update, vec![("2".to_owned(), &c)]);
        assert_eq!(p.create, vec![&d]);
        assert!(p.delete.is_empty());
        let p = plan(&existing, &[&a], 300);
        assert!(p.update.is_empty() && p.create.is_empty());
        assert_eq!(p.delete, vec!["2".to_owned()]);
        let p = plan(&existing, &[&a], 60);
        assert_eq!(p.update, vec![("1".to_owned(), &a)]);
        assert!(plan(&existing, &[&a, &RData::Txt("b".into())], 300).is_empty());
    }

    #[test]
    fn names_and_urls() {
        assert_eq!(
            suffixes("a.b.example.com"),
            vec!["a.b.example.com", "b.example.com", "example.com"]
        );
        assert_eq!(suffixes("example.com"), vec!["example.com"]);
        assert!(in_zone("a.example.com", "example.com"));
        assert!(in_zone("example.com", "example.com"));
        assert!(!in_zone("aexample.com", "example.com"));
        assert!(check_api_url("http://127.0.0.1:8080/client/v4").is_ok());
        assert!(check_api_url("https://api.cloudflare.com/client/v4/").is_ok());
        assert!(check_api_url("http://[::1]:80/").is_ok());
        for bad in [
            "",
            "ftp://x",
            "http://",
            "http://a b/",
            "http://h:99999/",
            "http://[::1/",
        ] {
            assert!(check_api_url(bad).is_err(), "{bad}");
        }
    }
}

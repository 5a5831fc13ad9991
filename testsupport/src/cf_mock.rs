//! A small Cloudflare API v4 stand-in for the tests: HTTP/1.1 on loopback,
//! one request per connection, an in-memory zone store, and switches for
//! rate limiting, error answers and a listing that ignores the type filter.
//! Every request is recorded so tests can assert what was called.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Where the API lives under the server's root (as in production).
pub const PREFIX: &str = "/client/v4";
/// Most records (or zones) per page the server returns, whatever asked.
pub const PAGE_SIZE: usize = 5;

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path below [`PREFIX`] (e.g. `/zones/z1/dns_records`).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    pub fn is_listing(&self) -> bool {
        self.method == "GET" && self.path.ends_with("/dns_records")
    }

    pub fn is_zone_lookup(&self) -> bool {
        self.method == "GET" && self.path == "/zones"
    }

    /// The record id of a PATCH, PUT or DELETE.
    pub fn record_id(&self) -> Option<&str> {
        let (head, id) = self.path.rsplit_once('/')?;
        head.ends_with("/dns_records").then_some(id)
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub zone_id: String,
    pub name: String,
    pub rtype: String,
    pub content: String,
    pub data: Option<Value>,
    pub ttl: u32,
}

impl Record {
    fn json(&self, zone_name: &str) -> Value {
        let mut v = json!({
            "id": self.id,
            "zone_id": self.zone_id,
            "zone_name": zone_name,
            "name": self.name,
            "type": self.rtype,
            "content": self.content,
            "proxiable": false,
            "proxied": false,
            "ttl": self.ttl,
            "settings": {},
            "meta": {"auto_added": false, "managed_by_apps": false},
            "comment": null,
            "tags": [],
            "created_on": "2025-01-01T00:00:00.000000Z",
            "modified_on": "2025-01-01T00:00:00.000000Z",
        });
        if let Some(data) = &self.data {
            v["data"] = data.clone();
        }
        v
    }
}

#[derive(Default)]
pub struct State {
    pub token: String,
    /// (id, name)
    pub zones: Vec<(String, String)>,
    pub records: Vec<Record>,
    pub requests: Vec<Request>,
    /// Answer 429 with `Retry-After: 1` to this many next requests.
    pub rate_limit_next: usize,
    /// Answer the next request with this status and body.
    pub fail_next: Option<(u16, Value)>,
    /// Return records of every type in listings (as if `type` were not
    /// understood).
    pub ignore_type_filter: bool,
    /// A set (name, type) that must never become empty once it exists.
    pub watch: Option<(String, String, bool)>,
    pub violations: Vec<String>,
    next_id: u64,
}

pub struct Mock {
    /// Base URL of the API, without trailing slash.
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl Mock {
    pub async fn start(token: &str) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            token: token.to_owned(),
            ..State::default()
        }));
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state).await;
                });
            }
        });
        Mock {
            url: format!("http://{addr}{PREFIX}"),
            state,
        }
    }

    pub fn add_zone(&self, id: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .zones
            .push((id.to_owned(), name.to_owned()));
    }

    /// Adds a record directly (not through the API); returns its id.
    pub fn add_record(
        &self,
        zone_id: &str,
        name: &str,
        rtype: &str,
        content: &str,
        data: Option<Value>,
        ttl: u32,
    ) -> String {
        let mut st = self.state.lock().unwrap();
        let id = st.new_id();
        st.records.push(Record {
            id: id.clone(),
            zone_id: zone_id.to_owned(),
            name: name.to_owned(),
            rtype: rtype.to_owned(),
            content: content.to_owned(),
            data,
            ttl,
        });
        id
    }

    pub fn records(&self, name: &str, rtype: &str) -> Vec<Record> {
        self.state
            .lock()
            .unwrap()
            .records
            .iter()
            .filter(|r| r.name == name && r.rtype == rtype)
            .cloned()
            .collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    pub fn rate_limit_next(&self, n: usize) {
        self.state.lock().unwrap().rate_limit_next = n;
    }

    pub fn fail_next(&self, status: u16, body: Value) {
        self.state.lock().unwrap().fail_next = Some((status, body));
    }

    pub fn ignore_type_filter(&self, on: bool) {
        self.state.lock().unwrap().ignore_type_filter = on;
    }

    pub fn watch(&self, name: &str, rtype: &str) {
        let mut st = self.state.lock().unwrap();
        let exists = st
            .records
            .iter()
            .any(|r| r.name == name && r.rtype == rtype);
        st.watch = Some((name.to_owned(), rtype.to_owned(), exists));
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

impl State {
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", 0x00c0_ffee_0000_u64 + self.next_id)
    }

    fn zone_name(&self, zone_id: &str) -> Option<String> {
        self.zones
            .iter()
            .find(|(id, _)| id == zone_id)
            .map(|(_, n)| n.clone())
    }

    fn check_watch(&mut self, req: &Request) {
        let Some((name, rtype, seen)) = self.watch.clone() else {
            return;
        };
        let count = self
            .records
            .iter()
            .filter(|r| r.name == name && r.rtype == rtype)
            .count();
        if count > 0 {
            self.watch = Some((name, rtype, true));
        } else if seen {
            self.violations.push(format!(
                "{name} {rtype} empty after {} {}",
                req.method, req.path
            ));
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn ok(result: Value, result_info: Option<Value>) -> Response {
    let mut body = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(info) = result_info {
        body["result_info"] = info;
    }
    Response {
        status: 200,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn error(status: u16, code: u32, message: &str) -> Response {
    Response {
        status,
        headers: Vec::new(),
        body: json!({
            "success": false,
            "errors": [{"code": code, "message": message}],
            "messages": [],
            "result": null
        })
        .to_string(),
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(raw) = crate::http_request::read(&mut stream).await? else {
        return Ok(());
    };
    let (method, path, headers, body) = (raw.method, raw.path, raw.headers, raw.body);
    let query = parse_query(&raw.query);
    let response = {
        let mut st = state.lock().unwrap();
        let req = Request {
            method,
            path: path.strip_prefix(PREFIX).unwrap_or(&path).to_owned(),
            query,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        st.requests.push(req.clone());
        let auth_ok = headers.get("authorization").map(String::as_str)
            == Some(&format!("Bearer {}", st.token));
        let response = if st.rate_limit_next > 0 {
            st.rate_limit_next -= 1;
            let mut r = error(
                429,
                971,
                "Please wait and consider throttling your request speed",
            );
            r.headers.push(("Retry-After".to_owned(), "1".to_owned()));
            r
        } else if !auth_ok {
            error(401, 10000, "Authentication error")
        } else if let Some((status, body)) = st.fail_next.take() {
            Response {
                status,
                headers: Vec::new(),
                body: body.to_string(),
            }
        } else if !path.starts_with(&format!("{PREFIX}/")) {
            error(404, 7000, "No route for that URI")
        } else {
            route(&mut st, &req)
        };
        st.check_watch(&req);
        response
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Other",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&response.body);
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

fn route(st: &mut State, req: &Request) -> Response {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["zones"]) => {
            let name = req.param("name");
            let zones: Vec<Value> = st
                .zones
                .iter()
                .filter(|(_, n)| name.is_none_or(|name| name == n))
                .map(|(id, n)| {
                    json!({"id": id, "name": n, "status": "active", "paused": false,
                           "type": "full", "name_servers": ["a.ns.invalid", "b.ns.invalid"]})
                })
                .collect();
            let count = zones.len();
            ok(
                Value::Array(zones),
                Some(json!({"page": 1, "per_page": 20, "count": count,
                            "total_count": count, "total_pages": 1})),
            )
        }
        (method, ["zones", zone_id, "dns_records", rest @ ..]) => {
            let Some(zone_name) = st.zone_name(zone_id) else {
                return error(
                    404,
                    7003,
                    "Could not route to /zones/..., perhaps your object identifier is invalid?",
                );
            };
            match (method, rest) {
                ("GET", []) => list(st, zone_id, &zone_name, req),
                ("POST", []) => create(st, zone_id, &zone_name, req),
                ("PATCH" | "PUT", [id]) => update(st, &zone_name, id, req),
                ("DELETE", [id]) => {
                    match st
                        .records
                        .iter()
                        .position(|r| r.id == *id && r.zone_id == *zone_id)
                    {
                        Some(i) => {
                            st.records.remove(i);
                            ok(json!({"id": id}), None)
                        }
                        None => error(404, 81044, "Record does not exist."),
                    }
                }
                _ => error(405, 10405, "Method not allowed"),
            }
        }
        _ => error(404, 7000, "No route for that URI"),
    }
}

fn list(st: &State, zone_id: &str, zone_name: &str, req: &Request) -> Response {
    let name = req.param("name");
    let rtype = if st.ignore_type_filter {
        None
    } else {
        req.param("type")
    };
    let page: usize = req
        .param("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = req
        .param("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(PAGE_SIZE)
        .clamp(1, PAGE_SIZE);
    let matching: Vec<&Record> = st
        .records
        .iter()
        .filter(|r| r.zone_id == zone_id)
        .filter(|r| name.is_none_or(|n| r.name.eq_ignore_ascii_case(n)))
        .filter(|r| rtype.is_none_or(|t| r.rtype == t))
        .collect();
    let total = matching.len();
    let total_pages = total.div_ceil(per_page);
    let items: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| r.json(zone_name))
        .collect();
    let count = items.len();
    ok(
        Value::Array(items),
        Some(json!({"page": page, "per_page": per_page, "count": count,
                    "total_count": total, "total_pages": total_pages})),
    )
}

/// Checks and fills a record from a request body; `Err` is the API error.
fn apply(record: &mut Record, body: &Value) -> Result<(), Response> {
    if let Some(t) = body.get("type").and_then(Value::as_str) {
        record.rtype = t.to_owned();
    }
    if let Some(n) = body.get("name").and_then(Value::as_str) {
        record.name = n.trim_end_matches('.').to_ascii_lowercase();
    }
    if let Some(ttl) = body.get("ttl").and_then(Value::as_u64) {
        record.ttl = ttl as u32;
    }
    if let Some(c) = body.get("content").and_then(Value::as_str) {
        record.content = c.to_owned();
    }
    if let Some(data) = body.get("data") {
        record.data = Some(data.clone());
        if record.rtype == "TLSA" {
            record.content = format!(
                "{} {} {} {}",
                data["usage"],
                data["selector"],
                data["matching_type"],
                data["certificate"].as_str().unwrap_or_default()
            );
        }
    }
    if record.rtype.is_empty() || record.name.is_empty() {
        return Err(error(400, 9000, "DNS name or type is missing"));
    }
    if record.rtype == "TXT" && !txt_content_valid(&record.content) {
        return Err(error(
            400,
            9100,
            "DNS Validation Error: TXT content string too long",
        ));
    }
    if record.rtype == "TLSA" && record.data.is_none() {
        return Err(error(400, 9021, "data is required for TLSA records"));
    }
    Ok(())
}

/// Cloudflare's rule: a TXT string is at most 255 bytes; longer content
/// must be given as several quoted strings.
fn txt_content_valid(content: &str) -> bool {
    if !content.starts_with('"') {
        return content.len() <= 255;
    }
    // Independent minimal parser: "..." strings with \" and \\ escapes.
    let mut strings = Vec::new();
    let mut chars = content.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => break,
            Some('"') => {}
            Some(_) => return false,
        }
        let mut s = String::new();
        loop {
            match chars.next() {
                None => return false,
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c) => s.push(c),
                    None => return false,
                },
                Some(c) => s.push(c),
            }
        }
        strings.push(s);
    }
    !strings.is_empty() && strings.iter().all(|s| s.len() <= 255)
}

fn identical_exists(st: &State, record: &Record) -> bool {
    st.records.iter().any(|r| {
        r.id != record.id
            && r.zone_id == record.zone_id
            && r.name == record.name
            && r.rtype == record.rtype
            && r.content == record.content
    })
}

fn create(st: &mut State, zone_id: &str, zone_name: &str, req: &Request) -> Response {
    let body = req.json();
    let mut record = Record {
        id: String::new(),
        zone_id: zone_id.to_owned(),
        name: String::new(),
        rtype: String::new(),
        content: String::new(),
        data: None,
        ttl: 1,
    };
    if let Err(r) = apply(&mut record, &body) {
        return r;
    }
    if identical_exists(st, &record) {
        return error(400, 81058, "An identical record already exists.");
    }
    record.id = st.new_id();
    let out = record.json(zone_name);
    st.records.push(record);
    ok(out, None)
}

fn update(st: &mut State, zone_name: &str, id: &str, req: &Request) -> Response {
    let Some(i) = st.records.iter().position(|r| r.id == id) else {
        return error(404, 81044, "Record does not exist.");
    };
    let mut record = st.records[i].clone();
    if req.method == "PUT" {
        record.content.clear();
        record.data = None;
        record.rtype.clear();
        record.name.clear();
        record.ttl = 1;
    }
    if let Err(r) = apply(&mut record, &req.json()) {
        return r;
    }
    if identical_exists(st, &record) {
        return error(400, 81058, "An identical record already exists.");
    }
    let out = record.json(zone_name);
    st.records[i] = record;
    ok(out, None)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

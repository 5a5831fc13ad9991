//! The long tail of DNS providers (the `dns-update` crate): Route 53's XML
//! API and PowerDNS's JSON API against local mocks that check the exact
//! requests (method, path, query, body, credentials), keep the values
//! others put in a set, and answer errors and throttling; Hetzner's JSON
//! API, whose endpoint the crate does not let us set, reached by its real
//! host name (`mxkeys dns test` under `unshare -m` with a hosts file naming
//! a loopback address, and a CA made now in SSL_CERT_FILE); every other
//! type of the table parsed from a configuration, its credentials read from
//! files, and `mxkeys dns test` with no network at all (`unshare -n`)
//! failing in one clear line. No credential appears in any output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use mxkeys::config::{Config, Host};
use mxkeys::dns::Provider;
use mxkeys_providers::{Change, Error, RData, RecordStore, RecordType};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const KEY_ID: &str = "AKIDMXKEYSTEST";
const SECRET: &str = "r53-SECRET-never-shown-0123456789";
const PDNS_KEY: &str = "pdns-SECRET-never-shown-9876543210";

/// One request as the mock saw it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    /// The raw query string ("" when none).
    query: String,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Req {
    fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn resp(status: u16, body: impl Into<String>) -> Resp {
    Resp {
        status,
        headers: Vec::new(),
        body: body.into(),
    }
}

/// A record set: TTL and values in the API's presentation.
type Sets = BTreeMap<(String, String), (u32, Vec<String>)>;

#[derive(Default)]
struct State {
    requests: Vec<Req>,
    sets: Sets,
    /// Answers given, in turn, instead of the API's.
    canned: Vec<Resp>,
    /// Set names that must never be empty once written (the watch).
    watched: Vec<(String, String)>,
    violations: Vec<String>,
}

type Handler = fn(&Req, &mut State) -> Resp;

/// An HTTP/1.1 API stand-in on a loopback port of the pool: one request
/// per connection, every request recorded.
struct Mock {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Mock {
    async fn start(handler: Handler) -> Mock {
        let port = mxkeys_testsupport::ports::free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, state, handler).await;
                });
            }
        });
        Mock {
            url: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    fn requests(&self) -> Vec<Req> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }

    fn set(&self, name: &str, rtype: &str) -> Option<(u32, Vec<String>)> {
        self.state
            .lock()
            .unwrap()
            .sets
            .get(&(name.to_owned(), rtype.to_owned()))
            .cloned()
    }

    fn put(&self, name: &str, rtype: &str, ttl: u32, values: &[&str]) {
        self.state.lock().unwrap().sets.insert(
            (name.to_owned(), rtype.to_owned()),
            (ttl, values.iter().map(|v| (*v).to_owned()).collect()),
        );
    }

    fn answer_next(&self, answers: Vec<Resp>) {
        self.state.lock().unwrap().canned = answers;
    }

    fn watch(&self, name: &str, rtype: &str) {
        self.state
            .lock()
            .unwrap()
            .watched
            .push((name.to_owned(), rtype.to_owned()));
    }

    fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<Mutex<State>>,
    handler: Handler,
) -> std::io::Result<()> {
    let Some(raw) = mxkeys_testsupport::http_request::read(&mut stream).await? else {
        return Ok(());
    };
    let (method, path, query, headers, body) =
        (raw.method, raw.path, raw.query, raw.headers, raw.body);
    let req = Req {
        method,
        path,
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let response = {
        let mut state = state.lock().unwrap();
        state.requests.push(req.clone());
        let response = if state.canned.is_empty() {
            handler(&req, &mut state)
        } else {
            state.canned.remove(0)
        };
        let watched = state.watched.clone();
        for key in watched {
            if state.sets.get(&key).is_none_or(|(_, v)| v.is_empty())
                && state.requests.iter().any(|r| r.method != "GET")
            {
                let line = format!("{} {} empty after {}", key.0, key.1, req.line());
                state.violations.push(line);
            }
        }
        response
    };
    let mut out = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
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

fn between<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    text.split(open)
        .skip(1)
        .filter_map(|rest| rest.split_once(close).map(|(v, _)| v))
        .collect()
}

fn xml_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const R53_PREFIX: &str = "/2013-04-01/hostedzone/Z0MXKEYS/rrset";

/// Route 53 as far as the crate uses it with a `hosted_zone_id`: list
/// record sets from a name and type on, and change batches of UPSERT and
/// DELETE (which must name the set exactly, as AWS checks).
fn route53(req: &Req, state: &mut State) -> Resp {
    let auth = req
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    if !auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={KEY_ID}/"))
        || !auth.contains("/us-east-1/route53/aws4_request")
        || !req.headers.contains_key("x-amz-date")
    {
        return resp(
            403,
            "<ErrorResponse><Error><Code>InvalidSignature</Code></Error></ErrorResponse>",
        );
    }
    if req.path != R53_PREFIX {
        return resp(
            404,
            "<ErrorResponse><Error><Code>NoSuchHostedZone</Code></Error></ErrorResponse>",
        );
    }
    match req.method.as_str() {
        "GET" => {
            let query: BTreeMap<String, String> = req
                .query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let key = (
                query.get("name").cloned().unwrap_or_default(),
                query.get("type").cloned().unwrap_or_default(),
            );
            let sets = match state.sets.get(&key) {
                Some((ttl, values)) => format!(
                    "<ResourceRecordSet><Name>{}</Name><Type>{}</Type><TTL>{ttl}</TTL><ResourceRecords>{}</ResourceRecords></ResourceRecordSet>",
                    key.0,
                    key.1,
                    values
                        .iter()
                        .map(|v| format!(
                            "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                            xml_escape(v)
                        ))
                        .collect::<String>()
                ),
                None => String::new(),
            };
            resp(
                200,
                format!(
                    "<?xml version=\"1.0\"?>\n<ListResourceRecordSetsResponse xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ResourceRecordSets>{sets}</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>100</MaxItems></ListResourceRecordSetsResponse>"
                ),
            )
        }
        "POST" => {
            let action = between(&req.body, "<Action>", "</Action>");
            let name = between(&req.body, "<Name>", "</Name>");
            let rtype = between(&req.body, "<Type>", "</Type>");
            let ttl = between(&req.body, "<TTL>", "</TTL>");
            let values: Vec<String> = between(&req.body, "<Value>", "</Value>")
                .into_iter()
                .map(xml_unescape)
                .collect();
            let ([action], [name], [rtype], [ttl]) = (&action[..], &name[..], &rtype[..], &ttl[..])
            else {
                return resp(
                    400,
                    "<ErrorResponse><Error><Code>MalformedInput</Code></Error></ErrorResponse>",
                );
            };
            let key = ((*name).to_owned(), (*rtype).to_owned());
            let ttl: u32 = ttl.parse().unwrap_or(0);
            match *action {
                "UPSERT" => {
                    state.sets.insert(key, (ttl, values));
                }
                "DELETE" if state.sets.get(&key) == Some(&(ttl, values.clone())) => {
                    state.sets.remove(&key);
                }
                _ => {
                    return resp(
                        400,
                        "<ErrorResponse>\n  <Error>\n    <Code>InvalidChangeBatch</Code>\n    <Message>Tried to delete resource record set but it was not found</Message>\n  </Error>\n</ErrorResponse>",
                    );
                }
            }
            resp(
                200,
                "<ChangeResourceRecordSetsResponse><ChangeInfo><Id>/change/C1</Id><Status>PENDING</Status></ChangeInfo></ChangeResourceRecordSetsResponse>",
            )
        }
        _ => resp(405, ""),
    }
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The configuration at `dir/mxkeys.toml`, parsed as mxkeys would.
fn config(dir: &Path, text: &str) -> Config {
    let path = dir.join("mxkeys.toml");
    std::fs::write(&path, format!("state_dir = \"state\"\n{text}")).unwrap();
    Config::parse(
        &path,
        &std::fs::read_to_string(&path).unwrap(),
        &Host::current(),
    )
    .unwrap()
}

fn route53_provider(dir: &Path, mock: &Mock) -> Provider {
    std::fs::write(dir.join("aws-key-id"), format!("{KEY_ID}\n")).unwrap();
    std::fs::write(dir.join("aws-secret"), format!("{SECRET}\n")).unwrap();
    let cfg = config(
        dir,
        &format!(
            "[dns.aws]\ntype = \"route53\"\nzone = \"example.com\"\naccess_key_id_file = \"aws-key-id\"\nsecret_access_key_file = \"aws-secret\"\nhosted_zone_id = \"Z0MXKEYS\"\nendpoint = \"{}\"\n",
            mock.url
        ),
    );
    Provider::build(&cfg.dns["aws"]).unwrap()
}

fn txt(v: &str) -> RData {
    RData::Txt(v.to_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The body the crate sends: quick-xml escapes `&`, `<` and `>` in text.
fn change_body(comment: &str, action: &str, name: &str, ttl: u32, values: &[&str]) -> String {
    let records: String = values
        .iter()
        .map(|v| {
            format!(
                "<ResourceRecord><Value>{}</Value></ResourceRecord>",
                v.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ChangeResourceRecordSetsRequest xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><ChangeBatch><Comment>{comment}</Comment><Changes><Change><Action>{action}</Action><ResourceRecordSet><Name>{name}</Name><Type>TXT</Type><TTL>{ttl}</TTL><ResourceRecords>{records}</ResourceRecords></ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>"
    )
}

#[test]
fn route53_adds_and_removes_single_values_and_keeps_the_hand_made_ones() {
    let rt = runtime();
    rt.block_on(async {
        let mock = Mock::start(route53).await;
        let dir = dir();
        let dns = route53_provider(dir.path(), &mock);
        let name = "_acme-challenge.mail.example.com";
        let fqdn = "_acme-challenge.mail.example.com.";
        let list = format!("GET {R53_PREFIX}?name=_acme-challenge.mail.example.com.&type=TXT");
        mock.put(fqdn, "TXT", 300, &["\"hand-made\""]);

        // add: the value joins the set, the hand-made one stays.
        assert_eq!(
            dns.add(name, 60, &[txt("token-a")]).await,
            Ok(Change::Changed)
        );
        let seen = mock.requests();
        let lines: Vec<String> = seen.iter().map(Req::line).collect();
        assert_eq!(
            lines,
            [list.clone(), list.clone(), format!("POST {R53_PREFIX}")]
        );
        assert_eq!(
            seen[2].body,
            change_body(
                &format!("Add to TXT RRSet for {fqdn}"),
                "UPSERT",
                fqdn,
                300,
                &["\"hand-made\"", "\"token-a\""]
            )
        );
        for r in &seen {
            let auth = &r.headers["authorization"];
            assert!(auth.contains(&format!("Credential={KEY_ID}/")), "{auth}");
            assert!(
                !format!("{r:?}").contains(SECRET),
                "the secret went out: {r:?}"
            );
        }
        assert_eq!(
            dns.read(name, RecordType::Txt).await.unwrap(),
            [txt("hand-made"), txt("token-a")]
        );
        mock.requests();

        // The same value again: read, nothing written.
        assert_eq!(
            dns.add(name, 60, &[txt("token-a")]).await,
            Ok(Change::Unchanged)
        );
        assert!(mock.requests().iter().all(|r| r.method == "GET"));

        // remove_values: only ours goes.
        assert_eq!(
            dns.remove_values(name, &[txt("token-a"), txt("not-there")])
                .await,
            Ok(Change::Changed)
        );
        let posts: Vec<Req> = mock
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(posts.len(), 1);
        assert_eq!(
            posts[0].body,
            change_body(
                &format!("Remove from TXT RRSet for {fqdn}"),
                "UPSERT",
                fqdn,
                300,
                &["\"hand-made\""]
            )
        );
        assert_eq!(
            mock.set(fqdn, "TXT"),
            Some((300, vec!["\"hand-made\"".to_owned()]))
        );

        // replace: the new value first, then the old one out; never empty.
        let dkim = "mx1r._domainkey.example.com";
        let dkim_fqdn = "mx1r._domainkey.example.com.";
        let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(400));
        assert_eq!(
            dns.replace(dkim, 3600, &[txt("v=DKIM1; p=old")]).await,
            Ok(Change::Changed)
        );
        mock.watch(dkim_fqdn, "TXT");
        mock.requests();
        assert_eq!(
            dns.replace(dkim, 3600, &[txt(&long)]).await,
            Ok(Change::Changed)
        );
        let posts: Vec<Req> = mock
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(posts.len(), 2, "{posts:?}");
        assert!(
            posts[0].body.contains("p=old") && posts[0].body.contains("AAAA"),
            "{}",
            posts[0].body
        );
        assert!(!posts[1].body.contains("p=old"), "{}", posts[1].body);
        // More than 255 bytes: split into character-strings by the crate.
        let (_, values) = mock.set(dkim_fqdn, "TXT").unwrap();
        assert_eq!(values.len(), 1);
        assert!(values[0].contains("\" \""), "not split: {}", values[0]);
        assert_eq!(dns.read(dkim, RecordType::Txt).await.unwrap(), [txt(&long)]);
        assert_eq!(
            dns.replace(dkim, 3600, &[txt(&long)]).await,
            Ok(Change::Unchanged)
        );

        assert_eq!(
            mock.violations(),
            Vec::<String>::new(),
            "the set was empty in between"
        );

        // remove: the whole set, by DELETE naming it exactly.
        mock.requests();
        assert_eq!(dns.remove(dkim, RecordType::Txt).await, Ok(Change::Changed));
        let posts: Vec<Req> = mock
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect();
        assert_eq!(posts.len(), 1);
        assert!(
            posts[0].body.contains("<Action>DELETE</Action>"),
            "{}",
            posts[0].body
        );
        assert_eq!(mock.set(dkim_fqdn, "TXT"), None);
        assert_eq!(
            dns.remove(dkim, RecordType::Txt).await,
            Ok(Change::Unchanged)
        );
    });
}

#[test]
fn a_route53_error_answer_is_one_line_naming_the_error() {
    let rt = runtime();
    rt.block_on(async {
        let mock = Mock::start(route53).await;
        let dir = dir();
        let dns = route53_provider(dir.path(), &mock);
        mock.answer_next(vec![
            resp(200, "<ListResourceRecordSetsResponse><ResourceRecordSets></ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>100</MaxItems></ListResourceRecordSetsResponse>"),
            resp(200, "<ListResourceRecordSetsResponse><ResourceRecordSets></ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>100</MaxItems></ListResourceRecordSetsResponse>"),
            resp(400, "<ErrorResponse>\n  <Error>\n    <Type>Sender</Type>\n    <Code>InvalidChangeBatch</Code>\n    <Message>RRSet of type TXT with DNS name x. is not permitted</Message>\n  </Error>\n</ErrorResponse>\n"),
        ]);
        let e = dns.add("x.example.com", 60, &[txt("v")]).await.unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        let shown = e.to_string();
        assert!(shown.starts_with("route53: "), "{shown}");
        assert!(shown.contains("InvalidChangeBatch") && shown.contains("is not permitted"), "{shown}");
        assert!(!shown.contains('\n') && !shown.contains(SECRET), "{shown}");

        // Refused credentials: Auth.
        mock.answer_next(vec![resp(401, "")]);
        let e = dns.read("x.example.com", RecordType::Txt).await.unwrap_err();
        assert!(matches!(e, Error::Auth(_)), "{e:?}");
    });
}

#[test]
fn route53_throttling_is_waited_out_and_when_it_lasts_reported_as_rate_limited() {
    let rt = runtime();
    rt.block_on(async {
        let mock = Mock::start(route53).await;
        let dir = dir();
        let dns = route53_provider(dir.path(), &mock);
        let throttled = || {
            resp(
                400,
                "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>",
            )
        };
        // Once: the request is sent again and the write goes through.
        mock.answer_next(vec![throttled()]);
        assert_eq!(dns.add("t.example.com", 60, &[txt("v")]).await, Ok(Change::Changed));
        assert_eq!(mock.set("t.example.com.", "TXT").map(|s| s.1), Some(vec!["\"v\"".to_owned()]));
        // Lasting: RateLimited, in one line.
        mock.answer_next((0..8).map(|_| throttled()).collect());
        let e = dns.add("t.example.com", 60, &[txt("w")]).await.unwrap_err();
        assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
        assert!(e.to_string().contains("Throttling") && !e.to_string().contains('\n'), "{e}");
        mock.answer_next(Vec::new());
    });
}

const PDNS_ZONE: &str = "/api/v1/servers/localhost/zones/example.com.";

/// PowerDNS's HTTP API as far as the crate uses it: the zone with its
/// rrsets (filtered by `rrset_name`/`rrset_type` when asked), and PATCH
/// of REPLACE/DELETE changes. Every request must carry the API key.
fn pdns(req: &Req, state: &mut State) -> Resp {
    if req.headers.get("x-api-key").map(String::as_str) != Some(PDNS_KEY) {
        return resp(401, "{\"error\": \"Unauthorized\"}");
    }
    if req.path != PDNS_ZONE {
        return resp(404, "{\"error\": \"Could not find domain\"}");
    }
    match req.method.as_str() {
        "GET" => {
            let query: BTreeMap<&str, &str> = req
                .query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .collect();
            let rrsets: Vec<serde_json::Value> = state
                .sets
                .iter()
                .filter(|((n, t), _)| {
                    query.get("rrset_name").is_none_or(|q| *q == n.as_str())
                        && query.get("rrset_type").is_none_or(|q| *q == t.as_str())
                })
                .map(|((n, t), (ttl, values))| {
                    serde_json::json!({
                        "name": n, "type": t, "ttl": ttl,
                        "records": values.iter().map(|v| serde_json::json!({"content": v, "disabled": false})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            resp(
                200,
                serde_json::json!({"name": "example.com.", "rrsets": rrsets}).to_string(),
            )
        }
        "PATCH" => {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            for rrset in body["rrsets"].as_array().cloned().unwrap_or_default() {
                let key = (
                    rrset["name"].as_str().unwrap_or_default().to_owned(),
                    rrset["type"].as_str().unwrap_or_default().to_owned(),
                );
                match rrset["changetype"].as_str() {
                    Some("REPLACE") => {
                        let values = rrset["records"]
                            .as_array()
                            .map(|r| {
                                r.iter()
                                    .filter_map(|v| v["content"].as_str().map(str::to_owned))
                                    .collect()
                            })
                            .unwrap_or_default();
                        state
                            .sets
                            .insert(key, (rrset["ttl"].as_u64().unwrap_or(0) as u32, values));
                    }
                    Some("DELETE") => {
                        state.sets.remove(&key);
                    }
                    _ => return resp(422, "{\"error\": \"Unknown changetype\"}"),
                }
            }
            resp(204, "")
        }
        _ => resp(405, ""),
    }
}

fn pdns_provider(dir: &Path, mock: &Mock) -> Provider {
    std::fs::write(dir.join("pdns.key"), PDNS_KEY).unwrap();
    let cfg = config(
        dir,
        &format!(
            "[dns.pdns]\ntype = \"pdns\"\nzone = \"example.com\"\napi_key_file = \"pdns.key\"\nendpoint = \"{}\"\n",
            mock.url
        ),
    );
    Provider::build(&cfg.dns["pdns"]).unwrap()
}

#[test]
fn powerdns_json_api_gets_exact_requests_keeps_other_values_and_reports_errors_and_rate_limits() {
    let rt = runtime();
    rt.block_on(async {
        let mock = Mock::start(pdns).await;
        let dir = dir();
        let dns = pdns_provider(dir.path(), &mock);
        let name = "_acme-challenge.example.com";
        mock.put("_acme-challenge.example.com.", "TXT", 120, &["\"other-host\""]);
        assert_eq!(dns.add(name, 60, &[txt("token-a")]).await, Ok(Change::Changed));
        let seen = mock.requests();
        let lines: Vec<String> = seen.iter().map(Req::line).collect();
        let filtered = format!(
            "GET {PDNS_ZONE}?rrset_name=_acme-challenge.example.com.&rrset_type=TXT&include_disabled=false"
        );
        assert_eq!(
            lines,
            [filtered.clone(), format!("GET {PDNS_ZONE}"), format!("PATCH {PDNS_ZONE}")],
        );
        let patch: serde_json::Value = serde_json::from_str(&seen[2].body).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"rrsets": [{
                "name": "_acme-challenge.example.com.", "type": "TXT", "changetype": "REPLACE", "ttl": 120,
                "records": [{"content": "\"other-host\"", "disabled": false}, {"content": "\"token-a\"", "disabled": false}],
            }]})
        );
        assert_eq!(
            dns.read(name, RecordType::Txt).await.unwrap(),
            [txt("other-host"), txt("token-a")]
        );
        assert_eq!(dns.remove_values(name, &[txt("token-a")]).await, Ok(Change::Changed));
        assert_eq!(
            mock.set("_acme-challenge.example.com.", "TXT"),
            Some((120, vec!["\"other-host\"".to_owned()]))
        );
        mock.requests();

        // An error answer: one line naming it.
        mock.answer_next(vec![resp(
            422,
            "{\n  \"error\": \"RRset _acme-challenge.example.com. IN TXT: Conflicts with pre-existing RRset\"\n}",
        )]);
        let e = dns.add(name, 60, &[txt("token-b")]).await.unwrap_err();
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        let shown = e.to_string();
        assert!(shown.starts_with("pdns: ") && shown.contains("HTTP 422") && shown.contains("Conflicts"), "{shown}");
        assert!(!shown.contains('\n') && !shown.contains(PDNS_KEY), "{shown}");

        // Rate limited once (Retry-After honoured): waited out.
        let limited = || Resp {
            status: 429,
            headers: vec![("retry-after", "1".to_owned())],
            body: "{\"error\": \"too many requests\"}".to_owned(),
        };
        mock.answer_next(vec![limited()]);
        assert_eq!(dns.add(name, 60, &[txt("token-c")]).await, Ok(Change::Changed));
        // Lasting: RateLimited.
        mock.answer_next((0..4).map(|_| limited()).collect());
        let e = dns.read(name, RecordType::Txt).await.unwrap_err();
        assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
        assert!(!e.to_string().contains(PDNS_KEY));
        // A wrong key: Auth.
        mock.answer_next(vec![resp(401, "")]);
        let e = dns.read(name, RecordType::Txt).await.unwrap_err();
        assert!(matches!(e, Error::Auth(_)), "{e:?}");
    });
}

/// The table of `spec` for the no-network run: every credential from a
/// file holding a known token, required settings set.
fn table(spec: &mxkeys_providers::longtail::Spec, dir: &Path) -> String {
    let mut t = format!(
        "[dns.t-{0}]\ntype = \"{0}\"\nzone = \"example.com\"\n",
        spec.kind
    );
    for key in spec.secrets {
        let file = dir.join(format!("{}-{}", spec.kind, key.name));
        std::fs::write(&file, token(spec.kind, key.name)).unwrap();
        t.push_str(&format!("{}_file = \"{}\"\n", key.name, file.display()));
    }
    for key in spec.settings.iter().filter(|k| k.required) {
        let value = match (spec.kind, key.name) {
            ("ovh", "endpoint") => "ovh-eu",
            (_, "endpoint") => "http://192.0.2.10:8081",
            _ => "12345",
        };
        t.push_str(&format!("{} = \"{value}\"\n", key.name));
    }
    t
}

fn token(kind: &str, key: &str) -> String {
    format!("TOKEN-{kind}-{key}-do-not-show")
}

/// Runs mxkeys in a network namespace of its own: no network at all.
fn mxkeys(config: &Path, args: &[&str]) -> std::process::Output {
    let mut offline = Command::new("unshare");
    offline.arg("-n").arg(env!("CARGO_BIN_EXE_mxkeys"));
    super::dns::run_mxkeys(offline, config, args)
}

#[test]
fn every_other_type_reads_its_credentials_from_files_and_fails_in_one_line_without_a_network() {
    // unshare -n makes a network namespace: root, and util-linux.
    if !mxkeys_testsupport::servers::require(
        "every_other_type_reads_its_credentials_from_files_and_fails_in_one_line_without_a_network",
        &[&[("unshare", "util-linux")]],
    ) {
        return;
    }
    let dir = dir();
    let specs = mxkeys_providers::longtail::SPECS;
    let text: String = specs.iter().map(|s| table(s, dir.path())).collect();
    // Parsed as mxkeys parses it: every type, its credentials named.
    let cfg = config(dir.path(), &text);
    for spec in specs {
        let table = &cfg.dns[&format!("t-{}", spec.kind)];
        assert_eq!(table.zone.as_deref(), Some("example.com"));
    }
    let path: PathBuf = dir.path().join("mxkeys.toml");
    let runs: Vec<_> = specs
        .iter()
        .map(|spec| {
            let path = path.clone();
            let kind = spec.kind;
            std::thread::spawn(move || {
                (kind, mxkeys(&path, &["dns", "test", &format!("t-{kind}")]))
            })
        })
        .collect();
    for run in runs {
        let (kind, out) = run.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind}: {stdout}{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{kind}: one error line expected:\n{stderr}"
        );
        let line = errors[0];
        assert!(
            line.contains(&format!(
                "dns test t-{kind}: writing _mxkeys-probe.example.com: "
            )),
            "{kind}: {line}"
        );
        assert!(
            line.contains(kind),
            "{kind}: the line names the provider type: {line}"
        );
        let spec = mxkeys_providers::longtail::spec(kind).unwrap();
        for key in spec.secrets {
            let t = token(kind, key.name);
            assert!(
                !stdout.contains(&t) && !stderr.contains(&t),
                "{kind}: credential shown:\n{stdout}{stderr}"
            );
        }
    }
}

#[test]
fn a_missing_credential_file_is_one_error_naming_the_table_and_the_file() {
    let dir = dir();
    let cfg_text = "[dns.hz]\ntype = \"hetzner\"\nzone = \"example.com\"\napi_token_file = \"no-such-token\"\n";
    let path = dir.path().join("mxkeys.toml");
    std::fs::write(&path, format!("state_dir = \"state\"\n{cfg_text}")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mxkeys"))
        .arg("--config")
        .arg(&path)
        .args(["dns", "test", "hz"])
        .env_remove("MXKEYS_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let missing = dir.path().join("no-such-token");
    let line = stderr
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("[dns.hz]")
            && line.contains("api_token")
            && line.contains(&missing.display().to_string()),
        "{stderr}"
    );
    // A credential written in the table itself is refused, the value never echoed.
    let text = "[dns.hz]\ntype = \"hetzner\"\napi_token = \"pasted-SECRET-value\"\n";
    std::fs::write(&path, format!("state_dir = \"state\"\n{text}")).unwrap();
    let e = Config::parse(
        &path,
        &format!("state_dir = \"state\"\n{text}"),
        &Host::current(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("api_token") && e.contains("api_token_file"),
        "{e}"
    );
    assert!(!e.contains("pasted-SECRET-value"), "{e}");
}

const HETZNER_TOKEN: &str = "hetzner-SECRET-never-shown-5555";
/// Where the Hetzner stand-in listens: api.hetzner.cloud in the hosts file
/// of the mount namespace mxkeys runs in.
const HETZNER_ADDR: &str = "127.0.21.1";

/// Hetzner's Cloud DNS API (v1) as far as the crate uses it: list rrsets,
/// and the add_records, change_ttl and remove_records actions.
fn hetzner(req: &Req, state: &mut State) -> Resp {
    if req.headers.get("authorization") != Some(&format!("Bearer {HETZNER_TOKEN}")) {
        return resp(401, "{\"error\": {\"code\": \"unauthorized\"}}");
    }
    let action = "{\"action\": {\"id\": 1, \"command\": \"x\", \"status\": \"success\"}}";
    let Some(rest) = req.path.strip_prefix("/v1/zones/example.com/rrsets") else {
        return resp(404, "{\"error\": {\"code\": \"not_found\"}}");
    };
    match (
        req.method.as_str(),
        rest.split('/').collect::<Vec<_>>().as_slice(),
    ) {
        ("GET", [""]) => {
            let query: BTreeMap<&str, &str> = req
                .query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .collect();
            let key = (
                query.get("name").copied().unwrap_or_default().to_owned(),
                query.get("type").copied().unwrap_or_default().to_owned(),
            );
            let rrsets: Vec<serde_json::Value> = state
                .sets
                .get(&key)
                .map(|(ttl, values)| {
                    serde_json::json!({
                        "id": format!("{}/{}", key.0, key.1), "name": key.0, "type": key.1, "ttl": ttl,
                        "records": values.iter().map(|v| serde_json::json!({"value": v, "comment": null})).collect::<Vec<_>>(),
                    })
                })
                .into_iter()
                .collect();
            resp(
                200,
                serde_json::json!({"rrsets": rrsets, "meta": {"pagination": {"page": 1, "per_page": 50, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": rrsets.len()}}}).to_string(),
            )
        }
        ("POST", ["", name, rtype, "actions", verb]) => {
            let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
            let key = ((*name).to_owned(), (*rtype).to_owned());
            let values: Vec<String> = body["records"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v["value"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            match *verb {
                "add_records" => {
                    let set = state.sets.entry(key).or_insert((3600, Vec::new()));
                    for v in values {
                        if !set.1.contains(&v) {
                            set.1.push(v);
                        }
                    }
                }
                "change_ttl" => {
                    if let Some(set) = state.sets.get_mut(&key) {
                        set.0 = body["ttl"].as_u64().unwrap_or(0) as u32;
                    }
                }
                "remove_records" => {
                    if let Some(set) = state.sets.get_mut(&key) {
                        set.1.retain(|v| !values.contains(v));
                        if set.1.is_empty() {
                            state.sets.remove(&key);
                        }
                    }
                }
                _ => return resp(422, "{\"error\": {\"code\": \"invalid_input\"}}"),
            }
            resp(201, action)
        }
        _ => resp(405, ""),
    }
}

#[test]
fn hetzner_through_its_real_host_name_gets_exact_requests_from_mxkeys_dns_test() {
    let test = "hetzner_through_its_real_host_name_gets_exact_requests_from_mxkeys_dns_test";
    if !mxkeys_testsupport::servers::require(
        test,
        &[&[("unshare", "util-linux"), ("mount", "mount")]],
    ) {
        return;
    }
    let dir = dir();
    // A CA made now, and api.hetzner.cloud's certificate from it.
    let (ca_cert, ca) = mxkeys_testsupport::server_ca("mxkeys test Hetzner CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["api.hetzner.cloud".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{HETZNER_ADDR} api.hetzner.cloud\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("hetzner.token"), HETZNER_TOKEN).unwrap();
    let silent = mxkeys_testsupport::ports::free_port();
    let path = dir.path().join("mxkeys.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"state\"\n[dns.hz]\ntype = \"hetzner\"\nzone = \"example.com\"\napi_token_file = \"hetzner.token\"\nnameservers = [\"127.0.0.1:{silent}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"1s\"\n"
        ),
    )
    .unwrap();
    let rt = runtime();
    let mock = rt.block_on(async {
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((HETZNER_ADDR, 443)).await.unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, acceptor) = (shared.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = serve(tls, state, hetzner).await;
                    }
                });
            }
        });
        Mock {
            url: format!("https://{HETZNER_ADDR}"),
            state,
        }
    });
    let script = format!(
        "mount --bind {} /etc/hosts && exec {} --config {} dns test hz",
        hosts.display(),
        env!("CARGO_BIN_EXE_mxkeys"),
        path.display()
    );
    let run = || {
        Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("SSL_CERT_FILE", &ca_file)
            .env_remove("MXKEYS_CONFIG")
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Written, not seen (no DNS server serves it here), removed.
    assert!(stdout.contains("removed"), "{stdout}{stderr}");
    assert!(
        stderr.contains("propagation of _mxkeys-probe.example.com"),
        "{stdout}{stderr}"
    );
    assert!(!stdout.contains(HETZNER_TOKEN) && !stderr.contains(HETZNER_TOKEN));
    let seen = mock.requests();
    let lines: Vec<String> = seen.iter().map(Req::line).collect();
    let list =
        "GET /v1/zones/example.com/rrsets?name=_mxkeys-probe&type=TXT&per_page=50".to_owned();
    let action =
        |verb: &str| format!("POST /v1/zones/example.com/rrsets/_mxkeys-probe/TXT/actions/{verb}");
    assert_eq!(
        lines,
        [
            list.clone(),
            action("add_records"),
            action("change_ttl"),
            list,
            action("remove_records")
        ],
        "{stdout}{stderr}"
    );
    let probe = stdout
        .lines()
        .next()
        .and_then(|l| l.split_once(" TXT "))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let probe: String = serde_json::from_str(&probe).unwrap_or_default();
    let json = |r: &Req| serde_json::from_str::<serde_json::Value>(&r.body).unwrap();
    assert_eq!(
        json(&seen[1]),
        serde_json::json!({"records": [{"value": format!("\"{probe}\"")}]})
    );
    assert_eq!(json(&seen[2]), serde_json::json!({"ttl": 60}));
    assert_eq!(
        json(&seen[4]),
        serde_json::json!({"records": [{"value": format!("\"{probe}\"")}]})
    );
    // Removed again, whole.
    assert_eq!(mock.set("_mxkeys-probe", "TXT"), None);

    // An error answer, then a rate limit that lasts (Retry-After honoured
    // by the crate, three times): one ERROR line each, the right kind.
    for (answers, needle) in [
        (
            vec![resp(
                422,
                "{\n  \"error\": {\"code\": \"invalid_input\", \"message\": \"invalid input in field 'name'\"}\n}",
            )],
            "writing _mxkeys-probe.example.com: hetzner: HTTP 422: { \"error\": {\"code\": \"invalid_input\"",
        ),
        (
            (0..4)
                .map(|_| Resp {
                    status: 429,
                    headers: vec![("retry-after", "1".to_owned())],
                    body: "{\"error\": {\"code\": \"rate_limit_exceeded\"}}".to_owned(),
                })
                .collect(),
            "writing _mxkeys-probe.example.com: rate limited: hetzner: HTTP 429",
        ),
    ] {
        mock.answer_next(answers);
        let out = run();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(needle), "{needle}: {stderr}");
        assert!(!stderr.contains(HETZNER_TOKEN));
    }
}

//! `status --html` and `GET /status`: one self-contained HTML page from a
//! gathered [`Status`] (pure: no I/O, no clock — "now" is `status.at`).
//!
//! The rule: every value is escaped where it lands (text or attribute,
//! inside the SVG too), the page has no `<script>` and names no external
//! resource (no `src`, `href` or `url(`), and every state is shown by
//! colour AND by text, so it reads without JavaScript, without colour and
//! under `content-security-policy: default-src 'none'`.
//!
//! The DOM is a contract (the headless-browser tests rely on it):
//! `header#summary[data-ok][data-expiring][data-broken]` (slot counts:
//! `expiring` counts `expiring` and `critical`, `broken` counts `expired`
//! and `missing`),
//! `section#targets > article.target[data-target][data-state]` holding
//! `[data-field=names|issuer|key-type|days-left|not-after|sha256|source|
//! last-reload|last-verification|dane-gate|problem]`, `section#dkim >
//! article.dkim-domain[data-domain]` with `tr[data-selector][data-state]`
//! and one `svg.timeline` with a `g[data-selector]` per key,
//! `section#acme tr[data-source]` with `[data-field=next-renewal]`,
//! `section#mta-sts tr[data-domain]`, `section#daemon`.

use super::{
    AcmeStatus, DkimDomainStatus, DkimKeyStatus, DkimStatus, MtaStsStatus, ServiceEventStatus,
    Status, TargetStatus, Time,
};

/// A certificate with fewer whole days left than this is `expiring`: the
/// threshold of the shipped alert rule `MxkeysCertificateExpiringSoon`
/// (warning at 14 days).
pub const EXPIRING_DAYS: i64 = 14;

/// A certificate with fewer whole days left than this is `critical`: the
/// shipped alert rule `MxkeysCertificateExpiryCritical` (3 days).
pub const CRITICAL_DAYS: i64 = 3;

/// What a target slot holds, at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// A certificate with at least [`EXPIRING_DAYS`] days left.
    Ok,
    /// Fewer than [`EXPIRING_DAYS`] days left.
    Expiring,
    /// Fewer than [`CRITICAL_DAYS`] days left.
    Critical,
    /// Past its not-after.
    Expired,
    /// No readable certificate.
    Missing,
}

impl TargetState {
    /// The slot's state from what status gathered (pure).
    pub fn of(t: &TargetStatus) -> TargetState {
        match &t.installed {
            None => TargetState::Missing,
            Some(i) if i.expired || i.days_left < 0 => TargetState::Expired,
            Some(i) if i.days_left < CRITICAL_DAYS => TargetState::Critical,
            Some(i) if i.days_left < EXPIRING_DAYS => TargetState::Expiring,
            Some(_) => TargetState::Ok,
        }
    }

    /// The word the page shows, and the `data-state` value.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Ok => "ok",
            TargetState::Expiring => "expiring",
            TargetState::Critical => "critical",
            TargetState::Expired => "expired",
            TargetState::Missing => "missing",
        }
    }
}

/// `s` escaped for HTML text and double- or single-quoted attributes
/// (and SVG `<title>`/`<text>`, which parse the same in HTML).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
:root{color-scheme:light;--ok:#1a7f37;--warn:#9a6700;--crit:#c2410c;--bad:#cf222e;--none:#6e7781;\
--line:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,\"Segoe UI\",sans-serif;color:#1f2328;background:#fff}
main{max-width:1100px;margin:0 auto;padding:0 16px 32px}
h1{font-size:22px;margin:0}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:16px;margin:0 0 8px}
code,.mono,[data-field=sha256]{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
[data-field=sha256]{word-break:break-all}
#summary{display:flex;flex-wrap:wrap;gap:10px 18px;align-items:center;padding:14px 16px;\
background:var(--bg);border-bottom:1px solid var(--line);margin-bottom:8px}
#summary .at{color:#57606a;font-size:13px;margin-right:auto}
.pill{display:inline-block;padding:3px 10px;border-radius:12px;border:1px solid currentColor;font-weight:600;font-size:14px}
.s-ok{color:var(--ok)}.s-expiring,.s-warn{color:var(--warn)}.s-critical{color:var(--crit)}
.s-expired,.s-bad{color:var(--bad)}.s-missing{color:var(--bad)}.s-none{color:var(--none)}
.targets{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
article.target{border:1px solid var(--line);border-left:6px solid var(--none);border-radius:6px;padding:10px 12px}
article.target[data-state=ok]{border-left-color:var(--ok)}
article.target[data-state=expiring]{border-left-color:var(--warn)}
article.target[data-state=critical]{border-left-color:var(--crit)}
article.target[data-state=expired],article.target[data-state=missing]{border-left-color:var(--bad);background:#fff8f8}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0}
dt{color:#57606a}dd{margin:0;min-width:0;overflow-wrap:anywhere}
.err{color:var(--bad)}
table{border-collapse:collapse;width:100%;margin:6px 0 10px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:break-word}
th{font-size:13px;color:#57606a;font-weight:600;white-space:nowrap}
td .pill,td[data-field=algorithm]{white-space:nowrap}
article.dkim-domain{margin-bottom:18px}
svg.timeline{width:100%;height:auto;display:block;border:1px solid var(--line);border-radius:6px;background:#fff}
svg .lbl{font-size:12px;fill:#1f2328}svg .tick{font-size:11px;fill:#57606a}
svg .grid{stroke:#eaeef2;stroke-width:1}svg .now{stroke:var(--bad);stroke-width:2}
svg .nowlbl{font-size:11px;fill:var(--bad);font-weight:600}
.p-generated{fill:#afb8c1;background:#afb8c1}.p-published{fill:#54aeff;background:#54aeff}
.p-verified{fill:#0969da;background:#0969da}.p-active{fill:#1a7f37;background:#1a7f37}
.p-draining{fill:#d4a72c;background:#d4a72c}.p-revoked{fill:#cf222e;fill-opacity:.55;background:#e68a90}
.p-next{fill:#fff;fill-opacity:.6;stroke:#57606a;stroke-width:1.2;stroke-dasharray:4 3}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:13px;color:#57606a;margin:6px 0 0;padding:0;list-style:none}
.legend i{display:inline-block;width:14px;height:10px;margin-right:5px;vertical-align:-1px;border-radius:2px}
.legend .p-next{border:1px dashed #57606a;background:#fff}
.muted{color:#57606a}
time{white-space:nowrap}
";

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let mut out = String::with_capacity(16 * 1024);
    out.push_str(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>mxkeys status</title>\n<style>\n",
    );
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n");
    summary(&mut out, status);
    out.push_str("<main>\n");
    targets(&mut out, status);
    if let Some(d) = &status.dkim {
        dkim(&mut out, d, status.at);
    }
    acme(&mut out, &status.acme);
    if let Some(m) = &status.mta_sts {
        mta_sts(&mut out, m);
    }
    daemon(&mut out, status);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

/// `<time datetime="T">T</time>`.
fn time(t: Time) -> String {
    let s = esc(&t.to_string());
    format!("<time datetime=\"{s}\">{s}</time>")
}

/// An RFC 3339 string already formatted by status, as `<time>`.
fn time_str(s: &str) -> String {
    let s = esc(s);
    format!("<time datetime=\"{s}\">{s}</time>")
}

/// "just now", "3 days ago", "in 5 hours": from `at` to `now`, roughly
/// (no seconds, so two pages a moment apart read the same).
fn relative(at: i64, now: i64) -> String {
    let d = at.saturating_sub(now);
    let a = d.unsigned_abs();
    if a < 60 {
        return "just now".to_owned();
    }
    let (n, unit) = if a < 2 * 3600 {
        (a / 60, "minute")
    } else if a < 2 * 86_400 {
        (a / 3600, "hour")
    } else {
        (a / 86_400, "day")
    };
    let n = count(usize::try_from(n).unwrap_or(usize::MAX), unit);
    if d >= 0 {
        format!("in {n}")
    } else {
        format!("{n} ago")
    }
}

fn summary(out: &mut String, status: &Status) {
    let states: Vec<TargetState> = status.targets.iter().map(TargetState::of).collect();
    let ok = states.iter().filter(|s| **s == TargetState::Ok).count();
    let expiring = states
        .iter()
        .filter(|s| matches!(s, TargetState::Expiring | TargetState::Critical))
        .count();
    let critical = states
        .iter()
        .filter(|s| **s == TargetState::Critical)
        .count();
    let broken = states.len() - ok - expiring;
    out.push_str(&format!(
        "<header id=\"summary\" data-ok=\"{ok}\" data-expiring=\"{expiring}\" data-broken=\"{broken}\">\n\
         <h1>mxkeys status</h1>\n<span class=\"at\">as of {}</span>\n",
        time(status.at)
    ));
    let class = if broken > 0 {
        "s-bad"
    } else if critical > 0 {
        "s-critical"
    } else if expiring > 0 {
        "s-warn"
    } else {
        "s-ok"
    };
    let mut parts = vec![format!("{ok} ok")];
    if expiring > 0 {
        parts.push(if critical > 0 {
            format!("{expiring} expiring ({critical} critical)")
        } else {
            format!("{expiring} expiring")
        });
    }
    if broken > 0 {
        parts.push(format!("{broken} broken"));
    }
    out.push_str(&format!(
        "<span class=\"pill {class}\" data-part=\"targets\">targets: {}</span>\n",
        parts.join(", ")
    ));
    if let Some(d) = &status.dkim {
        let (class, text) = dkim_summary(d);
        out.push_str(&format!(
            "<span class=\"pill {class}\" data-part=\"dkim\">DKIM: {}</span>\n",
            esc(&text)
        ));
    }
    if !status.acme.is_empty() {
        let failing = status.acme.iter().filter(|a| a.failures > 0).count();
        let (class, text) = if failing == 0 {
            (
                "s-ok",
                format!("{}, no failure", count(status.acme.len(), "source")),
            )
        } else {
            let worst = status.acme.iter().map(|a| a.failures).max().unwrap_or(0);
            (
                if worst >= 2 { "s-bad" } else { "s-warn" },
                format!("{failing} of {} sources failing", status.acme.len()),
            )
        };
        out.push_str(&format!(
            "<span class=\"pill {class}\" data-part=\"acme\">ACME: {text}</span>\n"
        ));
    }
    let (class, text) = match &status.daemon {
        Some(d) if d.running && d.record.last_reconcile_ok => ("s-ok", "running".to_owned()),
        Some(d) if d.running => ("s-warn", "running, last reconcile with errors".to_owned()),
        Some(_) => ("s-bad", "not running".to_owned()),
        None => ("s-none", "no record".to_owned()),
    };
    out.push_str(&format!(
        "<span class=\"pill {class}\" data-part=\"daemon\">daemon: {text}</span>\n</header>\n"
    ));
}

/// The DKIM pill: domains, keys signing, and whether any domain has no
/// active key or the book could not be read.
fn dkim_summary(d: &DkimStatus) -> (&'static str, String) {
    if let Some(p) = &d.problem {
        return ("s-bad", format!("cannot read the keys: {p}"));
    }
    let active = d
        .domains
        .iter()
        .flat_map(|x| &x.keys)
        .filter(|k| k.state == "active")
        .count();
    let unsigned: Vec<&str> = d
        .domains
        .iter()
        .filter(|x| !x.keys.iter().any(|k| k.state == "active"))
        .map(|x| x.domain.as_str())
        .collect();
    let rotating = d
        .domains
        .iter()
        .flat_map(|x| &x.keys)
        .filter(|k| matches!(k.state.as_str(), "generated" | "published" | "draining"))
        .count();
    let mut text = format!(
        "{}, {}",
        count(d.domains.len(), "domain"),
        count(active, "active key")
    );
    if rotating > 0 {
        text.push_str(&format!(", {rotating} in rotation"));
    }
    if unsigned.is_empty() {
        return ("s-ok", text);
    }
    text.push_str(&format!(", no active key for {}", unsigned.join(", ")));
    // A first key on its way (generated or published) is a start, not a
    // breakage; a domain with none is unsigned.
    let on_its_way = d.domains.iter().all(|x| {
        x.keys.iter().any(|k| k.state == "active")
            || x.keys
                .iter()
                .any(|k| matches!(k.state.as_str(), "generated" | "published"))
    });
    (if on_its_way { "s-warn" } else { "s-bad" }, text)
}

/// "1 domain", "2 domains".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn field(out: &mut String, name: &str, label: &str, value_html: &str) {
    out.push_str(&format!(
        "<dt>{label}</dt><dd data-field=\"{name}\">{value_html}</dd>\n"
    ));
}

fn service_event(e: Option<&ServiceEventStatus>) -> String {
    match e {
        None => "<span class=\"muted\">none recorded</span>".to_owned(),
        Some(e) if e.ok => format!("{} <span class=\"s-ok\">ok</span>", time(e.at)),
        Some(e) => format!(
            "{} <span class=\"err\">failed: {}</span>",
            time(e.at),
            esc(e.error.as_deref().unwrap_or("unknown error"))
        ),
    }
}

fn targets(out: &mut String, status: &Status) {
    out.push_str("<section id=\"targets\">\n<h2>Certificates</h2>\n");
    if status.targets.is_empty() {
        out.push_str("<p class=\"muted\">No target configured.</p>\n");
    }
    out.push_str("<div class=\"targets\">\n");
    for t in &status.targets {
        let state = TargetState::of(t);
        out.push_str(&format!(
            "<article class=\"target\" data-target=\"{}\" data-state=\"{}\">\n\
             <h3>{} <span class=\"pill s-{}\">{}</span></h3>\n<dl>\n",
            esc(&t.name),
            state.as_str(),
            esc(&t.name),
            state.as_str(),
            state.as_str()
        ));
        field(out, "domains", "wanted", &esc(&t.domains.join(", ")));
        if let Some(i) = &t.installed {
            field(out, "names", "names", &esc(&i.sans.join(", ")));
            field(
                out,
                "issuer",
                "issuer",
                &i.issuer
                    .as_deref()
                    .map_or_else(|| "<span class=\"muted\">unknown</span>".to_owned(), esc),
            );
            field(out, "key-type", "key", &esc(&i.key_type));
            out.push_str(&format!(
                "<dt>days left</dt><dd><span data-field=\"days-left\" class=\"s-{}\">{}</span> <span class=\"s-{}\">({})</span></dd>\n",
                state.as_str(),
                i.days_left,
                state.as_str(),
                state.as_str()
            ));
            field(out, "not-after", "not after", &time_str(&i.not_after));
            field(out, "sha256", "SHA-256", &esc(&i.sha256));
            field(
                out,
                "source",
                "source",
                &i.source.as_deref().map_or_else(
                    || "<span class=\"muted\">not installed by mxkeys</span>".to_owned(),
                    esc,
                ),
            );
        }
        field(
            out,
            "last-reload",
            "last reload",
            &service_event(t.last_reload.as_ref()),
        );
        field(
            out,
            "last-verification",
            "last check",
            &service_event(t.last_verification.as_ref()),
        );
        match &t.dane_gate {
            Some(Some(g)) => {
                let mut v = format!("<strong>{}</strong>", esc(&g.state));
                if let Some(r) = &g.reason {
                    v.push_str(&format!(": {}", esc(r)));
                }
                if let Some(u) = &g.until {
                    v.push_str(&format!(" (until {})", time_str(u)));
                }
                v.push_str(&format!(
                    " <span class=\"muted\">decided {}</span>",
                    time_str(&g.decided_at)
                ));
                field(out, "dane-gate", "DANE gate", &v);
            }
            Some(None) => field(out, "dane-gate", "DANE gate", "not decided yet"),
            None => {}
        }
        if t.installed.is_none() || t.problem.is_some() {
            field(
                out,
                "problem",
                "problem",
                &format!(
                    "<span class=\"err\">{}</span>",
                    esc(t.problem.as_deref().unwrap_or("no certificate installed"))
                ),
            );
        }
        out.push_str("</dl>\n</article>\n");
    }
    out.push_str("</div>\n</section>\n");
}

/// When a key entered its present state: the last event of that name
/// (`verified` does not count as a state), else its last event.
fn since(k: &DkimKeyStatus) -> Option<Time> {
    k.events
        .iter()
        .rev()
        .find(|e| e.what == k.state)
        .or_else(|| k.events.iter().rev().find(|e| e.what != "verified"))
        .map(|e| e.at)
}

fn dkim(out: &mut String, d: &DkimStatus, now: Time) {
    out.push_str("<section id=\"dkim\">\n<h2>DKIM keys</h2>\n");
    if let Some(p) = &d.problem {
        out.push_str(&format!(
            "<p class=\"err\" data-field=\"problem\">cannot read the keys: {}</p>\n",
            esc(p)
        ));
    }
    if d.domains.is_empty() && d.problem.is_none() {
        out.push_str("<p class=\"muted\">No key yet.</p>\n");
    }
    for dom in &d.domains {
        dkim_domain(out, dom, now);
    }
    out.push_str("</section>\n");
}

fn key_state_class(state: &str) -> &'static str {
    match state {
        "active" => "s-ok",
        "generated" | "published" => "s-warn",
        "draining" => "s-warn",
        "revoked" => "s-none",
        _ => "s-none",
    }
}

fn dkim_domain(out: &mut String, dom: &DkimDomainStatus, now: Time) {
    if dom.keys.is_empty() {
        out.push_str(&format!(
            "<article class=\"dkim-domain\" data-domain=\"{}\">\n<h3>{}</h3>\n\
             <p class=\"err\" data-field=\"problem\">no key yet: mxkeys signs nothing for this domain</p>\n</article>\n",
            esc(&dom.domain),
            esc(&dom.domain)
        ));
        return;
    }
    out.push_str(&format!(
        "<article class=\"dkim-domain\" data-domain=\"{}\">\n<h3>{}</h3>\n\
         <table>\n<thead><tr><th>selector</th><th>algorithm</th><th>state</th><th>since</th><th>next</th><th>when</th></tr></thead>\n<tbody>\n",
        esc(&dom.domain),
        esc(&dom.domain)
    ));
    for k in &dom.keys {
        let (next, when) = match &k.next {
            Some(n) => (
                esc(&n.what),
                format!(
                    "{} <span class=\"muted\">({})</span>",
                    time(n.at),
                    relative(n.at.0, now.0)
                ),
            ),
            None => (
                "<span class=\"muted\">none scheduled</span>".to_owned(),
                String::new(),
            ),
        };
        out.push_str(&format!(
            "<tr data-selector=\"{}\" data-state=\"{}\"><td data-field=\"selector\" class=\"mono\" title=\"{}\">{}</td>\
             <td data-field=\"algorithm\">{}</td><td data-field=\"state\"><span class=\"pill {}\">{}</span></td>\
             <td data-field=\"since\">{}</td><td data-field=\"next\">{}</td><td data-field=\"next-at\">{}</td></tr>\n",
            esc(&k.selector),
            esc(&k.state),
            esc(&k.record_name),
            esc(&k.selector),
            esc(k.algorithm),
            key_state_class(&k.state),
            esc(&k.state),
            since(k).map_or_else(String::new, time),
            next,
            when
        ));
    }
    out.push_str("</tbody>\n</table>\n");
    timeline(out, &dom.keys, now);
    out.push_str(
        "<ul class=\"legend\"><li><i class=\"p-generated\"></i>generated</li>\
         <li><i class=\"p-published\"></i>published</li><li><i class=\"p-verified\"></i>verified, waiting to activate</li>\
         <li><i class=\"p-active\"></i>active (signing)</li><li><i class=\"p-draining\"></i>draining</li>\
         <li><i class=\"p-revoked\"></i>revoked</li><li><i class=\"p-next\"></i>until the next transition</li></ul>\n</article>\n",
    );
}

/// The time axis of a timeline: `start..end` (Unix seconds) drawn from
/// `x0` to `x1` (SVG user units). Pure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    pub start: i64,
    pub end: i64,
    pub x0: f64,
    pub x1: f64,
}

/// The axis never reaches further than this from now, so the months a
/// key signs do not squash the days its rotation takes (a 48 h lead, a
/// 7 d drain stay visible); what lies beyond is drawn to the edge, and
/// its dates are in the table and the hover text.
pub const AXIS_REACH: i64 = 60 * 86_400;
/// The shortest axis (a book created minutes ago still gets a scale).
pub const AXIS_MIN_SPAN: i64 = 86_400;

impl Axis {
    /// The axis covering `now` and every time in `times`, each clamped to
    /// [`AXIS_REACH`] around now, at least [`AXIS_MIN_SPAN`] long (centred
    /// on what it covers), with a margin of 1/20 of the span on each side.
    pub fn covering(now: i64, times: impl IntoIterator<Item = i64>, x0: f64, x1: f64) -> Axis {
        let lo_limit = now.saturating_sub(AXIS_REACH);
        let hi_limit = now.saturating_add(AXIS_REACH);
        let (mut start, mut end) = (now, now);
        for t in times {
            let t = t.clamp(lo_limit, hi_limit);
            start = start.min(t);
            end = end.max(t);
        }
        let span = end - start;
        if span < AXIS_MIN_SPAN {
            let grow = AXIS_MIN_SPAN - span;
            start -= grow / 2;
            end += grow - grow / 2;
        }
        let pad = (end - start) / 20;
        Axis {
            start: start - pad,
            end: end + pad,
            x0,
            x1,
        }
    }

    /// Where `t` is drawn, clamped to the axis.
    pub fn x(&self, t: i64) -> f64 {
        let span = (self.end - self.start).max(1) as f64;
        let f = ((t.clamp(self.start, self.end) - self.start) as f64) / span;
        self.x0 + f * (self.x1 - self.x0)
    }

    /// The distance between date ticks: the smallest of 1 h, 6 h, 1 d,
    /// 7 d, and 1, 3, 6 or 12 months (counted as 30, 91, 182 and 365
    /// days) that gives at most 8 ticks.
    pub fn tick_step(&self) -> i64 {
        const STEPS: [i64; 8] = [
            3600,
            6 * 3600,
            86_400,
            7 * 86_400,
            30 * 86_400,
            91 * 86_400,
            182 * 86_400,
            365 * 86_400,
        ];
        let span = self.end - self.start;
        STEPS
            .into_iter()
            .find(|s| span / s <= 8)
            .unwrap_or(365 * 86_400)
    }

    /// The ticks inside the axis: every multiple of a step under a month
    /// (from the epoch, so whole UTC hours and days), else the first day
    /// of every 1, 3, 6 or 12th month (UTC).
    pub fn ticks(&self) -> Vec<i64> {
        let step = self.tick_step();
        let mut out = Vec::new();
        if step < 30 * 86_400 {
            let mut t = self.start.div_euclid(step) * step;
            if t < self.start {
                t += step;
            }
            while t <= self.end && out.len() < 64 {
                out.push(t);
                t += step;
            }
            return out;
        }
        let every = step / (30 * 86_400); // 1, 3, 6, 12
        let Ok(first) = time::OffsetDateTime::from_unix_timestamp(self.start) else {
            return out;
        };
        // Months since year 0, from the month holding `start`.
        let mut m = i64::from(first.year()) * 12 + i64::from(u8::from(first.month())) - 1;
        while out.len() < 64 {
            let t = month_start(m);
            let Some(t) = t else { break };
            if t > self.end {
                break;
            }
            if t >= self.start && m % every == 0 {
                out.push(t);
            }
            m += 1;
        }
        out
    }

    /// A tick's label: the UTC date, with the hour when ticks are less
    /// than a day apart.
    pub fn tick_label(&self, t: i64) -> String {
        let s = crate::rfc3339(t);
        let n = if self.tick_step() < 86_400 { 16 } else { 10 };
        s.get(..n).map_or(s.clone(), |p| p.replace('T', " "))
    }
}

/// The Unix time of the first day of month `m` (months since year 0,
/// January = 0), UTC.
fn month_start(m: i64) -> Option<i64> {
    let year = i32::try_from(m.div_euclid(12)).ok()?;
    let month = time::Month::try_from(u8::try_from(m.rem_euclid(12) + 1).ok()?).ok()?;
    let date = time::Date::from_calendar_date(year, month, 1).ok()?;
    Some(date.midnight().assume_utc().unix_timestamp())
}

const SVG_WIDTH: f64 = 960.0;
const LABEL_WIDTH: f64 = 150.0;
const ROW: f64 = 26.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 26.0;
const BAR: f64 = 16.0;

fn fmt_x(x: f64) -> String {
    format!("{x:.1}")
}

/// One row per key: a bar per state period from its events, a dashed
/// segment to its next transition, a "now" line, date ticks.
fn timeline(out: &mut String, keys: &[DkimKeyStatus], now: Time) {
    let times = keys.iter().flat_map(|k| {
        k.events
            .iter()
            .map(|e| e.at.0)
            .chain(k.next.iter().map(|n| n.at.0))
    });
    let axis = Axis::covering(now.0, times, LABEL_WIDTH + 10.0, SVG_WIDTH - 14.0);
    let height = TOP + ROW * keys.len() as f64 + BOTTOM;
    out.push_str(&format!(
        "<svg class=\"timeline\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"key timeline\">\n\
         <title>DKIM key timeline</title>\n",
        w = SVG_WIDTH,
        h = fmt_x(height)
    ));
    let axis_bottom = TOP + ROW * keys.len() as f64;
    for t in axis.ticks() {
        let x = fmt_x(axis.x(t));
        out.push_str(&format!(
            "<line class=\"grid\" x1=\"{x}\" x2=\"{x}\" y1=\"{}\" y2=\"{}\"/><text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            fmt_x(TOP - 4.0),
            fmt_x(axis_bottom),
            fmt_x(axis_bottom + 16.0),
            esc(&axis.tick_label(t))
        ));
    }
    for (row, k) in keys.iter().enumerate() {
        let y = TOP + ROW * row as f64 + (ROW - BAR) / 2.0;
        out.push_str(&format!(
            "<g data-selector=\"{}\" data-state=\"{}\"><title>{} ({}, {})</title>\n\
             <text class=\"lbl\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            esc(&k.selector),
            esc(&k.state),
            esc(&k.record_name),
            esc(k.algorithm),
            esc(&k.state),
            fmt_x(LABEL_WIDTH),
            fmt_x(y + BAR - 3.0),
            esc(&k.selector)
        ));
        for (i, e) in k.events.iter().enumerate() {
            let until = k.events.get(i + 1).map_or(now.0.max(e.at.0), |n| n.at.0);
            let (x, end) = (axis.x(e.at.0), axis.x(until));
            let class = match e.what.as_str() {
                w
                @ ("generated" | "published" | "verified" | "active" | "draining" | "revoked") => w,
                _ => "generated",
            };
            out.push_str(&format!(
                "<rect class=\"p-{class}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{} {} from {} to {}</title></rect>\n",
                fmt_x(x),
                fmt_x(y),
                fmt_x((end - x).max(2.0)),
                fmt_x(BAR),
                esc(&k.selector),
                esc(&e.what),
                esc(&e.at.to_string()),
                if k.events.get(i + 1).is_some() {
                    esc(&Time(until).to_string())
                } else {
                    "now".to_owned()
                }
            ));
        }
        if let Some(n) = &k.next {
            let from = k.events.last().map_or(now.0, |e| e.at.0.max(now.0));
            let x = axis.x(from);
            let end = axis.x(n.at.0.max(from));
            out.push_str(&format!(
                "<rect class=\"p-next\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{} next: {} at {}</title></rect>\n",
                fmt_x(x),
                fmt_x(y),
                fmt_x((end - x).max(3.0)),
                fmt_x(BAR),
                esc(&k.selector),
                esc(&n.what),
                esc(&n.at.to_string())
            ));
        }
        out.push_str("</g>\n");
    }
    let x = fmt_x(axis.x(now.0));
    out.push_str(&format!(
        "<line class=\"now\" x1=\"{x}\" x2=\"{x}\" y1=\"{}\" y2=\"{}\"><title>now: {}</title></line>\
         <text class=\"nowlbl\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">now</text>\n</svg>\n",
        fmt_x(TOP - 6.0),
        fmt_x(axis_bottom),
        esc(&now.to_string()),
        fmt_x(TOP - 9.0)
    ));
}

fn opt(s: Option<&str>, none: &str) -> String {
    s.map_or_else(
        || format!("<span class=\"muted\">{}</span>", esc(none)),
        esc,
    )
}

fn acme(out: &mut String, sources: &[AcmeStatus]) {
    if sources.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"acme\">\n<h2>ACME sources</h2>\n<table>\n<thead><tr><th>source</th><th>names</th>\
         <th>holds</th><th>until</th><th>next renewal</th><th>failures</th><th>last error</th></tr></thead>\n<tbody>\n",
    );
    for a in sources {
        let class = match a.failures {
            0 => "",
            1 => " class=\"s-warn\"",
            _ => " class=\"s-bad\"",
        };
        out.push_str(&format!(
            "<tr data-source=\"{}\"><td data-field=\"name\">{}</td><td data-field=\"names\">{}</td>\
             <td data-field=\"sha256\">{}</td><td data-field=\"not-after\">{}</td>\
             <td data-field=\"next-renewal\">{}</td><td data-field=\"failures\"{class}>{}</td>\
             <td data-field=\"last-error\">{}</td></tr>\n",
            esc(&a.name),
            esc(&a.name),
            esc(&a.domains.join(", ")),
            opt(a.sha256.as_deref(), "nothing yet"),
            a.not_after.as_deref().map_or_else(String::new, time_str),
            a.next_renewal
                .as_deref()
                .map_or_else(|| "<span class=\"muted\">none</span>".to_owned(), time_str),
            a.failures,
            a.last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(
                    "<span class=\"err\">{}</span>",
                    esc(e)
                ))
        ));
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn mta_sts(out: &mut String, m: &MtaStsStatus) {
    out.push_str("<section id=\"mta-sts\">\n<h2>MTA-STS</h2>\n");
    if !m.domains.is_empty() {
        out.push_str(
            "<table>\n<thead><tr><th>domain</th><th>live</th><th>published</th><th>policy</th>\
             <th>next step</th><th>refused</th></tr></thead>\n<tbody>\n",
        );
        for d in &m.domains {
            let live = match (&d.live_id, &d.live_mode) {
                (Some(id), Some(mode)) => format!("{} ({})", esc(id), esc(mode)),
                _ => "<span class=\"muted\">none</span>".to_owned(),
            };
            out.push_str(&format!(
                "<tr data-domain=\"{}\" data-in-step=\"{}\"><td>{}{}</td><td data-field=\"live\">{}</td>\
                 <td data-field=\"published\">{}</td><td data-field=\"policy\">{} ({})</td>\
                 <td data-field=\"step\" class=\"{}\">{}</td><td data-field=\"refused\">{}</td></tr>\n",
                esc(&d.domain),
                d.in_step,
                esc(&d.domain),
                if d.disabled { " (disable asked)" } else { "" },
                live,
                opt(d.published_id.as_deref(), "none"),
                esc(&d.policy_id),
                esc(&d.mode),
                if d.in_step { "s-ok" } else { "s-warn" },
                esc(&d.step),
                d.refused
                    .as_deref()
                    .map_or_else(String::new, |r| format!("<span class=\"err\">{}</span>", esc(r)))
            ));
        }
        out.push_str("</tbody>\n</table>\n");
    }
    match &m.tls_rpt {
        Some(orgs) if orgs.is_empty() => {
            out.push_str("<p id=\"tls-rpt\">TLS-RPT: no reports received.</p>\n");
        }
        Some(orgs) => {
            out.push_str(
                "<table id=\"tls-rpt\">\n<thead><tr><th>TLS-RPT organization</th><th>successful sessions</th>\
                 <th>failed sessions</th></tr></thead>\n<tbody>\n",
            );
            for o in orgs {
                out.push_str(&format!(
                    "<tr data-organization=\"{}\"><td>{}</td><td>{}</td><td{}>{}</td></tr>\n",
                    esc(&o.organization),
                    esc(&o.organization),
                    o.successful,
                    if o.failure > 0 {
                        " class=\"s-bad\""
                    } else {
                        ""
                    },
                    o.failure
                ));
            }
            out.push_str("</tbody>\n</table>\n");
        }
        None => {}
    }
    out.push_str("</section>\n");
}

fn daemon(out: &mut String, status: &Status) {
    let now = status.at.0;
    out.push_str("<section id=\"daemon\">\n<h2>Daemon</h2>\n");
    match &status.daemon {
        Some(d) => {
            let r = &d.record;
            out.push_str(&format!(
                "<p data-field=\"daemon\">pid {} <span class=\"{}\">{}</span>, started {}; {}, the last at {} ({}): <span class=\"{}\">{}</span></p>\n",
                r.pid,
                if d.running { "s-ok" } else { "s-bad" },
                if d.running { "running" } else { "not running" },
                time(Time(r.started_at)),
                count(usize::try_from(r.reconciles).unwrap_or(usize::MAX), "reconcile"),
                time(Time(r.updated_at)),
                relative(r.updated_at, now),
                if r.last_reconcile_ok { "s-ok" } else { "s-bad" },
                if r.last_reconcile_ok { "ok" } else { "with errors" }
            ));
            if !r.watching.is_empty() {
                out.push_str(&format!(
                    "<p class=\"muted\">watching {}</p>\n",
                    esc(&r.watching.join(", "))
                ));
            }
        }
        None => out.push_str(
            "<p data-field=\"daemon\" class=\"muted\">No daemon recorded (is <code>mxkeys run</code> running?)</p>\n",
        ),
    }
    if let Some(run) = &status.last_run {
        out.push_str(&format!(
            "<p data-field=\"last-run\">last {}: {} ({}): <span class=\"{}\">{}</span></p>\n",
            esc(&run.command),
            time(Time(run.finished_at)),
            relative(run.finished_at, now),
            if run.ok { "s-ok" } else { "s-bad" },
            if run.ok { "ok" } else { "with errors" }
        ));
        if !run.errors.is_empty() {
            out.push_str("<ul class=\"err\" data-field=\"errors\">\n");
            for e in &run.errors {
                out.push_str(&format!("<li>{}</li>\n", esc(e)));
            }
            out.push_str("</ul>\n");
        }
    }
    if let Some(c) = &status.cluster {
        let (class, text) = match &c.health {
            Some(h) if h.reachable => ("s-ok", c.to_text()),
            Some(_) => ("s-bad", c.to_text()),
            None => ("s-none", c.to_text()),
        };
        out.push_str(&format!(
            "<p id=\"cluster\" class=\"{class}\">{}</p>\n",
            esc(text.trim_end()).replace('\n', "<br>")
        ));
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    use super::super::{
        AcmeStatus, ClusterStatus, DaemonStatus, DkimDomainStatus, DkimKeyStatus, DkimStatus,
        GateStatus, InstalledCert, KeyEvent, MtaStsDomainStatus, MtaStsStatus, ServiceEventStatus,
        Status, TargetStatus, Time, TlsRptTotal,
    };
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const SHA: &str = "3f1a9c0e7b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a";

    fn installed(days_left: i64) -> InstalledCert {
        InstalledCert {
            sans: vec!["mx.example.test".to_owned(), "smtp.example.test".to_owned()],
            issuer: Some("Pebble Intermediate CA 1a2b".to_owned()),
            key_type: "ecdsa-p256".to_owned(),
            not_before: crate::rfc3339(NOW - 30 * DAY),
            not_after: crate::rfc3339(NOW + days_left * DAY + 3600),
            days_left,
            expired: days_left < 0,
            sha256: SHA.to_owned(),
            source: Some("acme:mx".to_owned()),
        }
    }

    fn target(name: &str, cert: Option<InstalledCert>) -> TargetStatus {
        TargetStatus {
            name: name.to_owned(),
            target: name.to_owned(),
            domains: vec!["mx.example.test".to_owned()],
            last_reload: Some(ServiceEventStatus {
                at: Time(NOW - 600),
                ok: true,
                error: None,
            }),
            last_verification: Some(ServiceEventStatus {
                at: Time(NOW - 590),
                ok: false,
                error: Some("postfix presents 0000 on 127.0.0.1:25".to_owned()),
            }),
            problem: cert
                .is_none()
                .then(|| "no certificate at /etc/postfix/fullchain.pem".to_owned()),
            installed: cert,
            dane_gate: None,
        }
    }

    fn event(what: &str, at: i64) -> KeyEvent {
        KeyEvent {
            what: what.to_owned(),
            at: Time(at),
        }
    }

    fn key(
        selector: &str,
        state: &str,
        events: Vec<KeyEvent>,
        next: Option<KeyEvent>,
    ) -> DkimKeyStatus {
        DkimKeyStatus {
            selector: selector.to_owned(),
            record_name: format!("{selector}._domainkey.example.test"),
            algorithm: "rsa-sha256",
            state: state.to_owned(),
            events,
            next,
        }
    }

    /// A rotation in progress: one key draining, one active, one published.
    fn rotation() -> DkimStatus {
        DkimStatus {
            domains: vec![DkimDomainStatus {
                domain: "example.test".to_owned(),
                keys: vec![
                    key(
                        "mx2026a",
                        "draining",
                        vec![
                            event("generated", NOW - 200 * DAY),
                            event("published", NOW - 200 * DAY + 60),
                            event("verified", NOW - 199 * DAY),
                            event("active", NOW - 196 * DAY),
                            event("draining", NOW - 2 * DAY),
                        ],
                        Some(event("revoke", NOW + 5 * DAY)),
                    ),
                    key(
                        "mx2026b",
                        "active",
                        vec![
                            event("generated", NOW - 10 * DAY),
                            event("published", NOW - 10 * DAY + 60),
                            event("verified", NOW - 9 * DAY),
                            event("active", NOW - 2 * DAY),
                        ],
                        Some(event("start a successor", NOW + 178 * DAY)),
                    ),
                    key(
                        "mx2026c",
                        "published",
                        vec![
                            event("generated", NOW - 3600),
                            event("published", NOW - 3500),
                        ],
                        Some(event("verify on every authoritative server", NOW - 3500)),
                    ),
                ],
            }],
            problem: None,
        }
    }

    fn status(targets: Vec<TargetStatus>) -> Status {
        Status {
            at: Time(NOW),
            targets,
            last_run: Some(crate::state::Run {
                command: "run".to_owned(),
                finished_at: NOW - 300,
                ok: false,
                changed_targets: vec![],
                errors: vec!["target imap: reload `doveadm reload`: exit 1".to_owned()],
            }),
            daemon: Some(DaemonStatus {
                record: crate::state::Daemon {
                    pid: 4242,
                    started_at: NOW - 7 * DAY,
                    updated_at: NOW - 300,
                    reconciles: 812,
                    last_reconcile_ok: true,
                    watching: vec!["/etc/traefik/acme.json".to_owned()],
                },
                running: true,
            }),
            acme: vec![AcmeStatus {
                name: "mx".to_owned(),
                domains: vec!["mx.example.test".to_owned()],
                sha256: Some(SHA.to_owned()),
                not_after: Some(crate::rfc3339(NOW + 60 * DAY)),
                next_renewal: Some(crate::rfc3339(NOW + 30 * DAY)),
                failures: 1,
                last_error: Some("newOrder: rateLimited".to_owned()),
            }],
            mta_sts: Some(MtaStsStatus {
                domains: vec![MtaStsDomainStatus {
                    domain: "example.test".to_owned(),
                    live_id: Some("20261130T000000".to_owned()),
                    live_mode: Some("testing".to_owned()),
                    published_id: Some("20261130T000000".to_owned()),
                    disabled: false,
                    policy_id: "20261130T000000".to_owned(),
                    mode: "testing".to_owned(),
                    step: "in step: policy served and published everywhere".to_owned(),
                    in_step: true,
                    refused: None,
                }],
                tls_rpt: Some(vec![TlsRptTotal {
                    organization: "google.com".to_owned(),
                    successful: 12,
                    failure: 3,
                }]),
            }),
            cluster: Some(ClusterStatus {
                host_id: Some("mx1".to_owned()),
                health: None,
                problem: None,
            }),
            dkim: Some(rotation()),
        }
    }

    /// The opening tag of the element with `attr` (e.g. `data-target="mail"`).
    fn element_with<'a>(page: &'a str, attr: &str) -> &'a str {
        let at = page
            .find(attr)
            .unwrap_or_else(|| panic!("no {attr} in\n{page}"));
        let open = page[..at].rfind('<').unwrap();
        let close = at + page[at..].find('>').unwrap();
        &page[open..=close]
    }

    /// The text of the first element carrying `data-field="NAME"` after
    /// `from`, tags stripped.
    fn field_text(page: &str, from: usize, name: &str) -> String {
        let attr = format!("data-field=\"{name}\"");
        let at = from
            + page[from..]
                .find(&attr)
                .unwrap_or_else(|| panic!("no {attr}"));
        let start = at + page[at..].find('>').unwrap() + 1;
        let tag = page[..at].rfind('<').unwrap();
        let tag_name: String = page[tag + 1..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let end = start + page[start..].find(&format!("</{tag_name}>")).unwrap();
        let mut text = String::new();
        let mut in_tag = false;
        for c in page[start..end].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        text
    }

    #[test]
    fn each_slot_is_ok_expiring_critical_expired_or_missing_by_the_alert_rules_thresholds() {
        // (days left or no certificate, state)
        let rows: [(Option<i64>, &str); 9] = [
            (Some(200), "ok"),
            (Some(EXPIRING_DAYS), "ok"),
            (Some(EXPIRING_DAYS - 1), "expiring"),
            (Some(CRITICAL_DAYS), "expiring"),
            (Some(CRITICAL_DAYS - 1), "critical"),
            (Some(0), "critical"),
            (Some(-1), "expired"),
            (Some(-40), "expired"),
            (None, "missing"),
        ];
        for (days, want) in rows {
            let t = target("mail", days.map(installed));
            assert_eq!(TargetState::of(&t).as_str(), want, "{days:?}");
            let page = render(&status(vec![t]));
            let article = element_with(&page, "data-target=\"mail\"");
            assert!(
                article.contains(&format!("data-state=\"{want}\"")),
                "{days:?}: {article}"
            );
            // The state is also written out, not only coloured.
            assert!(
                page.contains(&format!("<span class=\"pill s-{want}\">{want}</span>")),
                "{days:?}"
            );
            if let Some(days) = days {
                let from = page.find("data-target=\"mail\"").unwrap();
                assert_eq!(field_text(&page, from, "days-left"), days.to_string());
            } else {
                assert!(!page.contains("data-field=\"days-left\""));
                let from = page.find("data-target=\"mail\"").unwrap();
                assert_eq!(
                    field_text(&page, from, "problem"),
                    "no certificate at /etc/postfix/fullchain.pem"
                );
            }
        }
    }

    #[test]
    fn a_slot_shows_names_issuer_key_dates_fingerprint_source_reload_check_and_dane_gate() {
        let mut t = target("mail", Some(installed(60)));
        t.dane_gate = Some(Some(GateStatus {
            state: "waiting".to_owned(),
            sha256: Some(SHA.to_owned()),
            until: Some(crate::rfc3339(NOW + 3600)),
            reason: Some("TLSA 3 1 1 for the new key not seen on ns2 yet".to_owned()),
            decided_at: crate::rfc3339(NOW - 60),
        }));
        let page = render(&status(vec![t, target("imap", None)]));
        let from = page.find("data-target=\"mail\"").unwrap();
        let want = [
            ("names", "mx.example.test, smtp.example.test".to_owned()),
            ("issuer", "Pebble Intermediate CA 1a2b".to_owned()),
            ("key-type", "ecdsa-p256".to_owned()),
            ("days-left", "60".to_owned()),
            ("not-after", crate::rfc3339(NOW + 60 * DAY + 3600)),
            ("sha256", SHA.to_owned()),
            ("source", "acme:mx".to_owned()),
            ("last-reload", format!("{} ok", crate::rfc3339(NOW - 600))),
            (
                "last-verification",
                format!(
                    "{} failed: postfix presents 0000 on 127.0.0.1:25",
                    crate::rfc3339(NOW - 590)
                ),
            ),
            (
                "dane-gate",
                format!(
                    "waiting: TLSA 3 1 1 for the new key not seen on ns2 yet (until {}) decided {}",
                    crate::rfc3339(NOW + 3600),
                    crate::rfc3339(NOW - 60)
                ),
            ),
        ];
        for (name, text) in want {
            assert_eq!(field_text(&page, from, name), text, "{name}");
        }
        // The healthy slot has no problem field; the missing one has no
        // certificate fields.
        let imap = page.find("data-target=\"imap\"").unwrap();
        assert!(!page[from..imap].contains("data-field=\"problem\""));
        let imap_end = imap + page[imap..].find("</article>").unwrap();
        assert!(!page[imap..imap_end].contains("data-field=\"sha256\""));
        assert!(page[imap..imap_end].contains("data-field=\"problem\""));
    }

    #[test]
    fn the_summary_counts_ok_expiring_and_broken_slots_and_names_dkim_acme_and_the_daemon() {
        let page = render(&status(vec![
            target("a", Some(installed(60))),
            target("b", Some(installed(20))),
            target("c", Some(installed(10))),
            target("d", Some(installed(1))),
            target("e", Some(installed(-2))),
            target("f", None),
        ]));
        let header = element_with(&page, "id=\"summary\"");
        assert!(
            header.contains("data-ok=\"2\" data-expiring=\"2\" data-broken=\"2\""),
            "{header}"
        );
        assert!(page.contains("targets: 2 ok, 2 expiring (1 critical), 2 broken"));
        assert!(page.contains("DKIM: 1 domain, 1 active key, 2 in rotation"));
        assert!(page.contains("ACME: 1 of 1 sources failing"));
        assert!(page.contains("daemon: running"));
        // The header comes first, before the sections.
        assert!(page.find("id=\"summary\"").unwrap() < page.find("<main>").unwrap());
    }

    #[test]
    fn relative_times_read_in_minutes_hours_or_days_and_never_in_seconds() {
        for (at, want) in [
            (NOW, "just now"),
            (NOW - 59, "just now"),
            (NOW + 59, "just now"),
            (NOW - 60, "1 minute ago"),
            (NOW - 300, "5 minutes ago"),
            (NOW + 3 * 3600, "in 3 hours"),
            (NOW - 47 * 3600, "47 hours ago"),
            (NOW + 178 * DAY, "in 178 days"),
        ] {
            assert_eq!(relative(at, NOW), want, "{}", at - NOW);
        }
    }

    #[test]
    fn a_configured_domain_without_a_key_says_it_is_not_signed_and_draws_no_timeline() {
        let mut s = status(vec![]);
        s.dkim = Some(rotation().with_domains(["example.test", "unsigned.test"]));
        let page = render(&s);
        let at = page
            .find("<article class=\"dkim-domain\" data-domain=\"unsigned.test\">")
            .unwrap();
        let article = &page[at..at + page[at..].find("</article>").unwrap()];
        assert!(
            article.contains("no key yet: mxkeys signs nothing for this domain"),
            "{article}"
        );
        assert!(!article.contains("<svg"), "{article}");
        assert_eq!(page.matches("<svg class=\"timeline\"").count(), 1);
        assert!(page.contains("no active key for unsigned.test"));
    }

    #[test]
    fn the_dkim_pill_is_red_only_for_an_unreadable_book_or_a_domain_with_no_key_signing_nor_coming()
    {
        let domain = |states: &[&str]| DkimDomainStatus {
            domain: "example.test".to_owned(),
            keys: states
                .iter()
                .enumerate()
                .map(|(i, s)| key(&format!("k{i}"), s, vec![event("generated", NOW)], None))
                .collect(),
        };
        // (states of the keys, or a problem; class, text)
        type Keys<'a> = Result<&'a [&'a str], &'a str>;
        let rows: [(Keys, &str, &str); 6] = [
            (Ok(&["active"]), "s-ok", "1 domain, 1 active key"),
            (
                Ok(&["revoked", "draining", "active", "published"]),
                "s-ok",
                "1 domain, 1 active key, 2 in rotation",
            ),
            (
                Ok(&["published"]),
                "s-warn",
                "1 domain, 0 active keys, 1 in rotation, no active key for example.test",
            ),
            (
                Ok(&["revoked", "draining"]),
                "s-bad",
                "1 domain, 0 active keys, 1 in rotation, no active key for example.test",
            ),
            (
                Ok(&[]),
                "s-bad",
                "1 domain, 0 active keys, no active key for example.test",
            ),
            (
                Err("dkim: key_dir /x: not a directory"),
                "s-bad",
                "cannot read the keys: dkim: key_dir /x: not a directory",
            ),
        ];
        for (keys, class, text) in rows {
            let d = match keys {
                Ok(states) => DkimStatus {
                    domains: vec![domain(states)],
                    problem: None,
                },
                Err(p) => DkimStatus {
                    domains: vec![],
                    problem: Some(p.to_owned()),
                },
            };
            assert_eq!(dkim_summary(&d), (class, text.to_owned()), "{keys:?}");
        }
    }

    #[test]
    fn the_dkim_timeline_draws_one_row_per_key_and_the_now_line_inside_the_axis() {
        let page = render(&status(vec![]));
        let svg_start = page.find("<svg class=\"timeline\"").unwrap();
        let svg = &page[svg_start..svg_start + page[svg_start..].find("</svg>").unwrap()];
        assert_eq!(svg.matches("<g data-selector=").count(), 3, "{svg}");
        for (selector, state) in [
            ("mx2026a", "draining"),
            ("mx2026b", "active"),
            ("mx2026c", "published"),
        ] {
            assert!(svg.contains(&format!(
                "<g data-selector=\"{selector}\" data-state=\"{state}\">"
            )));
            // And one table row per key, with its state.
            assert!(page.contains(&format!(
                "<tr data-selector=\"{selector}\" data-state=\"{state}\">"
            )));
        }
        // One bar per event of the draining key, one dashed next segment.
        let g = &svg[svg.find("<g data-selector=\"mx2026a\"").unwrap()..];
        let g = &g[..g.find("</g>").unwrap()];
        assert_eq!(g.matches("<rect class=\"p-").count(), 6, "{g}");
        assert_eq!(g.matches("<rect class=\"p-next\"").count(), 1, "{g}");
        assert!(g.contains(&format!(
            "mx2026a next: revoke at {}",
            crate::rfc3339(NOW + 5 * DAY)
        )));
        // The now line: where the axis puts now, strictly inside it.
        let line = element_with(svg, "class=\"now\"");
        let x: f64 = line
            .split("x1=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        let (x0, x1) = (LABEL_WIDTH + 10.0, SVG_WIDTH - 14.0);
        assert!(x > x0 && x < x1, "now at {x}, axis {x0}..{x1}");
        assert!(svg.contains("<title>now: "));
        // Date ticks, as dates.
        assert!(svg.matches("class=\"tick\"").count() >= 2, "{svg}");
    }

    #[test]
    fn the_axis_covers_now_and_every_time_with_a_margin_and_clamps_what_lies_beyond() {
        // (times, now, start, end)
        let rows: [(&[i64], i64, i64, i64); 5] = [
            // Ten days back to ten days on: 20 days, 1 day margin each side.
            (
                &[NOW - 10 * DAY, NOW + 10 * DAY],
                NOW,
                NOW - 11 * DAY,
                NOW + 11 * DAY,
            ),
            // Only now: one day centred on it, then the margin.
            (&[], NOW, NOW - DAY / 2 - DAY / 20, NOW + DAY / 2 + DAY / 20),
            // Everything in the past: the axis still reaches now.
            (&[NOW - 20 * DAY], NOW, NOW - 21 * DAY, NOW + DAY),
            // A key signing for months: its start is clamped to the reach.
            (
                &[NOW - 200 * DAY, NOW + 5 * DAY],
                NOW,
                NOW - AXIS_REACH - (AXIS_REACH + 5 * DAY) / 20,
                NOW + 5 * DAY + (AXIS_REACH + 5 * DAY) / 20,
            ),
            // A date far off is clamped to the reach.
            (
                &[NOW - DAY, i64::MAX],
                NOW,
                NOW - DAY - (AXIS_REACH + DAY) / 20,
                NOW + AXIS_REACH + (AXIS_REACH + DAY) / 20,
            ),
        ];
        for (times, now, start, end) in rows {
            let axis = Axis::covering(now, times.iter().copied(), 100.0, 900.0);
            assert_eq!((axis.start, axis.end), (start, end), "{times:?}");
            assert!((axis.x(axis.start) - 100.0).abs() < 1e-9);
            assert!((axis.x(axis.end) - 900.0).abs() < 1e-9);
            assert!((axis.x(i64::MIN) - 100.0).abs() < 1e-9, "clamped left");
            assert!((axis.x(i64::MAX) - 900.0).abs() < 1e-9, "clamped right");
            let n = axis.x(now);
            assert!(n > 100.0 && n < 900.0, "{times:?}: now at {n}");
        }
        // Half way is half way.
        let axis = Axis {
            start: 0,
            end: 10 * DAY,
            x0: 0.0,
            x1: 500.0,
        };
        assert!((axis.x(5 * DAY) - 250.0).abs() < 1e-9);
        // Ticks: at most 8, on whole hours/days or first days of months,
        // inside the axis. (span, step)
        for (span, step) in [
            (6 * 3600, 3600),
            (DAY, 6 * 3600),
            (8 * DAY, DAY),
            (20 * DAY, 7 * DAY),
            (200 * DAY, 30 * DAY),
            (400 * DAY, 91 * DAY),
            (1000 * DAY, 182 * DAY),
            (5 * 365 * DAY, 365 * DAY),
        ] {
            let axis = Axis {
                start: NOW,
                end: NOW + span,
                x0: 0.0,
                x1: 500.0,
            };
            assert_eq!(axis.tick_step(), step, "span {span}");
            let ticks = axis.ticks();
            assert!(ticks.len() >= 2 && ticks.len() <= 8, "{span}: {ticks:?}");
            assert!(ticks.iter().all(|t| *t >= axis.start && *t <= axis.end));
            if step < 30 * DAY {
                assert!(ticks.iter().all(|t| t % step == 0), "{span}: {ticks:?}");
            } else {
                for t in &ticks {
                    assert!(crate::rfc3339(*t).ends_with("-01T00:00:00Z"), "{span}: {t}");
                }
            }
        }
        let axis = Axis {
            start: 1_764_460_800, // 2025-11-30T00:00:00Z
            end: 1_764_460_800 + 8 * DAY,
            x0: 0.0,
            x1: 1.0,
        };
        assert_eq!(axis.ticks()[0], 1_764_460_800);
        assert_eq!(axis.tick_label(1_764_460_800), "2025-11-30");
    }

    /// A string with every character that matters, and a script.
    const EVIL: &str = "<script>alert(1)</script>\"'&x\" onmouseover=\"alert(2)";

    #[test]
    fn every_value_is_escaped_in_text_attributes_and_the_svg() {
        let mut cert = installed(5);
        cert.sans = vec![EVIL.to_owned()];
        cert.issuer = Some(EVIL.to_owned());
        cert.key_type = EVIL.to_owned();
        cert.not_after = EVIL.to_owned();
        cert.sha256 = EVIL.to_owned();
        cert.source = Some(EVIL.to_owned());
        let mut t = target(EVIL, Some(cert));
        t.domains = vec![EVIL.to_owned()];
        t.last_verification.as_mut().unwrap().error = Some(EVIL.to_owned());
        t.dane_gate = Some(Some(GateStatus {
            state: EVIL.to_owned(),
            sha256: Some(EVIL.to_owned()),
            until: Some(EVIL.to_owned()),
            reason: Some(EVIL.to_owned()),
            decided_at: EVIL.to_owned(),
        }));
        let mut missing = target("m", None);
        missing.problem = Some(EVIL.to_owned());
        let mut s = status(vec![t, missing]);
        let d = s.dkim.as_mut().unwrap();
        d.domains[0].domain = EVIL.to_owned();
        for k in &mut d.domains[0].keys {
            k.selector = format!("{EVIL}{}", k.selector);
            k.record_name = EVIL.to_owned();
            k.state = EVIL.to_owned();
            k.events.iter_mut().for_each(|e| e.what = EVIL.to_owned());
            k.next.iter_mut().for_each(|e| e.what = EVIL.to_owned());
        }
        d.problem = Some(EVIL.to_owned());
        let a = &mut s.acme[0];
        a.name = EVIL.to_owned();
        a.domains = vec![EVIL.to_owned()];
        a.sha256 = Some(EVIL.to_owned());
        a.not_after = Some(EVIL.to_owned());
        a.next_renewal = Some(EVIL.to_owned());
        a.last_error = Some(EVIL.to_owned());
        let m = s.mta_sts.as_mut().unwrap();
        let md = &mut m.domains[0];
        md.domain = EVIL.to_owned();
        md.live_id = Some(EVIL.to_owned());
        md.live_mode = Some(EVIL.to_owned());
        md.published_id = Some(EVIL.to_owned());
        md.policy_id = EVIL.to_owned();
        md.mode = EVIL.to_owned();
        md.step = EVIL.to_owned();
        md.refused = Some(EVIL.to_owned());
        m.tls_rpt.as_mut().unwrap()[0].organization = EVIL.to_owned();
        let run = s.last_run.as_mut().unwrap();
        run.command = EVIL.to_owned();
        run.errors = vec![EVIL.to_owned()];
        s.daemon.as_mut().unwrap().record.watching = vec![EVIL.to_owned()];
        s.cluster.as_mut().unwrap().host_id = Some(EVIL.to_owned());

        let page = render(&s);
        assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
        assert!(!page.contains("\" onmouseover="), "{page}");
        let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;x&quot; onmouseover=&quot;alert(2)";
        // In text and in attributes (data-target, data-domain, data-source,
        // data-selector, title), and inside the SVG's <title> and <text>.
        for context in [
            format!("data-target=\"{escaped}\""),
            format!("data-domain=\"{escaped}\""),
            format!("data-source=\"{escaped}\""),
            format!("data-selector=\"{escaped}mx2026a\""),
            format!(">{escaped}mx2026a</text>"),
            format!("<title>{escaped}mx2026a {escaped} from"),
            format!("<dd data-field=\"names\">{escaped}</dd>"),
            format!("<li>{escaped}</li>"),
        ] {
            assert!(page.contains(&context), "no {context} in\n{page}");
        }
        assert!(page.matches(escaped).count() > 40, "{page}");
        // Every tag on the page is one the renderer writes: nothing
        // injected a new element.
        const TAGS: &[&str] = &[
            "html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "span",
            "main", "section", "div", "article", "dl", "dt", "dd", "p", "table", "thead", "tbody",
            "tr", "th", "td", "time", "svg", "line", "text", "g", "rect", "ul", "li", "i",
            "strong", "code", "br",
        ];
        for (i, _) in page.match_indices('<') {
            let name: String = page[i + 1..]
                .trim_start_matches('/')
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            assert!(
                (name.is_empty() && page[i..].starts_with("<!doctype"))
                    || TAGS.contains(&name.as_str()),
                "unexpected tag {name:?} at {}",
                &page[i..(i + 40).min(page.len())]
            );
        }
    }

    /// `MXKEYS_HTML_SAMPLE=FILE cargo test --lib status::html::tests::sample`
    /// writes the fixture page (a rotation, a slot of each state) to FILE,
    /// to look at; without the variable it only renders.
    #[test]
    fn sample() {
        let page = render(&status(vec![
            target("mail", Some(installed(60))),
            target("imap/rsa", Some(installed(10))),
            target("imap/ecdsa", Some(installed(2))),
            target("old", Some(installed(-3))),
            target("submission", None),
        ]));
        if let Some(file) = std::env::var_os("MXKEYS_HTML_SAMPLE") {
            std::fs::write(file, &page).unwrap();
        }
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn the_page_is_self_contained_without_script_or_external_resource() {
        let page = render(&status(vec![
            target("mail", Some(installed(60))),
            target("imap", None),
        ]));
        assert!(page.starts_with("<!doctype html>\n"));
        for want in [
            "<meta charset=\"utf-8\">",
            "<meta name=\"viewport\"",
            "<title>mxkeys status</title>",
            "<main>",
            "<section id=\"targets\">",
            "<section id=\"dkim\">",
            "<article class=\"dkim-domain\" data-domain=\"example.test\">",
            "<section id=\"acme\">",
            "<tr data-source=\"mx\">",
            "data-field=\"next-renewal\"",
            "<section id=\"mta-sts\">",
            "<tr data-domain=\"example.test\"",
            "<section id=\"daemon\">",
            "target imap: reload `doveadm reload`: exit 1",
            "cluster: host mx1; no state recorded yet",
        ] {
            assert!(page.contains(want), "no {want} in\n{page}");
        }
        assert_eq!(page.matches("<style>").count(), 1);
        let lower = page.to_ascii_lowercase();
        for banned in [
            "<script", "src=", "href=", "url(", "@import", "http:", "https:", "<link", "<img",
            "<iframe", "<object", "<embed", " on",
        ] {
            let hit = if banned == " on" {
                // No event handler attribute (` onclick=`, ...).
                lower.match_indices(" on").any(|(i, _)| {
                    lower[i + 3..]
                        .chars()
                        .take_while(char::is_ascii_alphabetic)
                        .count()
                        > 0
                        && lower[i + 3..]
                            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                            .starts_with('=')
                })
            } else {
                lower.contains(banned)
            };
            assert!(!hit, "{banned} in the page");
        }
    }
}

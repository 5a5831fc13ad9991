//! Headless Chromium for the status page's tests: a screenshot of a page
//! and its DOM after the browser parsed it, each run bounded in time and
//! in a profile of its own (parallel runs share nothing); a PNG header
//! check; and [`Dom`], a reader of the DOM Chromium dumps, to look values
//! up by the page's `data-*` attributes.
//!
//! Chromium's `--dump-dom` prints the document as the browser's HTML
//! serializer writes it: every attribute as `name="value"` (`&`, `"` and
//! U+00A0 escaped), text with `&`, `<`, `>` and U+00A0 escaped, every
//! non-void element closed (SVG ones too), `<style>` and `<script>`
//! contents raw. [`Dom::parse`] reads that form, not arbitrary HTML: what
//! it sees is what the browser built, not what the page's source says.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt as _;

use crate::servers::Need;

/// The browser (Debian's `chromium`).
pub const CHROMIUM: &[Need] = &[("chromium", "chromium")];

/// How long one Chromium run may take before it is killed and the test
/// fails (it takes about a second here; the machine may be busy; a page
/// that opens a dialog never finishes).
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Window size of the screenshots, in CSS pixels.
pub const WINDOW: (u32, u32) = (1280, 1600);

/// A page as headless Chromium showed it.
pub struct Shown {
    /// The screenshot (PNG bytes).
    pub png: Vec<u8>,
    /// The DOM after parsing, as `--dump-dom` serialized it.
    pub dom_text: String,
    pub dom: Dom,
}

/// Loads `page` (a local HTML file) in headless Chromium twice, in
/// profiles under `work`: once for a screenshot (`work/NAME.png`), once to
/// dump the DOM.
pub fn show(page: &Path, work: &Path) -> Shown {
    let stem = page
        .file_stem()
        .map_or_else(|| "page".into(), |s| s.to_string_lossy().into_owned());
    show_url(&format!("file://{}", page.display()), work, &stem)
}

/// [`show`] for any URL (a page served on loopback), its files in `work`
/// named after `stem`.
pub fn show_url(url: &str, work: &Path, stem: &str) -> Shown {
    fs::create_dir_all(work).expect("chromium work directory");
    let png_path = work.join(format!("{stem}.png"));
    let (w, h) = WINDOW;
    let _ = fs::remove_file(&png_path);
    run(
        work,
        &format!("{stem}-screenshot"),
        &[
            format!("--window-size={w},{h}"),
            "--hide-scrollbars".to_owned(),
            format!("--screenshot={}", png_path.display()),
            url.to_owned(),
        ],
    );
    let png = fs::read(&png_path).unwrap_or_else(|e| {
        panic!(
            "chromium wrote no screenshot {}: {e}\n{}",
            png_path.display(),
            fs::read_to_string(work.join(format!("{stem}-screenshot.stderr"))).unwrap_or_default()
        )
    });
    let dom_text = run(
        work,
        &format!("{stem}-dom"),
        &["--dump-dom".to_owned(), url.to_owned()],
    );
    let dom = Dom::parse(&dom_text);
    Shown { png, dom_text, dom }
}

/// Runs `chromium --headless` with `args` in its own profile
/// (`work/TAG.profile`) and process group, its output in `work/TAG.stdout`
/// and `.stderr`; returns its stdout. Fails the test when it exits with an
/// error or outlives [`RUN_LIMIT`] (then its whole process group is
/// killed).
pub fn run(work: &Path, tag: &str, args: &[String]) -> String {
    let profile = work.join(format!("{tag}.profile"));
    let out_path = work.join(format!("{tag}.stdout"));
    let err_path = work.join(format!("{tag}.stderr"));
    let mut c = Command::new(crate::servers::prog("chromium"));
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--mute-audio",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    // Its caches and NSS database stay in the temp dir.
    .env("HOME", work)
    .env_remove("DBUS_SESSION_BUS_ADDRESS")
    .stdin(Stdio::null())
    .stdout(fs::File::create(&out_path).expect("chromium stdout file"))
    .stderr(fs::File::create(&err_path).expect("chromium stderr file"))
    .process_group(0);
    let cmdline = format!("{c:?}");
    let mut child = c.spawn().expect("spawn chromium");
    let status = match child.wait_timeout(RUN_LIMIT).expect("wait for chromium") {
        Some(status) => status,
        None => {
            // The group this run made (the browser and its helpers), by id.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait();
            panic!(
                "chromium did not finish within {RUN_LIMIT:?}: {cmdline}\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}): {cmdline}\n--- stderr ---\n{}",
        fs::read_to_string(&err_path).unwrap_or_default()
    );
    stdout
}

/// Width and height of a PNG image, from its signature and IHDR chunk;
/// `None` when the bytes are not a PNG.
pub fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let rest = bytes.strip_prefix(SIGNATURE)?;
    // length (4), "IHDR", width (4), height (4)
    if rest.get(4..8)? != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(rest.get(8..12)?), be(rest.get(12..16)?)))
}

/// One node of a [`Dom`]: an element (its tag name as serialized, its
/// attributes in order) or a text node (`name` empty).
#[derive(Debug)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    parent: usize,
    children: Vec<usize>,
}

/// The tree of a document serialized by Chromium. Node 0 is the document.
#[derive(Debug)]
pub struct Dom {
    nodes: Vec<Node>,
}

/// Elements the HTML serializer writes without an end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// Elements whose content is written raw, up to their end tag.
const RAW: &[&str] = &[
    "script",
    "style",
    "xmp",
    "iframe",
    "noembed",
    "noframes",
    "plaintext",
];

impl Dom {
    /// Reads a serialized document (see the module's doc). Unbalanced end
    /// tags are ignored, unclosed elements end with the document.
    pub fn parse(text: &str) -> Dom {
        let mut dom = Dom {
            nodes: vec![Node {
                name: "#document".to_owned(),
                attrs: Vec::new(),
                text: String::new(),
                parent: 0,
                children: Vec::new(),
            }],
        };
        let mut stack = vec![0usize];
        let mut rest = text;
        while !rest.is_empty() {
            let top = *stack.last().unwrap_or(&0);
            if let Some(after) = rest.strip_prefix("<!--") {
                rest = after.find("-->").map_or("", |i| &after[i + 3..]);
            } else if rest.starts_with("<!") || rest.starts_with("<?") {
                rest = rest.find('>').map_or("", |i| &rest[i + 1..]);
            } else if let Some(after) = rest.strip_prefix("</") {
                let end = after.find('>').unwrap_or(after.len());
                let name = after[..end].trim();
                rest = after.get(end + 1..).unwrap_or("");
                if let Some(pos) = stack
                    .iter()
                    .rposition(|&n| n != 0 && dom.nodes[n].name.eq_ignore_ascii_case(name))
                {
                    stack.truncate(pos);
                }
            } else if rest.starts_with('<')
                && rest[1..].starts_with(|c: char| c.is_ascii_alphabetic())
            {
                let (name, attrs, self_closing, after) = start_tag(&rest[1..]);
                rest = after;
                let id = dom.push(top, &name, attrs, String::new());
                let lower = name.to_ascii_lowercase();
                if RAW.contains(&lower.as_str()) {
                    let close = format!("</{lower}");
                    let end = rest.to_ascii_lowercase().find(&close).unwrap_or(rest.len());
                    if end > 0 {
                        dom.push(id, "", Vec::new(), rest[..end].to_owned());
                    }
                    rest = &rest[end..];
                    stack.push(id);
                } else if !self_closing && !VOID.contains(&lower.as_str()) {
                    stack.push(id);
                }
            } else {
                // Text up to the next tag ('<' alone is text).
                let end = rest[1..].find('<').map_or(rest.len(), |i| i + 1);
                dom.push(top, "", Vec::new(), decode(&rest[..end]));
                rest = &rest[end..];
            }
        }
        dom
    }

    fn push(
        &mut self,
        parent: usize,
        name: &str,
        attrs: Vec<(String, String)>,
        text: String,
    ) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_owned(),
            attrs,
            text,
            parent,
            children: Vec::new(),
        });
        self.nodes[parent].children.push(id);
        id
    }

    /// The document node.
    pub fn root(&self) -> El<'_> {
        El { dom: self, id: 0 }
    }

    /// Every element, in document order.
    pub fn elements(&self) -> Vec<El<'_>> {
        self.root().descendants()
    }

    /// The document's title: the text of `<head>`'s `<title>` (not an
    /// SVG `<title>`), what `document.title` returns.
    pub fn title(&self) -> Option<String> {
        self.elements()
            .into_iter()
            .find(|e| e.name() == "title" && e.parent().is_some_and(|p| p.name() == "head"))
            .map(|e| e.text())
    }
}

/// One element of a [`Dom`].
#[derive(Clone, Copy)]
pub struct El<'a> {
    dom: &'a Dom,
    id: usize,
}

impl std::fmt::Debug for El<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.outline())
    }
}

impl<'a> El<'a> {
    fn node(&self) -> &'a Node {
        &self.dom.nodes[self.id]
    }

    /// The tag name, lowercase.
    pub fn name(&self) -> String {
        self.node().name.to_ascii_lowercase()
    }

    pub fn attr(&self, name: &str) -> Option<&'a str> {
        self.node()
            .attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether its `class` lists `class`.
    pub fn has_class(&self, class: &str) -> bool {
        self.attr("class")
            .is_some_and(|c| c.split_ascii_whitespace().any(|x| x == class))
    }

    pub fn parent(&self) -> Option<El<'a>> {
        (self.id != 0).then(|| El {
            dom: self.dom,
            id: self.node().parent,
        })
    }

    /// Every element below it, in document order.
    pub fn descendants(&self) -> Vec<El<'a>> {
        let mut out = Vec::new();
        let mut todo: Vec<usize> = self.node().children.iter().rev().copied().collect();
        while let Some(id) = todo.pop() {
            let n = &self.dom.nodes[id];
            if n.name.is_empty() {
                continue;
            }
            out.push(El { dom: self.dom, id });
            todo.extend(n.children.iter().rev());
        }
        out
    }

    /// The elements below it named `name` whose attribute `attr` is
    /// `value`.
    pub fn all_with(&self, name: &str, attr: &str, value: &str) -> Vec<El<'a>> {
        self.descendants()
            .into_iter()
            .filter(|e| e.name() == name && e.attr(attr) == Some(value))
            .collect()
    }

    /// The first element below it with `data-field="FIELD"`.
    pub fn field(&self, field: &str) -> Option<El<'a>> {
        self.descendants()
            .into_iter()
            .find(|e| e.attr("data-field") == Some(field))
    }

    /// Its text: every text node below it, whitespace runs (and U+00A0)
    /// collapsed to one space, trimmed.
    pub fn text(&self) -> String {
        let mut raw = String::new();
        let mut todo = vec![self.id];
        while let Some(id) = todo.pop() {
            let n = &self.dom.nodes[id];
            if n.name.is_empty() {
                raw.push_str(&n.text);
            } else if !n.name.eq_ignore_ascii_case("style") {
                todo.extend(n.children.iter().rev());
            }
        }
        raw.split(|c: char| c.is_whitespace() || c == '\u{a0}')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `<name attr="value"...>` and its text, for messages.
    pub fn outline(&self) -> String {
        let attrs: String = self
            .node()
            .attrs
            .iter()
            .map(|(n, v)| format!(" {n}={v:?}"))
            .collect();
        format!("<{}{attrs}> {:?}", self.node().name, self.text())
    }
}

/// A start tag after its `<`: (name, attributes, ends in `/>`, the rest).
fn start_tag(s: &str) -> (String, Vec<(String, String)>, bool, &str) {
    let name_end = s
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .unwrap_or(s.len());
    let name = s[..name_end].to_owned();
    let mut rest = &s[name_end..];
    let mut attrs = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix("/>") {
            return (name, attrs, true, after);
        }
        if let Some(after) = rest.strip_prefix('>') {
            return (name, attrs, false, after);
        }
        if rest.is_empty() {
            return (name, attrs, false, rest);
        }
        if let Some(after) = rest.strip_prefix('/') {
            rest = after;
            continue;
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
            .unwrap_or(rest.len())
            .max(1);
        let attr = rest[..end].to_owned();
        rest = rest[end..].trim_start();
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (raw, next) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let close = body.find(q).unwrap_or(body.len());
                    (&body[..close], body.get(close + 1..).unwrap_or(""))
                }
                _ => {
                    let close = after
                        .find(|c: char| c.is_whitespace() || c == '>')
                        .unwrap_or(after.len());
                    (&after[..close], &after[close..])
                }
            };
            rest = next;
            decode(raw)
        } else {
            String::new()
        };
        attrs.push((attr, value));
    }
}

/// Text with its character references replaced (the ones a serializer
/// writes, and numeric ones); anything else kept as it is.
pub fn decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(semi) = rest[..rest.len().min(12)].find(';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity.strip_prefix('#').and_then(|n| {
                let code = match n.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => n.parse().ok(),
                };
                code.and_then(char::from_u32)
            }),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dom_reader_finds_fields_text_and_the_head_title_not_an_svg_title() {
        let dom = Dom::parse(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mxkeys status</title>\
             <style>p > b { color: red }</style></head><body><main>\
             <article class=\"target x\" data-target=\"a&amp;b &quot;q&quot;\"><dl>\
             <dd data-field=\"names\">&lt;script&gt;alert(1)&lt;/script&gt;.example,\n  b.example</dd>\
             <dd data-field=\"days-left\">&nbsp;42 </dd></dl></article>\
             <svg class=\"timeline\" viewBox=\"0 0 10 10\"><g data-selector=\"s1\"><title>s1 active</title>\
             <rect x=\"1\"></rect><line x1=\"0\"/></g></svg><br><p>after</p></main></body></html>",
        );
        assert_eq!(dom.title().as_deref(), Some("mxkeys status"));
        let targets = dom.root().all_with("article", "data-target", "a&b \"q\"");
        assert_eq!(targets.len(), 1, "{:?}", dom.elements());
        let t = targets[0];
        assert!(t.has_class("target") && !t.has_class("targ"));
        assert_eq!(
            t.field("names").map(|e| e.text()).as_deref(),
            Some("<script>alert(1)</script>.example, b.example")
        );
        assert_eq!(
            t.field("days-left").map(|e| e.text()).as_deref(),
            Some("42")
        );
        assert!(!dom.elements().iter().any(|e| e.name() == "script"));
        let g = dom.root().all_with("g", "data-selector", "s1");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].descendants().len(), 3, "{:?}", g[0].descendants());
        // The void <br> and the self-closed <line> did not swallow what follows.
        let p = dom
            .elements()
            .into_iter()
            .find(|e| e.name() == "p")
            .unwrap();
        assert_eq!(p.parent().map(|m| m.name()).as_deref(), Some("main"));
        // Style text is not text.
        let head = dom
            .elements()
            .into_iter()
            .find(|e| e.name() == "head")
            .unwrap();
        assert_eq!(head.text(), "mxkeys status");
    }

    #[test]
    fn a_script_element_in_the_dom_is_seen_with_its_raw_content() {
        let dom = Dom::parse("<html><body><script>if (a < b) x()</script><p>t</p></body></html>");
        let s: Vec<_> = dom
            .elements()
            .into_iter()
            .filter(|e| e.name() == "script")
            .collect();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].text(), "if (a < b) x()");
        assert!(dom.elements().iter().any(|e| e.name() == "p"));
    }

    #[test]
    fn png_dimensions_reads_the_ihdr_and_refuses_other_bytes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(1280u32.to_be_bytes());
        png.extend(1600u32.to_be_bytes());
        assert_eq!(png_dimensions(&png), Some((1280, 1600)));
        assert_eq!(png_dimensions(b"GIF89a"), None);
        assert_eq!(png_dimensions(&png[..20]), None);
    }
}

//! Man pages and shell completions, generated from what they document.
//!
//! Rule: nothing here is written by hand twice. The command pages
//! (`mxkeys(1)` and one `mxkeys-COMMAND(1)` per subcommand, nested ones
//! too) come from the clap definitions (`crate::cli::command`) through
//! clap_mangen; the completions (bash, zsh, fish) through clap_complete;
//! and `mxkeys.toml(5)` from the annotated `config/mxkeys.toml` built into
//! the binary: its comments become the text, its key lines (set or
//! commented out) the examples, so the page documents exactly the keys the
//! shipped configuration does. Every piece of text is roff-escaped
//! ([`escape`]): backslashes, hyphens, quotes, non-ASCII characters, and
//! lines starting with `.` or `'`, which roff would take as requests.
//!
//! Rendering ([`man_pages`], [`config_page`], [`completions`]) is pure: it
//! returns file names and contents. The only effect is
//! [`write_man_pages`] / [`write_completions`] writing them into a
//! directory (`mxkeys generate man|completions DIR`, run at package build
//! time).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The annotated configuration shipped with mxkeys (`/etc/mxkeys/mxkeys.toml`).
pub const CONFIG: &str = include_str!("../config/mxkeys.toml");

/// A generated file: its name in the output directory, and its contents.
pub type Generated = (String, Vec<u8>);

/// Why `mxkeys generate` wrote nothing, or not everything.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rendering {name}: {source}")]
    Render {
        name: String,
        source: std::io::Error,
    },
}

/// Escapes `text` for one line of roff input (fill or no-fill mode): `\`
/// becomes `\e`, `-` `\-` (a minus sign, so options copy and paste), `` ` ``
/// and `'` their ASCII glyphs, a non-ASCII character `\[uXXXX]`, and a line
/// starting with `.` or `'` is guarded with `\&`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    if text.starts_with(['.', '\'']) {
        out.push_str("\\&");
    }
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            '`' => out.push_str("\\(ga"),
            '\'' => out.push_str("\\(aq"),
            c if c.is_ascii() => out.push(c),
            c => {
                let _ = write!(out, "\\[u{:04X}]", u32::from(c));
            }
        }
    }
    out
}

/// What one line of the annotated configuration is, for the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line<'a> {
    /// An empty line or a lone `#`: ends a paragraph.
    Break,
    /// `# ----` alone: ends a paragraph; with words in it, a subsection title.
    Rule(Option<&'a str>),
    /// A comment of running text (filled).
    Prose(&'a str),
    /// An indented comment (`#   zone   the zone...`): a list, kept as laid out.
    Layout(&'a str),
    /// A key or table line, set or commented out: an example, kept verbatim.
    Example(&'a str),
}

/// Whether `text` (a comment's content) is TOML: `[table]`, `[[table]]`,
/// or `key = ...`.
fn is_toml(text: &str) -> bool {
    let text = text.trim_end();
    let name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    };
    if let Some(inner) = text.strip_prefix("[[").and_then(|t| t.strip_suffix("]]")) {
        return name(inner);
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return name(inner);
    }
    text.split_once(" = ").is_some_and(|(key, _)| name(key))
}

fn classify(line: &str) -> Line<'_> {
    let Some(comment) = line.strip_prefix('#') else {
        return if line.trim().is_empty() {
            Line::Break
        } else {
            Line::Example(line)
        };
    };
    let text = comment.strip_prefix(' ').unwrap_or(comment);
    if text.trim().is_empty() {
        return Line::Break;
    }
    if text.starts_with("---") {
        let title = text.trim_matches(|c: char| c == '-' || c.is_whitespace());
        return Line::Rule((!title.is_empty()).then_some(title));
    }
    if is_toml(text) {
        return Line::Example(line);
    }
    if text.starts_with(' ') {
        return Line::Layout(text);
    }
    Line::Prose(text.trim_end())
}

/// `mxkeys.toml(5)` from the annotated configuration `toml` (pure).
pub fn config_page(toml: &str, version: &str) -> String {
    #[derive(PartialEq)]
    enum Mode {
        Out,
        Fill,
        NoFill,
    }
    let mut page = String::new();
    let _ = writeln!(
        page,
        ".TH MXKEYS.TOML 5 \"\" \"mxkeys {}\" \"File Formats\"",
        version.replace(['"', '\\'], "")
    );
    page.push_str(".nh\n.ad l\n");
    page.push_str(".SH NAME\nmxkeys.toml \\- configuration of mxkeys(1)\n");
    page.push_str(".SH SYNOPSIS\n/etc/mxkeys/mxkeys.toml\n");
    page.push_str(".SH DESCRIPTION\n");
    let mut mode = Mode::Out;
    let close = |page: &mut String, mode: &mut Mode| {
        if *mode == Mode::NoFill {
            page.push_str(".fi\n.RE\n");
        }
        *mode = Mode::Out;
    };
    for raw in toml.lines() {
        match classify(raw) {
            Line::Break | Line::Rule(None) => close(&mut page, &mut mode),
            Line::Rule(Some(title)) => {
                close(&mut page, &mut mode);
                let _ = writeln!(page, ".SS\n{}", escape(title));
            }
            Line::Prose(text) => {
                if mode != Mode::Fill {
                    close(&mut page, &mut mode);
                    page.push_str(".PP\n");
                    mode = Mode::Fill;
                }
                page.push_str(&escape(text));
                page.push('\n');
            }
            Line::Layout(text) | Line::Example(text) => {
                if mode != Mode::NoFill {
                    close(&mut page, &mut mode);
                    page.push_str(".PP\n.RS 2\n.nf\n");
                    mode = Mode::NoFill;
                }
                page.push_str(&escape(text.trim_end()));
                page.push('\n');
            }
        }
    }
    close(&mut page, &mut mode);
    page.push_str(".SH FILES\n.TP\n/etc/mxkeys/mxkeys.toml\n");
    page.push_str("The default configuration file; \\fB\\-\\-config\\fR or \\fBMXKEYS_CONFIG\\fR name another.\n");
    page.push_str(".SH \"SEE ALSO\"\n\\fBmxkeys\\fR(1)\n");
    page
}

/// Every man page: `mxkeys.1`, `mxkeys-COMMAND[-SUBCOMMAND].1` for each
/// visible subcommand, and `mxkeys.toml.5` (pure).
pub fn man_pages(cmd: clap::Command) -> Result<Vec<Generated>, DocsError> {
    fn collect(cmd: clap::Command, top: bool, out: &mut Vec<Generated>) -> Result<(), DocsError> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            collect(sub.clone(), false, out)?;
        }
        let man = clap_mangen::Man::new(cmd);
        let name = man.get_filename();
        let mut page = Vec::new();
        man.render(&mut page).map_err(|source| DocsError::Render {
            name: name.clone(),
            source,
        })?;
        let see_also = if top {
            ".SH \"SEE ALSO\"\n\\fBmxkeys.toml\\fR(5)\n"
        } else {
            ".SH \"SEE ALSO\"\n\\fBmxkeys\\fR(1), \\fBmxkeys.toml\\fR(5)\n"
        };
        page.extend_from_slice(see_also.as_bytes());
        out.push((name, page));
        Ok(())
    }
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    collect(cmd, true, &mut pages)?;
    pages.sort_by(|a, b| a.0.cmp(&b.0));
    pages.push((
        "mxkeys.toml.5".to_owned(),
        config_page(CONFIG, &version).into_bytes(),
    ));
    Ok(pages)
}

/// `cmd` without its hidden subcommands (`generate`), which clap_complete
/// would offer like any other.
fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new("mxkeys")
        .about(cmd.get_about().cloned().unwrap_or_default())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if cmd.get_version().is_some() {
        out = out.version(env!("CARGO_PKG_VERSION"));
    }
    out
}

/// The completion scripts: `mxkeys.bash`, `_mxkeys` (zsh), `mxkeys.fish`,
/// offering every visible subcommand (pure).
pub fn completions(cmd: clap::Command) -> Vec<Generated> {
    let cmd = visible(&cmd);
    [Shell::Bash, Shell::Zsh, Shell::Fish]
        .into_iter()
        .map(|shell| {
            let mut cmd = cmd.clone();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "mxkeys", &mut script);
            let name = clap_complete::Generator::file_name(&shell, "mxkeys");
            (name, script)
        })
        .collect()
}

/// Writes `files` into `dir` (created if missing); returns their paths.
fn write_all(dir: &Path, files: Vec<Generated>) -> Result<Vec<PathBuf>, DocsError> {
    std::fs::create_dir_all(dir).map_err(|source| DocsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    files
        .into_iter()
        .map(|(name, contents)| {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|source| DocsError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// `mxkeys generate man DIR`.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    write_all(dir, man_pages(crate::cli::command())?)
}

/// `mxkeys generate completions DIR`.
pub fn write_completions(dir: &Path) -> Result<Vec<PathBuf>, DocsError> {
    write_all(dir, completions(crate::cli::command()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_guards_roff_requests_backslashes_and_hyphens() {
        let table = [
            ("plain text", "plain text"),
            (".TH not a request", "\\&.TH not a request"),
            ("'br not a request", "\\&\\(aqbr not a request"),
            ("a\\b", "a\\eb"),
            ("--config", "\\-\\-config"),
            ("`mxkeys sync`", "\\(gamxkeys sync\\(ga"),
            ("RFC 8461 \u{a7}8", "RFC 8461 \\[u00A7]8"),
            ("mid.line 'quote'", "mid.line \\(aqquote\\(aq"),
        ];
        for (text, want) in table {
            assert_eq!(escape(text), want, "escape({text:?})");
        }
    }

    #[test]
    fn config_lines_are_told_apart_as_text_layout_and_examples() {
        let table = [
            ("", Line::Break),
            ("#", Line::Break),
            ("# ----------", Line::Rule(None)),
            ("# --- `mxkeys run` ---", Line::Rule(Some("`mxkeys run`"))),
            ("# Where mxkeys keeps", Line::Prose("Where mxkeys keeps")),
            ("#   zone   the zone", Line::Layout("  zone   the zone")),
            ("[metrics]", Line::Example("[metrics]")),
            ("# [target.dane]", Line::Example("# [target.dane]")),
            ("# [[dkim.adopt]]", Line::Example("# [[dkim.adopt]]")),
            ("# dns = \"cf\"", Line::Example("# dns = \"cf\"")),
            ("key = \"x\"   # why", Line::Example("key = \"x\"   # why")),
            ("      # more why", Line::Example("      # more why")),
            (
                "# from: where the keys are",
                Line::Prose("from: where the keys are"),
            ),
        ];
        for (line, want) in table {
            assert_eq!(classify(line), want, "classify({line:?})");
        }
    }

    #[test]
    fn config_page_keeps_comments_as_text_and_keys_as_examples() {
        let page = config_page(
            "# Intro \\ text.\n# .dot starts\n\n[metrics]\nlisten = \"a\"\n",
            "1.0",
        );
        assert!(
            page.contains(".PP\nIntro \\e text.\n\\&.dot starts\n"),
            "{page}"
        );
        assert!(
            page.contains(".nf\n[metrics]\nlisten = \"a\"\n.fi\n"),
            "{page}"
        );
    }
}

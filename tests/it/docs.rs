//! `mxkeys generate man|completions DIR` (issue 17): the pages render with
//! the real `man` (man-db and groff) without a warning and have a NAME line
//! mandb indexes; `mxkeys(1)` and each command's page list the subcommands
//! `--help` shows; `mxkeys.toml(5)` carries every comment, key line and
//! table of the shipped `config/mxkeys.toml`; and each completion script
//! loads in the real bash, zsh and fish and completes a subcommand.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::servers::{Need, output_within, require_programs};

const MAN: &[Need] = &[
    ("man", "man-db"),
    ("lexgrog", "man-db"),
    ("groff", "groff-base"),
];
const BASH: &[Need] = &[("bash", "bash")];
const ZSH: &[Need] = &[("zsh", "zsh")];
const FISH: &[Need] = &[("fish", "fish")];

/// Any program here answers well within this.
const LIMIT: Duration = Duration::from_secs(60);

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+) => {
        if !require_programs($test, &[$($needs),+]) {
            return;
        }
    };
}

/// Runs `mxkeys generate WHAT DIR` into a new temporary directory.
fn generate(what: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut cmd = Command::new(common::bin());
    cmd.args(["generate", what]).arg(dir.path());
    let out = output_within(cmd, LIMIT).expect("mxkeys generate");
    assert!(
        out.status.success(),
        "mxkeys generate {what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Runs `cmd` (bounded), and returns its stdout and stderr.
fn run(mut cmd: Command) -> (String, String) {
    cmd.env("LC_ALL", "C.UTF-8");
    let desc = format!("{cmd:?}");
    let out = output_within(cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{desc}: {}\n{stderr}", out.status);
    (stdout, stderr)
}

/// The page as `man` shows it at 80 columns; it fails the test on any
/// warning of man or groff.
fn man(page: &Path) -> String {
    let mut cmd = Command::new("man");
    cmd.env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .args(["--warnings", "-l"])
        .arg(page);
    let (text, warnings) = run(cmd);
    assert!(
        warnings.is_empty(),
        "man -l {} warns:\n{warnings}",
        page.display()
    );
    assert!(
        !text.trim().is_empty(),
        "man -l {} shows nothing",
        page.display()
    );
    text
}

/// The subcommands `mxkeys ARGS --help` lists (help itself left out).
fn subcommands(args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(common::bin());
    cmd.args(args).arg("--help");
    let (help, _) = run(cmd);
    let Some((_, list)) = help.split_once("Commands:\n") else {
        return Vec::new();
    };
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the generated directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_generated_man_page_renders_with_man_and_groff_without_a_warning() {
    require!("docs::man_pages_render", MAN);
    let dir = generate("man");
    let pages = files(dir.path());
    for name in [
        "mxkeys.1",
        "mxkeys-sync.1",
        "mxkeys-dkim-import.1",
        "mxkeys.toml.5",
    ] {
        assert!(
            pages.iter().any(|p| p.ends_with(name)),
            "no {name} among {pages:?}"
        );
    }
    for page in &pages {
        man(page);
        let mut groff = Command::new("groff");
        groff.args(["-man", "-ww", "-z"]).arg(page);
        let (_, warnings) = run(groff);
        assert!(
            warnings.is_empty(),
            "groff -man -ww {} warns:\n{warnings}",
            page.display()
        );
        // What lintian checks with it: mandb can index the page's NAME line.
        let mut lexgrog = Command::new("lexgrog");
        lexgrog.arg(page);
        let (whatis, _) = run(lexgrog);
        assert!(
            whatis.contains(" - "),
            "lexgrog finds no whatis entry in {}: {whatis}",
            page.display()
        );
    }
}

#[test]
fn each_command_page_lists_every_subcommand_help_shows_and_each_has_its_page() {
    require!("docs::pages_list_subcommands", MAN);
    let dir = generate("man");
    let mut commands = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = commands.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let subs = subcommands(&args);
        let page = dir.path().join(format!(
            "{}.1",
            ["mxkeys"]
                .iter()
                .copied()
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join("-")
        ));
        assert!(
            page.is_file(),
            "no page {} for `mxkeys {}`",
            page.display(),
            args.join(" ")
        );
        let text = man(&page);
        for sub in subs {
            assert!(
                text.contains(&sub),
                "{} does not list `{sub}`:\n{text}",
                page.display()
            );
            let mut next = path.clone();
            next.push(sub);
            commands.push(next);
        }
        seen += 1;
    }
    // mxkeys, 11 commands, 5 dkim, 3 dane, 5 mta-sts, 1 dns subcommands.
    assert!(seen >= 26, "only {seen} commands walked");
    assert!(
        !dir.path().join("mxkeys-generate.1").exists(),
        "the hidden generate command got a page"
    );
}

#[test]
fn the_configuration_page_carries_every_comment_key_line_and_table_of_the_shipped_file() {
    require!("docs::config_page", MAN);
    let dir = generate("man");
    let text = collapse(&man(&dir.path().join("mxkeys.toml.5")));
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mxkeys.toml"))
            .expect("config/mxkeys.toml");
    let mut tables = 0;
    for line in shipped.lines() {
        let content = line.strip_prefix('#').unwrap_or(line);
        let content = content.trim().trim_matches('-').trim();
        if content.is_empty() {
            continue;
        }
        if content.starts_with('[') {
            tables += 1;
        }
        // Comments and key lines alike: their words, in order.
        let want = collapse(if line.starts_with('#') { content } else { line });
        assert!(
            text.contains(&want),
            "mxkeys.toml(5) lacks the line {line:?}"
        );
    }
    for table in [
        "[metrics]",
        "[[source]]",
        "[[target]]",
        "[target.dane]",
        "[target.ecdsa]",
        "[target.rsa]",
        "[acme]",
        "[dns.bind]",
        "[dkim]",
        "[[dkim.adopt]]",
        "[mta_sts]",
        "[tls_rpt]",
    ] {
        assert!(
            text.contains(table),
            "mxkeys.toml(5) does not mention {table}"
        );
    }
    assert!(
        tables >= 12,
        "only {tables} table lines in the shipped file"
    );
}

#[test]
fn the_bash_completion_loads_and_completes_dk_to_dkim() {
    require!("docs::bash_completion", BASH);
    let dir = generate("completions");
    let script = dir.path().join("mxkeys.bash");
    let mut bash = Command::new("bash");
    bash.args(["--norc", "--noprofile", "-c"])
        .arg(
            "set -e; source \"$1\"; complete -p mxkeys; \
             COMP_WORDS=(mxkeys dk); COMP_CWORD=1; COMP_LINE='mxkeys dk'; COMP_POINT=9; \
             _mxkeys mxkeys dk mxkeys; printf 'reply:%s\\n' \"${COMPREPLY[@]}\"",
        )
        .arg("bash")
        .arg(&script);
    let (out, _) = run(bash);
    let replies: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("reply:"))
        .collect();
    assert_eq!(replies, ["dkim"], "bash completes `mxkeys dk` to:\n{out}");
}

/// Completes `$2` in an interactive zsh on a pseudo-terminal (zsh/zpty)
/// with the completion script `$1` loaded under compinit, recording every
/// candidate the completion system is given (`HIT:NAME` lines). Each step
/// waits for the shell's answer, at most about 30 s.
const ZSH_COMPLETE: &str = r#"# Completes $2 in an interactive zsh on a pseudo-terminal with the script
# $1 loaded under compinit; prints each candidate offered as HIT:NAME.
zmodload zsh/zpty || exit 3
# Reads from the shell until what was read matches $1 (at most ~30 s).
read_until() {
  local acc= line
  integer n=0
  while (( n++ < 300 )); do
    if zpty -r -t z line; then
      acc+=$line
      if [[ $acc == $~1 ]]; then REPLY=$acc; return 0; fi
    else
      sleep 0.1
    fi
  done
  print -r -- "no ${(q)1} in: $acc" >&2
  exit 1
}
zpty z zsh -f -i
zpty -w z 'PROMPT= ; RPROMPT= '
zpty -w z "autoload -U compinit; compinit -u -d \$HOME/.zcompdump; source ${(q)1}"
zpty -w z 'compadd () { builtin compadd -O __hits "$@"; print -r -l -- "HIT:${^__hits[@]}"; builtin compadd "$@" }'
zpty -w z 'print RE""ADY'
read_until '*READY*'
zpty -w -n z "$2"$'\t'
read_until '*HIT:*'
zpty -w z $'\x03'
zpty -w z 'print EN""D'
local seen=$REPLY
read_until '*END*'
print -r -- "$seen$REPLY" | tr -d '\r' | grep -ao 'HIT:[a-z-]*' | sort -u
zpty -d z
"#;

#[test]
fn the_zsh_completion_loads_under_compinit_and_completes_dk_to_dkim() {
    require!("docs::zsh_completion", ZSH);
    let dir = generate("completions");
    let script = dir.path().join("_mxkeys");
    let home = tempfile::tempdir().expect("temporary directory");
    let driver = home.path().join("complete.zsh");
    std::fs::write(&driver, ZSH_COMPLETE).expect("the zsh driver");
    let zsh = |args: &[&str]| {
        let mut zsh = Command::new("zsh");
        zsh.env("HOME", home.path())
            .env("ZDOTDIR", home.path())
            .current_dir(home.path())
            .arg("-f")
            .args(args);
        run(zsh).0
    };
    let script = script.to_str().expect("a UTF-8 path");
    let bound = zsh(&[
        "-c",
        "autoload -U compinit && compinit -u -d \"$HOME/.zcompdump\" && source \"$1\" && \
         print -r -- \"comp:$_comps[mxkeys]\"",
        "zsh",
        script,
    ]);
    assert!(
        bound.contains("comp:_mxkeys"),
        "mxkeys not bound to _mxkeys:\n{bound}"
    );
    let out = zsh(&[driver.to_str().expect("a UTF-8 path"), script, "mxkeys dk"]);
    let hits: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("HIT:"))
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(hits, ["dkim"], "zsh completes `mxkeys dk` to:\n{out}");
}

#[test]
fn the_fish_completion_loads_and_completes_dk_to_dkim() {
    require!("docs::fish_completion", FISH);
    let dir = generate("completions");
    let script = dir.path().join("mxkeys.fish");
    let home = tempfile::tempdir().expect("temporary directory");
    let mut fish = Command::new("fish");
    fish.env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .args(["--no-config", "-c"])
        .arg(format!(
            "source '{}'; complete -C 'mxkeys dk'; echo ==; complete -C 'mxkeys '",
            script.display()
        ));
    let (out, _) = run(fish);
    let (dk, all) = out.split_once("==\n").expect("both completions");
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split('\t').next())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(names(dk), ["dkim"], "fish completes `mxkeys dk` to:\n{out}");
    let all = names(all);
    for command in ["sync", "check", "dkim", "mta-sts", "init"] {
        assert!(
            all.iter().any(|n| n == command),
            "fish does not offer {command}: {all:?}"
        );
    }
    assert!(
        !all.iter().any(|n| n == "generate"),
        "fish offers the hidden generate command: {all:?}"
    );
}

#[test]
fn generate_into_a_directory_it_cannot_make_fails_with_one_line_naming_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("a file");
    let target = file.join("man");
    let mut cmd = Command::new(common::bin());
    cmd.args(["generate", "man"]).arg(&target);
    let out = output_within(cmd, LIMIT).expect("mxkeys generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&target.display().to_string()),
        "the error does not name {}: {stderr}",
        target.display()
    );
    assert!(out.stdout.is_empty(), "wrote something: {:?}", out.stdout);
}

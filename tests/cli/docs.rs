//! What the README and docs/ show, run: every console session, with its
//! output compared (numbers and times aside); every shell block, on a
//! store with records in it; the build and test commands, which must be
//! the ones CI runs; and the install lines. (The examples under
//! tests/examples/ are run by `examples::`; what the pages claim is
//! checked by `claims::`.)

use crate::support::{path_with_idem, tool, Env};
use std::path::Path;
use std::process::Command;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// README.md and the pages of docs/ this suite owns (leases.md and
/// install-lines.md are checked by the tests of their own work).
pub fn pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|entry| format!("docs/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|name| {
            name.ends_with(".md")
                && !name.ends_with("/leases.md")
                && !name.ends_with("/install-lines.md")
        })
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|name| {
            let text = read(&name);
            (name, text)
        })
        .collect()
}

/// One fenced block of a page.
struct Block {
    page: String,
    line: usize,
    lang: String,
    body: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", self.page, self.line)
    }
}

fn blocks() -> Vec<Block> {
    let examples: Vec<String> = std::fs::read_dir(root().join("tests/examples"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    let mut found = Vec::new();
    for (page, text) in pages() {
        let mut lines = text.lines().enumerate();
        while let Some((number, line)) = lines.next() {
            let Some(lang) = line.strip_prefix("```") else {
                continue;
            };
            let mut body = String::new();
            for (_, line) in lines.by_ref() {
                if line == "```" {
                    break;
                }
                body.push_str(line);
                body.push('\n');
            }
            // An example file quoted verbatim: `examples::` runs it.
            if !examples.contains(&body) {
                found.push(Block {
                    page: page.clone(),
                    line: number + 1,
                    lang: lang.to_owned(),
                    body,
                });
            }
        }
    }
    found
}

/// Records for the commands the pages show to work on: a failed deploy, a
/// completed report with a label, and a charge whose idem crashed under
/// `--on-crash block` (waited for until it is seen as crashed).
const RECORDS: &str = r#"
idem run --key deploy-9f1c2e -- sh -c 'echo deploying; echo "migration failed" >&2; exit 3' || true
idem run --key report-2026-11 --label "November report" -- sh -c 'echo report sent'
printf '#!/bin/sh\necho "charging invoice $1"\nkill -9 $PPID $$\n' > charge.sh
chmod +x charge.sh
idem run --key invoice-42 --on-crash block --label "invoice 42" -- ./charge.sh 42 || true
i=0
until idem inspect --status crashed | grep -q invoice-42; do
    i=$((i + 1)); [ "$i" -lt 1200 ]; sleep 0.05
done
printf '#!/bin/sh\necho "charging invoice $1"\n' > charge.sh
printf '#!/bin/sh\necho report sent\n' > nightly-report.sh
chmod +x nightly-report.sh
"#;

/// `sh` running `script` in the test's directory, as a user whose HOME it
/// is, with idem on PATH and the test's store as `IDEM_DB`.
fn shell(env: &Env, script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-eu");
    in_env(env, cmd, script)
}

/// `sh` as a terminal's shell runs a typed line: a failing command does
/// not end it.
fn line(env: &Env, script: &str) -> Command {
    in_env(env, Command::new("sh"), script)
}

fn in_env(env: &Env, mut cmd: Command, script: &str) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("IDEM_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(["-c", script])
        .current_dir(env.dir.path())
        .env("HOME", env.dir.path())
        .env("PATH", path_with_idem())
        .env("IDEM_DB", &env.db);
    cmd
}

#[track_caller]
pub fn make_records(env: &Env) {
    let out = shell(env, RECORDS).output().unwrap();
    assert!(out.status.success(), "making the records: {out:?}");
}

/// The pages' own names for what differs on this machine: the store's
/// path and the host name.
fn as_shown(env: &Env, output: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    output
        .replace(&env.db, "/home/me/.local/state/idem/idem.db")
        .replace(&format!("{host}:"), "web1:")
        .replace(&format!("host {host},"), "host web1,")
}

/// What may differ between two runs of the same session: every number
/// (`0`), every duration, however written (`73ms`, `9.7s`, `23h 59m 59s`,
/// `1day`: `T`), and the width of the spaces that align columns.
fn normalize(text: &str) -> String {
    const UNITS: [&str; 10] = ["ns", "us", "ms", "s", "m", "min", "h", "d", "day", "days"];
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_digit() || *d == '.')
            {
                chars.next();
            }
            let mut unit = String::new();
            while let Some(&u) = chars.peek().filter(|u| u.is_ascii_alphabetic()) {
                unit.push(u);
                chars.next();
            }
            if UNITS.contains(&unit.as_str()) {
                // `23h 59m` is one duration.
                if !out.ends_with("T ") {
                    out.push('T');
                } else {
                    out.pop();
                }
            } else {
                out.push('0');
                out.push_str(&unit);
            }
        } else if c == ' ' {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim_end()
        .to_owned()
}

#[test]
fn normalize_keeps_words_and_drops_numbers_and_times() {
    assert_eq!(
        normalize("greet  completed 0   2026-11-23T12:00:01Z (73ms ago) in 23h 59m\n"),
        normalize("greet completed 0 2026-12-06T22:18:03Z (1s ago) in 23h 58m")
    );
    assert_eq!(
        normalize("expires in 1day; run"),
        normalize("expires in 23h 59m 59s; run")
    );
    assert_eq!(normalize("after 9.7s"), normalize("after 10s"));
    assert_ne!(normalize("exit 76"), normalize("exit status 76"));
    assert_ne!(normalize("ran"), normalize("replayed"));
}

/// The `$ command` lines of a console block, each with the output shown
/// under it.
fn session(body: &str) -> Vec<(String, String)> {
    let mut steps: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push((command.to_owned(), String::new()));
        } else {
            let (_, output) = steps.last_mut().expect("a console block starts with `$ `");
            output.push_str(line);
            output.push('\n');
        }
    }
    steps
}

/// The console blocks, but for those that show the report's
/// `retry_after_ms` (with the store work) when `with_new_report` is false.
fn consoles(with_new_report: bool) -> Vec<Block> {
    blocks()
        .into_iter()
        .filter(|b| b.lang == "console")
        .filter(|b| b.body.contains("retry_after_ms") == with_new_report)
        .collect()
}

#[track_caller]
fn run_consoles(consoles: Vec<Block>) {
    assert!(!consoles.is_empty());
    for block in consoles {
        let env = Env::sqlite();
        if block.page == "docs/operating.md" {
            make_records(&env);
        }
        let mut status = 0;
        for (command, shown) in session(&block.body) {
            // One shell per line, stdout and stderr in one stream as on a
            // terminal; `$?` is the previous line's status.
            let out = line(&env, &format!("exec 2>&1; (exit {status}); {command}"))
                .output()
                .unwrap();
            status = out.status.code().unwrap_or(128);
            let got = as_shown(&env, &String::from_utf8_lossy(&out.stdout));
            assert_eq!(
                normalize(&got),
                normalize(&shown),
                "{}: `{command}` printed\n{got}",
                block.place()
            );
        }
    }
}

#[test]
fn console_sessions_in_the_docs_run_as_shown() {
    let consoles = consoles(false);
    assert!(consoles.len() >= 5, "{} console blocks", consoles.len());
    run_consoles(consoles);
}

#[test]
fn console_sessions_showing_the_new_report_run_as_shown() {
    run_consoles(consoles(true));
}

/// How a shell block is run: the commands as shown, with the places a
/// reader has (their store, a backup directory) turned into the test's.
fn runnable(body: &str) -> String {
    body.replace("~/.local/state/idem/idem.db", "\"$IDEM_DB\"")
        .replace("/backup", "$HOME/backup")
}

fn needs(block: &Block, tools: &[&str]) -> bool {
    block
        .body
        .split(|c: char| c.is_whitespace() || c == '|' || c == '(')
        .any(|word| tools.contains(&word))
}

/// The shell blocks run by `run_shell_blocks`: not the build commands,
/// the install lines or those for a server, which have tests of their own.
fn shell_blocks(with_tools: bool) -> Vec<Block> {
    blocks()
        .into_iter()
        .filter(|b| b.lang == "sh")
        .filter(|b| !b.body.contains("cargo ") && !b.body.contains("idem man"))
        .filter(|b| !b.body.contains("postgres://") && !b.body.contains("redis://"))
        .filter(|b| needs(b, &["sqlite3", "jq"]) == with_tools)
        .collect()
}

#[track_caller]
fn run_shell_blocks(blocks: Vec<Block>) {
    assert!(!blocks.is_empty());
    for block in blocks {
        let env = Env::sqlite();
        make_records(&env);
        let out = shell(&env, &runnable(&block.body)).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}\n{}{}",
            block.place(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn shell_blocks_in_the_docs_run() {
    run_shell_blocks(shell_blocks(false));
}

#[test]
#[ignore = "needs sqlite3 and jq (.ci/run installs them)"]
fn shell_blocks_with_sqlite3_and_jq_run() {
    tool("sqlite3");
    tool("jq");
    run_shell_blocks(shell_blocks(true));
}

#[test]
#[ignore = "needs IDEM_TEST_BACKEND=postgres or redis"]
fn server_blocks_in_the_docs_run() {
    crate::support::require_shared_store();
    let env = Env::new();
    let scheme = env.db.split("://").next().unwrap().to_owned();
    let blocks: Vec<Block> = blocks()
        .into_iter()
        .filter(|b| b.lang == "sh" && b.body.contains(&format!("'{scheme}://")))
        .collect();
    assert!(!blocks.is_empty(), "no block for {scheme}");
    for block in blocks {
        // The block's `export IDEM_DB='URL'` names the test's server.
        let script: String = block
            .body
            .lines()
            .map(|line| match line.strip_prefix("export IDEM_DB='") {
                Some(rest) => format!(
                    "export IDEM_DB='{}'{}",
                    env.db,
                    &rest[rest.find('\'').unwrap() + 1..]
                ),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        make_records(&env);
        let out = shell(&env, &script).output().unwrap();
        assert!(out.status.success(), "{}: {out:?}", block.place());
    }
}

/// Every Rust file under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .map(|path| match path.extension() {
            _ if path.is_dir() => sources(&path),
            Some(ext) if ext == "rs" => std::fs::read_to_string(&path).unwrap(),
            _ => String::new(),
        })
        .collect()
}

#[test]
fn build_and_test_commands_in_the_docs_are_what_ci_runs() {
    let ci = read(".ci/run");
    let tests = sources(&root().join("src"));
    let mut seen = 0;
    for block in blocks()
        .iter()
        .filter(|b| b.lang == "sh" && b.body.contains("cargo "))
    {
        for line in block.body.lines() {
            let command = line.split("  #").next().unwrap().trim();
            if let Some(name) =
                command.strip_prefix("IDEM_UPDATE_GENERATED=1 cargo test --locked --bin idem ")
            {
                assert!(
                    tests.contains(&format!("fn {name}(")),
                    "{}: no test {name}",
                    block.place()
                );
            } else if command.starts_with("cargo install") {
                // The install lines have their own test.
                assert!(
                    command.starts_with("cargo install --locked --path ."),
                    "{}",
                    block.place()
                );
            } else {
                assert!(
                    ci.contains(command),
                    "{}: .ci/run does not run `{command}`",
                    block.place()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 4, "{seen} build commands");
}

#[test]
fn the_install_lines_work() {
    let env = Env::sqlite();
    let install = blocks()
        .into_iter()
        .find(|b| b.page == "README.md" && b.body.contains("idem man"))
        .expect("the README's install lines");
    // HOME is the test's directory, and ~/.cargo/bin (where `cargo
    // install` puts idem) is idem's own directory here.
    let out = shell(&env, &install.body).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let manpath = env.path(".cargo/share/man/man1");
    for page in std::fs::read_dir(root().join("man")).unwrap() {
        let page = page.unwrap();
        let installed = std::fs::read(manpath.join(page.file_name())).unwrap();
        assert_eq!(
            installed,
            std::fs::read(page.path()).unwrap(),
            "{:?}",
            page.file_name()
        );
    }
    for (installed, shipped) in [
        (
            ".local/share/bash-completion/completions/idem",
            "completions/idem.bash",
        ),
        (".local/share/zsh/site-functions/_idem", "completions/_idem"),
        (
            ".config/fish/completions/idem.fish",
            "completions/idem.fish",
        ),
    ] {
        assert_eq!(
            std::fs::read(env.path(installed)).unwrap(),
            std::fs::read(root().join(shipped)).unwrap(),
            "{installed}"
        );
    }
    let completes = Command::new("bash")
        .args([
            "-c",
            ". .local/share/bash-completion/completions/idem && complete -p idem",
        ])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert!(completes.status.success(), "{completes:?}");
    // The lines the everyday work tried on a stock Debian, where it wrote
    // them down, are the README's.
    if let Ok(tried) = std::fs::read_to_string(root().join("docs/install-lines.md")) {
        for line in install
            .body
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("idem "))
        {
            assert!(tried.contains(line), "docs/install-lines.md lacks `{line}`");
        }
    }
}

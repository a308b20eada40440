//! What ships besides the behaviour: `--help`, `--version`, and the committed
//! man pages and completions, checked in the tools that read them. (Whether
//! those files match the CLI definition is the unit test in
//! src/cmd/generated.rs.)

use crate::support::Env;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The committed man pages.
fn man_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("man"))
        .expect("man/ exists")
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "man/ has no pages");
    pages
}

/// Whether `tool` is on PATH. A check that needs a missing tool is skipped
/// with a note, except under CI (`CI` set), where that tool is installed.
#[track_caller]
pub fn have(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{tool} is not installed, and CI needs it for this test"
    );
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

#[track_caller]
fn run(cmd: &mut Command) -> Output {
    let out = cmd.current_dir(root()).output().expect("start the tool");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What bash's completion for idem offers for the command line `words`,
/// the last of which is being completed.
fn bash_complete(words: &[&str]) -> Vec<String> {
    let script = r#"
        source completions/idem.bash
        function=$(complete -p idem | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        "$function" idem "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = run(Command::new("bash")
        .args(["--norc", "--noprofile", "-c", script, "bash"])
        .args(words));
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completion_loads() {
    run(Command::new("bash").args(["-c", "source completions/idem.bash && complete -p idem"]));
}

#[test]
fn bash_completes_subcommands_flags_and_values() {
    let offered = bash_complete(&["idem", ""]);
    assert!(
        offered.contains(&"run".to_owned()),
        "idem <TAB>: {offered:?}"
    );

    let offered = bash_complete(&["idem", "run", "--on-"]);
    for flag in ["--on-duplicate", "--on-failure", "--on-crash"] {
        assert!(
            offered.contains(&flag.to_owned()),
            "idem run --on-<TAB>: {offered:?}"
        );
    }

    let offered = bash_complete(&["idem", "run", "--on-duplicate", ""]);
    assert_eq!(
        offered,
        ["replay", "fail", "wait", "skip"],
        "--on-duplicate <TAB>"
    );
}

#[test]
fn man_pages_pass_mandoc_lint() {
    if have("mandoc") {
        // -Tlint reports style notes too; any output at all fails.
        run(Command::new("mandoc").arg("-Tlint").args(man_pages()));
    }
}

#[test]
fn man_pages_render_without_warnings() {
    if have("groff") {
        for page in man_pages() {
            let out = run(Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
                .arg(&page));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("SYNOPSIS"), "{}: {text}", page.display());
        }
    }
}

#[test]
fn help_shows_defaults_env_and_examples() {
    let env = Env::new();
    let out = env.idem().args(["run", "--help"]).output().expect("idem");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(out.status.success(), "{help}");
    for needle in [
        "[env: IDEM_TTL]",
        "[default: 24h]",
        "[env: IDEM_DB]",
        "[default: replay]",
    ] {
        assert!(
            help.contains(needle),
            "idem run --help lacks {needle}:\n{help}"
        );
    }
    let examples = help.split("Examples:").nth(1).expect("ends with examples");
    assert!(examples.contains("--fingerprint-file"), "{examples}");
    assert!(examples.contains("--on-duplicate skip"), "{examples}");

    let out = env.idem().arg("--help").output().expect("idem");
    let help = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        help.contains("idem help SUBCOMMAND") && help.contains("127"),
        "{help}"
    );
}

#[test]
fn help_never_shows_the_store_url() {
    let env = Env::new();
    let secret = "postgres://idem:s3cret@db.example/idem";
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = env
            .idem()
            .env("IDEM_DB", secret)
            .args(args)
            .output()
            .expect("idem");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            !help.contains("s3cret"),
            "idem {args:?} shows IDEM_DB:\n{help}"
        );
    }
}

#[test]
fn version() {
    let out = Env::new().idem().arg("--version").output().expect("idem");
    assert!(out.status.success());
    let expected = format!("idem {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
}

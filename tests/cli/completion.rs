//! The committed completions, run in the shells they are for: subcommands,
//! flags and their values; and after `idem run ... --`, COMMAND's words (a
//! command name, then files), never idem's own flags. bash is driven through
//! its completion function (`complete -p` names it), fish through its own
//! `complete -C`, and zsh as a user would, typing Tab into `zsh -i` on a pty.

use crate::support::{path_with_idem, pty::DRIVER, tool, Env};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory to complete in, holding `uniqfile-one.txt`, and a directory
/// for PATH holding the executable `idemzz-tool` (a name no system has).
struct Place {
    dir: TempDir,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["bin", "work", "home"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        let tool = dir.path().join("bin/idemzz-tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write the tool");
        let mut perms = std::fs::metadata(&tool).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&tool, perms).expect("chmod");
        std::fs::write(dir.path().join("work/uniqfile-one.txt"), "").expect("write a file");
        Place { dir }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// A shell started in `work`, with the tool on PATH and a home of its own.
    fn shell(&self, program: &str) -> Command {
        let mut path = vec![self.dir.path().join("bin")];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").expect("PATH"),
        ));
        let home = self.dir.path().join("home");
        let mut cmd = Command::new(program);
        cmd.current_dir(self.work())
            .env("PATH", std::env::join_paths(path).expect("PATH"))
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_CACHE_HOME", home.join(".cache"));
        cmd
    }
}

#[track_caller]
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("start the shell");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// What bash's completion for idem offers for the command line `words`,
/// the last of which is being completed.
fn bash_complete(place: &Place, words: &[&str]) -> Vec<String> {
    bash_complete_with(&mut place.shell("bash"), words)
}

/// The same, in `shell` (a bash with its own environment).
fn bash_complete_with(shell: &mut Command, words: &[&str]) -> Vec<String> {
    let script = r#"
        source "$IDEM_COMPLETIONS/idem.bash"
        function=$(complete -p idem | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        "$function" idem "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = output(
        shell
            .env("IDEM_COMPLETIONS", root().join("completions"))
            .args(["--norc", "--noprofile", "-c", script, "bash"])
            .args(words),
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `offered` holds any of idem's own options.
fn idem_flags(offered: &[String]) -> bool {
    offered.iter().any(|o| o == "--key" || o == "-k")
}

#[test]
fn bash_completion_loads() {
    output(
        Command::new("bash")
            .current_dir(root())
            .args(["-c", "source completions/idem.bash && complete -p idem"]),
    );
}

#[test]
fn bash_completes_subcommands_flags_and_values() {
    let place = Place::new();
    let offered = bash_complete(&place, &["idem", ""]);
    assert!(
        offered.contains(&"run".to_owned()),
        "idem <TAB>: {offered:?}"
    );

    let offered = bash_complete(&place, &["idem", "run", "--on-"]);
    for flag in ["--on-duplicate", "--on-failure", "--on-crash"] {
        assert!(
            offered.contains(&flag.to_owned()),
            "idem run --on-<TAB>: {offered:?}"
        );
    }

    let offered = bash_complete(&place, &["idem", "run", "--on-duplicate", ""]);
    assert_eq!(
        offered,
        ["replay", "fail", "wait", "skip"],
        "--on-duplicate <TAB>"
    );
}

#[test]
fn bash_completes_a_command_then_files_after_dashdash() {
    let place = Place::new();
    let offered = bash_complete(&place, &["idem", "run", "--", "idemzz-t"]);
    assert_eq!(offered, ["idemzz-tool"], "idem run -- idemzz-t<TAB>");

    let offered = bash_complete(
        &place,
        &["idem", "run", "-k", "a", "--", "idemzz-tool", "uniq"],
    );
    assert_eq!(
        offered,
        ["uniqfile-one.txt"],
        "idem run -- idemzz-tool uniq<TAB>"
    );

    for words in [
        &["idem", "run", "--", "--ke"][..],
        &["idem", "run", "-k", "a", "--", "idemzz-tool", "--ke"],
    ] {
        let offered = bash_complete(&place, words);
        assert!(!idem_flags(&offered), "{words:?}<TAB> offers {offered:?}");
    }
    // Before `--`, idem's flags as ever.
    let offered = bash_complete(&place, &["idem", "run", "--ke"]);
    assert_eq!(offered, ["--key"]);
}

/// A store holding the keys `deploy-1`, `deploy-2` and `report`, and a
/// place whose shells find idem on PATH and that store in IDEM_DB.
fn keyed_store() -> (Env, Place) {
    let env = Env::new();
    for key in ["deploy-1", "deploy-2", "report"] {
        env.run_ok(&["run", "-k", key, "--", "true"]);
    }
    (env, Place::new())
}

/// `place`'s `program` with idem on PATH and `env`'s store in IDEM_DB.
fn keyed_shell(env: &Env, place: &Place, program: &str) -> Command {
    let mut shell = place.shell(program);
    shell.env("PATH", path_with_idem()).env("IDEM_DB", &env.db);
    shell
}

#[test]
fn bash_completes_the_keys_in_the_store_after_logs_inspect_and_purge() {
    let (env, place) = keyed_store();
    for sub in ["logs", "inspect", "purge"] {
        let mut offered = bash_complete_with(
            &mut keyed_shell(&env, &place, "bash"),
            &["idem", sub, "dep"],
        );
        offered.sort();
        assert_eq!(offered, ["deploy-1", "deploy-2"], "idem {sub} dep<TAB>");
    }
    // The line's --db wins over IDEM_DB; options and their values are not keys.
    let mut elsewhere = keyed_shell(&env, &place, "bash");
    elsewhere.env("IDEM_DB", place.dir.path().join("other.db"));
    let offered = bash_complete_with(&mut elsewhere, &["idem", "--db", &env.db, "purge", "rep"]);
    assert_eq!(offered, ["report"], "idem --db DB purge rep<TAB>");
    let offered = bash_complete_with(
        &mut keyed_shell(&env, &place, "bash"),
        &["idem", "purge", "--status", ""],
    );
    assert!(
        !offered.iter().any(|o| o.starts_with("deploy")),
        "{offered:?}"
    );
    let offered = bash_complete_with(
        &mut keyed_shell(&env, &place, "bash"),
        &["idem", "logs", "--fo"],
    );
    assert_eq!(offered, ["--follow"]);
}

#[test]
#[ignore = "needs fish (.ci/run installs it)"]
fn fish_completes_the_keys_in_the_store_after_logs_inspect_and_purge() {
    tool("fish");
    let (env, place) = keyed_store();
    let script = r#"source "$IDEM_COMPLETIONS/idem.fish"; and complete -C "$argv[1]""#;
    for sub in ["logs", "inspect", "purge"] {
        let out = output(
            keyed_shell(&env, &place, "fish")
                .env("IDEM_COMPLETIONS", root().join("completions"))
                .args(["-c", script, &format!("idem {sub} dep")]),
        );
        let mut offered: Vec<&str> = out
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default())
            .collect();
        offered.sort_unstable();
        assert_eq!(offered, ["deploy-1", "deploy-2"], "idem {sub} dep<TAB>");
    }
}

/// What fish offers for `line` (its own `complete -C`), values only.
fn fish_complete(place: &Place, line: &str) -> Vec<String> {
    let script = r#"source "$IDEM_COMPLETIONS/idem.fish"; and complete -C "$argv[1]""#;
    let out = output(
        place
            .shell("fish")
            .env("IDEM_COMPLETIONS", root().join("completions"))
            .args(["-c", script, line]),
    );
    out.lines()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
#[ignore = "needs fish (.ci/run installs it)"]
fn fish_completes_a_command_then_files_after_dashdash() {
    tool("fish");
    let place = Place::new();
    assert_eq!(
        fish_complete(&place, "idem run -- idemzz-t"),
        ["idemzz-tool"]
    );
    assert_eq!(
        fish_complete(&place, "idem run -k a -- idemzz-tool uniq"),
        ["uniqfile-one.txt"]
    );
    for line in ["idem run -- --ke", "idem run -k a -- idemzz-tool --ke"] {
        // (fish matches command names loosely: it may offer some.)
        let offered = fish_complete(&place, line);
        assert!(!idem_flags(&offered), "{line}<TAB> offers {offered:?}");
    }
    assert_eq!(fish_complete(&place, "idem run --ke"), ["--key"]);
}

/// Types `line` and a Tab into `zsh -f -i` on a pty, with the committed
/// `_idem` on fpath and `idem` a function that prints its arguments (but
/// hands `idem completions` to the idem on PATH), then Enter: returns the
/// arguments the completed line ran idem with.
fn zsh_complete(place: &Place, line: &str) -> String {
    zsh_complete_in(&mut place.shell("python3"), line)
}

/// The same, from `driver` (python3 with its own environment).
fn zsh_complete_in(driver: &mut Command, line: &str) -> String {
    const TYPING: &str = r#"
completions, line = sys.argv[1], sys.argv[2]
start(["zsh", "-f", "-i"])
# The quotes keep the terminal's echo of a command from matching its output.
os.write(fd, ("unsetopt zle_bracketed_paste; PROMPT='P''> '; fpath=(%s $fpath); "
    "autoload -Uz compinit; compinit -u -D; "
    "idem() { if [[ $1 == completions ]]; then command idem \"$@\"; "
    "else print -r -- \"AR\"\"GS<$*>\"; fi }; print RE''ADY\n" % completions).encode())
until("READY")
until("P> ")
os.write(fd, line.encode() + b"\t")
# Completion writes into the line; Enter runs it once that is done.
time.sleep(0.2)
os.write(fd, b"\n")
until("ARGS<")
sys.stdout.write(until(">"))
os.write(fd, b"exit\n")
"#;
    let out = output(driver.args([
        "-c",
        &format!("{DRIVER}{TYPING}"),
        &root().join("completions").display().to_string(),
        line,
    ]));
    out.strip_suffix('>').unwrap_or(&out).to_owned()
}

#[test]
#[ignore = "needs zsh (.ci/run installs it)"]
fn zsh_completes_the_keys_in_the_store_after_logs_inspect_and_purge() {
    tool("zsh");
    let (env, place) = keyed_store();
    for (typed, ran) in [
        ("idem logs rep", "logs report"),
        ("idem inspect rep", "inspect report"),
        ("idem purge --dry-run rep", "purge --dry-run report"),
        ("idem logs deploy-", "logs deploy-"),
    ] {
        let got = zsh_complete_in(&mut keyed_shell(&env, &place, "python3"), typed);
        assert_eq!(got, ran, "{typed}<TAB>");
    }
}

#[test]
#[ignore = "needs zsh (.ci/run installs it)"]
fn zsh_completes_a_command_then_files_after_dashdash() {
    tool("zsh");
    tool("python3");
    let place = Place::new();
    for (typed, ran) in [
        ("idem run -- idemzz-t", "run -- idemzz-tool"),
        (
            "idem --db x run -q -- idemzz-t",
            "--db x run -q -- idemzz-tool",
        ),
        (
            "idem run -k a -- idemzz-tool uniq",
            "run -k a -- idemzz-tool uniqfile-one.txt",
        ),
        // After `--`, never idem's --key.
        ("idem run -- --ke", "run -- --ke"),
        (
            "idem run -k a -- idemzz-tool --ke",
            "run -k a -- idemzz-tool --ke",
        ),
        // Before it, idem's flags as ever.
        ("idem run --ke", "run --key"),
    ] {
        assert_eq!(zsh_complete(&place, typed), ran, "{typed}<TAB>");
    }
}

//! What ships besides the behaviour: `--help`, `--version`, and the committed
//! man pages, checked in the tools that read them and against what `--help`
//! and the binary itself say. (Whether the man pages and completions match
//! the CLI definition is the unit test in src/cmd/generated/; the completions
//! are run in their shells by the `completion` tests.)

use crate::support::{tool, Env};
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

#[test]
#[ignore = "needs mandoc (.ci/run installs it)"]
fn man_pages_pass_mandoc_lint() {
    // -Tlint reports style notes too; any output at all fails.
    run(Command::new(tool("mandoc")).arg("-Tlint").args(man_pages()));
}

#[test]
#[ignore = "needs groff (.ci/run installs it)"]
fn man_pages_render_without_warnings() {
    let groff = tool("groff");
    for page in man_pages() {
        let out = run(Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(&page));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SYNOPSIS"), "{}: {text}", page.display());
    }
}

/// The subcommands `idem --help` lists (but `help`).
fn subcommands() -> Vec<String> {
    let help = help(&["--help"]);
    let listed = help
        .split("Commands:\n")
        .nth(1)
        .expect("idem --help lists commands");
    listed
        .lines()
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// `idem ARGS`'s standard output (for --help).
fn help(args: &[&str]) -> String {
    let out = Env::new().idem().args(args).output().expect("idem");
    assert!(out.status.success(), "idem {args:?}: {}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// A man page as `man` shows it, in plain text, one line per paragraph line.
fn rendered(page: &str) -> String {
    let out = run(Command::new("mandoc")
        .args(["-T", "ascii", "-O", "width=1000"])
        .arg(root().join("man").join(page)));
    // Bold and underline are overstrikes: a character, a backspace, and the
    // character shown.
    let mut text = String::new();
    for c in String::from_utf8(out.stdout).expect("ASCII").chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

/// The lines of section `name` (indented, up to the next heading).
fn section(page: &str, name: &str) -> Vec<String> {
    let text = rendered(page);
    let mut lines = text.lines().skip_while(|line| *line != name);
    assert!(
        lines.next().is_some(),
        "{page} has no {name} section:\n{text}"
    );
    lines
        .take_while(|line| line.is_empty() || line.starts_with(' '))
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

/// Each option `--help` shows in its options sections (`Options:`, `Global
/// options:`), as the SYNOPSIS should show it: `--key KEY`, `--cwd`.
fn options_in_help(args: &[&str]) -> Vec<String> {
    let help = help(args);
    let mut options = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_options = line.ends_with("ptions:");
            continue;
        }
        // An option starts a line, indented less than its description.
        let indent = line.len() - line.trim_start().len();
        if !in_options || indent > 6 || !line.trim_start().starts_with('-') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| w.starts_with("--")) else {
            continue;
        };
        let long = words[at].trim_end_matches(',');
        if long == "--help" || long == "--version" {
            continue;
        }
        match words.get(at + 1).filter(|w| w.starts_with('<')) {
            Some(value) => options.push(format!("{long} {}", value.trim_matches(['<', '>']))),
            None => options.push(long.to_owned()),
        }
    }
    assert!(!options.is_empty(), "idem {args:?} shows no options");
    options
}

#[test]
#[ignore = "needs mandoc (.ci/run installs it)"]
fn man_synopsis_shows_each_option_with_its_argument() {
    tool("mandoc");
    let mut pages = vec![("idem.1".to_owned(), vec!["--help".to_owned()])];
    for sub in subcommands() {
        pages.push((format!("idem-{sub}.1"), vec![sub, "--help".to_owned()]));
    }
    for (page, args) in pages {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let synopsis = section(&page, "SYNOPSIS").join(" ");
        for option in options_in_help(&args) {
            assert!(
                synopsis.contains(&format!("{option}]"))
                    || synopsis.contains(&format!("{option}]...")),
                "{page}: the SYNOPSIS lacks {option}: {synopsis}"
            );
        }
    }
    let synopsis = section("idem-run.1", "SYNOPSIS").join(" ");
    assert!(synopsis.contains("[-k|--key KEY]"), "{synopsis}");
    assert!(synopsis.contains("[--env NAME]..."), "{synopsis}");
    assert!(synopsis.ends_with("[--] COMMAND..."), "{synopsis}");
}

/// The statuses a page's EXIT STATUS lists.
fn exit_statuses(page: &str) -> Vec<u8> {
    section(page, "EXIT STATUS")
        .iter()
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The variables a page's ENVIRONMENT names.
fn variables(page: &str) -> Vec<String> {
    section(page, "ENVIRONMENT")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs mandoc (.ci/run installs it)"]
fn each_subcommand_page_has_its_own_exit_status_and_environment() {
    tool("mandoc");
    let env = Env::new();
    for sub in subcommands() {
        let page = format!("idem-{sub}.1");
        // A usage error exits 2, and the page says so.
        let out = env
            .idem()
            .args([&sub, "--no-such-flag"])
            .output()
            .expect("idem");
        assert_eq!(out.status.code(), Some(2));
        let statuses = exit_statuses(&page);
        assert!(statuses.contains(&2), "{page}: {statuses:?}");
        assert!(statuses.contains(&125), "{page}: {statuses:?}");
        // Every variable --help names is in the page.
        let variables = variables(&page);
        for line in help(&[&sub, "--help"]).lines() {
            if let Some(var) = line.trim().strip_prefix("[env: ") {
                let var = var
                    .trim_end_matches(']')
                    .split('=')
                    .next()
                    .unwrap_or_default();
                assert!(
                    variables.iter().any(|v| v == var),
                    "{page} lacks {var}: {variables:?}"
                );
            }
        }
        assert!(
            variables.contains(&"XDG_STATE_HOME".to_owned()),
            "{page}: {variables:?}"
        );
    }

    // What the binary does is on the page of the subcommand that does it,
    // and what another subcommand does is not.
    let out = env
        .idem()
        .args(["inspect", "no-such-key"])
        .output()
        .expect("idem");
    assert_eq!(out.status.code(), Some(1));
    assert!(exit_statuses("idem-inspect.1").contains(&1));
    let out = env
        .idem()
        .args(["run", "--", "/no/such/command"])
        .output()
        .expect("idem");
    assert_eq!(out.status.code(), Some(127));
    let run = exit_statuses("idem-run.1");
    for code in [65, 75, 76, 77, 124, 126, 127] {
        assert!(run.contains(&code), "idem-run.1 lacks {code}: {run:?}");
    }
    assert!(
        !run.contains(&0),
        "0 is COMMAND's status in idem-run.1: {run:?}"
    );
    let inspect = exit_statuses("idem-inspect.1");
    assert!(
        !inspect.contains(&127) && inspect.contains(&0),
        "{inspect:?}"
    );
    assert!(exit_statuses("idem-purge.1").contains(&75));

    let run = variables("idem-run.1");
    for var in [
        "IDEM_DB",
        "IDEM_TTL",
        "IDEM_REPORT",
        "IDEM_KEY",
        "IDEM_ATTEMPT",
        "PATH",
    ] {
        assert!(
            run.iter().any(|v| v == var),
            "idem-run.1 lacks {var}: {run:?}"
        );
    }
    let stats = variables("idem-stats.1");
    assert!(stats.iter().any(|v| v == "IDEM_DB"), "{stats:?}");
    for var in ["IDEM_TTL", "IDEM_KEY", "PATH"] {
        assert!(
            !stats.iter().any(|v| v == var),
            "idem-stats.1 has {var}: {stats:?}"
        );
    }
}

#[test]
fn nothing_shipped_points_at_a_file_the_user_lacks() {
    let mut texts: Vec<(String, String)> = Vec::new();
    for dir in ["man", "completions"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let text = std::fs::read_to_string(&path).expect("text");
            texts.push((path.display().to_string(), text));
        }
    }
    texts.push(("idem --help".to_owned(), help(&["--help"])));
    for sub in subcommands() {
        texts.push((format!("idem {sub} --help"), help(&[&sub, "--help"])));
    }
    for (name, text) in &texts {
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '/'));
        for word in words {
            let word = word.trim_end_matches('.');
            assert!(
                !matches!(word, "SPEC" | "README")
                    && !word.ends_with(".md")
                    && !word.starts_with("docs/"),
                "{name} points at {word}"
            );
        }
        // Every idem page a text names is shipped.
        for (at, _) in text.match_indices("idem\\-") {
            let page: String = text[at..]
                .replace("\\-", "-")
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            let cited = text[at..]
                .split_once(page.replace('-', "\\-").as_str())
                .map(|(_, rest)| rest);
            if cited.is_some_and(|rest| rest.starts_with("\\fR(1)") || rest.starts_with("(1)")) {
                assert!(
                    root().join("man").join(format!("{page}.1")).is_file(),
                    "{name} cites {page}(1)"
                );
            }
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
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "idem {args:?}: {out:?}"
        );
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Usage:"), "idem {args:?}: {help}");
        assert!(
            !help.contains("s3cret"),
            "idem {args:?} shows IDEM_DB:\n{help}"
        );
    }
}

/// `--help` of idem and of every subcommand.
fn every_help() -> Vec<(String, String)> {
    let mut all = vec![("--help".to_owned(), help(&["--help"]))];
    for sub in subcommands() {
        all.push((format!("{sub} --help"), help(&[&sub, "--help"])));
    }
    all
}

#[test]
fn help_never_shows_an_unset_variable_as_empty() {
    for (args, text) in every_help() {
        assert!(!text.contains("=]"), "idem {args}:\n{text}");
    }
    let run = help(&["run", "--help"]);
    for needle in [
        "[env: IDEM_REPORT]",
        "[env: IDEM_LEASE]",
        "[env: IDEM_LOG_FORMAT]",
    ] {
        assert!(
            run.contains(needle),
            "idem run --help lacks {needle}:\n{run}"
        );
    }
}

#[test]
fn the_binary_prints_the_shipped_man_pages_and_completions_byte_for_byte() {
    let env = Env::new();
    let printed = |args: &[&str]| {
        let out = env.idem().args(args).output().expect("idem");
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "idem {args:?}: {out:?}"
        );
        out.stdout
    };
    for page in man_pages() {
        let name = page.file_stem().unwrap().to_str().unwrap().to_owned();
        let args: Vec<&str> = match name.strip_prefix("idem-") {
            Some(sub) => vec!["man", sub],
            None => vec!["man"],
        };
        let shipped = std::fs::read(&page).unwrap();
        assert!(
            printed(&args) == shipped,
            "idem {args:?} differs from {}",
            page.display()
        );
    }
    for (shell, file) in [
        ("bash", "idem.bash"),
        ("zsh", "_idem"),
        ("fish", "idem.fish"),
    ] {
        let shipped = std::fs::read(root().join("completions").join(file)).unwrap();
        assert!(
            printed(&["completions", shell]) == shipped,
            "idem completions {shell} differs from completions/{file}"
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

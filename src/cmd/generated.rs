//! The man pages in `man/` and the shell completions in `completions/` are
//! generated from the CLI definition and committed, so users get them
//! without a build step. `committed_files_are_current` regenerates them into
//! a temporary directory and fails if a committed copy differs;
//! `IDEM_UPDATE_GENERATED=1 cargo test` rewrites them instead.
//!
//! This is a unit test of the binary because the generators (clap_mangen,
//! clap_complete) are dev-dependencies: they never ship in `idem` itself.

use super::Cli;
use clap::{Command, CommandFactory};
use clap_complete::{Generator, Shell};
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// The directories this module owns entirely: anything else in them is stale.
const DIRS: [&str; 2] = ["man", "completions"];

/// What idem.1's EXIT STATUS says before its list.
const EXIT_INTRO: &str = "idem exits with the status of COMMAND when COMMAND ran or its stored \
    result was replayed, and with 128 + N when COMMAND died of signal N. Every other status is \
    chosen by idem and comes with one line on standard error, starting with idem:, that says what \
    happened and what to do.";

/// idem.1's EXIT STATUS list, after the child's own status.
#[rustfmt::skip] // a table reads better one row a line
const EXIT_STATUS: &[(&str, &str)] = &[
    ("1", "idem inspect KEY: there is no record for KEY. idem check: a check failed."),
    ("2", "Usage error: a bad flag, duration or size, an empty command, a bad key."),
    ("65", "The key was used before with a different fingerprint (see --allow-mismatch). \
        Nothing ran."),
    ("75", "The key is in progress elsewhere: no --on-duplicate wait, \
        or --wait-timeout ran out."),
    ("76", "The key already completed and --on-duplicate fail was given."),
    ("77", "An earlier owner crashed mid-run and --on-crash block was given: \
        check its side effects, then idem purge KEY."),
    ("124", "--timeout ran out."),
    ("125", "idem itself failed: the store is unreadable, corrupt, of a newer schema, or full; or the server cannot be reached."),
    ("126", "COMMAND was found but is not executable."),
    ("127", "COMMAND was not found."),
];

/// idem.1's ENVIRONMENT list: what idem reads, then what COMMAND gets.
#[rustfmt::skip]
const ENVIRONMENT: &[(&str, &str)] = &[
    ("IDEM_DB", "The store, when --db is not given: \
        a file path (SQLite) or a postgres:// or redis:// URL."),
    ("IDEM_TTL", "The default for idem run --ttl."),
    ("XDG_STATE_HOME", "Where the default store lives (see FILES)."),
    ("IDEM_KEY", "Set for COMMAND: the key it runs under, \
        to pass on as a downstream API's idempotency key."),
    ("IDEM_ATTEMPT", "Set for COMMAND: 1 for the first run of a record, \
        one more for each re-run after a failure or a crash."),
    ("IDEM_FENCING_TOKEN", "Set for COMMAND on a shared (PostgreSQL or Redis) store: \
        the claim's fencing token, which grows with every claim of the key."),
];

/// idem.1's FILES list.
const FILES: &[(&str, &str)] = &[(
    "$XDG_STATE_HOME/idem/idem.db",
    "The default store, an SQLite file; ~/.local/state/idem/idem.db when XDG_STATE_HOME \
    is unset. A new directory is created with mode 0700 and a new file with mode 0600: \
    stored output can hold secrets.",
)];

/// The date in every page's header: the release date of the version in
/// Cargo.toml. Change the two together.
const DATE: &str = "2026-11-23";

/// `mandoc -Tlint` asks for text lines of at most this many bytes.
const LINE: usize = 80;

/// Every generated file as (path relative to the crate root, contents).
fn generate() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = man_pages();
    let mut cli = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli, "idem", &mut script);
        files.push((
            Path::new("completions").join(shell.file_name("idem")),
            script,
        ));
    }
    files
}

/// idem.1 with the sections that belong to the whole tool, and one page per
/// subcommand, each pointing back to idem.1.
fn man_pages() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut names: Vec<String> = cli
        .get_subcommands()
        .map(|sub| format!("idem-{}", sub.get_name()))
        .collect();

    let mut sections = Roff::new();
    sections
        .control("SH", ["EXIT STATUS"])
        .text([roman(EXIT_INTRO)]);
    list(&mut sections, EXIT_STATUS);
    sections.control("SH", ["ENVIRONMENT"]);
    list(&mut sections, ENVIRONMENT);
    sections.control("SH", ["FILES"]);
    list(&mut sections, FILES);
    names.extend(["flock".to_owned(), "timeout".to_owned()]);
    see_also(&mut sections, &names);
    let mut pages = vec![man_page(&cli, &sections)];

    for sub in cli.get_subcommands() {
        let mut sections = Roff::new();
        after_help(&mut sections, sub);
        see_also(&mut sections, &["idem".to_owned()]);
        pages.push(man_page(sub, &sections));
    }
    pages
}

/// clap_mangen's page for `cmd`, with `sections` in place of its EXTRA
/// (after_help) and VERSION sections; the version stays in the header.
fn man_page(cmd: &Command, sections: &Roff) -> (PathBuf, Vec<u8>) {
    let name = cmd.get_display_name().unwrap_or("idem").to_owned();
    let bare = cmd
        .clone()
        .version(None)
        .after_help(None)
        .after_long_help(None);
    let man = Man::new(bare)
        .title(name.to_uppercase())
        .date(DATE)
        .source(format!("idem {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    let mut page = Vec::new();
    man.render(&mut page).expect("render into memory");
    let mut page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    // Both renderings open with the same preamble (the apostrophe string);
    // the page already has it.
    let preamble = Roff::new().render();
    let sections = sections.render();
    page.push_str(sections.strip_prefix(&preamble).unwrap_or(&sections));
    (
        Path::new("man").join(format!("{name}.1")),
        tidy(&page).into_bytes(),
    )
}

/// Makes clap_mangen's output pass `mandoc -Tlint`: no trailing blanks;
/// text lines wrapped at `LINE` bytes (roff joins them again), except in
/// `.EX` examples, which are shown as written; and one `.sp` where clap_mangen
/// puts `.br`, a blank line and `.br` before a list of possible values.
fn tidy(page: &str) -> String {
    let page = page.replace("\n.br\n\n.br\n", "\n.sp\n");
    let mut out = String::new();
    let mut verbatim = false;
    for line in page.lines().map(str::trim_end) {
        match line {
            ".EX" => verbatim = true,
            ".EE" => verbatim = false,
            _ => {}
        }
        if verbatim || line.starts_with('.') || line.len() <= LINE {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut width = 0;
        for word in line.split(' ') {
            if width > 0 && width + 1 + word.len() > LINE {
                out.push('\n');
                width = 0;
            } else if width > 0 {
                out.push(' ');
                width += 1;
            }
            // A text line must not start with a control character.
            if width == 0 && (word.starts_with('.') || word.starts_with('\'')) {
                out.push_str("\\&");
                width += 2;
            }
            out.push_str(word);
            width += word.len();
        }
        out.push('\n');
    }
    out
}

/// Tagged paragraphs: the term in bold, its text below.
fn list(roff: &mut Roff, items: &[(&str, &str)]) {
    for (term, text) in items {
        roff.control("TP", [])
            .text([bold(*term)])
            .text([roman(*text)]);
    }
}

/// A subcommand's after_help as man sections. A line like `Examples:`
/// (unindented, ending in a colon) starts a section of that name whose lines
/// are shown as they are in `--help`; text before any such line is NOTES.
fn after_help(roff: &mut Roff, cmd: &Command) {
    let Some(help) = cmd.get_after_help().map(ToString::to_string) else {
        return;
    };
    let (mut open, mut verbatim, mut blank) = (false, false, false);
    for line in help.lines() {
        if line.is_empty() {
            blank = open;
            continue;
        }
        if let Some(heading) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            if verbatim {
                roff.control("EE", []);
            }
            let heading = heading.to_uppercase();
            roff.control("SH", [heading.as_str()]).control("EX", []);
            (open, verbatim) = (true, true);
        } else {
            if !open {
                roff.control("SH", ["NOTES"]);
                open = true;
            }
            if blank && verbatim {
                roff.text([roman("")]);
            } else if blank {
                roff.control("PP", []);
            }
            let line = if verbatim {
                line.strip_prefix("  ").unwrap_or(line)
            } else {
                line
            };
            roff.text([roman(line)]);
        }
        blank = false;
    }
    if verbatim {
        roff.control("EE", []);
    }
}

/// The pages a reader goes to next, all in section 1.
fn see_also(roff: &mut Roff, pages: &[String]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let sep = if i + 1 < pages.len() { "(1), " } else { "(1)" };
        line.extend([bold(page.as_str()), roman(sep)]);
    }
    roff.text(line);
}

#[test]
fn committed_files_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("IDEM_UPDATE_GENERATED").is_some() {
        for dir in DIRS {
            let _ = fs::remove_dir_all(root.join(dir));
        }
        write_all(root);
        return;
    }
    let fresh = tempfile::tempdir().expect("temp dir");
    write_all(fresh.path());
    let mut stale = Vec::new();
    for dir in DIRS {
        let mut names = file_names(&root.join(dir));
        names.extend(file_names(&fresh.path().join(dir)));
        for name in names {
            let path = Path::new(dir).join(name);
            if fs::read(root.join(&path)).ok() != fs::read(fresh.path().join(&path)).ok() {
                stale.push(path.display().to_string());
            }
        }
    }
    if !stale.is_empty() {
        let kept = fresh.keep();
        panic!(
            "generated files differ from the CLI definition: {}\n\
             fresh copies are in {dir}/man and {dir}/completions (diff -ru man {dir}/man);\n\
             rewrite them with: IDEM_UPDATE_GENERATED=1 cargo test committed_files_are_current",
            stale.join(", "),
            dir = kept.display()
        );
    }
}

/// The names of the files in `dir`; none if it does not exist.
fn file_names(dir: &Path) -> BTreeSet<OsString> {
    let entries = fs::read_dir(dir).into_iter().flatten();
    entries.map(|e| e.expect("dir entry").file_name()).collect()
}

/// Writes every generated file under `base`.
fn write_all(base: &Path) {
    for (path, contents) in generate() {
        let path = base.join(path);
        fs::create_dir_all(path.parent().expect("a parent dir")).expect("create dir");
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

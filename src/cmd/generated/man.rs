//! The man pages: clap_mangen's NAME, DESCRIPTION and OPTIONS, with a
//! SYNOPSIS that shows each option's argument, and on every page the EXIT
//! STATUS, ENVIRONMENT and FILES of that subcommand alone. Exit statuses come
//! from `crate::exit::MEANINGS`, variables from the flags' `env` attributes
//! and from `ENVIRONMENT` below, so a new subcommand or flag gets its sections
//! without a change here.

use crate::cmd::Cli;
use crate::exit::{Status, CHOSEN, MEANINGS};
use clap::{Arg, ArgAction, Command, CommandFactory};
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;
use std::path::{Path, PathBuf};

/// The variables idem reads or sets that are not a flag's `env`, with the
/// subcommands that use them (none: every one, as every one opens a store).
/// `every_variable_is_documented` finds the ones the code reads.
#[rustfmt::skip]
pub const ENVIRONMENT: &[(&str, &[&str], &str)] = &[
    ("XDG_STATE_HOME", &[], "Where the default store lives (see FILES)."),
    ("HOME", &[], "Where the default store lives when XDG_STATE_HOME is unset or empty."),
    ("PGHOST", &[], "PostgreSQL: the host, or a Unix socket directory, \
        when a postgres:// URL names none."),
    ("PGPORT", &[], "PostgreSQL: the port when a postgres:// URL names none."),
    ("PGDATABASE", &[], "PostgreSQL: the database when a postgres:// URL names none."),
    ("PGUSER", &[], "PostgreSQL: the user when a postgres:// URL names none; \
        default: the login name."),
    ("PGPASSWORD", &[], "PostgreSQL: the password when a postgres:// URL has none; \
        else the password file's."),
    ("PGPASSFILE", &[], "PostgreSQL: the password file; default: ~/.pgpass."),
    ("PGSSLMODE", &[], "PostgreSQL: sslmode (disable, prefer, require, verify-ca, \
        verify-full) when the URL has none."),
    ("PGSSLROOTCERT", &[], "PostgreSQL: sslrootcert, the file of CA certificates \
        (or system), when the URL has none."),
    ("PGSSLCERT", &[], "PostgreSQL: sslcert, the client certificate file, \
        when the URL has none."),
    ("PGSSLKEY", &[], "PostgreSQL: sslkey, the client key file, when the URL has none."),
    ("REDISCLI_AUTH", &[], "Redis: the password when a redis:// or rediss:// URL has none."),
    ("NO_COLOR", &["inspect"], "When set and not empty, the table has no colours."),
    ("PATH", &["run"], "Where COMMAND is looked up when its name has no slash."),
    ("IDEM_KEY", &["run"], "Set for COMMAND: the key it runs under, \
        to pass on as a downstream API's idempotency key."),
    ("IDEM_ATTEMPT", &["run"], "Set for COMMAND: 1 for the first run of a record, \
        one more for each re-run after a failure or a crash."),
    ("IDEM_FENCING_TOKEN", &["run"], "Set for COMMAND on a shared (PostgreSQL or Redis) store: \
        the claim's fencing token, which grows with every claim of the key."),
];

/// What `idem run` sets for COMMAND among the flags' variables.
const PASSED_ON: &[(&str, &str)] = &[
    (
        "IDEM_DB",
        " idem run sets it for COMMAND to the store in use (as given), so that \
        an idem run inside COMMAND, a step of a job, uses the same store.",
    ),
    (
        "IDEM_LEASE",
        " idem run sets it for COMMAND, so that the steps inside it hold \
        their claims by the same lease.",
    ),
];

/// The FILES section, with the subcommands it is about (none: every one).
#[rustfmt::skip]
const FILES: &[(&str, &[&str], &str)] = &[
    ("$XDG_STATE_HOME/idem/idem.db", &[], "The default store, an SQLite file; \
        ~/.local/state/idem/idem.db when XDG_STATE_HOME is unset. A new directory is created \
        with mode 0700 and a new file with mode 0600: stored output can hold secrets."),
    ("$XDG_STATE_HOME/idem/idem.db-replays", &["run", "inspect", "stats", "purge"], "Replay \
        counts not yet added to the store beside it: a replay appends one line here instead of \
        writing the store. A purge adds them in and empties the file; losing it loses only \
        those counts."),
    ("$XDG_STATE_HOME/idem/idem.db-locks", &["run", "inspect", "stats", "purge"], "The \
        owners' locks: a running idem holds a lock on one byte of it, named in its record, \
        until its command's process group is gone; whoever reads the record asks the kernel \
        whether that byte is locked. Never remove it while idem runs."),
    ("~/.pgpass", &[], "PostgreSQL: passwords for what a postgres:// URL and PGPASSWORD leave \
        out, as libpq reads them (ignored, with a notice, when others may read it)."),
];

/// Pages of other tools that idem.1 points at (util-linux, coreutils).
const RELATED: [&str; 2] = ["flock", "timeout"];

/// The date in every page's header: the release date of the version in
/// Cargo.toml. Change the two together.
const DATE: &str = "2026-11-23";

/// `mandoc -Tlint` asks for text lines of at most this many bytes.
const LINE: usize = 80;

/// Stand for a space the SYNOPSIS must not break at, and for "not the end of
/// a sentence" after its `...`, until `tidy` writes them as roff's `\ ` and
/// `\&` (the roff crate would escape the backslash).
const NO_BREAK: char = '\u{a0}';
const NOT_THE_END: char = '\u{200b}';

/// idem.1, which lists everything, and one page per subcommand, each with
/// only what is about it.
pub fn pages() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let subs: Vec<&Command> = cli.get_subcommands().filter(|s| !s.is_hide_set()).collect();
    let mut pages = vec![page(&cli, &Scope::Everything(&subs))];
    for sub in &subs {
        pages.push(page(sub, &Scope::Subcommand(sub.get_name())));
    }
    pages
}

/// Which subcommands a page is about.
enum Scope<'a> {
    /// idem.1: every subcommand; what is about some only says which.
    Everything(&'a [&'a Command]),
    Subcommand(&'a str),
}

impl Scope<'_> {
    /// How `text`, about the subcommands `names` (none: all), appears on
    /// this page: not at all, as it is, or after the names it is about.
    fn show(&self, names: &[&str], text: &str) -> Option<String> {
        match self {
            Scope::Subcommand(name) => {
                (names.is_empty() || names.contains(name)).then(|| text.to_owned())
            }
            Scope::Everything(_) if names.is_empty() => Some(text.to_owned()),
            Scope::Everything(_) => Some(format!("idem {}: {text}", names.join(", idem "))),
        }
    }
}

/// One page: clap_mangen's sections where they serve, ours where they do not.
fn page(cmd: &Command, scope: &Scope) -> (PathBuf, Vec<u8>) {
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
    let mut page = Roff::new().render();
    let section = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
        let mut out = Vec::new();
        render(&mut out).expect("render into memory");
        let out = String::from_utf8(out).expect("clap_mangen writes UTF-8");
        out.strip_prefix(&Roff::new().render())
            .expect("each rendering opens with the preamble")
            .to_owned()
    };
    page.push_str(&section(&|w| man.render_title(w)));
    page.push_str(&section(&|w| man.render_name_section(w)));
    page.push_str(&render(&synopsis(cmd)));
    page.push_str(&section(&|w| man.render_description_section(w)));
    page.push_str(&section(&|w| man.render_options_section(w)));
    let mut roff = Roff::new();
    match scope {
        Scope::Everything(_) => {
            page.push_str(&section(&|w| man.render_subcommands_section(w)));
        }
        Scope::Subcommand(_) => after_help(&mut roff, cmd),
    }
    exit_status(&mut roff, scope);
    environment(&mut roff, cmd, scope);
    roff.control("SH", ["FILES"]);
    for (file, names, text) in FILES {
        if let Some(text) = scope.show(names, text) {
            list_item(&mut roff, file, &text);
        }
    }
    see_also(&mut roff, scope);
    page.push_str(&render(&roff));
    (
        Path::new("man").join(format!("{name}.1")),
        tidy(&page).into_bytes(),
    )
}

/// A Roff's lines without the preamble every rendering opens with.
fn render(roff: &Roff) -> String {
    let text = roff.render();
    text.strip_prefix(&Roff::new().render())
        .unwrap_or(&text)
        .to_owned()
}

/// `idem run [-k|--key KEY] ... [--env NAME]... -- COMMAND...`: every option
/// with its argument, the command's own before the global ones; one per line
/// under `.SY`, so a long synopsis wraps with a hanging indent.
fn synopsis(cmd: &Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    let bin = cmd.get_bin_name().unwrap_or("idem");
    roff.control("SY", [bin]);
    let shown = |arg: &&Arg| {
        !arg.is_hide_set()
            && !arg.is_positional()
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    };
    let (global, own): (Vec<&Arg>, Vec<&Arg>) = cmd
        .get_arguments()
        .filter(shown)
        .partition(|arg| arg.is_global_set());
    for arg in own.into_iter().chain(global) {
        let mut item = Vec::new();
        if !arg.is_required_set() {
            item.push(roman("["));
        }
        match (arg.get_short(), arg.get_long()) {
            (Some(short), Some(long)) => {
                item.extend([
                    bold(format!("-{short}")),
                    roman("|"),
                    bold(format!("--{long}")),
                ]);
            }
            (Some(short), None) => item.push(bold(format!("-{short}"))),
            (None, Some(long)) => item.push(bold(format!("--{long}"))),
            (None, None) => continue,
        }
        if arg.get_num_args().is_some_and(|n| n.takes_values()) {
            item.push(roman(NO_BREAK.to_string()));
            item.push(italic(value_name(arg)));
        }
        if !arg.is_required_set() {
            item.push(roman("]"));
        }
        if matches!(arg.get_action(), ArgAction::Append | ArgAction::Count) {
            item.push(roman(format!("...{NOT_THE_END}")));
        }
        roff.text(item);
    }
    for arg in cmd.get_positionals().filter(|arg| !arg.is_hide_set()) {
        let mut item = Vec::new();
        if !arg.is_required_set() {
            item.push(roman("["));
        }
        if arg.is_last_set() {
            item.extend([bold("--"), roman(NO_BREAK.to_string())]);
        } else if arg.is_trailing_var_arg_set() {
            item.extend([roman("["), bold("--"), roman(format!("]{NO_BREAK}"))]);
        }
        item.push(italic(value_name(arg)));
        if arg.get_num_args().is_some_and(|n| n.max_values() > 1) {
            item.push(roman(format!("...{NOT_THE_END}")));
        }
        if !arg.is_required_set() {
            item.push(roman("]"));
        }
        roff.text(item);
    }
    if cmd.has_subcommands() {
        let name = cmd.get_subcommand_value_name().unwrap_or("SUBCOMMAND");
        roff.text([italic(name)]);
    }
    roff.control("YS", []);
    roff
}

/// What `--help` calls the argument's value: its value_name, else its id.
fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .map(|names| names.join(" "))
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// The statuses this page's subcommands exit with, from `MEANINGS`.
fn exit_status(roff: &mut Roff, scope: &Scope) {
    roff.control("SH", ["EXIT STATUS"]).text([roman(CHOSEN)]);
    // Where COMMAND's own status is the answer, 0 is one of its values.
    let child = MEANINGS
        .iter()
        .any(|m| matches!(m.status, Status::Child) && scope.show(m.commands, "").is_some());
    for meaning in MEANINGS {
        let Some(text) = scope.show(meaning.commands, meaning.text) else {
            continue;
        };
        match meaning.status.number() {
            None => {
                roff.control("PP", []).text([roman(meaning.text)]);
            }
            Some(0) if child && matches!(scope, Scope::Subcommand(_)) => {}
            Some(n) => list_item(roff, &n.to_string(), &text),
        }
    }
}

/// The variables this page's subcommands read or set: their flags' `env`
/// first, then those of `ENVIRONMENT` that are about them.
fn environment(roff: &mut Roff, cmd: &Command, scope: &Scope) {
    roff.control("SH", ["ENVIRONMENT"]);
    let mut flags: Vec<(String, String, Vec<&str>)> = Vec::new();
    let commands: Vec<&Command> = match scope {
        Scope::Everything(subs) => subs.to_vec(),
        Scope::Subcommand(_) => vec![cmd],
    };
    for sub in &commands {
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
                continue;
            };
            let var = var.to_string_lossy().into_owned();
            match flags.iter_mut().find(|(name, ..)| *name == var) {
                Some((.., users)) => users.push(sub.get_name()),
                None => {
                    let passed = PASSED_ON.iter().find(|(name, _)| *name == var);
                    let passed = passed.map_or("", |(_, text)| text);
                    flags.push((
                        var,
                        format!("The value of --{long} when it is not given.{passed}"),
                        vec![sub.get_name()],
                    ));
                }
            }
        }
    }
    for (var, text, users) in &flags {
        let users: &[&str] = if users.len() == commands.len() {
            &[]
        } else {
            users
        };
        if let Some(text) = scope.show(users, text) {
            list_item(roff, var, &text);
        }
    }
    for (var, names, text) in ENVIRONMENT {
        if let Some(text) = scope.show(names, text) {
            list_item(roff, var, &text);
        }
    }
}

/// A tagged paragraph: the term in bold, its text below.
fn list_item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", [])
        .text([bold(term)])
        .text([roman(text)]);
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

/// The pages a reader goes to next, all in section 1: from idem.1 every
/// subcommand's and a few related tools'; from a subcommand's, idem.1.
fn see_also(roff: &mut Roff, scope: &Scope) {
    let pages: Vec<String> = match scope {
        Scope::Everything(subs) => subs
            .iter()
            .map(|sub| format!("idem-{}", sub.get_name()))
            .chain(RELATED.map(str::to_owned))
            .collect(),
        Scope::Subcommand(_) => vec!["idem".to_owned()],
    };
    roff.control("SH", ["SEE ALSO"]);
    let mut line: Vec<Inline> = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        let sep = if i + 1 < pages.len() { "(1), " } else { "(1)" };
        line.extend([bold(page.as_str()), roman(sep)]);
    }
    roff.text(line);
}

/// Makes the page pass `mandoc -Tlint`: no trailing blanks; text lines
/// wrapped at `LINE` bytes (roff joins them again), except in `.EX` examples,
/// which are shown as written; one `.sp` where clap_mangen puts `.br`, a blank
/// line and `.br` before a list of possible values; `NO_BREAK` and
/// `NOT_THE_END` as roff writes them.
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
    out.replace(NO_BREAK, "\\ ").replace(NOT_THE_END, "\\&")
}

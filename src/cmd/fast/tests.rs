//! The fast path against clap's definition: the table walked against
//! `Cli::command()`, then lines and variables read by both.

use super::*;
use clap::{ArgAction, CommandFactory, Parser};
use std::sync::Mutex;

/// Serialises the tests that set idem's variables in this process (clap
/// reads them there).
static ENVIRONMENT: Mutex<()> = Mutex::new(());

fn argv(line: &[&str]) -> Vec<OsString> {
    std::iter::once("idem")
        .chain(line.iter().copied())
        .map(OsString::from)
        .collect()
}

fn no_variables(_: &str) -> Option<OsString> {
    None
}

/// Wherever the fast path answers, clap must answer the same; `true` when
/// the fast path answered. Runs with none of the table's variables set.
fn agrees(line: &[&str]) -> bool {
    let _unset = Unset::all();
    let argv = argv(line);
    let fast = parse(&argv, &no_variables);
    let clap = Cli::try_parse_from(&argv);
    match (&fast, &clap) {
        (Some(fast), Ok(clap)) => {
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{line:?}");
            true
        }
        (Some(fast), Err(e)) => panic!("{line:?}: fast path said {fast:?}, clap: {e}"),
        (None, _) => false,
    }
}

/// Holds the environment lock with every variable of the table unset, and
/// puts them back when dropped.
struct Unset {
    saved: Vec<(&'static str, OsString)>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Unset {
    fn all() -> Unset {
        let lock = ENVIRONMENT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut saved = Vec::new();
        for var in OPTIONS.iter().filter_map(|o| o.env) {
            if let Some(value) = std::env::var_os(var) {
                saved.push((var, value));
            }
            std::env::remove_var(var);
        }
        Unset { saved, _lock: lock }
    }
}

impl Drop for Unset {
    fn drop(&mut self) {
        for (var, value) in &self.saved {
            std::env::set_var(var, value);
        }
    }
}

/// An option as the table describes it: long name, aliases, short name,
/// how it takes values, variable, defaults, global.
type Described = (
    String,
    Vec<String>,
    Option<char>,
    &'static str,
    Option<String>,
    Vec<String>,
    bool,
);

/// What clap's definition says of one option, in the table's terms.
fn from_clap(arg: &clap::Arg) -> Described {
    let takes = match arg.get_action() {
        ArgAction::SetTrue => "flag",
        ArgAction::Set => "value",
        ArgAction::Append => "values",
        other => panic!("--{:?}: the fast path knows no {other:?}", arg.get_long()),
    };
    (
        arg.get_long().unwrap_or_default().to_owned(),
        arg.get_all_aliases()
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        arg.get_short(),
        takes,
        arg.get_env().map(|v| v.to_string_lossy().into_owned()),
        arg.get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            // A flag's "false" is being absent.
            .filter(|v| !(takes == "flag" && v == "false"))
            .collect(),
        arg.is_global_set(),
    )
}

/// The options of `run` and the global ones, as clap builds them.
fn clap_options() -> (clap::Command, Vec<clap::Arg>) {
    let mut cli = Cli::command();
    cli.build();
    let run = cli
        .find_subcommand("run")
        .expect("a run subcommand")
        .clone();
    let options = run
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_id() != "help" && a.get_id() != "version")
        .cloned()
        .collect();
    (run, options)
}

#[test]
fn the_table_is_clap_s_definition_of_run() {
    let (run, options) = clap_options();
    let ids: Vec<&str> = options.iter().map(|a| a.get_id().as_str()).collect();
    let table: Vec<&str> = OPTIONS.iter().map(|o| o.id).collect();
    let mut sorted = (ids.clone(), table.clone());
    sorted.0.sort_unstable();
    sorted.1.sort_unstable();
    assert_eq!(
        sorted.0, sorted.1,
        "the options of run (and the global ones) differ from fast::OPTIONS"
    );
    for arg in &options {
        let opt = OPTIONS
            .iter()
            .find(|o| o.id == arg.get_id())
            .expect("listed");
        let takes = match opt.takes {
            Takes::Flag => "flag",
            Takes::Value => "value",
            Takes::Values => "values",
        };
        let table: Described = (
            opt.long.to_owned(),
            opt.aliases.iter().map(|a| (*a).to_owned()).collect(),
            opt.short,
            takes,
            opt.env.map(str::to_owned),
            opt.default.iter().map(|d| (*d).to_owned()).collect(),
            opt.global,
        );
        assert_eq!(
            table,
            from_clap(arg),
            "--{}: fast::OPTIONS says (long, aliases, short, takes, env, default, global) \
             differently from clap",
            opt.long
        );
        assert!(
            arg.get_short_and_visible_aliases()
                .is_none_or(|s| s.len() <= 1)
                && arg
                    .get_num_args()
                    .is_none_or(|n| n.min_values() <= 1 && n.max_values() <= 1),
            "--{}: short aliases and several values at once are not in fast::OPTIONS",
            opt.long
        );
        let conflicts: Vec<String> = run
            .get_arg_conflicts_with(arg)
            .iter()
            .map(|other| other.get_id().to_string())
            .collect();
        // As clap keeps them: on the option that names the other.
        let listed: Vec<String> = CONFLICTS
            .iter()
            .filter(|(a, _)| *a == opt.id)
            .map(|(_, b)| (*b).to_owned())
            .collect();
        assert_eq!(
            conflicts, listed,
            "--{}: conflicts differ from fast::CONFLICTS",
            opt.long
        );
    }
    // COMMAND: the one positional, after `--` or from the first word that
    // is not an option.
    let positionals: Vec<&clap::Arg> = run.get_positionals().collect();
    assert_eq!(positionals.len(), 1, "run takes one positional, COMMAND");
    let command = positionals[0];
    assert!(
        command.is_trailing_var_arg_set() && command.is_required_set() && !command.is_last_set()
    );
    // The subcommands beside run are clap's alone: the fast path never
    // answers for them.
    for sub in Cli::command().get_subcommands() {
        let name = sub.get_name();
        if name != "run" {
            assert!(!agrees(&[name]) && !agrees(&[name, "x"]), "{name}");
        }
    }
}

/// Values to try each option with: good and bad for every value parser.
const SAMPLES: &[&str] = &[
    "1s",
    "999ms",
    "0.5s",
    "24h",
    "1h 30m",
    "0s",
    "10000y",
    "10001y",
    "soon",
    "0",
    "1024",
    "16MiB",
    "64K",
    "lots",
    "99999999999999999999G",
    "HOME",
    "_A9",
    "A=1",
    "1A",
    "replay",
    "fail",
    "wait",
    "skip",
    "release",
    "lock",
    "takeover",
    "block",
    "REPLAY",
    "text",
    "json",
    "JSON",
    "x",
    "a.json",
    "/dev/fd/3",
    "ünïcode key",
    "=x",
];

#[test]
fn every_option_reads_every_sample_value_like_clap() {
    let long = "x".repeat(300);
    let samples = SAMPLES.iter().copied().chain([long.as_str()]);
    for value in samples {
        for opt in OPTIONS {
            let name = format!("--{}", opt.long);
            let glued = format!("--{}={value}", opt.long);
            let lines: Vec<Vec<&str>> = match opt.takes {
                Takes::Flag => vec![vec!["run", &name, "x"], vec!["run", &glued, "x"]],
                _ if opt.global => vec![
                    vec![&name, value, "run", "--", "x"],
                    vec!["run", &glued, "x"],
                ],
                _ => vec![
                    vec!["run", &name, value, "--", "x"],
                    vec!["run", &glued, "x"],
                ],
            };
            for line in &lines {
                let answered = agrees(line);
                let clap = {
                    let _unset = Unset::all();
                    Cli::try_parse_from(argv(line)).is_ok()
                };
                assert_eq!(
                    answered, clap,
                    "{line:?}: fast path {answered}, clap accepts: {clap}"
                );
            }
        }
    }
}

#[test]
fn every_variable_is_read_like_clap() {
    for opt in OPTIONS {
        let Some(var) = opt.env else { continue };
        for value in SAMPLES.iter().copied().chain([""]) {
            let line = argv(&["run", "-k", "k", "x"]);
            let unset = Unset::all();
            std::env::set_var(var, value);
            let fast = parse(&line, &|name| std::env::var_os(name));
            let clap = Cli::try_parse_from(&line);
            std::env::remove_var(var);
            drop(unset);
            match (fast, clap) {
                (Some(fast), Ok(clap)) => {
                    assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{var}={value}");
                }
                (Some(fast), Err(e)) => panic!("{var}={value}: fast path said {fast:?}, clap: {e}"),
                (None, Ok(_)) if !value.is_empty() => {
                    panic!("{var}={value}: clap accepts it, the fast path left it")
                }
                (None, _) => {}
            }
        }
    }
}

#[test]
fn common_lines_take_the_fast_path_and_agree_with_clap() {
    let lines: &[&[&str]] = &[
        &["run", "--key", "hot", "--", "true"],
        &["run", "--key", "hot", "true"],
        &["run", "-k", "a", "echo", "hi"],
        &["run", "-k", "a", "echo", "--key", "b", "-v"],
        &["run", "-k", "a", "echo", "--", "x"],
        &["run", "echo", "--"],
        &["run", "run", "--", "x"],
        &["run", "extra", "--", "x"],
        &["--db", "s.db", "run", "--key", "hot", "--", "true"],
        &[
            "run",
            "--db=s.db",
            "-k",
            "k1",
            "-q",
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
        &[
            "-v",
            "run",
            "--ttl",
            "1h 30m",
            "--on-duplicate",
            "wait",
            "--",
            "x",
        ],
        &["--log-format", "json", "run", "x"],
        &["run", "--log-format=text", "x"],
        &[
            "run",
            "--on-failure=lock",
            "--on-crash",
            "block",
            "--",
            "x",
            "--",
        ],
        &["run", "--max-output", "64MiB", "--timeout", "5s", "--", "x"],
        &["run", "--wait-timeout=2m", "--lease", "10s", "--", "x"],
        &["run", "--cwd", "--env", "HOME", "--env=PATH", "--", "x"],
        &["run", "--fingerprint-stdin", "--allow-mismatch", "--", "x"],
        &[
            "run",
            "--fingerprint-file",
            "a.json",
            "--fingerprint-file=b",
            "--",
            "x",
        ],
        &["run", "--report", "/dev/fd/3", "-k", "k", "--", "x"],
        &["run", "--key", "ünïcode key", "--", "x", "-v", "--db", "y"],
        &["run", "--", "--key"],
    ];
    for line in lines {
        assert!(agrees(line), "{line:?} should take the fast path");
    }
}

#[test]
fn everything_else_is_left_to_clap() {
    let lines: &[&[&str]] = &[
        &[],
        &["--help"],
        &["run", "--help"],
        &["--version"],
        &["inspect"],
        &["completions", "bash"],
        &["man", "run"],
        &["run", "--key", "k"],
        &["run", "--key", "k", "--"],
        &["run", "--key", "--", "x"],
        &["run", "--key", "-x", "--", "x"],
        &["run", "--key=", "--", "x"],
        &["run", "-kfoo", "--", "x"],
        &["run", "-qv", "--", "x"],
        &["run", "-q", "-v", "--", "x"],
        &["run", "-k", "a", "-x", "y"],
        &["run", "--key", "a", "--key", "b", "--", "x"],
        &["run", "--cwd", "--cwd", "--", "x"],
        &["run", "--cwd=yes", "--", "x"],
        &["run", "--lease", "999ms", "--", "x"],
        &["run", "--env", "A=1", "--", "x"],
        &["run", "--unknown", "--", "x"],
        &["--key", "k", "run", "--", "x"],
        &["--db", "a", "run", "--db", "b", "--", "x"],
        &["purge", "--", "x"],
        &["--", "run", "x"],
    ];
    for line in lines {
        assert!(!agrees(line), "{line:?} should be left to clap");
    }
}

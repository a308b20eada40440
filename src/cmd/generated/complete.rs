//! The bash, zsh and fish completions: clap_complete's scripts, taught one
//! thing they do not know. After the `--` of a subcommand whose trailing
//! argument is a command line (`idem run ... -- COMMAND ARG...`), the words
//! are COMMAND's, not idem's: a command name first, then files (zsh and fish
//! go on with COMMAND's own completion, which falls back to files). Which
//! subcommands those are comes from the CLI definition: a `last` positional
//! with the `CommandWithArguments` value hint.

use crate::cmd::Cli;
use clap::{Command, CommandFactory, ValueHint};
use clap_complete::{Generator, Shell};
use std::path::{Path, PathBuf};

/// The three scripts, as (path relative to the crate root, contents).
pub fn scripts() -> Vec<(PathBuf, Vec<u8>)> {
    let mut cli = Cli::command();
    cli.build();
    let runners: Vec<String> = cli
        .get_subcommands()
        .filter(|sub| takes_command_line(sub))
        .map(|sub| sub.get_name().to_owned())
        .collect();
    let mut files = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli, "idem", &mut script);
        let script = String::from_utf8(script).expect("clap_complete writes UTF-8");
        let script = match shell {
            Shell::Bash => bash(script, &runners),
            Shell::Zsh => zsh(&script),
            _ => fish(script, &runners),
        };
        files.push((
            Path::new("completions").join(shell.file_name("idem")),
            script.into_bytes(),
        ));
    }
    files
}

/// Whether `sub`'s words after `--` are a command and its arguments.
fn takes_command_line(sub: &Command) -> bool {
    sub.get_positionals()
        .any(|arg| arg.is_last_set() && arg.get_value_hint() == ValueHint::CommandWithArguments)
}

/// bash: before clap's dispatch on the subcommand, a `--` seen before the
/// word being completed means COMMAND's words: `compgen -c`, then `-f`.
fn bash(script: String, runners: &[String]) -> String {
    let mut cases = String::new();
    for name in runners {
        // clap's own name for the subcommand's branch, as its loop sets it.
        let label = format!("            idem,{name})\n                cmd=\"");
        let start = script.find(&label).expect("clap's bash names each subcommand") + label.len();
        let end = start + script[start..].find('"').expect("a closing quote");
        cases.push_str(&format!("        {})\n", &script[start..end]));
    }
    if cases.is_empty() {
        return script;
    }
    let block = format!(
        r#"    # After `--` come COMMAND and its arguments: a command name, then files.
    case "${{cmd}}" in
{cases}            for (( i = 1; i < COMP_CWORD; i++ )); do
                [[ "${{COMP_WORDS[i]}}" == "--" ]] || continue
                local IFS=$'\n'
                if (( i + 1 == COMP_CWORD )); then
                    COMPREPLY=( $(compgen -c -- "${{cur}}") )
                else
                    COMPREPLY=( $(compgen -f -- "${{cur}}") )
                fi
                if [[ "${{BASH_VERSINFO[0]}}" -ge 4 ]]; then
                    compopt -o filenames
                fi
                return 0
            done
            ;;
    esac

"#
    );
    let anchor = "    case \"${cmd}\" in\n";
    let at = script.find(anchor).expect("clap's bash dispatches on ${cmd}");
    format!("{}{block}{}", &script[..at], &script[at..])
}

/// zsh: clap completes the command line with `_cmdambivalent`, which offers
/// idem's own options again; `_normal` completes it as a command line of its
/// own, the way `nohup` and `env` do.
fn zsh(script: &str) -> String {
    script.replace(":_cmdambivalent' \\\n", ":_normal' \\\n")
}

/// fish: once a runner's `--` is on the line, the rest is completed as a
/// command line of its own (`complete -C`), instead of as files.
fn fish(mut script: String, runners: &[String]) -> String {
    if runners.is_empty() {
        return script;
    }
    script.push_str(
        r#"
# After `--` come COMMAND and its arguments: complete them as a command line of
# their own (a command name, then what that command takes).
function __fish_idem_command_line
    set -l words (commandline -opc)
    set -l at (contains -i -- -- $words)
    or return 1
    set -l line
    if test $at -lt (count $words)
        set line (string escape -- $words[(math $at + 1)..-1])
    end
    complete -C "$(string join ' ' -- $line) $(commandline -ct)"
end

"#,
    );
    script.push_str(&format!(
        "complete -c idem -n \"__fish_idem_using_subcommand {}; and contains -- -- (commandline -opc)\" \
        -f -a \"(__fish_idem_command_line)\"\n",
        runners.join(" ")
    ));
    script
}

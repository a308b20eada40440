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
            Shell::Zsh => zsh(&script, &runners),
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
        let start = script
            .find(&label)
            .expect("clap's bash names each subcommand")
            + label.len();
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
                compopt -o filenames 2>/dev/null
                return 0
            done
            ;;
    esac

"#
    );
    let anchor = "    case \"${cmd}\" in\n";
    let at = script
        .find(anchor)
        .expect("clap's bash dispatches on ${cmd}");
    format!("{}{block}{}", &script[..at], &script[at..])
}

/// zsh: clap's `_arguments` still offers idem's options right after `--`
/// (it drops a `--` that follows the subcommand before the subcommand's own
/// `_arguments` sees the words). So `_idem` keeps the words as typed, and a
/// runner's branch hands those after `--` to `_normal`, which completes them
/// as a command line of their own, the way `nohup` and `env` do.
fn zsh(script: &str, runners: &[String]) -> String {
    if runners.is_empty() {
        return script.to_owned();
    }
    let opening = "_idem() {\n";
    let mut script = script.replacen(
        opening,
        &format!(
            "{opening}    # The words as typed, `--` and all.\n    \
            local -a idem_typed=(\"${{words[@]}}\")\n    local idem_current=$CURRENT\n"
        ),
        1,
    );
    let dispatch = script
        .find(":idem-command-$line[1]:\"\n")
        .expect("clap's zsh dispatches on the subcommand");
    for name in runners {
        let branch = format!("            ({name})\n");
        let at = dispatch
            + script[dispatch..]
                .find(&branch)
                .expect("a branch per subcommand");
        script.insert_str(
            at + branch.len(),
            r#"# After `--` come COMMAND and its arguments: a command line of their own.
if (( ${idem_typed[(i)--]} < idem_current )); then
    local dashdash=${idem_typed[(i)--]}
    words=("${(@)idem_typed[dashdash+1,-1]}")
    (( CURRENT = idem_current - dashdash ))
    _normal
    return
fi
"#,
        );
    }
    script
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

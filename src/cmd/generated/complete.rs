//! The bash, zsh and fish completions: clap_complete's scripts, taught one
//! thing they do not know. After the `--` of a subcommand whose trailing
//! argument is a command line (`idem run ... -- COMMAND ARG...`), the words
//! are COMMAND's, not idem's: a command name first, then files (zsh and fish
//! go on with COMMAND's own completion, which falls back to files). Which
//! subcommands those are comes from the CLI definition: a trailing
//! positional with the `CommandWithArguments` value hint.
//!
//! And one thing they cannot know: where a positional is a KEY (`logs`,
//! `inspect`, `purge`), the keys in the store, which the scripts ask the
//! idem being completed for (`idem completions --keys=PREFIX`, with the
//! line's `--db`).

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
    let keyed: Vec<&Command> = cli
        .get_subcommands()
        .filter(|sub| takes_keys(sub))
        .collect();
    let keyed_names: Vec<String> = keyed.iter().map(|s| s.get_name().to_owned()).collect();
    // The options of those subcommands that take a value: the word after
    // one is that value, not a key.
    let mut valued: Vec<String> = keyed
        .iter()
        .flat_map(|sub| sub.get_arguments())
        .filter(|arg| !arg.is_positional() && arg.get_num_args().is_some_and(|n| n.takes_values()))
        .flat_map(|arg| {
            let long = arg.get_long().map(|l| format!("--{l}"));
            long.into_iter()
                .chain(arg.get_short().map(|c| format!("-{c}")))
        })
        .collect();
    valued.sort();
    valued.dedup();
    let mut files = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli, "idem", &mut script);
        let script = String::from_utf8(script).expect("clap_complete writes UTF-8");
        let script = match shell {
            Shell::Bash => bash_keys(&bash(script, &runners), &keyed_names, &valued),
            Shell::Zsh => zsh_keys(&zsh(&script, &runners)),
            _ => fish_keys(fish(script, &runners), &keyed_names),
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
    sub.get_positionals().any(|arg| {
        (arg.is_last_set() || arg.is_trailing_var_arg_set())
            && arg.get_value_hint() == ValueHint::CommandWithArguments
    })
}

/// Whether `sub` takes keys as positionals (`KEY`).
fn takes_keys(sub: &Command) -> bool {
    sub.get_positionals()
        .any(|arg| arg.get_value_names().is_some_and(|names| names == ["KEY"]))
}

/// bash: before clap's dispatch, a word of a keyed subcommand that is
/// neither an option nor an option's value completes as a key.
fn bash_keys(script: &str, keyed: &[String], valued: &[String]) -> String {
    let cases: Vec<String> = keyed
        .iter()
        .map(|name| clap_bash_name(script, name))
        .collect();
    let block = format!(
        r#"    # After logs, inspect and purge: the keys in the store (of the line's --db).
    case "${{cmd}}" in
        {cases})
            case "${{prev}}" in
                {valued})
                    ;;
                *)
                    if [[ "${{cur}}" != -* ]]; then
                        local j db=()
                        for (( j = 1; j + 1 < COMP_CWORD; j++ )); do
                            [[ "${{COMP_WORDS[j]}}" == --db ]] && db=(--db "${{COMP_WORDS[j + 1]}}")
                        done
                        mapfile -t COMPREPLY < <("$1" completions --keys="${{cur}}" "${{db[@]}}" 2>/dev/null)
                        return 0
                    fi
                    ;;
            esac
            ;;
    esac

"#,
        cases = cases.join("|"),
        valued = valued.join("|"),
    );
    let anchor = "    case \"${cmd}\" in\n";
    let at = script
        .rfind(anchor)
        .expect("clap's bash dispatches on ${cmd}");
    format!("{}{block}{}", &script[..at], &script[at..])
}

/// clap's name for a subcommand's branch in its bash script, as its loop
/// over the words sets it.
fn clap_bash_name(script: &str, name: &str) -> String {
    let label = format!("            idem,{name})\n                cmd=\"");
    let start = script
        .find(&label)
        .expect("clap's bash names each subcommand")
        + label.len();
    let end = start + script[start..].find('"').expect("a closing quote");
    script[start..end].to_owned()
}

/// zsh: clap's KEY positionals (`':key -- …:_default'`) complete with
/// `_idem_keys` instead of files. It reads the words as typed, which
/// `_idem` keeps (see `zsh`).
fn zsh_keys(script: &str) -> String {
    let mut out = String::new();
    for line in script.split_inclusive('\n') {
        let spec = line.trim_start_matches(['\'', '*', ':']);
        let is_key = spec.starts_with("key -- ") || spec.starts_with("keys -- ");
        match line.strip_suffix(":_default' \\\n") {
            Some(head) if is_key && line.starts_with('\'') => {
                out.push_str(head);
                out.push_str(":_idem_keys' \\\n");
            }
            _ => out.push_str(line),
        }
    }
    let tail = "if [ \"$funcstack[1]\" = \"_idem\" ]; then\n";
    let at = out.rfind(tail).expect("clap's zsh ends by calling _idem");
    out.insert_str(
        at,
        r#"(( $+functions[_idem_keys] )) ||
_idem_keys() {
    # The keys in the store (of the line's --db) that start with the word.
    local -a keys db
    local at=${idem_typed[(i)--db]}
    (( at + 1 < idem_current )) && db=(--db "${(Q)idem_typed[at+1]}")
    keys=(${(f)"$("${idem_typed[1]}" completions --keys="$PREFIX" "${db[@]}" 2>/dev/null)"})
    compadd -a keys
}

"#,
    );
    out
}

/// fish: after a keyed subcommand, a word that is not an option completes
/// as a key.
fn fish_keys(mut script: String, keyed: &[String]) -> String {
    script.push_str(
        r#"
# After logs, inspect and purge: the keys in the store (of the line's --db).
function __fish_idem_keys
    set -l words (commandline -opc)
    set -l db
    set -l at (contains -i -- --db $words)
    and set db --db $words[(math $at + 1)]
    $words[1] completions --keys=(commandline -ct) $db 2>/dev/null
end

"#,
    );
    script.push_str(&format!(
        "complete -c idem -n \"__fish_idem_using_subcommand {}; and not string match -q -- '-*' (commandline -ct)\" \
        -f -a \"(__fish_idem_keys)\"\n",
        keyed.join(" ")
    ));
    script
}

/// bash: before clap's dispatch on the subcommand, a `--` seen before the
/// word being completed means COMMAND's words: `compgen -c`, then `-f`.
fn bash(script: String, runners: &[String]) -> String {
    let mut cases = String::new();
    for name in runners {
        cases.push_str(&format!("        {})\n", clap_bash_name(&script, name)));
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

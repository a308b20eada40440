//! The man pages in `man/` and the shell completions in `completions/`:
//! generated from the CLI definition, committed so users get them without a
//! build step, and built into the binary (`idem man`, `idem completions`)
//! for those who installed it with `cargo install`, as `rg --generate` and
//! `just --completions` do.
//!
//! The generators (clap_mangen, clap_complete) are dev-dependencies: they
//! never ship in `idem` itself, whose start-up is paid on every call. The
//! binary carries the committed files byte for byte, and the unit test
//! `committed_files_are_current` regenerates them into a temporary
//! directory and fails if a committed copy differs;
//! `IDEM_UPDATE_GENERATED=1 cargo test` rewrites them instead.

#[cfg(test)]
mod complete;
#[cfg(test)]
mod man;

use super::Global;
use crate::store::{self, Filter, Mode};
use anyhow::Result;
use std::io::Write;

/// Print a completion script for bash, zsh or fish
#[derive(Debug, clap::Args)]
#[command(after_help = COMPLETIONS_EXAMPLES)]
pub struct CompletionsArgs {
    /// The shell to complete idem's command lines in
    #[arg(value_enum, value_name = "SHELL", required_unless_present = "keys")]
    pub shell: Option<Shell>,

    /// The keys in the store that start with PREFIX, one a line (what the
    /// scripts offer after logs, inspect and purge)
    #[arg(long, value_name = "PREFIX", hide = true, allow_hyphen_values = true)]
    pub keys: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  # bash: read from here by the bash-completion package (on Debian, apt install
  # bash-completion; without it, source the file from ~/.bashrc)
  mkdir -p ~/.local/share/bash-completion/completions
  idem completions bash > ~/.local/share/bash-completion/completions/idem

  # zsh: a directory on $fpath, added before compinit runs in ~/.zshrc
  mkdir -p ~/.local/share/zsh/site-functions
  idem completions zsh > ~/.local/share/zsh/site-functions/_idem
  # in ~/.zshrc: fpath=(~/.local/share/zsh/site-functions $fpath); autoload -Uz compinit && compinit

  # fish
  mkdir -p ~/.config/fish/completions
  idem completions fish > ~/.config/fish/completions/idem.fish";

/// Print a man page: idem's own, or a subcommand's
#[derive(Debug, clap::Args)]
#[command(after_help = MAN_EXAMPLES)]
pub struct ManArgs {
    /// The subcommand whose page to print (default: the page of idem itself)
    #[arg(value_name = "SUBCOMMAND", value_parser = clap::builder::PossibleValuesParser::new(
        PAGES.iter().filter_map(|(name, _)| name.strip_prefix("idem-")),
    ))]
    pub subcommand: Option<String>,
}

const MAN_EXAMPLES: &str = "\
Examples:
  # Read one without installing it
  idem man run | man -l -

  # Install them all beside idem as cargo install puts it: man looks in
  # ~/.cargo/share/man because ~/.cargo/bin is on PATH (Debian's manpath
  # has no ~/.local/share/man)
  mkdir -p ~/.cargo/share/man/man1
  for page in '' run inspect logs purge stats check completions man; do
    idem man $page > ~/.cargo/share/man/man1/idem${page:+-$page}.1
  done";

/// The man pages as committed in `man/`, by name without `.1`.
const PAGES: &[(&str, &[u8])] = &[
    ("idem", include_bytes!("../../../man/idem.1")),
    ("idem-run", include_bytes!("../../../man/idem-run.1")),
    (
        "idem-inspect",
        include_bytes!("../../../man/idem-inspect.1"),
    ),
    ("idem-logs", include_bytes!("../../../man/idem-logs.1")),
    ("idem-purge", include_bytes!("../../../man/idem-purge.1")),
    ("idem-stats", include_bytes!("../../../man/idem-stats.1")),
    ("idem-check", include_bytes!("../../../man/idem-check.1")),
    (
        "idem-completions",
        include_bytes!("../../../man/idem-completions.1"),
    ),
    ("idem-man", include_bytes!("../../../man/idem-man.1")),
];

/// The completion scripts as committed in `completions/`.
fn script(shell: Shell) -> &'static [u8] {
    match shell {
        Shell::Bash => include_bytes!("../../../completions/idem.bash"),
        Shell::Zsh => include_bytes!("../../../completions/_idem"),
        Shell::Fish => include_bytes!("../../../completions/idem.fish"),
    }
}

/// `idem completions SHELL`, or the keys the scripts complete.
pub fn completions(args: &CompletionsArgs, global: &Global) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    if let Some(prefix) = &args.keys {
        keys(&mut out, prefix, global)?;
    } else if let Some(shell) = args.shell {
        out.write_all(script(shell))?;
    }
    out.flush()?;
    Ok(0)
}

/// The keys that start with `prefix`, newest first, at most a thousand:
/// enough to choose from, bounded on a store of millions.
fn keys(out: &mut dyn Write, prefix: &str, global: &Global) -> Result<()> {
    let location = store::Location::resolve(global.db.as_deref())?;
    let Some(mut store) = store::open(&location, Mode::ReadOnly)? else {
        return Ok(());
    };
    let filter = Filter {
        prefix: Some(prefix.to_owned()),
        limit: Some(1000),
        ..Filter::default()
    };
    // A key with a control character cannot be typed as one word.
    store.list(&filter, &mut |record| {
        if !record.key.chars().any(char::is_control) {
            writeln!(out, "{}", record.key)?;
        }
        Ok(())
    })
}

/// `idem man [SUBCOMMAND]`.
pub fn man(args: &ManArgs) -> Result<u8> {
    let name = args
        .subcommand
        .as_ref()
        .map_or_else(|| "idem".to_owned(), |sub| format!("idem-{sub}"));
    let page = PAGES.iter().find(|(n, _)| *n == name);
    let mut out = std::io::stdout().lock();
    out.write_all(page.map_or(&[][..], |(_, text)| text))?;
    out.flush()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{complete, man};

    use std::collections::BTreeSet;
    use std::ffi::OsString;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// The directories this module owns entirely: anything else in them is stale.
    const DIRS: [&str; 2] = ["man", "completions"];

    /// Every generated file as (path relative to the crate root, contents).
    fn generate() -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = man::pages();
        files.extend(complete::scripts());
        files
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

    /// The subcommands, by name.
    fn subcommands() -> Vec<String> {
        use clap::CommandFactory;
        let cli = crate::cmd::Cli::command();
        cli.get_subcommands()
            .map(|sub| sub.get_name().to_owned())
            .collect()
    }

    #[test]
    fn every_exit_code_is_documented() {
        use crate::exit::{Code, MEANINGS};
        // A new code fails to compile here until it is listed, then fails this
        // test until it has a row in MEANINGS.
        let all = |code: Code| match code {
            Code::NoRecord
            | Code::Usage
            | Code::Mismatch
            | Code::InProgress
            | Code::Completed
            | Code::Crashed
            | Code::Timeout
            | Code::Internal
            | Code::NotExecutable
            | Code::NotFound => code,
        };
        for code in [
            Code::NoRecord,
            Code::Usage,
            Code::Mismatch,
            Code::InProgress,
            Code::Completed,
            Code::Crashed,
            Code::Timeout,
            Code::Internal,
            Code::NotExecutable,
            Code::NotFound,
        ]
        .map(all)
        {
            assert!(
                MEANINGS
                    .iter()
                    .any(|m| m.status.number() == Some(code.into())),
                "exit code {code:?} has no row in exit::MEANINGS"
            );
        }
        let names = subcommands();
        let cited = MEANINGS.iter().flat_map(|m| m.commands);
        let cited = cited.chain(
            man::ENVIRONMENT
                .iter()
                .flat_map(|(_, commands, _)| *commands),
        );
        for name in cited {
            assert!(names.iter().any(|n| n == name), "no subcommand {name}");
        }
    }

    /// Every variable the code reads (`var("X")`, `var_os("X")`, `env("X")`)
    /// or names (`"IDEM_..."`) outside tests is a flag's `env` or in
    /// `man::ENVIRONMENT`, and every one documented there is still read.
    #[test]
    fn every_variable_is_documented() {
        use clap::CommandFactory;
        let mut cli = crate::cmd::Cli::command();
        cli.build();
        let mut flags: Vec<String> = cli
            .get_subcommands()
            .flat_map(clap::Command::get_arguments)
            .filter_map(|arg| arg.get_env())
            .map(|var| var.to_string_lossy().into_owned())
            .collect();
        flags.extend(
            cli.get_arguments()
                .filter_map(|a| a.get_env())
                .map(|v| v.to_string_lossy().into_owned()),
        );

        let mut read = BTreeSet::new();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for file in rust_files(&src) {
            let name = file.file_name().expect("a file name");
            if name == "tests.rs" || file.starts_with(src.join("cmd/generated")) {
                continue;
            }
            let text = fs::read_to_string(&file).expect("read source");
            // Unit tests sit at the end of a file, after `#[cfg(test)]`.
            let text = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            for opening in ["var(\"", "var_os(\"", "env(\"", "\"IDEM_"] {
                for (at, _) in text.match_indices(opening) {
                    let start = at + opening.len() - usize::from(opening.starts_with('"')) * 5;
                    let var: String = text[start..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if !var.is_empty() && !var.starts_with("IDEM_TEST_") {
                        read.insert(var);
                    }
                }
            }
        }
        let documented: Vec<&str> = man::ENVIRONMENT.iter().map(|(var, ..)| *var).collect();
        for var in &read {
            assert!(
                flags.contains(var) || documented.contains(&var.as_str()),
                "idem reads {var}: give it a row in man::ENVIRONMENT (src/cmd/generated/man.rs)"
            );
        }
        for var in documented {
            assert!(
                read.contains(var),
                "man::ENVIRONMENT documents {var}, which idem never reads"
            );
        }
    }

    /// The `.rs` files under `dir`, recursively.
    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }
}

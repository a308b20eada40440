//! idem: run a command at most once per key.
//!
//! `main` only parses, dispatches, prints the one error line and exits; the
//! work is in `cmd`.

mod child;
mod cmd;
mod exit;
mod key;
mod owner;
mod policy;
mod say;
mod store;
mod text;

use clap::error::ErrorKind;
use clap::Parser;
use exit::{Code, Exit};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cmd::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(u8::from(Code::Usage));
        }
        Err(e) => {
            say::error(format_args!("{}", usage_line(&e)));
            return ExitCode::from(u8::from(Code::Usage));
        }
    };
    match cmd::dispatch(cli) {
        Ok(status) => ExitCode::from(status),
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            let code = err
                .downcast_ref::<Exit>()
                .map_or(Code::Internal, |e| e.code);
            say::error(format_args!("{err:#}"));
            ExitCode::from(u8::from(code))
        }
    }
}

/// clap's message on one line, with the hint that tells what to do.
fn usage_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("{message} (see idem --help)")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

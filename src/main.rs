//! idem: run a command at most once per key.
//!
//! `main` only parses, dispatches, prints the one error line and exits; the
//! work is in `cmd`. idem starts from its own C `main`, without Rust's
//! runtime start-up (see `child::process`): idem's start-up is paid on every
//! call it guards.

#![cfg_attr(not(test), no_main)]

mod child;
mod cmd;
mod exit;
mod key;
mod lease;
mod owner;
mod policy;
mod say;
mod store;
mod text;

use clap::error::ErrorKind;
use clap::Parser;
use exit::{Code, Exit};
use std::ffi::OsString;

/// The process's entry point, called by the C library with the arguments
/// (which `std::env::args_os` reads on its own).
// The symbol `main` is what the C start-up calls; nothing else defines it
// once `#![no_main]` drops Rust's.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[no_mangle]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    child::process::init();
    let code = run();
    // Rust's runtime flushed stdout on the way out; this replaces it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    libc::c_int::from(code)
}

#[cfg_attr(test, allow(dead_code))]
fn run() -> u8 {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let parsed = match cmd::fast::parse(&argv, &|name| std::env::var_os(name)) {
        Some(cli) => Ok(cli),
        None => cmd::Cli::try_parse_from(&argv),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return 0;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return u8::from(Code::Usage);
        }
        Err(e) => {
            say::error(format_args!("{}", usage_line(&e)));
            return u8::from(Code::Usage);
        }
    };
    match cmd::dispatch(cli) {
        Ok(status) => status,
        Err(err) => {
            if is_broken_pipe(&err) {
                return 0;
            }
            let code = err
                .downcast_ref::<Exit>()
                .map_or(Code::Internal, |e| e.code);
            say::error(format_args!("{err:#}"));
            u8::from(code)
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

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
#[cfg(not(test))]
use std::os::unix::ffi::OsStrExt;

/// The process's entry point, called by the C library's start-up code with
/// the arguments, which idem reads from here.
///
/// `std::env::args_os()` is no source for them: with Rust's own `main`
/// gone, it is filled only by a glibc extension (glibc passes argc, argv
/// and envp to the functions in `.init_array`, where std records them).
/// musl, and the C standard, call those functions with no arguments, so on
/// a musl build `args_os()` would be empty and every call a usage error.
/// `argc` and `argv` as C's `main` receives them are the same on every C
/// library.
// The symbol `main` is what the C start-up calls; nothing else defines it
// once `#![no_main]` drops Rust's.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    child::process::init();
    let count = usize::try_from(argc).unwrap_or(0);
    let argv: Vec<OsString> = (0..count)
        .map(|i| {
            // SAFETY: the C standard guarantees argv[0..argc] are valid
            // NUL-terminated strings that live until the process exits;
            // each one is copied before `main` returns.
            let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
            OsString::from(std::ffi::OsStr::from_bytes(arg.to_bytes()))
        })
        .collect();
    let code = run(&argv);
    // Rust's runtime flushed stdout on the way out; this replaces it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    libc::c_int::from(code)
}

#[cfg_attr(test, allow(dead_code))]
fn run(argv: &[OsString]) -> u8 {
    let parsed = match cmd::fast::parse(argv, &|name| std::env::var_os(name)) {
        Some(cli) => Ok(cli),
        None => cmd::Cli::try_parse_from(argv),
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
            say::use_json(asks_for_json(argv));
            say::as_event("usage_error", || {
                say::error(format_args!("{}", usage_line(&e)));
            });
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
            say::as_event(event(code, &err), || say::error(format_args!("{err:#}")));
            u8::from(code)
        }
    }
}

/// Whether a line that clap refused asked for `--log-format json` (on it,
/// or in IDEM_LOG_FORMAT), so that its usage error is written as asked.
fn asks_for_json(argv: &[OsString]) -> bool {
    let mut format = std::env::var_os("IDEM_LOG_FORMAT");
    let mut words = argv.iter();
    while let Some(word) = words.next() {
        if word == "--log-format" {
            format = words.next().cloned();
        } else if let Some(value) = word.to_str().and_then(|w| w.strip_prefix("--log-format=")) {
            format = Some(value.into());
        }
    }
    format.is_some_and(|f| f == "json")
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

/// The `event` of the error line idem exits with (`--log-format json`).
fn event(code: Code, err: &anyhow::Error) -> &'static str {
    match code {
        Code::NoRecord => "no_record",
        Code::Usage => "usage_error",
        Code::Mismatch | Code::InProgress | Code::Completed | Code::Crashed => "refused",
        Code::Timeout => "timed_out",
        // A lost claim is said as "lost the lease …" or "lost the claim …"
        // (cmd/run); every other failure of idem's own is the store's.
        Code::Internal if err.to_string().starts_with("lost the") => "lease_lost",
        Code::Internal => "store_error",
        Code::NotExecutable | Code::NotFound => "spawn_failed",
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

//! Every line idem writes about itself goes through here.
//!
//! idem's stderr may be a closed pipe (`idem run … 2>&1 | head -1`) or a
//! full disk. The standard printing macros panic on such an error, and a
//! panic between the claim and the outcome would lose the record, so nothing
//! else in idem may print: a lint test (`tests/cli/lint.rs`) fails when
//! those macros appear anywhere in `src/`. Each line is written with a single
//! `write` of the whole `idem: …\n`, and a failed write is dropped.
//!
//! `-q` silences notices, never errors; `-v` adds explanations.
//! `--log-format json` writes each line as one JSON object instead, for log
//! shippers: `level`, `message`, `key` (once the call has one) and `event`,
//! a stable name for what happened (`as_event` gives it; null where none
//! does).

use std::cell::Cell;
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

const NORMAL: u8 = 1;
const QUIET: u8 = 0;
const VERBOSE: u8 = 2;

static LEVEL: AtomicU8 = AtomicU8::new(NORMAL);

/// Whether lines are JSON objects (`--log-format json`).
static JSON: AtomicBool = AtomicBool::new(false);

/// The key the lines of this call are about, once it is known.
static KEY: Mutex<Option<String>> = Mutex::new(None);

/// Where lines go instead of stderr: the stderr writer thread while a child
/// runs (see `child::output`), which drops a line rather than wait.
pub type Diversion = Box<dyn Fn(Vec<u8>) + Send>;

/// While a child runs, lines go to the stderr writer thread instead: a
/// stalled reader of stderr must not block the thread that renews the lease
/// or forwards signals.
static DIVERTED: Mutex<Option<Diversion>> = Mutex::new(None);

/// Sends every later line to `to` (which must never wait), or, with `None`,
/// straight to stderr again.
pub fn divert(to: Option<Diversion>) {
    *DIVERTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = to;
}

/// Sets the level from `-q` / `-v`, once, before anything is printed.
pub fn configure(quiet: bool, verbose: bool) {
    let level = if quiet {
        QUIET
    } else if verbose {
        VERBOSE
    } else {
        NORMAL
    };
    LEVEL.store(level, Ordering::Relaxed);
}

/// Writes every later line as one JSON object (`--log-format json`).
pub fn use_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Names the key every later line is about (the `key` of a JSON line).
pub fn about_key(key: &str) {
    *KEY.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key.to_owned());
}

/// Whether `-v` was given.
pub fn verbose() -> bool {
    LEVEL.load(Ordering::Relaxed) >= VERBOSE
}

/// An error line: always written (`-q` does not hide errors).
pub fn error(what: fmt::Arguments<'_>) {
    write_line(Level::Error, what);
}

/// A notice: a warning the user should see unless they asked for `-q`.
pub fn notice(what: fmt::Arguments<'_>) {
    if LEVEL.load(Ordering::Relaxed) >= NORMAL {
        write_line(Level::Notice, what);
    }
}

/// An explanation of a decision, shown with `-v` only.
pub fn explain(what: fmt::Arguments<'_>) {
    if verbose() {
        write_line(Level::Info, what);
    }
}

thread_local! {
    /// The event the lines written now are about (see `as_event`).
    static EVENT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs `say`, whose lines are the event named `event` (`replayed`,
/// `refused`, `took_over`, `lease_lost`, `store_error`, …): the `event` of
/// each JSON line. `say::as_event("replayed", || say::explain(…))`.
pub fn as_event<T>(event: &'static str, say: impl FnOnce() -> T) -> T {
    let outer = EVENT.with(|e| e.replace(Some(event)));
    let said = say();
    EVENT.with(|e| e.set(outer));
    said
}

#[derive(Clone, Copy)]
enum Level {
    Error,
    Notice,
    Info,
}

/// The line as written: `idem: …` or one JSON object, with its newline.
fn render(level: Level, what: fmt::Arguments<'_>) -> String {
    if !JSON.load(Ordering::Relaxed) {
        return format!("idem: {what}\n");
    }
    let level = match level {
        Level::Error => "error",
        Level::Notice => "notice",
        Level::Info => "info",
    };
    let mut line = serde_json::json!({
        "level": level,
        "message": what.to_string(),
        "event": EVENT.with(Cell::get),
    });
    if let Some(key) = KEY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        line["key"] = serde_json::Value::from(key.as_str());
    }
    format!("{line}\n")
}

fn write_line(level: Level, what: fmt::Arguments<'_>) {
    let line = render(level, what);
    if let Some(diverted) = DIVERTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
    {
        diverted(line.into_bytes());
        return;
    }
    // One write, so concurrent idems do not interleave within a line; any
    // failure (EPIPE, ENOSPC, EBADF) is dropped: a notice never kills idem.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_level_message_event_and_key() {
        use_json(true);
        let line = as_event("replayed", || {
            render(Level::Notice, format_args!("a \"b\"\n"))
        });
        let value: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(value["level"], "notice");
        assert_eq!(value["message"], "a \"b\"\n");
        assert_eq!(value["event"], "replayed");
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line:?}"
        );
        about_key("k1");
        let line = render(Level::Error, format_args!("x"));
        let value: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(
            (&value["key"], &value["event"]),
            (&"k1".into(), &serde_json::Value::Null)
        );
        use_json(false);
        assert_eq!(render(Level::Info, format_args!("y")), "idem: y\n");
    }
}

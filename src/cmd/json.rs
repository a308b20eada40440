//! `--json` output: JSON Lines, one object per line, with exactly the field
//! names and types of SPEC.md "Operator commands" (scripts depend on them;
//! `tests/cli/inspect.rs` pins the schema).
//!
//! JSON escapes C0 controls itself; `write_line` also escapes DEL, C1
//! controls and bidi overrides, so even `--json` piped to a terminal cannot
//! drive it.

use super::show::{rfc3339, Vantage};
use crate::key::hex;
use crate::store::Record;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::{self, Write};

/// A record as the SPEC's JSON object. `owner` is given for every record;
/// its `alive` is only ever true for an `in_progress` record.
pub fn record(record: &Record, vantage: &Vantage) -> Value {
    let command: Vec<String> = record
        .argv()
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    json!({
        "key": record.key,
        "status": record.status.as_str(),
        "exit_code": record.exit_code,
        "signal": record.signal,
        "timed_out": record.timed_out,
        "command": command,
        "cwd": String::from_utf8_lossy(&record.cwd),
        "fingerprint": hex(&record.fingerprint),
        "started_at": rfc3339(record.started_at),
        "finished_at": record.finished_at.map(rfc3339),
        "expires_at": record.expires_at.map(rfc3339),
        "expired": record.is_expired(vantage.now),
        "duration_ms": record.finished_at.map(|end| end - record.started_at),
        "attempts": record.attempt,
        "replays": record.replays,
        "owner": owner(record, vantage),
        "stdout_bytes": record.stdout_bytes,
        "stderr_bytes": record.stderr_bytes,
        "stdout_truncated": record.stdout_truncated,
        "stderr_truncated": record.stderr_truncated,
    })
}

/// The owner object: `{host, pid, alive}`.
pub fn owner(record: &Record, vantage: &Vantage) -> Value {
    json!({
        "host": record.owner.host,
        "pid": record.owner.pid,
        "alive": vantage.owner_alive(record),
    })
}

/// Writes `value` and a newline.
pub fn write_line(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    let text = value.to_string();
    if text.chars().any(needs_escape) {
        let mut safe = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if needs_escape(c) {
                // Such characters only occur inside JSON strings, where
                // `\uXXXX` means the same character.
                let _ = write!(safe, "\\u{:04x}", c as u32);
            } else {
                safe.push(c);
            }
        }
        writeln!(out, "{safe}")
    } else {
        writeln!(out, "{text}")
    }
}

/// Characters JSON allows raw that a terminal may act on.
fn needs_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_still_mean_the_same() {
        let value = json!({"k": "a\u{1b}b\u{7f}c\u{9b}d\u{202e}e"});
        let mut out = Vec::new();
        write_line(&mut out, &value).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "{\"k\":\"a\\u001bb\\u007fc\\u009bd\\u202ee\"}\n");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}

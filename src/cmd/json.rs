//! `--json` output: JSON Lines, one object per line, with exactly the field
//! names and types of SPEC.md "Operator commands", in the SPEC's order
//! (scripts depend on them; `tests/cli/inspect.rs` pins the schema).
//!
//! Records are written field by field rather than through a `Value`: a
//! million of them then print in about the time the table takes. Strings
//! escape more than JSON requires — also DEL, C1 controls and bidi
//! overrides — so even `--json` piped to a terminal cannot drive it.

use super::show::{rfc3339, State, Vantage};
use crate::store::Record;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{self, Write};

/// Writes a record as the SPEC's JSON object and a newline. `owner` is
/// given for every record; its `alive` is only ever true for an
/// `in_progress` record.
pub fn write_record(out: &mut dyn Write, record: &Record, vantage: &Vantage) -> io::Result<()> {
    let mut o = Object::new();
    o.string("key", &record.key);
    o.string("status", record.status.as_str());
    o.int("exit_code", record.exit_code.map(i64::from));
    o.int("signal", record.signal.map(i64::from));
    o.bool("timed_out", record.timed_out);
    o.name("command");
    o.line.push('[');
    for (i, arg) in record.argv().enumerate() {
        if i > 0 {
            o.line.push(',');
        }
        quote(&mut o.line, &String::from_utf8_lossy(arg));
    }
    o.line.push(']');
    o.string("cwd", &String::from_utf8_lossy(&record.cwd));
    match &record.label {
        Some(label) => o.string("label", label),
        None => o.int("label", None),
    }
    o.name("fingerprint");
    quote_hex(&mut o.line, &record.fingerprint);
    o.string("started_at", &rfc3339(record.started_at));
    o.time("finished_at", record.finished_at);
    o.time("expires_at", record.expires_at);
    o.time("lease_until", record.lease_until);
    o.bool("expired", record.is_expired(vantage.now));
    o.bool("crashed", vantage.state(record) == State::Crashed);
    o.int(
        "duration_ms",
        record.finished_at.map(|end| end - record.started_at),
    );
    o.int("attempts", Some(record.attempt));
    o.int("replays", Some(record.replays));
    // SQLite has no fencing tokens: its number is internal.
    o.int("token", vantage.shared.then_some(record.token));
    o.name("owner");
    o.line.push('{');
    o.first = true;
    o.string("host", &record.owner.host);
    o.int("pid", Some(record.owner.pid));
    o.bool("alive", vantage.owner_alive(record));
    o.line.push('}');
    o.int("child_pid", record.owner.child.map(|c| c.pid));
    o.int("stdout_bytes", Some(record.stdout_bytes));
    o.int("stderr_bytes", Some(record.stderr_bytes));
    o.bool("stdout_truncated", record.stdout_truncated);
    o.bool("stderr_truncated", record.stderr_truncated);
    o.line.push_str("}\n");
    out.write_all(o.line.as_bytes())
}

/// The owner as a JSON value, for reports that build theirs with `json!`.
pub fn owner(record: &Record, vantage: &Vantage) -> Value {
    serde_json::json!({
        "host": record.owner.host,
        "pid": record.owner.pid,
        "alive": vantage.owner_alive(record),
    })
}

/// Writes `value` and a newline, strings escaped as `quote` does.
pub fn write_line(out: &mut dyn Write, value: &Value) -> io::Result<()> {
    let mut line = String::new();
    value_into(&mut line, value);
    line.push('\n');
    out.write_all(line.as_bytes())
}

fn value_into(line: &mut String, value: &Value) {
    match value {
        Value::String(s) => quote(line, s),
        Value::Array(items) => {
            line.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                value_into(line, item);
            }
            line.push(']');
        }
        Value::Object(fields) => {
            line.push('{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                quote(line, name);
                line.push(':');
                value_into(line, item);
            }
            line.push('}');
        }
        // null, booleans and numbers hold no text to escape.
        other => line.push_str(&other.to_string()),
    }
}

/// One JSON object being written into a line.
struct Object {
    line: String,
    first: bool,
}

impl Object {
    fn new() -> Object {
        let mut line = String::with_capacity(512);
        line.push('{');
        Object { line, first: true }
    }

    fn name(&mut self, name: &str) {
        if !self.first {
            self.line.push(',');
        }
        self.first = false;
        quote(&mut self.line, name);
        self.line.push(':');
    }

    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        quote(&mut self.line, value);
    }

    fn int(&mut self, name: &str, value: Option<i64>) {
        self.name(name);
        match value {
            Some(n) => {
                let _ = write!(self.line, "{n}");
            }
            None => self.line.push_str("null"),
        }
    }

    fn bool(&mut self, name: &str, value: bool) {
        self.name(name);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn time(&mut self, name: &str, at: Option<i64>) {
        match at {
            Some(at) => self.string(name, &rfc3339(at)),
            None => self.int(name, None),
        }
    }
}

/// Appends `s` as a JSON string, copying runs that need no escape whole.
fn quote(line: &mut String, s: &str) {
    line.push('"');
    let mut plain = 0;
    for (at, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if needs_escape(c) => "",
            _ => continue,
        };
        line.push_str(&s[plain..at]);
        if escaped.is_empty() {
            let _ = write!(line, "\\u{:04x}", c as u32);
        } else {
            line.push_str(escaped);
        }
        plain = at + c.len_utf8();
    }
    line.push_str(&s[plain..]);
    line.push('"');
}

/// Appends `bytes` as a JSON string of lowercase hex digits.
fn quote_hex(line: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    line.push('"');
    for &b in bytes {
        line.push(char::from(DIGITS[usize::from(b >> 4)]));
        line.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    line.push('"');
}

/// Characters a terminal may act on: C0 and C1 controls, DEL, invisible
/// format characters and bidi overrides.
fn needs_escape(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn terminal_controls_are_escaped_and_still_mean_the_same() {
        let value = json!({"k": ["a\u{1b}b\u{7f}c\u{9b}d\u{202e}e\"\\\n", 1, null, true]});
        let mut out = Vec::new();
        write_line(&mut out, &value).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "{\"k\":[\"a\\u001bb\\u007fc\\u009bd\\u202ee\\\"\\\\\\n\",1,null,true]}\n"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}

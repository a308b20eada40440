//! Showing untrusted bytes (keys, commands, paths) on a terminal safely.
//!
//! Keys and commands can hold anything. Everything idem prints about them
//! goes through `escape`, so no raw ESC, BEL or invalid UTF-8 ever reaches a
//! terminal; only `inspect --stdout/--stderr` and replay write raw bytes.

use std::fmt::Write;
use std::time::Duration;

/// A duration as a person reads it in a message: `250ms`, `9.7s`, `42s`,
/// `2m 5s`, `1h 30m` — never `9s 690ms 192us 59ns`. Rounded to the
/// nearest unit shown.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 100 {
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            frac => format!("{}.{frac}s", tenths / 10),
        };
    }
    let secs = (ms + 500) / 1_000;
    // Past an hour, seconds are noise: whole minutes.
    let secs = if secs >= 3_600 {
        (secs + 30) / 60 * 60
    } else {
        secs
    };
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(u64::MAX)))
        .to_string()
}

/// Valid UTF-8 printable text as is; control characters as `\n`, `\t`,
/// `\e`, `\xNN` or `\u{NNNN}`; invalid UTF-8 bytes as `\xNN`; a backslash as `\\`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\x1b' => out.push_str("\\e"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                // C1 controls, bidi overrides and other invisible format characters.
                c if ('\u{80}'..='\u{9f}').contains(&c)
                    || ('\u{200b}'..='\u{200f}').contains(&c)
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c) =>
                {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// An argv as a shell-like line: arguments escaped, quoted when they hold
/// spaces or are empty.
pub fn command_line<'a>(argv: impl Iterator<Item = &'a [u8]>) -> String {
    let mut line = String::new();
    for (i, arg) in argv.enumerate() {
        if i > 0 {
            line.push(' ');
        }
        let shown = escape(arg);
        if shown.is_empty() || shown.contains([' ', '\'', '"']) {
            line.push('\'');
            line.push_str(&shown.replace('\'', "'\\''"));
            line.push('\'');
        } else {
            line.push_str(&shown);
        }
    }
    line
}

/// A key quoted for copy-pasting into a shell command: as is when it is
/// plain, in single quotes when it holds nothing a terminal would act on,
/// else in bash's `$'…'` with every such character as an escape (so the
/// line stays safe to print and still means the key when pasted).
pub fn shell_word(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+=,%".contains(c))
    {
        return key.to_owned();
    }
    if escape(key.as_bytes()) == key.replace('\\', "\\\\") {
        return format!("'{}'", key.replace('\'', "'\\''"));
    }
    let mut word = String::from("$'");
    for c in key.chars() {
        match c {
            '\\' | '\'' => {
                word.push('\\');
                word.push(c);
            }
            c => {
                let mut utf8 = [0; 4];
                let utf8 = c.encode_utf8(&mut utf8);
                if escape(utf8.as_bytes()) == *utf8 {
                    word.push(c);
                } else {
                    // Byte by byte: `\u` would depend on the shell's locale.
                    for b in utf8.bytes() {
                        word.push_str(&format!("\\x{b:02x}"));
                    }
                }
            }
        }
    }
    word.push('\'');
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        let ms = Duration::from_millis;
        assert_eq!(duration(Duration::from_nanos(9_690_192_059)), "9.7s");
        assert_eq!(duration(ms(250)), "250ms");
        assert_eq!(duration(ms(1_000)), "1s");
        assert_eq!(duration(ms(9_960)), "10s");
        assert_eq!(duration(ms(30_000)), "30s");
        assert_eq!(duration(ms(125_400)), "2m 5s");
        assert_eq!(duration(ms(5_410_000)), "1h 30m");
        assert!(!duration(Duration::MAX).is_empty());
    }

    #[test]
    fn control_bytes_never_pass_raw() {
        let shown = escape(b"a\x1b[31mb\x07c\n\xff\xc3(\x9bd");
        assert_eq!(shown, "a\\e[31mb\\x07c\\n\\xff\\xc3(\\x9bd");
        assert!(!shown.bytes().any(|b| b < 0x20 || b == 0x7f));
        assert_eq!(escape("é\u{202e}".as_bytes()), "é\\u{202e}");
    }

    #[test]
    fn command_lines_quote_what_needs_it() {
        let argv: [&[u8]; 4] = [b"sh", b"-c", b"echo 'hi'", b""];
        assert_eq!(
            command_line(argv.into_iter()),
            "sh -c 'echo '\\''hi'\\''' ''"
        );
    }

    #[test]
    fn shell_words_are_plain_quoted_or_escaped() {
        assert_eq!(shell_word("invoice-42"), "invoice-42");
        assert_eq!(shell_word("it's a\\b"), "'it'\\''s a\\b'");
        assert_eq!(
            shell_word("a\tb\x1b'\\é\u{202e}"),
            "$'a\\x09b\\x1b\\'\\\\é\\xe2\\x80\\xae'"
        );
        assert!(!shell_word("\x07\u{9b}").chars().any(char::is_control));
    }
}

//! Showing untrusted bytes (keys, commands, paths) on a terminal safely.
//!
//! Keys and commands can hold anything. Everything idem prints about them
//! goes through `escape`, so no raw ESC, BEL or invalid UTF-8 ever reaches a
//! terminal; only `inspect --stdout/--stderr` and replay write raw bytes.

use std::fmt::Write;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

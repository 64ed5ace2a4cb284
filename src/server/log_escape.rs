//! Client strings in log lines. Request ids, topics and other text a client chose are written
//! to the log through [`Escaped`], so that a newline or a terminal escape in them can neither
//! forge a log line nor rewrite the operator's terminal. They are accepted on the wire (JSON
//! allows any character in a string) and echoed to the client unchanged; only the log escapes.

use std::fmt;

/// Displays a string with control characters, Unicode line and paragraph separators, and
/// backslashes escaped as Rust does (`\n`, `\u{1b}`, `\\`); everything else as it is.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_cannot_break_a_log_line() {
        let forged = "a\nINFO request x: finish stop\r\u{1b}[2J\\\u{7f}\u{85}\u{2028}";
        let shown = Escaped(forged).to_string();
        assert_eq!(
            shown,
            r"a\nINFO request x: finish stop\r\u{1b}[2J\\\u{7f}\u{85}\u{2028}"
        );
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        for s in ["req-1", "Grüße 👋", "a b\"c'd"] {
            assert_eq!(Escaped(s).to_string(), s);
        }
    }
}

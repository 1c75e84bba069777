//! Values from the input on their way into a header field or a log line: no CR, LF or other
//! control character ever passes (a header injected into the delivered message, or a forged
//! log line, starts with one), and the length is bounded.

/// Longest value written into one header field or log item, in characters.
pub const MAX_VALUE: usize = 4000;

/// `value` with every control character (CR and LF included) replaced by a space, cut to
/// [`MAX_VALUE`] characters.
pub fn clean(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE));
    for (n, c) in value.chars().enumerate() {
        if n >= MAX_VALUE {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// `value` as an RFC 2045 quoted-string, cleaned as by [`clean`].
pub fn quoted(value: &str) -> String {
    let clean = clean(value);
    let mut out = String::with_capacity(clean.len() + 2);
    out.push('"');
    for c in clean.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_pass() {
        assert_eq!(clean("REQUEST\r\nBcc: x@evil"), "REQUEST  Bcc: x@evil");
        assert_eq!(clean("a\u{0}b\u{1b}[31mc\u{85}d"), "a b [31mc d");
        assert_eq!(quoted("say \"hi\"\\\n"), "\"say \\\"hi\\\"\\\\ \"");
    }

    #[test]
    fn length_is_bounded() {
        let long = "x".repeat(MAX_VALUE * 2);
        assert_eq!(clean(&long).chars().count(), MAX_VALUE + 3);
    }
}

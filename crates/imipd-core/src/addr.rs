//! Calendar-user addresses: the one normalizer every comparison goes through.

/// Normalizes a calendar-user address for comparison (DESIGN, iTIP decisions): without the
/// `mailto:` scheme (matched case-insensitively), percent-escaped *unreserved* characters
/// (RFC 3986 2.3: ALPHA DIGIT `-` `.` `_` `~`) decoded, then case-folded whole (scheme, local
/// part and domain compare case-insensitively). Any other escape (`%40`), trailing dots and angle
/// brackets are kept, so such addresses stay different.
pub fn norm_addr(value: &str) -> String {
    let v = value.trim();
    let v = match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &v[7..],
        _ => v,
    };
    decode_unreserved(v.trim()).to_lowercase()
}

/// Decodes `%XX` escapes whose octet is an RFC 3986 unreserved character; leaves every other
/// escape (and a lone `%`) as it is.
fn decode_unreserved(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains('%') {
        return std::borrow::Cow::Borrowed(v);
    }
    let bytes = v.as_bytes();
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = v[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&v[i..i + ch_len]);
        i += ch_len;
    }
    std::borrow::Cow::Owned(out)
}

/// `mailto:` form of an address, for output.
pub fn mailto(addr: &str) -> String {
    format!("mailto:{}", norm_addr(addr))
}

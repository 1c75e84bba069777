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

/// Normalizes a mailbox (RFC 5321/5322 addr-spec: a From address, a certificate's e-mail
/// address, a SASL login) for comparison: surrounding space and a `mailto:` scheme dropped,
/// case-folded, nothing decoded. `%` is an ordinary character of a local part there, so
/// `%61lice@example.com` and `alice@example.com` are two mailboxes.
pub fn norm_mailbox(value: &str) -> String {
    let v = value.trim();
    let v = match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &v[7..],
        _ => v,
    };
    v.trim().to_lowercase()
}

/// A proven mailbox as a calendar-user address, in [`norm_addr`]'s form: its `%` escaped as
/// `%25`, so that no percent-decoding of calendar addresses can turn one mailbox into another
/// (the owner of `%61lice@example.com` never speaks for `alice@example.com`).
pub fn mailbox_as_cal_addr(mailbox: &str) -> String {
    norm_mailbox(mailbox).replace('%', "%25")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_with_percent_never_becomes_another_calendar_user() {
        assert_eq!(norm_addr("mailto:%61lice@example.com"), "alice@example.com");
        assert_eq!(
            norm_mailbox("MAILTO: %61lice@Example.COM "),
            "%61lice@example.com"
        );
        let cal = mailbox_as_cal_addr("%61lice@example.com");
        assert_ne!(cal, norm_addr("mailto:alice@example.com"));
        // ...and matches the calendar address that names that very mailbox.
        assert_eq!(cal, norm_addr("mailto:%2561lice@example.com"));
        assert_eq!(
            mailbox_as_cal_addr("Alice@Example.com"),
            "alice@example.com"
        );
    }
}

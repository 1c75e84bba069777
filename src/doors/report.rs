//! What the doors write about a verdict: the `X-Imipd-Result` header and the log lines, the
//! same for the milter and LMTP.

use crate::pipeline::Outcome;
use crate::pipeline::Verdict;
use imipd_core::addr::norm_addr as ical_norm_addr;

/// Object outcomes logged one per line for one message; the rest are summarized.
pub const MAX_LOGGED_OUTCOMES: usize = 20;

/// The log lines of one message's verdict: one per object decided for the first
/// [`MAX_LOGGED_OUTCOMES`], the rest in one summary line (a message naming a thousand recipients
/// must not write a thousand lines; `imipd journal` keeps them all).
pub fn verdict_log_lines(door: &str, queue_id: Option<&str>, v: &Verdict) -> Vec<String> {
    let queue_id = queue_id.unwrap_or("-");
    let msgid = v.message_id.as_deref().unwrap_or("-");
    let mut lines: Vec<String> = v
        .outcomes
        .iter()
        .take(MAX_LOGGED_OUTCOMES)
        .map(|o| {
            format!(
                "{door}: queue_id={queue_id} msgid={msgid} rcpt={} uid={} method={} outcome={} reason={}",
                ical_norm_addr(&o.recipient),
                if o.uid.is_empty() { "-" } else { &o.uid },
                o.method,
                o.outcome,
                o.reason
            )
        })
        .collect();
    if let Some(rest) = v
        .outcomes
        .get(MAX_LOGGED_OUTCOMES..)
        .filter(|r| !r.is_empty())
    {
        let count = |what: Outcome| rest.iter().filter(|o| o.outcome == what).count();
        lines.push(format!(
            "{door}: queue_id={queue_id} msgid={msgid} {} more objects not logged one by one: \
             {} applied, {} ignored, {} rejected (see imipd journal)",
            rest.len(),
            count(Outcome::Applied),
            count(Outcome::Ignored),
            count(Outcome::Rejected)
        ));
    }
    lines
}

/// The queue id the MTA wrote in the newest Received header ("... with ESMTP id 4Xyz...;").
pub fn queue_id_from_received(raw: &[u8]) -> Option<String> {
    let first = crate::proof::header_values(raw, "Received")
        .into_iter()
        .next()?;
    let mut words = first.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("id") {
            let id = words.next()?.trim_end_matches(';');
            if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Some(id.to_string());
            }
            return None;
        }
    }
    None
}

/// An envelope address (`<alice@example.org>`) as a calendar user: a mailbox, so never
/// percent-decoded into another one (RCPT `<%61lice@example.org>` is not alice).
pub fn strip_angle(a: &str) -> String {
    imipd_core::addr::mailbox_as_cal_addr(a.trim().trim_start_matches('<').trim_end_matches('>'))
}

/// The header that says what imipd did, per recipient. Recipients not named in To/Cc are not
/// named in the header either (no Bcc leak).
pub fn result_header(v: &Verdict, visible: &[String]) -> String {
    if v.outcomes.is_empty() {
        return "no calendar object applied".into();
    }
    let mut value = v
        .outcomes
        .iter()
        .map(|o| {
            let r = ical_norm_addr(&o.recipient);
            let who = if visible.contains(&r) {
                r
            } else {
                "(undisclosed recipient)".into()
            };
            format!(
                "{who}: {} {} {} ({})",
                o.method,
                if o.uid.is_empty() { "-" } else { &o.uid },
                o.outcome,
                o.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    for note in v.proof_notes() {
        value.push_str("; note: ");
        value.push_str(note);
    }
    crate::sanitize::clean(&value)
}

pub fn visible_recipients(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for h in ["To", "Cc"] {
        for v in crate::proof::header_values(raw, h) {
            for part in v.split(',') {
                let addr = match (part.find('<'), part.find('>')) {
                    (Some(a), Some(b)) if b > a => &part[a + 1..b],
                    _ => part.trim(),
                };
                out.push(imipd_core::addr::mailbox_as_cal_addr(addr));
            }
        }
    }
    out
}

pub const RESULT_HEADER: &str = "X-Imipd-Result";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ObjectOutcome;

    #[test]
    fn a_message_with_many_outcomes_logs_a_bounded_number_of_lines() {
        let outcome = |i: usize, what: Outcome| ObjectOutcome {
            recipient: format!("mailto:u{i}@example.org"),
            method: "REQUEST".into(),
            component: "VEVENT".into(),
            uid: format!("w{i}"),
            outcome: what,
            reason: crate::pipeline::Why::Applied("r".into()),
        };
        let mut v = Verdict::default();
        v.outcomes = (0..64_000)
            .map(|i| {
                outcome(
                    i,
                    if i % 2 == 0 {
                        Outcome::Applied
                    } else {
                        Outcome::Rejected
                    },
                )
            })
            .collect();
        let lines = verdict_log_lines("lmtp", Some("Q1"), &v);
        assert_eq!(lines.len(), MAX_LOGGED_OUTCOMES + 1);
        assert!(lines[0].contains("uid=w0 method=REQUEST outcome=applied reason=r"));
        assert!(
            lines[MAX_LOGGED_OUTCOMES].contains("63980 more objects")
                && lines[MAX_LOGGED_OUTCOMES].contains("31990 applied, 0 ignored, 31990 rejected"),
            "{}",
            lines[MAX_LOGGED_OUTCOMES]
        );
        v.outcomes.truncate(3);
        assert_eq!(verdict_log_lines("lmtp", None, &v).len(), 3);
    }
}

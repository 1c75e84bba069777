//! What the receiver does with a scheduling POST, in the order of the brief's checklist
//! (draft-desruisseaux-ischedule-05 §6, §7.5, §9): version, media type, Originator, Recipients,
//! size, DKIM with its time window and domain binding, the iCalendar body, the iTIP
//! Originator/Recipient rules, locality, replay; then the shared pipeline for each local
//! recipient. The answer is a whole-request error or one status per recipient; nothing is
//! stored for a refused request.
//!
//! Cost before authentication is bounded: the cheap header checks (counts, sizes, the d= and s=
//! syntax and binding) come first and are linear in the request; a key is looked up only after
//! them; the signature check, the iCalendar parsing and the pipeline run on a blocking thread,
//! never on the async workers that also serve the milter and LMTP. What goes back to the peer
//! is generic where the detail would reveal something (key lookups, stored state); the detail
//! goes to the log.

use crate::ischedule::dkim::{self, DkimError};
use crate::ischedule::{unix_now, Bridge};
use crate::pipeline::ischedule::{IscheduleDelivery, IscheduleOutcome};
use crate::pipeline::{Pipeline, Verdict};
use imipd_core::addr::norm_addr;
use std::net::IpAddr;
use std::sync::Arc;

/// A POST as the HTTP layer received it.
pub struct Request {
    /// Every header line in the order received (names as given; repeats kept).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<IpAddr>,
}

/// The answer for one recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientAnswer {
    /// Exactly as the Recipient header gave it.
    pub recipient: String,
    pub status: &'static str,
    pub calendar_data: Option<String>,
    pub description: Option<String>,
}

/// What goes back to the sender.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The whole request is refused with this HTTP status and error element.
    Error {
        status: u16,
        element: &'static str,
        description: String,
    },
    Responses(Vec<RecipientAnswer>),
}

pub const DELIVERED: &str = "2.0;Success";
pub const INVALID_USER: &str = "3.7;Invalid calendar user";
pub const NO_AUTHORITY: &str = "3.8;No authority";
pub const CANNOT_HANDLE: &str = "5.0;Service cannot handle request";
pub const UNAVAILABLE: &str = "5.1;Service unavailable";

fn refuse(status: u16, element: &'static str, description: impl Into<String>) -> Answer {
    Answer::Error {
        status,
        element,
        description: description.into(),
    }
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A calendar user address the receiver can work with: `mailto:` with a domain.
fn valid_address(a: &str) -> bool {
    let a = a.trim();
    a.len() > 7
        && a.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("mailto:"))
        && norm_addr(a).rsplit_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.contains(char::is_whitespace)
        })
}

/// `text/calendar; component=X; method=Y` -> (media type, component, method).
fn media_type(ct: &str) -> (String, Option<String>, Option<String>) {
    let mut parts = ct.split(';');
    let mt = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut comp = None;
    let mut method = None;
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            let v = v.trim().trim_matches('"').to_ascii_uppercase();
            match k.trim().to_ascii_lowercase().as_str() {
                "component" => comp = Some(v),
                "method" => method = Some(v),
                _ => {}
            }
        }
    }
    (mt, comp, method)
}

/// What the cheap checks found, before the signature is verified.
struct Pre {
    originator: String,
    recipients: Vec<String>,
    ct_comp: Option<String>,
    ct_method: Option<String>,
    /// The DKIM-Signature value, its parse and the key found for it.
    signature: Option<(
        String,
        dkim::Signature,
        openssl::pkey::PKey<openssl::pkey::Public>,
    )>,
    replay_until: i64,
    signer: String,
}

/// A request whose headers and signature passed: what the pipeline needs to deliver it.
struct Checked {
    /// Normalized.
    originator: String,
    /// As the Recipient headers gave them.
    recipients: Vec<String>,
    ct_comp: Option<String>,
    ct_method: Option<String>,
    message_id: Option<String>,
    replay_key: Option<(String, i64)>,
}

/// Recipients from the Recipient headers, de-duplicated in linear time, in the order given;
/// `Err(())` as soon as more than `max` distinct ones are seen.
fn recipients_of(h: &[(String, String)], max: usize) -> Result<Vec<String>, ()> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for r in values(h, "recipient")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        if seen.insert(norm_addr(r)) {
            if out.len() == max {
                return Err(());
            }
            out.push(r.to_string());
        }
    }
    Ok(out)
}

/// The longest accepted lifetime of a request signature: `x - t`, or the age of `t` without
/// `x`; a signature with neither never expires and is refused.
fn check_lifetime(sig: &dkim::Signature, now: i64, max: i64) -> Result<(), String> {
    match (sig.timestamp, sig.expiration) {
        (Some(t), Some(x)) if x - t > max => Err(format!(
            "signature valid for {} s (x - t); at most {max} s are accepted",
            x - t
        )),
        (None, Some(x)) if x - now > max => Err(format!(
            "signature without t= valid for {} more seconds; at most {max} s are accepted",
            x - now
        )),
        (None, None) => Err("signature without t= and x= never expires".into()),
        _ => Ok(()),
    }
}

async fn precheck(bridge: &Bridge, req: &Request) -> Result<Pre, Answer> {
    let is = &bridge.cfg.ischedule;
    let h = &req.headers;
    if req.body.len() > is.max_content_length {
        return Err(refuse(
            403,
            "max-content-length",
            format!("body larger than {} octets", is.max_content_length),
        ));
    }
    // 1. version
    let versions = values(h, "ischedule-version");
    if !versions
        .iter()
        .flat_map(|v| v.split(','))
        .any(|v| v.trim() == "1.0")
    {
        return Err(refuse(
            400,
            "version-not-supported",
            if versions.is_empty() {
                "iSchedule-Version is missing".to_string()
            } else {
                format!(
                    "iSchedule-Version {} is not supported; 1.0 is",
                    crate::ischedule::clean(&versions.join(","))
                )
            },
        ));
    }
    // 2. media type
    let cts = values(h, "content-type");
    let (mt, ct_comp, ct_method) = match cts.as_slice() {
        [one] => media_type(one),
        _ => (String::new(), None, None),
    };
    if mt != "text/calendar" {
        return Err(refuse(
            400,
            "invalid-calendar-data-type",
            format!(
                "media type {:?} is not accepted; text/calendar is",
                crate::ischedule::clean(&mt)
            ),
        ));
    }
    // 3. exactly one Originator
    let origs: Vec<&str> = values(h, "originator")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .take(2)
        .collect();
    let originator = match origs.as_slice() {
        [] => return Err(refuse(400, "originator-missing", "no Originator header")),
        [one] => one.to_string(),
        _ => {
            return Err(refuse(
                400,
                "too-many-originators",
                "more than one Originator",
            ))
        }
    };
    if !valid_address(&originator) {
        return Err(refuse(
            403,
            "originator-invalid",
            format!(
                "{:?} is not a mailto: calendar user address",
                crate::ischedule::clean(&originator)
            ),
        ));
    }
    // 4. at least one Recipient, at most max_recipients
    let Ok(recipients) = recipients_of(h, is.max_recipients) else {
        return Err(refuse(
            403,
            "max-recipients",
            format!("more than {} recipients", is.max_recipients),
        ));
    };
    if recipients.is_empty() {
        return Err(refuse(400, "recipient-missing", "no Recipient header"));
    }
    // 5. DKIM: the cheap checks, then the key; the signature itself is checked later.
    let sigs = values(h, "dkim-signature");
    let now = unix_now();
    let unsigned_ok = req.peer.is_some_and(|ip| {
        is.unsigned_peers
            .iter()
            .any(|p| p.parse::<IpAddr>().ok() == Some(ip))
    });
    let mut replay_until = now + is.max_signature_age_secs;
    let mut signer = String::from("-");
    let mut signature = None;
    match sigs.as_slice() {
        [] if unsigned_ok => {}
        [] => return Err(verification_failed(DkimError::Missing)),
        [value] => {
            let sig = dkim::parse_signature(value, is.allow_sha1).map_err(verification_failed)?;
            dkim::check_required_headers(&sig).map_err(verification_failed)?;
            dkim::check_times(&sig, now, is.clock_skew_secs, is.max_signature_age_secs)
                .map_err(verification_failed)?;
            check_lifetime(&sig, now, is.max_signature_age_secs)
                .map_err(|e| refuse(403, "verification-failed", e))?;
            bridge
                .signer_syntax(&sig, &originator)
                .map_err(|e| refuse(403, "verification-failed", e))?;
            let key = match bridge.lookup_key(&sig).await {
                Ok(k) => k,
                Err(e) => {
                    // The detail (what was fetched, what answered) is for the log only: told
                    // to the peer it would make the receiver a probe of other hosts.
                    crate::app::log(format!(
                        "ischedule: peer={} key lookup for {}/{} failed: {}",
                        req.peer
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                        sig.domain,
                        sig.selector,
                        crate::ischedule::clean(&e.to_string())
                    ));
                    return Err(refuse(
                        403,
                        "verification-failed",
                        format!("no usable public key for {}/{}", sig.domain, sig.selector),
                    ));
                }
            };
            replay_until = sig
                .expiration
                .unwrap_or(sig.timestamp.unwrap_or(now) + is.max_signature_age_secs)
                + is.clock_skew_secs;
            signer = sig.domain.clone();
            signature = Some((value.to_string(), sig, key));
        }
        _ => return Err(verification_failed(DkimError::Multiple)),
    }
    Ok(Pre {
        originator,
        recipients,
        ct_comp,
        ct_method,
        signature,
        replay_until,
        signer,
    })
}

/// The signature check (CPU-heavy: run on a blocking thread) and the replay key.
fn check(req: &Request, pre: Pre) -> Result<Checked, Answer> {
    let h = &req.headers;
    let Pre {
        originator,
        recipients,
        ct_comp,
        ct_method,
        signature,
        replay_until,
        signer,
    } = pre;
    if let Some((value, sig, key)) = &signature {
        dkim::verify(h, &req.body, value, sig, key).map_err(|e| {
            refuse(
                403,
                "verification-failed",
                format!("{e} (key {}/{})", sig.domain, sig.selector),
            )
        })?;
    }
    let orig = norm_addr(&originator);
    let message_id = values(h, "ischedule-message-id")
        .first()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let replay_key = message_id.as_ref().map(|id| {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("{signer}\0{orig}\0{id}").as_bytes());
        (
            d.iter().take(16).map(|b| format!("{b:02x}")).collect(),
            replay_until,
        )
    });
    Ok(Checked {
        originator: orig,
        recipients,
        ct_comp,
        ct_method,
        message_id,
        replay_key,
    })
}

fn verification_failed(e: DkimError) -> Answer {
    refuse(403, "verification-failed", e.to_string())
}

/// The status of one recipient from what the pipeline did.
fn status_of(v: &Verdict, rcpt: &str) -> (&'static str, String) {
    let mine: Vec<_> = v
        .outcomes
        .iter()
        .filter(|o| norm_addr(&o.recipient) == rcpt)
        .collect();
    let reason = mine
        .iter()
        .map(|o| format!("{} {}: {}", o.uid, o.outcome, o.reason))
        .collect::<Vec<_>>()
        .join("; ");
    // One status for every refusal, whatever the reason: a different code for "not an
    // attendee of the stored event" and "no such event" would tell an outsider which UIDs
    // exist here.
    match mine
        .iter()
        .find(|o| o.outcome == crate::pipeline::Outcome::Rejected)
    {
        None if mine.is_empty() => (CANNOT_HANDLE, "nothing to deliver".into()),
        None => (DELIVERED, reason),
        Some(_) => (CANNOT_HANDLE, reason),
    }
}

/// The generic text of a status, for the peer; the detail goes to the log.
fn generic_description(status: &str) -> &'static str {
    match status {
        DELIVERED => "delivered",
        NO_AUTHORITY => "not authorized",
        _ => "not applied",
    }
}

/// Checks and delivers one request: the cheap checks and the key lookup here, everything that
/// costs CPU (signature, parsing, pipeline) on a blocking thread.
pub async fn receive(bridge: Arc<Bridge>, pipeline: Arc<Pipeline>, req: Request) -> Answer {
    let pre = match precheck(&bridge, &req).await {
        Ok(p) => p,
        Err(a) => {
            crate::metrics::message_refused("ischedule");
            return a;
        }
    };
    match tokio::task::spawn_blocking(move || deliver(pipeline, req, pre)).await {
        Ok(a) => a,
        Err(e) => {
            crate::app::log(format!("ischedule: request task failed: {e}"));
            refuse(500, "invalid-scheduling-message", "internal error")
        }
    }
}

fn deliver(pipeline: Arc<Pipeline>, req: Request, pre: Pre) -> Answer {
    let peer = req
        .peer
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    let c = match check(&req, pre) {
        Ok(c) => c,
        Err(a) => {
            crate::metrics::message_refused("ischedule");
            return a;
        }
    };
    let result = pipeline.process_ischedule(&IscheduleDelivery {
        body: &req.body,
        ct_component: c.ct_comp.as_deref(),
        ct_method: c.ct_method.as_deref(),
        originator: &c.originator,
        recipients: &c.recipients,
        message_id: c.message_id.as_deref(),
        replay: c.replay_key.as_ref().map(|(k, until)| (k.as_str(), *until)),
        accepts: &crate::ischedule::capabilities::OUR_MESSAGES,
    });
    match &result {
        Ok(IscheduleOutcome::Done { verdict, .. }) => {
            crate::metrics::message("ischedule", Ok::<_, ()>(verdict))
        }
        Ok(_) => crate::metrics::message_refused("ischedule"),
        Err(e) => crate::metrics::message("ischedule", Err(e)),
    }
    let (verdict, kind, local) = match result {
        Ok(IscheduleOutcome::Done {
            verdict,
            kind,
            local,
        }) => (verdict, kind, local),
        Ok(IscheduleOutcome::Refused {
            element,
            description,
        }) => return refuse(403, element, description),
        Ok(IscheduleOutcome::Replay) => {
            return refuse(
                403,
                "verification-failed",
                format!(
                    "iSchedule-Message-ID {} was already received (replay)",
                    crate::ischedule::clean(&c.message_id.unwrap_or_default())
                ),
            )
        }
        Err(e) => {
            crate::app::log(format!("ischedule: peer={peer} store unavailable: {e}"));
            return Answer::Responses(
                c.recipients
                    .iter()
                    .map(|r| RecipientAnswer {
                        recipient: r.clone(),
                        status: UNAVAILABLE,
                        calendar_data: None,
                        description: Some("store unavailable, try again later".into()),
                    })
                    .collect(),
            );
        }
    };
    let mut out = Vec::new();
    for r in &c.recipients {
        let n = norm_addr(r);
        if !local.contains(&n) {
            out.push(RecipientAnswer {
                recipient: r.clone(),
                status: INVALID_USER,
                calendar_data: None,
                description: Some("not a calendar user of this server".into()),
            });
            continue;
        }
        let (mut status, detail) = status_of(&verdict, &n);
        // Every Originator over iSchedule is an outsider (locality check above): what the
        // pipeline found (whether a UID exists, who organizes it, whether it was applied)
        // stays in the log. A scheduling message taken for a local recipient is "delivered"
        // (as to a CalDAV schedule inbox) whatever the recipient's side then decided; only a
        // free/busy query, whose answer is the data, says when there is none.
        if kind != "VFREEBUSY" && status == CANNOT_HANDLE && detail != "nothing to deliver" {
            status = DELIVERED;
        }
        crate::app::log(format!(
            "ischedule: peer={peer} originator={} rcpt={n} status={status} detail={}",
            c.originator,
            crate::ischedule::clean(&detail)
        ));
        let calendar_data = if status == DELIVERED {
            verdict
                .freebusy
                .iter()
                .find(|f| f.recipient == n)
                .map(|f| f.calendar.clone())
        } else {
            None
        };
        out.push(RecipientAnswer {
            recipient: r.clone(),
            status,
            calendar_data,
            description: Some(generic_description(status).into()),
        });
    }
    Answer::Responses(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_parameters_in_any_order() {
        let (mt, c, m) =
            media_type("Text/Calendar ; method=REPLY; charset=utf-8; component=vevent");
        assert_eq!(mt, "text/calendar");
        assert_eq!(c.as_deref(), Some("VEVENT"));
        assert_eq!(m.as_deref(), Some("REPLY"));
    }

    #[test]
    fn recipients_are_deduplicated_in_linear_time_and_capped() {
        let many: String = (0..20_000)
            .map(|i| format!("mailto:u{}@b.test", i % 50))
            .collect::<Vec<_>>()
            .join(",");
        let h = vec![("Recipient".to_string(), many)];
        let t = std::time::Instant::now();
        assert_eq!(recipients_of(&h, 100).unwrap().len(), 50);
        assert!(recipients_of(&h, 49).is_err());
        let distinct: String = (0..20_000)
            .map(|i| format!("mailto:u{i}@b.test"))
            .collect::<Vec<_>>()
            .join(",");
        let h = vec![("Recipient".to_string(), distinct)];
        assert!(recipients_of(&h, 100).is_err());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn signature_lifetime_is_capped() {
        let sig = |t: Option<i64>, x: Option<i64>| dkim::Signature {
            domain: "a.test".into(),
            selector: "s".into(),
            algorithm: dkim::Algorithm::RsaSha256,
            headers: vec![],
            body_hash: vec![],
            signature: vec![],
            timestamp: t,
            expiration: x,
            query_methods: vec![],
        };
        let now = 1_800_000_000;
        assert!(check_lifetime(&sig(Some(now), Some(now + 600)), now, 3600).is_ok());
        assert!(check_lifetime(&sig(Some(now), Some(now + 3600)), now, 3600).is_ok());
        assert!(check_lifetime(&sig(Some(now), Some(now + 10 * 365 * 86400)), now, 3600).is_err());
        assert!(check_lifetime(&sig(None, Some(now + 86400)), now, 3600).is_err());
        assert!(check_lifetime(&sig(None, None), now, 3600).is_err());
        // Without x= the age of t= is checked by check_times.
        assert!(check_lifetime(&sig(Some(now), None), now, 3600).is_ok());
    }

    #[test]
    fn addresses_need_mailto_and_domain() {
        assert!(valid_address("mailto:a@b.example"));
        assert!(!valid_address("a@b.example"));
        assert!(!valid_address("mailto:nobody"));
        // Found by the iSchedule fuzz target: a multi-byte character across byte 7.
        assert!(!valid_address("mai\u{fffd}\u{fffd}@example.com"));
        assert!(!valid_address("mailt\u{e9}:a@example.com"));
    }
}

//! The pipeline entry for an iTIP body that arrived over iSchedule, without mail around it:
//! one parse of the body, the rules that bind its content to the Originator the request
//! signature proved and to the Recipients (draft-desruisseaux-ischedule-05 §7.5, the brief
//! §4.4), locality, the replay check, then the decisions and commits every door shares. The
//! receiver (doors/ischedule) only checks the HTTP request and its signature and translates the
//! outcome into a schedule-response.

use super::{extract, Pipeline, Verdict};
use crate::ical::Component;
use crate::itip::Method;
use crate::store::StoreError;
use imipd_core::addr::norm_addr;

/// One iSchedule request, as the receiver checked it.
pub struct IscheduleDelivery<'a> {
    pub body: &'a [u8],
    /// The media type's `component=` and `method=` parameters (upper case).
    pub ct_component: Option<&'a str>,
    pub ct_method: Option<&'a str>,
    /// The Originator, proven by the request signature (or an unsigned peer the site trusts).
    pub originator: &'a str,
    /// The Recipient header values, as given, de-duplicated.
    pub recipients: &'a [String],
    /// iSchedule-Message-ID, for the processed-message log and the journal.
    pub message_id: Option<&'a str>,
    /// The replay-table key of (signer, Originator, message id) and until when to keep it.
    pub replay: Option<(&'a str, i64)>,
    /// The (component, methods) pairs the receiver accepts.
    pub accepts: &'a [(&'a str, &'a [&'a str])],
}

/// What became of a request.
#[derive(Debug)]
pub enum IscheduleOutcome {
    /// Refused whole: the schedule-response error element and a description for the peer.
    Refused {
        element: &'static str,
        description: String,
    },
    /// The same message id from the same signer and Originator was already received.
    Replay,
    Done {
        verdict: Box<Verdict>,
        /// The component type of the request (VEVENT, VTODO, VFREEBUSY).
        kind: String,
        /// The recipients hosted here (normalized).
        local: Vec<String>,
    },
}

/// A whole-request refusal: the error element and the description for the peer.
type Refusal = (&'static str, String);

fn refuse(element: &'static str, description: impl Into<String>) -> Refusal {
    (element, description.into())
}

fn is_utc(p: Option<&crate::ical::Prop>) -> bool {
    p.is_some_and(|p| p.param("TZID").is_none() && p.value.trim().ends_with(['Z', 'z']))
}

impl Pipeline {
    /// Checks an iSchedule body against its request and, when it may be delivered, decides and
    /// commits it for each local recipient; free/busy requests are answered in the verdict.
    pub fn process_ischedule(&self, d: &IscheduleDelivery) -> Result<IscheduleOutcome, StoreError> {
        let (ex, kind) = match self.ischedule_rules(d) {
            Ok(v) => v,
            Err((element, description)) => {
                return Ok(IscheduleOutcome::Refused {
                    element,
                    description,
                })
            }
        };
        let local: Vec<String> = d
            .recipients
            .iter()
            .map(|r| norm_addr(r))
            .filter(|r| !self.config.local_domains.is_empty() && self.config.is_local(r))
            .collect();
        // This request writes (its replay record, its commits), then asks for durability.
        let writer = imipd_core::store::Writer::begin(&*self.store);
        if let Some((key, until)) = d.replay {
            if !self.store.remember_message_id(key, until, super::now())? {
                return Ok(IscheduleOutcome::Replay);
            }
        }
        if local.is_empty() {
            return Ok(IscheduleOutcome::Done {
                verdict: Box::default(),
                kind,
                local,
            });
        }
        let mut ex = ex;
        ex.message_id = d.message_id.map(str::to_string);
        // The request signature covers the whole body.
        let proven = vec![norm_addr(d.originator)];
        for found in &mut ex.objects {
            found.proven = proven.clone();
        }
        let done = self
            .process_objects(Some(&local), &ex, true)
            .and_then(|v| crate::metrics::commit(|| writer.flush()).map(|()| v));
        let verdict = match done {
            Ok(v) => v,
            Err(e) => {
                // The peer is told to try again: its retry must not be refused as a replay.
                if let Some((key, _)) = d.replay {
                    let _ = self.store.forget_message_id(key);
                }
                return Err(e);
            }
        };
        self.wake_runner(&verdict);
        Ok(IscheduleOutcome::Done {
            verdict: Box::new(verdict),
            kind,
            local,
        })
    }

    /// The body's objects and component type, or why the request is refused whole.
    fn ischedule_rules(
        &self,
        d: &IscheduleDelivery,
    ) -> Result<(extract::Extracted, String), Refusal> {
        // 6. the body
        let Ok(text) = std::str::from_utf8(d.body) else {
            return Err(refuse("invalid-calendar-data", "body is not UTF-8"));
        };
        let ex = extract::calendar_objects(text, d.ct_method);
        if let Some(r) = ex.refused.first() {
            return Err(refuse("invalid-calendar-data", r.reason.to_string()));
        }
        let Some(first) = ex.objects.first() else {
            return Err(refuse(
                "invalid-calendar-data",
                "no scheduling component in the body",
            ));
        };
        let method = first.method;
        let kind = first.kind.clone();
        if ex
            .objects
            .iter()
            .any(|o| o.method != method || o.kind != kind)
        {
            return Err(refuse(
                "invalid-scheduling-message",
                "one request carries one METHOD and one component type",
            ));
        }
        if d.ct_component.is_some_and(|c| c != kind)
            || d.ct_method.is_some_and(|m| m != method.as_str())
        {
            return Err(refuse(
                "invalid-scheduling-message",
                format!(
                    "Content-Type says {}/{}, the body is {kind}/{}",
                    d.ct_component.unwrap_or_default(),
                    d.ct_method.unwrap_or_default(),
                    method.as_str()
                ),
            ));
        }
        if !d
            .accepts
            .iter()
            .any(|(c, ms)| *c == kind && ms.contains(&method.as_str()))
        {
            return Err(refuse(
                "invalid-scheduling-message",
                format!("{} on {kind} is not accepted here", method.as_str()),
            ));
        }
        // 7. Originator and Recipients against the iCalendar data (brief §4.4)
        let orig = norm_addr(d.originator);
        let comps: Vec<&Component> = ex
            .objects
            .iter()
            .flat_map(|o| o.components.iter())
            .collect();
        let is_attendee =
            |c: &Component, a: &str| c.props_named("ATTENDEE").any(|p| norm_addr(&p.value) == a);
        let organizer_of = |c: &Component| c.prop("ORGANIZER").map(|p| norm_addr(&p.value));
        if kind == "VFREEBUSY" {
            if comps.len() != 1 {
                return Err(refuse(
                    "invalid-scheduling-message",
                    "exactly one VFREEBUSY",
                ));
            }
            let c = comps[0];
            if organizer_of(c).as_deref() != Some(orig.as_str()) {
                return Err(refuse(
                    "organizer-denied",
                    "the ORGANIZER is not the Originator",
                ));
            }
            if !is_utc(c.prop("DTSTART")) || !is_utc(c.prop("DTEND")) {
                return Err(refuse(
                    "invalid-scheduling-message",
                    "VFREEBUSY DTSTART and DTEND must be UTC",
                ));
            }
            let mut attendees: Vec<String> = c
                .props_named("ATTENDEE")
                .map(|p| norm_addr(&p.value))
                .collect();
            let mut rs: Vec<String> = d.recipients.iter().map(|r| norm_addr(r)).collect();
            attendees.sort();
            attendees.dedup();
            rs.sort();
            if attendees != rs {
                return Err(refuse(
                    "recipient-mismatch",
                    "the VFREEBUSY ATTENDEEs are not the Recipients",
                ));
            }
        } else if method.from_organizer() {
            if method == Method::Publish {
                return Err(refuse(
                    "invalid-scheduling-message",
                    "PUBLISH is not a scheduling message",
                ));
            }
            if comps
                .iter()
                .any(|c| organizer_of(c).as_deref() != Some(orig.as_str()))
            {
                return Err(refuse(
                    "organizer-denied",
                    format!("the ORGANIZER is not the Originator {orig}"),
                ));
            }
            for r in d.recipients {
                let r = norm_addr(r);
                if !comps.iter().any(|c| is_attendee(c, &r)) {
                    return Err(refuse(
                        "invalid-scheduling-message",
                        format!("Recipient {r} is not an ATTENDEE"),
                    ));
                }
            }
        } else {
            for c in &comps {
                let atts: Vec<String> = c
                    .props_named("ATTENDEE")
                    .map(|p| norm_addr(&p.value))
                    .collect();
                if atts.len() != 1 || atts[0] != orig {
                    return Err(refuse(
                        "invalid-scheduling-message",
                        format!(
                            "{} must carry exactly one ATTENDEE, the Originator",
                            method.as_str()
                        ),
                    ));
                }
                for r in d.recipients {
                    if organizer_of(c).as_deref() != Some(norm_addr(r).as_str()) {
                        return Err(refuse(
                            "invalid-scheduling-message",
                            format!("Recipient {r} is not the ORGANIZER"),
                        ));
                    }
                }
            }
        }
        // 8. locality: nobody outside may speak for our own users
        if !self.config.local_domains.is_empty() && self.config.is_local(&orig) {
            return Err(refuse(
                "originator-denied",
                format!("{orig} is hosted here; it cannot arrive over iSchedule"),
            ));
        }
        Ok((ex, kind))
    }
}

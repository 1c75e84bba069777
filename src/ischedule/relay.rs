//! The sender side of the bridge: iTIP that local users send (seen by the milter on
//! authenticated submission, or given to `imipd send`) goes to recipients in iSchedule-capable
//! domains in real time; free/busy for remote users is asked of their domain. Recipients are
//! grouped by domain, each group by the receiver's `max-recipients`; a VFREEBUSY request carries
//! only its group's ATTENDEEs (brief §1). A recipient whose domain has no iSchedule, or whose
//! request failed, keeps the mail path.

use super::client::{PostError, RecipientStatus, Request};
use super::discovery::{self, Discovered};
use super::{domain_of, Bridge};
use crate::ical::{self, Component, Prop};
use crate::itip::{Incoming, Method, OutMessage};
use std::collections::BTreeMap;

/// What became of one object for one recipient.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// Normalized address.
    pub recipient: String,
    pub uid: String,
    pub method: String,
    pub component: String,
    /// The receiver's answer, or why there is none.
    pub result: Result<RecipientStatus, String>,
}

impl Relayed {
    pub fn delivered(&self) -> bool {
        self.result.as_ref().is_ok_and(|s| s.delivered())
    }

    /// The request-status to record (RFC 6638 SCHEDULE-STATUS): the receiver's code, or 5.1
    /// when iSchedule could not be used (the mail still goes).
    pub fn schedule_status(&self) -> String {
        match &self.result {
            Ok(s) => s.code().to_string(),
            Err(_) => "5.1".into(),
        }
    }

    /// One JSON line for the log and the command line.
    pub fn json(&self) -> serde_json::Value {
        match &self.result {
            Ok(s) => serde_json::json!({
                "recipient": ical::mailto(&self.recipient),
                "method": self.method,
                "component": self.component,
                "uid": self.uid,
                "via": "ischedule",
                "request_status": s.status,
                "delivered": s.delivered(),
            }),
            Err(e) => serde_json::json!({
                "recipient": ical::mailto(&self.recipient),
                "method": self.method,
                "component": self.component,
                "uid": self.uid,
                "via": "mail",
                "reason": e,
                "delivered": false,
            }),
        }
    }
}

/// What relaying one message produced.
#[derive(Debug, Default)]
pub struct Report {
    pub relayed: Vec<Relayed>,
    /// Free/busy answers from other domains, as iMIP replies to the local requester.
    pub replies: Vec<OutMessage>,
}

/// The iCalendar body of one object with METHOD.
pub fn body_of(method: Method, components: &[Component], timezones: &[Component]) -> String {
    let mut cal = Component::new("VCALENDAR");
    cal.props.push(Prop::new("VERSION", "2.0"));
    cal.props.push(Prop::new("PRODID", "-//imipd//imipd//EN"));
    cal.props.push(Prop::new("METHOD", method.as_str()));
    cal.subs.extend(timezones.iter().cloned());
    cal.subs.extend(components.iter().cloned());
    cal.to_ical()
}

/// The iTIP recipients of `inc` among `candidates`, per RFC 5546: attendees for what the
/// organizer sends, the organizer for what an attendee sends.
fn itip_recipients(inc: &Incoming, sender: &str, candidates: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |a: String| {
        if candidates.contains(&a) && a != sender && !out.contains(&a) {
            out.push(a);
        }
    };
    let organizer_sent = inc.method.from_organizer();
    for c in &inc.components {
        let org = c.prop("ORGANIZER").map(|p| ical::norm_addr(&p.value));
        if organizer_sent || inc.kind == "VFREEBUSY" {
            if inc.method == Method::Publish || org.as_deref() != Some(sender) {
                continue;
            }
            for a in c.props_named("ATTENDEE") {
                add(ical::norm_addr(&a.value));
            }
        } else if let Some(o) = org {
            if c.props_named("ATTENDEE")
                .any(|a| ical::norm_addr(&a.value) == sender)
            {
                add(o);
            }
        }
    }
    out
}

impl Bridge {
    /// Sends one object from `originator` to `recipients` (normalized, not local) over
    /// iSchedule; one result per recipient.
    pub async fn send_object(
        &self,
        originator: &str,
        inc: &Incoming,
        recipients: &[String],
    ) -> Vec<(String, Result<RecipientStatus, String>)> {
        let mut by_domain: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in recipients {
            by_domain.entry(domain_of(r)).or_default().push(r.clone());
        }
        let mut out = Vec::new();
        for (domain, rcpts) in by_domain {
            let fail = |out: &mut Vec<(String, Result<RecipientStatus, String>)>, why: String| {
                for r in &rcpts {
                    out.push((r.clone(), Err(why.clone())));
                }
            };
            if self.key.is_none() {
                fail(&mut out, "no [ischedule] dkim_key to sign with".into());
                continue;
            }
            let urls =
                match discovery::discover(&self.resolver, &self.cfg.ischedule.servers, &domain)
                    .await
                {
                    Ok(Discovered::Urls(u)) if !u.is_empty() => u,
                    Ok(_) => {
                        fail(&mut out, format!("{domain} has no iSchedule service"));
                        continue;
                    }
                    Err(e) => {
                        fail(&mut out, format!("discovery for {domain}: {e}"));
                        continue;
                    }
                };
            let mut last_err = String::new();
            let mut done = false;
            for url in &urls {
                match self.send_to(url, originator, inc, &rcpts).await {
                    Ok(results) => {
                        out.extend(results);
                        done = true;
                        break;
                    }
                    Err(e) => last_err = format!("{url}: {e}"),
                }
            }
            if !done {
                fail(&mut out, last_err);
            }
        }
        out
    }

    async fn send_to(
        &self,
        url: &str,
        originator: &str,
        inc: &Incoming,
        rcpts: &[String],
    ) -> Result<Vec<(String, Result<RecipientStatus, String>)>, PostError> {
        let caps = self.client.capabilities(url).await?;
        let method = inc.method.as_str();
        if !caps.supports_version_1() || !caps.accepts(&inc.kind, method) {
            return Ok(rcpts
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        Err(format!("{url} does not accept {method} on {}", inc.kind)),
                    )
                })
                .collect());
        }
        let per_post = caps
            .max_recipients
            .filter(|n| *n > 0)
            .unwrap_or(self.cfg.ischedule.max_recipients)
            .max(1);
        let mut out = Vec::new();
        for group in rcpts.chunks(per_post) {
            let components: Vec<Component> = if inc.kind == "VFREEBUSY" {
                inc.components
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        c.props.retain(|p| {
                            p.name != "ATTENDEE" || group.contains(&ical::norm_addr(&p.value))
                        });
                        c
                    })
                    .collect()
            } else {
                inc.components.clone()
            };
            let req = Request {
                originator: ical::mailto(originator),
                recipients: group.iter().map(|r| ical::mailto(r)).collect(),
                component: inc.kind.clone(),
                method: method.to_string(),
                body: body_of(inc.method, &components, &inc.timezones),
            };
            match self.client.post(url, &req).await {
                Ok(statuses) => {
                    for r in group {
                        let s = statuses
                            .iter()
                            .find(|s| ical::norm_addr(&s.recipient) == *r)
                            .cloned()
                            .ok_or_else(|| format!("{url} gave no status for {r}"));
                        out.push((r.clone(), s));
                    }
                }
                // A refusal of the whole request is an answer for each recipient, not a reason
                // to try the next server.
                Err(e @ PostError::Refused { .. }) | Err(e @ PostError::BadResponse(_)) => {
                    for r in group {
                        out.push((r.clone(), Err(e.to_string())));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Relays the iTIP objects of a message `sender` (a proven local user) sent to `recipients`
    /// (normalized envelope recipients): those outside our domains get it over iSchedule.
    pub async fn relay_outgoing(
        &self,
        objects: &[Incoming],
        sender: &str,
        recipients: &[String],
    ) -> Report {
        let mut report = Report::default();
        if self.key.is_none() || self.cfg.local_domains.is_empty() {
            return report;
        }
        let remote: Vec<String> = recipients
            .iter()
            .map(|r| ical::norm_addr(r))
            .filter(|r| !self.cfg.is_local(r))
            .collect();
        if remote.is_empty() {
            return report;
        }
        for inc in objects {
            let targets = itip_recipients(inc, sender, &remote);
            if targets.is_empty() {
                continue;
            }
            let results = self.send_object(sender, inc, &targets).await;
            for (r, result) in results {
                if inc.kind == "VFREEBUSY" {
                    if let Ok(s) = &result {
                        if let Some(reply) = freebusy_reply(s, &r, sender) {
                            report.replies.push(reply);
                        }
                    }
                }
                report.relayed.push(Relayed {
                    recipient: r,
                    uid: inc.uid.clone(),
                    method: inc.method.as_str().into(),
                    component: inc.kind.clone(),
                    result,
                });
            }
        }
        report
    }

    /// Asks `user`'s domain for their free/busy in [from, to) as `originator`; returns the
    /// VCALENDAR (METHOD:REPLY) the receiver gave.
    pub async fn freebusy(
        &self,
        originator: &str,
        user: &str,
        from: i64,
        to: i64,
    ) -> Result<String, String> {
        use crate::ical::time::format_utc;
        let mut fb = Component::new("VFREEBUSY");
        fb.props.push(Prop::new(
            "UID",
            format!("fb-{}@imipd", crate::outbound::unique_token()),
        ));
        fb.props
            .push(Prop::new("DTSTAMP", format_utc(super::unix_now())));
        fb.props.push(Prop::new("DTSTART", format_utc(from)));
        fb.props.push(Prop::new("DTEND", format_utc(to)));
        fb.props
            .push(Prop::new("ORGANIZER", ical::mailto(originator)));
        fb.props.push(Prop::new("ATTENDEE", ical::mailto(user)));
        let inc = Incoming {
            method: Method::Request,
            kind: "VFREEBUSY".into(),
            uid: fb.uid().unwrap_or_default().to_string(),
            components: vec![fb],
            timezones: Default::default(),
        };
        let user = ical::norm_addr(user);
        let results = self
            .send_object(
                &ical::norm_addr(originator),
                &inc,
                std::slice::from_ref(&user),
            )
            .await;
        match results.into_iter().next().map(|(_, r)| r) {
            Some(Ok(s)) if s.delivered() => s
                .calendar_data
                .clone()
                .filter(|c| c.contains("VFREEBUSY"))
                .ok_or_else(|| format!("{user}: {} without free/busy data", s.status)),
            Some(Ok(s)) => Err(format!(
                "{user}: {}{}",
                s.status,
                s.description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )),
            Some(Err(e)) => Err(format!("{user}: {e}")),
            None => Err(format!("{user}: no answer")),
        }
    }
}

/// The iMIP REPLY carrying a remote user's free/busy to the local requester.
fn freebusy_reply(s: &RecipientStatus, remote: &str, requester: &str) -> Option<OutMessage> {
    if !s.delivered() {
        return None;
    }
    let cal = ical::parse(s.calendar_data.as_deref()?)
        .ok()?
        .into_iter()
        .find(|c| c.name == "VCALENDAR" && c.subs.iter().any(|x| x.name == "VFREEBUSY"))?;
    Some(OutMessage {
        from: remote.to_string(),
        to: requester.to_string(),
        method: Method::Reply,
        calendar: cal,
        summary: "Free/busy".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(method: Method, text: &str) -> Incoming {
        let ex = crate::extract::calendar_objects(text, Some(method.as_str()));
        ex.objects.into_iter().next().unwrap().incoming
    }

    #[test]
    fn organizer_messages_go_to_attendees_replies_to_the_organizer() {
        let req = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u1\r\nDTSTART:20300101T100000Z\r\n\
                   ORGANIZER:mailto:a@x.example\r\nATTENDEE:mailto:a@x.example\r\nATTENDEE:mailto:b@y.example\r\n\
                   ATTENDEE:mailto:c@z.example\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let cands = vec!["b@y.example".to_string(), "d@y.example".to_string()];
        assert_eq!(
            itip_recipients(&inc(Method::Request, req), "a@x.example", &cands),
            vec!["b@y.example"]
        );
        assert!(itip_recipients(&inc(Method::Request, req), "b@y.example", &cands).is_empty());
        let reply = req.replace("METHOD:REQUEST", "METHOD:REPLY");
        let cands = vec!["a@x.example".to_string()];
        assert_eq!(
            itip_recipients(&inc(Method::Reply, &reply), "b@y.example", &cands),
            vec!["a@x.example"]
        );
    }
}

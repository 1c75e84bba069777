//! Outgoing iTIP from a local calendar user (seen by the milter on authenticated submission):
//! the organizer's own copy is kept current, with SCHEDULE-STATUS on the attendees it was sent to
//! (RFC 6638 3.2.9), so that the replies that come back can be matched; an attendee's own REPLY
//! updates their copy. Pure, like [`super::decide`].

use super::{
    attendee_mut, master, newer, organizer, rid_key, tzmap_for, Decision, Incoming, Method, Reason,
    StoredObject,
};
use crate::ical::norm_addr;

/// Records what `sender` sent to `recipients` in the sender's own calendar.
pub fn record_sent(
    stored: Option<&StoredObject>,
    inc: &Incoming,
    sender: &str,
    recipients: &[String],
) -> Decision {
    if inc.components.is_empty() {
        return Decision::Rejected(Reason::Empty);
    }
    let org = inc
        .components
        .iter()
        .find_map(organizer)
        .map(|o| norm_addr(&o.value));
    match inc.method {
        Method::Request | Method::Publish | Method::Add | Method::Cancel => {
            if org.as_deref() != Some(sender) {
                return Decision::Ignored(Reason::NotFromOrganizer {
                    method: inc.method.as_str(),
                    organizer: org.unwrap_or_default(),
                    proven: sender.to_string(),
                });
            }
            let tz = tzmap_for(&inc.timezones);
            let mut obj = stored.cloned().unwrap_or_else(|| StoredObject {
                uid: inc.uid.clone(),
                kind: inc.kind.clone(),
                ..Default::default()
            });
            if let Some(s) = stored {
                if let (Some(new_master), Some(old_master)) = (
                    inc.components
                        .iter()
                        .find(|c| c.prop("RECURRENCE-ID").is_none()),
                    master(s),
                ) {
                    if let Err(r) = newer(new_master, old_master) {
                        if inc.method != Method::Cancel {
                            return Decision::Ignored(r);
                        }
                    }
                }
            }
            for c in &inc.components {
                let key = rid_key(c, &tz);
                let mut nc = c.clone();
                if inc.method == Method::Cancel {
                    nc.set("STATUS", "CANCELLED");
                }
                for r in recipients {
                    if let Some(a) = attendee_mut(&mut nc, r) {
                        a.set_param("SCHEDULE-STATUS", "1.1");
                    }
                }
                match obj.components.iter().position(|s| rid_key(s, &tz) == key) {
                    Some(i) if inc.method == Method::Cancel && key.is_empty() => {
                        for s in obj.components.iter_mut() {
                            s.set("STATUS", "CANCELLED");
                        }
                        obj.components[i] = nc;
                    }
                    Some(i) => obj.components[i] = nc,
                    None => obj.components.push(nc),
                }
            }
            for t in inc.timezones.iter() {
                let id = t.value("TZID");
                if !obj.timezones.iter().any(|o| o.value("TZID") == id) {
                    obj.timezones.push(t.clone());
                }
            }
            Decision::Applied {
                object: Some(obj),
                changed: true,
                replies: vec![],
                proposal: None,
                summary: format!(
                    "organizer's copy recorded ({} sent to {} recipient(s))",
                    inc.method.as_str(),
                    recipients.len()
                ),
            }
        }
        Method::Reply => {
            let Some(s) = stored else {
                return Decision::Ignored(Reason::UnknownObject(inc.uid.clone()));
            };
            let tz = tzmap_for(&s.timezones);
            let itz = tzmap_for(&inc.timezones);
            let mut obj = s.clone();
            let mut n = 0;
            for c in &inc.components {
                let Some(line) = c
                    .props_named("ATTENDEE")
                    .find(|a| norm_addr(&a.value) == sender)
                else {
                    continue;
                };
                let key = rid_key(c, &itz);
                let ps = line.param("PARTSTAT").unwrap_or("NEEDS-ACTION").to_string();
                for comp in obj.components.iter_mut().filter(|x| rid_key(x, &tz) == key) {
                    if let Some(a) = attendee_mut(comp, sender) {
                        a.set_param("PARTSTAT", ps.clone());
                        n += 1;
                    }
                }
            }
            if n == 0 {
                return Decision::Ignored(Reason::NoAttendee("REPLY"));
            }
            Decision::Applied {
                object: Some(obj),
                changed: true,
                replies: vec![],
                proposal: None,
                summary: "own reply recorded on the attendee's copy".into(),
            }
        }
        _ => Decision::Ignored(Reason::Policy(format!(
            "{} sent by a local user is not recorded",
            inc.method.as_str()
        ))),
    }
}

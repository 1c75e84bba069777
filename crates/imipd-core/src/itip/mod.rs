//! The iTIP engine (RFC 5546): a pure function from (stored object, incoming object, recipient,
//! proven senders) to a [`Decision`]. No I/O happens here; the pipeline commits what it returns.

mod reason;
mod sent;
pub use reason::Reason;
pub use sent::record_sent;

use crate::ical::time::{format_utc, parse_date_value, TzMap};
use crate::ical::{norm_addr, Component, Prop};
use std::collections::{BTreeMap, HashMap};

/// The iTIP methods of RFC 5546 section 1.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Publish,
    Request,
    Reply,
    Add,
    Cancel,
    Refresh,
    Counter,
    DeclineCounter,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s.trim().to_ascii_uppercase().as_str() {
            "PUBLISH" => Method::Publish,
            "REQUEST" => Method::Request,
            "REPLY" => Method::Reply,
            "ADD" => Method::Add,
            "CANCEL" => Method::Cancel,
            "REFRESH" => Method::Refresh,
            "COUNTER" => Method::Counter,
            "DECLINECOUNTER" => Method::DeclineCounter,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Publish => "PUBLISH",
            Method::Request => "REQUEST",
            Method::Reply => "REPLY",
            Method::Add => "ADD",
            Method::Cancel => "CANCEL",
            Method::Refresh => "REFRESH",
            Method::Counter => "COUNTER",
            Method::DeclineCounter => "DECLINECOUNTER",
        }
    }

    /// Methods an ORGANIZER sends (RFC 5546 1.4); the others come from an attendee.
    pub fn from_organizer(self) -> bool {
        matches!(
            self,
            Method::Publish
                | Method::Request
                | Method::Add
                | Method::Cancel
                | Method::DeclineCounter
        )
    }
}

/// One calendar object as stored for one calendar user: master and overrides of one UID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredObject {
    pub uid: String,
    /// VEVENT, VTODO or VJOURNAL.
    pub kind: String,
    pub components: Vec<Component>,
    pub timezones: Vec<Component>,
    /// DTSTAMP of the last REPLY applied, by "RECURRENCE-ID key|attendee" (RFC 5546 2.1.5).
    pub reply_stamps: BTreeMap<String, i64>,
}

/// One iTIP object received: every component of one UID from one calendar.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub method: Method,
    pub kind: String,
    pub uid: String,
    pub components: Vec<Component>,
    /// The calendar's VTIMEZONEs, shared by every object of that calendar (never copied per
    /// object: a message with many objects and many zones stays linear in memory).
    pub timezones: std::sync::Arc<Vec<Component>>,
}

/// Who is asking and for whom.
pub struct Context<'a> {
    /// The local calendar user whose calendar is changed (normalized address).
    pub recipient: &'a str,
    /// Addresses proven to have sent the message (normalized).
    pub proven: &'a [String],
    /// Configured delegates (`[policy] delegates`), normalized: principal -> the addresses that
    /// may act for it through SENT-BY.
    pub delegates: &'a HashMap<String, Vec<String>>,
    /// Delete objects on CANCEL instead of keeping them with STATUS:CANCELLED.
    pub delete_on_cancel: bool,
    /// Current time, UTC seconds, for DTSTAMP of generated messages.
    pub now: i64,
}

/// A message the engine wants sent (built into iMIP by the outbound module).
#[derive(Debug, Clone, PartialEq)]
pub struct OutMessage {
    pub from: String,
    pub to: String,
    pub method: Method,
    /// A complete VCALENDAR with METHOD.
    pub calendar: Component,
    pub summary: String,
}

/// A COUNTER or DECLINECOUNTER kept for the user to act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub method: Method,
    pub from: String,
    pub calendar: Component,
}

// One Decision per object and recipient, moved once: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Applied {
        /// The object after the change; `None` when it was deleted, unchanged when `changed` is false.
        object: Option<StoredObject>,
        changed: bool,
        replies: Vec<OutMessage>,
        proposal: Option<Proposal>,
        summary: String,
    },
    Ignored(Reason),
    /// Nothing changes, but iTIP asks for an answer (an ADD for an unknown object is answered
    /// with a REFRESH, RFC 5546 3.2.4).
    IgnoredWithReply(Reason, Vec<OutMessage>),
    Rejected(Reason),
}

/// What became of one object for one recipient; typed until the edge (JSON, headers, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    Ignored,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Decision {
    pub fn outcome(&self) -> Outcome {
        match self {
            Decision::Applied { .. } => Outcome::Applied,
            Decision::Ignored(_) | Decision::IgnoredWithReply(..) => Outcome::Ignored,
            Decision::Rejected(_) => Outcome::Rejected,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Decision::Applied { summary, .. } => summary.clone(),
            Decision::Ignored(r) | Decision::Rejected(r) | Decision::IgnoredWithReply(r, _) => {
                r.to_string()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers on components

fn tzmap_for(timezones: &[Component]) -> TzMap {
    let refs: Vec<&Component> = timezones.iter().collect();
    TzMap::new(&refs)
}

/// The RECURRENCE-ID of a component as a comparable key ("" for the master).
pub fn rid_key(c: &Component, tz: &TzMap) -> String {
    match c.prop("RECURRENCE-ID") {
        None => String::new(),
        Some(p) => match parse_date_value(&p.value) {
            Some(dv) if dv.is_date => format!("D{}", dv.naive.format("%Y%m%d")),
            Some(_) => tz
                .prop_utc(p)
                .map(format_utc)
                .unwrap_or_else(|| p.value.trim().to_string()),
            None => p.value.trim().to_string(),
        },
    }
}

fn is_this_and_future(c: &Component) -> bool {
    c.prop("RECURRENCE-ID")
        .and_then(|p| p.param("RANGE"))
        .is_some_and(|r| r.eq_ignore_ascii_case("THISANDFUTURE"))
}

fn dtstamp(c: &Component) -> Option<i64> {
    c.prop("DTSTAMP")
        .and_then(|p| parse_date_value(&p.value))
        .map(|d| d.naive.and_utc().timestamp())
}

fn organizer(c: &Component) -> Option<&Prop> {
    c.prop("ORGANIZER")
}

fn attendee<'a>(c: &'a Component, addr: &str) -> Option<&'a Prop> {
    c.props_named("ATTENDEE")
        .find(|p| norm_addr(&p.value) == addr)
}

fn attendee_mut<'a>(c: &'a mut Component, addr: &str) -> Option<&'a mut Prop> {
    c.props
        .iter_mut()
        .find(|p| p.name == "ATTENDEE" && norm_addr(&p.value) == addr)
}

/// True when `proven` covers the calendar user in `prop` (ORGANIZER or ATTENDEE), directly or
/// through its SENT-BY (DESIGN: SENT-BY is not proof of authority). A proven X acting for Y
/// (`SENT-BY=X` on Y) counts only when X is a configured delegate of Y, or when a stored line of
/// Y (`stored`) already names X as its SENT-BY. Same domain is not enough.
fn authorized(prop: &Prop, stored: &[&Prop], ctx: &Context) -> Option<String> {
    let addr = norm_addr(&prop.value);
    if addr.is_empty() {
        return None;
    }
    if ctx.proven.contains(&addr) {
        return Some(addr);
    }
    let sent_by = norm_addr(prop.param("SENT-BY")?);
    if sent_by.is_empty() || !ctx.proven.contains(&sent_by) {
        return None;
    }
    let configured = ctx
        .delegates
        .get(&addr)
        .is_some_and(|list| list.contains(&sent_by));
    let known = stored.iter().any(|s| {
        norm_addr(&s.value) == addr && s.param("SENT-BY").is_some_and(|x| norm_addr(x) == sent_by)
    });
    (configured || known).then_some(sent_by)
}

fn proven_list(proven: &[String]) -> String {
    if proven.is_empty() {
        "nobody".into()
    } else {
        proven.join(", ")
    }
}

fn master(obj: &StoredObject) -> Option<&Component> {
    obj.components
        .iter()
        .find(|c| c.prop("RECURRENCE-ID").is_none())
}

fn any_organizer(obj: &StoredObject) -> Option<&Prop> {
    master(obj)
        .and_then(organizer)
        .or_else(|| obj.components.iter().find_map(organizer))
}

fn incoming_organizer(inc: &Incoming) -> Option<&Prop> {
    inc.components.iter().find_map(organizer)
}

/// RFC 5546 2.1.5: is `new` newer than `old`? Lower SEQUENCE, or equal SEQUENCE with an
/// older-or-equal DTSTAMP, is not.
fn newer(new: &Component, old: &Component) -> Result<(), Reason> {
    newer_than(new, old.sequence(), dtstamp(old))
}

/// [`newer`] against a SEQUENCE and DTSTAMP (those of a stored instance or of a recorded
/// instance cancellation).
fn newer_than(new: &Component, os: i64, old_stamp: Option<i64>) -> Result<(), Reason> {
    let ns = new.sequence();
    if ns < os {
        return Err(Reason::OlderSequence {
            incoming: ns,
            stored: os,
        });
    }
    if ns == os {
        match (dtstamp(new), old_stamp) {
            (Some(n), Some(o)) if n > o => {}
            (Some(_), None) => {}
            (n, o) => {
                return Err(Reason::NotNewer {
                    sequence: ns,
                    incoming: n.map(format_utc),
                    stored: o.map(format_utc),
                })
            }
        }
    }
    Ok(())
}

/// Ordering for one instance (DESIGN: ordering holds per instance): the full rule of [`newer`]
/// against the stored instance, that is its override, or else the master that generates it.
fn instance_is_newer(c: &Component, baseline: Option<&Component>) -> Result<(), Reason> {
    match baseline {
        None => Ok(()),
        Some(old) => newer(c, old),
    }
}

/// Key in [`StoredObject::reply_stamps`] under which an instance cancellation without an
/// override (an EXDATE) keeps its DTSTAMP, and its SEQUENCE, so that later messages for that
/// instance are ordered against it (DESIGN: ordering holds per instance). `!` cannot start an
/// address, so these never meet the `RECURRENCE-ID|attendee` keys of replies.
fn cancel_keys(rid: &str) -> (String, String) {
    (format!("{rid}|!cancel-stamp"), format!("{rid}|!cancel-seq"))
}

fn cancel_record(obj: &StoredObject, rid: &str) -> Option<(i64, Option<i64>)> {
    let (stamp, seq) = cancel_keys(rid);
    let seq = *obj.reply_stamps.get(&seq)?;
    Some((seq, obj.reply_stamps.get(&stamp).copied()))
}

fn record_cancel(obj: &mut StoredObject, rid: &str, c: &Component) {
    let (stamp, seq) = cancel_keys(rid);
    obj.reply_stamps.insert(seq, c.sequence());
    match dtstamp(c) {
        Some(t) => obj.reply_stamps.insert(stamp, t),
        None => obj.reply_stamps.remove(&stamp),
    };
}

/// UTC time of a RECURRENCE-ID, read in the master's zone when it is floating (some clients
/// drop the TZID on RECURRENCE-ID).
fn rid_utc(rid: &Prop, master: Option<&Component>, tz: &TzMap) -> Option<i64> {
    let floating = rid.param("TZID").is_none()
        && parse_date_value(&rid.value).is_some_and(|d| !d.utc && !d.is_date);
    if floating {
        if let Some(tzid) = master
            .and_then(|m| m.prop("DTSTART"))
            .and_then(|p| p.param("TZID"))
        {
            let mut p = rid.clone();
            p.set_param("TZID", tzid.to_string());
            return tz.prop_utc(&p);
        }
    }
    tz.prop_utc(rid)
}

/// Every value of the EXDATE properties of `c`, in UTC.
fn exdates_utc(c: &Component, tz: &TzMap) -> Vec<i64> {
    c.props_named("EXDATE")
        .flat_map(|p| {
            p.value.split(',').filter_map(move |v| {
                let mut one = p.clone();
                one.value = v.trim().to_string();
                tz.prop_utc(&one)
            })
        })
        .collect()
}

/// Removes the EXDATE value at `ts` from `c` (an instance the organizer reinstates).
fn remove_exdate(c: &mut Component, ts: i64, tz: &TzMap) {
    for p in c.props.iter_mut().filter(|p| p.name == "EXDATE") {
        let kept: Vec<String> = p
            .value
            .split(',')
            .filter(|v| {
                let mut one = p.clone();
                one.value = v.trim().to_string();
                tz.prop_utc(&one) != Some(ts)
            })
            .map(str::to_string)
            .collect();
        p.value = kept.join(",");
    }
    c.props
        .retain(|p| p.name != "EXDATE" || !p.value.trim().is_empty());
}

/// Most occurrences expanded to decide whether a RECURRENCE-ID names an instance.
const INSTANCE_CHECK_LIMIT: usize = 10_000;

/// Whether `ts` is an occurrence the master generates (RFC 5545 3.8.5: DTSTART, RRULE, RDATE,
/// minus EXDATE). Beyond the expansion cap the answer is "yes": imipd never refuses what it
/// could not check.
fn is_instance(master: &Component, ts: i64, tz: &TzMap) -> bool {
    let occ = crate::ical::time::expand(&[master], tz, INSTANCE_CHECK_LIMIT);
    if occ.iter().any(|o| o.start == ts) {
        return true;
    }
    occ.len() >= INSTANCE_CHECK_LIMIT && occ.last().is_some_and(|o| o.start < ts)
}

fn is_cancelled(c: &Component) -> bool {
    c.value("STATUS")
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("CANCELLED"))
}

/// What decides "the time changed" (DESIGN: PARTSTAT on an organizer update): start, end (DTEND,
/// DUE or DTSTART + DURATION), the rule, and the RDATE and EXDATE sets, compared in UTC.
fn schedule_of(
    c: &Component,
    tz: &TzMap,
) -> (Option<String>, Option<String>, Vec<String>, Vec<String>) {
    let when = |p: &Prop| {
        let date = parse_date_value(&p.value).is_some_and(|d| d.is_date);
        match tz.prop_utc(p) {
            Some(t) => format!("{}{t}", if date { "D" } else { "T" }),
            None => p.value.trim().to_string(),
        }
    };
    let start_p = c.prop("DTSTART");
    let start = start_p.map(when);
    let end = c
        .prop("DTEND")
        .or_else(|| c.prop("DUE"))
        .map(when)
        .or_else(|| {
            let s = start_p.and_then(|p| tz.prop_utc(p))?;
            let d = crate::ical::time::parse_duration(c.value("DURATION")?)?;
            Some(format!("T{}", s + d))
        });
    let mut rules: Vec<String> = c
        .props_named("RRULE")
        .map(|p| {
            let mut parts: Vec<String> = p
                .value
                .split(';')
                .map(|kv| kv.trim().to_ascii_uppercase())
                .filter(|kv| !kv.is_empty())
                .collect();
            parts.sort();
            parts.join(";")
        })
        .collect();
    rules.sort();
    let mut dates: Vec<String> = Vec::new();
    for name in ["RDATE", "EXDATE"] {
        for p in c.props_named(name) {
            for v in p.value.split(',') {
                let mut one = p.clone();
                one.value = v.trim().to_string();
                dates.push(format!("{name}:{}", when(&one)));
            }
        }
    }
    dates.sort();
    (start, end, rules, dates)
}

/// DESIGN: an update asks the attendee to answer again when its SEQUENCE is higher than the
/// stored one, or when its time changed.
fn is_reschedule(new: &Component, new_tz: &TzMap, old: &Component, old_tz: &TzMap) -> bool {
    new.sequence() > old.sequence() || schedule_of(new, new_tz) != schedule_of(old, old_tz)
}

/// Merges timezones: keeps stored ones, adds/replaces by TZID with incoming ones.
fn merge_timezones(stored: &[Component], incoming: &[Component]) -> Vec<Component> {
    let mut out: Vec<Component> = stored.to_vec();
    for tz in incoming {
        let id = tz.value("TZID").unwrap_or("");
        if let Some(pos) = out.iter().position(|t| t.value("TZID").unwrap_or("") == id) {
            out[pos] = tz.clone();
        } else {
            out.push(tz.clone());
        }
    }
    out
}

/// Keeps only the timezones some component refers to.
fn used_timezones(components: &[Component], timezones: &[Component]) -> Vec<Component> {
    let mut used: std::collections::HashSet<String> = std::collections::HashSet::new();
    fn walk(c: &Component, used: &mut std::collections::HashSet<String>) {
        for p in &c.props {
            if let Some(t) = p.param("TZID") {
                used.insert(t.trim_matches('"').to_string());
            }
        }
        for s in &c.subs {
            walk(s, used);
        }
    }
    for c in components {
        walk(c, &mut used);
    }
    timezones
        .iter()
        .filter(|t| t.value("TZID").is_some_and(|id| used.contains(id)))
        .cloned()
        .collect()
}

/// The attendee's own data survives an organizer update (DESIGN): VALARMs, X- properties and the
/// X- parameters of their ATTENDEE line always; their PARTSTAT only when `keep_partstat` (the
/// update is not a reschedule: same SEQUENCE, same time).
fn preserve_attendee_data(
    new: &mut Component,
    old: &Component,
    recipient: &str,
    keep_partstat: bool,
) {
    if let Some(old_att) = attendee(old, recipient) {
        let old_ps = old_att.param("PARTSTAT").map(str::to_string);
        let x_params: Vec<_> = old_att
            .params
            .iter()
            .filter(|p| p.name.starts_with("X-"))
            .cloned()
            .collect();
        if let Some(new_att) = attendee_mut(new, recipient) {
            if keep_partstat {
                match old_ps {
                    Some(ps) => new_att.set_param("PARTSTAT", ps),
                    None => new_att.remove_param("PARTSTAT"),
                }
            }
            for xp in x_params {
                if new_att.param(&xp.name).is_none() {
                    new_att.params.push(xp);
                }
            }
        }
    }
    let old_alarms: Vec<Component> = old.subs_named("VALARM").cloned().collect();
    if !old_alarms.is_empty() {
        new.subs.retain(|s| s.name != "VALARM");
        new.subs.extend(old_alarms);
    }
    for p in &old.props {
        if p.name.starts_with("X-") && new.prop(&p.name).is_none() {
            new.props.push(p.clone());
        }
    }
}

/// Builds an instance override from the master for `rid_prop` (RFC 5545 3.8.4.4).
fn instance_from_master(master: &Component, rid_prop: &Prop, tz: &TzMap) -> Component {
    let mut inst = master.clone();
    inst.remove("RRULE");
    inst.remove("RDATE");
    inst.remove("EXDATE");
    inst.remove("EXRULE");
    let mut rid = rid_prop.clone();
    rid.remove_param("RANGE");
    if let (Some(ms), Some(rs)) = (
        master.prop("DTSTART").and_then(|p| tz.prop_utc(p)),
        tz.prop_utc(&rid),
    ) {
        let shift = rs - ms;
        if let Some(end) = master.prop("DTEND").or_else(|| master.prop("DUE")) {
            if let Some(es) = tz.prop_utc(end) {
                let mut e = end.clone();
                let start_prop = rid.clone();
                // Keep the instance's length: end = rid + (end - start).
                e.value = shift_value(&start_prop.value, es + shift - rs);
                e.params = start_prop.params.clone();
                inst.set_prop(e);
            }
        }
    }
    let mut start = rid.clone();
    start.name = "DTSTART".into();
    inst.set_prop(start);
    inst.set_prop(rid);
    inst
}

/// Adds `delta` seconds to a DATE-TIME or DATE value, keeping its form.
fn shift_value(value: &str, delta: i64) -> String {
    match parse_date_value(value) {
        Some(dv) => {
            let shifted = dv.naive + chrono::TimeDelta::seconds(delta);
            if dv.is_date {
                shifted.format("%Y%m%d").to_string()
            } else if dv.utc {
                shifted.format("%Y%m%dT%H%M%SZ").to_string()
            } else {
                shifted.format("%Y%m%dT%H%M%S").to_string()
            }
        }
        None => value.to_string(),
    }
}

fn calendar_for(
    method: Method,
    obj_components: &[Component],
    timezones: &[Component],
) -> Component {
    let mut cal = Component::new("VCALENDAR");
    cal.props.push(Prop::new("VERSION", "2.0"));
    cal.props.push(Prop::new("PRODID", "-//imipd//imipd//EN"));
    cal.props.push(Prop::new("METHOD", method.as_str()));
    cal.subs.extend(timezones.iter().cloned());
    cal.subs.extend(obj_components.iter().cloned());
    cal
}

fn summary_of(c: &[Component]) -> String {
    c.iter()
        .find_map(|c| c.prop("SUMMARY").map(|p| p.text()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The decision

/// Decides what `incoming` does to `recipient`'s copy `stored` (RFC 5546 section 3).
pub fn decide(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    if inc.components.is_empty() {
        return Decision::Rejected(Reason::Empty);
    }
    if inc.kind == "VFREEBUSY" {
        return Decision::Ignored(Reason::FreeBusyNotStored(inc.method.as_str()));
    }
    let allowed = match inc.kind.as_str() {
        "VEVENT" | "VTODO" => true,
        "VJOURNAL" => matches!(inc.method, Method::Publish | Method::Add | Method::Cancel),
        _ => false,
    };
    if !allowed {
        return Decision::Rejected(Reason::MethodNotForComponent {
            method: inc.method.as_str(),
            component: inc.kind.clone(),
        });
    }
    if matches!(
        inc.method,
        Method::Publish | Method::Request | Method::Add | Method::Cancel
    ) {
        for c in &inc.components {
            if let Err(why) = crate::ical::time::check_recurrence(c) {
                return Decision::Rejected(Reason::RecurrenceTooComplex(why));
            }
        }
    }
    if let Some(s) = stored {
        if s.kind != inc.kind && !s.kind.is_empty() {
            return Decision::Rejected(Reason::ComponentChanged {
                stored: s.kind.clone(),
                incoming: inc.kind.clone(),
            });
        }
    }
    match inc.method {
        Method::Publish | Method::Request => organizer_update(stored, inc, ctx),
        Method::Add => add(stored, inc, ctx),
        Method::Cancel => cancel(stored, inc, ctx),
        Method::Reply => reply(stored, inc, ctx),
        Method::Refresh => refresh(stored, inc, ctx),
        Method::Counter => counter(stored, inc, ctx),
        Method::DeclineCounter => decline_counter(stored, inc, ctx),
    }
}

/// Common checks for the organizer's methods. Returns the proven organizer address.
fn check_organizer(
    stored: Option<&StoredObject>,
    inc: &Incoming,
    ctx: &Context,
) -> Result<String, Reason> {
    let Some(org) = incoming_organizer(inc) else {
        // Exchange 2010 style: no ORGANIZER. For a stored object fall back to its organizer.
        if let Some(s_org) = stored.and_then(any_organizer) {
            return authorized(s_org, &[s_org], ctx).ok_or_else(|| Reason::NotFromOrganizer {
                method: inc.method.as_str(),
                organizer: norm_addr(&s_org.value),
                proven: proven_list(ctx.proven),
            });
        }
        return Err(Reason::NoOrganizer(inc.method.as_str()));
    };
    let org_addr = norm_addr(&org.value);
    if org_addr.is_empty() {
        return Err(Reason::NoOrganizer(inc.method.as_str()));
    }
    // Every component must name the same organizer.
    for c in &inc.components {
        if let Some(o) = organizer(c) {
            if norm_addr(&o.value) != org_addr {
                return Err(Reason::OrganizerChanged {
                    stored: org_addr.clone(),
                    incoming: norm_addr(&o.value),
                });
            }
        }
    }
    let stored_org = stored.and_then(any_organizer);
    if let Some(s_org) = stored_org {
        if norm_addr(&s_org.value) != org_addr {
            return Err(Reason::OrganizerChanged {
                stored: norm_addr(&s_org.value),
                incoming: org_addr,
            });
        }
    }
    let stored_orgs: Vec<&Prop> = stored
        .map(|s| s.components.iter().filter_map(organizer).collect())
        .unwrap_or_default();
    authorized(org, &stored_orgs, ctx).ok_or_else(|| Reason::NotFromOrganizer {
        method: inc.method.as_str(),
        organizer: org_addr,
        proven: proven_list(ctx.proven),
    })
}

/// PUBLISH and REQUEST (RFC 5546 3.2.1, 3.2.2): create or replace the object.
fn organizer_update(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    if let Err(r) = check_organizer(stored, inc, ctx) {
        return Decision::Rejected(r);
    }
    let me = ctx.recipient;
    if inc.method == Method::Request {
        let invited = inc.components.iter().any(|c| attendee(c, me).is_some());
        if !invited {
            let org = incoming_organizer(inc).map(|o| norm_addr(&o.value));
            if org.as_deref() == Some(me) {
                return Decision::Rejected(Reason::RecipientIsOrganizer);
            }
            return match stored {
                // DESIGN: for a stored object, a REQUEST without the recipient removed them.
                Some(s) => removed_from_attendees(s, inc, ctx),
                None => Decision::Rejected(Reason::RecipientNotInvited(me.to_string())),
            };
        }
    }
    let inc_tz = tzmap_for(&inc.timezones);
    let Some(stored) = stored else {
        let object = StoredObject {
            uid: inc.uid.clone(),
            kind: inc.kind.clone(),
            components: inc.components.clone(),
            timezones: used_timezones(&inc.components, &inc.timezones),
            reply_stamps: BTreeMap::new(),
        };
        let n = inc.components.len();
        return Decision::Applied {
            object: Some(object),
            changed: true,
            replies: vec![],
            proposal: None,
            summary: if n > 1 {
                format!("created with {} instance overrides", n - 1)
            } else {
                "created".into()
            },
        };
    };
    let st_tz = tzmap_for(&stored.timezones);
    let st_master = master(stored);
    let inc_has_master = inc
        .components
        .iter()
        .any(|c| c.prop("RECURRENCE-ID").is_none());

    let mut result = stored.clone();
    let mut last_reason = None;
    let mut applied = 0usize;
    let mut rescheduled = false;
    // The stored state of one instance: its override, or what the master makes of it.
    let old_instance = |c: &Component, key: &str| -> Option<Component> {
        if let Some(o) = stored.components.iter().find(|s| rid_key(s, &st_tz) == key) {
            return Some(o.clone());
        }
        let m = st_master?;
        match c.prop("RECURRENCE-ID") {
            Some(rid) => Some(instance_from_master(m, rid, &st_tz)),
            None => Some(m.clone()),
        }
    };
    if inc_has_master {
        let inc_master = inc
            .components
            .iter()
            .find(|c| c.prop("RECURRENCE-ID").is_none())
            .expect("checked");
        let baseline = st_master.or_else(|| stored.components.iter().max_by_key(|c| c.sequence()));
        if let Some(old) = baseline {
            if let Err(r) = newer(inc_master, old) {
                return Decision::Ignored(r);
            }
        }
        // Replace the whole object, carrying the attendee's own data over.
        let master_invites_me = attendee(inc_master, me).is_some();
        let mut comps = Vec::with_capacity(inc.components.len());
        for c in &inc.components {
            let mut nc = c.clone();
            let key = rid_key(c, &inc_tz);
            if let Some(old) = old_instance(c, &key) {
                let resched = is_reschedule(c, &inc_tz, &old, &st_tz);
                rescheduled |= resched;
                preserve_attendee_data(&mut nc, &old, me, !resched);
            }
            // Removed from one instance of a series the recipient still attends.
            if !key.is_empty()
                && master_invites_me
                && attendee(c, me).is_none()
                && c.props_named("ATTENDEE").next().is_some()
            {
                nc.set("STATUS", "CANCELLED");
            }
            comps.push(nc);
        }
        result.components = comps;
        applied = inc.components.len();
    } else {
        for c in &inc.components {
            let key = rid_key(c, &inc_tz);
            let existing = result
                .components
                .iter()
                .position(|s| rid_key(s, &st_tz) == key);
            // An instance cancelled earlier (an EXDATE) is ordered against that cancellation.
            let excluded_at = match (existing, st_master, c.prop("RECURRENCE-ID")) {
                (None, Some(m), Some(rid)) => {
                    rid_utc(rid, Some(m), &inc_tz).filter(|ts| exdates_utc(m, &st_tz).contains(ts))
                }
                _ => None,
            };
            let order = match (excluded_at, cancel_record(stored, &key)) {
                (Some(_), Some((seq, stamp))) => newer_than(c, seq, stamp),
                (Some(_), None) => match st_master {
                    Some(m) if c.sequence() <= m.sequence() => {
                        Err(Reason::CancelledInstance(key.clone()))
                    }
                    _ => Ok(()),
                },
                (None, _) => {
                    let baseline = existing.map(|i| &result.components[i]).or(st_master);
                    instance_is_newer(c, baseline)
                }
            };
            if let Err(r) = order {
                last_reason = Some(r);
                continue;
            }
            let mut nc = c.clone();
            if let Some(old) = old_instance(c, &key) {
                let resched = is_reschedule(c, &inc_tz, &old, &st_tz);
                rescheduled |= resched;
                preserve_attendee_data(&mut nc, &old, me, !resched);
            }
            if let Some(ts) = excluded_at {
                if let Some(mpos) = result
                    .components
                    .iter()
                    .position(|s| s.prop("RECURRENCE-ID").is_none())
                {
                    remove_exdate(&mut result.components[mpos], ts, &st_tz);
                }
            }
            match existing {
                Some(i) => result.components[i] = nc,
                None => result.components.push(nc),
            }
            applied += 1;
        }
        if applied == 0 {
            return Decision::Ignored(last_reason.unwrap_or(Reason::Empty));
        }
    }
    result.timezones = used_timezones(
        &result.components,
        &merge_timezones(&stored.timezones, &inc.timezones),
    );
    let seq = inc
        .components
        .iter()
        .map(|c| c.sequence())
        .max()
        .unwrap_or(0);
    let attends = inc.components.iter().any(|c| attendee(c, me).is_some());
    let answer = match (attends, rescheduled) {
        (false, _) => "",
        (true, true) => "; PARTSTAT reset: the organizer asks again",
        (true, false) => "; local PARTSTAT kept",
    };
    Decision::Applied {
        object: Some(result),
        changed: true,
        replies: vec![],
        proposal: None,
        summary: if inc_has_master {
            format!("updated to SEQUENCE {seq}{answer}")
        } else {
            format!("updated {applied} instance(s){answer}")
        },
    }
}

/// A REQUEST for a stored object that no longer lists the recipient (RFC 5546 3.2.2.5 from the
/// attendee's side): the recipient was removed, so the local copy is cancelled, in the order of
/// the organizer's updates (a stale REQUEST is ignored). An instance REQUEST cancels only the
/// instances it carries.
fn removed_from_attendees(stored: &StoredObject, inc: &Incoming, ctx: &Context) -> Decision {
    match cancel(Some(stored), inc, ctx) {
        Decision::Applied {
            object,
            changed,
            replies,
            proposal,
            summary,
        } => Decision::Applied {
            object,
            changed,
            replies,
            proposal,
            summary: format!("{} is no longer an attendee: {summary}", ctx.recipient),
        },
        other => other,
    }
}

/// ADD (RFC 5546 3.2.4): new instances for an existing recurring object.
fn add(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    let org = match check_organizer(stored, inc, ctx) {
        Ok(o) => o,
        Err(r) => return Decision::Rejected(r),
    };
    let Some(stored) = stored else {
        // RFC 5546 3.2.4: without the original, ask the organizer for it.
        let mut refresh = Component::new(&inc.kind);
        if let Some(o) = incoming_organizer(inc) {
            refresh.props.push(o.clone());
        }
        refresh
            .props
            .push(Prop::new("ATTENDEE", crate::ical::mailto(ctx.recipient)));
        refresh.props.push(Prop::new("UID", inc.uid.clone()));
        refresh
            .props
            .push(Prop::new("DTSTAMP", format_utc(ctx.now)));
        let cal = calendar_for(Method::Refresh, &[refresh], &[]);
        return Decision::IgnoredWithReply(
            Reason::AddForUnknown(inc.uid.clone()),
            vec![OutMessage {
                from: ctx.recipient.to_string(),
                to: org,
                method: Method::Refresh,
                calendar: cal,
                summary: summary_of(&inc.components),
            }],
        );
    };
    let inc_tz = tzmap_for(&inc.timezones);
    let mut result = stored.clone();
    let Some(mpos) = result
        .components
        .iter()
        .position(|c| c.prop("RECURRENCE-ID").is_none())
    else {
        return Decision::Ignored(Reason::NoMaster);
    };
    let mut added = 0;
    for c in &inc.components {
        if c.sequence() < result.components[mpos].sequence() {
            return Decision::Ignored(Reason::OlderSequence {
                incoming: c.sequence(),
                stored: result.components[mpos].sequence(),
            });
        }
        let Some(start) = c.prop("DTSTART") else {
            continue;
        };
        let mut rdate = start.clone();
        rdate.name = "RDATE".into();
        result.components[mpos].props.push(rdate);
        let mut inst = c.clone();
        let mut rid = start.clone();
        rid.name = "RECURRENCE-ID".into();
        inst.set_prop(rid);
        if let Some(m_org) = organizer(&result.components[mpos]).cloned() {
            if inst.prop("ORGANIZER").is_none() {
                inst.props.push(m_org);
            }
        }
        let st_tz = tzmap_for(&result.timezones);
        let key = rid_key(&inst, &inc_tz);
        result
            .components
            .retain(|s| s.prop("RECURRENCE-ID").is_none() || rid_key(s, &st_tz) != key);
        result.components.push(inst);
        added += 1;
    }
    if added == 0 {
        return Decision::Rejected(Reason::Malformed("ADD without DTSTART".into()));
    }
    let seq = inc
        .components
        .iter()
        .map(|c| c.sequence())
        .max()
        .unwrap_or(0);
    let m = &mut result.components[mpos];
    if seq > m.sequence() {
        m.set("SEQUENCE", seq.to_string());
    }
    if let Some(ds) = inc.components.iter().find_map(|c| c.prop("DTSTAMP")) {
        m.set_prop(ds.clone());
    }
    result.timezones = used_timezones(
        &result.components,
        &merge_timezones(&stored.timezones, &inc.timezones),
    );
    Decision::Applied {
        object: Some(result),
        changed: true,
        replies: vec![],
        proposal: None,
        summary: format!("added {added} instance(s)"),
    }
}

/// CANCEL (RFC 5546 3.2.5): the whole object, one instance, or this-and-future.
fn cancel(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    if let Err(r) = check_organizer(stored, inc, ctx) {
        return Decision::Rejected(r);
    }
    let Some(stored) = stored else {
        return Decision::Ignored(Reason::UnknownObject(inc.uid.clone()));
    };
    let inc_tz = tzmap_for(&inc.timezones);
    let st_tz = tzmap_for(&stored.timezones);
    let mut result = stored.clone();
    let whole = inc
        .components
        .iter()
        .any(|c| c.prop("RECURRENCE-ID").is_none());
    if whole {
        let c = inc
            .components
            .iter()
            .find(|c| c.prop("RECURRENCE-ID").is_none())
            .expect("checked");
        if let Some(m) =
            master(stored).or_else(|| stored.components.iter().max_by_key(|c| c.sequence()))
        {
            if let Err(r) = newer(c, m) {
                return Decision::Ignored(r);
            }
        }
        if ctx.delete_on_cancel {
            return Decision::Applied {
                object: None,
                changed: true,
                replies: vec![],
                proposal: None,
                summary: "cancelled and deleted".into(),
            };
        }
        for sc in result.components.iter_mut() {
            sc.set("STATUS", "CANCELLED");
            if sc.prop("RECURRENCE-ID").is_none() {
                sc.set("SEQUENCE", c.sequence().max(sc.sequence()).to_string());
                if let Some(ds) = c.prop("DTSTAMP") {
                    sc.set_prop(ds.clone());
                }
            }
        }
        return Decision::Applied {
            object: Some(result),
            changed: true,
            replies: vec![],
            proposal: None,
            summary: "cancelled (STATUS:CANCELLED)".into(),
        };
    }
    let mut done = 0;
    let mut last_reason = None;
    for c in &inc.components {
        let Some(rid_prop) = c.prop("RECURRENCE-ID") else {
            continue;
        };
        let key = rid_key(c, &inc_tz);
        let rid_ts = inc_tz.prop_utc(rid_prop);
        let existing = result
            .components
            .iter()
            .position(|s| rid_key(s, &st_tz) == key);
        let excluded = existing.is_none()
            && master(&result).is_some_and(|m| {
                rid_utc(rid_prop, Some(m), &inc_tz)
                    .is_some_and(|ts| exdates_utc(m, &st_tz).contains(&ts))
            });
        if excluded && !is_this_and_future(c) {
            // Already cancelled (or never part of the series): nothing to do, in any order.
            last_reason = Some(match cancel_record(&result, &key) {
                Some((seq, stamp)) => newer_than(c, seq, stamp)
                    .err()
                    .unwrap_or(Reason::CancelledInstance(key.clone())),
                None => Reason::CancelledInstance(key.clone()),
            });
            continue;
        }
        let baseline = existing
            .map(|i| &result.components[i])
            .or_else(|| master(&result));
        if let Err(r) = instance_is_newer(c, baseline) {
            last_reason = Some(r);
            continue;
        }
        if is_this_and_future(c) {
            // Truncate the series before this instance and cancel later overrides.
            if let (Some(ts), Some(mpos)) = (
                rid_ts,
                result
                    .components
                    .iter()
                    .position(|s| s.prop("RECURRENCE-ID").is_none()),
            ) {
                let m = &mut result.components[mpos];
                if let Some(rr) = m.prop_mut("RRULE") {
                    let parts: Vec<&str> = rr
                        .value
                        .split(';')
                        .filter(|kv| {
                            let k = kv.split('=').next().unwrap_or("").to_ascii_uppercase();
                            k != "UNTIL" && k != "COUNT"
                        })
                        .collect();
                    rr.value = format!("{};UNTIL={}", parts.join(";"), format_utc(ts - 1));
                }
            }
            for s in result.components.iter_mut() {
                if s.prop("RECURRENCE-ID").is_some() {
                    if let (Some(sts), Some(ts)) = (
                        s.prop("RECURRENCE-ID").and_then(|p| st_tz.prop_utc(p)),
                        rid_ts,
                    ) {
                        if sts >= ts {
                            s.set("STATUS", "CANCELLED");
                        }
                    }
                }
            }
        } else {
            match existing {
                Some(i) => {
                    // The override keeps the cancellation's SEQUENCE and DTSTAMP: later
                    // messages for this instance are ordered against them.
                    let s = &mut result.components[i];
                    s.set("STATUS", "CANCELLED");
                    s.set("SEQUENCE", c.sequence().max(s.sequence()).to_string());
                    if let Some(ds) = c.prop("DTSTAMP") {
                        s.set_prop(ds.clone());
                    }
                }
                None => {
                    if let Some(mpos) = result
                        .components
                        .iter()
                        .position(|s| s.prop("RECURRENCE-ID").is_none())
                    {
                        let mut ex = rid_prop.clone();
                        ex.name = "EXDATE".into();
                        ex.remove_param("RANGE");
                        result.components[mpos].props.push(ex);
                        record_cancel(&mut result, &key, c);
                    } else {
                        let mut nc = c.clone();
                        nc.set("STATUS", "CANCELLED");
                        result.components.push(nc);
                    }
                }
            }
        }
        done += 1;
    }
    if done == 0 {
        return Decision::Ignored(last_reason.unwrap_or(Reason::Empty));
    }
    result.timezones = used_timezones(
        &result.components,
        &merge_timezones(&stored.timezones, &inc.timezones),
    );
    Decision::Applied {
        object: Some(result),
        changed: true,
        replies: vec![],
        proposal: None,
        summary: format!("cancelled {done} instance(s)"),
    }
}

/// Common checks for the attendee's methods: the recipient is the stored organizer and the
/// message comes from an attendee. Returns the stored object and the replying attendee.
fn check_attendee<'a>(
    stored: Option<&'a StoredObject>,
    inc: &Incoming,
    ctx: &Context,
) -> Result<(&'a StoredObject, String), Reason> {
    let Some(stored) = stored else {
        return Err(Reason::UnknownObject(inc.uid.clone()));
    };
    let s_org = any_organizer(stored).map(|o| norm_addr(&o.value));
    if s_org.as_deref() != Some(ctx.recipient) {
        return Err(Reason::RecipientNotOrganizer(ctx.recipient.to_string()));
    }
    if let Some(org) = incoming_organizer(inc) {
        let o = norm_addr(&org.value);
        if Some(&o) != s_org.as_ref() {
            return Err(Reason::OrganizerChanged {
                stored: s_org.unwrap_or_default(),
                incoming: o,
            });
        }
    }
    // The attendee whose reply this is: the one the proof covers.
    let mut replier = None;
    let mut any_attendee = None;
    for c in &inc.components {
        for a in c.props_named("ATTENDEE") {
            any_attendee.get_or_insert_with(|| norm_addr(&a.value));
            let who = norm_addr(&a.value);
            let st: Vec<&Prop> = stored
                .components
                .iter()
                .filter_map(|s| attendee(s, &who))
                .collect();
            if authorized(a, &st, ctx).is_some() {
                replier = Some(norm_addr(&a.value));
                break;
            }
        }
        if replier.is_some() {
            break;
        }
    }
    let Some(replier) = replier else {
        return Err(match any_attendee {
            None => Reason::NoAttendee(inc.method.as_str()),
            Some(a) => Reason::NotFromAttendee {
                method: inc.method.as_str(),
                attendee: a,
                proven: proven_list(ctx.proven),
            },
        });
    };
    Ok((stored, replier))
}

/// Whether `who` may answer for the component (DESIGN: delegation is not self-service): a stored
/// attendee, or a delegate whom a stored attendee named in the reply's `DELEGATED-FROM` recorded
/// as its `DELEGATED-TO` (RFC 5546 2.1.6). A delegation made by the delegator's own REPLY in the
/// same message is recorded before the delegate's part is read, so it counts too.
fn is_known_attendee(comp: &Component, who: &str, reply_line: &Prop) -> bool {
    if attendee(comp, who).is_some() {
        return true;
    }
    reply_line
        .param_values("DELEGATED-FROM")
        .map(norm_addr)
        .any(|from| {
            attendee(comp, &from).is_some_and(|d| {
                d.param_values("DELEGATED-TO")
                    .any(|to| norm_addr(to) == who)
            })
        })
}

/// The ATTENDEE line recorded for a delegate: what the delegate's own line says of its name, the
/// delegator's ROLE (RFC 5546 2.1.6: the delegate takes the delegator's place) and the given
/// status, never a role or SENT-BY of its own choosing.
fn delegate_line(
    line: &Prop,
    delegator: Option<&Prop>,
    from: &str,
    partstat: Option<&str>,
) -> Prop {
    let mut l = Prop::new("ATTENDEE", line.value.clone());
    for p in &line.params {
        if matches!(p.name.as_str(), "CN" | "CUTYPE" | "EMAIL" | "LANGUAGE")
            || p.name.starts_with("X-")
        {
            l.params.push(p.clone());
        }
    }
    if let Some(role) = delegator.and_then(|d| d.param("ROLE")) {
        l.set_param("ROLE", role.to_string());
    }
    l.set_param("PARTSTAT", partstat.unwrap_or("NEEDS-ACTION").to_string());
    if !from.is_empty() {
        l.set_param("DELEGATED-FROM", crate::ical::mailto(from));
    }
    l
}

/// Why a REPLY for instance `c` of `obj` must not touch it (DESIGN: replies never create
/// occurrences): the RECURRENCE-ID is not an instance of the series, or the organizer cancelled
/// it. `None` when it is a live instance.
fn dead_instance(
    obj: &StoredObject,
    c: &Component,
    key: &str,
    inc_tz: &TzMap,
    st_tz: &TzMap,
) -> Option<Reason> {
    let rid = c.prop("RECURRENCE-ID")?;
    if let Some(o) = obj.components.iter().find(|s| rid_key(s, st_tz) == key) {
        return is_cancelled(o).then(|| Reason::CancelledInstance(key.to_string()));
    }
    let Some(m) = master(obj) else {
        return Some(Reason::UnknownInstance(key.to_string()));
    };
    if is_cancelled(m) {
        return Some(Reason::CancelledInstance(key.to_string()));
    }
    let Some(ts) = rid_utc(rid, Some(m), inc_tz) else {
        return Some(Reason::UnknownInstance(key.to_string()));
    };
    if exdates_utc(m, st_tz).contains(&ts) {
        return Some(Reason::CancelledInstance(key.to_string()));
    }
    if !is_instance(m, ts, st_tz) {
        return Some(Reason::UnknownInstance(key.to_string()));
    }
    None
}

/// REPLY (RFC 5546 3.2.3): update the replying attendee's status on the organizer's copy.
fn reply(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    let (stored, replier) = match check_attendee(stored, inc, ctx) {
        Ok(v) => v,
        Err(r @ Reason::UnknownObject(_)) => return Decision::Ignored(r),
        Err(r) => return Decision::Rejected(r),
    };
    let inc_tz = tzmap_for(&inc.timezones);
    let st_tz = tzmap_for(&stored.timezones);
    let mut result = stored.clone();
    let mut changes = Vec::new();
    let mut last_reason = None;
    for c in &inc.components {
        let Some(line) = attendee(c, &replier).cloned() else {
            continue;
        };
        let key = rid_key(c, &inc_tz);
        let targets: Vec<usize> = if key.is_empty() {
            result
                .components
                .iter()
                .position(|s| s.prop("RECURRENCE-ID").is_none())
                .into_iter()
                .collect()
        } else {
            if let Some(why) = dead_instance(&result, c, &key, &inc_tz, &st_tz) {
                last_reason = Some(why);
                continue;
            }
            let pos = result
                .components
                .iter()
                .position(|s| rid_key(s, &st_tz) == key);
            let mut v = match pos {
                Some(p) => vec![p],
                None => {
                    // RFC 5546 3.2.3: a reply for one (live) instance creates its override.
                    let (Some(m), Some(rid_prop)) = (master(&result), c.prop("RECURRENCE-ID"))
                    else {
                        last_reason = Some(Reason::UnknownInstance(key.clone()));
                        continue;
                    };
                    let inst = instance_from_master(m, rid_prop, &st_tz);
                    result.components.push(inst);
                    vec![result.components.len() - 1]
                }
            };
            if is_this_and_future(c) {
                if let Some(ts) = c.prop("RECURRENCE-ID").and_then(|p| inc_tz.prop_utc(p)) {
                    for (i, s) in result.components.iter().enumerate() {
                        if let Some(sts) = s.prop("RECURRENCE-ID").and_then(|p| st_tz.prop_utc(p)) {
                            if sts > ts && !v.contains(&i) && !is_cancelled(s) {
                                v.push(i);
                            }
                        }
                    }
                }
            }
            v
        };
        if targets.is_empty() {
            last_reason = Some(Reason::NoMaster);
            continue;
        }
        for t in targets {
            let target = &result.components[t];
            if !is_known_attendee(target, &replier, &line) {
                return Decision::Rejected(Reason::PartyCrasher(replier.clone()));
            }
            if c.sequence() < target.sequence() {
                last_reason = Some(Reason::OlderSequence {
                    incoming: c.sequence(),
                    stored: target.sequence(),
                });
                continue;
            }
            let stamp_key = format!("{}|{}", rid_key(target, &st_tz), replier);
            let new_stamp = dtstamp(c);
            if let (Some(n), Some(o)) = (new_stamp, result.reply_stamps.get(&stamp_key)) {
                if n <= *o {
                    last_reason = Some(Reason::StaleReply {
                        attendee: replier.clone(),
                    });
                    continue;
                }
            }
            let partstat = line
                .param("PARTSTAT")
                .unwrap_or("NEEDS-ACTION")
                .to_ascii_uppercase();
            let target = &mut result.components[t];
            let delegates: Vec<String> = line
                .param_values("DELEGATED-TO")
                .map(str::to_string)
                .collect();
            let delegator = line
                .param_values("DELEGATED-FROM")
                .map(norm_addr)
                .find_map(|f| attendee(target, &f).map(|p| (f, p.clone())));
            match attendee_mut(target, &replier) {
                Some(a) => {
                    a.set_param("PARTSTAT", partstat.clone());
                    a.remove_param("RSVP");
                    if !delegates.is_empty() {
                        a.set_param_values("DELEGATED-TO", delegates.clone());
                    }
                    for p in line
                        .params
                        .iter()
                        .filter(|p| p.name == "DELEGATED-FROM" || p.name.starts_with("X-"))
                    {
                        a.set_param_values(&p.name, p.values.clone());
                    }
                }
                None => {
                    // A delegate answering (checked by is_known_attendee): record them with
                    // their DELEGATED-FROM and their answer.
                    let (from, d) = match &delegator {
                        Some((f, d)) => (f.as_str(), Some(d)),
                        None => ("", None),
                    };
                    target
                        .props
                        .push(delegate_line(&line, d, from, Some(&partstat)));
                }
            }
            // Delegation: add the delegates named in the reply (RFC 5546 2.1.6, 3.2.2.3).
            for d in &delegates {
                let dn = norm_addr(d);
                if attendee(target, &dn).is_none() {
                    // The delegate has not answered yet: NEEDS-ACTION, whatever the line says.
                    let from_reply = c
                        .props_named("ATTENDEE")
                        .find(|a| norm_addr(&a.value) == dn)
                        .cloned()
                        .unwrap_or_else(|| Prop::new("ATTENDEE", crate::ical::mailto(&dn)));
                    let me = attendee(target, &replier).cloned();
                    let dl = delegate_line(&from_reply, me.as_ref(), &replier, None);
                    target.props.push(dl);
                }
            }
            if let Some(n) = new_stamp {
                result.reply_stamps.insert(stamp_key, n);
            }
            let label = if key.is_empty() {
                String::new()
            } else {
                format!(" for instance {key}")
            };
            changes.push(format!("{replier} {partstat}{label}"));
        }
    }
    if changes.is_empty() {
        return Decision::Ignored(last_reason.unwrap_or(Reason::NoAttendee("REPLY")));
    }
    Decision::Applied {
        object: Some(result),
        changed: true,
        replies: vec![],
        proposal: None,
        summary: format!("PARTSTAT updated: {}", changes.join(", ")),
    }
}

/// For REFRESH and COUNTER: the stored object and the attendee asking, who must be one of its
/// attendees (RFC 5546 3.2.6, 3.2.7); otherwise the decision to return (a cold path, so the
/// large error type costs nothing that matters).
#[allow(clippy::result_large_err)]
fn stored_attendee<'a>(
    stored: Option<&'a StoredObject>,
    inc: &Incoming,
    ctx: &Context,
) -> Result<(&'a StoredObject, String), Decision> {
    let (stored, who) = match check_attendee(stored, inc, ctx) {
        Ok(v) => v,
        Err(r @ Reason::UnknownObject(_)) => return Err(Decision::Ignored(r)),
        Err(r) => return Err(Decision::Rejected(r)),
    };
    if !stored
        .components
        .iter()
        .any(|c| attendee(c, &who).is_some())
    {
        return Err(Decision::Rejected(Reason::PartyCrasher(who)));
    }
    Ok((stored, who))
}

/// REFRESH (RFC 5546 3.2.6): answer with the current REQUEST, or with a CANCEL when the
/// organizer cancelled the object (DESIGN): a REQUEST would bring a cancelled event back.
fn refresh(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    let (stored, requester) = match stored_attendee(stored, inc, ctx) {
        Ok(v) => v,
        Err(d) => return d,
    };
    let cancelled = match master(stored) {
        Some(m) => is_cancelled(m),
        None => stored.components.iter().all(is_cancelled),
    };
    let method = if cancelled {
        Method::Cancel
    } else {
        Method::Request
    };
    let comps: Vec<Component> = stored
        .components
        .iter()
        .cloned()
        .map(|mut c| {
            c.set("DTSTAMP", format_utc(ctx.now));
            if cancelled {
                c.set("STATUS", "CANCELLED");
                c.subs.retain(|s| s.name != "VALARM");
            }
            c
        })
        .collect();
    let cal = calendar_for(method, &comps, &stored.timezones);
    Decision::Applied {
        object: Some(stored.clone()),
        changed: false,
        replies: vec![OutMessage {
            from: ctx.recipient.to_string(),
            to: requester.clone(),
            method,
            calendar: cal,
            summary: summary_of(&stored.components),
        }],
        proposal: None,
        summary: if cancelled {
            format!("answered {requester} with a CANCEL (the object is cancelled)")
        } else {
            format!("answered {requester} with the current REQUEST")
        },
    }
}

/// COUNTER (RFC 5546 3.2.7): recorded for the organizer; the event is unchanged.
fn counter(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    let (stored, from) = match stored_attendee(stored, inc, ctx) {
        Ok(v) => v,
        Err(d) => return d,
    };
    Decision::Applied {
        object: Some(stored.clone()),
        changed: false,
        replies: vec![],
        proposal: Some(Proposal {
            method: Method::Counter,
            from: from.clone(),
            calendar: calendar_for(Method::Counter, &inc.components, &inc.timezones),
        }),
        summary: format!("counter-proposal from {from} recorded; event unchanged"),
    }
}

/// DECLINECOUNTER (RFC 5546 3.2.8): recorded for the attendee; the event is unchanged.
fn decline_counter(stored: Option<&StoredObject>, inc: &Incoming, ctx: &Context) -> Decision {
    let org = match check_organizer(stored, inc, ctx) {
        Ok(o) => o,
        Err(r) => return Decision::Rejected(r),
    };
    Decision::Applied {
        object: stored.cloned(),
        changed: false,
        replies: vec![],
        proposal: Some(Proposal {
            method: Method::DeclineCounter,
            from: org.clone(),
            calendar: calendar_for(Method::DeclineCounter, &inc.components, &inc.timezones),
        }),
        summary: format!("counter-proposal declined by {org} recorded; event unchanged"),
    }
}

// ---------------------------------------------------------------------------------------------
// Free/busy

/// One busy period in UTC seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Busy {
    pub start: i64,
    pub end: i64,
    pub tentative: bool,
}

/// The busy periods `user` has because of `obj` (RFC 5545 3.2.9, RFC 5546 3.3): transparent,
/// cancelled and declined occurrences are free. At most `limit` occurrences are expanded.
pub fn busy_periods(obj: &StoredObject, user: &str, limit: usize) -> Vec<Busy> {
    if obj.kind != "VEVENT" {
        return Vec::new();
    }
    let tz = tzmap_for(&obj.timezones);
    let refs: Vec<&Component> = obj.components.iter().collect();
    let occ = crate::ical::time::expand(&refs, &tz, limit);
    let mut out = Vec::with_capacity(occ.len());
    for o in occ {
        let c = refs[o.component];
        if c.value("STATUS")
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("CANCELLED"))
        {
            continue;
        }
        if c.value("TRANSP")
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("TRANSPARENT"))
        {
            continue;
        }
        let ps = attendee(c, user)
            .and_then(|a| a.param("PARTSTAT"))
            .map(|p| p.to_ascii_uppercase());
        if ps.as_deref() == Some("DECLINED") {
            continue;
        }
        let tentative = ps.as_deref() == Some("TENTATIVE")
            || c.value("STATUS")
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("TENTATIVE"));
        if o.end <= o.start {
            continue;
        }
        out.push(Busy {
            start: o.start,
            end: o.end,
            tentative,
        });
    }
    out
}

/// Merges overlapping periods of the same kind and clips them to the window.
pub fn merge_busy(mut busy: Vec<Busy>, from: i64, to: i64) -> Vec<Busy> {
    busy.retain(|b| b.end > from && b.start < to);
    for b in busy.iter_mut() {
        b.start = b.start.max(from);
        b.end = b.end.min(to);
    }
    busy.sort();
    let mut out: Vec<Busy> = Vec::new();
    for kind in [false, true] {
        let mut cur: Option<Busy> = None;
        for b in busy.iter().filter(|b| b.tentative == kind) {
            match cur.as_mut() {
                Some(c) if b.start <= c.end => c.end = c.end.max(b.end),
                _ => {
                    if let Some(c) = cur.take() {
                        out.push(c);
                    }
                    cur = Some(*b);
                }
            }
        }
        if let Some(c) = cur {
            out.push(c);
        }
    }
    out.sort();
    out
}

/// A VFREEBUSY component for `user` over [from, to) (RFC 5546 3.3.2 for replies).
pub fn freebusy_component(
    user: &str,
    organizer: Option<&Prop>,
    uid: Option<&str>,
    from: i64,
    to: i64,
    busy: &[Busy],
    now: i64,
) -> Component {
    let mut fb = Component::new("VFREEBUSY");
    if let Some(o) = organizer {
        let mut o = o.clone();
        o.params.retain(|p| p.name == "CN");
        fb.props.push(o);
    }
    fb.props
        .push(Prop::new("ATTENDEE", crate::ical::mailto(user)));
    fb.props.push(Prop::new("DTSTAMP", format_utc(now)));
    fb.props.push(Prop::new("DTSTART", format_utc(from)));
    fb.props.push(Prop::new("DTEND", format_utc(to)));
    if let Some(uid) = uid {
        fb.props.push(Prop::new("UID", uid));
    }
    for b in busy {
        let mut p = Prop::new(
            "FREEBUSY",
            format!("{}/{}", format_utc(b.start), format_utc(b.end)),
        );
        p.set_param(
            "FBTYPE",
            if b.tentative {
                "BUSY-TENTATIVE"
            } else {
                "BUSY"
            },
        );
        fb.props.push(p);
    }
    fb
}

/// Checks a VFREEBUSY REQUEST (RFC 5546 3.3.2) for `ctx.recipient` and returns the window and the
/// organizer to answer.
pub fn check_freebusy_request(inc: &Incoming, ctx: &Context) -> Result<(i64, i64, Prop), Reason> {
    let c = &inc.components[0];
    let org = organizer(c).ok_or(Reason::NoOrganizer("REQUEST"))?;
    if authorized(org, &[], ctx).is_none() {
        return Err(Reason::NotFromOrganizer {
            method: "REQUEST",
            organizer: norm_addr(&org.value),
            proven: proven_list(ctx.proven),
        });
    }
    if attendee(c, ctx.recipient).is_none() {
        return Err(Reason::RecipientNotInvited(ctx.recipient.to_string()));
    }
    let tz = tzmap_for(&inc.timezones);
    let from = c.prop("DTSTART").and_then(|p| tz.prop_utc(p));
    let to = c.prop("DTEND").and_then(|p| tz.prop_utc(p));
    match (from, to) {
        (Some(f), Some(t)) if t > f => Ok((f, t, org.clone())),
        _ => Err(Reason::Malformed(
            "VFREEBUSY REQUEST needs DTSTART before DTEND".into(),
        )),
    }
}

/// Builds the VFREEBUSY REPLY message for a checked request.
pub fn freebusy_reply(
    inc: &Incoming,
    ctx: &Context,
    org: &Prop,
    from: i64,
    to: i64,
    busy: &[Busy],
) -> OutMessage {
    let c = &inc.components[0];
    let fb = freebusy_component(ctx.recipient, Some(org), c.uid(), from, to, busy, ctx.now);
    OutMessage {
        from: ctx.recipient.to_string(),
        to: norm_addr(&org.value),
        method: Method::Reply,
        calendar: calendar_for(Method::Reply, &[fb], &[]),
        summary: "Free/busy".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(lines: &[&str]) -> Component {
        let text = format!(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\n{}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            lines.join("\r\n")
        );
        crate::ical::parse(&text).expect("parses")[0].subs[0].clone()
    }

    fn ctx<'a>(proven: &'a [String], delegates: &'a HashMap<String, Vec<String>>) -> Context<'a> {
        Context {
            recipient: "bob@example.org",
            proven,
            delegates,
            delete_on_cancel: false,
            now: 0,
        }
    }

    #[test]
    fn sent_by_needs_a_configured_or_recorded_delegate() {
        let line = Prop {
            name: "ORGANIZER".into(),
            params: vec![crate::ical::Param {
                name: "SENT-BY".into(),
                values: vec!["mailto:Office@example.org".into()],
            }],
            value: "mailto:alice@example.org".into(),
        };
        let proven = vec!["office@example.org".to_string()];
        let none = HashMap::new();
        // Same domain alone is not enough.
        assert_eq!(authorized(&line, &[], &ctx(&proven, &none)), None);
        // A delegate of someone else is not Alice's.
        let other: HashMap<_, _> = [(
            "dora@example.org".to_string(),
            vec!["office@example.org".to_string()],
        )]
        .into();
        assert_eq!(authorized(&line, &[], &ctx(&proven, &other)), None);
        let conf: HashMap<_, _> = [(
            "alice@example.org".to_string(),
            vec!["office@example.org".to_string()],
        )]
        .into();
        assert_eq!(
            authorized(&line, &[], &ctx(&proven, &conf)).as_deref(),
            Some("office@example.org")
        );
        // Recorded on the stored line of the same user.
        assert_eq!(
            authorized(&line, &[&line], &ctx(&proven, &none)).as_deref(),
            Some("office@example.org")
        );
        // Recorded for another user does not count.
        let mut elsewhere = line.clone();
        elsewhere.value = "mailto:dora@example.org".into();
        assert_eq!(authorized(&line, &[&elsewhere], &ctx(&proven, &none)), None);
        // The SENT-BY must itself be proven.
        let nobody: Vec<String> = vec![];
        assert_eq!(authorized(&line, &[], &ctx(&nobody, &conf)), None);
    }

    #[test]
    fn reschedule_is_sequence_or_time() {
        let tz = TzMap::new(&[]);
        let base = comp(&[
            "UID:x",
            "SEQUENCE:1",
            "DTSTART:20260302T100000Z",
            "DTEND:20260302T110000Z",
            "RRULE:FREQ=DAILY;COUNT=3",
            "SUMMARY:a",
        ]);
        let same_time = comp(&[
            "UID:x",
            "SEQUENCE:1",
            "DTSTART;TZID=Europe/Berlin:20260302T110000",
            "DURATION:PT1H",
            "RRULE:COUNT=3;FREQ=DAILY",
            "SUMMARY:b",
            "DESCRIPTION:c",
        ]);
        assert!(!is_reschedule(&same_time, &tz, &base, &tz));
        let higher = comp(&[
            "UID:x",
            "SEQUENCE:2",
            "DTSTART:20260302T100000Z",
            "DTEND:20260302T110000Z",
            "RRULE:FREQ=DAILY;COUNT=3",
        ]);
        assert!(is_reschedule(&higher, &tz, &base, &tz));
        for changed in [
            "DTSTART:20260302T100500Z",
            "DTEND:20260302T113000Z",
            "RRULE:FREQ=DAILY;COUNT=4",
            "EXDATE:20260303T100000Z",
            "RDATE:20260310T100000Z",
        ] {
            let mut c = base.clone();
            let p = comp(&[changed]).props[0].clone();
            if matches!(p.name.as_str(), "EXDATE" | "RDATE") {
                c.props.push(p);
            } else {
                c.set_prop(p);
            }
            assert!(is_reschedule(&c, &tz, &base, &tz), "{changed}");
        }
    }
}

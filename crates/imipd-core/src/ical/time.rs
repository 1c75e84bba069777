//! Dates, time zones and recurrence expansion.
//!
//! TZIDs are resolved to IANA zones here (IANA names, Windows and Exchange/CDO names through
//! calcard's table, then VTIMEZONE hints such as X-LIC-LOCATION, X-ENTOURAGE-CFTIMEZONE and
//! X-MICROSOFT-CDO-TZID, then the VTIMEZONE's own UTC offsets). Expansion is delegated to calcard on
//! a copy of the object whose TZIDs have been rewritten to the resolved IANA names, which sidesteps
//! calcard's handling of custom VTIMEZONE rules and of overrides with another SEQUENCE.

use super::Component;
use calcard::common::timezone::Tz as CTz;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use std::collections::HashMap;
use std::str::FromStr;

/// A parsed DATE or DATE-TIME value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateValue {
    pub naive: NaiveDateTime,
    pub is_date: bool,
    pub utc: bool,
}

/// Parses `YYYYMMDD`, `YYYYMMDDTHHMMSS` and `YYYYMMDDTHHMMSSZ` (lenient about a missing seconds
/// field, never about garbage).
pub fn parse_date_value(value: &str) -> Option<DateValue> {
    let v = value.trim();
    let (v, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(rest) => (rest, true),
        None => (v, false),
    };
    let (date, time) = match v.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (v, None),
    };
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i32 = date[0..4].parse().ok()?;
    let m: u32 = date[4..6].parse().ok()?;
    let d: u32 = date[6..8].parse().ok()?;
    let nd = NaiveDate::from_ymd_opt(y, m, d)?;
    match time {
        None => Some(DateValue {
            naive: nd.and_time(NaiveTime::MIN),
            is_date: true,
            utc: false,
        }),
        Some(t) => {
            if !(t.len() == 6 || t.len() == 4) || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hh: u32 = t[0..2].parse().ok()?;
            let mm: u32 = t[2..4].parse().ok()?;
            let ss: u32 = if t.len() == 6 {
                t[4..6].parse().ok()?
            } else {
                0
            };
            // RFC 5545 allows a leap second 60; clamp it.
            let nt = NaiveTime::from_hms_opt(hh, mm, ss.min(59))?;
            Some(DateValue {
                naive: nd.and_time(nt),
                is_date: false,
                utc,
            })
        }
    }
}

/// Formats a UTC timestamp as an iCalendar UTC DATE-TIME.
pub fn format_utc(ts: i64) -> String {
    match chrono::Utc.timestamp_opt(ts, 0).single() {
        Some(dt) => dt.format("%Y%m%dT%H%M%SZ").to_string(),
        None => "19700101T000000Z".into(),
    }
}

/// Parses a command-line date-time: iCalendar form, RFC 3339, or a bare date (UTC).
pub fn parse_cli_datetime(s: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Some(dt.timestamp());
    }
    if let Ok(nd) = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d") {
        return Some(nd.and_time(NaiveTime::MIN).and_utc().timestamp());
    }
    if let Ok(ndt) = NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S") {
        return Some(ndt.and_utc().timestamp());
    }
    let dv = parse_date_value(s)?;
    Some(dv.naive.and_utc().timestamp())
}

/// Maps TZIDs used in one object to IANA zones.
#[derive(Debug, Default, Clone)]
pub struct TzMap {
    map: HashMap<String, Option<chrono_tz::Tz>>,
}

impl TzMap {
    /// Builds the map for every VTIMEZONE in `timezones`; other TZIDs are resolved on demand.
    pub fn new(timezones: &[&Component]) -> Self {
        let mut map = HashMap::new();
        for tz in timezones {
            if let Some(id) = tz.value("TZID") {
                let id = id.trim().trim_matches('"').to_string();
                // A display name such as "(GMT-08.00) Pacific Time" only yields a fixed offset;
                // the VTIMEZONE's own hints and rules know about daylight saving time.
                let resolved = match resolve_by_name(&id) {
                    Some(zone) if !is_fixed_offset(zone) => Some(zone),
                    fixed => resolve_by_vtimezone(tz).or(fixed),
                };
                map.insert(id, resolved);
            }
        }
        TzMap { map }
    }

    pub fn resolve(&self, tzid: &str) -> Option<chrono_tz::Tz> {
        let tzid = tzid.trim().trim_matches('"');
        match self.map.get(tzid) {
            Some(r) => *r,
            None => resolve_by_name(tzid),
        }
    }

    /// UTC timestamp of a DTSTART-like property. Floating and DATE values are read as UTC.
    pub fn prop_utc(&self, prop: &super::Prop) -> Option<i64> {
        let dv = parse_date_value(&prop.value)?;
        if dv.utc || dv.is_date {
            return Some(dv.naive.and_utc().timestamp());
        }
        match prop.param("TZID").and_then(|id| self.resolve(id)) {
            Some(tz) => tz
                .from_local_datetime(&dv.naive)
                .earliest()
                .map(|d| d.timestamp())
                .or_else(|| Some(dv.naive.and_utc().timestamp())),
            None => Some(dv.naive.and_utc().timestamp()),
        }
    }
}

/// Whether `zone` is one of the `Etc/` fixed-offset zones (no daylight saving time).
fn is_fixed_offset(zone: chrono_tz::Tz) -> bool {
    zone.name().starts_with("Etc/")
}

fn resolve_by_name(name: &str) -> Option<chrono_tz::Tz> {
    match CTz::from_str(name) {
        Ok(CTz::Tz(tz)) => Some(tz),
        Ok(CTz::Fixed(off)) => fixed_zone(off.local_minus_utc()),
        _ => None,
    }
}

fn resolve_by_vtimezone(vtz: &Component) -> Option<chrono_tz::Tz> {
    for hint in ["X-LIC-LOCATION", "X-ENTOURAGE-CFTIMEZONE"] {
        if let Some(v) = vtz.value(hint) {
            let v = v.trim();
            let v = v.strip_prefix("SystemV/").unwrap_or(v);
            if let Some(tz) = resolve_by_name(v) {
                return Some(tz);
            }
        }
    }
    if let Some(id) = vtz.value("X-MICROSOFT-CDO-TZID") {
        if let Some(CTz::Tz(tz)) = CTz::from_ms_cdo_zone_id(id.trim()) {
            return Some(tz);
        }
    }
    by_offsets(vtz)
}

/// Picks a representative IANA zone from the VTIMEZONE's STANDARD/DAYLIGHT offsets.
fn by_offsets(vtz: &Component) -> Option<chrono_tz::Tz> {
    let offset = |c: &Component| c.value("TZOFFSETTO").and_then(parse_utc_offset);
    let std = vtz.subs_named("STANDARD").filter_map(offset).last();
    let dst = vtz.subs_named("DAYLIGHT").filter_map(offset).last();
    let std = std.or(dst)?;
    let dst_month = vtz
        .subs_named("DAYLIGHT")
        .filter_map(|c| c.value("RRULE"))
        .last()
        .and_then(|r| {
            r.split(';')
                .find_map(|kv| kv.strip_prefix("BYMONTH="))
                .and_then(|m| m.parse::<u32>().ok())
        });
    use chrono_tz::Tz::*;
    let zone = match (std / 60, dst.map(|d| d / 60), dst_month) {
        (0, Some(60), _) => Europe__London,
        (60, Some(120), _) => Europe__Berlin,
        (120, Some(180), Some(3)) => Europe__Helsinki,
        (120, Some(180), _) => Europe__Athens,
        (-300, Some(-240), _) => America__New_York,
        (-360, Some(-300), _) => America__Chicago,
        (-420, Some(-360), _) => America__Denver,
        (-480, Some(-420), _) => America__Los_Angeles,
        (-540, Some(-480), _) => America__Anchorage,
        (600, Some(660), _) => Australia__Sydney,
        (570, Some(630), _) => Australia__Adelaide,
        (720, Some(780), _) => Pacific__Auckland,
        (s, None, _) => return fixed_zone(s * 60),
        (s, Some(d), _) if s == d => return fixed_zone(s * 60),
        _ => return fixed_zone(std),
    };
    Some(zone)
}

/// `Etc/GMT±N` for whole-hour offsets (IANA's sign is inverted); None otherwise.
fn fixed_zone(offset_secs: i32) -> Option<chrono_tz::Tz> {
    if offset_secs % 3600 != 0 {
        return None;
    }
    let h = offset_secs / 3600;
    let name = match h {
        0 => "Etc/UTC".to_string(),
        h if h > 0 => format!("Etc/GMT-{h}"),
        h => format!("Etc/GMT+{}", -h),
    };
    chrono_tz::Tz::from_str(&name).ok()
}

/// Parses `+0100`, `-0530`, `+010000` into seconds east of UTC.
pub fn parse_utc_offset(v: &str) -> Option<i32> {
    let v = v.trim();
    let (sign, rest) = match v.as_bytes().first()? {
        b'+' => (1, &v[1..]),
        b'-' => (-1, &v[1..]),
        _ => (1, v),
    };
    if rest.len() < 4 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i32 = rest[0..2].parse().ok()?;
    let m: i32 = rest[2..4].parse().ok()?;
    let s: i32 = if rest.len() >= 6 {
        rest[4..6].parse().ok()?
    } else {
        0
    };
    Some(sign * (h * 3600 + m * 60 + s))
}

/// Most candidates one RRULE may generate per period before BYSETPOS and the other filters.
/// Real rules stay far below (every quarter hour of every weekday in a year is 35,040); a
/// product of long BYxxx lists makes the expander build tens of millions per period.
pub const MAX_RRULE_CANDIDATES: u64 = 100_000;
/// Most values in one BYxxx list (no legitimate list is longer than BYYEARDAY's 732).
pub const MAX_RRULE_LIST: usize = 800;

/// Checks that a recurrence rule (RFC 5545 3.3.10) is bounded enough to expand: no over-long
/// BYxxx list, and an upper bound of the candidates per period (days the period may hold when a
/// day-level BYxxx is given, times the BYHOUR, BYMINUTE and BYSECOND lists that expand rather
/// than filter) within [`MAX_RRULE_CANDIDATES`]. Returns why not.
pub fn check_rrule(value: &str) -> Result<(), String> {
    let mut freq = String::new();
    let mut day_level = false;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for part in value.split(';') {
        let Some((key, list)) = part.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_uppercase();
        if key == "FREQ" {
            freq = list.trim().to_ascii_uppercase();
            continue;
        }
        if !key.starts_with("BY") {
            continue;
        }
        let raw = list.split(',').count();
        if raw > MAX_RRULE_LIST {
            return Err(format!(
                "{key} lists {raw} values (at most {MAX_RRULE_LIST})"
            ));
        }
        let mut distinct: Vec<String> = list
            .split(',')
            .map(|v| v.trim().to_ascii_uppercase())
            .collect();
        distinct.sort();
        distinct.dedup();
        if matches!(
            key.as_str(),
            "BYMONTH" | "BYWEEKNO" | "BYYEARDAY" | "BYMONTHDAY" | "BYDAY"
        ) {
            day_level = true;
        }
        counts.insert(key, distinct.len().max(1) as u64);
    }
    // Rank of the frequency: a BYxxx of a finer unit expands, one of a coarser unit filters.
    let rank = match freq.as_str() {
        "YEARLY" => 6,
        "MONTHLY" => 5,
        "WEEKLY" => 4,
        "DAILY" => 3,
        "HOURLY" => 2,
        "MINUTELY" => 1,
        _ => 0,
    };
    let days = match (day_level, rank) {
        (false, _) => 1,
        (true, 6) => 366,
        (true, 5) => 31,
        (true, 4) => 7,
        _ => 1,
    };
    let mut estimate: u64 = days;
    for (key, unit_rank) in [("BYHOUR", 2), ("BYMINUTE", 1), ("BYSECOND", 0)] {
        if rank > unit_rank {
            estimate = estimate.saturating_mul(counts.get(key).copied().unwrap_or(1));
        }
    }
    if estimate > MAX_RRULE_CANDIDATES {
        return Err(format!(
            "it may generate {estimate} candidates per period (at most {MAX_RRULE_CANDIDATES})"
        ));
    }
    Ok(())
}

/// Most RDATE (or EXDATE) values one component may carry.
pub const MAX_DATE_LIST: usize = 10_000;

/// Checks every recurrence property of a component: its rules with [`check_rrule`], and no more
/// than [`MAX_DATE_LIST`] RDATE or EXDATE values. Returns why not.
pub fn check_recurrence(c: &Component) -> Result<(), String> {
    for rule in c.props_named("RRULE").chain(c.props_named("EXRULE")) {
        check_rrule(&rule.value)?;
    }
    for name in ["RDATE", "EXDATE"] {
        let n: usize = c
            .props_named(name)
            .map(|p| p.value.split(',').count())
            .sum();
        if n > MAX_DATE_LIST {
            return Err(format!("{n} {name} values (at most {MAX_DATE_LIST})"));
        }
    }
    Ok(())
}

/// The earliest `limit` values of the RDATE properties, as RDATE properties again: the expander
/// never sees more dates than instances it may return.
fn earliest_rdates(rdates: Vec<super::Prop>, limit: usize) -> Vec<super::Prop> {
    let total: usize = rdates.iter().map(|p| p.value.split(',').count()).sum();
    if total <= limit {
        return rdates;
    }
    // (sort key, property index, value): DATE and DATE-TIME forms sort as text; PERIODs by start.
    let mut values: Vec<(String, usize, String)> = Vec::with_capacity(total);
    for (i, p) in rdates.iter().enumerate() {
        for v in p.value.split(',') {
            let key = v.split('/').next().unwrap_or(v).trim().to_string();
            values.push((key, i, v.to_string()));
        }
    }
    values.sort();
    values.truncate(limit);
    let mut out: Vec<super::Prop> = Vec::new();
    for (i, p) in rdates.iter().enumerate() {
        let kept: Vec<&str> = values
            .iter()
            .filter(|(_, j, _)| *j == i)
            .map(|(_, _, v)| v.as_str())
            .collect();
        if !kept.is_empty() {
            let mut q = p.clone();
            q.value = kept.join(",");
            out.push(q);
        }
    }
    out
}

/// One occurrence of an object, in UTC seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub start: i64,
    pub end: i64,
    /// Index into the component slice given to [`expand`].
    pub component: usize,
}

/// Expands the components of one object (master and overrides of one UID) into occurrences,
/// at most `limit` of them. Components whose dates cannot be read are skipped.
pub fn expand(components: &[&Component], tzmap: &TzMap, limit: usize) -> Vec<Occurrence> {
    let mut text = String::with_capacity(1024);
    text.push_str("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd//expand//EN\r\n");
    for (idx, comp) in components.iter().enumerate() {
        let mut c = Component::new(&comp.name);
        let mut rdates = Vec::new();
        for p in &comp.props {
            match p.name.as_str() {
                "DTSTART" | "DTEND" | "DUE" | "RECURRENCE-ID" | "RDATE" | "EXDATE" => {
                    let mut p = p.clone();
                    if let Some(tzid) = p.param("TZID").map(str::to_string) {
                        match tzmap.resolve(&tzid) {
                            Some(tz) => p.set_param("TZID", tz.name()),
                            None => p.remove_param("TZID"),
                        }
                    }
                    if p.name == "RDATE" {
                        rdates.push(p);
                    } else {
                        c.props.push(p);
                    }
                }
                // A rule too complex to expand counts as its first instance only.
                "RRULE" if check_rrule(&p.value).is_err() => {}
                "RRULE" | "DURATION" | "UID" => c.props.push(p.clone()),
                _ => {}
            }
        }
        c.props.extend(earliest_rdates(rdates, limit));
        c.set("X-IMIPD-IDX", idx.to_string());
        c.write(&mut text);
    }
    text.push_str("END:VCALENDAR\r\n");

    let ical = match calcard::Parser::new(&text).entry() {
        calcard::Entry::ICalendar(ical) => ical,
        _ => return Vec::new(),
    };
    let expanded = ical.expand_dates(CTz::UTC, limit);
    let mut out = Vec::with_capacity(expanded.events.len());
    for ev in expanded.events {
        let Some(comp) = ical.components.get(ev.comp_id as usize) else {
            continue;
        };
        let idx = comp
            .entries
            .iter()
            .find_map(|e| match (&e.name, e.values.first()) {
                (
                    calcard::icalendar::ICalendarProperty::Other(n),
                    Some(calcard::icalendar::ICalendarValue::Text(v)),
                ) if n.eq_ignore_ascii_case("X-IMIPD-IDX") => v.parse::<usize>().ok(),
                _ => None,
            });
        let Some(idx) = idx else { continue };
        let (start, mut end) = ev.timestamps();
        if end < start {
            end = start;
        }
        out.push(Occurrence {
            start,
            end,
            component: idx,
        });
    }
    add_unsynchronized_dtstart(components, tzmap, &mut out);
    out.sort_by_key(|o| (o.start, o.component));
    out
}

/// RFC 5545 3.8.5.3: DTSTART is always the first instance of the recurrence set, even when the
/// rule does not produce it (OBM's yearly October rule starting in January), and with COUNT it
/// counts as one of them. calcard leaves such a DTSTART out; put it back.
fn add_unsynchronized_dtstart(components: &[&Component], tzmap: &TzMap, out: &mut Vec<Occurrence>) {
    for (idx, comp) in components.iter().enumerate() {
        let Some(rule) = comp.prop("RRULE") else {
            continue;
        };
        if comp.prop("RECURRENCE-ID").is_some() || check_rrule(&rule.value).is_err() {
            continue;
        }
        let Some(dtstart) = comp.prop("DTSTART") else {
            continue;
        };
        let Some(start) = tzmap.prop_utc(dtstart) else {
            continue;
        };
        if out.iter().any(|o| o.component == idx && o.start == start) {
            continue;
        }
        let at_start = |p: &super::Prop| {
            p.value.split(',').any(|v| {
                let mut one = p.clone();
                one.value = v.to_string();
                tzmap.prop_utc(&one) == Some(start)
            })
        };
        let excluded = comp.props_named("EXDATE").any(at_start);
        let overridden = components
            .iter()
            .filter_map(|c| c.prop("RECURRENCE-ID"))
            .any(at_start);
        if excluded || overridden {
            continue;
        }
        let end = comp
            .prop("DTEND")
            .or_else(|| comp.prop("DUE"))
            .and_then(|p| tzmap.prop_utc(p))
            .or_else(|| {
                comp.value("DURATION")
                    .and_then(parse_duration)
                    .map(|d| start + d)
            })
            .unwrap_or_else(|| {
                let is_date = parse_date_value(&dtstart.value).is_some_and(|d| d.is_date);
                if is_date {
                    start + 86_400
                } else {
                    start
                }
            })
            .max(start);
        let has_count = rule.value.split(';').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.trim().eq_ignore_ascii_case("COUNT"))
        });
        if has_count {
            // DTSTART is one of the COUNT instances: the rule's last one goes.
            if let Some(last) = out
                .iter()
                .enumerate()
                .filter(|(_, o)| o.component == idx)
                .max_by_key(|(_, o)| o.start)
                .map(|(i, _)| i)
            {
                out.remove(last);
            }
        }
        out.push(Occurrence {
            start,
            end,
            component: idx,
        });
    }
}

/// Parses an RFC 5545 DURATION (`P1W`, `-PT15M`, `P1DT2H`) into seconds.
pub fn parse_duration(v: &str) -> Option<i64> {
    let v = v.trim();
    let (sign, rest) = match v.as_bytes().first()? {
        b'-' => (-1, &v[1..]),
        b'+' => (1, &v[1..]),
        _ => (1, v),
    };
    let rest = rest.strip_prefix(['P', 'p'])?;
    let mut total: i64 = 0;
    let mut num: i64 = 0;
    let mut digits = false;
    let mut in_time = false;
    for ch in rest.chars() {
        match ch.to_ascii_uppercase() {
            'T' => in_time = true,
            d @ '0'..='9' => {
                num = num
                    .checked_mul(10)?
                    .checked_add(i64::from(d as u8 - b'0'))?;
                digits = true;
            }
            unit => {
                if !digits {
                    return None;
                }
                let secs = match (unit, in_time) {
                    ('W', false) => 604_800,
                    ('D', false) => 86_400,
                    ('H', true) => 3_600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
                total = total.checked_add(num.checked_mul(secs)?)?;
                num = 0;
                digits = false;
            }
        }
    }
    if digits {
        return None;
    }
    Some(sign * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_cdo_names_resolve() {
        let m = TzMap::default();
        assert_eq!(
            m.resolve("W. Europe Standard Time"),
            Some(chrono_tz::Europe::Berlin)
        );
        assert!(m.resolve("(GMT+01.00) Sarajevo/Warsaw/Zagreb").is_some());
        assert_eq!(m.resolve("\"Asia/Tokyo\""), Some(chrono_tz::Asia::Tokyo));
    }

    #[test]
    fn custom_vtimezone_falls_back_to_its_offsets() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:My Zone\r\nBEGIN:STANDARD\r\nDTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\nEND:VCALENDAR\r\n").unwrap();
        let m = TzMap::new(&[&cal[0].subs[0]]);
        assert_eq!(m.resolve("My Zone"), Some(chrono_tz::Europe::Berlin));
    }

    #[test]
    fn rrule_bombs_are_refused() {
        assert!(check_rrule("FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=9,14").is_ok());
        assert!(check_rrule("FREQ=YEARLY;BYYEARDAY=1,100,200").is_ok());
        assert!(check_rrule(&format!("FREQ=DAILY;BYDAY={}", vec!["MO"; 900].join(","))).is_err());
        let all = |n: i32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let bomb = format!(
            "FREQ=YEARLY;BYDAY=MO;BYHOUR={};BYMINUTE={}",
            all(24),
            all(60)
        );
        assert!(check_rrule(&bomb).is_err());
        // Every second of one day a year is many, but bounded.
        let day = format!(
            "FREQ=YEARLY;BYHOUR={};BYMINUTE={};BYSECOND={}",
            all(24),
            all(60),
            all(60)
        );
        assert!(check_rrule(&day).is_ok());
    }

    #[test]
    fn too_complex_rule_expands_to_its_first_instance() {
        let all = |n: i32| (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let text = format!("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260101T000000Z\r\nDURATION:PT1S\r\nRRULE:FREQ=YEARLY;BYDAY=MO;BYHOUR={};BYMINUTE={}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n", all(24), all(60));
        let cal = super::super::parse(&text).unwrap();
        let occ = expand(&[&cal[0].subs[0]], &TzMap::default(), 100);
        assert_eq!(occ.len(), 1);
    }

    #[test]
    fn only_the_earliest_rdates_are_expanded() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260101T000000Z\r\nDURATION:PT1H\r\nRDATE:20260301T000000Z,20260201T000000Z\r\nRDATE:20260105T000000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").unwrap();
        let occ = expand(&[&cal[0].subs[0]], &TzMap::default(), 2);
        let starts: Vec<String> = occ.iter().map(|o| format_utc(o.start)).collect();
        assert!(
            !starts.iter().any(|s| s == "20260301T000000Z"),
            "{starts:?}"
        );
        assert!(starts.iter().any(|s| s == "20260105T000000Z"), "{starts:?}");
    }

    #[test]
    fn cdo_display_name_uses_the_vtimezone_rules() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:(GMT-08.00) Pacific Time (US & Canada)/Tijuana\r\nBEGIN:STANDARD\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:-0700\r\nTZOFFSETTO:-0800\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:-0800\r\nTZOFFSETTO:-0700\r\nRRULE:FREQ=YEARLY;BYMONTH=4;BYDAY=1SU\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\nEND:VCALENDAR\r\n").unwrap();
        let m = TzMap::new(&[&cal[0].subs[0]]);
        let p = super::super::Prop {
            name: "DTSTART".into(),
            params: vec![super::super::Param {
                name: "TZID".into(),
                values: vec!["(GMT-08.00) Pacific Time (US & Canada)/Tijuana".into()],
            }],
            value: "20050519T170000".into(),
        };
        // 17:00 PDT is midnight UTC.
        assert_eq!(
            m.prop_utc(&p).map(format_utc).as_deref(),
            Some("20050520T000000Z")
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("PT1H30M"), Some(5400));
        assert_eq!(parse_duration("-PT15M"), Some(-900));
        assert_eq!(parse_duration("P1W"), Some(604_800));
        assert_eq!(parse_duration("P1DT1S"), Some(86_401));
        assert_eq!(parse_duration("PT"), Some(0));
        assert_eq!(parse_duration("P1H"), None);
        assert_eq!(parse_duration("1D"), None);
    }

    #[test]
    fn unsynchronized_dtstart_is_the_first_instance() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260303T090000Z\r\nDURATION:PT1H\r\nRRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").unwrap();
        let occ = expand(&[&cal[0].subs[0]], &TzMap::default(), 100);
        let got: Vec<(String, i64)> = occ
            .iter()
            .map(|o| (format_utc(o.start), o.end - o.start))
            .collect();
        assert_eq!(
            got,
            [
                ("20260303T090000Z".to_string(), 3600),
                ("20260309T090000Z".to_string(), 3600),
                ("20260316T090000Z".to_string(), 3600)
            ]
        );
    }

    #[test]
    fn recurrence_is_capped() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260101T000000Z\r\nDURATION:PT1S\r\nRRULE:FREQ=SECONDLY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").unwrap();
        let occ = expand(&[&cal[0].subs[0]], &TzMap::default(), 100);
        assert_eq!(occ.len(), 100);
    }

    #[test]
    fn override_replaces_its_occurrence_whatever_the_sequence() {
        let cal = super::super::parse("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:x\r\nSEQUENCE:0\r\nDTSTART:20260105T100000Z\r\nDTEND:20260105T110000Z\r\nRRULE:FREQ=DAILY;COUNT=3\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:x\r\nSEQUENCE:2\r\nRECURRENCE-ID:20260106T100000Z\r\nDTSTART:20260106T140000Z\r\nDTEND:20260106T150000Z\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n").unwrap();
        let comps: Vec<&Component> = cal[0].subs.iter().collect();
        let occ = expand(&comps, &TzMap::default(), 100);
        assert_eq!(occ.len(), 3, "{occ:?}");
        assert!(occ.iter().any(|o| o.component == 1));
    }
}

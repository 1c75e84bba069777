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
                let resolved = resolve_by_name(&id).or_else(|| resolve_by_vtimezone(tz));
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
                    c.props.push(p);
                }
                "RRULE" | "DURATION" | "UID" => c.props.push(p.clone()),
                _ => {}
            }
        }
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
    out.sort_by_key(|o| (o.start, o.component));
    out
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

//! Every real-world message of the shared corpus (see its QUIRKS.md) through
//! `imipd process --trust-sender`, each with a fresh data dir, against the outcome table in
//! `tests/corpus_expected.tsv`. The corpus lives beside the repository and is never copied in.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "notice: no corpus at {}; corpus tests skipped",
            dir.display()
        );
        None
    }
}

fn eml_files(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            eml_files(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "eml") {
            if let Ok(rel) = p.strip_prefix(base) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
}

/// One row of the table: what one recipient's line must say.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    recipient: String,
    method: String,
    uid_prefix: String,
    outcome: String,
}

impl Row {
    fn of(o: &Outcome) -> Row {
        Row {
            recipient: o.recipient.trim_start_matches("mailto:").to_string(),
            method: if o.method.is_empty() {
                "-".into()
            } else {
                o.method.clone()
            },
            uid_prefix: if o.uid.is_empty() {
                "-".into()
            } else {
                o.uid.chars().take(24).collect()
            },
            outcome: o.outcome.clone(),
        }
    }
}

#[derive(Default)]
struct Expected {
    /// Rows of the default run (no --recipient).
    default: Vec<Row>,
    /// Rows run with an explicit --recipient.
    explicit: Vec<Row>,
}

fn load_table() -> BTreeMap<String, Expected> {
    let text = include_str!("corpus_expected.tsv");
    let mut table: BTreeMap<String, Expected> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(
            cols.len() == 5 || cols.len() == 6,
            "corpus_expected.tsv line {}: want 5 or 6 tab-separated columns",
            n + 1
        );
        let row = Row {
            recipient: cols[1].to_string(),
            method: cols[2].to_string(),
            uid_prefix: cols[3].to_string(),
            outcome: cols[4].to_string(),
        };
        let e = table.entry(cols[0].to_string()).or_default();
        match cols.get(5) {
            Some(&"explicit") => e.explicit.push(row),
            None => {
                if row.outcome != "none" {
                    e.default.push(row);
                }
            }
            Some(other) => panic!("line {}: unknown mode {other:?}", n + 1),
        }
    }
    table
}

/// RFC 6047 over real clients' messages: each corpus message gives exactly the outcomes in the
/// table, and no run panics or hangs.
#[test]
fn corpus_messages_give_the_expected_outcomes() {
    let Some(dir) = corpus_dir() else { return };
    let mut files = Vec::new();
    eml_files(&dir, &dir, &mut files);
    files.sort();
    let table = load_table();
    let mut failures = Vec::new();
    for f in &files {
        let Some(exp) = table.get(f) else {
            failures.push(format!("{f}: not in tests/corpus_expected.tsv"));
            continue;
        };
        let raw = std::fs::read(dir.join(f)).expect("read corpus file");
        let env = Env::new();
        let mut got: Vec<Row> = env
            .process_with(&raw, &[], true)
            .iter()
            .map(Row::of)
            .collect();
        got.sort();
        let mut want = exp.default.clone();
        want.sort();
        if got != want {
            failures.push(format!("{f}:\n   want {want:?}\n   got  {got:?}"));
        }
        for row in &exp.explicit {
            let env = Env::new();
            let got: Vec<Row> = env
                .process_with(&raw, &[&row.recipient], true)
                .iter()
                .map(Row::of)
                .collect();
            if got != vec![row.clone()] {
                failures.push(format!(
                    "{f} --recipient {}:\n   want {row:?}\n   got  {got:?}",
                    row.recipient
                ));
            }
        }
    }
    for f in table.keys() {
        if !files.contains(f) {
            eprintln!("notice: {f} is in the table but not in the corpus");
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// RFC 5546 3.2.3 on real clients' REPLYs (Outlook 2010 without ORGANIZER, SOGo's broken QP
/// fold, a mangled Lightning part, iOS, Outlook for Mac, BlueMind): once the organizer holds
/// the event with that attendee, each REPLY applies and sets the attendee's PARTSTAT.
#[test]
fn corpus_replies_apply_to_the_organizers_copy() {
    let Some(dir) = corpus_dir() else { return };
    let mut files = Vec::new();
    eml_files(&dir, &dir, &mut files);
    files.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for f in files.iter().filter(|f| f.contains("REPLY")) {
        let raw = std::fs::read(dir.join(f)).expect("read corpus file");
        let ex = imipd::extract::extract(&raw);
        let Some(inc) = ex.objects.first() else {
            failures.push(format!("{f}: no calendar object found"));
            continue;
        };
        let Some(from) = ex.from.clone() else {
            continue; // not attributable; covered by the outcome table
        };
        // The REPLY's ORGANIZER when it names one, else (Outlook 2010) the To address.
        let named = inc
            .components
            .iter()
            .find_map(|c| c.prop("ORGANIZER"))
            .map(|o| imipd::ical::norm_addr(&o.value));
        let Some(organizer) = named.or_else(|| ex.recipients.first().cloned()) else {
            continue;
        };
        let has_attendee = inc.components.iter().any(|c| c.prop("ATTENDEE").is_some());
        // A REPLY relayed under another sender (thunderbird-lightning/05 via OBM) is not the
        // attendee's own and stays refused.
        let from_attendee = inc.components.iter().any(|c| {
            c.props_named("ATTENDEE").any(|a| {
                imipd::ical::norm_addr(&a.value) == from
                    || a.param("SENT-BY").map(imipd::ical::norm_addr).as_deref() == Some(&from)
            })
        });
        // The organizer's copy: the reply's components, with the organizer and the replying
        // attendee still waiting for an answer, stamped before the reply.
        let mut comps = Vec::new();
        let mut replier_partstat = None;
        for c in &inc.components {
            let mut c = c.clone();
            c.remove("ORGANIZER");
            c.props.push(imipd::ical::Prop::new(
                "ORGANIZER",
                imipd::ical::mailto(&organizer),
            ));
            for a in c.props.iter_mut().filter(|p| p.name == "ATTENDEE") {
                if replier_partstat.is_none() {
                    replier_partstat = a.param("PARTSTAT").map(str::to_ascii_uppercase);
                }
                a.set_param("PARTSTAT", "NEEDS-ACTION");
            }
            c.set("DTSTAMP", "19990101T000000Z");
            comps.push(c);
        }
        let mut cal = imipd::ical::Component::new("VCALENDAR");
        cal.props.push(imipd::ical::Prop::new("VERSION", "2.0"));
        cal.subs.extend(inc.timezones.iter().cloned());
        cal.subs.extend(comps);
        let env = Env::new();
        env.import(&organizer, &cal.to_ical());
        let outs = env.process_with(&raw, &[&organizer], true);
        // A skeleton REPLY without ATTENDEE (synthetic-testdata/16) answers for nobody.
        let want = if has_attendee && from_attendee {
            "applied"
        } else {
            "rejected"
        };
        let ok = outs.len() == 1 && outs[0].outcome == want;
        if !ok {
            failures.push(format!("{f} (from {from} to {organizer}): {outs:#?}"));
            continue;
        }
        let stored = env.export(&organizer, &inc.uid);
        if want == "rejected" {
            checked += 1;
            continue;
        }
        if let Some(ps) = &replier_partstat {
            if !stored.contains(&format!("PARTSTAT={ps}")) {
                failures.push(format!("{f}: PARTSTAT={ps} not recorded:\n{stored}"));
            }
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} REPLY failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 0, "no corpus REPLY was checked");
    eprintln!("{checked} corpus REPLYs checked");
}

/// The triage that lets ordinary mail pass without a parse never takes a corpus message for
/// ordinary, nor any message in which the full reading finds a calendar (the corpus, the
/// fuzzing regressions and seeds), unless the full reading flags it as ambiguous.
#[test]
fn triage_never_takes_a_calendar_message_for_ordinary_mail() {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut corpus = 0;
    if let Some(dir) = corpus_dir() {
        let mut rel = Vec::new();
        eml_files(&dir, &dir, &mut rel);
        files.extend(rel.iter().map(|r| dir.join(r)));
        corpus = files.len();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for sub in ["tests/fuzz_regressions", "fuzz/seeds"] {
        let mut stack = vec![root.join(sub)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
    }
    let mut ordinary = 0;
    for (i, f) in files.iter().enumerate() {
        let raw = std::fs::read(f).expect("read");
        let triaged = imipd::pipeline::triage::certainly_no_calendar(&raw);
        if i < corpus {
            assert!(
                !triaged,
                "{}: a corpus message taken for ordinary",
                f.display()
            );
        }
        if triaged {
            ordinary += 1;
            let (bytes, bare) = imipd::message::normalize_line_ends(&raw);
            if imipd::message::Parsed::new(&bytes, bare)
                .ambiguity
                .is_some()
            {
                continue; // proves nothing: no calendar of it could be applied
            }
            let ex = imipd::extract::extract(&raw);
            assert!(
                ex.objects.is_empty() && ex.refused.is_empty(),
                "{}: triage passed a message with calendars",
                f.display()
            );
        }
    }
    eprintln!("{} files, {ordinary} taken for ordinary mail", files.len());
}

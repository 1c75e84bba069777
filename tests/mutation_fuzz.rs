//! A bounded, deterministic mutation fuzzer that runs in CI: corpus messages and synthetic
//! calendars are mutated (bit flips, truncation, splices, repeated and nested components,
//! hostile RRULEs) and pushed through extract, the iTIP engine and free/busy expansion, in
//! process. No input may panic. (The cargo-fuzz targets in `fuzz/` explore further.)

use imipd::itip::{busy_periods, decide, Context, Decision};
use std::time::{Duration, Instant};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const FRAGMENTS: &[&str] = &[
    "BEGIN:VEVENT\r\n",
    "END:VEVENT\r\n",
    "BEGIN:VCALENDAR\r\n",
    "END:VCALENDAR\r\n",
    "RRULE:FREQ=SECONDLY;BYSECOND=1,2,3,4,5,6,7,8,9,10\r\n",
    "RRULE:FREQ=YEARLY;BYMONTH=1,2,3,4,5,6,7,8,9,10,11,12;BYMONTHDAY=-1,1,2,3;BYHOUR=1,2,3,4,5\r\n",
    "RECURRENCE-ID;RANGE=THISANDFUTURE:20260101T000000Z\r\n",
    "DTSTART;TZID=\"(GMT+01.00) Sarajevo/Warsaw/Zagreb\":20260101T100000\r\n",
    "DTSTART;VALUE=DATE:20260101\r\n",
    "DTEND:1\r\n",
    "DURATION:P99999W\r\n",
    "EXDATE:20260102T000000Z,20260103T000000Z\r\n",
    "ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-TO=\"mailto:x@y\":mailto:bob@example.org\r\n",
    "ORGANIZER;SENT-BY=\"mailto:evil@example.org\":mailto:alice@example.com\r\n",
    "SEQUENCE:99999999999999999999\r\n",
    "DTSTAMP:99991231T235959Z\r\n",
    "METHOD:CANCEL\r\n",
    "METHOD:REPLY\r\n",
    "BEGIN:VTIMEZONE\r\nTZID:X\r\nBEGIN:STANDARD\r\nTZOFFSETTO:+9999\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n",
    " folded continuation\r\n",
    "=\r\n",
    "\r\n\r\n",
    "--b1\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n",
    "Content-Transfer-Encoding: base64\r\n",
    "\u{0}\u{ff}\r",
];

fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for d in rd.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    if f.path().extension().is_some_and(|e| e == "eml") {
                        if let Ok(b) = std::fs::read(f.path()) {
                            out.push(b);
                        }
                    }
                }
            }
        }
    } else {
        eprintln!("NOTICE: {dir} absent; mutating synthetic seeds only");
    }
    out.push(
        b"From: alice@example.com\r\nTo: bob@example.org\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n\
BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:seed\r\nDTSTAMP:20260101T000000Z\r\n\
DTSTART:20260101T100000Z\r\nDTEND:20260101T110000Z\r\nRRULE:FREQ=DAILY;COUNT=5\r\n\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
            .to_vec(),
    );
    out
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(6) {
            0 if !m.is_empty() => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 if !m.is_empty() => {
                let cut = rng.below(m.len());
                m.truncate(cut);
            }
            2 => {
                let f = FRAGMENTS[rng.below(FRAGMENTS.len())].as_bytes();
                let at = rng.below(m.len() + 1);
                for _ in 0..1 + rng.below(3) {
                    m.splice(at..at, f.iter().copied());
                }
            }
            3 if m.len() > 10 => {
                let a = rng.below(m.len());
                let b = (a + rng.below(400)).min(m.len());
                let chunk = m[a..b].to_vec();
                let at = rng.below(m.len());
                m.splice(at..at, chunk);
            }
            4 => {
                let text = String::from_utf8_lossy(&m).replace("\r\n", "\r");
                m = text.into_bytes();
            }
            _ => {
                let depth = rng.below(40);
                let at = rng.below(m.len() + 1);
                let nest: Vec<u8> = "BEGIN:VALARM\r\n".repeat(depth).into_bytes();
                m.splice(at..at, nest);
            }
        }
        if m.len() > 2_000_000 {
            m.truncate(2_000_000);
        }
    }
    m
}

/// Robustness: mutated real-world and hostile inputs never panic extract, decide or expansion.
#[test]
fn mutated_inputs_never_panic() {
    let seeds = corpus();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while n < 20_000 && Instant::now() < deadline {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let ex = imipd::extract::extract(&input);
        let proven: Vec<String> = ex.from.iter().cloned().collect();
        for inc in ex.objects.iter().take(4) {
            for rcpt in ex.recipients.iter().take(2) {
                let ctx = Context {
                    recipient: rcpt,
                    proven: &proven,
                    delegates: &Default::default(),
                    delete_on_cancel: false,
                    now: 0,
                };
                if let Decision::Applied {
                    object: Some(obj), ..
                } = decide(None, inc, &ctx)
                {
                    let _ = decide(Some(&obj), inc, &ctx);
                    let _ = busy_periods(&obj, rcpt, 200);
                }
            }
        }
        n += 1;
    }
    eprintln!("{n} mutated inputs processed");
    assert!(n >= 100, "too few iterations in the time bound: {n}");
}

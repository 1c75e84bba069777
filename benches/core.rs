//! Core benchmarks: extract+parse of the corpus, decide+commit of a REPLY and of a REQUEST
//! update against stores of 10k, 100k and 1M events, and free/busy over 30 days.
//!
//! `cargo bench --bench core` (all sizes), or `IMIPD_BENCH_SIZES=10000 cargo bench --bench core`.
//! Events are spread over users of 1,000 events each across two years, as a site's
//! calendars would be; RSS after loading each store is printed.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imipd::config::Config;
use imipd::extract::{self, Extracted, Found};
use imipd::ical::{self, Component};
use imipd::itip::{self, Incoming, Method, StoredObject};
use imipd::pipeline::Pipeline;
use imipd::store::{Change, Commit, Expect, JournalEntry, Sled, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

// The daemon's allocator (src/main.rs), so that times and RSS are the daemon's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS_PER_USER: usize = 1000;
const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        eprintln!("NOTICE: {dir} absent; corpus benchmark skipped");
        return out;
    };
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
    out
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn event(
    uid: &str,
    organizer: &str,
    attendee: &str,
    start: i64,
    seq: i64,
    stamp: i64,
) -> Component {
    let text = format!(
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:{uid}\r\nSEQUENCE:{seq}\r\nDTSTAMP:{}\r\nDTSTART:{}\r\nDTEND:{}\r\n\
SUMMARY:Meeting {uid}\r\nORGANIZER:mailto:{organizer}\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:{organizer}\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{attendee}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        ical::time::format_utc(stamp),
        ical::time::format_utc(start),
        ical::time::format_utc(start + 3600)
    );
    ical::parse(&text).expect("event").remove(0).subs.remove(0)
}

fn user(n: usize) -> String {
    format!("user{n}@example.org")
}

/// Fills a store with `n` events spread over users of EVENTS_PER_USER events each, as
/// `imipd import` does: `Store::commit_all` on 256 objects of one user at a time.
fn populate(store: &Sled, n: usize) {
    let entry = JournalEntry {
        ts: 0,
        user: String::new(),
        message_id: String::new(),
        method: "IMPORT".into(),
        component: "VEVENT".into(),
        uid: String::new(),
        outcome: "applied".into(),
        reason: "bench".into(),
        count: 1,
    };
    let mut i = 0;
    while i < n {
        let u = user(i / EVENTS_PER_USER);
        // Up to 256 events, all of user u.
        let end = n
            .min((i / EVENTS_PER_USER + 1) * EVENTS_PER_USER)
            .min(i + 256);
        let objs: Vec<(StoredObject, Vec<itip::Busy>)> = (i..end)
            .map(|i| {
                let uid = format!("ev{i}@example.org");
                // Two years, one event every ~17 hours per user.
                let start = T0 + ((i % EVENTS_PER_USER) as i64) * 63_000;
                let obj = StoredObject {
                    uid: uid.clone(),
                    kind: "VEVENT".into(),
                    components: vec![event(&uid, &u, "guest@example.net", start, 0, T0)],
                    ..Default::default()
                };
                let busy = itip::busy_periods(&obj, &u, 2000);
                (obj, busy)
            })
            .collect();
        let commits: Vec<Commit> = objs
            .iter()
            .map(|(obj, busy)| Commit {
                user: &u,
                uid: &obj.uid,
                change: Change::Put(obj, busy),
                expect: Expect::Any,
                expect_calendar: None,
                processed_key: None,
                journal: &entry,
                proposal: None,
                effects: &[],
            })
            .collect();
        store.commit_all(&commits).expect("commit");
        i = end;
    }
    store.flush().expect("flush");
}

fn extracted(inc: Incoming, proven: String, message_id: String) -> Extracted {
    Extracted {
        message_id: Some(message_id),
        objects: vec![Found {
            incoming: inc,
            proven: vec![proven],
            size: 512,
        }],
        ..Default::default()
    }
}

fn bench_extract(c: &mut Criterion) {
    let msgs = corpus();
    if msgs.is_empty() {
        return;
    }
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function(format!("corpus_{}_messages", msgs.len()), |b| {
        b.iter(|| {
            let mut objects = 0;
            for m in &msgs {
                objects += extract::extract(m).objects.len();
            }
            objects
        })
    });
    g.finish();
}

fn bench_store(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("IMIPD_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let counter = AtomicU64::new(1);
    for n in sizes {
        let dir = tempfile::TempDir::new().expect("tempdir");
        // IMIPD_BENCH_CACHE_MB: the page cache, as `[store] cache_mb` sets it.
        let cache_mb = std::env::var("IMIPD_BENCH_CACHE_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(imipd::store::DEFAULT_CACHE_MB);
        let store = Sled::open_with_cache(dir.path(), cache_mb).expect("store");
        let t = std::time::Instant::now();
        populate(&store, n);
        eprintln!(
            "store with {n} events ({cache_mb} MiB cache): loaded in {:.1} s, RSS {:.0} MiB, on disk {:.0} MiB",
            t.elapsed().as_secs_f64(),
            rss_mib(),
            dir_size(dir.path()) as f64 / 1048576.0
        );
        let store: Arc<dyn Store> = Arc::new(store);
        let cfg = Arc::new(Config::default());
        let pipeline = Pipeline::new(store.clone(), cfg);
        let users = n.div_ceil(EVENTS_PER_USER);
        let mut g = c.benchmark_group(format!("store_{n}"));

        // A REPLY from the attendee to the organizer's copy.
        g.bench_function("decide_commit_reply", |b| {
            b.iter_batched(
                || {
                    let k = counter.fetch_add(1, Ordering::Relaxed) as usize;
                    let i = (k * 7919) % n;
                    let u = user(i / EVENTS_PER_USER);
                    let uid = format!("ev{i}@example.org");
                    let mut comp = event(&uid, &u, "guest@example.net", T0, 0, T0 + k as i64);
                    comp.props
                        .retain(|p| !(p.name == "ATTENDEE" && p.value.contains(&u)));
                    comp.remove("RSVP");
                    if let Some(a) = comp.props.iter_mut().find(|p| p.name == "ATTENDEE") {
                        a.set_param("PARTSTAT", if k % 2 == 0 { "ACCEPTED" } else { "DECLINED" });
                    }
                    let inc = Incoming {
                        method: Method::Reply,
                        kind: "VEVENT".into(),
                        uid,
                        components: vec![comp],
                        timezones: Default::default(),
                    };
                    let msgid = format!("r{k}@example.net");
                    (u, extracted(inc, "guest@example.net".into(), msgid))
                },
                |(u, ex)| {
                    let v = pipeline.process_extracted(&[u], ex).expect("process");
                    assert_eq!(
                        v.outcomes[0].outcome.as_str(),
                        "applied",
                        "{:?}",
                        v.outcomes
                    );
                },
                BatchSize::SmallInput,
            )
        });

        // A REQUEST update (new SEQUENCE, moved by an hour) to an attendee's copy.
        g.bench_function("decide_commit_request_update", |b| {
            b.iter_batched(
                || {
                    let k = counter.fetch_add(1, Ordering::Relaxed) as usize;
                    let i = (k * 104_729) % n;
                    let u = user(i / EVENTS_PER_USER);
                    let uid = format!("ev{i}@example.org");
                    // The organizer (user) updates; deliver to the organizer's own copy as
                    // PUBLISH so that the same stored objects serve as the target.
                    let start = T0 + ((i % EVENTS_PER_USER) as i64) * 63_000 + 3600;
                    let comp = event(
                        &uid,
                        &u,
                        "guest@example.net",
                        start,
                        k as i64,
                        T0 + k as i64,
                    );
                    let inc = Incoming {
                        method: Method::Publish,
                        kind: "VEVENT".into(),
                        uid,
                        components: vec![comp],
                        timezones: Default::default(),
                    };
                    let msgid = format!("q{k}@example.org");
                    (u.clone(), extracted(inc, u, msgid))
                },
                |(u, ex)| {
                    let v = pipeline.process_extracted(&[u], ex).expect("process");
                    assert_eq!(
                        v.outcomes[0].outcome.as_str(),
                        "applied",
                        "{:?}",
                        v.outcomes
                    );
                },
                BatchSize::SmallInput,
            )
        });

        g.bench_function("freebusy_30_days", |b| {
            let mut k = 0usize;
            b.iter(|| {
                k += 1;
                let u = user(k % users);
                let from = T0 + 86400 * ((k % 300) as i64);
                let busy = store.busy(&u, from, from + 30 * 86400).expect("busy");
                itip::merge_busy(busy, from, from + 30 * 86400).len()
            })
        });
        g.finish();
        drop(pipeline);
        drop(store);
    }
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata();
            match m {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(5)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench_extract, bench_store
}
criterion_main!(benches);

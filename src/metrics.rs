//! Prometheus metrics: counters the front doors bump where they get the pipeline's verdict,
//! served in the text format at `GET /metrics` on `[metrics] listen` (unset: no endpoint; the
//! counters cost a few atomic increments either way).
//!
//! - `imipd_messages_total{door,result}`: one count per message (an LMTP transaction, a milter
//!   message, an iSchedule POST, an `imipd process` run). `door` is milter | lmtp | ischedule |
//!   cli (`process` through the daemon's control socket counts in the daemon); `result` is the
//!   message's strongest outcome, in this order: tempfail (the store failed), applied (some
//!   object was applied for some recipient), rejected, ignored, no-calendar.
//! - `imipd_decisions_total{method,outcome}`: one count per (recipient, object) decision.
//! - `imipd_proof_total{method,result}`: the Authentication-Results items of each mail message
//!   (dkim, dmarc, smime, pgp, ...), by result (pass, fail, none, ...).
//! - `imipd_store_commit_seconds` (histogram) and `imipd_store_commits_total{result}`: making a
//!   message's store writes durable.
//! - `imipd_store_conflicts_total`: commits that found the object or calendar changed since
//!   the decision read it (another writer came first), each followed by a re-read and re-decide.
//! - `imipd_dns_lookups_total{result}`: DKIM and DMARC TXT lookups, `cache` or `query`.
//! - `imipd_effects_total{effect,outcome}`: attempts at effects (imip, ischedule, plugin) by
//!   outcome: delivered, retrying, failed (set aside).
//! - `imipd_effects_pending` and `imipd_effects_failed` (gauges): effects waiting in the store,
//!   and effects set aside for the administrator, as the effects runner last counted them.
//!
//! Label values come from fixed lists: a value outside them is counted as "other", so no input
//! can grow the number of series.

use crate::pipeline::Verdict;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    door: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProofLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EffectLabels {
    effect: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    proof: Family<ProofLabels, Counter>,
    commits: Family<ResultLabel, Counter>,
    commit_seconds: Histogram,
    conflicts: Counter,
    dns: Family<ResultLabel, Counter>,
    effects: Family<EffectLabels, Counter>,
    effects_pending: Gauge,
    effects_failed: Gauge,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::default();
        let messages = Family::<MessageLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let proof = Family::<ProofLabels, Counter>::default();
        let commits = Family::<ResultLabel, Counter>::default();
        let dns = Family::<ResultLabel, Counter>::default();
        let effects = Family::<EffectLabels, Counter>::default();
        let effects_pending = Gauge::default();
        let effects_failed = Gauge::default();
        let conflicts = Counter::default();
        // 100 µs to about 6.5 s.
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 9));
        registry.register(
            "imipd_messages",
            "Messages by front door and strongest outcome",
            messages.clone(),
        );
        registry.register(
            "imipd_decisions",
            "iTIP decisions by method and outcome, one per recipient and object",
            decisions.clone(),
        );
        registry.register(
            "imipd_proof",
            "Sender proof results by method (Authentication-Results items)",
            proof.clone(),
        );
        registry.register(
            "imipd_store_commits",
            "Store commits (making a message's writes durable) by result",
            commits.clone(),
        );
        registry.register(
            "imipd_store_commit_seconds",
            "Time to commit a message's store writes",
            commit_seconds.clone(),
        );
        registry.register(
            "imipd_store_conflicts",
            "Commits that found the object or calendar changed since it was read, then re-decided",
            conflicts.clone(),
        );
        registry.register(
            "imipd_dns_lookups",
            "DNS TXT lookups for DKIM and DMARC: result=cache (answered from the cache) or query",
            dns.clone(),
        );
        registry.register(
            "imipd_effects",
            "Attempts at effects (iMIP replies, iSchedule relays, plugin work) by outcome",
            effects.clone(),
        );
        registry.register(
            "imipd_effects_pending",
            "Effects waiting in the store to be carried out",
            effects_pending.clone(),
        );
        registry.register(
            "imipd_effects_failed",
            "Effects set aside after a permanent failure (kept, never retried)",
            effects_failed.clone(),
        );
        Metrics {
            registry,
            messages,
            decisions,
            proof,
            commits,
            commit_seconds,
            conflicts,
            dns,
            effects,
            effects_pending,
            effects_failed,
        }
    })
}

const DOORS: [&str; 4] = ["milter", "lmtp", "ischedule", "cli"];
const METHODS: [&str; 8] = [
    "PUBLISH",
    "REQUEST",
    "REPLY",
    "ADD",
    "CANCEL",
    "REFRESH",
    "COUNTER",
    "DECLINECOUNTER",
];
const OUTCOMES: [&str; 3] = ["applied", "ignored", "rejected"];
const PROOF_METHODS: [&str; 9] = [
    "dkim",
    "dmarc",
    "spf",
    "smime",
    "pgp",
    "iprev",
    "auth",
    "arc",
    "ischedule",
];
const PROOF_RESULTS: [&str; 9] = [
    "pass",
    "fail",
    "none",
    "neutral",
    "policy",
    "softfail",
    "temperror",
    "permerror",
    "hardfail",
];

/// `v` if it is one of `known` (case-insensitive), else "other".
fn bounded(v: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(v))
        .copied()
        .unwrap_or("other")
}

/// The message-level result of a verdict (see the module documentation for the order).
pub fn message_result(v: &Verdict) -> &'static str {
    let has = |o: &str| v.outcomes.iter().any(|x| x.outcome.as_str() == o);
    if has("applied") {
        "applied"
    } else if has("rejected") {
        "rejected"
    } else if has("ignored") || v.had_calendar {
        "ignored"
    } else {
        "no-calendar"
    }
}

/// A door got the pipeline's verdict for one message (`Err`: the store failed, tempfail).
pub fn message<E>(door: &str, verdict: Result<&Verdict, E>) {
    let m = metrics();
    let door = bounded(door, &DOORS);
    let v = match verdict {
        Ok(v) => v,
        Err(_) => {
            m.messages
                .get_or_create(&MessageLabels {
                    door,
                    result: "tempfail",
                })
                .inc();
            return;
        }
    };
    m.messages
        .get_or_create(&MessageLabels {
            door,
            result: message_result(v),
        })
        .inc();
    for o in &v.outcomes {
        m.decisions
            .get_or_create(&DecisionLabels {
                method: bounded(&o.method, &METHODS),
                outcome: bounded(o.outcome.as_str(), &OUTCOMES),
            })
            .inc();
    }
    for (method, result) in proof_items(&v.proof.results) {
        m.proof.get_or_create(&ProofLabels { method, result }).inc();
    }
}

/// A door refused a whole message before the pipeline judged it (an iSchedule request that
/// failed its checks, a replay).
pub fn message_refused(door: &str) {
    metrics()
        .messages
        .get_or_create(&MessageLabels {
            door: bounded(door, &DOORS),
            result: "rejected",
        })
        .inc();
}

/// One attempt at an effect: `effect` is its kind's name (a plugin's counts as "plugin"),
/// `outcome` delivered, retrying or failed.
pub fn effect(effect: &str, outcome: &str) {
    let effect = match effect {
        "imip" => "imip",
        "ischedule" => "ischedule",
        _ => "plugin",
    };
    metrics()
        .effects
        .get_or_create(&EffectLabels {
            effect,
            outcome: bounded(outcome, &["delivered", "retrying", "failed"]),
        })
        .inc();
}

/// The size of the effects queue: pending and set aside.
pub fn effects_queue(pending: usize, failed: usize) {
    let m = metrics();
    m.effects_pending.set(pending as i64);
    m.effects_failed.set(failed as i64);
}

/// Runs a store commit, recording its duration and result.
pub fn commit<T, E>(f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let r = f();
    let m = metrics();
    m.commit_seconds.observe(start.elapsed().as_secs_f64());
    m.commits
        .get_or_create(&ResultLabel {
            result: if r.is_ok() { "ok" } else { "error" },
        })
        .inc();
    r
}

/// A commit failed with a version conflict and is decided again.
pub fn store_conflict() {
    metrics().conflicts.inc();
}

/// The `method=result` items of an Authentication-Results value after its authserv-id,
/// splitting on `;` outside quoted strings and comments.
fn proof_items(results: &str) -> Vec<(&'static str, &'static str)> {
    let mut items = Vec::new();
    let (mut quoted, mut depth, mut start) = (false, 0usize, 0usize);
    let mut pieces = Vec::new();
    let bytes = results.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' if depth == 0 => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth = depth.saturating_sub(1),
            b';' if !quoted && depth == 0 => {
                pieces.push(&results[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    pieces.push(&results[start.min(results.len())..]);
    for piece in pieces.into_iter().skip(1) {
        let first = piece.split_whitespace().next().unwrap_or("");
        if let Some((method, result)) = first.split_once('=') {
            items.push((
                bounded(method, &PROOF_METHODS),
                bounded(result, &PROOF_RESULTS),
            ));
        }
    }
    items
}

/// The metrics in the text exposition format.
pub fn render() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics();
    for (result, total) in [
        ("cache", crate::auth::dns::CACHE_HITS.load(Relaxed)),
        ("query", crate::auth::dns::QUERIES.load(Relaxed)),
    ] {
        let c = m.dns.get_or_create(&ResultLabel { result });
        c.inc_by(total.saturating_sub(c.get()));
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        crate::app::log(format!("metrics endpoint: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_items_skip_the_authserv_id_and_quoted_semicolons() {
        let items = proof_items(
            "mx.example.com; dkim=pass header.d=example.com; \
             dmarc=fail reason=\"a; dkim=pass\" header.from=x; smime=none (no sig; x=y); \
             pgp=weird; bogus-method=pass",
        );
        assert_eq!(
            items,
            vec![
                ("dkim", "pass"),
                ("dmarc", "fail"),
                ("smime", "none"),
                ("pgp", "other"),
                ("other", "pass"),
            ]
        );
        assert!(proof_items("mx.example.com; none").is_empty());
        assert!(proof_items("").is_empty());
    }

    #[test]
    fn message_result_takes_the_strongest_outcome() {
        let o = |outcome: &str| crate::pipeline::ObjectOutcome {
            recipient: "mailto:a@example.com".into(),
            method: "REQUEST".into(),
            component: "VEVENT".into(),
            uid: "u".into(),
            outcome: match outcome {
                "applied" => crate::itip::Outcome::Applied,
                "ignored" => crate::itip::Outcome::Ignored,
                _ => crate::itip::Outcome::Rejected,
            },
            reason: crate::pipeline::Why::Applied(String::new()),
        };
        let mut v = Verdict::default();
        assert_eq!(message_result(&v), "no-calendar");
        v.had_calendar = true;
        assert_eq!(message_result(&v), "ignored");
        v.outcomes = vec![o("ignored"), o("rejected")];
        assert_eq!(message_result(&v), "rejected");
        v.outcomes.push(o("applied"));
        assert_eq!(message_result(&v), "applied");
    }

    #[test]
    fn labels_outside_the_known_lists_are_other() {
        assert_eq!(bounded("lmtp", &DOORS), "lmtp");
        assert_eq!(bounded("request", &METHODS), "REQUEST");
        assert_eq!(bounded("X-EVIL\r\n", &METHODS), "other");
    }
}

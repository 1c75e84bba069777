//! The effects runner: drains the effects commits left in the store (iMIP replies, iSchedule
//! relays, plugin work), each through the handler registered for its kind. At least once per
//! effect: an attempt is marked done only after its handler succeeded, so a crash in between
//! repeats it. A failed attempt is retried with backoff ([`effects::backoff_secs`]); one the
//! peer refused for good, or that failed [`effects::MAX_ATTEMPTS`] times, is set aside
//! (`Store::failed_effects`). Each attempt writes an effect line to the journal.
//!
//! The runner never blocks mail: the doors only commit effects and wake it.

use crate::store::Store;
use imipd_core::effects::{self, Effect, EffectError, EffectKind, EffectLine, PendingEffect};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// One attempt at an effect: Ok with what was done, for the journal line.
pub type Attempt = Pin<Box<dyn Future<Output = Result<String, EffectError>> + Send>>;

/// Carries out effects of one kind.
pub trait Handler: Send + Sync {
    fn attempt(&self, effect: Effect) -> Attempt;
}

/// The handlers by effect kind. The daemon builds one per configuration (see
/// `app::Core::build_state`): iMIP when a transport is configured, iSchedule relays when
/// iSchedule is configured, and one per enabled plugin that has effects (`EffectKind::Plugin(name)`). An effect
/// whose kind has no handler waits in the store untouched.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

/// Plugin kinds get their own key space, so that a plugin named "imip" cannot take iMIP.
fn key(kind: &EffectKind) -> String {
    match kind {
        EffectKind::Plugin(name) => format!("plugin:{name}"),
        k => k.name().to_string(),
    }
}

impl Registry {
    pub fn register(&mut self, kind: &EffectKind, handler: Arc<dyn Handler>) {
        self.handlers.insert(key(kind), handler);
    }

    pub fn handler(&self, kind: &EffectKind) -> Option<Arc<dyn Handler>> {
        self.handlers.get(&key(kind)).cloned()
    }

    /// A registry with iMIP sent over `transport` (when there is one).
    pub fn with_imip(transport: Option<crate::outbound::Transport>) -> Registry {
        let mut r = Registry::default();
        if let Some(transport) = transport {
            r.register(
                &EffectKind::Imip,
                Arc::new(crate::effects::imip::Handler { transport }),
            );
        }
        r
    }

    /// The registry `cfg` asks for without a daemon around it (the CLI): iMIP through
    /// `[outbound] transport`, or into `outbox` when given.
    pub fn for_config(
        cfg: &crate::config::Config,
        outbox: Option<&std::path::Path>,
    ) -> Result<Registry, String> {
        let transport = match (outbox, &cfg.outbound.transport) {
            (Some(dir), _) => Some(crate::outbound::Transport::Outbox(dir.to_path_buf())),
            (None, Some(t)) => Some(crate::outbound::Transport::parse(t)?),
            (None, None) => None,
        };
        let mut r = Registry::with_imip(transport);
        for name in cfg.plugin_set.names() {
            if let Some(plugin) = cfg.plugin_set.get(name) {
                r.register(
                    &EffectKind::Plugin(name.to_string()),
                    Arc::new(PluginHandler {
                        plugin: plugin.clone(),
                    }),
                );
            }
        }
        Ok(r)
    }
}

/// Carries out a plugin's effects through its own handler, on a blocking thread (a plugin
/// brings its own client, which may block).
struct PluginHandler {
    plugin: Arc<dyn imipd_core::plugin::Plugin>,
}

impl Handler for PluginHandler {
    fn attempt(&self, effect: Effect) -> Attempt {
        let plugin = self.plugin.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || plugin.run_effect(&effect.payload))
                .await
                .unwrap_or_else(|e| {
                    Err(EffectError {
                        message: format!("plugin effect task failed: {e}"),
                        permanent: false,
                    })
                })
                .map(|()| "done".to_string())
        })
    }
}

/// What happened to the effects [`run_these`] tried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
    /// Due but no handler for their kind (no transport configured, plugin not enabled).
    pub waiting: usize,
}

/// An attempt that takes longer than this counts as failed (and is retried); handlers have
/// shorter timeouts of their own (SMTP 60 s, sendmail 120 s, iSchedule per request).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(300);

/// Effects read from the store at a time, and tried at most per lane before the next scan.
const PAGE: usize = 256;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn log(msg: impl AsRef<str>) {
    crate::app::log(msg)
}

/// Tries one pending effect once and records the outcome (done, deferred or set aside, each
/// with its journal line). Returns the outcome, or None when no handler takes its kind.
pub async fn attempt(
    store: &dyn Store,
    registry: &Registry,
    p: &PendingEffect,
) -> Option<&'static str> {
    let e = &p.effect;
    let handler = registry.handler(&e.kind)?;
    let res = match tokio::time::timeout(ATTEMPT_LIMIT, handler.attempt(e.clone())).await {
        Ok(r) => r,
        Err(_) => Err(EffectError {
            message: format!("no answer within {} s", ATTEMPT_LIMIT.as_secs()),
            permanent: false,
        }),
    };
    let ts = now();
    let (outcome, reason, stored) = match res {
        Ok(what) => {
            let l = EffectLine::new(e, ts, "delivered", &what);
            ("delivered", what, store.effect_done(&e.id, &l))
        }
        Err(err) if err.permanent || p.attempts + 1 >= effects::MAX_ATTEMPTS => {
            let reason = if err.permanent {
                format!("{err} (refused for good; set aside)")
            } else {
                format!("{err} ({} attempts; set aside)", p.attempts + 1)
            };
            let l = EffectLine::new(e, ts, "failed", &reason);
            ("failed", reason, store.fail_effect(&e.id, &l))
        }
        Err(err) => {
            let reason = format!(
                "{err} (attempt {}; next in {} s)",
                p.attempts + 1,
                effects::backoff_secs(p.attempts)
            );
            let l = EffectLine::new(e, ts, "retrying", &reason);
            ("retrying", reason, store.defer_effect(&e.id, ts, &l))
        }
    };
    crate::metrics::effect(e.kind.name(), outcome);
    log(format!(
        "effects: {} user={} uid={} id={} {outcome}: {reason}",
        e.kind.name(),
        if e.user.is_empty() { "-" } else { &e.user },
        if e.uid.is_empty() { "-" } else { &e.uid },
        e.id
    ));
    if let Err(err) = stored {
        // The outcome could not be recorded: the effect stays as it was and is tried again.
        log(format!(
            "effects: cannot record the outcome of {}: {err}",
            e.id
        ));
    }
    Some(outcome)
}

fn count(pass: &mut Pass, outcome: Option<&str>) {
    match outcome {
        Some("delivered") => pass.delivered += 1,
        Some("retrying") => pass.retrying += 1,
        Some("failed") => pass.failed += 1,
        _ => pass.waiting += 1,
    }
}

/// Tries the effects with these ids once each (those still pending), in order: what a
/// one-off command does with the effects it caused. What fails stays queued.
pub async fn run_these(store: &dyn Store, registry: &Registry, ids: &[String]) -> Pass {
    let mut pass = Pass::default();
    if ids.is_empty() {
        return pass;
    }
    let pending = match store.pending_effects(usize::MAX) {
        Ok(p) => p,
        Err(e) => {
            log(format!("effects: cannot read the pending effects: {e}"));
            return pass;
        }
    };
    for p in pending.iter().filter(|p| ids.contains(&p.effect.id)) {
        count(&mut pass, attempt(store, registry, p).await);
    }
    let _ = store.flush();
    pass
}

/// Pages of due effects one scan reads at most; what lies beyond waits for the next scan.
const SCAN_PAGES: usize = 16;

/// The lanes under way: one task per effect kind, trying that kind's due effects in order.
#[derive(Default)]
struct Lanes {
    set: tokio::task::JoinSet<()>,
    kinds: HashMap<tokio::task::Id, String>,
}

impl Lanes {
    fn busy(&self, kind: &str) -> bool {
        self.kinds.values().any(|k| k == kind)
    }

    /// Starts a lane for every kind that has due effects, a handler and no lane yet.
    fn start(&mut self, store: &Arc<dyn Store>, registry: &Arc<Registry>, due_at: i64) {
        let mut per_kind: std::collections::BTreeMap<String, Vec<PendingEffect>> =
            Default::default();
        let mut after: Option<String> = None;
        for _ in 0..SCAN_PAGES {
            let page = match store.due_effects(due_at, after.as_deref(), PAGE) {
                Ok(d) => d,
                Err(e) => {
                    log(format!("effects: cannot read the pending effects: {e}"));
                    return;
                }
            };
            let full = page.len() == PAGE;
            after = page.last().map(|p| p.effect.id.clone());
            for p in page {
                let k = key(&p.effect.kind);
                if self.busy(&k) || registry.handler(&p.effect.kind).is_none() {
                    continue;
                }
                let lane = per_kind.entry(k).or_default();
                if lane.len() < PAGE {
                    lane.push(p);
                }
            }
            if !full {
                break;
            }
        }
        for (kind, lane) in per_kind {
            let (store, registry) = (store.clone(), registry.clone());
            let h = self.set.spawn(async move {
                for e in &lane {
                    attempt(store.as_ref(), &registry, e).await;
                }
                let _ = tokio::task::spawn_blocking(move || store.flush()).await;
            });
            self.kinds.insert(h.id(), kind);
        }
    }

    /// Waits for a lane to finish and frees its kind (pending forever when none runs).
    async fn finished(&mut self) {
        match self.set.join_next_with_id().await {
            Some(Ok((id, ()))) => {
                self.kinds.remove(&id);
            }
            Some(Err(e)) => {
                log(format!("effects: a lane of attempts failed: {e}"));
                self.kinds.remove(&e.id());
            }
            None => std::future::pending().await,
        }
    }
}

/// Drains due effects until `shutdown` turns true: at start, whenever `wake` is notified (a
/// commit added effects), when a lane finished, and every 30 s. Each kind runs in its own lane,
/// in order within it, so that a slow peer of one kind (an SMTP server that lets connections
/// time out) never holds up another (a plugin's CalDAV server) or the next scan. The first
/// scan takes every pending effect, due or not: a restart is when an administrator has fixed
/// what made them fail. At shutdown, attempts under way are dropped (their effects stay
/// pending and are tried again at the next start).
pub async fn run(
    store: Arc<dyn Store>,
    registry: impl Fn() -> Arc<Registry> + Send + 'static,
    wake: Arc<tokio::sync::Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut lanes = Lanes::default();
    let mut due_at = i64::MAX;
    loop {
        lanes.start(&store, &registry(), due_at);
        if let Ok((pending, failed)) = store.effect_counts() {
            crate::metrics::effects_queue(pending, failed);
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = lanes.finished() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            r = shutdown.changed() => if r.is_err() {
                // The daemon is gone: nobody will ask us to stop any more.
                lanes.set.abort_all();
                return;
            },
        }
        if *shutdown.borrow() {
            lanes.set.abort_all();
            return;
        }
        due_at = now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A plugin's handler as the seam takes it: fails `transient` times, then succeeds;
    /// refuses for good when `permanent`.
    struct Probe {
        calls: AtomicUsize,
        transient: usize,
        permanent: bool,
    }

    impl Handler for Probe {
        fn attempt(&self, effect: Effect) -> Attempt {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let (transient, permanent) = (self.transient, self.permanent);
            Box::pin(async move {
                if permanent {
                    return Err(EffectError {
                        message: "410 gone".into(),
                        permanent: true,
                    });
                }
                if n < transient {
                    return Err(EffectError {
                        message: "503 busy".into(),
                        permanent: false,
                    });
                }
                Ok(format!("PUT {}", effect.uid))
            })
        }
    }

    fn effect(kind: &str, uid: &str) -> Effect {
        Effect::new(
            EffectKind::Plugin(kind.into()),
            "bob@example.org",
            uid,
            Vec::new(),
            "h",
        )
    }

    #[tokio::test]
    async fn plugin_effects_are_retried_set_aside_or_left_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Sled::open(dir.path()).unwrap();
        let mut reg = Registry::default();
        reg.register(
            &EffectKind::Plugin("caldav".into()),
            Arc::new(Probe {
                calls: AtomicUsize::new(0),
                transient: 1,
                permanent: false,
            }),
        );
        reg.register(
            &EffectKind::Plugin("webhook".into()),
            Arc::new(Probe {
                calls: AtomicUsize::new(0),
                transient: 0,
                permanent: true,
            }),
        );
        // A plugin named like a built-in kind does not take that kind's effects.
        reg.register(
            &EffectKind::Plugin("imip".into()),
            Arc::new(Probe {
                calls: AtomicUsize::new(0),
                transient: 0,
                permanent: false,
            }),
        );
        let (a, b, c) = (
            effect("caldav", "u1"),
            effect("webhook", "u2"),
            effect("disabled", "u3"),
        );
        let imip = Effect::new(EffectKind::Imip, "bob@example.org", "u4", vec![], "h");
        store
            .add_effects(&[a.clone(), b.clone(), c.clone(), imip.clone()])
            .unwrap();
        let ids: Vec<String> = [&a, &b, &c, &imip].iter().map(|e| e.id.clone()).collect();

        let first = run_these(&store, &reg, &ids).await;
        assert_eq!(
            first,
            Pass {
                delivered: 0,
                retrying: 1,
                failed: 1,
                waiting: 2
            }
        );
        let second = run_these(&store, &reg, &ids).await;
        assert_eq!(second.delivered, 1, "{second:?}");
        let left: Vec<String> = store
            .pending_effects(10)
            .unwrap()
            .into_iter()
            .map(|p| p.effect.id)
            .collect();
        assert_eq!(left, vec![c.id.clone(), imip.id.clone()]);
        assert_eq!(store.failed_effects(10).unwrap()[0].effect.id, b.id);
        let lines: Vec<(String, String)> = store
            .journal_lines(&Default::default(), 10)
            .unwrap()
            .into_iter()
            .filter_map(|l| match l {
                crate::store::JournalLine::Effect(e) => Some((e.effect, e.outcome)),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("caldav".to_string(), "retrying".to_string()),
                ("webhook".into(), "failed".into()),
                ("caldav".into(), "delivered".into()),
            ]
        );
    }

    /// Never answers: a peer that lets the connection hang.
    struct Hang;

    impl Handler for Hang {
        fn attempt(&self, _: Effect) -> Attempt {
            Box::pin(std::future::pending())
        }
    }

    /// The daemon's loop: a hanging kind does not hold up another, a wakeup is enough to get a
    /// new effect tried, and shutdown returns at once (the hanging effect stays pending).
    #[tokio::test]
    async fn one_kind_hanging_holds_up_no_other_and_shutdown_is_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::Sled::open(dir.path()).unwrap());
        let mut reg = Registry::default();
        reg.register(&EffectKind::Plugin("slow".into()), Arc::new(Hang));
        reg.register(
            &EffectKind::Plugin("fast".into()),
            Arc::new(Probe {
                calls: AtomicUsize::new(0),
                transient: 0,
                permanent: false,
            }),
        );
        let reg = Arc::new(reg);
        let hanging = effect("slow", "u1");
        store.add_effects(std::slice::from_ref(&hanging)).unwrap();
        let wake = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(store.clone(), move || reg.clone(), wake.clone(), rx));
        // The runner is now inside the hanging attempt.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fast = effect("fast", "u2");
        store.add_effects(std::slice::from_ref(&fast)).unwrap();
        wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store
            .pending_effects(10)
            .unwrap()
            .iter()
            .any(|p| p.effect.id == fast.id)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the fast effect waits"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the runner stops at shutdown")
            .unwrap();
        let left = store.pending_effects(10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].effect.id, hanging.id);
    }
}

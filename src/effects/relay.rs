//! iSchedule relay of what a local user sent (`[ischedule] relay`): with `relay = "also"` an
//! [`EffectKind::Ischedule`] effect that the runner carries out, so the milter never waits for
//! a remote server; with `relay = "instead"` the milter calls [`relay_and_record`] itself (it
//! must know at end-of-message which recipients iSchedule took).

use crate::ischedule::Bridge;
use crate::itip::Incoming;
use crate::pipeline::Pipeline;
use imipd_core::effects::{Effect, EffectError, EffectKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What to relay, besides the message itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    sender: String,
    recipients: Vec<String>,
    #[serde(default)]
    queue_id: Option<String>,
}

/// The relay of `raw` (sent by local `sender` to `recipients`; `uid` is its first object's)
/// as an effect. Payload: `job length u32 | job (JSON) | message`.
pub fn effect(
    raw: &[u8],
    sender: &str,
    recipients: &[String],
    uid: &str,
    queue_id: Option<&str>,
    host: &str,
) -> Effect {
    let job = serde_json::to_vec(&Job {
        sender: sender.to_string(),
        recipients: recipients.to_vec(),
        queue_id: queue_id.map(str::to_string),
    })
    .unwrap_or_default();
    let mut payload = Vec::with_capacity(4 + job.len() + raw.len());
    payload.extend_from_slice(&(job.len() as u32).to_be_bytes());
    payload.extend_from_slice(&job);
    payload.extend_from_slice(raw);
    Effect::new(EffectKind::Ischedule, sender, uid, payload, host)
}

fn decode(e: &Effect) -> Option<(Job, &[u8])> {
    let b = &e.payload;
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let job = serde_json::from_slice(b.get(4..4usize.checked_add(n)?)?).ok()?;
    Some((job, &b[4 + n..]))
}

fn log(msg: impl AsRef<str>) {
    crate::app::log(msg)
}

/// Relays `objects` (sent by local `sender`) over iSchedule, records each recipient's status
/// on the sender's copy (SCHEDULE-STATUS) and commits the free/busy answers as iMIP effects to
/// the sender. Returns the report and whether reply effects were added (the runner is to be
/// woken).
pub async fn relay_and_record(
    bridge: &Bridge,
    pipeline: &Arc<Pipeline>,
    objects: &[Incoming],
    sender: &str,
    recipients: &[String],
    queue_id: Option<&str>,
) -> (crate::ischedule::relay::Report, bool) {
    let report = bridge.relay_outgoing(objects, sender, recipients).await;
    for r in &report.relayed {
        log(format!(
            "ischedule: queue_id={} {}",
            queue_id.unwrap_or("-"),
            r.json()
        ));
    }
    let mut by_uid: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for r in report.relayed.iter().filter(|r| r.component != "VFREEBUSY") {
        by_uid
            .entry(r.uid.clone())
            .or_default()
            .push((r.recipient.clone(), r.schedule_status()));
    }
    let cfg = pipeline.config.clone();
    let host = cfg
        .authserv_id
        .clone()
        .unwrap_or_else(crate::proof::hostname);
    let replies: Vec<Effect> = report
        .replies
        .iter()
        .map(|m| crate::outbound::outgoing(&cfg, m, None).into_effect(sender, "", &host))
        .collect();
    let added = !replies.is_empty();
    let pipeline = pipeline.clone();
    let sender = sender.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        for (uid, statuses) in by_uid {
            if let Err(e) = pipeline.record_schedule_status(&sender, &uid, &statuses) {
                log(format!(
                    "ischedule: cannot record SCHEDULE-STATUS of {uid}: {e}"
                ));
            }
        }
        if !replies.is_empty() {
            if let Err(e) = pipeline.store.add_effects(&replies) {
                log(format!(
                    "ischedule: cannot queue the free/busy answers to {sender}: {e}"
                ));
            }
        }
        let _ = pipeline.store.flush();
    })
    .await;
    (report, added)
}

/// The effect handler for `EffectKind::Ischedule`. A relay is best effort next to the mail
/// that also goes (`relay = "also"`): a recipient iSchedule could not reach keeps the mail
/// path and gets SCHEDULE-STATUS 5.1, so an attempt fails only on a damaged payload.
pub struct Handler {
    pub bridge: Arc<Bridge>,
    pub pipeline: Arc<Pipeline>,
    /// Woken when free/busy answers were queued.
    pub wake: Arc<tokio::sync::Notify>,
}

impl crate::effects::runner::Handler for Handler {
    fn attempt(&self, effect: Effect) -> crate::effects::runner::Attempt {
        let bridge = self.bridge.clone();
        let pipeline = self.pipeline.clone();
        let wake = self.wake.clone();
        Box::pin(async move {
            let Some((job, raw)) = decode(&effect) else {
                return Err(EffectError {
                    message: "not an iSchedule relay (damaged effect)".into(),
                    permanent: true,
                });
            };
            // The message was read once when it was sent; the relay reads its calendars again
            // here, possibly after a restart.
            let objects: Vec<Incoming> = crate::extract::extract(raw)
                .objects
                .into_iter()
                .map(|f| f.incoming)
                .collect();
            let (report, added) = relay_and_record(
                &bridge,
                &pipeline,
                &objects,
                &job.sender,
                &job.recipients,
                job.queue_id.as_deref(),
            )
            .await;
            if added {
                wake.notify_one();
            }
            let over = report.relayed.iter().filter(|r| r.delivered()).count();
            Ok(format!(
                "{over} of {} (recipient, object) pairs delivered over iSchedule, the rest by mail",
                report.relayed.len()
            ))
        })
    }
}

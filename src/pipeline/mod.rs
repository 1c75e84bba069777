//! The pipeline every front door shares: extract -> (proof, given) -> iTIP decision -> commit ->
//! effects. Front doors translate their protocol into a [`Delivery`] and the [`Verdict`] back.

pub mod extract;
pub mod ischedule;
pub mod triage;

use crate::config::{Config, CreateMode};
use crate::ical::{self, Component};
use crate::itip::{self, Context, Decision, Incoming, Method, OutMessage, Reason, StoredObject};
use crate::message::Parsed;
use crate::proof::Proof;
use crate::store::{Change, Commit, Expect, JournalEntry, Store, StoreError};
use extract::Extracted;
use imipd_core::effects::Effect;
use imipd_core::store::Writer;
use serde::Serialize;
use std::sync::Arc;

/// One message handed to the pipeline.
pub struct Delivery<'a> {
    pub raw: &'a [u8],
    /// Whose calendars the message is decided for.
    pub recipients: Recipients,
    /// A queue id or similar, for the log.
    pub queue_id: Option<String>,
    /// How the sender is proven.
    pub trust: Trust<'a>,
}

/// Whose calendars a message is decided for.
pub enum Recipients {
    /// The envelope's recipients (normalized), local or not: the message is decided for the
    /// local ones (none: only the sender proof is checked). On authenticated submission the
    /// sender's own copy records all of them as sent to.
    Envelope(Vec<String>),
    /// Exactly these (normalized), each taken as local (`process --recipient`).
    Listed(Vec<String>),
    /// The message's local To/Cc recipients (`process` without `--recipient`).
    Headers,
}

/// How a message's sender is proven.
pub enum Trust<'a> {
    /// By the message's own signatures and the transport facts, checked on the same MIME tree
    /// that the calendars are read from (on a blocking thread when called from async code).
    Verify(&'a crate::proof::Prover, crate::proof::Facts),
    /// An admin replaying a message: the From address is proven for all of it.
    Sender,
    /// Nothing is proven.
    Nothing,
}

/// What happened to one calendar object for one recipient.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ObjectOutcome {
    pub recipient: String,
    pub method: String,
    pub component: String,
    pub uid: String,
    pub outcome: Outcome,
    pub reason: Why,
}

/// Why an object came out as it did: typed until it is written out (JSON, the result header,
/// log and journal lines), where it reads as one line of text.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    /// Applied: what changed, in the engine's words.
    Applied(String),
    /// The iTIP rules, the creation policy or the replay log refused or ignored it.
    Itip(Reason),
    /// The calendar part or object could not be read.
    Unread(extract::Unread),
    /// The message's calendar work was over [`MAX_WORK_BYTES`] before this object.
    OverBudget,
    /// A free/busy request answered by mail: this many busy periods, to this address.
    FreeBusyReplied { periods: usize, to: String },
    /// A free/busy request answered in the door's response (iSchedule).
    FreeBusyAnswered { periods: usize },
    /// The sender's own copy of what they sent, and what became of it.
    Sent(Box<Why>),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Applied(summary) => f.write_str(summary),
            Why::Itip(r) => r.fmt(f),
            Why::Unread(u) => u.fmt(f),
            Why::OverBudget => write!(
                f,
                "the message asks for more than {} MiB of calendar updates; \
                 the rest were not looked at",
                MAX_WORK_BYTES >> 20
            ),
            Why::FreeBusyReplied { periods, to } => write!(
                f,
                "free/busy reply with {periods} busy period(s) sent to {to}"
            ),
            Why::FreeBusyAnswered { periods } => {
                write!(f, "free/busy answered with {periods} busy period(s)")
            }
            Why::Sent(w) => write!(f, "outgoing: {w}"),
        }
    }
}

impl Serialize for Why {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Why {
    /// The reason of an engine decision.
    pub fn of(d: &Decision) -> Why {
        match d {
            Decision::Applied { summary, .. } => Why::Applied(summary.clone()),
            Decision::Ignored(r) | Decision::Rejected(r) | Decision::IgnoredWithReply(r, _) => {
                Why::Itip(r.clone())
            }
        }
    }

    /// Whether two reasons are of one kind (their rejections share one journal line): the
    /// same engine reason whatever its details, else the same reason.
    fn same_kind(&self, other: &Why) -> bool {
        match (self, other) {
            (Why::Itip(a), Why::Itip(b)) => a.discriminant() == b.discriminant(),
            (a, b) => a == b,
        }
    }
}

/// A VFREEBUSY REPLY computed for a synchronous front door, instead of being mailed.
#[derive(Debug, Clone)]
pub struct FreeBusyAnswer {
    /// The local user it describes (normalized).
    pub recipient: String,
    /// A complete VCALENDAR with METHOD:REPLY.
    pub calendar: String,
}

#[derive(Debug, Default)]
pub struct Verdict {
    pub outcomes: Vec<ObjectOutcome>,
    /// Free/busy answers kept for the front door (iSchedule) instead of mailed replies.
    pub freebusy: Vec<FreeBusyAnswer>,
    /// Set by the front door: answer free/busy requests synchronously.
    sync_freebusy: bool,
    /// Some object was rejected for want of proof (a typed fact, not a reason text).
    rejected_for_proof: bool,
    pub notes: Vec<String>,
    /// The effects committed with the decisions (iMIP replies, plugin effects), for the log and
    /// for a one-off command that runs them at once; the effects runner carries them out.
    pub effects: Vec<Effect>,
    pub message_id: Option<String>,
    pub had_calendar: bool,
    /// The sender proof the message was judged by (empty for iSchedule bodies).
    pub proof: Proof,
    /// The local recipients whose calendars were looked at.
    pub recipients: Vec<String>,
    /// Decisions made again because their commit met a version conflict (another writer
    /// changed the object or calendar after it was read).
    pub store_retries: u32,
    /// A local user's own submission (SMTP AUTH), as recorded in their calendar.
    pub sent: Option<Sent>,
    /// Why a message submitted with SMTP AUTH was not recorded as its sender's.
    pub submission_note: Option<&'static str>,
}

/// What a local user sent on authenticated submission: recorded in their own calendar, and
/// to be relayed over iSchedule (`[ischedule] relay`).
#[derive(Debug, Default)]
pub struct Sent {
    /// The sender (normalized calendar address).
    pub sender: String,
    /// Every envelope recipient (normalized).
    pub recipients: Vec<String>,
    /// The calendar objects of the message, as read once by the pipeline.
    pub objects: Vec<Incoming>,
    /// What became of the sender's copy of each.
    pub outcomes: Vec<ObjectOutcome>,
}

pub use crate::effects::imip::Outgoing;
/// What became of one object, as the doors report it.
pub use crate::itip::Outcome;

impl Verdict {
    /// The notes that say why sender proof did not cover a calendar.
    pub fn proof_notes(&self) -> impl Iterator<Item = &String> {
        self.notes
            .iter()
            .filter(|n| n.starts_with("sender proof") || n.starts_with("a calendar part"))
    }

    /// A verdict with nothing decided, only the sender proof (a message for no local user).
    pub fn proof_only(proof: Proof) -> Verdict {
        Verdict {
            proof,
            ..Default::default()
        }
    }

    /// The verdict as one recipient's copy of the message should tell it.
    pub fn for_recipient(&self, rcpt: &str) -> Verdict {
        let mailto = ical::mailto(rcpt);
        Verdict {
            outcomes: self
                .outcomes
                .iter()
                .filter(|o| o.recipient == mailto)
                .cloned()
                .collect(),
            notes: self.notes.clone(),
            message_id: self.message_id.clone(),
            had_calendar: self.had_calendar,
            ..Default::default()
        }
    }

    /// Whether some object was refused because its sender is not proven to be the party
    /// allowed to send it.
    pub fn any_rejected_for_proof(&self) -> bool {
        self.rejected_for_proof
    }
}

/// The calendar data one message may have decided and written, summed over its (recipient,
/// object) pairs: a meeting of a thousand local attendees (a 35 kB object, 35 MB in all) fits;
/// a small message that names a thousand recipients beside dozens of large objects does not.
/// Sized so that the worst such message is decided in under 2 s (BENCHMARKS.md).
pub const MAX_WORK_BYTES: usize = 48 << 20;

/// The rejections of one message for one recipient, one entry per kind of reason.
struct Rejections {
    method: String,
    component: String,
    uid: String,
    reason: Why,
    count: u32,
}

impl Rejections {
    fn add(list: &mut Vec<Rejections>, outcome: Option<&ObjectOutcome>) {
        let Some(o) = outcome else { return };
        match list.iter_mut().find(|r| r.reason.same_kind(&o.reason)) {
            Some(r) => r.count += 1,
            None => list.push(Rejections {
                method: o.method.clone(),
                component: o.component.clone(),
                uid: o.uid.clone(),
                reason: o.reason.clone(),
                count: 1,
            }),
        }
    }
}

/// How many times one object is read, decided and committed before a run of version
/// conflicts is given up (the message then tempfails and its sender retries).
pub const MAX_COMMIT_ATTEMPTS: u32 = 16;

/// Per-user locks of one pipeline: its writes for one calendar user take turns (read, decide,
/// commit), so that they seldom conflict. They are an optimisation only: every commit carries
/// the versions its decision read, and the store refuses a stale one.
struct UserLocks([std::sync::Mutex<()>; 64]);

impl UserLocks {
    fn new() -> Box<UserLocks> {
        Box::new(UserLocks([const { std::sync::Mutex::new(()) }; 64]))
    }

    fn lock(&self, user: &str) -> std::sync::MutexGuard<'_, ()> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in user.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0[(h % 64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Pipeline {
    pub store: Arc<dyn Store>,
    pub config: Arc<Config>,
    /// Woken when a commit left effects for the effects runner (the daemon's; none for a
    /// one-off command, which runs its effects itself).
    effects_wakeup: Option<Arc<tokio::sync::Notify>>,
    user_locks: Option<Box<UserLocks>>,
}

/// A short, growing, jittered pause before deciding again, so that writers that keep meeting
/// each other drift apart.
fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let cap_us = 50u64 << attempt.min(8);
    std::thread::sleep(std::time::Duration::from_micros(h.finish() % cap_us));
}

use imipd_core::clock::now;

/// A stable key for "this object of this message", for the processed-message log.
fn processed_key(message_id: Option<&str>, inc: &Incoming) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(message_id.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(inc.method.as_str().as_bytes());
    h.update([0]);
    for c in &inc.components {
        h.update(c.to_ical().as_bytes());
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn object_fingerprint(obj: &StoredObject, user: &str) -> String {
    let mut s = String::new();
    for c in &obj.components {
        for p in &c.props {
            let relevant = matches!(
                p.name.as_str(),
                "DTSTART"
                    | "DTEND"
                    | "DURATION"
                    | "RRULE"
                    | "RDATE"
                    | "EXDATE"
                    | "RECURRENCE-ID"
                    | "STATUS"
                    | "TRANSP"
            ) || (p.name == "ATTENDEE" && ical::norm_addr(&p.value) == user);
            if relevant {
                s.push_str(&p.name);
                for prm in &p.params {
                    s.push(';');
                    s.push_str(&prm.name);
                    s.push('=');
                    s.push_str(&prm.values.join(","));
                }
                s.push(':');
                s.push_str(&p.value);
                s.push('\n');
            }
        }
        s.push('|');
    }
    s
}

impl Pipeline {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>) -> Self {
        Pipeline {
            store,
            config,
            effects_wakeup: None,
            user_locks: Some(UserLocks::new()),
        }
    }

    /// Wakes `runner` whenever a commit leaves effects.
    pub fn waking(mut self, runner: Arc<tokio::sync::Notify>) -> Self {
        self.effects_wakeup = Some(runner);
        self
    }

    /// Tells the effects runner (if any) that `v` committed effects.
    fn wake_runner(&self, v: &Verdict) {
        if let (Some(w), false) = (&self.effects_wakeup, v.effects.is_empty()) {
            w.notify_one();
        }
    }

    /// With `false`, writes for one user are not serialized in this process (the store's
    /// versions alone keep updates from being lost; conflicts are then retried more often).
    pub fn with_user_locks(mut self, on: bool) -> Self {
        self.user_locks = match (on, self.user_locks.take()) {
            (false, _) => None,
            (true, locks) => Some(locks.unwrap_or_else(UserLocks::new)),
        };
        self
    }

    fn user_lock(&self, user: &str) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.user_locks.as_ref().map(|l| l.lock(user))
    }

    /// Runs `attempt` (read, decide, commit) again while its commit meets a version conflict,
    /// at most [`MAX_COMMIT_ATTEMPTS`] times; `retries` counts the attempts made again.
    fn retrying<T>(
        &self,
        user: &str,
        uid: &str,
        retries: &mut u32,
        mut attempt: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut n = 1;
        loop {
            match attempt() {
                Err(StoreError::Conflict(why)) => {
                    crate::metrics::store_conflict();
                    if n >= MAX_COMMIT_ATTEMPTS {
                        return Err(StoreError::Conflict(format!(
                            "{uid} in {user}'s calendar: still changed by other writers after \
                             {MAX_COMMIT_ATTEMPTS} attempts ({why})"
                        )));
                    }
                    crate::app::log(format!(
                        "store: {uid} in {user}'s calendar changed meanwhile ({why}); \
                             deciding again (attempt {} of {MAX_COMMIT_ATTEMPTS})",
                        n + 1
                    ));
                    *retries += 1;
                    backoff(n);
                    n += 1;
                }
                r => return r,
            }
        }
    }

    /// Runs one message through the pipeline: one MIME parse, the sender proof on that tree,
    /// extraction of what each proof covers, a decision per object and recipient, commits,
    /// made durable before it returns. A store error aborts (the caller tempfails); what was
    /// committed before stays, and the processed-message log makes a retry harmless.
    pub fn process(&self, d: &Delivery) -> Result<Verdict, StoreError> {
        match self.ordinary(d) {
            Some(v) => Ok(v),
            None => self.process_read(d),
        }
    }

    /// [`Pipeline::process`] for a message that [`Pipeline::ordinary`] already looked at and
    /// left to the full reading (a door that triaged it on its own thread).
    pub fn process_read(&self, d: &Delivery) -> Result<Verdict, StoreError> {
        let (bytes, bare_cr) = extract::normalize_line_ends(d.raw);
        let parsed = Parsed::new(&bytes, bare_cr);
        if !extract::may_hold_calendar(&parsed) {
            // Ordinary mail: nothing to prove or decide. Only forged Authentication-Results
            // that claim our own authserv-id are still removed (a header scan, no DNS).
            let proof = match &d.trust {
                Trust::Verify(prover, _) => prover.forged_results(&parsed),
                _ => Proof::default(),
            };
            return Ok(Verdict::proof_only(proof));
        }
        let proof = match &d.trust {
            Trust::Verify(prover, facts) => prover.prove_blocking(&parsed, facts),
            Trust::Sender => Proof::trusted_sender(extract::from_of(&parsed)),
            Trust::Nothing => Proof::default(),
        };
        let ex = extract::extract_parsed(&parsed, &proof);
        // From here on this message commits, then asks for durability: a flush another
        // message starts meanwhile may wait a moment for it and cover both. Announced after
        // the proof, whose DNS lookups take as long as they take.
        let writer = Writer::begin(&*self.store);
        let (recipients, envelope) = match &d.recipients {
            Recipients::Envelope(all) => {
                let local: Vec<String> = all
                    .iter()
                    .filter(|r| self.config.is_local(r))
                    .cloned()
                    .collect();
                (Some(local), Some(all))
            }
            Recipients::Listed(list) => (Some(list.clone()), None),
            Recipients::Headers => (None, None),
        };
        let mut v = self.process_objects(recipients.as_deref(), &ex, false)?;
        if let (Trust::Verify(_, facts), Some(all)) = (&d.trust, envelope) {
            if facts.auth_authen.is_some() {
                self.submission(d, &proof, all, ex, &mut v)?;
            }
        }
        v.proof = proof;
        if !v.outcomes.is_empty() || v.sent.is_some() || !v.effects.is_empty() {
            crate::metrics::commit(|| writer.flush())?;
        }
        self.wake_runner(&v);
        Ok(v)
    }

    /// A message submitted with SMTP AUTH: when its From is the login's own local address
    /// (the proof says), its objects are recorded in the sender's calendar, and with
    /// `[ischedule] relay = "also"` their relay is committed as an effect with that copy.
    fn submission(
        &self,
        d: &Delivery,
        proof: &Proof,
        all: &[String],
        ex: Extracted,
        v: &mut Verdict,
    ) -> Result<(), StoreError> {
        let sender = match &proof.submitter {
            _ if !self.config.policy.trust_authenticated_submission => {
                v.submission_note = Some("policy.trust_authenticated_submission is off");
                return Ok(());
            }
            Some(s) if !self.config.local_domains.is_empty() && self.config.is_local(s) => {
                s.clone()
            }
            Some(_) => {
                v.submission_note = Some("the login's From is not in local_domains");
                return Ok(());
            }
            None => {
                v.submission_note = Some("From is not one of the login's addresses");
                return Ok(());
            }
        };
        let objects: Vec<Incoming> = ex.objects.into_iter().map(|f| f.incoming).collect();
        let relay = (self.config.ischedule.relay == crate::config::Relay::Also
            && self.config.ischedule.sends()
            && all.iter().any(|r| !self.config.is_local(r)))
        .then(|| {
            let raw = proof.inner.as_deref().unwrap_or(d.raw);
            let uid = objects.first().map(|o| o.uid.as_str()).unwrap_or("");
            let host = self
                .config
                .authserv_id
                .clone()
                .unwrap_or_else(crate::proof::hostname);
            crate::effects::relay::effect(raw, &sender, all, uid, d.queue_id.as_deref(), &host)
        });
        let message_id = ex.message_id.unwrap_or_default();
        let outcomes = self.record_sent(&sender, &objects, all, &message_id, relay.as_ref())?;
        if outcomes.is_empty() {
            // Nothing recorded (no object with a UID): the relay is not committed either.
        } else if let Some(e) = relay {
            v.effects.push(e);
        }
        v.sent = Some(Sent {
            sender,
            recipients: all.to_vec(),
            objects,
            outcomes,
        });
        Ok(())
    }

    /// Ordinary mail told apart without a parse ([`triage`]): its verdict (only forged
    /// Authentication-Results headers to remove), or None when the message needs the full
    /// reading. Linear in the message and cheap enough to run on a door's async thread.
    pub fn ordinary(&self, d: &Delivery) -> Option<Verdict> {
        if !triage::certainly_no_calendar(d.raw) {
            return None;
        }
        let proof = match &d.trust {
            Trust::Verify(prover, _) => {
                if !triage::clean_header_section(d.raw) {
                    return None;
                }
                prover.forged_results_in(d.raw)
            }
            _ => Proof::default(),
        };
        Some(Verdict::proof_only(proof))
    }

    /// Decides and commits objects already extracted, each carrying its own proof (the
    /// decide + commit half of [`Pipeline::process`], for benchmarks and tools).
    pub fn process_extracted(
        &self,
        recipients: &[String],
        ex: Extracted,
    ) -> Result<Verdict, StoreError> {
        self.process_objects(Some(recipients), &ex, false)
    }

    /// Decides and commits `ex` for `recipients` (None: the message's local To/Cc).
    fn process_objects(
        &self,
        recipients: Option<&[String]>,
        ex: &Extracted,
        sync_freebusy: bool,
    ) -> Result<Verdict, StoreError> {
        let mut v = Verdict {
            sync_freebusy,
            notes: ex.notes.clone(),
            message_id: ex.message_id.clone(),
            had_calendar: !ex.objects.is_empty() || !ex.refused.is_empty(),
            ..Default::default()
        };
        let recipients: Vec<String> = match recipients {
            Some(list) => list.to_vec(),
            None => ex
                .recipients
                .iter()
                .filter(|r| self.config.is_local(r))
                .cloned()
                .collect(),
        };
        v.recipients = recipients.clone();
        if ex.is_report {
            return Ok(v);
        }
        let message_id = ex.message_id.clone().unwrap_or_default();
        // Work per message is bounded: each (recipient, object) pair costs the object's size,
        // and pairs past the budget are refused without touching the store.
        let mut budget = MAX_WORK_BYTES;
        for rcpt in &recipients {
            // Rejections cost one journal line per message, recipient and reason.
            let mut rejected: Vec<Rejections> = Vec::new();
            for r in &ex.refused {
                v.outcomes.push(ObjectOutcome {
                    recipient: ical::mailto(rcpt),
                    method: r.method.clone(),
                    component: r.component.clone(),
                    uid: r.uid.clone(),
                    outcome: Outcome::Rejected,
                    reason: Why::Unread(r.reason.clone()),
                });
                Rejections::add(&mut rejected, v.outcomes.last());
            }
            for found in &ex.objects {
                let cost = found.size.max(1);
                if cost > budget {
                    v.outcomes.push(ObjectOutcome {
                        recipient: ical::mailto(rcpt),
                        method: found.method.as_str().into(),
                        component: found.kind.clone(),
                        uid: found.uid.clone(),
                        outcome: Outcome::Rejected,
                        reason: Why::OverBudget,
                    });
                    Rejections::add(&mut rejected, v.outcomes.last());
                    continue;
                }
                budget -= cost;
                let (outcome, kind) = self.apply_one(
                    rcpt,
                    found,
                    &found.proven,
                    ex.message_id.as_deref(),
                    &message_id,
                    &mut v,
                )?;
                v.outcomes.push(outcome);
                if let Some(kind) = kind {
                    v.rejected_for_proof |= kind.is_authority();
                    Rejections::add(&mut rejected, v.outcomes.last());
                }
            }
            for r in rejected {
                let uid = if r.count == 1 { r.uid } else { "*".into() };
                self.store.commit(&Commit {
                    user: rcpt,
                    uid: &uid,
                    change: Change::Keep,
                    // A journal line only: no object is written, none was relied on.
                    expect: Expect::Any,
                    expect_calendar: None,
                    processed_key: None,
                    journal: &JournalEntry {
                        ts: now(),
                        user: rcpt.to_string(),
                        message_id: message_id.clone(),
                        method: r.method,
                        component: r.component,
                        uid: uid.clone(),
                        outcome: "rejected".into(),
                        reason: r.reason.to_string(),
                        count: r.count,
                    },
                    proposal: None,
                    effects: &[],
                })?;
            }
        }
        Ok(v)
    }

    /// Decides and commits one object for one recipient. A rejection is not journaled here: the
    /// caller writes one summary per reason; its reason comes back for that.
    fn apply_one(
        &self,
        rcpt: &str,
        inc: &Incoming,
        proven: &[String],
        message_id: Option<&str>,
        message_id_s: &str,
        v: &mut Verdict,
    ) -> Result<(ObjectOutcome, Option<Reason>), StoreError> {
        let ts = now();
        let pkey = processed_key(message_id, inc);
        let _guard = self.user_lock(rcpt);
        let mut retries = 0;
        let r = self.retrying(rcpt, &inc.uid, &mut retries, || {
            self.decide_and_commit(rcpt, inc, proven, message_id, message_id_s, &pkey, ts, v)
        });
        v.store_retries += retries;
        r
    }

    /// One attempt of [`Pipeline::apply_one`]: reads the object (and what else the decision
    /// needs) with its version, decides, commits against that version. Nothing reaches `v`
    /// unless the commit succeeds.
    #[allow(clippy::too_many_arguments)]
    fn decide_and_commit(
        &self,
        rcpt: &str,
        inc: &Incoming,
        proven: &[String],
        message_id: Option<&str>,
        message_id_s: &str,
        pkey: &str,
        ts: i64,
        v: &mut Verdict,
    ) -> Result<(ObjectOutcome, Option<Reason>), StoreError> {
        let mut out = ObjectOutcome {
            recipient: ical::mailto(rcpt),
            method: inc.method.as_str().into(),
            component: inc.kind.clone(),
            uid: inc.uid.clone(),
            outcome: Outcome::Ignored,
            reason: Why::Itip(Reason::Duplicate),
        };
        let journal = |outcome: &str, reason: &str| JournalEntry {
            ts,
            user: rcpt.to_string(),
            message_id: message_id_s.to_string(),
            method: inc.method.as_str().into(),
            component: inc.kind.clone(),
            uid: inc.uid.clone(),
            outcome: outcome.into(),
            reason: reason.into(),
            count: 1,
        };
        if self.store.is_processed(rcpt, pkey)? {
            out.outcome = Outcome::Ignored;
            out.reason = Why::Itip(Reason::Duplicate);
            return Ok((out, None));
        }
        let ctx = Context {
            recipient: rcpt,
            proven,
            delegates: &self.config.policy.delegate_map,
            delete_on_cancel: self.config.itip.delete_on_cancel,
            now: ts,
        };
        if inc.kind == "VFREEBUSY" && inc.method == Method::Request {
            return self.freebusy_request(rcpt, inc, &ctx, message_id, pkey, out, v, journal);
        }
        let mut rejected = None;
        let (stored, version) = if inc.uid.is_empty() {
            (None, 0)
        } else {
            self.store.get_versioned(rcpt, &inc.uid)?
        };
        // Every commit below is against the version the decision read.
        let expect = Expect::Version(version);
        // Set when the decision read other objects of the calendar too.
        let mut expect_calendar = None;
        let mut decision = itip::decide(stored.as_ref(), inc, &ctx);
        if let Decision::Applied {
            object: Some(_),
            changed: true,
            ..
        } = &decision
        {
            if stored.is_none() {
                match self.may_create(rcpt, inc, proven) {
                    Ok(read_calendar) => expect_calendar = read_calendar,
                    Err(r) => decision = Decision::Rejected(r),
                }
            }
        }
        // Plugins, still inside the user's lock: they may change the decision; their effects
        // are committed with it.
        let mut hooked = crate::plugins::Hooked::default();
        if !self.config.plugin_set.is_empty() && !matches!(decision, Decision::Rejected(_)) {
            let calendar = imipd_core::plugin::Calendar::new(&*self.store, rcpt);
            let hook = imipd_core::plugin::BeforeCommit {
                recipient: rcpt,
                incoming: inc,
                stored: stored.as_ref(),
                proven,
                message_id,
                now: ts,
                max_instances: self.config.itip.max_instances,
                decision: &mut decision,
                calendar: &calendar,
            };
            let host = || (self.config.authserv_id.clone()).unwrap_or_else(crate::proof::hostname);
            hooked = self.config.plugin_set.before_commit(hook, &host)?;
            // The earliest read of the calendar is what the commit must still find.
            expect_calendar = match (expect_calendar, hooked.calendar_read) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out.outcome = decision.outcome();
        out.reason = Why::of(&decision);
        let entry = journal(out.outcome.as_str(), &out.reason.to_string());
        match decision {
            Decision::Applied {
                object,
                changed,
                replies,
                proposal,
                ..
            } => {
                let busy;
                let change = match (&object, changed) {
                    (Some(obj), true) => {
                        let unchanged_times = stored.as_ref().is_some_and(|s| {
                            object_fingerprint(s, rcpt) == object_fingerprint(obj, rcpt)
                        });
                        busy = if unchanged_times {
                            None
                        } else {
                            Some(itip::busy_periods(
                                obj,
                                rcpt,
                                self.config.itip.max_instances,
                            ))
                        };
                        match &busy {
                            Some(b) => Change::Put(obj, b),
                            None => Change::PutKeepBusy(obj),
                        }
                    }
                    (None, true) => Change::Delete,
                    _ => Change::Keep,
                };
                let mut effects = self.reply_effects(rcpt, &inc.uid, &replies, message_id);
                effects.append(&mut hooked.effects);
                self.store.commit(&Commit {
                    user: rcpt,
                    uid: &inc.uid,
                    change,
                    expect,
                    expect_calendar,
                    processed_key: Some(pkey),
                    journal: &entry,
                    proposal: proposal.as_ref(),
                    effects: &effects,
                })?;
                v.effects.extend(effects);
            }
            Decision::IgnoredWithReply(_, replies) => {
                let mut effects = self.reply_effects(rcpt, &inc.uid, &replies, message_id);
                effects.append(&mut hooked.effects);
                self.store.commit(&Commit {
                    user: rcpt,
                    uid: &inc.uid,
                    change: Change::Keep,
                    expect,
                    expect_calendar,
                    processed_key: Some(pkey),
                    journal: &entry,
                    proposal: None,
                    effects: &effects,
                })?;
                v.effects.extend(effects);
            }
            Decision::Ignored(_) => {
                self.store.commit(&Commit {
                    user: rcpt,
                    uid: &inc.uid,
                    change: Change::Keep,
                    // Ignored because of what the object was: had it changed meanwhile, the
                    // message is decided again rather than dropped.
                    expect,
                    expect_calendar,
                    processed_key: None,
                    journal: &entry,
                    proposal: None,
                    effects: &hooked.effects,
                })?;
                v.effects.append(&mut hooked.effects);
            }
            Decision::Rejected(reason) => rejected = Some(reason),
        }
        Ok((out, rejected))
    }

    #[allow(clippy::too_many_arguments)]
    fn freebusy_request(
        &self,
        rcpt: &str,
        inc: &Incoming,
        ctx: &Context,
        message_id: Option<&str>,
        pkey: &str,
        mut out: ObjectOutcome,
        v: &mut Verdict,
        journal: impl Fn(&str, &str) -> JournalEntry,
    ) -> Result<(ObjectOutcome, Option<Reason>), StoreError> {
        match itip::check_freebusy_request(inc, ctx) {
            Ok((from, to, org)) => {
                let busy = itip::merge_busy(self.store.busy(rcpt, from, to)?, from, to);
                let reply = itip::freebusy_reply(inc, ctx, &org, from, to, &busy);
                out.outcome = Outcome::Applied;
                out.reason = if v.sync_freebusy {
                    Why::FreeBusyAnswered {
                        periods: busy.len(),
                    }
                } else {
                    Why::FreeBusyReplied {
                        periods: busy.len(),
                        to: reply.to.clone(),
                    }
                };
                // A synchronous door answers in its response; mail gets an iMIP reply, committed
                // with the decision.
                let effects = if v.sync_freebusy {
                    Vec::new()
                } else {
                    self.reply_effects(rcpt, &inc.uid, std::slice::from_ref(&reply), message_id)
                };
                self.store.commit(&Commit {
                    user: rcpt,
                    uid: &inc.uid,
                    change: Change::Keep,
                    // The reply tells the busy time as it was read; it writes no object, and
                    // a second copy of the request is still caught by its processed key.
                    expect: Expect::Any,
                    expect_calendar: None,
                    processed_key: Some(pkey),
                    journal: &journal(out.outcome.as_str(), &out.reason.to_string()),
                    proposal: None,
                    effects: &effects,
                })?;
                if v.sync_freebusy {
                    v.freebusy.push(FreeBusyAnswer {
                        recipient: rcpt.to_string(),
                        calendar: reply.calendar.to_ical(),
                    });
                }
                v.effects.extend(effects);
            }
            Err(r) => {
                out.outcome = Outcome::Rejected;
                out.reason = Why::Itip(r.clone());
                return Ok((out, Some(r)));
            }
        }
        Ok((out, None))
    }

    /// Site policy: who may put a new object into `rcpt`'s calendar. Ok carries the calendar
    /// version when the answer was read from the calendar's other objects (policy "known"), for
    /// the commit to expect.
    fn may_create(
        &self,
        rcpt: &str,
        inc: &Incoming,
        proven: &[String],
    ) -> Result<Option<u64>, Reason> {
        let p = &self.config.policy;
        let domain = rcpt.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let mode = p
            .create_for
            .get(rcpt)
            .or_else(|| p.create_for.get(domain))
            .copied()
            .unwrap_or(p.create);
        let allowed_by_list = proven.iter().any(|a| {
            p.allow.iter().any(|e| {
                let e = e.to_ascii_lowercase();
                match e.strip_prefix('@') {
                    Some(d) => a.ends_with(&format!("@{d}")),
                    None => ical::norm_addr(&e) == *a,
                }
            })
        });
        let mut read_calendar = None;
        let ok = match mode {
            CreateMode::Everyone => true,
            CreateMode::Nobody => false,
            CreateMode::Local => {
                allowed_by_list
                    || proven
                        .iter()
                        .any(|a| !self.config.local_domains.is_empty() && self.config.is_local(a))
            }
            CreateMode::Known => {
                allowed_by_list || {
                    // The version before the objects: a change after it is seen at commit.
                    let known = self.store.calendar_version(rcpt).and_then(|cv| {
                        let objs = self.store.list(rcpt)?;
                        read_calendar = Some(cv);
                        Ok(objs.iter().any(|o| {
                            o.components.iter().any(|c| {
                                c.props
                                    .iter()
                                    .filter(|p| p.name == "ORGANIZER" || p.name == "ATTENDEE")
                                    .any(|p| proven.contains(&ical::norm_addr(&p.value)))
                            })
                        }))
                    });
                    known.unwrap_or(false)
                }
            }
        };
        if ok {
            Ok(read_calendar)
        } else {
            Err(Reason::Policy(format!(
                "{} may not create objects in {rcpt}'s calendar (policy \"{}\"); {} was not stored",
                if proven.is_empty() {
                    "an unproven sender".to_string()
                } else {
                    proven.join(", ")
                },
                mode.as_str(),
                inc.uid
            )))
        }
    }

    /// The iMIP replies of one decision as effects of `rcpt`'s object `uid`.
    fn reply_effects(
        &self,
        rcpt: &str,
        uid: &str,
        replies: &[OutMessage],
        in_reply_to: Option<&str>,
    ) -> Vec<Effect> {
        if replies.is_empty() {
            return Vec::new();
        }
        let host = self
            .config
            .authserv_id
            .clone()
            .unwrap_or_else(crate::proof::hostname);
        replies
            .iter()
            .map(|m| {
                crate::outbound::outgoing(&self.config, m, in_reply_to)
                    .into_effect(rcpt, uid, &host)
            })
            .collect()
    }

    /// Records iTIP that a local user sent (authenticated submission, `imipd send`) in their
    /// own calendar: one commit per object with a UID; `relay` (an iSchedule relay of the
    /// message) is committed with the last.
    pub fn record_sent(
        &self,
        sender: &str,
        objects: &[Incoming],
        recipients: &[String],
        message_id: &str,
        relay: Option<&Effect>,
    ) -> Result<Vec<ObjectOutcome>, StoreError> {
        let mut outs = Vec::new();
        // The relay goes with the last copy: a store error before it tempfails the message
        // with no relay committed, so the sender's retry does not relay twice.
        let last = objects.iter().rposition(|o| !o.uid.is_empty());
        for (i, inc) in objects.iter().enumerate() {
            if inc.uid.is_empty() {
                continue;
            }
            let _guard = self.user_lock(sender);
            let mut retries = 0;
            let effects = relay
                .filter(|_| Some(i) == last)
                .map(std::slice::from_ref)
                .unwrap_or(&[]);
            let o = self.retrying(sender, &inc.uid, &mut retries, || {
                self.record_one_sent(inc, sender, recipients, message_id, effects)
            })?;
            outs.push(o);
        }
        Ok(outs)
    }

    /// One attempt of [`Pipeline::record_sent`] for one object.
    fn record_one_sent(
        &self,
        inc: &Incoming,
        sender: &str,
        recipients: &[String],
        message_id: &str,
        effects: &[Effect],
    ) -> Result<ObjectOutcome, StoreError> {
        let (stored, version) = self.store.get_versioned(sender, &inc.uid)?;
        let d = itip::record_sent(stored.as_ref(), inc, sender, recipients);
        let o = ObjectOutcome {
            recipient: ical::mailto(sender),
            method: inc.method.as_str().into(),
            component: inc.kind.clone(),
            uid: inc.uid.clone(),
            outcome: d.outcome(),
            reason: Why::Sent(Box::new(Why::of(&d))),
        };
        let entry = JournalEntry {
            ts: now(),
            user: sender.to_string(),
            message_id: message_id.to_string(),
            method: o.method.clone(),
            component: o.component.clone(),
            uid: o.uid.clone(),
            outcome: o.outcome.to_string(),
            reason: o.reason.to_string(),
            count: 1,
        };
        let busy;
        let change = match &d {
            Decision::Applied {
                object: Some(obj),
                changed: true,
                ..
            } => {
                busy = itip::busy_periods(obj, sender, self.config.itip.max_instances);
                Change::Put(obj, &busy)
            }
            _ => Change::Keep,
        };
        self.store.commit(&Commit {
            user: sender,
            uid: &inc.uid,
            change,
            expect: Expect::Version(version),
            expect_calendar: None,
            processed_key: None,
            journal: &entry,
            proposal: None,
            effects,
        })?;
        Ok(o)
    }

    /// Records the per-recipient delivery status of something `user` sent (RFC 6638 3.2.9
    /// SCHEDULE-STATUS on the ATTENDEE, or on the ORGANIZER for a reply) in `user`'s copy of
    /// `uid`. Returns whether the copy changed.
    pub fn record_schedule_status(
        &self,
        user: &str,
        uid: &str,
        statuses: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let _guard = self.user_lock(user);
        let mut retries = 0;
        self.retrying(user, uid, &mut retries, || {
            self.schedule_status_once(user, uid, statuses)
        })
    }

    /// One attempt of [`Pipeline::record_schedule_status`].
    fn schedule_status_once(
        &self,
        user: &str,
        uid: &str,
        statuses: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let (Some(mut obj), version) = self.store.get_versioned(user, uid)? else {
            return Ok(false);
        };
        let mut changed = false;
        for c in obj.components.iter_mut() {
            for p in c.props.iter_mut() {
                if p.name != "ATTENDEE" && p.name != "ORGANIZER" {
                    continue;
                }
                let addr = ical::norm_addr(&p.value);
                if let Some((_, code)) = statuses.iter().find(|(r, _)| ical::norm_addr(r) == addr) {
                    if p.param("SCHEDULE-STATUS") != Some(code.as_str()) {
                        p.set_param("SCHEDULE-STATUS", code.clone());
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            return Ok(false);
        }
        let entry = JournalEntry {
            ts: now(),
            user: user.to_string(),
            message_id: String::new(),
            method: "SCHEDULE-STATUS".into(),
            component: obj.kind.clone(),
            uid: uid.to_string(),
            outcome: "applied".into(),
            reason: statuses
                .iter()
                .map(|(r, c)| format!("{} {c}", ical::norm_addr(r)))
                .collect::<Vec<_>>()
                .join(", "),
            count: 1,
        };
        self.store.commit(&Commit {
            user,
            uid,
            change: Change::PutKeepBusy(&obj),
            expect: Expect::Version(version),
            expect_calendar: None,
            processed_key: None,
            journal: &entry,
            proposal: None,
            effects: &[],
        })?;
        Ok(true)
    }

    /// Stores each UID of a calendar file as one object of `user` (replacing any stored one).
    pub fn import(&self, user: &str, text: &str) -> Result<Vec<String>, String> {
        let cals = ical::parse(text).map_err(|e| format!("cannot parse calendar: {e}"))?;
        let mut uids = Vec::new();
        for cal in cals {
            let timezones: Vec<Component> = cal.subs_named("VTIMEZONE").cloned().collect();
            let mut groups: Vec<StoredObject> = Vec::new();
            // UID -> its place in `groups` (a linear search would make a big file quadratic).
            let mut index: std::collections::HashMap<String, usize> =
                std::collections::HashMap::new();
            for c in cal
                .subs
                .iter()
                .filter(|c| matches!(c.name.as_str(), "VEVENT" | "VTODO" | "VJOURNAL"))
            {
                let Some(uid) = c.uid() else {
                    return Err(format!("a {} has no UID", c.name));
                };
                match index.get(uid) {
                    Some(&i) => groups[i].components.push(c.clone()),
                    None => {
                        index.insert(uid.to_string(), groups.len());
                        groups.push(StoredObject {
                            uid: uid.to_string(),
                            kind: c.name.clone(),
                            components: vec![c.clone()],
                            timezones: Vec::new(),
                            reply_stamps: Default::default(),
                        });
                    }
                }
            }
            for obj in &mut groups {
                obj.timezones = timezones
                    .iter()
                    .filter(|tz| {
                        let id = tz.value("TZID").unwrap_or("");
                        obj.components
                            .iter()
                            .any(|c| c.props.iter().any(|p| p.param("TZID") == Some(id)))
                    })
                    .cloned()
                    .collect();
            }
            // Committed in batches of at most IMPORT_BATCH objects and IMPORT_BATCH_ROWS
            // busy periods: sled applies a batch under a store-wide lock that the doors'
            // reads wait for, so a batch stays small.
            let mut chunk: Vec<(&StoredObject, Vec<itip::Busy>, JournalEntry)> = Vec::new();
            let mut rows = 0;
            let mut objects = groups.iter().peekable();
            while let Some(obj) = objects.next() {
                let busy = itip::busy_periods(obj, user, self.config.itip.max_instances);
                rows += busy.len() + 1;
                let entry = JournalEntry {
                    ts: now(),
                    user: user.to_string(),
                    message_id: String::new(),
                    method: "IMPORT".into(),
                    component: obj.kind.clone(),
                    uid: obj.uid.clone(),
                    outcome: "applied".into(),
                    reason: "imported".into(),
                    count: 1,
                };
                chunk.push((obj, busy, entry));
                if chunk.len() < IMPORT_BATCH
                    && rows < IMPORT_BATCH_ROWS
                    && objects.peek().is_some()
                {
                    continue;
                }
                let commits: Vec<Commit> = chunk
                    .iter()
                    .map(|(obj, busy, entry)| Commit {
                        user,
                        uid: &obj.uid,
                        change: Change::Put(obj, busy),
                        // An import replaces whatever is stored, whatever that is.
                        expect: Expect::Any,
                        expect_calendar: None,
                        processed_key: None,
                        journal: entry,
                        proposal: None,
                        effects: &[],
                    })
                    .collect();
                let _guard = self.user_lock(user);
                self.store.commit_all(&commits).map_err(|e| e.to_string())?;
                uids.extend(chunk.iter().map(|(o, _, _)| o.uid.clone()));
                chunk.clear();
                rows = 0;
            }
        }
        Ok(uids)
    }
}

/// Objects an import commits in one store batch, at most.
const IMPORT_BATCH: usize = 256;
/// Busy periods (plus one per object) an import commits in one store batch, at most.
const IMPORT_BATCH_ROWS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_decided_again_a_bounded_number_of_times() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(crate::store::Sled::open(dir.path()).expect("store"));
        let p = Pipeline::new(store, Arc::new(Config::default()));
        let (mut attempts, mut retries) = (0, 0);
        let r: Result<(), _> = p.retrying("bob@example.org", "u\r\n1", &mut retries, || {
            attempts += 1;
            Err(StoreError::Conflict(
                "object version 1 expected, 2 stored".into(),
            ))
        });
        assert_eq!(attempts, MAX_COMMIT_ATTEMPTS);
        assert_eq!(retries, MAX_COMMIT_ATTEMPTS - 1);
        match r {
            Err(StoreError::Conflict(m)) => assert!(m.contains("after 16 attempts"), "{m}"),
            other => panic!("{other:?}"),
        }
        // A conflict that clears is retried once; other errors are not retried.
        let (mut attempts, mut retries) = (0, 0);
        let r = p.retrying("bob@example.org", "u", &mut retries, || {
            attempts += 1;
            if attempts == 1 {
                Err(StoreError::Conflict("x".into()))
            } else {
                Ok(attempts)
            }
        });
        assert_eq!((r.ok(), retries), (Some(2), 1));
        let mut attempts = 0;
        let r: Result<(), _> = p.retrying("bob@example.org", "u", &mut retries, || {
            attempts += 1;
            Err(StoreError::Io("disk".into()))
        });
        assert!(matches!(r, Err(StoreError::Io(_))));
        assert_eq!(attempts, 1);
    }

    #[test]
    fn reasons_stay_typed_and_read_as_text_at_the_edge() {
        let o = ObjectOutcome {
            recipient: "mailto:bob@example.org".into(),
            method: "REPLY".into(),
            component: "VEVENT".into(),
            uid: "u1".into(),
            outcome: Outcome::Rejected,
            reason: Why::Itip(Reason::PartyCrasher("mallory@example.net".into())),
        };
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(
            json["reason"],
            "mallory@example.net is not an attendee of this object"
        );
        // Rejections of one engine reason share a journal line whatever their details;
        // unreadable parts only when they are the same.
        let other = Why::Itip(Reason::PartyCrasher("eve@example.net".into()));
        assert!(o.reason.same_kind(&other));
        assert!(!o.reason.same_kind(&Why::Itip(Reason::MissingUid)));
        let big = Why::Unread(extract::Unread::TooLarge(10));
        assert!(big.same_kind(&Why::Unread(extract::Unread::TooLarge(10))));
        assert!(!big.same_kind(&Why::Unread(extract::Unread::NoUid)));
        assert_eq!(
            Why::Sent(Box::new(Why::Applied("accepted".into()))).to_string(),
            "outgoing: accepted"
        );
    }
}

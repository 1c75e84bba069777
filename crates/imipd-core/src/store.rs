//! Calendar storage behind a trait, so that a networked backend can replace the embedded one
//! without touching the engine.

use crate::effects::{Effect, EffectLine, PendingEffect};
use crate::ical::{self, Component};
use crate::itip::{Busy, Proposal, StoredObject};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    Io(String),
    /// A stored record could not be decoded.
    Corrupt(String),
    /// The commit expected another version of the object or calendar than the stored one
    /// (another writer came first): nothing was written. The caller re-reads and re-decides.
    Conflict(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(s) => write!(f, "store I/O error: {s}"),
            StoreError::Corrupt(s) => write!(f, "store record corrupt: {s}"),
            StoreError::Conflict(s) => write!(f, "store write conflict: {s}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What happened to one object for one user and why: the audit journal's line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JournalEntry {
    pub ts: i64,
    pub user: String,
    pub message_id: String,
    pub method: String,
    pub component: String,
    pub uid: String,
    pub outcome: String,
    pub reason: String,
    /// How many objects of the message this line stands for (rejections of one kind are
    /// summarized in one line with `uid` "*").
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Which journal lines a reader wants (`imipd journal --user --message-id`).
#[derive(Debug, Clone, Default)]
pub struct JournalFilter {
    /// A normalized address (no `mailto:`).
    pub user: Option<String>,
    /// A Message-ID, without angle brackets.
    pub message_id: Option<String>,
}

impl JournalFilter {
    pub fn matches(&self, e: &JournalEntry) -> bool {
        self.user
            .as_deref()
            .is_none_or(|u| ical::norm_addr(&e.user) == u)
            && self
                .message_id
                .as_deref()
                .is_none_or(|m| bare_message_id(&e.message_id) == m)
    }
}

/// A Message-ID without surrounding space and angle brackets.
pub fn bare_message_id(id: &str) -> &str {
    let t = id.trim();
    t.strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(t)
}

/// The object change of one commit.
pub enum Change<'a> {
    /// Store this object (and these busy periods) for the user.
    Put(&'a StoredObject, &'a [Busy]),
    /// Store this object; its busy periods are those already indexed.
    PutKeepBusy(&'a StoredObject),
    Delete,
    Keep,
}

/// The object version a commit was decided on (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is stored: for writes that do not depend on the stored object (an admin
    /// import replaces it; a journal-only line changes none). Each use says why.
    Any,
    /// The version [`Store::get_versioned`] returned (0: the object was never stored).
    Version(u64),
}

/// One atomic write: object, free/busy index, idempotency marker, journal line, proposal.
/// The versions it expects are checked in the same atomic step: on a mismatch, or when
/// `processed_key` was recorded meanwhile, it fails with [`StoreError::Conflict`] and writes
/// nothing.
pub struct Commit<'a> {
    pub user: &'a str,
    pub uid: &'a str,
    pub change: Change<'a>,
    /// The version of `uid` the decision read.
    pub expect: Expect,
    /// The calendar version ([`Store::calendar_version`]) when the decision read other objects
    /// of the user's calendar (the creation policy "known", busy time); None: not checked.
    pub expect_calendar: Option<u64>,
    /// Marks this message+object as processed for the user.
    pub processed_key: Option<&'a str>,
    pub journal: &'a JournalEntry,
    pub proposal: Option<&'a Proposal>,
    /// Work the decision leaves to be done (replies to mail, relays), durable with the rest.
    pub effects: &'a [Effect],
}

/// One line of the audit journal: a decision, or an attempt at an effect.
#[derive(Debug, Clone, PartialEq)]
pub enum JournalLine {
    Decision(JournalEntry),
    Effect(EffectLine),
}

impl JournalFilter {
    /// Effect lines carry no Message-ID: a filter on one matches decisions only.
    pub fn matches_line(&self, l: &JournalLine) -> bool {
        match l {
            JournalLine::Decision(e) => self.matches(e),
            JournalLine::Effect(e) => {
                self.message_id.is_none()
                    && self
                        .user
                        .as_deref()
                        .is_none_or(|u| ical::norm_addr(&e.user) == u)
            }
        }
    }
}

pub trait Store: Send + Sync {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>> {
        Ok(self.get_versioned(user, uid)?.0)
    }
    /// The object and its version: 0 if it was never stored, bumped by every commit that puts
    /// or deletes it (so a deleted object keeps a version above 0).
    fn get_versioned(&self, user: &str, uid: &str) -> Result<(Option<StoredObject>, u64)>;
    /// The version of the user's calendar: 0 at first, bumped by every commit that puts or
    /// deletes any of its objects. A decision reads it before the objects it looks at, so that
    /// a change made after that read fails its commit.
    fn calendar_version(&self, user: &str) -> Result<u64>;
    /// Every object of a user's calendar.
    fn list(&self, user: &str) -> Result<Vec<StoredObject>>;
    fn commit(&self, c: &Commit) -> Result<()>;
    /// Commits several changes as [`Store::commit`] would one after the other (a bulk
    /// import); a store may make them visible together, and then a conflict in one writes
    /// none of them. Default: one by one.
    fn commit_all(&self, commits: &[Commit]) -> Result<()> {
        commits.iter().try_for_each(|c| self.commit(c))
    }
    fn is_processed(&self, user: &str, key: &str) -> Result<bool>;
    /// Busy periods overlapping [from, to).
    fn busy(&self, user: &str, from: i64, to: i64) -> Result<Vec<Busy>>;
    /// The newest `limit` journal lines (oldest first).
    fn journal(&self, limit: usize) -> Result<Vec<JournalEntry>>;
    /// The newest `limit` journal lines that match `filter` (oldest first).
    fn journal_matching(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalEntry>> {
        let mut v: Vec<JournalEntry> = self
            .journal(usize::MAX)?
            .into_iter()
            .filter(|e| filter.matches(e))
            .collect();
        let skip = v.len().saturating_sub(limit);
        v.drain(..skip);
        Ok(v)
    }
    /// The newest `limit` journal lines of both kinds that match `filter` (oldest first).
    fn journal_lines(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalLine>>;
    /// Effects added without a decision (a relay the milter hands over, replies found in an
    /// older version's queue directory), durable once this returns and the store is flushed.
    fn add_effects(&self, effects: &[Effect]) -> Result<()>;
    /// Up to `limit` pending effects whose `not_before` has come (`now`, UNIX seconds), oldest
    /// first, starting after the effect id `after` (paging; None: from the oldest).
    fn due_effects(
        &self,
        now: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingEffect>>;
    /// Every pending effect, due or not (oldest first, at most `limit`).
    fn pending_effects(&self, limit: usize) -> Result<Vec<PendingEffect>>;
    /// The effect is done: removes it and writes `line`, in one batch. An unknown id (done
    /// by another runner meanwhile) only writes the line.
    fn effect_done(&self, id: &str, line: &EffectLine) -> Result<()>;
    /// The attempt failed but may succeed later: attempts + 1, `not_before` = now +
    /// [`crate::effects::backoff_secs`], and `line`, in one batch.
    fn defer_effect(&self, id: &str, now: i64, line: &EffectLine) -> Result<()>;
    /// Sets the effect aside for good (kept for the administrator, listed by
    /// [`Store::failed_effects`], never retried) and writes `line`, in one batch.
    fn fail_effect(&self, id: &str, line: &EffectLine) -> Result<()>;
    /// The effects set aside (oldest first, at most `limit`).
    fn failed_effects(&self, limit: usize) -> Result<Vec<PendingEffect>>;
    /// How many effects are pending and how many set aside (for the metrics).
    fn effect_counts(&self) -> Result<(usize, usize)>;
    /// Removes the journal lines written before `before` (UNIX seconds); returns how many.
    fn prune_journal(&self, before: i64) -> Result<usize> {
        let _ = before;
        Ok(0)
    }
    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<()>;
    /// A caller is about to commit and then ask for durability ([`Writer`]): a flush that
    /// starts meanwhile may wait a moment for it, so that one sync covers both. A store
    /// without group commit ignores it.
    fn writer_begins(&self) {}
    /// The writer of [`Store::writer_begins`] asks for durability: [`Store::flush`], with the
    /// writer no longer awaited.
    fn writer_flushes(&self) -> Result<()> {
        self.flush()
    }
    /// The writer of [`Store::writer_begins`] goes away without asking for durability.
    fn writer_leaves(&self) {}
    /// How well flushes are grouped: (callers that asked for durability, flushes made). A
    /// store without group commit says (0, 0).
    fn flush_stats(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Remembers a message identifier (an iSchedule-Message-ID with its signer and originator)
    /// until `until`: true the first time, false while an earlier one is still remembered
    /// (a replay). Expired identifiers are forgotten.
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool>;
    /// Forgets an identifier [`Store::remember_message_id`] remembered, for a request that
    /// failed after it (a store error): the sender's retry is then not taken for a replay.
    fn forget_message_id(&self, key: &str) -> Result<()> {
        let _ = key;
        Ok(())
    }
}

/// A unit of work that commits and then makes its commits durable (a message, an iSchedule
/// request): from [`Writer::begin`] to [`Writer::flush`] the store knows a flush request is
/// coming and can cover it with one that starts meanwhile (group commit). Dropped without a
/// flush (nothing committed, an error), it tells the store not to wait for it.
pub struct Writer<'a> {
    store: &'a dyn Store,
    active: bool,
}

impl<'a> Writer<'a> {
    pub fn begin(store: &'a dyn Store) -> Writer<'a> {
        store.writer_begins();
        Writer {
            store,
            active: true,
        }
    }

    /// Makes everything committed so far durable ([`Store::flush`]).
    pub fn flush(mut self) -> Result<()> {
        self.active = false;
        self.store.writer_flushes()
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.active {
            self.store.writer_leaves();
        }
    }
}

/// One VCALENDAR holding the object's time zones and components, with METHOD if given.
pub fn object_to_ical(obj: &StoredObject, method: Option<&str>) -> String {
    let mut cal = Component::new("VCALENDAR");
    cal.props.push(ical::Prop::new("VERSION", "2.0"));
    cal.props
        .push(ical::Prop::new("PRODID", "-//imipd//imipd//EN"));
    if let Some(m) = method {
        cal.props.push(ical::Prop::new("METHOD", m));
    }
    cal.subs.extend(obj.timezones.iter().cloned());
    cal.subs.extend(obj.components.iter().cloned());
    cal.to_ical()
}

/// Many objects as one VCALENDAR (time zones de-duplicated by TZID).
pub fn objects_to_ical(objs: &[StoredObject]) -> String {
    let mut cal = Component::new("VCALENDAR");
    cal.props.push(ical::Prop::new("VERSION", "2.0"));
    cal.props
        .push(ical::Prop::new("PRODID", "-//imipd//imipd//EN"));
    let mut tzids: Vec<String> = Vec::new();
    for o in objs {
        for tz in &o.timezones {
            let id = tz.value("TZID").unwrap_or("").to_string();
            if !tzids.contains(&id) {
                tzids.push(id);
                cal.subs.push(tz.clone());
            }
        }
    }
    for o in objs {
        cal.subs.extend(o.components.iter().cloned());
    }
    cal.to_ical()
}

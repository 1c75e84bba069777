//! The plugin seam: how a crate under `plugins/` takes part in the pipeline.
//!
//! A plugin is a [`Plugin`] value built from its own `[plugins.NAME]` config table by a
//! constructor the plugin crate exports (the daemon keeps the list of linked plugins, name ->
//! constructor). Plugin crates depend on this crate only, never on the daemon.
//!
//! For each calendar object and local recipient, inside that recipient's critical section (no
//! other message for the same calendar is read, decided or committed meanwhile):
//!
//! ```text
//!   store read -> itip::decide -> site policy
//!     -> every plugin's before_commit, in the daemon's order   (may change the decision,
//!                                                              may read the calendar)
//!     -> every plugin's effects, with the final outcome         (payloads to carry out later)
//!     -> ONE store commit: object, busy index, journal, processed log, and those effects
//!   after the commit, the effects runner calls run_effect(payload) on the plugin, retrying
//!   with backoff until it succeeds or fails for good
//! ```
//!
//! The two hook points and what they are for:
//!
//! - [`Plugin::before_commit`]: change what is about to be stored and answered. Resource
//!   booking lives here: it reads the resource calendar's busy time through
//!   [`BeforeCommit::busy_of_others`] (or [`BeforeCommit::calendar`]), sets the resource's
//!   PARTSTAT in [`BeforeCommit::object_mut`], declines conflicting instances, and adds the
//!   iTIP REPLY for the organizer with [`BeforeCommit::add_reply`]. Reading the calendar is recorded
//!   ([`Calendar::was_read`]): such a decision depends on more than its own object, so the
//!   pipeline commits it against the calendar's version, and two bookings of one room cannot
//!   both win.
//! - [`Plugin::effects`] and [`Plugin::run_effect`]: durable work after the commit. A CalDAV
//!   mirror returns one payload per applied object (its UID and iCalendar text, or a deletion)
//!   from `effects`; the payload is committed with the object, so a crash delays the mirror but
//!   never loses it; `run_effect` later PUTs or DELETEs it with the plugin's own HTTP client.
//!
//! Rules a plugin keeps:
//! - `before_commit` and `effects` run while the calendar user's lock is held: no network, no
//!   waiting on anything slow. Reads of the store through [`Calendar`] are fine.
//! - `effects` returns payloads only; the work happens in `run_effect`, which may block (it is
//!   called on a thread of its own, with the plugin's own timeouts) and is called *at least
//!   once* per payload: make it idempotent (a PUT of the same text, a line that may repeat).
//! - Everything from the input that a plugin writes to a log line or a header goes through
//!   [`crate::sanitize::clean`].

use crate::effects::EffectError;
use crate::itip::{busy_periods, Busy, Decision, Incoming, OutMessage, StoredObject};
use crate::store::{Store, StoreError};
use std::cell::Cell;

/// One plugin, as enabled by a `[plugins.NAME]` section. Both hooks have defaults that do
/// nothing, so a plugin implements only what it needs.
pub trait Plugin: Send + Sync {
    /// Before the commit, inside the recipient's critical section: may change the decision
    /// (its object, its replies, or the decision itself) and read the recipient's calendar.
    /// Called for every decision that will be committed (applied or ignored); rejected objects
    /// and free/busy requests never reach plugins.
    ///
    /// An error aborts the message the way a store error does: nothing of this object is
    /// committed, and the front door asks the sender to retry (a temporary failure). Use it for
    /// "cannot decide now", not to refuse an object: refusing is a changed decision.
    fn before_commit(&self, hook: &mut BeforeCommit<'_>) -> Result<(), PluginError> {
        let _ = hook;
        Ok(())
    }

    /// After every plugin's `before_commit`, still before the commit: the effects this outcome
    /// leaves to this plugin, as opaque payloads that [`Plugin::run_effect`] understands. They
    /// are committed with the object (as [`crate::effects::Effect`]s of kind
    /// `Plugin(NAME)`), so they happen at least once, or stay queued.
    fn effects(&self, done: &Committed<'_>) -> Vec<Vec<u8>> {
        let _ = done;
        Vec::new()
    }

    /// Carries out one payload returned by [`Plugin::effects`], after the commit. A temporary
    /// error is retried with backoff; a permanent one ([`EffectError::permanent`]) sets the
    /// effect aside for the administrator.
    fn run_effect(&self, payload: &[u8]) -> Result<(), EffectError> {
        let _ = payload;
        Ok(())
    }
}

/// Why a plugin could not act on a decision now (the message is retried later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub message: String,
}

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        PluginError {
            message: message.into(),
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PluginError {}

impl From<StoreError> for PluginError {
    fn from(e: StoreError) -> Self {
        PluginError::new(e.to_string())
    }
}

/// A problem in a plugin's `[plugins.NAME]` table, returned by the plugin's constructor. The
/// daemon reports it as a config error naming `plugins.NAME.KEY` and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key inside the plugin's table (`spool`, `resource.mode`); `None`: the table itself.
    pub key: Option<String>,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: Option<&str>, message: impl Into<String>) -> Self {
        ConfigIssue {
            key: key.map(str::to_string),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{k}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Read access to the recipient's calendar during `before_commit`. Every read is recorded:
/// a decision that looked at other objects or at busy time is committed against the whole
/// calendar's version, not only its own object's.
pub struct Calendar<'a> {
    store: &'a dyn Store,
    user: &'a str,
    /// The calendar's version as of the first read (read before the data, so that any write
    /// after it makes the commit conflict).
    read: Cell<Option<u64>>,
}

impl<'a> Calendar<'a> {
    /// The calendar of `user` (a normalized address) in `store`.
    pub fn new(store: &'a dyn Store, user: &'a str) -> Self {
        Calendar {
            store,
            user,
            read: Cell::new(None),
        }
    }

    /// Notes the calendar's version before the first read.
    fn reading(&self) -> Result<(), StoreError> {
        if self.read.get().is_none() {
            self.read.set(Some(self.store.calendar_version(self.user)?));
        }
        Ok(())
    }

    /// The calendar user (normalized address, no `mailto:`).
    pub fn user(&self) -> &str {
        self.user
    }

    /// Busy periods of the calendar overlapping [from, to) (UNIX seconds), as the free/busy
    /// index holds them (only what the user accepted or tentatively accepted).
    pub fn busy(&self, from: i64, to: i64) -> Result<Vec<Busy>, StoreError> {
        self.reading()?;
        self.store.busy(self.user, from, to)
    }

    /// Another stored object of the calendar.
    pub fn get(&self, uid: &str) -> Result<Option<StoredObject>, StoreError> {
        self.reading()?;
        self.store.get(self.user, uid)
    }

    /// Every object of the calendar.
    pub fn list(&self) -> Result<Vec<StoredObject>, StoreError> {
        self.reading()?;
        self.store.list(self.user)
    }

    /// Whether any plugin read the calendar: the pipeline then commits against the calendar's
    /// version.
    pub fn was_read(&self) -> bool {
        self.read.get().is_some()
    }

    /// The calendar's version when a plugin first read it (`None`: not read), which the
    /// commit then expects.
    pub fn read_version(&self) -> Option<u64> {
        self.read.get()
    }
}

/// What `before_commit` sees and may change.
pub struct BeforeCommit<'a> {
    /// The local calendar user whose calendar this is (normalized address, no `mailto:`).
    pub recipient: &'a str,
    /// The iTIP object received.
    pub incoming: &'a Incoming,
    /// The object as stored before this message (`None`: new).
    pub stored: Option<&'a StoredObject>,
    /// Addresses proven to have sent the message (normalized).
    pub proven: &'a [String],
    /// The message's Message-ID (or iSchedule-Message-ID), if any.
    pub message_id: Option<&'a str>,
    /// Current time, UNIX seconds (use it for DTSTAMP of replies).
    pub now: i64,
    /// Occurrences of one object expanded into busy time at most (`[itip] max_instances`), for
    /// a plugin that expands the incoming object itself (see [`crate::itip::busy_periods`]).
    pub max_instances: usize,
    /// The engine's decision, after site policy and the plugins before this one. A plugin may
    /// replace it (turn an applied request into a rejection, say); for the common changes use
    /// [`BeforeCommit::object_mut`] and [`BeforeCommit::add_reply`].
    pub decision: &'a mut Decision,
    /// The recipient's calendar, for reads beyond `stored`.
    pub calendar: &'a Calendar<'a>,
}

impl BeforeCommit<'_> {
    /// Busy time of the recipient's calendar overlapping [from, to), without the periods of
    /// the object being decided as it was stored before this message: what this object would
    /// conflict with (a rescheduled booking does not collide with its own old time). Reads the
    /// calendar, like [`Calendar::busy`].
    pub fn busy_of_others(&self, from: i64, to: i64) -> Result<Vec<Busy>, StoreError> {
        let mut busy = self.calendar.busy(from, to)?;
        if let Some(stored) = self.stored {
            // The index holds one entry per period of each object, so removing each own period
            // once leaves another object's period at the same time in place.
            for own in busy_periods(stored, self.recipient, self.max_instances) {
                if own.end > from && own.start < to {
                    if let Some(i) = busy.iter().position(|b| *b == own) {
                        busy.remove(i);
                    }
                }
            }
        }
        Ok(busy)
    }

    /// The object about to be stored, to change it; `None` when the decision stores nothing
    /// (ignored, or a deletion). Taking it marks the decision as changing the calendar, so what
    /// the plugin changes is written even when the engine itself changed nothing.
    pub fn object_mut(&mut self) -> Option<&mut StoredObject> {
        match self.decision {
            Decision::Applied {
                object: Some(obj),
                changed,
                ..
            } => {
                *changed = true;
                Some(obj)
            }
            _ => None,
        }
    }

    /// The object about to be stored, to look at; `None` as for [`BeforeCommit::object_mut`].
    /// An unchanged object is `Some` too (the decision then stores nothing new).
    pub fn object(&self) -> Option<&StoredObject> {
        match &*self.decision {
            Decision::Applied {
                object: Some(obj), ..
            } => Some(obj),
            _ => None,
        }
    }

    /// Sends `reply` along with the decision (an iTIP REPLY to the organizer, say; it is built
    /// into iMIP and sent after the commit like the engine's own replies). An ignored decision
    /// becomes one that is ignored with a reply.
    pub fn add_reply(&mut self, reply: OutMessage) {
        match self.decision {
            Decision::Applied { replies, .. } | Decision::IgnoredWithReply(_, replies) => {
                replies.push(reply)
            }
            Decision::Ignored(reason) => {
                *self.decision = Decision::IgnoredWithReply(reason.clone(), vec![reply]);
            }
            // Rejected decisions never reach plugins, and a plugin that rejects has chosen not
            // to answer.
            Decision::Rejected(_) => {}
        }
    }
}

/// What the commit will do to the object, as `effects` sees it.
#[derive(Debug, Clone, Copy)]
pub enum ObjectChange<'a> {
    /// This object (master and overrides) is stored; [`crate::store::object_to_ical`] gives
    /// its iCalendar text.
    Stored(&'a StoredObject),
    /// The object is deleted (a CANCEL with `[itip] delete_on_cancel`).
    Deleted,
    /// The calendar keeps what it had (an ignored message, or nothing changed).
    Unchanged,
}

/// The final outcome of one object for one recipient, about to be committed.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    /// The calendar user (normalized address, no `mailto:`).
    pub recipient: &'a str,
    pub uid: &'a str,
    /// The iTIP method received (`REQUEST`, `REPLY`, ...).
    pub method: &'a str,
    /// `applied` or `ignored`, as in the journal and `imipd process` output.
    pub outcome: crate::itip::Outcome,
    /// The reason text, as in the journal.
    pub reason: &'a str,
    pub change: ObjectChange<'a>,
    pub message_id: Option<&'a str>,
    /// UNIX seconds.
    pub now: i64,
}

impl<'a> Committed<'a> {
    /// The change a decision commits: what `effects` is told.
    pub fn change_of(decision: &'a Decision) -> ObjectChange<'a> {
        match decision {
            Decision::Applied {
                object: Some(obj),
                changed: true,
                ..
            } => ObjectChange::Stored(obj),
            Decision::Applied {
                object: None,
                changed: true,
                ..
            } => ObjectChange::Deleted,
            _ => ObjectChange::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::itip::{Method, Reason};
    use crate::store::{Commit, JournalEntry};
    use std::sync::Mutex;

    /// A store whose calendar has these busy periods (one busy period [from, to) of each
    /// query when empty), counting reads.
    #[derive(Default)]
    struct OneBusy {
        periods: Vec<Busy>,
        reads: Mutex<u32>,
    }

    impl Store for OneBusy {
        fn get_versioned(
            &self,
            _: &str,
            _: &str,
        ) -> crate::store::Result<(Option<StoredObject>, u64)> {
            Ok((None, 0))
        }
        fn calendar_version(&self, _: &str) -> crate::store::Result<u64> {
            Ok(7)
        }
        fn list(&self, _: &str) -> crate::store::Result<Vec<StoredObject>> {
            Ok(Vec::new())
        }
        fn commit(&self, _: &Commit) -> crate::store::Result<()> {
            Ok(())
        }
        fn is_processed(&self, _: &str, _: &str) -> crate::store::Result<bool> {
            Ok(false)
        }
        fn busy(&self, _: &str, from: i64, to: i64) -> crate::store::Result<Vec<Busy>> {
            *self.reads.lock().unwrap() += 1;
            if !self.periods.is_empty() {
                let overlapping = self.periods.iter().filter(|b| b.end > from && b.start < to);
                return Ok(overlapping.copied().collect());
            }
            Ok(vec![Busy {
                start: from,
                end: to,
                tentative: false,
            }])
        }
        fn journal(&self, _: usize) -> crate::store::Result<Vec<JournalEntry>> {
            Ok(Vec::new())
        }
        fn flush(&self) -> crate::store::Result<()> {
            Ok(())
        }
        fn remember_message_id(&self, _: &str, _: i64, _: i64) -> crate::store::Result<bool> {
            Ok(true)
        }
        // The effect queue: not read by hooks (this store holds none).
        fn journal_lines(
            &self,
            _: &crate::store::JournalFilter,
            _: usize,
        ) -> crate::store::Result<Vec<crate::store::JournalLine>> {
            Ok(Vec::new())
        }
        fn add_effects(&self, _: &[crate::effects::Effect]) -> crate::store::Result<()> {
            Ok(())
        }
        fn due_effects(
            &self,
            _: i64,
            _: Option<&str>,
            _: usize,
        ) -> crate::store::Result<Vec<crate::effects::PendingEffect>> {
            Ok(Vec::new())
        }
        fn pending_effects(
            &self,
            _: usize,
        ) -> crate::store::Result<Vec<crate::effects::PendingEffect>> {
            Ok(Vec::new())
        }
        fn effect_done(&self, _: &str, _: &crate::effects::EffectLine) -> crate::store::Result<()> {
            Ok(())
        }
        fn defer_effect(
            &self,
            _: &str,
            _: i64,
            _: &crate::effects::EffectLine,
        ) -> crate::store::Result<()> {
            Ok(())
        }
        fn fail_effect(&self, _: &str, _: &crate::effects::EffectLine) -> crate::store::Result<()> {
            Ok(())
        }
        fn failed_effects(
            &self,
            _: usize,
        ) -> crate::store::Result<Vec<crate::effects::PendingEffect>> {
            Ok(Vec::new())
        }
        fn effect_counts(&self) -> crate::store::Result<(usize, usize)> {
            Ok((0, 0))
        }
    }

    fn incoming() -> Incoming {
        Incoming {
            method: Method::Request,
            kind: "VEVENT".into(),
            uid: "u1".into(),
            components: Vec::new(),
            timezones: Default::default(),
        }
    }

    fn reply() -> OutMessage {
        OutMessage {
            from: "room@example.org".into(),
            to: "alice@example.org".into(),
            method: Method::Reply,
            calendar: crate::ical::Component::new("VCALENDAR"),
            summary: "accepted".into(),
        }
    }

    fn hook<'a>(
        inc: &'a Incoming,
        decision: &'a mut Decision,
        calendar: &'a Calendar<'a>,
    ) -> BeforeCommit<'a> {
        BeforeCommit {
            recipient: "room@example.org",
            incoming: inc,
            stored: None,
            proven: &[],
            message_id: None,
            now: 0,
            max_instances: 10,
            decision,
            calendar,
        }
    }

    #[test]
    fn calendar_records_reads() {
        let store = OneBusy::default();
        let cal = Calendar::new(&store, "room@example.org");
        assert!(!cal.was_read());
        assert_eq!(cal.busy(10, 20).unwrap().len(), 1);
        assert!(cal.was_read());
        assert_eq!(*store.reads.lock().unwrap(), 1);
    }

    #[test]
    fn busy_of_others_leaves_out_the_object_itself() {
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u1\r\nDTSTART:20260302T100000Z\r\n\
                    DTEND:20260302T110000Z\r\nORGANIZER:mailto:alice@example.org\r\n\
                    ATTENDEE;PARTSTAT=ACCEPTED:mailto:room@example.org\r\nEND:VEVENT\r\n\
                    END:VCALENDAR\r\n";
        let cal = crate::ical::parse(text).unwrap().remove(0);
        let stored = StoredObject {
            uid: "u1".into(),
            kind: "VEVENT".into(),
            components: cal.subs,
            ..Default::default()
        };
        let own = busy_periods(&stored, "room@example.org", 10);
        assert_eq!(own.len(), 1);
        let other = Busy {
            start: own[0].end,
            end: own[0].end + 3600,
            tentative: false,
        };
        // Another object booked at the very same time, and one right after.
        let store = OneBusy {
            periods: vec![own[0], own[0], other],
            ..Default::default()
        };
        let calendar = Calendar::new(&store, "room@example.org");
        let inc = incoming();
        let mut d = Decision::Ignored(Reason::Duplicate);
        let mut h = hook(&inc, &mut d, &calendar);
        h.stored = Some(&stored);
        let busy = h.busy_of_others(own[0].start, other.end).unwrap();
        assert_eq!(busy, vec![own[0], other]);
        assert!(calendar.was_read());
    }

    #[test]
    fn object_mut_marks_the_decision_changed() {
        let store = OneBusy::default();
        let cal = Calendar::new(&store, "room@example.org");
        let inc = incoming();
        let mut d = Decision::Applied {
            object: Some(StoredObject::default()),
            changed: false,
            replies: Vec::new(),
            proposal: None,
            summary: String::new(),
        };
        let mut h = hook(&inc, &mut d, &cal);
        assert!(h.object().is_some());
        h.object_mut().unwrap().uid = "u1".into();
        h.add_reply(reply());
        assert!(matches!(
            Committed::change_of(&d),
            ObjectChange::Stored(o) if o.uid == "u1"
        ));
        let Decision::Applied { replies, .. } = &d else {
            panic!("still applied")
        };
        assert_eq!(replies.len(), 1);
    }

    #[test]
    fn a_reply_to_an_ignored_decision_keeps_its_reason() {
        let store = OneBusy::default();
        let cal = Calendar::new(&store, "room@example.org");
        let inc = incoming();
        let mut d = Decision::Ignored(Reason::Duplicate);
        let mut h = hook(&inc, &mut d, &cal);
        assert!(h.object_mut().is_none());
        h.add_reply(reply());
        assert!(matches!(&d, Decision::IgnoredWithReply(Reason::Duplicate, r) if r.len() == 1));
        assert!(matches!(Committed::change_of(&d), ObjectChange::Unchanged));
    }

    #[test]
    fn default_hooks_do_nothing() {
        struct Nothing;
        impl Plugin for Nothing {}
        let store = OneBusy::default();
        let cal = Calendar::new(&store, "room@example.org");
        let inc = incoming();
        let mut d = Decision::Ignored(Reason::Duplicate);
        let before = d.clone();
        Nothing
            .before_commit(&mut hook(&inc, &mut d, &cal))
            .unwrap();
        assert_eq!(d, before);
        assert!(!cal.was_read());
        let done = Committed {
            recipient: "room@example.org",
            uid: "u1",
            method: "REQUEST",
            outcome: crate::itip::Outcome::Ignored,
            reason: "",
            change: Committed::change_of(&d),
            message_id: None,
            now: 0,
        };
        assert!(Nothing.effects(&done).is_empty());
        assert!(Nothing.run_effect(b"x").is_ok());
    }
}

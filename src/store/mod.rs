//! Calendar storage behind a trait, so that a networked backend can replace the embedded one
//! without touching the engine. [`Sled`] is the embedded default.

mod sled_store;
pub use sled_store::Sled;

use crate::ical::{self, Component};
use crate::itip::{Busy, Proposal, StoredObject};
use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    Io(String),
    /// A stored record could not be decoded.
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(s) => write!(f, "store I/O error: {s}"),
            StoreError::Corrupt(s) => write!(f, "store record corrupt: {s}"),
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

/// One atomic write: object, free/busy index, idempotency marker, journal line, proposal.
pub struct Commit<'a> {
    pub user: &'a str,
    pub uid: &'a str,
    pub change: Change<'a>,
    /// Marks this message+object as processed for the user.
    pub processed_key: Option<&'a str>,
    pub journal: &'a JournalEntry,
    pub proposal: Option<&'a Proposal>,
}

pub trait Store: Send + Sync {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>>;
    /// Every object of a user's calendar.
    fn list(&self, user: &str) -> Result<Vec<StoredObject>>;
    fn commit(&self, c: &Commit) -> Result<()>;
    fn is_processed(&self, user: &str, key: &str) -> Result<bool>;
    /// Busy periods overlapping [from, to).
    fn busy(&self, user: &str, from: i64, to: i64) -> Result<Vec<Busy>>;
    /// The newest `limit` journal lines (oldest first).
    fn journal(&self, limit: usize) -> Result<Vec<JournalEntry>>;
    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<()>;
    /// Remembers a message identifier (an iSchedule-Message-ID with its signer and originator)
    /// until `until`: true the first time, false while an earlier one is still remembered
    /// (a replay). Expired identifiers are forgotten.
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool>;
}

/// The stored form of an object: its iCalendar text and engine metadata.
#[derive(Serialize, Deserialize)]
struct Record {
    kind: String,
    ical: String,
    #[serde(default)]
    stamps: std::collections::BTreeMap<String, i64>,
    /// Busy periods indexed for this object: (start, end, tentative).
    #[serde(default)]
    busy: Vec<(i64, i64, bool)>,
}

impl Record {
    fn from_object(obj: &StoredObject, busy: &[Busy]) -> Record {
        Record {
            kind: obj.kind.clone(),
            ical: object_to_ical(obj, None),
            stamps: obj.reply_stamps.clone(),
            busy: busy.iter().map(|b| (b.start, b.end, b.tentative)).collect(),
        }
    }

    fn into_object(self, uid: &str) -> Result<StoredObject> {
        let cals =
            ical::parse(&self.ical).map_err(|e| StoreError::Corrupt(format!("{uid}: {e}")))?;
        let mut obj = StoredObject {
            uid: uid.to_string(),
            kind: self.kind,
            reply_stamps: self.stamps,
            ..Default::default()
        };
        for cal in cals {
            for c in cal.subs {
                if c.name == "VTIMEZONE" {
                    obj.timezones.push(c);
                } else {
                    obj.components.push(c);
                }
            }
        }
        Ok(obj)
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

/// A store whose first `n` commits fail, for exercising the tempfail path end to end (set by
/// the `IMIPD_TEST_STORE_FAILURES` environment variable; never set in production).
pub struct Faulty {
    pub inner: std::sync::Arc<dyn Store>,
    pub remaining: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    fn fail(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        let n = self.remaining.load(Ordering::SeqCst);
        if n > 0
            && self
                .remaining
                .compare_exchange(n, n - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::Io(
                "injected store failure (IMIPD_TEST_STORE_FAILURES)".into(),
            ));
        }
        Ok(())
    }
}

impl Store for Faulty {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>> {
        self.inner.get(user, uid)
    }
    fn list(&self, user: &str) -> Result<Vec<StoredObject>> {
        self.inner.list(user)
    }
    fn commit(&self, c: &Commit) -> Result<()> {
        self.fail()?;
        self.inner.commit(c)
    }
    fn is_processed(&self, user: &str, key: &str) -> Result<bool> {
        self.inner.is_processed(user, key)
    }
    fn busy(&self, user: &str, from: i64, to: i64) -> Result<Vec<Busy>> {
        self.inner.busy(user, from, to)
    }
    fn journal(&self, limit: usize) -> Result<Vec<JournalEntry>> {
        self.inner.journal(limit)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool> {
        self.inner.remember_message_id(key, until, now)
    }
}

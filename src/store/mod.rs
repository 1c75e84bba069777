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

/// `[journal] keep_days`: prunes older journal lines now and then every hour until `shutdown`.
/// `keep_days = 0` keeps everything.
pub async fn journal_retention(
    store: std::sync::Arc<dyn Store>,
    keep_days: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if keep_days == 0 {
        return;
    }
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let before = now.saturating_sub((keep_days as i64).saturating_mul(86400));
        let st = store.clone();
        match tokio::task::spawn_blocking(move || st.prune_journal(before)).await {
            Ok(Ok(n)) if n > 0 => eprintln!(
                "imipd: journal: removed {n} lines older than {keep_days} days ([journal] keep_days)"
            ),
            Ok(Err(e)) => eprintln!("imipd: journal pruning failed: {e}"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
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
    /// Removes the journal lines written before `before` (UNIX seconds); returns how many.
    fn prune_journal(&self, before: i64) -> Result<usize> {
        let _ = before;
        Ok(0)
    }
    /// Makes everything committed so far durable.
    fn flush(&self) -> Result<()>;
    /// Remembers a message identifier (an iSchedule-Message-ID with its signer and originator)
    /// until `until`: true the first time, false while an earlier one is still remembered
    /// (a replay). Expired identifiers are forgotten.
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool>;
}

/// The stored form of an object: its iCalendar text and engine metadata, in a compact binary
/// layout so that the busy periods can be read without parsing the calendar:
/// `1 | kind len u8 | kind | busy count u32 | (start i64, end i64, tentative u8)* |
///  stamp count u32 | (key len u16, key, stamp i64)* | iCalendar text`.
struct Record {
    kind: String,
    ical: String,
    stamps: std::collections::BTreeMap<String, i64>,
    /// Busy periods indexed for this object: (start, end, tentative).
    busy: Vec<(i64, i64, bool)>,
}

const RECORD_V1: u8 = 1;

/// Busy periods as stored: (start, end, tentative).
type BusyRows = Vec<(i64, i64, bool)>;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| StoreError::Corrupt("record truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i64(&mut self) -> Result<i64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }
    fn str(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
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

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ical.len() + 32 + self.busy.len() * 17);
        out.push(RECORD_V1);
        let kind = &self.kind.as_bytes()[..self.kind.len().min(255)];
        out.push(kind.len() as u8);
        out.extend_from_slice(kind);
        Self::encode_busy(&self.busy, &mut out);
        out.extend_from_slice(&(self.stamps.len() as u32).to_be_bytes());
        for (k, v) in &self.stamps {
            let k = &k.as_bytes()[..k.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(self.ical.as_bytes());
        out
    }

    fn encode_busy(busy: &[(i64, i64, bool)], out: &mut Vec<u8>) {
        out.extend_from_slice(&(busy.len() as u32).to_be_bytes());
        for (s, e, t) in busy {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
            out.push(*t as u8);
        }
    }

    /// Reads kind and busy periods only; returns them and the reader positioned after them.
    fn decode_head(b: &[u8]) -> Result<(String, BusyRows, Reader<'_>)> {
        let mut r = Reader { b, at: 0 };
        if r.u8()? != RECORD_V1 {
            return Err(StoreError::Corrupt("unknown record version".into()));
        }
        let klen = r.u8()? as usize;
        let kind = r.str(klen)?;
        let n = r.u32()? as usize;
        if n > b.len() / 17 + 1 {
            return Err(StoreError::Corrupt("busy count out of range".into()));
        }
        let mut busy = Vec::with_capacity(n);
        for _ in 0..n {
            busy.push((r.i64()?, r.i64()?, r.u8()? != 0));
        }
        Ok((kind, busy, r))
    }

    fn decode(b: &[u8]) -> Result<Record> {
        let (kind, busy, mut r) = Self::decode_head(b)?;
        let n = r.u32()? as usize;
        let mut stamps = std::collections::BTreeMap::new();
        for _ in 0..n {
            let kl = r.u16()? as usize;
            let k = r.str(kl)?;
            stamps.insert(k, r.i64()?);
        }
        let ical = r.str(b.len() - r.at)?;
        Ok(Record {
            kind,
            ical,
            stamps,
            busy,
        })
    }

    /// The same record with other busy periods (the calendar bytes are copied, not parsed).
    fn with_busy_of(new: &[u8], old: &[u8]) -> Result<Vec<u8>> {
        let (_, old_busy, _) = Self::decode_head(old)?;
        let (kind, _, r) = Self::decode_head(new)?;
        let mut out = Vec::with_capacity(new.len() + old_busy.len() * 17);
        out.push(RECORD_V1);
        out.push(kind.len() as u8);
        out.extend_from_slice(kind.as_bytes());
        Self::encode_busy(&old_busy, &mut out);
        out.extend_from_slice(&new[r.at..]);
        Ok(out)
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
    fn journal_matching(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalEntry>> {
        self.inner.journal_matching(filter, limit)
    }
    fn prune_journal(&self, before: i64) -> Result<usize> {
        self.inner.prune_journal(before)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool> {
        self.inner.remember_message_id(key, until, now)
    }
}

/// Creates `dir` (mode 0750), or takes group write and every permission for others away from
/// an existing one of ours (a shared, sticky directory is left alone).
pub fn private_data_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let e = |err: std::io::Error| StoreError::Io(format!("{}: {err}", dir.display()));
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(e)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(e)?;
    } else {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(dir).map_err(e)?;
        let mode = md.permissions().mode() & 0o7777;
        // Only our own directory, and never a shared one (sticky, like /tmp).
        // SAFETY: geteuid has no preconditions.
        let ours = md.uid() == unsafe { libc::geteuid() };
        if ours && mode & 0o1000 == 0 && mode & 0o027 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o750))
                .map_err(e)?;
        }
    }
    Ok(())
}

/// Makes every directory under `root` 0700 and every file 0600 (bounded depth).
pub fn private_tree(root: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(p: &std::path::Path, depth: usize) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        if md.file_type().is_symlink() {
            return Ok(());
        }
        if md.is_dir() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
            if depth < 8 {
                for entry in std::fs::read_dir(p)? {
                    walk(&entry?.path(), depth + 1)?;
                }
            }
        } else {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }
    walk(root, 0).map_err(|err| StoreError::Io(format!("{}: {err}", root.display())))
}

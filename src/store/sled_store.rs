//! The embedded store on sled: one tree, keys prefixed by kind, so that every commit is one
//! atomic batch (sled's multi-tree transactions cost several times more):
//! - `o` user \0 uid -> Record (binary, see store::Record)
//! - `b` user \0 start(8, order-preserving) uid \0 n(4) -> end(8) tentative(1)
//! - `m` user -> longest busy period seen (8), bounds the index scan
//! - `p` user \0 message key -> time processed
//! - `j` id(8) -> JournalEntry (JSON)
//! - `c` user \0 uid \0 id(8) -> COUNTER/DECLINECOUNTER calendar text
//! - `r` message id key -> remembered until (8), iSchedule replay refusal
//! - `e` effect id -> pending effect (see [`encode_effect`]); ids sort by creation
//! - `f` effect id -> effect set aside after a permanent failure (same encoding)
//!
//! Journal lines of effect attempts share the `j` keys with decisions (JSON with
//! `"kind":"effect"`), so that both read back in one order.
//! - `v` user \0 uid -> object version (u64), kept after a delete
//! - `V` user -> calendar version (u64)
//!
//! Isolation is optimistic: a commit carries the versions its decision read, and checking them
//! and applying the batch happen under a lock of the user's stripe (sled admits one process, so
//! an in-process lock is enough; versions are written in the same batch as the object).

use super::{
    Change, Commit, Expect, JournalEntry, JournalFilter, JournalLine, Result, Store, StoreError,
};
use imipd_core::effects::{self, Effect, EffectLine, PendingEffect};
use imipd_core::ical;
use imipd_core::itip::{Busy, StoredObject};
use imipd_core::store::object_to_ical;
use std::path::Path;

pub struct Sled {
    db: sled::Db,
    t: sled::Tree,
    group: GroupFlush,
    ids_added: std::sync::atomic::AtomicU64,
    /// Commits of users of one stripe check versions and apply their batch one at a time.
    stripes: [std::sync::Mutex<()>; STRIPES],
}

const STRIPES: usize = 64;

/// Group commit: callers that ask for durability while a flush is running wait for the next
/// one, which covers all of them, instead of each paying its own sync. A caller that starts
/// a flush while writers have said one of theirs is coming ([`Store::writer_begins`]) first
/// waits for them, at most [`GATHER`]: on a busy store, requests in flight finish their
/// commits within that time, and one sync then covers the lot (sled's flush is a buffer write
/// and sync on an I/O thread, and costs more CPU than a decision).
struct GroupFlush {
    state: std::sync::Mutex<FlushState>,
    /// Callers waiting for a flush to be done.
    cv: std::sync::Condvar,
    /// The caller gathering writers before it starts a flush.
    gather: std::sync::Condvar,
    /// How long it waits for them ([`GATHER`]).
    gather_for: std::time::Duration,
}

impl Default for GroupFlush {
    fn default() -> GroupFlush {
        GroupFlush {
            state: Default::default(),
            cv: Default::default(),
            gather: Default::default(),
            gather_for: GATHER,
        }
    }
}

/// How long a flush waits for writers that said they are coming.
const GATHER: std::time::Duration = std::time::Duration::from_micros(1000);

#[derive(Default)]
struct FlushState {
    /// Callers that asked for durability (each covered by one flush).
    callers: u64,
    /// Flushes started.
    started: u64,
    done: u64,
    /// A flush is being gathered or made (callers that come meanwhile wait for it to be done).
    running: bool,
    /// The next flush waits for its writers.
    gathering: bool,
    /// Writers that said a flush request of theirs is coming and have not made it yet.
    coming: u64,
    /// The newest flush that succeeded: it covers every caller whose commits came before it
    /// started, whatever became of earlier flushes.
    last_ok: u64,
    /// The error of the newest flush that failed.
    error: Option<String>,
}

impl GroupFlush {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer_begins(&self) {
        self.lock().coming += 1;
    }

    fn writer_leaves(&self) {
        let mut st = self.lock();
        st.coming = st.coming.saturating_sub(1);
        if st.gathering && st.coming == 0 {
            self.gather.notify_one();
        }
    }

    fn flush(&self, db: &sled::Db, writer: bool) -> Result<()> {
        let mut st = self.lock();
        if writer {
            st.coming = st.coming.saturating_sub(1);
        }
        st.callers += 1;
        if st.gathering && st.coming == 0 {
            self.gather.notify_one();
        }
        // Only a flush that starts after this call covers what this caller committed (one
        // being gathered has not started).
        let mine = st.started + 1;
        loop {
            if st.last_ok >= mine {
                return Ok(());
            }
            if st.done >= mine {
                return Err(StoreError::Io(
                    st.error.clone().unwrap_or_else(|| "flush failed".into()),
                ));
            }
            if !st.running {
                st.running = true;
                if st.coming > 0 {
                    st.gathering = true;
                    let deadline = std::time::Instant::now() + self.gather_for;
                    while st.coming > 0 {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        st = self
                            .gather
                            .wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    st.gathering = false;
                }
                st.started += 1;
                let generation = st.started;
                drop(st);
                // A panic in sled must not leave `running` set: every later flush would wait.
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.flush()))
                    .unwrap_or_else(|_| {
                        Err(sled::Error::ReportableBug(
                            "the store's flush panicked".into(),
                        ))
                    })
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                st = self.lock();
                st.running = false;
                st.done = generation;
                match res {
                    Ok(()) => st.last_ok = generation,
                    Err(e) => st.error = Some(e),
                }
                self.cv.notify_all();
            } else {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }
}

/// What the commits staged so far in one batch changed of their user's calendar.
#[derive(Default)]
struct Staged {
    /// The calendar version after them (None: not read yet).
    calendar: Option<u64>,
    /// The longest busy period after them (None: not read yet).
    longest: Option<i64>,
}

/// The embedded store's page cache when `[store] cache_mb` is not set.
pub const DEFAULT_CACHE_MB: u64 = 64;

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

fn key(kind: u8, user: &str, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + rest.len() + 2);
    k.push(kind);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// i64 -> big-endian bytes that sort like the numbers.
fn ord_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1u64 << 63)).to_be_bytes()
}

fn from_ord_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    (u64::from_be_bytes(a) ^ (1u64 << 63)) as i64
}

fn busy_key(user: &str, start: i64, uid: &str, n: u32) -> Vec<u8> {
    let mut k = key(b'b', user, "");
    k.extend_from_slice(&ord_i64(start));
    k.extend_from_slice(uid.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn max_key(user: &str) -> Vec<u8> {
    let mut k = vec![b'm'];
    k.extend_from_slice(user.as_bytes());
    k
}

fn calendar_key(user: &str) -> Vec<u8> {
    let mut k = vec![b'V'];
    k.extend_from_slice(user.as_bytes());
    k
}

fn conflict(what: &str, expected: u64, stored: u64) -> StoreError {
    StoreError::Conflict(format!(
        "{what} version {expected} expected, {stored} stored"
    ))
}

impl Sled {
    /// Opens (creating) the store under `dir`. The data dir is made 0750 (at most), the store's
    /// directories 0700 and its files 0600 whatever the umask (the imipd binary also runs with
    /// umask 0077, so files sled creates later are private too; a library never changes the
    /// umask of the process it is linked into).
    pub fn open(dir: &Path) -> Result<Sled> {
        Sled::open_with_cache(dir, DEFAULT_CACHE_MB)
    }

    /// [`Sled::open`] with a page cache of `cache_mb` MiB (`[store] cache_mb`).
    pub fn open_with_cache(dir: &Path, cache_mb: u64) -> Result<Sled> {
        super::private_data_dir(dir)?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref ioe) if ioe.kind() == std::io::ErrorKind::WouldBlock => StoreError::Io(format!(
                    "{}: the store is in use by another process (is `imipd run` running on this data dir?)",
                    dir.display()
                )),
                e => StoreError::Io(format!("{}: {e}", dir.display())),
            })?;
        let t = db.open_tree("calendar").map_err(io)?;
        super::private_tree(&dir.join("store"))?;
        Ok(Sled {
            t,
            db,
            group: GroupFlush::default(),
            ids_added: std::sync::atomic::AtomicU64::new(0),
            stripes: [const { std::sync::Mutex::new(()) }; STRIPES],
        })
    }

    fn stripe(&self, user: &str) -> std::sync::MutexGuard<'_, ()> {
        // FNV-1a: any stable spread will do.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in user.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.stripes[(h % STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `c` and adds its writes to `batch` (the caller holds the user's stripe and
    /// applies the batch); `staged` carries what earlier commits of the same batch changed.
    fn stage(&self, c: &Commit, batch: &mut sled::Batch, staged: &mut Staged) -> Result<()> {
        let okey = key(b'o', c.user, c.uid);
        let vkey = key(b'v', c.user, c.uid);
        let ckey = calendar_key(c.user);
        let journal_id = self.db.generate_id().map_err(io)?.to_be_bytes();
        // Versions are read when checked or bumped (a journal-only commit needs neither).
        let keep = matches!(c.change, Change::Keep);
        let version = match c.expect {
            Expect::Version(_) => self.version_at(&vkey)?,
            Expect::Any if !keep => self.version_at(&vkey)?,
            Expect::Any => 0,
        };
        if let Expect::Version(n) = c.expect {
            if n != version {
                return Err(conflict("object", n, version));
            }
        }
        let calendar = if c.expect_calendar.is_some() || !keep {
            match staged.calendar {
                Some(v) => v,
                None => self.version_at(&ckey)?,
            }
        } else {
            0
        };
        if let Some(n) = c.expect_calendar {
            if n != calendar {
                return Err(conflict("calendar", n, calendar));
            }
        }
        if let Some(pk) = c.processed_key {
            // The same message was committed for this user meanwhile.
            if self.t.contains_key(key(b'p', c.user, pk)).map_err(io)? {
                return Err(StoreError::Conflict("message already processed".into()));
            }
        }
        if !keep {
            let bump = |v: u64| {
                v.checked_add(1)
                    .map(u64::to_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("version out of range".into()))
            };
            batch.insert(vkey.as_slice(), &bump(version)?);
            let next = bump(calendar)?;
            batch.insert(ckey.as_slice(), &next);
            staged.calendar = Some(u64::from_be_bytes(next));
        }
        let old = match c.change {
            Change::Keep => None,
            _ => self.t.get(&okey).map_err(io)?,
        };
        match &c.change {
            Change::Keep => {}
            Change::PutKeepBusy(obj) => {
                let rec = Record::from_object(obj, &[]).encode();
                let bytes = match &old {
                    Some(old) => Record::with_busy_of(&rec, old)?,
                    None => rec,
                };
                batch.insert(okey.as_slice(), bytes);
            }
            Change::Put(..) | Change::Delete => {
                if let Some(old) = &old {
                    let (_, old_busy, _) = Record::decode_head(old)?;
                    for (n, (s, _, _)) in old_busy.iter().enumerate() {
                        batch.remove(busy_key(c.user, *s, c.uid, n as u32));
                    }
                }
                if let Change::Put(obj, periods) = &c.change {
                    batch.insert(okey.as_slice(), Record::from_object(obj, periods).encode());
                    let mut longest = 0i64;
                    for (n, b) in periods.iter().enumerate() {
                        let mut v = Vec::with_capacity(9);
                        v.extend_from_slice(&ord_i64(b.end));
                        v.push(b.tentative as u8);
                        batch.insert(busy_key(c.user, b.start, c.uid, n as u32), v);
                        longest = longest.max(b.end - b.start);
                    }
                    let mk = max_key(c.user);
                    let cur = match staged.longest {
                        Some(v) => v,
                        None => self
                            .t
                            .get(&mk)
                            .map_err(io)?
                            .map(|v| from_ord_i64(&v))
                            .unwrap_or(0),
                    };
                    if longest > cur {
                        batch.insert(mk, &ord_i64(longest));
                    }
                    staged.longest = Some(longest.max(cur));
                } else {
                    batch.remove(okey.as_slice());
                }
            }
        }
        if let Some(pk) = c.processed_key {
            batch.insert(key(b'p', c.user, pk), &ord_i64(c.journal.ts));
        }
        let mut jk = vec![b'j'];
        jk.extend_from_slice(&journal_id);
        batch.insert(
            jk,
            serde_json::to_vec(c.journal).map_err(|e| StoreError::Io(e.to_string()))?,
        );
        if let Some(p) = c.proposal {
            let mut k = key(b'c', c.user, c.uid);
            k.push(0);
            k.extend_from_slice(&journal_id);
            batch.insert(k, p.calendar.to_ical().into_bytes());
        }
        for e in c.effects {
            batch.insert(effect_key(b'e', &e.id), encode_effect(&pending(e))?);
        }
        Ok(())
    }

    fn version_at(&self, k: &[u8]) -> Result<u64> {
        Ok(match self.t.get(k).map_err(io)? {
            Some(v) if v.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&v);
                u64::from_be_bytes(a)
            }
            Some(_) => return Err(StoreError::Corrupt("version record".into())),
            None => 0,
        })
    }
}

impl Sled {
    /// Whether a store was ever created under `dir` (read-only commands open only existing ones).
    pub fn exists(dir: &Path) -> bool {
        dir.join("store").join("db").is_file() || dir.join("store").join("conf").is_file()
    }
}

impl Store for Sled {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>> {
        match self.t.get(key(b'o', user, uid)).map_err(io)? {
            None => Ok(None),
            Some(v) => Record::decode(&v)?.into_object(uid).map(Some),
        }
    }

    fn get_versioned(&self, user: &str, uid: &str) -> Result<(Option<StoredObject>, u64)> {
        // The version first: a commit landing between the two reads then makes the object
        // newer than its version, and committing against that version fails (safe), never the
        // other way round.
        let version = self.version_at(&key(b'v', user, uid))?;
        Ok((self.get(user, uid)?, version))
    }

    fn calendar_version(&self, user: &str) -> Result<u64> {
        self.version_at(&calendar_key(user))
    }

    fn list(&self, user: &str) -> Result<Vec<StoredObject>> {
        let prefix = key(b'o', user, "");
        let mut out = Vec::new();
        for kv in self.t.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(io)?;
            let uid = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            out.push(Record::decode(&v)?.into_object(&uid)?);
        }
        Ok(out)
    }

    fn commit(&self, c: &Commit) -> Result<()> {
        // Held from the version checks to the batch, and over the reads of the old record and
        // the longest busy period that the batch is computed from.
        let _stripe = self.stripe(c.user);
        let mut batch = sled::Batch::default();
        self.stage(c, &mut batch, &mut Staged::default())?;
        self.t.apply_batch(batch).map_err(io)
    }

    fn commit_all(&self, commits: &[Commit]) -> Result<()> {
        let Some(first) = commits.first() else {
            return Ok(());
        };
        // One batch holds commits of one user to distinct objects and messages: each is
        // checked against what the ones before it staged (the calendar version, the longest
        // busy period), and none reads what another one writes.
        let mut uids = std::collections::HashSet::new();
        let mut messages = std::collections::HashSet::new();
        let one_batch = commits.iter().all(|c| {
            c.user == first.user
                && uids.insert(c.uid)
                && c.processed_key.is_none_or(|k| messages.insert(k))
        });
        if !one_batch {
            return commits.iter().try_for_each(|c| self.commit(c));
        }
        let _stripe = self.stripe(first.user);
        let mut batch = sled::Batch::default();
        let mut staged = Staged::default();
        for c in commits {
            self.stage(c, &mut batch, &mut staged)?;
        }
        self.t.apply_batch(batch).map_err(io)
    }

    fn is_processed(&self, user: &str, pk: &str) -> Result<bool> {
        self.t.contains_key(key(b'p', user, pk)).map_err(io)
    }

    fn busy(&self, user: &str, from: i64, to: i64) -> Result<Vec<Busy>> {
        let longest = self
            .t
            .get(max_key(user))
            .map_err(io)?
            .map(|v| from_ord_i64(&v))
            .unwrap_or(0);
        let mut lo = key(b'b', user, "");
        let plen = lo.len();
        lo.extend_from_slice(&ord_i64(from.saturating_sub(longest)));
        let mut hi = key(b'b', user, "");
        hi.extend_from_slice(&ord_i64(to));
        let mut out = Vec::new();
        for kv in self.t.range(lo..hi) {
            let (k, v) = kv.map_err(io)?;
            if v.len() < 9 || k.len() < plen + 8 {
                continue;
            }
            let start = from_ord_i64(&k[plen..plen + 8]);
            let end = from_ord_i64(&v[..8]);
            if end > from && start < to {
                out.push(Busy {
                    start,
                    end,
                    tentative: v[8] != 0,
                });
            }
        }
        Ok(out)
    }

    fn journal(&self, limit: usize) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for kv in self.t.scan_prefix(b"j").rev().take(limit) {
            let (_, v) = kv.map_err(io)?;
            if let Ok(e) = serde_json::from_slice::<JournalEntry>(&v) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }

    fn journal_matching(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for kv in self.t.scan_prefix(b"j").rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = kv.map_err(io)?;
            if let Ok(e) = serde_json::from_slice::<JournalEntry>(&v) {
                if filter.matches(&e) {
                    out.push(e);
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    fn journal_lines(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalLine>> {
        let mut out = Vec::new();
        for kv in self.t.scan_prefix(b"j").rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = kv.map_err(io)?;
            if let Some(l) = decode_journal_line(&v) {
                if filter.matches_line(&l) {
                    out.push(l);
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    fn add_effects(&self, list: &[Effect]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for e in list {
            batch.insert(effect_key(b'e', &e.id), encode_effect(&pending(e))?);
        }
        self.t.apply_batch(batch).map_err(io)
    }

    fn due_effects(
        &self,
        now: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingEffect>> {
        use std::ops::Bound;
        let start = match after {
            Some(id) => Bound::Excluded(effect_key(b'e', id)),
            None => Bound::Included(vec![b'e']),
        };
        let mut out = Vec::new();
        for kv in self
            .t
            .range::<Vec<u8>, _>((start, Bound::Excluded(vec![b'e' + 1])))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv.map_err(io)?;
            let p = decode_effect(&k[1..], &v)?;
            if p.not_before <= now {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn pending_effects(&self, limit: usize) -> Result<Vec<PendingEffect>> {
        self.effects_under(b'e', limit)
    }

    fn effect_done(&self, id: &str, line: &EffectLine) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.remove(effect_key(b'e', id));
        self.journal_effect(&mut batch, line)?;
        self.t.apply_batch(batch).map_err(io)
    }

    fn defer_effect(&self, id: &str, now: i64, line: &EffectLine) -> Result<()> {
        let k = effect_key(b'e', id);
        let mut batch = sled::Batch::default();
        if let Some(v) = self.t.get(&k).map_err(io)? {
            let mut p = decode_effect(id.as_bytes(), &v)?;
            p.not_before = now.saturating_add(effects::backoff_secs(p.attempts));
            p.attempts = p.attempts.saturating_add(1);
            p.last_error = line.reason.clone();
            batch.insert(k, encode_effect(&p)?);
        }
        self.journal_effect(&mut batch, line)?;
        self.t.apply_batch(batch).map_err(io)
    }

    fn fail_effect(&self, id: &str, line: &EffectLine) -> Result<()> {
        let k = effect_key(b'e', id);
        let mut batch = sled::Batch::default();
        if let Some(v) = self.t.get(&k).map_err(io)? {
            let mut p = decode_effect(id.as_bytes(), &v)?;
            p.attempts = p.attempts.saturating_add(1);
            p.last_error = line.reason.clone();
            batch.remove(k);
            batch.insert(effect_key(b'f', id), encode_effect(&p)?);
        }
        self.journal_effect(&mut batch, line)?;
        self.t.apply_batch(batch).map_err(io)
    }

    fn failed_effects(&self, limit: usize) -> Result<Vec<PendingEffect>> {
        self.effects_under(b'f', limit)
    }

    fn effect_counts(&self) -> Result<(usize, usize)> {
        let n = |p: u8| self.t.scan_prefix([p]).keys().filter(|k| k.is_ok()).count();
        Ok((n(b'e'), n(b'f')))
    }

    fn prune_journal(&self, before: i64) -> Result<usize> {
        // Journal ids grow with time: stop at the first line young enough to keep, but step
        // over a few younger ones in case clocks went back.
        let mut removed = 0;
        let mut kept_in_a_row = 0;
        for kv in self.t.scan_prefix(b"j") {
            let (k, v) = kv.map_err(io)?;
            let ts = serde_json::from_slice::<serde_json::Value>(&v)
                .ok()
                .and_then(|j| j.get("ts").and_then(serde_json::Value::as_i64));
            match ts {
                Some(ts) if ts >= before => {
                    kept_in_a_row += 1;
                    if kept_in_a_row >= 64 {
                        break;
                    }
                }
                Some(_) => {
                    self.t.remove(k).map_err(io)?;
                    removed += 1;
                    kept_in_a_row = 0;
                }
                // Not a journal line this version understands: left alone.
                None => {}
            }
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<()> {
        self.group.flush(&self.db, false)
    }

    fn writer_begins(&self) {
        self.group.writer_begins()
    }

    fn writer_flushes(&self) -> Result<()> {
        self.group.flush(&self.db, true)
    }

    fn writer_leaves(&self) {
        self.group.writer_leaves()
    }

    fn flush_stats(&self) -> (u64, u64) {
        let st = self.group.lock();
        (st.callers, st.started)
    }

    fn forget_message_id(&self, id: &str) -> Result<()> {
        let mut k = vec![b'r'];
        k.extend_from_slice(id.as_bytes());
        self.t.remove(k).map(|_| ()).map_err(io)
    }

    fn remember_message_id(&self, id: &str, until: i64, now: i64) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let mut k = vec![b'r'];
        k.extend_from_slice(id.as_bytes());
        let value = ord_i64(until);
        let mut current = None;
        // Bounded: a concurrent writer can make a swap fail only while it inserts the same key.
        for _ in 0..4 {
            match self
                .t
                .compare_and_swap(&k, current.clone(), Some(&value[..]))
                .map_err(io)?
            {
                Ok(()) => {
                    if self.ids_added.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
                        self.forget_expired_ids(now)?;
                    }
                    return Ok(true);
                }
                Err(e) => match e.current {
                    Some(v) if v.len() == 8 && from_ord_i64(&v) >= now => return Ok(false),
                    other => current = other,
                },
            }
        }
        Ok(false)
    }
}

impl Sled {
    fn effects_under(&self, prefix: u8, limit: usize) -> Result<Vec<PendingEffect>> {
        let mut out = Vec::new();
        for kv in self.t.scan_prefix([prefix]).take(limit) {
            let (k, v) = kv.map_err(io)?;
            out.push(decode_effect(&k[1..], &v)?);
        }
        Ok(out)
    }

    /// Adds an effect's journal line to `batch` under a new journal id.
    fn journal_effect(&self, batch: &mut sled::Batch, line: &EffectLine) -> Result<()> {
        let mut jk = vec![b'j'];
        jk.extend_from_slice(&self.db.generate_id().map_err(io)?.to_be_bytes());
        let mut v = serde_json::to_value(line).map_err(io)?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("kind".into(), "effect".into());
        }
        batch.insert(jk, serde_json::to_vec(&v).map_err(io)?);
        Ok(())
    }

    fn forget_expired_ids(&self, now: i64) -> Result<()> {
        for kv in self.t.scan_prefix(b"r") {
            let (k, v) = kv.map_err(io)?;
            if v.len() != 8 || from_ord_i64(&v) < now {
                self.t.remove(k).map_err(io)?;
            }
        }
        Ok(())
    }
}

fn effect_key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(id.as_bytes());
    k
}

fn pending(e: &Effect) -> PendingEffect {
    PendingEffect {
        effect: e.clone(),
        attempts: 0,
        not_before: 0,
        last_error: String::new(),
    }
}

/// An effect's metadata as stored; the payload follows it unencoded.
#[derive(serde::Serialize, serde::Deserialize)]
struct EffectHead {
    kind: effects::EffectKind,
    user: String,
    uid: String,
    attempts: u32,
    not_before: i64,
    #[serde(default)]
    last_error: String,
}

/// `1 | head length u32 | head (JSON) | payload`: the payload (a whole message, often) is
/// kept as bytes rather than as a JSON array of numbers.
fn encode_effect(p: &PendingEffect) -> Result<Vec<u8>> {
    let head = serde_json::to_vec(&EffectHead {
        kind: p.effect.kind.clone(),
        user: p.effect.user.clone(),
        uid: p.effect.uid.clone(),
        attempts: p.attempts,
        not_before: p.not_before,
        last_error: p.last_error.clone(),
    })
    .map_err(io)?;
    let mut out = Vec::with_capacity(5 + head.len() + p.effect.payload.len());
    out.push(1);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&p.effect.payload);
    Ok(out)
}

fn decode_effect(id: &[u8], b: &[u8]) -> Result<PendingEffect> {
    let mut r = Reader { b, at: 0 };
    if r.u8()? != 1 {
        return Err(StoreError::Corrupt("unknown effect version".into()));
    }
    let n = r.u32()? as usize;
    let head: EffectHead =
        serde_json::from_slice(r.take(n)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(PendingEffect {
        effect: Effect {
            id: String::from_utf8_lossy(id).into_owned(),
            kind: head.kind,
            user: head.user,
            uid: head.uid,
            payload: b[r.at..].to_vec(),
        },
        attempts: head.attempts,
        not_before: head.not_before,
        last_error: head.last_error,
    })
}

/// A journal value: an effect line (`"kind":"effect"`) or a decision.
fn decode_journal_line(v: &[u8]) -> Option<JournalLine> {
    let j: serde_json::Value = serde_json::from_slice(v).ok()?;
    if j.get("kind").and_then(serde_json::Value::as_str) == Some("effect") {
        serde_json::from_value(j).ok().map(JournalLine::Effect)
    } else {
        serde_json::from_value(j).ok().map(JournalLine::Decision)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use imipd_core::effects::EffectKind;
    use imipd_core::store::Writer;

    /// A store whose flushes wait up to `gather` for announced writers.
    fn gathering_store(dir: &Path, gather: std::time::Duration) -> Sled {
        let mut s = Sled::open_with_cache(dir, 8).unwrap();
        s.group.gather_for = gather;
        s
    }

    /// Until another thread's flush is waiting for announced writers (bounded).
    fn wait_until_gathering(s: &Sled) {
        let start = std::time::Instant::now();
        while !s.group.lock().gathering {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "no flush gathering"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Starts a thread that announces a writer and, once a flush (the caller's, next) is
    /// gathering, runs `then` with the store and that writer; returns after the announcement.
    fn announced_writer(
        s: &std::sync::Arc<Sled>,
        then: impl FnOnce(&Sled, Writer<'_>) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let started = std::sync::Arc::new(std::sync::Barrier::new(2));
        let (s2, b2) = (s.clone(), started.clone());
        let t = std::thread::spawn(move || {
            let w = Writer::begin(&*s2);
            b2.wait();
            wait_until_gathering(&s2);
            then(&s2, w);
        });
        started.wait();
        t
    }

    #[test]
    fn a_flush_waits_for_an_announced_writer_and_covers_it() {
        let d = tempfile::tempdir().unwrap();
        // Long enough that only the writer's own flush request can end the wait in time.
        let s = std::sync::Arc::new(gathering_store(
            d.path(),
            std::time::Duration::from_secs(20),
        ));
        let t = announced_writer(&s, |s2, w| {
            s2.commit(&Commit {
                user: "bob@example.org",
                uid: "u1",
                change: Change::Put(&object("u1", "Planning"), &[]),
                expect: Expect::Any,
                expect_calendar: None,
                processed_key: None,
                journal: &refresh_entry("u1"),
                proposal: None,
                effects: &[],
            })
            .unwrap();
            w.flush().unwrap();
        });
        let start = std::time::Instant::now();
        s.flush().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        t.join().unwrap();
        // One flush covered both callers: the writer's request joined the one being gathered.
        assert_eq!(s.flush_stats(), (2, 1));
        assert!(s.get("bob@example.org", "u1").unwrap().is_some());
    }

    #[test]
    fn a_writer_that_leaves_without_flushing_ends_the_wait() {
        let d = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(gathering_store(
            d.path(),
            std::time::Duration::from_secs(20),
        ));
        // Nothing committed, e.g. an error or a message with nothing to decide.
        let t = announced_writer(&s, |_, w| drop(w));
        let start = std::time::Instant::now();
        s.flush().unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the flush waited for a writer that had gone"
        );
        t.join().unwrap();
        assert_eq!(s.flush_stats(), (1, 1));
    }

    fn put_all<'a>(
        user: &'a str,
        obj: &'a StoredObject,
        busy: &'a [Busy],
        j: &'a JournalEntry,
        expect: Expect,
    ) -> Commit<'a> {
        Commit {
            user,
            uid: &obj.uid,
            change: Change::Put(obj, busy),
            expect,
            expect_calendar: None,
            processed_key: None,
            journal: j,
            proposal: None,
            effects: &[],
        }
    }

    #[test]
    fn commit_all_leaves_what_the_same_commits_one_by_one_leave() {
        let bob = "bob@example.org";
        let objs: Vec<StoredObject> = (0..5)
            .map(|i| object(&format!("u{i}"), "Planning"))
            .collect();
        let busy: Vec<Vec<Busy>> = (0..5i64)
            .map(|i| {
                vec![Busy {
                    start: 1_000 * i,
                    end: 1_000 * i + 100 * (5 - i),
                    tentative: false,
                }]
            })
            .collect();
        let j = refresh_entry("u");
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (one, all) = (
            Sled::open_with_cache(d1.path(), 8).unwrap(),
            Sled::open_with_cache(d2.path(), 8).unwrap(),
        );
        let commits: Vec<Commit> = objs
            .iter()
            .zip(&busy)
            .map(|(o, b)| put_all(bob, o, b, &j, Expect::Any))
            .collect();
        for c in &commits {
            one.commit(c).unwrap();
        }
        all.commit_all(&commits).unwrap();
        for s in [&one, &all] {
            assert_eq!(s.calendar_version(bob).unwrap(), 5);
            for o in &objs {
                assert_eq!(s.get_versioned(bob, &o.uid).unwrap().1, 1);
            }
            // The longest busy period (the first object's, 500) bounds the index scan: a
            // period that starts 400 before `from` is still found.
            assert_eq!(s.busy(bob, 400, 450).unwrap().len(), 1);
            assert_eq!(s.journal(100).unwrap().len(), 5);
        }
        assert_eq!(one.list(bob).unwrap().len(), all.list(bob).unwrap().len());
    }

    #[test]
    fn commit_all_writes_nothing_when_one_of_them_conflicts() {
        let bob = "bob@example.org";
        let d = tempfile::tempdir().unwrap();
        let s = Sled::open_with_cache(d.path(), 8).unwrap();
        let j = refresh_entry("u");
        let (a, b) = (object("a", "A"), object("b", "B"));
        // b was never stored: expecting version 3 of it is a conflict.
        let commits = [
            put_all(bob, &a, &[], &j, Expect::Any),
            put_all(bob, &b, &[], &j, Expect::Version(3)),
        ];
        assert!(matches!(
            s.commit_all(&commits),
            Err(StoreError::Conflict(_))
        ));
        assert!(s.get(bob, "a").unwrap().is_none());
        assert_eq!(s.calendar_version(bob).unwrap(), 0);
        // The same UID twice cannot share a batch: committed one after the other.
        let twice = [
            put_all(bob, &a, &[], &j, Expect::Any),
            put_all(bob, &a, &[], &j, Expect::Version(1)),
        ];
        s.commit_all(&twice).unwrap();
        assert_eq!(s.get_versioned(bob, "a").unwrap().1, 2);
    }

    #[test]
    fn without_announced_writers_a_flush_does_not_wait() {
        let d = tempfile::tempdir().unwrap();
        let s = gathering_store(d.path(), std::time::Duration::from_secs(20));
        let start = std::time::Instant::now();
        s.flush().unwrap();
        let w = Writer::begin(&s);
        w.flush().unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(s.flush_stats(), (2, 2));
    }

    fn refresh_entry(uid: &str) -> JournalEntry {
        JournalEntry {
            ts: 100,
            user: "bob@example.org".into(),
            message_id: "m@x".into(),
            method: "REFRESH".into(),
            component: "VEVENT".into(),
            uid: uid.into(),
            outcome: "applied".into(),
            reason: "answered".into(),
            count: 1,
        }
    }

    fn object(uid: &str, summary: &str) -> StoredObject {
        let mut c = ical::Component::new("VEVENT");
        c.props.push(ical::Prop::new("UID", uid));
        c.props.push(ical::Prop::new("SUMMARY", summary));
        c.props.push(ical::Prop::new("DTSTART", "20300101T100000Z"));
        StoredObject {
            uid: uid.into(),
            kind: "VEVENT".into(),
            components: vec![c],
            ..Default::default()
        }
    }

    fn entry(uid: &str) -> JournalEntry {
        JournalEntry {
            ts: 1,
            user: "bob@example.org".into(),
            message_id: String::new(),
            method: "REQUEST".into(),
            component: "VEVENT".into(),
            uid: uid.into(),
            outcome: "applied".into(),
            reason: "test".into(),
            count: 1,
        }
    }

    fn effect(n: u8) -> Effect {
        Effect::new(
            EffectKind::Imip,
            "bob@example.org",
            "u1",
            vec![n, 0, 255],
            "host",
        )
    }

    /// Effects come with the commit that carries them (same batch), survive a reopen, and
    /// leave through done / defer / fail with one journal line each.
    #[test]
    fn effects_commit_with_the_object_and_leave_through_the_runner_calls() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (effect(1), effect(2), effect(3));
        {
            let s = Sled::open(dir.path()).unwrap();
            let obj = StoredObject {
                uid: "u1".into(),
                kind: "VEVENT".into(),
                ..Default::default()
            };
            let effects = vec![a.clone(), b.clone(), c.clone()];
            s.commit(&Commit {
                user: "bob@example.org",
                uid: "u1",
                change: Change::Put(&obj, &[]),
                expect: Expect::Any,
                expect_calendar: None,
                processed_key: Some("pk"),
                journal: &refresh_entry("u1"),
                proposal: None,
                effects: &effects,
            })
            .unwrap();
            s.flush().unwrap();
        }
        let s = Sled::open(dir.path()).unwrap();
        assert!(s.get("bob@example.org", "u1").unwrap().is_some());
        let due = s.due_effects(0, None, 10).unwrap();
        assert_eq!(
            due.iter().map(|p| p.effect.clone()).collect::<Vec<_>>(),
            vec![a.clone(), b.clone(), c.clone()],
            "in id order, payload intact"
        );
        assert!(due.iter().all(|p| p.attempts == 0));
        let page = s.due_effects(0, Some(&a.id), 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].effect.id, b.id, "paging starts after the id given");

        let line = |e: &Effect, o: &str| EffectLine::new(e, 200, o, "why");
        s.effect_done(&a.id, &line(&a, "delivered")).unwrap();
        s.defer_effect(&b.id, 200, &line(&b, "retrying")).unwrap();
        s.fail_effect(&c.id, &line(&c, "failed")).unwrap();

        assert!(s.due_effects(200, None, 10).unwrap().is_empty(), "b waits");
        let later = s
            .due_effects(200 + effects::backoff_secs(0), None, 10)
            .unwrap();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].effect.id, b.id);
        assert_eq!(later[0].attempts, 1);
        assert_eq!(later[0].last_error, "why");
        let failed = s.failed_effects(10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].effect.id, c.id);
        assert_eq!(s.effect_counts().unwrap(), (1, 1));

        let lines = s.journal_lines(&JournalFilter::default(), 10).unwrap();
        let outcomes: Vec<String> = lines
            .iter()
            .map(|l| match l {
                JournalLine::Decision(d) => format!("decision {}", d.outcome),
                JournalLine::Effect(e) => format!("{} {}", e.effect, e.outcome),
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "decision applied",
                "imip delivered",
                "imip retrying",
                "imip failed"
            ]
        );
        // Decisions alone for the readers that know only them.
        assert_eq!(s.journal(10).unwrap().len(), 1);
        let by_mid = JournalFilter {
            message_id: Some("m@x".into()),
            ..Default::default()
        };
        assert_eq!(s.journal_lines(&by_mid, 10).unwrap().len(), 1);
    }

    /// Effects added without a decision (a relay, a migrated queue file) are pending until done.
    #[test]
    fn effects_added_alone_are_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sled::open(dir.path()).unwrap();
        let e = effect(9);
        s.add_effects(std::slice::from_ref(&e)).unwrap();
        assert_eq!(s.pending_effects(10).unwrap().len(), 1);
        s.effect_done(&e.id, &EffectLine::new(&e, 1, "delivered", ""))
            .unwrap();
        assert!(s.pending_effects(10).unwrap().is_empty());
        assert_eq!(s.effect_counts().unwrap(), (0, 0));
    }

    fn put<'a>(
        uid: &'a str,
        obj: &'a StoredObject,
        expect: Expect,
        expect_calendar: Option<u64>,
        journal: &'a JournalEntry,
    ) -> Commit<'a> {
        Commit {
            user: "bob@example.org",
            uid,
            change: Change::Put(obj, &[]),
            expect,
            expect_calendar,
            processed_key: Some("msg"),
            journal,
            proposal: None,
            effects: &[],
        }
    }

    fn summary(s: &Sled, uid: &str) -> Option<String> {
        s.get("bob@example.org", uid)
            .expect("get")
            .map(|o| o.components[0].value("SUMMARY").unwrap_or("").to_string())
    }

    #[test]
    fn versions_count_puts_and_deletes_of_the_object_and_calendar() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let s = Sled::open(dir.path()).expect("open");
        let user = "bob@example.org";
        assert_eq!(s.get_versioned(user, "a").expect("get").1, 0);
        assert_eq!(s.calendar_version(user).expect("cal"), 0);
        let (a, e) = (object("a", "one"), entry("a"));
        let mut c = put("a", &a, Expect::Version(0), Some(0), &e);
        c.processed_key = None;
        s.commit(&c).expect("first");
        let (obj, v) = s.get_versioned(user, "a").expect("get");
        assert_eq!((obj.is_some(), v), (true, 1));
        s.commit(&Commit {
            change: Change::Delete,
            expect: Expect::Version(1),
            expect_calendar: None,
            ..c
        })
        .expect("delete");
        // A deleted object keeps counting: an absent object is not "version 0" again.
        let (obj, v) = s.get_versioned(user, "a").expect("get");
        assert_eq!((obj.is_none(), v), (true, 2));
        assert_eq!(s.calendar_version(user).expect("cal"), 2);
        // Journal-only commits change no version.
        s.commit(&Commit {
            change: Change::Keep,
            expect: Expect::Version(2),
            expect_calendar: Some(2),
            ..c
        })
        .expect("keep");
        assert_eq!(s.get_versioned(user, "a").expect("get").1, 2);
        assert_eq!(s.calendar_version(user).expect("cal"), 2);
        assert_eq!(s.calendar_version("carol@example.org").expect("cal"), 0);
    }

    #[test]
    fn a_stale_object_version_conflicts_and_writes_nothing() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let s = Sled::open(dir.path()).expect("open");
        let user = "bob@example.org";
        let (first, e1) = (object("a", "first"), entry("a"));
        let mut c = put("a", &first, Expect::Version(0), None, &e1);
        c.processed_key = Some("m1");
        s.commit(&c).expect("first");
        let journal_before = s.journal(100).expect("journal").len();
        // A writer that read the object before the first commit (version 0).
        let (late, e2) = (object("a", "late"), entry("a"));
        let mut stale = put("a", &late, Expect::Version(0), None, &e2);
        stale.processed_key = Some("m2");
        match s.commit(&stale) {
            Err(StoreError::Conflict(why)) => assert!(why.contains("object"), "{why}"),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(summary(&s, "a").as_deref(), Some("first"));
        assert_eq!(s.get_versioned(user, "a").expect("get").1, 1);
        assert_eq!(s.calendar_version(user).expect("cal"), 1);
        assert!(!s.is_processed(user, "m2").expect("processed"));
        assert_eq!(s.journal(100).expect("journal").len(), journal_before);
        // A stale delete fails the same way.
        let del = Commit {
            change: Change::Delete,
            ..put("a", &late, Expect::Version(0), None, &e2)
        };
        assert!(matches!(s.commit(&del), Err(StoreError::Conflict(_))));
        assert_eq!(summary(&s, "a").as_deref(), Some("first"));
        // Against the version it read, the same write goes through.
        stale.expect = Expect::Version(1);
        s.commit(&stale).expect("current");
        assert_eq!(summary(&s, "a").as_deref(), Some("late"));
        assert!(s.is_processed(user, "m2").expect("processed"));
    }

    #[test]
    fn a_message_committed_meanwhile_conflicts() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let s = Sled::open(dir.path()).expect("open");
        let (a, e) = (object("a", "one"), entry("a"));
        s.commit(&Commit {
            change: Change::Keep,
            ..put("a", &a, Expect::Any, None, &e)
        })
        .expect("first copy");
        // A second copy of the message decided before the first was committed.
        assert!(matches!(
            s.commit(&put("a", &a, Expect::Any, None, &e)),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(summary(&s, "a"), None);
    }

    /// Two decisions that each read the whole calendar (say: "bob is free at 10:00") and write
    /// different objects: without the calendar version both would win (write skew).
    #[test]
    fn the_calendar_version_catches_write_skew_between_two_objects() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let s = Sled::open(dir.path()).expect("open");
        let user = "bob@example.org";
        let cal = s.calendar_version(user).expect("cal");
        let (va, vb) = (
            s.get_versioned(user, "a").expect("a").1,
            s.get_versioned(user, "b").expect("b").1,
        );
        let (a, ea) = (object("a", "booking a"), entry("a"));
        let (b, eb) = (object("b", "booking b"), entry("b"));
        let mut ca = put("a", &a, Expect::Version(va), Some(cal), &ea);
        ca.processed_key = Some("ma");
        let mut cb = put("b", &b, Expect::Version(vb), Some(cal), &eb);
        cb.processed_key = Some("mb");
        s.commit(&ca).expect("first booking");
        match s.commit(&cb) {
            Err(StoreError::Conflict(why)) => assert!(why.contains("calendar"), "{why}"),
            other => panic!("expected a calendar conflict, got {other:?}"),
        }
        assert_eq!(summary(&s, "b"), None);
        assert!(!s.is_processed(user, "mb").expect("processed"));
        assert_eq!(s.calendar_version(user).expect("cal"), cal + 1);
        // The same object versions without the calendar check: no conflict (b is untouched).
        cb.expect_calendar = None;
        s.commit(&cb).expect("object version only");
        assert_eq!(summary(&s, "b").as_deref(), Some("booking b"));
    }
}

//! The embedded store on sled. Trees:
//! - `objects`: user \0 uid -> Record (JSON)
//! - `busy`: user \0 start(8, order-preserving) uid \0 n(4) -> end(8) tentative(1)
//! - `busymax`: user -> longest busy period seen (8), bounds the index scan
//! - `processed`: user \0 message key -> time processed
//! - `journal`: id(8) -> JournalEntry (JSON)
//! - `proposals`: user \0 uid \0 id(8) -> COUNTER/DECLINECOUNTER calendar text
//! - `message_ids`: iSchedule message key -> remembered until (8), for replay refusal

use super::{Change, Commit, JournalEntry, Record, Result, Store, StoreError};
use crate::itip::{Busy, StoredObject};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;

pub struct Sled {
    db: sled::Db,
    objects: sled::Tree,
    busy: sled::Tree,
    busymax: sled::Tree,
    processed: sled::Tree,
    journal: sled::Tree,
    proposals: sled::Tree,
    message_ids: sled::Tree,
    ids_added: std::sync::atomic::AtomicU64,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

fn user_key(user: &str, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(user.len() + rest.len() + 1);
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
    let mut k = Vec::with_capacity(user.len() + uid.len() + 14);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&ord_i64(start));
    k.extend_from_slice(uid.as_bytes());
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

impl Sled {
    pub fn open(dir: &Path) -> Result<Sled> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("store"))
            .cache_capacity(256 * 1024 * 1024)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref ioe) if ioe.kind() == std::io::ErrorKind::WouldBlock => StoreError::Io(format!(
                    "{}: the store is in use by another process (is `imipd run` running on this data dir?)",
                    dir.display()
                )),
                e => StoreError::Io(format!("{}: {e}", dir.display())),
            })?;
        let t = |n: &str| db.open_tree(n).map_err(io);
        Ok(Sled {
            objects: t("objects")?,
            busy: t("busy")?,
            busymax: t("busymax")?,
            processed: t("processed")?,
            journal: t("journal")?,
            proposals: t("proposals")?,
            message_ids: t("message_ids")?,
            ids_added: std::sync::atomic::AtomicU64::new(0),
            db,
        })
    }
}

impl Store for Sled {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>> {
        match self.objects.get(user_key(user, uid)).map_err(io)? {
            None => Ok(None),
            Some(v) => {
                let rec: Record =
                    serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                rec.into_object(uid).map(Some)
            }
        }
    }

    fn list(&self, user: &str) -> Result<Vec<StoredObject>> {
        let prefix = user_key(user, "");
        let mut out = Vec::new();
        for kv in self.objects.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(io)?;
            let uid = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            let rec: Record =
                serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push(rec.into_object(&uid)?);
        }
        Ok(out)
    }

    fn commit(&self, c: &Commit) -> Result<()> {
        let okey = user_key(c.user, c.uid);
        let new_rec = match &c.change {
            Change::Put(obj, busy) => Some(Record::from_object(obj, busy)),
            Change::PutKeepBusy(obj) => Some(Record::from_object(obj, &[])),
            _ => None,
        };
        let keep_busy = matches!(c.change, Change::PutKeepBusy(_));
        let journal_line =
            serde_json::to_vec(c.journal).map_err(|e| StoreError::Io(e.to_string()))?;
        let journal_id = self.db.generate_id().map_err(io)?;
        let proposal = c.proposal.map(|p| p.calendar.to_ical());
        let keep = matches!(c.change, Change::Keep);
        let res: std::result::Result<(), TransactionError<StoreError>> = (
            &self.objects,
            &self.busy,
            &self.busymax,
            &self.processed,
            &self.journal,
            &self.proposals,
        )
            .transaction(|(objects, busy, busymax, processed, journal, proposals)| {
                if keep_busy {
                    let Some(rec) = &new_rec else { return Ok(()) };
                    let old_busy = match objects.get(&okey)? {
                        Some(old) => {
                            serde_json::from_slice::<Record>(&old)
                                .map_err(|e| {
                                    ConflictableTransactionError::Abort(StoreError::Corrupt(
                                        e.to_string(),
                                    ))
                                })?
                                .busy
                        }
                        None => Vec::new(),
                    };
                    let rec = Record {
                        kind: rec.kind.clone(),
                        ical: rec.ical.clone(),
                        stamps: rec.stamps.clone(),
                        busy: old_busy,
                    };
                    let bytes = serde_json::to_vec(&rec).map_err(|e| {
                        ConflictableTransactionError::Abort(StoreError::Io(e.to_string()))
                    })?;
                    objects.insert(okey.as_slice(), bytes)?;
                } else if !keep {
                    // Drop the old busy index entries of this object.
                    if let Some(old) = objects.get(&okey)? {
                        let old: Record = serde_json::from_slice(&old).map_err(|e| {
                            ConflictableTransactionError::Abort(StoreError::Corrupt(e.to_string()))
                        })?;
                        for (n, (s, _, _)) in old.busy.iter().enumerate() {
                            busy.remove(busy_key(c.user, *s, c.uid, n as u32))?;
                        }
                    }
                    match (&c.change, &new_rec) {
                        (Change::Put(_, periods), Some(rec)) => {
                            let bytes = serde_json::to_vec(rec).map_err(|e| {
                                ConflictableTransactionError::Abort(StoreError::Io(e.to_string()))
                            })?;
                            objects.insert(okey.as_slice(), bytes)?;
                            let mut longest = 0i64;
                            for (n, b) in periods.iter().enumerate() {
                                let mut v = Vec::with_capacity(9);
                                v.extend_from_slice(&ord_i64(b.end));
                                v.push(b.tentative as u8);
                                busy.insert(busy_key(c.user, b.start, c.uid, n as u32), v)?;
                                longest = longest.max(b.end - b.start);
                            }
                            let cur = busymax
                                .get(c.user.as_bytes())?
                                .map(|v| from_ord_i64(&v))
                                .unwrap_or(0);
                            if longest > cur {
                                busymax.insert(c.user.as_bytes(), &ord_i64(longest))?;
                            }
                        }
                        _ => {
                            objects.remove(okey.as_slice())?;
                        }
                    }
                }
                if let Some(pk) = c.processed_key {
                    processed.insert(user_key(c.user, pk), &ord_i64(c.journal.ts))?;
                }
                journal.insert(&journal_id.to_be_bytes(), journal_line.as_slice())?;
                if let Some(p) = &proposal {
                    let mut k = user_key(c.user, c.uid);
                    k.push(0);
                    k.extend_from_slice(&journal_id.to_be_bytes());
                    proposals.insert(k, p.as_bytes())?;
                }
                Ok(())
            });
        res.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => io(e),
        })
    }

    fn is_processed(&self, user: &str, key: &str) -> Result<bool> {
        self.processed.contains_key(user_key(user, key)).map_err(io)
    }

    fn busy(&self, user: &str, from: i64, to: i64) -> Result<Vec<Busy>> {
        let longest = self
            .busymax
            .get(user.as_bytes())
            .map_err(io)?
            .map(|v| from_ord_i64(&v))
            .unwrap_or(0);
        let mut lo = user_key(user, "");
        lo.extend_from_slice(&ord_i64(from.saturating_sub(longest)));
        let mut hi = user_key(user, "");
        hi.extend_from_slice(&ord_i64(to));
        let ulen = user.len() + 1;
        let mut out = Vec::new();
        for kv in self.busy.range(lo..hi) {
            let (k, v) = kv.map_err(io)?;
            if v.len() < 9 || k.len() < ulen + 8 {
                continue;
            }
            let start = from_ord_i64(&k[ulen..ulen + 8]);
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
        for kv in self.journal.iter().rev().take(limit) {
            let (_, v) = kv.map_err(io)?;
            if let Ok(e) = serde_json::from_slice::<JournalEntry>(&v) {
                out.push(e);
            }
        }
        out.reverse();
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool> {
        use std::sync::atomic::Ordering;
        let value = ord_i64(until);
        let mut current = None;
        // Bounded: a concurrent writer can make a swap fail only while it inserts the same key.
        for _ in 0..4 {
            match self
                .message_ids
                .compare_and_swap(key.as_bytes(), current.clone(), Some(&value[..]))
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
    fn forget_expired_ids(&self, now: i64) -> Result<()> {
        for kv in self.message_ids.iter() {
            let (k, v) = kv.map_err(io)?;
            if v.len() != 8 || from_ord_i64(&v) < now {
                self.message_ids.remove(k).map_err(io)?;
            }
        }
        Ok(())
    }
}

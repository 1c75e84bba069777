//! Effects: durable work a decision leaves to be done after its commit (an iMIP reply to mail,
//! an iSchedule relay, a plugin's work such as a CalDAV PUT). They are written in the same
//! commit as the object they follow from, so a crash can delay them but never lose them; the
//! daemon's effects runner drains them, at least once each, with backoff.

use serde::{Deserialize, Serialize};

/// One effect as committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Unique and ordered by creation (the store keys effects by it).
    pub id: String,
    pub kind: EffectKind,
    /// The calendar user and object it follows from, for its journal lines (may be empty).
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub uid: String,
    /// The kind's own serialized form (for `Imip`: the envelope and the RFC 5322 bytes).
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectKind {
    /// A message to send by mail (`[outbound] transport`).
    Imip,
    /// An iTIP message to POST to a remote iSchedule receiver.
    Ischedule,
    /// Work for the named plugin's effect handler.
    Plugin(String),
}

impl Effect {
    /// A new effect with a fresh id (see [`new_id`]).
    pub fn new(kind: EffectKind, user: &str, uid: &str, payload: Vec<u8>, host: &str) -> Effect {
        Effect {
            id: new_id(crate::clock::now_micros(), host),
            kind,
            user: user.to_string(),
            uid: uid.to_string(),
            payload,
        }
    }
}

impl EffectKind {
    /// The name journal lines and handler registries use: `imip`, `ischedule`, or the
    /// plugin's name.
    pub fn name(&self) -> &str {
        match self {
            EffectKind::Imip => "imip",
            EffectKind::Ischedule => "ischedule",
            EffectKind::Plugin(name) => name,
        }
    }
}

/// The journal line of one attempt at an effect (`imipd journal` prints it with
/// `"kind":"effect"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectLine {
    pub ts: i64,
    pub user: String,
    pub uid: String,
    /// [`EffectKind::name`].
    pub effect: String,
    /// `delivered`, `retrying` or `failed`.
    pub outcome: String,
    pub reason: String,
}

impl EffectLine {
    pub fn new(e: &Effect, ts: i64, outcome: &str, reason: &str) -> EffectLine {
        EffectLine {
            ts,
            user: e.user.clone(),
            uid: e.uid.clone(),
            effect: e.kind.name().to_string(),
            outcome: outcome.to_string(),
            reason: crate::sanitize::clean(reason),
        }
    }
}

/// Attempts after which an effect that keeps failing is set aside (about a week at the
/// longest backoff).
pub const MAX_ATTEMPTS: u32 = 200;

/// An effect waiting in the store, with its delivery attempts so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEffect {
    pub effect: Effect,
    pub attempts: u32,
    /// UNIX seconds before which it is not tried again.
    pub not_before: i64,
    /// Why the last attempt failed (empty before the first attempt).
    #[serde(default)]
    pub last_error: String,
}

/// Why an effect could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectError {
    pub message: String,
    /// True when retrying cannot help (the peer refused it for good): the effect is set aside
    /// for the administrator instead of retried.
    pub permanent: bool,
}

impl std::fmt::Display for EffectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The delay before attempt `attempts + 1`: 30 s doubling to at most 1 h.
pub fn backoff_secs(attempts: u32) -> i64 {
    30i64.saturating_mul(1i64 << attempts.min(7)).min(3600)
}

/// A new effect id: UNIX microseconds, a process-wide counter and the process id, so that ids
/// sort by creation and never collide between processes or hosts sharing a store (with `host`).
pub fn new_id(now_micros: i64, host: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{now_micros:016x}-{seq:08x}-{:x}-{}",
        std::process::id(),
        crate::sanitize::clean(host).replace(['/', ' '], "_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_secs(0), 30);
        assert_eq!(backoff_secs(1), 60);
        assert_eq!(backoff_secs(30), 3600);
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = new_id(1, "h");
        let b = new_id(2, "h");
        assert!(a < b);
        assert_ne!(new_id(3, "h"), new_id(3, "h"));
    }
}

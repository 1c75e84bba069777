//! The store backends (the `Store` trait lives in `imipd_core::store`). [`Sled`] is the
//! embedded default.

mod sled_store;
pub use imipd_core::store::*;
pub use sled_store::{Sled, DEFAULT_CACHE_MB};

#[cfg(feature = "fault-injection")]
use imipd_core::effects::{Effect, EffectLine, PendingEffect};
#[cfg(feature = "fault-injection")]
use imipd_core::itip::{Busy, StoredObject};
use std::sync::Arc;

/// Where the calendar store lives, from `[store] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded sled store under this data dir (no `[store] url`).
    Sled(std::path::PathBuf),
}

/// Why a store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// `[store]` names a store this build cannot open; the message is about `[store] url`.
    Config(String),
    /// The store is there but would not open: the cause.
    Store(StoreError),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Config(m) => write!(f, "[store] url: {m}"),
            OpenError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// The store `[store]` names. The error is about `[store] url`; it shows the URL's scheme,
/// never the URL (which may hold a password).
pub fn location(cfg: &crate::config::Config) -> std::result::Result<Location, String> {
    let Some(url) = cfg.store.url.as_deref() else {
        return Ok(Location::Sled(cfg.data_dir.clone()));
    };
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgresql" | "postgres") => {
            Err("the PostgreSQL store is not available in this build".into())
        }
        Some(s) => Err(format!(
            "{:?} is not a store URL scheme (postgresql:// or postgres://; leave url out for \
             the embedded store under data_dir)",
            imipd_core::sanitize::clean(s)
        )),
        None => Err(
            "not a URL (postgresql://...; leave url out for the embedded store under data_dir)"
                .into(),
        ),
    }
}

/// Opens (creating) the store `cfg` names: the one way the daemon and the command line open it.
pub fn open(cfg: &crate::config::Config) -> std::result::Result<Arc<dyn Store>, OpenError> {
    match location(cfg).map_err(OpenError::Config)? {
        Location::Sled(dir) => Sled::open_with_cache(
            &dir,
            cfg.store.cache_mb.unwrap_or(sled_store::DEFAULT_CACHE_MB),
        )
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(OpenError::Store),
    }
}

/// Whether the store `cfg` names was ever created (read-only commands create none).
pub fn exists(cfg: &crate::config::Config) -> bool {
    match location(cfg) {
        Ok(Location::Sled(dir)) => Sled::exists(&dir),
        Err(_) => false,
    }
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
        let now = imipd_core::clock::now();
        let before = now.saturating_sub((keep_days as i64).saturating_mul(86400));
        let st = store.clone();
        match tokio::task::spawn_blocking(move || st.prune_journal(before)).await {
            Ok(Ok(n)) if n > 0 => crate::app::log(format!(
                "journal: removed {n} lines older than {keep_days} days ([journal] keep_days)"
            )),
            Ok(Err(e)) => crate::app::log(format!("journal pruning failed: {e}")),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A store whose first `n` commits fail, for exercising the tempfail path end to end (set by
/// the `IMIPD_TEST_STORE_FAILURES` environment variable in builds with the `fault-injection`
/// feature, which release builds do not have).
#[cfg(feature = "fault-injection")]
pub struct Faulty {
    pub inner: std::sync::Arc<dyn Store>,
    pub remaining: std::sync::atomic::AtomicUsize,
}

#[cfg(feature = "fault-injection")]
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

#[cfg(feature = "fault-injection")]
impl Store for Faulty {
    fn get(&self, user: &str, uid: &str) -> Result<Option<StoredObject>> {
        self.inner.get(user, uid)
    }
    fn get_versioned(&self, user: &str, uid: &str) -> Result<(Option<StoredObject>, u64)> {
        self.inner.get_versioned(user, uid)
    }
    fn calendar_version(&self, user: &str) -> Result<u64> {
        self.inner.calendar_version(user)
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
    fn journal_lines(&self, filter: &JournalFilter, limit: usize) -> Result<Vec<JournalLine>> {
        self.inner.journal_lines(filter, limit)
    }
    fn add_effects(&self, effects: &[Effect]) -> Result<()> {
        self.inner.add_effects(effects)
    }
    fn due_effects(
        &self,
        now: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PendingEffect>> {
        self.inner.due_effects(now, after, limit)
    }
    fn pending_effects(&self, limit: usize) -> Result<Vec<PendingEffect>> {
        self.inner.pending_effects(limit)
    }
    fn effect_done(&self, id: &str, line: &EffectLine) -> Result<()> {
        self.inner.effect_done(id, line)
    }
    fn defer_effect(&self, id: &str, now: i64, line: &EffectLine) -> Result<()> {
        self.inner.defer_effect(id, now, line)
    }
    fn fail_effect(&self, id: &str, line: &EffectLine) -> Result<()> {
        self.inner.fail_effect(id, line)
    }
    fn failed_effects(&self, limit: usize) -> Result<Vec<PendingEffect>> {
        self.inner.failed_effects(limit)
    }
    fn effect_counts(&self) -> Result<(usize, usize)> {
        self.inner.effect_counts()
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn writer_begins(&self) {
        self.inner.writer_begins()
    }
    fn writer_flushes(&self) -> Result<()> {
        self.inner.writer_flushes()
    }
    fn writer_leaves(&self) {
        self.inner.writer_leaves()
    }
    fn flush_stats(&self) -> (u64, u64) {
        self.inner.flush_stats()
    }
    fn remember_message_id(&self, key: &str, until: i64, now: i64) -> Result<bool> {
        self.inner.remember_message_id(key, until, now)
    }
    fn forget_message_id(&self, key: &str) -> Result<()> {
        self.inner.forget_message_id(key)
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

//! `imipd run`: the daemon. Starts the front doors the config enables (milter, LMTP), the
//! control socket for the admin commands, and the effects runner (iMIP replies, iSchedule
//! relays, plugin effects, all committed with the decisions that caused them). SIGTERM/SIGINT finish
//! in-flight work and stop; SIGHUP reloads the configuration.

use crate::cli::{load_config, Args, CliError, EX_CONFIG, EX_IOERR, EX_TEMPFAIL};
use crate::config::{parse_listen, Config, Listen};
use crate::milter;
use crate::pipeline::{Delivery, Pipeline, Verdict};
use crate::proof::{Facts, Proof, Prover};
use crate::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};

/// Shared state of the running daemon.
pub struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) state: RwLock<State>,
    /// Wakes the effects runner: a commit added effects.
    pub(crate) effects_wakeup: Arc<Notify>,
    pub(crate) inflight: AtomicUsize,
    pub(crate) config_path: Option<std::path::PathBuf>,
    pub(crate) data_dir: std::path::PathBuf,
    /// Sessions to the downstream LMTP server (`[lmtp] deliver = "lmtp:..."`), kept open.
    pub(crate) downstream: crate::lmtp::client::Pool,
}

#[derive(Clone)]
pub(crate) struct State {
    pub(crate) cfg: Arc<Config>,
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) prover: Arc<Prover>,
    /// iSchedule, when the config enables the receiver or the sender.
    pub(crate) bridge: Option<Arc<crate::ischedule::Bridge>>,
    /// The effects runner's handlers for this configuration.
    pub(crate) effects: Arc<crate::effects::runner::Registry>,
}

/// One log line on stderr; control characters from the input never split or forge a line.
/// The line goes out in one write: stderr is unbuffered, so a formatted line would cost a
/// system call per piece, and on a pipe shared with other writers pieces could interleave.
pub(crate) fn log(msg: impl AsRef<str>) {
    use std::io::Write;
    let clean = crate::sanitize::clean(msg.as_ref());
    let mut line = String::with_capacity(clean.len() + 8);
    line.push_str("imipd: ");
    line.push_str(&clean);
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

const INLINE_TRIAGE_MAX: usize = 1 << 20;

impl Core {
    pub(crate) fn state(&self) -> State {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn build_state(
        store: Arc<dyn Store>,
        cfg: Config,
        wake: &Arc<Notify>,
    ) -> Result<State, String> {
        let cfg = Arc::new(cfg);
        let prover = Arc::new(Prover::new(&crate::config::auth_config(&cfg)?)?);
        let bridge = if cfg.ischedule.listen.is_some() || cfg.ischedule.sends() {
            Some(Arc::new(crate::ischedule::Bridge::new(cfg.clone())?))
        } else {
            None
        };
        let pipeline = Arc::new(Pipeline::new(store, cfg.clone()).waking(wake.clone()));
        // iMIP through [outbound] transport (none: replies wait in the store); iSchedule
        // relays when a bridge exists. Plugins with effects register their handler here too.
        let mut effects = crate::effects::runner::Registry::for_config(&cfg, None)?;
        if let Some(bridge) = &bridge {
            effects.register(
                &imipd_core::effects::EffectKind::Ischedule,
                Arc::new(crate::effects::relay::Handler {
                    bridge: bridge.clone(),
                    pipeline: pipeline.clone(),
                    wake: wake.clone(),
                }),
            );
        }
        Ok(State {
            pipeline,
            cfg,
            prover,
            bridge,
            effects: Arc::new(effects),
        })
    }

    fn reload(&self) {
        let Some(path) = &self.config_path else {
            log("SIGHUP: no config file to reload (running on built-in defaults)");
            return;
        };
        match Config::load(path) {
            Ok(mut cfg) => {
                cfg.data_dir = self.data_dir.clone();
                match Core::build_state(self.store.clone(), cfg, &self.effects_wakeup) {
                    Ok(st) => {
                        if let Ok(mut s) = self.state.write() {
                            *s = st;
                        }
                        log(format!(
                            "configuration reloaded from {} (listen addresses change on restart)",
                            path.display()
                        ));
                    }
                    Err(e) => log(format!("reload failed, keeping the old configuration: {e}")),
                }
            }
            Err(e) => log(format!("reload failed, keeping the old configuration: {e}")),
        }
    }

    /// Runs the pipeline (sender proof included: DKIM, S/MIME and PGP work stays off the async
    /// workers) in a blocking thread and makes the result durable.
    /// Messages up to this size are triaged on the door's async thread (a linear scan, well
    /// under a millisecond); larger ones on a blocking thread with the rest of the pipeline.
    pub(crate) async fn run_pipeline(
        &self,
        st: &State,
        raw: Arc<Vec<u8>>,
        recipients: crate::pipeline::Recipients,
        facts: Facts,
        queue_id: Option<String>,
    ) -> Result<Verdict, String> {
        // Ordinary mail is told apart here, on the door's thread: no parse, no blocking task.
        let triaged = raw.len() <= INLINE_TRIAGE_MAX;
        if triaged {
            let d = Delivery {
                raw: &raw,
                recipients: crate::pipeline::Recipients::Headers,
                queue_id: None,
                trust: crate::pipeline::Trust::Verify(&st.prover, facts.clone()),
            };
            if let Some(v) = st.pipeline.ordinary(&d) {
                return Ok(v);
            }
        }
        let pipeline = st.pipeline.clone();
        let prover = st.prover.clone();
        let res = tokio::task::spawn_blocking(move || {
            let d = Delivery {
                raw: &raw,
                recipients,
                queue_id,
                trust: crate::pipeline::Trust::Verify(&prover, facts),
            };
            // Durable when it returns.
            if triaged {
                pipeline.process_read(&d)
            } else {
                pipeline.process(&d)
            }
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("pipeline task failed: {e}"))??;
        Ok(res)
    }

    /// Logs the effects a verdict committed and wakes the runner for them.
    pub(crate) fn effects_committed(&self, door: &str, queue_id: Option<&str>, v: &Verdict) {
        for e in &v.effects {
            let to = crate::outbound::Outgoing::from_effect(e)
                .map(|m| format!(" to={}", m.to))
                .unwrap_or_default();
            log(format!(
                "{door}: queue_id={} effect={} id={} user={} uid={}{to} committed",
                queue_id.unwrap_or("-"),
                e.kind.name(),
                e.id,
                e.user,
                e.uid
            ));
        }
        if !v.effects.is_empty() {
            self.effects_wakeup.notify_one();
        }
    }

    pub(crate) fn log_verdict_debug(st: &State, door: &str, v: &Verdict, proof: &Proof) {
        if st.cfg.log.level == crate::config::LogLevel::Debug {
            log(format!(
                "{door}: msgid={} Authentication-Results: {}",
                v.message_id.as_deref().unwrap_or("-"),
                proof.results
            ));
            for n in &v.notes {
                log(format!(
                    "{door}: msgid={} note: {n}",
                    v.message_id.as_deref().unwrap_or("-")
                ));
            }
        }
    }

    pub(crate) fn log_verdict(door: &str, queue_id: Option<&str>, v: &Verdict) {
        for line in crate::doors::report::verdict_log_lines(door, queue_id, v) {
            log(line);
        }
    }
}

/// Connections served at once per door: high, because a descriptor and a parked task cost
/// little; idle and slow clients are cut by timeouts, not by locking everyone else out.
const MAX_CONNECTIONS: usize = 4096;
/// A milter or LMTP session idle this long is closed (Postfix's own smtpd_timeout is 300 s,
/// and it keeps the milter connection for the SMTP session).
const SESSION_IDLE: Duration = Duration::from_secs(300);

/// Raises the soft limit of open descriptors to the hard limit (at most 65,536), so that the
/// connection limits above can be reached.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            let want = l.rlim_max.min(65_536);
            if l.rlim_cur < want {
                l.rlim_cur = want;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
        }
    }
}

/// A system user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up by name (or a numeric uid) in the system's user database.
pub fn lookup_user(name: &str) -> Result<User, String> {
    let cname = std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    // SAFETY: passwd is a plain C struct of integers and pointers; all zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r/getpwuid_r write into pw and buf (of the given length) and set out to
    // &pw on success or null when there is no such user.
    let rc = unsafe {
        match name.parse::<u32>() {
            Ok(uid) => libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
            Err(_) => libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            ),
        }
    };
    if rc != 0 || out.is_null() {
        return Err(format!("no such user {name:?}"));
    }
    Ok(User {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Hands the data dir (store, outbox, control socket) to `u`, then switches the whole process
/// (every thread: glibc broadcasts set*id) to `u`'s uid, gid and supplementary groups, and
/// checks that root cannot be regained.
fn drop_privileges(
    u: &User,
    data_dir: &std::path::Path,
    sock: &std::path::Path,
) -> Result<(), String> {
    fn chown_tree(p: &std::path::Path, uid: u32, gid: u32, depth: usize) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        if md.is_dir() && depth < 16 {
            for e in std::fs::read_dir(p)? {
                chown_tree(&e?.path(), uid, gid, depth + 1)?;
            }
        }
        Ok(())
    }
    chown_tree(data_dir, u.uid, u.gid, 0)
        .map_err(|e| format!("chown {}: {e}", data_dir.display()))?;
    if sock.exists() {
        let _ = std::os::unix::fs::lchown(sock, Some(u.uid), Some(u.gid));
    }
    let cname = std::ffi::CString::new(u.name.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: plain system calls on integers and a NUL-terminated name.
    unsafe {
        let groups_ok = if u.name.parse::<u32>().is_ok() {
            libc::setgroups(1, &u.gid) == 0
        } else {
            libc::initgroups(cname.as_ptr(), u.gid as _) == 0
        };
        if !groups_ok {
            return Err(format!(
                "setgroups for {}: {}",
                u.name,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setgid(u.gid) != 0 {
            return Err(format!(
                "setgid {}: {}",
                u.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(u.uid) != 0 {
            return Err(format!(
                "setuid {}: {}",
                u.uid,
                std::io::Error::last_os_error()
            ));
        }
        if u.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            return Err("root privileges could be regained after setuid".into());
        }
    }
    Ok(())
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

async fn bind(l: &Listen) -> std::io::Result<Bound> {
    match l {
        Listen::Inet(hp) => Ok(Bound::Tcp(TcpListener::bind(hp).await?)),
        Listen::Unix(p) => {
            if p.exists() {
                // A stale socket from an earlier run; a live one would answer.
                if std::os::unix::net::UnixStream::connect(p).is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use", p.display()),
                    ));
                }
                let _ = std::fs::remove_file(p);
            }
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let l = UnixListener::bind(p)?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660));
            Ok(Bound::Unix(l, p.clone()))
        }
    }
}

fn unix_path(b: &Bound) -> Option<std::path::PathBuf> {
    match b {
        Bound::Unix(_, p) => Some(p.clone()),
        Bound::Tcp(_) => None,
    }
}

fn describe(b: &Bound) -> String {
    match b {
        Bound::Tcp(l) => l
            .local_addr()
            .map(|a| format!("inet:{a}"))
            .unwrap_or_default(),
        Bound::Unix(_, p) => format!("unix:{}", p.display()),
    }
}

/// Accepts connections until shutdown, each served by `serve`.
async fn accept_loop<F, Fut>(
    b: Bound,
    mut shutdown: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    serve: F,
) where
    F: Fn(Box<dyn AsyncStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let stream: Box<dyn AsyncStream> = tokio::select! {
            r = async {
                match &b {
                    Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Box::new(s) as Box<dyn AsyncStream>
                    }),
                    Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn AsyncStream>),
                }
            } => match r {
                Ok(s) => s,
                Err(e) => { log(format!("accept failed: {e}")); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let fut = serve(stream);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

pub use crate::milter::Conn as AsyncStream;

/// Test builds only: `IMIPD_TEST_STORE_FAILURES=n` makes the first n commits fail.
#[cfg(feature = "fault-injection")]
fn inject_store_failures(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let Some(n) = std::env::var("IMIPD_TEST_STORE_FAILURES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return store;
    };
    log(format!(
        "IMIPD_TEST_STORE_FAILURES={n}: the first {n} store commits will fail"
    ));
    Arc::new(crate::store::Faulty {
        inner: store,
        remaining: AtomicUsize::new(n),
    })
}

pub fn run(args: &Args) -> Result<i32, CliError> {
    let cfg = load_config(args)?;
    raise_fd_limit();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = match &cfg.user {
        Some(name) if root => {
            Some(lookup_user(name).map_err(|e| CliError::new(EX_CONFIG, format!("user: {e}")))?)
        }
        Some(name) => {
            log(format!(
                "user = {name:?} is set but imipd was not started as root: keeping the current user"
            ));
            None
        }
        None => None,
    };
    let config_path = args.config.clone().or_else(|| {
        let p = std::path::PathBuf::from(crate::cli::DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let store = crate::store::open(&cfg).map_err(|e| match e {
        crate::store::OpenError::Config(_) => CliError::new(EX_CONFIG, e.to_string()),
        crate::store::OpenError::Store(e) => CliError::new(EX_TEMPFAIL, e.to_string()),
    })?;
    #[cfg(feature = "fault-injection")]
    let store = inject_store_failures(store);
    let data_dir = cfg.data_dir.clone();
    let effects_wakeup = Arc::new(Notify::new());
    let state = Core::build_state(store.clone(), cfg.clone(), &effects_wakeup)
        .map_err(|e| CliError::new(EX_CONFIG, e))?;
    // Replies an older version left as files in its queue directory become effects, once.
    let host = cfg
        .authserv_id
        .clone()
        .unwrap_or_else(crate::proof::hostname);
    match crate::outbound::migrate_queue(&cfg, store.as_ref(), &host) {
        Ok(0) => {}
        Ok(n) => log(format!(
            "moved {n} queued message(s) from {} into the store",
            crate::outbound::queue_dir(&cfg).display()
        )),
        Err(e) => log(format!(
            "cannot move the queued messages of {} into the store (left in place): {e}",
            crate::outbound::queue_dir(&cfg).display()
        )),
    }
    if cfg.outbound.transport.is_none() {
        log("[outbound] transport is not set: iMIP replies wait in the store until it is");
    }
    let core = Arc::new(Core {
        store: store.clone(),
        state: RwLock::new(state),
        effects_wakeup: effects_wakeup.clone(),
        inflight: AtomicUsize::new(0),
        config_path,
        data_dir: data_dir.clone(),
        downstream: Default::default(),
    });
    if cfg.local_domains.is_empty() {
        log("local_domains is empty: every recipient is treated as local");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
    rt.block_on(async move {
        // Before anything is announced: a SIGTERM right after the listening lines must stop
        // the daemon cleanly, not kill it.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
        let (tx, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let timeout = SESSION_IDLE;
        let mut unix_socks: Vec<std::path::PathBuf> = Vec::new();
        if cfg.milter.enabled {
            let l = parse_listen(&cfg.milter.listen).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let b = bind(&l).await.map_err(|e| CliError::new(EX_IOERR, format!("milter {}: {e}", cfg.milter.listen)))?;
            unix_socks.extend(unix_path(&b));
            println!("{}", serde_json::json!({"listening": "milter", "address": describe(&b)}));
            log(format!("milter listening on {}", describe(&b)));
            let core2 = core.clone();
            let max = cfg.lmtp.max_message_size;
            tasks.push(tokio::spawn(accept_loop(b, rx.clone(), Arc::new(Semaphore::new(MAX_CONNECTIONS)), move |s| {
                let core = core2.clone();
                async move {
                    if let Err(e) = milter::serve(s, &core, timeout, max).await {
                        log(format!("milter connection: {e}"));
                    }
                }
            })));
        }
        if cfg.lmtp.enabled {
            let l = parse_listen(&cfg.lmtp.listen).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let b = bind(&l).await.map_err(|e| CliError::new(EX_IOERR, format!("lmtp {}: {e}", cfg.lmtp.listen)))?;
            unix_socks.extend(unix_path(&b));
            println!("{}", serde_json::json!({"listening": "lmtp", "address": describe(&b)}));
            log(format!("LMTP listening on {} (delivering to {})", describe(&b), cfg.lmtp.deliver));
            let door = Arc::new(crate::doors::lmtp::adapter::LmtpDoor(core.clone()));
            let host = cfg.authserv_id.clone().unwrap_or_else(crate::proof::hostname);
            let max = cfg.lmtp.max_message_size;
            tasks.push(tokio::spawn(accept_loop(b, rx.clone(), Arc::new(Semaphore::new(MAX_CONNECTIONS)), move |s| {
                let door = door.clone();
                let host = host.clone();
                async move {
                    if let Err(e) = crate::lmtp::serve(s, &host, door.as_ref(), max, timeout).await {
                        log(format!("lmtp connection: {e}"));
                    }
                }
            })));
        }
        if let Some(listen) = cfg.ischedule.listen.clone() {
            let (Some(cert), Some(key)) = (&cfg.ischedule.tls_cert, &cfg.ischedule.tls_key) else {
                return Err(CliError::new(EX_CONFIG, "[ischedule] listen needs tls_cert and tls_key"));
            };
            let tls = crate::doors::ischedule::server::tls_acceptor(cert, key).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let l = TcpListener::bind(&listen).await.map_err(|e| CliError::new(EX_IOERR, format!("ischedule {listen}: {e}")))?;
            let addr = l.local_addr().map(|a| format!("inet:{a}")).unwrap_or_default();
            println!("{}", serde_json::json!({"listening": "ischedule", "address": addr}));
            log(format!("iSchedule listening on {addr} (HTTPS)"));
            let core2 = core.clone();
            let state: crate::doors::ischedule::server::StateFn = Arc::new(move || {
                let st = core2.state();
                st.bridge.map(|b| (st.pipeline.clone(), b))
            });
            tasks.push(tokio::spawn(crate::doors::ischedule::server::serve(l, tls, state, rx.clone())));
        }
        if let Some(listen) = cfg.metrics.listen.clone() {
            let l = TcpListener::bind(&listen).await.map_err(|e| CliError::new(EX_IOERR, format!("metrics {listen}: {e}")))?;
            let addr = l.local_addr().map(|a| format!("inet:{a}")).unwrap_or_default();
            println!("{}", serde_json::json!({"listening": "metrics", "address": addr}));
            log(format!("metrics listening on {addr} (GET /metrics)"));
            tasks.push(tokio::spawn(crate::metrics::serve(l, rx.clone())));
        }
        let sock = crate::control::socket_path(&cfg);
        let _ = std::fs::remove_file(&sock);
        match UnixListener::bind(&sock) {
            Ok(l) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660));
                println!("{}", serde_json::json!({"listening": "control", "address": format!("unix:{}", sock.display())}));
                tasks.push(tokio::spawn(crate::doors::control::serve(core.clone(), l, rx.clone())));
            }
            Err(e) => log(format!("control socket {}: {e} (admin commands need the daemon stopped)", sock.display())),
        }
        // Everything is bound: now give up root when a user is configured.
        if let Some(u) = &run_as {
            for p in &unix_socks {
                let _ = std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid));
            }
            drop_privileges(u, &data_dir, &sock).map_err(|e| CliError::new(EX_CONFIG, e))?;
            log(format!("running as user {} (uid {}, gid {})", u.name, u.uid, u.gid));
        }
        let core2 = core.clone();
        tasks.push(tokio::spawn(crate::effects::runner::run(
            store.clone(),
            move || core2.state().effects,
            effects_wakeup.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::store::journal_retention(store.clone(), cfg.journal.keep_days, rx.clone())));
        use std::io::Write;
        let _ = std::io::stdout().flush();

        loop {
            tokio::select! {
                _ = term.recv() => { log("SIGTERM: finishing in-flight messages"); break; }
                _ = tokio::signal::ctrl_c() => { log("SIGINT: finishing in-flight messages"); break; }
                _ = hup.recv() => core.reload(),
            }
        }
        let _ = tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Give messages already in the pipeline time to finish, then make everything durable.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while core.inflight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = core.store.flush();
        let _ = std::fs::remove_file(&sock);
        let (callers, flushes) = core.store.flush_stats();
        if flushes > 0 {
            log(format!(
                "store: {callers} durability requests made durable by {flushes} flushes \
                 ({:.2} per flush)",
                callers as f64 / flushes as f64
            ));
        }
        log("stopped");
        Ok::<i32, CliError>(0)
    })
}

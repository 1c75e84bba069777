//! The command-line contract (DESIGN.md): `run`, `process`, `import`, `export`, `freebusy`,
//! `check-config`. Results go to stdout (JSON lines or iCalendar), logs to stderr.

use crate::config::Config;
use crate::ical;
use crate::pipeline::{Delivery, Outgoing, Pipeline};
use crate::store::{self, Sled, Store};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// sysexits(3) codes, as mail software uses them.
pub const EX_USAGE: i32 = 64;
pub const EX_DATAERR: i32 = 65;
pub const EX_NOINPUT: i32 = 66;
pub const EX_IOERR: i32 = 74;
pub const EX_TEMPFAIL: i32 = 75;
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_CONFIG: &str = "/etc/imipd/imipd.toml";

const USAGE: &str = "usage: imipd [--config FILE] [--data-dir DIR] COMMAND
commands:
  run                                  start the front doors the config enables
  process [--recipient ADDR]... [--trust-sender] [--outbox DIR] [FILE|-]
                                       run one message through the pipeline
  import --user ADDR FILE.ics          store each UID of FILE in ADDR's calendar
  export --user ADDR [--uid UID]       print a stored object or the whole calendar
  freebusy --user ADDR --from DATETIME --to DATETIME [--originator ADDR]
                                       print a VFREEBUSY for that window (a user of
                                       another domain is asked over iSchedule)
  send --sender ADDR [--recipient ADDR]... [FILE|-]
                                       record iTIP a local user sent and deliver it
                                       over iSchedule where the recipient's domain can
  ischedule-key                        print the DNS TXT record to publish for the
                                       [ischedule] signing key
  check-config                         validate the configuration
  version                              print the version";

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(m: impl Into<String>) -> CliError {
        CliError {
            code: EX_USAGE,
            message: format!("{}\n{USAGE}", m.into()),
        }
    }
    pub fn new(code: i32, m: impl Into<String>) -> CliError {
        CliError {
            code,
            message: m.into(),
        }
    }
}

/// Parsed command line.
#[derive(Debug, Default)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub command: String,
    pub recipients: Vec<String>,
    pub trust_sender: bool,
    pub outbox: Option<PathBuf>,
    pub user: Option<String>,
    pub uid: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub file: Option<String>,
    /// `send --sender`: the local user who sent the message.
    pub sender: Option<String>,
    /// `freebusy --originator`: who asks another domain.
    pub originator: Option<String>,
}

pub fn parse_args(argv: &[String]) -> Result<Args, CliError> {
    let mut a = Args::default();
    let mut it = argv.iter().skip(1);
    let mut positional: Vec<String> = Vec::new();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |n: &str| -> Result<String, CliError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| CliError::usage(format!("{n} needs a value"))),
            }
        };
        match name.as_str() {
            "--config" | "-c" => a.config = Some(PathBuf::from(value(&name)?)),
            "--data-dir" | "-d" => a.data_dir = Some(PathBuf::from(value(&name)?)),
            "--recipient" => a.recipients.push(value(&name)?),
            "--trust-sender" => a.trust_sender = true,
            "--outbox" => a.outbox = Some(PathBuf::from(value(&name)?)),
            "--user" => a.user = Some(value(&name)?),
            "--uid" => a.uid = Some(value(&name)?),
            "--from" => a.from = Some(value(&name)?),
            "--to" => a.to = Some(value(&name)?),
            "--sender" => a.sender = Some(value(&name)?),
            "--originator" => a.originator = Some(value(&name)?),
            "--help" | "-h" => {
                return Err(CliError::new(0, USAGE));
            }
            "-" => positional.push("-".into()),
            s if s.starts_with('-') => return Err(CliError::usage(format!("unknown option {s}"))),
            _ => positional.push(arg.clone()),
        }
    }
    let mut pos = positional.into_iter();
    a.command = pos
        .next()
        .ok_or_else(|| CliError::usage("no command given"))?;
    a.file = pos.next();
    if let Some(extra) = pos.next() {
        return Err(CliError::usage(format!("unexpected argument {extra}")));
    }
    Ok(a)
}

/// Loads the config: --config, else /etc/imipd/imipd.toml when present, else the defaults.
pub fn load_config(args: &Args) -> Result<Config, CliError> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).map_err(|e| CliError::new(EX_CONFIG, e.to_string()))?,
        None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))
            .map_err(|e| CliError::new(EX_CONFIG, e.to_string()))?,
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    Ok(cfg)
}

pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, CliError> {
    Sled::open(&cfg.data_dir)
        .map(|s| Arc::new(s) as Arc<dyn Store>)
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))
}

fn need_user(args: &Args) -> Result<String, CliError> {
    let u = args
        .user
        .as_deref()
        .ok_or_else(|| CliError::usage(format!("{} needs --user ADDR", args.command)))?;
    let n = ical::norm_addr(u);
    if !n.contains('@') {
        return Err(CliError::usage(format!("{u:?} is not a mail address")));
    }
    Ok(n)
}

/// Output of an admin command: what goes to stdout and stderr.
#[derive(Debug, Default)]
pub struct Io {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
}

impl Io {
    fn outln(&mut self, s: impl AsRef<str>) {
        self.out.extend_from_slice(s.as_ref().as_bytes());
        self.out.push(b'\n');
    }
    fn errln(&mut self, s: impl AsRef<str>) {
        self.err.extend_from_slice(b"imipd: ");
        self.err.extend_from_slice(s.as_ref().as_bytes());
        self.err.push(b'\n');
    }
}

/// What an admin command works on: the daemon's, or one opened for this command.
pub struct Env {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// The daemon's sender-proof checks; built on demand for a one-off command.
    pub prover: Option<Arc<crate::proof::Prover>>,
    /// The daemon's iSchedule bridge; built on demand for a one-off command.
    pub bridge: Option<Arc<crate::ischedule::Bridge>>,
}

impl Env {
    fn bridge(&self) -> Result<Arc<crate::ischedule::Bridge>, CliError> {
        match &self.bridge {
            Some(b) => Ok(b.clone()),
            None => crate::ischedule::Bridge::new(self.cfg.clone())
                .map(Arc::new)
                .map_err(|e| CliError::new(EX_CONFIG, e)),
        }
    }
}

/// Runs a future from synchronous code, inside or outside a tokio runtime's blocking thread.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CliError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => Ok(h.block_on(f)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(f))
            .map_err(|e| CliError::new(EX_IOERR, e.to_string())),
    }
}

/// The commands that need the store, and so go through the control socket while the daemon runs.
pub fn is_admin(command: &str) -> bool {
    matches!(
        command,
        "process" | "import" | "export" | "freebusy" | "send"
    )
}

/// Runs the command; returns the exit code.
pub fn main_with(argv: &[String]) -> i32 {
    let args = match parse_args(argv) {
        Ok(a) => a,
        Err(e) => {
            if e.code == 0 {
                println!("{}", e.message);
            } else {
                eprintln!("imipd: {}", e.message);
            }
            return e.code;
        }
    };
    let res = if is_admin(&args.command) {
        admin_local_or_remote(argv, &args)
    } else {
        dispatch(&args)
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imipd: {}", e.message);
            e.code
        }
    }
}

/// Reads the command's input here (a relative path means this process's directory).
fn command_input(args: &Args) -> Result<Option<Vec<u8>>, CliError> {
    match args.command.as_str() {
        "process" | "send" => read_input(args.file.as_deref()).map(Some),
        "import" => {
            let file = args
                .file
                .as_deref()
                .ok_or_else(|| CliError::usage("import needs FILE.ics"))?;
            read_input(Some(file)).map(Some)
        }
        _ => Ok(None),
    }
}

fn admin_local_or_remote(argv: &[String], args: &Args) -> Result<i32, CliError> {
    // Validate what can be validated before touching the store.
    match args.command.as_str() {
        "process" => {}
        "send" => {
            need_sender(args)?;
        }
        _ => {
            need_user(args)?;
        }
    }
    let cfg = Arc::new(load_config(args)?);
    let input = command_input(args)?;
    let mut io = Io::default();
    let code = match Sled::open(&cfg.data_dir) {
        Ok(store) => {
            let env = Env {
                cfg: cfg.clone(),
                store: Arc::new(store),
                prover: None,
                bridge: None,
            };
            run_admin(args, &env, input, &mut io)
        }
        Err(e) => {
            let sock = crate::control::socket_path(&cfg);
            if !sock.exists() {
                return Err(CliError::new(EX_TEMPFAIL, e.to_string()));
            }
            let mut argv = argv.to_vec();
            // The daemon runs elsewhere: make the outbox path absolute.
            if let Some(pos) = argv.iter().position(|a| a == "--outbox") {
                if let Some(p) = argv.get(pos + 1) {
                    let abs = std::env::current_dir()
                        .map(|d| d.join(p))
                        .unwrap_or_else(|_| PathBuf::from(p));
                    argv[pos + 1] = abs.display().to_string();
                }
            }
            crate::control::call(&sock, &argv, input.as_deref(), &mut io).map_err(|e| {
                CliError::new(
                    EX_TEMPFAIL,
                    format!("control socket {}: {e}", sock.display()),
                )
            })?
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().write_all(&io.out);
    let _ = std::io::stderr().write_all(&io.err);
    Ok(code)
}

/// Runs an admin command against `env`, writing into `io`. Returns the exit code.
pub fn run_admin(args: &Args, env: &Env, input: Option<Vec<u8>>, io: &mut Io) -> i32 {
    let res = match args.command.as_str() {
        "process" => cmd_process(args, env, input.unwrap_or_default(), io),
        "import" => cmd_import(args, env, input.unwrap_or_default(), io),
        "export" => cmd_export(args, env, io),
        "freebusy" => cmd_freebusy(args, env, io),
        "send" => cmd_send(args, env, input.unwrap_or_default(), io),
        other => Err(CliError::usage(format!("unknown command {other:?}"))),
    };
    match res {
        Ok(c) => c,
        Err(e) => {
            io.errln(&e.message);
            e.code
        }
    }
}

fn dispatch(args: &Args) -> Result<i32, CliError> {
    match args.command.as_str() {
        "version" => {
            println!("imipd {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "check-config" => {
            let cfg = load_config(args)?;
            let file = args.config.clone().unwrap_or_else(|| {
                PathBuf::from(if Path::new(DEFAULT_CONFIG).exists() {
                    DEFAULT_CONFIG
                } else {
                    "(built-in defaults)"
                })
            });
            println!(
                "{}",
                serde_json::json!({"config": file.display().to_string(), "ok": true, "data_dir": cfg.data_dir.display().to_string()})
            );
            Ok(0)
        }
        "run" => crate::daemon_entry(args),
        "ischedule-key" => {
            let cfg = load_config(args)?;
            let v =
                crate::ischedule::key_publication(&cfg).map_err(|e| CliError::new(EX_CONFIG, e))?;
            println!("{v}");
            Ok(0)
        }
        other => Err(CliError::usage(format!("unknown command {other:?}"))),
    }
}

fn read_input(file: Option<&str>) -> Result<Vec<u8>, CliError> {
    match file {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| CliError::new(EX_IOERR, format!("reading standard input: {e}")))?;
            Ok(buf)
        }
        Some(f) => std::fs::read(f).map_err(|e| CliError::new(EX_NOINPUT, format!("{f}: {e}"))),
    }
}

fn cmd_process(args: &Args, env: &Env, raw: Vec<u8>, io: &mut Io) -> Result<i32, CliError> {
    let pipeline = Pipeline::new(env.store.clone(), env.cfg.clone());
    let prover;
    let trust = if args.trust_sender {
        crate::pipeline::Trust::Sender
    } else {
        prover = match &env.prover {
            Some(p) => p.clone(),
            None => Arc::new(
                crate::proof::Prover::new(&env.cfg).map_err(|e| CliError::new(EX_CONFIG, e))?,
            ),
        };
        crate::pipeline::Trust::Verify(&prover, crate::proof::Facts::default())
    };
    let recipients: Vec<String> = args.recipients.iter().map(|r| ical::norm_addr(r)).collect();
    let delivery = Delivery {
        raw: &raw,
        recipients,
        queue_id: None,
        trust,
    };
    let verdict = pipeline
        .process(&delivery)
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    if !args.trust_sender {
        io.errln(format!("Authentication-Results: {}", verdict.proof.results));
    }
    if verdict.recipients.is_empty() {
        io.errln(format!(
            "note: no local recipient in To/Cc (local_domains: {}); nothing was applied. \
             Name one with --recipient ADDR",
            if env.cfg.local_domains.is_empty() {
                "any".to_string()
            } else {
                env.cfg.local_domains.join(", ")
            }
        ));
    }
    env.store
        .flush()
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    for note in &verdict.notes {
        io.errln(format!("note: {note}"));
    }
    send_outgoing(&env.cfg, args.outbox.as_deref(), &verdict.outgoing, io)?;
    for o in &verdict.outcomes {
        io.outln(serde_json::to_string(o).unwrap_or_default());
        io.errln(format!(
            "msgid={} rcpt={} uid={} method={} outcome={} reason={}",
            verdict.message_id.as_deref().unwrap_or("-"),
            o.recipient,
            o.uid,
            o.method,
            o.outcome,
            o.reason
        ));
    }
    Ok(0)
}

/// Sends (or writes) what the pipeline produced.
fn send_outgoing(
    cfg: &Config,
    outbox: Option<&Path>,
    out: &[Outgoing],
    io: &mut Io,
) -> Result<(), CliError> {
    for m in out {
        let p = match outbox {
            Some(dir) => crate::outbound::write_eml(dir, &m.data)
                .map_err(|e| CliError::new(EX_IOERR, format!("{}: {e}", dir.display())))?,
            None => crate::outbound::enqueue(cfg, m).map_err(|e| CliError::new(EX_IOERR, e))?,
        };
        io.errln(format!("message for {} written to {}", m.to, p.display()));
    }
    Ok(())
}

fn cmd_import(args: &Args, env: &Env, text: Vec<u8>, io: &mut Io) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let file = args.file.as_deref().unwrap_or("-");
    let text = String::from_utf8_lossy(&text);
    let pipeline = Pipeline::new(env.store.clone(), env.cfg.clone());
    let uids = pipeline
        .import(&user, &text)
        .map_err(|e| CliError::new(EX_DATAERR, format!("{file}: {e}")))?;
    env.store
        .flush()
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    for uid in uids {
        io.outln(
            serde_json::json!({"user": ical::mailto(&user), "uid": uid, "outcome": "imported"})
                .to_string(),
        );
    }
    Ok(0)
}

fn cmd_export(args: &Args, env: &Env, io: &mut Io) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let text = match &args.uid {
        Some(uid) => match env
            .store
            .get(&user, uid)
            .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?
        {
            Some(obj) => store::object_to_ical(&obj, None),
            None => {
                return Err(CliError::new(
                    1,
                    format!("no object with UID {uid:?} in the calendar of {user}"),
                ));
            }
        },
        None => {
            let objs = env
                .store
                .list(&user)
                .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
            store::objects_to_ical(&objs)
        }
    };
    io.out.extend_from_slice(text.as_bytes());
    Ok(0)
}

fn cmd_freebusy(args: &Args, env: &Env, io: &mut Io) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let parse = |name: &str, v: &Option<String>| -> Result<i64, CliError> {
        let s = v
            .as_deref()
            .ok_or_else(|| CliError::usage(format!("freebusy needs {name} DATETIME")))?;
        ical::time::parse_cli_datetime(s).ok_or_else(|| {
            CliError::usage(format!(
                "{name} {s:?} is not a date-time (20261101T000000Z or 2026-11-01T00:00:00Z)"
            ))
        })
    };
    let from = parse("--from", &args.from)?;
    let to = parse("--to", &args.to)?;
    if to <= from {
        return Err(CliError::usage("--to must be after --from"));
    }
    if !env.cfg.local_domains.is_empty() && !env.cfg.is_local(&user) {
        return remote_freebusy(args, env, &user, from, to, io);
    }
    let busy = env
        .store
        .busy(&user, from, to)
        .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
    let busy = crate::itip::merge_busy(busy, from, to);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let fb = crate::itip::freebusy_component(&user, None, None, from, to, &busy, now);
    let mut cal = ical::Component::new("VCALENDAR");
    cal.props.push(ical::Prop::new("VERSION", "2.0"));
    cal.props
        .push(ical::Prop::new("PRODID", "-//imipd//imipd//EN"));
    cal.subs.push(fb);
    io.out.extend_from_slice(cal.to_ical().as_bytes());
    Ok(0)
}

fn need_sender(args: &Args) -> Result<String, CliError> {
    let u = args
        .sender
        .as_deref()
        .ok_or_else(|| CliError::usage("send needs --sender ADDR"))?;
    let n = ical::norm_addr(u);
    if !n.contains('@') {
        return Err(CliError::usage(format!("{u:?} is not a mail address")));
    }
    Ok(n)
}

/// Free/busy of a user of another domain, asked over iSchedule.
fn remote_freebusy(
    args: &Args,
    env: &Env,
    user: &str,
    from: i64,
    to: i64,
    io: &mut Io,
) -> Result<i32, CliError> {
    let bridge = env.bridge()?;
    let originator = match &args.originator {
        Some(o) => ical::norm_addr(o),
        None => bridge
            .admin_originator()
            .map(|o| ical::norm_addr(&o))
            .ok_or_else(|| {
                CliError::new(
                    EX_CONFIG,
                    "asking another domain needs [ischedule] dkim_key (or --originator)",
                )
            })?,
    };
    match block_on(bridge.freebusy(&originator, user, from, to))? {
        Ok(cal) => {
            io.out.extend_from_slice(cal.as_bytes());
            Ok(0)
        }
        Err(e) => Err(CliError::new(
            1,
            format!("free/busy over iSchedule failed: {e}"),
        )),
    }
}

/// `send`: what the milter does for a message a local user submitted: record it in their
/// calendar, deliver it over iSchedule where possible, record SCHEDULE-STATUS. One JSON line
/// per object and recipient.
fn cmd_send(args: &Args, env: &Env, raw: Vec<u8>, io: &mut Io) -> Result<i32, CliError> {
    let sender = need_sender(args)?;
    if env.cfg.local_domains.is_empty() || !env.cfg.is_local(&sender) {
        return Err(CliError::usage(format!(
            "{sender} is not in local_domains: only local users send"
        )));
    }
    let ex = crate::extract::extract(&raw);
    let recipients: Vec<String> = if args.recipients.is_empty() {
        ex.recipients.clone()
    } else {
        args.recipients.iter().map(|r| ical::norm_addr(r)).collect()
    };
    let pipeline = Pipeline::new(env.store.clone(), env.cfg.clone());
    for o in pipeline
        .record_outgoing(&raw, &sender, &recipients)
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?
    {
        io.errln(format!("uid={} {} ({})", o.uid, o.outcome, o.reason));
    }
    let bridge = env.bridge()?;
    let report = block_on(bridge.relay_outgoing(&raw, &sender, &recipients))?;
    let mut by_uid: std::collections::BTreeMap<String, Vec<(String, String)>> = Default::default();
    for r in &report.relayed {
        io.outln(r.json().to_string());
        if r.component != "VFREEBUSY" {
            by_uid
                .entry(r.uid.clone())
                .or_default()
                .push((r.recipient.clone(), r.schedule_status()));
        }
    }
    for (uid, statuses) in by_uid {
        pipeline
            .record_schedule_status(&sender, &uid, &statuses)
            .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    }
    env.store
        .flush()
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    let replies: Vec<Outgoing> = report
        .replies
        .iter()
        .map(|m| Outgoing {
            from: m.from.clone(),
            to: m.to.clone(),
            data: crate::outbound::build_imip(m, None),
        })
        .collect();
    send_outgoing(&env.cfg, args.outbox.as_deref(), &replies, io)?;
    Ok(0)
}

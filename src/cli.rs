//! The command-line contract (DESIGN.md): the commands of [`COMMANDS`] (`run`, `process`,
//! `import`, `export`, `freebusy`, `journal`, `send`, `ischedule-key`, `check-config`,
//! `version`). Results go to stdout (JSON lines or iCalendar), logs to stderr.

use crate::config::Config;
use crate::ical;
use crate::pipeline::{Delivery, Pipeline};
use crate::store::{self, Store};
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

/// One command of the command line: its name, synopsis, help, and the function that runs it.
pub struct CommandSpec {
    pub name: &'static str,
    /// Options and operands after the command name.
    pub synopsis: &'static str,
    pub help: &'static str,
    pub handler: Handler,
}

/// An admin command: its arguments, where it runs, its input (FILE or standard input), its output.
pub type AdminFn = fn(&Args, &Env, Option<Vec<u8>>, &mut Io) -> Result<i32, CliError>;

/// How a command runs.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Needs nothing but the config (and may start the daemon).
    Local(fn(&Args) -> Result<i32, CliError>),
    /// Works on the store: locally, or through the daemon's control socket while it runs.
    /// `reads` commands never create a store.
    Admin { run: AdminFn, reads: bool },
}

/// The dispatch table: every command `imipd` knows, in the order `--help` lists them.
pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "run",
        synopsis: "",
        help: "start the front doors the config enables",
        handler: Handler::Local(crate::daemon_entry),
    },
    CommandSpec {
        name: "process",
        synopsis: "[--recipient ADDR]... [--trust-sender] [--outbox DIR] [FILE|-]",
        help: "run one message through the pipeline",
        handler: Handler::Admin {
            run: |a, e, i, io| cmd_process(a, e, i.unwrap_or_default(), io),
            reads: false,
        },
    },
    CommandSpec {
        name: "import",
        synopsis: "--user ADDR FILE.ics",
        help: "store each UID of FILE in ADDR's calendar",
        handler: Handler::Admin {
            run: |a, e, i, io| cmd_import(a, e, i.unwrap_or_default(), io),
            reads: false,
        },
    },
    CommandSpec {
        name: "export",
        synopsis: "--user ADDR [--uid UID]",
        help: "print a stored object or the whole calendar",
        handler: Handler::Admin {
            run: |a, e, _, io| cmd_export(a, e, io),
            reads: true,
        },
    },
    CommandSpec {
        name: "freebusy",
        synopsis: "--user ADDR --from DATETIME --to DATETIME [--originator ADDR]",
        help: "print a VFREEBUSY for that window (a user of another domain is asked over iSchedule)",
        handler: Handler::Admin {
            run: |a, e, _, io| cmd_freebusy(a, e, io),
            reads: true,
        },
    },
    CommandSpec {
        name: "journal",
        synopsis: "[--user ADDR] [--message-id ID] [--limit N]",
        help: "print the newest N (default 100) audit-journal lines, oldest first",
        handler: Handler::Admin {
            run: |a, e, _, io| cmd_journal(a, e, io),
            reads: true,
        },
    },
    CommandSpec {
        name: "send",
        synopsis: "--sender ADDR [--recipient ADDR]... [FILE|-]",
        help: "record iTIP a local user sent and deliver it over iSchedule where the recipient's domain can",
        handler: Handler::Admin {
            run: |a, e, i, io| cmd_send(a, e, i.unwrap_or_default(), io),
            reads: false,
        },
    },
    CommandSpec {
        name: "ischedule-key",
        synopsis: "",
        help: "print the DNS TXT record to publish for the [ischedule] signing key",
        handler: Handler::Local(cmd_ischedule_key),
    },
    CommandSpec {
        name: "check-config",
        synopsis: "",
        help: "validate the configuration",
        handler: Handler::Local(cmd_check_config),
    },
    CommandSpec {
        name: "version",
        synopsis: "",
        help: "print the version (also --version)",
        handler: Handler::Local(cmd_version),
    },
];

/// The options before the command.
pub const GLOBAL_SYNOPSIS: &str = "[--config FILE] [--data-dir DIR]";

pub fn command(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The `--help` text, made from the dispatch table.
pub fn usage() -> String {
    let mut u =
        format!("usage: imipd {GLOBAL_SYNOPSIS} COMMAND\n       imipd --version\ncommands:");
    for c in COMMANDS {
        let head = format!("  {} {}", c.name, c.synopsis);
        u.push_str(&format!("\n{}\n      {}", head.trim_end(), c.help));
    }
    u
}

pub fn version_line() -> String {
    format!("imipd {}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(m: impl Into<String>) -> CliError {
        CliError {
            code: EX_USAGE,
            message: format!("{}\n{}", m.into(), usage()),
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
    /// `journal --message-id`.
    pub message_id: Option<String>,
    /// `journal --limit`.
    pub limit: Option<usize>,
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
            "--message-id" => a.message_id = Some(value(&name)?),
            "--limit" => {
                let v = value(&name)?;
                a.limit = Some(v.parse::<usize>().map_err(|_| {
                    CliError::usage(format!("--limit {v:?} is not a number of lines"))
                })?);
            }
            "--help" | "-h" => {
                return Err(CliError::new(0, usage()));
            }
            "--version" | "-V" => {
                return Err(CliError::new(0, version_line()));
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
    if command(&a.command).is_none() {
        return Err(CliError::usage(format!("unknown command {:?}", a.command)));
    }
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

/// Opens the store `cfg` names ([`store::open`]): a store this build cannot open is a config
/// error, one that will not open an I/O error with its cause.
pub fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, CliError> {
    store::open(cfg).map_err(|e| match e {
        store::OpenError::Config(_) => CliError::new(EX_CONFIG, e.to_string()),
        store::OpenError::Store(_) => CliError::new(EX_IOERR, e.to_string()),
    })
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
        self::command(command).map(|c| c.handler),
        Some(Handler::Admin { .. })
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
    let res = match command(&args.command).map(|c| c.handler) {
        Some(Handler::Local(f)) => f(&args),
        Some(Handler::Admin { reads, .. }) => admin_local_or_remote(argv, &args, reads),
        None => Err(CliError::usage(format!(
            "unknown command {:?}",
            args.command
        ))),
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

/// Where `data_dir` came from, for messages that say where a command looked.
pub fn data_dir_origin(args: &Args) -> String {
    if args.data_dir.is_some() {
        "from --data-dir".into()
    } else if let Some(c) = &args.config {
        format!("data_dir of {}", c.display())
    } else if Path::new(DEFAULT_CONFIG).exists() {
        format!("data_dir of {DEFAULT_CONFIG}")
    } else {
        format!("the built-in default: no --config and no {DEFAULT_CONFIG}")
    }
}

/// Checks what can be checked before the store is opened (a usage error must not open, let
/// alone create, a store).
fn check_admin_args(args: &Args) -> Result<(), CliError> {
    match args.command.as_str() {
        "send" => need_sender(args).map(|_| ()),
        "import" | "export" => need_user(args).map(|_| ()),
        "freebusy" => {
            need_user(args)?;
            freebusy_window(args).map(|_| ())
        }
        "journal" => match &args.user {
            Some(_) => need_user(args).map(|_| ()),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn admin_local_or_remote(argv: &[String], args: &Args, reads: bool) -> Result<i32, CliError> {
    check_admin_args(args)?;
    let cfg = Arc::new(load_config(args)?);
    let input = command_input(args)?;
    let data_dir = cfg.data_dir.clone();
    let origin = data_dir_origin(args);
    let sock = crate::control::socket_path(&cfg);
    // Free/busy of a user of another domain is asked over iSchedule, not read from the store.
    let remote_freebusy = args.command == "freebusy"
        && args
            .user
            .as_deref()
            .is_some_and(|u| !cfg.is_local(&ical::norm_addr(u)));
    // The daemon runs on this data dir if its control socket takes a connection (a socket file
    // left behind by a daemon that died refuses it).
    let daemon = std::os::unix::net::UnixStream::connect(&sock);
    if daemon.is_err() && reads && !remote_freebusy && !store::exists(&cfg) {
        return Err(CliError::new(
            EX_NOINPUT,
            format!(
                "no calendar store in {} ({origin}); {} creates none (give --data-dir or --config)",
                data_dir.display(),
                args.command
            ),
        ));
    }
    let mut io = Io::default();
    io.errln(format!("store {} ({origin})", data_dir.display()));
    let code = match daemon {
        Err(not_running) => {
            let store = open_store(&cfg).map_err(|mut e| {
                e.message = format!("{} ({origin})", e.message);
                // A socket that is there but not ours to use is worth naming too.
                if sock.exists() && not_running.kind() != std::io::ErrorKind::ConnectionRefused {
                    e.message = format!(
                        "{}; control socket {}: {not_running}",
                        e.message,
                        sock.display()
                    );
                }
                e
            })?;
            let env = Env {
                cfg: cfg.clone(),
                store,
                prover: None,
                bridge: None,
            };
            run_admin(args, &env, input, &mut io)
        }
        Ok(conn) => {
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
            crate::control::call_on(conn, &argv, input.as_deref(), &mut io).map_err(|e| {
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
    let res = match command(&args.command).map(|c| c.handler) {
        Some(Handler::Admin { run, .. }) => run(args, env, input, io),
        _ => Err(CliError::usage(format!(
            "{:?} is not a command that works on the store",
            args.command
        ))),
    };
    match res {
        Ok(c) => c,
        Err(e) => {
            io.errln(&e.message);
            e.code
        }
    }
}

fn cmd_version(_: &Args) -> Result<i32, CliError> {
    println!("{}", version_line());
    Ok(0)
}

fn cmd_check_config(args: &Args) -> Result<i32, CliError> {
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

fn cmd_ischedule_key(args: &Args) -> Result<i32, CliError> {
    let cfg = load_config(args)?;
    let v = crate::ischedule::key_publication(&cfg).map_err(|e| CliError::new(EX_CONFIG, e))?;
    println!("{v}");
    Ok(0)
}

/// `journal`: the newest N matching lines, oldest first, one JSON object each (DESIGN.md).
fn cmd_journal(args: &Args, env: &Env, io: &mut Io) -> Result<i32, CliError> {
    let filter = crate::store::JournalFilter {
        user: match &args.user {
            Some(_) => Some(need_user(args)?),
            None => None,
        },
        message_id: args
            .message_id
            .as_deref()
            .map(|m| crate::store::bare_message_id(m).to_string()),
    };
    let limit = args.limit.unwrap_or(100);
    let lines = env
        .store
        .journal_lines(&filter, limit)
        .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
    for l in lines {
        let j = match &l {
            crate::store::JournalLine::Decision(e) => journal_json(e),
            crate::store::JournalLine::Effect(e) => effect_json(e),
        };
        io.outln(j.to_string());
    }
    Ok(0)
}

/// One effect line as `imipd journal` prints it: {"kind":"effect","ts":..,"user":"mailto:..",
/// "uid":..,"effect":"imip|ischedule|..","outcome":"delivered|retrying|failed","reason":..}.
pub fn effect_json(e: &imipd_core::effects::EffectLine) -> serde_json::Value {
    serde_json::json!({
        "kind": "effect",
        "ts": e.ts,
        "user": if e.user.is_empty() { String::new() } else { ical::mailto(&e.user) },
        "uid": e.uid,
        "effect": e.effect,
        "outcome": e.outcome,
        "reason": e.reason,
    })
}

/// One journal line as `imipd journal` prints it: `kind` first, the user as a `mailto:` URI,
/// the Message-ID without angle brackets.
pub fn journal_json(e: &crate::store::JournalEntry) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let v = serde_json::to_value(e).unwrap_or_default();
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("decision")
        .to_string();
    out.insert("kind".into(), kind.into());
    if let serde_json::Value::Object(m) = v {
        for (k, val) in m {
            let val = match (k.as_str(), &val) {
                ("user", serde_json::Value::String(u)) => ical::mailto(u).into(),
                ("message_id", serde_json::Value::String(m)) => {
                    crate::store::bare_message_id(m).into()
                }
                _ => val,
            };
            out.entry(k).or_insert(val);
        }
    }
    serde_json::Value::Object(out)
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
                crate::config::auth_config(&env.cfg)
                    .and_then(|ac| crate::proof::Prover::new(&ac))
                    .map_err(|e| CliError::new(EX_CONFIG, e))?,
            ),
        };
        crate::pipeline::Trust::Verify(&prover, crate::proof::Facts::default())
    };
    let recipients = if args.recipients.is_empty() {
        crate::pipeline::Recipients::Headers
    } else {
        crate::pipeline::Recipients::Listed(
            args.recipients.iter().map(|r| ical::norm_addr(r)).collect(),
        )
    };
    let delivery = Delivery {
        raw: &raw,
        recipients,
        queue_id: None,
        trust,
    };
    let verdict = pipeline.process(&delivery);
    crate::metrics::message("cli", verdict.as_ref());
    let verdict = verdict.map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
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
    run_effects(env, args.outbox.as_deref(), &verdict.effects, io)?;
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

/// Runs the effects a command caused, once each (DESIGN.md: `process`): iMIP replies into
/// `outbox` when given, else through `[outbound] transport`. What fails, or has no handler here
/// (no transport configured), stays queued in the store for `imipd run`.
fn run_effects(
    env: &Env,
    outbox: Option<&Path>,
    effects: &[imipd_core::effects::Effect],
    io: &mut Io,
) -> Result<(), CliError> {
    if effects.is_empty() {
        return Ok(());
    }
    let registry = crate::effects::runner::Registry::for_config(&env.cfg, outbox)
        .map_err(|e| CliError::new(EX_CONFIG, e))?;
    let ids: Vec<String> = effects.iter().map(|e| e.id.clone()).collect();
    let store = env.store.clone();
    let pass = block_on(async move {
        crate::effects::runner::run_these(store.as_ref(), &registry, &ids).await
    })?;
    for e in effects {
        if let Some(m) = crate::outbound::Outgoing::from_effect(e) {
            io.errln(format!("effect {} imip: reply to {}", e.id, m.to));
        }
    }
    io.errln(format!(
        "effects: {} delivered, {} set aside as failed, {} queued for imipd run",
        pass.delivered,
        pass.failed,
        pass.retrying + pass.waiting
    ));
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

/// `freebusy --from --to`, parsed and checked.
fn freebusy_window(args: &Args) -> Result<(i64, i64), CliError> {
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
    Ok((from, to))
}

fn cmd_freebusy(args: &Args, env: &Env, io: &mut Io) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let (from, to) = freebusy_window(args)?;
    if !env.cfg.local_domains.is_empty() && !env.cfg.is_local(&user) {
        return remote_freebusy(args, env, &user, from, to, io);
    }
    let busy = env
        .store
        .busy(&user, from, to)
        .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
    let busy = crate::itip::merge_busy(busy, from, to);
    let now = imipd_core::clock::now();
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
    // One read of the message: its recipients and calendars.
    let ex = crate::extract::extract(&raw);
    let recipients: Vec<String> = if args.recipients.is_empty() {
        ex.recipients.clone()
    } else {
        args.recipients.iter().map(|r| ical::norm_addr(r)).collect()
    };
    let message_id = ex.message_id.clone().unwrap_or_default();
    let objects: Vec<crate::itip::Incoming> = ex.objects.into_iter().map(|f| f.incoming).collect();
    let pipeline = Pipeline::new(env.store.clone(), env.cfg.clone());
    for o in pipeline
        .record_sent(&sender, &objects, &recipients, &message_id, None)
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?
    {
        io.errln(format!("uid={} {} ({})", o.uid, o.outcome, o.reason));
    }
    let bridge = env.bridge()?;
    let report = block_on(bridge.relay_outgoing(&objects, &sender, &recipients))?;
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
    // Free/busy answers to the sender: committed as effects (from [outbound] envelope_from
    // when set), then run once like `process` does.
    let host = env
        .cfg
        .authserv_id
        .clone()
        .unwrap_or_else(crate::proof::hostname);
    let replies: Vec<imipd_core::effects::Effect> = report
        .replies
        .iter()
        .map(|m| crate::outbound::outgoing(&env.cfg, m, None).into_effect(&sender, "", &host))
        .collect();
    if !replies.is_empty() {
        env.store
            .add_effects(&replies)
            .and_then(|()| env.store.flush())
            .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    }
    run_effects(env, args.outbox.as_deref(), &replies, io)?;
    Ok(0)
}

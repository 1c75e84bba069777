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
  freebusy --user ADDR --from DATETIME --to DATETIME
                                       print a VFREEBUSY for that window
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
    match dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imipd: {}", e.message);
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
        "process" => cmd_process(args),
        "import" => cmd_import(args),
        "export" => cmd_export(args),
        "freebusy" => cmd_freebusy(args),
        "run" => crate::daemon_entry(args),
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

fn cmd_process(args: &Args) -> Result<i32, CliError> {
    let cfg = Arc::new(load_config(args)?);
    let raw = read_input(args.file.as_deref())?;
    let store = open_store(&cfg)?;
    let pipeline = Pipeline::new(store.clone(), cfg.clone());
    let ex = crate::extract::extract(&raw);
    let mut proven = Vec::new();
    if args.trust_sender {
        if let Some(f) = &ex.from {
            proven.push(f.clone());
        }
    }
    let recipients: Vec<String> = args.recipients.iter().map(|r| ical::norm_addr(r)).collect();
    let delivery = Delivery {
        raw: &raw,
        recipients,
        proven,
        queue_id: None,
        signed_prefix: None,
    };
    let verdict = pipeline
        .process_extracted(&delivery, ex)
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    store
        .flush()
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    for note in &verdict.notes {
        eprintln!("imipd: note: {note}");
    }
    send_outgoing(&cfg, args.outbox.as_deref(), &verdict.outgoing)?;
    for o in &verdict.outcomes {
        println!("{}", serde_json::to_string(o).unwrap_or_default());
        eprintln!(
            "imipd: msgid={} rcpt={} uid={} method={} outcome={} reason={}",
            verdict.message_id.as_deref().unwrap_or("-"),
            o.recipient,
            o.uid,
            o.method,
            o.outcome,
            o.reason
        );
    }
    Ok(0)
}

/// Sends (or writes) what the pipeline produced.
pub fn send_outgoing(
    cfg: &Config,
    outbox: Option<&Path>,
    out: &[Outgoing],
) -> Result<(), CliError> {
    for m in out {
        match outbox {
            Some(dir) => {
                let p = crate::outbound::write_eml(dir, &m.data)
                    .map_err(|e| CliError::new(EX_IOERR, format!("{}: {e}", dir.display())))?;
                eprintln!("imipd: {} for {} written to {}", "reply", m.to, p.display());
            }
            None => {
                crate::outbound::enqueue(cfg, m).map_err(|e| CliError::new(EX_IOERR, e))?;
            }
        }
    }
    Ok(())
}

fn cmd_import(args: &Args) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let file = args
        .file
        .as_deref()
        .ok_or_else(|| CliError::usage("import needs FILE.ics"))?;
    let text = read_input(Some(file))?;
    let text = String::from_utf8_lossy(&text);
    let cfg = Arc::new(load_config(args)?);
    let store = open_store(&cfg)?;
    let pipeline = Pipeline::new(store.clone(), cfg);
    let uids = pipeline
        .import(&user, &text)
        .map_err(|e| CliError::new(EX_DATAERR, format!("{file}: {e}")))?;
    store
        .flush()
        .map_err(|e| CliError::new(EX_TEMPFAIL, e.to_string()))?;
    for uid in uids {
        println!(
            "{}",
            serde_json::json!({"user": ical::mailto(&user), "uid": uid, "outcome": "imported"})
        );
    }
    Ok(0)
}

fn cmd_export(args: &Args) -> Result<i32, CliError> {
    let user = need_user(args)?;
    let cfg = load_config(args)?;
    let store = open_store(&cfg)?;
    let text = match &args.uid {
        Some(uid) => match store
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
            let objs = store
                .list(&user)
                .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
            store::objects_to_ical(&objs)
        }
    };
    print!("{text}");
    Ok(0)
}

fn cmd_freebusy(args: &Args) -> Result<i32, CliError> {
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
    let cfg = load_config(args)?;
    let store = open_store(&cfg)?;
    let busy = store
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
    print!("{}", cal.to_ical());
    Ok(0)
}

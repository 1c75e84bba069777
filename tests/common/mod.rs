//! Helpers shared by the integration tests: a throw-away data dir per test, the real `imipd`
//! binary run under a time limit, RFC 5322 iMIP messages and iCalendar objects built by hand.

#![allow(dead_code)]

// One helper shared by every test crate, whichever of common, mta and signers it uses.
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::{in_ci, is_root, require, skip};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_imipd");

/// The organizer in most scenarios (a local user).
pub const ALICE: &str = "alice@example.org";
/// A local attendee.
pub const BOB: &str = "bob@example.org";
/// An external attendee.
pub const CAROL: &str = "carol@example.net";
/// Someone who is not invited.
pub const MALLORY: &str = "mallory@evil.example";

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Peak resident set size seen while it ran (VmHWM, kB; 0 where /proc is unavailable).
    pub peak_kb: u64,
}

/// VmHWM of a running process, in kB.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs the binary with `args`, feeding `stdin`; kills it and fails the test after `limit`.
pub fn run_limited(args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn imipd");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = si.write_all(&input);
        });
    }
    let out_pipe = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || read_all(out_pipe));
    let err_t = std::thread::spawn(move || read_all(err_pipe));
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(kb) = peak_rss_kb(child.id()) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imipd {args:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = out_t.join().expect("stdout reader");
    let stderr = err_t.join().expect("stderr reader");
    let code = status.code().unwrap_or_else(|| {
        panic!("imipd {args:?} died by a signal ({status:?}); stderr:\n{stderr}")
    });
    if stderr.contains("panicked") {
        panic!("imipd {args:?} panicked:\n{stderr}");
    }
    Run {
        code,
        stdout,
        stderr,
        elapsed,
        peak_kb,
    }
}

fn read_all(mut r: impl std::io::Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// One JSON line of `imipd process`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub recipient: String,
    pub method: String,
    pub component: String,
    pub uid: String,
    pub outcome: String,
    pub reason: String,
}

pub fn parse_outcomes(stdout: &str) -> Vec<Outcome> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            let s = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_else(|| panic!("field {k} missing in {l}"))
                    .to_string()
            };
            Outcome {
                recipient: s("recipient"),
                method: s("method"),
                component: s("component"),
                uid: s("uid"),
                outcome: s("outcome"),
                reason: s("reason"),
            }
        })
        .collect()
}

/// A fresh data dir and outbox for one test.
pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub data: PathBuf,
    pub outbox: PathBuf,
}

static FILES: AtomicUsize = AtomicUsize::new(0);

pub const LIMIT: Duration = Duration::from_secs(60);

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_path_buf();
        Env {
            data: root.join("data"),
            outbox: root.join("outbox"),
            root,
            _tmp: tmp,
        }
    }

    /// Writes a file under the test's temp dir and returns its path.
    pub fn file(&self, ext: &str, content: &[u8]) -> PathBuf {
        let n = FILES.fetch_add(1, Ordering::Relaxed);
        let p = self.root.join(format!("input-{n}.{ext}"));
        std::fs::write(&p, content).expect("write input");
        p
    }

    fn data(&self) -> &str {
        self.data.to_str().expect("utf-8 path")
    }

    /// `imipd import --user USER FILE.ics`; must succeed.
    pub fn import(&self, user: &str, ics: &str) {
        let p = self.file("ics", ics.as_bytes());
        let r = run_limited(
            &[
                "--data-dir",
                self.data(),
                "import",
                "--user",
                user,
                p.to_str().unwrap(),
            ],
            None,
            LIMIT,
        );
        assert_eq!(r.code, 0, "import failed: {}", r.stderr);
    }

    /// `imipd process --trust-sender --outbox OUT [--recipient R]... FILE.eml`.
    pub fn process(&self, eml: &str, recipients: &[&str]) -> Vec<Outcome> {
        self.process_with(eml.as_bytes(), recipients, true)
    }

    /// `process` without `--trust-sender`.
    pub fn process_unproven(&self, eml: &str, recipients: &[&str]) -> Vec<Outcome> {
        self.process_with(eml.as_bytes(), recipients, false)
    }

    pub fn process_with(&self, eml: &[u8], recipients: &[&str], trust: bool) -> Vec<Outcome> {
        let r = self.process_run(eml, recipients, trust, LIMIT);
        assert_eq!(r.code, 0, "process failed: {}", r.stderr);
        parse_outcomes(&r.stdout)
    }

    pub fn process_run(
        &self,
        eml: &[u8],
        recipients: &[&str],
        trust: bool,
        limit: Duration,
    ) -> Run {
        let p = self.file("eml", eml);
        let mut args: Vec<String> = vec![
            "--data-dir".into(),
            self.data().into(),
            "process".into(),
            "--outbox".into(),
            self.outbox.to_str().unwrap().into(),
        ];
        if trust {
            args.push("--trust-sender".into());
        }
        for r in recipients {
            args.push("--recipient".into());
            args.push(r.to_string());
        }
        args.push(p.to_str().unwrap().into());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        run_limited(&a, None, limit)
    }

    /// `imipd export --user USER [--uid UID]`.
    pub fn export_run(&self, user: &str, uid: Option<&str>) -> Run {
        let mut args = vec!["--data-dir", self.data(), "export", "--user", user];
        if let Some(u) = uid {
            args.push("--uid");
            args.push(u);
        }
        run_limited(&args, None, LIMIT)
    }

    /// The stored object, unfolded (one content line per line); must exist.
    pub fn export(&self, user: &str, uid: &str) -> String {
        let r = self.export_run(user, Some(uid));
        assert_eq!(r.code, 0, "export of {uid} failed: {}", r.stderr);
        unfold(&r.stdout)
    }

    /// `imipd freebusy`, unfolded.
    pub fn freebusy(&self, user: &str, from: &str, to: &str) -> String {
        let r = run_limited(
            &[
                "--data-dir",
                self.data(),
                "freebusy",
                "--user",
                user,
                "--from",
                from,
                "--to",
                to,
            ],
            None,
            LIMIT,
        );
        assert_eq!(r.code, 0, "freebusy failed: {}", r.stderr);
        unfold(&r.stdout)
    }

    /// Every message in the outbox, in the order written.
    pub fn outbox(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.outbox) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap(), p))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }
}

/// Undoes RFC 5545 line folding and normalizes line ends to LF.
pub fn unfold(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace("\n ", "")
        .replace("\n\t", "")
}

/// The unfolded content lines of `text` whose name is `name`.
pub fn lines_named<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.len() > name.len()
                && l[..name.len()].eq_ignore_ascii_case(name)
                && matches!(l.as_bytes()[name.len()], b':' | b';')
        })
        .collect()
}

/// The ATTENDEE line for `addr` in the component text `comp`.
pub fn attendee_line<'a>(comp: &'a str, addr: &str) -> Option<&'a str> {
    let want = format!("mailto:{}", addr.to_ascii_lowercase());
    lines_named(comp, "ATTENDEE")
        .into_iter()
        .find(|l| l.to_ascii_lowercase().ends_with(&format!(":{want}")))
}

/// The PARTSTAT of `addr` in the component text `comp`.
pub fn partstat(comp: &str, addr: &str) -> Option<String> {
    let line = attendee_line(comp, addr)?;
    let (params, _) = line
        .split_once(":mailto:")
        .or_else(|| line.split_once(":MAILTO:"))?;
    params
        .split(';')
        .find_map(|p| p.strip_prefix("PARTSTAT="))
        .map(str::to_string)
}

/// The components (`BEGIN:KIND` .. `END:KIND`) of an unfolded calendar text.
pub fn components<'a>(text: &'a str, kind: &str) -> Vec<&'a str> {
    let begin = format!("BEGIN:{kind}");
    let end = format!("END:{kind}");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(s) = rest.find(&begin) {
        let Some(e) = rest[s..].find(&end) else { break };
        out.push(&rest[s..s + e + end.len()]);
        rest = &rest[s + e + end.len()..];
    }
    out
}

/// The component (master or override) whose RECURRENCE-ID value contains `rid`, or the master
/// when `rid` is None.
pub fn component_for<'a>(text: &'a str, kind: &str, rid: Option<&str>) -> Option<&'a str> {
    components(text, kind).into_iter().find(|c| {
        let r = lines_named(c, "RECURRENCE-ID");
        match rid {
            None => r.is_empty(),
            Some(want) => r.iter().any(|l| l.contains(want)),
        }
    })
}

/// The FREEBUSY periods of a VFREEBUSY text as (FBTYPE, "start/end") pairs.
pub fn busy_periods(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for l in lines_named(text, "FREEBUSY") {
        let (params, value) = l.split_once(':').unwrap_or((l, ""));
        let fbtype = params
            .split(';')
            .find_map(|p| p.strip_prefix("FBTYPE="))
            .unwrap_or("BUSY")
            .to_string();
        for v in value.split(',') {
            out.push((fbtype.clone(), v.to_string()));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// iCalendar objects

/// A VEVENT/VTODO/VFREEBUSY under construction, as content lines.
#[derive(Debug, Clone)]
pub struct Comp {
    kind: String,
    lines: Vec<String>,
    subs: Vec<String>,
}

impl Comp {
    /// A one-hour VEVENT on 2026-03-02 10:00 UTC, SEQUENCE 0, organized by ALICE.
    pub fn event(uid: &str) -> Comp {
        Comp {
            kind: "VEVENT".into(),
            lines: vec![
                format!("UID:{uid}"),
                "DTSTAMP:20260101T090000Z".into(),
                "SEQUENCE:0".into(),
                "SUMMARY:Planning meeting".into(),
                "DTSTART:20260302T100000Z".into(),
                "DTEND:20260302T110000Z".into(),
                format!("ORGANIZER;CN=Alice:mailto:{ALICE}"),
            ],
            subs: Vec::new(),
        }
    }

    /// A VTODO due 2026-03-06, SEQUENCE 0, organized by ALICE.
    pub fn todo(uid: &str) -> Comp {
        Comp {
            kind: "VTODO".into(),
            lines: vec![
                format!("UID:{uid}"),
                "DTSTAMP:20260101T090000Z".into(),
                "SEQUENCE:0".into(),
                "SUMMARY:Write the report".into(),
                "DUE:20260306T170000Z".into(),
                format!("ORGANIZER;CN=Alice:mailto:{ALICE}"),
            ],
            subs: Vec::new(),
        }
    }

    /// A bare component of `kind` with the given lines.
    pub fn raw(kind: &str, lines: &[&str]) -> Comp {
        Comp {
            kind: kind.into(),
            lines: lines.iter().map(|s| s.to_string()).collect(),
            subs: Vec::new(),
        }
    }

    fn name_of(line: &str) -> String {
        line.split([':', ';'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase()
    }

    /// Replaces every line of the same property name (or adds it).
    pub fn set(mut self, line: &str) -> Comp {
        let name = Self::name_of(line);
        let pos = self.lines.iter().position(|l| Self::name_of(l) == name);
        self.lines.retain(|l| Self::name_of(l) != name);
        match pos {
            Some(p) => self.lines.insert(p.min(self.lines.len()), line.to_string()),
            None => self.lines.push(line.to_string()),
        }
        self
    }

    /// Adds a line.
    pub fn add(mut self, line: &str) -> Comp {
        self.lines.push(line.to_string());
        self
    }

    /// Removes every line of property `name`.
    pub fn without(mut self, name: &str) -> Comp {
        let name = name.to_ascii_uppercase();
        self.lines.retain(|l| Self::name_of(l) != name);
        self
    }

    pub fn seq(self, n: i64) -> Comp {
        self.set(&format!("SEQUENCE:{n}"))
    }

    pub fn stamp(self, v: &str) -> Comp {
        self.set(&format!("DTSTAMP:{v}"))
    }

    pub fn rid(self, v: &str) -> Comp {
        self.set(&format!("RECURRENCE-ID:{v}"))
    }

    /// ATTENDEE with PARTSTAT (and RSVP=TRUE for NEEDS-ACTION).
    pub fn att(self, addr: &str, partstat: &str) -> Comp {
        let rsvp = if partstat == "NEEDS-ACTION" {
            ";RSVP=TRUE"
        } else {
            ""
        };
        self.add(&format!(
            "ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT={partstat}{rsvp}:mailto:{addr}"
        ))
    }

    /// A sub-component (e.g. a VALARM), given as its full text.
    pub fn sub(mut self, text: &str) -> Comp {
        self.subs.push(text.to_string());
        self
    }

    pub fn build(&self) -> String {
        let mut s = format!("BEGIN:{}\r\n", self.kind);
        for l in &self.lines {
            s.push_str(l);
            s.push_str("\r\n");
        }
        for sub in &self.subs {
            s.push_str(sub.trim_end());
            s.push_str("\r\n");
        }
        s.push_str(&format!("END:{}\r\n", self.kind));
        s
    }
}

/// The invitation ALICE sends to BOB and CAROL.
pub fn invite(uid: &str) -> Comp {
    Comp::event(uid)
        .att(ALICE, "ACCEPTED")
        .att(BOB, "NEEDS-ACTION")
        .att(CAROL, "NEEDS-ACTION")
}

/// The same for a task.
pub fn task(uid: &str) -> Comp {
    Comp::todo(uid)
        .att(ALICE, "ACCEPTED")
        .att(BOB, "NEEDS-ACTION")
        .att(CAROL, "NEEDS-ACTION")
}

/// A VCALENDAR with METHOD (none when `method` is empty) holding `comps` and extra raw text
/// (VTIMEZONEs).
pub fn vcal_with(method: &str, extra: &str, comps: &[Comp]) -> String {
    let mut s = String::from(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd tests//conformance//EN\r\n",
    );
    if !method.is_empty() {
        s.push_str(&format!("METHOD:{method}\r\n"));
    }
    s.push_str(extra);
    for c in comps {
        s.push_str(&c.build());
    }
    s.push_str("END:VCALENDAR\r\n");
    s
}

pub fn vcal(method: &str, comps: &[Comp]) -> String {
    vcal_with(method, "", comps)
}

// ---------------------------------------------------------------------------------------------
// RFC 5322 / RFC 6047 messages

static MSGS: AtomicUsize = AtomicUsize::new(0);

/// A fresh Message-ID.
pub fn message_id() -> String {
    format!(
        "<{}.{}@test.example>",
        std::process::id(),
        MSGS.fetch_add(1, Ordering::Relaxed)
    )
}

/// An iMIP message (RFC 6047 2.4): multipart/alternative of text/plain and
/// `text/calendar; method=METHOD`.
pub fn imip(from: &str, to: &[&str], method: &str, ics: &str) -> String {
    imip_with_id(from, to, method, ics, &message_id())
}

pub fn imip_with_id(from: &str, to: &[&str], method: &str, ics: &str, msgid: &str) -> String {
    let boundary = "=_imipd-test-boundary-7f3a";
    format!(
        "From: <{from}>\r\n\
         To: {to}\r\n\
         Subject: {method}: Planning meeting\r\n\
         Message-ID: {msgid}\r\n\
         Date: Mon, 05 Jan 2026 09:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\
         \r\n\
         This is a multi-part message in MIME format.\r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         Calendar message ({method}).\r\n\
         --{boundary}\r\n\
         Content-Type: text/calendar; charset=utf-8; method={method}\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n\
         {ics}\
         --{boundary}--\r\n",
        to = to
            .iter()
            .map(|a| format!("<{a}>"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Reads a header value (first occurrence, unfolded) of an RFC 5322 message.
pub fn header(msg: &str, name: &str) -> Option<String> {
    let head = msg.split("\r\n\r\n").next().unwrap_or(msg);
    let head = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The decoded iCalendar text of the first text/calendar part of `msg`, unfolded.
pub fn calendar_of(msg: &str) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(msg.as_bytes())
        .expect("outgoing message parses");
    for part in parsed.parts.iter() {
        if let Some(ct) = mail_parser::MimeHeaders::content_type(part) {
            if ct.c_type.eq_ignore_ascii_case("text")
                && ct
                    .c_subtype
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("calendar"))
            {
                if let Some(t) = part.text_contents() {
                    return unfold(t);
                }
            }
        }
    }
    panic!("no text/calendar part in:\n{msg}");
}

/// Asserts that `path` exists.
pub fn exists(p: &Path) -> bool {
    p.exists()
}

//! Effects are committed with the decision that caused them and survive a crash: the daemon
//! answers a REFRESH while its SMTP transport is unreachable, is killed with SIGKILL, and once
//! restarted with the transport reachable sends the answer. No failpoint: the real binary, a
//! refused TCP port, and a small SMTP sink written here.

mod mta;

use mta::{lmtp_deliver, wait_gone, Imipd};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd tests//effects//EN\r\n\
BEGIN:VEVENT\r\nUID:crash-refresh@example.org\r\nDTSTAMP:20260101T000000Z\r\nSEQUENCE:0\r\n\
DTSTART:20260310T100000Z\r\nDTEND:20260310T110000Z\r\nSUMMARY:Review\r\n\
ORGANIZER:mailto:bob@example.org\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:dave@remote.example\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";

/// A REFRESH from the attendee, proven by a trusted upstream's DKIM result: the organizer's
/// calendar answers it with the current REQUEST (RFC 5546 3.2.6).
const REFRESH: &str =
    "Authentication-Results: upstream.example; dkim=pass header.d=remote.example\r\n\
From: Dave <dave@remote.example>\r\nTo: bob@example.org\r\nSubject: Refresh\r\n\
Message-ID: <refresh-crash@remote.example>\r\nDate: Mon, 05 Jan 2026 09:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: text/calendar; method=REFRESH; charset=utf-8\r\n\r\n\
BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd tests//effects//EN\r\nMETHOD:REFRESH\r\n\
BEGIN:VEVENT\r\nUID:crash-refresh@example.org\r\nDTSTAMP:20260102T000000Z\r\n\
ORGANIZER:mailto:bob@example.org\r\nATTENDEE:mailto:dave@remote.example\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";

fn config(dir: &Path, smtp_port: u16) -> String {
    format!(
        "local_domains = [\"example.org\"]\n[milter]\nenabled = false\n\
         [lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%d/%u\"\n\
         [policy]\ntrusted_authserv_ids = [\"upstream.example\"]\n\
         [outbound]\ntransport = \"smtp://127.0.0.1:{smtp_port}\"\n",
        dir.join("mail").display()
    )
}

/// The effect lines of `imipd journal` (through the daemon's control socket).
fn effect_lines(imipd: &Imipd) -> Vec<serde_json::Value> {
    let (out, err, code) = imipd.cli(&["journal", "--limit", "1000"]);
    assert_eq!(code, 0, "journal: {err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "effect")
        .collect()
}

/// Waits (bounded) for an effect line with `outcome`.
fn wait_effect(imipd: &Imipd, outcome: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = effect_lines(imipd)
            .into_iter()
            .find(|l| l["outcome"] == outcome)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no effect line {outcome:?}; log:\n{}",
            imipd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A port of the sink, held from the start: bound but not listening, so that connections are
/// refused until the sink starts, and no other socket can be given the port meanwhile.
struct Reserved {
    socket: socket2::Socket,
    port: u16,
}

impl Reserved {
    fn new() -> Reserved {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind a port for the sink");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("port of the sink");
        Reserved { socket, port }
    }
}

/// Just enough SMTP to take messages: every message's DATA is kept in `got`.
struct Sink {
    got: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start(port: Reserved) -> Sink {
        port.socket.listen(16).expect("listen on the sink's port");
        let l: TcpListener = port.socket.into();
        l.set_nonblocking(true).expect("nonblocking");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test stops it, and it gives up after two minutes in any case.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match l.accept() {
                    Ok((c, _)) => {
                        if let Some(m) = serve(c) {
                            g.lock().unwrap().push(m);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Sink {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn wait(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One SMTP session; returns the envelope and message of its transaction.
fn serve(c: TcpStream) -> Option<String> {
    c.set_nonblocking(false).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut w = c.try_clone().ok()?;
    let mut r = BufReader::new(c);
    w.write_all(b"220 sink ESMTP\r\n").ok()?;
    let mut envelope = String::new();
    let mut message = None;
    for _ in 0..64 {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            break;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => w.write_all(b"250 sink\r\n").ok()?,
            "MAIL" | "RCPT" => {
                envelope.push_str(&line);
                w.write_all(b"250 ok\r\n").ok()?
            }
            "DATA" => {
                w.write_all(b"354 go on\r\n").ok()?;
                let mut data = String::new();
                for _ in 0..100_000 {
                    let mut l = String::new();
                    if r.read_line(&mut l).ok()? == 0 || l == ".\r\n" {
                        break;
                    }
                    data.push_str(&l);
                }
                message = Some(format!("{envelope}\r\n{data}"));
                w.write_all(b"250 queued\r\n").ok()?
            }
            "QUIT" => {
                let _ = w.write_all(b"221 bye\r\n");
                break;
            }
            _ => w.write_all(b"250 ok\r\n").ok()?,
        }
    }
    message
}

#[test]
fn reply_committed_before_a_crash_is_sent_after_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Nothing listens here until the sink starts: connections are refused.
    let reserved = Reserved::new();
    let smtp_port = reserved.port;
    let imipd = Imipd::start(dir, &config(dir, smtp_port), &[]);
    imipd.import("bob@example.org", EVENT);
    let replies = lmtp_deliver(
        imipd.lmtp_port.expect("lmtp port"),
        "dave@remote.example",
        "bob@example.org",
        REFRESH.as_bytes(),
    );
    assert!(
        replies.last().is_some_and(|r| r.starts_with("250")),
        "{replies:?}\n{}",
        imipd.log()
    );
    let retrying = wait_effect(&imipd, "retrying");
    assert_eq!(retrying["effect"], "imip", "{retrying}");
    assert_eq!(retrying["user"], "mailto:bob@example.org", "{retrying}");
    assert_eq!(retrying["uid"], "crash-refresh@example.org", "{retrying}");

    // A crash: no shutdown, no flush.
    let pid = imipd.pid();
    let st = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success());
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "imipd survived SIGKILL"
    );
    drop(imipd);

    let sink = Sink::start(reserved);
    let mut imipd = Imipd::start(dir, &config(dir, smtp_port), &[]);
    let got = sink.wait(1, Duration::from_secs(30));
    assert_eq!(
        got.len(),
        1,
        "no reply reached the sink; log:\n{}",
        imipd.log()
    );
    let m = &got[0];
    assert!(m.contains("RCPT TO:<dave@remote.example>"), "{m}");
    assert!(m.contains("MAIL FROM:<bob@example.org>"), "{m}");
    assert!(m.contains("UID:crash-refresh@example.org"), "{m}");
    assert!(
        m.contains("method=REQUEST") || m.contains("method=\"REQUEST\""),
        "{m}"
    );
    assert!(
        m.contains("refresh-crash@remote.example"),
        "In-Reply-To: {m}"
    );
    let delivered = wait_effect(&imipd, "delivered");
    assert_eq!(delivered["uid"], "crash-refresh@example.org", "{delivered}");
    // Sent once: nothing more arrives, and the journal shows one delivery.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.got.lock().unwrap().len(), 1);
    assert_eq!(
        effect_lines(&imipd)
            .iter()
            .filter(|l| l["outcome"] == "delivered")
            .count(),
        1
    );
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

/// `imipd process` runs the effects it caused once: with the transport unreachable the reply
/// stays queued (journal: retrying), and `imipd run` sends it later.
#[test]
fn process_leaves_a_failed_reply_queued_for_the_daemon() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let reserved = Reserved::new();
    let smtp_port = reserved.port;
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("imipd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n{}",
            dir.join("data").display(),
            config(dir, smtp_port)
        ),
    )
    .unwrap();
    let cli = |args: &[&str], input: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_imipd"));
        c.arg("--config").arg(&cfg).args(args);
        let ics = dir.join("in.txt");
        if let Some(i) = input {
            std::fs::write(&ics, i).unwrap();
            c.arg(&ics);
        }
        let out = c.output().expect("imipd");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code(),
        )
    };
    let (_, err, code) = cli(&["import", "--user", "bob@example.org"], Some(EVENT));
    assert_eq!(code, Some(0), "{err}");
    let (out, err, code) = cli(&["process", "--trust-sender"], Some(REFRESH));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"outcome\":\"applied\""), "{out}\n{err}");
    assert!(err.contains("1 queued for imipd run"), "{err}");
    let (journal, _, _) = cli(&["journal"], None);
    assert!(
        journal
            .lines()
            .any(|l| l.contains("\"kind\":\"effect\"") && l.contains("\"outcome\":\"retrying\"")),
        "{journal}"
    );

    let sink = Sink::start(reserved);
    let mut imipd = Imipd::start(dir, &config(dir, smtp_port), &[]);
    let got = sink.wait(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "log:\n{}", imipd.log());
    assert!(
        got[0].contains("UID:crash-refresh@example.org"),
        "{}",
        got[0]
    );

    // While the daemon runs, process goes through its control socket and still runs its
    // effects once: --outbox gets the answer to a second REFRESH.
    let outbox = dir.join("outbox");
    let again = REFRESH.replace(
        "refresh-crash@remote.example",
        "refresh-again@remote.example",
    );
    let (out, err, code) = cli(
        &[
            "process",
            "--trust-sender",
            "--outbox",
            outbox.to_str().unwrap(),
        ],
        Some(&again),
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"outcome\":\"applied\""), "{out}\n{err}");
    let written: Vec<String> = std::fs::read_dir(&outbox)
        .map(|rd| {
            rd.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(written.len(), 1, "{err}\n{}", imipd.log());
    assert!(
        written[0].contains("refresh-again@remote.example"),
        "{}",
        written[0]
    );
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

/// `GET /metrics` on the daemon's metrics port (from its "metrics listening" log line).
fn metrics(imipd: &Imipd) -> String {
    let port: u16 = imipd
        .log()
        .lines()
        .find_map(|l| l.split("metrics listening on inet:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("metrics port in the log");
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    out
}

/// Replies an older version queued as files (`outbox/queue/*.eml` with `.env` envelopes) are
/// moved into the store at startup and sent; one whose envelope file is missing (a crash
/// between the two writes) takes its envelope from its headers. The metrics count them.
#[test]
fn old_queue_files_are_moved_into_the_store_and_sent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let queue = dir.join("data").join("outbox").join("queue");
    std::fs::create_dir_all(&queue).unwrap();
    let msg = |to: &str| {
        format!(
            "From: bob@example.org\r\nTo: {to}\r\nSubject: old\r\nMessage-ID: <old-{to}>\r\n\r\nqueued before the upgrade\r\n"
        )
    };
    std::fs::write(queue.join("1.eml"), msg("carol@remote.example")).unwrap();
    std::fs::write(
        queue.join("1.env"),
        r#"{"from":"bounces@example.org","to":"carol@remote.example"}"#,
    )
    .unwrap();
    std::fs::write(queue.join("2.eml"), msg("dave@remote.example")).unwrap();
    let reserved = Reserved::new();
    let smtp_port = reserved.port;
    let sink = Sink::start(reserved);
    let cfg = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
        config(dir, smtp_port)
    );
    let mut imipd = Imipd::start(dir, &cfg, &[]);
    let got = sink.wait(2, Duration::from_secs(30));
    assert_eq!(got.len(), 2, "log:\n{}", imipd.log());
    assert!(
        got[0].contains("MAIL FROM:<bounces@example.org>"),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("RCPT TO:<carol@remote.example>"),
        "{}",
        got[0]
    );
    assert!(got[1].contains("MAIL FROM:<bob@example.org>"), "{}", got[1]);
    assert!(
        got[1].contains("RCPT TO:<dave@remote.example>"),
        "{}",
        got[1]
    );
    assert!(
        std::fs::read_dir(&queue).unwrap().next().is_none(),
        "queue files left behind"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(&imipd);
        if m.contains("imipd_effects_total{effect=\"imip\",outcome=\"delivered\"} 2")
            && m.contains("imipd_effects_pending 0")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

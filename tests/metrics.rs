//! Operations through the binary: the Prometheus endpoint counts what the doors saw, and
//! SIGHUP applies a new configuration (local domains) without a restart, or keeps the old one
//! when the new one is broken.

mod mta;

use mta::{lmtp_deliver, Imipd};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// An LMTP session kept open by the test.
struct Session {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Session {
    fn open(port: u16) -> (Session, String) {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let w = stream.try_clone().expect("clone");
        let mut s = Session {
            w,
            r: BufReader::new(stream),
        };
        let greeting = s.reply();
        (s, greeting)
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).expect("read");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(line.as_bytes()).expect("write");
        self.w.write_all(b"\r\n").expect("write");
        self.reply()
    }
}

/// A REQUEST from alice@example.com, DKIM-proven by a trusted upstream filter.
fn invitation(uid: &str, to: &str) -> String {
    format!(
        "Authentication-Results: upstream.example; dkim=pass header.d=example.com\r\n\
         From: Alice <alice@example.com>\r\nTo: {to}\r\nSubject: Invitation\r\n\
         Message-ID: <{uid}>\r\nDate: Mon, 05 Jan 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd tests//metrics//EN\r\nMETHOD:REQUEST\r\n\
         BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260105T090000Z\r\nSEQUENCE:0\r\n\
         DTSTART:20260302T100000Z\r\nDTEND:20260302T110000Z\r\nSUMMARY:Planning\r\n\
         ORGANIZER:mailto:alice@example.com\r\n\
         ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{to}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

/// The metrics port, from the daemon's "metrics listening on inet:HOST:PORT" log line.
fn metrics_port(imipd: &Imipd) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = imipd.log();
        if let Some(port) = log
            .lines()
            .find_map(|l| l.split("metrics listening on inet:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        {
            return port;
        }
        assert!(Instant::now() < deadline, "no metrics line in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` over a raw socket: (status line, content type, body).
fn scrape(port: u16) -> (String, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head.lines().next().unwrap_or("").to_string();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, dechunk(body))
}

/// The body of a chunked response (or the body itself when it is not chunked).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

/// The value of one sample line (exact name and labels), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn write_config(imipd: &Imipd, text: &str) {
    std::fs::write(
        &imipd.config,
        format!(
            "data_dir = \"{}\"\n{text}",
            imipd.dir.join("data").display()
        ),
    )
    .expect("config");
}

fn hup(imipd: &Imipd) {
    let st = Command::new("kill")
        .arg("-HUP")
        .arg(imipd.pid().to_string())
        .status()
        .expect("kill");
    assert!(st.success());
}

/// Waits until the log has `needle` at least `n` times.
fn wait_log(imipd: &Imipd, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = imipd.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config(dir: &Path, domains: &str) -> String {
    format!(
        "local_domains = [{domains}]\n[milter]\nenabled = false\n\
         [lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%d/%u\"\n\
         [policy]\ntrusted_authserv_ids = [\"upstream.example\"]\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        dir.join("mail").display()
    )
}

#[test]
fn metrics_count_an_lmtp_delivery_and_sighup_reloads_local_domains() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("imipd");
    let mut imipd = Imipd::start(&dir, &config(&dir, "\"example.org\""), &[]);
    let lmtp = imipd.lmtp_port.expect("lmtp port");
    let port = metrics_port(&imipd);

    // Before any mail: the endpoint answers, nothing counted for LMTP yet.
    let (status, ctype, body) = scrape(port);
    assert!(status.contains(" 200"), "{status}");
    assert!(ctype.contains("text"), "{ctype}");
    let applied = "imipd_messages_total{door=\"lmtp\",result=\"applied\"}";
    assert_eq!(sample(&body, applied), None, "{body}");

    // One calendar message over LMTP: counted once, with its decision and its proof.
    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "bob@example.org",
        invitation("m-1@example.com", "bob@example.org").as_bytes(),
    );
    assert!(
        r.last().is_some_and(|l| l.starts_with("250")),
        "{r:?}\n{}",
        imipd.log()
    );
    assert!(imipd
        .export("bob@example.org")
        .contains("UID:m-1@example.com"));
    let (_, _, body) = scrape(port);
    assert_eq!(sample(&body, applied), Some(1.0), "{body}\n{}", imipd.log());
    assert_eq!(
        sample(
            &body,
            "imipd_decisions_total{method=\"REQUEST\",outcome=\"applied\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "imipd_store_commits_total{result=\"ok\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "imipd_store_commit_seconds_count"),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("imipd_proof_total{") && l.contains("method=\"dkim\"")),
        "{body}"
    );
    // The DMARC policy of the From domain was asked for (a cache miss, so a query).
    assert!(
        sample(&body, "imipd_dns_lookups_total{result=\"query\"}").is_some_and(|n| n >= 1.0),
        "{body}"
    );

    // example.net is not local yet: refused at RCPT.
    let invite_net = invitation("m-2@example.com", "carol@example.net");
    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "carol@example.net",
        invite_net.as_bytes(),
    );
    assert!(r[3].starts_with("550"), "{r:?}");

    // Add it and SIGHUP while a session is open: the same daemon (same pid, same listeners)
    // now accepts it, on the session opened before the reload too.
    let pid = imipd.pid();
    let (mut open, greeting) = Session::open(lmtp);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(open.cmd("LHLO test").starts_with("250"));
    assert!(open.cmd("MAIL FROM:<alice@example.com>").starts_with("250"));
    write_config(&imipd, &config(&dir, "\"example.org\", \"example.net\""));
    hup(&imipd);
    wait_log(&imipd, "configuration reloaded from", 1);
    let rcpt = open.cmd("RCPT TO:<erin@example.net>");
    assert!(rcpt.starts_with("250"), "{rcpt}\n{}", imipd.log());
    assert!(open.cmd("DATA").starts_with("354"));
    open.w
        .write_all(invitation("m-4@example.com", "erin@example.net").as_bytes())
        .expect("data");
    let done = open.cmd(".");
    assert!(done.starts_with("250"), "{done}\n{}", imipd.log());
    let _ = open.cmd("QUIT");
    assert!(imipd
        .export("erin@example.net")
        .contains("UID:m-4@example.com"));
    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "carol@example.net",
        invite_net.as_bytes(),
    );
    assert!(r[3].starts_with("250"), "{r:?}\n{}", imipd.log());
    assert!(r.last().is_some_and(|l| l.starts_with("250")), "{r:?}");
    assert!(imipd
        .export("carol@example.net")
        .contains("UID:m-2@example.com"));
    assert_eq!(imipd.pid(), pid);
    let (_, _, body) = scrape(port);
    assert_eq!(sample(&body, applied), Some(3.0), "{body}");

    // A broken config: the log says why and that the old one is kept; both domains still work.
    write_config(
        &imipd,
        "local_domains = [\"example.org\"]\n[lmtp]\ndelivr = \"x\"\n",
    );
    hup(&imipd);
    let log = wait_log(&imipd, "reload failed, keeping the old configuration", 1);
    assert!(log.contains("delivr"), "{log}");
    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "dave@example.net",
        invitation("m-3@example.com", "dave@example.net").as_bytes(),
    );
    assert!(
        r.last().is_some_and(|l| l.starts_with("250")),
        "{r:?}\n{}",
        imipd.log()
    );
    let (status, _, body) = scrape(port);
    assert!(status.contains(" 200"), "{status}");
    assert_eq!(sample(&body, applied), Some(4.0), "{body}");
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

#[test]
fn check_config_validates_metrics_listen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tmp.path().join("imipd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"localhost-9897\"\n",
            tmp.path().join("data").display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .expect("imipd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("metrics.listen"), "{err}");
    assert!(err.contains("imipd.toml:3:"), "{err}");

    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:9897\"\n",
            tmp.path().join("data").display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .arg("--config")
        .arg(&cfg)
        .arg("check-config")
        .output()
        .expect("imipd");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The other results and doors: a store failure over LMTP counts as tempfail (and the message
/// is refused with 451), a message without a calendar as no-calendar, and an iSchedule POST
/// refused before the pipeline (no DKIM signature) as rejected on the ischedule door.
#[test]
fn metrics_count_tempfail_no_calendar_and_ischedule_refusals() {
    let test = "metrics_count_tempfail_no_calendar_and_ischedule_refusals";
    if !mta::fault_injection(test) || !mta::have(test, &["openssl"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("imipd");
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("tls.pem"), dir.join("tls.key"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success());
    let cfg = format!(
        "{}[ischedule]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        config(&dir, "\"example.org\""),
        cert.display(),
        key.display()
    );
    let mut imipd = Imipd::start(&dir, &cfg, &[("IMIPD_TEST_STORE_FAILURES", "1")]);
    let lmtp = imipd.lmtp_port.expect("lmtp port");
    let port = metrics_port(&imipd);

    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "bob@example.org",
        invitation("t-1@example.com", "bob@example.org").as_bytes(),
    );
    assert!(r.last().is_some_and(|l| l.starts_with("451")), "{r:?}");
    let plain = "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n";
    let r = lmtp_deliver(
        lmtp,
        "alice@example.com",
        "bob@example.org",
        plain.as_bytes(),
    );
    assert!(r.last().is_some_and(|l| l.starts_with("250")), "{r:?}");

    // An unsigned POST to the receiver.
    let body =
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n";
    let request = format!(
        "POST /.well-known/ischedule HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         iSchedule-Version: 1.0\r\niSchedule-Message-ID: x-1\r\n\
         Originator: mailto:alice@example.com\r\nRecipient: mailto:bob@example.org\r\n\
         Content-Type: text/calendar; component=VEVENT; method=REQUEST\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let status = {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let mut b = SslConnector::builder(SslMethod::tls()).expect("tls");
        b.set_verify(SslVerifyMode::NONE);
        let tcp = TcpStream::connect(("127.0.0.1", imipd.ischedule_port.expect("port")))
            .expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut s = b.build().connect("localhost", tcp).expect("tls");
        s.write_all(request.as_bytes()).expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(status.contains(" 4"), "{status}\n{}", imipd.log());

    let (_, _, body) = scrape(port);
    for (series, n) in [
        (
            "imipd_messages_total{door=\"lmtp\",result=\"tempfail\"}",
            Some(1.0),
        ),
        (
            "imipd_messages_total{door=\"lmtp\",result=\"no-calendar\"}",
            Some(1.0),
        ),
        (
            "imipd_messages_total{door=\"ischedule\",result=\"rejected\"}",
            Some(1.0),
        ),
        (
            "imipd_messages_total{door=\"lmtp\",result=\"applied\"}",
            None,
        ),
    ] {
        assert_eq!(
            sample(&body, series),
            n,
            "{series}\n{body}\n{}",
            imipd.log()
        );
    }
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

/// The milter door, driven by libmilter's reference client: an unproven REQUEST is counted
/// once as rejected on the milter door, with its decision.
#[test]
fn metrics_count_a_milter_message() {
    let test = "metrics_count_a_milter_message";
    if !mta::have(test, &["miltertest"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("imipd");
    let mut imipd = Imipd::start(
        &dir,
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
         [milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        &[],
    );
    let port = metrics_port(&imipd);
    let body = "BEGIN:VCALENDAR\\r\\nMETHOD:REQUEST\\r\\nBEGIN:VEVENT\\r\\nUID:mt-1\\r\\n\
                DTSTAMP:20261101T000000Z\\r\\nDTSTART:20261201T100000Z\\r\\n\
                ORGANIZER:mailto:alice@example.com\\r\\nATTENDEE:mailto:bob@example.org\\r\\n\
                END:VEVENT\\r\\nEND:VCALENDAR\\r\\n";
    let lua = format!(
        r#"conn = mt.connect("inet:{}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.com", "192.0.2.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "alice@example.com") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@example.org>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@example.com>") ~= nil then error("header") end
if mt.header(conn, "To", "bob@example.org") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "{body}") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("unexpected reply") end
mt.disconnect(conn)
"#,
        imipd.milter_port.expect("milter port")
    );
    let script = tmp.path().join("t.lua");
    std::fs::write(&script, lua).expect("script");
    let out = Command::new("miltertest")
        .arg("-s")
        .arg(&script)
        .output()
        .expect("miltertest");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        imipd.log()
    );
    let (_, _, body) = scrape(port);
    for (series, n) in [
        (
            "imipd_messages_total{door=\"milter\",result=\"rejected\"}",
            1.0,
        ),
        (
            "imipd_decisions_total{method=\"REQUEST\",outcome=\"rejected\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&body, series),
            Some(n),
            "{series}\n{body}\n{}",
            imipd.log()
        );
    }
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

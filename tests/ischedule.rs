//! iSchedule end to end: two `imipd run` instances serving a.test and b.test over HTTPS on
//! loopback, found through SRV/TXT records and DKIM keys served by a dnsmasq on 127.0.0.1, with
//! TLS certificates from a test CA made here with openssl; and a real foreign receiver, Debian's
//! Cyrus httpd (cyrus-caldav), unpacked and run unprivileged on loopback.
//!
//! Debian packages needed: `dnsmasq-base openssl` (the two-instance tests); for the Cyrus
//! interop test also network access to Debian's archive for `apt-get download cyrus-common
//! cyrus-caldav cyrus-imapd` and the libraries `libshp2 libwrap0 libpcre3 libical3 libxapian30`
//! (`apt-get install -y --no-install-recommends ...`), and root (Cyrus's master drops to nobody).
//! Every test prints a NOTICE and skips where a tool is missing.

mod mta;
mod signers;

use imipd::ischedule::dkim::SigningKey;
use mta::Imipd;
use signers::{run, tools_present, Dns};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A test CA and one server certificate per host name.
struct Pki {
    ca: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = dir.join("ca.pem");
        let key = dir.join("ca.key");
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(&key),
                "-out",
                p(&ca),
                "-days",
                "2",
                "-subj",
                "/CN=imipd test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            None,
        );
        Pki { ca }
    }

    /// (certificate, key) for `host`.
    fn server(&self, dir: &Path, host: &str) -> (PathBuf, PathBuf) {
        let key = dir.join(format!("{host}.key"));
        let csr = dir.join(format!("{host}.csr"));
        let cert = dir.join(format!("{host}.pem"));
        let ext = dir.join(format!("{host}.ext"));
        std::fs::write(
            &ext,
            format!("subjectAltName=DNS:{host}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        run(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                p(&key),
                "-out",
                p(&csr),
                "-subj",
                &format!("/CN={host}"),
            ],
            None,
        );
        let ca_key = self.ca.with_extension("key");
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                p(&csr),
                "-CA",
                p(&self.ca),
                "-CAkey",
                p(&ca_key),
                "-CAcreateserial",
                "-out",
                p(&cert),
                "-days",
                "2",
                "-extfile",
                p(&ext),
            ],
            None,
        );
        (cert, key)
    }
}

/// One imipd serving one domain.
struct Site {
    domain: String,
    host: String,
    imipd: Imipd,
    dkim_key: PathBuf,
    outbox: PathBuf,
}

impl Site {
    fn cli(&self, args: &[&str]) -> (String, String, i32) {
        self.imipd.cli(args)
    }

    fn send(&self, sender: &str, message: &str) -> Vec<serde_json::Value> {
        let f = self.imipd.dir.join(format!("send-{}.eml", now_nanos()));
        std::fs::write(&f, message).unwrap();
        let (out, err, code) = self.cli(&["send", "--sender", sender, p(&f)]);
        assert_eq!(code, 0, "send failed: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    fn export(&self, user: &str) -> String {
        self.imipd.export(user)
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct World {
    _tmp: tempfile::TempDir,
    _dns: Dns,
    pki: Pki,
    a: Site,
    b: Site,
}

fn world(test: &str) -> Option<World> {
    world_with(test, "[milter]\nenabled = false\n", "")
}

/// Two sites; `a_milter` is a.test's `[milter]` section, `a_ischedule` extra `[ischedule]` keys.
fn world_with(test: &str, a_milter: &str, a_ischedule: &str) -> Option<World> {
    if !tools_present(test, &["dnsmasq", "openssl"]) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let dns_port = signers::free_udp_port();
    let mut sites: Vec<Site> = Vec::new();
    let mut records: Vec<(String, String)> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    for domain in ["a.test", "b.test"] {
        let dir = tmp.path().join(domain);
        std::fs::create_dir_all(&dir).unwrap();
        let host = format!("cal.{domain}");
        let (cert, key) = pki.server(&dir, &host);
        let dkim_key = dir.join("dkim.pem");
        run("openssl", &["genrsa", "-out", p(&dkim_key), "2048"], None);
        let outbox = dir.join("outbox");
        let (milter, extra_is) = if domain == "a.test" {
            (a_milter, a_ischedule)
        } else {
            ("[milter]\nenabled = false\n", "")
        };
        let config = format!(
            "local_domains = [\"{domain}\"]\n{milter}[lmtp]\nenabled = false\n\
             [dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\ntimeout_secs = 2\n\
             [outbound]\ntransport = \"outbox:{}\"\n\
             [ischedule]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             dkim_domain = \"{domain}\"\ndkim_key = \"{}\"\nca_file = \"{}\"\ntimeout_secs = 10\n{extra_is}",
            p(&outbox),
            p(&cert),
            p(&key),
            p(&dkim_key),
            p(&pki.ca)
        );
        let imipd = Imipd::start(&dir, &config, &[]);
        let port = imipd.ischedule_port.expect("ischedule listening line");
        // The key record to publish, as `imipd ischedule-key` prints it.
        let (out, err, code) = imipd.cli(&["ischedule-key"]);
        assert_eq!(code, 0, "ischedule-key: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
        assert_eq!(v["name"], format!("ischedule._domainkey.{domain}"));
        records.push((
            v["name"].as_str().unwrap().to_string(),
            v["value"].as_str().unwrap().to_string(),
        ));
        extra.push(format!(
            "--srv-host=_ischedules._tcp.{domain},{host},{port},0,0"
        ));
        extra.push(format!("--host-record={host},127.0.0.1"));
        sites.push(Site {
            domain: domain.into(),
            host,
            imipd,
            dkim_key,
            outbox,
        });
    }
    // b.test names its context path in TXT (the alias); a.test uses the well-known path.
    records.push(("_ischedules._tcp.b.test".into(), "path=/ischedule".into()));
    let recs: Vec<(&str, &str)> = records
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    // The port chosen before the daemons started may have been taken since: then move both
    // daemons to another one with a configuration reload (SIGHUP).
    let mut dns_port = dns_port;
    let mut dns = None;
    for _ in 0..10 {
        if let Some(d) = Dns::start_at(dns_port, &recs, &extra) {
            dns = Some(d);
            break;
        }
        let next = signers::free_udp_port();
        for site in &sites {
            let cfg = std::fs::read_to_string(&site.imipd.config).unwrap();
            let cfg = cfg.replace(
                &format!("127.0.0.1:{dns_port}"),
                &format!("127.0.0.1:{next}"),
            );
            std::fs::write(&site.imipd.config, cfg).unwrap();
            let before = site.imipd.log().matches("configuration reloaded").count();
            run("kill", &["-HUP", &site.imipd.pid().to_string()], None);
            let deadline = Instant::now() + Duration::from_secs(10);
            while site.imipd.log().matches("configuration reloaded").count() == before
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        dns_port = next;
    }
    let dns = dns.expect("dnsmasq on a free port");
    let b = sites.pop().unwrap();
    let a = sites.pop().unwrap();
    Some(World {
        _tmp: tmp,
        _dns: dns,
        pki,
        a,
        b,
    })
}

/// An iMIP message (what a calendar client submits).
fn imip(from: &str, to: &[&str], method: &str, vevent: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: test\r\nMessage-ID: <{}@test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/calendar; method={method}; charset=utf-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:{method}\r\n{vevent}END:VCALENDAR\r\n",
        to.iter().map(|t| format!("<{t}>")).collect::<Vec<_>>().join(", "),
        now_nanos()
    )
}

fn event(uid: &str, seq: u32, organizer: &str, attendees: &[(&str, &str)], extra: &str) -> String {
    let mut s = format!(
        "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:2030010{}T080000Z\r\nSEQUENCE:{seq}\r\nSUMMARY:Review\r\n\
         DTSTART:20300110T100000Z\r\nDTEND:20300110T110000Z\r\nORGANIZER:mailto:{organizer}\r\n",
        seq + 1
    );
    for (a, ps) in attendees {
        s.push_str(&format!("ATTENDEE;PARTSTAT={ps};RSVP=TRUE:mailto:{a}\r\n"));
    }
    s.push_str(extra);
    s.push_str("END:VEVENT\r\n");
    s
}

fn unfold(s: &str) -> String {
    s.replace("\r\n ", "").replace("\n ", "")
}

/// An invitation, the reply, free/busy and the cancellation between two domains, both ways.
#[test]
fn invitation_reply_freebusy_cancel_between_two_domains() {
    let Some(w) = world("invitation_reply_freebusy_cancel_between_two_domains") else {
        return;
    };
    let (a, b) = (&w.a, &w.b);
    // A -> B: invitation.
    let inv = imip(
        "alice@a.test",
        &["bob@b.test"],
        "REQUEST",
        &event(
            "ev-1@a.test",
            0,
            "alice@a.test",
            &[("alice@a.test", "ACCEPTED"), ("bob@b.test", "NEEDS-ACTION")],
            "",
        ),
    );
    let res = a.send("alice@a.test", &inv);
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0]["recipient"], "mailto:bob@b.test");
    assert_eq!(res[0]["via"], "ischedule", "{res:?}\n{}", a.imipd.log());
    assert_eq!(
        res[0]["request_status"],
        "2.0;Success",
        "{res:?}\n{}",
        b.imipd.log()
    );
    let bob = unfold(&b.export("bob@b.test"));
    assert!(bob.contains("UID:ev-1@a.test"), "{bob}");
    let alice = unfold(&a.export("alice@a.test"));
    assert!(
        alice.contains("SCHEDULE-STATUS=2.0") && alice.contains("mailto:bob@b.test"),
        "organizer's copy records the delivery status: {alice}"
    );

    // B -> A: the reply.
    let reply = imip(
        "bob@b.test",
        &["alice@a.test"],
        "REPLY",
        &event(
            "ev-1@a.test",
            0,
            "alice@a.test",
            &[("bob@b.test", "ACCEPTED")],
            "",
        ),
    );
    let res = b.send("bob@b.test", &reply);
    assert_eq!(
        res[0]["request_status"],
        "2.0;Success",
        "{res:?}\n{}",
        a.imipd.log()
    );
    let alice = unfold(&a.export("alice@a.test"));
    let bob_line = alice
        .lines()
        .find(|l| l.starts_with("ATTENDEE") && l.contains("bob@b.test"))
        .expect("bob's ATTENDEE line");
    assert!(bob_line.contains("PARTSTAT=ACCEPTED"), "{alice}");

    // Free/busy both ways, over iSchedule.
    let (out, err, code) = a.cli(&[
        "freebusy",
        "--user",
        "bob@b.test",
        "--from",
        "20300110T000000Z",
        "--to",
        "20300111T000000Z",
    ]);
    assert_eq!(code, 0, "{err}\n{}", b.imipd.log());
    assert!(
        out.contains("METHOD:REPLY") && out.contains("FREEBUSY"),
        "{out}"
    );
    assert!(
        unfold(&out).contains("20300110T100000Z/20300110T110000Z"),
        "{out}"
    );
    let (out, err, code) = b.cli(&[
        "freebusy",
        "--user",
        "alice@a.test",
        "--from",
        "20300110T000000Z",
        "--to",
        "20300111T000000Z",
    ]);
    assert_eq!(code, 0, "{err}\n{}", a.imipd.log());
    assert!(
        unfold(&out).contains("20300110T100000Z/20300110T110000Z"),
        "{out}"
    );
    // An unknown domain user: refused, non-zero.
    let (_, err, code) = a.cli(&[
        "freebusy",
        "--user",
        "nobody@c.test",
        "--from",
        "20300110T000000Z",
        "--to",
        "20300111T000000Z",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no iSchedule service"), "{err}");

    // B -> A: an invitation the other way.
    let inv2 = imip(
        "bob@b.test",
        &["alice@a.test"],
        "REQUEST",
        &event(
            "ev-2@b.test",
            0,
            "bob@b.test",
            &[("bob@b.test", "ACCEPTED"), ("alice@a.test", "NEEDS-ACTION")],
            "",
        )
        .replace("DTSTART:20300110", "DTSTART:20300112")
        .replace("DTEND:20300110", "DTEND:20300112"),
    );
    let res = b.send("bob@b.test", &inv2);
    assert_eq!(
        res[0]["request_status"],
        "2.0;Success",
        "{res:?}\n{}",
        a.imipd.log()
    );
    assert!(a.export("alice@a.test").contains("UID:ev-2@b.test"));

    // A -> B: cancellation.
    let cancel = imip(
        "alice@a.test",
        &["bob@b.test"],
        "CANCEL",
        &event(
            "ev-1@a.test",
            1,
            "alice@a.test",
            &[("bob@b.test", "NEEDS-ACTION")],
            "STATUS:CANCELLED\r\n",
        ),
    );
    let res = a.send("alice@a.test", &cancel);
    assert_eq!(
        res[0]["request_status"],
        "2.0;Success",
        "{res:?}\n{}",
        b.imipd.log()
    );
    let bob = unfold(&b.export("bob@b.test"));
    let ev1 = bob
        .split("BEGIN:VEVENT")
        .find(|c| c.contains("UID:ev-1@a.test"))
        .unwrap();
    assert!(ev1.contains("STATUS:CANCELLED"), "{bob}");
    // Busy time is gone with the cancellation.
    let (out, _, code) = a.cli(&[
        "freebusy",
        "--user",
        "bob@b.test",
        "--from",
        "20300110T000000Z",
        "--to",
        "20300111T000000Z",
    ]);
    assert_eq!(code, 0);
    assert!(
        !unfold(&out).contains("20300110T100000Z/20300110T110000Z"),
        "{out}"
    );
    let _ = (&w.pki, &a.domain, &a.host, &a.outbox, &b.dkim_key);
}

/// The milter on authenticated submission (libmilter's own client, miltertest): with
/// `relay = "instead"`, a recipient reached over iSchedule is removed from the mail, one whose
/// domain has no iSchedule keeps it; the organizer's copy records both statuses.
#[test]
fn milter_relays_authenticated_submission_instead_of_mail() {
    let test = "milter_relays_authenticated_submission_instead_of_mail";
    if !tools_present(test, &["miltertest"]) {
        return;
    }
    let Some(w) = world_with(
        test,
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[policy]\ntrust_authenticated_submission = true\n",
        "relay = \"instead\"\n",
    ) else {
        return;
    };
    let port = w.a.imipd.milter_port.expect("milter listening line");
    let body = event(
        "mt-1@a.test",
        0,
        "alice@a.test",
        &[
            ("alice@a.test", "ACCEPTED"),
            ("bob@b.test", "NEEDS-ACTION"),
            ("zed@c.test", "NEEDS-ACTION"),
        ],
        "",
    )
    .replace("\r\n", "\\r\\n");
    let lua = format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.a.test", "127.0.0.1") ~= nil then error("conninfo") end
if mt.macro(conn, SMFIC_MAIL, "{{auth_authen}}", "alice", "i", "QID1") ~= nil then error("macro") end
if mt.mailfrom(conn, "<alice@a.test>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@b.test>") ~= nil then error("rcptto") end
if mt.rcptto(conn, "<zed@c.test>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@a.test>") ~= nil then error("header") end
if mt.header(conn, "To", "bob@b.test, zed@c.test") ~= nil then error("header") end
if mt.header(conn, "Message-ID", "<mt-1@a.test>") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\n{body}END:VCALENDAR\r\n") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
if not mt.eom_check(conn, MT_RCPTDELETE, "<bob@b.test>") then error("bob not removed from the mail") end
if mt.eom_check(conn, MT_RCPTDELETE, "<zed@c.test>") then error("zed removed from the mail") end
mt.disconnect(conn)
"#
    );
    let script = w.a.imipd.dir.join("relay.lua");
    std::fs::write(&script, lua).unwrap();
    let out = std::process::Command::new("miltertest")
        .arg("-s")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.a.imipd.log()
    );
    assert!(w.b.export("bob@b.test").contains("UID:mt-1@a.test"));
    let alice = unfold(&w.a.export("alice@a.test"));
    assert!(
        alice
            .lines()
            .any(|l| l.contains("bob@b.test") && l.contains("SCHEDULE-STATUS=2.0")),
        "{alice}"
    );
    assert!(
        alice
            .lines()
            .any(|l| l.contains("zed@c.test") && l.contains("SCHEDULE-STATUS=5.1")),
        "{alice}"
    );
}

/// With `relay = "also"` (the default) the milter does not wait for iSchedule: it commits the
/// relay as an effect and accepts the message with every recipient kept; the effects runner
/// then delivers it to b.test, records SCHEDULE-STATUS and journals the attempt.
#[test]
fn milter_relays_authenticated_submission_also_through_the_effects_runner() {
    let test = "milter_relays_authenticated_submission_also_through_the_effects_runner";
    if !tools_present(test, &["miltertest"]) {
        return;
    }
    let Some(w) = world_with(
        test,
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[policy]\ntrust_authenticated_submission = true\n",
        "relay = \"also\"\n",
    ) else {
        return;
    };
    let port = w.a.imipd.milter_port.expect("milter listening line");
    let body = event(
        "mt-2@a.test",
        0,
        "alice@a.test",
        &[("alice@a.test", "ACCEPTED"), ("bob@b.test", "NEEDS-ACTION")],
        "",
    )
    .replace("\r\n", "\\r\\n");
    let lua = format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.a.test", "127.0.0.1") ~= nil then error("conninfo") end
if mt.macro(conn, SMFIC_MAIL, "{{auth_authen}}", "alice", "i", "QID2") ~= nil then error("macro") end
if mt.mailfrom(conn, "<alice@a.test>") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@b.test>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@a.test>") ~= nil then error("header") end
if mt.header(conn, "To", "bob@b.test") ~= nil then error("header") end
if mt.header(conn, "Message-ID", "<mt-2@a.test>") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\n{body}END:VCALENDAR\r\n") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
if mt.eom_check(conn, MT_RCPTDELETE, "<bob@b.test>") then error("bob removed from the mail") end
mt.disconnect(conn)
"#
    );
    let script = w.a.imipd.dir.join("relay-also.lua");
    std::fs::write(&script, lua).unwrap();
    let out = std::process::Command::new("miltertest")
        .arg("-s")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.a.imipd.log()
    );
    // Bounded wait for the runner.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alice = unfold(&w.a.export("alice@a.test"));
        let journal = w.a.cli(&["journal", "--user", "alice@a.test"]).0;
        let relayed = journal.lines().any(|l| {
            l.contains("\"kind\":\"effect\"")
                && l.contains("\"effect\":\"ischedule\"")
                && l.contains("\"outcome\":\"delivered\"")
        });
        if relayed
            && alice
                .lines()
                .any(|l| l.contains("bob@b.test") && l.contains("SCHEDULE-STATUS=2.0"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alice}\n{journal}\n{}",
            w.a.imipd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(w.b.export("bob@b.test").contains("UID:mt-2@a.test"));
}

// ---------------------------------------------------------------------------------------------
// Hand-made requests against the receiver: an independent TLS client (openssl) and requests
// signed here, then damaged in one way each.

fn https(port: u16, host: &str, ca: &Path, request: &[u8]) -> (u16, String, String) {
    use openssl::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(ca).unwrap();
    let c = b.build();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = c
        .connect(host, tcp)
        .expect("TLS with the test CA and name check");
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn request_bytes(host: &str, headers: &[(String, String)], body: &str) -> Vec<u8> {
    let mut r = format!("POST /.well-known/ischedule HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nCache-Control: no-cache, no-transform\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r.into_bytes()
}

fn base_headers(
    originator: &str,
    recipients: &[&str],
    msgid: &str,
    method: &str,
) -> Vec<(String, String)> {
    let mut h = vec![
        ("iSchedule-Version".to_string(), "1.0".to_string()),
        ("iSchedule-Message-ID".to_string(), msgid.to_string()),
        ("Originator".to_string(), format!("mailto:{originator}")),
    ];
    for r in recipients {
        h.push(("Recipient".to_string(), format!("mailto:{r}")));
    }
    h.push((
        "Content-Type".to_string(),
        format!("text/calendar; charset=utf-8; component=VEVENT; method={method}"),
    ));
    h
}

fn invitation_body(uid: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REQUEST\r\n{}END:VCALENDAR\r\n",
        event(uid, 0, "alice@a.test", &[("alice@a.test", "ACCEPTED"), ("bob@b.test", "NEEDS-ACTION")], "")
    )
}

/// Each damaged request is refused as a whole with the right error element, and nothing is
/// stored (draft-desruisseaux-ischedule-05 §7.5, brief §10.7).
#[test]
fn damaged_requests_are_refused_and_nothing_is_stored() {
    let Some(w) = world("damaged_requests_are_refused_and_nothing_is_stored") else {
        return;
    };
    let b = &w.b;
    let port = b.imipd.ischedule_port.unwrap();
    let pem = std::fs::read(&w.a.dkim_key).unwrap();
    let key = SigningKey::from_pem(&pem, "a.test", "ischedule").unwrap();
    let send = |headers: &[(String, String)], body: &str| {
        https(
            port,
            "cal.b.test",
            &w.pki.ca,
            &request_bytes("cal.b.test", headers, body),
        )
    };
    let signed = |uid: &str, t: i64| {
        let body = invitation_body(uid);
        let mut h = base_headers(
            "alice@a.test",
            &["bob@b.test"],
            &format!("<{uid}>"),
            "REQUEST",
        );
        let sig = key.sign(&h, body.as_bytes(), t, 600).unwrap();
        h.push(("DKIM-Signature".into(), sig));
        (h, body)
    };
    let stored = |uid: &str| b.export("bob@b.test").contains(&format!("UID:{uid}"));

    // Capabilities and our key, first.
    let (st, head, body) = https(
        port,
        "cal.b.test",
        &w.pki.ca,
        b"GET /.well-known/ischedule?action=capabilities HTTP/1.1\r\nHost: cal.b.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 200, "{head}");
    let serial = body
        .split("<serial-number>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_string();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("ischedule-capabilities: {serial}")),
        "{head}"
    );
    let (st, _, body) = https(
        port,
        "cal.b.test",
        &w.pki.ca,
        b"GET /.well-known/domainkey/b.test/ischedule HTTP/1.1\r\nHost: cal.b.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(st, 200);
    assert!(body.starts_with("v=DKIM1; k=rsa;"), "{body}");

    type Make<'a> = Box<dyn Fn() -> (Vec<(String, String)>, String) + 'a>;
    let cases: Vec<(&str, Make, &str)> = vec![
        (
            "tampered body",
            Box::new(|| {
                let (h, body) = signed("bad-body@a.test", now());
                (h, body.replace("SUMMARY:Review", "SUMMARY:Revieu"))
            }),
            "verification-failed",
        ),
        (
            "changed Originator",
            Box::new(|| {
                let (mut h, body) = signed("bad-orig@a.test", now());
                h.iter_mut().find(|(n, _)| n == "Originator").unwrap().1 =
                    "mailto:carol@a.test".into();
                (h, body.replace("alice@a.test", "carol@a.test"))
            }),
            "verification-failed",
        ),
        (
            "extra Recipient",
            Box::new(|| {
                let (mut h, body) = signed("bad-rcpt@a.test", now());
                h.push(("Recipient".into(), "mailto:dave@b.test".into()));
                (h, body)
            }),
            "verification-failed",
        ),
        (
            "expired x=",
            Box::new(|| signed("bad-expired@a.test", now() - 7200)),
            "verification-failed",
        ),
        (
            "t= in the future",
            Box::new(|| signed("bad-future@a.test", now() + 3600)),
            "verification-failed",
        ),
        (
            "unsigned",
            Box::new(|| {
                let (h, body) = signed("bad-unsigned@a.test", now());
                (
                    h.into_iter()
                        .filter(|(n, _)| n != "DKIM-Signature")
                        .collect(),
                    body,
                )
            }),
            "verification-failed",
        ),
        (
            "no iSchedule-Version",
            Box::new(|| {
                let (h, body) = signed("bad-version@a.test", now());
                (
                    h.into_iter()
                        .filter(|(n, _)| n != "iSchedule-Version")
                        .collect(),
                    body,
                )
            }),
            "version-not-supported",
        ),
        (
            "two Originators",
            Box::new(|| {
                let (mut h, body) = signed("bad-two-orig@a.test", now());
                h.push(("Originator".into(), "mailto:carol@a.test".into()));
                (h, body)
            }),
            "too-many-originators",
        ),
        (
            "not text/calendar",
            Box::new(|| {
                let (mut h, body) = signed("bad-ct@a.test", now());
                h.iter_mut().find(|(n, _)| n == "Content-Type").unwrap().1 =
                    "application/octet-stream".into();
                (h, body)
            }),
            "invalid-calendar-data-type",
        ),
    ];
    for (what, make, element) in cases {
        let uid = {
            let (_, body) = make();
            body.lines()
                .find_map(|l| l.strip_prefix("UID:"))
                .unwrap()
                .to_string()
        };
        let (h, body) = make();
        let (st, head, resp) = send(&h, &body);
        assert!(st == 403 || st == 400, "{what}: {head}\n{resp}");
        assert!(resp.contains(&format!("<{element}/>")), "{what}: {resp}");
        assert!(!stored(&uid), "{what}: nothing may be stored");
    }

    // A signature by a.test for an Originator of another domain: d= binding.
    let body = invitation_body("bad-binding@a.test").replace("alice@a.test", "eve@evil.test");
    let mut h = base_headers("eve@evil.test", &["bob@b.test"], "<bad-binding>", "REQUEST");
    let sig = key.sign(&h, body.as_bytes(), now(), 600).unwrap();
    h.push(("DKIM-Signature".into(), sig));
    let (st, _, resp) = send(&h, &body);
    assert_eq!(st, 403);
    assert!(
        resp.contains("<verification-failed/>") && resp.contains("does not match"),
        "{resp}"
    );
    assert!(!stored("bad-binding@a.test"));

    // A valid request is delivered once; the same message ID again is a replay.
    let (h, body) = signed("good-once@a.test", now());
    let (st, _, resp) = send(&h, &body);
    assert_eq!(st, 200, "{resp}\n{}", b.imipd.log());
    assert!(
        resp.contains("<request-status>2.0;Success</request-status>"),
        "{resp}"
    );
    assert!(stored("good-once@a.test"));
    let (st, _, resp) = send(&h, &body);
    assert_eq!(st, 403, "{resp}");
    assert!(
        resp.contains("<verification-failed/>") && resp.contains("replay"),
        "{resp}"
    );

    // A recipient this server does not host: 3.7, and nothing relayed.
    let body = invitation_body("other-domain@a.test").replace("bob@b.test", "zed@c.test");
    let mut h = base_headers("alice@a.test", &["zed@c.test"], "<other-domain>", "REQUEST");
    let sig = key.sign(&h, body.as_bytes(), now(), 600).unwrap();
    h.push(("DKIM-Signature".into(), sig));
    let (st, _, resp) = send(&h, &body);
    assert_eq!(st, 200);
    assert!(resp.contains("3.7;Invalid calendar user"), "{resp}");
}

// ---------------------------------------------------------------------------------------------
// Load: signed POSTs per second (verify + apply + response) and remote free/busy latency.
// Bounded in count and time, loopback only. Run with
// `cargo test --test ischedule -- --ignored --nocapture load`.

#[test]
#[ignore]
fn load_signed_posts_and_remote_freebusy() {
    let Some(w) = world("load_signed_posts_and_remote_freebusy") else {
        return;
    };
    let port = w.b.imipd.ischedule_port.unwrap();
    let pem = std::fs::read(&w.a.dkim_key).unwrap();
    let key = SigningKey::from_pem(&pem, "a.test", "ischedule").unwrap();
    let max_count = 400;
    let max_time = Duration::from_secs(60);
    let start = Instant::now();
    let mut n = 0;
    while n < max_count && start.elapsed() < max_time {
        let uid = format!("load-{n}@a.test");
        let body = invitation_body(&uid);
        let mut h = base_headers(
            "alice@a.test",
            &["bob@b.test"],
            &format!("<{uid}>"),
            "REQUEST",
        );
        let sig = key.sign(&h, body.as_bytes(), now(), 600).unwrap();
        h.push(("DKIM-Signature".into(), sig));
        let (st, _, resp) = https(
            port,
            "cal.b.test",
            &w.pki.ca,
            &request_bytes("cal.b.test", &h, &body),
        );
        assert_eq!(st, 200, "{resp}");
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BENCH signed POSTs (new TLS connection each, sign + verify + apply + response): {n} in {secs:.2} s = {:.1}/s",
        n as f64 / secs
    );
    // The same without the work behind the door: unsigned requests, refused before any key
    // lookup or store access (TLS handshake + HTTP + header checks only).
    let start = Instant::now();
    let mut m = 0;
    while m < 200 && start.elapsed() < max_time {
        let uid = format!("unsigned-{m}@a.test");
        let body = invitation_body(&uid);
        let h = base_headers(
            "alice@a.test",
            &["bob@b.test"],
            &format!("<{uid}>"),
            "REQUEST",
        );
        let (st, _, _) = https(
            port,
            "cal.b.test",
            &w.pki.ca,
            &request_bytes("cal.b.test", &h, &body),
        );
        assert_eq!(st, 403);
        m += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "BENCH refused unsigned POSTs (TLS + HTTP + header checks only): {m} in {secs:.2} s = {:.1}/s",
        m as f64 / secs
    );
    // Remote free/busy through the CLI (control socket -> daemon -> iSchedule -> peer).
    let mut lat = Vec::new();
    let start = Instant::now();
    while lat.len() < 50 && start.elapsed() < max_time {
        let t = Instant::now();
        let (out, err, code) = w.a.cli(&[
            "freebusy",
            "--user",
            "bob@b.test",
            "--from",
            "20300110T000000Z",
            "--to",
            "20300111T000000Z",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("VFREEBUSY"));
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "BENCH remote free/busy via `imipd freebusy` ({} runs): median {:.1} ms, p90 {:.1} ms",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10]
    );
    // The same request sent on the control socket by this test (no CLI process start), and
    // the process start alone: where the end-to-end figure goes.
    let sock = w.a.imipd.dir.join("data").join("control.sock");
    let req = serde_json::json!({"argv": ["imipd", "freebusy", "--user", "bob@b.test", "--from",
        "20300110T000000Z", "--to", "20300111T000000Z"]})
    .to_string()
        + "\n";
    let mut direct = Vec::new();
    let start = Instant::now();
    while direct.len() < 50 && start.elapsed() < max_time {
        use std::io::{BufRead, Write};
        let t = Instant::now();
        let mut c = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
        c.write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(c).read_line(&mut line).unwrap();
        let answer: serde_json::Value = serde_json::from_str(&line).expect("JSON answer");
        assert_eq!(answer["code"], 0, "{line}");
        direct.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    direct.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut starts = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imipd"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        starts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    starts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "BENCH remote free/busy on the control socket ({} runs): median {:.2} ms, p90 {:.2} ms; \
         `imipd --version` (20 runs): median {:.2} ms",
        direct.len(),
        direct[direct.len() / 2],
        direct[direct.len() * 9 / 10],
        starts[starts.len() / 2]
    );
}

// ---------------------------------------------------------------------------------------------
// Interop with a real foreign receiver: Debian's Cyrus httpd (brief §15). It ignores DKIM (the
// Debian build has none), so this checks our sender's headers, redirect following, XML parsing,
// free/busy and error mapping against real output.

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Stops Cyrus's master and the service processes it started, by PID.
struct Cyrus {
    master: std::process::Child,
}

impl Cyrus {
    fn children(&self) -> Vec<u32> {
        let me = self.master.id();
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                // pid (comm) state ppid ...
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(me) {
                    out.push(pid);
                }
            }
        }
        out
    }
}

impl Drop for Cyrus {
    fn drop(&mut self) {
        let children = self.children();
        let _ = std::process::Command::new("kill")
            .arg(self.master.id().to_string())
            .status();
        for c in children {
            let _ = std::process::Command::new("kill")
                .arg(c.to_string())
                .status();
        }
        let _ = self.master.wait();
    }
}

fn tcp_exchange(port: u16, data: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(data).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// IMAP as admin: CREATE user/<name>, one command per line, each answered before the next.
fn imap_create_users(port: u16, users: &[&str]) {
    use std::io::BufRead;
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut cmds = vec!["a0 LOGIN admin x".to_string()];
    for (i, u) in users.iter().enumerate() {
        cmds.push(format!("a{} CREATE user/{u}", i + 1));
    }
    cmds.push("z LOGOUT".into());
    for c in cmds {
        let tag = c.split(' ').next().unwrap().to_string();
        w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if line.starts_with(&format!("{tag} ")) {
                assert!(line.contains(" OK"), "IMAP {c}: {line}");
                break;
            }
        }
    }
}

#[test]
fn interop_with_cyrus_receiver() {
    let test = "interop_with_cyrus_receiver";
    if !is_root() {
        eprintln!(
            "NOTICE: skipping {test}: Cyrus's master must start as root (it drops to nobody)"
        );
        return;
    }
    if !tools_present(test, &["apt-get", "dpkg-deb", "openssl", "setsid", "chown"]) {
        return;
    }
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/specs/ischedule/observed"
    );
    let (Ok(imapd_conf), Ok(cyrus_conf)) = (
        std::fs::read_to_string(format!("{shared}/loopback-imapd.conf")),
        std::fs::read_to_string(format!("{shared}/loopback-cyrus.conf")),
    ) else {
        eprintln!("NOTICE: skipping {test}: the observed loopback Cyrus configs are not available");
        return;
    };
    // The packages, downloaded by tools/test.sh's install step (the test stays offline).
    let debs = std::env::var_os("IMIPD_TEST_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache"))
        .join("cyrus-debs");
    let have_debs = std::fs::read_dir(&debs)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("cyrus-caldav_"))
        })
        .unwrap_or(false);
    if !have_debs {
        mta::skip(
            test,
            &format!(
                "no Cyrus packages in {} (tools/test.sh downloads them)",
                debs.display()
            ),
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = tmp.path().join("root");
    for e in std::fs::read_dir(&debs).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            run("dpkg-deb", &["-x", p(&e.path()), p(&root)], None);
        }
    }
    let bin = root.join("usr/lib/cyrus/bin");
    if !bin.join("master").exists() || !bin.join("httpd").exists() {
        eprintln!("NOTICE: skipping {test}: the unpacked packages have no Cyrus master/httpd");
        return;
    }
    let state = tmp.path().join("state");
    for d in ["conf/socket", "spool", "run"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    let http_port = mta::free_port();
    let imap_port = mta::free_port();
    let subst = |s: &str| {
        s.replace("$CYRUS_STATE", p(&state))
            .replace("$CYRUS_ROOT", p(&root))
            .replace("127.0.0.1:18008", &format!("127.0.0.1:{http_port}"))
            .replace("127.0.0.1:18143", &format!("127.0.0.1:{imap_port}"))
    };
    std::fs::write(state.join("imapd.conf"), subst(&imapd_conf)).unwrap();
    std::fs::write(state.join("cyrus.conf"), subst(&cyrus_conf)).unwrap();
    run("chown", &["-R", "nobody:nogroup", p(&state)], None);
    let libs = format!(
        "{}:{}",
        p(&root.join("usr/lib/x86_64-linux-gnu")),
        p(&root.join("lib/x86_64-linux-gnu"))
    );
    let master = std::process::Command::new("setsid")
        .arg(bin.join("master"))
        .args([
            "-C",
            p(&state.join("imapd.conf")),
            "-M",
            p(&state.join("cyrus.conf")),
        ])
        .env("LD_LIBRARY_PATH", &libs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start Cyrus master");
    let _cyrus = Cyrus { master };
    // Wait until httpd answers (it drops every other connection, so poll a few times).
    let deadline = Instant::now() + Duration::from_secs(30);
    let caps_req = b"GET /ischedule?action=capabilities HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut up = false;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", http_port)).is_ok()
            && tcp_exchange(http_port, caps_req).starts_with("HTTP/1.1 200")
        {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !up {
        eprintln!("NOTICE: skipping {test}: Cyrus httpd did not come up (missing libraries?)");
        return;
    }
    imap_create_users(imap_port, &["bob", "carol"]);
    for u in ["bob", "carol"] {
        // One authenticated CalDAV request creates the calendar home (alwaystrue SASL).
        let auth = imipd::codec::base64_encode(format!("{u}:x").as_bytes());
        let req = format!(
            "PROPFIND /dav/calendars/user/{u}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nDepth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut ok = false;
        for _ in 0..4 {
            if tcp_exchange(http_port, req.as_bytes()).starts_with("HTTP/1.1 207") {
                ok = true;
                break;
            }
        }
        assert!(ok, "PROPFIND for {u}");
    }

    // Our side: example.com, sending to Cyrus's example.org through a static override.
    let me = tmp.path().join("imipd");
    std::fs::create_dir_all(&me).unwrap();
    let key = me.join("dkim.pem");
    run("openssl", &["genrsa", "-out", p(&key), "2048"], None);
    let cfg = me.join("imipd.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.com\"]\n[outbound]\ntransport = \"outbox:{}\"\n\
             [ischedule]\ndkim_domain = \"example.com\"\ndkim_key = \"{}\"\nallow_http = true\ntimeout_secs = 10\n\
             [ischedule.servers]\n\"example.org\" = \"http://127.0.0.1:{http_port}/.well-known/ischedule\"\n",
            p(&me.join("data")),
            p(&me.join("outbox")),
            p(&key)
        ),
    )
    .unwrap();
    let imipd = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_imipd"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    };
    let send = |msg: &str| {
        let f = me.join(format!("m-{}.eml", now_nanos()));
        std::fs::write(&f, msg).unwrap();
        let (out, err, code) = imipd(&["send", "--sender", "alice@example.com", p(&f)]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let attendees = [
        ("alice@example.com", "ACCEPTED"),
        ("bob@example.org", "NEEDS-ACTION"),
        ("dave@example.org", "NEEDS-ACTION"),
    ];
    let inv = imip(
        "alice@example.com",
        &["bob@example.org", "dave@example.org"],
        "REQUEST",
        &event("cy-1@example.com", 0, "alice@example.com", &attendees, ""),
    );
    let res = send(&inv);
    let status_of = |res: &[serde_json::Value], who: &str| {
        res.iter()
            .find(|r| r["recipient"] == format!("mailto:{who}"))
            .map(|r| r["request_status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(status_of(&res, "bob@example.org"), "2.0;Success", "{res:?}");
    assert!(
        status_of(&res, "dave@example.org").starts_with("3.7"),
        "{res:?}"
    );
    let (alice, _, _) = imipd(&["export", "--user", "alice@example.com"]);
    let alice = unfold(&alice);
    assert!(
        alice
            .lines()
            .any(|l| l.contains("bob@example.org") && l.contains("SCHEDULE-STATUS=2.0")),
        "{alice}"
    );
    assert!(
        alice
            .lines()
            .any(|l| l.contains("dave@example.org") && l.contains("SCHEDULE-STATUS=3.7")),
        "{alice}"
    );

    // Free/busy from Cyrus's calendar: a VFREEBUSY REPLY for bob.
    let (out, err, code) = imipd(&[
        "freebusy",
        "--user",
        "bob@example.org",
        "--originator",
        "alice@example.com",
        "--from",
        "20300110T000000Z",
        "--to",
        "20300111T000000Z",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("METHOD:REPLY") && out.contains("BEGIN:VFREEBUSY"),
        "{out}"
    );
    assert!(out.contains("ATTENDEE:mailto:bob@example.org"), "{out}");

    // A VFREEBUSY REQUEST sent by mail to a user of the other domain is answered at once: the
    // iSchedule answer comes back to the requester as an iMIP REPLY.
    let fbreq =
        "From: <alice@example.com>\r\nTo: <carol@example.org>\r\nSubject: fb\r\nMessage-ID: <fb1@test>\r\n\
         Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n\
         METHOD:REQUEST\r\nBEGIN:VFREEBUSY\r\nUID:fbq-1@example.com\r\nDTSTAMP:20300101T000000Z\r\n\
         DTSTART:20300110T000000Z\r\nDTEND:20300111T000000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
         ATTENDEE:mailto:carol@example.org\r\nEND:VFREEBUSY\r\nEND:VCALENDAR\r\n";
    let res = send(fbreq);
    assert_eq!(
        status_of(&res, "carol@example.org"),
        "2.0;Success",
        "{res:?}"
    );
    let replies: Vec<String> = std::fs::read_dir(me.join("outbox"))
        .map(|rd| {
            rd.flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        replies.iter().any(|m| m.contains("METHOD:REPLY")
            && m.contains("ATTENDEE:mailto:carol@example.org")
            && m.lines()
                .any(|l| l.starts_with("To:") && l.contains("alice@example.com"))),
        "{replies:?}"
    );

    // The cancellation.
    let cancel = imip(
        "alice@example.com",
        &["bob@example.org"],
        "CANCEL",
        &event(
            "cy-1@example.com",
            1,
            "alice@example.com",
            &[("bob@example.org", "NEEDS-ACTION")],
            "STATUS:CANCELLED\r\n",
        ),
    );
    let res = send(&cancel);
    assert_eq!(status_of(&res, "bob@example.org"), "2.0;Success", "{res:?}");
}

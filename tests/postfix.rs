//! imipd under a real Postfix on loopback: as milter (`smtpd_milters`), as LMTP delivery agent
//! (`virtual_transport = lmtp:...`) and both; DKIM signatures by dkimpy with keys served by a
//! real dnsmasq. Each scenario checks what reached the mailbox and what the calendars hold.
//!
//! Needed on the machine: postfix, swaks, dnsmasq-base, openssl, python3 with dkimpy; root.

mod mta;
mod signers;

use mta::{have, wait_maildir, Imipd, Postfix, PostfixOptions};
use signers::{DkimKey, Dns};
use std::time::Duration;
use tempfile::TempDir;

const TOOLS: &[&str] = &["postfix", "swaks", "dnsmasq", "openssl", "python3"];

fn request(uid: &str, attendees: &[&str]) -> String {
    let mut att = String::new();
    for a in attendees {
        att.push_str(&format!(
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{a}\r\n"
        ));
    }
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
UID:{uid}\r\nSEQUENCE:0\r\nDTSTAMP:20260101T090000Z\r\nDTSTART:20260110T100000Z\r\n\
DTEND:20260110T110000Z\r\nSUMMARY:Planning\r\nORGANIZER:mailto:alice@example.com\r\n{att}\
END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

fn message(from: &str, to: &[&str], method: &str, msgid: &str, calendar: &str) -> Vec<u8> {
    format!(
        "From: <{from}>\r\nTo: {}\r\nSubject: Invitation\r\nDate: Thu, 01 Jan 2026 09:00:00 +0000\r\n\
Message-ID: <{msgid}>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYou are invited.\r\n\
--b1\r\nContent-Type: text/calendar; method={method}; charset=utf-8\r\n\r\n{calendar}\r\n--b1--\r\n",
        to.iter().map(|a| format!("<{a}>")).collect::<Vec<_>>().join(", ")
    )
    .into_bytes()
}

/// Fields drop in this order: Postfix first, then the daemons it talks to, the temp dir last.
struct World {
    postfix: Postfix,
    imipd: Imipd,
    _sink: Option<Imipd>,
    _dns: Dns,
    key_remote: DkimKey,
    key: DkimKey,
    mail: std::path::PathBuf,
    _tmp: TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Milter,
    Lmtp,
    Both,
}

fn world(mode: Mode, milter_extra: &str, env: &[(&str, &str)]) -> World {
    world_routed(mode, milter_extra, env, true)
}

/// `route_remote`: mail for remote.test goes to a second imipd LMTP (local for remote.test);
/// without it, to the first, which refuses it at RCPT (remote.test is not local there).
fn world_routed(mode: Mode, milter_extra: &str, env: &[(&str, &str)], route_remote: bool) -> World {
    let tmp = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(tmp.path(), "sel", "example.com");
    let key_remote = DkimKey::rsa(tmp.path(), "sel", "remote.test");
    let dns = Dns::start(&[
        (&key.record_name(), &key.record),
        (&key_remote.record_name(), &key_remote.record),
    ]);
    let mail = tmp.path().join("mail");
    let smtp_port = mta::free_port();
    let cfg = format!(
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n\
[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 3\n\
[milter]\nenabled = {}\nlisten = \"inet:127.0.0.1:0\"\n{milter_extra}\
[lmtp]\nenabled = {}\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%d/%u\"\n\
[outbound]\ntransport = \"smtp://127.0.0.1:{smtp_port}\"\n",
        dns.addr,
        mode != Mode::Lmtp,
        mode != Mode::Milter,
        mail.display(),
    );
    let imipd = Imipd::start(&tmp.path().join("imipd"), &cfg, env);
    // In milter-only mode Postfix delivers through a second imipd LMTP, with its own store:
    // the calendars that matter are the first one's. Otherwise that second one takes the
    // mail for remote.test (the first one's LMTP refuses recipients that are not local).
    let sink_domains = if mode == Mode::Milter {
        "\"example.org\", \"remote.test\""
    } else {
        "\"remote.test\""
    };
    let sink = if mode == Mode::Milter || route_remote {
        let sink_cfg = format!(
            "local_domains = [{sink_domains}]\n[dns]\nnameservers = [\"{}\"]\ntimeout_secs = 3\n\
[milter]\nenabled = false\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%d/%u\"\n",
            dns.addr,
            mail.display()
        );
        Some(Imipd::start(&tmp.path().join("sink"), &sink_cfg, &[]))
    } else {
        None
    };
    let lmtp_port = match (&sink, mode) {
        (Some(s), Mode::Milter) => s.lmtp_port,
        _ => imipd.lmtp_port,
    };
    let extra = match (&sink, mode) {
        (Some(s), m) if m != Mode::Milter => format!(
            "transport_maps = inline:{{remote.test=lmtp:inet:127.0.0.1:{}}}\n",
            s.lmtp_port.expect("sink port")
        ),
        _ => String::new(),
    };
    let postfix = Postfix::start(
        &tmp.path().join("postfix"),
        &PostfixOptions {
            milter_port: if mode == Mode::Lmtp {
                None
            } else {
                imipd.milter_port
            },
            lmtp_port,
            virtual_domains: &["example.org", "remote.test"],
            smtp_port: Some(smtp_port),
            extra_main_cf: &extra,
        },
    );
    World {
        _sink: sink,
        key_remote,
        _tmp: tmp,
        _dns: dns,
        key,
        imipd,
        postfix,
        mail,
    }
}

fn mailbox(w: &World, addr: &str) -> std::path::PathBuf {
    let (local, domain) = addr.split_once('@').expect("addr");
    w.mail.join(domain).join(local)
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().take_while(|l| !l.is_empty()).find(|l| {
        l.to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
    })
}

/// RFC 6047 with RFC 5546 3.2.2, milter and LMTP together: a signed REQUEST to two local
/// recipients lands in both mailboxes and both calendars.
#[test]
fn request_to_two_local_recipients_milter_and_lmtp() {
    if !have("request_to_two_local_recipients", TOOLS) {
        return;
    }
    let w = world(Mode::Both, "", &[]);
    let raw = message(
        "alice@example.com",
        &["bob@example.org", "dave@example.org"],
        "REQUEST",
        "two@example.com",
        &request("two@example.com", &["bob@example.org", "dave@example.org"]),
    );
    let (out, queued) = w.postfix.send(
        "alice@example.com",
        &["bob@example.org", "dave@example.org"],
        &w.key.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    for who in ["bob@example.org", "dave@example.org"] {
        let msgs = wait_maildir(&mailbox(&w, who), 1, Duration::from_secs(30));
        assert_eq!(
            msgs.len(),
            1,
            "{who}: {}\n{}",
            w.postfix.maillog(),
            w.imipd.log()
        );
        let res = header(&msgs[0], "X-Imipd-Result").unwrap_or("");
        assert!(
            res.contains("applied") || res.contains("already processed"),
            "{}",
            msgs[0]
        );
        assert!(
            header(&msgs[0], "Authentication-Results").is_some_and(|h| h.contains("dkim=pass")),
            "{}",
            msgs[0]
        );
        assert!(w.imipd.export(who).contains("UID:two@example.com"), "{who}");
    }
    // The milter asks Postfix for the macros it reads (the queue id among them) and gets them.
    let log = w.imipd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("milter: queue_id=") && !l.contains("milter: queue_id=-")),
        "{log}"
    );
}

/// RFC 5546 3.2.3 through LMTP: a signed REPLY updates the organizer's copy.
#[test]
fn reply_updates_organizers_copy_over_lmtp() {
    if !have("reply_updates_organizers_copy", TOOLS) {
        return;
    }
    let w = world(Mode::Lmtp, "", &[]);
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:org@example.org\r\n\
DTSTAMP:20260101T000000Z\r\nDTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\n\
ORGANIZER:mailto:bob@example.org\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:alice@example.com\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    w.imipd.import("bob@example.org", ics);
    let reply =
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n\
UID:org@example.org\r\nDTSTAMP:20260102T000000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let raw = message(
        "alice@example.com",
        &["bob@example.org"],
        "REPLY",
        "reply@example.com",
        reply,
    );
    let (out, queued) = w.postfix.send(
        "alice@example.com",
        &["bob@example.org"],
        &w.key.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "{}", w.postfix.maillog());
    let exported = w.imipd.export("bob@example.org");
    assert!(
        exported.contains("PARTSTAT=ACCEPTED"),
        "{exported}\n{}",
        w.imipd.log()
    );
}

/// RFC 5545 3.4 / robustness: a malformed calendar is delivered untouched and the header says why.
#[test]
fn malformed_calendar_is_delivered_with_reason() {
    if !have("malformed_calendar_is_delivered", TOOLS) {
        return;
    }
    let w = world(Mode::Lmtp, "", &[]);
    let broken = "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:broken@example.com\r\nBEGIN:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let raw = message(
        "alice@example.com",
        &["bob@example.org"],
        "REQUEST",
        "broken@example.com",
        broken,
    );
    let (out, queued) = w.postfix.send(
        "alice@example.com",
        &["bob@example.org"],
        &w.key.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "{}", w.postfix.maillog());
    let res = header(&msgs[0], "X-Imipd-Result").unwrap_or("");
    assert!(
        res.contains("rejected") && res.contains("malformed"),
        "{}",
        msgs[0]
    );
    assert!(msgs[0].contains("BEGIN:VALARM"), "body untouched");
    assert!(!w.imipd.export("bob@example.org").contains("VEVENT"));
}

/// RFC 5546 6.1.1: an unsigned REQUEST claiming a remote organizer is delivered but not applied.
#[test]
fn forged_sender_is_delivered_not_applied() {
    if !have("forged_sender_is_delivered_not_applied", TOOLS) {
        return;
    }
    let w = world(Mode::Both, "", &[]);
    let raw = message(
        "alice@example.com",
        &["bob@example.org"],
        "REQUEST",
        "forged@example.com",
        &request("forged@example.com", &["bob@example.org"]),
    );
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["bob@example.org"], &raw);
    assert!(queued, "{out}");
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "{}", w.postfix.maillog());
    let res = header(&msgs[0], "X-Imipd-Result").unwrap_or("");
    assert!(
        res.contains("rejected") && res.contains("must come from the organizer"),
        "{}",
        msgs[0]
    );
    assert!(!w.imipd.export("bob@example.org").contains("VEVENT"));
}

/// Site policy `on_forged`, changed with SIGHUP: first accepted and annotated, after the reload
/// refused at SMTP time by the milter.
#[test]
fn forged_sender_refused_after_reload_to_reject() {
    if !have("forged_sender_refused_after_reload", TOOLS) {
        return;
    }
    let w = world(Mode::Milter, "on_forged = \"accept\"\n", &[]);
    let raw = message(
        "alice@example.com",
        &["bob@example.org"],
        "REQUEST",
        "refused@example.com",
        &request("refused@example.com", &["bob@example.org"]),
    );
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["bob@example.org"], &raw);
    assert!(queued, "{out}");

    let cfg = std::fs::read_to_string(&w.imipd.config).expect("config");
    std::fs::write(
        &w.imipd.config,
        cfg.replace("on_forged = \"accept\"", "on_forged = \"reject\""),
    )
    .expect("config");
    let _ = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(w.imipd.pid().to_string())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !w.imipd.log().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            w.imipd.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["bob@example.org"], &raw);
    assert!(!queued, "{out}");
    assert!(out.contains("550 5.7.1"), "{out}");
    assert!(!w.imipd.export("bob@example.org").contains("VEVENT"));
}

/// RFC 2033 4.2 with a failing store: LMTP answers 451, Postfix retries, and the REQUEST is
/// applied exactly once.
#[test]
fn store_unavailable_tempfails_then_retry_applies_once() {
    if !mta::fault_injection("store_unavailable_tempfails")
        || !have("store_unavailable_tempfails", TOOLS)
    {
        return;
    }
    let w = world(Mode::Lmtp, "", &[("IMIPD_TEST_STORE_FAILURES", "1")]);
    let raw = message(
        "alice@example.com",
        &["bob@example.org"],
        "REQUEST",
        "retry@example.com",
        &request("retry@example.com", &["bob@example.org"]),
    );
    let (out, queued) = w.postfix.send(
        "alice@example.com",
        &["bob@example.org"],
        &w.key.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    assert!(
        w.postfix
            .wait_log("status=deferred", 1, Duration::from_secs(30)),
        "{}\n{}",
        w.postfix.maillog(),
        w.imipd.log()
    );
    assert!(
        w.postfix
            .wait_log("status=sent", 1, Duration::from_secs(60)),
        "{}",
        w.postfix.maillog()
    );
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert!(
        header(&msgs[0], "X-Imipd-Result")
            .unwrap_or("")
            .contains("applied"),
        "{}",
        msgs[0]
    );
    let log = w.imipd.log();
    assert_eq!(
        log.matches("uid=retry@example.com method=REQUEST outcome=applied")
            .count(),
        1,
        "{log}"
    );
    assert!(w
        .imipd
        .export("bob@example.org")
        .contains("UID:retry@example.com"));
}

/// RFC 5546 2.1.5 and the processed-message log: the same message twice is applied once.
#[test]
fn same_message_twice_is_applied_once() {
    if !have("same_message_twice", TOOLS) {
        return;
    }
    let w = world(Mode::Lmtp, "", &[]);
    let raw = w.key.sign(
        &message(
            "alice@example.com",
            &["bob@example.org"],
            "REQUEST",
            "twice@example.com",
            &request("twice@example.com", &["bob@example.org"]),
        ),
        &[],
    );
    for _ in 0..2 {
        let (out, queued) = w
            .postfix
            .send("alice@example.com", &["bob@example.org"], &raw);
        assert!(queued, "{out}");
    }
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 2, Duration::from_secs(30));
    assert_eq!(
        msgs.len(),
        2,
        "both copies are delivered: {}",
        w.postfix.maillog()
    );
    let log = w.imipd.log();
    assert_eq!(
        log.matches("uid=twice@example.com method=REQUEST outcome=applied")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(
            "uid=twice@example.com method=REQUEST outcome=ignored reason=message already processed"
        )
        .count(),
        1,
        "{log}"
    );
}

/// Only local domains have calendars, and imipd's LMTP delivers only for them: a message for
/// another domain is refused at RCPT (Postfix bounces it), never written under the Maildir
/// template, and no calendar is touched.
#[test]
fn message_for_non_local_domain_is_not_touched() {
    if !have("non_local_domain", TOOLS) {
        return;
    }
    let w = world_routed(Mode::Lmtp, "", &[], false);
    let raw = w.key.sign(
        &message(
            "alice@example.com",
            &["carol@remote.test"],
            "REQUEST",
            "remote@example.com",
            &request("remote@example.com", &["carol@remote.test"]),
        ),
        &[],
    );
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["carol@remote.test"], &raw);
    assert!(queued, "{out}");
    assert!(
        w.postfix
            .wait_log("Recipient is not local here", 1, Duration::from_secs(30)),
        "{}",
        w.postfix.maillog()
    );
    assert!(
        w.postfix.maillog().contains("status=bounced"),
        "{}",
        w.postfix.maillog()
    );
    assert!(!w.mail.join("remote.test").exists());
    assert!(!w.imipd.export("carol@remote.test").contains("VEVENT"));
    assert!(!w.imipd.log().contains("rcpt=carol@remote.test uid="));
}

/// A downstream LMTP server (here a second imipd) receives what the first one hands on.
#[test]
fn lmtp_hands_on_to_downstream_lmtp() {
    if !have("lmtp_downstream", &["swaks"]) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let mail = tmp.path().join("mail");
    let down = Imipd::start(
        &tmp.path().join("down"),
        &format!("local_domains = [\"example.org\"]\n[milter]\nenabled = false\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%d/%u\"\n", mail.display()),
        &[],
    );
    let up = Imipd::start(
        &tmp.path().join("up"),
        &format!("local_domains = [\"example.org\"]\n[milter]\nenabled = false\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"lmtp:inet:127.0.0.1:{}\"\n", down.lmtp_port.expect("port")),
        &[],
    );
    let file = tmp.path().join("m.eml");
    std::fs::write(
        &file,
        message(
            "alice@example.com",
            &["bob@example.org"],
            "REQUEST",
            "down@example.com",
            &request("down@example.com", &["bob@example.org"]),
        ),
    )
    .expect("msg");
    let out = std::process::Command::new("swaks")
        .args([
            "--protocol",
            "LMTP",
            "--server",
            &format!("127.0.0.1:{}", up.lmtp_port.expect("port")),
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.org",
            "--data",
        ])
        .arg(&file)
        .output()
        .expect("swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("250 2.0.0 <bob@example.org> delivered"),
        "{text}"
    );
    let msgs = wait_maildir(
        &mail.join("example.org").join("bob"),
        1,
        Duration::from_secs(10),
    );
    assert_eq!(msgs.len(), 1);
    assert!(header(&msgs[0], "X-Imipd-Result").is_some(), "{}", msgs[0]);
}

/// RFC 5546 3.2.6 with RFC 6047: a REFRESH is answered with the current REQUEST, committed
/// with the decision as an effect, which the effects runner sends over SMTP to the local MTA (here: Postfix, whose
/// virtual domain delivers it to the attendee's mailbox).
#[test]
fn refresh_answer_leaves_over_smtp_through_postfix() {
    if !have("refresh_answer_leaves_over_smtp", TOOLS) {
        return;
    }
    let w = world(Mode::Lmtp, "", &[]);
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:refresh@example.org\r\n\
DTSTAMP:20260101T000000Z\r\nDTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nSUMMARY:Review\r\n\
ORGANIZER:mailto:bob@example.org\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:dave@remote.test\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    w.imipd.import("bob@example.org", ics);
    let refresh =
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REFRESH\r\nBEGIN:VEVENT\r\n\
UID:refresh@example.org\r\nDTSTAMP:20260102T000000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE:mailto:dave@remote.test\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let raw = message(
        "dave@remote.test",
        &["bob@example.org"],
        "REFRESH",
        "refresh-q@example.com",
        refresh,
    );
    let (out, queued) = w.postfix.send(
        "dave@remote.test",
        &["bob@example.org"],
        &w.key_remote.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    // imipd's answer goes over SMTP to Postfix and from there into the attendee's mailbox.
    let msgs = wait_maildir(&mailbox(&w, "dave@remote.test"), 1, Duration::from_secs(60));
    assert_eq!(msgs.len(), 1, "{}\n{}", w.postfix.maillog(), w.imipd.log());
    assert!(
        (msgs[0].contains("method=REQUEST") || msgs[0].contains("method=\"REQUEST\""))
            && msgs[0].contains("UID:refresh@example.org"),
        "{}",
        msgs[0]
    );
    assert!(
        header(&msgs[0], "In-Reply-To").is_some_and(|h| h.contains("refresh-q@example.com")),
        "{}",
        msgs[0]
    );
    assert!(
        w.imipd.log().lines().any(|l| l
            .contains("effects: imip user=bob@example.org uid=refresh@example.org")
            && l.contains("delivered: bob@example.org -> dave@remote.test sent via smtp://")),
        "{}",
        w.imipd.log()
    );
}

/// The milter's fast path under a real Postfix: ordinary mail (text/plain, no calendar) is
/// accepted at end of headers and delivered without any header of imipd's milter, while a
/// calendar message in the same run is still examined and stamped.
#[test]
fn ordinary_mail_passes_the_milter_unmodified() {
    if !have("ordinary_mail_passes_the_milter_unmodified", TOOLS) {
        return;
    }
    let w = world(Mode::Milter, "[log]\nlevel = \"debug\"\n", &[]);
    let plain = b"From: <alice@example.com>\r\nTo: <bob@example.org>\r\nSubject: lunch\r\n\
Message-ID: <plain-1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Shall we have lunch?\r\n";
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["bob@example.org"], plain);
    assert!(queued, "{out}");
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 1, Duration::from_secs(30));
    assert_eq!(msgs.len(), 1, "{}", w.postfix.maillog());
    let m = &msgs[0];
    assert!(m.contains("Shall we have lunch?"), "{m}");
    assert!(header(m, "X-Imipd-Result").is_none(), "{m}");
    assert!(
        !m.lines()
            .take_while(|l| !l.is_empty())
            .any(|l| l.starts_with("Authentication-Results: mx.example.org")),
        "{m}"
    );
    let raw = w.key.sign(
        &message(
            "alice@example.com",
            &["bob@example.org"],
            "REQUEST",
            "fast-cal@example.com",
            &request("fast-cal@example.com", &["bob@example.org"]),
        ),
        &[],
    );
    let (out, queued) = w
        .postfix
        .send("alice@example.com", &["bob@example.org"], &raw);
    assert!(queued, "{out}");
    let msgs = wait_maildir(&mailbox(&w, "bob@example.org"), 2, Duration::from_secs(30));
    assert_eq!(msgs.len(), 2, "{}", w.postfix.maillog());
    // The milter's debug log names every message it examined to the end: the calendar one,
    // not the ordinary one.
    assert!(
        msgs.iter()
            .any(|m| m.matches("X-Imipd-Result").count() == 2),
        "{msgs:?}"
    );
    assert!(
        !w.imipd.log().contains("plain-1@example.com"),
        "{}",
        w.imipd.log()
    );
    assert!(
        w.imipd.log().contains("msgid=fast-cal@example.com")
            || w.imipd.log().contains("msgid=<fast-cal@example.com>"),
        "{}",
        w.imipd.log()
    );
    assert!(
        w.imipd.log().contains("uid=fast-cal@example.com"),
        "{}",
        w.imipd.log()
    );
}

/// The milter decides a message only for its envelope's local recipients: a header To naming
/// a local user who is not an envelope recipient (a Bcc-style copy sent elsewhere) changes
/// nothing in that user's calendar.
#[test]
fn milter_decides_for_envelope_recipients_only() {
    if !have("milter_envelope_only", TOOLS) {
        return;
    }
    let w = world(Mode::Milter, "", &[]);
    let raw = message(
        "alice@example.com",
        &["bob@example.org", "carol@remote.test"],
        "REQUEST",
        "envelope@example.com",
        &request(
            "envelope@example.com",
            &["bob@example.org", "carol@remote.test"],
        ),
    );
    let (out, queued) = w.postfix.send(
        "alice@example.com",
        &["carol@remote.test"],
        &w.key.sign(&raw, &[]),
    );
    assert!(queued, "{out}");
    let msgs = wait_maildir(
        &mailbox(&w, "carol@remote.test"),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(msgs.len(), 1, "{}\n{}", w.postfix.maillog(), w.imipd.log());
    assert!(
        header(&msgs[0], "Authentication-Results").is_some_and(|h| h.contains("dkim=pass")),
        "the milter saw it: {}",
        msgs[0]
    );
    assert!(
        !w.imipd
            .export("bob@example.org")
            .contains("envelope@example.com"),
        "bob is only named in To: {}",
        w.imipd.log()
    );
    assert!(
        !w.imipd.log().contains("rcpt=bob@example.org"),
        "{}",
        w.imipd.log()
    );
}

/// An envelope recipient is a mailbox: RCPT `<%62ob@example.org>` is delivered to that
/// mailbox as written and decided for that calendar user, never percent-decoded into bob.
#[test]
fn lmtp_rcpt_with_percent_escape_is_not_another_user() {
    if !have("lmtp_rcpt_percent", TOOLS) {
        return;
    }
    let w = world_routed(Mode::Lmtp, "", &[], false);
    let raw = w.key.sign(
        &message(
            "alice@example.com",
            &["bob@example.org"],
            "REQUEST",
            "percent@example.com",
            &request("percent@example.com", &["bob@example.org"]),
        ),
        &[],
    );
    let port = w.imipd.lmtp_port.expect("lmtp port");
    let replies = mta::lmtp_deliver(port, "alice@example.com", "%62ob@example.org", &raw);
    assert!(
        replies.last().is_some_and(|r| r.starts_with("250")),
        "{replies:?}\n{}",
        w.imipd.log()
    );
    assert_eq!(
        wait_maildir(
            &mailbox(&w, "%62ob@example.org"),
            1,
            Duration::from_secs(10)
        )
        .len(),
        1,
        "delivered to the mailbox as written"
    );
    assert!(
        !w.imipd
            .export("bob@example.org")
            .contains("percent@example.com"),
        "{}",
        w.imipd.log()
    );
    // The same message to bob himself is applied: the refusal above is the mailbox's, not
    // the message's.
    let replies = mta::lmtp_deliver(port, "alice@example.com", "bob@example.org", &raw);
    assert!(
        replies.last().is_some_and(|r| r.starts_with("250")),
        "{replies:?}"
    );
    assert!(
        w.imipd
            .export("bob@example.org")
            .contains("percent@example.com"),
        "{}",
        w.imipd.log()
    );
}

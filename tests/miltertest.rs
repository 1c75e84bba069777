//! The milter against the reference client: `miltertest` (from OpenDKIM) drives a full
//! transaction with libmilter's own protocol code and checks the end-of-message actions.
//!
//! Needed on the machine: miltertest.

mod mta;

use mta::{have, Imipd};
use std::process::Command;
use tempfile::TempDir;

fn script(port: u16, body: &str, expect_reply: &str) -> String {
    format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.com", "192.0.2.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "alice@example.com") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@example.org>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@example.com>") ~= nil then error("header") end
if mt.header(conn, "To", "bob@example.org") ~= nil then error("header") end
if mt.header(conn, "Authentication-Results", "mx.example.org; dkim=pass header.d=example.com") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "{body}") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= {expect_reply} then error("unexpected reply") end
if not mt.eom_check(conn, MT_HDRINSERT, "Authentication-Results") then error("no Authentication-Results inserted") end
if not mt.eom_check(conn, MT_HDRADD, "X-Imipd-Result") then error("no X-Imipd-Result added") end
if not mt.eom_check(conn, MT_HDRCHANGE, "Authentication-Results") then error("forged Authentication-Results not removed") end
mt.disconnect(conn)
"#
    )
}

const BODY: &str = "BEGIN:VCALENDAR\\r\\nMETHOD:REQUEST\\r\\nBEGIN:VEVENT\\r\\nUID:mt-1\\r\\nDTSTAMP:20261101T000000Z\\r\\nDTSTART:20261201T100000Z\\r\\nORGANIZER:mailto:alice@example.com\\r\\nATTENDEE:mailto:bob@example.org\\r\\nEND:VEVENT\\r\\nEND:VCALENDAR\\r\\n";

fn run_script(lua: &str, dir: &std::path::Path) -> (bool, String) {
    let path = dir.join("t.lua");
    std::fs::write(&path, lua).expect("script");
    let out = Command::new("miltertest")
        .arg("-v")
        .arg("-s")
        .arg(&path)
        .output()
        .expect("miltertest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Sendmail milter protocol v6: a calendar message is accepted with our A-R header inserted on
/// top, the verdict header added, and an A-R header claiming our authserv-id removed (RFC 8601 5).
#[test]
fn miltertest_accepts_and_stamps_headers() {
    if !have("miltertest_accepts_and_stamps_headers", &["miltertest"]) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n",
        &[],
    );
    let (ok, out) = run_script(
        &script(d.milter_port.expect("port"), BODY, "SMFIR_ACCEPT"),
        tmp.path(),
    );
    assert!(ok, "{out}\n{}", d.log());
    assert!(
        d.log().contains("uid=mt-1 method=REQUEST outcome=rejected"),
        "{}",
        d.log()
    );
}

/// With `on_forged = "reject"` the unproven REQUEST is refused with a 5xx reply code.
#[test]
fn miltertest_rejects_forged_calendar_by_policy() {
    if !have(
        "miltertest_rejects_forged_calendar_by_policy",
        &["miltertest"],
    ) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n[milter]\nlisten = \"inet:127.0.0.1:0\"\non_forged = \"reject\"\n[lmtp]\nenabled = false\n",
        &[],
    );
    let (ok, out) = run_script(
        &script(d.milter_port.expect("port"), BODY, "SMFIR_REPLYCODE"),
        tmp.path(),
    );
    assert!(ok, "{out}\n{}", d.log());
}

/// Outgoing iTIP on authenticated submission (RFC 6638 3.2.9 SCHEDULE-STATUS): the local
/// organizer's own copy is recorded so that the replies that come back can be matched.
#[test]
fn authenticated_submission_records_organizers_copy() {
    if !have(
        "authenticated_submission_records_organizers_copy",
        &["miltertest"],
    ) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n[policy]\ntrust_authenticated_submission = true\n",
        &[],
    );
    let port = d.milter_port.expect("port");
    let body = "BEGIN:VCALENDAR\\r\\nMETHOD:REQUEST\\r\\nBEGIN:VEVENT\\r\\nUID:sub-1\\r\\nSEQUENCE:0\\r\\nDTSTAMP:20261101T000000Z\\r\\nDTSTART:20261201T100000Z\\r\\nDTEND:20261201T110000Z\\r\\nORGANIZER:mailto:alice@example.org\\r\\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@remote.test\\r\\nEND:VEVENT\\r\\nEND:VCALENDAR\\r\\n";
    let lua = format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.org", "192.0.2.7") ~= nil then error("conninfo") end
mt.macro(conn, SMFIC_MAIL, "{{auth_authen}}", "alice")
if mt.mailfrom(conn, "alice@example.org") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<carol@remote.test>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "alice@example.org") ~= nil then error("header") end
if mt.header(conn, "To", "carol@remote.test") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "{body}") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
mt.disconnect(conn)
"#
    );
    let (ok, out) = run_script(&lua, tmp.path());
    assert!(ok, "{out}\n{}", d.log());
    let exported = d.export("alice@example.org");
    assert!(exported.contains("UID:sub-1"), "{exported}\n{}", d.log());
    assert!(exported.contains("SCHEDULE-STATUS=1.1"), "{exported}");
}

/// The fast path, with libmilter's own client: a message whose top-level Content-Type cannot
/// hold a calendar is accepted at end of headers (SMFIR_ACCEPT there, so the MTA sends no body
/// and no end of message), while a calendar message gets SMFIR_CONTINUE and is processed.
#[test]
fn miltertest_accepts_ordinary_mail_at_end_of_headers() {
    if !have(
        "miltertest_accepts_ordinary_mail_at_end_of_headers",
        &["miltertest"],
    ) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n",
        &[],
    );
    let port = d.milter_port.expect("port");
    let lua = format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.com", "192.0.2.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "alice@example.com") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@example.org>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@example.com>") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/plain; charset=utf-8") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("ordinary mail not accepted at end of headers") end
mt.disconnect(conn)
conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.com", "192.0.2.1") ~= nil then error("conninfo") end
if mt.mailfrom(conn, "alice@example.com") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<bob@example.org>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "Alice <alice@example.com>") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.getreply(conn) ~= SMFIR_CONTINUE then error("calendar mail not continued at end of headers") end
if mt.bodystring(conn, "{BODY}") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
if not mt.eom_check(conn, MT_HDRADD, "X-Imipd-Result") then error("no X-Imipd-Result added") end
mt.disconnect(conn)
"#
    );
    let (ok, out) = run_script(&lua, tmp.path());
    assert!(ok, "{out}\n{}", d.log());
    assert!(d.log().contains("uid=mt-1"), "{}", d.log());
}

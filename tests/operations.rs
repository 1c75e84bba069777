//! What a mail administrator relies on: config validation that names key and line, the
//! annotated example being valid, admin commands while the daemon runs (control socket),
//! and a clean SIGTERM.

mod mta;

use mta::Imipd;
use std::process::Command;
use tempfile::TempDir;

fn imipd(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .args(args)
        .output()
        .expect("imipd");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The annotated example configuration is itself valid.
#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/imipd.toml.example");
    let (out, err, code) = imipd(&["--config", example, "check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ok\":true"));
}

/// A bad value is reported with file, line and key, and exit code 78 (EX_CONFIG).
#[test]
fn config_error_names_key_and_line() {
    let tmp = TempDir::new().expect("tempdir");
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        "data_dir = \"/tmp/x\"\n[milter]\nlisten = \"inet:127.0.0.1:1\"\non_forged = \"maybe\"\n",
    )
    .expect("write");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("bad.toml:4") && err.contains("milter.on_forged"),
        "{err}"
    );
}

/// An unknown key is an error too (a typo must not silently fall back to a default).
#[test]
fn unknown_key_is_an_error() {
    let tmp = TempDir::new().expect("tempdir");
    let p = tmp.path().join("typo.toml");
    std::fs::write(&p, "[lmtp]\nlisen = \"inet:127.0.0.1:1\"\n").expect("write");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("typo.toml:2") && err.contains("lisen"),
        "{err}"
    );
}

/// DESIGN "Command-line contract": while `imipd run` holds the store, process/import/export/
/// freebusy go through its control socket and behave the same.
#[test]
fn admin_commands_work_while_daemon_runs() {
    let tmp = TempDir::new().expect("tempdir");
    let mut d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\n",
        &[],
    );
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:ops-1\r\nDTSTAMP:20260101T000000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    d.import("bob@example.org", ics);
    let msg = tmp.path().join("reply.eml");
    std::fs::write(
        &msg,
        "From: alice@example.com\r\nTo: bob@example.org\r\nMessage-ID: <ops@example.com>\r\nSubject: Accepted\r\n\
Content-Type: text/calendar; method=REPLY\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REPLY\r\n\
BEGIN:VEVENT\r\nUID:ops-1\r\nDTSTAMP:20260102T000000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .expect("msg");
    let (out, err, code) = d.cli(&["process", "--trust-sender", msg.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"outcome\":\"applied\""), "{out}{err}");
    let (out, _, code) = d.cli(&["export", "--user", "bob@example.org", "--uid", "ops-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("PARTSTAT=ACCEPTED"), "{out}");
    let (_, err, code) = d.cli(&["export", "--user", "bob@example.org", "--uid", "missing"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    let (out, _, code) = d.cli(&[
        "freebusy",
        "--user",
        "bob@example.org",
        "--from",
        "20260110T000000Z",
        "--to",
        "20260111T000000Z",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("FREEBUSY;FBTYPE=BUSY:20260110T100000Z/20260110T110000Z"),
        "{out}"
    );

    // SIGTERM: clean exit, control socket gone, store usable directly afterwards.
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert!(!tmp.path().join("data/control.sock").exists());
    let (out, err, code) = imipd(&[
        "--data-dir",
        tmp.path().join("data").to_str().expect("path"),
        "export",
        "--user",
        "bob@example.org",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PARTSTAT=ACCEPTED"));
}

//! Sender proof through the whole pipeline: `imipd process` (no --trust-sender) with a config
//! whose DNS is a real dnsmasq on 127.0.0.1, S/MIME trust anchors from a test CA made with
//! openssl, and a PGP keyring made with Sequoia's `sq`. Every forged case proves that the store
//! is unchanged afterwards (RFC 6047 3: iMIP security; RFC 5546 6.1: spoofing).
//!
//! Needed on the machine: dnsmasq-base, openssl, sq, python3 with dkimpy and pynacl.

mod signers;

use signers::{
    keyring, smime_sign, sq_key, sq_sign_detached, tools_present, Ca, DkimKey, Dns, Leaf,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

const DKIM_TOOLS: &[&str] = &["dnsmasq", "dkimpy", "openssl", "python3", "base64"];

fn request(seq: u32) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:proof-1@example.com\r\nSEQUENCE:{seq}\r\nDTSTAMP:2026010{}T090000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nSUMMARY:Planning\r\n\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n",
        seq + 1
    )
}

fn imip(from: &str, method: &str, calendar: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: bob@example.org\r\nSubject: Invitation\r\n\
         Date: Thu, 01 Jan 2026 09:00:00 +0000\r\nMessage-ID: <{}@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/calendar; method={method}; charset=utf-8\r\n\
         \r\n{calendar}",
        calendar.len()
    )
    .into_bytes()
}

struct Fixture {
    dir: TempDir,
    config: PathBuf,
}

impl Fixture {
    fn new(dns: &Dns, extra: &str) -> Fixture {
        let dir = TempDir::new().expect("tempdir");
        let config = dir.path().join("imipd.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nauthserv_id = \"mx.example.org\"\nlocal_domains = [\"example.org\"]\n\
                 [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 3\n{extra}",
                dir.path().join("data").display(),
                dns.addr
            ),
        )
        .expect("config");
        Fixture { dir, config }
    }

    fn imipd(&self, args: &[&str], stdin: Option<&[u8]>) -> (String, String, i32) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imipd"));
        cmd.arg("--config").arg(&self.config).args(args);
        let path = self.dir.path().join(format!("in-{}.eml", rand_suffix()));
        if let Some(data) = stdin {
            std::fs::write(&path, data).expect("write input");
            cmd.arg(&path);
        }
        let out = cmd.output().expect("run imipd");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    fn process(&self, raw: &[u8]) -> String {
        let (out, err, code) = self.imipd(&["process"], Some(raw));
        eprintln!("{err}");
        assert_eq!(code, 0, "process failed: {err}");
        out
    }

    fn export(&self, user: &str) -> String {
        self.imipd(&["export", "--user", user], None).0
    }

    fn import(&self, user: &str, ics: &str) {
        let p = self.dir.path().join("import.ics");
        std::fs::write(&p, ics).expect("write ics");
        let (_, err, code) =
            self.imipd(&["import", "--user", user, p.to_str().expect("path")], None);
        assert_eq!(code, 0, "{err}");
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn outcome(out: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap_or_default();
    v["outcome"].as_str().unwrap_or("").to_string()
}

fn dkim_setup(domain: &str) -> Option<(TempDir, DkimKey, Dns)> {
    if !tools_present("sender_proof_dkim", DKIM_TOOLS) {
        return None;
    }
    let keys = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(keys.path(), "sel", domain);
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    Some((keys, key, dns))
}

/// RFC 6047 3.1 with RFC 6376: a REQUEST signed by the organizer's domain is applied.
#[test]
fn dkim_aligned_request_is_applied() {
    let Some((_k, key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let out = fx.process(&key.sign(&imip("alice@example.com", "REQUEST", &request(0)), &[]));
    assert_eq!(outcome(&out), "applied", "{out}");
    assert!(fx
        .export("bob@example.org")
        .contains("UID:proof-1@example.com"));
}

/// RFC 5546 6.1.1: an unsigned REQUEST claiming an organizer is not applied; nothing stored.
#[test]
fn unsigned_request_is_rejected_and_store_unchanged() {
    let Some((_k, _key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let out = fx.process(&imip("alice@example.com", "REQUEST", &request(0)));
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));
}

/// RFC 6376 6.1.3: a body changed after signing fails; the REQUEST is not applied.
#[test]
fn tampered_body_is_rejected_and_store_unchanged() {
    let Some((_k, key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let signed = key.sign(&imip("alice@example.com", "REQUEST", &request(0)), &[]);
    let tampered = String::from_utf8_lossy(&signed).replace("SUMMARY:Planning", "SUMMARY:Phishing");
    let out = fx.process(tampered.as_bytes());
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));
}

/// DMARC-style alignment: a valid signature by another domain proves nothing about From.
#[test]
fn unaligned_signature_is_rejected_and_store_unchanged() {
    let Some((_k, key, dns)) = dkim_setup("evil.test") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let out = fx.process(&key.sign(&imip("alice@example.com", "REQUEST", &request(0)), &[]));
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));
}

/// RFC 5546 3.2.3: a REPLY forged by another domain does not change the organizer's copy.
#[test]
fn reply_forged_by_other_domain_leaves_partstat() {
    let Some((_k, key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:org-1@example.org\r\n\
DTSTAMP:20260101T000000Z\r\nDTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\n\
ORGANIZER:mailto:bob@example.org\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@example.net\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    fx.import("bob@example.org", ics);
    let reply =
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n\
UID:org-1@example.org\r\nDTSTAMP:20260102T000000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=ACCEPTED:mailto:carol@example.net\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    // Signed by example.com, From example.net: no alignment.
    let out = fx.process(&key.sign(&imip("carol@example.net", "REPLY", reply), &[]));
    assert_eq!(outcome(&out), "rejected", "{out}");
    let exported = fx.export("bob@example.org");
    assert!(exported.contains("PARTSTAT=NEEDS-ACTION"), "{exported}");
}

/// RFC 6376 8.2: with l=, a CANCEL appended after the signed length is not trusted, while the
/// signed REQUEST is.
#[test]
fn length_tag_appended_cancel_is_not_applied() {
    let Some((_k, key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let mut signed = key.sign(
        &imip("alice@example.com", "REQUEST", &request(1)),
        &["--length"],
    );
    signed.extend_from_slice(
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nMETHOD:CANCEL\r\nBEGIN:VEVENT\r\n\
UID:proof-1@example.com\r\nSEQUENCE:5\r\nDTSTAMP:20260105T000000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
ATTENDEE:mailto:bob@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    );
    let out = fx.process(&signed);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("\"method\":\"REQUEST\"") && lines[0].contains("\"applied\""),
        "{out}"
    );
    assert!(
        lines[1].contains("\"method\":\"CANCEL\"") && lines[1].contains("\"rejected\""),
        "{out}"
    );
    let exported = fx.export("bob@example.org");
    assert!(!exported.contains("CANCELLED"), "{exported}");
}

/// RFC 6376 3.5 x=: an expired signature proves nothing.
#[test]
fn expired_signature_is_rejected() {
    let Some((_k, key, dns)) = dkim_setup("example.com") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let out = fx.process(&key.sign(
        &imip("alice@example.com", "REQUEST", &request(0)),
        &["--expired"],
    ));
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));
}

fn smime_message(dir: &Path, ca: &Ca, leaf: &Leaf<'_>, from: &str, opaque: bool) -> Vec<u8> {
    let (cert, key) = ca.issue(leaf);
    let entity = format!(
        "Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{}",
        request(0)
    );
    let smime = smime_sign(dir, &cert, &key, entity.as_bytes(), opaque);
    let mut m = format!("From: {from}\r\nTo: bob@example.org\r\nSubject: Invitation\r\nMessage-ID: <s@example.com>\r\n").into_bytes();
    m.extend_from_slice(&smime);
    m
}

/// RFC 8551 with RFC 6047 3.2: an opaque S/MIME REQUEST signed by the organizer is applied.
#[test]
fn smime_opaque_request_is_applied() {
    if !tools_present("sender_proof_smime", &["dnsmasq", "openssl"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let tmp = TempDir::new().expect("tempdir");
    let ca = Ca::new(tmp.path(), "Test-CA");
    let fx = Fixture::new(
        &dns,
        &format!("[smime]\ntrust_anchors = \"{}\"\n", ca.cert.display()),
    );
    let raw = smime_message(
        tmp.path(),
        &ca,
        &Leaf::email("Alice", "alice@example.com"),
        "alice@example.com",
        true,
    );
    let out = fx.process(&raw);
    assert_eq!(outcome(&out), "applied", "{out}");
    assert!(fx
        .export("bob@example.org")
        .contains("UID:proof-1@example.com"));
}

/// RFC 8551 3.1: a certificate for another address does not prove From.
#[test]
fn smime_signer_other_than_from_is_rejected() {
    if !tools_present("sender_proof_smime_other", &["dnsmasq", "openssl"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let tmp = TempDir::new().expect("tempdir");
    let ca = Ca::new(tmp.path(), "Test-CA");
    let fx = Fixture::new(
        &dns,
        &format!("[smime]\ntrust_anchors = \"{}\"\n", ca.cert.display()),
    );
    let raw = smime_message(
        tmp.path(),
        &ca,
        &Leaf::email("Mallory", "mallory@example.com"),
        "alice@example.com",
        false,
    );
    let out = fx.process(&raw);
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));
}

fn pgp_message(dir: &Path, key: &Path, from: &str, entity: &[u8]) -> Vec<u8> {
    let sig = sq_sign_detached(dir, key, entity);
    let b = "pgp-boundary-1";
    let mut raw = format!(
        "From: {from}\r\nTo: bob@example.org\r\nSubject: Invitation\r\nMessage-ID: <p@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha512; protocol=\"application/pgp-signature\"; boundary=\"{b}\"\r\n\r\n--{b}\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(entity);
    raw.extend_from_slice(
        format!("\r\n--{b}\r\nContent-Type: application/pgp-signature\r\n\r\n").as_bytes(),
    );
    raw.extend_from_slice(&signers::crlf(&sig));
    raw.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    raw
}

/// RFC 3156 5: a PGP/MIME REQUEST by a keyring key bound to the organizer is applied; the same
/// message tampered with is not.
#[test]
fn pgp_valid_applied_and_tampered_rejected() {
    if !tools_present("sender_proof_pgp", &["dnsmasq", "sq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let tmp = TempDir::new().expect("tempdir");
    let (key, cert) = sq_key(tmp.path(), "alice", "Alice <alice@example.com>");
    let ring = keyring(tmp.path(), &[&cert]);
    let entity = format!(
        "Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{}",
        request(0)
    );
    let raw = pgp_message(tmp.path(), &key, "alice@example.com", entity.as_bytes());

    let fx = Fixture::new(&dns, &format!("[pgp]\nkeyring = \"{}\"\n", ring.display()));
    let tampered = String::from_utf8_lossy(&raw).replace("SUMMARY:Planning", "SUMMARY:Phishing");
    let out = fx.process(tampered.as_bytes());
    assert_eq!(outcome(&out), "rejected", "{out}");
    assert!(!fx.export("bob@example.org").contains("VEVENT"));

    let out = fx.process(&raw);
    assert_eq!(outcome(&out), "applied", "{out}");
    assert!(fx.export("bob@example.org").contains("SUMMARY:Planning"));
}

//! Forged calendar changes, each made with an independent tool (dkimpy, OpenDKIM, openssl, sq)
//! or written byte by byte, run through `imipd process` and the LMTP door: nothing forged is
//! applied, the store is unchanged, the mail is delivered, and the log and `X-Imipd-Result`
//! say why. Every class has an honest control from the same tool that is applied.
//!
//! DESIGN "authenticate": a proof covers only what the signer signed; one MIME parse; input
//! that MIME readers could see two ways is unproven.

mod mta;
mod signers;

use signers::{
    keyring, smime_sign, sq_key, sq_sign_detached, tools_present, Ca, DkimKey, Dns, Leaf,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tempfile::TempDir;

const DKIM_TOOLS: &[&str] = &["dnsmasq", "dkimpy", "openssl", "python3", "base64"];
const UID: &str = "forge-1@example.com";

/// A REQUEST from alice@example.com to bob@example.org; `rrule` is added to the event.
fn request(rrule: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:{UID}\r\nSEQUENCE:0\r\nDTSTAMP:20260101T090000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nSUMMARY:Planning  review \r\n{rrule}\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

/// A CANCEL of the same event, as a forger would write it.
fn cancel() -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//forger//EN\r\nMETHOD:CANCEL\r\n\
BEGIN:VEVENT\r\nUID:{UID}\r\nSEQUENCE:9\r\nDTSTAMP:20260105T000000Z\r\n\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.org\r\nSTATUS:CANCELLED\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

fn headers(from: &str) -> String {
    format!(
        "From: Alice <{from}>\r\nTo: bob@example.org\r\nSubject: Invitation\r\n\
         Date: Thu, 01 Jan 2026 09:00:00 +0000\r\nMessage-ID: <{}@example.com>\r\nMIME-Version: 1.0\r\n",
        nanos()
    )
}

fn single(from: &str, calendar: &str) -> Vec<u8> {
    format!(
        "{}Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{calendar}",
        headers(from)
    )
    .into_bytes()
}

fn calendar_entity(calendar: &str) -> String {
    format!("Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{calendar}")
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

struct Fixture {
    dir: TempDir,
    config: PathBuf,
}

struct Processed {
    stdout: String,
    stderr: String,
}

impl Processed {
    fn outcomes(&self) -> Vec<(String, String, String)> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["method"].as_str().unwrap_or("").to_string(),
                    v["outcome"].as_str().unwrap_or("").to_string(),
                    v["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn applied(&self, method: &str) -> bool {
        self.outcomes()
            .iter()
            .any(|(m, o, _)| m == method && o == "applied")
    }
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

    fn imipd(&self, args: &[&str], input: Option<&[u8]>) -> (String, String, i32) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imipd"));
        cmd.arg("--config").arg(&self.config).args(args);
        if let Some(data) = input {
            let path = self.dir.path().join(format!("in-{}.eml", nanos()));
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

    fn process(&self, raw: &[u8]) -> Processed {
        let (stdout, stderr, code) = self.imipd(&["process"], Some(raw));
        assert_eq!(code, 0, "process failed: {stderr}");
        Processed { stdout, stderr }
    }

    fn export(&self) -> String {
        self.imipd(&["export", "--user", "bob@example.org"], None).0
    }

    fn import(&self, ics: &str) {
        let p = self.dir.path().join("import.ics");
        std::fs::write(&p, ics).expect("write ics");
        let (_, err, code) = self.imipd(
            &[
                "import",
                "--user",
                "bob@example.org",
                p.to_str().expect("path"),
            ],
            None,
        );
        assert_eq!(code, 0, "{err}");
    }

    /// The honest REQUEST is stored, not cancelled, with the signed values.
    #[track_caller]
    fn stored_uncancelled(&self) -> String {
        let exported = self.export();
        assert!(exported.contains(UID), "{exported}");
        assert!(!exported.contains("CANCELLED"), "{exported}");
        exported
    }
}

fn dkim_setup(test: &str) -> Option<(TempDir, DkimKey, Dns)> {
    if !tools_present(test, DKIM_TOOLS) {
        return None;
    }
    let keys = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(keys.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    Some((keys, key, dns))
}

// ---------------------------------------------------------------------------------------------
// DKIM

/// A mailbox of the signing domain whose local part is a percent escape of the organizer's
/// (`%61lice` for `alice`): the domain's DKIM signature (dkimpy) proves that mailbox, which
/// calendar addresses must not decode into alice's. Its CANCEL is not applied.
#[test]
fn dkim_percent_escaped_from_does_not_speak_for_the_decoded_address() {
    let Some((_k, key, dns)) = dkim_setup("dkim_percent_from") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let p = fx.process(&key.sign(&single("alice@example.com", &request("")), &[]));
    assert!(p.applied("REQUEST"), "control: {}", p.stdout);
    let forged = key.sign(
        format!(
            "{}Content-Type: text/calendar; method=CANCEL; charset=utf-8\r\n\r\n{}",
            headers("%61lice@example.com"),
            cancel()
        )
        .as_bytes(),
        &[],
    );
    assert!(key.dkimpy_verifies(&forged), "dkimpy itself accepts it");
    let p = fx.process(&forged);
    assert!(p.stderr.contains("dkim=pass"), "{}", p.stderr);
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    fx.stored_uncancelled();
}

/// A broken Date zone as the last header: mail-parser then reads on past the empty line that
/// ends the header section for everyone else (DKIM verifiers and mail readers included) and
/// takes the body's first line for a header: here `Content-Transfer-Encoding: base64`, so it
/// would decode a REQUEST that every other reader sees as base64 text. Nothing is applied,
/// whichever proof comes with it:
/// - signed by dkimpy with every framing header in `h=`: imipd's DKIM check finds the header
///   section ending where the readers disagree (`dkim=permerror`);
/// - vouched for by a trusted upstream verifier's `dkim=pass`: the message is ambiguous, so
///   that proof covers nothing either.
#[test]
fn header_section_read_past_its_empty_line_proves_nothing() {
    let Some((_k, key, dns)) = dkim_setup("header_past_empty_line") else {
        return;
    };
    let fx = Fixture::new(
        &dns,
        "[policy]\ntrusted_authserv_ids = [\"mx.upstream.example\"]\n",
    );
    let h = "from,to,subject,message-id,date,content-type,content-transfer-encoding";
    let head = || {
        format!(
            "From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Invitation\r\n\
             Message-ID: <{}@example.com>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n",
            nanos()
        )
    };
    let b64 = {
        let out = Command::new("base64")
            .arg("-w")
            .arg("76")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(request("").as_bytes())?;
                c.wait_with_output()
            })
            .expect("base64");
        String::from_utf8(out.stdout)
            .expect("ascii")
            .replace('\n', "\r\n")
    };
    let two_ways = |head: String| {
        format!(
            "{head}Date: Tue, 01 Nov 2011 08:03:02 G\r\n\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{b64}"
        )
    };
    let signed = key.sign(two_ways(head()).as_bytes(), &["--headers", h]);
    assert!(key.dkimpy_verifies(&signed), "dkimpy itself accepts it");
    let p = fx.process(&signed);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(p.stderr.contains("dkim=permerror"), "{}", p.stderr);
    let upstream =
        "Authentication-Results: mx.upstream.example; dkim=pass header.d=example.com\r\n";
    let p = fx.process(format!("{upstream}{}", two_ways(head())).as_bytes());
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(
        p.stderr
            .contains("a header section read past its first empty line"),
        "{}",
        p.stderr
    );
    assert!(!fx.export().contains(UID));
    // Control: the same REQUEST with a well-formed Date, same upstream verdict.
    let honest = format!(
        "{upstream}{}Date: Thu, 01 Jan 2026 09:00:00 +0000\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{b64}",
        head()
    );
    let p = fx.process(honest.as_bytes());
    assert!(p.applied("REQUEST"), "{}", p.stdout);
}

/// RFC 6376 §6.1.1: a signature that does not sign From proves nothing, even though it
/// verifies (dkimpy signs To, Subject and Content-Type only).
#[test]
fn dkim_signature_without_from_in_h_is_ignored() {
    let Some((_k, key, dns)) = dkim_setup("dkim_without_from") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let raw = single("alice@example.com", &request(""));
    let forged = key.sign(&raw, &["--headers", "to,subject,content-type"]);
    assert!(key.dkimpy_verifies(&forged), "dkimpy itself accepts it");
    let p = fx.process(&forged);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(p.stderr.contains("dkim=policy"), "{}", p.stderr);
    assert!(!fx.export().contains(UID));
    // Control: the same message signed with From applies.
    let p = fx.process(&key.sign(&raw, &[]));
    assert!(p.applied("REQUEST"), "{}", p.stdout);
}

/// A bare CR inside a signed calendar is skipped by the body hash but would be a line break to
/// a MIME reader (COUNT=10 read as COUNT=1): the message proves nothing, nothing is stored.
#[test]
fn dkim_bare_cr_inside_signed_calendar_is_unproven() {
    let Some((_k, key, dns)) = dkim_setup("dkim_bare_cr") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let signed = key.sign(
        &single(
            "alice@example.com",
            &request("RRULE:FREQ=DAILY;COUNT=10\r\n"),
        ),
        &["--canon", "relaxed"],
    );
    let text = String::from_utf8_lossy(&signed);
    let forged = text.replacen("COUNT=10", "COUNT=1\r0", 1).into_bytes();
    let p = fx.process(&forged);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(
        p.stderr.contains("ambiguous") && p.stderr.contains("bare CR"),
        "{}",
        p.stderr
    );
    assert!(!fx.export().contains(UID));
    let p = fx.process(&signed);
    assert!(p.applied("REQUEST"), "{}", p.stdout);
    assert!(fx.stored_uncancelled().contains("COUNT=10"));
}

/// `l=` as dkimpy computes it (relaxed, over the canonicalized body, with white space the
/// canonicalization removes), then a list footer with a forged CANCEL appended: dkimpy still
/// says pass; imipd applies the signed REQUEST and never the CANCEL.
#[test]
fn dkim_length_by_dkimpy_passes_and_footer_cancel_is_not_applied() {
    let Some((_k, key, dns)) = dkim_setup("dkim_length_dkimpy") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let signed = key.sign(
        &single("alice@example.com", &request("")),
        &["--length", "--canon", "relaxed"],
    );
    let mut footed = signed.clone();
    footed.extend_from_slice(format!("-- \r\nlist footer\r\n{}", cancel()).as_bytes());
    assert!(
        key.dkimpy_verifies(&footed),
        "dkimpy accepts l= with a footer"
    );
    let p = fx.process(&footed);
    assert!(p.stderr.contains("dkim=pass"), "{}", p.stderr);
    assert!(p.applied("REQUEST"), "{}", p.stdout);
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    fx.stored_uncancelled();
}

/// The same with a signature made by OpenDKIM's signer (`BodyLengthDB`): OpenDKIM's verifier
/// says pass after the footer, and so does imipd; the footer's CANCEL is never applied.
#[test]
fn dkim_length_by_opendkim_passes_and_footer_cancel_is_not_applied() {
    if !tools_present("dkim_length_opendkim", &["opendkim"]) {
        return;
    }
    let Some((_keys, key, dns)) = dkim_setup("dkim_length_opendkim") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let signed = key.opendkim_sign(&single("alice@example.com", &request("")), true);
    assert!(String::from_utf8_lossy(&signed).contains("l="));
    let mut footed = signed.clone();
    footed.extend_from_slice(format!("-- \r\nlist footer\r\n{}", cancel()).as_bytes());
    let odkim = key.opendkim_verify(&footed);
    assert!(odkim.contains("dkim=pass"), "{odkim}");
    let p = fx.process(&footed);
    assert!(p.stderr.contains("dkim=pass"), "{}", p.stderr);
    assert!(p.applied("REQUEST"), "{}", p.stdout);
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    fx.stored_uncancelled();
}

/// A signed REQUEST, then a second MIME part with a CANCEL after the signed `l=` prefix, in a
/// multipart message: the CANCEL part lies outside what the signature covers.
#[test]
fn dkim_length_part_after_signed_prefix_is_unproven() {
    let Some((_k, key, dns)) = dkim_setup("dkim_length_multipart") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    fx.import(&request("").replace("METHOD:REQUEST\r\n", ""));
    let body = format!(
        "--b1\r\nContent-Type: text/plain\r\n\r\nHello\r\n--b1\r\n{}\r\n",
        calendar_entity(&request("").replace("SUMMARY:Planning  review ", "SUMMARY:Signed"))
    );
    let raw = format!(
        "{}Content-Type: multipart/mixed; boundary=b1\r\n\r\n{body}",
        headers("alice@example.com")
    );
    let signed = key.sign(raw.as_bytes(), &["--length"]);
    let mut forged = signed.clone();
    forged.extend_from_slice(
        format!(
            "--b1\r\nContent-Type: text/calendar; method=CANCEL\r\n\r\n{}--b1--\r\n",
            cancel()
        )
        .as_bytes(),
    );
    let p = fx.process(&forged);
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    assert!(
        p.stderr
            .contains("outside what the sender's signature covers"),
        "{}",
        p.stderr
    );
    fx.stored_uncancelled();
}

// ---------------------------------------------------------------------------------------------
// S/MIME and PGP/MIME

/// What an S/MIME forgery test works with: a test CA, a signing certificate for alice, and a
/// fixture that trusts the CA.
struct Smime {
    tmp: TempDir,
    ca: Ca,
    _dns: Dns,
    fx: Fixture,
    cert: PathBuf,
    key: PathBuf,
}

impl Smime {
    fn sign(&self, entity: &[u8]) -> Vec<u8> {
        smime_sign(self.tmp.path(), &self.cert, &self.key, entity, false)
    }
}

fn smime_fixture(test: &str) -> Option<Smime> {
    if !tools_present(test, &["dnsmasq", "openssl"]) {
        return None;
    }
    let dns = Dns::start(&[]);
    let tmp = TempDir::new().expect("tempdir");
    let ca = Ca::new(tmp.path(), "Test-CA");
    let (cert, key) = ca.issue(&Leaf::email("Alice", "alice@example.com"));
    let fx = Fixture::new(
        &dns,
        &format!("[smime]\ntrust_anchors = \"{}\"\n", ca.cert.display()),
    );
    Some(Smime {
        tmp,
        ca,
        _dns: dns,
        fx,
        cert,
        key,
    })
}

/// `signed` (a multipart/signed that openssl wrote) with an unsigned CANCEL part added before
/// its closing delimiter.
fn with_cancel_part(signed: &[u8]) -> String {
    let b = boundary_of(signed);
    let close = format!("--{b}--");
    String::from_utf8_lossy(signed).replacen(
        &close,
        &format!(
            "--{b}\r\nContent-Type: text/calendar; method=CANCEL\r\n\r\n{}\r\n{close}",
            cancel()
        ),
        1,
    )
}

/// The message headers of alice@example.com around `body`.
fn from_alice(body: &[u8]) -> Vec<u8> {
    [headers("alice@example.com").into_bytes(), body.to_vec()].concat()
}

/// The boundary of a multipart/signed that openssl wrote.
fn boundary_of(smime: &[u8]) -> String {
    let text = String::from_utf8_lossy(smime);
    let at = text.find("boundary=\"").expect("boundary") + 10;
    text[at..].split('"').next().expect("boundary").to_string()
}

/// RFC 1847 §2.1: a multipart/signed has two parts; a third, unsigned part with a CANCEL is
/// not covered by the signature.
#[test]
fn smime_unsigned_extra_part_inside_multipart_signed_is_not_applied() {
    let Some(sm) = smime_fixture("smime_extra_part") else {
        return;
    };
    let signed = sm.sign(calendar_entity(&request("")).as_bytes());
    let p = sm.fx.process(&from_alice(&signed));
    assert!(p.applied("REQUEST"), "{}", p.stdout);
    let p = sm
        .fx
        .process(&from_alice(with_cancel_part(&signed).as_bytes()));
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    sm.fx.stored_uncancelled();
}

/// An old signed mail of the user with no calendar at all, replayed inside multipart/mixed
/// with an unsigned CANCEL beside it, or with the CANCEL as a third part of the signed
/// message: the signature covers only the old text.
#[test]
fn smime_replayed_signed_mail_with_added_cancel_is_not_applied() {
    let Some(sm) = smime_fixture("smime_replay") else {
        return;
    };
    sm.fx.import(&request("").replace("METHOD:REQUEST\r\n", ""));
    let old = sm.sign(b"Content-Type: text/plain\r\n\r\nSee you on Monday.\r\n");
    // Control: the old mail's signature is valid (openssl verifies it against the test CA).
    let signed_file = sm.tmp.path().join("old.eml");
    std::fs::write(&signed_file, from_alice(&old)).expect("write");
    signers::run(
        "openssl",
        &[
            "smime",
            "-verify",
            "-CAfile",
            sm.ca.cert.to_str().expect("path"),
            "-in",
            signed_file.to_str().expect("path"),
            "-out",
            "/dev/null",
        ],
        None,
    );
    let beside = format!(
        "Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n{}\r\n--outer\r\n\
         Content-Type: text/calendar; method=CANCEL\r\n\r\n{}--outer--\r\n",
        String::from_utf8_lossy(&old),
        cancel()
    );
    for forged in [beside, with_cancel_part(&old)] {
        let p = sm.fx.process(&from_alice(forged.as_bytes()));
        assert!(!p.applied("CANCEL"), "{}", p.stdout);
        sm.fx.stored_uncancelled();
    }
}

/// A forged part in the multipart/signed preamble behind a boundary that one reader matches
/// mid-line: the structure is ambiguous and proves nothing.
#[test]
fn smime_forged_part_in_preamble_behind_mid_line_boundary_is_not_applied() {
    let Some(sm) = smime_fixture("smime_preamble") else {
        return;
    };
    sm.fx.import(&request("").replace("METHOD:REQUEST\r\n", ""));
    let signed = sm.sign(b"Content-Type: text/plain\r\n\r\nAgenda attached later.\r\n");
    let b = boundary_of(&signed);
    let first = format!("\r\n--{b}\r\n");
    let hidden = format!(
        "\r\nplease ignore x--{b}\r\nContent-Type: text/calendar; method=CANCEL\r\n\r\n{}{first}",
        cancel()
    );
    let forged = String::from_utf8_lossy(&signed).replacen(&first, &hidden, 1);
    let p = sm.fx.process(&from_alice(forged.as_bytes()));
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    assert!(p.stderr.contains("ambiguous"), "{}", p.stderr);
    sm.fx.stored_uncancelled();
}

/// Two top-level Content-Type headers: proof and MIME reader must not read different ones.
#[test]
fn smime_two_top_level_content_types_are_not_applied() {
    let Some(sm) = smime_fixture("smime_two_content_types") else {
        return;
    };
    sm.fx.import(&request("").replace("METHOD:REQUEST\r\n", ""));
    let signed = sm.sign(b"Content-Type: text/plain\r\n\r\nNothing to see.\r\n");
    let b = boundary_of(&signed);
    // A second Content-Type after the signed one: multipart/mixed over the same boundary,
    // under which the CANCEL is an ordinary third part.
    let forged = with_cancel_part(&signed).replacen(
        "\r\n\r\n",
        &format!("\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n"),
        1,
    );
    let p = sm.fx.process(&from_alice(forged.as_bytes()));
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    assert!(p.stderr.contains("ambiguous"), "{}", p.stderr);
    sm.fx.stored_uncancelled();
}

/// PGP/MIME (RFC 3156): the signature covers the first part only; a CANCEL added as a third
/// part is unproven, while the signed REQUEST (control) applies.
#[test]
fn pgp_unsigned_extra_part_is_not_applied() {
    if !tools_present("pgp_extra_part", &["dnsmasq", "sq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let tmp = TempDir::new().expect("tempdir");
    let (key, cert) = sq_key(tmp.path(), "alice", "Alice <alice@example.com>");
    let ring = keyring(tmp.path(), &[&cert]);
    let fx = Fixture::new(&dns, &format!("[pgp]\nkeyring = \"{}\"\n", ring.display()));
    let entity = calendar_entity(&request(""));
    let sig = sq_sign_detached(tmp.path(), &key, entity.as_bytes());
    let b = "pgp-b-1";
    let signed = |extra: &str| -> Vec<u8> {
        let mut raw = format!(
            "{}Content-Type: multipart/signed; micalg=pgp-sha512; protocol=\"application/pgp-signature\"; boundary=\"{b}\"\r\n\r\n--{b}\r\n{entity}\r\n--{b}\r\nContent-Type: application/pgp-signature\r\n\r\n",
            headers("alice@example.com")
        )
        .into_bytes();
        raw.extend_from_slice(&signers::crlf(&sig));
        raw.extend_from_slice(format!("\r\n{extra}--{b}--\r\n").as_bytes());
        raw
    };
    let p = fx.process(&signed(""));
    assert!(p.applied("REQUEST"), "{} {}", p.stdout, p.stderr);
    let extra = format!(
        "--{b}\r\nContent-Type: text/calendar; method=CANCEL\r\n\r\n{}\r\n",
        cancel()
    );
    let p = fx.process(&signed(&extra));
    assert!(!p.applied("CANCEL"), "{}", p.stdout);
    fx.stored_uncancelled();
}

// ---------------------------------------------------------------------------------------------
// Trusted Authentication-Results, bounces, forwards

/// RFC 8601 §5: only the topmost header of a trusted authserv-id is the upstream's own; a
/// "dkim=pass" the sender wrote below it proves nothing.
#[test]
fn only_topmost_trusted_authentication_results_counts() {
    if !tools_present("topmost_ar", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let fx = Fixture::new(
        &dns,
        "[policy]\ntrusted_authserv_ids = [\"mx.upstream.example\"]\n",
    );
    let ar = |result: &str| {
        format!(
            "Authentication-Results: mx.upstream.example; dkim={result} header.d=example.com\r\n"
        )
    };
    let forged = [
        ar("fail").into_bytes(),
        ar("pass").into_bytes(),
        single("alice@example.com", &request("")),
    ]
    .concat();
    let p = fx.process(&forged);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(!fx.export().contains(UID));
    let honest = [
        ar("pass").into_bytes(),
        single("alice@example.com", &request("")),
    ]
    .concat();
    let p = fx.process(&honest);
    assert!(p.applied("REQUEST"), "{}", p.stdout);
}

/// A bounce (multipart/report) nested inside multipart/mixed, and a forwarded message
/// (message/rfc822): calendars in them are never applied, even from a trusted sender.
#[test]
fn calendars_in_nested_bounces_and_forwards_are_never_applied() {
    if !tools_present("nested_bounce", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let fx = Fixture::new(&dns, "");
    let bounce = format!(
        "{}Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=r\r\n\r\n\
         --r\r\nContent-Type: text/plain\r\n\r\nUndeliverable\r\n--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n\
         --r\r\n{}\r\n--r--\r\n--m--\r\n",
        headers("alice@example.com"),
        calendar_entity(&request(""))
    );
    let (out, err, code) = fx.imipd(&["process", "--trust-sender"], Some(bounce.as_bytes()));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("\"applied\""), "{out}");
    assert!(err.contains("delivery report"), "{err}");
    let forward = format!(
        "{}Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nFYI\r\n\
         --m\r\nContent-Type: message/rfc822\r\n\r\n{}{}\r\n--m--\r\n",
        headers("alice@example.com"),
        headers("alice@example.com"),
        calendar_entity(&request(""))
    );
    let (out, err, code) = fx.imipd(&["process", "--trust-sender"], Some(forward.as_bytes()));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("\"applied\""), "{out}");
    assert!(!fx.export().contains(UID));
}

// ---------------------------------------------------------------------------------------------
// Through the LMTP door: delivered, annotated, nothing injected

/// An RFC 2231 `method*=` with encoded CR LF must not inject a header into the delivered
/// message or a line into the log; the unproven REQUEST is delivered, not applied, and the
/// X-Imipd-Result header says why.
#[test]
fn encoded_crlf_in_method_parameter_injects_nothing() {
    let tmp = TempDir::new().expect("tempdir");
    let maildir = tmp.path().join("mail");
    let mut d = mta::Imipd::start(
        tmp.path(),
        &format!(
            "local_domains = [\"example.org\"]\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
             [milter]\nenabled = false\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%u\"\n",
            maildir.display()
        ),
        &[],
    );
    let port = d.lmtp_port.expect("lmtp port");
    let raw = format!(
        "{}Content-Type: text/calendar; method*=utf-8''REQUEST%0D%0AX-Injected%3A%20yes; charset=utf-8\r\n\r\n{}",
        headers("alice@example.com"),
        request("").replace("METHOD:REQUEST\r\n", "")
    );
    let replies = mta::lmtp_deliver(port, "alice@example.com", "bob@example.org", raw.as_bytes());
    assert!(
        replies.last().is_some_and(|r| r.starts_with("250")),
        "{replies:?}"
    );
    let files = mta::wait_maildir(&maildir.join("bob"), 1, Duration::from_secs(10));
    assert_eq!(files.len(), 1, "delivered");
    let delivered = &files[0];
    assert!(
        !delivered.lines().any(|l| l.starts_with("X-Injected")),
        "{delivered}"
    );
    let result = delivered
        .lines()
        .find(|l| l.starts_with("X-Imipd-Result:"))
        .expect("X-Imipd-Result header");
    assert!(result.contains("rejected"), "{result}");
    assert!(!d.export("bob@example.org").contains(UID));
    d.stop();
    let log = d.log();
    assert!(!log.lines().any(|l| l.starts_with("X-Injected")), "{log}");
}

/// A signature whose key is not published, sent again and again to the daemon: the first
/// lookup's "not found" is remembered (one query, dnsmasq's log is the witness), and the
/// remembered answer proves nothing either: no copy is applied, each is delivered with
/// `X-Imipd-Result` saying why, and an unsigned copy From the same domain, checked against
/// the remembered "no DMARC policy", is not applied either. The honest control: the same
/// REQUEST signed with the published key is applied.
#[test]
fn a_key_remembered_as_unpublished_proves_nothing_through_the_daemon() {
    if !tools_present("dkim_negative_cache_daemon", DKIM_TOOLS) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let published = DkimKey::rsa(tmp.path(), "sel", "example.com");
    let gone = DkimKey::rsa(tmp.path(), "gone", "example.com");
    let (dns, queries) =
        Dns::start_logged(tmp.path(), &[(&published.record_name(), &published.record)]);
    let maildir = tmp.path().join("mail");
    let mut d = mta::Imipd::start(
        &tmp.path().join("imipd"),
        &format!(
            "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_secs = 3\n[milter]\nenabled = false\n\
             [lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"maildir:{}/%u\"\n",
            dns.addr,
            maildir.display()
        ),
        &[],
    );
    let port = d.lmtp_port.expect("lmtp port");
    let deliver = |raw: &[u8], n: usize| -> String {
        let replies = mta::lmtp_deliver(port, "alice@example.com", "bob@example.org", raw);
        assert!(
            replies.last().is_some_and(|r| r.starts_with("250")),
            "{replies:?}"
        );
        let files = mta::wait_maildir(&maildir.join("bob"), n, Duration::from_secs(10));
        assert_eq!(files.len(), n, "delivered");
        files
            .iter()
            .flat_map(|f| f.lines())
            .filter(|l| l.starts_with("X-Imipd-Result:"))
            .map(str::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for n in 1..=3 {
        deliver(
            &gone.sign(&single("alice@example.com", &request("")), &[]),
            n,
        );
        assert!(
            !d.export("bob@example.org").contains(UID),
            "copy {n} applied"
        );
    }
    assert_eq!(queries("gone._domainkey.example.com"), 1);
    deliver(&single("alice@example.com", &request("")), 4);
    assert!(
        !d.export("bob@example.org").contains(UID),
        "unsigned copy applied"
    );
    let results = deliver(
        &published.sign(&single("alice@example.com", &request("")), &[]),
        5,
    );
    assert!(d.export("bob@example.org").contains(UID), "{results}");
    assert_eq!(
        results.lines().filter(|l| l.contains(" applied ")).count(),
        1,
        "{results}"
    );
    // The four others say why: nobody was proven.
    assert_eq!(
        results
            .lines()
            .filter(|l| l.contains("rejected") && l.contains("sender proven: nobody"))
            .count(),
        4,
        "{results}"
    );
    d.stop();
}

// ---------------------------------------------------------------------------------------------
// The milter's submission path

/// One authenticated submission through `miltertest` (libmilter's reference client).
fn submit(port: u16, dir: &std::path::Path, login: &str, from: &str, uid: &str) -> String {
    let body = format!(
        "BEGIN:VCALENDAR\\r\\nMETHOD:REQUEST\\r\\nBEGIN:VEVENT\\r\\nUID:{uid}\\r\\nSEQUENCE:0\\r\\nDTSTAMP:20261101T000000Z\\r\\nDTSTART:20261201T100000Z\\r\\nDTEND:20261201T110000Z\\r\\nORGANIZER:mailto:{from}\\r\\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@remote.test\\r\\nEND:VEVENT\\r\\nEND:VCALENDAR\\r\\n"
    );
    let lua = format!(
        r#"conn = mt.connect("inet:{port}@127.0.0.1")
if conn == nil then error("cannot connect") end
if mt.conninfo(conn, "client.example.org", "192.0.2.7") ~= nil then error("conninfo") end
mt.macro(conn, SMFIC_MAIL, "{{auth_authen}}", "{login}")
if mt.mailfrom(conn, "{from}") ~= nil then error("mailfrom") end
if mt.rcptto(conn, "<carol@remote.test>") ~= nil then error("rcptto") end
if mt.header(conn, "From", "{from}") ~= nil then error("header") end
if mt.header(conn, "To", "carol@remote.test") ~= nil then error("header") end
if mt.header(conn, "Content-Type", "text/calendar; method=REQUEST") ~= nil then error("header") end
if mt.eoh(conn) ~= nil then error("eoh") end
if mt.bodystring(conn, "{body}") ~= nil then error("body") end
if mt.eom(conn) ~= nil then error("eom") end
if mt.getreply(conn) ~= SMFIR_ACCEPT then error("not accepted") end
mt.disconnect(conn)
"#
    );
    let path = dir.join(format!("submit-{uid}.lua"));
    std::fs::write(&path, lua).expect("script");
    let out = Command::new("miltertest")
        .arg("-s")
        .arg(&path)
        .output()
        .expect("miltertest");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn milter_daemon(dir: &std::path::Path, policy: &str) -> mta::Imipd {
    mta::Imipd::start(
        dir,
        &format!(
            "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n\
             [milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n[policy]\n{policy}"
        ),
        &[],
    )
}

/// With `trust_authenticated_submission = false` (the default), an authenticated message is not
/// recorded as its sender's organizer update; with it on, only the login's own address is: a
/// login sending with a colleague's From changes nothing in the colleague's calendar.
#[test]
fn authenticated_submission_records_only_the_logins_own_address() {
    if !tools_present("submission_forgery", &["miltertest"]) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let mut off = milter_daemon(&tmp.path().join("off"), "");
    submit(
        off.milter_port.expect("port"),
        tmp.path(),
        "alice",
        "alice@example.org",
        "sub-off",
    );
    assert!(
        !off.export("alice@example.org").contains("sub-off"),
        "{}",
        off.log()
    );
    assert!(
        off.log().contains("trust_authenticated_submission is off"),
        "{}",
        off.log()
    );
    off.stop();

    let mut on = milter_daemon(
        &tmp.path().join("on"),
        "trust_authenticated_submission = true\n",
    );
    let port = on.milter_port.expect("port");
    submit(
        port,
        tmp.path(),
        "mallory",
        "alice@example.org",
        "sub-forged",
    );
    assert!(
        !on.export("alice@example.org").contains("sub-forged"),
        "{}",
        on.log()
    );
    assert!(
        on.log().contains("not one of the login's addresses"),
        "{}",
        on.log()
    );
    // Control: alice's own login records her copy.
    submit(port, tmp.path(), "alice", "alice@example.org", "sub-own");
    assert!(
        on.export("alice@example.org").contains("sub-own"),
        "{}",
        on.log()
    );
    on.stop();
}

// ---------------------------------------------------------------------------------------------
// Found in review: header lines, unsigned MIME framing, an unreadable upstream header

/// Calendar lines put above the headers of an ordinary signed mail are header lines, which
/// no content signature covers: never a proven calendar.
#[test]
fn calendar_lines_above_signed_headers_are_not_proven() {
    let Some((_k, key, dns)) = dkim_setup("calendar_in_headers") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let plain = format!(
        "{}Content-Type: text/plain\r\n\r\nSee you at lunch.\r\n",
        headers("alice@example.com")
    );
    let signed = key.sign(plain.as_bytes(), &[]);
    let lines = request("");
    let forged = [lines.into_bytes(), signed].concat();
    let p = fx.process(&forged);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(!fx.export().contains(UID));
}

/// A Content-Transfer-Encoding the signer did not sign (dkimpy lists only headers present at
/// signing) would turn signed bytes into other values: the signature is `policy`, not pass.
#[test]
fn unsigned_content_transfer_encoding_voids_the_dkim_proof() {
    let Some((_k, key, dns)) = dkim_setup("unsigned_cte") else {
        return;
    };
    let fx = Fixture::new(&dns, "");
    let signed = key.sign(
        &single(
            "alice@example.com",
            &request("RRULE:FREQ=WEEKLY;COUNT=10\r\n"),
        ),
        &[],
    );
    let text = String::from_utf8_lossy(&signed).into_owned();
    let forged = text.replacen(
        "Content-Type: text/calendar",
        "Content-Transfer-Encoding: quoted-printable\r\nContent-Type: text/calendar",
        1,
    );
    let p = fx.process(forged.as_bytes());
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(p.stderr.contains("dkim=policy"), "{}", p.stderr);
    assert!(!fx.export().contains(UID));
    let p = fx.process(&signed);
    assert!(p.applied("REQUEST"), "{}", p.stdout);
}

/// The upstream's own header that imipd cannot parse (an SRS address with '=' in it) still
/// is the topmost one of that authserv-id: a forged pass below it never counts.
#[test]
fn unreadable_topmost_upstream_header_does_not_let_a_lower_one_count() {
    if !tools_present("unreadable_ar", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let fx = Fixture::new(
        &dns,
        "[policy]\ntrusted_authserv_ids = [\"mx.upstream.example\"]\n",
    );
    let forged = [
        b"Authentication-Results: mx.upstream.example; spf=pass smtp.mailfrom=SRS0=Ab12=XY=example.net=eve@fwd.example; dkim=fail header.d=example.com\r\n".to_vec(),
        b"Authentication-Results: mx.upstream.example; dkim=pass header.d=example.com\r\n".to_vec(),
        single("alice@example.com", &request("")),
    ]
    .concat();
    let p = fx.process(&forged);
    assert!(!p.applied("REQUEST"), "{}", p.stdout);
    assert!(!fx.export().contains(UID));
}

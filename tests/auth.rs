//! Sender proof against real, independent signers and a real DNS server.
//!
//! Fixtures are made at test time: dnsmasq serves the DKIM keys and DMARC records on
//! 127.0.0.1, dkimpy signs DKIM, the openssl command line runs a test CA and signs S/MIME,
//! and Sequoia's `sq` signs PGP/MIME. A test whose tools are missing prints a notice and
//! returns early.
//!
//! Needed on the machine (Debian):
//!   apt-get install -y dnsmasq-base sq openssl python3-pip
//!   pip install dkimpy pynacl
//! (the build itself needs libclang-dev, libssl-dev and pkg-config for Sequoia and OpenSSL).

mod signers;

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use imipd::auth::{AuthConfig, AuthError, Authenticator, ProofMethod, TransportFacts};
use signers::{
    config, crlf, keyring, smime_sign, sq_key, sq_sign_detached, Ca, DkimKey, Dns, Leaf,
};
use tempfile::TempDir;

const DKIM_TOOLS: &[&str] = &["dnsmasq", "dkimpy", "openssl", "python3", "base64"];
const SMIME_TOOLS: &[&str] = &["dnsmasq", "openssl"];
const PGP_TOOLS: &[&str] = &["dnsmasq", "sq"];

const REQUEST: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:meeting-1@example.com\r\nSEQUENCE:0\r\nDTSTAMP:20260101T090000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nSUMMARY:Planning\r\n\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";

const REPLY: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nMETHOD:REPLY\r\n\
BEGIN:VEVENT\r\nUID:meeting-1@example.com\r\nSEQUENCE:0\r\nDTSTAMP:20260102T090000Z\r\n\
ORGANIZER:mailto:alice@example.com\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";

/// A plain iMIP message with the calendar as the whole body.
fn imip(from: &str, method: &str, calendar: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\nTo: someone@example.net\r\nSubject: Invitation\r\n\
         Date: Thu, 01 Jan 2026 09:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/calendar; method={method}; charset=utf-8\r\n\
         \r\n{calendar}"
    )
    .into_bytes()
}

/// The MIME entity a signature covers: a text/calendar part.
fn calendar_entity(calendar: &str) -> Vec<u8> {
    format!("Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{calendar}")
        .into_bytes()
}

fn facts() -> TransportFacts {
    TransportFacts::default()
}

fn has(results: &[String], prefix: &str) -> bool {
    results.iter().any(|r| r.starts_with(prefix))
}

async fn verify(cfg: &AuthConfig, raw: &[u8]) -> imipd::auth::AuthVerdict {
    let auth = Authenticator::new(cfg).expect("authenticator");
    let verdict = auth.verify_message(raw, &facts()).await;
    // Shown when a test fails: the header says what was decided.
    eprintln!("Authentication-Results: {}", verdict.header_value);
    verdict
}

// ---------------------------------------------------------------------------------------------
// DKIM

/// RFC 6376 §6.1 with rsa-sha256: a valid signature by the From domain proves From.
#[tokio::test]
async fn dkim_rsa_signature_by_from_domain_proves_from() {
    if !signers::tools_present("dkim_rsa", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);

    let verdict = verify(&config(&dns), &signed).await;
    assert_eq!(verdict.from.as_deref(), Some("alice@example.com"));
    assert!(verdict.proves("mailto:Alice@Example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "dkim=pass header.d=example.com header.s=sel header.b="
    ));
    assert!(has(&verdict.results, "dmarc=none header.from=example.com"));
    assert!(verdict
        .header_value
        .starts_with("mx.test.example; dkim=pass"));
    assert!(verdict.header_value.ends_with("smime=none"));
    let proof = &verdict.proofs[0];
    assert_eq!(
        proof.method,
        ProofMethod::Dkim {
            domain: "example.com".into(),
            selector: "sel".into()
        }
    );
    assert_eq!(proof.covers, imipd::auth::Coverage::Message);
}

/// A domain without a DMARC record costs one lookup, not one per message: the negative answer
/// is cached (mail-auth caches only records it found). dnsmasq's query log is the witness.
#[tokio::test]
async fn a_missing_dmarc_record_is_looked_up_once_for_many_messages() {
    if !signers::tools_present("dmarc_negative_cache", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let (dns, queries) = Dns::start_logged(dir.path(), &[(&key.record_name(), &key.record)]);
    let auth = Authenticator::new(&config(&dns)).expect("authenticator");
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    for _ in 0..3 {
        let verdict = auth.verify_message(&signed, &facts()).await;
        assert!(has(&verdict.results, "dmarc=none header.from=example.com"));
        assert!(verdict.proves("mailto:alice@example.com"), "{verdict:?}");
    }
    assert_eq!(queries("_dmarc.example.com"), 1);
    assert_eq!(queries("sel._domainkey.example.com"), 1);
    // The remembered "no policy" speaks for nobody: the same message unsigned, From the same
    // domain, proves nothing.
    let forged = imip("alice@example.com", "REQUEST", REQUEST);
    let verdict = auth.verify_message(&forged, &facts()).await;
    assert!(!verdict.proves("mailto:alice@example.com"), "{verdict:?}");
    assert!(verdict.proofs.is_empty(), "{verdict:?}");
    assert_eq!(queries("_dmarc.example.com"), 1);
}

/// A signature whose key is not published costs one lookup, not one per message, and proves
/// nothing each time.
#[tokio::test]
async fn an_unpublished_dkim_key_is_looked_up_once_for_many_messages() {
    if !signers::tools_present("dkim_negative_cache", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "gone", "example.com");
    // The key's record is not served: every name is NXDOMAIN.
    let (dns, queries) = Dns::start_logged(dir.path(), &[]);
    let auth = Authenticator::new(&config(&dns)).expect("authenticator");
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    for _ in 0..3 {
        let verdict = auth.verify_message(&signed, &facts()).await;
        assert!(
            has(&verdict.results, "dkim=permerror"),
            "{:?}",
            verdict.results
        );
        assert!(!verdict.proves("mailto:alice@example.com"), "{verdict:?}");
    }
    assert_eq!(queries("gone._domainkey.example.com"), 1);
}

/// A lookup that timed out (a slow or silent server) is not remembered: once the server
/// answers, the same authenticator finds the key and the signature proves From.
#[tokio::test]
async fn a_timed_out_lookup_is_not_remembered() {
    if !signers::tools_present("dns_timeout_not_cached", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let auth = Authenticator::new(&AuthConfig {
        authserv_id: signers::AUTHSERV_ID.into(),
        nameservers: vec![addr],
        dns_timeout: Duration::from_millis(500),
        ..AuthConfig::default()
    })
    .expect("authenticator");
    let verdict = auth.verify_message(&signed, &facts()).await;
    assert!(
        has(&verdict.results, "dkim=temperror"),
        "{:?}",
        verdict.results
    );
    assert!(verdict.proofs.is_empty());
    drop(silent);
    let Some(_dns) = Dns::start_at(addr.port(), &[(&key.record_name(), &key.record)], &[]) else {
        eprintln!(
            "NOTICE: port {} taken again before dnsmasq started; not checked",
            addr.port()
        );
        return;
    };
    let verdict = auth.verify_message(&signed, &facts()).await;
    assert!(verdict.proves("mailto:alice@example.com"), "{verdict:?}");
}

/// RFC 8463: ed25519-sha256 signatures verify too.
#[tokio::test]
async fn dkim_ed25519_signature_proves_from() {
    if !signers::tools_present("dkim_ed25519", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::ed25519(dir.path(), "ed", "example.com");
    let dns = Dns::start(&[
        (&key.record_name(), &key.record),
        ("_dmarc.example.com", "v=DMARC1; p=reject"),
    ]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);

    let verdict = verify(&config(&dns), &signed).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "dkim=pass header.d=example.com header.s=ed"
    ));
    assert!(has(&verdict.results, "dmarc=pass header.from=example.com"));
}

/// RFC 6376 §3.7: a changed body no longer matches bh=.
#[tokio::test]
async fn dkim_changed_body_fails() {
    if !signers::tools_present("dkim_changed_body", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    let tampered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("SUMMARY:Planning", "SUMMARY:Party!!!")
        .into_bytes();

    let verdict = verify(&config(&dns), &tampered).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "dkim=fail reason=\"body hash mismatch\" header.d=example.com"
    ));
}

/// RFC 6376 §3.7: a changed signed header breaks the signature.
#[tokio::test]
async fn dkim_changed_signed_header_fails() {
    if !signers::tools_present("dkim_changed_header", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    let tampered = String::from_utf8(signed)
        .expect("utf-8")
        .replace("Subject: Invitation", "Subject: Cancelled")
        .into_bytes();

    let verdict = verify(&config(&dns), &tampered).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "dkim=fail"), "{:?}", verdict.results);
}

/// RFC 7489 §3.1.1: a valid signature by an unrelated domain proves nothing about From.
#[tokio::test]
async fn dkim_valid_but_unaligned_signature_proves_nothing() {
    if !signers::tools_present("dkim_unaligned", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "mailer.example.net");
    let dns = Dns::start(&[
        (&key.record_name(), &key.record),
        ("_dmarc.example.com", "v=DMARC1; p=quarantine"),
    ]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);

    let verdict = verify(&config(&dns), &signed).await;
    assert!(verdict.proofs.is_empty(), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "dkim=pass header.d=mailer.example.net"
    ));
    assert!(has(&verdict.results, "dmarc=fail"));
}

/// RFC 5546 §3.2.3 meets RFC 7489: a REPLY from an attendee at example.org signed only by
/// example.com (say, the organizer's forwarding host) does not prove the attendee.
#[tokio::test]
async fn reply_from_one_domain_signed_by_another_is_not_proven() {
    if !signers::tools_present("dkim_reply_other_domain", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let signed = key.sign(&imip("bob@example.org", "REPLY", REPLY), &[]);

    let verdict = verify(&config(&dns), &signed).await;
    assert!(!verdict.proves("bob@example.org"), "{verdict:?}");
    assert!(!verdict.proves("alice@example.com"));
    assert!(has(&verdict.results, "dkim=pass header.d=example.com"));
    assert!(has(&verdict.results, "dmarc=none header.from=example.org"));
}

/// RFC 7489 §6.3 `adkim=s`: the parent domain's signature no longer aligns; relaxed it does.
#[tokio::test]
async fn dkim_strict_dmarc_alignment_requires_exact_domain() {
    if !signers::tools_present("dkim_strict_alignment", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[
        (&key.record_name(), &key.record),
        ("_dmarc.strict.example.com", "v=DMARC1; p=reject; adkim=s"),
    ]);
    let cfg = config(&dns);

    let strict = key.sign(&imip("alice@strict.example.com", "REQUEST", REQUEST), &[]);
    let verdict = verify(&cfg, &strict).await;
    assert!(!verdict.proves("alice@strict.example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "dmarc=fail"));

    let relaxed = key.sign(&imip("alice@relaxed.example.com", "REQUEST", REQUEST), &[]);
    let verdict = verify(&cfg, &relaxed).await;
    assert!(verdict.proves("alice@relaxed.example.com"), "{verdict:?}");
}

/// RFC 6376 §3.5 x=: an expired signature fails.
#[tokio::test]
async fn dkim_expired_signature_fails() {
    if !signers::tools_present("dkim_expired", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let signed = key.sign(
        &imip("alice@example.com", "REQUEST", REQUEST),
        &["--expired"],
    );
    assert!(String::from_utf8_lossy(&signed).contains("x="));

    let verdict = verify(&config(&dns), &signed).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "dkim=fail reason=\"signature expired\""
    ));
}

/// RFC 6376 §3.6.1: an empty p= means the key was revoked.
#[tokio::test]
async fn dkim_revoked_key_fails() {
    if !signers::tools_present("dkim_revoked", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), "v=DKIM1; k=rsa; p=")]);
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);

    let verdict = verify(&config(&dns), &signed).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "dkim=fail reason=\"key revoked\""));
}

/// RFC 6376 §8.2: with l=, text appended after signing keeps the signature valid, so the proof
/// says how much of the body it covers.
#[tokio::test]
async fn dkim_length_tag_with_appended_text_limits_proof() {
    if !signers::tools_present("dkim_length", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let dns = Dns::start(&[(&key.record_name(), &key.record)]);
    let mut signed = key.sign(
        &imip("alice@example.com", "REQUEST", REQUEST),
        &["--length"],
    );
    let appended = b"BEGIN:VCALENDAR\r\nMETHOD:CANCEL\r\nEND:VCALENDAR\r\n";
    signed.extend_from_slice(appended);

    let verdict = verify(&config(&dns), &signed).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "dkim=pass header.d=example.com"));
    assert_eq!(
        verdict.proofs[0].covers,
        imipd::auth::Coverage::Prefix(signed.len() - appended.len())
    );
}

/// Without any signature nothing is proven, and the header says so.
#[tokio::test]
async fn unsigned_message_proves_nothing() {
    if !signers::tools_present("unsigned", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let verdict = verify(
        &config(&dns),
        &imip("alice@example.com", "REQUEST", REQUEST),
    )
    .await;
    assert!(verdict.proofs.is_empty());
    assert_eq!(
        verdict.header_value,
        "mx.test.example; dkim=none; dmarc=none header.from=example.com; smime=none"
    );
    assert_eq!(verdict.inner, None);
}

/// Every DNS lookup is bounded: a server that never answers yields temperror in time.
#[tokio::test]
async fn silent_dns_server_gives_temperror_within_the_timeout() {
    if !signers::tools_present("dns_timeout", DKIM_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let key = DkimKey::rsa(dir.path(), "sel", "example.com");
    let signed = key.sign(&imip("alice@example.com", "REQUEST", REQUEST), &[]);
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let cfg = AuthConfig {
        nameservers: vec![silent.local_addr().expect("addr")],
        dns_timeout: Duration::from_millis(500),
        ..AuthConfig::default()
    };

    let started = Instant::now();
    let verdict = verify(&cfg, &signed).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(verdict.proofs.is_empty());
    assert!(
        has(&verdict.results, "dkim=temperror"),
        "{:?}",
        verdict.results
    );
    assert!(
        has(&verdict.results, "dmarc=temperror"),
        "{:?}",
        verdict.results
    );
}

// ---------------------------------------------------------------------------------------------
// S/MIME

struct SmimeFixture {
    dir: TempDir,
    ca: Ca,
    dns: Dns,
}

impl SmimeFixture {
    fn new() -> SmimeFixture {
        let dir = TempDir::new().expect("tempdir");
        let ca = Ca::new(dir.path(), "Test-CA");
        SmimeFixture {
            dir,
            ca,
            dns: Dns::start(&[]),
        }
    }

    fn config(&self) -> AuthConfig {
        AuthConfig {
            smime_trust_anchors: Some(self.ca.cert.clone()),
            ..config(&self.dns)
        }
    }

    /// A message From `from` whose top level is the S/MIME output.
    fn message(&self, leaf: &Leaf<'_>, ca: &Ca, from: &str, opaque: bool) -> Vec<u8> {
        let (cert, key) = ca.issue(leaf);
        let smime = smime_sign(
            self.dir.path(),
            &cert,
            &key,
            &calendar_entity(REQUEST),
            opaque,
        );
        let mut message =
            format!("From: {from}\r\nTo: bob@example.org\r\nSubject: Invitation\r\n").into_bytes();
        message.extend_from_slice(&smime);
        message
    }
}

/// RFC 8551 §3.5.3 multipart/signed: a valid detached signature proves From.
#[tokio::test]
async fn smime_detached_signature_proves_from() {
    if !signers::tools_present("smime_detached", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let raw = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &fx.ca,
        "alice@example.com",
        false,
    );
    assert!(String::from_utf8_lossy(&raw).contains("multipart/signed"));

    let verdict = verify(&fx.config(), &raw).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "smime=pass smime.signer=alice@example.com"
    ));
    let smime = verdict
        .proofs
        .iter()
        .find(|p| p.method == ProofMethod::Smime)
        .expect("S/MIME proof");
    // The proof covers the signed entity (part 1 of the multipart/signed), not the signature.
    assert_eq!(smime.covers, imipd::auth::Coverage::Parts(vec![1]));
    assert_eq!(
        verdict.inner, None,
        "a detached signature leaves the tree as it is"
    );
}

/// RFC 8551 §3.5.2 application/pkcs7-mime signed-data: the inner entity comes back decoded.
#[tokio::test]
async fn smime_opaque_signature_proves_from_and_returns_inner_entity() {
    if !signers::tools_present("smime_opaque", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let raw = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &fx.ca,
        "alice@example.com",
        true,
    );
    assert!(String::from_utf8_lossy(&raw).contains("pkcs7-mime"));

    let verdict = verify(&fx.config(), &raw).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "smime=pass"));
    let inner = String::from_utf8(verdict.inner.expect("inner entity")).expect("utf-8");
    assert!(inner.contains("Content-Type: text/calendar"));
    assert!(inner.contains("SUMMARY:Planning"));
}

/// A signed part changed in transit fails.
#[tokio::test]
async fn smime_tampered_content_fails() {
    if !signers::tools_present("smime_tampered", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let raw = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &fx.ca,
        "alice@example.com",
        false,
    );
    let tampered = String::from_utf8(raw)
        .expect("utf-8")
        .replace("SUMMARY:Planning", "SUMMARY:Tampered")
        .into_bytes();

    let verdict = verify(&fx.config(), &tampered).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "smime=fail reason="));
}

/// RFC 5280 §4.1.2.5: a certificate past its validity period fails.
#[tokio::test]
async fn smime_expired_certificate_fails() {
    if !signers::tools_present("smime_expired", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let leaf = Leaf {
        dates: Some(("20200101000000Z", "20210101000000Z")),
        ..Leaf::email("alice", "alice@example.com")
    };
    let raw = fx.message(&leaf, &fx.ca, "alice@example.com", false);

    let verdict = verify(&fx.config(), &raw).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    let smime = verdict
        .results
        .iter()
        .find(|r| r.starts_with("smime="))
        .expect("smime");
    assert!(
        smime.starts_with("smime=fail") && smime.contains("expired"),
        "{smime}"
    );
}

/// A signer from a CA that is not a trust anchor fails.
#[tokio::test]
async fn smime_untrusted_ca_fails() {
    if !signers::tools_present("smime_untrusted", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let rogue = Ca::new(fx.dir.path(), "Rogue-CA");
    let raw = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &rogue,
        "alice@example.com",
        false,
    );

    let verdict = verify(&fx.config(), &raw).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    let smime = verdict
        .results
        .iter()
        .find(|r| r.starts_with("smime="))
        .expect("smime");
    assert!(
        smime.starts_with("smime=fail") && smime.contains("issuer"),
        "{smime}"
    );
}

/// RFC 8550 §3: a valid certificate for someone else does not prove From.
#[tokio::test]
async fn smime_signer_other_than_from_fails() {
    if !signers::tools_present("smime_other_signer", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let raw = fx.message(
        &Leaf::email("mallory", "mallory@example.com"),
        &fx.ca,
        "alice@example.com",
        false,
    );

    let verdict = verify(&fx.config(), &raw).await;
    assert!(verdict.proofs.is_empty(), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "smime=fail reason=\"signer certificate does not name the From address\""
    ));
}

/// RFC 8550 §3: without subjectAltName, the subject's emailAddress names the signer.
#[tokio::test]
async fn smime_subject_email_without_san_proves_from() {
    if !signers::tools_present("smime_subject_email", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let leaf = Leaf {
        san_email: None,
        subject_email: Some("alice@example.com"),
        ..Leaf::email("alice", "alice@example.com")
    };
    let raw = fx.message(&leaf, &fx.ca, "Alice@Example.com", false);

    let verdict = verify(&fx.config(), &raw).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
}

/// RFC 8550 §4.4.4: a certificate whose extendedKeyUsage excludes emailProtection fails.
#[tokio::test]
async fn smime_certificate_without_email_protection_fails() {
    if !signers::tools_present("smime_eku", SMIME_TOOLS) {
        return;
    }
    let fx = SmimeFixture::new();
    let leaf = Leaf {
        eku: "serverAuth",
        ..Leaf::email("alice", "alice@example.com")
    };
    let raw = fx.message(&leaf, &fx.ca, "alice@example.com", false);

    let verdict = verify(&fx.config(), &raw).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "smime=fail"));
}

// ---------------------------------------------------------------------------------------------
// PGP/MIME

const PGP_BOUNDARY: &str = "pgp-sig-boundary";

/// RFC 3156 §5: multipart/signed with the calendar entity and a detached signature by `key`.
fn pgp_message(dir: &std::path::Path, key: &std::path::Path, from: &str, entity: &[u8]) -> Vec<u8> {
    let signature = sq_sign_detached(dir, key, entity);
    let mut raw = format!(
        "From: {from}\r\nTo: bob@example.org\r\nSubject: Invitation\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha512;\r\n protocol=\"application/pgp-signature\"; \
         boundary=\"{PGP_BOUNDARY}\"\r\n\r\nThis is an OpenPGP/MIME signed message.\r\n\
         --{PGP_BOUNDARY}\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(entity);
    raw.extend_from_slice(
        format!(
            "\r\n--{PGP_BOUNDARY}\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\
             Content-Description: OpenPGP digital signature\r\n\r\n"
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&crlf(&signature));
    raw.extend_from_slice(format!("\r\n--{PGP_BOUNDARY}--\r\n").as_bytes());
    raw
}

/// A valid signature by a keyring certificate with the From address in a user ID proves From.
#[tokio::test]
async fn pgp_signature_by_bound_key_proves_from() {
    if !signers::tools_present("pgp_valid", PGP_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let (key, cert) = sq_key(dir.path(), "alice", "Alice <alice@example.com>");
    let dns = Dns::start(&[]);
    let cfg = AuthConfig {
        pgp_keyring: Some(keyring(dir.path(), &[&cert])),
        ..config(&dns)
    };
    let entity = calendar_entity(REQUEST);
    let raw = pgp_message(dir.path(), &key, "alice@example.com", &entity);

    let verdict = verify(&cfg, &raw).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "pgp=pass pgp.signer=alice@example.com"
    ));
    let pgp = verdict
        .proofs
        .iter()
        .find(|p| p.method == ProofMethod::Pgp)
        .expect("PGP proof");
    assert_eq!(pgp.covers, imipd::auth::Coverage::Parts(vec![1]));
}

/// RFC 3156 §5: the signature covers the first part's exact bytes; changing them fails.
#[tokio::test]
async fn pgp_tampered_content_fails() {
    if !signers::tools_present("pgp_tampered", PGP_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let (key, cert) = sq_key(dir.path(), "alice", "Alice <alice@example.com>");
    let dns = Dns::start(&[]);
    let cfg = AuthConfig {
        pgp_keyring: Some(keyring(dir.path(), &[&cert])),
        ..config(&dns)
    };
    let raw = pgp_message(
        dir.path(),
        &key,
        "alice@example.com",
        &calendar_entity(REQUEST),
    );
    let tampered = String::from_utf8(raw)
        .expect("utf-8")
        .replace("SUMMARY:Planning", "SUMMARY:Tampered")
        .into_bytes();

    let verdict = verify(&cfg, &tampered).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    assert!(has(&verdict.results, "pgp=fail reason="));
}

/// A signature by a key missing from the keyring proves nothing.
#[tokio::test]
async fn pgp_unknown_key_fails() {
    if !signers::tools_present("pgp_unknown", PGP_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let (key, _) = sq_key(dir.path(), "alice", "Alice <alice@example.com>");
    let (_, other) = sq_key(dir.path(), "carol", "Carol <carol@example.com>");
    let dns = Dns::start(&[]);
    let cfg = AuthConfig {
        pgp_keyring: Some(keyring(dir.path(), &[&other])),
        ..config(&dns)
    };
    let raw = pgp_message(
        dir.path(),
        &key,
        "alice@example.com",
        &calendar_entity(REQUEST),
    );

    let verdict = verify(&cfg, &raw).await;
    assert!(!verdict.proves("alice@example.com"), "{verdict:?}");
    let pgp = verdict
        .results
        .iter()
        .find(|r| r.starts_with("pgp="))
        .expect("pgp");
    assert!(
        pgp.starts_with("pgp=fail") && pgp.contains("Missing key"),
        "{pgp}"
    );
}

/// A good signature by a key whose user IDs do not name the From address proves nothing.
#[tokio::test]
async fn pgp_signer_without_from_user_id_fails() {
    if !signers::tools_present("pgp_wrong_signer", PGP_TOOLS) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let (key, cert) = sq_key(dir.path(), "mallory", "Mallory <mallory@example.com>");
    let dns = Dns::start(&[]);
    let cfg = AuthConfig {
        pgp_keyring: Some(keyring(dir.path(), &[&cert])),
        ..config(&dns)
    };
    let raw = pgp_message(
        dir.path(),
        &key,
        "alice@example.com",
        &calendar_entity(REQUEST),
    );

    let verdict = verify(&cfg, &raw).await;
    assert!(verdict.proofs.is_empty(), "{verdict:?}");
    assert!(has(
        &verdict.results,
        "pgp=fail reason=\"no user ID of the signing certificate names the From address\""
    ));
}

// ---------------------------------------------------------------------------------------------
// Trusted paths

/// Authenticated submission proves From only when the operator turned it on.
#[tokio::test]
async fn authenticated_submission_is_trusted_only_when_configured() {
    if !signers::tools_present("auth_submission", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let raw = imip("alice@example.com", "REQUEST", REQUEST);
    let submitted = TransportFacts {
        client_ip: None,
        auth_authen: Some("alice".into()),
    };

    let off = Authenticator::new(&config(&dns)).expect("authenticator");
    assert!(off.verify_message(&raw, &submitted).await.proofs.is_empty());

    let on = Authenticator::new(&AuthConfig {
        trust_authenticated_submission: true,
        local_domains: vec!["example.com".into()],
        ..config(&dns)
    })
    .expect("authenticator");
    // Another login sending with alice's From proves nothing (DESIGN: the login's own address).
    let bob = TransportFacts {
        client_ip: None,
        auth_authen: Some("bob".into()),
    };
    let forged = on.verify_message(&raw, &bob).await;
    assert!(forged.proofs.is_empty(), "{forged:?}");
    assert!(has(&forged.results, "auth=fail"));
    let verdict = on.verify_message(&raw, &submitted).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert_eq!(
        verdict.proofs[0].method,
        ProofMethod::AuthenticatedSubmission
    );
    assert!(has(&verdict.results, "auth=pass smtp.auth=alice"));
    assert!(on.verify_message(&raw, &facts()).await.proofs.is_empty());
}

/// A message from a configured trusted relay proves its From; other clients do not.
#[tokio::test]
async fn trusted_relay_proves_from() {
    if !signers::tools_present("trusted_relay", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let relay: IpAddr = "192.0.2.25".parse().expect("ip");
    let auth = Authenticator::new(&AuthConfig {
        trusted_relays: vec![relay],
        ..config(&dns)
    })
    .expect("authenticator");
    let raw = imip("alice@example.com", "REQUEST", REQUEST);

    let from_relay = TransportFacts {
        client_ip: Some(relay),
        auth_authen: None,
    };
    let verdict = auth.verify_message(&raw, &from_relay).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert_eq!(verdict.proofs[0].method, ProofMethod::TrustedRelay);

    let elsewhere = TransportFacts {
        client_ip: Some("198.51.100.7".parse().expect("ip")),
        auth_authen: None,
    };
    assert!(auth
        .verify_message(&raw, &elsewhere)
        .await
        .proofs
        .is_empty());
}

/// RFC 8601 §5: a trusted upstream's dkim=pass proves From; headers from anyone else, or
/// claiming our own authserv-id, are listed for removal and ignored.
#[tokio::test]
async fn trusted_upstream_results_prove_from_and_others_are_removed() {
    if !signers::tools_present("trusted_upstream", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let raw = [
        "Authentication-Results: mx.test.example; dkim=pass header.d=example.com\r\n",
        "Authentication-Results: evil.example;\r\n dkim=pass header.d=example.com\r\n",
        "Authentication-Results: filter.upstream.example (rspamd);\r\n dkim=pass (good) header.d=example.com header.s=s1\r\n",
    ]
    .concat()
    .into_bytes()
    .into_iter()
    .chain(imip("alice@example.com", "REQUEST", REQUEST))
    .collect::<Vec<u8>>();

    let untrusting = verify(&config(&dns), &raw).await;
    assert!(untrusting.proofs.is_empty(), "{untrusting:?}");
    assert_eq!(untrusting.remove_headers, vec![0, 1, 2]);

    let cfg = AuthConfig {
        trusted_authserv_ids: vec!["filter.upstream.example".into(), "evil.other".into()],
        ..config(&dns)
    };
    let verdict = verify(&cfg, &raw).await;
    assert!(verdict.proves("alice@example.com"), "{verdict:?}");
    assert_eq!(verdict.proofs[0].method, ProofMethod::TrustedAuthResults);
    assert_eq!(verdict.remove_headers, vec![0, 1]);
    assert!(has(
        &verdict.results,
        "x-imipd-upstream=pass policy.authserv-id=filter.upstream.example"
    ));

    // A trusted upstream's pass for another domain proves nothing about this From.
    let other = String::from_utf8(raw)
        .expect("utf-8")
        .replace("From: Sender <alice@example.com>", "From: bob@example.org");
    assert!(verify(&cfg, other.as_bytes()).await.proofs.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Malformed input

/// RFC 5322 §3.6.2: no From, several From addresses, or no message at all: no proof, a reason.
#[tokio::test]
async fn missing_or_multiple_from_and_garbage_prove_nothing() {
    if !signers::tools_present("bad_from", &["dnsmasq"]) {
        return;
    }
    let dns = Dns::start(&[]);
    let auth = Authenticator::new(&AuthConfig {
        trust_authenticated_submission: true,
        ..config(&dns)
    })
    .expect("authenticator");
    let submitted = TransportFacts {
        client_ip: None,
        auth_authen: Some("alice".into()),
    };
    let cases: [(&[u8], &str); 5] = [
        (b"To: bob@example.org\r\n\r\nhi\r\n", "no From header"),
        (
            b"From: a@example.com, b@example.com\r\n\r\nhi\r\n",
            "several From addresses",
        ),
        (
            b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nhi\r\n",
            "several From headers",
        ),
        (b"", "unparseable message"),
        (&[0xff, 0xfe, b':', 0, 1, 2, b'\n', b'\n'], ""),
    ];
    for (raw, reason) in cases {
        let verdict = auth.verify_message(raw, &submitted).await;
        assert!(verdict.proofs.is_empty(), "{verdict:?}");
        assert!(verdict.header_value.starts_with("mx.test.example; "));
        if !reason.is_empty() {
            assert!(
                verdict.results.iter().any(|r| r.contains(reason)),
                "{reason}: {:?}",
                verdict.results
            );
        }
    }
}

/// Configuration errors name the file and what is wrong with it.
#[test]
fn bad_trust_files_are_named_in_errors() {
    let dir = TempDir::new().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let err = Authenticator::new(&AuthConfig {
        smime_trust_anchors: Some(missing.clone()),
        nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
        ..AuthConfig::default()
    })
    .err()
    .expect("error");
    assert!(matches!(err, AuthError::Read { .. }));
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let junk = dir.path().join("junk.pgp");
    std::fs::write(&junk, b"this is not a keyring").expect("write");
    let err = Authenticator::new(&AuthConfig {
        pgp_keyring: Some(junk),
        nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
        ..AuthConfig::default()
    })
    .err()
    .expect("error");
    assert!(err.to_string().contains("junk.pgp"), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"no certificates here\n").expect("write");
    let err = Authenticator::new(&AuthConfig {
        smime_trust_anchors: Some(empty),
        nameservers: vec!["127.0.0.1:53".parse().expect("addr")],
        ..AuthConfig::default()
    })
    .err()
    .expect("error");
    assert!(err.to_string().contains("empty.pem"), "{err}");
}

/// Truncated or cut signed messages never panic and never prove anything they should not.
#[tokio::test]
async fn truncated_signed_messages_never_panic() {
    if !signers::tools_present("truncated", &["dnsmasq", "openssl", "sq"]) {
        return;
    }
    let fx = SmimeFixture::new();
    let opaque = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &fx.ca,
        "alice@example.com",
        true,
    );
    let detached = fx.message(
        &Leaf::email("alice", "alice@example.com"),
        &fx.ca,
        "alice@example.com",
        false,
    );
    let (key, cert) = sq_key(fx.dir.path(), "alice", "Alice <alice@example.com>");
    let pgp = pgp_message(
        fx.dir.path(),
        &key,
        "alice@example.com",
        &calendar_entity(REQUEST),
    );
    let auth = Authenticator::new(&AuthConfig {
        pgp_keyring: Some(keyring(fx.dir.path(), &[&cert])),
        ..fx.config()
    })
    .expect("authenticator");
    for raw in [&opaque, &detached, &pgp] {
        let full = auth.verify_message(raw, &facts()).await;
        assert!(full.proves("alice@example.com"), "{full:?}");
        for cut in (0..raw.len()).step_by(61) {
            let verdict = auth.verify_message(&raw[..cut], &facts()).await;
            assert!(verdict.header_value.starts_with("mx.test.example; "));
        }
    }
}

//! Sender-proof verification throughput with a warm DNS cache: DKIM rsa-sha256 (2048-bit) and
//! ed25519-sha256 on the same iMIP message, keys served by a dnsmasq on 127.0.0.1 and signed
//! by dkimpy. `cargo bench --bench verify`.

#[path = "../tests/signers/mod.rs"]
mod signers;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imipd::auth::{AuthConfig, Authenticator, TransportFacts};
use std::time::Duration;

fn message() -> Vec<u8> {
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Invitation\r\n\
Date: Thu, 01 Jan 2026 09:00:00 +0000\r\nMessage-ID: <v1@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n\
BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
UID:v1@example.com\r\nDTSTAMP:20260101T090000Z\r\nDTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\n\
SUMMARY:Planning\r\nORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n"
        .to_vec()
}

fn bench(c: &mut Criterion) {
    if !signers::tools_present(
        "verify benchmark",
        &["dnsmasq", "dkimpy", "openssl", "python3", "base64"],
    ) {
        return;
    }
    let dir = tempfile::TempDir::new().expect("tempdir");
    let rsa = signers::DkimKey::rsa(dir.path(), "rsa", "example.com");
    let ed = signers::DkimKey::ed25519(dir.path(), "ed", "example.com");
    let dns = signers::Dns::start(&[
        (&rsa.record_name(), &rsa.record),
        (&ed.record_name(), &ed.record),
    ]);
    let cfg = AuthConfig {
        authserv_id: "mx.example.org".into(),
        nameservers: vec![dns.addr],
        dns_timeout: Duration::from_secs(3),
        ..AuthConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let auth = Authenticator::new(&cfg).expect("authenticator");
    let mut g = c.benchmark_group("dkim_verify_warm_cache");
    g.throughput(Throughput::Elements(1));
    for (name, key) in [("rsa2048_sha256", &rsa), ("ed25519_sha256", &ed)] {
        let signed = key.sign(&message(), &[]);
        // Warm the DNS cache and check the proof once.
        let v = rt.block_on(auth.verify_message(&signed, &TransportFacts::default()));
        assert!(v.proves("alice@example.com"), "{}", v.header_value);
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(auth.verify_message(&signed, &TransportFacts::default()))
                    .proofs
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);

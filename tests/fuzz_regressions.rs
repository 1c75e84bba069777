//! Replays every input that a fuzz target once crashed on (`tools/fuzz.sh` writes them to
//! fuzz/artifacts; they are kept in tests/fuzz_regressions/TARGET/), through the same calls the
//! target makes: extract and the engine must not panic, and the proof's view and extraction's
//! view of a signed message must agree.

use imipd::message::{normalize_line_ends, split_multipart_offsets, subtree, Parsed};
use imipd::proof::{Coverage, Grant, Proof};
use std::path::Path;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

#[test]
fn extract_regressions_do_not_panic() {
    for data in inputs("extract") {
        let ex = imipd::extract::extract(&data);
        for found in &ex.objects {
            let _ = found.to_owned();
        }
    }
}

/// The invariant of fuzz/fuzz_targets/differential.rs, on the kept inputs.
#[test]
fn differential_regressions_agree() {
    for data in inputs("differential") {
        let (bytes, bare) = normalize_line_ends(&data);
        let parsed = Parsed::new(&bytes, bare);
        let Some(tree) = parsed.tree.as_ref() else {
            continue;
        };
        if parsed.ambiguity.is_some() {
            continue;
        }
        let Some(root) = tree.parts.first() else {
            continue;
        };
        let mail_parser::PartType::Multipart(children) = &root.body else {
            continue;
        };
        use mail_parser::MimeHeaders;
        let Some(boundary) = root.content_type().and_then(|ct| ct.attribute("boundary")) else {
            continue;
        };
        let start = root.offset_body as usize;
        let end = (root.offset_end as usize).min(bytes.len());
        let strict = split_multipart_offsets(&bytes[start..end], boundary.as_bytes())
            .expect("an unambiguous multipart is closed");
        assert_eq!(strict.len(), children.len());
        let Some(&index) = children.first() else {
            continue;
        };
        let first = &tree.parts[index as usize];
        let (lo, hi) = (first.offset_header as usize, first.offset_end as usize);
        let proof = Proof {
            grants: vec![Grant {
                address: "signer@example.com".into(),
                covers: Coverage::Parts(subtree(tree, index as usize)),
            }],
            ..Default::default()
        };
        let ex = imipd::extract::extract_parsed(&parsed, &proof);
        let alone = imipd::extract::extract(&bytes[lo..hi]);
        let uids: Vec<&str> = alone.objects.iter().map(|f| f.uid.as_str()).collect();
        for found in ex.objects.iter().filter(|f| !f.proven.is_empty()) {
            assert!(uids.contains(&found.uid.as_str()), "{}", found.uid);
        }
    }
}

/// The iSchedule target's harness (fuzz/fuzz_targets/ischedule.rs) on the kept inputs: every
/// request gets an answer, signed (first byte odd) or as given.
#[test]
fn ischedule_regressions_get_an_answer() {
    use imipd::doors::ischedule::receive::{receive, Answer, Request};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("temp dir");
    let pkey = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa"))
        .expect("pkey");
    let public = dir.path().join("example.com.pem");
    std::fs::write(&public, pkey.public_key_to_pem().expect("public")).expect("write");
    let cfg = format!(
        "data_dir = {:?}\nlocal_domains = [\"example.org\"]\n\
         [ischedule.private_keys]\n\"example.com:fuzz\" = {:?}\n",
        dir.path().display().to_string(),
        public.display().to_string(),
    );
    let cfg = Arc::new(imipd::config::Config::parse(&cfg, "fuzz.toml").expect("config"));
    let store = Arc::new(imipd::store::Sled::open(&dir.path().join("data")).expect("store"));
    let bridge = Arc::new(imipd::ischedule::Bridge::new(cfg.clone()).expect("bridge"));
    let pipeline = Arc::new(imipd::pipeline::Pipeline::new(store, cfg));
    let key = imipd::ischedule::dkim::SigningKey::from_pem(
        &pkey.private_key_to_pem_pkcs8().expect("pem"),
        "example.com",
        "fuzz",
    )
    .expect("key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut delivered = 0;
    let mut answers = Vec::new();
    for data in inputs("ischedule") {
        let Some((&mode, rest)) = data.split_first() else {
            continue;
        };
        let split = rest
            .windows(2)
            .position(|p| p == b"\n\n")
            .unwrap_or(rest.len());
        let mut headers: Vec<(String, String)> = String::from_utf8_lossy(&rest[..split])
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let body = rest.get(split + 2..).unwrap_or_default().to_vec();
        if mode & 1 == 1 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs() as i64;
            if let Ok(sig) = key.sign(&headers, &body, now, 300) {
                headers.push(("DKIM-Signature".into(), sig));
            }
        }
        let req = Request {
            headers,
            body,
            peer: None,
        };
        let answer = rt.block_on(receive(bridge.clone(), pipeline.clone(), req));
        if let Answer::Responses(r) = &answer {
            delivered += r.iter().filter(|a| a.status == "2.0;Success").count();
        }
        answers.push(answer);
    }
    // The signed seeds get through the signature to the pipeline (the harness is not vacuous).
    assert!(
        delivered >= 3,
        "{delivered} signed seeds delivered: {answers:?}"
    );
}

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

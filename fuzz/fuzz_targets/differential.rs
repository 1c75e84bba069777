//! Differential: the sender proof's view of a signed message against extraction's view of the
//! same bytes. For any input that is not flagged ambiguous, the strict RFC 2046 split of every
//! multipart must agree with the MIME tree, and every object that extraction marks proven by a
//! multipart/signed entity must come from bytes inside that entity.
#![no_main]
use imipd::message::{normalize_line_ends, split_multipart_offsets, subtree, Parsed};
use imipd::proof::{Coverage, Grant, Proof};
use mail_parser::{MimeHeaders, PartType};


libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (bytes, bare) = normalize_line_ends(data);
    let parsed = Parsed::new(&bytes, bare);
    let Some(tree) = parsed.tree.as_ref() else { return };
    if parsed.ambiguity.is_some() {
        return;
    }
    let Some(root) = tree.parts.first() else { return };
    let PartType::Multipart(children) = &root.body else { return };
    let Some(boundary) = root.content_type().and_then(|ct| ct.attribute("boundary")) else {
        return;
    };
    let start = root.offset_body as usize;
    let end = (root.offset_end as usize).min(bytes.len());
    let strict = split_multipart_offsets(&bytes[start..end], boundary.as_bytes())
        .expect("an unambiguous multipart is closed");
    assert_eq!(strict.len(), children.len(), "strict split and tree disagree");
    for (&(s, e), &c) in strict.iter().zip(children.iter()) {
        let child = &tree.parts[c as usize];
        assert_eq!(start + s, child.offset_header as usize);
        assert_eq!(start + e, child.offset_end as usize);
    }
    // Pretend the first child is a verified signed entity and check what extraction proves.
    let Some(&first) = children.first() else { return };
    let signed = &tree.parts[first as usize];
    let (lo, hi) = (signed.offset_header as usize, signed.offset_end as usize);
    let proof = Proof {
        grants: vec![Grant {
            address: "signer@example.com".into(),
            covers: Coverage::Parts(subtree(tree, first as usize)),
        }],
        ..Default::default()
    };
    let ex = imipd::extract::extract_parsed(&parsed, &proof);
    // What the signer signed, read on its own: proven objects must be among these.
    let alone = imipd::extract::extract(&bytes[lo..hi]);
    let key = |inc: &imipd::itip::Incoming| -> String {
        let mut k = format!("{}|{}|{}", inc.method.as_str(), inc.kind, inc.uid);
        for c in &inc.components {
            k.push_str(&c.to_ical());
        }
        k
    };
    let signed: std::collections::HashSet<String> = alone.objects.iter().map(|f| key(f)).collect();
    for found in ex.objects.iter().filter(|f| !f.proven.is_empty()) {
        assert!(
            signed.contains(&key(found)),
            "object {} proven but not what the signed entity holds",
            found.uid
        );
    }
});

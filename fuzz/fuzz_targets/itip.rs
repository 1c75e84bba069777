//! Any message through extract and the iTIP engine, against no stored object and against the
//! object the first pass created: decide must return a decision, never panic.
#![no_main]
use imipd::itip::{decide, Context, Decision};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ex = imipd::extract::extract(data);
    let proven: Vec<String> = ex.from.iter().cloned().collect();
    let delegates = std::collections::HashMap::new();
    for inc in &ex.objects {
        for rcpt in ex.recipients.iter().take(3) {
            let ctx = Context {
                recipient: rcpt,
                proven: &proven,
                delegates: &delegates,
                delete_on_cancel: false,
                now: 0,
            };
            let first = decide(None, inc, &ctx);
            if let Decision::Applied { object: Some(obj), .. } = &first {
                let _ = decide(Some(obj), inc, &ctx);
                let _ = imipd::itip::busy_periods(obj, rcpt, 100);
            }
        }
    }
});

//! Any bytes as a mail message: extract must return, never panic or balloon.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = imipd::extract::extract(data);
});

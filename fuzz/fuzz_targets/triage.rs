//! The triage that lets ordinary mail pass without a parse: whatever it takes for ordinary
//! mail, the full reading must find no calendar in either, unless the full reading itself
//! flags the message as ambiguous (it then proves nothing, so no calendar of it could be
//! applied: the triage's RFC reading is the one every other reader has).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if imipd::pipeline::triage::certainly_no_calendar(data) {
        let (bytes, bare) = imipd::message::normalize_line_ends(data);
        let parsed = imipd::message::Parsed::new(&bytes, bare);
        if parsed.ambiguity.is_some() {
            return;
        }
        assert!(
            !imipd::extract::may_hold_calendar(&parsed),
            "triage took a message that may hold a calendar for ordinary mail"
        );
        let ex = imipd::extract::extract(data);
        assert!(ex.objects.is_empty() && ex.refused.is_empty());
    }
});

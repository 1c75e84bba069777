//! Any text as iCalendar: parse, serialize, parse again; expansion stays bounded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cals) = imipd::ical::parse(&text) {
        for cal in &cals {
            let again = imipd::ical::parse(&cal.to_ical()).expect("serialized output parses");
            assert_eq!(again.len(), 1);
            let tzs: Vec<&imipd::ical::Component> = cal.subs_named("VTIMEZONE").collect();
            let map = imipd::ical::time::TzMap::new(&tzs);
            let comps: Vec<&imipd::ical::Component> = cal.subs.iter().filter(|c| c.name == "VEVENT").collect();
            let occ = imipd::ical::time::expand(&comps, &map, 100);
            assert!(occ.len() <= 100 + comps.len());
        }
    }
});

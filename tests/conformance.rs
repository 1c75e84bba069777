//! iTIP conformance (RFC 5546) over iMIP (RFC 6047), driven through the real `imipd` binary the
//! way the command-line contract is used: `import`, `process`, `export`, `freebusy`.
//!
//! Cast: ALICE (local organizer), BOB (local attendee), CAROL (external attendee), MALLORY
//! (not invited). Every test gets a fresh data dir.

mod common;
use common::*;

fn only(outs: &[Outcome]) -> &Outcome {
    assert_eq!(outs.len(), 1, "expected one outcome line, got {outs:#?}");
    &outs[0]
}

#[track_caller]
fn assert_outcome(outs: &[Outcome], outcome: &str) -> Outcome {
    let o = only(outs).clone();
    assert_eq!(o.outcome, outcome, "unexpected outcome: {o:#?}");
    o
}

/// ALICE invites BOB and CAROL; BOB's copy is created.
fn bob_invited(env: &Env, comp: Comp) {
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[comp]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
}

/// The organizer's own copy in ALICE's calendar.
fn alice_has(env: &Env, comps: &[Comp]) {
    env.import(ALICE, &vcal("", comps));
}

/// A REPLY from `who` with `partstat` for `uid`.
fn reply(uid: &str, who: &str, partstat: &str) -> Comp {
    Comp::event(uid)
        .stamp("20260110T090000Z")
        .without("SUMMARY")
        .att(who, partstat)
}

fn send_reply(env: &Env, from: &str, comp: Comp) -> Vec<Outcome> {
    let msg = imip(from, &[ALICE], "REPLY", &vcal("REPLY", &[comp]));
    env.process(&msg, &[ALICE])
}

/// A daily series of five, 2026-03-02..06 10:00-11:00 UTC.
fn daily(uid: &str) -> Comp {
    invite(uid).add("RRULE:FREQ=DAILY;COUNT=5")
}

// =============================================================================================
// PUBLISH

/// RFC 5546 3.2.1: a PUBLISH from the organizer is stored as is.
#[test]
fn publish_from_organizer_is_stored() {
    let env = Env::new();
    let ev = Comp::event("pub-1");
    let msg = imip(ALICE, &[BOB], "PUBLISH", &vcal("PUBLISH", &[ev]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.method, "PUBLISH");
    assert_eq!(o.component, "VEVENT");
    assert_eq!(o.recipient, format!("mailto:{BOB}"));
    assert!(env
        .export(BOB, "pub-1")
        .contains("SUMMARY:Planning meeting"));
}

/// RFC 5546 3.2.1 and 6.1 (security): a PUBLISH from someone other than the organizer is refused.
#[test]
fn publish_from_non_organizer_is_rejected() {
    let env = Env::new();
    let msg = imip(
        MALLORY,
        &[BOB],
        "PUBLISH",
        &vcal("PUBLISH", &[Comp::event("pub-2")]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert_eq!(env.export_run(BOB, Some("pub-2")).code, 1);
}

/// RFC 5546 3.4.1: a published VTODO is stored.
#[test]
fn publish_vtodo_is_stored() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "PUBLISH",
        &vcal("PUBLISH", &[Comp::todo("pub-todo")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VTODO");
    assert!(env.export(BOB, "pub-todo").contains("BEGIN:VTODO"));
}

// =============================================================================================
// REQUEST

/// RFC 5546 3.2.2: a REQUEST creates the event in an invited attendee's calendar.
#[test]
fn request_creates_event_for_invited_attendee() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-1")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.uid, "req-1");
    assert_eq!(o.method, "REQUEST");
    let stored = env.export(BOB, "req-1");
    assert_eq!(partstat(&stored, BOB).as_deref(), Some("NEEDS-ACTION"));
    assert!(stored.contains("ORGANIZER;CN=Alice:mailto:alice@example.org"));
}

/// RFC 6047 2.2.1 / command-line contract: without --recipient the message's To recipients are
/// used.
#[test]
fn request_goes_to_the_to_recipients_by_default() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB, CAROL],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-to")]),
    );
    let outs = env.process(&msg, &[]);
    assert_eq!(outs.len(), 2, "{outs:#?}");
    assert!(outs.iter().all(|o| o.outcome == "applied"), "{outs:#?}");
    let who: Vec<&str> = outs.iter().map(|o| o.recipient.as_str()).collect();
    assert!(who.contains(&"mailto:bob@example.org"));
    assert!(who.contains(&"mailto:carol@example.net"));
}

/// RFC 5546 3.2.2: a REQUEST whose attendees do not include the recipient is refused.
#[test]
fn request_for_uninvited_recipient_is_rejected() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[MALLORY],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-2")]),
    );
    let o = assert_outcome(&env.process(&msg, &[MALLORY]), "rejected");
    assert!(o.reason.contains("not an attendee"), "{}", o.reason);
    assert_eq!(env.export_run(MALLORY, Some("req-2")).code, 1);
}

/// RFC 5546 3.2.2 (ORGANIZER is required): a REQUEST without ORGANIZER cannot be attributed.
#[test]
fn request_without_organizer_is_rejected() {
    let env = Env::new();
    let ev = invite("req-noorg").without("ORGANIZER");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(o.reason.contains("ORGANIZER"), "{}", o.reason);
}

/// RFC 5546 3.2.2 and 1.4: REQUEST is an organizer method; an attendee cannot send one.
#[test]
fn request_from_attendee_is_rejected() {
    let env = Env::new();
    let msg = imip(
        CAROL,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-3")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(o.reason.contains("organizer"), "{}", o.reason);
}

/// RFC 5546 6.1.1 / RFC 6047 3: without proof of the sender nothing is applied.
#[test]
fn request_not_proven_without_trust_sender_is_rejected() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-4")]),
    );
    let o = assert_outcome(&env.process_unproven(&msg, &[BOB]), "rejected");
    assert!(
        o.reason.contains("nobody") || o.reason.contains("not proven"),
        "{}",
        o.reason
    );
    assert_eq!(env.export_run(BOB, Some("req-4")).code, 1);
}

/// `process --trust-sender` with a config file (`--config` before the command).
fn process_with_config(env: &Env, config: &str, eml: &str, recipients: &[&str]) -> Run {
    let cfg = env.file("toml", config.as_bytes());
    let eml = env.file("eml", eml.as_bytes());
    let mut args: Vec<String> = vec![
        "--config".into(),
        cfg.to_str().unwrap().into(),
        "--data-dir".into(),
        env.data.to_str().unwrap().into(),
        "process".into(),
        "--outbox".into(),
        env.outbox.to_str().unwrap().into(),
        "--trust-sender".into(),
    ];
    for r in recipients {
        args.push("--recipient".into());
        args.push(r.to_string());
    }
    args.push(eml.to_str().unwrap().into());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_limited(&a, None, LIMIT);
    assert_eq!(r.code, 0, "process failed: {}", r.stderr);
    r
}

/// RFC 5545 3.2.18 (SENT-BY) with RFC 5546 6.1.1 and DESIGN (SENT-BY is not proof of authority):
/// an address of the organizer's own domain naming itself SENT-BY (a mailing list, a colleague)
/// is not the organizer's delegate.
#[test]
fn request_from_same_domain_sent_by_is_rejected() {
    let env = Env::new();
    let ev = invite("req-sb1")
        .set("ORGANIZER;CN=Alice;SENT-BY=\"mailto:office@example.org\":mailto:alice@example.org");
    let msg = imip(
        "office@example.org",
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[ev]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(
        o.reason.contains("must come from the organizer"),
        "{}",
        o.reason
    );
    assert_eq!(env.export_run(BOB, Some("req-sb1")).code, 1);
}

/// DESIGN ([policy] delegates): a configured delegate of the organizer may send for it.
#[test]
fn request_from_configured_delegate_is_applied() {
    let env = Env::new();
    let ev = invite("req-sb3")
        .set("ORGANIZER;CN=Alice;SENT-BY=\"mailto:office@example.org\":mailto:alice@example.org");
    let msg = imip(
        "office@example.org",
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[ev]),
    );
    let cfg = "[policy]\ndelegates = { \"alice@example.org\" = [\"office@example.org\"] }\n";
    let r = process_with_config(&env, cfg, &msg, &[BOB]);
    assert_outcome(&parse_outcomes(&r.stdout), "applied");
    // The delegate of another user is not Alice's delegate.
    let env = Env::new();
    let cfg = "[policy]\ndelegates = { \"dora@example.org\" = [\"office@example.org\"] }\n";
    let r = process_with_config(&env, cfg, &msg, &[BOB]);
    assert_outcome(&parse_outcomes(&r.stdout), "rejected");
}

/// RFC 5545 3.2.18 with RFC 5546 6.1: a SENT-BY in another domain is not honoured (anyone could
/// name themselves SENT-BY).
#[test]
fn request_from_sent_by_other_domain_is_rejected() {
    let env = Env::new();
    let ev = invite("req-sb2")
        .set("ORGANIZER;CN=Alice;SENT-BY=\"mailto:mallory@evil.example\":mailto:alice@example.org");
    let msg = imip(MALLORY, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5545 3.3.3 (CAL-ADDRESS) and RFC 5321 2.4: scheme and domain compare case-insensitively
/// (DESIGN: so does the local part).
#[test]
fn request_addresses_compare_case_insensitively() {
    let env = Env::new();
    let ev = Comp::event("req-case")
        .set("ORGANIZER:MAILTO:Alice@EXAMPLE.org")
        .add("ATTENDEE;PARTSTAT=NEEDS-ACTION:MAILTO:Bob@Example.ORG");
    let msg = imip(
        "ALICE@example.org",
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[ev]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
}

/// RFC 5546 3.2.2 / 2.1.5: an update with a higher SEQUENCE replaces the event.
#[test]
fn request_with_higher_sequence_updates_event() {
    let env = Env::new();
    bob_invited(&env, invite("req-5"));
    let upd = invite("req-5")
        .seq(1)
        .stamp("20260105T090000Z")
        .set("DTSTART:20260303T140000Z")
        .set("DTEND:20260303T150000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "req-5");
    assert!(stored.contains("DTSTART:20260303T140000Z"), "{stored}");
    assert!(stored.contains("SEQUENCE:1"));
}

/// RFC 5546 2.1.5: a REQUEST with a lower SEQUENCE than the stored one is ignored.
#[test]
fn request_with_older_sequence_is_ignored() {
    let env = Env::new();
    bob_invited(&env, invite("req-6").seq(3));
    let old = invite("req-6")
        .seq(2)
        .stamp("20260201T000000Z")
        .set("SUMMARY:Old");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[old]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    assert!(o.reason.contains("SEQUENCE"), "{}", o.reason);
    assert!(env
        .export(BOB, "req-6")
        .contains("SUMMARY:Planning meeting"));
}

/// RFC 5546 2.1.5: with equal SEQUENCE, a newer DTSTAMP wins.
#[test]
fn request_same_sequence_newer_dtstamp_is_applied() {
    let env = Env::new();
    bob_invited(&env, invite("req-7").seq(1));
    let newer = invite("req-7")
        .seq(1)
        .stamp("20260102T090000Z")
        .set("LOCATION:Room 2");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[newer]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert!(env.export(BOB, "req-7").contains("LOCATION:Room 2"));
}

/// RFC 5546 2.1.5: with equal SEQUENCE, an older DTSTAMP is ignored.
#[test]
fn request_same_sequence_older_dtstamp_is_ignored() {
    let env = Env::new();
    bob_invited(&env, invite("req-8").seq(1).stamp("20260105T000000Z"));
    let older = invite("req-8")
        .seq(1)
        .stamp("20260104T000000Z")
        .set("LOCATION:Stale");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[older]));
    assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    assert!(!env.export(BOB, "req-8").contains("Stale"));
}

/// RFC 5546 2.1.5 (DESIGN): an identical REQUEST delivered again (another Message-ID) is
/// ignored and keeps the attendee's local PARTSTAT.
#[test]
fn identical_request_redelivered_is_ignored_and_keeps_local_partstat() {
    let env = Env::new();
    let ev = invite("req-9");
    bob_invited(&env, ev.clone());
    // Bob accepts in his calendar program.
    let accepted = env.export(BOB, "req-9").replace(
        "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob",
        "PARTSTAT=ACCEPTED:mailto:bob",
    );
    env.import(BOB, &accepted);
    let again = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    assert_outcome(&env.process(&again, &[BOB]), "ignored");
    assert_eq!(
        partstat(&env.export(BOB, "req-9"), BOB).as_deref(),
        Some("ACCEPTED")
    );
}

/// RFC 6047 2.1 / DESIGN (processed-message log): the same message processed twice applies once;
/// the second time is a duplicate and the store is unchanged.
#[test]
fn same_message_processed_twice_is_ignored_as_duplicate() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[invite("req-10")]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let before = env.export(BOB, "req-10");
    let o = assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    assert!(o.reason.contains("already processed"), "{}", o.reason);
    assert_eq!(env.export(BOB, "req-10"), before);
}

/// RFC 6047 2.1 / DESIGN: a duplicate REPLY message does not apply twice either.
#[test]
fn same_reply_processed_twice_is_ignored_as_duplicate() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-dup")]);
    let msg = imip(
        CAROL,
        &[ALICE],
        "REPLY",
        &vcal("REPLY", &[reply("rep-dup", CAROL, "ACCEPTED")]),
    );
    assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    let before = env.export(ALICE, "rep-dup");
    assert_outcome(&env.process(&msg, &[ALICE]), "ignored");
    assert_eq!(env.export(ALICE, "rep-dup"), before);
}

/// RFC 5546 3.2.2 with DESIGN: an update naming another ORGANIZER is refused.
#[test]
fn request_with_changed_organizer_is_rejected() {
    let env = Env::new();
    bob_invited(&env, invite("req-11"));
    let hijack = invite("req-11")
        .seq(5)
        .set("ORGANIZER:mailto:mallory@evil.example");
    let msg = imip(MALLORY, &[BOB], "REQUEST", &vcal("REQUEST", &[hijack]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(o.reason.contains("ORGANIZER changed"), "{}", o.reason);
    assert!(env
        .export(BOB, "req-11")
        .contains("mailto:alice@example.org"));
}

/// RFC 5546 3.2.2 with DESIGN (PARTSTAT on an organizer update): a higher SEQUENCE asks the
/// attendee again, so the organizer's PARTSTAT (NEEDS-ACTION) replaces the local ACCEPTED.
#[test]
fn organizer_update_with_higher_sequence_resets_partstat() {
    let env = Env::new();
    bob_invited(&env, invite("keep-1"));
    let accepted = env.export(BOB, "keep-1").replace(
        "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob",
        "PARTSTAT=ACCEPTED:mailto:bob",
    );
    env.import(BOB, &accepted);
    let upd = invite("keep-1")
        .seq(1)
        .stamp("20260106T000000Z")
        .set("LOCATION:Room 7");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "keep-1");
    assert!(stored.contains("LOCATION:Room 7"));
    assert_eq!(partstat(&stored, BOB).as_deref(), Some("NEEDS-ACTION"));
}

/// DESIGN (PARTSTAT on an organizer update): same SEQUENCE and same time (a SUMMARY edit with a
/// newer DTSTAMP) keeps the attendee's local PARTSTAT.
#[test]
fn organizer_summary_edit_keeps_attendee_partstat() {
    let env = Env::new();
    bob_invited(&env, invite("keep-2"));
    let accepted = env.export(BOB, "keep-2").replace(
        "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob",
        "PARTSTAT=ACCEPTED:mailto:bob",
    );
    env.import(BOB, &accepted);
    let upd = invite("keep-2")
        .stamp("20260106T000000Z")
        .set("SUMMARY:Planning meeting (agenda attached)");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "keep-2");
    assert!(stored.contains("agenda attached"));
    assert_eq!(partstat(&stored, BOB).as_deref(), Some("ACCEPTED"));
}

/// Command-line contract: `process` with no local recipient says so on stderr and how to name
/// one; it still exits 0.
#[test]
fn process_without_local_recipient_says_how_to_name_one() {
    let env = Env::new();
    let cfg = env.file("toml", b"local_domains = [\"example.org\"]\n");
    let msg = imip(
        ALICE,
        &[CAROL],
        "REQUEST",
        &vcal("REQUEST", &[invite("norcpt-1")]),
    );
    let eml = env.file("eml", msg.as_bytes());
    let r = run_limited(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            env.data.to_str().unwrap(),
            "process",
            "--trust-sender",
            eml.to_str().unwrap(),
        ],
        None,
        LIMIT,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("no local recipient"), "{}", r.stderr);
    assert!(r.stderr.contains("--recipient"), "{}", r.stderr);
}

/// RFC 5545 3.6.6 (VALARM belongs to the user) with DESIGN: the attendee's own alarm survives an
/// organizer update.
#[test]
fn organizer_update_keeps_attendee_valarm() {
    let env = Env::new();
    bob_invited(&env, invite("keep-2"));
    let with_alarm = env.export(BOB, "keep-2").replace(
        "END:VEVENT",
        "BEGIN:VALARM\nACTION:DISPLAY\nDESCRIPTION:Bob's reminder\nTRIGGER:-PT10M\nEND:VALARM\nEND:VEVENT",
    );
    env.import(BOB, &with_alarm);
    let upd = invite("keep-2").seq(1).stamp("20260106T000000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "keep-2");
    assert!(stored.contains("Bob's reminder"), "{stored}");
    assert!(stored.contains("SEQUENCE:1"));
}

/// RFC 5545 3.8.8.2 (X- properties) with DESIGN: the attendee's own X- data survives an
/// organizer update.
#[test]
fn organizer_update_keeps_attendee_x_properties() {
    let env = Env::new();
    bob_invited(&env, invite("keep-3"));
    let with_x = env
        .export(BOB, "keep-3")
        .replace("END:VEVENT", "X-BOB-PRIVATE-NOTE:bring slides\nEND:VEVENT");
    env.import(BOB, &with_x);
    let upd = invite("keep-3").seq(1).stamp("20260106T000000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert!(env
        .export(BOB, "keep-3")
        .contains("X-BOB-PRIVATE-NOTE:bring slides"));
}

/// RFC 5546 3.2.2 and RFC 5545 3.8.4.4: a recurring REQUEST with master and overrides is stored
/// whole.
#[test]
fn request_recurring_master_and_overrides_is_stored() {
    let env = Env::new();
    let master = daily("rec-1");
    let ovr = invite("rec-1")
        .rid("20260304T100000Z")
        .set("DTSTART:20260304T150000Z")
        .set("DTEND:20260304T160000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[master, ovr]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "rec-1");
    assert_eq!(components(&stored, "VEVENT").len(), 2, "{stored}");
    assert!(component_for(&stored, "VEVENT", Some("20260304T100000Z")).is_some());
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260310T000000Z");
    let busy = busy_periods(&fb);
    assert_eq!(busy.len(), 5, "{fb}");
    assert!(busy
        .iter()
        .any(|(_, p)| p == "20260304T150000Z/20260304T160000Z"));
}

/// RFC 5546 3.2.2.5 (rescheduling one instance): a REQUEST with only a RECURRENCE-ID adds that
/// override and keeps the series.
#[test]
fn request_for_one_instance_adds_override() {
    let env = Env::new();
    bob_invited(&env, daily("rec-2"));
    let ovr = invite("rec-2")
        .rid("20260303T100000Z")
        .stamp("20260107T000000Z")
        .set("DTSTART:20260303T120000Z")
        .set("DTEND:20260303T130000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ovr]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "rec-2");
    assert!(component_for(&stored, "VEVENT", None)
        .unwrap()
        .contains("RRULE:FREQ=DAILY;COUNT=5"));
    let o = component_for(&stored, "VEVENT", Some("20260303T100000Z")).expect("override");
    assert!(o.contains("DTSTART:20260303T120000Z"));
}

/// RFC 5546 3.4.2: a VTODO REQUEST creates the task.
#[test]
fn request_vtodo_creates_task() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[task("todo-1")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VTODO");
    let stored = env.export(BOB, "todo-1");
    assert!(stored.contains("BEGIN:VTODO"));
    assert!(stored.contains("DUE:20260306T170000Z"));
}

/// RFC 5546 3.4.2 / 2.1.5: a VTODO update with a lower SEQUENCE is ignored.
#[test]
fn request_vtodo_with_older_sequence_is_ignored() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[task("todo-2").seq(2)]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let old = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[task("todo-2").seq(1)]),
    );
    assert_outcome(&env.process(&old, &[BOB]), "ignored");
}

/// RFC 6047 2.4: the METHOD in the iCalendar body wins over a disagreeing Content-Type
/// parameter.
#[test]
fn method_in_body_wins_over_content_type() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "PUBLISH",
        &vcal("REQUEST", &[invite("mix-1")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.method, "REQUEST");
}

/// RFC 6047 2.4 and QUIRKS 1.2: the same object sent twice in one message (inline + .ics
/// attachment) is applied once.
#[test]
fn duplicate_calendar_parts_apply_once() {
    let env = Env::new();
    let ics = vcal("REQUEST", &[invite("dup-parts")]);
    let b = "=_outer";
    let msg = format!(
        "From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: Invitation\r\nMessage-ID: {}\r\n\
         Date: Mon, 05 Jan 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n\
         Content-Type: text/calendar; charset=utf-8; method=REQUEST\r\n\r\n{ics}--{b}\r\n\
         Content-Type: application/ics; name=\"invite.ics\"\r\n\
         Content-Disposition: attachment; filename=\"invite.ics\"\r\n\r\n{ics}--{b}--\r\n",
        message_id()
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
}

/// RFC 3464 / RFC 6047 3: a calendar inside a delivery report is not a new iMIP message.
#[test]
fn calendar_inside_a_bounce_is_not_applied() {
    let env = Env::new();
    let inner = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[invite("bounce-1")]),
    );
    let b = "=_report";
    let msg = format!(
        "From: MAILER-DAEMON <mailer-daemon@example.org>\r\nTo: <{BOB}>\r\n\
         Subject: Undelivered Mail\r\nMessage-ID: {}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"{b}\"\r\n\r\n\
         --{b}\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n--{b}\r\n\
         Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
         Final-Recipient: rfc822; x@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
         --{b}\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--{b}--\r\n",
        message_id()
    );
    let outs = env.process(&msg, &[BOB]);
    assert!(outs.iter().all(|o| o.outcome != "applied"), "{outs:#?}");
    assert_eq!(env.export_run(BOB, Some("bounce-1")).code, 1);
}

/// RFC 6047 2.4: a message without a calendar prints nothing and exits 0.
#[test]
fn message_without_calendar_prints_nothing() {
    let env = Env::new();
    let msg = format!(
        "From: <{ALICE}>\r\nTo: <{BOB}>\r\nSubject: hi\r\nMessage-ID: {}\r\n\r\nJust text.\r\n",
        message_id()
    );
    assert!(env.process(&msg, &[BOB]).is_empty());
}

// =============================================================================================
// REPLY

/// RFC 5546 3.2.3: an ACCEPTED reply updates the attendee's PARTSTAT on the organizer's copy.
#[test]
fn reply_accepted_updates_partstat() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-1")]);
    let o = assert_outcome(
        &send_reply(&env, CAROL, reply("rep-1", CAROL, "ACCEPTED")),
        "applied",
    );
    assert_eq!(o.method, "REPLY");
    let stored = env.export(ALICE, "rep-1");
    assert_eq!(partstat(&stored, CAROL).as_deref(), Some("ACCEPTED"));
    assert_eq!(partstat(&stored, BOB).as_deref(), Some("NEEDS-ACTION"));
}

/// RFC 5546 3.2.3: a DECLINED reply is recorded.
#[test]
fn reply_declined_updates_partstat() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-2")]);
    assert_outcome(
        &send_reply(&env, BOB, reply("rep-2", BOB, "DECLINED")),
        "applied",
    );
    assert_eq!(
        partstat(&env.export(ALICE, "rep-2"), BOB).as_deref(),
        Some("DECLINED")
    );
}

/// RFC 5546 3.2.3: a TENTATIVE reply is recorded and a later ACCEPTED one replaces it.
#[test]
fn reply_tentative_then_accepted() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-3")]);
    assert_outcome(
        &send_reply(&env, CAROL, reply("rep-3", CAROL, "TENTATIVE")),
        "applied",
    );
    assert_eq!(
        partstat(&env.export(ALICE, "rep-3"), CAROL).as_deref(),
        Some("TENTATIVE")
    );
    let later = reply("rep-3", CAROL, "ACCEPTED").stamp("20260111T090000Z");
    assert_outcome(&send_reply(&env, CAROL, later), "applied");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-3"), CAROL).as_deref(),
        Some("ACCEPTED")
    );
}

/// RFC 5546 3.2.3 and 2.1.5: a reply older than the one already applied is ignored.
#[test]
fn reply_with_older_dtstamp_is_ignored() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-4")]);
    let newer = reply("rep-4", CAROL, "ACCEPTED").stamp("20260112T000000Z");
    assert_outcome(&send_reply(&env, CAROL, newer), "applied");
    let older = reply("rep-4", CAROL, "DECLINED").stamp("20260111T000000Z");
    assert_outcome(&send_reply(&env, CAROL, older), "ignored");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-4"), CAROL).as_deref(),
        Some("ACCEPTED")
    );
}

/// RFC 5546 2.1.5: a reply to an older SEQUENCE of the event is ignored.
#[test]
fn reply_to_older_sequence_is_ignored() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-5").seq(3)]);
    let old = reply("rep-5", CAROL, "DECLINED").seq(2);
    assert_outcome(&send_reply(&env, CAROL, old), "ignored");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-5"), CAROL).as_deref(),
        Some("NEEDS-ACTION")
    );
}

/// RFC 5546 3.2.3 ("party crasher"): a REPLY from someone who is not an attendee is refused.
#[test]
fn reply_from_party_crasher_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-6")]);
    let o = assert_outcome(
        &send_reply(&env, MALLORY, reply("rep-6", MALLORY, "ACCEPTED")),
        "rejected",
    );
    assert!(o.reason.contains("mallory"), "{}", o.reason);
    let stored = env.export(ALICE, "rep-6");
    assert!(attendee_line(&stored, MALLORY).is_none());
}

/// RFC 5546 3.2.3 / 6.1: an attendee may only answer for itself.
#[test]
fn reply_for_another_attendee_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-7")]);
    let o = assert_outcome(
        &send_reply(&env, CAROL, reply("rep-7", BOB, "DECLINED")),
        "rejected",
    );
    assert!(o.reason.contains("attendee"), "{}", o.reason);
    assert_eq!(
        partstat(&env.export(ALICE, "rep-7"), BOB).as_deref(),
        Some("NEEDS-ACTION")
    );
}

/// RFC 5546 3.2.3: a REPLY for an object the organizer does not have is ignored.
#[test]
fn reply_for_unknown_uid_is_ignored() {
    let env = Env::new();
    assert_outcome(
        &send_reply(&env, CAROL, reply("nope", CAROL, "ACCEPTED")),
        "ignored",
    );
}

/// RFC 5546 3.2.3: REPLYs go to the organizer; delivered to an attendee's calendar they are
/// refused.
#[test]
fn reply_to_a_recipient_who_is_not_the_organizer_is_rejected() {
    let env = Env::new();
    bob_invited(&env, invite("rep-8"));
    let msg = imip(
        CAROL,
        &[BOB],
        "REPLY",
        &vcal("REPLY", &[reply("rep-8", CAROL, "ACCEPTED")]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(o.reason.contains("not the organizer"), "{}", o.reason);
}

/// RFC 5546 3.2.3 with DESIGN: a REPLY naming another ORGANIZER than the stored one is refused.
#[test]
fn reply_with_changed_organizer_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-9")]);
    let r = reply("rep-9", CAROL, "ACCEPTED").set("ORGANIZER:mailto:other@example.org");
    assert_outcome(&send_reply(&env, CAROL, r), "rejected");
}

/// RFC 5546 3.2.3 and QUIRKS 1.8 (Outlook 2010): a REPLY without ORGANIZER is accepted when the
/// recipient is the stored organizer.
#[test]
fn reply_without_organizer_is_accepted_by_stored_organizer() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-10")]);
    let r = reply("rep-10", CAROL, "ACCEPTED").without("ORGANIZER");
    assert_outcome(&send_reply(&env, CAROL, r), "applied");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-10"), CAROL).as_deref(),
        Some("ACCEPTED")
    );
}

/// RFC 5546 3.2.3: a REPLY without ORGANIZER delivered to someone who is not the stored
/// organizer is refused.
#[test]
fn reply_without_organizer_to_non_organizer_is_rejected() {
    let env = Env::new();
    bob_invited(&env, invite("rep-11"));
    let r = reply("rep-11", CAROL, "ACCEPTED").without("ORGANIZER");
    let msg = imip(CAROL, &[BOB], "REPLY", &vcal("REPLY", &[r]));
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5545 3.2.18 with DESIGN: an attendee's SENT-BY of the same domain is not a delegate;
/// one attendee does not answer for another.
#[test]
fn reply_from_attendee_sent_by_same_domain_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-12")]);
    let r = Comp::event("rep-12")
        .stamp("20260110T090000Z")
        .add("ATTENDEE;PARTSTAT=ACCEPTED;SENT-BY=\"mailto:secretary@example.net\":mailto:carol@example.net");
    assert_outcome(&send_reply(&env, "secretary@example.net", r), "rejected");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-12"), CAROL).as_deref(),
        Some("NEEDS-ACTION")
    );
}

/// DESIGN: a SENT-BY the stored object already records for that attendee may answer for it.
#[test]
fn reply_from_sent_by_recorded_in_stored_object_is_applied() {
    let env = Env::new();
    let ev = invite("rep-12b").add(
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;SENT-BY=\"mailto:secretary@example.net\":mailto:erin@example.net",
    );
    alice_has(&env, &[ev]);
    let r = Comp::event("rep-12b")
        .stamp("20260110T090000Z")
        .add("ATTENDEE;PARTSTAT=ACCEPTED;SENT-BY=\"mailto:secretary@example.net\":mailto:erin@example.net");
    assert_outcome(&send_reply(&env, "secretary@example.net", r), "applied");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-12b"), "erin@example.net").as_deref(),
        Some("ACCEPTED")
    );
}

/// RFC 5545 3.2.18 with RFC 5546 6.1: an attendee's SENT-BY in another domain is not honoured.
#[test]
fn reply_from_attendee_sent_by_other_domain_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("rep-13")]);
    let r = Comp::event("rep-13")
        .stamp("20260110T090000Z")
        .add("ATTENDEE;PARTSTAT=DECLINED;SENT-BY=\"mailto:mallory@evil.example\":mailto:carol@example.net");
    assert_outcome(&send_reply(&env, MALLORY, r), "rejected");
    assert_eq!(
        partstat(&env.export(ALICE, "rep-13"), CAROL).as_deref(),
        Some("NEEDS-ACTION")
    );
}

/// RFC 5546 3.2.3 and RFC 5545 3.8.4.4: a REPLY for one instance of a series creates that
/// instance's override on the organizer's copy; the master is untouched.
#[test]
fn reply_for_one_instance_creates_override() {
    let env = Env::new();
    alice_has(&env, &[daily("rep-14")]);
    let r = reply("rep-14", CAROL, "DECLINED")
        .rid("20260304T100000Z")
        .set("DTSTART:20260304T100000Z")
        .set("DTEND:20260304T110000Z");
    assert_outcome(&send_reply(&env, CAROL, r), "applied");
    let stored = env.export(ALICE, "rep-14");
    let master = component_for(&stored, "VEVENT", None).expect("master");
    assert_eq!(partstat(master, CAROL).as_deref(), Some("NEEDS-ACTION"));
    let inst = component_for(&stored, "VEVENT", Some("20260304T100000Z")).expect("override");
    assert_eq!(partstat(inst, CAROL).as_deref(), Some("DECLINED"));
    assert!(inst.contains("DTSTART:20260304T100000Z"), "{inst}");
    assert!(!inst.contains("RRULE"), "{inst}");
}

/// RFC 5546 3.2.3: a REPLY for an instance that already has an override updates it.
#[test]
fn reply_for_existing_override_updates_it() {
    let env = Env::new();
    let ovr = invite("rep-15")
        .rid("20260303T100000Z")
        .set("DTSTART:20260303T130000Z")
        .set("DTEND:20260303T140000Z");
    alice_has(&env, &[daily("rep-15"), ovr]);
    let r = reply("rep-15", BOB, "TENTATIVE").rid("20260303T100000Z");
    assert_outcome(&send_reply(&env, BOB, r), "applied");
    let stored = env.export(ALICE, "rep-15");
    assert_eq!(components(&stored, "VEVENT").len(), 2, "{stored}");
    let inst = component_for(&stored, "VEVENT", Some("20260303T100000Z")).unwrap();
    assert_eq!(partstat(inst, BOB).as_deref(), Some("TENTATIVE"));
    assert!(inst.contains("DTSTART:20260303T130000Z"));
}

/// RFC 5545 3.2.13 (RANGE=THISANDFUTURE) with RFC 5546 3.2.3: the reply applies to that
/// instance and every later one.
#[test]
fn reply_this_and_future_applies_to_later_instances() {
    let env = Env::new();
    let early = invite("rep-16").rid("20260303T100000Z");
    let late = invite("rep-16").rid("20260305T100000Z");
    alice_has(&env, &[daily("rep-16"), early, late]);
    let r = reply("rep-16", CAROL, "DECLINED")
        .set("RECURRENCE-ID;RANGE=THISANDFUTURE:20260304T100000Z");
    assert_outcome(&send_reply(&env, CAROL, r), "applied");
    let stored = env.export(ALICE, "rep-16");
    let ps = |rid: Option<&str>| {
        partstat(
            component_for(&stored, "VEVENT", rid).expect("component"),
            CAROL,
        )
    };
    assert_eq!(ps(None).as_deref(), Some("NEEDS-ACTION"), "{stored}");
    assert_eq!(
        ps(Some("20260303T100000Z")).as_deref(),
        Some("NEEDS-ACTION")
    );
    assert_eq!(ps(Some("20260304T100000Z")).as_deref(), Some("DECLINED"));
    assert_eq!(ps(Some("20260305T100000Z")).as_deref(), Some("DECLINED"));
}

/// RFC 5546 3.2.3 with master and overrides in one REPLY: each part is applied to its component.
#[test]
fn reply_for_master_and_instance_together() {
    let env = Env::new();
    alice_has(&env, &[daily("rep-17")]);
    let m = reply("rep-17", CAROL, "ACCEPTED");
    let i = reply("rep-17", CAROL, "DECLINED").rid("20260305T100000Z");
    let msg = imip(CAROL, &[ALICE], "REPLY", &vcal("REPLY", &[m, i]));
    assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    let stored = env.export(ALICE, "rep-17");
    assert_eq!(
        partstat(component_for(&stored, "VEVENT", None).unwrap(), CAROL).as_deref(),
        Some("ACCEPTED")
    );
    assert_eq!(
        partstat(
            component_for(&stored, "VEVENT", Some("20260305T100000Z")).unwrap(),
            CAROL
        )
        .as_deref(),
        Some("DECLINED")
    );
}

/// RFC 5546 2.1.6 and 3.2.2.3 (delegation), RFC 5545 3.2.4/3.2.5: a delegating REPLY records
/// DELEGATED-TO on the delegator and adds the delegate with DELEGATED-FROM.
#[test]
fn reply_delegation_records_delegated_to_and_from() {
    let env = Env::new();
    alice_has(&env, &[invite("del-1")]);
    let r = Comp::event("del-1")
        .stamp("20260110T090000Z")
        .add("ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:dave@example.net\":mailto:carol@example.net")
        .add("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;DELEGATED-FROM=\"mailto:carol@example.net\":mailto:dave@example.net");
    assert_outcome(&send_reply(&env, CAROL, r), "applied");
    let stored = env.export(ALICE, "del-1");
    let carol = attendee_line(&stored, CAROL).expect("carol");
    assert!(carol.contains("PARTSTAT=DELEGATED"), "{carol}");
    assert!(
        carol
            .to_ascii_lowercase()
            .contains("delegated-to=\"mailto:dave@example.net\""),
        "{carol}"
    );
    let dave = attendee_line(&stored, "dave@example.net").expect("delegate recorded");
    assert!(
        dave.to_ascii_lowercase()
            .contains("delegated-from=\"mailto:carol@example.net\""),
        "{dave}"
    );
}

/// RFC 5546 3.2.2.3: the delegate's own REPLY is then accepted.
#[test]
fn reply_from_delegate_is_accepted() {
    let env = Env::new();
    alice_has(&env, &[invite("del-2")]);
    let r = Comp::event("del-2")
        .stamp("20260110T090000Z")
        .add("ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO=\"mailto:dave@example.net\":mailto:carol@example.net");
    assert_outcome(&send_reply(&env, CAROL, r), "applied");
    let d = Comp::event("del-2")
        .stamp("20260111T090000Z")
        .add("ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:carol@example.net\":mailto:dave@example.net");
    assert_outcome(&send_reply(&env, "dave@example.net", d), "applied");
    let stored = env.export(ALICE, "del-2");
    assert_eq!(
        partstat(&stored, "dave@example.net").as_deref(),
        Some("ACCEPTED")
    );
    assert_eq!(partstat(&stored, CAROL).as_deref(), Some("DELEGATED"));
}

/// RFC 5546 3.2.2.3: a delegate nobody delegated to is a party crasher.
#[test]
fn reply_from_unannounced_delegate_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("del-3")]);
    let d = Comp::event("del-3")
        .stamp("20260111T090000Z")
        .add("ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-FROM=\"mailto:nobody@example.net\":mailto:dave@example.net");
    assert_outcome(&send_reply(&env, "dave@example.net", d), "rejected");
}

/// RFC 5546 3.4.3: a VTODO REPLY updates the attendee's status on the task.
#[test]
fn reply_vtodo_updates_partstat() {
    let env = Env::new();
    alice_has(&env, &[task("todo-rep")]);
    let r = Comp::todo("todo-rep")
        .stamp("20260110T090000Z")
        .att(BOB, "COMPLETED");
    let msg = imip(BOB, &[ALICE], "REPLY", &vcal("REPLY", &[r]));
    let o = assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    assert_eq!(o.component, "VTODO");
    assert_eq!(
        partstat(&env.export(ALICE, "todo-rep"), BOB).as_deref(),
        Some("COMPLETED")
    );
}

// =============================================================================================
// ADD

/// RFC 5546 3.2.4: ADD appends an instance to a recurring event (RDATE plus the instance).
#[test]
fn add_appends_instance_to_recurring_event() {
    let env = Env::new();
    bob_invited(&env, daily("add-1"));
    let extra = invite("add-1")
        .seq(1)
        .stamp("20260108T000000Z")
        .set("DTSTART:20260310T100000Z")
        .set("DTEND:20260310T110000Z");
    let msg = imip(ALICE, &[BOB], "ADD", &vcal("ADD", &[extra]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.method, "ADD");
    let stored = env.export(BOB, "add-1");
    let master = component_for(&stored, "VEVENT", None).unwrap();
    assert!(master.contains("RDATE:20260310T100000Z"), "{master}");
    let fb = env.freebusy(BOB, "20260310T000000Z", "20260311T000000Z");
    assert_eq!(
        busy_periods(&fb),
        vec![(
            "BUSY".to_string(),
            "20260310T100000Z/20260310T110000Z".to_string()
        )]
    );
}

/// RFC 5546 3.2.4 and 1.4: ADD from an attendee is refused.
#[test]
fn add_from_non_organizer_is_rejected() {
    let env = Env::new();
    bob_invited(&env, daily("add-2"));
    let extra = invite("add-2")
        .seq(1)
        .set("DTSTART:20260310T100000Z")
        .set("DTEND:20260310T110000Z");
    let msg = imip(CAROL, &[BOB], "ADD", &vcal("ADD", &[extra]));
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5546 3.2.4: ADD for an unknown object is answered with a REFRESH to the organizer.
#[test]
fn add_for_unknown_object_sends_refresh() {
    let env = Env::new();
    let extra = invite("add-3")
        .seq(1)
        .set("DTSTART:20260310T100000Z")
        .set("DTEND:20260310T110000Z");
    let msg = imip(ALICE, &[BOB], "ADD", &vcal("ADD", &[extra]));
    assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    let out = env.outbox();
    assert_eq!(out.len(), 1);
    assert!(header(&out[0], "To").unwrap().contains(ALICE));
    assert!(calendar_of(&out[0]).contains("METHOD:REFRESH"));
}

/// RFC 5546 3.4.4: ADD for a recurring VTODO.
#[test]
fn add_vtodo_instance() {
    let env = Env::new();
    let t = task("add-todo")
        .set("DTSTART:20260302T090000Z")
        .add("RRULE:FREQ=WEEKLY;COUNT=3");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[t]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let extra = task("add-todo")
        .seq(1)
        .stamp("20260108T000000Z")
        .set("DTSTART:20260401T090000Z");
    let msg = imip(ALICE, &[BOB], "ADD", &vcal("ADD", &[extra]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VTODO");
    assert!(env
        .export(BOB, "add-todo")
        .contains("RDATE:20260401T090000Z"));
}

// =============================================================================================
// CANCEL

/// RFC 5546 3.2.5 with DESIGN: CANCEL of the whole event keeps it with STATUS:CANCELLED.
#[test]
fn cancel_whole_event_keeps_it_with_status_cancelled() {
    let env = Env::new();
    bob_invited(&env, invite("can-1"));
    let c = invite("can-1")
        .seq(1)
        .stamp("20260108T000000Z")
        .add("STATUS:CANCELLED");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.method, "CANCEL");
    let stored = env.export(BOB, "can-1");
    assert!(stored.contains("STATUS:CANCELLED"), "{stored}");
    assert!(stored.contains("SUMMARY:Planning meeting"));
}

/// RFC 5546 3.2.5: a cancelled event no longer makes its attendee busy.
#[test]
fn cancelled_event_is_free_in_freebusy() {
    let env = Env::new();
    bob_invited(&env, invite("can-2"));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert_eq!(busy_periods(&fb).len(), 1, "{fb}");
    let c = invite("can-2").seq(1).stamp("20260108T000000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
}

/// RFC 5546 3.2.5: CANCEL of one instance excludes it (EXDATE or a cancelled override).
#[test]
fn cancel_one_instance_excludes_it() {
    let env = Env::new();
    bob_invited(&env, daily("can-3"));
    let c = invite("can-3")
        .seq(1)
        .stamp("20260108T000000Z")
        .rid("20260303T100000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "can-3");
    let master = component_for(&stored, "VEVENT", None).unwrap();
    let exdate = master.contains("EXDATE:20260303T100000Z");
    let cancelled_override = component_for(&stored, "VEVENT", Some("20260303T100000Z"))
        .is_some_and(|c| c.contains("STATUS:CANCELLED"));
    assert!(exdate || cancelled_override, "{stored}");
    assert!(
        !master.contains("STATUS:CANCELLED"),
        "series must stay: {master}"
    );
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260310T000000Z");
    let busy = busy_periods(&fb);
    assert_eq!(busy.len(), 4, "{fb}");
    assert!(!busy.iter().any(|(_, p)| p.starts_with("20260303")));
}

/// RFC 5546 3.2.5: CANCEL of an instance that has an override marks that override cancelled.
#[test]
fn cancel_existing_override_marks_it_cancelled() {
    let env = Env::new();
    let ovr = invite("can-4")
        .rid("20260304T100000Z")
        .set("DTSTART:20260304T160000Z")
        .set("DTEND:20260304T170000Z");
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[daily("can-4"), ovr]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let c = invite("can-4")
        .seq(1)
        .stamp("20260108T000000Z")
        .rid("20260304T100000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "can-4");
    let master = component_for(&stored, "VEVENT", None).unwrap();
    let ovr = component_for(&stored, "VEVENT", Some("20260304T100000Z"));
    assert!(
        ovr.is_some_and(|o| o.contains("STATUS:CANCELLED"))
            || master.contains("EXDATE:20260304T100000Z"),
        "{stored}"
    );
    let fb = env.freebusy(BOB, "20260304T000000Z", "20260305T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
}

/// RFC 5546 3.2.5 with RFC 5545 3.2.13: CANCEL with RANGE=THISANDFUTURE ends the series there.
#[test]
fn cancel_this_and_future_ends_the_series() {
    let env = Env::new();
    bob_invited(&env, daily("can-5"));
    let c = invite("can-5")
        .seq(1)
        .stamp("20260108T000000Z")
        .set("RECURRENCE-ID;RANGE=THISANDFUTURE:20260304T100000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260310T000000Z");
    let busy = busy_periods(&fb);
    assert_eq!(busy.len(), 2, "{fb}");
    assert!(busy.iter().all(|(_, p)| p < &"20260304".to_string()));
}

/// RFC 5546 3.2.5 and 1.4: CANCEL from an attendee is refused.
#[test]
fn cancel_from_non_organizer_is_rejected() {
    let env = Env::new();
    bob_invited(&env, invite("can-6"));
    let c = invite("can-6").seq(1).stamp("20260108T000000Z");
    let msg = imip(CAROL, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
    assert!(!env.export(BOB, "can-6").contains("STATUS:CANCELLED"));
}

/// RFC 5546 2.1.5: a CANCEL older than the stored event is ignored.
#[test]
fn cancel_with_older_sequence_is_ignored() {
    let env = Env::new();
    bob_invited(&env, invite("can-7").seq(4));
    let c = invite("can-7").seq(3).stamp("20260108T000000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    assert!(!env.export(BOB, "can-7").contains("STATUS:CANCELLED"));
}

/// RFC 5546 3.2.5: a CANCEL for an object never received is ignored.
#[test]
fn cancel_for_unknown_object_is_ignored() {
    let env = Env::new();
    let c = invite("can-8").seq(1);
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    assert_outcome(&env.process(&msg, &[BOB]), "ignored");
    assert_eq!(env.export_run(BOB, Some("can-8")).code, 1);
}

/// RFC 5546 3.4.5: CANCEL of a VTODO keeps it with STATUS:CANCELLED.
#[test]
fn cancel_vtodo_keeps_it_cancelled() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[task("can-todo")]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let c = task("can-todo").seq(1).stamp("20260108T000000Z");
    let msg = imip(ALICE, &[BOB], "CANCEL", &vcal("CANCEL", &[c]));
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VTODO");
    assert!(env.export(BOB, "can-todo").contains("STATUS:CANCELLED"));
}

// =============================================================================================
// REFRESH

/// RFC 5546 3.2.6: a REFRESH from an attendee is answered with the current REQUEST, sent to that
/// attendee and threaded with In-Reply-To.
#[test]
fn refresh_is_answered_with_current_request() {
    let env = Env::new();
    alice_has(&env, &[invite("ref-1").seq(2).set("LOCATION:Room 3")]);
    let r = Comp::event("ref-1")
        .without("SUMMARY")
        .without("DTSTART")
        .without("DTEND")
        .without("SEQUENCE")
        .stamp("20260110T000000Z")
        .add(&format!("ATTENDEE:mailto:{CAROL}"));
    let id = message_id();
    let msg = imip_with_id(CAROL, &[ALICE], "REFRESH", &vcal("REFRESH", &[r]), &id);
    let o = assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    assert_eq!(o.method, "REFRESH");
    let out = env.outbox();
    assert_eq!(out.len(), 1, "one REQUEST expected");
    let m = &out[0];
    assert!(header(m, "To").unwrap().contains(CAROL), "{m}");
    assert!(header(m, "From").unwrap().contains(ALICE), "{m}");
    assert_eq!(
        header(m, "In-Reply-To").as_deref(),
        Some(id.as_str()),
        "{m}"
    );
    let cal = calendar_of(m);
    assert!(cal.contains("METHOD:REQUEST"), "{cal}");
    assert!(cal.contains("UID:ref-1"));
    assert!(cal.contains("SEQUENCE:2"));
    assert!(cal.contains("LOCATION:Room 3"));
}

/// DESIGN (REFRESH of a cancelled object): the answer in the outbox is a CANCEL, never a
/// REQUEST that would bring the event back.
#[test]
fn refresh_of_cancelled_object_is_answered_with_cancel() {
    let env = Env::new();
    alice_has(&env, &[invite("ref-c").seq(3).set("STATUS:CANCELLED")]);
    let r = Comp::event("ref-c")
        .without("SUMMARY")
        .without("DTSTART")
        .without("DTEND")
        .without("SEQUENCE")
        .stamp("20260110T000000Z")
        .add(&format!("ATTENDEE:mailto:{CAROL}"));
    let msg = imip(CAROL, &[ALICE], "REFRESH", &vcal("REFRESH", &[r]));
    assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    let out = env.outbox();
    assert_eq!(out.len(), 1, "one CANCEL expected");
    assert!(header(&out[0], "To").unwrap().contains(CAROL));
    let cal = calendar_of(&out[0]);
    assert!(cal.contains("METHOD:CANCEL"), "{cal}");
    assert!(!cal.contains("METHOD:REQUEST"), "{cal}");
    assert!(cal.contains("STATUS:CANCELLED"), "{cal}");
}

/// DESIGN: a REQUEST that no longer lists the recipient cancels the stored copy (applied), and
/// the time is free again.
#[test]
fn request_without_recipient_cancels_stored_copy() {
    let env = Env::new();
    bob_invited(&env, invite("rm-1"));
    let without_bob = Comp::event("rm-1")
        .seq(1)
        .stamp("20260105T000000Z")
        .att(ALICE, "ACCEPTED")
        .att(CAROL, "NEEDS-ACTION");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[without_bob]));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert_eq!(busy_periods(&fb).len(), 1, "{fb}");
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert!(env.export(BOB, "rm-1").contains("STATUS:CANCELLED"));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
    // Nothing stored: still rejected.
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal(
            "REQUEST",
            &[invite("rm-2")
                .without("ATTENDEE")
                .att(CAROL, "NEEDS-ACTION")],
        ),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5546 3.2.6: a REFRESH from someone who is not invited gets nothing.
#[test]
fn refresh_from_non_attendee_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("ref-2")]);
    let r = Comp::event("ref-2").add(&format!("ATTENDEE:mailto:{MALLORY}"));
    let msg = imip(MALLORY, &[ALICE], "REFRESH", &vcal("REFRESH", &[r]));
    assert_outcome(&env.process(&msg, &[ALICE]), "rejected");
    assert!(env.outbox().is_empty());
}

/// RFC 5546 3.4.6: REFRESH of a VTODO is answered with the current task.
#[test]
fn refresh_vtodo_is_answered() {
    let env = Env::new();
    alice_has(&env, &[task("ref-todo")]);
    let r = Comp::todo("ref-todo").add(&format!("ATTENDEE:mailto:{BOB}"));
    let msg = imip(BOB, &[ALICE], "REFRESH", &vcal("REFRESH", &[r]));
    let o = assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    assert_eq!(o.component, "VTODO");
    let out = env.outbox();
    assert_eq!(out.len(), 1);
    assert!(calendar_of(&out[0]).contains("BEGIN:VTODO"));
}

// =============================================================================================
// COUNTER / DECLINECOUNTER

/// RFC 5546 3.2.7 with DESIGN: a COUNTER is recorded and leaves the event unchanged.
#[test]
fn counter_is_recorded_and_leaves_event_unchanged() {
    let env = Env::new();
    alice_has(&env, &[invite("cnt-1")]);
    let before = env.export(ALICE, "cnt-1");
    let c = invite("cnt-1")
        .stamp("20260110T000000Z")
        .set("DTSTART:20260302T150000Z")
        .set("DTEND:20260302T160000Z")
        .add("COMMENT:Afternoon is better");
    let msg = imip(CAROL, &[ALICE], "COUNTER", &vcal("COUNTER", &[c]));
    let o = assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    assert_eq!(o.method, "COUNTER");
    assert_eq!(env.export(ALICE, "cnt-1"), before);
}

/// RFC 5546 3.2.7: a COUNTER from someone who is not invited is refused.
#[test]
fn counter_from_party_crasher_is_rejected() {
    let env = Env::new();
    alice_has(&env, &[invite("cnt-2")]);
    let c = Comp::event("cnt-2").att(MALLORY, "NEEDS-ACTION");
    let msg = imip(MALLORY, &[ALICE], "COUNTER", &vcal("COUNTER", &[c]));
    assert_outcome(&env.process(&msg, &[ALICE]), "rejected");
}

/// RFC 5546 3.4.7: a VTODO COUNTER is recorded, the task unchanged.
#[test]
fn counter_vtodo_is_recorded() {
    let env = Env::new();
    alice_has(&env, &[task("cnt-todo")]);
    let before = env.export(ALICE, "cnt-todo");
    let c = task("cnt-todo")
        .stamp("20260110T000000Z")
        .set("DUE:20260320T170000Z");
    let msg = imip(BOB, &[ALICE], "COUNTER", &vcal("COUNTER", &[c]));
    let o = assert_outcome(&env.process(&msg, &[ALICE]), "applied");
    assert_eq!(o.component, "VTODO");
    assert_eq!(env.export(ALICE, "cnt-todo"), before);
}

/// RFC 5546 3.2.8 with DESIGN: a DECLINECOUNTER from the organizer is recorded; the attendee's
/// copy is unchanged.
#[test]
fn declinecounter_from_organizer_is_recorded() {
    let env = Env::new();
    bob_invited(&env, invite("dc-1"));
    let before = env.export(BOB, "dc-1");
    let d = invite("dc-1")
        .stamp("20260111T000000Z")
        .add("COMMENT:No, sorry");
    let msg = imip(
        ALICE,
        &[BOB],
        "DECLINECOUNTER",
        &vcal("DECLINECOUNTER", &[d]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.method, "DECLINECOUNTER");
    assert_eq!(env.export(BOB, "dc-1"), before);
}

/// RFC 5546 3.2.8 and 1.4: DECLINECOUNTER is an organizer method.
#[test]
fn declinecounter_from_attendee_is_rejected() {
    let env = Env::new();
    bob_invited(&env, invite("dc-2"));
    let d = invite("dc-2").stamp("20260111T000000Z");
    let msg = imip(
        CAROL,
        &[BOB],
        "DECLINECOUNTER",
        &vcal("DECLINECOUNTER", &[d]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5546 3.4.8: DECLINECOUNTER for a VTODO.
#[test]
fn declinecounter_vtodo_is_recorded() {
    let env = Env::new();
    let msg = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal("REQUEST", &[task("dc-todo")]),
    );
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let d = task("dc-todo").stamp("20260111T000000Z");
    let msg = imip(
        ALICE,
        &[BOB],
        "DECLINECOUNTER",
        &vcal("DECLINECOUNTER", &[d]),
    );
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VTODO");
}

// =============================================================================================
// VFREEBUSY and free/busy

fn fb_request(uid: &str, to: &str, from: &str, until: &str) -> Comp {
    Comp::raw(
        "VFREEBUSY",
        &[
            &format!("UID:{uid}"),
            "DTSTAMP:20260101T080000Z",
            &format!("ORGANIZER:mailto:{ALICE}"),
            &format!("ATTENDEE:mailto:{to}"),
            &format!("DTSTART:{from}"),
            &format!("DTEND:{until}"),
        ],
    )
}

/// RFC 5546 3.3.2: a VFREEBUSY REQUEST by mail is answered with a VFREEBUSY REPLY (busy periods
/// in UTC) to the requester.
#[test]
fn freebusy_request_by_mail_is_answered_with_busy_periods() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("fb-ev")]));
    let req = fb_request("fb-req-1", BOB, "20260302T000000Z", "20260303T000000Z");
    let id = message_id();
    let msg = imip_with_id(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[req]), &id);
    let o = assert_outcome(&env.process(&msg, &[BOB]), "applied");
    assert_eq!(o.component, "VFREEBUSY");
    let out = env.outbox();
    assert_eq!(out.len(), 1);
    assert!(header(&out[0], "To").unwrap().contains(ALICE));
    assert_eq!(header(&out[0], "In-Reply-To").as_deref(), Some(id.as_str()));
    let cal = calendar_of(&out[0]);
    assert!(cal.contains("METHOD:REPLY"), "{cal}");
    assert!(cal.contains("BEGIN:VFREEBUSY"));
    assert!(cal.contains("UID:fb-req-1"));
    assert_eq!(
        busy_periods(&cal),
        vec![(
            "BUSY".to_string(),
            "20260302T100000Z/20260302T110000Z".to_string()
        )]
    );
}

/// RFC 5546 3.3.2 and 6.1: a free/busy request from an unproven sender is refused.
#[test]
fn freebusy_request_unproven_is_rejected() {
    let env = Env::new();
    let req = fb_request("fb-req-2", BOB, "20260302T000000Z", "20260303T000000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[req]));
    assert_outcome(&env.process_unproven(&msg, &[BOB]), "rejected");
    assert!(env.outbox().is_empty());
}

/// RFC 5546 3.3.2: only the requested attendee's calendar is answered for.
#[test]
fn freebusy_request_for_someone_else_is_rejected() {
    let env = Env::new();
    let req = fb_request("fb-req-3", CAROL, "20260302T000000Z", "20260303T000000Z");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[req]));
    assert_outcome(&env.process(&msg, &[BOB]), "rejected");
}

/// RFC 5545 3.8.2.7 (TRANSP): transparent events are not busy time.
#[test]
fn freebusy_excludes_transparent_events() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("fb-t").add("TRANSP:TRANSPARENT")]));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
}

/// RFC 5545 3.8.1.11 (STATUS:CANCELLED): cancelled events are free.
#[test]
fn freebusy_excludes_cancelled_events() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("fb-c").add("STATUS:CANCELLED")]));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
}

/// RFC 5545 3.2.12 (PARTSTAT=DECLINED): events the user declined are free.
#[test]
fn freebusy_excludes_declined_events() {
    let env = Env::new();
    let ev = Comp::event("fb-d")
        .att(ALICE, "ACCEPTED")
        .att(BOB, "DECLINED");
    env.import(BOB, &vcal("", &[ev]));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert!(busy_periods(&fb).is_empty(), "{fb}");
}

/// RFC 5545 3.2.9 (FBTYPE): tentative events are BUSY-TENTATIVE.
#[test]
fn freebusy_marks_tentative_events() {
    let env = Env::new();
    let ev = Comp::event("fb-tent")
        .att(ALICE, "ACCEPTED")
        .att(BOB, "TENTATIVE");
    env.import(BOB, &vcal("", &[ev]));
    let fb = env.freebusy(BOB, "20260302T000000Z", "20260303T000000Z");
    assert_eq!(
        busy_periods(&fb),
        vec![(
            "BUSY-TENTATIVE".to_string(),
            "20260302T100000Z/20260302T110000Z".to_string()
        )]
    );
}

/// RFC 5545 3.8.5.3: a recurring event is expanded into its instances in the window.
#[test]
fn freebusy_expands_recurring_events() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[daily("fb-r")]));
    let fb = env.freebusy(BOB, "20260303T000000Z", "20260305T000000Z");
    assert_eq!(
        busy_periods(&fb)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        vec![
            "20260303T100000Z/20260303T110000Z".to_string(),
            "20260304T100000Z/20260304T110000Z".to_string()
        ]
    );
}

/// RFC 5545 3.2.19 (TZID) with DESIGN: a Windows zone name resolves to its IANA zone, so free/busy
/// in UTC is right (W. Europe Standard Time = Europe/Berlin, UTC+1 in winter, +2 in summer).
#[test]
fn windows_tzid_resolves_for_freebusy() {
    let env = Env::new();
    let winter = invite("tz-win")
        .set("DTSTART;TZID=W. Europe Standard Time:20260302T100000")
        .set("DTEND;TZID=W. Europe Standard Time:20260302T110000");
    let summer = invite("tz-sum")
        .set("DTSTART;TZID=\"W. Europe Standard Time\":20260702T100000")
        .set("DTEND;TZID=\"W. Europe Standard Time\":20260702T110000");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[winter]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[summer]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260801T000000Z");
    let busy: Vec<String> = busy_periods(&fb).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        busy,
        vec![
            "20260302T090000Z/20260302T100000Z".to_string(),
            "20260702T080000Z/20260702T090000Z".to_string()
        ],
        "{fb}"
    );
    // The stored value keeps its original TZID.
    assert!(env
        .export(BOB, "tz-win")
        .contains("DTSTART;TZID=W. Europe Standard Time:20260302T100000"));
}

/// RFC 5545 3.6.5 (VTIMEZONE): a custom VTIMEZONE's offsets are honoured for free/busy.
#[test]
fn vtimezone_with_custom_tzid_is_honoured() {
    let env = Env::new();
    let vtz = "BEGIN:VTIMEZONE\r\nTZID:Eastern (custom)\r\nBEGIN:STANDARD\r\nDTSTART:16011104T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU\r\nTZOFFSETFROM:-0400\r\nTZOFFSETTO:-0500\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:16010311T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU\r\nTZOFFSETFROM:-0500\r\nTZOFFSETTO:-0400\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n";
    let ev = invite("tz-custom")
        .set("DTSTART;TZID=Eastern (custom):20260302T100000")
        .set("DTEND;TZID=Eastern (custom):20260302T110000");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal_with("REQUEST", vtz, &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260304T000000Z");
    assert_eq!(
        busy_periods(&fb)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        vec!["20260302T150000Z/20260302T160000Z".to_string()]
    );
    assert!(env
        .export(BOB, "tz-custom")
        .contains("TZID:Eastern (custom)"));
}

// =============================================================================================
// import / export

/// Command-line contract: exporting a UID that is not stored exits 1 with a message on stderr.
#[test]
fn export_of_missing_uid_exits_1_with_message() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("exists")]));
    let r = env.export_run(BOB, Some("does-not-exist"));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("does-not-exist"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

/// RFC 5545 3.3.5 (floating time): a floating DATE-TIME stays floating in the export.
#[test]
fn floating_time_is_preserved_in_export() {
    let env = Env::new();
    let ev = invite("float-1")
        .set("DTSTART:20260302T100000")
        .set("DTEND:20260302T110000");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "float-1");
    assert!(stored.contains("\nDTSTART:20260302T100000\n"), "{stored}");
    assert!(stored.contains("\nDTEND:20260302T110000\n"), "{stored}");
}

/// RFC 5545 3.3.4 (DATE): an all-day event keeps VALUE=DATE in the export.
#[test]
fn all_day_date_is_preserved_in_export() {
    let env = Env::new();
    let ev = invite("allday-1")
        .set("DTSTART;VALUE=DATE:20260302")
        .set("DTEND;VALUE=DATE:20260303");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "allday-1");
    assert!(stored.contains("DTSTART;VALUE=DATE:20260302"), "{stored}");
    assert!(stored.contains("DTEND;VALUE=DATE:20260303"), "{stored}");
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260305T000000Z");
    assert_eq!(busy_periods(&fb).len(), 1, "{fb}");
}

/// RFC 5545 3.8.8.2 and 3.2 (x-name, iana-token): unknown properties and parameters survive an
/// import/export round trip.
#[test]
fn unknown_x_properties_survive_import_export() {
    let env = Env::new();
    let ev = invite("x-1")
        .add("X-MICROSOFT-CDO-BUSYSTATUS:BUSY")
        .add("X-ENTOURAGE_UUID:abc-123")
        .add("X-ALT-DESC;FMTTYPE=text/html:<p>Hello</p>")
        .add("X-CUSTOM;X-PARAM=\"a,b\":value\\, with comma");
    env.import(BOB, &vcal("", &[ev]));
    let stored = env.export(BOB, "x-1");
    assert!(stored.contains("X-MICROSOFT-CDO-BUSYSTATUS:BUSY"));
    assert!(stored.contains("X-ENTOURAGE_UUID:abc-123"));
    assert!(stored.contains("X-ALT-DESC;FMTTYPE=text/html:<p>Hello</p>"));
    assert!(
        stored.contains("X-CUSTOM;X-PARAM=\"a,b\":value\\, with comma"),
        "{stored}"
    );
}

/// Command-line contract: export without --uid prints the whole calendar as one VCALENDAR.
#[test]
fn export_whole_calendar_holds_every_object() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("all-1"), task("all-2")]));
    let r = env.export_run(BOB, None);
    assert_eq!(r.code, 0);
    let text = unfold(&r.stdout);
    assert_eq!(text.matches("BEGIN:VCALENDAR").count(), 1);
    assert!(text.contains("UID:all-1"));
    assert!(text.contains("UID:all-2"));
}

/// Command-line contract: import replaces a stored object with the same UID.
#[test]
fn import_replaces_stored_object() {
    let env = Env::new();
    env.import(BOB, &vcal("", &[invite("imp-1").set("SUMMARY:First")]));
    env.import(BOB, &vcal("", &[invite("imp-1").set("SUMMARY:Second")]));
    let stored = env.export(BOB, "imp-1");
    assert!(stored.contains("SUMMARY:Second"));
    assert!(!stored.contains("SUMMARY:First"));
}

/// Command-line contract: addresses are accepted with or without mailto:.
#[test]
fn user_addresses_accept_mailto_form() {
    let env = Env::new();
    env.import("mailto:bob@example.org", &vcal("", &[invite("mt-1")]));
    assert!(env.export(BOB, "mt-1").contains("UID:mt-1"));
    let r = env.export_run("mailto:BOB@example.org", Some("mt-1"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// RFC 5545 3.6.5 with QUIRKS 1.7: an Exchange 2003 display-name TZID with a VTIMEZONE follows
/// the VTIMEZONE's daylight saving rules, not the fixed offset in its name.
#[test]
fn cdo_display_name_tzid_follows_vtimezone_dst() {
    let env = Env::new();
    let tzid = "(GMT-08.00) Pacific Time (US & Canada)/Tijuana";
    let vtz = format!(
        "BEGIN:VTIMEZONE\r\nTZID:{tzid}\r\nX-MICROSOFT-CDO-TZID:13\r\nBEGIN:STANDARD\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:-0700\r\nTZOFFSETTO:-0800\r\nRRULE:FREQ=YEARLY;WKST=MO;INTERVAL=1;BYMONTH=11;BYDAY=1SU\r\nEND:STANDARD\r\nBEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:-0800\r\nTZOFFSETTO:-0700\r\nRRULE:FREQ=YEARLY;WKST=MO;INTERVAL=1;BYMONTH=3;BYDAY=2SU\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
    );
    let ev = invite("tz-cdo")
        .set(&format!("DTSTART;TZID=\"{tzid}\":20260615T170000"))
        .set(&format!("DTEND;TZID=\"{tzid}\":20260615T180000"));
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal_with("REQUEST", &vtz, &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let fb = env.freebusy(BOB, "20260615T000000Z", "20260617T000000Z");
    assert_eq!(
        busy_periods(&fb)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        vec!["20260616T000000Z/20260616T010000Z".to_string()],
        "{fb}"
    );
}

/// RFC 5545 3.8.5.3 and 3.3.10: DTSTART is always the first instance, even when the RRULE does
/// not produce it, and counts towards COUNT.
#[test]
fn unsynchronized_dtstart_is_the_first_instance() {
    let env = Env::new();
    // Tuesday 2026-03-03, then Mondays: three instances in all.
    let ev = invite("dtstart-1")
        .set("DTSTART:20260303T090000Z")
        .set("DTEND:20260303T100000Z")
        .add("RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3");
    env.import(BOB, &vcal("", &[ev]));
    let fb = env.freebusy(BOB, "20260301T000000Z", "20260401T000000Z");
    assert_eq!(
        busy_periods(&fb)
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<_>>(),
        vec![
            "20260303T090000Z/20260303T100000Z".to_string(),
            "20260309T090000Z/20260309T100000Z".to_string(),
            "20260316T090000Z/20260316T100000Z".to_string()
        ],
        "{fb}"
    );
}

/// RFC 5546 3.2.2 with QUIRKS 1.8: an ORGANIZER without the mailto: scheme (iOS/Tine) still
/// identifies the sender.
#[test]
fn organizer_without_mailto_scheme_is_accepted() {
    let env = Env::new();
    let ev = invite("nomailto-1").set(&format!("ORGANIZER;CN=Alice;EMAIL={ALICE}:{ALICE}"));
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[ev]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
}

/// RFC 5546 3.2.2.6 with QUIRKS 1.8: a REQUEST that only refreshes the attendee list (same
/// SEQUENCE, newer DTSTAMP) keeps the attendee's VALARM and PARTSTAT.
#[test]
fn attendee_list_update_keeps_local_data() {
    let env = Env::new();
    bob_invited(&env, invite("list-1"));
    let mine = env
        .export(BOB, "list-1")
        .replace(
            "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob",
            "PARTSTAT=TENTATIVE:mailto:bob",
        )
        .replace(
            "END:VEVENT",
            "BEGIN:VALARM\nACTION:DISPLAY\nDESCRIPTION:mine\nTRIGGER:-PT5M\nEND:VALARM\nEND:VEVENT",
        );
    env.import(BOB, &mine);
    let upd = invite("list-1")
        .stamp("20260109T000000Z")
        .att("dave@example.net", "NEEDS-ACTION");
    let msg = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[upd]));
    assert_outcome(&env.process(&msg, &[BOB]), "applied");
    let stored = env.export(BOB, "list-1");
    assert!(attendee_line(&stored, "dave@example.net").is_some());
    assert_eq!(partstat(&stored, BOB).as_deref(), Some("TENTATIVE"));
    assert!(stored.contains("DESCRIPTION:mine"));
}

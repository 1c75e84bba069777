//! The plugin seam through the real binary: `[plugins.stamp]` (plugins/stamp) changes what is
//! stored before the commit and records each calendar change in its spool as its effect;
//! without the section nothing changes; an unknown plugin is a config error that names it.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A config for `env`'s data dir, with `extra` appended.
fn config(env: &Env, extra: &str) -> PathBuf {
    env.file(
        "toml",
        format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.org\"]\n{extra}",
            env.data.display()
        )
        .as_bytes(),
    )
}

/// `imipd --config CFG process --trust-sender --outbox OUT --recipient BOB MSG`.
fn process(env: &Env, cfg: &Path, msg: &str) -> Run {
    let m = env.file("eml", msg.as_bytes());
    let r = run_limited(
        &[
            "--config",
            cfg.to_str().expect("path"),
            "process",
            "--trust-sender",
            "--outbox",
            env.outbox.to_str().expect("path"),
            "--recipient",
            BOB,
            m.to_str().expect("path"),
        ],
        None,
        LIMIT,
    );
    assert_eq!(r.code, 0, "process failed: {}", r.stderr);
    r
}

fn export(cfg: &Path, uid: &str) -> String {
    let r = run_limited(
        &[
            "--config",
            cfg.to_str().expect("path"),
            "export",
            "--user",
            BOB,
            "--uid",
            uid,
        ],
        None,
        LIMIT,
    );
    assert_eq!(r.code, 0, "export failed: {}", r.stderr);
    unfold(&r.stdout)
}

fn outcome(r: &Run) -> String {
    let outs = parse_outcomes(&r.stdout);
    assert_eq!(outs.len(), 1, "{outs:#?}");
    outs[0].outcome.clone()
}

#[test]
fn stamp_marks_stored_objects_and_spools_each_change() {
    let env = Env::new();
    let spool = env.root.join("stamp.log");
    let cfg = config(
        &env,
        &format!(
            "[plugins.stamp]\nvalue = \"mx1\"\nspool = \"{}\"\n",
            spool.display()
        ),
    );
    let uid = "stamp-1@example.org";
    let request = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[invite(uid)]));
    let r = process(&env, &cfg, &request);
    assert_eq!(outcome(&r), "applied", "{}", r.stderr);

    // Before the commit: the stored object carries the plugin's property.
    let stored = export(&cfg, uid);
    assert_eq!(
        lines_named(&stored, "X-IMIPD-SEEN"),
        ["X-IMIPD-SEEN:mx1"],
        "{stored}"
    );

    // After it: the effect appended one line, to a file nobody else may read.
    let text = std::fs::read_to_string(&spool).expect("spool written");
    assert_eq!(
        text,
        format!("{uid}\tapplied\tstored\tmailto:{BOB}\n"),
        "{}",
        r.stderr
    );
    let mode = std::fs::metadata(&spool)
        .expect("spool")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The same message again changes nothing: no effect, no line.
    assert_eq!(outcome(&process(&env, &cfg, &request)), "ignored");
    assert_eq!(
        std::fs::read_to_string(&spool)
            .expect("spool")
            .lines()
            .count(),
        1
    );

    // An update is stamped and spooled again, the property still once.
    let update = imip(
        ALICE,
        &[BOB],
        "REQUEST",
        &vcal(
            "REQUEST",
            &[invite(uid)
                .seq(1)
                .set("DTSTART:20260302T120000Z")
                .set("DTEND:20260302T130000Z")],
        ),
    );
    assert_eq!(outcome(&process(&env, &cfg, &update)), "applied");
    let stored = export(&cfg, uid);
    assert_eq!(lines_named(&stored, "X-IMIPD-SEEN").len(), 1, "{stored}");
    assert!(stored.contains("DTSTART:20260302T120000Z"), "{stored}");
    assert_eq!(
        std::fs::read_to_string(&spool)
            .expect("spool")
            .lines()
            .count(),
        2
    );
}

#[test]
fn without_the_section_nothing_changes() {
    let env = Env::new();
    let spool = env.root.join("stamp.log");
    let cfg = config(&env, "");
    let uid = "stamp-2@example.org";
    let request = imip(ALICE, &[BOB], "REQUEST", &vcal("REQUEST", &[invite(uid)]));
    assert_eq!(outcome(&process(&env, &cfg, &request)), "applied");
    let stored = export(&cfg, uid);
    assert!(!stored.contains("X-IMIPD-SEEN"), "{stored}");
    assert!(!exists(&spool));
}

fn check_config(cfg: &Path) -> Run {
    run_limited(
        &["--config", cfg.to_str().expect("path"), "check-config"],
        None,
        LIMIT,
    )
}

#[test]
fn unknown_plugin_is_a_config_error_naming_it() {
    let env = Env::new();
    let cfg = config(&env, "[plugins.nosuch]\nurl = \"x\"\n");
    let r = check_config(&cfg);
    assert_eq!(r.code, 78, "{}", r.stderr);
    // The section header is line 3 of the file.
    let name = cfg.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        r.stderr.contains(&format!("{name}:3")) && r.stderr.contains("key `plugins.nosuch`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("stamp"),
        "lists what exists: {}",
        r.stderr
    );
}

#[test]
fn a_plugin_checks_its_own_table() {
    let env = Env::new();
    let cfg = config(&env, "[plugins.stamp]\nvalue = \"mx1\"\n");
    let r = check_config(&cfg);
    assert_eq!(r.code, 78, "{}", r.stderr);
    assert!(r.stderr.contains("plugins.stamp.spool"), "{}", r.stderr);
    let cfg = config(
        &env,
        &format!(
            "[plugins.stamp]\nspool = \"{}\"\nspol = 1\n",
            env.root.join("s.log").display()
        ),
    );
    let r = check_config(&cfg);
    assert_eq!(r.code, 78, "{}", r.stderr);
    let name = cfg.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        r.stderr.contains(&format!("{name}:5")) && r.stderr.contains("plugins.stamp.spol"),
        "{}",
        r.stderr
    );
    let cfg = config(
        &env,
        &format!(
            "[plugins.stamp]\nspool = \"{}\"\n",
            env.root.join("s.log").display()
        ),
    );
    assert_eq!(check_config(&cfg).code, 0);
}

//! What a mail administrator relies on: config validation that names key and line, the
//! annotated example being valid, admin commands while the daemon runs (control socket),
//! and a clean SIGTERM.

mod mta;

use mta::Imipd;
use std::process::Command;
use tempfile::TempDir;

fn imipd(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .args(args)
        .output()
        .expect("imipd");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The annotated example configuration is itself valid.
#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/imipd.toml.example");
    let (out, err, code) = imipd(&["--config", example, "check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ok\":true"));
}

/// A bad value is reported with file, line and key, and exit code 78 (EX_CONFIG).
#[test]
fn config_error_names_key_and_line() {
    let tmp = TempDir::new().expect("tempdir");
    let p = tmp.path().join("bad.toml");
    std::fs::write(
        &p,
        "data_dir = \"/tmp/x\"\n[milter]\nlisten = \"inet:127.0.0.1:1\"\non_forged = \"maybe\"\n",
    )
    .expect("write");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("bad.toml:4") && err.contains("milter.on_forged"),
        "{err}"
    );
}

/// An unknown key is an error too (a typo must not silently fall back to a default).
#[test]
fn unknown_key_is_an_error() {
    let tmp = TempDir::new().expect("tempdir");
    let p = tmp.path().join("typo.toml");
    std::fs::write(&p, "[lmtp]\nlisen = \"inet:127.0.0.1:1\"\n").expect("write");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("typo.toml:2") && err.contains("lisen"),
        "{err}"
    );
}

/// DESIGN "Command-line contract": while `imipd run` holds the store, process/import/export/
/// freebusy go through its control socket and behave the same.
#[test]
fn admin_commands_work_while_daemon_runs() {
    let tmp = TempDir::new().expect("tempdir");
    let mut d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nlisten = \"inet:127.0.0.1:0\"\n",
        &[],
    );
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:ops-1\r\nDTSTAMP:20260101T000000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    d.import("bob@example.org", ics);
    let msg = tmp.path().join("reply.eml");
    std::fs::write(
        &msg,
        "From: alice@example.com\r\nTo: bob@example.org\r\nMessage-ID: <ops@example.com>\r\nSubject: Accepted\r\n\
Content-Type: text/calendar; method=REPLY\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REPLY\r\n\
BEGIN:VEVENT\r\nUID:ops-1\r\nDTSTAMP:20260102T000000Z\r\nORGANIZER:mailto:bob@example.org\r\n\
ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .expect("msg");
    let (out, err, code) = d.cli(&["process", "--trust-sender", msg.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"outcome\":\"applied\""), "{out}{err}");
    let (out, _, code) = d.cli(&["export", "--user", "bob@example.org", "--uid", "ops-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("PARTSTAT=ACCEPTED"), "{out}");
    let (_, err, code) = d.cli(&["export", "--user", "bob@example.org", "--uid", "missing"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("missing"), "{err}");
    let (out, _, code) = d.cli(&[
        "freebusy",
        "--user",
        "bob@example.org",
        "--from",
        "20260110T000000Z",
        "--to",
        "20260111T000000Z",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("FREEBUSY;FBTYPE=BUSY:20260110T100000Z/20260110T110000Z"),
        "{out}"
    );

    // SIGTERM: clean exit, control socket gone, store usable directly afterwards.
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert!(!tmp.path().join("data/control.sock").exists());
    // It says how well its flushes were grouped: never more flushes than requests.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("durability requests made durable by"))
        .unwrap_or_else(|| panic!("no group-commit line: {log}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() >= 2 && nums[0] >= nums[1] && nums[1] >= 1,
        "{line}"
    );
    let (out, err, code) = imipd(&[
        "--data-dir",
        tmp.path().join("data").to_str().expect("path"),
        "export",
        "--user",
        "bob@example.org",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("PARTSTAT=ACCEPTED"));
}

/// The control socket reads one bounded request: a line larger than a message of the doors'
/// limit (base64) plus room for arguments is refused without being kept, and the daemon goes on
/// answering.
#[test]
fn control_socket_refuses_an_oversized_request() {
    use std::io::{BufRead, Write};
    let tmp = TempDir::new().expect("tempdir");
    let d = Imipd::start(
        tmp.path(),
        "local_domains = [\"example.org\"]\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
         [lmtp]\nlisten = \"inet:127.0.0.1:0\"\nmax_message_size = 100000\n",
        &[],
    );
    let mut s = std::os::unix::net::UnixStream::connect(tmp.path().join("data/control.sock"))
        .expect("control socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let chunk = vec![b'a'; 64 * 1024];
    // 2 MiB, past the limit of 133,332 + 1 MiB; the daemon may stop reading before the end.
    for _ in 0..32 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut line = String::new();
    std::io::BufReader::new(&mut s)
        .read_line(&mut line)
        .expect("an answer");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["code"], 64, "{line}");
    let err = imipd::codec::decode_base64_lenient(v["stderr"].as_str().unwrap_or("").as_bytes());
    assert!(
        String::from_utf8_lossy(&err).contains("larger than"),
        "{line}"
    );
    let (_, e, code) = d.cli(&["export", "--user", "bob@example.org"]);
    assert_eq!(code, 0, "{e}");
}

fn request_msg(dir: &std::path::Path, from: &str, uid: &str) -> std::path::PathBuf {
    let p = dir.join(format!("{uid}.eml"));
    std::fs::write(
        &p,
        format!(
            "From: {from}\r\nTo: bob@example.org\r\nMessage-ID: <{uid}>\r\nSubject: Invitation\r\n\
Content-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\n\
BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260102T000000Z\r\nDTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\n\
ORGANIZER:mailto:{from}\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        ),
    )
    .expect("msg");
    p
}

fn policy_config(dir: &std::path::Path, policy: &str) -> std::path::PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.org\"]\n[policy]\n{policy}\n",
            dir.join("data").display()
        ),
    )
    .expect("config");
    p
}

fn outcome_of(out: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap_or_default();
    format!(
        "{} {}",
        v["outcome"].as_str().unwrap_or(""),
        v["reason"].as_str().unwrap_or("")
    )
}

/// Calendar-spam policy `create = "nobody"`: a proven organizer still cannot put a new event
/// into the calendar; the reason says so and nothing is stored.
#[test]
fn policy_nobody_refuses_new_objects() {
    let tmp = TempDir::new().expect("tempdir");
    let cfg = policy_config(tmp.path(), "create = \"nobody\"");
    let c = cfg.to_str().expect("path");
    let m = request_msg(tmp.path(), "alice@example.com", "pol-1@example.com");
    let (out, err, code) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        m.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    let o = outcome_of(&out);
    assert!(o.starts_with("rejected") && o.contains("policy"), "{o}");
    let (out, _, _) = imipd(&["--config", c, "export", "--user", "bob@example.org"]);
    assert!(!out.contains("VEVENT"), "{out}");
}

/// `create = "known"`: a sender on the allow list creates; a stranger does not; once an object
/// with the stranger exists (imported), the stranger is known and may create more.
#[test]
fn policy_known_senders_and_allow_list() {
    let tmp = TempDir::new().expect("tempdir");
    let cfg = policy_config(
        tmp.path(),
        "create = \"known\"\nallow = [\"@partner.example\"]",
    );
    let c = cfg.to_str().expect("path");
    let allowed = request_msg(tmp.path(), "carol@partner.example", "pol-2@partner.example");
    let (out, _, _) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        allowed.to_str().expect("path"),
    ]);
    assert!(outcome_of(&out).starts_with("applied"), "{out}");

    let stranger = request_msg(tmp.path(), "mallory@spam.example", "pol-3@spam.example");
    let (out, _, _) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        stranger.to_str().expect("path"),
    ]);
    assert!(outcome_of(&out).starts_with("rejected"), "{out}");

    let ics = tmp.path().join("known.ics");
    std::fs::write(
        &ics,
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:old@spam.example\r\nDTSTAMP:20250101T000000Z\r\n\
DTSTART:20250110T100000Z\r\nORGANIZER:mailto:mallory@spam.example\r\nATTENDEE:mailto:bob@example.org\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .expect("ics");
    let (_, err, code) = imipd(&[
        "--config",
        c,
        "import",
        "--user",
        "bob@example.org",
        ics.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    let again = request_msg(tmp.path(), "mallory@spam.example", "pol-4@spam.example");
    let (out, _, _) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        again.to_str().expect("path"),
    ]);
    assert!(outcome_of(&out).starts_with("applied"), "{out}");
}

/// `create = "local"` per domain (`create_for`): only senders of the local domains create.
#[test]
fn policy_local_per_domain() {
    let tmp = TempDir::new().expect("tempdir");
    let cfg = policy_config(
        tmp.path(),
        "create = \"everyone\"\ncreate_for = { \"example.org\" = \"local\" }",
    );
    let c = cfg.to_str().expect("path");
    let remote = request_msg(tmp.path(), "alice@example.com", "pol-5@example.com");
    let (out, _, _) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        remote.to_str().expect("path"),
    ]);
    assert!(outcome_of(&out).starts_with("rejected"), "{out}");
    let local = request_msg(tmp.path(), "dave@example.org", "pol-6@example.org");
    let (out, _, _) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        local.to_str().expect("path"),
    ]);
    assert!(outcome_of(&out).starts_with("applied"), "{out}");
}

/// DESIGN "Command-line contract": `imipd --version` (and `version`) print the version, exit 0.
#[test]
fn version_is_printed() {
    for args in [&["--version"][..], &["version"], &["-V"]] {
        let (out, err, code) = imipd(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(
            out.trim(),
            format!("imipd {}", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
}

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("imipd.toml");
    std::fs::write(&p, text).expect("config");
    p
}

/// Read commands (`export`, `freebusy`, `journal`) on a data dir with no store: an error that
/// names the path and where it came from, non-zero exit, and no store created.
#[test]
fn read_commands_never_create_a_store() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("nothing-here");
    let cfg = write_config(tmp.path(), &format!("data_dir = \"{}\"\n", data.display()));
    let c = cfg.to_str().expect("path");
    let d = data.to_str().expect("path");
    let window = ["--from", "20260101T000000Z", "--to", "20260102T000000Z"];
    let mut cases: Vec<(Vec<&str>, &str)> = Vec::new();
    for (flag, val, origin) in [("--config", c, c), ("--data-dir", d, "--data-dir")] {
        cases.push((
            vec![flag, val, "export", "--user", "bob@example.org"],
            origin,
        ));
        let mut fb = vec![flag, val, "freebusy", "--user", "bob@example.org"];
        fb.extend_from_slice(&window);
        cases.push((fb, origin));
        cases.push((vec![flag, val, "journal"], origin));
    }
    for (args, origin) in cases {
        let (out, err, code) = imipd(&args);
        assert_ne!(code, 0, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(d) && err.contains(origin), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created {}", data.display());
    }
    // A usage error (a bad date) opens nothing either.
    let (_, err, code) = imipd(&[
        "--data-dir",
        d,
        "freebusy",
        "--user",
        "bob@example.org",
        "--from",
        "garbage",
        "--to",
        "x",
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(!data.exists());
}

/// Without --data-dir the admin commands use the config's data_dir, and say so.
#[test]
fn admin_commands_read_data_dir_from_config() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("from-config");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.org\"]\n",
            data.display()
        ),
    );
    let c = cfg.to_str().expect("path");
    let m = request_msg(tmp.path(), "alice@example.com", "cfg-1@example.com");
    let (out, err, code) = imipd(&[
        "--config",
        c,
        "process",
        "--trust-sender",
        m.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(outcome_of(&out).starts_with("applied"), "{out}");
    assert!(
        err.contains(&format!("store {} (data_dir of {c})", data.display())),
        "{err}"
    );
    assert!(
        data.join("store").exists(),
        "no store under the config's data_dir"
    );
    let (out, err, code) = imipd(&["--config", c, "export", "--user", "bob@example.org"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("UID:cfg-1@example.com"), "{out}");
}

/// check-config through the binary: an unknown key is named with its table, a type error names
/// its key (with table) and line.
#[test]
fn check_config_names_table_keys() {
    let tmp = TempDir::new().expect("tempdir");
    for (text, want) in [
        (
            "[lmtp]\nlisten = \"inet:127.0.0.1:1\"\ndelivr = \"x\"\n",
            ":3: key `lmtp.delivr`",
        ),
        ("[milter]\n[lmtp]\ndeliver = 3\n", ":3: key `lmtp.deliver`"),
        (
            "[ischedule]\nlisten = \"127.0.0.1:8443\"\n",
            ":2: key `ischedule.tls_cert`",
        ),
    ] {
        let p = write_config(tmp.path(), text);
        let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
        assert_eq!(code, 78, "{err}");
        assert!(err.contains(want), "want {want:?} in {err}");
    }
}

/// DESIGN "Command-line contract", `journal`: JSON lines oldest first, the newest N, filters by
/// user and Message-ID; `[journal] keep_days` retention applied by `imipd run`.
#[test]
fn journal_through_the_binary() {
    use imipd::store::{Change, Commit, Expect, JournalEntry, Sled, Store};
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    // Two lines from long ago, written as an older run would have.
    {
        let store = Sled::open(&data).expect("store");
        for (n, ts) in [(1, 1_000_000_000i64), (2, 1_000_000_100)] {
            let e = JournalEntry {
                ts,
                user: "bob@example.org".into(),
                message_id: format!("<old-{n}@example.com>"),
                method: "REQUEST".into(),
                component: "VEVENT".into(),
                uid: format!("old-{n}"),
                outcome: "applied".into(),
                reason: "stored".into(),
                count: 1,
            };
            store
                .commit(&Commit {
                    user: "bob@example.org",
                    uid: &e.uid,
                    change: Change::Keep,
                    expect: Expect::Any,
                    expect_calendar: None,
                    processed_key: None,
                    journal: &e,
                    proposal: None,
                    effects: &[],
                })
                .expect("commit");
        }
        store.flush().expect("flush");
    }
    let cfg_text = "local_domains = [\"example.org\"]\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
                    [lmtp]\nlisten = \"inet:127.0.0.1:0\"\n[journal]\nkeep_days = 30\n";
    let cfg = write_config(
        tmp.path(),
        &format!("data_dir = \"{}\"\n{cfg_text}", data.display()),
    );
    let c = cfg.to_str().expect("path");
    // New lines: one message to bob and carol, one to bob.
    let two = tmp.path().join("two.eml");
    std::fs::write(
        &two,
        "From: alice@example.com\r\nTo: bob@example.org, carol@example.org\r\nMessage-ID: <two@example.com>\r\n\
Subject: Invitation\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nVERSION:2.0\r\n\
PRODID:-//t//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:two\r\nDTSTAMP:20260102T000000Z\r\n\
DTSTART:20260110T100000Z\r\nDTEND:20260110T110000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\nATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:carol@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n",
    )
    .expect("msg");
    let one = request_msg(tmp.path(), "alice@example.com", "one@example.com");
    for m in [&two, &one] {
        let (_, err, code) = imipd(&[
            "--config",
            c,
            "process",
            "--trust-sender",
            m.to_str().expect("path"),
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let journal = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["--config", c, "journal"];
        args.extend_from_slice(extra);
        let (out, err, code) = imipd(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let field = |v: &[serde_json::Value], k: &str| -> Vec<String> {
        v.iter()
            .map(|x| x[k].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let all = journal(&[]);
    assert_eq!(
        field(&all, "uid"),
        ["old-1", "old-2", "two", "two", "one@example.com"],
        "oldest first: {all:#?}"
    );
    let last = &all[4];
    assert_eq!(last["kind"], "decision");
    assert_eq!(last["user"], "mailto:bob@example.org");
    assert_eq!(last["message_id"], "one@example.com");
    assert_eq!(last["method"], "REQUEST");
    assert_eq!(last["component"], "VEVENT");
    assert_eq!(last["outcome"], "applied");
    assert!(
        last["ts"].as_i64().is_some_and(|t| t > 1_700_000_000),
        "{last}"
    );
    assert!(last["reason"].is_string());
    assert_eq!(
        field(&journal(&["--user", "mailto:Carol@example.org"]), "uid"),
        ["two"]
    );
    let by_id = journal(&["--message-id", "<two@example.com>"]);
    assert_eq!(
        field(&by_id, "user"),
        ["mailto:bob@example.org", "mailto:carol@example.org"]
    );
    assert_eq!(
        field(
            &journal(&[
                "--message-id",
                "two@example.com",
                "--user",
                "bob@example.org"
            ]),
            "uid"
        ),
        ["two"]
    );
    assert_eq!(
        field(&journal(&["--limit", "2"]), "uid"),
        ["two", "one@example.com"]
    );
    assert_eq!(
        field(
            &journal(&["--user", "bob@example.org", "--limit", "3"]),
            "uid"
        ),
        ["old-2", "two", "one@example.com"]
    );
    assert!(journal(&["--limit", "0"]).is_empty());
    let (_, err, code) = imipd(&["--config", c, "journal", "--limit", "many"]);
    assert_eq!(code, 64, "{err}");

    // Retention: `imipd run` removes what is older than keep_days, through the same binary.
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).expect("dir");
    std::os::unix::fs::symlink(&data, run_dir.join("data")).expect("symlink");
    let mut d = Imipd::start(&run_dir, cfg_text, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.log().contains("journal: removed 2 lines") {
        assert!(
            std::time::Instant::now() < deadline,
            "no pruning: {}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (out, err, code) = d.cli(&["journal"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(!out.contains("old-"), "{out}");
    assert_eq!(d.stop(), Some(0), "{}", d.log());
    assert_eq!(
        field(&journal(&[]), "uid"),
        ["two", "two", "one@example.com"]
    );
}

/// Test hygiene: the Postfix fixture stops its master even when the directories it ran from are
/// already gone (the order fields happen to drop in), and checks that the master is gone.
#[test]
fn postfix_fixture_stops_its_master() {
    if !mta::have("postfix_fixture_stops_its_master", &["postfix"]) {
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let mut pf = mta::Postfix::start(
        &tmp.path().join("pf"),
        &mta::PostfixOptions {
            milter_port: None,
            lmtp_port: None,
            virtual_domains: &["example.org"],
            smtp_port: None,
            extra_main_cf: "",
        },
    );
    let pid = pf.master_pid().expect("master pid");
    assert!(mta::pid_alive(pid));
    drop(tmp);
    assert!(pf.stop(), "master {pid} still running");
    assert!(!mta::pid_alive(pid));
    assert!(pf.stop(), "stop is idempotent");
}

/// DESIGN "journal": several objects of one message rejected for one reason make one line
/// with "uid":"*" and "count":N (here: two events from an unproven sender).
#[test]
fn journal_summarizes_rejections_of_one_message() {
    let tmp = TempDir::new().expect("tempdir");
    let cfg = write_config(
        tmp.path(),
        &format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.org\"]\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\n",
            tmp.path().join("data").display()
        ),
    );
    let c = cfg.to_str().expect("path");
    let ev = |uid: &str| {
        format!(
            "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260102T000000Z\r\nDTSTART:20260110T100000Z\r\n\
DTEND:20260110T110000Z\r\nORGANIZER:mailto:alice@example.com\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.org\r\nEND:VEVENT\r\n"
        )
    };
    let cal = |e: &str| {
        format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nMETHOD:REQUEST\r\n{e}END:VCALENDAR\r\n")
    };
    let m = tmp.path().join("two-objects.eml");
    std::fs::write(
        &m,
        format!(
            "From: alice@example.com\r\nTo: bob@example.org\r\nMessage-ID: <pair@example.com>\r\nSubject: Two\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\n{}--b\r\n\
Content-Type: text/calendar; method=REQUEST\r\n\r\n{}--b--\r\n",
            cal(&ev("pair-a")),
            cal(&ev("pair-b"))
        ),
    )
    .expect("msg");
    let (out, err, code) = imipd(&["--config", c, "process", m.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("\"outcome\":\"rejected\"").count(), 2, "{out}");
    let (out, err, code) = imipd(&["--config", c, "journal", "--message-id", "pair@example.com"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["kind"], "decision");
    assert_eq!(lines[0]["uid"], "*");
    assert_eq!(lines[0]["count"], 2);
    assert_eq!(lines[0]["outcome"], "rejected");
}

/// Runs the binary and waits at most `limit`; kills it and fails the test past that.
fn imipd_limited(args: &[&str], limit: std::time::Duration) -> (String, i32) {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("imipd");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("imipd {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (err, status.code().unwrap_or(-1))
}

/// DESIGN "Config contract", `[store] url`: this build has no PostgreSQL store, so such a URL is
/// a config error of check-config and run (naming the key, never showing the URL, which may
/// hold a password), not a quiet fall-back to the embedded store; another scheme names its line.
#[test]
fn store_url_without_a_backend_is_a_config_error() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    for scheme in ["postgresql", "postgres"] {
        let p = write_config(
            tmp.path(),
            &format!(
                "data_dir = \"{}\"\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\n\
                 listen = \"inet:127.0.0.1:0\"\n[store]\n\
                 url = \"{scheme}://imipd:s3cret@db.example.org/imipd\"\n\
                 password_file = \"/nonexistent/db.secret\"\n",
                data.display()
            ),
        );
        let c = p.to_str().expect("path");
        for args in [
            &["--config", c, "check-config"][..],
            &["--config", c, "run"],
        ] {
            let (err, code) = imipd_limited(args, std::time::Duration::from_secs(20));
            assert_eq!(code, 78, "{args:?}: {err}");
            assert!(
                err.contains(":7: key `store.url`")
                    && err.contains("the PostgreSQL store is not available in this build"),
                "{args:?}: {err}"
            );
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert!(
            !data.join("store").exists(),
            "an embedded store was created"
        );
    }
    let p = write_config(
        tmp.path(),
        "[log]\nlevel = \"info\"\n[store]\nurl = \"mysql://imipd:s3cret@db/imipd\"\n",
    );
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(":4: key `store.url`") && err.contains("\"mysql\""),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    // password_file alone is accepted (it only matters with a URL).
    let p = write_config(tmp.path(), "[store]\npassword_file = \"/x/db.secret\"\n");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 0, "{err}"); // The embedded store's page cache is sized from the config, within bounds.
    let p = write_config(tmp.path(), "[store]\ncache_mb = 64\n");
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 0, "{err}");
    let p = write_config(
        tmp.path(),
        "[log]\nlevel = \"info\"\n[store]\ncache_mb = 0\n",
    );
    let (_, err, code) = imipd(&["--config", p.to_str().expect("path"), "check-config"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(":4: key `store.cache_mb`"), "{err}");
}

/// Admin commands go to the daemon only when its control socket takes a connection: a socket
/// file left by a daemon that died is not a running daemon, and a store that will not open for
/// another reason is an I/O error (EX_IOERR) that says why.
#[test]
fn admin_commands_ask_the_socket_whether_the_daemon_runs() {
    let tmp = TempDir::new().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(data.join("control.sock")).expect("bind"));
    assert!(data.join("control.sock").exists());
    let ics = tmp.path().join("e.ics");
    std::fs::write(
        &ics,
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:sock-1\r\n\
         DTSTAMP:20300101T000000Z\r\nDTSTART:20300101T100000Z\r\nSUMMARY:x\r\nEND:VEVENT\r\n\
         END:VCALENDAR\r\n",
    )
    .expect("ics");
    let d = data.to_str().expect("path");
    let (_, err, code) = imipd(&[
        "--data-dir",
        d,
        "import",
        "--user",
        "bob@example.org",
        ics.to_str().expect("path"),
    ]);
    assert_eq!(code, 0, "{err}");
    let (out, err, code) = imipd(&["--data-dir", d, "export", "--user", "bob@example.org"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("UID:sock-1"), "{out}");
    // A store that cannot be opened (its directory is a file), beside the same dead socket.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    std::fs::write(broken.join("store"), "not a store").expect("file");
    drop(std::os::unix::net::UnixListener::bind(broken.join("control.sock")).expect("bind"));
    let (_, err, code) = imipd(&[
        "--data-dir",
        broken.to_str().expect("path"),
        "import",
        "--user",
        "bob@example.org",
        ics.to_str().expect("path"),
    ]);
    assert_eq!(code, 74, "{err}");
    assert!(err.contains("broken"), "{err}");
    assert!(!err.contains("control socket"), "{err}");
}

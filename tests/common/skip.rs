//! The one way a test skips: with `CI=true` a missing tool or privilege fails the test (the run
//! must not pass by testing nothing); elsewhere it prints a `NOTICE:` line that `cargo test`
//! shows (written past libtest's output capture), and the caller returns early.
//!
//! Included by `tests/common`, `tests/mta` and `tests/signers` (`#[path]`), so that every test
//! crate shares it whichever helper modules it uses.

#![allow(dead_code)]

/// Whether this run is a CI run (`CI=true` or `CI=1`): skipping is then a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports that `test` cannot run because of `why`: panics under CI, prints a NOTICE otherwise.
/// The caller returns right after.
pub fn skip(test: &str, why: &str) {
    let why: String = why.chars().filter(|c| !c.is_control()).collect();
    if in_ci() {
        panic!("{test} cannot run under CI=true: {why}");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
    // skip must show in `cargo test`'s output.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "NOTICE: skipping {test}: {why}");
}

/// Whether the test runs as root (a private Postfix, Cyrus's master and Dovecot need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is an executable on PATH or in /usr/sbin and /sbin.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/lib/dovecot"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).is_file())
}

/// Whether every tool is there; otherwise [`skip`]s naming the missing ones.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    skip(test, &format!("missing {}", missing.join(", ")));
    false
}

/// Whether the crate under test was built with the `fault-injection` feature, which lets a
/// test make the binary's store commits fail (`IMIPD_TEST_STORE_FAILURES`); tools/test.sh
/// builds with it. Otherwise [`skip`]s.
pub fn fault_injection(test: &str) -> bool {
    if cfg!(feature = "fault-injection") {
        return true;
    }
    skip(
        test,
        "imipd was built without the fault-injection feature (cargo test --features \
         fault-injection, as tools/test.sh runs it)",
    );
    false
}

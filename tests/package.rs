//! The Debian package (`cargo deb`, `[package.metadata.deb]`): built, inspected with
//! `dpkg-deb --contents`, extracted with `dpkg-deb -x` into a temp root (never installed on
//! this host), its packaged config validated by its own binary, and the systemd unit's
//! ExecStart command line run from the temp root and stopped.
//!
//! The package is built with the dev profile so that the test reuses the test build; `cargo
//! deb` (release) packs the same assets.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST: &str = "debian_package";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn have_cargo_deb() -> bool {
    Command::new(cargo())
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// An absolute path of the unit, moved under `root`.
fn under(root: &Path, arg: &str) -> String {
    if arg.starts_with("/usr/") || arg.starts_with("/etc/") || arg.starts_with("/var/") {
        root.join(&arg[1..]).display().to_string()
    } else {
        arg.to_string()
    }
}

/// The unit's `KEY=` command line, its paths moved under `root`, with `--data-dir` under
/// `root` too (the packaged config names /var/lib/imipd).
fn unit_command(unit: &str, key: &str, root: &Path) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit:\n{unit}"));
    let mut argv: Vec<String> = line.split_whitespace().map(|a| under(root, a)).collect();
    argv.insert(1, "--data-dir".into());
    argv.insert(2, root.join("var/lib/imipd").display().to_string());
    argv
}

#[test]
fn debian_package() {
    if !common::require(TEST, &["dpkg-deb"]) {
        return;
    }
    if !have_cargo_deb() {
        common::skip(
            TEST,
            "cargo-deb is not installed (cargo install cargo-deb --locked)",
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = tmp.path().join("imipd.deb");
    let mut build = Command::new(cargo());
    build.args(["deb", "--profile", "dev", "--no-strip", "--fast", "--quiet"]);
    // The same features as this test build: cargo deb writes target/debug/imipd, which the
    // other integration tests of this run execute, so it must stay the binary they expect.
    if cfg!(feature = "fault-injection") {
        build.args(["--features", "fault-injection"]);
    }
    let build = build
        .arg("-o")
        .arg(&deb)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo deb");
    assert!(
        build.status.success() && deb.is_file(),
        "cargo deb failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );

    // What is in it.
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let paths: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for want in [
        "./usr/bin/imipd",
        "./usr/share/man/man8/imipd.8",
        "./usr/share/man/man5/imipd.toml.5",
        "./etc/imipd/imipd.toml",
        "./usr/share/doc/imipd/imipd.toml.example",
        "./lib/systemd/system/imipd.service",
    ] {
        let found = paths.iter().any(|p| {
            p.trim_end_matches(".gz") == want
                || p.trim_end_matches(".gz") == want.replacen("./lib/", "./usr/lib/", 1)
        });
        assert!(found, "{want} not in the package:\n{contents}");
    }
    let info = output(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: imipd"), "{info}");
    assert!(info.contains("adduser"), "Depends on adduser: {info}");
    let control = tmp.path().join("control");
    output(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).expect("conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/imipd/imipd.toml"),
        "{conffiles}"
    );
    // The system user and the state directory come from the maintainer scripts.
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("install -d -o imipd -g imipd -m 0750 /var/lib/imipd"),
        "{postinst}"
    );
    for script in ["postinst", "postrm"] {
        output(Command::new("sh").arg("-n").arg(control.join(script)));
    }

    // Extracted into a temp root, never installed.
    let root = tmp.path().join("root");
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let bin = root.join("usr/bin/imipd");
    let conf = root.join("etc/imipd/imipd.toml");
    let version = output(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("imipd {}", env!("CARGO_PKG_VERSION"))
    );
    let checked = output(
        Command::new(&bin)
            .arg("--config")
            .arg(&conf)
            .arg("check-config"),
    );
    assert!(checked.contains("\"ok\":true"), "{checked}");
    let packaged = std::fs::read_to_string(&conf).expect("packaged config");
    assert!(
        packaged
            .lines()
            .any(|l| l.trim_start().starts_with("user = \"imipd\"")),
        "the packaged config runs as the imipd user"
    );
    // The maintainer scripts create the imipd user; this host has not run them. Started as
    // root, the daemon drops to the configured user, so name one that exists here instead.
    let host_has_imipd = Command::new("id")
        .arg("imipd")
        .output()
        .is_ok_and(|o| o.status.success());
    if !host_has_imipd {
        std::fs::write(
            &conf,
            packaged.replace("user = \"imipd\"", "user = \"nobody\""),
        )
        .expect("config for this host");
    }
    let unit_path = [
        "usr/lib/systemd/system/imipd.service",
        "lib/systemd/system/imipd.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.is_file())
    .expect("unit file");
    let unit = std::fs::read_to_string(&unit_path).expect("unit");
    assert!(unit.contains("User=imipd"), "{unit}");

    // ExecStartPre and ExecStart, as the unit says, from the temp root.
    let pre = unit_command(&unit, "ExecStartPre", &root);
    output(Command::new(&pre[0]).args(&pre[1..]));
    let start = unit_command(&unit, "ExecStart", &root);
    assert_eq!(PathBuf::from(&start[0]), bin);
    if !port_free(8897) || !port_free(2424) {
        common::skip(TEST, "the packaged config's ports 8897 and 2424 are in use");
        return;
    }
    let log = tmp.path().join("imipd.log");
    let mut child = Command::new(&start[0])
        .args(&start[1..])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start the packaged imipd");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listening = Vec::new();
    while !listening.iter().any(|l: &String| l.contains("\"control\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => listening.push(l),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the packaged imipd did not come up: {listening:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
    let all = listening.join("\n");
    assert!(
        all.contains("inet:127.0.0.1:8897") && all.contains("inet:127.0.0.1:2424"),
        "{all}"
    );
    assert!(
        root.join("var/lib/imipd/store").exists(),
        "store not under the temp root"
    );
    // systemd stops it with SIGTERM (KillSignal=SIGTERM).
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the packaged imipd did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

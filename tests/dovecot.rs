//! Dovecot: imipd's LMTP door hands each message on to a real Dovecot LMTP server
//! (`deliver = "lmtp:inet:..."`), started by the test with its own config, base_dir and mail
//! homes under a temp dir (no system service), and stopped with every process it started.

mod mta;

use mta::Imipd;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Dovecot (master in the foreground, our child) serving LMTP on loopback.
struct Dovecot {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Dovecot {
    /// Starts Dovecot on a free port; where another process took the port before Dovecot could
    /// bind it, starts again on another one (five tries).
    fn start(dir: &Path, extra: &str) -> Dovecot {
        mta::start_on_free_port("dovecot", &dir.join("dovecot.log"), true, || {
            Dovecot::start_once(dir, extra)
        })
    }

    fn start_once(dir: &Path, extra: &str) -> Result<Dovecot, String> {
        use std::os::unix::fs::PermissionsExt;
        // Mail is written as nobody: the path to the homes must be searchable.
        let mut p = Some(dir);
        while let Some(d) = p {
            if d == Path::new("/") {
                break;
            }
            let mode = std::fs::metadata(d)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711));
            p = d.parent();
        }
        let homes = dir.join("home");
        for d in [dir.join("run"), dir.join("state"), homes.clone()] {
            std::fs::create_dir_all(&d).expect("dovecot dirs");
        }
        let st = Command::new("chown")
            .arg("nobody:nogroup")
            .arg(&homes)
            .status()
            .expect("chown");
        assert!(st.success());
        let port = mta::free_port();
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
                 protocols = lmtp\nlisten = 127.0.0.1\nssl = no\n\
                 default_internal_user = dovecot\ndefault_login_user = dovenull\n\
                 postmaster_address = postmaster@example.org\nmail_location = maildir:~/Maildir\n\
                 first_valid_uid = 1\n\
                 passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
                 userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/home/%d/%n\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n\
                 service anvil {{\n  chroot =\n}}\n{extra}",
                d = dir.display()
            ),
        )
        .expect("dovecot.conf");
        let child = Command::new("dovecot")
            .arg("-c")
            .arg(&conf)
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("dovecot.stderr")).expect("stderr"))
            .spawn()
            .expect("start dovecot");
        let mut d = Dovecot {
            child,
            dir: dir.to_path_buf(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match mta::greeting(port) {
                Some(l) if l.starts_with("220 ") && l.contains("Dovecot") => return Ok(d),
                Some(l) if !l.is_empty() => {
                    d.stop();
                    return Err(format!("the port answers as another server: {l:?}"));
                }
                _ => {}
            }
            if Instant::now() > deadline || d.child.try_wait().ok().flatten().is_some() {
                let log = d.log();
                d.stop();
                return Err(format!("dovecot did not start listening:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.join("dovecot.stderr")).unwrap_or_default()
    }

    fn maildir(&self, domain: &str, user: &str) -> PathBuf {
        self.dir
            .join("home")
            .join(domain)
            .join(user)
            .join("Maildir")
    }

    /// The processes whose parent is the master.
    fn children(&self) -> Vec<u32> {
        let master = self.child.id().to_string();
        std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/stat"))
                            .ok()
                            .and_then(|s| {
                                s.rsplit_once(')').and_then(|(_, r)| {
                                    r.split_whitespace().nth(1).map(str::to_string)
                                })
                            })
                            .is_some_and(|ppid| ppid == master)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGTERM to the master, wait; returns whether the master and all its children are gone.
    fn stop(&mut self) -> bool {
        let children = self.children();
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let gone = children
            .iter()
            .all(|&c| mta::wait_gone(c, Duration::from_secs(10)));
        exited && gone
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let gone = self.stop();
        if !gone && !std::thread::panicking() {
            panic!("dovecot processes of {} still running", self.dir.display());
        }
    }
}

/// One LMTP transaction (RFC 2033): the reply lines after DATA, one per recipient.
fn lmtp_send(port: u16, from: &str, to: &[&str], data: &str) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let reply = |r: &mut BufReader<TcpStream>| -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).expect("read") == 0 {
                break;
            }
            let done = l.len() < 4 || l.as_bytes()[3] != b'-';
            lines.push(l.trim_end().to_string());
            if done {
                break;
            }
        }
        lines
    };
    let mut cmd = |r: &mut BufReader<TcpStream>, line: &str, want: &str| {
        w.write_all(format!("{line}\r\n").as_bytes())
            .expect("write");
        let got = reply(r);
        assert!(
            got.last().is_some_and(|l| l.starts_with(want)),
            "{line}: {got:?}"
        );
    };
    let greeting = reply(&mut r);
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    cmd(&mut r, "LHLO test.example", "250");
    cmd(&mut r, &format!("MAIL FROM:<{from}>"), "250");
    for t in to {
        cmd(&mut r, &format!("RCPT TO:<{t}>"), "250");
    }
    cmd(&mut r, "DATA", "354");
    let mut body = data.replace("\r\n.", "\r\n..");
    body.push_str(".\r\n");
    let mut w2 = r.get_ref().try_clone().expect("clone");
    w2.write_all(body.as_bytes()).expect("data");
    let out: Vec<String> = to.iter().flat_map(|_| reply(&mut r)).collect();
    let _ = w2.write_all(b"QUIT\r\n");
    out
}

fn invitation(uid: &str, to: &[&str]) -> String {
    let attendees: String = to
        .iter()
        .map(|a| format!("ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{a}\r\n"))
        .collect();
    format!(
        "Authentication-Results: upstream.example; dkim=pass header.d=example.com\r\n\
         From: Alice <alice@example.com>\r\nTo: {}\r\nSubject: Invitation\r\n\
         Message-ID: <{uid}>\r\nDate: Mon, 05 Jan 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n\
         BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd tests//dovecot//EN\r\nMETHOD:REQUEST\r\n\
         BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260105T090000Z\r\nSEQUENCE:0\r\n\
         DTSTART:20260302T100000Z\r\nDTEND:20260302T110000Z\r\nSUMMARY:Planning\r\n\
         ORGANIZER:mailto:alice@example.com\r\n{attendees}END:VEVENT\r\nEND:VCALENDAR\r\n",
        to.join(", ")
    )
}

fn messages(maildir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_messages(maildir: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = messages(maildir);
        if m.len() >= n || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lmtp_hands_on_to_dovecot() {
    let test = "lmtp_hands_on_to_dovecot";
    if !mta::have(test, &["dovecot"]) {
        return;
    }
    if !mta::is_root() {
        mta::skip(test, "a private Dovecot delivering as nobody needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dovecot = Dovecot::start(&tmp.path().join("dovecot"), "");
    let mut imipd = Imipd::start(
        &tmp.path().join("imipd"),
        &format!(
            "local_domains = [\"example.org\"]\n[milter]\nenabled = false\n\
             [lmtp]\nlisten = \"inet:127.0.0.1:0\"\ndeliver = \"lmtp:inet:127.0.0.1:{}\"\n\
             [policy]\ntrusted_authserv_ids = [\"upstream.example\"]\n",
            dovecot.port
        ),
        &[],
    );
    let port = imipd.lmtp_port.expect("lmtp port");
    let to = ["bob@example.org", "carol@example.org"];
    let replies = lmtp_send(
        port,
        "alice@example.com",
        &to,
        &invitation("dove-1@example.com", &to),
    );
    assert_eq!(replies.len(), 2, "{replies:?}");
    for (r, who) in replies.iter().zip(to) {
        assert!(
            r.starts_with("250") && r.contains(who),
            "{replies:?}\n{}",
            imipd.log()
        );
    }
    // Dovecot stored one copy per recipient, annotated by imipd.
    for user in ["bob", "carol"] {
        let msgs = wait_messages(&dovecot.maildir("example.org", user), 1);
        assert_eq!(msgs.len(), 1, "{user}: {}", dovecot.log());
        let m = &msgs[0];
        assert!(m.contains("X-Imipd-Result:"), "{m}");
        assert!(m.contains("UID:dove-1@example.com"), "{m}");
    }
    // Dovecot writes its log line after the mail is saved: wait for both lines (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = dovecot.log();
    while log.matches("saved mail to INBOX").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        log = dovecot.log();
    }
    assert!(
        log.matches("saved mail to INBOX").count() >= 2,
        "dovecot log:\n{log}"
    );
    // And the calendars were updated.
    for user in to {
        let cal = imipd.export(user);
        assert!(
            cal.contains("UID:dove-1@example.com"),
            "{user}: {cal}\n{}",
            imipd.log()
        );
    }

    // Dovecot gone: the message is not lost, LMTP answers a temporary failure per recipient.
    assert!(dovecot.stop(), "dovecot processes left");
    let replies = lmtp_send(
        port,
        "alice@example.com",
        &to[..1],
        &invitation("dove-2@example.com", &to[..1]),
    );
    assert!(replies.iter().all(|r| r.starts_with('4')), "{replies:?}");
    assert_eq!(imipd.stop(), Some(0), "{}", imipd.log());
}

/// `imipd process` as a Sieve program for sites that deliver with Dovecot's LDA (imipd(8),
/// SIEVE FILTER): Pigeonhole's `execute :pipe` feeds the message to the wrapper the man page
/// shows, the calendar is updated, and the message itself is delivered unchanged.
#[test]
fn process_as_a_sieve_program_under_dovecot_lda() {
    let test = "process_as_a_sieve_program_under_dovecot_lda";
    if !mta::have(test, &["dovecot", "dovecot-lda"]) {
        return;
    }
    let extprograms = Path::new("/usr/lib/dovecot/modules/sieve/lib90_sieve_extprograms_plugin.so");
    if !extprograms.exists() {
        mta::skip(
            test,
            "Pigeonhole's extprograms plugin (dovecot-sieve) is not installed",
        );
        return;
    }
    if !mta::is_root() {
        mta::skip(test, "a private Dovecot delivering as nobody needs root");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    let bin_dir = site.join("sieve-bin");
    let data = site.join("imipd-data");
    for d in [&bin_dir, &data] {
        std::fs::create_dir_all(d).expect("dirs");
    }
    // The store belongs to the user Dovecot delivers as.
    assert!(Command::new("chown")
        .arg("nobody:nogroup")
        .arg(&data)
        .status()
        .expect("chown")
        .success());
    let config = site.join("imipd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlocal_domains = [\"example.org\"]\n[policy]\ntrusted_authserv_ids = [\"upstream.example\"]\n",
            data.display()
        ),
    )
    .expect("config");
    // The wrapper of imipd(8), with this build's binary and config.
    let wrapper = bin_dir.join("imipd-process");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} --config {} process \\\n    --recipient \"$1\" - >/dev/null\n",
            env!("CARGO_BIN_EXE_imipd"),
            config.display()
        ),
    )
    .expect("wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let script = site.join("imipd.sieve");
    std::fs::write(
        &script,
        "require [\"vnd.dovecot.execute\", \"envelope\", \"variables\"];\n\
         if envelope :matches \"to\" \"*\" {\n    execute :pipe \"imipd-process\" \"${1}\";\n}\n",
    )
    .expect("sieve");
    let dovecot = Dovecot::start(
        &tmp.path().join("dovecot"),
        &format!(
            "protocol lda {{\n  mail_plugins = sieve\n}}\n\
             plugin {{\n  sieve_default = {}\n  sieve_plugins = sieve_extprograms\n  \
             sieve_global_extensions = +vnd.dovecot.execute\n  sieve_execute_bin_dir = {}\n}}\n",
            script.display(),
            bin_dir.display()
        ),
    );
    let conf = dovecot.dir.join("dovecot.conf");
    let msg = invitation("sieve-1@example.com", &["bob@example.org"]);
    let mut lda = Command::new("/usr/lib/dovecot/dovecot-lda")
        .arg("-c")
        .arg(&conf)
        .args([
            "-d",
            "bob@example.org",
            "-a",
            "bob@example.org",
            "-f",
            "alice@example.com",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dovecot-lda");
    lda.stdin
        .take()
        .expect("stdin")
        .write_all(msg.as_bytes())
        .expect("message");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lda.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = lda.kill();
            panic!("dovecot-lda still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = lda.wait_with_output().expect("lda output");
    assert!(
        out.status.success(),
        "dovecot-lda: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dovecot.log()
    );
    // Delivered unchanged (no imipd header: nothing was handed back to Dovecot).
    let msgs = wait_messages(&dovecot.maildir("example.org", "bob"), 1);
    assert_eq!(msgs.len(), 1, "{}", dovecot.log());
    assert!(msgs[0].contains("UID:sieve-1@example.com"), "{}", msgs[0]);
    assert!(!msgs[0].contains("X-Imipd-Result"), "{}", msgs[0]);
    // And the calendar was updated by the Sieve program, with the sender proven.
    let export = Command::new(env!("CARGO_BIN_EXE_imipd"))
        .arg("--config")
        .arg(&config)
        .args(["journal", "--user", "bob@example.org"])
        .output()
        .expect("journal");
    let journal = String::from_utf8_lossy(&export.stdout);
    assert!(
        journal.contains("\"uid\":\"sieve-1@example.com\"")
            && journal.contains("\"outcome\":\"applied\""),
        "journal: {journal}\n{}\n{}",
        String::from_utf8_lossy(&export.stderr),
        dovecot.log()
    );
}

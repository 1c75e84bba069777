//! A private Postfix on loopback and a running `imipd` daemon, for end-to-end tests.
//!
//! Postfix gets its own config, queue and data directories under a temporary directory, chroot
//! off, every DNS lookup off, and `error:` for every outbound transport; it runs as root and is
//! stopped when the fixture is dropped. Tests skip (with a notice) where Postfix or root is not
//! available.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// One helper shared by every test crate, whichever of common, mta and signers it uses.
#[allow(clippy::duplicate_mod)]
#[path = "../common/skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::{fault_injection, in_ci, is_root, skip};

/// Whether every tool is installed (and root, for a private Postfix); otherwise skips (a
/// failure under `CI=true`, a NOTICE elsewhere).
pub fn have(test: &str, tools: &[&str]) -> bool {
    if !skip::require(test, tools) {
        return false;
    }
    if tools.contains(&"postfix") && !is_root() {
        skip(test, "a private Postfix needs root");
        return false;
    }
    true
}

/// A TCP port on 127.0.0.1 that is free now, for a server started later. It is taken outside
/// the kernel's ephemeral range (below it, or above it where the range starts low), so that no
/// outgoing connection or port-0 listener (another test's daemon) can be given it meanwhile,
/// and handed out once per process. A test that binds the port itself should bind port 0
/// instead and keep the socket.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|r| {
            r.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (low, high) = match range[..] {
        [l, h] => (l, h),
        _ => (32768, 60999),
    };
    // The widest window of at least 2,000 ports outside [low, high]; the whole range else.
    let (start, span) = if low >= 12000 {
        (10000, low - 10000)
    } else if high <= 63000 {
        (high + 1, 65535 - high)
    } else {
        (10000, 55000)
    };
    // Test binaries run one after another: each starts at its own offset.
    let base = std::process::id() * 97 % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (start + (base + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `imipd run`.
pub struct Imipd {
    child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub milter_port: Option<u16>,
    pub lmtp_port: Option<u16>,
    pub ischedule_port: Option<u16>,
    stderr_log: PathBuf,
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit(':').next()?.parse().ok()
}

impl Imipd {
    /// Starts imipd with `config` (TOML; `data_dir` is added) and the given environment.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Imipd {
        std::fs::create_dir_all(dir).expect("dir");
        let cfg_path = dir.join("imipd.toml");
        std::fs::write(
            &cfg_path,
            format!("data_dir = \"{}\"\n{config}", dir.join("data").display()),
        )
        .expect("config");
        let stderr_log = dir.join("imipd.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_imipd"));
        cmd.arg("--config").arg(&cfg_path).arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("log"))
            .spawn()
            .expect("start imipd");
        let stdout = child.stdout.take().expect("stdout");
        let mut milter_port = None;
        let mut lmtp_port = None;
        let mut ischedule_port = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read");
            let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
            let addr = v["address"].as_str().unwrap_or("");
            match v["listening"].as_str() {
                Some("milter") => milter_port = port_of(addr),
                Some("lmtp") => lmtp_port = port_of(addr),
                Some("ischedule") => ischedule_port = port_of(addr),
                Some("control") => break,
                _ => {}
            }
        }
        Imipd {
            child,
            dir: dir.to_path_buf(),
            config: cfg_path,
            milter_port,
            lmtp_port,
            ischedule_port,
            stderr_log,
        }
    }

    /// Runs an admin command (through the control socket while the daemon runs).
    pub fn cli(&self, args: &[&str]) -> (String, String, i32) {
        let out = Command::new(env!("CARGO_BIN_EXE_imipd"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("imipd cli");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    pub fn export(&self, user: &str) -> String {
        self.cli(&["export", "--user", user]).0
    }

    pub fn import(&self, user: &str, ics: &str) {
        let p = self.dir.join(format!(
            "import-{}.ics",
            Instant::now().elapsed().as_nanos()
        ));
        std::fs::write(&p, ics).expect("ics");
        let (_, err, code) = self.cli(&["import", "--user", user, p.to_str().expect("path")]);
        assert_eq!(code, 0, "import: {err}");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Imipd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A private Postfix instance.
pub struct Postfix {
    pub dir: PathBuf,
    pub smtp_port: u16,
    /// The master daemon's pid (from `queue/pid/master.pid`), to stop it even when its
    /// directories are gone and to check that it is gone.
    master_pid: Option<u32>,
}

/// Whether a process is alive (a zombie is not).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

/// Waits up to `timeout` for `pid` to exit.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

pub struct PostfixOptions<'a> {
    pub milter_port: Option<u16>,
    /// Where `virtual_transport` delivers: the LMTP port.
    pub lmtp_port: Option<u16>,
    pub virtual_domains: &'a [&'a str],
    /// The smtpd port; None picks a free one.
    pub smtp_port: Option<u16>,
    /// Appended to main.cf (e.g. a `transport_maps` line).
    pub extra_main_cf: &'a str,
}

const MASTER_CF: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// The first line the server on `port` sends (within 10 s), if it accepts a connection: a test
/// checks that the listener is the server it started, not another process that took the port.
pub fn greeting(port: u16) -> Option<String> {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    Some(line)
}

/// Whether a start failed because another process had the port (worth a try on another one).
pub fn port_was_taken(why: &str) -> bool {
    why.contains("Address already in use") || why.contains("another server")
}

/// Runs `start` until it succeeds, again (five tries in all) while it fails on a taken port and
/// `retry` allows, keeping each failed try's `log` beside it as `log.N`; panics with the reason
/// otherwise.
pub fn start_on_free_port<T>(
    what: &str,
    log: &Path,
    retry: bool,
    mut start: impl FnMut() -> Result<T, String>,
) -> T {
    for attempt in 1.. {
        match start() {
            Ok(t) => return t,
            Err(why) if retry && attempt < 5 && port_was_taken(&why) => {
                eprintln!("NOTICE: {what}: {why}; another port");
                let name = log.file_name().unwrap_or_default().to_string_lossy();
                let _ = std::fs::rename(log, log.with_file_name(format!("{name}.{attempt}")));
            }
            Err(why) => panic!("{what}: {why}"),
        }
    }
    unreachable!()
}

impl Postfix {
    /// Starts Postfix; where the smtpd port is picked here and another process took it before
    /// Postfix could bind it, starts again on another port (five tries).
    pub fn start(dir: &Path, o: &PostfixOptions<'_>) -> Postfix {
        start_on_free_port(
            "postfix",
            &dir.join("maillog"),
            o.smtp_port.is_none(),
            || {
                let port = o.smtp_port.unwrap_or_else(free_port);
                Postfix::start_at(dir, o, port).map_err(|e| format!("port {port}: {e}"))
            },
        )
    }

    fn start_at(dir: &Path, o: &PostfixOptions<'_>, smtp_port: u16) -> Result<Postfix, String> {
        let etc = dir.join("etc");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).expect("postfix dirs");
        }
        // Postfix's users must reach the directories.
        let mut p = Some(dir);
        while let Some(d) = p {
            if d == Path::new("/") {
                break;
            }
            let _ = Command::new("chmod").arg("o+x").arg(d).status();
            p = d.parent();
        }
        let _ = Command::new("chmod").arg("755").arg(dir).status();
        let _ = Command::new("chown")
            .arg("postfix:postfix")
            .arg(&data)
            .status();
        let mut main = format!(
            "compatibility_level = 3.6\nqueue_directory = {q}\ndata_directory = {d}\nmail_owner = postfix\n\
             setgid_group = postdrop\nmyhostname = mx.example.org\nmydomain = example.org\nmydestination =\n\
             inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             smtpd_peername_lookup = no\nsmtp_dns_support_level = disabled\n\
             default_transport = error:no outbound mail in tests\nrelay_transport = error:no outbound mail in tests\n\
             local_transport = error:no local mail in tests\nalias_maps =\nalias_database =\nlocal_recipient_maps =\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject\nmaillog_file = {dir}/maillog\n\
             maillog_file_prefixes = {dir}\nbiff = no\nsmtputf8_enable = no\n\
             minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n\
             milter_default_action = tempfail\nlmtp_connection_cache_on_demand = no\n",
            q = queue.display(),
            d = data.display(),
            dir = dir.display()
        );
        main.push_str(&format!(
            "virtual_mailbox_domains = {}\n",
            o.virtual_domains.join(" ")
        ));
        match o.lmtp_port {
            Some(p) => main.push_str(&format!("virtual_transport = lmtp:inet:127.0.0.1:{p}\n")),
            None => main.push_str("virtual_transport = error:no delivery configured\n"),
        }
        if let Some(p) = o.milter_port {
            main.push_str(&format!("smtpd_milters = inet:127.0.0.1:{p}\n"));
        }
        main.push_str(o.extra_main_cf);
        std::fs::write(etc.join("main.cf"), main).expect("main.cf");
        std::fs::write(
            etc.join("master.cf"),
            format!("127.0.0.1:{smtp_port} inet n - n - - smtpd\n{MASTER_CF}"),
        )
        .expect("master.cf");
        let c = etc.display().to_string();
        let st = Command::new("postfix")
            .args(["-c", &c, "check"])
            .status()
            .expect("postfix check");
        assert!(st.success(), "postfix check failed");
        let out = Command::new("postfix")
            .args(["-c", &c, "start"])
            .output()
            .expect("postfix start");
        if !out.status.success() {
            return Err(format!(
                "postfix start failed: {}{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("maillog")).unwrap_or_default()
            ));
        }
        let pid_file = queue.join("pid/master.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        let master_pid = loop {
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if pid.is_some() || Instant::now() > deadline {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut pf = Postfix {
            dir: dir.to_path_buf(),
            smtp_port,
            master_pid,
        };
        if pf.master_pid.is_none() {
            pf.stop();
            panic!("postfix wrote no {}", pid_file.display());
        }
        // Wait until our smtpd answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match greeting(smtp_port) {
                Some(l) if l.starts_with("220 mx.example.org") => return Ok(pf),
                Some(l) if !l.is_empty() => {
                    pf.stop();
                    return Err(format!("the port answers as another server: {l:?}"));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let log = pf.maillog();
                pf.stop();
                return Err(format!("postfix did not start listening:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Injects a message with swaks; returns swaks' output and whether it was queued.
    pub fn send(&self, from: &str, to: &[&str], data: &[u8]) -> (String, bool) {
        let file = self.dir.join(format!(
            "msg-{}.eml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::write(&file, data).expect("message");
        let out = Command::new("swaks")
            .args([
                "--server",
                &format!("127.0.0.1:{}", self.smtp_port),
                "--from",
                from,
                "--to",
                &to.join(","),
                "--data",
            ])
            .arg(&file)
            .args(["--timeout", "60"])
            .output()
            .expect("swaks");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let queued = text.contains("250 2.0.0 Ok: queued");
        (text, queued)
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// Waits until the mail log contains `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.maillog().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Postfix {
    /// The master daemon's pid.
    pub fn master_pid(&self) -> Option<u32> {
        self.master_pid
    }

    /// Stops this Postfix: `postfix abort` while its config is there, then SIGTERM and SIGKILL
    /// to the master by pid. Returns whether the master is gone; idempotent.
    pub fn stop(&mut self) -> bool {
        let etc = self.dir.join("etc");
        if etc.join("main.cf").exists() {
            let _ = Command::new("postfix")
                .args(["-c", &etc.display().to_string(), "abort"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let Some(pid) = self.master_pid else {
            return true;
        };
        for (signal, wait) in [(libc::SIGTERM, 10), (libc::SIGKILL, 5)] {
            if wait_gone(
                pid,
                Duration::from_secs(if signal == libc::SIGTERM { 5 } else { 0 }),
            ) {
                self.master_pid = None;
                return true;
            }
            // Never signal a process that reused the pid.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() != "master" {
                self.master_pid = None;
                return true;
            }
            // SAFETY: kill(2) on the pid Postfix's master wrote; no memory is involved.
            unsafe {
                libc::kill(pid as i32, signal);
            }
            if wait_gone(pid, Duration::from_secs(wait)) {
                self.master_pid = None;
                return true;
            }
        }
        false
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let pid = self.master_pid;
        let gone = self.stop();
        if !gone && !std::thread::panicking() {
            panic!(
                "postfix master {pid:?} of {} is still running",
                self.dir.display()
            );
        }
    }
}

/// Files delivered into a Maildir's new/.
pub fn maildir_messages(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("new"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits for `n` messages in a Maildir.
pub fn wait_maildir(dir: &Path, n: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = maildir_messages(dir);
        if m.len() >= n || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The LMTP replies (greeting, LHLO, MAIL, RCPT, then DATA and the final reply when RCPT was
/// accepted).
pub fn lmtp_deliver(port: u16, from: &str, rcpt: &str, data: &[u8]) -> Vec<String> {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    let read = |r: &mut BufReader<std::net::TcpStream>| -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("read");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    let mut replies = vec![read(&mut r)];
    for cmd in [
        "LHLO test\r\n".to_string(),
        format!("MAIL FROM:<{from}>\r\n"),
        format!("RCPT TO:<{rcpt}>\r\n"),
    ] {
        w.write_all(cmd.as_bytes()).expect("write");
        replies.push(read(&mut r));
    }
    if !replies[3].starts_with('2') {
        let _ = w.write_all(b"QUIT\r\n");
        return replies;
    }
    w.write_all(b"DATA\r\n").expect("write");
    replies.push(read(&mut r));
    w.write_all(data).expect("data");
    if !data.ends_with(b"\r\n") {
        w.write_all(b"\r\n").expect("data");
    }
    w.write_all(b".\r\n").expect("dot");
    replies.push(read(&mut r));
    let _ = w.write_all(b"QUIT\r\n");
    replies
}

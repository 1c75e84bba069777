//! Mail-flow benchmark, side by side in one run, same DKIM-signed iMIP message and concurrency:
//!   A  Postfix alone delivering to a plain LMTP sink
//!   B  Postfix + imipd milter, delivering to the sink
//!   C  Postfix delivering to imipd LMTP, which hands on to the sink
//!   D  both (milter and LMTP)
//!   E  imipd's milter alone against OpenDKIM's milter alone (verify mode, warm DNS cache),
//!      both driven by imipd-load exactly as Postfix drives a milter
//! Every configuration runs IMIPD_BENCH_RUNS times (default 3); the median is reported.
//!
//! With IMIPD_BENCH_MAIL=plain or =multipart the messages are ordinary DKIM-signed mail with no
//! calendar (text/plain, or multipart/alternative text + HTML with a PDF attachment), and two
//! more configurations run beside A and B:
//!   O  Postfix + OpenDKIM's milter (verify mode) -> sink
//!   N  Postfix + a null milter (imipd's stages and no-reply flags, ACCEPT at end of headers,
//!      no work): what any milter that reads the header section costs Postfix
//!   and for B the daemon's own CPU time (user + system, from /proc) per message.
//!
//!   cargo bench --bench mail_flow
//!   IMIPD_BENCH_MESSAGES=2000 IMIPD_BENCH_CONCURRENCY=10 cargo bench --bench mail_flow
//!   IMIPD_BENCH_MAIL=multipart IMIPD_BENCH_ONLY=B,O cargo bench --bench mail_flow
//!   IMIPD_BENCH_PERF=DIR IMIPD_BENCH_RUNS=1 IMIPD_BENCH_ONLY=B cargo bench --bench mail_flow
//!   (IMIPD_BENCH_PERF_ARGS='--call-graph dwarf' for call chains through code without frame pointers)
//!
//! Needs root, postfix, opendkim, dnsmasq, openssl and dkimpy; loopback only; every load is
//! bounded in count and time.

#[path = "../tests/mta/mod.rs"]
mod mta;
#[path = "../tests/signers/mod.rs"]
mod signers;

use mta::{have, Imipd, Postfix, PostfixOptions};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> &'static str {
    env!("CARGO_BIN_EXE_imipd-load")
}

fn message() -> Vec<u8> {
    let cal = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n\
UID:bench-{{n}}@example.com\r\nSEQUENCE:0\r\nDTSTAMP:20260101T090000Z\r\nDTSTART:20260110T100000Z\r\n\
DTEND:20260110T110000Z\r\nSUMMARY:Quarterly planning\r\nLOCATION:Room 4\r\n\
ORGANIZER;CN=Alice:mailto:alice@example.com\r\n\
ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.org\r\n\
END:VEVENT\r\nEND:VCALENDAR\r\n";
    format!(
        "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\nSubject: Invitation: Quarterly planning\r\n\
Date: Thu, 01 Jan 2026 09:00:00 +0000\r\nMessage-ID: <bench-{{n}}@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
You are invited to Quarterly planning on 10 January 2026, 10:00-11:00 UTC, Room 4.\r\n\
--b1\r\nContent-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n{cal}\r\n--b1--\r\n"
    )
    .into_bytes()
}

/// Ordinary mail, no calendar: `plain` (text/plain) or `multipart` (text + HTML alternative
/// and a base64 PDF attachment, about 12 kB).
fn ordinary(kind: &str) -> Vec<u8> {
    let head = "From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\n\
Subject: Minutes of the planning meeting\r\nDate: Thu, 01 Jan 2026 09:00:00 +0000\r\n\
Message-ID: <plain-{n}@example.com>\r\nMIME-Version: 1.0\r\n";
    let text = "Hello Bob,\r\n\r\nthe minutes of yesterday's meeting are attached. We agreed \
on the budget for the next quarter and on the dates of the review.\r\n\r\nAlice\r\n"
        .repeat(8);
    if kind == "plain" {
        return format!("{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{text}").into_bytes();
    }
    let html = format!(
        "<html><body><p>{}</p></body></html>",
        text.replace("\r\n", "<br>\r\n")
    );
    let pdf: String = (0..120)
        .map(|i| format!("{:076}\r\n", i).replace('0', "Q"))
        .collect();
    format!(
        "{head}Content-Type: multipart/mixed; boundary=\"m1\"\r\n\r\n--m1\r\n\
Content-Type: multipart/alternative; boundary=\"a1\"\r\n\r\n--a1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--a1\r\n\
Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--a1--\r\n--m1\r\n\
Content-Type: application/pdf; name=\"minutes.pdf\"\r\nContent-Disposition: attachment; \
filename=\"minutes.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{pdf}--m1--\r\n"
    )
    .into_bytes()
}

/// User + system CPU seconds a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of proc(5), counted from the state field (3).
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds the whole machine has been busy (user, nice, system, irq, softirq), from
/// /proc/stat: what one configuration costs everything on it, Postfix included.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    (at(0) + at(1) + at(2) + at(5) + at(6)) / 100.0
}

struct Sink {
    child: std::process::Child,
    port: u16,
}

fn start_sink(expect: usize) -> Sink {
    let mut child = Command::new(load())
        .args([
            "lmtp-sink",
            "--listen",
            "127.0.0.1:0",
            "--expect",
            &expect.to_string(),
            "--timeout",
            "300",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sink");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("sink line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    let port = v["listening"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    Sink { child, port }
}

fn inject(port: u16, n: usize, c: usize, file: &std::path::Path) -> serde_json::Value {
    let out = Command::new(load())
        .args([
            "smtp",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--messages",
            &n.to_string(),
            "--concurrency",
            &c.to_string(),
            "--timeout",
            "300",
        ])
        .arg(file)
        .output()
        .expect("inject");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// One end-to-end run: messages per second from the first injection to the last delivery,
/// and imipd's CPU milliseconds per message (0 without imipd). `opendkim`: the port of an
/// OpenDKIM milter, for mode O.
fn flow(
    mode: char,
    n: usize,
    c: usize,
    dns: &signers::Dns,
    file: &std::path::Path,
    opendkim: Option<u16>,
) -> (f64, f64, f64) {
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let sink = start_sink(n);
    let imipd_cfg = format!(
        "local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"{}\"]\n\
[milter]\nenabled = {}\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = {}\nlisten = \"inet:127.0.0.1:0\"\n\
deliver = \"lmtp:inet:127.0.0.1:{}\"\n",
        dns.addr,
        matches!(mode, 'B' | 'D'),
        matches!(mode, 'C' | 'D'),
        sink.port
    );
    let imipd = matches!(mode, 'B' | 'C' | 'D')
        .then(|| Imipd::start(&tmp.path().join("imipd"), &imipd_cfg, &[]));
    let lmtp = match (&imipd, mode) {
        (Some(i), 'C' | 'D') => i.lmtp_port,
        _ => Some(sink.port),
    };
    let milter = match (&imipd, mode) {
        (Some(i), 'B' | 'D') => i.milter_port,
        (_, 'O') => opendkim,
        (_, 'N') => Some(null_milter()),
        _ => None,
    };
    let pf = Postfix::start(
        &tmp.path().join("postfix"),
        &PostfixOptions {
            milter_port: milter,
            lmtp_port: lmtp,
            virtual_domains: &["example.org"],
            smtp_port: None,
            extra_main_cf: "",
        },
    );
    // IMIPD_BENCH_PERF=DIR: `perf record -g` of the daemon during the load, to DIR/perf-MODE.data
    // (IMIPD_BENCH_PERF_ARGS: other options instead of -g, e.g. `--call-graph dwarf`).
    let perf_args = std::env::var("IMIPD_BENCH_PERF_ARGS").unwrap_or_else(|_| "-g".into());
    let perf = match (std::env::var_os("IMIPD_BENCH_PERF"), &imipd) {
        (Some(dir), Some(i)) => Command::new("perf")
            .arg("record")
            .args(perf_args.split_whitespace())
            .args(["-F", "999", "-p", &i.pid().to_string(), "-o"])
            .arg(std::path::Path::new(&dir).join(format!("perf-{mode}.data")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok(),
        _ => None,
    };
    if perf.is_some() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu0 = imipd.as_ref().map(|i| cpu_secs(i.pid()));
    let busy0 = machine_busy_secs();
    let t = Instant::now();
    let inj = inject(pf.smtp_port, n, c, file);
    let mut sink = sink;
    let out = sink
        .child
        .wait_with_output_timeout(Duration::from_secs(300));
    let secs = t.elapsed().as_secs_f64();
    let delivered: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    let got = delivered["messages"].as_u64().unwrap_or(0) as usize;
    if got < n || inj["messages"].as_u64().unwrap_or(0) < n as u64 {
        eprintln!("  {mode}: only {got}/{n} delivered; injection {inj}");
    }
    let cpu_ms = match (&imipd, cpu0) {
        (Some(i), Some(c0)) => (cpu_secs(i.pid()) - c0) * 1000.0 / got.max(1) as f64,
        _ => 0.0,
    };
    let busy_ms = (machine_busy_secs() - busy0) * 1000.0 / got.max(1) as f64;
    if let Some(mut p) = perf {
        // SIGINT makes perf write its data and exit.
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    drop(pf);
    // How full the group commits were: imipd says so when it stops.
    if let Some(mut i) = imipd {
        i.stop();
        if let Some(line) = i.log().lines().find(|l| l.contains("durability requests")) {
            eprintln!("  {mode}: {}", line.trim_start_matches("imipd: "));
        }
    }
    (got as f64 / secs, cpu_ms, busy_ms)
}

trait WaitOutput {
    fn wait_with_output_timeout(&mut self, t: Duration) -> Vec<u8>;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_timeout(&mut self, t: Duration) -> Vec<u8> {
        let deadline = Instant::now() + t;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.kill();
        let mut buf = Vec::new();
        if let Some(mut o) = self.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_end(&mut buf);
        }
        let _ = self.wait();
        buf
    }
}

fn milter_run(port: u16, n: usize, c: usize, file: &std::path::Path) -> serde_json::Value {
    let out = Command::new(load())
        .args([
            "milter",
            "--target",
            &format!("127.0.0.1:{port}"),
            "--messages",
            &n.to_string(),
            "--concurrency",
            &c.to_string(),
            "--timeout",
            "300",
        ])
        .arg(file)
        .output()
        .expect("milter load");
    if !out.stderr.is_empty() {
        eprintln!(
            "  imipd-load milter: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// OpenDKIM in verify mode. Its libunbound configuration parser is not thread-safe (a
/// ResolverConfiguration file crashes it under concurrency), so it gets a `Nameservers` entry
/// instead: a dnsmasq with the same records on 127.0.0.53, port 53 (loopback; needs root).
fn opendkim(
    dir: &std::path::Path,
    records: &[(String, String)],
) -> (std::process::Child, std::process::Child, u16) {
    let mut args = vec![
        "--no-daemon".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--port=53".into(),
        "--listen-address=127.0.0.53".into(),
        "--bind-interfaces".into(),
        "--local-ttl=300".into(),
        "--pid-file=".into(),
        "--local=/#/".into(),
    ];
    for (name, value) in records {
        args.push(format!("--txt-record={name},{value}"));
    }
    let dnsmasq = Command::new("dnsmasq")
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq for opendkim");
    let port = mta::free_port();
    let conf = dir.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode v\nSocket inet:{port}@127.0.0.1\nBackground no\nSyslog no\nAuthservID mx.example.org\n\
Nameservers 127.0.0.53\nQueryCache yes\nPidFile {}\nUserID root\nRequireSafeKeys no\n",
            dir.join("opendkim.pid").display()
        ),
    )
    .expect("opendkim.conf");
    let child = Command::new("opendkim")
        .arg("-x")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .expect("opendkim");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "opendkim did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, dnsmasq, port)
}

/// The least a milter that reads the header section can cost Postfix: protocol 6 with the
/// same stages and no-reply flags imipd negotiates (no macro list, no actions), every header
/// read, ACCEPT at end of headers, no other work. A thread per connection; the listener
/// thread ends with the process.
fn null_milter() -> u16 {
    use std::io::{Read, Write};
    const NR: [(u8, u32); 7] = [
        (b'C', 0x1000),
        (b'H', 0x2000),
        (b'M', 0x4000),
        (b'R', 0x8000),
        (b'T', 0x10000),
        (b'U', 0x20000),
        (b'L', 0x80),
    ];
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("null milter");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
                let mut proto = 0u32;
                loop {
                    let mut len = [0u8; 4];
                    if r.read_exact(&mut len).is_err() {
                        return;
                    }
                    let n = u32::from_be_bytes(len) as usize;
                    if n == 0 || n > 1 << 20 {
                        return;
                    }
                    let mut pkt = vec![0u8; n];
                    if r.read_exact(&mut pkt).is_err() {
                        return;
                    }
                    // As imipd does: ACK at once, or Postfix's next no-reply packet waits
                    // for the delayed ACK (Nagle), 40 ms a message.
                    imipd::doors::milter::quickack(std::os::fd::AsFd::as_fd(&s));
                    let reply: Option<(u8, Vec<u8>)> = match pkt[0] {
                        b'O' if n >= 13 => {
                            let offered = u32::from_be_bytes([pkt[9], pkt[10], pkt[11], pkt[12]]);
                            // NOHELO NOUNKNOWN NODATA, NR_{CONN,HELO,MAIL,RCPT,DATA,UNKN,HDR,BODY}
                            proto = 0x2 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x4000 | 0x8000;
                            proto = (proto | 0x10000 | 0x20000 | 0x80 | 0x80000) & offered;
                            let mut d = 6u32.to_be_bytes().to_vec();
                            d.extend_from_slice(&0u32.to_be_bytes());
                            d.extend_from_slice(&proto.to_be_bytes());
                            Some((b'O', d))
                        }
                        b'N' | b'E' => Some((b'a', Vec::new())),
                        b'Q' => return,
                        b'D' | b'A' | b'K' | b'B' => None,
                        c => NR
                            .iter()
                            .find(|(k, _)| *k == c)
                            .filter(|(_, bit)| proto & bit == 0)
                            .map(|_| (b'c', Vec::new())),
                    };
                    if let Some((cmd, data)) = reply {
                        let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
                        out.push(cmd);
                        out.extend_from_slice(&data);
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !have(
        "mail_flow benchmark",
        &["postfix", "opendkim", "dnsmasq", "openssl", "python3"],
    ) {
        return;
    }
    let n = env_usize("IMIPD_BENCH_MESSAGES", 2000);
    let c = env_usize("IMIPD_BENCH_CONCURRENCY", 10);
    let runs = env_usize("IMIPD_BENCH_RUNS", 3).max(1);
    let tmp = tempfile::TempDir::new().expect("tempdir");
    let key = signers::DkimKey::rsa(tmp.path(), "sel", "example.com");
    let dns = signers::Dns::start(&[(&key.record_name(), &key.record)]);
    let kind = std::env::var("IMIPD_BENCH_MAIL").unwrap_or_else(|_| "imip".into());
    let template = match kind.as_str() {
        "plain" | "multipart" => ordinary(&kind),
        _ => message(),
    };
    // Distinct messages (Message-ID and UID), so that each one is new to imipd's
    // processed-message log and really goes through decide and commit.
    let file = tmp.path().join("rsa");
    key.sign_many(&template, n, &file);
    println!(
        "mail flow: {n} DKIM-signed {kind} messages ({} octets), concurrency {c}, median of {runs} runs",
        std::fs::read_dir(&file)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .and_then(|e| e.metadata().ok())
            .map_or(0, |m| m.len())
    );
    let od =
        (kind != "imip").then(|| opendkim(tmp.path(), &[(key.record_name(), key.record.clone())]));

    // IMIPD_BENCH_ONLY=B,E runs only those configurations (A is always run as the baseline
    // when any of B, C, D is).
    let only = std::env::var("IMIPD_BENCH_ONLY").unwrap_or_default();
    let wanted = |m: char| {
        only.is_empty()
            || only.contains(m)
            || (m == 'A' && only.contains(['B', 'C', 'D', 'O', 'N']))
    };
    let mut results = Vec::new();
    let modes: &[(char, &str)] = &[
        ('A', "Postfix alone -> LMTP sink"),
        ('B', "Postfix + imipd milter -> sink"),
        ('C', "Postfix -> imipd LMTP -> sink"),
        ('D', "Postfix + imipd milter -> imipd LMTP -> sink"),
        ('O', "Postfix + OpenDKIM milter -> sink"),
        ('N', "Postfix + null milter (ACCEPT at EOH) -> sink"),
    ];
    // Runs interleave (A B C ... A B C ...), so that a drift of the machine touches every
    // configuration alike; each run gets a fresh Postfix (and imipd).
    let active: Vec<bool> = modes
        .iter()
        .map(|&(m, _)| wanted(m) && !(m == 'O' && od.is_none()))
        .collect();
    let mut runs_of: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); modes.len()];
    for _ in 0..runs {
        for (i, &(mode, _)) in modes.iter().enumerate() {
            if active[i] {
                runs_of[i].push(flow(mode, n, c, &dns, &file, od.as_ref().map(|o| o.2)));
            }
        }
    }
    for (i, &(mode, label)) in modes.iter().enumerate() {
        if !active[i] {
            results.push(f64::NAN);
            continue;
        }
        let v = &runs_of[i];
        let rates: Vec<f64> = v.iter().map(|r| r.0).collect();
        let m = median(rates.clone());
        let cpu = median(v.iter().map(|r| r.1).collect());
        let busy = median(v.iter().map(|r| r.2).collect());
        let cpu_note = if matches!(mode, 'B' | 'C' | 'D') {
            format!("  machine CPU {busy:.3} ms/msg, of it imipd {cpu:.3}")
        } else {
            format!("  machine CPU {busy:.3} ms/msg")
        };
        println!("  {mode} {label:48} {m:8.1} msg/s{cpu_note}  (runs: {rates:.1?})");
        results.push(m);
    }
    // The ratio of each run to the A run beside it, and their median.
    for (i, &(mode, _)) in modes.iter().enumerate().skip(1) {
        if active[i] && active[0] {
            let r: Vec<f64> = runs_of[i]
                .iter()
                .zip(&runs_of[0])
                .map(|(x, a)| x.0 / a.0.max(1e-9))
                .collect();
            println!(
                "  paired ratio {mode}/A = {:.2} (runs: {r:.2?})",
                median(r.clone())
            );
        }
    }
    if let Some(base) = results.first().copied() {
        for (i, &(mode, _)) in modes.iter().enumerate().skip(1) {
            if !results[i].is_nan() {
                println!("  ratio {mode}/A = {:.2}", results[i] / base.max(1e-9));
            }
        }
    }
    if let Some((mut d, mut d_dns, _)) = od {
        let _ = d.kill();
        let _ = d.wait();
        let _ = d_dns.kill();
        let _ = d_dns.wait();
    }

    if !wanted('E') {
        return;
    }
    // E: the milters alone, on RSA-2048 and Ed25519 signatures (warm DNS caches).
    let ed = signers::DkimKey::ed25519(tmp.path(), "ed", "example.com");
    let dns2 = signers::Dns::start(&[
        (&key.record_name(), &key.record),
        (&ed.record_name(), &ed.record),
    ]);
    let ed_dir = tmp.path().join("ed25519");
    ed.sign_many(&message(), n, &ed_dir);
    let warm = tmp.path().join("warm.eml");
    let warm_msg = String::from_utf8_lossy(&message()).replace("{n}", "warm-up");
    std::fs::write(&warm, key.sign(warm_msg.as_bytes(), &[])).expect("warm");
    let records = vec![
        (key.record_name(), key.record.clone()),
        (ed.record_name(), ed.record.clone()),
    ];
    let (mut od, mut od_dns, od_port) = opendkim(tmp.path(), &records);
    for (label, dir) in [("rsa-sha256 2048", &file), ("ed25519-sha256", &ed_dir)] {
        let mut im = Vec::new();
        let mut odk = Vec::new();
        let mut im_p50 = Vec::new();
        let mut od_p50 = Vec::new();
        for run in 0..runs {
            // A fresh imipd each run: every message is new to its store.
            let d = Imipd::start(
                &tmp.path().join(format!("imipd-milter-{label}-{run}").replace(' ', "-")),
                &format!("local_domains = [\"example.org\"]\nauthserv_id = \"mx.example.org\"\n[dns]\nnameservers = [\"{}\"]\n[milter]\nlisten = \"inet:127.0.0.1:0\"\n[lmtp]\nenabled = false\n", dns2.addr),
                &[],
            );
            let port = d.milter_port.expect("port");
            milter_run(port, 1, 1, &warm);
            milter_run(od_port, 1, 1, &warm);
            let a = milter_run(port, n, c, dir);
            let b = milter_run(od_port, n, c, dir);
            im.push(a["per_second"].as_f64().unwrap_or(0.0));
            odk.push(b["per_second"].as_f64().unwrap_or(0.0));
            im_p50.push(a["p50_ms"].as_f64().unwrap_or(0.0));
            od_p50.push(b["p50_ms"].as_f64().unwrap_or(0.0));
        }
        let (mi, mo) = (median(im.clone()), median(odk.clone()));
        println!("  E [{label}] imipd milter alone                 {mi:8.1} msg/s  p50 {:.3} ms (runs: {im:.1?})", median(im_p50));
        println!("  E [{label}] OpenDKIM milter alone (verify)     {mo:8.1} msg/s  p50 {:.3} ms (runs: {odk:.1?})", median(od_p50));
        println!(
            "  E [{label}] ratio imipd/OpenDKIM = {:.2}",
            mi / mo.max(1e-9)
        );
    }
    let _ = od.kill();
    let _ = od.wait();
    let _ = od_dns.kill();
    let _ = od_dns.wait();
}

//! imipd-load: a bounded load generator for benchmarks, loopback only.
//!
//!   imipd-load milter --target 127.0.0.1:PORT [--messages N] [--concurrency C] FILE.eml
//!       drives any milter (imipd, OpenDKIM) the way Postfix does, protocol 6
//!   imipd-load smtp --target 127.0.0.1:PORT [--messages N] [--concurrency C]
//!       [--from ADDR] [--to ADDR] FILE.eml
//!       injects messages over SMTP
//!   imipd-load lmtp-sink --listen 127.0.0.1:PORT --expect N [--timeout SECS]
//!       accepts and discards LMTP deliveries; exits after N messages
//!   imipd-load ischedule --target 127.0.0.1:PORT --key SIGNER.pem --domain D [--selector S]
//!       [--host NAME] [--path /.well-known/ischedule] [--ca CA.pem | --plain]
//!       [--originator ADDR] [--recipient ADDR] [--kind request|freebusy]
//!       [--requests N] [--connections C] [--new-connection]
//!       signed iSchedule POSTs over C kept-alive HTTPS connections (or one connection per
//!       request); every request is distinct (UID, iSchedule-Message-ID) and signed before
//!       the clock starts
//!
//! Each prints one JSON line: messages, seconds, messages per second, latency percentiles.
//! Every run is bounded by its message count and by --timeout (default 600 s).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Opts {
    target: String,
    listen: String,
    messages: usize,
    concurrency: usize,
    from: String,
    to: String,
    file: Option<String>,
    expect: usize,
    timeout: u64,
    is: IsOpts,
}

/// Options of the `ischedule` mode.
#[derive(Clone, Default)]
struct IsOpts {
    host: String,
    path: String,
    ca: Option<String>,
    plain: bool,
    key: Option<String>,
    domain: String,
    selector: String,
    originator: String,
    recipient: String,
    kind: String,
    new_connection: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        target: String::new(),
        listen: String::new(),
        messages: 1000,
        concurrency: 10,
        from: "alice@example.com".into(),
        to: "bob@example.org".into(),
        file: None,
        expect: 0,
        timeout: 600,
        is: IsOpts {
            host: "localhost".into(),
            path: "/.well-known/ischedule".into(),
            selector: "ischedule".into(),
            kind: "request".into(),
            ..IsOpts::default()
        },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--target" => o.target = val()?,
            "--listen" => o.listen = val()?,
            "--messages" => o.messages = val()?.parse().map_err(|_| "bad --messages")?,
            "--concurrency" => o.concurrency = val()?.parse().map_err(|_| "bad --concurrency")?,
            "--from" => o.from = val()?,
            "--to" => o.to = val()?,
            "--expect" => o.expect = val()?.parse().map_err(|_| "bad --expect")?,
            "--timeout" => o.timeout = val()?.parse().map_err(|_| "bad --timeout")?,
            "--requests" => o.messages = val()?.parse().map_err(|_| "bad --requests")?,
            "--connections" => o.concurrency = val()?.parse().map_err(|_| "bad --connections")?,
            "--host" => o.is.host = val()?,
            "--path" => o.is.path = val()?,
            "--ca" => o.is.ca = Some(val()?),
            "--plain" => o.is.plain = true,
            "--key" => o.is.key = Some(val()?),
            "--domain" => o.is.domain = val()?,
            "--selector" => o.is.selector = val()?,
            "--originator" => o.is.originator = val()?,
            "--recipient" => o.is.recipient = val()?,
            "--kind" => o.is.kind = val()?,
            "--new-connection" => o.is.new_connection = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => o.file = Some(s.to_string()),
        }
    }
    let loopback =
        |a: &str| a.starts_with("127.") || a.starts_with("localhost") || a.starts_with("[::1]");
    for addr in [&o.target, &o.listen] {
        if !addr.is_empty() && !loopback(addr) {
            return Err(format!("{addr}: only loopback targets are allowed"));
        }
    }
    o.concurrency = o.concurrency.clamp(1, 256);
    o.messages = o.messages.clamp(1, 10_000_000);
    Ok(o)
}

fn report(kind: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>, errors: usize) {
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "{{\"kind\":\"{kind}\",\"messages\":{n},\"errors\":{errors},\"seconds\":{:.3},\"per_second\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64().max(1e-9),
        pct(0.5),
        pct(0.99)
    );
}

/// Splits a message into header fields and body.
fn split_message(raw: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let text = raw;
    let end = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            text.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .unwrap_or((text.len(), text.len()));
    let head = String::from_utf8_lossy(&text[..end.0]).replace("\r\n", "\n");
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.split('\n') {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((n, v)) = line.split_once(':') {
            headers.push((n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
        }
    }
    (headers, text[end.1..].to_vec())
}

fn packet(cmd: u8, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
}

fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; len.max(1)];
    s.read_exact(&mut buf[..len])?;
    let cmd = buf[0];
    Ok((cmd, buf[1..len].to_vec()))
}

fn cz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One milter connection, as Postfix drives it: negotiate, connect, then transactions.
type Split = (Vec<(String, String)>, Vec<u8>);

fn milter_lane(
    target: &str,
    n: usize,
    msgs: &[Split],
    next: &AtomicUsize,
    lat: &Mutex<Vec<Duration>>,
) -> std::io::Result<usize> {
    let mut s = TcpStream::connect(target)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut out = Vec::new();
    let mut d = 6u32.to_be_bytes().to_vec();
    d.extend_from_slice(&0x1FFu32.to_be_bytes());
    d.extend_from_slice(&0x1F_FFFFu32.to_be_bytes());
    packet(b'O', &d, &mut out);
    s.write_all(&out)?;
    let (_, neg) = read_packet(&mut s)?;
    let proto = if neg.len() >= 12 {
        u32::from_be_bytes([neg[8], neg[9], neg[10], neg[11]])
    } else {
        0
    };
    let no = |bit: u32| proto & bit != 0;
    // Stage flags: (skip bit, no-reply bit).
    let conn = (0x1, 0x1000);
    let helo = (0x2, 0x2000);
    let mail = (0x4, 0x4000);
    let rcpt = (0x8, 0x8000);
    let data = (0x200, 0x10000);
    let hdr = (0x20, 0x80);
    let eoh = (0x40, 0x40000);
    let bodyf = (0x10, 0x80000);
    let leadspc = no(0x100000);
    // Queues one stage's packet unless negotiated away; returns 1 if a reply is due.
    let send = |buf: &mut Vec<u8>, stage: (u32, u32), cmd: u8, data: &[u8]| -> usize {
        if no(stage.0) {
            return 0;
        }
        packet(cmd, data, buf);
        usize::from(!no(stage.1))
    };
    let mut buf = Vec::new();
    let mut c = cz("client.example.com");
    c.push(b'4');
    c.extend_from_slice(&25u16.to_be_bytes());
    c.extend(cz("127.0.0.1"));
    let mut exp = send(&mut buf, conn, b'C', &c);
    exp += send(&mut buf, helo, b'H', &cz("client.example.com"));
    let mut done = 0;
    s.write_all(&buf)?;
    for _ in 0..exp {
        read_packet(&mut s)?;
    }
    for i in 0..n {
        let (headers, body) = &msgs[next.fetch_add(1, Ordering::Relaxed) % msgs.len()];
        let t = Instant::now();
        let mut buf = Vec::new();
        let mut mac = vec![b'M'];
        mac.extend(cz("i"));
        mac.extend(cz(&format!("Q{i:08X}")));
        packet(b'D', &mac, &mut buf);
        let mut exp = send(&mut buf, mail, b'M', &cz("<alice@example.com>"));
        exp += send(&mut buf, rcpt, b'R', &cz("<bob@example.org>"));
        exp += send(&mut buf, data, b'T', &[]);
        for (name, value) in headers {
            let mut d = cz(name);
            let v = if leadspc {
                format!(" {value}")
            } else {
                value.clone()
            };
            d.extend(cz(&v));
            exp += send(&mut buf, hdr, b'L', &d);
        }
        exp += send(&mut buf, eoh, b'N', &[]);
        for chunk in body.chunks(65535) {
            exp += send(&mut buf, bodyf, b'B', chunk);
        }
        packet(b'E', &[], &mut buf);
        s.write_all(&buf)?;
        for _ in 0..exp {
            read_packet(&mut s)?;
        }
        // End of message: actions until a final reply.
        loop {
            let (cmd, _) = read_packet(&mut s)?;
            if matches!(cmd, b'a' | b'c' | b'r' | b't' | b'd' | b'y') {
                break;
            }
        }
        lat.lock().map(|mut l| l.push(t.elapsed())).ok();
        done += 1;
    }
    let mut q = Vec::new();
    packet(b'Q', &[], &mut q);
    let _ = s.write_all(&q);
    Ok(done)
}

fn smtp_lane(
    o: &Opts,
    n: usize,
    msgs: &[Vec<u8>],
    next: &AtomicUsize,
    lat: &Mutex<Vec<Duration>>,
) -> std::io::Result<usize> {
    let s = TcpStream::connect(&o.target)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let reply = |r: &mut BufReader<TcpStream>| -> std::io::Result<u16> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
            }
        }
    };
    reply(&mut r)?;
    w.write_all(b"EHLO load.example.com\r\n")?;
    reply(&mut r)?;
    let stuff = imipd::lmtp::client::dot_stuffed;
    let mut ok = 0;
    for _ in 0..n {
        let stuffed = stuff(&msgs[next.fetch_add(1, Ordering::Relaxed) % msgs.len()]);
        let t = Instant::now();
        w.write_all(
            format!("MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n", o.from, o.to).as_bytes(),
        )?;
        let a = reply(&mut r)?;
        let b = reply(&mut r)?;
        let c = reply(&mut r)?;
        if a != 250 || b != 250 || c != 354 {
            w.write_all(b"RSET\r\n")?;
            if c == 354 {
                w.write_all(b".\r\n")?;
                reply(&mut r)?;
            }
            reply(&mut r)?;
            continue;
        }
        w.write_all(&stuffed)?;
        if reply(&mut r)? == 250 {
            ok += 1;
        }
        lat.lock().map(|mut l| l.push(t.elapsed())).ok();
    }
    let _ = w.write_all(b"QUIT\r\n");
    Ok(ok)
}

fn run_lanes<F>(kind: &str, o: &Opts, lane: F)
where
    F: Fn(usize, &Mutex<Vec<Duration>>) -> std::io::Result<usize> + Send + Sync + 'static,
{
    let lat = Arc::new(Mutex::new(Vec::with_capacity(o.messages)));
    let lane = Arc::new(lane);
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..o.concurrency {
        let share = o.messages / o.concurrency + usize::from(i < o.messages % o.concurrency);
        let lat = lat.clone();
        let lane = lane.clone();
        handles.push(std::thread::spawn(move || lane(share, &lat)));
    }
    let mut ok = 0;
    let mut errors = 0;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => ok += n,
            Ok(Err(e)) => {
                eprintln!("imipd-load: {e}");
                errors += 1
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed();
    let lat = lat.lock().map(|l| l.clone()).unwrap_or_default();
    report(
        kind,
        ok,
        elapsed,
        lat,
        errors + o.messages - ok.min(o.messages),
    );
}

fn lmtp_sink(o: &Opts) -> std::io::Result<()> {
    let l = TcpListener::bind(&o.listen)?;
    println!("{{\"listening\":\"{}\"}}", l.local_addr()?);
    std::io::stdout().flush()?;
    let count = Arc::new(AtomicUsize::new(0));
    let first: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let expect = o.expect.max(1);
    let deadline = Instant::now() + Duration::from_secs(o.timeout);
    l.set_nonblocking(true)?;
    loop {
        if count.load(Ordering::SeqCst) >= expect || Instant::now() > deadline {
            break;
        }
        match l.accept() {
            Ok((s, _)) => {
                let count = count.clone();
                let first = first.clone();
                std::thread::spawn(move || {
                    let _ = sink_conn(s, &count, &first);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let n = count.load(Ordering::SeqCst);
    let started = first
        .lock()
        .ok()
        .and_then(|f| *f)
        .unwrap_or_else(Instant::now);
    report(
        "lmtp-sink",
        n,
        started.elapsed(),
        Vec::new(),
        expect.saturating_sub(n),
    );
    Ok(())
}

fn sink_conn(
    s: TcpStream,
    count: &AtomicUsize,
    first: &Mutex<Option<Instant>>,
) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    w.write_all(b"220 sink LMTP\r\n")?;
    let mut rcpts = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "LHLO" => w.write_all(b"250-sink\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")?,
            "MAIL" => {
                rcpts = 0;
                w.write_all(b"250 2.1.0 Ok\r\n")?
            }
            "RCPT" => {
                rcpts += 1;
                w.write_all(b"250 2.1.5 Ok\r\n")?
            }
            "DATA" => {
                w.write_all(b"354 go\r\n")?;
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l)? == 0 {
                        return Ok(());
                    }
                    if l == ".\r\n" || l == ".\n" {
                        break;
                    }
                }
                if let Ok(mut f) = first.lock() {
                    f.get_or_insert_with(Instant::now);
                }
                for _ in 0..rcpts {
                    w.write_all(b"250 2.0.0 Ok\r\n")?;
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n")?;
                return Ok(());
            }
            _ => w.write_all(b"250 2.0.0 Ok\r\n")?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// iSchedule: signed POSTs over kept-alive HTTPS connections (rustls, blocking), HTTP/1.1 by
// hand: write the request, read the status line, the header and a Content-Length (or chunked)
// body.

/// Largest answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The iCalendar body of request `uid`: an invitation, or a free/busy query for one day.
fn is_body(kind: &str, uid: &str, originator: &str, recipient: &str, stamp: &str) -> String {
    let comp = if kind == "freebusy" {
        format!(
            "BEGIN:VFREEBUSY\r\nUID:{uid}\r\nDTSTAMP:{stamp}\r\nDTSTART:20300110T000000Z\r\n\
             DTEND:20300111T000000Z\r\nORGANIZER:mailto:{originator}\r\n\
             ATTENDEE:mailto:{recipient}\r\nEND:VFREEBUSY\r\n"
        )
    } else {
        format!(
            "BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{stamp}\r\nSEQUENCE:0\r\nSUMMARY:Load\r\n\
             DTSTART:20300110T100000Z\r\nDTEND:20300110T110000Z\r\nORGANIZER:mailto:{originator}\r\n\
             ATTENDEE;PARTSTAT=ACCEPTED:mailto:{originator}\r\n\
             ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{recipient}\r\nEND:VEVENT\r\n"
        )
    };
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imipd-load//EN\r\nMETHOD:REQUEST\r\n{comp}END:VCALENDAR\r\n"
    )
}

/// Every request of the run, signed, as the bytes to write. Signing (RSA) runs on all cores
/// before the clock starts, so that it does not compete with the receiver.
fn is_prepare(o: &Opts) -> Result<Vec<Vec<u8>>, String> {
    let is = &o.is;
    let key_path = is.key.as_deref().ok_or("--key SIGNER.pem is needed")?;
    if is.domain.is_empty() || is.recipient.is_empty() {
        return Err("--domain and --recipient are needed".into());
    }
    let (component, kind) = match is.kind.as_str() {
        "request" => ("VEVENT", "request"),
        "freebusy" => ("VFREEBUSY", "freebusy"),
        k => return Err(format!("--kind {k}: request or freebusy")),
    };
    let key = imipd::ischedule::dkim::SigningKey::load(
        std::path::Path::new(key_path),
        &is.domain,
        &is.selector,
    )?;
    let originator = if is.originator.is_empty() {
        format!("alice@{}", is.domain)
    } else {
        is.originator.clone()
    };
    let now = unix_now();
    let stamp = imipd::ical::time::format_utc(now);
    // Distinct across runs against the same store: replay IDs and UIDs are remembered.
    let run = format!("{}-{now}", std::process::id());
    let sign_one = |i: usize| -> Result<Vec<u8>, String> {
        let uid = format!("load-{run}-{i}@{}", is.domain);
        let body = is_body(kind, &uid, &originator, &is.recipient, &stamp);
        let mut h: Vec<(String, String)> = vec![
            ("iSchedule-Version".into(), "1.0".into()),
            ("iSchedule-Message-ID".into(), format!("<{uid}>")),
            ("Originator".into(), format!("mailto:{originator}")),
            ("Recipient".into(), format!("mailto:{}", is.recipient)),
            (
                "Content-Type".into(),
                format!("text/calendar; charset=utf-8; component={component}; method=REQUEST"),
            ),
            ("User-Agent".into(), "imipd-load".into()),
        ];
        let sig = key.sign(&h, body.as_bytes(), now, 3600)?;
        h.push(("DKIM-Signature".into(), sig));
        let mut r = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nCache-Control: no-cache, no-transform\r\n",
            is.path, is.host
        );
        if is.new_connection {
            r.push_str("Connection: close\r\n");
        }
        for (n, v) in &h {
            r.push_str(&format!("{n}: {v}\r\n"));
        }
        r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        Ok(r.into_bytes())
    };
    let n = o.messages;
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let per = n.div_ceil(threads);
    let parts: Vec<Result<Vec<Vec<u8>>, String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let sign_one = &sign_one;
                sc.spawn(move || (t * per..((t + 1) * per).min(n)).map(sign_one).collect())
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("signer failed".into())))
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// The TLS client set-up: only the given CA is trusted.
fn is_tls(is: &IsOpts) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    if is.plain {
        return Ok(None);
    }
    let ca = is
        .ca
        .as_deref()
        .ok_or("--ca CA.pem (or --plain) is needed")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(c.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{ca}: no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if is.new_connection {
        // A full handshake per request, as a new peer sees it, not a resumed session.
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Some(Arc::new(cfg)))
}

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

/// One HTTP/1.1 connection (the TLS handshake happens on the first write).
type Conn = BufReader<Box<dyn Duplex>>;

fn is_connect(
    target: &str,
    host: &str,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(target)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    let io: Box<dyn Duplex> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let c =
                rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
            Box::new(rustls::StreamOwned::new(c, tcp))
        }
    };
    Ok(BufReader::new(io))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

fn read_crlf_line(c: &mut Conn) -> std::io::Result<String> {
    let mut line = String::new();
    // A header line longer than this is not an HTTP answer we want.
    if c.by_ref().take(64 * 1024).read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// One answer: status, whether the connection may be used again, body.
fn is_read_answer(c: &mut Conn) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let status_line = read_crlf_line(c)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("not an HTTP status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut keep = status_line.starts_with("HTTP/1.1");
    loop {
        let line = read_crlf_line(c)?;
        if line.is_empty() {
            break;
        }
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().to_ascii_lowercase();
        match n.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(v.parse().map_err(|_| bad("bad Content-Length"))?),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" if v.contains("close") => keep = false,
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size = read_crlf_line(c)?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if body.len() + size > MAX_ANSWER {
                return Err(bad("answer too large"));
            }
            let at = body.len();
            body.resize(at + size, 0);
            c.read_exact(&mut body[at..])?;
            read_crlf_line(c).or_else(|e| if size == 0 { Ok(String::new()) } else { Err(e) })?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        if n > MAX_ANSWER {
            return Err(bad("answer too large"));
        }
        body.resize(n, 0);
        c.read_exact(&mut body)?;
    } else if !(100..200).contains(&status) && status != 204 && status != 304 {
        // No length: the body ends with the connection.
        c.by_ref().take(MAX_ANSWER as u64).read_to_end(&mut body)?;
        keep = false;
    }
    Ok((status, keep, body))
}

/// Writes one request and reads its answer.
fn is_exchange(c: &mut Conn, request: &[u8]) -> std::io::Result<(u16, bool, Vec<u8>)> {
    let w = c.get_mut();
    w.write_all(request)?;
    w.flush()?;
    is_read_answer(c)
}

#[derive(Default)]
struct IsTally {
    lat: Vec<Duration>,
    ok: usize,
    success: usize,
    errors: usize,
    connections: usize,
}

/// One client connection slot: takes the next prepared request until none is left.
fn is_lane(
    target: &str,
    is: &IsOpts,
    tls: &Option<Arc<rustls::ClientConfig>>,
    reqs: &[Vec<u8>],
    next: &AtomicUsize,
) -> IsTally {
    let mut t = IsTally::default();
    let mut conn: Option<Conn> = None;
    let mut first_error = true;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(req) = reqs.get(i) else { break };
        let start = Instant::now();
        let r = match conn.take() {
            Some(c) => Ok(c),
            None => {
                t.connections += 1;
                is_connect(target, &is.host, tls)
            }
        }
        .and_then(|mut c| is_exchange(&mut c, req).map(|a| (c, a)));
        match r {
            Ok((c, (status, keep, body))) => {
                t.lat.push(start.elapsed());
                if status == 200 {
                    t.ok += 1;
                } else {
                    t.errors += 1;
                }
                if body.windows(11).any(|w| w == b"2.0;Success") {
                    t.success += 1;
                }
                if keep && !is.new_connection {
                    conn = Some(c);
                }
            }
            Err(e) => {
                if first_error {
                    eprintln!("imipd-load: request {i}: {e}");
                    first_error = false;
                }
                t.errors += 1;
            }
        }
    }
    t
}

fn is_run(o: &Opts) -> Result<(), String> {
    let tls = is_tls(&o.is)?;
    let t0 = Instant::now();
    let reqs = Arc::new(is_prepare(o)?);
    eprintln!(
        "imipd-load: {} requests signed in {:.1} s",
        reqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..o.concurrency)
        .map(|_| {
            let (reqs, next, tls) = (reqs.clone(), next.clone(), tls.clone());
            let (target, is) = (o.target.clone(), o.is.clone());
            std::thread::spawn(move || is_lane(&target, &is, &tls, &reqs, &next))
        })
        .collect();
    let mut all = IsTally::default();
    for h in handles {
        let t = h.join().unwrap_or_default();
        all.lat.extend(t.lat);
        all.ok += t.ok;
        all.success += t.success;
        all.errors += t.errors;
        all.connections += t.connections;
    }
    let elapsed = start.elapsed();
    all.lat.sort();
    let lat = &all.lat;
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "{{\"kind\":\"ischedule-{}\",\"requests\":{},\"answered_200\":{},\"success\":{},\"errors\":{},\"connections\":{},\"new_connection\":{},\"seconds\":{:.3},\"per_second\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3}}}",
        o.is.kind,
        reqs.len(),
        all.ok,
        all.success,
        all.errors,
        all.connections,
        o.is.new_connection,
        elapsed.as_secs_f64(),
        all.ok as f64 / elapsed.as_secs_f64().max(1e-9),
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: imipd-load milter|smtp|lmtp-sink|ischedule [options] [FILE]");
        std::process::exit(64);
    };
    let o = match parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("imipd-load: {e}");
            std::process::exit(64);
        }
    };
    // FILE, or a directory of .eml files used in turn (distinct messages, so that every one
    // is new to the processed-message log).
    let read = |o: &Opts| -> Vec<Vec<u8>> {
        let f = o.file.clone().unwrap_or_else(|| {
            eprintln!("imipd-load: a message FILE or DIR is needed");
            std::process::exit(64)
        });
        let p = std::path::Path::new(&f);
        let mut paths = vec![p.to_path_buf()];
        if p.is_dir() {
            paths = std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|x| x.extension().is_some_and(|e| e == "eml"))
                        .collect()
                })
                .unwrap_or_default();
            paths.sort();
        }
        let msgs: Vec<Vec<u8>> = paths.iter().filter_map(|p| std::fs::read(p).ok()).collect();
        if msgs.is_empty() {
            eprintln!("imipd-load: {f}: no message");
            std::process::exit(66);
        }
        msgs
    };
    // Bound the whole run in time as well as in count.
    let limit = o.timeout;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(limit));
        eprintln!("imipd-load: time limit of {limit} s reached");
        std::process::exit(75);
    });
    match cmd.as_str() {
        "milter" => {
            let msgs: Arc<Vec<Split>> =
                Arc::new(read(&o).iter().map(|m| split_message(m)).collect());
            let target = o.target.clone();
            let next = Arc::new(AtomicUsize::new(0));
            run_lanes("milter", &o, move |n, lat| {
                milter_lane(&target, n, &msgs, &next, lat)
            });
        }
        "smtp" => {
            let raw = Arc::new(read(&o));
            let next = Arc::new(AtomicUsize::new(0));
            let o2 = Arc::new(Opts {
                file: None,
                ..parse(&args[1..]).unwrap_or_else(|_| std::process::exit(64))
            });
            run_lanes("smtp", &o, move |n, lat| {
                smtp_lane(&o2, n, &raw, &next, lat)
            });
        }
        "ischedule" => {
            if let Err(e) = is_run(&o) {
                eprintln!("imipd-load: {e}");
                std::process::exit(64);
            }
        }
        "lmtp-sink" => {
            if let Err(e) = lmtp_sink(&o) {
                eprintln!("imipd-load: {e}");
                std::process::exit(74);
            }
        }
        other => {
            eprintln!("imipd-load: unknown mode {other}");
            std::process::exit(64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canned server on loopback: answers each request (read up to its blank line and
    /// Content-Length body) with the next of `answers`, on one kept-alive connection.
    fn serve(answers: Vec<&'static str>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for a in answers {
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                w.write_all(a.as_bytes()).unwrap();
            }
        });
        addr
    }

    #[test]
    fn keep_alive_exchange_reads_length_and_chunked_bodies() {
        let addr = serve(vec![
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n2.0;Success",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n2.0;\r\n7\r\nSuccess\r\n0\r\n\r\n",
            "HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
        ]);
        let mut c = is_connect(&addr, "localhost", &None).unwrap();
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            is_exchange(&mut c, req).unwrap(),
            (200, true, b"2.0;Success".to_vec())
        );
        assert_eq!(
            is_exchange(&mut c, req).unwrap(),
            (200, true, b"2.0;Success".to_vec())
        );
        assert_eq!(
            is_exchange(&mut c, req).unwrap(),
            (403, false, b"no".to_vec())
        );
        // The server is gone: an error, not a hang or a panic.
        assert!(is_exchange(&mut c, req).is_err());
    }
}

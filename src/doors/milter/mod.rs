//! The milter front door (Sendmail milter protocol version 6, as Postfix speaks it).
//!
//! Written against the protocol rather than a library so that imipd controls the two things that
//! decide its speed under Postfix: it negotiates "no reply" for every stage before end-of-message
//! (Postfix then streams the message without waiting), and it sends every end-of-message action
//! in one write on a TCP_NODELAY socket (no Nagle/delayed-ACK stall). End of headers is the one
//! stage answered before end of message: a message whose top-level Content-Type cannot hold a
//! calendar is accepted there, and the MTA sends neither its body nor its end of message.

pub mod adapter;

use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

// Commands (MTA -> milter).
const C_ABORT: u8 = b'A';
const C_BODY: u8 = b'B';
const C_CONNECT: u8 = b'C';
const C_MACRO: u8 = b'D';
const C_BODYEOB: u8 = b'E';
const C_HELO: u8 = b'H';
const C_QUIT_NC: u8 = b'K';
const C_HEADER: u8 = b'L';
const C_MAIL: u8 = b'M';
const C_EOH: u8 = b'N';
const C_OPTNEG: u8 = b'O';
const C_QUIT: u8 = b'Q';
const C_RCPT: u8 = b'R';
const C_DATA: u8 = b'T';
const C_UNKNOWN: u8 = b'U';

// Replies (milter -> MTA).
const R_ACCEPT: u8 = b'a';
const R_CONTINUE: u8 = b'c';
const R_ADDHEADER: u8 = b'h';
const R_INSHEADER: u8 = b'i';
const R_CHGHEADER: u8 = b'm';
const R_DELRCPT: u8 = b'-';
const R_QUARANTINE: u8 = b'q';
const R_REPLYCODE: u8 = b'y';
const R_TEMPFAIL: u8 = b't';

// Actions we may take (SMFIF_*).
const F_ADDHDRS: u32 = 0x01;
const F_DELRCPT: u32 = 0x08;
const F_CHGHDRS: u32 = 0x10;
const F_QUARANTINE: u32 = 0x20;
const F_SETSYMLIST: u32 = 0x100;

/// The macros imipd reads, by stage (SMFIM_*), asked for in the negotiation so that the MTA
/// expands and sends no others: the login at MAIL, the queue id (and the client address, for
/// a unix-socket client) at end of headers and of message.
const MACROS_WANTED: &[(u32, &str)] = &[(2, "{auth_authen}"), (5, "i {client_addr}"), (6, "i")];

// Protocol steps (SMFIP_*).
const P_NOHELO: u32 = 0x2;
const P_NOUNKNOWN: u32 = 0x100;
const P_NODATA: u32 = 0x200;
const P_NR_HDR: u32 = 0x80;
const P_NR_CONN: u32 = 0x1000;
const P_NR_HELO: u32 = 0x2000;
const P_NR_MAIL: u32 = 0x4000;
const P_NR_RCPT: u32 = 0x8000;
const P_NR_DATA: u32 = 0x10000;
const P_NR_UNKN: u32 = 0x20000;
const P_NR_EOH: u32 = 0x40000;
const P_NR_BODY: u32 = 0x80000;
const P_HDR_LEADSPC: u32 = 0x100000;

/// Largest packet accepted from the MTA (Postfix sends at most 64 KiB body chunks).
const MAX_PACKET: usize = 1 << 20;
/// Largest packet before negotiation (an OPTNEG is 13 octets).
const MAX_FIRST_PACKET: usize = 1024;
/// A connection that has not negotiated (OPTNEG) this long after connecting is closed.
pub const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most header fields kept of one message; a message with more is passed on unprocessed.
pub const MAX_HEADER_FIELDS: usize = 1000;

/// What the milter saw of one message.
#[derive(Debug, Default, Clone)]
pub struct Envelope {
    pub client_ip: Option<std::net::IpAddr>,
    pub client_name: String,
    pub helo: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub queue_id: Option<String>,
    /// SASL login name when the client authenticated ({auth_authen}).
    pub auth_authen: Option<String>,
    /// The message as received: headers (CRLF) + blank line + body.
    pub message: Vec<u8>,
    /// Header names in order, for index-based header changes.
    pub header_names: Vec<String>,
    /// The body was not kept ([`Body::Discard`]): `message` is the header section only.
    pub body_discarded: bool,
}

impl Envelope {
    /// The envelope of the next transaction on the same connection: the client facts stay.
    fn next_transaction(&self) -> Envelope {
        Envelope {
            client_ip: self.client_ip,
            client_name: self.client_name.clone(),
            helo: self.helo.clone(),
            ..Default::default()
        }
    }
}

/// End-of-message actions, sent in one write.
#[derive(Debug, Default, Clone)]
pub struct EomActions {
    /// Headers to insert at the top (index 0), in this order.
    pub insert_headers: Vec<(String, String)>,
    /// Headers to append.
    pub add_headers: Vec<(String, String)>,
    /// Header occurrences (name, 1-based index among that name) to delete.
    pub delete_headers: Vec<(String, u32)>,
    pub quarantine: Option<String>,
    /// Envelope recipients to remove, exactly as the MTA gave them (e.g. `<bob@example.net>`).
    pub delete_recipients: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Accept,
    /// 4xx: try again later.
    Tempfail(String),
    /// 5xx with this text.
    Reject(String),
}

/// A milter connection. On TCP, delayed ACKs are switched off after every read: with the
/// no-reply stages negotiated, Postfix writes packet after packet without waiting, and its Nagle
/// algorithm would otherwise hold each one until our delayed ACK (40 ms) releases it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {
    fn quickack(&self) {}
}

/// An in-memory connection (tests and fuzzing).
impl Conn for tokio::io::DuplexStream {}

impl Conn for tokio::net::TcpStream {
    fn quickack(&self) {
        use std::os::fd::AsFd;
        quickack(self.as_fd());
    }
}

/// Switches delayed ACKs off on a TCP socket until its next read (TCP_QUICKACK; see [`Conn`]).
pub fn quickack(socket: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a descriptor borrowed for the call, and a pointer to a c_int of the size given;
    // a failure only leaves delayed ACKs on.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Conn for tokio::net::UnixStream {}

impl<T: Conn + ?Sized> Conn for Box<T> {
    fn quickack(&self) {
        (**self).quickack()
    }
}

/// What a message's body is wanted for, decided at end of headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Nothing to do for this message: ACCEPT at once, the MTA sends neither body nor end of
    /// message.
    Accept,
    /// End of message is needed (header changes) but not the body: its chunks are dropped as
    /// they arrive. (With the body's no-reply flag negotiated, this costs the MTA no round trip,
    /// unlike SMFIR_SKIP, which needs a reply to every chunk of every message.)
    Discard,
    /// The body is kept for end of message.
    Keep,
}

/// The decision function, called once per message at end of message.
pub trait Handler: Send + Sync + 'static {
    /// Called at end of headers (`env.message` holds the header block): what the body is for.
    fn at_end_of_headers(&self, _env: &Envelope) -> Body {
        Body::Keep
    }

    fn end_of_message(&self, env: Envelope)
        -> impl std::future::Future<Output = EomActions> + Send;
}

pub use imipd_core::headers::values as header_values;

fn log_unprocessed(macros: &HashMap<String, String>, max_message: usize) {
    crate::app::log(format!(
        "milter: queue_id={} message over the size limit ({max_message} octets) or \
         {MAX_HEADER_FIELDS} header fields: passed on unprocessed",
        clean(macros.get("i").map(String::as_str).unwrap_or("-"))
    ));
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

fn packet(cmd: u8, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    out.push(cmd);
    out.extend_from_slice(data);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().filter(|b| *b != 0).collect();
    v.push(0);
    v
}

/// Splits NUL-terminated strings.
fn cstrings(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn encode_actions(a: &EomActions) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    for (name, idx) in &a.delete_headers {
        let mut d = idx.to_be_bytes().to_vec();
        d.extend(cstr(name));
        d.push(0); // empty value deletes
        packet(R_CHGHEADER, &d, &mut out);
    }
    for (name, value) in a.insert_headers.iter().rev() {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend(cstr(name));
        d.extend(cstr(&format!(" {value}")));
        packet(R_INSHEADER, &d, &mut out);
    }
    for (name, value) in &a.add_headers {
        let mut d = cstr(name);
        d.extend(cstr(&format!(" {value}")));
        packet(R_ADDHEADER, &d, &mut out);
    }
    for r in &a.delete_recipients {
        packet(R_DELRCPT, &cstr(r), &mut out);
    }
    if let Some(q) = &a.quarantine {
        packet(R_QUARANTINE, &cstr(q), &mut out);
    }
    match &a.verdict {
        Verdict::Accept => packet(R_ACCEPT, &[], &mut out),
        Verdict::Tempfail(text) => {
            packet(R_REPLYCODE, &cstr(&format!("451 4.3.0 {text}")), &mut out);
            let _ = R_TEMPFAIL;
        }
        Verdict::Reject(text) => packet(R_REPLYCODE, &cstr(&format!("550 5.7.1 {text}")), &mut out),
    }
    out
}

/// The packets of one connection, read through one buffer: a socket read takes whatever the
/// MTA has written (with the no-reply stages it streams many packets), so a message costs a
/// few reads rather than two per packet; delayed ACKs are switched off after each real read.
struct Packets {
    buf: Vec<u8>,
    /// Unread bytes are `buf[pos..end]`.
    pos: usize,
    end: usize,
}

/// What the packet buffer is allocated with, and shrunk back to after a larger packet.
const PACKET_BUF: usize = 16 << 10;

impl Packets {
    fn new() -> Packets {
        Packets {
            buf: vec![0; PACKET_BUF],
            pos: 0,
            end: 0,
        }
    }

    /// The next packet (command, data), or None when the MTA closed the connection between
    /// packets. The whole packet must arrive within `timeout`, and be at most `max` octets.
    async fn next<S: Conn>(
        &mut self,
        s: &mut S,
        timeout: Duration,
        max: usize,
    ) -> std::io::Result<Option<(u8, &[u8])>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let avail = self.end - self.pos;
            let need = if avail >= 4 {
                let b = &self.buf[self.pos..self.pos + 4];
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                if len == 0 || len > max {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad milter packet length {len}"),
                    ));
                }
                if avail >= 4 + len {
                    let start = self.pos + 4;
                    self.pos = start + len;
                    return Ok(Some((self.buf[start], &self.buf[start + 1..start + len])));
                }
                4 + len
            } else {
                4
            };
            // Room for the whole packet, after the unread bytes moved to the front.
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            if self.buf.len() < need {
                self.buf.resize(need, 0);
            } else if self.buf.len() > PACKET_BUF && self.end <= PACKET_BUF && need <= PACKET_BUF {
                self.buf.truncate(PACKET_BUF);
                self.buf.shrink_to_fit();
            }
            let n = match tokio::time::timeout_at(deadline, s.read(&mut self.buf[self.end..])).await
            {
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "milter client idle",
                    ))
                }
                Ok(r) => r?,
            };
            s.quickack();
            if n == 0 {
                return if self.end < 4 {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "milter connection closed inside a packet",
                    ))
                };
            }
            self.end += n;
        }
    }
}

/// Serves one MTA connection until it quits. The first packet must be an OPTNEG, within
/// [`NEGOTIATE_TIMEOUT`]; after that a connection idle for `timeout` is closed. Header bytes
/// count against `max_message` like body bytes, and at most [`MAX_HEADER_FIELDS`] header
/// fields are kept: a message over either limit is passed on unprocessed.
pub async fn serve<S, H>(
    mut stream: S,
    handler: &H,
    timeout: Duration,
    max_message: usize,
) -> std::io::Result<()>
where
    S: Conn,
    H: Handler,
{
    let mut env = Envelope::default();
    let mut macros: HashMap<String, String> = HashMap::new();
    // Stages for which the MTA expects a reply (cleared by negotiation).
    let mut no_reply: u32 = 0;
    let mut too_big = false;
    let mut discard_body = false;
    let mut negotiated = false;
    let mut packets = Packets::new();
    loop {
        let next = if negotiated {
            packets.next(&mut stream, timeout, MAX_PACKET).await?
        } else {
            packets
                .next(
                    &mut stream,
                    NEGOTIATE_TIMEOUT.min(timeout),
                    MAX_FIRST_PACKET,
                )
                .await?
        };
        let Some((cmd, data)) = next else { break };
        if !negotiated && cmd != C_OPTNEG {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("milter command {:?} before OPTNEG", cmd as char),
            ));
        }
        let mut reply: Option<u8> = None;
        match cmd {
            C_OPTNEG => {
                if data.len() < 12 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "short OPTNEG",
                    ));
                }
                let mta_version = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let mta_actions = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
                let mta_proto = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                let version = mta_version.min(6);
                let actions =
                    (F_ADDHDRS | F_DELRCPT | F_CHGHDRS | F_QUARANTINE | F_SETSYMLIST) & mta_actions;
                let wanted = P_NOHELO
                    | P_NOUNKNOWN
                    | P_NODATA
                    | P_NR_CONN
                    | P_NR_HELO
                    | P_NR_MAIL
                    | P_NR_RCPT
                    | P_NR_DATA
                    | P_NR_UNKN
                    | P_NR_BODY
                    | P_NR_HDR
                    | P_HDR_LEADSPC;
                let proto = wanted & mta_proto;
                no_reply = proto;
                negotiated = true;
                let mut d = Vec::with_capacity(64);
                d.extend_from_slice(&version.to_be_bytes());
                d.extend_from_slice(&actions.to_be_bytes());
                d.extend_from_slice(&proto.to_be_bytes());
                if actions & F_SETSYMLIST != 0 {
                    for (stage, names) in MACROS_WANTED {
                        d.extend_from_slice(&stage.to_be_bytes());
                        d.extend_from_slice(names.as_bytes());
                        d.push(0);
                    }
                }
                let mut out = Vec::new();
                packet(C_OPTNEG, &d, &mut out);
                stream.write_all(&out).await?;
                continue;
            }
            C_MACRO => {
                if data.first() == Some(&C_MAIL) {
                    // Macros of a new transaction: forget the last one's login.
                    macros.remove("auth_authen");
                }
                let parts = cstrings(data.get(1..).unwrap_or(&[]));
                for kv in parts.chunks(2) {
                    if let [k, v] = kv {
                        let k = k.trim_matches(|c| c == '{' || c == '}').to_string();
                        macros.insert(k, v.clone());
                    }
                }
                continue; // never answered
            }
            C_CONNECT => {
                let name_end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                env.client_name = String::from_utf8_lossy(&data[..name_end]).into_owned();
                let rest = data.get(name_end + 1..).unwrap_or(&[]);
                if rest.len() > 3 && (rest[0] == b'4' || rest[0] == b'6') {
                    let addr = cstrings(&rest[3..]).into_iter().next().unwrap_or_default();
                    env.client_ip = addr.trim_start_matches("IPv6:").parse().ok();
                }
                if no_reply & P_NR_CONN == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_HELO => {
                env.helo = cstrings(data).into_iter().next().unwrap_or_default();
                if no_reply & P_NR_HELO == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_MAIL => {
                // A new transaction on the same connection.
                env = env.next_transaction();
                too_big = false;
                discard_body = false;
                env.mail_from = cstrings(data).into_iter().next().unwrap_or_default();
                if no_reply & P_NR_MAIL == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_RCPT => {
                if let Some(r) = cstrings(data).into_iter().next() {
                    env.rcpt_to.push(r);
                }
                if no_reply & P_NR_RCPT == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_DATA => {
                if no_reply & P_NR_DATA == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_HEADER => {
                let mut it = data.splitn(2, |b| *b == 0);
                let name = String::from_utf8_lossy(it.next().unwrap_or(&[])).into_owned();
                let value = it.next().unwrap_or(&[]);
                let value = value.strip_suffix(&[0]).unwrap_or(value);
                // Counted before it is kept: name, ": ", value and CRLF.
                if env.header_names.len() >= MAX_HEADER_FIELDS
                    || env.message.len() + name.len() + value.len() + 4 > max_message
                {
                    too_big = true;
                    env.message = Vec::new();
                    env.header_names = Vec::new();
                }
                if !too_big {
                    env.message.extend_from_slice(name.as_bytes());
                    env.message.push(b':');
                    if no_reply & P_HDR_LEADSPC == 0 {
                        env.message.push(b' ');
                    }
                    // Postfix folds with bare LF inside values; restore CRLF.
                    let mut prev = 0u8;
                    for &b in value {
                        if b == b'\n' && prev != b'\r' {
                            env.message.push(b'\r');
                        }
                        env.message.push(b);
                        prev = b;
                    }
                    env.message.extend_from_slice(b"\r\n");
                    env.header_names.push(name);
                }
                if no_reply & P_NR_HDR == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_EOH => {
                env.message.extend_from_slice(b"\r\n");
                env.auth_authen = macros.get("auth_authen").cloned().filter(|s| !s.is_empty());
                if no_reply & P_NR_EOH == 0 {
                    // Most mail holds no calendar: let it go now, before its body is sent.
                    // Over a limit already: nothing will be examined either.
                    reply = Some(if too_big {
                        log_unprocessed(&macros, max_message);
                        R_ACCEPT
                    } else {
                        match handler.at_end_of_headers(&env) {
                            Body::Accept => R_ACCEPT,
                            Body::Discard => {
                                discard_body = true;
                                R_CONTINUE
                            }
                            Body::Keep => R_CONTINUE,
                        }
                    });
                }
            }
            C_BODY if discard_body => {
                if no_reply & P_NR_BODY == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_BODY => {
                if env.message.len() + data.len() > max_message {
                    too_big = true;
                    env.message = Vec::new();
                } else if !too_big {
                    env.message.extend_from_slice(data);
                }
                if no_reply & P_NR_BODY == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            C_BODYEOB => {
                if discard_body {
                    discard_body = false;
                    env.body_discarded = true;
                } else if env.message.len() + data.len() > max_message {
                    too_big = true;
                } else if !data.is_empty() && !too_big {
                    env.message.extend_from_slice(data);
                }
                env.queue_id = macros.get("i").cloned();
                env.auth_authen = macros.get("auth_authen").cloned().filter(|s| !s.is_empty());
                if env.client_ip.is_none() {
                    env.client_ip = macros.get("client_addr").and_then(|a| a.parse().ok());
                }
                // The next transaction on this connection keeps the client facts.
                let next = env.next_transaction();
                let done = std::mem::replace(&mut env, next);
                let actions = if too_big {
                    log_unprocessed(&macros, max_message);
                    EomActions::default()
                } else {
                    handler.end_of_message(done).await
                };
                let out = encode_actions(&actions);
                stream.write_all(&out).await?;
                continue;
            }
            C_ABORT => {
                env = env.next_transaction();
                continue; // no reply
            }
            C_QUIT => return Ok(()),
            C_QUIT_NC => {
                env = Envelope::default();
                macros.clear();
                continue;
            }
            C_UNKNOWN => {
                if no_reply & P_NR_UNKN == 0 {
                    reply = Some(R_CONTINUE);
                }
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown milter command {:?}", cmd as char),
                ))
            }
        }
        if let Some(r) = reply {
            let mut out = Vec::with_capacity(5);
            packet(r, &[], &mut out);
            stream.write_all(&out).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eom_actions_are_one_buffer_ending_in_accept() {
        let a = EomActions {
            insert_headers: vec![("Authentication-Results".into(), "x; none".into())],
            add_headers: vec![("X-Imipd-Result".into(), "ok".into())],
            ..Default::default()
        };
        let out = encode_actions(&a);
        assert_eq!(out[4], R_INSHEADER);
        assert_eq!(&out[out.len() - 5..], &[0, 0, 0, 1, R_ACCEPT]);
    }
}

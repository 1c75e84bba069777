//! The LMTP client that hands messages on (Dovecot's LMTP, another imipd): sessions are kept
//! open between transactions, as Postfix's LMTP client does, so that a delivery costs one
//! pipelined MAIL / RCPT / DATA exchange rather than a connection, greeting and LHLO.

use super::ClientError;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Sessions kept idle per downstream server, and how long one stays usable.
const MAX_IDLE: usize = 16;
const IDLE_FOR: Duration = Duration::from_secs(30);
/// How long the answer to MAIL may take on a session (kept or new).
const FIRST_REPLY: Duration = Duration::from_secs(30);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One LMTP session past LHLO, between transactions.
struct Session {
    r: BufReader<tokio::io::ReadHalf<Box<dyn Io>>>,
    w: tokio::io::WriteHalf<Box<dyn Io>>,
    idle_since: Instant,
}

/// Idle sessions to downstream servers, by target.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<Vec<(String, Session)>>,
}

fn io_err(e: std::io::Error) -> ClientError {
    ClientError {
        temporary: true,
        message: e.to_string(),
    }
}

fn expect((code, text): (u16, String), want: u16, what: &str) -> Result<(), ClientError> {
    if code == want {
        Ok(())
    } else {
        Err(ClientError {
            temporary: code < 500,
            message: format!("{what}: {code} {text}"),
        })
    }
}

fn key(target: &crate::config::Listen) -> String {
    match target {
        crate::config::Listen::Inet(hp) => format!("inet:{hp}"),
        crate::config::Listen::Unix(p) => format!("unix:{}", p.display()),
    }
}

impl Pool {
    fn take(&self, key: &str) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|(_, s)| s.idle_since.elapsed() < IDLE_FOR);
        let i = idle.iter().rposition(|(k, _)| k == key)?;
        Some(idle.swap_remove(i).1)
    }

    fn put(&self, key: String, mut s: Session) {
        s.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.iter().filter(|(k, _)| *k == key).count() < MAX_IDLE {
            idle.push((key, s));
        }
    }

    /// Delivers `data` to one recipient over LMTP (`inet:host:port` or `unix:/path`), on a
    /// kept session when there is one. A kept session that the server has closed meanwhile
    /// fails before anything was accepted; the delivery is then made on a new one.
    pub async fn send(
        &self,
        target: &crate::config::Listen,
        from: &str,
        rcpt: &str,
        data: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let key = key(target);
        let fut = async {
            let body = dot_stuffed(data);
            if let Some(mut s) = self.take(&key) {
                match transaction(&mut s, from, rcpt, &body).await {
                    Ok(()) => {
                        self.put(key.clone(), s);
                        return Ok(());
                    }
                    Err(Failure::Session(_)) => {} // stale: a new session below
                    Err(Failure::Answer(e)) => return Err(e),
                }
            }
            let mut s = connect(target).await?;
            match transaction(&mut s, from, rcpt, &body).await {
                Ok(()) => {
                    self.put(key.clone(), s);
                    Ok(())
                }
                Err(Failure::Session(e) | Failure::Answer(e)) => Err(e),
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError {
                    temporary: true,
                    message: "downstream LMTP timed out".into(),
                })
            })
    }
}

/// Why a transaction failed: the session broke before the server answered MAIL (safe to try
/// again on another), or the server answered (the answer stands).
enum Failure {
    Session(ClientError),
    Answer(ClientError),
}

async fn connect(target: &crate::config::Listen) -> Result<Session, ClientError> {
    let conn: Box<dyn Io> = match target {
        crate::config::Listen::Inet(hp) => {
            let s = tokio::net::TcpStream::connect(hp)
                .await
                .map_err(|e| ClientError {
                    temporary: true,
                    message: format!("connect {hp}: {e}"),
                })?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        crate::config::Listen::Unix(p) => Box::new(
            tokio::net::UnixStream::connect(p)
                .await
                .map_err(|e| ClientError {
                    temporary: true,
                    message: format!("connect {}: {e}", p.display()),
                })?,
        ),
    };
    let (r, w) = tokio::io::split(conn);
    let mut s = Session {
        r: BufReader::new(r),
        w,
        idle_since: Instant::now(),
    };
    expect(super::read_reply(&mut s.r).await?, 220, "greeting")?;
    s.w.write_all(b"LHLO imipd\r\n").await.map_err(io_err)?;
    expect(super::read_reply(&mut s.r).await?, 250, "LHLO")?;
    Ok(s)
}

/// One pipelined transaction. Any failure leaves the session unusable (it is dropped).
async fn transaction(s: &mut Session, from: &str, rcpt: &str, body: &[u8]) -> Result<(), Failure> {
    let cmds = format!("MAIL FROM:<{from}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    s.w.write_all(cmds.as_bytes())
        .await
        .map_err(|e| Failure::Session(io_err(e)))?;
    // A kept session the server gave up (421, or silence) fails here, before anything was
    // accepted: the delivery is then made on a new one.
    let mail = tokio::time::timeout(FIRST_REPLY, super::read_reply(&mut s.r))
        .await
        .map_err(|_| {
            Failure::Session(ClientError {
                temporary: true,
                message: "no answer to MAIL".into(),
            })
        })?
        .map_err(Failure::Session)?;
    if mail.0 == 421 {
        return Err(Failure::Session(ClientError {
            temporary: true,
            message: format!("MAIL: 421 {}", mail.1),
        }));
    }
    expect(mail, 250, "MAIL").map_err(Failure::Answer)?;
    let answer = |r: Result<(u16, String), ClientError>, want: u16, what: &str| {
        r.and_then(|r| expect(r, want, what))
            .map_err(Failure::Answer)
    };
    answer(super::read_reply(&mut s.r).await, 250, "RCPT")?;
    answer(super::read_reply(&mut s.r).await, 354, "DATA")?;
    s.w.write_all(body)
        .await
        .map_err(|e| Failure::Answer(io_err(e)))?;
    answer(super::read_reply(&mut s.r).await, 250, "delivery")
}

/// The message dot-stuffed, ending in CRLF "." CRLF (SMTP and LMTP DATA).
pub fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(data.len() + 64);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            buf.push(b'.');
        }
        buf.push(b);
        at_line_start = b == b'\n';
    }
    if !buf.ends_with(b"\r\n") {
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b".\r\n");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A tiny LMTP server: counts connections, answers every transaction with 250, and
    /// closes each connection after `per_conn` transactions (0: never).
    async fn server(per_conn: usize) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        server_with(per_conn, false).await
    }

    /// `bye`: after `per_conn` transactions, answer the next command 421 (as a server that
    /// shuts down or times the session out) instead of closing at once.
    async fn server_with(
        per_conn: usize,
        bye: bool,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::Ordering;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                c2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = tokio::io::split(s);
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 test\r\n").await;
                    let mut done = 0;
                    let mut in_data = false;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let reply: &[u8] = if in_data {
                            if line != ".\r\n" {
                                continue;
                            }
                            in_data = false;
                            done += 1;
                            b"250 2.0.0 ok\r\n"
                        } else if line.starts_with("DATA") {
                            in_data = true;
                            b"354 go\r\n"
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = w.write_all(reply).await;
                        if per_conn > 0 && done == per_conn {
                            if bye {
                                line.clear();
                                let _ = r.read_line(&mut line).await;
                                let _ = w.write_all(b"421 4.3.2 shutting down\r\n").await;
                            }
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn sessions_are_kept_and_a_stale_one_is_replaced() {
        use std::sync::atomic::Ordering;
        let (addr, conns) = server(0).await;
        let target = crate::config::Listen::Inet(addr);
        let pool = Pool::default();
        for i in 0..5 {
            pool.send(
                &target,
                "a@example.com",
                "b@example.org",
                format!("Subject: {i}\r\n\r\n.x\r\n").as_bytes(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "one session for five deliveries"
        );
        // A server that closes after each transaction: the kept session is stale, and the
        // delivery still succeeds on a new one.
        let three = |addr| {
            let pool = &pool;
            async move {
                let target = crate::config::Listen::Inet(addr);
                for _ in 0..3 {
                    pool.send(
                        &target,
                        "a@example.com",
                        "b@example.org",
                        b"Subject: x\r\n\r\nhi\r\n",
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
                }
            }
        };
        let (addr, conns) = server(1).await;
        three(addr).await;
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        // A kept session answered 421: the delivery goes on a new session, not back as a
        // temporary failure.
        let (addr, conns) = server_with(1, true).await;
        three(addr).await;
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn data_is_dot_stuffed_and_terminated() {
        assert_eq!(dot_stuffed(b".a\r\nb"), b"..a\r\nb\r\n.\r\n");
    }
}

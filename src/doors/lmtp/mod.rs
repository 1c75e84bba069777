//! The LMTP front door (RFC 2033) and an LMTP client for handing messages on (Dovecot).
//!
//! Server: LHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, QUIT with PIPELINING, ENHANCEDSTATUSCODES,
//! 8BITMIME and SIZE; after DATA one reply per accepted recipient, as the delivery handler
//! decides them.
//!
//! Every line is capped before it is buffered (a command line at [`MAX_COMMAND_LINE`], a DATA
//! line at [`MAX_DATA_LINE`]: longer, and the client gets an error and the connection is
//! closed), and DATA ends only at CRLF "." CRLF: a "." after a bare LF is message content, so
//! a second message cannot be smuggled behind the first.

pub mod adapter;
pub mod client;

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// One reply line: code, enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }
    fn line(&self) -> String {
        format!("{} {} {}\r\n", self.code, self.enhanced, self.text)
    }
}

/// A message received over LMTP.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: Vec<u8>,
    pub lhlo: String,
}

/// Longest command line accepted, CRLF included.
pub const MAX_COMMAND_LINE: usize = 4096;
/// Longest DATA line accepted, CRLF included.
pub const MAX_DATA_LINE: usize = 1 << 20;

/// Reads one line of at most `max` octets into `line` (cleared first). `Ok(None)` at end of
/// input; `Err(TooLong)` when `max` octets came without a LF.
async fn read_line_capped<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
    timeout: Duration,
    what: &'static str,
) -> std::io::Result<Option<()>> {
    use tokio::io::AsyncReadExt;
    line.clear();
    let n = tokio::time::timeout(timeout, r.take(max as u64).read_until(b'\n', line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, what))??;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") && line.len() >= max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "line too long",
        ));
    }
    Ok(Some(()))
}

pub trait Deliver: Send + Sync + 'static {
    /// Whether mail for `rcpt` (as given in RCPT TO) is taken at all; refused at RCPT when not.
    fn accepts(&self, _rcpt: &str) -> bool {
        true
    }

    /// Returns one reply per recipient, in order.
    fn deliver(&self, t: Transaction) -> impl std::future::Future<Output = Vec<Reply>> + Send;
}

/// Extracts the address from `FROM:<a@b> PARAMS` / `TO:<a@b>`.
fn path_arg(arg: &str, prefix: &str) -> Option<(String, String)> {
    let rest = arg.get(..prefix.len())?;
    if !rest.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    if let Some(r) = rest.strip_prefix('<') {
        let end = r.find('>')?;
        Some((r[..end].to_string(), r[end + 1..].trim().to_string()))
    } else {
        let mut it = rest.splitn(2, ' ');
        Some((it.next()?.to_string(), it.next().unwrap_or("").to_string()))
    }
}

/// Serves one LMTP connection.
pub async fn serve<S, D>(
    stream: S,
    hostname: &str,
    handler: &D,
    max_size: usize,
    timeout: Duration,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: Deliver,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut out = String::new();
    out.push_str(&format!("220 {hostname} LMTP imipd ready\r\n"));
    let mut t = Transaction::default();
    let mut have_mail = false;
    let mut line = Vec::with_capacity(256);
    loop {
        if r.buffer().is_empty() && !out.is_empty() {
            w.write_all(out.as_bytes()).await?;
            w.flush().await?;
            out.clear();
        }
        match read_line_capped(
            &mut r,
            &mut line,
            MAX_COMMAND_LINE,
            timeout,
            "LMTP client idle",
        )
        .await
        {
            Ok(Some(())) => {}
            Ok(None) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                out.push_str("500 5.5.2 Line too long, closing connection\r\n");
                w.write_all(out.as_bytes()).await?;
                w.flush().await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match text.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "LHLO" => {
                t = Transaction {
                    lhlo: arg,
                    ..Default::default()
                };
                have_mail = false;
                out.push_str(&format!(
                    "250-{hostname}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {max_size}\r\n"
                ));
            }
            "HELO" | "EHLO" => out.push_str("500 5.5.1 This is LMTP: use LHLO\r\n"),
            "MAIL" => match path_arg(&arg, "FROM:") {
                _ if have_mail => out.push_str("503 5.5.1 Nested MAIL command\r\n"),
                Some((addr, params)) => {
                    let size = params
                        .split_whitespace()
                        .find_map(|p| p.strip_prefix("SIZE=").or_else(|| p.strip_prefix("size=")))
                        .and_then(|s| s.parse::<usize>().ok());
                    if size.is_some_and(|s| s > max_size) {
                        out.push_str("552 5.3.4 Message size exceeds fixed limit\r\n");
                    } else {
                        t.mail_from = addr;
                        t.rcpt_to.clear();
                        have_mail = true;
                        out.push_str("250 2.1.0 Ok\r\n");
                    }
                }
                None => out.push_str("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            },
            "RCPT" => match path_arg(&arg, "TO:") {
                _ if !have_mail => out.push_str("503 5.5.1 Need MAIL command\r\n"),
                Some((addr, _)) if addr.contains('@') && t.rcpt_to.len() < 1000 => {
                    if handler.accepts(&addr) {
                        t.rcpt_to.push(addr);
                        out.push_str("250 2.1.5 Ok\r\n");
                    } else {
                        out.push_str("550 5.1.1 Recipient is not local here\r\n");
                    }
                }
                Some(_) => out.push_str("550 5.1.3 Bad recipient address syntax\r\n"),
                None => out.push_str("501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
            },
            "DATA" => {
                if !have_mail || t.rcpt_to.is_empty() {
                    out.push_str("503 5.5.1 Need RCPT command\r\n");
                    continue;
                }
                out.push_str("354 End data with <CR><LF>.<CR><LF>\r\n");
                w.write_all(out.as_bytes()).await?;
                w.flush().await?;
                out.clear();
                let mut data = Vec::with_capacity(16 * 1024);
                let mut overflow = false;
                // Whether the last line ended in CRLF (DATA itself did): only then is a "."
                // line the end of the data, and only then is a leading dot unstuffed.
                let mut at_crlf = true;
                loop {
                    match read_line_capped(
                        &mut r,
                        &mut line,
                        MAX_DATA_LINE,
                        timeout,
                        "LMTP client idle in DATA",
                    )
                    .await
                    {
                        Ok(Some(())) => {}
                        Ok(None) => return Ok(()), // connection lost: nothing was accepted
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            w.write_all(b"500 5.5.2 Line too long, closing connection\r\n")
                                .await?;
                            w.flush().await?;
                            return Err(e);
                        }
                        Err(e) => return Err(e),
                    }
                    if at_crlf && line == b".\r\n" {
                        break;
                    }
                    let content = if at_crlf && line.first() == Some(&b'.') {
                        &line[1..]
                    } else {
                        &line[..]
                    };
                    at_crlf = line.ends_with(b"\r\n");
                    if data.len() + content.len() > max_size {
                        overflow = true;
                    } else if !overflow {
                        data.extend_from_slice(content);
                    }
                }
                let replies = if overflow {
                    t.rcpt_to
                        .iter()
                        .map(|_| Reply::new(552, "5.3.4", "Message size exceeds fixed limit"))
                        .collect()
                } else {
                    let mut tx = std::mem::take(&mut t);
                    tx.data = data;
                    let n = tx.rcpt_to.len();
                    let lhlo = tx.lhlo.clone();
                    let mut replies = handler.deliver(tx).await;
                    replies.resize(
                        n,
                        Reply::new(451, "4.3.0", "Internal error: no reply for recipient"),
                    );
                    t.lhlo = lhlo;
                    replies
                };
                for rep in replies {
                    out.push_str(&rep.line());
                }
                t.rcpt_to.clear();
                have_mail = false;
            }
            "RSET" => {
                let lhlo = std::mem::take(&mut t.lhlo);
                t = Transaction {
                    lhlo,
                    ..Default::default()
                };
                have_mail = false;
                out.push_str("250 2.0.0 Ok\r\n");
            }
            "NOOP" => out.push_str("250 2.0.0 Ok\r\n"),
            "VRFY" => out.push_str("252 2.5.0 Cannot verify, but will try delivery\r\n"),
            "QUIT" => {
                out.push_str("221 2.0.0 Bye\r\n");
                w.write_all(out.as_bytes()).await?;
                w.flush().await?;
                return Ok(());
            }
            _ => out.push_str("500 5.5.2 Command not recognized\r\n"),
        }
    }
}

/// An error from a downstream LMTP server, with whether it is temporary.
#[derive(Debug)]
pub struct ClientError {
    pub temporary: bool,
    pub message: String,
}

async fn read_reply<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<(u16, String), ClientError> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.map_err(|e| ClientError {
            temporary: true,
            message: e.to_string(),
        })?;
        if n == 0 {
            return Err(ClientError {
                temporary: true,
                message: "connection closed".into(),
            });
        }
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or(ClientError {
                temporary: true,
                message: format!("bad reply {line:?}"),
            })?;
        text.push_str(line.get(4..).unwrap_or("").trim_end());
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
        text.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_with_and_without_brackets() {
        assert_eq!(
            path_arg("FROM:<a@b> SIZE=10", "FROM:"),
            Some(("a@b".into(), "SIZE=10".into()))
        );
        assert_eq!(path_arg("to: x@y", "TO:"), Some(("x@y".into(), "".into())));
        assert_eq!(path_arg("FROM:<>", "FROM:"), Some(("".into(), "".into())));
    }
}

//! Outgoing iMIP (RFC 6047): builds the message with mail-builder and hands it to a transport.

use crate::itip::OutMessage;
use imipd_core::effects::{Effect, EffectError, EffectKind};
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique token for Message-IDs and file names: time, process and a counter.
pub fn unique_token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}.{:09}.{}.{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn domain_of(addr: &str) -> &str {
    addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost")
}

/// Builds an iMIP message: multipart/alternative of text/plain and
/// `text/calendar; method=...` (RFC 6047 2.4), with From/To/In-Reply-To set.
pub fn build_imip(m: &OutMessage, in_reply_to: Option<&str>) -> Vec<u8> {
    let method = m.method.as_str();
    let ical = m.calendar.to_ical();
    let what = match (
        method,
        m.calendar.subs.iter().any(|c| c.name == "VFREEBUSY"),
    ) {
        (_, true) => "Free/busy reply".to_string(),
        ("REQUEST", _) => "Invitation (current version)".to_string(),
        ("REFRESH", _) => "Request for the current version".to_string(),
        (m, _) => format!("Calendar {}", m.to_ascii_lowercase()),
    };
    let subject = if m.summary.is_empty() {
        what.clone()
    } else {
        format!("{what}: {}", m.summary)
    };
    let text = format!(
        "{what} from {} sent by imipd on behalf of {}.\r\nYour calendar program reads the attached iCalendar object.\r\n",
        m.from, m.from
    );
    let calendar_part = MimePart::new(
        ContentType::new("text/calendar")
            .attribute("method", method)
            .attribute("charset", "utf-8"),
        ical,
    );
    let body = MimePart::new(
        "multipart/alternative",
        vec![MimePart::new("text/plain", text), calendar_part],
    );
    let mut builder = MessageBuilder::new()
        .from(m.from.clone())
        .to(m.to.clone())
        .subject(subject)
        .message_id(format!("{}@{}", unique_token(), domain_of(&m.from)))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(body);
    if let Some(irt) = in_reply_to {
        let irt = irt
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string();
        if !irt.is_empty() {
            builder = builder.in_reply_to(irt.clone()).references(irt);
        }
    }
    builder.write_to_vec().unwrap_or_default()
}

/// Where outgoing messages go.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Write each message as a .eml file into a directory (tests, dry runs, a pickup spool).
    Outbox(PathBuf),
    /// Pipe into a sendmail-compatible binary.
    Sendmail(PathBuf),
    /// Submit over SMTP (host:port).
    Smtp(String),
}

impl Transport {
    pub fn parse(s: &str) -> Result<Transport, String> {
        if let Some(p) = s.strip_prefix("outbox:") {
            return Ok(Transport::Outbox(PathBuf::from(p)));
        }
        if let Some(p) = s.strip_prefix("sendmail:") {
            return Ok(Transport::Sendmail(PathBuf::from(p)));
        }
        if let Some(hp) = s.strip_prefix("smtp://") {
            let hp = hp.trim_end_matches('/');
            if hp.is_empty() {
                return Err("smtp:// needs host:port".into());
            }
            let hp = if hp.contains(':') {
                hp.to_string()
            } else {
                format!("{hp}:25")
            };
            return Ok(Transport::Smtp(hp));
        }
        Err(format!(
            "unknown transport {s:?}; use smtp://HOST:PORT, sendmail:/PATH or outbox:/DIR"
        ))
    }

    /// The transport as the config names it, for logs and journal lines.
    pub fn describe(&self) -> String {
        match self {
            Transport::Outbox(d) => format!("outbox:{}", d.display()),
            Transport::Sendmail(b) => format!("sendmail:{}", b.display()),
            Transport::Smtp(hp) => format!("smtp://{hp}"),
        }
    }
}

/// Writes `data` into `dir` as a new .eml file, durably (tmp file, fsync, rename).
pub fn write_eml(dir: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let name = format!("{}.eml", unique_token());
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(&name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

/// One message to send: the envelope and the RFC 5322 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub from: String,
    pub to: String,
    pub data: Vec<u8>,
}

/// The reply `m` as mail: built with [`build_imip`], from `[outbound] envelope_from` when set
/// (else the calendar user's address).
pub fn outgoing(
    cfg: &crate::config::Config,
    m: &OutMessage,
    in_reply_to: Option<&str>,
) -> Outgoing {
    Outgoing {
        from: cfg
            .outbound
            .envelope_from
            .clone()
            .unwrap_or_else(|| m.from.clone()),
        to: m.to.clone(),
        data: build_imip(m, in_reply_to),
    }
}

impl Outgoing {
    /// The message as an [`EffectKind::Imip`] effect of `user`'s object `uid`. Payload:
    /// `from length u16 | from | to length u16 | to | message`.
    pub fn into_effect(self, user: &str, uid: &str, host: &str) -> Effect {
        let mut payload = Vec::with_capacity(self.from.len() + self.to.len() + 4 + self.data.len());
        for a in [&self.from, &self.to] {
            let a = &a.as_bytes()[..a.len().min(u16::MAX as usize)];
            payload.extend_from_slice(&(a.len() as u16).to_be_bytes());
            payload.extend_from_slice(a);
        }
        payload.extend_from_slice(&self.data);
        Effect::new(EffectKind::Imip, user, uid, payload, host)
    }

    /// The message an `Imip` effect carries; None for another kind or a damaged payload.
    pub fn from_effect(e: &Effect) -> Option<Outgoing> {
        if e.kind != EffectKind::Imip {
            return None;
        }
        let b = &e.payload;
        let mut at = 0usize;
        let mut addr = || {
            let n = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
            let s = std::str::from_utf8(b.get(at + 2..at + 2 + n)?)
                .ok()?
                .to_string();
            at += 2 + n;
            Some(s)
        };
        let from = addr()?;
        let to = addr()?;
        Some(Outgoing {
            from,
            to,
            data: b[at..].to_vec(),
        })
    }
}

/// The effect handler for iMIP: sends each message over the transport it was built with.
pub struct Handler {
    pub transport: Transport,
}

impl crate::effects::runner::Handler for Handler {
    fn attempt(&self, effect: Effect) -> crate::effects::runner::Attempt {
        let transport = self.transport.clone();
        Box::pin(async move {
            let Some(m) = Outgoing::from_effect(&effect) else {
                return Err(EffectError {
                    message: "not an iMIP message (damaged effect)".into(),
                    permanent: true,
                });
            };
            send(&transport, &m.from, &m.to, &m.data)
                .await
                .map(|()| format!("{} -> {} sent via {}", m.from, m.to, transport.describe()))
                .map_err(|e| EffectError {
                    message: format!("{} -> {}: {}", m.from, m.to, e.message),
                    permanent: e.permanent,
                })
        })
    }
}

/// The queue directory of versions that kept replies as `.eml` + `.env` files under the data
/// dir (replaced by effects in the store; see [`migrate_queue`]).
pub fn queue_dir(cfg: &crate::config::Config) -> PathBuf {
    cfg.data_dir.join("outbox").join("queue")
}

/// Moves the messages an older version left in [`queue_dir`] into the store as effects, once:
/// they are committed and made durable before the files are removed, so a crash in between
/// sends a message twice rather than never. A message without its envelope file (a crash
/// between the two writes) takes its envelope from its From and To headers. The `failed`
/// subdirectory (messages refused for good) is left to the administrator.
pub fn migrate_queue(
    cfg: &crate::config::Config,
    store: &dyn crate::store::Store,
    host: &str,
) -> Result<usize, String> {
    let dir = queue_dir(cfg);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut items: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "eml"))
        .collect();
    // Named by creation time: the old order is kept.
    items.sort();
    let mut effects = Vec::new();
    for eml in &items {
        let data = std::fs::read(eml).map_err(|e| format!("{}: {e}", eml.display()))?;
        let env: serde_json::Value = std::fs::read_to_string(eml.with_extension("env"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let header = |name: &str| {
            crate::proof::header_values(&data, name)
                .first()
                .map(|v| {
                    let v = v.trim();
                    match (v.find('<'), v.rfind('>')) {
                        (Some(a), Some(b)) if b > a => v[a + 1..b].to_string(),
                        _ => v.to_string(),
                    }
                })
                .unwrap_or_default()
        };
        let from = env["from"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| header("From"));
        let to = env["to"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| header("To"));
        if to.is_empty() {
            continue;
        }
        let user = crate::ical::norm_addr(&header("From"));
        effects.push(Outgoing { from, to, data }.into_effect(&user, "", host));
    }
    if effects.is_empty() {
        return Ok(0);
    }
    store.add_effects(&effects).map_err(|e| e.to_string())?;
    store.flush().map_err(|e| e.to_string())?;
    for eml in &items {
        let _ = std::fs::remove_file(eml.with_extension("env"));
        let _ = std::fs::remove_file(eml);
    }
    Ok(effects.len())
}

/// Why sending failed, and whether trying again can help.
#[derive(Debug)]
pub struct SendError {
    pub permanent: bool,
    pub message: String,
}

impl From<String> for SendError {
    fn from(message: String) -> Self {
        SendError {
            permanent: false,
            message,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Sends one message now over `transport`.
pub async fn send(
    transport: &Transport,
    from: &str,
    to: &str,
    data: &[u8],
) -> Result<(), SendError> {
    match transport {
        Transport::Outbox(dir) => write_eml(dir, data)
            .map(|_| ())
            .map_err(|e| SendError::from(e.to_string())),
        Transport::Sendmail(bin) => {
            use tokio::io::AsyncWriteExt;
            let mut child = tokio::process::Command::new(bin)
                .arg("-i")
                .arg("-f")
                .arg(from)
                .arg("--")
                .arg(to)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(data).await.map_err(|e| e.to_string())?;
            }
            let status = tokio::time::timeout(std::time::Duration::from_secs(120), child.wait())
                .await
                .map_err(|_| "sendmail timed out".to_string())?
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                // sysexits: 75 is temporary; other EX_* codes will not change on retry.
                let code = status.code().unwrap_or(75);
                Err(SendError {
                    permanent: (64..=78).contains(&code) && code != 75,
                    message: format!("{} exited with {status}", bin.display()),
                })
            }
        }
        Transport::Smtp(hp) => {
            use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
            let (host, port) = hp.rsplit_once(':').unwrap_or((hp.as_str(), "25"));
            let port: u16 = port.parse().map_err(|_| format!("bad port in {hp}"))?;
            let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                .port(port)
                .timeout(Some(std::time::Duration::from_secs(60)))
                .build();
            let from_addr = if from.is_empty() {
                None
            } else {
                Some(
                    from.parse::<lettre::Address>()
                        .map_err(|e| format!("{from}: {e}"))?,
                )
            };
            let to_addr = to
                .parse::<lettre::Address>()
                .map_err(|e| format!("{to}: {e}"))?;
            let envelope = lettre::address::Envelope::new(from_addr, vec![to_addr])
                .map_err(|e| e.to_string())?;
            mailer
                .send_raw(&envelope, data)
                .await
                .map(|_| ())
                .map_err(|e| SendError {
                    permanent: e.is_permanent(),
                    message: e.to_string(),
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ical::Component;
    use crate::itip::Method;

    fn reply() -> OutMessage {
        let mut cal = Component::new("VCALENDAR");
        cal.props.push(crate::ical::Prop::new("METHOD", "REPLY"));
        OutMessage {
            from: "bob@example.org".into(),
            to: "alice@example.com".into(),
            method: Method::Reply,
            calendar: cal,
            summary: "Review".into(),
        }
    }

    #[test]
    fn envelope_from_is_honoured_and_survives_the_effect_payload() {
        let mut cfg = crate::config::Config::default();
        let plain = outgoing(&cfg, &reply(), Some("<m@x>"));
        assert_eq!(plain.from, "bob@example.org");
        cfg.outbound.envelope_from = Some("bounces@example.org".into());
        let m = outgoing(&cfg, &reply(), Some("<m@x>"));
        assert_eq!(m.from, "bounces@example.org");
        assert!(String::from_utf8_lossy(&m.data).contains("In-Reply-To: <m@x>"));
        let e = m.clone().into_effect("bob@example.org", "u1", "host");
        assert_eq!(e.kind, EffectKind::Imip);
        assert_eq!(Outgoing::from_effect(&e), Some(m));
        let mut damaged = e.clone();
        damaged.payload.truncate(3);
        assert_eq!(Outgoing::from_effect(&damaged), None);
    }
}

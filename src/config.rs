//! The TOML configuration. Every key has a safe default, documented in
//! `contrib/imipd.toml.example`; errors name the key and the line.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, outbox and control socket live.
    pub data_dir: PathBuf,
    /// Recipients in these domains have calendars here. Empty: every recipient (CLI use).
    pub local_domains: Vec<String>,
    /// authserv-id for Authentication-Results headers; default the host name.
    pub authserv_id: Option<String>,
    pub milter: Milter,
    pub lmtp: Lmtp,
    pub dns: Dns,
    pub smime: Smime,
    pub pgp: Pgp,
    pub outbound: Outbound,
    pub itip: Itip,
    pub policy: Policy,
    pub ischedule: Option<toml::Value>,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/imipd"),
            local_domains: Vec::new(),
            authserv_id: None,
            milter: Milter::default(),
            lmtp: Lmtp::default(),
            dns: Dns::default(),
            smime: Smime::default(),
            pgp: Pgp::default(),
            outbound: Outbound::default(),
            itip: Itip::default(),
            policy: Policy::default(),
            ischedule: None,
            log: Log::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Milter {
    pub enabled: bool,
    pub listen: String,
    /// What to do with a calendar message whose sender is not proven: "accept" (annotate only),
    /// "quarantine" or "reject".
    pub on_forged: String,
}

impl Default for Milter {
    fn default() -> Self {
        Milter {
            enabled: true,
            listen: "inet:127.0.0.1:8897".into(),
            on_forged: "accept".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lmtp {
    pub enabled: bool,
    pub listen: String,
    /// `maildir:/var/mail/%d/%u` or `lmtp:inet:HOST:PORT` / `lmtp:unix:/path`.
    pub deliver: String,
    pub max_message_size: usize,
}

impl Default for Lmtp {
    fn default() -> Self {
        Lmtp {
            enabled: true,
            listen: "inet:127.0.0.1:2424".into(),
            deliver: "maildir:/var/mail/%d/%u".into(),
            max_message_size: 50 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smime {
    pub trust_anchors: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pgp {
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// `smtp://127.0.0.1:25`, `sendmail:/usr/sbin/sendmail` or `outbox:/dir`.
    /// Default: queue under data_dir/outbox/queue and send nothing.
    pub transport: Option<String>,
    /// Envelope sender for outgoing iMIP; default the calendar user's address.
    pub envelope_from: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Itip {
    /// Delete an object on CANCEL instead of keeping it with STATUS:CANCELLED.
    pub delete_on_cancel: bool,
    /// Occurrences of one object expanded into the free/busy index at most.
    pub max_instances: usize,
}

impl Default for Itip {
    fn default() -> Self {
        Itip {
            delete_on_cancel: false,
            max_instances: 2000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Who may create a new object in a local calendar: "everyone", "known" (senders with an
    /// existing object or in `allow`), "local" (senders in local_domains) or "nobody".
    pub create: String,
    /// Addresses or `@domain` entries always allowed to create.
    pub allow: Vec<String>,
    /// Trust the From address of submissions the milter saw authenticated ({auth_authen}).
    pub trust_authenticated_submission: bool,
    /// Trust Authentication-Results headers from these authserv-ids.
    pub trusted_authserv_ids: Vec<String>,
    /// Trust the From address of mail relayed from these client IPs.
    pub trusted_relays: Vec<String>,
    /// Per-domain or per-user overrides of `create`: `"example.org" = "local"`.
    pub create_for: std::collections::BTreeMap<String, String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            create: "everyone".into(),
            allow: Vec::new(),
            trust_authenticated_submission: false,
            trusted_authserv_ids: Vec::new(),
            trusted_relays: Vec::new(),
            create_for: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// "info" or "debug".
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

/// A configuration error: which file, key and line, and what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Finds the line of `section.key` (or a top-level key) in the TOML text.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

impl Config {
    /// Loads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().to_string();
            let key = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("unknown field"))
                .map(str::to_string);
            ConfigError {
                file: file.to_string(),
                line,
                key,
                message: msg,
            }
        })?;
        cfg.validate(text, file)?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            line: line_of(text, key),
            key: Some(key.to_string()),
            message,
        };
        if self.milter.enabled {
            parse_listen(&self.milter.listen).map_err(|m| err("milter.listen", m))?;
        }
        if !matches!(
            self.milter.on_forged.as_str(),
            "accept" | "quarantine" | "reject"
        ) {
            return Err(err(
                "milter.on_forged",
                format!(
                    "{:?} is not one of accept, quarantine, reject",
                    self.milter.on_forged
                ),
            ));
        }
        if self.lmtp.enabled {
            parse_listen(&self.lmtp.listen).map_err(|m| err("lmtp.listen", m))?;
            Deliver::parse(&self.lmtp.deliver).map_err(|m| err("lmtp.deliver", m))?;
        }
        for ns in &self.dns.nameservers {
            parse_nameserver(ns).map_err(|m| err("dns.nameservers", m))?;
        }
        if let Some(t) = &self.outbound.transport {
            crate::outbound::Transport::parse(t).map_err(|m| err("outbound.transport", m))?;
        }
        for (key, path) in [
            ("smime.trust_anchors", &self.smime.trust_anchors),
            ("pgp.keyring", &self.pgp.keyring),
        ] {
            if let Some(p) = path {
                if !p.exists() {
                    return Err(err(key, format!("{} does not exist", p.display())));
                }
            }
        }
        let modes = ["everyone", "known", "local", "nobody"];
        if !modes.contains(&self.policy.create.as_str()) {
            return Err(err(
                "policy.create",
                format!(
                    "{:?} is not one of {}",
                    self.policy.create,
                    modes.join(", ")
                ),
            ));
        }
        for (who, mode) in &self.policy.create_for {
            if !modes.contains(&mode.as_str()) {
                return Err(err(
                    &format!("policy.create_for.{who}"),
                    format!("{mode:?} is not one of {}", modes.join(", ")),
                ));
            }
        }
        for ip in &self.policy.trusted_relays {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                err(
                    "policy.trusted_relays",
                    format!("{ip:?} is not an IP address"),
                )
            })?;
        }
        for d in &self.local_domains {
            if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                return Err(err("local_domains", format!("{d:?} is not a domain name")));
            }
        }
        if self.itip.max_instances == 0 || self.itip.max_instances > 100_000 {
            return Err(err(
                "itip.max_instances",
                "must be between 1 and 100000".into(),
            ));
        }
        if !matches!(self.log.level.as_str(), "info" | "debug") {
            return Err(err("log.level", "must be info or debug".into()));
        }
        Ok(())
    }

    /// Whether `addr` (normalized) is a local calendar user.
    pub fn is_local(&self, addr: &str) -> bool {
        if self.local_domains.is_empty() {
            return true;
        }
        let domain = addr.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// A listening address: `inet:HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Inet(String),
    Unix(PathBuf),
}

pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("unix: needs a socket path".into());
        }
        return Ok(Listen::Unix(PathBuf::from(p)));
    }
    let hp = s.strip_prefix("inet:").unwrap_or(s);
    let hp = if let Some((port, host)) = hp.split_once('@') {
        // Sendmail style inet:PORT@HOST
        format!("{host}:{port}")
    } else {
        hp.to_string()
    };
    match hp.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(Listen::Inet(hp))
        }
        _ => Err(format!("{s:?} is not inet:HOST:PORT or unix:/path")),
    }
}

pub fn parse_nameserver(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    Err(format!("{s:?} is not IP or IP:PORT"))
}

/// Where the LMTP door hands each message on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    /// Maildir path template: %d domain, %u local part, %a the whole address.
    Maildir(String),
    Lmtp(Listen),
}

impl Deliver {
    pub fn parse(s: &str) -> Result<Deliver, String> {
        if let Some(t) = s.strip_prefix("maildir:") {
            if t.is_empty() {
                return Err("maildir: needs a path template such as /var/mail/%d/%u".into());
            }
            return Ok(Deliver::Maildir(t.to_string()));
        }
        if let Some(l) = s.strip_prefix("lmtp:") {
            return parse_listen(l).map(Deliver::Lmtp);
        }
        Err(format!(
            "{s:?} is not maildir:TEMPLATE or lmtp:inet:HOST:PORT / lmtp:unix:/path"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse(
            "data_dir = \"/x\"\n[milter]\nlisten = \"inet:127.0.0.1:1\"\nlisten_on = 3\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().contains("listen_on"), "{e}");
    }

    #[test]
    fn bad_listen_names_key_and_line() {
        let e = Config::parse("[lmtp]\n\nlisten = \"nonsense\"\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lmtp.listen"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn defaults_are_valid() {
        Config::parse("", "t.toml").unwrap();
    }
}

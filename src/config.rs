//! The TOML configuration. Every key has a safe default, documented in
//! `contrib/imipd.toml.example`; errors name the key and the line.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store, outbox and control socket live.
    pub data_dir: PathBuf,
    /// When `imipd run` starts as root: bind, then run as this user. Unset: keep the user.
    pub user: Option<String>,
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
    pub ischedule: Ischedule,
    pub log: Log,
    pub journal: Journal,
    pub metrics: Metrics,
    /// `[plugins.NAME]`: each table enables the plugin NAME and is parsed by that plugin.
    pub plugins: BTreeMap<String, toml::Table>,
    /// The plugins built from `plugins`. Filled by [`Config::parse`]; this is what the pipeline
    /// and the effects runner call.
    #[serde(skip)]
    pub plugin_set: crate::plugins::Plugins,
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/imipd"),
            user: None,
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
            ischedule: Ischedule::default(),
            log: Log::default(),
            journal: Journal::default(),
            metrics: Metrics::default(),
            plugins: BTreeMap::new(),
            plugin_set: Default::default(),
            store: StoreConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Milter {
    pub enabled: bool,
    pub listen: String,
    /// What to do with a calendar message whose sender is not proven: "accept" (annotate only),
    /// "quarantine" or "reject".
    pub on_forged: OnForged,
}

impl Default for Milter {
    fn default() -> Self {
        Milter {
            enabled: true,
            listen: "inet:127.0.0.1:8897".into(),
            on_forged: OnForged::Accept,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lmtp {
    pub enabled: bool,
    pub listen: String,
    /// `maildir:/var/mail/%d/%u` or `lmtp:inet:HOST:PORT` / `lmtp:unix:/path`.
    pub deliver: String,
    pub max_message_size: usize,
    /// Owner of delivered Maildir files and directories (e.g. "vmail"); unset: the daemon's.
    pub maildir_owner: Option<String>,
}

impl Default for Lmtp {
    fn default() -> Self {
        Lmtp {
            enabled: true,
            listen: "inet:127.0.0.1:2424".into(),
            deliver: "maildir:/var/mail/%d/%u".into(),
            max_message_size: 50 * 1024 * 1024,
            maildir_owner: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub timeout_secs: Option<u64>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            timeout_secs: Some(5),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smime {
    pub trust_anchors: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pgp {
    pub keyring: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Outbound {
    /// `smtp://127.0.0.1:25`, `sendmail:/usr/sbin/sendmail` or `outbox:/dir`.
    /// Default: replies wait in the store (as effects) and nothing is sent.
    pub transport: Option<String>,
    /// Envelope sender for outgoing iMIP; default the calendar user's address.
    pub envelope_from: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Who may create a new object in a local calendar: "everyone", "known" (senders with an
    /// existing object or in `allow`), "local" (senders in local_domains) or "nobody".
    pub create: CreateMode,
    /// Addresses or `@domain` entries always allowed to create.
    pub allow: Vec<String>,
    /// Trust the From address of submissions the milter saw authenticated ({auth_authen}).
    pub trust_authenticated_submission: bool,
    /// Trust Authentication-Results headers from these authserv-ids.
    pub trusted_authserv_ids: Vec<String>,
    /// Trust the From address of mail relayed from these client IPs.
    pub trusted_relays: Vec<String>,
    /// Per-domain or per-user overrides of `create`: `"example.org" = "local"`.
    pub create_for: std::collections::BTreeMap<String, CreateMode>,
    /// With `trust_authenticated_submission`: the addresses each SASL login may send as
    /// (default: the login itself if it is an address, else login@ each local domain).
    pub submission_logins: std::collections::HashMap<String, Vec<String>>,
    /// Who may act for a calendar user through SENT-BY, besides what a stored object records:
    /// `"ceo@example.org" = ["assistant@example.org"]`.
    pub delegates: BTreeMap<String, Vec<String>>,
    /// `delegates` with every address normalized ([`crate::ical::norm_addr`]): principal ->
    /// delegates. Filled by [`Config::parse`]; this is what the iTIP engine reads.
    #[serde(skip)]
    pub delegate_map: std::collections::HashMap<String, Vec<String>>,
}

impl Policy {
    /// Rebuilds [`Policy::delegate_map`] from [`Policy::delegates`].
    pub fn normalize_delegates(&mut self) {
        let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (principal, list) in &self.delegates {
            let entry = map.entry(crate::ical::norm_addr(principal)).or_default();
            for d in list {
                let d = crate::ical::norm_addr(d);
                if !entry.contains(&d) {
                    entry.push(d);
                }
            }
        }
        self.delegate_map = map;
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            create: CreateMode::Everyone,
            allow: Vec::new(),
            trust_authenticated_submission: false,
            trusted_authserv_ids: Vec::new(),
            trusted_relays: Vec::new(),
            create_for: Default::default(),
            submission_logins: Default::default(),
            delegates: BTreeMap::new(),
            delegate_map: Default::default(),
        }
    }
}

/// `[ischedule]`: the iSchedule receiver (when `listen` is set) and sender (when `dkim_key` is
/// set), and the bridge between mail and iSchedule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ischedule {
    /// `HOST:PORT` for the HTTPS receiver; unset: no receiver.
    pub listen: Option<String>,
    /// PEM certificate chain and private key of the receiver.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Our signing domain (`d=`), selector (`s=`) and RSA private key (PEM). Without a key
    /// nothing is sent over iSchedule.
    pub dkim_domain: Option<String>,
    pub dkim_selector: String,
    pub dkim_key: Option<PathBuf>,
    /// Keys exchanged out of band: `"domain:selector" = FILE` (a PEM public key, or DKIM key
    /// records one per line).
    pub private_keys: BTreeMap<String, PathBuf>,
    /// Extra trust anchors (PEM) for outgoing HTTPS, added to the system's.
    pub ca_file: Option<PathBuf>,
    /// Static receivers looked up before DNS: `"example.net" = "https://host/.well-known/ischedule"`.
    pub servers: BTreeMap<String, String>,
    /// Allow `http://` URLs in `servers` (tests and legacy peers only).
    pub allow_http: bool,
    /// Outgoing iTIP seen by the milter on authenticated submission: "off", "also" (iSchedule
    /// and the mail) or "instead" (the mail goes only to recipients iSchedule did not reach).
    pub relay: Relay,
    /// A signing domain allowed to sign for other originator domains:
    /// `"hosting.example" = ["customer.example"]` (the draft's d= binding, with exceptions).
    pub signer_domains: BTreeMap<String, Vec<String>>,
    /// Peers (IP addresses) whose unsigned requests are accepted (distribution Cyrus cannot sign).
    pub unsigned_peers: Vec<String>,
    /// Accept rsa-sha1 signatures (deprecated by RFC 8301).
    pub allow_sha1: bool,
    /// Largest request body accepted (octets); advertised.
    pub max_content_length: usize,
    /// Most recipients in one request; advertised.
    pub max_recipients: usize,
    /// How far in the future a signature's t= may be.
    pub clock_skew_secs: i64,
    /// Longest accepted lifetime of a request signature: x= - t=, or the age of t= without x=.
    pub max_signature_age_secs: i64,
    /// Lifetime (x= - t=) of the signatures we make.
    pub signature_ttl_secs: i64,
    /// Budget of one outgoing HTTP request.
    pub timeout_secs: u64,
    /// Advertised contact (`mailto:`).
    pub administrator: Option<String>,
    /// The Originator of free/busy queries made from the command line; default
    /// `postmaster@<dkim_domain>`.
    pub originator: Option<String>,
}

impl Default for Ischedule {
    fn default() -> Self {
        Ischedule {
            listen: None,
            tls_cert: None,
            tls_key: None,
            dkim_domain: None,
            dkim_selector: "ischedule".into(),
            dkim_key: None,
            private_keys: BTreeMap::new(),
            ca_file: None,
            servers: BTreeMap::new(),
            allow_http: false,
            relay: Relay::Also,
            signer_domains: BTreeMap::new(),
            unsigned_peers: Vec::new(),
            allow_sha1: false,
            max_content_length: 256 * 1024,
            max_recipients: 100,
            clock_skew_secs: 300,
            max_signature_age_secs: 3600,
            signature_ttl_secs: 600,
            timeout_secs: 15,
            administrator: None,
            originator: None,
        }
    }
}

impl Ischedule {
    /// Whether anything is sent over iSchedule.
    pub fn sends(&self) -> bool {
        self.dkim_key.is_some()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// "info" or "debug".
    pub level: LogLevel,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: LogLevel::Info,
        }
    }
}

/// `[journal]`: the audit journal's retention.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Journal {
    /// Lines older than this many days are removed (by `imipd run`, hourly); 0 keeps all.
    pub keep_days: u64,
}

impl Default for Journal {
    fn default() -> Self {
        Journal { keep_days: 90 }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `host:port` serving the Prometheus text format at `GET /metrics`; unset: no endpoint.
    pub listen: Option<String>,
}

/// `[store]`: where the calendar store lives.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgresql://` or `postgres://` URL of a shared store; unset: the embedded sled store
    /// under `data_dir`.
    pub url: Option<String>,
    /// A file whose first line is the database password (instead of one in the URL).
    pub password_file: Option<PathBuf>,
    /// The embedded store's page cache, in MiB (default 64).
    pub cache_mb: Option<u64>,
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

/// The line of `dotted`, or else of its table's header (a missing key is reported where its
/// table is).
fn line_of_or_table(text: &str, dotted: &str) -> Option<usize> {
    line_of(text, dotted).or_else(|| {
        let (table, _) = dotted.rsplit_once('.')?;
        text.lines()
            .position(|l| {
                let t = l.trim();
                t.starts_with('[') && t.trim_matches(|c| c == '[' || c == ']').trim() == table
            })
            .map(|i| i + 1)
    })
}

/// The line of the header of `table` (`[plugins.stamp]`), if the table has one.
fn table_line(text: &str, table: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim();
            t.starts_with('[') && t.trim_matches(|c| c == '[' || c == ']').trim() == table
        })
        .map(|i| i + 1)
}

/// The dotted key (with its table) whose line holds byte `offset` of the TOML text: the key on
/// that line (or on the nearest line above that assigns one, for values spanning lines) under
/// the nearest table header above it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let lines: Vec<&str> = text[..offset].split('\n').collect();
    let here = lines.len().checked_sub(1)?;
    let whole_line = |i: usize| -> &str {
        if i == here {
            let start = text[..offset].rfind('\n').map(|p| p + 1).unwrap_or(0);
            text[start..].lines().next().unwrap_or("")
        } else {
            lines[i]
        }
    };
    let mut key = None;
    let mut table = String::new();
    for i in (0..=here).rev() {
        let t = whole_line(i).trim();
        if t.starts_with('[') && !t.contains('=') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
        if key.is_none() && !t.starts_with('#') {
            if let Some((k, _)) = t.split_once('=') {
                let k: String = k
                    .split('.')
                    .map(|p| p.trim().trim_matches('"'))
                    .collect::<Vec<_>>()
                    .join(".");
                if !k.is_empty() && !k.contains(char::is_whitespace) {
                    key = Some(k);
                }
            }
        }
    }
    let key = key?;
    Some(if table.is_empty() {
        key
    } else {
        format!("{table}.{key}")
    })
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
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().to_string();
            let at = e.span().map(|s| s.start);
            let key = if msg.contains("unknown field") {
                // `unknown field `delivr``: name it with its table (`lmtp.delivr`).
                msg.split('`')
                    .nth(1)
                    .map(|k| match at.and_then(|o| key_at(text, o)) {
                        Some(full) if full.ends_with(k) => full,
                        _ => k.to_string(),
                    })
            } else {
                at.and_then(|o| key_at(text, o))
            };
            ConfigError {
                file: file.to_string(),
                line,
                key,
                message: msg,
            }
        })?;
        cfg.validate(text, file)?;
        cfg.policy.normalize_delegates();
        cfg.plugin_set = crate::plugins::Plugins::load(&cfg.plugins).map_err(|e| ConfigError {
            file: file.to_string(),
            line: if e.table {
                table_line(text, &e.key)
            } else {
                line_of_or_table(text, &e.key)
            },
            key: Some(e.key),
            message: e.message,
        })?;
        Ok(cfg)
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: file.to_string(),
            line: line_of_or_table(text, key),
            key: Some(key.to_string()),
            message,
        };
        if self.milter.enabled {
            parse_listen(&self.milter.listen).map_err(|m| err("milter.listen", m))?;
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
        for ip in &self.policy.trusted_relays {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                err(
                    "policy.trusted_relays",
                    format!("{ip:?} is not an IP address"),
                )
            })?;
        }
        for (principal, list) in &self.policy.delegates {
            for a in std::iter::once(principal).chain(list) {
                if !looks_like_address(a) {
                    return Err(ConfigError {
                        file: file.to_string(),
                        line: line_of(text, "policy.delegates").or_else(|| line_with(text, a)),
                        key: Some("policy.delegates".into()),
                        message: format!("{a:?} is not a calendar-user address (user@domain)"),
                    });
                }
            }
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
        self.validate_ischedule(&err)?;
        if let Some(l) = &self.metrics.listen {
            l.parse::<std::net::SocketAddr>().map_err(|_| {
                err(
                    "metrics.listen",
                    format!("{l:?} is not an address and port (127.0.0.1:9897, [::1]:9897)"),
                )
            })?;
        }
        crate::store::location(self).map_err(|m| err("store.url", m))?;
        if let Some(mb) = self.store.cache_mb.filter(|mb| !(8..=1 << 20).contains(mb)) {
            return Err(err(
                "store.cache_mb",
                format!("{mb} MiB: the page cache must be 8 to 1048576 MiB"),
            ));
        }
        Ok(())
    }

    fn validate_ischedule(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let is = &self.ischedule;
        if let Some(l) = &is.listen {
            match l.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => return Err(err("ischedule.listen", format!("{l:?} is not HOST:PORT"))),
            }
            for (key, v) in [
                ("ischedule.tls_cert", &is.tls_cert),
                ("ischedule.tls_key", &is.tls_key),
            ] {
                if v.is_none() {
                    let mut e = err(
                        key,
                        "the iSchedule receiver (listen) needs a TLS certificate and key".into(),
                    );
                    e.line = err("ischedule.listen", String::new()).line.or(e.line);
                    return Err(e);
                }
            }
        }
        if is.dkim_key.is_some() && is.dkim_domain.as_deref().unwrap_or("").is_empty() {
            return Err(err(
                "ischedule.dkim_domain",
                "dkim_key is set but dkim_domain is not".into(),
            ));
        }
        for (key, path) in [
            ("ischedule.tls_cert", &is.tls_cert),
            ("ischedule.tls_key", &is.tls_key),
            ("ischedule.dkim_key", &is.dkim_key),
            ("ischedule.ca_file", &is.ca_file),
        ] {
            if let Some(p) = path {
                if !p.exists() {
                    return Err(err(key, format!("{} does not exist", p.display())));
                }
            }
        }
        if let (Some(_), Some(cert), Some(key)) = (&is.listen, &is.tls_cert, &is.tls_key) {
            crate::doors::ischedule::server::tls_acceptor(cert, key).map_err(|m| {
                let which = if m.starts_with(&key.display().to_string()) {
                    "ischedule.tls_key"
                } else {
                    "ischedule.tls_cert"
                };
                err(which, m)
            })?;
        }
        for (ds, path) in &is.private_keys {
            let key = format!("ischedule.private_keys.{ds}");
            match ds.split_once(':') {
                Some((d, s)) if !d.is_empty() && !s.is_empty() => {}
                _ => return Err(err(&key, format!("{ds:?} is not \"domain:selector\""))),
            }
            if !path.exists() {
                return Err(err(&key, format!("{} does not exist", path.display())));
            }
        }
        for (domain, url) in &is.servers {
            let ok = url.starts_with("https://") || (is.allow_http && url.starts_with("http://"));
            if !ok {
                return Err(err(
                    &format!("ischedule.servers.{domain}"),
                    format!("{url:?} is not an https:// URL (http:// needs allow_http = true)"),
                ));
            }
        }
        for ip in &is.unsigned_peers {
            ip.parse::<std::net::IpAddr>().map_err(|_| {
                err(
                    "ischedule.unsigned_peers",
                    format!("{ip:?} is not an IP address"),
                )
            })?;
        }
        for (key, v, lo, hi) in [
            (
                "ischedule.max_content_length",
                is.max_content_length as i64,
                1024,
                64 << 20,
            ),
            (
                "ischedule.max_recipients",
                is.max_recipients as i64,
                1,
                10_000,
            ),
            ("ischedule.clock_skew_secs", is.clock_skew_secs, 0, 3600),
            (
                "ischedule.max_signature_age_secs",
                is.max_signature_age_secs,
                60,
                7 * 86400,
            ),
            (
                "ischedule.signature_ttl_secs",
                is.signature_ttl_secs,
                60,
                86400,
            ),
            ("ischedule.timeout_secs", is.timeout_secs as i64, 1, 300),
        ] {
            if v < lo || v > hi {
                return Err(err(key, format!("must be between {lo} and {hi}")));
            }
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

/// `user@domain` or `mailto:user@domain`, with no white space or control character.
fn looks_like_address(a: &str) -> bool {
    let bare = crate::ical::norm_addr(a);
    match bare.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !bare.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    }
}

/// The first line that mentions `needle` in quotes (for keys given as a `[policy.delegates]`
/// table, where [`line_of`] does not apply).
fn line_with(text: &str, needle: &str) -> Option<usize> {
    let quoted = format!("\"{needle}\"");
    text.lines()
        .position(|l| l.contains(&quoted))
        .map(|i| i + 1)
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

/// The config's modes are parsed once, here, into these types (a value outside them is a
/// config error naming the key and line); the daemon never compares mode strings per message.
///
/// `[milter] on_forged`: what to do with a calendar message whose sender is not proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnForged {
    /// Deliver it, annotated (`X-Imipd-Result`).
    Accept,
    Quarantine,
    Reject,
}

/// `[policy] create` and `create_for`: who may put a new object into a local calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CreateMode {
    Everyone,
    /// Senders with an object in the calendar already, or on `allow`.
    Known,
    /// Senders in local_domains (or on `allow`).
    Local,
    Nobody,
}

impl CreateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CreateMode::Everyone => "everyone",
            CreateMode::Known => "known",
            CreateMode::Local => "local",
            CreateMode::Nobody => "nobody",
        }
    }
}

/// `[ischedule] relay`: outgoing iTIP seen by the milter on authenticated submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relay {
    Off,
    /// Over iSchedule and by mail.
    Also,
    /// Over iSchedule; by mail only to the recipients iSchedule did not reach.
    Instead,
}

/// `[log] level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Debug,
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

/// The authenticator's settings from the config.
pub fn auth_config(cfg: &Config) -> Result<imipd_auth::AuthConfig, String> {
    let mut nameservers = Vec::new();
    for ns in &cfg.dns.nameservers {
        nameservers.push(parse_nameserver(ns)?);
    }
    Ok(imipd_auth::AuthConfig {
        authserv_id: cfg
            .authserv_id
            .clone()
            .unwrap_or_else(imipd_auth::proof::hostname),
        nameservers,
        smime_trust_anchors: cfg.smime.trust_anchors.clone(),
        pgp_keyring: cfg.pgp.keyring.clone(),
        trusted_authserv_ids: cfg.policy.trusted_authserv_ids.clone(),
        trusted_relays: cfg
            .policy
            .trusted_relays
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
        trust_authenticated_submission: cfg.policy.trust_authenticated_submission,
        submission_logins: cfg.policy.submission_logins.clone(),
        local_domains: cfg.local_domains.clone(),
        dns_timeout: std::time::Duration::from_secs(cfg.dns.timeout_secs.unwrap_or(5).clamp(1, 60)),
    })
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
    fn unknown_plugin_is_named_with_its_line() {
        let e = Config::parse("data_dir = \"/x\"\n\n[plugins.nosuch]\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("plugins.nosuch"));
        assert_eq!(e.line, Some(3), "{e}");
        let cfg = Config::parse("data_dir = \"/x\"\n", "t.toml").expect("valid");
        assert!(cfg.plugin_set.is_empty());
    }

    #[test]
    fn bad_listen_names_key_and_line() {
        let e = Config::parse("[lmtp]\n\nlisten = \"nonsense\"\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lmtp.listen"));
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let e = Config::parse(
            "[milter]\nenabled = true\n\n[lmtp]\nlisten = \"inet:127.0.0.1:1\"\ndelivr = \"x\"\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lmtp.delivr"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.to_string().contains("t.toml:6: key `lmtp.delivr`"), "{e}");
    }

    #[test]
    fn type_error_names_key_with_table_and_line() {
        let e = Config::parse("data_dir = \"/x\"\n[lmtp]\n\ndeliver = 3\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("lmtp.deliver"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        let e = Config::parse("local_domains = \"example.org\"\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("local_domains"), "{e}");
        assert_eq!(e.line, Some(1), "{e}");
        let e = Config::parse(
            "[ischedule]\nlisten = \"127.0.0.1:1\"\n[ischedule.servers]\n\"a.example\" = 7\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ischedule.servers.a.example"), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn ischedule_tls_error_has_a_line() {
        let e =
            Config::parse("[ischedule]\n\nlisten = \"127.0.0.1:8443\"\n", "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ischedule.tls_cert"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let text = format!(
            "[ischedule]\nlisten = \"127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let e = Config::parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("ischedule.tls_cert"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn journal_keep_days_defaults_to_90() {
        assert_eq!(Config::parse("", "t.toml").unwrap().journal.keep_days, 90);
        let c = Config::parse("[journal]\nkeep_days = 7\n", "t.toml").unwrap();
        assert_eq!(c.journal.keep_days, 7);
    }

    #[test]
    fn delegates_are_normalized_for_the_engine() {
        let c = Config::parse(
            "[policy]\ndelegates = { \"MAILTO:CEO@Example.org\" = [\"Assistant@example.org\", \"mailto:assistant@EXAMPLE.org\"] }\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            c.policy.delegate_map.get("ceo@example.org"),
            Some(&vec!["assistant@example.org".to_string()])
        );
    }

    #[test]
    fn bad_delegate_names_key_and_line() {
        let e = Config::parse(
            "[policy]\ncreate = \"everyone\"\ndelegates = { \"ceo@example.org\" = [\"assistant\"] }\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("policy.delegates"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("\"assistant\""), "{e}");
        let e = Config::parse(
            "[policy.delegates]\n\"ceo@example.org\" = [\"a b@example.org\"]\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("policy.delegates"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::parse("", "t.toml").unwrap();
    }
}

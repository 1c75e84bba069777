//! Fixtures made at test time by independent tools: dnsmasq serves DNS, dkimpy signs DKIM,
//! the openssl command line runs a test CA and signs S/MIME, Sequoia's `sq` signs PGP/MIME.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imipd::auth::AuthConfig;

// One helper shared by every test crate, whichever of common, mta and signers it uses.
#[allow(clippy::duplicate_mod)]
#[path = "../common/skip.rs"]
mod skip;

pub const AUTHSERV_ID: &str = "mx.test.example";

/// Whether every tool is installed; prints a notice naming the missing ones otherwise.
pub fn tools_present(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| !tool_present(tool))
        .collect();
    if !missing.is_empty() {
        skip::skip(test, &format!("missing {}", missing.join(", ")));
    }
    missing.is_empty()
}

fn tool_present(tool: &str) -> bool {
    match tool {
        // dkimpy and its ed25519 support are Python modules.
        "dkimpy" => Command::new("python3")
            .args(["-c", "import dkim, nacl.signing"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "dnsmasq" => {
            ["/usr/sbin/dnsmasq", "/sbin/dnsmasq"]
                .iter()
                .any(|p| Path::new(p).exists())
                || which("dnsmasq")
        }
        tool => which(tool),
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn dnsmasq_path() -> &'static str {
    ["/usr/sbin/dnsmasq", "/sbin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("dnsmasq")
}

/// Runs a command, feeding `stdin`, and returns its stdout; panics with its stderr on failure.
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let output = child.wait_with_output().expect("wait");
    let _ = writer.join();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// CRLF line endings, as the message would travel over SMTP.
pub fn crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for (i, &b) in data.iter().enumerate() {
        if b == b'\n' && (i == 0 || data[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// DNS

/// A dnsmasq serving TXT records on 127.0.0.1 at a free port, answering NXDOMAIN for the rest.
pub struct Dns {
    child: Child,
    pub addr: SocketAddr,
}

/// A UDP port on 127.0.0.1 that is free now (for a dnsmasq started later).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

impl Dns {
    pub fn start(records: &[(&str, &str)]) -> Dns {
        for _ in 0..10 {
            if let Some(dns) = Dns::start_at(free_udp_port(), records, &[]) {
                return dns;
            }
        }
        panic!("dnsmasq did not start");
    }

    /// Starts dnsmasq serving `records` and logging every query it gets to a file in `dir`;
    /// the second value counts the TXT queries for a name that the log holds.
    pub fn start_logged(
        dir: &std::path::Path,
        records: &[(&str, &str)],
    ) -> (Dns, impl Fn(&str) -> usize) {
        let log = dir.join("queries.log");
        let extra = [
            "--log-queries".to_string(),
            format!("--log-facility={}", log.display()),
        ];
        let dns = (0..10)
            .find_map(|_| Dns::start_at(free_udp_port(), records, &extra))
            .expect("dnsmasq");
        let count = move |name: &str| {
            let queries = std::fs::read_to_string(&log).expect("dnsmasq query log");
            queries
                .lines()
                .filter(|l| l.contains(&format!("query[TXT] {name} ")))
                .count()
        };
        (dns, count)
    }

    /// Starts dnsmasq on `port` with TXT records and extra options (`--srv-host=...`,
    /// `--host-record=...`); None if it did not come up (port taken).
    pub fn start_at(port: u16, records: &[(&str, &str)], extra: &[String]) -> Option<Dns> {
        {
            let mut args = vec![
                "--no-daemon".to_string(),
                "--conf-file=/dev/null".to_string(),
                "--no-resolv".to_string(),
                "--no-hosts".to_string(),
                format!("--port={port}"),
                "--listen-address=127.0.0.1".to_string(),
                "--bind-interfaces".to_string(),
                // Cacheable answers, as real zones give (dnsmasq defaults to TTL 0).
                "--local-ttl=300".to_string(),
                "--pid-file=".to_string(),
                // Authoritative NXDOMAIN for every name without a record.
                "--local=/#/".to_string(),
            ];
            for (name, value) in records {
                assert!(!value.contains(','), "dnsmasq splits TXT strings at commas");
                // dnsmasq cuts values longer than 255 octets into several strings itself.
                args.push(format!("--txt-record={name},{value}"));
            }
            args.extend(extra.iter().cloned());
            let child = Command::new(dnsmasq_path())
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            let mut dns = Dns {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            if dns.wait_ready() {
                return Some(dns);
            }
        }
        None
    }

    /// Polls with a raw DNS query until dnsmasq answers; false if it died (port taken).
    fn wait_ready(&mut self) -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["ready", "test"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 16, 0, 1]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let _ = socket.send_to(&query, self.addr);
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34 {
                    return true;
                }
            }
        }
        false
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration every test starts from: our DNS, short timeouts, no trust paths.
pub fn config(dns: &Dns) -> AuthConfig {
    AuthConfig {
        authserv_id: AUTHSERV_ID.to_string(),
        nameservers: vec![dns.addr],
        dns_timeout: Duration::from_secs(3),
        ..AuthConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// DKIM (dkimpy)

pub struct DkimKey {
    pub selector: String,
    pub domain: String,
    key_file: PathBuf,
    alg: &'static str,
    /// The `_domainkey` TXT record value.
    pub record: String,
}

impl DkimKey {
    pub fn rsa(dir: &Path, selector: &str, domain: &str) -> DkimKey {
        let key_file = dir.join(format!("{selector}.{domain}.rsa.pem"));
        run(
            "openssl",
            &["genrsa", "-out", path_str(&key_file), "2048"],
            None,
        );
        let der = run(
            "openssl",
            &[
                "rsa",
                "-in",
                path_str(&key_file),
                "-pubout",
                "-outform",
                "DER",
            ],
            None,
        );
        let p = String::from_utf8(run("base64", &["-w0"], Some(&der))).expect("base64");
        DkimKey {
            selector: selector.into(),
            domain: domain.into(),
            key_file,
            alg: "rsa-sha256",
            record: format!("v=DKIM1; k=rsa; p={}", p.trim()),
        }
    }

    pub fn ed25519(dir: &Path, selector: &str, domain: &str) -> DkimKey {
        let key_file = dir.join(format!("{selector}.{domain}.ed25519"));
        let p = run(
            "python3",
            &[&helper(), "ed25519-keygen", path_str(&key_file)],
            None,
        );
        DkimKey {
            selector: selector.into(),
            domain: domain.into(),
            key_file,
            alg: "ed25519-sha256",
            record: format!(
                "v=DKIM1; k=ed25519; p={}",
                String::from_utf8_lossy(&p).trim()
            ),
        }
    }

    /// The owner name of the key record.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// Signs `count` variants of `template` ("{n}" replaced by 0..count) into `outdir`.
    pub fn sign_many(&self, template: &[u8], count: usize, outdir: &Path) {
        let args = [
            helper(),
            "sign-many".to_string(),
            self.selector.clone(),
            self.domain.clone(),
            path_str(&self.key_file).to_string(),
            count.to_string(),
            path_str(outdir).to_string(),
            "--alg".to_string(),
            self.alg.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("python3", &args, Some(template));
    }

    /// Signs `message` with dkimpy; `extra` takes `--length` and `--expired`.
    pub fn sign(&self, message: &[u8], extra: &[&str]) -> Vec<u8> {
        let mut args = vec![
            helper(),
            "sign".to_string(),
            self.selector.clone(),
            self.domain.clone(),
            path_str(&self.key_file).to_string(),
            "--alg".to_string(),
            self.alg.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("python3", &args, Some(message))
    }
}

impl DkimKey {
    /// Whether dkimpy verifies `message` with this key.
    pub fn dkimpy_verifies(&self, message: &[u8]) -> bool {
        let out = run(
            "python3",
            &[&helper(), "verify", &self.record],
            Some(message),
        );
        String::from_utf8_lossy(&out).trim() == "pass"
    }

    /// Signs `message` with OpenDKIM's own signer (`opendkim -t` in test mode), relaxed/relaxed,
    /// with `l=` when `length` is set. Needs an RSA key.
    pub fn opendkim_sign(&self, message: &[u8], length: bool) -> Vec<u8> {
        let guard = private_dir();
        let work = guard.path();
        let input = work.join("in.eml");
        std::fs::write(&input, message).expect("write message");
        let recipients = work.join("bodylength");
        std::fs::write(&recipients, "*\n").expect("write");
        let conf = work.join("opendkim.conf");
        let key = work.join("key.pem");
        std::fs::copy(&self.key_file, &key).expect("copy key");
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
        }
        let mut text = format!(
            "Mode s\nDomain {}\nSelector {}\nKeyFile {}\nCanonicalization relaxed/relaxed\nSyslog no\n\
             SignHeaders From,To,Subject,Date,Message-ID,MIME-Version,Content-Type\n",
            self.domain,
            self.selector,
            path_str(&key)
        );
        if length {
            text.push_str(&format!("BodyLengthDB refile:{}\n", path_str(&recipients)));
        }
        std::fs::write(&conf, text).expect("write conf");
        let out = run(
            "opendkim",
            &["-x", path_str(&conf), "-t", path_str(&input)],
            None,
        );
        let start = out
            .windows(15)
            .position(|w| w == b"DKIM-Signature:")
            .expect("opendkim printed a signature");
        let text = String::from_utf8_lossy(&out[start..]).replace("\r\n", "\n");
        let mut signed = text.trim_end().replace('\n', "\r\n").into_bytes();
        signed.extend_from_slice(b"\r\n");
        signed.extend_from_slice(message);
        signed
    }

    /// The `Authentication-Results` value OpenDKIM's verifier gives `message` with this key.
    pub fn opendkim_verify(&self, message: &[u8]) -> String {
        let guard = private_dir();
        let work = guard.path();
        let input = work.join("in.eml");
        std::fs::write(&input, message).expect("write message");
        let data = work.join("dns");
        std::fs::write(&data, format!("{} {}\n", self.record_name(), self.record))
            .expect("write dns data");
        let conf = work.join("opendkim.conf");
        std::fs::write(
            &conf,
            format!("Mode v\nTestDNSData file:{}\nSyslog no\n", path_str(&data)),
        )
        .expect("write conf");
        let out = run(
            "opendkim",
            &["-x", path_str(&conf), "-vv", "-t", path_str(&input)],
            None,
        );
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A directory that only its owner can read, below the build's own temp dir: OpenDKIM refuses a
/// config or key with a world-writable ancestor (such as /tmp).
/// Removed when dropped.
fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).expect("dir");
    let work = tempfile::Builder::new()
        .prefix("opendkim-")
        .tempdir_in(base)
        .expect("tempdir");
    let _ = std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o700));
    work
}

fn helper() -> String {
    format!("{}/tests/signers/dkim_sign.py", env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// S/MIME (openssl command line)

/// A test certification authority run with `openssl ca`.
pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
    conf: PathBuf,
}

/// What a leaf certificate should carry.
pub struct Leaf<'a> {
    pub name: &'a str,
    pub san_email: Option<&'a str>,
    pub subject_email: Option<&'a str>,
    pub eku: &'a str,
    /// `openssl ca -startdate/-enddate` values (YYYYMMDDHHMMSSZ).
    pub dates: Option<(&'a str, &'a str)>,
}

impl<'a> Leaf<'a> {
    pub fn email(name: &'a str, email: &'a str) -> Leaf<'a> {
        Leaf {
            name,
            san_email: Some(email),
            subject_email: None,
            eku: "emailProtection",
            dates: None,
        }
    }
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let dir = dir.join(name);
        std::fs::create_dir_all(dir.join("newcerts")).expect("ca dir");
        std::fs::write(dir.join("index.txt"), b"").expect("index");
        std::fs::write(dir.join("serial"), b"1000\n").expect("serial");
        let conf = dir.join("ca.cnf");
        std::fs::write(
            &conf,
            format!(
                "[ ca ]\ndefault_ca = test_ca\n\
                 [ test_ca ]\ndir = {d}\ndatabase = {d}/index.txt\nnew_certs_dir = {d}/newcerts\n\
                 serial = {d}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                 email_in_dn = yes\ncopy_extensions = none\ndefault_days = 365\n\
                 [ any ]\ncommonName = supplied\nemailAddress = optional\n",
                d = dir.display()
            ),
        )
        .expect("ca.cnf");
        let cert = dir.join("ca.pem");
        let key = dir.join("ca.key");
        run(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&cert),
                "-subj",
                &format!("/CN={name}"),
                "-days",
                "3650",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            None,
        );
        Ca {
            dir,
            cert,
            key,
            conf,
        }
    }

    /// Issues a signing certificate; returns (certificate, key) PEM files.
    pub fn issue(&self, leaf: &Leaf<'_>) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{}.key", leaf.name));
        let csr = self.dir.join(format!("{}.csr", leaf.name));
        let cert = self.dir.join(format!("{}.pem", leaf.name));
        let ext = self.dir.join(format!("{}.ext", leaf.name));
        let mut subject = format!("/CN={}", leaf.name);
        if let Some(email) = leaf.subject_email {
            subject.push_str(&format!("/emailAddress={email}"));
        }
        run(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
                "-subj",
                &subject,
            ],
            None,
        );
        let mut extensions = format!(
            "[ leaf ]\nbasicConstraints = CA:FALSE\n\
             keyUsage = digitalSignature, nonRepudiation\nextendedKeyUsage = {}\n",
            leaf.eku
        );
        if let Some(email) = leaf.san_email {
            extensions.push_str(&format!("subjectAltName = email:{email}\n"));
        }
        std::fs::write(&ext, extensions).expect("ext");
        let mut args = vec![
            "ca",
            "-batch",
            "-notext",
            "-config",
            path_str(&self.conf),
            "-cert",
            path_str(&self.cert),
            "-keyfile",
            path_str(&self.key),
            "-in",
            path_str(&csr),
            "-out",
            path_str(&cert),
            "-extfile",
            path_str(&ext),
            "-extensions",
            "leaf",
        ];
        if let Some((start, end)) = leaf.dates {
            args.extend(["-startdate", start, "-enddate", end]);
        }
        run("openssl", &args, None);
        (cert, key)
    }
}

/// Signs `entity` (a MIME entity) with `openssl smime -sign`; opaque with `-nodetach`.
/// Returns the S/MIME output (MIME headers and body), CRLF.
pub fn smime_sign(dir: &Path, cert: &Path, key: &Path, entity: &[u8], opaque: bool) -> Vec<u8> {
    let input = dir.join("smime-input.eml");
    std::fs::write(&input, entity).expect("input");
    let mut args = vec![
        "smime",
        "-sign",
        "-in",
        path_str(&input),
        "-signer",
        path_str(cert),
        "-inkey",
        path_str(key),
    ];
    if opaque {
        args.push("-nodetach");
    }
    crlf(&run("openssl", &args, None))
}

// ---------------------------------------------------------------------------------------------
// OpenPGP (sq)

/// Generates a key with `sq`; returns (secret key file, certificate file).
pub fn sq_key(dir: &Path, name: &str, userid: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key.pgp"));
    let cert = dir.join(format!("{name}.cert.pgp"));
    run(
        "sq",
        &[
            "key",
            "generate",
            "--userid",
            userid,
            "--export",
            path_str(&key),
        ],
        None,
    );
    let public = run("sq", &["key", "extract-cert", path_str(&key)], None);
    std::fs::write(&cert, public).expect("cert");
    (key, cert)
}

/// A detached, armored signature over `data` by `sq sign --detached`.
pub fn sq_sign_detached(dir: &Path, key: &Path, data: &[u8]) -> Vec<u8> {
    let input = dir.join("pgp-input");
    std::fs::write(&input, data).expect("input");
    run(
        "sq",
        &[
            "sign",
            "--detached",
            "--signer-key",
            path_str(key),
            path_str(&input),
        ],
        None,
    )
}

/// Concatenates certificate files into one keyring file.
pub fn keyring(dir: &Path, certs: &[&Path]) -> PathBuf {
    let path = dir.join("keyring.pgp");
    let mut all = Vec::new();
    for cert in certs {
        all.extend(std::fs::read(cert).expect("cert"));
    }
    std::fs::write(&path, all).expect("keyring");
    path
}

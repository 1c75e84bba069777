//! Any iSchedule POST (headers and body) reaching the receiver: an answer for every input,
//! without a panic or a hang. With the first input byte odd, the harness signs the request with
//! the key the receiver trusts for example.com (exchanged out of band), so that the fuzzer gets
//! past the signature to the iCalendar and iTIP checks and the pipeline; even, the request goes
//! as given (a forger's view: headers, sizes, DKIM-Signature syntax).
#![no_main]
use imipd::config::Config;
use imipd::doors::ischedule::receive::{receive, Request};
use imipd::ischedule::{dkim::SigningKey, Bridge};
use imipd::pipeline::Pipeline;
use std::sync::{Arc, OnceLock};

struct World {
    bridge: Arc<Bridge>,
    pipeline: Arc<Pipeline>,
    key: SigningKey,
    rt: tokio::runtime::Runtime,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("imipd-fuzz-ischedule-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
        let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("pkey");
        let pem = pkey.private_key_to_pem_pkcs8().expect("pem");
        let public = dir.join("example.com.pem");
        std::fs::write(&public, pkey.public_key_to_pem().expect("public")).expect("write");
        let cfg = format!(
            "data_dir = {dir:?}\nlocal_domains = [\"example.org\"]\n\
             [ischedule.private_keys]\n\"example.com:fuzz\" = {public:?}\n",
            dir = dir.display().to_string(),
            public = public.display().to_string(),
        );
        let cfg = Arc::new(Config::parse(&cfg, "fuzz.toml").expect("config"));
        let store = Arc::new(imipd::store::Sled::open(&dir.join("data")).expect("store"));
        World {
            bridge: Arc::new(Bridge::new(cfg.clone()).expect("bridge")),
            pipeline: Arc::new(Pipeline::new(store, cfg)),
            key: SigningKey::from_pem(&pem, "example.com", "fuzz").expect("key"),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let split = rest
        .windows(2)
        .position(|p| p == b"\n\n")
        .unwrap_or(rest.len());
    let head = String::from_utf8_lossy(&rest[..split]);
    let body = rest.get(split + 2..).unwrap_or_default().to_vec();
    let mut headers: Vec<(String, String)> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    if mode & 1 == 1 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if let Ok(sig) = w.key.sign(&headers, &body, now, 300) {
            headers.push(("DKIM-Signature".into(), sig));
        }
    }
    let req = Request {
        headers,
        body,
        peer: None,
    };
    let _ = w
        .rt
        .block_on(receive(w.bridge.clone(), w.pipeline.clone(), req));
});

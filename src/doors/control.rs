//! The local control socket: while `imipd run` holds the store (sled admits one process), the
//! admin commands (`process`, `import`, `export`, `freebusy`) are carried out by the daemon.
//! One JSON line each way: `{"argv":[...],"input":"<base64>"}` ->
//! `{"code":N,"stdout":"<base64>","stderr":"<base64>"}`. The socket is mode 0600.

use crate::cli::{Env, Io};
use crate::config::Config;
use imipd_core::codec::{base64_encode, decode_base64_lenient};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("control.sock")
}

/// Client side: sends the command line to the daemon and copies its output into `io`.
pub fn call(
    sock: &Path,
    argv: &[String],
    input: Option<&[u8]>,
    io: &mut Io,
) -> std::io::Result<i32> {
    call_on(
        std::os::unix::net::UnixStream::connect(sock)?,
        argv,
        input,
        io,
    )
}

/// [`call`] on a connection already made.
pub fn call_on(
    mut s: std::os::unix::net::UnixStream,
    argv: &[String],
    input: Option<&[u8]>,
    io: &mut Io,
) -> std::io::Result<i32> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))?;
    let req = serde_json::json!({"argv": argv, "input": input.map(base64_encode)});
    s.write_all(req.to_string().as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad answer from daemon: {e}"),
        )
    })?;
    io.out
        .extend(decode_b64(v["stdout"].as_str().unwrap_or("")));
    io.err
        .extend(decode_b64(v["stderr"].as_str().unwrap_or("")));
    Ok(v["code"].as_i64().unwrap_or(1) as i32)
}

/// Daemon side: answers one request line.
pub fn answer(line: &str, env: &Env) -> String {
    let mut io = Io::default();
    let code = match serde_json::from_str::<serde_json::Value>(line) {
        Err(e) => {
            io.err
                .extend_from_slice(format!("imipd: bad control request: {e}\n").as_bytes());
            crate::cli::EX_USAGE
        }
        Ok(v) => {
            let argv: Vec<String> = v["argv"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let input = v["input"].as_str().map(decode_b64);
            match crate::cli::parse_args(&argv) {
                Ok(args) if crate::cli::is_admin(&args.command) => {
                    crate::cli::run_admin(&args, env, input, &mut io)
                }
                Ok(args) => {
                    io.err.extend_from_slice(
                        format!("imipd: {} is not an admin command\n", args.command).as_bytes(),
                    );
                    crate::cli::EX_USAGE
                }
                Err(e) => {
                    io.err
                        .extend_from_slice(format!("imipd: {}\n", e.message).as_bytes());
                    e.code
                }
            }
        }
    };
    reply(code, &io)
}

fn reply(code: i32, io: &Io) -> String {
    serde_json::json!({"code": code, "stdout": base64_encode(&io.out), "stderr": base64_encode(&io.err)})
        .to_string()
}

/// How long a client of the control socket may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest request the control socket reads: a message of the doors' size limit, base64
/// encoded, and room for the arguments.
fn request_limit(cfg: &Config) -> usize {
    cfg.lmtp.max_message_size / 3 * 4 + (1 << 20)
}

fn decode_b64(s: &str) -> Vec<u8> {
    decode_base64_lenient(s.as_bytes())
}

/// The daemon side: answers admin commands on the control socket until `shutdown`.
pub async fn serve(
    core: std::sync::Arc<crate::app::Core>,
    l: tokio::net::UnixListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let s = tokio::select! {
            r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let core = core.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
            let st = core.state();
            let (r, mut w) = s.into_split();
            let limit = request_limit(&st.cfg);
            let mut line = String::new();
            let mut reader = BufReader::new(r.take(limit as u64 + 1));
            match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) if line.len() <= limit && line.ends_with('\n') => {}
                Ok(Ok(_)) if line.len() > limit => {
                    let mut io = Io::default();
                    io.err.extend_from_slice(
                        format!("imipd: control request larger than {limit} bytes\n").as_bytes(),
                    );
                    let _ = w
                        .write_all(reply(crate::cli::EX_USAGE, &io).as_bytes())
                        .await;
                    let _ = w.write_all(b"\n").await;
                    return;
                }
                _ => return, // closed, too slow, or not text: no request
            }
            let env = crate::cli::Env {
                cfg: st.cfg.clone(),
                store: core.store.clone(),
                prover: Some(st.prover.clone()),
                bridge: st.bridge.clone(),
            };
            let answer = tokio::task::spawn_blocking(move || crate::control::answer(&line, &env))
                .await
                .unwrap_or_default();
            let _ = w.write_all(answer.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

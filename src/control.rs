//! The local control socket: while `imipd run` holds the store (sled admits one process), the
//! admin commands (`process`, `import`, `export`, `freebusy`) are carried out by the daemon.
//! One JSON line each way: `{"argv":[...],"input":"<base64>"}` ->
//! `{"code":N,"stdout":"<base64>","stderr":"<base64>"}`. The socket is mode 0600.

use crate::cli::{Env, Io};
use crate::config::Config;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

pub fn socket_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("control.sock")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn b64encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn b64decode(s: &str) -> Vec<u8> {
    crate::extract::decode_base64_lenient(s.as_bytes())
}

/// Client side: sends the command line to the daemon and copies its output into `io`.
pub fn call(
    sock: &Path,
    argv: &[String],
    input: Option<&[u8]>,
    io: &mut Io,
) -> std::io::Result<i32> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(300)))?;
    let req = serde_json::json!({"argv": argv, "input": input.map(b64encode)});
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
    io.out.extend(b64decode(v["stdout"].as_str().unwrap_or("")));
    io.err.extend(b64decode(v["stderr"].as_str().unwrap_or("")));
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
            let input = v["input"].as_str().map(b64decode);
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
    serde_json::json!({"code": code, "stdout": b64encode(&io.out), "stderr": b64encode(&io.err)})
        .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trip() {
        for s in [&b""[..], b"a", b"ab", b"abc", b"abcd\xff\x00"] {
            assert_eq!(super::b64decode(&super::b64encode(s)), s);
        }
    }
}

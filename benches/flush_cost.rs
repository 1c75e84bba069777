//! What one durable commit costs in CPU, the store's way and the ways a commit log of imipd's
//! own could take: where the per-message flush of calendar mail goes.
//!
//!   cargo bench --bench flush_cost            (IMIPD_BENCH_COMMITS=3000 by default)
//!
//! Each variant commits the same sled batch (two 600-byte values, about what a calendar
//! message writes) one at a time, single-threaded, and reports the process's CPU time (user +
//! system, every thread: sled's I/O pool included) and the wall time per commit:
//! - `sled flush`: `apply_batch` then `Db::flush`, what the embedded store does;
//! - `append + fdatasync`: `apply_batch` with sled never flushed, the bytes appended to a log
//!   file and `fdatasync`ed (the file grows, so each sync also commits its size);
//! - `preallocated + fdatasync`: the same into a log file whose blocks were written before,
//!   so a sync carries data only;
//! - `no sync`: `apply_batch` alone, the floor.
//!
//! Figures go to BENCHMARKS.md with the machine they were taken on.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

fn cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn sync_data(f: &std::fs::File) {
    // SAFETY: fdatasync on a descriptor this function's caller owns.
    let r = unsafe { libc::fdatasync(f.as_raw_fd()) };
    assert_eq!(r, 0, "fdatasync: {}", std::io::Error::last_os_error());
}

fn main() {
    let n: u32 = std::env::var("IMIPD_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(tmp.path().join("db"))
        .flush_every_ms(None)
        .open()
        .expect("sled");
    let t = db.open_tree("t").expect("tree");
    let value = vec![7u8; 600];
    let commit = |i: u32| {
        let mut b = sled::Batch::default();
        b.insert(&i.to_be_bytes(), value.clone());
        b.insert(&(i | 1 << 31).to_be_bytes(), value.clone());
        t.apply_batch(b).expect("apply");
    };
    // Warm sled's pool and files.
    for i in 0..200 {
        commit(i);
        db.flush().expect("flush");
    }
    let mut appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("log-append"))
        .expect("log");
    let prealloc = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(tmp.path().join("log-prealloc"))
        .expect("log");
    let zeros = vec![0u8; 1 << 20];
    let size = (u64::from(n) * 1200).div_ceil(1 << 20) + 1;
    for i in 0..size {
        prealloc.write_all_at(&zeros, i << 20).expect("preallocate");
    }
    prealloc.sync_all().expect("sync");

    println!("flush cost: {n} commits of two 600-byte values each, one thread");
    let mut offset = 0u64;
    let variants: [(&str, &mut dyn FnMut(u32)); 4] = [
        ("sled flush", &mut |i| {
            commit(i);
            db.flush().expect("flush");
        }),
        ("append + fdatasync", &mut |i| {
            commit(i);
            appended.write_all(&value).expect("append");
            appended.write_all(&value).expect("append");
            sync_data(&appended);
        }),
        ("preallocated + fdatasync", &mut |i| {
            commit(i);
            prealloc.write_all_at(&value, offset).expect("write");
            prealloc.write_all_at(&value, offset + 600).expect("write");
            offset += 1200;
            sync_data(&prealloc);
        }),
        ("no sync", &mut |i| commit(i)),
    ];
    // Interleaved rounds, so that drift (the page cache, sled's own segments) falls on every
    // variant alike; the median round of each is reported.
    const ROUNDS: u32 = 5;
    let per = (n / ROUNDS).max(1);
    let mut times: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut variants = variants;
    let nv = variants.len() as u32;
    for round in 0..ROUNDS {
        for (k, (_, run)) in variants.iter_mut().enumerate() {
            let base = 1_000 + (round * nv + k as u32) * per;
            let (c0, w0) = (cpu(), Instant::now());
            for i in 0..per {
                run(base + i);
            }
            let (c, w) = (cpu() - c0, w0.elapsed());
            times[k].push((
                c.as_secs_f64() * 1e6 / f64::from(per),
                w.as_secs_f64() * 1e6 / f64::from(per),
            ));
        }
    }
    for (k, (name, _)) in variants.iter().enumerate() {
        let mut c: Vec<f64> = times[k].iter().map(|t| t.0).collect();
        let mut w: Vec<f64> = times[k].iter().map(|t| t.1).collect();
        c.sort_by(f64::total_cmp);
        w.sort_by(f64::total_cmp);
        println!(
            "  {name:<26} CPU {:>6.1} us/commit (rounds {:.1}-{:.1})   wall {:>6.1} us/commit",
            c[c.len() / 2],
            c[0],
            c[c.len() - 1],
            w[w.len() / 2]
        );
    }
}

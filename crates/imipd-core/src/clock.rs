//! The wall clock, read in one place. The engine never reads it: a decision gets its `now` in
//! the iTIP `Context`, so the same input always decides the same way.

/// UNIX seconds (0 if the clock is before 1970).
pub fn now() -> i64 {
    now_micros() / 1_000_000
}

/// UNIX microseconds (0 if the clock is before 1970).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

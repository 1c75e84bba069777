//! Link options for the binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=IMIPD_NO_PACKED_RELOCS");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    if os == "linux"
        && env == "gnu"
        && native
        && std::env::var_os("IMIPD_NO_PACKED_RELOCS").is_none()
        && glibc_at_least(2, 36)
    {
        // Relative relocations packed (DT_RELR, glibc 2.36 and later): the dynamic loader
        // reads a few kilobytes of them at start instead of 1.6 MB, which took 1.7 ms off
        // every start of a short command such as `imipd freebusy`. The binary stays
        // position-independent, with full RELRO and immediate binding. Only for a native
        // build on a glibc that has it (the binary would need it where it runs); set
        // IMIPD_NO_PACKED_RELOCS to build without.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least major.minor.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

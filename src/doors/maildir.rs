//! Maildir delivery: written to tmp/, fsynced, renamed into new/, directory fsynced, so that a
//! 250 is only given for a message that survives a crash. Files are 0600 and directories 0700
//! whatever the umask, owned by the configured mail owner (`lmtp.maildir_owner`) when one is
//! set.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Expands `%d` (domain), `%u` (local part), `%a` (whole address), `%%`. Path separators and
/// dot-dot in the address are refused so a recipient cannot escape the template's directory.
pub fn expand_template(template: &str, addr: &str) -> Result<PathBuf, String> {
    let addr = addr.to_ascii_lowercase();
    let (local, domain) = addr
        .rsplit_once('@')
        .ok_or_else(|| format!("{addr:?} has no domain"))?;
    for part in [local, domain] {
        if part.is_empty()
            || part.contains('/')
            || part.contains('\0')
            || part == "."
            || part == ".."
        {
            return Err(format!("{addr:?} cannot be used in a mailbox path"));
        }
    }
    let mut out = String::with_capacity(template.len() + addr.len());
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(domain),
            Some('u') => out.push_str(local),
            Some('a') => out.push_str(&addr),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    Ok(PathBuf::from(out))
}

/// Delivers `data` into the Maildir at `dir` (created if needed), owned by `owner` (uid, gid)
/// when given. Returns the file's path.
pub fn deliver(dir: &Path, data: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if !dir.is_dir() {
        // The mailbox and the parents we create (a new domain's directory, say).
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some((uid, gid)) = owner {
            for m in missing.iter().rev() {
                std::os::unix::fs::chown(m, Some(uid), Some(gid))?;
            }
        }
    }
    for sub in ["tmp", "new", "cur"] {
        let p = dir.join(sub);
        if !p.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&p)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
            }
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', ':'], "_"))
        .unwrap_or_else(|_| "localhost".into());
    let name = format!("{}.{}", crate::outbound::unique_token(), host);
    let tmp = dir.join("tmp").join(&name);
    let dst = dir.join("new").join(&name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    // The mode given to open is masked by the umask; make it exact.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &dst)?;
    std::fs::File::open(dir.join("new"))?.sync_all()?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_refuses_escapes() {
        assert_eq!(
            expand_template("/var/mail/%d/%u", "Bob@Example.org").unwrap(),
            PathBuf::from("/var/mail/example.org/bob")
        );
        assert!(expand_template("/m/%d/%u", "../x@y").is_err());
        assert!(expand_template("/m/%d/%u", "a/b@y").is_err());
        assert!(expand_template("/m/%d/%u", "..@y").is_err());
    }

    /// Files 0600 and directories 0700 even under a permissive umask.
    #[test]
    fn modes_do_not_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("example.org/bob");
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0) };
        let p = deliver(&dir, b"Subject: x\r\n\r\nhi\r\n", None);
        unsafe { libc::umask(old) };
        let p = p.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("new")), 0o700);
    }
}

//! Maildir delivery: written to tmp/, fsynced, renamed into new/, directory fsynced, so that a
//! 250 is only given for a message that survives a crash.

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

/// Delivers `data` into the Maildir at `dir` (created if needed). Returns the file's path.
pub fn deliver(dir: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dir.join(sub))?;
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
        .open(&tmp)?;
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
}

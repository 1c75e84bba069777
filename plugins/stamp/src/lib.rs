//! `stamp`: the smallest plugin that uses both hook points, as an example to copy.
//!
//! ```toml
//! [plugins.stamp]
//! value = "mx1"                          # default "imipd"
//! spool = "/var/lib/imipd/stamp.log"     # required; created 0600
//! ```
//!
//! - Before the commit, every object the decision stores gets `X-IMIPD-SEEN:<value>` on each
//!   of its components (master and overrides): a plugin may change what is stored.
//! - As its effect, each change to a calendar (an object stored or deleted) appends one line to
//!   the spool file: `<uid> TAB <outcome> TAB <stored|deleted> TAB <mailto:user>`. The effect
//!   is carried out after the commit and at least once, so a line may repeat after a crash.

use imipd_core::effects::EffectError;
use imipd_core::ical;
use imipd_core::itip::Decision;
use imipd_core::plugin::{BeforeCommit, Committed, ConfigIssue, ObjectChange, Plugin, PluginError};
use imipd_core::sanitize::clean;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// The property set on stored objects.
pub const PROPERTY: &str = "X-IMIPD-SEEN";

/// The `stamp` plugin as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    value: String,
    spool: PathBuf,
}

impl Stamp {
    /// Reads the `[plugins.stamp]` table: `value` (a string) and `spool` (an absolute path in
    /// an existing directory). Unknown keys are errors, like everywhere in imipd's config.
    pub fn from_table(table: &toml::Table) -> Result<Stamp, ConfigIssue> {
        let mut value = "imipd".to_string();
        let mut spool = None;
        for (key, v) in table {
            match (key.as_str(), v) {
                ("value", toml::Value::String(s)) => value = s.clone(),
                ("spool", toml::Value::String(s)) => spool = Some(PathBuf::from(s)),
                ("value" | "spool", other) => {
                    return Err(ConfigIssue::new(
                        Some(key),
                        format!("expected a string, found {}", other.type_str()),
                    ))
                }
                _ => {
                    return Err(ConfigIssue::new(
                        Some(key),
                        "unknown field, expected `value` or `spool`",
                    ))
                }
            }
        }
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(ConfigIssue::new(
                Some("value"),
                "must be a non-empty string without control characters",
            ));
        }
        let Some(spool) = spool else {
            return Err(ConfigIssue::new(
                Some("spool"),
                "missing: the file that records each calendar change",
            ));
        };
        if !spool.is_absolute() {
            return Err(ConfigIssue::new(
                Some("spool"),
                format!("{} is not an absolute path", spool.display()),
            ));
        }
        match spool.parent() {
            Some(dir) if dir.is_dir() => {}
            _ => {
                return Err(ConfigIssue::new(
                    Some("spool"),
                    format!("the directory of {} does not exist", spool.display()),
                ))
            }
        }
        Ok(Stamp { value, spool })
    }

    /// Stamps the object a decision stores; a decision that changes nothing stays unchanged
    /// (stamping it would rewrite an object the message did not change).
    pub fn stamp(&self, decision: &mut Decision) {
        if let Decision::Applied {
            object: Some(obj),
            changed: true,
            ..
        } = decision
        {
            let value = ical::escape_text(&self.value);
            for c in &mut obj.components {
                c.set(PROPERTY, value.clone());
            }
        }
    }

    /// The spool line for one outcome, if it changed the calendar.
    pub fn line(done: &Committed<'_>) -> Option<String> {
        let change = match done.change {
            ObjectChange::Stored(_) => "stored",
            ObjectChange::Deleted => "deleted",
            ObjectChange::Unchanged => return None,
        };
        // Every field comes from the input: no control character (tab, newline) may pass, so
        // one change is always exactly one line of four fields.
        Some(format!(
            "{}\t{}\t{change}\t{}\n",
            clean(done.uid),
            clean(done.outcome.as_str()),
            clean(&ical::mailto(done.recipient))
        ))
    }
}

impl Plugin for Stamp {
    fn before_commit(&self, hook: &mut BeforeCommit<'_>) -> Result<(), PluginError> {
        self.stamp(hook.decision);
        Ok(())
    }

    fn effects(&self, done: &Committed<'_>) -> Vec<Vec<u8>> {
        Stamp::line(done)
            .map(String::into_bytes)
            .into_iter()
            .collect()
    }

    fn run_effect(&self, payload: &[u8]) -> Result<(), EffectError> {
        // Only what `effects` made is accepted: one line ending in a newline.
        if payload.last() != Some(&b'\n') || payload[..payload.len() - 1].contains(&b'\n') {
            return Err(EffectError {
                message: "stamp: the payload is not one line".into(),
                permanent: true,
            });
        }
        let io_error = |e: std::io::Error| EffectError {
            message: format!("stamp: {}: {e}", self.spool.display()),
            permanent: false,
        };
        // One write of the whole line in append mode: concurrent writers never interleave
        // within a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.spool)
            .map_err(io_error)?;
        f.write_all(payload).map_err(io_error)?;
        f.sync_data().map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imipd_core::ical::Component;
    use imipd_core::itip::StoredObject;
    use std::os::unix::fs::PermissionsExt;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    fn applied(changed: bool) -> Decision {
        let mut ev = Component::new("VEVENT");
        ev.set("UID", "u1");
        Decision::Applied {
            object: Some(StoredObject {
                uid: "u1".into(),
                kind: "VEVENT".into(),
                components: vec![ev.clone(), ev],
                ..Default::default()
            }),
            changed,
            replies: Vec::new(),
            proposal: None,
            summary: "stored".into(),
        }
    }

    fn done<'a>(decision: &'a Decision, uid: &'a str) -> Committed<'a> {
        Committed {
            recipient: "bob@example.org",
            uid,
            method: "REQUEST",
            outcome: decision.outcome(),
            reason: "",
            change: Committed::change_of(decision),
            message_id: None,
            now: 0,
        }
    }

    #[test]
    fn config_needs_an_absolute_spool_in_an_existing_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = format!(
            "spool = \"{}/s.log\"\nvalue = \"mx1\"",
            dir.path().display()
        );
        let s = Stamp::from_table(&table(&ok)).expect("valid");
        assert_eq!(s.value, "mx1");
        let key = |text: &str| Stamp::from_table(&table(text)).unwrap_err().key;
        assert_eq!(key("value = \"x\""), Some("spool".into()));
        assert_eq!(key("spool = \"relative.log\""), Some("spool".into()));
        assert_eq!(key("spool = \"/no/such/dir/s.log\""), Some("spool".into()));
        assert_eq!(key("spool = 3"), Some("spool".into()));
        assert_eq!(key(&format!("{ok}\nspol = \"x\"")), Some("spol".into()));
        let empty_value = format!("spool = \"{}/s.log\"\nvalue = \"\"", dir.path().display());
        assert_eq!(key(&empty_value), Some("value".into()));
    }

    #[test]
    fn stamps_every_component_of_a_changed_object_only() {
        let s = Stamp {
            value: "mx1, east".into(),
            spool: PathBuf::from("/unused"),
        };
        let mut d = applied(true);
        s.stamp(&mut d);
        s.stamp(&mut d);
        let Decision::Applied {
            object: Some(obj), ..
        } = &d
        else {
            panic!("still applied");
        };
        for c in &obj.components {
            let seen: Vec<_> = c.props_named(PROPERTY).map(|p| p.value.as_str()).collect();
            assert_eq!(seen, ["mx1\\, east"], "set once, TEXT-escaped");
        }
        let mut unchanged = applied(false);
        let before = unchanged.clone();
        s.stamp(&mut unchanged);
        assert_eq!(unchanged, before);
    }

    #[test]
    fn one_clean_line_per_calendar_change() {
        let d = applied(true);
        assert_eq!(
            Stamp::line(&done(&d, "a\tb\nc")).as_deref(),
            Some("a b c\tapplied\tstored\tmailto:bob@example.org\n")
        );
        assert_eq!(Stamp::line(&done(&applied(false), "u1")), None);
        let deleted = Decision::Applied {
            object: None,
            changed: true,
            replies: Vec::new(),
            proposal: None,
            summary: String::new(),
        };
        assert!(Stamp::line(&done(&deleted, "u1"))
            .unwrap()
            .contains("\tdeleted\t"));
    }

    #[test]
    fn effect_appends_to_a_private_spool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("s.log");
        let s = Stamp {
            value: "x".into(),
            spool: spool.clone(),
        };
        let d = applied(true);
        for payload in s.effects(&done(&d, "u1")) {
            s.run_effect(&payload).expect("first");
            s.run_effect(&payload).expect("again: at least once");
        }
        let text = std::fs::read_to_string(&spool).expect("spool");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.starts_with("u1\tapplied\tstored\t"));
        let mode = std::fs::metadata(&spool)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bad = s.run_effect(b"two\nlines\n").unwrap_err();
        assert!(bad.permanent);
        let missing = Stamp {
            value: "x".into(),
            spool: dir.path().join("gone/s.log"),
        };
        assert!(!missing.run_effect(b"u1\n").unwrap_err().permanent);
    }
}

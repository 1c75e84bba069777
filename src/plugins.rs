//! The plugins this imipd links, by the name of their `[plugins.NAME]` config section, and the
//! set a config enables. The trait and the hook points are [`imipd_core::plugin`]'s; this
//! module only builds plugins from config and calls them in order.

use imipd_core::effects::{Effect, EffectError, EffectKind};
use imipd_core::plugin::{BeforeCommit, Committed, ConfigIssue, Plugin};
use imipd_core::store::StoreError;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Builds a plugin from its own config table.
type Constructor = fn(&toml::Table) -> Result<Arc<dyn Plugin>, ConfigIssue>;

/// Every plugin linked in, in the order their hooks run (a plugin that changes objects comes
/// before one that only looks at them). To add one: a crate under `plugins/`, a dependency in
/// Cargo.toml, a line here.
const REGISTRY: &[(&str, Constructor)] = &[("stamp", |t| {
    Ok(Arc::new(imipd_plugin_stamp::Stamp::from_table(t)?))
})];

/// The names a `[plugins.NAME]` section may have.
pub fn known() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(name, _)| *name)
}

/// A config error in the `plugins` table: the dotted key (`plugins.NAME` or
/// `plugins.NAME.KEY`) and what is wrong.
#[derive(Debug)]
pub struct LoadError {
    pub key: String,
    /// Whether `key` names a whole table (reported at its header line).
    pub table: bool,
    pub message: String,
}

/// The plugins a config enables, built once when the config is read.
#[derive(Clone, Default)]
pub struct Plugins {
    enabled: Arc<Vec<(&'static str, Arc<dyn Plugin>)>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// What the plugins left for one decision's commit.
#[derive(Debug, Default)]
pub struct Hooked {
    /// To be committed with the decision.
    pub effects: Vec<Effect>,
    /// The calendar's version when some plugin first read it: the commit then goes against
    /// the calendar's version, not only the object's (`None`: no plugin read it).
    pub calendar_read: Option<u64>,
}

impl Plugins {
    /// Builds each plugin from its table; an unknown name is an error naming it.
    pub fn load(tables: &BTreeMap<String, toml::Table>) -> Result<Plugins, LoadError> {
        if let Some(name) = tables.keys().find(|n| !known().any(|k| k == n.as_str())) {
            return Err(LoadError {
                key: format!("plugins.{name}"),
                table: true,
                message: format!(
                    "no plugin {name:?} in this imipd (it has: {})",
                    known().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let mut enabled = Vec::new();
        for (name, make) in REGISTRY {
            let Some(table) = tables.get(*name) else {
                continue;
            };
            let plugin = make(table).map_err(|issue| LoadError {
                key: match &issue.key {
                    Some(k) => format!("plugins.{name}.{k}"),
                    None => format!("plugins.{name}"),
                },
                table: issue.key.is_none(),
                message: issue.message,
            })?;
            enabled.push((*name, plugin));
        }
        Ok(Plugins {
            enabled: Arc::new(enabled),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.enabled.is_empty()
    }

    /// The enabled plugins' names, in hook order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.enabled.iter().map(|(n, _)| *n)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.enabled
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
    }

    /// Runs every plugin's `before_commit` on `hook`, in order, then collects the effects of
    /// the final decision (none when a plugin turned it into a rejection: nothing of it is
    /// committed). A plugin's error comes back as a store error: the message is retried.
    /// `host` names this host in effect ids (asked only when there are effects).
    pub fn before_commit(
        &self,
        mut hook: BeforeCommit<'_>,
        host: &dyn Fn() -> String,
    ) -> Result<Hooked, StoreError> {
        for (name, plugin) in self.enabled.iter() {
            plugin.before_commit(&mut hook).map_err(|e| {
                StoreError::Io(format!(
                    "plugin {name}: {}",
                    crate::sanitize::clean(&e.message)
                ))
            })?;
        }
        let mut out = Hooked {
            calendar_read: hook.calendar.read_version(),
            ..Default::default()
        };
        let decision = &*hook.decision;
        if matches!(decision, imipd_core::itip::Decision::Rejected(_)) {
            return Ok(out);
        }
        let reason = decision.reason();
        let done = Committed {
            recipient: hook.recipient,
            uid: &hook.incoming.uid,
            method: hook.incoming.method.as_str(),
            outcome: decision.outcome(),
            reason: &reason,
            change: Committed::change_of(decision),
            message_id: hook.message_id,
            now: hook.now,
        };
        let mut host_name = None;
        for (name, plugin) in self.enabled.iter() {
            for payload in plugin.effects(&done) {
                let host = host_name.get_or_insert_with(host);
                out.effects.push(Effect::new(
                    EffectKind::Plugin(name.to_string()),
                    hook.recipient,
                    &hook.incoming.uid,
                    payload,
                    host,
                ));
            }
        }
        Ok(out)
    }

    /// Carries out one effect of kind `Plugin(NAME)` with the named plugin's handler (for the
    /// effects runner). An effect for a plugin no longer enabled is kept for retry: the admin
    /// may have disabled it for a while.
    pub fn run_effect(&self, effect: &Effect) -> Result<(), EffectError> {
        let EffectKind::Plugin(name) = &effect.kind else {
            return Err(EffectError {
                message: "not a plugin effect".into(),
                permanent: true,
            });
        };
        match self.get(name) {
            Some(p) => p.run_effect(&effect.payload),
            None => Err(EffectError {
                message: format!(
                    "plugin {:?} is not enabled ([plugins.{0}])",
                    crate::sanitize::clean(name)
                ),
                permanent: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(text: &str) -> BTreeMap<String, toml::Table> {
        let t: toml::Table = text.parse().expect("toml");
        t.into_iter()
            .map(|(k, v)| match v {
                toml::Value::Table(t) => (k, t),
                _ => panic!("not a table"),
            })
            .collect()
    }

    #[test]
    fn unknown_plugin_is_named() {
        let e = Plugins::load(&tables("[nosuch]\n")).unwrap_err();
        assert_eq!(e.key, "plugins.nosuch");
        assert!(e.table && e.message.contains("stamp"), "{}", e.message);
    }

    #[test]
    fn a_plugin_error_names_its_key() {
        let e = Plugins::load(&tables("[stamp]\nvalue = \"x\"\n")).unwrap_err();
        assert_eq!(e.key, "plugins.stamp.spool");
        assert!(!e.table);
    }

    #[test]
    fn nothing_configured_enables_nothing() {
        let p = Plugins::load(&BTreeMap::new()).expect("empty");
        assert!(p.is_empty());
        let e = Effect::new(
            EffectKind::Plugin("stamp".into()),
            "u@example.org",
            "1",
            Vec::new(),
            "h",
        );
        assert!(!p.run_effect(&e).unwrap_err().permanent);
    }
}

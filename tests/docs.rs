//! The manual pages and the example configuration against the code: every command and option
//! of the CLI's dispatch table is in imipd(8), every key of the config types (a default
//! `Config` serialized, every table walked) is in imipd.toml(5) and the example, and the
//! example's values are the defaults it claims they are.

use imipd::cli::{COMMANDS, GLOBAL_SYNOPSIS};
use imipd::config::Config;
use serde_json::Value;
use std::collections::BTreeSet;

fn contrib(path: &str) -> String {
    let p = format!("{}/contrib/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// roff text with the font and hyphen escapes removed.
fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\e", "\\")
}

/// The lines of the `.SH name` section (without its heading).
fn section<'a>(roff: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in roff.lines() {
        if let Some(h) = l.strip_prefix(".SH ") {
            inside = h.trim().trim_matches('"') == name;
            continue;
        }
        if inside {
            out.push(l);
        }
    }
    out
}

/// The names a section defines with `.TP` / `.B name`.
fn defined(lines: &[&str]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(".B "))
        .map(|n| plain(n).trim().to_string())
        .collect()
}

/// Every `--option` of a synopsis.
fn options(synopsis: &str) -> Vec<String> {
    synopsis
        .split(|c: char| c.is_whitespace() || "[]|.".contains(c))
        .filter(|w| w.starts_with("--"))
        .map(str::to_string)
        .collect()
}

#[test]
fn imipd_8_has_every_command_and_option() {
    let man = contrib("man/imipd.8");
    assert!(COMMANDS.len() >= 10, "the dispatch table is the source");
    let commands = defined(&section(&man, "COMMANDS"));
    let synopsis = section(&man, "SYNOPSIS");
    let mut missing = Vec::new();
    for c in COMMANDS {
        if !commands.contains(c.name) {
            missing.push(format!("command {} (COMMANDS)", c.name));
        }
        let bold = format!("\\fB{}\\fR", c.name.replace('-', "\\-"));
        match synopsis.iter().find(|l| l.contains(&bold)) {
            None => missing.push(format!("command {} (SYNOPSIS)", c.name)),
            Some(line) => {
                let line = plain(line);
                for o in options(c.synopsis) {
                    if !line.contains(&o) {
                        missing.push(format!("{} {o} (SYNOPSIS)", c.name));
                    }
                }
            }
        }
    }
    let text = plain(&man);
    for o in options(GLOBAL_SYNOPSIS)
        .into_iter()
        .chain(["--version".to_string(), "--help".to_string()])
    {
        if !section(&man, "OPTIONS")
            .iter()
            .any(|l| plain(l).contains(&o))
        {
            missing.push(format!("option {o} (OPTIONS)"));
        }
    }
    assert!(text.contains("imipd"), "not the page");
    assert!(missing.is_empty(), "imipd(8) lacks: {missing:#?}");
}

/// Every key of the config types as (table, key): a default `Config` serialized to JSON (which
/// keeps unset options as null), tables walked; a table of user-chosen names (a map) is a key
/// of its parent.
fn config_keys() -> Vec<(String, String)> {
    fn walk(table: &str, v: &serde_json::Map<String, Value>, out: &mut Vec<(String, String)>) {
        for (k, val) in v {
            match val {
                Value::Object(m) if !m.is_empty() => {
                    let t = if table.is_empty() {
                        k.clone()
                    } else {
                        format!("{table}.{k}")
                    };
                    walk(&t, m, out);
                }
                _ => out.push((table.to_string(), k.clone())),
            }
        }
    }
    let v = serde_json::to_value(Config::default()).expect("serialize");
    let Value::Object(m) = v else {
        panic!("not a table")
    };
    let mut out = Vec::new();
    walk("", &m, &mut out);
    out
}

#[test]
fn imipd_toml_5_has_every_key() {
    let man = contrib("man/imipd.toml.5");
    let keys = config_keys();
    assert!(keys.len() > 40, "{keys:?}");
    assert!(keys.contains(&("lmtp".into(), "deliver".into())));
    assert!(keys.contains(&("ischedule".into(), "private_keys".into())));
    assert!(keys.contains(&("journal".into(), "keep_days".into())));
    let mut missing = Vec::new();
    for (table, key) in &keys {
        let name = if table.is_empty() {
            "TOP-LEVEL KEYS".to_string()
        } else {
            format!("[{table}]")
        };
        if !defined(&section(&man, &name)).contains(key) {
            missing.push(format!("{name} {key}"));
        }
    }
    assert!(missing.is_empty(), "imipd.toml(5) lacks: {missing:#?}");
}

/// The example's lines as (table, key, line), commented-out keys included.
fn example_keys(text: &str) -> Vec<(String, String, String)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            // A table of user-chosen names is a key of its parent.
            if let Some((parent, key)) = table.rsplit_once('.') {
                out.push((parent.to_string(), key.to_string(), line.to_string()));
            }
            continue;
        }
        let t = t.trim_start_matches('#').trim();
        if let Some((k, _)) = t.split_once('=') {
            let k = k.trim();
            if !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                out.push((table.clone(), k.to_string(), line.to_string()));
            }
        }
    }
    out
}

#[test]
fn example_config_has_every_key() {
    let text = contrib("imipd.toml.example");
    let have: BTreeSet<(String, String)> = example_keys(&text)
        .into_iter()
        .map(|(t, k, _)| (t, k))
        .collect();
    let missing: Vec<_> = config_keys()
        .into_iter()
        .filter(|k| !have.contains(k))
        .collect();
    assert!(missing.is_empty(), "imipd.toml.example lacks: {missing:#?}");
}

/// "the value shown is the default": every key set in the example equals the built-in default,
/// except on lines marked "not the default".
#[test]
fn example_config_values_are_the_defaults() {
    let text = contrib("imipd.toml.example");
    let parsed: toml::Value = toml::from_str(&text).expect("example parses");
    let example = serde_json::to_value(parsed).expect("json");
    let defaults = serde_json::to_value(Config::default()).expect("json");
    let marked: BTreeSet<(String, String)> = example_keys(&text)
        .into_iter()
        .filter(|(_, _, l)| l.contains("not the default"))
        .map(|(t, k, _)| (t, k))
        .collect();
    assert!(!marked.is_empty());
    let mut wrong = Vec::new();
    fn get<'a>(v: &'a Value, table: &str) -> Option<&'a Value> {
        table
            .split('.')
            .filter(|p| !p.is_empty())
            .try_fold(v, |v, p| v.get(p))
    }
    for (table, key, line) in example_keys(&text) {
        if line.trim_start().starts_with('#') || marked.contains(&(table.clone(), key.clone())) {
            continue;
        }
        let Some(shown) = get(&example, &table).and_then(|t| t.get(&key)) else {
            continue;
        };
        let default = get(&defaults, &table).and_then(|t| t.get(&key));
        if default != Some(shown) {
            wrong.push(format!(
                "[{table}] {key} = {shown} but the default is {default:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

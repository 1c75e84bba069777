//! In-process iTIP transcripts: the engine (`itip::decide`) over an in-memory store, driven by the
//! text files in `tests/itip/`, one file per RFC 5546 section or peer-test family. Every step
//! names its source (an `@` line: RFC section, peer test); the scenarios are restated in this
//! project's own words and data.
//!
//! Format (one command per line starting with `> `; an iCalendar body follows `store` and
//! `deliver` and runs from BEGIN:VCALENDAR to END:VCALENDAR; `#` lines are comments):
//!
//! ```text
//! @ RFC 5546 3.2.3; sabre/vobject BrokerProcessReplyTest::testReplyNewException
//! > config delegate PRINCIPAL DELEGATE      [policy] delegates entry for later steps
//! > store USER                              replace USER's objects with those of the body
//! > deliver from=ADDR to=USER [proven=A,B|none]   run the engine (proven defaults to from)
//! > outcome applied|ignored|rejected [TEXT]  outcome of the last deliver (reason contains TEXT)
//! > partstat USER UID RID|- ADDR VALUE|none  PARTSTAT of ADDR in that component
//! > has USER UID RID|- TEXT / > lacks ...    the component's text contains TEXT (or not)
//! > components USER UID N / > absent USER UID
//! > reply METHOD TO / > replies N            messages the last decision asked to send
//! > busy USER UID N                          busy periods USER has because of UID
//! ```

use imipd::ical::{self, Component};
use imipd::itip::{self, Context, Decision, StoredObject};
use std::collections::HashMap;

type Store = HashMap<(String, String), StoredObject>;

struct Runner {
    file: &'static str,
    store: Store,
    delegates: HashMap<String, Vec<String>>,
    last: Option<Decision>,
    source: Option<String>,
    steps: usize,
    checks_since_deliver: usize,
}

fn body_after(lines: &[&str], i: &mut usize) -> String {
    let mut out = String::new();
    let mut inside = false;
    while *i < lines.len() {
        let l = lines[*i];
        if !inside && (l.starts_with("> ") || l.starts_with("@ ")) {
            break;
        }
        if l.trim().eq_ignore_ascii_case("BEGIN:VCALENDAR") {
            inside = true;
        }
        if inside {
            out.push_str(l);
            out.push_str("\r\n");
        }
        if l.trim().eq_ignore_ascii_case("END:VCALENDAR") {
            inside = false;
        }
        *i += 1;
    }
    out
}

/// Groups every component of the body by UID, as `imipd import` stores them.
fn objects_of(body: &str) -> Vec<StoredObject> {
    let cals = ical::parse(body).expect("store body parses");
    let mut out: Vec<StoredObject> = Vec::new();
    for cal in cals {
        let tzs: Vec<Component> = cal.subs_named("VTIMEZONE").cloned().collect();
        for c in cal.subs.iter().filter(|c| c.name != "VTIMEZONE") {
            let uid = c.uid().expect("stored component has a UID").to_string();
            match out.iter_mut().find(|o| o.uid == uid) {
                Some(o) => o.components.push(c.clone()),
                None => out.push(StoredObject {
                    uid,
                    kind: c.name.clone(),
                    components: vec![c.clone()],
                    timezones: tzs.clone(),
                    reply_stamps: Default::default(),
                }),
            }
        }
    }
    out
}

fn kv<'a>(args: &[&'a str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Runner {
    fn at(&self, line: usize) -> String {
        format!("{}:{}", self.file, line + 1)
    }

    fn object(&self, user: &str, uid: &str) -> Option<&StoredObject> {
        self.store.get(&(ical::norm_addr(user), uid.to_string()))
    }

    /// The component with that RECURRENCE-ID value (`-`: the master), unfolded as text.
    fn component(&self, at: &str, user: &str, uid: &str, rid: &str) -> String {
        let obj = self
            .object(user, uid)
            .unwrap_or_else(|| panic!("{at}: {user} has no object {uid}"));
        let c = obj
            .components
            .iter()
            .find(|c| match c.prop("RECURRENCE-ID") {
                None => rid == "-",
                Some(p) => p.value.trim() == rid,
            })
            .unwrap_or_else(|| panic!("{at}: {uid} has no component {rid}: {obj:#?}"));
        c.to_ical().replace("\r\n ", "")
    }

    fn deliver(&mut self, at: &str, args: &[&str], body: &str) {
        let source = self
            .source
            .take()
            .unwrap_or_else(|| panic!("{at}: a deliver step needs an `@ source` line first"));
        assert!(!source.trim().is_empty(), "{at}: empty source");
        if self.steps > 0 {
            assert!(
                self.checks_since_deliver > 0,
                "{at}: the previous step checked nothing"
            );
        }
        self.steps += 1;
        self.checks_since_deliver = 0;
        let from = kv(args, "from").unwrap_or_else(|| panic!("{at}: deliver needs from="));
        let to = ical::norm_addr(kv(args, "to").unwrap_or_else(|| panic!("{at}: needs to=")));
        let proven: Vec<String> = match kv(args, "proven") {
            Some("none") => vec![],
            Some(list) => list.split(',').map(ical::norm_addr).collect(),
            None => vec![ical::norm_addr(from)],
        };
        let ex = imipd::extract::calendar_objects(body, None);
        assert_eq!(
            ex.objects.len(),
            1,
            "{at}: a step delivers one object: {:?}",
            ex.refused.iter().map(|r| &r.reason).collect::<Vec<_>>()
        );
        let inc = &ex.objects[0];
        let ctx = Context {
            recipient: &to,
            proven: &proven,
            delegates: &self.delegates,
            delete_on_cancel: false,
            now: 1_767_225_600, // 2026-01-01T00:00:00Z
        };
        let key = (to.clone(), inc.uid.clone());
        let d = itip::decide(self.store.get(&key), inc, &ctx);
        if let Decision::Applied {
            object, changed, ..
        } = &d
        {
            match (object, changed) {
                (Some(o), true) => {
                    self.store.insert(key, o.clone());
                }
                (None, true) => {
                    self.store.remove(&key);
                }
                _ => {}
            }
        }
        self.last = Some(d);
    }

    fn check(&mut self, at: &str, cmd: &str, args: &[&str], rest: &str) {
        self.checks_since_deliver += 1;
        match cmd {
            "outcome" => {
                let d = self
                    .last
                    .as_ref()
                    .unwrap_or_else(|| panic!("{at}: no deliver yet"));
                assert_eq!(
                    d.outcome().as_str(),
                    args[0],
                    "{at}: reason: {}",
                    d.reason()
                );
                let text = rest.splitn(3, ' ').nth(2).unwrap_or("").trim();
                assert!(
                    d.reason().contains(text),
                    "{at}: reason {:?} lacks {text:?}",
                    d.reason()
                );
            }
            "partstat" => {
                let c = self.component(at, args[0], args[1], args[2]);
                let want = args[4];
                let line = c.lines().find(|l| {
                    l.starts_with("ATTENDEE")
                        && l.rsplit_once(':').map(|(_, v)| ical::norm_addr(v))
                            == Some(ical::norm_addr(args[3]))
                });
                let got = line.map(|l| {
                    l.split([';', ':'])
                        .find_map(|p| p.strip_prefix("PARTSTAT="))
                        .unwrap_or("NEEDS-ACTION")
                        .to_string()
                });
                match want {
                    "none" => assert!(line.is_none(), "{at}: {} is an attendee: {c}", args[3]),
                    w => assert_eq!(got.as_deref(), Some(w), "{at}: {c}"),
                }
            }
            "has" | "lacks" => {
                let c = self.component(at, args[0], args[1], args[2]);
                let text = rest.splitn(5, ' ').nth(4).unwrap_or("").trim();
                assert!(!text.is_empty(), "{at}: nothing to look for");
                assert_eq!(c.contains(text), cmd == "has", "{at}: {text:?} in\n{c}");
            }
            "components" => {
                let n: usize = args[2].parse().expect("count");
                let obj = self
                    .object(args[0], args[1])
                    .unwrap_or_else(|| panic!("{at}: no object"));
                assert_eq!(obj.components.len(), n, "{at}: {obj:#?}");
            }
            "absent" => assert!(self.object(args[0], args[1]).is_none(), "{at}: stored"),
            "reply" | "replies" => {
                let replies = match self.last.as_ref() {
                    Some(Decision::Applied { replies, .. })
                    | Some(Decision::IgnoredWithReply(_, replies)) => replies.clone(),
                    _ => vec![],
                };
                if cmd == "replies" {
                    assert_eq!(replies.len(), args[0].parse::<usize>().expect("n"), "{at}");
                } else {
                    let to = ical::norm_addr(args[1]);
                    assert!(
                        replies
                            .iter()
                            .any(|r| r.method.as_str() == args[0] && ical::norm_addr(&r.to) == to),
                        "{at}: no {} to {to}: {:?}",
                        args[0],
                        replies
                            .iter()
                            .map(|r| (r.method, &r.to))
                            .collect::<Vec<_>>()
                    );
                }
            }
            "busy" => {
                let obj = self
                    .object(args[0], args[1])
                    .unwrap_or_else(|| panic!("{at}: no object"));
                let n: usize = args[2].parse().expect("count");
                let busy = itip::busy_periods(obj, &ical::norm_addr(args[0]), 1000);
                assert_eq!(busy.len(), n, "{at}: {busy:?}");
            }
            other => panic!("{at}: unknown command {other}"),
        }
    }

    fn run(file: &'static str, text: &str) -> usize {
        let mut r = Runner {
            file,
            store: HashMap::new(),
            delegates: HashMap::new(),
            last: None,
            source: None,
            steps: 0,
            checks_since_deliver: 0,
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut failures: Vec<String> = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let at = r.at(i);
            i += 1;
            if let Some(src) = line.strip_prefix("@ ") {
                r.source = Some(src.to_string());
                continue;
            }
            let Some(cmd_line) = line.strip_prefix("> ") else {
                assert!(
                    line.trim().is_empty() || line.starts_with('#'),
                    "{at}: stray line {line:?}"
                );
                continue;
            };
            let args: Vec<&str> = cmd_line.split_whitespace().collect();
            match args[0] {
                "store" => {
                    let user = ical::norm_addr(args[1]);
                    let body = body_after(&lines, &mut i);
                    for o in objects_of(&body) {
                        r.store.insert((user.clone(), o.uid.clone()), o);
                    }
                }
                "deliver" => {
                    let body = body_after(&lines, &mut i);
                    r.deliver(&at, &args[1..], &body);
                }
                "config" => {
                    assert_eq!(args[1], "delegate", "{at}");
                    r.delegates
                        .entry(ical::norm_addr(args[2]))
                        .or_default()
                        .push(ical::norm_addr(args[3]));
                }
                cmd => {
                    // Every failing check is reported, not only the first.
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        r.check(&at, cmd, &args[1..], cmd_line)
                    }));
                    if let Err(e) = run {
                        r.checks_since_deliver += 1;
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures.push(msg);
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{file}: {} failed check(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(r.steps > 0, "{file}: no steps");
        assert!(
            r.checks_since_deliver > 0,
            "{file}: the last step checked nothing"
        );
        r.steps
    }
}

macro_rules! transcripts {
    ($($name:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $name() {
                let n = Runner::run($file, include_str!(concat!("itip/", $file)));
                eprintln!("{}: {n} steps", $file);
            }
        )*

        /// The whole layer keeps its breadth.
        #[test]
        fn transcripts_have_breadth() {
            let total: usize = [$(Runner::run($file, include_str!(concat!("itip/", $file)))),*]
                .iter()
                .sum();
            assert!(total >= 30, "only {total} steps");
        }
    };
}

transcripts! {
    rfc5546_2_1_5_instance_ordering => "rfc5546-2.1.5-instance-ordering.txt",
    rfc5546_3_2_2_request_partstat => "rfc5546-3.2.2-request-partstat.txt",
    rfc5546_3_2_2_removed_attendee => "rfc5546-3.2.2-removed-attendee.txt",
    rfc5546_3_2_3_reply_instances => "rfc5546-3.2.3-reply-instances.txt",
    rfc5546_3_2_6_refresh => "rfc5546-3.2.6-refresh.txt",
    rfc5545_3_2_18_sent_by_and_delegation => "rfc5545-3.2.18-sent-by-delegation.txt",
    rfc3986_addresses => "rfc3986-addresses.txt",
}

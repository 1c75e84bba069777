//! `imipd run`: the daemon. Starts the front doors the config enables (milter, LMTP), the
//! control socket for the admin commands, and the effects runner (iMIP replies, iSchedule
//! relays, plugin effects, all committed with the decisions that caused them). SIGTERM/SIGINT finish
//! in-flight work and stop; SIGHUP reloads the configuration.

use crate::cli::{load_config, Args, CliError, Env, EX_CONFIG, EX_IOERR, EX_TEMPFAIL};
use crate::config::{parse_listen, Config, Deliver, Listen};
use crate::ical;
use crate::itip::Outcome;
use crate::milter::{self, Envelope, EomActions, Verdict as MilterVerdict};
use crate::pipeline::{Delivery, Pipeline, Verdict};
use crate::proof::{Facts, Proof, Prover};
use crate::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};

/// Shared state of the running daemon.
pub struct Core {
    store: Arc<dyn Store>,
    state: RwLock<State>,
    /// Wakes the effects runner: a commit added effects.
    effects_wakeup: Arc<Notify>,
    inflight: AtomicUsize,
    config_path: Option<std::path::PathBuf>,
    data_dir: std::path::PathBuf,
}

#[derive(Clone)]
struct State {
    cfg: Arc<Config>,
    pipeline: Arc<Pipeline>,
    prover: Arc<Prover>,
    /// iSchedule, when the config enables the receiver or the sender.
    bridge: Option<Arc<crate::ischedule::Bridge>>,
    /// The effects runner's handlers for this configuration.
    effects: Arc<crate::effects::runner::Registry>,
}

/// One log line on stderr; control characters from the input never split or forge a line.
/// Object outcomes logged one per line for one message; the rest are summarized.
const MAX_LOGGED_OUTCOMES: usize = 20;

fn log(msg: impl AsRef<str>) {
    eprintln!("imipd: {}", crate::sanitize::clean(msg.as_ref()));
}

impl Core {
    fn state(&self) -> State {
        self.state
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn build_state(
        store: Arc<dyn Store>,
        cfg: Config,
        wake: &Arc<Notify>,
    ) -> Result<State, String> {
        let cfg = Arc::new(cfg);
        let prover = Arc::new(Prover::new(&crate::config::auth_config(&cfg)?)?);
        let bridge = if cfg.ischedule.listen.is_some() || cfg.ischedule.sends() {
            Some(Arc::new(crate::ischedule::Bridge::new(cfg.clone())?))
        } else {
            None
        };
        let pipeline = Arc::new(Pipeline::new(store, cfg.clone()).waking(wake.clone()));
        // iMIP through [outbound] transport (none: replies wait in the store); iSchedule
        // relays when a bridge exists. Plugins with effects register their handler here too.
        let mut effects = crate::effects::runner::Registry::for_config(&cfg, None)?;
        if let Some(bridge) = &bridge {
            effects.register(
                &imipd_core::effects::EffectKind::Ischedule,
                Arc::new(crate::effects::relay::Handler {
                    bridge: bridge.clone(),
                    pipeline: pipeline.clone(),
                    wake: wake.clone(),
                }),
            );
        }
        Ok(State {
            pipeline,
            cfg,
            prover,
            bridge,
            effects: Arc::new(effects),
        })
    }

    fn reload(&self) {
        let Some(path) = &self.config_path else {
            log("SIGHUP: no config file to reload (running on built-in defaults)");
            return;
        };
        match Config::load(path) {
            Ok(mut cfg) => {
                cfg.data_dir = self.data_dir.clone();
                match Core::build_state(self.store.clone(), cfg, &self.effects_wakeup) {
                    Ok(st) => {
                        if let Ok(mut s) = self.state.write() {
                            *s = st;
                        }
                        log(format!(
                            "configuration reloaded from {} (listen addresses change on restart)",
                            path.display()
                        ));
                    }
                    Err(e) => log(format!("reload failed, keeping the old configuration: {e}")),
                }
            }
            Err(e) => log(format!("reload failed, keeping the old configuration: {e}")),
        }
    }

    /// Runs the pipeline (sender proof included: DKIM, S/MIME and PGP work stays off the async
    /// workers) in a blocking thread and makes the result durable.
    async fn run_pipeline(
        &self,
        st: &State,
        raw: Arc<Vec<u8>>,
        recipients: Vec<String>,
        facts: Facts,
        queue_id: Option<String>,
    ) -> Result<Verdict, String> {
        let pipeline = st.pipeline.clone();
        let prover = st.prover.clone();
        let store = self.store.clone();
        let res = tokio::task::spawn_blocking(move || {
            let d = Delivery {
                raw: &raw,
                recipients,
                queue_id,
                trust: crate::pipeline::Trust::Verify(&prover, facts),
            };
            let v = pipeline.process(&d).map_err(|e| e.to_string())?;
            if !v.outcomes.is_empty() {
                crate::metrics::commit(|| store.flush()).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(v)
        })
        .await
        .map_err(|e| format!("pipeline task failed: {e}"))??;
        Ok(res)
    }

    /// Logs the effects a verdict committed and wakes the runner for them.
    fn effects_committed(&self, door: &str, queue_id: Option<&str>, v: &Verdict) {
        for e in &v.effects {
            let to = crate::outbound::Outgoing::from_effect(e)
                .map(|m| format!(" to={}", m.to))
                .unwrap_or_default();
            log(format!(
                "{door}: queue_id={} effect={} id={} user={} uid={}{to} committed",
                queue_id.unwrap_or("-"),
                e.kind.name(),
                e.id,
                e.user,
                e.uid
            ));
        }
        if !v.effects.is_empty() {
            self.effects_wakeup.notify_one();
        }
    }

    fn log_verdict_debug(st: &State, door: &str, v: &Verdict, proof: &Proof) {
        if st.cfg.log.level == "debug" {
            log(format!(
                "{door}: msgid={} Authentication-Results: {}",
                v.message_id.as_deref().unwrap_or("-"),
                proof.results
            ));
            for n in &v.notes {
                log(format!(
                    "{door}: msgid={} note: {n}",
                    v.message_id.as_deref().unwrap_or("-")
                ));
            }
        }
    }

    fn log_verdict(door: &str, queue_id: Option<&str>, v: &Verdict) {
        for line in verdict_log_lines(door, queue_id, v) {
            log(line);
        }
    }
}

/// The log lines of one message's verdict: one per object decided for the first
/// [`MAX_LOGGED_OUTCOMES`], the rest in one summary line (a message naming a thousand recipients
/// must not write a thousand lines; `imipd journal` keeps them all).
fn verdict_log_lines(door: &str, queue_id: Option<&str>, v: &Verdict) -> Vec<String> {
    let queue_id = queue_id.unwrap_or("-");
    let msgid = v.message_id.as_deref().unwrap_or("-");
    let mut lines: Vec<String> = v
        .outcomes
        .iter()
        .take(MAX_LOGGED_OUTCOMES)
        .map(|o| {
            format!(
                "{door}: queue_id={queue_id} msgid={msgid} rcpt={} uid={} method={} outcome={} reason={}",
                ical::norm_addr(&o.recipient),
                if o.uid.is_empty() { "-" } else { &o.uid },
                o.method,
                o.outcome,
                o.reason
            )
        })
        .collect();
    if let Some(rest) = v
        .outcomes
        .get(MAX_LOGGED_OUTCOMES..)
        .filter(|r| !r.is_empty())
    {
        let count = |what: Outcome| rest.iter().filter(|o| o.outcome == what).count();
        lines.push(format!(
            "{door}: queue_id={queue_id} msgid={msgid} {} more objects not logged one by one: \
             {} applied, {} ignored, {} rejected (see imipd journal)",
            rest.len(),
            count(Outcome::Applied),
            count(Outcome::Ignored),
            count(Outcome::Rejected)
        ));
    }
    lines
}

/// The queue id the MTA wrote in the newest Received header ("... with ESMTP id 4Xyz...;").
fn queue_id_from_received(raw: &[u8]) -> Option<String> {
    let first = crate::proof::header_values(raw, "Received")
        .into_iter()
        .next()?;
    let mut words = first.split_whitespace();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case("id") {
            let id = words.next()?.trim_end_matches(';');
            if !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Some(id.to_string());
            }
            return None;
        }
    }
    None
}

fn strip_angle(a: &str) -> String {
    ical::norm_addr(a.trim().trim_start_matches('<').trim_end_matches('>'))
}

/// The header that says what imipd did, per recipient. Recipients not named in To/Cc are not
/// named in the header either (no Bcc leak).
fn result_header(v: &Verdict, visible: &[String]) -> String {
    if v.outcomes.is_empty() {
        return "no calendar object applied".into();
    }
    let mut value = v
        .outcomes
        .iter()
        .map(|o| {
            let r = ical::norm_addr(&o.recipient);
            let who = if visible.contains(&r) {
                r
            } else {
                "(undisclosed recipient)".into()
            };
            format!(
                "{who}: {} {} {} ({})",
                o.method,
                if o.uid.is_empty() { "-" } else { &o.uid },
                o.outcome,
                o.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    for note in v.proof_notes() {
        value.push_str("; note: ");
        value.push_str(note);
    }
    crate::sanitize::clean(&value)
}

fn visible_recipients(raw: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for h in ["To", "Cc"] {
        for v in crate::proof::header_values(raw, h) {
            for part in v.split(',') {
                let addr = match (part.find('<'), part.find('>')) {
                    (Some(a), Some(b)) if b > a => &part[a + 1..b],
                    _ => part.trim(),
                };
                out.push(ical::norm_addr(addr));
            }
        }
    }
    out
}

pub const RESULT_HEADER: &str = "X-Imipd-Result";

impl milter::Handler for Arc<Core> {
    /// The body is wanted when the top-level Content-Type may hold a calendar, or when an
    /// Authentication-Results header claims our authserv-id (it must be removed).
    fn wants_body(&self, env: &Envelope) -> bool {
        if milter::may_hold_calendar(&milter::header_values(&env.message, "Content-Type")) {
            return true;
        }
        let ours = self
            .state()
            .cfg
            .authserv_id
            .clone()
            .unwrap_or_else(crate::proof::hostname);
        milter::header_values(&env.message, "Authentication-Results")
            .iter()
            .any(|v| {
                v.split(';')
                    .next()
                    .and_then(|id| id.split_whitespace().next())
                    .is_some_and(|id| id.eq_ignore_ascii_case(&ours))
            })
    }

    async fn end_of_message(&self, env: Envelope) -> EomActions {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let a = self.milter_eom(env).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        a
    }
}

impl Core {
    async fn milter_eom(&self, env: Envelope) -> EomActions {
        let st = self.state();
        let facts = Facts {
            client_ip: env.client_ip,
            auth_authen: env.auth_authen.clone(),
        };
        let mut actions = EomActions::default();
        let all_rcpts: Vec<String> = env.rcpt_to.iter().map(|r| strip_angle(r)).collect();
        let local: Vec<String> = all_rcpts
            .iter()
            .filter(|r| st.cfg.is_local(r))
            .cloned()
            .collect();
        let message = Arc::new(env.message.clone());
        let verdict = match self
            .run_pipeline(
                &st,
                message.clone(),
                local,
                facts.clone(),
                env.queue_id.clone(),
            )
            .await
        {
            Ok(v) => v,
            Err(e) => {
                crate::metrics::message("milter", Err(&e));
                log(format!(
                    "milter: queue_id={} store unavailable, tempfail: {e}",
                    env.queue_id.as_deref().unwrap_or("-")
                ));
                actions.verdict = MilterVerdict::Tempfail(
                    "Calendar store temporarily unavailable, try again later".into(),
                );
                return actions;
            }
        };
        crate::metrics::message("milter", Ok::<_, ()>(&verdict));
        let proof = &verdict.proof;
        for i in &proof.remove_results {
            actions
                .delete_headers
                .push(("Authentication-Results".into(), *i as u32 + 1));
        }
        let raw: Vec<u8> = proof.inner.clone().unwrap_or_else(|| env.message.clone());
        // Outgoing iTIP from a local user on authenticated submission: keep their copy, and
        // relay it. Only when the site trusts authenticated submission, and only for the
        // login's own address: a login sending with someone else's From changes nothing.
        let submitter = env
            .auth_authen
            .as_deref()
            .filter(|_| st.cfg.policy.trust_authenticated_submission)
            .and_then(|login| {
                proof
                    .from
                    .clone()
                    .filter(|f| st.cfg.is_local(f) && !st.cfg.local_domains.is_empty())
                    .filter(|f| st.prover.login_addresses(login).contains(f))
            });
        if env.auth_authen.is_some() && submitter.is_none() {
            log(format!(
                "milter: queue_id={} authenticated submission not recorded: {}",
                env.queue_id.as_deref().unwrap_or("-"),
                if st.cfg.policy.trust_authenticated_submission {
                    "From is not one of the login's addresses"
                } else {
                    "policy.trust_authenticated_submission is off"
                }
            ));
        }
        if let Some(from) = submitter {
            {
                let from_addr = from.clone();
                let pipeline = st.pipeline.clone();
                let store = self.store.clone();
                let raw2 = raw.clone();
                let rc = all_rcpts.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let r = pipeline.record_outgoing(&raw2, &from, &rc);
                    if matches!(&r, Ok(v) if !v.is_empty()) {
                        let _ = store.flush();
                    }
                    r
                })
                .await;
                if let Ok(Ok(outs)) = res {
                    for o in outs {
                        log(format!(
                            "milter: queue_id={} sender={} uid={} method={} outcome={} reason={}",
                            env.queue_id.as_deref().unwrap_or("-"),
                            ical::norm_addr(&o.recipient),
                            o.uid,
                            o.method,
                            o.outcome,
                            o.reason
                        ));
                    }
                }
                if let Some(bridge) = st
                    .bridge
                    .clone()
                    .filter(|_| st.cfg.ischedule.relay != "off")
                {
                    let delivered = self
                        .relay(
                            &st,
                            &bridge,
                            &raw,
                            &from_addr,
                            &all_rcpts,
                            env.queue_id.as_deref(),
                        )
                        .await;
                    if st.cfg.ischedule.relay == "instead" {
                        for (orig, norm) in env.rcpt_to.iter().zip(&all_rcpts) {
                            if delivered.contains(norm) {
                                actions.delete_recipients.push(orig.clone());
                            }
                        }
                    }
                }
            }
        }
        Core::log_verdict("milter", env.queue_id.as_deref(), &verdict);
        Core::log_verdict_debug(&st, "milter", &verdict, proof);
        self.effects_committed("milter", env.queue_id.as_deref(), &verdict);
        if !proof.results.is_empty() {
            actions
                .insert_headers
                .push(("Authentication-Results".into(), proof.results.clone()));
        }
        if verdict.had_calendar {
            actions.add_headers.push((
                RESULT_HEADER.into(),
                result_header(&verdict, &visible_recipients(&env.message)),
            ));
            if verdict.any_rejected_for_proof() {
                match st.cfg.milter.on_forged.as_str() {
                    "reject" => {
                        actions.verdict = MilterVerdict::Reject(
                            "Calendar message from an unproven sender refused".into(),
                        )
                    }
                    "quarantine" => {
                        actions.quarantine =
                            Some("imipd: calendar message from an unproven sender".into())
                    }
                    _ => {}
                }
            }
        }
        actions
    }
}

impl Core {
    /// Relays what a local user sent to recipients in iSchedule-capable domains.
    /// `relay = "also"`: committed as an effect for the runner, the milter does not wait.
    /// `relay = "instead"`: done inline, because end-of-message must say which recipients
    /// iSchedule took (they are removed from mail delivery); bounded by the iSchedule request
    /// timeout. Returns those recipients (normalized): the ones that got every object.
    async fn relay(
        &self,
        st: &State,
        bridge: &crate::ischedule::Bridge,
        raw: &[u8],
        sender: &str,
        recipients: &[String],
        queue_id: Option<&str>,
    ) -> Vec<String> {
        if st.cfg.ischedule.relay != "instead" {
            let host = st
                .cfg
                .authserv_id
                .clone()
                .unwrap_or_else(crate::proof::hostname);
            let store = self.store.clone();
            let (raw, sender2, rcpts) = (raw.to_vec(), sender.to_string(), recipients.to_vec());
            let qid = queue_id.map(str::to_string);
            // Off the async workers: building the effect reads the message's calendar (its UID).
            let res = tokio::task::spawn_blocking(move || {
                let e =
                    crate::effects::relay::effect(&raw, &sender2, &rcpts, qid.as_deref(), &host);
                store.add_effects(std::slice::from_ref(&e))?;
                store.flush().map(|()| e.id)
            })
            .await;
            match res {
                Ok(Ok(id)) => {
                    log(format!(
                        "milter: queue_id={} effect=ischedule id={id} user={sender} committed",
                        queue_id.unwrap_or("-")
                    ));
                    self.effects_wakeup.notify_one();
                }
                // The mail still goes: iSchedule is the faster path next to it.
                _ => log(format!(
                    "milter: queue_id={} cannot queue the iSchedule relay; the mail goes as usual",
                    queue_id.unwrap_or("-")
                )),
            }
            return Vec::new();
        }
        let (report, added) = crate::effects::relay::relay_and_record(
            bridge,
            &st.pipeline,
            raw,
            sender,
            recipients,
            queue_id,
        )
        .await;
        if added {
            self.effects_wakeup.notify_one();
        }
        let mut delivered: Vec<String> = report
            .relayed
            .iter()
            .filter(|r| r.delivered())
            .map(|r| r.recipient.clone())
            .collect();
        delivered.retain(|r| {
            report
                .relayed
                .iter()
                .filter(|x| &x.recipient == r)
                .all(|x| x.delivered())
        });
        delivered.dedup();
        delivered
    }
}

/// The LMTP delivery handler.
struct LmtpDoor(Arc<Core>);

impl crate::lmtp::Deliver for LmtpDoor {
    fn accepts(&self, rcpt: &str) -> bool {
        let st = self.0.state();
        st.cfg.local_domains.is_empty() || st.cfg.is_local(&strip_angle(rcpt))
    }

    async fn deliver(&self, t: crate::lmtp::Transaction) -> Vec<crate::lmtp::Reply> {
        use crate::lmtp::Reply;
        let core = &self.0;
        core.inflight.fetch_add(1, Ordering::SeqCst);
        let st = core.state();
        let deliver = Deliver::parse(&st.cfg.lmtp.deliver);
        let visible = visible_recipients(&t.data);
        let mut replies = Vec::with_capacity(t.rcpt_to.len());
        let qid = queue_id_from_received(&t.data);
        let rcpts: Vec<String> = t.rcpt_to.iter().map(|r| strip_angle(r)).collect();
        let local: Vec<String> = rcpts
            .iter()
            .filter(|r| st.cfg.is_local(r))
            .cloned()
            .collect();
        // One pipeline run for every local recipient of the transaction (one parse, one
        // proof); each recipient's reply and header then come from its own outcomes.
        let data = Arc::new(t.data.clone());
        let verdict = if local.is_empty() {
            let prover = st.prover.clone();
            let data = data.clone();
            // No calendar to apply: only the Authentication-Results header is needed.
            tokio::task::spawn_blocking(move || {
                let (bytes, bare) = crate::message::normalize_line_ends(&data);
                let parsed = crate::message::Parsed::new(&bytes, bare);
                Verdict::proof_only(if crate::extract::may_hold_calendar(&parsed) {
                    prover.prove_blocking(&parsed, &Facts::default())
                } else {
                    prover.forged_results(&parsed)
                })
            })
            .await
            .map_err(|e| format!("proof task failed: {e}"))
        } else {
            core.run_pipeline(&st, data, local, Facts::default(), qid.clone())
                .await
        };
        crate::metrics::message("lmtp", verdict.as_ref());
        let verdict = match verdict {
            Ok(v) => {
                if !v.outcomes.is_empty() || v.had_calendar {
                    Core::log_verdict("lmtp", qid.as_deref(), &v);
                    Core::log_verdict_debug(&st, "lmtp", &v, &v.proof);
                    core.effects_committed("lmtp", qid.as_deref(), &v);
                }
                Ok(v)
            }
            Err(e) => {
                log(format!(
                    "lmtp: queue_id={} store unavailable, tempfail: {e}",
                    qid.as_deref().unwrap_or("-")
                ));
                Err(e)
            }
        };
        for r in rcpts {
            let v = match &verdict {
                Ok(v) => v,
                Err(_) => {
                    replies.push(Reply::new(
                        451,
                        "4.3.0",
                        format!("<{r}> calendar store temporarily unavailable"),
                    ));
                    continue;
                }
            };
            let proof = &v.proof;
            let mut headers = Vec::new();
            if !proof.results.is_empty() {
                headers.push(("Authentication-Results".to_string(), proof.results.clone()));
            }
            if st.cfg.is_local(&r) && v.had_calendar {
                let mine = v.for_recipient(&r);
                headers.push((RESULT_HEADER.into(), result_header(&mine, &visible)));
            }
            let copy = crate::proof::rewrite_headers(
                &t.data,
                "Authentication-Results",
                &proof.remove_results,
                &headers,
            );
            let res = match &deliver {
                Ok(Deliver::Maildir(template)) => {
                    match crate::maildir::expand_template(template, &r).and_then(|dir| {
                        match &st.cfg.lmtp.maildir_owner {
                            None => Ok((dir, None)),
                            Some(name) => lookup_user(name).map(|u| (dir, Some((u.uid, u.gid)))),
                        }
                    }) {
                        Ok((dir, owner)) => {
                            let copy2 = copy.clone();
                            tokio::task::spawn_blocking(move || {
                                crate::maildir::deliver(&dir, &copy2, owner)
                                    .map(|p| p.display().to_string())
                            })
                            .await
                            .map_err(|e| (true, e.to_string()))
                            .and_then(|r| r.map_err(|e| (true, e.to_string())))
                        }
                        Err(e) => Err((false, e)),
                    }
                }
                Ok(Deliver::Lmtp(target)) => {
                    crate::lmtp::send(target, &t.mail_from, &r, &copy, Duration::from_secs(120))
                        .await
                        .map(|_| "downstream LMTP".to_string())
                        .map_err(|e| (e.temporary, e.message))
                }
                Err(e) => Err((true, e.clone())),
            };
            match res {
                Ok(where_) => {
                    log(format!(
                        "lmtp: queue_id={} rcpt={r} delivered to {where_}",
                        qid.as_deref().unwrap_or("-")
                    ));
                    replies.push(Reply::new(250, "2.0.0", format!("<{r}> delivered")));
                }
                Err((temp, e)) => {
                    log(format!("lmtp: rcpt={r} delivery failed: {e}"));
                    replies.push(if temp {
                        Reply::new(
                            451,
                            "4.3.0",
                            format!("<{r}> delivery failed, try again later"),
                        )
                    } else {
                        Reply::new(550, "5.1.1", format!("<{r}> cannot be delivered: {e}"))
                    });
                }
            }
        }
        core.inflight.fetch_sub(1, Ordering::SeqCst);
        replies
    }
}

/// Connections served at once per door: high, because a descriptor and a parked task cost
/// little; idle and slow clients are cut by timeouts, not by locking everyone else out.
const MAX_CONNECTIONS: usize = 4096;
/// A milter or LMTP session idle this long is closed (Postfix's own smtpd_timeout is 300 s,
/// and it keeps the milter connection for the SMTP session).
const SESSION_IDLE: Duration = Duration::from_secs(300);

/// Raises the soft limit of open descriptors to the hard limit (at most 65,536), so that the
/// connection limits above can be reached.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            let want = l.rlim_max.min(65_536);
            if l.rlim_cur < want {
                l.rlim_cur = want;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            }
        }
    }
}

/// A system user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up by name (or a numeric uid) in the system's user database.
pub fn lookup_user(name: &str) -> Result<User, String> {
    let cname = std::ffi::CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    // SAFETY: passwd is a plain C struct of integers and pointers; all zero is a valid value.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r/getpwuid_r write into pw and buf (of the given length) and set out to
    // &pw on success or null when there is no such user.
    let rc = unsafe {
        match name.parse::<u32>() {
            Ok(uid) => libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out),
            Err(_) => libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            ),
        }
    };
    if rc != 0 || out.is_null() {
        return Err(format!("no such user {name:?}"));
    }
    Ok(User {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Hands the data dir (store, outbox, control socket) to `u`, then switches the whole process
/// (every thread: glibc broadcasts set*id) to `u`'s uid, gid and supplementary groups, and
/// checks that root cannot be regained.
fn drop_privileges(
    u: &User,
    data_dir: &std::path::Path,
    sock: &std::path::Path,
) -> Result<(), String> {
    fn chown_tree(p: &std::path::Path, uid: u32, gid: u32, depth: usize) -> std::io::Result<()> {
        let md = std::fs::symlink_metadata(p)?;
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        if md.is_dir() && depth < 16 {
            for e in std::fs::read_dir(p)? {
                chown_tree(&e?.path(), uid, gid, depth + 1)?;
            }
        }
        Ok(())
    }
    chown_tree(data_dir, u.uid, u.gid, 0)
        .map_err(|e| format!("chown {}: {e}", data_dir.display()))?;
    if sock.exists() {
        let _ = std::os::unix::fs::lchown(sock, Some(u.uid), Some(u.gid));
    }
    let cname = std::ffi::CString::new(u.name.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: plain system calls on integers and a NUL-terminated name.
    unsafe {
        let groups_ok = if u.name.parse::<u32>().is_ok() {
            libc::setgroups(1, &u.gid) == 0
        } else {
            libc::initgroups(cname.as_ptr(), u.gid as _) == 0
        };
        if !groups_ok {
            return Err(format!(
                "setgroups for {}: {}",
                u.name,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setgid(u.gid) != 0 {
            return Err(format!(
                "setgid {}: {}",
                u.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(u.uid) != 0 {
            return Err(format!(
                "setuid {}: {}",
                u.uid,
                std::io::Error::last_os_error()
            ));
        }
        if u.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            return Err("root privileges could be regained after setuid".into());
        }
    }
    Ok(())
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
}

async fn bind(l: &Listen) -> std::io::Result<Bound> {
    match l {
        Listen::Inet(hp) => Ok(Bound::Tcp(TcpListener::bind(hp).await?)),
        Listen::Unix(p) => {
            if p.exists() {
                // A stale socket from an earlier run; a live one would answer.
                if std::os::unix::net::UnixStream::connect(p).is_ok() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("{} is in use", p.display()),
                    ));
                }
                let _ = std::fs::remove_file(p);
            }
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let l = UnixListener::bind(p)?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o660));
            Ok(Bound::Unix(l, p.clone()))
        }
    }
}

fn unix_path(b: &Bound) -> Option<std::path::PathBuf> {
    match b {
        Bound::Unix(_, p) => Some(p.clone()),
        Bound::Tcp(_) => None,
    }
}

fn describe(b: &Bound) -> String {
    match b {
        Bound::Tcp(l) => l
            .local_addr()
            .map(|a| format!("inet:{a}"))
            .unwrap_or_default(),
        Bound::Unix(_, p) => format!("unix:{}", p.display()),
    }
}

/// Accepts connections until shutdown, each served by `serve`.
async fn accept_loop<F, Fut>(
    b: Bound,
    mut shutdown: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    serve: F,
) where
    F: Fn(Box<dyn AsyncStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let stream: Box<dyn AsyncStream> = tokio::select! {
            r = async {
                match &b {
                    Bound::Tcp(l) => l.accept().await.map(|(s, _)| {
                        let _ = s.set_nodelay(true);
                        Box::new(s) as Box<dyn AsyncStream>
                    }),
                    Bound::Unix(l, _) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn AsyncStream>),
                }
            } => match r {
                Ok(s) => s,
                Err(e) => { log(format!("accept failed: {e}")); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
            _ = shutdown.changed() => return,
        };
        let fut = serve(stream);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

pub use crate::milter::Conn as AsyncStream;

async fn control_server(core: Arc<Core>, l: UnixListener, mut shutdown: watch::Receiver<bool>) {
    loop {
        let s = tokio::select! {
            r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let core = core.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let st = core.state();
            let env = Env {
                cfg: st.cfg.clone(),
                store: core.store.clone(),
                prover: Some(st.prover.clone()),
                bridge: st.bridge.clone(),
            };
            let answer = tokio::task::spawn_blocking(move || crate::control::answer(&line, &env))
                .await
                .unwrap_or_default();
            let _ = w.write_all(answer.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

/// Test builds only: `IMIPD_TEST_STORE_FAILURES=n` makes the first n commits fail.
#[cfg(feature = "fault-injection")]
fn inject_store_failures(store: Arc<dyn Store>) -> Arc<dyn Store> {
    let Some(n) = std::env::var("IMIPD_TEST_STORE_FAILURES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return store;
    };
    log(format!(
        "IMIPD_TEST_STORE_FAILURES={n}: the first {n} store commits will fail"
    ));
    Arc::new(crate::store::Faulty {
        inner: store,
        remaining: AtomicUsize::new(n),
    })
}

pub fn run(args: &Args) -> Result<i32, CliError> {
    let cfg = load_config(args)?;
    raise_fd_limit();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run_as = match &cfg.user {
        Some(name) if root => {
            Some(lookup_user(name).map_err(|e| CliError::new(EX_CONFIG, format!("user: {e}")))?)
        }
        Some(name) => {
            log(format!(
                "user = {name:?} is set but imipd was not started as root: keeping the current user"
            ));
            None
        }
        None => None,
    };
    let config_path = args.config.clone().or_else(|| {
        let p = std::path::PathBuf::from(crate::cli::DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let store = crate::store::open(&cfg).map_err(|e| match e {
        crate::store::OpenError::Config(_) => CliError::new(EX_CONFIG, e.to_string()),
        crate::store::OpenError::Store(e) => CliError::new(EX_TEMPFAIL, e.to_string()),
    })?;
    #[cfg(feature = "fault-injection")]
    let store = inject_store_failures(store);
    let data_dir = cfg.data_dir.clone();
    let effects_wakeup = Arc::new(Notify::new());
    let state = Core::build_state(store.clone(), cfg.clone(), &effects_wakeup)
        .map_err(|e| CliError::new(EX_CONFIG, e))?;
    // Replies an older version left as files in its queue directory become effects, once.
    let host = cfg
        .authserv_id
        .clone()
        .unwrap_or_else(crate::proof::hostname);
    match crate::outbound::migrate_queue(&cfg, store.as_ref(), &host) {
        Ok(0) => {}
        Ok(n) => log(format!(
            "moved {n} queued message(s) from {} into the store",
            crate::outbound::queue_dir(&cfg).display()
        )),
        Err(e) => log(format!(
            "cannot move the queued messages of {} into the store (left in place): {e}",
            crate::outbound::queue_dir(&cfg).display()
        )),
    }
    if cfg.outbound.transport.is_none() {
        log("[outbound] transport is not set: iMIP replies wait in the store until it is");
    }
    let core = Arc::new(Core {
        store: store.clone(),
        state: RwLock::new(state),
        effects_wakeup: effects_wakeup.clone(),
        inflight: AtomicUsize::new(0),
        config_path,
        data_dir: data_dir.clone(),
    });
    if cfg.local_domains.is_empty() {
        log("local_domains is empty: every recipient is treated as local");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
    rt.block_on(async move {
        // Before anything is announced: a SIGTERM right after the listening lines must stop
        // the daemon cleanly, not kill it.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| CliError::new(EX_IOERR, e.to_string()))?;
        let (tx, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let timeout = SESSION_IDLE;
        let mut unix_socks: Vec<std::path::PathBuf> = Vec::new();
        if cfg.milter.enabled {
            let l = parse_listen(&cfg.milter.listen).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let b = bind(&l).await.map_err(|e| CliError::new(EX_IOERR, format!("milter {}: {e}", cfg.milter.listen)))?;
            unix_socks.extend(unix_path(&b));
            println!("{}", serde_json::json!({"listening": "milter", "address": describe(&b)}));
            log(format!("milter listening on {}", describe(&b)));
            let core2 = core.clone();
            let max = cfg.lmtp.max_message_size;
            tasks.push(tokio::spawn(accept_loop(b, rx.clone(), Arc::new(Semaphore::new(MAX_CONNECTIONS)), move |s| {
                let core = core2.clone();
                async move {
                    if let Err(e) = milter::serve(s, &core, timeout, max).await {
                        log(format!("milter connection: {e}"));
                    }
                }
            })));
        }
        if cfg.lmtp.enabled {
            let l = parse_listen(&cfg.lmtp.listen).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let b = bind(&l).await.map_err(|e| CliError::new(EX_IOERR, format!("lmtp {}: {e}", cfg.lmtp.listen)))?;
            unix_socks.extend(unix_path(&b));
            println!("{}", serde_json::json!({"listening": "lmtp", "address": describe(&b)}));
            log(format!("LMTP listening on {} (delivering to {})", describe(&b), cfg.lmtp.deliver));
            let door = Arc::new(LmtpDoor(core.clone()));
            let host = cfg.authserv_id.clone().unwrap_or_else(crate::proof::hostname);
            let max = cfg.lmtp.max_message_size;
            tasks.push(tokio::spawn(accept_loop(b, rx.clone(), Arc::new(Semaphore::new(MAX_CONNECTIONS)), move |s| {
                let door = door.clone();
                let host = host.clone();
                async move {
                    if let Err(e) = crate::lmtp::serve(s, &host, door.as_ref(), max, timeout).await {
                        log(format!("lmtp connection: {e}"));
                    }
                }
            })));
        }
        if let Some(listen) = cfg.ischedule.listen.clone() {
            let (Some(cert), Some(key)) = (&cfg.ischedule.tls_cert, &cfg.ischedule.tls_key) else {
                return Err(CliError::new(EX_CONFIG, "[ischedule] listen needs tls_cert and tls_key"));
            };
            let tls = crate::doors::ischedule::server::tls_acceptor(cert, key).map_err(|e| CliError::new(EX_CONFIG, e))?;
            let l = TcpListener::bind(&listen).await.map_err(|e| CliError::new(EX_IOERR, format!("ischedule {listen}: {e}")))?;
            let addr = l.local_addr().map(|a| format!("inet:{a}")).unwrap_or_default();
            println!("{}", serde_json::json!({"listening": "ischedule", "address": addr}));
            log(format!("iSchedule listening on {addr} (HTTPS)"));
            let core2 = core.clone();
            let state: crate::doors::ischedule::server::StateFn = Arc::new(move || {
                let st = core2.state();
                st.bridge.map(|b| (st.pipeline.clone(), b))
            });
            tasks.push(tokio::spawn(crate::doors::ischedule::server::serve(l, tls, state, rx.clone())));
        }
        if let Some(listen) = cfg.metrics.listen.clone() {
            let l = TcpListener::bind(&listen).await.map_err(|e| CliError::new(EX_IOERR, format!("metrics {listen}: {e}")))?;
            let addr = l.local_addr().map(|a| format!("inet:{a}")).unwrap_or_default();
            println!("{}", serde_json::json!({"listening": "metrics", "address": addr}));
            log(format!("metrics listening on {addr} (GET /metrics)"));
            tasks.push(tokio::spawn(crate::metrics::serve(l, rx.clone())));
        }
        let sock = crate::control::socket_path(&cfg);
        let _ = std::fs::remove_file(&sock);
        match UnixListener::bind(&sock) {
            Ok(l) => {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660));
                println!("{}", serde_json::json!({"listening": "control", "address": format!("unix:{}", sock.display())}));
                tasks.push(tokio::spawn(control_server(core.clone(), l, rx.clone())));
            }
            Err(e) => log(format!("control socket {}: {e} (admin commands need the daemon stopped)", sock.display())),
        }
        // Everything is bound: now give up root when a user is configured.
        if let Some(u) = &run_as {
            for p in &unix_socks {
                let _ = std::os::unix::fs::lchown(p, Some(u.uid), Some(u.gid));
            }
            drop_privileges(u, &data_dir, &sock).map_err(|e| CliError::new(EX_CONFIG, e))?;
            log(format!("running as user {} (uid {}, gid {})", u.name, u.uid, u.gid));
        }
        let core2 = core.clone();
        tasks.push(tokio::spawn(crate::effects::runner::run(
            store.clone(),
            move || core2.state().effects,
            effects_wakeup.clone(),
            rx.clone(),
        )));
        tasks.push(tokio::spawn(crate::store::journal_retention(store.clone(), cfg.journal.keep_days, rx.clone())));
        use std::io::Write;
        let _ = std::io::stdout().flush();

        loop {
            tokio::select! {
                _ = term.recv() => { log("SIGTERM: finishing in-flight messages"); break; }
                _ = tokio::signal::ctrl_c() => { log("SIGINT: finishing in-flight messages"); break; }
                _ = hup.recv() => core.reload(),
            }
        }
        let _ = tx.send(true);
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        // Give messages already in the pipeline time to finish, then make everything durable.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while core.inflight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = core.store.flush();
        let _ = std::fs::remove_file(&sock);
        log("stopped");
        Ok::<i32, CliError>(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ObjectOutcome;

    #[test]
    fn a_message_with_many_outcomes_logs_a_bounded_number_of_lines() {
        let outcome = |i: usize, what: Outcome| ObjectOutcome {
            recipient: format!("mailto:u{i}@example.org"),
            method: "REQUEST".into(),
            component: "VEVENT".into(),
            uid: format!("w{i}"),
            outcome: what,
            reason: "r".into(),
        };
        let mut v = Verdict::default();
        v.outcomes = (0..64_000)
            .map(|i| {
                outcome(
                    i,
                    if i % 2 == 0 {
                        Outcome::Applied
                    } else {
                        Outcome::Rejected
                    },
                )
            })
            .collect();
        let lines = verdict_log_lines("lmtp", Some("Q1"), &v);
        assert_eq!(lines.len(), MAX_LOGGED_OUTCOMES + 1);
        assert!(lines[0].contains("uid=w0 method=REQUEST outcome=applied reason=r"));
        assert!(
            lines[MAX_LOGGED_OUTCOMES].contains("63980 more objects")
                && lines[MAX_LOGGED_OUTCOMES].contains("31990 applied, 0 ignored, 31990 rejected"),
            "{}",
            lines[MAX_LOGGED_OUTCOMES]
        );
        v.outcomes.truncate(3);
        assert_eq!(verdict_log_lines("lmtp", None, &v).len(), 3);
    }
}

//! The milter door's side of the daemon: what end of message does with the pipeline's
//! verdict (header changes, the result header, on_forged), authenticated submission (the
//! sender's own copy, iSchedule relays).

use crate::app::{log, Core, State};
use crate::config::{OnForged, Relay};
use crate::doors::report::{result_header, strip_angle, visible_recipients, RESULT_HEADER};
use crate::milter::{self, Envelope, EomActions, Verdict as MilterVerdict};
use crate::proof::Facts;
use imipd_core::addr::norm_addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl milter::Handler for Arc<Core> {
    /// The body is kept when the top-level header block may hold a calendar and the message
    /// concerns a local user (a local recipient, or a login's own submission); end of message
    /// is still needed, without the body, when an Authentication-Results header claims our
    /// authserv-id (it must be removed). Anything else is accepted at once.
    fn at_end_of_headers(&self, env: &Envelope) -> milter::Body {
        let st = self.state();
        let concerns_us = env.rcpt_to.iter().any(|r| st.cfg.is_local(&strip_angle(r)))
            || (env.auth_authen.is_some() && st.cfg.policy.trust_authenticated_submission);
        // The same reading of the header block as the triage's: every type and file name
        // extraction takes for a calendar (text/x-vcalendar, a .ics attachment, ...) keeps it.
        if concerns_us && crate::pipeline::triage::headers_may_hold_calendar(&env.message) {
            return milter::Body::Keep;
        }
        let ours = st
            .cfg
            .authserv_id
            .clone()
            .unwrap_or_else(crate::proof::hostname);
        let forged = milter::header_values(&env.message, "Authentication-Results")
            .iter()
            .any(|v| {
                v.split(';')
                    .next()
                    .and_then(|id| id.split_whitespace().next())
                    .is_some_and(|id| id.eq_ignore_ascii_case(&ours))
            });
        if forged {
            milter::Body::Discard
        } else {
            milter::Body::Accept
        }
    }

    async fn end_of_message(&self, env: Envelope) -> EomActions {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let a = self.milter_eom(env).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        a
    }
}

impl Core {
    pub(crate) async fn milter_eom(&self, env: Envelope) -> EomActions {
        let st = self.state();
        if env.body_discarded {
            // Only the forged Authentication-Results headers are removed: nothing is said of a
            // body that was not read.
            let remove = if crate::pipeline::triage::clean_header_section(&env.message) {
                st.prover.forged_results_in(&env.message).remove_results
            } else {
                let (bytes, bare) = crate::message::normalize_line_ends(&env.message);
                st.prover
                    .forged_results(&crate::message::Parsed::new(&bytes, bare))
                    .remove_results
            };
            let mut actions = EomActions::default();
            for i in remove {
                actions
                    .delete_headers
                    .push(("Authentication-Results".into(), i as u32 + 1));
            }
            return actions;
        }
        let facts = Facts {
            client_ip: env.client_ip,
            auth_authen: env.auth_authen.clone(),
        };
        let mut actions = EomActions::default();
        let all_rcpts: Vec<String> = env.rcpt_to.iter().map(|r| strip_angle(r)).collect();
        let message = Arc::new(env.message.clone());
        let verdict = match self
            .run_pipeline(
                &st,
                message.clone(),
                crate::pipeline::Recipients::Envelope(all_rcpts.clone()),
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
        if let Some(why) = verdict.submission_note {
            log(format!(
                "milter: queue_id={} authenticated submission not recorded: {why}",
                env.queue_id.as_deref().unwrap_or("-"),
            ));
        }
        // Outgoing iTIP from a local user on authenticated submission: the pipeline kept their
        // copy (and committed a relay = "also" effect); relay = "instead" relays here.
        if let Some(sent) = &verdict.sent {
            for o in &sent.outcomes {
                log(format!(
                    "milter: queue_id={} sender={} uid={} method={} outcome={} reason={}",
                    env.queue_id.as_deref().unwrap_or("-"),
                    norm_addr(&o.recipient),
                    o.uid,
                    o.method,
                    o.outcome,
                    o.reason
                ));
            }
            if let Some(bridge) = st
                .bridge
                .clone()
                .filter(|_| st.cfg.ischedule.relay == Relay::Instead)
            {
                let delivered = self
                    .relay_instead(&st, &bridge, sent, env.queue_id.as_deref())
                    .await;
                for (orig, norm) in env.rcpt_to.iter().zip(&all_rcpts) {
                    if delivered.contains(norm) {
                        actions.delete_recipients.push(orig.clone());
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
                match st.cfg.milter.on_forged {
                    OnForged::Reject => {
                        actions.verdict = MilterVerdict::Reject(
                            "Calendar message from an unproven sender refused".into(),
                        )
                    }
                    OnForged::Quarantine => {
                        actions.quarantine =
                            Some("imipd: calendar message from an unproven sender".into())
                    }
                    OnForged::Accept => {}
                }
            }
        }
        actions
    }
}

impl Core {
    /// `relay = "instead"`: relays what a local user sent to recipients in iSchedule-capable
    /// domains inline, because end-of-message must say which recipients iSchedule took (they
    /// are removed from mail delivery); bounded by the iSchedule request timeout. Returns those
    /// recipients (normalized): the ones that got every object. (`relay = "also"` is an effect
    /// the pipeline committed with the sender's copy; the milter does not wait for it.)
    async fn relay_instead(
        &self,
        st: &State,
        bridge: &crate::ischedule::Bridge,
        sent: &crate::pipeline::Sent,
        queue_id: Option<&str>,
    ) -> Vec<String> {
        let (report, added) = crate::effects::relay::relay_and_record(
            bridge,
            &st.pipeline,
            &sent.objects,
            &sent.sender,
            &sent.recipients,
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

//! The LMTP door's side of the daemon: one pipeline run per transaction, then the hand-on
//! (Maildir or downstream LMTP) of each recipient's copy with its result header.

use crate::app::{log, lookup_user, Core};
use crate::config::Deliver;
use crate::doors::report::{
    queue_id_from_received, result_header, strip_angle, visible_recipients, RESULT_HEADER,
};
use crate::proof::Facts;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The LMTP delivery handler.
pub struct LmtpDoor(pub Arc<Core>);

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
        // One pipeline run for every local recipient of the transaction (one parse, one
        // proof); each recipient's reply and header then come from its own outcomes.
        let data = Arc::new(t.data.clone());
        let verdict = core
            .run_pipeline(
                &st,
                data,
                crate::pipeline::Recipients::Envelope(rcpts.clone()),
                Facts::default(),
                qid.clone(),
            )
            .await;
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
        for (orig, cal) in t.rcpt_to.iter().zip(rcpts) {
            // The mailbox is delivered to as given; `cal` is its calendar user.
            let r = imipd_core::addr::norm_mailbox(
                orig.trim().trim_start_matches('<').trim_end_matches('>'),
            );
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
            if st.cfg.is_local(&cal) && v.had_calendar {
                let mine = v.for_recipient(&cal);
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
                Ok(Deliver::Lmtp(target)) => core
                    .downstream
                    .send(target, &t.mail_from, &r, &copy, Duration::from_secs(120))
                    .await
                    .map(|_| "downstream LMTP".to_string())
                    .map_err(|e| (e.temporary, e.message)),
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

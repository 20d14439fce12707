//! One fan-out job (`device_tokens`): each token's notification sent within the
//! replica's send bound, each token's settlement decided as a single job's would be,
//! and the message settled once from all of them (`settle::fan_in`).

use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::acker::Guard;
use super::delivery::{self, Decision};
use super::execute::{self, CopyState, Session, Settling};
use super::observe::Report;
use super::recent::Key;
use super::state::Worker;
use crate::amqp::Incoming;
use crate::job::{FanOut, Job};
use crate::outcomes;
use crate::settle::{self, AckKind, Settlement};

/// One token of the job and what was decided for it.
struct Row<'a> {
    token: &'a str,
    key: Option<Key>,
    decision: Decision,
}

/// Send every token of `job` and settle the message once.
pub(super) async fn process(
    w: &Worker,
    s: &Session,
    inc: &Incoming,
    guard: Guard,
    job: &Job,
    ctl: CopyState,
    consult: bool,
) {
    let fan = job.fanout.as_ref().expect("a fan-out job");
    let job_apns_id = job.apns_id().expect("decode always sets an apns-id");
    let mut rows: Vec<Row<'_>> = Vec::with_capacity(fan.tokens.len() + fan.refused.len());
    for (token, e) in &fan.refused {
        let error = format!("device_tokens: {e}");
        rows.push(Row {
            token,
            key: None,
            decision: Decision::unsent(settle::invalid_job(&error, ctl.attempts)),
        });
    }
    if job.expired(delivery::now_secs()) {
        for token in &fan.tokens {
            rows.push(Row {
                token,
                key: None,
                decision: Decision::unsent(Settlement::Ack(AckKind::Expired)),
            });
        }
    } else {
        send_all(w, s, inc, job, &fan.tokens, ctl, consult, &mut rows).await;
    }
    let plan = settle::fan_in(rows.iter().map(|r| (r.token, &r.decision.settlement)));
    let keys: Vec<Key> = rows.iter().filter_map(|r| r.key).collect();
    let apns_id_of = |r: &Row<'_>| {
        r.key
            .map(|k| k.apns_id)
            .unwrap_or_else(|| FanOut::apns_id(job_apns_id, r.token))
    };
    let receipts: Vec<outcomes::Receipt> = if w.cfg.queues.outcomes && !plan.requeue {
        let now = std::time::SystemTime::now();
        let job_id = job.job_id.as_deref().or(inc.message_id());
        rows.iter()
            .filter_map(|r| {
                let subject = outcomes::Subject {
                    job_id,
                    apns_id: Some(apns_id_of(r)),
                    app: Some(&job.app),
                    device_token: Some(r.token),
                    channel_id: None,
                    attempts_before: ctl.attempts,
                };
                outcomes::receipt(&subject, &r.decision.settlement, now)
            })
            .collect()
    } else {
        Vec::new()
    };
    let settling = Settling {
        inc,
        key: Some(Key {
            apns_id: job_apns_id,
            lineage: ctl.lineage,
            hop: ctl.hop,
        }),
        stamp_apns_id: job.job_id.is_none(),
        control: ctl,
        receipts: &receipts,
    };
    let carried_out =
        execute::carry_out_fanout(s, &w.cfg.queues, &w.recent, &settling, &plan, &keys, guard)
            .await;
    let published_at_ms = delivery::published_at_ms(inc);
    for r in &rows {
        // A requeued message is settled for none of its tokens: the withdrawn ones are
        // reported as such; the answered ones are reported when the redelivery is
        // settled from their remembered answers.
        if plan.requeue && !matches!(r.decision.settlement, Settlement::Requeue { .. }) {
            continue;
        }
        w.observer.delivery(&Report {
            app: Some(&job.app),
            apns_id: Some(apns_id_of(r)),
            device_token: Some(r.token),
            channel_id: None,
            attempts_before: ctl.attempts,
            message_id: inc.message_id(),
            trace_id: inc.trace_id(),
            published_at_ms,
            remembered: r.decision.remembered,
            sent: r.decision.sent.as_ref(),
            settlement: &r.decision.settlement,
            carried_out: &carried_out,
        });
    }
    if fan.repeats > 0 {
        tracing::debug!(
            app = job.app.as_str(),
            repeats = fan.repeats,
            "fan-out job named some tokens more than once; each was sent once"
        );
    }
}

/// Send each token, at most `worker.max_notifications_in_flight` at once over the
/// replica: a token's send starts only with a permit in hand, so a 10,000-token job
/// holds as many futures as it has sends in flight, not 10,000.
#[allow(clippy::too_many_arguments)]
async fn send_all<'a>(
    w: &Worker,
    s: &Session,
    inc: &Incoming,
    job: &Job,
    tokens: &'a [String],
    ctl: CopyState,
    consult: bool,
    rows: &mut Vec<Row<'a>>,
) {
    let mut pending = FuturesUnordered::new();
    let mut next = tokens.iter();
    let mut upcoming = next.next();
    loop {
        // Shutting down: no new sends. The tokens not sent yet go on as one child job
        // (a park in the shortest delay queue, not an attempt) for another replica, so
        // the answered ones are settled now, not sent again after a requeue.
        if upcoming.is_some() && w.health.draining.load(Ordering::Relaxed) {
            let level_ms = settle::delay_levels(&w.cfg.retry)[0];
            let delay = settle::DelayQueue {
                level_ms,
                ttl_ms: level_ms,
            };
            for token in upcoming.into_iter().chain(next.by_ref()) {
                rows.push(Row {
                    token,
                    key: None,
                    decision: Decision::unsent(Settlement::Park {
                        delay,
                        reason: "Draining".into(),
                    }),
                });
            }
            upcoming = None;
        }
        match upcoming {
            Some(token) => {
                tokio::select! {
                    biased;
                    Some(row) = pending.next(), if !pending.is_empty() => rows.push(row),
                    permit = w.send_permit(inc.urgent) => {
                        if w.health.draining.load(Ordering::Relaxed) {
                            // Looked at again at the top of the loop.
                            continue;
                        }
                        pending.push(async move {
                            let _permit = permit;
                            one(w, s, inc, job, token, ctl, consult).await
                        });
                        upcoming = next.next();
                    }
                }
            }
            None => match pending.next().await {
                Some(row) => rows.push(row),
                None => break,
            },
        }
    }
}

/// One token: its notification under its own apns-id, sent and decided.
async fn one<'a>(
    w: &Worker,
    s: &Session,
    inc: &Incoming,
    job: &Job,
    token: &'a str,
    ctl: CopyState,
    consult: bool,
) -> Row<'a> {
    // The token was validated when the job was decoded.
    let n = match FanOut::notification(job, token) {
        Ok(n) => n,
        Err(e) => {
            let error = format!("device_tokens: {e}");
            return Row {
                token,
                key: None,
                decision: Decision::unsent(settle::invalid_job(&error, ctl.attempts)),
            };
        }
    };
    let key = n.apns_id().map(|apns_id| Key {
        apns_id,
        lineage: ctl.lineage,
        hop: ctl.hop,
    });
    let step = (ctl.lineage, ctl.hop);
    let mut decision = delivery::decide(w, s, job, &n, ctl.attempts, step, consult).await;
    if let Some(sent) = &mut decision.sent {
        sent.redelivered = inc.redelivered;
    }
    Row {
        token,
        key,
        decision,
    }
}

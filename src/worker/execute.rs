//! The one place a settlement is carried out: publish what it needs (confirmed), then
//! ack; if the publish fails, requeue instead. Never both, never neither.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use uuid::Uuid;

use super::acker::Guard;
use super::recent::{Key, Recent};
use crate::amqp::{self, HeaderValue, Incoming, PublishError, Publisher};
use crate::config::QueueSettings;
use crate::outcomes::Receipt;
use crate::settle::{self, Settlement};

/// One broker connection's publishing side, shared with its delivery tasks.
pub struct Session {
    pub publisher: Publisher,
    /// Rung when a publish shows the channel or topology is broken.
    pub lost: Notify,
    /// The session has ended with its connection or channel lost: its unacked
    /// deliveries are back in the queue (and with another consumer), so its tasks send
    /// nothing more.
    gone: AtomicBool,
}

impl Session {
    pub fn new(publisher: Publisher) -> Session {
        Session {
            publisher,
            lost: Notify::new(),
            gone: AtomicBool::new(false),
        }
    }

    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

/// The message being settled: the delivery, and what decoding learned of it.
pub struct Settling<'a> {
    pub inc: &'a Incoming,
    /// The job's apns-id (decoded jobs), with the lineage and hop it is remembered
    /// under.
    pub key: Option<Key>,
    /// Stamp the apns-id on retries (`x-apns-id`): the job has no id of its own, so the
    /// apns-id was drawn at random and must travel with the job.
    pub stamp_apns_id: bool,
    /// The trusted control state the message came with (zero on a producer's message):
    /// what a park copy carries on.
    pub control: CopyState,
    /// The outcome stream's receipts (empty when it is off): published beside the
    /// settlement, confirmed before the ack.
    pub receipts: &'a [Receipt],
}

/// What a delay-queue copy carries of the worker's own state.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyState {
    pub attempts: u32,
    pub config_waits: u32,
    pub lineage: u64,
    pub hop: u32,
}

/// Carry out `settlement` and settle the delivery's guard: ack after a confirmed
/// publish, requeue when the publish failed.
pub async fn carry_out(
    s: &Session,
    q: &QueueSettings,
    recent: &Recent,
    m: &Settling<'_>,
    settlement: &Settlement,
    guard: Guard,
) -> Result<(), PublishError> {
    let inc = m.inc;
    let state = m.control;
    let stamp = m.key.filter(|_| m.stamp_apns_id).map(|k| k.apns_id);
    if let Settlement::Requeue { .. } = settlement {
        if let Some(key) = &m.key {
            recent.release(key);
        }
        guard.requeue();
        return Ok(());
    }
    let settle = async {
        match settlement {
            Settlement::Ack(_) | Settlement::Requeue { .. } => Ok(()),
            Settlement::EnvironmentMismatch(_)
            | Settlement::Cleanup(_)
            | Settlement::ChannelCleanup(_) => publish_event(s, q, settlement).await,
            Settlement::DeadLetter(dl) => dead_letter(s, q, inc, &inc.body, dl).await,
            Settlement::Retry {
                attempt,
                delay,
                reason,
            } => {
                let state = CopyState {
                    attempts: *attempt,
                    ..state
                };
                let reason = ("x-apns-last-reason", HeaderValue::Text(reason.clone()));
                to_delay_queue(s, q, inc, &inc.body, *delay, state, stamp, reason).await
            }
            Settlement::AwaitConfig {
                waits,
                delay,
                reason,
            } => {
                let state = CopyState {
                    config_waits: *waits,
                    ..state
                };
                let reason = ("x-apns-parked", HeaderValue::Text((*reason).to_string()));
                to_delay_queue(s, q, inc, &inc.body, *delay, state, stamp, reason).await
            }
            Settlement::Park { delay, reason } => {
                let reason = ("x-apns-parked", HeaderValue::Text(reason.clone()));
                to_delay_queue(s, q, inc, &inc.body, *delay, state, stamp, reason).await
            }
        }
    };
    // The receipts (outcome stream) go out beside the settlement's own publish; the
    // ack waits for every confirm.
    let (settled, receipted) = tokio::join!(settle, publish_receipts(s, q, m.receipts));
    let result = settled.and(receipted);
    if let Some(key) = &m.key {
        recent.settled(key, result.is_ok());
    }
    match &result {
        Ok(()) => guard.ack(),
        Err(_) => {
            // Any failure ends the session (see `PublishError`): new channels.
            s.lost.notify_one();
            guard.requeue();
        }
    }
    result
}

/// Publish an event settlement (token cleanup, channel cleanup, environment
/// mismatch) to its exchange, confirmed; any other settlement publishes nothing.
async fn publish_event(
    s: &Session,
    q: &QueueSettings,
    settlement: &Settlement,
) -> Result<(), PublishError> {
    let (exchange, key, body, kind) = match settlement {
        Settlement::EnvironmentMismatch(ev) => (
            &q.environment_exchange,
            ev.topic.clone(),
            serde_json::to_vec(ev),
            None,
        ),
        Settlement::Cleanup(ev) => (
            &q.cleanup_exchange,
            ev.topic.clone(),
            serde_json::to_vec(ev),
            None,
        ),
        Settlement::ChannelCleanup(ev) => (
            &q.cleanup_exchange,
            ev.routing_key(),
            serde_json::to_vec(ev),
            Some("channel-cleanup"),
        ),
        _ => return Ok(()),
    };
    let body = body.expect("event serialises");
    let id = Uuid::new_v4().to_string();
    publish_retrying(s, exchange, &key, &body, || {
        let props = amqp::event_props(&id);
        match kind {
            Some(t) => props.with_type(lapin::types::ShortString::from(t)),
            None => props,
        }
    })
    .await
}

/// Publish each receipt of the outcome stream, confirmed.
async fn publish_receipts(
    s: &Session,
    q: &QueueSettings,
    receipts: &[Receipt],
) -> Result<(), PublishError> {
    // Boxed futures in a Vec, not a lazy `map`: a closure held across the await makes
    // the delivery task's future fail `Send`'s higher-ranked lifetime check.
    let mut work: Vec<futures_util::future::BoxFuture<'_, Result<(), PublishError>>> =
        Vec::with_capacity(receipts.len());
    for r in receipts {
        work.push(Box::pin(publish_receipt(s, q, r)));
    }
    all_confirmed(work).await
}

/// Run confirmed publishes with a few dozen confirms in flight at once, not one at a
/// time; the first failure is the result (the others still finish).
async fn all_confirmed<F>(work: impl IntoIterator<Item = F>) -> Result<(), PublishError>
where
    F: std::future::Future<Output = Result<(), PublishError>>,
{
    use futures_util::StreamExt;
    let mut results = futures_util::stream::iter(work).buffer_unordered(64);
    let mut result = Ok(());
    while let Some(r) = results.next().await {
        if let Err(e) = r {
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// One receipt to the outcome exchange, routing key `<status>.<app>`, confirmed.
async fn publish_receipt(s: &Session, q: &QueueSettings, r: &Receipt) -> Result<(), PublishError> {
    let body = serde_json::to_vec(r).expect("a receipt serialises");
    let id = Uuid::new_v4().to_string();
    publish_retrying(s, &q.outcome_exchange, &r.routing_key(), &body, || {
        amqp::event_props(&id).with_type(lapin::types::ShortString::from("outcome-receipt"))
    })
    .await
}

/// Dead-letter `body` (the original's, or a fan-out job's for some of its tokens)
/// with the original's properties and the dead letter's headers.
async fn dead_letter(
    s: &Session,
    q: &QueueSettings,
    inc: &Incoming,
    body: &[u8],
    dl: &settle::DeadLetter,
) -> Result<(), PublishError> {
    let mut headers = vec![
        ("x-apns-reason", HeaderValue::Text(dl.reason.clone())),
        (
            "x-error",
            HeaderValue::Text(settle::truncate(&dl.error, 1024).to_string()),
        ),
        ("x-attempts", HeaderValue::Int(i64::from(dl.attempts))),
        // A replay of this dead letter is a new message of the job (`control`).
        (
            "x-apns-dead-letter-id",
            HeaderValue::Text(Uuid::new_v4().to_string()),
        ),
    ];
    if let Some(st) = dl.status {
        headers.push(("x-apns-status", HeaderValue::Int(i64::from(st))));
    }
    publish_retrying(s, &q.dead_letter_exchange, &q.jobs, body, || {
        inc.dead_letter_props(&headers)
    })
    .await
}

/// Carry out a fan-out job's settlement (`settle::fan_in` of its tokens'): every
/// event, dead letter and child copy confirmed, then the ack; a failed publish, or a
/// token withdrawn with its session, requeues the message. The tokens' remembered
/// answers stay, so a redelivery here sends only the tokens that have none.
pub async fn carry_out_fanout(
    s: &Session,
    q: &QueueSettings,
    recent: &Recent,
    m: &Settling<'_>,
    plan: &settle::FanIn<'_>,
    keys: &[Key],
    guard: Guard,
) -> Result<(), PublishError> {
    let inc = m.inc;
    let state = m.control;
    let stamp = m.key.filter(|_| m.stamp_apns_id).map(|k| k.apns_id);
    if plan.requeue {
        for k in keys {
            recent.settled(k, false);
        }
        guard.requeue();
        return Ok(());
    }
    let body_for = |tokens: &[&str]| {
        crate::job::with_tokens(&inc.body, tokens).expect("a decoded job is a JSON object")
    };
    let mut work: Vec<futures_util::future::BoxFuture<'_, Result<(), PublishError>>> =
        Vec::with_capacity(plan.publishes() + m.receipts.len());
    for r in m.receipts {
        work.push(Box::pin(publish_receipt(s, q, r)));
    }
    for ev in &plan.events {
        work.push(Box::pin(publish_event(s, q, ev)));
    }
    for (dl, tokens) in &plan.dead_letters {
        let body = body_for(tokens);
        work.push(Box::pin(
            async move { dead_letter(s, q, inc, &body, dl).await },
        ));
    }
    for part in [&plan.retry, &plan.park] {
        let Some((settlement, tokens)) = part else {
            continue;
        };
        let body = body_for(tokens);
        let (delay, state, header) = match settlement {
            Settlement::Retry {
                attempt,
                delay,
                reason,
            } => (
                *delay,
                CopyState {
                    attempts: *attempt,
                    ..state
                },
                ("x-apns-last-reason", HeaderValue::Text(reason.clone())),
            ),
            Settlement::Park { delay, reason } => (
                *delay,
                state,
                ("x-apns-parked", HeaderValue::Text(reason.clone())),
            ),
            Settlement::AwaitConfig {
                waits,
                delay,
                reason,
            } => (
                *delay,
                CopyState {
                    config_waits: *waits,
                    ..state
                },
                ("x-apns-parked", HeaderValue::Text((*reason).to_string())),
            ),
            other => unreachable!("fan_in groups only retries and parks here, not {other:?}"),
        };
        work.push(Box::pin(async move {
            to_delay_queue(s, q, inc, &body, delay, state, stamp, header).await
        }));
    }
    let result = all_confirmed(work).await;
    for k in keys {
        recent.settled(k, result.is_ok());
    }
    match &result {
        Ok(()) => guard.ack(),
        Err(_) => {
            // Any failure ends the session (see `PublishError`): new channels.
            s.lost.notify_one();
            guard.requeue();
        }
    }
    result
}

/// Republish a job to the delay queue of `delay` (a retry or a park): a new message,
/// one hop further in its lineage, carrying the worker's state (`state`, never the
/// incoming headers), its apns-id when it has no id of its own, and why it waits.
#[allow(clippy::too_many_arguments)]
async fn to_delay_queue(
    s: &Session,
    q: &QueueSettings,
    inc: &Incoming,
    body: &[u8],
    delay: settle::DelayQueue,
    state: CopyState,
    apns_id: Option<Uuid>,
    reason: (&'static str, HeaderValue),
) -> Result<(), PublishError> {
    let mut headers = vec![
        reason,
        ("x-attempts", HeaderValue::Int(i64::from(state.attempts))),
        (
            "x-apns-config-waits",
            HeaderValue::Int(i64::from(state.config_waits)),
        ),
        ("x-apns-hop", HeaderValue::Int(i64::from(state.hop) + 1)),
    ];
    if state.lineage != 0 {
        headers.push(("x-apns-lineage", HeaderValue::Int(state.lineage as i64)));
    }
    if let Some(id) = apns_id {
        headers.push(("x-apns-id", HeaderValue::Text(id.to_string())));
    }
    let queue = amqp::delay_queue_name(q, delay.level_ms);
    publish_retrying(s, "", &queue, body, || {
        inc.copy_props(&headers, delay.ttl_ms)
    })
    .await
}

/// A confirmed publish, tried up to three times while the channel is healthy.
async fn publish_retrying(
    s: &Session,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: impl Fn() -> lapin::BasicProperties,
) -> Result<(), PublishError> {
    let mut last = None;
    for pause in [0u64, 50, 250] {
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        match s
            .publisher
            .publish(exchange, routing_key, body, props())
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if e.is_refusal() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("three attempts"))
}

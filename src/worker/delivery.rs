//! One delivery, from bytes to its settlement: decode; expiry; the memory of recent
//! outcomes; the app's circuit; the send; the decision (`settle::decide`). Then
//! `execute` carries it out and the observer reports it. One task per delivery.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use apns::SendError;
use apns::classify::{Outcome, RetryCause};

use super::acker::Guard;
use super::circuit::Gate;
use super::execute::{self, Session, Settling};
use super::observe::{Report, Sent};
use super::recent::{Claim, Key};
use super::state::Worker;
use crate::amqp::Incoming;
use crate::job::control::Control;
use crate::job::{self, Envelope, Job, JobError};
use crate::obs::SendStatus;
use crate::outcomes;
use crate::settle::{self, AckKind, Settlement};

/// Counts a delivery as in flight for as long as its task lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What was decided for one decoded job, and the send behind it, if any.
pub(super) struct Decision {
    pub(super) settlement: Settlement,
    pub(super) sent: Option<Sent>,
    pub(super) remembered: bool,
}

impl Decision {
    pub(super) fn unsent(settlement: Settlement) -> Decision {
        Decision {
            settlement,
            sent: None,
            remembered: false,
        }
    }
}

/// Is this APNs' 400 BadDeviceToken (which the environment guard looks into)?
fn is_bad_device_token(o: &Outcome) -> bool {
    matches!(
        o,
        Outcome::TokenDead {
            status: 400,
            reason: apns::Reason::BadDeviceToken,
            ..
        }
    )
}

/// The endpoint an app sends to, as configured.
fn endpoint_of(w: &Worker, app: &str) -> String {
    w.config()
        .apps
        .get(app)
        .map(|a| a.endpoint.to_string())
        .unwrap_or_default()
}

/// Send to APNs, inside a client span when job spans are on (OpenTelemetry's HTTP
/// client conventions, v1.37.0): `POST /3/device/{device_token}` (a broadcast:
/// `POST /4/broadcasts/apps/{bundle_id}`), the route as a template and the URL with the
/// token `REDACTED`, so no device token is recorded.
async fn traced_send(
    w: &Worker,
    app: &str,
    n: &apns::Notification,
    proceed: impl Fn() -> bool,
) -> Result<apns::Delivery, SendError> {
    if !crate::obs::telemetry::job_spans() {
        return w.client.send_checked(app, n, proceed).await;
    }
    let (host, port) = w
        .config()
        .apps
        .get(app)
        .map(|a| (a.endpoint.host().to_string(), a.endpoint.port()))
        .unwrap_or_default();
    // A broadcast's path names only the bundle id, which is no secret.
    let (name, template, path) = match n.channel_id() {
        Some(_) => (
            "POST /4/broadcasts/apps/{bundle_id}",
            "/4/broadcasts/apps/{bundle_id}",
            format!("/4/broadcasts/apps/{}", n.topic()),
        ),
        None => (
            "POST /3/device/{device_token}",
            "/3/device/{device_token}",
            "/3/device/REDACTED".to_string(),
        ),
    };
    let span = tracing::info_span!(
        "apns request",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        url.template = template,
        url.full = %format!("https://{host}:{port}{path}"),
        server.address = %host,
        server.port = port,
        network.protocol.name = "http",
        network.protocol.version = "2",
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        apns.app = app,
        apns.reason = tracing::field::Empty,
    );
    let sent =
        tracing::Instrument::instrument(w.client.send_checked(app, n, proceed), span.clone()).await;
    match &sent {
        Ok(d) => {
            let status = d.response.status;
            span.record("http.response.status_code", status);
            if let Some(r) = &d.response.reason {
                span.record("apns.reason", r.as_str());
            }
            if status >= 400 {
                span.record("error.type", status.to_string().as_str());
                span.record("otel.status_code", "error");
            }
        }
        Err(e) => {
            let kind = match e {
                SendError::NotSent(_) | SendError::Withdrawn => "not_sent",
                SendError::Unknown(_) => "no_answer",
                _ => "_OTHER",
            };
            span.record("error.type", kind);
            span.record("otel.status_code", "error");
        }
    }
    sent
}

/// How often a message looks again whether its twin in flight has its answer.
const TWIN_POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One delivery, from bytes to settlement; inside a job span when traces are exported.
///
/// The job's state machine is boxed: the spawned task then holds a pointer, and the
/// task's own moves (spawn, completion) copy a few bytes instead of the whole state.
pub async fn process(w: Arc<Worker>, s: Arc<Session>, inc: Incoming, guard: Guard) {
    if crate::obs::telemetry::job_spans() {
        let span = job_span(&w, &inc);
        tracing::Instrument::instrument(Box::pin(process_job(w, s, inc, guard)), span).await
    } else {
        Box::pin(process_job(w, s, inc, guard)).await
    }
}

/// The job's span, a child of the producer's `traceparent`, with the attributes of
/// OpenTelemetry's messaging conventions (semantic conventions v1.37.0: a push-based
/// `process` span); the APNs result, and `error.type` when the job was not settled
/// as done, are recorded on it by the observer.
fn job_span(w: &Worker, inc: &Incoming) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let queue = w
        .consumed
        .queues
        .get(inc.source)
        .map_or(w.cfg.queues.jobs.as_str(), |(name, _)| name.as_str());
    let (host, port) = w.broker_address();
    let span = tracing::info_span!(
        "process job",
        otel.name = %format!("process {queue}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %queue,
        messaging.message.id = tracing::field::Empty,
        messaging.message.body.size = inc.body.len(),
        messaging.rabbitmq.message.delivery_tag = inc.tag,
        server.address = host.as_str(),
        server.port = port,
        error.type = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        apns.app = tracing::field::Empty,
        apns.id = tracing::field::Empty,
        apns.attempt = tracing::field::Empty,
        apns.status = tracing::field::Empty,
        apns.reason = tracing::field::Empty,
        apns.outcome = tracing::field::Empty,
    );
    if let Some(id) = inc.message_id() {
        span.record("messaging.message.id", id);
    }
    let headers = crate::obs::telemetry::HeaderExtractor(inc.text_headers());
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id().to_string();
    span.record("trace_id", trace_id.as_str());
    span
}

async fn process_job(w: Arc<Worker>, s: Arc<Session>, inc: Incoming, guard: Guard) {
    let _in_flight = InFlight::new(&w.health.in_flight);
    // The worker's own headers, trusted on its own delay queues' copies only.
    let control = job::control::read(&inc.control_headers(), &w.cfg.queues.retry_prefix);
    let Control {
        attempts: attempts_before,
        hop,
        apns_id,
        lineage,
        from_delay_queue,
        config_waits,
    } = control.clone().unwrap_or_default();
    let env = Envelope {
        content_type: inc.content_type(),
        message_id: inc.message_id(),
        apns_id_header: apns_id,
    };
    let decoded = match control {
        Err(e) => Err(JobError::from(e)),
        Ok(_) => job::decode_limited(&inc.body, &env, &w.apps, w.job_limits()),
    };
    let mut decision = match &decoded {
        Err(e) => Decision::unsent(match e.unknown_route() {
            Some(reason) => settle::unknown_route(
                reason,
                &e.to_string(),
                config_waits,
                attempts_before,
                &w.cfg.retry,
                &mut fastrand::Rng::new(),
            ),
            None => settle::invalid_job(&e.to_string(), attempts_before),
        }),
        Ok(job) if job.fanout.is_some() => {
            let ctl = execute::CopyState {
                attempts: attempts_before,
                config_waits,
                lineage,
                hop,
            };
            let consult = inc.redelivered || from_delay_queue;
            return super::fanout::process(&w, &s, &inc, guard, job, ctl, consult).await;
        }
        Ok(job) => {
            let consult = inc.redelivered || from_delay_queue;
            let step = (lineage, hop);
            let _send = w.send_permit(inc.urgent).await;
            decide(
                &w,
                &s,
                job,
                &job.notification,
                attempts_before,
                step,
                consult,
            )
            .await
        }
    };
    if let Some(sent) = &mut decision.sent {
        // Sent (or tried) again: it may be a duplicate of another process's send.
        sent.redelivered = inc.redelivered;
    }
    let job = decoded.as_ref().ok();
    let key = job.and_then(Job::apns_id).map(|apns_id| Key {
        apns_id,
        lineage,
        hop,
    });
    let app = job
        .map(|j| j.app.as_str())
        .or_else(|| w.apps.app_hint(&inc.body));
    // A job that did not decode (invalid, or its app or topic unknown here) still names
    // its id and token for its receipt and log line, when its body says them.
    let hints = match job {
        Some(_) => job::Hints::default(),
        None => job::hints(&inc.body),
    };
    let job_id = job
        .and_then(|j| j.job_id.as_deref())
        .or(hints.id.as_deref())
        .or(inc.message_id());
    let device_token = job
        .and_then(|j| j.notification.device_token())
        .or(hints.device_token.as_deref());
    // The apns-id it has (or will have, once decoded): from its id or message id.
    let apns_id = key
        .map(|k| k.apns_id)
        .or_else(|| job::derive_apns_id(hints.id.as_deref(), &env));
    let channel_id = job
        .and_then(|j| j.notification.channel_id())
        .or(hints.channel_id.as_deref());
    let receipts: Vec<outcomes::Receipt> = if w.cfg.queues.outcomes {
        let subject = outcomes::Subject {
            job_id,
            apns_id,
            app,
            device_token,
            channel_id,
            attempts_before,
        };
        outcomes::receipt(&subject, &decision.settlement, SystemTime::now())
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    let settling = Settling {
        inc: &inc,
        key,
        stamp_apns_id: job.is_some_and(|j| j.job_id.is_none()),
        control: execute::CopyState {
            attempts: attempts_before,
            config_waits,
            lineage,
            hop,
        },
        receipts: &receipts,
    };
    let carried_out = execute::carry_out(
        &s,
        &w.cfg.queues,
        &w.recent,
        &settling,
        &decision.settlement,
        guard,
    )
    .await;
    w.observer.delivery(&Report {
        app,
        apns_id,
        device_token,
        channel_id,
        attempts_before,
        message_id: inc.message_id(),
        trace_id: inc.trace_id(),
        published_at_ms: published_at_ms(&inc),
        remembered: decision.remembered,
        sent: decision.sent.as_ref(),
        settlement: &decision.settlement,
        carried_out: &carried_out,
    });
}

/// When the job was published, in ms since the epoch: the producer's
/// `x-published-at-ms` header, else the AMQP timestamp (whole seconds).
pub(super) fn published_at_ms(inc: &Incoming) -> Option<u64> {
    inc.header_u64("x-published-at-ms")
        .or_else(|| inc.timestamp().map(|s| s * 1000))
}

/// Send one notification of `job` (`n`: the job's own, or one token's of a fan-out
/// job) and decide its settlement. The caller holds a permit of the replica's send
/// bound (`worker.max_notifications_in_flight`).
pub(super) async fn decide(
    w: &Worker,
    s: &Session,
    job: &Job,
    n: &apns::Notification,
    attempts_before: u32,
    (lineage, hop): (u64, u32),
    // A redelivery, or a worker-made copy of which a twin may exist (a publish whose
    // confirm was lost; RabbitMQ's at-least-once dead-lettering): if this message's
    // answer is known, use it; if its twin is being sent, wait for its answer.
    consult: bool,
) -> Decision {
    if job.expired(now_secs()) {
        return Decision::unsent(Settlement::Ack(AckKind::Expired));
    }
    let apns_id = n.apns_id().expect("decode always sets an apns-id");
    let key = Key {
        apns_id,
        lineage,
        hop,
    };
    let mut rng = fastrand::Rng::new();
    let ctx = || settle::Context {
        retry: &w.cfg.retry,
        attempts_before,
        device_token: n.device_token(),
        channel_id: n.channel_id(),
        topic: n.topic(),
        app: &job.app,
        job_id: job.job_id.as_deref(),
        apns_id: Some(apns_id.to_string()),
        observed_at: SystemTime::now(),
    };
    let twin_bound = Instant::now() + w.cfg.apns.send_timeout() + w.cfg.apns.request_timeout();
    loop {
        match w.recent.claim(key, consult) {
            Claim::Mine => break,
            Claim::Known(entry) => {
                // Settled already (the ack was lost): ack again. Not yet (a publish
                // failed): carry out the same settlement again.
                let settlement = match (entry.settled, &entry.accepted_elsewhere) {
                    (true, _) => Settlement::Ack(AckKind::AlreadySettled),
                    (false, Some(by)) => {
                        settle::environment_mismatch(&ctx(), &endpoint_of(w, &job.app), by)
                    }
                    (false, None) => settle::decide(&entry.outcome, &ctx(), &mut rng),
                };
                return Decision {
                    settlement,
                    sent: None,
                    remembered: true,
                };
            }
            Claim::InFlight if Instant::now() < twin_bound => {
                tokio::time::sleep(TWIN_POLL).await;
            }
            // Its twin never answered within a send's bound: send this one.
            Claim::InFlight => {
                let _ = w.recent.claim(key, false);
                break;
            }
        }
    }
    // Parked unsent. Remembered like an answer, so that a twin of this message (or its
    // redelivery) is settled from it: acked once this park's copy is confirmed, and
    // the job goes on as one copy, not two.
    let park = |rng: &mut fastrand::Rng| {
        let parked = Outcome::CredentialsBroken {
            status: 0,
            reason: None,
        };
        w.recent.insert(key, parked.clone());
        Decision::unsent(settle::decide(&parked, &ctx(), rng))
    };
    let gate = match w.circuits.of(&job.app) {
        Some(mut c) => c.gate(Instant::now()),
        None => Gate::Send,
    };
    if gate == Gate::Park {
        return park(&mut rng);
    }
    let started = Instant::now();
    // Asked again when a stream is granted: jobs that passed the gate before the app's
    // credentials were found broken, and still wait for a stream, are parked unsent;
    // jobs whose broker session is gone are not sent at all (the broker has them back).
    let proceed = || {
        !s.is_gone()
            && (gate == Gate::Probe || w.circuits.of(&job.app).is_none_or(|c| c.is_closed()))
    };
    let sent = traced_send(w, &job.app, n, proceed).await;
    if let Err(SendError::Withdrawn) = sent {
        if !s.is_gone() {
            return park(&mut rng);
        }
        w.recent.release(&key);
        if gate == Gate::Probe {
            if let Some(mut c) = w.circuits.of(&job.app) {
                c.probe_inconclusive(Instant::now());
            }
        }
        return Decision::unsent(Settlement::Requeue {
            reason: "SessionLost",
        });
    }
    let outcome = match &sent {
        Ok(d) => d.outcome.clone(),
        Err(e) => e.outcome(),
    };
    let status = match (&sent, &outcome) {
        (Ok(d), _) => SendStatus::Http(d.response.status),
        (Err(_), Outcome::RetryLater(RetryCause::NotSent(_))) => SendStatus::NotSent,
        (Err(_), _) => SendStatus::Unknown,
    };
    let secs = started.elapsed().as_secs_f64();
    if let Some(mut c) = w.circuits.of(&job.app) {
        match &outcome {
            Outcome::CredentialsBroken { status, reason } => {
                let was_closed = c.is_closed();
                c.credentials_broken(Instant::now());
                if was_closed {
                    w.observer.app_paused(&job.app, *status, reason.as_ref());
                }
            }
            Outcome::RefreshToken => {
                let was_closed = c.is_closed();
                c.credentials_broken(Instant::now());
                if was_closed {
                    w.observer
                        .app_paused(&job.app, 403, Some(&apns::Reason::ExpiredProviderToken));
                }
            }
            Outcome::TokenThrottled => {
                if c.token_throttled(Instant::now()) {
                    let reason = apns::Reason::TooManyProviderTokenUpdates;
                    w.observer.app_paused(&job.app, 429, Some(&reason));
                }
            }
            Outcome::RetryLater(RetryCause::NotSent(_) | RetryCause::Unknown(_)) => {
                if gate == Gate::Probe {
                    c.probe_inconclusive(Instant::now());
                }
            }
            _ => c.credentials_ok(),
        }
    }
    // The environment guard: a token called bad here may be good in the app's other
    // environment (a sandbox token sent to production). Send it there once; accepted,
    // it is no cleanup but an environment-mismatch event; not answered, a retry (the
    // token is not reported dead on a doubt).
    let mut outcome = outcome;
    let mut accepted_elsewhere = None;
    // Only a device push: a broadcast has no token to check in another environment.
    if n.device_token().is_some() && is_bad_device_token(&outcome) {
        match w.client.send_other_environment(&job.app, n).await {
            None => {}
            Some(Ok(d)) if d.outcome == Outcome::Delivered => {
                accepted_elsewhere = w
                    .config()
                    .apps
                    .get(&job.app)
                    .and_then(|a| a.guard_endpoint(&job.app).ok().flatten())
                    .map(|e| e.to_string());
            }
            Some(Ok(d))
                if matches!(
                    d.outcome,
                    Outcome::TokenDead { .. } | Outcome::Rejected { .. }
                ) => {}
            Some(Ok(d)) => outcome = d.outcome,
            Some(Err(e)) => outcome = e.outcome(),
        }
        w.observer
            .environment_check(&job.app, accepted_elsewhere.is_some());
    }
    w.recent
        .insert_answer(key, outcome.clone(), accepted_elsewhere.clone());
    let settlement = match &accepted_elsewhere {
        Some(by) => settle::environment_mismatch(&ctx(), &endpoint_of(w, &job.app), by),
        None => settle::decide(&outcome, &ctx(), &mut rng),
    };
    Decision {
        settlement,
        sent: Some(Sent {
            status,
            secs,
            reason: sent.as_ref().ok().and_then(|d| d.response.reason.clone()),
            outcome,
            redelivered: false,
        }),
        remembered: false,
    }
}

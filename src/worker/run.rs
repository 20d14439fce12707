//! `apns-worker run`: the broker session loop, one task per delivery, and the one
//! place where a settlement is carried out.
//!
//! Data flow: delivery → `job::decode` → (circuit gate) → `ApnsClient::send_checked`
//! (the circuit asked again when a stream is granted) → `Outcome` → `settle::decide` →
//! `execute` (publish if needed, confirmed) → guard
//! ack/requeue → `Acker` (coalesced acks on the delivery's own channel).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backon::BackoffBuilder;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::acker::{Acker, Guard};
use super::amqp::{self, Consumer, HeaderValue, Incoming, PublishError, Publisher};
use super::circuit::{Circuit, Gate};
use super::health::Health;
use super::job::{self, AppDirectory, Envelope, Job};
use super::recent::{Key, Recent};
use super::settle::{self, AckKind, Settlement};
use super::stats::{Stats, Summary};
use crate::apns::classify::{Outcome, RetryCause};
use crate::apns::client::{ApnsClient, ClientError, SendError};
use crate::apns::jwt::{Clock, SystemClock};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

/// Shared by every delivery task.
pub struct Worker {
    pub cfg: Config,
    pub client: ApnsClient,
    pub apps: AppDirectory,
    pub circuits: BTreeMap<String, Mutex<Circuit>>,
    pub stats: Stats,
    pub recent: Recent,
    pub health: Health,
    pub metrics: crate::metrics::Metrics,
}

impl Worker {
    /// Load credentials and start the APNs connections.
    pub fn start(cfg: Config, clock: Arc<dyn Clock>) -> Result<Arc<Worker>, RunError> {
        cfg.check()?;
        let client = ApnsClient::start(&cfg.apps, &cfg.apns, clock)?;
        let circuits = cfg
            .apps
            .keys()
            .map(|name| {
                let c = Circuit::new(
                    Duration::from_millis(cfg.circuit.open_ms),
                    Duration::from_millis(cfg.circuit.max_open_ms),
                );
                (name.clone(), Mutex::new(c))
            })
            .collect();
        Ok(Arc::new(Worker {
            apps: AppDirectory::from_config(&cfg.apps),
            recent: Recent::new(cfg.worker.dedupe_capacity),
            client,
            circuits,
            stats: Stats::default(),
            health: Health::default(),
            metrics: crate::metrics::Metrics::default(),
            cfg,
        }))
    }

    /// Ready: connected, consuming, and at least one app not paused.
    pub fn ready(&self) -> bool {
        self.health.broker_connected.load(Ordering::Relaxed)
            && self.health.consuming.load(Ordering::Relaxed)
            && (self.circuits.is_empty()
                || self
                    .circuits
                    .values()
                    .any(|c| c.lock().expect("circuit lock").is_closed()))
    }
}

/// Run until `shutdown` resolves; then drain, requeue what is left, and return the summary.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let worker = Worker::start(cfg, Arc::new(SystemClock))?;
    if crate::telemetry::otlp_metrics_on() {
        crate::otel_metrics::install(&worker);
    }
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = worker.cfg.admin.addr()? {
        let (_, admin) = crate::admin::bind(addr, worker.clone(), async move {
            let _ = admin_stopped.await;
        })
        .await?;
        tokio::spawn(admin);
    }
    let summary = serve(worker, shutdown).await;
    let _ = stop_admin.send(());
    Ok(summary)
}

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// One broker connection's state shared with its delivery tasks.
struct Session {
    publisher: Publisher,
    /// Rung when a publish shows the channel or topology is broken.
    lost: Notify,
}

enum End {
    Shutdown,
    Lost(JoinSet<()>),
}

/// The session loop of an already started worker.
pub async fn serve(worker: Arc<Worker>, shutdown: impl Future<Output = ()>) -> Summary {
    tokio::pin!(shutdown);
    let b = &worker.cfg.broker;
    let new_backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(b.reconnect_min_ms))
            .with_max_delay(Duration::from_millis(b.reconnect_max_ms))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = new_backoff();
    let mut previous: Option<JoinSet<()>> = None;
    loop {
        let opened = tokio::select! {
            r = open_session(&worker) => r,
            _ = &mut shutdown => break,
        };
        let (conn, session) = match opened {
            Ok(s) => s,
            Err(e) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker session failed to start");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = &mut shutdown => break,
                }
            }
        };
        let session_started = Instant::now();
        Stats::inc(&worker.stats.broker_sessions);
        worker
            .health
            .broker_connected
            .store(true, Ordering::Relaxed);
        // Let the previous session's sends finish first, so that the jobs the broker
        // redelivers find their outcomes in `recent` instead of being sent again.
        if let Some(mut old) = previous.take() {
            let bound = worker.cfg.apns.send_timeout() + worker.cfg.apns.request_timeout();
            let _ = tokio::time::timeout(bound, async { while old.join_next().await.is_some() {} })
                .await;
            old.abort_all();
        }
        let end = consume(&worker, &conn, session.clone(), &mut shutdown).await;
        worker.health.consuming.store(false, Ordering::Relaxed);
        worker
            .health
            .broker_connected
            .store(false, Ordering::Relaxed);
        match end {
            End::Shutdown => {
                let _ = session.publisher.channel().close(200, "bye".into()).await;
                amqp::close(&conn).await;
                break;
            }
            End::Lost(tasks) => {
                amqp::close(&conn).await;
                previous = Some(tasks);
                // A session that ends soon after it began (a publish that keeps failing,
                // a flapping broker) must not turn into a tight reconnect loop.
                if session_started.elapsed() >= STABLE_SESSION {
                    delays = new_backoff();
                    tracing::warn!("broker session lost; reconnecting");
                } else {
                    let wait = delays.next().unwrap_or(Duration::from_secs(30));
                    tracing::warn!(
                        retry_in_ms = wait.as_millis() as u64,
                        "broker session lost soon after it began; reconnecting after a pause"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
    }
    if let Some(mut old) = previous.take() {
        old.abort_all();
        while old.join_next().await.is_some() {}
    }
    worker.client.close(Duration::from_secs(1)).await;
    let summary = worker.stats.summary();
    tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "worker stopped");
    summary
}

async fn open_session(w: &Worker) -> Result<(lapin::Connection, Arc<Session>), amqp::AmqpError> {
    let conn = amqp::connect(&w.cfg.broker).await?;
    let publisher = Publisher::open(&conn).await?;
    if w.cfg.queues.declare {
        amqp::declare_topology(publisher.channel(), &w.cfg.queues, &w.cfg.retry).await?;
    }
    tracing::info!(connection_name = %w.cfg.broker.connection_name(), queue = %w.cfg.queues.jobs, "connected to the broker");
    Ok((
        conn,
        Arc::new(Session {
            publisher,
            lost: Notify::new(),
        }),
    ))
}

async fn consume(
    w: &Arc<Worker>,
    conn: &lapin::Connection,
    session: Arc<Session>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> End {
    let tag = format!(
        "{}-{}",
        w.cfg.broker.connection_name(),
        uuid::Uuid::new_v4()
    );
    let mut consumer =
        match Consumer::start(conn, &w.cfg.queues.jobs, w.cfg.broker.prefetch, tag).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot consume");
                return End::Lost(JoinSet::new());
            }
        };
    let ws = &w.cfg.worker;
    let acker = Acker::spawn(
        consumer.channel.clone(),
        ws.ack_batch,
        Duration::from_millis(ws.ack_flush_ms),
        usize::from(w.cfg.broker.prefetch) / 2,
    );
    w.health.consuming.store(true, Ordering::Relaxed);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                drain(w, &consumer, &acker, tasks).await;
                return End::Shutdown;
            }
            _ = session.lost.notified() => return End::Lost(tasks),
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a delivery task panicked; its job was requeued");
                    }
                }
            }
            next = consumer.next() => match next {
                Some(Ok(inc)) => {
                    Stats::inc(&w.stats.received);
                    let guard = acker.guard(inc.tag);
                    tasks.spawn(process(w.clone(), session.clone(), inc, guard));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer ended");
                    return End::Lost(tasks);
                }
                None => {
                    tracing::warn!("the broker cancelled the consumer");
                    return End::Lost(tasks);
                }
            }
        }
    }
}

/// SIGTERM: no new deliveries, in-flight jobs get `drain_secs` to finish, the rest is
/// requeued (their guards drop), acks are flushed.
async fn drain(w: &Worker, consumer: &Consumer, acker: &Acker, mut tasks: JoinSet<()>) {
    consumer.cancel().await;
    w.health.consuming.store(false, Ordering::Relaxed);
    let deadline = Duration::from_secs(w.cfg.worker.drain_secs);
    tracing::info!(
        in_flight = tasks.len(),
        deadline_secs = deadline.as_secs(),
        "draining"
    );
    let finished = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "drain deadline reached; requeueing the rest"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    acker.flush().await;
    consumer.close().await;
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A short prefix of a device token, enough to correlate logs without exposing it.
pub fn token_prefix(t: &str) -> &str {
    &t[..t.len().min(8)]
}

/// Counts a delivery as in flight for as long as its task lives.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a std::sync::atomic::AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One delivery, from bytes to settlement; inside a job span when traces are exported.
///
/// The job's state machine is boxed: the spawned task then holds a pointer, and the
/// task's own moves (spawn, completion) copy a few bytes instead of the whole state.
async fn process(w: Arc<Worker>, s: Arc<Session>, inc: Incoming, guard: Guard) {
    if crate::telemetry::job_spans() {
        let span = job_span(&w, &inc);
        tracing::Instrument::instrument(Box::pin(process_job(w, s, inc, guard)), span).await
    } else {
        Box::pin(process_job(w, s, inc, guard)).await
    }
}

/// The job's span, a child of the producer's `traceparent`, with OpenTelemetry's
/// messaging attributes; the APNs result is recorded on it as it becomes known.
fn job_span(w: &Worker, inc: &Incoming) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!(
        "process job",
        otel.name = %format!("{} process", w.cfg.queues.jobs),
        otel.kind = "consumer",
        messaging.system = "rabbitmq",
        messaging.destination.name = %w.cfg.queues.jobs,
        messaging.operation.type = "process",
        messaging.message.id = inc.message_id().unwrap_or(""),
        messaging.rabbitmq.message.delivery_tag = inc.tag,
        trace_id = tracing::field::Empty,
        apns.app = tracing::field::Empty,
        apns.id = tracing::field::Empty,
        apns.attempt = tracing::field::Empty,
        apns.status = tracing::field::Empty,
        apns.reason = tracing::field::Empty,
        apns.outcome = tracing::field::Empty,
    );
    let headers = crate::telemetry::HeaderExtractor(inc.text_headers());
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers));
    let _ = span.set_parent(parent);
    use opentelemetry::trace::TraceContextExt;
    let trace_id = span.context().span().span_context().trace_id().to_string();
    span.record("trace_id", trace_id.as_str());
    span
}

async fn process_job(w: Arc<Worker>, s: Arc<Session>, inc: Incoming, guard: Guard) {
    let _in_flight = InFlight::new(&w.health.in_flight);
    let attempts_before = inc.header_u32("x-attempts").unwrap_or(0);
    let hop = inc.header_u32("x-apns-hop").unwrap_or(0);
    let env = Envelope {
        content_type: inc.content_type(),
        message_id: inc.message_id(),
        apns_id_header: inc.header_str("x-apns-id"),
    };
    let decoded = job::decode(&inc.body, &env, &w.apps, w.cfg.worker.max_job_bytes);
    let settlement = match &decoded {
        Err(e) => {
            tracing::warn!(
                error = %e,
                attempts = attempts_before,
                message_id = inc.message_id().unwrap_or(""),
                trace_id = inc.trace_id().unwrap_or(""),
                "invalid job; dead-lettering"
            );
            settle::invalid_job(&e.to_string(), attempts_before)
        }
        Ok(job) => decide_job(&w, &inc, job, attempts_before, hop).await,
    };
    execute(&w, &s, &inc, decoded.as_ref().ok(), hop, settlement, guard).await;
}

async fn decide_job(
    w: &Worker,
    inc: &Incoming,
    job: &Job,
    attempts_before: u32,
    hop: u32,
) -> Settlement {
    if job.expired(now_secs()) {
        return Settlement::Ack(AckKind::Expired);
    }
    let apns_id = job.apns_id().expect("decode always sets an apns-id");
    let key = Key { apns_id, hop };
    let n = &job.notification;
    let mut rng = fastrand::Rng::new();
    let ctx = |outcome_time| settle::Context {
        retry: &w.cfg.retry,
        attempts_before,
        device_token: n.device_token(),
        topic: n.topic(),
        app: &job.app,
        job_id: job.job_id.as_deref(),
        apns_id: Some(apns_id.to_string()),
        observed_at: outcome_time,
    };
    // A redelivery, or a worker-made copy (hop > 0) of which a twin may exist after a
    // publish whose confirm was lost: if this message's answer is known, use it.
    if inc.redelivered || hop > 0 {
        if let Some(entry) = w.recent.get(&key) {
            // Its answer is known: settled already (the ack was lost) → ack again;
            // not yet (a publish failed) → carry out the same settlement again.
            tracing::info!(apns_id = %apns_id, settled = entry.settled, "redelivered job already answered by APNs; settling without sending");
            if entry.settled {
                return Settlement::Ack(AckKind::AlreadySettled);
            }
            return settle::decide(&entry.outcome, &ctx(SystemTime::now()), &mut rng);
        }
    }
    let circuit = w.circuits.get(&job.app).expect("every app has a circuit");
    let gate = circuit.lock().expect("circuit lock").gate(Instant::now());
    let park = |rng: &mut fastrand::Rng| {
        let parked = Outcome::CredentialsBroken {
            status: 0,
            reason: None,
        };
        settle::decide(&parked, &ctx(SystemTime::now()), rng)
    };
    if gate == Gate::Park {
        return park(&mut rng);
    }
    let started = Instant::now();
    // Asked again when a stream is granted: jobs that passed the gate before the app's
    // credentials were found broken, and still wait for a stream, are parked unsent.
    let proceed = || gate == Gate::Probe || circuit.lock().expect("circuit lock").is_closed();
    let sent = w.client.send_checked(&job.app, n, proceed).await;
    if let Err(SendError::Withdrawn) = sent {
        return park(&mut rng);
    }
    if inc.redelivered {
        // Sent (or tried) again: it may be a duplicate of another process's send.
        Stats::inc(&w.stats.redelivered_resent);
    }
    let outcome = match &sent {
        Ok(d) => d.outcome.clone(),
        Err(e) => e.outcome(),
    };
    let status = match (&sent, &outcome) {
        (Ok(d), _) => crate::metrics::SendStatus::Http(d.response.status),
        (Err(_), Outcome::RetryLater(RetryCause::NotSent(_))) => {
            crate::metrics::SendStatus::NotSent
        }
        (Err(_), _) => crate::metrics::SendStatus::Unknown,
    };
    w.metrics
        .observe_send(&job.app, status, started.elapsed().as_secs_f64());
    {
        let mut c = circuit.lock().expect("circuit lock");
        match &outcome {
            Outcome::CredentialsBroken { .. } | Outcome::RefreshToken => {
                let was_closed = c.is_closed();
                c.credentials_broken(Instant::now());
                if was_closed {
                    tracing::error!(app = %job.app, reason = ?outcome, "APNs refuses this app's credentials; pausing the app (its jobs wait, other apps keep flowing)");
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
    if matches!(outcome, Outcome::RetryLater(RetryCause::Unknown(_))) {
        Stats::inc(&w.stats.unknown_outcomes);
    }
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("apns.app", job.app.as_str());
        span.record("apns.id", apns_id.to_string().as_str());
        span.record("apns.attempt", attempts_before + 1);
        if let Ok(d) = &sent {
            span.record("apns.status", d.response.status);
            if let Some(r) = &d.response.reason {
                span.record("apns.reason", r.as_str());
            }
        }
    }
    if !matches!(outcome, Outcome::Delivered) {
        let status = sent.as_ref().ok().map(|d| d.response.status);
        tracing::info!(
            app = %job.app,
            token = token_prefix(n.device_token()),
            apns_id = %apns_id,
            status = status.unwrap_or(0),
            outcome = ?outcome,
            attempt = attempts_before + 1,
            trace_id = inc.trace_id().unwrap_or(""),
            "notification not delivered"
        );
    }
    w.recent.insert(key, outcome.clone());
    settle::decide(&outcome, &ctx(SystemTime::now()), &mut rng)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The one place a settlement is carried out: publish what it needs (confirmed), then
/// ack; if the publish fails, requeue instead. Never both, never neither.
async fn execute(
    w: &Worker,
    s: &Session,
    inc: &Incoming,
    job: Option<&Job>,
    hop: u32,
    settlement: Settlement,
    guard: Guard,
) {
    let q = &w.cfg.queues;
    let apns_id = job.and_then(|j| j.apns_id()).map(|u| u.to_string());
    let result: Result<(), PublishError> = match &settlement {
        Settlement::Ack(_) => Ok(()),
        Settlement::Cleanup(ev) => {
            let body = serde_json::to_vec(ev).expect("event serialises");
            let id = uuid::Uuid::new_v4().to_string();
            publish_retrying(s, &q.cleanup_exchange, &ev.topic, &body, || {
                amqp::event_props(&id)
            })
            .await
        }
        Settlement::DeadLetter(dl) => {
            let mut headers = vec![
                ("x-apns-reason", HeaderValue::Text(dl.reason.clone())),
                (
                    "x-error",
                    HeaderValue::Text(truncate(&dl.error, 1024).to_string()),
                ),
                ("x-attempts", HeaderValue::Int(i64::from(dl.attempts))),
            ];
            if let Some(st) = dl.status {
                headers.push(("x-apns-status", HeaderValue::Int(i64::from(st))));
            }
            publish_retrying(s, &q.dead_letter_exchange, &q.jobs, &inc.body, || {
                inc.props_with(&headers, None)
            })
            .await
        }
        Settlement::Retry {
            attempt,
            delay,
            reason,
        } => {
            let headers = [
                ("x-attempts", HeaderValue::Int(i64::from(*attempt))),
                ("x-apns-last-reason", HeaderValue::Text(reason.clone())),
            ];
            to_delay_queue(s, q, inc, *delay, hop, apns_id.as_deref(), &headers).await
        }
        Settlement::Park { delay, reason } => {
            let headers = [("x-apns-parked", HeaderValue::Text(reason.clone()))];
            to_delay_queue(s, q, inc, *delay, hop, apns_id.as_deref(), &headers).await
        }
    };
    let st = &w.stats;
    match result {
        Ok(()) => {
            if let Some(apns_id) = job.and_then(|j| j.apns_id()) {
                w.recent.mark_settled(&Key { apns_id, hop });
            }
            let (counter, outcome, reason) = match &settlement {
                Settlement::Ack(AckKind::Delivered) => (&st.delivered, "delivered", ""),
                Settlement::Ack(AckKind::Expired) => (&st.expired, "expired", ""),
                Settlement::Ack(AckKind::AlreadySettled) => {
                    (&st.already_settled, "already_settled", "")
                }
                Settlement::Cleanup(ev) => {
                    (&st.token_cleanups, "token_cleanup", ev.reason.as_str())
                }
                Settlement::DeadLetter(dl) => {
                    st.dead_letter(&dl.reason);
                    w.metrics.dead_letter(&dl.reason);
                    (&st.dead_lettered_any, "dead_letter", dl.reason.as_str())
                }
                Settlement::Retry { reason, .. } => (&st.retried, "retry", reason.as_str()),
                Settlement::Park { reason, .. } => (&st.parked, "park", reason.as_str()),
            };
            Stats::inc(counter);
            w.metrics
                .job(job.map(|j| j.app.as_str()).unwrap_or(""), outcome, reason);
            tracing::Span::current().record("apns.outcome", outcome);
            if let Some(ms) = published_at_ms(inc) {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                w.metrics
                    .observe_end_to_end(now.saturating_sub(ms) as f64 / 1000.0);
            }
            guard.ack();
        }
        Err(e) => {
            Stats::inc(&st.publish_failures);
            Stats::inc(&st.requeued);
            w.metrics.job(
                job.map(|j| j.app.as_str()).unwrap_or(""),
                "requeued",
                "PublishFailed",
            );
            if matches!(e, PublishError::Channel(_)) {
                // The broker may have taken it before the channel died.
                Stats::inc(&st.uncertain_publishes);
            }
            tracing::error!(error = %e, "settlement publish failed; requeueing the job");
            if e.breaks_session() {
                s.lost.notify_one();
            }
            guard.requeue();
        }
    }
}

/// Republish a job to the delay queue of `delay` (a retry or a park): a new message,
/// one hop further, carrying its apns-id so the copy is recognised.
async fn to_delay_queue(
    s: &Session,
    q: &crate::config::QueueSettings,
    inc: &Incoming,
    delay: settle::DelayQueue,
    hop: u32,
    apns_id: Option<&str>,
    extra: &[(&'static str, HeaderValue)],
) -> Result<(), PublishError> {
    let mut headers = extra.to_vec();
    headers.push(("x-apns-hop", HeaderValue::Int(i64::from(hop) + 1)));
    if let Some(id) = apns_id {
        headers.push(("x-apns-id", HeaderValue::Text(id.to_string())));
    }
    let queue = amqp::delay_queue_name(q, delay.level_ms);
    publish_retrying(s, "", &queue, &inc.body, || {
        inc.props_with(&headers, Some(delay.ttl_ms))
    })
    .await
}

/// When the job was published, in ms since the epoch: the producer's
/// `x-published-at-ms` header, else the AMQP timestamp (whole seconds).
fn published_at_ms(inc: &Incoming) -> Option<u64> {
    inc.header_u64("x-published-at-ms")
        .or_else(|| inc.timestamp().map(|s| s * 1000))
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
            Err(e) if e.breaks_session() => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("three attempts"))
}

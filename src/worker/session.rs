//! Broker sessions: connect, declare, consume, and one task per delivery; on a lost
//! connection, reconnect with backoff after the old session's sends have finished; on
//! shutdown, drain (in-flight jobs get `drain_secs`, the rest is requeued).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures_util::StreamExt;
use tokio::task::JoinSet;

use super::acker::Acker;
use super::delivery;
use super::execute::Session;
use super::state::Worker;
use super::stats::Summary;
use crate::amqp::{self, Consumer, Publisher};

/// A session that lasted this long resets the reconnect backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);

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
    // The broker node tried first: after a lost session, the next one in the list.
    let mut first_node = 0;
    loop {
        let opened = tokio::select! {
            r = open_session(&worker, first_node) => r,
            _ = &mut shutdown => break,
        };
        let (conn, session, node) = match opened {
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
        worker.observer.session_started();
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
        // A new connection is not blocked until the broker says so.
        worker.health.set_broker_blocked(None);
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
                // Its unacked deliveries go back to the queue: what has not reached a
                // stream yet is withdrawn, not sent (another consumer gets it).
                session.mark_gone();
                amqp::close(&conn).await;
                previous = Some(tasks);
                // The node may be the one going down: start with the next one.
                first_node = node + 1;
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
    let summary = worker.observer.summary();
    tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "worker stopped");
    summary
}

/// Connect (to the first node that answers, from `first_node` on), declare, and say
/// which node it is; the node's index comes back with the session.
async fn open_session(
    w: &Worker,
    first_node: usize,
) -> Result<(lapin::Connection, Arc<Session>, usize), amqp::AmqpError> {
    let amqp::Connected { conn, index, node } =
        amqp::connect_from(&w.cfg.broker, first_node).await?;
    let node_name = format!("{}:{}", node.0, node.1);
    w.health.set_broker_node(node.0, node.1);
    let publisher = Publisher::open(
        &conn,
        Duration::from_millis(w.cfg.broker.confirm_timeout_ms),
        Default::default(),
    )
    .await?;
    if w.cfg.queues.declare {
        amqp::declare_topology(publisher.channel(), &w.cfg.queues, &w.cfg.retry).await?;
    }
    tracing::info!(connection_name = %w.cfg.broker.connection_name(), node = %node_name, queue = %w.cfg.queues.jobs, shards = w.cfg.queues.shards, "connected to the broker");
    Ok((conn, Arc::new(Session::new(publisher)), index))
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
    // The urgent lane first, then the ready queue (retries that are due), each with a
    // prefetch of its own, so the job queues' backlog cannot hold them back; then the
    // job queues, taking turns.
    let plan = &w.consumed;
    let mut consumer = match Consumer::start(conn, plan, tag).await {
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
        // Below the smallest prefetch of the channel's consumers: settled acks held behind
        // one slow delivery must not fill a consumer's whole window.
        usize::from(plan.smallest_prefetch() / 2).max(1),
    );
    w.health.consuming.store(true, Ordering::Relaxed);
    // The connection's own events: its failure is known here first (before the
    // consumer's stream ends), so the deliveries it held stop going out at once.
    let mut events = conn.events_listener();
    let mut tasks = JoinSet::new();
    // The broker blocks the connection (a resource alarm): no new deliveries until it
    // lifts; confirms wait without counting the time (lapin writes nothing meanwhile,
    // acks included).
    let mut blocked = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => {
                drain(w, &consumer, &acker, tasks).await;
                return End::Shutdown;
            }
            _ = session.lost.notified() => return End::Lost(tasks),
            Some(event) = events.next() => match event {
                lapin::Event::Error(e) => {
                    tracing::warn!(error = %e, "the broker connection failed");
                    return End::Lost(tasks);
                }
                lapin::Event::ConnectionBlocked(reason) => {
                    session.publisher.blocked().block(Instant::now());
                    w.health.set_broker_blocked(Some(reason.clone()));
                    blocked = true;
                    tracing::warn!(%reason, in_flight = tasks.len(), "the broker blocks this connection (a resource alarm): no new deliveries until it lifts; settlements wait for it");
                }
                lapin::Event::ConnectionUnblocked => {
                    let lasted = session.publisher.blocked().unblock(Instant::now());
                    w.health.set_broker_blocked(None);
                    blocked = false;
                    tracing::info!(blocked_ms = lasted.map(|d| d.as_millis() as u64), "the broker unblocked this connection; taking deliveries again");
                }
                _ => {}
            },
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    if e.is_panic() {
                        tracing::error!(error = %e, "a delivery task panicked; its job was requeued");
                    }
                }
            }
            next = consumer.next(), if !blocked => match next {
                Some(Ok(mut inc)) => {
                    inc.urgent = plan.urgent == Some(inc.source);
                    w.observer.received();
                    let guard = acker.guard(inc.tag);
                    tasks.spawn(delivery::process(w.clone(), session.clone(), inc, guard));
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
    w.health.draining.store(true, Ordering::Relaxed);
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

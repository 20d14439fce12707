//! The connections of one credentials scope (an app's certificate, or one of its keys):
//! keeps N connections open, replaces dead or drained ones with jittered exponential
//! backoff, and hands out one stream slot at a time on the connection with the most
//! free slots. When every slot is busy the caller waits, up to its deadline.
//!
//! A connection is never shared across scopes: APNs binds a connection to the team and
//! key of its first push.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{ConnState, ConnectOptions, Connection};
use crate::limiter::StreamPermit;

/// Process-wide connection ids, for logs and metrics.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub connect: ConnectOptions,
    pub connections: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a draining connection may take to finish its in-flight streams.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    #[error(
        "no free stream on any connection of {pool} within {waited_ms} ms ({open} open connections)"
    )]
    Timeout {
        pool: String,
        waited_ms: u128,
        open: usize,
    },
    #[error("connection pool {0} is closed")]
    Closed(String),
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub goaways: AtomicU64,
    pub closed_unexpectedly: AtomicU64,
}

pub struct Pool {
    name: String,
    opts: PoolOptions,
    slots: Vec<Mutex<Option<Arc<Connection>>>>,
    /// Bumped whenever a slot changes, so waiters look again.
    generation: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    next: AtomicUsize,
    pub stats: PoolStats,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A snapshot of one connection, for metrics and health.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The pool's slot (0 to connections - 1): stable across reconnects, so a metric
    /// labelled by it keeps a bounded number of series.
    pub slot: usize,
    /// The process-wide connection number (a new one per reconnect), for logs.
    pub id: u64,
    pub in_flight: usize,
    pub stream_limit: usize,
    pub responses: u64,
}

impl Pool {
    /// Create the pool and start connecting every slot.
    pub fn start(name: impl Into<String>, opts: PoolOptions) -> Arc<Pool> {
        let n = opts.connections.max(1);
        let pool = Arc::new(Pool {
            name: name.into(),
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            generation: watch::channel(0).0,
            closed: watch::channel(false).0,
            next: AtomicUsize::new(0),
            stats: PoolStats::default(),
            opts,
        });
        for i in 0..n {
            tokio::spawn(supervise(pool.clone(), i));
        }
        pool
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn slot(&self, i: usize) -> Option<Arc<Connection>> {
        self.slots[i].lock().expect("slot lock").clone()
    }

    /// The open connections now.
    pub fn open_connections(&self) -> Vec<Arc<Connection>> {
        (0..self.slots.len())
            .filter_map(|i| self.slot(i))
            .filter(|c| c.is_open())
            .collect()
    }

    pub fn connection_info(&self) -> Vec<ConnectionInfo> {
        (0..self.slots.len())
            .filter_map(|i| Some((i, self.slot(i)?)))
            .filter(|(_, c)| c.is_open())
            .map(|(slot, c)| ConnectionInfo {
                slot,
                id: c.id(),
                in_flight: c.limiter().in_flight(),
                stream_limit: c.limiter().limit(),
                responses: c.responses(),
            })
            .collect()
    }

    /// Wait until at least `n` connections are open (for warm-up and tests).
    pub async fn wait_open(&self, n: usize, timeout: Duration) -> bool {
        let mut gen_rx = self.generation.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.open_connections().len() >= n {
                    return;
                }
                if gen_rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }

    /// One stream slot on the open connection with the most free slots. Waits while
    /// all are busy or none is open, until `deadline`.
    pub async fn acquire(
        &self,
        deadline: Instant,
    ) -> Result<(Arc<Connection>, StreamPermit), AcquireError> {
        let started = Instant::now();
        let mut gen_rx = self.generation.subscribe();
        loop {
            gen_rx.borrow_and_update();
            if *self.closed.borrow() {
                return Err(AcquireError::Closed(self.name.clone()));
            }
            let n = self.slots.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(usize, Arc<Connection>)> = None;
            let mut open = Vec::with_capacity(n);
            for k in 0..n {
                let Some(c) = self.slot((start + k) % n) else {
                    continue;
                };
                if !c.is_open() {
                    continue;
                }
                let free = c.limiter().available();
                if free > 0 && best.as_ref().is_none_or(|(b, _)| free > *b) {
                    best = Some((free, c.clone()));
                }
                open.push(c);
            }
            if let Some((_, c)) = best {
                if let Ok(p) = c.limiter().try_acquire() {
                    return Ok((c, p));
                }
                continue;
            }
            // Every open connection is at its limit (or none is open): wait for a
            // slot, a change of connections, or the deadline.
            let waits: Vec<_> = open
                .iter()
                .map(|c| {
                    let c = c.clone();
                    c.limiter().clone().acquire().map(move |p| (c, p)).boxed()
                })
                .collect();
            let any_slot = async move {
                if waits.is_empty() {
                    std::future::pending::<(Arc<Connection>, Option<StreamPermit>)>().await
                } else {
                    futures_util::future::select_all(waits).await.0
                }
            };
            tokio::select! {
                (c, p) = any_slot => {
                    if let Some(p) = p {
                        if c.is_open() {
                            return Ok((c, p));
                        }
                    }
                }
                _ = gen_rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(AcquireError::Timeout {
                        pool: self.name.clone(),
                        waited_ms: started.elapsed().as_millis(),
                        open: open.len(),
                    });
                }
            }
        }
    }

    /// Stop: no new streams, let in-flight ones finish within `grace`, then close.
    pub async fn close(&self, grace: Duration) {
        self.closed.send_replace(true);
        self.bump();
        let conns: Vec<_> = (0..self.slots.len()).filter_map(|i| self.slot(i)).collect();
        for c in &conns {
            c.drain("shutting down");
        }
        let deadline = Instant::now() + grace;
        for c in &conns {
            wait_idle(c, deadline).await;
            c.close("shut down");
        }
        for s in &self.slots {
            s.lock().expect("slot lock").take();
        }
    }
}

/// Wait until a connection has no stream in flight or is closed, or `deadline`.
async fn wait_idle(c: &Connection, deadline: Instant) {
    let mut st = c.watch_state();
    while c.limiter().in_flight() > 0 && c.state() != ConnState::Closed && Instant::now() < deadline
    {
        // Streams end within their request timeout; look again often enough to close promptly.
        let _ = tokio::time::timeout(Duration::from_millis(20), st.changed()).await;
    }
}

fn backoff(opts: &PoolOptions) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(opts.backoff_min)
        .with_max_delay(opts.backoff_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Keep slot `i` connected for as long as the pool lives.
async fn supervise(pool: Arc<Pool>, i: usize) {
    let mut closed = pool.closed.subscribe();
    let mut delays = backoff(&pool.opts);
    loop {
        if *closed.borrow() {
            return;
        }
        let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
        let attempt = tokio::select! {
            r = Connection::connect(id, &pool.opts.connect) => r,
            _ = closed.wait_for(|c| *c) => return,
        };
        let healthy = match attempt {
            Ok(conn) => {
                pool.stats.connects.fetch_add(1, Ordering::Relaxed);
                *pool.slots[i].lock().expect("slot lock") = Some(conn.clone());
                pool.bump();
                let mut st = conn.watch_state();
                tokio::select! {
                    _ = st.wait_for(|s| *s != ConnState::Open) => {}
                    _ = closed.wait_for(|c| *c) => return,
                }
                {
                    let mut slot = pool.slots[i].lock().expect("slot lock");
                    if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                        *slot = None;
                    }
                }
                pool.bump();
                if conn.goaway().is_some() {
                    pool.stats.goaways.fetch_add(1, Ordering::Relaxed);
                } else if conn.state() == ConnState::Closed {
                    pool.stats
                        .closed_unexpectedly
                        .fetch_add(1, Ordering::Relaxed);
                }
                let healthy = conn.responses() > 0;
                // The old connection finishes its in-flight streams in the background.
                let drain = pool.opts.drain_timeout;
                tokio::spawn(async move {
                    wait_idle(&conn, Instant::now() + drain).await;
                    conn.close("drained");
                });
                healthy
            }
            Err(e) => {
                pool.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pool = %pool.name, error = %e, "connecting to APNs failed");
                false
            }
        };
        if healthy {
            // It served requests: replace it at once, and start the backoff afresh.
            delays = backoff(&pool.opts);
        } else {
            // It failed or died before its first answer: never a tight reconnect loop.
            let wait = delays.next().unwrap_or(pool.opts.backoff_max);
            tracing::debug!(pool = %pool.name, delay_ms = wait.as_millis() as u64, "reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    }
}

//! The admin endpoint: `GET /healthz` (the process is alive), `GET /readyz` (connected
//! to the broker, consuming, at least one app not paused) and `GET /metrics`
//! (Prometheus/OpenMetrics text). HTTP/1.1 on its own port, never the APNs path.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use super::snapshot::Status;

/// OpenMetrics text, which Prometheus scrapes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Answer one admin request.
pub fn route(status: &dyn Status, method: &hyper::Method, path: &str) -> Response<Full<Bytes>> {
    if method != hyper::Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let r = status.readiness();
            let body: String = r
                .facts
                .iter()
                .map(|(name, value)| format!("{name} {value}\n"))
                .collect();
            let code = if r.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, "text/plain", body)
        }
        "/metrics" => reply(StatusCode::OK, METRICS_CONTENT_TYPE, status.metrics_text()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "/healthz, /readyz or /metrics\n".into(),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the admin endpoint: {source}")]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// What the admin endpoint lets clients hold, so that slow or many clients cannot take
/// it (and the probes with it) down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminLimits {
    /// Connections held at once. A new connection beyond it evicts the oldest one that
    /// has not sent a request yet (a slow client), else the oldest one; a prober's
    /// request is answered within a millisecond or two of its connection, so it gets in.
    pub max_connections: usize,
    /// A client must send a request's headers within this (also the idle limit of a
    /// kept-alive connection between requests).
    pub header_read_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// The connections being served, oldest first.
#[derive(Default)]
struct Held {
    next_id: u64,
    conns: VecDeque<HeldConn>,
}

struct HeldConn {
    id: u64,
    task: AbortHandle,
    requests: Arc<AtomicU64>,
}

impl Held {
    /// Make room for one more: evict the oldest connection that has sent no request,
    /// else the oldest. Returns how many were evicted.
    fn make_room(&mut self, max: usize) -> usize {
        let mut evicted = 0;
        while self.conns.len() >= max.max(1) {
            let i = self
                .conns
                .iter()
                .position(|c| c.requests.load(Ordering::Relaxed) == 0)
                .unwrap_or(0);
            if let Some(c) = self.conns.remove(i) {
                c.task.abort();
                evicted += 1;
            }
        }
        evicted
    }

    fn remove(&mut self, id: u64) {
        if let Some(i) = self.conns.iter().position(|c| c.id == id) {
            self.conns.remove(i);
        }
    }
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). Tokio's
/// default of 1024 overflowed under a flood of 3,000 reconnecting slow clients: a
/// probe's SYN was dropped and retransmitted a second later, past a 1 s probe timeout.
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Bind the admin port; the returned future serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    status: Arc<dyn Status>,
    limits: AdminLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()>), AdminError> {
    let listener = listen(addr).map_err(|source| AdminError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    tracing::info!(addr = %local, "admin endpoint listening (/healthz, /readyz, /metrics)");
    let held = Arc::new(Mutex::new(Held::default()));
    let serve = async move {
        tokio::pin!(shutdown);
        // Accept errors (out of file descriptors, say) back off and are logged, at most
        // once a second with how many there were.
        let mut pause = ACCEPT_PAUSE_MIN;
        let (mut failures, mut last_log) = (0u64, None::<Instant>);
        let mut evictions = 0u64;
        loop {
            let tcp = tokio::select! {
                a = listener.accept() => a,
                _ = &mut shutdown => return,
            };
            let tcp = match tcp {
                Ok((tcp, _)) => {
                    pause = ACCEPT_PAUSE_MIN;
                    tcp
                }
                Err(e) => {
                    failures += 1;
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, failures, retry_in_ms = pause.as_millis() as u64, "the admin endpoint cannot accept connections");
                        last_log = Some(Instant::now());
                        failures = 0;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                    continue;
                }
            };
            let requests = Arc::new(AtomicU64::new(0));
            let (id, evicted) = {
                let mut h = held.lock().expect("admin lock");
                let evicted = h.make_room(limits.max_connections);
                h.next_id += 1;
                (h.next_id, evicted)
            };
            if evicted > 0 {
                evictions += evicted as u64;
                if evictions == evicted as u64 || evictions % 1000 < evicted as u64 {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        evictions,
                        "the admin endpoint is full; evicting its oldest idle connections"
                    );
                }
            }
            let status = status.clone();
            let counted = requests.clone();
            let done = held.clone();
            let task = tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let resp = route(status.as_ref(), req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                done.lock().expect("admin lock").remove(id);
            });
            held.lock().expect("admin lock").conns.push_back(HeldConn {
                id,
                task: task.abort_handle(),
                requests,
            });
            if evicted > 0 {
                // Full: let the connections just accepted (a prober's) read and answer,
                // and the evicted ones close, before taking the next.
                tokio::task::yield_now().await;
            }
        }
    };
    Ok((local, serve))
}

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, requests: u64) -> HeldConn {
        HeldConn {
            id,
            task: tokio::spawn(std::future::pending::<()>()).abort_handle(),
            requests: Arc::new(AtomicU64::new(requests)),
        }
    }

    #[tokio::test]
    async fn a_full_endpoint_evicts_the_oldest_silent_connection_first() {
        let mut h = Held::default();
        h.conns
            .extend([conn(1, 3), conn(2, 0), conn(3, 0), conn(4, 1)]);
        assert_eq!(h.make_room(4), 1);
        let ids: Vec<u64> = h.conns.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 3, 4], "the oldest that sent nothing went");
        h.conns.retain(|c| c.id != 3);
        h.conns.push_back(conn(5, 2));
        assert_eq!(h.make_room(3), 1);
        let ids: Vec<u64> = h.conns.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![4, 5], "all busy: the oldest went");
        h.remove(4);
        assert_eq!(h.conns.len(), 1);
    }
}

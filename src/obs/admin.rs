//! The admin endpoint: `GET /healthz` (the process is alive), `GET /readyz` (connected
//! to the broker, consuming, at least one app not paused) and `GET /metrics`
//! (Prometheus/OpenMetrics text). HTTP/1.1 on its own port, never the APNs path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

/// Bind the admin port; the returned future serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    status: Arc<dyn Status>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()>), AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| AdminError { addr, source })?;
    tracing::info!(addr = %local, "admin endpoint listening (/healthz, /readyz, /metrics)");
    let serve = async move {
        tokio::pin!(shutdown);
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = &mut shutdown => return,
            };
            let status = status.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = route(status.as_ref(), req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    };
    Ok((local, serve))
}

//! One HTTP/2 + TLS connection to APNs: connect, send one request per stream with a
//! timeout, watch the server's SETTINGS and GOAWAY frames, PING when idle.
//!
//! The outcome of one attempt is an [`Answer`] or an [`AttemptError`] that says
//! whether APNs can have processed the request (`Unknown`) or certainly did not
//! (`NotSent`: the stream was refused, or was above a GOAWAY's last-stream-id).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::uri::Authority;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::endpoint::Endpoint;
use crate::frames::{self, Event, FrameScanner, GoAway};
use crate::limiter::{StreamLimiter, StreamPermit};
use crate::response::Answer;

/// How to open and keep one connection.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub endpoint: Endpoint,
    pub tls: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    /// PING a connection that has had no answer for this long.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Our own ceiling on streams per connection, below the server's limit.
    pub max_streams: usize,
    /// Reach the endpoint through this proxy (a TCP tunnel; TLS inside it).
    pub proxy: Option<crate::proxy::Proxy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {authority} failed: {source}")]
    Tcp {
        authority: String,
        source: io::Error,
    },
    #[error(transparent)]
    Proxy(crate::proxy::ProxyError),
    #[error("connecting to {authority} timed out after {after:?}")]
    Timeout { authority: String, after: Duration },
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with {authority} failed: {source}")]
    Tls {
        authority: String,
        source: io::Error,
    },
    #[error("{authority} did not agree to HTTP/2 (ALPN h2); is this an APNs endpoint?")]
    NoH2 { authority: String },
    #[error("HTTP/2 handshake with {authority} failed: {source}")]
    Handshake {
        authority: String,
        source: h2::Error,
    },
}

/// Why one attempt on one connection failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// APNs did not process the request; it may be sent again at once.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request went out and no answer came; it may have been delivered.
    #[error("unknown: {0}")]
    Unknown(String),
}

/// How an h2 stream failed, reduced to what decides resend-safety.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFailure {
    /// The server reset the stream with REFUSED_STREAM: it did no processing (RFC 9113 §8.7).
    Refused,
    /// A GOAWAY from the server ended the stream.
    RemoteGoAway,
    /// Anything else: reset with another code, I/O error, our own protocol error.
    Other,
}

impl StreamFailure {
    pub fn of(e: &h2::Error) -> StreamFailure {
        if e.is_remote() && e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM) {
            StreamFailure::Refused
        } else if e.is_remote() && e.is_go_away() {
            StreamFailure::RemoteGoAway
        } else {
            StreamFailure::Other
        }
    }
}

/// Decide resend-safety of a failed stream. A GOAWAY covers the streams up to its
/// last-stream-id (they may have been processed) and promises that none above it was
/// (RFC 9113 §6.8), whatever error the stream then ended with locally (a GOAWAY between
/// opening a stream and sending its body shows up as a user error on the body).
pub fn attempt_error(
    failure: StreamFailure,
    stream_id: u32,
    goaway_last: Option<u32>,
    detail: String,
) -> AttemptError {
    if goaway_last.is_some_and(|last| stream_id > last) {
        return AttemptError::NotSent(format!("stream above GOAWAY's last-stream-id: {detail}"));
    }
    match failure {
        StreamFailure::Refused => AttemptError::NotSent(format!("stream refused: {detail}")),
        _ => AttemptError::Unknown(detail),
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// No new streams; in-flight ones finish (GOAWAY, 503 Shutdown, our shutdown).
    Draining,
    Closed,
}

struct Shared {
    id: u64,
    authority: String,
    born: Instant,
    max_streams: usize,
    limiter: Arc<StreamLimiter>,
    state: watch::Sender<ConnState>,
    goaway: Mutex<Option<GoAway>>,
    settings_seen: AtomicBool,
    responses: AtomicU64,
    /// Milliseconds since `born` of the last complete answer (or of the last good PING).
    last_alive_ms: AtomicU64,
    driver: Mutex<Option<AbortHandle>>,
}

impl Shared {
    fn on_frame(&self, e: Event) {
        match e {
            Event::Settings(params) => {
                let first = !self.settings_seen.swap(true, Ordering::AcqRel);
                let max = params
                    .iter()
                    .find(|(id, _)| *id == frames::SETTINGS_MAX_CONCURRENT_STREAMS)
                    .map(|(_, v)| *v as usize);
                match max {
                    Some(v) => {
                        tracing::debug!(connection = self.id, server_max_streams = v, "SETTINGS");
                        self.limiter.set_limit(v.min(self.max_streams));
                    }
                    // No limit announced: the server allows any number; use our own.
                    None if first => self.limiter.set_limit(self.max_streams),
                    None => {}
                }
            }
            Event::GoAway(g) => {
                let debug_text =
                    String::from_utf8_lossy(&g.debug[..g.debug.len().min(512)]).into_owned();
                tracing::warn!(
                    connection = self.id,
                    authority = %self.authority,
                    last_stream_id = g.last_stream_id,
                    error_code = g.error_code,
                    debug_data = %debug_text,
                    "GOAWAY from APNs"
                );
                {
                    let mut slot = self.goaway.lock().expect("goaway lock");
                    let keep_lower = slot
                        .as_ref()
                        .is_some_and(|old| old.last_stream_id <= g.last_stream_id);
                    if !keep_lower {
                        *slot = Some(g);
                    }
                }
                self.set_state(ConnState::Draining);
            }
        }
    }

    fn set_state(&self, new: ConnState) {
        self.state.send_if_modified(|s| {
            let advance = matches!(
                (*s, new),
                (ConnState::Open, ConnState::Draining | ConnState::Closed)
                    | (ConnState::Draining, ConnState::Closed)
            );
            if advance {
                *s = new;
            }
            advance
        });
        if new == ConnState::Closed {
            self.limiter.close();
        }
    }

    fn mark_alive(&self) {
        self.last_alive_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_alive_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    fn kill(&self, why: &str, planned: bool) {
        if *self.state.borrow() == ConnState::Closed {
            return;
        }
        if planned {
            tracing::debug!(connection = self.id, authority = %self.authority, reason = why, "closing APNs connection");
        } else {
            tracing::warn!(connection = self.id, authority = %self.authority, reason = why, "closing APNs connection");
        }
        self.set_state(ConnState::Closed);
        if let Some(h) = self.driver.lock().expect("driver lock").take() {
            h.abort();
        }
    }
}

/// Reads pass through the frame scanner; writes pass straight through.
struct Sniffer<T> {
    inner: T,
    scanner: FrameScanner,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffer<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let shared = &this.shared;
            this.scanner
                .feed(&buf.filled()[before..], &mut |e| shared.on_frame(e));
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffer<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        // Deliberately not vectored, although TLS is: h2 then copies DATA frames below
        // 1024 bytes into its 16 KiB write buffer instead of chaining them, and chaining
        // forces a write (a syscall) per frame. See DATA_CHUNK and docs/benchmarks.md.
        false
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A live connection. Cheap to share; requests on it run concurrently, one stream each.
pub struct Connection {
    send: SendRequest<Bytes>,
    authority: Authority,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("authority", &self.shared.authority)
            .finish()
    }
}

/// The largest DATA frame we send. h2 (0.4) copies a frame's payload into its write
/// buffer when it is below 1024 bytes on a non-vectored writer and otherwise chains it,
/// which costs one write to the socket per frame. Bodies are cut to stay below, so the
/// frames of many requests leave in one write. Measured: docs/benchmarks.md.
const DATA_CHUNK: usize = 1023;

/// The answer body a notification's request keeps: APNs' error bodies are a short JSON
/// object. Callers that expect more (channel management's list) pass their own bound.
pub const MAX_ERROR_BODY: usize = 16 * 1024;

impl Connection {
    /// Open a connection: TCP, TLS with ALPN h2, HTTP/2 handshake; then drive it in a
    /// task of its own and PING it when idle.
    pub async fn connect(id: u64, opts: &ConnectOptions) -> Result<Arc<Connection>, ConnectError> {
        let authority = opts.endpoint.authority();
        let timeout = opts.connect_timeout;
        let timed_out = || ConnectError::Timeout {
            authority: authority.clone(),
            after: timeout,
        };
        let tcp = match &opts.proxy {
            Some(proxy) => proxy
                .tunnel(opts.endpoint.host(), opts.endpoint.port(), timeout)
                .await
                .map_err(ConnectError::Proxy)?,
            None => tokio::time::timeout(
                timeout,
                TcpStream::connect((opts.endpoint.host(), opts.endpoint.port())),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| ConnectError::Tcp {
                authority: authority.clone(),
                source,
            })?,
        };
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(opts.endpoint.host().to_string())
            .map_err(|_| ConnectError::ServerName(opts.endpoint.host().to_string()))?;
        let tls = tokio::time::timeout(
            timeout,
            tokio_rustls::TlsConnector::from(opts.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ConnectError::Tls {
            authority: authority.clone(),
            source,
        })?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::NoH2 { authority });
        }
        let (state, _) = watch::channel(ConnState::Open);
        let shared = Arc::new(Shared {
            id,
            authority: authority.clone(),
            born: Instant::now(),
            max_streams: opts.max_streams.max(1),
            // One stream until the server says more: APNs starts token-auth connections at 1.
            limiter: StreamLimiter::new(1),
            state,
            goaway: Mutex::new(None),
            settings_seen: AtomicBool::new(false),
            responses: AtomicU64::new(0),
            last_alive_ms: AtomicU64::new(0),
            driver: Mutex::new(None),
        });
        let io = Sniffer {
            inner: tls,
            scanner: FrameScanner::new(),
            shared: shared.clone(),
        };
        let (send, mut conn) = tokio::time::timeout(
            timeout,
            h2::client::Builder::new()
                .enable_push(false)
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 22)
                .max_concurrent_reset_streams(1024)
                .handshake::<_, Bytes>(io),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ConnectError::Handshake {
            authority: authority.clone(),
            source,
        })?;
        let ping_pong = conn.ping_pong();
        let driver_shared = shared.clone();
        let driver = tokio::spawn(async move {
            match conn.await {
                Ok(()) => tracing::debug!(connection = driver_shared.id, "connection closed"),
                Err(e) => {
                    tracing::warn!(connection = driver_shared.id, error = %e, "connection ended with an error")
                }
            }
            driver_shared.set_state(ConnState::Closed);
        });
        *shared.driver.lock().expect("driver lock") = Some(driver.abort_handle());
        if let Some(pp) = ping_pong {
            tokio::spawn(ping_loop(
                shared.clone(),
                pp,
                opts.ping_interval,
                opts.ping_timeout,
            ));
        }
        tracing::info!(connection = id, %authority, "connected to APNs");
        Ok(Arc::new(Connection {
            send,
            authority: authority
                .parse()
                .map_err(|_| ConnectError::ServerName(authority))?,
            shared,
        }))
    }

    pub fn id(&self) -> u64 {
        self.shared.id
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn limiter(&self) -> &Arc<StreamLimiter> {
        &self.shared.limiter
    }

    pub fn state(&self) -> ConnState {
        *self.shared.state.borrow()
    }

    /// Changes of state, for the pool's supervisor.
    pub fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.shared.state.subscribe()
    }

    pub fn is_open(&self) -> bool {
        self.state() == ConnState::Open
    }

    /// Answers received on this connection.
    pub fn responses(&self) -> u64 {
        self.shared.responses.load(Ordering::Relaxed)
    }

    pub fn age(&self) -> Duration {
        self.shared.born.elapsed()
    }

    /// The GOAWAY received, if any.
    pub fn goaway(&self) -> Option<GoAway> {
        self.shared.goaway.lock().expect("goaway lock").clone()
    }

    /// Stop opening streams here; in-flight ones finish.
    pub fn drain(&self, why: &str) {
        if self.is_open() {
            tracing::info!(
                connection = self.id(),
                reason = why,
                "draining APNs connection"
            );
        }
        self.shared.set_state(ConnState::Draining);
    }

    /// Close now because something is wrong; in-flight streams end as `Unknown`.
    pub fn kill(&self, why: &str) {
        self.shared.kill(why, false);
    }

    /// Close now as planned (drained, shutting down); in-flight streams end as `Unknown`.
    pub fn close(&self, why: &str) {
        self.shared.kill(why, true);
    }

    /// Send one request on one stream and wait for the whole answer, at most `timeout`.
    /// The permit (from this connection's limiter) is held until the stream ends. Of
    /// the answer's body the first `max_body` bytes are kept; beyond, the answer is
    /// marked `truncated` (the rest is read and dropped).
    pub async fn send(
        &self,
        req: http::Request<()>,
        body: Bytes,
        timeout: Duration,
        permit: StreamPermit,
        max_body: usize,
    ) -> Result<Answer, AttemptError> {
        let _permit = permit;
        if !self.is_open() {
            return Err(AttemptError::NotSent("connection is draining".into()));
        }
        let mut sender = self.send.clone();
        let (response, mut stream) = match sender.send_request(req, false) {
            Ok(pair) => pair,
            Err(e) => {
                // h2 cannot open streams here any more (closed, going away): make sure
                // no one else picks this connection while its driver winds down.
                self.drain(&format!("cannot open a stream: {e}"));
                return Err(AttemptError::NotSent(format!("opening a stream: {e}")));
            }
        };
        let stream_id = u32::from(response.stream_id());
        let mut body = body;
        while body.len() > DATA_CHUNK {
            let head = body.split_to(DATA_CHUNK);
            if let Err(e) = stream.send_data(head, false) {
                return Err(self.failure(&e, stream_id, "sending the body"));
            }
        }
        if let Err(e) = stream.send_data(body, true) {
            return Err(self.failure(&e, stream_id, "sending the body"));
        }
        let answer = async {
            let resp = response.await?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            let mut truncated = false;
            if !body.is_end_stream() {
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    // Once over the bound, nothing more is kept: no prefix-plus-tail.
                    if truncated || buf.len() + chunk.len() > max_body {
                        truncated = true;
                    } else {
                        buf.extend_from_slice(&chunk);
                    }
                }
            }
            Ok::<_, h2::Error>((parts, buf, truncated))
        };
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(AttemptError::Unknown(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(self.failure(&e, stream_id, "waiting for the answer")),
            Ok(Ok((parts, body, truncated))) => {
                self.shared.responses.fetch_add(1, Ordering::Relaxed);
                self.shared.mark_alive();
                Ok(Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: body.freeze(),
                    truncated,
                })
            }
        }
    }

    fn failure(&self, e: &h2::Error, stream_id: u32, step: &str) -> AttemptError {
        let last = self.goaway().map(|g| g.last_stream_id);
        attempt_error(
            StreamFailure::of(e),
            stream_id,
            last,
            format!(
                "{step} on connection {} (stream {stream_id}): {e}",
                self.id()
            ),
        )
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The last handle is gone: nothing can use the connection any more.
        self.shared.kill("no longer used", true);
    }
}

async fn ping_loop(
    shared: Arc<Shared>,
    mut pp: h2::PingPong,
    interval: Duration,
    timeout: Duration,
) {
    let mut state = shared.state.subscribe();
    loop {
        let wait = interval
            .saturating_sub(shared.idle_for())
            .max(Duration::from_millis(10));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = state.changed() => {
                if changed.is_err() || *state.borrow() == ConnState::Closed {
                    return;
                }
                continue;
            }
        }
        if *state.borrow() == ConnState::Closed {
            return;
        }
        if shared.idle_for() < interval {
            continue;
        }
        match tokio::time::timeout(timeout, pp.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                tracing::trace!(connection = shared.id, "PING answered");
                shared.mark_alive();
            }
            Ok(Err(e)) => {
                shared.kill(&format!("PING failed: {e}"), false);
                return;
            }
            Err(_) => {
                shared.kill(
                    &format!("PING unanswered for {} ms", timeout.as_millis()),
                    false,
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_safety_of_failed_streams() {
        let d = || "x".to_string();
        let rows = [
            (StreamFailure::Refused, 9, None, true),
            (StreamFailure::Refused, 9, Some(11), true),
            (StreamFailure::RemoteGoAway, 9, Some(7), true),
            (StreamFailure::RemoteGoAway, 7, Some(7), false),
            (StreamFailure::RemoteGoAway, 5, Some(7), false),
            (StreamFailure::RemoteGoAway, 9, None, false),
            (StreamFailure::Other, 9, Some(1), true),
            (StreamFailure::Other, 1, Some(1), false),
            (StreamFailure::Other, 1, None, false),
        ];
        for (failure, id, last, resend) in rows {
            let got = attempt_error(failure, id, last, d());
            assert_eq!(
                matches!(got, AttemptError::NotSent(_)),
                resend,
                "{failure:?} stream {id} last {last:?}"
            );
        }
    }
}

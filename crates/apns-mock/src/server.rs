//! The mock's server side: accept TLS, serve HTTP/2 with h2 behind the frame shim,
//! validate each request as APNs does, decide its answer from the fault script.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use super::certs::{CertError, Issued, MockCa, generate_signing_key};
use super::faults::{Action, Faults, now_ms};
use super::shim::{Shim, ShimControl};
use apns::endpoint::{Endpoint, EndpointKind};
use apns::notification::topic_matches;
use apns::notification::{
    APNS_CHANNEL_ID, APNS_COLLAPSE_ID, APNS_EXPIRATION, APNS_ID, APNS_PRIORITY, APNS_PUSH_TYPE,
    APNS_REQUEST_ID, APNS_TOPIC, APNS_UNIQUE_ID, MAX_PAYLOAD_BROADCAST, validate_channel_id,
};
use apns::response::Reason;
use apns::tls::provider;

/// A signing key the mock accepts.
#[derive(Clone, Debug)]
pub struct MockKey {
    pub key_id: String,
    pub team_id: String,
    pub public_key_pem: String,
    /// Topic-specific key: only these topics. Empty: team-scoped.
    pub topics: Vec<String>,
    /// Environment-scoped key: only this environment. None: both.
    pub environment: Option<EndpointKind>,
}

#[derive(Clone, Debug)]
pub struct MockConfig {
    pub bind: SocketAddr,
    /// The stream limit after the first authenticated request (APNs: about 1000).
    pub max_streams: u32,
    /// `Sandbox` adds `apns-unique-id` to successful answers, as Apple's sandbox does.
    pub environment: EndpointKind,
    pub keys: Vec<MockKey>,
    pub faults: Faults,
    /// Keep a record of every request (tests); off for benchmarks.
    pub record: bool,
    /// Answer 429 TooManyProviderTokenUpdates when a key's new token comes sooner than
    /// this after its previous one (Apple: 20 minutes). 0: no check.
    pub token_update_min_secs: u64,
    /// Extra names for the server certificate besides localhost and 127.0.0.1.
    pub server_names: Vec<String>,
    /// Broadcast channels an app may hold (Apple: 10,000 per app per environment).
    pub max_channels: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            bind: "127.0.0.1:0".parse().expect("address"),
            max_streams: 1000,
            environment: EndpointKind::Sandbox,
            keys: Vec::new(),
            faults: Faults::default(),
            record: true,
            token_update_min_secs: 20 * 60,
            server_names: Vec::new(),
            max_channels: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key {key_id}: public key is not an EC PEM: {reason}")]
    Key { key_id: String, reason: String },
    #[error("faults: {0}")]
    Faults(String),
}

/// One request as the mock saw it, and what it did.
#[derive(Clone, Debug)]
pub struct Received {
    pub connection: u64,
    pub stream_id: u32,
    /// Empty for a broadcast.
    pub device_token: String,
    /// The `apns-channel-id` of a broadcast.
    pub channel_id: Option<String>,
    pub topic: Option<String>,
    pub push_type: Option<String>,
    pub priority: Option<String>,
    pub expiration: Option<String>,
    pub collapse_id: Option<String>,
    pub apns_id: Option<String>,
    pub key_id: Option<String>,
    pub payload: Bytes,
    /// The status answered; 0 when the stream was reset, refused or stalled.
    pub status: u16,
    pub reason: Option<String>,
    /// `answered`, `reset`, `refused`, `stalled` or `closed` (headers sent, connection dropped).
    pub action: &'static str,
    /// When the request's body had arrived.
    pub at: std::time::Instant,
}

/// Counters since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MockStats {
    pub connections: u64,
    /// Requests answered with a status (including errors).
    pub answered: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_reason: BTreeMap<String, u64>,
    pub goaways: u64,
    /// Streams above a GOAWAY's last-stream-id, dropped unprocessed.
    pub unprocessed: u64,
    pub resets: u64,
    pub refused: u64,
    pub stalled: u64,
    pub closed_mid_response: u64,
    pub blackholed: u64,
    pub pings_dropped: u64,
    /// Highest number of streams in flight at once on one connection.
    pub peak_streams: u32,
    /// Requests answered with a 200 by connection id.
    pub ok_by_connection: BTreeMap<u64, u64>,
    /// Channel-management requests answered.
    pub channel_requests: u64,
}

struct KeyEntry {
    key: MockKey,
    decoding: DecodingKey,
}

struct State {
    max_streams: u32,
    max_channels: usize,
    /// Broadcast channels by bundle id: channel id → message storage policy. One mock
    /// is one environment, so environments never share channels.
    channels: Mutex<HashMap<String, BTreeMap<String, u8>>>,
    environment: EndpointKind,
    record: AtomicBool,
    token_update_min_secs: u64,
    keys: RwLock<HashMap<String, Arc<KeyEntry>>>,
    faults: RwLock<Arc<Faults>>,
    drop_pings: Arc<AtomicBool>,
    token_answers: Mutex<HashMap<String, u32>>,
    key_newest_iat: Mutex<HashMap<String, u64>>,
    /// Every distinct provider token seen, by key id (a fleet that shares its tokens
    /// shows one per period).
    tokens_seen: Mutex<HashMap<String, std::collections::HashSet<Bytes>>>,
    client_certs: Mutex<HashMap<Vec<u8>, Vec<String>>>,
    received: Mutex<Vec<Received>>,
    stats: Mutex<MockStats>,
    pings_dropped_closed: AtomicU64,
    live_shims: Mutex<Vec<std::sync::Weak<ShimControl>>>,
    shutdown: watch::Receiver<bool>,
}

impl State {
    fn count(&self, f: impl FnOnce(&mut MockStats)) {
        f(&mut self.stats.lock().expect("stats lock"))
    }
}

/// A running mock APNs. Dropping it stops the server.
pub struct MockApns {
    addr: SocketAddr,
    ca: MockCa,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl MockApns {
    pub async fn start(cfg: MockConfig) -> Result<MockApns, MockError> {
        cfg.faults.check().map_err(MockError::Faults)?;
        let ca = MockCa::new()?;
        let server = ca.server_cert(&cfg.server_names)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.cert_der())
            .map_err(|e| MockError::Tls(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| MockError::Tls(e.to_string()))?;
        let mut sc = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| MockError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server.cert_der], server.key_der)
            .map_err(|e| MockError::Tls(e.to_string()))?;
        sc.alpn_protocols = vec![b"h2".to_vec()];
        let listener = TcpListener::bind(cfg.bind)
            .await
            .map_err(|source| MockError::Bind {
                addr: cfg.bind,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| MockError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let (stop, shutdown) = watch::channel(false);
        let drop_pings = Arc::new(AtomicBool::new(cfg.faults.drop_pings));
        let state = Arc::new(State {
            max_streams: cfg.max_streams.max(1),
            max_channels: cfg.max_channels,
            channels: Mutex::new(HashMap::new()),
            environment: cfg.environment,
            record: AtomicBool::new(cfg.record),
            token_update_min_secs: cfg.token_update_min_secs,
            keys: RwLock::new(HashMap::new()),
            faults: RwLock::new(Arc::new(cfg.faults)),
            drop_pings,
            token_answers: Mutex::new(HashMap::new()),
            key_newest_iat: Mutex::new(HashMap::new()),
            tokens_seen: Mutex::new(HashMap::new()),
            client_certs: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
            stats: Mutex::new(MockStats::default()),
            pings_dropped_closed: AtomicU64::new(0),
            live_shims: Mutex::new(Vec::new()),
            shutdown,
        });
        let mock = MockApns {
            addr,
            ca,
            state: state.clone(),
            stop,
        };
        for k in cfg.keys {
            mock.add_key(k)?;
        }
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(sc)),
            state,
        ));
        tracing::info!(%addr, "mock APNs listening");
        Ok(mock)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://localhost:<port>`, matching the server certificate.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::custom("localhost", self.addr.port())
    }

    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem()
    }

    /// Write the CA certificate for clients to trust (`ca_file`).
    pub fn write_ca(&self, path: &Path) -> Result<(), MockError> {
        std::fs::write(path, self.ca_pem()).map_err(|source| MockError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn add_key(&self, key: MockKey) -> Result<(), MockError> {
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem.as_bytes()).map_err(|e| {
            MockError::Key {
                key_id: key.key_id.clone(),
                reason: e.to_string(),
            }
        })?;
        self.state
            .keys
            .write()
            .expect("keys lock")
            .insert(key.key_id.clone(), Arc::new(KeyEntry { key, decoding }));
        Ok(())
    }

    /// Make a signing key, register its public half, return the `.p8` PEM text.
    pub fn generate_key(&self, team_id: &str, key_id: &str) -> Result<String, MockError> {
        let (private, public) = generate_signing_key()?;
        self.add_key(MockKey {
            key_id: key_id.into(),
            team_id: team_id.into(),
            public_key_pem: public,
            topics: Vec::new(),
            environment: None,
        })?;
        Ok(private)
    }

    /// A client certificate for certificate auth, valid for `topics`.
    pub fn issue_client_identity(&self, topics: &[&str]) -> Result<Issued, MockError> {
        let issued = self
            .ca
            .client_cert(topics.first().copied().unwrap_or("unknown"))?;
        self.state.client_certs.lock().expect("certs lock").insert(
            issued.cert_der.as_ref().to_vec(),
            topics.iter().map(|s| s.to_string()).collect(),
        );
        Ok(issued)
    }

    /// Revoke a certificate issued before: its connections get 403 BadCertificate.
    pub fn revoke_client_identity(&self, issued: &Issued) {
        if let Some(t) = self
            .state
            .client_certs
            .lock()
            .expect("certs lock")
            .get_mut(issued.cert_der.as_ref())
        {
            t.clear();
        }
    }

    pub fn faults(&self) -> Faults {
        (**self.state.faults.read().expect("faults lock")).clone()
    }

    pub fn set_faults(&self, faults: Faults) -> Result<(), MockError> {
        faults.check().map_err(MockError::Faults)?;
        self.state
            .drop_pings
            .store(faults.drop_pings, Ordering::SeqCst);
        *self.state.faults.write().expect("faults lock") = Arc::new(faults);
        Ok(())
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) -> Result<(), MockError> {
        let mut faults = self.faults();
        f(&mut faults);
        self.set_faults(faults)
    }

    /// How many distinct provider tokens of `key_id` were verified so far.
    pub fn distinct_tokens(&self, key_id: &str) -> usize {
        self.state
            .tokens_seen
            .lock()
            .expect("tokens lock")
            .get(key_id)
            .map_or(0, |s| s.len())
    }

    /// The broadcast channels of `bundle` in this mock's environment: id → storage policy.
    pub fn channels(&self, bundle: &str) -> BTreeMap<String, u8> {
        self.state
            .channels
            .lock()
            .expect("channels lock")
            .get(bundle)
            .cloned()
            .unwrap_or_default()
    }

    pub fn stats(&self) -> MockStats {
        let mut s = self.state.stats.lock().expect("stats lock").clone();
        let live: u64 = self
            .state
            .live_shims
            .lock()
            .expect("shims lock")
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|c| c.pings_dropped.load(Ordering::Relaxed))
            .sum();
        s.pings_dropped = live + self.state.pings_dropped_closed.load(Ordering::Relaxed);
        s
    }

    /// Start or stop keeping a record of each request.
    pub fn set_record(&self, on: bool) {
        self.state.record.store(on, Ordering::Relaxed);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received lock").clone()
    }

    pub fn take_received(&self) -> Vec<Received> {
        std::mem::take(&mut *self.state.received.lock().expect("received lock"))
    }

    /// Stop accepting and close every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for MockApns {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    let mut shutdown = state.shutdown.clone();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut shutdown) => return,
        };
        match accepted {
            Ok((tcp, _)) => {
                next_id += 1;
                tokio::spawn(serve_connection(
                    state.clone(),
                    acceptor.clone(),
                    tcp,
                    next_id,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "mock accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct TokenCache {
    jwt: Bytes,
    key_id: String,
    iat: u64,
}

/// Per-connection state shared by its request handlers.
struct Conn {
    id: u64,
    ctl: Arc<ShimControl>,
    /// `Some(topics)` with certificate auth (empty: unknown or revoked certificate).
    cert_topics: Option<Vec<String>>,
    /// The (team, key) bound by the first authenticated push.
    bound: Mutex<Option<(String, String)>>,
    raised: AtomicBool,
    requests: AtomicU64,
    active: AtomicU32,
    /// Last stream id of our GOAWAY; 0 when none was sent.
    goaway_last: AtomicU32,
    kill: Notify,
    cache: Mutex<Option<TokenCache>>,
}

async fn serve_connection(state: Arc<State>, acceptor: TlsAcceptor, tcp: TcpStream, id: u64) {
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "mock TLS handshake failed");
            return;
        }
    };
    let cert_topics = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| {
            state
                .client_certs
                .lock()
                .expect("certs lock")
                .get(der.as_ref())
                .cloned()
                .unwrap_or_default()
        });
    // Certificate auth is known at the handshake, so the full limit applies at once;
    // token auth starts at 1 until a request with a valid token.
    let initial = if cert_topics.is_some() {
        state.max_streams
    } else {
        1
    };
    let ctl = ShimControl::new(initial, state.drop_pings.clone());
    state
        .live_shims
        .lock()
        .expect("shims lock")
        .push(Arc::downgrade(&ctl));
    state.count(|s| s.connections += 1);
    let conn_state = Arc::new(Conn {
        id,
        ctl: ctl.clone(),
        raised: AtomicBool::new(cert_topics.is_some()),
        cert_topics,
        bound: Mutex::new(None),
        requests: AtomicU64::new(0),
        active: AtomicU32::new(0),
        goaway_last: AtomicU32::new(0),
        kill: Notify::new(),
        cache: Mutex::new(None),
    });
    let shim = Shim::new(tls, ctl.clone());
    let mut h2conn = match h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .max_concurrent_reset_streams(4096)
        .handshake::<_, Bytes>(shim)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "mock HTTP/2 handshake failed");
            return;
        }
    };
    let mut shutdown = state.shutdown.clone();
    // Made once, not per request: both are polled at every turn of the loop.
    let killed = conn_state.kill.notified();
    let stop = stopped(&mut shutdown);
    tokio::pin!(killed, stop);
    // Each request is its own task, as in hyper: the connection task accepts every
    // request its socket holds before the handlers run, and their answers then go out
    // together in one write instead of one write each.
    let mut handlers = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut killed => {
                state.pings_dropped_closed.fetch_add(ctl.pings_dropped.load(Ordering::Relaxed), Ordering::Relaxed);
                return;
            }
            _ = &mut stop => return,
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            next = h2conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let stream_id = u32::from(respond.stream_id());
                    let last = conn_state.goaway_last.load(Ordering::SeqCst);
                    if last != 0 && stream_id > last {
                        state.count(|s| s.unprocessed += 1);
                        continue;
                    }
                    let n = conn_state.requests.fetch_add(1, Ordering::SeqCst) + 1;
                    let faults = state.faults.read().expect("faults lock").clone();
                    if faults.blackhole_after == Some(n) {
                        state.count(|s| s.blackholed += 1);
                        tracing::info!(connection = id, "mock: connection goes silent");
                        let mut quiet = state.shutdown.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                            _ = stopped(&mut quiet) => {}
                        }
                        return;
                    }
                    if conn_state.active.load(Ordering::SeqCst) >= ctl.enforced_limit() {
                        let mut respond = respond;
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        state.count(|s| s.refused += 1);
                        continue;
                    }
                    if faults.goaway_after == Some(n) {
                        conn_state.goaway_last.store(stream_id, Ordering::SeqCst);
                        ctl.goaway(stream_id, 0, br#"{"reason":"Shutdown"}"#);
                        state.count(|s| s.goaways += 1);
                    }
                    if faults.limit_drop_after == Some(n) {
                        ctl.announce_limit(faults.limit_drop_to.unwrap_or(1));
                    }
                    handlers.spawn(handle(state.clone(), conn_state.clone(), faults, req, respond));
                }
                Some(Err(e)) => {
                    tracing::debug!(connection = id, error = %e, "mock connection error");
                    break;
                }
                None => break,
            },
        }
        if conn_state.goaway_last.load(Ordering::SeqCst) != 0 && handlers.is_empty() {
            break;
        }
    }
    // Let the answers already given reach the client, then close.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
                _ = std::future::poll_fn(|cx| h2conn.poll_closed(cx)) => return,
                _ = &mut killed => return,
            }
        }
    })
    .await;
    state
        .pings_dropped_closed
        .fetch_add(ctl.pings_dropped.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Decrements the connection's active count when a handler ends, however it ends.
struct Active<'a>(&'a AtomicU32);
impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Info {
    /// The device token, or the channel id of a broadcast.
    token: String,
    key_id: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    faults: Arc<Faults>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let now_active = conn.active.fetch_add(1, Ordering::SeqCst) + 1;
    let _active = Active(&conn.active);
    {
        let mut s = state.stats.lock().expect("stats lock");
        s.peak_streams = s.peak_streams.max(now_active);
    }
    let stream_id = u32::from(respond.stream_id());
    let (parts, mut body) = req.into_parts();
    // A payload in one DATA frame (the usual case) is kept as received, not copied.
    let mut payload = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        if payload.is_empty() && joined.is_none() {
            payload = chunk;
        } else {
            let all = joined.get_or_insert_with(|| BytesMut::from(&payload[..]));
            if all.len() < 64 * 1024 {
                all.extend_from_slice(&chunk);
            }
        }
    }
    if let Some(all) = joined {
        payload = all.freeze();
    }
    let arrived = std::time::Instant::now();
    let mut rng = fastrand::Rng::new();
    if parts.uri.path().starts_with("/1/apps/") {
        manage(&state, &conn, &parts, &payload, respond, &mut rng);
        return;
    }
    let broadcast = parts.uri.path().starts_with("/4/broadcasts/apps/");
    let verdict = if broadcast {
        validate_broadcast(&state, &conn, &parts, &payload)
    } else {
        validate(&state, &conn, &parts, &payload)
    };
    let (action, token, key_id) = match verdict {
        Err((status, reason)) => (
            Action::Answer {
                status,
                reason: Some(reason),
                timestamp: None,
            },
            if broadcast {
                header(&parts.headers, &APNS_CHANNEL_ID)
                    .unwrap_or("")
                    .to_string()
            } else {
                device_token_of(&parts)
            },
            None,
        ),
        Ok(info) => {
            let seen = if faults.counts_tokens() {
                let mut m = state.token_answers.lock().expect("answers lock");
                let e = m.entry(info.token.clone()).or_insert(0);
                *e += 1;
                *e - 1
            } else {
                0
            };
            (
                faults.decide(&info.token, seen, &mut rng),
                info.token,
                info.key_id,
            )
        }
    };
    let delay = faults.delay(&mut rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let last = conn.goaway_last.load(Ordering::SeqCst);
    if last != 0 && stream_id > last {
        state.count(|s| s.unprocessed += 1);
        return;
    }
    let h = &parts.headers;
    // The request's apns-id (a broadcast's apns-request-id) is echoed (HeaderValue
    // clones share their bytes).
    let id_header = if broadcast {
        &APNS_REQUEST_ID
    } else {
        &APNS_ID
    };
    let apns_id = match h.get(id_header) {
        Some(v) if v.to_str().is_ok() => never_indexed(v.clone()),
        _ => uuid_header(&mut rng),
    };
    let record = |status: u16, reason: Option<&Reason>, what: &'static str| {
        if state.record.load(Ordering::Relaxed) {
            state
                .received
                .lock()
                .expect("received lock")
                .push(Received {
                    connection: conn.id,
                    stream_id,
                    device_token: if broadcast {
                        String::new()
                    } else {
                        token.clone()
                    },
                    channel_id: broadcast.then(|| token.clone()),
                    topic: header(h, &APNS_TOPIC).map(str::to_owned),
                    push_type: header(h, &APNS_PUSH_TYPE).map(str::to_owned),
                    priority: header(h, &APNS_PRIORITY).map(str::to_owned),
                    expiration: header(h, &APNS_EXPIRATION).map(str::to_owned),
                    collapse_id: header(h, &APNS_COLLAPSE_ID).map(str::to_owned),
                    apns_id: apns_id.to_str().ok().map(str::to_owned),
                    key_id: key_id.clone(),
                    payload: payload.clone(),
                    status,
                    reason: reason.map(|r| r.to_string()),
                    action: what,
                    at: arrived,
                });
        }
    };
    match action {
        Action::Answer {
            status,
            reason,
            timestamp,
        } => {
            let mut resp = answer_head(status, id_header, &apns_id);
            if status == 200 && (broadcast || state.environment == EndpointKind::Sandbox) {
                resp.headers_mut()
                    .insert(APNS_UNIQUE_ID.clone(), uuid_header(&mut rng));
            }
            let body = match (&reason, timestamp) {
                (Some(r), Some(ts)) => format!(r#"{{"reason":"{r}","timestamp":{ts}}}"#),
                (Some(r), None) => format!(r#"{{"reason":"{r}"}}"#),
                (None, _) => String::new(),
            };
            let end = body.is_empty();
            match respond.send_response(resp, end) {
                Ok(mut stream) => {
                    if !end {
                        let _ = stream.send_data(Bytes::from(body), true);
                    }
                }
                Err(_) => return,
            }
            record(status, reason.as_ref(), "answered");
            state.count(|s| {
                s.answered += 1;
                *s.by_status.entry(status).or_default() += 1;
                if let Some(r) = &reason {
                    *s.by_reason.entry(r.to_string()).or_default() += 1;
                }
                if status == 200 {
                    *s.ok_by_connection.entry(conn.id).or_default() += 1;
                }
            });
        }
        Action::Reset => {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            record(0, None, "reset");
            state.count(|s| s.resets += 1);
        }
        Action::Refuse => {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            record(0, None, "refused");
            state.count(|s| s.refused += 1);
        }
        Action::Stall => {
            record(0, None, "stalled");
            state.count(|s| s.stalled += 1);
            let mut shutdown = state.shutdown.clone();
            tokio::select! {
                _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {}
                _ = stopped(&mut shutdown) => {}
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
        }
        Action::CloseMidResponse => {
            let resp = answer_head(200, id_header, &apns_id);
            let _keep_open = respond.send_response(resp, false);
            record(200, None, "closed");
            state.count(|s| s.closed_mid_response += 1);
            // Give h2 a moment to put the headers on the wire, then drop the connection.
            tokio::task::yield_now().await;
            conn.kill.notify_one();
        }
    }
}

/// A version-4 UUID from the handler's generator (no getrandom call per answer).
fn random_uuid(rng: &mut fastrand::Rng) -> uuid::Uuid {
    uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid()
}

/// A fresh random UUID as a header value (formatted on the stack).
fn uuid_header(rng: &mut fastrand::Rng) -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = random_uuid(rng).hyphenated().encode_lower(&mut buf);
    never_indexed(HeaderValue::from_str(id).expect("a UUID is a valid header value"))
}

/// Ids are unique per answer: in HPACK's dynamic table they would only evict the
/// headers that repeat (RFC 7541 6.2.3), as on the client side.
fn never_indexed(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// An answer's head: its status and the request's id (`apns-id`, or `apns-request-id`).
fn answer_head(status: u16, name: &HeaderName, id: &HeaderValue) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(name.clone(), id.clone());
    resp
}

/// Authenticate a broadcast or channel-management request for `bundle` (from the
/// path): the certificate's topics or the provider token must cover it (403
/// TopicMismatch otherwise), and it must carry no push-type suffix (TopicDisallowed).
fn authenticate_bundle(
    state: &State,
    conn: &Conn,
    h: &HeaderMap,
    bundle: &str,
) -> Result<Option<String>, Refusal> {
    if bundle.is_empty() || bundle.contains('/') {
        return Err((404, Reason::BadPath));
    }
    let key_id = match &conn.cert_topics {
        Some(topics) => {
            if topics.is_empty() {
                return Err((403, Reason::BadCertificate));
            }
            if !topics.iter().any(|b| b == bundle) {
                return Err((403, Reason::TopicMismatch));
            }
            None
        }
        None => Some(
            verify_token(state, conn, h, Some(bundle)).map_err(|e| match e {
                (400, Reason::TopicDisallowed) => (403, Reason::TopicMismatch),
                other => other,
            })?,
        ),
    };
    if apns::PushType::ALL
        .iter()
        .filter_map(|t| t.topic_suffix())
        .any(|s| bundle.ends_with(s))
    {
        return Err((400, Reason::TopicDisallowed));
    }
    Ok(key_id)
}

/// A request's `apns-request-id`: echoed when it is a UUID, made up when absent.
fn request_id(h: &HeaderMap, rng: &mut fastrand::Rng) -> Result<HeaderValue, Refusal> {
    match h.get(&APNS_REQUEST_ID) {
        None => Ok(uuid_header(rng)),
        Some(v) => match v.to_str().ok().map(uuid::Uuid::parse_str) {
            Some(Ok(_)) => Ok(never_indexed(v.clone())),
            _ => Err((400, Reason::BadMessageId)),
        },
    }
}

/// The channel a request names in `apns-channel-id`, and its storage policy.
fn channel_of(state: &State, h: &HeaderMap, bundle: &str) -> Result<(String, u8), Refusal> {
    let id = h
        .get(&APNS_CHANNEL_ID)
        .ok_or((400, Reason::MissingChannelId))?
        .to_str()
        .map_err(|_| (400, Reason::BadChannelId))?;
    validate_channel_id(id).map_err(|_| (400, Reason::BadChannelId))?;
    let policy = state
        .channels
        .lock()
        .expect("channels lock")
        .get(bundle)
        .and_then(|c| c.get(id).copied())
        .ok_or((400, Reason::ChannelNotRegistered))?;
    Ok((id.to_string(), policy))
}

/// Check a broadcast (`POST /4/broadcasts/apps/<bundle>`) as APNs does.
fn validate_broadcast(
    state: &State,
    conn: &Conn,
    parts: &http::request::Parts,
    payload: &[u8],
) -> Result<Info, Refusal> {
    if parts.method != http::Method::POST {
        return Err((405, Reason::MethodNotAllowed));
    }
    let bundle = parts
        .uri
        .path()
        .strip_prefix("/4/broadcasts/apps/")
        .unwrap_or("");
    let h = &parts.headers;
    let key_id = authenticate_bundle(state, conn, h, bundle)?;
    let (channel, policy) = channel_of(state, h, bundle)?;
    match header(h, &APNS_PUSH_TYPE) {
        None => return Err((400, Reason::MissingPushType)),
        Some(p) if !p.eq_ignore_ascii_case("liveactivity") => {
            return Err((400, Reason::InvalidPushType));
        }
        Some(_) => {}
    }
    if !matches!(header(h, &APNS_PRIORITY), Some("10" | "5" | "1")) {
        return Err((400, Reason::BadPriority));
    }
    match header(h, &APNS_EXPIRATION).map(str::parse::<u64>) {
        Some(Ok(0)) => {}
        Some(Ok(_)) if policy == 1 => {}
        _ => return Err((400, Reason::BadExpirationDate)),
    }
    if let Some(id) = h.get(&APNS_REQUEST_ID) {
        if id
            .to_str()
            .ok()
            .map(uuid::Uuid::parse_str)
            .is_none_or(|r| r.is_err())
        {
            return Err((400, Reason::BadMessageId));
        }
    }
    if payload.is_empty() {
        return Err((400, Reason::PayloadEmpty));
    }
    if payload.len() > MAX_PAYLOAD_BROADCAST {
        return Err((413, Reason::PayloadTooLarge));
    }
    Ok(Info {
        token: channel,
        key_id,
    })
}

/// Serve a channel-management request (`/1/apps/<bundle>/channels`, `/all-channels`)
/// from the in-memory store, as Apple's management hosts do.
fn manage(
    state: &State,
    conn: &Conn,
    parts: &http::request::Parts,
    body: &[u8],
    mut respond: SendResponse<Bytes>,
    rng: &mut fastrand::Rng,
) {
    let (status, extra, reply) = match manage_answer(state, conn, parts, body, rng) {
        Ok(ok) => ok,
        Err((status, reason)) => (status, None, Some(format!(r#"{{"reason":"{reason}"}}"#))),
    };
    state.count(|s| {
        s.answered += 1;
        *s.by_status.entry(status).or_default() += 1;
        s.channel_requests += 1;
    });
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let rid = request_id(&parts.headers, rng).unwrap_or_else(|_| uuid_header(rng));
    resp.headers_mut().insert(APNS_REQUEST_ID.clone(), rid);
    if let Some(id) = extra {
        resp.headers_mut().insert(APNS_CHANNEL_ID.clone(), id);
    }
    let end = reply.is_none();
    if let Ok(mut stream) = respond.send_response(resp, end) {
        if let Some(b) = reply {
            let _ = stream.send_data(Bytes::from(b), true);
        }
    }
}

type Managed = (u16, Option<HeaderValue>, Option<String>);

fn manage_answer(
    state: &State,
    conn: &Conn,
    parts: &http::request::Parts,
    body: &[u8],
    rng: &mut fastrand::Rng,
) -> Result<Managed, Refusal> {
    let rest = parts.uri.path().strip_prefix("/1/apps/").unwrap_or("");
    let (bundle, resource) = rest.rsplit_once('/').ok_or((404, Reason::BadPath))?;
    let method = &parts.method;
    match (resource, method.as_str()) {
        ("channels", "POST" | "GET" | "DELETE") | ("all-channels", "GET") => {}
        ("channels" | "all-channels", _) => return Err((405, Reason::MethodNotAllowed)),
        _ => return Err((404, Reason::BadPath)),
    }
    let h = &parts.headers;
    authenticate_bundle(state, conn, h, bundle)?;
    request_id(h, rng)?;
    if resource == "all-channels" {
        let ids: Vec<String> = state
            .channels
            .lock()
            .expect("channels lock")
            .get(bundle)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        let body = serde_json::json!({ "channels": ids }).to_string();
        return Ok((200, None, Some(body)));
    }
    match method.as_str() {
        "POST" => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|_| (400, Reason::BadRequestPayload))?;
            let obj = v.as_object().ok_or((400, Reason::BadRequestPayload))?;
            if obj
                .keys()
                .any(|k| k != "message-storage-policy" && k != "push-type")
            {
                return Err((400, Reason::BadRequestParams));
            }
            match obj.get("push-type") {
                None => return Err((400, Reason::MissingPushType)),
                Some(p) if p != "LiveActivity" => return Err((400, Reason::InvalidPushType)),
                Some(_) => {}
            }
            let policy = match obj.get("message-storage-policy").and_then(|p| p.as_u64()) {
                Some(p @ (0 | 1)) => p as u8,
                _ => return Err((400, Reason::BadRequestParams)),
            };
            let mut all = state.channels.lock().expect("channels lock");
            let mine = all.entry(bundle.to_string()).or_default();
            if mine.len() >= state.max_channels {
                return Err((400, Reason::CannotCreateChannelConfig));
            }
            let id = loop {
                use base64::Engine;
                let id =
                    base64::engine::general_purpose::STANDARD.encode(rng.u128(..).to_le_bytes());
                if !mine.contains_key(&id) {
                    break id;
                }
            };
            mine.insert(id.clone(), policy);
            let v = HeaderValue::from_str(&id).expect("base64 is a header value");
            Ok((201, Some(v), None))
        }
        "GET" => {
            let (_, policy) = channel_of(state, h, bundle)?;
            let body =
                format!(r#"{{"message-storage-policy":{policy},"push-type":"LiveActivity"}}"#);
            Ok((200, None, Some(body)))
        }
        _ => {
            let (id, _) = channel_of(state, h, bundle)?;
            if let Some(c) = state
                .channels
                .lock()
                .expect("channels lock")
                .get_mut(bundle)
            {
                c.remove(&id);
            }
            Ok((204, None, None))
        }
    }
}

fn device_token_of(parts: &http::request::Parts) -> String {
    parts
        .uri
        .path()
        .strip_prefix("/3/device/")
        .unwrap_or("")
        .to_string()
}

type Refusal = (u16, Reason);

/// Check one request as APNs does, in APNs' order: method, path, duplicate headers,
/// authentication, headers, device token, payload.
fn validate(
    state: &State,
    conn: &Conn,
    parts: &http::request::Parts,
    payload: &[u8],
) -> Result<Info, Refusal> {
    if parts.method != http::Method::POST {
        return Err((405, Reason::MethodNotAllowed));
    }
    let token = parts
        .uri
        .path()
        .strip_prefix("/3/device/")
        .ok_or((404, Reason::BadPath))?;
    if token.is_empty() {
        return Err((400, Reason::MissingDeviceToken));
    }
    let h = &parts.headers;
    // A name with two values makes the map hold more values than names.
    if h.len() != h.keys_len() {
        for name in [
            &APNS_TOPIC,
            &APNS_PUSH_TYPE,
            &APNS_PRIORITY,
            &APNS_EXPIRATION,
            &APNS_COLLAPSE_ID,
            &APNS_ID,
            &http::header::AUTHORIZATION,
        ] {
            if h.get_all(name).iter().count() > 1 {
                return Err((400, Reason::DuplicateHeaders));
            }
        }
    }
    let topic = header(h, &APNS_TOPIC);
    let key_id = match &conn.cert_topics {
        Some(topics) => {
            if topics.is_empty() {
                return Err((403, Reason::BadCertificate));
            }
            let t = topic.ok_or((400, Reason::MissingTopic))?;
            if !topics.iter().any(|b| topic_matches(b, t)) {
                return Err((400, Reason::TopicDisallowed));
            }
            None
        }
        None => Some(verify_token(state, conn, h, topic)?),
    };
    let topic = topic.ok_or((400, Reason::MissingTopic))?;
    let push_type = match header(h, &APNS_PUSH_TYPE) {
        None => apns::notification::PushType::Alert,
        Some(p) => p.parse().map_err(|_| (400, Reason::InvalidPushType))?,
    };
    if let Some(suffix) = push_type.topic_suffix() {
        if !topic.ends_with(suffix) {
            return Err((400, Reason::BadTopic));
        }
    }
    if let Some(p) = header(h, &APNS_PRIORITY) {
        if !matches!(p, "10" | "5" | "1") {
            return Err((400, Reason::BadPriority));
        }
    }
    if let Some(e) = header(h, &APNS_EXPIRATION) {
        if e.parse::<u64>().is_err() {
            return Err((400, Reason::BadExpirationDate));
        }
    }
    if let Some(c) = h.get(&APNS_COLLAPSE_ID) {
        if c.len() > 64 {
            return Err((400, Reason::BadCollapseId));
        }
    }
    if let Some(id) = header(h, &APNS_ID) {
        if uuid::Uuid::parse_str(id).is_err() {
            return Err((400, Reason::BadMessageId));
        }
    }
    if token.len() < 64 || token.len() > 200 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((400, Reason::BadDeviceToken));
    }
    if payload.is_empty() {
        return Err((400, Reason::PayloadEmpty));
    }
    if payload.len() > push_type.max_payload() {
        return Err((413, Reason::PayloadTooLarge));
    }
    Ok(Info {
        token: token.to_string(),
        key_id,
    })
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: u64,
}

/// Check an ES256 JWT's signature over its signing input exactly as received, and
/// read its claims; segments may be base64url (JWS) or standard base64 with padding.
fn verify_es256(raw: &str, key: &DecodingKey) -> Option<Claims> {
    use base64::Engine;
    let (signing_input, signature) = raw.rsplit_once('.')?;
    let (_, payload) = signing_input.split_once('.')?;
    let url = |seg: &str| -> String {
        seg.chars()
            .filter(|c| *c != '=')
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect()
    };
    let ok = jsonwebtoken::crypto::verify(
        &url(signature),
        signing_input.as_bytes(),
        key,
        Algorithm::ES256,
    )
    .ok()?;
    if !ok {
        tracing::debug!("mock: provider token signature does not verify");
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(url(payload))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn verify_token(
    state: &State,
    conn: &Conn,
    h: &HeaderMap,
    topic: Option<&str>,
) -> Result<String, Refusal> {
    let auth = h
        .get(http::header::AUTHORIZATION)
        .ok_or((403, Reason::MissingProviderToken))?;
    let jwt = auth
        .to_str()
        .ok()
        // The auth scheme is case-insensitive (RFC 9110): `bearer` and `Bearer` both work.
        .and_then(|s| {
            s.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &s[7..])
        })
        .ok_or((403, Reason::InvalidProviderToken))?;
    let cached = {
        let c = conn.cache.lock().expect("cache lock");
        c.as_ref()
            .filter(|c| c.jwt.as_ref() == jwt.as_bytes())
            .map(|c| (c.key_id.clone(), c.iat))
    };
    let (key_id, iat) = match cached {
        Some(hit) => hit,
        None => {
            // APNs also accepts tokens encoded with standard base64 and padding (the
            // `a2` crate sends those); JWS wants base64url, so normalise first.
            let normalised: String = jwt
                .chars()
                .filter(|c| *c != '=')
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect();
            let raw = jwt;
            let jwt = normalised.as_str();
            let header = jsonwebtoken::decode_header(jwt).map_err(|e| {
                tracing::debug!(error = %e, "mock: provider token header rejected");
                (403, Reason::InvalidProviderToken)
            })?;
            if header.alg != Algorithm::ES256 {
                return Err((403, Reason::InvalidProviderToken));
            }
            let kid = header.kid.ok_or((403, Reason::InvalidProviderToken))?;
            let entry = state
                .keys
                .read()
                .expect("keys lock")
                .get(&kid)
                .cloned()
                .ok_or((403, Reason::InvalidProviderToken))?;
            // Verify over the signing input as sent (standard or url-safe base64).
            let claims =
                verify_es256(raw, &entry.decoding).ok_or((403, Reason::InvalidProviderToken))?;
            if claims.iss != entry.key.team_id {
                return Err((403, Reason::InvalidProviderToken));
            }
            let iat = claims.iat;
            state
                .tokens_seen
                .lock()
                .expect("tokens lock")
                .entry(kid.clone())
                .or_default()
                .insert(Bytes::copy_from_slice(raw.as_bytes()));
            if state.token_update_min_secs > 0 {
                let mut newest = state.key_newest_iat.lock().expect("iat lock");
                let prev = newest.get(&kid).copied();
                if let Some(p) = prev {
                    if iat > p && iat - p < state.token_update_min_secs {
                        return Err((429, Reason::TooManyProviderTokenUpdates));
                    }
                }
                if prev.is_none_or(|p| iat > p) {
                    newest.insert(kid.clone(), iat);
                }
            }
            *conn.cache.lock().expect("cache lock") = Some(TokenCache {
                jwt: Bytes::copy_from_slice(raw.as_bytes()),
                key_id: kid.clone(),
                iat,
            });
            (kid, iat)
        }
    };
    let now = now_ms() / 1000;
    if now.saturating_sub(iat) > 3600 {
        return Err((403, Reason::ExpiredProviderToken));
    }
    if iat > now + 300 {
        return Err((403, Reason::InvalidProviderToken));
    }
    let entry = state
        .keys
        .read()
        .expect("keys lock")
        .get(&key_id)
        .cloned()
        .ok_or((403, Reason::InvalidProviderToken))?;
    if entry
        .key
        .environment
        .is_some_and(|e| e != state.environment)
    {
        return Err((403, Reason::BadEnvironmentKeyIdInToken));
    }
    if let (false, Some(t)) = (entry.key.topics.is_empty(), topic) {
        if !entry.key.topics.iter().any(|b| topic_matches(b, t)) {
            return Err((400, Reason::TopicDisallowed));
        }
    }
    {
        let mut bound = conn.bound.lock().expect("bound lock");
        match &*bound {
            None => *bound = Some((entry.key.team_id.clone(), key_id.clone())),
            Some((team, _)) if *team != entry.key.team_id => {
                return Err((403, Reason::InvalidProviderToken));
            }
            Some((_, k)) if *k != key_id => return Err((403, Reason::UnrelatedKeyIdInToken)),
            Some(_) => {}
        }
    }
    if !conn.raised.swap(true, Ordering::SeqCst) {
        conn.ctl.announce_limit(state.max_streams);
    }
    Ok(key_id)
}

/// Resolves when the mock is told to stop (holds no borrow across awaits).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

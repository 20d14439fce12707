//! The multi-app APNs client: one [`AppClient`] per credentials profile, each with its
//! own pools (one per key, or one for its certificate), and the send loop.
//!
//! Order of the limits inside [`AppClient::send`], outermost first:
//! 1. the send deadline (`send_timeout`): no attempt starts after it, so a notification
//!    takes at most `send_timeout + request_timeout`;
//! 2. resends (`max_resends`): only for requests APNs certainly did not process
//!    (refused stream, above a GOAWAY's last-stream-id, no stream obtained), plus one
//!    resend after refreshing an expired provider token;
//! 3. waiting for a stream slot (back-pressure), until the send deadline;
//! 4. the request timeout (`request_timeout`) of one attempt on one stream.
//!
//! A request that was sent and got no answer is never resent here: it is `Unknown`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;
use tokio::time::Instant;

use crate::classify::{self, Context, Outcome, RetryCause};
use crate::connection::{AttemptError, ConnectOptions};
use crate::endpoint::Endpoint;
use crate::jwt::{
    AfterExpired, Clock, JwtError, ProviderToken, SignerRegistry, SystemClock, TokenPolicy,
    TokenSigner,
};
use crate::notification::Notification;
use crate::pool::{Pool, PoolOptions};
use crate::response::{Answer, ApnsResponse};
use crate::settings::{AppSettings, Auth as AuthSettings, ClientSettings, key_for_topic};
use crate::tls::{self, TlsError};

/// Why a client could not start. Each says which app and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("apps.{app}.endpoint: {authority:?} is not a host:port")]
    Endpoint { app: String, authority: String },
    #[error("no app named {app:?} in this client")]
    UnknownApp { app: String },
    #[error("apps.{app}: {source}")]
    Tls { app: String, source: TlsError },
    #[error("apps.{app}: {source}")]
    Jwt { app: String, source: JwtError },
    #[error("apps.{app}: key {key_id}: {source}")]
    Key {
        app: String,
        key_id: String,
        source: crate::secret::SecretError,
    },
}

/// Why a notification got no answer from APNs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no app named {0:?}")]
    UnknownApp(String),
    #[error("app {app} has no key for topic {topic:?}")]
    NoKeyForTopic { app: String, topic: String },
    /// APNs did not get it; safe to send again.
    #[error("not sent: {0}")]
    NotSent(String),
    /// Sent, no answer: may have been delivered.
    #[error("unknown: {0}")]
    Unknown(String),
    /// Signing a provider token failed (the key is unusable).
    #[error("provider token: {0}")]
    Token(String),
    /// The caller's check said stop when a stream was granted; nothing was sent.
    #[error("withdrawn before sending")]
    Withdrawn,
}

impl SendError {
    /// The outcome a failed send stands for.
    pub fn outcome(&self) -> Outcome {
        match self {
            SendError::NotSent(m) => Outcome::RetryLater(RetryCause::NotSent(m.clone())),
            SendError::Unknown(m) => Outcome::RetryLater(RetryCause::Unknown(m.clone())),
            SendError::Token(_) | SendError::Withdrawn => Outcome::CredentialsBroken {
                status: 0,
                reason: None,
            },
            SendError::UnknownApp(_) | SendError::NoKeyForTopic { .. } => Outcome::Rejected {
                status: 0,
                reason: None,
            },
        }
    }
}

/// An answer and what it means.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub response: ApnsResponse,
    pub outcome: Outcome,
    pub connection: u64,
    /// Resends this notification needed (refused streams, GOAWAY, token refresh).
    pub resends: u32,
}

/// What the send loop got for one request: the whole answer and what it means.
pub(crate) struct Exchange {
    pub answer: Answer,
    pub response: ApnsResponse,
    pub outcome: Outcome,
    pub connection: u64,
    pub resends: u32,
}

/// Timeouts and bounds of the send loop.
#[derive(Clone, Copy, Debug)]
pub struct SendOptions {
    pub request_timeout: Duration,
    pub send_timeout: Duration,
    pub max_resends: u32,
}

impl From<&ClientSettings> for SendOptions {
    fn from(s: &ClientSettings) -> Self {
        SendOptions {
            request_timeout: s.request_timeout,
            send_timeout: s.send_timeout,
            max_resends: s.max_resends,
        }
    }
}

/// A key of a token-auth app, with the topics it may sign for.
struct KeyRoute {
    /// Empty: team-scoped (any topic of the team).
    topics: Vec<String>,
    signer: Arc<TokenSigner>,
    pool: Arc<Pool>,
}

enum Auth {
    Token(Vec<KeyRoute>),
    Certificate(Arc<Pool>),
}

/// The client of one credentials profile.
pub struct AppClient {
    name: String,
    endpoint: Endpoint,
    authority: Authority,
    auth: Auth,
    opts: SendOptions,
    /// The same credentials against the app's other environment, started on first use.
    other: Option<OtherEnvironment>,
    /// When the app's certificates expire (seconds since the epoch): `client` (the
    /// certificate it authenticates with) and `ca` (the earliest of its extra CAs).
    expiries: Vec<(&'static str, i64)>,
}

/// How to start the client of an app's other environment, and the client once started.
struct OtherEnvironment {
    settings: AppSettings,
    client_settings: ClientSettings,
    clock: Arc<dyn Clock>,
    started: std::sync::OnceLock<Result<Arc<AppClient>, String>>,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AppClient {
    /// Load credentials, build TLS, start the pools (connections open in the background).
    pub fn start(
        name: &str,
        app: &AppSettings,
        settings: &ClientSettings,
        signers: &SignerRegistry,
        clock: Arc<dyn Clock>,
    ) -> Result<AppClient, ClientError> {
        let tls_err = |source| ClientError::Tls {
            app: name.into(),
            source,
        };
        let pool_opts = |tls| PoolOptions {
            connect: ConnectOptions {
                endpoint: app.endpoint.clone(),
                tls,
                connect_timeout: settings.connect_timeout,
                ping_interval: settings.ping_interval,
                ping_timeout: settings.ping_timeout,
                max_streams: app.max_streams_per_connection,
                proxy: app.proxy.clone(),
            },
            connections: app.connections,
            backoff_min: settings.reconnect_min,
            backoff_max: settings.reconnect_max,
            drain_timeout: settings.request_timeout + Duration::from_secs(1),
        };
        let jwt_err = |source| ClientError::Jwt {
            app: name.into(),
            source,
        };
        let mut expiries = Vec::new();
        if let Some(ca) = &app.ca_file {
            let earliest = tls::load_ca_file(ca)
                .map_err(tls_err)?
                .iter()
                .filter_map(|c| tls::not_after(c))
                .min();
            expiries.extend(earliest.map(|t| ("ca", t)));
        }
        let auth = match &app.auth {
            AuthSettings::Token { team_id, keys } => {
                let tls = tls::client_config(app.ca_file.as_deref(), None).map_err(tls_err)?;
                let policy = TokenPolicy::new(settings.token_refresh).map_err(jwt_err)?;
                let mut routes = Vec::new();
                for k in keys {
                    let pem = k.key.load().map_err(|source| ClientError::Key {
                        app: name.into(),
                        key_id: k.key_id.clone(),
                        source,
                    })?;
                    let signer = signers
                        .get_or_create(team_id, &k.key_id, &pem, policy, clock.clone())
                        .map_err(jwt_err)?;
                    let pool = Pool::start(format!("{name}/{}", k.key_id), pool_opts(tls.clone()));
                    routes.push(KeyRoute {
                        topics: k.topics.clone(),
                        signer,
                        pool,
                    });
                }
                Auth::Token(routes)
            }
            AuthSettings::Certificate(identity) => {
                let id = identity.load().map_err(tls_err)?;
                if let Some(t) = id.chain.first().and_then(|c| tls::not_after(c)) {
                    expiries.push(("client", t));
                }
                let tls = tls::client_config(app.ca_file.as_deref(), Some(id)).map_err(tls_err)?;
                Auth::Certificate(Pool::start(format!("{name}/certificate"), pool_opts(tls)))
            }
        };
        let authority = app.endpoint.authority();
        let authority = authority.parse().map_err(|_| ClientError::Endpoint {
            app: name.into(),
            authority,
        })?;
        let other = app
            .other_environment
            .clone()
            .map(|endpoint| OtherEnvironment {
                settings: AppSettings {
                    endpoint,
                    other_environment: None,
                    // One connection: it carries only the checks of tokens APNs calls bad.
                    connections: 1,
                    ..app.clone()
                },
                client_settings: *settings,
                clock: clock.clone(),
                started: std::sync::OnceLock::new(),
            });
        Ok(AppClient {
            name: name.into(),
            endpoint: app.endpoint.clone(),
            authority,
            auth,
            opts: SendOptions::from(settings),
            other,
            expiries,
        })
    }

    /// Send `n` once to the app's other environment (`AppSettings::other_environment`),
    /// with the same credentials: `None` when the app has none configured.
    pub async fn send_other_environment(
        &self,
        n: &Notification,
    ) -> Option<Result<Delivery, SendError>> {
        let o = self.other.as_ref()?;
        let client = o.started.get_or_init(|| {
            AppClient::start(
                &self.name,
                &o.settings,
                &o.client_settings,
                &SignerRegistry::default(),
                o.clock.clone(),
            )
            .map(Arc::new)
            .map_err(|e| e.to_string())
        });
        Some(match client {
            Ok(c) => c.send(n).await,
            Err(e) => Err(SendError::NotSent(format!("the other environment: {e}"))),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The pools of this app (one per key, or one for the certificate).
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        match &self.auth {
            Auth::Token(routes) => routes.iter().map(|r| r.pool.clone()).collect(),
            Auth::Certificate(p) => vec![p.clone()],
        }
    }

    /// When this app's certificates expire, in seconds since the epoch: (`client` or
    /// `ca`, time). Empty for token auth without an extra CA.
    pub fn certificate_expiries(&self) -> &[(&'static str, i64)] {
        &self.expiries
    }

    /// Ages in seconds of this app's provider tokens, by key id.
    pub fn token_ages(&self) -> Vec<(String, u64)> {
        match &self.auth {
            Auth::Token(routes) => routes
                .iter()
                .map(|r| (r.signer.key_id().to_string(), r.signer.age()))
                .collect(),
            Auth::Certificate(_) => Vec::new(),
        }
    }

    /// The key and pool for a topic: a topic-specific key first, then the team-scoped key.
    fn route(&self, topic: &str) -> Option<(Option<&Arc<TokenSigner>>, &Arc<Pool>)> {
        match &self.auth {
            Auth::Certificate(p) => Some((None, p)),
            Auth::Token(routes) => key_for_topic(routes.iter().map(|r| r.topics.as_slice()), topic)
                .map(|i| (Some(&routes[i].signer), &routes[i].pool)),
        }
    }

    /// Send one notification: see the module docs for the order of limits.
    pub async fn send(&self, n: &Notification) -> Result<Delivery, SendError> {
        self.send_checked(n, || true).await
    }

    /// `send`, but `proceed` is asked each time a stream is granted, just before the
    /// request goes out; when it says no, nothing is sent and the answer is
    /// `SendError::Withdrawn`. The worker's circuit breaker uses it so that jobs which
    /// passed the gate before the app's credentials were found broken, and still wait
    /// for a stream, are not sent with the broken credentials.
    pub async fn send_checked(
        &self,
        n: &Notification,
        proceed: impl Fn() -> bool,
    ) -> Result<Delivery, SendError> {
        let x = self
            .exchange(
                n.topic(),
                |auth| n.request(&self.authority, auth),
                n.payload(),
                crate::connection::MAX_ERROR_BODY,
                proceed,
            )
            .await?;
        Ok(Delivery {
            response: x.response,
            outcome: x.outcome,
            connection: x.connection,
            resends: x.resends,
        })
    }

    /// The send loop for any request to this app's endpoint: `build` makes the request
    /// of one attempt from the `authorization` value (token auth) and `body` goes with
    /// it; the key for `topic` signs it; `max_body` bounds the answer's body kept. Used
    /// by notifications and channel management.
    pub(crate) async fn exchange(
        &self,
        topic: &str,
        build: impl Fn(Option<&HeaderValue>) -> http::Request<()>,
        body: &Bytes,
        max_body: usize,
        proceed: impl Fn() -> bool,
    ) -> Result<Exchange, SendError> {
        let (signer, pool) = self.route(topic).ok_or_else(|| SendError::NoKeyForTopic {
            app: self.name.clone(),
            topic: topic.to_string(),
        })?;
        let deadline = Instant::now() + self.opts.send_timeout;
        let mut token: Option<Arc<ProviderToken>> = match signer {
            Some(s) => Some(s.current().map_err(|e| SendError::Token(e.to_string()))?),
            None => None,
        };
        let mut refreshed = false;
        let mut resends = 0u32;
        loop {
            let (conn, permit) = pool
                .acquire(deadline)
                .await
                .map_err(|e| SendError::NotSent(e.to_string()))?;
            if !proceed() {
                return Err(SendError::Withdrawn);
            }
            let req = build(token.as_ref().map(|t| t.authorization()));
            // An attempt, once started, gets its whole request timeout: cutting it short
            // because the wait for a stream was long would only turn answers into Unknowns.
            match conn
                .send(
                    req,
                    body.clone(),
                    self.opts.request_timeout,
                    permit,
                    max_body,
                )
                .await
            {
                Ok(answer) => {
                    let response = ApnsResponse::from_answer(&answer);
                    if classify::leave_connection(&response) {
                        conn.drain("503 Shutdown");
                    }
                    let ctx = Context {
                        can_refresh_token: signer.is_some() && !refreshed,
                    };
                    let mut outcome = classify::classify(&response, ctx);
                    if outcome == Outcome::RefreshToken {
                        let (s, used) = (
                            signer.expect("token auth"),
                            token.as_ref().expect("token auth"),
                        );
                        match s
                            .after_expired(used)
                            .map_err(|e| SendError::Token(e.to_string()))?
                        {
                            AfterExpired::Resend(t) => {
                                token = Some(t);
                                refreshed = true;
                                resends += 1;
                                continue;
                            }
                            AfterExpired::TooSoon => {
                                tracing::error!(app = %self.name, key_id = s.key_id(), "APNs says the provider token expired although it is younger than 20 minutes: check the system clock");
                                outcome = classify::classify(&response, Context::default());
                            }
                        }
                    }
                    return Ok(Exchange {
                        answer,
                        response,
                        outcome,
                        connection: conn.id(),
                        resends,
                    });
                }
                Err(AttemptError::NotSent(why)) => {
                    resends += 1;
                    if resends > self.opts.max_resends || Instant::now() >= deadline {
                        return Err(SendError::NotSent(format!(
                            "{why} (after {resends} attempts)"
                        )));
                    }
                    tracing::debug!(app = %self.name, connection = conn.id(), reason = %why, "resending on another stream");
                    // Let the connection's driver and the pool see what happened first.
                    tokio::task::yield_now().await;
                }
                Err(AttemptError::Unknown(why)) => return Err(SendError::Unknown(why)),
            }
        }
    }

    /// Close the pools: in-flight requests get `grace` to finish.
    pub async fn close(&self, grace: Duration) {
        for p in self.pools() {
            p.close(grace).await;
        }
        if let Some(Ok(other)) = self.other.as_ref().and_then(|o| o.started.get()) {
            for p in other.pools() {
                p.close(grace).await;
            }
        }
    }
}

/// Every app of the process, sharing one provider token per (team, key).
///
/// ```no_run
/// use apns::{ApnsClient, AppSettings, ClientSettings, Endpoint, KeySettings, Notification,
///            NotificationParts, Outcome, SecretSource};
///
/// # async fn send() -> Result<(), Box<dyn std::error::Error>> {
/// let key = SecretSource::File("AuthKey_KEY1234567.p8".into());
/// let app = AppSettings::token(Endpoint::production(), "TEAM123456",
///                              vec![KeySettings::team_scoped("KEY1234567", key)]);
/// let client = ApnsClient::start([("shop".to_string(), app)], &ClientSettings::default())?;
/// let n = Notification::new(NotificationParts::new(
///     "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0",
///     "com.example.shop",
///     br#"{"aps":{"alert":"Hello"}}"#.as_slice(),
/// ))?;
/// match client.send("shop", &n).await?.outcome {
///     Outcome::Delivered => println!("accepted by APNs"),
///     Outcome::TokenDead { reason, .. } => println!("remove this token: {reason}"),
///     other => println!("not delivered: {other:?}"),
/// }
/// # Ok(()) }
/// ```
pub struct ApnsClient {
    apps: BTreeMap<String, RwLock<Arc<AppClient>>>,
    settings: ClientSettings,
    clock: Arc<dyn Clock>,
}

impl ApnsClient {
    /// Start a client for these apps (by name), with the system clock.
    pub fn start(
        apps: impl IntoIterator<Item = (String, AppSettings)>,
        settings: &ClientSettings,
    ) -> Result<ApnsClient, ClientError> {
        ApnsClient::start_with_clock(apps, settings, Arc::new(SystemClock))
    }

    /// [`ApnsClient::start`] with another clock for provider tokens (tests).
    pub fn start_with_clock(
        apps: impl IntoIterator<Item = (String, AppSettings)>,
        settings: &ClientSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<ApnsClient, ClientError> {
        let signers = SignerRegistry::default();
        let mut out = BTreeMap::new();
        for (name, app) in apps {
            let c = AppClient::start(&name, &app, settings, &signers, clock.clone())?;
            out.insert(name, RwLock::new(Arc::new(c)));
        }
        Ok(ApnsClient {
            apps: out,
            settings: *settings,
            clock,
        })
    }

    /// The apps' clients as they are now.
    pub fn apps(&self) -> Vec<Arc<AppClient>> {
        self.apps
            .values()
            .map(|a| a.read().expect("app lock").clone())
            .collect()
    }

    fn app(&self, name: &str) -> Option<Arc<AppClient>> {
        self.apps
            .get(name)
            .map(|a| a.read().expect("app lock").clone())
    }

    /// New credentials for an app (a rotated key or certificate): its new client
    /// (credentials loaded, connections opening) takes every send from now on; the old
    /// one's connections finish their streams within `request_timeout` and close. If
    /// the new credentials cannot be loaded, the old ones stay and the error says why.
    pub fn replace(&self, name: &str, app: &AppSettings) -> Result<(), ClientError> {
        let slot = self.apps.get(name).ok_or_else(|| ClientError::UnknownApp {
            app: name.to_string(),
        })?;
        let fresh = AppClient::start(
            name,
            app,
            &self.settings,
            &SignerRegistry::default(),
            self.clock.clone(),
        )?;
        let old = std::mem::replace(&mut *slot.write().expect("app lock"), Arc::new(fresh));
        let grace = self.settings.request_timeout + Duration::from_secs(1);
        tokio::spawn(async move { old.close(grace).await });
        Ok(())
    }

    /// Send one notification with the credentials of app `app`.
    pub async fn send(&self, app: &str, n: &Notification) -> Result<Delivery, SendError> {
        self.send_checked(app, n, || true).await
    }

    /// `AppClient::send_checked` of the app named `app`.
    pub async fn send_checked(
        &self,
        app: &str,
        n: &Notification,
        proceed: impl Fn() -> bool,
    ) -> Result<Delivery, SendError> {
        let a = self
            .app(app)
            .ok_or_else(|| SendError::UnknownApp(app.to_string()))?;
        match a.send_checked(n, &proceed).await {
            // The app got new credentials while this one waited for a stream on the
            // old connections (now closing): APNs never saw it; send it on the new ones.
            Err(SendError::NotSent(_))
                if self.app(app).is_some_and(|now| !Arc::ptr_eq(&now, &a)) =>
            {
                let now = self.app(app).expect("checked above");
                now.send_checked(n, proceed).await
            }
            other => other,
        }
    }

    /// `AppClient::send_other_environment` of the app named `app`.
    pub async fn send_other_environment(
        &self,
        app: &str,
        n: &Notification,
    ) -> Option<Result<Delivery, SendError>> {
        self.app(app)?.send_other_environment(n).await
    }

    /// Close every connection: in-flight requests get `grace` to finish.
    pub async fn close(&self, grace: Duration) {
        for a in self.apps() {
            a.close(grace).await;
        }
    }
}

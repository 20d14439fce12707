//! A client for the Apple Push Notification service (APNs): HTTP/2 over TLS, a few
//! long-lived connections per app with many streams each, token auth (ES256 provider
//! tokens shared per key) or certificate auth, and every answer classified into one
//! [`Outcome`] you can act on.
//!
//! What it does for you:
//! - **Validation before sending** ([`Notification::new`], [`payload::check`]): what
//!   APNs would refuse with a 400 or 413 is refused locally, with a sentence that says
//!   what to fix, so a bad notification never costs a request.
//! - **Connections** ([`pool`], [`connection`]): N connections per credentials scope,
//!   replaced with jittered backoff; stream limits follow the server's SETTINGS (1 at
//!   first with token auth, then about 1000); PING when idle; GOAWAY and 503 Shutdown
//!   drain a connection; requests APNs certainly did not process are resent.
//! - **Provider tokens** ([`jwt`]): one per (team, key), refreshed inside Apple's
//!   20-to-60-minute window; `403 ExpiredProviderToken` refreshes once and resends.
//! - **Classification** ([`classify()`]): every status and reason Apple documents maps to
//!   delivered, token dead, channel gone, message rejected, retry later, or credentials
//!   broken.
//! - **Live Activity broadcasts** ([`Notification::broadcast`]) to a channel, and channel
//!   management ([`channels::ChannelClient`]: create, read, delete, list on Apple's
//!   management hosts, through the same send loop).
//!
//! TLS verification is never off; a mock or a proxy is trusted by adding its CA.
//!
//! Against Apple, an app is `AppSettings::token(Endpoint::production(), "<team id>",
//! vec![KeySettings::team_scoped("<key id>", SecretSource::File("AuthKey.p8".into()))])`.
//! The example below runs against the mock APNs of the `apns-mock` crate instead, which
//! is trusted through its CA:
//!
//! ```
//! use apns::{ApnsClient, AppSettings, ClientSettings, KeySettings, Notification,
//!            NotificationParts, Outcome, SecretSource};
//! # use apns_mock::{MockApns, MockConfig, TokenRule, Faults};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let faults = Faults { rules: vec![TokenRule { prefix: "dead".into(), status: 410,
//! #     reason: Some("Unregistered".into()), times: None }], ..Faults::default() };
//! # let mock = MockApns::start(MockConfig { faults, ..MockConfig::default() }).await?;
//! # let dir = tempfile::tempdir()?;
//! # let ca = dir.path().join("ca.pem");
//! # mock.write_ca(&ca)?;
//! # let pem = mock.generate_key("TEAM123456", "KEY1234567")?;
//! let key = KeySettings::team_scoped("KEY1234567", SecretSource::Value(pem.into()));
//! let mut app = AppSettings::token(mock.endpoint(), "TEAM123456", vec![key]);
//! app.ca_file = Some(ca);
//! let client = ApnsClient::start([("shop".to_string(), app)], &ClientSettings::default())?;
//!
//! let payload = br#"{"aps":{"alert":"Hello"}}"#.as_slice();
//! let token = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
//! let n = Notification::new(NotificationParts::new(token, "com.example.shop", payload))?;
//! assert_eq!(client.send("shop", &n).await?.outcome, Outcome::Delivered);
//!
//! let gone = "dead13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
//! let n = Notification::new(NotificationParts::new(gone, "com.example.shop", payload))?;
//! match client.send("shop", &n).await?.outcome {
//!     Outcome::TokenDead { reason, .. } => println!("remove the token: {reason}"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! The `apns-mock` crate is a server that behaves like Apple's (with fault injection)
//! for testing code that uses this one.

pub mod channels;
pub mod classify;
pub mod client;
pub mod connection;
pub mod endpoint;
pub mod frames;
pub mod jwt;
pub mod limiter;
pub mod notification;
pub mod payload;
pub mod pool;
pub mod proxy;
pub mod response;
pub mod secret;
pub mod settings;
pub mod tls;

pub use classify::{Outcome, RetryCause, classify, reason_label};
pub use client::{ApnsClient, AppClient, ClientError, Delivery, SendError};
pub use endpoint::{Endpoint, EndpointKind};
pub use notification::{
    BroadcastParts, Notification, NotificationParts, Priority, PushType, Target, ValidationError,
    topic_matches, validate_device_token,
};
pub use payload::PayloadError;
pub use response::{ApnsResponse, Reason};
pub use secret::{Secret, SecretSource};
pub use settings::{AppSettings, Auth, ClientSettings, KeySettings};
pub use tls::IdentitySource;

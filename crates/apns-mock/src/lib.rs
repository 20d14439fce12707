//! A mock APNs for tests, demos and benchmarks: a real HTTP/2 + TLS server that
//! validates requests and provider tokens as Apple's does (signature, `kid`, `iss`,
//! age, one key per connection, the 20-minute floor between a key's tokens), checks
//! client certificates, answers every status and reason Apple documents, starts
//! token-auth connections at 1 stream and raises the limit after the first valid
//! token, and injects faults from a script ([`Faults`]): latency and spikes, GOAWAY,
//! stream resets, refused streams, stalls, dropped PINGs, answers by device token.
//!
//! ```
//! use apns::{ApnsClient, AppSettings, ClientSettings, KeySettings, Notification,
//!            NotificationParts, Outcome, SecretSource};
//! use apns_mock::{MockApns, MockConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mock = MockApns::start(MockConfig::default()).await?;
//! let dir = tempfile::tempdir()?;
//! let ca = dir.path().join("mock-ca.pem");
//! mock.write_ca(&ca)?;
//! let key = mock.generate_key("TEAM123456", "KEY1234567")?;
//!
//! let mut app = AppSettings::token(mock.endpoint(), "TEAM123456",
//!     vec![KeySettings::team_scoped("KEY1234567", SecretSource::Value(key.into()))]);
//! app.ca_file = Some(ca);
//! let client = ApnsClient::start([("app".to_string(), app)], &ClientSettings::default())?;
//! let token = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";
//! let n = Notification::new(NotificationParts::new(token, "com.example.app",
//!                                                  br#"{"aps":{"alert":"Hi"}}"#.as_slice()))?;
//! assert_eq!(client.send("app", &n).await?.outcome, Outcome::Delivered);
//! assert_eq!(mock.received()[0].device_token, token);
//! # Ok(()) }
//! ```

pub mod certs;
pub mod faults;
mod server;
mod shim;

pub use faults::{Action, Faults, RandomAnswer, TokenRule};
pub use server::{MockApns, MockConfig, MockError, MockKey, MockStats, Received};

//! Shared helpers of the client's tests: a mock APNs with a trusted CA file, apps for
//! token and certificate auth, notifications.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apns::jwt::{Clock, SignerRegistry, SystemClock};
use apns::settings::{AppSettings, Auth, ClientSettings, KeySettings};
use apns::tls::IdentitySource;
use apns::{ApnsClient, AppClient, Notification, NotificationParts, Secret, SecretSource};
use apns_mock::{Faults, MockApns, MockConfig};

pub const TEAM: &str = "TEAM123456";
pub const KEY: &str = "KEY1234567";
pub const TOPIC: &str = "com.example.app";

pub struct Mock {
    pub mock: MockApns,
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn mock(faults: Faults) -> Mock {
    mock_with(MockConfig {
        faults,
        ..MockConfig::default()
    })
    .await
}

pub async fn mock_with(cfg: MockConfig) -> Mock {
    let mock = MockApns::start(cfg).await.expect("mock starts");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("mock-ca.pem");
    mock.write_ca(&ca).unwrap();
    Mock {
        mock,
        ca,
        _dir: dir,
    }
}

impl Mock {
    /// A token-auth app whose key the mock knows.
    pub fn token_app(&self, team: &str, key_id: &str, connections: usize) -> AppSettings {
        let pem = self.mock.generate_key(team, key_id).unwrap();
        let key = KeySettings::team_scoped(key_id, SecretSource::Value(Secret::new(pem)));
        let mut app = AppSettings::token(self.mock.endpoint(), team, vec![key]);
        app.connections = connections;
        app.ca_file = Some(self.ca.clone());
        app
    }

    /// A certificate-auth app with a PEM identity the mock issued for `topics`.
    pub fn cert_app(&self, topics: &[&str]) -> (AppSettings, apns_mock::certs::Issued) {
        let id = self.mock.issue_client_identity(topics).unwrap();
        let identity = IdentitySource::Pem {
            certificate: SecretSource::Value(Secret::new(id.cert_pem.clone())),
            key: SecretSource::Value(Secret::new(id.key_pem.clone())),
        };
        let mut app = AppSettings::certificate(self.mock.endpoint(), identity);
        app.connections = 1;
        app.ca_file = Some(self.ca.clone());
        (app, id)
    }
}

/// The keys of a token-auth app.
pub fn keys(app: &mut AppSettings) -> &mut Vec<KeySettings> {
    match &mut app.auth {
        Auth::Token { keys, .. } => keys,
        Auth::Certificate(_) => panic!("not a token-auth app"),
    }
}

pub fn fast_settings() -> ClientSettings {
    ClientSettings {
        request_timeout: Duration::from_secs(2),
        send_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..ClientSettings::default()
    }
}

pub fn app_client(app: &AppSettings, settings: &ClientSettings) -> AppClient {
    app_client_with_clock(app, settings, Arc::new(SystemClock))
}

pub fn app_client_with_clock(
    app: &AppSettings,
    settings: &ClientSettings,
    clock: Arc<dyn Clock>,
) -> AppClient {
    AppClient::start("test", app, settings, &SignerRegistry::default(), clock)
        .expect("client starts")
}

pub fn client(apps: &[(&str, AppSettings)], settings: &ClientSettings) -> ApnsClient {
    let apps = apps.iter().map(|(n, a)| (n.to_string(), a.clone()));
    ApnsClient::start(apps, settings).expect("client starts")
}

/// A 64-hex-digit device token made from a prefix and a number.
pub fn token(prefix: &str, n: u64) -> String {
    let tail = format!("{n:016x}");
    let mut t = prefix.to_string();
    while t.len() + tail.len() < 64 {
        t.push('0');
    }
    t.push_str(&tail);
    t
}

pub fn notification(device_token: &str) -> Notification {
    notification_to(device_token, TOPIC)
}

pub fn notification_to(device_token: &str, topic: &str) -> Notification {
    let mut parts = NotificationParts::new(
        device_token,
        topic,
        br#"{"aps":{"alert":"hello"}}"#.as_slice(),
    );
    parts.apns_id = Some(uuid::Uuid::new_v4());
    Notification::new(parts).expect("valid notification")
}

/// Log to the test output when RUST_LOG is set.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A mock answer rule by device-token prefix.
pub fn rule(prefix: &str, status: u16, reason: &str, times: Option<u32>) -> apns_mock::TokenRule {
    apns_mock::TokenRule {
        prefix: prefix.into(),
        status,
        reason: Some(reason.into()),
        times,
    }
}

/// One raw HTTP/2 connection to the mock (for requests our client would never send).
pub async fn raw_connection(m: &Mock) -> Arc<apns::connection::Connection> {
    use apns::connection::{ConnectOptions, Connection};
    let opts = ConnectOptions {
        endpoint: m.mock.endpoint(),
        tls: apns::tls::client_config(Some(&m.ca), None).unwrap(),
        connect_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(60),
        ping_timeout: Duration::from_secs(10),
        max_streams: 10,
        proxy: None,
    };
    Connection::connect(1, &opts).await.unwrap()
}

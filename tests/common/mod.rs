//! Shared helpers of the integration tests: a mock APNs with a trusted CA file, app
//! configs for token and certificate auth, notifications.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use apns_worker::apns::client::{ApnsClient, AppClient};
use apns_worker::apns::jwt::{Clock, SignerRegistry, SystemClock};
use apns_worker::apns::notification::{Notification, NotificationParts, PushType};
use apns_worker::config::{ApnsSettings, AppConfig, CertificateConfig, KeyConfig};
use apns_worker::mock::{Faults, MockApns, MockConfig};
use apns_worker::secret::Secret;
use bytes::Bytes;

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
    pub fn token_app(&self, team: &str, key_id: &str, connections: usize) -> AppConfig {
        let pem = self.mock.generate_key(team, key_id).unwrap();
        AppConfig {
            endpoint: self.mock.endpoint(),
            topics: vec![TOPIC.into()],
            default_topic: None,
            connections,
            max_streams_per_connection: 1000,
            ca_file: Some(self.ca.clone()),
            team_id: Some(team.into()),
            keys: vec![KeyConfig {
                key_id: key_id.into(),
                key_file: None,
                key: Some(Secret::new(pem)),
                topics: vec![],
            }],
            certificate: None,
        }
    }

    /// A certificate-auth app with a PEM identity the mock issued for `topics`.
    pub fn cert_app(&self, topics: &[&str]) -> (AppConfig, apns_worker::mock::certs::Issued) {
        let id = self.mock.issue_client_identity(topics).unwrap();
        let app = AppConfig {
            endpoint: self.mock.endpoint(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            default_topic: None,
            connections: 1,
            max_streams_per_connection: 1000,
            ca_file: Some(self.ca.clone()),
            team_id: None,
            keys: vec![],
            certificate: Some(CertificateConfig {
                cert_file: None,
                cert: Some(Secret::new(id.cert_pem.clone())),
                key_file: None,
                key: Some(Secret::new(id.key_pem.clone())),
                pkcs12_file: None,
                password: None,
                password_file: None,
            }),
        };
        (app, id)
    }
}

pub fn fast_settings() -> ApnsSettings {
    ApnsSettings {
        request_timeout_ms: 2_000,
        send_timeout_ms: 5_000,
        reconnect_min_ms: 50,
        reconnect_max_ms: 500,
        ..ApnsSettings::default()
    }
}

pub fn app_client(app: &AppConfig, settings: &ApnsSettings) -> AppClient {
    app_client_with_clock(app, settings, Arc::new(SystemClock))
}

pub fn app_client_with_clock(
    app: &AppConfig,
    settings: &ApnsSettings,
    clock: Arc<dyn Clock>,
) -> AppClient {
    AppClient::start("test", app, settings, &SignerRegistry::default(), clock)
        .expect("client starts")
}

pub fn client(apps: &[(&str, AppConfig)], settings: &ApnsSettings) -> ApnsClient {
    let map = apps
        .iter()
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    ApnsClient::start(&map, settings, Arc::new(SystemClock)).expect("client starts")
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
    Notification::new(NotificationParts {
        device_token: device_token.into(),
        topic: topic.into(),
        push_type: PushType::Alert,
        priority: None,
        expiration: None,
        collapse_id: None,
        apns_id: Some(uuid::Uuid::new_v4()),
        payload: Bytes::from_static(br#"{"aps":{"alert":"hello"}}"#),
    })
    .expect("valid notification")
}

/// Log to the test output when RUST_LOG is set.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub mod broker;

/// A worker config for one test: private topology, fast retries, the given apps.
pub fn worker_config(
    queues: apns_worker::config::QueueSettings,
    apps: Vec<(&str, AppConfig)>,
) -> apns_worker::config::Config {
    let mut cfg = apns_worker::config::Config {
        queues,
        retry: broker::fast_retry(),
        apns: fast_settings(),
        ..Default::default()
    };
    cfg.broker.prefetch = 500;
    cfg.broker.connection_name = Some("apns-worker-test".into());
    cfg.circuit.open_ms = 200;
    cfg.circuit.max_open_ms = 400;
    cfg.worker.drain_secs = 5;
    for (n, a) in apps {
        cfg.apps.insert(n.to_string(), a);
    }
    cfg
}
pub mod process;
pub mod proxy;
pub mod tools;

/// A mock answer rule by device-token prefix.
pub fn rule(
    prefix: &str,
    status: u16,
    reason: &str,
    times: Option<u32>,
) -> apns_worker::mock::TokenRule {
    apns_worker::mock::TokenRule {
        prefix: prefix.into(),
        status,
        reason: Some(reason.into()),
        times,
    }
}

/// A validator for one of the published schemas (formats checked).
pub fn schema_validator(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// One raw HTTP/2 connection to the mock (for requests our client would never send).
pub async fn raw_connection(m: &Mock) -> std::sync::Arc<apns_worker::apns::connection::Connection> {
    use apns_worker::apns::connection::{ConnectOptions, Connection};
    let opts = ConnectOptions {
        endpoint: m.mock.endpoint(),
        tls: apns_worker::apns::tls::client_config(Some(&m.ca), None).unwrap(),
        connect_timeout: std::time::Duration::from_secs(5),
        ping_interval: std::time::Duration::from_secs(60),
        ping_timeout: std::time::Duration::from_secs(10),
        max_streams: 10,
    };
    Connection::connect(1, &opts).await.unwrap()
}

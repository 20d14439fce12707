//! Shared helpers of the worker's integration tests: a mock APNs with a trusted CA
//! file, token-auth apps pointed at it, worker configs with a private topology.
#![allow(dead_code)]

use std::path::PathBuf;

use apns::{Secret, SecretSource};
use apns_mock::{Faults, MockApns, MockConfig};
use apns_worker::config::{ApnsSettings, AppConfig};

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
        let key = SecretSource::Value(Secret::new(pem));
        let mut app = AppConfig::token(self.mock.endpoint(), team, key_id, key, &[TOPIC]);
        app.connections = connections;
        app.ca_file = Some(self.ca.clone());
        app
    }
}

/// A token-auth app on `app_env` with the environment guard pointed at `other`: one
/// key known to both mocks (as Apple's keys are to both environments), and a CA file
/// holding both mocks' CAs (kept alive by the returned file).
pub fn guarded_app(app_env: &Mock, other: &Mock) -> (AppConfig, tempfile::NamedTempFile) {
    let (pem, public) = apns_mock::certs::generate_signing_key().unwrap();
    for m in [app_env, other] {
        m.mock
            .add_key(apns_mock::MockKey {
                key_id: KEY.into(),
                team_id: TEAM.into(),
                public_key_pem: public.clone(),
                topics: vec![],
                environment: None,
            })
            .unwrap();
    }
    let key = SecretSource::Value(Secret::new(pem));
    let mut app = AppConfig::token(app_env.mock.endpoint(), TEAM, KEY, key, &[TOPIC]);
    app.connections = 1;
    let bundle = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bundle.path(),
        format!("{}{}", app_env.mock.ca_pem(), other.mock.ca_pem()),
    )
    .unwrap();
    app.ca_file = Some(bundle.path().to_path_buf());
    app.environment_guard = Some(true);
    app.other_endpoint = Some(other.mock.endpoint());
    (app, bundle)
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

/// A 64-hex-digit device token made from a prefix and a number.
pub fn token(prefix: &str, n: u64) -> String {
    apns_worker::publish::synthetic_token(prefix, n)
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
pub mod cluster;
pub mod mixed;
pub mod monitoring;
pub mod process;
pub mod proxy;
pub mod tools;

/// A mock answer rule by device-token prefix.
pub fn rule(prefix: &str, status: u16, reason: &str, times: Option<u32>) -> apns_mock::TokenRule {
    apns_mock::TokenRule {
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

//! The environment guard: a device token APNs calls BadDeviceToken in the app's
//! environment is sent once to the other environment before it is reported dead. Two
//! mocks, a "production" one (the app's) and a "sandbox" one (its other environment),
//! holding the same key: a sandbox-only token gives an environment-mismatch event and
//! no cleanup event; a token dead in both gives the cleanup event.

mod common;

use std::time::Duration;

use apns::EndpointKind;
use apns_mock::{Faults, MockConfig};
use common::broker;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_the_other_environment_is_not_deleted() {
    // Production refuses both tokens; the sandbox accepts the first, refuses the second.
    let production = mock_with(MockConfig {
        environment: EndpointKind::Production,
        faults: Faults {
            rules: vec![
                rule("5a", 400, "BadDeviceToken", None),
                rule("dd", 400, "BadDeviceToken", None),
            ],
            ..Faults::default()
        },
        ..MockConfig::default()
    })
    .await;
    let sandbox = mock_with(MockConfig {
        environment: EndpointKind::Sandbox,
        faults: Faults {
            rules: vec![rule("dd", 400, "BadDeviceToken", None)],
            ..Faults::default()
        },
        ..MockConfig::default()
    })
    .await;
    // One key, known to both environments; a CA file holding both mocks' CAs.
    let (app, _ca) = guarded_app(&production, &sandbox);
    let q = broker::topology("environment");
    let cfg = worker_config(q.clone(), vec![("shop", app)]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let sandbox_only = token("5a", 1);
    let dead = token("dd", 2);
    let good = token("0a", 3);
    let jobs = [(&sandbox_only, "e1"), (&dead, "e2"), (&good, "e3")]
        .iter()
        .map(|(t, id)| json!({"id": id, "device_token": t, "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string())
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_terminal(3, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(
        (s.delivered, s.environment_mismatches, s.token_cleanups),
        (1, 1, 1),
        "{s:?}"
    );
    let events = broker::drain_queue(&conn, &q.environment_queue).await;
    assert_eq!(events.len(), 1);
    let ev = events[0].json();
    assert_eq!(ev["device_token"], sandbox_only.as_str());
    assert_eq!(ev["accepted_by"], sandbox.mock.endpoint().to_string());
    let schema = schema_validator("environment-mismatch-event.schema.json");
    assert!(schema.is_valid(&ev), "{ev}");
    let cleanups = broker::drain_queue(&conn, &q.cleanup_queue).await;
    let dead_tokens: Vec<_> = cleanups
        .iter()
        .map(|c| c.json()["device_token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        dead_tokens,
        vec![dead.clone()],
        "only the token dead in both"
    );
    // The sandbox saw only the two tokens production called bad.
    let checked: Vec<_> = sandbox
        .mock
        .received()
        .into_iter()
        .map(|r| r.device_token)
        .collect();
    assert_eq!(checked.len(), 2, "{checked:?}");
    assert!(!checked.contains(&good));
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

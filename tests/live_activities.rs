//! Live Activities end to end, as a user runs them: `apns-worker channels` creates and
//! deletes channels on the mock's management API, broadcast jobs go through the real
//! broker and the worker, and every answer is settled: delivered, a channel-cleanup
//! event for a channel that is gone (never a token cleanup), the dead letter of a
//! refused broadcast, and `InvalidJob` with the exact field for a bad push-to-start.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use apns::EndpointKind;
use apns_mock::{Faults, MockConfig};
use apns_worker::config::Config;
use common::broker;
use common::process::{ChildConfig, write_config};
use common::*;
use serde_json::{Value, json};

/// `apns-worker channels ...` with this config: (exit code, stdout JSON or null, stderr).
fn channels(cfg: &Path, args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_apns-worker"))
        .env_remove("RUST_LOG")
        .env("APNS_WORKER_LOG_FORMAT", "text")
        .arg("channels")
        .args(args)
        .arg("-c")
        .arg(cfg)
        .output()
        .expect("apns-worker runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().expect("exited"),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn update(channel_id: &str, id: &str) -> String {
    json!({
        "id": id,
        "channel_id": channel_id,
        "app": "shop",
        "topic": "com.example.app.push-type.liveactivity",
        "payload": {"aps": {"event": "update", "timestamp": 1_700_000_000, "content-state": {"score": "1-0"}}},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_broadcast_delete_and_broadcast_again() {
    let sandbox = mock(Faults::default()).await;
    let production = mock_with(MockConfig {
        environment: EndpointKind::Production,
        ..MockConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let q = broker::topology("live-activities");
    let retry = broker::fast_retry();
    let prod_key = dir.path().join("prod.p8");
    std::fs::write(
        &prod_key,
        production.mock.generate_key(TEAM, "KEY7654321").unwrap(),
    )
    .unwrap();
    // A second app with the same bundle id in the production environment.
    let extra = format!(
        "\n[apps.prod]\nendpoint = \"{}\"\ntopics = [\"com.example.app\"]\nca_file = \"{}\"\nteam_id = \"{TEAM}\"\n[[apps.prod.keys]]\nkey_id = \"KEY7654321\"\nkey_file = \"{}\"\n",
        production.mock.endpoint(),
        production.ca.display(),
        prod_key.display()
    );
    let path = write_config(&ChildConfig {
        dir: dir.path(),
        name: "live-activities",
        broker_url: broker::BROKER,
        queues: &q,
        retry: &retry,
        endpoint: &sandbox.mock.endpoint().to_string(),
        ca: &sandbox.ca,
        key_pem: &sandbox.mock.generate_key(TEAM, KEY).unwrap(),
        extra: &extra,
    });
    let cfg = Config::load(Some(&path), Vec::new()).expect("config loads");
    let conn = broker::connect().await;
    let w = broker::start(cfg).await;

    // Create, as a user does: one channel without storage.
    let (code, created, err) = channels(&path, &["create", "--app", "shop"]);
    assert_eq!(code, 0, "{err}");
    let id = created["channel_id"].as_str().expect("an id").to_string();
    assert_eq!(created["message_storage_policy"], 0);
    assert_eq!(created["bundle_id"], "com.example.app");
    assert_eq!(sandbox.mock.channels("com.example.app").len(), 1);
    let (code, listed, err) = channels(&path, &["list", "--app", "shop"]);
    assert_eq!((code, listed["count"].as_u64()), (0, Some(1)), "{err}");
    let (code, read, err) = channels(&path, &["get", "--app", "shop", &id]);
    assert_eq!(
        (code, &read["push_type"]),
        (0, &json!("LiveActivity")),
        "{err}"
    );

    // Broadcast: delivered, sent as Apple documents.
    broker::publish_jobs(&conn, &q.jobs, vec![update(&id, "b1")]).await;
    w.wait_terminal(1, Duration::from_secs(20)).await;
    assert_eq!(w.worker.summary().delivered, 1);
    let sent = sandbox.mock.received();
    let b = sent
        .iter()
        .find(|r| r.channel_id.as_deref() == Some(&id))
        .expect("sent");
    assert_eq!((b.status, b.topic.as_deref()), (200, None));
    assert_eq!(b.expiration.as_deref(), Some("0"));

    // The same channel from the production app: it does not exist there.
    let mut other_env: Value = serde_json::from_str(&update(&id, "b0")).unwrap();
    other_env["app"] = json!("prod");
    broker::publish_jobs(&conn, &q.jobs, vec![other_env.to_string()]).await;
    w.wait_terminal(2, Duration::from_secs(20)).await;
    assert_eq!(w.worker.summary().channel_cleanups, 1);

    // Delete, then broadcast again: a channel-cleanup event, acked, no token cleanup.
    let (code, deleted, err) = channels(&path, &["delete", "--app", "shop", &id]);
    assert_eq!((code, &deleted["deleted"]), (0, &json!(id)), "{err}");
    assert!(sandbox.mock.channels("com.example.app").is_empty());
    broker::publish_jobs(&conn, &q.jobs, vec![update(&id, "b2")]).await;
    w.wait_terminal(3, Duration::from_secs(20)).await;
    let s = w.worker.summary();
    assert_eq!(
        (s.delivered, s.channel_cleanups, s.token_cleanups),
        (1, 2, 0),
        "{s:?}"
    );
    let events = broker::drain_queue(&conn, &q.cleanup_queue).await;
    assert_eq!(events.len(), 2);
    let schema = schema_validator("channel-cleanup-event.schema.json");
    for (ev, (app, job)) in events.iter().zip([("prod", "b0"), ("shop", "b2")]) {
        let v = ev.json();
        assert!(schema.is_valid(&v), "{v}");
        assert_eq!(ev.routing_key, "channel.com.example.app");
        assert_eq!(
            ev.props.kind().as_ref().map(|k| k.as_str()),
            Some("channel-cleanup")
        );
        assert_eq!(
            (v["channel_id"].as_str(), v["app"].as_str()),
            (Some(id.as_str()), Some(app))
        );
        assert_eq!(
            (v["reason"].as_str(), v["job_id"].as_str()),
            (Some("ChannelNotRegistered"), Some(job))
        );
    }
    assert!(
        broker::drain_queue(&conn, &q.dead_letter_queue)
            .await
            .is_empty()
    );

    // Deleting it again: APNs' reason, exit 1, nothing on stdout.
    let (code, out, err) = channels(&path, &["delete", "--app", "shop", &id]);
    assert_eq!((code, out), (1, Value::Null));
    assert!(err.contains("ChannelNotRegistered"), "{err}");
    w.stop().await;
    broker::delete_topology(&conn, &q, &retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_broadcasts_and_bad_live_activities_are_dead_lettered_with_the_reason() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("live-activities-refused");
    let mut app = m.token_app(TEAM, KEY, 1);
    app.topics = vec![TOPIC.into()];
    let cfg = worker_config(q.clone(), vec![("shop", app.clone())]);
    let settings = app.settings("shop", &cfg.apns).unwrap();
    let channels =
        apns::channels::ChannelClient::start("shop", &settings, &cfg.apns.client_settings())
            .unwrap();
    let unstored = channels
        .create(TOPIC, apns::channels::StoragePolicy::NoMessageStored)
        .await
        .unwrap()
        .channel_id;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let token = token("1a", 1);
    let jobs = [
        // Stored for an hour on a channel that stores nothing: APNs refuses it.
        json!({"id": "x1", "channel_id": unstored, "topic": TOPIC, "expiration": 4_000_000_000u64,
               "payload": {"aps": {"event": "update", "timestamp": 1_700_000_000, "content-state": {}}}}),
        // Push-to-start without its attributes type.
        json!({"id": "x2", "device_token": token, "topic": "com.example.app.push-type.liveactivity",
               "push_type": "liveactivity",
               "payload": {"aps": {"event": "start", "timestamp": 1_700_000_000, "content-state": {}, "attributes": {}}}}),
        // A broadcast cannot start an activity.
        json!({"id": "x3", "channel_id": unstored, "topic": TOPIC,
               "payload": {"aps": {"event": "start", "timestamp": 1_700_000_000, "content-state": {},
                                   "attributes-type": "A", "attributes": {}}}}),
        // A good push-to-start and a good end.
        json!({"id": "x4", "device_token": token, "topic": "com.example.app.push-type.liveactivity",
               "push_type": "liveactivity",
               "payload": {"aps": {"event": "start", "timestamp": 1_700_000_000, "content-state": {},
                                   "attributes-type": "MatchAttributes", "attributes": {"home": "Lyon"},
                                   "input-push-token": 1}}}),
        json!({"id": "x5", "channel_id": unstored, "topic": TOPIC,
               "payload": {"aps": {"event": "end", "timestamp": 1_700_000_000, "dismissal-date": 1_700_000_600}}}),
    ];
    broker::publish_jobs(&conn, &q.jobs, jobs.iter().map(Value::to_string).collect()).await;
    w.wait_terminal(5, Duration::from_secs(20)).await;
    let s = w.worker.summary();
    assert_eq!(s.delivered, 2, "{s:?}");
    let mut dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    dead.sort_by_key(|d| d.json()["id"].as_str().unwrap_or("").to_string());
    let got: Vec<(String, String, Option<i64>, String)> = dead
        .iter()
        .map(|d| {
            (
                d.json()["id"].as_str().unwrap().to_string(),
                d.header_str("x-apns-reason").unwrap(),
                d.header_int("x-apns-status"),
                d.header_str("x-error").unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (got[0].0.as_str(), got[0].1.as_str(), got[0].2),
        ("x1", "BadExpirationDate", Some(400))
    );
    assert_eq!((got[1].0.as_str(), got[1].1.as_str()), ("x2", "InvalidJob"));
    assert!(
        got[1]
            .3
            .starts_with("payload.aps.attributes-type is required for event start"),
        "{}",
        got[1].3
    );
    assert_eq!((got[2].0.as_str(), got[2].1.as_str()), ("x3", "InvalidJob"));
    assert!(
        got[2]
            .3
            .contains("a broadcast cannot start a Live Activity"),
        "{}",
        got[2].3
    );
    // Nothing reached the mock for the two invalid jobs.
    let sent = m.mock.received();
    assert_eq!(sent.len(), 3, "x1 (refused), x4, x5");
    w.stop().await;
    channels.close(Duration::from_secs(1)).await;
    broker::delete_topology(&conn, &q, &broker::fast_retry()).await;
}

/// The environment guard is for device tokens: a broadcast answered BadDeviceToken
/// (APNs does not, but a server may) is dead-lettered, never sent to the other
/// environment, whose "no such channel" would retire a live channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_guard_leaves_broadcasts_alone() {
    let app_env = mock(Faults::default()).await;
    let other = mock_with(MockConfig {
        environment: EndpointKind::Production,
        ..MockConfig::default()
    })
    .await;
    let (app, _ca) = guarded_app(&app_env, &other);
    let q = broker::topology("live-activities-guard");
    let cfg = worker_config(q.clone(), vec![("shop", app.clone())]);
    let settings = app.settings("shop", &cfg.apns).unwrap();
    let channels =
        apns::channels::ChannelClient::start("shop", &settings, &cfg.apns.client_settings())
            .unwrap();
    let id = channels
        .create(TOPIC, apns::channels::StoragePolicy::NoMessageStored)
        .await
        .unwrap()
        .channel_id;
    app_env
        .mock
        .update_faults(|f| f.rules.push(rule(&id, 400, "BadDeviceToken", None)))
        .unwrap();
    let conn = broker::connect().await;
    let w = broker::start(cfg).await;
    broker::publish_jobs(
        &conn,
        &q.jobs,
        vec![update(&id, "g1").replace("\"app\":\"shop\",", "")],
    )
    .await;
    w.wait_terminal(1, Duration::from_secs(20)).await;
    let s = w.worker.summary();
    assert_eq!(
        (
            s.channel_cleanups,
            s.environment_mismatches,
            s.dead_lettered_total()
        ),
        (0, 0, 1),
        "{s:?}"
    );
    assert!(
        other.mock.received().is_empty(),
        "nothing sent to the other environment"
    );
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(
        dead[0].header_str("x-apns-reason").as_deref(),
        Some("BadDeviceToken")
    );
    assert!(
        broker::drain_queue(&conn, &q.cleanup_queue)
            .await
            .is_empty()
    );
    w.stop().await;
    channels.close(Duration::from_secs(1)).await;
    broker::delete_topology(&conn, &q, &broker::fast_retry()).await;
}

//! A rolling configuration change: some replicas already know a new app, some do not
//! yet. A job naming an app the replica that got it does not know waits (parked,
//! `retry.park_delay_ms` at a time, not an attempt) for one that does, up to
//! `retry.unknown_app_wait_ms`; then it is dead-lettered as InvalidJob, saying how
//! long it waited.

mod common;

use std::time::Duration;

use apns::{Secret, SecretSource};
use apns_mock::Faults;
use apns_worker::config::{AppConfig, RetrySettings};
use common::*;

const EU_TOPIC: &str = "com.example.eu";

fn eu_app(m: &Mock) -> AppConfig {
    let pem = m.mock.generate_key(TEAM, "KEYEU00001").unwrap();
    let mut app = AppConfig::token(
        m.mock.endpoint(),
        TEAM,
        "KEYEU00001",
        SecretSource::Value(Secret::new(pem)),
        &[EU_TOPIC],
    );
    app.ca_file = Some(m.ca.clone());
    app
}

fn eu_job(i: u64) -> String {
    serde_json::json!({
        "id": format!("eu-{i}"),
        "app": "eu",
        "device_token": token("e0", i),
        "topic": EU_TOPIC,
        "payload": {"aps": {"alert": "hej"}},
    })
    .to_string()
}

fn waiting(wait_ms: u64) -> RetrySettings {
    RetrySettings {
        park_delay_ms: 300,
        unknown_app_wait_ms: wait_ms,
        ..broker::fast_retry()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_an_app_being_rolled_out_waits_for_a_replica_that_knows_it() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("rollout");
    let shop = m.token_app(TEAM, KEY, 1);
    let mut old = worker_config(q.clone(), vec![("shop", shop.clone())]);
    old.retry = waiting(120_000);
    old.broker.connection_name = Some("rollout-old".into());
    let mut new = worker_config(q.clone(), vec![("shop", shop), ("eu", eu_app(&m))]);
    new.retry = old.retry.clone();
    new.broker.connection_name = Some("rollout-new".into());
    let conn = broker::connect().await;

    let a = broker::start(old).await;
    broker::publish_jobs(&conn, &q.jobs, (0..50).map(eu_job).collect()).await;
    // The old replica alone: every job for the new app waits, none is dead-lettered.
    a.wait_until("every eu job parked", Duration::from_secs(30), |s| {
        s.awaiting_config >= 50
    })
    .await;
    assert_eq!(a.worker.summary().dead_lettered_total(), 0);
    assert_eq!(m.mock.received().len(), 0);

    // A replica with the new configuration comes up: it delivers them all.
    let b = broker::start(new.clone()).await;
    b.wait_until("eu jobs delivered", Duration::from_secs(60), |s| {
        s.delivered == 50
    })
    .await;
    b.wait_drained(&conn, &q, &new.retry, Duration::from_secs(30))
        .await;
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.dead_lettered_total() + sb.dead_lettered_total(), 0);
    assert_eq!(sa.delivered, 0);
    assert_eq!(sb.awaiting_config, 0, "the new replica knows the app");
    let got = m.mock.received();
    assert_eq!(got.len(), 50, "each job sent once");
    assert!(got.iter().all(|r| r.topic.as_deref() == Some(EU_TOPIC)));
    assert!(
        broker::drain_queue(&conn, &q.dead_letter_queue)
            .await
            .is_empty()
    );
    broker::delete_topology(&conn, &q, &new.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_is_bounded_and_the_dead_letter_says_how_long_it_waited() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("rollout-bound");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    // ceil(1000 / 300) = 4 parks, then the dead letter.
    cfg.retry = waiting(1_000);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let unknown_topic = serde_json::json!({
        "device_token": token("e1", 1),
        "topic": "com.example.nobody",
        "payload": {},
    })
    .to_string();
    broker::publish_jobs(&conn, &q.jobs, vec![eu_job(1), eu_job(2), unknown_topic]).await;
    w.wait_terminal(3, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(s.awaiting_config, 12, "3 jobs x 4 parks");
    assert_eq!(s.dead_lettered.get("InvalidJob"), Some(&3));
    let mut dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    dead.sort_by_key(|d| d.header_str("x-error"));
    let errors: Vec<_> = dead
        .iter()
        .map(|d| d.header_str("x-error").unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            // With one app, a job without "app" belongs to it.
            "app \"shop\" does not send to topic \"com.example.nobody\" (waited 1s for a configuration that knows it)",
            "no app named \"eu\" is configured (waited 1s for a configuration that knows it)",
            "no app named \"eu\" is configured (waited 1s for a configuration that knows it)",
        ]
    );
    for d in &dead {
        assert_eq!(d.header_str("x-apns-reason").as_deref(), Some("InvalidJob"));
        assert_eq!(d.header_int("x-attempts"), Some(0), "never sent");
        assert!(
            d.header("x-apns-config-waits").is_none(),
            "a replay waits again"
        );
    }
    assert_eq!(m.mock.received().len(), 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

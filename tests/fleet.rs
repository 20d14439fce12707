//! A fleet: several worker processes holding one `.p8` key, started at different
//! moments, one of them restarted mid-run, against the mock's strict rule (a key's new
//! provider token sooner than 20 minutes after its previous one is refused with 429
//! TooManyProviderTokenUpdates). They must sign one token between them.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apns_mock::Faults;
use common::broker;
use common::process::{ChildConfig, WorkerProcess, write_config};
use common::*;
use serde_json::json;

fn period_start() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    now - now % 3000
}

async fn wait_answered(m: &Mock, at_least: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while m.mock.stats().answered < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "APNs answered only {} of {at_least}",
            m.mock.stats().answered
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_one_key_signs_one_token() {
    const N: u64 = 20_000;
    let m = mock(Faults {
        latency_ms: 2,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("fleet");
    let r = broker::fast_retry();
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        write_config(&ChildConfig {
            dir: dir.path(),
            name,
            broker_url: broker::BROKER,
            queues: &q,
            retry: &r,
            endpoint: &endpoint,
            ca: &m.ca,
            key_pem: &pem,
            extra: "",
        })
    };
    let spawn = |name: &str| {
        WorkerProcess::spawn(
            &config(name),
            dir.path().join(format!("{name}.log")),
            "warn",
        )
    };
    let first_period = period_start();
    let jobs: Vec<String> = (0..N)
        .map(|i| json!({"id": format!("f{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string())
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    // Started at different moments: each signs its token when it starts.
    let w1 = spawn("fleet-1");
    wait_answered(&m, 1_000, Duration::from_secs(60)).await;
    let w2 = spawn("fleet-2");
    wait_answered(&m, 4_000, Duration::from_secs(60)).await;
    let w3 = spawn("fleet-3");
    wait_answered(&m, 8_000, Duration::from_secs(60)).await;
    // A rolling restart of the first: a new process, a new signer, the same token.
    w1.signal("TERM");
    let (st, s1, _) = w1.wait(Duration::from_secs(15)).await;
    assert!(st.success());
    let w1b = spawn("fleet-1b");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let delivered = m.mock.stats().by_status.get(&200).copied().unwrap_or(0);
        if delivered >= N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} of {N} delivered: {:?}",
            m.mock.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut summaries = vec![s1.expect("a summary")];
    for w in [w2, w3, w1b] {
        w.signal("TERM");
        let (st, s, _) = w.wait(Duration::from_secs(15)).await;
        assert!(st.success());
        summaries.push(s.expect("a summary"));
    }
    let stats = m.mock.stats();
    let parked: u64 = summaries.iter().map(|s| s.parked).sum();
    let delivered: u64 = summaries.iter().map(|s| s.delivered).sum();
    let periods = if period_start() == first_period { 1 } else { 2 };
    let mut sends = std::collections::BTreeMap::<String, u64>::new();
    for r in m.mock.received().iter().filter(|r| r.status == 200) {
        *sends.entry(r.device_token.clone()).or_default() += 1;
    }
    let dups: u64 = sends.values().map(|c| c - 1).sum();
    eprintln!("fleet: {dups} duplicate deliveries; summaries {summaries:?}");
    eprintln!(
        "fleet: 4 processes, {delivered} delivered, {parked} parked, {} distinct tokens for {KEY} over {periods} period(s), answers {:?}",
        m.mock.distinct_tokens(KEY),
        stats.by_reason
    );
    assert_eq!(stats.by_reason.get("TooManyProviderTokenUpdates"), None);
    assert_eq!(parked, 0, "{summaries:?}");
    assert!(delivered >= N, "{summaries:?}");
    assert_eq!(m.mock.distinct_tokens(KEY), periods, "one token per period");
    broker::delete_topology(&conn, &q, &r).await;
}

//! Reliability under faults: broker loss, APNs faults, SIGTERM, SIGKILL, several
//! replicas, hostile input, secrets. Each run reconciles every job to one terminal state.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use apns_worker::mock::{Faults, MockConfig, RandomAnswer, TokenRule};
use common::broker::{self, Got};
use common::process::{WorkerProcess, write_config};
use common::proxy::Proxy;
use common::*;
use serde_json::json;

fn rule(prefix: &str, status: u16, reason: &str, times: Option<u32>) -> TokenRule {
    TokenRule {
        prefix: prefix.into(),
        status,
        reason: Some(reason.into()),
        times,
    }
}

/// Job i of a mixed run: its body and the terminal state it must reach.
fn mixed_job(i: u64) -> (String, &'static str) {
    let (prefix, want) = match i % 20 {
        0 => ("dead", "cleanup"),
        1 => ("b400", "dead"),
        2 => ("c503", "delivered"),
        _ => ("0a", "delivered"),
    };
    let t = token(prefix, i);
    (json!({"id": format!("j{i}"), "device_token": t, "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string(), want)
}

fn mixed_rules() -> Vec<TokenRule> {
    vec![
        rule("dead", 410, "Unregistered", None),
        rule("b400", 400, "BadCollapseId", None),
        rule("c503", 503, "ServiceUnavailable", Some(1)),
    ]
}

/// Index of a job from its device token (the last 16 hex digits).
fn index_of(token: &str) -> u64 {
    u64::from_str_radix(&token[48..], 16).unwrap()
}

/// Every job reached exactly the terminal state it should; duplicates of delivery are
/// returned (the number of extra 200s the mock gave for the same job).
fn reconcile(n: u64, mock: &apns_worker::mock::MockApns, cleanups: &[Got], dead: &[Got]) -> u64 {
    let mut delivered = BTreeMap::<u64, u64>::new();
    let mut seen = BTreeMap::<u64, Vec<String>>::new();
    for r in mock.received() {
        seen.entry(index_of(&r.device_token))
            .or_default()
            .push(format!("{}:{}", r.action, r.status));
        if r.status == 200 && r.action == "answered" {
            *delivered.entry(index_of(&r.device_token)).or_default() += 1;
        }
    }
    let cleaned: BTreeSet<u64> = cleanups
        .iter()
        .map(|e| index_of(e.json()["device_token"].as_str().unwrap()))
        .collect();
    let dead_ids: BTreeSet<u64> = dead
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    let mut wrong = Vec::new();
    for i in 0..n {
        let (_, want) = mixed_job(i);
        let got = (
            delivered.contains_key(&i),
            cleaned.contains(&i),
            dead_ids.contains(&i),
        );
        let ok = match want {
            "delivered" => got == (true, false, false),
            "cleanup" => got == (false, true, false),
            "dead" => got == (false, false, true),
            _ => unreachable!(),
        };
        if !ok {
            wrong.push(format!(
                "job {i}: want {want}, got (delivered, cleanup, dead) = {got:?}; APNs saw {:?}",
                seen.get(&i)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} jobs in the wrong state, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    delivered.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dead_lettered_and_the_worker_stays_healthy() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("hostile");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let dir = format!("{}/tests/hostile", env!("CARGO_MANIFEST_DIR"));
    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    // Larger than the broker's default frame (128 KiB) and than worker.max_job_bytes.
    corpus.push((
        "huge".into(),
        format!(
            r#"{{"device_token":"{}","topic":"{TOPIC}","payload":{{"a":"{}"}}}}"#,
            token("00", 1),
            "x".repeat(300_000)
        )
        .into_bytes(),
    ));
    corpus.sort();
    let bodies = corpus
        .iter()
        .map(|(name, body)| (body.clone(), apns_worker::worker::amqp::job_props(name)))
        .collect();
    broker::publish_raw(&conn, &q.jobs, bodies).await;
    w.wait_terminal(corpus.len() as u64, Duration::from_secs(20))
        .await;
    assert!(w.worker.ready(), "still healthy");
    // And still working: a good job goes through.
    broker::publish_jobs(&conn, &q.jobs, vec![mixed_job(3).0]).await;
    w.wait_terminal(corpus.len() as u64 + 1, Duration::from_secs(20))
        .await;
    let s = w.stop().await;
    assert_eq!(
        s.dead_lettered.get("InvalidJob").copied(),
        Some(corpus.len() as u64),
        "{s:?}"
    );
    assert_eq!(s.delivered, 1);
    assert_eq!(m.mock.stats().answered, 1, "no hostile job was sent");
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let by_name: BTreeMap<String, Got> = dead
        .into_iter()
        .map(|d| (d.props.message_id().as_ref().unwrap().to_string(), d))
        .collect();
    for (name, body) in &corpus {
        let d = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} was not dead-lettered"));
        assert_eq!(&d.body, body, "{name}: byte for byte");
        let err = d.header_str("x-error").unwrap();
        assert!(!err.is_empty() && err.len() <= 1024, "{name}: {err}");
        assert_eq!(
            d.header_str("x-apns-reason").as_deref(),
            Some("InvalidJob"),
            "{name}"
        );
    }
    let why = |n: &str| by_name[n].header_str("x-error").unwrap();
    assert!(
        why("huge").contains("over the 65536-byte limit"),
        "{}",
        why("huge")
    );
    assert!(
        why("deep-job.json").contains("nests deeper than 32"),
        "{}",
        why("deep-job.json")
    );
    assert!(
        why("header-injection-topic.json").contains("does not send to topic"),
        "{}",
        why("header-injection-topic.json")
    );
    assert!(
        why("duplicate-keys.json").contains("duplicate field"),
        "{}",
        why("duplicate-keys.json")
    );
    assert!(
        why("invalid-utf8.json").contains("not valid JSON"),
        "{}",
        why("invalid-utf8.json")
    );
    assert!(
        why("unknown-app.json").contains("no app named"),
        "{}",
        why("unknown-app.json")
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_loss_mid_run_loses_nothing_and_readiness_follows() {
    const N: u64 = 10_000;
    let m = mock_with(MockConfig {
        faults: Faults {
            rules: mixed_rules(),
            latency_ms: 1,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let q = broker::topology("brokerloss");
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    cfg.broker.url = apns_worker::secret::Secret::new(proxy.amqp_url());
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 300;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    broker::publish_jobs(&conn, &q.jobs, (0..N).map(|i| mixed_job(i).0).collect()).await;
    w.wait_until("a third settled", Duration::from_secs(60), |s| {
        s.delivered > N / 3
    })
    .await;
    proxy.cut();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while w.worker.ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness did not drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !w.worker.ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(120))
        .await;
    let s = w.stop().await;
    assert!(s.broker_sessions >= 2, "{s:?}");
    let cleanups = broker::drain_queue(&conn, &q.cleanup_queue).await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let dups = reconcile(N, &m.mock, &cleanups, &dead);
    // Duplicates come only from answers lost (unknown outcomes) or from retry copies
    // whose publish confirm was lost with the connection.
    assert!(
        dups <= s.unknown_outcomes + s.uncertain_publishes,
        "{dups} duplicates, {s:?}"
    );
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    eprintln!("broker loss: {s:?}; duplicate deliveries: {dups}");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

fn rabbitmqctl_close(connection_name: &str) -> bool {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl is installed with RabbitMQ");
    let listing = String::from_utf8_lossy(&out.stdout);
    let needle = format!("\"{connection_name}\"");
    let mut closed = false;
    for line in listing.lines().filter(|l| l.contains(&needle)) {
        let pid = line.split('\t').next().unwrap();
        closed |= std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "chaos test"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    }
    closed
}

/// 100,000 jobs, GOAWAY every 3,000 requests, 1% 503, 0.5% stream resets, latency
/// spikes, the broker connection closed by the broker and cut on the network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_reconciliation() {
    let n: u64 = std::env::var("APNS_WORKER_CHAOS_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let faults = Faults {
        rules: mixed_rules(),
        random: vec![RandomAnswer {
            rate: 0.01,
            status: 503,
            reason: Some("ServiceUnavailable".into()),
        }],
        goaway_after: Some(3000),
        reset_rate: 0.005,
        spike_rate: 0.01,
        spike_ms: 50,
        ..Faults::default()
    };
    let m = mock_with(MockConfig {
        faults,
        ..Default::default()
    })
    .await;
    let q = broker::topology("chaos");
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let name = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    cfg.broker.url = apns_worker::secret::Secret::new(proxy.amqp_url());
    cfg.broker.connection_name = Some(name.clone());
    cfg.broker.prefetch = 2000;
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 300;
    cfg.retry.max_attempts = 10;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let publisher = {
        let conn = broker::connect().await;
        let jobs = q.jobs.clone();
        tokio::spawn(async move {
            broker::publish_jobs(&conn, &jobs, (0..n).map(|i| mixed_job(i).0).collect()).await;
        })
    };
    let mut closes = 0;
    for (fraction, how) in [(0.2, "broker"), (0.45, "network"), (0.7, "broker")] {
        let at = (n as f64 * fraction) as u64;
        w.wait_until("progress", Duration::from_secs(300), |s| {
            s.delivered + s.token_cleanups >= at
        })
        .await;
        match how {
            "broker" => closes += rabbitmqctl_close(&name) as u32,
            _ => {
                proxy.drop_connections();
                closes += 1;
            }
        }
        // Let it reconnect before the next fault.
        w.wait_until("reconnected", Duration::from_secs(30), |s| {
            s.broker_sessions > closes as u64
        })
        .await;
    }
    publisher.await.unwrap();
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(600))
        .await;
    let s = w.stop().await;
    assert_eq!(closes, 3, "every fault was injected");
    let cleanups = broker::drain_queue(&conn, &q.cleanup_queue).await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let dups = reconcile(n, &m.mock, &cleanups, &dead);
    let ms = m.mock.stats();
    assert!(
        ms.goaways >= 10 && ms.resets > 0 && ms.unprocessed > 0,
        "{ms:?}"
    );
    // One process: every redelivery of a job it had sent is settled from memory, so
    // the only duplicates are sends whose answer was lost, or retry copies published
    // twice because a confirm was lost with the connection.
    assert!(
        dups <= s.unknown_outcomes,
        "{dups} duplicates not explained by unknown outcomes: {s:?}"
    );
    assert_eq!(
        broker::depth(&conn, &q.jobs).await,
        0,
        "nothing left, nothing unacked"
    );
    eprintln!(
        "chaos: {n} jobs, {} GOAWAYs, {} resets, {} unprocessed streams resent, {} broker sessions; duplicates {dups}, unknown outcomes {}, redelivered-resent {}",
        ms.goaways,
        ms.resets,
        ms.unprocessed,
        s.broker_sessions,
        s.unknown_outcomes,
        s.redelivered_resent
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

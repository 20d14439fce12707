//! Long runs, not part of ./test.sh (they take minutes): run them with
//! `cargo test --release --test soak -- --ignored --nocapture`.
//! They print the figures reported in docs/reliability.md.

mod common;

use std::time::{Duration, Instant};

use apns_mock::{Faults, MockConfig, RandomAnswer};
use common::broker;
use common::process::{ChildConfig, WorkerProcess, write_config};
use common::proxy::Proxy;
use common::*;
use serde_json::json;

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 10 minutes (APNS_WORKER_SOAK_SECS) at a moderate load with periodic faults: RSS and
/// open file descriptors stay flat, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "ten minutes; run by hand, figures in docs/reliability.md"]
async fn soak() {
    let secs: u64 = std::env::var("APNS_WORKER_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let rate: u64 = std::env::var("APNS_WORKER_SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let faults = Faults {
        random: vec![RandomAnswer {
            rate: 0.005,
            status: 503,
            reason: Some("ServiceUnavailable".into()),
        }],
        goaway_after: Some(20_000),
        latency_ms: 5,
        spike_rate: 0.005,
        spike_ms: 100,
        ..Faults::default()
    };
    let m = mock_with(MockConfig {
        faults,
        record: false,
        ..Default::default()
    })
    .await;
    let q = broker::topology("soak");
    let r = broker::fast_retry();
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let dir = tempfile::tempdir().unwrap();
    let key_pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let url = proxy.amqp_url();
    let config = write_config(&ChildConfig {
        dir: dir.path(),
        name: "soak-worker",
        broker_url: &url,
        queues: &q,
        retry: &r,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem: &key_pem,
        extra: "",
    });
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    let p = WorkerProcess::spawn(&config, dir.path().join("soak.log"), "warn");
    let started = Instant::now();
    let mut published = 0u64;
    let mut samples = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut next_fault = Duration::from_secs(90);
    while started.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let batch: Vec<String> = (published..published + rate)
            .map(|i| json!({"id": format!("s{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"alert": "soak"}, "pad": "x".repeat(900)}}).to_string())
            .collect();
        broker::publish_jobs(&conn, &q.jobs, batch).await;
        published += rate;
        if started.elapsed() >= next_sample {
            samples.push((
                started.elapsed().as_secs(),
                p.rss_kib(),
                fd_count(p.pid()),
                m.mock.stats().answered,
                broker::depth(&conn, &q.jobs).await,
            ));
            next_sample += Duration::from_secs(30);
        }
        if started.elapsed() >= next_fault {
            proxy.drop_connections();
            next_fault += Duration::from_secs(120);
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    // Drain.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let answered_200 = m.mock.stats().by_status.get(&200).copied().unwrap_or(0);
        if answered_200 >= published {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not drained: {answered_200} of {published}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    p.signal("TERM");
    let (st, summary, _) = p.wait(Duration::from_secs(30)).await;
    assert!(st.success());
    let s = summary.unwrap();
    println!(
        "\nsoak: {published} jobs over {secs} s at {rate}/s, GOAWAY every 20,000 requests, 0.5% 503, 0.5% 100 ms spikes, broker connection dropped every 120 s"
    );
    println!(
        "{:>6} {:>10} {:>5} {:>12} {:>8}",
        "t (s)", "RSS (MiB)", "fds", "APNs answers", "queued"
    );
    for (t, rss, fds, answered, depth) in &samples {
        println!(
            "{t:>6} {:>10.1} {fds:>5} {answered:>12} {depth:>8}",
            *rss as f64 / 1024.0
        );
    }
    println!("summary: {s:?}");
    let half = samples.len() / 2;
    let first = samples[1..half].iter().map(|s| s.1).max().unwrap_or(0);
    let second = samples[half..].iter().map(|s| s.1).max().unwrap_or(0);
    let fds_first = samples[1..half].iter().map(|s| s.2).max().unwrap_or(0);
    let fds_second = samples[half..].iter().map(|s| s.2).max().unwrap_or(0);
    assert!(
        second <= first + first / 5 + 4096,
        "RSS grew: {first} KiB -> {second} KiB"
    );
    assert!(
        fds_second <= fds_first + 4,
        "file descriptors grew: {fds_first} -> {fds_second}"
    );
    assert!(s.delivered + s.already_settled >= published, "{s:?}");
    broker::delete_topology(&conn, &q, &r).await;
}

/// A million jobs waiting and APNs slow (1 s per answer): memory is bounded by the
/// prefetch window, not by the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "publishes a million jobs; run by hand, figures in docs/reliability.md"]
async fn memory_is_bounded_by_prefetch_not_backlog() {
    let backlog: u64 = std::env::var("APNS_WORKER_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let m = mock_with(MockConfig {
        faults: Faults {
            latency_ms: 1000,
            ..Faults::default()
        },
        record: false,
        ..Default::default()
    })
    .await;
    let q = broker::topology("backlog");
    let r = broker::fast_retry();
    let dir = tempfile::tempdir().unwrap();
    let key_pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let config = write_config(&ChildConfig {
        dir: dir.path(),
        name: "backlog-worker",
        broker_url: broker::BROKER,
        queues: &q,
        retry: &r,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem: &key_pem,
        extra: "",
    });
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut i = 0;
    while i < backlog {
        let n = 50_000.min(backlog - i);
        let batch = (i..i + n).map(|k| json!({"id": format!("b{k}"), "device_token": token("0a", k), "topic": TOPIC, "payload": {"aps": {"alert": "x"}, "pad": "x".repeat(900)}}).to_string()).collect();
        broker::publish_jobs(&conn, &q.jobs, batch).await;
        i += n;
    }
    println!(
        "\nbacklog: published {backlog} jobs in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let p = WorkerProcess::spawn(&config, dir.path().join("backlog.log"), "warn");
    let mut rss = Vec::new();
    for k in 0..12 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        rss.push((k * 5 + 5, p.rss_kib(), m.mock.stats().answered));
    }
    p.signal("TERM");
    let (st, _, _) = p.wait(Duration::from_secs(30)).await;
    assert!(st.success());
    for (t, kib, answered) in &rss {
        println!(
            "t={t:>3}s RSS {:>6.1} MiB, APNs answers {answered}",
            *kib as f64 / 1024.0
        );
    }
    let max = rss.iter().map(|r| r.1).max().unwrap();
    let after_warmup = rss[2..].iter().map(|r| r.1).collect::<Vec<_>>();
    assert!(max < 128 * 1024, "RSS {max} KiB");
    assert!(
        after_warmup.iter().max().unwrap() - after_warmup.iter().min().unwrap() < 16 * 1024,
        "RSS not flat: {rss:?}"
    );
    broker::delete_topology(&conn, &q, &r).await;
}

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

/// The duplicate once seen in the delay queues (30,000 jobs parked for 100 s with a
/// publisher running beside it: 22 copies with the same hop): the run, made a
/// test that counts every copy. 30,000 jobs wait behind credentials APNs refuses while a
/// publisher adds 30,000 more over 100 s; each job cycles through the park queue (its
/// TTL expiring into the jobs queue is a dead-lettering, at-least-once for quorum
/// queues). Then APNs learns the key: every job must be sent exactly once. Twins the
/// broker forwarded twice are settled from memory and show as `already_settled`.
/// `APNS_WORKER_PARK_SECS` (100) and `APNS_WORKER_PARK_JOBS` (30,000) scale it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "two to three minutes; run by hand, figures in docs/reliability.md"]
async fn parked_jobs_beside_a_publisher_are_each_sent_once() {
    use std::collections::HashMap;
    let secs: u64 = std::env::var("APNS_WORKER_PARK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let per_phase: u64 = std::env::var("APNS_WORKER_PARK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let m = mock_with(MockConfig {
        record: true,
        ..Default::default()
    })
    .await;
    let q = broker::topology("parkcount");
    // The worker signs with a key APNs does not know yet: 403 InvalidProviderToken,
    // the app's circuit opens, every job parks.
    let (pem, public) = apns_mock::certs::generate_signing_key().unwrap();
    let mut app = m.token_app(TEAM, KEY, 1);
    app.keys[0].key = Some(apns::secret::Secret::new(pem));
    let mut cfg = worker_config(q.clone(), vec![("shop", app)]);
    cfg.retry.park_delay_ms = 10_000;
    cfg.broker.prefetch = 1_000;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let job = |n: u64| {
        json!({"id": format!("park-{n}"), "device_token": token("9a", n), "topic": TOPIC,
               "payload": {"aps": {"alert": "hello"}}})
        .to_string()
    };
    let t0 = Instant::now();
    broker::publish_jobs(&conn, &q.jobs, (0..per_phase).map(job).collect()).await;
    println!(
        "\nparked: published {per_phase} jobs in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // The publisher beside it: the same number again, spread over the parking window.
    let batches = secs * 10;
    let per_batch = per_phase.div_ceil(batches);
    let mut next = per_phase;
    let ticker_start = Instant::now();
    for b in 0..batches {
        let end = (next + per_batch).min(2 * per_phase);
        broker::publish_jobs(&conn, &q.jobs, (next..end).map(job).collect()).await;
        next = end;
        let due = ticker_start + Duration::from_millis(100 * (b + 1));
        tokio::time::sleep_until(due.into()).await;
    }
    let total = next;
    let during = w.worker.summary();
    println!(
        "after {:.0} s: parked {} copies, already_settled {}, delivered {}",
        t0.elapsed().as_secs_f64(),
        during.parked,
        during.already_settled,
        during.delivered
    );
    assert_eq!(
        during.delivered, 0,
        "nothing is delivered while APNs refuses the key"
    );
    m.mock
        .add_key(apns_mock::MockKey {
            key_id: KEY.into(),
            team_id: TEAM.into(),
            public_key_pem: public,
            topics: Vec::new(),
            environment: None,
        })
        .unwrap();
    let recovered = Instant::now();
    w.wait_until("every job delivered", Duration::from_secs(300), |s| {
        s.delivered >= total
    })
    .await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(60))
        .await;
    let s = w.stop().await;
    let mut sends: HashMap<String, u32> = HashMap::new();
    for r in m.mock.received().iter().filter(|r| r.status == 200) {
        *sends
            .entry(r.apns_id.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let twice: u32 = sends.values().map(|c| c.saturating_sub(1)).sum();
    println!(
        "{total} jobs, {} distinct accepted by APNs, {twice} sent twice; delivered {} in {:.1} s \
         after the key was known; parked {} copies in all; already_settled {} (twins and \
         redeliveries settled from memory); dead letters {}, requeued {}, withdrawn {}",
        sends.len(),
        s.delivered,
        recovered.elapsed().as_secs_f64(),
        s.parked,
        s.already_settled,
        s.dead_lettered_total(),
        s.requeued,
        s.withdrawn
    );
    assert_eq!(sends.len() as u64, total, "every job reached APNs");
    assert_eq!(twice, 0, "no job was sent twice");
    assert_eq!(s.delivered, total);
    assert_eq!(s.dead_lettered_total(), 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

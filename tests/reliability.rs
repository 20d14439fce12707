//! Reliability under faults: broker loss, APNs faults, SIGTERM, SIGKILL, several
//! replicas, hostile input, secrets. Each run reconciles every job to one terminal state.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use apns_mock::{Faults, MockConfig, RandomAnswer};
use common::broker::{self, Got};
use common::mixed::*;
use common::process::{ChildConfig, WorkerProcess, write_config};
use common::proxy::Proxy;
use common::*;
use serde_json::json;

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
        .map(|(name, body)| (body.clone(), apns_worker::amqp::job_props(name)))
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
        why("huge").contains("over the 131072-byte limit"),
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
    cfg.broker.url = apns::secret::Secret::new(proxy.amqp_url());
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

/// Several broker URLs (a cluster's nodes): the first that answers takes the session;
/// when its node goes (the proxy in front of it cut), the worker moves to the next one,
/// says which in `/readyz`'s facts and the metrics, and every job is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_moves_the_worker_to_the_next_url() {
    const N: u64 = 4_000;
    let m = mock_with(MockConfig {
        faults: Faults {
            latency_ms: 1,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let q = broker::topology("failover");
    let (a, b) = (
        Proxy::start("127.0.0.1:5672").await,
        Proxy::start("127.0.0.1:5672").await,
    );
    // A node that refuses connections comes first: it is skipped.
    let refused = "amqp://guest:guest@127.0.0.1:1/%2f";
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.broker.url =
        apns::secret::Secret::new(format!("{refused} {} {}", a.amqp_url(), b.amqp_url()));
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 300;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let fact = |w: &broker::Running| {
        apns_worker::obs::Status::readiness(&*w.worker)
            .facts
            .iter()
            .find(|(k, _)| *k == "broker_node")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(fact(&w), a.addr.to_string());
    let metrics = apns_worker::obs::Status::metrics_text(&*w.worker);
    assert!(
        metrics.contains(&format!("apns_worker_broker_node{{node=\"{}\"}} 1", a.addr)),
        "{metrics}"
    );
    broker::publish_jobs(&conn, &q.jobs, (0..N).map(job_for).collect()).await;
    w.wait_until("some delivered", Duration::from_secs(60), |s| {
        s.delivered > 200
    })
    .await;
    a.cut();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fact(&w) != b.addr.to_string() || !w.worker.ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still on {} (ready {})",
            fact(&w),
            w.worker.ready()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(120))
        .await;
    let s = w.stop().await;
    assert_eq!(s.broker_sessions, 2, "{s:?}");
    let delivered: std::collections::BTreeSet<String> = m
        .mock
        .received()
        .into_iter()
        .map(|r| r.device_token)
        .collect();
    assert_eq!(delivered.len() as u64, N, "every job delivered: {s:?}");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
    // No node answers: one sentence naming every node tried, never a password.
    let mut none = cfg.broker.clone();
    none.url = apns::secret::Secret::new(format!("{refused} amqp://guest:pw@127.0.0.1:2/%2f"));
    let err = apns_worker::amqp::connect(&none)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(
            "none of the broker's 2 nodes took the connection (tried 127.0.0.1:1, 127.0.0.1:2)"
        ),
        "{err}"
    );
    assert!(!err.contains("pw"), "{err}");
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
    cfg.broker.url = apns::secret::Secret::new(proxy.amqp_url());
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
            "broker" => closes += broker::rabbitmqctl_close(&name) as u32,
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

struct Child {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

fn child_config(
    m: &Mock,
    key_pem: &str,
    name: &str,
    q: &apns_worker::config::QueueSettings,
    r: &apns_worker::config::RetrySettings,
    extra: &str,
) -> Child {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let config = write_config(&ChildConfig {
        dir: dir.path(),
        name,
        broker_url: broker::BROKER,
        queues: q,
        retry: r,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem,
        extra,
    });
    Child { _dir: dir, config }
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

/// SIGTERM while thousands of requests are in flight: exit 0 within the drain deadline,
/// nothing lost, nothing left unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_full_load_drains_within_the_deadline() {
    const N: u64 = 20_000;
    let m = mock(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("sigterm");
    let r = broker::fast_retry();
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let child = child_config(&m, &pem, "sigterm-worker", &q, &r, "");
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    broker::publish_jobs(&conn, &q.jobs, (0..N).map(job_for).collect()).await;
    let log = child._dir.path().join("worker.log");
    let p = WorkerProcess::spawn(&child.config, log.clone(), "info");
    wait_answered(&m, 2_000, Duration::from_secs(60)).await;
    p.signal("TERM");
    let (status, summary, took) = p.wait(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        took < Duration::from_secs(5 + 3),
        "drain deadline 5 s, took {took:?}"
    );
    let s = summary.expect("a summary on stdout");
    // Every job is delivered exactly once or still waiting in the queue.
    let delivered: BTreeSet<u64> = m
        .mock
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| index_of(&r.device_token))
        .collect();
    let waiting: BTreeSet<u64> = broker::drain_queue(&conn, &q.jobs)
        .await
        .iter()
        .map(|g| g.json()["id"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    assert_eq!(delivered.len() as u64, s.delivered, "{s:?}");
    assert!(
        delivered.is_disjoint(&waiting),
        "a delivered job came back: its ack was not sent"
    );
    assert_eq!(
        delivered.len() + waiting.len(),
        N as usize,
        "lost: {}",
        N as usize - delivered.len() - waiting.len()
    );
    eprintln!(
        "sigterm: exited in {took:?}; {} delivered, {} left in the queue",
        delivered.len(),
        waiting.len()
    );
    broker::delete_topology(&conn, &q, &r).await;
}

fn job_for(i: u64) -> String {
    json!({"id": format!("j{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string()
}

/// Three worker processes on one queue; one is killed with SIGKILL, one stopped with
/// SIGTERM mid-run; every job still ends in its one terminal state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_one_terminated() {
    const N: u64 = 30_000;
    let m = mock_with(MockConfig {
        faults: Faults {
            rules: mixed_rules(),
            latency_ms: 2,
            ..Faults::default()
        },
        ..Default::default()
    })
    .await;
    let q = broker::topology("replicas");
    let r = broker::fast_retry();
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    // One key for the three replicas, as a fleet has.
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let children: Vec<Child> = (1..=3)
        .map(|i| child_config(&m, &pem, &format!("replica-{i}"), &q, &r, ""))
        .collect();
    let mut procs: Vec<Option<WorkerProcess>> = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Some(WorkerProcess::spawn(
                &c.config,
                c._dir.path().join(format!("w{i}.log")),
                "warn",
            ))
        })
        .collect();
    broker::publish_jobs(&conn, &q.jobs, (0..N).map(|i| mixed_job(i).0).collect()).await;
    wait_answered(&m, N * 3 / 10, Duration::from_secs(120)).await;
    let killed = procs[0].take().unwrap();
    killed.signal("KILL");
    let (st, summary, _) = killed.wait(Duration::from_secs(10)).await;
    assert!(
        !st.success() && summary.is_none(),
        "SIGKILL leaves no summary"
    );
    wait_answered(&m, N * 6 / 10, Duration::from_secs(120)).await;
    let termed = procs[1].take().unwrap();
    termed.signal("TERM");
    let (st, s2, took) = termed.wait(Duration::from_secs(15)).await;
    assert!(st.success(), "SIGTERM: clean exit ({took:?})");
    // The last replica finishes the work: wait until the queues are empty and the mock
    // has been quiet for a while.
    let mut queues = vec![q.jobs.clone()];
    queues.extend(
        apns_worker::settle::delay_levels(&r)
            .into_iter()
            .map(|l| apns_worker::amqp::delay_queue_name(&q, l)),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut quiet = 0;
    let mut last = 0;
    while quiet < 10 {
        assert!(tokio::time::Instant::now() < deadline, "did not drain");
        let mut busy = false;
        for name in &queues {
            busy |= broker::depth(&conn, name).await > 0;
        }
        let answered = m.mock.stats().answered;
        busy |= answered != last;
        last = answered;
        quiet = if busy { 0 } else { quiet + 1 };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = procs[2].take().unwrap();
    third.signal("TERM");
    let (st, s3, _) = third.wait(Duration::from_secs(15)).await;
    assert!(st.success());
    let (s2, s3) = (s2.unwrap(), s3.unwrap());
    // The replicas share one key, so one provider token: nothing parked for
    // TooManyProviderTokenUpdates.
    assert_eq!((s2.parked, s3.parked), (0, 0), "{s2:?} {s3:?}");
    assert_eq!(
        m.mock.stats().by_reason.get("TooManyProviderTokenUpdates"),
        None
    );
    let cleanups = broker::drain_queue(&conn, &q.cleanup_queue).await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let dups = reconcile(N, &m.mock, &cleanups, &dead);
    let explained = [&s2, &s3]
        .iter()
        .map(|s| s.unknown_outcomes + s.uncertain_publishes + s.redelivered_resent)
        .sum::<u64>();
    assert!(
        dups <= explained,
        "{dups} duplicates; possible ones counted by the survivors: {explained}"
    );
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    eprintln!(
        "replicas: duplicates {dups} (the survivors counted {explained} possible: redelivered after the SIGKILL)"
    );
    broker::delete_topology(&conn, &q, &r).await;
}

/// Keys, the broker password and provider tokens never reach logs or check-config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs() {
    let m = mock(Faults {
        rules: vec![rule("b400", 400, "BadCollapseId", None)],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("secrets");
    let r = broker::fast_retry();
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let child = child_config(&m, &pem, "secrets-worker", &q, &r, "");
    let key_pem = std::fs::read_to_string(child._dir.path().join("secrets-worker.p8")).unwrap();
    let key_body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    // A broker URL with a password of its own, through an env override.
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    broker::publish_jobs(&conn, &q.jobs, vec![job_for(1), mixed_job(1).0]).await;
    let log = child._dir.path().join("trace.log");
    let p = WorkerProcess::spawn(&child.config, log.clone(), "trace");
    wait_answered(&m, 2, Duration::from_secs(30)).await;
    p.signal("TERM");
    let (status, _, _) = p.wait(Duration::from_secs(15)).await;
    assert!(status.success());
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_apns-worker"))
        .args(["check-config", "-c"])
        .arg(&child.config)
        .output()
        .unwrap();
    assert!(check.status.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.len() > 10_000, "trace logging produced output");
    for text in [
        &logs,
        &String::from_utf8_lossy(&check.stdout).into_owned(),
        &String::from_utf8_lossy(&check.stderr).into_owned(),
    ] {
        for line in &key_body {
            assert!(!text.contains(line), "a line of the private key leaked");
        }
        assert!(!text.contains("eyJ"), "a JWT leaked");
        assert!(!text.contains("bearer "), "an authorization header leaked");
        assert!(
            !text.contains("guest:guest@"),
            "the broker URL with its password leaked"
        );
    }
    broker::delete_topology(&conn, &q, &r).await;
}

/// A second SIGTERM while draining exits at once (the broker redelivers what was in
/// flight); the first alone would wait for the drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let m = mock(Faults {
        latency_ms: 20_000,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("twosignals");
    let r = broker::fast_retry();
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let child = child_config(&m, &pem, "twosignals-worker", &q, &r, "");
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    broker::publish_jobs(&conn, &q.jobs, (0..20).map(job_for).collect()).await;
    let log = child._dir.path().join("w.log");
    let p = WorkerProcess::spawn(&child.config, log.clone(), "info");
    // Every job is in the worker's hands (unacked, answers 20 s away).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while broker::depth(&conn, &q.jobs).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not take the jobs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("TERM");
    // The second signal once the first has been taken (the worker says so).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("shutdown signal received")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first signal was not seen"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal("TERM");
    let (status, summary, took) = p.wait(Duration::from_secs(4)).await;
    assert_eq!(
        status.code(),
        Some(130),
        "exit at once: {status:?} after {took:?}"
    );
    assert!(summary.is_none());
    // Nothing was acked: the broker has every job back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker::depth(&conn, &q.jobs).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs not redelivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker::delete_topology(&conn, &q, &r).await;
}

/// A replica whose broker connection dies sends none of the deliveries it still holds
/// (the broker gives them to another consumer): only the requests already on the wire
/// at that moment may be sent twice. Replica A holds 400 jobs behind 4 streams when its
/// connection is cut; replica B takes the redeliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_withdraws_what_it_has_not_sent() {
    const N: u64 = 600;
    const STREAMS: usize = 4;
    let m = mock(Faults {
        latency_ms: 200,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("withdraw");
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut app = m.token_app(TEAM, KEY, 1);
    app.max_streams_per_connection = STREAMS;
    let mut a_cfg = worker_config(q.clone(), vec![("shop", app)]);
    a_cfg.broker.url = apns::secret::Secret::new(proxy.amqp_url());
    a_cfg.broker.connection_name = Some("apns-worker-test-withdraw-a".into());
    a_cfg.broker.reconnect_min_ms = 100;
    a_cfg.broker.reconnect_max_ms = 200;
    // Jobs wait for a stream as long as it takes (no NotSent retries in the way).
    a_cfg.apns.send_timeout_ms = 120_000;
    // B signs with another key: two processes minting tokens for one key within 20
    // minutes is what APNs (and the mock) refuse.
    let mut b_app = m.token_app(TEAM, "KEY7654321", 1);
    b_app.max_streams_per_connection = STREAMS;
    let mut b_cfg = worker_config(q.clone(), vec![("shop", b_app)]);
    b_cfg.broker.connection_name = Some("apns-worker-test-withdraw-b".into());
    b_cfg.apns.send_timeout_ms = 120_000;
    let conn = broker::connect().await;
    let a = broker::start(a_cfg.clone()).await;
    broker::publish_jobs(
        &conn,
        &q.jobs,
        (0..N).map(|i| mixed_job(3 + 20 * i).0).collect(),
    )
    .await;
    // A holds up to its prefetch (500) while 4 streams work through them.
    wait_answered(&m, 12, Duration::from_secs(20)).await;
    let b = broker::start(b_cfg.clone()).await;
    proxy.drop_connections();
    b.wait_until("B sends", Duration::from_secs(30), |s| s.delivered > 0)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while a.worker.summary().delivered + b.worker.summary().delivered < N {
        assert!(tokio::time::Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sa, sb) = (a.stop().await, b.stop().await);
    let mut sends = BTreeMap::<String, u64>::new();
    for r in m.mock.received() {
        *sends.entry(r.device_token).or_default() += 1;
    }
    let dups: u64 = sends.values().map(|c| c - 1).sum();
    eprintln!("withdraw: {dups} duplicate sends; A {sa:?}; B {sb:?}");
    assert_eq!(sends.len() as u64, N, "every job sent");
    assert!(sa.withdrawn > 0, "A withdrew what it had not sent: {sa:?}");
    // At most the requests A had on the wire when its session died, and those it
    // started before it noticed: each 200 ms answer frees a stream, so every round of
    // answers before A sees the loss can start STREAMS more. Seen: 5 alone, 10 with the
    // other tests of this file running beside it on two cores. Without the withdrawal
    // every held job (~500) is sent twice.
    assert!(dups <= 4 * STREAMS as u64, "{dups} duplicates; A {sa:?}");
    broker::delete_topology(&conn, &q, &a_cfg.retry).await;
}

/// A cleanup event that nothing can route (no queue bound to the cleanup exchange) is
/// returned by the broker, again and again: the job is requeued each time, and no log
/// line, at any level, shows its device token or its payload (lapin logs returned
/// messages whole; those lines are filtered out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_publishes_never_log_a_token_or_a_payload() {
    let m = mock(Faults {
        rules: vec![rule("dead", 410, "Unregistered", None)],
        ..Faults::default()
    })
    .await;
    let mut q = broker::topology("returns");
    q.cleanup_queue = String::new(); // nothing bound: every event comes back
    let r = broker::fast_retry();
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let child = child_config(&m, &pem, "returns-worker", &q, &r, "");
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &r)
        .await
        .unwrap();
    let t = token("dead", 7);
    let marker = "payload-marker-7b1e";
    let body = json!({"id": "returned-1", "device_token": t, "topic": TOPIC, "payload": {"aps": {"alert": marker}}}).to_string();
    broker::publish_jobs(&conn, &q.jobs, vec![body]).await;
    let log = child._dir.path().join("trace.log");
    let p = WorkerProcess::spawn(&child.config, log.clone(), "trace");
    // Wait for a few returns (each one a log line of the worker's).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("settlement publish failed")
        .count()
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline, "no returns logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("TERM");
    let (status, _, _) = p.wait(Duration::from_secs(15)).await;
    assert!(status.success());
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains(&t[..8]),
        "the token's first digits identify the job"
    );
    assert!(!logs.contains(&t), "a full device token leaked");
    assert!(!logs.contains(marker), "the payload leaked");
    assert!(!logs.contains("Server returned us a message"));
    broker::delete_topology(&conn, &q, &r).await;
}

/// A stalled network (bytes held, sockets open): the worker's publishes go
/// unconfirmed, fail after `broker.confirm_timeout_ms`, the session is restarted and
/// the jobs go back to the queue, never acked; once the network moves again every job
/// reaches its terminal state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_fails_after_the_bound_and_loses_nothing() {
    const N: u64 = 4000;
    let m = mock(Faults {
        rules: mixed_rules(),
        ..Faults::default()
    })
    .await;
    let q = broker::topology("confirm-bound");
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    cfg.broker.url = apns::secret::Secret::new(proxy.amqp_url());
    cfg.broker.confirm_timeout_ms = 1000;
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 300;
    cfg.broker.prefetch = 200;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    broker::publish_jobs(&conn, &q.jobs, (0..N).map(|i| mixed_job(i).0).collect()).await;
    w.wait_until("some settled", Duration::from_secs(60), |s| {
        s.terminal() > 500
    })
    .await;
    proxy.stall();
    w.wait_until(
        "a publish failed for want of a confirm",
        Duration::from_secs(30),
        |s| s.publish_failures > 0,
    )
    .await;
    assert!(!w.worker.ready(), "not ready while the session is down");
    proxy.unstall();
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(120))
        .await;
    let s = w.stop().await;
    assert!(s.broker_sessions >= 2, "the session was restarted: {s:?}");
    assert!(
        s.uncertain_publishes >= s.publish_failures,
        "an unconfirmed publish is uncertain, never an ack: {s:?}"
    );
    let cleanups = broker::drain_queue(&conn, &q.cleanup_queue).await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let dups = reconcile(N, &m.mock, &cleanups, &dead);
    assert!(dups <= s.unknown_outcomes, "{dups} duplicates: {s:?}");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

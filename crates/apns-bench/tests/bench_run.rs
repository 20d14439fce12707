//! `apns-bench bench` end to end on a small run against the real RabbitMQ: every phase
//! runs, the JSON line carries every figure, and the run leaves no queue or exchange
//! behind. The figures' values are the benchmark's business, not this test's: it checks
//! only what must hold on any machine (counts, orderings, shares within 0..1).

use apns_worker::amqp::Topology;
use apns_worker::config::{QueueSettings, RetrySettings};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;

/// The broker, or a failed test that says what to do: these tests never skip.
async fn connect() -> Connection {
    Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "RabbitMQ must run at 127.0.0.1:5672 (start it with `rabbitmq-server -detached`): {e}"
        )
    })
}

fn number(r: &Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number in {r}"))
}

/// Run `apns-bench bench <args>`; it must succeed and end with its JSON line.
/// Returns the report, stdout and stderr. The worker it drives is the `apns-worker`
/// built beside it (`cargo test --workspace` builds both).
async fn bench(args: &[&str]) -> (Value, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_apns-bench"))
        .arg("bench")
        .args(args)
        .output()
        .await
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    let r: Value = serde_json::from_str(stdout.lines().last().expect("a JSON line"))
        .unwrap_or_else(|e| panic!("the last line is JSON ({e}): {stdout}"));
    (r, stdout, stderr)
}

#[tokio::test]
async fn a_small_bench_run_reports_every_figure_and_leaves_no_topology() {
    // Fail (never skip) without a broker, before the run.
    drop(connect().await);
    let (r, _, stderr) = bench(&[
        "--jobs",
        "3000",
        "--rate",
        "500",
        "--latency-secs",
        "1",
        "--connections",
        "1",
        "--prefetch",
        "500",
    ])
    .await;

    assert_eq!(r["jobs"], 3000);
    let bare = number(&r, "bare_consumer_per_sec");
    let drain = number(&r, "drain_per_sec");
    assert!(bare > 0.0 && drain > 0.0, "{r}");
    assert!((number(&r, "ratio_to_bare") - drain / bare).abs() < 1e-9);
    for key in [
        "cpu_us_per_notification",
        "mock_cpu_us_per_notification",
        "bare_consumer_cpu_us_per_message",
        "peak_rss_mib",
    ] {
        assert!(number(&r, key) > 0.0, "{key} > 0 in {r}");
    }
    for key in ["machine_busy_bare", "machine_busy_drain"] {
        let busy = number(&r, key);
        assert!(busy > 0.0 && busy <= 1.0, "{key} within 0..1 in {r}");
    }
    // RabbitMQ runs on this machine, so its CPU is read too.
    assert!(number(&r, "broker_cpu_us_per_message_drain") >= 0.0, "{r}");
    assert!(number(&r, "broker_cpu_us_per_message_bare") >= 0.0, "{r}");
    assert!(r["cpus"].as_u64().is_some_and(|n| n >= 1), "{r}");
    // 500/s for 1 s, every job seen by the mock.
    assert_eq!(r["latency_samples"], 500, "{r}");
    let (p50, p99, p999) = (
        number(&r, "latency_p50_ms"),
        number(&r, "latency_p99_ms"),
        number(&r, "latency_p999_ms"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{r}");
    assert_eq!(r["topology_left"], serde_json::json!([]), "{stderr}");

    // Independently of what the bench says: none of its queues or exchanges exist.
    let prefix = r["queue_prefix"].as_str().expect("queue_prefix");
    assert!(prefix.starts_with("bench."), "{prefix}");
    let q = QueueSettings::with_prefix(prefix);
    let topology = Topology {
        queues: &q,
        retry: &RetrySettings::default(),
    };
    let mut queues = topology.queue_names();
    queues.push(format!("{}bare", q.jobs));
    let conn = connect().await;
    for name in &queues {
        let ch = conn.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = ch
            .queue_declare(name.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(found.is_err(), "queue {name} was left behind");
    }
    for name in &topology.exchange_names() {
        let ch = conn.create_channel().await.unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = ch
            .exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await;
        assert!(found.is_err(), "exchange {name} was left behind");
    }
    let _ = conn.close(200, "done".into()).await;
}

/// `--sender-only`: the client alone against the mock, every notification answered
/// 200 (the run fails otherwise), with the client's and the mock's CPU in the report.
#[tokio::test]
async fn a_small_sender_only_run_reports_the_client_and_the_mock() {
    let (r, stdout, _) = bench(&[
        "--sender-only",
        "--jobs",
        "20000",
        "--concurrency",
        "200",
        "--connections",
        "1",
    ])
    .await;
    assert_eq!(r["jobs"], 20000);
    assert_eq!(r["concurrency"], 200);
    assert!(number(&r, "sender_only_per_sec") > 0.0, "{r}");
    for key in [
        "cpu_us_per_notification",
        "mock_cpu_us_per_notification",
        "mock_busy",
    ] {
        assert!(number(&r, key) >= 0.0, "{key} in {r}");
    }
    assert!(stdout.contains("client CPU per notification"), "{stdout}");
}

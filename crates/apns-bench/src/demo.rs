//! `apns-bench demo` (`cargo run --release -- demo`): the whole flow on this machine in one command. Starts a mock
//! APNs in-process, declares a private topology on the local RabbitMQ, publishes
//! sample jobs with every outcome, runs the worker until each job is settled, prints
//! the outcome table, and removes what it declared.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use apns::{Secret, SecretSource};
use apns_mock::{Faults, MockApns, MockConfig, TokenRule};
use apns_worker::amqp::{self, Topology};
use apns_worker::config::{AppConfig, Config, QueueSettings, RetrySettings};
use apns_worker::publish::synthetic_token as token;
use apns_worker::worker::{StartError, Worker, serve};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("mock APNs: {0}")]
    Mock(#[from] apns_mock::MockError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Config(#[from] apns_worker::config::ConfigError),
    #[error("worker: {0}")]
    Worker(#[from] StartError),
    #[error("broker: {0}")]
    Amqp(#[from] amqp::AmqpError),
    #[error("publishing: {0}")]
    Publish(#[from] apns_worker::publish::PublishCmdError),
    #[error(
        "RabbitMQ is not reachable at {at} ({cause}): {hint}, or give the demo another broker with --broker amqp://user:password@host:5672/%2f"
    )]
    NoBroker {
        at: String,
        cause: String,
        hint: &'static str,
    },
    #[error("only {settled} of {total} jobs were settled within {secs} s")]
    Timeout { settled: u64, total: u64, secs: u64 },
}

/// The sample outcomes, by share of jobs (percent) and what the mock answers.
const MIX: &[(&str, u64, &str)] = &[
    ("delivered", 70, "0a"),
    ("delivered after a retry (503 once)", 6, "c503"),
    ("token dead: cleanup event (410 Unregistered)", 8, "dead"),
    ("token dead: cleanup event (400 BadDeviceToken)", 4, "bad0"),
    ("rejected: dead letter (400 BadCollapseId)", 4, "b400"),
    ("retries exhausted: dead letter (503 always)", 2, "d503"),
    ("invalid job: dead letter (InvalidJob)", 4, "inv"),
    ("expired before sending: acked, not sent", 2, "exp"),
];

const TOPIC: &str = "com.example.demo";

/// The sample jobs with their expected outcome row.
fn sample(total: u64) -> Vec<(usize, String)> {
    let mut out = Vec::with_capacity(total as usize);
    for i in 0..total {
        let mut r = i % 100;
        let mut row = 0;
        while r >= MIX[row].1 {
            r -= MIX[row].1;
            row += 1;
        }
        let prefix = MIX[row].2;
        let id = format!("demo-{i}");
        let body = match prefix {
            "inv" => {
                json!({"id": id, "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"badge": "three"}}})
            }
            "exp" => {
                json!({"id": id, "device_token": token("0a", i), "topic": TOPIC, "expiration": 1, "payload": {"aps": {"alert": "too late"}}})
            }
            p => {
                json!({"id": id, "device_token": token(p, i), "topic": TOPIC, "payload": {"aps": {"alert": {"title": "Demo", "body": format!("notification {i}")}}}})
            }
        };
        out.push((row, body.to_string()));
    }
    out
}

/// Fail within seconds, with what to run, when the broker cannot be reached (rather
/// than the worker's reconnect loop).
async fn check_broker(b: &apns_worker::config::BrokerSettings) -> Result<(), DemoError> {
    let at = b.address().unwrap_or_else(|| "the --broker URL".into());
    let cause = match tokio::time::timeout(Duration::from_secs(5), amqp::connect(b)).await {
        Ok(Ok(conn)) => {
            amqp::close(&conn).await;
            return Ok(());
        }
        Ok(Err(amqp::AmqpError::Connect(e))) => e.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".into(),
    };
    Err(DemoError::NoBroker {
        at,
        cause,
        hint: start_hint(),
    })
}

/// How to start a broker here: the installed one, or a container.
fn start_hint() -> &'static str {
    let installed = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/lib/rabbitmq/bin".into()])
        .any(|d| d.join("rabbitmq-server").is_file());
    if installed {
        "RabbitMQ is installed here: if it is stopped, start it with `rabbitmq-server -detached` (or `sudo systemctl start rabbitmq-server`)"
    } else {
        "install and start one (Debian/Ubuntu: `sudo apt-get install rabbitmq-server`), or run one in a container: `docker run -d -p 5672:5672 rabbitmq:4-management`"
    }
}

/// Run the demo against the broker at `broker_url`.
pub async fn run(broker_url: &str, total: u64) -> Result<(), DemoError> {
    let started = Instant::now();
    let broker = apns_worker::config::BrokerSettings {
        url: Secret::new(broker_url.to_string()),
        connection_name: Some("apns-worker-demo".into()),
        ..Default::default()
    };
    broker.effective_url()?;
    check_broker(&broker).await?;
    let rule = |prefix: &str, status, reason: &str, times| TokenRule {
        prefix: prefix.into(),
        status,
        reason: Some(reason.into()),
        times,
    };
    let mock = MockApns::start(MockConfig {
        faults: Faults {
            rules: vec![
                rule("c503", 503, "ServiceUnavailable", Some(1)),
                rule("dead", 410, "Unregistered", None),
                rule("bad0", 400, "BadDeviceToken", None),
                rule("b400", 400, "BadCollapseId", None),
                rule("d503", 503, "ServiceUnavailable", None),
            ],
            ..Faults::default()
        },
        record: false,
        ..MockConfig::default()
    })
    .await?;
    let dir = std::env::temp_dir().join(format!("apns-worker-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ca = dir.join("mock-ca.pem");
    mock.write_ca(&ca)?;
    let key = mock.generate_key("DEMOTEAM01", "DEMOKEY001")?;
    println!(
        "1. mock APNs listening on {} (its CA: {})",
        mock.addr(),
        ca.display()
    );

    let id = uuid::Uuid::new_v4().simple().to_string();
    let queues = QueueSettings::with_prefix(&format!("demo.{}.", &id[..8]));
    let retry = RetrySettings {
        max_attempts: 3,
        base_delay_ms: 200,
        max_delay_ms: 800,
        park_delay_ms: 1000,
        unknown_app_wait_ms: 0,
    };
    let mut cfg = Config {
        queues: queues.clone(),
        retry: retry.clone(),
        ..Config::default()
    };
    cfg.broker = broker;
    let mut app = AppConfig::token(
        mock.endpoint(),
        "DEMOTEAM01",
        "DEMOKEY001",
        SecretSource::Value(Secret::new(key)),
        &[TOPIC],
    );
    app.ca_file = Some(ca.clone());
    cfg.apps.insert("demo".into(), app);
    let worker = Worker::start(cfg.clone())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(worker.clone(), async move {
        let _ = stop_rx.await;
    }));
    while !worker.ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if started.elapsed() > Duration::from_secs(30) {
            return Err(DemoError::NoBroker {
                at: cfg.broker.address().unwrap_or_default(),
                cause: "the worker did not become ready within 30 s".into(),
                hint: start_hint(),
            });
        }
    }
    println!(
        "2. worker consuming {} (topology declared under demo.{}.*)",
        queues.jobs,
        &id[..8]
    );

    let jobs = sample(total);
    let mut expected = vec![0u64; MIX.len()];
    for (row, _) in &jobs {
        expected[*row] += 1;
    }
    let conn = amqp::connect(&cfg.broker).await?;
    apns_worker::publish::publish_jobs(
        &conn,
        &queues.jobs,
        jobs.into_iter().map(|(_, b)| b),
        Some(total),
        false,
    )
    .await?;
    println!("3. published {total} sample jobs");

    let deadline = Instant::now() + Duration::from_secs(120);
    let settled = |w: &Worker| w.summary().terminal();
    while settled(&worker) < total {
        if Instant::now() > deadline {
            let _ = stop_tx.send(());
            return Err(DemoError::Timeout {
                settled: settled(&worker),
                total,
                secs: 120,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    let summary = task.await.unwrap_or_default();
    let elapsed = started.elapsed();

    let depth = |q: String| {
        let conn = &conn;
        async move { amqp::depth_if_exists(conn, &q).await }
    };
    let dlq = depth(queues.dead_letter_queue.clone()).await.unwrap_or(0);
    let cleanup = depth(queues.cleanup_queue.clone()).await.unwrap_or(0);
    let left = depth(queues.jobs.clone()).await.unwrap_or(0);

    println!("4. every job settled in {:.1} s\n", elapsed.as_secs_f64());
    println!("{:<52} {:>8}", "sample outcome", "jobs");
    for (i, (name, _, _)) in MIX.iter().enumerate() {
        println!("{name:<52} {:>8}", expected[i]);
    }
    println!("{:<52} {:>8}\n", "total", total);
    let mut by: BTreeMap<&str, String> = BTreeMap::new();
    by.insert("acked as delivered", summary.delivered.to_string());
    by.insert("retries scheduled", summary.retried.to_string());
    by.insert(
        "cleanup events published",
        summary.token_cleanups.to_string(),
    );
    by.insert(
        "dead-lettered",
        format!(
            "{} {:?}",
            summary.dead_lettered_total(),
            summary.dead_lettered
        ),
    );
    by.insert("expired", summary.expired.to_string());
    println!("what the worker did:");
    for (k, v) in &by {
        println!("  {k:<28} {v}");
    }
    let ms = mock.stats();
    println!("what the mock APNs answered: {:?}", ms.by_status);
    println!(
        "what the queues hold: {} dead letters, {} cleanup events, {} jobs left\n",
        dlq, cleanup, left
    );

    // Remove the demo's topology.
    let left = Topology {
        queues: &queues,
        retry: &retry,
    }
    .delete(&conn)
    .await;
    for e in &left {
        eprintln!("could not delete {e}");
    }
    amqp::close(&conn).await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("5. removed the demo's queues and exchanges");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_covers_every_row_in_its_share() {
        let s = sample(1000);
        let mut counts = vec![0u64; MIX.len()];
        for (row, _) in &s {
            counts[*row] += 1;
        }
        let shares: Vec<u64> = MIX.iter().map(|m| m.1 * 10).collect();
        assert_eq!(counts, shares);
        assert_eq!(MIX.iter().map(|m| m.1).sum::<u64>(), 100);
    }
}

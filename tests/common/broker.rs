//! Helpers for tests against the real RabbitMQ at 127.0.0.1:5672: a private topology
//! per test (unique names, deleted afterwards), reading queues, running the worker.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use apns_worker::amqp;
use apns_worker::config::{Config, QueueSettings, RetrySettings};
use apns_worker::settle::delay_levels;
use apns_worker::worker::Summary;
use apns_worker::worker::{Worker, serve};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connect, or fail the test with what to do: these tests never skip.
pub async fn connect() -> Connection {
    Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ must run at 127.0.0.1:5672 (start it with `rabbitmq-server -detached`): {e}"))
}

/// A private set of queue and exchange names.
pub fn topology(test: &str) -> QueueSettings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    QueueSettings::with_prefix(&format!("test.{test}.{}.", &id[..8]))
}

/// Fast retries for tests.
pub fn fast_retry() -> RetrySettings {
    RetrySettings {
        max_attempts: 3,
        base_delay_ms: 100,
        max_delay_ms: 400,
        park_delay_ms: 300,
        // A job naming an unknown app is dead-lettered at once (tests/rollout.rs
        // covers the wait).
        unknown_app_wait_ms: 0,
    }
}

/// Delete every queue and exchange of the topology.
pub async fn delete_topology(conn: &Connection, q: &QueueSettings, r: &RetrySettings) {
    // The worker's own list of what it declares (environment-mismatch queue included).
    let left = amqp::Topology {
        queues: q,
        retry: r,
    }
    .delete(conn)
    .await;
    if !left.is_empty() {
        eprintln!("test topology not deleted: {left:?}");
    }
}

/// Messages ready in a queue.
pub async fn depth(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
    let _ = ch.close(200, "bye".into()).await;
    q.message_count()
}

/// A message taken from a queue.
#[derive(Clone, Debug)]
pub struct Got {
    pub body: Vec<u8>,
    pub props: BasicProperties,
    pub routing_key: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<AMQPValue> {
        self.props.headers().as_ref()?.inner().get(name).cloned()
    }

    pub fn header_str(&self, name: &str) -> Option<String> {
        match self.header(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            _ => None,
        }
    }

    pub fn header_int(&self, name: &str) -> Option<i64> {
        match self.header(name)? {
            AMQPValue::LongLongInt(v) => Some(v),
            AMQPValue::LongInt(v) => Some(i64::from(v)),
            AMQPValue::ShortInt(v) => Some(i64::from(v)),
            _ => None,
        }
    }

    /// The headers the worker adds, as JSON (for the dead-letter headers schema).
    pub fn worker_headers(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        let names: Vec<String> = self
            .props
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str().to_string()).collect())
            .unwrap_or_default();
        for k in names
            .iter()
            .filter(|k| k.starts_with("x-apns-") || *k == "x-error" || *k == "x-attempts")
        {
            if let Some(v) = self.header_str(k) {
                m.insert(k.clone(), v.into());
            } else if let Some(v) = self.header_int(k) {
                m.insert(k.clone(), v.into());
            }
        }
        serde_json::Value::Object(m)
    }
}

/// Take every message of a queue (acked).
pub async fn drain_queue(conn: &Connection, queue: &str) -> Vec<Got> {
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap_or_else(|e| panic!("basic_get {queue}: {e}"))
    {
        out.push(Got {
            body: m.delivery.data.clone(),
            props: m.delivery.properties.clone(),
            routing_key: m.delivery.routing_key.to_string(),
        });
    }
    let _ = ch.close(200, "bye".into()).await;
    out
}

/// Publish raw bodies to the jobs queue with confirms.
pub async fn publish_raw(conn: &Connection, queue: &str, bodies: Vec<(Vec<u8>, BasicProperties)>) {
    use lapin::options::BasicPublishOptions;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for (body, props) in bodies {
        let c = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(c, lapin::Confirmation::Ack(None), "routed to {queue}");
    }
    let _ = ch.close(200, "bye".into()).await;
}

pub async fn publish_jobs(conn: &Connection, queue: &str, jobs: Vec<String>) {
    let n = jobs.len() as u64;
    let published =
        apns_worker::publish::publish_jobs(conn, queue, jobs.into_iter(), Some(n), false)
            .await
            .expect("published");
    assert_eq!(published, n);
}

/// The worker running in this process.
pub struct Running {
    pub worker: Arc<Worker>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Summary>,
}

/// Start the worker and wait until it consumes (its topology is declared by then).
pub async fn start(cfg: Config) -> Running {
    let r = start_unready(cfg);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !r.worker.ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    r
}

pub fn start_unready(cfg: Config) -> Running {
    let worker = Worker::start(cfg).expect("worker starts");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(worker.clone(), async move {
        let _ = rx.await;
    }));
    Running {
        worker,
        stop: Some(tx),
        task,
    }
}

impl Running {
    /// Jobs in a terminal state so far.
    pub fn terminal(&self) -> u64 {
        self.worker.summary().terminal()
    }

    /// Wait until `n` jobs are terminal (an observable count, not a sleep).
    pub async fn wait_terminal(&self, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.terminal() < n {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "only {} of {n} jobs settled in {within:?}: {:?}",
                    self.terminal(),
                    self.worker.summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Summary) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let s = self.worker.summary();
            if cond(&s) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{what} not reached in {within:?}: {s:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the jobs queue and every delay queue are empty and nothing is in
    /// flight, several times in a row: every job has reached a terminal state.
    pub async fn wait_drained(
        &self,
        conn: &Connection,
        q: &QueueSettings,
        r: &RetrySettings,
        within: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        let mut queues = amqp::job_queue_names(q);
        queues.push(amqp::ready_queue_name(q));
        queues.extend(
            delay_levels(r)
                .into_iter()
                .map(|l| amqp::delay_queue_name(q, l)),
        );
        let mut quiet = 0;
        while quiet < 5 {
            let mut busy = self.worker.in_flight() > 0;
            let mut depths = Vec::new();
            for name in &queues {
                let d = depth(conn, name).await;
                depths.push(d);
                busy |= d > 0;
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "not drained in {within:?}: depths {depths:?}, {:?}",
                    self.worker.summary()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) -> Summary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.expect("worker task")
    }
}

/// Close this test's own broker connections, by connection name (never another's).
pub fn rabbitmqctl_close(connection_name: &str) -> bool {
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

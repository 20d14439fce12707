//! `apns-bench bench`: the end-to-end benchmark. One command on a machine with
//! RabbitMQ: it starts the mock APNs in-process, runs the worker as a child process
//! (so its CPU time and memory are its own), and reports
//!
//! - the broker's ceiling: a bare lapin consumer draining N jobs with multi-acks;
//! - the worker's drain throughput of N pre-filled jobs (TLS, token auth, 1 KB payloads),
//!   its CPU time (user+sys) per notification and its peak RSS, and the ratio to the
//!   bare consumer;
//! - latency from publish to the mock's receipt (p50/p99/p999) at a fixed offered rate;
//! - `--sender-only`: the APNs client alone against the mock, no broker.
//!
//! Results print as a table and as one JSON line, so runs can be compared.

mod mock_thread;
mod procfs;
mod report;
mod sender;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use apns::SecretSource;
use apns_mock::MockApns;
use apns_worker::amqp::{self, Entity, Topology};
use apns_worker::config::{AppConfig, BrokerSettings, Config, QueueSettings};
use apns_worker::publish::{synthetic_payload, synthetic_token};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::json;

use mock_thread::{MockThread, mock_and_dir};
use procfs::{CpuMark, Proc, local_broker_pid, ticks_per_sec};
pub use report::{print_sender_table, print_table};
pub use sender::{SenderReport, sender_only};

/// The benchmark's app: its team, key and topic.
const TEAM: &str = "BENCHTEAM1";
const KEY_ID: &str = "BENCHKEY01";
const TOPIC: &str = "com.example.bench";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("broker: {0}")]
    Amqp(#[from] amqp::AmqpError),
    #[error("lapin: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out: {0}")]
    Timeout(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub broker_url: String,
    pub jobs: u64,
    pub payload_bytes: usize,
    /// Offered rate of the latency phase (jobs/s) and its length.
    pub rate: u64,
    pub latency_secs: u64,
    pub prefetch: u16,
    pub connections: usize,
    pub ack_batch: usize,
    /// The worker binary (this one, by default).
    pub worker_bin: PathBuf,
    /// Skip the bare-consumer and latency phases (the sweep).
    pub drain_only: bool,
    /// Tokens per job in the drain (a fan-out job of K tokens: `jobs` notifications in
    /// `jobs / K` messages); 1: single-token jobs.
    pub tokens_per_job: u64,
    /// Job queues (`queues.shards`): the drain's jobs are spread over them in turn.
    pub shards: u16,
    /// The mock answers each request after this many ms (a distant APNs's round trip).
    pub apns_latency_ms: u64,
    /// `worker.max_notifications_in_flight`; None: the worker's default.
    pub max_in_flight: Option<usize>,
    /// The outcome stream on (`queues.outcomes`): a receipt per notification.
    pub outcomes: bool,
}

/// The figures of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    /// Notifications of the drain.
    pub jobs: u64,
    /// Tokens per message in the drain and the bare consumer (broker CPU "per message"
    /// is then per notification: the message's cost shared by its tokens).
    pub tokens_per_job: u64,
    /// Job queues the drain's jobs were spread over.
    pub shards: u16,
    /// The mock's added answer time (ms).
    pub apns_latency_ms: u64,
    /// The worker's `max_notifications_in_flight`.
    pub max_in_flight: usize,
    /// The outcome stream was on.
    pub outcomes: bool,
    pub payload_bytes: usize,
    pub prefetch: u16,
    pub connections: usize,
    pub ack_batch: usize,
    pub bare_consumer_per_sec: Option<f64>,
    pub drain_per_sec: f64,
    pub ratio_to_bare: Option<f64>,
    pub cpu_us_per_notification: f64,
    /// CPU of the mock APNs's thread during the drain (of this whole process where
    /// `/proc/thread-self` is missing: the mock and the harness waiting).
    pub mock_cpu_us_per_notification: f64,
    /// CPU of this process per message while the bare consumer drains.
    pub bare_consumer_cpu_us_per_message: Option<f64>,
    /// CPU of a RabbitMQ on this machine (`beam.smp`) per message, in each phase; None
    /// when the broker runs elsewhere (another host, a container's namespace).
    pub broker_cpu_us_per_message_bare: Option<f64>,
    pub broker_cpu_us_per_message_drain: Option<f64>,
    /// Share of all the machine's CPUs busy (not idle) during each phase, 0..1.
    pub machine_busy_bare: Option<f64>,
    pub machine_busy_drain: Option<f64>,
    pub cpus: usize,
    pub peak_rss_mib: f64,
    pub latency_rate: Option<u64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub latency_samples: Option<u64>,
    /// The run's queues and exchanges are named `<queue_prefix>apns.*`.
    pub queue_prefix: String,
    /// Queues and exchanges the run could not delete (empty after a clean run).
    pub topology_left: Vec<String>,
}

/// Job `i` of a bench run: a unique id and token, a payload of about `payload_bytes`.
pub fn job_body(i: u64, payload_bytes: usize, id: &str) -> String {
    json!({"id": id, "device_token": synthetic_token("", i), "topic": TOPIC,
           "payload": synthetic_payload("Benchmark", i, payload_bytes)})
    .to_string()
}

/// A fan-out job of `k` tokens, `first` to `first + k - 1`.
pub fn fanout_body(first: u64, k: u64, payload_bytes: usize, id: &str) -> String {
    let tokens: Vec<String> = (first..first + k).map(|i| synthetic_token("", i)).collect();
    json!({"id": id, "device_tokens": tokens, "topic": TOPIC,
           "payload": synthetic_payload("Benchmark", first, payload_bytes)})
    .to_string()
}

/// `n` notifications: `n` single-token jobs, or `n / k` fan-out jobs of `k` tokens.
async fn publish_all(
    conn: &lapin::Connection,
    queues: &[String],
    n: u64,
    bytes: usize,
    prefix: &str,
    k: u64,
) -> Result<(), BenchError> {
    let prefix = prefix.to_string();
    let messages = n / k.max(1);
    let jobs: Box<dyn Iterator<Item = String> + Send> = if k <= 1 {
        Box::new((0..n).map(move |i| job_body(i, bytes, &format!("{prefix}-{i}"))))
    } else {
        Box::new((0..messages).map(move |m| fanout_body(m * k, k, bytes, &format!("{prefix}-{m}"))))
    };
    apns_worker::publish::publish_spread(conn, queues, jobs, Some(messages), false)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    Ok(())
}

/// The broker's ceiling: drain `n` messages with a bare consumer, acking every 100th
/// with multiple=true.
async fn bare_consumer(
    conn: &lapin::Connection,
    queue: &str,
    n: u64,
    prefetch: u16,
) -> Result<f64, BenchError> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "bench-bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut got = 0u64;
    while let Some(d) = consumer.next().await {
        let d = d?;
        got += 1;
        if got % 100 == 0 || got == n {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        if got == n {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = ch.close(200, "done".into()).await;
    Ok(n as f64 / secs)
}

fn worker_config(
    opts: &BenchOptions,
    q: &QueueSettings,
    mock: &MockApns,
    dir: &Path,
) -> Result<PathBuf, BenchError> {
    let key_path = dir.join("bench.p8");
    std::fs::write(
        &key_path,
        mock.generate_key(TEAM, KEY_ID)
            .map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    let ca = dir.join("mock-ca.pem");
    mock.write_ca(&ca)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut cfg = Config {
        queues: q.clone(),
        ..Config::default()
    };
    cfg.broker.prefetch = opts.prefetch;
    cfg.broker.connection_name = Some("apns-worker-bench".into());
    cfg.worker.ack_batch = opts.ack_batch;
    if let Some(n) = opts.max_in_flight {
        cfg.worker.max_notifications_in_flight = n;
    }
    if opts.tokens_per_job > 1 {
        let k = opts.tokens_per_job as usize;
        cfg.worker.max_tokens_per_job = cfg.worker.max_tokens_per_job.max(k);
        cfg.worker.max_job_bytes = cfg
            .worker
            .max_job_bytes
            .max(k * 70 + opts.payload_bytes * 2 + 4096);
    }
    cfg.admin.listen = String::new();
    cfg.apps.insert(
        "bench".into(),
        bench_app(mock, ca, opts.connections, SecretSource::File(key_path)),
    );
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        toml::to_string(&cfg).map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    Ok(path)
}

/// The benchmark's app: token auth against the mock, trusting its CA.
fn bench_app(mock: &MockApns, ca: PathBuf, connections: usize, key: SecretSource) -> AppConfig {
    let mut app = AppConfig::token(mock.endpoint(), TEAM, KEY_ID, key, &[TOPIC]);
    app.connections = connections;
    app.ca_file = Some(ca);
    app
}

async fn wait_answered(mock: &MockApns, n: u64, within: Duration) -> Result<Instant, BenchError> {
    let deadline = Instant::now() + within;
    loop {
        if mock.stats().by_status.get(&200).copied().unwrap_or(0) >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "{} of {n} answered",
                mock.stats().answered
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One full run.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.jobs % opts.tokens_per_job.max(1) != 0 {
        return Err(BenchError::Setup(format!(
            "--jobs {} is not a multiple of --tokens-per-job {}",
            opts.jobs, opts.tokens_per_job
        )));
    }
    let (mock, dir) = mock_and_dir("bench", opts.apns_latency_ms).await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench.{}.", &id[..8]);
    let q = QueueSettings {
        shards: opts.shards.max(1),
        outcomes: opts.outcomes,
        ..QueueSettings::with_prefix(&prefix)
    };
    let config = worker_config(opts, &q, &mock, &dir)?;
    let broker = BrokerSettings {
        url: apns::Secret::new(opts.broker_url.clone()),
        ..Default::default()
    };
    let conn = amqp::connect(&broker).await?;
    let ch = conn.create_channel().await?;
    amqp::declare_topology(&ch, &q, &Config::default().retry).await?;
    let bare = format!("{}bare", q.jobs);
    // Whatever happens in the measurements, the topology and the scratch directory go.
    let result = measure(opts, &conn, &ch, &q, &mock, &config, &bare).await;
    let _ = ch.close(200, "done".into()).await;
    amqp::close(&conn).await;
    let retry = Config::default().retry;
    let mut entities = Topology {
        queues: &q,
        retry: &retry,
    }
    .entities();
    entities.push(Entity::Queue(bare));
    let left = delete_with_retries(&broker, entities).await;
    let _ = std::fs::remove_dir_all(&dir);
    result.map(|r| BenchReport {
        queue_prefix: prefix,
        topology_left: left,
        ..r
    })
}

/// Steps 1-3 of `run`: the bare consumer, the worker's drain, the latency phase.
async fn measure(
    opts: &BenchOptions,
    conn: &lapin::Connection,
    ch: &lapin::Channel,
    q: &QueueSettings,
    mock: &MockThread,
    config: &Path,
    bare: &str,
) -> Result<BenchReport, BenchError> {
    let ticks = ticks_per_sec();
    let broker = local_broker_pid();
    let mut report = BenchReport {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        jobs: opts.jobs,
        tokens_per_job: opts.tokens_per_job.max(1),
        shards: opts.shards.max(1),
        apns_latency_ms: opts.apns_latency_ms,
        max_in_flight: opts
            .max_in_flight
            .unwrap_or(Config::default().worker.max_notifications_in_flight),
        outcomes: opts.outcomes,
        payload_bytes: opts.payload_bytes,
        prefetch: opts.prefetch,
        connections: opts.connections,
        ack_batch: opts.ack_batch,
        ..Default::default()
    };

    // 1. The broker's ceiling on the same kind of queue.
    if !opts.drain_only {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            lapin::types::AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare(
            bare.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        eprintln!("bench: publishing {} jobs for the bare consumer", opts.jobs);
        let k = opts.tokens_per_job.max(1);
        let bare = [bare.to_string()];
        publish_all(conn, &bare, opts.jobs, opts.payload_bytes, "bare", k).await?;
        let before = CpuMark::now(broker, ticks);
        // Messages/s times tokens per message: the notifications/s the broker hands out.
        let per_sec = bare_consumer(conn, &bare[0], opts.jobs / k, opts.prefetch).await? * k as f64;
        let (me, broker_us, busy) = before.since(&CpuMark::now(broker, ticks), opts.jobs);
        eprintln!("bench: bare consumer {per_sec:.0}/s");
        report.bare_consumer_per_sec = Some(per_sec);
        report.bare_consumer_cpu_us_per_message = Some(me);
        report.broker_cpu_us_per_message_bare = broker_us;
        report.machine_busy_bare = busy;
    }

    // 2. The worker draining a full queue.
    eprintln!("bench: publishing {} jobs for the worker", opts.jobs);
    publish_all(
        conn,
        &amqp::job_queue_names(q),
        opts.jobs,
        opts.payload_bytes,
        "drain",
        opts.tokens_per_job.max(1),
    )
    .await?;
    let child = tokio::process::Command::new(&opts.worker_bin)
        .args(["run", "--config"])
        .arg(config)
        .env("APNS_WORKER__BROKER__URL", &opts.broker_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| BenchError::Setup("worker exited at once".into()))?;
    let mut worker = Proc {
        child,
        pid,
        ticks_per_sec: ticks,
    };
    // The clock starts at the first answer (connections are up, consuming has begun).
    wait_answered(mock, 1, Duration::from_secs(60)).await?;
    let (t0, cpu0) = (Instant::now(), worker.cpu_secs());
    let before = CpuMark::now(broker, ticks);
    let mock0 = mock.cpu_secs(ticks);
    let t1 = wait_answered(mock, opts.jobs, Duration::from_secs(600)).await?;
    let cpu1 = worker.cpu_secs();
    let mock_thread_us = mock0
        .zip(mock.cpu_secs(ticks))
        .map(|(a, b)| (b - a) * 1e6 / (opts.jobs - 1) as f64);
    let (harness_us, broker_us, busy) = before.since(&CpuMark::now(broker, ticks), opts.jobs - 1);
    let mock_us = mock_thread_us.unwrap_or(harness_us);
    let secs = (t1 - t0).as_secs_f64();
    report.drain_per_sec = (opts.jobs - 1) as f64 / secs;
    report.cpu_us_per_notification = (cpu1 - cpu0) * 1e6 / (opts.jobs - 1) as f64;
    report.mock_cpu_us_per_notification = mock_us;
    report.broker_cpu_us_per_message_drain = broker_us;
    report.machine_busy_drain = busy;
    report.ratio_to_bare = report
        .bare_consumer_per_sec
        .map(|b| report.drain_per_sec / b);
    eprintln!(
        "bench: worker drained at {:.0}/s, {:.1} µs CPU each (mock {:.1} µs)",
        report.drain_per_sec, report.cpu_us_per_notification, report.mock_cpu_us_per_notification
    );

    // 3. Latency at a fixed offered rate, the worker idle and warm.
    if !opts.drain_only && opts.rate > 0 {
        let n = opts.rate * opts.latency_secs;
        mock.set_record(true);
        let pch = conn.create_channel().await?;
        pch.confirm_select(Default::default()).await?;
        let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(n as usize);
        let mut confirms = Vec::with_capacity(n as usize);
        let started = Instant::now();
        for i in 0..n {
            // Pace: job i goes out at i / rate seconds.
            let due = started + Duration::from_secs_f64(i as f64 / opts.rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
            let jid = uuid::Uuid::new_v4().to_string();
            let body = job_body(10_000_000 + i, opts.payload_bytes, &jid);
            let props = amqp::job_props(&jid);
            confirms.push(
                pch.basic_publish(
                    "".into(),
                    q.jobs.as_str().into(),
                    Default::default(),
                    body.as_bytes(),
                    props,
                )
                .await?,
            );
            sent_at.insert(jid, Instant::now());
        }
        for c in confirms {
            c.await?;
        }
        let _ = pch.close(200, "done".into()).await;
        wait_answered(mock, opts.jobs + n, Duration::from_secs(60)).await?;
        mock.set_record(false);
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .expect("histogram bounds");
        for r in mock.take_received() {
            if let Some(at) = r.apns_id.as_deref().and_then(|a| sent_at.get(a)) {
                let _ = h.record(r.at.saturating_duration_since(*at).as_micros().max(1) as u64);
            }
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report.latency_rate = Some(opts.rate);
        report.latency_p50_ms = Some(ms(0.5));
        report.latency_p99_ms = Some(ms(0.99));
        report.latency_p999_ms = Some(ms(0.999));
        report.latency_samples = Some(h.len());
    }
    report.peak_rss_mib = worker.status_kib("VmHWM:") / 1024.0;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &worker.pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(30), worker.child.wait()).await;
    Ok(report)
}

/// Drain runs over prefetch × connections × ack batch: a markdown table and an SVG chart.
pub async fn sweep(base: &BenchOptions, out_dir: &Path) -> Result<Vec<BenchReport>, BenchError> {
    let mut reports = Vec::new();
    for prefetch in [500u16, 2000, 5000] {
        for connections in [1usize, 2, 4] {
            for ack_batch in [32usize, 256] {
                let opts = BenchOptions {
                    prefetch,
                    connections,
                    ack_batch,
                    drain_only: true,
                    ..base.clone()
                };
                let r = run(&opts).await?;
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
                reports.push(r);
            }
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let mut md = String::from(
        "| prefetch | connections | ack batch | drain (notifications/s) | CPU (µs/notification) | peak RSS (MiB) |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &reports {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} |\n",
            r.prefetch,
            r.connections,
            r.ack_batch,
            r.drain_per_sec,
            r.cpu_us_per_notification,
            r.peak_rss_mib
        ));
    }
    std::fs::write(out_dir.join("bench-sweep.md"), md)?;
    std::fs::write(out_dir.join("bench-sweep.svg"), report::svg_bars(&reports))?;
    Ok(reports)
}

/// Delete the run's queues and exchanges, with a few attempts on fresh connections.
///
/// RabbitMQ 3.10's quorum queues can crash their log's segment writer when a queue that
/// has just drained a large backlog is deleted (rabbitmq/ra#484, fixed in later
/// releases); the broker then closes the connection with INTERNAL_ERROR, and every
/// later delete on it failed, stranding the rest of the run's topology. So what failed
/// is tried again on a fresh connection after a pause, and what still could not be
/// deleted is named and returned.
async fn delete_with_retries(broker: &BrokerSettings, mut left: Vec<Entity>) -> Vec<String> {
    for attempt in 0..4u32 {
        if left.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        match amqp::connect(broker).await {
            Ok(conn) => {
                left = amqp::delete_entities(&conn, left).await;
                amqp::close(&conn).await;
            }
            Err(e) => eprintln!("bench: cleanup connection failed: {e}"),
        }
    }
    for e in &left {
        eprintln!("bench: could not delete {e}");
    }
    left.iter().map(ToString::to_string).collect()
}

//! `apns-worker bench`: the end-to-end benchmark. One command on a machine with
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::json;

use crate::config::{AppConfig, Config, KeyConfig, QueueSettings};
use crate::mock::{MockApns, MockConfig};
use crate::worker::amqp;

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
}

/// The figures of one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub jobs: u64,
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
    let token = format!("{:016x}{}", i, "0".repeat(48));
    let base = json!({"aps": {"alert": {"title": "Benchmark", "body": format!("notification {i}")}}, "pad": ""}).to_string();
    let pad = "x".repeat(payload_bytes.saturating_sub(base.len()));
    json!({"id": id, "device_token": token, "topic": "com.example.bench",
           "payload": {"aps": {"alert": {"title": "Benchmark", "body": format!("notification {i}")}}, "pad": pad}})
    .to_string()
}

struct Proc {
    child: tokio::process::Child,
    pid: u32,
    ticks_per_sec: f64,
}

impl Proc {
    /// user+sys CPU seconds so far (all threads).
    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid, self.ticks_per_sec)
    }

    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// user+sys CPU seconds a process has used so far (all threads).
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    stat_cpu_secs(Path::new(&format!("/proc/{pid}/stat")), ticks_per_sec)
}

/// user+sys CPU seconds from a `/proc/.../stat` file (a process's or a thread's).
fn stat_cpu_secs(path: &Path, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / ticks_per_sec
}

/// The calling thread's `/proc` stat file, to read its CPU time from any thread.
fn this_thread_stat() -> Option<PathBuf> {
    let task = std::fs::read_link("/proc/thread-self").ok()?;
    Some(Path::new("/proc").join(task).join("stat"))
}

/// A RabbitMQ node on this machine: the `beam.smp` whose command line names rabbit.
fn local_broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let names_rabbit = cmdline.windows(6).any(|w| w == b"rabbit");
        (comm.trim() == "beam.smp" && names_rabbit).then_some(pid)
    })
}

/// (busy, total) jiffies of all CPUs so far, from /proc/stat (idle and iowait are not
/// busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU time of the processes around the worker, read at the start and end of a phase.
#[derive(Clone, Copy)]
struct CpuMark {
    me: f64,
    broker: Option<f64>,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    fn now(broker: Option<u32>, ticks: f64) -> CpuMark {
        CpuMark {
            me: cpu_secs(std::process::id(), ticks),
            broker: broker.map(|pid| cpu_secs(pid, ticks)),
            machine: machine_ticks(),
        }
    }

    /// This process's and the broker's µs per message since `self`, and the machine's
    /// busy share.
    fn since(&self, later: &CpuMark, messages: u64) -> (f64, Option<f64>, Option<f64>) {
        let per = |secs: f64| secs * 1e6 / messages.max(1) as f64;
        let broker = self.broker.zip(later.broker).map(|(a, b)| per(b - a));
        let busy = self.machine.zip(later.machine).and_then(|(a, b)| {
            let total = b.1.saturating_sub(a.1);
            (total > 0).then(|| b.0.saturating_sub(a.0) as f64 / total as f64)
        });
        (per(later.me - self.me), broker, busy)
    }
}

fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn publish_all(
    conn: &lapin::Connection,
    queue: &str,
    n: u64,
    bytes: usize,
    prefix: &str,
) -> Result<(), BenchError> {
    let jobs = (0..n).map(|i| job_body(i, bytes, &format!("{prefix}-{i}")));
    crate::publish::publish_jobs(conn, queue, jobs, Some(n), false)
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
        mock.generate_key("BENCHTEAM1", "BENCHKEY01")
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
    cfg.admin.listen = String::new();
    cfg.apps.insert(
        "bench".into(),
        bench_app(
            mock,
            ca,
            opts.connections,
            "BENCHKEY01",
            KeySource::File(key_path),
        ),
    );
    let path = dir.join("bench.toml");
    std::fs::write(
        &path,
        toml::to_string(&cfg).map_err(|e| BenchError::Setup(e.to_string()))?,
    )?;
    Ok(path)
}

enum KeySource {
    File(PathBuf),
    Pem(String),
}

/// The benchmark's app: token auth against the mock, trusting its CA.
fn bench_app(
    mock: &MockApns,
    ca: PathBuf,
    connections: usize,
    key_id: &str,
    key: KeySource,
) -> AppConfig {
    let (key_file, key) = match key {
        KeySource::File(p) => (Some(p), None),
        KeySource::Pem(p) => (None, Some(crate::secret::Secret::new(p))),
    };
    AppConfig {
        endpoint: mock.endpoint(),
        topics: vec!["com.example.bench".into()],
        default_topic: None,
        connections,
        max_streams_per_connection: 1000,
        ca_file: Some(ca),
        team_id: Some("BENCHTEAM1".into()),
        keys: vec![KeyConfig {
            key_id: key_id.into(),
            key_file,
            key,
            topics: vec![],
        }],
        certificate: None,
    }
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

/// Delete the run's queues and exchanges, each with a few attempts.
///
/// RabbitMQ 3.10's quorum queues can crash their log's segment writer when a queue that
/// has just drained a large backlog is deleted (rabbitmq/ra#484, fixed in later
/// releases); the broker then closes the connection with INTERNAL_ERROR, and every
/// later delete on it failed, stranding the rest of the run's topology. So a failed
/// delete is retried on a fresh connection after a pause, and what still could not be
/// deleted is named and returned.
async fn delete_topology(
    broker: &crate::config::BrokerSettings,
    q: &QueueSettings,
    extra: &[String],
) -> Vec<String> {
    let mut queues = vec![
        q.jobs.clone(),
        q.dead_letter_queue.clone(),
        q.cleanup_queue.clone(),
    ];
    queues.extend(
        crate::worker::settle::delay_levels(&Config::default().retry)
            .into_iter()
            .map(|l| amqp::delay_queue_name(q, l)),
    );
    queues.extend(extra.iter().cloned());
    let exchanges = [&q.dead_letter_exchange, &q.cleanup_exchange];
    let mut link: Option<(lapin::Connection, lapin::Channel)> = None;
    let mut left = Vec::new();
    let items = queues
        .iter()
        .map(|n| (n.as_str(), true))
        .chain(exchanges.iter().map(|n| (n.as_str(), false)));
    for (name, is_queue) in items {
        let mut last_error = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            if link
                .as_ref()
                .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
            {
                link = cleanup_link(broker).await.map_err(|e| last_error = e).ok();
            }
            let Some((_, ch)) = &link else { continue };
            let deleted = if is_queue {
                ch.queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
                    .map(|_| ())
            } else {
                ch.exchange_delete(name.into(), Default::default()).await
            };
            match deleted {
                Ok(()) => {
                    last_error.clear();
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    link = None;
                }
            }
        }
        if !last_error.is_empty() {
            let what = if is_queue { "queue" } else { "exchange" };
            eprintln!("bench: could not delete {what} {name}: {last_error}");
            left.push(name.to_string());
        }
    }
    if let Some((c, _)) = link {
        amqp::close(&c).await;
    }
    left
}

async fn cleanup_link(
    broker: &crate::config::BrokerSettings,
) -> Result<(lapin::Connection, lapin::Channel), String> {
    let c = amqp::connect(broker).await.map_err(|e| e.to_string())?;
    let ch = c.create_channel().await.map_err(|e| e.to_string())?;
    Ok((c, ch))
}

/// The mock APNs on a thread of its own, with a single-threaded runtime: it answers as a
/// remote APNs would, without the harness's tasks or thread hops in its way (on the
/// harness's multi-threaded runtime it cost more CPU per answer than the worker).
struct MockThread {
    mock: MockApns,
    /// The mock thread's `/proc` stat file: its own CPU time, apart from the harness's.
    stat: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockThread {
    async fn start(cfg: MockConfig) -> Result<MockThread, BenchError> {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-apns".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(async move {
                    match MockApns::start(cfg).await {
                        Ok(mock) => {
                            let _ = started_tx.send(Ok((mock, this_thread_stat())));
                            let _ = stop_rx.await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })?;
        let (mock, stat) = started
            .await
            .map_err(|_| BenchError::Setup("the mock's thread ended at once".into()))?
            .map_err(BenchError::Setup)?;
        Ok(MockThread {
            mock,
            stat,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// CPU seconds of the mock's thread so far; None where `/proc` does not tell.
    fn cpu_secs(&self, ticks_per_sec: f64) -> Option<f64> {
        self.stat
            .as_deref()
            .map(|p| stat_cpu_secs(p, ticks_per_sec))
    }
}

impl std::ops::Deref for MockThread {
    type Target = MockApns;
    fn deref(&self) -> &MockApns {
        &self.mock
    }
}

impl Drop for MockThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A mock APNs that keeps no records, and a scratch directory for its CA and key.
async fn mock_and_dir(what: &str) -> Result<(MockThread, PathBuf), BenchError> {
    let mock = MockThread::start(MockConfig {
        record: false,
        ..MockConfig::default()
    })
    .await?;
    let dir = std::env::temp_dir().join(format!(
        "apns-worker-{what}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok((mock, dir))
}

/// One full run.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let (mock, dir) = mock_and_dir("bench").await?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench.{}.", &id[..8]);
    let q = QueueSettings::with_prefix(&prefix);
    let config = worker_config(opts, &q, &mock, &dir)?;
    let broker = crate::config::BrokerSettings {
        url: crate::secret::Secret::new(opts.broker_url.clone()),
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
    let left = delete_topology(&broker, &q, &[bare]).await;
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
        publish_all(conn, bare, opts.jobs, opts.payload_bytes, "bare").await?;
        let before = CpuMark::now(broker, ticks);
        let per_sec = bare_consumer(conn, bare, opts.jobs, opts.prefetch).await?;
        let (me, broker_us, busy) = before.since(&CpuMark::now(broker, ticks), opts.jobs);
        eprintln!("bench: bare consumer {per_sec:.0}/s");
        report.bare_consumer_per_sec = Some(per_sec);
        report.bare_consumer_cpu_us_per_message = Some(me);
        report.broker_cpu_us_per_message_bare = broker_us;
        report.machine_busy_bare = busy;
    }

    // 2. The worker draining a full queue.
    eprintln!("bench: publishing {} jobs for the worker", opts.jobs);
    publish_all(conn, &q.jobs, opts.jobs, opts.payload_bytes, "drain").await?;
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

/// The report as a table.
pub fn print_table(r: &BenchReport) {
    let opt = |v: Option<f64>, unit: &str| {
        v.map(|x| format!("{x:.2} {unit}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "apns-worker bench: {} jobs of {} B, prefetch {}, {} connection(s), ack batch {}",
        r.jobs, r.payload_bytes, r.prefetch, r.connections, r.ack_batch
    );
    println!(
        "  bare lapin consumer (broker ceiling)  {}",
        opt(r.bare_consumer_per_sec, "jobs/s")
    );
    println!(
        "  worker drain                          {:.0} notifications/s",
        r.drain_per_sec
    );
    println!(
        "  worker / bare consumer                {}",
        r.ratio_to_bare
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  worker CPU per notification           {:.1} µs",
        r.cpu_us_per_notification
    );
    println!(
        "  mock APNs CPU per notification        {:.1} µs (same machine)",
        r.mock_cpu_us_per_notification
    );
    if let Some(b) = r.broker_cpu_us_per_message_drain {
        println!(
            "  broker CPU per message                {b:.1} µs in the drain{}",
            r.broker_cpu_us_per_message_bare
                .map(|x| format!(", {x:.1} µs with the bare consumer"))
                .unwrap_or_default()
        );
    }
    if let Some(c) = r.bare_consumer_cpu_us_per_message {
        println!("  bare consumer CPU per message         {c:.1} µs");
    }
    if let Some(b) = r.machine_busy_drain {
        println!(
            "  machine busy                          {:.0}% of {} CPUs in the drain{}",
            b * 100.0,
            r.cpus,
            r.machine_busy_bare
                .map(|x| format!(", {:.0}% with the bare consumer", x * 100.0))
                .unwrap_or_default()
        );
    }
    println!(
        "  worker peak RSS                       {:.1} MiB",
        r.peak_rss_mib
    );
    if let Some(rate) = r.latency_rate {
        println!(
            "  publish -> APNs latency at {rate}/s   p50 {} p99 {} p999 {} ({} samples)",
            opt(r.latency_p50_ms, "ms"),
            opt(r.latency_p99_ms, "ms"),
            opt(r.latency_p999_ms, "ms"),
            r.latency_samples.unwrap_or(0)
        );
    }
}

/// The sender-only report as a table.
pub fn print_sender_table(r: &SenderReport) {
    let us = |v: Option<f64>| {
        v.map(|x| format!("{x:.1} µs"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "apns-worker bench --sender-only: {} notifications, {} in flight, {} connection(s)",
        r.jobs, r.concurrency, r.connections
    );
    println!(
        "  client throughput                     {:.0} notifications/s",
        r.sender_only_per_sec
    );
    println!(
        "  client CPU per notification           {}",
        us(r.cpu_us_per_notification)
    );
    println!(
        "  mock APNs CPU per notification        {} (busy {})",
        us(r.mock_cpu_us_per_notification),
        r.mock_busy
            .map(|b| format!("{:.0}%", b * 100.0))
            .unwrap_or_else(|| "-".into())
    );
}

/// What `--sender-only` measured.
#[derive(Clone, Debug, Serialize)]
pub struct SenderReport {
    pub jobs: u64,
    pub concurrency: usize,
    pub connections: usize,
    pub sender_only_per_sec: f64,
    /// CPU of the client's thread (a single-threaded runtime, as the worker's).
    pub cpu_us_per_notification: Option<f64>,
    /// CPU of the mock's thread, and its busy share (CPU over wall time): near 1.0,
    /// the mock, not the client, set the pace.
    pub mock_cpu_us_per_notification: Option<f64>,
    pub mock_busy: Option<f64>,
}

/// The APNs client alone against the mock (no broker): `n` notifications with
/// `concurrency` in flight. The client runs on a thread of its own with a
/// single-threaded runtime, as in the worker; the mock on another.
pub async fn sender_only(
    n: u64,
    concurrency: usize,
    connections: usize,
    payload_bytes: usize,
) -> Result<SenderReport, BenchError> {
    let (mock, dir) = mock_and_dir("sender").await?;
    let ca = dir.join("ca.pem");
    mock.write_ca(&ca)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let pem = mock
        .generate_key("BENCHTEAM1", "BENCHKEY01")
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let app = bench_app(&mock, ca, connections, "BENCHKEY01", KeySource::Pem(pem));
    let apps = crate::worker::job::AppDirectory::permissive();
    let notes: Vec<_> = (0..n)
        .map(|i| {
            let body = bytes::Bytes::from(job_body(i, payload_bytes, &format!("s{i}")));
            crate::worker::job::decode(&body, &Default::default(), &apps, 65536)
                .map(|j| j.notification)
                .map_err(|e| BenchError::Setup(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let ticks = ticks_per_sec();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let client_thread = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let result = match rt {
                Ok(rt) => rt.block_on(send_all(app, notes, concurrency, ticks)),
                Err(e) => Err(BenchError::Setup(e.to_string())),
            };
            let _ = done_tx.send(result);
        })?;
    let mock0 = mock.cpu_secs(ticks);
    let started = Instant::now();
    let sent = done
        .await
        .map_err(|_| BenchError::Setup("the client's thread ended early".into()))?;
    let wall = started.elapsed().as_secs_f64();
    let mock_secs = mock0.zip(mock.cpu_secs(ticks)).map(|(a, b)| b - a);
    let _ = client_thread.join();
    let sent = sent?;
    let ok = mock.stats().by_status.get(&200).copied().unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    if ok != n {
        return Err(BenchError::Setup(format!("only {ok} of {n} delivered")));
    }
    Ok(SenderReport {
        jobs: n,
        concurrency,
        connections,
        sender_only_per_sec: sent.per_sec,
        cpu_us_per_notification: sent.cpu_us,
        // The mock's figures cover the client's warm-up too (one request, and the
        // connections' handshakes): a small share of a run of thousands.
        mock_cpu_us_per_notification: mock_secs.map(|c| c * 1e6 / n as f64),
        mock_busy: mock_secs.map(|c| c / wall),
    })
}

struct Sent {
    per_sec: f64,
    cpu_us: Option<f64>,
}

/// On the client's thread: start the client, warm it up, send the rest, and time it.
async fn send_all(
    app: AppConfig,
    notes: Vec<crate::apns::notification::Notification>,
    concurrency: usize,
    ticks: f64,
) -> Result<Sent, BenchError> {
    let client = Arc::new(
        crate::apns::client::AppClient::start(
            "bench",
            &app,
            &Default::default(),
            &Default::default(),
            Arc::new(crate::apns::jwt::SystemClock),
        )
        .map_err(|e| BenchError::Setup(e.to_string()))?,
    );
    let notes = Arc::new(notes);
    // Warm up: the first answer raises the stream limit.
    client
        .send(&notes[0])
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let me = this_thread_stat();
    let cpu0 = me.as_deref().map(|p| stat_cpu_secs(p, ticks));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let started = Instant::now();
    let senders = tokio::task::LocalSet::new();
    for _ in 0..concurrency {
        let (client, notes, next) = (client.clone(), notes.clone(), next.clone());
        senders.spawn_local(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= notes.len() {
                    return;
                }
                let _ = client.send(&notes[i]).await;
            }
        });
    }
    senders.await;
    let sent = (notes.len() - 1).max(1) as f64;
    let per_sec = sent / started.elapsed().as_secs_f64();
    let cpu_us = cpu0
        .zip(me.as_deref().map(|p| stat_cpu_secs(p, ticks)))
        .map(|(a, b)| (b - a) * 1e6 / sent);
    client.close(Duration::from_secs(1)).await;
    Ok(Sent { per_sec, cpu_us })
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
    std::fs::write(out_dir.join("bench-sweep.svg"), svg_bars(&reports))?;
    Ok(reports)
}

/// A bar chart of drain throughput per configuration.
fn svg_bars(reports: &[BenchReport]) -> String {
    let (w, h, left, bottom, top) = (980.0, 460.0, 70.0, 120.0, 40.0);
    let max = reports.iter().map(|r| r.drain_per_sec).fold(1.0, f64::max) * 1.1;
    let bw = (w - left - 20.0) / reports.len().max(1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<text x="{left}" y="22" font-size="14">apns-worker drain throughput (notifications/s) by prefetch / connections / ack batch</text>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
"#,
        h - bottom,
        h - bottom,
        w - 20.0,
        h - bottom
    );
    for k in 0..=5 {
        let v = max * k as f64 / 5.0;
        s.push_str(&format!(
            r##"<text x="{}" y="{}" text-anchor="end">{:.0}</text><line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/>
"##,
            left - 6.0,
            y(v) + 4.0,
            v,
            y(v),
            w - 20.0,
            y(v)
        ));
    }
    for (i, r) in reports.iter().enumerate() {
        let x = left + i as f64 * bw + 3.0;
        let color = match r.connections {
            1 => "#8da0cb",
            2 => "#66c2a5",
            _ => "#fc8d62",
        };
        s.push_str(&format!(
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" transform="rotate(-60 {:.1} {:.1})" text-anchor="end">p{} c{} a{}</text>
"#,
            y(r.drain_per_sec),
            bw - 6.0,
            (h - bottom) - y(r.drain_per_sec),
            x + bw / 2.0,
            h - bottom + 12.0,
            x + bw / 2.0,
            h - bottom + 12.0,
            r.prefetch,
            r.connections,
            r.ack_batch
        ));
    }
    s.push_str("</svg>\n");
    s
}

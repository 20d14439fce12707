//! The admin endpoint under a flood of slow clients: thousands of connections that send
//! half a request and wait, reopened as soon as they are dropped, while the worker
//! delivers jobs. `/readyz` must keep answering within a second, the worker's file
//! descriptors must stay bounded, and delivery must go on.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apns_mock::Faults;
use common::broker;
use common::process::{ChildConfig, WorkerProcess, write_config};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_CLIENTS: usize = 3000;
const MAX_CONNECTIONS: usize = 256;

/// The admin address, from the worker's "admin endpoint listening" log line.
async fn admin_addr(log: &std::path::Path) -> std::net::SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if !v["message"]
                .as_str()?
                .starts_with("admin endpoint listening")
            {
                return None;
            }
            v["addr"].as_str()?.parse().ok()
        }) {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "no admin address in the log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `GET /readyz` on a fresh connection: the status line, and how long it took.
async fn probe(addr: std::net::SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).lines().next()?.to_string())
    })
    .await;
    let line = match answer {
        Ok(Some(l)) => l,
        Ok(None) => "no answer (connection closed)".into(),
        Err(_) => "no answer within 1 s".into(),
    };
    (line, started.elapsed())
}

/// A client that sends half a request and waits; when the server drops it, it
/// connects again a second later (as slowloris tools replenish), until `stop`.
async fn slow_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        first = false;
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: slow\r\n").await;
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
            }
        }
    }
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_take_the_probes_down() {
    const JOBS: u64 = 5000;
    let m = mock(Faults::default()).await;
    let q = broker::topology("adminflood");
    let r = broker::fast_retry();
    let dir = tempfile::tempdir().unwrap();
    let key_pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let extra = format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\nmax_connections = {MAX_CONNECTIONS}\nheader_read_timeout_ms = 2000\n"
    );
    // The [admin] table of the base config is replaced by this one.
    let config = write_config(&ChildConfig {
        dir: dir.path(),
        name: "admin-flood",
        broker_url: broker::BROKER,
        queues: &q,
        retry: &r,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem: &key_pem,
        extra: "",
    });
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&config, format!("{text}{extra}")).unwrap();
    let log = dir.path().join("worker.log");
    let p = WorkerProcess::spawn(&config, log.clone(), "info");
    let addr = admin_addr(&log).await;
    let (first, _) = probe(addr).await;
    assert!(first.contains("200") || first.contains("503"), "{first}");
    let fds_before = open_fds(p.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr, stop.clone(), opened.clone())))
        .collect();
    let conn = broker::connect().await;
    let publish = {
        let q = q.clone();
        tokio::spawn(async move {
            let conn = broker::connect().await;
            let jobs = (0..JOBS)
                .map(|i| {
                    serde_json::json!({"id": format!("f{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}})
                        .to_string()
                })
                .collect();
            broker::publish_jobs(&conn, &q.jobs, jobs).await;
        })
    };

    // Ten seconds of flood (five header timeouts), probing every 100 ms.
    let flood = Instant::now();
    let (mut worst, mut probes, mut max_fds) = (Duration::ZERO, 0, 0);
    let mut failures = Vec::new();
    while flood.elapsed() < Duration::from_secs(10) {
        let (line, took) = probe(addr).await;
        probes += 1;
        worst = worst.max(took);
        if !line.contains(" 200 ") {
            failures.push(format!("{:?}: {line}", flood.elapsed()));
        }
        max_fds = max_fds.max(open_fds(p.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish.await.unwrap();
    let delivered_during = m.mock.stats().answered;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let connections = opened.load(Ordering::Relaxed);
    eprintln!(
        "admin flood: {SLOW_CLIENTS} slow clients, {connections} connections opened, {probes} probes, worst /readyz {worst:?}, worker fds {fds_before} -> max {max_fds}, {delivered_during} of {JOBS} jobs answered during the flood"
    );
    assert!(failures.is_empty(), "probes failed: {failures:?}");
    assert!(worst < Duration::from_secs(1), "worst probe {worst:?}");
    // The connections held, and as many evicted ones on their way out.
    assert!(
        max_fds <= fds_before + 2 * MAX_CONNECTIONS + 16,
        "fds {fds_before} -> {max_fds}"
    );
    assert!(
        connections as usize > SLOW_CLIENTS,
        "the flood was held off and came back"
    );
    // Delivery went on: every job answered (within a grace after the flood).
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.mock.stats().answered < JOBS {
        assert!(
            Instant::now() < deadline,
            "{} of {JOBS} answered",
            m.mock.stats().answered
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.signal("TERM");
    let (status, _, _) = p.wait(Duration::from_secs(15)).await;
    assert!(status.success());
    broker::delete_topology(&conn, &q, &r).await;
}

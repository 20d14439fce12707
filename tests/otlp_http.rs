//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` exports over OTLP/HTTP: the worker
//! binary, one job, and a collector stand-in that records what it is sent. An
//! unsupported protocol stops the worker at start (exit 3).

mod common;

use std::time::Duration;

use apns_mock::Faults;
use common::process::{ChildConfig, write_config};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A collector stand-in: answers every HTTP request 200 and sends its request line
/// and content type.
async fn collector() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
                    if let Some(end) = head_end {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            let line = head.lines().next().unwrap_or("").to_string();
                            let ctype = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-type")
                                        .then(|| v.trim().to_string())
                                })
                                .unwrap_or_default();
                            let _ = tx.send((line, ctype));
                            buf.drain(..end + 4 + len);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            continue;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_otlp_http_when_the_protocol_says_so() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("otlp-http");
    let retry = broker::fast_retry();
    let (port, mut got) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let cfg = write_config(&ChildConfig {
        dir: dir.path(),
        name: "otlp-http",
        broker_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
        queues: &q,
        retry: &retry,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem: &m.mock.generate_key(TEAM, KEY).unwrap(),
        extra: "",
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_apns-worker"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRICS_EXPORTER", "none")
        .env("APNS_WORKER_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let conn = broker::connect().await;
    // Declared here so the job is queued whether or not the child is up yet.
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &retry)
        .await
        .unwrap();
    let job = serde_json::json!({"id": "otlp-1", "device_token": token("0a", 1), "topic": TOPIC, "payload": {}});
    broker::publish_jobs(&conn, &q.jobs, vec![job.to_string()]).await;
    let (line, ctype) = tokio::time::timeout(Duration::from_secs(30), got.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no OTLP request within 30 s; the worker said:\n{}",
                std::fs::read_to_string(dir.path().join("worker.log")).unwrap_or_default()
            )
        })
        .unwrap();
    assert_eq!(line, "POST /v1/traces HTTP/1.1");
    assert_eq!(ctype, "application/x-protobuf");
    // The first export may hold a span that ended before the send (the batch goes
    // every 100 ms): wait for the mock to have the job, then count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.mock.received().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.mock.received().len(), 1);
    child.kill().await.unwrap();
    broker::delete_topology(&conn, &q, &retry).await;
}

#[test]
fn an_unsupported_otlp_protocol_stops_the_worker_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apns-worker"))
        .args(["check-config", "--static"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("APNS_WORKER_LOG_FORMAT", "text")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported"),
        "{err}"
    );
}

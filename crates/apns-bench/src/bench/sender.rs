//! `--sender-only`: the APNs client alone against the mock (no broker), the client on
//! a thread of its own with a single-threaded runtime, as in the worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apns::jwt::{SignerRegistry, SystemClock};
use apns::{AppClient, AppSettings, ClientSettings, Notification, SecretSource};
use serde::Serialize;

use super::mock_thread::mock_and_dir;
use super::procfs::{stat_cpu_secs, this_thread_stat, ticks_per_sec};
use super::{BenchError, bench_app, job_body};

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
    let (mock, dir) = mock_and_dir("sender", 0).await?;
    let ca = dir.join("ca.pem");
    mock.write_ca(&ca)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let pem = mock
        .generate_key(super::TEAM, super::KEY_ID)
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let app = bench_app(&mock, ca, connections, SecretSource::Value(pem.into()))
        .settings("bench", &Default::default())
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let apps = apns_worker::job::AppDirectory::permissive();
    let notes: Vec<_> = (0..n)
        .map(|i| {
            let body = bytes::Bytes::from(job_body(i, payload_bytes, &format!("s{i}")));
            apns_worker::job::decode(&body, &Default::default(), &apps, 65536)
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
    app: AppSettings,
    notes: Vec<Notification>,
    concurrency: usize,
    ticks: f64,
) -> Result<Sent, BenchError> {
    let client = Arc::new(
        AppClient::start(
            "bench",
            &app,
            &ClientSettings::default(),
            &SignerRegistry::default(),
            Arc::new(SystemClock),
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

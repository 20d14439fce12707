//! The mock APNs on a thread of its own, with a single-threaded runtime, and a scratch
//! directory for its CA and key.

use std::path::PathBuf;

use apns_mock::{MockApns, MockConfig};

use super::BenchError;
use super::procfs::{stat_cpu_secs, this_thread_stat};

/// The mock APNs on a thread of its own, with a single-threaded runtime: it answers as a
/// remote APNs would, without the harness's tasks or thread hops in its way (on the
/// harness's multi-threaded runtime it cost more CPU per answer than the worker).
pub struct MockThread {
    mock: MockApns,
    /// The mock thread's `/proc` stat file: its own CPU time, apart from the harness's.
    stat: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockThread {
    pub async fn start(cfg: MockConfig) -> Result<MockThread, BenchError> {
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
    pub fn cpu_secs(&self, ticks_per_sec: f64) -> Option<f64> {
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
pub async fn mock_and_dir(
    what: &str,
    latency_ms: u64,
) -> Result<(MockThread, PathBuf), BenchError> {
    let mock = MockThread::start(MockConfig {
        record: false,
        faults: apns_mock::Faults {
            latency_ms,
            ..apns_mock::Faults::default()
        },
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

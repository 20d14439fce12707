//! `apns-worker run`: the worker with its surroundings: the OTLP metrics exporter when
//! configured, the admin endpoint, and the session loop until shutdown.

use std::future::Future;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::obs::{self, Status};
use crate::worker::{StartError, Summary, Worker, serve};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Admin(#[from] obs::admin::AdminError),
}

/// Run until `shutdown` resolves; then drain, requeue what is left, and return the summary.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, RunError> {
    let worker = Worker::start(cfg)?;
    if obs::telemetry::otlp_metrics_on() {
        let status: Arc<dyn Status> = worker.clone();
        worker
            .metrics()
            .attach_otlp(obs::otlp::install(Arc::downgrade(&status)));
    }
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = worker.config().admin.addr()? {
        let limits = worker.config().admin.limits();
        let (_, admin) = obs::admin::bind(addr, worker.clone(), limits, async move {
            let _ = admin_stopped.await;
        })
        .await?;
        tokio::spawn(admin);
    }
    let summary = serve(worker, shutdown).await;
    let _ = stop_admin.send(());
    Ok(summary)
}

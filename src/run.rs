//! `apns-worker run`: the worker with its surroundings: the OTLP metrics exporter when
//! configured, the admin endpoint, credential reloads, and the session loop until
//! shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    #[error(transparent)]
    Broker(crate::amqp::AmqpError),
}

/// Run until `shutdown` resolves; then drain, requeue what is left, and return the summary.
/// `path` is the config file the configuration came from (read again to reload
/// credentials).
pub async fn run(
    cfg: Config,
    path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, RunError> {
    let worker = Worker::start(cfg)?;
    // A broker that is down is waited for (the session loop retries); one whose TLS
    // certificate is not trusted is a configuration error: say so now.
    // So is a queue declared before with other arguments (a changed delivery_limit):
    // the broker refuses to redeclare it, and retrying cannot help.
    match crate::amqp::connect(&worker.config().broker).await {
        Ok(conn) => {
            let declared = preflight_declare(&conn, worker.config()).await;
            crate::amqp::close(&conn).await;
            declared?;
        }
        Err(e @ crate::amqp::AmqpError::UntrustedBroker(_)) => return Err(RunError::Broker(e)),
        Err(_) => {}
    }
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
    let (stop_reload, reload_stopped) = tokio::sync::oneshot::channel::<()>();
    let every = match worker.config().apns.credentials_check_secs {
        0 => Duration::MAX / 4,
        secs => Duration::from_secs(secs),
    };
    tokio::spawn(crate::reload::watch(
        worker.clone(),
        path,
        every,
        async move {
            let _ = reload_stopped.await;
        },
    ));
    let summary = serve(worker, shutdown).await;
    let _ = stop_admin.send(());
    let _ = stop_reload.send(());
    Ok(summary)
}

/// Declare the topology once before consuming; a declaration the broker refuses
/// (PRECONDITION_FAILED: the queue exists with other arguments) is fatal.
async fn preflight_declare(conn: &lapin::Connection, cfg: &Config) -> Result<(), RunError> {
    if !cfg.queues.declare {
        return Ok(());
    }
    let Ok(ch) = conn.create_channel().await else {
        return Ok(());
    };
    match crate::amqp::declare_topology(&ch, &cfg.queues, &cfg.retry).await {
        Err(e @ crate::amqp::AmqpError::ArgumentsDiffer { .. }) => Err(RunError::Broker(e)),
        _ => {
            let _ = ch.close(200, "declared".into()).await;
            Ok(())
        }
    }
}

//! What every delivery task shares: the configuration, the APNs client, the app
//! directory, the per-app circuits, the memory of recent outcomes, the health flags
//! and the observer. Also how the worker looks from outside (`obs::Status`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use apns::jwt::{Clock, SystemClock};
use apns::{ApnsClient, ClientError};

use super::circuit::Circuits;
use super::health::{self, Health};
use super::observe::Observer;
use super::recent::Recent;
use super::stats::Summary;
use crate::config::{Config, ConfigError};
use crate::job::AppDirectory;
use crate::obs::{Metrics, Readiness, Snapshot, Status};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The worker: shared by the broker sessions and every delivery task.
pub struct Worker {
    pub(super) cfg: Config,
    pub(super) client: ApnsClient,
    pub(super) apps: AppDirectory,
    pub(super) circuits: Circuits,
    pub(super) recent: Recent,
    pub(super) health: Health,
    pub(super) observer: Observer,
    /// The replica's send bound: one permit per notification being sent
    /// (`worker.max_notifications_in_flight`).
    pub(super) sends: tokio::sync::Semaphore,
    /// With an urgent lane: the bulk lane's share of `sends` (all but
    /// `worker.urgent_reserved`), taken before a permit of `sends`.
    pub(super) bulk_sends: Option<tokio::sync::Semaphore>,
    /// The queues each broker session consumes, with their prefetch.
    pub(super) consumed: crate::amqp::ConsumedQueues,
}

/// Held while one notification is being sent.
pub(super) struct SendPermit<'a> {
    _bulk: Option<tokio::sync::SemaphorePermit<'a>>,
    _send: tokio::sync::SemaphorePermit<'a>,
}

impl Worker {
    /// Check the config, load the credentials and start the APNs connections.
    pub fn start(cfg: Config) -> Result<Arc<Worker>, StartError> {
        Worker::start_with_clock(cfg, Arc::new(SystemClock))
    }

    /// [`Worker::start`] with another clock for provider tokens (tests).
    pub fn start_with_clock(cfg: Config, clock: Arc<dyn Clock>) -> Result<Arc<Worker>, StartError> {
        cfg.check()?;
        cfg.check_apps()?;
        // The URL from `broker.url_file` too: a bad one fails now, not at each reconnect.
        cfg.broker.effective_url()?;
        let mut apps = Vec::with_capacity(cfg.apps.len());
        for (name, app) in &cfg.apps {
            apps.push((name.clone(), app.settings(name, &cfg.apns)?));
        }
        let client = ApnsClient::start_with_clock(apps, &cfg.apns.client_settings(), clock)?;
        Ok(Arc::new(Worker {
            apps: AppDirectory::from_config(&cfg.apps),
            circuits: Circuits::new(
                cfg.apps.keys(),
                Duration::from_millis(cfg.circuit.open_ms),
                Duration::from_millis(cfg.circuit.max_open_ms),
                Duration::from_millis(cfg.circuit.throttled_pause_ms),
            ),
            recent: Recent::new(cfg.worker.dedupe_capacity),
            client,
            health: Health::default(),
            observer: Observer::default(),
            sends: tokio::sync::Semaphore::new(cfg.worker.max_notifications_in_flight),
            bulk_sends: (!cfg.queues.urgent.is_empty()).then(|| {
                tokio::sync::Semaphore::new(
                    cfg.worker.max_notifications_in_flight - cfg.worker.urgent_reserved,
                )
            }),
            consumed: crate::amqp::consumed_queues(&cfg.queues, cfg.broker.prefetch),
            cfg,
        }))
    }

    /// Ready: connected, consuming, and at least one app not paused.
    pub fn ready(&self) -> bool {
        self.readiness().ready
    }

    /// What the worker did so far.
    pub fn summary(&self) -> Summary {
        self.observer.summary()
    }

    /// Deliveries being processed now.
    pub fn in_flight(&self) -> usize {
        self.health.in_flight.load(Ordering::Relaxed)
    }

    /// A permit to send one notification: an urgent job's from `sends`; a bulk job's
    /// from the bulk share first (with an urgent lane), so the reserved ones stay free.
    pub(super) async fn send_permit(&self, urgent: bool) -> SendPermit<'_> {
        let bulk = match (&self.bulk_sends, urgent) {
            (Some(b), false) => Some(b.acquire().await.expect("never closed")),
            _ => None,
        };
        let send = self.sends.acquire().await.expect("never closed");
        SendPermit {
            _bulk: bulk,
            _send: send,
        }
    }

    /// What a job may hold (`worker.max_job_bytes`, `worker.max_tokens_per_job`).
    pub(super) fn job_limits(&self) -> crate::job::Limits {
        crate::job::Limits {
            max_bytes: self.cfg.worker.max_job_bytes,
            max_tokens: self.cfg.worker.max_tokens_per_job,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The broker node's host and port (for spans' `server.address`, `server.port`).
    pub(super) fn broker_address(&self) -> (String, u16) {
        self.health.broker_node()
    }

    /// Give app `name` new credentials (and endpoint, connections, CA): new
    /// connections use them at once, the old ones finish their streams and close. On
    /// error the current ones stay.
    pub fn replace_credentials(
        &self,
        name: &str,
        app: &apns::AppSettings,
    ) -> Result<(), ClientError> {
        self.client.replace(name, app)
    }

    /// The Prometheus families (and OTLP instruments, once attached).
    pub fn metrics(&self) -> &Metrics {
        self.observer.metrics()
    }
}

impl Status for Worker {
    fn readiness(&self) -> Readiness {
        let connected = self.health.broker_connected.load(Ordering::Relaxed);
        let consuming = self.health.consuming.load(Ordering::Relaxed);
        let blocked = self.health.broker_blocked();
        let mut facts = vec![
            ("broker_connected", connected.to_string()),
            ("broker_node", {
                // The node of the current (or last) session; none before the first.
                let (host, port) = self.health.broker_node();
                if host.is_empty() {
                    "none".to_string()
                } else {
                    format!("{host}:{port}")
                }
            }),
            ("broker_blocked", blocked.is_some().to_string()),
            ("consuming", consuming.to_string()),
            ("apps_paused", self.circuits.paused().join(",")),
        ];
        if let Some(reason) = &blocked {
            facts.insert(3, ("broker_blocked_reason", reason.clone()));
        }
        Readiness {
            ready: connected && blocked.is_none() && consuming && self.circuits.any_sending(),
            facts,
        }
    }

    fn snapshot(&self) -> Vec<Snapshot> {
        health::snapshot(
            &self.client,
            &self.circuits,
            &self.health,
            &self.observer.summary(),
            self.cfg.broker.prefetch,
        )
    }

    fn metrics_text(&self) -> String {
        crate::obs::prometheus::render(self.observer.metrics(), self.snapshot())
    }
}

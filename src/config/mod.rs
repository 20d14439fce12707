//! Typed configuration: a TOML file, overlaid by `APNS_WORKER__SECTION__KEY` environment
//! variables (every setting has one), with documented defaults and checks that say what
//! to fix. Secrets are named by file path or given inline and never printed.
//!
//! `load` reads and overlays, `check` validates, `apps` turns an app's section into
//! the APNs client's settings.

mod apps;
mod check;
mod load;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use apns::secret::{Secret, SecretSource};
use serde::{Deserialize, Serialize};

pub use apps::{AppConfig, CertificateConfig, KeyConfig};
pub use load::{ENV_PREFIX, overlay_env};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: String, message: String },
    #[error("config file {path}: {message}")]
    Setting { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

pub(crate) fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerSettings,
    pub queues: QueueSettings,
    pub retry: RetrySettings,
    pub worker: WorkerSettings,
    pub circuit: CircuitSettings,
    pub admin: AdminSettings,
    pub apns: ApnsSettings,
    /// Credentials profiles by name. A job names one with `app`, or the app whose
    /// `topics` match the job's topic is used.
    pub apps: BTreeMap<String, AppConfig>,
}

/// The RabbitMQ connection.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// `amqp://user:pass@host:port/vhost` or `amqps://...` (TLS); several, separated by
    /// whitespace, for a cluster's nodes (tried in order). Holds a password, so it is a
    /// secret; `url_file` reads it from a mounted secret instead.
    pub url: Secret<String>,
    pub url_file: Option<PathBuf>,
    /// Shown in the management UI; defaults to `apns-worker@<hostname>`.
    pub connection_name: Option<String>,
    /// AMQP heartbeat in seconds (0 turns it off, which we refuse).
    pub heartbeat_secs: u16,
    /// Unacknowledged deliveries at once (the in-flight window of this replica).
    pub prefetch: u16,
    /// Reconnect backoff (exponential with jitter) between these bounds.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// A publish of the worker's own (retry copy, dead letter, event, receipt) that the
    /// broker has not confirmed within this time fails: the session is restarted and
    /// the delivery goes back to the queue, never acked. Time during which the broker
    /// blocks the connection (a resource alarm) does not count.
    pub confirm_timeout_ms: u64,
    /// TLS for `amqps://` URLs: a private CA, a client certificate.
    pub tls: BrokerTls,
}

/// TLS to the broker (`amqps://`). The broker's certificate is verified against the
/// public roots plus `ca_file`, and its host name against the URL's; there is no way to
/// turn that off. A client certificate (PEM files, or PKCS#12) is presented when given;
/// with `?auth_mechanism=external` in the URL, the broker logs the client in by it
/// (RabbitMQ's `rabbitmq_auth_mechanism_ssl`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerTls {
    /// PEM file of the CA(s) that signed the broker's certificate (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) and its key (PEM: PKCS#8, PKCS#1 or SEC1)...
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// ...or one PKCS#12 archive with its password (inline or from a file).
    pub pkcs12_file: Option<PathBuf>,
    pub password: Option<Secret<String>>,
    pub password_file: Option<PathBuf>,
}

impl BrokerTls {
    fn is_set(&self) -> bool {
        *self != BrokerTls::default()
    }

    /// lapin's TLS settings, files read now.
    pub fn lapin_config(&self) -> Result<lapin::tcp::OwnedTLSConfig, ConfigError> {
        let read = |what: &str, p: &PathBuf| {
            std::fs::read(p).map_err(|e| invalid(format!("broker.tls.{what} {}: {e}", p.display())))
        };
        let cert_chain = match &self.ca_file {
            Some(p) => {
                let pem = String::from_utf8(read("ca_file", p)?).map_err(|_| {
                    invalid(format!("broker.tls.ca_file {}: not PEM text", p.display()))
                })?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(invalid(format!(
                        "broker.tls.ca_file {} holds no PEM certificate",
                        p.display()
                    )));
                }
                Some(pem)
            }
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file, &self.pkcs12_file) {
            (None, None, None) => None,
            (Some(c), Some(k), None) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("cert_file", c)?,
                key: read("key_file", k)?,
            }),
            (None, None, Some(p)) => {
                let password = match (&self.password, &self.password_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "broker.tls: give password or password_file, not both",
                        ));
                    }
                    (Some(pw), None) => pw.expose().clone(),
                    (None, Some(f)) => String::from_utf8(read("password_file", f)?)
                        .map_err(|_| invalid("broker.tls.password_file: not UTF-8"))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                    (None, None) => String::new(),
                };
                Some(lapin::tcp::OwnedIdentity::PKCS12 {
                    der: read("pkcs12_file", p)?,
                    password,
                })
            }
            _ => {
                return Err(invalid(
                    "broker.tls: give cert_file and key_file (PEM), or pkcs12_file, for the client certificate",
                ));
            }
        };
        Ok(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            url_file: None,
            connection_name: None,
            heartbeat_secs: 30,
            prefetch: 2000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            confirm_timeout_ms: 30_000,
            tls: BrokerTls::default(),
        }
    }
}

impl BrokerSettings {
    /// The broker URLs (one per node; `url` or `url_file` may hold several separated by
    /// whitespace, tried in order), each with the heartbeat applied.
    pub fn effective_urls(&self) -> Result<Vec<Secret<String>>, ConfigError> {
        let raw = match &self.url_file {
            Some(f) => {
                let raw = SecretSource::File(f.clone())
                    .load()
                    .map_err(|e| invalid(format!("broker.url_file: {e}")))?;
                String::from_utf8(raw.expose().clone())
                    .map_err(|_| invalid("broker.url_file: not UTF-8"))?
            }
            None => self.url.expose().clone(),
        };
        let setting = if self.url_file.is_some() {
            "broker.url_file"
        } else {
            "broker.url"
        };
        let bases: Vec<&str> = raw.split_whitespace().collect();
        if bases.is_empty() {
            return Err(invalid(format!(
                "{setting} is empty: give amqp://user:password@host:port/vhost (several, separated by spaces, for a cluster's nodes)"
            )));
        }
        let several = bases.len() > 1;
        bases
            .iter()
            .enumerate()
            .map(|(i, base)| {
                // Which one, without quoting it (it holds a password).
                let which = if several {
                    format!("{setting} (URL {} of {})", i + 1, bases.len())
                } else {
                    setting.to_string()
                };
                self.one_url(base, &which)
            })
            .collect()
    }

    /// The first broker URL (of [`BrokerSettings::effective_urls`]).
    pub fn effective_url(&self) -> Result<Secret<String>, ConfigError> {
        Ok(self.effective_urls()?.swap_remove(0))
    }

    /// One URL checked, with the heartbeat applied; `which` names its setting, and its
    /// place among several.
    fn one_url(&self, base: &str, which: &str) -> Result<Secret<String>, ConfigError> {
        if !(base.starts_with("amqp://") || base.starts_with("amqps://")) {
            return Err(invalid(format!(
                "{which} must start with amqp:// or amqps://"
            )));
        }
        if self.tls.is_set() && !base.starts_with("amqps://") {
            return Err(invalid(format!(
                "broker.tls is set but {which} is not amqps://: use amqps:// (port 5671 by default) for TLS"
            )));
        }
        // The parser's own message may quote the URL, password included: not shown.
        if base.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(invalid(format!(
                "{which} does not parse as an AMQP URL: check its form, amqp://user:password@host:port/vhost (percent-encode special characters in the user, password and vhost)"
            )));
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = if base.contains("heartbeat=") {
            base.to_string()
        } else {
            format!("{base}{sep}heartbeat={}", self.heartbeat_secs)
        };
        Ok(Secret::new(url))
    }

    /// Host and port of each broker URL, in order: never the credentials.
    pub fn nodes(&self) -> Vec<(String, u16)> {
        self.effective_urls()
            .unwrap_or_default()
            .iter()
            .map(node_of)
            .collect()
    }

    /// `host:port` of the broker, for messages: never the credentials.
    pub fn address(&self) -> Option<String> {
        self.host_port().map(|(h, p)| format!("{h}:{p}"))
    }

    /// The vhost the URL names (`/` when it names none).
    pub fn vhost(&self) -> Option<String> {
        let url = self.effective_url().ok()?;
        let u: lapin::uri::AMQPUri = url.expose().parse().ok()?;
        Some(u.vhost)
    }

    /// The broker's host and port (from the URL, or `url_file`).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let url = self.effective_url().ok()?;
        let u: lapin::uri::AMQPUri = url.expose().parse().ok()?;
        Some((u.authority.host, u.authority.port))
    }

    pub fn connection_name(&self) -> String {
        self.connection_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unknown-host".into());
            format!("apns-worker@{host}")
        })
    }
}

/// Host and port of a broker URL (empty if it does not parse; checked URLs do).
pub fn node_of(url: &Secret<String>) -> (String, u16) {
    url.expose()
        .parse::<lapin::uri::AMQPUri>()
        .map(|u| (u.authority.host, u.authority.port))
        .unwrap_or_default()
}

/// Queue type of the jobs queue.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

/// Names and kinds of the topology the worker declares.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    pub jobs: String,
    /// Job queues the jobs are spread over (1 to 64): `jobs` itself and `<jobs>.1` to
    /// `<jobs>.<shards - 1>`; every replica consumes all of them, `publish` spreads
    /// jobs across them. No order is kept across queues.
    pub shards: u16,
    pub jobs_type: QueueType,
    /// Quorum queues: redeliveries before the broker dead-letters a message that keeps
    /// crashing workers (the last line of defence).
    pub delivery_limit: u32,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub cleanup_exchange: String,
    /// Declared and bound to the cleanup exchange so no event is lost while nobody has
    /// bound a queue yet. Empty: not declared.
    pub cleanup_queue: String,
    /// Where environment-mismatch events go (a token APNs called bad in the app's
    /// environment, accepted by the other one): a topic exchange of its own, so that no
    /// cleanup consumer mistakes one for a dead token.
    pub environment_exchange: String,
    /// Declared and bound to the environment exchange. Empty: not declared.
    pub environment_queue: String,
    /// The urgent lane: a second jobs queue, consumed first, with send capacity of its
    /// own (`worker.urgent_reserved`). Empty: no urgent lane.
    pub urgent: String,
    /// The outcome stream: one receipt per token per settlement to
    /// `outcome_exchange`, confirmed before the ack. Off by default.
    pub outcomes: bool,
    /// A topic exchange; routing key `<status>.<app>`.
    pub outcome_exchange: String,
    /// Declared and bound (`#`) to the outcome exchange when `outcomes` is on, so no
    /// receipt is lost while nobody has bound a queue. Empty: not declared.
    pub outcome_queue: String,
    /// Delay queues are named `<retry_prefix>.<delay ms>ms`; they expire into the ready
    /// queue `<retry_prefix>.ready`.
    pub retry_prefix: String,
    /// Declare the topology at start (idempotent). Off: it must already exist.
    pub declare: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            jobs: "apns.jobs".into(),
            shards: 1,
            jobs_type: QueueType::Quorum,
            delivery_limit: 20,
            dead_letter_exchange: "apns.dead-letter".into(),
            dead_letter_queue: "apns.jobs.dead-letter".into(),
            cleanup_exchange: "apns.token-cleanup".into(),
            cleanup_queue: "apns.token-cleanup".into(),
            environment_exchange: "apns.environment-mismatch".into(),
            environment_queue: "apns.environment-mismatch".into(),
            retry_prefix: "apns.jobs.retry".into(),
            urgent: String::new(),
            outcomes: false,
            outcome_exchange: "apns.outcomes".into(),
            outcome_queue: "apns.outcomes".into(),
            declare: true,
        }
    }
}

impl QueueSettings {
    /// Every name prefixed, for tests and the demo that need a private topology.
    pub fn with_prefix(prefix: &str) -> QueueSettings {
        let d = QueueSettings::default();
        QueueSettings {
            jobs: format!("{prefix}{}", d.jobs),
            dead_letter_exchange: format!("{prefix}{}", d.dead_letter_exchange),
            dead_letter_queue: format!("{prefix}{}", d.dead_letter_queue),
            cleanup_exchange: format!("{prefix}{}", d.cleanup_exchange),
            cleanup_queue: format!("{prefix}{}", d.cleanup_queue),
            environment_exchange: format!("{prefix}{}", d.environment_exchange),
            environment_queue: format!("{prefix}{}", d.environment_queue),
            retry_prefix: format!("{prefix}{}", d.retry_prefix),
            outcome_exchange: format!("{prefix}{}", d.outcome_exchange),
            outcome_queue: format!("{prefix}{}", d.outcome_queue),
            ..d
        }
    }
}

/// Retries of transient failures, through delay queues in the broker.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Sends to APNs per job before it is dead-lettered as RetriesExhausted.
    pub max_attempts: u32,
    /// First delay; each later one doubles, up to `max_delay_ms`.
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Delay before a job of an app with broken credentials is looked at again.
    pub park_delay_ms: u64,
    /// How long a job naming an app or topic this replica does not know waits (parked,
    /// every `park_delay_ms`) for a configuration rollout to bring it, before it is
    /// dead-lettered as InvalidJob. 0: dead-letter at once.
    pub unknown_app_wait_ms: u64,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 8,
            base_delay_ms: 1_000,
            max_delay_ms: 300_000,
            park_delay_ms: 60_000,
            unknown_app_wait_ms: 600_000,
        }
    }
}

/// How the worker batches and drains.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Acks are sent with multiple=true once this many are settled in a row...
    pub ack_batch: usize,
    /// ...or after this long.
    pub ack_flush_ms: u64,
    /// On SIGTERM: time for in-flight jobs to finish before the rest is requeued
    /// (keep it below Kubernetes' terminationGracePeriodSeconds).
    pub drain_secs: u64,
    /// Jobs larger than this are dead-lettered unread.
    pub max_job_bytes: usize,
    /// Most tokens in one fan-out job (`device_tokens`); more is an invalid job.
    pub max_tokens_per_job: usize,
    /// Notifications being sent at once by this replica, over all its jobs: a fan-out
    /// job sends its tokens within it (prefetch bounds messages, this bounds sends).
    pub max_notifications_in_flight: usize,
    /// With an urgent lane (`queues.urgent`): sends of `max_notifications_in_flight`
    /// that the bulk lane (the jobs and ready queues) never takes.
    pub urgent_reserved: usize,
    /// Remember the outcomes of this many recent notifications, so a job redelivered
    /// after a broker reconnect is settled without being sent twice.
    pub dedupe_capacity: usize,
    /// Runtime threads. 1 (default): a single-threaded runtime; one replica uses one
    /// core and scales out with replicas, which measured 30-40% less CPU per
    /// notification than the multi-threaded runtime (docs/benchmarks.md): no
    /// cross-thread wake-ups, no contention on h2's per-connection lock. 0: one thread
    /// per core. N: N threads.
    pub threads: usize,
    /// Run with no app configured (a broker-only smoke test). Without it, a worker with
    /// no app refuses to start: every job would be dead-lettered as InvalidJob.
    pub allow_no_apps: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            ack_batch: 256,
            ack_flush_ms: 10,
            drain_secs: 25,
            max_job_bytes: 128 * 1024,
            max_tokens_per_job: crate::job::DEFAULT_MAX_TOKENS,
            max_notifications_in_flight: 2000,
            urgent_reserved: 200,
            dedupe_capacity: 20_000,
            threads: 1,
            allow_no_apps: false,
        }
    }
}

/// The admin HTTP endpoint (/healthz, /readyz, /metrics).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to listen on; empty: no admin endpoint.
    pub listen: String,
    /// Connections held at once; beyond it the oldest idle one is evicted.
    pub max_connections: usize,
    /// A client must send a request's headers within this (and a kept-alive
    /// connection may stay idle this long).
    pub header_read_timeout_ms: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "0.0.0.0:9090".into(),
            max_connections: 256,
            header_read_timeout_ms: 5_000,
        }
    }
}

impl AdminSettings {
    /// The endpoint's limits.
    pub fn limits(&self) -> crate::obs::admin::AdminLimits {
        crate::obs::admin::AdminLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    pub fn addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            invalid(format!(
                "admin.listen {:?} is not an address like 0.0.0.0:9090",
                self.listen
            ))
        })
    }
}

/// The per-app circuit breaker for broken credentials.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitSettings {
    /// First pause after credentials fail; doubles while probes keep failing.
    pub open_ms: u64,
    pub max_open_ms: u64,
    /// An app whose every answer has been 429 TooManyProviderTokenUpdates for this
    /// long is paused as for broken credentials (until then its refused jobs wait in
    /// the park delay queue and the app keeps sending).
    pub throttled_pause_ms: u64,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            open_ms: 10_000,
            max_open_ms: 300_000,
            throttled_pause_ms: 20 * 60 * 1000,
        }
    }
}

/// Settings shared by every app's connections.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApnsSettings {
    /// Time for one request on one stream, from sending to the whole answer.
    pub request_timeout_ms: u64,
    /// Time in which a notification's attempts may start: waiting for a stream, resends,
    /// refresh. A notification takes at most this plus `request_timeout_ms`.
    pub send_timeout_ms: u64,
    /// Resends of a request APNs certainly did not process (refused stream, GOAWAY).
    pub max_resends: u32,
    pub connect_timeout_ms: u64,
    /// PING a connection after this long without an answer on it.
    pub ping_interval_secs: u64,
    pub ping_timeout_secs: u64,
    /// Reconnect backoff (exponential with jitter) between these bounds.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Provider token lifetime before replacement (Apple: 20 to 60 minutes).
    pub token_refresh_secs: u64,
    /// Look at the apps' key, certificate, password and CA files this often, and
    /// reload an app whose files changed (SIGHUP reloads at once). 0: SIGHUP only.
    pub credentials_check_secs: u64,
    /// Reach APNs through this outbound proxy (`http://[user:password@]host:port`,
    /// `socks5://...`, or `direct`); an app's own `proxy` wins. Unset: `HTTPS_PROXY`
    /// when set (and `NO_PROXY`). A secret (it may hold a password).
    pub proxy: Option<Secret<String>>,
}

impl Default for ApnsSettings {
    fn default() -> Self {
        ApnsSettings {
            request_timeout_ms: 10_000,
            send_timeout_ms: 30_000,
            max_resends: 10,
            connect_timeout_ms: 10_000,
            ping_interval_secs: 60,
            ping_timeout_secs: 10,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
            token_refresh_secs: 50 * 60,
            credentials_check_secs: 10,
            proxy: None,
        }
    }
}

impl ApnsSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
    /// The APNs client's settings (checked by `Config::check`).
    pub fn client_settings(&self) -> apns::ClientSettings {
        apns::ClientSettings {
            request_timeout: self.request_timeout(),
            send_timeout: self.send_timeout(),
            max_resends: self.max_resends,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            ping_interval: Duration::from_secs(self.ping_interval_secs),
            ping_timeout: Duration::from_secs(self.ping_timeout_secs),
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            token_refresh: Duration::from_secs(self.token_refresh_secs),
        }
    }
}

#[cfg(test)]
mod tests;

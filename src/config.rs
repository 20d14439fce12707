//! Typed configuration: a TOML file, overlaid by `APNS_WORKER__SECTION__KEY` environment
//! variables (every setting has one), with documented defaults and checks that say what
//! to fix. Secrets are named by file path or given inline and never printed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apns::endpoint::Endpoint;
use crate::apns::jwt::TokenPolicy;
use crate::apns::tls::IdentitySource;
use crate::secret::{Secret, SecretSource};

/// The prefix of environment overrides: `APNS_WORKER__APNS__REQUEST_TIMEOUT_MS=5000`.
pub const ENV_PREFIX: &str = "APNS_WORKER__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
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
    /// `amqp://user:pass@host:port/vhost` or `amqps://...` (TLS). Holds a password, so
    /// it is a secret; `url_file` reads it from a mounted secret instead.
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
        }
    }
}

impl BrokerSettings {
    /// The broker URL with the heartbeat applied, from `url_file` when set.
    pub fn effective_url(&self) -> Result<Secret<String>, ConfigError> {
        let base = match &self.url_file {
            Some(f) => {
                let raw = SecretSource::File(f.clone())
                    .load()
                    .map_err(|e| invalid(format!("broker.url_file: {e}")))?;
                String::from_utf8(raw.expose().clone())
                    .map_err(|_| invalid("broker.url_file: not UTF-8"))?
                    .trim()
                    .to_string()
            }
            None => self.url.expose().clone(),
        };
        if !(base.starts_with("amqp://") || base.starts_with("amqps://")) {
            return Err(invalid("broker.url must start with amqp:// or amqps://"));
        }
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = if base.contains("heartbeat=") {
            base
        } else {
            format!("{base}{sep}heartbeat={}", self.heartbeat_secs)
        };
        Ok(Secret::new(url))
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
    /// Delay queues are named `<retry_prefix>.<delay ms>`.
    pub retry_prefix: String,
    /// Declare the topology at start (idempotent). Off: it must already exist.
    pub declare: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            jobs: "apns.jobs".into(),
            jobs_type: QueueType::Quorum,
            delivery_limit: 20,
            dead_letter_exchange: "apns.dead-letter".into(),
            dead_letter_queue: "apns.jobs.dead-letter".into(),
            cleanup_exchange: "apns.token-cleanup".into(),
            cleanup_queue: "apns.token-cleanup".into(),
            retry_prefix: "apns.jobs.retry".into(),
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
            retry_prefix: format!("{prefix}{}", d.retry_prefix),
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
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_attempts: 8,
            base_delay_ms: 1_000,
            max_delay_ms: 300_000,
            park_delay_ms: 60_000,
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
    /// Remember the outcomes of this many recent notifications, so a job redelivered
    /// after a broker reconnect is settled without being sent twice.
    pub dedupe_capacity: usize,
    /// Runtime threads. 1 (default): a single-threaded runtime; one replica uses one
    /// core and scales out with replicas, which measured 30-40% less CPU per
    /// notification than the multi-threaded runtime (docs/benchmarks.md): no
    /// cross-thread wake-ups, no contention on h2's per-connection lock. 0: one thread
    /// per core. N: N threads.
    pub threads: usize,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            ack_batch: 256,
            ack_flush_ms: 10,
            drain_secs: 25,
            max_job_bytes: 64 * 1024,
            dedupe_capacity: 20_000,
            threads: 1,
        }
    }
}

/// The admin HTTP endpoint (/healthz, /readyz, /metrics).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to listen on; empty: no admin endpoint.
    pub listen: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "0.0.0.0:9090".into(),
        }
    }
}

impl AdminSettings {
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
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            open_ms: 10_000,
            max_open_ms: 300_000,
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
    pub fn token_policy(&self) -> Result<TokenPolicy, ConfigError> {
        TokenPolicy::new(Duration::from_secs(self.token_refresh_secs))
            .map_err(|e| invalid(format!("apns.token_refresh_secs: {e}")))
    }
}

/// One credentials profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `production`, `sandbox`, `production:2197`, `sandbox:2197` or `https://host:port`.
    pub endpoint: Endpoint,
    /// Topics (bundle ids) this app sends to. A job's topic matches a listed topic
    /// exactly or with a push-type suffix (`com.example.app.voip`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topic used when a job has none. Defaults to the first of `topics`.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// Connections per credentials scope (certificate, or each key).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Our ceiling on concurrent streams per connection (the server's limit also applies).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: usize,
    /// An extra CA to trust besides the public roots (a mock APNs or a TLS proxy).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Token auth: the 10-character team id.
    #[serde(default)]
    pub team_id: Option<String>,
    /// Token auth: one or more keys (a team-scoped key has no `topics`).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Certificate auth.
    #[serde(default)]
    pub certificate: Option<CertificateConfig>,
}

fn default_connections() -> usize {
    2
}
fn default_max_streams() -> usize {
    1000
}

/// An APNs auth key (`.p8`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key_id: String,
    /// Path of the `.p8` file (a mounted secret).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The `.p8` PEM text itself.
    #[serde(default)]
    pub key: Option<Secret<String>>,
    /// Topic-specific key: the topics it may sign for. Empty: a team-scoped key.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// A TLS client certificate, as PEM files/values or one PKCS#12 archive.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<Secret<String>>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<Secret<String>>,
    #[serde(default)]
    pub pkcs12_file: Option<PathBuf>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// How an app authenticates, after checking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthSpec {
    Token { team_id: String, keys: Vec<KeySpec> },
    Certificate(IdentitySource),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub key_id: String,
    pub key: SecretSource,
    pub topics: Vec<String>,
}

fn one_source(
    what: &str,
    file: &Option<PathBuf>,
    value: &Option<Secret<String>>,
) -> Result<Option<SecretSource>, ConfigError> {
    match (file, value) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "{what}: give the file or the value, not both"
        ))),
        (Some(f), None) => Ok(Some(SecretSource::File(f.clone()))),
        (None, Some(v)) => Ok(Some(SecretSource::Value(v.clone()))),
        (None, None) => Ok(None),
    }
}

/// Does `topic` belong to `base` (equal, or `base` plus a push-type suffix)?
pub fn topic_matches(base: &str, topic: &str) -> bool {
    topic == base
        || (topic.len() > base.len()
            && topic.starts_with(base)
            && topic.as_bytes()[base.len()] == b'.')
}

impl AppConfig {
    /// Check the app and say how it authenticates.
    pub fn auth(&self, name: &str) -> Result<AuthSpec, ConfigError> {
        let at = |f: &str| format!("apps.{name}.{f}");
        match (&self.certificate, self.keys.is_empty()) {
            (Some(_), false) => Err(invalid(format!(
                "apps.{name}: has both keys (token auth) and a certificate; an app uses one of them"
            ))),
            (None, true) => Err(invalid(format!(
                "apps.{name}: no credentials; add [[apps.{name}.keys]] with team_id (token auth) or [apps.{name}.certificate]"
            ))),
            (None, false) => {
                let team_id = self.team_id.clone().ok_or_else(|| {
                    invalid(format!(
                        "{}: token auth needs the 10-character team id",
                        at("team_id")
                    ))
                })?;
                let mut keys = Vec::new();
                for (i, k) in self.keys.iter().enumerate() {
                    let src = one_source(&at(&format!("keys[{i}]")), &k.key_file, &k.key)?
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}: give key_file (path of the .p8) or key (its PEM text)",
                                at(&format!("keys[{i}]"))
                            ))
                        })?;
                    keys.push(KeySpec {
                        key_id: k.key_id.clone(),
                        key: src,
                        topics: k.topics.clone(),
                    });
                }
                Ok(AuthSpec::Token { team_id, keys })
            }
            (Some(c), true) => {
                let p12 = c.pkcs12_file.clone();
                let cert = one_source(&at("certificate.cert"), &c.cert_file, &c.cert)?;
                let key = one_source(&at("certificate.key"), &c.key_file, &c.key)?;
                match (p12, cert, key) {
                    (Some(file), None, None) => {
                        let password =
                            one_source(&at("certificate.password"), &c.password_file, &c.password)?
                                .unwrap_or(SecretSource::Value(Secret::new(String::new())));
                        Ok(AuthSpec::Certificate(IdentitySource::Pkcs12 {
                            file: SecretSource::File(file),
                            password,
                        }))
                    }
                    (None, Some(certificate), Some(key)) => {
                        Ok(AuthSpec::Certificate(IdentitySource::Pem {
                            certificate,
                            key,
                        }))
                    }
                    _ => Err(invalid(format!(
                        "{}: give pkcs12_file (with password), or cert_file/cert and key_file/key",
                        at("certificate")
                    ))),
                }
            }
        }
    }

    /// The topic for a job that names none.
    pub fn default_topic(&self) -> Option<&str> {
        self.default_topic
            .as_deref()
            .or_else(|| self.topics.first().map(String::as_str))
    }

    /// Does this app send to `topic`?
    pub fn serves(&self, topic: &str) -> bool {
        self.topics.iter().any(|b| topic_matches(b, topic))
    }
}

impl Config {
    /// Parse TOML text (no environment overlay).
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let value: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: origin.into(),
            message: e.to_string(),
        })?;
        Config::from_table(value, origin)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Toml {
                path: origin.into(),
                message: e.to_string(),
            })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Read the file (if any), overlay the environment, check.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let t: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Toml {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                (t, p.display().to_string())
            }
            None => (toml::Table::new(), "<defaults>".to_string()),
        };
        overlay_env(&mut table, env)?;
        Config::from_table(table, &origin)
    }

    /// Every check that does not need the network or the files' contents.
    pub fn check(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if b.heartbeat_secs == 0 {
            return Err(invalid(
                "broker.heartbeat_secs must be above 0: a dead broker connection must be noticed",
            ));
        }
        if b.prefetch == 0 {
            return Err(invalid("broker.prefetch must be above 0"));
        }
        if b.reconnect_min_ms == 0 || b.reconnect_max_ms < b.reconnect_min_ms {
            return Err(invalid(
                "broker.reconnect_min_ms must be above 0 and at most broker.reconnect_max_ms",
            ));
        }
        if b.url_file.is_none() {
            b.effective_url()?;
        }
        let q = &self.queues;
        for (name, v) in [
            ("queues.jobs", &q.jobs),
            ("queues.dead_letter_exchange", &q.dead_letter_exchange),
            ("queues.dead_letter_queue", &q.dead_letter_queue),
            ("queues.cleanup_exchange", &q.cleanup_exchange),
            ("queues.retry_prefix", &q.retry_prefix),
        ] {
            if v.is_empty() || v.len() > 200 {
                return Err(invalid(format!(
                    "{name} must be a name of 1 to 200 characters"
                )));
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(invalid("retry.max_attempts must be at least 1"));
        }
        if r.base_delay_ms == 0 || r.max_delay_ms < r.base_delay_ms || r.park_delay_ms == 0 {
            return Err(invalid(
                "retry.base_delay_ms and retry.park_delay_ms must be above 0, and retry.max_delay_ms at least retry.base_delay_ms",
            ));
        }
        let w = &self.worker;
        if w.ack_batch == 0 || w.ack_flush_ms == 0 {
            return Err(invalid(
                "worker.ack_batch and worker.ack_flush_ms must be above 0",
            ));
        }
        if w.max_job_bytes < 1024 {
            return Err(invalid("worker.max_job_bytes must be at least 1024"));
        }
        self.admin.addr()?;
        if self.circuit.open_ms == 0 || self.circuit.max_open_ms < self.circuit.open_ms {
            return Err(invalid(
                "circuit.open_ms must be above 0 and at most circuit.max_open_ms",
            ));
        }
        let a = &self.apns;
        if a.request_timeout_ms == 0 || a.send_timeout_ms == 0 {
            return Err(invalid(
                "apns.request_timeout_ms and apns.send_timeout_ms must be above 0",
            ));
        }
        if a.reconnect_min_ms == 0 || a.reconnect_max_ms < a.reconnect_min_ms {
            return Err(invalid(
                "apns.reconnect_min_ms must be above 0 and at most apns.reconnect_max_ms (never a tight reconnect loop)",
            ));
        }
        if a.ping_interval_secs == 0 || a.ping_timeout_secs == 0 {
            return Err(invalid(
                "apns.ping_interval_secs and apns.ping_timeout_secs must be above 0",
            ));
        }
        a.token_policy()?;
        for (name, app) in &self.apps {
            if app.connections == 0 || app.connections > 64 {
                return Err(invalid(format!("apps.{name}.connections must be 1 to 64")));
            }
            if app.max_streams_per_connection == 0 {
                return Err(invalid(format!(
                    "apps.{name}.max_streams_per_connection must be above 0"
                )));
            }
            if let Some(t) = &app.default_topic {
                if !app.topics.is_empty() && !app.serves(t) {
                    return Err(invalid(format!(
                        "apps.{name}.default_topic {t:?} is not one of its topics"
                    )));
                }
            }
            if let AuthSpec::Token { keys, .. } = app.auth(name)? {
                let scoped = keys.iter().filter(|k| k.topics.is_empty()).count();
                if scoped > 1 {
                    return Err(invalid(format!(
                        "apps.{name}: {scoped} team-scoped keys (keys without topics); keep one, or give each its topics"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Apply `APNS_WORKER__A__B=value` as `a.b = value`. Values are read as TOML when they
/// parse as such (numbers, booleans, arrays), else as strings.
pub fn overlay_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env {
                var,
                message: "empty path segment (use APNS_WORKER__SECTION__KEY)".into(),
            });
        }
        let value = parse_env_value(&raw);
        let mut node = &mut *table;
        for seg in &path[..path.len() - 1] {
            let entry = node
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("{seg} is a value, not a section"),
                    });
                }
            };
        }
        node.insert(path[path.len() - 1].clone(), value);
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
[apns]
request_timeout_ms = 5000
send_timeout_ms = 20000

[apps.shop]
endpoint = "sandbox"
topics = ["com.example.shop"]
team_id = "TEAM123456"
connections = 3
[[apps.shop.keys]]
key_id = "KEY1234567"
key_file = "/secrets/AuthKey_KEY1234567.p8"

[apps.bank]
endpoint = "https://127.0.0.1:8443"
topics = ["com.example.bank"]
ca_file = "/tmp/mock-ca.pem"
[apps.bank.certificate]
pkcs12_file = "/secrets/bank.p12"
password = "hunter2"
"#;

    #[test]
    fn parses_a_full_file_with_defaults_filled_in() {
        let c = Config::from_toml(FULL, "test").unwrap();
        assert_eq!(c.apns.request_timeout_ms, 5000);
        assert_eq!(c.queues.jobs, "apns.jobs");
        assert_eq!(c.queues.jobs_type, QueueType::Quorum);
        assert_eq!(c.broker.prefetch, 2000);
        assert_eq!(c.apns.ping_interval_secs, 60, "default");
        let shop = &c.apps["shop"];
        assert_eq!(shop.endpoint, Endpoint::sandbox());
        assert_eq!(shop.connections, 3);
        assert_eq!(shop.max_streams_per_connection, 1000);
        assert_eq!(shop.default_topic(), Some("com.example.shop"));
        assert!(
            matches!(shop.auth("shop").unwrap(), AuthSpec::Token { ref keys, .. } if keys.len() == 1)
        );
        assert!(matches!(
            c.apps["bank"].auth("bank").unwrap(),
            AuthSpec::Certificate(IdentitySource::Pkcs12 { .. })
        ));
    }

    #[test]
    fn defaults_are_documented_values() {
        let d = ApnsSettings::default();
        assert_eq!(d.token_refresh_secs, 3000);
        assert_eq!((d.ping_interval_secs, d.ping_timeout_secs), (60, 10));
        assert!(Config::default().check().is_ok());
    }

    #[test]
    fn environment_overrides_every_setting() {
        let env = vec![
            (
                "APNS_WORKER__APNS__REQUEST_TIMEOUT_MS".to_string(),
                "2500".to_string(),
            ),
            (
                "APNS_WORKER__APPS__SHOP__CONNECTIONS".to_string(),
                "5".to_string(),
            ),
            (
                "APNS_WORKER__APPS__SHOP__TOPICS".to_string(),
                r#"["com.x.y"]"#.to_string(),
            ),
            (
                "APNS_WORKER__APPS__SHOP__TEAM_ID".to_string(),
                "TEAM999999".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, FULL).unwrap();
        let c = Config::load(Some(&path), env).unwrap();
        assert_eq!(c.apns.request_timeout_ms, 2500);
        assert_eq!(c.apps["shop"].connections, 5);
        assert_eq!(c.apps["shop"].topics, vec!["com.x.y".to_string()]);
        assert_eq!(c.apps["shop"].team_id.as_deref(), Some("TEAM999999"));
    }

    #[test]
    fn mistakes_are_reported_with_what_to_fix() {
        let rows: &[(&str, &str)] = &[
            ("[apns]\nrequest_timeoutms = 1", "unknown field"),
            (
                "[apns]\ntoken_refresh_secs = 4000",
                "apns.token_refresh_secs",
            ),
            ("[apns]\nsend_timeout_ms = 0", "send_timeout_ms"),
            ("[apns]\nreconnect_min_ms = 0", "tight reconnect"),
            ("[broker]\nurl = \"http://x\"", "amqp://"),
            ("[broker]\nheartbeat_secs = 0", "heartbeat"),
            ("[retry]\nmax_attempts = 0", "max_attempts"),
            ("[queues]\njobs_type = \"stream\"", "unknown variant"),
            ("[apps.a]\nendpoint = \"prod\"", "production"),
            ("[apps.a]\nendpoint = \"sandbox\"", "no credentials"),
            (
                "[apps.a]\nendpoint = \"sandbox\"\n[[apps.a.keys]]\nkey_id = \"K\"\nkey_file = \"/k\"",
                "team id",
            ),
            (
                "[apps.a]\nendpoint = \"sandbox\"\nteam_id = \"T\"\n[[apps.a.keys]]\nkey_id = \"K\"",
                "key_file",
            ),
            (
                "[apps.a]\nendpoint = \"sandbox\"\n[apps.a.certificate]\ncert_file = \"/c\"",
                "pkcs12_file",
            ),
            (
                "[apps.a]\nendpoint = \"sandbox\"\nconnections = 0\n[apps.a.certificate]\npkcs12_file = \"/c\"",
                "connections",
            ),
        ];
        for (text, want) in rows {
            let e = Config::from_toml(text, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
        }
    }

    #[test]
    fn broker_url_gets_a_heartbeat_and_stays_secret() {
        let c = Config::from_toml(
            "[broker]\nurl = \"amqp://u:pw@h:5672/%2f\"\nheartbeat_secs = 15",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.broker.effective_url().unwrap().expose(),
            "amqp://u:pw@h:5672/%2f?heartbeat=15"
        );
        assert!(!format!("{:?}", c.broker).contains("pw"));
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::from_toml(FULL, "t").unwrap();
        let shown = format!("{c:?} {}", toml::to_string(&c).unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn topics_match_with_push_type_suffixes() {
        assert!(topic_matches("com.a", "com.a"));
        assert!(topic_matches("com.a", "com.a.voip"));
        assert!(!topic_matches("com.a", "com.ab"));
        assert!(!topic_matches("com.a", "com"));
    }
}

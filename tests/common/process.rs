//! Running `apns-worker run` as a child process: a config file, signals, the summary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use apns_worker::config::{QueueSettings, RetrySettings};
use apns_worker::worker::Summary;
use tokio::process::{Child, Command};

/// What a child worker's config file holds: one token-auth app against the mock.
pub struct ChildConfig<'a> {
    pub dir: &'a Path,
    pub name: &'a str,
    pub broker_url: &'a str,
    pub queues: &'a QueueSettings,
    pub retry: &'a RetrySettings,
    pub endpoint: &'a str,
    pub ca: &'a Path,
    pub key_pem: &'a str,
    /// More TOML appended at the end.
    pub extra: &'a str,
}

/// Write the config file; returns its path.
pub fn write_config(c: &ChildConfig<'_>) -> PathBuf {
    let ChildConfig {
        dir,
        name,
        broker_url,
        queues: q,
        retry: r,
        endpoint,
        ca,
        key_pem,
        extra,
    } = *c;
    let key = dir.join(format!("{name}.p8"));
    std::fs::write(&key, key_pem).unwrap();
    let text = format!(
        r#"
[broker]
url = "{broker_url}"
connection_name = "{name}"
prefetch = 1000
reconnect_min_ms = 100
reconnect_max_ms = 1000

[queues]
jobs = "{jobs}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dlq}"
cleanup_exchange = "{cx}"
cleanup_queue = "{cq}"
retry_prefix = "{rp}"

[retry]
max_attempts = {ma}
base_delay_ms = {bd}
max_delay_ms = {md}
park_delay_ms = {pd}
unknown_app_wait_ms = {uw}

[worker]
drain_secs = 5

[admin]
listen = "127.0.0.1:0"

[apns]
request_timeout_ms = 2000
send_timeout_ms = 5000
reconnect_min_ms = 50
reconnect_max_ms = 500

[apps.shop]
endpoint = "{endpoint}"
topics = ["com.example.app"]
ca_file = "{ca}"
team_id = "TEAM123456"
[[apps.shop.keys]]
key_id = "KEY1234567"
key_file = "{key}"
{extra}
"#,
        jobs = q.jobs,
        dlx = q.dead_letter_exchange,
        dlq = q.dead_letter_queue,
        cx = q.cleanup_exchange,
        cq = q.cleanup_queue,
        rp = q.retry_prefix,
        ma = r.max_attempts,
        bd = r.base_delay_ms,
        md = r.max_delay_ms,
        pd = r.park_delay_ms,
        uw = r.unknown_app_wait_ms,
        ca = ca.display(),
        key = key.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub struct WorkerProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn spawn(config: &Path, log: PathBuf, rust_log: &str) -> WorkerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_apns-worker"))
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .env("APNS_WORKER_LOG_FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn apns-worker");
        WorkerProcess { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait for exit; the summary it printed (None if it printed none, e.g. SIGKILL).
    pub async fn wait(
        self,
        within: Duration,
    ) -> (std::process::ExitStatus, Option<Summary>, Duration) {
        let started = std::time::Instant::now();
        let out = tokio::time::timeout(within, self.child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("worker did not exit within {within:?}"))
            .unwrap();
        let summary = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| summary_from(&v));
        (out.status, summary, started.elapsed())
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

fn summary_from(v: &serde_json::Value) -> Summary {
    serde_json::from_value(v.clone()).expect("the worker's summary line")
}

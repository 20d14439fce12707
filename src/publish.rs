//! `apns-worker publish`: put jobs on the queue, from a JSONL file, stdin, or N
//! synthetic ones, with publisher confirms and a progress bar. Every job is checked by
//! the worker's own decoder before anything is published, so a file with one bad line
//! publishes nothing.

use std::io::BufRead;
use std::path::PathBuf;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::{Confirmation, Connection};
use serde_json::json;

use crate::amqp;
use crate::config::Config;
use crate::job::{self, AppDirectory, Envelope};

#[derive(Debug, thiserror::Error)]
pub enum PublishCmdError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{count} invalid job(s), nothing published:\n{details}")]
    Invalid { count: usize, details: String },
    #[error(transparent)]
    Amqp(#[from] amqp::AmqpError),
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error(
        "the broker did not take {0} job(s): refused (a queue at its length limit refuses new messages) or not routed (no such queue); the others were published"
    )]
    Refused(u64),
    #[error(
        "queue {0:?} does not exist; nothing was published (the worker declares its queues.jobs when it starts, and so does publish when queues.declare = true: check the queue's name, or start the worker once)"
    )]
    NoQueue(String),
}

/// Where the jobs come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// One job per line; `-` is stdin.
    Jsonl(PathBuf),
    Synthetic(Synthetic),
}

/// Generated jobs for first steps, demos and benchmarks.
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub count: u64,
    pub topic: String,
    pub app: Option<String>,
    /// Approximate size of each payload in bytes.
    pub payload_bytes: usize,
    /// Device tokens start with this (the mock's rules answer by prefix).
    pub token_prefix: String,
}

/// A device token for generated jobs: `prefix`, zeros, then `n` in 16 hex digits (64
/// hex digits in all; a prefix longer than 48 digits makes a longer token). Never the
/// all-zero token, which APNs refuses.
pub fn synthetic_token(prefix: &str, n: u64) -> String {
    let tail = format!("{n:016x}");
    let mut t = String::with_capacity(64);
    t.push_str(prefix);
    while t.len() + tail.len() < 64 {
        t.push('0');
    }
    let t = t + &tail;
    // APNs refuses the all-zero token (BadDeviceToken: `check-config --probe` relies on
    // it), so job 0 without a prefix gets the all-f token instead.
    if t.bytes().all(|b| b == b'0') {
        return "f".repeat(64);
    }
    t
}

/// An alert payload of about `bytes` bytes: title, "notification <n>", and a `pad`
/// key that makes up the size.
pub fn synthetic_payload(title: &str, n: u64, bytes: usize) -> serde_json::Value {
    let alert = json!({"title": title, "body": format!("notification {n}")});
    let base = json!({"aps": {"alert": alert}, "pad": ""})
        .to_string()
        .len();
    json!({"aps": {"alert": alert}, "pad": "x".repeat(bytes.saturating_sub(base))})
}

/// Synthetic job `n`: a unique id and token, an alert of about `payload_bytes` bytes.
pub fn synthetic_job(s: &Synthetic, n: u64) -> String {
    let mut job = json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "device_token": synthetic_token(&s.token_prefix, n),
        "topic": s.topic,
        "payload": synthetic_payload("Hello", n, s.payload_bytes),
    });
    if let Some(app) = &s.app {
        job["app"] = json!(app);
    }
    job.to_string()
}

/// Read and check every job of a JSONL source; errors name the line.
pub fn load_jsonl(
    path: &PathBuf,
    apps: &AppDirectory,
    limits: job::Limits,
) -> Result<Vec<String>, PublishCmdError> {
    let name = path.display().to_string();
    let reader: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| PublishCmdError::Read(name.clone(), e))?,
        ))
    };
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| PublishCmdError::Read(name.clone(), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let body = bytes::Bytes::from(line.clone());
        match job::decode_limited(&body, &Envelope::default(), apps, limits) {
            Err(e) => errors.push(format!("  line {}: {e}", i + 1)),
            // The worker sends a fan-out job's good tokens and dead-letters the bad
            // ones; a producer's tool refuses the job, as the schema does.
            Ok(j) => match j.fanout.as_ref().and_then(|f| f.refused.first()) {
                Some((_, e)) => errors.push(format!("  line {}: device_tokens: {e}", i + 1)),
                None => jobs.push(line),
            },
        }
    }
    if !errors.is_empty() {
        return Err(PublishCmdError::Invalid {
            count: errors.len(),
            details: errors.join("\n"),
        });
    }
    Ok(jobs)
}

/// The first 8 characters of a job's device token (a broadcast's channel id), for log
/// lines ("" if it has neither).
fn token_prefix_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            ["device_token", "channel_id"]
                .iter()
                .find_map(|k| v.get(k).and_then(|t| t.as_str()))
                .map(|t| t.chars().take(8).collect())
        })
        .unwrap_or_default()
}

/// The id to use as AMQP message id: the job's `id`, else a new UUID.
fn message_id(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Publish jobs to `queue` (through the default exchange) with confirms, keeping up to
/// `window` confirms outstanding. Returns the number published.
pub async fn publish_jobs(
    conn: &Connection,
    queue: &str,
    jobs: impl Iterator<Item = String>,
    total: Option<u64>,
    progress: bool,
) -> Result<u64, PublishCmdError> {
    publish_spread(conn, &[queue.to_string()], jobs, total, progress).await
}

/// [`publish_jobs`] over several queues (the job queues of `queues.shards`): job `n`
/// goes to `queues[n % queues.len()]`.
pub async fn publish_spread(
    conn: &Connection,
    queues: &[String],
    jobs: impl Iterator<Item = String>,
    total: Option<u64>,
    progress: bool,
) -> Result<u64, PublishCmdError> {
    if queues.is_empty() {
        return Err(PublishCmdError::Publish("no queue to publish to".into()));
    }
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| PublishCmdError::Publish(e.to_string()))?;
    ch.confirm_select(Default::default())
        .await
        .map_err(|e| PublishCmdError::Publish(e.to_string()))?;
    let bar = match (progress, total) {
        (true, Some(n)) => indicatif::ProgressBar::new(n),
        (true, None) => indicatif::ProgressBar::new_spinner(),
        (false, _) => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let window = 2048;
    let mut pending = FuturesUnordered::new();
    let (mut published, mut refused) = (0u64, 0u64);
    // One line per job the broker returned or refused, naming it by its id and the
    // first digits of its token; never its body.
    type Pending = (Result<Confirmation, lapin::Error>, String, String, usize);
    let mut settle = |(c, id, token, q): Pending| -> Result<(), PublishCmdError> {
        let queue = queues[q].as_str();
        match c.map_err(|e| PublishCmdError::Publish(e.to_string()))? {
            Confirmation::Ack(None) => published += 1,
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => {
                refused += 1;
                tracing::warn!(job_id = %id, token = %token, queue, reply = %ret.reply_text, "the broker returned a job it could not route");
            }
            _ => {
                refused += 1;
                tracing::warn!(job_id = %id, token = %token, queue, "the broker refused a job (nack)");
            }
        }
        bar.inc(1);
        Ok(())
    };
    for (n, body) in jobs.enumerate() {
        let q = n % queues.len();
        let id = message_id(&body);
        let token = token_prefix_of(&body);
        let props = amqp::job_props(&id);
        let confirm = ch
            .basic_publish(
                "".into(),
                queues[q].as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body.as_bytes(),
                props,
            )
            .await
            .map_err(|e| PublishCmdError::Publish(e.to_string()))?;
        pending.push(async move { (confirm.await, id, token, q) });
        while pending.len() >= window {
            if let Some(c) = pending.next().await {
                settle(c)?;
            }
        }
    }
    while let Some(c) = pending.next().await {
        settle(c)?;
    }
    bar.finish_and_clear();
    let _ = ch.close(200, "done".into()).await;
    if refused > 0 {
        return Err(PublishCmdError::Refused(refused));
    }
    Ok(published)
}

/// The whole command: check every job, make sure the queues exist (declaring the
/// topology as `run` does when `queues.declare` is on), publish with confirms, spread
/// over `queues` in turn.
pub async fn run(
    cfg: &Config,
    queues: &[String],
    source: Source,
    apps: &AppDirectory,
    progress: bool,
) -> Result<u64, PublishCmdError> {
    let limits = job::Limits {
        max_bytes: cfg.worker.max_job_bytes,
        max_tokens: cfg.worker.max_tokens_per_job,
    };
    let (jobs, total): (Box<dyn Iterator<Item = String> + Send>, u64) = match source {
        Source::Jsonl(path) => {
            let v = load_jsonl(&path, apps, limits)?;
            let n = v.len() as u64;
            (Box::new(v.into_iter()), n)
        }
        Source::Synthetic(s) => {
            let first = synthetic_job(&s, 0);
            job::decode_limited(
                &bytes::Bytes::from(first),
                &Envelope::default(),
                apps,
                limits,
            )
            .map_err(|e| PublishCmdError::Invalid {
                count: 1,
                details: format!("  synthetic job: {e}"),
            })?;
            let n = s.count;
            (Box::new((0..n).map(move |i| synthetic_job(&s, i))), n)
        }
    };
    let conn = amqp::connect(&cfg.broker).await?;
    let n = match ready_queues(&conn, cfg, queues).await {
        Ok(()) => publish_spread(&conn, queues, jobs, Some(total), progress).await,
        Err(e) => Err(e),
    };
    amqp::close(&conn).await;
    n
}

/// The queues jobs go to exist: declared with the topology when `queues.declare` is
/// on (as `run` does), else looked up, so that nothing is sent into the void.
async fn ready_queues(
    conn: &Connection,
    cfg: &Config,
    queues: &[String],
) -> Result<(), PublishCmdError> {
    if cfg.queues.declare {
        let ch = conn
            .create_channel()
            .await
            .map_err(amqp::AmqpError::Channel)?;
        amqp::declare_topology(&ch, &cfg.queues, &cfg.retry).await?;
        let _ = ch.close(200, "declared".into()).await;
    }
    for queue in queues {
        exists(conn, queue).await?;
    }
    Ok(())
}

async fn exists(conn: &Connection, queue: &str) -> Result<(), PublishCmdError> {
    let ch = conn
        .create_channel()
        .await
        .map_err(amqp::AmqpError::Channel)?;
    let found = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    let _ = ch.close(200, "checked".into()).await;
    found
        .map(|_| ())
        .map_err(|_| PublishCmdError::NoQueue(queue.to_string()))
}

#[cfg(test)]
mod tests {
    use super::synthetic_token;

    #[test]
    fn synthetic_tokens_are_64_hex_digits_and_never_all_zeros() {
        for (prefix, n, want) in [
            ("", 0, "f".repeat(64)),
            ("00", 0, "f".repeat(64)),
            ("", 1, format!("{}1", "0".repeat(63))),
            ("dead", 10, format!("dead{}a", "0".repeat(59))),
        ] {
            assert_eq!(synthetic_token(prefix, n), want, "{prefix:?} {n}");
        }
    }
}

//! The one observer: what happened to a delivery becomes, in one place, the counters
//! of the summary, the Prometheus/OTLP metrics, one log line (for every job that was
//! not delivered) and the fields of the job's span.

use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use apns::classify::{Outcome, RetryCause};
use apns::{Reason, reason_label};
use uuid::Uuid;

use super::stats::{Stats, Summary};
use crate::amqp::PublishError;
use crate::obs::{Metrics, SendStatus};
use crate::settle::{AckKind, Settlement};

/// A send to APNs and its answer.
#[derive(Clone, Debug)]
pub struct Sent {
    pub status: SendStatus,
    /// Waiting for a stream, resends and the request.
    pub secs: f64,
    pub outcome: Outcome,
    /// APNs' reason, when it answered with one.
    pub reason: Option<Reason>,
    /// The delivery was a redelivery with no remembered outcome: possibly sent twice.
    pub redelivered: bool,
}

/// Everything known of one delivery once its settlement was carried out (or not).
pub struct Report<'a> {
    /// The app, when known (also for invalid jobs that name a configured app).
    pub app: Option<&'a str>,
    pub apns_id: Option<Uuid>,
    pub device_token: Option<&'a str>,
    /// A broadcast's channel id (logged as a prefix, like tokens).
    pub channel_id: Option<&'a str>,
    /// Sends before this delivery (`x-attempts`).
    pub attempts_before: u32,
    pub message_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    /// When the job was published (ms since the epoch), if the producer said.
    pub published_at_ms: Option<u64>,
    /// Settled from the memory of recent outcomes, without sending.
    pub remembered: bool,
    pub sent: Option<&'a Sent>,
    pub settlement: &'a Settlement,
    pub carried_out: &'a Result<(), PublishError>,
}

/// Counters and metrics, fed only from here.
#[derive(Debug, Default)]
pub struct Observer {
    stats: Stats,
    metrics: Metrics,
}

/// A short prefix of a device token, enough to correlate logs without exposing it.
pub fn token_prefix(t: &str) -> &str {
    // By characters: a refused token of a fan-out job may hold any (a byte cut
    // through a character panicked).
    let end = t.char_indices().nth(8).map_or(t.len(), |(i, _)| i);
    &t[..end]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The worker's own reasons (the others are APNs').
const OWN_REASONS: &[&str] = &[
    "",
    "InvalidJob",
    "RetriesExhausted",
    "PublishFailed",
    "SessionLost",
    "NotSent",
    "Unknown",
    "UnknownApp",
    "UnknownTopic",
    "Draining",
];

/// A reason as a metric label (and a summary key): one of APNs' documented reasons, one
/// of the worker's, or `HTTP<status>`; anything else a server sends becomes `Other`, so
/// the number of series stays bounded. Headers and logs keep the reason as received.
pub fn bounded_reason(reason: &str) -> &str {
    let http_status = reason
        .strip_prefix("HTTP")
        .is_some_and(|d| d.len() == 3 && d.bytes().all(|b| b.is_ascii_digit()));
    if http_status
        || OWN_REASONS.contains(&reason)
        || !matches!(Reason::parse(reason), Reason::Other(_))
    {
        reason
    } else {
        "Other"
    }
}

/// The `outcome` label of a settlement and its `reason` label.
fn labels(s: &Settlement) -> (&'static str, &str) {
    match s {
        Settlement::Ack(AckKind::Delivered) => ("delivered", ""),
        Settlement::Ack(AckKind::Expired) => ("expired", ""),
        Settlement::Ack(AckKind::AlreadySettled) => ("already_settled", ""),
        Settlement::Cleanup(ev) => ("token_cleanup", ev.reason.as_str()),
        Settlement::ChannelCleanup(ev) => ("channel_cleanup", ev.reason.as_str()),
        Settlement::DeadLetter(dl) => ("dead_letter", dl.reason.as_str()),
        Settlement::Retry { reason, .. } => ("retry", reason.as_str()),
        Settlement::Park { reason, .. } => ("park", reason.as_str()),
        Settlement::AwaitConfig { reason, .. } => ("awaiting_config", reason),
        Settlement::Requeue { reason } => ("requeued", reason),
        Settlement::EnvironmentMismatch(_) => ("environment_mismatch", "BadDeviceToken"),
    }
}

impl Observer {
    pub fn summary(&self) -> Summary {
        self.stats.summary()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn received(&self) {
        Stats::inc(&self.stats.received);
    }

    pub fn session_started(&self) {
        Stats::inc(&self.stats.broker_sessions);
    }

    /// One delivery, reported once.
    pub fn delivery(&self, r: &Report<'_>) {
        let app = r.app.unwrap_or("");
        let span = tracing::Span::current();
        let traced = !span.is_disabled();
        let st = &self.stats;
        if let Some(sent) = r.sent {
            self.metrics.observe_send(app, sent.status, sent.secs);
            if matches!(sent.outcome, Outcome::RetryLater(RetryCause::Unknown(_))) {
                Stats::inc(&st.unknown_outcomes);
            }
            if sent.redelivered {
                Stats::inc(&st.redelivered_resent);
            }
            if traced {
                if let SendStatus::Http(code) = sent.status {
                    span.record("apns.status", code);
                }
                if let Some(reason) = &sent.reason {
                    span.record("apns.reason", reason.as_str());
                }
            }
        }
        let attempt = r.attempts_before + u32::from(r.sent.is_some());
        if traced {
            span.record("apns.app", app);
            if let Some(id) = r.apns_id {
                span.record("apns.id", id.to_string().as_str());
            }
            span.record("apns.attempt", attempt);
        }
        let (outcome, reason) = match r.carried_out {
            Ok(()) => {
                let (outcome, reason) = labels(r.settlement);
                let reason = bounded_reason(reason);
                let counter: &AtomicU64 = match r.settlement {
                    Settlement::Ack(AckKind::Delivered) => &st.delivered,
                    Settlement::Ack(AckKind::Expired) => &st.expired,
                    Settlement::Ack(AckKind::AlreadySettled) => &st.already_settled,
                    Settlement::Cleanup(_) => &st.token_cleanups,
                    Settlement::ChannelCleanup(_) => &st.channel_cleanups,
                    Settlement::DeadLetter(_) => {
                        st.dead_letter(reason);
                        self.metrics.dead_letter(reason);
                        &st.dead_lettered_any
                    }
                    Settlement::Retry { .. } => &st.retried,
                    Settlement::Park { .. } => &st.parked,
                    Settlement::AwaitConfig { .. } => &st.awaiting_config,
                    Settlement::EnvironmentMismatch(_) => &st.environment_mismatches,
                    Settlement::Requeue { .. } => {
                        Stats::inc(&st.withdrawn);
                        &st.requeued
                    }
                };
                Stats::inc(counter);
                if let Some(ms) = r.published_at_ms {
                    let secs = now_ms().saturating_sub(ms) as f64 / 1000.0;
                    self.metrics.observe_end_to_end(secs);
                }
                (outcome, reason)
            }
            Err(e) => {
                Stats::inc(&st.publish_failures);
                Stats::inc(&st.requeued);
                if matches!(
                    e,
                    PublishError::Channel(_) | PublishError::ConfirmTimeout(_)
                ) {
                    // The broker may have taken it before the channel died, or may
                    // still confirm it after the bound.
                    Stats::inc(&st.uncertain_publishes);
                }
                ("requeued", "PublishFailed")
            }
        };
        self.metrics.job(app, outcome, reason);
        if traced {
            span.record("apns.outcome", outcome);
            // Processing failed when the job is not settled as done (delivered, its
            // token reported, expired): the reason is the class of error.
            if matches!(
                outcome,
                "dead_letter" | "retry" | "park" | "awaiting_config" | "requeued"
            ) {
                span.record("error.type", reason);
                span.record("otel.status_code", "error");
            }
        }
        if outcome != "delivered" {
            self.log(r, app, attempt, outcome, reason);
        }
    }

    /// The one log line of a job that was not delivered.
    fn log(&self, r: &Report<'_>, app: &str, attempt: u32, outcome: &str, reason: &str) {
        let status = r
            .sent
            .and_then(|s| match s.status {
                SendStatus::Http(code) => Some(code),
                _ => None,
            })
            .unwrap_or(0);
        let apns_id = r.apns_id.map(|u| u.to_string()).unwrap_or_default();
        let token = r.device_token.map(token_prefix).unwrap_or("");
        let channel = r.channel_id.map(token_prefix).unwrap_or("");
        let trace_id = r.trace_id.unwrap_or("");
        let message_id = r.message_id.unwrap_or("");
        let error = match (r.carried_out, r.settlement) {
            (Err(e), _) => e.to_string(),
            (Ok(()), Settlement::DeadLetter(dl)) => dl.error.clone(),
            _ => String::new(),
        };
        macro_rules! event {
            ($level:expr, $msg:literal) => {
                tracing::event!(
                    $level,
                    app,
                    token,
                    channel,
                    apns_id,
                    status,
                    outcome,
                    reason,
                    attempt,
                    remembered = r.remembered,
                    trace_id,
                    message_id,
                    error,
                    $msg
                )
            };
        }
        if r.carried_out.is_err() {
            event!(
                tracing::Level::ERROR,
                "settlement publish failed; the job was requeued"
            );
        } else if reason == "InvalidJob" {
            event!(tracing::Level::WARN, "invalid job dead-lettered");
        } else {
            event!(tracing::Level::INFO, "notification not delivered");
        }
    }

    /// The environment guard looked at a token APNs called bad: `mismatch` when the
    /// other environment accepted it.
    pub fn environment_check(&self, app: &str, mismatch: bool) {
        self.metrics.environment_check(app, mismatch);
    }

    /// An app's credentials were found broken and its circuit opened.
    pub fn app_paused(&self, app: &str, status: u16, reason: Option<&Reason>) {
        tracing::error!(
            app,
            status,
            reason = %reason_label(status, reason),
            "APNs refuses this app's credentials; pausing the app (its jobs wait, other apps keep flowing)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::bounded_reason;

    #[test]
    fn a_token_prefix_is_eight_characters_whatever_they_are() {
        use super::token_prefix;
        assert_eq!(token_prefix("00fc13adff785122"), "00fc13ad");
        assert_eq!(token_prefix("abcdefgé0000"), "abcdefgé");
        assert_eq!(token_prefix("ééééééééé"), "éééééééé");
        assert_eq!(token_prefix("ab"), "ab");
    }

    #[test]
    fn metric_reasons_are_a_bounded_set() {
        for (given, label) in [
            ("BadDeviceToken", "BadDeviceToken"),
            ("TooManyProviderTokenUpdates", "TooManyProviderTokenUpdates"),
            ("InvalidJob", "InvalidJob"),
            ("UnknownApp", "UnknownApp"),
            ("HTTP502", "HTTP502"),
            ("", ""),
            ("SomethingAppleAddsNextYear", "Other"),
            ("HTTP5020", "Other"),
            ("a token 0123abcd leaked in a reason", "Other"),
        ] {
            assert_eq!(bounded_reason(given), label, "{given:?}");
        }
    }
}

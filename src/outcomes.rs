//! The outcome stream (`queues.outcomes`, off by default): one receipt per token per
//! settlement, built from what was decided, for producers that track delivery. Pure:
//! the receipt and its routing key; `worker::execute` publishes them to the topic
//! exchange `queues.outcome_exchange`, confirmed before the ack
//! (`schemas/outcome-receipt.schema.json`).

use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::settle::{AckKind, Settlement};

/// What happened to one notification in this settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// APNs accepted it (200).
    Delivered,
    /// Its `expiration` passed before it was sent: acked, not sent.
    Expired,
    /// APNs called the token dead: a cleanup event went out.
    TokenDead,
    /// A broadcast's channel is not registered: a channel-cleanup event went out.
    ChannelGone,
    /// The app's environment refused the token and the other one accepted it.
    EnvironmentMismatch,
    /// Dead-lettered: refused by APNs, invalid, or out of attempts (`reason`).
    DeadLettered,
    /// Answered with a transient failure: sent again after a delay.
    Retrying,
    /// Waiting, not an attempt: the app's credentials are broken or paused, or the
    /// replica is draining.
    Parked,
    /// Names an app or topic this replica does not know yet: waiting for the
    /// configuration, not an attempt.
    AwaitingConfig,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Delivered => "delivered",
            Status::Expired => "expired",
            Status::TokenDead => "token_dead",
            Status::ChannelGone => "channel_gone",
            Status::EnvironmentMismatch => "environment_mismatch",
            Status::DeadLettered => "dead_lettered",
            Status::Retrying => "retrying",
            Status::Parked => "parked",
            Status::AwaitingConfig => "awaiting_config",
        }
    }

    /// No later receipt follows for this notification (unless the job is published
    /// again: a replay, a redelivery after a lost ack).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            Status::Retrying | Status::Parked | Status::AwaitingConfig
        )
    }
}

/// One receipt (`schemas/outcome-receipt.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The job's `id`, else its AMQP message id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// This notification's apns-id (a fan-out token's own); absent for a job that
    /// could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    pub status: Status,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// APNs' reason, or the worker's (`InvalidJob`, `RetriesExhausted`, `Draining`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// APNs' HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns_status: Option<u16>,
    /// A dead letter's `x-error`: one sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Sends to APNs counted for the job so far (as `x-attempts` counts them).
    pub attempts: u32,
    pub observed_at: String,
}

impl Receipt {
    /// Its routing key on the outcome exchange: `<status>.<app>` (`<status>` alone when
    /// the app is not known), so that consumers bind `dead_lettered.#` or `*.shop`.
    pub fn routing_key(&self) -> String {
        match &self.app {
            Some(app) => format!("{}.{app}", self.status.as_str()),
            None => self.status.as_str().to_string(),
        }
    }
}

/// What is known of the notification a receipt is about.
#[derive(Clone, Copy, Debug, Default)]
pub struct Subject<'a> {
    pub job_id: Option<&'a str>,
    pub apns_id: Option<Uuid>,
    pub app: Option<&'a str>,
    pub device_token: Option<&'a str>,
    pub channel_id: Option<&'a str>,
    /// The message's `x-attempts`.
    pub attempts_before: u32,
}

/// The receipt of one notification's settlement; `None` when the settlement says
/// nothing new (a requeue: the broker redelivers it; a redelivery already settled).
pub fn receipt(
    subject: &Subject<'_>,
    settlement: &Settlement,
    observed_at: SystemTime,
) -> Option<Receipt> {
    let answered = subject.attempts_before.saturating_add(1);
    let (status, reason, apns_status, error, attempts) = match settlement {
        Settlement::Ack(AckKind::Delivered) => (Status::Delivered, None, Some(200), None, answered),
        Settlement::Ack(AckKind::Expired) => {
            (Status::Expired, None, None, None, subject.attempts_before)
        }
        Settlement::Ack(AckKind::AlreadySettled) | Settlement::Requeue { .. } => return None,
        Settlement::Cleanup(ev) => (
            Status::TokenDead,
            Some(ev.reason.clone()),
            Some(ev.status),
            None,
            answered,
        ),
        Settlement::ChannelCleanup(ev) => (
            Status::ChannelGone,
            Some(ev.reason.clone()),
            Some(ev.status),
            None,
            answered,
        ),
        Settlement::EnvironmentMismatch(_) => (
            Status::EnvironmentMismatch,
            Some("BadDeviceToken".to_string()),
            Some(200),
            None,
            answered,
        ),
        Settlement::DeadLetter(dl) => (
            Status::DeadLettered,
            Some(dl.reason.clone()),
            dl.status,
            Some(crate::settle::truncate(&dl.error, 1024).to_string()),
            dl.attempts,
        ),
        Settlement::Retry {
            attempt, reason, ..
        } => (Status::Retrying, Some(reason.clone()), None, None, *attempt),
        Settlement::Park { reason, .. } => (
            Status::Parked,
            Some(reason.clone()),
            None,
            None,
            subject.attempts_before,
        ),
        Settlement::AwaitConfig { reason, .. } => (
            Status::AwaitingConfig,
            Some((*reason).to_string()),
            None,
            None,
            subject.attempts_before,
        ),
    };
    Some(Receipt {
        job_id: subject.job_id.map(str::to_owned),
        apns_id: subject.apns_id.map(|u| u.to_string()),
        app: subject.app.map(str::to_owned),
        device_token: subject.device_token.map(str::to_owned),
        channel_id: subject.channel_id.map(str::to_owned),
        status,
        is_final: status.is_final(),
        reason,
        apns_status,
        error,
        attempts,
        observed_at: humantime::format_rfc3339_millis(observed_at).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settle::{CleanupEvent, DeadLetter, DelayQueue};

    fn subject() -> Subject<'static> {
        Subject {
            job_id: Some("job-1"),
            apns_id: Some(Uuid::nil()),
            app: Some("shop"),
            device_token: Some("abcd"),
            channel_id: None,
            attempts_before: 2,
        }
    }

    /// status, final, reason, APNs status, attempts.
    type Want = (&'static str, bool, Option<&'static str>, Option<u16>, u32);

    #[test]
    fn one_receipt_per_settlement_row() {
        let delay = DelayQueue {
            level_ms: 1000,
            ttl_ms: 900,
        };
        let cleanup = Settlement::Cleanup(CleanupEvent {
            device_token: "abcd".into(),
            topic: "t".into(),
            app: "shop".into(),
            reason: "Unregistered".into(),
            status: 410,
            unregistered_at: None,
            job_id: None,
            apns_id: None,
            observed_at: String::new(),
        });
        let dead = Settlement::DeadLetter(DeadLetter {
            status: Some(400),
            reason: "BadCollapseId".into(),
            error: "APNs refused the notification".into(),
            attempts: 3,
        });
        let rows: Vec<(Settlement, Option<Want>)> = vec![
            (
                Settlement::Ack(AckKind::Delivered),
                Some(("delivered", true, None, Some(200), 3)),
            ),
            (
                Settlement::Ack(AckKind::Expired),
                Some(("expired", true, None, None, 2)),
            ),
            (Settlement::Ack(AckKind::AlreadySettled), None),
            (Settlement::Requeue { reason: "x" }, None),
            (
                cleanup,
                Some(("token_dead", true, Some("Unregistered"), Some(410), 3)),
            ),
            (
                dead,
                Some(("dead_lettered", true, Some("BadCollapseId"), Some(400), 3)),
            ),
            (
                Settlement::Retry {
                    attempt: 3,
                    delay,
                    reason: "ServiceUnavailable".into(),
                },
                Some(("retrying", false, Some("ServiceUnavailable"), None, 3)),
            ),
            (
                Settlement::Park {
                    delay,
                    reason: "Draining".into(),
                },
                Some(("parked", false, Some("Draining"), None, 2)),
            ),
            (
                Settlement::AwaitConfig {
                    waits: 1,
                    delay,
                    reason: "UnknownApp",
                },
                Some(("awaiting_config", false, Some("UnknownApp"), None, 2)),
            ),
        ];
        for (settlement, want) in rows {
            let got = receipt(&subject(), &settlement, SystemTime::UNIX_EPOCH);
            let got = got.as_ref().map(|r| {
                (
                    r.status.as_str(),
                    r.is_final,
                    r.reason.as_deref(),
                    r.apns_status,
                    r.attempts,
                )
            });
            assert_eq!(got, want, "{settlement:?}");
        }
    }

    #[test]
    fn routing_keys_and_the_wire_form() {
        let r = receipt(
            &subject(),
            &Settlement::Ack(AckKind::Delivered),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(r.routing_key(), "delivered.shop");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["final"], true);
        assert_eq!(v["status"], "delivered");
        assert_eq!(v["observed_at"], "1970-01-01T00:00:00.000Z");
        assert!(v.get("channel_id").is_none());
        let unknown = Subject {
            app: None,
            ..subject()
        };
        let r = receipt(
            &unknown,
            &Settlement::Ack(AckKind::Expired),
            SystemTime::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(r.routing_key(), "expired");
    }
}

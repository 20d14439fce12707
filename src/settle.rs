//! Settlement: the pure decision of what happens to an AMQP message, from the outcome
//! of its notification and its attempt count. The table (issue #3):
//!
//! | outcome | settlement |
//! |---|---|
//! | Delivered | ack |
//! | TokenDead | publish a cleanup event (confirmed), then ack |
//! | ChannelGone (a broadcast's channel is not registered) | publish a channel-cleanup event (confirmed), then ack |
//! | Rejected (the message is wrong) | dead-letter with APNs' reason |
//! | RetryLater, attempts left | publish to a delay queue (confirmed), then ack |
//! | RetryLater, none left | dead-letter as `RetriesExhausted` with the last reason |
//! | CredentialsBroken | park: back to a delay queue, not an attempt; the app pauses |
//! | TokenThrottled (429 TooManyProviderTokenUpdates) | park, not an attempt; the app keeps sending (it pauses only if this lasts: `circuit`) |
//! | invalid job | dead-letter as `InvalidJob` with the exact problem |
//! | names an app or topic this replica does not know | wait for the configuration: park, not an attempt, up to `retry.unknown_app_wait_ms`; then dead-letter as `InvalidJob` |
//! | expired before sending | ack, counted as expired |
//! | not sent: its broker session is gone | requeue (the broker has it back already) |
//! | BadDeviceToken, but the other environment accepted it | environment-mismatch event, then ack |

use std::time::Duration;

use serde::Serialize;

use apns::classify::{Outcome, RetryCause, reason_label};

use crate::config::RetrySettings;

/// What to do with one message. Carried out in exactly one place (`worker::execute`).
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    Ack(AckKind),
    /// Publish this event to the cleanup exchange, wait for the confirm, then ack.
    Cleanup(CleanupEvent),
    /// Publish this channel event to the cleanup exchange (routing key
    /// `channel.<bundle id>`), wait for the confirm, then ack.
    ChannelCleanup(ChannelCleanupEvent),
    /// Publish the original message to the dead-letter exchange, then ack.
    DeadLetter(DeadLetter),
    /// Publish the original to a delay queue with `x-attempts = attempt`, then ack.
    Retry {
        attempt: u32,
        delay: DelayQueue,
        reason: String,
    },
    /// The app's credentials are broken: back to a delay queue without counting an attempt.
    Park {
        delay: DelayQueue,
        reason: String,
    },
    /// Not sent, and not the worker's to settle any more: the broker session that
    /// delivered it is gone, so the broker gives it to another consumer.
    Requeue {
        reason: &'static str,
    },
    /// APNs called the token bad in the app's environment and the other environment
    /// accepted the notification: publish this event (not a cleanup), then ack.
    EnvironmentMismatch(MismatchEvent),
    /// The job names an app or topic this replica's configuration does not know (yet,
    /// in a rolling configuration change): back to a delay queue with
    /// `x-apns-config-waits = waits`, not an attempt.
    AwaitConfig {
        waits: u32,
        delay: DelayQueue,
        reason: &'static str,
    },
}

/// The environment-mismatch event (`schemas/environment-mismatch-event.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MismatchEvent {
    pub device_token: String,
    pub topic: String,
    pub app: String,
    /// The app's endpoint, which answered BadDeviceToken.
    pub configured_endpoint: String,
    /// The other environment's endpoint, which accepted the notification.
    pub accepted_by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    pub observed_at: String,
}

/// The settlement of a job whose token the other environment accepted.
pub fn environment_mismatch(ctx: &Context<'_>, configured: &str, accepted_by: &str) -> Settlement {
    Settlement::EnvironmentMismatch(MismatchEvent {
        device_token: ctx.device_token.unwrap_or_default().to_string(),
        topic: ctx.topic.to_string(),
        app: ctx.app.to_string(),
        configured_endpoint: configured.to_string(),
        accepted_by: accepted_by.to_string(),
        job_id: ctx.job_id.map(str::to_owned),
        apns_id: ctx.apns_id.clone(),
        observed_at: humantime::format_rfc3339_millis(ctx.observed_at).to_string(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckKind {
    Delivered,
    Expired,
    /// A redelivered job this process already settled (its ack was lost with a
    /// connection): acked again, nothing sent or published twice.
    AlreadySettled,
}

/// The dead letter's headers (the body and properties are the original's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `x-apns-status`, when APNs answered.
    pub status: Option<u16>,
    /// `x-apns-reason`: APNs' reason or ours (`InvalidJob`, `RetriesExhausted`).
    pub reason: String,
    /// `x-error`: one sentence.
    pub error: String,
    /// `x-attempts`: sends to APNs so far.
    pub attempts: u32,
}

/// The token cleanup event (`schemas/token-cleanup-event.schema.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CleanupEvent {
    pub device_token: String,
    pub topic: String,
    pub app: String,
    pub reason: String,
    pub status: u16,
    /// When APNs says the token became invalid (RFC 3339), for 410 answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unregistered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    /// When the worker saw the answer (RFC 3339).
    pub observed_at: String,
}

/// The channel cleanup event (`schemas/channel-cleanup-event.schema.json`): a
/// broadcast's channel does not exist in the app's environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelCleanupEvent {
    pub channel_id: String,
    pub bundle_id: String,
    pub app: String,
    pub reason: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    pub observed_at: String,
}

impl ChannelCleanupEvent {
    /// Its routing key on the cleanup exchange: `channel.<bundle id>`, apart from the
    /// token events' `<topic>`.
    pub fn routing_key(&self) -> String {
        format!("channel.{}", self.bundle_id)
    }
}

/// Where a delayed message waits: the delay queue of `level_ms`, and its own TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DelayQueue {
    pub level_ms: u64,
    /// Per-message expiration, at most `level_ms` (jitter spreads a burst of retries).
    pub ttl_ms: u64,
}

/// The first `max` bytes of `s` at most, cut at a character boundary (a dead letter's
/// `x-error`).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The delay levels: base, 2·base, 4·base, ... up to max (max always included).
pub fn delay_levels(r: &RetrySettings) -> Vec<u64> {
    let mut levels = Vec::new();
    let mut d = r.base_delay_ms;
    while d < r.max_delay_ms {
        levels.push(d);
        d = d.saturating_mul(2);
    }
    levels.push(r.max_delay_ms);
    if !levels.contains(&r.park_delay_ms) {
        levels.push(r.park_delay_ms);
    }
    levels.sort_unstable();
    levels.dedup();
    levels
}

/// Delay before attempt `attempt + 1`, after `attempt` sends (1-based): exponential,
/// capped, with up to 25% jitter taken off.
pub fn retry_delay(r: &RetrySettings, attempt: u32, rng: &mut fastrand::Rng) -> DelayQueue {
    let exp = attempt.saturating_sub(1).min(40);
    let level_ms = r
        .base_delay_ms
        .saturating_mul(1u64 << exp)
        .min(r.max_delay_ms);
    // Snap to an existing level (the levels are the same doubling series).
    let level_ms = delay_levels(r)
        .into_iter()
        .find(|l| *l >= level_ms)
        .unwrap_or(r.max_delay_ms);
    with_jitter(level_ms, rng)
}

fn with_jitter(level_ms: u64, rng: &mut fastrand::Rng) -> DelayQueue {
    let jitter = (level_ms / 4).max(1);
    DelayQueue {
        level_ms,
        ttl_ms: level_ms - rng.u64(0..jitter),
    }
}

/// Everything `decide` needs besides the outcome.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub retry: &'a RetrySettings,
    /// Sends to APNs before this one (the message's `x-attempts`).
    pub attempts_before: u32,
    /// The device token; `None` for a broadcast.
    pub device_token: Option<&'a str>,
    /// The channel id of a broadcast.
    pub channel_id: Option<&'a str>,
    /// The topic; a broadcast's bundle id.
    pub topic: &'a str,
    pub app: &'a str,
    pub job_id: Option<&'a str>,
    pub apns_id: Option<String>,
    pub observed_at: std::time::SystemTime,
}

/// The one decision from an outcome to a settlement.
pub fn decide(outcome: &Outcome, ctx: &Context<'_>, rng: &mut fastrand::Rng) -> Settlement {
    // Saturating: a copy's x-attempts may be as high as u32::MAX.
    let attempts = ctx.attempts_before.saturating_add(1);
    match outcome {
        Outcome::Delivered => Settlement::Ack(AckKind::Delivered),
        Outcome::ChannelGone { status, reason } if ctx.channel_id.is_some() => {
            Settlement::ChannelCleanup(ChannelCleanupEvent {
                channel_id: ctx.channel_id.unwrap_or_default().to_string(),
                bundle_id: ctx.topic.to_string(),
                app: ctx.app.to_string(),
                reason: reason.to_string(),
                status: *status,
                job_id: ctx.job_id.map(str::to_owned),
                apns_id: ctx.apns_id.clone(),
                observed_at: humantime::format_rfc3339_millis(ctx.observed_at).to_string(),
            })
        }
        Outcome::TokenDead {
            status,
            reason,
            unregistered_at,
        } if ctx.device_token.is_some() => Settlement::Cleanup(CleanupEvent {
            device_token: ctx.device_token.unwrap_or_default().to_string(),
            topic: ctx.topic.to_string(),
            app: ctx.app.to_string(),
            reason: reason.to_string(),
            status: *status,
            unregistered_at: unregistered_at.map(rfc3339_ms),
            job_id: ctx.job_id.map(str::to_owned),
            apns_id: ctx.apns_id.clone(),
            observed_at: humantime::format_rfc3339_millis(ctx.observed_at).to_string(),
        }),
        // A token answer to a broadcast, or a channel answer to a device push: APNs
        // cannot mean it; the message is not sendable as it is.
        Outcome::TokenDead { status, reason, .. } | Outcome::ChannelGone { status, reason } => {
            rejected(*status, Some(reason), attempts)
        }
        Outcome::Rejected { status, reason } => rejected(*status, reason.as_ref(), attempts),
        Outcome::RetryLater(cause) => {
            if attempts >= ctx.retry.max_attempts {
                let status = match cause {
                    RetryCause::Status { status, .. } => Some(*status),
                    _ => None,
                };
                Settlement::DeadLetter(DeadLetter {
                    status,
                    reason: "RetriesExhausted".into(),
                    error: format!(
                        "gave up after {attempts} attempts; the last one ended with {}",
                        describe(cause)
                    ),
                    attempts,
                })
            } else {
                Settlement::Retry {
                    attempt: attempts,
                    delay: retry_delay(ctx.retry, attempts, rng),
                    reason: cause.label(),
                }
            }
        }
        Outcome::CredentialsBroken { status, reason } => Settlement::Park {
            delay: with_jitter(ctx.retry.park_delay_ms, rng),
            reason: reason_label(*status, reason.as_ref()),
        },
        Outcome::TokenThrottled => Settlement::Park {
            delay: with_jitter(ctx.retry.park_delay_ms, rng),
            reason: "TooManyProviderTokenUpdates".into(),
        },
        // The client refreshes and resends itself; reaching here means it could not.
        Outcome::RefreshToken => Settlement::Park {
            delay: with_jitter(ctx.retry.park_delay_ms, rng),
            reason: "ExpiredProviderToken".into(),
        },
    }
}

/// The dead letter of a notification APNs refused for what it is.
fn rejected(status: u16, reason: Option<&apns::Reason>, attempts: u32) -> Settlement {
    let label = reason_label(status, reason);
    let error = if reason == Some(&apns::Reason::FeatureNotEnabled) {
        format!(
            "APNs rejected the broadcast with {status} {label}: broadcast push is not enabled for this bundle id; enable it in the Apple developer account, then replay the dead letter"
        )
    } else {
        format!(
            "APNs rejected the notification with {status} {label}; sending it again cannot succeed"
        )
    };
    Settlement::DeadLetter(DeadLetter {
        status: (status != 0).then_some(status),
        error,
        reason: label,
        attempts,
    })
}

fn describe(cause: &RetryCause) -> String {
    match cause {
        RetryCause::Status {
            status,
            reason: Some(r),
        } => format!("HTTP {status} {r}"),
        RetryCause::Status {
            status,
            reason: None,
        } => format!("HTTP {status}"),
        RetryCause::NotSent(m) => format!("not sent ({m})"),
        RetryCause::Unknown(m) => format!("no answer ({m})"),
    }
}

/// How many times a job naming an unknown app or topic is parked before it is
/// dead-lettered: enough parks of `park_delay_ms` to cover `unknown_app_wait_ms`.
pub fn config_waits(r: &RetrySettings) -> u32 {
    u32::try_from(r.unknown_app_wait_ms.div_ceil(r.park_delay_ms.max(1))).unwrap_or(u32::MAX)
}

/// A job that names an app (`reason` `UnknownApp`) or a topic (`UnknownTopic`) that
/// this replica does not know, after `waits_before` parks: wait for a configuration
/// rollout, or, once the wait is over, the dead letter of an invalid job.
pub fn unknown_route(
    reason: &'static str,
    error: &str,
    waits_before: u32,
    attempts_before: u32,
    r: &RetrySettings,
    rng: &mut fastrand::Rng,
) -> Settlement {
    if waits_before < config_waits(r) {
        return Settlement::AwaitConfig {
            waits: waits_before + 1,
            delay: with_jitter(r.park_delay_ms, rng),
            reason,
        };
    }
    let error = if waits_before == 0 {
        error.to_string()
    } else {
        let waited = Duration::from_millis(r.unknown_app_wait_ms);
        format!(
            "{error} (waited {} for a configuration that knows it)",
            humantime::format_duration(waited)
        )
    };
    invalid_job(&error, attempts_before)
}

/// The dead letter of a job that cannot be decoded or validated.
pub fn invalid_job(error: &str, attempts_before: u32) -> Settlement {
    Settlement::DeadLetter(DeadLetter {
        status: None,
        reason: "InvalidJob".into(),
        error: error.to_string(),
        attempts: attempts_before,
    })
}

/// A fan-out job's settlement, from its tokens' (`fan_in`): everything to publish
/// (each confirmed), then one ack; or, if any token's send was withdrawn with its
/// broker session, a requeue of the whole message and nothing published.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FanIn<'a> {
    /// A token's broker session is gone: requeue the message, publish nothing.
    pub requeue: bool,
    /// One event per dead token (cleanup, environment mismatch).
    pub events: Vec<&'a Settlement>,
    /// One dead letter per (reason, status, error), with its tokens.
    pub dead_letters: Vec<(&'a DeadLetter, Vec<&'a str>)>,
    /// The tokens to send again, as one child job in a delay queue (an attempt).
    pub retry: Option<(&'a Settlement, Vec<&'a str>)>,
    /// The tokens parked unsent (not an attempt), as one child job.
    pub park: Option<(&'a Settlement, Vec<&'a str>)>,
}

impl FanIn<'_> {
    /// Publishes before the ack.
    pub fn publishes(&self) -> usize {
        self.events.len()
            + self.dead_letters.len()
            + usize::from(self.retry.is_some())
            + usize::from(self.park.is_some())
    }
}

/// Group the settlements of a fan-out job's tokens into the message's: delivered,
/// expired and already settled tokens need nothing; each event is published; dead
/// letters are grouped by reason, status and error; the tokens to retry go on together
/// (under the first one's delay), and so do the parked ones.
pub fn fan_in<'a>(rows: impl IntoIterator<Item = (&'a str, &'a Settlement)>) -> FanIn<'a> {
    let mut f = FanIn::default();
    for (token, s) in rows {
        match s {
            Settlement::Ack(_) => {}
            Settlement::Cleanup(_)
            | Settlement::ChannelCleanup(_)
            | Settlement::EnvironmentMismatch(_) => f.events.push(s),
            Settlement::DeadLetter(dl) => {
                match f.dead_letters.iter_mut().find(|(d, _)| {
                    d.reason == dl.reason && d.status == dl.status && d.error == dl.error
                }) {
                    Some((_, tokens)) => tokens.push(token),
                    None => f.dead_letters.push((dl, vec![token])),
                }
            }
            Settlement::Retry { .. } => f.retry.get_or_insert((s, Vec::new())).1.push(token),
            Settlement::Park { .. } | Settlement::AwaitConfig { .. } => {
                f.park.get_or_insert((s, Vec::new())).1.push(token)
            }
            Settlement::Requeue { .. } => f.requeue = true,
        }
    }
    f
}

/// RFC 3339 with milliseconds, from milliseconds since the epoch.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn fan_in_groups_tokens_by_what_their_message_needs() {
        use super::*;
        let dl = |reason: &str, error: &str| {
            Settlement::DeadLetter(DeadLetter {
                status: Some(400),
                reason: reason.into(),
                error: error.into(),
                attempts: 1,
            })
        };
        let delay = DelayQueue {
            level_ms: 1000,
            ttl_ms: 900,
        };
        let retry = Settlement::Retry {
            attempt: 1,
            delay,
            reason: "ServiceUnavailable".into(),
        };
        let park = Settlement::Park {
            delay,
            reason: "InvalidProviderToken".into(),
        };
        let cleanup = Settlement::Cleanup(CleanupEvent {
            device_token: "dd".into(),
            topic: "t".into(),
            app: "a".into(),
            reason: "Unregistered".into(),
            status: 410,
            unregistered_at: None,
            job_id: None,
            apns_id: None,
            observed_at: "x".into(),
        });
        let delivered = Settlement::Ack(AckKind::Delivered);
        let expired = Settlement::Ack(AckKind::Expired);
        let bad_topic = dl("BadTopic", "e1");
        let bad_topic_too = dl("BadTopic", "e1");
        let bad_collapse = dl("BadCollapseId", "e2");
        let retry2 = Settlement::Retry {
            attempt: 1,
            delay: DelayQueue {
                level_ms: 1000,
                ttl_ms: 800,
            },
            reason: "InternalServerError".into(),
        };
        let rows = vec![
            ("t1", &delivered),
            ("t2", &expired),
            ("t3", &cleanup),
            ("t4", &bad_topic),
            ("t5", &bad_topic_too),
            ("t6", &bad_collapse),
            ("t7", &retry),
            ("t8", &retry2),
            ("t9", &park),
        ];
        let f = fan_in(rows.iter().copied());
        assert!(!f.requeue);
        assert_eq!(f.events, vec![&cleanup]);
        let groups: Vec<_> = f
            .dead_letters
            .iter()
            .map(|(d, t)| (d.reason.as_str(), t.clone()))
            .collect();
        assert_eq!(
            groups,
            vec![
                ("BadTopic", vec!["t4", "t5"]),
                ("BadCollapseId", vec!["t6"])
            ]
        );
        assert_eq!(f.retry, Some((&retry, vec!["t7", "t8"])));
        assert_eq!(f.park, Some((&park, vec!["t9"])));
        assert_eq!(f.publishes(), 5);

        let gone = Settlement::Requeue {
            reason: "SessionLost",
        };
        let f = fan_in([("t1", &delivered), ("t2", &gone)]);
        assert!(f.requeue, "one withdrawn send requeues the whole message");

        let f = fan_in([("t1", &delivered), ("t2", &expired)]);
        assert_eq!(f.publishes(), 0, "nothing to publish: just the ack");
    }

    use super::*;
    use apns::Reason;

    fn ctx(retry: &RetrySettings, attempts_before: u32) -> Context<'_> {
        Context {
            retry,
            attempts_before,
            device_token: Some("ab"),
            channel_id: None,
            topic: "com.x",
            app: "shop",
            job_id: Some("j1"),
            apns_id: Some("id".into()),
            observed_at: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn the_highest_attempt_count_a_copy_can_carry_ends_the_retries() {
        let r = RetrySettings::default();
        let retry = Outcome::RetryLater(RetryCause::Status {
            status: 503,
            reason: Some(Reason::ServiceUnavailable),
        });
        let mut rng = fastrand::Rng::with_seed(1);
        let Settlement::DeadLetter(dl) = decide(&retry, &ctx(&r, u32::MAX), &mut rng) else {
            panic!("no wrap to 0, no new budget")
        };
        assert_eq!(
            (dl.reason.as_str(), dl.attempts),
            ("RetriesExhausted", u32::MAX)
        );
    }

    #[test]
    fn broadcasts_settle_by_the_channel() {
        let r = RetrySettings::default();
        let mut rng = fastrand::Rng::with_seed(5);
        let mut c = ctx(&r, 0);
        c.device_token = None;
        c.channel_id = Some("dHN0LXNyY2gtY2hubA==");
        let gone = Outcome::ChannelGone {
            status: 400,
            reason: Reason::ChannelNotRegistered,
        };
        let Settlement::ChannelCleanup(ev) = decide(&gone, &c, &mut rng) else {
            panic!("a channel APNs does not know is a channel cleanup")
        };
        assert_eq!(
            (
                ev.channel_id.as_str(),
                ev.bundle_id.as_str(),
                ev.reason.as_str()
            ),
            ("dHN0LXNyY2gtY2hubA==", "com.x", "ChannelNotRegistered")
        );
        assert_eq!(ev.routing_key(), "channel.com.x");
        // Never a token cleanup for a broadcast, never a channel cleanup for a token.
        let dead = Outcome::TokenDead {
            status: 410,
            reason: Reason::Unregistered,
            unregistered_at: None,
        };
        assert!(matches!(
            decide(&dead, &c, &mut rng),
            Settlement::DeadLetter(_)
        ));
        let device = ctx(&r, 0);
        assert!(matches!(
            decide(&gone, &device, &mut rng),
            Settlement::DeadLetter(_)
        ));
        let off = Outcome::Rejected {
            status: 400,
            reason: Some(Reason::FeatureNotEnabled),
        };
        let Settlement::DeadLetter(dl) = decide(&off, &c, &mut rng) else {
            panic!()
        };
        assert_eq!(dl.reason, "FeatureNotEnabled");
        assert!(dl.error.contains("enable it"), "{}", dl.error);
    }

    #[test]
    fn the_settlement_table() {
        let r = RetrySettings::default();
        let mut rng = fastrand::Rng::with_seed(3);
        let c = ctx(&r, 0);
        assert_eq!(
            decide(&Outcome::Delivered, &c, &mut rng),
            Settlement::Ack(AckKind::Delivered)
        );

        let dead = Outcome::TokenDead {
            status: 410,
            reason: Reason::Unregistered,
            unregistered_at: Some(1_700_000_000_000),
        };
        let Settlement::Cleanup(ev) = decide(&dead, &c, &mut rng) else {
            panic!()
        };
        assert_eq!(
            ev.unregistered_at.as_deref(),
            Some("2023-11-14T22:13:20.000Z")
        );
        assert_eq!(ev.observed_at, "2023-11-14T22:13:20.000Z");
        assert_eq!(
            (ev.reason.as_str(), ev.status, ev.app.as_str()),
            ("Unregistered", 410, "shop")
        );

        let bad = Outcome::Rejected {
            status: 400,
            reason: Some(Reason::BadTopic),
        };
        let Settlement::DeadLetter(dl) = decide(&bad, &c, &mut rng) else {
            panic!()
        };
        assert_eq!(
            (dl.status, dl.reason.as_str(), dl.attempts),
            (Some(400), "BadTopic", 1)
        );

        let retry = Outcome::RetryLater(RetryCause::Status {
            status: 503,
            reason: Some(Reason::ServiceUnavailable),
        });
        let Settlement::Retry {
            attempt,
            delay,
            reason,
        } = decide(&retry, &c, &mut rng)
        else {
            panic!()
        };
        assert_eq!(
            (attempt, delay.level_ms, reason.as_str()),
            (1, 1000, "ServiceUnavailable")
        );
        assert!(delay.ttl_ms <= 1000 && delay.ttl_ms > 750);

        let Settlement::Park { delay, reason } = decide(&Outcome::TokenThrottled, &c, &mut rng)
        else {
            panic!()
        };
        assert_eq!(
            (delay.level_ms, reason.as_str()),
            (60_000, "TooManyProviderTokenUpdates"),
            "a throttled token parks the job, not an attempt"
        );

        let creds = Outcome::CredentialsBroken {
            status: 403,
            reason: Some(Reason::InvalidProviderToken),
        };
        let Settlement::Park { delay, reason } = decide(&creds, &c, &mut rng) else {
            panic!()
        };
        assert_eq!(
            (delay.level_ms, reason.as_str()),
            (60_000, "InvalidProviderToken")
        );
    }

    #[test]
    fn an_unknown_app_waits_for_the_configuration_then_is_dead_lettered() {
        let r = RetrySettings {
            park_delay_ms: 60_000,
            unknown_app_wait_ms: 150_000,
            ..RetrySettings::default()
        };
        assert_eq!(config_waits(&r), 3, "ceil(150 s / 60 s) parks");
        let mut rng = fastrand::Rng::with_seed(9);
        let err = "no app named \"eu\" is configured";
        for before in 0..3 {
            let Settlement::AwaitConfig {
                waits,
                delay,
                reason,
            } = unknown_route("UnknownApp", err, before, 2, &r, &mut rng)
            else {
                panic!("wait {before} should park")
            };
            assert_eq!(
                (waits, delay.level_ms, reason),
                (before + 1, 60_000, "UnknownApp")
            );
        }
        let Settlement::DeadLetter(dl) = unknown_route("UnknownApp", err, 3, 2, &r, &mut rng)
        else {
            panic!("the wait is bounded")
        };
        assert_eq!((dl.reason.as_str(), dl.attempts), ("InvalidJob", 2));
        assert_eq!(
            dl.error,
            "no app named \"eu\" is configured (waited 2m 30s for a configuration that knows it)"
        );
        let off = RetrySettings {
            unknown_app_wait_ms: 0,
            ..r
        };
        let Settlement::DeadLetter(dl) = unknown_route("UnknownTopic", err, 0, 0, &off, &mut rng)
        else {
            panic!("0 turns the wait off")
        };
        assert_eq!(dl.error, err);
        assert!(delay_levels(&r).contains(&60_000));
    }

    #[test]
    fn retries_are_bounded_then_dead_lettered_with_the_last_reason() {
        let r = RetrySettings {
            max_attempts: 3,
            ..RetrySettings::default()
        };
        let mut rng = fastrand::Rng::with_seed(3);
        let out = Outcome::RetryLater(RetryCause::Unknown("timeout".into()));
        assert!(matches!(
            decide(&out, &ctx(&r, 0), &mut rng),
            Settlement::Retry { attempt: 1, .. }
        ));
        assert!(matches!(
            decide(&out, &ctx(&r, 1), &mut rng),
            Settlement::Retry { attempt: 2, .. }
        ));
        let Settlement::DeadLetter(dl) = decide(&out, &ctx(&r, 2), &mut rng) else {
            panic!()
        };
        assert_eq!(
            (dl.reason.as_str(), dl.attempts, dl.status),
            ("RetriesExhausted", 3, None)
        );
        assert!(dl.error.contains("no answer (timeout)"), "{}", dl.error);
        let out = Outcome::RetryLater(RetryCause::Status {
            status: 429,
            reason: Some(Reason::TooManyRequests),
        });
        let Settlement::DeadLetter(dl) = decide(&out, &ctx(&r, 2), &mut rng) else {
            panic!()
        };
        assert_eq!(dl.status, Some(429));
        assert!(dl.error.contains("429 TooManyRequests"));
    }

    #[test]
    fn delays_double_up_to_the_cap_on_existing_levels() {
        let r = RetrySettings {
            base_delay_ms: 1000,
            max_delay_ms: 10_000,
            park_delay_ms: 60_000,
            max_attempts: 20,
            ..RetrySettings::default()
        };
        assert_eq!(
            delay_levels(&r),
            vec![1000, 2000, 4000, 8000, 10_000, 60_000]
        );
        let mut rng = fastrand::Rng::with_seed(1);
        let got: Vec<u64> = (1..=6)
            .map(|a| retry_delay(&r, a, &mut rng).level_ms)
            .collect();
        assert_eq!(got, vec![1000, 2000, 4000, 8000, 10_000, 10_000]);
        for _ in 0..1000 {
            let d = retry_delay(&r, 2, &mut rng);
            assert!(d.ttl_ms <= 2000 && d.ttl_ms > 1500);
        }
    }

    #[test]
    fn invalid_jobs_carry_the_exact_problem() {
        let Settlement::DeadLetter(dl) = invalid_job("missing field `payload`", 0) else {
            panic!()
        };
        assert_eq!(
            (dl.reason.as_str(), dl.error.as_str(), dl.status),
            ("InvalidJob", "missing field `payload`", None)
        );
    }
}

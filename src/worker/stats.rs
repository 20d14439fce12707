//! Counters of what the worker did, for the summary it prints, for health and for
//! metrics. Every settled message is counted once, under its settlement.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub token_cleanups: AtomicU64,
    /// Broadcasts to a channel APNs does not know (channel-cleanup event published).
    pub channel_cleanups: AtomicU64,
    /// Tokens APNs called bad that the other environment accepted (event, no cleanup).
    pub environment_mismatches: AtomicU64,
    pub retried: AtomicU64,
    pub parked: AtomicU64,
    /// Jobs naming an app or topic this replica does not know, parked to wait for a
    /// configuration rollout (`retry.unknown_app_wait_ms`).
    pub awaiting_config: AtomicU64,
    pub expired: AtomicU64,
    /// Redelivered jobs this process had already settled (ack lost): acked again.
    /// Not counted again under their settlement.
    pub already_settled: AtomicU64,
    /// Sends whose answer was lost: the notification may have gone out twice.
    pub unknown_outcomes: AtomicU64,
    /// Redelivered jobs with no remembered outcome (another replica, or this one before
    /// a restart, may have sent them): sent again, so possibly twice.
    pub redelivered_resent: AtomicU64,
    /// Publishes (events, dead letters, retries) that failed; the job was requeued.
    pub publish_failures: AtomicU64,
    /// Of those, the ones lost with the channel: the broker may have taken them, so an
    /// event, dead letter or retry copy may exist twice.
    pub uncertain_publishes: AtomicU64,
    pub requeued: AtomicU64,
    /// Jobs not sent because the broker session that delivered them was gone by the
    /// time a stream was free (the broker gives them to another consumer).
    pub withdrawn: AtomicU64,
    pub broker_sessions: AtomicU64,
    /// Every dead letter (also counted by reason).
    pub dead_lettered_any: AtomicU64,
    dead_letters: Mutex<BTreeMap<String, u64>>,
}

/// A snapshot, printed as JSON at exit (`apns-worker run`) and returned by `run`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Summary {
    pub received: u64,
    pub delivered: u64,
    pub token_cleanups: u64,
    pub channel_cleanups: u64,
    pub environment_mismatches: u64,
    pub dead_lettered: BTreeMap<String, u64>,
    pub retried: u64,
    pub parked: u64,
    pub awaiting_config: u64,
    pub expired: u64,
    pub already_settled: u64,
    pub unknown_outcomes: u64,
    pub redelivered_resent: u64,
    pub publish_failures: u64,
    pub uncertain_publishes: u64,
    pub requeued: u64,
    pub withdrawn: u64,
    pub broker_sessions: u64,
}

impl Summary {
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// Jobs that reached a terminal state (each counted once by this process).
    pub fn terminal(&self) -> u64 {
        self.delivered
            + self.token_cleanups
            + self.channel_cleanups
            + self.environment_mismatches
            + self.dead_lettered_total()
            + self.expired
    }
}

impl Stats {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dead_letter(&self, reason: &str) {
        *self
            .dead_letters
            .lock()
            .expect("stats lock")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn summary(&self) -> Summary {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            received: g(&self.received),
            delivered: g(&self.delivered),
            token_cleanups: g(&self.token_cleanups),
            channel_cleanups: g(&self.channel_cleanups),
            environment_mismatches: g(&self.environment_mismatches),
            dead_lettered: self.dead_letters.lock().expect("stats lock").clone(),
            retried: g(&self.retried),
            parked: g(&self.parked),
            awaiting_config: g(&self.awaiting_config),
            expired: g(&self.expired),
            already_settled: g(&self.already_settled),
            unknown_outcomes: g(&self.unknown_outcomes),
            redelivered_resent: g(&self.redelivered_resent),
            publish_failures: g(&self.publish_failures),
            uncertain_publishes: g(&self.uncertain_publishes),
            requeued: g(&self.requeued),
            withdrawn: g(&self.withdrawn),
            broker_sessions: g(&self.broker_sessions),
        }
    }
}

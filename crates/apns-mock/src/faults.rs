//! What the mock answers and which faults it injects: a serde-described script, and the
//! pure decision for one request (tested without sockets).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use apns::response::Reason;

/// An answer rule for device tokens that start with `prefix`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    pub prefix: String,
    pub status: u16,
    #[serde(default)]
    pub reason: Option<String>,
    /// Answer this way this many times per token, then 200. None: always.
    #[serde(default)]
    pub times: Option<u32>,
}

/// An answer given to a random share of requests.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RandomAnswer {
    /// 0.0 to 1.0.
    pub rate: f64,
    pub status: u16,
    #[serde(default)]
    pub reason: Option<String>,
}

/// The mock's behaviour. Everything is off by default: a plain, well-behaved APNs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Device token → time (ms since the epoch) it became invalid: 410 Unregistered.
    pub unregistered: BTreeMap<String, u64>,
    /// Device tokens answered with 400 BadDeviceToken.
    pub bad_tokens: BTreeSet<String>,
    /// Rules by token prefix, first match wins.
    pub rules: Vec<TokenRule>,
    /// Random answers, each with its own rate.
    pub random: Vec<RandomAnswer>,
    /// Added to every answer.
    pub latency_ms: u64,
    /// A share of answers delayed by `spike_ms` more.
    pub spike_rate: f64,
    pub spike_ms: u64,
    /// Send GOAWAY after this many requests on a connection; the requests that arrived
    /// after it are not processed (the client must resend them).
    pub goaway_after: Option<u64>,
    /// Share of streams reset with INTERNAL_ERROR before answering (outcome unknown).
    pub reset_rate: f64,
    /// Share of streams refused with REFUSED_STREAM (not processed; resend).
    pub refuse_rate: f64,
    /// Share of requests never answered.
    pub stall_rate: f64,
    /// Share of requests whose connection is dropped after the response headers.
    pub close_mid_response_rate: f64,
    /// Ignore PING frames (the connection looks dead to a client that pings).
    pub drop_pings: bool,
    /// After this many requests a connection goes silent: no reads, no writes.
    pub blackhole_after: Option<u64>,
    /// After this many requests on a connection, lower its stream limit to `limit_drop_to`.
    pub limit_drop_after: Option<u64>,
    pub limit_drop_to: Option<u32>,
}

/// What to do with one request that passed validation and authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Answer {
        status: u16,
        reason: Option<Reason>,
        timestamp: Option<u64>,
    },
    /// RST_STREAM(INTERNAL_ERROR): the client cannot know if it was processed.
    Reset,
    /// RST_STREAM(REFUSED_STREAM): not processed.
    Refuse,
    /// Never answer.
    Stall,
    /// Send 200 headers, then drop the connection.
    CloseMidResponse,
}

impl Action {
    pub fn ok() -> Action {
        Action::Answer {
            status: 200,
            reason: None,
            timestamp: None,
        }
    }
}

impl Faults {
    /// Check rates and rules; say what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("spike_rate", self.spike_rate),
            ("reset_rate", self.reset_rate),
            ("refuse_rate", self.refuse_rate),
            ("stall_rate", self.stall_rate),
            ("close_mid_response_rate", self.close_mid_response_rate),
        ];
        for (name, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name} must be between 0 and 1, not {r}"));
            }
        }
        for a in &self.random {
            if !(0.0..=1.0).contains(&a.rate) {
                return Err(format!(
                    "random answer rate must be between 0 and 1, not {}",
                    a.rate
                ));
            }
        }
        for r in &self.rules {
            if !(100..600).contains(&r.status) {
                return Err(format!(
                    "rule for prefix {:?}: status {} is not HTTP",
                    r.prefix, r.status
                ));
            }
        }
        Ok(())
    }

    /// The added latency of one answer.
    pub fn delay(&self, rng: &mut fastrand::Rng) -> Duration {
        let mut ms = self.latency_ms;
        if self.spike_rate > 0.0 && rng.f64() < self.spike_rate {
            ms += self.spike_ms;
        }
        Duration::from_millis(ms)
    }

    /// Decide one request. `seen` is how many times this token was answered before
    /// (only needed for rules with `times`).
    pub fn decide(&self, token: &str, seen: u32, rng: &mut fastrand::Rng) -> Action {
        let roll = |rate: f64, rng: &mut fastrand::Rng| rate > 0.0 && rng.f64() < rate;
        if roll(self.refuse_rate, rng) {
            return Action::Refuse;
        }
        if roll(self.reset_rate, rng) {
            return Action::Reset;
        }
        if roll(self.stall_rate, rng) {
            return Action::Stall;
        }
        if roll(self.close_mid_response_rate, rng) {
            return Action::CloseMidResponse;
        }
        if let Some(ts) = self.unregistered.get(token) {
            return Action::Answer {
                status: 410,
                reason: Some(Reason::Unregistered),
                timestamp: Some(*ts),
            };
        }
        // Like APNs: a token of zeros is never a device's (`check-config --probe` uses it).
        if self.bad_tokens.contains(token)
            || (!token.is_empty() && token.bytes().all(|b| b == b'0'))
        {
            return Action::Answer {
                status: 400,
                reason: Some(Reason::BadDeviceToken),
                timestamp: None,
            };
        }
        if let Some(rule) = self.rules.iter().find(|r| token.starts_with(&r.prefix)) {
            if rule.times.is_none_or(|t| seen < t) {
                let reason = rule.reason.as_deref().map(Reason::parse);
                let timestamp = (rule.status == 410).then(|| now_ms().saturating_sub(86_400_000));
                return Action::Answer {
                    status: rule.status,
                    reason,
                    timestamp,
                };
            }
            return Action::ok();
        }
        for a in &self.random {
            if roll(a.rate, rng) {
                return Action::Answer {
                    status: a.status,
                    reason: a.reason.as_deref().map(Reason::parse),
                    timestamp: None,
                };
            }
        }
        Action::ok()
    }

    /// Do any rules count answers per token?
    pub fn counts_tokens(&self) -> bool {
        self.rules.iter().any(|r| r.times.is_some())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_registry_then_rules_then_random() {
        let mut f = Faults::default();
        f.unregistered.insert("aa".into(), 123);
        f.bad_tokens.insert("bb".into());
        f.rules.push(TokenRule {
            prefix: "5030".into(),
            status: 503,
            reason: Some("ServiceUnavailable".into()),
            times: Some(2),
        });
        f.rules.push(TokenRule {
            prefix: "dead".into(),
            status: 410,
            reason: Some("ExpiredToken".into()),
            times: None,
        });
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            f.decide("aa", 0, &mut rng),
            Action::Answer {
                status: 410,
                reason: Some(Reason::Unregistered),
                timestamp: Some(123)
            }
        );
        assert_eq!(
            f.decide("bb", 0, &mut rng),
            Action::Answer {
                status: 400,
                reason: Some(Reason::BadDeviceToken),
                timestamp: None
            }
        );
        assert!(matches!(
            f.decide("5030ff", 0, &mut rng),
            Action::Answer { status: 503, .. }
        ));
        assert!(matches!(
            f.decide("5030ff", 1, &mut rng),
            Action::Answer { status: 503, .. }
        ));
        assert_eq!(
            f.decide("5030ff", 2, &mut rng),
            Action::ok(),
            "after `times` answers, 200"
        );
        assert!(matches!(
            f.decide("deadbeef", 9, &mut rng),
            Action::Answer {
                status: 410,
                timestamp: Some(_),
                ..
            }
        ));
        assert_eq!(f.decide("cc", 0, &mut rng), Action::ok());
    }

    #[test]
    fn random_rates_are_roughly_honoured() {
        let f = Faults {
            random: vec![RandomAnswer {
                rate: 0.1,
                status: 503,
                reason: None,
            }],
            refuse_rate: 0.05,
            ..Faults::default()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut s503, mut refused) = (0, 0);
        for _ in 0..100_000 {
            match f.decide("cc", 0, &mut rng) {
                Action::Answer { status: 503, .. } => s503 += 1,
                Action::Refuse => refused += 1,
                _ => {}
            }
        }
        assert!((4_000..6_000).contains(&refused), "{refused}");
        assert!((8_500..10_500).contains(&s503), "{s503}");
    }

    #[test]
    fn check_rejects_bad_rates() {
        let f = Faults {
            reset_rate: 1.5,
            ..Faults::default()
        };
        assert!(f.check().unwrap_err().contains("reset_rate"));
        let f: Faults = toml::from_str("goaway_after = 100\n[[rules]]\nprefix = \"dead\"\nstatus = 410\nreason = \"Unregistered\"").unwrap();
        assert!(f.check().is_ok());
        assert!(
            toml::from_str::<Faults>("gowaway_after = 1").is_err(),
            "typos are errors"
        );
    }
}

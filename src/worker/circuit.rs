//! The per-app circuit breaker for broken credentials. Pure: the caller passes the time.
//!
//! Closed: every job is sent. A credentials failure opens it: jobs of the app are parked
//! without being sent. After the open time, one job goes through as a probe (half-open);
//! if APNs accepts the credentials it closes, otherwise it opens again for twice as long
//! (up to a maximum). Other apps are not affected.
//!
//! 429 TooManyProviderTokenUpdates is not broken credentials: the app keeps sending
//! (each refused job waits in a delay queue). Only if every answer of the app is that
//! one for longer than `throttled_pause` does the circuit open, as for broken
//! credentials: something else keeps minting tokens for the key.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is out.
    HalfOpen,
}

/// What to do with the next job of the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    Send,
    /// Send it as the probe; report the result with `probe: true`.
    Probe,
    Park,
}

#[derive(Clone, Debug)]
pub struct Circuit {
    state: State,
    open_for: Duration,
    base: Duration,
    max: Duration,
    /// Since when every answer has been TooManyProviderTokenUpdates.
    throttled_since: Option<Instant>,
    throttled_pause: Duration,
    pub trips: u64,
}

impl Circuit {
    pub fn new(base: Duration, max: Duration, throttled_pause: Duration) -> Circuit {
        Circuit {
            state: State::Closed,
            open_for: base,
            base,
            max,
            throttled_since: None,
            throttled_pause,
            trips: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn gate(&mut self, now: Instant) -> Gate {
        match self.state {
            State::Closed => Gate::Send,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Gate::Probe
            }
            State::Open { .. } | State::HalfOpen => Gate::Park,
        }
    }

    /// APNs answered a request of this app, and the credentials were fine.
    pub fn credentials_ok(&mut self) {
        if self.state != State::Closed {
            tracing::info!("credentials work again; circuit closed");
        }
        self.state = State::Closed;
        self.open_for = self.base;
        self.throttled_since = None;
    }

    /// APNs answered 429 TooManyProviderTokenUpdates. Returns true when this opened the
    /// circuit (it has lasted longer than `throttled_pause`).
    pub fn token_throttled(&mut self, now: Instant) -> bool {
        let since = *self.throttled_since.get_or_insert(now);
        if now.duration_since(since) < self.throttled_pause {
            if self.state == State::HalfOpen {
                // A probe that got this answer says nothing about the credentials.
                self.probe_inconclusive(now);
            }
            return false;
        }
        let was_closed = self.state == State::Closed;
        self.credentials_broken(now);
        was_closed
    }

    /// APNs answered that the credentials are broken.
    pub fn credentials_broken(&mut self, now: Instant) {
        let reopen = self.state == State::HalfOpen;
        if self.state == State::Closed || reopen {
            if reopen {
                self.open_for = (self.open_for * 2).min(self.max);
            }
            self.trips += 1;
            self.state = State::Open {
                until: now + self.open_for,
            };
        }
    }

    /// The probe ended without an answer about credentials (network error): let
    /// another job probe.
    pub fn probe_inconclusive(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }
}

/// One circuit per app.
#[derive(Debug)]
pub struct Circuits(BTreeMap<String, Mutex<Circuit>>);

impl Circuits {
    pub fn new<'a>(
        apps: impl Iterator<Item = &'a String>,
        base: Duration,
        max: Duration,
        throttled_pause: Duration,
    ) -> Self {
        Circuits(
            apps.map(|name| {
                let c = Circuit::new(base, max, throttled_pause);
                (name.clone(), Mutex::new(c))
            })
            .collect(),
        )
    }

    /// The circuit of `app` (every configured app has one).
    pub fn of(&self, app: &str) -> Option<MutexGuard<'_, Circuit>> {
        self.0.get(app).map(|c| c.lock().expect("circuit lock"))
    }

    /// Each app and its circuit's state and trips, in name order.
    pub fn states(&self) -> Vec<(&str, State, u64)> {
        self.0
            .iter()
            .map(|(name, c)| {
                let c = c.lock().expect("circuit lock");
                (name.as_str(), c.state(), c.trips)
            })
            .collect()
    }

    /// The apps whose circuit is not closed (paused or probing).
    pub fn paused(&self) -> Vec<&str> {
        self.states()
            .into_iter()
            .filter(|(_, s, _)| *s != State::Closed)
            .map(|(n, _, _)| n)
            .collect()
    }

    /// No app configured, or at least one sending.
    pub fn any_sending(&self) -> bool {
        self.0.is_empty() || self.states().iter().any(|(_, s, _)| *s == State::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Circuit::new(10 * s, 40 * s, 600 * s);
        assert_eq!(c.gate(t0), Gate::Send);
        c.credentials_broken(t0);
        assert_eq!(c.gate(t0 + s), Gate::Park);
        assert_eq!(c.gate(t0 + 10 * s), Gate::Probe);
        assert_eq!(c.gate(t0 + 10 * s), Gate::Park, "one probe at a time");
        c.credentials_broken(t0 + 11 * s);
        assert_eq!(
            c.state(),
            State::Open { until: t0 + 31 * s },
            "open twice as long"
        );
        assert_eq!(c.gate(t0 + 31 * s), Gate::Probe);
        c.probe_inconclusive(t0 + 32 * s);
        assert_eq!(
            c.gate(t0 + 32 * s),
            Gate::Probe,
            "a lost probe frees the slot"
        );
        c.credentials_ok();
        assert_eq!(c.gate(t0 + 33 * s), Gate::Send);
        assert_eq!(c.trips, 2);
    }

    #[test]
    fn the_open_time_is_capped_and_reset() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Circuit::new(10 * s, 15 * s, 600 * s);
        c.credentials_broken(t0);
        let mut now = t0;
        for _ in 0..5 {
            now += 20 * s;
            assert_eq!(c.gate(now), Gate::Probe);
            c.credentials_broken(now);
        }
        assert_eq!(
            c.state(),
            State::Open {
                until: now + 15 * s
            }
        );
        c.credentials_ok();
        c.credentials_broken(now);
        assert_eq!(
            c.state(),
            State::Open {
                until: now + 10 * s
            },
            "back to the base time"
        );
        // In-flight failures while open do not extend it.
        c.credentials_broken(now + 5 * s);
        assert_eq!(
            c.state(),
            State::Open {
                until: now + 10 * s
            }
        );
    }

    #[test]
    fn a_throttled_token_pauses_the_app_only_when_it_lasts() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Circuit::new(10 * s, 40 * s, 1200 * s);
        assert!(!c.token_throttled(t0));
        assert!(!c.token_throttled(t0 + 600 * s));
        assert_eq!(c.gate(t0 + 600 * s), Gate::Send, "the app keeps sending");
        c.credentials_ok();
        assert!(
            !c.token_throttled(t0 + 1300 * s),
            "an accepted request reset it"
        );
        assert!(
            c.token_throttled(t0 + 2500 * s),
            "20 minutes of nothing else"
        );
        assert_eq!(c.gate(t0 + 2501 * s), Gate::Park);
        assert_eq!(c.trips, 1);
    }
}

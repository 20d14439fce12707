//! Whether the broker blocks a connection (`connection.blocked`: a memory or disk alarm)
//! and for how long it has, so that a confirm's time bound counts only the time the
//! broker could have answered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One connection's blocked periods. Shared by the session loop (which hears
/// `connection.blocked` / `connection.unblocked`) and the publisher (which bounds its
/// confirms).
#[derive(Debug, Default)]
pub struct Blocked {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Blocked now: since when.
    since: Option<Instant>,
    /// Blocked time of the periods that have ended.
    past: Duration,
}

impl Blocked {
    /// The broker blocked the connection at `now` (its reason is kept in the worker's
    /// health, which outlives the connection).
    pub fn block(&self, now: Instant) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.since.get_or_insert(now);
    }

    /// The broker unblocked the connection at `now`; how long it was blocked.
    pub fn unblock(&self, now: Instant) -> Option<Duration> {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let since = i.since.take()?;
        let d = now.saturating_duration_since(since);
        i.past += d;
        Some(d)
    }

    /// All the time the connection has been blocked, up to `now`.
    pub fn total(&self, now: Instant) -> Duration {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        i.past
            + i.since
                .map(|s| now.saturating_duration_since(s))
                .unwrap_or_default()
    }
}

/// What is left of a confirm's `bound` after `elapsed`, of which `blocked` was spent
/// with the connection blocked (not counted); `None` when the bound is spent.
pub fn bound_left(elapsed: Duration, blocked: Duration, bound: Duration) -> Option<Duration> {
    let counted = elapsed.saturating_sub(blocked);
    bound.checked_sub(counted).filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn the_bound_counts_only_unblocked_time() {
        // (elapsed, blocked during it, bound) -> left
        let rows = [
            (0, 0, 1000, Some(1000)),
            (400, 0, 1000, Some(600)),
            (1000, 0, 1000, None),
            (1500, 0, 1000, None),
            // Ten seconds blocked, 400 ms not: 600 ms left.
            (10_400, 10_000, 1000, Some(600)),
            // Blocked the whole time: the bound is untouched.
            (60_000, 60_000, 1000, Some(1000)),
            (11_000, 10_000, 1000, None),
        ];
        for (elapsed, blocked, bound, want) in rows {
            assert_eq!(
                bound_left(MS(elapsed), MS(blocked), MS(bound)),
                want.map(MS),
                "elapsed {elapsed} ms, blocked {blocked} ms, bound {bound} ms"
            );
        }
    }

    #[test]
    fn blocked_time_adds_up_over_periods() {
        let t0 = Instant::now();
        let b = Blocked::default();
        assert_eq!(b.total(t0 + MS(100)), MS(0));
        b.block(t0 + MS(100));
        // A second notification while blocked keeps the first start.
        b.block(t0 + MS(200));
        assert_eq!(b.total(t0 + MS(350)), MS(250));
        assert_eq!(b.unblock(t0 + MS(600)), Some(MS(500)));
        assert_eq!(b.unblock(t0 + MS(700)), None, "not blocked any more");
        assert_eq!(b.total(t0 + MS(5000)), MS(500));
        b.block(t0 + MS(6000));
        assert_eq!(b.total(t0 + MS(6100)), MS(600));
    }
}

//! A resizable bound on in-flight streams for one HTTP/2 connection.
//!
//! The server's SETTINGS_MAX_CONCURRENT_STREAMS changes while the connection lives
//! (APNs: 1 until the first good token request, then ~1000, sometimes back to 1).
//! h2 would queue requests past the limit inside itself (and its `ready()` can report
//! ready at the limit, hyperium/h2#848), so we hold a permit per stream ourselves and
//! callers wait for one: back-pressure instead of an unbounded buffer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

#[derive(Debug)]
pub struct StreamLimiter {
    sem: Arc<Semaphore>,
    state: Mutex<State>,
    /// Copy of `state.debt` readable without the lock (0 on the fast path).
    debt_hint: AtomicUsize,
    in_flight: AtomicUsize,
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits that are out and must be retired when they come back (after a decrease).
    debt: usize,
}

/// One in-flight stream. Dropping it frees the slot (or retires it after a decrease).
#[derive(Debug)]
pub struct StreamPermit {
    permit: Option<OwnedSemaphorePermit>,
    limiter: Arc<StreamLimiter>,
}

impl StreamLimiter {
    pub fn new(limit: usize) -> Arc<StreamLimiter> {
        Arc::new(StreamLimiter {
            sem: Arc::new(Semaphore::new(limit)),
            state: Mutex::new(State { limit, debt: 0 }),
            debt_hint: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("limiter lock").limit
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Follow a new limit from the server. Streams already open are never cut; a
    /// decrease takes effect as they finish.
    pub fn set_limit(&self, new: usize) {
        let mut st = self.state.lock().expect("limiter lock");
        let old = st.limit;
        st.limit = new;
        if new > old {
            let grow = new - old;
            let pay = grow.min(st.debt);
            st.debt -= pay;
            self.sem.add_permits(grow - pay);
        } else {
            let mut shrink = old - new;
            while shrink > 0 {
                match self.sem.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            st.debt += shrink;
        }
        self.debt_hint.store(st.debt, Ordering::Release);
    }

    /// Take a slot if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Result<StreamPermit, TryAcquireError> {
        let p = self.sem.clone().try_acquire_owned()?;
        Ok(self.wrap(p))
    }

    /// Wait for a slot. Fails only when the limiter is closed (the connection is gone).
    pub async fn acquire(self: Arc<Self>) -> Option<StreamPermit> {
        let p = self.sem.clone().acquire_owned().await.ok()?;
        Some(self.wrap(p))
    }

    /// No more slots, ever: waiters are woken and fail.
    pub fn close(&self) {
        self.sem.close();
    }

    pub fn is_closed(&self) -> bool {
        self.sem.is_closed()
    }

    fn wrap(self: &Arc<Self>, p: OwnedSemaphorePermit) -> StreamPermit {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        StreamPermit {
            permit: Some(p),
            limiter: self.clone(),
        }
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let l = &self.limiter;
        l.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(p) = self.permit.take() else { return };
        if l.debt_hint.load(Ordering::Acquire) > 0 {
            let mut st = l.state.lock().expect("limiter lock");
            if st.debt > 0 {
                st.debt -= 1;
                l.debt_hint.store(st.debt, Ordering::Release);
                p.forget();
                return;
            }
        }
        drop(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_increases_and_decreases_without_cutting_open_streams() {
        let l = StreamLimiter::new(1);
        let a = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err(), "limit 1");
        l.set_limit(3);
        let b = l.try_acquire().unwrap();
        let c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err(), "limit 3");
        assert_eq!(l.in_flight(), 3);
        l.set_limit(1);
        drop(a);
        assert!(l.try_acquire().is_err(), "two still open, limit 1");
        drop(b);
        assert!(l.try_acquire().is_err(), "one still open, limit 1");
        drop(c);
        let d = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
        drop(d);
        assert_eq!(l.available(), 1);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn an_increase_pays_the_debt_first() {
        let l = StreamLimiter::new(4);
        let held: Vec<_> = (0..4).map(|_| l.try_acquire().unwrap()).collect();
        l.set_limit(1); // debt 3
        l.set_limit(2); // debt 2
        drop(held);
        assert_eq!(l.available(), 2);
        assert_eq!(l.limit(), 2);
    }

    #[tokio::test]
    async fn waiters_get_slots_as_they_free_up_and_fail_on_close() {
        let l = StreamLimiter::new(1);
        let p = l.try_acquire().unwrap();
        let waiter = tokio::spawn(l.clone().acquire());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(p);
        assert!(waiter.await.unwrap().is_some());
        let _p = l.try_acquire().unwrap();
        let waiter = tokio::spawn(l.clone().acquire());
        l.close();
        assert!(waiter.await.unwrap().is_none());
    }
}

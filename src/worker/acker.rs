//! Ack coalescing for one consuming channel. Deliveries finish out of order; acks go
//! out as `basic.ack(multiple=true)` up to the highest tag below which everything is
//! settled, in batches (`ack_batch`) or after `ack_flush_ms`. Requeues are sent one by
//! one. A guard dropped unsettled requeues its delivery.
//!
//! Tags belong to one channel: each channel has its own acker, and guards hold the
//! acker of the channel they came from, so a delivery of a dead channel is never
//! settled on a new one (the broker redelivers it).

use std::collections::VecDeque;
use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::{mpsc, oneshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Ack,
    Requeue,
}

enum Msg {
    Register(u64),
    Settle(u64, Settle),
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Acker {
    tx: mpsc::UnboundedSender<Msg>,
}

/// One delivery to settle exactly once. Dropped unsettled, it requeues.
pub struct Guard {
    tag: u64,
    acker: Acker,
    done: bool,
}

impl Guard {
    pub fn ack(mut self) {
        self.send(Settle::Ack);
    }

    pub fn requeue(mut self) {
        self.send(Settle::Requeue);
    }

    fn send(&mut self, how: Settle) {
        self.done = true;
        // A closed acker means the channel is gone; the broker redelivers.
        let _ = self.acker.tx.send(Msg::Settle(self.tag, how));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.send(Settle::Requeue);
        }
    }
}

/// The pure bookkeeping: tags in arrival order and how each was settled.
#[derive(Debug)]
pub struct Window {
    entries: VecDeque<(u64, Option<Settle>, bool)>,
    settled: usize,
    /// The lowest tag not yet taken off the window. A channel numbers its deliveries
    /// 1, 2, 3, ... across all its consumers, so a missing tag is a delivery that is
    /// not registered yet (another consumer's, still in its buffer): a multiple ack
    /// must not reach past it.
    next: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            entries: VecDeque::new(),
            settled: 0,
            next: 1,
        }
    }
}

/// What to send to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AckUpTo(u64),
    AckOne(u64),
    Requeue(u64),
}

impl Window {
    pub fn register(&mut self, tag: u64) {
        // Tags rise on a channel, but a channel with several consumers (the urgent,
        // ready and jobs queues) hands them out per consumer: a later tag of one queue
        // can be registered before an earlier one of another. Keep the window sorted.
        match self.entries.back() {
            Some(e) if e.0 > tag => {
                let at = self.entries.partition_point(|e| e.0 < tag);
                self.entries.insert(at, (tag, None, false));
            }
            _ => self.entries.push_back((tag, None, false)),
        }
    }

    pub fn settle(&mut self, tag: u64, how: Settle) {
        // A channel's delivery tags rise, and entries are registered in arrival order:
        // the window is sorted. (A linear search from the back walked about a prefetch
        // of entries per settle: jobs finish about a prefetch after they arrive.)
        if let Ok(i) = self.entries.binary_search_by_key(&tag, |e| e.0) {
            let e = &mut self.entries[i];
            if e.1.is_none() {
                e.1 = Some(how);
                self.settled += 1;
            }
        }
    }

    /// Settled entries waiting to be sent.
    pub fn pending(&self) -> usize {
        self.settled
    }

    /// Operations for everything settled: the settled prefix as one multiple ack
    /// (split around requeues), and, when more than `max_blocked` settled acks wait
    /// behind an unsettled delivery, those acks one by one.
    pub fn drain(&mut self, max_blocked: usize) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut last_ack: Option<u64> = None;
        while let Some(&(tag, Some(how), sent)) = self.entries.front() {
            if tag != self.next {
                break;
            }
            self.next = tag + 1;
            self.entries.pop_front();
            if sent {
                continue;
            }
            self.settled -= 1;
            match how {
                Settle::Ack => last_ack = Some(tag),
                Settle::Requeue => {
                    if let Some(t) = last_ack.take() {
                        ops.push(Op::AckUpTo(t));
                    }
                    ops.push(Op::Requeue(tag));
                }
            }
        }
        if let Some(t) = last_ack {
            ops.push(Op::AckUpTo(t));
        }
        if self.settled > max_blocked {
            for e in self.entries.iter_mut() {
                if let (Some(how), false) = (e.1, e.2) {
                    e.2 = true;
                    self.settled -= 1;
                    ops.push(match how {
                        Settle::Ack => Op::AckOne(e.0),
                        Settle::Requeue => Op::Requeue(e.0),
                    });
                }
            }
        }
        ops
    }
}

impl Acker {
    /// Start the acker task of `channel`.
    pub fn spawn(
        channel: Channel,
        batch: usize,
        flush_every: Duration,
        max_blocked: usize,
    ) -> Acker {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(channel, rx, batch, flush_every, max_blocked));
        Acker { tx }
    }

    /// Record a new delivery (in arrival order) and get its guard.
    pub fn guard(&self, tag: u64) -> Guard {
        let _ = self.tx.send(Msg::Register(tag));
        Guard {
            tag,
            acker: self.clone(),
            done: false,
        }
    }

    /// Send everything settled so far and wait until it is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn run(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    batch: usize,
    flush_every: Duration,
    max_blocked: usize,
) {
    let mut w = Window::default();
    let mut tick = tokio::time::interval(flush_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut broken = false;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tick.tick() => {
                if w.pending() > 0 {
                    broken |= !send(&channel, w.drain(max_blocked)).await;
                }
                continue;
            }
        };
        let Some(msg) = msg else {
            // Every guard and handle is gone: send what is settled, then stop.
            send(&channel, w.drain(0)).await;
            return;
        };
        match msg {
            Msg::Register(t) => w.register(t),
            Msg::Settle(t, how) => {
                w.settle(t, how);
                if how == Settle::Requeue || w.pending() >= batch {
                    broken |= !send(&channel, w.drain(max_blocked)).await;
                }
            }
            Msg::Flush(done) => {
                broken |= !send(&channel, w.drain(0)).await;
                let _ = done.send(());
            }
        }
        if broken {
            // The channel is gone; its deliveries come back from the broker. Keep
            // reading so senders never block, but send nothing more.
            while rx.recv().await.is_some() {}
            return;
        }
    }
}

/// Send the operations; false if the channel refused (it is closed).
async fn send(ch: &Channel, ops: Vec<Op>) -> bool {
    for op in ops {
        let r = match op {
            Op::AckUpTo(t) => ch.basic_ack(t, BasicAckOptions { multiple: true }).await,
            Op::AckOne(t) => ch.basic_ack(t, BasicAckOptions { multiple: false }).await,
            Op::Requeue(t) => {
                ch.basic_nack(
                    t,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "settling on a closed channel; the broker will redeliver");
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_the_settled_prefix_in_one_multiple_ack() {
        let mut w = Window::default();
        for t in 1..=5 {
            w.register(t);
        }
        w.settle(3, Settle::Ack);
        w.settle(1, Settle::Ack);
        assert_eq!(w.drain(100), vec![Op::AckUpTo(1)], "2 is not settled yet");
        w.settle(2, Settle::Ack);
        w.settle(5, Settle::Ack);
        assert_eq!(w.drain(100), vec![Op::AckUpTo(3)]);
        w.settle(4, Settle::Ack);
        assert_eq!(w.drain(100), vec![Op::AckUpTo(5)]);
        assert_eq!(w.pending(), 0);
        assert!(w.drain(100).is_empty());
    }

    #[test]
    fn requeues_split_the_multiple_ack() {
        let mut w = Window::default();
        for t in 1..=4 {
            w.register(t);
        }
        w.settle(1, Settle::Ack);
        w.settle(2, Settle::Requeue);
        w.settle(3, Settle::Ack);
        w.settle(4, Settle::Ack);
        assert_eq!(
            w.drain(100),
            vec![Op::AckUpTo(1), Op::Requeue(2), Op::AckUpTo(4)]
        );
    }

    #[test]
    fn a_slow_delivery_does_not_hold_back_everything_behind_it() {
        let mut w = Window::default();
        for t in 1..=10 {
            w.register(t);
        }
        for t in 2..=10 {
            w.settle(t, Settle::Ack);
        }
        assert_eq!(w.drain(8), (2..=10).map(Op::AckOne).collect::<Vec<_>>());
        assert_eq!(w.pending(), 0);
        w.settle(1, Settle::Ack);
        assert_eq!(
            w.drain(8),
            vec![Op::AckUpTo(1)],
            "already acked entries are skipped"
        );
    }

    #[test]
    fn a_multiple_ack_never_reaches_past_a_delivery_not_registered_yet() {
        // Two consumers on one channel: tag 2 (the ready queue's) is registered before
        // tag 1 (the jobs queue's, still in its consumer's buffer).
        let mut w = Window::default();
        w.register(2);
        w.settle(2, Settle::Ack);
        assert!(w.drain(100).is_empty(), "acking up to 2 would ack 1 unseen");
        w.register(1);
        w.register(3);
        w.settle(3, Settle::Ack);
        assert!(w.drain(100).is_empty(), "1 is not settled yet");
        w.settle(1, Settle::Ack);
        assert_eq!(w.drain(100), vec![Op::AckUpTo(3)]);
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn settling_twice_counts_once() {
        let mut w = Window::default();
        w.register(1);
        w.settle(1, Settle::Ack);
        w.settle(1, Settle::Requeue);
        assert_eq!(w.drain(10), vec![Op::AckUpTo(1)]);
    }

    #[test]
    fn settles_the_right_tag_in_a_full_window_and_ignores_unknown_ones() {
        let mut w = Window::default();
        for t in 1..=2000 {
            w.register(t);
        }
        w.settle(5000, Settle::Ack);
        w.settle(0, Settle::Ack);
        assert_eq!(w.pending(), 0, "tags the window never saw change nothing");
        // Every other tag from the top, then the rest: one multiple ack at the end.
        for t in (1..=2000).rev().step_by(2) {
            w.settle(t, Settle::Ack);
        }
        assert_eq!(w.pending(), 1000);
        assert!(w.drain(5000).is_empty(), "tag 1 is not settled yet");
        for t in (1..=1999).step_by(2) {
            w.settle(t, Settle::Ack);
        }
        assert_eq!(w.drain(5000), vec![Op::AckUpTo(2000)]);
        assert_eq!(w.pending(), 0);
    }
}

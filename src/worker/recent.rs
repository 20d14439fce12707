//! The outcomes of recent notifications by apns-id, and whether their settlement was
//! carried out, so that a job the broker redelivers (its ack lost with a connection, or
//! requeued after a failed publish) is settled from what APNs already answered instead
//! of being sent twice, and its event or dead letter is not published twice.
//! Bounded: the oldest entries leave first.
//!
//! The key is the message, not the notification: (apns-id, hop), where `hop` counts
//! the worker's republishes of the job (`x-apns-hop`: retries and parks). A retry's
//! copy is a new message with the same apns-id; keyed by apns-id alone, a redelivered
//! copy would be taken for its already settled original and acked unsent.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

use apns::classify::Outcome;

/// What is remembered of one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub outcome: Outcome,
    /// The settlement's publishes were confirmed and its ack was sent.
    pub settled: bool,
}

/// One message of a job: its apns-id and how many times the worker republished it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub apns_id: Uuid,
    pub hop: u32,
}

pub struct Recent {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    map: HashMap<Key, Entry, KeyHasher>,
    order: VecDeque<Key>,
}

/// apns-ids are UUIDs (random, or v5 hashes of job ids): their bits are already
/// uniform, so folding them is as good a hash as SipHash at a fraction of the cost.
#[derive(Clone, Copy, Default)]
struct KeyHasher;

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = Fold;
    fn build_hasher(&self) -> Fold {
        Fold(0)
    }
}

struct Fold(u64);

impl std::hash::Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity_and_hasher(capacity.min(1 << 16), KeyHasher),
                order: VecDeque::with_capacity(capacity.min(1 << 16)),
            }),
            capacity,
        }
    }

    /// Remember the latest outcome of a notification (not yet settled).
    pub fn insert(&self, id: Key, outcome: Outcome) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("recent lock");
        let entry = Entry {
            outcome,
            settled: false,
        };
        if g.map.insert(id, entry).is_none() {
            g.order.push_back(id);
            while g.order.len() > self.capacity {
                if let Some(old) = g.order.pop_front() {
                    g.map.remove(&old);
                }
            }
        }
    }

    /// The settlement of the latest outcome was carried out.
    pub fn mark_settled(&self, id: &Key) {
        if let Some(e) = self.inner.lock().expect("recent lock").map.get_mut(id) {
            e.settled = true;
        }
    }

    pub fn get(&self, id: &Key) -> Option<Entry> {
        self.inner.lock().expect("recent lock").map.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_capacity_and_tracks_settlement() {
        let r = Recent::new(2);
        let ids: Vec<Key> = (0..3)
            .map(|_| Key {
                apns_id: Uuid::new_v4(),
                hop: 0,
            })
            .collect();
        for id in &ids {
            r.insert(*id, Outcome::Delivered);
        }
        assert_eq!(r.get(&ids[0]), None);
        assert_eq!(r.get(&ids[2]).map(|e| e.settled), Some(false));
        r.mark_settled(&ids[2]);
        assert_eq!(r.get(&ids[2]).map(|e| e.settled), Some(true));
        r.insert(
            ids[2],
            Outcome::Rejected {
                status: 400,
                reason: None,
            },
        );
        let e = r.get(&ids[2]).unwrap();
        assert!(
            matches!(e.outcome, Outcome::Rejected { .. }),
            "latest outcome wins"
        );
        assert!(!e.settled, "a new outcome is not settled yet");
        let copy = Key { hop: 1, ..ids[2] };
        assert_eq!(r.get(&copy), None, "a retry's copy is another message");
    }
}

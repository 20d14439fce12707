//! The outcomes of recent notifications by apns-id, and whether their settlement was
//! carried out, so that a job the broker redelivers (its ack lost with a connection, or
//! requeued after a failed publish) is settled from what APNs already answered instead
//! of being sent twice, and its event or dead letter is not published twice.
//! Bounded: the oldest entries leave first.
//!
//! A message being sent is marked in flight first, and its twin (the same key: a copy
//! that RabbitMQ's at-least-once dead-lettering delivered twice, or a redelivery while
//! the first is still out) waits for that answer instead of sending it again.
//!
//! The key is the message, not the notification: (apns-id, lineage, hop), where `hop`
//! counts the worker's republishes of the job (retries and parks) and the lineage tells
//! a replayed dead letter's run from the original's (`job::control`). A retry's copy is
//! a new message with the same apns-id; keyed by apns-id alone, a redelivered copy
//! would be taken for its already settled original and acked unsent.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

use apns::classify::Outcome;

/// What is remembered of one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub outcome: Outcome,
    /// APNs called the token bad, and this other environment accepted the
    /// notification (the environment guard): the settlement is a mismatch event.
    pub accepted_elsewhere: Option<String>,
    /// The settlement's publishes were confirmed and its ack was sent.
    pub settled: bool,
}

/// What a message finds when it claims its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody has it: it is now in flight under this message.
    Mine,
    /// Another message with the key is being sent now.
    InFlight,
    /// Its answer is known.
    Known(Entry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Slot {
    /// Being sent.
    InFlight,
    /// Answered; `settling` while its settlement is being carried out (a twin waits
    /// for that too, so that it does not carry out the same settlement beside it).
    Answered { entry: Entry, settling: bool },
}

/// One step of a job: its apns-id, its lineage and its hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub apns_id: Uuid,
    pub lineage: u64,
    pub hop: u32,
}

pub struct Recent {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    map: HashMap<Key, Slot, KeyHasher>,
    order: VecDeque<Key>,
}

impl Inner {
    fn put(&mut self, id: Key, slot: Slot, capacity: usize) {
        if self.map.insert(id, slot).is_none() {
            self.order.push_back(id);
            while self.order.len() > capacity {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
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
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
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

    /// Claim `id` before sending. `consult`: a redelivery or a worker-made copy, which
    /// may have a twin; it gets what is known of the key. Otherwise the message is a new
    /// job and takes the key whatever was there.
    pub fn claim(&self, id: Key, consult: bool) -> Claim {
        if self.capacity == 0 {
            return Claim::Mine;
        }
        let mut g = self.inner.lock().expect("recent lock");
        if consult {
            match g.map.get(&id) {
                Some(Slot::InFlight | Slot::Answered { settling: true, .. }) => {
                    return Claim::InFlight;
                }
                Some(Slot::Answered { entry, .. }) => return Claim::Known(entry.clone()),
                None => {}
            }
        }
        g.put(id, Slot::InFlight, self.capacity);
        Claim::Mine
    }

    /// The claimed message was not sent after all (withdrawn): forget the claim, so a
    /// later delivery of it is sent.
    pub fn release(&self, id: &Key) {
        let mut g = self.inner.lock().expect("recent lock");
        if g.map.get(id) == Some(&Slot::InFlight) {
            g.map.remove(id);
            g.order.retain(|k| k != id);
        }
    }

    /// Remember the latest outcome of a notification; its settlement is under way.
    pub fn insert(&self, id: Key, outcome: Outcome) {
        self.insert_answer(id, outcome, None);
    }

    /// As `insert`, for a token the other environment accepted.
    pub fn insert_answer(&self, id: Key, outcome: Outcome, accepted_elsewhere: Option<String>) {
        if self.capacity == 0 {
            return;
        }
        let entry = Entry {
            outcome,
            accepted_elsewhere,
            settled: false,
        };
        let mut g = self.inner.lock().expect("recent lock");
        g.put(
            id,
            Slot::Answered {
                entry,
                settling: true,
            },
            self.capacity,
        );
    }

    /// The settlement of the latest outcome was carried out (`true`), or its publish
    /// failed and the message was requeued (`false`: a redelivery carries it out again).
    pub fn settled(&self, id: &Key, done: bool) {
        let mut g = self.inner.lock().expect("recent lock");
        if let Some(Slot::Answered { entry, settling }) = g.map.get_mut(id) {
            entry.settled |= done;
            *settling = false;
        }
    }

    /// What is known of `id` (not an in-flight claim).
    #[cfg(test)]
    pub fn get(&self, id: &Key) -> Option<Entry> {
        match self.inner.lock().expect("recent lock").map.get(id) {
            Some(Slot::Answered { entry, .. }) => Some(entry.clone()),
            _ => None,
        }
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
                lineage: 0,
                hop: 0,
            })
            .collect();
        for id in &ids {
            r.insert(*id, Outcome::Delivered);
        }
        assert_eq!(r.get(&ids[0]), None);
        assert_eq!(r.get(&ids[2]).map(|e| e.settled), Some(false));
        r.settled(&ids[2], true);
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

    #[test]
    fn a_twin_waits_for_the_message_in_flight() {
        let r = Recent::new(10);
        let k = Key {
            apns_id: Uuid::new_v4(),
            lineage: 0,
            hop: 2,
        };
        assert_eq!(r.claim(k, true), Claim::Mine);
        assert_eq!(r.claim(k, true), Claim::InFlight, "its twin");
        r.insert(k, Outcome::Delivered);
        assert_eq!(
            r.claim(k, true),
            Claim::InFlight,
            "settling: the twin still waits"
        );
        r.settled(&k, false);
        assert_eq!(
            r.claim(k, true),
            Claim::Known(Entry {
                outcome: Outcome::Delivered,
                accepted_elsewhere: None,
                settled: false
            })
        );
        assert_eq!(r.claim(k, false), Claim::Mine, "a new job takes the key");
        r.release(&k);
        assert_eq!(
            r.claim(k, true),
            Claim::Mine,
            "a withdrawn claim is forgotten"
        );
        r.insert(k, Outcome::Delivered);
        r.release(&k);
        assert!(r.get(&k).is_some(), "release never forgets an answer");
    }
}

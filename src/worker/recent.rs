//! The outcomes of recent notifications by apns-id, so that a job the broker
//! redelivers (after a reconnect or a requeue) is settled from what APNs already
//! answered instead of being sent twice. Bounded: the oldest entries leave first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use uuid::Uuid;

use crate::apns::classify::Outcome;

pub struct Recent {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    map: HashMap<Uuid, Outcome>,
    order: VecDeque<Uuid>,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent {
            inner: Mutex::new(Inner {
                map: HashMap::with_capacity(capacity.min(1 << 16)),
                order: VecDeque::with_capacity(capacity.min(1 << 16)),
            }),
            capacity,
        }
    }

    pub fn insert(&self, id: Uuid, outcome: Outcome) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock().expect("recent lock");
        if g.map.insert(id, outcome).is_none() {
            g.order.push_back(id);
            while g.order.len() > self.capacity {
                if let Some(old) = g.order.pop_front() {
                    g.map.remove(&old);
                }
            }
        }
    }

    pub fn get(&self, id: &Uuid) -> Option<Outcome> {
        self.inner.lock().expect("recent lock").map.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_capacity() {
        let r = Recent::new(2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            r.insert(*id, Outcome::Delivered);
        }
        assert_eq!(r.get(&ids[0]), None);
        assert_eq!(r.get(&ids[2]), Some(Outcome::Delivered));
        r.insert(
            ids[2],
            Outcome::Rejected {
                status: 400,
                reason: None,
            },
        );
        assert!(
            matches!(r.get(&ids[2]), Some(Outcome::Rejected { .. })),
            "latest outcome wins"
        );
    }
}

//! The worker's own headers, read only where the worker wrote them. A retry or park is
//! a new message that the worker publishes to one of its delay queues with
//! `x-attempts`, `x-apns-hop`, `x-apns-lineage`, `x-apns-config-waits` and, for jobs
//! without an id, `x-apns-id`; RabbitMQ moves it back to the jobs queue when its TTL
//! expires, and records that move in `x-death`. Those headers are trusted only on a
//! message whose newest `x-death` entry says it expired in one of this worker's delay
//! queues (`<retry_prefix>.<ms>ms`). On any other message (a new job, a producer that set
//! the headers itself, a dead letter replayed by a shovel or by hand) they are ignored:
//! it is a new job, sent from attempt 1.
//!
//! The memory of recent outcomes keys a message by (apns-id, lineage, hop): the job
//! after `hop` republishes, in one lineage. A job published by a producer starts
//! lineage 0; a replayed dead letter starts a lineage of its own, a number derived
//! from the `x-apns-dead-letter-id` its dead letter was given, so that a replay and its
//! retries never meet the original's memory; copies carry their lineage on. Two
//! messages at the same step of one lineage (a redelivered original and its copy's
//! twin, twins from RabbitMQ's at-least-once dead-lettering) are one step of one job:
//! one is sent, the other settled from its answer.
//!
//! Why `x-death` and not a per-copy id the worker remembers: the copy may come back to
//! another replica, or to this one after a restart, and must still count its attempts
//! (or its retries would never end). A producer could forge `x-death` too; what it
//! gains is to have its own job treated as a retry of itself. Dead letters are
//! published without `x-death` and without the hop and apns-id headers, so a replayed
//! dead letter is a new job.
//!
//! On a trusted copy the values are checked like a body: a whole number in range, or
//! the job is invalid with the exact problem. Pure: a table of header values in, the
//! control values or the problem out.

use uuid::Uuid;

/// An AMQP header value, as far as the checks need to tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// Any of AMQP's integer types.
    Int(i128),
    Text(&'a str),
    /// Another type (its AMQP name, for the error).
    Other(&'static str),
}

/// The headers the worker reads back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers<'a> {
    pub attempts: Option<Value<'a>>,
    pub hop: Option<Value<'a>>,
    pub apns_id: Option<Value<'a>>,
    pub lineage: Option<Value<'a>>,
    pub dead_letter_id: Option<Value<'a>>,
    pub config_waits: Option<Value<'a>>,
    /// The newest `x-death` entry: (queue, reason).
    pub death: Option<(&'a str, &'a str)>,
}

/// What the worker trusts of a message's headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Sends to APNs so far.
    pub attempts: u32,
    /// How many times the worker republished the job through its delay queues.
    pub hop: u32,
    /// The apns-id drawn for a job without an id, on its retries.
    pub apns_id: Option<Uuid>,
    /// Which run of the job this is: 0 for the producer's, else a replay's.
    pub lineage: u64,
    /// The message came back from one of this worker's delay queues.
    pub from_delay_queue: bool,
    /// Parks so far waiting for a configuration that knows the job's app or topic.
    pub config_waits: u32,
}

/// A header on a copy from the worker's delay queue that the worker did not write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("header {name} must be a whole number from 0 to {max}, not {found}")]
pub struct ControlError {
    pub name: &'static str,
    pub max: u32,
    pub found: String,
}

/// Is `queue` one of the delay queues, named `<retry_prefix>.<ms>ms` (or, before the
/// ready queue, `<retry_prefix>.<ms>`: copies still in those during an upgrade)?
pub fn is_delay_queue(queue: &str, retry_prefix: &str) -> bool {
    queue
        .strip_prefix(retry_prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|ms| ms.strip_suffix("ms").unwrap_or(ms))
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
}

fn count(name: &'static str, v: Option<Value<'_>>) -> Result<u32, ControlError> {
    let bad = |found: String| ControlError {
        name,
        max: u32::MAX,
        found,
    };
    match v {
        None => Ok(0),
        Some(Value::Int(n)) => u32::try_from(n).map_err(|_| bad(n.to_string())),
        Some(Value::Text(s)) => Err(bad(format!("the text {s:?}"))),
        Some(Value::Other(t)) => Err(bad(format!("a value of type {t}"))),
    }
}

/// Read the control values of a message.
pub fn read(h: &Headers<'_>, retry_prefix: &str) -> Result<Control, ControlError> {
    let from_delay_queue = h
        .death
        .is_some_and(|(queue, reason)| reason == "expired" && is_delay_queue(queue, retry_prefix));
    if !from_delay_queue {
        let lineage = match h.dead_letter_id {
            Some(Value::Text(id)) => fnv1a(id.as_bytes()).max(1),
            _ => 0,
        };
        return Ok(Control {
            lineage,
            ..Control::default()
        });
    }
    let hop = count("x-apns-hop", h.hop)?;
    Ok(Control {
        attempts: count("x-attempts", h.attempts)?,
        config_waits: count("x-apns-config-waits", h.config_waits)?,
        hop,
        apns_id: match h.apns_id {
            Some(Value::Text(s)) => Uuid::parse_str(s).ok(),
            _ => None,
        },
        lineage: match h.lineage {
            Some(Value::Int(n)) => n as u64,
            _ => 0,
        },
        from_delay_queue,
    })
}

/// FNV-1a: a stable 64-bit number from a dead letter's id (any string).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    fn ours(attempts: Option<Value<'static>>, hop: Option<Value<'static>>) -> Headers<'static> {
        Headers {
            attempts,
            hop,
            apns_id: Some(Value::Text(ID)),
            lineage: Some(Value::Int(77)),
            dead_letter_id: None,
            config_waits: Some(Value::Int(2)),
            death: Some(("apns.jobs.retry.1000", "expired")),
        }
    }

    #[test]
    fn trusted_only_from_this_workers_delay_queues() {
        let id = Uuid::parse_str(ID).unwrap();
        let full = Control {
            attempts: 3,
            hop: 2,
            apns_id: Some(id),
            lineage: 77,
            from_delay_queue: true,
            config_waits: 2,
        };
        let rows: &[(&str, Headers<'_>, Control)] = &[
            (
                "a copy from the delay queue",
                ours(Some(Value::Int(3)), Some(Value::Int(2))),
                full,
            ),
            (
                "no x-death: a producer's headers are ignored",
                Headers {
                    death: None,
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control::default(),
            ),
            (
                "a delivery-limit dead letter replayed from the DLQ",
                Headers {
                    death: Some(("apns.jobs", "delivery_limit")),
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control::default(),
            ),
            (
                "another worker's (another prefix) delay queue",
                Headers {
                    death: Some(("other.retry.1000", "expired")),
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control::default(),
            ),
            (
                "rejected from the delay queue, not expired",
                Headers {
                    death: Some(("apns.jobs.retry.1000", "rejected")),
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control::default(),
            ),
            (
                "a queue named like a delay queue but not one",
                Headers {
                    death: Some(("apns.jobs.retry.x1", "expired")),
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control::default(),
            ),
            (
                "a park copy without x-attempts",
                ours(None, Some(Value::Int(1))),
                Control {
                    attempts: 0,
                    hop: 1,
                    ..full
                },
            ),
            (
                "a malformed x-apns-id is ignored",
                Headers {
                    apns_id: Some(Value::Text("nope")),
                    ..ours(Some(Value::Int(3)), Some(Value::Int(2)))
                },
                Control {
                    apns_id: None,
                    ..full
                },
            ),
            (
                "the largest count",
                ours(Some(Value::Int(u32::MAX.into())), Some(Value::Int(1))),
                Control {
                    attempts: u32::MAX,
                    hop: 1,
                    ..full
                },
            ),
        ];
        for (what, h, want) in rows {
            assert_eq!(read(h, "apns.jobs.retry").as_ref(), Ok(want), "{what}");
        }
    }

    #[test]
    fn a_replay_starts_a_lineage_of_its_own() {
        let replayed = Headers {
            dead_letter_id: Some(Value::Text("dl-1")),
            death: None,
            ..ours(Some(Value::Int(8)), Some(Value::Int(7)))
        };
        let c = read(&replayed, "apns.jobs.retry").unwrap();
        assert!(!c.from_delay_queue && c.lineage > 0 && c.hop == 0, "{c:?}");
        let again = read(&replayed, "apns.jobs.retry").unwrap();
        assert_eq!(c.lineage, again.lineage, "stable for the same dead letter");
        let other = Headers {
            dead_letter_id: Some(Value::Text("dl-2")),
            ..replayed
        };
        assert_ne!(read(&other, "apns.jobs.retry").unwrap().lineage, c.lineage);
        let producers_copy = Headers {
            lineage: None,
            ..ours(Some(Value::Int(1)), Some(Value::Int(4)))
        };
        assert_eq!(read(&producers_copy, "apns.jobs.retry").unwrap().lineage, 0);
        let fresh = Headers::default();
        assert_eq!(read(&fresh, "apns.jobs.retry").unwrap(), Control::default());
    }

    #[test]
    fn a_count_in_the_wrong_form_is_named() {
        let rows: &[(Headers<'_>, &str)] = &[
            (
                ours(Some(Value::Text("3")), Some(Value::Int(1))),
                "header x-attempts must be a whole number from 0 to 4294967295, not the text \"3\"",
            ),
            (
                ours(Some(Value::Int(-1)), Some(Value::Int(1))),
                "header x-attempts must be a whole number from 0 to 4294967295, not -1",
            ),
            (
                ours(Some(Value::Int(4_294_967_296)), Some(Value::Int(1))),
                "not 4294967296",
            ),
            (
                ours(Some(Value::Int(1)), Some(Value::Other("float"))),
                "header x-apns-hop must be a whole number from 0 to 4294967295, not a value of type float",
            ),
        ];
        for (h, want) in rows {
            let e = read(h, "apns.jobs.retry").unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn delay_queue_names() {
        assert!(is_delay_queue("apns.jobs.retry.1000", "apns.jobs.retry"));
        assert!(is_delay_queue("apns.jobs.retry.1000ms", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs.retry.ms", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs.retry.ready", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs.retry.", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs.retry1000", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs.retry.10.5", "apns.jobs.retry"));
        assert!(!is_delay_queue("apns.jobs", "apns.jobs.retry"));
    }
}

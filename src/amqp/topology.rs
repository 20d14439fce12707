//! The topology the worker uses: the job queues (one per shard) and the urgent lane's,
//! their dead-letter exchange and queue,
//! the cleanup exchange and queue, the delay queues of retries and the ready queue they
//! expire into. Declared the same
//! way every time (idempotent); named in one place, so whoever deletes a test's or a
//! demo's topology deletes exactly what was declared.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};

use super::{AmqpError, long, text};
use crate::config::{QueueSettings, QueueType, RetrySettings};
use crate::settle::delay_levels;

/// Name of the delay queue for `level_ms`: `<retry_prefix>.<ms>ms`. (Before the ready
/// queue, delay queues were `<retry_prefix>.<ms>` and expired into the jobs queue; new
/// names, so that a running deployment's old delay queues, declared with the old
/// dead-letter target, are not re-declared with another: RabbitMQ would refuse it.)
pub fn delay_queue_name(q: &QueueSettings, level_ms: u64) -> String {
    format!("{}.{level_ms}ms", q.retry_prefix)
}

/// Name of the ready queue, `<retry_prefix>.ready`: where delay-queue copies expire
/// into, consumed beside the jobs queue with a prefetch of its own, so that a retry
/// that is due does not wait behind the jobs queue's backlog.
pub fn ready_queue_name(q: &QueueSettings) -> String {
    format!("{}.ready", q.retry_prefix)
}

/// Prefetch of the ready queue's consumer: a quarter of the jobs queue's, at least 1.
pub fn ready_prefetch(prefetch: u16) -> u16 {
    (prefetch / 4).max(1)
}

/// The job queues (`queues.shards` of them): `jobs` itself, then `<jobs>.1` to
/// `<jobs>.<shards - 1>`, so that raising the count keeps the first queue's backlog.
pub fn job_queue_names(q: &QueueSettings) -> Vec<String> {
    let mut names = Vec::with_capacity(usize::from(q.shards.max(1)));
    names.push(q.jobs.clone());
    names.extend((1..q.shards).map(|i| format!("{}.{i}", q.jobs)));
    names
}

/// What a replica consumes, in the order it looks at them, each with its prefetch:
/// the urgent lane (when set) and the ready queue with a quarter of `prefetch` each,
/// then the job queues, which share `prefetch` (each its share, at least 1).
pub fn consumed_queues(q: &QueueSettings, prefetch: u16) -> ConsumedQueues {
    let lane = ready_prefetch(prefetch);
    let mut queues = Vec::with_capacity(2 + usize::from(q.shards));
    if !q.urgent.is_empty() {
        queues.push((q.urgent.clone(), lane));
    }
    queues.push((ready_queue_name(q), lane));
    let first_job_queue = queues.len();
    let shards = q.shards.max(1);
    let share = prefetch.div_ceil(shards).max(1);
    queues.extend(job_queue_names(q).into_iter().map(|n| (n, share)));
    ConsumedQueues {
        queues,
        urgent: (!q.urgent.is_empty()).then_some(0),
        first_job_queue,
    }
}

/// The queues one replica consumes on its channel ([`consumed_queues`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedQueues {
    /// Name and prefetch, in the order they are looked at.
    pub queues: Vec<(String, u16)>,
    /// Index of the urgent lane's queue, if there is one.
    pub urgent: Option<usize>,
    /// Index of the first job queue: from there on the queues take turns.
    pub first_job_queue: usize,
}

impl ConsumedQueues {
    /// The smallest prefetch of any of them.
    pub fn smallest_prefetch(&self) -> u16 {
        self.queues.iter().map(|(_, p)| *p).min().unwrap_or(1)
    }
}

/// A queue argument's value: the two forms the topology uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Argument {
    Text(String),
    Int(i64),
}

/// The kind of an exchange the worker declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeType {
    Direct,
    Topic,
}

impl ExchangeType {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
        }
    }
}

/// One declaration of the topology. Every queue and exchange is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Declaration {
    Exchange {
        name: String,
        kind: ExchangeType,
    },
    Queue {
        name: String,
        /// `x-` arguments, `x-queue-type` first.
        arguments: Vec<(&'static str, Argument)>,
    },
    Binding {
        queue: String,
        exchange: String,
        routing_key: String,
    },
}

fn queue_arguments(
    kind: QueueType,
    extra: Vec<(&'static str, Argument)>,
) -> Vec<(&'static str, Argument)> {
    let type_name = match kind {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    let mut args = vec![("x-queue-type", Argument::Text(type_name.into()))];
    if kind == QueueType::Quorum {
        // Dead-lettering from quorum queues is at-most-once unless asked otherwise.
        args.push((
            "x-dead-letter-strategy",
            Argument::Text("at-least-once".into()),
        ));
        args.push(("x-overflow", Argument::Text("reject-publish".into())));
    }
    args.extend(extra);
    args
}

/// Everything the worker declares, in the order it declares it: the one description
/// of the topology, which `declare_topology` carries out and `apns-worker topology`
/// prints as Messaging Topology Operator objects (for `queues.declare = false`).
pub fn plan(q: &QueueSettings, r: &RetrySettings) -> Vec<Declaration> {
    let text = |s: &str| Argument::Text(s.to_string());
    let queue = |name: &str, extra| Declaration::Queue {
        name: name.to_string(),
        arguments: queue_arguments(q.jobs_type, extra),
    };
    let exchange = |name: &str, kind| Declaration::Exchange {
        name: name.to_string(),
        kind,
    };
    let binding = |queue: &str, exchange: &str, key: &str| Declaration::Binding {
        queue: queue.to_string(),
        exchange: exchange.to_string(),
        routing_key: key.to_string(),
    };
    let mut d = vec![
        exchange(&q.dead_letter_exchange, ExchangeType::Direct),
        queue(&q.dead_letter_queue, vec![]),
        binding(&q.dead_letter_queue, &q.dead_letter_exchange, &q.jobs),
    ];
    let mut jobs_extra = vec![
        ("x-dead-letter-exchange", text(&q.dead_letter_exchange)),
        ("x-dead-letter-routing-key", text(&q.jobs)),
    ];
    if q.jobs_type == QueueType::Quorum {
        jobs_extra.push((
            "x-delivery-limit",
            Argument::Int(i64::from(q.delivery_limit)),
        ));
    }
    for name in job_queue_names(q) {
        d.push(queue(&name, jobs_extra.clone()));
    }
    if !q.urgent.is_empty() {
        d.push(queue(&q.urgent, jobs_extra.clone()));
    }
    d.push(queue(&ready_queue_name(q), jobs_extra));
    let mut events = vec![
        (&q.cleanup_exchange, &q.cleanup_queue),
        (&q.environment_exchange, &q.environment_queue),
    ];
    if q.outcomes {
        events.push((&q.outcome_exchange, &q.outcome_queue));
    }
    for (ex, qu) in events {
        d.push(exchange(ex, ExchangeType::Topic));
        if !qu.is_empty() {
            d.push(queue(qu, vec![]));
            d.push(binding(qu, ex, "#"));
        }
    }
    for level in delay_levels(r) {
        d.push(queue(
            &delay_queue_name(q, level),
            vec![
                ("x-message-ttl", Argument::Int(level as i64)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&ready_queue_name(q))),
            ],
        ));
    }
    d
}

fn field_table(arguments: &[(&'static str, Argument)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in arguments {
        let v = match v {
            Argument::Text(s) => text(s),
            Argument::Int(n) => long(*n),
        };
        t.insert((*k).into(), v);
    }
    t
}

async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) -> Result<(), AmqpError> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map(|_| ())
    .map_err(|source| declare_error("queue", name, source))
}

/// How many messages `queue` holds, if it exists: a passive declare on a channel of its
/// own (the broker closes a channel whose passive declare names no queue). `None` when
/// it does not exist or cannot be asked.
pub async fn depth_if_exists(conn: &Connection, queue: &str) -> Option<u32> {
    let ch = conn.create_channel().await.ok()?;
    let depth = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()
        .map(|q| q.message_count());
    if ch.status().connected() {
        let _ = ch.close(200, "done".into()).await;
    }
    depth
}

/// A refused declaration: PRECONDITION_FAILED (406) means the queue or exchange
/// exists with other arguments, which no retry can fix.
fn declare_error(what: &'static str, name: &str, source: lapin::Error) -> AmqpError {
    if let lapin::ErrorKind::ProtocolError(e) = source.kind() {
        if e.get_id() == 406 {
            return AmqpError::ArgumentsDiffer {
                what,
                name: name.into(),
                detail: e.get_message().to_string(),
            };
        }
    }
    AmqpError::Declare {
        what,
        name: name.into(),
        source,
    }
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) -> Result<(), AmqpError> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|source| declare_error("exchange", name, source))
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|source| AmqpError::Declare {
        what: "binding of queue",
        name: queue.into(),
        source,
    })
}

/// Declare everything the worker uses ([`plan`]). Idempotent: the same arguments
/// every time.
pub async fn declare_topology(
    ch: &Channel,
    q: &QueueSettings,
    r: &RetrySettings,
) -> Result<(), AmqpError> {
    for d in plan(q, r) {
        match d {
            Declaration::Exchange { name, kind } => {
                let kind = match kind {
                    ExchangeType::Direct => ExchangeKind::Direct,
                    ExchangeType::Topic => ExchangeKind::Topic,
                };
                declare_exchange(ch, &name, kind).await?
            }
            Declaration::Queue { name, arguments } => {
                declare_queue(ch, &name, field_table(&arguments)).await?
            }
            Declaration::Binding {
                queue,
                exchange,
                routing_key,
            } => bind(ch, &queue, &exchange, &routing_key).await?,
        }
    }
    Ok(())
}

/// The names of one topology: its queue settings and the delay levels of its retries.
#[derive(Clone, Copy, Debug)]
pub struct Topology<'a> {
    pub queues: &'a QueueSettings,
    pub retry: &'a RetrySettings,
}

impl Topology<'_> {
    /// Every queue the worker declares: jobs, dead letters, cleanup (when declared),
    /// and the delay queues.
    pub fn queue_names(&self) -> Vec<String> {
        let q = self.queues;
        let mut names = job_queue_names(q);
        names.extend([ready_queue_name(q), q.dead_letter_queue.clone()]);
        if !q.urgent.is_empty() {
            names.push(q.urgent.clone());
        }
        let outcome_queue = if q.outcomes {
            q.outcome_queue.as_str()
        } else {
            ""
        };
        for extra in [
            q.cleanup_queue.as_str(),
            q.environment_queue.as_str(),
            outcome_queue,
        ] {
            if !extra.is_empty() {
                names.push(extra.to_string());
            }
        }
        names.extend(self.delay_queue_names());
        names
    }

    /// The delay queues, shortest delay first.
    pub fn delay_queue_names(&self) -> Vec<String> {
        delay_levels(self.retry)
            .into_iter()
            .map(|l| delay_queue_name(self.queues, l))
            .collect()
    }

    /// Every exchange the worker declares.
    pub fn exchange_names(&self) -> Vec<String> {
        let q = self.queues;
        let mut names = vec![
            q.dead_letter_exchange.clone(),
            q.cleanup_exchange.clone(),
            q.environment_exchange.clone(),
        ];
        if q.outcomes {
            names.push(q.outcome_exchange.clone());
        }
        names
    }

    /// Every queue and exchange of the topology, queues first.
    pub fn entities(&self) -> Vec<Entity> {
        let queues = self.queue_names().into_iter().map(Entity::Queue);
        queues
            .chain(self.exchange_names().into_iter().map(Entity::Exchange))
            .collect()
    }

    /// Delete every queue and exchange of the topology (tests, the demo, benchmarks:
    /// never a production topology); returns what could not be deleted.
    pub async fn delete(&self, conn: &Connection) -> Vec<Entity> {
        delete_entities(conn, self.entities()).await
    }
}

/// A queue or an exchange, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entity {
    Queue(String),
    Exchange(String),
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Queue(n) => write!(f, "queue {n}"),
            Entity::Exchange(n) => write!(f, "exchange {n}"),
        }
    }
}

/// Delete these queues and exchanges; returns the ones whose delete failed. A failed
/// delete closes its channel, so the next one gets a fresh channel.
pub async fn delete_entities(conn: &Connection, entities: Vec<Entity>) -> Vec<Entity> {
    let mut failed = Vec::new();
    let mut ch: Option<Channel> = None;
    for e in entities {
        if ch.as_ref().is_none_or(|c| !c.status().connected()) {
            ch = conn.create_channel().await.ok();
        }
        let Some(c) = &ch else {
            failed.push(e);
            continue;
        };
        let r = match &e {
            Entity::Queue(n) => c
                .queue_delete(n.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ()),
            Entity::Exchange(n) => {
                c.exchange_delete(n.as_str().into(), ExchangeDeleteOptions::default())
                    .await
            }
        };
        if r.is_err() {
            failed.push(e);
        }
    }
    if let Some(c) = ch {
        let _ = c.close(200, "bye".into()).await;
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(shards: u16, urgent: &str) -> QueueSettings {
        QueueSettings {
            shards,
            urgent: urgent.into(),
            ..QueueSettings::default()
        }
    }

    #[test]
    fn what_a_replica_consumes_and_with_which_prefetch() {
        let names = |c: &ConsumedQueues| {
            c.queues
                .iter()
                .map(|(n, p)| format!("{n}:{p}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (shards, urgent, prefetch, want, first) in [
            (1, "", 2000, "apns.jobs.retry.ready:500 apns.jobs:2000", 1),
            (
                1,
                "apns.urgent",
                2000,
                "apns.urgent:500 apns.jobs.retry.ready:500 apns.jobs:2000",
                2,
            ),
            (
                4,
                "",
                2000,
                "apns.jobs.retry.ready:500 apns.jobs:500 apns.jobs.1:500 apns.jobs.2:500 apns.jobs.3:500",
                1,
            ),
            // Shares round up, and never reach 0.
            (
                3,
                "",
                50,
                "apns.jobs.retry.ready:12 apns.jobs:17 apns.jobs.1:17 apns.jobs.2:17",
                1,
            ),
            (
                3,
                "apns.urgent",
                2,
                "apns.urgent:1 apns.jobs.retry.ready:1 apns.jobs:1 apns.jobs.1:1 apns.jobs.2:1",
                2,
            ),
        ] {
            let c = consumed_queues(&queues(shards, urgent), prefetch);
            assert_eq!(names(&c), want, "{shards} shards, urgent {urgent:?}");
            assert_eq!(c.first_job_queue, first);
            assert_eq!(c.urgent, (!urgent.is_empty()).then_some(0));
        }
    }

    #[test]
    fn every_shard_is_declared_like_the_jobs_queue_and_dead_letters_to_one_queue() {
        let q = queues(3, "");
        let plan = plan(&q, &RetrySettings::default());
        let declared: Vec<_> = plan
            .iter()
            .filter_map(|d| match d {
                Declaration::Queue { name, arguments } if name.starts_with("apns.jobs") => {
                    Some((name.clone(), arguments.clone()))
                }
                _ => None,
            })
            .collect();
        let jobs = &declared.iter().find(|(n, _)| n == "apns.jobs").unwrap().1;
        for shard in ["apns.jobs.1", "apns.jobs.2"] {
            let args = &declared.iter().find(|(n, _)| n == shard).unwrap().1;
            assert_eq!(args, jobs, "{shard} is declared as the jobs queue is");
        }
        assert!(!declared.iter().any(|(n, _)| n == "apns.jobs.3"));
        let names = Topology {
            queues: &q,
            retry: &RetrySettings::default(),
        }
        .queue_names();
        assert_eq!(&names[..3], ["apns.jobs", "apns.jobs.1", "apns.jobs.2"]);
        assert_eq!(job_queue_names(&queues(1, "")), ["apns.jobs"]);
    }
}

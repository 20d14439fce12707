//! The topology the worker uses: the jobs queue, its dead-letter exchange and queue,
//! the cleanup exchange and queue, and the delay queues of retries. Declared the same
//! way every time (idempotent); named in one place, so whoever deletes a test's or a
//! demo's topology deletes exactly what was declared.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use super::{AmqpError, long, text};
use crate::config::{QueueSettings, QueueType, RetrySettings};
use crate::settle::delay_levels;

/// Name of the delay queue for `level_ms`.
pub fn delay_queue_name(q: &QueueSettings, level_ms: u64) -> String {
    format!("{}.{level_ms}", q.retry_prefix)
}

fn queue_args(kind: QueueType, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    let type_name = match kind {
        QueueType::Quorum => "quorum",
        QueueType::Classic => "classic",
    };
    t.insert("x-queue-type".into(), text(type_name));
    if kind == QueueType::Quorum {
        // Dead-lettering from quorum queues is at-most-once unless asked otherwise.
        t.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        t.insert("x-overflow".into(), text("reject-publish"));
    }
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
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

/// Declare everything the worker uses. Idempotent: the same arguments every time.
pub async fn declare_topology(
    ch: &Channel,
    q: &QueueSettings,
    r: &RetrySettings,
) -> Result<(), AmqpError> {
    declare_exchange(ch, &q.dead_letter_exchange, ExchangeKind::Direct).await?;
    declare_queue(ch, &q.dead_letter_queue, queue_args(q.jobs_type, &[])).await?;
    bind(ch, &q.dead_letter_queue, &q.dead_letter_exchange, &q.jobs).await?;

    let mut jobs_extra = vec![
        ("x-dead-letter-exchange", text(&q.dead_letter_exchange)),
        ("x-dead-letter-routing-key", text(&q.jobs)),
    ];
    if q.jobs_type == QueueType::Quorum {
        jobs_extra.push(("x-delivery-limit", long(i64::from(q.delivery_limit))));
    }
    declare_queue(ch, &q.jobs, queue_args(q.jobs_type, &jobs_extra)).await?;

    declare_exchange(ch, &q.cleanup_exchange, ExchangeKind::Topic).await?;
    if !q.cleanup_queue.is_empty() {
        declare_queue(ch, &q.cleanup_queue, queue_args(q.jobs_type, &[])).await?;
        bind(ch, &q.cleanup_queue, &q.cleanup_exchange, "#").await?;
    }

    declare_exchange(ch, &q.environment_exchange, ExchangeKind::Topic).await?;
    if !q.environment_queue.is_empty() {
        declare_queue(ch, &q.environment_queue, queue_args(q.jobs_type, &[])).await?;
        bind(ch, &q.environment_queue, &q.environment_exchange, "#").await?;
    }

    for level in delay_levels(r) {
        let args = queue_args(
            q.jobs_type,
            &[
                ("x-message-ttl", long(level as i64)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&q.jobs)),
            ],
        );
        declare_queue(ch, &delay_queue_name(q, level), args).await?;
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
        let mut names = vec![q.jobs.clone(), q.dead_letter_queue.clone()];
        for extra in [&q.cleanup_queue, &q.environment_queue] {
            if !extra.is_empty() {
                names.push(extra.clone());
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
        vec![
            self.queues.dead_letter_exchange.clone(),
            self.queues.cleanup_exchange.clone(),
            self.queues.environment_exchange.clone(),
        ]
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

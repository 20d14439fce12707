//! RabbitMQ: connecting, declaring the topology, consuming, and confirmed publishing.
//! With `acker`, the only part of the worker that touches lapin.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::config::{BrokerSettings, ConfigError, QueueSettings, QueueType, RetrySettings};
use crate::worker::settle::delay_levels;

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker URL: {0}")]
    Url(#[from] ConfigError),
    #[error("connecting to the broker failed: {0}")]
    Connect(lapin::Error),
    #[error("opening a channel failed: {0}")]
    Channel(lapin::Error),
    #[error(
        "declaring {what} {name:?} failed: {source} (if it exists with other arguments, delete it or set queues.declare = false)"
    )]
    Declare {
        what: &'static str,
        name: String,
        source: lapin::Error,
    },
    #[error("starting the consumer on {queue:?} failed: {source}")]
    Consume { queue: String, source: lapin::Error },
    #[error("the broker connection was lost: {0}")]
    Lost(String),
}

/// Why a confirmed publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish to {exchange:?}/{routing_key:?} was returned unroutable: {reply}")]
    Returned {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    #[error("the broker refused the publish (nack)")]
    Nacked,
    #[error("publishing failed on the channel: {0}")]
    Channel(lapin::Error),
}

impl PublishError {
    /// Does this failure mean the channel or the topology is broken (reconnect and
    /// redeclare), rather than a one-off refusal?
    pub fn breaks_session(&self) -> bool {
        !matches!(self, PublishError::Nacked)
    }
}

/// Name of the delay queue for `level_ms`.
pub fn delay_queue_name(q: &QueueSettings, level_ms: u64) -> String {
    format!("{}.{level_ms}", q.retry_prefix)
}

fn long(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// Connect with the replica's name shown in the management UI.
pub async fn connect(b: &BrokerSettings) -> Result<Connection, AmqpError> {
    let url = b.effective_url()?;
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(b.connection_name()));
    Connection::connect(url.expose(), props)
        .await
        .map_err(AmqpError::Connect)
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
    .map_err(|source| AmqpError::Declare {
        what: "queue",
        name: name.into(),
        source,
    })
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
    .map_err(|source| AmqpError::Declare {
        what: "exchange",
        name: name.into(),
        source,
    })
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

/// A channel in confirm mode for the worker's own publishes.
#[derive(Clone)]
pub struct Publisher {
    ch: Channel,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, AmqpError> {
        let ch = conn.create_channel().await.map_err(AmqpError::Channel)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        Ok(Publisher { ch })
    }

    pub fn channel(&self) -> &Channel {
        &self.ch
    }

    /// Publish with `mandatory` and wait for the broker's confirm. Ok only if the
    /// broker acknowledged it and routed it to at least one queue.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await
            .map_err(PublishError::Channel)?
            .await
            .map_err(PublishError::Channel)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret)) => {
                Err(PublishError::Returned {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    reply: ret.reply_text.to_string(),
                })
            }
            Confirmation::Nack(None) => Err(PublishError::Nacked),
            Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

/// One delivery, reduced to what the worker needs; the lapin types stay here.
pub struct Incoming {
    pub tag: u64,
    pub redelivered: bool,
    pub body: Bytes,
    pub props: BasicProperties,
}

impl Incoming {
    fn from_delivery(d: Delivery) -> Incoming {
        Incoming {
            tag: d.delivery_tag,
            redelivered: d.redelivered,
            body: Bytes::from(d.data),
            props: d.properties,
        }
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(&ShortString::from(name)))
    }

    /// A header as a non-negative integer, whatever integer type the producer used.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        match self.header(name)? {
            AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
            AMQPValue::ShortShortUInt(v) => Some(u64::from(*v)),
            AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
            AMQPValue::ShortUInt(v) => Some(u64::from(*v)),
            AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
            AMQPValue::LongUInt(v) => Some(u64::from(*v)),
            AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
            AMQPValue::Timestamp(v) => Some(*v),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// A header as a u32 (attempt counters).
    pub fn header_u32(&self, name: &str) -> Option<u32> {
        self.header_u64(name).and_then(|v| u32::try_from(v).ok())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        match self.header(name)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    /// The string headers, for trace-context extraction.
    pub fn text_headers(&self) -> Vec<(&str, &str)> {
        let Some(h) = self.props.headers().as_ref() else {
            return Vec::new();
        };
        h.inner()
            .iter()
            .filter_map(|(k, v)| match v {
                AMQPValue::LongString(s) => {
                    Some((k.as_str(), std::str::from_utf8(s.as_bytes()).ok()?))
                }
                AMQPValue::ShortString(s) => Some((k.as_str(), s.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The trace id of the producer's `traceparent` header, for log lines.
    pub fn trace_id(&self) -> Option<&str> {
        self.header_str("traceparent")
            .and_then(crate::telemetry::trace_id_of)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.props.content_type().as_ref().map(|s| s.as_str())
    }

    pub fn message_id(&self) -> Option<&str> {
        self.props.message_id().as_ref().map(|s| s.as_str())
    }

    /// The AMQP timestamp (seconds), when the producer set one.
    pub fn timestamp(&self) -> Option<u64> {
        *self.props.timestamp()
    }

    /// The original properties with extra headers (for dead letters and retries).
    pub fn props_with(
        &self,
        headers: &[(&str, HeaderValue)],
        expiration_ms: Option<u64>,
    ) -> BasicProperties {
        let mut table = self.props.headers().clone().unwrap_or_default();
        for (k, v) in headers {
            let v = match v {
                HeaderValue::Int(i) => long(*i),
                HeaderValue::Text(s) => text(s),
            };
            table.insert((*k).into(), v);
        }
        let mut p = self.props.clone().with_headers(table);
        if let Some(ms) = expiration_ms {
            p = p.with_expiration(ShortString::from(ms.to_string()));
        }
        p
    }
}

/// A header value the worker adds.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    Int(i64),
    Text(String),
}

/// Properties of a published event: persistent JSON.
pub fn event_props(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id.to_string()))
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
}

/// Properties of a job published by `apns-worker publish`.
pub fn job_props(message_id: &str) -> BasicProperties {
    event_props(message_id)
}

/// The consuming side of one connection.
pub struct Consumer {
    pub channel: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

impl Consumer {
    pub async fn start(
        conn: &Connection,
        queue: &str,
        prefetch: u16,
        tag: String,
    ) -> Result<Consumer, AmqpError> {
        let channel = conn.create_channel().await.map_err(AmqpError::Channel)?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| AmqpError::Consume {
                queue: queue.into(),
                source,
            })?;
        Ok(Consumer {
            channel,
            consumer,
            tag,
        })
    }

    /// The next delivery; `Err` when the channel or connection is gone, `None` when
    /// the broker cancelled the consumer (queue deleted).
    pub async fn next(&mut self) -> Option<Result<Incoming, AmqpError>> {
        match self.consumer.next().await? {
            Ok(d) => Some(Ok(Incoming::from_delivery(d))),
            Err(e) => Some(Err(AmqpError::Lost(e.to_string()))),
        }
    }

    /// Close the consuming channel (after its acks were sent).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.channel.close(200, "bye".into()),
        )
        .await;
    }

    /// Stop receiving deliveries (unacked ones stay ours to settle).
    pub async fn cancel(&self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
}

/// Close a connection politely, bounded in time.
pub async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    }
}

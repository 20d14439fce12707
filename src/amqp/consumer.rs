//! Consuming: one channel with a prefetch window, and each delivery reduced to an
//! [`Incoming`] (the lapin types stay here).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::{AmqpError, ConsumedQueues, HeaderValue, long, text};
use crate::job::control::{Headers, Value};

/// One delivery, reduced to what the worker needs; the lapin types stay here.
pub struct Incoming {
    pub tag: u64,
    /// Which of the consumer's queues it came from (their order at start).
    pub source: usize,
    /// Taken from the urgent lane's queue.
    pub urgent: bool,
    pub redelivered: bool,
    pub body: Bytes,
    pub props: BasicProperties,
}

impl Incoming {
    fn from_delivery(d: Delivery, source: usize) -> Incoming {
        Incoming {
            tag: d.delivery_tag,
            source,
            urgent: false,
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
            .and_then(crate::obs::telemetry::trace_id_of)
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

    /// The headers the worker reads back from its own delay queues (`job::control`).
    pub fn control_headers(&self) -> Headers<'_> {
        let value = |name: &str| self.header(name).map(control_value);
        Headers {
            attempts: value("x-attempts"),
            hop: value("x-apns-hop"),
            apns_id: value("x-apns-id"),
            lineage: value("x-apns-lineage"),
            config_waits: value("x-apns-config-waits"),
            dead_letter_id: value("x-apns-dead-letter-id"),
            death: self.newest_death(),
        }
    }

    /// The newest entry of RabbitMQ's `x-death` (it keeps the newest first): its queue
    /// and reason.
    fn newest_death(&self) -> Option<(&str, &str)> {
        let AMQPValue::FieldArray(deaths) = self.header("x-death")? else {
            return None;
        };
        let AMQPValue::FieldTable(newest) = deaths.as_slice().first()? else {
            return None;
        };
        let text = |k: &str| match newest.inner().get(&ShortString::from(k))? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        };
        Some((text("queue")?, text("reason")?))
    }

    /// The properties of a retry or park copy: the original's, with the worker's
    /// headers, the delay queue's TTL as the expiration, and no `user-id` (RabbitMQ
    /// refuses a publish whose user-id is not the connection's user; the original is
    /// kept as `x-apns-original-user-id`).
    /// The properties of a copy for a delay queue: the original's, with the worker's
    /// control headers replaced by `headers` (never the ones the message came with: a
    /// producer's `x-attempts` must not become trusted once the copy comes back).
    pub fn copy_props(&self, headers: &[(&str, HeaderValue)], ttl_ms: u64) -> BasicProperties {
        self.republish(headers, COPY_DROPS, Some(ttl_ms))
    }

    /// The properties of a dead letter: the original's, with the worker's headers, and
    /// nothing the worker would trust if the dead letter were replayed, nor anything
    /// that could drop it: no `x-death`, `x-apns-hop`, `x-apns-id`, no expiration (the
    /// producer's TTL is kept as `x-apns-original-expiration`), no user-id.
    pub fn dead_letter_props(&self, headers: &[(&str, HeaderValue)]) -> BasicProperties {
        self.republish(headers, DEAD_LETTER_DROPS, None)
    }

    fn republish(
        &self,
        add: &[(&str, HeaderValue)],
        drop: &[&str],
        expiration_ms: Option<u64>,
    ) -> BasicProperties {
        let p = &self.props;
        let mut table = p.headers().clone().unwrap_or_default();
        if !drop.is_empty() {
            let mut kept = FieldTable::default();
            for (k, v) in table.inner() {
                if !drop.iter().any(|d| d.eq_ignore_ascii_case(k.as_str())) {
                    kept.insert(k.clone(), v.clone());
                }
            }
            table = kept;
        }
        if expiration_ms.is_none() && !drop.is_empty() {
            if let Some(e) = p.expiration() {
                table.insert("x-apns-original-expiration".into(), text(e.as_str()));
            }
        }
        if let Some(u) = p.user_id() {
            table.insert("x-apns-original-user-id".into(), text(u.as_str()));
        }
        for (k, v) in add {
            let v = match v {
                HeaderValue::Int(i) => long(*i),
                HeaderValue::Text(s) => text(s),
            };
            table.insert((*k).into(), v);
        }
        // lapin's properties can be set but not unset: rebuild them without user-id
        // (and, for dead letters, without expiration).
        let mut out = BasicProperties::default().with_headers(table);
        macro_rules! keep {
            ($get:ident, $set:ident) => {
                if let Some(v) = p.$get() {
                    out = out.$set(v.clone());
                }
            };
        }
        keep!(content_type, with_content_type);
        keep!(content_encoding, with_content_encoding);
        // Persistent whatever the producer chose: a copy or a dead letter must survive a
        // broker restart on classic queues too.
        out = out.with_delivery_mode(2);
        keep!(priority, with_priority);
        keep!(correlation_id, with_correlation_id);
        keep!(reply_to, with_reply_to);
        keep!(message_id, with_message_id);
        keep!(timestamp, with_timestamp);
        keep!(kind, with_type);
        keep!(app_id, with_app_id);
        keep!(cluster_id, with_cluster_id);
        match expiration_ms {
            Some(ms) => out = out.with_expiration(ShortString::from(ms.to_string())),
            None if drop.is_empty() => keep!(expiration, with_expiration),
            None => {}
        }
        out
    }
}

/// The worker's control headers: a copy for a delay queue carries the worker's values
/// of them, never the incoming message's (`copy_props`).
const COPY_DROPS: &[&str] = &[
    // Sender-selected distribution: RabbitMQ would route the copy to these queues too
    // (the jobs queue, say: a retry sent at once, again and again).
    "CC",
    "BCC",
    "x-attempts",
    "x-apns-hop",
    "x-apns-id",
    "x-apns-lineage",
    "x-apns-config-waits",
];

/// Headers a dead letter does not carry (`dead_letter_props`).
const DEAD_LETTER_DROPS: &[&str] = &[
    "CC",
    "BCC",
    // The worker's informational headers: set by the worker when they apply, never
    // inherited from what a producer sent.
    "x-apns-status",
    "x-apns-original-expiration",
    "x-death",
    "x-apns-config-waits",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-apns-hop",
    "x-apns-id",
    "x-apns-lineage",
];

/// An AMQP header value as `job::control` sees it.
fn control_value(v: &AMQPValue) -> Value<'_> {
    match v {
        AMQPValue::ShortShortInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortShortUInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortUInt(n) => Value::Int((*n).into()),
        AMQPValue::LongInt(n) => Value::Int((*n).into()),
        AMQPValue::LongUInt(n) => Value::Int((*n).into()),
        AMQPValue::LongLongInt(n) => Value::Int((*n).into()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(t) => Value::Text(t),
            Err(_) => Value::Other("non-UTF-8 string"),
        },
        AMQPValue::ShortString(s) => Value::Text(s.as_str()),
        AMQPValue::Boolean(_) => Value::Other("boolean"),
        AMQPValue::Float(_) | AMQPValue::Double(_) => Value::Other("float"),
        AMQPValue::DecimalValue(_) => Value::Other("decimal"),
        AMQPValue::Timestamp(_) => Value::Other("timestamp"),
        AMQPValue::FieldArray(_) => Value::Other("array"),
        AMQPValue::FieldTable(_) => Value::Other("table"),
        AMQPValue::ByteArray(_) => Value::Other("byte array"),
        AMQPValue::Void => Value::Other("void"),
    }
}

/// The consuming side of one connection: one channel, one consumer per queue, each
/// with its own prefetch (`basic.qos` with `global = false` applies to the consumers
/// started after it), their deliveries merged: the queues before the job queues in
/// their order (urgent lane, ready queue), then the job queues taking turns.
pub struct Consumer {
    pub channel: Channel,
    consumers: Vec<lapin::Consumer>,
    tags: Vec<String>,
    /// Index of the first job queue: from there on the consumers take turns.
    first_shared: usize,
    /// The job queue looked at first next time.
    turn: usize,
}

impl Consumer {
    /// Consume each of `plan`'s queues with its prefetch; consumer tags are `<tag>-<n>`.
    pub async fn start(
        conn: &Connection,
        plan: &ConsumedQueues,
        tag: String,
    ) -> Result<Consumer, AmqpError> {
        let channel = conn.create_channel().await.map_err(AmqpError::Channel)?;
        let mut consumers = Vec::with_capacity(plan.queues.len());
        let mut tags = Vec::with_capacity(plan.queues.len());
        for (n, (queue, prefetch)) in plan.queues.iter().enumerate() {
            channel
                .basic_qos(*prefetch, BasicQosOptions::default())
                .await
                .map_err(AmqpError::Channel)?;
            let tag = format!("{tag}-{n}");
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| AmqpError::Consume {
                    queue: queue.clone(),
                    source,
                })?;
            consumers.push(consumer);
            tags.push(tag);
        }
        Ok(Consumer {
            channel,
            consumers,
            tags,
            first_shared: plan.first_job_queue.min(plan.queues.len()),
            turn: 0,
        })
    }

    /// The next delivery of any of the queues: the ones before the job queues first, in
    /// their order, then the job queues starting from the one after the last served
    /// (so that no job queue waits behind another's backlog); `Err` when the channel or
    /// connection is gone, `None` when the broker cancelled one of the consumers (its
    /// queue deleted).
    pub async fn next(&mut self) -> Option<Result<Incoming, AmqpError>> {
        let (first, consumers, turn) = (self.first_shared, &mut self.consumers, &mut self.turn);
        let shared = consumers.len() - first;
        std::future::poll_fn(|cx| {
            let start = *turn;
            let order = (0..first).chain((0..shared).map(|i| first + (start + i) % shared));
            for source in order {
                match consumers[source].poll_next_unpin(cx) {
                    std::task::Poll::Ready(Some(Ok(d))) => {
                        if source >= first {
                            *turn = (source - first + 1) % shared;
                        }
                        return std::task::Poll::Ready(Some(Ok(Incoming::from_delivery(
                            d, source,
                        ))));
                    }
                    std::task::Poll::Ready(Some(Err(e))) => {
                        return std::task::Poll::Ready(Some(Err(AmqpError::Lost(e.to_string()))));
                    }
                    std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                    std::task::Poll::Pending => {}
                }
            }
            std::task::Poll::Pending
        })
        .await
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
        for tag in &self.tags {
            let _ = self
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
    }
}

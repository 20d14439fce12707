//! Consuming: one channel with a prefetch window, and each delivery reduced to an
//! [`Incoming`] (the lapin types stay here).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::{AmqpError, HeaderValue, long, text};

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

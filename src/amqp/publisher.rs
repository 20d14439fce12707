//! Confirmed publishing: a channel in confirm mode, `mandatory` publishes bounded in
//! time (not counting time the broker blocks the connection), and what a refusal means
//! for the session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::AmqpError;
use super::blocked::{Blocked, bound_left};

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
    #[error(
        "the broker did not confirm the publish within {0:?} (time blocked by a resource alarm not counted)"
    )]
    ConfirmTimeout(Duration),
}

/// Every kind of failure, once retries are spent, ends the session (new connection
/// and channels, topology declared again): a channel that keeps getting nacks may be
/// stuck on a quorum queue leader that is gone (RabbitMQ 3.10 nacks every publish of a
/// channel opened while the queue had no leader, until that node returns; a fresh
/// channel finds the new leader).
impl PublishError {
    /// A refusal (nack) that may pass when tried again at once on the same channel.
    pub fn is_refusal(&self) -> bool {
        matches!(self, PublishError::Nacked)
    }
}

/// A channel in confirm mode for the worker's own publishes.
#[derive(Clone)]
pub struct Publisher {
    ch: Channel,
    /// A publish not confirmed within this (unblocked) time has failed.
    confirm_timeout: Duration,
    /// The connection's blocked periods, told by the session loop.
    blocked: Arc<Blocked>,
}

impl Publisher {
    pub async fn open(
        conn: &Connection,
        confirm_timeout: Duration,
        blocked: Arc<Blocked>,
    ) -> Result<Publisher, AmqpError> {
        let ch = conn.create_channel().await.map_err(AmqpError::Channel)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(AmqpError::Channel)?;
        Ok(Publisher {
            ch,
            confirm_timeout,
            blocked,
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.ch
    }

    /// The connection's blocked periods (the session loop tells them).
    pub fn blocked(&self) -> &Blocked {
        &self.blocked
    }

    /// Publish and wait for the confirm within `confirm_timeout` of unblocked time.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let started = Instant::now();
        let blocked_before = self.blocked.total(started);
        let work = self.publish_unbounded(exchange, routing_key, body, props);
        tokio::pin!(work);
        loop {
            let now = Instant::now();
            let blocked = self.blocked.total(now).saturating_sub(blocked_before);
            let Some(left) = bound_left(now - started, blocked, self.confirm_timeout) else {
                return Err(PublishError::ConfirmTimeout(self.confirm_timeout));
            };
            tokio::select! {
                r = &mut work => return r,
                // Woken at the bound; time spent blocked meanwhile moves it on.
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// Publish with `mandatory` and wait for the broker's confirm. Ok only if the
    /// broker acknowledged it and routed it to at least one queue.
    async fn publish_unbounded(
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

//! Confirmed publishing: a channel in confirm mode, `mandatory` publishes, and what a
//! refusal means for the session.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection};

use super::AmqpError;

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

//! RabbitMQ, the only part of the worker that speaks AMQP (with `worker::acker`, which
//! sends the acks): connecting, the topology, consuming, and confirmed publishing.

mod blocked;
mod consumer;
mod publisher;
mod topology;

use std::time::Duration;

use lapin::types::{AMQPValue, LongString};
use lapin::{Connection, ConnectionProperties};

use crate::config::{BrokerSettings, ConfigError};

pub use blocked::Blocked;
pub use consumer::{Consumer, Incoming};
pub use publisher::{PublishError, Publisher, event_props, job_props};
pub use topology::{
    Argument, ConsumedQueues, Declaration, Entity, ExchangeType, Topology, consumed_queues,
    declare_topology, delay_queue_name, delete_entities, depth_if_exists, job_queue_names,
    plan as topology_plan, ready_prefetch, ready_queue_name,
};

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("broker URL: {0}")]
    Url(#[from] ConfigError),
    #[error("connecting to the broker failed: {0}")]
    Connect(lapin::Error),
    #[error(
        "none of the broker's {count} nodes took the connection (tried {tried}); the last one's error: {last}"
    )]
    NoNode {
        count: usize,
        tried: String,
        last: lapin::Error,
    },
    #[error(
        "the broker's TLS certificate is not trusted ({0}): set broker.tls.ca_file to the CA that signed it, and connect by a host name the certificate names"
    )]
    UntrustedBroker(lapin::Error),
    #[error("opening a channel failed: {0}")]
    Channel(lapin::Error),
    #[error(
        "{what} {name:?} already exists with other arguments than this configuration declares ({detail}); RabbitMQ cannot change a queue's arguments in place: set the queues.* and retry.* settings back to the values it was declared with, or move its messages away and delete it so that it is declared anew, or set queues.declare = false and manage the topology yourself"
    )]
    ArgumentsDiffer {
        what: &'static str,
        name: String,
        detail: String,
    },
    #[error("declaring {what} {name:?} failed: {source}")]
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

pub(crate) fn long(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// Connect with the replica's name shown in the management UI (and, for `amqps://`,
/// the TLS settings of `broker.tls`).
pub async fn connect(b: &BrokerSettings) -> Result<Connection, AmqpError> {
    connect_from(b, 0).await.map(|c| c.conn)
}

/// A connection to one of the broker's nodes.
pub struct Connected {
    pub conn: Connection,
    /// Which of `broker.url`'s URLs it went to (0-based).
    pub index: usize,
    /// Its host and port (never the credentials).
    pub node: (String, u16),
}

/// Connect to the first of `broker.url`'s nodes that answers, trying them in order
/// from `start` (wrapping around); with several URLs the connection name says which
/// node (`<name> (<host>:<port>)`). The error is the last node's.
pub async fn connect_from(b: &BrokerSettings, start: usize) -> Result<Connected, AmqpError> {
    let urls = b.effective_urls()?;
    let nodes = b.nodes();
    let tls = b.tls.lapin_config()?;
    let mut untrusted = None;
    let mut tried = Vec::with_capacity(urls.len());
    let mut last = None;
    for k in 0..urls.len() {
        let index = (start + k) % urls.len();
        let url = &urls[index];
        let node = format!("{}:{}", nodes[index].0, nodes[index].1);
        let name = if urls.len() > 1 {
            format!("{} ({node})", b.connection_name())
        } else {
            b.connection_name()
        };
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        let runtime = lapin::runtime::default_runtime().map_err(AmqpError::Connect)?;
        match Connection::connect_with_config(url.expose(), props, tls.clone(), runtime).await {
            Ok(conn) => {
                return Ok(Connected {
                    conn,
                    index,
                    node: nodes[index].clone(),
                });
            }
            Err(e) if urls.len() == 1 => {
                return Err(if is_untrusted_certificate(&e) {
                    AmqpError::UntrustedBroker(e)
                } else {
                    AmqpError::Connect(e)
                });
            }
            Err(e) => {
                tracing::warn!(%node, node_number = index + 1, nodes = urls.len(), error = %e, "broker node did not take the connection");
                if is_untrusted_certificate(&e) {
                    untrusted = Some(e);
                } else {
                    last = Some(e);
                }
                tried.push(node);
            }
        }
    }
    // A node whose certificate is not trusted is a configuration error, whatever the
    // others did.
    match (untrusted, last) {
        (Some(e), _) => Err(AmqpError::UntrustedBroker(e)),
        (None, Some(last)) => Err(AmqpError::NoNode {
            count: urls.len(),
            tried: tried.join(", "),
            last,
        }),
        (None, None) => unreachable!("effective_urls is never empty"),
    }
}

/// Did the TLS handshake fail because the broker's certificate is not trusted (or not
/// for this host)? A configuration error, not an outage.
fn is_untrusted_certificate(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("invalid peer certificate")
        || text.contains("UnknownIssuer")
        || text.contains("NotValidForName")
}

/// A header value the worker adds.
#[derive(Clone, Debug)]
pub enum HeaderValue {
    Int(i64),
    Text(String),
}

/// Close a connection politely, bounded in time.
pub async fn close(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    }
}

//! A consumer of the token-cleanup stream, to copy into the system that owns device
//! tokens: it reads `schemas/token-cleanup-event.schema.json` events and removes (here:
//! prints) each dead token, and `schemas/channel-cleanup-event.schema.json` events (AMQP
//! type `channel-cleanup`, routing key `channel.<bundle id>`) and retires each gone
//! broadcast channel, acking only after the removal succeeded.
//!
//! cargo run --example token_cleanup_consumer -- \
//!     --url amqp://guest:guest@127.0.0.1:5672/%2f --queue apns.token-cleanup
//!
//! Events are at least once: removing a token twice must be harmless.

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;

/// The event, as the schema defines it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct TokenCleanupEvent {
    device_token: String,
    topic: String,
    app: String,
    reason: String,
    status: u16,
    #[serde(default)]
    unregistered_at: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    apns_id: Option<String>,
    observed_at: String,
}

/// A broadcast channel APNs does not know (`channel-cleanup`), as the schema defines it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ChannelCleanupEvent {
    channel_id: String,
    bundle_id: String,
    app: String,
    reason: String,
    status: u16,
    #[serde(default)]
    job_id: Option<String>,
    #[serde(default)]
    apns_id: Option<String>,
    observed_at: String,
}

/// Where your code retires the channel (stop handing it to devices, stop broadcasting).
fn retire_channel(ev: &ChannelCleanupEvent) -> Result<(), String> {
    println!(
        "{}",
        serde_json::json!({
            "retired_channel": ev.channel_id,
            "bundle_id": ev.bundle_id,
            "reason": ev.reason,
        })
    );
    Ok(())
}

/// Where your code removes the token. Return an error to have the event redelivered.
fn remove_token(ev: &TokenCleanupEvent) -> Result<(), String> {
    // e.g. DELETE FROM device_tokens WHERE token = $1 AND topic = $2
    //      AND (registered_at < $3 OR $3 IS NULL)   -- unregistered_at: ignore older events
    println!(
        "{}",
        serde_json::json!({
            "removed": ev.device_token,
            "topic": ev.topic,
            "reason": ev.reason,
            "unregistered_at": ev.unregistered_at,
        })
    );
    Ok(())
}

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = arg("--url", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let queue = arg("--queue", "apns.token-cleanup");
    // Stop after this many events (0: run until killed); handy in tests.
    let max: u64 = arg("--max", "0").parse()?;
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(100, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "token-cleanup-example".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut done = 0;
    while let Some(delivery) = consumer.next().await {
        let d = delivery?;
        // The two kinds share the exchange; the AMQP type tells them apart.
        let channel = d.properties.kind().as_ref().map(|k| k.as_str()) == Some("channel-cleanup");
        let handled = if channel {
            serde_json::from_slice::<ChannelCleanupEvent>(&d.data).map(|ev| {
                retire_channel(&ev).map_err(|e| format!("retiring a channel failed: {e}"))
            })
        } else {
            serde_json::from_slice::<TokenCleanupEvent>(&d.data).map(|ev| {
                remove_token(&ev)
                    .map_err(|e| format!("removing {} failed: {e}", &ev.device_token[..8]))
            })
        };
        match handled {
            Ok(Ok(())) => {
                d.ack(BasicAckOptions::default()).await?;
            }
            // Try again later (the broker redelivers).
            Ok(Err(e)) => {
                eprintln!("{e}");
                d.nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await?;
            }
            // Not an event of these contracts: keep it out of the way, do not loop on it.
            Err(e) => {
                eprintln!("not a cleanup event: {e}");
                d.nack(BasicNackOptions {
                    requeue: false,
                    multiple: false,
                })
                .await?;
            }
        }
        done += 1;
        if max > 0 && done >= max {
            break;
        }
    }
    conn.close(200, "bye".into()).await?;
    Ok(())
}

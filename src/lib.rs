//! apns-worker: delivers Apple push notifications from RabbitMQ over multiplexed HTTP/2.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod admin;
pub mod apns;
pub mod bench;
pub mod check;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod mock;
pub mod otel_metrics;
pub mod publish;
pub mod secret;
pub mod signals;
pub mod telemetry;
pub mod worker;

//! apns-worker: delivers Apple push notifications from RabbitMQ over multiplexed HTTP/2.
//!
//! See `ARCHITECTURE.md` for the map of this crate.

pub mod apns;
pub mod config;
pub mod mock;
pub mod secret;

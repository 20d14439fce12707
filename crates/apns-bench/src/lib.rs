//! apns-worker's developer tools: the demo (the whole flow on one machine) and the
//! benchmarks (end to end with RabbitMQ, the client alone, a sweep of settings). The
//! `apns-bench` binary runs them; `benches/hot_path.rs` times the pure per-job path.

pub mod bench;
pub mod demo;

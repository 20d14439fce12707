//! Observability, with no knowledge of the worker: logs and traces (`telemetry`),
//! Prometheus families and their text (`prometheus`), the same figures over OTLP
//! (`otlp`), and the admin endpoint (`admin`: `/healthz`, `/readyz`, `/metrics`). The
//! worker implements [`Status`] and records into [`Metrics`]; nothing here imports it.

pub mod admin;
pub mod otlp;
pub mod prometheus;
mod snapshot;
pub mod telemetry;

pub use prometheus::{Metrics, SendStatus};
pub use snapshot::{Readiness, Sample, Snapshot, Status};

//! What a running service tells its observers at scrape time, without them knowing
//! what it is: readiness with its reasons, and metric families read on demand.

/// A value at scrape time, with its labels.
#[derive(Clone, Debug)]
pub enum Sample {
    Gauge(Vec<(&'static str, String)>, i64),
    Counter(Vec<(&'static str, String)>, u64),
}

/// A metric family read at scrape time.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

/// Whether the service should get traffic, and the facts behind it (one `name value`
/// line each, for `/readyz`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub facts: Vec<(&'static str, String)>,
}

/// The service as the admin endpoint and the OTLP exporter see it.
pub trait Status: Send + Sync {
    fn readiness(&self) -> Readiness;
    /// The families read at scrape time (connections, limits, states...).
    fn snapshot(&self) -> Vec<Snapshot>;
    /// The whole Prometheus/OpenMetrics text of `/metrics`.
    fn metrics_text(&self) -> String;
}

//! The delivery path. Broker sessions (`session`) hand each delivery to its own task,
//! which goes from bytes to a settlement decision (`delivery`; a fan-out job's tokens
//! each get theirs and the message one from all of them: `fanout`); the settlement is
//! carried out in one place (`execute`) and reported by one observer (`observe`:
//! stats, metrics, a log line, span fields). Around them: the shared state (`state`),
//! ack coalescing per channel (`acker`), the per-app circuit for broken credentials
//! (`circuit`), the memory of recent outcomes (`recent`), the counters (`stats`) and
//! what health and the metrics snapshot read (`health`).

mod acker;
mod circuit;
mod delivery;
mod execute;
mod fanout;
mod health;
mod observe;
mod recent;
mod session;
mod state;
mod stats;

pub use session::serve;
pub use state::{StartError, Worker};
pub use stats::Summary;

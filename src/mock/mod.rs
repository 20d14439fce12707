//! A mock APNs: a real HTTP/2 + TLS server that validates requests and provider tokens
//! like Apple's, answers with Apple's statuses and reasons, and injects faults on demand.
//! Used by the tests, the demo, docker-compose and the benchmarks
//! (`apns-worker mock-apns`, or [`MockApns::start`] in-process).

pub mod certs;
pub mod faults;
mod server;
mod shim;

pub use faults::{Action, Faults, RandomAnswer, TokenRule};
pub use server::{MockApns, MockConfig, MockError, MockKey, MockStats, Received};

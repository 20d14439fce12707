//! apns-worker: consumes notification jobs from RabbitMQ, sends them to APNs with the
//! `apns` client, and settles every message by what APNs answered.
//!
//! The modules, in the order a job meets them: `amqp` (the broker), `job` (decoding),
//! `worker` (sessions, the delivery path, settlement, the observer), `settle` (the pure
//! decision), `outcomes` (the receipts of the outcome stream), `obs` (logs, traces, metrics, the admin endpoint), `run` (the worker with
//! its surroundings); beside them `config`, `publish` and `check` (commands), and
//! `signals`. `ARCHITECTURE.md` has the map.

pub mod amqp;
pub mod channels;
pub mod check;
pub mod config;
pub mod job;
pub mod obs;
pub mod operator;
pub mod outcomes;
pub mod publish;
pub mod reload;
pub mod run;
pub mod settle;
pub mod signals;
pub mod worker;

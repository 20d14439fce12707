//! The worker: consume jobs from RabbitMQ, send them with the APNs client, settle each
//! message by its outcome. Pure parts: `job`, `settle`, `circuit`. I/O: `amqp`, `acker`, `run`.

pub mod acker;
pub mod amqp;
pub mod circuit;
pub mod health;
pub mod job;
pub mod recent;
pub mod run;
pub mod settle;
pub mod stats;

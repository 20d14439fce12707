//! The APNs client: validation, provider tokens, TLS, HTTP/2 connections and their pool,
//! and the classification of answers. Only `tls`, `connection` and `pool` touch sockets.

pub mod classify;
pub mod client;
pub mod connection;
pub mod endpoint;
pub mod frames;
pub mod jwt;
pub mod limiter;
pub mod notification;
pub mod pool;
pub mod response;
pub mod tls;

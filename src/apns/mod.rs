//! The APNs client: validation, provider tokens, TLS, HTTP/2 connections and their pool,
//! and the classification of answers. Only `tls`, `connection` and `pool` touch sockets.

pub mod classify;
pub mod endpoint;
pub mod jwt;
pub mod notification;
pub mod response;

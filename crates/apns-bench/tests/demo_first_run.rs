//! The demo on a machine whose RabbitMQ is stopped or absent: it says so within
//! seconds, in one sentence with what to run, and never prints the URL's password.

use std::time::{Duration, Instant};

#[test]
fn the_demo_without_a_broker_says_what_to_run_at_once() {
    // A port nothing listens on: the broker "stopped".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apns-bench"))
        .args([
            "demo",
            "--broker",
            &format!("amqp://guest:Sup3rSecret@127.0.0.1:{port}/%2f"),
        ])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "error: RabbitMQ is not reachable at 127.0.0.1:{port} ("
        )),
        "{text}"
    );
    assert!(
        line.contains("rabbitmq-server") || line.contains("docker run"),
        "{line}"
    );
    assert!(line.contains("--broker"), "{line}");
    assert!(!text.contains("Sup3rSecret"), "the password leaked: {text}");
    assert_eq!(err.lines().count(), 1, "one sentence, no retry log: {err}");
}

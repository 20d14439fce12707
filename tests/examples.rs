//! The examples users copy: the Python producer publishes schema-valid jobs; the Rust
//! token-cleanup consumer reads schema-valid events.

mod common;

use std::process::Command;

use common::broker;
use common::tools::{self, root};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_producer_publishes_valid_jobs() {
    let conn = broker::connect().await;
    let queue = format!("test.examples.{}.jobs", uuid::Uuid::new_v4().simple());
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let out = tools::run_ok(
        Command::new(tools::python())
            .arg(root().join("examples/producer.py"))
            .args(["--url", broker::BROKER, "--queue", &queue, "--count", "3"]),
    );
    assert_eq!(out.lines().count(), 3);
    let got = broker::drain_queue(&conn, &queue).await;
    assert_eq!(got.len(), 3);
    let v = common::schema_validator("notification-job.schema.json");
    for g in &got {
        let job = g.json();
        assert!(v.is_valid(&job), "{job}");
        assert_eq!(
            g.props.message_id().as_ref().unwrap().as_str(),
            job["id"].as_str().unwrap()
        );
        assert!(g.header_str("traceparent").is_some());
        let body = bytes::Bytes::from(g.body.clone());
        apns_worker::job::decode(
            &body,
            &Default::default(),
            &apns_worker::job::AppDirectory::permissive(),
            65536,
        )
        .unwrap();
    }
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_cleanup_consumer_reads_the_events() {
    let conn = broker::connect().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("test.examples.{id}.cleanup");
    let queue = format!("test.examples.{id}.cleanup-q");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let event =
        std::fs::read_to_string(root().join("schemas/examples/token-cleanup-event.json")).unwrap();
    let ev: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert!(common::schema_validator("token-cleanup-event.schema.json").is_valid(&ev));
    let channel_event =
        std::fs::read_to_string(root().join("schemas/examples/channel-cleanup-event.json"))
            .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let events = [
        (&event, "com.example.app", None),
        (&event, "com.example.app", None),
        (
            &channel_event,
            "channel.com.example.app",
            Some("channel-cleanup"),
        ),
    ];
    for (body, key, kind) in events {
        let mut props = apns_worker::amqp::event_props("e");
        if let Some(k) = kind {
            props = props.with_type(k.into());
        }
        ch.basic_publish(
            exchange.as_str().into(),
            key.into(),
            Default::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    // Built by ./test.sh (`cargo build --release --examples`) before the tests run.
    let exe = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/token_cleanup_consumer");
    assert!(
        exe.exists(),
        "{} not built: run ./test.sh, which builds the examples first",
        exe.display()
    );
    let out = tools::run_ok(Command::new(exe).args([
        "--url",
        broker::BROKER,
        "--queue",
        &queue,
        "--max",
        "3",
    ]));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["removed"], ev["device_token"]);
    assert_eq!(lines[0]["reason"], "Unregistered");
    assert_eq!(lines[2]["retired_channel"], "dHN0LXNyY2gtY2hubA==");
    assert_eq!(lines[2]["reason"], "ChannelNotRegistered");
    assert_eq!(broker::depth(&conn, &queue).await, 0, "acked");
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = ch
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

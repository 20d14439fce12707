//! `apns-worker topology`: the Messaging Topology Operator objects it prints are the
//! whole topology, with the worker's own arguments. The objects are applied to the
//! real broker as the operator applies them (a Queue's `type` becomes `x-queue-type`,
//! its `arguments` the rest), a worker with `queues.declare = false` settles every
//! kind of job on them, and a worker that declares afterwards meets no difference.

mod common;

use std::process::Command;
use std::time::Duration;

use apns_mock::Faults;
use common::broker;
use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};

fn topology_objects(config: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_apns-worker"))
        .args([
            "topology",
            "--cluster",
            "rabbit",
            "--namespace",
            "push",
            "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn field_table(args: &serde_json::Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            Value::String(s) => AMQPValue::LongString(LongString::from(s.clone())),
            Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().expect("integer argument")),
            other => panic!("argument {k} = {other}"),
        };
        t.insert(k.clone().into(), v);
    }
    t
}

/// What the operator does with each object, over AMQP instead of the HTTP API.
async fn apply(conn: &lapin::Connection, list: &Value) -> (usize, usize, usize) {
    let ch = conn.create_channel().await.unwrap();
    let (mut queues, mut exchanges, mut bindings) = (0, 0, 0);
    for o in list["items"].as_array().unwrap() {
        let spec = &o["spec"];
        assert_eq!(o["apiVersion"], "rabbitmq.com/v1beta1");
        assert_eq!(spec["rabbitmqClusterReference"], json!({"name": "rabbit"}));
        assert_eq!(o["metadata"]["namespace"], "push");
        assert_eq!(spec["vhost"], "/");
        match o["kind"].as_str().unwrap() {
            "Exchange" => {
                let kind = match spec["type"].as_str().unwrap() {
                    "direct" => lapin::ExchangeKind::Direct,
                    "topic" => lapin::ExchangeKind::Topic,
                    other => panic!("exchange type {other}"),
                };
                ch.exchange_declare(
                    spec["name"].as_str().unwrap().into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: spec["durable"].as_bool().unwrap(),
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
                exchanges += 1;
            }
            "Queue" => {
                let mut args = spec["arguments"].as_object().cloned().unwrap_or_default();
                args.insert("x-queue-type".into(), spec["type"].clone());
                ch.queue_declare(
                    spec["name"].as_str().unwrap().into(),
                    QueueDeclareOptions {
                        durable: spec["durable"].as_bool().unwrap(),
                        ..Default::default()
                    },
                    field_table(&args),
                )
                .await
                .unwrap();
                queues += 1;
            }
            "Binding" => {
                assert_eq!(spec["destinationType"], "queue");
                ch.queue_bind(
                    spec["destination"].as_str().unwrap().into(),
                    spec["source"].as_str().unwrap().into(),
                    spec["routingKey"].as_str().unwrap().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
                bindings += 1;
            }
            other => panic!("kind {other}"),
        }
    }
    let _ = ch.close(200, "bye".into()).await;
    (queues, exchanges, bindings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_objects_are_the_whole_topology() {
    let m = mock(Faults {
        rules: vec![
            rule("b410", 410, "Unregistered", None),
            rule("b503", 503, "ServiceUnavailable", Some(1)),
            rule("b400", 400, "BadTopic", None),
        ],
        ..Faults::default()
    })
    .await;
    let mut q = broker::topology("operator");
    q.declare = false;
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "[queues]\n{}\n[retry]\n{}",
            toml::to_string(&cfg.queues).unwrap(),
            toml::to_string(&cfg.retry).unwrap()
        ),
    )
    .unwrap();
    let list = topology_objects(&file);
    let conn = broker::connect().await;
    let (queues, exchanges, bindings) = apply(&conn, &list).await;
    let topo = apns_worker::amqp::Topology {
        queues: &cfg.queues,
        retry: &cfg.retry,
    };
    assert_eq!(queues, topo.queue_names().len());
    assert_eq!(exchanges, topo.exchange_names().len());
    assert_eq!(bindings, 3, "dead letters, cleanup, environment mismatch");

    // A worker that does not declare finds everything it uses.
    let w = broker::start(cfg.clone()).await;
    let jobs = ["b200", "b410", "b503", "b400"]
        .iter()
        .map(|p| {
            json!({"device_token": token(p, 1), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}})
                .to_string()
        })
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_terminal(4, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(
        (
            s.delivered,
            s.token_cleanups,
            s.retried,
            s.dead_lettered_total()
        ),
        (2, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(broker::depth(&conn, &q.cleanup_queue).await, 1);
    assert_eq!(broker::depth(&conn, &q.dead_letter_queue).await, 1);

    // The worker's own declarations meet the operator's without a difference (a
    // different argument would be 406 PRECONDITION_FAILED).
    cfg.queues.declare = true;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &cfg.queues, &cfg.retry)
        .await
        .expect("the worker's declarations match the operator's objects");
    let _ = ch.close(200, "bye".into()).await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

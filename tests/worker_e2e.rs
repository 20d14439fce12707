//! The worker end to end: the real RabbitMQ, the mock APNs, every row of the
//! settlement table, the contracts, and a 20,000-job reconciliation.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use apns_mock::Faults;
use common::broker::{self, Got};
use common::*;
use serde_json::json;

fn job(token: &str, id: &str) -> String {
    json!({"id": id, "device_token": token, "topic": TOPIC, "payload": {"aps": {"alert": "hello"}}})
        .to_string()
}

fn by_id(msgs: &[Got]) -> BTreeMap<String, Got> {
    msgs.iter()
        .map(|m| {
            let id = m
                .props
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            (id, m.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_settlement_table() {
    logs();
    let faults = Faults {
        rules: vec![
            rule("a410", 410, "Unregistered", None),
            rule("a411", 410, "ExpiredToken", None),
            rule("a400", 400, "BadDeviceToken", None),
            rule("a401", 400, "DeviceTokenNotForTopic", None),
            rule("b400", 400, "BadCollapseId", None),
            rule("b401", 400, "TopicDisallowed", None),
            rule("b404", 404, "BadPath", None),
            rule("b405", 405, "MethodNotAllowed", None),
            rule("b413", 413, "PayloadTooLarge", None),
            rule("c503", 503, "ServiceUnavailable", Some(1)),
            rule("c429", 429, "TooManyRequests", Some(1)),
            rule("c500", 500, "InternalServerError", Some(2)),
            rule("c400", 400, "IdleTimeout", Some(1)),
            rule("d503", 503, "Shutdown", None),
        ],
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("table");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;

    let rows: &[(&str, &str)] = &[
        ("0000", "delivered"),
        ("a410", "cleanup"),
        ("a411", "cleanup"),
        ("a400", "cleanup"),
        ("a401", "cleanup"),
        ("b400", "dead:BadCollapseId:400"),
        ("b401", "dead:TopicDisallowed:400"),
        ("b404", "dead:BadPath:404"),
        ("b405", "dead:MethodNotAllowed:405"),
        ("b413", "dead:PayloadTooLarge:413"),
        ("c503", "delivered-after-retry"),
        ("c429", "delivered-after-retry"),
        ("c500", "delivered-after-retry"),
        ("c400", "delivered-after-retry"),
        ("d503", "dead:RetriesExhausted:503"),
    ];
    let mut jobs = Vec::new();
    for (i, (prefix, _)) in rows.iter().enumerate() {
        jobs.push(job(&token(prefix, i as u64), &format!("row-{prefix}")));
    }
    // Invalid jobs and an expired one.
    let invalid: Vec<(&str, String)> = vec![
        ("inv-json", "{not json".into()),
        ("inv-field", json!({"device_token": token("00", 1), "topic": TOPIC, "payload": {}, "color": "red"}).to_string()),
        ("inv-token", json!({"device_token": "zz", "topic": TOPIC, "payload": {}}).to_string()),
        ("inv-app", json!({"device_token": token("00", 2), "app": "nope", "payload": {}}).to_string()),
        ("inv-crlf", json!({"device_token": token("00", 3), "topic": TOPIC, "collapse_id": "a\r\nX: y", "payload": {}}).to_string()),
    ];
    let expired = json!({"id": "expired", "device_token": token("00", 4), "topic": TOPIC, "expiration": 1000, "payload": {}}).to_string();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    let mut raw = Vec::new();
    for (id, body) in &invalid {
        raw.push((body.as_bytes().to_vec(), apns_worker::amqp::job_props(id)));
    }
    raw.push((
        expired.into_bytes(),
        apns_worker::amqp::job_props("expired"),
    ));
    broker::publish_raw(&conn, &q.jobs, raw).await;

    let total = (rows.len() + invalid.len() + 1) as u64;
    w.wait_terminal(total, Duration::from_secs(30)).await;
    let summary = w.stop().await;

    assert_eq!(summary.delivered, 5, "{summary:?}");
    assert_eq!(summary.token_cleanups, 4);
    assert_eq!(summary.expired, 1);
    assert_eq!(summary.dead_lettered.get("InvalidJob"), Some(&5));
    assert_eq!(summary.dead_lettered.get("RetriesExhausted"), Some(&1));
    // c503, c429, c400 once each, c500 twice, d503 twice before giving up at 3 attempts.
    assert_eq!(summary.retried, 7);
    assert_eq!(summary.unknown_outcomes, 0);

    // Dead letters: original body, the reason headers, valid against the headers schema.
    let dl_schema = schema_validator("dead-letter-headers.schema.json");
    let dead = by_id(&broker::drain_queue(&conn, &q.dead_letter_queue).await);
    for (prefix, want) in rows {
        let Some(rest) = want.strip_prefix("dead:") else {
            continue;
        };
        let (reason, status) = rest.split_once(':').unwrap();
        let m = dead
            .get(&format!("row-{prefix}"))
            .unwrap_or_else(|| panic!("no dead letter for {prefix}"));
        assert_eq!(
            m.header_str("x-apns-reason").as_deref(),
            Some(reason),
            "{prefix}"
        );
        assert_eq!(
            m.header_int("x-apns-status"),
            Some(status.parse().unwrap()),
            "{prefix}"
        );
        assert!(
            dl_schema.is_valid(&m.worker_headers()),
            "{prefix}: {}",
            m.worker_headers()
        );
        assert_eq!(m.json()["id"], format!("row-{prefix}"), "the original body");
        if reason == "RetriesExhausted" {
            assert_eq!(m.header_int("x-attempts"), Some(3));
            assert!(m.header_str("x-error").unwrap().contains("503 Shutdown"));
        } else {
            assert_eq!(m.header_int("x-attempts"), Some(1));
        }
    }
    for (id, body) in &invalid {
        let m = dead
            .get(*id)
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        assert_eq!(m.header_str("x-apns-reason").as_deref(), Some("InvalidJob"));
        assert_eq!(m.header_int("x-attempts"), Some(0));
        assert_eq!(m.body, body.as_bytes(), "byte for byte");
        assert!(dl_schema.is_valid(&m.worker_headers()));
    }
    let errs: BTreeMap<_, _> = invalid
        .iter()
        .map(|(id, _)| (*id, dead[*id].header_str("x-error").unwrap()))
        .collect();
    assert!(errs["inv-json"].contains("not valid JSON"), "{errs:?}");
    assert!(
        errs["inv-field"].contains("unknown field `color`"),
        "{errs:?}"
    );
    assert!(errs["inv-token"].contains("hexadecimal"), "{errs:?}");
    assert!(
        errs["inv-app"].contains("no app named \"nope\""),
        "{errs:?}"
    );
    assert!(errs["inv-crlf"].contains("control characters"), "{errs:?}");
    assert_eq!(dead.len(), 5 + 6, "nothing else was dead-lettered");

    // Cleanup events: one per dead token, valid against the schema, routed by topic.
    let ev_schema = schema_validator("token-cleanup-event.schema.json");
    let events = broker::drain_queue(&conn, &q.cleanup_queue).await;
    assert_eq!(events.len(), 4);
    let mut reasons: Vec<String> = Vec::new();
    for e in &events {
        let v = e.json();
        assert!(ev_schema.is_valid(&v), "{v}");
        assert_eq!(v["topic"], TOPIC);
        assert_eq!(v["app"], "shop");
        assert_eq!(e.props.delivery_mode(), &Some(2), "persistent");
        if v["status"] == 410 {
            assert!(
                v["unregistered_at"].is_string(),
                "410 carries its timestamp"
            );
        }
        reasons.push(v["reason"].as_str().unwrap().to_string());
    }
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "BadDeviceToken",
            "DeviceTokenNotForTopic",
            "ExpiredToken",
            "Unregistered"
        ]
    );

    // The mock never saw the invalid or expired jobs; it saw each retried job again.
    let s = m.mock.stats();
    assert_eq!(s.by_status.get(&200), Some(&5));
    assert_eq!(s.answered, 15 + 7);
    assert!(
        m.mock
            .received()
            .iter()
            .all(|r| !r.device_token.starts_with("00") || r.device_token == token("0000", 0))
    );

    // Nothing left anywhere.
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    for level in apns_worker::settle::delay_levels(&cfg.retry) {
        assert_eq!(
            broker::depth(&conn, &apns_worker::amqp::delay_queue_name(&q, level)).await,
            0
        );
    }
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_credentials_pause_only_that_app_and_its_backlog_drains_once_fixed() {
    let m = mock(Faults::default()).await;
    let good = m.token_app(TEAM, KEY, 1);
    // App "broken": a key APNs does not know (revoked): 403 InvalidProviderToken.
    let (private, public) = apns_mock::certs::generate_signing_key().unwrap();
    let mut bad = good.clone();
    bad.team_id = Some("TEAM777777".into());
    bad.topics = vec!["com.example.broken".into()];
    bad.keys[0].key_id = "KEY7777777".into();
    bad.keys[0].key = Some(apns::secret::Secret::new(private));
    let q = broker::topology("creds");
    let cfg = worker_config(q.clone(), vec![("good", good), ("broken", bad)]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let mut jobs = Vec::new();
    for i in 0..50u64 {
        jobs.push(job(&token("11", i), &format!("good-{i}")));
        jobs.push(json!({"id": format!("broken-{i}"), "device_token": token("22", i), "topic": "com.example.broken", "payload": {"aps": {}}}).to_string());
    }
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_until(
        "good app delivered and broken app parked",
        Duration::from_secs(20),
        |s| s.delivered >= 50 && s.parked >= 50,
    )
    .await;
    let s = w.worker.summary();
    assert_eq!(s.delivered, 50, "only the good app's jobs went out");
    assert_eq!(
        s.dead_lettered_total(),
        0,
        "broken credentials never dead-letter"
    );
    assert!(w.worker.ready(), "one app is still healthy");
    let broken_sent = m
        .mock
        .received()
        .iter()
        .filter(|r| r.device_token.starts_with("22"))
        .count();
    assert!(
        broken_sent < 50,
        "the circuit stopped sending the broken app's jobs ({broken_sent} probes)"
    );

    // Fix the credentials (APNs learns the key); the parked backlog drains.
    m.mock
        .add_key(apns_mock::MockKey {
            key_id: "KEY7777777".into(),
            team_id: "TEAM777777".into(),
            public_key_pem: public,
            topics: vec![],
            environment: None,
        })
        .unwrap();
    w.wait_terminal(100, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(s.delivered, 100);
    assert_eq!(s.dead_lettered_total(), 0);
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    assert_eq!(broker::depth(&conn, &q.dead_letter_queue).await, 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_the_original_properties() {
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    let m = mock(Faults::default()).await;
    let q = broker::topology("props");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let mut headers = FieldTable::default();
    headers.insert(
        "tenant".into(),
        AMQPValue::LongString(LongString::from("acme")),
    );
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )),
    );
    let props = lapin::BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from("m-1"))
        .with_correlation_id(ShortString::from("corr-9"))
        .with_app_id(ShortString::from("billing"))
        .with_delivery_mode(2)
        .with_headers(headers);
    let body = br#"{"device_token":"abc","topic":"com.example.app","payload":{}}"#.to_vec();
    broker::publish_raw(&conn, &q.jobs, vec![(body.clone(), props)]).await;
    w.wait_terminal(1, Duration::from_secs(10)).await;
    w.stop().await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.body, body);
    assert_eq!(
        d.props.message_id().as_ref().map(|s| s.as_str()),
        Some("m-1")
    );
    assert_eq!(
        d.props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("corr-9")
    );
    assert_eq!(
        d.props.app_id().as_ref().map(|s| s.as_str()),
        Some("billing")
    );
    assert_eq!(d.header_str("tenant").as_deref(), Some("acme"));
    assert!(d.header_str("traceparent").is_some());
    assert_eq!(d.header_str("x-apns-reason").as_deref(), Some("InvalidJob"));
    assert!(
        d.header_str("x-error")
            .unwrap()
            .contains("device_token has 3 hex digits")
    );
    assert_eq!(m.mock.stats().answered, 0, "an invalid job is never sent");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_checks_every_line_before_sending_anything() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("publish");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    // Declare the topology the way the worker does.
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &cfg.retry)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let good = job(&token("33", 1), "p1");
    std::fs::write(
        &file,
        format!(
            "{good}\n\n{}\n{{\"device_token\": 1}}\n",
            job(&token("33", 2), "p2")
        ),
    )
    .unwrap();
    let apps = apns_worker::job::AppDirectory::from_config(&cfg.apps);
    let err = apns_worker::publish::run(
        &cfg,
        std::slice::from_ref(&q.jobs),
        apns_worker::publish::Source::Jsonl(file.clone()),
        &apps,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 4"), "{err}");
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0, "nothing published");
    std::fs::write(&file, format!("{good}\n{}\n", job(&token("33", 2), "p2"))).unwrap();
    let n = apns_worker::publish::run(
        &cfg,
        std::slice::from_ref(&q.jobs),
        apns_worker::publish::Source::Jsonl(file.clone()),
        &apps,
        false,
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    // A queue that does not exist (and queues.declare off): one sentence, nothing sent.
    let mut undeclared = cfg.clone();
    undeclared.queues.declare = false;
    let err = apns_worker::publish::run(
        &undeclared,
        &["test.no-such-queue.for-publish".to_string()],
        apns_worker::publish::Source::Jsonl(file),
        &apps,
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "queue \"test.no-such-queue.for-publish\" does not exist; nothing was published"
        ),
        "{err}"
    );
    assert_eq!(broker::depth(&conn, &q.jobs).await, 2);
    let got = broker::drain_queue(&conn, &q.jobs).await;
    assert_eq!(
        got[0].props.message_id().as_ref().map(|s| s.as_str()),
        Some("p1"),
        "message id = job id"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// 20,000 jobs of mixed outcomes: every job ends in the state the table says, the
/// worker's counts equal what the mock and the queues show, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_of_20000_mixed_jobs() {
    const N: u64 = 20_000;
    let faults = Faults {
        rules: vec![
            rule("dead", 410, "Unregistered", None),
            rule("bad0", 400, "BadDeviceToken", None),
            rule("b400", 400, "BadCollapseId", None),
            rule("c503", 503, "ServiceUnavailable", Some(1)),
            rule("d503", 503, "ServiceUnavailable", None),
        ],
        ..Faults::default()
    };
    let m = mock_with(apns_mock::MockConfig {
        faults,
        record: false,
        ..Default::default()
    })
    .await;
    let q = broker::topology("reconcile");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    cfg.broker.prefetch = 2000;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    // The mix, by index: 70% ok, 8% 410, 5% BadDeviceToken, 5% rejected,
    // 6% 503-then-ok, 1% 503-forever, 3% invalid, 2% expired.
    let mut expected = BTreeMap::<&str, u64>::new();
    let mut jobs = Vec::with_capacity(N as usize);
    for i in 0..N {
        let r = i % 100;
        let (kind, body) = match r {
            0..=69 => ("delivered", job(&token("0a", i), &format!("j{i}"))),
            70..=77 => ("cleanup", job(&token("dead", i), &format!("j{i}"))),
            78..=82 => ("cleanup", job(&token("bad0", i), &format!("j{i}"))),
            83..=87 => ("rejected", job(&token("b400", i), &format!("j{i}"))),
            88..=93 => ("delivered", job(&token("c503", i), &format!("j{i}"))),
            94 => ("exhausted", job(&token("d503", i), &format!("j{i}"))),
            95..=97 => ("invalid", json!({"id": format!("j{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": "no"}).to_string()),
            _ => ("expired", json!({"id": format!("j{i}"), "device_token": token("0a", i), "topic": TOPIC, "expiration": 1, "payload": {}}).to_string()),
        };
        *expected.entry(kind).or_default() += 1;
        jobs.push(body);
    }
    let bodies: Vec<(Vec<u8>, lapin::BasicProperties)> = jobs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                b.clone().into_bytes(),
                apns_worker::amqp::job_props(&format!("j{i}")),
            )
        })
        .collect();
    // publish_raw skips the decoder's check, so invalid jobs get in.
    broker::publish_raw(&conn, &q.jobs, bodies).await;
    w.wait_terminal(N, Duration::from_secs(180)).await;
    let s = w.stop().await;

    assert_eq!(s.delivered, expected["delivered"], "{s:?}");
    assert_eq!(s.token_cleanups, expected["cleanup"]);
    assert_eq!(
        s.dead_lettered.get("BadCollapseId").copied().unwrap_or(0),
        expected["rejected"]
    );
    assert_eq!(
        s.dead_lettered
            .get("RetriesExhausted")
            .copied()
            .unwrap_or(0),
        expected["exhausted"]
    );
    assert_eq!(
        s.dead_lettered.get("InvalidJob").copied().unwrap_or(0),
        expected["invalid"]
    );
    assert_eq!(s.expired, expected["expired"]);
    assert_eq!(
        s.received,
        N + s.retried,
        "every retry comes back through the queue once"
    );
    assert_eq!(s.unknown_outcomes, 0);

    let ms = m.mock.stats();
    assert_eq!(
        ms.by_status.get(&200).copied().unwrap_or(0),
        s.delivered,
        "the mock delivered exactly what the worker counted"
    );
    assert_eq!(
        ms.by_status.get(&410).copied().unwrap_or(0)
            + ms.by_reason.get("BadDeviceToken").copied().unwrap_or(0),
        s.token_cleanups
    );
    assert_eq!(
        broker::depth(&conn, &q.dead_letter_queue).await as u64,
        s.dead_lettered_total()
    );
    assert_eq!(
        broker::depth(&conn, &q.cleanup_queue).await as u64,
        s.token_cleanups
    );
    assert_eq!(
        broker::depth(&conn, &q.jobs).await,
        0,
        "none left in the jobs queue, none unacked"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// A cleanup event nobody can receive (no queue bound, `mandatory` returns it) is not
/// an ack: the job stays, comes back, is settled from memory without a second send,
/// and goes through once a queue is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_publish_is_not_an_ack() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let m = mock(Faults {
        rules: vec![rule("dead", 410, "Unregistered", None)],
        ..Faults::default()
    })
    .await;
    let mut q = broker::topology("unroutable");
    q.cleanup_queue = String::new();
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 200;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    broker::publish_jobs(&conn, &q.jobs, vec![job(&token("dead", 1), "d1")]).await;
    w.wait_until("two failed publishes", Duration::from_secs(20), |s| {
        s.publish_failures >= 2
    })
    .await;
    assert_eq!(w.worker.summary().token_cleanups, 0);
    // Now someone binds a queue: the next redelivery gets through.
    let late = format!("{}late", q.jobs);
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        late.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        late.as_str().into(),
        q.cleanup_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .unwrap();
    w.wait_terminal(1, Duration::from_secs(20)).await;
    let s = w.stop().await;
    assert_eq!(s.token_cleanups, 1);
    assert!(
        s.broker_sessions >= 2,
        "the broken channel was replaced: {s:?}"
    );
    assert_eq!(
        m.mock.stats().answered,
        1,
        "APNs was asked once; redeliveries were settled from memory"
    );
    assert_eq!(broker::depth(&conn, &late).await, 1);
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    let _ = ch
        .queue_delete(late.as_str().into(), Default::default())
        .await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// Retries come back ahead of the backlog: a job answered 503 once, at the head of a
/// 30,000-job queue, is sent again after its delay while most of the backlog still
/// waits (the delay queues expire into the ready queue, consumed beside the jobs queue
/// with its own prefetch), not after the whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_comes_back_ahead_of_the_backlog() {
    logs();
    let faults = Faults {
        rules: vec![rule("c503", 503, "ServiceUnavailable", Some(1))],
        latency_ms: 2,
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("ahead");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    // About 10,000 notifications a second: the backlog takes about 3 s.
    cfg.worker.max_notifications_in_flight = 20;
    let conn = broker::connect().await;
    let n = 30_000u64;
    // The whole backlog is queued before the worker starts, the flaky job at its head.
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &cfg.retry)
        .await
        .unwrap();
    let mut jobs = vec![job(&token("c503", 1), "flaky")];
    jobs.extend((0..n).map(|i| job(&token("0000", i), &format!("backlog-{i}"))));
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    let w = broker::start(cfg.clone()).await;
    w.wait_until("all delivered", Duration::from_secs(120), |s| {
        s.delivered == n + 1
    })
    .await;
    let summary = w.stop().await;
    let received = m.mock.received();
    let flaky = token("c503", 1);
    let sends: Vec<(usize, std::time::Instant)> = received
        .iter()
        .enumerate()
        .filter(|(_, r)| r.device_token == flaky)
        .map(|(i, r)| (i, r.at))
        .collect();
    assert_eq!(sends.len(), 2, "{summary:?}");
    let gap = sends[1].1 - sends[0].1;
    let after = received.len() - sends[1].0;
    // fast_retry: the first retry waits at most 100 ms.
    assert!(
        gap <= Duration::from_millis(100 + 1000),
        "the retry came back {gap:?} after its first send"
    );
    assert!(
        after > (n / 2) as usize,
        "most of the backlog was sent after the retry: {after} of {n}"
    );
    eprintln!("retry after {gap:?}, {after} of {n} backlog jobs sent after it");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// The urgent lane: while 6,000 bulk jobs drain (30 sends at a time), urgent jobs
/// published to `queues.urgent` reach APNs within a send or two, not behind the bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_jobs_are_not_behind_the_bulk_backlog() {
    logs();
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let m = mock(faults).await;
    let mut q = broker::topology("lanes");
    q.urgent = format!("{}.urgent", q.jobs);
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.worker.max_notifications_in_flight = 40;
    cfg.worker.urgent_reserved = 10;
    let conn = broker::connect().await;
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &q, &cfg.retry)
        .await
        .unwrap();
    let n = 6_000u64;
    broker::publish_jobs(
        &conn,
        &q.jobs,
        (0..n)
            .map(|i| job(&token("0000", i), &format!("bulk-{i}")))
            .collect(),
    )
    .await;
    let w = broker::start(cfg.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while m.mock.stats().answered < 300 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut published = BTreeMap::new();
    for i in 0..20u64 {
        let t = token("9999", i);
        broker::publish_jobs(&conn, &q.urgent, vec![job(&t, &format!("urgent-{i}"))]).await;
        published.insert(t, std::time::Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.wait_until("all delivered", Duration::from_secs(60), |s| {
        s.delivered == n + 20
    })
    .await;
    w.stop().await;
    let received = m.mock.received();
    let mut worst = Duration::ZERO;
    let mut last_urgent = 0;
    for (i, r) in received.iter().enumerate() {
        if let Some(at) = published.get(&r.device_token) {
            worst = worst.max(r.at.saturating_duration_since(*at));
            last_urgent = i;
        }
    }
    let bulk_after = received.len() - 1 - last_urgent;
    eprintln!(
        "urgent: worst publish -> APNs {worst:?}; {bulk_after} bulk jobs sent after the last urgent one"
    );
    assert!(
        worst < Duration::from_millis(500),
        "an urgent job waited {worst:?}"
    );
    assert!(
        bulk_after > 2_000,
        "the bulk backlog was still draining: {bulk_after} after the last urgent job"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// `queues.shards = 3`: `publish` spreads jobs over the three job queues in turn, every
/// replica consumes all three (two replicas here), and every job is delivered once. A
/// queue beyond the count (left by a lowered `shards`) is not consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_job_queues_are_spread_and_all_consumed() {
    logs();
    let m = mock(Faults::default()).await;
    let mut q = broker::topology("shards");
    q.shards = 3;
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let names = apns_worker::amqp::job_queue_names(&q);
    assert_eq!(names[1], format!("{}.1", q.jobs));
    let apps = apns_worker::job::AppDirectory::from_config(&cfg.apps);
    let n = 3_000u64;
    let published = apns_worker::publish::run(
        &cfg,
        &names,
        apns_worker::publish::Source::Synthetic(apns_worker::publish::Synthetic {
            count: n,
            topic: TOPIC.into(),
            app: None,
            payload_bytes: 200,
            token_prefix: "0000".into(),
        }),
        &apps,
        false,
    )
    .await
    .unwrap();
    assert_eq!(published, n);
    for name in &names {
        assert_eq!(broker::depth(&conn, name).await, 1_000, "{name}");
    }
    // A fourth queue, beyond the count: five jobs nobody consumes.
    let beyond = format!("{}.3", q.jobs);
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        beyond.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .unwrap();
    broker::publish_jobs(
        &conn,
        &beyond,
        (0..5)
            .map(|i| job(&token("1111", i), &format!("beyond-{i}")))
            .collect(),
    )
    .await;
    assert_eq!(
        apns_worker::amqp::depth_if_exists(&conn, &beyond).await,
        Some(5)
    );
    assert_eq!(
        apns_worker::amqp::depth_if_exists(&conn, &format!("{beyond}.no-such-queue")).await,
        None
    );

    let a = broker::start(cfg.clone()).await;
    let b = broker::start(cfg.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while m.mock.stats().answered < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} answered",
            m.mock.stats().answered
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (sa, sb) = (a.stop().await, b.stop().await);
    assert_eq!(sa.delivered + sb.delivered, n, "{sa:?} {sb:?}");
    let received = m.mock.received();
    let distinct: std::collections::BTreeSet<_> =
        received.iter().map(|r| r.device_token.clone()).collect();
    assert_eq!(received.len() as u64, n, "each job sent once");
    assert_eq!(distinct.len() as u64, n);
    assert!(!distinct.iter().any(|t| t.starts_with("1111")));
    for name in &names {
        assert_eq!(broker::depth(&conn, name).await, 0, "{name}");
    }
    assert_eq!(broker::depth(&conn, &beyond).await, 5, "not consumed");
    let _ = ch
        .queue_delete(beyond.as_str().into(), Default::default())
        .await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// The outcome stream (`queues.outcomes = true`): one receipt per notification per
/// settlement (each token of a fan-out job), valid against its schema, routed
/// `<status>.<app>`, confirmed before the ack (so all are there once the jobs are
/// settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_stream_has_a_receipt_per_token_per_settlement() {
    logs();
    let faults = Faults {
        rules: vec![
            rule("a410", 410, "Unregistered", None),
            rule("b400", 400, "BadCollapseId", None),
            rule("c503", 503, "ServiceUnavailable", Some(1)),
            rule("d503", 503, "ServiceUnavailable", None),
        ],
        ..Faults::default()
    };
    let m = mock(faults).await;
    let mut q = broker::topology("outcomes");
    q.outcomes = true;
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let jobs = vec![
        job(&token("0000", 1), "ok-1"),
        job(&token("a410", 1), "dead-1"),
        job(&token("b400", 1), "bad-1"),
        job(&token("c503", 1), "flaky-1"),
        job(&token("d503", 1), "down-1"),
        json!({"id": "expired-1", "device_token": token("0000", 9), "topic": TOPIC,
               "expiration": 1000, "payload": {}})
        .to_string(),
        json!({"id": "fan-1", "device_tokens": [token("0000", 2), token("a410", 2),
               token("c503", 2), "zz"], "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}})
        .to_string(),
    ];
    let mut raw: Vec<(Vec<u8>, lapin::BasicProperties)> = jobs
        .into_iter()
        .map(|j| {
            let id = serde_json::from_str::<serde_json::Value>(&j).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            (j.into_bytes(), apns_worker::amqp::job_props(&id))
        })
        .collect();
    raw.push((b"{not json".to_vec(), apns_worker::amqp::job_props("inv-1")));
    broker::publish_raw(&conn, &q.jobs, raw).await;
    // 7 single jobs and 4 fan-out tokens reach a final state.
    w.wait_terminal(11, Duration::from_secs(30)).await;
    let summary = w.stop().await;
    assert_eq!(summary.unknown_outcomes, 0, "{summary:?}");

    let schema = schema_validator("outcome-receipt.schema.json");
    let got = broker::drain_queue(&conn, &q.outcome_queue).await;
    let mut by_subject: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for r in &got {
        let v = r.json();
        let errors: Vec<String> = schema.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
        assert_eq!(
            r.props.kind().as_ref().map(|k| k.as_str()),
            Some("outcome-receipt")
        );
        let status = v["status"].as_str().unwrap();
        let want_key = match v["app"].as_str() {
            Some(app) => format!("{status}.{app}"),
            None => status.to_string(),
        };
        assert_eq!(r.routing_key, want_key);
        if v["device_token"].is_string() {
            assert!(v["apns_id"].is_string(), "{v}");
        }
        let subject = (
            v["job_id"].as_str().unwrap_or("").to_string(),
            v["device_token"].as_str().unwrap_or("").to_string(),
        );
        let line = format!(
            "{status} {} {}{}",
            v["attempts"],
            v["reason"].as_str().unwrap_or("-"),
            v["apns_status"]
                .as_u64()
                .map(|s| format!(" {s}"))
                .unwrap_or_default()
        );
        by_subject.entry(subject).or_default().push(line);
    }
    for lines in by_subject.values_mut() {
        // Retries come first (fewer attempts); a stable order for the comparison.
        lines.sort_by_key(|l| {
            (
                l.split(' ').nth(1).unwrap().parse::<u32>().unwrap(),
                l.clone(),
            )
        });
    }
    let s = |id: &str, t: &str| (id.to_string(), t.to_string());
    let want: BTreeMap<(String, String), Vec<&str>> = [
        (s("ok-1", &token("0000", 1)), vec!["delivered 1 - 200"]),
        (
            s("dead-1", &token("a410", 1)),
            vec!["token_dead 1 Unregistered 410"],
        ),
        (
            s("bad-1", &token("b400", 1)),
            vec!["dead_lettered 1 BadCollapseId 400"],
        ),
        (
            s("flaky-1", &token("c503", 1)),
            vec!["retrying 1 ServiceUnavailable", "delivered 2 - 200"],
        ),
        (
            s("down-1", &token("d503", 1)),
            vec![
                "retrying 1 ServiceUnavailable",
                "retrying 2 ServiceUnavailable",
                "dead_lettered 3 RetriesExhausted 503",
            ],
        ),
        (s("expired-1", &token("0000", 9)), vec!["expired 0 -"]),
        (s("inv-1", ""), vec!["dead_lettered 0 InvalidJob"]),
        (s("fan-1", &token("0000", 2)), vec!["delivered 1 - 200"]),
        (
            s("fan-1", &token("a410", 2)),
            vec!["token_dead 1 Unregistered 410"],
        ),
        (
            s("fan-1", &token("c503", 2)),
            vec!["retrying 1 ServiceUnavailable", "delivered 2 - 200"],
        ),
        (s("fan-1", "zz"), vec!["dead_lettered 0 InvalidJob"]),
    ]
    .into_iter()
    .collect();
    let got: BTreeMap<(String, String), Vec<&str>> = by_subject
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(got, want);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

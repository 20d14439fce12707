//! What operators and producers do with messages that the worker's own state must not
//! survive: dead letters replayed to the jobs queue (as a shovel or a by-hand move does,
//! properties included), producers' forged control headers, per-message TTLs on jobs
//! that get dead-lettered, and twins of a retry copy (RabbitMQ's at-least-once
//! dead-lettering can deliver one twice). Each case fails on the code before the fix.

mod common;

use std::time::Duration;

use apns_mock::Faults;
use common::broker::{self, Got};
use common::*;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::json;

fn job(token: &str, id: Option<&str>) -> String {
    let mut j =
        json!({"device_token": token, "topic": TOPIC, "payload": {"aps": {"alert": "hello"}}});
    if let Some(id) = id {
        j["id"] = json!(id);
    }
    j.to_string()
}

fn props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

fn with_headers(p: BasicProperties, h: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut t = p.headers().clone().unwrap_or_default();
    for (k, v) in h {
        t.insert((*k).into(), v.clone());
    }
    p.with_headers(t)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.to_string()))
}

/// RabbitMQ's `x-death` of a message that expired in `queue`.
fn death(queue: &str) -> AMQPValue {
    let mut t = FieldTable::default();
    t.insert("queue".into(), text(queue));
    t.insert("reason".into(), text("expired"));
    t.insert("count".into(), AMQPValue::LongLongInt(1));
    t.insert("exchange".into(), text(""));
    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(t)]))
}

fn sends_to(m: &Mock, token: &str) -> usize {
    m.mock
        .received()
        .iter()
        .filter(|r| r.device_token == token)
        .count()
}

/// Move every dead letter back to the jobs queue with its body and properties, as a
/// shovel or `rabbitmqadmin` would.
async fn replay(conn: &lapin::Connection, q: &apns_worker::config::QueueSettings) -> Vec<Got> {
    let dead = broker::drain_queue(conn, &q.dead_letter_queue).await;
    broker::publish_raw(
        conn,
        &q.jobs,
        dead.iter()
            .map(|g| (g.body.clone(), g.props.clone()))
            .collect(),
    )
    .await;
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_is_a_new_job() {
    let m = mock(Faults {
        rules: vec![rule("d503", 503, "ServiceUnavailable", None)],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("replay");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let max = cfg.retry.max_attempts as usize;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let with_id = token("d503", 1);
    let without_id = token("d503", 2);
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![
            (job(&with_id, Some("replay-1")).into_bytes(), props()),
            (job(&without_id, None).into_bytes(), props()),
        ],
    )
    .await;
    w.wait_terminal(2, Duration::from_secs(30)).await;
    assert_eq!(sends_to(&m, &with_id), max);

    // The dead letters carry what a person needs and nothing the worker would trust.
    let dead = replay(&conn, &q).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(
            d.header_str("x-apns-reason").as_deref(),
            Some("RetriesExhausted")
        );
        assert_eq!(d.header_int("x-attempts"), Some(max as i64));
        for gone in ["x-death", "x-apns-hop", "x-apns-id"] {
            assert!(d.header(gone).is_none(), "{gone} on a dead letter");
        }
        assert!(d.props.expiration().is_none());
    }

    // Replayed while APNs still refuses: sent again from attempt 1, dead-lettered again
    // (a new dead letter), never acked unsent.
    w.wait_terminal(4, Duration::from_secs(30)).await;
    assert_eq!(sends_to(&m, &with_id), 2 * max);
    assert_eq!(sends_to(&m, &without_id), 2 * max);
    assert_eq!(w.worker.summary().already_settled, 0);

    // Replayed after the outage: delivered.
    m.mock.set_faults(Faults::default()).unwrap();
    replay(&conn, &q).await;
    w.wait_terminal(6, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(s.delivered, 2, "{s:?}");
    assert_eq!(s.already_settled, 0, "{s:?}");
    assert_eq!(broker::depth(&conn, &q.dead_letter_queue).await, 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_headers_neither_skip_nor_shorten_a_job() {
    let m = mock(Faults {
        rules: vec![rule("c503", 503, "ServiceUnavailable", Some(1))],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("forged");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    // Job A is delivered and remembered under its apns-id.
    let a = token("0a", 1);
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(job(&a, Some("job-a")).into_bytes(), props())],
    )
    .await;
    w.wait_terminal(1, Duration::from_secs(20)).await;
    let a_id = m.mock.received()[0].apns_id.clone().unwrap();

    let b = token("0b", 2); // carries A's apns-id and a hop: sent all the same
    let c = token("c503", 3); // x-attempts 100: still gets its retries
    let d = token("0d", 4); // x-attempts of the wrong type, without x-death: ignored
    let e = token("0e", 5); // a forged delay-queue copy whose x-attempts is text
    let forged = [
        (
            job(&b, None),
            vec![
                ("x-apns-id", text(&a_id)),
                ("x-apns-hop", AMQPValue::LongLongInt(1)),
            ],
        ),
        (
            job(&c, Some("job-c")),
            vec![("x-attempts", AMQPValue::LongLongInt(100))],
        ),
        (
            job(&d, Some("job-d")),
            vec![("x-attempts", AMQPValue::LongLongInt(4_294_967_295))],
        ),
        (
            job(&e, Some("job-e")),
            vec![
                ("x-attempts", text("abc")),
                ("x-death", death(&format!("{}.100", q.retry_prefix))),
            ],
        ),
    ];
    broker::publish_raw(
        &conn,
        &q.jobs,
        forged
            .iter()
            .map(|(body, h)| (body.clone().into_bytes(), with_headers(props(), h)))
            .collect(),
    )
    .await;
    w.wait_terminal(5, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(
        sends_to(&m, &b),
        1,
        "a job with a forged x-apns-id and hop is sent"
    );
    assert_eq!(
        sends_to(&m, &c),
        2,
        "503 once, then delivered on its own retry"
    );
    assert_eq!(sends_to(&m, &d), 1);
    assert_eq!(sends_to(&m, &e), 0);
    assert_eq!(s.delivered, 4, "{s:?}");
    assert_eq!(s.already_settled, 0, "{s:?}");
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].header_str("x-apns-reason").as_deref(),
        Some("InvalidJob")
    );
    let err = dead[0].header_str("x-error").unwrap();
    assert!(
        err.contains(
            "header x-attempts must be a whole number from 0 to 4294967295, not the text \"abc\""
        ),
        "{err}"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_outlives_the_jobs_ttl() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("ttl");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let ttl = props().with_expiration(ShortString::from("1500"));
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(
            br#"{"device_token":"zz","topic":"com.example.app","payload":{}}"#.to_vec(),
            ttl,
        )],
    )
    .await;
    w.wait_terminal(1, Duration::from_secs(20)).await;
    // The job's TTL (1.5 s) is what is under test: wait it out, then look.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(
        dead.len(),
        1,
        "the dead letter is still there after the job's TTL"
    );
    assert!(dead[0].props.expiration().is_none());
    assert_eq!(
        dead[0].header_str("x-apns-original-expiration").as_deref(),
        Some("1500")
    );
    let schema = schema_validator("dead-letter-headers.schema.json");
    let h = dead[0].worker_headers();
    assert!(schema.is_valid(&h), "{h}");
    w.stop().await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_of_a_retry_copy_are_sent_once() {
    // Slow answers, so that both twins are in the worker at once.
    let m = mock(Faults {
        latency_ms: 300,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("twins");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let t = token("0f", 1);
    let copy = with_headers(
        props().with_message_id(ShortString::from("twin-1")),
        &[
            ("x-attempts", AMQPValue::LongLongInt(1)),
            ("x-apns-hop", AMQPValue::LongLongInt(1)),
            ("x-death", death(&format!("{}.100", q.retry_prefix))),
        ],
    );
    let body = job(&t, Some("twin-1")).into_bytes();
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(body.clone(), copy.clone()), (body, copy)],
    )
    .await;
    w.wait_until("both twins settled", Duration::from_secs(20), |s| {
        s.delivered + s.already_settled >= 2
    })
    .await;
    let s = w.stop().await;
    assert_eq!(sends_to(&m, &t), 1, "{s:?}");
    // The twin waited for the first one's answer and its settlement, and was acked.
    assert_eq!((s.delivered, s.already_settled), (1, 1), "{s:?}");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twins_of_a_parked_copy_go_on_as_one() {
    let m = mock(Faults {
        latency_ms: 200,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("parktwins");
    // A key the mock does not know: APNs refuses the credentials, the job parks.
    let (pem, _public) = apns_mock::certs::generate_signing_key().unwrap();
    let mut app = m.token_app(TEAM, KEY, 1);
    app.keys[0].key = Some(apns::secret::Secret::new(pem));
    let mut cfg = worker_config(q.clone(), vec![("shop", app)]);
    cfg.retry.park_delay_ms = 60_000;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let copy = with_headers(
        props().with_message_id(ShortString::from("parked-1")),
        &[
            ("x-apns-hop", AMQPValue::LongLongInt(3)),
            (
                "x-death",
                death(&apns_worker::amqp::delay_queue_name(&q, 60_000)),
            ),
        ],
    );
    let body = job(&token("0c", 1), Some("parked-1")).into_bytes();
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(body.clone(), copy.clone()), (body, copy)],
    )
    .await;
    w.wait_until("both twins settled", Duration::from_secs(20), |s| {
        s.parked + s.already_settled >= 2
    })
    .await;
    let s = w.stop().await;
    assert_eq!((s.parked, s.already_settled), (1, 1), "{s:?}");
    let park_queue = apns_worker::amqp::delay_queue_name(&q, 60_000);
    assert_eq!(
        broker::depth(&conn, &park_queue).await,
        1,
        "one copy goes on"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// A producer's control headers do not ride along on a park copy: once the copy comes
/// back from the delay queue the worker trusts what it carries, so it must carry the
/// worker's values (a forged `x-attempts = 100` would otherwise dead-letter the job
/// after one send once the app recovers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_park_copy_carries_the_workers_state_not_the_producers() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("parkforged");
    // A key the mock does not know: APNs refuses the credentials, the job parks.
    let (pem, _public) = apns_mock::certs::generate_signing_key().unwrap();
    let mut app = m.token_app(TEAM, KEY, 1);
    app.keys[0].key = Some(apns::secret::Secret::new(pem));
    let mut cfg = worker_config(q.clone(), vec![("shop", app)]);
    cfg.retry.park_delay_ms = 60_000;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let forged_id = "6b1a2f8e-0000-4000-8000-000000000001";
    let forged = with_headers(
        props(),
        &[
            ("x-attempts", AMQPValue::LongLongInt(100)),
            ("x-apns-hop", AMQPValue::LongLongInt(5)),
            ("x-apns-lineage", AMQPValue::LongLongInt(7)),
            ("x-apns-config-waits", AMQPValue::LongLongInt(9)),
            ("x-apns-id", text(forged_id)),
        ],
    );
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(job(&token("0d", 1), None).into_bytes(), forged)],
    )
    .await;
    w.wait_until("parked", Duration::from_secs(20), |s| s.parked >= 1)
        .await;
    let s = w.stop().await;
    assert_eq!(s.parked, 1, "{s:?}");
    let copies = broker::drain_queue(&conn, &apns_worker::amqp::delay_queue_name(&q, 60_000)).await;
    assert_eq!(copies.len(), 1);
    let c = &copies[0];
    assert_eq!(c.header_int("x-attempts"), Some(0), "the worker's count");
    assert_eq!(c.header_int("x-apns-hop"), Some(1));
    assert_eq!(c.header_int("x-apns-config-waits"), Some(0));
    assert_eq!(c.header_int("x-apns-lineage"), None, "the producer's run");
    let stamped = c.header_str("x-apns-id").expect("the drawn apns-id");
    assert_ne!(stamped, forged_id);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// RabbitMQ routes a message to the queues its `CC` header names as well; a copy or a
/// dead letter that kept a producer's `CC` would land there too (in the jobs queue, a
/// retry sent at once, again and again). And a transient job's copies and dead letter
/// are persistent all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_and_dead_letters_drop_cc_and_are_persistent() {
    use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
    let m = mock(Faults {
        rules: vec![rule("cc50", 503, "ServiceUnavailable", None)],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("cc");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let probe = format!("{}.cc-probe", q.jobs);
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        probe.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let w = broker::start(cfg.clone()).await;
    let transient = with_headers(
        BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(1),
        &[(
            "CC",
            AMQPValue::FieldArray(FieldArray::from(vec![text(&probe)])),
        )],
    );
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(job(&token("cc50", 1), Some("cc-1")).into_bytes(), transient)],
    )
    .await;
    w.wait_terminal(1, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(s.retried, u64::from(cfg.retry.max_attempts - 1), "{s:?}");
    assert_eq!(
        broker::depth(&conn, &probe).await,
        1,
        "only the producer's own publish reached the CC queue"
    );
    let dead = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].props.delivery_mode(), &Some(2), "persistent");
    assert!(dead[0].header("CC").is_none(), "no CC on the dead letter");
    ch.queue_delete(probe.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

//! Fan-out jobs (`device_tokens`) end to end: the real RabbitMQ, the mock APNs. Every
//! token reaches exactly its final state, and the message is settled once; the send
//! bound holds; bad fan-out input gets its documented answer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use apns_mock::Faults;
use apns_worker::job::{APNS_ID_NAMESPACE, FanOut};
use common::broker::{self, Got};
use common::*;
use serde_json::json;
use uuid::Uuid;

fn tokens_of(m: &Got) -> Vec<String> {
    let mut t: Vec<String> = m.json()["device_tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no device_tokens in {}", m.json()))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    t.sort();
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_of_a_fan_out_job_reaches_its_own_final_state() {
    logs();
    let faults = Faults {
        rules: vec![
            rule("a410", 410, "Unregistered", None),
            rule("b400", 400, "BadCollapseId", None),
            rule("c503", 503, "ServiceUnavailable", Some(1)),
            rule("d503", 503, "Shutdown", None),
        ],
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("fanout");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;

    let ok: Vec<String> = (0..3).map(|i| token("0000", i)).collect();
    let dead = token("a410", 1);
    let refused: Vec<String> = (0..2).map(|i| token("b400", i)).collect();
    let flaky: Vec<String> = (0..2).map(|i| token("c503", i)).collect();
    let hopeless = token("d503", 1);
    let mut given: Vec<String> = Vec::new();
    given.extend(ok.iter().cloned());
    given.push(ok[0].clone()); // named twice: sent once
    given.push(dead.clone());
    given.extend(refused.iter().cloned());
    given.extend(flaky.iter().cloned());
    given.push(hopeless.clone());
    given.push("zz".into()); // not a token: dead-lettered, the others sent
    let campaign = json!({"id": "camp-1", "device_tokens": given, "topic": TOPIC,
        "payload": {"aps": {"alert": "news"}}})
    .to_string();
    let expired = json!({"id": "camp-old", "device_tokens": [token("0000", 7), token("0000", 8)],
        "topic": TOPIC, "expiration": 1000, "payload": {}})
    .to_string();
    broker::publish_jobs(&conn, &q.jobs, vec![campaign, expired]).await;

    // 3 delivered at once, 2 after one retry; 1 cleanup; 2 + 1 + 1 dead-lettered; 2
    // expired: 12 tokens in a terminal state.
    w.wait_until("every token settled", Duration::from_secs(30), |s| {
        s.delivered == 5
            && s.token_cleanups == 1
            && s.expired == 2
            && s.dead_lettered.values().sum::<u64>() == 4
    })
    .await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(30))
        .await;
    let summary = w.stop().await;
    assert_eq!(summary.dead_lettered.get("BadCollapseId"), Some(&2));
    assert_eq!(summary.dead_lettered.get("RetriesExhausted"), Some(&1));
    assert_eq!(summary.dead_lettered.get("InvalidJob"), Some(&1));
    // c503 x2 once each; d503 twice before giving up at 3 attempts: one child job per
    // round, for the tokens of that round.
    assert_eq!(summary.retried, 4, "{summary:?}");

    // What APNs saw: each good token once, under its own apns-id; the flaky ones
    // twice, the hopeless one three times; nothing of the expired job or of "zz".
    let job_apns_id = Uuid::new_v5(&APNS_ID_NAMESPACE, b"camp-1");
    let mut sends: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for r in m.mock.received() {
        sends
            .entry(r.device_token.clone())
            .or_default()
            .push(r.apns_id.clone());
    }
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for t in &ok {
        want.insert(t.clone(), 1);
    }
    want.insert(dead.clone(), 1);
    for t in &refused {
        want.insert(t.clone(), 1);
    }
    for t in &flaky {
        want.insert(t.clone(), 2);
    }
    want.insert(hopeless.clone(), 3);
    let got: BTreeMap<String, usize> = sends.iter().map(|(t, v)| (t.clone(), v.len())).collect();
    assert_eq!(got, want, "sends per token");
    for (t, ids) in &sends {
        let id = FanOut::apns_id(job_apns_id, t).to_string();
        assert!(
            ids.iter().all(|i| i.as_deref() == Some(id.as_str())),
            "{t}: the token's own apns-id on every attempt: {ids:?}"
        );
    }

    // One cleanup event, for the dead token, naming the job.
    let events = broker::drain_queue(&conn, &q.cleanup_queue).await;
    assert_eq!(events.len(), 1);
    let ev = events[0].json();
    assert!(
        schema_validator("token-cleanup-event.schema.json").is_valid(&ev),
        "{ev}"
    );
    assert_eq!(ev["device_token"], dead.as_str());
    assert_eq!(ev["job_id"], "camp-1");

    // One dead letter per reason, each listing exactly its tokens, the rest of the job
    // as it was; headers valid against their schema.
    let dl_schema = schema_validator("dead-letter-headers.schema.json");
    let dls = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    let by_reason: BTreeMap<String, &Got> = dls
        .iter()
        .map(|d| (d.header_str("x-apns-reason").unwrap(), d))
        .collect();
    assert_eq!(dls.len(), 3, "{:?}", by_reason.keys().collect::<Vec<_>>());
    let mut sorted_refused = refused.clone();
    sorted_refused.sort();
    assert_eq!(tokens_of(by_reason["BadCollapseId"]), sorted_refused);
    assert_eq!(
        by_reason["BadCollapseId"].header_int("x-apns-status"),
        Some(400)
    );
    assert_eq!(
        tokens_of(by_reason["RetriesExhausted"]),
        vec![hopeless.clone()]
    );
    assert_eq!(
        by_reason["RetriesExhausted"].header_int("x-attempts"),
        Some(3)
    );
    assert_eq!(tokens_of(by_reason["InvalidJob"]), vec!["zz".to_string()]);
    assert!(
        by_reason["InvalidJob"]
            .header_str("x-error")
            .unwrap()
            .starts_with("device_tokens: device_token must be hexadecimal"),
        "{:?}",
        by_reason["InvalidJob"].header_str("x-error")
    );
    for d in &dls {
        assert!(
            dl_schema.is_valid(&d.worker_headers()),
            "{}",
            d.worker_headers()
        );
        let v = d.json();
        assert_eq!(v["id"], "camp-1");
        assert_eq!(v["payload"], json!({"aps": {"alert": "news"}}));
        assert_eq!(
            d.props.message_id().as_ref().map(|s| s.as_str()),
            Some("camp-1"),
            "the original's properties"
        );
    }
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_in_flight_stay_within_the_bound_over_all_jobs() {
    logs();
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("fanout-bound");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.worker.max_notifications_in_flight = 16;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let mut jobs = Vec::new();
    for j in 0..4u64 {
        let tokens: Vec<String> = (0..500).map(|i| token("0000", j * 1000 + i)).collect();
        jobs.push(
            json!({"id": format!("bound-{j}"), "device_tokens": tokens, "topic": TOPIC,
                "payload": {"aps": {"alert": "x"}}})
            .to_string(),
        );
    }
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_until("2,000 delivered", Duration::from_secs(60), |s| {
        s.delivered == 2000
    })
    .await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(10))
        .await;
    let summary = w.stop().await;
    let stats = m.mock.stats();
    assert_eq!(stats.answered, 2000, "each token once: {summary:?}");
    // The mock counts a stream until its handler returns, a moment after the answer
    // left; the worker frees its permit when the answer arrives, so a new stream can
    // overlap a finished one by that moment. 4 over the bound is that overlap; without
    // the bound, the 2,000 tokens go out hundreds at once.
    assert!(
        stats.peak_streams <= 16 + 4,
        "at most max_notifications_in_flight streams at once: {}",
        stats.peak_streams
    );
    assert!(
        stats.peak_streams >= 8,
        "the jobs' tokens were sent side by side: {}",
        stats.peak_streams
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fan_out_jobs_are_dead_lettered_with_the_exact_problem() {
    logs();
    let m = mock(Faults::default()).await;
    let q = broker::topology("fanout-hostile");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.worker.max_tokens_per_job = 10;
    cfg.worker.max_job_bytes = 8 << 20;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let t = token("0000", 1);
    let eleven: Vec<String> = (0..11).map(|i| token("0000", 100 + i)).collect();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "empty",
            json!({"device_tokens": [], "topic": TOPIC, "payload": {}}),
            "device_tokens holds 0 tokens; a job holds 1 to 10",
        ),
        (
            "over",
            json!({"device_tokens": eleven, "topic": TOPIC, "payload": {}}),
            "device_tokens holds 11 tokens; a job holds 1 to 10",
        ),
        (
            "both",
            json!({"device_token": t, "device_tokens": [t], "topic": TOPIC, "payload": {}}),
            "the job has both device_token and device_tokens; give one of device_token, device_tokens and channel_id",
        ),
        (
            "dupes",
            json!({"device_tokens": vec![t.clone(); 100_000], "topic": TOPIC, "payload": {}}),
            "device_tokens holds 100000 tokens; a job holds 1 to 10",
        ),
        (
            "all-bad",
            json!({"device_tokens": ["zz", "abc"], "topic": TOPIC, "payload": {}}),
            "none of the 2 device_tokens is a device token: device_token must be hexadecimal",
        ),
    ];
    let raw = cases
        .iter()
        .map(|(id, body, _)| {
            (
                body.to_string().into_bytes(),
                apns_worker::amqp::job_props(id),
            )
        })
        .collect();
    broker::publish_raw(&conn, &q.jobs, raw).await;
    w.wait_until("every job dead-lettered", Duration::from_secs(30), |s| {
        s.dead_lettered.get("InvalidJob") == Some(&(cases.len() as u64))
    })
    .await;
    let summary = w.stop().await;
    assert_eq!(summary.delivered, 0);
    assert_eq!(m.mock.stats().answered, 0, "nothing was sent");
    let dls = broker::drain_queue(&conn, &q.dead_letter_queue).await;
    assert_eq!(dls.len(), cases.len());
    for (id, body, want) in &cases {
        let d = dls
            .iter()
            .find(|d| d.props.message_id().as_ref().map(|s| s.as_str()) == Some(*id))
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        let err = d.header_str("x-error").unwrap();
        assert!(err.starts_with(want), "{id}: {err}");
        assert_eq!(d.body, body.to_string().into_bytes(), "{id}: byte for byte");
    }
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_loss_mid_job_resends_only_the_tokens_without_an_answer() {
    logs();
    let faults = Faults {
        latency_ms: 100,
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("fanout-loss");
    let name = format!("fanout-loss-{}", Uuid::new_v4().simple());
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.broker.connection_name = Some(name.clone());
    cfg.broker.reconnect_min_ms = 50;
    cfg.broker.reconnect_max_ms = 200;
    cfg.worker.max_notifications_in_flight = 20;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let tokens: Vec<String> = (0..1000).map(|i| token("0000", i)).collect();
    let job = json!({"id": "loss-1", "device_tokens": tokens, "topic": TOPIC,
        "payload": {"aps": {"alert": "x"}}})
    .to_string();
    broker::publish_jobs(&conn, &q.jobs, vec![job]).await;
    // The job takes 5 s (20 tokens at a time, 100 ms each). Once a tenth is answered,
    // the broker closes the worker's connection (rabbitmqctl takes a second or two),
    // with most tokens still waiting for a permit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while m.mock.stats().answered < 100 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        broker::rabbitmqctl_close(&name),
        "the worker's connection was closed"
    );
    let at_close = m.mock.stats().answered;
    assert!(at_close < 1000, "the job was still under way: {at_close}");
    w.wait_until("reconnected", Duration::from_secs(30), |s| {
        s.broker_sessions >= 2
    })
    .await;
    w.wait_until("every token delivered", Duration::from_secs(60), |s| {
        s.delivered == 1000
    })
    .await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(30))
        .await;
    let summary = w.stop().await;
    let mut sends: BTreeMap<String, u32> = BTreeMap::new();
    for r in m.mock.received() {
        *sends.entry(r.device_token).or_default() += 1;
    }
    assert_eq!(sends.len(), 1000, "every token sent");
    let twice: Vec<_> = sends.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "tokens answered before the loss are settled from memory, not sent again: {} sent twice ({summary:?})",
        twice.len()
    );
    assert!(
        summary.withdrawn > 0,
        "tokens waiting for a permit were withdrawn: {summary:?}"
    );
    assert_eq!(broker::depth(&conn, &q.jobs).await, 0);
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_settles_the_answered_tokens_and_hands_on_the_rest() {
    logs();
    let faults = Faults {
        latency_ms: 100,
        ..Faults::default()
    };
    let m = mock(faults).await;
    let q = broker::topology("fanout-drain");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.worker.max_notifications_in_flight = 20;
    cfg.worker.drain_secs = 10;
    let conn = broker::connect().await;
    let first = broker::start(cfg.clone()).await;
    let tokens: Vec<String> = (0..1000).map(|i| token("0000", i)).collect();
    let job = json!({"id": "drain-1", "device_tokens": tokens, "topic": TOPIC,
        "payload": {"aps": {"alert": "x"}}})
    .to_string();
    broker::publish_jobs(&conn, &q.jobs, vec![job]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while m.mock.stats().answered < 100 {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SIGTERM's path: the job stops starting sends, its sends in flight finish, and the
    // message is settled: answered tokens done, the rest one child job.
    let stopped = tokio::time::Instant::now();
    let s1 = first.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the drain did not wait for the whole job: {:?}",
        stopped.elapsed()
    );
    assert!(s1.delivered >= 100 && s1.delivered < 1000, "{s1:?}");
    assert_eq!(s1.parked, 1000 - s1.delivered, "the rest handed on: {s1:?}");
    assert_eq!(s1.requeued, 0, "{s1:?}");
    let second = broker::start(cfg.clone()).await;
    second
        .wait_until("the rest delivered", Duration::from_secs(60), |s| {
            s.delivered == 1000 - s1.delivered
        })
        .await;
    second
        .wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(30))
        .await;
    second.stop().await;
    let mut sends: BTreeMap<String, u32> = BTreeMap::new();
    for r in m.mock.received() {
        *sends.entry(r.device_token).or_default() += 1;
    }
    assert_eq!(sends.len(), 1000, "every token sent");
    assert!(
        sends.values().all(|n| *n == 1),
        "no token sent twice across the restart"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

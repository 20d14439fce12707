//! The admin endpoint: /metrics shows the counts a mixed run produced; /readyz follows
//! the broker; /healthz answers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use apns_mock::Faults;
use common::broker;
use common::proxy::Proxy;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `name{labels} value` lines of the exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

fn start_admin(w: &broker::Running) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = w.worker.clone();
    tokio::spawn(async move {
        let (addr, serve) = apns_worker::obs::admin::bind(
            "127.0.0.1:0".parse().unwrap(),
            worker,
            Default::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
        tx.send(addr).unwrap();
        serve.await;
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_counts_of_a_mixed_run() {
    let m = mock(Faults {
        rules: vec![
            rule("dead", 410, "Unregistered", None),
            rule("b400", 400, "BadTopic", None),
            rule("c503", 503, "ServiceUnavailable", Some(1)),
        ],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("metrics");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let admin = start_admin(&w);
    let mut jobs = Vec::new();
    for i in 0..100u64 {
        let prefix = ["0a", "0a", "0a", "0a", "dead", "b400", "c503"][(i % 7) as usize];
        jobs.push(serde_json::json!({"id": format!("m{i}"), "device_token": token(prefix, i), "topic": TOPIC, "payload": {}}).to_string());
    }
    // An invalid job is counted under the app it would go to (here the only one, as the
    // decoder resolves it); one that names no app it can be told from has app "".
    jobs.push(r#"{"not": "a job"}"#.to_string());
    jobs.push("not JSON at all".to_string());
    broker::publish_raw(
        &conn,
        &q.jobs,
        jobs.into_iter()
            .map(|b| (b.into_bytes(), apns_worker::amqp::job_props("x")))
            .collect(),
    )
    .await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(30))
        .await;
    let s = w.worker.summary();
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let v = samples(&text);
    let job = |outcome: &str, reason: &str| {
        v.get(&format!(
            r#"apns_worker_jobs_total{{app="shop",outcome="{outcome}",reason="{reason}"}}"#
        ))
        .copied()
        .unwrap_or(0.0) as u64
    };
    assert_eq!(job("delivered", ""), s.delivered, "{text}");
    assert_eq!(job("token_cleanup", "Unregistered"), s.token_cleanups);
    assert_eq!(job("dead_letter", "BadTopic"), s.dead_lettered["BadTopic"]);
    assert_eq!(job("retry", "ServiceUnavailable"), s.retried);
    assert_eq!(job("dead_letter", "InvalidJob"), 1, "{text}");
    assert_eq!(
        v[&format!(
            r#"apns_worker_build_info{{version="{}"}}"#,
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );
    // The app trusts the mock's CA (rcgen's default validity ends 4096-01-01).
    assert_eq!(
        v[r#"apns_worker_certificate_expiry_timestamp_seconds{app="shop",certificate="ca"}"#],
        67_090_118_400.0
    );
    assert_eq!(
        v[r#"apns_worker_jobs_total{app="",outcome="dead_letter",reason="InvalidJob"}"#] as u64,
        1
    );
    assert_eq!(
        v[r#"apns_worker_dead_letters_total{reason="BadTopic"}"#] as u64,
        s.dead_lettered["BadTopic"]
    );
    let sent_200 = v
        .get(r#"apns_worker_apns_send_duration_seconds_count{app="shop",status="200"}"#)
        .copied()
        .unwrap_or(0.0) as u64;
    assert_eq!(sent_200, s.delivered, "one send-duration sample per 200");
    assert_eq!(m.mock.stats().by_status[&200], s.delivered);
    assert_eq!(v["apns_worker_broker_connected"], 1.0);
    assert_eq!(v[r#"apns_worker_prefetch"#], 500.0);
    assert_eq!(
        v.iter()
            .filter(|(k, _)| k.starts_with("apns_worker_apns_stream_limit{app=\"shop\""))
            .count(),
        2,
        "two connections"
    );
    assert!(
        v.iter()
            .any(|(k, val)| k.starts_with("apns_worker_apns_stream_limit") && *val == 1000.0)
    );
    assert!(v[r#"apns_worker_provider_token_age_seconds{app="shop",key_id="KEY1234567"}"#] >= 0.0);
    assert_eq!(v[r#"apns_worker_app_circuit_state{app="shop"}"#], 0.0);
    assert!(v.contains_key(r#"apns_worker_apns_connects_total{app="shop",scope="KEY1234567"}"#));
    assert!(text.contains("# TYPE apns_worker_end_to_end_latency_seconds histogram"));
    assert!(text.trim_end().ends_with("# EOF"));
    w.stop().await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_and_healthz_answers() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("readyz");
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.broker.url = apns::secret::Secret::new(proxy.amqp_url());
    cfg.broker.reconnect_min_ms = 100;
    cfg.broker.reconnect_max_ms = 200;
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let admin = start_admin(&w);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/healthz").await.0, 200);
    proxy.cut();
    let wait_for = |want: u16| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = get(admin, "/readyz").await;
            if status == want {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stayed {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let body = wait_for(503).await;
    assert!(body.contains("broker_connected false"), "{body}");
    assert_eq!(
        get(admin, "/healthz").await.0,
        200,
        "alive while the broker is away"
    );
    proxy.restore();
    wait_for(200).await;
    assert_eq!(get(admin, "/nope").await.0, 404);
    w.stop().await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

/// Reconnects do not add series: the `connection` label is the pool's slot, not a
/// number that grows with every new connection. Prometheus keeps every series it ever
/// scraped, so what matters is the union over the run's scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_series_stay_bounded_through_reconnects() {
    let m = mock(Faults {
        // Every connection is sent away after 40 answers: dozens of reconnects.
        goaway_after: Some(40),
        ..Faults::default()
    })
    .await;
    let q = broker::topology("metrics-series");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 2))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let admin = start_admin(&w);
    let jobs = (0..3000u64)
        .map(|i| {
            serde_json::json!({"id": format!("s{i}"), "device_token": token("0b", i), "topic": TOPIC, "payload": {}})
                .to_string()
        })
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    let mut series = std::collections::BTreeSet::new();
    let mut connections = std::collections::BTreeSet::new();
    let mut scrapes = 0;
    while w.terminal() < 3000 {
        let (_, text) = get(admin, "/metrics").await;
        scrapes += 1;
        for k in samples(&text).into_keys() {
            if let Some(i) = k.find("connection=\"") {
                let rest = &k[i + 12..];
                connections.insert(rest[..rest.find('"').unwrap()].to_string());
            }
            series.insert(k);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, text) = get(admin, "/metrics").await;
    let v = samples(&text);
    let connects = v[r#"apns_worker_apns_connects_total{app="shop",scope="KEY1234567"}"#];
    assert!(
        connects >= 20.0,
        "the run should reconnect often: {connects}"
    );
    println!(
        "{scrapes} scrapes, {connects} connections opened: {} series in all, connection labels {connections:?}",
        series.len()
    );
    assert!(
        connections.iter().all(|c| c == "0" || c == "1"),
        "connection labels beyond the 2 slots: {connections:?}"
    );
    let final_series = v.len();
    assert!(
        series.len() <= final_series + 8,
        "series kept appearing: {} over the run, {final_series} at the end",
        series.len()
    );
    w.stop().await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

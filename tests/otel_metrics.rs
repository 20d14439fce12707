//! OTLP metrics carry the same counts as /metrics: an in-memory exporter stands in
//! for the OTLP one. (Its own test binary: it installs the global meter provider.)

mod common;

use std::time::Duration;

use apns_mock::Faults;
use common::broker;
use common::*;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

fn attr(kv: &[opentelemetry::KeyValue], k: &str) -> String {
    kv.iter()
        .find(|x| x.key.as_str() == k)
        .map(|x| x.value.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_carry_the_counts_of_a_run() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    apns_worker::obs::telemetry::set_otlp_metrics(true);

    let m = mock(Faults {
        rules: vec![rule("b400", 400, "BadTopic", None)],
        ..Faults::default()
    })
    .await;
    let q = broker::topology("otlp");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let status: std::sync::Arc<dyn apns_worker::obs::Status> = w.worker.clone();
    w.worker
        .metrics()
        .attach_otlp(apns_worker::obs::otlp::install(std::sync::Arc::downgrade(
            &status,
        )));
    let jobs = (0..30u64)
        .map(|i| {
            let prefix = if i % 3 == 0 { "b400" } else { "0a" };
            serde_json::json!({"id": format!("o{i}"), "device_token": token(prefix, i), "topic": TOPIC, "payload": {}}).to_string()
        })
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_terminal(30, Duration::from_secs(20)).await;
    provider.force_flush().unwrap();
    let s = w.worker.summary();
    let exported = exporter.get_finished_metrics().unwrap();
    let last = exported.last().expect("an export");
    let mut jobs = std::collections::BTreeMap::new();
    let (mut sends_200, mut connected) = (0u64, None);
    for scope in last.scope_metrics() {
        for metric in scope.metrics() {
            match (metric.name(), metric.data()) {
                ("apns_worker_jobs", AggregatedMetrics::U64(MetricData::Sum(sum))) => {
                    for p in sum.data_points() {
                        let kv: Vec<_> = p.attributes().cloned().collect();
                        jobs.insert((attr(&kv, "outcome"), attr(&kv, "reason")), p.value());
                    }
                }
                (
                    "apns_worker_apns_send_duration",
                    AggregatedMetrics::F64(MetricData::Histogram(h)),
                ) => {
                    for p in h.data_points() {
                        let kv: Vec<_> = p.attributes().cloned().collect();
                        if attr(&kv, "status") == "200" {
                            sends_200 += p.count();
                        }
                    }
                }
                ("apns_worker_broker_connected", AggregatedMetrics::I64(MetricData::Gauge(g))) => {
                    connected = g.data_points().next().map(|p| p.value());
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        jobs.get(&("delivered".into(), "".into())).copied(),
        Some(s.delivered),
        "{jobs:?}"
    );
    assert_eq!(
        jobs.get(&("dead_letter".into(), "BadTopic".into()))
            .copied(),
        Some(s.dead_lettered["BadTopic"])
    );
    assert_eq!(sends_200, s.delivered);
    assert_eq!(
        connected,
        Some(1),
        "observable instruments from the scrape-time snapshot"
    );
    w.stop().await;
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

//! A producer's W3C traceparent becomes the parent of the worker's job span, which
//! carries the messaging and APNs attributes. (Its own test binary: it installs a
//! global subscriber with an in-memory exporter.)

mod common;

use std::time::Duration;

use apns_mock::Faults;
use common::broker;
use common::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producers_traceparent_is_the_parent_of_the_job_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    apns_worker::obs::telemetry::set_job_spans(true);

    let m = mock(Faults::default()).await;
    let q = broker::topology("tracing");
    let cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(format!("00-{trace_id}-{parent_span}-01"))),
    );
    headers.insert(
        "tracestate".into(),
        AMQPValue::LongString(LongString::from("vendor=x")),
    );
    let props = apns_worker::amqp::job_props("traced-1").with_headers(headers);
    let body = serde_json::json!({"id": "traced-1", "device_token": token("0a", 1), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string();
    broker::publish_raw(&conn, &q.jobs, vec![(body.into_bytes(), props)]).await;
    w.wait_terminal(1, Duration::from_secs(10)).await;
    w.stop().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let job = spans
        .iter()
        .find(|s| s.name == format!("{} process", q.jobs))
        .unwrap_or_else(|| {
            panic!(
                "no job span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        job.span_context.trace_id().to_string(),
        trace_id,
        "same trace as the producer"
    );
    assert_eq!(
        job.parent_span_id.to_string(),
        parent_span,
        "the producer's span is the parent"
    );
    assert_eq!(job.span_kind, opentelemetry::trace::SpanKind::Consumer);
    let attr = |k: &str| {
        job.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attr("messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attr("messaging.destination.name"), Some(q.jobs.clone()));
    assert_eq!(attr("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attr("messaging.message.id").as_deref(), Some("traced-1"));
    assert_eq!(attr("apns.status").as_deref(), Some("200"));
    assert_eq!(attr("apns.app").as_deref(), Some("shop"));
    assert_eq!(attr("apns.outcome").as_deref(), Some("delivered"));
    assert_eq!(attr("apns.attempt").as_deref(), Some("1"));
    assert!(attr("apns.id").is_some());
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

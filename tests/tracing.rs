//! A producer's W3C traceparent becomes the parent of the worker's job span, which
//! carries the attributes of OpenTelemetry's messaging conventions (v1.37.0) and the
//! APNs result; each APNs request is a client span under it (HTTP client conventions),
//! with no device token anywhere. (Its own test binary: it installs a global
//! subscriber with an in-memory exporter.)

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

    let m = mock(Faults {
        rules: vec![rule("b400", 400, "BadTopic", None)],
        ..Faults::default()
    })
    .await;
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
    let body_len = body.len();
    // A job APNs rejects, with no AMQP message id.
    let rejected =
        serde_json::json!({"device_token": token("b400", 2), "topic": TOPIC, "payload": {}})
            .to_string();
    let bare = lapin::BasicProperties::default()
        .with_content_type(lapin::types::ShortString::from("application/json"));
    broker::publish_raw(
        &conn,
        &q.jobs,
        vec![(body.into_bytes(), props), (rejected.into_bytes(), bare)],
    )
    .await;
    w.wait_terminal(2, Duration::from_secs(10)).await;
    w.stop().await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let process = format!("process {}", q.jobs);
    let job = spans
        .iter()
        .find(|s| s.name == process && s.span_context.trace_id().to_string() == trace_id)
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
    // Messaging conventions: required, conditionally required and recommended.
    assert_eq!(attr("messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attr("messaging.operation.name").as_deref(), Some("process"));
    assert_eq!(attr("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attr("messaging.destination.name"), Some(q.jobs.clone()));
    assert_eq!(attr("messaging.message.id").as_deref(), Some("traced-1"));
    assert_eq!(
        attr("messaging.message.body.size"),
        Some(body_len.to_string())
    );
    assert!(attr("messaging.rabbitmq.message.delivery_tag").is_some());
    assert_eq!(attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr("server.port").as_deref(), Some("5672"));
    assert_eq!(attr("error.type"), None, "delivered: no error");
    assert_eq!(attr("apns.status").as_deref(), Some("200"));
    assert_eq!(attr("apns.app").as_deref(), Some("shop"));
    assert_eq!(attr("apns.outcome").as_deref(), Some("delivered"));
    assert_eq!(attr("apns.attempt").as_deref(), Some("1"));
    assert!(attr("apns.id").is_some());

    // The APNs request: a client span under the job's span.
    let attrs = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.to_string())
    };
    let request = spans
        .iter()
        .find(|s| s.parent_span_id == job.span_context.span_id())
        .expect("a client span for the APNs request");
    assert_eq!(request.name, "POST /3/device/{device_token}");
    assert_eq!(request.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(
        attrs(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attrs(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attrs(request, "server.address").as_deref(),
        Some("localhost")
    );
    assert_eq!(
        attrs(request, "network.protocol.version").as_deref(),
        Some("2")
    );
    assert!(
        attrs(request, "url.full")
            .unwrap()
            .ends_with("/3/device/REDACTED")
    );
    assert_eq!(attrs(request, "error.type"), None);

    // The rejected job: no message id attribute (not ""), error.type on both spans.
    let failed = spans
        .iter()
        .find(|s| s.name == process && s.span_context.trace_id().to_string() != trace_id)
        .expect("the rejected job's span");
    assert_eq!(attrs(failed, "messaging.message.id"), None);
    assert_eq!(attrs(failed, "error.type").as_deref(), Some("BadTopic"));
    assert!(matches!(
        failed.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    let failed_request = spans
        .iter()
        .find(|s| s.parent_span_id == failed.span_context.span_id())
        .unwrap();
    assert_eq!(
        attrs(failed_request, "http.response.status_code").as_deref(),
        Some("400")
    );
    assert_eq!(attrs(failed_request, "error.type").as_deref(), Some("400"));
    assert_eq!(
        attrs(failed_request, "apns.reason").as_deref(),
        Some("BadTopic")
    );

    // No device token in any span, whole or in part beyond a log's 8-digit prefix.
    for s in &spans {
        for kv in &s.attributes {
            let v = kv.value.to_string();
            for t in [token("0a", 1), token("b400", 2)] {
                assert!(!v.contains(&t[..16]), "{}: {v}", kv.key);
            }
        }
    }
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

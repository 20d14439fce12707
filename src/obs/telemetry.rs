//! Logs and traces.
//!
//! Logs: `tracing`, JSON lines when stdout is not a terminal (containers), human lines
//! on a terminal; `APNS_WORKER_LOG_FORMAT=json|text` overrides; the level comes from
//! `RUST_LOG`.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and
//! `OTEL_SDK_DISABLED` is not `true`, spans are exported over OTLP, gRPC or, when
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`) says `http/protobuf`,
//! HTTP (the standard `OTEL_*` variables apply: service name, headers, timeout,
//! sampler). Each job gets one
//! span, a child of the W3C `traceparent` its producer put in the AMQP headers.
//! Otherwise no job span is created at all.
//!
//! Metrics: with the same variables (`..._METRICS_ENDPOINT`), the figures of `/metrics`
//! are also exported over OTLP every `OTEL_METRIC_EXPORT_INTERVAL` (see `otel_metrics`).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static JOB_SPANS: AtomicBool = AtomicBool::new(false);
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Do logs go out as JSON lines (so a fatal error should, too)?
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}
static OTLP_METRICS: AtomicBool = AtomicBool::new(false);

/// Is an OTLP meter provider installed (so the worker should feed it)?
pub fn otlp_metrics_on() -> bool {
    OTLP_METRICS.load(Ordering::Relaxed)
}

/// Say a meter provider is installed (tests install their own).
pub fn set_otlp_metrics(on: bool) {
    OTLP_METRICS.store(on, Ordering::Relaxed);
}

/// Are job spans wanted (a trace exporter is installed)?
pub fn job_spans() -> bool {
    JOB_SPANS.load(Ordering::Relaxed)
}

/// Turn job spans on or off (tests install their own exporter).
pub fn set_job_spans(on: bool) {
    JOB_SPANS.store(on, Ordering::Relaxed);
}

/// Flushes and stops the trace exporter when dropped.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
        if let Some(m) = self.meters.take() {
            let _ = m.shutdown();
        }
    }
}

/// Is OTLP export of `signal` (traces, metrics) configured? The standard variables:
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`, unless
/// `OTEL_SDK_DISABLED=true` or `OTEL_<SIGNAL>_EXPORTER=none`.
fn otlp_wanted(signal: &str) -> bool {
    let set = |k: &str| std::env::var(k).map(|v| !v.is_empty()).unwrap_or(false);
    let upper = signal.to_uppercase();
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .map(|v| v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    let none = std::env::var(format!("OTEL_{upper}_EXPORTER"))
        .map(|v| v == "none")
        .unwrap_or(false);
    !disabled
        && !none
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || set(&format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")))
}

/// The exporter for `signal` over the transport [`otlp_protocol`] chooses.
fn otlp_exporter<E>(
    signal: &str,
    var: impl Fn(&str) -> Option<String>,
    grpc: impl FnOnce() -> Result<E, opentelemetry_otlp::ExporterBuildError>,
    http: impl FnOnce() -> Result<E, opentelemetry_otlp::ExporterBuildError>,
) -> Result<E, String> {
    match otlp_protocol(signal, var)? {
        opentelemetry_otlp::Protocol::Grpc => grpc(),
        _ => http(),
    }
    .map_err(|e| e.to_string())
}

/// The OTLP transport for `signal`: `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC. `http/json` is not offered.
pub fn otlp_protocol(
    signal: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<opentelemetry_otlp::Protocol, String> {
    let specific = format!("OTEL_EXPORTER_OTLP_{}_PROTOCOL", signal.to_uppercase());
    let (name, value) = match var(&specific).filter(|v| !v.is_empty()) {
        Some(v) => (specific, v),
        None => (
            "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
            var("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_default(),
        ),
    };
    match value.as_str() {
        "" | "grpc" => Ok(opentelemetry_otlp::Protocol::Grpc),
        "http/protobuf" => Ok(opentelemetry_otlp::Protocol::HttpBinary),
        other => Err(format!(
            "{name}={other} is not supported: use grpc (port 4317) or http/protobuf (port 4318)"
        )),
    }
}

/// The OTLP variables name a transport this build has (checked at start: a typo is a
/// configuration error, not a silently missing exporter).
pub fn check_otlp_env() -> Result<(), String> {
    let env = |k: &str| std::env::var(k).ok();
    for signal in ["traces", "metrics"] {
        if otlp_wanted(signal) {
            otlp_protocol(signal, env)?;
        }
    }
    Ok(())
}

fn resource() -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "apns-worker".into()),
        )
        .build()
}

/// The filter directive that keeps lapin's returned-message lines (bodies) out.
pub const QUIET_RETURNS: &str = "lapin::returned_messages=off";

pub fn init_logging() -> Telemetry {
    init_logging_with("info")
}

/// As [`init_logging`], with another level when `RUST_LOG` is not set. Call it inside
/// the Tokio runtime (the OTLP exporter needs one).
pub fn init_logging_with(default_level: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_level))
        // lapin logs every message the broker returns (an unroutable mandatory
        // publish) at WARN with its whole body: device tokens and payloads. Never
        // shown, whatever RUST_LOG says; the worker logs its own line per return.
        .add_directive(QUIET_RETURNS.parse().expect("a valid directive"));
    let json = match std::env::var("APNS_WORKER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    JSON_LOGS.store(json, Ordering::Relaxed);
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let mut telemetry = Telemetry::default();
    let env = |k: &str| std::env::var(k).ok();
    let otel_layer = if otlp_wanted("traces") {
        let exporter = otlp_exporter(
            "traces",
            env,
            || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .build()
            },
            || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
            },
        );
        match exporter {
            Ok(exporter) => {
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource())
                    .build();
                let layer =
                    tracing_opentelemetry::layer().with_tracer(provider.tracer("apns-worker"));
                telemetry.provider = Some(provider);
                Some(layer)
            }
            Err(e) => {
                eprintln!("OTLP trace exporter not started: {e}");
                None
            }
        }
    } else {
        None
    };
    if otlp_wanted("metrics") {
        // Periodic export, every OTEL_METRIC_EXPORT_INTERVAL (default 60 s).
        let exporter = otlp_exporter(
            "metrics",
            env,
            || {
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .build()
            },
            || {
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .build()
            },
        );
        match exporter {
            Ok(exporter) => {
                let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                    .with_periodic_exporter(exporter)
                    .with_resource(resource())
                    .build();
                opentelemetry::global::set_meter_provider(meters.clone());
                OTLP_METRICS.store(true, Ordering::Relaxed);
                telemetry.meters = Some(meters);
            }
            Err(e) => eprintln!("OTLP metric exporter not started: {e}"),
        }
    }
    set_job_spans(otel_layer.is_some());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json_layer)
        .with(text_layer)
        .with(otel_layer)
        .try_init();
    telemetry
}

/// Reads W3C trace context from AMQP headers.
pub struct HeaderExtractor<'a>(pub Vec<(&'a str, &'a str)>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// The trace id of a `traceparent` value, for log lines (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_otlp_protocol_follows_the_standard_variables() {
        use opentelemetry_otlp::Protocol::{Grpc, HttpBinary};
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(otlp_protocol("traces", env(&[])), Ok(Grpc));
        let http = &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert_eq!(otlp_protocol("traces", env(http)), Ok(HttpBinary));
        assert_eq!(otlp_protocol("metrics", env(http)), Ok(HttpBinary));
        let mixed = &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
        ];
        assert_eq!(otlp_protocol("traces", env(mixed)), Ok(HttpBinary));
        assert_eq!(otlp_protocol("metrics", env(mixed)), Ok(Grpc));
        assert_eq!(
            otlp_protocol("traces", env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])),
            Err("OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported: use grpc (port 4317) or http/protobuf (port 4318)".into())
        );
    }

    #[test]
    fn trace_ids_from_traceparent() {
        assert_eq!(
            trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-b7ad6b7169203331-01"), None);
    }
}

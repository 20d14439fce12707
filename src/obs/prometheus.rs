//! Prometheus metrics, rendered at `GET /metrics`. Counters and histograms the worker
//! updates as it settles jobs, plus a snapshot taken at scrape time of connections,
//! stream limits, provider-token ages, circuits and broker health.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms);
//! every metric is listed in the README.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::otlp::OtelInstruments;
use super::snapshot::{Sample, Snapshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub app: String,
    /// delivered, token_cleanup, channel_cleanup, environment_mismatch, dead_letter, retry,
    /// park, awaiting_config, expired, already_settled, requeued
    pub outcome: String,
    /// APNs' reason or ours; empty for delivered and expired.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub app: String,
    /// The HTTP status, or `unknown` / `not_sent` when APNs gave none.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub app: String,
    /// Reloads: `reloaded` or `failed` (the current credentials stay). Environment
    /// checks: `mismatch` or `dead`.
    pub result: String,
}

/// The families the worker updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<JobLabels, Counter>,
    pub send_duration: Family<SendLabels, Histogram>,
    pub end_to_end: Histogram,
    pub dead_letters: Family<ReasonLabels, Counter>,
    pub credential_reloads: Family<ReloadLabels, Counter>,
    pub environment_checks: Family<ReloadLabels, Counter>,
    /// Handles of the per-message hot series, so the common case neither allocates
    /// label strings nor looks the family up.
    hot: std::sync::RwLock<std::collections::HashMap<String, Hot>>,
    /// The OTLP instruments, when OTLP metrics are on (see `otlp`).
    otel: std::sync::OnceLock<OtelInstruments>,
}

#[derive(Clone, Debug)]
struct Hot {
    delivered: Counter,
    sent_200: Histogram,
}

/// The status label of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendStatus {
    Http(u16),
    NotSent,
    Unknown,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "apns_worker_jobs",
            "Jobs settled, by app, outcome and reason",
            jobs.clone(),
        );
        let send_duration = Family::<SendLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "apns_worker_apns_send_duration_seconds",
            "Time to an answer from APNs per notification (waiting for a stream, resends and the request)",
            send_duration.clone(),
        );
        let end_to_end = Histogram::new(latency_buckets());
        registry.register(
            "apns_worker_end_to_end_latency_seconds",
            "From the job's publication (x-published-at-ms header, else the AMQP timestamp) to its settlement",
            end_to_end.clone(),
        );
        let dead_letters = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "apns_worker_dead_letters",
            "Dead letters published, by reason",
            dead_letters.clone(),
        );
        let credential_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "apns_worker_credential_reloads",
            "Reloads of an app's credentials (rotated key, certificate or password files, SIGHUP), by result",
            credential_reloads.clone(),
        );
        let environment_checks = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "apns_worker_environment_checks",
            "Tokens APNs called BadDeviceToken, sent once to the app's other environment: mismatch (accepted there) or dead",
            environment_checks.clone(),
        );
        Metrics {
            environment_checks,
            registry,
            jobs,
            send_duration,
            end_to_end,
            dead_letters,
            credential_reloads,
            hot: Default::default(),
            otel: Default::default(),
        }
    }
}

impl Metrics {
    /// Also record into these OTLP instruments (see `otlp::install`).
    pub fn attach_otlp(&self, instruments: OtelInstruments) {
        let _ = self.otel.set(instruments);
    }

    fn hot(&self, app: &str) -> Hot {
        if let Some(h) = self.hot.read().expect("metrics lock").get(app) {
            return h.clone();
        }
        let h = Hot {
            delivered: self
                .jobs
                .get_or_create(&JobLabels {
                    app: app.to_string(),
                    outcome: "delivered".into(),
                    reason: String::new(),
                })
                .clone(),
            sent_200: self
                .send_duration
                .get_or_create(&SendLabels {
                    app: app.to_string(),
                    status: "200".into(),
                })
                .clone(),
        };
        self.hot
            .write()
            .expect("metrics lock")
            .insert(app.to_string(), h.clone());
        h
    }

    /// One send's duration.
    pub fn observe_send(&self, app: &str, status: SendStatus, secs: f64) {
        let label = || match status {
            SendStatus::Http(s) => s.to_string(),
            SendStatus::NotSent => "not_sent".into(),
            SendStatus::Unknown => "unknown".into(),
        };
        if let Some(o) = self.otel.get() {
            o.send_duration.record(
                secs,
                &[
                    opentelemetry::KeyValue::new("app", app.to_string()),
                    opentelemetry::KeyValue::new("status", label()),
                ],
            );
        }
        if status == SendStatus::Http(200) {
            self.hot(app).sent_200.observe(secs);
            return;
        }
        let status = label();
        self.send_duration
            .get_or_create(&SendLabels {
                app: app.to_string(),
                status,
            })
            .observe(secs);
    }

    /// From publication to settlement.
    pub fn observe_end_to_end(&self, secs: f64) {
        self.end_to_end.observe(secs);
        if let Some(o) = self.otel.get() {
            o.end_to_end.record(secs, &[]);
        }
    }

    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
        if let Some(o) = self.otel.get() {
            o.dead_letters.add(
                1,
                &[opentelemetry::KeyValue::new("reason", reason.to_string())],
            );
        }
    }

    /// The environment guard's check of a token APNs called bad: `mismatch` (the
    /// other environment accepted it) or `dead` (refused there too).
    pub fn environment_check(&self, app: &str, mismatch: bool) {
        self.environment_checks
            .get_or_create(&ReloadLabels {
                app: app.to_string(),
                result: if mismatch { "mismatch" } else { "dead" }.into(),
            })
            .inc();
    }

    /// An app's credentials were reloaded (`ok`) or the new ones were refused.
    pub fn credential_reload(&self, app: &str, ok: bool) {
        self.credential_reloads
            .get_or_create(&ReloadLabels {
                app: app.to_string(),
                result: if ok { "reloaded" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn job(&self, app: &str, outcome: &str, reason: &str) {
        if let Some(o) = self.otel.get() {
            o.jobs.add(
                1,
                &[
                    opentelemetry::KeyValue::new("app", app.to_string()),
                    opentelemetry::KeyValue::new("outcome", outcome.to_string()),
                    opentelemetry::KeyValue::new("reason", reason.to_string()),
                ],
            );
        }
        if outcome == "delivered" && reason.is_empty() {
            self.hot(app).delivered.inc();
            return;
        }
        self.jobs
            .get_or_create(&JobLabels {
                app: app.to_string(),
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }
}

#[derive(Debug)]
struct Snapshots(Vec<Snapshot>);

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Labels(Vec<(&'static str, String)>);

impl EncodeLabelSet for Labels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (k, v) in &self.0 {
            (*k, v.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.0 {
            let Some(first) = family.samples.first() else {
                continue;
            };
            let metric_type = match first {
                Sample::Gauge(..) => ConstGauge::new(0i64).metric_type(),
                Sample::Counter(..) => ConstCounter::new(0u64).metric_type(),
            };
            let mut e = encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
            // A single sample without labels is written as `name value`.
            if let [one] = family.samples.as_slice() {
                match one {
                    Sample::Gauge(l, v) if l.is_empty() => {
                        ConstGauge::new(*v).encode(e)?;
                        continue;
                    }
                    Sample::Counter(l, v) if l.is_empty() => {
                        ConstCounter::new(*v).encode(e)?;
                        continue;
                    }
                    _ => {}
                }
            }
            for s in &family.samples {
                match s {
                    Sample::Gauge(l, v) => {
                        let labels = Labels(l.clone());
                        ConstGauge::new(*v).encode(e.encode_family(&labels)?)?
                    }
                    Sample::Counter(l, v) => {
                        let labels = Labels(l.clone());
                        ConstCounter::new(*v).encode(e.encode_family(&labels)?)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The text exposition: the worker's families, then the snapshot.
pub fn render(metrics: &Metrics, snapshot: Vec<Snapshot>) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &metrics.registry);
    let mut dynamic = Registry::default();
    dynamic.register_collector(Box::new(Snapshots(snapshot)));
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, &dynamic);
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_snapshots() {
        let m = Metrics::default();
        m.job("shop", "delivered", "");
        m.job("shop", "delivered", "");
        m.job("shop", "dead_letter", "BadTopic");
        m.send_duration
            .get_or_create(&SendLabels {
                app: "shop".into(),
                status: "200".into(),
            })
            .observe(0.004);
        let text = render(
            &m,
            vec![Snapshot {
                name: "apns_worker_apns_stream_limit",
                help: "Streams the server allows",
                samples: vec![Sample::Gauge(
                    vec![("app", "shop".into()), ("connection", "1".into())],
                    1000,
                )],
            }],
        );
        assert!(
            text.contains(r#"apns_worker_jobs_total{app="shop",outcome="delivered",reason=""} 2"#),
            "{text}"
        );
        assert!(text.contains(
            r#"apns_worker_jobs_total{app="shop",outcome="dead_letter",reason="BadTopic"} 1"#
        ));
        assert!(text.contains(r#"apns_worker_apns_send_duration_seconds_bucket{le="0.005",app="shop",status="200"} 1"#), "{text}");
        assert!(
            text.contains(r#"apns_worker_apns_stream_limit{app="shop",connection="1"} 1000"#),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}

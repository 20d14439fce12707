//! OTLP metrics: the figures of `/metrics`, also exported over OTLP when an endpoint is
//! configured (`telemetry` installs the meter provider). Counters and histograms are
//! recorded as jobs settle (`prometheus::Metrics` feeds these instruments too); the
//! scrape-time snapshot (connections, stream limits, token ages, circuits, broker
//! state) becomes observable instruments. Nothing here runs unless installed.

use std::sync::Weak;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};

use super::snapshot::{Sample, Status};

/// The instruments recorded on the hot path.
pub struct OtelInstruments {
    pub jobs: Counter<u64>,
    pub dead_letters: Counter<u64>,
    pub send_duration: Histogram<f64>,
    pub end_to_end: Histogram<f64>,
}

impl std::fmt::Debug for OtelInstruments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtelInstruments")
    }
}

fn attributes(labels: &[(&'static str, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

/// Create the instruments on the global meter provider: the recorded ones are returned
/// (give them to `Metrics::attach_otlp`); the snapshot's families read `status` at
/// each export.
pub fn install(status: Weak<dyn Status>) -> OtelInstruments {
    let meter: Meter = opentelemetry::global::meter("apns-worker");
    let instruments = OtelInstruments {
        jobs: meter
            .u64_counter("apns_worker_jobs")
            .with_description("Jobs settled, by app, outcome and reason")
            .build(),
        dead_letters: meter
            .u64_counter("apns_worker_dead_letters")
            .with_description("Dead letters published, by reason")
            .build(),
        send_duration: meter
            .f64_histogram("apns_worker_apns_send_duration")
            .with_unit("s")
            .with_description("Time to an answer from APNs per notification")
            .build(),
        end_to_end: meter
            .f64_histogram("apns_worker_end_to_end_latency")
            .with_unit("s")
            .with_description("From the job's publication to its settlement")
            .build(),
    };
    // The snapshot's families, each an observable instrument reading a fresh snapshot.
    let families = status.upgrade().map(|s| s.snapshot()).unwrap_or_default();
    for family in families {
        let weak = status.clone();
        let name = family.name;
        let pick = move || {
            let s = weak.upgrade()?;
            s.snapshot().into_iter().find(|f| f.name == name)
        };
        match family.samples.first() {
            Some(Sample::Counter(..)) => {
                meter
                    .u64_observable_counter(name)
                    .with_description(family.help)
                    .with_callback(move |obs| {
                        for s in pick().map(|f| f.samples).unwrap_or_default() {
                            if let Sample::Counter(l, v) = s {
                                obs.observe(v, &attributes(&l));
                            }
                        }
                    })
                    .build();
            }
            _ => {
                meter
                    .i64_observable_gauge(name)
                    .with_description(family.help)
                    .with_callback(move |obs| {
                        for s in pick().map(|f| f.samples).unwrap_or_default() {
                            if let Sample::Gauge(l, v) = s {
                                obs.observe(v, &attributes(&l));
                            }
                        }
                    })
                    .build();
            }
        }
    }
    instruments
}

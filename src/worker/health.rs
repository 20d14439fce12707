//! What health, readiness and the metrics snapshot report: broker state, in-flight
//! deliveries, and, read at scrape time, connections, stream limits, provider-token
//! ages and circuit states.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use apns::ApnsClient;

use super::circuit::{Circuits, State};
use super::stats::Summary;
use crate::obs::{Sample, Snapshot};

#[derive(Debug, Default)]
pub struct Health {
    pub broker_connected: AtomicBool,
    pub consuming: AtomicBool,
    /// Deliveries being processed now (all sessions).
    pub in_flight: AtomicUsize,
    /// Shutting down: fan-out jobs start no more sends; their unsent tokens go on as a
    /// child job for another replica.
    pub draining: AtomicBool,
    /// The broker node of the current (or last) session: host and port (empty before
    /// the first session).
    pub broker_node: std::sync::Mutex<(String, u16)>,
    /// The broker blocks the current connection (a resource alarm): its reason.
    pub broker_blocked: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// `host:port` of the broker node of the current (or last) session.
    pub fn broker_node(&self) -> (String, u16) {
        self.broker_node
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// The broker's reason while it blocks the current connection.
    pub fn broker_blocked(&self) -> Option<String> {
        self.broker_blocked
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    pub fn set_broker_blocked(&self, reason: Option<String>) {
        if let Ok(mut b) = self.broker_blocked.lock() {
            *b = reason;
        }
    }

    pub fn set_broker_node(&self, host: String, port: u16) {
        if let Ok(mut n) = self.broker_node.lock() {
            *n = (host, port);
        }
    }
}

fn gauge(name: &'static str, help: &'static str, samples: Vec<Sample>) -> Snapshot {
    Snapshot {
        name,
        help,
        samples,
    }
}

/// The values read at scrape time.
pub fn snapshot(
    client: &ApnsClient,
    circuits: &Circuits,
    h: &Health,
    s: &Summary,
    prefetch: u16,
) -> Vec<Snapshot> {
    let (mut in_flight, mut limits, mut open, mut connects, mut failures, mut goaways, mut lost) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut token_age = vec![];
    let mut expiry = vec![];
    for app in client.apps() {
        for pool in app.pools() {
            let scope = pool
                .name()
                .split_once('/')
                .map(|(_, s)| s.to_string())
                .unwrap_or_default();
            let base = || vec![("app", app.name().to_string()), ("scope", scope.clone())];
            let info = pool.connection_info();
            for c in &info {
                let mut l = base();
                l.push(("connection", c.slot.to_string()));
                in_flight.push(Sample::Gauge(l.clone(), c.in_flight as i64));
                limits.push(Sample::Gauge(l, c.stream_limit as i64));
            }
            open.push(Sample::Gauge(base(), info.len() as i64));
            let st = &pool.stats;
            connects.push(Sample::Counter(base(), st.connects.load(Ordering::Relaxed)));
            failures.push(Sample::Counter(
                base(),
                st.connect_failures.load(Ordering::Relaxed),
            ));
            goaways.push(Sample::Counter(base(), st.goaways.load(Ordering::Relaxed)));
            lost.push(Sample::Counter(
                base(),
                st.closed_unexpectedly.load(Ordering::Relaxed),
            ));
        }
        for (kind, t) in app.certificate_expiries() {
            expiry.push(Sample::Gauge(
                vec![
                    ("app", app.name().to_string()),
                    ("certificate", kind.to_string()),
                ],
                *t,
            ));
        }
        for (key_id, age) in app.token_ages() {
            token_age.push(Sample::Gauge(
                vec![("app", app.name().to_string()), ("key_id", key_id)],
                age as i64,
            ));
        }
    }
    let (mut paused, mut trips) = (vec![], vec![]);
    for (app, state, n) in circuits.states() {
        let state = match state {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        };
        paused.push(Sample::Gauge(vec![("app", app.to_string())], state));
        trips.push(Sample::Counter(vec![("app", app.to_string())], n));
    }
    let one = |v: bool| vec![Sample::Gauge(vec![], v as i64)];
    let count = |v: u64| vec![Sample::Counter(vec![], v)];
    vec![
        gauge(
            "apns_worker_apns_streams_in_flight",
            "Streams in flight per APNs connection",
            in_flight,
        ),
        gauge(
            "apns_worker_apns_stream_limit",
            "Concurrent streams the connection allows now (the server's SETTINGS, capped by max_streams_per_connection)",
            limits,
        ),
        gauge(
            "apns_worker_apns_connections_open",
            "Open APNs connections per app and credentials scope",
            open,
        ),
        gauge(
            "apns_worker_apns_connects",
            "APNs connections opened",
            connects,
        ),
        gauge(
            "apns_worker_apns_connect_failures",
            "Failed attempts to connect to APNs",
            failures,
        ),
        gauge(
            "apns_worker_apns_goaways",
            "APNs connections ended by a GOAWAY",
            goaways,
        ),
        gauge(
            "apns_worker_apns_connections_lost",
            "APNs connections that died (PING unanswered, reset, I/O error)",
            lost,
        ),
        gauge(
            "apns_worker_provider_token_age_seconds",
            "Age of the provider token (JWT) in use, per key",
            token_age,
        ),
        gauge(
            "apns_worker_certificate_expiry_timestamp_seconds",
            "When a certificate in use expires (Unix time): the app's client certificate, or the earliest of its extra CA file",
            expiry,
        ),
        gauge(
            "apns_worker_build_info",
            "Always 1; the running build's version in the label",
            vec![Sample::Gauge(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1,
            )],
        ),
        gauge(
            "apns_worker_app_circuit_state",
            "Per-app circuit for broken credentials: 0 closed, 1 probing, 2 open (paused)",
            paused,
        ),
        gauge(
            "apns_worker_app_circuit_trips",
            "Times an app was paused for broken credentials",
            trips,
        ),
        gauge(
            "apns_worker_broker_connected",
            "1 when connected to RabbitMQ",
            one(h.broker_connected.load(Ordering::Relaxed)),
        ),
        gauge(
            "apns_worker_broker_node",
            "1 for the broker node (host:port) of the current session, 0 while disconnected",
            {
                // No sample before the first session: no node was reached yet.
                let (host, port) = h.broker_node();
                (!host.is_empty())
                    .then(|| {
                        Sample::Gauge(
                            vec![("node", format!("{host}:{port}"))],
                            i64::from(h.broker_connected.load(Ordering::Relaxed)),
                        )
                    })
                    .into_iter()
                    .collect()
            },
        ),
        gauge(
            "apns_worker_broker_blocked",
            "1 while the broker blocks this replica's connection (a memory or disk alarm): no new deliveries, settlements wait",
            one(h.broker_blocked().is_some()),
        ),
        gauge(
            "apns_worker_consuming",
            "1 when consuming the jobs queue",
            one(h.consuming.load(Ordering::Relaxed)),
        ),
        gauge(
            "apns_worker_deliveries_in_flight",
            "Deliveries being processed (bounded by the prefetch)",
            vec![Sample::Gauge(
                vec![],
                h.in_flight.load(Ordering::Relaxed) as i64,
            )],
        ),
        gauge(
            "apns_worker_prefetch",
            "Configured consumer prefetch (unacked deliveries at once)",
            vec![Sample::Gauge(vec![], i64::from(prefetch))],
        ),
        gauge(
            "apns_worker_broker_sessions",
            "Broker sessions started (1 plus reconnects)",
            count(s.broker_sessions),
        ),
        gauge(
            "apns_worker_unknown_outcomes",
            "Sends whose answer was lost (possibly delivered twice)",
            count(s.unknown_outcomes),
        ),
        gauge(
            "apns_worker_redelivered_resent",
            "Redelivered jobs with no remembered outcome, sent again (possibly twice)",
            count(s.redelivered_resent),
        ),
        gauge(
            "apns_worker_publish_failures",
            "Settlement publishes that failed; the job was requeued",
            count(s.publish_failures),
        ),
        gauge(
            "apns_worker_uncertain_publishes",
            "Settlement publishes lost with their channel (may exist twice)",
            count(s.uncertain_publishes),
        ),
    ]
}

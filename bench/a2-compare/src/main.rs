//! apns-worker's APNs client and the `a2` crate, sending the same notifications to the
//! same mock APNs in the same run: throughput and the ratio. See ./run.sh.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use a2::{DefaultNotificationBuilder, NotificationBuilder, NotificationOptions};
use apns_worker::apns::client::AppClient;
use apns_worker::apns::notification::{Notification, NotificationParts, PushType};
use apns_worker::config::{AppConfig, KeyConfig};
use apns_worker::mock::{MockApns, MockConfig};

const TOPIC: &str = "com.example.bench";

fn token(i: usize) -> String {
    format!("{i:016x}{}", "0".repeat(48))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let concurrency: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(2000);
    let pad = "x".repeat(900);
    apns_worker::telemetry::init_logging_with("warn");

    let mock = MockApns::start(MockConfig { record: false, ..MockConfig::default() }).await.unwrap();
    let dir = std::env::temp_dir().join(format!("a2-compare-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    mock.write_ca(&ca).unwrap();
    // One key each, so the two clients' tokens do not count as updates of one key.
    let ours_key = mock.generate_key("BENCHTEAM1", "OURKEY0001").unwrap();
    let a2_key = mock.generate_key("BENCHTEAM1", "A2KEY00001").unwrap();

    // apns-worker's client.
    let app = AppConfig {
        endpoint: mock.endpoint(),
        topics: vec![TOPIC.into()],
        default_topic: None,
        connections: 1,
        max_streams_per_connection: 1000,
        ca_file: Some(ca.clone()),
        team_id: Some("BENCHTEAM1".into()),
        keys: vec![KeyConfig { key_id: "OURKEY0001".into(), key_file: None, key: Some(apns_worker::secret::Secret::new(ours_key)), topics: vec![] }],
        certificate: None,
    };
    let ours = Arc::new(
        AppClient::start("bench", &app, &Default::default(), &Default::default(), Arc::new(apns_worker::apns::jwt::SystemClock)).unwrap(),
    );
    let notes: Arc<Vec<Notification>> = Arc::new(
        (0..n)
            .map(|i| {
                let payload = serde_json::json!({"aps": {"alert": {"title": "Benchmark", "body": format!("notification {i}")}}, "pad": pad});
                Notification::new(NotificationParts {
                    device_token: token(i),
                    topic: TOPIC.into(),
                    push_type: PushType::Alert,
                    priority: None,
                    expiration: None,
                    collapse_id: None,
                    apns_id: Some(uuid::Uuid::new_v4()),
                    payload: bytes::Bytes::from(payload.to_string()),
                })
                .unwrap()
            })
            .collect(),
    );
    ours.send(&notes[0]).await.unwrap();
    let next = Arc::new(AtomicUsize::new(1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (c, notes, next) = (ours.clone(), notes.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= notes.len() {
                        return;
                    }
                    c.send(&notes[i]).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ours_rate = (n - 1) as f64 / started.elapsed().as_secs_f64();
    let ok_ours = mock.stats().by_status.get(&200).copied().unwrap_or(0);
    assert_eq!(ok_ours, n as u64, "every notification of ours answered 200");

    // a2, patched by run.sh to reach the mock.
    // SAFETY: no other thread reads the environment while this runs (set before a2 starts).
    unsafe {
        std::env::set_var("A2_ENDPOINT", format!("localhost:{}", mock.addr().port()));
        std::env::set_var("A2_EXTRA_CA", &ca);
    }
    let client = Arc::new(
        a2::Client::token(a2_key.as_bytes(), "A2KEY00001", "BENCHTEAM1", a2::ClientConfig::new(a2::Endpoint::Sandbox)).unwrap(),
    );
    let send_a2 = |client: Arc<a2::Client>, i: usize, pad: String| async move {
        let body = format!("notification {i}");
        let device = token(i);
        let mut payload = DefaultNotificationBuilder::new()
            .set_title("Benchmark")
            .set_body(&body)
            .build(&device, NotificationOptions { apns_topic: Some(TOPIC), ..Default::default() });
        payload.add_custom_data("pad", &pad).unwrap();
        client.send(payload).await
    };
    send_a2(client.clone(), 0, pad.clone()).await.unwrap();
    let next = Arc::new(AtomicUsize::new(1));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, pad) = (client.clone(), next.clone(), pad.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    send_a2(client.clone(), i, pad.clone()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let a2_rate = (n - 1) as f64 / started.elapsed().as_secs_f64();
    let ok = mock.stats().by_status.get(&200).copied().unwrap_or(0);
    assert_eq!(ok, 2 * n as u64, "every a2 notification answered 200");
    println!("sender only, {n} notifications, {concurrency} in flight, mock on this machine:");
    println!("  apns-worker client  {ours_rate:.0}/s");
    println!("  a2 0.10.0           {a2_rate:.0}/s");
    println!("  ratio               {:.2}", ours_rate / a2_rate);
    println!("{}", serde_json::json!({"notifications": n, "concurrency": concurrency, "apns_worker_per_sec": ours_rate, "a2_per_sec": a2_rate, "ratio": ours_rate / a2_rate}));
    let _ = std::fs::remove_dir_all(&dir);
}

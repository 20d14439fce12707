//! apns-worker's APNs client and the `a2` crate, sending the same notifications to the
//! same mock APNs in the same run: throughput, CPU per notification and the ratios.
//! See ./run.sh.
//!
//! Layout: the mock runs on its own thread (its own single-threaded runtime), each
//! client on the main thread (a single-threaded runtime), so on a 2-core machine each
//! side has a core and the client's CPU time is its thread's own (getrusage
//! RUSAGE_THREAD). Rounds alternate (ours, a2, ours, a2, ...) so drift of the machine
//! hits both alike; the best round of each is reported, and every round is printed,
//! with the mock thread's busy share (its CPU over the round's wall time): near 100%,
//! the mock, not the client, set that round's pace.
//! Each client builds its notifications inside the timed loop, the way its users do:
//! apns-worker from the payload bytes it received (it never re-serialises them), a2
//! from its payload builder.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use a2::{DefaultNotificationBuilder, NotificationBuilder, NotificationOptions};
use apns::jwt::{SignerRegistry, SystemClock};
use apns::{AppClient, AppSettings, ClientSettings, KeySettings, Notification, NotificationParts, PushType, SecretSource};
use apns_mock::{MockApns, MockConfig};

const TOPIC: &str = "com.example.bench";

fn token(i: usize) -> String {
    format!("{i:016x}{}", "0".repeat(48))
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage for the kernel to fill.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) of another thread of this process, from /proc (10 ms ticks).
fn other_thread_cpu(tid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

#[derive(Clone, Copy, Debug)]
struct Round {
    per_sec: f64,
    cpu_us: f64,
    /// The mock thread's CPU over the round's wall time: near 1.0, the mock set the pace.
    mock_busy: f64,
}

/// Run `send(i)` for i in `range` with `concurrency` of them in flight on this thread.
async fn timed<F, Fut>(range: std::ops::Range<usize>, concurrency: usize, mock_tid: i32, send: F) -> Round
where
    F: Fn(usize) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let n = range.len();
    let next = Rc::new(Cell::new(range.start));
    let end = range.end;
    let (wall, cpu, mock_cpu) = (Instant::now(), thread_cpu(), other_thread_cpu(mock_tid));
    let local = tokio::task::LocalSet::new();
    for _ in 0..concurrency {
        let (next, send) = (next.clone(), send.clone());
        local.spawn_local(async move {
            loop {
                let i = next.get();
                if i >= end {
                    return;
                }
                next.set(i + 1);
                send(i).await;
            }
        });
    }
    local.await;
    let (wall, cpu, mock_cpu) = (wall.elapsed(), thread_cpu() - cpu, other_thread_cpu(mock_tid) - mock_cpu);
    Round {
        per_sec: n as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        mock_busy: mock_cpu.as_secs_f64() / wall.as_secs_f64(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let concurrency: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(3);
    apns_worker::obs::telemetry::init_logging_with("warn");

    // The mock on its own thread and runtime.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mock_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mock = MockApns::start(MockConfig { record: false, ..MockConfig::default() }).await.unwrap();
            // SAFETY: gettid has no preconditions.
            tx.send((mock, unsafe { libc::gettid() })).unwrap();
            let _ = stop_rx.await;
        });
    });
    let (mock, mock_tid) = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let dir = std::env::temp_dir().join(format!("a2-compare-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    mock.write_ca(&ca).unwrap();
    // One key each, so the two clients' tokens do not count as updates of one key.
    let ours_key = mock.generate_key("BENCHTEAM1", "OURKEY0001").unwrap();
    let a2_key = mock.generate_key("BENCHTEAM1", "A2KEY00001").unwrap();
    let pad = "x".repeat(900);
    // What a producer hands each client: apns-worker gets the payload as bytes (a job's
    // body), a2 gets the fields for its builder.
    let bodies: Rc<Vec<bytes::Bytes>> = Rc::new(
        (0..n)
            .map(|i| {
                let payload = serde_json::json!({"aps": {"alert": {"title": "Benchmark", "body": format!("notification {i}")}}, "pad": pad});
                bytes::Bytes::from(payload.to_string())
            })
            .collect(),
    );

    let key = KeySettings::team_scoped("OURKEY0001", SecretSource::Value(ours_key.into()));
    let mut app = AppSettings::token(mock.endpoint(), "BENCHTEAM1", vec![key]);
    app.connections = 1;
    app.ca_file = Some(ca.clone());
    let ours = rt.block_on(async {
        Rc::new(AppClient::start("bench", &app, &ClientSettings::default(), &SignerRegistry::default(), std::sync::Arc::new(SystemClock)).unwrap())
    });
    let send_ours = {
        let (ours, bodies) = (ours.clone(), bodies.clone());
        move |i: usize| {
            let (ours, bodies) = (ours.clone(), bodies.clone());
            async move {
                let note = Notification::new(NotificationParts {
                    device_token: token(i),
                    topic: TOPIC.into(),
                    push_type: PushType::Alert,
                    priority: None,
                    expiration: None,
                    collapse_id: None,
                    // As the worker does for a job with an id: stable across retries.
                    apns_id: Some(uuid::Uuid::new_v5(&apns_worker::job::APNS_ID_NAMESPACE, format!("job-{i}").as_bytes())),
                    payload: bodies[i].clone(),
                })
                .unwrap();
                let d = ours.send(&note).await.unwrap();
                assert_eq!(d.response.status, 200);
            }
        }
    };

    // SAFETY: set before a2 starts; the mock thread does not read the environment.
    unsafe {
        std::env::set_var("A2_ENDPOINT", format!("localhost:{}", mock.addr().port()));
        std::env::set_var("A2_EXTRA_CA", &ca);
    }
    let a2_client = Rc::new(rt.block_on(async {
        a2::Client::token(a2_key.as_bytes(), "A2KEY00001", "BENCHTEAM1", a2::ClientConfig::new(a2::Endpoint::Sandbox)).unwrap()
    }));
    let send_a2 = {
        let (client, pad) = (a2_client.clone(), Rc::new(pad));
        move |i: usize| {
            let (client, pad) = (client.clone(), pad.clone());
            async move {
                let body = format!("notification {i}");
                let device = token(i);
                let mut payload = DefaultNotificationBuilder::new()
                    .set_title("Benchmark")
                    .set_body(&body)
                    .build(&device, NotificationOptions { apns_topic: Some(TOPIC), ..Default::default() });
                payload.add_custom_data("pad", &*pad).unwrap();
                let r = client.send(payload).await.unwrap();
                assert_eq!(r.code, 200);
            }
        }
    };

    // Warm up both: one notification first (APNs, like the mock, allows one stream
    // until a connection's first valid token; a2, built on hyper, does not wait for
    // the raised limit and fails the excess streams with REFUSED_STREAM), then a full
    // round of concurrency.
    rt.block_on(async {
        timed(0..1, 1, mock_tid, send_ours.clone()).await;
        timed(0..1, 1, mock_tid, send_a2.clone()).await;
        timed(0..concurrency.min(n), concurrency, mock_tid, send_ours.clone()).await;
        timed(0..concurrency.min(n), concurrency, mock_tid, send_a2.clone()).await;
    });
    let (mut ours_rounds, mut a2_rounds) = (Vec::new(), Vec::new());
    println!("sender only, {n} notifications per round, {concurrency} in flight, mock on its own thread:");
    for r in 0..rounds {
        let o = rt.block_on(timed(0..n, concurrency, mock_tid, send_ours.clone()));
        if std::env::var_os("ONLY_OURS").is_some() {
            println!("  round {}: apns-worker {:.0}/s {:.2} µs CPU (mock busy {:.0}%)", r + 1, o.per_sec, o.cpu_us, o.mock_busy * 100.0);
            continue;
        }
        let a = rt.block_on(timed(0..n, concurrency, mock_tid, send_a2.clone()));
        println!(
            "  round {}: apns-worker {:.0}/s {:.2} µs CPU (mock busy {:.0}%) | a2 {:.0}/s {:.2} µs CPU (mock busy {:.0}%)",
            r + 1,
            o.per_sec,
            o.cpu_us,
            o.mock_busy * 100.0,
            a.per_sec,
            a.cpu_us,
            a.mock_busy * 100.0
        );
        ours_rounds.push(o);
        a2_rounds.push(a);
    }
    if std::env::var_os("ONLY_OURS").is_some() {
        return;
    }
    let best = |v: &[Round]| v.iter().copied().fold(Round { per_sec: 0.0, cpu_us: f64::MAX, mock_busy: 0.0 }, |b, r| Round { per_sec: b.per_sec.max(r.per_sec), cpu_us: b.cpu_us.min(r.cpu_us), mock_busy: b.mock_busy.max(r.mock_busy) });
    let (o, a) = (best(&ours_rounds), best(&a2_rounds));
    let ok = mock.stats().by_status.get(&200).copied().unwrap_or(0);
    let expected = 2 * (rounds * n + concurrency.min(n) + 1) as u64;
    assert_eq!(ok, expected, "every notification answered 200");
    println!("best of {rounds}:");
    println!("  apns-worker client  {:.0}/s  {:.2} µs CPU per notification", o.per_sec, o.cpu_us);
    println!("  a2 0.10.0           {:.0}/s  {:.2} µs CPU per notification", a.per_sec, a.cpu_us);
    println!("  throughput ratio    {:.2}", o.per_sec / a.per_sec);
    println!("  CPU ratio (a2/ours) {:.2}", a.cpu_us / o.cpu_us);
    println!(
        "{}",
        serde_json::json!({"notifications": n, "concurrency": concurrency, "rounds": rounds,
            "apns_worker_per_sec": o.per_sec, "apns_worker_cpu_us": o.cpu_us,
            "a2_per_sec": a.per_sec, "a2_cpu_us": a.cpu_us,
            "throughput_ratio": o.per_sec / a.per_sec, "cpu_ratio": a.cpu_us / o.cpu_us})
    );
    drop(ours);
    drop(a2_client);
    let _ = stop_tx.send(());
    drop(mock);
    mock_thread.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

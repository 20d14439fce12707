//! How `apns-worker` refuses what would break, as an operator sees it: the exit code
//! (README: "Exit codes"), one sentence that says what to fix, and, in JSON log mode,
//! that sentence as one JSON line.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Output};

use apns_mock::Faults;
use common::process::{ChildConfig, write_config};
use common::*;

fn worker() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apns-worker"));
    c.env_remove("RUST_LOG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("APNS_WORKER_LOG_FORMAT", "text");
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("apns-worker runs");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn a_worker_with_no_app_refuses_to_start_unless_told_it_is_intended() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("empty.toml");
    std::fs::write(&cfg, "[worker]\ndrain_secs = 1\n").unwrap();
    let sentence = "no app is configured, so every job would be dead-lettered as InvalidJob";

    let (code, _, err) = run(worker().args(["run", "-c"]).arg(&cfg));
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: config: "), "{err}");
    assert!(err.contains(sentence), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one sentence: {err}");

    // JSON mode: the same sentence as one JSON line, like every other log line.
    let (code, out, err) = run(worker()
        .env("APNS_WORKER_LOG_FORMAT", "json")
        .args(["run", "-c"])
        .arg(&cfg));
    assert_eq!(code, 3, "{out}{err}");
    // Logs (and so the fatal line) go to stderr; stdout is for the summary.
    assert!(out.is_empty(), "{out}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert_eq!(lines[0]["exit_code"], 3);
    assert!(
        lines[0]["message"].as_str().unwrap().contains(sentence),
        "{err}"
    );

    // check-config says the same, and the flag makes it intended.
    let (code, _, err) = run(worker().args(["check-config", "-c"]).arg(&cfg));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(sentence), "{err}");
    let (code, _, err) = run(worker()
        .env("APNS_WORKER__WORKER__ALLOW_NO_APPS", "true")
        .args(["check-config", "-c"])
        .arg(&cfg));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("configuration OK: 0 app(s)"), "{err}");
}

#[test]
fn an_environment_variable_of_the_wrong_type_is_named() {
    let (code, _, err) = run(worker()
        .env("APNS_WORKER__BROKER__PREFETCH", "lots")
        .args(["check-config", "--static"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with("error: environment variable APNS_WORKER__BROKER__PREFETCH: "),
        "{err}"
    );
    assert!(!err.contains("<defaults>"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = run(worker().args(["publish", "--queue", "q"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("give --file"), "{err}");
    let (code, _, _) = run(worker().arg("no-such-command"));
    assert_eq!(code, 2);
    let (code, _, err) = run(worker().args(["healthcheck", "--url", "notaurl"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--url must be http://"), "{err}");
}

#[test]
fn invalid_input_to_publish_exits_4_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, "{\"device_token\": \"zz\"}\n").unwrap();
    let (code, _, err) = run(worker()
        .env("APNS_WORKER__QUEUES__JOBS", "exit-codes.never-declared")
        .args(["publish", "--file"])
        .arg(&jobs));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_stops_the_worker_with_what_to_do() {
    let m = mock(Faults::default()).await;
    let q = broker::topology("exit-args");
    let conn = broker::connect().await;
    // Declared before with delivery_limit 20 (the default), as an earlier release did.
    let before = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    let ch = conn.create_channel().await.unwrap();
    apns_worker::amqp::declare_topology(&ch, &before.queues, &before.retry)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let endpoint = m.mock.endpoint().to_string();
    let path = write_config(&ChildConfig {
        dir: dir.path(),
        name: "exit-args",
        broker_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
        queues: &q,
        retry: &before.retry,
        endpoint: &endpoint,
        ca: &m.ca,
        key_pem: &m.mock.generate_key(TEAM, KEY).unwrap(),
        extra: "",
    });
    let path2 = path.clone();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(worker()
            .env("APNS_WORKER__QUEUES__DELIVERY_LIMIT", "5")
            .args(["run", "-c"])
            .arg(&path2))
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "queue {:?} already exists with other arguments than this configuration declares",
            q.jobs
        )),
        "{err}"
    );
    assert!(
        err.contains("x-delivery-limit"),
        "the broker's detail: {err}"
    );
    assert!(
        err.contains("set the queues.* and retry.* settings back"),
        "{err}"
    );
    assert!(!err.contains("guest:guest"), "{err}");
    broker::delete_topology(&conn, &q, &before.retry).await;
}

/// A one-shot HTTP server answering `status` with `body`.
fn answer_once(status: &str, body: &'static str) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let status = status.to_string();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    format!("http://{addr}/readyz")
}

#[test]
fn healthcheck_exits_0_when_ready_and_1_with_the_reason_otherwise() {
    let (code, _, err) =
        run(worker().args(["healthcheck", "--url", &answer_once("200 OK", "ready")]));
    assert_eq!(code, 0, "{err}");
    let url = answer_once("503 Service Unavailable", "broker: not connected");
    let (code, _, err) = run(worker().args(["healthcheck", "--url", &url]));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("503") && err.contains("broker: not connected"),
        "{err}"
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (code, _, err) =
        run(worker().args(["healthcheck", "--url", &format!("http://{closed}/readyz")]));
    assert_eq!(code, 1, "{err}");
}

/// `check-config --probe` against the mock: good credentials are told apart from bad
/// ones by what APNs answers to a token of zeros (400 BadDeviceToken), and nothing is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_probe_tells_good_keys_from_bad_ones() {
    let m = mock(Faults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let q = apns_worker::config::QueueSettings::with_prefix("test.probe.");
    let r = apns_worker::config::RetrySettings::default();
    let endpoint = m.mock.endpoint().to_string();
    let good = m.mock.generate_key(TEAM, KEY).unwrap();
    let (bad, _public) = apns_mock::certs::generate_signing_key().unwrap();
    for (name, key, code, says) in [
        ("good", good, 0, "(400 BadDeviceToken for the probe token)"),
        (
            "bad",
            bad,
            3,
            "APNs refuses the credentials (403 InvalidProviderToken)",
        ),
    ] {
        let config = write_config(&ChildConfig {
            dir: dir.path(),
            name,
            broker_url: "amqp://guest:guest@127.0.0.1:5672/%2f",
            queues: &q,
            retry: &r,
            endpoint: &endpoint,
            ca: &m.ca,
            key_pem: &key,
            extra: "",
        });
        let (got, out, err) = tokio::task::spawn_blocking(move || {
            run(worker()
                .args(["check-config", "--probe", "-c"])
                .arg(&config))
        })
        .await
        .unwrap();
        assert_eq!(got, code, "{name}: {out}{err}");
        assert!(
            out.contains(says) || err.contains(says),
            "{name}: {out}{err}"
        );
    }
    assert!(
        m.mock.received().iter().all(|r| r.status != 200),
        "the probe delivers nothing"
    );
}

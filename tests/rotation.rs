//! Credentials rotated under load, the way Kubernetes updates a mounted secret: the new
//! files are written into a new directory and the `..data` link is swapped to it. The
//! worker picks up the new key (a new key id in the configuration, its `.p8` in the
//! secret) without a restart and without failing or parking a job; a corrupt
//! replacement leaves the current key working and is reported.

mod common;

use std::path::Path;
use std::time::Duration;

use apns_mock::Faults;
use apns_worker::reload::{Reloaded, Reloader};
use common::broker;
use common::*;
use serde_json::json;

/// Write `files` into `<dir>/..<generation>` and point `<dir>/..data` at it, atomically
/// (a new link renamed over the old one), as the kubelet does.
fn k8s_swap(dir: &Path, generation: &str, files: &[(&str, &str)]) {
    let data = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
        let visible = dir.join(name);
        if !visible.exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &visible).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn config_text(
    q: &apns_worker::config::QueueSettings,
    m: &Mock,
    key_id: &str,
    key_file: &Path,
) -> String {
    format!(
        r#"
[broker]
connection_name = "apns-worker-test-rotation"
prefetch = 500

[queues]
jobs = "{jobs}"
dead_letter_exchange = "{dlx}"
dead_letter_queue = "{dlq}"
cleanup_exchange = "{cx}"
cleanup_queue = "{cq}"
retry_prefix = "{rp}"

[retry]
max_attempts = 3
base_delay_ms = 100
max_delay_ms = 400
park_delay_ms = 300

[admin]
listen = ""

[apns]
request_timeout_ms = 2000
send_timeout_ms = 5000
reconnect_min_ms = 50
reconnect_max_ms = 500

[apps.shop]
endpoint = "{endpoint}"
topics = ["{TOPIC}"]
ca_file = "{ca}"
team_id = "{TEAM}"
[[apps.shop.keys]]
key_id = "{key_id}"
key_file = "{key_file}"
"#,
        jobs = q.jobs,
        dlx = q.dead_letter_exchange,
        dlq = q.dead_letter_queue,
        cx = q.cleanup_exchange,
        cq = q.cleanup_queue,
        rp = q.retry_prefix,
        endpoint = m.mock.endpoint(),
        ca = m.ca.display(),
        key_file = key_file.display(),
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn answered_with(m: &Mock, key_id: &str) -> usize {
    m.mock
        .received()
        .iter()
        .filter(|r| r.key_id.as_deref() == Some(key_id) && r.status == 200)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_under_load_and_a_corrupt_one_is_refused() {
    const N: u64 = 20_000;
    let m = mock(Faults {
        latency_ms: 1,
        ..Faults::default()
    })
    .await;
    let q = broker::topology("rotation");
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let first = m.mock.generate_key(TEAM, "KEYONE0001").unwrap();
    k8s_swap(&secrets, "2026_11_30_1", &[("AuthKey.p8", &first)]);
    let key_file = secrets.join("AuthKey.p8");
    let config = dir.path().join("worker.toml");
    write_atomically(&config, &config_text(&q, &m, "KEYONE0001", &key_file));

    let cfg =
        apns_worker::config::Config::load(Some(&config), Vec::<(String, String)>::new()).unwrap();
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let mut reloader = Reloader::new(&w.worker, Some(config.clone()));
    let jobs: Vec<String> = (0..N)
        .map(|i| json!({"id": format!("r{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string())
        .collect();
    let publisher = {
        let (conn, q) = (broker::connect().await, q.clone());
        tokio::spawn(async move { broker::publish_jobs(&conn, &q.jobs, jobs).await })
    };
    w.wait_until("a quarter delivered", Duration::from_secs(60), |s| {
        s.delivered >= N / 4
    })
    .await;
    let nothing = reloader.reload(&w.worker);
    assert_eq!(nothing.get("shop"), Some(&Reloaded::Unchanged));

    // Rotation: a new key (and key id) in the secret and the configuration.
    let second = m.mock.generate_key(TEAM, "KEYTWO0002").unwrap();
    k8s_swap(&secrets, "2026_11_30_2", &[("AuthKey.p8", &second)]);
    write_atomically(&config, &config_text(&q, &m, "KEYTWO0002", &key_file));
    assert_eq!(
        reloader.reload(&w.worker).get("shop"),
        Some(&Reloaded::Reloaded)
    );
    w.wait_until("half delivered", Duration::from_secs(60), |s| {
        s.delivered >= N / 2
    })
    .await;
    assert!(answered_with(&m, "KEYTWO0002") > 0, "the new key is in use");

    // A corrupt replacement: refused, reported, the current key keeps working.
    k8s_swap(
        &secrets,
        "2026_11_30_3",
        &[(
            "AuthKey.p8",
            "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
        )],
    );
    let refused = reloader.reload(&w.worker);
    let Some(Reloaded::Failed(why)) = refused.get("shop") else {
        panic!("{refused:?}")
    };
    assert!(why.contains(".p8"), "{why}");
    assert!(
        !why.contains("broken"),
        "the key's text is not shown: {why}"
    );
    assert_eq!(
        reloader.reload(&w.worker).get("shop"),
        Some(&Reloaded::Unchanged),
        "reported once"
    );
    let with_second = answered_with(&m, "KEYTWO0002");
    publisher.await.unwrap();
    w.wait_terminal(N, Duration::from_secs(120)).await;
    let s = w.stop().await;
    assert!(
        answered_with(&m, "KEYTWO0002") > with_second,
        "still sending with it"
    );
    assert_eq!(s.delivered, N, "{s:?}");
    assert_eq!((s.parked, s.dead_lettered_total()), (0, 0), "{s:?}");
    let reloads = m.mock.stats();
    eprintln!(
        "rotation: {N} delivered, {} with the first key, {} with the second, retried {}, answers {:?}",
        answered_with(&m, "KEYONE0001"),
        answered_with(&m, "KEYTWO0002"),
        s.retried,
        reloads.by_reason
    );
    assert_eq!(
        reloads.by_status.get(&403),
        None,
        "no request with a refused key"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

//! APNs through an outbound proxy, both kinds, started by the test: an HTTP CONNECT
//! proxy that requires Basic auth and a SOCKS5 proxy that requires a user name and
//! password. Mid-run each proxy drops every tunnel and refuses connections for a
//! moment: the worker's connections come back through it, and no job is lost.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apns_mock::Faults;
use common::broker;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Http,
    Socks5,
}

struct TestProxy {
    port: u16,
    tunnels: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

const USER: &str = "worker";
const PASS: &str = "pr0xy-s3cret";

async fn read_until_blank_line(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if s.read(&mut b).await.ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    String::from_utf8(head).ok()
}

/// The target of one proxied connection, after the handshake; None if refused.
async fn handshake(kind: Kind, s: &mut TcpStream) -> Option<String> {
    match kind {
        Kind::Http => {
            let head = read_until_blank_line(s).await?;
            let target = head
                .lines()
                .next()?
                .strip_prefix("CONNECT ")?
                .split(' ')
                .next()?
                .to_string();
            use base64::Engine;
            let want = format!(
                "Proxy-Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
            );
            if !head.lines().any(|l| l == want) {
                let _ = s
                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                    .await;
                return None;
            }
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .ok()?;
            Some(target)
        }
        Kind::Socks5 => {
            let mut greet = [0u8; 2];
            s.read_exact(&mut greet).await.ok()?;
            let mut methods = vec![0u8; greet[1] as usize];
            s.read_exact(&mut methods).await.ok()?;
            if greet[0] != 5 || !methods.contains(&2) {
                let _ = s.write_all(&[5, 0xff]).await;
                return None;
            }
            s.write_all(&[5, 2]).await.ok()?;
            let mut v = [0u8; 2];
            s.read_exact(&mut v).await.ok()?;
            let mut user = vec![0u8; v[1] as usize];
            s.read_exact(&mut user).await.ok()?;
            let mut plen = [0u8; 1];
            s.read_exact(&mut plen).await.ok()?;
            let mut pass = vec![0u8; plen[0] as usize];
            s.read_exact(&mut pass).await.ok()?;
            if user != USER.as_bytes() || pass != PASS.as_bytes() {
                let _ = s.write_all(&[1, 1]).await;
                return None;
            }
            s.write_all(&[1, 0]).await.ok()?;
            let mut req = [0u8; 4];
            s.read_exact(&mut req).await.ok()?;
            let host = match req[3] {
                1 => {
                    let mut a = [0u8; 4];
                    s.read_exact(&mut a).await.ok()?;
                    std::net::Ipv4Addr::from(a).to_string()
                }
                3 => {
                    let mut n = [0u8; 1];
                    s.read_exact(&mut n).await.ok()?;
                    let mut name = vec![0u8; n[0] as usize];
                    s.read_exact(&mut name).await.ok()?;
                    String::from_utf8(name).ok()?
                }
                _ => return None,
            };
            let mut port = [0u8; 2];
            s.read_exact(&mut port).await.ok()?;
            s.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await.ok()?;
            Some(format!("{host}:{}", u16::from_be_bytes(port)))
        }
    }
}

async fn start_proxy(kind: Kind) -> TestProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = TestProxy {
        port,
        tunnels: Arc::default(),
        refused: Arc::default(),
        down: Arc::default(),
        conns: Arc::default(),
    };
    let (tunnels, refused, down, conns) = (
        p.tunnels.clone(),
        p.refused.clone(),
        p.down.clone(),
        p.conns.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            if down.load(Ordering::SeqCst) {
                refused.fetch_add(1, Ordering::Relaxed);
                continue; // dropped: the client sees the connection closed
            }
            let tunnels = tunnels.clone();
            let task = tokio::spawn(async move {
                let Some(target) = handshake(kind, &mut s).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(target).await else {
                    return;
                };
                tunnels.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
            conns.lock().unwrap().push(task.abort_handle());
        }
    });
    p
}

impl TestProxy {
    /// The proxy dies: every tunnel is cut and connections are refused for a moment.
    async fn restart(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.down.store(false, Ordering::SeqCst);
    }
}

async fn through(kind: Kind) {
    const N: u64 = 5_000;
    let m = mock(Faults {
        latency_ms: 1,
        ..Faults::default()
    })
    .await;
    let proxy = start_proxy(kind).await;
    let scheme = if kind == Kind::Http { "http" } else { "socks5" };
    let q = broker::topology(&format!("proxy{scheme}"));
    let mut app = m.token_app(TEAM, KEY, 2);
    app.proxy = Some(apns::Secret::new(format!(
        "{scheme}://{USER}:{PASS}@127.0.0.1:{}",
        proxy.port
    )));
    let cfg = worker_config(q.clone(), vec![("shop", app)]);
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let jobs = (0..N)
        .map(|i| serde_json::json!({"id": format!("{scheme}{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {}}).to_string())
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_until("a fifth delivered", Duration::from_secs(30), |s| {
        s.delivered >= N / 5
    })
    .await;
    let before = proxy.tunnels.load(Ordering::Relaxed);
    proxy.restart().await;
    w.wait_drained(&conn, &q, &cfg.retry, Duration::from_secs(60))
        .await;
    let s = w.stop().await;
    let tunnels = proxy.tunnels.load(Ordering::Relaxed);
    eprintln!(
        "{scheme} proxy: {} delivered, {} retried, tunnels {before} before the restart, {tunnels} in all, {} refused while down",
        s.delivered,
        s.retried,
        proxy.refused.load(Ordering::Relaxed)
    );
    assert_eq!(s.delivered, N, "{s:?}");
    assert!(before >= 1, "the worker went through the proxy");
    assert!(tunnels > before, "the connections came back through it");
    let mut seen = std::collections::BTreeSet::new();
    for r in m.mock.received() {
        seen.insert(r.device_token);
    }
    assert_eq!(seen.len() as u64, N, "every job reached APNs");
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_http_connect_proxy_with_basic_auth() {
    through(Kind::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_socks5_proxy_with_a_password() {
    through(Kind::Socks5).await;
}

#[test]
fn a_proxy_password_never_prints() {
    let mut cfg = apns_worker::config::Config::default();
    cfg.apns.proxy = Some(apns::Secret::new(format!(
        "http://{USER}:{PASS}@proxy:3128"
    )));
    let shown = format!("{cfg:?} {}", toml::to_string(&cfg).unwrap());
    assert!(!shown.contains(PASS), "{shown}");
}

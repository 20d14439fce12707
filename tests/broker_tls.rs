//! `amqps://` with a private CA and a client certificate, end to end. The TLS endpoint
//! is a terminator started by the test in front of the shared RabbitMQ (127.0.0.1:5672):
//! it requires a client certificate signed by the test's CA and forwards the bytes.
//! Why a terminator and not RabbitMQ's own TLS listener: the shared broker's
//! configuration is not this test's to change, and a TLS listener needs a node of its
//! own; the terminator shows what the worker does (trusts a private CA, checks the host
//! name, presents its certificate). SASL EXTERNAL (`?auth_mechanism=external`), which
//! needs the broker itself to see the certificate, is not covered here.

mod common;

use std::sync::Arc;
use std::time::Duration;

use apns_mock::Faults;
use apns_mock::certs::MockCa;
use common::broker;
use common::*;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS terminator on 127.0.0.1 (certificate for `localhost`, signed by `ca`) that
/// requires a client certificate signed by `ca` and forwards to the broker. Returns its
/// port and how many handshakes succeeded.
async fn terminator(ca: &MockCa) -> (u16, Arc<std::sync::atomic::AtomicU64>) {
    let server = ca.server_cert(&[]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server.cert_der.clone()], server.key_der.clone_key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Ok(mut up) = TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, handshakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca_and_a_client_certificate() {
    let ca = MockCa::new().unwrap();
    let (port, handshakes) = terminator(&ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("broker-ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let client = ca.client_cert("apns-worker").unwrap();
    let (cert_file, key_file) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    std::fs::write(&cert_file, &client.cert_pem).unwrap();
    std::fs::write(&key_file, &client.key_pem).unwrap();

    let m = mock(Faults::default()).await;
    let q = broker::topology("amqps");
    let mut cfg = worker_config(q.clone(), vec![("shop", m.token_app(TEAM, KEY, 1))]);
    cfg.broker.url = apns::Secret::new(format!("amqps://guest:guest@localhost:{port}/%2f"));
    cfg.broker.tls.ca_file = Some(ca_file.clone());
    cfg.broker.tls.cert_file = Some(cert_file.clone());
    cfg.broker.tls.key_file = Some(key_file.clone());
    let conn = broker::connect().await;
    let w = broker::start(cfg.clone()).await;
    let jobs = (0..50u64)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "device_token": token("0a", i), "topic": TOPIC, "payload": {}}).to_string())
        .collect();
    broker::publish_jobs(&conn, &q.jobs, jobs).await;
    w.wait_terminal(50, Duration::from_secs(30)).await;
    let s = w.stop().await;
    assert_eq!(s.delivered, 50, "{s:?}");
    assert!(handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // A CA that did not sign the broker's certificate: `run` fails at start, in one
    // sentence that says what to set.
    let other = MockCa::new().unwrap();
    let wrong = dir.path().join("wrong-ca.pem");
    std::fs::write(&wrong, other.cert_pem()).unwrap();
    let mut bad = cfg.clone();
    bad.broker.tls.ca_file = Some(wrong);
    bad.admin.listen = String::new();
    let started = std::time::Instant::now();
    let e = apns_worker::run::run(bad, None, std::future::pending())
        .await
        .expect_err("refused at start")
        .to_string();
    assert!(
        e.contains("the broker's TLS certificate is not trusted")
            && e.contains("broker.tls.ca_file"),
        "{e}"
    );
    assert!(
        !e.contains("guest:guest"),
        "the URL's password is not shown: {e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // amqps settings with an amqp:// URL: refused with a sentence.
    let mut plain = cfg.clone();
    plain.broker.url = apns::Secret::new(broker::BROKER.to_string());
    let e = plain.check().unwrap_err().to_string();
    assert!(
        e.contains("broker.tls is set but broker.url is not amqps://"),
        "{e}"
    );
    broker::delete_topology(&conn, &q, &cfg.retry).await;
}

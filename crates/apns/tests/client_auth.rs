//! Authentication against the mock APNs: provider token refresh, ExpiredProviderToken,
//! shared tokens, certificate auth (PEM and PKCS#12), several apps on one process.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apns::ClientSettings;
use apns::classify::Outcome;
use apns::jwt::ManualClock;
use apns::response::Reason;
use apns_mock::Faults;
use common::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const MIN: u64 = 60;

/// A provider-token period (`token_refresh`, in Apple's window, at least `min_period`)
/// that has a period start in `lo..hi` (unix seconds): tokens' `iat`s are period
/// starts, so a test that needs a token of a given age picks its period.
fn period_with_start_in(lo: u64, hi: u64, min_period: u64) -> (u64, u64) {
    (min_period.max(1200)..3600)
        .find_map(|p| {
            let start = hi - 1 - (hi - 1) % p;
            (start >= lo).then_some((p, start))
        })
        .expect("some period has a start in the window")
}

fn with_period(p: u64) -> apns::ClientSettings {
    apns::ClientSettings {
        token_refresh: Duration::from_secs(p),
        ..fast_settings()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_on_its_timer() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    // 20-minute periods; the process's clock starts in the previous period, so its
    // first token is 20 to 40 minutes old by the time the clock is set right.
    let settings = with_period(20 * MIN);
    let previous = now() - now() % (20 * MIN) - 20 * MIN;
    let clock = ManualClock::new(previous + 1);
    let c = app_client_with_clock(&app, &settings, clock.clone());
    assert_eq!(
        c.send(&notification(&token("11", 1)))
            .await
            .unwrap()
            .outcome,
        Outcome::Delivered
    );
    clock.set(now());
    let d = c.send(&notification(&token("11", 2))).await.unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Delivered,
        "the next period's token, 20 minutes newer, is accepted"
    );
    assert_eq!(d.resends, 0);
    assert!(
        c.token_ages()[0].1 < 20 * MIN,
        "the new token is this period's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_refreshes_once_then_resends() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    // A token 60 to 85 min old: APNs answers ExpiredProviderToken. By our clock (at
    // the start of its period) it is brand new, so refreshing now would break the
    // 20-minute floor: credentials problem.
    let (period, start) =
        period_with_start_in(now() - 85 * MIN + 5, now() - 60 * MIN - 5, 26 * MIN);
    let clock = ManualClock::new(start);
    let c = app_client_with_clock(&app, &with_period(period), clock.clone());
    let d = c.send(&notification(&token("12", 1))).await.unwrap();
    assert_eq!(d.response.reason, Some(Reason::ExpiredProviderToken));
    assert!(
        matches!(d.outcome, Outcome::CredentialsBroken { .. }),
        "{:?}",
        d.outcome
    );
    // 25 minutes later by our clock the floor allows one refresh: refresh, resend, 200.
    clock.advance(Duration::from_secs(25 * MIN));
    let d = c.send(&notification(&token("12", 2))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    assert_eq!(d.resends, 1);
    let s = m.mock.stats();
    assert_eq!(s.by_reason.get("ExpiredProviderToken"), Some(&2));
    assert_eq!(s.by_status.get(&200), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_sharing_a_key_share_its_token() {
    let m = mock(Faults::default()).await;
    let a = m.token_app(TEAM, KEY, 2);
    let b = a.clone();
    let c = client(&[("a", a.clone()), ("b", b)], &fast_settings());
    for i in 0..20 {
        let app = if i % 2 == 0 { "a" } else { "b" };
        let topic = if i % 2 == 0 {
            TOPIC
        } else {
            "com.example.other"
        };
        let d = c
            .send(app, &notification_to(&token("13", i), topic))
            .await
            .unwrap();
        assert_eq!(d.outcome, Outcome::Delivered);
    }
    // Another process with the same key (its own signer, started at another moment of
    // the same period): the same token, byte for byte, so APNs sees no update.
    let ours = now() - now() % (50 * MIN);
    let clock = ManualClock::new(ours + (now() - ours) / 2);
    let other = app_client_with_clock(&a, &fast_settings(), clock);
    let d = other.send(&notification(&token("13", 98))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered, "{:?}", d.response);
    // A process on another grid (a different token_refresh) mints another token within
    // 20 minutes of this one's: 429 TooManyProviderTokenUpdates, which is not broken
    // credentials.
    let window_end = (ours + 20 * MIN).min(now() + 60);
    let (period, _) = period_with_start_in(ours + 1, window_end, 1200);
    let drifted = ClientSettings {
        token_refresh: Duration::from_secs(period),
        ..fast_settings()
    };
    let lone = app_client_with_clock(&a, &drifted, ManualClock::new(window_end - 1));
    let d = lone.send(&notification(&token("13", 99))).await.unwrap();
    assert_eq!(d.response.reason, Some(Reason::TooManyProviderTokenUpdates));
    assert_eq!(d.outcome, Outcome::TokenThrottled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_apps_use_separate_connections_bound_to_their_keys() {
    let m = mock(Faults::default()).await;
    let a = m.token_app(TEAM, KEY, 2);
    let b = m.token_app("TEAM654321", "KEY7654321", 2);
    let c = Arc::new(client(&[("a", a), ("b", b)], &fast_settings()));
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (app, topic) = if i % 2 == 0 {
                ("a", TOPIC)
            } else {
                ("b", "com.example.b")
            };
            c.send(app, &notification_to(&token("14", i), topic)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().outcome, Outcome::Delivered);
    }
    // Every connection carried one key only (the mock answers UnrelatedKeyIdInToken otherwise).
    let mut keys_by_conn =
        std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
    for r in m.mock.received() {
        keys_by_conn
            .entry(r.connection)
            .or_default()
            .insert(r.key_id.clone().unwrap());
    }
    assert!(keys_by_conn.len() >= 2);
    assert!(
        keys_by_conn.values().all(|k| k.len() == 1),
        "{keys_by_conn:?}"
    );
    assert_eq!(m.mock.stats().by_status.get(&200), Some(&400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_for_the_wrong_environment_is_a_credentials_error() {
    use apns::endpoint::EndpointKind;
    let m = mock(Faults::default()).await; // the mock is a sandbox
    let (private, public) = apns_mock::certs::generate_signing_key().unwrap();
    m.mock
        .add_key(apns_mock::MockKey {
            key_id: "KEYPROD001".into(),
            team_id: TEAM.into(),
            public_key_pem: public,
            topics: vec![],
            environment: Some(EndpointKind::Production),
        })
        .unwrap();
    let mut app = m.token_app(TEAM, KEY, 1);
    keys(&mut app)[0].key_id = "KEYPROD001".into();
    keys(&mut app)[0].key = apns::SecretSource::Value(apns::secret::Secret::new(private));
    let c = app_client(&app, &fast_settings());
    let d = c.send(&notification(&token("15", 1))).await.unwrap();
    assert_eq!(d.response.reason, Some(Reason::BadEnvironmentKeyIdInToken));
    assert!(
        matches!(d.outcome, Outcome::CredentialsBroken { .. }),
        "{:?}",
        d.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_specific_keys_are_chosen_by_topic() {
    let m = mock(Faults::default()).await;
    let mut app = m.token_app(TEAM, KEY, 1);
    let (private, public) = apns_mock::certs::generate_signing_key().unwrap();
    m.mock
        .add_key(apns_mock::MockKey {
            key_id: "KEYSCOPED1".into(),
            team_id: TEAM.into(),
            public_key_pem: public,
            topics: vec!["com.example.widget".into()],
            environment: None,
        })
        .unwrap();
    keys(&mut app).push(apns::KeySettings {
        key_id: "KEYSCOPED1".into(),
        key: apns::SecretSource::Value(apns::secret::Secret::new(private)),
        topics: vec!["com.example.widget".into()],
    });
    let c = app_client(&app, &fast_settings());
    assert_eq!(
        c.send(&notification(&token("15", 2)))
            .await
            .unwrap()
            .outcome,
        Outcome::Delivered
    );
    let d = c
        .send(&notification_to(&token("15", 3), "com.example.widget"))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    let keys: Vec<_> = m
        .mock
        .received()
        .into_iter()
        .map(|r| r.key_id.unwrap())
        .collect();
    assert_eq!(keys, vec![KEY.to_string(), "KEYSCOPED1".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_auth_with_pem_and_pkcs12() {
    let m = mock(Faults::default()).await;
    let (app, issued) = m.cert_app(&[TOPIC]);
    let c = app_client(&app, &fast_settings());
    // rcgen's default validity ends 4096-01-01: the client certificate and the CA.
    assert_eq!(
        c.certificate_expiries(),
        &[("ca", 67_090_118_400), ("client", 67_090_118_400)]
    );
    let d = c.send(&notification(&token("16", 1))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    let r = &m.mock.received()[0];
    assert_eq!(r.key_id, None, "no provider token with certificate auth");

    // The certificate does not cover this topic.
    let d = c
        .send(&notification_to(&token("16", 2), "com.example.notmine"))
        .await
        .unwrap();
    assert_eq!(d.response.reason, Some(Reason::TopicDisallowed));

    // PKCS#12 with a password, from a file.
    let dir = tempfile::tempdir().unwrap();
    let p12 = dir.path().join("id.p12");
    std::fs::write(&p12, pkcs12(&issued, "s3cret")).unwrap();
    let mut app12 = app.clone();
    app12.auth = apns::Auth::Certificate(apns::IdentitySource::Pkcs12 {
        file: apns::SecretSource::File(p12),
        password: apns::SecretSource::Value(apns::secret::Secret::new("s3cret".into())),
    });
    let c12 = app_client(&app12, &fast_settings());
    assert_eq!(
        c12.send(&notification(&token("16", 3)))
            .await
            .unwrap()
            .outcome,
        Outcome::Delivered
    );

    // A revoked certificate: 403 BadCertificate on new connections.
    m.mock.revoke_client_identity(&issued);
    let c3 = app_client(&app, &fast_settings());
    let d = c3.send(&notification(&token("16", 4))).await.unwrap();
    assert_eq!(d.response.reason, Some(Reason::BadCertificate));
    assert!(matches!(d.outcome, Outcome::CredentialsBroken { .. }));
}

fn pkcs12(issued: &apns_mock::certs::Issued, password: &str) -> Vec<u8> {
    let mut ks = p12_keystore::KeyStore::new();
    let chain = p12_keystore::PrivateKeyChain::new(
        b"1".to_vec(),
        p12_keystore::PrivateKey::from_der(issued.key_der.secret_der()).unwrap(),
        vec![p12_keystore::Certificate::from_der(issued.cert_der.as_ref()).unwrap()],
    );
    ks.add_entry("apns", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    ks.writer(password).write().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_is_trusted_only_through_its_ca() {
    let m = mock(Faults::default()).await;
    let mut app = m.token_app(TEAM, KEY, 1);
    app.ca_file = None;
    let settings = apns::ClientSettings {
        send_timeout: Duration::from_millis(500),
        ..fast_settings()
    };
    let c = app_client(&app, &settings);
    let e = c.send(&notification(&token("17", 1))).await.unwrap_err();
    assert!(e.to_string().contains("no free stream"), "{e}");
    assert!(
        c.pools()[0]
            .stats
            .connect_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(m.mock.stats().answered, 0);
}

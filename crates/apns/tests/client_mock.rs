//! The APNs client against the mock APNs: streams, errors, GOAWAY, PING, timeouts,
//! token refresh, certificate auth, several apps.

mod common;

use std::time::Duration;

use apns::classify::{Outcome, RetryCause};
use apns_mock::Faults;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection() {
    logs();
    // Answers take 100 ms, so only multiplexing gets 500 through quickly.
    let m = mock(Faults {
        latency_ms: 100,
        ..Faults::default()
    })
    .await;
    let app = m.token_app(TEAM, KEY, 1);
    let c = std::sync::Arc::new(app_client(&app, &fast_settings()));
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.send(&notification(&token("aa", i))).await
        }));
    }
    for t in tasks {
        let d = t.await.unwrap().expect("answered");
        assert_eq!(d.outcome, Outcome::Delivered);
    }
    let s = m.mock.stats();
    assert_eq!(s.by_status.get(&200), Some(&500));
    assert_eq!(
        s.ok_by_connection.len(),
        1,
        "one connection: {:?}",
        s.ok_by_connection
    );
    assert!(
        s.peak_streams >= 100,
        "streams were multiplexed: peak {}",
        s.peak_streams
    );
    assert_eq!(
        s.refused, 0,
        "the client never exceeded the announced limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_ramps_from_one_to_the_servers_maximum_and_follows_a_drop() {
    let m = mock(Faults {
        limit_drop_after: Some(20),
        limit_drop_to: Some(1),
        ..Faults::default()
    })
    .await;
    let app = m.token_app(TEAM, KEY, 1);
    let c = app_client(&app, &fast_settings());
    let pool = c.pools()[0].clone();
    assert!(pool.wait_open(1, Duration::from_secs(5)).await);
    // Before any request APNs allows one stream on a token-auth connection.
    wait_until(|| pool.connection_info().first().map(|i| i.stream_limit) == Some(1)).await;
    let d = c.send(&notification(&token("aa", 1))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    wait_until(|| pool.connection_info().first().map(|i| i.stream_limit) == Some(1000)).await;
    for i in 2..=25 {
        c.send(&notification(&token("aa", i))).await.unwrap();
    }
    // The mock lowered its limit after 20 requests; the client follows.
    wait_until(|| pool.connection_info().first().map(|i| i.stream_limit) == Some(1)).await;
    let s = m.mock.stats();
    assert_eq!(s.by_status.get(&200), Some(&25));
    assert_eq!(s.refused, 0);
}

/// Poll a condition that an event elsewhere makes true; fail after 5 s.
async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_status_is_classified() {
    use apns::response::Reason;
    let rows: &[(&str, u16, &str, &str)] = &[
        ("a1", 400, "BadCollapseId", "rejected"),
        ("a2", 400, "BadDeviceToken", "token-dead"),
        ("a3", 400, "DeviceTokenNotForTopic", "token-dead"),
        ("a4", 400, "IdleTimeout", "retry"),
        ("a5", 400, "TopicDisallowed", "rejected"),
        ("a6", 403, "Forbidden", "credentials"),
        ("a7", 403, "InvalidProviderToken", "credentials"),
        ("a8", 404, "BadPath", "rejected"),
        ("a9", 405, "MethodNotAllowed", "rejected"),
        ("b1", 410, "Unregistered", "token-dead"),
        ("b2", 410, "ExpiredToken", "token-dead"),
        ("b3", 413, "PayloadTooLarge", "rejected"),
        ("b4", 429, "TooManyRequests", "retry"),
        ("b5", 429, "TooManyProviderTokenUpdates", "throttled"),
        ("b6", 500, "InternalServerError", "retry"),
        ("b7", 503, "ServiceUnavailable", "retry"),
        ("b8", 503, "Shutdown", "retry"),
    ];
    let faults = Faults {
        rules: rows
            .iter()
            .map(|(p, s, r, _)| apns_mock::TokenRule {
                prefix: p.to_string(),
                status: *s,
                reason: Some(r.to_string()),
                times: None,
            })
            .collect(),
        ..Faults::default()
    };
    let m = mock(faults).await;
    let c = app_client(&m.token_app(TEAM, KEY, 1), &fast_settings());
    for (prefix, status, reason, want) in rows {
        let d = c
            .send(&notification(&token(prefix, 7)))
            .await
            .expect("answered");
        assert_eq!(d.response.status, *status, "{reason}");
        assert_eq!(d.response.reason, Some(Reason::parse(reason)));
        let got = match &d.outcome {
            Outcome::Delivered => "delivered",
            Outcome::TokenDead { .. } => "token-dead",
            Outcome::ChannelGone { .. } => "channel-gone",
            Outcome::Rejected { .. } => "rejected",
            Outcome::RetryLater(_) => "retry",
            Outcome::CredentialsBroken { .. } => "credentials",
            Outcome::TokenThrottled => "throttled",
            Outcome::RefreshToken => "refresh",
        };
        assert_eq!(got, *want, "{status} {reason}");
        if *status == 410 {
            let Outcome::TokenDead {
                unregistered_at, ..
            } = d.outcome
            else {
                unreachable!()
            };
            assert!(unregistered_at.is_some(), "410 carries its timestamp");
        }
        assert!(d.response.apns_id.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_resends_the_unprocessed_and_loses_nothing() {
    logs();
    let m = mock(Faults {
        goaway_after: Some(200),
        latency_ms: 20,
        ..Faults::default()
    })
    .await;
    let c = std::sync::Arc::new(app_client(&m.token_app(TEAM, KEY, 2), &fast_settings()));
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.send(&notification(&token("cc", i))).await
        }));
    }
    let mut resent = 0;
    for t in tasks {
        let d = t.await.unwrap().expect("every notification answered");
        assert_eq!(d.outcome, Outcome::Delivered);
        resent += d.resends;
    }
    let s = m.mock.stats();
    assert!(s.goaways >= 3, "{s:?}");
    assert!(
        s.unprocessed > 0,
        "some streams were above last-stream-id: {s:?}"
    );
    assert!(resent > 0);
    // Exactly once each: resends were only of requests APNs never processed.
    assert_eq!(s.by_status.get(&200), Some(&1000));
    let received = m.mock.received();
    let mut ids: Vec<_> = received.iter().map(|r| r.device_token.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1000);
    assert!(
        c.pools()[0]
            .stats
            .goaways
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_resent() {
    let m = mock(Faults {
        refuse_rate: 0.2,
        ..Faults::default()
    })
    .await;
    let c = std::sync::Arc::new(app_client(&m.token_app(TEAM, KEY, 1), &fast_settings()));
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.send(&notification(&token("dd", i))).await
        }));
    }
    let mut outcomes = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => {
                assert_eq!(d.outcome, Outcome::Delivered);
                outcomes.0 += 1;
            }
            // Four refusals in a row (0.2^4 per notification) exhaust the resends.
            Err(e) => {
                assert!(
                    matches!(e.outcome(), Outcome::RetryLater(RetryCause::NotSent(_))),
                    "{e}"
                );
                outcomes.1 += 1;
            }
        }
    }
    let s = m.mock.stats();
    assert!(s.refused > 20, "{s:?}");
    assert_eq!(s.by_status.get(&200).copied().unwrap_or(0), outcomes.0);
    assert!(outcomes.0 >= 290, "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_as_unknown() {
    let m = mock(Faults {
        stall_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let settings = apns::ClientSettings {
        request_timeout: Duration::from_millis(300),
        send_timeout: Duration::from_millis(1_000),
        ..fast_settings()
    };
    let c = app_client(&m.token_app(TEAM, KEY, 1), &settings);
    let started = std::time::Instant::now();
    let e = c.send(&notification(&token("ee", 1))).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(e.outcome(), Outcome::RetryLater(RetryCause::Unknown(_))),
        "{e}"
    );
    assert_eq!(m.mock.stats().stalled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_dropped_connections_are_unknown_not_lost() {
    let m = mock(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    })
    .await;
    let c = app_client(&m.token_app(TEAM, KEY, 1), &fast_settings());
    let e = c.send(&notification(&token("ef", 1))).await.unwrap_err();
    assert!(
        matches!(e.outcome(), Outcome::RetryLater(RetryCause::Unknown(_))),
        "{e}"
    );
    m.mock
        .set_faults(Faults {
            close_mid_response_rate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let e = c.send(&notification(&token("ef", 2))).await.unwrap_err();
    assert!(
        matches!(e.outcome(), Outcome::RetryLater(RetryCause::Unknown(_))),
        "{e}"
    );
    // The pool replaces the dropped connection and the next send succeeds.
    m.mock.set_faults(Faults::default()).unwrap();
    let d = c.send(&notification(&token("ef", 3))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_ping_replaces_the_connection() {
    let m = mock(Faults {
        drop_pings: true,
        ..Faults::default()
    })
    .await;
    let settings = apns::ClientSettings {
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        ..fast_settings()
    };
    let c = app_client(&m.token_app(TEAM, KEY, 1), &settings);
    let pool = c.pools()[0].clone();
    c.send(&notification(&token("f0", 1))).await.unwrap();
    let first = pool.connection_info()[0].id;
    // Idle for a second, PING, no answer for a second: the connection is replaced.
    wait_until_async(|| {
        let p = pool.clone();
        async move { p.connection_info().first().is_some_and(|i| i.id != first) }
    })
    .await;
    assert!(m.mock.stats().pings_dropped >= 1);
    assert!(
        pool.stats
            .closed_unexpectedly
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    m.mock.set_faults(Faults::default()).unwrap();
    assert_eq!(
        c.send(&notification(&token("f0", 2)))
            .await
            .unwrap()
            .outcome,
        Outcome::Delivered
    );
}

async fn wait_until_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_waits_and_then_gives_up_without_buffering() {
    let m = mock(Faults {
        latency_ms: 400,
        ..Faults::default()
    })
    .await;
    let mut app = m.token_app(TEAM, KEY, 1);
    app.max_streams_per_connection = 2;
    // Two streams, 400 ms answers, 700 ms to get a stream: 2 go at once, 2 more after
    // 400 ms, the other 4 give up waiting at 700 ms, unsent.
    let settings = apns::ClientSettings {
        request_timeout: Duration::from_millis(2_000),
        send_timeout: Duration::from_millis(700),
        ..fast_settings()
    };
    let c = std::sync::Arc::new(app_client(&app, &settings));
    assert!(c.pools()[0].wait_open(1, Duration::from_secs(5)).await);
    // Take the connection to its full limit first (token auth starts at one stream).
    c.send(&notification(&token("f1", 99))).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.send(&notification(&token("f1", i))).await
        }));
    }
    let (mut ok, mut waited_out) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(d) => {
                assert_eq!(d.outcome, Outcome::Delivered);
                ok += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("no free stream"), "{e}");
                assert!(matches!(
                    e.outcome(),
                    Outcome::RetryLater(RetryCause::NotSent(_))
                ));
                waited_out += 1;
            }
        }
    }
    assert!(
        m.mock.stats().peak_streams <= 2,
        "never more than our ceiling in flight"
    );
    // 2 go at once, 2 more after 400 ms; the rest cannot get a stream by 700 ms.
    // (On a loaded machine the second pair may miss the deadline too.)
    assert!(
        (2..=4).contains(&ok) && ok + waited_out == 8,
        "ok {ok}, waited out {waited_out}"
    );
    assert_eq!(
        m.mock.stats().by_status.get(&200).copied().unwrap_or(0),
        ok + 1
    );
}

/// The mock answers requests our client would never send the way APNs does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_refuses_what_apns_refuses() {
    use apns::jwt::{SystemClock, TokenPolicy, TokenSigner};
    use apns::limiter::StreamLimiter;
    use bytes::Bytes;
    let m = mock(Faults::default()).await;
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let signer = TokenSigner::new(
        TEAM,
        KEY,
        &apns::secret::Secret::new(pem.into_bytes()),
        TokenPolicy::default(),
        std::sync::Arc::new(SystemClock),
    )
    .unwrap();
    let auth = signer.current().unwrap().authorization().clone();
    let conn = raw_connection(&m).await;
    let good = token("ab", 1);
    let uri = |path: &str| format!("https://{}{path}", conn.authority());
    type Edit = Box<dyn Fn(&mut http::Request<()>)>;
    let rows: Vec<(&str, Edit, Bytes, u16, &str)> = vec![
        (
            "no topic",
            Box::new(|r| {
                r.headers_mut().remove("apns-topic");
            }),
            Bytes::from_static(b"{}"),
            400,
            "MissingTopic",
        ),
        (
            "bad priority",
            Box::new(|r| {
                r.headers_mut()
                    .insert("apns-priority", "7".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadPriority",
        ),
        (
            "bad push type",
            Box::new(|r| {
                r.headers_mut()
                    .insert("apns-push-type", "loud".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "InvalidPushType",
        ),
        (
            "voip topic",
            Box::new(|r| {
                r.headers_mut()
                    .insert("apns-push-type", "voip".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadTopic",
        ),
        (
            "long collapse id",
            Box::new(|r| {
                r.headers_mut()
                    .insert("apns-collapse-id", "x".repeat(65).parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadCollapseId",
        ),
        (
            "bad apns-id",
            Box::new(|r| {
                r.headers_mut().insert("apns-id", "nope".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadMessageId",
        ),
        (
            "bad expiration",
            Box::new(|r| {
                r.headers_mut()
                    .insert("apns-expiration", "soon".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadExpirationDate",
        ),
        (
            "duplicate topic",
            Box::new(|r| {
                r.headers_mut().append("apns-topic", TOPIC.parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            400,
            "DuplicateHeaders",
        ),
        (
            "bad token",
            Box::new(|r| {
                *r.uri_mut() = format!("https://{}/3/device/xyz", r.uri().authority().unwrap())
                    .parse()
                    .unwrap();
            }),
            Bytes::from_static(b"{}"),
            400,
            "BadDeviceToken",
        ),
        (
            "no token",
            Box::new(|r| {
                *r.uri_mut() = format!("https://{}/3/device/", r.uri().authority().unwrap())
                    .parse()
                    .unwrap();
            }),
            Bytes::from_static(b"{}"),
            400,
            "MissingDeviceToken",
        ),
        (
            "bad path",
            Box::new(|r| {
                *r.uri_mut() = format!("https://{}/2/device/ab", r.uri().authority().unwrap())
                    .parse()
                    .unwrap();
            }),
            Bytes::from_static(b"{}"),
            404,
            "BadPath",
        ),
        (
            "GET",
            Box::new(|r| {
                *r.method_mut() = http::Method::GET;
            }),
            Bytes::from_static(b"{}"),
            405,
            "MethodNotAllowed",
        ),
        (
            "empty payload",
            Box::new(|_| {}),
            Bytes::new(),
            400,
            "PayloadEmpty",
        ),
        (
            "4097 bytes",
            Box::new(|_| {}),
            Bytes::from(vec![b' '; 4097]),
            413,
            "PayloadTooLarge",
        ),
        (
            "no token header",
            Box::new(|r| {
                r.headers_mut().remove("authorization");
            }),
            Bytes::from_static(b"{}"),
            403,
            "MissingProviderToken",
        ),
        (
            "forged token",
            Box::new(|r| {
                r.headers_mut().insert("authorization", "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IktFWTEyMzQ1NjcifQ.eyJpc3MiOiJURUFNMTIzNDU2IiwiaWF0IjoxfQ.c2ln".parse().unwrap());
            }),
            Bytes::from_static(b"{}"),
            403,
            "InvalidProviderToken",
        ),
        ("fine", Box::new(|_| {}), Bytes::from_static(b"{}"), 200, ""),
    ];
    for (name, edit, body, status, reason) in rows {
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri(&format!("/3/device/{good}")))
            .header("apns-topic", TOPIC)
            .header("apns-push-type", "alert")
            .header("authorization", auth.clone())
            .body(())
            .unwrap();
        edit(&mut req);
        let limiter = conn.limiter().clone();
        let permit = StreamLimiter::acquire(limiter).await.unwrap();
        let r = conn
            .send(
                req,
                body,
                Duration::from_secs(5),
                permit,
                apns::connection::MAX_ERROR_BODY,
            )
            .await
            .map(|a| apns::ApnsResponse::from_answer(&a))
            .unwrap();
        assert_eq!(r.status, status, "{name}");
        assert_eq!(
            r.reason.map(|r| r.to_string()).unwrap_or_default(),
            reason,
            "{name}"
        );
    }
}

/// APNs accepts what some clients send although JWS says otherwise: the `Bearer`
/// scheme capitalised, and JWT segments in standard base64 with padding (the a2 crate
/// does both). The mock must accept them too, or it would fail clients APNs serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_accepts_lenient_tokens_like_apns() {
    use apns::limiter::StreamLimiter;
    use base64::Engine;
    let m = mock(Faults::default()).await;
    let pem = m.mock.generate_key(TEAM, KEY).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let input = format!(
        "{}.{}",
        b64.encode(format!(r#"{{"alg":"ES256","kid":"{KEY}"}}"#)),
        b64.encode(format!(r#"{{"iss":"{TEAM}","iat":{now}}}"#))
    );
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let sig_url =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256).unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig_url)
        .unwrap();
    let jwt = format!("{input}.{}", b64.encode(sig));
    assert!(
        jwt.contains('=') || jwt.contains('+') || jwt.contains('/'),
        "standard base64: {jwt}"
    );
    let conn = raw_connection(&m).await;
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!(
            "https://{}/3/device/{}",
            conn.authority(),
            token("ab", 1)
        ))
        .header("apns-topic", TOPIC)
        .header("authorization", format!("Bearer {jwt}"))
        .body(())
        .unwrap();
    let permit = StreamLimiter::acquire(conn.limiter().clone())
        .await
        .unwrap();
    let r = conn
        .send(
            req,
            bytes::Bytes::from_static(b"{}"),
            Duration::from_secs(5),
            permit,
            apns::connection::MAX_ERROR_BODY,
        )
        .await
        .map(|a| apns::ApnsResponse::from_answer(&a))
        .unwrap();
    assert_eq!((r.status, r.reason), (200, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_withdrawn_when_its_stream_is_granted_sends_nothing() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let c = app_client(&app, &fast_settings());
    let asked = std::sync::atomic::AtomicU32::new(0);
    let r = c
        .send_checked(&notification(&token("ab", 1)), || {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            false
        })
        .await;
    assert_eq!(r.unwrap_err(), apns::client::SendError::Withdrawn);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(m.mock.stats().answered, 0, "nothing reached APNs");
    // The stream went back: the next send goes out.
    let d = c.send(&notification(&token("ab", 2))).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    assert_eq!(m.mock.stats().answered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_cut_into_several_data_frames_arrive_byte_for_byte() {
    use apns::notification::{Notification, NotificationParts, PushType};
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let c = app_client(&app, &fast_settings());
    // Around each cut (1023 bytes) and up to the largest payloads (4096 alert, 5120 voip).
    let sizes = [40, 1022, 1023, 1024, 2046, 2047, 3000, 4096];
    let body = |size: usize, i: usize| {
        let head = format!(r#"{{"aps":{{"alert":"n{i}"}},"pad":""#);
        let pad = size - head.len() - 2;
        let s = format!("{head}{}\"}}", &"abcdefghij".repeat(pad / 10 + 1)[..pad]);
        assert_eq!(s.len(), size);
        bytes::Bytes::from(s)
    };
    let mut sent = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        sent.push((PushType::Alert, TOPIC.to_string(), body(*size, i)));
    }
    sent.push((PushType::Voip, format!("{TOPIC}.voip"), body(5120, 99)));
    for (i, (push_type, topic, payload)) in sent.iter().enumerate() {
        let n = Notification::new(NotificationParts {
            device_token: token("cd", i as u64),
            topic: topic.clone(),
            push_type: *push_type,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: payload.clone(),
        })
        .unwrap();
        let d = c.send(&n).await.unwrap();
        assert_eq!(d.outcome, Outcome::Delivered, "{} bytes", payload.len());
    }
    let got = m.mock.received();
    assert_eq!(got.len(), sent.len());
    for (r, (_, _, payload)) in got.iter().zip(&sent) {
        assert_eq!(
            &r.payload,
            payload,
            "{} bytes arrive unchanged",
            payload.len()
        );
    }
}

/// The mock reads a body sent in several DATA frames whole (its handler keeps a
/// one-frame body as received and joins the frames of a longer one). A raw h2 client,
/// since ours always sends a payload in one frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_joins_a_payload_sent_in_several_data_frames() {
    use apns::secret::Secret;
    use apns::tls::{Identity, client_config};

    let m = mock(Faults::default()).await;
    let issued = m.mock.issue_client_identity(&[TOPIC]).unwrap();
    let identity = Identity {
        chain: vec![issued.cert_der.clone()],
        key: Secret::new(issued.key_der.clone_key()),
    };
    let tls_config = client_config(Some(&m.ca), Some(identity)).unwrap();
    let tcp = tokio::net::TcpStream::connect(m.mock.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let device = token("ab", 1);
    let req = http::Request::post(format!(
        "https://localhost:{}/3/device/{device}",
        m.mock.addr().port()
    ))
    .header("apns-topic", TOPIC)
    .body(())
    .unwrap();
    let (answer, mut body) = send.send_request(req, false).unwrap();
    let parts: [&[u8]; 3] = [br#"{"aps":{"alert":"#, br#""in three frames""#, b"}}"];
    for (i, part) in parts.iter().enumerate() {
        body.send_data(bytes::Bytes::copy_from_slice(part), i == parts.len() - 1)
            .unwrap();
    }
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let got = m.mock.received();
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], &parts.concat()[..]);
    assert_eq!(got[0].device_token, device);
}

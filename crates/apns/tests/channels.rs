//! Live Activity broadcasts and channel management against the mock APNs: the client's
//! requests, the mock's store and limits, environments kept apart, and the
//! classification of every broadcast answer.

mod common;

use apns::channels::{ChannelClient, ChannelError, StoragePolicy};
use apns::{BroadcastParts, EndpointKind, Notification, Outcome, Reason};
use apns_mock::{Faults, MockConfig, TokenRule};
use bytes::Bytes;
use common::*;

const UPDATE: &[u8] =
    br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":"1-0"}}}"#;

fn broadcast(channel_id: &str, expiration: Option<u64>) -> Notification {
    Notification::broadcast(BroadcastParts {
        channel_id: channel_id.into(),
        bundle_id: TOPIC.into(),
        priority: None,
        expiration,
        request_id: Some(uuid::Uuid::new_v4()),
        payload: Bytes::from_static(UPDATE),
    })
    .expect("valid broadcast")
}

fn reason_of(e: &ChannelError) -> &str {
    e.reason()
        .unwrap_or_else(|| panic!("not refused by APNs: {e}"))
}

#[tokio::test]
async fn a_channel_is_created_read_listed_used_and_deleted() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let channels = ChannelClient::start("la", &app, &fast_settings()).unwrap();
    let sender = app_client(&app, &fast_settings());

    let stored = channels
        .create(TOPIC, StoragePolicy::MostRecentMessageStored)
        .await
        .unwrap();
    let unstored = channels
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap();
    assert_ne!(stored.channel_id, unstored.channel_id);
    assert!(uuid::Uuid::parse_str(&stored.request_id).is_ok());
    let read = channels.get(TOPIC, &stored.channel_id).await.unwrap();
    assert_eq!(
        (read.message_storage_policy, read.push_type.as_str()),
        (1, "LiveActivity")
    );
    let mut listed = channels.list(TOPIC).await.unwrap();
    listed.sort();
    let mut want = vec![stored.channel_id.clone(), unstored.channel_id.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(m.mock.channels(TOPIC).len(), 2);

    // A broadcast on each: expiration 0 goes everywhere; a later expiration only on
    // the channel that stores messages.
    let d = sender
        .send(&broadcast(&unstored.channel_id, None))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    assert!(
        d.response.apns_unique_id.is_some(),
        "a broadcast's 200 carries apns-unique-id"
    );
    let later = Some(4_000_000_000);
    let d = sender
        .send(&broadcast(&stored.channel_id, later))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
    let d = sender
        .send(&broadcast(&unstored.channel_id, later))
        .await
        .unwrap();
    assert_eq!(
        d.outcome,
        Outcome::Rejected {
            status: 400,
            reason: Some(Reason::BadExpirationDate)
        },
        "a non-zero expiration on a channel without storage"
    );
    let sent = m
        .mock
        .received()
        .into_iter()
        .filter(|r| r.channel_id.is_some())
        .collect::<Vec<_>>();
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|r| r.topic.is_none() && r.device_token.is_empty())
    );
    assert_eq!(sent[0].push_type.as_deref(), Some("liveactivity"));
    assert_eq!(sent[0].expiration.as_deref(), Some("0"));
    assert_eq!(sent[0].priority.as_deref(), Some("10"));

    channels.delete(TOPIC, &unstored.channel_id).await.unwrap();
    let e = channels.get(TOPIC, &unstored.channel_id).await.unwrap_err();
    assert_eq!(reason_of(&e), "ChannelNotRegistered");
    assert!(e.to_string().contains("no channel with this id"), "{e}");
    let e = channels
        .delete(TOPIC, &unstored.channel_id)
        .await
        .unwrap_err();
    assert_eq!(reason_of(&e), "ChannelNotRegistered");
    assert_eq!(channels.list(TOPIC).await.unwrap(), vec![stored.channel_id]);
    let d = sender
        .send(&broadcast(&unstored.channel_id, None))
        .await
        .unwrap();
    assert_eq!(
        d.outcome,
        Outcome::ChannelGone {
            status: 400,
            reason: Reason::ChannelNotRegistered
        }
    );
}

#[tokio::test]
async fn the_ten_thousand_and_first_channel_is_refused() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let channels = ChannelClient::start("la", &app, &fast_settings()).unwrap();
    for _ in 0..100 {
        let batch = (0..100).map(|_| channels.create(TOPIC, StoragePolicy::NoMessageStored));
        for r in futures_util::future::join_all(batch).await {
            r.unwrap();
        }
    }
    assert_eq!(channels.list(TOPIC).await.unwrap().len(), 10_000);
    let e = channels
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap_err();
    assert_eq!(reason_of(&e), "CannotCreateChannelConfig");
    assert!(e.to_string().contains("10,000"), "{e}");
    // Another app's bundle has its own count; a deleted channel frees a place.
    channels
        .create("com.example.other", StoragePolicy::NoMessageStored)
        .await
        .unwrap();
    let first = m.mock.channels(TOPIC).into_keys().next().unwrap();
    channels.delete(TOPIC, &first).await.unwrap();
    channels
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap();
}

#[tokio::test]
async fn sandbox_and_production_channels_are_kept_apart() {
    let sandbox = mock(Faults::default()).await;
    let production = mock_with(MockConfig {
        environment: EndpointKind::Production,
        ..MockConfig::default()
    })
    .await;
    let in_sandbox = sandbox.token_app(TEAM, KEY, 1);
    let mut in_production = production.token_app(TEAM, "KEY7654321", 1);
    in_production.max_streams_per_connection = 100;
    let c = ChannelClient::start("la", &in_sandbox, &fast_settings()).unwrap();
    let made = c
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap();
    let p = ChannelClient::start("la", &in_production, &fast_settings()).unwrap();
    assert!(p.list(TOPIC).await.unwrap().is_empty());
    let e = p.get(TOPIC, &made.channel_id).await.unwrap_err();
    assert_eq!(reason_of(&e), "ChannelNotRegistered");
    let d = app_client(&in_production, &fast_settings())
        .send(&broadcast(&made.channel_id, None))
        .await
        .unwrap();
    assert!(
        matches!(d.outcome, Outcome::ChannelGone { .. }),
        "{:?}",
        d.outcome
    );
    let d = app_client(&in_sandbox, &fast_settings())
        .send(&broadcast(&made.channel_id, None))
        .await
        .unwrap();
    assert_eq!(d.outcome, Outcome::Delivered);
}

#[tokio::test]
async fn management_refusals_name_apples_reasons() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let channels = ChannelClient::start("la", &app, &fast_settings()).unwrap();
    // A channel id that is base64 but was never issued; one that is not base64 is
    // refused before sending.
    let e = channels.get(TOPIC, "bm9wZQ==").await.unwrap_err();
    assert_eq!(reason_of(&e), "ChannelNotRegistered");
    let e = channels.get(TOPIC, "no pe").await.unwrap_err();
    assert!(matches!(e, ChannelError::Invalid(_)), "{e}");
    let e = channels
        .create(
            "com.example.app.push-type.liveactivity",
            StoragePolicy::NoMessageStored,
        )
        .await
        .unwrap_err();
    assert_eq!(reason_of(&e), "TopicDisallowed");
    // A certificate for another bundle id.
    let (cert, _) = m.cert_app(&["com.example.other"]);
    let by_cert = ChannelClient::start("la", &cert, &fast_settings()).unwrap();
    let e = by_cert
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap_err();
    assert_eq!(reason_of(&e), "TopicMismatch");
    assert!(matches!(e, ChannelError::Refused { status: 403, .. }));
    by_cert
        .create("com.example.other", StoragePolicy::NoMessageStored)
        .await
        .unwrap();
}

#[tokio::test]
async fn fault_rules_answer_broadcasts_by_channel() {
    let m = mock(Faults::default()).await;
    let app = m.token_app(TEAM, KEY, 1);
    let channels = ChannelClient::start("la", &app, &fast_settings()).unwrap();
    let id = channels
        .create(TOPIC, StoragePolicy::NoMessageStored)
        .await
        .unwrap()
        .channel_id;
    m.mock
        .update_faults(|f| {
            f.rules.push(TokenRule {
                prefix: id.clone(),
                status: 503,
                reason: Some("ServiceUnavailable".into()),
                times: Some(1),
            })
        })
        .unwrap();
    let sender = app_client(&app, &fast_settings());
    let d = sender.send(&broadcast(&id, None)).await.unwrap();
    assert!(
        matches!(d.outcome, Outcome::RetryLater(_)),
        "{:?}",
        d.outcome
    );
    let d = sender.send(&broadcast(&id, None)).await.unwrap();
    assert_eq!(d.outcome, Outcome::Delivered, "the rule fired once");
}

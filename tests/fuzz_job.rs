//! Property tests of the job decoder (the worker's parser of untrusted input): it never
//! panics on any bytes or any JSON, accepts every well-formed job it is given, and
//! refuses what the schema refuses with a reason. Runs a bounded number of cases
//! (PROPTEST_CASES, default 2,000 per property) in CI.

use apns_worker::job::{self, AppDirectory, AppEntry, Envelope};
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

fn apps() -> AppDirectory {
    AppDirectory::new(vec![AppEntry {
        name: "shop".into(),
        topics: vec!["com.example.app".into()],
        default_topic: Some("com.example.app".into()),
        key_topics: None,
    }])
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("device_token".to_string()),
                    Just("topic".to_string()),
                    Just("payload".to_string()),
                    Just("aps".to_string()),
                    Just("alert".to_string()),
                    Just("badge".to_string()),
                    Just("priority".to_string()),
                    Just("push_type".to_string()),
                    Just("collapse_id".to_string()),
                    "[a-z-]{1,12}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..2048), ct in prop::option::of("[a-z/;= -]{0,30}")) {
        let env = Envelope { content_type: ct.as_deref(), ..Envelope::default() };
        let _ = job::decode(&Bytes::from(body), &env, &apps(), 65536);
    }

    #[test]
    fn never_panics_on_json(v in arb_json()) {
        let body = Bytes::from(v.to_string());
        if let Err(e) = job::decode(&body, &Envelope::default(), &apps(), 65536) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn well_formed_jobs_are_accepted_with_their_payload_bytes(
        token in "([0-9a-f]{2}){32}",
        alert in ".{0,200}",
        badge in 0u32..1000,
        priority in prop::sample::select(vec![10i64, 5, 1]),
        id in "[A-Za-z0-9_-]{1,40}",
        collapse in prop::option::of("[a-z0-9]{1,64}"),
        custom in arb_json(),
    ) {
        let mut j = json!({
            "id": id, "device_token": token, "topic": "com.example.app", "priority": priority,
            "payload": {"aps": {"alert": alert, "badge": badge}, "custom": custom},
        });
        if let Some(c) = collapse { j["collapse_id"] = json!(c); }
        let body = Bytes::from(j.to_string());
        match job::decode(&body, &Envelope::default(), &apps(), 65536) {
            // The payload goes out byte for byte as the producer wrote it.
            Ok(job) => {
                let want = j["payload"].to_string();
                prop_assert_eq!(&job.notification.payload()[..], want.as_bytes());
            }
            // The only refusals allowed: size or depth limits the schema cannot express.
            Err(e) => {
                let why = e.to_string();
                prop_assert!(why.contains("APNs accepts at most") || why.contains("nests deeper"), "{}", why);
            }
        }
    }

    #[test]
    fn header_injection_never_gets_through(
        token in "([0-9a-f]{2}){32}",
        evil in "[a-z]{0,5}[\r\n\0][a-zA-Z: -]{0,20}",
        field in prop::sample::select(vec!["topic", "collapse_id", "device_token", "push_type"]),
    ) {
        let mut j = json!({"device_token": token, "topic": "com.example.app", "payload": {}});
        j[field] = json!(evil);
        let body = Bytes::from(j.to_string());
        prop_assert!(job::decode(&body, &Envelope::default(), &apps(), 65536).is_err());
    }
}

//! The published contracts: the schemas are valid JSON Schema 2020-12, the examples
//! validate, and the worker's decoder agrees with the job schema on a corpus.

use apns_worker::job::{self, AppDirectory, Envelope};
use serde_json::{Value, json};

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn validator(name: &str) -> jsonschema::Validator {
    let schema = load(&format!("schemas/{name}"));
    assert!(
        jsonschema::meta::is_valid(&schema),
        "{name} is not a valid JSON Schema"
    );
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

#[test]
fn examples_validate_against_their_schemas() {
    let job = validator("notification-job.schema.json");
    for ex in [
        "job-minimal.json",
        "job-full.json",
        "job-liveactivity.json",
        "job-liveactivity-start.json",
        "job-broadcast.json",
        "job-background.json",
        "job-fanout.json",
    ] {
        let v = load(&format!("schemas/examples/{ex}"));
        assert!(errors(&job, &v).is_empty(), "{ex}: {:?}", errors(&job, &v));
        // And the worker accepts them.
        let body = bytes::Bytes::from(v.to_string());
        job::decode(
            &body,
            &Envelope::default(),
            &AppDirectory::permissive(),
            65536,
        )
        .unwrap_or_else(|e| panic!("{ex}: decoder refuses: {e}"));
    }
    let ev = validator("token-cleanup-event.schema.json");
    let v = load("schemas/examples/token-cleanup-event.json");
    assert!(errors(&ev, &v).is_empty(), "{:?}", errors(&ev, &v));
    let ch = validator("channel-cleanup-event.schema.json");
    let v = load("schemas/examples/channel-cleanup-event.json");
    assert!(errors(&ch, &v).is_empty(), "{:?}", errors(&ch, &v));
    let env = validator("environment-mismatch-event.schema.json");
    let v = load("schemas/examples/environment-mismatch-event.json");
    assert!(errors(&env, &v).is_empty(), "{:?}", errors(&env, &v));
    let dl = validator("dead-letter-headers.schema.json");
    let v = load("schemas/examples/dead-letter-headers.json");
    assert!(errors(&dl, &v).is_empty(), "{:?}", errors(&dl, &v));
    let receipt = validator("outcome-receipt.schema.json");
    let v = load("schemas/examples/outcome-receipt.json");
    assert!(
        errors(&receipt, &v).is_empty(),
        "{:?}",
        errors(&receipt, &v)
    );
    // A retrying receipt that claims to be final, or a dead letter without a reason,
    // is not one.
    let mut wrong = v.clone();
    wrong["status"] = "retrying".into();
    assert!(!errors(&receipt, &wrong).is_empty());
    let mut wrong = v;
    wrong["status"] = "dead_lettered".into();
    wrong.as_object_mut().unwrap().remove("reason");
    assert!(!errors(&receipt, &wrong).is_empty());
}

const T: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";

/// Jobs the schema and the decoder must both accept (true) or both refuse (false).
fn corpus() -> Vec<(Value, bool)> {
    let base = || json!({"device_token": T, "topic": "com.example.app", "payload": {"aps": {"alert": "hi"}}});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base();
        f(&mut v);
        v
    };
    // A Live Activity update to a device; `f` edits its `aps`.
    let live = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({
            "device_token": T,
            "topic": "com.example.app.push-type.liveactivity",
            "push_type": "liveactivity",
            "payload": {"aps": {"event": "update", "timestamp": 1_700_000_000, "content-state": {"score": "1-0"}}},
        });
        f(&mut v["payload"]["aps"]);
        v
    };
    // A fan-out job; `f` edits it.
    let fan = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({
            "device_tokens": [T, "ab".repeat(32)],
            "topic": "com.example.app",
            "payload": {"aps": {"alert": "Breaking news"}},
        });
        f(&mut v);
        v
    };
    // A broadcast to a channel; `f` edits the job.
    let broadcast = |f: &dyn Fn(&mut Value)| {
        let mut v = json!({
            "channel_id": "dHN0LXNyY2gtY2hubA==",
            "topic": "com.example.app",
            "payload": {"aps": {"event": "update", "timestamp": 1_700_000_000, "content-state": {"score": "1-0"}}},
        });
        f(&mut v);
        v
    };
    vec![
        (base(), true),
        (with(&|v| v["extra"] = json!(1)), false),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("payload");
            }),
            false,
        ),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("device_token");
            }),
            false,
        ),
        (with(&|v| v["device_token"] = json!("xyz")), false),
        (with(&|v| v["device_token"] = json!("abc")), false),
        (with(&|v| v["device_token"] = json!(T.to_uppercase())), true),
        (with(&|v| v["topic"] = json!("com.x\r\nInjected: 1")), false),
        (with(&|v| v["payload"] = json!([1])), false),
        (with(&|v| v["payload"] = json!("text")), false),
        (
            with(&|v| v["payload"] = json!({"custom": {"deep": [1, 2, 3]}})),
            true,
        ),
        (with(&|v| v["payload"]["aps"]["badge"] = json!("1")), false),
        (with(&|v| v["payload"]["aps"]["badge"] = json!(-1)), false),
        (with(&|v| v["payload"]["aps"]["badge"] = json!(7)), true),
        (
            with(&|v| v["payload"]["aps"]["alert"] = json!({"title": "t", "loc-args": ["a", "b"]})),
            true,
        ),
        (
            with(&|v| v["payload"]["aps"]["alert"] = json!({"loc-args": "a"})),
            false,
        ),
        (with(&|v| v["payload"]["aps"]["alert"] = json!(5)), false),
        (
            with(&|v| v["payload"]["aps"]["sound"] = json!("ping.caf")),
            true,
        ),
        (
            with(&|v| {
                v["payload"]["aps"]["sound"] = json!({"critical": 1, "name": "x", "volume": 1.0})
            }),
            true,
        ),
        (
            with(&|v| v["payload"]["aps"]["sound"] = json!({"critical": 1, "volume": 2})),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["content-available"] = json!(1)),
            true,
        ),
        (
            with(&|v| v["payload"]["aps"]["content-available"] = json!(true)),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["mutable-content"] = json!(2)),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["interruption-level"] = json!("critical")),
            true,
        ),
        (
            with(&|v| v["payload"]["aps"]["interruption-level"] = json!("loud")),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["relevance-score"] = json!(0.3)),
            true,
        ),
        (
            with(&|v| v["payload"]["aps"]["relevance-score"] = json!(3)),
            false,
        ),
        (with(&|v| v["payload"]["aps"]["event"] = json!("end")), true),
        (
            with(&|v| v["payload"]["aps"]["event"] = json!("pause")),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["content-state"] = json!([1])),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["stale-date"] = json!("tomorrow")),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["new-apple-key"] = json!({"any": 1})),
            true,
        ),
        (with(&|v| v["push_type"] = json!("voip")), false),
        (
            with(&|v| {
                v["push_type"] = json!("voip");
                v["topic"] = json!("com.example.app.voip");
            }),
            true,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("liveactivity");
                v["topic"] = json!("com.example.app.push-type.liveactivity");
            }),
            false,
        ),
        (live(&|_| {}), true),
        (live(&|a| a["event"] = json!("end")), true),
        (
            live(&|a| {
                a["event"] = json!("end");
                a.as_object_mut().unwrap().remove("content-state");
                a["dismissal-date"] = json!(1_700_000_600);
            }),
            true,
        ),
        (
            live(&|a| {
                a.as_object_mut().unwrap().remove("event");
            }),
            false,
        ),
        (
            live(&|a| {
                a.as_object_mut().unwrap().remove("timestamp");
            }),
            false,
        ),
        (
            live(&|a| a["timestamp"] = json!(1_700_000_000_000u64)),
            false,
        ),
        (
            live(&|a| a["stale-date"] = json!(1_700_000_000_000u64)),
            false,
        ),
        (
            live(&|a| {
                a.as_object_mut().unwrap().remove("content-state");
            }),
            false,
        ),
        (live(&|a| a["event"] = json!("start")), false),
        (
            live(&|a| {
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
            }),
            false,
        ),
        (
            live(&|a| {
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
                a["attributes"] = json!({"home": "Lyon"});
                a["input-push-token"] = json!(1);
            }),
            true,
        ),
        (live(&|a| a["attributes"] = json!({"home": "Lyon"})), false),
        (live(&|a| a["input-push-channel"] = json!("abcd")), false),
        (
            live(&|a| {
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
                a["attributes"] = json!({"home": "Lyon"});
                a["input-push-channel"] = json!("dHN0LXNyY2gtY2hubA==");
            }),
            true,
        ),
        (
            live(&|a| {
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
                a["attributes"] = json!({"home": "Lyon"});
                a["input-push-channel"] = json!("not base64!!");
            }),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["input-push-channel"] = json!("not base64!!")),
            false,
        ),
        (with(&|v| v["channel_id"] = json!(null)), false),
        (broadcast(&|v| v["device_token"] = json!(null)), false),
        (with(&|v| v["topic"] = json!(null)), false),
        (with(&|v| v["collapse_id"] = json!(null)), false),
        (with(&|v| v["expiration"] = json!(null)), false),
        (with(&|v| v["payload"]["aps"] = json!(null)), false),
        (with(&|v| v["payload"]["aps"]["badge"] = json!(null)), false),
        (with(&|v| v["payload"]["aps"]["alert"] = json!(null)), false),
        (
            with(&|v| v["payload"]["aps"]["alert"] = json!({"title": null})),
            false,
        ),
        (
            with(&|v| v["payload"]["aps"]["sound"] = json!({"name": "x", "volume": null})),
            false,
        ),
        (live(&|a| a["stale-date"] = json!(null)), false),
        (with(&|v| v["payload"]["custom"] = json!(null)), true),
        (live(&|a| a["input-push-token"] = json!(2)), false),
        (
            live(&|a| {
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
                a["attributes"] = json!({"home": "Lyon"});
                a["input-push-token"] = json!(0);
            }),
            false,
        ),
        (broadcast(&|_| {}), true),
        (
            broadcast(&|v| v["topic"] = json!("com.example.app.push-type.liveactivity")),
            true,
        ),
        (
            broadcast(&|v| v["topic"] = json!("com.example.app.voip")),
            false,
        ),
        (broadcast(&|v| v["push_type"] = json!("alert")), false),
        (broadcast(&|v| v["collapse_id"] = json!("c")), false),
        (broadcast(&|v| v["device_token"] = json!(T)), false),
        (broadcast(&|v| v["channel_id"] = json!("")), false),
        (broadcast(&|v| v["channel_id"] = json!("abc")), false),
        (broadcast(&|v| v["channel_id"] = json!("ab=c")), false),
        (broadcast(&|v| v["channel_id"] = json!("a b=")), false),
        (broadcast(&|v| v["channel_id"] = json!("ab+/cd==")), true),
        (
            broadcast(&|v| {
                v.as_object_mut().unwrap().remove("channel_id");
            }),
            false,
        ),
        (
            broadcast(&|v| {
                let a = &mut v["payload"]["aps"];
                a["event"] = json!("start");
                a["attributes-type"] = json!("MatchAttributes");
                a["attributes"] = json!({"home": "Lyon"});
            }),
            false,
        ),
        (
            broadcast(&|v| {
                v["payload"]["aps"]
                    .as_object_mut()
                    .unwrap()
                    .remove("timestamp");
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("widgets");
                v["topic"] = json!("com.example.app.push-type.widgets");
                v["payload"] = json!({"aps": {"content-changed": true}});
            }),
            true,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("controls");
                v["topic"] = json!("com.example.app.push-type.controls");
                v["payload"] = json!({"aps": {"content-changed": true}});
            }),
            true,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("controls");
                v["topic"] = json!("com.example.app");
                v["payload"] = json!({"aps": {"content-changed": true}});
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("widgets");
                v["topic"] = json!("com.example.app.push-type.widgets");
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("widgets");
                v["topic"] = json!("com.example.app.push-type.widgets");
                v["payload"] = json!({"aps": {"content-changed": "yes"}});
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("background");
                v["payload"] = json!({"aps": {"content-available": 0}});
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("background");
                v["payload"] = json!({"sync": 1});
            }),
            false,
        ),
        (with(&|v| v["push_type"] = json!("complication")), false),
        (with(&|v| v["push_type"] = json!("Alert")), false),
        (
            with(&|v| {
                v["push_type"] = json!("background");
                v["priority"] = json!(10);
            }),
            false,
        ),
        (
            with(&|v| {
                v["push_type"] = json!("background");
                v["priority"] = json!(5);
                v["payload"] = json!({"aps": {"content-available": 1}});
            }),
            true,
        ),
        (with(&|v| v["priority"] = json!(7)), false),
        (with(&|v| v["priority"] = json!("10")), false),
        (with(&|v| v["expiration"] = json!(-1)), false),
        (with(&|v| v["expiration"] = json!(0)), true),
        (with(&|v| v["collapse_id"] = json!("x".repeat(65))), false),
        (with(&|v| v["collapse_id"] = json!("x".repeat(64))), true),
        (with(&|v| v["collapse_id"] = json!("a\nb")), false),
        (with(&|v| v["collapse_id"] = json!("")), false),
        (with(&|v| v["id"] = json!("")), false),
        (with(&|v| v["id"] = json!(42)), false),
        (with(&|v| v["app"] = json!(["x"])), false),
        // Fan-out jobs.
        (fan(&|_| {}), true),
        (fan(&|v| v["device_tokens"] = json!([T, T])), true),
        (fan(&|v| v["device_tokens"] = json!([])), false),
        (fan(&|v| v["device_tokens"] = json!(T)), false),
        (fan(&|v| v["device_tokens"] = json!(null)), false),
        (fan(&|v| v["device_tokens"] = json!([T, "zz"])), false),
        (fan(&|v| v["device_tokens"] = json!(["abc"])), false),
        (fan(&|v| v["device_tokens"] = json!([T, 7])), false),
        (fan(&|v| v["device_token"] = json!(T)), false),
        (
            fan(&|v| v["channel_id"] = json!("dHN0LXNyY2gtY2hubA==")),
            false,
        ),
        (
            fan(&|v| {
                v["push_type"] = json!("voip");
                v["topic"] = json!("com.example.app");
            }),
            false,
        ),
        (
            fan(&|v| {
                v["push_type"] = json!("voip");
                v["topic"] = json!("com.example.app.voip");
            }),
            true,
        ),
    ]
}

#[test]
fn the_decoder_and_the_schema_agree() {
    let schema = validator("notification-job.schema.json");
    for (job, valid) in corpus() {
        let by_schema = schema.is_valid(&job);
        let body = bytes::Bytes::from(job.to_string());
        let by_decoder = job::decode(
            &body,
            &Envelope::default(),
            &AppDirectory::permissive(),
            65536,
        );
        assert_eq!(
            by_schema,
            valid,
            "schema on {job}: {:?}",
            errors(&schema, &job)
        );
        // A fan-out job with a bad token among good ones is accepted by the worker
        // (the good tokens are sent, the bad ones dead-lettered): it agrees with the
        // schema by refusing those tokens.
        let accepted = by_decoder
            .as_ref()
            .is_ok_and(|j| j.fanout.as_ref().is_none_or(|f| f.refused.is_empty()));
        assert_eq!(
            accepted,
            valid,
            "decoder on {job}: {:?}",
            by_decoder.map(|j| j.fanout)
        );
    }
}

/// The schema's push types are the client's, in the same order.
#[test]
fn the_schema_lists_every_push_type() {
    let schema = load("schemas/notification-job.schema.json");
    let listed: Vec<&str> = schema["properties"]["push_type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let known: Vec<&str> = apns::PushType::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(listed, known);
    // Every suffixed push type has its topic rule in the schema.
    let rules = schema["allOf"].to_string();
    for p in apns::PushType::ALL {
        if let Some(suffix) = p.topic_suffix() {
            let pattern = format!("{}$", suffix.replace('.', "\\\\."));
            assert!(rules.contains(&pattern), "{p}: no rule for {pattern}");
        }
    }
}

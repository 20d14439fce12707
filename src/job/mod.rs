//! Jobs: decoding one AMQP message into a validated notification, and deciding which
//! app sends it. Pure (bytes and properties in, a [`Job`] or the exact reason out) but
//! for one thing: a job with no id at all gets a random apns-id.
//!
//! The JSON contract is `schemas/notification-job.schema.json`; the tests check that
//! this decoder and the schema agree on a corpus of good and bad jobs.

mod apps;
pub mod control;

use apns::payload::PayloadError;
use apns::{BroadcastParts, Notification, NotificationParts, Priority, PushType, ValidationError};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

pub use apps::{AppDirectory, AppEntry};

/// Namespace of the UUIDv5 apns-ids derived from producers' job ids.
pub const APNS_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_1a44_3a5e_4b1f_9a27_51c4_d1e2_a0b3);

/// Why a job cannot be sent. The text goes into the dead letter's `x-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("the job is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("content type {0:?} is not application/json")]
    ContentType(String),
    #[error("the job is not valid JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Payload(#[from] PayloadError),
    #[error("{0}")]
    Control(#[from] control::ControlError),
    #[error("id must be 1 to 200 characters")]
    BadId,
    #[error("no app named {0:?} is configured")]
    UnknownApp(String),
    #[error("no configured app sends to topic {0:?}")]
    NoAppForTopic(String),
    #[error("the job has no topic and app {0:?} has no default topic")]
    NoTopic(String),
    #[error("the job has neither topic nor app, and more than one app is configured")]
    Ambiguous,
    #[error("app {app:?} does not send to topic {topic:?}")]
    TopicNotServed { app: String, topic: String },
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("the job needs device_token (one device) or channel_id (a Live Activity broadcast)")]
    NoTarget,
    #[error("the job has both device_token and channel_id; give one")]
    TwoTargets,
    #[error(
        "a broadcast (channel_id) is a Live Activity update: push_type must be liveactivity, not {0}"
    )]
    BroadcastPushType(PushType),
    #[error("collapse_id does not apply to a broadcast (channel_id); leave it out")]
    BroadcastCollapseId,
    #[error(
        "a broadcast goes to one of app {app:?}'s bundle ids (its topics), and {bundle_id:?} is not one"
    )]
    BroadcastBundle { app: String, bundle_id: String },
    #[error(
        "topic {topic:?} is {bundle}'s topic for another push type; push type {push_type} goes to {wanted:?}"
    )]
    TopicOfAnotherPushType {
        topic: String,
        bundle: String,
        push_type: PushType,
        wanted: String,
    },
}

impl JobError {
    /// The job names an app or a topic this configuration does not know: during a
    /// rolling configuration change another replica (or this one, soon) may know it.
    /// The label of the wait (`UnknownApp`, `UnknownTopic`), else None.
    pub fn unknown_route(&self) -> Option<&'static str> {
        match self {
            JobError::UnknownApp(_) => Some("UnknownApp"),
            JobError::NoAppForTopic(_) | JobError::TopicNotServed { .. } => Some("UnknownTopic"),
            _ => None,
        }
    }
}

/// An optional field that, when given, is not `null` (the schema types each field and
/// allows no null: a `null` is an error, as it is for the schema).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The wire form. Unknown fields are errors, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(default, deserialize_with = "present")]
    device_token: Option<String>,
    #[serde(default, deserialize_with = "present")]
    channel_id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    topic: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default, deserialize_with = "present")]
    id: Option<String>,
    #[serde(default, deserialize_with = "present")]
    app: Option<String>,
    #[serde(default, deserialize_with = "present")]
    push_type: Option<String>,
    #[serde(default, deserialize_with = "present")]
    priority: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    expiration: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    collapse_id: Option<String>,
}

/// A decoded job, ready to send.
#[derive(Clone, Debug)]
pub struct Job {
    pub app: String,
    /// The producer's id (`id`, else the AMQP message id).
    pub job_id: Option<String>,
    pub notification: Notification,
    /// Unix seconds; 0 = deliver now or never.
    pub expiration: Option<u64>,
}

impl Job {
    /// Has the job's expiration passed (before sending)?
    pub fn expired(&self, now_secs: u64) -> bool {
        self.expiration.is_some_and(|e| e != 0 && e < now_secs)
    }

    pub fn apns_id(&self) -> Option<Uuid> {
        self.notification.apns_id()
    }
}

/// The AMQP side of a message that decoding looks at.
#[derive(Clone, Debug, Default)]
pub struct Envelope<'a> {
    pub content_type: Option<&'a str>,
    pub message_id: Option<&'a str>,
    /// `x-apns-id`, set by the worker on retries of jobs that had no id (read from
    /// the worker's own copies only: `control`).
    pub apns_id_header: Option<Uuid>,
}

fn path_error<E: std::fmt::Display>(prefix: &str, e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    if path == "." || path.is_empty() {
        format!("{prefix}{inner}")
    } else {
        format!("{prefix}{path}: {inner}")
    }
}

/// The exact reason a job body does not parse as a job, with the field's path.
fn explain_wire_error(body: &[u8]) -> JobError {
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, Wire<'_>>(&mut de) {
        Err(e) if e.inner().is_syntax() || e.inner().is_eof() => {
            JobError::NotJson(e.into_inner().to_string())
        }
        Err(e) => JobError::Schema(path_error("", e)),
        Ok(_) => match de.end() {
            Err(e) => JobError::NotJson(e.to_string()),
            // Cannot happen: the plain parse of the same bytes failed.
            Ok(()) => JobError::NotJson("the job does not parse".into()),
        },
    }
}

/// The apns-id of a job: its id (a UUID, or a UUIDv5 of it), else the AMQP message
/// id, else the `x-apns-id` the worker stamped on an earlier attempt.
pub fn derive_apns_id(job_id: Option<&str>, env: &Envelope<'_>) -> Option<Uuid> {
    let from = |s: &str| {
        Uuid::parse_str(s).unwrap_or_else(|_| Uuid::new_v5(&APNS_ID_NAMESPACE, s.as_bytes()))
    };
    job_id.or(env.message_id).map(from).or(env.apns_id_header)
}

/// Decode and validate one job. `body` is the message body; the payload is sliced
/// out of it without copying or re-serialising.
pub fn decode(
    body: &Bytes,
    env: &Envelope<'_>,
    apps: &AppDirectory,
    max_bytes: usize,
) -> Result<Job, JobError> {
    if body.len() > max_bytes {
        return Err(JobError::TooLarge {
            size: body.len(),
            limit: max_bytes,
        });
    }
    if let Some(ct) = env.content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(JobError::ContentType(ct.to_string()));
        }
    }
    // Plain serde first; only a job that fails is parsed again with path tracking,
    // to name the exact field in its error.
    let wire: Wire<'_> = match serde_json::from_slice(body) {
        Ok(w) => w,
        Err(_) => return Err(explain_wire_error(body)),
    };
    let raw = wire.payload.get();
    apns::payload::check(raw)?;
    if let Some(id) = &wire.id {
        if id.is_empty() || id.len() > 200 {
            return Err(JobError::BadId);
        }
    }
    let broadcast = match (&wire.device_token, &wire.channel_id) {
        (Some(_), Some(_)) => return Err(JobError::TwoTargets),
        (None, None) => return Err(JobError::NoTarget),
        (_, c) => c.is_some(),
    };
    let push_type: PushType = match &wire.push_type {
        Some(p) => p.parse()?,
        None if broadcast => PushType::Liveactivity,
        None => PushType::Alert,
    };
    if broadcast && push_type != PushType::Liveactivity {
        return Err(JobError::BroadcastPushType(push_type));
    }
    let priority = wire.priority.map(Priority::from_number).transpose()?;
    let (app, topic) = apps.resolve(wire.app.as_deref(), wire.topic.as_deref())?;
    // `com.example.app.push-type.liveactivity` is not where an alert of com.example.app
    // goes: a topic under a listed bundle id that ends in another push type's suffix
    // is refused here (a suffix the push type needs but lacks is refused by the
    // client's validation).
    if let Some((bundle, suffix)) = apps.push_type_topic(&app, &topic) {
        if Some(suffix) != push_type.topic_suffix() {
            let bundle = bundle.to_string();
            return Err(JobError::TopicOfAnotherPushType {
                wanted: format!("{bundle}{}", push_type.topic_suffix().unwrap_or("")),
                topic,
                bundle,
                push_type,
            });
        }
    }
    let job_id = wire.id.clone().or(env.message_id.map(str::to_owned));
    // Without any id the job gets a random apns-id now; retries carry it in `x-apns-id`.
    let apns_id = Some(derive_apns_id(wire.id.as_deref(), env).unwrap_or_else(Uuid::new_v4));
    let payload = body.slice_ref(raw.as_bytes());
    apns::payload::check_push_type(raw, push_type, broadcast)?;
    let notification = match wire.channel_id {
        Some(channel_id) => {
            if wire.collapse_id.is_some() {
                return Err(JobError::BroadcastCollapseId);
            }
            // A broadcast goes to the bundle id; the Live Activity topic is accepted
            // (it is what the app's device pushes use) and its suffix dropped. It must
            // be one of the app's bundle ids itself, not a topic under one: a typo would
            // reach another bundle, whose answer (no such channel) would retire a live
            // channel.
            let suffix = PushType::Liveactivity.topic_suffix().unwrap_or_default();
            let bundle_id = topic.strip_suffix(suffix).unwrap_or(&topic).to_string();
            if !apps.lists(&app, &bundle_id) {
                return Err(JobError::BroadcastBundle { app, bundle_id });
            }
            Notification::broadcast(BroadcastParts {
                channel_id,
                bundle_id,
                priority,
                expiration: wire.expiration,
                request_id: apns_id,
                payload,
            })?
        }
        None => Notification::new(NotificationParts {
            device_token: wire.device_token.unwrap_or_default(),
            topic,
            push_type,
            priority,
            expiration: wire.expiration,
            collapse_id: wire.collapse_id,
            apns_id,
            payload,
        })?,
    };
    Ok(Job {
        app,
        job_id,
        notification,
        expiration: wire.expiration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";

    fn apps() -> AppDirectory {
        AppDirectory::new(vec![
            AppEntry {
                name: "shop".into(),
                topics: vec!["com.example.shop".into()],
                default_topic: Some("com.example.shop".into()),
                key_topics: None,
            },
            AppEntry {
                name: "bank".into(),
                topics: vec!["com.example.bank".into()],
                default_topic: None,
                key_topics: Some(vec![vec!["com.example.bank".into()]]),
            },
        ])
    }

    fn dec(json: &str) -> Result<Job, JobError> {
        decode(
            &Bytes::from(json.to_string()),
            &Envelope::default(),
            &apps(),
            65536,
        )
    }

    #[test]
    fn decodes_a_full_job_and_keeps_the_payload_bytes() {
        let json = format!(
            r#"{{"device_token":"{TOKEN}","topic":"com.example.bank","app":"bank","id":"order-42",
               "payload":{{"aps":{{"alert":{{"title":"Hi","loc-args":["a"]}},"badge":3,"sound":{{"critical":1,"name":"x","volume":0.5}}}},"custom":[1,2]}},
               "push_type":"alert","priority":5,"expiration":0,"collapse_id":"c1"}}"#
        );
        let job = dec(&json).unwrap();
        assert_eq!(job.app, "bank");
        assert_eq!(job.job_id.as_deref(), Some("order-42"));
        assert_eq!(job.notification.topic(), "com.example.bank");
        let p = std::str::from_utf8(job.notification.payload()).unwrap();
        assert!(
            p.starts_with(r#"{"aps":{"alert""#) && p.ends_with(r#""custom":[1,2]}"#),
            "{p}"
        );
        assert_eq!(
            job.apns_id(),
            Some(Uuid::new_v5(&APNS_ID_NAMESPACE, b"order-42")),
            "apns-id derived from the job id, the same on every attempt"
        );
        assert!(
            !job.expired(u64::MAX),
            "0 means deliver now or never, not expired"
        );
    }

    #[test]
    fn resolves_apps_by_name_topic_and_default() {
        let j = dec(&format!(r#"{{"device_token":"{TOKEN}","topic":"com.example.shop.voip","push_type":"voip","payload":{{}}}}"#)).unwrap();
        assert_eq!(j.app, "shop");
        let j = dec(&format!(
            r#"{{"device_token":"{TOKEN}","app":"shop","payload":{{}}}}"#
        ))
        .unwrap();
        assert_eq!(j.notification.topic(), "com.example.shop", "default topic");
    }

    #[test]
    fn every_invalid_job_has_its_exact_reason() {
        let t = TOKEN;
        let rows: Vec<(String, &str)> = vec![
            ("not json".into(), "not valid JSON"),
            (r#"{"device_token":"#.into(), "not valid JSON"),
            ("[1,2]".into(), "invalid type"),
            (
                format!(r#"{{"device_token":"{t}","payload":{{}},"extra":1}}"#),
                "unknown field `extra`",
            ),
            (
                format!(r#"{{"device_token":"{t}","topic":"com.example.shop"}}"#),
                "missing field `payload`",
            ),
            (
                r#"{"topic":"com.example.shop","payload":{}}"#.to_string(),
                "the job needs device_token (one device) or channel_id (a Live Activity broadcast)",
            ),
            (
                format!(r#"{{"device_token":"{t}","topic":"com.example.shop","payload":[]}}"#),
                "payload must be a JSON object",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"aps":{{"badge":"3"}}}}}}"#
                ),
                "payload.aps.badge: invalid type: string",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"aps":{{"interruption-level":"loud"}}}}}}"#
                ),
                "payload.aps.interruption-level: unknown variant `loud`",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"aps":{{"content-available":2}}}}}}"#
                ),
                "must be 1",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","priority":"10","payload":{{}}}}"#
                ),
                "priority: invalid type",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","priority":7,"payload":{{}}}}"#
                ),
                "priority 7 is not one of 10, 5, 1",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","push_type":"loud","payload":{{}}}}"#
                ),
                "push_type \"loud\"",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.push-type.liveactivity","push_type":"liveactivity","payload":{{"aps":{{"timestamp":1700000000}}}}}}"#
                ),
                "payload.aps.event is required for push type liveactivity",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.push-type.liveactivity","push_type":"liveactivity","payload":{{"aps":{{"event":"start","timestamp":1700000000,"content-state":{{}},"attributes":{{}}}}}}}}"#
                ),
                "payload.aps.attributes-type is required for event start",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.push-type.liveactivity","push_type":"liveactivity","payload":{{"aps":{{"event":"update","timestamp":1700000000000,"content-state":{{}}}}}}}}"#
                ),
                "payload.aps.timestamp is 1700000000000, which is milliseconds",
            ),
            (
                r#"{"channel_id":"dHN0LXNyY2gtY2hubA==","topic":"com.example.shop","payload":{"aps":{"event":"start","timestamp":1,"content-state":{},"attributes-type":"A","attributes":{}}}}"#.to_string(),
                "a broadcast cannot start a Live Activity",
            ),
            (
                format!(
                    r#"{{"channel_id":"dHN0LXNyY2gtY2hubA==","device_token":"{t}","topic":"com.example.shop","payload":{{}}}}"#
                ),
                "both device_token and channel_id",
            ),
            (
                r#"{"channel_id":"not base64!","topic":"com.example.shop","payload":{"aps":{"event":"end","timestamp":1}}}"#.to_string(),
                "channel_id must be base64",
            ),
            (
                r#"{"channel_id":"dHN0LXNyY2gtY2hubA==","push_type":"alert","topic":"com.example.shop","payload":{}}"#.to_string(),
                "push_type must be liveactivity, not alert",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.push-type.liveactivity","payload":{{"aps":{{"alert":"x"}}}}}}"#
                ),
                "topic \"com.example.shop.push-type.liveactivity\" is com.example.shop's topic for another push type; push type alert goes to \"com.example.shop\"",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.voip","push_type":"liveactivity","payload":{{"aps":{{"event":"end","timestamp":1}}}}}}"#
                ),
                "push type liveactivity goes to \"com.example.shop.push-type.liveactivity\"",
            ),
            (
                r#"{"channel_id":"dHN0LXNyY2gtY2hubA==","topic":"com.example.shop.foo","payload":{"aps":{"event":"end","timestamp":1}}}"#.to_string(),
                "a broadcast goes to one of app \"shop\"'s bundle ids (its topics), and \"com.example.shop.foo\" is not one",
            ),
            (
                r#"{"channel_id":"dHN0LXNyY2gtY2hubA","topic":"com.example.shop","payload":{"aps":{"event":"end","timestamp":1}}}"#.to_string(),
                "channel_id is not padded base64: 18 characters, and padded base64 comes in fours",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop.watchkitapp.push-type.liveactivity","payload":{{"aps":{{"alert":"x"}}}}}}"#
                ),
                "is com.example.shop.watchkitapp's topic for another push type; push type alert goes to \"com.example.shop.watchkitapp\"",
            ),
            (
                format!(r#"{{"device_token":"{t}","topic":null,"payload":{{}}}}"#),
                "topic: invalid type: null, expected a string",
            ),
            (
                format!(r#"{{"device_token":"{t}","app":"nope","payload":{{}}}}"#),
                "no app named \"nope\"",
            ),
            (
                format!(r#"{{"device_token":"{t}","topic":"com.other","payload":{{}}}}"#),
                "no configured app sends to topic \"com.other\"",
            ),
            (
                format!(r#"{{"device_token":"{t}","app":"bank","payload":{{}}}}"#),
                "no topic and app \"bank\"",
            ),
            (
                format!(r#"{{"device_token":"{t}","payload":{{}}}}"#),
                "neither topic nor app",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","app":"bank","topic":"com.example.shop","payload":{{}}}}"#
                ),
                "does not send to topic",
            ),
            (
                format!(
                    r#"{{"device_token":"zz{}","topic":"com.example.shop","payload":{{}}}}"#,
                    &t[2..]
                ),
                "hexadecimal",
            ),
            (
                r#"{"device_token":"ab\r\ncd","topic":"com.example.shop","payload":{}}"#
                    .to_string(),
                "hexadecimal",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","collapse_id":"a\r\nX-Evil: 1","payload":{{}}}}"#
                ),
                "collapse_id contains control",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop\r\nx: y","payload":{{}}}}"#
                ),
                "no configured app",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","app":"shop","topic":"com.example.shop\r\nx","payload":{{}}}}"#
                ),
                "does not send to topic",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","id":"","payload":{{}}}}"#
                ),
                "id must be",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"aps":{{"alert":"{}"}}}}}}"#,
                    "x".repeat(5000)
                ),
                "APNs accepts at most 4096",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{}}}"#,
                    "[".repeat(200) + &"]".repeat(200)
                ),
                "payload must be a JSON object",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"a":{}}}}}"#,
                    "[".repeat(200) + &"]".repeat(200)
                ),
                "nests deeper than 32",
            ),
            (
                format!(
                    r#"{{"device_token":"{t}","topic":"com.example.shop","payload":{{"a":"[[[[{}"}}}}"#,
                    "[".repeat(100)
                ),
                "__accepted__",
            ),
        ];
        for (json, want) in rows {
            if want == "__accepted__" {
                assert!(
                    dec(&json).is_ok(),
                    "brackets inside strings do not nest: {json:.80}"
                );
                continue;
            }
            let e = dec(&json)
                .err()
                .unwrap_or_else(|| panic!("accepted: {json}"));
            assert!(
                e.to_string().contains(want),
                "{json:.120}\n  got: {e}\n want: {want}"
            );
        }
    }

    #[test]
    fn size_content_type_and_utf8() {
        let big = Bytes::from(vec![b' '; 70_000]);
        assert!(matches!(
            decode(&big, &Envelope::default(), &apps(), 65536),
            Err(JobError::TooLarge { .. })
        ));
        let body = Bytes::from(format!(
            r#"{{"device_token":"{TOKEN}","app":"shop","payload":{{}}}}"#
        ));
        let env = Envelope {
            content_type: Some("text/plain"),
            ..Envelope::default()
        };
        assert!(matches!(
            decode(&body, &env, &apps(), 65536),
            Err(JobError::ContentType(_))
        ));
        let env = Envelope {
            content_type: Some("application/json; charset=utf-8"),
            ..Envelope::default()
        };
        assert!(decode(&body, &env, &apps(), 65536).is_ok());
        let mut bad = body.to_vec();
        bad.insert(20, 0xff);
        assert!(matches!(
            decode(&Bytes::from(bad), &Envelope::default(), &apps(), 65536),
            Err(JobError::NotJson(_))
        ));
    }

    #[test]
    fn apns_id_sources_in_order() {
        let env = Envelope {
            message_id: Some("m-1"),
            apns_id_header: Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").ok(),
            ..Envelope::default()
        };
        let u = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(
            derive_apns_id(Some(&u.to_string()), &env),
            Some(u),
            "a UUID id is used as is"
        );
        assert_eq!(
            derive_apns_id(None, &env),
            Some(Uuid::new_v5(&APNS_ID_NAMESPACE, b"m-1"))
        );
        let env2 = Envelope {
            apns_id_header: Some(u),
            ..Envelope::default()
        };
        assert_eq!(derive_apns_id(None, &env2), Some(u));
        assert_eq!(derive_apns_id(None, &Envelope::default()), None);
    }

    #[test]
    fn expiration() {
        let j = dec(&format!(
            r#"{{"device_token":"{TOKEN}","app":"shop","expiration":1000,"payload":{{}}}}"#
        ))
        .unwrap();
        assert!(j.expired(1001));
        assert!(!j.expired(1000));
    }
}

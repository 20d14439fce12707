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
    #[error(
        "the job needs device_token (one device), device_tokens (a campaign) or channel_id (a Live Activity broadcast)"
    )]
    NoTarget,
    #[error("the job has {0}; give one of device_token, device_tokens and channel_id")]
    TwoTargets(&'static str),
    #[error("device_tokens holds {count} tokens; a job holds 1 to {max}")]
    TokenCount { count: usize, max: usize },
    #[error("none of the {count} device_tokens is a device token: {first}")]
    NoValidToken {
        count: usize,
        first: ValidationError,
    },
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
    device_tokens: Option<Vec<String>>,
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
    /// The notification (of a fan-out job: to its first valid token, under the job's
    /// apns-id; each token's own is [`FanOut::notification`]).
    pub notification: Notification,
    /// Unix seconds; 0 = deliver now or never.
    pub expiration: Option<u64>,
    /// A fan-out job (`device_tokens`): its tokens.
    pub fanout: Option<FanOut>,
}

/// The tokens of a fan-out job: each valid one once, in the order given, and the
/// invalid ones with why (they are dead-lettered; the others are sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FanOut {
    pub tokens: Vec<String>,
    pub refused: Vec<(String, ValidationError)>,
    /// Tokens given more than once, in any case of their hex digits (each is sent once).
    pub repeats: usize,
}

impl FanOut {
    /// The apns-id of one token's notification: a UUIDv5 of the token under the job's
    /// apns-id, so the same on every attempt of the job.
    pub fn apns_id(job_apns_id: Uuid, token: &str) -> Uuid {
        // `Uuid::new_v5(&job_apns_id, token)`, with ring's SHA-1 (one per notification:
        // uuid's portable SHA-1 was 9% of a fan-out drain's instructions).
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(job_apns_id.as_bytes());
        ctx.update(token.as_bytes());
        let digest = ctx.finish();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        uuid::Builder::from_sha1_bytes(bytes).into_uuid()
    }

    /// One token's notification: the job's, to `token`, under the token's apns-id.
    pub fn notification(job: &Job, token: &str) -> Result<Notification, ValidationError> {
        let id = job.apns_id().map(|j| FanOut::apns_id(j, token));
        job.notification.for_device(token, id)
    }
}

/// What decoding accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Larger bodies are refused unread.
    pub max_bytes: usize,
    /// Most tokens in a fan-out job's `device_tokens`.
    pub max_tokens: usize,
}

/// The job's body with `device_tokens` replaced by `tokens`: a fan-out job's retry,
/// park or dead letter for some of its tokens. The other fields are kept byte for byte
/// (the payload too); their order may change.
pub fn with_tokens(body: &[u8], tokens: &[&str]) -> Result<Vec<u8>, serde_json::Error> {
    let fields: std::collections::BTreeMap<String, &RawValue> = serde_json::from_slice(body)?;
    let mut out = Vec::with_capacity(body.len());
    out.push(b'{');
    let mut first = true;
    let mut wrote_tokens = false;
    for (k, v) in &fields {
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        if k == "device_tokens" {
            serde_json::to_writer(&mut out, tokens)?;
            wrote_tokens = true;
        } else {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    if !wrote_tokens {
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(b"\"device_tokens\":");
        serde_json::to_writer(&mut out, tokens)?;
    }
    out.push(b'}');
    Ok(out)
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

/// The default of `worker.max_tokens_per_job`.
pub const DEFAULT_MAX_TOKENS: usize = 1000;

/// Decode and validate one job, with at most [`DEFAULT_MAX_TOKENS`] tokens.
pub fn decode(
    body: &Bytes,
    env: &Envelope<'_>,
    apps: &AppDirectory,
    max_bytes: usize,
) -> Result<Job, JobError> {
    let limits = Limits {
        max_bytes,
        max_tokens: DEFAULT_MAX_TOKENS,
    };
    decode_limited(body, env, apps, limits)
}

/// The tokens of `device_tokens`, checked: 1 to `max`, each valid one once.
fn fan_out(given: Vec<String>, max: usize) -> Result<FanOut, JobError> {
    if given.is_empty() || given.len() > max {
        return Err(JobError::TokenCount {
            count: given.len(),
            max,
        });
    }
    let count = given.len();
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut out = FanOut {
        tokens: Vec::with_capacity(count),
        refused: Vec::new(),
        repeats: 0,
    };
    for t in given {
        // Hex digits in either case name the same token.
        if !seen.insert(t.to_ascii_lowercase()) {
            out.repeats += 1;
            continue;
        }
        match apns::validate_device_token(&t) {
            Ok(()) => out.tokens.push(t),
            Err(e) => out.refused.push((t, e)),
        }
    }
    if out.tokens.is_empty() {
        let first = out.refused.swap_remove(0).1;
        return Err(JobError::NoValidToken { count, first });
    }
    Ok(out)
}

/// What a job that could not be decoded still tells, for its receipt and log line:
/// its `id`, `device_token` and `channel_id` when the body is a JSON object holding
/// them as strings (each cut to 256 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub id: Option<String>,
    pub device_token: Option<String>,
    pub channel_id: Option<String>,
}

/// [`Hints`] of a body (never an error: what cannot be read is absent).
pub fn hints(body: &[u8]) -> Hints {
    let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) else {
        return Hints::default();
    };
    let text = |k: &str| {
        map.get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(|s| crate::settle::truncate(s, 256).to_string())
    };
    Hints {
        id: text("id"),
        device_token: text("device_token"),
        channel_id: text("channel_id"),
    }
}

/// Decode and validate one job. `body` is the message body; the payload is sliced
/// out of it without copying or re-serialising.
pub fn decode_limited(
    body: &Bytes,
    env: &Envelope<'_>,
    apps: &AppDirectory,
    limits: Limits,
) -> Result<Job, JobError> {
    let max_bytes = limits.max_bytes;
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
    let broadcast = match (&wire.device_token, &wire.device_tokens, &wire.channel_id) {
        (Some(_), Some(_), _) => {
            return Err(JobError::TwoTargets("both device_token and device_tokens"));
        }
        (Some(_), _, Some(_)) => {
            return Err(JobError::TwoTargets("both device_token and channel_id"));
        }
        (_, Some(_), Some(_)) => {
            return Err(JobError::TwoTargets("both device_tokens and channel_id"));
        }
        (None, None, None) => return Err(JobError::NoTarget),
        (_, _, c) => c.is_some(),
    };
    let fanout = match wire.device_tokens {
        Some(given) => Some(fan_out(given, limits.max_tokens)?),
        None => None,
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
            device_token: match &fanout {
                Some(f) => f.tokens[0].clone(),
                None => wire.device_token.unwrap_or_default(),
            },
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
        fanout,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hints_of_bodies_that_do_not_decode() {
        let h = super::hints(br#"{"id": "j1", "device_token": "zz12", "color": "red"}"#);
        assert_eq!(h.id.as_deref(), Some("j1"));
        assert_eq!(h.device_token.as_deref(), Some("zz12"));
        assert_eq!(h.channel_id, None);
        assert_eq!(super::hints(b"{not json"), super::Hints::default());
        let h = super::hints(br#"{"id": 7, "device_token": ["a"]}"#);
        assert_eq!((h.id, h.device_token), (None, None));
        let long = format!(r#"{{"device_token": "{}"}}"#, "a".repeat(1000));
        assert_eq!(
            super::hints(long.as_bytes()).device_token.unwrap().len(),
            256
        );
    }

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
                "the job needs device_token (one device), device_tokens (a campaign) or channel_id (a Live Activity broadcast)",
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
                "the job has both device_token and channel_id; give one of device_token, device_tokens and channel_id",
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
    fn fan_out_jobs_send_each_valid_token_once() {
        let other = "ab".repeat(32);
        let json = format!(
            r#"{{"id":"c-1","device_tokens":["{TOKEN}","zz","{other}","{TOKEN}","abc","{}"],"app":"shop","payload":{{"aps":{{"alert":"x"}}}}}}"#,
            other.to_ascii_uppercase()
        );
        let job = dec(&json).unwrap();
        let f = job.fanout.clone().unwrap();
        assert_eq!(f.tokens, vec![TOKEN.to_string(), other.clone()]);
        assert_eq!(f.repeats, 2, "the same token in upper case is a repeat");
        let refused: Vec<_> = f.refused.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(refused, vec!["zz", "abc"]);
        assert!(matches!(
            f.refused[1].1,
            ValidationError::DeviceTokenOddLength(3)
        ));
        let job_id = Uuid::new_v5(&APNS_ID_NAMESPACE, b"c-1");
        let n = FanOut::notification(&job, &other).unwrap();
        assert_eq!(n.device_token(), Some(other.as_str()));
        assert_eq!(n.apns_id(), Some(Uuid::new_v5(&job_id, other.as_bytes())));
        for t in [TOKEN, other.as_str(), "", "ab"] {
            assert_eq!(
                FanOut::apns_id(job_id, t),
                Uuid::new_v5(&job_id, t.as_bytes()),
                "exactly the UUIDv5"
            );
        }
        assert_ne!(
            FanOut::apns_id(job_id, TOKEN),
            FanOut::apns_id(job_id, &other),
            "one apns-id per token"
        );

        let too_many = format!(
            r#"{{"device_tokens":{},"app":"shop","payload":{{}}}}"#,
            serde_json::to_string(&vec![TOKEN; DEFAULT_MAX_TOKENS + 1]).unwrap()
        );
        let limits = Limits {
            max_bytes: 1 << 20,
            max_tokens: DEFAULT_MAX_TOKENS,
        };
        let body = Bytes::from(too_many);
        let e = decode_limited(&body, &Envelope::default(), &apps(), limits).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("device_tokens holds 1001 tokens; a job holds 1 to {DEFAULT_MAX_TOKENS}")
        );
        for (json, want) in [
            (
                r#"{"device_tokens":[],"app":"shop","payload":{}}"#.to_string(),
                "device_tokens holds 0 tokens; a job holds 1 to 1000".to_string(),
            ),
            (
                r#"{"device_tokens":["zz","0"],"app":"shop","payload":{}}"#.to_string(),
                "none of the 2 device_tokens is a device token: device_token must be hexadecimal"
                    .to_string(),
            ),
            (
                format!(r#"{{"device_token":"{TOKEN}","device_tokens":["{TOKEN}"],"app":"shop","payload":{{}}}}"#),
                "the job has both device_token and device_tokens; give one of device_token, device_tokens and channel_id".to_string(),
            ),
            (
                format!(r#"{{"channel_id":"dHN0LXNyY2gtY2hubA==","device_tokens":["{TOKEN}"],"app":"shop","payload":{{}}}}"#),
                "the job has both device_tokens and channel_id".to_string(),
            ),
            (
                r#"{"device_tokens":null,"app":"shop","payload":{}}"#.to_string(),
                "device_tokens: invalid type: null".to_string(),
            ),
        ] {
            let e = dec(&json).unwrap_err().to_string();
            assert!(e.starts_with(&want), "{json}\n got: {e}\nwant: {want}");
        }
    }

    #[test]
    fn with_tokens_keeps_every_other_field_byte_for_byte() {
        let body = br#"{"id":"c-1","device_tokens":["aa","bb","cc"],"payload":{"aps":{"alert":"x"},"n":1.50},"topic":"t"}"#;
        let out = with_tokens(body, &["bb"]).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""device_tokens":["bb"]"#), "{text}");
        assert!(
            text.contains(r#""payload":{"aps":{"alert":"x"},"n":1.50}"#),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], "c-1");
        assert_eq!(v["topic"], "t");
        assert!(with_tokens(b"[1]", &["bb"]).is_err());
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

//! Jobs: decoding one AMQP message into a validated notification, and deciding which
//! app sends it. Pure: bytes and properties in, a [`Job`] or the exact reason out.
//!
//! The JSON contract is `schemas/notification-job.schema.json`; the tests check that
//! this decoder and the schema agree on a corpus of good and bad jobs.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::apns::notification::{
    Notification, NotificationParts, Priority, PushType, ValidationError,
};
use crate::config::{AppConfig, AuthSpec, topic_matches};

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
    #[error("payload must be a JSON object")]
    PayloadNotObject,
    #[error("payload nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
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
}

/// Deepest nesting of objects and arrays accepted in a payload.
pub const MAX_DEPTH: usize = 32;

/// Where a payload's top-level `aps` value is, as found by [`scan_payload`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApsAt {
    Absent,
    /// Byte range of the value.
    At(usize, usize),
    /// A top-level key has escapes (it may spell `aps`), or `aps` appears twice: only
    /// a full parse can tell.
    Unsure,
}

/// What one pass over a payload finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PayloadScan {
    /// Deepest nesting of objects and arrays.
    depth: usize,
    aps: ApsAt,
}

/// One pass over a JSON object that is already known to be valid: its nesting depth,
/// and where its top-level `aps` value is, so that only `aps` is parsed again. Strings
/// are skipped with `memchr` (payload bytes are mostly string content).
fn scan_payload(json: &str) -> PayloadScan {
    let b = json.as_bytes();
    let (mut d, mut max, mut i) = (0usize, 0usize, 0usize);
    let (mut aps, mut unsure) = (ApsAt::Absent, false);
    // At depth 1: is the next string a key; was the last key `aps`; where its value began.
    let (mut expect_key, mut key_is_aps, mut value_from) = (false, false, None::<usize>);
    let end_value = |at: usize, value_from: &mut Option<usize>, aps: &mut ApsAt| {
        if let Some(from) = value_from.take() {
            let v = &json[from..at];
            let from = from + (v.len() - v.trim_start().len());
            let to = at - (v.len() - v.trim_end().len());
            *aps = match *aps {
                ApsAt::Absent => ApsAt::At(from, to),
                _ => ApsAt::Unsure,
            };
        }
    };
    while let Some(&c) = b.get(i) {
        match c {
            b'"' => {
                let open = i;
                let mut escaped = false;
                i += 1;
                // To the closing quote, stepping over escapes (`\"`, `\\`).
                loop {
                    let Some(k) = b
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return PayloadScan {
                            depth: max,
                            aps: ApsAt::Unsure,
                        };
                    };
                    i += k;
                    if b[i] == b'"' {
                        break;
                    }
                    escaped = true;
                    i += 2;
                }
                if d == 1 && expect_key {
                    expect_key = false;
                    key_is_aps = !escaped && b[open + 1..i] == *b"aps";
                    unsure |= escaped;
                }
            }
            b':' if d == 1 && key_is_aps => {
                key_is_aps = false;
                value_from = Some(i + 1);
            }
            b',' if d == 1 => {
                end_value(i, &mut value_from, &mut aps);
                expect_key = true;
            }
            b'{' | b'[' => {
                d += 1;
                max = max.max(d);
                expect_key = d == 1;
            }
            b'}' | b']' => {
                if d == 1 {
                    end_value(i, &mut value_from, &mut aps);
                }
                d = d.saturating_sub(1);
            }
            _ => {}
        }
        i += 1;
    }
    PayloadScan {
        depth: max,
        aps: if unsure { ApsAt::Unsure } else { aps },
    }
}

/// Does the payload's `aps` have the types Apple documents? Parses only `aps` when the
/// scan found it; the whole payload when the scan could not tell.
fn aps_ok(raw: &str, at: ApsAt) -> bool {
    match at {
        ApsAt::Absent => true,
        ApsAt::At(from, to) => serde_json::from_str::<Option<Aps>>(&raw[from..to]).is_ok(),
        ApsAt::Unsure => serde_json::from_str::<PayloadCheck>(raw).is_ok(),
    }
}

/// The wire form. Unknown fields are errors, not ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    device_token: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    push_type: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    expiration: Option<u64>,
    #[serde(default)]
    collapse_id: Option<String>,
}

/// The typed part of a payload: `aps`. Keys outside `aps` are the app's own.
///
/// The check types below keep nothing: strings, lists and dictionaries are checked
/// for their JSON type and dropped, so checking a payload allocates nothing.
#[derive(Deserialize)]
#[allow(dead_code)]
struct PayloadCheck {
    #[serde(default)]
    aps: Option<Aps>,
}

/// Apple's `aps` dictionary. Unknown keys inside `aps` are allowed: Apple adds keys,
/// and refusing them would break producers that use a new one before we know it.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct Aps {
    alert: Option<StrOrDict<AlertDict>>,
    badge: Option<u32>,
    sound: Option<StrOrDict<CriticalSound>>,
    thread_id: Option<Str>,
    category: Option<Str>,
    content_available: Option<OneFlag>,
    mutable_content: Option<OneFlag>,
    interruption_level: Option<InterruptionLevel>,
    relevance_score: Option<UnitInterval>,
    filter_criteria: Option<Str>,
    target_content_id: Option<Str>,
    timestamp: Option<u64>,
    event: Option<LiveActivityEvent>,
    content_state: Option<Dict>,
    stale_date: Option<u64>,
    dismissal_date: Option<u64>,
    attributes_type: Option<Str>,
    attributes: Option<Dict>,
}

/// A JSON string, checked and dropped.
struct Str;

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Str, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Str;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Str, E> {
                Ok(Str)
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object of any content, checked and dropped.
struct Dict;

impl<'de> Deserialize<'de> for Dict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dict, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dict;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dict, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Dict)
            }
        }
        d.deserialize_map(V)
    }
}

/// `alert` and `sound`: a string, or a dictionary of `T`'s keys.
#[allow(dead_code)]
enum StrOrDict<T> {
    Str,
    Dict(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for StrOrDict<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StrOrDict<T>, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = StrOrDict<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a dictionary")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<StrOrDict<T>, E> {
                Ok(StrOrDict::Str)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StrOrDict<T>, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map)).map(StrOrDict::Dict)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
struct AlertDict {
    title: Option<Str>,
    subtitle: Option<Str>,
    body: Option<Str>,
    launch_image: Option<Str>,
    title_loc_key: Option<Str>,
    title_loc_args: Option<Vec<Str>>,
    subtitle_loc_key: Option<Str>,
    subtitle_loc_args: Option<Vec<Str>>,
    loc_key: Option<Str>,
    loc_args: Option<Vec<Str>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct CriticalSound {
    critical: Option<OneFlag>,
    name: Option<Str>,
    volume: Option<UnitInterval>,
}

/// `content-available`, `mutable-content` and `critical` take the number 1.
#[derive(Deserialize)]
#[serde(try_from = "i64")]
struct OneFlag;

impl TryFrom<i64> for OneFlag {
    type Error = String;
    fn try_from(v: i64) -> Result<Self, String> {
        if v == 1 || v == 0 {
            Ok(OneFlag)
        } else {
            Err(format!("must be 1 (or 0), not {v}"))
        }
    }
}

/// `relevance-score` and a critical sound's `volume`: a number from 0 to 1.
#[derive(Deserialize)]
#[serde(try_from = "f64")]
struct UnitInterval;

impl TryFrom<f64> for UnitInterval {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&v) {
            Ok(UnitInterval)
        } else {
            Err(format!("must be from 0 to 1, not {v}"))
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum InterruptionLevel {
    Passive,
    Active,
    TimeSensitive,
    Critical,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum LiveActivityEvent {
    Start,
    Update,
    End,
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

/// What the decoder needs to know of each app.
#[derive(Clone, Debug)]
pub struct AppEntry {
    pub name: String,
    pub topics: Vec<String>,
    pub default_topic: Option<String>,
    /// Certificate auth or a team-scoped key: any topic the app lists.
    pub any_topic: bool,
    /// Topics of topic-specific keys.
    pub key_topics: Vec<String>,
}

impl AppEntry {
    fn sends_to(&self, topic: &str) -> bool {
        let listed = self.topics.is_empty() || self.topics.iter().any(|b| topic_matches(b, topic));
        let keyed = self.any_topic || self.key_topics.iter().any(|b| topic_matches(b, topic));
        listed && keyed
    }
}

/// The apps a job may name, in a stable order.
#[derive(Clone, Debug, Default)]
pub struct AppDirectory {
    apps: Vec<AppEntry>,
    /// Accept any app name and any topic (for checking jobs without a config).
    permissive: bool,
}

impl AppDirectory {
    pub fn from_config(apps: &BTreeMap<String, AppConfig>) -> AppDirectory {
        let apps = apps
            .iter()
            .map(|(name, a)| {
                let (any_topic, key_topics) = match a.auth(name) {
                    Ok(AuthSpec::Token { keys, .. }) => (
                        keys.iter().any(|k| k.topics.is_empty()),
                        keys.iter().flat_map(|k| k.topics.clone()).collect(),
                    ),
                    _ => (true, Vec::new()),
                };
                AppEntry {
                    name: name.clone(),
                    topics: a.topics.clone(),
                    default_topic: a.default_topic().map(str::to_owned),
                    any_topic,
                    key_topics,
                }
            })
            .collect();
        AppDirectory {
            apps,
            permissive: false,
        }
    }

    pub fn new(apps: Vec<AppEntry>) -> AppDirectory {
        AppDirectory {
            apps,
            permissive: false,
        }
    }

    /// A directory that accepts any app and topic: checks a job's form only.
    pub fn permissive() -> AppDirectory {
        AppDirectory {
            apps: Vec::new(),
            permissive: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// The app and topic of a job.
    fn resolve(
        &self,
        app: Option<&str>,
        topic: Option<&str>,
    ) -> Result<(String, String), JobError> {
        if self.permissive {
            let app = app.unwrap_or("*").to_string();
            let topic = topic.ok_or_else(|| JobError::NoTopic(app.clone()))?;
            return Ok((app, topic.to_string()));
        }
        let entry = match (app, topic) {
            (Some(name), _) => self
                .apps
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| JobError::UnknownApp(name.to_string()))?,
            (None, Some(t)) => self
                .apps
                .iter()
                .find(|a| a.topics.iter().any(|b| topic_matches(b, t)) && a.sends_to(t))
                .or_else(|| (self.apps.len() == 1).then(|| &self.apps[0]))
                .ok_or_else(|| JobError::NoAppForTopic(t.to_string()))?,
            (None, None) if self.apps.len() == 1 => &self.apps[0],
            (None, None) => return Err(JobError::Ambiguous),
        };
        let topic = match topic {
            Some(t) => t.to_string(),
            None => entry
                .default_topic
                .clone()
                .ok_or_else(|| JobError::NoTopic(entry.name.clone()))?,
        };
        if !entry.sends_to(&topic) {
            return Err(JobError::TopicNotServed {
                app: entry.name.clone(),
                topic,
            });
        }
        Ok((entry.name.clone(), topic))
    }
}

/// The AMQP side of a message that decoding looks at.
#[derive(Clone, Debug, Default)]
pub struct Envelope<'a> {
    pub content_type: Option<&'a str>,
    pub message_id: Option<&'a str>,
    /// `x-apns-id`, set by the worker on retries of jobs that had no id.
    pub apns_id_header: Option<&'a str>,
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
    job_id
        .or(env.message_id)
        .map(from)
        .or_else(|| env.apns_id_header.and_then(|s| Uuid::parse_str(s).ok()))
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
    if !raw.trim_start().starts_with('{') {
        return Err(JobError::PayloadNotObject);
    }
    let scan = scan_payload(raw);
    if scan.depth > MAX_DEPTH {
        return Err(JobError::TooDeep);
    }
    if !aps_ok(raw, scan.aps) {
        // The whole payload again, with path tracking, to name the field. It is the
        // authority: should it accept what the quick check refused, the job goes on.
        let mut pde = serde_json::Deserializer::from_str(raw);
        let checked: Result<PayloadCheck, _> = serde_path_to_error::deserialize(&mut pde);
        if let Err(e) = checked {
            return Err(JobError::Schema(path_error("payload.", e)));
        }
        tracing::warn!("the quick aps check refused a payload that the full parse accepts");
    }
    if let Some(id) = &wire.id {
        if id.is_empty() || id.len() > 200 {
            return Err(JobError::BadId);
        }
    }
    let push_type: PushType = match &wire.push_type {
        Some(p) => p.parse()?,
        None => PushType::Alert,
    };
    let priority = wire.priority.map(Priority::from_number).transpose()?;
    let (app, topic) = apps.resolve(wire.app.as_deref(), wire.topic.as_deref())?;
    let job_id = wire.id.clone().or(env.message_id.map(str::to_owned));
    // Without any id the job gets a random apns-id now; retries carry it in `x-apns-id`.
    let apns_id = Some(derive_apns_id(wire.id.as_deref(), env).unwrap_or_else(Uuid::new_v4));
    let payload = body.slice_ref(raw.as_bytes());
    let notification = Notification::new(NotificationParts {
        device_token: wire.device_token,
        topic,
        push_type,
        priority,
        expiration: wire.expiration,
        collapse_id: wire.collapse_id,
        apns_id,
        payload,
    })?;
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
                any_topic: true,
                key_topics: vec![],
            },
            AppEntry {
                name: "bank".into(),
                topics: vec!["com.example.bank".into()],
                default_topic: None,
                any_topic: false,
                key_topics: vec!["com.example.bank".into()],
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
                "missing field `device_token`",
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
            apns_id_header: Some("123e4567-e89b-12d3-a456-426614174000"),
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
            apns_id_header: Some("123e4567-e89b-12d3-a456-426614174000"),
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

    /// The byte-by-byte depth scan the memchr one replaced: the reference.
    fn depth_bytewise(json: &str) -> usize {
        let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
        for b in json.bytes() {
            if in_str {
                match (esc, b) {
                    (true, _) => esc = false,
                    (false, b'\\') => esc = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    d += 1;
                    max = max.max(d);
                }
                b'}' | b']' => d = d.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        let depth = |s: &str| scan_payload(s).depth;
        assert_eq!(depth(r#"{"a":[{"b":"[[{{\"}}"}]}"#), 3);
        assert_eq!(depth(r#"{"a\\":{"b":1}}"#), 2);
        assert_eq!(depth("{}"), 1);
    }

    #[test]
    fn the_scan_finds_the_top_level_aps_value_only() {
        let at = |s: &str| match scan_payload(s).aps {
            ApsAt::At(from, to) => Some(s[from..to].to_string()),
            _ => None,
        };
        let j = r#"{"x":"a,}b:\"aps\"", "aps" : {"alert":"hi"} ,"y":[1,{"aps":2}]}"#;
        assert_eq!(at(j).as_deref(), Some(r#"{"alert":"hi"}"#));
        assert_eq!(at(r#"{"aps":null}"#).as_deref(), Some("null"));
        assert_eq!(at(r#"{"z":1,"aps":"x"}"#).as_deref(), Some(r#""x""#));
        assert_eq!(scan_payload(r#"{"x":{"aps":{}}}"#).aps, ApsAt::Absent);
        assert_eq!(scan_payload(r#"{"apsx":1,"ap":2}"#).aps, ApsAt::Absent);
        assert_eq!(
            scan_payload(r#"{"aps":{},"aps":{}}"#).aps,
            ApsAt::Unsure,
            "a duplicate is for serde to refuse"
        );
        assert_eq!(
            scan_payload(r#"{"\u0061ps":{"alert":5}}"#).aps,
            ApsAt::Unsure,
            "an escaped key may spell aps"
        );
    }

    proptest::proptest! {
        #[test]
        fn depth_agrees_with_the_bytewise_scan(s in r#"[\[\]{}"\\ax]{0,64}"#) {
            proptest::prop_assert_eq!(scan_payload(&s).depth, depth_bytewise(&s));
        }

        /// The quick check (only `aps`, found by the scan) accepts exactly what a full
        /// parse of the payload accepts.
        #[test]
        fn the_aps_check_agrees_with_a_full_parse(
            pairs in proptest::collection::vec((0usize..6, 0usize..16, 0usize..3), 0..5)
        ) {
            const KEYS: [&str; 6] = ["aps", r#"\u0061ps"#, "x", "apsx", "pad", r#"a\"ps"#];
            const VALUES: [&str; 16] = [
                r#"{"alert":"hi"}"#,
                r#"{"alert":5}"#,
                r#"{"badge":1,"sound":{"critical":1,"volume":0.5}}"#,
                r#"{"sound":{"volume":3}}"#,
                "null",
                r#""te,x}t""#,
                "[1,2]",
                r#"{"alert":{"title":"t","loc-args":["a","b"]}}"#,
                r#"{"alert":{"title":7}}"#,
                r#"{"content-state":{"a":[1,{"b":"}"}]}}"#,
                r#"{"content-state":5}"#,
                r#""a\"b,}{""#,
                r#"{"x":{"aps":{"alert":5}}}"#,
                r#"{"badge":-1}"#,
                r#"{ "interruption-level" : "critical" , "relevance-score" : 1 }"#,
                "17",
            ];
            const SPACE: [&str; 3] = ["", " ", "\n\t "];
            let body: Vec<String> = pairs
                .iter()
                .map(|&(k, v, w)| format!("{0}\"{1}\"{0}:{0}{2}{0}", SPACE[w], KEYS[k], VALUES[v]))
                .collect();
            let raw = format!("{{{}}}", body.join(","));
            proptest::prop_assert!(serde_json::from_str::<serde_json::Value>(&raw).is_ok(), "{}", raw);
            let full = serde_json::from_str::<PayloadCheck>(&raw).is_ok();
            proptest::prop_assert_eq!(aps_ok(&raw, scan_payload(&raw).aps), full, "{}", raw);
        }
    }
}

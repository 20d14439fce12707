//! A notification that passed local validation, and the HTTP/2 request it becomes.
//!
//! Everything APNs would refuse with a 400/413 is refused here first, with a sentence that
//! says what is wrong, so a bad job never costs a request. Header values are built once,
//! at validation; building a request per attempt only clones reference-counted bytes.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub static APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
pub static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
pub static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
pub static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
pub static APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
pub static APNS_ID: HeaderName = HeaderName::from_static("apns-id");
pub static APNS_UNIQUE_ID: HeaderName = HeaderName::from_static("apns-unique-id");
pub static APNS_CHANNEL_ID: HeaderName = HeaderName::from_static("apns-channel-id");
pub static APNS_REQUEST_ID: HeaderName = HeaderName::from_static("apns-request-id");

/// Payload limit for every push type but voip.
pub const MAX_PAYLOAD: usize = 4096;
/// Payload limit for voip pushes.
pub const MAX_PAYLOAD_VOIP: usize = 5120;
/// Payload limit for broadcasts (Live Activity updates on a channel).
pub const MAX_PAYLOAD_BROADCAST: usize = 5120;
/// A channel id's length bound. Apple says not to assume a size; ids seen are about
/// 24 characters, and 1024 still refuses garbage.
pub const MAX_CHANNEL_ID: usize = 1024;
/// `apns-collapse-id` limit in bytes.
pub const MAX_COLLAPSE_ID: usize = 64;
/// Device tokens are 32 bytes (64 hex digits) today; Apple says not to assume a length.
/// 100 bytes is a generous bound that still refuses garbage.
pub const MAX_DEVICE_TOKEN_HEX: usize = 200;

/// `apns-push-type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PushType {
    #[default]
    Alert,
    Background,
    Voip,
    Complication,
    Fileprovider,
    Mdm,
    Liveactivity,
    Location,
    Pushtotalk,
    Widgets,
    Controls,
}

impl PushType {
    pub const ALL: [PushType; 11] = [
        PushType::Alert,
        PushType::Background,
        PushType::Voip,
        PushType::Complication,
        PushType::Fileprovider,
        PushType::Mdm,
        PushType::Liveactivity,
        PushType::Location,
        PushType::Pushtotalk,
        PushType::Widgets,
        PushType::Controls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Voip => "voip",
            PushType::Complication => "complication",
            PushType::Fileprovider => "fileprovider",
            PushType::Mdm => "mdm",
            PushType::Liveactivity => "liveactivity",
            PushType::Location => "location",
            PushType::Pushtotalk => "pushtotalk",
            PushType::Widgets => "widgets",
            PushType::Controls => "controls",
        }
    }

    /// The suffix Apple requires on `apns-topic` for this push type.
    pub fn topic_suffix(self) -> Option<&'static str> {
        match self {
            PushType::Voip => Some(".voip"),
            PushType::Complication => Some(".complication"),
            PushType::Fileprovider => Some(".pushkit.fileprovider"),
            PushType::Liveactivity => Some(".push-type.liveactivity"),
            PushType::Location => Some(".location-query"),
            PushType::Pushtotalk => Some(".voip-ptt"),
            PushType::Widgets => Some(".push-type.widgets"),
            PushType::Controls => Some(".push-type.controls"),
            PushType::Alert | PushType::Background | PushType::Mdm => None,
        }
    }

    pub fn max_payload(self) -> usize {
        if self == PushType::Voip {
            MAX_PAYLOAD_VOIP
        } else {
            MAX_PAYLOAD
        }
    }

    /// The priority we send when the job gives none: 5 for background pushes (Apple
    /// refuses 10 for them), 10 otherwise.
    pub fn default_priority(self) -> Priority {
        if self == PushType::Background {
            Priority::PowerConsiderate
        } else {
            Priority::Immediate
        }
    }
}

impl fmt::Display for PushType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PushType {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PushType::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ValidationError::UnknownPushType(s.to_string()))
    }
}

/// `apns-priority` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Priority {
    Immediate = 10,
    PowerConsiderate = 5,
    Low = 1,
}

impl Priority {
    pub fn from_number(n: i64) -> Result<Priority, ValidationError> {
        match n {
            10 => Ok(Priority::Immediate),
            5 => Ok(Priority::PowerConsiderate),
            1 => Ok(Priority::Low),
            _ => Err(ValidationError::BadPriority(n)),
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Priority::Immediate => "10",
            Priority::PowerConsiderate => "5",
            Priority::Low => "1",
        })
    }
}

/// Why a notification was refused before sending. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("device_token is empty")]
    EmptyDeviceToken,
    #[error(
        "device_token must be hexadecimal digits only (found {found:?} at position {position})"
    )]
    DeviceTokenNotHex { position: usize, found: char },
    #[error(
        "device_token has {0} hex digits; a device token is a whole number of bytes (an even count)"
    )]
    DeviceTokenOddLength(usize),
    #[error(
        "device_token has {0} hex digits; more than {MAX_DEVICE_TOKEN_HEX} is not a device token"
    )]
    DeviceTokenTooLong(usize),
    #[error("topic is empty; give the app's bundle id (or set a default topic for the app)")]
    EmptyTopic,
    #[error(
        "topic {0:?} has characters a bundle id cannot have (letters, digits, '.', '-' and '_' only)"
    )]
    BadTopicCharacters(String),
    #[error("topic {topic:?} does not end in {suffix:?}, which push type {push_type} requires")]
    TopicSuffix {
        topic: String,
        push_type: PushType,
        suffix: &'static str,
    },
    #[error(
        "push_type {0:?} is not one of alert, background, voip, complication, fileprovider, mdm, liveactivity, location, pushtotalk, widgets, controls"
    )]
    UnknownPushType(String),
    #[error("priority {0} is not one of 10, 5, 1")]
    BadPriority(i64),
    #[error("priority 10 is not allowed for background pushes; use 5 or 1")]
    BackgroundPriority,
    #[error("payload is empty")]
    EmptyPayload,
    #[error("payload is {size} bytes; APNs accepts at most {limit} for push type {push_type}")]
    PayloadTooLarge {
        size: usize,
        limit: usize,
        push_type: PushType,
    },
    #[error("collapse_id is {0} bytes; APNs accepts at most {MAX_COLLAPSE_ID}")]
    CollapseIdTooLong(usize),
    #[error("collapse_id contains control characters")]
    CollapseIdControl,
    #[error("collapse_id is empty; leave it out instead")]
    CollapseIdEmpty,
    #[error("channel_id is empty")]
    EmptyChannelId,
    #[error("a broadcast goes to a channel, not to devices")]
    BroadcastHasNoDevice,
    #[error(
        "channel_id must be base64 (letters, digits, '+', '/' and '=' padding; found {found:?} at position {position})"
    )]
    ChannelIdNotBase64 { position: usize, found: char },
    #[error("channel_id is {0} characters; more than {MAX_CHANNEL_ID} is not a channel id")]
    ChannelIdTooLong(usize),
    #[error("channel_id is not padded base64: {0} characters, and padded base64 comes in fours")]
    ChannelIdBadLength(usize),
    #[error("channel_id is not padded base64: '=' only ends it, at most twice")]
    ChannelIdBadPadding,
    #[error(
        "a broadcast goes to the bundle id: topic {topic:?} has the push-type suffix {suffix:?} (APNs answers TopicDisallowed)"
    )]
    BroadcastTopicSuffix { topic: String, suffix: &'static str },
}

/// The fields of a notification, before validation.
#[derive(Clone, Debug)]
pub struct NotificationParts {
    pub device_token: String,
    pub topic: String,
    pub push_type: PushType,
    pub priority: Option<Priority>,
    /// Unix seconds; 0 means "deliver once, do not store".
    pub expiration: Option<u64>,
    pub collapse_id: Option<String>,
    /// Stable across resends and retries of the same notification.
    pub apns_id: Option<Uuid>,
    /// The JSON body, sent as is.
    pub payload: Bytes,
}

impl NotificationParts {
    /// An alert to `device_token` on `topic` with this JSON payload; no expiration,
    /// collapse id or apns-id (APNs makes one up), the push type's default priority.
    pub fn new(
        device_token: impl Into<String>,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        NotificationParts {
            device_token: device_token.into(),
            topic: topic.into(),
            push_type: PushType::Alert,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: payload.into(),
        }
    }
}

/// Does `topic` belong to `base`: equal, or `base` plus a dot and more: a push-type
/// suffix (`com.example.app.voip`) or a bundle under it (`com.example.app.watchkitapp`).
pub fn topic_matches(base: &str, topic: &str) -> bool {
    topic == base
        || (topic.len() > base.len()
            && topic.starts_with(base)
            && topic.as_bytes()[base.len()] == b'.')
}

/// A validated notification: every header value is built and checked.
///
/// ```
/// use apns::{Notification, NotificationParts, PushType, ValidationError};
///
/// let mut parts = NotificationParts::new(
///     "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0",
///     "com.example.app",
///     br#"{"aps":{"content-available":1}}"#.as_slice(),
/// );
/// parts.push_type = PushType::Background;
/// let n = Notification::new(parts.clone())?;
/// assert_eq!(n.topic(), "com.example.app");
/// parts.push_type = PushType::Voip;
/// assert!(matches!(Notification::new(parts), Err(ValidationError::TopicSuffix { .. })));
/// # Ok::<(), ValidationError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Notification {
    target: Target,
    topic: String,
    push_type: PushType,
    apns_id: Option<Uuid>,
    expiration: Option<u64>,
    path: PathAndQuery,
    headers: Vec<(&'static HeaderName, HeaderValue)>,
    payload: Bytes,
}

/// Where a notification goes: one device, or everyone subscribed to a broadcast channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `POST /3/device/<token>` with `apns-topic`.
    Device(String),
    /// `POST /4/broadcasts/apps/<bundle id>` with `apns-channel-id` (Live Activities,
    /// iOS 18): the channel's id, as channel management returned it.
    Channel(String),
}

/// The fields of a broadcast (a Live Activity update to a channel), before validation.
#[derive(Clone, Debug)]
pub struct BroadcastParts {
    /// The channel id (base64), as [`crate::channels`] created it.
    pub channel_id: String,
    /// The app's bundle id, without a push-type suffix.
    pub bundle_id: String,
    /// Default 10. Apple requires the header on broadcasts; we always send it.
    pub priority: Option<Priority>,
    /// Unix seconds. Default 0 (deliver once, store nothing): Apple requires the header,
    /// and refuses a non-zero value on a channel created without message storage.
    pub expiration: Option<u64>,
    /// Sent as `apns-request-id`; APNs echoes it. Stable across retries.
    pub request_id: Option<Uuid>,
    /// The JSON body, sent as is (at most 5,120 bytes).
    pub payload: Bytes,
}

/// Check a broadcast channel id: non-empty, bounded, standard base64 with its padding
/// (`^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$`, as the job schema
/// says).
pub fn validate_channel_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyChannelId);
    }
    if id.len() > MAX_CHANNEL_ID {
        return Err(ValidationError::ChannelIdTooLong(id.len()));
    }
    if let Some((position, found)) = id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        return Err(ValidationError::ChannelIdNotBase64 { position, found });
    }
    let data = id.trim_end_matches('=');
    let padding = id.len() - data.len();
    if padding > 2 || data.contains('=') {
        return Err(ValidationError::ChannelIdBadPadding);
    }
    if id.len() % 4 != 0 {
        return Err(ValidationError::ChannelIdBadLength(id.len()));
    }
    Ok(())
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Check a device token: hex digits, whole bytes, bounded length.
pub fn validate_device_token(token: &str) -> Result<(), ValidationError> {
    if token.is_empty() {
        return Err(ValidationError::EmptyDeviceToken);
    }
    if let Some((position, found)) = token.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(ValidationError::DeviceTokenNotHex { position, found });
    }
    if token.len() > MAX_DEVICE_TOKEN_HEX {
        return Err(ValidationError::DeviceTokenTooLong(token.len()));
    }
    if token.len() % 2 != 0 {
        return Err(ValidationError::DeviceTokenOddLength(token.len()));
    }
    Ok(())
}

impl Notification {
    /// Validate the parts as APNs would, and build the header values.
    pub fn new(p: NotificationParts) -> Result<Notification, ValidationError> {
        validate_device_token(&p.device_token)?;
        if p.topic.is_empty() {
            return Err(ValidationError::EmptyTopic);
        }
        if !p.topic.chars().all(is_topic_char) {
            return Err(ValidationError::BadTopicCharacters(p.topic));
        }
        if let Some(suffix) = p.push_type.topic_suffix() {
            if !p.topic.ends_with(suffix) || p.topic.len() == suffix.len() {
                return Err(ValidationError::TopicSuffix {
                    topic: p.topic,
                    push_type: p.push_type,
                    suffix,
                });
            }
        }
        let priority = p.priority.unwrap_or(p.push_type.default_priority());
        if p.push_type == PushType::Background && priority == Priority::Immediate {
            return Err(ValidationError::BackgroundPriority);
        }
        if p.payload.is_empty() {
            return Err(ValidationError::EmptyPayload);
        }
        let limit = p.push_type.max_payload();
        if p.payload.len() > limit {
            return Err(ValidationError::PayloadTooLarge {
                size: p.payload.len(),
                limit,
                push_type: p.push_type,
            });
        }
        let mut headers = Vec::with_capacity(6);
        // Topic characters were checked above, so this cannot fail.
        headers.push((
            &APNS_TOPIC,
            HeaderValue::from_str(&p.topic).expect("checked topic"),
        ));
        headers.push((
            &APNS_PUSH_TYPE,
            HeaderValue::from_static(p.push_type.as_str()),
        ));
        headers.push((&APNS_PRIORITY, priority.header()));
        if let Some(exp) = p.expiration {
            headers.push((&APNS_EXPIRATION, HeaderValue::from(exp)));
        }
        if let Some(c) = &p.collapse_id {
            if c.is_empty() {
                return Err(ValidationError::CollapseIdEmpty);
            }
            if c.len() > MAX_COLLAPSE_ID {
                return Err(ValidationError::CollapseIdTooLong(c.len()));
            }
            if c.chars().any(char::is_control) {
                return Err(ValidationError::CollapseIdControl);
            }
            let v = HeaderValue::from_str(c).map_err(|_| ValidationError::CollapseIdControl)?;
            headers.push((&APNS_COLLAPSE_ID, v));
        }
        if let Some(id) = p.apns_id {
            let mut buf = Uuid::encode_buffer();
            let s = id.hyphenated().encode_lower(&mut buf);
            let mut v = HeaderValue::from_str(s).expect("uuid is ascii");
            // Never indexed (HPACK 6.2.3): an apns-id does not repeat, and indexing
            // each one evicted the headers that do (topic, push type) and made every
            // request walk a chain of stale ids in h2's table.
            v.set_sensitive(true);
            headers.push((&APNS_ID, v));
        }
        let path = PathAndQuery::try_from(format!("/3/device/{}", p.device_token))
            .expect("hex token is a valid path");
        Ok(Notification {
            target: Target::Device(p.device_token),
            topic: p.topic,
            push_type: p.push_type,
            apns_id: p.apns_id,
            expiration: p.expiration,
            path,
            headers,
            payload: p.payload,
        })
    }

    /// The same notification to another device, under another apns-id: one of a
    /// campaign's sends. Only the token is validated again (the rest was, once); a
    /// broadcast has no device to change and is refused.
    pub fn for_device(
        &self,
        device_token: &str,
        apns_id: Option<Uuid>,
    ) -> Result<Notification, ValidationError> {
        if !matches!(self.target, Target::Device(_)) {
            return Err(ValidationError::BroadcastHasNoDevice);
        }
        validate_device_token(device_token)?;
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(name, _)| **name != APNS_ID)
            .cloned()
            .collect();
        if let Some(id) = apns_id {
            let mut buf = Uuid::encode_buffer();
            let s = id.hyphenated().encode_lower(&mut buf);
            let mut v = HeaderValue::from_str(s).expect("uuid is ascii");
            v.set_sensitive(true);
            headers.push((&APNS_ID, v));
        }
        let path = PathAndQuery::try_from(format!("/3/device/{device_token}"))
            .expect("hex token is a valid path");
        Ok(Notification {
            target: Target::Device(device_token.to_string()),
            topic: self.topic.clone(),
            push_type: self.push_type,
            apns_id,
            expiration: self.expiration,
            path,
            headers,
            payload: self.payload.clone(),
        })
    }

    /// A broadcast to a Live Activity channel: validated as APNs would, headers built.
    ///
    /// ```
    /// use apns::{BroadcastParts, Notification, ValidationError};
    ///
    /// let parts = BroadcastParts {
    ///     channel_id: "dHN0LXNyY2gtY2hubA==".into(),
    ///     bundle_id: "com.example.app".into(),
    ///     priority: None,
    ///     expiration: None,
    ///     request_id: None,
    ///     payload: br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#.as_slice().into(),
    /// };
    /// let n = Notification::broadcast(parts.clone())?;
    /// assert_eq!(n.channel_id(), Some("dHN0LXNyY2gtY2hubA=="));
    /// let bad = BroadcastParts { channel_id: "not base64!".into(), ..parts };
    /// assert!(matches!(Notification::broadcast(bad), Err(ValidationError::ChannelIdNotBase64 { .. })));
    /// # Ok::<(), ValidationError>(())
    /// ```
    pub fn broadcast(p: BroadcastParts) -> Result<Notification, ValidationError> {
        validate_channel_id(&p.channel_id)?;
        if p.bundle_id.is_empty() {
            return Err(ValidationError::EmptyTopic);
        }
        if !p.bundle_id.chars().all(is_topic_char) {
            return Err(ValidationError::BadTopicCharacters(p.bundle_id));
        }
        if let Some(suffix) = PushType::ALL
            .iter()
            .filter_map(|t| t.topic_suffix())
            .find(|s| p.bundle_id.ends_with(s))
        {
            return Err(ValidationError::BroadcastTopicSuffix {
                topic: p.bundle_id,
                suffix,
            });
        }
        if p.payload.is_empty() {
            return Err(ValidationError::EmptyPayload);
        }
        if p.payload.len() > MAX_PAYLOAD_BROADCAST {
            return Err(ValidationError::PayloadTooLarge {
                size: p.payload.len(),
                limit: MAX_PAYLOAD_BROADCAST,
                push_type: PushType::Liveactivity,
            });
        }
        let priority = p.priority.unwrap_or(Priority::Immediate);
        let expiration = p.expiration.unwrap_or(0);
        // Checked base64 above: a valid header value.
        let channel = HeaderValue::from_str(&p.channel_id).expect("checked channel id");
        let mut headers = vec![
            (&APNS_CHANNEL_ID, channel),
            (
                &APNS_PUSH_TYPE,
                HeaderValue::from_static(PushType::Liveactivity.as_str()),
            ),
            (&APNS_PRIORITY, priority.header()),
            (&APNS_EXPIRATION, HeaderValue::from(expiration)),
        ];
        if let Some(id) = p.request_id {
            let mut buf = Uuid::encode_buffer();
            let s = id.hyphenated().encode_lower(&mut buf);
            let mut v = HeaderValue::from_str(s).expect("uuid is ascii");
            v.set_sensitive(true);
            headers.push((&APNS_REQUEST_ID, v));
        }
        let path = PathAndQuery::try_from(format!("/4/broadcasts/apps/{}", p.bundle_id))
            .expect("checked bundle id is a valid path");
        Ok(Notification {
            target: Target::Channel(p.channel_id),
            topic: p.bundle_id,
            push_type: PushType::Liveactivity,
            apns_id: p.request_id,
            expiration: Some(expiration),
            path,
            headers,
            payload: p.payload,
        })
    }

    /// Where it goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The device token; `None` for a broadcast.
    pub fn device_token(&self) -> Option<&str> {
        match &self.target {
            Target::Device(t) => Some(t),
            Target::Channel(_) => None,
        }
    }

    /// The channel id of a broadcast; `None` for a device notification.
    pub fn channel_id(&self) -> Option<&str> {
        match &self.target {
            Target::Channel(c) => Some(c),
            Target::Device(_) => None,
        }
    }

    /// The `apns-topic` of a device notification; the bundle id of a broadcast.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn push_type(&self) -> PushType {
        self.push_type
    }

    /// The `apns-id` of a device notification; the `apns-request-id` of a broadcast.
    pub fn apns_id(&self) -> Option<Uuid> {
        self.apns_id
    }

    pub fn expiration(&self) -> Option<u64> {
        self.expiration
    }

    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The request headers for one attempt. `authorization` is `bearer <jwt>` with token
    /// auth and `None` with certificate auth.
    pub fn request(
        &self,
        authority: &Authority,
        authorization: Option<&HeaderValue>,
    ) -> http::Request<()> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(self.path.clone());
        let uri = http::Uri::from_parts(parts).expect("scheme, authority and path are set");
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.reserve(self.headers.len() + 2);
        for (name, value) in &self.headers {
            h.insert(*name, value.clone());
        }
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(self.payload.len()),
        );
        if let Some(auth) = authorization {
            h.insert(http::header::AUTHORIZATION, auth.clone());
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0";

    fn parts() -> NotificationParts {
        NotificationParts {
            device_token: TOKEN.into(),
            topic: "com.example.app".into(),
            push_type: PushType::Alert,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: Bytes::from_static(br#"{"aps":{"alert":"hi"}}"#),
        }
    }

    fn with(f: impl FnOnce(&mut NotificationParts)) -> Result<Notification, ValidationError> {
        let mut p = parts();
        f(&mut p);
        Notification::new(p)
    }

    #[test]
    fn for_device_is_new_with_that_token_and_id() {
        let other = "ab".repeat(32);
        let id = Uuid::from_u128(7);
        let template = with(|p| {
            p.collapse_id = Some("c".into());
            p.apns_id = Some(Uuid::from_u128(1));
        })
        .unwrap();
        let made = template.for_device(&other, Some(id)).unwrap();
        let direct = with(|p| {
            p.collapse_id = Some("c".into());
            p.device_token = other.clone();
            p.apns_id = Some(id);
        })
        .unwrap();
        assert_eq!(made.device_token(), Some(other.as_str()));
        assert_eq!(made.apns_id(), Some(id));
        assert_eq!(made.path, direct.path);
        let names = |n: &Notification| {
            let mut v: Vec<_> = n
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&made), names(&direct));
        assert!(matches!(
            template.for_device("zz", None),
            Err(ValidationError::DeviceTokenNotHex { .. })
        ));
    }

    #[test]
    fn refuses_what_apns_would_refuse() {
        use ValidationError as E;
        type Row = (
            &'static str,
            Result<Notification, ValidationError>,
            fn(&E) -> bool,
        );
        let rows: Vec<Row> = vec![
            ("empty token", with(|p| p.device_token.clear()), |e| {
                matches!(e, E::EmptyDeviceToken)
            }),
            (
                "non hex token",
                with(|p| p.device_token = "zz".into()),
                |e| {
                    matches!(
                        e,
                        E::DeviceTokenNotHex {
                            position: 0,
                            found: 'z'
                        }
                    )
                },
            ),
            (
                "CRLF in token",
                with(|p| p.device_token = "ab\r\nX-Evil: 1".into()),
                |e| matches!(e, E::DeviceTokenNotHex { position: 2, .. }),
            ),
            ("odd token", with(|p| p.device_token = "abc".into()), |e| {
                matches!(e, E::DeviceTokenOddLength(3))
            }),
            (
                "long token",
                with(|p| p.device_token = "a".repeat(202)),
                |e| matches!(e, E::DeviceTokenTooLong(202)),
            ),
            ("empty topic", with(|p| p.topic.clear()), |e| {
                matches!(e, E::EmptyTopic)
            }),
            (
                "CRLF in topic",
                with(|p| p.topic = "com.x\r\nfoo: bar".into()),
                |e| matches!(e, E::BadTopicCharacters(_)),
            ),
            (
                "voip without suffix",
                with(|p| p.push_type = PushType::Voip),
                |e| {
                    matches!(
                        e,
                        E::TopicSuffix {
                            suffix: ".voip",
                            ..
                        }
                    )
                },
            ),
            (
                "background at 10",
                with(|p| {
                    p.push_type = PushType::Background;
                    p.priority = Some(Priority::Immediate)
                }),
                |e| matches!(e, E::BackgroundPriority),
            ),
            ("empty payload", with(|p| p.payload = Bytes::new()), |e| {
                matches!(e, E::EmptyPayload)
            }),
            (
                "4097 bytes alert",
                with(|p| p.payload = Bytes::from(vec![b' '; 4097])),
                |e| {
                    matches!(
                        e,
                        E::PayloadTooLarge {
                            size: 4097,
                            limit: 4096,
                            ..
                        }
                    )
                },
            ),
            (
                "5121 bytes voip",
                with(|p| {
                    p.push_type = PushType::Voip;
                    p.topic = "com.example.app.voip".into();
                    p.payload = Bytes::from(vec![b' '; 5121])
                }),
                |e| matches!(e, E::PayloadTooLarge { limit: 5120, .. }),
            ),
            (
                "65 byte collapse id",
                with(|p| p.collapse_id = Some("x".repeat(65))),
                |e| matches!(e, E::CollapseIdTooLong(65)),
            ),
            (
                "CRLF in collapse id",
                with(|p| p.collapse_id = Some("a\r\nb".into())),
                |e| matches!(e, E::CollapseIdControl),
            ),
        ];
        for (name, got, check) in rows {
            match got {
                Ok(_) => panic!("{name}: accepted"),
                Err(e) => assert!(check(&e), "{name}: wrong error {e:?} ({e})"),
            }
        }
    }

    #[test]
    fn accepts_limits_exactly() {
        assert!(with(|p| p.payload = Bytes::from(vec![b' '; 4096])).is_ok());
        assert!(
            with(|p| {
                p.push_type = PushType::Voip;
                p.topic = "com.example.app.voip".into();
                p.payload = Bytes::from(vec![b' '; 5120])
            })
            .is_ok()
        );
        assert!(
            with(|p| p.collapse_id = Some("é".repeat(32))).is_ok(),
            "64 bytes of UTF-8"
        );
        assert!(with(|p| p.device_token = TOKEN.to_uppercase()).is_ok());
        assert!(
            with(|p| p.device_token = "ab".repeat(100)).is_ok(),
            "100-byte token"
        );
    }

    #[test]
    fn every_suffixed_push_type_needs_its_suffix() {
        for pt in PushType::ALL {
            let Some(suffix) = pt.topic_suffix() else {
                continue;
            };
            let ok = with(|p| {
                p.push_type = pt;
                p.topic = format!("com.example.app{suffix}");
            });
            assert!(ok.is_ok(), "{pt} with {suffix}: {:?}", ok.err());
            assert!(with(|p| p.push_type = pt).is_err(), "{pt} without {suffix}");
            assert!(
                with(|p| {
                    p.push_type = pt;
                    p.topic = suffix.to_string();
                })
                .is_err(),
                "{pt}: the suffix alone is no topic"
            );
        }
    }

    /// One row per push type: its topic suffix, payload limit, default priority,
    /// whether priority 10 is refused, and a payload its rule accepts and one it refuses.
    #[test]
    fn every_push_type_has_its_row() {
        use crate::payload::check_push_type;
        type Row = (
            PushType,
            Option<&'static str>,
            usize,
            Priority,
            bool,
            &'static str,
            Option<&'static str>,
        );
        const LIVE: &str =
            r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#;
        const ALERT: &str = r#"{"aps":{"alert":"hi"}}"#;
        let rows: [Row; 11] = [
            (
                PushType::Alert,
                None,
                4096,
                Priority::Immediate,
                false,
                ALERT,
                None,
            ),
            (
                PushType::Background,
                None,
                4096,
                Priority::PowerConsiderate,
                true,
                r#"{"aps":{"content-available":1}}"#,
                Some(ALERT),
            ),
            (
                PushType::Voip,
                Some(".voip"),
                5120,
                Priority::Immediate,
                false,
                "{}",
                None,
            ),
            (
                PushType::Complication,
                Some(".complication"),
                4096,
                Priority::Immediate,
                false,
                ALERT,
                None,
            ),
            (
                PushType::Fileprovider,
                Some(".pushkit.fileprovider"),
                4096,
                Priority::Immediate,
                false,
                "{}",
                None,
            ),
            (
                PushType::Mdm,
                None,
                4096,
                Priority::Immediate,
                false,
                r#"{"mdm":"x"}"#,
                None,
            ),
            (
                PushType::Liveactivity,
                Some(".push-type.liveactivity"),
                4096,
                Priority::Immediate,
                false,
                LIVE,
                Some(ALERT),
            ),
            (
                PushType::Location,
                Some(".location-query"),
                4096,
                Priority::Immediate,
                false,
                "{}",
                None,
            ),
            (
                PushType::Pushtotalk,
                Some(".voip-ptt"),
                4096,
                Priority::Immediate,
                false,
                "{}",
                None,
            ),
            (
                PushType::Widgets,
                Some(".push-type.widgets"),
                4096,
                Priority::Immediate,
                false,
                r#"{"aps":{"content-changed":true}}"#,
                Some(ALERT),
            ),
            (
                PushType::Controls,
                Some(".push-type.controls"),
                4096,
                Priority::Immediate,
                false,
                r#"{"aps":{"content-changed":true}}"#,
                Some(r#"{"aps":{"content-changed":false}}"#),
            ),
        ];
        assert_eq!(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            PushType::ALL.to_vec(),
            "one row per push type, in order"
        );
        for (pt, suffix, limit, priority, refuses_10, good, bad) in rows {
            assert_eq!(pt.topic_suffix(), suffix, "{pt}");
            assert_eq!(pt.max_payload(), limit, "{pt}");
            assert_eq!(pt.default_priority(), priority, "{pt}");
            let topic = format!("com.example.app{}", suffix.unwrap_or(""));
            let at_10 = with(|p| {
                p.push_type = pt;
                p.topic = topic.clone();
                p.priority = Some(Priority::Immediate);
            });
            assert_eq!(at_10.is_err(), refuses_10, "{pt} at priority 10");
            assert!(check_push_type(good, pt, false).is_ok(), "{pt}: {good}");
            if let Some(bad) = bad {
                let e = check_push_type(bad, pt, false).unwrap_err();
                assert!(e.to_string().starts_with("payload.aps."), "{pt}: {e}");
            }
            // The list in the error of an unknown push type names every push type.
            assert!(
                ValidationError::UnknownPushType("x".into())
                    .to_string()
                    .contains(pt.as_str()),
                "{pt}"
            );
        }
    }

    #[test]
    fn broadcasts_are_built_as_apple_documents() {
        let id = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap();
        let parts = BroadcastParts {
            channel_id: "dHN0LXNyY2gtY2hubA==".into(),
            bundle_id: "com.example.app".into(),
            priority: None,
            expiration: None,
            request_id: Some(id),
            payload: Bytes::from_static(
                br#"{"aps":{"event":"update","timestamp":1,"content-state":{}}}"#,
            ),
        };
        let n = Notification::broadcast(parts.clone()).unwrap();
        let authority = Authority::from_static("api.push.apple.com:443");
        let req = n.request(&authority, None);
        assert_eq!(
            req.uri().to_string(),
            "https://api.push.apple.com:443/4/broadcasts/apps/com.example.app"
        );
        let h = req.headers();
        assert_eq!(h["apns-channel-id"], "dHN0LXNyY2gtY2hubA==");
        assert_eq!(h["apns-push-type"], "liveactivity");
        assert_eq!(h["apns-priority"], "10", "required: sent by default");
        assert_eq!(h["apns-expiration"], "0", "required: 0 by default");
        assert_eq!(h["apns-request-id"], "123e4567-e89b-12d3-a456-426614174000");
        assert!(
            !h.contains_key("apns-topic"),
            "no apns-topic on a broadcast"
        );
        assert!(!h.contains_key("apns-id"));
        assert_eq!(
            (n.device_token(), n.channel_id()),
            (None, Some("dHN0LXNyY2gtY2hubA=="))
        );

        use ValidationError as E;
        let bad = |f: &dyn Fn(&mut BroadcastParts)| {
            let mut p = parts.clone();
            f(&mut p);
            Notification::broadcast(p).unwrap_err()
        };
        assert!(matches!(bad(&|p| p.channel_id.clear()), E::EmptyChannelId));
        assert!(matches!(
            bad(&|p| p.channel_id = "ab\r\ncd==".into()),
            E::ChannelIdNotBase64 { position: 2, .. }
        ));
        assert!(matches!(
            bad(&|p| p.channel_id = "abc".into()),
            E::ChannelIdBadLength(3)
        ));
        assert!(matches!(
            bad(&|p| p.channel_id = "ab=c".into()),
            E::ChannelIdBadPadding
        ));
        assert!(matches!(
            bad(&|p| p.channel_id = "a".repeat(1028)),
            E::ChannelIdTooLong(1028)
        ));
        assert!(matches!(
            bad(&|p| p.bundle_id = "com.example.app.push-type.liveactivity".into()),
            E::BroadcastTopicSuffix { .. }
        ));
        assert!(matches!(
            bad(&|p| p.payload = Bytes::from(vec![b' '; 5121])),
            E::PayloadTooLarge { limit: 5120, .. }
        ));
        assert!(
            Notification::broadcast(BroadcastParts {
                payload: Bytes::from(vec![b' '; 5120]),
                ..parts
            })
            .is_ok()
        );
    }

    #[test]
    fn topics_match_with_push_type_suffixes() {
        assert!(topic_matches("com.a", "com.a"));
        assert!(topic_matches("com.a", "com.a.voip"));
        assert!(topic_matches("com.a", "com.a.push-type.liveactivity"));
        assert!(!topic_matches("com.a", "com.ab"));
        assert!(!topic_matches("com.a", "com"));
        assert!(
            topic_matches("com.a", "com.a.watchkitapp"),
            "a bundle under it"
        );
    }

    #[test]
    fn push_type_and_priority_parse() {
        for pt in PushType::ALL {
            assert_eq!(pt.as_str().parse::<PushType>().unwrap(), pt);
        }
        assert!(matches!(
            "Alert".parse::<PushType>(),
            Err(ValidationError::UnknownPushType(_))
        ));
        assert_eq!(
            Priority::from_number(5).unwrap(),
            Priority::PowerConsiderate
        );
        assert!(matches!(
            Priority::from_number(7),
            Err(ValidationError::BadPriority(7))
        ));
    }

    #[test]
    fn builds_the_request_apns_expects() {
        let id = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").unwrap();
        let n = with(|p| {
            p.apns_id = Some(id);
            p.expiration = Some(0);
            p.collapse_id = Some("score".into());
            p.push_type = PushType::Background;
        })
        .unwrap();
        let auth = HeaderValue::from_static("bearer abc");
        let authority = Authority::from_static("api.push.apple.com:443");
        let req = n.request(&authority, Some(&auth));
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(
            req.uri().to_string(),
            format!("https://api.push.apple.com:443/3/device/{TOKEN}")
        );
        let h = req.headers();
        assert_eq!(h["apns-topic"], "com.example.app");
        assert_eq!(h["apns-push-type"], "background");
        assert_eq!(h["apns-priority"], "5");
        assert_eq!(h["apns-expiration"], "0");
        assert_eq!(h["apns-collapse-id"], "score");
        assert_eq!(h["apns-id"], "123e4567-e89b-12d3-a456-426614174000");
        assert_eq!(h["authorization"], "bearer abc");
        assert_eq!(h["content-length"], n.payload().len().to_string().as_str());
        let cert = n.request(&authority, None);
        assert!(!cert.headers().contains_key("authorization"));
    }
}

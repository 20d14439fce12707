//! What APNs answered: status, reason code, the 410 timestamp and the ids, parsed from the response.

use std::fmt;

use serde::Deserialize;

/// Every reason code in Apple's "Handling notification responses from APNs", plus
/// `Other` for a code this build does not know yet (kept verbatim, never dropped).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    BadCollapseId,
    BadDeviceToken,
    BadExpirationDate,
    BadMessageId,
    BadPriority,
    BadTopic,
    DeviceTokenNotForTopic,
    DuplicateHeaders,
    IdleTimeout,
    InvalidPushType,
    MissingDeviceToken,
    MissingTopic,
    PayloadEmpty,
    TopicDisallowed,
    BadCertificate,
    BadCertificateEnvironment,
    ExpiredProviderToken,
    Forbidden,
    InvalidProviderToken,
    MissingProviderToken,
    UnrelatedKeyIdInToken,
    BadEnvironmentKeyIdInToken,
    BadPath,
    MethodNotAllowed,
    ExpiredToken,
    Unregistered,
    PayloadTooLarge,
    TooManyProviderTokenUpdates,
    TooManyRequests,
    InternalServerError,
    ServiceUnavailable,
    Shutdown,
    // Broadcast and channel management ("Handling error responses from APNs").
    FeatureNotEnabled,
    MissingChannelId,
    BadChannelId,
    ChannelNotRegistered,
    BadRequestParams,
    BadRequestPayload,
    MissingPushType,
    CannotCreateChannelConfig,
    TopicMismatch,
    Other(String),
}

impl Reason {
    /// Every known reason, in Apple's documentation order (tests iterate over it).
    pub const ALL: [Reason; 41] = [
        Reason::BadCollapseId,
        Reason::BadDeviceToken,
        Reason::BadExpirationDate,
        Reason::BadMessageId,
        Reason::BadPriority,
        Reason::BadTopic,
        Reason::DeviceTokenNotForTopic,
        Reason::DuplicateHeaders,
        Reason::IdleTimeout,
        Reason::InvalidPushType,
        Reason::MissingDeviceToken,
        Reason::MissingTopic,
        Reason::PayloadEmpty,
        Reason::TopicDisallowed,
        Reason::BadCertificate,
        Reason::BadCertificateEnvironment,
        Reason::ExpiredProviderToken,
        Reason::Forbidden,
        Reason::InvalidProviderToken,
        Reason::MissingProviderToken,
        Reason::UnrelatedKeyIdInToken,
        Reason::BadEnvironmentKeyIdInToken,
        Reason::BadPath,
        Reason::MethodNotAllowed,
        Reason::ExpiredToken,
        Reason::Unregistered,
        Reason::PayloadTooLarge,
        Reason::TooManyProviderTokenUpdates,
        Reason::TooManyRequests,
        Reason::InternalServerError,
        Reason::ServiceUnavailable,
        Reason::Shutdown,
        Reason::FeatureNotEnabled,
        Reason::MissingChannelId,
        Reason::BadChannelId,
        Reason::ChannelNotRegistered,
        Reason::BadRequestParams,
        Reason::BadRequestPayload,
        Reason::MissingPushType,
        Reason::CannotCreateChannelConfig,
        Reason::TopicMismatch,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Reason::BadCollapseId => "BadCollapseId",
            Reason::BadDeviceToken => "BadDeviceToken",
            Reason::BadExpirationDate => "BadExpirationDate",
            Reason::BadMessageId => "BadMessageId",
            Reason::BadPriority => "BadPriority",
            Reason::BadTopic => "BadTopic",
            Reason::DeviceTokenNotForTopic => "DeviceTokenNotForTopic",
            Reason::DuplicateHeaders => "DuplicateHeaders",
            Reason::IdleTimeout => "IdleTimeout",
            Reason::InvalidPushType => "InvalidPushType",
            Reason::MissingDeviceToken => "MissingDeviceToken",
            Reason::MissingTopic => "MissingTopic",
            Reason::PayloadEmpty => "PayloadEmpty",
            Reason::TopicDisallowed => "TopicDisallowed",
            Reason::BadCertificate => "BadCertificate",
            Reason::BadCertificateEnvironment => "BadCertificateEnvironment",
            Reason::ExpiredProviderToken => "ExpiredProviderToken",
            Reason::Forbidden => "Forbidden",
            Reason::InvalidProviderToken => "InvalidProviderToken",
            Reason::MissingProviderToken => "MissingProviderToken",
            Reason::UnrelatedKeyIdInToken => "UnrelatedKeyIdInToken",
            Reason::BadEnvironmentKeyIdInToken => "BadEnvironmentKeyIdInToken",
            Reason::BadPath => "BadPath",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::ExpiredToken => "ExpiredToken",
            Reason::Unregistered => "Unregistered",
            Reason::PayloadTooLarge => "PayloadTooLarge",
            Reason::TooManyProviderTokenUpdates => "TooManyProviderTokenUpdates",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalServerError => "InternalServerError",
            Reason::ServiceUnavailable => "ServiceUnavailable",
            Reason::Shutdown => "Shutdown",
            Reason::FeatureNotEnabled => "FeatureNotEnabled",
            Reason::MissingChannelId => "MissingChannelId",
            Reason::BadChannelId => "BadChannelId",
            Reason::ChannelNotRegistered => "ChannelNotRegistered",
            Reason::BadRequestParams => "BadRequestParams",
            Reason::BadRequestPayload => "BadRequestPayload",
            Reason::MissingPushType => "MissingPushType",
            Reason::CannotCreateChannelConfig => "CannotCreateChannelConfig",
            Reason::TopicMismatch => "TopicMismatch",
            Reason::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Reason {
        Reason::ALL
            .iter()
            .find(|r| r.as_str() == s)
            .cloned()
            .unwrap_or_else(|| Reason::Other(s.to_string()))
    }

    /// The HTTP status Apple documents for this reason (used by the mock APNs).
    pub fn documented_status(&self) -> u16 {
        match self {
            Reason::BadCollapseId
            | Reason::BadDeviceToken
            | Reason::BadExpirationDate
            | Reason::BadMessageId
            | Reason::BadPriority
            | Reason::BadTopic
            | Reason::DeviceTokenNotForTopic
            | Reason::DuplicateHeaders
            | Reason::IdleTimeout
            | Reason::InvalidPushType
            | Reason::MissingDeviceToken
            | Reason::MissingTopic
            | Reason::PayloadEmpty
            | Reason::TopicDisallowed
            | Reason::FeatureNotEnabled
            | Reason::MissingChannelId
            | Reason::BadChannelId
            | Reason::ChannelNotRegistered
            | Reason::BadRequestParams
            | Reason::BadRequestPayload
            | Reason::MissingPushType
            | Reason::CannotCreateChannelConfig => 400,
            Reason::BadCertificate
            | Reason::BadCertificateEnvironment
            | Reason::ExpiredProviderToken
            | Reason::Forbidden
            | Reason::InvalidProviderToken
            | Reason::MissingProviderToken
            | Reason::UnrelatedKeyIdInToken
            | Reason::BadEnvironmentKeyIdInToken
            | Reason::TopicMismatch => 403,
            Reason::BadPath => 404,
            Reason::MethodNotAllowed => 405,
            Reason::ExpiredToken | Reason::Unregistered => 410,
            Reason::PayloadTooLarge => 413,
            Reason::TooManyProviderTokenUpdates | Reason::TooManyRequests => 429,
            Reason::InternalServerError => 500,
            Reason::ServiceUnavailable | Reason::Shutdown => 503,
            Reason::Other(_) => 400,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One answer from APNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApnsResponse {
    pub status: u16,
    /// `reason` of the JSON body; `None` on success or when the body had none.
    pub reason: Option<Reason>,
    /// Milliseconds since the epoch at which APNs learned the token was no longer valid (410 only).
    pub timestamp: Option<u64>,
    /// `apns-id` header (the id we sent, or one APNs generated).
    pub apns_id: Option<String>,
    /// `apns-unique-id` header (sandbox only), for Apple's delivery log.
    pub apns_unique_id: Option<String>,
}

/// A whole answer as it arrived: status, headers and body (bounded in size).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
    /// The body was longer than the request's bound: `body` holds only the chunks
    /// that arrived before the bound was reached.
    pub truncated: bool,
}

impl Answer {
    /// A header's value, when it is text.
    pub fn header(&self, name: &http::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: Option<String>,
    timestamp: Option<serde_json::Value>,
}

impl ApnsResponse {
    /// Build a response from the status, the two id headers and the body bytes.
    /// A body that is not the documented JSON is not an error: the status still decides.
    pub fn from_parts(
        status: u16,
        apns_id: Option<String>,
        apns_unique_id: Option<String>,
        body: &[u8],
    ) -> ApnsResponse {
        let (reason, timestamp) = if body.is_empty() {
            (None, None)
        } else {
            match serde_json::from_slice::<ErrorBody>(body) {
                Ok(b) => (
                    b.reason.map(|r| Reason::parse(&r)),
                    b.timestamp.and_then(|t| match t {
                        serde_json::Value::Number(n) => n.as_u64(),
                        serde_json::Value::String(s) => s.parse().ok(),
                        _ => None,
                    }),
                ),
                Err(_) => (None, None),
            }
        };
        ApnsResponse {
            status,
            reason,
            timestamp,
            apns_id,
            apns_unique_id,
        }
    }

    /// The response of an answer: `apns-id` (or, for broadcasts and channel management,
    /// `apns-request-id`), `apns-unique-id`, and the error body.
    pub fn from_answer(a: &Answer) -> ApnsResponse {
        use crate::notification::{APNS_ID, APNS_REQUEST_ID, APNS_UNIQUE_ID};
        let id = a.header(&APNS_ID).or_else(|| a.header(&APNS_REQUEST_ID));
        ApnsResponse::from_parts(
            a.status,
            id.map(str::to_owned),
            a.header(&APNS_UNIQUE_ID).map(str::to_owned),
            if a.status / 100 == 2 { &[] } else { &a.body },
        )
    }

    pub fn is_success(&self) -> bool {
        self.status == 200
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_its_name() {
        for r in Reason::ALL.iter() {
            assert_eq!(&Reason::parse(r.as_str()), r);
        }
        assert_eq!(
            Reason::parse("SomethingNew"),
            Reason::Other("SomethingNew".into())
        );
    }

    #[test]
    fn parses_error_bodies() {
        let r = ApnsResponse::from_parts(
            410,
            Some("id".into()),
            None,
            br#"{"reason":"Unregistered","timestamp":1700000000000}"#,
        );
        assert_eq!(r.reason, Some(Reason::Unregistered));
        assert_eq!(r.timestamp, Some(1_700_000_000_000));
        let r = ApnsResponse::from_parts(
            410,
            None,
            None,
            br#"{"reason":"ExpiredToken","timestamp":"12"}"#,
        );
        assert_eq!(r.timestamp, Some(12));
        let r = ApnsResponse::from_parts(400, None, None, br#"{"reason":"BadDeviceToken"}"#);
        assert_eq!(
            (r.reason, r.timestamp),
            (Some(Reason::BadDeviceToken), None)
        );
        let r = ApnsResponse::from_parts(500, None, None, b"<html>oops</html>");
        assert_eq!((r.status, r.reason), (500, None));
        assert!(ApnsResponse::from_parts(200, None, None, b"").is_success());
    }
}

//! Classification: a pure function from what APNs answered (or how sending failed) to one outcome.
//!
//! The worker settles an AMQP message from the [`Outcome`] alone, so every row of
//! Apple's status/reason table is decided here and tested here, one row per reason.

use crate::response::{ApnsResponse, Reason};

/// What a notification's answer means for us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200: APNs accepted the notification.
    Delivered,
    /// The device token is dead or unusable for this topic: tell the producers to clean it up.
    TokenDead {
        status: u16,
        reason: Reason,
        /// The 410 `timestamp` (ms since the epoch), when APNs gave one.
        unregistered_at: Option<u64>,
    },
    /// A broadcast's channel does not exist (deleted, never created, or created in the
    /// other environment): tell the producers to stop using it.
    ChannelGone { status: u16, reason: Reason },
    /// The message itself is wrong; sending it again cannot help.
    Rejected { status: u16, reason: Option<Reason> },
    /// Transient: try again later (bounded by the caller's attempt limit).
    RetryLater(RetryCause),
    /// 403 ExpiredProviderToken and the token may be refreshed: refresh and resend
    /// at once; this is not an attempt. Only the client sees this outcome.
    RefreshToken,
    /// The app's credentials or key mapping are broken, not the message: pause the app.
    CredentialsBroken { status: u16, reason: Option<Reason> },
    /// 429 TooManyProviderTokenUpdates: the key's provider token changed too often
    /// (several senders with the key each minting their own). The credentials are
    /// fine: keep the token, mint nothing, wait and send again.
    TokenThrottled,
}

/// Why a retry is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryCause {
    /// APNs answered with a transient status.
    Status { status: u16, reason: Option<Reason> },
    /// The request never reached APNs (no connection, back-pressure timeout, refused stream).
    NotSent(String),
    /// The request was sent but no answer came (reset, timeout, connection lost):
    /// it may or may not have been delivered.
    Unknown(String),
}

impl RetryCause {
    /// The reason as it goes into headers and metrics: the APNs reason or our own word.
    pub fn label(&self) -> String {
        match self {
            RetryCause::Status { status, reason } => reason_label(*status, reason.as_ref()),
            RetryCause::NotSent(_) => "NotSent".into(),
            RetryCause::Unknown(_) => "Unknown".into(),
        }
    }
}

/// The word for an answer in headers, metrics and logs: APNs' reason, else
/// `HTTP<status>` (an answer without a reason, from a proxy say).
pub fn reason_label(status: u16, reason: Option<&Reason>) -> String {
    match reason {
        Some(r) => r.to_string(),
        None => format!("HTTP{status}"),
    }
}

/// What the caller knows besides the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The provider token may still be refreshed for this request (token auth, not yet
    /// refreshed for it, and the 20-minute floor allows it).
    pub can_refresh_token: bool,
}

/// Classify one APNs answer. Undocumented statuses are retried (bounded by the caller):
/// a proxy's 502 or a new status must not dead-letter a good message.
pub fn classify(resp: &ApnsResponse, ctx: Context) -> Outcome {
    use Reason::*;
    let status = resp.status;
    let reason = resp.reason.clone();
    let retry = || {
        Outcome::RetryLater(RetryCause::Status {
            status,
            reason: resp.reason.clone(),
        })
    };
    match (status, reason.as_ref()) {
        (200, _) => Outcome::Delivered,
        (410, _) => Outcome::TokenDead {
            status,
            reason: reason.unwrap_or(Unregistered),
            unregistered_at: resp.timestamp,
        },
        (400, Some(BadDeviceToken | DeviceTokenNotForTopic)) => Outcome::TokenDead {
            status,
            reason: reason.expect("matched Some"),
            unregistered_at: None,
        },
        (400, Some(IdleTimeout)) => retry(),
        (400, Some(ChannelNotRegistered)) => Outcome::ChannelGone {
            status,
            reason: ChannelNotRegistered,
        },
        (400 | 404 | 405 | 413, _) => Outcome::Rejected { status, reason },
        (403, Some(ExpiredProviderToken)) if ctx.can_refresh_token => Outcome::RefreshToken,
        (403, _) => Outcome::CredentialsBroken { status, reason },
        (429, Some(TooManyProviderTokenUpdates)) => Outcome::TokenThrottled,
        _ => retry(),
    }
}

/// Whether this answer also means "stop opening streams on this connection".
pub fn leave_connection(resp: &ApnsResponse) -> bool {
    resp.status == 503 && resp.reason == Some(Reason::Shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, reason: Option<Reason>) -> ApnsResponse {
        ApnsResponse {
            status,
            reason,
            timestamp: None,
            apns_id: None,
            apns_unique_id: None,
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Delivered,
        TokenDead,
        ChannelGone,
        Rejected,
        Retry,
        Refresh,
        Credentials,
        Throttled,
    }

    fn kind(o: &Outcome) -> Want {
        match o {
            Outcome::Delivered => Want::Delivered,
            Outcome::TokenDead { .. } => Want::TokenDead,
            Outcome::ChannelGone { .. } => Want::ChannelGone,
            Outcome::Rejected { .. } => Want::Rejected,
            Outcome::RetryLater(_) => Want::Retry,
            Outcome::RefreshToken => Want::Refresh,
            Outcome::CredentialsBroken { .. } => Want::Credentials,
            Outcome::TokenThrottled => Want::Throttled,
        }
    }

    /// One row per reason in Apple's documentation, at its documented status.
    #[test]
    fn every_documented_reason() {
        use Reason::*;
        let table: &[(Reason, Want)] = &[
            (BadCollapseId, Want::Rejected),
            (BadDeviceToken, Want::TokenDead),
            (BadExpirationDate, Want::Rejected),
            (BadMessageId, Want::Rejected),
            (BadPriority, Want::Rejected),
            (BadTopic, Want::Rejected),
            (DeviceTokenNotForTopic, Want::TokenDead),
            (DuplicateHeaders, Want::Rejected),
            (IdleTimeout, Want::Retry),
            (InvalidPushType, Want::Rejected),
            (MissingDeviceToken, Want::Rejected),
            (MissingTopic, Want::Rejected),
            (PayloadEmpty, Want::Rejected),
            (TopicDisallowed, Want::Rejected),
            (BadCertificate, Want::Credentials),
            (BadCertificateEnvironment, Want::Credentials),
            (ExpiredProviderToken, Want::Refresh),
            (Forbidden, Want::Credentials),
            (InvalidProviderToken, Want::Credentials),
            (MissingProviderToken, Want::Credentials),
            (UnrelatedKeyIdInToken, Want::Credentials),
            (BadEnvironmentKeyIdInToken, Want::Credentials),
            (BadPath, Want::Rejected),
            (MethodNotAllowed, Want::Rejected),
            (ExpiredToken, Want::TokenDead),
            (Unregistered, Want::TokenDead),
            (PayloadTooLarge, Want::Rejected),
            (TooManyProviderTokenUpdates, Want::Throttled),
            (TooManyRequests, Want::Retry),
            (InternalServerError, Want::Retry),
            (ServiceUnavailable, Want::Retry),
            (Shutdown, Want::Retry),
            // Broadcasts and channel management. FeatureNotEnabled is the app's
            // broadcast capability, not its credentials: pausing the app would stop its
            // device pushes too, so the broadcast is dead-lettered with the reason.
            (FeatureNotEnabled, Want::Rejected),
            (MissingChannelId, Want::Rejected),
            (BadChannelId, Want::Rejected),
            (ChannelNotRegistered, Want::ChannelGone),
            (BadRequestParams, Want::Rejected),
            (BadRequestPayload, Want::Rejected),
            (MissingPushType, Want::Rejected),
            (CannotCreateChannelConfig, Want::Rejected),
            // The credentials do not cover the bundle id in the broadcast's path.
            (TopicMismatch, Want::Credentials),
        ];
        assert_eq!(table.len(), Reason::ALL.len(), "a reason has no row");
        let ctx = Context {
            can_refresh_token: true,
        };
        for (reason, want) in table {
            let r = resp(reason.documented_status(), Some(reason.clone()));
            assert_eq!(kind(&classify(&r, ctx)), *want, "{reason} at {}", r.status);
        }
    }

    #[test]
    fn expired_provider_token_without_refresh_left_is_a_credentials_problem() {
        let r = resp(403, Some(Reason::ExpiredProviderToken));
        assert_eq!(kind(&classify(&r, Context::default())), Want::Credentials);
    }

    #[test]
    fn statuses_without_or_with_unknown_reasons() {
        let rows: &[(u16, Option<&str>, Want)] = &[
            (200, None, Want::Delivered),
            (410, None, Want::TokenDead),
            (400, None, Want::Rejected),
            (400, Some("NewRule"), Want::Rejected),
            (403, None, Want::Credentials),
            (403, Some("NewAuthRule"), Want::Credentials),
            (404, None, Want::Rejected),
            (405, None, Want::Rejected),
            (413, None, Want::Rejected),
            (429, None, Want::Retry),
            (500, None, Want::Retry),
            (502, None, Want::Retry),
            (503, None, Want::Retry),
            (504, None, Want::Retry),
            (401, None, Want::Retry),
            (302, None, Want::Retry),
        ];
        for (status, reason, want) in rows {
            let r = resp(*status, reason.map(Reason::parse));
            assert_eq!(
                kind(&classify(&r, Context::default())),
                *want,
                "{status} {reason:?}"
            );
        }
    }

    #[test]
    fn token_dead_keeps_the_410_timestamp() {
        let mut r = resp(410, Some(Reason::Unregistered));
        r.timestamp = Some(1_700_000_000_123);
        assert_eq!(
            classify(&r, Context::default()),
            Outcome::TokenDead {
                status: 410,
                reason: Reason::Unregistered,
                unregistered_at: Some(1_700_000_000_123)
            }
        );
    }

    #[test]
    fn shutdown_leaves_the_connection() {
        assert!(leave_connection(&resp(503, Some(Reason::Shutdown))));
        assert!(!leave_connection(&resp(
            503,
            Some(Reason::ServiceUnavailable)
        )));
        assert!(!leave_connection(&resp(200, None)));
    }

    #[test]
    fn retry_labels() {
        let c = RetryCause::Status {
            status: 503,
            reason: Some(Reason::Shutdown),
        };
        assert_eq!(c.label(), "Shutdown");
        let c = RetryCause::Status {
            status: 502,
            reason: None,
        };
        assert_eq!(c.label(), "HTTP502");
        assert_eq!(RetryCause::Unknown("timeout".into()).label(), "Unknown");
    }
}

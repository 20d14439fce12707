//! Broadcast channel management (Live Activities, iOS 18): create, read, delete and list
//! an app's channels on Apple's management hosts, with the app's own credentials.
//!
//! Channels live on `api-manage-broadcast[.sandbox].push.apple.com` (ports 2196 and
//! 2195), not on the hosts that send; [`ChannelClient`] keeps its own connection there
//! and goes through the same send loop as notifications (provider tokens from the same
//! per-key grid, resends only of requests APNs certainly did not process). Channels
//! are per environment: one created in the sandbox does not exist in production.
//! An app may hold 10,000 channels per environment; a channel outlives its subscribers
//! and is deleted when its event ends.
//!
//! ```
//! use apns::channels::{ChannelClient, StoragePolicy};
//! use apns::{AppSettings, ClientSettings, KeySettings, SecretSource};
//! # use apns_mock::{MockApns, MockConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let mock = MockApns::start(MockConfig::default()).await?;
//! # let dir = tempfile::tempdir()?;
//! # let ca = dir.path().join("ca.pem");
//! # mock.write_ca(&ca)?;
//! # let pem = mock.generate_key("TEAM123456", "KEY1234567")?;
//! let key = KeySettings::team_scoped("KEY1234567", SecretSource::Value(pem.into()));
//! let mut app = AppSettings::token(mock.endpoint(), "TEAM123456", vec![key]);
//! app.ca_file = Some(ca);
//! let channels = ChannelClient::start("shop", &app, &ClientSettings::default())?;
//!
//! let created = channels.create("com.example.shop", StoragePolicy::NoMessageStored).await?;
//! assert!(channels.list("com.example.shop").await?.contains(&created.channel_id));
//! channels.delete("com.example.shop", &created.channel_id).await?;
//! assert!(channels.get("com.example.shop", &created.channel_id).await.is_err());
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http::{HeaderValue, Method};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{AppClient, ClientError, SendError};
use crate::endpoint::Endpoint;
use crate::jwt::{SignerRegistry, SystemClock};
use crate::notification::{APNS_CHANNEL_ID, APNS_REQUEST_ID, ValidationError, validate_channel_id};
use crate::response::{Answer, Reason};
use crate::settings::{AppSettings, ClientSettings};

/// The longest answer kept: the list of an app's channels (10,000 ids of about 24
/// characters is some 300 KB; ids have no documented size, hence the margin).
const MAX_LIST_BODY: usize = 4 * 1024 * 1024;

/// What a channel keeps for devices that are offline (fixed at creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoragePolicy {
    /// `0`: nothing is stored; broadcasts must carry `apns-expiration: 0`. For frequent
    /// updates (scores): a higher publishing budget.
    NoMessageStored,
    /// `1`: the most recent message is stored (at most 8 hours). For infrequent updates
    /// (flights, deliveries).
    MostRecentMessageStored,
}

impl StoragePolicy {
    /// The number Apple uses in `message-storage-policy`.
    pub fn number(self) -> u8 {
        match self {
            StoragePolicy::NoMessageStored => 0,
            StoragePolicy::MostRecentMessageStored => 1,
        }
    }

    pub fn from_number(n: u64) -> Option<StoragePolicy> {
        match n {
            0 => Some(StoragePolicy::NoMessageStored),
            1 => Some(StoragePolicy::MostRecentMessageStored),
            _ => None,
        }
    }
}

/// A channel as APNs describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChannelInfo {
    pub channel_id: String,
    /// `0` (no message stored) or `1` (most recent message stored).
    pub message_storage_policy: u8,
    /// `LiveActivity` (the only push type channels have today).
    pub push_type: String,
    /// The `apns-request-id` of the request, for Apple's support.
    pub request_id: String,
}

/// Why a channel request failed. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("APNs answered {status} {reason}: {hint}")]
    Refused {
        status: u16,
        reason: String,
        hint: &'static str,
    },
    #[error("the request did not complete: {0}")]
    Send(#[from] SendError),
    #[error("APNs answered {status} but {what}")]
    BadAnswer { status: u16, what: String },
}

impl ChannelError {
    /// APNs' reason, when APNs refused the request.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ChannelError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// What to do about a refusal of a channel request.
fn hint(reason: Option<&Reason>) -> &'static str {
    match reason {
        Some(Reason::CannotCreateChannelConfig) => {
            "the app has the most channels APNs allows in this environment (10,000); delete the channels of events that ended"
        }
        Some(Reason::FeatureNotEnabled) => {
            "broadcast push is not enabled for this bundle id; enable it in the Apple developer account (Certificates, Identifiers & Profiles)"
        }
        Some(Reason::ChannelNotRegistered) => {
            "no channel with this id exists in this environment (deleted, or created in the other environment)"
        }
        Some(Reason::BadChannelId | Reason::MissingChannelId) => {
            "the channel id is not one APNs issued; use the id that `channels create` printed"
        }
        Some(
            Reason::BadCertificate
            | Reason::BadCertificateEnvironment
            | Reason::InvalidProviderToken
            | Reason::MissingProviderToken
            | Reason::ExpiredProviderToken
            | Reason::Forbidden
            | Reason::UnrelatedKeyIdInToken
            | Reason::BadEnvironmentKeyIdInToken,
        ) => {
            "the app's credentials are not accepted here; check its key or certificate and environment"
        }
        Some(Reason::TopicDisallowed | Reason::TopicMismatch) => {
            "the credentials do not cover this bundle id, or it carries a push-type suffix (give the bare bundle id)"
        }
        Some(Reason::TooManyRequests) => "too many requests; wait and try again",
        _ => "see Apple's \"Handling error responses from APNs\"",
    }
}

/// The channel-management client of one app.
pub struct ChannelClient {
    app: AppClient,
}

impl std::fmt::Debug for ChannelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelClient")
            .field("endpoint", self.app.endpoint())
            .finish_non_exhaustive()
    }
}

impl ChannelClient {
    /// A client for `app`'s channels: on `app.channels_endpoint`, else the management
    /// host of the app's environment ([`Endpoint::channel_management`]); one connection.
    pub fn start(
        name: &str,
        app: &AppSettings,
        settings: &ClientSettings,
    ) -> Result<ChannelClient, ClientError> {
        let manage = AppSettings {
            endpoint: app.channel_endpoint(),
            other_environment: None,
            connections: 1,
            ..app.clone()
        };
        let app = AppClient::start(
            name,
            &manage,
            settings,
            &SignerRegistry::default(),
            std::sync::Arc::new(SystemClock),
        )?;
        Ok(ChannelClient { app })
    }

    /// Where the requests go.
    pub fn endpoint(&self) -> &Endpoint {
        self.app.endpoint()
    }

    /// Create a channel for `bundle_id` (201; the new id in `apns-channel-id`). Not
    /// idempotent: after `SendError::Unknown` a channel may exist; `list` tells.
    pub async fn create(
        &self,
        bundle_id: &str,
        policy: StoragePolicy,
    ) -> Result<ChannelInfo, ChannelError> {
        let body = Bytes::from(format!(
            r#"{{"message-storage-policy":{},"push-type":"LiveActivity"}}"#,
            policy.number()
        ));
        let (answer, request_id) = self
            .request(Method::POST, bundle_id, "channels", None, body, 201)
            .await?;
        let channel_id = answer
            .header(&APNS_CHANNEL_ID)
            .filter(|id| validate_channel_id(id).is_ok())
            .ok_or_else(|| ChannelError::BadAnswer {
                status: answer.status,
                what: "without a base64 channel id in apns-channel-id".into(),
            })?
            .to_string();
        Ok(ChannelInfo {
            channel_id,
            message_storage_policy: policy.number(),
            push_type: "LiveActivity".into(),
            request_id,
        })
    }

    /// Read a channel's configuration (200 with the policy and push type).
    pub async fn get(
        &self,
        bundle_id: &str,
        channel_id: &str,
    ) -> Result<ChannelInfo, ChannelError> {
        validate_channel_id(channel_id)?;
        let (answer, request_id) = self
            .request(
                Method::GET,
                bundle_id,
                "channels",
                Some(channel_id),
                Bytes::new(),
                200,
            )
            .await?;
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "message-storage-policy")]
            policy: u64,
            #[serde(rename = "push-type")]
            push_type: String,
        }
        let b: Body =
            serde_json::from_slice(&answer.body).map_err(|e| ChannelError::BadAnswer {
                status: answer.status,
                what: format!("its body is not the channel's configuration: {e}"),
            })?;
        let policy =
            StoragePolicy::from_number(b.policy).ok_or_else(|| ChannelError::BadAnswer {
                status: answer.status,
                what: format!("message-storage-policy {} is not 0 or 1", b.policy),
            })?;
        Ok(ChannelInfo {
            channel_id: channel_id.to_string(),
            message_storage_policy: policy.number(),
            push_type: b.push_type,
            request_id,
        })
    }

    /// Delete a channel (204). Stored messages may still be delivered; the id is never
    /// issued again.
    pub async fn delete(&self, bundle_id: &str, channel_id: &str) -> Result<String, ChannelError> {
        validate_channel_id(channel_id)?;
        let (_, request_id) = self
            .request(
                Method::DELETE,
                bundle_id,
                "channels",
                Some(channel_id),
                Bytes::new(),
                204,
            )
            .await?;
        Ok(request_id)
    }

    /// Every channel id of `bundle_id` in this environment.
    pub async fn list(&self, bundle_id: &str) -> Result<Vec<String>, ChannelError> {
        let (answer, _) = self
            .request(
                Method::GET,
                bundle_id,
                "all-channels",
                None,
                Bytes::new(),
                200,
            )
            .await?;
        #[derive(Deserialize)]
        struct Body {
            channels: Vec<String>,
        }
        let b: Body =
            serde_json::from_slice(&answer.body).map_err(|e| ChannelError::BadAnswer {
                status: answer.status,
                what: format!("its body is not a list of channels: {e}"),
            })?;
        Ok(b.channels)
    }

    /// One request through the app's send loop; `Ok` only with status `want`.
    async fn request(
        &self,
        method: Method,
        bundle_id: &str,
        resource: &str,
        channel_id: Option<&str>,
        body: Bytes,
        want: u16,
    ) -> Result<(Answer, String), ChannelError> {
        if bundle_id.is_empty()
            || !bundle_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(ValidationError::BadTopicCharacters(bundle_id.to_string()).into());
        }
        let request_id = Uuid::new_v4().hyphenated().to_string();
        let authority: http::uri::Authority = self
            .app
            .endpoint()
            .authority()
            .parse()
            .expect("the client started with this authority");
        let uri = format!("https://{authority}/1/apps/{bundle_id}/{resource}");
        let build = |auth: Option<&HeaderValue>| {
            let mut req = http::Request::new(());
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.parse().expect("checked bundle id");
            let h = req.headers_mut();
            h.insert(
                &APNS_REQUEST_ID,
                HeaderValue::from_str(&request_id).expect("uuid"),
            );
            if let Some(id) = channel_id {
                h.insert(
                    &APNS_CHANNEL_ID,
                    HeaderValue::from_str(id).expect("checked id"),
                );
            }
            if !body.is_empty() {
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            if let Some(a) = auth {
                h.insert(http::header::AUTHORIZATION, a.clone());
            }
            req
        };
        let x = self
            .app
            .exchange(bundle_id, build, &body, MAX_LIST_BODY, || true)
            .await?;
        if x.answer.truncated {
            return Err(ChannelError::BadAnswer {
                status: x.answer.status,
                what: format!("its body is longer than {MAX_LIST_BODY} bytes"),
            });
        }
        if x.answer.status == want {
            return Ok((x.answer, request_id));
        }
        let reason = x.response.reason.clone();
        Err(ChannelError::Refused {
            status: x.answer.status,
            reason: crate::classify::reason_label(x.answer.status, reason.as_ref()),
            hint: hint(reason.as_ref()),
        })
    }

    /// Close the connection; in-flight requests get `grace`.
    pub async fn close(&self, grace: std::time::Duration) {
        self.app.close(grace).await;
    }
}

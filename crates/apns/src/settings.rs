//! What a client needs to know of an app and of its connections: the endpoint, the
//! credentials, how many connections, and the bounds of the send loop. Plain data with
//! documented defaults; build it in code, or from your own configuration format.

use std::path::PathBuf;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::notification::topic_matches;
use crate::secret::{SecretError, SecretSource};
use crate::tls::IdentitySource;

/// One app (one set of credentials) and its connections.
///
/// ```
/// use apns::{AppSettings, Endpoint, KeySettings, SecretSource};
///
/// let app = AppSettings::token(
///     Endpoint::sandbox(),
///     "TEAM123456",
///     vec![KeySettings::team_scoped("KEY1234567", SecretSource::File("AuthKey_KEY1234567.p8".into()))],
/// );
/// assert_eq!(app.connections, 2);
/// assert!(app.auth.serves("com.example.shop.voip"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppSettings {
    pub endpoint: Endpoint,
    pub auth: Auth,
    /// Connections per credentials scope (the certificate, or each key). Default 2.
    pub connections: usize,
    /// Our own ceiling on concurrent streams per connection; the server's SETTINGS
    /// also apply. Default 1000.
    pub max_streams_per_connection: usize,
    /// An extra CA to trust besides the public roots (a mock APNs or a TLS proxy).
    /// Verification is never off.
    pub ca_file: Option<PathBuf>,
    /// The app's other APNs environment, for [`crate::ApnsClient::send_other_environment`]
    /// (is a token APNs calls bad in one environment good in the other?). Its
    /// connection opens on first use. Default: none.
    pub other_environment: Option<Endpoint>,
    /// Reach APNs through this outbound proxy. Default: none (direct).
    pub proxy: Option<crate::proxy::Proxy>,
    /// Where this app's broadcast channels are managed ([`crate::channels`]). Default:
    /// Apple's management host of the endpoint's environment; for a custom endpoint,
    /// the endpoint itself.
    pub channels_endpoint: Option<Endpoint>,
}

impl AppSettings {
    /// Token auth (ES256 provider tokens) with these keys of team `team_id`.
    pub fn token(endpoint: Endpoint, team_id: impl Into<String>, keys: Vec<KeySettings>) -> Self {
        AppSettings::with_auth(
            endpoint,
            Auth::Token {
                team_id: team_id.into(),
                keys,
            },
        )
    }

    /// Certificate auth with this TLS client identity.
    pub fn certificate(endpoint: Endpoint, identity: IdentitySource) -> Self {
        AppSettings::with_auth(endpoint, Auth::Certificate(identity))
    }

    /// A digest of everything that makes up the app's credentials and connections,
    /// file contents included (read now; a file that cannot be read is an error). Two
    /// equal digests mean nothing to reload. Secrets go into the digest, never out.
    pub fn fingerprint(&self) -> Result<u64, SecretError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.endpoint.to_string().hash(&mut h);
        self.other_environment
            .as_ref()
            .map(ToString::to_string)
            .hash(&mut h);
        self.proxy.as_ref().map(ToString::to_string).hash(&mut h);
        (self.connections, self.max_streams_per_connection).hash(&mut h);
        if let Some(ca) = &self.ca_file {
            SecretSource::File(ca.clone()).load()?.expose().hash(&mut h);
        }
        match &self.auth {
            Auth::Token { team_id, keys } => {
                team_id.hash(&mut h);
                for k in keys {
                    (&k.key_id, &k.topics).hash(&mut h);
                    k.key.load()?.expose().hash(&mut h);
                }
            }
            Auth::Certificate(IdentitySource::Pem { certificate, key }) => {
                certificate.load()?.expose().hash(&mut h);
                key.load()?.expose().hash(&mut h);
            }
            Auth::Certificate(IdentitySource::Pkcs12 { file, password }) => {
                file.load()?.expose().hash(&mut h);
                password.load()?.expose().hash(&mut h);
            }
        }
        Ok(h.finish())
    }

    fn with_auth(endpoint: Endpoint, auth: Auth) -> Self {
        AppSettings {
            endpoint,
            auth,
            connections: 2,
            max_streams_per_connection: 1000,
            ca_file: None,
            other_environment: None,
            proxy: None,
            channels_endpoint: None,
        }
    }

    /// The endpoint of channel management: `channels_endpoint`, else the one of the
    /// app's environment ([`Endpoint::channel_management`]).
    pub fn channel_endpoint(&self) -> Endpoint {
        self.channels_endpoint
            .clone()
            .unwrap_or_else(|| self.endpoint.channel_management())
    }
}

/// How an app authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Provider tokens signed with the team's `.p8` keys.
    Token {
        /// Apple's 10-character team id.
        team_id: String,
        keys: Vec<KeySettings>,
    },
    /// A TLS client certificate (it names the topics it may send to).
    Certificate(IdentitySource),
}

impl Auth {
    /// Can these credentials send to `topic` at all? A certificate: any topic (APNs
    /// decides). Token auth: a topic-specific key for it, or a team-scoped key.
    pub fn serves(&self, topic: &str) -> bool {
        match self {
            Auth::Certificate(_) => true,
            Auth::Token { keys, .. } => {
                key_for_topic(keys.iter().map(|k| k.topics.as_slice()), topic).is_some()
            }
        }
    }
}

/// An auth key (`.p8`) of a team.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySettings {
    /// Apple's 10-character key id.
    pub key_id: String,
    /// The `.p8` PEM text, or the file it is in.
    pub key: SecretSource,
    /// A topic-specific key signs only for these topics (and their push-type
    /// suffixes). Empty: a team-scoped key, for any topic of the team.
    pub topics: Vec<String>,
}

impl KeySettings {
    /// A team-scoped key (any topic of the team).
    pub fn team_scoped(key_id: impl Into<String>, key: SecretSource) -> Self {
        KeySettings {
            key_id: key_id.into(),
            key,
            topics: Vec::new(),
        }
    }
}

/// The key that signs for `topic`, by index, given each key's topics: the first
/// topic-specific key whose topics match, else the first team-scoped key (no topics).
/// The one rule both the client (which pool a request takes) and its callers (can an
/// app send to a topic) use.
pub fn key_for_topic<'a>(
    key_topics: impl Iterator<Item = &'a [String]> + Clone,
    topic: &str,
) -> Option<usize> {
    key_topics
        .clone()
        .position(|ts| ts.iter().any(|t| topic_matches(t, topic)))
        .or_else(|| key_topics.clone().position(|ts| ts.is_empty()))
}

/// Timeouts and bounds shared by every app of a client. The order of the limits in a
/// send, outermost first: `send_timeout` → `max_resends` → waiting for a stream →
/// `request_timeout` of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// One attempt on one stream, from sending to the whole answer. Default 10 s.
    pub request_timeout: Duration,
    /// The time in which a notification's attempts may start (waiting for a stream,
    /// resends, a token refresh). A send takes at most this plus `request_timeout`.
    /// Default 30 s.
    pub send_timeout: Duration,
    /// Resends of a request APNs certainly did not process (refused stream, above a
    /// GOAWAY's last stream). Default 10.
    pub max_resends: u32,
    /// TCP + TLS + HTTP/2 handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// PING a connection that has had no answer for this long... Default 60 s.
    pub ping_interval: Duration,
    /// ...and replace it when the PING is not answered within this. Default 10 s.
    pub ping_timeout: Duration,
    /// Reconnect backoff, exponential with jitter, between these. Default 1 s to 60 s.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Provider-token lifetime before it is replaced: Apple's window is 20 to 60
    /// minutes. Default 50 min.
    pub token_refresh: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            request_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(30),
            max_resends: 10,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            token_refresh: Duration::from_secs(50 * 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(t: &[&[&str]]) -> Vec<Vec<String>> {
        t.iter()
            .map(|ts| ts.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn a_topic_specific_key_first_then_the_team_scoped_one() {
        let keys = topics(&[&[], &["com.a"], &["com.b", "com.c"]]);
        let pick = |t: &str| key_for_topic(keys.iter().map(Vec::as_slice), t);
        assert_eq!(pick("com.a"), Some(1));
        assert_eq!(
            pick("com.a.voip"),
            Some(1),
            "push-type suffixes belong to the topic"
        );
        assert_eq!(pick("com.c"), Some(2));
        assert_eq!(pick("com.other"), Some(0), "the team-scoped key");
        let only_specific = topics(&[&["com.a"]]);
        assert_eq!(
            key_for_topic(only_specific.iter().map(Vec::as_slice), "com.b"),
            None
        );
    }
}

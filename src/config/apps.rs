//! An app's section of the config (`[apps.<name>]`): its endpoint, topics, connections
//! and credentials, and its translation into the APNs client's `AppSettings`.

use std::path::PathBuf;

use apns::secret::{Secret, SecretSource};
use apns::settings::{AppSettings, Auth, KeySettings};
use apns::tls::IdentitySource;
use apns::{Endpoint, topic_matches};
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// One credentials profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// `production`, `sandbox`, `production:2197`, `sandbox:2197` or `https://host:port`.
    pub endpoint: Endpoint,
    /// Topics (bundle ids) this app sends to. A job's topic matches a listed topic
    /// exactly or with a push-type suffix (`com.example.app.voip`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topic used when a job has none. Defaults to the first of `topics`.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// Connections per credentials scope (certificate, or each key).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Our ceiling on concurrent streams per connection (the server's limit also applies).
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: usize,
    /// An extra CA to trust besides the public roots (a mock APNs or a TLS proxy).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Token auth: the 10-character team id.
    #[serde(default)]
    pub team_id: Option<String>,
    /// Token auth: one or more keys (a team-scoped key has no `topics`).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Certificate auth.
    #[serde(default)]
    pub certificate: Option<CertificateConfig>,
    /// Before a token APNs calls BadDeviceToken is reported for cleanup, send the
    /// notification once to the other environment: accepted there, the token is valid
    /// (sandbox vs production) and an environment-mismatch event is published instead.
    /// Default: on for token auth against Apple's hosts (one key serves both
    /// environments), off otherwise.
    #[serde(default)]
    pub environment_guard: Option<bool>,
    /// The other environment's endpoint for the guard. Default: Apple's counterpart
    /// (sandbox for production and the other way round); required with a custom
    /// endpoint.
    #[serde(default)]
    pub other_endpoint: Option<Endpoint>,
    /// Reach APNs through this proxy (`http://[user:password@]host:port` for HTTP
    /// CONNECT, `socks5://...`), or `direct`. Default: `apns.proxy`, else
    /// `HTTPS_PROXY` unless `NO_PROXY` names the host.
    #[serde(default)]
    pub proxy: Option<Secret<String>>,
    /// Where this app's Live Activity broadcast channels are managed (`apns-worker
    /// channels`). Default: Apple's management host of the endpoint's environment
    /// (`api-manage-broadcast[.sandbox].push.apple.com`, port 2196 or 2195); with a
    /// custom endpoint, the endpoint itself. `production` and `sandbox` name Apple's
    /// management hosts.
    #[serde(default)]
    pub channels_endpoint: Option<Endpoint>,
}

fn default_connections() -> usize {
    2
}
fn default_max_streams() -> usize {
    1000
}

/// An APNs auth key (`.p8`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key_id: String,
    /// Path of the `.p8` file (a mounted secret).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The `.p8` PEM text itself.
    #[serde(default)]
    pub key: Option<Secret<String>>,
    /// Topic-specific key: the topics it may sign for. Empty: a team-scoped key.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// A TLS client certificate, as PEM files/values or one PKCS#12 archive.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<Secret<String>>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<Secret<String>>,
    #[serde(default)]
    pub pkcs12_file: Option<PathBuf>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn one_source(
    what: &str,
    file: &Option<PathBuf>,
    value: &Option<Secret<String>>,
) -> Result<Option<SecretSource>, ConfigError> {
    match (file, value) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "{what}: give the file or the value, not both"
        ))),
        (Some(f), None) => Ok(Some(SecretSource::File(f.clone()))),
        (None, Some(v)) => Ok(Some(SecretSource::Value(v.clone()))),
        (None, None) => Ok(None),
    }
}

impl AppConfig {
    /// A token-auth app: one team-scoped key, sending to `topics`, 2 connections.
    pub fn token(
        endpoint: Endpoint,
        team_id: &str,
        key_id: &str,
        key: SecretSource,
        topics: &[&str],
    ) -> AppConfig {
        let (key_file, key) = match key {
            SecretSource::File(f) => (Some(f), None),
            SecretSource::Value(v) => (None, Some(v)),
        };
        AppConfig {
            endpoint,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            default_topic: None,
            connections: default_connections(),
            max_streams_per_connection: default_max_streams(),
            ca_file: None,
            team_id: Some(team_id.into()),
            keys: vec![KeyConfig {
                key_id: key_id.into(),
                key_file,
                key,
                topics: vec![],
            }],
            certificate: None,
            environment_guard: None,
            other_endpoint: None,
            proxy: None,
            channels_endpoint: None,
        }
    }

    /// The other environment's endpoint when the environment guard is on.
    pub fn guard_endpoint(&self, name: &str) -> Result<Option<Endpoint>, ConfigError> {
        let token_auth = self.certificate.is_none();
        let on = self
            .environment_guard
            .unwrap_or(token_auth && self.endpoint.counterpart().is_some());
        if !on {
            return Ok(None);
        }
        match self
            .other_endpoint
            .clone()
            .or_else(|| self.endpoint.counterpart())
        {
            Some(e) => Ok(Some(e)),
            None => Err(invalid(format!(
                "apps.{name}.environment_guard needs apps.{name}.other_endpoint: {} is not one of Apple's hosts, so its other environment is not known",
                self.endpoint
            ))),
        }
    }

    /// The proxy this app's connections go through: its own `proxy`, else `global`
    /// (`apns.proxy`), else `HTTPS_PROXY` (unless `NO_PROXY` names the host); `direct`
    /// at either level means none.
    pub fn proxy(
        &self,
        name: &str,
        global: Option<&Secret<String>>,
    ) -> Result<Option<apns::proxy::Proxy>, ConfigError> {
        let (what, url) = match (&self.proxy, global) {
            (Some(p), _) => (format!("apps.{name}.proxy"), p.expose().as_str()),
            (None, Some(p)) => ("apns.proxy".to_string(), p.expose().as_str()),
            (None, None) => {
                return apns::proxy::Proxy::from_env(self.endpoint.host())
                    .map_err(|e| invalid(format!("HTTPS_PROXY: {e}")));
            }
        };
        if url.trim().eq_ignore_ascii_case("direct") {
            return Ok(None);
        }
        url.parse()
            .map(Some)
            .map_err(|e| invalid(format!("{what}: {e}")))
    }

    /// The APNs client's settings of this app, or a sentence that says what to fix.
    /// `apns` gives the settings every app shares (the global proxy).
    pub fn settings(
        &self,
        name: &str,
        apns: &super::ApnsSettings,
    ) -> Result<AppSettings, ConfigError> {
        let mut s = match self.auth(name)? {
            Auth::Token { team_id, keys } => {
                AppSettings::token(self.endpoint.clone(), team_id, keys)
            }
            Auth::Certificate(id) => AppSettings::certificate(self.endpoint.clone(), id),
        };
        s.connections = self.connections;
        s.max_streams_per_connection = self.max_streams_per_connection;
        s.ca_file = self.ca_file.clone();
        s.other_environment = self.guard_endpoint(name)?;
        s.proxy = self.proxy(name, apns.proxy.as_ref())?;
        s.channels_endpoint = self.channels_endpoint.as_ref().map(|e| match e.kind() {
            apns::EndpointKind::Custom => e.clone(),
            _ => e.channel_management(),
        });
        Ok(s)
    }

    /// Check the app's credentials and say how it authenticates.
    pub fn auth(&self, name: &str) -> Result<Auth, ConfigError> {
        let at = |f: &str| format!("apps.{name}.{f}");
        match (&self.certificate, self.keys.is_empty()) {
            (Some(_), false) => Err(invalid(format!(
                "apps.{name}: has both keys (token auth) and a certificate; an app uses one of them"
            ))),
            (None, true) => Err(invalid(format!(
                "apps.{name}: no credentials; add [[apps.{name}.keys]] with team_id (token auth) or [apps.{name}.certificate]"
            ))),
            (None, false) => {
                let team_id = self.team_id.clone().ok_or_else(|| {
                    invalid(format!(
                        "{}: token auth needs the 10-character team id",
                        at("team_id")
                    ))
                })?;
                let mut keys = Vec::new();
                for (i, k) in self.keys.iter().enumerate() {
                    let src = one_source(&at(&format!("keys[{i}]")), &k.key_file, &k.key)?
                        .ok_or_else(|| {
                            invalid(format!(
                                "{}: give key_file (path of the .p8) or key (its PEM text)",
                                at(&format!("keys[{i}]"))
                            ))
                        })?;
                    keys.push(KeySettings {
                        key_id: k.key_id.clone(),
                        key: src,
                        topics: k.topics.clone(),
                    });
                }
                Ok(Auth::Token { team_id, keys })
            }
            (Some(c), true) => {
                let p12 = c.pkcs12_file.clone();
                let cert = one_source(&at("certificate.cert"), &c.cert_file, &c.cert)?;
                let key = one_source(&at("certificate.key"), &c.key_file, &c.key)?;
                match (p12, cert, key) {
                    (Some(file), None, None) => {
                        let password =
                            one_source(&at("certificate.password"), &c.password_file, &c.password)?
                                .unwrap_or(SecretSource::Value(Secret::new(String::new())));
                        Ok(Auth::Certificate(IdentitySource::Pkcs12 {
                            file: SecretSource::File(file),
                            password,
                        }))
                    }
                    (None, Some(certificate), Some(key)) => {
                        Ok(Auth::Certificate(IdentitySource::Pem { certificate, key }))
                    }
                    _ => Err(invalid(format!(
                        "{}: give pkcs12_file (with password), or cert_file/cert and key_file/key",
                        at("certificate")
                    ))),
                }
            }
        }
    }

    /// The topic for a job that names none.
    pub fn default_topic(&self) -> Option<&str> {
        self.default_topic
            .as_deref()
            .or_else(|| self.topics.first().map(String::as_str))
    }

    /// Does this app send to `topic`?
    pub fn serves(&self, topic: &str) -> bool {
        self.topics.iter().any(|b| topic_matches(b, topic))
    }
}

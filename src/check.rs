//! `apns-worker check-config`: the effective configuration with secrets redacted, and
//! the checks that need the files (keys parse, certificates load, CA files read).

use std::sync::Arc;

use std::time::Duration;

use apns::jwt::{SystemClock, TokenPolicy, TokenSigner};
use apns::{Auth, tls};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Broker(String),
    #[error("apps.{app}: {message}")]
    App { app: String, message: String },
    #[error("cannot render the configuration: {0}")]
    Render(String),
}

/// Load every file the config names (the broker URL file, keys, certificates, CA
/// files) as the worker would at start, without connecting anywhere.
pub fn check_credentials(cfg: &Config) -> Result<(), CheckError> {
    cfg.check_apps()?;
    cfg.broker
        .effective_url()
        .map_err(|e| CheckError::Broker(e.to_string()))?;
    cfg.broker
        .tls
        .lapin_config()
        .map_err(|e| CheckError::Broker(e.to_string()))?;
    let policy =
        TokenPolicy::new(Duration::from_secs(cfg.apns.token_refresh_secs)).map_err(|e| {
            CheckError::App {
                app: "*".into(),
                message: e.to_string(),
            }
        })?;
    for (name, app) in &cfg.apps {
        let err = |message: String| CheckError::App {
            app: name.clone(),
            message,
        };
        let identity = match app.auth(name).map_err(|e| err(e.to_string()))? {
            Auth::Token { team_id, keys } => {
                for k in keys {
                    let pem = k
                        .key
                        .load()
                        .map_err(|e| err(format!("key {}: {e}", k.key_id)))?;
                    TokenSigner::new(&team_id, &k.key_id, &pem, policy, Arc::new(SystemClock))
                        .map_err(|e| err(e.to_string()))?;
                }
                None
            }
            Auth::Certificate(id) => Some(id.load().map_err(|e| err(e.to_string()))?),
        };
        tls::client_config(app.ca_file.as_deref(), identity).map_err(|e| err(e.to_string()))?;
    }
    Ok(())
}

/// Print the effective config as TOML (secrets show as `[redacted]`), then check it.
pub fn print_effective(cfg: &Config) -> Result<(), CheckError> {
    let text = toml::to_string_pretty(cfg).map_err(|e| CheckError::Render(e.to_string()))?;
    println!("{text}");
    check_credentials(cfg)?;
    eprintln!("configuration OK: {} app(s)", cfg.apps.len());
    Ok(())
}

/// The device token of a probe: APNs answers 400 BadDeviceToken when the credentials
/// are good (nothing is delivered), 403 when they are not.
pub const PROBE_TOKEN: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Try each app's credentials against its endpoint with one request to a token that
/// cannot exist. Returns one line per app; Err if any app failed.
pub async fn probe(cfg: &Config) -> Result<Vec<String>, Vec<String>> {
    use apns::{ApnsClient, Notification, NotificationParts, Outcome};

    let mut apps = Vec::new();
    for (name, app) in &cfg.apps {
        match app.settings(name, &cfg.apns) {
            Ok(s) => apps.push((name.clone(), s)),
            Err(e) => return Err(vec![e.to_string()]),
        }
    }
    let client = match ApnsClient::start(apps, &cfg.apns.client_settings()) {
        Ok(c) => c,
        Err(e) => return Err(vec![e.to_string()]),
    };
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (name, app) in &cfg.apps {
        let Some(topic) = app.default_topic() else {
            bad.push(format!(
                "apps.{name}: no topic to probe with (set topics or default_topic)"
            ));
            continue;
        };
        let mut parts = NotificationParts::new(
            PROBE_TOKEN,
            topic,
            br#"{"aps":{"alert":"apns-worker credentials probe"}}"#.as_slice(),
        );
        parts.expiration = Some(0);
        parts.apns_id = Some(uuid::Uuid::new_v4());
        let n = Notification::new(parts).expect("probe notification is valid");
        let line = match client.send(name, &n).await {
            Ok(d) => {
                let answer = match &d.response.reason {
                    Some(r) => format!("{} {r}", d.response.status),
                    None => d.response.status.to_string(),
                };
                match d.outcome {
                    Outcome::CredentialsBroken { .. } | Outcome::RefreshToken => Err(format!(
                        "apps.{name}: APNs refuses the credentials ({answer})"
                    )),
                    Outcome::TokenThrottled => Err(format!(
                        "apps.{name}: APNs says the key's provider token changed too often ({answer}): another sender with this key mints its own tokens; the credentials themselves may be fine"
                    )),
                    Outcome::Rejected { .. } => Err(format!(
                        "apps.{name}: credentials accepted, but APNs refuses topic {topic:?} ({answer})"
                    )),
                    _ => Ok(format!(
                        "apps.{name}: credentials accepted by {} ({answer} for the probe token)",
                        app.endpoint
                    )),
                }
            }
            Err(e) => Err(format!("apps.{name}: no answer from {}: {e}", app.endpoint)),
        };
        match line {
            Ok(l) => ok.push(l),
            Err(l) => bad.push(l),
        }
    }
    client.close(std::time::Duration::from_secs(1)).await;
    if bad.is_empty() {
        Ok(ok)
    } else {
        Err(bad.into_iter().chain(ok).collect())
    }
}

//! `apns-worker check-config`: the effective configuration with secrets redacted, and
//! the checks that need the files (keys parse, certificates load, CA files read).

use std::sync::Arc;

use crate::apns::jwt::{SystemClock, TokenSigner};
use crate::apns::tls;
use crate::config::{AuthSpec, Config};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("apps.{app}: {message}")]
    App { app: String, message: String },
    #[error("cannot render the configuration: {0}")]
    Render(String),
}

/// Load every credential the config names, without connecting anywhere.
pub fn check_credentials(cfg: &Config) -> Result<(), CheckError> {
    let policy = cfg.apns.token_policy().map_err(|e| CheckError::App {
        app: "*".into(),
        message: e.to_string(),
    })?;
    for (name, app) in &cfg.apps {
        let err = |message: String| CheckError::App {
            app: name.clone(),
            message,
        };
        let identity = match app.auth(name).map_err(|e| err(e.to_string()))? {
            AuthSpec::Token { team_id, keys } => {
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
            AuthSpec::Certificate(id) => Some(id.load().map_err(|e| err(e.to_string()))?),
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

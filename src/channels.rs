//! `apns-worker channels`: manage an app's Live Activity broadcast channels (create,
//! get, delete, list) with the app's configured credentials; one JSON document on
//! stdout per command.

use apns::channels::{ChannelClient, ChannelError, StoragePolicy};
use apns::{Endpoint, EndpointKind, PushType};
use serde_json::{Value, json};

use crate::config::Config;

/// What to do.
#[derive(Clone, Debug)]
pub enum Action {
    Create(StoragePolicy),
    Get(String),
    Delete(String),
    List,
}

/// Which app, environment and bundle id.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// Default: the only app of the config.
    pub app: Option<String>,
    /// Apple's environment whose management host to use; default the app's own.
    pub environment: Option<EndpointKind>,
    /// Default: the app's default topic without a push-type suffix.
    pub bundle_id: Option<String>,
}

/// Why a channels command failed, by whose fault (the exit code follows it).
#[derive(Debug, thiserror::Error)]
pub enum ChannelCmdError {
    /// The command line does not say enough (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration or the credentials are wrong (exit 3).
    #[error("{0}")]
    Config(String),
    /// APNs refused the request, or it did not complete (exit 1).
    #[error("{0}")]
    Apns(String),
}

/// The bundle id a push topic belongs to: the topic without its push-type suffix.
pub fn bundle_of(topic: &str) -> &str {
    PushType::ALL
        .iter()
        .filter_map(|t| t.topic_suffix())
        .find_map(|s| topic.strip_suffix(s).filter(|b| !b.is_empty()))
        .unwrap_or(topic)
}

/// Carry out one channels command; the JSON to print.
pub async fn run(cfg: &Config, target: &Target, action: Action) -> Result<Value, ChannelCmdError> {
    let name = match &target.app {
        Some(a) => a.clone(),
        None if cfg.apps.len() == 1 => cfg.apps.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(ChannelCmdError::Usage(format!(
                "give --app: the config has {} apps ({})",
                cfg.apps.len(),
                cfg.apps.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let app = cfg.apps.get(&name).ok_or_else(|| {
        ChannelCmdError::Usage(format!("no app named {name:?} in the configuration"))
    })?;
    let mut settings = app
        .settings(&name, &cfg.apns)
        .map_err(|e| ChannelCmdError::Config(e.to_string()))?;
    if let Some(env) = target.environment {
        let apple = match env {
            EndpointKind::Production => Endpoint::production(),
            EndpointKind::Sandbox => Endpoint::sandbox(),
            EndpointKind::Custom => unreachable!("the command line offers production and sandbox"),
        };
        if app.endpoint.kind() == EndpointKind::Custom {
            return Err(ChannelCmdError::Usage(format!(
                "apps.{name} sends to {} (not Apple's hosts): --environment picks Apple's management hosts; leave it out, or set apps.{name}.channels_endpoint",
                app.endpoint
            )));
        }
        settings.channels_endpoint = Some(apple.channel_management());
    }
    let bundle = match &target.bundle_id {
        Some(b) => b.clone(),
        None => app
            .default_topic()
            .map(|t| bundle_of(t).to_string())
            .ok_or_else(|| {
                ChannelCmdError::Usage(format!(
                    "give --bundle-id (apps.{name} has no topics or default_topic)"
                ))
            })?,
    };
    let client = ChannelClient::start(&name, &settings, &cfg.apns.client_settings())
        .map_err(|e| ChannelCmdError::Config(e.to_string()))?;
    let endpoint = client.endpoint().to_string();
    let result = act(&client, &bundle, action).await;
    client.close(std::time::Duration::from_secs(1)).await;
    let mut out = result.map_err(|e| classify_error(&name, &endpoint, e))?;
    if let Value::Object(o) = &mut out {
        o.insert("app".into(), json!(name));
        o.insert("endpoint".into(), json!(endpoint));
        o.insert("bundle_id".into(), json!(bundle));
    }
    Ok(out)
}

async fn act(client: &ChannelClient, bundle: &str, action: Action) -> Result<Value, ChannelError> {
    Ok(match action {
        Action::Create(policy) => json!(client.create(bundle, policy).await?),
        Action::Get(id) => json!(client.get(bundle, &id).await?),
        Action::Delete(id) => {
            let request_id = client.delete(bundle, &id).await?;
            json!({"deleted": id, "request_id": request_id})
        }
        Action::List => {
            let ids = client.list(bundle).await?;
            json!({"count": ids.len(), "channels": ids})
        }
    })
}

fn classify_error(app: &str, endpoint: &str, e: ChannelError) -> ChannelCmdError {
    let text = format!("apps.{app} at {endpoint}: {e}");
    match &e {
        ChannelError::Invalid(_) => ChannelCmdError::Usage(e.to_string()),
        ChannelError::Refused { status: 403, .. } => ChannelCmdError::Config(text),
        _ => ChannelCmdError::Apns(text),
    }
}

#[cfg(test)]
mod tests {
    use super::bundle_of;

    #[test]
    fn bundle_ids_lose_their_push_type_suffix() {
        assert_eq!(
            bundle_of("com.example.app.push-type.liveactivity"),
            "com.example.app"
        );
        assert_eq!(bundle_of("com.example.app.voip"), "com.example.app");
        assert_eq!(bundle_of("com.example.app"), "com.example.app");
        assert_eq!(bundle_of(".voip"), ".voip");
    }
}

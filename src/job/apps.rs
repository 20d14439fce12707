//! The apps a job may name, and which of them sends a job: by name, by topic, or the
//! only one. An app sends to a topic when the topic is one of its topics (or one with a
//! push-type suffix) and its credentials serve it (`apns::Auth::serves`, the same rule
//! the client uses to pick a key).

use std::collections::BTreeMap;

use apns::settings::key_for_topic;
use apns::{Auth, PushType, topic_matches};

use super::JobError;
use crate::config::AppConfig;

/// What the decoder needs to know of each app.
#[derive(Clone, Debug)]
pub struct AppEntry {
    pub name: String,
    pub topics: Vec<String>,
    pub default_topic: Option<String>,
    /// Token auth: the topics of each key (empty: a team-scoped key). `None`:
    /// certificate auth (any topic the app lists).
    pub key_topics: Option<Vec<Vec<String>>>,
}

impl AppEntry {
    fn sends_to(&self, topic: &str) -> bool {
        let listed = self.topics.is_empty() || self.topics.iter().any(|b| topic_matches(b, topic));
        let keyed = match &self.key_topics {
            None => true,
            Some(keys) => key_for_topic(keys.iter().map(Vec::as_slice), topic).is_some(),
        };
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
                let key_topics = match a.auth(name) {
                    Ok(Auth::Token { keys, .. }) => {
                        Some(keys.into_iter().map(|k| k.topics).collect())
                    }
                    _ => None,
                };
                AppEntry {
                    name: name.clone(),
                    topics: a.topics.clone(),
                    default_topic: a.default_topic().map(str::to_owned),
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

    /// The app and topic of a job.
    pub(super) fn resolve(
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

    /// When `topic` is under one of `app`'s topics and ends in a push-type suffix: the
    /// topic without that suffix, and the suffix (`com.example.app.voip`:
    /// `com.example.app`, `.voip`; `com.example.app.watchkitapp.voip`:
    /// `com.example.app.watchkitapp`, `.voip`). `None` otherwise (a listed topic itself,
    /// `com.acme.voip` listed as is, ends in nothing), and in the permissive directory.
    pub(super) fn push_type_topic<'t>(
        &self,
        app: &str,
        topic: &'t str,
    ) -> Option<(&'t str, &'static str)> {
        let entry = self.apps.iter().find(|a| a.name == app)?;
        let base = entry
            .topics
            .iter()
            .filter(|b| topic_matches(b, topic))
            .max_by_key(|b| b.len())?;
        let rest = &topic[base.len()..];
        let suffix = PushType::ALL
            .iter()
            .filter_map(|p| p.topic_suffix())
            .find(|s| rest.ends_with(s))?;
        Some((&topic[..topic.len() - suffix.len()], suffix))
    }

    /// Is `bundle` one of `app`'s listed topics (true when it lists none, or in the
    /// permissive directory)?
    pub(super) fn lists(&self, app: &str, bundle: &str) -> bool {
        match self.apps.iter().find(|a| a.name == app) {
            Some(e) => e.topics.is_empty() || e.topics.iter().any(|t| t == bundle),
            None => true,
        }
    }

    /// The configured app a job names, or the one its topic resolves to, read leniently
    /// from a job that did not decode (for the app label of its metric). `None` when
    /// the body names no configured app.
    pub fn app_hint(&self, body: &[u8]) -> Option<&str> {
        #[derive(serde::Deserialize)]
        struct Hint {
            #[serde(default)]
            app: Option<String>,
            #[serde(default)]
            topic: Option<String>,
        }
        let h: Hint = serde_json::from_slice(body).ok()?;
        let by_name = |n: &str| self.apps.iter().find(|a| a.name == n);
        let entry = match (&h.app, &h.topic) {
            (Some(name), _) => by_name(name),
            (None, Some(t)) => self
                .apps
                .iter()
                .find(|a| a.topics.iter().any(|b| topic_matches(b, t))),
            (None, None) => (self.apps.len() == 1).then(|| &self.apps[0]),
        };
        entry.map(|a| a.name.as_str())
    }
}

//! Credentials that rotate without a restart. On SIGHUP, and whenever the contents of a
//! file an app's credentials come from change (looked at every
//! `apns.credentials_check_secs`; a Kubernetes secret updated in place, which swaps a
//! `..data` link, counts), the configuration is read again and every app whose
//! credentials, endpoint, connections or CA changed gets a new client: new connections
//! use the new key or certificate at once, streams in flight on the old connections
//! finish, then those close. New credentials that cannot be loaded (a missing or
//! corrupt file) leave the current ones in place, with one log line and a metric.
//!
//! What needs a restart: adding or removing an app, an app's topics or default topic,
//! and every setting outside `[apps]`. A reload that sees such a change says so.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::worker::Worker;

/// What one reload did for one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Reloaded,
    /// The new credentials were refused; the sentence says why. The old ones stay.
    Failed(String),
}

/// Remembers what each app's client was built from.
pub struct Reloader {
    path: Option<PathBuf>,
    built: BTreeMap<String, u64>,
    /// The last refused fingerprint per app, so a broken file is reported once.
    refused: BTreeMap<String, u64>,
}

impl Reloader {
    /// Start from the configuration the worker was started with.
    pub fn new(worker: &Worker, path: Option<PathBuf>) -> Reloader {
        let built = worker
            .config()
            .apps
            .iter()
            .filter_map(|(name, app)| {
                let fp = app
                    .settings(name, &worker.config().apns)
                    .ok()?
                    .fingerprint()
                    .ok()?;
                Some((name.clone(), fp))
            })
            .collect();
        Reloader {
            path,
            built,
            refused: BTreeMap::new(),
        }
    }

    /// Read the configuration again and reload every app whose credentials changed.
    pub fn reload(&mut self, worker: &Worker) -> BTreeMap<String, Reloaded> {
        let mut out = BTreeMap::new();
        let cfg = match Config::load(self.path.as_deref(), std::env::vars()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reloading the configuration failed; the current credentials stay");
                worker.metrics().credential_reload("", false);
                out.insert(String::new(), Reloaded::Failed(e.to_string()));
                return out;
            }
        };
        let running = &worker.config().apps;
        for name in running.keys().filter(|n| !cfg.apps.contains_key(*n)) {
            tracing::warn!(app = %name, "an app was removed from the configuration: it keeps running until a restart");
        }
        for (name, app) in &cfg.apps {
            let Some(before) = running.get(name) else {
                tracing::warn!(app = %name, "an app was added to the configuration: it starts with the next restart");
                continue;
            };
            if (&before.topics, &before.default_topic) != (&app.topics, &app.default_topic) {
                tracing::warn!(app = %name, "the app's topics changed: they apply from the next restart");
            }
            let result = self.reload_app(worker, name, app, &cfg.apns);
            match &result {
                Reloaded::Unchanged => {}
                Reloaded::Reloaded => {
                    tracing::info!(app = %name, "the app's credentials were reloaded; new connections use them");
                    worker.metrics().credential_reload(name, true);
                }
                Reloaded::Failed(why) => {
                    tracing::error!(app = %name, error = %why, "the app's new credentials cannot be used; the current ones stay");
                    worker.metrics().credential_reload(name, false);
                }
            }
            out.insert(name.clone(), result);
        }
        out
    }

    fn reload_app(
        &mut self,
        worker: &Worker,
        name: &str,
        app: &crate::config::AppConfig,
        apns: &crate::config::ApnsSettings,
    ) -> Reloaded {
        let settings = match app.settings(name, apns) {
            Ok(s) => s,
            Err(e) => return self.refuse(name, 0, e.to_string()),
        };
        let fp = match settings.fingerprint() {
            Ok(fp) => fp,
            Err(e) => return self.refuse(name, 0, e.to_string()),
        };
        if self.built.get(name) == Some(&fp) || self.refused.get(name) == Some(&fp) {
            return Reloaded::Unchanged;
        }
        match worker.replace_credentials(name, &settings) {
            Ok(()) => {
                self.built.insert(name.to_string(), fp);
                self.refused.remove(name);
                Reloaded::Reloaded
            }
            Err(e) => self.refuse(name, fp, e.to_string()),
        }
    }

    fn refuse(&mut self, name: &str, fp: u64, why: String) -> Reloaded {
        // An unreadable file has no fingerprint: reported every time it is looked at
        // (until fixed), at most once per check interval.
        if fp != 0 && self.refused.insert(name.to_string(), fp) == Some(fp) {
            return Reloaded::Unchanged;
        }
        Reloaded::Failed(why)
    }
}

/// Reload on SIGHUP and when credential files change, until `shutdown`.
pub async fn watch(
    worker: Arc<Worker>,
    path: Option<PathBuf>,
    every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut reloader = Reloader::new(&worker, path);
    tokio::pin!(shutdown);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = hup => tracing::info!("SIGHUP: reloading credentials"),
            _ = tokio::time::sleep(every) => {}
        }
        reloader.reload(&worker);
    }
}

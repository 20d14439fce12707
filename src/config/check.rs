//! The checks of a loaded configuration that need neither the network nor the files'
//! contents: ranges, names, and that every app's credentials are complete.

use std::time::Duration;

use super::{Config, ConfigError, invalid};

impl Config {
    /// A worker needs an app to send with: with none, every job would be
    /// dead-lettered as InvalidJob. `worker.allow_no_apps` says that is intended.
    pub fn check_apps(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() && !self.worker.allow_no_apps {
            return Err(invalid(
                "no app is configured, so every job would be dead-lettered as InvalidJob: add an [apps.<name>] section with its credentials (or set worker.allow_no_apps = true for a broker-only smoke test)",
            ));
        }
        Ok(())
    }

    /// Every check that does not need the network or the files' contents.
    pub fn check(&self) -> Result<(), ConfigError> {
        let b = &self.broker;
        if b.heartbeat_secs == 0 {
            return Err(invalid(
                "broker.heartbeat_secs must be above 0: a dead broker connection must be noticed",
            ));
        }
        if b.prefetch == 0 {
            return Err(invalid("broker.prefetch must be above 0"));
        }
        if b.reconnect_min_ms == 0 || b.reconnect_max_ms < b.reconnect_min_ms {
            return Err(invalid(
                "broker.reconnect_min_ms must be above 0 and at most broker.reconnect_max_ms",
            ));
        }
        if b.confirm_timeout_ms < 100 {
            return Err(invalid(
                "broker.confirm_timeout_ms must be at least 100: a quorum queue confirms only after a majority of its nodes wrote the message",
            ));
        }
        if b.url_file.is_none() {
            b.effective_url()?;
        }
        let q = &self.queues;
        for (name, v) in [
            ("queues.jobs", &q.jobs),
            ("queues.dead_letter_exchange", &q.dead_letter_exchange),
            ("queues.dead_letter_queue", &q.dead_letter_queue),
            ("queues.cleanup_exchange", &q.cleanup_exchange),
            ("queues.environment_exchange", &q.environment_exchange),
            ("queues.retry_prefix", &q.retry_prefix),
        ] {
            if v.is_empty() || v.len() > 200 {
                return Err(invalid(format!(
                    "{name} must be a name of 1 to 200 characters"
                )));
            }
        }
        if q.outcomes && (q.outcome_exchange.is_empty() || q.outcome_exchange.len() > 200) {
            return Err(invalid(
                "queues.outcome_exchange must be a name of 1 to 200 characters when queues.outcomes is on",
            ));
        }
        if q.shards == 0 || q.shards > 64 {
            return Err(invalid(
                "queues.shards must be 1 to 64 (the number of job queues the jobs are spread over)",
            ));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(invalid("retry.max_attempts must be at least 1"));
        }
        if r.base_delay_ms == 0 || r.max_delay_ms < r.base_delay_ms || r.park_delay_ms == 0 {
            return Err(invalid(
                "retry.base_delay_ms and retry.park_delay_ms must be above 0, and retry.max_delay_ms at least retry.base_delay_ms",
            ));
        }
        let w = &self.worker;
        if w.ack_batch == 0 || w.ack_flush_ms == 0 {
            return Err(invalid(
                "worker.ack_batch and worker.ack_flush_ms must be above 0",
            ));
        }
        if w.max_job_bytes < 1024 {
            return Err(invalid("worker.max_job_bytes must be at least 1024"));
        }
        if w.max_tokens_per_job == 0 || w.max_tokens_per_job > 100_000 {
            return Err(invalid("worker.max_tokens_per_job must be 1 to 100000"));
        }
        if !self.queues.urgent.is_empty() && w.urgent_reserved >= w.max_notifications_in_flight {
            return Err(invalid(
                "worker.urgent_reserved must be below worker.max_notifications_in_flight (the bulk lane needs some)",
            ));
        }
        if w.max_notifications_in_flight == 0 {
            return Err(invalid(
                "worker.max_notifications_in_flight must be at least 1 (it bounds sends in flight)",
            ));
        }
        self.admin.addr()?;
        if self.admin.max_connections == 0 || self.admin.header_read_timeout_ms == 0 {
            return Err(invalid(
                "admin.max_connections and admin.header_read_timeout_ms must be above 0",
            ));
        }
        if self.circuit.open_ms == 0 || self.circuit.max_open_ms < self.circuit.open_ms {
            return Err(invalid(
                "circuit.open_ms must be above 0 and at most circuit.max_open_ms",
            ));
        }
        let a = &self.apns;
        if a.request_timeout_ms == 0 || a.send_timeout_ms == 0 {
            return Err(invalid(
                "apns.request_timeout_ms and apns.send_timeout_ms must be above 0",
            ));
        }
        if a.reconnect_min_ms == 0 || a.reconnect_max_ms < a.reconnect_min_ms {
            return Err(invalid(
                "apns.reconnect_min_ms must be above 0 and at most apns.reconnect_max_ms (never a tight reconnect loop)",
            ));
        }
        if a.ping_interval_secs == 0 || a.ping_timeout_secs == 0 {
            return Err(invalid(
                "apns.ping_interval_secs and apns.ping_timeout_secs must be above 0",
            ));
        }
        apns::jwt::TokenPolicy::new(Duration::from_secs(a.token_refresh_secs))
            .map_err(|e| invalid(format!("apns.token_refresh_secs: {e}")))?;
        for (name, app) in &self.apps {
            if app.connections == 0 || app.connections > 64 {
                return Err(invalid(format!("apps.{name}.connections must be 1 to 64")));
            }
            if app.max_streams_per_connection == 0 {
                return Err(invalid(format!(
                    "apps.{name}.max_streams_per_connection must be above 0"
                )));
            }
            if let Some(t) = &app.default_topic {
                if !app.topics.is_empty() && !app.serves(t) {
                    return Err(invalid(format!(
                        "apps.{name}.default_topic {t:?} is not one of its topics"
                    )));
                }
            }
            app.guard_endpoint(name)?;
            app.proxy(name, self.apns.proxy.as_ref())?;
            if let apns::Auth::Token { keys, .. } = app.auth(name)? {
                let scoped = keys.iter().filter(|k| k.topics.is_empty()).count();
                if scoped > 1 {
                    return Err(invalid(format!(
                        "apps.{name}: {scoped} team-scoped keys (keys without topics); keep one, or give each its topics"
                    )));
                }
            }
        }
        Ok(())
    }
}

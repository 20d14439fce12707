//! `apns-worker topology`: the worker's topology ([`crate::amqp::topology_plan`]) as
//! objects of RabbitMQ's Messaging Topology Operator (`rabbitmq.com/v1beta1` Queue,
//! Exchange, Binding), for clusters where the worker does not declare
//! (`queues.declare = false`) and the operator owns the topology. Pure: config in,
//! a Kubernetes `List` out.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::amqp::{Argument, Declaration};

/// Where the objects go: the `RabbitmqCluster` they name and the vhost.
#[derive(Clone, Debug)]
pub struct Target {
    /// `metadata.name` of the `RabbitmqCluster`.
    pub cluster: String,
    /// Its namespace, when not the objects' own.
    pub cluster_namespace: Option<String>,
    /// The objects' namespace (else kubectl's current one).
    pub namespace: Option<String>,
    pub vhost: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(
        "two of the topology's names become the same Kubernetes object name {0:?}: rename one queue or exchange in [queues] (object names are lowercase letters, digits, '-' and '.')"
    )]
    NameClash(String),
}

/// A Kubernetes object name (DNS subdomain: lowercase alphanumerics, '-' and '.', at
/// most 253 characters, alphanumeric at both ends) for `kind` and a RabbitMQ name.
pub fn object_name(kind: &str, name: &str) -> String {
    let mut s: String = format!("{kind}.{name}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    s.truncate(253);
    s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn argument(v: &Argument) -> Value {
    match v {
        Argument::Text(s) => json!(s),
        Argument::Int(n) => json!(n),
    }
}

/// The objects for `plan`, as one `v1` `List` (what `kubectl apply -f` takes).
pub fn objects(plan: &[Declaration], target: &Target) -> Result<Value, OperatorError> {
    let mut cluster = json!({ "name": target.cluster });
    if let Some(ns) = &target.cluster_namespace {
        cluster["namespace"] = json!(ns);
    }
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for d in plan {
        let (kind, name, spec) = match d {
            Declaration::Exchange { name, kind } => (
                "Exchange",
                object_name("exchange", name),
                json!({
                    "name": name,
                    "type": kind.name(),
                    "durable": true,
                    "autoDelete": false,
                }),
            ),
            Declaration::Queue { name, arguments } => {
                // The operator sets x-queue-type from `type` (and refuses to change it).
                let mut args = Map::new();
                let mut queue_type = None;
                for (k, v) in arguments {
                    if *k == "x-queue-type" {
                        queue_type = Some(argument(v));
                    } else {
                        args.insert((*k).to_string(), argument(v));
                    }
                }
                let mut spec = json!({
                    "name": name,
                    "durable": true,
                    "autoDelete": false,
                    "arguments": args,
                });
                if let Some(t) = queue_type {
                    spec["type"] = t;
                }
                ("Queue", object_name("queue", name), spec)
            }
            Declaration::Binding {
                queue,
                exchange,
                routing_key,
            } => (
                "Binding",
                object_name("binding", &format!("{exchange}.{queue}")),
                json!({
                    "source": exchange,
                    "destination": queue,
                    "destinationType": "queue",
                    "routingKey": routing_key,
                }),
            ),
        };
        if !seen.insert((kind, name.clone())) {
            return Err(OperatorError::NameClash(name));
        }
        let mut spec = spec;
        spec["vhost"] = json!(target.vhost);
        spec["rabbitmqClusterReference"] = cluster.clone();
        let mut metadata = json!({
            "name": name,
            "labels": { "app.kubernetes.io/part-of": "apns-worker" },
        });
        if let Some(ns) = &target.namespace {
            metadata["namespace"] = json!(ns);
        }
        items.push(json!({
            "apiVersion": "rabbitmq.com/v1beta1",
            "kind": kind,
            "metadata": metadata,
            "spec": spec,
        }));
    }
    Ok(json!({ "apiVersion": "v1", "kind": "List", "items": items }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::topology_plan as plan;
    use crate::config::{QueueSettings, QueueType, RetrySettings};

    fn target() -> Target {
        Target {
            cluster: "rabbit".into(),
            cluster_namespace: Some("brokers".into()),
            namespace: None,
            vhost: "/push".into(),
        }
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        for (kind, name, want) in [
            ("queue", "apns.jobs", "queue.apns.jobs"),
            ("queue", "Apns_Jobs", "queue.apns-jobs"),
            (
                "exchange",
                "apns.token-cleanup",
                "exchange.apns.token-cleanup",
            ),
            ("queue", "-", "queue"),
        ] {
            assert_eq!(object_name(kind, name), want);
        }
        assert_eq!(object_name("queue", &"x".repeat(400)).len(), 253);
    }

    #[test]
    fn every_declaration_becomes_one_object_with_the_same_arguments() {
        let q = QueueSettings::default();
        let r = RetrySettings::default();
        let p = plan(&q, &r);
        let list = objects(&p, &target()).unwrap();
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), p.len());
        for (d, o) in p.iter().zip(items) {
            assert_eq!(o["apiVersion"], "rabbitmq.com/v1beta1");
            assert_eq!(o["spec"]["vhost"], "/push");
            assert_eq!(o["spec"]["rabbitmqClusterReference"]["name"], "rabbit");
            assert_eq!(
                o["spec"]["rabbitmqClusterReference"]["namespace"],
                "brokers"
            );
            match d {
                Declaration::Queue { name, arguments } => {
                    assert_eq!(o["kind"], "Queue");
                    assert_eq!(o["spec"]["name"], name.as_str());
                    assert_eq!(o["spec"]["durable"], true);
                    assert_eq!(o["spec"]["type"], "quorum");
                    let args = o["spec"]["arguments"].as_object().unwrap();
                    assert_eq!(args.len(), arguments.len() - 1, "all but x-queue-type");
                    for (k, v) in arguments.iter().filter(|(k, _)| *k != "x-queue-type") {
                        assert_eq!(args[*k], argument(v), "{name} {k}");
                    }
                }
                Declaration::Exchange { name, kind } => {
                    assert_eq!(o["kind"], "Exchange");
                    assert_eq!(o["spec"]["name"], name.as_str());
                    assert_eq!(o["spec"]["type"], kind.name());
                }
                Declaration::Binding {
                    queue,
                    exchange,
                    routing_key,
                } => {
                    assert_eq!(o["kind"], "Binding");
                    assert_eq!(o["spec"]["source"], exchange.as_str());
                    assert_eq!(o["spec"]["destination"], queue.as_str());
                    assert_eq!(o["spec"]["routingKey"], routing_key.as_str());
                }
            }
        }
        // The jobs queue: dead letters to the dead-letter exchange, a delivery limit.
        let jobs = items
            .iter()
            .find(|o| o["spec"]["name"] == q.jobs.as_str() && o["kind"] == "Queue")
            .unwrap();
        assert_eq!(
            jobs["spec"]["arguments"]["x-dead-letter-exchange"],
            q.dead_letter_exchange.as_str()
        );
        assert_eq!(
            jobs["spec"]["arguments"]["x-delivery-limit"],
            i64::from(q.delivery_limit)
        );
    }

    #[test]
    fn classic_queues_carry_no_quorum_arguments() {
        let q = QueueSettings {
            jobs_type: QueueType::Classic,
            ..QueueSettings::default()
        };
        let list = objects(&plan(&q, &RetrySettings::default()), &target()).unwrap();
        for o in list["items"].as_array().unwrap() {
            if o["kind"] == "Queue" {
                assert_eq!(o["spec"]["type"], "classic");
                let args = o["spec"]["arguments"].as_object().unwrap();
                assert!(!args.contains_key("x-delivery-limit"));
                assert!(!args.contains_key("x-dead-letter-strategy"));
            }
        }
    }

    #[test]
    fn names_that_meet_after_cleaning_are_refused() {
        let q = QueueSettings {
            cleanup_queue: "apns.jobs.dead_letters".into(),
            dead_letter_queue: "apns.jobs.dead-letters".into(),
            ..QueueSettings::default()
        };
        let err = objects(&plan(&q, &RetrySettings::default()), &target()).unwrap_err();
        assert!(
            err.to_string().contains("queue.apns.jobs.dead-letters"),
            "{err}"
        );
    }
}

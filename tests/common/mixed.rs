//! The mixed run of the reliability tests: job i's body and the terminal state it must
//! reach (delivered, cleaned up, dead-lettered, delivered after a 503), the mock's rules
//! for it, and the reconciliation of a run from the mock's record and the queues.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use apns_mock::TokenRule;
use serde_json::json;

use super::broker::Got;
use super::{TOPIC, rule, token};

/// Job i of a mixed run: its body and the terminal state it must reach.
pub fn mixed_job(i: u64) -> (String, &'static str) {
    let (prefix, want) = match i % 20 {
        0 => ("dead", "cleanup"),
        1 => ("b400", "dead"),
        2 => ("c503", "delivered"),
        _ => ("0a", "delivered"),
    };
    let t = token(prefix, i);
    (json!({"id": format!("j{i}"), "device_token": t, "topic": TOPIC, "payload": {"aps": {"alert": "hi"}}}).to_string(), want)
}

pub fn mixed_rules() -> Vec<TokenRule> {
    vec![
        rule("dead", 410, "Unregistered", None),
        rule("b400", 400, "BadCollapseId", None),
        rule("c503", 503, "ServiceUnavailable", Some(1)),
    ]
}

/// Index of a job from its device token (the last 16 hex digits).
pub fn index_of(token: &str) -> u64 {
    u64::from_str_radix(&token[48..], 16).unwrap()
}

/// Every job reached exactly the terminal state it should; duplicates of delivery are
/// returned (the number of extra 200s the mock gave for the same job).
pub fn reconcile(n: u64, mock: &apns_mock::MockApns, cleanups: &[Got], dead: &[Got]) -> u64 {
    let (wrong, dups) = states(n, mock, cleanups, dead);
    assert!(
        wrong.is_empty(),
        "{} jobs in the wrong state, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    dups
}

/// The jobs not (yet) in their terminal state, and the duplicate deliveries.
pub fn states(
    n: u64,
    mock: &apns_mock::MockApns,
    cleanups: &[Got],
    dead: &[Got],
) -> (Vec<String>, u64) {
    let mut delivered = BTreeMap::<u64, u64>::new();
    let mut seen = BTreeMap::<u64, Vec<String>>::new();
    for r in mock.received() {
        seen.entry(index_of(&r.device_token))
            .or_default()
            .push(format!("{}:{}", r.action, r.status));
        if r.status == 200 && r.action == "answered" {
            *delivered.entry(index_of(&r.device_token)).or_default() += 1;
        }
    }
    let cleaned: BTreeSet<u64> = cleanups
        .iter()
        .map(|e| index_of(e.json()["device_token"].as_str().unwrap()))
        .collect();
    let dead_ids: BTreeSet<u64> = dead
        .iter()
        .map(|d| d.json()["id"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    let mut wrong = Vec::new();
    for i in 0..n {
        let (_, want) = mixed_job(i);
        let got = (
            delivered.contains_key(&i),
            cleaned.contains(&i),
            dead_ids.contains(&i),
        );
        let ok = match want {
            "delivered" => got == (true, false, false),
            "cleanup" => got == (false, true, false),
            "dead" => got == (false, false, true),
            _ => unreachable!(),
        };
        if !ok {
            wrong.push(format!(
                "job {i}: want {want}, got (delivered, cleanup, dead) = {got:?}; APNs saw {:?}",
                seen.get(&i)
            ));
        }
    }
    (wrong, delivered.values().map(|c| c - 1).sum())
}

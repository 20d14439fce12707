//! Parse tests of the configuration: defaults, the environment overlay, and every
//! mistake reported with what to fix.

use super::*;
use apns::Endpoint;

const FULL: &str = r#"
[apns]
request_timeout_ms = 5000
send_timeout_ms = 20000

[apps.shop]
endpoint = "sandbox"
topics = ["com.example.shop"]
team_id = "TEAM123456"
connections = 3
[[apps.shop.keys]]
key_id = "KEY1234567"
key_file = "/secrets/AuthKey_KEY1234567.p8"

[apps.bank]
endpoint = "https://127.0.0.1:8443"
topics = ["com.example.bank"]
ca_file = "/tmp/mock-ca.pem"
[apps.bank.certificate]
pkcs12_file = "/secrets/bank.p12"
password = "hunter2"
"#;

#[test]
fn parses_a_full_file_with_defaults_filled_in() {
    let c = Config::from_toml(FULL, "test").unwrap();
    assert_eq!(c.apns.request_timeout_ms, 5000);
    assert_eq!(c.queues.jobs, "apns.jobs");
    assert_eq!(c.queues.jobs_type, QueueType::Quorum);
    assert_eq!(c.queues.shards, 1, "one job queue unless told");
    assert_eq!(c.broker.prefetch, 2000);
    assert_eq!(c.apns.ping_interval_secs, 60, "default");
    let shop = &c.apps["shop"];
    assert_eq!(shop.endpoint, Endpoint::sandbox());
    assert_eq!(shop.connections, 3);
    assert_eq!(shop.max_streams_per_connection, 1000);
    assert_eq!(shop.default_topic(), Some("com.example.shop"));
    assert!(
        matches!(shop.auth("shop").unwrap(), apns::Auth::Token { ref keys, .. } if keys.len() == 1)
    );
    assert!(matches!(
        c.apps["bank"].auth("bank").unwrap(),
        apns::Auth::Certificate(apns::IdentitySource::Pkcs12 { .. })
    ));
}

#[test]
fn defaults_are_documented_values() {
    let d = ApnsSettings::default();
    assert_eq!(d.token_refresh_secs, 3000);
    assert_eq!((d.ping_interval_secs, d.ping_timeout_secs), (60, 10));
    assert!(Config::default().check().is_ok());
}

#[test]
fn environment_overrides_every_setting() {
    let env = vec![
        (
            "APNS_WORKER__APNS__REQUEST_TIMEOUT_MS".to_string(),
            "2500".to_string(),
        ),
        (
            "APNS_WORKER__APPS__SHOP__CONNECTIONS".to_string(),
            "5".to_string(),
        ),
        (
            "APNS_WORKER__APPS__SHOP__TOPICS".to_string(),
            r#"["com.x.y"]"#.to_string(),
        ),
        (
            "APNS_WORKER__APPS__SHOP__TEAM_ID".to_string(),
            "TEAM999999".to_string(),
        ),
        ("UNRELATED".to_string(), "1".to_string()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, FULL).unwrap();
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(c.apns.request_timeout_ms, 2500);
    assert_eq!(c.apps["shop"].connections, 5);
    assert_eq!(c.apps["shop"].topics, vec!["com.x.y".to_string()]);
    assert_eq!(c.apps["shop"].team_id.as_deref(), Some("TEAM999999"));
}

#[test]
fn mistakes_are_reported_with_what_to_fix() {
    let rows: &[(&str, &str)] = &[
        ("[apns]\nrequest_timeoutms = 1", "unknown field"),
        (
            "[apns]\ntoken_refresh_secs = 4000",
            "apns.token_refresh_secs",
        ),
        ("[apns]\nsend_timeout_ms = 0", "send_timeout_ms"),
        ("[apns]\nreconnect_min_ms = 0", "tight reconnect"),
        ("[broker]\nurl = \"http://x\"", "amqp://"),
        ("[broker]\nheartbeat_secs = 0", "heartbeat"),
        (
            "[broker]\nconfirm_timeout_ms = 0",
            "confirm_timeout_ms must be at least 100",
        ),
        ("[retry]\nmax_attempts = 0", "max_attempts"),
        ("[queues]\njobs_type = \"stream\"", "unknown variant"),
        ("[queues]\nshards = 0", "queues.shards must be 1 to 64"),
        ("[queues]\nshards = 65", "queues.shards must be 1 to 64"),
        ("[apps.a]\nendpoint = \"prod\"", "production"),
        ("[apps.a]\nendpoint = \"sandbox\"", "no credentials"),
        (
            "[apps.a]\nendpoint = \"sandbox\"\n[[apps.a.keys]]\nkey_id = \"K\"\nkey_file = \"/k\"",
            "team id",
        ),
        (
            "[apps.a]\nendpoint = \"sandbox\"\nteam_id = \"T\"\n[[apps.a.keys]]\nkey_id = \"K\"",
            "key_file",
        ),
        (
            "[apps.a]\nendpoint = \"sandbox\"\n[apps.a.certificate]\ncert_file = \"/c\"",
            "pkcs12_file",
        ),
        (
            "[apps.a]\nendpoint = \"sandbox\"\nconnections = 0\n[apps.a.certificate]\npkcs12_file = \"/c\"",
            "connections",
        ),
    ];
    for (text, want) in rows {
        let e = Config::from_toml(text, "t").unwrap_err().to_string();
        assert!(e.contains(want), "{text:?}: {e:?} lacks {want:?}");
    }
}

#[test]
fn broker_url_gets_a_heartbeat_and_stays_secret() {
    let c = Config::from_toml(
        "[broker]\nurl = \"amqp://u:pw@h:5672/%2f\"\nheartbeat_secs = 15",
        "t",
    )
    .unwrap();
    assert_eq!(
        c.broker.effective_url().unwrap().expose(),
        "amqp://u:pw@h:5672/%2f?heartbeat=15"
    );
    assert!(!format!("{:?}", c.broker).contains("pw"));
}

#[test]
fn several_broker_urls_are_tried_in_order_and_each_is_checked() {
    let c = Config::from_toml(
        "[broker]\nurl = \"amqp://u:pw@rmq-0:5672/%2f amqp://u:pw@rmq-1:5673/%2f\\n  amqp://u:pw@rmq-2/%2f?heartbeat=5\"\nheartbeat_secs = 15",
        "t",
    )
    .unwrap();
    let urls: Vec<String> = c
        .broker
        .effective_urls()
        .unwrap()
        .iter()
        .map(|u| u.expose().clone())
        .collect();
    assert_eq!(
        urls,
        [
            "amqp://u:pw@rmq-0:5672/%2f?heartbeat=15",
            "amqp://u:pw@rmq-1:5673/%2f?heartbeat=15",
            "amqp://u:pw@rmq-2/%2f?heartbeat=5",
        ]
    );
    let nodes: Vec<String> = c
        .broker
        .nodes()
        .iter()
        .map(|(h, p)| format!("{h}:{p}"))
        .collect();
    assert_eq!(nodes, ["rmq-0:5672", "rmq-1:5673", "rmq-2:5672"]);
    assert_eq!(c.broker.effective_url().unwrap().expose(), &urls[0]);
    // A bad one among several is named by its place, never quoted.
    for (url, want) in [
        (
            "amqp://u:pw@a/%2f http://u:pw@b/",
            "broker.url (URL 2 of 2) must start with amqp://",
        ),
        (
            "amqp://u:pw@a/%2f amqp://u:pw@[bad",
            "broker.url (URL 2 of 2) does not parse",
        ),
        ("  ", "broker.url is empty"),
    ] {
        let e = Config::from_toml(&format!("[broker]\nurl = \"{url}\""), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{url}: {e}");
        assert!(!e.contains("pw"), "{e}");
    }
}

#[test]
fn secrets_never_print() {
    let c = Config::from_toml(FULL, "t").unwrap();
    let shown = format!("{c:?} {}", toml::to_string(&c).unwrap());
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn a_broker_url_that_does_not_parse_fails_without_printing_it() {
    for url in ["amqp://u:pw@[bad", "amqp://u:pw@host:notaport/%2f"] {
        let e = Config::from_toml(&format!("[broker]\nurl = \"{url}\""), "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not parse as an AMQP URL"), "{url}: {e}");
        assert!(!e.contains("pw"), "the password leaked: {e}");
    }
}

#[test]
fn a_wrong_environment_variable_is_named() {
    let env = vec![
        (
            "APNS_WORKER__WORKER__ACK_BATCH".to_string(),
            "64".to_string(),
        ),
        (
            "APNS_WORKER__BROKER__PREFETCH".to_string(),
            "lots".to_string(),
        ),
    ];
    let e = Config::load(None, env).unwrap_err().to_string();
    assert!(
        e.starts_with("environment variable APNS_WORKER__BROKER__PREFETCH:"),
        "{e}"
    );
    assert!(!e.contains("<defaults>"), "{e}");
}

#[test]
fn a_rule_broken_by_an_environment_variable_names_it() {
    for (var, value, says) in [
        ("APNS_WORKER__BROKER__PREFETCH", "0", "broker.prefetch"),
        (
            "APNS_WORKER__APNS__TOKEN_REFRESH_SECS",
            "100",
            "apns.token_refresh_secs",
        ),
    ] {
        let e = Config::load(None, vec![(var.to_string(), value.to_string())])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("environment variable {var}: {says}")),
            "{e}"
        );
    }
    // Set in the file, the same rule names the setting only.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[broker]\nprefetch = 0\n").unwrap();
    let e = Config::load(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("config: broker.prefetch"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_in_the_file_is_not_called_bad_toml() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    for (text, says) in [
        (
            "[broker]\nprefetch = \"lots\"\n",
            "expected a whole number from 0 to 65535",
        ),
        ("[broker]\nprefetch = 70000\n", "65535"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = Config::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(!e.contains("not valid TOML"), "{e}");
        assert!(!e.contains("u16"), "{e}");
        assert!(e.contains(says) && e.contains("broker.prefetch"), "{e}");
    }
    std::fs::write(&file, "[broker\nprefetch = 1\n").unwrap();
    let e = Config::load(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid TOML"), "{e}");
}

#[test]
fn channels_are_managed_on_the_management_host_of_the_environment() {
    let c = Config::from_toml(FULL, "test").unwrap();
    let settings = |c: &Config, app: &str| c.apps[app].settings(app, &c.apns).unwrap();
    let shop = settings(&c, "shop").channel_endpoint();
    assert_eq!(
        (shop.host(), shop.port()),
        ("api-manage-broadcast.sandbox.push.apple.com", 2195),
        "default: the sandbox's management host"
    );
    let bank = settings(&c, "bank").channel_endpoint();
    assert_eq!(
        (bank.host(), bank.port()),
        ("127.0.0.1", 8443),
        "a custom endpoint manages its own"
    );
    let text = FULL.replace(
        "connections = 3",
        "connections = 3\nchannels_endpoint = \"production\"",
    );
    let c = Config::from_toml(&text, "test").unwrap();
    let shop = settings(&c, "shop").channel_endpoint();
    assert_eq!(
        (shop.host(), shop.port()),
        ("api-manage-broadcast.push.apple.com", 2196),
        "production names Apple's management host, not the sending host"
    );
    let bad = FULL.replace(
        "connections = 3",
        "connections = 3\nchannels_endpoint = \"ftp://x\"",
    );
    let e = Config::from_toml(&bad, "test").unwrap_err().to_string();
    assert!(e.contains("channels_endpoint"), "{e}");
}

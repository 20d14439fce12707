//! The deployment files: the Helm chart lints, renders and validates against the
//! Kubernetes schemas, its config parses as the worker's config; the compose file
//! validates against the Compose Specification; the Dockerfile parses and runs as non-root.

mod common;

use std::process::Command;

use apns_worker::config::Config;
use common::tools::{self, root};
use serde_json::Value;

const LIMITS: apns_worker::job::Limits = apns_worker::job::Limits {
    max_bytes: 131_072,
    max_tokens: 1000,
};

fn render(values: &[&str], set: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(tools::helm());
    cmd.arg("template")
        .arg("apns")
        .arg(root().join("helm/apns-worker"));
    for v in values {
        cmd.arg("-f")
            .arg(root().join("helm/apns-worker/ci").join(v));
    }
    for s in set {
        cmd.arg("--set").arg(s);
    }
    tools::run(&mut cmd)
}

/// The rendered config.toml as the pod reads it: with the broker URL from its Secret.
fn parse_rendered(text: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    let env = [(
        "APNS_WORKER__BROKER__URL".to_string(),
        "amqps://apns:pw@rabbitmq.messaging:5671/%2f".to_string(),
    )];
    Config::load(Some(&file), env).map_err(|e| e.to_string())
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn the_helm_chart_lints_renders_and_validates() {
    let chart = root().join("helm/apns-worker");
    for values in [
        vec!["minimal-values.yaml"],
        vec!["full-values.yaml"],
        vec!["hpa-values.yaml"],
    ] {
        let mut lint = Command::new(tools::helm());
        lint.arg("lint").arg("--strict").arg(&chart);
        for v in &values {
            lint.arg("-f").arg(chart.join("ci").join(v));
        }
        tools::run_ok(&mut lint);
        let out = render(&values, &[]);
        assert!(
            out.status.success(),
            "{values:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("manifests.yaml");
        std::fs::write(&file, &text).unwrap();
        let report = tools::run_ok(
            Command::new(tools::venv_bin("kubernetes-validate"))
                .args(["--strict", "-k", "1.30.0"])
                .arg(&file),
        );
        assert!(!report.contains("ERROR"), "{report}");

        let docs = tools::yaml_docs(&text);
        let config = kind(&docs, "ConfigMap").unwrap()["data"]["config.toml"]
            .as_str()
            .unwrap();
        let cfg = parse_rendered(config).unwrap_or_else(|e| panic!("{values:?}: {e}\n{config}"));
        let d = kind(&docs, "Deployment").unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > cfg.worker.drain_secs);
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "APNS_WORKER__BROKER__URL"
                    && e["valueFrom"]["secretKeyRef"].is_object())
        );
        assert!(kind(&docs, "Service").is_some());
        assert!(kind(&docs, "PodDisruptionBudget").is_some());
        // Every key and certificate file the config names is mounted from its Secret.
        for app in cfg.apps.values() {
            let files: Vec<String> = app
                .keys
                .iter()
                .filter_map(|k| k.key_file.clone())
                .chain(
                    app.certificate
                        .iter()
                        .flat_map(|c| {
                            [
                                c.pkcs12_file.clone(),
                                c.cert_file.clone(),
                                c.key_file.clone(),
                            ]
                        })
                        .flatten(),
                )
                .map(|p| p.display().to_string())
                .collect();
            for f in files {
                assert!(
                    c["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| f.starts_with(m["mountPath"].as_str().unwrap())),
                    "{f} is not mounted"
                );
            }
        }
        match values.first().copied() {
            Some("full-values.yaml") => {
                let so = kind(&docs, "ScaledObject").expect("KEDA ScaledObject");
                assert_eq!(so["spec"]["triggers"][0]["type"], "rabbitmq");
                assert_eq!(
                    so["spec"]["triggers"][0]["metadata"]["queueName"],
                    "apns.jobs"
                );
                assert_eq!(so["spec"]["triggers"][0]["metadata"]["mode"], "QueueLength");
                assert!(kind(&docs, "TriggerAuthentication").is_some());
                assert!(kind(&docs, "ServiceMonitor").is_some());
                assert!(
                    d["spec"].get("replicas").is_none(),
                    "the autoscaler owns replicas"
                );
                assert_eq!(cfg.apps.len(), 4);
                // A dotted app name is one app (a quoted TOML key), not a nested table.
                assert!(cfg.apps.contains_key("shop.eu"), "{config}");
                assert_eq!(cfg.worker.threads, 2);
                assert_eq!(d["metadata"]["name"], "apns-push", "nameOverride");
                // Dotted Secret names become valid volume names (DNS labels).
                for v in pod["volumes"].as_array().unwrap() {
                    let name = v["name"].as_str().unwrap();
                    assert!(is_dns_label(name), "{name} is not a valid volume name");
                }
                assert!(
                    pod["volumes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|v| v["secret"]["secretName"] == "apns.shop-eu.key")
                );
                assert!(
                    c["env"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["name"] == "APNS_WORKER__APNS__PROXY"
                            && e["valueFrom"]["secretKeyRef"]["name"] == "egress-proxy")
                );
                let tls = cfg
                    .broker
                    .tls
                    .ca_file
                    .as_ref()
                    .unwrap()
                    .display()
                    .to_string();
                assert!(tls.starts_with("/etc/apns-worker/secrets/rabbitmq-client.tls/"));
            }
            Some("hpa-values.yaml") => assert!(kind(&docs, "HorizontalPodAutoscaler").is_some()),
            _ => {
                assert_eq!(d["spec"]["replicas"], 2);
                // Threads follow the CPU limit when not set.
                assert_eq!(cfg.worker.threads, 1);
                assert_eq!(
                    kind(&docs, "PodDisruptionBudget").unwrap()["spec"]["unhealthyPodEvictionPolicy"],
                    "AlwaysAllow",
                    "unready pods (the broker down) must not block node drains"
                );
            }
        }
    }
}

/// Is `name` a DNS label (RFC 1123), as Kubernetes requires of volume names?
fn is_dns_label(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// Every setting under `v` as a dotted path; apps' names become `*`, arrays of tables
/// `[]`.
fn setting_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let k = if prefix == "apps" { "*" } else { k.as_str() };
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                match x {
                    Value::Object(_) => setting_paths(x, &path, out),
                    Value::Array(a) if a.first().is_some_and(Value::is_object) => {
                        for t in a {
                            setting_paths(t, &format!("{path}[]"), out);
                        }
                    }
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
        _ => unreachable!("settings are tables"),
    }
}

/// The chart README says every worker setting can be set from values: the settings the
/// worker knows (its config, serialised with every optional field) against what the
/// chart renders into config.toml and the environment, over the CI values files.
#[test]
fn every_worker_setting_is_reachable_from_values() {
    use apns_worker::config::{AppConfig, CertificateConfig, KeyConfig};
    use std::collections::BTreeSet;
    let mut cfg = Config::default();
    let mut token = AppConfig::token(
        "sandbox".parse().unwrap(),
        "T",
        "K",
        apns::SecretSource::File("k.p8".into()),
        &["t"],
    );
    token.keys.push(KeyConfig {
        key: Some(apns::Secret::new(String::new())),
        ..token.keys[0].clone()
    });
    let cert = CertificateConfig {
        cert_file: Some("c".into()),
        cert: Some(apns::Secret::new(String::new())),
        key_file: Some("k".into()),
        key: Some(apns::Secret::new(String::new())),
        pkcs12_file: Some("p".into()),
        password: Some(apns::Secret::new(String::new())),
        password_file: Some("pw".into()),
    };
    token.certificate = Some(cert);
    cfg.apps.insert("a".into(), token);
    let mut known = BTreeSet::new();
    setting_paths(&serde_json::to_value(&cfg).unwrap(), "", &mut known);

    let mut reachable = BTreeSet::new();
    let renders: [(&[&str], &[&str]); 3] = [
        (&["full-values.yaml"], &[]),
        (
            &["full-values.yaml"],
            &[
                "broker.tls.certKey=",
                "broker.tls.keyKey=",
                "broker.tls.pkcs12Key=client.p12",
                "broker.tls.passwordKey=password",
            ],
        ),
        (&[], &["worker.allowNoApps=true"]),
    ];
    for (values, set) in renders {
        let out = render(values, set);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = tools::yaml_docs(&String::from_utf8(out.stdout).unwrap());
        let text = kind(&docs, "ConfigMap").unwrap()["data"]["config.toml"]
            .as_str()
            .unwrap()
            .to_string();
        parse_rendered(&text).unwrap_or_else(|e| panic!("{set:?}: {e}\n{text}"));
        let toml: toml::Value = toml::from_str(&text).unwrap();
        setting_paths(&serde_json::to_value(toml).unwrap(), "", &mut reachable);
        let d = kind(&docs, "Deployment").unwrap();
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
        {
            if let Some(k) = e["name"].as_str().unwrap().strip_prefix("APNS_WORKER__") {
                reachable.insert(k.to_lowercase().replace("__", "."));
            }
        }
    }
    // Set another way on purpose: the broker URL comes from a Secret by environment
    // (so url_file is not needed); inline secrets (keys, certificates, passwords) would
    // put them in a ConfigMap, so the chart mounts files instead.
    let other_ways = [
        "broker.url_file",
        "broker.tls.password",
        "apps.*.keys[].key",
        "apps.*.certificate.cert",
        "apps.*.certificate.key",
        "apps.*.certificate.password",
    ];
    let missing: Vec<_> = known
        .iter()
        .filter(|k| !reachable.contains(*k) && !other_ways.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "settings the chart cannot set: {missing:?}"
    );
    let unknown: Vec<_> = reachable.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "rendered settings the worker does not know: {unknown:?}"
    );
}

#[test]
fn with_shards_keda_has_a_trigger_per_job_queue_that_follows_the_total_depth() {
    let out = render(
        &["full-values.yaml"],
        &["queues.shards=4", "autoscaling.keda.queueLength=5000"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = tools::yaml_docs(&String::from_utf8(out.stdout).unwrap());
    let config = kind(&docs, "ConfigMap").unwrap()["data"]["config.toml"]
        .as_str()
        .unwrap();
    let cfg = parse_rendered(config).unwrap();
    assert_eq!(cfg.queues.shards, 4);
    let so = kind(&docs, "ScaledObject").expect("KEDA ScaledObject");
    let triggers: Vec<(String, String)> = so["spec"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["metadata"]["queueName"].as_str().unwrap().to_string(),
                t["metadata"]["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The job queues the worker consumes, each at a quarter of the target (the HPA
    // takes the largest trigger: with jobs spread evenly, total depth / 5000
    // replicas); the urgent lane's trigger keeps the whole target.
    let mut want: Vec<(String, String)> = apns_worker::amqp::job_queue_names(&cfg.queues)
        .into_iter()
        .map(|q| (q, "1250".to_string()))
        .collect();
    want.push((cfg.queues.urgent.clone(), "5000".to_string()));
    assert_eq!(triggers, want);
    assert_eq!(want[3].0, "apns.jobs.3");
    // A target that does not divide evenly rounds up, never to 0.
    let out = render(
        &["full-values.yaml"],
        &["queues.shards=3", "autoscaling.keda.queueLength=2"],
    );
    let docs = tools::yaml_docs(&String::from_utf8(out.stdout).unwrap());
    let so = kind(&docs, "ScaledObject").unwrap();
    assert_eq!(so["spec"]["triggers"][2]["metadata"]["value"], "1");
    // KEDA's own broker Secret (the workers' may hold several URLs); by default the
    // workers' Secret.
    let auth_secret = |set: &[&str]| {
        let out = render(&["full-values.yaml"], set);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs = tools::yaml_docs(&String::from_utf8(out.stdout).unwrap());
        let ta = kind(&docs, "TriggerAuthentication").unwrap();
        let r = &ta["spec"]["secretTargetRef"][0];
        (
            r["name"].as_str().unwrap().to_string(),
            r["key"].as_str().unwrap().to_string(),
        )
    };
    let d = kind(&docs, "Deployment").unwrap();
    let url_env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "APNS_WORKER__BROKER__URL")
        .unwrap()["valueFrom"]["secretKeyRef"]
        .clone();
    assert_eq!(
        auth_secret(&[]),
        (
            url_env["name"].as_str().unwrap().to_string(),
            url_env["key"].as_str().unwrap().to_string()
        )
    );
    assert_eq!(
        auth_secret(&[
            "autoscaling.keda.hostSecret.name=keda-amqp",
            "autoscaling.keda.hostSecret.key=url"
        ]),
        ("keda-amqp".to_string(), "url".to_string())
    );
    // Outside 1..=64: the chart refuses it, naming the value.
    for bad in ["queues.shards=0", "queues.shards=65"] {
        let out = render(&["full-values.yaml"], &[bad]);
        assert!(!out.status.success(), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("shards"), "{bad}: {err}");
    }
}

#[test]
fn the_chart_refuses_unsafe_values() {
    let out = render(&["hpa-values.yaml"], &["terminationGracePeriodSeconds=20"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drainSecs"));
    // The defaults have no app: a worker without one would dead-letter every job.
    for cmd in ["lint", "template"] {
        let mut c = Command::new(tools::helm());
        c.arg(cmd).arg(root().join("helm/apns-worker"));
        if cmd == "lint" {
            c.arg("--strict");
        }
        let out = tools::run(&mut c);
        assert!(!out.status.success(), "helm {cmd} accepted no apps");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("/apps") && text.contains("minProperties"),
            "{text}"
        );
    }
    let out = render(&[], &["worker.allowNoApps=true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // values.schema.json: unknown keys and wrong types fail before anything renders.
    for (set, says) in [
        (
            "worker.ackBatchh=5",
            "additional properties 'ackBatchh' not allowed",
        ),
        ("broker.prefetch=lots", "at '/broker/prefetch'"),
        ("queues.jobsType=lazy", "at '/queues/jobsType'"),
        ("apps.shop.endpiont=sandbox", "'endpiont' not allowed"),
        ("replicaCount=-1", "at '/replicaCount'"),
    ] {
        let out = render(&["minimal-values.yaml"], &[set]);
        assert!(!out.status.success(), "{set} rendered");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{set}: {err}");
        let mut lint = Command::new(tools::helm());
        lint.args(["lint", "--strict"])
            .arg(root().join("helm/apns-worker"))
            .arg("-f")
            .arg(root().join("helm/apns-worker/ci/minimal-values.yaml"))
            .args(["--set", set]);
        assert!(!tools::run(&mut lint).status.success(), "lint passed {set}");
    }
    let out = render(&["minimal-values.yaml"], &["apps.x.endpoint=sandbox"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at '/apps/x': missing properties 'keys', 'teamId'"),
        "{err}"
    );
}

#[test]
fn the_compose_file_validates_and_its_files_are_consistent() {
    tools::run_ok(
        Command::new(tools::venv_bin("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(root().join("docker-compose.yml")),
    );
    let cfg = Config::load(
        Some(&root().join("deploy/compose-config.toml")),
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let faults: apns_mock::Faults =
        toml::from_str(&std::fs::read_to_string(root().join("deploy/demo-faults.toml")).unwrap())
            .unwrap();
    faults.check().unwrap();
    let apps = apns_worker::job::AppDirectory::from_config(&cfg.apps);
    let jobs =
        apns_worker::publish::load_jsonl(&root().join("deploy/sample-jobs.jsonl"), &apps, LIMITS)
            .unwrap();
    assert!(jobs.len() >= 30);
    let compose =
        tools::yaml_docs(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap());
    let services = &compose[0]["services"];
    for s in ["rabbitmq", "mock-apns", "worker", "publisher"] {
        assert!(services[s].is_object(), "service {s}");
    }
    let image = services["rabbitmq"]["image"].as_str().unwrap();
    assert!(image.contains("management"));
    // RabbitMQ 3.13 is out of community support: 4.x.
    let major: u32 = image
        .split_once(':')
        .and_then(|(_, t)| t.split(['.', '-']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("{image}: pin a major version"));
    assert!(major >= 4, "{image}");
    // Every long-running service says when it is healthy, and whoever needs it waits
    // for that, not for its start.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for s in ["rabbitmq", "mock-apns", "worker"] {
        let test = services[s]["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{s} has no healthcheck"));
        assert_eq!(test[0], "CMD", "{s}: no shell in the distroless images");
        let bin = test[1].as_str().unwrap();
        if let Some(name) = bin.strip_prefix("/usr/local/bin/") {
            assert!(
                dockerfile.contains(&format!("/out/{name} {bin}")),
                "{s}: the image has no {bin}"
            );
            // The check's arguments parse (exit 1: nothing is running here; 2 would be
            // a usage error).
            let local =
                std::path::Path::new(env!("CARGO_BIN_EXE_apns-worker")).with_file_name(name);
            let args: Vec<&str> = test[2..].iter().map(|a| a.as_str().unwrap()).collect();
            let out = tools::run(
                Command::new(local)
                    .args(&args)
                    .env("APNS_WORKER_LOG_FORMAT", "text"),
            );
            assert_eq!(
                out.status.code(),
                Some(1),
                "{s}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for (s, svc) in services.as_object().unwrap() {
        for (dep, cond) in svc["depends_on"].as_object().into_iter().flatten() {
            let want = if services[dep]["healthcheck"].is_object() {
                "service_healthy"
            } else {
                "service_completed_successfully"
            };
            assert_eq!(cond["condition"], want, "{s} -> {dep}");
        }
    }
}

#[test]
fn the_dockerfile_parses_builds_in_stages_and_runs_as_non_root() {
    let out = tools::run_ok(Command::new(tools::python()).args([
        "-c",
        "import dockerfile, json, sys; print(json.dumps([[c.cmd, list(c.value), list(c.flags)] for c in dockerfile.parse_file(sys.argv[1])]))",
    ]).arg(root().join("Dockerfile")));
    let cmds: Vec<(String, Vec<String>, Vec<String>)> = serde_json::from_str(&out).unwrap();
    let froms: Vec<_> = cmds.iter().filter(|c| c.0 == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(
        froms.iter().any(|f| f.1.iter().any(|v| v == "mock")),
        "a `mock` stage for docker-compose"
    );
    let last_stage = cmds.iter().rposition(|c| c.0 == "FROM").unwrap();
    let runtime = &cmds[last_stage..];
    let user = runtime
        .iter()
        .find(|c| c.0 == "USER")
        .expect("USER in the runtime stage");
    assert!(
        !user.1[0].starts_with("0") && !user.1[0].starts_with("root"),
        "non-root: {:?}",
        user.1
    );
    assert!(
        runtime
            .iter()
            .any(|c| c.0 == "COPY" && c.2.iter().any(|f| f == "--from=build"))
    );
    let entry = runtime.iter().find(|c| c.0 == "ENTRYPOINT").unwrap();
    assert_eq!(entry.1, vec!["/usr/local/bin/apns-worker"]);
    assert!(
        runtime.iter().all(|c| c.0 != "RUN"),
        "nothing runs in the runtime image (no shell)"
    );
}

/// The Dockerfile's instructions, parsed: (instruction, arguments, flags).
fn dockerfile() -> Vec<(String, Vec<String>, Vec<String>)> {
    let out = tools::run_ok(Command::new(tools::python()).args([
        "-c",
        "import dockerfile, json, sys; print(json.dumps([[c.cmd, list(c.value), list(c.flags)] for c in dockerfile.parse_file(sys.argv[1])]))",
    ]).arg(root().join("Dockerfile")));
    serde_json::from_str(&out).unwrap()
}

/// Is `rel` (relative to the build context) excluded by `.dockerignore`? Only the two
/// forms the file uses are understood (`name` at the top, `**/name` at any depth); any
/// other pattern fails the test rather than being ignored.
fn docker_ignored(rel: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let names: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|pattern| match pattern.strip_prefix("**/") {
            Some(name) => {
                assert!(!name.contains(['/', '*', '?', '!']), "{pattern}");
                names.iter().any(|n| n == name)
            }
            None => {
                assert!(!pattern.contains(['/', '*', '?', '!']), "{pattern}");
                names.first().is_some_and(|n| n == pattern)
            }
        })
}

fn copy_context(from: &std::path::Path, rel: &std::path::Path, to: &std::path::Path) {
    if docker_ignored(rel) {
        return;
    }
    let src = from.join(rel);
    if src.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let name = e.unwrap().file_name();
            copy_context(from, &rel.join(&name), &to.join(&name));
        }
    } else {
        std::fs::copy(&src, to).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
}

/// The image builds: exactly what the build stage copies (minus `.dockerignore`) is
/// staged in a scratch directory and the stage's RUN commands run there, with the
/// image's absolute paths (WORKDIR, /out) mapped into it. A file the build needs but
/// the Dockerfile does not copy fails this test (the manifest naming a bench that was
/// not copied is how the image broke once). The build's target directory is kept under
/// this checkout's (`target/docker-replay`), so later runs reuse what it built; a cold
/// run builds the worker's dependencies once more (a few minutes).
#[test]
fn the_image_builds_from_what_the_dockerfile_copies() {
    let cmds = dockerfile();
    let stage_end = cmds
        .iter()
        .skip(1)
        .position(|c| c.0 == "FROM")
        .map_or(cmds.len(), |p| p + 1);
    let build = &cmds[..stage_end];
    assert!(build[0].2.is_empty() && build[0].1.iter().any(|v| v == "build"));
    let workdir = build
        .iter()
        .find(|c| c.0 == "WORKDIR")
        .map(|c| c.1[0].clone())
        .expect("WORKDIR");
    let scratch = tempfile::tempdir().unwrap();
    let ctx = scratch.path().join("src");
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut runs = Vec::new();
    for (cmd, args, flags) in build {
        match cmd.as_str() {
            "COPY" => {
                assert!(flags.is_empty(), "COPY {args:?} {flags:?}");
                let (dest, sources) = args.split_last().unwrap();
                for s in sources {
                    let target = if dest.ends_with('/') || sources.len() > 1 {
                        ctx.join(dest.trim_start_matches("./")).join(s)
                    } else {
                        ctx.join(dest.trim_start_matches("./"))
                    };
                    copy_context(&root(), std::path::Path::new(s), &target);
                }
            }
            "RUN" => runs.push(args.join(" ")),
            _ => {}
        }
    }
    assert!(!runs.is_empty());
    // The build's target directory, kept between runs (not the checkout's own: the
    // replay's binaries must not replace the ones other tests run).
    let kept = root().join("target/docker-replay");
    std::fs::create_dir_all(&kept).unwrap();
    std::os::unix::fs::symlink(&kept, ctx.join("target")).unwrap();
    for run in runs {
        let script = run
            .replace(" /out", &format!(" {}", out.display()))
            .replace(&format!("{workdir}/"), &format!("{}/", ctx.display()));
        tools::run_ok(
            Command::new("sh")
                .args(["-ec", &script])
                .current_dir(&ctx)
                .env_remove("CARGO_TARGET_DIR"),
        );
    }
    for bin in ["apns-worker", "apns-mock"] {
        let out = tools::run_ok(Command::new(out.join(bin)).arg("--version"));
        assert!(out.starts_with(bin), "{out}");
    }
}

/// Every image the compose file builds comes from this Dockerfile and names a stage
/// that exists (the default stage is the worker).
#[test]
fn the_compose_file_builds_stages_that_exist() {
    let stages: Vec<String> = dockerfile()
        .into_iter()
        .filter(|c| c.0 == "FROM")
        .filter_map(|c| {
            let v = c.1;
            v.iter()
                .position(|w| w.eq_ignore_ascii_case("as"))
                .and_then(|i| v.get(i + 1).cloned())
        })
        .collect();
    let compose =
        tools::yaml_docs(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap());
    let mut built = 0;
    for (name, service) in compose[0]["services"].as_object().unwrap() {
        let b = &service["build"];
        if b.is_null() {
            continue;
        }
        built += 1;
        let (context, target, file) = match b {
            Value::String(c) => (c.as_str(), None, None),
            _ => (
                b["context"].as_str().unwrap_or("."),
                b["target"].as_str(),
                b["dockerfile"].as_str(),
            ),
        };
        assert_eq!(context, ".", "{name}: the context is the repository");
        assert!(file.is_none_or(|f| f == "Dockerfile"), "{name}");
        if let Some(t) = target {
            assert!(
                stages.iter().any(|s| s == t),
                "{name}: no stage {t} in {stages:?}"
            );
        }
    }
    assert!(built >= 2, "the worker's and the mock's images are built");
}

/// The chart's Grafana dashboard and PrometheusRule render, and pass `promtool check
/// rules`: the alert rules as they are, the dashboard's queries as recording rules
/// (Grafana's variables filled in). That every series they name exists is checked
/// against a real run in tests/cluster.rs.
#[test]
fn the_dashboard_and_alert_rules_render_and_pass_promtool() {
    use common::monitoring;
    let m = monitoring::render();
    let alerts: Vec<&str> = m.rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        alerts,
        [
            "ApnsWorkerAppPaused",
            "ApnsWorkerDeadLetters",
            "ApnsWorkerUnknownOutcomes",
            "ApnsWorkerNotReady",
            "ApnsWorkerBrokerBlocked",
            "ApnsWorkerQueueGrowingAtMaxReplicas"
        ]
    );
    for want in [
        "Throughput by outcome",
        "APNs send latency",
        "APNs streams in flight vs limit",
        "Dead letters by reason",
        "Broker connection",
        "Jobs queue depth (RabbitMQ)",
    ] {
        assert!(m.panel_titles.iter().any(|t| t == want), "panel {want}");
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("alerts.json");
    std::fs::write(&rules, serde_json::to_vec(&m.rules).unwrap()).unwrap();
    let dashboard = serde_json::json!({"groups": [{
        "name": "dashboard",
        "rules": m.dashboard_exprs.iter().enumerate().map(|(i, e)| serde_json::json!({
            "record": format!("dashboard:panel_query_{i}"),
            "expr": e,
        })).collect::<Vec<_>>(),
    }]});
    let queries = dir.path().join("dashboard.json");
    std::fs::write(&queries, serde_json::to_vec(&dashboard).unwrap()).unwrap();
    let out = tools::run_ok(
        Command::new(tools::promtool())
            .args(["check", "rules"])
            .arg(&rules)
            .arg(&queries),
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len()))
            && out.contains(&format!("SUCCESS: {} rules found", m.dashboard_exprs.len())),
        "{out}"
    );
    // Broken PromQL is refused: the check can fail.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"groups":[{"name":"x","rules":[{"alert":"X","expr":"sum(rate(apns_worker_jobs_total[5m]"}]}]}"#,
    )
    .unwrap();
    let out = tools::run(
        Command::new(tools::promtool())
            .args(["check", "rules"])
            .arg(&bad),
    );
    assert!(!out.status.success());
}

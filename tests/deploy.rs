//! The deployment files: the Helm chart lints, renders and validates against the
//! Kubernetes schemas, its config parses as the worker's config; the compose file
//! validates against the Compose Specification; the Dockerfile parses and runs as non-root.

mod common;

use std::process::Command;

use apns_worker::config::Config;
use common::tools::{self, root};
use serde_json::Value;

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

fn kind<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

#[test]
fn the_helm_chart_lints_renders_and_validates() {
    let chart = root().join("helm/apns-worker");
    for values in [vec![], vec!["full-values.yaml"], vec!["hpa-values.yaml"]] {
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
        let cfg = Config::from_toml(config, "rendered ConfigMap")
            .unwrap_or_else(|e| panic!("{values:?}: {e}\n{config}"));
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
                assert_eq!(cfg.apps.len(), 3);
            }
            Some("hpa-values.yaml") => assert!(kind(&docs, "HorizontalPodAutoscaler").is_some()),
            _ => assert_eq!(d["spec"]["replicas"], 2),
        }
    }
}

#[test]
fn the_chart_refuses_unsafe_values() {
    let out = render(&["hpa-values.yaml"], &["terminationGracePeriodSeconds=20"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drainSecs"));
    let out = render(&[], &["apps.x.endpoint=sandbox"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs keys (token auth) or certificate")
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
        apns_worker::publish::load_jsonl(&root().join("deploy/sample-jobs.jsonl"), &apps, 65536)
            .unwrap();
    assert!(jobs.len() >= 30);
    let compose =
        tools::yaml_docs(&std::fs::read_to_string(root().join("docker-compose.yml")).unwrap());
    let services = &compose[0]["services"];
    for s in ["rabbitmq", "mock-apns", "worker", "publisher"] {
        assert!(services[s].is_object(), "service {s}");
    }
    assert!(
        services["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .contains("management")
    );
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

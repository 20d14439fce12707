//! The offline tools of the deployment and example tests, installed in .tools/ by
//! ops/install-tools.sh (./test.sh runs it). Missing tools fail the test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(rel: &str) -> PathBuf {
    let p = root().join(".tools").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run ./ops/install-tools.sh (./test.sh does)",
        p.display()
    );
    p
}

pub fn helm() -> PathBuf {
    tool("helm")
}

pub fn promtool() -> PathBuf {
    tool("promtool")
}

pub fn python() -> PathBuf {
    tool("venv/bin/python")
}

pub fn venv_bin(name: &str) -> PathBuf {
    tool(&format!("venv/bin/{name}"))
}

/// Run a command; the output, whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// YAML documents (multi-document text) as JSON values, via PyYAML in the venv.
pub fn yaml_docs(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(python())
        .args(["-c", "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

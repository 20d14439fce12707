//! The `apns-mock` command as a container runs it: `--check` is its health check.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apns-mock"))
}

#[test]
fn check_passes_only_once_the_mock_listens_and_has_written_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let key = dir.path().join("key.p8");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("--listen=127.0.0.1:{port}");
    let args = |c: &mut Command| {
        c.arg(&listen)
            .arg("--ca-out")
            .arg(&ca)
            .arg("--key-out")
            .arg(&key);
    };
    let check = || {
        let mut c = mock();
        args(&mut c);
        c.arg("--check").output().unwrap()
    };
    let before = check();
    assert_eq!(before.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&before.stderr).contains("is not written yet"));

    let mut c = mock();
    args(&mut c);
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().status.success() {
        assert!(Instant::now() < deadline, "the check never passed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ca.is_file() && key.is_file());
    child.kill().unwrap();
    child.wait().unwrap();
    let after = check();
    assert_eq!(
        after.status.code(),
        Some(1),
        "a stopped mock is not healthy"
    );
    assert!(String::from_utf8_lossy(&after.stderr).contains("nothing listens"));
}

//! A three-node RabbitMQ cluster of the test binary's own, on this machine: distinct
//! node names, AMQP, distribution and Prometheus ports, data directories and one
//! Erlang cookie, joined with `rabbitmqctl join_cluster`; nodes killed (-9), stopped,
//! restarted and alarmed only here, never the shared broker at 127.0.0.1:5672. Torn
//! down (killed, directory removed) when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::{Connection, ConnectionProperties};

/// The server script and the CLI. Debian's /usr/sbin wrappers switch to the rabbitmq
/// user, whose home holds the shared broker's cookie; the scripts they wrap run as the
/// caller with this cluster's HOME and cookie.
fn bin(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Node {
    /// Erlang node name, `apnsw-<pid>-<i>@localhost`.
    pub name: String,
    pub amqp_port: u16,
    pub prometheus_port: u16,
    dist_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.amqp_port)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    /// Start `n` nodes and join them into one cluster (the first node's).
    pub fn start(n: usize) -> Cluster {
        let dir = std::env::temp_dir().join(format!("apnsw-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cookie = dir.join(".erlang.cookie");
        std::fs::write(&cookie, format!("apnsw{}cookie", std::process::id())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400)).unwrap();
        let mut c = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for i in 1..=n {
            let node_dir = c.dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let node = Node {
                name: format!("apnsw-{}-{i}@localhost", std::process::id()),
                amqp_port: free_port(),
                prometheus_port: free_port(),
                dist_port: free_port(),
                dir: node_dir,
                child: None,
            };
            std::fs::write(
                node.dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{}\nprometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {}\nprometheus.return_per_object_metrics = true\n",
                    node.amqp_port, node.prometheus_port
                ),
            )
            .unwrap();
            std::fs::write(node.dir.join("enabled_plugins"), "[rabbitmq_prometheus].\n").unwrap();
            // Quorum queues' at-least-once dead-lettering (delay queue -> ready queue)
            // resends a message whose confirm was lost only after this timeout, 180 s
            // by default: a retry crossing a node loss comes back that late. The
            // cluster chaos test shortens it (docs/reliability.md says so).
            std::fs::write(
                node.dir.join("advanced.config"),
                "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n",
            )
            .unwrap();
            std::fs::write(node.dir.join("rabbitmq-env.conf"), "").unwrap();
            c.nodes.push(node);
        }
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.await_startup(i);
        }
        let first = c.nodes[0].name.clone();
        for i in 1..n {
            c.ctl(i, &["stop_app"]);
            c.ctl(i, &["join_cluster", &first]);
            c.ctl(i, &["start_app"]);
        }
        let status = c.ctl(0, &["cluster_status", "--formatter", "json"]);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(
            v["running_nodes"].as_array().map(|a| a.len()),
            Some(n),
            "every node runs in one cluster: {status}"
        );
        c
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::File::create(node.dir.join("server.log")).unwrap();
        let child = Command::new(bin("rabbitmq-server"))
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_DIST_PORT", node.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                node.dir.join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", node.dir.join("rabbitmq-env.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env("RABBITMQ_PID_FILE", node.dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env_remove("RABBITMQ_ALLOW_INPUT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("RabbitMQ's rabbitmq-server must be installed: {e}"));
        self.nodes[i].child = Some(child);
    }

    fn await_startup(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        // `await_startup` fails at once while the node has not registered with epmd.
        loop {
            let out = self.ctl_output(i, &["await_startup", "--timeout", "60"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start: {}\n{}",
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(self.nodes[i].dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ctl_output(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.tool_output("rabbitmqctl", i, args)
    }

    fn tool_output(&self, tool: &str, i: usize, args: &[&str]) -> std::process::Output {
        Command::new(bin(tool))
            .env("HOME", &self.dir)
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .arg("-q")
            .arg("-n")
            .arg(&self.nodes[i].name)
            .args(args)
            .output()
            .expect("rabbitmqctl is installed with RabbitMQ")
    }

    /// `rabbitmqctl` against node `i`; panics with its output when it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl_output(i, args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on {}: {}{}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until stopping node `i` leaves every quorum queue with a majority online
    /// (`rabbitmq-upgrade await_online_quorum_plus_one`), as a rolling upgrade does.
    pub fn await_not_quorum_critical(&self, i: usize) {
        let out = self.tool_output(
            "rabbitmq-upgrade",
            i,
            &["await_online_quorum_plus_one", "-t", "120"],
        );
        assert!(
            out.status.success(),
            "node {} stays quorum critical: {}{}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The broker.url value naming every node, in order.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Node index of the leader and the members of a quorum queue, asked of a running
    /// node `via`.
    pub fn queue_leader(&self, via: usize, queue: &str) -> (usize, Vec<String>) {
        let listing = self.ctl(
            via,
            &[
                "list_queues",
                "--no-table-headers",
                "name",
                "leader",
                "members",
            ],
        );
        let line = listing
            .lines()
            .find(|l| l.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("queue {queue} not listed: {listing}"));
        let cols: Vec<&str> = line.split('\t').collect();
        let leader = self
            .nodes
            .iter()
            .position(|n| n.name == cols[1])
            .unwrap_or_else(|| panic!("leader {} is not a node of the cluster", cols[1]));
        let members = cols[2]
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        (leader, members)
    }

    /// SIGKILL node `i` (the Erlang VM itself) and wait for its process to end.
    pub fn kill(&mut self, i: usize) {
        let pid = std::fs::read_to_string(self.nodes[i].dir.join("pid")).unwrap();
        let _ = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.nodes[i].dir.join("pid"));
    }

    /// Stop node `i` cleanly (`rabbitmqctl stop`, as a rolling upgrade does).
    pub fn stop(&mut self, i: usize) {
        self.ctl(i, &["stop"]);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.nodes[i].dir.join("pid"));
    }

    /// Start node `i` again (it rejoins the cluster from its data directory) and wait
    /// until it runs.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.await_startup(i);
    }

    /// A connection to the first node that accepts one, skipping `except`.
    pub async fn connect_any(&self, except: Option<usize>) -> Connection {
        for (i, n) in self.nodes.iter().enumerate() {
            if Some(i) == except {
                continue;
            }
            if let Ok(c) = Connection::connect(&n.url(), ConnectionProperties::default()).await {
                return c;
            }
        }
        panic!("no node of the test cluster accepts a connection");
    }

    /// Raise (watermark 0) or clear node `i`'s memory alarm: every publishing
    /// connection of the cluster is blocked while one node is in alarm.
    pub fn memory_alarm(&self, i: usize, on: bool) {
        let mark = if on { "0.0000001" } else { "0.4" };
        self.ctl(i, &["set_vm_memory_high_watermark", mark]);
    }

    /// `rabbitmqctl list_connections` names of the connections the cluster holds, as
    /// node `via` sees them.
    pub fn connection_names(&self, via: usize) -> Vec<String> {
        self.ctl(
            via,
            &[
                "list_connections",
                "--no-table-headers",
                "client_properties",
            ],
        )
        .lines()
        .map(|l| l.to_string())
        .collect()
    }

    /// One node's Prometheus exposition (the rabbitmq_prometheus plugin).
    pub fn prometheus_text(&self, i: usize) -> String {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect(("127.0.0.1", self.nodes[i].prometheus_port)).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                self.kill(i);
            }
        }
        if std::thread::panicking() {
            eprintln!("the cluster's logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

//! CPU time and memory from `/proc`: a process's, a thread's, a local RabbitMQ's, and
//! the machine's busy share, read at the start and end of a phase.

use std::path::{Path, PathBuf};

pub struct Proc {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub ticks_per_sec: f64,
}

impl Proc {
    /// user+sys CPU seconds so far (all threads).
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.pid, self.ticks_per_sec)
    }

    pub fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// user+sys CPU seconds a process has used so far (all threads).
pub fn cpu_secs(pid: u32, ticks_per_sec: f64) -> f64 {
    stat_cpu_secs(Path::new(&format!("/proc/{pid}/stat")), ticks_per_sec)
}

/// user+sys CPU seconds from a `/proc/.../stat` file (a process's or a thread's).
pub fn stat_cpu_secs(path: &Path, ticks_per_sec: f64) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / ticks_per_sec
}

/// The calling thread's `/proc` stat file, to read its CPU time from any thread.
pub fn this_thread_stat() -> Option<PathBuf> {
    let task = std::fs::read_link("/proc/thread-self").ok()?;
    Some(Path::new("/proc").join(task).join("stat"))
}

/// A RabbitMQ node on this machine: the `beam.smp` whose command line names rabbit.
pub fn local_broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let names_rabbit = cmdline.windows(6).any(|w| w == b"rabbit");
        (comm.trim() == "beam.smp" && names_rabbit).then_some(pid)
    })
}

/// (busy, total) jiffies of all CPUs so far, from /proc/stat (idle and iowait are not
/// busy).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPU time of the processes around the worker, read at the start and end of a phase.
#[derive(Clone, Copy)]
pub struct CpuMark {
    me: f64,
    broker: Option<f64>,
    machine: Option<(u64, u64)>,
}

impl CpuMark {
    pub fn now(broker: Option<u32>, ticks: f64) -> CpuMark {
        CpuMark {
            me: cpu_secs(std::process::id(), ticks),
            broker: broker.map(|pid| cpu_secs(pid, ticks)),
            machine: machine_ticks(),
        }
    }

    /// This process's and the broker's µs per message since `self`, and the machine's
    /// busy share.
    pub fn since(&self, later: &CpuMark, messages: u64) -> (f64, Option<f64>, Option<f64>) {
        let per = |secs: f64| secs * 1e6 / messages.max(1) as f64;
        let broker = self.broker.zip(later.broker).map(|(a, b)| per(b - a));
        let busy = self.machine.zip(later.machine).and_then(|(a, b)| {
            let total = b.1.saturating_sub(a.1);
            (total > 0).then(|| b.0.saturating_sub(a.0) as f64 / total as f64)
        });
        (per(later.me - self.me), broker, busy)
    }
}

pub fn ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

//! `apns-bench`: the demo and the benchmarks of apns-worker (see the crate docs).
//! `cargo run --release -- demo` at the workspace root runs this binary.

use std::path::PathBuf;
use std::process::ExitCode;

use apns_bench::bench::{self, BenchOptions};
use clap::{Parser, Subcommand};

/// The same allocator and settings as the worker's binary, so that `--sender-only`
/// measures the client as the worker runs it.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "apns-bench",
    version,
    about = "apns-worker's demo and benchmarks (needs RabbitMQ at 127.0.0.1:5672 unless told otherwise)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole flow on this machine: mock APNs, local RabbitMQ, worker, sample jobs
    /// with every outcome, and the outcome table. Cleans up after itself.
    Demo {
        #[arg(
            long,
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
            env = "APNS_WORKER_DEMO_BROKER"
        )]
        broker: String,
        #[arg(long, default_value_t = 3000)]
        jobs: u64,
    },
    /// The end-to-end benchmark: the broker's ceiling, the worker's drain throughput,
    /// CPU per notification, peak RSS, and latency at a fixed rate. Needs RabbitMQ.
    Bench {
        #[arg(
            long,
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
            env = "APNS_WORKER_BENCH_BROKER"
        )]
        broker: String,
        #[arg(long, default_value_t = 200_000)]
        jobs: u64,
        #[arg(long, default_value_t = 1024)]
        payload_bytes: usize,
        /// Offered rate of the latency phase (jobs/s); 0 skips it.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        latency_secs: u64,
        #[arg(long, default_value_t = 2000)]
        prefetch: u16,
        #[arg(long, default_value_t = 2)]
        connections: usize,
        #[arg(long, default_value_t = 256)]
        ack_batch: usize,
        /// The APNs client alone against the mock, no broker.
        #[arg(long)]
        sender_only: bool,
        /// Requests in flight in --sender-only.
        #[arg(long, default_value_t = 2000)]
        concurrency: usize,
        /// Drain runs over prefetch x connections x ack batch; writes a table and an
        /// SVG chart into this directory.
        #[arg(long)]
        sweep: Option<PathBuf>,
        /// Only the worker's drain: no bare consumer, no latency phase.
        #[arg(long)]
        drain_only: bool,
        /// Tokens per job (fan-out jobs): --jobs notifications in --jobs / K messages.
        #[arg(long, default_value_t = 1)]
        tokens_per_job: u64,
        /// Job queues (`queues.shards`): the drain's jobs are spread over N queues, which
        /// the worker consumes together.
        #[arg(long, default_value_t = 1)]
        shards: u16,
        /// The mock APNs answers each request after L ms: the latency-bound regime of a
        /// distant APNs (throughput <= streams in flight / round trip).
        #[arg(long, default_value_t = 0)]
        apns_latency_ms: u64,
        /// The worker's `worker.max_notifications_in_flight` (default: its default).
        #[arg(long)]
        max_in_flight: Option<usize>,
        /// The outcome stream on (`queues.outcomes`): one confirmed receipt per
        /// notification beside each settlement.
        #[arg(long)]
        outcomes: bool,
        /// The worker to run: another build to compare with this one, or a wrapper
        /// script that `exec`s one under a profiler (default: the `apns-worker` built
        /// next to this executable).
        #[arg(long, env = "APNS_WORKER_BENCH_WORKER")]
        worker_bin: Option<PathBuf>,
    },
}

/// The `apns-worker` binary next to this one (both are built into the same target
/// directory by `cargo build --release`).
fn sibling_worker() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = me.with_file_name("apns-worker");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --release` at the workspace root (or give --worker-bin)",
            bin.display()
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // The demo and the benchmarks print their own story; the worker's logs would
    // drown it (errors still show).
    let _ = tracing_subscriber_init();
    let result: Result<(), String> = rt.block_on(async move {
        match cli.command {
            Command::Demo { broker, jobs } => apns_bench::demo::run(&broker, jobs)
                .await
                .map_err(|e| e.to_string()),
            Command::Bench {
                broker,
                jobs,
                payload_bytes,
                rate,
                latency_secs,
                prefetch,
                connections,
                ack_batch,
                sender_only,
                concurrency,
                sweep,
                drain_only,
                tokens_per_job,
                shards,
                apns_latency_ms,
                max_in_flight,
                outcomes,
                worker_bin,
            } => {
                if sender_only {
                    let r = bench::sender_only(jobs, concurrency, connections, payload_bytes)
                        .await
                        .map_err(|e| e.to_string())?;
                    bench::print_sender_table(&r);
                    println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
                    return Ok(());
                }
                let opts = BenchOptions {
                    broker_url: broker,
                    jobs,
                    payload_bytes,
                    rate,
                    latency_secs,
                    prefetch,
                    connections,
                    ack_batch,
                    worker_bin: match worker_bin {
                        Some(bin) => bin,
                        None => sibling_worker()?,
                    },
                    drain_only,
                    tokens_per_job,
                    shards,
                    apns_latency_ms,
                    max_in_flight,
                    outcomes,
                };
                if let Some(dir) = sweep {
                    bench::sweep(&opts, &dir).await.map_err(|e| e.to_string())?;
                    println!(
                        "wrote {0}/bench-sweep.md and {0}/bench-sweep.svg",
                        dir.display()
                    );
                    return Ok(());
                }
                let report = bench::run(&opts).await.map_err(|e| e.to_string())?;
                bench::print_table(&report);
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors only, unless `RUST_LOG` says otherwise.
fn tracing_subscriber_init() -> apns_worker::obs::telemetry::Telemetry {
    apns_worker::obs::telemetry::init_logging_with("error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}

//! The `apns-worker` command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use apns_worker::config::Config;
use apns_worker::job::AppDirectory;
use apns_worker::publish::{Source, Synthetic};
use apns_worker::signals::shutdown_signal;
use clap::{Parser, Subcommand};

mod fatal;
mod healthcheck;

use fatal::Fatal;
use healthcheck::healthcheck;

/// jemalloc: about 9% fewer instructions per notification than glibc's malloc in a
/// worker's drain (callgrind), with a 1M-job drain's peak RSS at 48 MiB. mimalloc saved
/// 2% more but held 67-71 MiB in a 100k-job drain. See docs/benchmarks.md.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: freed pages go back to the kernel after about
/// a second instead of ten (`dirty_decay_ms`), so the burst of a full prefetch window at
/// start does not stay resident. Peak RSS of a 200k-job drain: 56-69 MiB -> 45-49 MiB.
/// `_RJEM_MALLOC_CONF` in the environment still overrides it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "apns-worker",
    version,
    about = "Delivers Apple push notifications from RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume jobs and deliver them to APNs until SIGTERM/SIGINT; prints a summary.
    Run {
        /// TOML config file; APNS_WORKER__SECTION__KEY variables override it.
        #[arg(long, short, env = "APNS_WORKER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Publish jobs to the queue: from a JSONL file (or - for stdin), or N synthetic ones.
    Publish {
        #[arg(long, short, env = "APNS_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// One job per line (JSON); every line is checked before anything is sent.
        #[arg(long, conflicts_with = "synthetic")]
        file: Option<PathBuf>,
        /// Generate this many jobs instead.
        #[arg(long)]
        synthetic: Option<u64>,
        /// Topic of synthetic jobs (default: the default topic of the first app by name).
        #[arg(long)]
        topic: Option<String>,
        /// App of synthetic jobs.
        #[arg(long)]
        app: Option<String>,
        /// Approximate payload size of synthetic jobs.
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
        /// Device tokens of synthetic jobs start with these hex digits.
        #[arg(long, default_value = "")]
        token_prefix: String,
        /// Queue to publish to (default: the job queues of the config, `queues.jobs` and
        /// its shards, in turn).
        #[arg(long)]
        queue: Option<String>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Exit 0 when the worker on this machine is ready (GET its /readyz), 1 otherwise:
    /// for container health checks where there is no shell or curl.
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print the topology the worker would declare as RabbitMQ Messaging Topology
    /// Operator objects (Queue, Exchange, Binding; JSON, for `kubectl apply -f -`), for
    /// clusters where the operator owns the topology and `queues.declare = false`.
    Topology {
        #[arg(long, short, env = "APNS_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// `metadata.name` of the RabbitmqCluster the objects belong to.
        #[arg(long)]
        cluster: String,
        /// Namespace of that RabbitmqCluster, when not the objects' own.
        #[arg(long)]
        cluster_namespace: Option<String>,
        /// Namespace of the objects (default: kubectl's current namespace).
        #[arg(long)]
        namespace: Option<String>,
        /// The vhost (default: the one broker.url names, else /).
        #[arg(long)]
        vhost: Option<String>,
    },
    /// Manage an app's Live Activity broadcast channels on APNs (create, get, delete,
    /// list) with its configured credentials; prints JSON.
    Channels {
        #[command(subcommand)]
        action: ChannelsAction,
    },
    /// Print the effective configuration (secrets redacted) and check it.
    CheckConfig {
        /// TOML config file; APNS_WORKER__SECTION__KEY variables override it.
        #[arg(long, short, env = "APNS_WORKER_CONFIG")]
        config: Option<PathBuf>,
        /// Also try each app's credentials against its endpoint (one request to a
        /// device token that cannot exist; nothing is delivered).
        #[arg(long, conflicts_with = "static_only")]
        probe: bool,
        /// Only parse and check the settings; do not read the key, certificate and CA
        /// files (for CI, where the secrets are not mounted).
        #[arg(long = "static")]
        static_only: bool,
    },
}

/// Which app and environment a channels command acts on.
#[derive(clap::Args)]
struct ChannelsTarget {
    #[arg(long, short, env = "APNS_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// The app (credentials profile) of the config; default: the only one.
    #[arg(long)]
    app: Option<String>,
    /// Apple's environment (default: the one of the app's endpoint). Channels of one
    /// environment do not exist in the other.
    #[arg(long, value_parser = ["production", "sandbox"])]
    environment: Option<String>,
    /// The bundle id (default: the app's default topic without a push-type suffix).
    #[arg(long)]
    bundle_id: Option<String>,
}

#[derive(Subcommand)]
enum ChannelsAction {
    /// Create a channel; prints its id.
    Create {
        #[command(flatten)]
        target: ChannelsTarget,
        /// `none` (message-storage-policy 0: broadcasts must have expiration 0) or
        /// `most-recent` (1: the latest message is kept up to 8 hours for offline devices).
        #[arg(long, default_value = "none", value_parser = ["none", "most-recent"])]
        storage: String,
    },
    /// Read a channel's configuration.
    Get {
        #[command(flatten)]
        target: ChannelsTarget,
        channel_id: String,
    },
    /// Delete a channel (do it when its event ends: 10,000 channels per app and environment).
    Delete {
        #[command(flatten)]
        target: ChannelsTarget,
        channel_id: String,
    },
    /// List the app's channels.
    List {
        #[command(flatten)]
        target: ChannelsTarget,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` may ask for a single-threaded runtime (worker.threads = 1).
    let threads = match &cli.command {
        Command::Run { config } => Config::load(config.as_deref(), std::env::vars())
            .map(|c| c.worker.threads)
            .unwrap_or(0),
        _ => 0,
    };
    let rt = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    rt.block_on(async move {
        let _telemetry = apns_worker::obs::telemetry::init_logging();
        if let Err(e) = apns_worker::obs::telemetry::check_otlp_env() {
            return Fatal::config(e).report();
        }
        // Reported while the telemetry (which flushes on drop) is still up.
        match command(cli.command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => f.report(),
        }
    })
}

async fn command(command: Command) -> Result<(), Fatal> {
    {
        match command {
            Command::Run { config } => {
                let cfg =
                    Config::load(config.as_deref(), std::env::vars()).map_err(Fatal::config)?;
                let summary = apns_worker::run::run(cfg, config, shutdown_signal())
                    .await
                    .map_err(Fatal::run)?;
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                Ok(())
            }
            Command::Publish {
                config,
                file,
                synthetic,
                topic,
                app,
                payload_bytes,
                token_prefix,
                queue,
                quiet,
            } => {
                let cfg =
                    Config::load(config.as_deref(), std::env::vars()).map_err(Fatal::config)?;
                let apps = if cfg.apps.is_empty() {
                    AppDirectory::permissive()
                } else {
                    AppDirectory::from_config(&cfg.apps)
                };
                let source = match (file, synthetic) {
                    (Some(f), _) => Source::Jsonl(f),
                    (None, Some(count)) => {
                        let topic = topic
                            .or_else(|| {
                                cfg.apps
                                    .values()
                                    .find_map(|a| a.default_topic().map(str::to_owned))
                            })
                            .ok_or_else(|| {
                                Fatal::usage(
                                    "give --topic (no app in the config has a default topic)",
                                )
                            })?;
                        Source::Synthetic(Synthetic {
                            count,
                            topic,
                            app,
                            payload_bytes,
                            token_prefix,
                        })
                    }
                    (None, None) => {
                        return Err(Fatal::usage(
                            "give --file (or --file - for stdin) or --synthetic N",
                        ));
                    }
                };
                let queues = match queue {
                    Some(q) => vec![q],
                    None => apns_worker::amqp::job_queue_names(&cfg.queues),
                };
                let progress = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
                let n = apns_worker::publish::run(&cfg, &queues, source, &apps, progress)
                    .await
                    .map_err(Fatal::publish)?;
                match queues.as_slice() {
                    [one] => eprintln!("published {n} job(s) to {one}"),
                    all => eprintln!(
                        "published {n} job(s) to {} queues in turn ({} to {})",
                        all.len(),
                        all[0],
                        all[all.len() - 1]
                    ),
                }
                Ok(())
            }
            Command::Topology {
                config,
                cluster,
                cluster_namespace,
                namespace,
                vhost,
            } => {
                let cfg =
                    Config::load(config.as_deref(), std::env::vars()).map_err(Fatal::config)?;
                let target = apns_worker::operator::Target {
                    cluster,
                    cluster_namespace,
                    namespace,
                    vhost: vhost
                        .or_else(|| cfg.broker.vhost())
                        .unwrap_or_else(|| "/".into()),
                };
                let plan = apns_worker::amqp::topology_plan(&cfg.queues, &cfg.retry);
                let list = apns_worker::operator::objects(&plan, &target).map_err(Fatal::config)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(Fatal::runtime)?
                );
                if cfg.queues.declare {
                    eprintln!(
                        "note: queues.declare is true; set it to false so that the worker leaves the topology to the operator"
                    );
                }
                Ok(())
            }
            Command::Channels { action } => {
                use apns::channels::StoragePolicy;
                use apns_worker::channels::{Action, ChannelCmdError, Target};
                let (t, action) = match action {
                    ChannelsAction::Create { target, storage } => (
                        target,
                        Action::Create(if storage == "most-recent" {
                            StoragePolicy::MostRecentMessageStored
                        } else {
                            StoragePolicy::NoMessageStored
                        }),
                    ),
                    ChannelsAction::Get { target, channel_id } => (target, Action::Get(channel_id)),
                    ChannelsAction::Delete { target, channel_id } => {
                        (target, Action::Delete(channel_id))
                    }
                    ChannelsAction::List { target } => (target, Action::List),
                };
                let cfg =
                    Config::load(t.config.as_deref(), std::env::vars()).map_err(Fatal::config)?;
                let target = Target {
                    app: t.app,
                    environment: t.environment.map(|e| {
                        if e == "sandbox" {
                            apns::EndpointKind::Sandbox
                        } else {
                            apns::EndpointKind::Production
                        }
                    }),
                    bundle_id: t.bundle_id,
                };
                match apns_worker::channels::run(&cfg, &target, action).await {
                    Ok(v) => {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&v).map_err(Fatal::runtime)?
                        );
                        Ok(())
                    }
                    Err(e @ ChannelCmdError::Usage(_)) => Err(Fatal::usage(e)),
                    Err(e @ ChannelCmdError::Config(_)) => Err(Fatal::config(e)),
                    Err(e @ ChannelCmdError::Apns(_)) => Err(Fatal::runtime(e)),
                }
            }
            Command::CheckConfig {
                config,
                probe,
                static_only,
            } => {
                let cfg =
                    Config::load(config.as_deref(), std::env::vars()).map_err(Fatal::config)?;
                if static_only {
                    println!("{}", toml::to_string_pretty(&cfg).map_err(Fatal::config)?);
                    eprintln!(
                        "configuration parses: {} app(s) (files not read)",
                        cfg.apps.len()
                    );
                    return Ok(());
                }
                apns_worker::check::print_effective(&cfg).map_err(Fatal::config)?;
                if probe {
                    match apns_worker::check::probe(&cfg).await {
                        Ok(lines) => lines.iter().for_each(|l| eprintln!("{l}")),
                        Err(lines) => return Err(Fatal::config(lines.join("\n"))),
                    }
                }
                Ok(())
            }
            Command::Healthcheck { url, timeout_ms } => {
                if !url.starts_with("http://") {
                    return Err(Fatal::usage(
                        "--url must be http://host:port/path (the admin endpoint's /readyz)",
                    ));
                }
                healthcheck(&url, std::time::Duration::from_millis(timeout_ms))
                    .map_err(Fatal::runtime)
            }
        }
    }
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

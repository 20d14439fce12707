//! The `apns-worker` command line: parses arguments and calls the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use apns_worker::apns::endpoint::EndpointKind;
use apns_worker::config::Config;
use apns_worker::mock::{StandaloneOptions, run_standalone};
use apns_worker::signals::shutdown_signal;
use clap::{Parser, Subcommand};

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
    /// Print the effective configuration (secrets redacted) and check it.
    CheckConfig {
        /// TOML config file; APNS_WORKER__SECTION__KEY variables override it.
        #[arg(long, short, env = "APNS_WORKER_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run a mock APNs server (HTTP/2 + TLS) for tests, demos and benchmarks.
    MockApns {
        #[arg(long, default_value = "127.0.0.1:2197")]
        listen: SocketAddr,
        /// Write the mock's CA certificate here; clients trust it with `ca_file`.
        #[arg(long, default_value = "mock-apns-ca.pem")]
        ca_out: PathBuf,
        /// Fault script (TOML): unregistered tokens, answer rules, GOAWAY, resets, latency...
        #[arg(long)]
        faults: Option<PathBuf>,
        /// Stream limit after the first authenticated request.
        #[arg(long, default_value_t = 1000)]
        max_streams: u32,
        /// `sandbox` adds apns-unique-id to answers, as Apple's sandbox does.
        #[arg(long, default_value = "sandbox", value_parser = parse_env_kind)]
        environment: EndpointKind,
        #[arg(long, default_value = "TEAM123456")]
        team_id: String,
        #[arg(long, default_value = "KEY1234567")]
        key_id: String,
        /// Generate a signing key, write it here (.p8) and accept its tokens.
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// Accept tokens signed by the key whose public half (PEM) is in this file.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Extra DNS names for the server certificate (e.g. the compose service name).
        #[arg(long)]
        server_name: Vec<String>,
        /// Do not keep a record of each request (long benchmark runs).
        #[arg(long)]
        no_record: bool,
    },
}

fn parse_env_kind(s: &str) -> Result<EndpointKind, String> {
    match s {
        "sandbox" => Ok(EndpointKind::Sandbox),
        "production" => Ok(EndpointKind::Production),
        _ => Err("sandbox or production".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    apns_worker::telemetry::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: Result<(), String> = rt.block_on(async {
        match cli.command {
            Command::CheckConfig { config } => {
                let cfg =
                    Config::load(config.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
                apns_worker::check::print_effective(&cfg).map_err(|e| e.to_string())
            }
            Command::MockApns {
                listen,
                ca_out,
                faults,
                max_streams,
                environment,
                team_id,
                key_id,
                key_out,
                public_key,
                server_name,
                no_record,
            } => {
                let opts = StandaloneOptions {
                    listen,
                    ca_out,
                    faults,
                    max_streams,
                    environment,
                    team_id,
                    key_id,
                    key_out,
                    public_key,
                    server_names: server_name,
                    record: !no_record,
                };
                let stats = run_standalone(opts, shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())?;
                println!("{}", serde_json::to_string(&stats).unwrap_or_default());
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

//! `apns-mock`: the mock APNs as a command (see the crate docs): writes its CA for
//! clients to trust, generates or accepts a signing key, answers until SIGTERM/SIGINT,
//! then prints its counters as JSON.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use apns::EndpointKind;
use apns_mock::{Faults, MockApns, MockConfig, MockError, MockKey, MockStats};
use clap::Parser;

/// The command-line options.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "apns-mock",
    version,
    about = "A mock APNs (HTTP/2 + TLS) for tests, demos and benchmarks"
)]
pub struct StandaloneOptions {
    #[arg(long, default_value = "127.0.0.1:2197")]
    pub listen: std::net::SocketAddr,
    /// Write the mock's CA certificate here; clients trust it with `ca_file`.
    #[arg(long, default_value = "mock-apns-ca.pem")]
    pub ca_out: PathBuf,
    /// Fault script (TOML, the fields of `Faults`): unregistered tokens, answer rules,
    /// GOAWAY, resets, latency...
    #[arg(long)]
    pub faults: Option<PathBuf>,
    /// Stream limit after the first authenticated request.
    #[arg(long, default_value_t = 1000)]
    pub max_streams: u32,
    /// `sandbox` adds apns-unique-id to answers, as Apple's sandbox does.
    #[arg(long, default_value = "sandbox", value_parser = parse_environment)]
    pub environment: EndpointKind,
    #[arg(long, default_value = "TEAM123456")]
    pub team_id: String,
    #[arg(long, default_value = "KEY1234567")]
    pub key_id: String,
    /// Generate a signing key, write it here (.p8) and accept its tokens.
    #[arg(long)]
    pub key_out: Option<PathBuf>,
    /// Accept tokens signed by the key whose public half (PEM) is in this file.
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Extra DNS names for the server certificate (e.g. the compose service name).
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Do not keep a record of each request (long benchmark runs).
    #[arg(long)]
    pub no_record: bool,
    /// Do not serve: exit 0 when a mock is listening on --listen and has written
    /// --ca-out (and --key-out, when given), else 1. A container health check.
    #[arg(long)]
    pub check: bool,
}

/// `--check`: is a mock up on `opts.listen`, with its files written?
fn check(opts: &StandaloneOptions) -> Result<(), String> {
    for f in std::iter::once(&opts.ca_out).chain(opts.key_out.as_ref()) {
        if !f.is_file() {
            return Err(format!("{} is not written yet", f.display()));
        }
    }
    std::net::TcpStream::connect_timeout(&opts.listen, std::time::Duration::from_secs(2))
        .map(drop)
        .map_err(|e| format!("nothing listens on {}: {e}", opts.listen))
}

fn parse_environment(s: &str) -> Result<EndpointKind, String> {
    match s {
        "sandbox" => Ok(EndpointKind::Sandbox),
        "production" => Ok(EndpointKind::Production),
        _ => Err("sandbox or production".into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Mock(#[from] MockError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("fault script {path}: {message}")]
    Faults { path: PathBuf, message: String },
    #[error(
        "give --key-out (to generate a key) or --public-key (to accept an existing one), or both"
    )]
    NoKey,
}

/// Run the mock until `shutdown` resolves; returns its counters.
pub async fn run_standalone(
    opts: StandaloneOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<MockStats, StandaloneError> {
    let faults = match &opts.faults {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| StandaloneError::Read {
                path: path.clone(),
                source,
            })?;
            toml::from_str::<Faults>(&text).map_err(|e| StandaloneError::Faults {
                path: path.clone(),
                message: e.to_string(),
            })?
        }
        None => Faults::default(),
    };
    if opts.key_out.is_none() && opts.public_key.is_none() {
        return Err(StandaloneError::NoKey);
    }
    let mock = MockApns::start(MockConfig {
        bind: opts.listen,
        max_streams: opts.max_streams,
        environment: opts.environment,
        faults,
        record: !opts.no_record,
        server_names: opts.server_names.clone(),
        ..MockConfig::default()
    })
    .await?;
    mock.write_ca(&opts.ca_out)?;
    if let Some(path) = &opts.public_key {
        let public = std::fs::read_to_string(path).map_err(|source| StandaloneError::Read {
            path: path.clone(),
            source,
        })?;
        mock.add_key(MockKey {
            key_id: opts.key_id.clone(),
            team_id: opts.team_id.clone(),
            public_key_pem: public,
            topics: Vec::new(),
            environment: None,
        })?;
    }
    if let Some(path) = &opts.key_out {
        let private = mock.generate_key(&opts.team_id, &opts.key_id)?;
        std::fs::write(path, private).map_err(|source| MockError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    tracing::info!(
        addr = %mock.addr(),
        ca = %opts.ca_out.display(),
        team_id = %opts.team_id,
        key_id = %opts.key_id,
        "mock APNs ready"
    );
    shutdown.await;
    let stats = mock.stats();
    mock.stop();
    Ok(stats)
}

fn main() -> ExitCode {
    let opts = StandaloneOptions::parse();
    if opts.check {
        return match check(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("not ready: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run_standalone(opts, shutdown())) {
        Ok(stats) => {
            println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

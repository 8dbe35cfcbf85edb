use std::process::ExitCode;

use clap::{Parser, Subcommand};
use patroni_dr_watchdog::{Config, logging};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Watches the primary PostgreSQL site from the DR site. Every setting is a
/// WATCHDOG_* environment variable (see the README).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Probe Gold and serve /livez, /readyz, /metrics and /status (the default).
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("patroni-dr-watchdog: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    logging::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, addr = %config.listen_addr, "WATCHDOG_LISTEN_ADDR: cannot listen");
                return ExitCode::FAILURE;
            }
        };
        let kube = if config.uses_kubernetes() {
            match kube_client().await {
                Ok(client) => Some(client),
                Err(e) => {
                    error!(error = %e, "cannot set up the Kubernetes client: run in a pod with a service account, or set KUBECONFIG");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match patroni_dr_watchdog::run(config, listener, kube, shutdown).await {
            Ok(()) => {
                info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!(error = %e, "watchdog failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// In-cluster config, or KUBECONFIG. kube's own retry of 429/503/504 is off:
/// every caller here retries explicitly, with limits it chose.
async fn kube_client() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down"),
    }
    shutdown.cancel();
}

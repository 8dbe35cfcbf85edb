use std::process::ExitCode;

use clap::{Parser, Subcommand};
use patroni_dr_watchdog::cli::{self, Exit};
use patroni_dr_watchdog::{Config, logging};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Watches the primary PostgreSQL site (Gold) from the DR site and promotes
/// the DR Patroni standby cluster when Gold is really gone. Every setting is
/// a WATCHDOG_* environment variable (see the README).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Probe Gold, promote when it is lost and every guard agrees, and serve
    /// /livez, /readyz, /metrics and /status (the default).
    Run,
    /// Validate the settings and reach Gold, the Kubernetes API, the local
    /// Patroni and PostgreSQL, and the witnesses; one line per check, exit
    /// code 0 only if all pass.
    Check,
    /// Print a running watchdog's /status.
    Status {
        /// Base URL of the watchdog (default: from WATCHDOG_LISTEN_ADDR, or
        /// http://127.0.0.1:9808).
        #[arg(long)]
        url: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote the DR site now, through the same guards as the watchdog
    /// (except Gold's verdict, which is yours to judge).
    Promote {
        /// Why; recorded in the audit annotations, the Event and the log.
        #[arg(long)]
        reason: String,
        /// Skip every guard.
        #[arg(long)]
        force: bool,
    },
    /// Make this promoted site a standby of the rebuilt primary site again
    /// (re-adds standby_cluster). Asks for a typed confirmation.
    Failback {
        /// The primary site's address as seen from here (the Transport
        /// Service name).
        #[arg(long)]
        host: String,
        /// Its port.
        #[arg(long)]
        port: u16,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if let Command::Status { url, json } = command {
        let url = url.unwrap_or_else(default_status_url);
        return block_on(async move { exit(cli::status(&url, json).await) });
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("patroni-dr-watchdog: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Run => run(config),
        Command::Check => with_kube(config, |c, k| async move { cli::check(&c, k.as_ref()).await }),
        Command::Promote { reason, force } => with_kube(config, |c, k| async move {
            cli::promote(&c, k.as_ref(), &reason, force).await
        }),
        Command::Failback { host, port, yes } => with_kube(config, |c, k| async move {
            cli::failback(&c, k.as_ref(), &host, port, yes).await
        }),
        Command::Status { .. } => unreachable!("handled above"),
    }
}

fn default_status_url() -> String {
    let addr = std::env::var("WATCHDOG_LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:9808".into());
    format!(
        "http://{}",
        addr.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")
    )
}

fn exit(e: Exit) -> ExitCode {
    match e {
        Exit::Ok => ExitCode::SUCCESS,
        Exit::Failed => ExitCode::FAILURE,
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn block_on<F: Future<Output = ExitCode>>(f: F) -> ExitCode {
    match runtime() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a one-shot subcommand with a Kubernetes client when the settings use
/// Kubernetes.
fn with_kube<F, Fut>(config: Config, f: F) -> ExitCode
where
    F: FnOnce(Config, Option<kube::Client>) -> Fut,
    Fut: Future<Output = Exit>,
{
    block_on(async move {
        let kube = if config.uses_kubernetes() {
            match kube_client().await {
                Ok(kube) => Some(kube.client),
                Err(e) => {
                    eprintln!("cannot set up the Kubernetes client: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        exit(f(config, kube).await)
    })
}

fn run(config: Config) -> ExitCode {
    logging::init(config.log_format);
    block_on(async {
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
async fn kube_client() -> Result<patroni_dr_watchdog::app::Kube, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    let server = Some(config.cluster_url.to_string());
    Ok(patroni_dr_watchdog::app::Kube {
        client: kube::Client::try_from(config)?,
        server,
    })
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

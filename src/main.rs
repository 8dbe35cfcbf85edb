use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use patroni_dr_watchdog::cli::{self, Exit};
use patroni_dr_watchdog::config::{self, Config, GoldConcern, NoGold};
use patroni_dr_watchdog::logging;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Watches the primary PostgreSQL site (Gold) from the DR site and promotes
/// the DR Patroni standby cluster when Gold is really gone. Every setting is
/// a WATCHDOG_* environment variable (listed below; README.md "Settings").
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
    /// Observe Gold from a third place and serve what it sees: Gold's
    /// PostgreSQL over this witness's own route and Gold's site heartbeat
    /// (its Patroni REST API), at /v1/observation for the DR watchdogs that
    /// list it in WATCHDOG_WITNESSES. Never writes anything.
    Witness,
    /// Beside Gold's Patroni: probe GoldDR through the reverse Transport
    /// Service, ask the witnesses, and fence Gold (make it a standby cluster
    /// following GoldDR) when GoldDR was promoted or Gold is isolated.
    Guard,
    /// Patroni's postgresql.pre_promote at Gold: exit 0 allows the promotion,
    /// 1 refuses it (GoldDR writable, Gold fenced, or Gold isolated). Reads
    /// the guard's settings.
    Gate,
    /// Validate the settings and reach Gold, the Kubernetes API, the local
    /// Patroni and PostgreSQL, and the witnesses; one line per check, exit
    /// code 0 only if all pass.
    Check {
        /// Check the guard's settings and what it relies on at Gold instead:
        /// GoldDR through the reverse Transport Service, the local Patroni,
        /// Gold's use_pg_rewind and the rewind's prerequisites, the witnesses.
        #[arg(long)]
        guard: bool,
    },
    /// Print a running watchdog's /status.
    Status {
        /// Base URL of the watchdog, e.g. 127.0.0.1:9808 (http:// is
        /// assumed); default: from WATCHDOG_LISTEN_ADDR, or
        /// http://127.0.0.1:9808.
        #[arg(long)]
        url: Option<String>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote the DR site now, through the same guards as the watchdog
    /// (except Gold's verdict, which is yours to judge). With --force, Gold's
    /// settings are not needed.
    Promote {
        /// Why; recorded in the audit annotations, the Event and the log.
        #[arg(long)]
        reason: String,
        /// Skip every guard.
        #[arg(long)]
        force: bool,
    },
    /// Make this promoted site a standby of the rebuilt primary site again
    /// (re-adds standby_cluster). Asks for a typed confirmation. Gold's
    /// settings are not needed.
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
    let matches = Cli::command().after_help(settings_help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Each command loads the concerns it needs: only those that probe Gold
    // ask for Gold's settings.
    match cli.command.unwrap_or(Command::Run) {
        Command::Status { url, json } => {
            let url = url.unwrap_or_else(default_status_url);
            block_on(async move { exit(cli::status(&url, json).await) })
        }
        Command::Run => with_config(run),
        Command::Witness => match config::WitnessConfig::load_env() {
            Ok(config) => witness(config),
            Err(e) => {
                eprintln!("patroni-dr-watchdog witness: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Guard => match config::GuardConfig::load_env() {
            Ok(config) => guard(config),
            Err(e) => {
                eprintln!("patroni-dr-watchdog guard: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Gate => match config::GuardConfig::load_env() {
            Ok(config) => {
                logging::init(config.log_format);
                block_on(async move {
                    if patroni_dr_watchdog::guard::gate(config).await {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                })
            }
            Err(e) => {
                eprintln!("patroni-dr-watchdog gate: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { guard: true } => match config::GuardConfig::load_env() {
            Ok(config) => block_on(async move {
                if patroni_dr_watchdog::guard::check(config).await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }),
            Err(e) => {
                eprintln!("patroni-dr-watchdog check --guard: configuration error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Check { guard: false } => with_config(|config: Config| {
            with_kube(config, |c, k| async move { cli::check(&c, k.as_ref()).await })
        }),
        Command::Promote { reason, force: false } => with_config(|config: Config| {
            with_kube(config, |c, k| async move {
                cli::promote(&c, k.as_ref(), &reason, false).await
            })
        }),
        Command::Promote { reason, force: true } => with_config(|config: Config<NoGold>| {
            with_kube(config, |c, k| async move {
                cli::promote(&c, k.as_ref(), &reason, true).await
            })
        }),
        Command::Failback { host, port, yes } => with_config(|config: Config<NoGold>| {
            with_kube(config, |c, k| async move {
                cli::failback(&c, k.as_ref(), &host, port, yes).await
            })
        }),
    }
}

/// The settings, listed from the one list the configuration reads.
fn settings_help() -> String {
    let mut help = String::from(
        "Settings: every setting is a WATCHDOG_* environment variable, documented in README.md, \
         section \"Settings\". Unknown WATCHDOG_* variables are refused.\n",
    );
    for (concern, vars) in config::vars::by_concern() {
        let mut line = format!("  {concern:<17}");
        for (i, var) in vars.iter().enumerate() {
            let sep = if i + 1 < vars.len() { ", " } else { "" };
            if line.len() + var.len() + sep.len() > 100 {
                help.push_str(line.trim_end());
                help.push('\n');
                line = " ".repeat(19);
            }
            line.push_str(var);
            line.push_str(sep);
        }
        help.push_str(&line);
        help.push('\n');
    }
    help
}

/// Loads the settings a command needs, or exits 2 naming the bad variable.
fn with_config<G: GoldConcern>(f: impl FnOnce(Config<G>) -> ExitCode) -> ExitCode {
    match Config::<G>::load_env() {
        Ok(config) => f(config),
        Err(e) => {
            eprintln!("patroni-dr-watchdog: configuration error: {e}");
            ExitCode::from(2)
        }
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
fn with_kube<G, F, Fut>(config: Config<G>, f: F) -> ExitCode
where
    G: GoldConcern,
    F: FnOnce(Config<G>, Option<kube::Client>) -> Fut,
    Fut: Future<Output = Exit>,
{
    block_on(async move {
        let kube = if config.uses_kubernetes() {
            match patroni_dr_watchdog::app::kube_client().await {
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
        let Some(listener) = listen(config.listen_addr).await else {
            return ExitCode::FAILURE;
        };
        let kube = if config.uses_kubernetes() {
            match patroni_dr_watchdog::app::kube_client().await {
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

/// The HTTP listener, or one line saying why not.
async fn listen(addr: std::net::SocketAddr) -> Option<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Some(l),
        Err(e) => {
            error!(error = %e, %addr, "WATCHDOG_LISTEN_ADDR: cannot listen");
            None
        }
    }
}

fn guard(config: config::GuardConfig) -> ExitCode {
    serve_role(
        "guard",
        config.log_format,
        config.listen_addr,
        |listener, shutdown| async move {
            let kube = patroni_dr_watchdog::guard::kube_for(&config).await?;
            patroni_dr_watchdog::guard::run(config, kube, listener, shutdown).await
        },
    )
}

fn witness(config: config::WitnessConfig) -> ExitCode {
    serve_role(
        "witness",
        config.log_format,
        config.listen_addr,
        |listener, shutdown| patroni_dr_watchdog::witness::run(config, listener, shutdown),
    )
}

/// A role that serves HTTP until SIGTERM: logs, the listener, the run.
fn serve_role<F>(
    role: &'static str,
    log_format: config::LogFormat,
    listen_addr: std::net::SocketAddr,
    run: impl FnOnce(tokio::net::TcpListener, CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), patroni_dr_watchdog::app::Error>>,
{
    logging::init(log_format);
    block_on(async {
        let Some(listener) = listen(listen_addr).await else {
            return ExitCode::FAILURE;
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match run(listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, role, "failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// In-cluster config, or KUBECONFIG. kube's own retry of 429/503/504 is off:
/// every caller here retries explicitly, with limits it chose.
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

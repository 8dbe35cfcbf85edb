//! The witness role's shell: every interval one round — a probe of Gold's
//! PostgreSQL and a check of Gold's site heartbeat, together — fed to the
//! pure [`WitnessState`], which is published for the HTTP views. A witness
//! never writes anything, anywhere: it holds no Kubernetes client and no
//! credentials but the probe's.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::app::Error;
use crate::config::{GoldAddress, WitnessConfig};
use crate::decide::detector::Verdict;
use crate::decide::quorum::{Says, SiteState};
use crate::decide::witness::{Change, Round, WitnessState};
use crate::observe::probe::{PgProbe, Probe};
use crate::observe::signal;
use crate::observe::target::Endpoint;
use crate::report::witness::{WitnessMetrics, WitnessView, router};

pub async fn run(
    config: WitnessConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let probe = PgProbe::new(config.gold.clone(), config.probe_timeout)?;
    let endpoint = Endpoint {
        host: config.gold.address.host(""),
        port: config.gold.address.fixed_port().unwrap_or_default(),
    };
    debug_assert!(matches!(config.gold.address, GoldAddress::Static { .. }));
    let http = signal::http_client(config.probe_timeout).map_err(Error::HttpClient)?;
    let mut state = WitnessState::new(config.thresholds, Instant::now());
    let (published, view_state) = watch::channel(state.clone());
    let metrics = Arc::new(WitnessMetrics::new(view_state.clone()));
    let app = router(WitnessView {
        state: view_state,
        metrics: metrics.clone(),
        config: config.clone(),
    });
    let listen_addr = listener.local_addr().unwrap_or(config.listen_addr);
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let heartbeat: Vec<String> = config.heartbeat.iter().map(ToString::to_string).collect();
    info!(
        target = %endpoint,
        heartbeat = %heartbeat.join(","),
        identity = %config.identity,
        listen_addr = %listen_addr,
        interval = %humantime::format_duration(config.probe_interval),
        timeout = %humantime::format_duration(config.probe_timeout),
        fall = config.thresholds.fall(),
        rise = config.thresholds.rise(),
        promote_after = config.thresholds.promote_after(),
        "witness started"
    );
    state.start();
    published.send_replace(state.clone());
    let mut interval = tokio::time::interval(config.probe_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let started = Instant::now();
        let round = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            (report, readings) = async {
                tokio::join!(
                    probe.probe(&endpoint),
                    signal::check_all(&config.heartbeat, &http, config.probe_timeout)
                )
            } => Round { started, probe: report, heartbeat: readings },
        };
        metrics.probe.observe_probe(&round.probe);
        metrics.heartbeat_checked(round.heartbeat.iter().any(|(_, r)| r.alive()));
        let outcome = round.probe.outcome;
        let error = round.probe.error.clone().unwrap_or_default();
        for change in state.round(round, SystemTime::now()) {
            log_change(
                &state,
                change,
                &endpoint,
                outcome.class(),
                outcome.reason(),
                &error,
            );
            if let Change::Verdict(t) = change {
                metrics.probe.verdict_entered(t.to);
            }
        }
        published.send_replace(state.clone());
    }
    state.stop();
    published.send_replace(state);
    info!("witness stopped");
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) | Err(_) => Ok(()),
        Ok(Ok(Err(e))) => Err(Error::Http(e)),
        Ok(Err(join)) => Err(Error::Http(std::io::Error::other(join))),
    }
}

/// One line per change, with the facts behind it as fields.
fn log_change(
    state: &WitnessState,
    change: Change,
    endpoint: &Endpoint,
    outcome: &str,
    reason: &str,
    error: &str,
) {
    let verdict = state.verdict().as_str();
    let site: &str = state.site().into();
    match change {
        Change::Verdict(t) => {
            let worse = matches!(t.to, Verdict::Down | Verdict::Lost) && t.from != Verdict::Lost;
            if worse {
                warn!(from = %t.from, to = %t.to, %endpoint, outcome, reason, error, site,
                    consecutive_failures = state.detector().consecutive_failures(), "gold verdict changed");
            } else {
                info!(from = %t.from, to = %t.to, %endpoint, outcome, reason, site, "gold verdict changed");
            }
        }
        Change::Site { from, to } => {
            let from: &str = from.into();
            let to_name: &str = to.into();
            if to == SiteState::Silent {
                warn!(from, to = to_name, verdict, "gold's site heartbeat fell silent");
            } else {
                info!(from, to = to_name, verdict, "gold's site heartbeat changed");
            }
        }
        Change::Says { from, to } => {
            if to == Says::SiteLost {
                warn!(from = %from, says = %to, verdict, site, "witness says gold's site is lost");
            } else {
                info!(from = %from, says = %to, verdict, site, "witness changed what it says of gold");
            }
        }
    }
}

//! The loop that ties target, probe, detector, metrics and status together,
//! and [`run`], which wires the whole process.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::detector::{Detector, Transition, Verdict};
use crate::http;
use crate::metrics::Metrics;
use crate::probe::{Outcome, PgProbe, Probe, ProbeReport, TlsSetupError};
use crate::status::{LastProbe, State, Status};
use crate::target::{self, Endpoint, Target};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WATCHDOG_GOLD_SSLROOTCERT: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

pub struct Watchdog<P> {
    probe: P,
    detector: Detector,
    target: watch::Receiver<Target>,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    interval: Duration,
    last_outcome: Option<Outcome>,
}

impl<P: Probe> Watchdog<P> {
    pub fn new(
        config: Arc<Config>,
        probe: P,
        target: watch::Receiver<Target>,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Status>) {
        let current = target.borrow().clone();
        metrics.set_target(&current);
        let (status, status_rx) = watch::channel(Status::new(config.clone(), current));
        let watchdog = Watchdog {
            probe,
            detector: Detector::new(config.thresholds),
            target,
            metrics,
            status,
            interval: config.probe_interval,
            last_outcome: None,
        };
        (watchdog, status_rx)
    }

    /// One probe and its consequences. `None` when there was no target to
    /// probe. Public so tests can step the loop deterministically.
    pub async fn tick(&mut self) -> Option<ProbeReport> {
        let target = self.target.borrow_and_update().clone();
        if self.status.borrow().target != target {
            info!(target = ?target, "target changed");
            self.metrics.set_target(&target);
        }
        let report = match &target {
            Target::Known { endpoint, .. } => {
                let report = self.probe.probe(endpoint).await;
                self.record(endpoint, &report);
                Some(report)
            }
            Target::Unknown { .. } => None,
        };
        let state = match target {
            Target::Known { .. } => State::Watching,
            Target::Unknown { .. } => State::TargetUnknown,
        };
        self.metrics.set_state(state);
        self.status.send_modify(|s| {
            s.state = state;
            s.target = target;
            s.last_tick = Some(std::time::Instant::now());
        });
        report
    }

    fn record(&mut self, endpoint: &Endpoint, report: &ProbeReport) {
        let now = SystemTime::now();
        let unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        self.metrics.observe_probe(report, unix);
        let transition = self.detector.observe(report.outcome.observation());
        let (failures, successes) = (
            self.detector.consecutive_failures(),
            self.detector.consecutive_successes(),
        );
        self.metrics.set_streaks(failures, successes);
        self.log_probe(endpoint, report, transition);
        if let Some(t) = transition {
            self.metrics.transition(t);
        }
        self.status.send_modify(|s| {
            s.verdict = self.detector.verdict();
            if transition.is_some() {
                s.verdict_since = Some(now);
            }
            s.consecutive_failures = failures;
            s.consecutive_successes = successes;
            s.counters.probes += 1;
            match report.outcome {
                Outcome::Up => s.counters.up += 1,
                Outcome::Down(_) => s.counters.down += 1,
                Outcome::Blind(_) => s.counters.blind += 1,
            }
            s.last_probe = Some(LastProbe::new(report, now));
        });
        self.last_outcome = Some(report.outcome);
    }

    /// One line per verdict change; one line when the kind of probe result
    /// changes (so a blind or failing probe is visible before it matters);
    /// everything else at debug.
    fn log_probe(&self, endpoint: &Endpoint, report: &ProbeReport, transition: Option<Transition>) {
        let outcome = report.outcome;
        let failures = self.detector.consecutive_failures();
        let successes = self.detector.consecutive_successes();
        let error = report.error.as_deref().unwrap_or("");
        let duration_ms = report.duration.as_millis() as u64;
        if let Some(Transition { from, to }) = transition {
            let t = self.detector.thresholds();
            // Warn when Gold looks worse; a step back from lost is good news.
            let worse = matches!(to, Verdict::Down | Verdict::Lost) && from != Verdict::Lost;
            if worse {
                warn!(
                    %from, %to, %endpoint, outcome = outcome.class(), reason = outcome.reason(), error,
                    consecutive_failures = failures, fall = t.fall(), promote_after = t.promote_after(),
                    "gold verdict changed"
                );
            } else {
                info!(
                    %from, %to, %endpoint, outcome = outcome.class(), reason = outcome.reason(),
                    consecutive_successes = successes, rise = t.rise(), "gold verdict changed"
                );
            }
        } else if self.last_outcome != Some(outcome) {
            match outcome {
                Outcome::Blind(_) => {
                    warn!(%endpoint, outcome = outcome.class(), reason = outcome.reason(), error,
                    "probe is blind: gold answered but the probe cannot judge it; fix the probe's settings")
                }
                _ => info!(%endpoint, outcome = outcome.class(), reason = outcome.reason(), error,
                    consecutive_failures = failures, consecutive_successes = successes, duration_ms,
                    "probe result changed"),
            }
        } else {
            debug!(%endpoint, outcome = outcome.class(), reason = outcome.reason(), duration_ms, "probe");
        }
    }

    /// Probes on a fixed schedule until `shutdown` fires. Ticks that fall
    /// behind are delayed, never bunched, and one probe never overlaps the
    /// next because they run in sequence on this task.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.metrics.set_state(State::Watching);
        self.status.send_modify(|s| s.state = State::Watching);
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Spreads the sidecars of one StatefulSet so they don't probe Gold in
        // lockstep.
        let max_jitter = (self.interval / 20).min(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let jitter = max_jitter.mul_f64(fastrand::f64());
            tokio::select! {
                biased;
                // Dropping an in-flight probe closes its socket.
                _ = shutdown.cancelled() => break,
                _ = async {
                    tokio::time::sleep(jitter).await;
                    self.tick().await
                } => {}
            }
        }
        self.metrics.set_state(State::Stopping);
        self.status.send_modify(|s| s.state = State::Stopping);
        info!("probe loop stopped");
    }
}

/// The whole process: probe loop plus HTTP server, until `shutdown` fires.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let probe = PgProbe::new(config.gold.clone(), config.probe_timeout)?;
    let (_target_tx, target_rx) = target::fixed(Endpoint {
        host: config.gold_host.clone(),
        port: config.gold_port,
    });
    let (watchdog, status) = Watchdog::new(config.clone(), probe, target_rx, metrics.clone());

    let app = http::router(http::AppState::new(status, metrics, &config));
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    info!(
        gold = %format!("{}:{}", config.gold_host, config.gold_port),
        interval = %humantime::format_duration(config.probe_interval),
        timeout = %humantime::format_duration(config.probe_timeout),
        fall = config.thresholds.fall(),
        rise = config.thresholds.rise(),
        promote_after = config.thresholds.promote_after(),
        "watchdog started"
    );
    watchdog.run(shutdown).await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Http(e)),
        Err(join) => Err(Error::Http(std::io::Error::other(join))),
    }
}

//! The loop that ties target, probe, detector, metrics and status together,
//! and [`run`], which wires the whole process.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::act::actor::{self, ActReport, Actor};
use crate::config::{Config, GoldAddress, ServicePort};
use crate::decide::detector::{Detector, Transition, Verdict};
use crate::decide::guards::Veto;
use crate::observe::probe::{Outcome, PgProbe, Probe, ProbeReport, TlsSetupError};
use crate::observe::target::{self, Endpoint, Target};
use crate::report::http;
use crate::report::metrics::Metrics;
use crate::report::status::{LastProbe, State, Status};
use crate::report::webhook::Webhook;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("WATCHDOG_GOLD_SSLROOTCERT: {0}")]
    Tls(#[from] TlsSetupError),
    #[error("HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    #[error(
        "the settings need Kubernetes (WATCHDOG_TS_SERVICE or WATCHDOG_PROMOTER=configmap) but no client was given"
    )]
    NoKubernetes,
    #[error("cannot build an HTTP client (TLS set-up): {0}")]
    PatroniClient(#[source] reqwest::Error),
}

/// Probe errors kept for the promotion's Event and audit trail.
const RECENT_ERRORS: usize = 3;

pub struct Watchdog<P> {
    probe: P,
    detector: Detector,
    target: watch::Receiver<Target>,
    metrics: Arc<Metrics>,
    status: watch::Sender<Status>,
    interval: Duration,
    last_outcome: Option<Outcome>,
    actor: Option<Arc<Actor>>,
    verdict: watch::Sender<Verdict>,
    acting: Option<JoinHandle<ActReport>>,
    /// Set once this process promoted or found the cluster promoted: it
    /// never acts again.
    latched: bool,
    recent_errors: VecDeque<String>,
    /// What the last act reported, so each new situation is logged once.
    last_act: Option<String>,
    webhook: Option<Webhook>,
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
            actor: None,
            verdict: watch::Sender::new(Verdict::Unknown),
            acting: None,
            latched: false,
            recent_errors: VecDeque::new(),
            last_act: None,
            webhook: None,
        };
        (watchdog, status_rx)
    }

    /// Lets this watchdog promote when Gold is lost.
    pub fn with_actor(mut self, actor: Arc<Actor>) -> Self {
        self.actor = Some(actor);
        self
    }

    /// Sends alerts to this webhook too.
    pub fn with_webhook(mut self, webhook: Webhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// The status channel's sender, for tasks that add to the status.
    pub fn status_sender(&self) -> watch::Sender<Status> {
        self.status.clone()
    }

    /// One probe and its consequences. `None` when there was no target to
    /// probe. Public so tests can step the loop deterministically.
    pub async fn tick(&mut self) -> Option<ProbeReport> {
        let target = self.target.borrow_and_update().clone();
        if self.status.borrow().target != target {
            self.retarget(&target);
        }
        let report = match &target {
            Target::Known { endpoint, .. } => {
                let report = self.probe.probe(endpoint).await;
                self.record(endpoint, &report);
                self.check_split_brain(&report);
                Some(report)
            }
            Target::Unknown { .. } => None,
        };
        self.settle_act().await;
        if self.detector.verdict() == Verdict::Lost && !self.latched && self.acting.is_none() {
            self.start_act(matches!(target, Target::Known { .. }));
        }
        self.status.send_modify(|s| {
            s.target = target;
            s.last_tick = Some(std::time::Instant::now());
        });
        self.publish_state();
        report
    }

    fn publish_state(&self) {
        let state = match (&self.status.borrow().target, self.latched) {
            (_, true) => State::Promoted,
            (Target::Known { .. }, false) => State::Watching,
            (Target::Unknown { .. }, false) => State::TargetUnknown,
        };
        self.metrics.set_state(state);
        self.status.send_modify(|s| s.state = state);
    }

    /// Results against one address say nothing about another: start over.
    fn retarget(&mut self, target: &Target) {
        match target {
            Target::Known { endpoint, source } => {
                info!(%endpoint, source = source.as_str(), "probing a new target")
            }
            Target::Unknown { reason } => {
                warn!(reason = %reason, "target unknown: probing paused, Gold cannot be declared lost")
            }
        }
        self.metrics.set_target(target);
        self.metrics.target_changed();
        if let Some(t) = self.detector.reset() {
            info!(from = %t.from, to = %t.to, "gold verdict reset with the target");
            self.metrics.transition(t);
            self.verdict.send_replace(Verdict::Unknown);
            self.status.send_modify(|s| {
                s.verdict = Verdict::Unknown;
                s.verdict_since = Some(SystemTime::now());
                s.consecutive_failures = 0;
                s.consecutive_successes = 0;
            });
        }
        self.last_outcome = None;
        self.metrics.set_streaks(0, 0);
    }

    fn start_act(&mut self, target_known: bool) {
        let Some(actor) = self.actor.clone() else { return };
        let failures = self.detector.consecutive_failures();
        let errors: Vec<&str> = self.recent_errors.iter().map(String::as_str).collect();
        let reason = format!(
            "Gold lost: {failures} consecutive failed probes, {} apart; last errors: {}",
            humantime::format_duration(self.interval),
            errors.join(" | ")
        );
        self.acting = Some(tokio::spawn(actor.act(
            target_known,
            reason,
            self.verdict.subscribe(),
        )));
    }

    /// Takes in a finished act, if any. Never waits for an unfinished one.
    /// (The scheduled loop takes it in the moment it finishes.)
    async fn settle_act(&mut self) {
        if !self.acting.as_ref().is_some_and(JoinHandle::is_finished) {
            return;
        }
        let Some(handle) = self.acting.take() else { return };
        self.take_report(handle.await);
    }

    /// Logs, counts, alerts and publishes what an act decided.
    fn take_report(&mut self, joined: Result<ActReport, tokio::task::JoinError>) {
        let report = match joined {
            Ok(report) => report,
            Err(e) => {
                error!(error = %e, "promotion task failed");
                return;
            }
        };
        let now = SystemTime::now();
        // What makes a situation new: which guards object (not their
        // changing details), or the kind of outcome.
        let key = match &report {
            ActReport::Vetoed(v) => v.iter().map(Veto::name).collect::<Vec<_>>().join(","),
            ActReport::DryRun { .. } => "dry_run".to_string(),
            other => format!("{other:?}"),
        };
        let changed = self.last_act.as_deref() != Some(key.as_str());
        self.last_act = Some(key);
        match report {
            ActReport::Vetoed(vetoes) => {
                for v in &vetoes {
                    self.metrics.veto(v.name());
                }
                if changed {
                    let guards: Vec<&str> = vetoes.iter().map(Veto::name).collect();
                    warn!(guards = ?guards, details = ?vetoes, "gold is lost but promotion is vetoed");
                    self.alert(
                        true,
                        "PromotionVetoed",
                        format!(
                            "Gold is lost but promotion is held back by: {}",
                            vetoes.iter().map(Veto::describe).collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
                self.status.send_modify(|s| s.promotion.vetoes = vetoes);
            }
            ActReport::DryRun { would } => {
                if changed {
                    self.metrics.promotion("dry_run");
                    warn!(would = %would, "dry run: every guard agrees; nothing written");
                    self.alert(
                        true,
                        "DryRunPromotion",
                        format!("DRY RUN: {would}; nothing written"),
                    );
                }
                self.status.send_modify(|s| {
                    s.promotion.result = Some("dry_run");
                    s.promotion.at = Some(now);
                    s.promotion.reason = Some(would);
                    s.promotion.vetoes.clear();
                });
            }
            ActReport::Promoted { audit } => {
                self.latched = true;
                self.metrics.promotion("promoted");
                error!(by = %audit.by, reason = %audit.reason,
                    "PROMOTED: the DR standby cluster is being promoted to primary. Failback is manual");
                self.alert(
                    true,
                    "PromotedStandbyCluster",
                    format!("{} promoted the DR standby cluster. {}", audit.by, audit.reason),
                );
                self.status.send_modify(|s| {
                    s.promotion.result = Some("promoted");
                    s.promotion.at = Some(audit.at);
                    s.promotion.reason = Some(audit.reason);
                    s.promotion.vetoes.clear();
                    s.promotion.last_error = None;
                });
            }
            ActReport::AlreadyPromoted => {
                self.latched = true;
                self.metrics.promotion("already_promoted");
                info!("gold is lost and the DR cluster is already promoted: nothing written");
                self.alert(
                    false,
                    "AlreadyPromoted",
                    "Gold is lost and the DR cluster is already promoted: nothing written".to_string(),
                );
                self.status.send_modify(|s| {
                    s.promotion.result = Some("already_promoted");
                    s.promotion.at = Some(now);
                    s.promotion.vetoes.clear();
                });
            }
            ActReport::CalledOff(why) => {
                self.metrics.promotion("called_off");
                info!(why, "promotion called off before writing");
            }
            ActReport::Failed(e) => {
                self.metrics.promotion("failed");
                let message = e.to_string();
                if changed {
                    error!(error = %message, "promotion failed; nothing was written; will try again while Gold stays lost");
                    self.alert(true, "PromotionFailed", format!("promotion failed: {message}"));
                }
                self.status
                    .send_modify(|s| s.promotion.last_error = Some(message));
            }
        }
    }

    /// Site-wide alerts (Gold lost, probe blind) come from the sidecar beside
    /// the standby leader only, so three sidecars don't say everything thrice.
    fn speaks_for_site(&self) -> bool {
        matches!(
            self.status.borrow().cluster.role,
            None | Some(crate::decide::guards::Role::StandbyLeader)
        )
    }

    /// A Kubernetes Event on the config ConfigMap (when there is one) and a
    /// webhook message. Both are delivered off the loop.
    fn alert(&self, warning: bool, reason: &'static str, text: String) {
        if let Some(webhook) = &self.webhook {
            webhook.send(&text);
        }
        if let Some(events) = self.actor.as_ref().and_then(|a| a.events.clone()) {
            let metrics = self.metrics.clone();
            tokio::spawn(async move { events.publish(&metrics, warning, reason, "Promote", text).await });
        }
    }

    /// After this process promoted, Gold must stay dead: a writable Gold now
    /// means two primaries. Raised, never repaired: failback is a human act.
    fn check_split_brain(&mut self, report: &ProbeReport) {
        if !self.latched {
            return;
        }
        let writable = report.outcome == Outcome::Up;
        let was = self.status.borrow().promotion.split_brain;
        if writable == was {
            return;
        }
        self.metrics.set_split_brain(writable);
        self.status.send_modify(|s| s.promotion.split_brain = writable);
        if writable {
            error!(
                "SPLIT BRAIN: Gold answers as a writable primary while GoldDR was promoted. Stop writes to one site now; see the failback procedure"
            );
            self.alert(
                true,
                "SplitBrain",
                "SPLIT BRAIN: Gold answers as a writable primary again while GoldDR was promoted. Stop writes to one site now."
                    .to_string(),
            );
        } else {
            warn!(outcome = %report.outcome, "Gold no longer answers as a writable primary");
        }
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
        if self.speaks_for_site() {
            let error = report.error.as_deref().unwrap_or("");
            if transition.is_some_and(|t| t.to == Verdict::Lost) {
                self.alert(
                    true,
                    "GoldLost",
                    format!(
                        "Gold {endpoint} is lost: {failures} consecutive failed probes ({}: {error})",
                        report.outcome
                    ),
                );
            }
            if matches!(report.outcome, Outcome::Blind(_))
                && !matches!(self.last_outcome, Some(Outcome::Blind(_)))
            {
                self.alert(
                    true,
                    "ProbeBlind",
                    format!(
                        "the probe of Gold {endpoint} is blind ({}: {error}): Gold answered but cannot be judged; fix the probe's settings",
                        report.outcome
                    ),
                );
            }
        }
        if let Some(t) = transition {
            self.metrics.transition(t);
            self.verdict.send_replace(t.to);
            if t.from == Verdict::Lost {
                // A later loss is a new situation, reported afresh.
                self.last_act = None;
                self.status.send_modify(|s| s.promotion.vetoes.clear());
            }
        }
        if let Some(error) = &report.error {
            if self.recent_errors.len() == RECENT_ERRORS {
                self.recent_errors.pop_front();
            }
            self.recent_errors
                .push_back(format!("{}: {error}", report.outcome));
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
                // A decision is reported the moment it is made, not a tick later.
                joined = async {
                    match self.acting.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.acting = None;
                    self.take_report(joined);
                    self.publish_state();
                    continue;
                }
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

/// The whole process: target discovery, probe loop, cluster observer,
/// promotion and HTTP server, until `shutdown` fires. `kube` is required when
/// the settings use Kubernetes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    kube: Option<kube::Client>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let probe = PgProbe::new(config.gold.clone(), config.probe_timeout)?;
    let kube = match (config.uses_kubernetes(), kube) {
        (true, None) => return Err(Error::NoKubernetes),
        (_, kube) => kube,
    };
    let namespace = config
        .namespace
        .clone()
        .or_else(|| kube.as_ref().map(|k| k.default_namespace().to_string()))
        .unwrap_or_else(|| "default".to_string());

    let address = &config.gold.address;
    let host = address.host(&namespace);
    let (target_tx, target_rx) = match (address, &kube) {
        (
            GoldAddress::Static { port, .. }
            | GoldAddress::Service {
                port: ServicePort::Static(port),
                ..
            },
            _,
        ) => target::fixed(Endpoint { host, port: *port }),
        (
            GoldAddress::Service {
                name: svc,
                port: ServicePort::Discovered { port_name },
                ..
            },
            Some(client),
        ) => {
            let (tx, rx) = watch::channel(Target::Unknown {
                reason: format!("looking up Service {namespace}/{svc}"),
            });
            tokio::spawn(target::discover(
                Api::<Service>::namespaced(client.clone(), &namespace),
                svc.clone(),
                port_name.clone(),
                host,
                tx.clone(),
                metrics.clone(),
                shutdown.clone(),
            ));
            (tx, rx)
        }
        (GoldAddress::Service { .. }, None) => return Err(Error::NoKubernetes),
    };

    let (mut watchdog, status) = Watchdog::new(config.clone(), probe, target_rx, metrics.clone());
    if let Some(actor) = actor::build(&config, kube.as_ref(), &namespace).map_err(Error::PatroniClient)? {
        let actor = Arc::new(actor);
        tokio::spawn(actor::observe_cluster(
            actor.clone(),
            watchdog.status_sender(),
            metrics.clone(),
            config.probe_interval,
            shutdown.clone(),
        ));
        watchdog = watchdog.with_actor(actor);
    }
    if let Some(url) = &config.webhook_url {
        let webhook = Webhook::spawn(url.expose().to_string(), &config.identity, metrics.clone())
            .map_err(Error::PatroniClient)?;
        watchdog = watchdog.with_webhook(webhook);
    }

    let listen_addr = listener.local_addr().unwrap_or(config.listen_addr);
    let app = http::router(http::AppState::new(status, metrics, &config));
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    info!(
        target = %match &*target_tx.borrow() {
            Target::Known { endpoint, .. } => endpoint.to_string(),
            Target::Unknown { reason } => format!("unknown: {reason}"),
        },
        namespace = %namespace,
        listen_addr = %listen_addr,
        promoter = config.promoter.as_str(),
        interval = %humantime::format_duration(config.probe_interval),
        timeout = %humantime::format_duration(config.probe_timeout),
        fall = config.thresholds.fall(),
        rise = config.thresholds.rise(),
        promote_after = config.thresholds.promote_after(),
        "watchdog started"
    );
    watchdog.run(shutdown).await;
    drop(target_tx);
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Http(e)),
        Err(join) => Err(Error::Http(std::io::Error::other(join))),
    }
}

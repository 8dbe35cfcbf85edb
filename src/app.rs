//! The shell around the pure loop state: it probes, observes and writes,
//! feeds what comes back to [`LoopState`] as events, carries out the effects
//! it returns, and publishes its snapshot. Also [`run`], which wires the
//! whole process, and [`build_cluster`], which the subcommands share.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::Api;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::act::promoter::{
    self, AnyPromoter, ConfigMapPromoter, PatroniApiPromoter, PgPromoter, PromoteError, Promoter, Promotion,
};
use crate::act::standby_target::StandbyWriter;
use crate::config::{Config, GoldAddress, GoldConcern, PromoterKind, ServicePort};
use crate::decide::detector::{Transition, Verdict};
use crate::decide::guards::Limits;
use crate::decide::standby_target::{self, Decision, FixOutcome, FixRequest, Hold, Report, TsNames};
use crate::decide::state::{Alert, Audit, Effect, Event, LoopState, Policy, Severity, Written};
use crate::observe::cluster::{self, ClusterObserver, Observation, Others};
use crate::observe::cluster_config::{
    ConfigMapReader, ConfigReader, PatroniConfigReader, PostgresConfigReader,
};
use crate::observe::local_pg::LocalPg;
use crate::observe::patroni::PatroniClient;
use crate::observe::probe::{Outcome, PgProbe, Probe, ProbeReport, TlsSetupError};
use crate::observe::target::{self, Endpoint, Target};
use crate::report::events::Events;
use crate::report::http;
use crate::report::metrics::Metrics;
use crate::report::status::Status;
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
    HttpClient(#[source] reqwest::Error),
}

/// A client from the pod's service account or `KUBECONFIG`; our own retries
/// and backoff, not the client's.
pub async fn kube_client() -> Result<Kube, kube::Error> {
    let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    let server = Some(config.cluster_url.to_string());
    Ok(Kube {
        client: kube::Client::try_from(config)?,
        server,
    })
}

/// Discovery of a Transport Service's port, ready to start once its error
/// counter exists.
pub struct PendingDiscovery {
    kube: Kube,
    namespace: String,
    service: String,
    port_name: Option<String>,
    host: String,
}

impl PendingDiscovery {
    /// The Service's address now, read once (for one-shot commands).
    pub async fn read_once(&self) -> Target {
        let api = Api::<Service>::namespaced(self.kube.client.clone(), &self.namespace);
        let object = format!("{}/{}", self.namespace, self.service);
        // A list by name, as the watcher does: the same RBAC rule allows it.
        let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={}", self.service));
        match api.list(&by_name).await {
            Ok(list) => target::resolve(list.items.first(), &object, self.port_name.as_deref(), &self.host),
            Err(e) => Target::Unknown {
                reason: format!("cannot read Service {object}: {}", crate::error_chain(&e)),
            },
        }
    }

    pub fn spawn(
        self,
        errors: prometheus_client::metrics::counter::Counter,
        tx: watch::Sender<Target>,
        shutdown: CancellationToken,
    ) {
        let discovery = target::Discovery {
            api: Api::<Service>::namespaced(self.kube.client, &self.namespace),
            service: self.service,
            port_name: self.port_name,
            host: self.host,
            server: self.kube.server,
            errors,
        };
        tokio::spawn(target::discover(discovery, tx, shutdown));
    }
}

/// The probed address's channel, and the discovery to start when it follows
/// a Service.
pub type TargetChannel = (
    watch::Sender<Target>,
    watch::Receiver<Target>,
    Option<PendingDiscovery>,
);

/// Where the site behind `address` is probed: fixed, or followed live on its
/// Transport Service (unknown until the Service is read). Every role that
/// probes a site through a Transport Service sets it up here.
pub fn target_channel(
    address: &GoldAddress,
    namespace: &str,
    kube: Option<&Kube>,
) -> Result<TargetChannel, Error> {
    let host = address.host(namespace);
    match (address, kube) {
        (
            GoldAddress::Static { port, .. }
            | GoldAddress::Service {
                port: ServicePort::Static(port),
                ..
            },
            _,
        ) => {
            let (tx, rx) = target::fixed(Endpoint { host, port: *port });
            Ok((tx, rx, None))
        }
        (
            GoldAddress::Service {
                name,
                port: ServicePort::Discovered { port_name },
                ..
            },
            Some(kube),
        ) => {
            let (tx, rx) = watch::channel(Target::Unknown {
                reason: format!("looking up Service {namespace}/{name}"),
            });
            let pending = PendingDiscovery {
                kube: kube.clone(),
                namespace: namespace.to_string(),
                service: name.clone(),
                port_name: port_name.clone(),
                host,
            };
            Ok((tx, rx, Some(pending)))
        }
        (GoldAddress::Service { .. }, None) => Err(Error::NoKubernetes),
    }
}

/// A Kubernetes client, and the API server it talks to for log lines (a
/// `kube::Client` cannot say which one).
#[derive(Clone)]
pub struct Kube {
    pub client: kube::Client,
    pub server: Option<String>,
}

impl From<kube::Client> for Kube {
    fn from(client: kube::Client) -> Self {
        Kube { client, server: None }
    }
}

/// What this site can do about a lost Gold: observe the cluster beside us
/// and write the promotion.
pub struct Cluster {
    pub observer: ClusterObserver,
    pub promoter: AnyPromoter,
    /// The object Events are recorded on, when there is one.
    pub event_object: Option<ObjectReference>,
}

/// The observer and promoter the settings ask for; `None` when the promoter
/// is `none`.
pub fn build_cluster<G: GoldConcern>(
    config: &Config<G>,
    kube: Option<&kube::Client>,
    namespace: &str,
) -> Result<Option<Cluster>, Error> {
    let timeout = config.probe_timeout;
    let local_pg = LocalPg::new(&config.local_pg, timeout);
    let patroni = || PatroniClient::new(&config.patroni, timeout).map_err(Error::HttpClient);
    let (reader, promoter, event_object) = match (config.promoter, kube) {
        (PromoterKind::None, _) => return Ok(None),
        (PromoterKind::Configmap, Some(client)) => {
            let reader = ConfigMapReader::new(client.clone(), namespace, &config.patroni_configmap);
            let reference = reader.reference();
            (
                ConfigReader::ConfigMap(reader.clone()),
                AnyPromoter::ConfigMap(ConfigMapPromoter { reader }),
                Some(reference),
            )
        }
        (PromoterKind::Configmap, None) => return Err(Error::NoKubernetes),
        (PromoterKind::PatroniApi, _) => {
            let reader = PatroniConfigReader { patroni: patroni()? };
            (
                ConfigReader::PatroniApi(reader.clone()),
                AnyPromoter::PatroniApi(PatroniApiPromoter { reader }),
                None,
            )
        }
        (PromoterKind::PgPromote, _) => {
            let reader = PostgresConfigReader {
                pg: local_pg.clone(),
                object: format!("PostgreSQL {}:{}", config.local_pg.host, config.local_pg.port),
            };
            (
                ConfigReader::Postgres(reader.clone()),
                AnyPromoter::PgPromote(PgPromoter { reader }),
                None,
            )
        }
    };
    let patroni = if config.uses_patroni() {
        Some(patroni()?)
    } else {
        None
    };
    let others = Others {
        signals: config.quorum.gold_signals.clone(),
        witnesses: config.quorum.witnesses.clone(),
    };
    let observer =
        ClusterObserver::new(patroni, reader, local_pg, others, timeout).map_err(Error::HttpClient)?;
    Ok(Some(Cluster {
        observer,
        promoter,
        event_object,
    }))
}

/// The guards' limits from the settings.
pub fn limits<G>(config: &Config<G>) -> Limits {
    Limits {
        mode: config.mode,
        wal_receiver_fresh: config.wal_receiver_fresh,
        max_data_age: config.max_data_age,
        allow_stale_promotion: config.allow_stale_promotion,
        quorum: config.quorum.needed,
        witness_max_age: config.quorum.witness_max_age,
    }
}

/// Promotes with retries, and says how it went as the loop's event.
pub async fn write(promoter: &AnyPromoter, audit: Audit, verdict: watch::Receiver<Verdict>) -> Written {
    match promoter::promote(promoter, &audit, &verdict).await {
        Ok(Promotion::Written) => Written::Promoted(audit),
        Ok(Promotion::AlreadyPromoted) => Written::AlreadyPromoted,
        Err(PromoteError::CalledOff(why)) => Written::CalledOff(why),
        Err(e) => Written::Failed(crate::error_chain(&e)),
    }
}

pub struct Watchdog<P> {
    probe: P,
    state: LoopState,
    settings: Arc<Config>,
    target: watch::Receiver<Target>,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Gold's verdict for a promotion in flight, which stops retrying the
    /// moment Gold answers again.
    verdict: watch::Sender<Verdict>,
    observer: Option<ClusterObserver>,
    observations: mpsc::Receiver<Observation>,
    observations_tx: mpsc::Sender<Observation>,
    observe_now: Arc<Notify>,
    promoter: Option<Arc<AnyPromoter>>,
    events: Option<Events>,
    webhook: Option<Webhook>,
    writing: Option<JoinHandle<Written>>,
    /// Writes `standby_cluster` when the Transport Service moves.
    standby_writer: Option<Arc<StandbyWriter>>,
    standby_setup: standby_target::Setup,
    /// The standby-target write in flight, and what it writes.
    standby_writing: Option<(FixRequest, JoinHandle<FixOutcome>)>,
}

impl<P: Probe> Watchdog<P> {
    pub fn new(settings: Arc<Config>, probe: P, target: watch::Receiver<Target>) -> Self {
        let current = target.borrow().clone();
        let policy = Policy {
            thresholds: settings.thresholds,
            interval: settings.probe_interval,
            limits: limits(&settings),
            identity: settings.identity.clone(),
            promotes: None,
        };
        let state = LoopState::new(policy, current);
        let started = Instant::now();
        let (status, status_rx) = watch::channel(Status::of(&state, &settings, started));
        let metrics = Arc::new(Metrics::new(status_rx));
        let (observations_tx, observations) = mpsc::channel(4);
        Watchdog {
            probe,
            state,
            settings,
            target,
            status,
            metrics,
            started,
            verdict: watch::Sender::new(Verdict::Unknown),
            observer: None,
            observations,
            observations_tx,
            observe_now: Arc::new(Notify::new()),
            promoter: None,
            events: None,
            webhook: None,
            writing: None,
            standby_writer: None,
            standby_setup: standby_target::Setup::default(),
            standby_writing: None,
        }
    }

    /// Lets this watchdog observe the cluster beside it and promote it when
    /// Gold is lost.
    pub fn with_cluster(mut self, cluster: Cluster, kube: Option<&Kube>) -> Self {
        let mut policy = self.state.policy().clone();
        policy.promotes = Some(cluster.promoter.object());
        let writer = match &cluster.promoter {
            AnyPromoter::ConfigMap(p) => Ok(StandbyWriter::ConfigMap(Box::new(p.reader.clone()))),
            AnyPromoter::PatroniApi(p) => Ok(StandbyWriter::PatroniApi(p.reader.clone())),
            AnyPromoter::PgPromote(_) => Err(standby_target::PLAIN_STANDBY),
        };
        self.standby_setup.writes = match (&writer, self.settings.follow_ts) {
            (_, false) => Err(standby_target::SWITCHED_OFF),
            (Ok(w), true) => Ok(w.object()),
            (Err(why), true) => Err(*why),
        };
        self.standby_writer = writer.ok().filter(|_| self.settings.follow_ts).map(Arc::new);
        self.state = LoopState::new(policy, self.state.target().clone())
            .with_standby_target(self.standby_setup.clone());
        if let (Some(kube), Some(reference)) = (kube, cluster.event_object) {
            self.events = Some(Events::new(
                kube.client.clone(),
                &self.settings.identity,
                reference,
                kube.server.clone(),
                self.metrics.kube_api_errors("create_event"),
            ));
        }
        self.observer = Some(cluster.observer);
        self.promoter = Some(Arc::new(cluster.promoter));
        self.publish();
        self
    }

    /// The Transport Service whose names `standby_cluster.host` may use
    /// (see `decide::standby_target`).
    pub fn following(mut self, names: TsNames) -> Self {
        self.standby_setup.names = names;
        self.state = self.state.clone().with_standby_target(self.standby_setup.clone());
        self.publish();
        self
    }

    /// Sends alerts to this webhook too.
    pub fn with_webhook(mut self, webhook: Webhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    fn publish(&self) {
        self.status
            .send_replace(Status::of(&self.state, &self.settings, self.started));
    }

    fn handle(&mut self, event: Event) -> Vec<Effect> {
        self.state.handle(event, SystemTime::now(), Instant::now())
    }

    /// One probe and its consequences. `None` when there was no target to
    /// probe. Public so tests can step the loop deterministically.
    pub async fn tick(&mut self) -> Option<ProbeReport> {
        let target = self.target.borrow_and_update().clone();
        if &target != self.state.target() {
            self.log_retarget(&target);
            self.metrics.target_changed();
            let effects = self.handle(Event::Target(target.clone()));
            self.carry_out(effects);
        }
        let report = match &target {
            Target::Known { endpoint, .. } => {
                let report = self.probe.probe(endpoint).await;
                self.metrics.observe_probe(&report);
                let previous = self.state.last_probe().map(|(r, _)| r.outcome);
                let effects = self.handle(Event::Probe(report.clone()));
                let transition = effects.iter().find_map(|e| match e {
                    Effect::Verdict(t) => Some(*t),
                    _ => None,
                });
                self.log_probe(endpoint, &report, previous, transition);
                self.carry_out(effects);
                Some(report)
            }
            Target::Unknown { .. } => {
                self.state.idle_tick(Instant::now());
                None
            }
        };
        self.publish();
        report
    }

    fn carry_out(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::ObserveNow => self.observe_now.notify_one(),
                Effect::Promote(audit) => self.start_write(audit),
                Effect::Verdict(t) => {
                    self.metrics.verdict_entered(t.to);
                    self.verdict.send_replace(t.to);
                }
                Effect::Vetoed(guards) => guards.into_iter().for_each(|g| self.metrics.veto(g)),
                Effect::Counted(result) => self.metrics.promotion(result),
                Effect::Alert(alert) => self.alert(alert),
                Effect::FixStandbyTarget(request) => self.start_standby_write(request),
                Effect::StandbyTarget(report) => log_standby_target(&report),
                Effect::StandbyTargetCounted(result) => self.metrics.standby_target_fix(result),
                Effect::Readiness(blockers) => {
                    if blockers.is_empty() {
                        info!(ready = true, "DR readiness: a loss of Gold now would be promoted");
                    } else {
                        let why: Vec<String> = blockers.iter().map(|b| b.describe()).collect();
                        let names: Vec<&str> = blockers.iter().map(|b| b.guard).collect();
                        warn!(
                            ready = false,
                            blockers = %names.join(","),
                            detail = %why.join("; "),
                            "DR readiness: a loss of Gold now would not be promoted"
                        );
                    }
                }
            }
        }
    }

    fn start_write(&mut self, audit: Audit) {
        let Some(promoter) = self.promoter.clone() else {
            return;
        };
        info!(by = %audit.by, reason = %audit.reason, object = %promoter.object(),
            "every guard agrees: promoting");
        let verdict = self.verdict.subscribe();
        self.writing = Some(tokio::spawn(
            async move { write(&promoter, audit, verdict).await },
        ));
    }

    fn start_standby_write(&mut self, request: FixRequest) {
        let Some(writer) = self.standby_writer.clone() else {
            return;
        };
        let names = self.standby_setup.names.clone();
        let target = self.target.clone();
        let handle = tokio::spawn({
            let request = request.clone();
            async move { writer.fix(&names, request, target).await }
        });
        self.standby_writing = Some((request, handle));
    }

    /// One log line; with a notifying alert also a Kubernetes Event and a
    /// webhook message, both delivered off the loop.
    fn alert(&self, alert: Alert) {
        let reason = alert.kind.reason();
        // Only a veto names guards.
        let guards = Some(alert.guards.as_str()).filter(|g| !g.is_empty());
        match alert.kind.severity() {
            Severity::Error => error!(alert = reason, guards, "{}", alert.text),
            Severity::Warning => warn!(alert = reason, guards, "{}", alert.text),
            Severity::Info => info!(alert = reason, guards, "{}", alert.text),
        }
        if !alert.kind.notifies() {
            return;
        }
        if let Some(webhook) = &self.webhook {
            webhook.send(&alert.text);
        }
        if let Some(events) = self.events.clone() {
            let warning = alert.kind.severity() >= Severity::Warning;
            let action = alert.kind.action();
            tokio::spawn(async move { events.publish(warning, reason, action, alert.text).await });
        }
    }

    /// Says once, at start, when `standby_cluster` is not kept on the
    /// Transport Service, and why.
    fn log_following(&self) {
        let why = if !self.settings.gold.address.discovers_port() {
            Some(
                "the target is a static address: nothing about it moves at run time, standby_cluster is the operator's",
            )
        } else {
            self.standby_setup.writes.as_ref().err().copied()
        };
        if let Some(why) = why {
            info!(
                reason = why,
                "standby_cluster is not kept pointed at the Transport Service"
            );
        }
    }

    fn log_retarget(&self, target: &Target) {
        match target {
            Target::Known { endpoint, source } => {
                info!(%endpoint, source = source.as_str(), "probing a new target")
            }
            Target::Unknown { reason } => {
                warn!(reason = %reason, "target unknown: probing paused, Gold cannot be declared lost")
            }
        }
    }

    /// One line per verdict change; one line when the kind of probe result
    /// changes (so a blind or failing probe is visible before it matters);
    /// everything else at debug.
    fn log_probe(
        &self,
        endpoint: &Endpoint,
        report: &ProbeReport,
        previous: Option<Outcome>,
        transition: Option<Transition>,
    ) {
        let outcome = report.outcome;
        let detector = self.state.detector();
        let failures = detector.consecutive_failures();
        let successes = detector.consecutive_successes();
        let error = report.error.as_deref().unwrap_or("");
        let duration_ms = report.duration.as_millis() as u64;
        if let Some(Transition { from, to }) = transition {
            let t = detector.thresholds();
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
        } else if previous != Some(outcome) {
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
    /// next because they run in sequence on this task. Observations and
    /// finished writes are taken in the moment they arrive.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if let Some(observer) = self.observer.take() {
            tokio::spawn(cluster::run(
                observer,
                self.settings.probe_interval,
                self.observe_now.clone(),
                self.observations_tx.clone(),
                shutdown.clone(),
            ));
        }
        self.log_following();
        let effects = self.handle(Event::Started);
        self.carry_out(effects);
        self.publish();
        let mut interval = tokio::time::interval(self.settings.probe_interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Spreads the sidecars of one StatefulSet so they don't probe Gold in
        // lockstep.
        let max_jitter = (self.settings.probe_interval / 20).min(Duration::from_millis(500));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                joined = async {
                    match self.writing.as_mut() {
                        Some(handle) => handle.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.writing = None;
                    let written = joined.unwrap_or_else(|e| Written::Failed(format!("promotion task failed: {e}")));
                    let effects = self.handle(Event::Written(written));
                    self.carry_out(effects);
                    self.publish();
                    continue;
                }
                joined = async {
                    match self.standby_writing.as_mut() {
                        Some((_, handle)) => handle.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let outcome = match (joined, self.standby_writing.take()) {
                        (Ok(outcome), _) => Some(outcome),
                        (Err(e), Some((request, _))) => {
                            Some(FixOutcome::Failed(request, format!("standby_cluster write task failed: {e}")))
                        }
                        (Err(_), None) => None,
                    };
                    if let Some(outcome) = outcome {
                        let effects = self.handle(Event::StandbyTargetWritten(outcome));
                        self.carry_out(effects);
                        self.publish();
                    }
                    continue;
                }
                Some(observation) = self.observations.recv() => {
                    let effects = self.handle(Event::Observed(observation));
                    self.carry_out(effects);
                    self.publish();
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
        let effects = self.handle(Event::Stopping);
        self.carry_out(effects);
        self.publish();
        info!("probe loop stopped");
    }
}

/// One line per standby-target decision, its reasons as fields.
fn log_standby_target(report: &Report) {
    let object = report.object.as_deref();
    match &report.decision {
        Decision::Fix(fix) => info!(
            decision = report.decision.name(), config = %fix.from.describe(), target = %fix.to,
            keys = fix.keys(), object,
            "standby_cluster points elsewhere than the Transport Service: pointing it there"
        ),
        Decision::Hold(fix, holds) => {
            let held_by: Vec<&str> = holds.iter().map(Hold::name).collect();
            let why: Vec<String> = holds.iter().map(Hold::describe).collect();
            warn!(
                decision = report.decision.name(), config = %fix.from.describe(), target = %fix.to,
                keys = fix.keys(), held_by = held_by.join(","), object,
                "standby_cluster points elsewhere than the Transport Service and is not fixed from here: {}",
                why.join("; ")
            )
        }
        Decision::Nothing(quiet) => info!(
            decision = quiet.name(),
            object, "standby_cluster points at the Transport Service again"
        ),
    }
}

/// The whole process: target discovery, probe loop, cluster observer,
/// promotion and HTTP server, until `shutdown` fires. `kube` is required when
/// the settings use Kubernetes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    kube: Option<Kube>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let probe = PgProbe::new(config.gold.clone(), config.probe_timeout)?;
    let kube = match (config.uses_kubernetes(), kube) {
        (true, None) => return Err(Error::NoKubernetes),
        (_, kube) => kube,
    };
    let namespace = config
        .namespace
        .clone()
        .or_else(|| kube.as_ref().map(|k| k.client.default_namespace().to_string()))
        .unwrap_or_else(|| "default".to_string());

    let (target_tx, target_rx, discovery) = target_channel(&config.gold.address, &namespace, kube.as_ref())?;
    let mut watchdog = Watchdog::new(config.clone(), probe, target_rx);
    let metrics = watchdog.metrics();
    if let Some(d) = discovery {
        d.spawn(metrics.discovery_errors(), target_tx.clone(), shutdown.clone());
    }
    if let Some(cluster) = build_cluster(&config, kube.as_ref().map(|k| &k.client), &namespace)? {
        watchdog = watchdog.with_cluster(cluster, kube.as_ref());
    }
    watchdog = watchdog.following(TsNames {
        service: config.gold.address.service().map(str::to_string),
        namespace: namespace.clone(),
    });
    if let Some(url) = &config.webhook_url {
        let webhook = Webhook::spawn(url.expose().to_string(), &config.identity, metrics.webhook())
            .map_err(Error::HttpClient)?;
        watchdog = watchdog.with_webhook(webhook);
    }

    let listen_addr = listener.local_addr().unwrap_or(config.listen_addr);
    let app = http::router(http::AppState::new(watchdog.status(), metrics, &config));
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let gold = match &*target_tx.borrow() {
        Target::Known { endpoint, .. } => endpoint.to_string(),
        Target::Unknown { reason } => format!("unknown: {reason}"),
    };
    info!(
        target = %gold,
        namespace = %namespace,
        listen_addr = %listen_addr,
        promoter = config.promoter.as_str(),
        mode = config.mode.as_str(),
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

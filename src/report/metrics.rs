//! Prometheus metrics, in the style of blackbox_exporter and
//! postgres_exporter.
//!
//! Two kinds, with one owner each. Counters and the probe-duration histogram
//! count things as they happen, where they happen. Every gauge that restates
//! the loop's state (verdict, state, streaks, split-brain, disarm, pause,
//! local role, target, last probe) is computed from the `/status` snapshot at
//! scrape time by [`StateCollector`], so a gauge cannot disagree with
//! `/status`. Label values come from the enums themselves, so a variant
//! cannot be forgotten; every label set that can appear is there from the
//! start, so dashboards and alerts see a 0 rather than a missing series.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use strum::IntoEnumIterator;
use tokio::sync::watch;

use crate::decide::detector::Verdict;
use crate::decide::guards::{self, Veto};
use crate::decide::quorum::Vote;
use crate::decide::standby_target::FixResult;
use crate::decide::state::{NO_PROMOTER, NOT_OBSERVED, PromotionResult, STANDBY_TARGET_MISMATCH, State};
use crate::observe::probe::{Outcome, ProbeReport};
use crate::observe::target::Target;
use crate::report::status::{ProbeStatus, Status};
use crate::report::webhook::WebhookMetrics;

pub const PREFIX: &str = "patroni_dr_watchdog";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    host: String,
    port: String,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub guard: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VoteLabels {
    witness: String,
    vote: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The Kubernetes API operations besides discovery, as counted.
pub const KUBE_OPERATIONS: [&str; 1] = ["create_event"];

/// What every role that probes Gold counts: probes and verdict changes.
#[derive(Clone)]
pub struct ProbeMetrics {
    probes: Family<OutcomeLabels, Counter>,
    probe_duration: Family<ClassLabels, Histogram>,
    verdict_changes: Family<VerdictLabels, Counter>,
}

impl ProbeMetrics {
    /// Registers the group in `registry`, every label set present from the
    /// start.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ProbeMetrics {
            probes: Family::default(),
            probe_duration: Family::new_with_constructor(duration_histogram),
            verdict_changes: Family::default(),
        };
        registry.register(
            "probes",
            "Probes of Gold by outcome class (up, down, blind) and reason",
            m.probes.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "Time one probe took, by outcome class",
            m.probe_duration.clone(),
        );
        registry.register(
            "verdict_changes",
            "Verdict changes, by the verdict entered",
            m.verdict_changes.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        for o in Outcome::all() {
            let _ = m.probes.get_or_create(&OutcomeLabels {
                outcome: o.class(),
                reason: o.reason(),
            });
        }
        for class in ["up", "down", "blind"] {
            let _ = m.probe_duration.get_or_create(&ClassLabels { outcome: class });
        }
        for v in Verdict::iter() {
            let _ = m
                .verdict_changes
                .get_or_create(&VerdictLabels { verdict: v.into() });
        }
        m
    }

    pub fn observe_probe(&self, report: &ProbeReport) {
        let o = report.outcome;
        self.probes
            .get_or_create(&OutcomeLabels {
                outcome: o.class(),
                reason: o.reason(),
            })
            .inc();
        self.probe_duration
            .get_or_create(&ClassLabels { outcome: o.class() })
            .observe(report.duration.as_secs_f64());
    }

    pub fn verdict_entered(&self, verdict: Verdict) {
        self.verdict_changes
            .get_or_create(&VerdictLabels {
                verdict: verdict.into(),
            })
            .inc();
    }
}

/// The gauges every role that probes computes from its probe status.
pub fn encode_probe_gauges(e: &mut DescriptorEncoder, p: &ProbeStatus) -> Result<(), std::fmt::Error> {
    let writable = p.last_probe.as_ref().is_some_and(|p| p.outcome == "up");
    gauge(
        e,
        "probe_success",
        "1 if the last probe found Gold's PostgreSQL writable, else 0",
        i64::from(writable),
    )?;
    gauge_f64(
        e,
        "last_probe_timestamp_seconds",
        "Unix time at which the last probe finished",
        p.last_probe.as_ref().map_or(0.0, |p| unix_seconds(p.at)),
    )?;
    one_hot(
        e,
        "verdict",
        "Hysteresis verdict about Gold: 1 for the current one of unknown, up, down, lost",
        Verdict::iter().map(|v| (VerdictLabels { verdict: v.into() }, v == p.verdict)),
    )?;
    gauge(
        e,
        "consecutive_failures",
        "Consecutive down probes (reset by an up or a blind probe)",
        i64::from(p.consecutive_failures),
    )?;
    gauge(
        e,
        "consecutive_successes",
        "Consecutive up probes",
        i64::from(p.consecutive_successes),
    )
}

/// What every role that calls the Kubernetes API counts: failed reads and
/// watches of a Transport Service, and every other failed call by operation.
#[derive(Clone)]
pub struct KubeMetrics {
    discovery_errors: Counter,
    api_errors: Family<OperationLabels, Counter>,
}

impl KubeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = KubeMetrics {
            discovery_errors: Counter::default(),
            api_errors: Family::default(),
        };
        registry.register(
            "discovery_errors",
            "Failed reads or watches of the Transport Service",
            m.discovery_errors.clone(),
        );
        registry.register(
            "kube_api_errors",
            "Failed Kubernetes API calls other than discovery, by operation",
            m.api_errors.clone(),
        );
        for operation in KUBE_OPERATIONS {
            let _ = m.api_errors.get_or_create(&OperationLabels { operation });
        }
        m
    }

    /// The counter discovery increments on each failed read or watch.
    pub fn discovery_errors(&self) -> Counter {
        self.discovery_errors.clone()
    }

    /// The counter for one Kubernetes API operation's failures.
    pub fn api_errors(&self, operation: &'static str) -> Counter {
        self.api_errors
            .get_or_create(&OperationLabels { operation })
            .clone()
    }
}

pub struct Metrics {
    registry: Registry,
    probe: ProbeMetrics,
    target_changes: Counter,
    kube: KubeMetrics,
    promotions: Family<ResultLabels, Counter>,
    vetoes: Family<GuardLabels, Counter>,
    webhook: WebhookMetrics,
    standby_target_fixes: Family<ResultLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: a loopback probe takes a few ms, a blackhole the timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// The counters, plus the gauges read from `status` at every scrape.
    pub fn new(status: watch::Receiver<Status>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            probe: ProbeMetrics::register(&mut registry),
            target_changes: Counter::default(),
            kube: KubeMetrics::register(&mut registry),
            promotions: Family::default(),
            vetoes: Family::default(),
            webhook: WebhookMetrics::register(&mut registry),
            standby_target_fixes: Family::default(),
            registry,
        };
        let mut m = m;
        let registry = &mut m.registry;
        registry.register(
            "target_changes",
            "Times the probed address changed (Transport Service re-synced, deleted, ...)",
            m.target_changes.clone(),
        );
        registry.register(
            "promotions",
            "Promotion attempts by result: promoted, already_promoted, dry_run, failed, called_off",
            m.promotions.clone(),
        );
        registry.register(
            "vetoes",
            "Times a guard held a promotion back while Gold was lost, by guard",
            m.vetoes.clone(),
        );
        registry.register(
            "standby_target_fixes",
            "Writes of standby_cluster's host/port to follow the Transport Service, by result: fixed, \
             already_right, called_off, failed, dry_run",
            m.standby_target_fixes.clone(),
        );
        registry.register_collector(Box::new(StateCollector { status }));
        for r in FixResult::iter() {
            let _ = m
                .standby_target_fixes
                .get_or_create(&ResultLabels { result: r.into() });
        }

        for r in PromotionResult::iter() {
            let _ = m.promotions.get_or_create(&ResultLabels { result: r.into() });
        }
        for guard in Veto::iter() {
            let _ = m.vetoes.get_or_create(&GuardLabels { guard: guard.name() });
        }
        m
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn observe_probe(&self, report: &ProbeReport) {
        self.probe.observe_probe(report);
    }

    pub fn verdict_entered(&self, verdict: Verdict) {
        self.probe.verdict_entered(verdict);
    }

    pub fn discovery_errors(&self) -> Counter {
        self.kube.discovery_errors()
    }

    pub fn kube_api_errors(&self, operation: &'static str) -> Counter {
        self.kube.api_errors(operation)
    }

    pub fn webhook(&self) -> WebhookMetrics {
        self.webhook.clone()
    }

    pub fn promotion(&self, result: PromotionResult) {
        self.promotions
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn veto(&self, guard: &'static str) {
        self.vetoes.get_or_create(&GuardLabels { guard }).inc();
    }

    pub fn target_changed(&self) {
        self.target_changes.inc();
    }

    pub fn standby_target_fix(&self, result: FixResult) {
        self.standby_target_fixes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// The gauges, computed from the `/status` snapshot at scrape time.
struct StateCollector {
    status: watch::Receiver<Status>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

pub fn gauge_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One series per value, 1 for the current one.
pub fn one_hot<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, bool)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, on) in series {
        ConstGauge::new(i64::from(on)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.status.borrow().clone();
        let e = &mut encoder;
        encode_probe_gauges(e, &s.probe)?;
        one_hot(
            e,
            "state",
            "Watchdog state: 1 for the current one",
            State::iter().map(|st| (StateLabels { state: st.into() }, st == s.state)),
        )?;
        if let Target::Known { endpoint, source } = &s.target {
            let mut info = e.encode_descriptor(
                "target",
                "Where Gold is probed; no series while the target is unknown",
                None,
                MetricType::Info,
            )?;
            info.encode_info(&TargetLabels {
                host: endpoint.host.clone(),
                port: endpoint.port.to_string(),
                source: source.as_str(),
            })?;
        }
        gauge(
            e,
            "disarmed",
            "1 while a disarm switch is set (our key in Patroni's dynamic config, the ConfigMap annotation, or the PostgreSQL setting)",
            i64::from(s.cluster.disarmed == Some(true)),
        )?;
        gauge(
            e,
            "patroni_paused",
            "1 while the DR Patroni cluster is in maintenance mode (pause)",
            i64::from(s.cluster.paused == Some(true)),
        )?;
        let role = s
            .cluster
            .role
            .as_ref()
            .map_or("unknown", |r| r.as_str())
            .to_string();
        one_hot(
            e,
            "local_role",
            "Role of the Patroni member beside this sidecar (1 for the current one)",
            std::iter::once((RoleLabels { role }, true)),
        )?;
        let votes = s.settings.quorum.witnesses.iter().flat_map(|w| {
            let witness = w.to_string();
            let current = s
                .quorum
                .votes
                .iter()
                .find(|b| b.witness == witness)
                .map(|b| b.vote);
            Vote::iter().map(move |v| {
                (
                    VoteLabels {
                        witness: witness.clone(),
                        vote: v.into(),
                    },
                    current == Some(v),
                )
            })
        });
        one_hot(
            e,
            "witness_votes",
            "Each listed witness's vote on Gold's site: 1 for the current one of site_lost (agrees), \
             sees_gold (vetoes), undecided, stale, unreachable, invalid (no vote)",
            votes,
        )?;
        gauge(
            e,
            "quorum_needed",
            "How many witnesses must agree Gold's site is lost (WATCHDOG_QUORUM); 0 in single-observer mode",
            s.quorum.needed as i64,
        )?;
        if !s.settings.quorum.single_observer() {
            gauge(
                e,
                "quorum_reached",
                "1 while at least quorum_needed witnesses agree Gold's site is lost; not exported without witnesses",
                i64::from(s.quorum.reached),
            )?;
        }
        gauge(
            e,
            "standby_target_mismatch",
            "1 while GoldDR's standby_cluster host/port (as last observed) point elsewhere than the Transport Service",
            i64::from(
                s.cluster
                    .standby_target
                    .as_ref()
                    .is_some_and(|t| t.mismatch.is_some()),
            ),
        )?;
        gauge(
            e,
            "split_brain",
            "1 while Gold answers as a writable primary after this process promoted GoldDR",
            i64::from(s.promotion.split_brain),
        )?;
        // Absent until both sides were read; kept, not zeroed, when one side
        // cannot be read: the timestamp tells "behind" from "unknown".
        let r = &s.rpo;
        if let (Some(lag), Some(replay), Some(at)) = (r.replication_lag_bytes, r.replay_lag_bytes, r.lag_at) {
            gauge(
                e,
                "replication_lag_bytes",
                "Gold's WAL position minus GoldDR's received position: what a promotion now would lose",
                lag as i64,
            )?;
            gauge(
                e,
                "replay_lag_bytes",
                "Gold's WAL position minus GoldDR's replayed position",
                replay as i64,
            )?;
            gauge_f64(
                e,
                "replication_lag_timestamp_seconds",
                "When the older of the two positions behind the lag series was read (Unix time)",
                unix_seconds(at),
            )?;
        }
        gauge_f64(
            e,
            "max_data_age_seconds",
            "WATCHDOG_MAX_DATA_AGE: the stale-data guard's limit on the age of GoldDR's newest data",
            s.settings.max_data_age.as_secs_f64(),
        )?;
        if let Some(age) = r.data_age_seconds {
            gauge_f64(
                e,
                "data_age_seconds",
                "Age of GoldDR's newest data from Gold, as the stale-data guard judges it",
                age,
            )?;
        }
        gauge(
            e,
            "promotion_ready",
            "1 while a loss of Gold now would be promoted: every guard that does not depend on Gold's loss passes \
             (on the standby leader's sidecar; take the max over the site's pods)",
            i64::from(s.readiness.ready),
        )?;
        let blocking: Vec<&str> = s.readiness.blockers.iter().map(|b| b.guard).collect();
        one_hot(
            e,
            "promotion_blockers",
            "1 for each guard that would hold a promotion back if Gold were lost now",
            readiness_blocker_names().map(|guard| (GuardLabels { guard }, blocking.contains(&guard))),
        )?;
        Ok(())
    }
}

/// Every name a readiness blocker can have: each guard, and the states in
/// which there is nothing to judge.
pub fn readiness_blocker_names() -> impl Iterator<Item = &'static str> {
    Veto::iter().map(|v| v.name()).chain([
        guards::ALREADY_PROMOTED,
        NO_PROMOTER,
        NOT_OBSERVED,
        STANDBY_TARGET_MISMATCH,
    ])
}

//! Prometheus metrics, in the style of blackbox_exporter and
//! postgres_exporter. The struct registers its own families; every label set
//! that can ever appear is created up front so dashboards and alerts see a 0
//! rather than a missing series.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::decide::detector::{Transition, Verdict};
use crate::observe::probe::{Outcome, ProbeReport};
use crate::observe::target::Target;
use crate::report::status::State;

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
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub host: String,
    pub port: String,
    pub source: &'static str,
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
pub struct RoleLabels {
    pub role: String,
}

/// Results of a promotion attempt, as counted.
pub const PROMOTION_RESULTS: [&str; 5] = ["promoted", "already_promoted", "dry_run", "failed", "called_off"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    probe_success: Gauge,
    probes: Family<OutcomeLabels, Counter>,
    probe_duration: Family<ClassLabels, Histogram>,
    last_probe_timestamp: Gauge<f64, AtomicU64>,
    verdict: Family<VerdictLabels, Gauge>,
    verdict_changes: Family<VerdictLabels, Counter>,
    consecutive_failures: Gauge,
    consecutive_successes: Gauge,
    state: Family<StateLabels, Gauge>,
    target: Family<TargetLabels, Gauge>,
    target_changes: Counter,
    discovery_errors: Counter,
    kube_api_errors: Family<OperationLabels, Counter>,
    promotions: Family<ResultLabels, Counter>,
    vetoes: Family<GuardLabels, Counter>,
    disarmed: Gauge,
    paused: Gauge,
    local_role: Family<RoleLabels, Gauge>,
    split_brain: Gauge,
    webhook: Family<ResultLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: a loopback probe takes a few ms, a blackhole the timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix(PREFIX),
            probe_success: Gauge::default(),
            probes: Family::default(),
            probe_duration: Family::new_with_constructor(duration_histogram),
            last_probe_timestamp: Gauge::default(),
            verdict: Family::default(),
            verdict_changes: Family::default(),
            consecutive_failures: Gauge::default(),
            consecutive_successes: Gauge::default(),
            state: Family::default(),
            target: Family::default(),
            target_changes: Counter::default(),
            discovery_errors: Counter::default(),
            kube_api_errors: Family::default(),
            promotions: Family::default(),
            vetoes: Family::default(),
            disarmed: Gauge::default(),
            paused: Gauge::default(),
            local_role: Family::default(),
            split_brain: Gauge::default(),
            webhook: Family::default(),
        };
        let registry = &mut m.registry;
        registry.register(
            "probe_success",
            "1 if the last probe found Gold's PostgreSQL writable, else 0",
            m.probe_success.clone(),
        );
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
            "last_probe_timestamp_seconds",
            "Unix time at which the last probe finished",
            m.last_probe_timestamp.clone(),
        );
        registry.register(
            "verdict",
            "Hysteresis verdict about Gold: 1 for the current one of unknown, up, down, lost",
            m.verdict.clone(),
        );
        registry.register(
            "verdict_changes",
            "Verdict changes, by the verdict entered",
            m.verdict_changes.clone(),
        );
        registry.register(
            "consecutive_failures",
            "Consecutive down probes (reset by an up or a blind probe)",
            m.consecutive_failures.clone(),
        );
        registry.register(
            "consecutive_successes",
            "Consecutive up probes",
            m.consecutive_successes.clone(),
        );
        registry.register("state", "Watchdog state: 1 for the current one", m.state.clone());
        registry.register(
            "target_info",
            "Where Gold is probed; no series while the target is unknown",
            m.target.clone(),
        );
        registry.register(
            "target_changes",
            "Times the probed address changed (Transport Service re-synced, deleted, ...)",
            m.target_changes.clone(),
        );
        registry.register(
            "discovery_errors",
            "Failed reads or watches of the Transport Service",
            m.discovery_errors.clone(),
        );
        registry.register(
            "kube_api_errors",
            "Failed Kubernetes API calls other than discovery, by operation",
            m.kube_api_errors.clone(),
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
            "disarmed",
            "1 while the disarm annotation is set on the Patroni config ConfigMap",
            m.disarmed.clone(),
        );
        registry.register(
            "patroni_paused",
            "1 while the DR Patroni cluster is in maintenance mode (pause)",
            m.paused.clone(),
        );
        registry.register(
            "local_role",
            "Role of the Patroni member beside this sidecar (1 for the current one)",
            m.local_role.clone(),
        );
        registry.register(
            "split_brain",
            "1 while Gold answers as a writable primary after this process promoted GoldDR",
            m.split_brain.clone(),
        );
        registry.register(
            "webhook_alerts",
            "Webhook alerts by result: delivered, failed, dropped",
            m.webhook.clone(),
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
        for v in Verdict::ALL {
            let _ = m
                .verdict_changes
                .get_or_create(&VerdictLabels { verdict: v.as_str() });
        }
        for result in PROMOTION_RESULTS {
            let _ = m.promotions.get_or_create(&ResultLabels { result });
        }
        for result in ["delivered", "failed", "dropped"] {
            let _ = m.webhook.get_or_create(&ResultLabels { result });
        }
        for guard in crate::decide::guards::Veto::NAMES {
            let _ = m.vetoes.get_or_create(&GuardLabels { guard });
        }
        m.set_verdict(Verdict::Unknown);
        m.set_state(State::Starting);
        m
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub fn observe_probe(&self, report: &ProbeReport, finished_unix: f64) {
        let o = report.outcome;
        self.probe_success.set(i64::from(o == Outcome::Up));
        self.probes
            .get_or_create(&OutcomeLabels {
                outcome: o.class(),
                reason: o.reason(),
            })
            .inc();
        self.probe_duration
            .get_or_create(&ClassLabels { outcome: o.class() })
            .observe(report.duration.as_secs_f64());
        self.last_probe_timestamp.set(finished_unix);
    }

    pub fn set_streaks(&self, failures: u32, successes: u32) {
        self.consecutive_failures.set(i64::from(failures));
        self.consecutive_successes.set(i64::from(successes));
    }

    pub fn transition(&self, t: Transition) {
        self.verdict_changes
            .get_or_create(&VerdictLabels {
                verdict: t.to.as_str(),
            })
            .inc();
        self.set_verdict(t.to);
    }

    fn set_verdict(&self, current: Verdict) {
        for v in Verdict::ALL {
            self.verdict
                .get_or_create(&VerdictLabels { verdict: v.as_str() })
                .set(i64::from(v == current));
        }
    }

    pub fn set_state(&self, current: State) {
        for s in State::ALL {
            self.state
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(i64::from(s == current));
        }
    }

    pub fn discovery_error(&self) {
        self.discovery_errors.inc();
    }

    /// The counter itself, for a leaf module to count into.
    pub fn discovery_errors(&self) -> Counter {
        self.discovery_errors.clone()
    }

    /// The counter of one operation's failed Kubernetes API calls, for a
    /// leaf module to count into.
    pub fn kube_api_errors(&self, operation: &'static str) -> Counter {
        self.kube_api_errors
            .get_or_create(&OperationLabels { operation })
            .clone()
    }

    pub fn kube_api_error(&self, operation: &'static str) {
        self.kube_api_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    pub fn promotion(&self, result: &'static str) {
        self.promotions.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn webhook(&self, result: &'static str) {
        self.webhook.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_split_brain(&self, on: bool) {
        self.split_brain.set(i64::from(on));
    }

    pub fn veto(&self, guard: &'static str) {
        self.vetoes.get_or_create(&GuardLabels { guard }).inc();
    }

    pub fn set_cluster(&self, role: &str, paused: Option<bool>, disarmed: Option<bool>) {
        self.local_role.clear();
        self.local_role
            .get_or_create(&RoleLabels {
                role: role.to_string(),
            })
            .set(1);
        self.paused.set(i64::from(paused == Some(true)));
        self.disarmed.set(i64::from(disarmed == Some(true)));
    }

    pub fn target_changed(&self) {
        self.target_changes.inc();
    }

    pub fn set_target(&self, target: &Target) {
        self.target.clear();
        if let Target::Known { endpoint, source } = target {
            self.target
                .get_or_create(&TargetLabels {
                    host: endpoint.host.clone(),
                    port: endpoint.port.to_string(),
                    source: source.as_str(),
                })
                .set(1);
        }
    }
}

//! What the guard at Gold serves: `/status` and its metrics, views of the
//! one published [`GuardState`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::response::{IntoResponse, Json, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strum::IntoEnumIterator;
use tokio::sync::watch;

use crate::config::GuardConfig;
use crate::decide::fence::{self, FenceReason, GoldDrSeen};
use crate::decide::guard::{GuardLifecycle, GuardState};
use crate::decide::rejoin::Rejoin;
use crate::observe::dynamic_config::Fence;
use crate::observe::target::Target;
use crate::observe::wal::WalPoint;
use crate::report::http::View;
use crate::report::metrics::{KubeMetrics, PREFIX, ProbeMetrics, encode_probe_gauges, gauge, one_hot};
use crate::report::status::ProbeStatus;
use crate::report::webhook::WebhookMetrics;

#[derive(Debug, Clone, Serialize)]
pub struct LastWrite {
    pub action: String,
    #[serde(serialize_with = "crate::report::status::rfc3339")]
    pub at: SystemTime,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejoinStatus {
    #[serde(serialize_with = "crate::report::status::rfc3339")]
    pub at: SystemTime,
    #[serde(flatten)]
    pub report: Rejoin,
}

/// `/status` of the guard.
#[derive(Debug, Clone, Serialize)]
pub struct GuardStatus {
    pub version: &'static str,
    pub role: &'static str,
    pub state: GuardLifecycle,
    /// GoldDR as probed: the verdict of its probes, what the last one saw.
    #[serde(flatten)]
    pub probe: ProbeStatus,
    /// GoldDR's address: static, or the reverse Transport Service's.
    pub target: Target,
    pub golddr: Option<GoldDrSeen>,
    pub leader: Option<bool>,
    pub witnesses_seeing_gold: Option<usize>,
    pub isolated: bool,
    pub isolated_for_seconds: Option<f64>,
    /// Gold's fence as its config says (`no`, `ours` with the record, or
    /// `foreign`), or why it could not be read.
    pub fence: Option<Fence>,
    pub fence_error: Option<String>,
    pub fenced: bool,
    pub disarmed: Option<bool>,
    pub last_write: Option<LastWrite>,
    /// Fences this process wrote, by reason and time.
    pub fences: Vec<(FenceReason, String)>,
    /// Where Gold last wrote as a primary, as this member saw it.
    pub gold_last_primary: Option<WalPoint>,
    /// Gold following GoldDR after its promotion, and the writes only Gold
    /// had.
    pub rejoin: Option<RejoinStatus>,
    pub settings: Arc<GuardConfig>,
}

fn status(state: &GuardState, target: Target, settings: &Arc<GuardConfig>, now: Instant) -> GuardStatus {
    let sight = state.last().map(|(r, _)| &r.sight);
    GuardStatus {
        version: env!("CARGO_PKG_VERSION"),
        role: "guard",
        state: state.lifecycle(),
        probe: probe_status(state),
        target,
        golddr: sight.map(|s| s.golddr),
        leader: sight.map(|s| s.leader),
        witnesses_seeing_gold: sight.map(|s| s.witnesses_seeing_gold),
        isolated: sight.is_some_and(fence::isolated),
        isolated_for_seconds: state
            .isolated_since()
            .map(|t| now.saturating_duration_since(t).as_secs_f64()),
        fence: sight.and_then(|s| s.fence.clone().ok()),
        fence_error: sight.and_then(|s| s.fence.clone().err()),
        fenced: state.fenced().is_some(),
        disarmed: sight.map(|s| s.disarmed),
        last_write: state.last_write.as_ref().map(|(a, at, r)| LastWrite {
            action: a.describe(),
            at: *at,
            error: r.clone().err(),
        }),
        fences: state
            .fences()
            .iter()
            .map(|(r, at)| (*r, humantime::format_rfc3339_seconds(*at).to_string()))
            .collect(),
        gold_last_primary: state.trail().primary,
        rejoin: state.rejoin().map(|(report, at)| RejoinStatus {
            at: *at,
            report: report.clone(),
        }),
        settings: settings.clone(),
    }
}

fn probe_status(state: &GuardState) -> ProbeStatus {
    ProbeStatus::new(
        state.detector(),
        state.verdict_since(),
        state.counters(),
        state.last().map(|(r, at)| (r.probe.clone(), *at)).as_ref(),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeenLabels {
    golddr: &'static str,
}

pub struct GuardMetrics {
    registry: Registry,
    pub probe: ProbeMetrics,
    pub webhook: WebhookMetrics,
    pub kube: KubeMetrics,
    fences: Family<ReasonLabels, Counter>,
    rejoins: Counter,
}

impl GuardMetrics {
    pub fn new(state: watch::Receiver<GuardState>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let probe = ProbeMetrics::register(&mut registry);
        let webhook = WebhookMetrics::register(&mut registry);
        let kube = KubeMetrics::register(&mut registry);
        let fences = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "fences",
            "Times this guard fenced Gold (made it a standby cluster of GoldDR), by reason: golddr_promoted, isolated",
            fences.clone(),
        );
        for r in FenceReason::iter() {
            let _ = fences.get_or_create(&ReasonLabels { reason: r.into() });
        }
        let rejoins = Counter::default();
        registry.register(
            "rejoins",
            "Times Gold was seen following GoldDR after GoldDR's promotion (rewound onto GoldDR's timeline)",
            rejoins.clone(),
        );
        registry.register_collector(Box::new(GuardCollector { state }));
        GuardMetrics {
            registry,
            probe,
            webhook,
            kube,
            fences,
            rejoins,
        }
    }

    pub fn fenced(&self, reason: FenceReason) {
        self.fences
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn rejoined(&self) {
        self.rejoins.inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct GuardCollector {
    state: watch::Receiver<GuardState>,
}

impl std::fmt::Debug for GuardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardCollector")
    }
}

impl Collector for GuardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.borrow().clone();
        let e = &mut encoder;
        encode_probe_gauges(e, &probe_status(&state))?;
        gauge(
            e,
            "fenced",
            "1 while Gold's dynamic config has a standby_cluster (Gold is fenced: no primary takes writes)",
            i64::from(state.fenced().is_some()),
        )?;
        let sight = state.last().map(|(r, _)| &r.sight);
        gauge(
            e,
            "isolated",
            "1 while Gold is cut off from GoldDR and from every witness",
            i64::from(sight.is_some_and(fence::isolated)),
        )?;
        let seen = sight.map(|s| s.golddr);
        one_hot(
            e,
            "golddr_seen",
            "GoldDR as the guard's last probe saw it: 1 for one of writable, standby, unreachable, blind",
            GoldDrSeen::iter().map(|g| (SeenLabels { golddr: g.into() }, seen == Some(g))),
        )?;
        // Only once a rejoin told the range: absent is "not known", never 0.
        let told = state.rejoin().filter(|(r, _)| r.error.is_none());
        if let Some((r, _)) = told {
            gauge(
                e,
                "lost_wal_bytes",
                "WAL that existed only on Gold's old timeline at the last rejoin: writes the split lost (0: none)",
                r.lost.map_or(0, |l| l.bytes as i64),
            )?;
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct GuardView {
    pub state: watch::Receiver<GuardState>,
    pub target: watch::Receiver<Target>,
    pub metrics: Arc<GuardMetrics>,
    pub config: Arc<GuardConfig>,
}

impl View for GuardView {
    fn ticks(&self) -> (Option<Instant>, Instant) {
        let s = self.state.borrow();
        (s.last_round(), s.started())
    }

    fn ready(&self) -> Result<(), &'static str> {
        match self.state.borrow().lifecycle() {
            GuardLifecycle::Starting => Err("starting"),
            GuardLifecycle::Stopping => Err("stopping"),
            GuardLifecycle::Watching => Ok(()),
        }
    }

    fn status(&self) -> Response {
        let state = self.state.borrow().clone();
        let target = self.target.borrow().clone();
        Json(status(&state, target, &self.config, Instant::now())).into_response()
    }

    fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.encode()
    }
}

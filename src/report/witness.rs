//! What a witness serves: its observation as the versioned document the DR
//! watchdogs read (`/v1/observation`), `/status` for humans, and its
//! metrics. All are views of the one published [`WitnessState`], rendered
//! when asked, so ages are as of the request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::State as AxumState;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use strum::IntoEnumIterator;
use tokio::sync::watch;

use crate::config::WitnessConfig;
use crate::decide::quorum::{Says, SiteState};
use crate::decide::witness::{Lifecycle, WitnessState};
use crate::observe::witness::{
    GOLD, OBSERVATION_PATH, ObservationDoc, ProbeDoc, SignalDoc, SiteDoc, VERSION,
};
use crate::report::http::{self, View};
use crate::report::metrics::{PREFIX, ProbeMetrics, encode_probe_gauges, one_hot};
use crate::report::status::{ProbeStatus, rfc3339_opt};

fn rfc3339(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

/// The observation document, as of `mono`.
pub fn document(state: &WitnessState, identity: &str, mono: Instant) -> ObservationDoc {
    let age = |since: Instant| mono.saturating_duration_since(since).as_secs_f64();
    let last_probe = state.last_probe().map(|(r, _)| ProbeDoc {
        outcome: r.outcome.class().to_string(),
        reason: r.outcome.reason().to_string(),
        error: r.error.clone(),
        age_seconds: state.last_round().map_or(0.0, age),
    });
    let gold = SiteDoc {
        verdict: state.verdict().as_str().to_string(),
        verdict_since: rfc3339(state.verdict_since()),
        site: <&str>::from(state.site()).to_string(),
        site_since: rfc3339(state.site_since()),
        says: state.says().to_string(),
        observed_age_seconds: state.last_round().map(age),
        last_probe,
        heartbeat: state
            .last_heartbeat()
            .iter()
            .map(|(signal, reading)| SignalDoc {
                signal: signal.clone(),
                reading: reading.clone(),
            })
            .collect(),
    };
    ObservationDoc {
        version: VERSION,
        witness: identity.to_string(),
        sites: BTreeMap::from([(GOLD.to_string(), gold)]),
    }
}

/// `/status` of a witness.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessStatus {
    pub version: &'static str,
    pub role: &'static str,
    pub state: Lifecycle,
    #[serde(flatten)]
    pub probe: ProbeStatus,
    pub site: SiteState,
    #[serde(serialize_with = "rfc3339_opt")]
    pub site_since: Option<SystemTime>,
    pub says: Says,
    pub observation: ObservationDoc,
    pub settings: Arc<WitnessConfig>,
}

fn probe_status(state: &WitnessState) -> ProbeStatus {
    ProbeStatus::new(
        state.detector(),
        state.verdict_since(),
        state.counters(),
        state.last_probe(),
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    result: &'static str,
}

/// The witness's metrics: the probe group every prober has, heartbeat
/// checks, and gauges read from the published state at scrape time.
pub struct WitnessMetrics {
    registry: Registry,
    pub probe: ProbeMetrics,
    heartbeat_checks: Family<CheckLabels, Counter>,
}

impl WitnessMetrics {
    pub fn new(state: watch::Receiver<WitnessState>) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let probe = ProbeMetrics::register(&mut registry);
        let heartbeat_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "heartbeat_checks",
            "Rounds of checks of Gold's site heartbeat, by result: alive (something answered) or silent",
            heartbeat_checks.clone(),
        );
        for result in ["alive", "silent"] {
            let _ = heartbeat_checks.get_or_create(&CheckLabels { result });
        }
        registry.register_collector(Box::new(WitnessCollector { state }));
        WitnessMetrics {
            registry,
            probe,
            heartbeat_checks,
        }
    }

    pub fn heartbeat_checked(&self, alive: bool) {
        let result = if alive { "alive" } else { "silent" };
        self.heartbeat_checks.get_or_create(&CheckLabels { result }).inc();
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct WitnessCollector {
    state: watch::Receiver<WitnessState>,
}

impl std::fmt::Debug for WitnessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WitnessCollector")
    }
}

impl Collector for WitnessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state.borrow().clone();
        let e = &mut encoder;
        encode_probe_gauges(e, &probe_status(&state))?;
        one_hot(
            e,
            "gold_site",
            "Gold's site heartbeat as this witness sees it: 1 for the current one of unknown, alive, silent",
            SiteState::iter().map(|s| (SiteLabels { site: s.into() }, s == state.site())),
        )
    }
}

/// A witness's HTTP view.
#[derive(Clone)]
pub struct WitnessView {
    pub state: watch::Receiver<WitnessState>,
    pub metrics: Arc<WitnessMetrics>,
    pub config: Arc<WitnessConfig>,
}

impl View for WitnessView {
    fn ticks(&self) -> (Option<Instant>, Instant) {
        let s = self.state.borrow();
        (s.last_round(), s.started())
    }

    fn ready(&self) -> Result<(), &'static str> {
        match self.state.borrow().lifecycle() {
            Lifecycle::Starting => Err("starting"),
            Lifecycle::Stopping => Err("stopping"),
            Lifecycle::Watching => Ok(()),
        }
    }

    fn status(&self) -> Response {
        let state = self.state.borrow().clone();
        Json(WitnessStatus {
            version: env!("CARGO_PKG_VERSION"),
            role: "witness",
            state: state.lifecycle(),
            probe: probe_status(&state),
            site: state.site(),
            site_since: state.site_since(),
            says: state.says(),
            observation: document(&state, &self.config.identity, Instant::now()),
            settings: self.config.clone(),
        })
        .into_response()
    }

    fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.encode()
    }
}

async fn observation(AxumState(view): AxumState<WitnessView>) -> Response {
    let state = view.state.borrow().clone();
    Json(document(&state, &view.config.identity, Instant::now())).into_response()
}

/// Every endpoint of a witness.
pub fn router(view: WitnessView) -> Router {
    let stale = http::stale_after(view.config.probe_interval, view.config.probe_timeout);
    http::routes(view.clone(), stale).merge(
        Router::new()
            .route(OBSERVATION_PATH, get(observation))
            .with_state(view),
    )
}

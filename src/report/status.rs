//! `/status`: a snapshot of the loop's state, taken after every event. What
//! `/livez` and `/readyz` judge by, and what the gauges read at scrape time.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::decide::detector::Verdict;
use crate::decide::guards::Veto;
use crate::decide::state::{Counters, LoopState, State};
use crate::observe::cluster::Observation;
use crate::observe::cluster_config::DisarmSwitch;
use crate::observe::patroni::Role;
use crate::observe::probe::ProbeReport;
use crate::observe::target::Target;
use crate::observe::witness::Testimony;

#[derive(Debug, Clone, Serialize)]
pub struct LastProbe {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub outcome: &'static str,
    pub reason: &'static str,
    pub error: Option<String>,
    pub duration_seconds: f64,
}

impl LastProbe {
    pub fn new(report: &ProbeReport, at: SystemTime) -> Self {
        LastProbe {
            at,
            outcome: report.outcome.class(),
            reason: report.outcome.reason(),
            error: report.error.clone(),
            duration_seconds: report.duration.as_secs_f64(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WitnessStatus {
    pub witness: String,
    #[serde(flatten)]
    pub testimony: Testimony,
}

/// The DR cluster beside us, as last observed (refreshed every interval).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub role: Option<Role>,
    pub standby: Option<bool>,
    pub paused: Option<bool>,
    pub disarmed: Option<bool>,
    /// Which disarm switches are set now.
    pub disarmed_by: Vec<DisarmSwitch>,
    /// The switches that can disarm this watchdog without a restart.
    pub disarm_switches: Vec<DisarmSwitch>,
    /// Why the Patroni config could not be read, if it could not.
    pub config_error: Option<String>,
    /// The local WAL receiver's status (`streaming`, ...), if one runs.
    pub wal_receiver: Option<String>,
    pub wal_last_message_age_seconds: Option<f64>,
    /// How old the newest data from Gold is, as the stale-data guard sees it.
    pub data_age_seconds: Option<f64>,
    pub local_pg_error: Option<String>,
    pub witnesses: Vec<WitnessStatus>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub observed_at: Option<SystemTime>,
}

impl From<&Observation> for ClusterStatus {
    fn from(o: &Observation) -> Self {
        let mut view = ClusterStatus {
            role: Some(o.role.clone()),
            disarm_switches: o.disarm_switches.to_vec(),
            observed_at: Some(o.started),
            witnesses: o
                .witnesses
                .iter()
                .map(|(witness, testimony)| WitnessStatus {
                    witness: witness.clone(),
                    testimony: testimony.clone(),
                })
                .collect(),
            ..Default::default()
        };
        match &o.config {
            Ok(c) => {
                view.standby = Some(c.standby);
                view.paused = Some(c.paused);
                view.disarmed = Some(c.disarmed());
                view.disarmed_by = c.disarmed_by.clone();
            }
            Err(e) => view.config_error = Some(e.clone()),
        }
        match &o.wal {
            Ok(w) => {
                view.wal_receiver = w.receiver.clone();
                view.wal_last_message_age_seconds = w.last_msg_age.map(|d| d.as_secs_f64());
                view.data_age_seconds = w.wal.data_age.map(|d| d.as_secs_f64());
            }
            Err(e) => view.local_pg_error = Some(e.clone()),
        }
        view
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PromotionStatus {
    /// `configmap`, `patroni-api`, `pg-promote`, or `none`.
    pub promoter: &'static str,
    /// `enforce`, `dry-run` or `observe`.
    pub mode: &'static str,
    /// Gold answered as a writable primary after this process promoted.
    pub split_brain: bool,
    /// Set once this process promoted (or found the cluster promoted).
    pub result: Option<&'static str>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub at: Option<SystemTime>,
    pub reason: Option<String>,
    /// The guards holding a promotion back right now.
    pub vetoes: Vec<Veto>,
    pub last_error: Option<String>,
    /// Why nothing is done while Gold is lost, when no guard says so (e.g.
    /// there is no promoter here).
    pub idle: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub state: State,
    pub verdict: Verdict,
    #[serde(serialize_with = "rfc3339_opt")]
    pub verdict_since: Option<SystemTime>,
    pub target: Target,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub counters: Counters,
    pub last_probe: Option<LastProbe>,
    pub cluster: ClusterStatus,
    pub promotion: PromotionStatus,
    pub settings: Arc<Config>,
    /// When the loop last finished a tick (monotonic), for `/livez`.
    #[serde(skip)]
    pub last_tick: Option<Instant>,
    #[serde(skip)]
    pub started: Instant,
}

impl Status {
    /// The snapshot of `state`; `started` is when the process started.
    pub fn of(state: &LoopState, settings: &Arc<Config>, started: Instant) -> Self {
        let detector = state.detector();
        let record = state.promotion();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            state: state.state(),
            verdict: state.verdict(),
            verdict_since: state.verdict_since(),
            target: state.target().clone(),
            consecutive_failures: detector.consecutive_failures(),
            consecutive_successes: detector.consecutive_successes(),
            counters: state.counters().clone(),
            last_probe: state.last_probe().map(|(r, at)| LastProbe::new(r, *at)),
            cluster: state.observation().map(ClusterStatus::from).unwrap_or_default(),
            promotion: PromotionStatus {
                promoter: settings.promoter.as_str(),
                mode: settings.mode.as_str(),
                split_brain: state.split_brain(),
                result: record.result.map(Into::into),
                at: record.at,
                reason: record.reason.clone(),
                vetoes: record.vetoes.clone(),
                last_error: record.last_error.clone(),
                idle: record.idle.clone(),
            },
            settings: settings.clone(),
            last_tick: state.last_tick(),
            started,
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

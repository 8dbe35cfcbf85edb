//! The snapshot the loop publishes after every tick: what `/status` returns
//! and what `/livez` and `/readyz` judge by.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::decide::detector::Verdict;
use crate::decide::guards::{Role, Veto};
use crate::observe::probe::ProbeReport;
use crate::observe::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The process is up but the loop has not run yet.
    Starting,
    /// Probing Gold.
    Watching,
    /// No usable address for Gold: probing is paused.
    TargetUnknown,
    /// This process promoted the DR cluster (or found it promoted) and will
    /// never act again; it keeps probing Gold.
    Promoted,
    /// Shutdown requested: draining.
    Stopping,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Starting,
        State::Watching,
        State::TargetUnknown,
        State::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Watching => "watching",
            State::TargetUnknown => "target_unknown",
            State::Promoted => "promoted",
            State::Stopping => "stopping",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub probes: u64,
    pub up: u64,
    pub down: u64,
    pub blind: u64,
}

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

/// The DR cluster beside us, as last observed (refreshed every interval).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterStatus {
    pub role: Option<Role>,
    pub standby: Option<bool>,
    pub paused: Option<bool>,
    pub disarmed: Option<bool>,
    /// Why the Patroni config could not be read, if it could not.
    pub config_error: Option<String>,
    /// The local WAL receiver's status (`streaming`, ...), if one runs.
    pub wal_receiver: Option<String>,
    pub wal_last_message_age_seconds: Option<f64>,
    /// How old the newest data from Gold is, as the stale-data guard sees it.
    pub data_age_seconds: Option<f64>,
    pub local_pg_error: Option<String>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub observed_at: Option<SystemTime>,
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
    pub fn new(settings: Arc<Config>, target: Target) -> Self {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            state: State::Starting,
            verdict: Verdict::Unknown,
            verdict_since: None,
            target,
            consecutive_failures: 0,
            consecutive_successes: 0,
            counters: Counters::default(),
            last_probe: None,
            cluster: ClusterStatus::default(),
            promotion: PromotionStatus {
                promoter: settings.promoter.as_str(),
                mode: settings.mode.as_str(),
                ..Default::default()
            },
            settings,
            last_tick: None,
            started: Instant::now(),
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

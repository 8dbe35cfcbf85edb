//! `/status`: a snapshot of the loop's state, taken after every event. What
//! `/livez` and `/readyz` judge by, and what the gauges read at scrape time.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::decide::detector::{Detector, Verdict};
use crate::decide::guards;
use crate::decide::guards::Veto;
use crate::decide::quorum::{Ballot, Tally};
use crate::decide::standby_target::{Decision, Hold};
use crate::decide::state::{Blocker, Counters, LoopState, Rpo, State};
use crate::observe::cluster::Observation;
use crate::observe::cluster_config::{DisarmSwitch, StandbyAddress};
use crate::observe::patroni::Role;
use crate::observe::probe::ProbeReport;
use crate::observe::signal::Reading;
use crate::observe::target::Target;
use crate::observe::wal::Lsn;

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
    #[serde(serialize_with = "rfc3339_opt")]
    pub observed_at: Option<SystemTime>,
    /// Whether `standby_cluster` points at the Transport Service.
    pub standby_target: Option<StandbyTargetStatus>,
}

/// `standby_cluster`'s address against the Transport Service's, and what
/// this sidecar did about it.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyTargetStatus {
    /// This sidecar keeps `standby_cluster` on the Transport Service (when
    /// it is beside the standby leader); `why` says why not.
    pub following: bool,
    pub why: Option<String>,
    /// `standby_cluster.host`/`.port` as last observed, as written.
    pub config: Option<StandbyAddress>,
    /// The Transport Service's address as probed.
    pub target: Option<String>,
    /// What differs, while the config points elsewhere.
    pub mismatch: Option<String>,
    /// The last decision: `fix`, `hold`, `dry_run`, `in_sync`,
    /// `target_unknown`, `static_target`, `config_unreadable`,
    /// `not_standby`, `no_address`.
    pub decision: Option<&'static str>,
    /// Why a mismatch is not fixed from here.
    pub held_by: Vec<Hold>,
    pub last: Option<LastFixStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastFixStatus {
    pub result: &'static str,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub what: String,
    pub error: Option<String>,
}

impl StandbyTargetStatus {
    fn of(state: &LoopState, settings: &Config) -> Self {
        let follower = state.standby_target();
        let why = if !settings.gold.address.discovers_port() {
            Some("the target is a static address: standby_cluster is the operator's".to_string())
        } else {
            follower.setup().writes.as_ref().err().map(|w| w.to_string())
        };
        let config = state
            .observation()
            .and_then(|o| o.config.as_ref().ok())
            .filter(|c| c.standby)
            .map(|c| c.standby_address.clone());
        let target = match state.target() {
            Target::Known { endpoint, .. } => Some(endpoint.to_string()),
            Target::Unknown { .. } => None,
        };
        StandbyTargetStatus {
            following: why.is_none(),
            why,
            config,
            target,
            mismatch: state.standby_target_mismatch(),
            decision: follower.decision().map(Decision::name),
            held_by: match follower.decision() {
                Some(Decision::Hold(_, holds)) => holds.clone(),
                _ => vec![],
            },
            last: follower.last().map(|l| LastFixStatus {
                result: l.result.into(),
                at: l.at,
                what: l.what.clone(),
                error: l.error.clone(),
            }),
        }
    }
}

impl From<&Observation> for ClusterStatus {
    fn from(o: &Observation) -> Self {
        let mut view = ClusterStatus {
            role: Some(o.role.clone()),
            disarm_switches: o.disarm_switches.to_vec(),
            observed_at: Some(o.started),
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

/// Who else judges Gold, and what they said in the last observation.
#[derive(Debug, Clone, Serialize)]
pub struct QuorumStatus {
    /// `quorum`, or `single_observer` when no witness is listed.
    pub mode: &'static str,
    /// What the mode means for a promotion, in a sentence.
    pub summary: String,
    /// How many witnesses must agree Gold's site is lost.
    pub needed: usize,
    pub listed: usize,
    /// How many agree now.
    pub agree: usize,
    pub reached: bool,
    /// Every witness's vote, with its detail and age.
    pub votes: Vec<Ballot>,
    /// Every signal (`WATCHDOG_GOLD_SIGNALS`) as last checked.
    pub signals: Vec<SignalStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SignalStatus {
    pub signal: String,
    #[serde(flatten)]
    pub reading: Reading,
}

impl QuorumStatus {
    fn of(state: &LoopState, settings: &Config) -> Self {
        let q = &settings.quorum;
        let observation = state.observation();
        let votes = observation
            .map(|o| guards::ballots(o, q.witness_max_age))
            .unwrap_or_default();
        let tally = Tally::of(&votes, q.needed);
        let summary = if q.single_observer() {
            "single observer: no witness is listed, so this watchdog cannot tell a Transport Service \
             outage from the loss of Gold's site; it waits WATCHDOG_PROMOTE_AFTER probes and trusts \
             the other guards"
                .to_string()
        } else if observation.is_none() {
            format!(
                "{} of {} witnesses must agree; not asked yet",
                q.needed,
                q.witnesses.len()
            )
        } else if state.verdict() == Verdict::Lost && !tally.reached() {
            format!("Gold lost, no quorum: {}", tally.describe())
        } else {
            tally.describe()
        };
        QuorumStatus {
            mode: if q.single_observer() {
                "single_observer"
            } else {
                "quorum"
            },
            summary,
            needed: q.needed,
            listed: q.witnesses.len(),
            agree: tally.agree.len(),
            reached: !q.single_observer() && tally.reached(),
            votes,
            signals: observation
                .map(|o| {
                    o.signals
                        .iter()
                        .map(|(signal, reading)| SignalStatus {
                            signal: signal.clone(),
                            reading: reading.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
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

/// What the probes of Gold say, with their hysteresis: the same in every
/// role that probes.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub verdict: Verdict,
    #[serde(serialize_with = "rfc3339_opt")]
    pub verdict_since: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub counters: Counters,
    pub last_probe: Option<LastProbe>,
}

impl ProbeStatus {
    pub fn new(
        detector: &Detector,
        verdict_since: Option<SystemTime>,
        counters: &Counters,
        last_probe: Option<&(ProbeReport, SystemTime)>,
    ) -> Self {
        ProbeStatus {
            verdict: detector.verdict(),
            verdict_since,
            consecutive_failures: detector.consecutive_failures(),
            consecutive_successes: detector.consecutive_successes(),
            counters: counters.clone(),
            last_probe: last_probe.map(|(r, at)| LastProbe::new(r, *at)),
        }
    }
}

/// Positions and lag in bytes; each kept when its side cannot be read, with
/// when it was read.
#[derive(Debug, Clone, Serialize)]
pub struct RpoStatus {
    pub gold_wal_position: Option<Lsn>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub gold_read_at: Option<SystemTime>,
    pub golddr_received: Option<Lsn>,
    pub golddr_replayed: Option<Lsn>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub golddr_read_at: Option<SystemTime>,
    pub replication_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
    /// When the older of the positions behind the lag was read.
    #[serde(serialize_with = "rfc3339_opt")]
    pub lag_at: Option<SystemTime>,
    pub data_age_seconds: Option<f64>,
}

impl From<Rpo> for RpoStatus {
    fn from(r: Rpo) -> Self {
        RpoStatus {
            gold_wal_position: r.gold,
            gold_read_at: r.gold_at,
            golddr_received: r.received,
            golddr_replayed: r.replayed,
            golddr_read_at: r.golddr_at,
            replication_lag_bytes: r.replication_lag_bytes,
            replay_lag_bytes: r.replay_lag_bytes,
            lag_at: r.lag_at(),
            data_age_seconds: r.data_age.map(|d| d.as_secs_f64()),
        }
    }
}

/// The guards over the last observation, as if Gold were lost now.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessStatus {
    pub ready: bool,
    pub blockers: Vec<Blocker>,
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub state: State,
    pub target: Target,
    #[serde(flatten)]
    pub probe: ProbeStatus,
    pub cluster: ClusterStatus,
    pub quorum: QuorumStatus,
    pub promotion: PromotionStatus,
    /// Would a loss of Gold now be promoted?
    pub readiness: ReadinessStatus,
    /// How much a promotion now would lose.
    pub rpo: RpoStatus,
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
        let record = state.promotion();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            state: state.state(),
            target: state.target().clone(),
            probe: ProbeStatus::new(
                state.detector(),
                state.verdict_since(),
                state.counters(),
                state.last_probe(),
            ),
            cluster: ClusterStatus {
                standby_target: Some(StandbyTargetStatus::of(state, settings)),
                ..state.observation().map(ClusterStatus::from).unwrap_or_default()
            },
            quorum: QuorumStatus::of(state, settings),
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
            rpo: RpoStatus::from(state.rpo()),
            readiness: {
                let blockers = state.readiness_blockers();
                ReadinessStatus {
                    ready: blockers.is_empty(),
                    blockers,
                    since: state.readiness_since(),
                }
            },
            settings: settings.clone(),
            last_tick: state.last_tick(),
            started,
        }
    }
}

pub fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

pub fn rfc3339_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

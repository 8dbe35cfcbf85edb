//! The loop's state: one pure value that takes events (a target change, a
//! probe report, a cluster observation, a finished write) and returns
//! effects (observe now, promote, count, alert). No I/O and no clock: the
//! time comes in with each event. `/status` is a snapshot of it and every
//! gauge is read from that snapshot, so nothing here is ever read back from
//! what was published.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::Mode;
use crate::decide::detector::{Detector, Thresholds, Transition, Verdict};
use crate::decide::guards::{self, Decision, Facts, Limits, Veto};
use crate::decide::quorum::Tally;
use crate::decide::standby_target::{self, FixOutcome, FixRequest, FixResult, Follower};
use crate::observe::cluster::Observation;
use crate::observe::patroni::Role;
use crate::observe::probe::{Outcome, ProbeReport};
use crate::observe::target::Target;
use crate::observe::wal::Lsn;

/// Probe errors kept for the promotion's Event and audit trail.
const RECENT_ERRORS: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
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
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who promoted, when and why; written as annotations with the promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub at: SystemTime,
    pub by: String,
    pub reason: String,
}

/// How a promotion attempt ended, as counted in `promotions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PromotionResult {
    Promoted,
    AlreadyPromoted,
    DryRun,
    Failed,
    CalledOff,
}

/// What a write (run by the shell) came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Promoted(Audit),
    AlreadyPromoted,
    CalledOff(&'static str),
    Failed(String),
}

/// What reaches the loop.
#[derive(Debug, Clone)]
pub enum Event {
    /// The loop starts probing.
    Started,
    /// Where Gold is, as discovery says now.
    Target(Target),
    Probe(ProbeReport),
    Observed(Observation),
    Written(Written),
    /// A write of `standby_cluster`'s address finished.
    StandbyTargetWritten(FixOutcome),
    Stopping,
}

/// Why an alert is raised; its name is the Kubernetes Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::EnumIter)]
pub enum AlertKind {
    GoldLost,
    ProbeBlind,
    NoPromoter,
    PromotionVetoed,
    /// Gold is lost but too few witnesses agree its site is: nothing is
    /// promoted automatically; an operator may.
    NoQuorum,
    DryRunPromotion,
    PromotedStandbyCluster,
    AlreadyPromoted,
    PromotionCalledOff,
    PromotionFailed,
    SplitBrain,
    SplitBrainOver,
    /// `standby_cluster` was pointed at the Transport Service.
    StandbyTargetFixed,
    /// Pointing it there failed: GoldDR may not be replicating.
    StandbyTargetFixFailed,
    DryRunStandbyTarget,
    /// The fresh read before writing found a reason not to.
    StandbyTargetCalledOff,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl AlertKind {
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::AlreadyPromoted
            | AlertKind::PromotionCalledOff
            | AlertKind::StandbyTargetFixed
            | AlertKind::StandbyTargetCalledOff => Severity::Info,
            AlertKind::SplitBrainOver => Severity::Warning,
            AlertKind::PromotedStandbyCluster | AlertKind::PromotionFailed | AlertKind::SplitBrain => {
                Severity::Error
            }
            _ => Severity::Warning,
        }
    }

    /// Whether it goes beyond the log: a Kubernetes Event and the webhook.
    /// A watchdog without a promoter (a laptop, a test) says so in its log
    /// and `/status`, not in the site's channel.
    pub fn notifies(self) -> bool {
        !matches!(
            self,
            AlertKind::PromotionCalledOff
                | AlertKind::SplitBrainOver
                | AlertKind::NoPromoter
                | AlertKind::StandbyTargetCalledOff
        )
    }

    /// The Kubernetes Event's action: what the watchdog was doing.
    pub fn action(self) -> &'static str {
        match self {
            AlertKind::StandbyTargetFixed
            | AlertKind::StandbyTargetFixFailed
            | AlertKind::DryRunStandbyTarget
            | AlertKind::StandbyTargetCalledOff => "FollowTransportService",
            _ => "Promote",
        }
    }

    pub fn reason(self) -> &'static str {
        self.into()
    }
}

/// One line in the log, and with [`AlertKind::notifies`] an Event and a
/// webhook message. The text says what to do; `fields` are its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub text: String,
    /// The guards behind a veto, comma-separated (empty otherwise).
    pub guards: String,
}

/// An alert that names no guard.
pub(crate) fn alert(kind: AlertKind, text: String) -> Alert {
    Alert {
        kind,
        text,
        guards: String::new(),
    }
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Gold was just declared lost: gather a fresh observation now rather
    /// than at the next interval.
    ObserveNow,
    /// Every guard agrees: write the promotion.
    Promote(Audit),
    /// The verdict changed (logged with the probe that changed it).
    Verdict(Transition),
    /// Guards that held a promotion back in one decision.
    Vetoed(Vec<&'static str>),
    Counted(PromotionResult),
    Alert(Alert),
    /// Write `standby_cluster`'s host/port so it follows the Transport
    /// Service.
    FixStandbyTarget(FixRequest),
    /// A standby-target decision, for its one log line.
    StandbyTarget(standby_target::Report),
    StandbyTargetCounted(FixResult),
    /// Whether a loss of Gold now would be promoted changed: one log line.
    Readiness(Vec<Blocker>),
}

/// What a promotion now would lose: positions on both sides, the lag in
/// bytes, and the age of GoldDR's newest data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rpo {
    /// Gold's WAL position, read by the probe.
    pub gold: Option<Lsn>,
    pub gold_at: Option<SystemTime>,
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
    pub golddr_at: Option<SystemTime>,
    /// Gold's position minus GoldDR's received: what a promotion loses.
    pub replication_lag_bytes: Option<u64>,
    /// Gold's position minus GoldDR's replayed.
    pub replay_lag_bytes: Option<u64>,
    /// The stale-data guard's age of GoldDR's newest data.
    pub data_age: Option<Duration>,
}

impl Rpo {
    /// When the older of the two positions behind the lag was read.
    pub fn lag_at(&self) -> Option<SystemTime> {
        Some(self.gold_at?.min(self.golddr_at?))
    }
}

/// What would hold a promotion back if Gold were lost now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub guard: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Blocker {
    fn named(guard: &'static str) -> Blocker {
        Blocker { guard, detail: None }
    }

    /// The name with its detail, for logs and `check`.
    pub fn describe(&self) -> String {
        match &self.detail {
            Some(d) => format!("{} ({d})", self.guard),
            None => self.guard.to_string(),
        }
    }
}

/// Readiness blockers that are no guard's veto: this watchdog has no
/// promoter, or has not observed its cluster yet.
pub const NO_PROMOTER: &str = "no_promoter";
pub const NOT_OBSERVED: &str = "not_observed";
/// GoldDR's `standby_cluster` points elsewhere than the Transport Service.
pub const STANDBY_TARGET_MISMATCH: &str = "standby_target_mismatch";

/// The situations reported once each per loss of Gold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Situation {
    NoPromoter,
    Vetoed(BTreeSet<&'static str>),
    DryRun,
    Failed,
}

/// What this loop does once Gold is lost, fixed at start-up.
#[derive(Debug, Clone)]
pub struct Policy {
    pub thresholds: Thresholds,
    pub interval: Duration,
    pub limits: Limits,
    /// Who acts, in Events and audit annotations: the pod name.
    pub identity: String,
    /// What a promotion writes (e.g. `ConfigMap ns/patroni-config`); `None`
    /// when there is no promoter (`WATCHDOG_PROMOTER=none`).
    pub promotes: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub probes: u64,
    pub up: u64,
    pub down: u64,
    pub blind: u64,
}

/// The last promotion decision and its outcome.
#[derive(Debug, Clone, Default)]
pub struct PromotionRecord {
    pub result: Option<PromotionResult>,
    pub at: Option<SystemTime>,
    pub reason: Option<String>,
    /// The guards holding a promotion back right now.
    pub vetoes: Vec<Veto>,
    pub last_error: Option<String>,
    /// Why nothing is being done while Gold is lost, when that is not a veto
    /// (e.g. no promoter is configured).
    pub idle: Option<String>,
}

#[derive(Debug, Clone)]
pub struct LoopState {
    policy: Policy,
    detector: Detector,
    lifecycle: State,
    target: Target,
    verdict_since: Option<SystemTime>,
    counters: Counters,
    last_probe: Option<(ProbeReport, SystemTime)>,
    recent_errors: VecDeque<String>,
    observation: Option<Observation>,
    /// When Gold was last declared lost; a decision needs an observation
    /// that started after it.
    lost_at: Option<SystemTime>,
    /// A promotion write is in flight.
    writing: bool,
    /// This process promoted or found the cluster promoted: it never acts
    /// again.
    latched: bool,
    /// This process wrote the promotion: a writable Gold is now split-brain.
    promoted_here: bool,
    split_brain: bool,
    reported: Option<Situation>,
    promotion: PromotionRecord,
    /// When the loop last handled a probe tick (monotonic), for `/livez`.
    last_tick: Option<Instant>,
    /// Keeps `standby_cluster` on the Transport Service.
    standby: Follower,
    /// Gold's WAL position as the last probe that read one said, and when.
    gold_wal: Option<(Lsn, SystemTime)>,
    /// GoldDR's received and replayed positions as last read, and when.
    golddr_wal: Option<(Option<Lsn>, Option<Lsn>, SystemTime)>,
    /// The guards over the last observation, as if Gold were lost.
    readiness: Option<guards::Readiness>,
    /// Since when the blockers are what they are.
    readiness_since: Option<SystemTime>,
}

impl LoopState {
    pub fn new(policy: Policy, target: Target) -> Self {
        LoopState {
            detector: Detector::new(policy.thresholds),
            policy,
            lifecycle: State::Starting,
            target,
            verdict_since: None,
            counters: Counters::default(),
            last_probe: None,
            recent_errors: VecDeque::new(),
            observation: None,
            lost_at: None,
            writing: false,
            latched: false,
            promoted_here: false,
            split_brain: false,
            reported: None,
            promotion: PromotionRecord::default(),
            last_tick: None,
            standby: Follower::default(),
            gold_wal: None,
            golddr_wal: None,
            readiness: None,
            readiness_since: None,
        }
    }

    /// What this site can do when `standby_cluster` points elsewhere than
    /// the Transport Service.
    pub fn with_standby_target(mut self, setup: standby_target::Setup) -> Self {
        self.standby = Follower::new(setup);
        self
    }

    /// Takes one event at `now` and says what to do about it.
    pub fn handle(&mut self, event: Event, now: SystemTime, mono: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Started => self.lifecycle = State::Watching,
            Event::Stopping => self.lifecycle = State::Stopping,
            Event::Target(target) => self.retarget(target, now, &mut effects),
            Event::Probe(report) => {
                self.tick(mono);
                self.probe(report, now, &mut effects);
            }
            Event::Observed(observation) => {
                // A position not known now (a restarted standby not yet
                // receiving) keeps its last reading, and that reading's time.
                if let Ok(w) = &observation.wal
                    && (w.received.is_some() || w.replayed.is_some())
                {
                    let (rx, rp) = match self.golddr_wal {
                        Some((rx, rp, _)) => (w.received.or(rx), w.replayed.or(rp)),
                        None => (w.received, w.replayed),
                    };
                    self.golddr_wal = Some((rx, rp, now));
                }
                self.observation = Some(observation);
                self.judge_readiness(now, &mut effects);
                self.decide(now, &mut effects);
                self.follow(now, &mut effects);
            }
            Event::Written(written) => self.written(written, now, &mut effects),
            Event::StandbyTargetWritten(outcome) => self.standby.written(outcome, now, &mut effects),
        }
        effects
    }

    /// A tick that had nothing to probe (target unknown) still shows the loop
    /// is alive.
    pub fn idle_tick(&mut self, mono: Instant) {
        self.tick(mono);
    }

    fn tick(&mut self, mono: Instant) {
        self.last_tick = Some(mono);
        // A loop that ticks has started, however it was driven.
        if self.lifecycle == State::Starting {
            self.lifecycle = State::Watching;
        }
    }

    pub fn state(&self) -> State {
        match (self.lifecycle, self.latched, &self.target) {
            (State::Starting | State::Stopping, _, _) => self.lifecycle,
            (_, true, _) => State::Promoted,
            (_, false, Target::Unknown { .. }) => State::TargetUnknown,
            (_, false, Target::Known { .. }) => State::Watching,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.detector.verdict()
    }

    pub fn verdict_since(&self) -> Option<SystemTime> {
        self.verdict_since
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn last_probe(&self) -> Option<&(ProbeReport, SystemTime)> {
        self.last_probe.as_ref()
    }

    pub fn observation(&self) -> Option<&Observation> {
        self.observation.as_ref()
    }

    pub fn promotion(&self) -> &PromotionRecord {
        &self.promotion
    }

    pub fn split_brain(&self) -> bool {
        self.split_brain
    }

    pub fn last_tick(&self) -> Option<Instant> {
        self.last_tick
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn standby_target(&self) -> &Follower {
        &self.standby
    }

    /// While the last observed `standby_cluster` points elsewhere than the
    /// Transport Service, what differs; for the readiness blocker
    /// `standby_target_mismatch` and the gauge of the same name.
    pub fn standby_target_mismatch(&self) -> Option<String> {
        let config = self.observation.as_ref()?.config.as_ref().ok()?;
        standby_target::mismatch(&self.standby.setup().names, &self.target, config)
    }

    /// Keeps `standby_cluster` on the Transport Service: decided on every
    /// observation, never while a promotion is written or done.
    fn follow(&mut self, now: SystemTime, effects: &mut Vec<Effect>) {
        let speaks = self.speaks_for_site();
        let Some(observation) = &self.observation else {
            return;
        };
        self.standby.observed(
            &self.target,
            observation,
            self.policy.limits.mode,
            self.writing || self.latched,
            speaks,
            &self.policy.identity,
            now,
            effects,
        );
    }

    /// What would hold a promotion back if Gold were lost now: none when
    /// ready.
    pub fn readiness_blockers(&self) -> Vec<Blocker> {
        if self.policy.promotes.is_none() {
            return vec![Blocker::named(NO_PROMOTER)];
        }
        let mut blockers = match &self.readiness {
            None => vec![Blocker::named(NOT_OBSERVED)],
            Some(guards::Readiness::Ready) => vec![],
            Some(guards::Readiness::AlreadyPromoted) => vec![Blocker::named(guards::ALREADY_PROMOTED)],
            Some(guards::Readiness::Blocked(vetoes)) => vetoes
                .iter()
                .map(|v| Blocker {
                    guard: v.name(),
                    detail: v.detail().map(str::to_string),
                })
                .collect(),
        };
        // Not a veto (a promotion does not need the tunnel), but a standby
        // dialling the wrong port replicates nothing: DR is not armed.
        if let Some(detail) = self.standby_target_mismatch() {
            blockers.push(Blocker {
                guard: STANDBY_TARGET_MISMATCH,
                detail: Some(detail),
            });
        }
        blockers
    }

    /// How much a promotion now would lose, from the last positions read on
    /// both sides: kept while either side cannot be read, with the time of
    /// the older reading, so "behind" and "unknown" stay apart.
    pub fn rpo(&self) -> Rpo {
        let (received, replayed, golddr_at) = match self.golddr_wal {
            Some((rx, rp, at)) => (rx, rp, Some(at)),
            None => (None, None, None),
        };
        let gold = self.gold_wal;
        let lag = |behind: Option<Lsn>| match (gold, behind) {
            (Some((g, _)), Some(b)) => Some(g.0.saturating_sub(b.0)),
            _ => None,
        };
        Rpo {
            gold: gold.map(|(l, _)| l),
            gold_at: gold.map(|(_, at)| at),
            received,
            replayed,
            golddr_at,
            replication_lag_bytes: lag(received),
            replay_lag_bytes: lag(replayed),
            data_age: self
                .observation
                .as_ref()
                .and_then(|o| o.wal.as_ref().ok())
                .and_then(|w| w.wal.data_age),
        }
    }

    pub fn readiness_since(&self) -> Option<SystemTime> {
        self.readiness_since
    }

    /// Every observation: the same guards as a promotion, over the facts as
    /// Gold's loss would leave them.
    fn judge_readiness(&mut self, now: SystemTime, effects: &mut Vec<Effect>) {
        let Some(observation) = &self.observation else {
            return;
        };
        let target_known = matches!(self.target, Target::Known { .. });
        let facts = Facts::new(target_known, observation, &self.policy.limits);
        let before: Vec<&'static str> = self.readiness_blockers().iter().map(|b| b.guard).collect();
        let first = self.readiness.is_none();
        self.readiness = Some(guards::readiness(&facts, &self.policy.limits));
        let blockers = self.readiness_blockers();
        let after: Vec<&'static str> = blockers.iter().map(|b| b.guard).collect();
        if first || before != after {
            self.readiness_since = Some(now);
            effects.push(Effect::Readiness(blockers));
        }
    }

    /// Site-wide alerts (Gold lost, probe blind, vetoes) come from the
    /// sidecar beside the standby leader only, so three sidecars don't say
    /// everything thrice. Before the first observation, or when Patroni does
    /// not answer, we cannot know and speak rather than stay silent.
    pub fn speaks_for_site(&self) -> bool {
        !matches!(
            self.observation.as_ref().map(|o| &o.role),
            Some(Role::Replica | Role::Primary | Role::Other(_))
        )
    }

    fn retarget(&mut self, target: Target, now: SystemTime, effects: &mut Vec<Effect>) {
        if target == self.target {
            return;
        }
        self.target = target;
        // Results against one address say nothing about another: start over.
        if let Some(t) = self.detector.reset() {
            self.verdict_changed(t, now, effects);
        }
    }

    fn verdict_changed(&mut self, t: Transition, now: SystemTime, effects: &mut Vec<Effect>) {
        self.verdict_since = Some(now);
        effects.push(Effect::Verdict(t));
        if t.to == Verdict::Lost {
            self.lost_at = Some(now);
        }
        if t.from == Verdict::Lost {
            // A later loss is a new situation, reported afresh.
            self.lost_at = None;
            self.reported = None;
            self.promotion.vetoes.clear();
            self.promotion.idle = None;
        }
    }

    fn probe(&mut self, report: ProbeReport, now: SystemTime, effects: &mut Vec<Effect>) {
        let previous = self.last_probe.as_ref().map(|(r, _)| r.outcome);
        let transition = self.detector.observe(report.outcome.into());
        self.counters.probes += 1;
        match report.outcome {
            Outcome::Up => self.counters.up += 1,
            Outcome::Down(_) => self.counters.down += 1,
            Outcome::Blind(_) => self.counters.blind += 1,
        }
        if let Some(error) = &report.error {
            if self.recent_errors.len() == RECENT_ERRORS {
                self.recent_errors.pop_front();
            }
            self.recent_errors
                .push_back(format!("{}: {error}", report.outcome));
        }
        if let Some(t) = transition {
            self.verdict_changed(t, now, effects);
        }
        let endpoint = match &self.target {
            Target::Known { endpoint, .. } => endpoint.to_string(),
            Target::Unknown { .. } => "?".to_string(),
        };
        let error = report.error.as_deref().unwrap_or("");
        if self.speaks_for_site() {
            if transition.is_some_and(|t| t.to == Verdict::Lost) {
                effects.push(Effect::Alert(alert(
                    AlertKind::GoldLost,
                    format!(
                        "Gold {endpoint} is lost: {} consecutive failed probes ({}: {error})",
                        self.detector.consecutive_failures(),
                        report.outcome
                    ),
                )));
            }
            if matches!(report.outcome, Outcome::Blind(_)) && !matches!(previous, Some(Outcome::Blind(_))) {
                effects.push(Effect::Alert(alert(
                    AlertKind::ProbeBlind,
                    format!(
                        "the probe of Gold {endpoint} is blind ({}: {error}): Gold answered but cannot be judged; fix the probe's settings",
                        report.outcome
                    ),
                )));
            }
        }
        self.check_split_brain(report.outcome, effects);
        if let Some(lsn) = report.wal {
            self.gold_wal = Some((lsn, now));
        }
        self.last_probe = Some((report, now));
        if transition.is_some_and(|t| t.to == Verdict::Lost) && !self.latched {
            match &self.policy.promotes {
                Some(_) => effects.push(Effect::ObserveNow),
                None => {
                    let idle = match self.policy.limits.mode {
                        Mode::DryRun => {
                            "no promoter (WATCHDOG_PROMOTER=none, e.g. outside a pod): a dry run has nothing to report on"
                        }
                        _ => {
                            "no promoter (WATCHDOG_PROMOTER=none, e.g. outside a pod): nothing will be promoted from here"
                        }
                    };
                    self.promotion.idle = Some(idle.to_string());
                    self.report(
                        Situation::NoPromoter,
                        alert(
                            AlertKind::NoPromoter,
                            format!("Gold is lost but this watchdog has {idle}"),
                        ),
                        effects,
                    );
                }
            }
        }
    }

    /// After this process promoted, Gold must stay dead: a writable Gold now
    /// means two primaries. Raised, never repaired: failback is a human act.
    fn check_split_brain(&mut self, outcome: Outcome, effects: &mut Vec<Effect>) {
        if !self.promoted_here {
            return;
        }
        let writable = outcome == Outcome::Up;
        if writable == self.split_brain {
            return;
        }
        self.split_brain = writable;
        effects.push(Effect::Alert(if writable {
            alert(
                AlertKind::SplitBrain,
                "SPLIT BRAIN: Gold answers as a writable primary again while GoldDR was promoted. Stop writes to one site now; see the failback procedure".to_string(),
            )
        } else {
            alert(
                AlertKind::SplitBrainOver,
                format!("Gold no longer answers as a writable primary ({outcome})"),
            )
        }));
    }

    /// With Gold lost and a fresh observation, decide.
    fn decide(&mut self, now: SystemTime, effects: &mut Vec<Effect>) {
        if self.verdict() != Verdict::Lost || self.latched || self.writing || self.policy.promotes.is_none() {
            return;
        }
        let Some(observation) = &self.observation else {
            return;
        };
        if self.lost_at.is_some_and(|lost| observation.started < lost) {
            return;
        }
        let target_known = matches!(self.target, Target::Known { .. });
        let facts = Facts::new(target_known, observation, &self.policy.limits);
        match guards::decide(&facts, &self.policy.limits) {
            Decision::Veto(vetoes) => {
                let names: Vec<&'static str> = vetoes.iter().map(Veto::name).collect();
                effects.push(Effect::Vetoed(names.clone()));
                let text = format!(
                    "Gold is lost but promotion is held back by: {}",
                    vetoes.iter().map(Veto::describe).collect::<Vec<_>>().join(", ")
                );
                let kind = if vetoes.iter().any(|v| matches!(v, Veto::NoQuorum(_))) {
                    AlertKind::NoQuorum
                } else {
                    AlertKind::PromotionVetoed
                };
                let text = if kind == AlertKind::NoQuorum {
                    format!(
                        "{text}. No automatic promotion without the witnesses' quorum; if Gold's site is really \
                         gone, promote by hand: patroni-dr-watchdog promote --reason ..."
                    )
                } else {
                    text
                };
                self.promotion.vetoes = vetoes;
                let mut a = alert(kind, text);
                a.guards = names.join(",");
                self.report(Situation::Vetoed(names.into_iter().collect()), a, effects);
            }
            Decision::AlreadyPromoted => {
                self.latch(PromotionResult::AlreadyPromoted, now, None, effects);
                effects.push(Effect::Alert(alert(
                    AlertKind::AlreadyPromoted,
                    "Gold is lost and the DR cluster is already promoted: nothing written".to_string(),
                )));
            }
            Decision::Promote => {
                let reason = self.loss_reason(&facts);
                if self.policy.limits.mode == Mode::DryRun {
                    let would = format!(
                        "would promote {} ({reason})",
                        self.policy.promotes.as_deref().unwrap_or_default()
                    );
                    self.promotion.vetoes.clear();
                    if self.reported != Some(Situation::DryRun) {
                        effects.push(Effect::Counted(PromotionResult::DryRun));
                        self.promotion.result = Some(PromotionResult::DryRun);
                        self.promotion.at = Some(now);
                        self.promotion.reason = Some(would.clone());
                    }
                    self.report(
                        Situation::DryRun,
                        alert(
                            AlertKind::DryRunPromotion,
                            format!("DRY RUN: {would}; nothing written"),
                        ),
                        effects,
                    );
                } else {
                    self.writing = true;
                    effects.push(Effect::Promote(Audit {
                        at: now,
                        by: self.policy.identity.clone(),
                        reason,
                    }));
                }
            }
        }
    }

    /// Why we promote, for the log, the Event and the audit annotations:
    /// our probes and, with witnesses, the ones that agreed.
    fn loss_reason(&self, facts: &Facts) -> String {
        let errors: Vec<&str> = self.recent_errors.iter().map(String::as_str).collect();
        let mut reason = format!(
            "Gold lost: {} consecutive failed probes, {} apart; last errors: {}",
            self.detector.consecutive_failures(),
            humantime::format_duration(self.policy.interval),
            errors.join(" | ")
        );
        if self.policy.limits.quorum > 0 {
            let tally = Tally::of(&facts.ballots, self.policy.limits.quorum);
            reason.push_str("; quorum: ");
            reason.push_str(&tally.describe());
        }
        reason
    }

    fn written(&mut self, written: Written, now: SystemTime, effects: &mut Vec<Effect>) {
        self.writing = false;
        match written {
            Written::Promoted(audit) => {
                self.promoted_here = true;
                let text = format!("{} promoted the DR standby cluster. {}", audit.by, audit.reason);
                self.latch(PromotionResult::Promoted, audit.at, Some(audit.reason), effects);
                effects.push(Effect::Alert(alert(AlertKind::PromotedStandbyCluster, text)));
            }
            Written::AlreadyPromoted => {
                self.latch(PromotionResult::AlreadyPromoted, now, None, effects);
                effects.push(Effect::Alert(alert(
                    AlertKind::AlreadyPromoted,
                    "Gold is lost and the DR cluster is already promoted: nothing written".to_string(),
                )));
            }
            Written::CalledOff(why) => {
                effects.push(Effect::Counted(PromotionResult::CalledOff));
                effects.push(Effect::Alert(alert(
                    AlertKind::PromotionCalledOff,
                    format!("promotion called off before writing: {why}"),
                )));
            }
            Written::Failed(message) => {
                effects.push(Effect::Counted(PromotionResult::Failed));
                self.promotion.last_error = Some(message.clone());
                self.report(
                    Situation::Failed,
                    alert(
                        AlertKind::PromotionFailed,
                        format!(
                            "promotion failed: {message}; nothing was written; will try again while Gold stays lost"
                        ),
                    ),
                    effects,
                );
            }
        }
    }

    fn latch(
        &mut self,
        result: PromotionResult,
        at: SystemTime,
        reason: Option<String>,
        effects: &mut Vec<Effect>,
    ) {
        self.latched = true;
        effects.push(Effect::Counted(result));
        self.promotion.result = Some(result);
        self.promotion.at = Some(at);
        if reason.is_some() {
            self.promotion.reason = reason;
        }
        self.promotion.vetoes.clear();
        self.promotion.last_error = None;
    }

    /// Says `alert` only when the situation is new for this loss of Gold.
    fn report(&mut self, situation: Situation, alert: Alert, effects: &mut Vec<Effect>) {
        if self.reported.as_ref() == Some(&situation) {
            return;
        }
        self.reported = Some(situation);
        let site_wide = matches!(
            alert.kind,
            AlertKind::PromotionVetoed | AlertKind::NoQuorum | AlertKind::NoPromoter
        );
        if !site_wide || self.speaks_for_site() {
            effects.push(Effect::Alert(alert));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::cluster::{Wal, WalView};
    use crate::observe::cluster_config::{ClusterConfig, DisarmSwitch};
    use crate::observe::probe::{BlindReason, DownReason};
    use crate::observe::target::{Endpoint, Source};
    use crate::observe::witness::{Answer, Witness};

    fn policy(mode: Mode, promotes: bool) -> Policy {
        Policy {
            thresholds: Thresholds::new(1, 1, 2).expect("thresholds"),
            interval: Duration::from_secs(1),
            limits: Limits {
                mode,
                wal_receiver_fresh: Duration::from_secs(60),
                max_data_age: Duration::from_secs(300),
                allow_stale_promotion: false,
                quorum: 0,
                witness_max_age: Duration::from_secs(15),
            },
            identity: "golddr-0".into(),
            promotes: promotes.then(|| "ConfigMap ns/patroni-config".to_string()),
        }
    }

    fn target() -> Target {
        Target::Known {
            endpoint: Endpoint {
                host: "gold".into(),
                port: 5432,
            },
            source: Source::Static,
        }
    }

    /// A loop stepped with its own clock, one second per event.
    struct Loop {
        state: LoopState,
        clock: u64,
    }

    impl Loop {
        fn new(mode: Mode, promotes: bool) -> Self {
            let mut l = Loop {
                state: LoopState::new(policy(mode, promotes), target()),
                clock: 0,
            };
            l.send(Event::Started);
            l
        }

        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + self.clock)
        }

        fn send(&mut self, event: Event) -> Vec<Effect> {
            self.clock += 1;
            let now = self.now();
            self.state.handle(event, now, Instant::now())
        }

        fn probe(&mut self, outcome: Outcome) -> Vec<Effect> {
            self.send(Event::Probe(ProbeReport {
                outcome,
                duration: Duration::from_millis(3),
                error: (outcome != Outcome::Up).then(|| "connection refused".to_string()),
                wal: None,
            }))
        }

        /// Probes until Gold is lost.
        fn lose_gold(&mut self) -> Vec<Effect> {
            let mut all = Vec::new();
            while self.state.verdict() != Verdict::Lost {
                all.extend(self.probe(Outcome::Down(DownReason::Refused)));
            }
            all
        }

        fn observe(&mut self, o: Observation) -> Vec<Effect> {
            self.send(Event::Observed(o))
        }

        /// An observation that started now (after everything so far).
        fn fresh(
            &mut self,
            role: Role,
            config: ClusterConfig,
            witnesses: Vec<(Witness, Answer)>,
        ) -> Observation {
            self.clock += 1;
            Observation {
                started: self.now(),
                role,
                config: Ok(config),
                disarm_switches: &[DisarmSwitch::DynamicConfigKey, DisarmSwitch::ConfigmapAnnotation],
                wal: Ok(WalView {
                    receiver: None,
                    last_msg_age: None,
                    wal: Wal {
                        streaming_for: None,
                        data_age: Some(Duration::from_secs(30)),
                    },
                    received: None,
                    replayed: None,
                }),
                signals: vec![],
                witnesses,
            }
        }

        fn clear(&mut self) -> Observation {
            self.fresh(Role::StandbyLeader, standby(), vec![])
        }
    }

    fn standby() -> ClusterConfig {
        ClusterConfig {
            standby: true,
            paused: false,
            disarmed_by: vec![],
            ..Default::default()
        }
    }

    fn alerts(effects: &[Effect]) -> Vec<AlertKind> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Alert(a) => Some(a.kind),
                _ => None,
            })
            .collect()
    }

    fn promotes(effects: &[Effect]) -> bool {
        effects.iter().any(|e| matches!(e, Effect::Promote(_)))
    }

    fn counted(effects: &[Effect]) -> Vec<PromotionResult> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Counted(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    fn promote(l: &mut Loop) -> Audit {
        l.lose_gold();
        let o = l.clear();
        let effects = l.observe(o);
        effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Promote(a) => Some(a),
                _ => None,
            })
            .expect("every guard agrees: promote")
    }

    #[test]
    fn a_loss_asks_for_a_fresh_observation_and_decides_only_on_one() {
        let mut l = Loop::new(Mode::Enforce, true);
        let stale = l.clear();
        let effects = l.lose_gold();
        assert!(effects.contains(&Effect::ObserveNow));
        assert!(alerts(&effects).contains(&AlertKind::GoldLost));
        // Gathered before the loss: says nothing about now (only readiness,
        // judged on every observation).
        let effects = l.observe(stale);
        assert!(
            effects.iter().all(|e| matches!(e, Effect::Readiness(_))),
            "{effects:?}"
        );
        let fresh = l.clear();
        let effects = l.observe(fresh);
        assert!(promotes(&effects), "{effects:?}");
        // One write at a time: another observation while writing does nothing.
        let again = l.clear();
        assert!(!promotes(&l.observe(again)));
    }

    /// Readiness follows every observation, says each change once, and
    /// names what would hold a promotion back.
    #[test]
    fn readiness_is_judged_on_every_observation_and_said_when_it_changes() {
        let readiness = |e: &[Effect]| -> Option<Vec<&'static str>> {
            e.iter().find_map(|e| match e {
                Effect::Readiness(b) => Some(b.iter().map(|b| b.guard).collect()),
                _ => None,
            })
        };
        let mut l = Loop::new(Mode::Enforce, true);
        assert_eq!(
            l.state
                .readiness_blockers()
                .iter()
                .map(|b| b.guard)
                .collect::<Vec<_>>(),
            [NOT_OBSERVED]
        );
        let o = l.clear();
        assert_eq!(readiness(&l.observe(o)), Some(vec![]));
        assert!(l.state.readiness_since().is_some());
        let o = l.clear();
        assert_eq!(readiness(&l.observe(o)), None, "no change, nothing said");
        let paused = ClusterConfig {
            paused: true,
            ..standby()
        };
        let o = l.fresh(Role::Replica, paused, vec![]);
        assert_eq!(
            readiness(&l.observe(o)),
            Some(vec!["not_standby_leader", "paused"])
        );
        let blockers = l.state.readiness_blockers();
        assert_eq!(blockers[0].detail.as_deref(), Some("replica"));
        let o = l.clear();
        assert_eq!(readiness(&l.observe(o)), Some(vec![]));

        let mut none = Loop::new(Mode::Enforce, false);
        assert_eq!(
            none.state
                .readiness_blockers()
                .iter()
                .map(|b| b.guard)
                .collect::<Vec<_>>(),
            [NO_PROMOTER]
        );
        let o = none.clear();
        none.observe(o);
        assert_eq!(none.state.readiness_blockers()[0].guard, NO_PROMOTER);
    }

    /// The lag is Gold's position from the probe minus GoldDR's from the
    /// observation; when Gold cannot be read it keeps its value and the time
    /// of its reading, never drops to 0.
    #[test]
    fn the_lag_keeps_its_last_value_and_time_when_gold_cannot_be_read() {
        let mut l = Loop::new(Mode::Enforce, true);
        let probe = |l: &mut Loop, outcome: Outcome, wal: Option<u64>| {
            l.send(Event::Probe(ProbeReport {
                outcome,
                duration: Duration::from_millis(1),
                error: None,
                wal: wal.map(Lsn),
            }))
        };
        let observe = |l: &mut Loop, received: u64, replayed: u64| {
            let mut o = l.clear();
            if let Ok(w) = &mut o.wal {
                w.received = Some(Lsn(received));
                w.replayed = Some(Lsn(replayed));
            }
            l.observe(o)
        };
        assert_eq!(l.state.rpo().replication_lag_bytes, None, "nothing read yet");
        probe(&mut l, Outcome::Up, Some(1000));
        assert_eq!(l.state.rpo().replication_lag_bytes, None, "GoldDR not read yet");
        observe(&mut l, 900, 800);
        let r = l.state.rpo();
        assert_eq!(
            (r.replication_lag_bytes, r.replay_lag_bytes),
            (Some(100), Some(200))
        );
        let at = r.lag_at().expect("both read");
        assert_eq!(Some(at), r.gold_at);
        probe(&mut l, Outcome::Down(DownReason::Refused), None);
        observe(&mut l, 950, 950);
        let r = l.state.rpo();
        assert_eq!(r.replication_lag_bytes, Some(50), "Gold's last position kept");
        assert_eq!(r.lag_at(), r.gold_at);
        assert!(
            r.gold_at.is_some_and(|g| g < r.golddr_at.expect("read")),
            "the Gold side is the older"
        );
        // A standby that restarted and receives nothing yet: kept too.
        let o = l.clear();
        l.observe(o);
        assert_eq!(l.state.rpo().replication_lag_bytes, Some(50));
        observe(&mut l, 2000, 2000);
        assert_eq!(l.state.rpo().replication_lag_bytes, Some(0), "never negative");
    }

    #[test]
    fn the_latch_holds_after_a_promotion() {
        let mut l = Loop::new(Mode::Enforce, true);
        let audit = promote(&mut l);
        let effects = l.send(Event::Written(Written::Promoted(audit)));
        assert_eq!(counted(&effects), [PromotionResult::Promoted]);
        assert_eq!(alerts(&effects), [AlertKind::PromotedStandbyCluster]);
        assert_eq!(l.state.state(), State::Promoted);
        // Gold back, lost again: never acts again.
        l.probe(Outcome::Up);
        let effects = l.lose_gold();
        assert!(!effects.contains(&Effect::ObserveNow));
        let o = l.clear();
        assert!(!promotes(&l.observe(o)));
        assert_eq!(l.state.state(), State::Promoted);
    }

    #[test]
    fn split_brain_only_after_this_process_promoted() {
        // Found promoted: a writable Gold is someone else's failback, not ours to call.
        let mut found = Loop::new(Mode::Enforce, true);
        found.lose_gold();
        let o = found.fresh(
            Role::Primary,
            ClusterConfig {
                standby: false,
                ..standby()
            },
            vec![],
        );
        let effects = found.observe(o);
        assert_eq!(counted(&effects), [PromotionResult::AlreadyPromoted]);
        assert_eq!(found.state.state(), State::Promoted);
        assert!(!alerts(&found.probe(Outcome::Up)).contains(&AlertKind::SplitBrain));
        assert!(!found.state.split_brain());

        let mut l = Loop::new(Mode::Enforce, true);
        let audit = promote(&mut l);
        l.send(Event::Written(Written::Promoted(audit)));
        assert_eq!(alerts(&l.probe(Outcome::Up)), [AlertKind::SplitBrain]);
        assert!(l.state.split_brain());
        assert!(alerts(&l.probe(Outcome::Up)).is_empty(), "raised once");
        assert_eq!(
            alerts(&l.probe(Outcome::Down(DownReason::Refused))),
            [AlertKind::SplitBrainOver]
        );
        assert!(!l.state.split_brain());
    }

    #[test]
    fn dry_run_is_reported_once_per_loss() {
        let mut l = Loop::new(Mode::DryRun, true);
        l.lose_gold();
        let mut reported = 0;
        for _ in 0..3 {
            let o = l.clear();
            let effects = l.observe(o);
            assert!(!promotes(&effects));
            reported += alerts(&effects)
                .iter()
                .filter(|k| **k == AlertKind::DryRunPromotion)
                .count();
            reported += 10 * counted(&effects).len();
        }
        assert_eq!(reported, 11, "one alert and one count");
        assert_eq!(l.state.promotion().result, Some(PromotionResult::DryRun));
        // Gold answers, then is lost again: a new loss, reported afresh.
        l.probe(Outcome::Up);
        l.lose_gold();
        let o = l.clear();
        let effects = l.observe(o);
        assert_eq!(alerts(&effects), [AlertKind::DryRunPromotion]);
        assert_eq!(counted(&effects), [PromotionResult::DryRun]);
    }

    #[test]
    fn a_change_of_veto_set_is_reported_and_the_same_set_is_not() {
        let mut l = Loop::new(Mode::Enforce, true);
        l.lose_gold();
        let paused = ClusterConfig {
            paused: true,
            ..standby()
        };
        let o = l.fresh(Role::StandbyLeader, paused.clone(), vec![]);
        let first = l.observe(o);
        assert_eq!(alerts(&first), [AlertKind::PromotionVetoed]);
        assert!(first.contains(&Effect::Vetoed(vec!["paused"])));
        let o = l.fresh(Role::StandbyLeader, paused.clone(), vec![]);
        let same = l.observe(o);
        assert!(alerts(&same).is_empty(), "same set, said already");
        assert!(same.contains(&Effect::Vetoed(vec!["paused"])), "still counted");
        let disarmed = ClusterConfig {
            disarmed_by: vec![DisarmSwitch::DynamicConfigKey],
            ..paused
        };
        let o = l.fresh(Role::StandbyLeader, disarmed, vec![]);
        let changed = l.observe(o);
        assert_eq!(alerts(&changed), [AlertKind::PromotionVetoed]);
        assert_eq!(
            l.state
                .promotion()
                .vetoes
                .iter()
                .map(Veto::name)
                .collect::<Vec<_>>(),
            ["paused", "disarmed"]
        );
        // The guards clear: the promotion goes ahead.
        let o = l.clear();
        assert!(promotes(&l.observe(o)));
    }

    #[test]
    fn only_the_standby_leaders_sidecar_speaks_for_the_site() {
        let mut replica = Loop::new(Mode::Enforce, true);
        let o = replica.fresh(Role::Replica, standby(), vec![]);
        replica.observe(o);
        assert!(!replica.state.speaks_for_site());
        let effects = replica.lose_gold();
        assert!(!alerts(&effects).contains(&AlertKind::GoldLost));
        let o = replica.fresh(Role::Replica, standby(), vec![]);
        let effects = replica.observe(o);
        assert!(effects.contains(&Effect::Vetoed(vec!["not_standby_leader"])));
        assert!(
            alerts(&effects).is_empty(),
            "a replica's veto is its own business"
        );
        let blind = replica.probe(Outcome::Blind(BlindReason::AuthFailed));
        assert!(alerts(&blind).is_empty());

        let mut leader = Loop::new(Mode::Enforce, true);
        let o = leader.clear();
        leader.observe(o);
        assert!(leader.state.speaks_for_site());
        assert_eq!(alerts(&leader.lose_gold()), [AlertKind::GoldLost]);
        assert_eq!(
            alerts(&leader.probe(Outcome::Blind(BlindReason::AuthFailed))),
            [AlertKind::ProbeBlind]
        );
    }

    #[test]
    fn a_failed_write_is_reported_once_and_tried_again() {
        let mut l = Loop::new(Mode::Enforce, true);
        promote(&mut l);
        let failed = l.send(Event::Written(Written::Failed("HTTP 503".into())));
        assert_eq!(alerts(&failed), [AlertKind::PromotionFailed]);
        assert_eq!(counted(&failed), [PromotionResult::Failed]);
        let o = l.clear();
        let effects = l.observe(o);
        assert!(promotes(&effects), "tried again with the next observation");
        let again = l.send(Event::Written(Written::Failed("HTTP 503".into())));
        assert!(alerts(&again).is_empty(), "the same failure is said once");
        assert_eq!(l.state.promotion().last_error.as_deref(), Some("HTTP 503"));
    }

    #[test]
    fn without_a_promoter_a_loss_is_said_once_and_shown() {
        let mut l = Loop::new(Mode::Enforce, false);
        let effects = l.lose_gold();
        assert!(alerts(&effects).contains(&AlertKind::NoPromoter));
        assert!(!effects.contains(&Effect::ObserveNow));
        assert!(l.state.promotion().idle.is_some());
        l.probe(Outcome::Down(DownReason::Refused));
        assert!(l.state.promotion().idle.is_some());
        l.probe(Outcome::Up);
        assert!(l.state.promotion().idle.is_none(), "cleared when Gold answers");
    }

    #[test]
    fn a_new_target_starts_over() {
        let mut l = Loop::new(Mode::Enforce, true);
        l.lose_gold();
        let effects = l.send(Event::Target(Target::Unknown {
            reason: "Service gone".into(),
        }));
        assert!(matches!(
            effects.as_slice(),
            [Effect::Verdict(Transition {
                from: Verdict::Lost,
                to: Verdict::Unknown
            })]
        ));
        assert_eq!(l.state.state(), State::TargetUnknown);
    }

    /// With a quorum of 1: no vote yet → NoQuorum, said once, the
    /// operator's way out in the text; the witness agrees → the promotion,
    /// whose reason names it.
    #[test]
    fn without_a_quorum_no_promotion_and_with_one_the_reason_names_the_witnesses() {
        let mut l = Loop::new(Mode::Enforce, true);
        l.state.policy.limits.quorum = 1;
        let witness = crate::observe::witness::parse_list("http://witness-a:9808")
            .unwrap()
            .remove(0);
        let answer = |says_lost: bool| {
            Answer::Report(crate::observe::witness::Report {
                identity: "witness-a-0".into(),
                verdict: "lost".into(),
                site: if says_lost { "silent" } else { "unknown" }.into(),
                age: Some(Duration::from_secs(2)),
            })
        };
        l.lose_gold();
        let unreachable = l.fresh(
            Role::StandbyLeader,
            standby(),
            vec![(witness.clone(), Answer::Unreachable("connection refused".into()))],
        );
        let effects = l.observe(unreachable);
        assert!(!promotes(&effects));
        assert_eq!(alerts(&effects), [AlertKind::NoQuorum]);
        let text = effects
            .iter()
            .find_map(|e| match e {
                Effect::Alert(a) => Some(a.text.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            text.contains("0 of 1 witnesses agree") && text.contains("promote --reason"),
            "{text}"
        );
        // Still no vote, now undecided: the same situation, not said again.
        let undecided = l.fresh(
            Role::StandbyLeader,
            standby(),
            vec![(witness.clone(), answer(false))],
        );
        assert!(alerts(&l.observe(undecided)).is_empty());
        let agreed = l.fresh(Role::StandbyLeader, standby(), vec![(witness, answer(true))]);
        let audit = l
            .observe(agreed)
            .into_iter()
            .find_map(|e| match e {
                Effect::Promote(a) => Some(a),
                _ => None,
            })
            .expect("the quorum is reached: promote");
        assert!(
            audit.reason.contains(
                "quorum: 1 of 1 witnesses agree Gold's site is lost (1 needed: http://witness-a:9808)"
            ),
            "{}",
            audit.reason
        );
    }
}

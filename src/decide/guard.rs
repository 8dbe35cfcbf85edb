//! The guard's state at Gold: GoldDR's probe verdict (the same hysteresis as
//! every prober), the isolation clock, what the last round saw and did. Pure:
//! a round comes in with its times, the action to carry out goes out.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::Mode;
use crate::decide::detector::{Detector, Thresholds, Transition};
use crate::decide::fence::{self, Action, FenceReason, GoldDrSeen, Isolation, Sight};
use crate::decide::rejoin::{Rejoin, Trail};
use crate::decide::state::Counters;
use crate::observe::dynamic_config::Fence;
use crate::observe::patroni::{Member, Role};
use crate::observe::probe::{DownReason, Outcome, ProbeReport};
use crate::observe::wal::WalPoint;

impl From<Outcome> for GoldDrSeen {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Up => GoldDrSeen::Writable,
            Outcome::Down(DownReason::InRecovery) => GoldDrSeen::Standby,
            // A server starting or stopping answered: it is there.
            Outcome::Down(DownReason::StartingUp | DownReason::ShuttingDown) | Outcome::Blind(_) => {
                GoldDrSeen::Blind
            }
            Outcome::Down(_) => GoldDrSeen::Unreachable,
        }
    }
}

/// One round at Gold.
#[derive(Debug, Clone)]
pub struct GuardRound {
    pub started: Instant,
    pub probe: ProbeReport,
    pub sight: Sight,
    /// The member beside this guard: its role and WAL position.
    pub local: Member,
}

/// What the shell must do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEffect {
    Verdict(Transition),
    /// Write this (enforce mode).
    Write(Action),
    /// Would write this (dry-run), or would in enforce mode but this mode
    /// never writes (observe).
    Withheld(Action),
    /// What the round saw changed: one log line (isolated or not, GoldDR's
    /// state, the fence).
    Saw,
    /// Gold follows the promoted GoldDR on its new timeline: read GoldDR's
    /// timeline history and report, with Gold's last position on its own.
    Rejoined(WalPoint),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum GuardLifecycle {
    Starting,
    Watching,
    Stopping,
}

#[derive(Debug, Clone)]
pub struct GuardState {
    detector: Detector,
    isolation: Isolation,
    fence_after: Duration,
    mode: Mode,
    lifecycle: GuardLifecycle,
    last: Option<(GuardRound, SystemTime)>,
    counters: Counters,
    verdict_since: Option<SystemTime>,
    /// The last write and how it went.
    pub last_write: Option<(Action, SystemTime, Result<(), String>)>,
    /// Fences this process wrote, by reason.
    fences: Vec<(FenceReason, SystemTime)>,
    writing: bool,
    /// A write that succeeded but that Gold's config (as Patroni serves it,
    /// from its cached DCS view) does not show yet: not written again until
    /// it shows, or for `fence_after`.
    unconfirmed: Option<(Action, Instant)>,
    started: Instant,
    trail: Trail,
    /// The last rejoin report, and when.
    rejoin: Option<(Rejoin, SystemTime)>,
    /// This fence's rejoin was (or is being) reported.
    rejoin_said: bool,
}

impl GuardState {
    pub fn new(thresholds: Thresholds, fence_after: Duration, mode: Mode, started: Instant) -> Self {
        GuardState {
            detector: Detector::new(thresholds),
            isolation: Isolation::default(),
            fence_after,
            mode,
            lifecycle: GuardLifecycle::Starting,
            last: None,
            counters: Counters::default(),
            verdict_since: None,
            last_write: None,
            fences: Vec::new(),
            writing: false,
            unconfirmed: None,
            started,
            trail: Trail::default(),
            rejoin: None,
            rejoin_said: false,
        }
    }

    pub fn round(&mut self, round: GuardRound, now: SystemTime) -> Vec<GuardEffect> {
        let mut effects = Vec::new();
        self.lifecycle = GuardLifecycle::Watching;
        self.counters.probes += 1;
        match round.probe.outcome {
            Outcome::Up => self.counters.up += 1,
            Outcome::Down(_) => self.counters.down += 1,
            Outcome::Blind(_) => self.counters.blind += 1,
        }
        if let Some(t) = self.detector.observe(round.probe.outcome.into()) {
            self.verdict_since = Some(now);
            effects.push(GuardEffect::Verdict(t));
        }
        let before = self.last.as_ref().map(|(r, _)| seen(&r.sight));
        let mut action = fence::decide(&round.sight, &mut self.isolation, self.fence_after, round.started);
        if let Some((written, at)) = &self.unconfirmed {
            if shown(&round.sight, written)
                || round.started.saturating_duration_since(*at) >= self.fence_after
            {
                self.unconfirmed = None;
            } else if *written == action {
                action = Action::Nothing;
            }
        }
        if before != Some(seen(&round.sight)) {
            effects.push(GuardEffect::Saw);
        }
        self.trail.saw(round.local.role == Role::Primary, round.local.wal);
        match &round.sight.fence {
            Ok(Fence::Ours(mark)) if mark.reason == <&str>::from(FenceReason::GolddrPromoted) => {
                // The leader's guard, once its member leads Gold as a standby
                // on a later timeline than Gold wrote on: rewound, following.
                if let Some(gold) = self.trail.primary
                    && !self.rejoin_said
                    && round.sight.leader
                    && round.local.role == Role::StandbyLeader
                    && self.trail.moved_on(round.local.wal)
                {
                    self.rejoin_said = true;
                    effects.push(GuardEffect::Rejoined(gold));
                }
            }
            Ok(Fence::No) => self.rejoin_said = false,
            _ => {}
        }
        if action != Action::Nothing && !self.writing {
            match self.mode {
                Mode::Enforce => {
                    self.writing = true;
                    effects.push(GuardEffect::Write(action));
                }
                Mode::DryRun | Mode::Observe => {
                    let said = self
                        .last_write
                        .as_ref()
                        .is_some_and(|(a, _, r)| *a == action && r.is_err());
                    if !said {
                        self.last_write =
                            Some((action.clone(), now, Err(format!("{} mode", self.mode.as_str()))));
                        effects.push(GuardEffect::Withheld(action));
                    }
                }
            }
        }
        self.last = Some((round, now));
        effects
    }

    /// A write finished; `mono` is when.
    pub fn written(&mut self, action: Action, result: Result<(), String>, now: SystemTime, mono: Instant) {
        self.writing = false;
        if result.is_ok() {
            self.unconfirmed = Some((action.clone(), mono));
        }
        if let (Action::Fence(reason) | Action::Remark(reason), Ok(())) = (&action, &result) {
            self.fences.push((*reason, now));
        }
        self.last_write = Some((action, now, result));
    }

    /// The rejoin report, once GoldDR's history was read (or could not be).
    pub fn rejoined(&mut self, report: Rejoin, now: SystemTime) {
        self.rejoin = Some((report, now));
    }

    pub fn rejoin(&self) -> Option<&(Rejoin, SystemTime)> {
        self.rejoin.as_ref()
    }

    pub fn trail(&self) -> &Trail {
        &self.trail
    }

    pub fn stop(&mut self) {
        self.lifecycle = GuardLifecycle::Stopping;
    }

    pub fn lifecycle(&self) -> GuardLifecycle {
        self.lifecycle
    }
    pub fn detector(&self) -> &Detector {
        &self.detector
    }
    pub fn verdict_since(&self) -> Option<SystemTime> {
        self.verdict_since
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn last(&self) -> Option<&(GuardRound, SystemTime)> {
        self.last.as_ref()
    }
    pub fn fences(&self) -> &[(FenceReason, SystemTime)] {
        &self.fences
    }
    pub fn isolated_since(&self) -> Option<Instant> {
        self.isolation.since()
    }
    pub fn started(&self) -> Instant {
        self.started
    }
    pub fn last_round(&self) -> Option<Instant> {
        self.last.as_ref().map(|(r, _)| r.started)
    }

    /// Whether Gold is fenced now, by anyone.
    pub fn fenced(&self) -> Option<&Fence> {
        match self.last.as_ref().map(|(r, _)| &r.sight.fence) {
            Some(Ok(f @ (Fence::Ours(_) | Fence::Foreign))) => Some(f),
            _ => None,
        }
    }
}

/// Whether Gold's config, as this round read it, shows `action` done.
fn shown(s: &Sight, action: &Action) -> bool {
    match (action, &s.fence) {
        (Action::Fence(r) | Action::Remark(r), Ok(Fence::Ours(mark))) => mark.reason == <&str>::from(*r),
        (Action::Fence(_) | Action::Remark(_), Ok(Fence::Foreign)) => true,
        (Action::Unfence, Ok(Fence::No)) => true,
        _ => false,
    }
}

/// The parts of a sight a log line is worth.
fn seen(s: &Sight) -> (bool, GoldDrSeen, bool, String, bool) {
    let fence = match &s.fence {
        Ok(Fence::No) => "no".to_string(),
        Ok(Fence::Ours(m)) => format!("ours:{}", m.reason),
        Ok(Fence::Foreign) => "foreign".to_string(),
        Err(_) => "unknown".to_string(),
    };
    (s.leader, s.golddr, fence::isolated(s), fence, s.disarmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::dynamic_config::FenceMark;

    fn round(outcome: Outcome, fence: Fence, started: Instant) -> GuardRound {
        GuardRound {
            started,
            probe: ProbeReport {
                outcome,
                duration: Duration::from_millis(1),
                error: None,
                wal: None,
            },
            sight: Sight {
                leader: true,
                golddr: outcome.into(),
                witnesses_seeing_gold: 0,
                fence: Ok(fence),
                disarmed: false,
            },
            local: Member {
                role: Role::Primary,
                unlocked: false,
                wal: None,
            },
        }
    }

    fn ours(reason: &str) -> Fence {
        Fence::Ours(FenceMark {
            reason: reason.into(),
            by: "g".into(),
            at: "t".into(),
        })
    }

    /// The leader's member as Patroni reports it.
    fn member(role: Role, timeline: u32, lsn: u64) -> Member {
        Member {
            role,
            unlocked: false,
            wal: Some(WalPoint {
                timeline,
                lsn: crate::observe::wal::Lsn(lsn),
            }),
        }
    }

    #[test]
    fn the_rejoin_is_reported_once_gold_leads_as_a_standby_on_golddrs_timeline() {
        let t0 = Instant::now();
        let now = SystemTime::now();
        let th = Thresholds::new(2, 2, 4).unwrap();
        let mut g = GuardState::new(th, Duration::from_secs(5), Mode::Enforce, t0);
        let rejoined = |e: &[GuardEffect]| {
            e.iter().find_map(|e| match e {
                GuardEffect::Rejoined(p) => Some(*p),
                _ => None,
            })
        };
        let mut at = |fence: Fence, local: Member| {
            let mut r = round(Outcome::Down(DownReason::InRecovery), fence, t0);
            r.local = local;
            g.round(r, now)
        };
        assert_eq!(rejoined(&at(Fence::No, member(Role::Primary, 1, 100))), None);
        assert_eq!(
            rejoined(&at(ours("isolated"), member(Role::Primary, 1, 150))),
            None
        );
        // Demoted, still on Gold's timeline: its shutdown checkpoint counts.
        let fenced = ours("golddr_promoted");
        assert_eq!(
            rejoined(&at(fenced.clone(), member(Role::StandbyLeader, 1, 180))),
            None
        );
        let e = at(fenced.clone(), member(Role::StandbyLeader, 2, 120));
        assert_eq!(
            rejoined(&e),
            Some(WalPoint {
                timeline: 1,
                lsn: crate::observe::wal::Lsn(180)
            })
        );
        assert_eq!(
            rejoined(&at(fenced.clone(), member(Role::StandbyLeader, 2, 200))),
            None,
            "once"
        );
        // The fence lifted by an operator (failback), then a new episode.
        assert_eq!(rejoined(&at(Fence::No, member(Role::Primary, 2, 300))), None);
        assert_eq!(
            rejoined(&at(fenced.clone(), member(Role::StandbyLeader, 2, 310))),
            None
        );
        assert!(rejoined(&at(fenced, member(Role::StandbyLeader, 3, 50))).is_some());
    }

    #[test]
    fn only_the_leaders_guard_reports_a_rejoin_and_only_for_a_promotion_fence() {
        let t0 = Instant::now();
        let now = SystemTime::now();
        let th = Thresholds::new(2, 2, 4).unwrap();
        for (leader, fence, role) in [
            (false, ours("golddr_promoted"), Role::StandbyLeader),
            (true, ours("isolated"), Role::StandbyLeader),
            (true, Fence::Foreign, Role::StandbyLeader),
            (true, ours("golddr_promoted"), Role::Replica),
        ] {
            let mut g = GuardState::new(th, Duration::from_secs(5), Mode::Enforce, t0);
            let mut r = round(Outcome::Down(DownReason::InRecovery), Fence::No, t0);
            r.local = member(Role::Primary, 1, 100);
            g.round(r, now);
            let mut r = round(Outcome::Down(DownReason::InRecovery), fence.clone(), t0);
            r.sight.leader = leader;
            r.local = member(role.clone(), 2, 10);
            let e = g.round(r, now);
            assert!(
                !e.iter().any(|e| matches!(e, GuardEffect::Rejoined(_))),
                "{leader} {fence:?} {role:?}: {e:?}"
            );
        }
    }

    #[test]
    fn one_write_at_a_time_and_dry_run_says_once() {
        let t0 = Instant::now();
        let now = SystemTime::now();
        let th = Thresholds::new(2, 2, 4).unwrap();
        let mut g = GuardState::new(th, Duration::from_secs(5), Mode::Enforce, t0);
        let e = g.round(round(Outcome::Up, Fence::No, t0), now);
        assert!(e.contains(&GuardEffect::Write(Action::Fence(FenceReason::GolddrPromoted))));
        let e = g.round(round(Outcome::Up, Fence::No, t0), now);
        assert!(
            !e.iter().any(|e| matches!(e, GuardEffect::Write(_))),
            "a write is in flight"
        );
        g.written(Action::Fence(FenceReason::GolddrPromoted), Ok(()), now, t0);
        assert_eq!(g.fences().len(), 1);
        // Patroni still serves its cached config without the fence: not
        // written again.
        let e = g.round(round(Outcome::Up, Fence::No, t0 + Duration::from_secs(1)), now);
        assert!(
            !e.iter().any(|e| matches!(e, GuardEffect::Write(_))),
            "unconfirmed: {e:?}"
        );
        // Still not shown after fence_after: something undid it, write again.
        let e = g.round(round(Outcome::Up, Fence::No, t0 + Duration::from_secs(6)), now);
        assert!(e.contains(&GuardEffect::Write(Action::Fence(FenceReason::GolddrPromoted))));
        g.written(
            Action::Fence(FenceReason::GolddrPromoted),
            Ok(()),
            now,
            t0 + Duration::from_secs(6),
        );
        let e = g.round(round(Outcome::Up, ours("golddr_promoted"), t0), now);
        assert!(
            !e.iter().any(|e| matches!(e, GuardEffect::Write(_))),
            "latched: {e:?}"
        );

        let mut dry = GuardState::new(th, Duration::from_secs(5), Mode::DryRun, t0);
        assert!(
            dry.round(round(Outcome::Up, Fence::No, t0), now)
                .iter()
                .any(|e| matches!(e, GuardEffect::Withheld(_)))
        );
        assert!(
            !dry.round(round(Outcome::Up, Fence::No, t0), now)
                .iter()
                .any(|e| matches!(e, GuardEffect::Withheld(_)))
        );
    }
}

//! The guard's state at Gold: GoldDR's probe verdict (the same hysteresis as
//! every prober), the isolation clock, what the last round saw and did. Pure:
//! a round comes in with its times, the action to carry out goes out.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::Mode;
use crate::decide::detector::{Detector, Thresholds, Transition};
use crate::decide::fence::{self, Action, FenceReason, GoldDrSeen, Isolation, Sight};
use crate::decide::state::Counters;
use crate::observe::dynamic_config::Fence;
use crate::observe::probe::{DownReason, Outcome, ProbeReport};

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
            },
            sight: Sight {
                leader: true,
                golddr: outcome.into(),
                witnesses_seeing_gold: 0,
                fence: Ok(fence),
                disarmed: false,
            },
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
        let mark = Fence::Ours(FenceMark {
            reason: "golddr_promoted".into(),
            by: "g".into(),
            at: "t".into(),
        });
        let e = g.round(round(Outcome::Up, mark, t0), now);
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

//! The witness's state: the same probe hysteresis as the DR watchdog's, plus
//! Gold's site heartbeat, and what the two together say. Pure: each round of
//! checks comes in with its times; the HTTP views render it at request time.

use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::decide::detector::{Detector, Thresholds, Transition, Verdict};
use crate::decide::quorum::{Heartbeat, Says, SiteState, assess};
use crate::decide::state::Counters;
use crate::observe::probe::{Outcome, ProbeReport};
use crate::observe::signal::Reading;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Lifecycle {
    Starting,
    Watching,
    Stopping,
}

/// One round: a probe of Gold's PostgreSQL and a check of every heartbeat
/// signal, run together.
#[derive(Debug, Clone)]
pub struct Round {
    /// When the round started: its facts are at least this old.
    pub started: Instant,
    pub probe: ProbeReport,
    pub heartbeat: Vec<(String, Reading)>,
}

/// What changed in a round, one log line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Verdict(Transition),
    Site { from: SiteState, to: SiteState },
    Says { from: Says, to: Says },
}

#[derive(Debug, Clone)]
pub struct WitnessState {
    detector: Detector,
    heartbeat: Heartbeat,
    lifecycle: Lifecycle,
    verdict_since: Option<SystemTime>,
    last_probe: Option<(ProbeReport, SystemTime)>,
    last_heartbeat: Vec<(String, Reading)>,
    last_round: Option<Instant>,
    counters: Counters,
    started: Instant,
}

impl WitnessState {
    pub fn new(thresholds: Thresholds, started: Instant) -> Self {
        WitnessState {
            detector: Detector::new(thresholds),
            heartbeat: Heartbeat::new(thresholds.fall()),
            lifecycle: Lifecycle::Starting,
            verdict_since: None,
            last_probe: None,
            last_heartbeat: Vec::new(),
            last_round: None,
            counters: Counters::default(),
            started,
        }
    }

    pub fn start(&mut self) {
        self.lifecycle = Lifecycle::Watching;
    }

    pub fn stop(&mut self) {
        self.lifecycle = Lifecycle::Stopping;
    }

    /// Takes one finished round at `now`.
    pub fn round(&mut self, round: Round, now: SystemTime) -> Vec<Change> {
        let says = self.says();
        let mut changes = Vec::new();
        self.counters.probes += 1;
        match round.probe.outcome {
            Outcome::Up => self.counters.up += 1,
            Outcome::Down(_) => self.counters.down += 1,
            Outcome::Blind(_) => self.counters.blind += 1,
        }
        if let Some(t) = self.detector.observe(round.probe.outcome.into()) {
            self.verdict_since = Some(now);
            changes.push(Change::Verdict(t));
        }
        let answered = round.heartbeat.iter().any(|(_, r)| r.alive());
        if let Some((from, to)) = self.heartbeat.observe(answered, now) {
            changes.push(Change::Site { from, to });
        }
        if self.says() != says {
            changes.push(Change::Says {
                from: says,
                to: self.says(),
            });
        }
        self.last_probe = Some((round.probe, now));
        self.last_heartbeat = round.heartbeat;
        self.last_round = Some(round.started);
        if self.lifecycle == Lifecycle::Starting {
            self.lifecycle = Lifecycle::Watching;
        }
        changes
    }

    pub fn says(&self) -> Says {
        assess(self.detector.verdict(), self.heartbeat.state())
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.lifecycle
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

    pub fn site(&self) -> SiteState {
        self.heartbeat.state()
    }

    pub fn site_since(&self) -> Option<SystemTime> {
        self.heartbeat.since()
    }

    pub fn last_probe(&self) -> Option<&(ProbeReport, SystemTime)> {
        self.last_probe.as_ref()
    }

    pub fn last_heartbeat(&self) -> &[(String, Reading)] {
        &self.last_heartbeat
    }

    /// When the last complete round started, for the observation's age and
    /// `/livez`.
    pub fn last_round(&self) -> Option<Instant> {
        self.last_round
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn started(&self) -> Instant {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::observe::probe::DownReason;

    fn round(outcome: Outcome, alive: bool) -> Round {
        Round {
            started: Instant::now(),
            probe: ProbeReport {
                outcome,
                duration: Duration::from_millis(2),
                error: None,
                wal: None,
            },
            heartbeat: vec![(
                "http://gold:8008/".into(),
                if alive {
                    Reading::Alive("HTTP 503".into())
                } else {
                    Reading::Silent("refused".into())
                },
            )],
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    /// Gold's site dies: the heartbeat falls silent before the probe
    /// declares Gold lost, and the witness says so once both agree; the
    /// site's first answer (Patroni restarting, 503) takes it back at once.
    #[test]
    fn site_lost_only_when_postgres_is_lost_and_the_site_silent() {
        let mut w = WitnessState::new(Thresholds::new(2, 2, 3).unwrap(), Instant::now());
        let down = Outcome::Down(DownReason::Refused);
        w.round(round(Outcome::Up, true), at(1));
        w.round(round(Outcome::Up, true), at(2));
        assert_eq!(w.says(), Says::PrimaryWritable);
        w.round(round(down, false), at(3));
        assert_eq!(w.says(), Says::PrimaryWritable, "one failure is not down yet");
        w.round(round(down, false), at(4));
        assert_eq!(w.site(), SiteState::Silent);
        assert_eq!(w.says(), Says::Undecided, "down, not lost yet");
        let changes = w.round(round(down, false), at(5));
        assert_eq!(w.says(), Says::SiteLost);
        assert!(changes.contains(&Change::Says {
            from: Says::Undecided,
            to: Says::SiteLost
        }));
        w.round(round(down, true), at(6));
        assert_eq!(w.says(), Says::SiteAlive);
        assert_eq!(w.site_since(), Some(at(6)));
    }

    /// A failover inside Gold: PostgreSQL lost for a while, Patroni answers
    /// all along. Never site_lost.
    #[test]
    fn a_failover_inside_gold_is_never_a_site_loss() {
        let mut w = WitnessState::new(Thresholds::new(2, 2, 3).unwrap(), Instant::now());
        let down = Outcome::Down(DownReason::InRecovery);
        for s in 0..20 {
            w.round(round(down, s % 2 == 0), at(s));
            assert_ne!(w.says(), Says::SiteLost, "round {s}");
        }
        assert_eq!(w.verdict(), Verdict::Lost);
    }
}

//! Hysteresis over probe results: a pure state machine with no I/O and no
//! clock, so every transition can be tested exhaustively.
//!
//! Counting follows Kubernetes probes and HAProxy's `rise`/`fall`: a verdict
//! changes only after that many *consecutive* results disagree with it.

use serde::Serialize;

use crate::observe::probe::Outcome;

/// What one probe says about Gold, stripped of its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observation {
    /// Gold accepted a connection and is a writable primary.
    Up,
    /// Gold could not be reached, or has no writable primary.
    Down,
    /// Gold answered but the probe cannot judge it (credentials, database,
    /// certificate). Gold is alive: this breaks a failure streak and never
    /// counts toward loss, nor toward recovery.
    Blind,
}

impl From<Outcome> for Observation {
    /// Only up and down count as such; any blind answer is its own kind.
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Up => Observation::Up,
            Outcome::Down(_) => Observation::Down,
            Outcome::Blind(_) => Observation::Blind,
        }
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    strum::IntoStaticStr,
    strum::EnumIter,
    strum::Display,
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Verdict {
    /// Not enough results yet.
    Unknown,
    Up,
    /// At least `fall` consecutive failures.
    Down,
    /// The last `promote_after` probes all failed: the promotion trigger.
    /// Any probe that reaches Gold (up or blind) ends it at once.
    Lost,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    fall: u32,
    rise: u32,
    promote_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    #[error("fall, rise and promote_after must all be at least 1")]
    Zero,
    #[error("promote_after must be at least fall")]
    PromoteBeforeFall,
}

impl Thresholds {
    pub fn new(fall: u32, rise: u32, promote_after: u32) -> Result<Self, ThresholdError> {
        if fall == 0 || rise == 0 || promote_after == 0 {
            return Err(ThresholdError::Zero);
        }
        if promote_after < fall {
            return Err(ThresholdError::PromoteBeforeFall);
        }
        Ok(Thresholds {
            fall,
            rise,
            promote_after,
        })
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
    pub fn rise(&self) -> u32 {
        self.rise
    }
    pub fn promote_after(&self) -> u32 {
        self.promote_after
    }
}

/// A verdict change, returned by [`Detector::observe`] so the caller can log
/// and export exactly one line per change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Verdict,
    pub to: Verdict,
}

#[derive(Debug, Clone)]
pub struct Detector {
    thresholds: Thresholds,
    verdict: Verdict,
    consecutive_failures: u32,
    consecutive_successes: u32,
}

impl Detector {
    pub fn new(thresholds: Thresholds) -> Self {
        Detector {
            thresholds,
            verdict: Verdict::Unknown,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Forget everything: results against one address say nothing about
    /// another.
    pub fn reset(&mut self) -> Option<Transition> {
        let from = self.verdict;
        *self = Detector::new(self.thresholds);
        (from != Verdict::Unknown).then_some(Transition {
            from,
            to: Verdict::Unknown,
        })
    }

    pub fn observe(&mut self, observation: Observation) -> Option<Transition> {
        let t = self.thresholds;
        let next = match observation {
            Observation::Up => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if self.consecutive_successes >= t.rise {
                    Verdict::Up
                } else if self.verdict == Verdict::Lost {
                    // Lost means "failing for promote_after probes in a row,
                    // right now": one answer from Gold ends that.
                    Verdict::Down
                } else {
                    self.verdict
                }
            }
            Observation::Down => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= t.promote_after {
                    Verdict::Lost
                } else if self.consecutive_failures >= t.fall && self.verdict != Verdict::Lost {
                    Verdict::Down
                } else {
                    self.verdict
                }
            }
            Observation::Blind => {
                self.consecutive_failures = 0;
                self.consecutive_successes = 0;
                // Someone answered, so Gold is not lost; but nothing shows it
                // is healthy either, so Down stays Down and Up stays Up.
                if self.verdict == Verdict::Lost {
                    Verdict::Down
                } else {
                    self.verdict
                }
            }
        };
        (next != self.verdict).then(|| {
            let from = std::mem::replace(&mut self.verdict, next);
            Transition { from, to: next }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::{Blind as B, Down as D, Up as U};
    use proptest::prelude::*;

    fn det(fall: u32, rise: u32, promote_after: u32) -> Detector {
        Detector::new(Thresholds::new(fall, rise, promote_after).unwrap())
    }

    fn feed(d: &mut Detector, obs: &[Observation]) -> Vec<Transition> {
        obs.iter().filter_map(|o| d.observe(*o)).collect()
    }

    fn tr(from: Verdict, to: Verdict) -> Transition {
        Transition { from, to }
    }

    #[test]
    fn thresholds_reject_zero_and_promote_before_fall() {
        assert_eq!(Thresholds::new(0, 1, 1), Err(ThresholdError::Zero));
        assert_eq!(Thresholds::new(1, 0, 1), Err(ThresholdError::Zero));
        assert_eq!(Thresholds::new(1, 1, 0), Err(ThresholdError::Zero));
        assert_eq!(Thresholds::new(3, 1, 2), Err(ThresholdError::PromoteBeforeFall));
        assert!(Thresholds::new(3, 1, 3).is_ok());
    }

    #[test]
    fn starts_unknown_and_needs_rise_successes() {
        let mut d = det(3, 2, 5);
        assert_eq!(d.verdict(), Verdict::Unknown);
        assert_eq!(d.observe(U), None);
        assert_eq!(d.observe(U), Some(tr(Verdict::Unknown, Verdict::Up)));
        assert_eq!(d.observe(U), None);
    }

    #[test]
    fn unknown_to_down_after_fall_then_lost_after_promote_after() {
        let mut d = det(3, 2, 5);
        assert_eq!(
            feed(&mut d, &[D, D, D, D, D]),
            vec![
                tr(Verdict::Unknown, Verdict::Down),
                tr(Verdict::Down, Verdict::Lost)
            ]
        );
        assert_eq!(d.consecutive_failures(), 5);
    }

    #[test]
    fn up_to_down_exactly_at_fall() {
        let mut d = det(3, 1, 5);
        d.observe(U);
        assert_eq!(d.observe(D), None);
        assert_eq!(d.observe(D), None);
        assert_eq!(d.observe(D), Some(tr(Verdict::Up, Verdict::Down)));
        assert_eq!(d.observe(D), None);
        assert_eq!(d.observe(D), Some(tr(Verdict::Down, Verdict::Lost)));
        // Lost is sticky while failures continue.
        assert_eq!(feed(&mut d, &[D; 10]), vec![]);
        assert_eq!(d.verdict(), Verdict::Lost);
    }

    #[test]
    fn fall_equal_to_promote_after_goes_straight_to_lost() {
        let mut d = det(2, 1, 2);
        d.observe(U);
        assert_eq!(feed(&mut d, &[D, D]), vec![tr(Verdict::Up, Verdict::Lost)]);
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut d = det(3, 2, 4);
        d.observe(U);
        d.observe(U);
        assert_eq!(feed(&mut d, &[D, D, U, D, D, U, D, D]), vec![]);
        assert_eq!(d.verdict(), Verdict::Up);
        assert_eq!(d.consecutive_failures(), 2);
    }

    #[test]
    fn recovery_from_down_needs_rise_successes() {
        let mut d = det(3, 2, 6);
        feed(&mut d, &[D, D, D]);
        assert_eq!(d.observe(U), None, "one success is not enough");
        assert_eq!(d.observe(U), Some(tr(Verdict::Down, Verdict::Up)));
    }

    #[test]
    fn one_success_ends_lost_and_rise_successes_bring_up() {
        let mut d = det(3, 2, 6);
        feed(&mut d, &[D; 6]);
        assert_eq!(d.verdict(), Verdict::Lost);
        assert_eq!(d.observe(U), Some(tr(Verdict::Lost, Verdict::Down)));
        assert_eq!(d.observe(U), Some(tr(Verdict::Down, Verdict::Up)));
    }

    #[test]
    fn rise_of_one_goes_from_lost_straight_to_up() {
        let mut d = det(1, 1, 2);
        feed(&mut d, &[D, D]);
        assert_eq!(d.observe(U), Some(tr(Verdict::Lost, Verdict::Up)));
    }

    #[test]
    fn a_failure_between_successes_restarts_rise() {
        let mut d = det(1, 3, 5);
        d.observe(D);
        assert_eq!(feed(&mut d, &[U, U, D, U, U]), vec![]);
        assert_eq!(d.verdict(), Verdict::Down);
        assert_eq!(d.observe(U), Some(tr(Verdict::Down, Verdict::Up)));
    }

    #[test]
    fn blind_breaks_a_failure_streak_and_never_loses_gold() {
        let mut d = det(2, 1, 3);
        assert_eq!(
            feed(&mut d, &[D, D, B, D, D, B, D, D]),
            vec![tr(Verdict::Unknown, Verdict::Down)]
        );
        assert_eq!(d.verdict(), Verdict::Down);
    }

    #[test]
    fn reset_forgets_streaks_and_verdict() {
        let mut d = det(1, 1, 2);
        feed(&mut d, &[D, D]);
        assert_eq!(d.reset(), Some(tr(Verdict::Lost, Verdict::Unknown)));
        assert_eq!((d.consecutive_failures(), d.verdict()), (0, Verdict::Unknown));
        assert_eq!(d.reset(), None);
        assert_eq!(d.observe(D), Some(tr(Verdict::Unknown, Verdict::Down)));
    }

    #[test]
    fn blind_after_lost_steps_back_to_down() {
        let mut d = det(1, 1, 2);
        feed(&mut d, &[D, D]);
        assert_eq!(d.verdict(), Verdict::Lost);
        assert_eq!(d.observe(B), Some(tr(Verdict::Lost, Verdict::Down)));
        assert_eq!(d.consecutive_failures(), 0);
    }

    #[test]
    fn blind_neither_confirms_nor_denies_up() {
        let mut d = det(1, 2, 1);
        d.observe(U);
        assert_eq!(d.observe(B), None);
        assert_eq!(d.observe(U), None, "blind broke the success streak");
        assert_eq!(d.observe(U), Some(tr(Verdict::Unknown, Verdict::Up)));
        assert_eq!(feed(&mut d, &[B; 5]), vec![]);
        assert_eq!(d.verdict(), Verdict::Up);
    }

    fn observation() -> impl Strategy<Value = Observation> {
        prop_oneof![Just(U), Just(D), Just(B)]
    }

    fn thresholds() -> impl Strategy<Value = Thresholds> {
        (1u32..6, 1u32..6, 0u32..8)
            .prop_map(|(fall, rise, extra)| Thresholds::new(fall, rise, fall + extra).unwrap())
    }

    fn longest_run(obs: &[Observation], of: Observation) -> u32 {
        obs.split(|o| *o != of).map(|r| r.len() as u32).max().unwrap_or(0)
    }

    fn trailing_run(obs: &[Observation], of: Observation) -> u32 {
        obs.iter().rev().take_while(|o| **o == of).count() as u32
    }

    proptest! {
        #[test]
        fn lost_needs_promote_after_consecutive_downs(t in thresholds(), obs in prop::collection::vec(observation(), 0..80)) {
            let mut d = Detector::new(t);
            for (i, o) in obs.iter().enumerate() {
                d.observe(*o);
                if d.verdict() == Verdict::Lost {
                    prop_assert!(trailing_run(&obs[..=i], D) >= t.promote_after());
                }
            }
            if longest_run(&obs, D) < t.promote_after() {
                prop_assert_ne!(d.verdict(), Verdict::Lost);
            }
        }

        #[test]
        fn promote_after_consecutive_downs_always_lose_gold(t in thresholds(), prefix in prop::collection::vec(observation(), 0..40)) {
            let mut d = Detector::new(t);
            feed(&mut d, &prefix);
            let transitions = feed(&mut d, &vec![D; t.promote_after() as usize]);
            prop_assert_eq!(d.verdict(), Verdict::Lost);
            prop_assert!(transitions.iter().all(|tr| tr.to == Verdict::Down || tr.to == Verdict::Lost));
        }

        #[test]
        fn blind_never_enters_lost(t in thresholds(), obs in prop::collection::vec(observation(), 0..60)) {
            let mut d = Detector::new(t);
            for o in obs {
                let tr = d.observe(o);
                if o != D {
                    prop_assert!(tr.is_none_or(|tr| tr.to != Verdict::Lost));
                }
            }
        }

        #[test]
        fn up_only_after_rise_consecutive_ups(t in thresholds(), obs in prop::collection::vec(observation(), 0..60)) {
            let mut d = Detector::new(t);
            for (i, o) in obs.iter().enumerate() {
                if let Some(tr) = d.observe(*o) {
                    if tr.to == Verdict::Up {
                        prop_assert!(trailing_run(&obs[..=i], U) >= t.rise());
                    }
                    if tr.to == Verdict::Down && tr.from != Verdict::Lost {
                        prop_assert!(trailing_run(&obs[..=i], D) >= t.fall());
                    }
                }
            }
        }

        #[test]
        fn counters_are_the_trailing_runs(t in thresholds(), obs in prop::collection::vec(observation(), 0..60)) {
            let mut d = Detector::new(t);
            feed(&mut d, &obs);
            prop_assert_eq!(d.consecutive_failures(), trailing_run(&obs, D));
            prop_assert_eq!(d.consecutive_successes(), trailing_run(&obs, U));
        }

        #[test]
        fn flapping_shorter_than_promote_after_never_loses(t in thresholds(), down in 1u32..20, up in 1u32..3, cycles in 1usize..10) {
            prop_assume!(down < t.promote_after());
            let mut d = Detector::new(t);
            for _ in 0..cycles {
                feed(&mut d, &vec![D; down as usize]);
                feed(&mut d, &vec![U; up as usize]);
                prop_assert_ne!(d.verdict(), Verdict::Lost);
            }
        }
    }

    #[test]
    fn only_up_and_down_feed_the_detector_as_such() {
        use crate::observe::probe::{BlindReason, DownReason};
        assert_eq!(Observation::from(Outcome::Up), Observation::Up);
        for r in DownReason::ALL {
            assert_eq!(Observation::from(Outcome::Down(r)), Observation::Down);
        }
        for r in BlindReason::ALL {
            assert_eq!(Observation::from(Outcome::Blind(r)), Observation::Blind);
        }
    }
}

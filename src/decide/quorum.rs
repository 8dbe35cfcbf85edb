//! The third party's vote. A witness judges Gold's site from two facts: its
//! own probe verdict of Gold's PostgreSQL, and Gold's site heartbeat (does
//! anything of Gold's site answer at all). The DR watchdog turns each
//! witness's answer into a vote and counts them. Pure: no I/O, no clock.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::decide::detector::Verdict;
use crate::observe::witness::{Answer, Witness};

/// Whether Gold's site answers at all, with hysteresis.
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
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum SiteState {
    /// Not checked `fall` times yet.
    Unknown,
    /// Something of the site answered in the last check.
    Alive,
    /// Nothing answered for `fall` consecutive checks.
    Silent,
}

/// The heartbeat's hysteresis: one answer proves the site alive at once,
/// silence counts only after `fall` checks in a row, the same `fall` as the
/// probe's.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    fall: u32,
    silent_streak: u32,
    state: SiteState,
    since: Option<SystemTime>,
}

impl Heartbeat {
    pub fn new(fall: u32) -> Self {
        Heartbeat {
            fall: fall.max(1),
            silent_streak: 0,
            state: SiteState::Unknown,
            since: None,
        }
    }

    pub fn state(&self) -> SiteState {
        self.state
    }

    pub fn since(&self) -> Option<SystemTime> {
        self.since
    }

    /// One round of checks: did anything answer? Returns the change, if any.
    pub fn observe(&mut self, answered: bool, now: SystemTime) -> Option<(SiteState, SiteState)> {
        let next = if answered {
            self.silent_streak = 0;
            SiteState::Alive
        } else {
            self.silent_streak = self.silent_streak.saturating_add(1);
            if self.silent_streak >= self.fall {
                SiteState::Silent
            } else {
                self.state
            }
        };
        if next == self.state {
            return None;
        }
        let from = std::mem::replace(&mut self.state, next);
        self.since = Some(now);
        Some((from, next))
    }
}

/// What a witness says of Gold's site.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Says {
    /// Gold's PostgreSQL is lost and nothing of its site answers.
    SiteLost,
    /// Gold's PostgreSQL answers as a writable primary.
    PrimaryWritable,
    /// Gold's PostgreSQL is not (yet) writable, but its site answers: a
    /// failover inside Gold, a restart, a site coming back.
    SiteAlive,
    /// Neither: not long enough silent, or not checked yet.
    Undecided,
}

/// The one rule that reads a witness's two facts. Any sign of life wins.
pub fn assess(verdict: Verdict, site: SiteState) -> Says {
    match (verdict, site) {
        (Verdict::Up, _) => Says::PrimaryWritable,
        (_, SiteState::Alive) => Says::SiteAlive,
        (Verdict::Lost, SiteState::Silent) => Says::SiteLost,
        _ => Says::Undecided,
    }
}

/// A witness's answer as a vote.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter, strum::Display,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Vote {
    /// Agrees: Gold's site is lost.
    SiteLost,
    /// Vetoes: Gold's primary is writable or its site answers.
    SeesGold,
    /// No vote: the witness has not made up its mind.
    Undecided,
    /// No vote: the observation is older than `WATCHDOG_WITNESS_MAX_AGE`.
    Stale,
    /// No vote: the witness did not answer.
    Unreachable,
    /// No vote: the answer is not an observation we understand.
    Invalid,
}

/// One witness's vote, with why and how old.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ballot {
    pub witness: String,
    pub vote: Vote,
    pub detail: String,
    /// The observation's age when received.
    #[serde(rename = "age_seconds", serialize_with = "seconds")]
    pub age: Option<Duration>,
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// What `answer` from `witness` counts for, given the freshness bound.
pub fn vote(witness: &Witness, answer: &Answer, max_age: Duration) -> Ballot {
    let ballot = |vote, detail: String, age: Option<Duration>| Ballot {
        witness: witness.to_string(),
        vote,
        detail,
        age,
    };
    let report = match answer {
        Answer::Unreachable(e) => return ballot(Vote::Unreachable, e.clone(), None),
        Answer::Invalid(e) => return ballot(Vote::Invalid, e.clone(), None),
        Answer::Report(r) => r,
    };
    let (Ok(verdict), Ok(site)) = (
        report.verdict.parse::<Verdict>(),
        report.site.parse::<SiteState>(),
    ) else {
        return ballot(
            Vote::Invalid,
            format!(
                "verdict {:?}, site {:?} not understood",
                report.verdict, report.site
            ),
            report.age,
        );
    };
    let Some(age) = report.age else {
        return ballot(
            Vote::Undecided,
            format!("{} has not observed Gold yet", report.identity),
            None,
        );
    };
    if age > max_age {
        return ballot(
            Vote::Stale,
            format!(
                "{}'s observation is {:.0}s old, limit {}",
                report.identity,
                age.as_secs_f64(),
                humantime::format_duration(max_age)
            ),
            Some(age),
        );
    }
    let says = assess(verdict, site);
    let vote = match says {
        Says::SiteLost => Vote::SiteLost,
        Says::PrimaryWritable | Says::SiteAlive => Vote::SeesGold,
        Says::Undecided => Vote::Undecided,
    };
    ballot(
        vote,
        format!(
            "{} says {says} (Gold {}, site {})",
            report.identity,
            verdict.as_str(),
            <&str>::from(site)
        ),
        Some(age),
    )
}

/// The count: how many agree, out of how many listed, and how many needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub needed: usize,
    pub listed: usize,
    /// The witnesses that agree Gold's site is lost.
    pub agree: Vec<String>,
}

impl Tally {
    pub fn of(ballots: &[Ballot], needed: usize) -> Tally {
        Tally {
            needed,
            listed: ballots.len(),
            agree: ballots
                .iter()
                .filter(|b| b.vote == Vote::SiteLost)
                .map(|b| b.witness.clone())
                .collect(),
        }
    }

    pub fn reached(&self) -> bool {
        self.agree.len() >= self.needed
    }

    /// "2 of 3 witnesses agree Gold's site is lost (2 needed: a, b)".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} of {} witnesses agree Gold's site is lost ({} needed",
            self.agree.len(),
            self.listed,
            self.needed
        );
        if !self.agree.is_empty() {
            s.push_str(": ");
            s.push_str(&self.agree.join(", "));
        }
        s.push(')');
        s
    }
}

/// The default quorum: a majority of those listed.
pub fn majority(listed: usize) -> usize {
    listed / 2 + 1
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;
    use crate::observe::witness::{self, Report};

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn one_answer_proves_the_site_alive_silence_needs_fall_checks() {
        let mut h = Heartbeat::new(2);
        assert_eq!(h.observe(false, t(1)), None);
        assert_eq!(h.state(), SiteState::Unknown);
        assert_eq!(
            h.observe(false, t(2)),
            Some((SiteState::Unknown, SiteState::Silent))
        );
        assert_eq!(h.since(), Some(t(2)));
        assert_eq!(h.observe(true, t(3)), Some((SiteState::Silent, SiteState::Alive)));
        assert_eq!(
            h.observe(false, t(4)),
            None,
            "one silent check after an answer proves nothing"
        );
        assert_eq!(h.observe(true, t(5)), None);
        assert_eq!(h.observe(false, t(6)), None);
        assert_eq!(
            h.observe(false, t(7)),
            Some((SiteState::Alive, SiteState::Silent))
        );
    }

    /// Every verdict with every site state.
    #[test]
    fn assess_every_combination() {
        for verdict in Verdict::iter() {
            for site in SiteState::iter() {
                let expected = if verdict == Verdict::Up {
                    Says::PrimaryWritable
                } else if site == SiteState::Alive {
                    Says::SiteAlive
                } else if verdict == Verdict::Lost && site == SiteState::Silent {
                    Says::SiteLost
                } else {
                    Says::Undecided
                };
                assert_eq!(assess(verdict, site), expected, "{verdict:?} {site:?}");
            }
        }
    }

    fn w() -> Witness {
        witness::parse_list("http://w:9808").unwrap().remove(0)
    }

    fn report(verdict: &str, site: &str, age: Option<u64>) -> Answer {
        Answer::Report(Report {
            identity: "w-0".into(),
            verdict: verdict.into(),
            site: site.into(),
            age: age.map(Duration::from_secs),
        })
    }

    #[test]
    fn votes() {
        let max = Duration::from_secs(15);
        let v = |a: &Answer| vote(&w(), a, max).vote;
        assert_eq!(v(&report("lost", "silent", Some(3))), Vote::SiteLost);
        assert_eq!(v(&report("lost", "alive", Some(3))), Vote::SeesGold);
        assert_eq!(v(&report("up", "silent", Some(3))), Vote::SeesGold);
        assert_eq!(v(&report("down", "silent", Some(3))), Vote::Undecided);
        assert_eq!(v(&report("lost", "unknown", Some(3))), Vote::Undecided);
        assert_eq!(v(&report("lost", "silent", Some(16))), Vote::Stale);
        assert_eq!(
            v(&report("up", "alive", Some(16))),
            Vote::Stale,
            "an old sign of life is no veto either"
        );
        assert_eq!(v(&report("lost", "silent", None)), Vote::Undecided);
        assert_eq!(v(&report("dead", "silent", Some(1))), Vote::Invalid);
        assert_eq!(v(&Answer::Unreachable("refused".into())), Vote::Unreachable);
        assert_eq!(v(&Answer::Invalid("html".into())), Vote::Invalid);
        let b = vote(&w(), &report("lost", "alive", Some(3)), max);
        assert!(b.detail.contains("site_alive"), "{}", b.detail);
        assert_eq!(b.age, Some(Duration::from_secs(3)));
    }

    #[test]
    fn tally_counts_only_agreement() {
        let max = Duration::from_secs(15);
        let ballots = vec![
            vote(&w(), &Answer::Unreachable("refused".into()), max),
            vote(&w(), &report("lost", "silent", Some(1)), max),
            vote(&w(), &report("down", "silent", Some(1)), max),
        ];
        let tally = Tally::of(&ballots, majority(3));
        assert_eq!(tally.needed, 2);
        assert!(!tally.reached());
        assert_eq!(
            tally.describe(),
            "1 of 3 witnesses agree Gold's site is lost (2 needed: http://w:9808)"
        );
        assert!(Tally::of(&[], 0).reached(), "no witness, no quorum needed");
        assert_eq!([majority(1), majority(2), majority(3), majority(4)], [1, 2, 2, 3]);
    }
}

//! May we promote now? Each guard is a named veto over facts gathered just
//! before acting. Pure: the facts come in, a decision goes out.

use std::time::Duration;

use serde::Serialize;

use crate::config::Mode;
use crate::decide::quorum::{self, Ballot, Tally, Vote};
use crate::observe::cluster::Observation;
pub use crate::observe::cluster::Wal;
pub use crate::observe::cluster_config::{ClusterConfig, DisarmSwitch};
pub use crate::observe::patroni::Role;
use crate::observe::signal::Reading;

/// The operator's limits for the guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub mode: Mode,
    pub wal_receiver_fresh: Duration,
    pub max_data_age: Duration,
    pub allow_stale_promotion: bool,
    /// How many witnesses must agree Gold's site is lost: 0 with none listed
    /// (single-observer mode), and for an operator's `promote` (the operator
    /// is the third party).
    pub quorum: usize,
    /// Older witness observations give no vote.
    pub witness_max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub target_known: bool,
    pub role: Role,
    /// `Err` when the config could not be read or understood.
    pub config: Result<ClusterConfig, String>,
    /// `Err` when the local PostgreSQL could not be asked.
    pub wal: Result<Wal, String>,
    /// Direct checks of Gold through other routes.
    pub signals: Vec<(String, Reading)>,
    /// Every listed witness's vote.
    pub ballots: Vec<Ballot>,
}

impl Facts {
    /// The guards' view of one observation.
    pub fn new(target_known: bool, o: &Observation, limits: &Limits) -> Facts {
        Facts {
            target_known,
            role: o.role.clone(),
            config: o.config.clone(),
            wal: o.wal.as_ref().map(|w| w.wal).map_err(Clone::clone),
            signals: o.signals.clone(),
            ballots: ballots(o, limits.witness_max_age),
        }
    }
}

/// Every witness's answer in `o` as a vote.
pub fn ballots(o: &Observation, max_age: Duration) -> Vec<Ballot> {
    o.witnesses
        .iter()
        .map(|(w, answer)| quorum::vote(w, answer, max_age))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(tag = "guard", content = "detail", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Veto {
    /// Never act on a guessed address.
    TargetUnknown,
    /// WATCHDOG_MODE=observe.
    ModeObserve,
    /// Only the sidecar beside the standby leader acts.
    NotStandbyLeader(String),
    PatroniUnreachable(String),
    ConfigUnreadable(String),
    Paused,
    /// The switches that are set.
    Disarmed(String),
    /// The local standby still receives WAL from Gold: Gold is alive and
    /// only our probe path is broken.
    WalReceiverStreaming(String),
    LocalPgUnreachable(String),
    /// Promoting would lose more than the allowed data.
    StaleData(String),
    /// A direct check of Gold's site through another route answered.
    GoldSignalAlive(String),
    /// A witness sees Gold's primary writable or its site alive.
    WitnessSeesGold(String),
    /// Fewer witnesses than the quorum agree Gold's site is lost.
    NoQuorum(String),
}

impl Veto {
    pub fn name(&self) -> &'static str {
        self.into()
    }

    /// What it says beyond its name.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Veto::NotStandbyLeader(d)
            | Veto::PatroniUnreachable(d)
            | Veto::ConfigUnreadable(d)
            | Veto::WalReceiverStreaming(d)
            | Veto::LocalPgUnreachable(d)
            | Veto::Disarmed(d)
            | Veto::StaleData(d)
            | Veto::GoldSignalAlive(d)
            | Veto::WitnessSeesGold(d)
            | Veto::NoQuorum(d) => Some(d),
            _ => None,
        }
    }

    /// The guard's name with its detail, for logs, Events and alerts.
    pub fn describe(&self) -> String {
        match self.detail() {
            Some(d) => format!("{} ({d})", self.name()),
            None => self.name().to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Promote,
    /// `standby_cluster` is already gone: nothing to write.
    AlreadyPromoted,
    /// Every guard that objects, so an operator sees all of them at once.
    Veto(Vec<Veto>),
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Called only once Gold is `lost` (or by an operator's `promote`).
pub fn decide(f: &Facts, limits: &Limits) -> Decision {
    if f.config.as_ref().is_ok_and(|c| !c.standby) {
        return Decision::AlreadyPromoted;
    }
    let mut vetoes = Vec::new();
    if !f.target_known {
        vetoes.push(Veto::TargetUnknown);
    }
    if limits.mode == Mode::Observe {
        vetoes.push(Veto::ModeObserve);
    }
    match &f.role {
        Role::StandbyLeader => {}
        Role::Unreachable(e) => vetoes.push(Veto::PatroniUnreachable(e.clone())),
        other => vetoes.push(Veto::NotStandbyLeader(other.as_str().to_string())),
    }
    match &f.config {
        Err(e) => vetoes.push(Veto::ConfigUnreadable(e.clone())),
        Ok(c) => {
            if c.paused {
                vetoes.push(Veto::Paused);
            }
            if c.disarmed() {
                let by: Vec<&str> = c.disarmed_by.iter().map(|s| s.into()).collect();
                vetoes.push(Veto::Disarmed(by.join(", ")));
            }
        }
    }
    match &f.wal {
        Err(e) => vetoes.push(Veto::LocalPgUnreachable(e.clone())),
        Ok(wal) => {
            if let Some(age) = wal.streaming_for.filter(|age| *age < limits.wal_receiver_fresh) {
                vetoes.push(Veto::WalReceiverStreaming(format!(
                    "streaming, last message from Gold {} ago",
                    secs(age)
                )));
            }
            if !limits.allow_stale_promotion {
                match wal.data_age {
                    Some(age) if age <= limits.max_data_age => {}
                    Some(age) => vetoes.push(Veto::StaleData(format!(
                        "newest data from Gold is {} old, limit {}",
                        secs(age),
                        secs(limits.max_data_age)
                    ))),
                    None => vetoes.push(Veto::StaleData("age of the newest data from Gold unknown".into())),
                }
            }
        }
    }
    // Silence from a signal is no evidence: only an answer counts.
    // One veto per guard, naming every signal or witness behind it.
    let alive: Vec<String> = f
        .signals
        .iter()
        .filter(|(_, r)| r.alive())
        .map(|(signal, r)| format!("{signal}: {}", r.detail()))
        .collect();
    if !alive.is_empty() {
        vetoes.push(Veto::GoldSignalAlive(alive.join("; ")));
    }
    let seeing: Vec<String> = f
        .ballots
        .iter()
        .filter(|b| b.vote == Vote::SeesGold)
        .map(|b| format!("{}: {}", b.witness, b.detail))
        .collect();
    if !seeing.is_empty() {
        vetoes.push(Veto::WitnessSeesGold(seeing.join("; ")));
    }
    // Unreachable, stale and undecided witnesses give no vote: they neither
    // block nor agree, so only the count of agreeing ones matters.
    let tally = Tally::of(&f.ballots, limits.quorum);
    if !tally.reached() {
        vetoes.push(Veto::NoQuorum(tally.describe()));
    }
    if vetoes.is_empty() {
        Decision::Promote
    } else {
        Decision::Veto(vetoes)
    }
}

/// Would a promotion pass if Gold were lost now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The vetoes a loss of Gold would meet now.
    Blocked(Vec<Veto>),
    /// No `standby_cluster`: nothing left to promote.
    AlreadyPromoted,
}

impl Readiness {
    /// The blockers' names, as the `promotion_blockers{guard}` series call
    /// them.
    pub fn blockers(&self) -> Vec<&'static str> {
        match self {
            Readiness::Ready => vec![],
            Readiness::Blocked(v) => v.iter().map(Veto::name).collect(),
            Readiness::AlreadyPromoted => vec![ALREADY_PROMOTED],
        }
    }
}

/// The readiness blocker of a cluster that is no standby any more.
pub const ALREADY_PROMOTED: &str = "already_promoted";

/// Readiness is [`decide`] itself, over the facts as a loss of Gold would
/// leave them: one rule set, so a blocker now is the veto a loss would meet.
pub fn readiness(f: &Facts, limits: &Limits) -> Readiness {
    match decide(&as_if_gold_lost(f), limits) {
        Decision::Promote => Readiness::Ready,
        Decision::AlreadyPromoted => Readiness::AlreadyPromoted,
        Decision::Veto(v) => Readiness::Blocked(v),
    }
}

/// All else equal, Gold's loss changes only what is heard of Gold: the WAL
/// receiver stops hearing from it, no direct signal answers, and every
/// witness that can be heard agrees the site is lost. A witness that cannot
/// be heard now gives no vote then either.
pub fn as_if_gold_lost(f: &Facts) -> Facts {
    Facts {
        wal: f.wal.clone().map(|w| Wal {
            streaming_for: None,
            ..w
        }),
        signals: Vec::new(),
        ballots: f
            .ballots
            .iter()
            .map(|b| match b.vote {
                Vote::SeesGold | Vote::Undecided => Ballot {
                    vote: Vote::SiteLost,
                    ..b.clone()
                },
                _ => b.clone(),
            })
            .collect(),
        ..f.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(60);
    const MAX_AGE: Duration = Duration::from_secs(300);

    fn limits() -> Limits {
        Limits {
            mode: Mode::Enforce,
            wal_receiver_fresh: FRESH,
            max_data_age: MAX_AGE,
            allow_stale_promotion: false,
            quorum: 1,
            witness_max_age: Duration::from_secs(15),
        }
    }

    fn ballot(witness: &str, vote: Vote) -> Ballot {
        Ballot {
            witness: witness.into(),
            vote,
            detail: format!("says {vote}"),
            age: Some(Duration::from_secs(2)),
        }
    }

    fn good() -> Facts {
        Facts {
            target_known: true,
            role: Role::StandbyLeader,
            config: Ok(ClusterConfig {
                standby: true,
                paused: false,
                disarmed_by: vec![],
                ..Default::default()
            }),
            wal: Ok(Wal {
                streaming_for: None,
                data_age: Some(Duration::from_secs(200)),
            }),
            signals: vec![],
            ballots: vec![ballot("http://w:9808", Vote::SiteLost)],
        }
    }

    fn names(d: &Decision) -> Vec<&'static str> {
        match d {
            Decision::Veto(v) => v.iter().map(Veto::name).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn roles_of_every_patroni_version() {
        assert_eq!(Role::from_patroni("standby_leader"), Role::StandbyLeader);
        assert_eq!(Role::from_patroni("master"), Role::Primary);
        assert_eq!(Role::from_patroni("primary"), Role::Primary);
        assert_eq!(Role::from_patroni("replica"), Role::Replica);
        assert_eq!(
            Role::from_patroni("uninitialized"),
            Role::Other("uninitialized".into())
        );
    }

    #[test]
    fn all_clear_promotes() {
        assert_eq!(decide(&good(), &limits()), Decision::Promote);
    }

    #[test]
    fn a_config_without_standby_cluster_is_already_promoted_whoever_we_are() {
        for role in [
            Role::StandbyLeader,
            Role::Primary,
            Role::Replica,
            Role::Unreachable("x".into()),
        ] {
            let f = Facts {
                role,
                config: Ok(ClusterConfig {
                    standby: false,
                    paused: true,
                    disarmed_by: vec![DisarmSwitch::DynamicConfigKey],
                    ..Default::default()
                }),
                ..good()
            };
            assert_eq!(decide(&f, &limits()), Decision::AlreadyPromoted);
        }
    }

    #[test]
    fn a_streaming_wal_receiver_vetoes_only_while_fresh() {
        let with = |age: u64| Facts {
            wal: Ok(Wal {
                streaming_for: Some(Duration::from_secs(age)),
                data_age: Some(Duration::from_secs(age)),
            }),
            ..good()
        };
        assert_eq!(names(&decide(&with(5), &limits())), ["wal_receiver_streaming"]);
        assert_eq!(decide(&with(61), &limits()), Decision::Promote);
    }

    #[test]
    fn stale_or_unknown_data_age_vetoes_unless_allowed() {
        for age in [Some(Duration::from_secs(301)), None] {
            let f = Facts {
                wal: Ok(Wal {
                    streaming_for: None,
                    data_age: age,
                }),
                ..good()
            };
            assert_eq!(names(&decide(&f, &limits())), ["stale_data"], "{age:?}");
            let allowed = Limits {
                allow_stale_promotion: true,
                ..limits()
            };
            assert_eq!(decide(&f, &allowed), Decision::Promote);
        }
    }

    #[test]
    fn an_answering_signal_vetoes_a_silent_one_is_no_evidence() {
        let f = Facts {
            signals: vec![
                ("http://gold-api/".into(), Reading::Alive("HTTP 503".into())),
                ("tcp://gold:5432".into(), Reading::Silent("refused".into())),
            ],
            ..good()
        };
        match decide(&f, &limits()) {
            Decision::Veto(v) => {
                assert_eq!(
                    v.iter().map(Veto::name).collect::<Vec<_>>(),
                    ["gold_signal_alive"]
                );
                assert!(v[0].describe().contains("http://gold-api/: HTTP 503"));
            }
            d => panic!("{d:?}"),
        }
        let silent = Facts {
            signals: vec![("tcp://gold:5432".into(), Reading::Silent("refused".into()))],
            ..good()
        };
        assert_eq!(decide(&silent, &limits()), Decision::Promote);
    }

    #[test]
    fn a_quorum_of_agreeing_witnesses_promotes_and_any_witness_seeing_gold_vetoes() {
        let three = |votes: [Vote; 3]| Facts {
            ballots: votes
                .iter()
                .enumerate()
                .map(|(i, v)| ballot(&format!("http://w{i}:9808"), *v))
                .collect(),
            ..good()
        };
        let two_of_three = Limits {
            quorum: quorum::majority(3),
            ..limits()
        };
        use Vote::*;
        let f = three([Unreachable, SiteLost, Undecided]);
        assert_eq!(names(&decide(&f, &two_of_three)), ["no_quorum"]);
        match decide(&f, &two_of_three) {
            Decision::Veto(v) => assert_eq!(
                v[0].describe(),
                "no_quorum (1 of 3 witnesses agree Gold's site is lost (2 needed: http://w1:9808))"
            ),
            d => panic!("{d:?}"),
        }
        assert_eq!(
            decide(&three([Unreachable, SiteLost, SiteLost]), &two_of_three),
            Decision::Promote
        );
        assert_eq!(
            names(&decide(&three([SeesGold, SiteLost, SiteLost]), &two_of_three)),
            ["witness_sees_gold"]
        );
        assert_eq!(
            names(&decide(&three([Stale, Invalid, Unreachable]), &two_of_three)),
            ["no_quorum"]
        );
        // An operator's promote is quorum 0: absent votes don't hold it back,
        // a witness that sees Gold still does.
        let operator = Limits {
            quorum: 0,
            ..limits()
        };
        assert_eq!(
            decide(&three([Unreachable, Stale, Undecided]), &operator),
            Decision::Promote
        );
        assert_eq!(
            names(&decide(&three([SeesGold, Stale, Undecided]), &operator)),
            ["witness_sees_gold"]
        );
    }

    /// Every combination of every fact: promote exactly when all are clear,
    /// and name every guard that objects.
    #[test]
    fn exhaustive() {
        let roles = [
            Role::StandbyLeader,
            Role::Primary,
            Role::Replica,
            Role::Other("starting".into()),
            Role::Unreachable("refused".into()),
        ];
        let mut configs = vec![Err("malformed".to_string())];
        for standby in [true, false] {
            for paused in [true, false] {
                for disarmed_by in [
                    vec![],
                    vec![DisarmSwitch::DynamicConfigKey],
                    vec![DisarmSwitch::ConfigmapAnnotation, DisarmSwitch::DynamicConfigKey],
                ] {
                    configs.push(Ok(ClusterConfig {
                        standby,
                        paused,
                        disarmed_by,
                        ..Default::default()
                    }));
                }
            }
        }
        let ages = [
            None,
            Some(Duration::from_secs(10)),
            Some(Duration::from_secs(1000)),
        ];
        let mut wals = vec![Err("refused".to_string())];
        for streaming_for in ages {
            for data_age in ages {
                wals.push(Ok(Wal {
                    streaming_for,
                    data_age,
                }));
            }
        }
        let signals = [
            vec![],
            vec![("s".to_string(), Reading::Alive("HTTP 503".into()))],
            vec![("s".to_string(), Reading::Silent("refused".into()))],
        ];
        let mut ballot_sets = vec![vec![]];
        for a in <Vote as strum::IntoEnumIterator>::iter() {
            for b in <Vote as strum::IntoEnumIterator>::iter() {
                ballot_sets.push(vec![ballot("a", a), ballot("b", b)]);
            }
        }
        let mut promotions = 0;
        for mode in [Mode::Enforce, Mode::DryRun, Mode::Observe] {
            for allow_stale_promotion in [false, true] {
                for quorum in [0, 1, 2] {
                    let l = Limits {
                        mode,
                        allow_stale_promotion,
                        quorum,
                        ..limits()
                    };
                    for target_known in [true, false] {
                        for role in &roles {
                            for config in &configs {
                                for wal in &wals {
                                    for signals in &signals {
                                        for ballots in &ballot_sets {
                                            let f = Facts {
                                                target_known,
                                                role: role.clone(),
                                                config: config.clone(),
                                                wal: wal.clone(),
                                                signals: signals.clone(),
                                                ballots: ballots.clone(),
                                            };
                                            promotions += usize::from(check(&f, &l));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(promotions > 0);
    }

    /// Readiness, judged while Gold is healthy (its WAL streaming in, its
    /// signals answering, every reachable witness seeing it), must be what
    /// the real decision says once Gold is lost (nothing streaming, signals
    /// silent, every reachable witness agreeing), over every combination of
    /// everything else: ready exactly when it promotes, and the blockers
    /// exactly the vetoes.
    #[test]
    fn readiness_while_gold_is_healthy_is_the_decision_after_its_loss() {
        use crate::observe::signal::Reading;
        let roles = [
            Role::StandbyLeader,
            Role::Replica,
            Role::Unreachable("refused".into()),
        ];
        let mut configs = vec![Err("malformed".to_string())];
        for (standby, paused, disarmed) in [
            (true, false, false),
            (true, true, false),
            (true, false, true),
            (false, false, false),
        ] {
            configs.push(Ok(ClusterConfig {
                standby,
                paused,
                disarmed_by: if disarmed {
                    vec![DisarmSwitch::DynamicConfigKey]
                } else {
                    vec![]
                },
                ..Default::default()
            }));
        }
        let mut checked = (0, 0);
        for mode in [Mode::Enforce, Mode::DryRun, Mode::Observe] {
            for quorum in [0, 1, 2] {
                let l = Limits {
                    mode,
                    quorum,
                    ..limits()
                };
                for target_known in [true, false] {
                    for role in &roles {
                        for config in &configs {
                            for data_age in [None, Some(10), Some(1000)] {
                                for local_pg in [true, false] {
                                    // Each witness reachable now or not.
                                    for reachable in [[true, true], [true, false], [false, false]] {
                                        let wal = |streaming: Option<u64>| {
                                            if local_pg {
                                                Ok(Wal {
                                                    streaming_for: streaming.map(Duration::from_secs),
                                                    data_age: data_age.map(Duration::from_secs),
                                                })
                                            } else {
                                                Err("refused".to_string())
                                            }
                                        };
                                        let ballots = |alive: Vote| -> Vec<Ballot> {
                                            ["a", "b"]
                                                .iter()
                                                .zip(reachable)
                                                .map(|(w, r)| {
                                                    ballot(w, if r { alive } else { Vote::Unreachable })
                                                })
                                                .collect()
                                        };
                                        let healthy = Facts {
                                            target_known,
                                            role: role.clone(),
                                            config: config.clone(),
                                            wal: wal(Some(1)),
                                            signals: vec![("s".into(), Reading::Alive("HTTP 200".into()))],
                                            ballots: ballots(Vote::SeesGold),
                                        };
                                        let lost = Facts {
                                            wal: wal(None),
                                            signals: vec![("s".into(), Reading::Silent("refused".into()))],
                                            ballots: ballots(Vote::SiteLost),
                                            ..healthy.clone()
                                        };
                                        let ready = readiness(&healthy, &l);
                                        match (&ready, decide(&lost, &l)) {
                                            (Readiness::Ready, Decision::Promote) => checked.0 += 1,
                                            (Readiness::Blocked(b), Decision::Veto(v)) => {
                                                assert_eq!(b, &v, "{healthy:?} {l:?}");
                                                checked.1 += 1;
                                            }
                                            (Readiness::AlreadyPromoted, Decision::AlreadyPromoted) => {}
                                            (r, d) => {
                                                panic!("readiness {r:?}, decision {d:?}: {healthy:?} {l:?}")
                                            }
                                        }
                                        // The healthy facts themselves never promote.
                                        assert_ne!(decide(&healthy, &l), Decision::Promote);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked.0 > 0 && checked.1 > 0, "{checked:?}");
    }

    #[test]
    fn an_unreachable_witness_blocks_readiness_by_the_quorum_it_would_deny() {
        let mut f = good();
        f.ballots = vec![ballot("a", Vote::SeesGold), ballot("b", Vote::Unreachable)];
        let l = Limits {
            quorum: 2,
            ..limits()
        };
        assert_eq!(readiness(&f, &l).blockers(), ["no_quorum"]);
        f.ballots[1].vote = Vote::SeesGold;
        assert_eq!(readiness(&f, &l), Readiness::Ready);
        let promoted = Facts {
            config: Ok(ClusterConfig {
                standby: false,
                paused: false,
                disarmed_by: vec![],
                ..Default::default()
            }),
            ..good()
        };
        assert_eq!(readiness(&promoted, &l).blockers(), [ALREADY_PROMOTED]);
    }

    /// One combination: the decision must follow from each guard alone.
    fn check(f: &Facts, l: &Limits) -> bool {
        let d = decide(f, l);
        if f.config.as_ref().is_ok_and(|c| !c.standby) {
            assert_eq!(d, Decision::AlreadyPromoted);
            return false;
        }
        let streaming = f
            .wal
            .as_ref()
            .is_ok_and(|w| w.streaming_for.is_some_and(|a| a < l.wal_receiver_fresh));
        let stale = !l.allow_stale_promotion
            && f.wal
                .as_ref()
                .is_ok_and(|w| w.data_age.is_none_or(|a| a > l.max_data_age));
        let expected = [
            ("target_unknown", !f.target_known),
            ("mode_observe", l.mode == Mode::Observe),
            (
                "not_standby_leader",
                !matches!(f.role, Role::StandbyLeader | Role::Unreachable(_)),
            ),
            ("patroni_unreachable", matches!(f.role, Role::Unreachable(_))),
            ("config_unreadable", f.config.is_err()),
            ("paused", f.config.as_ref().is_ok_and(|c| c.paused)),
            ("disarmed", f.config.as_ref().is_ok_and(|c| c.disarmed())),
            ("wal_receiver_streaming", streaming),
            ("local_pg_unreachable", f.wal.is_err()),
            ("stale_data", stale),
            ("gold_signal_alive", f.signals.iter().any(|(_, r)| r.alive())),
            (
                "witness_sees_gold",
                f.ballots.iter().any(|b| b.vote == Vote::SeesGold),
            ),
            (
                "no_quorum",
                f.ballots.iter().filter(|b| b.vote == Vote::SiteLost).count() < l.quorum,
            ),
        ];
        let want: Vec<&str> = expected.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
        if want.is_empty() {
            assert_eq!(d, Decision::Promote, "{f:?} {l:?}");
            true
        } else {
            assert_eq!(names(&d), want, "{f:?} {l:?}");
            false
        }
    }
}

//! The guard's rules at Gold, and the promotion gate's. Pure: what a round
//! saw comes in with the time, an action goes out.
//!
//! Fence Gold (make it a standby cluster of GoldDR) when
//! - GoldDR answers as a writable primary: at once, whatever else is seen;
//! - Gold is isolated: GoldDR cannot be reached and no witness that can be
//!   reached sees Gold, without a break for `fence_after`.
//!
//! Un-fence only a fence of ours made for isolation, once GoldDR answers
//! again as a standby: it was never promoted, so Gold is the primary site.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::observe::dynamic_config::Fence;

/// What a probe of GoldDR said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum GoldDrSeen {
    /// A writable primary: GoldDR was promoted.
    Writable,
    /// A standby (in recovery): GoldDR follows Gold.
    Standby,
    /// No answer.
    Unreachable,
    /// It answered but the probe cannot judge it (credentials, TLS).
    Blind,
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
    strum::EnumString,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FenceReason {
    /// GoldDR answered as a writable primary.
    GolddrPromoted,
    /// Gold was cut off from GoldDR and every witness.
    Isolated,
}

/// One round of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sight {
    /// The Patroni member beside this guard is Gold's leader (or Gold has no
    /// leader at all): only then does it act.
    pub leader: bool,
    pub golddr: GoldDrSeen,
    /// Fresh witnesses that reach Gold (they see its site or its primary).
    pub witnesses_seeing_gold: usize,
    /// Gold's dynamic config: `Err` when unreadable.
    pub fence: Result<Fence, String>,
    pub disarmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Fence(FenceReason),
    /// Our isolation fence is upgraded: GoldDR was promoted meanwhile, so it
    /// must never be lifted.
    Remark(FenceReason),
    Unfence,
    Nothing,
}

impl Action {
    /// For logs, alerts and `/status`.
    pub fn describe(&self) -> String {
        match self {
            Action::Fence(r) => format!("fence ({})", <&str>::from(r)),
            Action::Remark(r) => format!("re-mark the fence ({})", <&str>::from(r)),
            Action::Unfence => "unfence".to_string(),
            Action::Nothing => "nothing".to_string(),
        }
    }
}

/// Isolation must last this long, unbroken.
#[derive(Debug, Clone, Default)]
pub struct Isolation {
    since: Option<Instant>,
}

impl Isolation {
    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

/// Whether Gold, as this round saw it, is cut off from GoldDR and every
/// witness.
pub fn isolated(s: &Sight) -> bool {
    s.golddr == GoldDrSeen::Unreachable && s.witnesses_seeing_gold == 0
}

/// The guard's decision for one round at `now`.
pub fn decide(s: &Sight, isolation: &mut Isolation, fence_after: Duration, now: Instant) -> Action {
    if isolated(s) {
        isolation.since.get_or_insert(now);
    } else {
        isolation.since = None;
    }
    let Ok(fence) = &s.fence else {
        return Action::Nothing;
    };
    if !s.leader || s.disarmed {
        return Action::Nothing;
    }
    match (fence, s.golddr) {
        (Fence::No, GoldDrSeen::Writable) => Action::Fence(FenceReason::GolddrPromoted),
        (Fence::Ours(mark), GoldDrSeen::Writable)
            if mark.reason != <&str>::from(FenceReason::GolddrPromoted) =>
        {
            Action::Remark(FenceReason::GolddrPromoted)
        }
        (Fence::No, _)
            if isolation
                .since
                .is_some_and(|t| now.duration_since(t) >= fence_after) =>
        {
            Action::Fence(FenceReason::Isolated)
        }
        (Fence::Ours(mark), GoldDrSeen::Standby) if mark.reason == <&str>::from(FenceReason::Isolated) => {
            Action::Unfence
        }
        _ => Action::Nothing,
    }
}

/// The promotion gate's answer: may Gold's Patroni promote a member now?
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Allow(&'static str),
    Refuse(&'static str),
}

/// Patroni's `pre_promote`: never a Gold primary beside a writable GoldDR or
/// behind our fence; with GoldDR unreachable, only while a witness sees
/// Gold's site (a failover inside Gold during a tunnel outage still gets its
/// primary; an isolated Gold does not).
pub fn gate(golddr: GoldDrSeen, fence: &Fence, witnesses_seeing_gold: usize) -> Gate {
    if golddr == GoldDrSeen::Writable {
        return Gate::Refuse("GoldDR answers as a writable primary");
    }
    if matches!(fence, Fence::Ours(_) | Fence::Foreign) {
        return Gate::Refuse("Gold is fenced: a standby_cluster is in force");
    }
    match golddr {
        GoldDrSeen::Standby => Gate::Allow("GoldDR answers as a standby"),
        _ if witnesses_seeing_gold > 0 => {
            Gate::Allow("GoldDR is out of reach but a witness sees Gold's site")
        }
        _ => Gate::Refuse("GoldDR is out of reach and no witness sees Gold's site: Gold may be isolated"),
    }
}

#[cfg(test)]
mod tests {
    use strum::IntoEnumIterator;

    use super::*;
    use crate::observe::dynamic_config::FenceMark;

    fn mark(reason: FenceReason) -> Fence {
        Fence::Ours(FenceMark {
            reason: <&str>::from(reason).into(),
            by: "gold-0".into(),
            at: "2026-11-29T13:00:00Z".into(),
        })
    }

    fn fences() -> Vec<Result<Fence, String>> {
        vec![
            Ok(Fence::No),
            Ok(mark(FenceReason::Isolated)),
            Ok(mark(FenceReason::GolddrPromoted)),
            Ok(Fence::Foreign),
            Err("GET /config: refused".into()),
        ]
    }

    const AFTER: Duration = Duration::from_secs(5);

    /// Every combination, with isolation long enough and not yet.
    #[test]
    fn exhaustive() {
        let t0 = Instant::now();
        for golddr in GoldDrSeen::iter() {
            for witnesses in [0, 1] {
                for fence in fences() {
                    for leader in [true, false] {
                        for disarmed in [false, true] {
                            for elapsed in [Duration::ZERO, AFTER] {
                                let s = Sight {
                                    leader,
                                    golddr,
                                    witnesses_seeing_gold: witnesses,
                                    fence: fence.clone(),
                                    disarmed,
                                };
                                let mut iso = Isolation::default();
                                decide(&s, &mut iso, AFTER, t0);
                                let action = decide(&s, &mut iso, AFTER, t0 + elapsed);
                                let isolated = golddr == GoldDrSeen::Unreachable && witnesses == 0;
                                let may_act = leader && !disarmed && fence.is_ok();
                                let ours = |r: FenceReason| fence == Ok(mark(r));
                                let expected = if !may_act {
                                    Action::Nothing
                                } else if golddr == GoldDrSeen::Writable && fence == Ok(Fence::No) {
                                    Action::Fence(FenceReason::GolddrPromoted)
                                } else if golddr == GoldDrSeen::Writable && ours(FenceReason::Isolated) {
                                    Action::Remark(FenceReason::GolddrPromoted)
                                } else if isolated && elapsed >= AFTER && fence == Ok(Fence::No) {
                                    Action::Fence(FenceReason::Isolated)
                                } else if golddr == GoldDrSeen::Standby && ours(FenceReason::Isolated) {
                                    Action::Unfence
                                } else {
                                    Action::Nothing
                                };
                                assert_eq!(action, expected, "{s:?} after {elapsed:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn isolation_must_last_without_a_break() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let cut = Sight {
            leader: true,
            golddr: GoldDrSeen::Unreachable,
            witnesses_seeing_gold: 0,
            fence: Ok(Fence::No),
            disarmed: false,
        };
        let witness_back = Sight {
            witnesses_seeing_gold: 1,
            ..cut.clone()
        };
        let mut iso = Isolation::default();
        assert_eq!(decide(&cut, &mut iso, AFTER, at(0)), Action::Nothing);
        assert_eq!(decide(&cut, &mut iso, AFTER, at(4)), Action::Nothing);
        assert_eq!(
            decide(&witness_back, &mut iso, AFTER, at(5)),
            Action::Nothing,
            "a break"
        );
        assert_eq!(decide(&cut, &mut iso, AFTER, at(6)), Action::Nothing);
        assert_eq!(decide(&cut, &mut iso, AFTER, at(10)), Action::Nothing);
        assert_eq!(
            decide(&cut, &mut iso, AFTER, at(11)),
            Action::Fence(FenceReason::Isolated)
        );
    }

    #[test]
    fn the_gate_over_every_combination() {
        for golddr in GoldDrSeen::iter() {
            for fence in fences().into_iter().flatten() {
                for witnesses in [0, 1] {
                    let g = gate(golddr, &fence, witnesses);
                    let allow = golddr != GoldDrSeen::Writable
                        && fence == Fence::No
                        && (golddr == GoldDrSeen::Standby || witnesses > 0);
                    assert_eq!(
                        matches!(g, Gate::Allow(_)),
                        allow,
                        "{golddr:?} {fence:?} {witnesses}"
                    );
                }
            }
        }
    }
}

//! May we promote now? Each guard is a named veto over facts gathered just
//! before acting. Pure: the facts come in, a decision goes out.

use serde::Serialize;

/// The local Patroni member's role, from `GET /patroni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", content = "detail", rename_all = "snake_case")]
pub enum Role {
    StandbyLeader,
    /// `primary`, or `master` before Patroni 3.
    Primary,
    Replica,
    Other(String),
    /// Patroni did not answer or answered nonsense.
    Unreachable(String),
}

impl Role {
    /// From the `role` field of `GET /patroni`, accepting every Patroni
    /// version's names.
    pub fn from_patroni(role: &str) -> Role {
        match role {
            "standby_leader" | "standby-leader" => Role::StandbyLeader,
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            other => Role::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::StandbyLeader => "standby_leader",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Other(r) => r,
            Role::Unreachable(_) => "unreachable",
        }
    }
}

/// The parts of the DR cluster's configuration a promotion depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// `standby_cluster` is still in the dynamic config.
    pub standby: bool,
    /// Patroni maintenance mode.
    pub paused: bool,
    /// The operator's disarm annotation is set.
    pub disarmed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub target_known: bool,
    /// A promoter is configured (WATCHDOG_PROMOTER is not `none`).
    pub armed: bool,
    pub role: Role,
    /// `Err` when the config could not be read or understood.
    pub config: Result<ClusterConfig, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "guard", content = "detail", rename_all = "snake_case")]
pub enum Veto {
    /// Never act on a guessed address.
    TargetUnknown,
    /// Observe-only deployment.
    NoPromoter,
    /// Only the sidecar beside the standby leader acts.
    NotStandbyLeader(String),
    PatroniUnreachable(String),
    ConfigUnreadable(String),
    Paused,
    Disarmed,
}

impl Veto {
    pub const NAMES: [&'static str; 7] = [
        "target_unknown",
        "no_promoter",
        "not_standby_leader",
        "patroni_unreachable",
        "config_unreadable",
        "paused",
        "disarmed",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Veto::TargetUnknown => "target_unknown",
            Veto::NoPromoter => "no_promoter",
            Veto::NotStandbyLeader(_) => "not_standby_leader",
            Veto::PatroniUnreachable(_) => "patroni_unreachable",
            Veto::ConfigUnreadable(_) => "config_unreadable",
            Veto::Paused => "paused",
            Veto::Disarmed => "disarmed",
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

/// Called only once Gold is `lost`.
pub fn decide(f: &Facts) -> Decision {
    if f.armed && f.config.as_ref().is_ok_and(|c| !c.standby) {
        return Decision::AlreadyPromoted;
    }
    let mut vetoes = Vec::new();
    if !f.target_known {
        vetoes.push(Veto::TargetUnknown);
    }
    if !f.armed {
        vetoes.push(Veto::NoPromoter);
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
            if c.disarmed {
                vetoes.push(Veto::Disarmed);
            }
        }
    }
    if vetoes.is_empty() {
        Decision::Promote
    } else {
        Decision::Veto(vetoes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            target_known: true,
            armed: true,
            role: Role::StandbyLeader,
            config: Ok(ClusterConfig {
                standby: true,
                paused: false,
                disarmed: false,
            }),
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
        assert_eq!(decide(&good()), Decision::Promote);
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
                    disarmed: true,
                }),
                ..good()
            };
            assert_eq!(decide(&f), Decision::AlreadyPromoted);
        }
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
                for disarmed in [true, false] {
                    configs.push(Ok(ClusterConfig {
                        standby,
                        paused,
                        disarmed,
                    }));
                }
            }
        }
        let mut promotions = 0;
        for target_known in [true, false] {
            for armed in [true, false] {
                for role in &roles {
                    for config in &configs {
                        let f = Facts {
                            target_known,
                            armed,
                            role: role.clone(),
                            config: config.clone(),
                        };
                        let d = decide(&f);
                        let clear = target_known
                            && armed
                            && *role == Role::StandbyLeader
                            && config
                                .as_ref()
                                .is_ok_and(|c| c.standby && !c.paused && !c.disarmed);
                        assert_eq!(d == Decision::Promote, clear, "{f:?} → {d:?}");
                        promotions += usize::from(clear);
                        if let Decision::Veto(v) = &d {
                            let names: Vec<_> = v.iter().map(Veto::name).collect();
                            assert_eq!(names.contains(&"target_unknown"), !target_known, "{f:?}");
                            assert_eq!(names.contains(&"no_promoter"), !armed, "{f:?}");
                            assert_eq!(
                                names.contains(&"paused"),
                                config.as_ref().is_ok_and(|c| c.paused),
                                "{f:?}"
                            );
                            assert_eq!(
                                names.contains(&"disarmed"),
                                config.as_ref().is_ok_and(|c| c.disarmed),
                                "{f:?}"
                            );
                            assert_eq!(names.contains(&"config_unreadable"), config.is_err());
                            let role_vetoed = names.contains(&"not_standby_leader")
                                || names.contains(&"patroni_unreachable");
                            assert_eq!(role_vetoed, *role != Role::StandbyLeader, "{f:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(promotions, 1);
    }
}

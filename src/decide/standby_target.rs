//! Keeping GoldDR's `standby_cluster` pointed at the Transport Service.
//!
//! The TS's port is random and changes when its claim is re-synced. The
//! watchdog follows the new port for its probes at once, but GoldDR's
//! standby leader dials whatever `standby_cluster.host`/`port` say, so
//! replication would silently stop. This module decides, purely, whether
//! the config points elsewhere than the TS and whether this sidecar may fix
//! it now; [`Follower`] is its part of the loop's state.
//!
//! The rule for host and port: the port is compared and fixed whenever it
//! differs. The host is rewritten only when it does not name the Transport
//! Service at all; any of the Service's DNS names (`svc`, `svc.ns`,
//! `svc.ns.svc`, `svc.ns.svc.<cluster domain>`) or the probed host
//! (`WATCHDOG_GOLD_HOST`) is the same tunnel, written the operator's way,
//! and is left byte for byte. Only a target discovered from the Service is
//! followed: a static address is the operator's, like `standby_cluster`
//! itself, nothing about it drifts at run time, and a probe route that
//! differs from the replication route may be on purpose.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Mode;
use crate::decide::state::{AlertKind, Audit, Effect, alert};
use crate::observe::cluster::Observation;
use crate::observe::cluster_config::{ClusterConfig, DisarmSwitch, StandbyAddress};
use crate::observe::patroni::Role;
use crate::observe::target::{Endpoint, Source, Target};

/// The Transport Service the target comes from, to recognise its names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TsNames {
    /// `WATCHDOG_TS_SERVICE`; `None` for a static address.
    pub service: Option<String>,
    /// Where the Service lives.
    pub namespace: String,
}

impl TsNames {
    /// `ns/name` for messages, or `the static address`.
    pub fn describe(&self) -> String {
        match &self.service {
            Some(s) => format!("the Transport Service {}/{s}", self.namespace),
            None => "the static address".to_string(),
        }
    }

    /// Whether `host` names the Transport Service reached at `probed`: the
    /// probed host itself, or one of the Service's cluster DNS names as the
    /// pod's resolver completes them. Case and a trailing dot do not count.
    pub fn names(&self, host: &str, probed: &str) -> bool {
        let norm = |h: &str| h.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = norm(host);
        if host.is_empty() {
            return false;
        }
        if host == norm(probed) {
            return true;
        }
        let Some(service) = &self.service else {
            return false;
        };
        let (svc, ns) = (service.to_ascii_lowercase(), self.namespace.to_ascii_lowercase());
        let full = format!("{svc}.{ns}.svc");
        host == svc
            || host == format!("{svc}.{ns}")
            || host == full
            || host
                .strip_prefix(&full)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|domain| !domain.is_empty())
    }
}

/// What this site can do about a config that points elsewhere, fixed at
/// start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub names: TsNames,
    /// What a fix writes (e.g. `ConfigMap ns/patroni-config`), or why this
    /// sidecar never writes one.
    pub writes: Result<String, &'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            names: TsNames::default(),
            writes: Err(NO_PROMOTER),
        }
    }
}

pub const NO_PROMOTER: &str = "no promoter (WATCHDOG_PROMOTER=none): nothing here can write standby_cluster";
pub const PLAIN_STANDBY: &str = "a plain standby (WATCHDOG_PROMOTER=pg-promote) has no standby_cluster; \
     re-point its primary_conninfo by hand when the Transport Service moves";
pub const SWITCHED_OFF: &str = "WATCHDOG_FOLLOW_TS=false: standby_cluster is left to the operator";

/// The keys that would make `standby_cluster` point at the Transport
/// Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// `standby_cluster`'s address as the config has it.
    pub from: StandbyAddress,
    /// The Transport Service's address, as probed.
    pub to: Endpoint,
    /// The host names something other than the Transport Service.
    pub host: bool,
    /// The port differs.
    pub port: bool,
}

impl Fix {
    /// The host to write, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.then_some(self.to.host.as_str())
    }

    /// The port to write, if any.
    pub fn port(&self) -> Option<u16> {
        self.port.then_some(self.to.port)
    }

    /// The keys written, comma-separated, for log fields.
    pub fn keys(&self) -> &'static str {
        match (self.host, self.port) {
            (true, true) => "host,port",
            (true, false) => "host",
            _ => "port",
        }
    }

    /// E.g. `standby_cluster.port from 31234 to 31999`.
    pub fn describe(&self) -> String {
        let from = &self.from;
        let port = || {
            from.port.as_ref().map_or("none".to_string(), |p| {
                p.as_str().map_or(p.to_string(), str::to_string)
            })
        };
        match (self.host, self.port) {
            (true, true) => format!(
                "standby_cluster host and port from {} to {}",
                from.describe(),
                self.to
            ),
            (true, false) => format!(
                "standby_cluster.host from {} to {}",
                from.host.as_deref().unwrap_or("none"),
                self.to.host
            ),
            _ => format!("standby_cluster.port from {} to {}", port(), self.to.port),
        }
    }
}

/// Why there is nothing to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Quiet {
    /// `standby_cluster` points at the Transport Service.
    InSync,
    /// Never compare with a guessed address.
    TargetUnknown,
    /// A static address is not followed (see the module's notes).
    StaticTarget,
    /// The config could not be read: reported by the promotion's guards,
    /// never overwritten.
    ConfigUnreadable,
    /// No `standby_cluster`: promoted, nothing dials Gold.
    NotStandby,
    /// `standby_cluster` has neither host nor port (an archive-only
    /// standby): nothing streams through the tunnel.
    NoAddress,
}

impl Quiet {
    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// Why a config that points elsewhere is not fixed from here now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Hold {
    /// Only the standby leader's sidecar writes; the role it is beside.
    NotStandbyLeader(String),
    /// Who this sidecar is beside is unknown.
    PatroniUnreachable,
    /// `WATCHDOG_MODE=observe`: never decide.
    ModeObserve,
    /// `WATCHDOG_MODE=dry-run`: say what would be written.
    DryRun,
    Paused,
    /// The disarm switches that are set.
    Disarmed(Vec<DisarmSwitch>),
    /// A promotion is written or was: `standby_cluster` is going away.
    Promoting,
    /// Nothing here writes it (no promoter that can, or switched off).
    NotWritable(&'static str),
}

impl Hold {
    pub fn name(&self) -> &'static str {
        self.into()
    }

    pub fn describe(&self) -> String {
        match self {
            Hold::NotStandbyLeader(role) => {
                format!("this sidecar is beside a {role}, not the standby leader")
            }
            Hold::PatroniUnreachable => "the local Patroni does not answer".to_string(),
            Hold::ModeObserve => "WATCHDOG_MODE=observe".to_string(),
            Hold::DryRun => "WATCHDOG_MODE=dry-run".to_string(),
            Hold::Paused => "Patroni is paused".to_string(),
            Hold::Disarmed(by) => {
                let by: Vec<&str> = by.iter().map(|s| s.into()).collect();
                format!("disarmed ({})", by.join(", "))
            }
            Hold::Promoting => "a promotion is being written".to_string(),
            Hold::NotWritable(why) => why.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write these keys now.
    Fix(Fix),
    /// The config points elsewhere; every reason it is not fixed from here.
    Hold(Fix, Vec<Hold>),
    Nothing(Quiet),
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Fix(_) => "fix",
            Decision::Hold(_, holds) if holds.as_slice() == [Hold::DryRun] => "dry_run",
            Decision::Hold(..) => "hold",
            Decision::Nothing(q) => q.name(),
        }
    }
}

/// What the decision looks at, from one observation.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub target: &'a Target,
    /// `Err`: the config could not be read or understood.
    pub config: Result<&'a ClusterConfig, &'a str>,
    pub role: &'a Role,
    pub mode: Mode,
    /// A promotion is in flight or done.
    pub promoting: bool,
}

/// Where `config` points compared with the Transport Service at `target`:
/// the keys to write, or why there is nothing to fix.
pub fn compare(names: &TsNames, target: &Target, config: &ClusterConfig) -> Result<Fix, Quiet> {
    let endpoint = match target {
        Target::Unknown { .. } => return Err(Quiet::TargetUnknown),
        Target::Known {
            source: Source::Static,
            ..
        } => return Err(Quiet::StaticTarget),
        Target::Known {
            endpoint,
            source: Source::Service,
        } => endpoint,
    };
    if !config.standby {
        return Err(Quiet::NotStandby);
    }
    let from = &config.standby_address;
    if from.host.is_none() && from.port.is_none() {
        return Err(Quiet::NoAddress);
    }
    let host = !from
        .host
        .as_deref()
        .is_some_and(|h| names.names(h, &endpoint.host));
    let port = from.port_number() != Some(endpoint.port);
    if !host && !port {
        return Err(Quiet::InSync);
    }
    Ok(Fix {
        from: from.clone(),
        to: endpoint.clone(),
        host,
        port,
    })
}

/// While `config` points elsewhere than the Transport Service, what is
/// wrong, e.g. `standby_cluster.port from 31234 to 31999`; for the
/// readiness blocker `standby_target_mismatch`.
pub fn mismatch(names: &TsNames, target: &Target, config: &ClusterConfig) -> Option<String> {
    compare(names, target, config).ok().map(|f| f.describe())
}

/// Fix, hold, or nothing: pure, over every fact it needs.
pub fn decide(setup: &Setup, f: &Facts) -> Decision {
    let config = match f.config {
        Ok(c) => c,
        Err(_) => return Decision::Nothing(Quiet::ConfigUnreadable),
    };
    let fix = match compare(&setup.names, f.target, config) {
        Ok(fix) => fix,
        Err(quiet) => return Decision::Nothing(quiet),
    };
    let mut holds = Vec::new();
    match f.role {
        Role::StandbyLeader => {}
        Role::Unreachable(_) => holds.push(Hold::PatroniUnreachable),
        other => holds.push(Hold::NotStandbyLeader(other.as_str().to_string())),
    }
    match f.mode {
        Mode::Enforce => {}
        Mode::DryRun => holds.push(Hold::DryRun),
        Mode::Observe => holds.push(Hold::ModeObserve),
    }
    if config.paused {
        holds.push(Hold::Paused);
    }
    if config.disarmed() {
        holds.push(Hold::Disarmed(config.disarmed_by.clone()));
    }
    if f.promoting {
        holds.push(Hold::Promoting);
    }
    if let Err(why) = setup.writes {
        holds.push(Hold::NotWritable(why));
    }
    if holds.is_empty() {
        Decision::Fix(fix)
    } else {
        Decision::Hold(fix, holds)
    }
}

/// How a fix ended, as counted in `standby_target_fixes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FixResult {
    Fixed,
    /// The fresh read found it right already: nothing written.
    AlreadyRight,
    /// The fresh read found a reason not to write (paused, disarmed, the
    /// Transport Service moved again, …).
    CalledOff,
    Failed,
    DryRun,
}

/// A fix for the shell to write, with who and why for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixRequest {
    pub fix: Fix,
    /// The target it was decided for: the write is called off if it moves.
    pub target: Target,
    pub audit: Audit,
}

/// What the write came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixOutcome {
    Fixed(FixRequest),
    AlreadyRight(FixRequest),
    CalledOff(FixRequest, String),
    Failed(FixRequest, String),
}

/// One log line per decision: the decision, with what it compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub decision: Decision,
    pub object: Option<String>,
}

/// The last fix written (or tried, or reported in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastFix {
    pub result: FixResult,
    pub at: SystemTime,
    pub what: String,
    pub error: Option<String>,
}

/// How long after a fix an observation that still shows the old address is
/// taken for a stale read rather than a reason to write again: Patroni's
/// `GET /config` serves its view of the DCS as of its last HA loop
/// (`loop_wait`, 10 s by default).
pub const SETTLE: Duration = Duration::from_secs(30);

/// The standby-target part of the loop's state: the last decision, the
/// write in flight, and what was already said.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    setup: Setup,
    decision: Option<Decision>,
    writing: bool,
    /// When the last write finished: an observation that started earlier
    /// may predate it and would ask for the same fix again.
    written_at: Option<SystemTime>,
    /// The fix whose dry run or failure was already reported.
    dry_run_said: Option<Fix>,
    failure_said: Option<Fix>,
    last: Option<LastFix>,
    /// The fix last written and when, until an observation shows it.
    fixed: Option<(Fix, SystemTime)>,
}

impl Follower {
    pub fn new(setup: Setup) -> Self {
        Follower {
            setup,
            ..Default::default()
        }
    }

    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The last decision taken on an observation, if any.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    pub fn last(&self) -> Option<&LastFix> {
        self.last.as_ref()
    }

    /// Decides on a fresh observation. `speaks` is whether this sidecar
    /// speaks for the site (the standby leader's, or unknown).
    #[allow(clippy::too_many_arguments)]
    pub fn observed(
        &mut self,
        target: &Target,
        o: &Observation,
        mode: Mode,
        promoting: bool,
        speaks: bool,
        identity: &str,
        now: SystemTime,
        effects: &mut Vec<Effect>,
    ) {
        if self.writing || self.written_at.is_some_and(|w| o.started < w) {
            return;
        }
        let facts = Facts {
            target,
            config: o.config.as_ref().map_err(String::as_str),
            role: &o.role,
            mode,
            promoting,
        };
        let decision = decide(&self.setup, &facts);
        if let (Decision::Fix(fix), Some((fixed, at))) = (&decision, &self.fixed)
            && fix == fixed
            && now < *at + SETTLE
        {
            return;
        }
        let changed = self.decision.as_ref() != Some(&decision);
        let was_mismatch = matches!(self.decision, Some(Decision::Fix(_) | Decision::Hold(..)));
        let object = self.setup.writes.as_ref().ok().cloned();
        let report = || {
            Effect::StandbyTarget(Report {
                decision: decision.clone(),
                object: object.clone(),
            })
        };
        match &decision {
            Decision::Fix(fix) => {
                self.writing = true;
                if changed {
                    effects.push(report());
                }
                effects.push(Effect::FixStandbyTarget(FixRequest {
                    fix: fix.clone(),
                    target: target.clone(),
                    audit: Audit {
                        at: now,
                        by: identity.to_string(),
                        reason: format!(
                            "{}: {} is at {}",
                            fix.describe(),
                            self.setup.names.describe(),
                            fix.to
                        ),
                    },
                }));
            }
            Decision::Hold(fix, holds) if holds.as_slice() == [Hold::DryRun] => {
                if self.dry_run_said.as_ref() != Some(fix) {
                    self.dry_run_said = Some(fix.clone());
                    let what = format!(
                        "would set {} in {}",
                        fix.describe(),
                        object.as_deref().unwrap_or_default()
                    );
                    self.last = Some(LastFix {
                        result: FixResult::DryRun,
                        at: now,
                        what: what.clone(),
                        error: None,
                    });
                    effects.push(Effect::StandbyTargetCounted(FixResult::DryRun));
                    effects.push(Effect::Alert(alert(
                        AlertKind::DryRunStandbyTarget,
                        format!(
                            "DRY RUN: GoldDR's standby_cluster points at {}, not at {} ({}): {what}; nothing written, \
                             so GoldDR may not be replicating",
                            fix.from.describe(),
                            fix.to,
                            self.setup.names.describe()
                        ),
                    )));
                }
            }
            Decision::Hold(_, holds) => {
                // Replicas and an observing watchdog say nothing: /status and
                // the gauge show the mismatch.
                if changed && speaks && !holds.contains(&Hold::ModeObserve) {
                    effects.push(report());
                }
            }
            Decision::Nothing(Quiet::InSync) => {
                if was_mismatch && speaks {
                    effects.push(report());
                }
                self.dry_run_said = None;
                self.failure_said = None;
                self.fixed = None;
            }
            Decision::Nothing(_) => {}
        }
        self.decision = Some(decision);
    }

    pub fn written(&mut self, outcome: FixOutcome, now: SystemTime, effects: &mut Vec<Effect>) {
        self.writing = false;
        self.written_at = Some(now);
        let (result, request, error) = match outcome {
            FixOutcome::Fixed(r) => (FixResult::Fixed, r, None),
            FixOutcome::AlreadyRight(r) => (FixResult::AlreadyRight, r, None),
            FixOutcome::CalledOff(r, why) => (FixResult::CalledOff, r, Some(why)),
            FixOutcome::Failed(r, e) => (FixResult::Failed, r, Some(e)),
        };
        let object = self.setup.writes.as_ref().ok().cloned().unwrap_or_default();
        let what = format!("{} in {object}", request.fix.describe());
        effects.push(Effect::StandbyTargetCounted(result));
        match result {
            FixResult::Fixed => {
                self.failure_said = None;
                self.fixed = Some((request.fix.clone(), now));
                effects.push(Effect::Alert(alert(
                    AlertKind::StandbyTargetFixed,
                    format!(
                        "{} pointed GoldDR's standby_cluster at {} ({}): {what}",
                        request.audit.by,
                        request.fix.to,
                        self.setup.names.describe()
                    ),
                )));
            }
            FixResult::CalledOff => effects.push(Effect::Alert(alert(
                AlertKind::StandbyTargetCalledOff,
                format!(
                    "standby_cluster not re-pointed: {}; nothing written",
                    error.as_deref().unwrap_or_default()
                ),
            ))),
            FixResult::Failed => {
                if self.failure_said.as_ref() != Some(&request.fix) {
                    self.failure_said = Some(request.fix.clone());
                    effects.push(Effect::Alert(alert(
                        AlertKind::StandbyTargetFixFailed,
                        format!(
                            "could not point GoldDR's standby_cluster at {} ({what}): {}; GoldDR may not be \
                             replicating; tried again every interval",
                            request.fix.to,
                            error.as_deref().unwrap_or_default()
                        ),
                    )));
                }
            }
            FixResult::AlreadyRight | FixResult::DryRun => {}
        }
        self.last = Some(LastFix {
            result,
            at: now,
            what,
            error,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;
    use strum::IntoEnumIterator;

    use super::*;

    fn names() -> TsNames {
        TsNames {
            service: Some("patroni-master-gold".into()),
            namespace: "golddr".into(),
        }
    }

    fn service_target(host: &str, port: u16) -> Target {
        Target::Known {
            endpoint: Endpoint {
                host: host.into(),
                port,
            },
            source: Source::Service,
        }
    }

    fn config(host: Option<&str>, port: Option<Value>) -> ClusterConfig {
        ClusterConfig {
            standby: true,
            standby_address: StandbyAddress {
                host: host.map(str::to_string),
                port,
            },
            ..Default::default()
        }
    }

    const PROBED: &str = "patroni-master-gold.golddr.svc";

    #[test]
    fn every_name_of_the_service_is_the_same_tunnel() {
        let n = names();
        for host in [
            "patroni-master-gold",
            "patroni-master-gold.golddr",
            "patroni-master-gold.golddr.svc",
            "patroni-master-gold.golddr.svc.cluster.local",
            "patroni-master-gold.golddr.svc.cluster.local.",
            "patroni-master-gold.golddr.svc.",
            "Patroni-Master-Gold.GoldDR.svc.example.org",
            " patroni-master-gold ",
        ] {
            assert!(n.names(host, PROBED), "{host}");
        }
        for host in [
            "",
            "patroni-master-gold-old",
            "patroni-master-gold.other",
            "patroni-master-gold.golddr.svcx",
            "golddr.svc",
            "10.0.0.7",
            "gold.example.com",
        ] {
            assert!(!n.names(host, PROBED), "{host}");
        }
        // WATCHDOG_GOLD_HOST is a name of it too; without a Service, only it.
        assert!(n.names("10.1.2.3", "10.1.2.3"));
        let static_only = TsNames {
            service: None,
            namespace: "golddr".into(),
        };
        assert!(static_only.names("gold", "gold"));
        assert!(!static_only.names("patroni-master-gold", "gold"));
    }

    #[test]
    fn the_port_is_fixed_alone_when_the_host_is_an_alias() {
        let fix = compare(
            &names(),
            &service_target(PROBED, 31999),
            &config(Some("patroni-master-gold"), Some(Value::from(31234))),
        )
        .unwrap();
        assert_eq!((fix.host(), fix.port()), (None, Some(31999)));
        assert_eq!(fix.describe(), "standby_cluster.port from 31234 to 31999");
        assert_eq!(fix.keys(), "port");
    }

    #[test]
    fn a_host_that_names_something_else_is_rewritten_with_the_port() {
        for (host, port, want_port) in [
            (Some("patroni-master-gold-old"), Some(Value::from(31999)), None),
            (Some("10.0.0.7"), Some(Value::from(31234)), Some(31999)),
            (None, Some(Value::from(31234)), Some(31999)),
            (Some(""), Some(Value::from(31999)), None),
        ] {
            let fix = compare(&names(), &service_target(PROBED, 31999), &config(host, port)).unwrap();
            assert_eq!(fix.host(), Some(PROBED), "{host:?}");
            assert_eq!(fix.port(), want_port, "{host:?}");
        }
    }

    #[test]
    fn in_sync_whatever_the_spelling() {
        for port in [Value::from(31999), Value::from("31999"), Value::from(" 31999 ")] {
            assert_eq!(
                compare(
                    &names(),
                    &service_target(PROBED, 31999),
                    &config(Some("patroni-master-gold.golddr.svc.cluster.local"), Some(port)),
                ),
                Err(Quiet::InSync)
            );
        }
        // A port Patroni could not dial is fixed.
        for port in [
            None,
            Some(Value::from("x")),
            Some(Value::from(0)),
            Some(Value::Bool(true)),
        ] {
            let fix = compare(
                &names(),
                &service_target(PROBED, 31999),
                &config(Some("patroni-master-gold"), port.clone()),
            )
            .unwrap();
            assert_eq!(fix.port(), Some(31999), "{port:?}");
        }
    }

    #[test]
    fn nothing_is_compared_with_an_unknown_or_static_target_or_without_a_standby_address() {
        let c = config(Some("elsewhere"), Some(Value::from(1)));
        let unknown = Target::Unknown {
            reason: "Service gone".into(),
        };
        assert_eq!(compare(&names(), &unknown, &c), Err(Quiet::TargetUnknown));
        let fixed = Target::Known {
            endpoint: Endpoint {
                host: "gold".into(),
                port: 5432,
            },
            source: Source::Static,
        };
        assert_eq!(compare(&names(), &fixed, &c), Err(Quiet::StaticTarget));
        let t = service_target(PROBED, 31999);
        let promoted = ClusterConfig {
            standby: false,
            ..c.clone()
        };
        assert_eq!(compare(&names(), &t, &promoted), Err(Quiet::NotStandby));
        assert_eq!(compare(&names(), &t, &config(None, None)), Err(Quiet::NoAddress));
        assert_eq!(mismatch(&names(), &t, &config(None, None)), None);
        assert_eq!(
            mismatch(&names(), &t, &c).as_deref(),
            Some("standby_cluster host and port from elsewhere:1 to patroni-master-gold.golddr.svc:31999")
        );
    }

    fn roles() -> Vec<Role> {
        vec![
            Role::StandbyLeader,
            Role::Replica,
            Role::Primary,
            Role::Other("uninitialized".into()),
            Role::Unreachable("refused".into()),
        ]
    }

    fn disarms() -> Vec<Vec<DisarmSwitch>> {
        vec![
            vec![],
            vec![DisarmSwitch::DynamicConfigKey],
            vec![DisarmSwitch::ConfigmapAnnotation, DisarmSwitch::DynamicConfigKey],
        ]
    }

    /// Every combination of target, config, role, pause, disarm, mode,
    /// promotion and writer: a write only when every condition holds, and
    /// every hold named.
    #[test]
    fn every_combination_of_facts() {
        let targets = [
            Target::Unknown {
                reason: "no port".into(),
            },
            Target::Known {
                endpoint: Endpoint {
                    host: PROBED.into(),
                    port: 31999,
                },
                source: Source::Static,
            },
            service_target(PROBED, 31999),
            service_target(PROBED, 31234),
        ];
        let addresses = [
            (None, None),
            (Some("patroni-master-gold"), Some(Value::from(31234))),
            (
                Some("patroni-master-gold.golddr.svc.cluster.local"),
                Some(Value::from("31999")),
            ),
            (Some("elsewhere"), Some(Value::from(31999))),
            (Some("elsewhere"), None),
        ];
        let writers = [
            Ok("ConfigMap golddr/patroni-config".to_string()),
            Err(NO_PROMOTER),
            Err(PLAIN_STANDBY),
            Err(SWITCHED_OFF),
        ];
        let mut fixes = 0;
        let mut seen = std::collections::BTreeSet::new();
        for target in &targets {
            for (host, port) in &addresses {
                for standby in [true, false] {
                    for readable in [true, false] {
                        for role in roles() {
                            for paused in [false, true] {
                                for disarmed_by in disarms() {
                                    for mode in [Mode::Enforce, Mode::DryRun, Mode::Observe] {
                                        for promoting in [false, true] {
                                            for writes in &writers {
                                                let c = ClusterConfig {
                                                    standby,
                                                    paused,
                                                    disarmed_by: disarmed_by.clone(),
                                                    ..config(*host, port.clone())
                                                };
                                                let setup = Setup {
                                                    names: names(),
                                                    writes: writes.clone(),
                                                };
                                                let facts = Facts {
                                                    target,
                                                    config: if readable {
                                                        Ok(&c)
                                                    } else {
                                                        Err("not valid JSON")
                                                    },
                                                    role: &role,
                                                    mode,
                                                    promoting,
                                                };
                                                let d = decide(&setup, &facts);
                                                seen.insert(d.name());
                                                let compared = compare(&names(), target, &c);
                                                let expected_quiet = match (readable, &compared) {
                                                    (false, _) => Some(Quiet::ConfigUnreadable),
                                                    (true, Err(q)) => Some(*q),
                                                    (true, Ok(_)) => None,
                                                };
                                                if let Some(q) = expected_quiet {
                                                    assert_eq!(d, Decision::Nothing(q));
                                                    continue;
                                                }
                                                let fix = compared.unwrap();
                                                let mut want = vec![];
                                                match &role {
                                                    Role::StandbyLeader => {}
                                                    Role::Unreachable(_) => {
                                                        want.push(Hold::PatroniUnreachable)
                                                    }
                                                    r => want.push(Hold::NotStandbyLeader(r.as_str().into())),
                                                }
                                                match mode {
                                                    Mode::Enforce => {}
                                                    Mode::DryRun => want.push(Hold::DryRun),
                                                    Mode::Observe => want.push(Hold::ModeObserve),
                                                }
                                                if paused {
                                                    want.push(Hold::Paused);
                                                }
                                                if !disarmed_by.is_empty() {
                                                    want.push(Hold::Disarmed(disarmed_by.clone()));
                                                }
                                                if promoting {
                                                    want.push(Hold::Promoting);
                                                }
                                                if let Err(why) = writes {
                                                    want.push(Hold::NotWritable(why));
                                                }
                                                if want.is_empty() {
                                                    fixes += 1;
                                                    assert!(matches!(
                                                        target,
                                                        Target::Known {
                                                            source: Source::Service,
                                                            ..
                                                        }
                                                    ));
                                                    assert_eq!(role, Role::StandbyLeader);
                                                    assert!(standby && !paused && disarmed_by.is_empty());
                                                    assert_eq!(mode, Mode::Enforce);
                                                    assert!(writes.is_ok() && !promoting);
                                                    assert_eq!(d, Decision::Fix(fix));
                                                } else {
                                                    assert_eq!(d, Decision::Hold(fix, want));
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Two Service targets × the addresses that differ from each.
        assert_eq!(fixes, 6);
        for q in Quiet::iter() {
            assert!(seen.contains(q.name()), "{q:?} never decided");
        }
        for name in ["fix", "hold", "dry_run"] {
            assert!(seen.contains(name), "{name} never decided");
        }
    }

    fn observation(role: Role, config: ClusterConfig, started: SystemTime) -> Observation {
        Observation {
            started,
            role,
            config: Ok(config),
            disarm_switches: &[DisarmSwitch::DynamicConfigKey],
            wal: Err("not asked".into()),
            signals: vec![],
            witnesses: vec![],
        }
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn follower() -> Follower {
        Follower::new(Setup {
            names: names(),
            writes: Ok("ConfigMap golddr/patroni-config".into()),
        })
    }

    fn step(f: &mut Follower, o: &Observation, target: &Target, mode: Mode, now: u64) -> Vec<Effect> {
        let mut effects = vec![];
        f.observed(target, o, mode, false, true, "patroni-0", at(now), &mut effects);
        effects
    }

    fn requests(effects: &[Effect]) -> Vec<FixRequest> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::FixStandbyTarget(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
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

    fn reports(effects: &[Effect]) -> Vec<&'static str> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::StandbyTarget(r) => Some(r.decision.name()),
                _ => None,
            })
            .collect()
    }

    fn counted(effects: &[Effect]) -> Vec<FixResult> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::StandbyTargetCounted(r) => Some(*r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_write_at_a_time_and_none_on_an_observation_older_than_it() {
        let mut f = follower();
        let t = service_target(PROBED, 31999);
        let old = config(Some("patroni-master-gold"), Some(Value::from(31234)));
        let o = observation(Role::StandbyLeader, old.clone(), at(1));
        let e = step(&mut f, &o, &t, Mode::Enforce, 2);
        assert_eq!(reports(&e), ["fix"]);
        let request = requests(&e).pop().expect("a write");
        assert_eq!(request.audit.by, "patroni-0");
        assert!(
            request.audit.reason.contains(
                "standby_cluster.port from 31234 to 31999: the Transport Service golddr/patroni-master-gold"
            ),
            "{}",
            request.audit.reason
        );
        // While writing, nothing more.
        assert!(step(&mut f, &o, &t, Mode::Enforce, 3).is_empty());
        let mut e = vec![];
        f.written(FixOutcome::Fixed(request.clone()), at(4), &mut e);
        assert_eq!(counted(&e), [FixResult::Fixed]);
        assert_eq!(alerts(&e), [AlertKind::StandbyTargetFixed]);
        assert_eq!(f.last().map(|l| l.result), Some(FixResult::Fixed));
        // An observation that started before the write finished: ignored.
        let stale = observation(Role::StandbyLeader, old.clone(), at(3));
        assert!(step(&mut f, &stale, &t, Mode::Enforce, 5).is_empty());
        // One that started after but still shows the old address (Patroni's
        // GET /config lags its DCS): a stale read, not a reason to write
        // again, for a while.
        let lagging = observation(Role::StandbyLeader, old.clone(), at(5));
        assert!(step(&mut f, &lagging, &t, Mode::Enforce, 5).is_empty());
        let much_later = 4 + SETTLE.as_secs() + 1;
        let reverted = observation(Role::StandbyLeader, old, at(much_later));
        let e = step(&mut f, &reverted, &t, Mode::Enforce, much_later);
        let again = requests(&e)
            .pop()
            .expect("still wrong after SETTLE: written again");
        let mut e = vec![];
        f.written(FixOutcome::AlreadyRight(again), at(much_later + 1), &mut e);
        assert_eq!(counted(&e), [FixResult::AlreadyRight]);
        assert!(alerts(&e).is_empty(), "nothing written, nothing said");
        // A fresh one sees it right: said once, then quiet.
        let right = config(Some("patroni-master-gold"), Some(Value::from(31999)));
        let o = observation(Role::StandbyLeader, right, at(much_later + 2));
        assert_eq!(
            reports(&step(&mut f, &o, &t, Mode::Enforce, much_later + 3)),
            ["in_sync"]
        );
        assert!(step(&mut f, &o, &t, Mode::Enforce, much_later + 4).is_empty());
    }

    #[test]
    fn a_failure_is_said_once_and_tried_again() {
        let mut f = follower();
        let t = service_target(PROBED, 31999);
        let old = config(Some("patroni-master-gold"), Some(Value::from(31234)));
        let mut said = 0;
        for round in 0..3 {
            let o = observation(Role::StandbyLeader, old.clone(), at(10 * round + 1));
            let e = step(&mut f, &o, &t, Mode::Enforce, 10 * round + 2);
            let request = requests(&e).pop().expect("tried again");
            let mut e = vec![];
            f.written(
                FixOutcome::Failed(request, "HTTP 403".into()),
                at(10 * round + 3),
                &mut e,
            );
            assert_eq!(counted(&e), [FixResult::Failed]);
            said += alerts(&e)
                .iter()
                .filter(|k| **k == AlertKind::StandbyTargetFixFailed)
                .count();
        }
        assert_eq!(said, 1);
        assert_eq!(f.last().and_then(|l| l.error.as_deref()), Some("HTTP 403"));
        assert_eq!(
            AlertKind::StandbyTargetFixFailed.severity(),
            crate::decide::state::Severity::Warning
        );
    }

    #[test]
    fn dry_run_says_what_it_would_write_once_and_observe_says_nothing() {
        let mut f = follower();
        let t = service_target(PROBED, 31999);
        let old = config(Some("patroni-master-gold"), Some(Value::from(31234)));
        let mut all = vec![];
        for s in 0..3 {
            let o = observation(Role::StandbyLeader, old.clone(), at(2 * s + 1));
            all.extend(step(&mut f, &o, &t, Mode::DryRun, 2 * s + 2));
        }
        assert!(requests(&all).is_empty());
        assert_eq!(alerts(&all), [AlertKind::DryRunStandbyTarget]);
        assert_eq!(counted(&all), [FixResult::DryRun]);
        assert_eq!(f.last().map(|l| l.result), Some(FixResult::DryRun));

        let mut f = follower();
        let o = observation(Role::StandbyLeader, old, at(1));
        let e = step(&mut f, &o, &t, Mode::Observe, 2);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(f.decision().map(Decision::name), Some("hold"));
    }

    #[test]
    fn a_replica_holds_silently_and_the_leader_says_why_once() {
        let t = service_target(PROBED, 31999);
        let old = config(Some("patroni-master-gold"), Some(Value::from(31234)));
        let mut replica = follower();
        let o = observation(Role::Replica, old.clone(), at(1));
        let mut e = vec![];
        replica.observed(&t, &o, Mode::Enforce, false, false, "patroni-1", at(2), &mut e);
        assert!(e.is_empty());
        assert!(
            matches!(replica.decision(), Some(Decision::Hold(_, h)) if h == &[Hold::NotStandbyLeader("replica".into())])
        );

        let mut leader = follower();
        let paused = ClusterConfig { paused: true, ..old };
        let o = observation(Role::StandbyLeader, paused, at(1));
        assert_eq!(reports(&step(&mut leader, &o, &t, Mode::Enforce, 2)), ["hold"]);
        assert!(
            step(&mut leader, &o, &t, Mode::Enforce, 3).is_empty(),
            "said once"
        );
    }

    /// In the loop: a mismatch asks for a fix on the first observation, a
    /// promotion decided on the same observation wins, and after it nothing
    /// is fixed again.
    #[test]
    fn the_loop_fixes_on_an_observation_but_never_beside_a_promotion() {
        use std::time::Instant;

        use crate::decide::detector::Thresholds;
        use crate::decide::guards::Limits;
        use crate::decide::state::{Event, LoopState, Policy, Written};
        use crate::observe::cluster::{Wal, WalView};
        use crate::observe::probe::{DownReason, Outcome, ProbeReport};

        let policy = Policy {
            thresholds: Thresholds::new(1, 1, 2).expect("thresholds"),
            interval: Duration::from_secs(1),
            limits: Limits {
                mode: Mode::Enforce,
                wal_receiver_fresh: Duration::from_secs(60),
                max_data_age: Duration::from_secs(300),
                allow_stale_promotion: false,
                quorum: 0,
                witness_max_age: Duration::from_secs(15),
            },
            identity: "golddr-0".into(),
            promotes: Some("ConfigMap golddr/patroni-config".into()),
        };
        let t = service_target(PROBED, 31999);
        let setup = Setup {
            names: names(),
            writes: Ok("ConfigMap golddr/patroni-config".into()),
        };
        let mut l = LoopState::new(policy, t.clone()).with_standby_target(setup);
        let mut clock = 0;
        let mut send = |l: &mut LoopState, e: Event| {
            clock += 1;
            l.handle(e, at(clock), Instant::now())
        };
        let old = config(Some("patroni-master-gold"), Some(Value::from(31234)));
        let fresh = |started: u64| Observation {
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
            ..observation(Role::StandbyLeader, old.clone(), at(started))
        };
        send(&mut l, Event::Started);
        let e = send(&mut l, Event::Observed(fresh(1)));
        let request = requests(&e).pop().expect("a fix");
        assert_eq!(
            l.standby_target_mismatch().as_deref(),
            Some("standby_cluster.port from 31234 to 31999")
        );
        let e = send(
            &mut l,
            Event::StandbyTargetWritten(FixOutcome::Failed(request, "HTTP 503".into())),
        );
        assert_eq!(alerts(&e), [AlertKind::StandbyTargetFixFailed]);

        // Gold is lost: the next observation promotes and fixes nothing.
        let down = |l: &mut LoopState, send: &mut dyn FnMut(&mut LoopState, Event) -> Vec<Effect>| {
            send(
                l,
                Event::Probe(ProbeReport {
                    outcome: Outcome::Down(DownReason::Refused),
                    duration: Duration::from_millis(1),
                    error: Some("connection refused".into()),
                    wal: None,
                }),
            )
        };
        down(&mut l, &mut send);
        down(&mut l, &mut send);
        let e = send(&mut l, Event::Observed(fresh(100)));
        assert!(e.iter().any(|e| matches!(e, Effect::Promote(_))), "{e:?}");
        assert!(requests(&e).is_empty(), "{e:?}");
        assert!(matches!(
            l.standby_target().decision(),
            Some(Decision::Hold(_, h)) if h == &[Hold::Promoting]
        ));
        let audit = e
            .into_iter()
            .find_map(|e| match e {
                Effect::Promote(a) => Some(a),
                _ => None,
            })
            .expect("promote");
        send(&mut l, Event::Written(Written::Promoted(audit)));
        // Latched: even an observation still showing standby_cluster.
        assert!(requests(&send(&mut l, Event::Observed(fresh(200)))).is_empty());
    }
}

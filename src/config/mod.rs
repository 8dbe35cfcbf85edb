//! Every setting comes from `WATCHDOG_*` environment variables and is validated
//! here, before the process touches the network. Each error names the variable.
//!
//! One submodule per concern; [`vars`] holds the one list of variables. A
//! command loads only what it needs: `Config` (with Gold) for the commands
//! that probe Gold, `Config<NoGold>` for those that do not.

mod fence;
mod gold;
mod guards;
mod local_pg;
mod parse;
mod probe;
mod promoter;
mod quorum;
mod reporting;
pub mod vars;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

pub use fence::{Fencing, PAIRING_MARGIN};
pub use gold::{GoldAddress, GoldConcern, GoldConn, NoGold, ServicePort, SslMode};
pub use guards::Mode;
pub use local_pg::LocalPgConn;
pub use parse::Password;
pub use promoter::{BasicAuth, PatroniApi, PromoterKind};
pub use quorum::Quorum;
pub use reporting::{LogFormat, WebhookUrl};

use crate::decide::detector::Thresholds;
use crate::observe::signal::Signal;

pub const ENV_PREFIX: &str = "WATCHDOG_";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: &'static str },
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var} and {other} conflict: {reason}")]
    Conflict {
        var: String,
        other: String,
        reason: &'static str,
    },
    #[error("{var}: cannot read {path}: {reason}")]
    File {
        var: String,
        path: String,
        reason: String,
    },
    #[error("unknown setting {var}: {hint}")]
    Unknown { var: String, hint: String },
    #[error("{var} was removed: {replacement}")]
    Removed { var: String, replacement: &'static str },
    #[error("{var} is a setting of `{role}`, not of `{command}`: {hint}")]
    WrongRole {
        var: String,
        role: &'static str,
        command: &'static str,
        hint: &'static str,
    },
}

/// The settings. `G` is what the command needs of Gold: [`GoldConn`] to
/// probe it, [`NoGold`] for `promote --force` and `failback`.
#[derive(Debug, Clone, Serialize)]
pub struct Config<G = GoldConn> {
    pub gold: G,
    #[serde(with = "humantime_serde_compat")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub probe_timeout: Duration,
    pub thresholds: Thresholds,
    pub listen_addr: SocketAddr,
    pub log_format: LogFormat,
    /// `None`: the pod's own namespace (service account), or the kubeconfig's.
    pub namespace: Option<String>,
    pub promoter: PromoterKind,
    pub patroni_configmap: String,
    pub patroni: PatroniApi,
    /// `WATCHDOG_FOLLOW_TS`: keep `standby_cluster` pointed at the
    /// Transport Service the target is discovered from.
    pub follow_ts: bool,
    /// Who acts, in Events and audit annotations: the pod name.
    pub identity: String,
    pub mode: Mode,
    pub local_pg: LocalPgConn,
    /// A streaming WAL receiver that heard from Gold this recently proves
    /// Gold alive.
    #[serde(with = "humantime_serde_compat")]
    pub wal_receiver_fresh: Duration,
    /// Refuse to promote data older than this (time since WAL last arrived).
    #[serde(with = "humantime_serde_compat")]
    pub max_data_age: Duration,
    pub allow_stale_promotion: bool,
    /// The witnesses, the quorum, Gold's signals.
    pub quorum: Quorum,
    /// The guard at Gold's `WATCHDOG_FENCE_AFTER`, when one is paired.
    #[serde(with = "humantime_serde_opt")]
    pub guard_fence_after: Option<Duration>,
    pub webhook_url: Option<WebhookUrl>,
}

impl<G: GoldConcern> Config<G> {
    /// Whether the process needs a Kubernetes client.
    pub fn uses_kubernetes(&self) -> bool {
        self.gold.uses_kubernetes() || self.promoter == PromoterKind::Configmap
    }

    /// Whether the local Patroni is consulted (its role decides who acts).
    pub fn uses_patroni(&self) -> bool {
        matches!(self.promoter, PromoterKind::Configmap | PromoterKind::PatroniApi)
    }

    /// Reads the process environment.
    pub fn load_env() -> Result<Self, ConfigError> {
        Self::load(std::env::vars())
    }

    /// Reads any set of variables; those with the `WATCHDOG_` prefix are
    /// settings, `KUBERNETES_SERVICE_HOST` says whether we run in a pod and
    /// `HOSTNAME` names this pod.
    pub fn load<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let Env {
            mut raw,
            in_cluster,
            identity,
        } = Env::read(vars)?;
        let gold = G::load(&mut raw)?;
        let namespace = namespace(&mut raw)?;
        let promotion = promoter::load(&mut raw, in_cluster)?;
        let local_pg = local_pg::load(&mut raw)?;
        let quorum = quorum::load(&mut raw)?;
        let mode_defaults = if quorum.single_observer() {
            defaults::SINGLE_OBSERVER
        } else {
            defaults::QUORUM
        };
        let timing = probe::load(&mut raw, &mode_defaults)?;
        let guards = guards::load(&mut raw, &timing, &mode_defaults)?;
        let guard_fence_after = fence::pairing(&mut raw, &timing)?;
        let reporting = reporting::load(&mut raw)?;
        Ok(Config {
            gold,
            probe_interval: timing.interval,
            probe_timeout: timing.timeout,
            thresholds: timing.thresholds,
            listen_addr: reporting.listen_addr,
            log_format: reporting.log_format,
            namespace,
            promoter: promotion.promoter,
            patroni_configmap: promotion.patroni_configmap,
            patroni: promotion.patroni,
            follow_ts: promotion.follow_ts,
            identity,
            mode: guards.mode,
            local_pg,
            wal_receiver_fresh: guards.wal_receiver_fresh,
            max_data_age: guards.max_data_age,
            allow_stale_promotion: guards.allow_stale_promotion,
            quorum,
            guard_fence_after,
            webhook_url: reporting.webhook_url,
        })
    }
}

impl Config {
    /// The settings of a command that probes Gold, from the process
    /// environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::load_env()
    }

    /// The settings of a command that probes Gold, from `vars`.
    pub fn from_vars<I>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        Self::load(vars)
    }
}

/// `WATCHDOG_NAMESPACE`: where the Transport Service (and the ConfigMap) are.
fn namespace(raw: &mut vars::Raw) -> Result<Option<String>, ConfigError> {
    let namespace = parse::non_empty("NAMESPACE", raw.namespace.take())?;
    if let Some(ns) = &namespace {
        parse::k8s_name("NAMESPACE", ns)?;
    }
    Ok(namespace)
}

/// The process environment, split: our settings, and what we read of the
/// rest.
struct Env {
    raw: vars::Raw,
    /// `KUBERNETES_SERVICE_HOST` is set: we run in a pod.
    in_cluster: bool,
    /// `HOSTNAME`: who acts, in Events, audit annotations and observations.
    identity: String,
}

impl Env {
    fn read<I>(vars: I) -> Result<Env, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut in_cluster = false;
        let mut identity = None;
        let mut vars: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, v)| {
                match k.as_str() {
                    "KUBERNETES_SERVICE_HOST" => in_cluster = !v.is_empty(),
                    "HOSTNAME" if !v.is_empty() => identity = Some(v.clone()),
                    _ => {}
                }
                k.starts_with(ENV_PREFIX)
            })
            .collect();
        let raw = vars::Raw::take_from(&mut vars);
        for (name, replacement) in vars::REMOVED {
            let removed = parse::var(name);
            if vars.contains_key(&removed) {
                return Err(ConfigError::Removed {
                    var: removed,
                    replacement,
                });
            }
        }
        // A typo such as WATCHDOG_PROMOTE_AFTR must not silently leave the
        // default in force on a production promoter.
        if let Some(unknown) = vars.into_keys().min() {
            return Err(ConfigError::Unknown {
                var: unknown,
                hint: format!(
                    "known settings are {}",
                    vars::all().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        Ok(Env {
            raw,
            in_cluster,
            identity: identity.unwrap_or_else(|| "patroni-dr-watchdog".to_string()),
        })
    }
}

/// The settings of the `witness` command: Gold's PostgreSQL over the
/// witness's own route, Gold's site heartbeat, the timing, and where to
/// serve. Nothing that writes.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessConfig {
    pub gold: GoldConn,
    pub heartbeat: Vec<Signal>,
    #[serde(with = "humantime_serde_compat")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub probe_timeout: Duration,
    pub thresholds: Thresholds,
    pub listen_addr: SocketAddr,
    pub log_format: LogFormat,
    /// Served in every observation: the pod or host name.
    pub identity: String,
}

impl WitnessConfig {
    pub fn load_env() -> Result<Self, ConfigError> {
        Self::load(std::env::vars())
    }

    pub fn load<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let Env {
            mut raw, identity, ..
        } = Env::read(vars)?;
        let gold = GoldConn::load(&mut raw)?;
        if gold.address.service().is_some() {
            return Err(wrong_role(
                "TS_SERVICE",
                "the witness reaches Gold over its own route, not through GoldDR's Transport Service: \
                 set WATCHDOG_GOLD_HOST and WATCHDOG_GOLD_PORT",
            ));
        }
        let heartbeat = quorum::heartbeat(&mut raw)?;
        let timing = probe::load(&mut raw, &defaults::QUORUM)?;
        let reporting = reporting::load(&mut raw)?;
        const OBSERVES_ONLY: &str =
            "a witness only observes Gold and serves what it sees; it never writes, promotes or alerts";
        if reporting.webhook_url.is_some() {
            return Err(wrong_role("WEBHOOK_URL", OBSERVES_ONLY));
        }
        if let Some(var) = raw.left().into_iter().next() {
            return Err(ConfigError::WrongRole {
                var,
                role: "run",
                command: "witness",
                hint: OBSERVES_ONLY,
            });
        }
        Ok(WitnessConfig {
            gold,
            heartbeat,
            probe_interval: timing.interval,
            probe_timeout: timing.timeout,
            thresholds: timing.thresholds,
            listen_addr: reporting.listen_addr,
            log_format: reporting.log_format,
            identity,
        })
    }
}

fn wrong_role(name: &str, hint: &'static str) -> ConfigError {
    ConfigError::WrongRole {
        var: parse::var(name),
        role: "run",
        command: "witness",
        hint,
    }
}

/// The settings of the `guard` command, beside Gold's Patroni: GoldDR over
/// the reverse Transport Service, the witnesses, how and when to fence Gold
/// (through the local Patroni's REST API), and where to serve.
#[derive(Debug, Clone, Serialize)]
pub struct GuardConfig {
    pub golddr: GoldConn,
    pub patroni: PatroniApi,
    pub quorum: Quorum,
    pub fencing: Fencing,
    pub mode: Mode,
    #[serde(with = "humantime_serde_compat")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub probe_timeout: Duration,
    pub thresholds: Thresholds,
    pub listen_addr: SocketAddr,
    pub log_format: LogFormat,
    pub webhook_url: Option<WebhookUrl>,
    /// Who fenced, in the audit trail: the pod name.
    pub identity: String,
    #[serde(skip)]
    pub in_cluster: bool,
    /// `None`: the pod's own namespace (service account), or the kubeconfig's.
    pub namespace: Option<String>,
}

impl GuardConfig {
    pub fn load_env() -> Result<Self, ConfigError> {
        Self::load(std::env::vars())
    }

    pub fn load<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let Env {
            mut raw,
            identity,
            in_cluster,
        } = Env::read(vars)?;
        let Some(golddr) = gold::load_golddr(&mut raw)? else {
            return Err(ConfigError::Missing {
                var: parse::var("GOLDDR_HOST"),
                hint: "GoldDR's PostgreSQL as seen from Gold (the reverse Transport Service's address)",
            });
        };
        let namespace = namespace(&mut raw)?;
        let patroni = promoter::patroni_api(&mut raw)?;
        let quorum = quorum::load(&mut raw)?;
        let fencing = fence::load(&mut raw)?;
        let mode = guards::mode(&mut raw)?;
        let timing = probe::load(&mut raw, &defaults::GUARD)?;
        let reporting = reporting::load(&mut raw)?;
        if let Some(var) = raw.left().into_iter().next() {
            return Err(ConfigError::WrongRole {
                var,
                role: "run",
                command: "guard",
                hint: "the guard probes GoldDR and fences Gold through its own Patroni's REST API",
            });
        }
        Ok(GuardConfig {
            golddr,
            patroni,
            quorum,
            fencing,
            mode,
            probe_interval: timing.interval,
            probe_timeout: timing.timeout,
            thresholds: timing.thresholds,
            listen_addr: reporting.listen_addr,
            log_format: reporting.log_format,
            webhook_url: reporting.webhook_url,
            identity,
            in_cluster,
            namespace,
        })
    }

    /// A Kubernetes client is needed to follow the reverse Transport
    /// Service, and wanted in a pod, for Events.
    pub fn uses_kubernetes(&self) -> bool {
        self.golddr.address.service().is_some() || self.in_cluster
    }
}

mod humantime_serde_opt {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

pub mod defaults {
    use std::time::Duration;

    use super::probe::TimingDefaults;

    pub const GOLD_PORT: u16 = 5432;
    pub const GOLD_USER: &str = "postgres";
    pub const GOLD_DATABASE: &str = "postgres";
    /// Alone, this watchdog cannot tell a tunnel outage or a Patroni
    /// failover inside Gold from the loss of Gold's site, so it waits them
    /// out. fall: 3 × 10 s, longer than one F5 tunnel monitor cycle (10 s +
    /// 10 s timeout). promote_after: 18 × 10 s = 3 min, twice the worst
    /// Gold-internal Patroni failover (ttl 30 s + loop_wait 10 s + restart)
    /// plus a tunnel re-route, so neither is ever taken for a site loss.
    pub const SINGLE_OBSERVER: TimingDefaults = TimingDefaults {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        fall: 3,
        rise: 2,
        promote_after: 18,
        wal_receiver_fresh: Duration::from_secs(60),
    };
    /// With witnesses that check Gold's site heartbeat, a failover inside
    /// Gold is a site that answers, not a lost one, and a tunnel outage is a
    /// witness that still sees Gold: the bound only has to ride out a short
    /// blip on two routes at once. 4 × 5 s: Gold lost 15-23 s after it
    /// died (the README's figures), the witness alike, and GoldDR writable
    /// well within 45 s.
    pub const QUORUM: TimingDefaults = TimingDefaults {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(3),
        fall: 2,
        rise: 2,
        promote_after: 4,
        wal_receiver_fresh: Duration::from_secs(15),
    };
    /// The guard at Gold probes GoldDR every 2 s and fences 5 s into an
    /// isolation: with its detection (≤ 3 s), the write and Patroni's
    /// demotion, Gold is read-only well before GoldDR may promote with the
    /// quorum defaults (15 s at the earliest; see `PAIRING_MARGIN`).
    pub const GUARD: TimingDefaults = TimingDefaults {
        interval: Duration::from_secs(2),
        timeout: Duration::from_secs(1),
        fall: 2,
        rise: 2,
        promote_after: 4,
        wal_receiver_fresh: Duration::from_secs(15),
    };
    pub const FENCE_AFTER: Duration = Duration::from_secs(5);
    /// A witness serves its observation every interval (5 s by default); an
    /// older one may no longer be true.
    pub const WITNESS_MAX_AGE: Duration = Duration::from_secs(15);
    pub const LISTEN_ADDR: &str = "0.0.0.0:9808";
    pub const PATRONI_CONFIGMAP: &str = "patroni-config";
    pub const PATRONI_URL: &str = "http://127.0.0.1:8008";
    pub const MAX_DATA_AGE: Duration = Duration::from_secs(300);
}

#[cfg(test)]
mod tests;

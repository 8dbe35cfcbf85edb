//! Every setting comes from `WATCHDOG_*` environment variables and is validated
//! here, before the process touches the network. Each error names the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decide::detector::Thresholds;
use crate::observe::witness::{self, Witness};

pub const ENV_PREFIX: &str = "WATCHDOG_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
}

/// The raw environment, every value a string so that each parse error can
/// name its variable (envy's own errors do not say which value was bad).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gold_host: Option<String>,
    gold_port: Option<String>,
    gold_user: Option<String>,
    gold_password: Option<String>,
    gold_password_file: Option<String>,
    gold_database: Option<String>,
    gold_sslmode: Option<String>,
    gold_sslrootcert: Option<String>,
    probe_interval: Option<String>,
    probe_timeout: Option<String>,
    fall: Option<String>,
    rise: Option<String>,
    promote_after: Option<String>,
    listen_addr: Option<String>,
    log_format: Option<String>,
    namespace: Option<String>,
    ts_service: Option<String>,
    ts_port_name: Option<String>,
    promoter: Option<String>,
    patroni_configmap: Option<String>,
    patroni_url: Option<String>,
    mode: Option<String>,
    local_pg_host: Option<String>,
    local_pg_port: Option<String>,
    local_pg_user: Option<String>,
    local_pg_password: Option<String>,
    local_pg_password_file: Option<String>,
    local_pg_database: Option<String>,
    wal_receiver_fresh: Option<String>,
    max_data_age: Option<String>,
    allow_stale_promotion: Option<String>,
    witnesses: Option<String>,
    witness_unreachable: Option<String>,
    webhook_url: Option<String>,
}

const KNOWN: &[&str] = &[
    "GOLD_HOST",
    "GOLD_PORT",
    "GOLD_USER",
    "GOLD_PASSWORD",
    "GOLD_PASSWORD_FILE",
    "GOLD_DATABASE",
    "GOLD_SSLMODE",
    "GOLD_SSLROOTCERT",
    "PROBE_INTERVAL",
    "PROBE_TIMEOUT",
    "FALL",
    "RISE",
    "PROMOTE_AFTER",
    "LISTEN_ADDR",
    "LOG_FORMAT",
    "NAMESPACE",
    "TS_SERVICE",
    "TS_PORT_NAME",
    "PROMOTER",
    "PATRONI_CONFIGMAP",
    "PATRONI_URL",
    "MODE",
    "LOCAL_PG_HOST",
    "LOCAL_PG_PORT",
    "LOCAL_PG_USER",
    "LOCAL_PG_PASSWORD",
    "LOCAL_PG_PASSWORD_FILE",
    "LOCAL_PG_DATABASE",
    "WAL_RECEIVER_FRESH",
    "MAX_DATA_AGE",
    "ALLOW_STALE_PROMOTION",
    "WITNESSES",
    "WITNESS_UNREACHABLE",
    "WEBHOOK_URL",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret that cannot leak through `Debug`, `Display` or serialisation.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Password {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// How the probe logs in to Gold. The host/port live in the target.
#[derive(Debug, Clone, Serialize)]
pub struct GoldConn {
    pub user: String,
    pub password: Option<Password>,
    pub password_file: Option<PathBuf>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

/// Where Gold is: a fixed address, or the Transport Service to watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GoldTarget {
    /// `None` with a service: the Service's cluster DNS name.
    pub host: Option<String>,
    /// `None`: discovered from the service, live.
    pub port: Option<u16>,
    pub service: Option<String>,
    pub port_name: Option<String>,
}

impl GoldTarget {
    pub fn discovers_port(&self) -> bool {
        self.port.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromoterKind {
    /// Observe only: nothing can be promoted.
    None,
    /// Patch `standby_cluster` out of Patroni's `<scope>-config` ConfigMap.
    Configmap,
    /// `PATCH /config` `{"standby_cluster": null}` on the local Patroni
    /// (any DCS).
    PatroniApi,
    /// `SELECT pg_promote()` on a plain streaming standby (no Patroni).
    PgPromote,
}

impl PromoterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromoterKind::None => "none",
            PromoterKind::Configmap => "configmap",
            PromoterKind::PatroniApi => "patroni-api",
            PromoterKind::PgPromote => "pg-promote",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Promote when every guard agrees.
    Enforce,
    /// Everything up to the write, then report what would have been done.
    DryRun,
    /// Probe and report; never decide.
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
            Mode::Observe => "observe",
        }
    }
}

/// The local (GoldDR) PostgreSQL, for the WAL receiver and stale-data guards
/// and for `pg-promote`.
#[derive(Debug, Clone, Serialize)]
pub struct LocalPgConn {
    /// A host name, an IP, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    pub database: String,
}

/// A webhook URL often carries a token: only its scheme and host are shown.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
    fn redacted(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(u) => format!("{}://{}/<redacted>", u.scheme(), u.host_str().unwrap_or("?")),
            Err(_) => "<redacted>".into(),
        }
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub target: GoldTarget,
    pub gold: GoldConn,
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
    pub patroni_url: String,
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
    pub witnesses: Vec<Witness>,
    /// Whether a witness that cannot be reached holds a promotion back.
    pub witness_unreachable_blocks: bool,
    pub webhook_url: Option<WebhookUrl>,
}

impl Config {
    /// Whether the process needs a Kubernetes client.
    pub fn uses_kubernetes(&self) -> bool {
        self.target.service.is_some() || self.promoter == PromoterKind::Configmap
    }

    /// Whether the local Patroni is consulted (its role decides who acts).
    pub fn uses_patroni(&self) -> bool {
        matches!(self.promoter, PromoterKind::Configmap | PromoterKind::PatroniApi)
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

    pub const GOLD_PORT: u16 = 5432;
    pub const GOLD_USER: &str = "postgres";
    pub const GOLD_DATABASE: &str = "postgres";
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    /// 3 × 10 s: longer than one F5 tunnel monitor cycle (10 s + 10 s timeout).
    pub const FALL: u32 = 3;
    pub const RISE: u32 = 2;
    /// 18 × 10 s = 3 min: twice the worst Gold-internal Patroni failover
    /// (ttl 30 s + loop_wait 10 s + restart) plus a tunnel re-route, so
    /// neither is ever taken for a site loss.
    pub const PROMOTE_AFTER: u32 = 18;
    pub const LISTEN_ADDR: &str = "0.0.0.0:9808";
    pub const PATRONI_CONFIGMAP: &str = "patroni-config";
    pub const PATRONI_URL: &str = "http://127.0.0.1:8008";
    /// Longer than the 30 s a walsender may stay silent on an idle link
    /// (wal_sender_timeout / 2), shorter than the time to declare Gold lost.
    pub const WAL_RECEIVER_FRESH: Duration = Duration::from_secs(60);
    pub const MAX_DATA_AGE: Duration = Duration::from_secs(300);
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads any set of variables; those with the `WATCHDOG_` prefix are
    /// settings, `KUBERNETES_SERVICE_HOST` says whether we run in a pod and
    /// `HOSTNAME` names this pod.
    pub fn from_vars<I>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut in_cluster = false;
        let mut identity = None;
        let vars: HashMap<String, String> = vars
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
        // A typo such as WATCHDOG_PROMOTE_AFTR must not silently leave the
        // default in force on a production promoter.
        for key in vars.keys() {
            let short = &key[ENV_PREFIX.len()..];
            if !KNOWN.contains(&short) {
                return Err(ConfigError::Unknown {
                    var: key.clone(),
                    hint: format!(
                        "known settings are {}",
                        KNOWN
                            .iter()
                            .map(|k| format!("{ENV_PREFIX}{k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let raw: Raw = envy::prefixed(ENV_PREFIX)
            .from_iter(vars)
            .map_err(|e| ConfigError::Unknown {
                var: ENV_PREFIX.to_string(),
                hint: e.to_string(),
            })?;
        let mut config = raw.validate(in_cluster)?;
        config.identity = identity.unwrap_or_else(|| "patroni-dr-watchdog".to_string());
        Ok(config)
    }
}

fn var(name: &str) -> String {
    format!("{ENV_PREFIX}{name}")
}

fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var(name),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn non_empty(name: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(name, &v, "must not be empty")),
        other => Ok(other),
    }
}

fn parse_duration(name: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| invalid(name, &v, format!("{e}; use a duration such as 10s, 1500ms or 1m")))?;
    if d.is_zero() {
        return Err(invalid(name, &v, "must be greater than zero"));
    }
    Ok(d)
}

fn parse_count(name: &str, value: Option<String>, default: u32) -> Result<u32, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        Ok(_) => Err(invalid(name, &v, "must be a whole number of at least 1")),
        Err(_) => Err(invalid(name, &v, "must be a whole number of at least 1")),
    }
}

fn parse_port(name: &str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(name, value, "must be a TCP port between 1 and 65535")),
    }
}

/// A Kubernetes object name (RFC 1123 label): the API would refuse anything
/// else, so say so now, naming the variable.
fn check_k8s_name(name: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            value,
            "must be a Kubernetes object name: lower-case letters, digits, '-' and '.'",
        ))
    }
}

/// `<prefix>_PASSWORD` or `<prefix>_PASSWORD_FILE`, at most one.
fn password(
    prefix: &str,
    value: Option<String>,
    file: Option<&str>,
) -> Result<Option<Password>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            var: var(&format!("{prefix}_PASSWORD")),
            other: var(&format!("{prefix}_PASSWORD_FILE")),
            reason: "set only one of them",
        }),
        (Some(p), None) => Ok(Some(Password(p))),
        (None, Some(path)) => Ok(Some(read_password_file(
            &format!("{prefix}_PASSWORD_FILE"),
            path,
        )?)),
        (None, None) => Ok(None),
    }
}

fn parse_bool(name: &str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(
            name,
            value.as_deref().unwrap_or(""),
            "must be true or false",
        )),
    }
}

fn read_password_file(name: &str, path: &str) -> Result<Password, ConfigError> {
    let content = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        var: var(name),
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    // Secrets mounted from Kubernetes often end with a newline nobody typed.
    let trimmed = content.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ConfigError::File {
            var: var(name),
            path: path.to_string(),
            reason: "the file is empty".to_string(),
        });
    }
    Ok(Password(trimmed.to_string()))
}

impl Raw {
    fn validate(self, in_cluster: bool) -> Result<Config, ConfigError> {
        let service = non_empty("TS_SERVICE", self.ts_service)?;
        let port_name = non_empty("TS_PORT_NAME", self.ts_port_name)?;
        let host = non_empty("GOLD_HOST", self.gold_host)?;
        let port = self.gold_port.map(|v| parse_port("GOLD_PORT", &v)).transpose()?;
        let target = match (&service, host, port) {
            (None, None, _) => {
                return Err(ConfigError::Missing {
                    var: var("GOLD_HOST"),
                    hint: "Gold's PostgreSQL as seen from this site; or set WATCHDOG_TS_SERVICE to find it through the Transport Service",
                });
            }
            (None, host, port) => GoldTarget {
                host,
                port: Some(port.unwrap_or(defaults::GOLD_PORT)),
                service: None,
                port_name: None,
            },
            (Some(_), host, port) => GoldTarget {
                host,
                port,
                service: service.clone(),
                port_name: port_name.clone(),
            },
        };
        if let Some(name) = &port_name {
            if service.is_none() || target.port.is_some() {
                return Err(ConfigError::Conflict {
                    var: var("TS_PORT_NAME"),
                    other: var("GOLD_PORT"),
                    reason: "a port name picks a port of WATCHDOG_TS_SERVICE; it means nothing with a static WATCHDOG_GOLD_PORT or without a service",
                });
            }
            if name.parse::<u16>().is_ok() {
                return Err(invalid(
                    "TS_PORT_NAME",
                    name,
                    "must be the port's name, not its number",
                ));
            }
        }
        if let Some(svc) = &service {
            check_k8s_name("TS_SERVICE", svc)?;
        }
        let namespace = non_empty("NAMESPACE", self.namespace)?;
        if let Some(ns) = &namespace {
            check_k8s_name("NAMESPACE", ns)?;
        }
        let promoter = match self.promoter.as_deref().map(str::trim) {
            None if in_cluster => PromoterKind::Configmap,
            None | Some("none") => PromoterKind::None,
            Some("configmap") => PromoterKind::Configmap,
            Some("patroni-api") => PromoterKind::PatroniApi,
            Some("pg-promote") => PromoterKind::PgPromote,
            Some(other) => {
                return Err(invalid(
                    "PROMOTER",
                    other,
                    "must be configmap, patroni-api, pg-promote or none",
                ));
            }
        };
        let mode = match self.mode.as_deref().map(str::trim) {
            None | Some("enforce") => Mode::Enforce,
            Some("dry-run") => Mode::DryRun,
            Some("observe") => Mode::Observe,
            Some(other) => return Err(invalid("MODE", other, "must be enforce, dry-run or observe")),
        };
        let local_pg = LocalPgConn {
            host: non_empty("LOCAL_PG_HOST", self.local_pg_host)?.unwrap_or_else(|| "127.0.0.1".into()),
            port: match self.local_pg_port {
                Some(v) => parse_port("LOCAL_PG_PORT", &v)?,
                None => defaults::GOLD_PORT,
            },
            user: non_empty("LOCAL_PG_USER", self.local_pg_user)?
                .unwrap_or_else(|| defaults::GOLD_USER.into()),
            password: password(
                "LOCAL_PG",
                self.local_pg_password,
                self.local_pg_password_file.as_deref(),
            )?,
            database: non_empty("LOCAL_PG_DATABASE", self.local_pg_database)?
                .unwrap_or_else(|| defaults::GOLD_DATABASE.into()),
        };
        let wal_receiver_fresh = parse_duration(
            "WAL_RECEIVER_FRESH",
            self.wal_receiver_fresh,
            defaults::WAL_RECEIVER_FRESH,
        )?;
        let max_data_age = parse_duration("MAX_DATA_AGE", self.max_data_age, defaults::MAX_DATA_AGE)?;
        let allow_stale_promotion = parse_bool("ALLOW_STALE_PROMOTION", self.allow_stale_promotion)?;
        let witnesses = match &self.witnesses {
            Some(v) => witness::parse_list(v).map_err(|e| invalid("WITNESSES", v, e))?,
            None => Vec::new(),
        };
        let witness_unreachable_blocks = match self.witness_unreachable.as_deref().map(str::trim) {
            None | Some("block") => true,
            Some("ignore") => false,
            Some(other) => return Err(invalid("WITNESS_UNREACHABLE", other, "must be block or ignore")),
        };
        let webhook_url = match non_empty("WEBHOOK_URL", self.webhook_url)? {
            Some(url) => match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    Some(WebhookUrl(url))
                }
                // Never echo the value: it may hold a token.
                _ => {
                    return Err(invalid(
                        "WEBHOOK_URL",
                        "<redacted>",
                        "must be an http:// or https:// URL",
                    ));
                }
            },
            None => None,
        };
        let patroni_configmap = non_empty("PATRONI_CONFIGMAP", self.patroni_configmap)?
            .unwrap_or_else(|| defaults::PATRONI_CONFIGMAP.to_string());
        check_k8s_name("PATRONI_CONFIGMAP", &patroni_configmap)?;
        let patroni_url =
            non_empty("PATRONI_URL", self.patroni_url)?.unwrap_or_else(|| defaults::PATRONI_URL.to_string());
        match reqwest::Url::parse(&patroni_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return Err(invalid(
                    "PATRONI_URL",
                    &patroni_url,
                    "must be an http:// or https:// URL",
                ));
            }
            Err(e) => return Err(invalid("PATRONI_URL", &patroni_url, e.to_string())),
        }

        let password = password("GOLD", self.gold_password, self.gold_password_file.as_deref())?;

        let sslmode = match self.gold_sslmode.as_deref().map(str::trim) {
            None | Some("prefer") => SslMode::Prefer,
            Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-full") => SslMode::VerifyFull,
            Some(other) => {
                return Err(invalid(
                    "GOLD_SSLMODE",
                    other,
                    "must be one of disable, prefer, require, verify-full",
                ));
            }
        };
        let sslrootcert = non_empty("GOLD_SSLROOTCERT", self.gold_sslrootcert)?.map(PathBuf::from);
        if sslmode == SslMode::VerifyFull {
            let Some(ca) = &sslrootcert else {
                return Err(ConfigError::Missing {
                    var: var("GOLD_SSLROOTCERT"),
                    hint: "verify-full needs the CA certificate (PEM) that signed Gold's server certificate",
                });
            };
            std::fs::metadata(ca).map_err(|e| ConfigError::File {
                var: var("GOLD_SSLROOTCERT"),
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }

        let probe_interval = parse_duration("PROBE_INTERVAL", self.probe_interval, defaults::PROBE_INTERVAL)?;
        let probe_timeout = parse_duration("PROBE_TIMEOUT", self.probe_timeout, defaults::PROBE_TIMEOUT)?;
        if probe_timeout >= probe_interval {
            return Err(ConfigError::Conflict {
                var: var("PROBE_TIMEOUT"),
                other: var("PROBE_INTERVAL"),
                reason: "the probe timeout must be shorter than the probe interval, or probes would pile up",
            });
        }

        let fall = parse_count("FALL", self.fall, defaults::FALL)?;
        let rise = parse_count("RISE", self.rise, defaults::RISE)?;
        let promote_after = parse_count("PROMOTE_AFTER", self.promote_after, defaults::PROMOTE_AFTER)?;
        let thresholds = Thresholds::new(fall, rise, promote_after).map_err(|_| ConfigError::Conflict {
            var: var("PROMOTE_AFTER"),
            other: var("FALL"),
            reason: "PROMOTE_AFTER must be at least FALL: Gold is declared down before it is declared lost",
        })?;
        // Data is at least as old as Gold's death, and Gold is only declared
        // lost promote_after intervals after it: a shorter limit would veto
        // every real loss.
        let time_to_lost = probe_interval * thresholds.promote_after() + probe_timeout;
        if !allow_stale_promotion && max_data_age <= time_to_lost {
            return Err(ConfigError::Conflict {
                var: var("MAX_DATA_AGE"),
                other: var("PROMOTE_AFTER"),
                reason: "WATCHDOG_MAX_DATA_AGE must exceed the time it takes to declare Gold lost \
                         (WATCHDOG_PROMOTE_AFTER x WATCHDOG_PROBE_INTERVAL + WATCHDOG_PROBE_TIMEOUT), \
                         or the stale-data guard would veto every real loss",
            });
        }

        let listen_raw = self
            .listen_addr
            .unwrap_or_else(|| defaults::LISTEN_ADDR.to_string());
        let listen_addr = listen_raw.trim().parse::<SocketAddr>().map_err(|e| {
            invalid(
                "LISTEN_ADDR",
                &listen_raw,
                format!("{e}; use IP:PORT such as 0.0.0.0:9808"),
            )
        })?;

        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(invalid("LOG_FORMAT", other, "must be text or json")),
        };

        let user = non_empty("GOLD_USER", self.gold_user)?.unwrap_or_else(|| defaults::GOLD_USER.to_string());
        let database = non_empty("GOLD_DATABASE", self.gold_database)?
            .unwrap_or_else(|| defaults::GOLD_DATABASE.to_string());

        Ok(Config {
            target,
            gold: GoldConn {
                user,
                password,
                password_file: self.gold_password_file.map(PathBuf::from),
                database,
                sslmode,
                sslrootcert,
            },
            probe_interval,
            probe_timeout,
            thresholds,
            listen_addr,
            log_format,
            namespace,
            promoter,
            patroni_configmap,
            patroni_url: patroni_url.trim_end_matches('/').to_string(),
            identity: String::new(),
            mode,
            local_pg,
            wal_receiver_fresh,
            max_data_age,
            allow_stale_promotion,
            witnesses,
            witness_unreachable_blocks,
            webhook_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut vars: Vec<(String, String)> = vec![("WATCHDOG_GOLD_HOST".into(), "gold.example".into())];
        vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Config::from_vars(vars)
    }

    fn err_var(e: ConfigError) -> String {
        match e {
            ConfigError::Missing { var, .. }
            | ConfigError::Invalid { var, .. }
            | ConfigError::Conflict { var, .. }
            | ConfigError::File { var, .. }
            | ConfigError::Unknown { var, .. } => var,
        }
    }

    #[test]
    fn defaults_are_safe_for_a_real_deployment() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.target.port, Some(5432));
        assert_eq!(
            c.promoter,
            PromoterKind::None,
            "nothing to promote outside a cluster"
        );
        assert!(!c.uses_kubernetes());
        assert_eq!(c.probe_interval, Duration::from_secs(10));
        assert_eq!(c.probe_timeout, Duration::from_secs(5));
        assert_eq!(c.gold.sslmode, SslMode::Prefer);
        // Gold must stay unreachable longer than its own failover plus a
        // tunnel re-route (~90 s worst case) before it counts as lost.
        let lost_after = c.probe_interval * c.thresholds.promote_after();
        assert!(lost_after >= Duration::from_secs(120), "{lost_after:?}");
        // The tunnel's F5 monitor needs up to 20 s to mark a member down.
        assert!(c.probe_interval * c.thresholds.fall() > Duration::from_secs(20));
    }

    #[test]
    fn other_environment_variables_are_ignored() {
        let mut vars = vec![("WATCHDOG_GOLD_HOST".to_string(), "g".to_string())];
        vars.push(("PATH".into(), "/bin".into()));
        vars.push(("GOLD_PORT".into(), "not-a-port".into()));
        assert!(Config::from_vars(vars).is_ok());
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("WATCHDOG_PROBE_INTERVAL", "ten seconds")],
                "WATCHDOG_PROBE_INTERVAL",
            ),
            (&[("WATCHDOG_PROBE_INTERVAL", "0s")], "WATCHDOG_PROBE_INTERVAL"),
            (&[("WATCHDOG_PROBE_TIMEOUT", "-1s")], "WATCHDOG_PROBE_TIMEOUT"),
            (&[("WATCHDOG_PROBE_TIMEOUT", "10s")], "WATCHDOG_PROBE_TIMEOUT"),
            (&[("WATCHDOG_PROBE_TIMEOUT", "11s")], "WATCHDOG_PROBE_TIMEOUT"),
            (&[("WATCHDOG_FALL", "0")], "WATCHDOG_FALL"),
            (&[("WATCHDOG_FALL", "-3")], "WATCHDOG_FALL"),
            (&[("WATCHDOG_FALL", "three")], "WATCHDOG_FALL"),
            (&[("WATCHDOG_RISE", "0")], "WATCHDOG_RISE"),
            (&[("WATCHDOG_PROMOTE_AFTER", "0")], "WATCHDOG_PROMOTE_AFTER"),
            (
                &[("WATCHDOG_FALL", "5"), ("WATCHDOG_PROMOTE_AFTER", "4")],
                "WATCHDOG_PROMOTE_AFTER",
            ),
            (&[("WATCHDOG_GOLD_PORT", "0")], "WATCHDOG_GOLD_PORT"),
            (&[("WATCHDOG_GOLD_PORT", "70000")], "WATCHDOG_GOLD_PORT"),
            (&[("WATCHDOG_GOLD_PORT", "")], "WATCHDOG_GOLD_PORT"),
            (
                &[("WATCHDOG_GOLD_PASSWORD_FILE", "/nonexistent/secret")],
                "WATCHDOG_GOLD_PASSWORD_FILE",
            ),
            (
                &[
                    ("WATCHDOG_GOLD_PASSWORD", "x"),
                    ("WATCHDOG_GOLD_PASSWORD_FILE", "/x"),
                ],
                "WATCHDOG_GOLD_PASSWORD",
            ),
            (&[("WATCHDOG_LISTEN_ADDR", "localhost")], "WATCHDOG_LISTEN_ADDR"),
            (
                &[("WATCHDOG_LISTEN_ADDR", "0.0.0.0:99999")],
                "WATCHDOG_LISTEN_ADDR",
            ),
            (&[("WATCHDOG_GOLD_SSLMODE", "allow")], "WATCHDOG_GOLD_SSLMODE"),
            (
                &[("WATCHDOG_GOLD_SSLMODE", "verify-full")],
                "WATCHDOG_GOLD_SSLROOTCERT",
            ),
            (
                &[
                    ("WATCHDOG_GOLD_SSLMODE", "verify-full"),
                    ("WATCHDOG_GOLD_SSLROOTCERT", "/nonexistent/ca.pem"),
                ],
                "WATCHDOG_GOLD_SSLROOTCERT",
            ),
            (&[("WATCHDOG_LOG_FORMAT", "xml")], "WATCHDOG_LOG_FORMAT"),
            (&[("WATCHDOG_GOLD_USER", " ")], "WATCHDOG_GOLD_USER"),
            (&[("WATCHDOG_PROMOTE_AFTR", "3")], "WATCHDOG_PROMOTE_AFTR"),
        ];
        for (pairs, expected) in cases {
            let e = cfg(pairs).expect_err(&format!("{pairs:?} must be rejected"));
            let msg = e.to_string();
            assert!(msg.contains(expected), "{pairs:?}: {msg}");
            assert_eq!(&err_var(e), expected, "{pairs:?}");
        }
    }

    #[test]
    fn a_transport_service_replaces_host_and_port() {
        let c = Config::from_vars([
            (
                "WATCHDOG_TS_SERVICE".to_string(),
                "patroni-master-gold".to_string(),
            ),
            ("WATCHDOG_TS_PORT_NAME".to_string(), "postgres".to_string()),
            ("KUBERNETES_SERVICE_HOST".to_string(), "10.0.0.1".to_string()),
            ("HOSTNAME".to_string(), "patroni-1".to_string()),
        ])
        .unwrap();
        assert_eq!(c.target.service.as_deref(), Some("patroni-master-gold"));
        assert_eq!(c.target.host, None);
        assert!(c.target.discovers_port());
        assert_eq!(c.promoter, PromoterKind::Configmap, "the default in a pod");
        assert_eq!(c.patroni_configmap, "patroni-config");
        assert_eq!(c.patroni_url, "http://127.0.0.1:8008");
        assert_eq!(c.identity, "patroni-1");
        assert!(c.uses_kubernetes());
    }

    #[test]
    fn a_static_port_skips_discovery() {
        let c = cfg(&[
            ("WATCHDOG_TS_SERVICE", "patroni-master-gold"),
            ("WATCHDOG_GOLD_PORT", "6543"),
        ])
        .unwrap();
        assert_eq!(c.target.port, Some(6543));
        assert!(!c.target.discovers_port());
    }

    #[test]
    fn kubernetes_settings_are_validated() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("WATCHDOG_TS_PORT_NAME", "postgres")], "WATCHDOG_TS_PORT_NAME"),
            (
                &[
                    ("WATCHDOG_TS_SERVICE", "ts"),
                    ("WATCHDOG_TS_PORT_NAME", "pg"),
                    ("WATCHDOG_GOLD_PORT", "5432"),
                ],
                "WATCHDOG_TS_PORT_NAME",
            ),
            (
                &[("WATCHDOG_TS_SERVICE", "ts"), ("WATCHDOG_TS_PORT_NAME", "5432")],
                "WATCHDOG_TS_PORT_NAME",
            ),
            (
                &[("WATCHDOG_TS_SERVICE", "Patroni_Master")],
                "WATCHDOG_TS_SERVICE",
            ),
            (&[("WATCHDOG_NAMESPACE", "-bad")], "WATCHDOG_NAMESPACE"),
            (&[("WATCHDOG_PROMOTER", "sed")], "WATCHDOG_PROMOTER"),
            (
                &[("WATCHDOG_PATRONI_CONFIGMAP", "patroni config")],
                "WATCHDOG_PATRONI_CONFIGMAP",
            ),
            (
                &[("WATCHDOG_PATRONI_URL", "127.0.0.1:8008")],
                "WATCHDOG_PATRONI_URL",
            ),
            (&[("WATCHDOG_PATRONI_URL", "ftp://x")], "WATCHDOG_PATRONI_URL"),
            (&[("WATCHDOG_MODE", "armed")], "WATCHDOG_MODE"),
            (&[("WATCHDOG_LOCAL_PG_PORT", "0")], "WATCHDOG_LOCAL_PG_PORT"),
            (
                &[
                    ("WATCHDOG_LOCAL_PG_PASSWORD", "a"),
                    ("WATCHDOG_LOCAL_PG_PASSWORD_FILE", "/x"),
                ],
                "WATCHDOG_LOCAL_PG_PASSWORD",
            ),
            (
                &[("WATCHDOG_WAL_RECEIVER_FRESH", "fresh")],
                "WATCHDOG_WAL_RECEIVER_FRESH",
            ),
            (&[("WATCHDOG_MAX_DATA_AGE", "0s")], "WATCHDOG_MAX_DATA_AGE"),
            // 18 × 10 s + 5 s = 185 s to declare Gold lost
            (&[("WATCHDOG_MAX_DATA_AGE", "3m")], "WATCHDOG_MAX_DATA_AGE"),
            (
                &[("WATCHDOG_ALLOW_STALE_PROMOTION", "yes please")],
                "WATCHDOG_ALLOW_STALE_PROMOTION",
            ),
            (&[("WATCHDOG_WITNESSES", "gold:5432")], "WATCHDOG_WITNESSES"),
            (
                &[("WATCHDOG_WITNESS_UNREACHABLE", "maybe")],
                "WATCHDOG_WITNESS_UNREACHABLE",
            ),
            (
                &[("WATCHDOG_WEBHOOK_URL", "chat.example/hooks/s3cret")],
                "WATCHDOG_WEBHOOK_URL",
            ),
        ];
        for (pairs, expected) in cases {
            let e = cfg(pairs).expect_err(&format!("{pairs:?} must be rejected"));
            assert_eq!(&err_var(e), expected, "{pairs:?}");
        }
    }

    #[test]
    fn safety_settings_have_safe_defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.mode, Mode::Enforce);
        assert!(!c.allow_stale_promotion);
        assert!(
            c.witness_unreachable_blocks,
            "an unreachable witness holds back by default"
        );
        assert_eq!(c.local_pg.host, "127.0.0.1");
        // A Gold that is really gone has been silent far longer than the
        // freshness window by the time it is declared lost.
        assert!(c.wal_receiver_fresh < c.probe_interval * c.thresholds.promote_after());
    }

    #[test]
    fn a_webhook_token_never_shows() {
        let c = cfg(&[("WATCHDOG_WEBHOOK_URL", "https://chat.example/hooks/s3cret-token")]).unwrap();
        assert_eq!(
            c.webhook_url.as_ref().map(WebhookUrl::expose),
            Some("https://chat.example/hooks/s3cret-token")
        );
        let shown = serde_json::to_string(&c).unwrap() + &format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let e = cfg(&[("WATCHDOG_WEBHOOK_URL", "chat.example/hooks/s3cret")]).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn promoter_can_be_chosen_explicitly() {
        assert_eq!(
            cfg(&[("WATCHDOG_PROMOTER", "patroni-api")]).unwrap().promoter,
            PromoterKind::PatroniApi
        );
        assert_eq!(
            cfg(&[("WATCHDOG_PROMOTER", "pg-promote")]).unwrap().promoter,
            PromoterKind::PgPromote
        );
        assert_eq!(
            cfg(&[("WATCHDOG_PROMOTER", "configmap")]).unwrap().promoter,
            PromoterKind::Configmap
        );
        let mut vars = vec![
            ("WATCHDOG_GOLD_HOST".to_string(), "g".to_string()),
            ("WATCHDOG_PROMOTER".to_string(), "none".to_string()),
        ];
        vars.push(("KUBERNETES_SERVICE_HOST".into(), "10.0.0.1".into()));
        assert_eq!(Config::from_vars(vars).unwrap().promoter, PromoterKind::None);
    }

    #[test]
    fn gold_host_is_required() {
        let e = Config::from_vars(Vec::<(String, String)>::new()).unwrap_err();
        assert_eq!(err_var(e), "WATCHDOG_GOLD_HOST");
    }

    #[test]
    fn password_file_is_read_and_trailing_newline_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = cfg(&[("WATCHDOG_GOLD_PASSWORD_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(c.gold.password.as_ref().map(Password::expose), Some("s3cret"));

        std::fs::write(&path, "\n").unwrap();
        let e = cfg(&[("WATCHDOG_GOLD_PASSWORD_FILE", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(err_var(e), "WATCHDOG_GOLD_PASSWORD_FILE");
    }

    #[test]
    fn password_never_shows_in_debug_or_json() {
        let c = cfg(&[("WATCHDOG_GOLD_PASSWORD", "hunter2-secret")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2-secret"));
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("hunter2-secret"), "{json}");
        assert!(json.contains("<redacted>"));
    }

    #[test]
    fn bad_values_never_echo_a_password() {
        let e = cfg(&[
            ("WATCHDOG_GOLD_PASSWORD", "hunter2-secret"),
            ("WATCHDOG_FALL", "x"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2-secret"));
    }

    #[test]
    fn human_durations_are_accepted() {
        let c = cfg(&[
            ("WATCHDOG_PROBE_INTERVAL", "1m 30s"),
            ("WATCHDOG_PROBE_TIMEOUT", "1500ms"),
            ("WATCHDOG_MAX_DATA_AGE", "1h"),
        ])
        .unwrap();
        assert_eq!(c.max_data_age, Duration::from_secs(3600));
        assert_eq!(c.probe_interval, Duration::from_secs(90));
        assert_eq!(c.probe_timeout, Duration::from_millis(1500));
    }
}

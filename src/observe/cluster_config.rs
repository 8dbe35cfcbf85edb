//! Reading the DR cluster's configuration, whichever way the settings reach
//! it: Patroni's `<scope>-config` ConfigMap (Kubernetes DCS), Patroni's
//! `GET /config` (any DCS), or the local PostgreSQL for a plain streaming
//! standby. Read-only; the promoters in `act` re-read through the same
//! readers right before they write.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde::Serialize;

pub use crate::observe::dynamic_config::StandbyAddress;
use crate::observe::dynamic_config::{self, DynamicConfigError};
use crate::observe::local_pg::LocalPg;
use crate::observe::patroni::PatroniClient;

/// Set to "true" by an operator on the config ConfigMap to keep the watchdog
/// observing only (Kubernetes DCS).
pub const DISARMED_ANNOTATION: &str = "patroni-dr-watchdog/disarmed";
pub const CONFIG_ANNOTATION: &str = "config";
/// The disarm switch of a plain streaming standby, which has no Patroni: a
/// placeholder setting that needs no extension. PostgreSQL 15 lets `ALTER
/// SYSTEM` set a placeholder only once the session knows it, hence the
/// `SET` first: `SET patroni_dr_watchdog.disarmed = on`, `ALTER SYSTEM SET
/// patroni_dr_watchdog.disarmed = on`, `SELECT pg_reload_conf()`.
pub const DISARMED_SETTING: &str = "patroni_dr_watchdog.disarmed";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{object} not found: check WATCHDOG_PATRONI_CONFIGMAP and WATCHDOG_NAMESPACE")]
    NotFound { object: String },
    #[error("{object} has no `config` annotation: is it Patroni's <scope>-config? Nothing was written")]
    NoConfigAnnotation { object: String },
    #[error("the dynamic config in {object} {source}")]
    Malformed {
        object: String,
        #[source]
        source: DynamicConfigError,
    },
    #[error("{operation} of {object} failed: {message}")]
    Api {
        operation: &'static str,
        object: String,
        /// HTTP status, if the server answered over HTTP.
        code: Option<u16>,
        message: String,
    },
}

impl ApiError {
    /// Conflicts, throttling, server errors and transport failures (no HTTP
    /// answer at all) pass on a retry; everything else needs a human.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Api { code, .. } => code.is_none_or(|c| c == 409 || c == 429 || c >= 500),
            _ => false,
        }
    }
}

/// The ways an operator can disarm the watchdog without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, strum::IntoStaticStr, strum::EnumIter)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum DisarmSwitch {
    /// `patroni_dr_watchdog.disarmed: true` in Patroni's dynamic config.
    DynamicConfigKey,
    /// The `patroni-dr-watchdog/disarmed` annotation on the config ConfigMap.
    ConfigmapAnnotation,
    /// The `patroni_dr_watchdog.disarmed` setting of the local PostgreSQL.
    PostgresSetting,
}

impl DisarmSwitch {
    /// How an operator flips it, for `check` and the docs.
    pub fn how(self) -> &'static str {
        match self {
            DisarmSwitch::DynamicConfigKey => {
                "patronictl edit-config --set patroni_dr_watchdog.disarmed=true (or PATCH /config)"
            }
            DisarmSwitch::ConfigmapAnnotation => {
                "kubectl annotate configmap <scope>-config patroni-dr-watchdog/disarmed=true"
            }
            DisarmSwitch::PostgresSetting => {
                "SET patroni_dr_watchdog.disarmed = on; then ALTER SYSTEM SET patroni_dr_watchdog.disarmed = on; then SELECT pg_reload_conf();"
            }
        }
    }
}

/// The parts of the DR cluster's configuration a promotion depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// `standby_cluster` is still in the dynamic config.
    pub standby: bool,
    /// `standby_cluster.host`/`.port`: where the standby leader replicates
    /// from, kept on the Transport Service by `decide::standby_target`.
    /// Empty when not a standby, and for a plain standby (no Patroni).
    pub standby_address: StandbyAddress,
    /// Patroni maintenance mode.
    pub paused: bool,
    /// The disarm switches that are set right now.
    pub disarmed_by: Vec<DisarmSwitch>,
}

impl ClusterConfig {
    pub fn disarmed(&self) -> bool {
        !self.disarmed_by.is_empty()
    }
}

/// Patroni's config ConfigMap, as read just now.
pub struct ConfigMapRead {
    pub object: ConfigMap,
    /// The `config` annotation: Patroni's dynamic config, as text.
    pub text: String,
    pub config: ClusterConfig,
}

#[derive(Clone)]
pub struct ConfigMapReader {
    pub api: Api<ConfigMap>,
    pub namespace: String,
    pub name: String,
    pub call_timeout: Duration,
}

impl ConfigMapReader {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        ConfigMapReader {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            call_timeout: Duration::from_secs(5),
        }
    }

    pub fn object(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }

    /// A reference for Events about this ConfigMap.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(ConfigMap::api_version(&()).into_owned()),
            kind: Some(ConfigMap::kind(&()).into_owned()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        }
    }

    pub fn api_error(&self, operation: &'static str, e: kube::Error) -> ApiError {
        let code = match &e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        };
        if code == Some(404) {
            return ApiError::NotFound {
                object: self.object(),
            };
        }
        ApiError::Api {
            operation,
            object: self.object(),
            code,
            message: crate::observe::api_trouble::describe(&e),
        }
    }

    pub fn timed_out(&self, operation: &'static str) -> ApiError {
        ApiError::Api {
            operation,
            object: self.object(),
            code: None,
            message: format!(
                "no answer within {}",
                humantime::format_duration(self.call_timeout)
            ),
        }
    }

    pub async fn read(&self) -> Result<ConfigMapRead, ApiError> {
        let cm = tokio::time::timeout(self.call_timeout, self.api.get(&self.name))
            .await
            .map_err(|_| self.timed_out("get"))?
            .map_err(|e| self.api_error("get", e))?;
        let annotations = cm.annotations();
        let text =
            annotations
                .get(CONFIG_ANNOTATION)
                .cloned()
                .ok_or_else(|| ApiError::NoConfigAnnotation {
                    object: self.object(),
                })?;
        let facts = dynamic_config::facts(&text).map_err(|source| ApiError::Malformed {
            object: self.object(),
            source,
        })?;
        let mut disarmed_by = Vec::new();
        if facts.disarmed {
            disarmed_by.push(DisarmSwitch::DynamicConfigKey);
        }
        if annotations
            .get(DISARMED_ANNOTATION)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            disarmed_by.push(DisarmSwitch::ConfigmapAnnotation);
        }
        let config = ClusterConfig {
            standby: facts.standby,
            standby_address: facts.standby_address,
            paused: facts.paused,
            disarmed_by,
        };
        Ok(ConfigMapRead {
            object: cm,
            text,
            config,
        })
    }
}

/// `GET /config` on the local Patroni.
#[derive(Clone)]
pub struct PatroniConfigReader {
    pub patroni: PatroniClient,
}

impl PatroniConfigReader {
    pub fn object(&self) -> String {
        format!("Patroni {}", self.patroni.url())
    }

    pub fn error(&self, operation: &'static str, code: Option<u16>, message: String) -> ApiError {
        ApiError::Api {
            operation,
            object: self.object(),
            code,
            message,
        }
    }

    /// `GET /config` as Patroni serves it.
    pub async fn read_text(&self) -> Result<String, ApiError> {
        let op = "GET /config";
        let resp = self
            .patroni
            .get("/config")
            .send()
            .await
            .map_err(|e| self.error(op, None, crate::error_chain(&e.without_url())))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| self.error(op, Some(status.as_u16()), crate::error_chain(&e.without_url())))?;
        if !status.is_success() {
            let refusal = self.patroni.describe_refusal(status, &text);
            return Err(self.error(op, Some(status.as_u16()), refusal));
        }
        Ok(text)
    }

    pub async fn read(&self) -> Result<ClusterConfig, ApiError> {
        let text = self.read_text().await?;
        self.config_of(&text)
    }

    /// The facts of a config as `GET /config` served it.
    pub fn config_of(&self, text: &str) -> Result<ClusterConfig, ApiError> {
        let facts = dynamic_config::facts(text).map_err(|source| ApiError::Malformed {
            object: self.object(),
            source,
        })?;
        Ok(ClusterConfig {
            standby: facts.standby,
            standby_address: facts.standby_address,
            paused: facts.paused,
            disarmed_by: if facts.disarmed {
                vec![DisarmSwitch::DynamicConfigKey]
            } else {
                vec![]
            },
        })
    }
}

/// A plain streaming standby: in recovery means standby; our own setting
/// disarms.
#[derive(Clone)]
pub struct PostgresConfigReader {
    pub pg: LocalPg,
    pub object: String,
}

impl PostgresConfigReader {
    pub async fn read(&self) -> Result<ClusterConfig, ApiError> {
        let (standby, disarmed) = self
            .pg
            .recovery_and_disarm()
            .await
            .map_err(|message| ApiError::Api {
                operation: "pg_is_in_recovery()",
                object: self.object.clone(),
                code: None,
                message,
            })?;
        Ok(ClusterConfig {
            standby,
            standby_address: StandbyAddress::default(),
            paused: false,
            disarmed_by: if disarmed {
                vec![DisarmSwitch::PostgresSetting]
            } else {
                vec![]
            },
        })
    }
}

/// Whichever way the settings reach the DR cluster's configuration.
#[derive(Clone)]
pub enum ConfigReader {
    ConfigMap(ConfigMapReader),
    PatroniApi(PatroniConfigReader),
    Postgres(PostgresConfigReader),
}

impl ConfigReader {
    pub async fn read(&self) -> Result<ClusterConfig, ApiError> {
        match self {
            ConfigReader::ConfigMap(r) => r.read().await.map(|r| r.config),
            ConfigReader::PatroniApi(r) => r.read().await,
            ConfigReader::Postgres(r) => r.read().await,
        }
    }

    pub fn object(&self) -> String {
        match self {
            ConfigReader::ConfigMap(r) => r.object(),
            ConfigReader::PatroniApi(r) => r.object(),
            ConfigReader::Postgres(r) => r.object.clone(),
        }
    }

    /// The disarm switches this reader sees.
    pub fn switches(&self) -> &'static [DisarmSwitch] {
        match self {
            ConfigReader::ConfigMap(_) => {
                &[DisarmSwitch::DynamicConfigKey, DisarmSwitch::ConfigmapAnnotation]
            }
            ConfigReader::PatroniApi(_) => &[DisarmSwitch::DynamicConfigKey],
            ConfigReader::Postgres(_) => &[DisarmSwitch::PostgresSetting],
        }
    }
}

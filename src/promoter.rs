//! Promotes the DR Patroni cluster by removing `standby_cluster` from the
//! `config` annotation of `<scope>-config`, the way `patronictl edit-config`
//! would, but touching nothing else: one merge patch of that annotation plus
//! our audit annotations, preconditioned on the resourceVersion we read.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use crate::detector::Verdict;
use crate::dynamic_config::{self, DynamicConfigError};
use crate::guards::ClusterConfig;

/// Set to "true" by an operator to keep the watchdog observing only.
pub const DISARMED_ANNOTATION: &str = "patroni-dr-watchdog/disarmed";
pub const PROMOTED_AT_ANNOTATION: &str = "patroni-dr-watchdog/promoted-at";
pub const PROMOTED_BY_ANNOTATION: &str = "patroni-dr-watchdog/promoted-by";
pub const REASON_ANNOTATION: &str = "patroni-dr-watchdog/reason";
const CONFIG_ANNOTATION: &str = "config";
const FIELD_MANAGER: &str = "patroni-dr-watchdog";

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("ConfigMap {object} not found: check WATCHDOG_PATRONI_CONFIGMAP and WATCHDOG_NAMESPACE")]
    NotFound { object: String },
    #[error(
        "ConfigMap {object} has no `config` annotation: is it Patroni's <scope>-config? Nothing was written"
    )]
    NoConfigAnnotation { object: String },
    #[error("the `config` annotation of ConfigMap {object} {source}")]
    Malformed {
        object: String,
        #[source]
        source: DynamicConfigError,
    },
    #[error("promotion called off before writing: {0}")]
    CalledOff(&'static str),
    #[error("Kubernetes API {operation} of ConfigMap {object} failed: {message}")]
    Api {
        operation: &'static str,
        object: String,
        /// HTTP status, if the API server answered.
        code: Option<u16>,
        message: String,
    },
}

impl PromoteError {
    /// Conflicts, throttling, server errors and transport failures pass;
    /// everything else needs a human.
    fn retryable(&self) -> bool {
        match self {
            PromoteError::Api { code: None, .. } => true,
            PromoteError::Api { code: Some(c), .. } => *c == 409 || *c == 429 || *c >= 500,
            _ => false,
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, PromoteError::Api { code: Some(409), .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// We removed `standby_cluster`.
    Written,
    /// It was already gone: nothing written.
    AlreadyPromoted,
}

/// Who promoted, when and why; written as annotations with the promotion.
#[derive(Debug, Clone)]
pub struct Audit {
    pub at: SystemTime,
    pub by: String,
    pub reason: String,
}

#[derive(Clone)]
pub struct ConfigMapPromoter {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    call_timeout: Duration,
    retry: ExponentialBuilder,
}

impl ConfigMapPromoter {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        ConfigMapPromoter {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            call_timeout: Duration::from_secs(5),
            // About 30 s of retries in all: long enough to ride out an API
            // server restart, short enough to try again on the next tick.
            retry: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(10)
                .with_jitter(),
        }
    }

    pub fn object(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
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

    fn api_error(&self, operation: &'static str, e: kube::Error) -> PromoteError {
        let code = match &e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        };
        if code == Some(404) {
            return PromoteError::NotFound {
                object: self.object(),
            };
        }
        PromoteError::Api {
            operation,
            object: self.object(),
            code,
            message: crate::error_chain(&e),
        }
    }

    fn timed_out(&self, operation: &'static str) -> PromoteError {
        PromoteError::Api {
            operation,
            object: self.object(),
            code: None,
            message: format!(
                "no answer within {}",
                humantime::format_duration(self.call_timeout)
            ),
        }
    }

    async fn read(&self) -> Result<(ConfigMap, String, ClusterConfig), PromoteError> {
        let cm = tokio::time::timeout(self.call_timeout, self.api.get(&self.name))
            .await
            .map_err(|_| self.timed_out("get"))?
            .map_err(|e| self.api_error("get", e))?;
        let annotations = cm.annotations();
        let text =
            annotations
                .get(CONFIG_ANNOTATION)
                .cloned()
                .ok_or_else(|| PromoteError::NoConfigAnnotation {
                    object: self.object(),
                })?;
        let facts = dynamic_config::facts(&text).map_err(|source| PromoteError::Malformed {
            object: self.object(),
            source,
        })?;
        let config = ClusterConfig {
            standby: facts.standby,
            paused: facts.paused,
            disarmed: annotations
                .get(DISARMED_ANNOTATION)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        };
        Ok((cm, text, config))
    }

    /// What the ConfigMap says now. Read-only.
    pub async fn inspect(&self) -> Result<ClusterConfig, PromoteError> {
        self.read().await.map(|(_, _, c)| c)
    }

    /// Removes `standby_cluster`, retrying conflicts and transient errors.
    /// Each try re-reads the object and re-checks that it may still act:
    /// the config may have changed, and Gold may have come back.
    pub async fn promote(
        &self,
        audit: &Audit,
        verdict: &watch::Receiver<Verdict>,
    ) -> Result<Promotion, PromoteError> {
        (|| self.attempt(audit, verdict))
            .retry(self.retry)
            .sleep(tokio::time::sleep)
            .when(PromoteError::retryable)
            .notify(|e, after| {
                warn!(configmap = %self.object(), error = %e, retry_in_ms = after.as_millis() as u64, "promotion write failed, retrying")
            })
            .await
    }

    async fn attempt(
        &self,
        audit: &Audit,
        verdict: &watch::Receiver<Verdict>,
    ) -> Result<Promotion, PromoteError> {
        let (cm, text, config) = self.read().await?;
        let at = humantime::format_rfc3339_seconds(audit.at).to_string();
        if !config.standby {
            // A write that timed out may still have landed: if the audit
            // annotations are ours, the promotion is ours.
            let ours = cm.annotations().get(PROMOTED_AT_ANNOTATION) == Some(&at)
                && cm.annotations().get(PROMOTED_BY_ANNOTATION) == Some(&audit.by);
            return Ok(if ours {
                Promotion::Written
            } else {
                Promotion::AlreadyPromoted
            });
        }
        if config.paused {
            return Err(PromoteError::CalledOff("Patroni was paused"));
        }
        if config.disarmed {
            return Err(PromoteError::CalledOff("the watchdog was disarmed"));
        }
        if *verdict.borrow() != Verdict::Lost {
            return Err(PromoteError::CalledOff("Gold answered again"));
        }
        let new_config = dynamic_config::remove_standby_cluster(&text)
            .map_err(|source| PromoteError::Malformed {
                object: self.object(),
                source,
            })?
            .ok_or(PromoteError::CalledOff("standby_cluster vanished"))?;
        let mut annotations = BTreeMap::new();
        annotations.insert(CONFIG_ANNOTATION, new_config);
        annotations.insert(PROMOTED_AT_ANNOTATION, at);
        annotations.insert(PROMOTED_BY_ANNOTATION, audit.by.clone());
        annotations.insert(REASON_ANNOTATION, audit.reason.clone());
        // The resourceVersion makes the merge patch conditional: if anyone
        // wrote in between, the API answers 409 and we read again.
        let patch = json!({
            "metadata": {
                "resourceVersion": cm.resource_version(),
                "annotations": annotations,
            }
        });
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        tokio::time::timeout(
            self.call_timeout,
            self.api.patch(&self.name, &params, &Patch::Merge(&patch)),
        )
        .await
        .map_err(|_| self.timed_out("patch"))?
        .map_err(|e| self.api_error("patch", e))?;
        Ok(Promotion::Written)
    }
}

//! Promotes the DR site, three ways behind one trait:
//! - `configmap`: remove `standby_cluster` from the `config` annotation of
//!   Patroni's `<scope>-config`, the way `patronictl edit-config` would, but
//!   touching nothing else: one merge patch of that annotation plus our audit
//!   annotations, preconditioned on the resourceVersion we read;
//! - `patroni-api`: `PATCH /config` `{"standby_cluster": null}` on the local
//!   Patroni (any DCS);
//! - `pg-promote`: `SELECT pg_promote()` on a plain streaming standby.
//!
//! All are idempotent (already promoted is reported, nothing written),
//! re-check before every try that Gold is still lost, and retry conflicts and
//! transient errors with explicit limits.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use crate::act::dynamic_config::{self, DynamicConfigError};
use crate::decide::detector::Verdict;
use crate::decide::guards::ClusterConfig;
use crate::observe::local_pg::LocalPg;
use crate::observe::patroni::PatroniClient;

/// Set to "true" by an operator to keep the watchdog observing only.
pub const DISARMED_ANNOTATION: &str = "patroni-dr-watchdog/disarmed";
pub const PROMOTED_AT_ANNOTATION: &str = "patroni-dr-watchdog/promoted-at";
pub const PROMOTED_BY_ANNOTATION: &str = "patroni-dr-watchdog/promoted-by";
pub const REASON_ANNOTATION: &str = "patroni-dr-watchdog/reason";
pub const FAILBACK_AT_ANNOTATION: &str = "patroni-dr-watchdog/failback-at";
const CONFIG_ANNOTATION: &str = "config";
const FIELD_MANAGER: &str = "patroni-dr-watchdog";

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
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
    #[error("promotion called off before writing: {0}")]
    CalledOff(&'static str),
    #[error("{operation} of {object} failed: {message}")]
    Api {
        operation: &'static str,
        object: String,
        /// HTTP status, if the server answered over HTTP.
        code: Option<u16>,
        message: String,
    },
    #[error("{0}")]
    Unsupported(&'static str),
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
}

impl ConfigMapPromoter {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        ConfigMapPromoter {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            call_timeout: Duration::from_secs(5),
        }
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

    async fn patch(&self, patch: &serde_json::Value) -> Result<(), PromoteError> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        tokio::time::timeout(
            self.call_timeout,
            self.api.patch(&self.name, &params, &Patch::Merge(patch)),
        )
        .await
        .map_err(|_| self.timed_out("patch"))?
        .map_err(|e| self.api_error("patch", e))?;
        Ok(())
    }

    async fn failback_attempt(&self, section: &serde_json::Value) -> Result<(), PromoteError> {
        let (cm, text, _) = self.read().await?;
        let new_config = dynamic_config::add_standby_cluster(&text, section).map_err(|source| {
            PromoteError::Malformed {
                object: self.object(),
                source,
            }
        })?;
        self.patch(&json!({
            "metadata": {
                "resourceVersion": cm.resource_version(),
                "annotations": {
                    CONFIG_ANNOTATION: new_config,
                    FAILBACK_AT_ANNOTATION: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                },
            }
        }))
        .await
    }
}

/// One way to promote. Every implementation is idempotent.
pub trait Promoter: Send + Sync {
    /// What is there now: still a standby? paused? disarmed? Read-only.
    fn inspect(&self) -> impl Future<Output = Result<ClusterConfig, PromoteError>> + Send;
    /// One try at promoting, re-checking what it writes first.
    fn attempt(&self, audit: &Audit) -> impl Future<Output = Result<Promotion, PromoteError>> + Send;
    /// Makes a promoted site a standby of `host:port` again.
    fn failback(&self, host: &str, port: u16) -> impl Future<Output = Result<(), PromoteError>> + Send;
    /// What gets written, for messages.
    fn object(&self) -> String;
}

impl Promoter for ConfigMapPromoter {
    async fn inspect(&self) -> Result<ClusterConfig, PromoteError> {
        self.read().await.map(|(_, _, c)| c)
    }

    async fn attempt(&self, audit: &Audit) -> Result<Promotion, PromoteError> {
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
        self.patch(&json!({
            "metadata": {
                "resourceVersion": cm.resource_version(),
                "annotations": annotations,
            }
        }))
        .await?;
        Ok(Promotion::Written)
    }

    async fn failback(&self, host: &str, port: u16) -> Result<(), PromoteError> {
        let section = json!({"host": host, "port": port});
        (|| self.failback_attempt(&section))
            .retry(retry_policy())
            .sleep(tokio::time::sleep)
            .when(PromoteError::retryable)
            .await
    }

    fn object(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// About 30 s of retries in all: long enough to ride out an API server or
/// Patroni restart, short enough to try again on the next tick.
fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(10)
        .with_jitter()
}

/// Promotes, retrying conflicts and transient errors. Before every try Gold
/// must still be lost: it may have come back while we retried.
pub async fn promote<P: Promoter>(
    promoter: &P,
    audit: &Audit,
    verdict: &watch::Receiver<Verdict>,
) -> Result<Promotion, PromoteError> {
    (|| async {
        if *verdict.borrow() != Verdict::Lost {
            return Err(PromoteError::CalledOff("Gold answered again"));
        }
        promoter.attempt(audit).await
    })
    .retry(retry_policy())
    .sleep(tokio::time::sleep)
    .when(PromoteError::retryable)
    .notify(|e, after| {
        warn!(object = %promoter.object(), error = %e, retry_in_ms = after.as_millis() as u64,
            "promotion write failed, retrying")
    })
    .await
}

/// `PATCH /config` on the local Patroni: works whatever its DCS.
pub struct PatroniApiPromoter {
    http: PatroniClient,
}

impl PatroniApiPromoter {
    /// `http`: the same client that reads the local role, with its CA and
    /// credentials.
    pub fn new(http: PatroniClient) -> Self {
        PatroniApiPromoter { http }
    }

    fn error(&self, operation: &'static str, code: Option<u16>, message: String) -> PromoteError {
        PromoteError::Api {
            operation,
            object: self.object(),
            code,
            message,
        }
    }

    async fn patch_config(&self, body: serde_json::Value) -> Result<(), PromoteError> {
        let resp = self
            .http
            .patch("/config")
            .json(&body)
            .send()
            .await
            .map_err(|e| self.error("PATCH /config", None, crate::error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(self.error(
            "PATCH /config",
            Some(status.as_u16()),
            self.http.describe_refusal(status, &text),
        ))
    }
}

impl Promoter for PatroniApiPromoter {
    async fn inspect(&self) -> Result<ClusterConfig, PromoteError> {
        let op = "GET /config";
        let resp = self
            .http
            .get("/config")
            .send()
            .await
            .map_err(|e| self.error(op, None, crate::error_chain(&e)))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| self.error(op, Some(status.as_u16()), crate::error_chain(&e)))?;
        if !status.is_success() {
            return Err(self.error(
                op,
                Some(status.as_u16()),
                self.http.describe_refusal(status, &text),
            ));
        }
        let facts = dynamic_config::facts(&text).map_err(|source| PromoteError::Malformed {
            object: self.object(),
            source,
        })?;
        Ok(ClusterConfig {
            standby: facts.standby,
            paused: facts.paused,
            disarmed: false,
        })
    }

    async fn attempt(&self, _audit: &Audit) -> Result<Promotion, PromoteError> {
        let config = self.inspect().await?;
        if !config.standby {
            return Ok(Promotion::AlreadyPromoted);
        }
        if config.paused {
            return Err(PromoteError::CalledOff("Patroni was paused"));
        }
        // What `patronictl edit-config` and Patroni 4.1's promote-cluster do.
        self.patch_config(json!({"standby_cluster": null})).await?;
        Ok(Promotion::Written)
    }

    async fn failback(&self, host: &str, port: u16) -> Result<(), PromoteError> {
        if self.inspect().await?.standby {
            return Err(PromoteError::Unsupported(
                "this cluster is already a standby cluster",
            ));
        }
        self.patch_config(json!({"standby_cluster": {"host": host, "port": port}}))
            .await
    }

    fn object(&self) -> String {
        format!("Patroni {}", self.http.url())
    }
}

/// `pg_promote()` on a plain streaming standby.
pub struct PgPromoter {
    pg: LocalPg,
    object: String,
}

impl PgPromoter {
    pub fn new(pg: LocalPg, object: String) -> Self {
        PgPromoter { pg, object }
    }

    fn error(&self, operation: &'static str, message: String) -> PromoteError {
        PromoteError::Api {
            operation,
            object: self.object.clone(),
            code: None,
            message,
        }
    }
}

impl Promoter for PgPromoter {
    async fn inspect(&self) -> Result<ClusterConfig, PromoteError> {
        let standby = self
            .pg
            .in_recovery()
            .await
            .map_err(|e| self.error("pg_is_in_recovery()", e))?;
        Ok(ClusterConfig {
            standby,
            paused: false,
            disarmed: false,
        })
    }

    async fn attempt(&self, _audit: &Audit) -> Result<Promotion, PromoteError> {
        if !self.inspect().await?.standby {
            return Ok(Promotion::AlreadyPromoted);
        }
        match self
            .pg
            .promote()
            .await
            .map_err(|e| self.error("pg_promote()", e))?
        {
            true => Ok(Promotion::Written),
            false => Err(PromoteError::Unsupported(
                "pg_promote() did not finish within 60 s: check the standby's log",
            )),
        }
    }

    async fn failback(&self, _host: &str, _port: u16) -> Result<(), PromoteError> {
        Err(PromoteError::Unsupported(
            "a plain standby is rebuilt, not reconfigured: pg_basebackup -R from the new primary",
        ))
    }

    fn object(&self) -> String {
        self.object.clone()
    }
}

/// The configured promoter.
pub enum AnyPromoter {
    ConfigMap(ConfigMapPromoter),
    PatroniApi(PatroniApiPromoter),
    PgPromote(PgPromoter),
}

impl Promoter for AnyPromoter {
    async fn inspect(&self) -> Result<ClusterConfig, PromoteError> {
        match self {
            AnyPromoter::ConfigMap(p) => p.inspect().await,
            AnyPromoter::PatroniApi(p) => p.inspect().await,
            AnyPromoter::PgPromote(p) => p.inspect().await,
        }
    }

    async fn attempt(&self, audit: &Audit) -> Result<Promotion, PromoteError> {
        match self {
            AnyPromoter::ConfigMap(p) => p.attempt(audit).await,
            AnyPromoter::PatroniApi(p) => p.attempt(audit).await,
            AnyPromoter::PgPromote(p) => p.attempt(audit).await,
        }
    }

    async fn failback(&self, host: &str, port: u16) -> Result<(), PromoteError> {
        match self {
            AnyPromoter::ConfigMap(p) => p.failback(host, port).await,
            AnyPromoter::PatroniApi(p) => p.failback(host, port).await,
            AnyPromoter::PgPromote(p) => p.failback(host, port).await,
        }
    }

    fn object(&self) -> String {
        match self {
            AnyPromoter::ConfigMap(p) => p.object(),
            AnyPromoter::PatroniApi(p) => p.object(),
            AnyPromoter::PgPromote(p) => p.object(),
        }
    }
}

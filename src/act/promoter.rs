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
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::warn;

use crate::act::dynamic_config;
use crate::decide::detector::Verdict;
pub use crate::decide::state::Audit;
use crate::observe::cluster_config::{
    ApiError, CONFIG_ANNOTATION, ConfigMapReader, PatroniConfigReader, PostgresConfigReader,
};

pub const PROMOTED_AT_ANNOTATION: &str = "patroni-dr-watchdog/promoted-at";
pub const PROMOTED_BY_ANNOTATION: &str = "patroni-dr-watchdog/promoted-by";
pub const REASON_ANNOTATION: &str = "patroni-dr-watchdog/reason";
pub const FAILBACK_AT_ANNOTATION: &str = "patroni-dr-watchdog/failback-at";
const FIELD_MANAGER: &str = "patroni-dr-watchdog";

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// Reading or writing the config failed: the same errors as reading it.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("promotion called off before writing: {0}")]
    CalledOff(&'static str),
    #[error("{0}")]
    Unsupported(&'static str),
}

impl PromoteError {
    fn retryable(&self) -> bool {
        matches!(self, PromoteError::Api(e) if e.retryable())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// We removed `standby_cluster`.
    Written,
    /// It was already gone: nothing written.
    AlreadyPromoted,
}

#[derive(Clone)]
pub struct ConfigMapPromoter {
    pub reader: ConfigMapReader,
}

/// One JSON merge patch of Patroni's config ConfigMap, under our field
/// manager and the reader's call timeout. Shared by the promotion and the
/// standby-target fix.
pub(crate) async fn patch_configmap(r: &ConfigMapReader, patch: &serde_json::Value) -> Result<(), ApiError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    tokio::time::timeout(
        r.call_timeout,
        r.api.patch(&r.name, &params, &Patch::Merge(patch)),
    )
    .await
    .map_err(|_| r.timed_out("patch"))?
    .map_err(|e| r.api_error("patch", e))?;
    Ok(())
}

impl ConfigMapPromoter {
    async fn patch(&self, patch: &serde_json::Value) -> Result<(), PromoteError> {
        Ok(patch_configmap(&self.reader, patch).await?)
    }

    async fn failback_attempt(&self, section: &serde_json::Value) -> Result<(), PromoteError> {
        let read = self.reader.read().await?;
        let (cm, text) = (read.object, read.text);
        let new_config =
            dynamic_config::add_standby_cluster(&text, section).map_err(|source| ApiError::Malformed {
                object: self.object(),
                source,
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
    /// One try at promoting, re-checking what it writes first.
    fn attempt(&self, audit: &Audit) -> impl Future<Output = Result<Promotion, PromoteError>> + Send;
    /// Makes a promoted site a standby of `host:port` again.
    fn failback(&self, host: &str, port: u16) -> impl Future<Output = Result<(), PromoteError>> + Send;
    /// What gets written, for messages.
    fn object(&self) -> String;
}

impl Promoter for ConfigMapPromoter {
    async fn attempt(&self, audit: &Audit) -> Result<Promotion, PromoteError> {
        let read = self.reader.read().await?;
        let (cm, text, config) = (read.object, read.text, read.config);
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
        if config.disarmed() {
            return Err(PromoteError::CalledOff("the watchdog was disarmed"));
        }
        let new_config = dynamic_config::remove_standby_cluster(&text)
            .map_err(|source| ApiError::Malformed {
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
        self.reader.object()
    }
}

/// About 30 s of retries in all: long enough to ride out an API server or
/// Patroni restart, short enough to try again on the next tick.
pub(crate) fn retry_policy() -> ExponentialBuilder {
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
    pub reader: PatroniConfigReader,
}

impl PatroniApiPromoter {
    async fn patch_config(&self, body: serde_json::Value) -> Result<(), PromoteError> {
        Ok(patch_config(&self.reader, &body).await?)
    }
}

/// `PATCH /config`: Patroni merges `body` into its dynamic config (members
/// set to null are removed). Shared by the promoter and the guard's fence.
pub async fn patch_config(reader: &PatroniConfigReader, body: &serde_json::Value) -> Result<(), ApiError> {
    let op = "PATCH /config";
    let resp = reader
        .patroni
        .patch("/config")
        .json(body)
        .send()
        .await
        .map_err(|e| reader.error(op, None, crate::error_chain(&e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let refusal = reader.patroni.describe_refusal(status, &text);
    Err(reader.error(op, Some(status.as_u16()), refusal))
}

impl Promoter for PatroniApiPromoter {
    async fn attempt(&self, _audit: &Audit) -> Result<Promotion, PromoteError> {
        let config = self.reader.read().await?;
        if !config.standby {
            return Ok(Promotion::AlreadyPromoted);
        }
        if config.paused {
            return Err(PromoteError::CalledOff("Patroni was paused"));
        }
        if config.disarmed() {
            return Err(PromoteError::CalledOff("the watchdog was disarmed"));
        }
        // What `patronictl edit-config` and Patroni 4.1's promote-cluster do.
        self.patch_config(json!({"standby_cluster": null})).await?;
        Ok(Promotion::Written)
    }

    async fn failback(&self, host: &str, port: u16) -> Result<(), PromoteError> {
        if self.reader.read().await?.standby {
            return Err(PromoteError::Unsupported(
                "this cluster is already a standby cluster",
            ));
        }
        self.patch_config(json!({"standby_cluster": {"host": host, "port": port}}))
            .await
    }

    fn object(&self) -> String {
        self.reader.object()
    }
}

/// `pg_promote()` on a plain streaming standby.
pub struct PgPromoter {
    pub reader: PostgresConfigReader,
}

impl PgPromoter {
    fn error(&self, operation: &'static str, message: String) -> PromoteError {
        ApiError::Api {
            operation,
            object: self.reader.object.clone(),
            code: None,
            message,
        }
        .into()
    }
}

impl Promoter for PgPromoter {
    async fn attempt(&self, _audit: &Audit) -> Result<Promotion, PromoteError> {
        let config = self.reader.read().await?;
        if !config.standby {
            return Ok(Promotion::AlreadyPromoted);
        }
        if config.disarmed() {
            return Err(PromoteError::CalledOff("the watchdog was disarmed"));
        }
        match self
            .reader
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
        self.reader.object.clone()
    }
}

/// The configured promoter.
pub enum AnyPromoter {
    ConfigMap(ConfigMapPromoter),
    PatroniApi(PatroniApiPromoter),
    PgPromote(PgPromoter),
}

impl Promoter for AnyPromoter {
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

//! Points GoldDR's `standby_cluster` at the Transport Service: sets exactly
//! its `host` and/or `port`, two ways like the promotion:
//! - `configmap`: one conditional merge patch of the `config` annotation of
//!   `<scope>-config` (the two values replaced in the text, every other byte
//!   kept) plus our audit annotations;
//! - `patroni-api`: `PATCH /config` `{"standby_cluster": {…}}` (Patroni
//!   merges it) with our record under `patroni_dr_watchdog.standby_target`.
//!
//! Each try re-reads the config first and writes nothing when it is already
//! right, no longer a standby, paused or disarmed, or when the Transport
//! Service moved again meanwhile.

use std::collections::BTreeMap;

use backon::Retryable;
use kube::ResourceExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::warn;

use crate::act::dynamic_config;
use crate::act::promoter::{patch_config, patch_configmap, retry_policy};
use crate::decide::standby_target::{self, FixOutcome, FixRequest, Quiet, TsNames};
use crate::observe::cluster_config::{
    ApiError, CONFIG_ANNOTATION, ClusterConfig, ConfigMapReader, PatroniConfigReader,
};
use crate::observe::dynamic_config::{self as observed, OWN_KEY};
use crate::observe::target::Target;

pub const FIXED_AT_ANNOTATION: &str = "patroni-dr-watchdog/standby-target-fixed-at";
pub const FIXED_BY_ANNOTATION: &str = "patroni-dr-watchdog/standby-target-fixed-by";
pub const FIX_REASON_ANNOTATION: &str = "patroni-dr-watchdog/standby-target-reason";
/// Our record in Patroni's dynamic config (`patroni-api`), beside
/// `patroni_dr_watchdog.disarmed` and the guard's `fence`.
pub const RECORD_KEY: &str = "standby_target";

#[derive(Debug, thiserror::Error)]
pub enum FixError {
    /// Reading or writing the config failed: the same errors as reading it.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    CalledOff(&'static str),
}

impl FixError {
    fn retryable(&self) -> bool {
        matches!(self, FixError::Api(e) if e.retryable())
    }
}

/// How one try ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Written,
    AlreadyRight,
}

/// Whoever writes `standby_cluster` on this site.
pub enum StandbyWriter {
    ConfigMap(Box<ConfigMapReader>),
    PatroniApi(PatroniConfigReader),
}

impl StandbyWriter {
    pub fn object(&self) -> String {
        match self {
            StandbyWriter::ConfigMap(r) => r.object(),
            StandbyWriter::PatroniApi(r) => r.object(),
        }
    }

    /// Writes `request`, retrying conflicts and transient errors; before
    /// every try the target must still be the one it was decided for.
    pub async fn fix(
        &self,
        names: &TsNames,
        request: FixRequest,
        target: watch::Receiver<Target>,
    ) -> FixOutcome {
        let result = (|| async {
            if *target.borrow() != request.target {
                return Err(FixError::CalledOff(
                    "the Transport Service moved again before the write",
                ));
            }
            self.attempt(names, &request).await
        })
        .retry(retry_policy())
        .sleep(tokio::time::sleep)
        .when(FixError::retryable)
        .notify(|e, after| {
            warn!(object = %self.object(), error = %e, retry_in_ms = after.as_millis() as u64,
                "standby_cluster write failed, retrying")
        })
        .await;
        match result {
            Ok(Attempt::Written) => FixOutcome::Fixed(request),
            Ok(Attempt::AlreadyRight) => FixOutcome::AlreadyRight(request),
            Err(FixError::CalledOff(why)) => FixOutcome::CalledOff(request, why.to_string()),
            Err(e) => {
                let message = crate::error_chain(&e);
                FixOutcome::Failed(request, message)
            }
        }
    }

    async fn attempt(&self, names: &TsNames, request: &FixRequest) -> Result<Attempt, FixError> {
        match self {
            StandbyWriter::ConfigMap(reader) => configmap_attempt(reader, names, request).await,
            StandbyWriter::PatroniApi(reader) => patroni_attempt(reader, names, request).await,
        }
    }
}

/// What to write, decided again on the config just read: someone else may
/// have fixed it, promoted, paused or disarmed meanwhile.
fn recheck(
    names: &TsNames,
    request: &FixRequest,
    config: &ClusterConfig,
) -> Result<Option<standby_target::Fix>, FixError> {
    if !config.standby {
        return Err(FixError::CalledOff(
            "standby_cluster is gone: the cluster was promoted",
        ));
    }
    if config.paused {
        return Err(FixError::CalledOff("Patroni was paused"));
    }
    if config.disarmed() {
        return Err(FixError::CalledOff("the watchdog was disarmed"));
    }
    match standby_target::compare(names, &request.target, config) {
        Ok(fix) => Ok(Some(fix)),
        Err(Quiet::InSync) => Ok(None),
        Err(_) => Err(FixError::CalledOff(
            "standby_cluster has no address to follow any more",
        )),
    }
}

async fn configmap_attempt(
    reader: &ConfigMapReader,
    names: &TsNames,
    request: &FixRequest,
) -> Result<Attempt, FixError> {
    let read = reader.read().await?;
    let at = humantime::format_rfc3339_seconds(request.audit.at).to_string();
    let Some(fix) = recheck(names, request, &read.config)? else {
        // A write whose answer was lost (timeout) may have landed: our own
        // audit annotations say whose it is.
        let a = read.object.annotations();
        let ours =
            a.get(FIXED_AT_ANNOTATION) == Some(&at) && a.get(FIXED_BY_ANNOTATION) == Some(&request.audit.by);
        return Ok(if ours {
            Attempt::Written
        } else {
            Attempt::AlreadyRight
        });
    };
    let malformed = |source| ApiError::Malformed {
        object: reader.object(),
        source,
    };
    let Some(new_config) =
        dynamic_config::set_standby_address(&read.text, fix.host(), fix.port()).map_err(malformed)?
    else {
        return Ok(Attempt::AlreadyRight);
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(CONFIG_ANNOTATION, new_config);
    annotations.insert(FIXED_AT_ANNOTATION, at);
    annotations.insert(FIXED_BY_ANNOTATION, request.audit.by.clone());
    annotations.insert(FIX_REASON_ANNOTATION, request.audit.reason.clone());
    // The resourceVersion makes the merge patch conditional: a concurrent
    // writer (Patroni, a promotion) causes a 409 and a fresh read.
    patch_configmap(
        reader,
        &json!({
            "metadata": {
                "resourceVersion": read.object.resource_version(),
                "annotations": annotations,
            }
        }),
    )
    .await?;
    Ok(Attempt::Written)
}

async fn patroni_attempt(
    reader: &PatroniConfigReader,
    names: &TsNames,
    request: &FixRequest,
) -> Result<Attempt, FixError> {
    let text = reader.read_text().await?;
    let malformed = |source| ApiError::Malformed {
        object: reader.object(),
        source,
    };
    let config = reader.config_of(&text)?;
    let at = humantime::format_rfc3339_seconds(request.audit.at).to_string();
    let Some(fix) = recheck(names, request, &config)? else {
        let record = observed::parse(&text)
            .map_err(malformed)?
            .get(OWN_KEY)
            .and_then(|v| v.get(RECORD_KEY))
            .cloned();
        let ours = record.is_some_and(|r| r["at"] == at.as_str() && r["by"] == request.audit.by.as_str());
        return Ok(if ours {
            Attempt::Written
        } else {
            Attempt::AlreadyRight
        });
    };
    let mut section = serde_json::Map::new();
    if let Some(host) = fix.host() {
        section.insert("host".into(), Value::from(host));
    }
    if let Some(port) = fix.port() {
        section.insert("port".into(), Value::from(port));
    }
    // Patroni merges this into the stored document: nothing else changes.
    let body = json!({
        "standby_cluster": section,
        OWN_KEY: {RECORD_KEY: {"reason": request.audit.reason, "by": request.audit.by, "at": at}},
    });
    patch_config(reader, &body).await?;
    Ok(Attempt::Written)
}

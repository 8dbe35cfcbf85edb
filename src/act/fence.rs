//! Fencing Gold through its own Patroni's REST API: `PATCH /config` adds a
//! `standby_cluster` that follows GoldDR — what Patroni 4.1's `patronictl
//! demote-cluster` does — with our record of it beside, and removes exactly
//! that again when the fence was for an isolation that ended. Patroni merges
//! a `PATCH` into the stored document and drops members set to null.

use serde_json::{Map, Value, json};

use crate::decide::fence::FenceReason;
use crate::observe::cluster_config::{ApiError, PatroniConfigReader};
use crate::observe::dynamic_config::{self, Fence, FenceMark, OWN_KEY};
use crate::observe::target::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}; nothing was written")]
    CalledOff(&'static str),
}

pub struct Fencer {
    pub reader: PatroniConfigReader,
    /// The operator's `standby_cluster` settings; GoldDR's host and port
    /// are added when writing.
    pub section: Map<String, Value>,
}

impl Fencer {
    pub fn object(&self) -> String {
        self.reader.object()
    }

    /// The fence as Gold's config says now.
    pub async fn fence_state(&self) -> Result<Fence, ApiError> {
        let text = self.reader.read_text().await?;
        dynamic_config::fence(&text).map_err(|source| ApiError::Malformed {
            object: self.object(),
            source,
        })
    }

    /// Makes Gold a standby cluster of GoldDR, recording why. Re-reads
    /// first: a `standby_cluster` already there (ours or an operator's) is
    /// left as it is, only our record's reason may be raised.
    pub async fn fence(
        &self,
        reason: FenceReason,
        mark: FenceMark,
        golddr: &Endpoint,
    ) -> Result<(), FenceError> {
        let body = match self.fence_state().await? {
            Fence::No => {
                let mut section = self.section.clone();
                section.insert("host".into(), Value::from(golddr.host.clone()));
                section.insert("port".into(), Value::from(golddr.port));
                json!({"standby_cluster": section, OWN_KEY: {"fence": mark}})
            }
            Fence::Ours(old) if old.reason != <&str>::from(reason) => json!({OWN_KEY: {"fence": mark}}),
            Fence::Ours(_) => return Ok(()),
            Fence::Foreign => {
                return Err(FenceError::CalledOff(
                    "Gold already has a standby_cluster an operator wrote",
                ));
            }
        };
        self.patch(body).await
    }

    /// Removes the `standby_cluster` we added for an isolation, and our
    /// record; never one an operator wrote, never one for a promoted GoldDR.
    pub async fn unfence(&self) -> Result<(), FenceError> {
        match self.fence_state().await? {
            Fence::Ours(mark) if mark.reason == <&str>::from(FenceReason::Isolated) => {
                self.patch(json!({"standby_cluster": null, OWN_KEY: {"fence": null}}))
                    .await
            }
            Fence::Ours(_) => Err(FenceError::CalledOff(
                "GoldDR was promoted: Gold stays a standby that follows it",
            )),
            Fence::Foreign => Err(FenceError::CalledOff(
                "the standby_cluster was written by an operator",
            )),
            Fence::No => Ok(()),
        }
    }

    async fn patch(&self, body: Value) -> Result<(), FenceError> {
        Ok(crate::act::promoter::patch_config(&self.reader, &body).await?)
    }
}

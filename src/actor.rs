//! Acting on a lost Gold: gather the facts the guards need (local Patroni
//! role, the Patroni config), decide, and promote. Runs beside the probe
//! loop, never inside it, so a slow API server cannot stall probing or
//! liveness.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::detector::Verdict;
use crate::events::Events;
use crate::guards::{self, ClusterConfig, Decision, Facts, Role, Veto};
use crate::metrics::Metrics;
use crate::patroni::LocalPatroni;
use crate::promoter::{Audit, ConfigMapPromoter, PromoteError, Promotion};
use crate::status::{ClusterStatus, Status};

pub struct Actor {
    pub patroni: LocalPatroni,
    pub promoter: ConfigMapPromoter,
    pub events: Option<Events>,
    pub identity: String,
}

#[derive(Debug)]
pub enum ActReport {
    Vetoed(Vec<Veto>),
    Promoted { audit: Audit },
    AlreadyPromoted,
    CalledOff(&'static str),
    Failed(PromoteError),
}

impl Actor {
    async fn facts(&self) -> (Role, Result<ClusterConfig, PromoteError>) {
        tokio::join!(self.patroni.role(), self.promoter.inspect())
    }

    /// What the cluster beside us looks like now, for `/status` and metrics.
    pub async fn observe(&self) -> ClusterStatus {
        let (role, config) = self.facts().await;
        let mut view = ClusterStatus {
            role: Some(role),
            observed_at: Some(SystemTime::now()),
            ..Default::default()
        };
        match config {
            Ok(c) => {
                view.standby = Some(c.standby);
                view.paused = Some(c.paused);
                view.disarmed = Some(c.disarmed);
            }
            Err(e) => view.config_error = Some(e.to_string()),
        }
        view
    }

    /// Decide with fresh facts and, if every guard agrees, promote.
    pub async fn act(
        self: Arc<Self>,
        target_known: bool,
        reason: String,
        verdict: watch::Receiver<Verdict>,
    ) -> ActReport {
        let (role, config) = self.facts().await;
        let facts = Facts {
            target_known,
            armed: true,
            role,
            config: config.map_err(|e| e.to_string()),
        };
        match guards::decide(&facts) {
            Decision::Veto(vetoes) => ActReport::Vetoed(vetoes),
            Decision::AlreadyPromoted => ActReport::AlreadyPromoted,
            Decision::Promote => {
                let audit = Audit {
                    at: SystemTime::now(),
                    by: self.identity.clone(),
                    reason,
                };
                match self.promoter.promote(&audit, &verdict).await {
                    Ok(Promotion::Written) => ActReport::Promoted { audit },
                    Ok(Promotion::AlreadyPromoted) => ActReport::AlreadyPromoted,
                    Err(PromoteError::CalledOff(why)) => ActReport::CalledOff(why),
                    Err(e) => ActReport::Failed(e),
                }
            }
        }
    }
}

/// Refreshes the cluster view every `interval` until `shutdown`.
pub async fn observe_cluster(
    actor: Arc<Actor>,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let view = tokio::select! {
            _ = shutdown.cancelled() => return,
            v = actor.observe() => v,
        };
        metrics.set_cluster(
            view.role.as_ref().map_or("unknown", Role::as_str),
            view.paused,
            view.disarmed,
        );
        status.send_modify(|s| s.cluster = view);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

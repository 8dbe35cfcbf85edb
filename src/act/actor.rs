//! Acting on a lost Gold: gather the facts the guards need (local Patroni
//! role, the DR cluster's config, the local WAL receiver, the witnesses),
//! decide, and promote. Runs beside the probe loop, never inside it, so a
//! slow API server cannot stall probing or liveness.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use tokio::sync::watch;

use crate::act::promoter::{
    self, AnyPromoter, Audit, ConfigMapPromoter, PatroniApiPromoter, PgPromoter, PromoteError, Promoter,
    Promotion,
};
use crate::config::{Config, GoldConcern, Mode, PromoterKind};
use crate::decide::detector::Verdict;
use crate::decide::guards::{self, Decision, Facts, Limits, Role, Veto, Wal};
use crate::observe::local_pg::LocalPg;
use crate::observe::patroni::{LocalPatroni, PatroniClient};
use crate::observe::witness::{self, Testimony, Witness};
use crate::report::events::Events;
use crate::report::metrics::Metrics;
use crate::report::status::{ClusterStatus, Status};

pub struct Actor {
    /// `None` for a plain standby (`pg-promote`): it is its own leader.
    pub patroni: Option<LocalPatroni>,
    pub promoter: AnyPromoter,
    pub local_pg: LocalPg,
    pub witnesses: Vec<Witness>,
    pub http: reqwest::Client,
    pub limits: Limits,
    pub timeout: Duration,
    pub events: Option<Events>,
    pub identity: String,
    /// When the WAL receiver was last seen streaming: the stale-data guard's
    /// memory, since the receiver's own row vanishes once Gold is gone.
    last_streaming: Mutex<Option<SystemTime>>,
}

#[derive(Debug)]
pub enum ActReport {
    Vetoed(Vec<Veto>),
    DryRun { would: String },
    Promoted { audit: Audit },
    AlreadyPromoted,
    CalledOff(&'static str),
    Failed(PromoteError),
}

/// What the local PostgreSQL said, for `/status`.
struct WalView {
    status: Option<String>,
    last_msg_age: Option<Duration>,
    wal: Wal,
}

impl Actor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        patroni: Option<LocalPatroni>,
        promoter: AnyPromoter,
        local_pg: LocalPg,
        witnesses: Vec<Witness>,
        limits: Limits,
        timeout: Duration,
        events: Option<Events>,
        identity: String,
    ) -> Result<Actor, reqwest::Error> {
        Ok(Actor {
            patroni,
            promoter,
            local_pg,
            witnesses,
            http: reqwest::Client::builder().no_proxy().timeout(timeout).build()?,
            limits,
            timeout,
            events,
            identity,
            last_streaming: Mutex::new(None),
        })
    }

    async fn role(&self) -> Role {
        match &self.patroni {
            Some(p) => p.role().await,
            None => Role::StandbyLeader,
        }
    }

    async fn wal(&self) -> Result<WalView, String> {
        let r = self.local_pg.wal_receiver().await?;
        let now = SystemTime::now();
        let streaming_for = match r.status.as_deref() {
            Some("streaming") => Some(r.last_msg_age.unwrap_or_default()),
            _ => None,
        };
        let remembered = {
            let mut last = self.last_streaming.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(age) = streaming_for {
                *last = now.checked_sub(age);
            }
            *last
        };
        let since_streaming = remembered.and_then(|t| now.duration_since(t).ok());
        let data_age = [since_streaming, r.last_msg_age, r.replay_age]
            .into_iter()
            .flatten()
            .min();
        Ok(WalView {
            status: r.status,
            last_msg_age: r.last_msg_age,
            wal: Wal {
                streaming_for,
                data_age,
            },
        })
    }

    async fn testimonies(&self) -> Vec<(String, Testimony)> {
        join_all(
            self.witnesses
                .iter()
                .map(|w| async move { (w.to_string(), witness::ask(w, &self.http, self.timeout).await) }),
        )
        .await
    }

    async fn facts(&self, target_known: bool) -> Facts {
        let (role, config, wal, witnesses) = tokio::join!(
            self.role(),
            self.promoter.inspect(),
            self.wal(),
            self.testimonies()
        );
        Facts {
            target_known,
            role,
            config: config.map_err(|e| e.to_string()),
            wal: wal.map(|w| w.wal),
            witnesses,
        }
    }

    /// What the cluster beside us looks like now, for `/status` and metrics.
    /// Also what keeps the stale-data guard's memory current.
    pub async fn observe(&self) -> ClusterStatus {
        let (role, config, wal) = tokio::join!(self.role(), self.promoter.inspect(), self.wal());
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
        match wal {
            Ok(w) => {
                view.wal_receiver = w.status;
                view.wal_last_message_age_seconds = w.last_msg_age.map(|d| d.as_secs_f64());
                view.data_age_seconds = w.wal.data_age.map(|d| d.as_secs_f64());
            }
            Err(e) => view.local_pg_error = Some(e),
        }
        view
    }

    /// Decides with fresh facts and, if every guard agrees, promotes (or in
    /// dry-run, says what it would have done).
    pub async fn act(
        self: Arc<Self>,
        target_known: bool,
        reason: String,
        verdict: watch::Receiver<Verdict>,
    ) -> ActReport {
        let facts = self.facts(target_known).await;
        match guards::decide(&facts, &self.limits) {
            Decision::Veto(vetoes) => ActReport::Vetoed(vetoes),
            Decision::AlreadyPromoted => ActReport::AlreadyPromoted,
            Decision::Promote if self.limits.mode == Mode::DryRun => ActReport::DryRun {
                would: format!("would promote {} ({reason})", self.promoter.object()),
            },
            Decision::Promote => self.promote(reason, &verdict).await,
        }
    }

    /// An operator's `promote`: the same guards (Gold's verdict is the
    /// operator's call), or none with `force`.
    pub async fn act_manually(&self, reason: String, force: bool) -> ActReport {
        if !force {
            match guards::decide(&self.facts(true).await, &self.limits) {
                Decision::Veto(vetoes) => return ActReport::Vetoed(vetoes),
                Decision::AlreadyPromoted => return ActReport::AlreadyPromoted,
                Decision::Promote => {}
            }
        }
        let (_tx, lost) = watch::channel(Verdict::Lost);
        self.promote(reason, &lost).await
    }

    async fn promote(&self, reason: String, verdict: &watch::Receiver<Verdict>) -> ActReport {
        let audit = Audit {
            at: SystemTime::now(),
            by: self.identity.clone(),
            reason,
        };
        match promoter::promote(&self.promoter, &audit, verdict).await {
            Ok(Promotion::Written) => ActReport::Promoted { audit },
            Ok(Promotion::AlreadyPromoted) => ActReport::AlreadyPromoted,
            Err(PromoteError::CalledOff(why)) => ActReport::CalledOff(why),
            Err(e) => ActReport::Failed(e),
        }
    }
}

/// The actor the settings ask for; `None` when the promoter is `none`.
pub fn build<G: GoldConcern>(
    config: &Config<G>,
    kube: Option<&kube::Client>,
    namespace: &str,
) -> Result<Option<Actor>, reqwest::Error> {
    let timeout = config.probe_timeout;
    let local_pg = LocalPg::new(&config.local_pg, timeout);
    let pg_object = format!("PostgreSQL {}:{}", config.local_pg.host, config.local_pg.port);
    let patroni = PatroniClient::new(&config.patroni, timeout)?;
    let (promoter, events) = match (config.promoter, kube) {
        (PromoterKind::None, _) => return Ok(None),
        (PromoterKind::Configmap, Some(client)) => {
            let p = ConfigMapPromoter::new(client.clone(), namespace, &config.patroni_configmap);
            let events = Events::new(client.clone(), &config.identity, p.reference());
            (AnyPromoter::ConfigMap(p), Some(events))
        }
        // Settings that need Kubernetes always come with a client.
        (PromoterKind::Configmap, None) => return Ok(None),
        (PromoterKind::PatroniApi, _) => (
            AnyPromoter::PatroniApi(PatroniApiPromoter::new(patroni.clone())),
            None,
        ),
        (PromoterKind::PgPromote, _) => (
            AnyPromoter::PgPromote(PgPromoter::new(local_pg.clone(), pg_object)),
            None,
        ),
    };
    let patroni = config.uses_patroni().then(|| LocalPatroni::new(patroni));
    let limits = Limits {
        mode: config.mode,
        wal_receiver_fresh: config.wal_receiver_fresh,
        max_data_age: config.max_data_age,
        allow_stale_promotion: config.allow_stale_promotion,
        witness_unreachable_blocks: config.witness_unreachable_blocks,
    };
    Actor::new(
        patroni,
        promoter,
        local_pg,
        config.witnesses.clone(),
        limits,
        timeout,
        events,
        config.identity.clone(),
    )
    .map(Some)
}

/// Refreshes the cluster view every `interval` until `shutdown`.
pub async fn observe_cluster(
    actor: Arc<Actor>,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    interval: Duration,
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

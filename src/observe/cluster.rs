//! The one observation path: everything the guards need to know about the DR
//! cluster beside us, Gold's signals and the witnesses, gathered together. The loop
//! runs it every interval and at once when Gold is lost; `check` and
//! `promote` run it once. `/status` shows what it found, and a decision
//! only ever uses an observation that started after Gold was declared lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::observe::cluster_config::{ClusterConfig, ConfigReader, DisarmSwitch};
use crate::observe::local_pg::LocalPg;
use crate::observe::patroni::{PatroniClient, Role};
use crate::observe::signal::{self, Reading, Signal};
use crate::observe::wal::Lsn;
use crate::observe::witness::{self, Answer, Witness};

/// What the local PostgreSQL says about replication from Gold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wal {
    /// `pg_stat_wal_receiver.status` is `streaming`, and it heard from Gold
    /// this long ago.
    pub streaming_for: Option<Duration>,
    /// How old the newest data from Gold is: the least of the time since the
    /// receiver was last seen streaming, since its last message, and since
    /// the last replayed commit. `None`: unknown.
    pub data_age: Option<Duration>,
}

/// The local WAL receiver as seen, with the stale-data guard's view of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WalView {
    /// `pg_stat_wal_receiver.status` (`streaming`, ...), if one runs.
    pub receiver: Option<String>,
    pub last_msg_age: Option<Duration>,
    pub wal: Wal,
    /// How far Gold's WAL has been received and replayed here.
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
}

/// One observation of the DR cluster and the witnesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// When gathering started: a decision needs one that started after Gold
    /// was declared lost.
    pub started: SystemTime,
    pub role: Role,
    /// `Err` when the config could not be read or understood.
    pub config: Result<ClusterConfig, String>,
    /// The disarm switches this site can be disarmed with.
    pub disarm_switches: &'static [DisarmSwitch],
    /// `Err` when the local PostgreSQL could not be asked.
    pub wal: Result<WalView, String>,
    /// Each of `WATCHDOG_GOLD_SIGNALS`, as checked.
    pub signals: Vec<(String, Reading)>,
    /// Each of `WATCHDOG_WITNESSES` with its answer.
    pub witnesses: Vec<(Witness, Answer)>,
}

/// Whom the observer asks about Gold besides its own probe.
#[derive(Debug, Clone, Default)]
pub struct Others {
    pub signals: Vec<Signal>,
    pub witnesses: Vec<Witness>,
}

pub struct ClusterObserver {
    /// `None` for a plain standby (`pg-promote`): it is its own leader.
    patroni: Option<PatroniClient>,
    config: ConfigReader,
    local_pg: LocalPg,
    others: Others,
    signal_http: reqwest::Client,
    witness_http: reqwest::Client,
    timeout: Duration,
    /// When the WAL receiver was last seen streaming: the stale-data guard's
    /// memory, since the receiver's own row vanishes once Gold is gone. Owned
    /// by the one task that observes.
    last_streaming: Option<SystemTime>,
}

impl ClusterObserver {
    pub fn new(
        patroni: Option<PatroniClient>,
        config: ConfigReader,
        local_pg: LocalPg,
        others: Others,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(ClusterObserver {
            patroni,
            config,
            local_pg,
            others,
            signal_http: signal::http_client(timeout)?,
            witness_http: witness::http_client(timeout)?,
            timeout,
            last_streaming: None,
        })
    }

    pub fn config_reader(&self) -> &ConfigReader {
        &self.config
    }

    async fn role(&self) -> Role {
        match &self.patroni {
            Some(p) => p.role().await,
            None => Role::StandbyLeader,
        }
    }

    async fn answers(&self) -> Vec<(Witness, Answer)> {
        futures::future::join_all(
            self.others
                .witnesses
                .iter()
                .map(|w| async move { (w.clone(), witness::ask(w, &self.witness_http, self.timeout).await) }),
        )
        .await
    }

    /// Asks everything at once, within the timeout each.
    pub async fn observe(&mut self) -> Observation {
        let started = SystemTime::now();
        let (role, config, receiver, signals, witnesses) = tokio::join!(
            self.role(),
            self.config.read(),
            self.local_pg.wal_receiver(),
            signal::check_all(&self.others.signals, &self.signal_http, self.timeout),
            self.answers()
        );
        let wal = receiver.map(|r| {
            let now = SystemTime::now();
            let streaming_for = match r.status.as_deref() {
                Some("streaming") => Some(r.last_msg_age.unwrap_or_default()),
                _ => None,
            };
            if let Some(age) = streaming_for {
                self.last_streaming = now.checked_sub(age);
            }
            let since_streaming = self.last_streaming.and_then(|t| now.duration_since(t).ok());
            let data_age = [since_streaming, r.last_msg_age, r.replay_age]
                .into_iter()
                .flatten()
                .min();
            WalView {
                receiver: r.status,
                last_msg_age: r.last_msg_age,
                wal: Wal {
                    streaming_for,
                    data_age,
                },
                received: r.received,
                replayed: r.replayed,
            }
        });
        Observation {
            started,
            role,
            config: config.map_err(|e| e.to_string()),
            disarm_switches: self.config.switches(),
            wal,
            signals,
            witnesses,
        }
    }
}

/// Observes every `interval`, and at once when `now` is notified, sending
/// each observation to the loop, until `shutdown`.
pub async fn run(
    mut observer: ClusterObserver,
    interval: Duration,
    now: Arc<Notify>,
    observations: mpsc::Sender<Observation>,
    shutdown: CancellationToken,
) {
    loop {
        let observation = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = observer.observe() => o,
        };
        if observations.send(observation).await.is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            _ = now.notified() => {}
        }
    }
}

//! The guard role's shell, beside Gold's Patroni: every interval one round —
//! a probe of GoldDR through the reverse Transport Service, the local
//! Patroni's role and Gold's dynamic config, every witness — fed to the pure
//! [`GuardState`]; the fence it decides is written through the local
//! Patroni's REST API. Only the guard beside Gold's leader ever writes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{ConstantBuilder, Retryable};

use futures::future::join_all;
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::act::fence::Fencer;
use crate::app::{self, Error, Kube};
use crate::config::GuardConfig;
use crate::decide::fence::{Action, FenceReason, Gate, GoldDrSeen, Sight};
use crate::decide::guard::{GuardEffect, GuardRound, GuardState};
use crate::decide::quorum::{self, Vote};
use crate::decide::rejoin::{self, Rejoin};
use crate::observe::cluster_config::PatroniConfigReader;
use crate::observe::dynamic_config::{self, Fence, FenceMark};
use crate::observe::patroni::{Member, PatroniClient, Role};
use crate::observe::probe::{BlindReason, Outcome};
use crate::observe::probe::{PgProbe, Probe, ProbeReport};
use crate::observe::target::{Endpoint, Target};
use crate::observe::wal::{self, HistoryError, Lsn, WalPoint};
use crate::observe::witness;
use crate::report::events::Events;
use crate::report::guard::{GuardMetrics, GuardView};
use crate::report::http;
use crate::report::webhook::Webhook;

/// Gold's config as the guard needs it: the fence and the disarm switch.
async fn read_fence(reader: &PatroniConfigReader) -> (Result<Fence, String>, bool) {
    match reader.read_text().await {
        Err(e) => (Err(e.to_string()), false),
        Ok(text) => {
            let disarmed = dynamic_config::facts(&text).is_ok_and(|f| f.disarmed);
            (dynamic_config::fence(&text).map_err(|e| e.to_string()), disarmed)
        }
    }
}

/// What the guard (and the gate) ask each round.
pub struct GuardObserver {
    config: Arc<GuardConfig>,
    probe: PgProbe,
    /// GoldDR's address: fixed, or followed on the reverse Transport Service.
    target: watch::Receiver<Target>,
    patroni: PatroniClient,
    fencer: Fencer,
    witness_http: reqwest::Client,
}

impl GuardObserver {
    pub fn new(config: Arc<GuardConfig>, target: watch::Receiver<Target>) -> Result<Self, Error> {
        let timeout = config.probe_timeout;
        let probe = PgProbe::new(config.golddr.clone(), timeout)?;
        let patroni = PatroniClient::new(&config.patroni, timeout).map_err(Error::HttpClient)?;
        let fencer = Fencer {
            reader: PatroniConfigReader {
                patroni: patroni.clone(),
            },
            section: config.fencing.standby_cluster.clone(),
        };
        Ok(GuardObserver {
            probe,
            target,
            patroni,
            fencer,
            witness_http: witness::http_client(timeout).map_err(Error::HttpClient)?,
            config,
        })
    }

    /// GoldDR's probe, the local role, Gold's fence and disarm switch, and
    /// every witness's vote, all at once, each within the timeout.
    pub async fn observe(&self) -> (ProbeReport, Sight, Member) {
        let timeout = self.config.probe_timeout;
        let target = self.golddr();
        let (report, local, (fence, disarmed), ballots) = tokio::join!(
            async {
                match &target {
                    Ok(endpoint) => self.probe.probe(endpoint).await,
                    // Never a guessed address: unknown is blind, so never
                    // counted as GoldDR out of reach.
                    Err(why) => ProbeReport {
                        outcome: Outcome::Blind(BlindReason::ProbeConfig),
                        duration: Duration::ZERO,
                        error: Some(why.clone()),
                        wal: None,
                    },
                }
            },
            self.patroni.member(),
            read_fence(&self.fencer.reader),
            join_all(self.config.quorum.witnesses.iter().map(|w| async move {
                quorum::vote(
                    w,
                    &witness::ask(w, &self.witness_http, timeout).await,
                    self.config.quorum.witness_max_age,
                )
            }))
        );
        let sight = Sight {
            // Fenced, Gold's leader is a standby leader: still the one to
            // act. With no leader at all (the gate refusing every promotion
            // while GoldDR is writable), any member's guard may: the write
            // re-reads the config first and Patroni refuses a racing one.
            leader: matches!(local.role, Role::Primary | Role::StandbyLeader)
                || (local.role == Role::Replica && local.unlocked),
            golddr: report.outcome.into(),
            witnesses_seeing_gold: ballots.iter().filter(|b| b.vote == Vote::SeesGold).count(),
            fence,
            disarmed,
        };
        (report, sight, local)
    }

    /// GoldDR's address now, or why it is unknown.
    pub fn golddr(&self) -> Result<Endpoint, String> {
        match &*self.target.borrow() {
            Target::Known { endpoint, .. } => Ok(endpoint.clone()),
            Target::Unknown { reason } => Err(format!("GoldDR's address is unknown: {reason}")),
        }
    }
}

impl GuardObserver {
    /// The rejoin report: GoldDR's timeline history against Gold's last
    /// position. A few tries: GoldDR has just been reached, a busy moment
    /// must not cost the report.
    async fn rejoin(&self, gold: WalPoint) -> Rejoin {
        let bound = self.config.probe_timeout.max(Duration::from_secs(2));
        let golddr = match self.golddr() {
            Ok(e) => e,
            Err(why) => return rejoin::assess(Some(gold), Err(why)),
        };
        let read = || wal::golddr_history(&self.probe, &golddr, bound);
        let history = read
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_secs(1))
                    .with_max_times(4),
            )
            .when(|e| matches!(e, HistoryError::Query(_)))
            .await
            .map_err(|e| e.to_string());
        rejoin::assess(Some(gold), history)
    }
}

/// The Kubernetes client the guard needs (the reverse Transport Service) or
/// wants (Events, in a pod).
pub async fn kube_for(config: &GuardConfig) -> Result<Option<Kube>, Error> {
    if !config.uses_kubernetes() {
        return Ok(None);
    }
    match app::kube_client().await {
        Ok(kube) => Ok(Some(kube)),
        Err(e) if config.golddr.address.service().is_none() => {
            warn!(error = %crate::error_chain(&e), "no Kubernetes client: fences are not recorded as Events");
            Ok(None)
        }
        Err(e) => {
            error!(error = %crate::error_chain(&e),
                "WATCHDOG_GOLDDR_TS_SERVICE needs the Kubernetes API: run in a pod with a service account, or set KUBECONFIG");
            Err(Error::NoKubernetes)
        }
    }
}

fn namespace(config: &GuardConfig, kube: Option<&Kube>) -> String {
    config
        .namespace
        .clone()
        .or_else(|| kube.map(|k| k.client.default_namespace().to_string()))
        .unwrap_or_else(|| "default".to_string())
}

/// GoldDR's address for a one-shot command (the gate, `check --guard`): the
/// Service read once, or the static address.
async fn target_once(config: &GuardConfig) -> Result<watch::Receiver<Target>, Error> {
    let kube = kube_for(config).await?;
    let namespace = namespace(config, kube.as_ref());
    let (tx, rx, discovery) = app::target_channel(&config.golddr.address, &namespace, kube.as_ref())?;
    if let Some(d) = discovery {
        tx.send_replace(d.read_once().await);
    }
    Ok(rx)
}

pub async fn run(
    config: GuardConfig,
    kube: Option<Kube>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let config = Arc::new(config);
    let namespace = namespace(&config, kube.as_ref());
    let (target_tx, target_rx, discovery) =
        app::target_channel(&config.golddr.address, &namespace, kube.as_ref())?;
    let observer = Arc::new(GuardObserver::new(config.clone(), target_rx.clone())?);
    // GoldDR's history is read off the loop: the guard keeps its rounds.
    let (rejoin_tx, mut rejoin_rx) = tokio::sync::mpsc::channel::<Rejoin>(1);
    let mut state = GuardState::new(
        config.thresholds,
        config.fencing.fence_after,
        config.mode,
        Instant::now(),
    );
    let (published, view_state) = watch::channel(state.clone());
    let metrics = Arc::new(GuardMetrics::new(view_state.clone()));
    if let Some(d) = discovery {
        d.spawn(
            metrics.kube.discovery_errors(),
            target_tx.clone(),
            shutdown.clone(),
        );
    }
    let notify = Notify {
        webhook: match &config.webhook_url {
            Some(url) => Some(
                Webhook::spawn(
                    url.expose().to_string(),
                    &config.identity,
                    metrics.webhook.clone(),
                )
                .map_err(Error::HttpClient)?,
            ),
            None => None,
        },
        // Events about this pod: the guard writes through Patroni, so the
        // pod beside Gold's leader is where `kubectl describe` looks.
        events: kube.map(|k| {
            let pod = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(config.identity.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            };
            Events::new(
                k.client,
                &config.identity,
                pod,
                k.server,
                metrics.kube.api_errors("create_event"),
            )
        }),
    };
    let view = GuardView {
        state: view_state,
        target: target_rx.clone(),
        metrics: metrics.clone(),
        config: config.clone(),
    };
    let stale = http::stale_after(config.probe_interval, config.probe_timeout);
    let listen_addr = listener.local_addr().unwrap_or(config.listen_addr);
    let server = tokio::spawn(
        axum::serve(listener, http::routes(view, stale))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let mut golddr = target_rx.borrow().clone();
    info!(
        golddr = %golddr,
        patroni = %config.patroni.url,
        witnesses = config.quorum.witnesses.len(),
        fence_after = %humantime::format_duration(config.fencing.fence_after),
        mode = config.mode.as_str(),
        identity = %config.identity,
        events = notify.events.is_some(),
        listen_addr = %listen_addr,
        interval = %humantime::format_duration(config.probe_interval),
        "guard started"
    );
    let mut interval = tokio::time::interval(config.probe_interval);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(rejoin) = rejoin_rx.recv() => {
                report_rejoin(&rejoin, &notify);
                metrics.rejoined();
                state.rejoined(rejoin, SystemTime::now());
                published.send_replace(state.clone());
                continue;
            }
            _ = interval.tick() => {}
        }
        let started = Instant::now();
        if *target_rx.borrow() != golddr {
            golddr = target_rx.borrow().clone();
            warn!(golddr = %golddr, "GoldDR's address changed: the reverse Transport Service was re-synced");
        }
        let (report, sight, local) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            observed = observer.observe() => observed,
        };
        metrics.probe.observe_probe(&report);
        let effects = state.round(
            GuardRound {
                started,
                probe: report,
                sight,
                local,
            },
            SystemTime::now(),
        );
        for effect in effects {
            match effect {
                GuardEffect::Verdict(t) => {
                    metrics.probe.verdict_entered(t.to);
                    info!(from = %t.from, to = %t.to, %golddr, "golddr verdict changed");
                }
                GuardEffect::Saw => log_sight(&state),
                GuardEffect::Rejoined(gold) => {
                    let (observer, tx) = (observer.clone(), rejoin_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(observer.rejoin(gold).await).await;
                    });
                }
                GuardEffect::Withheld(action) => {
                    let text = format!(
                        "{}: would {} Gold now; nothing written",
                        config.mode.as_str().to_uppercase(),
                        action.describe()
                    );
                    warn!(action = %action.describe(), mode = config.mode.as_str(), "{text}");
                    notify.say(false, "FenceWithheld", "Withhold", text);
                }
                GuardEffect::Write(action) => {
                    let result = write(&observer, &action, &config.identity).await;
                    let now = SystemTime::now();
                    report_write(&action, &result, &golddr, &notify);
                    if let (Action::Fence(r) | Action::Remark(r), Ok(())) = (&action, &result) {
                        metrics.fenced(*r);
                    }
                    state.written(action, result, now, Instant::now());
                }
            }
        }
        published.send_replace(state.clone());
    }
    state.stop();
    published.send_replace(state);
    info!("guard stopped");
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Http(e)),
        Err(join) => Err(Error::Http(std::io::Error::other(join))),
    }
}

/// Where a decision is said besides the log: the webhook and an Event.
struct Notify {
    webhook: Option<Webhook>,
    events: Option<Events>,
}

impl Notify {
    fn say(&self, warning: bool, reason: &'static str, action: &'static str, text: String) {
        if let Some(events) = &self.events {
            let (events, note) = (events.clone(), text.clone());
            tokio::spawn(async move { events.publish(warning, reason, action, note).await });
        }
        if let Some(w) = &self.webhook {
            w.send(text);
        }
    }
}

async fn write(observer: &GuardObserver, action: &Action, identity: &str) -> Result<(), String> {
    let fencer = &observer.fencer;
    let mark = |reason: FenceReason| FenceMark {
        reason: <&str>::from(reason).to_string(),
        by: identity.to_string(),
        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
    };
    let result = match action {
        Action::Fence(r) | Action::Remark(r) => {
            let golddr = observer.golddr()?;
            fencer.fence(*r, mark(*r), &golddr).await
        }
        Action::Unfence => fencer.unfence().await,
        Action::Nothing => Ok(()),
    };
    result.map_err(|e| crate::error_chain(&e))
}

/// One line per write, and the alert.
fn report_write(action: &Action, result: &Result<(), String>, golddr: &Target, notify: &Notify) {
    let (warning, reason, text) = match (action, result) {
        (Action::Fence(reason), Ok(())) => {
            let why = match reason {
                FenceReason::GolddrPromoted => "GoldDR answers as a writable primary",
                FenceReason::Isolated => "Gold is cut off from GoldDR and every witness",
            };
            error!(action = %action.describe(), reason = <&str>::from(reason), golddr = %golddr,
                "FENCED: Gold is now a standby cluster following GoldDR");
            (
                true,
                "GoldFenced",
                format!(
                    "FENCED Gold: {why}; Gold is now a standby cluster following GoldDR at {golddr}: no Gold member takes writes"
                ),
            )
        }
        (Action::Remark(_), Ok(())) => {
            warn!(action = %action.describe(), "GoldDR was promoted while Gold was fenced for isolation: the fence stays");
            (
                true,
                "GoldFenced",
                "GoldDR was promoted while Gold was fenced: Gold stays a standby that follows GoldDR"
                    .to_string(),
            )
        }
        (Action::Unfence, Ok(())) => {
            info!(action = %action.describe(), golddr = %golddr,
                "UNFENCED: the links are back and GoldDR is still a standby; Gold may take writes again");
            (
                false,
                "GoldUnfenced",
                "UNFENCED Gold: the links are back and GoldDR was never promoted; Gold is the primary site again"
                    .to_string(),
            )
        }
        (_, Err(e)) => {
            error!(action = %action.describe(), error = %e, "fencing write failed; will try again next round");
            (
                true,
                "FenceFailed",
                format!("could not {} Gold: {e}", action.describe()),
            )
        }
        (Action::Nothing, Ok(())) => return,
    };
    notify.say(warning, reason, "Fence", text);
}

/// One line and the alert: Gold follows GoldDR, and what only Gold had.
fn report_rejoin(r: &Rejoin, notify: &Notify) {
    let show = |l: Option<Lsn>| l.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into());
    match (&r.lost, &r.error) {
        (Some(lost), _) => warn!(
            gold_timeline = r.gold_timeline.unwrap_or_default(),
            golddr_timeline = r.golddr_timeline.unwrap_or_default(),
            lost_from = %lost.from,
            lost_to = %lost.to,
            lost_bytes = lost.bytes,
            "REJOINED with lost writes: Gold follows GoldDR; WAL only on Gold's old timeline"
        ),
        (None, Some(e)) => warn!(
            gold_last = %show(r.gold_last),
            switchpoint = %show(r.switchpoint),
            error = %e,
            "REJOINED: Gold follows GoldDR; the writes only Gold had cannot be told"
        ),
        (None, None) => info!(
            gold_last = %show(r.gold_last),
            switchpoint = %show(r.switchpoint),
            "REJOINED: Gold follows GoldDR; no write was lost"
        ),
    }
    notify.say(
        r.lost.is_some() || r.error.is_some(),
        "GoldRejoined",
        "Rejoin",
        format!("REJOINED: {}", r.summary),
    );
}

/// One line when what the guard sees changes.
fn log_sight(state: &GuardState) {
    let Some((round, _)) = state.last() else {
        return;
    };
    let s = &round.sight;
    let fence = match &s.fence {
        Ok(Fence::No) => "none",
        Ok(Fence::Ours(_)) => "ours",
        Ok(Fence::Foreign) => "foreign",
        Err(_) => "unreadable",
    };
    let isolated = crate::decide::fence::isolated(s);
    let golddr: &str = s.golddr.into();
    if isolated {
        warn!(
            leader = s.leader,
            golddr,
            witnesses_seeing_gold = s.witnesses_seeing_gold,
            fence,
            disarmed = s.disarmed,
            "gold is isolated: GoldDR out of reach and no witness sees Gold"
        );
    } else {
        info!(
            leader = s.leader,
            golddr,
            witnesses_seeing_gold = s.witnesses_seeing_gold,
            fence,
            disarmed = s.disarmed,
            "what the guard sees changed"
        );
    }
}

/// `gate`, Patroni's `postgresql.pre_promote` at Gold: may a Gold member be
/// promoted now? One round of the guard's observation, within one probe
/// timeout and a half, one line saying why; `true` allows.
pub async fn gate(config: GuardConfig) -> bool {
    let bound = config.probe_timeout.mul_f64(1.5);
    let started = Instant::now();
    let observe = async {
        let target = target_once(&config).await?;
        let observer = GuardObserver::new(Arc::new(config), target)?;
        Ok::<_, Error>(observer.observe().await)
    };
    let decision = match tokio::time::timeout(bound, observe).await {
        Err(_) => Gate::Refuse("no answer within the gate's bound"),
        Ok(Err(e)) => {
            error!(error = %crate::error_chain(&e), "gate: refusing the promotion: cannot set up");
            return false;
        }
        Ok(Ok((_, sight, _))) => match &sight.fence {
            Err(_) => Gate::Refuse("Gold's dynamic config cannot be read: the fence is unknown"),
            Ok(fence) => crate::decide::fence::gate(sight.golddr, fence, sight.witnesses_seeing_gold),
        },
    };
    let ms = started.elapsed().as_millis() as u64;
    match decision {
        Gate::Allow(why) => {
            info!(
                decision = "allow",
                reason = why,
                duration_ms = ms,
                "gate: promotion allowed"
            );
            true
        }
        Gate::Refuse(why) => {
            warn!(
                decision = "refuse",
                reason = why,
                duration_ms = ms,
                "gate: promotion refused"
            );
            false
        }
    }
}

/// `check --guard`: the guard's settings, and everything it relies on, one
/// line each: GoldDR through the reverse Transport Service, the local
/// Patroni, Gold's dynamic config (the fence and `use_pg_rewind`, without
/// which a fenced Gold cannot follow a promoted GoldDR), the rewind's
/// prerequisites, the lost-writes report's grant, and each witness.
pub async fn check(config: GuardConfig) -> bool {
    let line = |ok: bool, what: &str, detail: &str| {
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
        ok
    };
    let observer = match target_once(&config)
        .await
        .and_then(|target| GuardObserver::new(Arc::new(config), target))
    {
        Ok(o) => o,
        Err(e) => return line(false, "set-up", &crate::error_chain(&e)),
    };
    let (report, sight, local) = observer.observe().await;
    let golddr = match observer.golddr() {
        Ok(e) => e.to_string(),
        Err(why) => why,
    };
    let why = report.error.as_deref().unwrap_or(report.outcome.reason());
    let mut ok = match sight.golddr {
        GoldDrSeen::Standby => line(
            true,
            "golddr",
            &format!("a standby at {golddr} (reverse Transport Service)"),
        ),
        GoldDrSeen::Writable => line(
            false,
            "golddr",
            &format!("{golddr} answers as a writable primary: the guard would fence Gold at once"),
        ),
        GoldDrSeen::Unreachable => line(false, "golddr", &format!("unreachable at {golddr}: {why}")),
        GoldDrSeen::Blind => line(false, "golddr", &format!("cannot be judged at {golddr}: {why}")),
    };
    let url = observer.patroni.url();
    ok &= match &local.role {
        Role::Unreachable(e) => line(false, "patroni", &format!("unreachable at {url}: {e}")),
        role => line(
            true,
            "patroni",
            &format!(
                "{} at {url}: this guard {}",
                role.as_str(),
                if sight.leader {
                    "acts"
                } else {
                    "observes (only the leader's guard acts)"
                }
            ),
        ),
    };
    ok &= match &sight.fence {
        Err(e) => line(false, "gold config", e),
        Ok(Fence::No) => line(true, "gold config", "no standby_cluster: Gold is not fenced"),
        Ok(Fence::Ours(m)) => line(
            true,
            "gold config",
            &format!("fenced by this tool ({} by {} at {})", m.reason, m.by, m.at),
        ),
        Ok(Fence::Foreign) => line(
            true,
            "gold config",
            "an operator's standby_cluster is in force: the guard leaves it alone",
        ),
    };
    if sight.disarmed {
        line(
            true,
            "disarmed",
            "patroni_dr_watchdog.disarmed is set: the guard writes nothing",
        );
    }
    ok &= match observer
        .fencer
        .reader
        .read_text()
        .await
        .map(|t| rewind_setting(&t))
    {
        Ok(Some(true)) => line(true, "use_pg_rewind", "true in Gold's dynamic config"),
        Ok(_) => line(
            false,
            "use_pg_rewind",
            "not true in Gold's dynamic config: a fenced Gold could not be rewound to follow a promoted \
             GoldDR; set postgresql.use_pg_rewind: true (patronictl edit-config)",
        ),
        Err(e) => line(false, "use_pg_rewind", &crate::error_chain(&e)),
    };
    ok &= check_golddr_settings(&observer, &line).await;
    for w in &observer.config.quorum.witnesses {
        let b = quorum::vote(
            w,
            &witness::ask(w, &observer.witness_http, observer.config.probe_timeout).await,
            observer.config.quorum.witness_max_age,
        );
        let answers = matches!(b.vote, Vote::SiteLost | Vote::SeesGold | Vote::Undecided);
        ok &= line(
            answers,
            "witness",
            &format!("{}: {} ({})", b.witness, b.vote, b.detail),
        );
    }
    ok
}

/// `postgresql.use_pg_rewind` in a dynamic config document.
fn rewind_setting(text: &str) -> Option<bool> {
    serde_json::from_str::<Value>(text)
        .ok()?
        .pointer("/postgresql/use_pg_rewind")?
        .as_bool()
}

/// What only GoldDR's server can say: data checksums (the same on Gold, of
/// which GoldDR is a physical copy), `wal_log_hints`, and whether the
/// guard's login may read GoldDR's timeline history for the lost-writes
/// report.
async fn check_golddr_settings(observer: &GuardObserver, line: &impl Fn(bool, &str, &str) -> bool) -> bool {
    const SQL: &str = "SELECT current_setting('data_checksums'), current_setting('wal_log_hints'), \
                       has_function_privilege('pg_read_file(text)', 'EXECUTE')";
    let bound = observer.config.probe_timeout.max(Duration::from_secs(2));
    let golddr = match observer.golddr() {
        Ok(e) => e,
        Err(why) => return line(false, "rewind prerequisites", &why),
    };
    let row = match observer.probe.query_one(&golddr, SQL, bound).await {
        Ok(row) => row,
        Err(e) => return line(false, "rewind prerequisites", &format!("cannot ask GoldDR: {e}")),
    };
    let (checksums, hints, history) = (
        row.try_get::<_, String>(0).unwrap_or_default() == "on",
        row.try_get::<_, String>(1).unwrap_or_default() == "on",
        row.try_get::<_, bool>(2).unwrap_or(false),
    );
    let rewind = match (checksums, hints) {
        (true, _) => line(
            true,
            "rewind prerequisites",
            "data checksums are on (Gold's too: GoldDR is its physical copy)",
        ),
        (false, true) => line(
            true,
            "rewind prerequisites",
            "wal_log_hints is on (Patroni runs every member with it; data checksums are off)",
        ),
        (false, false) => line(
            false,
            "rewind prerequisites",
            "neither data checksums nor wal_log_hints: pg_rewind cannot run; set wal_log_hints: on",
        ),
    };
    let report = if history {
        line(true, "lost-writes report", "may read GoldDR's timeline history")
    } else {
        line(
            false,
            "lost-writes report",
            "WATCHDOG_GOLDDR_USER may not read GoldDR's timeline history: on Gold, GRANT EXECUTE ON \
             FUNCTION pg_read_file(text) TO that role (it replicates to GoldDR)",
        )
    };
    rewind && report
}

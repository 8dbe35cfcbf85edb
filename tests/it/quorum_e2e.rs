//! The three places end to end, with real parts: Gold a Patroni cluster on
//! etcd (behind a leader router, as a Service selecting the leader), GoldDR a
//! Patroni standby cluster replicating through the Transport Service, the
//! witness a separate process of the product binary, and the DR watchdog
//! promoting through Patroni's REST API. A fault proxy sits on every route:
//! GoldDR → Gold (the TS), witness → Gold's PostgreSQL, witness → each Gold
//! member's Patroni API, GoldDR → witness. While each scenario runs, a
//! sampler asks both sites several times a second whether they accept
//! writes; no moment may have two.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{self, Running};
use crate::support::gold_cluster::{GoldCluster, GoldClusterOptions};
use crate::support::leader_router::LeaderRouter;
use crate::support::patroni_cluster::{Etcd, GoldDr, GoldDrOptions};
use crate::support::pg::WATCHDOG_USER;
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::sampler::{SamplerReport, WriteSampler};
use crate::support::webhook::WebhookSink;
use crate::support::witness::WitnessProcess;

const ROWS: i64 = 20;
const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");

/// Fast timing for the witness and the DR watchdog: lost after 5 × 300 ms.
pub(crate) const FAST: &[(&str, &str)] = &[
    ("WATCHDOG_PROBE_INTERVAL", "300ms"),
    ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
    ("WATCHDOG_FALL", "2"),
    ("WATCHDOG_RISE", "2"),
    ("WATCHDOG_PROMOTE_AFTER", "5"),
];

/// Gold, GoldDR and the routes between them and to a witness's place.
/// Fields drop in order: GoldDR first, etcd last.
pub(crate) struct Places {
    pub(crate) dr: GoldDr,
    /// GoldDR → Gold: the Transport Service.
    pub(crate) ts: FaultProxy,
    /// Gold → GoldDR: the reverse Transport Service (the guard's probe, and
    /// Gold's replication once it follows GoldDR).
    pub(crate) rts: FaultProxy,
    /// Witness → Gold's PostgreSQL.
    pub(crate) w_pg: FaultProxy,
    /// Witness → each Gold member's Patroni REST API.
    pub(crate) w_api: Vec<FaultProxy>,
    _router: LeaderRouter,
    pub(crate) gold: GoldCluster,
    _etcd: Etcd,
}

/// A witness and the route GoldDR reaches it by.
pub(crate) struct Witness {
    /// GoldDR → this witness.
    pub(crate) route: FaultProxy,
    pub(crate) process: WitnessProcess,
}

impl Witness {
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.route.addr())
    }
}

impl Places {
    pub(crate) async fn start(opts: GoldClusterOptions) -> Places {
        let etcd = Etcd::start();
        let gold = GoldCluster::start(&etcd, opts);
        gold.execute(&format!(
            "CREATE TABLE pgtest_sampler (at timestamptz DEFAULT now()); \
             CREATE TABLE orders (id int PRIMARY KEY, item text); \
             INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, {}) g; \
             GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {WATCHDOG_USER}",
            ROWS - 1
        ))
        .await;
        let router = LeaderRouter::start(&gold).await;
        let ts = FaultProxy::start(router.addr()).await;
        let w_pg = FaultProxy::start(router.addr()).await;
        let mut w_api = Vec::new();
        for i in 0..gold.members() {
            w_api.push(FaultProxy::start(gold.member_api_addr(i)).await);
        }
        let dr = GoldDr::start(&etcd, GoldDrOptions::new(ts.addr(), "golddr"));
        // One row streamed rather than in the base backup: GoldDR has
        // replayed a commit, so the age of its data is known.
        gold.execute(&format!("INSERT INTO orders VALUES ({ROWS}, 'streamed')"))
            .await;
        crate::support::wait_for("Gold's rows on GoldDR", Duration::from_secs(60), async || {
            dr.try_query_i64("SELECT count(*) FROM orders").await == Ok(ROWS)
        })
        .await;
        let rts = FaultProxy::start(dr.pg_addr()).await;
        Places {
            dr,
            ts,
            rts,
            w_pg,
            w_api,
            _router: router,
            gold,
            _etcd: etcd,
        }
    }

    /// A witness process observing Gold through its own routes, with
    /// `timing` (empty: its defaults), reachable from GoldDR through a
    /// proxy of its own.
    pub(crate) async fn witness(&self, name: &str, timing: &[(&str, &str)]) -> Witness {
        let port = self.w_pg.port().to_string();
        let heartbeat: Vec<String> = self
            .w_api
            .iter()
            .map(|p| format!("http://{}/liveness", p.addr()))
            .collect();
        let heartbeat = heartbeat.join(",");
        let mut vars = vec![
            ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
            ("WATCHDOG_GOLD_PORT", port.as_str()),
            ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
            ("WATCHDOG_GOLD_SSLMODE", "disable"),
            ("WATCHDOG_GOLD_HEARTBEAT", heartbeat.as_str()),
            ("WATCHDOG_LOG_FORMAT", "json"),
            ("HOSTNAME", name),
        ];
        vars.extend_from_slice(timing);
        let process = WitnessProcess::start(&vars).await;
        let upstream = format!("127.0.0.1:{}", process.port())
            .parse()
            .expect("witness address");
        Witness {
            route: FaultProxy::start(upstream).await,
            process,
        }
    }

    /// The DR watchdog's settings, as an operator would give them.
    pub(crate) fn dr_vars(&self, witnesses: &[&Witness], timing: &[(&str, &str)]) -> Vec<(String, String)> {
        let list: Vec<String> = witnesses.iter().map(|w| w.url()).collect();
        let mut vars: Vec<(&str, String)> = vec![
            ("WATCHDOG_GOLD_HOST", "127.0.0.1".into()),
            ("WATCHDOG_GOLD_PORT", self.ts.port().to_string()),
            ("WATCHDOG_GOLD_USER", WATCHDOG_USER.into()),
            ("WATCHDOG_GOLD_SSLMODE", "disable".into()),
            ("WATCHDOG_PROMOTER", "patroni-api".into()),
            ("WATCHDOG_PATRONI_URL", self.dr.patroni_url.clone()),
            ("WATCHDOG_LOCAL_PG_PORT", self.dr.pg_port.to_string()),
            ("WATCHDOG_WAL_RECEIVER_FRESH", "3s".into()),
            ("WATCHDOG_WITNESSES", list.join(",")),
            ("WATCHDOG_LISTEN_ADDR", "127.0.0.1:0".into()),
            ("HOSTNAME", "golddr-0".into()),
        ];
        vars.extend(timing.iter().map(|(k, v)| (*k, v.to_string())));
        vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// The sampler, once it has heard both sites: a scenario that kills Gold
    /// right away must not leave it nothing to vouch for.
    pub(crate) async fn sampler(&self) -> WriteSampler {
        let sampler = WriteSampler::builder()
            .insert_into("pgtest_sampler")
            .postgres_all("gold", self.gold.pg_addrs())
            .postgres("golddr", self.dr.pg_addr())
            .start();
        crate::support::wait_for(
            "the sampler's first rounds",
            Duration::from_secs(20),
            async || sampler.snapshot().every_endpoint_answered(),
        )
        .await;
        sampler
    }

    pub(crate) async fn assert_golddr_standby(&self, w: &Running) {
        assert_eq!(self.dr.role().await, "standby_leader");
        assert!(self.dr.is_in_recovery().await);
        assert_eq!(
            w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
                .await,
            0.0
        );
        assert_eq!(w.status().await["promotion"]["result"], Value::Null);
    }

    /// Every row Gold had is on the promoted GoldDR, which takes writes.
    pub(crate) async fn assert_promoted_with_every_row(&self) {
        crate::support::wait_for("GoldDR writable", Duration::from_secs(30), async || {
            !self.dr.is_in_recovery().await
        })
        .await;
        assert_eq!(self.dr.query_i64("SELECT count(*) FROM orders").await, ROWS);
        self.dr
            .execute("INSERT INTO orders VALUES (1000, 'written on GoldDR')")
            .await;
    }
}

pub(crate) fn config_pairs(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Places {
    /// The DR watchdog beside GoldDR, listing `witnesses`, with `timing`
    /// (empty: the quorum defaults) and `extra`.
    pub(crate) async fn spawn_watchdog(
        &self,
        witnesses: &[&Witness],
        timing: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Running {
        let vars = self.dr_vars(witnesses, timing);
        let w = app::spawn(app::config_from(&config_pairs(&vars), extra)).await;
        w.wait_status("up and watching the standby leader", |s| {
            s["verdict"] == "up" && s["cluster"]["role"]["role"] == "standby_leader"
        })
        .await;
        w
    }
}

impl Places {
    /// One witness (`timing`), the DR watchdog listing it (fast, `extra`),
    /// and the sampler, started last.
    async fn one_witness(
        &self,
        timing: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> (Witness, Running, WriteSampler) {
        let witness = self.witness("witness-a", timing).await;
        let w = self.spawn_watchdog(&[&witness], FAST, extra).await;
        let sampler = self.sampler().await;
        (witness, w, sampler)
    }
}

pub(crate) fn has_veto(s: &Value, guard: &str) -> bool {
    s["promotion"]["vetoes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["guard"] == guard))
}

pub(crate) fn finish(report: SamplerReport) {
    eprintln!("{}", report.summary());
    report.assert_never_two_writable();
}

/// Waits until `w` has held the promotion back for a while (several
/// decisions), then checks GoldDR is untouched.
async fn held_back(places: &Places, w: &Running, guard: &str) -> Value {
    let st = w
        .wait_status(&format!("Gold lost and vetoed by {guard}"), |s| {
            s["verdict"] == "lost" && has_veto(s, guard)
        })
        .await;
    let series = format!("patroni_dr_watchdog_vetoes_total{{guard=\"{guard}\"}}");
    crate::support::wait_for(
        &format!("three decisions vetoed by {guard}"),
        Duration::from_secs(30),
        async || w.metric(&series).await >= 3.0,
    )
    .await;
    places.assert_golddr_standby(w).await;
    st
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_site_killed_the_witness_agrees_and_golddr_is_promoted_with_every_row() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let sink = WebhookSink::start().await;
    let (witness, w, sampler) = places
        .one_witness(FAST, &[("WATCHDOG_WEBHOOK_URL", sink.url.as_str())])
        .await;

    places.gold.kill_site();
    let st = w
        .wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    places.assert_promoted_with_every_row().await;
    let reason = st["promotion"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "quorum: 1 of 1 witnesses agree Gold's site is lost (1 needed: {})",
            witness.url()
        )),
        "{st:#}"
    );
    crate::support::wait_for("the promotion's alert", Duration::from_secs(15), async || {
        sink.messages()
            .iter()
            .any(|m| m.contains("promoted the DR standby cluster") && m.contains(&witness.url()))
    })
    .await;
    let o = witness.process.observation().await.expect("observation");
    assert_eq!(o["sites"]["gold"]["says"], "site_lost", "{o:#}");
    finish(sampler.stop().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ts_cut_while_the_witness_sees_gold_never_promotes() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let (_witness, w, sampler) = places.one_witness(FAST, &[]).await;

    places.ts.set(Fault::Blackhole).await;
    let st = held_back(&places, &w, "witness_sees_gold").await;
    let detail = st["promotion"]["vetoes"].to_string();
    assert!(detail.contains("primary_writable"), "{st:#}");
    assert_eq!(st["quorum"]["votes"][0]["vote"], "sees_gold", "{st:#}");

    places.ts.set(Fault::Forward).await;
    w.wait_status("Gold up again", |s| s["verdict"] == "up").await;
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

/// Patroni's own timing in Gold (ttl 45, loop_wait 10): the failover takes
/// longer than the quorum-mode bound, so GoldDR does judge Gold lost, and
/// the witness, which hears the surviving member's Patroni, vetoes.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_inside_gold_with_the_quorum_defaults_never_promotes() {
    let places = Places::start(GoldClusterOptions {
        members: 2,
        ttl: 45,
        loop_wait: 10,
        ..GoldClusterOptions::default()
    })
    .await;
    let witness = places.witness("witness-a", &[]).await;
    let w = places.spawn_watchdog(&[&witness], &[], &[]).await;
    let st = w.status().await;
    assert_eq!(
        st["settings"]["probe_interval"], "5s",
        "the quorum defaults: {st:#}"
    );
    let sampler = places.sampler().await;

    let leader = places.gold.leader().expect("a Gold leader");
    let killed = Instant::now();
    places.gold.kill_member(leader);
    let st = w
        .wait_status_for(Duration::from_secs(90), "Gold lost, vetoed by the witness", |s| {
            s["verdict"] == "lost" && has_veto(s, "witness_sees_gold")
        })
        .await;
    eprintln!("GoldDR judged Gold lost {:?} after the kill", killed.elapsed());
    assert!(
        st["promotion"]["vetoes"].to_string().contains("site_alive"),
        "{st:#}"
    );
    let new = places.gold.wait_for_leader(Duration::from_secs(120));
    assert_ne!(new, leader);
    w.wait_status_for(Duration::from_secs(90), "Gold up again", |s| s["verdict"] == "up")
        .await;
    eprintln!("back to up {:?} after the kill", killed.elapsed());
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_witness_gold_killed_is_not_promoted_but_an_operator_can() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let sink = WebhookSink::start().await;
    let (witness, w, sampler) = places
        .one_witness(FAST, &[("WATCHDOG_WEBHOOK_URL", sink.url.as_str())])
        .await;

    witness.process.kill();
    places.gold.kill_site();
    let st = held_back(&places, &w, "no_quorum").await;
    assert_eq!(st["quorum"]["votes"][0]["vote"], "unreachable", "{st:#}");
    assert!(
        st["quorum"]["summary"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Gold lost, no quorum: 0 of 1 witnesses agree"),
        "{st:#}"
    );
    assert_eq!(w.metric("patroni_dr_watchdog_quorum_reached").await, 0.0);
    crate::support::wait_for("the NoQuorum alert", Duration::from_secs(15), async || {
        sink.messages()
            .iter()
            .any(|m| m.contains("no_quorum") && m.contains("promote --reason"))
    })
    .await;

    // The operator is the third party.
    let vars = places.dr_vars(&[&witness], FAST);
    let out = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(config_pairs(&vars))
        .args(["promote", "--reason", "Gold's site confirmed down by phone"])
        .output()
        .expect("run promote");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("promoted"), "{stdout}");
    places.assert_promoted_with_every_row().await;
    finish(sampler.stop().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn golddr_cut_off_from_gold_and_the_witness_never_promotes() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let (witness, w, sampler) = places.one_witness(FAST, &[]).await;

    places.ts.set(Fault::Blackhole).await;
    witness.route.set(Fault::Blackhole).await;
    let st = held_back(&places, &w, "no_quorum").await;
    assert_eq!(st["quorum"]["votes"][0]["vote"], "unreachable", "{st:#}");
    // The witness, all along, sees Gold.
    let o = witness.process.observation().await.expect("observation");
    assert_eq!(o["sites"]["gold"]["says"], "primary_writable", "{o:#}");

    places.ts.set(Fault::Forward).await;
    witness.route.set(Fault::Forward).await;
    w.wait_status("Gold up again", |s| s["verdict"] == "up").await;
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

/// The failure the old witnesses caused: Gold dead, nothing promoted yet,
/// and Gold's site restarting, its Patroni API answering 503 before a
/// primary is up. That answer is a sign of life, never a vote for loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_gold_site_restarting_after_its_death_is_never_promoted_into() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    // A witness slow to decide (lost after 100 probes, 30 s): it is still
    // undecided when Gold comes back.
    let mut slow = FAST.to_vec();
    slow.retain(|(k, _)| *k != "WATCHDOG_PROMOTE_AFTER");
    slow.push(("WATCHDOG_PROMOTE_AFTER", "100"));
    let (witness, w, sampler) = places.one_witness(&slow, &[]).await;

    places.gold.kill_site();
    held_back(&places, &w, "no_quorum").await;
    places.gold.restart_site();
    // The window between the API's first answer and a writable primary.
    let mut seen_alive_without_primary = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(o) = witness.process.observation().await {
            let g = &o["sites"]["gold"];
            seen_alive_without_primary |= g["says"] == "site_alive" && g["verdict"] != "up";
        }
        if w.verdict().await == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Gold never came back: {}",
            places.gold.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_alive_without_primary,
        "the witness never said site_alive while Gold had no primary"
    );
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_witnesses_promote_only_when_two_agree() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let down = places.witness("witness-down", FAST).await;
    let quick = places.witness("witness-quick", FAST).await;
    let mut slower = FAST.to_vec();
    slower.retain(|(k, _)| *k != "WATCHDOG_PROMOTE_AFTER");
    slower.push(("WATCHDOG_PROMOTE_AFTER", "40"));
    let late = places.witness("witness-late", &slower).await;
    let w = places.spawn_watchdog(&[&down, &quick, &late], FAST, &[]).await;
    assert_eq!(w.status().await["quorum"]["needed"], 2);
    let sampler = places.sampler().await;

    down.process.kill();
    places.gold.kill_site();
    let killed = Instant::now();
    let st = w
        .wait_status("one of three agrees", |s| {
            let votes = s["quorum"]["votes"].to_string();
            s["verdict"] == "lost" && has_veto(s, "no_quorum") && votes.contains("site_lost")
        })
        .await;
    let votes = &st["quorum"]["votes"];
    assert_eq!(votes[0]["vote"], "unreachable", "{st:#}");
    assert_eq!(votes[1]["vote"], "site_lost", "{st:#}");
    assert_eq!(votes[2]["vote"], "undecided", "{st:#}");
    assert!(
        st["promotion"]["vetoes"]
            .to_string()
            .contains("1 of 3 witnesses agree Gold's site is lost (2 needed"),
        "{st:#}"
    );
    places.assert_golddr_standby(&w).await;

    let st = w
        .wait_status_for(Duration::from_secs(60), "promoted", |s| {
            s["promotion"]["result"] == "promoted"
        })
        .await;
    eprintln!("promoted {:?} after the kill", killed.elapsed());
    let reason = st["promotion"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "2 of 3 witnesses agree Gold's site is lost (2 needed: {}, {})",
            quick.url(),
            late.url()
        )),
        "{st:#}"
    );
    places.assert_promoted_with_every_row().await;
    finish(sampler.stop().await);
    w.stop().await;
}

//! Self-tests of the Patroni end-to-end harness: Gold behind a fault proxy,
//! etcd, and a GoldDR standby cluster replicating from Gold through the proxy,
//! which `PATCH /config {"standby_cluster": null}` promotes; then Gold as a
//! real Patroni cluster behind the leader router, its failover and site
//! restart, and the split-brain sampler that watches both sites.

use std::time::{Duration, Instant};

use crate::support::gold_cluster::{GoldCluster, GoldClusterOptions};
use crate::support::leader_router::LeaderRouter;
use crate::support::patroni_cluster::{Etcd, Gold, GoldDr, GoldDrOptions};
use crate::support::proxy::FaultProxy;
use crate::support::sampler::{Outcome, Round, WriteSampler};
use serde_json::json;

/// Both sites. Fields drop in declaration order: GoldDR first, etcd last.
struct Sites {
    golddr: GoldDr,
    proxy: FaultProxy,
    gold: Gold,
    etcd: Etcd,
}

impl Sites {
    /// Gold with a `replicated` table and the `golddr` slot, a proxy in front
    /// of it, etcd, and GoldDR replicating through the proxy.
    async fn start() -> Sites {
        let started = Instant::now();
        let gold = Gold::start();
        gold.execute("CREATE TABLE replicated (id int PRIMARY KEY, note text)")
            .await;
        gold.create_slot("golddr");
        let proxy = FaultProxy::start(gold.addr()).await;
        let etcd = Etcd::start();
        let golddr = GoldDr::start(&etcd, GoldDrOptions::new(proxy.addr(), "golddr"));
        eprintln!(
            "sites up in {:?} (GoldDR standby leader after {:?})",
            started.elapsed(),
            golddr.startup
        );
        Sites {
            golddr,
            proxy,
            gold,
            etcd,
        }
    }

    /// Inserts row `id` on Gold and waits until GoldDR has it.
    async fn replicate_row(&self, id: i32) {
        self.gold
            .execute(&format!("INSERT INTO replicated VALUES ({id}, 'from Gold')"))
            .await;
        let sql = format!("SELECT count(*) FROM replicated WHERE id = {id}");
        crate::support::wait_for(
            &format!("row {id} to reach GoldDR"),
            Duration::from_secs(30),
            async || self.golddr.try_query_i64(&sql).await == Ok(1),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn golddr_streams_from_gold_through_the_proxy() {
    crate::support::init_tracing();
    let sites = Sites::start().await;
    let golddr = &sites.golddr;

    assert_eq!(golddr.role().await, "standby_leader");
    assert!(golddr.is_in_recovery().await);
    sites.replicate_row(1).await;
    crate::support::wait_for(
        "GoldDR's WAL receiver to stream",
        Duration::from_secs(30),
        async || golddr.wal_receiver_status().await.as_deref() == Some("streaming"),
    )
    .await;
    // The stream (and the base backup before it) went through the proxy.
    assert!(
        sites.proxy.accepted() >= 2,
        "proxy accepted {}",
        sites.proxy.accepted()
    );
    assert!(sites.proxy.open_connections() >= 1);
    let slot_active = sites
        .gold
        .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'golddr'");
    assert_eq!(slot_active, "t", "GoldDR streams through its slot");
    let config = golddr.config_in_dcs().await;
    assert_eq!(config["standby_cluster"]["port"], sites.proxy.port(), "{config}");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_standby_cluster_promotes_golddr_and_drop_stops_it() {
    crate::support::init_tracing();
    let sites = Sites::start().await;
    sites.replicate_row(1).await;

    let started = Instant::now();
    let status = sites
        .golddr
        .patch_config(json!({ "standby_cluster": null }))
        .await;
    assert_eq!(status, 200);
    crate::support::wait_for("GoldDR to become writable", Duration::from_secs(15), async || {
        !sites.golddr.is_in_recovery().await
    })
    .await;
    let writable_after = started.elapsed();
    crate::support::wait_for(
        "GoldDR's role to become primary",
        Duration::from_secs(15),
        async || sites.golddr.is_primary().await,
    )
    .await;
    eprintln!(
        "GoldDR writable {writable_after:?} and reported primary {:?} after PATCH /config",
        started.elapsed()
    );
    assert_eq!(sites.golddr.query_i64("SELECT count(*) FROM replicated").await, 1);
    sites
        .golddr
        .execute("INSERT INTO replicated VALUES (2, 'written on GoldDR')")
        .await;
    assert_eq!(sites.golddr.wal_receiver_status().await, None);

    // Dropping GoldDR stops Patroni and its PostgreSQL.
    let Sites {
        golddr,
        proxy: _proxy,
        gold: _gold,
        etcd: _etcd,
    } = sites;
    let patroni = golddr.patroni_pid().expect("patroni runs");
    let postmaster = golddr.postmaster_pid().expect("GoldDR's postmaster runs");
    let (pg_addr, patroni_url) = (golddr.pg_addr(), golddr.patroni_url.clone());
    let stopping = Instant::now();
    drop(golddr);
    eprintln!("GoldDR stopped in {:?}", stopping.elapsed());
    for pid in [patroni, postmaster] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs"
        );
    }
    assert!(
        std::net::TcpStream::connect(pg_addr).is_err(),
        "GoldDR's PostgreSQL still listens"
    );
    assert!(
        reqwest::get(format!("{patroni_url}/patroni")).await.is_err(),
        "GoldDR's Patroni still answers"
    );
}

// ---------------------------------------------------------------------------
// Gold as a real Patroni cluster
// ---------------------------------------------------------------------------

/// Gold as a Patroni cluster, the leader router in front of it (the Service
/// selecting the leader), the fault proxy in front of that (the Transport
/// Service) and GoldDR replicating through both. Fields drop in order:
/// GoldDR first, etcd last.
struct RealGoldSites {
    golddr: GoldDr,
    ts: FaultProxy,
    router: LeaderRouter,
    gold: GoldCluster,
    _etcd: Etcd,
}

impl RealGoldSites {
    /// `members` Gold members with a `replicated` table; GoldDR streams
    /// through the `golddr` slot, a permanent slot of Gold's.
    async fn start(members: usize) -> RealGoldSites {
        let started = Instant::now();
        let etcd = Etcd::start();
        let gold = GoldCluster::start(&etcd, GoldClusterOptions::members(members));
        gold.execute("CREATE TABLE replicated (id int PRIMARY KEY, note text)")
            .await;
        let router = LeaderRouter::start(&gold).await;
        let ts = FaultProxy::start(router.addr()).await;
        let golddr = GoldDr::start(&etcd, GoldDrOptions::new(ts.addr(), "golddr"));
        eprintln!(
            "{members}-member Gold up in {:?}; both sites up in {:?}",
            gold.startup,
            started.elapsed()
        );
        RealGoldSites {
            golddr,
            ts,
            router,
            gold,
            _etcd: etcd,
        }
    }

    /// Samples every Gold member and GoldDR, directly.
    fn sampler(&self) -> WriteSampler {
        WriteSampler::builder()
            .postgres_all("gold", self.gold.pg_addrs())
            .postgres("golddr", self.golddr.pg_addr())
            .start()
    }

    /// Inserts row `id` on Gold's leader and waits until GoldDR has it.
    async fn replicate_row(&self, id: i32) {
        self.gold
            .execute(&format!("INSERT INTO replicated VALUES ({id}, 'from Gold')"))
            .await;
        let sql = format!("SELECT count(*) FROM replicated WHERE id = {id}");
        crate::support::wait_for(
            &format!("row {id} to reach GoldDR"),
            Duration::from_secs(60),
            async || self.golddr.try_query_i64(&sql).await == Ok(1),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn golddr_follows_an_in_gold_failover_through_the_leader_router_with_never_two_writable_sites() {
    crate::support::init_tracing();
    let sites = RealGoldSites::start(2).await;
    let sampler = sites.sampler();
    sites.replicate_row(1).await;
    let old = sites.gold.leader().expect("a Gold leader");
    let new = 1 - old;
    assert_eq!(sites.router.leader(), Some(old));
    assert_eq!(sites.gold.role(new), "replica");
    assert!(
        sites.ts.accepted() >= 2,
        "GoldDR's backup and stream went through the TS"
    );

    // Nothing may be on GoldDR that the member taking over lacks, or GoldDR
    // could not follow its new timeline: let everyone catch up first.
    sites.gold.wait_replicas_caught_up(Duration::from_secs(30));
    let lsn = sites.gold.current_lsn().await;
    let sql = format!("SELECT (pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn)::int::int8");
    crate::support::wait_for(
        "GoldDR to replay all of Gold's WAL",
        Duration::from_secs(30),
        async || sites.golddr.try_query_i64(&sql).await == Ok(1),
    )
    .await;

    let killed = Instant::now();
    sites.gold.kill_member(old);
    assert!(!sites.gold.is_writable(old).await);
    let leader = sites.gold.wait_for_leader(Duration::from_secs(60));
    let failover = killed.elapsed();
    assert_eq!(leader, new);
    sites.router.wait_for_leader(new, Duration::from_secs(10)).await;
    let routed = killed.elapsed();
    sites.replicate_row(2).await;
    eprintln!(
        "in-Gold failover: member {new} leader {failover:?} after the kill, routed to after {routed:?}, \
         row 2 on GoldDR after {:?}",
        killed.elapsed()
    );
    assert_eq!(sites.golddr.query_i64("SELECT count(*) FROM replicated").await, 2);
    assert_eq!(sites.golddr.role().await, "standby_leader");
    assert!(
        sites.router.switches() >= 2,
        "routed to {old}, then (none, then) {new}"
    );

    let report = sampler.stop().await;
    eprintln!("{}", report.summary());
    report.assert_never_two_writable();
    // It saw both leaders at work, and GoldDR never writable.
    for member in [old, new] {
        assert!(
            report
                .rounds
                .iter()
                .any(|r| r.outcomes[member] == Outcome::Writable),
            "the sampler never saw member {member} writable\n{}",
            report.summary()
        );
    }
    assert!(
        report.rounds.iter().all(|r| !report.site_writable(r, "golddr")),
        "{}",
        report.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarting_gold_site_answers_on_its_rest_api_before_it_is_writable_and_drop_leaves_nothing() {
    crate::support::init_tracing();
    let etcd = Etcd::start();
    let gold = GoldCluster::start(&etcd, GoldClusterOptions::members(2));
    let sampler = gold
        .api_urls()
        .iter()
        .fold(
            WriteSampler::builder().postgres_all("gold", gold.pg_addrs()),
            |b, url| b.heartbeat("gold", url),
        )
        .start();
    tokio::time::sleep(Duration::from_secs(1)).await;

    gold.kill_site();
    assert_eq!(gold.leader(), None);
    assert!(gold.writable_members().await.is_empty());
    assert!(
        (0..2).all(|i| gold.status(i).is_none()),
        "a REST API still answers"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    let restarted = Instant::now();
    gold.restart_site();
    let leader = gold.wait_for_leader(Duration::from_secs(90));
    crate::support::wait_for("a writable Gold leader", Duration::from_secs(30), async || {
        gold.is_writable(leader).await
    })
    .await;
    gold.wait_healthy(Duration::from_secs(90));
    eprintln!("Gold site healthy {:?} after the restart", restarted.elapsed());
    // A few more rounds with the leader writable.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = sampler.stop().await;
    eprintln!("{}", report.summary());
    report.assert_sampled();

    let since_start = restarted - report.started;
    let after_restart: Vec<&Round> = report.rounds.iter().filter(|r| r.at >= restarted).collect();
    let first_api = after_restart
        .iter()
        .find(|r| report.heartbeat_answered(r, "gold"))
        .expect("a REST API answered after the restart");
    let first_writable = after_restart
        .iter()
        .find(|r| report.site_writable(r, "gold"))
        .expect("a member was writable after the restart");
    eprintln!(
        "site restart: REST API answered {:?} after the start, a member writable {:?} after that",
        first_api.at - restarted,
        first_writable.at.saturating_duration_since(first_api.at)
    );
    let window: Vec<Duration> = report
        .heartbeat_without_writable("gold")
        .into_iter()
        .filter(|at| *at >= since_start)
        .collect();
    assert!(
        !window.is_empty() && first_api.at < first_writable.at,
        "never saw the REST API answer while no member was writable\n{}",
        report.summary()
    );

    // Drop kills every Patroni and PostgreSQL of the site.
    let pids: Vec<u32> = (0..2)
        .flat_map(|i| [gold.patroni_pid(i), gold.postmaster_pid(i)])
        .map(|pid| pid.expect("every member's Patroni and postmaster run"))
        .collect();
    let (pg_addrs, api_urls) = (gold.pg_addrs(), gold.api_urls());
    drop(gold);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")),
            "process {pid} still runs"
        );
    }
    for addr in pg_addrs {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} still listens"
        );
    }
    for url in api_urls {
        assert!(reqwest::get(url.as_str()).await.is_err(), "{url} still answers");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sampler_catches_golddr_promoted_while_gold_is_alive() {
    crate::support::init_tracing();
    let sites = RealGoldSites::start(1).await;
    sites.replicate_row(1).await;
    let sampler = sites.sampler();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let status = sites
        .golddr
        .patch_config(json!({ "standby_cluster": null }))
        .await;
    assert_eq!(status, 200);
    crate::support::wait_for("GoldDR to become writable", Duration::from_secs(30), async || {
        !sites.golddr.is_in_recovery().await
    })
    .await;
    assert!(sites.gold.is_writable(0).await, "Gold is still writable too");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = sampler.stop().await;

    let moments = report.two_writable_moments();
    assert!(
        !moments.is_empty(),
        "no two-writable moment seen\n{}",
        report.summary()
    );
    assert_eq!(moments[0].sites, ["gold", "golddr"]);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        report.assert_never_two_writable()
    }));
    let message = caught.expect_err("assert_never_two_writable must panic");
    let message = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("two sites writable at the same time") && message.contains("golddr"),
        "{message}"
    );
}

//! Self-tests of the Patroni end-to-end harness: Gold behind a fault proxy,
//! etcd, and a GoldDR standby cluster replicating from Gold through the proxy,
//! which `PATCH /config {"standby_cluster": null}` promotes.

use std::time::{Duration, Instant};

use crate::support::patroni_cluster::{Etcd, Gold, GoldDr, GoldDrOptions};
use crate::support::proxy::FaultProxy;
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

//! End to end with real parts: Gold (a PostgreSQL primary), the fault proxy as
//! the Transport Service, etcd, a GoldDR Patroni standby cluster replicating
//! through the proxy, and the watchdog promoting through Patroni's REST API.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::app::{self, Running};
use crate::support::patroni_cluster::{Etcd, Gold, GoldDr, GoldDrOptions};
use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::webhook::WebhookSink;
use patroni_dr_watchdog::Config;
use serde_json::Value;

const ROWS: i64 = 25;

/// Fields drop in order: GoldDR first, etcd last.
struct Site {
    dr: GoldDr,
    ts: FaultProxy,
    gold: Gold,
    _etcd: Etcd,
}

/// Gold with `ROWS` orders, replicated to a GoldDR standby cluster through
/// the Transport Service stand-in.
async fn site() -> Site {
    site_with(|o| o).await
}

/// The same, with GoldDR's Patroni options adjusted by `options`.
async fn site_with(options: impl FnOnce(GoldDrOptions) -> GoldDrOptions) -> Site {
    let etcd = Etcd::start();
    let gold = Gold::start();
    prepare_gold(&gold.pg).await;
    gold.create_slot("golddr");
    let ts = FaultProxy::start(gold.addr()).await;
    let dr = GoldDr::start(&etcd, options(GoldDrOptions::new(ts.addr(), "golddr")));
    crate::support::wait_for("rows on GoldDR", Duration::from_secs(60), async || {
        dr.try_query_i64("SELECT count(*) FROM orders").await == Ok(ROWS)
    })
    .await;
    assert_eq!(dr.role().await, "standby_leader");
    Site {
        dr,
        ts,
        gold,
        _etcd: etcd,
    }
}

async fn prepare_gold(gold: &PgServer) {
    // An idle walsender then still talks every second, so a live Gold
    // keeps the standby's WAL receiver fresh.
    gold.execute("ALTER SYSTEM SET wal_sender_timeout = '2s'").await;
    gold.execute("SELECT pg_reload_conf()").await;
    gold.execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
}

/// The settings every end-to-end watchdog here shares: fast thresholds, the
/// `patroni-api` promoter, Gold probed at `probe_port`.
fn vars<'a>(probe_port: &'a str, local_pg_port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", probe_port),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ("WATCHDOG_PROMOTER", "patroni-api"),
        ("WATCHDOG_LOCAL_PG_PORT", local_pg_port),
        ("WATCHDOG_PROBE_INTERVAL", "300ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
        ("WATCHDOG_FALL", "2"),
        ("WATCHDOG_RISE", "2"),
        ("WATCHDOG_PROMOTE_AFTER", "5"),
        ("WATCHDOG_WAL_RECEIVER_FRESH", "3s"),
        ("WATCHDOG_LISTEN_ADDR", "127.0.0.1:0"),
        ("HOSTNAME", "golddr-0"),
    ]
}

fn config(probe: SocketAddr, local_pg_port: u16, extra: &[(&str, &str)]) -> Config {
    let (probe_port, local_port) = (probe.port().to_string(), local_pg_port.to_string());
    app::config_from(&vars(&probe_port, &local_port), extra)
}

async fn watchdog(site: &Site, probe: SocketAddr, extra: &[(&str, &str)]) -> Running {
    let mut vars = vec![("WATCHDOG_PATRONI_URL", site.dr.patroni_url.as_str())];
    vars.extend_from_slice(extra);
    let w = app::spawn(config(probe, site.dr.pg_port, &vars)).await;
    w.wait_status("up and watching the standby leader", |s| {
        s["verdict"] == "up" && s["cluster"]["role"]["role"] == "standby_leader"
    })
    .await;
    w
}

fn has_veto(s: &Value, guard: &str) -> bool {
    s["promotion"]["vetoes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["guard"] == guard))
}

/// Several more decisions pass and GoldDR is still a read-only standby,
/// never written by the watchdog.
async fn assert_golddr_untouched(site: &Site, w: &Running) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(site.dr.role().await, "standby_leader");
    assert!(site.dr.is_in_recovery().await);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        0.0
    );
}

/// The same, and no promotion (not even a dry run) was reported.
async fn assert_not_promoted(site: &Site, w: &Running) {
    assert_golddr_untouched(site, w).await;
    assert_eq!(w.status().await["promotion"]["result"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_killed_promotes_golddr_with_its_rows_and_a_returning_gold_raises_split_brain() {
    let site = site().await;
    let sink = WebhookSink::start().await;
    let w = watchdog(
        &site,
        site.ts.addr(),
        &[("WATCHDOG_WEBHOOK_URL", sink.url.as_str())],
    )
    .await;

    site.gold.kill();
    let killed = Instant::now();
    let st = w
        .wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    crate::support::wait_for("GoldDR writable", Duration::from_secs(30), async || {
        !site.dr.is_in_recovery().await
    })
    .await;
    let writable = killed.elapsed();
    eprintln!("Gold killed → GoldDR writable in {writable:?}");
    assert_eq!(st["state"], "promoted");
    // The sidecar that acted is the one whose state alerts and dashboards
    // must still see.
    assert_eq!(
        w.metric("patroni_dr_watchdog_state{state=\"promoted\"}").await,
        1.0
    );
    assert_eq!(
        w.metric("patroni_dr_watchdog_state{state=\"watching\"}").await,
        0.0
    );
    assert_eq!(site.dr.query_i64("SELECT count(*) FROM orders").await, ROWS);
    site.dr
        .execute("INSERT INTO orders VALUES (1000, 'written on GoldDR')")
        .await;
    assert!(site.dr.is_primary().await);
    assert!(
        site.dr
            .config_in_dcs()
            .await
            .get("standby_cluster")
            .is_none_or(Value::is_null)
    );

    // Gold comes back as a primary: two writable sites.
    assert_eq!(w.status().await["promotion"]["split_brain"], false);
    site.gold.restart();
    let st = w
        .wait_status("split brain", |s| s["promotion"]["split_brain"] == true)
        .await;
    assert_eq!(st["last_probe"]["outcome"], "up");
    assert_eq!(w.metric("patroni_dr_watchdog_split_brain").await, 1.0);
    crate::support::wait_for("alerts", Duration::from_secs(20), async || {
        sink.any("SPLIT BRAIN")
    })
    .await;
    for alert in ["is lost", "promoted the DR standby cluster", "SPLIT BRAIN"] {
        assert!(sink.any(alert), "no {alert:?} alert in {:#?}", sink.messages());
    }
    // Never fails back or acts again on its own.
    assert!(site.dr.is_primary().await);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        1.0
    );
    w.stop().await;
    // Failback is the operator's act: re-add standby_cluster toward Gold.
    let cfg = config(
        site.ts.addr(),
        site.dr.pg_port,
        &[("WATCHDOG_PATRONI_URL", site.dr.patroni_url.as_str())],
    );
    let ts_port = site.ts.port();
    let failback = async || patroni_dr_watchdog::cli::failback(&cfg, None, "127.0.0.1", ts_port, true).await;
    assert_eq!(failback().await, patroni_dr_watchdog::cli::Exit::Ok);
    // Patroni's GET /config serves its last view of the DCS, refreshed on its
    // own loop: read-after-write needs a moment.
    crate::support::wait_for(
        "standby_cluster back in GoldDR's config",
        Duration::from_secs(20),
        async || !site.dr.config_in_dcs().await["standby_cluster"].is_null(),
    )
    .await;
    let section = &site.dr.config_in_dcs().await["standby_cluster"];
    assert_eq!(
        (section["host"].as_str(), section["port"].as_u64()),
        (Some("127.0.0.1"), Some(u64::from(ts_port)))
    );
    assert_eq!(
        failback().await,
        patroni_dr_watchdog::cli::Exit::Failed,
        "already a standby cluster"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disarmed_in_patronis_dynamic_config_holds_back_and_rearming_promotes_without_a_restart() {
    let site = site().await;
    // Our own key, as `patronictl edit-config --set patroni_dr_watchdog.disarmed=true` writes it.
    let disarm = serde_json::json!({"patroni_dr_watchdog": {"disarmed": true}});
    assert_eq!(site.dr.patch_config(disarm).await, 200);
    crate::support::wait_for("Patroni keeps our key", Duration::from_secs(10), async || {
        site.dr.config_in_dcs().await["patroni_dr_watchdog"]["disarmed"] == true
    })
    .await;
    let w = watchdog(&site, site.ts.addr(), &[]).await;
    let st = w
        .wait_status("disarm seen", |s| s["cluster"]["disarmed"] == true)
        .await;
    assert_eq!(
        st["cluster"]["disarmed_by"],
        serde_json::json!(["dynamic_config_key"])
    );
    assert_eq!(w.metric("patroni_dr_watchdog_disarmed").await, 1.0);

    site.gold.kill();
    let st = w
        .wait_status("held back by the disarm switch", |s| {
            s["verdict"] == "lost" && has_veto(s, "disarmed")
        })
        .await;
    assert_eq!(
        st["promotion"]["vetoes"].as_array().map(Vec::len),
        Some(1),
        "{st:#}"
    );
    assert_not_promoted(&site, &w).await;
    assert!(
        w.metric("patroni_dr_watchdog_vetoes_total{guard=\"disarmed\"}")
            .await
            >= 1.0
    );

    // Re-armed with the same tool, no restart: the next decision promotes.
    let rearm = serde_json::json!({"patroni_dr_watchdog": null});
    assert_eq!(site.dr.patch_config(rearm).await, 200);
    w.wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    crate::support::wait_for("GoldDR writable", Duration::from_secs(30), async || {
        !site.dr.is_in_recovery().await
    })
    .await;
    assert_eq!(site.dr.query_i64("SELECT count(*) FROM orders").await, ROWS);
    assert_eq!(w.metric("patroni_dr_watchdog_disarmed").await, 0.0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flapping_tunnel_never_promotes() {
    let site = site().await;
    let w = watchdog(&site, site.ts.addr(), &[]).await;
    // promote_after is 5 probes of 300 ms; the tunnel is never down that long.
    let flap = site.ts.flap(Duration::from_millis(400));
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let st = w.status().await;
        assert_ne!(st["verdict"], "lost", "{st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    flap.stop().await;
    assert!(
        w.status().await["counters"]["down"].as_u64() > Some(0),
        "the flapping was seen"
    );
    assert_not_promoted(&site, &w).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_probe_path_while_wal_still_streams_is_vetoed() {
    let site = site().await;
    // The probe takes its own route, which breaks; replication keeps flowing.
    let probe_path = FaultProxy::start(site.gold.addr()).await;
    let w = watchdog(&site, probe_path.addr(), &[("WATCHDOG_WAL_RECEIVER_FRESH", "5s")]).await;
    let writer = {
        let gold = site.gold.pg.superuser_client().await;
        tokio::spawn(async move {
            for i in 0.. {
                let sql = format!("INSERT INTO orders VALUES ({}, 'live')", 10_000 + i);
                if gold.batch_execute(&sql).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    probe_path.set(Fault::Blackhole).await;
    let st = w
        .wait_status("veto by the WAL receiver", |s| {
            s["verdict"] == "lost" && has_veto(s, "wal_receiver_streaming")
        })
        .await;
    assert_eq!(st["cluster"]["wal_receiver"], "streaming", "{st:#}");
    assert_not_promoted(&site, &w).await;
    assert!(
        w.metric("patroni_dr_watchdog_vetoes_total{guard=\"wal_receiver_streaming\"}")
            .await
            >= 2.0
    );
    writer.abort();
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gold_signal_that_answers_vetoes_and_a_silent_one_does_not_block() {
    let site = site().await;
    // Gold's PostgreSQL by another route answers; a second signal is dead.
    let alive = format!("tcp://{}", site.gold.addr());
    let silent = format!("tcp://{}", crate::support::closed_port());
    let signals = format!("{alive},{silent}");
    let sink = WebhookSink::start().await;
    let w = watchdog(
        &site,
        site.ts.addr(),
        &[
            ("WATCHDOG_GOLD_SIGNALS", signals.as_str()),
            ("WATCHDOG_WEBHOOK_URL", sink.url.as_str()),
        ],
    )
    .await;
    // The whole tunnel goes dark; Gold itself is fine, as the signal shows.
    site.ts.set(Fault::Blackhole).await;
    let st = w
        .wait_status("veto by the signal", |s| {
            s["verdict"] == "lost" && has_veto(s, "gold_signal_alive")
        })
        .await;
    let vetoes = st["promotion"]["vetoes"].to_string();
    assert!(vetoes.contains(&alive) && !vetoes.contains(&silent), "{st:#}");
    assert_eq!(st["quorum"]["mode"], "single_observer", "{st:#}");
    assert_not_promoted(&site, &w).await;
    let held: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|m| m.contains("held back"))
        .collect();
    assert!(held.iter().any(|m| m.contains("gold_signal_alive")), "{held:#?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_reports_the_promotion_it_would_make_and_makes_none() {
    let site = site().await;
    let w = watchdog(&site, site.ts.addr(), &[("WATCHDOG_MODE", "dry-run")]).await;
    site.gold.kill();
    let st = w
        .wait_status("dry run", |s| s["promotion"]["result"] == "dry_run")
        .await;
    let would = st["promotion"]["reason"].as_str().unwrap_or_default();
    assert!(would.contains("would promote Patroni"), "{st:#}");
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"dry_run\"}")
            .await,
        1.0
    );
    assert_golddr_untouched(&site, &w).await;
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"dry_run\"}")
            .await,
        1.0,
        "reported once per loss, not once per tick"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_promote_promotes_a_plain_streaming_standby_and_its_own_setting_disarms_it() {
    let gold = PgServer::start(PgOptions::default());
    prepare_gold(&gold).await;
    let ts = FaultProxy::start(gold.addr()).await;
    let standby = PgServer::start(PgOptions {
        replica_of: Some(ts.addr()),
        ..Default::default()
    });
    let local = standby.superuser_client().await;
    let in_recovery = async || -> bool {
        local
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(true)
    };
    assert!(in_recovery().await);
    let w = app::spawn(config(
        ts.addr(),
        standby.port(),
        &[
            ("WATCHDOG_PROMOTER", "pg-promote"),
            ("WATCHDOG_LOCAL_PG_USER", "postgres"),
        ],
    ))
    .await;
    w.wait_status("the standby's WAL receiver seen", |s| {
        s["verdict"] == "up" && s["cluster"]["wal_receiver"] == "streaming"
    })
    .await;
    // Without Patroni, the disarm switch is a setting of the standby itself,
    // flipped without a restart.
    for sql in [
        "SET patroni_dr_watchdog.disarmed = on",
        "ALTER SYSTEM SET patroni_dr_watchdog.disarmed = on",
        "SELECT pg_reload_conf()",
    ] {
        local.batch_execute(sql).await.expect("ALTER SYSTEM on a standby");
    }
    w.wait_status("disarm seen", |s| {
        s["cluster"]["disarmed_by"] == serde_json::json!(["postgres_setting"])
    })
    .await;
    gold.kill();
    w.wait_status("held back by the disarm switch", |s| has_veto(s, "disarmed"))
        .await;
    assert!(in_recovery().await);
    for sql in [
        "ALTER SYSTEM RESET patroni_dr_watchdog.disarmed",
        "SELECT pg_reload_conf()",
    ] {
        local.batch_execute(sql).await.expect("re-arm");
    }
    w.wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    crate::support::wait_for("standby writable", Duration::from_secs(30), async || {
        !in_recovery().await
    })
    .await;
    let rows: i64 = local
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, ROWS);
    local
        .batch_execute("INSERT INTO orders VALUES (1000, 'written on the promoted standby')")
        .await
        .expect("writable");
    w.stop().await;
}

/// GoldDR's Patroni REST API password in the basic-auth test.
const PATRONI_PASSWORD: &str = "patroni-api-s3cret";
const WRONG_PATRONI_PASSWORD: &str = "not-the-patroni-s3cret";

/// GoldDR's Patroni wants basic auth (`restapi.authentication`): the
/// `patroni-api` promoter promotes with `WATCHDOG_PATRONI_USERNAME` /
/// `WATCHDOG_PATRONI_PASSWORD_FILE`, and without them Patroni's refusal comes
/// back saying what to set, never a secret.
#[tokio::test(flavor = "multi_thread")]
async fn patroni_api_promotes_with_restapi_authentication_and_says_what_to_set_without_it() {
    let site = site_with(|o| GoldDrOptions {
        restapi_auth: Some(("watchdog".into(), PATRONI_PASSWORD.into())),
        ..o
    })
    .await;
    let (dr, gold) = (&site.dr, &site.gold);
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("patroni-password");
    std::fs::write(&password_file, format!("{PATRONI_PASSWORD}\n")).expect("write password file");
    let password_file = password_file.to_str().expect("utf-8 path");
    let ts_port = site.ts.addr().port().to_string();
    let local_port = dr.pg_port.to_string();
    let mut base = vars(&ts_port, &local_port);
    base.push(("WATCHDOG_PATRONI_URL", dr.patroni_url.as_str()));

    // A wrong password: Patroni refuses the write, the message says which
    // settings to check and shows no password.
    let mut wrong = base.clone();
    wrong.extend([
        ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
        ("WATCHDOG_PATRONI_PASSWORD", WRONG_PATRONI_PASSWORD),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_patroni-dr-watchdog"))
        .env_clear()
        .envs(wrong.iter().copied())
        .args(["promote", "--reason", "drill", "--force"])
        .stdin(Stdio::null())
        .output()
        .expect("run promote");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("401")
            && text.contains("WATCHDOG_PATRONI_USERNAME")
            && text.contains("WATCHDOG_PATRONI_PASSWORD"),
        "{text}"
    );
    assert!(!text.contains(WRONG_PATRONI_PASSWORD), "{text}");
    assert!(dr.is_in_recovery().await, "a refused PATCH wrote nothing");

    // Two watchdogs: one without credentials, acting first; one with them,
    // acting a few seconds later.
    let without = app::spawn(app::config_from(&base, &[])).await;
    let with = app::spawn(app::config_from(
        &base,
        &[
            ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
            ("WATCHDOG_PATRONI_PASSWORD_FILE", password_file),
            ("WATCHDOG_PROMOTE_AFTER", "30"),
        ],
    ))
    .await;
    for w in [&without, &with] {
        w.wait_status("up beside the standby leader", |s| {
            s["verdict"] == "up" && s["cluster"]["role"]["role"] == "standby_leader"
        })
        .await;
    }

    gold.kill();
    let st = without
        .wait_status("the PATCH refused", |s| s["promotion"]["last_error"].is_string())
        .await;
    let error = st["promotion"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("401")
            && error.contains("restapi.authentication")
            && error.contains("WATCHDOG_PATRONI_USERNAME")
            && error.contains("WATCHDOG_PATRONI_PASSWORD"),
        "{error}"
    );
    assert!(dr.is_in_recovery().await, "the refused PATCH wrote nothing");

    let st = with
        .wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    crate::support::wait_for("GoldDR writable", Duration::from_secs(30), async || {
        !dr.is_in_recovery().await
    })
    .await;
    assert_eq!(dr.query_i64("SELECT count(*) FROM orders").await, ROWS);
    assert!(dr.is_primary().await);
    assert!(
        dr.config_in_dcs()
            .await
            .get("standby_cluster")
            .is_none_or(serde_json::Value::is_null)
    );
    // The password shows nowhere the watchdog reports.
    let (_, metrics) = with.get("/metrics").await;
    let shown = st.to_string() + &with.status().await.to_string() + &metrics;
    assert!(!shown.contains(PATRONI_PASSWORD), "{shown}");
    assert_eq!(st["settings"]["patroni"]["auth"]["password"], "<redacted>");

    without.stop().await;
    with.stop().await;
}

/// The Transport Service's claim is re-synced: its Service (on the API
/// double) gets a new port, a new tunnel, and the old one closes. The
/// watchdog, beside GoldDR's real Patroni, points `standby_cluster.port` at
/// the new port through `PATCH /config`; GoldDR's WAL receiver then streams
/// through it, a row written on Gold afterwards arrives, and nothing else in
/// the dynamic config changes but our record of the fix.
#[tokio::test(flavor = "multi_thread")]
async fn standby_cluster_follows_the_transport_service_to_a_new_port_and_streams_through_it() {
    use crate::support::kube_env::KubeEnv;

    let site = site().await;
    let new_ts = FaultProxy::start(site.gold.addr()).await;
    let env = KubeEnv::double().await;
    let service = "patroni-master-gold";
    env.create_service(service, &[(Some("postgres"), site.ts.port())])
        .await;
    let (probe_port, local_port) = (site.ts.port().to_string(), site.dr.pg_port.to_string());
    let mut base = vars(&probe_port, &local_port);
    // The port comes from the Service; GoldDR's standby_cluster.host is
    // 127.0.0.1, the host probed, so only the port is the watchdog's.
    base.retain(|(k, _)| *k != "WATCHDOG_GOLD_PORT");
    let config = app::config_from(
        &base,
        &[
            ("WATCHDOG_TS_SERVICE", service),
            ("WATCHDOG_TS_PORT_NAME", "postgres"),
            ("WATCHDOG_NAMESPACE", env.namespace()),
            ("WATCHDOG_PATRONI_URL", site.dr.patroni_url.as_str()),
        ],
    );
    let w = app::spawn_with(config, Some(env.client())).await;
    w.wait_status("up, beside the standby leader, in sync", |s| {
        s["verdict"] == "up"
            && s["cluster"]["role"]["role"] == "standby_leader"
            && s["cluster"]["standby_target"]["decision"] == "in_sync"
    })
    .await;
    let before = site.dr.config_in_dcs().await;
    assert_eq!(before["standby_cluster"]["port"], site.ts.port());
    assert_eq!(sender_port(&site.dr).await, Some(site.ts.port()));

    env.set_service_port(service, new_ts.port()).await;
    site.ts.set(Fault::Refuse).await;
    let st = w
        .wait_status("standby_cluster fixed", |s| {
            s["cluster"]["standby_target"]["last"]["result"] == "fixed"
        })
        .await;
    assert_eq!(st["target"]["endpoint"]["port"], new_ts.port(), "{st:#}");
    crate::support::wait_for(
        "standby_cluster.port in the DCS",
        Duration::from_secs(30),
        async || site.dr.config_in_dcs().await["standby_cluster"]["port"] == new_ts.port(),
    )
    .await;
    crate::support::wait_for(
        "GoldDR streaming through the new port",
        Duration::from_secs(60),
        async || sender_port(&site.dr).await == Some(new_ts.port()),
    )
    .await;
    site.gold
        .execute("INSERT INTO orders VALUES (2000, 'written after the move')")
        .await;
    crate::support::wait_for("the new row on GoldDR", Duration::from_secs(30), async || {
        site.dr
            .try_query_i64("SELECT count(*) FROM orders WHERE id = 2000")
            .await
            == Ok(1)
    })
    .await;
    assert_eq!(site.dr.role().await, "standby_leader");
    assert!(site.dr.is_in_recovery().await);

    let after = site.dr.config_in_dcs().await;
    let record = &after["patroni_dr_watchdog"]["standby_target"];
    assert_eq!(record["by"], "golddr-0", "{after:#}");
    assert!(
        record["reason"].as_str().is_some_and(|r| r.contains(&format!(
            "standby_cluster.port from {} to {}",
            site.ts.port(),
            new_ts.port()
        ))),
        "{after:#}"
    );
    let mut expected = before.clone();
    expected["standby_cluster"]["port"] = new_ts.port().into();
    expected["patroni_dr_watchdog"] = serde_json::json!({"standby_target": record.clone()});
    assert_eq!(after, expected, "nothing else in the config changed");
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"fixed\"}")
            .await,
        1.0
    );
    w.wait_status("in sync again", |s| {
        s["cluster"]["standby_target"]["decision"] == "in_sync"
    })
    .await;
    assert_eq!(w.metric("patroni_dr_watchdog_standby_target_mismatch").await, 0.0);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        0.0
    );
    w.stop().await;
}

/// The port GoldDR's WAL receiver streams from, while it streams.
async fn sender_port(dr: &GoldDr) -> Option<u16> {
    let port = dr
        .try_query_i64(
            "SELECT coalesce(max(sender_port), 0)::bigint FROM pg_stat_wal_receiver WHERE status = 'streaming'",
        )
        .await
        .ok()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

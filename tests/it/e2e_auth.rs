//! End to end with a GoldDR Patroni whose REST API wants basic auth
//! (`restapi.authentication`): the `patroni-api` promoter promotes with
//! `WATCHDOG_PATRONI_USERNAME`/`WATCHDOG_PATRONI_PASSWORD_FILE`, and without
//! them Patroni's refusal comes back saying what to set, never a secret.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::app;
use crate::support::patroni_cluster::{Etcd, Gold, GoldDr, GoldDrOptions};
use crate::support::pg::WATCHDOG_USER;
use crate::support::proxy::FaultProxy;

const ROWS: i64 = 25;
const PASSWORD: &str = "patroni-api-s3cret";
const WRONG_PASSWORD: &str = "not-the-patroni-s3cret";

fn vars<'a>(dr: &'a GoldDr, gold_port: &'a str, local_port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", gold_port),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ("WATCHDOG_PROMOTER", "patroni-api"),
        ("WATCHDOG_PATRONI_URL", dr.patroni_url.as_str()),
        ("WATCHDOG_LOCAL_PG_PORT", local_port),
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

#[tokio::test(flavor = "multi_thread")]
async fn patroni_api_promotes_with_restapi_authentication_and_says_what_to_set_without_it() {
    let etcd = Etcd::start();
    let gold = Gold::start();
    gold.execute("ALTER SYSTEM SET wal_sender_timeout = '2s'").await;
    gold.execute("SELECT pg_reload_conf()").await;
    gold.execute(&format!(
        "CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    gold.create_slot("golddr");
    let ts = FaultProxy::start(gold.addr()).await;
    let dr = GoldDr::start(
        &etcd,
        GoldDrOptions {
            restapi_auth: Some(("watchdog".into(), PASSWORD.into())),
            ..GoldDrOptions::new(ts.addr(), "golddr")
        },
    );
    crate::support::wait_for("rows on GoldDR", Duration::from_secs(60), async || {
        dr.try_query_i64("SELECT count(*) FROM orders").await == Ok(ROWS)
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("patroni-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
    let password_file = password_file.to_str().expect("utf-8 path");
    let ts_port = ts.port().to_string();
    let local_port = dr.pg_port.to_string();
    let base = vars(&dr, &ts_port, &local_port);

    // A wrong password: Patroni refuses the write, the message says which
    // settings to check and shows no password.
    let mut wrong = base.clone();
    wrong.extend([
        ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
        ("WATCHDOG_PATRONI_PASSWORD", WRONG_PASSWORD),
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
    assert!(!text.contains(WRONG_PASSWORD), "{text}");
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
    assert!(!shown.contains(PASSWORD), "{shown}");
    assert_eq!(st["settings"]["patroni"]["auth"]["password"], "<redacted>");

    without.stop().await;
    with.stop().await;
}

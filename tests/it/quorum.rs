//! The witness and the quorum with real parts: a real PostgreSQL as Gold, a
//! stand-in for Gold's Patroni REST API (answering 503, as Patroni does on
//! `/primary` when it has no primary: still a sign of life) behind a fault
//! proxy, the witness and the DR watchdog in this process. What an operator
//! and Prometheus read: `/v1/observation`, `/status`, the scraped series.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use serde_json::Value;

use crate::http::{PROMETHEUS_ACCEPT, promtool_check, scrape, series};
use crate::support::app::{self, Running};
use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use crate::support::proxy::{Fault, FaultProxy};

/// Gold's Patroni REST API: every path answers 503 "no primary".
async fn patroni_api() -> (FaultProxy, tokio_util::sync::CancellationToken) {
    let app = axum::Router::new().fallback(get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "no primary") }));
    let (addr, stop) = crate::support::serve(app).await;
    (FaultProxy::start(addr).await, stop)
}

fn witness_vars(gold: &PgServer, heartbeat: &str) -> Vec<(String, String)> {
    [
        ("WATCHDOG_GOLD_HOST", "127.0.0.1".to_string()),
        ("WATCHDOG_GOLD_PORT", gold.port().to_string()),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER.to_string()),
        ("WATCHDOG_GOLD_SSLMODE", "disable".to_string()),
        ("WATCHDOG_GOLD_HEARTBEAT", heartbeat.to_string()),
        ("WATCHDOG_PROBE_INTERVAL", "300ms".to_string()),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms".to_string()),
        ("WATCHDOG_FALL", "2".to_string()),
        ("WATCHDOG_RISE", "2".to_string()),
        ("WATCHDOG_PROMOTE_AFTER", "4".to_string()),
        ("HOSTNAME", "witness-a-0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn spawn_witness(vars: &[(String, String)]) -> Running {
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let w = app::spawn_witness(&vars).await;
    crate::support::wait_for("the witness's first round", Duration::from_secs(20), || async {
        observation(&w).await["sites"]["gold"]["observed_age_seconds"].is_number()
    })
    .await;
    w
}

async fn observation(w: &Running) -> Value {
    let (code, body) = w.get("/v1/observation").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("observation is JSON")
}

async fn wait_says(w: &Running, says: &str, verdict: &str) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        last = observation(w).await;
        if last["sites"]["gold"]["says"] == says && last["sites"]["gold"]["verdict"] == verdict {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the witness never said {says} with verdict {verdict}; last observation: {last:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_witness_tells_a_lost_site_from_a_site_without_a_primary() {
    let gold = PgServer::start(PgOptions::default());
    let (api, _stop) = patroni_api().await;
    let heartbeat = format!("http://{}/primary", api.addr());
    let w = spawn_witness(&witness_vars(&gold, &heartbeat)).await;

    let o = wait_says(&w, "primary_writable", "up").await;
    assert_eq!(o["version"], 1, "{o:#}");
    assert_eq!(o["witness"], "witness-a-0", "{o:#}");
    let g = &o["sites"]["gold"];
    assert_eq!(g["verdict"], "up", "{o:#}");
    assert_eq!(g["site"], "alive", "{o:#}");
    assert_eq!(g["heartbeat"][0]["signal"], heartbeat.as_str(), "{o:#}");
    assert_eq!(g["heartbeat"][0]["reading"], "alive", "{o:#}");
    assert_eq!(
        g["heartbeat"][0]["detail"], "HTTP 503",
        "any answer is a sign of life: {o:#}"
    );
    assert!(g["observed_age_seconds"].as_f64().unwrap() < 2.0, "{o:#}");
    assert_eq!(g["last_probe"]["outcome"], "up", "{o:#}");

    // A Patroni failover inside Gold: PostgreSQL gone, Patroni answering.
    gold.stop();
    wait_says(&w, "site_alive", "lost").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(observation(&w).await["sites"]["gold"]["says"], "site_alive");

    // The whole site gone: PostgreSQL and Patroni both silent.
    api.set(Fault::Refuse).await;
    let o = wait_says(&w, "site_lost", "lost").await;
    assert_eq!(o["sites"]["gold"]["site"], "silent", "{o:#}");
    assert!(o["sites"]["gold"]["site_since"].is_string(), "{o:#}");

    // What Prometheus scrapes says the same.
    let (code, _, body) = scrape(w.addr, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(code, 200);
    let s = series(&body);
    assert_eq!(s["patroni_dr_watchdog_gold_site{site=\"silent\"}"], "1", "{body}");
    assert_eq!(s["patroni_dr_watchdog_gold_site{site=\"alive\"}"], "0", "{body}");
    assert_eq!(s["patroni_dr_watchdog_verdict{verdict=\"lost\"}"], "1", "{body}");
    for result in ["alive", "silent"] {
        let n: f64 = s[&format!("patroni_dr_watchdog_heartbeat_checks_total{{result=\"{result}\"}}")]
            .parse()
            .unwrap();
        assert!(
            n >= 1.0,
            "heartbeat_checks_total{{result={result}}} = {n}\n{body}"
        );
    }
    assert!(body.contains("patroni_dr_watchdog_build_info{"), "{body}");
    let (_, _, classic) = scrape(w.addr, None).await;
    let (ok, said) = promtool_check(&classic);
    assert!(ok, "promtool: {said}\n{classic}");

    // The site coming back: Patroni answers (503) before PostgreSQL does.
    api.set(Fault::Forward).await;
    // PostgreSQL is not back yet: still lost, but the site answers.
    wait_says(&w, "site_alive", "lost").await;

    let st = w.status().await;
    assert_eq!(st["role"], "witness", "{st:#}");
    assert_eq!(st["says"], "site_alive", "{st:#}");
    assert_eq!(w.get("/livez").await.0, 200);
    assert_eq!(w.get("/readyz").await.0, 200);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dr_watchdog_counts_votes_and_exports_them() {
    let gold = PgServer::start(PgOptions::default());
    let (api, _stop) = patroni_api().await;
    let witness = spawn_witness(&witness_vars(&gold, &format!("http://{}/", api.addr()))).await;
    let gone = format!("http://{}", crate::support::closed_port());
    let witnesses = format!("{},{gone}", witness.url());
    // Votes are gathered with the cluster observation, which needs a
    // promoter: a plain local PostgreSQL is enough to count.
    let local = PgServer::start(PgOptions::default());
    let local_port = local.port().to_string();
    let dr = app::spawn(app::config(
        gold.addr(),
        &[
            ("WATCHDOG_PROMOTER", "pg-promote"),
            ("WATCHDOG_LOCAL_PG_PORT", local_port.as_str()),
            ("WATCHDOG_LOCAL_PG_USER", WATCHDOG_USER),
            ("WATCHDOG_WITNESSES", witnesses.as_str()),
            ("WATCHDOG_PROBE_INTERVAL", "300ms"),
            ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
        ],
    ))
    .await;
    let st = dr
        .wait_status("both votes", |s| {
            s["quorum"]["votes"].as_array().is_some_and(|v| v.len() == 2)
        })
        .await;
    let q = &st["quorum"];
    assert_eq!(q["mode"], "quorum", "{q:#}");
    assert_eq!(q["needed"], 2, "a majority of two: {q:#}");
    let vote = |url: &str| {
        q["votes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["witness"] == url)
            .cloned()
            .unwrap_or_else(|| panic!("no vote of {url}: {q:#}"))
    };
    let seen = dr
        .wait_status("the witness sees Gold", |s| {
            s["quorum"]["votes"][0]["vote"] == "sees_gold"
        })
        .await;
    let q = &seen["quorum"];
    assert!(q["votes"][0]["age_seconds"].as_f64().unwrap() < 5.0, "{q:#}");
    assert_eq!(vote(&gone)["vote"], "unreachable", "{q:#}");
    assert_eq!(q["reached"], false, "{q:#}");

    let (code, _, body) = scrape(dr.addr, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(code, 200);
    let s = series(&body);
    let votes = |url: &str, vote: &str| {
        s.get(&format!(
            "patroni_dr_watchdog_witness_votes{{witness=\"{url}\",vote=\"{vote}\"}}"
        ))
        .cloned()
        .unwrap_or_else(|| panic!("no witness_votes for {url} {vote}:\n{body}"))
    };
    assert_eq!(votes(&witness.url(), "sees_gold"), "1");
    assert_eq!(votes(&witness.url(), "site_lost"), "0");
    assert_eq!(votes(&gone, "unreachable"), "1");
    assert_eq!(s["patroni_dr_watchdog_quorum_needed"], "2", "{body}");
    assert_eq!(s["patroni_dr_watchdog_quorum_reached"], "0", "{body}");
    let (_, _, classic) = scrape(dr.addr, None).await;
    let (ok, said) = promtool_check(&classic);
    assert!(ok, "promtool: {said}\n{classic}");
    dr.stop().await;
    witness.stop().await;
}

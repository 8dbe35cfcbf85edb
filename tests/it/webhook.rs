//! Alerts reach the chat webhook, survive a failing webhook, and a webhook
//! that never answers cannot slow the watchdog down.

use std::time::Duration;

use crate::support::app;
use crate::support::pg::{PgOptions, PgServer};
use crate::support::webhook::WebhookSink;

fn fast(gold: std::net::SocketAddr, hook: &str, extra: &[(&str, &str)]) -> patroni_dr_watchdog::Config {
    let mut vars = vec![
        ("WATCHDOG_PROBE_INTERVAL", "500ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "400ms"),
        ("WATCHDOG_WEBHOOK_URL", hook),
        ("HOSTNAME", "golddr-1"),
    ];
    vars.extend_from_slice(extra);
    app::config(gold, &vars)
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_lost_and_a_blind_probe_are_posted_as_text_naming_the_sidecar() {
    let gold = PgServer::start(PgOptions {
        password: Some("right".into()),
        ..Default::default()
    });
    let sink = WebhookSink::start().await;
    // Blind first: the password is wrong.
    let w = app::spawn(fast(
        gold.addr(),
        &sink.url,
        &[("WATCHDOG_GOLD_PASSWORD", "wrong")],
    ))
    .await;
    crate::support::wait_for("blind alert", Duration::from_secs(20), async || {
        sink.any("is blind")
    })
    .await;
    w.stop().await;
    let blind: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|m| m.contains("is blind"))
        .collect();
    assert_eq!(blind.len(), 1, "once per blind streak, not per probe: {blind:?}");
    assert!(
        blind[0].starts_with("[patroni-dr-watchdog golddr-1] "),
        "{blind:?}"
    );
    assert!(blind[0].contains("auth_failed"), "{blind:?}");
    assert!(!blind[0].contains("wrong"), "no password in alerts: {blind:?}");

    let w = app::spawn(fast(
        gold.addr(),
        &sink.url,
        &[("WATCHDOG_GOLD_PASSWORD", "right")],
    ))
    .await;
    crate::support::wait_for("up", Duration::from_secs(20), async || w.verdict().await == "up").await;
    gold.stop();
    crate::support::wait_for("lost alert", Duration::from_secs(20), async || {
        sink.any("is lost")
    })
    .await;
    let lost = sink
        .messages()
        .into_iter()
        .find(|m| m.contains("is lost"))
        .unwrap_or_default();
    assert!(
        lost.contains("4 consecutive failed probes") && lost.contains("refused"),
        "{lost}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_is_retried_until_it_takes_the_alert() {
    // Nothing listens there: Gold is refused from the first probe.
    let gold = crate::support::closed_port();
    let sink = WebhookSink::failing_first(2).await;
    let w = app::spawn(fast(gold, &sink.url, &[])).await;
    crate::support::wait_for("delivered after retries", Duration::from_secs(30), async || {
        sink.any("is lost")
    })
    .await;
    assert_eq!(sink.requests(), 3, "two failures, then delivered");
    let (_, metrics) = w.get("/metrics").await;
    assert!(
        metrics.contains("patroni_dr_watchdog_webhook_alerts_total{result=\"delivered\"} 1"),
        "{metrics}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_that_never_answers_does_not_slow_the_watchdog() {
    // Nothing listens there: Gold is refused from the first probe.
    let gold = crate::support::closed_port();
    let sink = WebhookSink::hanging().await;
    let w = app::spawn(fast(gold, &sink.url, &[])).await;
    crate::support::wait_for("lost", Duration::from_secs(20), async || {
        w.verdict().await == "lost"
    })
    .await;
    crate::support::wait_for("alert attempted", Duration::from_secs(20), async || {
        sink.requests() >= 1
    })
    .await;
    let before = w.status().await["counters"]["probes"]
        .as_u64()
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = w.status().await["counters"]["probes"]
        .as_u64()
        .unwrap_or_default();
    assert!(
        after >= before + 5,
        "probing went on at its pace: {before} → {after}"
    );
    assert_eq!(w.get("/livez").await.0, 200);
    w.stop().await;
}

//! Hysteresis against real servers and the fault proxy. Most tests step the
//! loop probe by probe, so they show the counting without depending on the
//! clock; the last ones run the real scheduled loop with generous bounds.

use std::time::{Duration, Instant};

use crate::support::app;
use crate::support::pg::{PgOptions, PgServer};
use crate::support::proxy::{Fault, FaultProxy};
use patroni_dr_watchdog::decide::detector::Verdict;
use patroni_dr_watchdog::observe::probe::{BlindReason, DownReason, Outcome};

async fn tick_verdicts(s: &mut app::Stepper, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        s.watchdog.tick().await.expect("target is known");
        out.push(s.verdict());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_stopped_is_down_after_fall_and_lost_after_promote_after_then_up_after_rise() {
    let gold = PgServer::start(PgOptions::default());
    // fall 2, rise 2, promote_after 4
    let mut s = app::stepper(app::config(gold.addr(), &[]));
    assert_eq!(s.verdict(), "unknown");
    assert_eq!(tick_verdicts(&mut s, 2).await, ["unknown", "up"]);

    gold.stop();
    assert_eq!(
        tick_verdicts(&mut s, 5).await,
        ["up", "down", "down", "lost", "lost"]
    );
    {
        let st = s.status.borrow();
        assert_eq!(st.probe.consecutive_failures, 5);
        let last = st.probe.last_probe.as_ref().expect("last probe");
        assert_eq!((last.outcome, last.reason), ("down", "refused"));
    }

    gold.restart();
    // One answer ends "lost" (it is the promotion trigger); rise answers make it up.
    assert_eq!(tick_verdicts(&mut s, 2).await, ["down", "up"]);
    assert_eq!(s.status.borrow().probe.consecutive_successes, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_flapping_faster_than_promote_after_never_loses_gold() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    let mut s = app::stepper(app::config(proxy.addr(), &[]));
    tick_verdicts(&mut s, 2).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        // promote_after is 4: three failures, then one success, again and again.
        proxy.set(Fault::Refuse).await;
        seen.extend(tick_verdicts(&mut s, 3).await);
        proxy.set(Fault::Forward).await;
        seen.extend(tick_verdicts(&mut s, 1).await);
    }
    assert!(seen.iter().any(|v| v == "down"), "fall was crossed: {seen:?}");
    assert!(!seen.iter().any(|v| v == "lost"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_blind_and_never_loses_gold() {
    let gold = PgServer::start(PgOptions {
        password: Some("right".into()),
        ..Default::default()
    });
    let mut s = app::stepper(app::config(gold.addr(), &[("WATCHDOG_GOLD_PASSWORD", "wrong")]));
    let verdicts = tick_verdicts(&mut s, 10).await;
    assert!(verdicts.iter().all(|v| v == "unknown"), "{verdicts:?}");
    let st = s.status.borrow();
    assert_eq!(st.probe.counters.blind, 10);
    assert_eq!(st.probe.consecutive_failures, 0);
    assert_eq!(
        st.probe.last_probe.as_ref().map(|p| p.reason),
        Some("auth_failed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blind_probes_break_a_failure_streak() {
    let gold = PgServer::start(PgOptions {
        password: Some("right".into()),
        ..Default::default()
    });
    let proxy = FaultProxy::start(gold.addr()).await;
    let mut s = app::stepper(app::config(proxy.addr(), &[("WATCHDOG_GOLD_PASSWORD", "wrong")]));
    for _ in 0..3 {
        proxy.set(Fault::Refuse).await;
        tick_verdicts(&mut s, 3).await;
        proxy.set(Fault::Forward).await;
        let report = s.watchdog.tick().await.expect("probed");
        assert_eq!(report.outcome, Outcome::Blind(BlindReason::AuthFailed));
    }
    assert_eq!(
        s.verdict(),
        "down",
        "failures crossed fall but never promote_after"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_at_the_target_is_down_in_recovery_and_then_lost() {
    let gold = PgServer::start(PgOptions {
        standby: true,
        ..Default::default()
    });
    let mut s = app::stepper(app::config(gold.addr(), &[]));
    assert_eq!(
        tick_verdicts(&mut s, 4).await,
        ["unknown", "down", "down", "lost"]
    );
    let st = s.status.borrow();
    assert_eq!(
        st.probe.last_probe.as_ref().map(|p| p.reason),
        Some("in_recovery")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_tunnel_counts_as_down_and_never_hangs_the_loop() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    let mut s = app::stepper(app::config(
        proxy.addr(),
        &[
            ("WATCHDOG_PROBE_TIMEOUT", "500ms"),
            ("WATCHDOG_PROBE_INTERVAL", "1s"),
        ],
    ));
    tick_verdicts(&mut s, 2).await;
    proxy.set(Fault::Blackhole).await;
    let start = Instant::now();
    let verdicts = tick_verdicts(&mut s, 4).await;
    let took = start.elapsed();
    assert_eq!(verdicts, ["up", "down", "down", "lost"]);
    assert_eq!(
        s.status.borrow().probe.last_probe.as_ref().map(|p| p.reason),
        Some(DownReason::Timeout.as_str())
    );
    assert!(took < Duration::from_secs(8), "4 probes of 500 ms took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_loop_loses_a_stopped_gold_and_recovers() {
    let gold = PgServer::start(PgOptions::default());
    let w = app::spawn(app::config(
        gold.addr(),
        &[
            ("WATCHDOG_PROBE_INTERVAL", "300ms"),
            ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
        ],
    ))
    .await;
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        w.verdict().await == "up"
    })
    .await;
    gold.stop();
    let stopped = Instant::now();
    crate::support::wait_for("lost", Duration::from_secs(30), || async {
        w.verdict().await == "lost"
    })
    .await;
    // promote_after (4) probes at 300 ms: no faster than 3 intervals after the
    // first failure.
    assert!(
        stopped.elapsed() >= Duration::from_millis(800),
        "{:?}",
        stopped.elapsed()
    );
    gold.restart();
    crate::support::wait_for("up again", Duration::from_secs(30), || async {
        w.verdict().await == "up"
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_loop_never_loses_gold_behind_a_fast_flapping_tunnel() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    // Flapping every 300 ms gives at most 2 failed probes of 200 ms in a row
    // (3 if the machine stalls); promote_after is 6.
    let w = app::spawn(app::config(
        proxy.addr(),
        &[
            ("WATCHDOG_PROBE_INTERVAL", "200ms"),
            ("WATCHDOG_PROBE_TIMEOUT", "150ms"),
            ("WATCHDOG_FALL", "2"),
            ("WATCHDOG_PROMOTE_AFTER", "6"),
        ],
    ))
    .await;
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        w.verdict().await == "up"
    })
    .await;
    let flap = proxy.flap(Duration::from_millis(300));
    let until = Instant::now() + Duration::from_secs(6);
    let mut verdicts = std::collections::BTreeSet::new();
    while Instant::now() < until {
        let v = w.verdict().await;
        assert_ne!(v, Verdict::Lost.as_str(), "flapping lost Gold");
        verdicts.insert(v);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flap.stop().await;
    let st = w.status().await;
    assert!(
        st["counters"]["down"].as_u64() > Some(0),
        "the flap was seen: {st}"
    );
    assert!(st["counters"]["up"].as_u64() > Some(0));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_password_never_makes_gold_down_or_lost() {
    let gold = PgServer::start(PgOptions {
        password: Some("right".into()),
        ..Default::default()
    });
    // No WATCHDOG_GOLD_PASSWORD, while Gold asks for one. fall (2) +
    // promote_after (4) probes would have declared a down Gold lost.
    let mut s = app::stepper(app::config(gold.addr(), &[]));
    let verdicts = tick_verdicts(&mut s, 8).await;
    assert!(verdicts.iter().all(|v| v == "unknown"), "{verdicts:?}");
    {
        let st = s.status.borrow();
        assert_eq!(st.probe.counters.blind, 8);
        assert_eq!(st.probe.counters.down, 0);
        assert_eq!(st.probe.consecutive_failures, 0);
        assert_eq!(
            st.probe.last_probe.as_ref().map(|p| (p.outcome, p.reason)),
            Some(("blind", BlindReason::PasswordMissing.as_str()))
        );
    }

    // A Gold that was up and then starts asking for a password (pg_hba.conf
    // changed under us) stays up as far as promotion is concerned.
    let trusted = PgServer::start(PgOptions::default());
    let mut s = app::stepper(app::config(trusted.addr(), &[]));
    assert_eq!(tick_verdicts(&mut s, 2).await, ["unknown", "up"]);
    trusted
        .execute("ALTER ROLE watchdog PASSWORD 'now-required'")
        .await;
    std::fs::write(
        trusted.data_dir().join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .expect("write pg_hba.conf");
    trusted.execute("SELECT pg_reload_conf()").await;
    // The reload lands a moment later; then fall + promote_after probes.
    crate::support::wait_for(
        "the password to be asked for",
        Duration::from_secs(15),
        async || {
            s.watchdog.tick().await.expect("target is known").outcome
                == Outcome::Blind(BlindReason::PasswordMissing)
        },
    )
    .await;
    let verdicts = tick_verdicts(&mut s, 8).await;
    assert!(verdicts.iter().all(|v| v == "up"), "{verdicts:?}");
    assert_eq!(s.status.borrow().probe.counters.down, 0);
}

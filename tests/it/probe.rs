//! One probe against real PostgreSQL servers, directly or through the fault
//! proxy: every outcome class an operator relies on.

use std::time::{Duration, Instant};

use crate::support::app;
use crate::support::pg::{PgOptions, PgServer};
use crate::support::proxy::{Fault, FaultProxy};
use patroni_dr_watchdog::observe::probe::{BlindReason, DownReason, Outcome, Probe, ProbeReport};
use patroni_dr_watchdog::observe::target::Endpoint;

async fn probe_once(gold: std::net::SocketAddr, extra: &[(&str, &str)]) -> ProbeReport {
    let config = app::config(gold, extra);
    let endpoint = Endpoint {
        host: config.gold.address.host(""),
        port: config.gold.address.fixed_port().expect("static port"),
    };
    app::probe(&config).probe(&endpoint).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writable_primary_is_up_and_no_connection_is_left_behind() {
    let gold = PgServer::start(PgOptions::default());
    for _ in 0..20 {
        let report = probe_once(gold.addr(), &[]).await;
        assert_eq!(report.outcome, Outcome::Up, "{report:?}");
        assert_eq!(report.error, None);
    }
    crate::support::wait_for(
        "Gold's client backends to close",
        Duration::from_secs(10),
        || async { gold.client_backends().await == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_port_is_down_refused() {
    let report = probe_once(crate::support::closed_port(), &[]).await;
    assert_eq!(report.outcome, Outcome::Down(DownReason::Refused), "{report:?}");
    assert!(report.error.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_tunnel_is_down_timeout_within_the_timeout() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    proxy.set(Fault::Blackhole).await;
    let start = Instant::now();
    let report = probe_once(
        proxy.addr(),
        &[
            ("WATCHDOG_PROBE_TIMEOUT", "1s"),
            ("WATCHDOG_PROBE_INTERVAL", "2s"),
        ],
    )
    .await;
    let took = start.elapsed();
    assert_eq!(report.outcome, Outcome::Down(DownReason::Timeout), "{report:?}");
    assert!(took >= Duration::from_millis(900), "gave up early: {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "probe hung past its timeout: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_tunnel_is_down() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    proxy.set(Fault::Reset).await;
    let report = probe_once(proxy.addr(), &[]).await;
    assert!(
        matches!(report.outcome, Outcome::Down(DownReason::Reset | DownReason::Eof)),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_tunnel_within_the_timeout_is_still_up() {
    let gold = PgServer::start(PgOptions::default());
    let proxy = FaultProxy::start(gold.addr()).await;
    proxy.set(Fault::Delay(Duration::from_millis(50))).await;
    let report = probe_once(proxy.addr(), &[]).await;
    assert_eq!(report.outcome, Outcome::Up, "{report:?}");
    assert!(report.duration >= Duration::from_millis(100), "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_blind_not_down() {
    let gold = PgServer::start(PgOptions {
        password: Some("right-password".into()),
        ..Default::default()
    });
    let ok = probe_once(gold.addr(), &[("WATCHDOG_GOLD_PASSWORD", "right-password")]).await;
    assert_eq!(ok.outcome, Outcome::Up, "{ok:?}");
    let bad = probe_once(gold.addr(), &[("WATCHDOG_GOLD_PASSWORD", "wrong-password")]).await;
    assert_eq!(bad.outcome, Outcome::Blind(BlindReason::AuthFailed), "{bad:?}");
    let error = bad.error.unwrap_or_default();
    assert!(error.contains("28P01"), "{error}");
    assert!(!error.contains("wrong-password"), "the password leaked: {error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_database_is_blind() {
    let gold = PgServer::start(PgOptions::default());
    let report = probe_once(gold.addr(), &[("WATCHDOG_GOLD_DATABASE", "no_such_db")]).await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::UnknownDatabase),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_is_down_in_recovery() {
    let gold = PgServer::start(PgOptions {
        standby: true,
        ..Default::default()
    });
    let report = probe_once(gold.addr(), &[]).await;
    assert_eq!(
        report.outcome,
        Outcome::Down(DownReason::InRecovery),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_shutting_down_is_down() {
    let gold = PgServer::start(PgOptions::default());
    // A smart shutdown waits for this session and refuses new ones meanwhile.
    let holder = gold.superuser_client().await;
    gold.begin_smart_shutdown();
    let mut last = None;
    crate::support::wait_for(
        "the server to refuse new sessions",
        Duration::from_secs(10),
        async || {
            let report = probe_once(gold.addr(), &[]).await;
            let done = report.outcome != Outcome::Up;
            last = Some(report);
            done
        },
    )
    .await;
    let report = last.expect("probed");
    assert_eq!(
        report.outcome,
        Outcome::Down(DownReason::ShuttingDown),
        "{report:?}"
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verify_full_trusts_the_right_ca_and_is_blind_with_the_wrong_one() {
    let gold = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let other = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let ca = gold.ca_file().expect("CA").display().to_string();
    let wrong_ca = other.ca_file().expect("CA").display().to_string();
    // The certificate is issued to localhost, so verify by that name.
    let verify_with = |ca: &str| -> [(&'static str, String); 3] {
        [
            ("WATCHDOG_GOLD_HOST", "localhost".into()),
            ("WATCHDOG_GOLD_SSLMODE", "verify-full".into()),
            ("WATCHDOG_GOLD_SSLROOTCERT", ca.into()),
        ]
    };
    for (ca, expected) in [
        (&ca, Outcome::Up),
        (&wrong_ca, Outcome::Blind(BlindReason::CertificateRejected)),
    ] {
        let vars = verify_with(ca);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let report = probe_once(gold.addr(), &vars).await;
        assert_eq!(report.outcome, expected, "CA {ca}: {report:?}");
    }

    // require encrypts without verifying, as libpq does.
    let report = probe_once(gold.addr(), &[("WATCHDOG_GOLD_SSLMODE", "require")]).await;
    assert_eq!(report.outcome, Outcome::Up, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requiring_tls_from_a_server_without_it_is_blind() {
    let gold = PgServer::start(PgOptions::default());
    let report = probe_once(gold.addr(), &[("WATCHDOG_GOLD_SSLMODE", "require")]).await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::TlsUnsupported),
        "{report:?}"
    );
    // prefer falls back to plain text.
    let report = probe_once(gold.addr(), &[("WATCHDOG_GOLD_SSLMODE", "prefer")]).await;
    assert_eq!(report.outcome, Outcome::Up, "{report:?}");
}

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

/// Replaces Gold's TCP authentication rules with `method` and reloads.
/// The superuser's unix socket stays trusted for the support code.
async fn set_host_auth(gold: &PgServer, method: &str) {
    let hba = gold.data_dir().join("pg_hba.conf");
    // Overwriting the existing file keeps its owner (postgres).
    std::fs::write(
        &hba,
        format!("local all all trust\nhost all all 127.0.0.1/32 {method}\n"),
    )
    .expect("write pg_hba.conf");
    gold.execute("SELECT pg_reload_conf()").await;
}

/// Probes until the outcome is `want` (a reload takes effect a moment after
/// it is asked for) and returns that report; panics with the last report.
async fn probe_until(gold: std::net::SocketAddr, extra: &[(&str, &str)], want: Outcome) -> ProbeReport {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let report = probe_once(gold, extra).await;
        if report.outcome == want {
            return report;
        }
        last = Some(report);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never {want}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_password_is_blind_for_scram_and_md5_never_down() {
    let gold = PgServer::start(PgOptions {
        password: Some("right-password".into()),
        ..Default::default()
    });
    // SCRAM (the default of the server above): the probe set no password.
    let report = probe_once(gold.addr(), &[]).await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::PasswordMissing),
        "{report:?}"
    );
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("password missing")),
        "{report:?}"
    );

    // md5: the password must be stored as an md5 hash for the server to ask
    // for md5 instead of SCRAM.
    gold.execute("SET password_encryption = 'md5'; ALTER ROLE watchdog PASSWORD 'right-password'")
        .await;
    set_host_auth(&gold, "md5").await;
    let right = [("WATCHDOG_GOLD_PASSWORD", "right-password")];
    probe_until(gold.addr(), &right, Outcome::Up).await;
    let report = probe_once(gold.addr(), &[]).await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::PasswordMissing),
        "{report:?}"
    );
    let wrong = probe_once(gold.addr(), &[("WATCHDOG_GOLD_PASSWORD", "wrong-password")]).await;
    assert_eq!(
        wrong.outcome,
        Outcome::Blind(BlindReason::AuthFailed),
        "{wrong:?}"
    );
    assert!(
        !wrong.error.unwrap_or_default().contains("wrong-password"),
        "the password leaked"
    );

    // Cleartext `password` asks for a password too.
    set_host_auth(&gold, "password").await;
    probe_until(gold.addr(), &right, Outcome::Up).await;
    let report = probe_once(gold.addr(), &[]).await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::PasswordMissing),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_authentication_method_the_probe_cannot_speak_is_blind() {
    let gold = PgServer::start(PgOptions {
        password: Some("right-password".into()),
        ..Default::default()
    });
    let right = [("WATCHDOG_GOLD_PASSWORD", "right-password")];
    assert_eq!(probe_once(gold.addr(), &right).await.outcome, Outcome::Up);

    // A password is offered, but Gold wants Kerberos (GSSAPI).
    set_host_auth(&gold, "gss").await;
    let report = probe_until(gold.addr(), &right, Outcome::Blind(BlindReason::AuthUnsupported)).await;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unsupported authentication method")),
        "{report:?}"
    );

    // SCRAM required, but the role's password is stored as md5: the server
    // cannot run SCRAM for it and refuses.
    gold.execute("SET password_encryption = 'md5'; ALTER ROLE watchdog PASSWORD 'right-password'")
        .await;
    set_host_auth(&gold, "scram-sha-256").await;
    probe_until(gold.addr(), &right, Outcome::Blind(BlindReason::AuthFailed)).await;

    // pg_hba.conf rejects the probe outright.
    set_host_auth(&gold, "reject").await;
    let report = probe_until(gold.addr(), &right, Outcome::Blind(BlindReason::AuthFailed)).await;
    assert!(
        report.error.as_deref().is_some_and(|e| e.contains("28000")),
        "{report:?}"
    );
}

/// Runs openssl in `dir`, panicking with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = crate::support::pg::run(std::process::Command::new("openssl").args(args).current_dir(dir));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        crate::support::pg::describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_host_is_blind_name_mismatch() {
    let gold = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let ca = gold.ca_file().expect("CA");
    let ca_path = ca.display().to_string();
    let verify = [
        ("WATCHDOG_GOLD_HOST", "localhost"),
        ("WATCHDOG_GOLD_SSLMODE", "verify-full"),
        ("WATCHDOG_GOLD_SSLROOTCERT", ca_path.as_str()),
    ];
    assert_eq!(probe_once(gold.addr(), &verify).await.outcome, Outcome::Up);

    // Re-issue Gold's certificate, by the same CA and with the same key, to
    // another host name only.
    let tls = ca.parent().expect("tls dir");
    std::fs::write(
        tls.join("other.ext"),
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:gold.other.example\n",
    )
    .expect("write other.ext");
    openssl(
        tls,
        &[
            "req",
            "-new",
            "-key",
            "server.key",
            "-subj",
            "/CN=gold.other.example",
            "-out",
            "other.csr",
        ],
    );
    openssl(
        tls,
        &[
            "x509",
            "-req",
            "-in",
            "other.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "other.ext",
            "-out",
            "server.crt",
        ],
    );
    gold.execute("SELECT pg_reload_conf()").await;
    let report = probe_until(
        gold.addr(),
        &verify,
        Outcome::Blind(BlindReason::CertificateNameMismatch),
    )
    .await;
    assert!(report.error.is_some(), "{report:?}");
    // The same certificate is fine for require, which does not verify.
    let report = probe_once(gold.addr(), &[("WATCHDOG_GOLD_SSLMODE", "require")]).await;
    assert_eq!(report.outcome, Outcome::Up, "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_against_a_server_without_tls_is_blind() {
    let gold = PgServer::start(PgOptions::default());
    let other = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let ca = other.ca_file().expect("CA").display().to_string();
    let report = probe_once(
        gold.addr(),
        &[
            ("WATCHDOG_GOLD_HOST", "localhost"),
            ("WATCHDOG_GOLD_SSLMODE", "verify-full"),
            ("WATCHDOG_GOLD_SSLROOTCERT", ca.as_str()),
        ],
    )
    .await;
    assert_eq!(
        report.outcome,
        Outcome::Blind(BlindReason::TlsUnsupported),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_tls_version_in_common_is_blind_incompatible() {
    let gold = PgServer::start(PgOptions {
        tls: true,
        ..Default::default()
    });
    let require = [("WATCHDOG_GOLD_SSLMODE", "require")];
    assert_eq!(probe_once(gold.addr(), &require).await.outcome, Outcome::Up);
    // rustls speaks TLS 1.2 and 1.3 only.
    // ALTER SYSTEM refuses to run inside the implicit transaction of a
    // multi-statement string: one at a time.
    for sql in [
        "ALTER SYSTEM SET ssl_min_protocol_version = 'TLSv1'",
        "ALTER SYSTEM SET ssl_max_protocol_version = 'TLSv1.1'",
        "SELECT pg_reload_conf()",
    ] {
        gold.execute(sql).await;
    }
    let report = probe_until(
        gold.addr(),
        &require,
        Outcome::Blind(BlindReason::TlsIncompatible),
    )
    .await;
    assert!(report.error.is_some(), "{report:?}");
}

//! The settings as an operator gives them: each bad value names its
//! variable, secrets never show, defaults are safe.

use super::*;

fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut vars: Vec<(String, String)> = vec![("WATCHDOG_GOLD_HOST".into(), "gold.example".into())];
    vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_vars(vars)
}

fn err_var(e: ConfigError) -> String {
    match e {
        ConfigError::Missing { var, .. }
        | ConfigError::Invalid { var, .. }
        | ConfigError::Conflict { var, .. }
        | ConfigError::File { var, .. }
        | ConfigError::Unknown { var, .. }
        | ConfigError::Removed { var, .. }
        | ConfigError::WrongRole { var, .. } => var,
    }
}

#[test]
fn defaults_are_safe_for_a_real_deployment() {
    let c = cfg(&[]).unwrap();
    assert_eq!(
        c.gold.address,
        GoldAddress::Static {
            host: "gold.example".into(),
            port: 5432
        }
    );
    assert_eq!(
        c.promoter,
        PromoterKind::None,
        "nothing to promote outside a cluster"
    );
    assert!(!c.uses_kubernetes());
    assert_eq!(c.probe_interval, Duration::from_secs(10));
    assert_eq!(c.probe_timeout, Duration::from_secs(5));
    assert_eq!(c.gold.sslmode, SslMode::Prefer);
    // Gold must stay unreachable longer than its own failover plus a
    // tunnel re-route (~90 s worst case) before it counts as lost.
    let lost_after = c.probe_interval * c.thresholds.promote_after();
    assert!(lost_after >= Duration::from_secs(120), "{lost_after:?}");
    // The tunnel's F5 monitor needs up to 20 s to mark a member down.
    assert!(c.probe_interval * c.thresholds.fall() > Duration::from_secs(20));
}

#[test]
fn other_environment_variables_are_ignored() {
    let mut vars = vec![("WATCHDOG_GOLD_HOST".to_string(), "g".to_string())];
    vars.push(("PATH".into(), "/bin".into()));
    vars.push(("GOLD_PORT".into(), "not-a-port".into()));
    assert!(Config::from_vars(vars).is_ok());
}

#[test]
fn each_bad_value_names_its_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("WATCHDOG_PROBE_INTERVAL", "ten seconds")],
            "WATCHDOG_PROBE_INTERVAL",
        ),
        (&[("WATCHDOG_PROBE_INTERVAL", "0s")], "WATCHDOG_PROBE_INTERVAL"),
        (&[("WATCHDOG_PROBE_TIMEOUT", "-1s")], "WATCHDOG_PROBE_TIMEOUT"),
        (&[("WATCHDOG_PROBE_TIMEOUT", "10s")], "WATCHDOG_PROBE_TIMEOUT"),
        (&[("WATCHDOG_PROBE_TIMEOUT", "11s")], "WATCHDOG_PROBE_TIMEOUT"),
        (&[("WATCHDOG_FALL", "0")], "WATCHDOG_FALL"),
        (&[("WATCHDOG_FALL", "-3")], "WATCHDOG_FALL"),
        (&[("WATCHDOG_FALL", "three")], "WATCHDOG_FALL"),
        (&[("WATCHDOG_RISE", "0")], "WATCHDOG_RISE"),
        (&[("WATCHDOG_PROMOTE_AFTER", "0")], "WATCHDOG_PROMOTE_AFTER"),
        (
            &[("WATCHDOG_FALL", "5"), ("WATCHDOG_PROMOTE_AFTER", "4")],
            "WATCHDOG_PROMOTE_AFTER",
        ),
        (&[("WATCHDOG_GOLD_PORT", "0")], "WATCHDOG_GOLD_PORT"),
        (&[("WATCHDOG_GOLD_PORT", "70000")], "WATCHDOG_GOLD_PORT"),
        (&[("WATCHDOG_GOLD_PORT", "")], "WATCHDOG_GOLD_PORT"),
        (
            &[("WATCHDOG_GOLD_PASSWORD_FILE", "/nonexistent/secret")],
            "WATCHDOG_GOLD_PASSWORD_FILE",
        ),
        (
            &[
                ("WATCHDOG_GOLD_PASSWORD", "x"),
                ("WATCHDOG_GOLD_PASSWORD_FILE", "/x"),
            ],
            "WATCHDOG_GOLD_PASSWORD",
        ),
        (&[("WATCHDOG_LISTEN_ADDR", "localhost")], "WATCHDOG_LISTEN_ADDR"),
        (
            &[("WATCHDOG_LISTEN_ADDR", "0.0.0.0:99999")],
            "WATCHDOG_LISTEN_ADDR",
        ),
        (&[("WATCHDOG_GOLD_SSLMODE", "allow")], "WATCHDOG_GOLD_SSLMODE"),
        (
            &[("WATCHDOG_GOLD_SSLMODE", "verify-full")],
            "WATCHDOG_GOLD_SSLROOTCERT",
        ),
        (
            &[
                ("WATCHDOG_GOLD_SSLMODE", "verify-full"),
                ("WATCHDOG_GOLD_SSLROOTCERT", "/nonexistent/ca.pem"),
            ],
            "WATCHDOG_GOLD_SSLROOTCERT",
        ),
        (&[("WATCHDOG_LOG_FORMAT", "xml")], "WATCHDOG_LOG_FORMAT"),
        (&[("WATCHDOG_GOLD_USER", " ")], "WATCHDOG_GOLD_USER"),
        (&[("WATCHDOG_PROMOTE_AFTR", "3")], "WATCHDOG_PROMOTE_AFTR"),
    ];
    for (pairs, expected) in cases {
        let e = cfg(pairs).expect_err(&format!("{pairs:?} must be rejected"));
        let msg = e.to_string();
        assert!(msg.contains(expected), "{pairs:?}: {msg}");
        assert_eq!(&err_var(e), expected, "{pairs:?}");
    }
}

#[test]
fn a_transport_service_replaces_host_and_port() {
    let c = Config::from_vars([
        (
            "WATCHDOG_TS_SERVICE".to_string(),
            "patroni-master-gold".to_string(),
        ),
        ("WATCHDOG_TS_PORT_NAME".to_string(), "postgres".to_string()),
        ("KUBERNETES_SERVICE_HOST".to_string(), "10.0.0.1".to_string()),
        ("HOSTNAME".to_string(), "patroni-1".to_string()),
    ])
    .unwrap();
    assert_eq!(c.gold.address.service(), Some("patroni-master-gold"));
    assert_eq!(c.gold.address.host("dr"), "patroni-master-gold.dr.svc");
    assert!(c.gold.address.discovers_port());
    assert_eq!(c.promoter, PromoterKind::Configmap, "the default in a pod");
    assert_eq!(c.patroni_configmap, "patroni-config");
    assert_eq!(c.patroni.url, "http://127.0.0.1:8008");
    assert_eq!(c.identity, "patroni-1");
    assert!(c.uses_kubernetes());
}

#[test]
fn a_static_port_skips_discovery() {
    let c = cfg(&[
        ("WATCHDOG_TS_SERVICE", "patroni-master-gold"),
        ("WATCHDOG_GOLD_PORT", "6543"),
    ])
    .unwrap();
    assert_eq!(c.gold.address.fixed_port(), Some(6543));
    assert!(!c.gold.address.discovers_port());
}

#[test]
fn kubernetes_settings_are_validated() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("WATCHDOG_TS_PORT_NAME", "postgres")], "WATCHDOG_TS_PORT_NAME"),
        (
            &[
                ("WATCHDOG_TS_SERVICE", "ts"),
                ("WATCHDOG_TS_PORT_NAME", "pg"),
                ("WATCHDOG_GOLD_PORT", "5432"),
            ],
            "WATCHDOG_TS_PORT_NAME",
        ),
        (
            &[("WATCHDOG_TS_SERVICE", "ts"), ("WATCHDOG_TS_PORT_NAME", "5432")],
            "WATCHDOG_TS_PORT_NAME",
        ),
        (
            &[("WATCHDOG_TS_SERVICE", "Patroni_Master")],
            "WATCHDOG_TS_SERVICE",
        ),
        (&[("WATCHDOG_NAMESPACE", "-bad")], "WATCHDOG_NAMESPACE"),
        (&[("WATCHDOG_PROMOTER", "sed")], "WATCHDOG_PROMOTER"),
        (
            &[("WATCHDOG_PATRONI_CONFIGMAP", "patroni config")],
            "WATCHDOG_PATRONI_CONFIGMAP",
        ),
        (
            &[("WATCHDOG_PATRONI_URL", "127.0.0.1:8008")],
            "WATCHDOG_PATRONI_URL",
        ),
        (&[("WATCHDOG_PATRONI_URL", "ftp://x")], "WATCHDOG_PATRONI_URL"),
        (&[("WATCHDOG_MODE", "armed")], "WATCHDOG_MODE"),
        (&[("WATCHDOG_LOCAL_PG_PORT", "0")], "WATCHDOG_LOCAL_PG_PORT"),
        (
            &[
                ("WATCHDOG_LOCAL_PG_PASSWORD", "a"),
                ("WATCHDOG_LOCAL_PG_PASSWORD_FILE", "/x"),
            ],
            "WATCHDOG_LOCAL_PG_PASSWORD",
        ),
        (
            &[("WATCHDOG_WAL_RECEIVER_FRESH", "fresh")],
            "WATCHDOG_WAL_RECEIVER_FRESH",
        ),
        (&[("WATCHDOG_MAX_DATA_AGE", "0s")], "WATCHDOG_MAX_DATA_AGE"),
        // 18 × 10 s + 5 s = 185 s to declare Gold lost
        (&[("WATCHDOG_MAX_DATA_AGE", "3m")], "WATCHDOG_MAX_DATA_AGE"),
        (
            &[("WATCHDOG_ALLOW_STALE_PROMOTION", "yes please")],
            "WATCHDOG_ALLOW_STALE_PROMOTION",
        ),
        (&[("WATCHDOG_WITNESSES", "gold:5432")], "WATCHDOG_WITNESSES"),
        (
            &[("WATCHDOG_WITNESS_UNREACHABLE", "maybe")],
            "WATCHDOG_WITNESS_UNREACHABLE",
        ),
        (
            &[("WATCHDOG_WEBHOOK_URL", "chat.example/hooks/s3cret")],
            "WATCHDOG_WEBHOOK_URL",
        ),
    ];
    for (pairs, expected) in cases {
        let e = cfg(pairs).expect_err(&format!("{pairs:?} must be rejected"));
        assert_eq!(&err_var(e), expected, "{pairs:?}");
    }
}

#[test]
fn safety_settings_have_safe_defaults() {
    let c = cfg(&[]).unwrap();
    assert_eq!(c.mode, Mode::Enforce);
    assert!(!c.allow_stale_promotion);
    assert!(c.quorum.single_observer());
    assert_eq!(c.quorum.needed, 0);
    assert_eq!(c.local_pg.host, "127.0.0.1");
    // A Gold that is really gone has been silent far longer than the
    // freshness window by the time it is declared lost.
    assert!(c.wal_receiver_fresh < c.probe_interval * c.thresholds.promote_after());
}

#[test]
fn a_webhook_token_never_shows() {
    let c = cfg(&[("WATCHDOG_WEBHOOK_URL", "https://chat.example/hooks/s3cret-token")]).unwrap();
    assert_eq!(
        c.webhook_url.as_ref().map(WebhookUrl::expose),
        Some("https://chat.example/hooks/s3cret-token")
    );
    let shown = serde_json::to_string(&c).unwrap() + &format!("{c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    let e = cfg(&[("WATCHDOG_WEBHOOK_URL", "chat.example/hooks/s3cret")]).unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[test]
fn promoter_can_be_chosen_explicitly() {
    assert_eq!(
        cfg(&[("WATCHDOG_PROMOTER", "patroni-api")]).unwrap().promoter,
        PromoterKind::PatroniApi
    );
    assert_eq!(
        cfg(&[("WATCHDOG_PROMOTER", "pg-promote")]).unwrap().promoter,
        PromoterKind::PgPromote
    );
    assert_eq!(
        cfg(&[("WATCHDOG_PROMOTER", "configmap")]).unwrap().promoter,
        PromoterKind::Configmap
    );
    let mut vars = vec![
        ("WATCHDOG_GOLD_HOST".to_string(), "g".to_string()),
        ("WATCHDOG_PROMOTER".to_string(), "none".to_string()),
    ];
    vars.push(("KUBERNETES_SERVICE_HOST".into(), "10.0.0.1".into()));
    assert_eq!(Config::from_vars(vars).unwrap().promoter, PromoterKind::None);
}

#[test]
fn gold_host_is_required() {
    let e = Config::from_vars(Vec::<(String, String)>::new()).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_GOLD_HOST");
}

#[test]
fn password_file_is_read_and_trailing_newline_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "s3cret\n").unwrap();
    let c = cfg(&[("WATCHDOG_GOLD_PASSWORD_FILE", path.to_str().unwrap())]).unwrap();
    assert_eq!(c.gold.password.as_ref().map(Password::expose), Some("s3cret"));

    std::fs::write(&path, "\n").unwrap();
    let e = cfg(&[("WATCHDOG_GOLD_PASSWORD_FILE", path.to_str().unwrap())]).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_GOLD_PASSWORD_FILE");
}

#[test]
fn password_never_shows_in_debug_or_json() {
    let c = cfg(&[("WATCHDOG_GOLD_PASSWORD", "hunter2-secret")]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2-secret"));
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("hunter2-secret"), "{json}");
    assert!(json.contains("<redacted>"));
}

#[test]
fn bad_values_never_echo_a_password() {
    let e = cfg(&[
        ("WATCHDOG_GOLD_PASSWORD", "hunter2-secret"),
        ("WATCHDOG_FALL", "x"),
    ])
    .unwrap_err();
    assert!(!e.to_string().contains("hunter2-secret"));
}

#[test]
fn human_durations_are_accepted() {
    let c = cfg(&[
        ("WATCHDOG_PROBE_INTERVAL", "1m 30s"),
        ("WATCHDOG_PROBE_TIMEOUT", "1500ms"),
        ("WATCHDOG_MAX_DATA_AGE", "1h"),
    ])
    .unwrap();
    assert_eq!(c.max_data_age, Duration::from_secs(3600));
    assert_eq!(c.probe_interval, Duration::from_secs(90));
    assert_eq!(c.probe_timeout, Duration::from_millis(1500));
}

const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUWRTTZU5CEHwHD97clRfMojVPJEUwCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPdGVzdCBwYXRyb25pIGNhMCAXDTI2MTEyOTEwMTMxMVoYDzIx
MjYxMTA1MTAxMzExWjAaMRgwFgYDVQQDDA90ZXN0IHBhdHJvbmkgY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAARgUySrlep5/ksKXAmVL0akTv502G/hDY/RgUOI
6WF63HYp6dmqIQ5pI/iheCOR4Ed+PAOF9pK2uZ1eb6Hkn8Svo1MwUTAdBgNVHQ4E
FgQUTvCCzj67+2/i7xJQq8tKI1os3xEwHwYDVR0jBBgwFoAUTvCCzj67+2/i7xJQ
q8tKI1os3xEwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAwERs
k7IMv31XT/AiudxK6c3aus8/s/p7iKrFm1Zv6JkCIQDgytCZJteZMxY3zoRXP4oP
ZclxYN0ARV7/mXMKLcH+Zg==
-----END CERTIFICATE-----
";

#[test]
fn patroni_credentials_come_in_pairs_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    std::fs::write(&path, "patroni-s3cret\n").unwrap();
    let file = path.to_str().unwrap();
    for pairs in [
        &[
            ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
            ("WATCHDOG_PATRONI_PASSWORD", "patroni-s3cret"),
        ],
        &[
            ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
            ("WATCHDOG_PATRONI_PASSWORD_FILE", file),
        ],
    ] {
        let c = cfg(pairs).unwrap();
        let auth = c.patroni.auth.as_ref().expect("credentials");
        assert_eq!(auth.username, "watchdog");
        assert_eq!(auth.password.expose(), "patroni-s3cret", "{pairs:?}");
        let shown = serde_json::to_string(&c).unwrap() + &format!("{c:?}");
        assert!(!shown.contains("patroni-s3cret"), "{shown}");
    }
    assert!(cfg(&[]).unwrap().patroni.auth.is_none());

    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("WATCHDOG_PATRONI_USERNAME", "watchdog")],
            "WATCHDOG_PATRONI_PASSWORD",
        ),
        (
            &[("WATCHDOG_PATRONI_PASSWORD", "patroni-s3cret")],
            "WATCHDOG_PATRONI_USERNAME",
        ),
        (
            &[
                ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
                ("WATCHDOG_PATRONI_PASSWORD", "patroni-s3cret"),
                ("WATCHDOG_PATRONI_PASSWORD_FILE", file),
            ],
            "WATCHDOG_PATRONI_PASSWORD",
        ),
        (
            &[
                ("WATCHDOG_PATRONI_USERNAME", "watchdog"),
                ("WATCHDOG_PATRONI_PASSWORD_FILE", "/nonexistent/pw"),
            ],
            "WATCHDOG_PATRONI_PASSWORD_FILE",
        ),
        (&[("WATCHDOG_PATRONI_USERNAME", " ")], "WATCHDOG_PATRONI_USERNAME"),
    ];
    for (pairs, expected) in cases {
        let e = cfg(pairs).expect_err(&format!("{pairs:?} must be rejected"));
        assert!(!e.to_string().contains("patroni-s3cret"), "{e}");
        assert_eq!(&err_var(e), expected, "{pairs:?}");
    }
}

#[test]
fn credentials_in_the_patroni_url_are_refused_without_echoing_them() {
    for url in [
        "http://admin:patroni-s3cret@127.0.0.1:8008",
        "https://admin:patroni-s3cret@golddr-0:8008/",
        "http://admin@127.0.0.1:8008",
        "admin:patroni-s3cret@127.0.0.1:8008",
        "http://admin:patroni s3cret@127.0.0.1:8008",
    ] {
        let e = cfg(&[("WATCHDOG_PATRONI_URL", url)]).expect_err(url);
        let msg = e.to_string();
        assert!(!msg.contains("s3cret"), "{url}: {msg}");
        assert_eq!(err_var(e), "WATCHDOG_PATRONI_URL", "{url}");
        if url.starts_with("http") && !url.contains(' ') {
            assert!(
                msg.contains("WATCHDOG_PATRONI_USERNAME") && msg.contains("WATCHDOG_PATRONI_PASSWORD"),
                "{url}: {msg}"
            );
        }
    }
}

#[test]
fn the_patroni_ca_is_checked_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA).unwrap();
    let ca = ca.to_str().unwrap();
    let c = cfg(&[
        ("WATCHDOG_PATRONI_URL", "https://127.0.0.1:8008"),
        ("WATCHDOG_PATRONI_CAFILE", ca),
    ])
    .unwrap();
    assert_eq!(c.patroni.ca_certificates.len(), 1);

    let not_a_cert = dir.path().join("key.pem");
    std::fs::write(&not_a_cert, "just text\n").unwrap();
    let bad_der = dir.path().join("bad.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (pairs, expected) in [
        (
            [
                ("WATCHDOG_PATRONI_URL", "https://127.0.0.1:8008"),
                ("WATCHDOG_PATRONI_CAFILE", "/nonexistent/ca.pem"),
            ],
            "WATCHDOG_PATRONI_CAFILE",
        ),
        (
            [
                ("WATCHDOG_PATRONI_URL", "https://127.0.0.1:8008"),
                ("WATCHDOG_PATRONI_CAFILE", not_a_cert.to_str().unwrap()),
            ],
            "WATCHDOG_PATRONI_CAFILE",
        ),
        (
            [
                ("WATCHDOG_PATRONI_URL", "https://127.0.0.1:8008"),
                ("WATCHDOG_PATRONI_CAFILE", bad_der.to_str().unwrap()),
            ],
            "WATCHDOG_PATRONI_CAFILE",
        ),
        (
            [
                ("WATCHDOG_PATRONI_URL", "http://127.0.0.1:8008"),
                ("WATCHDOG_PATRONI_CAFILE", ca),
            ],
            "WATCHDOG_PATRONI_CAFILE",
        ),
    ] {
        let e = cfg(&pairs).expect_err(&format!("{pairs:?} must be rejected"));
        assert!(e.to_string().contains(expected), "{e}");
        assert_eq!(err_var(e), expected, "{pairs:?}");
    }
}

#[test]
fn commands_that_do_not_probe_gold_do_not_ask_for_it() {
    let none = Vec::<(String, String)>::new();
    assert!(Config::<NoGold>::load(none).is_ok());
    // Gold's settings are not checked either...
    let c = Config::<NoGold>::load([("WATCHDOG_GOLD_SSLMODE".to_string(), "verify-full".to_string())]);
    assert!(c.is_ok());
    // ...but a typo and every other concern still are.
    let e = Config::<NoGold>::load([("WATCHDOG_GOLD_HOTS".to_string(), "g".to_string())]).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_GOLD_HOTS");
    let e = Config::<NoGold>::load([("WATCHDOG_PROMOTER".to_string(), "sed".to_string())]).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_PROMOTER");
    let c = Config::<NoGold>::load([("WATCHDOG_PROMOTER".to_string(), "configmap".to_string())]).unwrap();
    assert!(c.uses_kubernetes());
}

#[test]
fn every_variable_read_is_known_and_documented() {
    let readme = include_str!("../../README.md");
    let all: Vec<String> = vars::all().collect();
    assert!(all.contains(&"WATCHDOG_PATRONI_CAFILE".to_string()), "{all:?}");
    for name in &all {
        // Known: it is not refused as a typo (it may be refused for
        // its value).
        let e = cfg(&[(name.as_str(), "x")]).err();
        assert!(!matches!(e, Some(ConfigError::Unknown { .. })), "{name}: {e:?}");
        assert!(
            readme.contains(name.as_str()),
            "README.md does not document {name}"
        );
    }
    let e = cfg(&[("WATCHDOG_PROMOTE_AFTR", "3")]).unwrap_err();
    assert!(e.to_string().contains("WATCHDOG_PROMOTE_AFTER"), "{e}");
}

#[test]
fn witnesses_pick_the_quorum_defaults_and_a_majority() {
    let single = cfg(&[]).unwrap();
    assert_eq!(
        (single.probe_interval, single.thresholds.promote_after()),
        (Duration::from_secs(10), 18),
        "alone: today's conservative 3 minutes"
    );
    let c = cfg(&[(
        "WATCHDOG_WITNESSES",
        "http://w1:9808,http://w2:9808,http://w3:9808",
    )])
    .unwrap();
    assert!(!c.quorum.single_observer());
    assert_eq!(c.quorum.needed, 2);
    assert_eq!(c.probe_interval, Duration::from_secs(5));
    assert_eq!(c.probe_timeout, Duration::from_secs(3));
    assert_eq!(
        (
            c.thresholds.fall(),
            c.thresholds.rise(),
            c.thresholds.promote_after()
        ),
        (2, 2, 4)
    );
    assert_eq!(c.quorum.witness_max_age, Duration::from_secs(15));
    // A blackholed Gold's receiver stays "streaming" until
    // wal_receiver_timeout: the window must close before Gold is lost.
    assert!(c.wal_receiver_fresh < c.probe_interval * c.thresholds.promote_after());
    let one = cfg(&[("WATCHDOG_WITNESSES", "http://w1:9808"), ("WATCHDOG_QUORUM", "1")]).unwrap();
    assert_eq!(one.quorum.needed, 1);
    // Explicit timing wins over the mode's defaults.
    let slow = cfg(&[
        ("WATCHDOG_WITNESSES", "http://w1:9808"),
        ("WATCHDOG_PROBE_INTERVAL", "10s"),
    ])
    .unwrap();
    assert_eq!(slow.probe_interval, Duration::from_secs(10));
}

#[test]
fn bad_quorum_settings_name_their_variable() {
    let e = cfg(&[("WATCHDOG_QUORUM", "1")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Conflict { var, .. } if var == "WATCHDOG_QUORUM"),
        "{e}"
    );
    for (quorum, why) in [("4", "more than the 3"), ("0", "")] {
        let e = cfg(&[
            (
                "WATCHDOG_WITNESSES",
                "http://w1:9808,http://w2:9808,http://w3:9808",
            ),
            ("WATCHDOG_QUORUM", quorum),
        ])
        .unwrap_err();
        assert_eq!(err_var(e.clone()), "WATCHDOG_QUORUM");
        assert!(e.to_string().contains(why), "{e}");
    }
    let e = cfg(&[("WATCHDOG_GOLD_SIGNALS", "gold:8008")]).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_GOLD_SIGNALS");
    let e = cfg(&[("WATCHDOG_WITNESS_MAX_AGE", "soon")]).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_WITNESS_MAX_AGE");
}

#[test]
fn old_witness_settings_stop_with_what_replaced_them() {
    let e = cfg(&[("WATCHDOG_WITNESS_UNREACHABLE", "ignore")]).unwrap_err();
    assert_eq!(err_var(e.clone()), "WATCHDOG_WITNESS_UNREACHABLE");
    let text = e.to_string();
    assert!(
        text.contains("was removed")
            && text.contains("WATCHDOG_QUORUM")
            && text.contains("WATCHDOG_GOLD_SIGNALS"),
        "{text}"
    );
    for old in ["tcp://gold:5432", "http://gold-patroni:8008/primary"] {
        let e = cfg(&[("WATCHDOG_WITNESSES", old)]).unwrap_err();
        assert_eq!(err_var(e.clone()), "WATCHDOG_WITNESSES");
        assert!(e.to_string().contains("WATCHDOG_GOLD_SIGNALS"), "{e}");
    }
}

fn witness_cfg(pairs: &[(&str, &str)]) -> Result<WitnessConfig, ConfigError> {
    let mut vars: Vec<(String, String)> = vec![
        ("WATCHDOG_GOLD_HOST".into(), "gold.example".into()),
        ("HOSTNAME".into(), "witness-0".into()),
    ];
    vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    WitnessConfig::load(vars)
}

#[test]
fn the_witness_needs_a_heartbeat_and_refuses_what_writes() {
    let e = witness_cfg(&[]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Missing { var, .. } if var == "WATCHDOG_GOLD_HEARTBEAT"),
        "{e}"
    );
    let w = witness_cfg(&[(
        "WATCHDOG_GOLD_HEARTBEAT",
        "http://gold-api:8008/liveness,tcp://gold-api:8008",
    )])
    .unwrap();
    assert_eq!(w.heartbeat.len(), 2);
    assert_eq!(w.identity, "witness-0");
    assert_eq!(w.probe_interval, Duration::from_secs(5));
    assert_eq!(w.thresholds.promote_after(), 4);
    for (var, value) in [
        ("WATCHDOG_PROMOTER", "patroni-api"),
        ("WATCHDOG_WITNESSES", "http://w:9808"),
        ("WATCHDOG_WEBHOOK_URL", "https://chat.example/hook"),
        ("WATCHDOG_TS_SERVICE", "patroni-master-gold"),
    ] {
        let e =
            witness_cfg(&[("WATCHDOG_GOLD_HEARTBEAT", "http://gold-api:8008/"), (var, value)]).unwrap_err();
        assert!(matches!(&e, ConfigError::WrongRole { .. }), "{var}: {e}");
        assert_eq!(err_var(e.clone()), var);
        assert!(!e.to_string().contains("chat.example"), "{e}");
    }
    let e = witness_cfg(&[("WATCHDOG_GOLD_HEARTBEAT", "http://u:pw@gold-api:8008/")]).unwrap_err();
    assert_eq!(err_var(e.clone()), "WATCHDOG_GOLD_HEARTBEAT");
}

fn guard_cfg(pairs: &[(&str, &str)]) -> Result<GuardConfig, ConfigError> {
    let mut vars: Vec<(String, String)> = vec![("WATCHDOG_GOLDDR_HOST".into(), "golddr-reverse-ts".into())];
    vars.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    GuardConfig::load(vars)
}

#[test]
fn the_guard_needs_golddr_and_refuses_what_is_not_its_own() {
    let e = GuardConfig::load(Vec::<(String, String)>::new()).unwrap_err();
    assert_eq!(err_var(e), "WATCHDOG_GOLDDR_HOST");
    let g = guard_cfg(&[(
        "WATCHDOG_FENCE_STANDBY_CLUSTER",
        r#"{"primary_slot_name":"gold"}"#,
    )])
    .unwrap();
    assert_eq!(g.golddr.address.fixed_port(), Some(5432));
    assert_eq!(g.fencing.fence_after, Duration::from_secs(5));
    assert_eq!(g.probe_interval, Duration::from_secs(2));
    assert_eq!(g.fencing.standby_cluster["primary_slot_name"], "gold");
    for (var, value) in [
        ("WATCHDOG_FENCE_STANDBY_CLUSTER", r#"{"host":"elsewhere"}"#),
        ("WATCHDOG_FENCE_STANDBY_CLUSTER", "[1]"),
        ("WATCHDOG_FENCE_AFTER", "soon"),
        ("WATCHDOG_GOLDDR_SSLMODE", "verify-ca"),
        ("WATCHDOG_GOLDDR_PORT", "0"),
        ("WATCHDOG_GOLDDR_TS_SERVICE", "Patroni_Master"),
        ("WATCHDOG_NAMESPACE", "Not A Namespace"),
    ] {
        let e = guard_cfg(&[(var, value)]).unwrap_err();
        assert_eq!(err_var(e), var, "{var}={value}");
    }
    // The reverse Transport Service, its port discovered and followed.
    let g = guard_cfg(&[("WATCHDOG_GOLDDR_TS_SERVICE", "patroni-master-golddr")]).unwrap();
    assert_eq!(g.golddr.address.service(), Some("patroni-master-golddr"));
    assert!(g.golddr.address.discovers_port() && g.uses_kubernetes());
    let e = guard_cfg(&[("WATCHDOG_PROMOTER", "configmap")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::WrongRole { var, .. } if var == "WATCHDOG_PROMOTER"),
        "{e}"
    );
}

/// GoldDR may promote only later than the guard fences: the earliest
/// (promote_after - 1) x interval must exceed the guard's deadline by the
/// margin.
#[test]
fn the_dr_watchdog_refuses_a_promote_bound_that_does_not_outlast_the_guards_fence() {
    let witnesses = ("WATCHDOG_WITNESSES", "http://w:9808");
    // Quorum defaults: (4 - 1) x 5 s = 15 s >= 5 s + 10 s.
    let c = cfg(&[witnesses, ("WATCHDOG_GUARD_FENCE_AFTER", "5s")]).unwrap();
    assert_eq!(c.guard_fence_after, Some(Duration::from_secs(5)));
    let e = cfg(&[witnesses, ("WATCHDOG_GUARD_FENCE_AFTER", "6s")]).unwrap_err();
    assert_eq!(err_var(e.clone()), "WATCHDOG_GUARD_FENCE_AFTER");
    assert!(e.to_string().contains("raise WATCHDOG_PROMOTE_AFTER"), "{e}");
    let ok = cfg(&[
        witnesses,
        ("WATCHDOG_GUARD_FENCE_AFTER", "6s"),
        ("WATCHDOG_PROMOTE_AFTER", "5"),
    ]);
    assert!(ok.is_ok(), "(5 - 1) x 5 s = 20 s >= 16 s");
}

#[test]
fn following_the_transport_service_is_on_unless_switched_off() {
    assert!(cfg(&[]).unwrap().follow_ts);
    assert!(cfg(&[("WATCHDOG_FOLLOW_TS", "true")]).unwrap().follow_ts);
    assert!(!cfg(&[("WATCHDOG_FOLLOW_TS", " false ")]).unwrap().follow_ts);
    let e = cfg(&[("WATCHDOG_FOLLOW_TS", "no")]).unwrap_err();
    assert_eq!(err_var(e.clone()), "WATCHDOG_FOLLOW_TS");
    assert!(e.to_string().contains("must be true or false"), "{e}");
    // Only the DR watchdog writes standby_cluster.
    let e = guard_cfg(&[("WATCHDOG_FOLLOW_TS", "false")]).unwrap_err();
    assert!(
        matches!(&e, ConfigError::WrongRole { var, .. } if var == "WATCHDOG_FOLLOW_TS"),
        "{e}"
    );
}

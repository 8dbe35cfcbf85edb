//! The HTTP surface: metrics and status say what the loop knows, and the
//! health endpoints never fail because Gold is down.

use std::sync::Arc;
use std::time::Duration;

use crate::support::app;
use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use patroni_dr_watchdog::app::Watchdog;
use patroni_dr_watchdog::observe::probe::{Probe, ProbeReport};
use patroni_dr_watchdog::observe::target::{self, Endpoint};
use patroni_dr_watchdog::report::http::{self, AppState};
use patroni_dr_watchdog::report::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// As named in the `# TYPE` lines (counters and infos get their suffix on
/// the samples).
const FAMILIES: &[&str] = &[
    "patroni_dr_watchdog_probe_success",
    "patroni_dr_watchdog_probes",
    "patroni_dr_watchdog_probe_duration_seconds",
    "patroni_dr_watchdog_last_probe_timestamp_seconds",
    "patroni_dr_watchdog_verdict",
    "patroni_dr_watchdog_verdict_changes",
    "patroni_dr_watchdog_consecutive_failures",
    "patroni_dr_watchdog_consecutive_successes",
    "patroni_dr_watchdog_state",
    "patroni_dr_watchdog_target",
    "patroni_dr_watchdog_build",
    "patroni_dr_watchdog_standby_target_fixes",
    "patroni_dr_watchdog_standby_target_mismatch",
];

/// The value of the first sample whose name and labels start with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// What Prometheus 3 sends.
pub(crate) const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
     application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
     text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// GET /metrics with this `Accept` header (none if `None`): status, content
/// type, body.
pub(crate) async fn scrape(addr: std::net::SocketAddr, accept: Option<&str>) -> (u16, String, String) {
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let mut req = client.get(format!("http://{addr}/metrics"));
    if let Some(accept) = accept {
        req = req.header(reqwest::header::ACCEPT, accept);
    }
    let resp = req.send().await.expect("GET /metrics");
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (code, content_type, resp.text().await.expect("body"))
}

fn fast(gold: std::net::SocketAddr, extra: &[(&str, &str)]) -> patroni_dr_watchdog::Config {
    let mut vars = vec![
        ("WATCHDOG_PROBE_INTERVAL", "300ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
        ("WATCHDOG_GOLD_PASSWORD", "not-a-real-secret-9f3a"),
    ];
    vars.extend_from_slice(extra);
    app::config(gold, &vars)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_family_is_exported_and_follows_the_state() {
    let gold = PgServer::start(PgOptions::default());
    let w = app::spawn(fast(gold.addr(), &[])).await;

    let (code, _, body) = scrape(w.addr, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(code, 200);
    for family in FAMILIES {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{body}"
        );
    }
    assert!(body.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    crate::support::wait_for("up", Duration::from_secs(20), || async {
        w.verdict().await == "up"
    })
    .await;
    let (_, up) = w.get("/metrics").await;
    assert_eq!(
        sample(&up, "patroni_dr_watchdog_probe_success"),
        Some(1.0),
        "{up}"
    );
    assert_eq!(
        sample(&up, "patroni_dr_watchdog_verdict{verdict=\"up\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&up, "patroni_dr_watchdog_verdict{verdict=\"unknown\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&up, "patroni_dr_watchdog_state{state=\"watching\"}"),
        Some(1.0)
    );
    assert!(sample(&up, "patroni_dr_watchdog_consecutive_successes") >= Some(2.0));
    assert!(
        sample(
            &up,
            "patroni_dr_watchdog_probes_total{outcome=\"up\",reason=\"writable\"}"
        ) >= Some(2.0)
    );
    assert!(
        sample(
            &up,
            "patroni_dr_watchdog_probe_duration_seconds_count{outcome=\"up\"}"
        ) >= Some(2.0)
    );
    assert!(sample(&up, "patroni_dr_watchdog_last_probe_timestamp_seconds") > Some(1.7e9));
    let target = format!(
        "patroni_dr_watchdog_target_info{{host=\"127.0.0.1\",port=\"{}\",source=\"static\"}}",
        gold.port()
    );
    assert_eq!(sample(&up, &target), Some(1.0), "{up}");
    assert_eq!(
        sample(
            &up,
            &format!(
                "patroni_dr_watchdog_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );

    gold.stop();
    crate::support::wait_for("lost", Duration::from_secs(20), || async {
        w.verdict().await == "lost"
    })
    .await;
    let (_, lost) = w.get("/metrics").await;
    assert_eq!(sample(&lost, "patroni_dr_watchdog_probe_success"), Some(0.0));
    assert_eq!(
        sample(&lost, "patroni_dr_watchdog_verdict{verdict=\"lost\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&lost, "patroni_dr_watchdog_verdict{verdict=\"up\"}"),
        Some(0.0)
    );
    assert!(sample(&lost, "patroni_dr_watchdog_consecutive_failures") >= Some(4.0));
    assert_eq!(
        sample(&lost, "patroni_dr_watchdog_consecutive_successes"),
        Some(0.0)
    );
    assert!(
        sample(
            &lost,
            "patroni_dr_watchdog_probes_total{outcome=\"down\",reason=\"refused\"}"
        ) >= Some(4.0)
    );
    assert_eq!(
        sample(
            &lost,
            "patroni_dr_watchdog_verdict_changes_total{verdict=\"lost\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &lost,
            "patroni_dr_watchdog_verdict_changes_total{verdict=\"down\"}"
        ) >= Some(1.0)
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_state_counters_last_probe_and_redacted_settings() {
    let gold = PgServer::start(PgOptions::default());
    let w = app::spawn(fast(gold.addr(), &[])).await;
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        w.verdict().await == "up"
    })
    .await;
    let st = w.status().await;
    assert_eq!(st["state"], "watching");
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        st["verdict_since"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{st}"
    );
    assert_eq!(st["target"]["state"], "known");
    assert_eq!(st["target"]["endpoint"]["port"], gold.port());
    assert!(st["counters"]["probes"].as_u64() >= Some(2));
    assert!(st["counters"]["up"].as_u64() >= Some(2));
    assert!(st["consecutive_successes"].as_u64() >= Some(2));
    assert_eq!(st["consecutive_failures"], 0);
    let last = &st["last_probe"];
    assert_eq!(last["outcome"], "up");
    assert_eq!(last["reason"], "writable");
    assert!(last["error"].is_null());
    assert!(last["duration_seconds"].as_f64() > Some(0.0));
    assert!(last["at"].as_str().is_some());
    assert_eq!(st["settings"]["gold"]["password"], "<redacted>");
    assert_eq!(st["settings"]["thresholds"]["promote_after"], 4);

    gold.stop();
    crate::support::wait_for("down", Duration::from_secs(20), || async {
        w.status().await["consecutive_failures"].as_u64() >= Some(2)
    })
    .await;
    let (_, raw) = w.get("/status").await;
    assert!(!raw.contains("not-a-real-secret-9f3a"), "password leaked: {raw}");
    let st: serde_json::Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(st["last_probe"]["outcome"], "down");
    assert_eq!(st["last_probe"]["reason"], "refused");
    assert!(st["last_probe"]["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(st["counters"]["down"].as_u64() >= Some(2));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn livez_and_readyz_stay_ok_while_gold_is_lost() {
    let gold = PgServer::start(PgOptions::default());
    let w = app::spawn(fast(gold.addr(), &[])).await;
    crate::support::wait_for("ready", Duration::from_secs(10), || async {
        w.get("/readyz").await.0 == 200
    })
    .await;
    gold.stop();
    crate::support::wait_for("lost", Duration::from_secs(20), || async {
        w.verdict().await == "lost"
    })
    .await;
    // Several liveness windows with Gold gone.
    for _ in 0..10 {
        assert_eq!(w.get("/livez").await.0, 200);
        assert_eq!(w.get("/readyz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.stop().await;
}

/// A probe that never answers stands in for a wedged loop: the one thing
/// that may fail liveness.
struct Wedged;

impl Probe for Wedged {
    async fn probe(&self, _: &Endpoint) -> ProbeReport {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn livez_fails_only_when_the_loop_is_stuck_and_readyz_waits_for_the_loop() {
    let config = Arc::new(app::config(
        "127.0.0.1:9".parse().expect("addr"),
        &[
            ("WATCHDOG_PROBE_INTERVAL", "100ms"),
            ("WATCHDOG_PROBE_TIMEOUT", "50ms"),
        ],
    ));
    let (_tx, target) = target::fixed(Endpoint {
        host: "127.0.0.1".into(),
        port: 9,
    });
    let watchdog = Watchdog::new(config.clone(), Wedged, target);
    let (status, metrics) = (watchdog.status(), watchdog.metrics());
    let router = http::router(AppState::new(status, metrics, &config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let get = |path: &'static str| async move {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .expect("GET")
            .status()
            .as_u16()
    };

    assert_eq!(get("/readyz").await, 503, "not ready before the loop starts");
    assert_eq!(get("/livez").await, 200, "alive while starting");

    let shutdown = CancellationToken::new();
    let run = tokio::spawn(watchdog.run(shutdown.clone()));
    crate::support::wait_for("ready", Duration::from_secs(5), || async {
        get("/readyz").await == 200
    })
    .await;
    // stale after 3 × 100 ms + 50 ms
    crate::support::wait_for("livez to fail", Duration::from_secs(10), || async {
        get("/livez").await == 503
    })
    .await;
    assert_eq!(
        get("/readyz").await,
        200,
        "a stuck loop restarts the pod via liveness, not readiness"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("a wedged probe does not block shutdown")
        .expect("task");
    assert_eq!(get("/readyz").await, 503, "not ready while stopping");
}

/// Alerts and the dashboard name these series (manifests/monitoring/
/// metric-names.txt): a rename here must not silently break alerting.
#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_dashboard_use_is_exported() {
    let listed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/monitoring/metric-names.txt"
    ))
    .expect("manifests/monitoring/metric-names.txt");
    let names: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() >= 10, "{names:?}");

    // A watchdog with a promoter, so the cluster observer's series exist too.
    let gold = PgServer::start(PgOptions::default());
    let standby = PgServer::start(PgOptions {
        replica_of: Some(gold.addr()),
        ..Default::default()
    });
    let local = standby.port().to_string();
    // And a witness it lists, whose own series the witness alerts use.
    let witness = app::witness_of(gold.addr()).await;
    let witnesses = witness.url();
    let w = app::spawn(fast(
        gold.addr(),
        &[
            ("WATCHDOG_PROMOTER", "pg-promote"),
            ("WATCHDOG_LOCAL_PG_PORT", &local),
            ("WATCHDOG_WITNESSES", &witnesses),
        ],
    ))
    .await;
    // And a guard, whose series the guard's alerts and dashboard row use:
    // GoldDR is the standby here, Patroni's API a closed port (the guard
    // never fences without it), the witness the one above.
    let golddr_port = standby.port().to_string();
    let patroni = format!("http://127.0.0.1:{}", crate::support::pg::free_port());
    let guard = app::spawn_guard(&[
        ("WATCHDOG_GOLDDR_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLDDR_PORT", &golddr_port),
        ("WATCHDOG_GOLDDR_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLDDR_SSLMODE", "disable"),
        ("WATCHDOG_PATRONI_URL", &patroni),
        ("WATCHDOG_WITNESSES", &witnesses),
        ("WATCHDOG_PROBE_INTERVAL", "300ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
    ])
    .await;
    // The lag and data-age series exist once both sides were read.
    crate::support::wait_for(
        "the cluster observed, lag and data age known",
        Duration::from_secs(20),
        async || {
            let s = w.status().await;
            !s["cluster"]["observed_at"].is_null()
                && !s["rpo"]["replication_lag_bytes"].is_null()
                && !s["rpo"]["data_age_seconds"].is_null()
        },
    )
    .await;
    crate::support::wait_for("the guard's first round", Duration::from_secs(20), async || {
        !guard.status().await["golddr"].is_null()
    })
    .await;
    let (_, body) = w.get("/metrics").await;
    let (_, witness_body) = witness.get("/metrics").await;
    let (_, guard_body) = guard.get("/metrics").await;
    let exported: std::collections::BTreeSet<&str> = body
        .lines()
        .chain(witness_body.lines())
        .chain(guard_body.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&&str> = names.iter().filter(|n| !exported.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "used by alerts or the dashboard but not exported: {missing:?}\n{body}\n{witness_body}\n{guard_body}"
    );
    // A counter the dashboard uses before anything happened: each reason's
    // series is there, at 0, before any fence.
    for reason in ["golddr_promoted", "isolated"] {
        let series = format!("patroni_dr_watchdog_fences_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&guard_body, &series), Some(0.0), "{series}:\n{guard_body}");
    }
    w.stop().await;
    witness.stop().await;
    guard.stop().await;
}

/// Every `state` and `verdict` series, as a scrape returns them: 1 for the
/// one the watchdog is in, 0 for every other, in each state it can reach
/// here (`promoted` is shown after a real promotion in the e2e tests).
#[tokio::test(flavor = "multi_thread")]
async fn each_state_and_verdict_series_reads_1_exactly_when_the_watchdog_is_in_it() {
    use patroni_dr_watchdog::decide::detector::Verdict;
    use patroni_dr_watchdog::decide::state::State;
    use strum::IntoEnumIterator;

    fn assert_one_hot(metrics: &Metrics, state: State, verdict: Verdict) {
        let body = metrics.encode().expect("encode");
        for st in State::iter() {
            let series = format!("patroni_dr_watchdog_state{{state=\"{}\"}}", st.as_str());
            assert_eq!(
                sample(&body, &series),
                Some(f64::from(u8::from(st == state))),
                "{series} while {}:\n{body}",
                state.as_str()
            );
        }
        for v in Verdict::iter() {
            let series = format!("patroni_dr_watchdog_verdict{{verdict=\"{}\"}}", v.as_str());
            assert_eq!(
                sample(&body, &series),
                Some(f64::from(u8::from(v == verdict))),
                "{series} while {verdict}:\n{body}"
            );
        }
    }

    let gold = PgServer::start(PgOptions::default());
    // fall 2, rise 2, promote_after 4
    let mut s = app::stepper(app::config(gold.addr(), &[]));
    assert_one_hot(&s.metrics, State::Starting, Verdict::Unknown);
    for _ in 0..2 {
        s.watchdog.tick().await.expect("probed");
    }
    assert_one_hot(&s.metrics, State::Watching, Verdict::Up);
    gold.stop();
    for _ in 0..2 {
        s.watchdog.tick().await.expect("probed");
    }
    assert_one_hot(&s.metrics, State::Watching, Verdict::Down);
    for _ in 0..2 {
        s.watchdog.tick().await.expect("probed");
    }
    assert_one_hot(&s.metrics, State::Watching, Verdict::Lost);
    s.target
        .send_replace(patroni_dr_watchdog::observe::target::Target::Unknown {
            reason: "Service deleted".into(),
        });
    assert!(s.watchdog.tick().await.is_none());
    assert_one_hot(&s.metrics, State::TargetUnknown, Verdict::Unknown);
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    s.watchdog.run(shutdown).await;
    assert_one_hot(&s.metrics, State::Stopping, Verdict::Unknown);
}

/// `promtool check metrics` (Debian's `prometheus` package) on `body`: its
/// exit status and what it said.
pub(crate) fn promtool_check(body: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool: {e}; install it with `apt-get install --no-install-recommends prometheus` \
                 (scripts/check-manifests.sh does)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Series name with labels -> value, from either format's sample lines.
pub(crate) fn series(body: &str) -> std::collections::BTreeMap<String, String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_accept_header() {
    let gold = PgServer::start(PgOptions::default());
    let w = app::spawn(fast(gold.addr(), &[])).await;
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        w.verdict().await == "up"
    })
    .await;

    // curl, older scrapers and agents: the classic text format.
    for accept in [
        Some("text/plain"),
        Some("*/*"),
        None,
        Some("text/plain;version=0.0.4"),
    ] {
        let (code, content_type, body) = scrape(w.addr, accept).await;
        assert_eq!(code, 200);
        assert_eq!(
            content_type, "text/plain; version=0.0.4; charset=utf-8",
            "Accept {accept:?}"
        );
        assert!(!body.contains("# EOF"), "Accept {accept:?}:\n{body}");
        assert!(!body.contains("# UNIT"), "Accept {accept:?}:\n{body}");
        assert!(
            body.contains("# TYPE patroni_dr_watchdog_probes_total counter\n"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE patroni_dr_watchdog_build_info gauge\n"),
            "{body}"
        );
        let (ok, said) = promtool_check(&body);
        assert!(
            ok,
            "promtool check metrics failed for Accept {accept:?}: {said}\n{body}"
        );
    }

    // Prometheus 2 and 3 ask for OpenMetrics and get it.
    let prometheus2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                       text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in [PROMETHEUS_ACCEPT, prometheus2] {
        let (code, content_type, body) = scrape(w.addr, Some(accept)).await;
        assert_eq!(code, 200);
        assert_eq!(
            content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8",
            "{accept}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("# TYPE patroni_dr_watchdog_build info\n"), "{body}");
        // The classic parser must not be able to read it: the test above
        // would pass on OpenMetrics otherwise.
        assert!(
            !promtool_check(&body).0,
            "promtool read OpenMetrics as classic text"
        );
        // OpenMetrics' own rules: each sample follows its family's TYPE.
        let mut family = "";
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "info",
                        "unknown",
                        "stateset",
                        "gaugehistogram",
                        "summary"
                    ]
                    .contains(&kind),
                    "{line}"
                );
                family = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                assert!(
                    name.strip_prefix(family)
                        .is_some_and(|s| s.is_empty() || s.starts_with('_')),
                    "{name} outside its family {family}"
                );
            }
        }
    }

    // Both formats say the same thing. (Series that change between two
    // scrapes are skipped.)
    let (_, _, om) = scrape(w.addr, Some(PROMETHEUS_ACCEPT)).await;
    let (_, _, text) = scrape(w.addr, Some("text/plain")).await;
    let (om, text) = (series(&om), series(&text));
    assert_eq!(
        om.keys().filter(|k| !k.contains("_created")).collect::<Vec<_>>(),
        text.keys().collect::<Vec<_>>()
    );
    for stable in [
        "patroni_dr_watchdog_verdict{verdict=\"up\"}",
        "patroni_dr_watchdog_probe_success",
    ] {
        assert_eq!(om.get(stable), text.get(stable), "{stable}");
        assert_eq!(text.get(stable).map(String::as_str), Some("1"), "{stable}");
    }
    w.stop().await;
}

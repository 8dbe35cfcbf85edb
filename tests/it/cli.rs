//! The binary as an operator runs it: bad settings stop it before it touches
//! anything, logs say one line per decision, and SIGTERM stops it promptly.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};

const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");

fn watchdog(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn each_bad_setting_exits_non_zero_naming_the_variable_before_any_network_io() {
    // A Gold that counts every connection made to it.
    let gold = TcpListener::bind("127.0.0.1:0").expect("bind");
    gold.set_nonblocking(true).expect("nonblocking");
    let gold_port = gold.local_addr().expect("addr").port().to_string();
    let listen_port = free_port();
    let listen = format!("127.0.0.1:{listen_port}");
    let base = [
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", gold_port.as_str()),
        ("WATCHDOG_LISTEN_ADDR", listen.as_str()),
        ("WATCHDOG_GOLD_PASSWORD", "hunter2-do-not-print"),
    ];
    let cases: &[(&str, &str, &str)] = &[
        ("WATCHDOG_PROBE_INTERVAL", "soon", "WATCHDOG_PROBE_INTERVAL"),
        ("WATCHDOG_PROBE_TIMEOUT", "1h", "WATCHDOG_PROBE_TIMEOUT"),
        ("WATCHDOG_FALL", "0", "WATCHDOG_FALL"),
        ("WATCHDOG_RISE", "-1", "WATCHDOG_RISE"),
        ("WATCHDOG_PROMOTE_AFTER", "2", "WATCHDOG_PROMOTE_AFTER"),
        ("WATCHDOG_GOLD_SSLMODE", "verify-ca", "WATCHDOG_GOLD_SSLMODE"),
        ("WATCHDOG_LISTEN_ADDR", "not-an-address", "WATCHDOG_LISTEN_ADDR"),
        ("WATCHDOG_LOG_FORMAT", "yaml", "WATCHDOG_LOG_FORMAT"),
        ("WATCHDOG_GOLD_PORT", "65536", "WATCHDOG_GOLD_PORT"),
        (
            "WATCHDOG_GOLD_PASSWORD_FILE",
            "/nonexistent/password",
            "WATCHDOG_GOLD_PASSWORD_FILE",
        ),
        ("WATCHDOG_TYPO_SETTING", "1", "WATCHDOG_TYPO_SETTING"),
        (
            "WATCHDOG_PATRONI_USERNAME",
            "watchdog",
            "WATCHDOG_PATRONI_PASSWORD",
        ),
        (
            "WATCHDOG_PATRONI_CAFILE",
            "/nonexistent/ca.pem",
            "WATCHDOG_PATRONI_CAFILE",
        ),
    ];
    for (var, value, named) in cases {
        // The password file case must not also trip over the password
        // variable (both set is an error of its own).
        let mut vars: Vec<(&str, &str)> = base
            .iter()
            .copied()
            .filter(|(k, _)| k != var && !(k == &"WATCHDOG_GOLD_PASSWORD" && var.ends_with("_FILE")))
            .collect();
        vars.push((var, value));
        let out = watchdog(&vars).output().expect("run binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(
            stderr.contains(named),
            "{var}={value}: message does not name {named}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2-do-not-print"),
            "password printed: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{var}={value} printed to stdout");
    }
    assert!(
        gold.accept().is_err(),
        "a rejected config still connected to Gold"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", listen_port)).is_ok(),
        "a rejected config was still listening"
    );
}

fn spawn(vars: &[(&str, &str)]) -> Child {
    watchdog(vars)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watchdog")
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn verdict(client: &reqwest::Client, port: u16) -> Option<String> {
    let st: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    st["verdict"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_one_json_line_per_verdict_change_and_stops_cleanly_on_sigterm() {
    let gold = PgServer::start(PgOptions::default());
    let gold_port = gold.port().to_string();
    let http_port = free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let mut child = spawn(&[
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", &gold_port),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ("WATCHDOG_PROBE_INTERVAL", "200ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "150ms"),
        ("WATCHDOG_FALL", "2"),
        ("WATCHDOG_PROMOTE_AFTER", "4"),
        ("WATCHDOG_LISTEN_ADDR", &listen),
        ("WATCHDOG_LOG_FORMAT", "json"),
    ]);
    let stderr = child.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        verdict(&client, http_port).await.as_deref() == Some("up")
    })
    .await;
    // Many healthy probes, which must not be logged one by one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    gold.stop();
    crate::support::wait_for("lost", Duration::from_secs(20), || async {
        verdict(&client, http_port).await.as_deref() == Some("lost")
    })
    .await;

    // What the watchdog counted, to hold the log against.
    let metrics = client
        .get(format!("http://127.0.0.1:{http_port}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("patroni_dr_watchdog_verdict_changes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let probes = client
        .get(format!("http://127.0.0.1:{http_port}/status"))
        .send()
        .await
        .expect("GET /status")
        .json::<serde_json::Value>()
        .await
        .expect("status")["counters"]["probes"]
        .as_u64()
        .unwrap_or_default();

    let asked = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        asked.elapsed()
    );

    let lines = lines.join().expect("reader");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let changes: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["message"] == "gold verdict changed")
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("").into(),
                e["to"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    // One line per change, exactly: a loaded machine may add a blip (a
    // probe timing out while Gold is up), which must then be logged too.
    assert_eq!(changes.len() as f64, counted, "{lines:#?}");
    assert_eq!(
        changes.first().map(|(f, t)| (f.as_str(), t.as_str())),
        Some(("unknown", "up"))
    );
    assert_eq!(
        changes.last().map(|(f, t)| (f.as_str(), t.as_str())),
        Some(("down", "lost"))
    );
    assert!(
        changes.windows(2).all(|w| w[0].1 == w[1].0),
        "every change starts where the last ended: {changes:?}"
    );
    let lost = events.iter().find(|e| e["to"] == "lost").expect("lost line");
    assert_eq!(lost["reason"], "refused");
    assert_eq!(lost["consecutive_failures"], 4);
    assert_eq!(lost["level"], "WARN");
    // At info level only changes are logged, never each probe.
    assert!(
        !events.iter().any(|e| e["message"] == "probe"),
        "per-probe lines at info: {lines:#?}"
    );
    assert!(probes >= 15, "{probes} probes");
    // Most probes (two healthy seconds' worth) must leave no line at all.
    assert!(
        events.len() as u64 <= 6 + probes / 2,
        "{} lines for {probes} probes: {lines:#?}",
        events.len()
    );
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What an operator reads: words, never Rust's `Debug` of a value.
fn assert_no_debug_text(out: &str) {
    for debug in ["{", "}", "Some(", "Known", "Endpoint", "PatroniApi", "(\""] {
        assert!(!out.contains(debug), "{debug:?} in {out}");
    }
}

fn gold_vars(port: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", port),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
    ]
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "witness", "check", "status", "promote", "failback"] {
        let (code, stdout, _) = output(watchdog(&[]).args([sub, "--help"]));
        assert_eq!(code, Some(0), "{sub} --help");
        assert!(stdout.contains("Usage:"), "{sub}: {stdout}");
    }
    let (_, stdout, _) = output(watchdog(&[]).args(["promote", "--help"]));
    assert!(
        stdout.contains("--reason") && stdout.contains("--force"),
        "{stdout}"
    );
    let (_, stdout, _) = output(watchdog(&[]).args(["failback", "--help"]));
    assert!(stdout.contains("--host") && stdout.contains("--port") && stdout.contains("--yes"));
}

#[test]
fn help_lists_every_setting_and_where_it_is_documented() {
    let (code, stdout, _) = output(watchdog(&[]).arg("--help"));
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("WATCHDOG_*") && stdout.contains("README.md") && stdout.contains("Settings"),
        "{stdout}"
    );
    let all: Vec<String> = patroni_dr_watchdog::config::vars::all().collect();
    assert!(all.len() > 30, "{all:?}");
    for var in &all {
        assert!(
            stdout.contains(var.as_str()),
            "--help does not list {var}: {stdout}"
        );
    }
}

#[test]
fn credentials_in_the_patroni_url_stop_the_start_up_without_showing_the_password() {
    let gold = TcpListener::bind("127.0.0.1:0").expect("bind");
    gold.set_nonblocking(true).expect("nonblocking");
    let port = gold.local_addr().expect("addr").port().to_string();
    let mut vars = gold_vars(&port);
    vars.extend([
        ("WATCHDOG_PROMOTER", "patroni-api"),
        (
            "WATCHDOG_PATRONI_URL",
            "http://patroni:hunter2-do-not-print@127.0.0.1:8008",
        ),
    ]);
    for args in [&[][..], &["check"], &["promote", "--reason", "drill", "--force"]] {
        let (code, stdout, stderr) = output(watchdog(&vars).args(args));
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        for named in [
            "WATCHDOG_PATRONI_URL",
            "WATCHDOG_PATRONI_USERNAME",
            "WATCHDOG_PATRONI_PASSWORD",
        ] {
            assert!(
                stderr.contains(named),
                "{args:?}: does not name {named}: {stderr}"
            );
        }
        assert!(
            !stderr.contains("hunter2") && !stdout.contains("hunter2"),
            "{args:?}: password shown: {stdout}{stderr}"
        );
    }
    assert!(gold.accept().is_err(), "a refused config still probed Gold");
}

#[test]
fn commands_that_do_not_probe_gold_do_not_ask_for_its_settings() {
    // Nothing listens here: the commands must get past their settings to
    // their own work, and fail there.
    let local = free_port().to_string();
    let vars = [
        ("WATCHDOG_PROMOTER", "pg-promote"),
        ("WATCHDOG_LOCAL_PG_PORT", local.as_str()),
    ];
    let (code, _, stderr) =
        output(watchdog(&vars).args(["failback", "--host", "127.0.0.1", "--port", "5432"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refusing without --yes"), "{stderr}");
    assert!(!stderr.contains("WATCHDOG_GOLD_HOST"), "{stderr}");

    // (promote_goes_through_the_guards_unless_forced promotes for real
    // without them.)
    let (code, stdout, stderr) =
        output(watchdog(&[("WATCHDOG_PROMOTER", "none")]).args(["promote", "--reason", "drill", "--force"]));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("WATCHDOG_PROMOTER is none"), "{stderr}");

    // The guarded promote asks for Gold's settings, like run and check.
    for args in [&["promote", "--reason", "drill"][..], &["check"], &["run"]] {
        let (code, _, stderr) = output(watchdog(&vars).args(args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("WATCHDOG_GOLD_HOST"), "{args:?}: {stderr}");
    }
}

#[test]
fn check_says_per_line_whether_gold_answers_and_exits_accordingly() {
    let gold = PgServer::start(PgOptions::default());
    let port = gold.port().to_string();
    let (code, stdout, stderr) = output(watchdog(&gold_vars(&port)).arg("check"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ok   settings: valid"), "{stdout}");
    assert!(stdout.contains("ok   gold probe: up/writable"), "{stdout}");
    assert!(stdout.contains("promoter: none"), "{stdout}");
    assert!(
        stdout.contains("ok   judging gold: single observer: without witnesses this watchdog cannot tell"),
        "{stdout}"
    );
    assert_no_debug_text(&stdout);

    // A witness that does not answer fails the check; a silent signal is
    // no failure (it says nothing until Gold is lost).
    let witness = format!("http://{}", crate::support::closed_port());
    let signal = format!("tcp://{}", crate::support::closed_port());
    let mut quorum = gold_vars(&port);
    quorum.extend([
        ("WATCHDOG_WITNESSES", witness.as_str()),
        ("WATCHDOG_GOLD_SIGNALS", signal.as_str()),
    ]);
    let (code, stdout, _) = output(watchdog(&quorum).arg("check"));
    assert_eq!(code, Some(1), "{stdout}");
    for line in [
        "ok   judging gold: quorum: 1 of 1 witnesses must agree Gold's site is lost".to_string(),
        format!("ok   gold signal: {signal}: silent"),
        format!("FAIL witness: {witness}: unreachable"),
        "FAIL quorum: 0 of 1 witnesses answer, 1 needed to promote".to_string(),
    ] {
        assert!(stdout.contains(&line), "{line:?} not in:\n{stdout}");
    }
    assert_no_debug_text(&stdout);

    gold.stop();
    let (code, stdout, _) = output(watchdog(&gold_vars(&port)).arg("check"));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("FAIL gold probe: down/refused"), "{stdout}");

    let mut bad = gold_vars(&port);
    bad.push(("WATCHDOG_FALL", "0"));
    let (code, _, stderr) = output(watchdog(&bad).arg("check"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("WATCHDOG_FALL"), "{stderr}");
}

/// `check` with a promoter and a real standby of Gold: the positions on both
/// sides as an `rpo` line, and a last line saying whether a loss of Gold now
/// would be promoted — and what would hold it back.
#[test]
fn check_shows_the_rpo_and_ends_with_the_readiness_verdict() {
    let gold = PgServer::start(PgOptions::default());
    let standby = PgServer::start(PgOptions {
        replica_of: Some(gold.addr()),
        ..Default::default()
    });
    let (port, local) = (gold.port().to_string(), standby.port().to_string());
    let mut vars = gold_vars(&port);
    vars.extend([
        ("WATCHDOG_PROMOTER", "pg-promote"),
        ("WATCHDOG_LOCAL_PG_PORT", local.as_str()),
    ]);
    let mut stdout = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Until the standby has received something from Gold.
    while Instant::now() < deadline {
        let (code, out, err) = output(watchdog(&vars).arg("check"));
        assert_eq!(code, Some(0), "{out}{err}");
        stdout = out;
        if stdout.contains("lag 0 bytes") {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let rpo = stdout
        .lines()
        .find(|l| l.starts_with("ok   rpo: Gold at "))
        .unwrap_or("");
    assert!(
        rpo.contains("GoldDR received ")
            && rpo.contains("lag 0 bytes (replay 0 bytes)")
            && rpo.contains(" s old"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("ready to promote: a loss of Gold now would pass every guard"),
        "{stdout}"
    );
    assert_no_debug_text(&stdout);

    standby.stop();
    let (code, stdout, _) = output(watchdog(&vars).arg("check"));
    assert_eq!(code, Some(1), "{stdout}");
    let last = stdout.lines().last().unwrap_or("");
    // pg-promote reads its config from that server too.
    assert!(
        last.starts_with("not ready: config_unreadable (") && last.contains(", local_pg_unreachable ("),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_a_running_watchdogs_state() {
    let gold = PgServer::start(PgOptions::default());
    let port = gold.port().to_string();
    let http_port = free_port();
    let listen = format!("127.0.0.1:{http_port}");
    let mut vars = gold_vars(&port);
    vars.extend([
        ("WATCHDOG_PROBE_INTERVAL", "200ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "150ms"),
        ("WATCHDOG_LISTEN_ADDR", listen.as_str()),
    ]);
    let mut child = spawn(&vars);
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    crate::support::wait_for("up", Duration::from_secs(20), || async {
        verdict(&client, http_port).await.as_deref() == Some("up")
    })
    .await;
    let url = format!("http://{listen}");
    let (code, stdout, _) = output(watchdog(&[]).args(["status", "--url", &url]));
    assert_eq!(code, Some(0));
    assert_no_debug_text(&stdout);
    assert!(
        stdout.contains("cannot promote from here") && !stdout.contains("via none"),
        "{stdout}"
    );
    // The scheme may be left out.
    let (code, without_scheme, stderr) = output(watchdog(&[]).args(["status", "--url", &listen]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(without_scheme.contains("verdict      up"), "{without_scheme}");
    assert!(stdout.contains("state        watching"), "{stdout}");
    assert!(
        stdout.contains(&format!("gold         127.0.0.1:{port} (static)")),
        "{stdout}"
    );
    assert!(stdout.contains("verdict      up"), "{stdout}");
    assert!(stdout.contains("last probe   up/writable"), "{stdout}");
    assert!(
        stdout.contains("judging      single observer: no witness is listed, so this watchdog cannot tell"),
        "{stdout}"
    );
    // No promoter: never ready, and no position of GoldDR's to compare.
    assert!(stdout.contains("readiness    not ready: no_promoter"), "{stdout}");
    assert!(
        stdout.contains("rpo          lag unknown (replay unknown) as of -; newest data of unknown age"),
        "{stdout}"
    );
    // Without --url, from the same settings the watchdog runs with.
    let (code, stdout, _) = output(watchdog(&[("WATCHDOG_LISTEN_ADDR", &listen)]).args(["status", "--json"]));
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(json["verdict"], "up");
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());

    let (code, _, stderr) = output(watchdog(&[]).args(["status", "--url", &url]));
    assert_eq!(code, Some(1), "no watchdog there any more");
    assert!(stderr.contains("/status"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_goes_through_the_guards_unless_forced() {
    let gold = PgServer::start(PgOptions::default());
    let standby = PgServer::start(PgOptions {
        replica_of: Some(gold.addr()),
        ..Default::default()
    });
    let port = gold.port().to_string();
    let local = standby.port().to_string();
    let mut vars = gold_vars(&port);
    vars.extend([
        ("WATCHDOG_PROMOTER", "pg-promote"),
        ("WATCHDOG_LOCAL_PG_PORT", local.as_str()),
    ]);
    let in_recovery = async || -> bool {
        let c = standby.superuser_client().await;
        c.query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .expect("query")
            .get(0)
    };
    crate::support::wait_for("the standby streams", Duration::from_secs(20), async || {
        let c = standby.superuser_client().await;
        let row = c.query_one(
            "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        );
        row.await.map(|r| r.get::<_, i64>(0) == 1).unwrap_or(false)
    })
    .await;

    // Gold is alive and streaming to us: the guards say no.
    let (code, stdout, _) = output(watchdog(&vars).args(["promote", "--reason", "drill"]));
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("vetoed by wal_receiver_streaming"), "{stdout}");
    assert!(in_recovery().await, "a vetoed promote wrote nothing");

    // Forced, it needs none of Gold's settings.
    let local_only = [
        ("WATCHDOG_PROMOTER", "pg-promote"),
        ("WATCHDOG_LOCAL_PG_PORT", local.as_str()),
    ];
    let (code, stdout, _) = output(watchdog(&local_only).args(["promote", "--reason", "drill", "--force"]));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ok   promote: promoted PostgreSQL"), "{stdout}");
    assert!(!in_recovery().await);

    // Idempotent.
    let (code, stdout, _) = output(watchdog(&vars).args(["promote", "--reason", "again", "--force"]));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("already promoted"), "{stdout}");

    // Failback asks first, and a plain standby is rebuilt rather than reconfigured.
    let (code, _, stderr) =
        output(watchdog(&vars).args(["failback", "--host", "127.0.0.1", "--port", &port]));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("FAILBACK") && stderr.contains("refusing without --yes"),
        "{stderr}"
    );
    let (code, stdout, _) =
        output(watchdog(&local_only).args(["failback", "--host", "127.0.0.1", "--port", &port, "--yes"]));
    assert_eq!(code, Some(1));
    assert!(stdout.contains("pg_basebackup"), "{stdout}");
}

/// The configurations the README and docs/quorum.md show, each a fenced
/// block of `KEY=value` lines after `<!-- example: NAME -->`.
fn documented_examples(file: &str) -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut examples = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "{file}: example {name} is not followed by a code block"
        );
        let mut vars = Vec::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{file}: example {name}: {l:?} is not KEY=value"));
            vars.push((k.to_string(), v.trim_matches('"').to_string()));
        }
        examples.push((name.trim().to_string(), vars));
    }
    examples
}

#[test]
fn every_documented_configuration_is_accepted_by_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").expect("write secret");
    let ca = crate::support::pg::generate_tls(&dir.path().join("tls"));
    for (file, at_least) in [("README.md", 2), ("docs/quorum.md", 1)] {
        let examples = documented_examples(file);
        assert!(examples.len() >= at_least, "{file}: {examples:?}");
        for (name, vars) in examples {
            // Mounted Secrets exist in a pod, not here.
            let vars: Vec<(String, String)> = vars
                .into_iter()
                .map(|(k, v)| {
                    let v = if k.ends_with("_FILE") {
                        secret.display().to_string()
                    } else if k.ends_with("_SSLROOTCERT") || k.ends_with("_CAFILE") {
                        ca.display().to_string()
                    } else {
                        v
                    };
                    (k, v)
                })
                .collect();
            let witness = vars.iter().any(|(k, _)| k == "WATCHDOG_GOLD_HEARTBEAT");
            let result = if witness {
                patroni_dr_watchdog::config::WitnessConfig::load(vars.clone()).map(|_| ())
            } else {
                // The DR examples leave out what every sidecar has (the
                // ConfigMap promoter needs a pod).
                patroni_dr_watchdog::Config::from_vars(vars.clone()).map(|_| ())
            };
            assert!(result.is_ok(), "{file}: example {name}: {result:?}");
        }
    }
}

/// The guard's container in manifests/guard is configured only with
/// settings the guard takes: a manifest that the binary refuses would
/// crash-loop beside Gold's database. Values from Secrets and mounted files
/// exist in a pod, not here: stand-ins for them.
#[test]
fn the_guard_manifest_is_accepted_by_the_guard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").expect("write secret");
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/guard/patroni-dr-guard.yaml"
    ))
    .expect("manifests/guard/patroni-dr-guard.yaml");
    let patch: serde_json::Value = serde_saphyr::from_str(&manifest).expect("the patch is YAML");
    let container = patch["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["args"][0] == "guard"))
        .expect("a container running `guard`");
    let vars: Vec<(String, String)> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            let value = match e["value"].as_str() {
                Some(_) if name.ends_with("_FILE") => secret.display().to_string(),
                Some(v) => v.to_string(),
                None => {
                    assert!(e["valueFrom"]["secretKeyRef"].is_object(), "{name}: {e}");
                    "from-a-secret".to_string()
                }
            };
            (name, value)
        })
        .collect();
    let config = patroni_dr_watchdog::config::GuardConfig::load(vars.clone());
    assert!(config.is_ok(), "{vars:?}: {:?}", config.err());
    let config = config.expect("checked");
    assert_eq!(
        config.golddr.address.service(),
        Some("patroni-master-golddr"),
        "follows the reverse Transport Service that manifests/guard/rbac.yaml names"
    );
}

/// The witness's settings are checked like the watchdog's, before it
/// touches anything; what only the DR watchdog does is refused by name.
#[test]
fn the_witness_refuses_bad_or_foreign_settings_before_any_network_io() {
    let gold = TcpListener::bind("127.0.0.1:0").expect("bind");
    gold.set_nonblocking(true).expect("nonblocking");
    let port = gold.local_addr().expect("addr").port().to_string();
    let listen_port = free_port();
    let listen = format!("127.0.0.1:{listen_port}");
    let mut base = gold_vars(&port);
    base.push(("WATCHDOG_LISTEN_ADDR", listen.as_str()));
    let heartbeat = ("WATCHDOG_GOLD_HEARTBEAT", "http://127.0.0.1:9/liveness");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[], "WATCHDOG_GOLD_HEARTBEAT", "is required"),
        (
            &[heartbeat, ("WATCHDOG_PROMOTER", "patroni-api")],
            "WATCHDOG_PROMOTER",
            "never writes",
        ),
        (
            &[heartbeat, ("WATCHDOG_WITNESSES", "http://w:9808")],
            "WATCHDOG_WITNESSES",
            "not of `witness`",
        ),
        (
            &[("WATCHDOG_GOLD_HEARTBEAT", "gold:8008")],
            "WATCHDOG_GOLD_HEARTBEAT",
            "http(s)://",
        ),
        (
            &[heartbeat, ("WATCHDOG_WITNESS_UNREACHABLE", "block")],
            "WATCHDOG_WITNESS_UNREACHABLE",
            "was removed",
        ),
        (
            &[heartbeat, ("WATCHDOG_TS_SERVICE", "patroni-master-gold")],
            "WATCHDOG_TS_SERVICE",
            "own route",
        ),
    ];
    for (extra, named, says) in cases {
        let mut vars = base.clone();
        vars.extend_from_slice(extra);
        let (code, stdout, stderr) = output(watchdog(&vars).arg("witness"));
        assert_eq!(code, Some(2), "{extra:?}: {stdout}{stderr}");
        assert!(
            stderr.contains(named) && stderr.contains(says),
            "{extra:?}: {stderr}"
        );
        assert_no_debug_text(&stderr);
    }
    assert!(
        gold.accept().is_err(),
        "a refused witness config still probed Gold"
    );
    assert!(
        TcpListener::bind(("127.0.0.1", listen_port)).is_ok(),
        "a refused witness config was still listening"
    );
}

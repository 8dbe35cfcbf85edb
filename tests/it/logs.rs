//! The binary's logs as machines and people read them: JSON lines that `jq`
//! reads without losing a key, plain text without colour codes when nobody
//! is at a terminal.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};

const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");

/// What the process wrote while it ran against `gold` until its verdict was
/// up, then was stopped with SIGTERM: (stdout, stderr).
async fn run_until_up(gold: &PgServer, extra: &[(&str, &str)]) -> (String, String) {
    let http_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let listen = format!("127.0.0.1:{http_port}");
    let gold_port = gold.port().to_string();
    let mut cmd = Command::new(BIN);
    // No RUST_LOG, no NO_COLOR: the defaults are what is under test.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WATCHDOG_GOLD_HOST", gold.host())
        .env("WATCHDOG_GOLD_PORT", &gold_port)
        .env("WATCHDOG_GOLD_USER", WATCHDOG_USER)
        .env("WATCHDOG_GOLD_SSLMODE", "disable")
        .env("WATCHDOG_PROBE_INTERVAL", "200ms")
        .env("WATCHDOG_PROBE_TIMEOUT", "150ms")
        .env("WATCHDOG_LISTEN_ADDR", &listen);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watchdog");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let status_url = format!("http://127.0.0.1:{http_port}/status");
    crate::support::wait_for("verdict up", Duration::from_secs(20), || async {
        let Ok(resp) = client.get(&status_url).send().await else {
            return false;
        };
        let st: serde_json::Value = resp.json().await.unwrap_or_default();
        st["verdict"] == "up"
    })
    .await;

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    (
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// Parses one line as a JSON object and returns its keys in order, failing
/// on a repeated key (which serde_json's map would silently collapse, as jq
/// does).
fn unique_keys(line: &str) -> Result<Vec<String>, String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys: Vec<String> = Vec::new();
            while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                if keys.contains(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
                keys.push(key);
            }
            Ok(keys)
        }
    }
    let mut de = serde_json::Deserializer::from_str(line);
    let keys = de.deserialize_map(Keys).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(keys)
}

#[test]
fn the_duplicate_key_check_catches_a_repeated_key() {
    assert_eq!(
        unique_keys(r#"{"a":1,"b":{"a":2}}"#),
        Ok(vec!["a".to_string(), "b".to_string()])
    );
    assert!(unique_keys(r#"{"target":"x","level":"INFO","target":"y"}"#).is_err());
    assert!(unique_keys("not json").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_unique_keys_and_the_start_line_names_gold() {
    let gold = PgServer::start(PgOptions::default());
    let (stdout, stderr) = run_until_up(&gold, &[("WATCHDOG_LOG_FORMAT", "json")]).await;
    assert_eq!(stdout, "", "logs belong on stderr");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    let mut events = Vec::new();
    for line in &lines {
        let keys = unique_keys(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(keys[..2], ["timestamp", "level"], "{line}");
        let event: serde_json::Value = serde_json::from_str(line).expect("JSON");
        events.push(event);
    }
    assert!(!stderr.contains('\u{1b}'), "escape codes in JSON: {stderr}");

    // jq '.target' on the start-up line finds Gold's address.
    let started = events
        .iter()
        .find(|e| e["message"] == "watchdog started")
        .unwrap_or_else(|| panic!("no start-up line: {stderr}"));
    let target = started["target"]
        .as_str()
        .unwrap_or_else(|| panic!("no target field: {started}"));
    assert!(
        target.contains(gold.host()) && target.contains(&gold.port().to_string()),
        "target {target:?} does not name {}",
        gold.addr()
    );
    assert_eq!(started["level"], "INFO");
    assert!(
        started["module"]
            .as_str()
            .is_some_and(|m| m.starts_with("patroni_dr_watchdog")),
        "{started}"
    );

    // By default only this crate's lines: no client library's own chatter.
    for event in &events {
        let module = event["module"].as_str().unwrap_or_default();
        assert!(
            module.starts_with("patroni_dr_watchdog"),
            "a line from {module}: {event}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["message"] == "gold verdict changed" && e["to"] == "up"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_pipe_have_no_colour_codes() {
    let gold = PgServer::start(PgOptions::default());
    let (_, stderr) = run_until_up(&gold, &[]).await;
    assert!(stderr.contains("watchdog started"), "{stderr}");
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(
        !stderr.contains("\u{1b}["),
        "ANSI escape codes in piped logs: {stderr:?}"
    );
}

/// Runs the binary at a pseudo-terminal (util-linux `script`) with a listen
/// address that is taken, so it logs one error and exits; returns what the
/// terminal showed.
fn at_a_terminal(no_color: Option<&str>) -> String {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &format!("'{BIN}'"), "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("WATCHDOG_GOLD_HOST", "127.0.0.1")
        .env("WATCHDOG_GOLD_PORT", "5432")
        .env("WATCHDOG_LISTEN_ADDR", &listen)
        .stdin(Stdio::null());
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run script(1)");
    drop(taken);
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        shown.contains("cannot listen"),
        "{shown:?} / {}",
        String::from_utf8_lossy(&out.stderr)
    );
    shown
}

#[test]
fn text_logs_at_a_terminal_are_coloured_unless_no_color_is_set() {
    assert!(at_a_terminal(None).contains("\u{1b}["), "no colour at a terminal");
    let plain = at_a_terminal(Some("1"));
    assert!(!plain.contains("\u{1b}["), "colour despite NO_COLOR: {plain:?}");
}

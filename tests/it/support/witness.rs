//! [`WitnessProcess`]: the product binary run as `patroni-dr-watchdog
//! witness`, a separate process as in production, listening on
//! 127.0.0.1:<free port>, with its output in a log file.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::patroni_cluster::{read_lossy, temp_dir};
use crate::support::pg::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");

/// A running witness; dropping it kills it (SIGKILL).
pub struct WitnessProcess {
    child: Mutex<Option<Child>>,
    port: u16,
    log_file: PathBuf,
    http: reqwest::Client,
    // Declared last so the log outlives the process during drop.
    dir: TempDir,
}

impl WitnessProcess {
    /// Starts `patroni-dr-watchdog witness` with only `vars` (plus `PATH`, and
    /// `RUST_LOG` if set) in its environment — no inherited `WATCHDOG_*` —
    /// and `WATCHDOG_LISTEN_ADDR=127.0.0.1:<free port>`; stdout and stderr go
    /// to [`log`](Self::log). Waits up to 30 s for `GET /readyz` to answer
    /// 200; panics with the log if it does not or the process exits.
    pub async fn start(vars: &[(&str, &str)]) -> WitnessProcess {
        Self::start_as("witness", vars).await
    }

    /// The same for another role of the binary (`guard`).
    pub async fn start_as(role: &str, vars: &[(&str, &str)]) -> WitnessProcess {
        assert!(
            vars.iter().all(|(k, _)| *k != "WATCHDOG_LISTEN_ADDR"),
            "WitnessProcess picks WATCHDOG_LISTEN_ADDR itself"
        );
        let dir = temp_dir("witnesstest-");
        let log_file = dir.path().join("witness.log");
        let log = fs::File::create(&log_file).expect("create witness log");
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WATCHDOG_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .envs(vars.iter().copied())
            .arg(role)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone witness log handle"))
            .stderr(log);
        if let Ok(filter) = std::env::var("RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {BIN} {role}: {e}"));
        let witness = WitnessProcess {
            child: Mutex::new(Some(child)),
            port,
            log_file,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("build HTTP client"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if witness.get_status("/readyz").await == Some(200) {
                return witness;
            }
            if let Some(code) = witness.exit_status() {
                panic!(
                    "the witness exited ({code}) before it was ready\n--- witness log ---\n{}",
                    witness.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the witness not ready on {} after 30 s\n--- witness log ---\n{}",
                witness.url(),
                witness.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET /v1/observation` as JSON, or None if it does not answer 2xx with JSON.
    pub async fn observation(&self) -> Option<Value> {
        self.get_json("/v1/observation").await
    }

    /// `GET path` as JSON, or None if it does not answer 2xx with JSON.
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        let resp = self.http.get(format!("{}{path}", self.url())).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// `GET path`'s HTTP status, or None if nothing answers.
    pub async fn get_status(&self, path: &str) -> Option<u16> {
        let resp = self.http.get(format!("{}{path}", self.url())).send().await.ok()?;
        Some(resp.status().as_u16())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// The exit status, if it has exited on its own (not after [`kill`](Self::kill)).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, as a crash; idempotent.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_file)
    }
}

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Running the watchdog under test: a config pointed at a test server, a
//! loop that tests step by hand, or the whole process on a loopback port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use patroni_dr_watchdog::Config;
use patroni_dr_watchdog::app::{self, Watchdog};
use patroni_dr_watchdog::observe::probe::PgProbe;
use patroni_dr_watchdog::observe::target::{self, Endpoint, Target};
use patroni_dr_watchdog::report::metrics::Metrics;
use patroni_dr_watchdog::report::status::Status;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::pg::WATCHDOG_USER;

/// A config aimed at `gold` with test-friendly thresholds (fall 2, rise 2,
/// promote_after 4), no TLS, the `watchdog` role, and a loopback listener.
/// `extra` overrides any of it, as environment variables would.
pub fn config(gold: SocketAddr, extra: &[(&str, &str)]) -> Config {
    let host = gold.ip().to_string();
    let port = gold.port().to_string();
    config_from(
        &[
            ("WATCHDOG_GOLD_HOST", host.as_str()),
            ("WATCHDOG_GOLD_PORT", port.as_str()),
            ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
            ("WATCHDOG_GOLD_SSLMODE", "disable"),
            ("WATCHDOG_PROBE_INTERVAL", "3s"),
            ("WATCHDOG_PROBE_TIMEOUT", "2s"),
            ("WATCHDOG_FALL", "2"),
            ("WATCHDOG_RISE", "2"),
            ("WATCHDOG_PROMOTE_AFTER", "4"),
            ("WATCHDOG_LISTEN_ADDR", "127.0.0.1:0"),
        ],
        extra,
    )
}

/// A config from `base` variables, each of `extra` replacing or adding one.
pub fn config_from(base: &[(&str, &str)], extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    Config::from_vars(vars).expect("test config is valid")
}

pub fn probe(config: &Config) -> PgProbe {
    PgProbe::new(config.gold.clone(), config.probe_timeout).expect("TLS set-up")
}

/// A loop the test steps with `tick()`, so hysteresis is checked probe by
/// probe against real servers without depending on wall-clock timing.
pub struct Stepper {
    pub watchdog: Watchdog<PgProbe>,
    pub status: watch::Receiver<Status>,
    pub metrics: Arc<Metrics>,
    pub target: watch::Sender<Target>,
}

pub fn stepper(config: Config) -> Stepper {
    let config = Arc::new(config);
    let (target, target_rx) = target::fixed(Endpoint {
        host: config.gold.address.host(""),
        port: config.gold.address.fixed_port().expect("static port"),
    });
    let watchdog = Watchdog::new(config.clone(), probe(&config), target_rx);
    let (status, metrics) = (watchdog.status(), watchdog.metrics());
    Stepper {
        watchdog,
        status,
        metrics,
        target,
    }
}

impl Stepper {
    pub fn verdict(&self) -> String {
        self.status.borrow().probe.verdict.to_string()
    }
}

/// The whole watchdog (loop + HTTP) running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), app::Error>>>,
    http: reqwest::Client,
}

pub async fn spawn(config: Config) -> Running {
    spawn_with(config, None).await
}

/// With a Kubernetes client, for discovery and promotion.
pub async fn spawn_with(config: Config, kube: Option<kube::Client>) -> Running {
    Running::start(config.listen_addr, |listener, shutdown| {
        app::run(config, listener, kube.map(Into::into), shutdown)
    })
    .await
}

/// A witness (`patroni-dr-watchdog witness`) in this process, from
/// environment-style variables.
pub async fn spawn_witness(vars: &[(&str, &str)]) -> Running {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("WATCHDOG_LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string())])
        .collect();
    let config = patroni_dr_watchdog::config::WitnessConfig::load(vars).expect("witness config is valid");
    Running::start(config.listen_addr, |listener, shutdown| {
        patroni_dr_watchdog::witness::run(config, listener, shutdown)
    })
    .await
}

/// A witness of `gold` in this process: its probe and a TCP heartbeat on
/// Gold's port, every 300 ms.
pub async fn witness_of(gold: SocketAddr) -> Running {
    let port = gold.port().to_string();
    let heartbeat = format!("tcp://{gold}");
    spawn_witness(&[
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", &port),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ("WATCHDOG_GOLD_HEARTBEAT", &heartbeat),
        ("WATCHDOG_PROBE_INTERVAL", "300ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
    ])
    .await
}

/// A guard (`patroni-dr-watchdog guard`) in this process, from
/// environment-style variables.
pub async fn spawn_guard(vars: &[(&str, &str)]) -> Running {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("WATCHDOG_LISTEN_ADDR".to_string(), "127.0.0.1:0".to_string())])
        .collect();
    let config = patroni_dr_watchdog::config::GuardConfig::load(vars).expect("guard config is valid");
    Running::start(config.listen_addr, |listener, shutdown| {
        patroni_dr_watchdog::guard::run(config, None, listener, shutdown)
    })
    .await
}

impl Running {
    /// Binds `addr` and runs what `run` returns on it until stopped.
    async fn start<F>(
        addr: SocketAddr,
        run: impl FnOnce(tokio::net::TcpListener, CancellationToken) -> F,
    ) -> Running
    where
        F: Future<Output = Result<(), app::Error>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(listener, shutdown.clone()));
        Running {
            addr,
            shutdown,
            handle: Some(handle),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{}", self.addr, path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let code = resp.status().as_u16();
        (code, resp.text().await.expect("body"))
    }

    pub async fn status(&self) -> serde_json::Value {
        let (code, body) = self.get("/status").await;
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Polls `/status` until `check` holds (30 s at most) and returns it.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_status_for(Duration::from_secs(30), what, check).await
    }

    /// Polls `/status` until `check` holds (`timeout` at most).
    pub async fn wait_status_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            last = self.status().await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}; last status: {last:#}");
    }

    /// The value of the first `/metrics` sample that starts with `series`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics:\n{body}"))
    }

    pub async fn verdict(&self) -> String {
        self.status().await["verdict"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Stops the watchdog and checks it ended cleanly and promptly.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let result = tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .expect("watchdog stops within 5 s of shutdown");
            result.expect("task").expect("clean exit");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

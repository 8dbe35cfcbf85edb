//! Real Patroni for end-to-end tests: an etcd ([`Etcd`]), a plain PostgreSQL
//! primary playing the Gold site ([`Gold`]) and a one-member Patroni *standby
//! cluster* playing GoldDR ([`GoldDr`]) that replicates from Gold through
//! whatever host/port it is given (normally a fault proxy in front of Gold).
//!
//! Included by test files next to `mod support;` as
//! `#[path = "support/patroni_cluster.rs"] mod patroni_cluster;`.
//!
//! Every process listens on 127.0.0.1 only, on its own free port, with its
//! data under its own temporary directory in /tmp, and is stopped by drop
//! (exactly the processes started here, by PID). When the tests run as root,
//! Patroni (and through it pg_basebackup and postgres) runs as the
//! `postgres` OS user: its process is spawned with that uid/gid directly (not
//! through `runuser`, whose SIGKILL 2 s after a SIGTERM could cut Patroni's
//! own shutdown of PostgreSQL short).
//!
//! The start functions block; call them from `#[tokio::test(flavor =
//! "multi_thread")]` tests (the fault proxy's tasks must keep running while
//! GoldDR takes its base backup through it).
//!
//! Needs the Debian packages `patroni` (3.0.x), `python3-etcd` and
//! `etcd-server` (3.4). Patroni talks to etcd through its `etcd3` DCS (the
//! v3 JSON gateway, which Debian's Patroni implements itself on top of
//! python3-etcd); etcd's v2 API is enabled as well for anyone who wants the
//! `etcd` DCS instead.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_postgres::NoTls;

use crate::support::pg::{
    PgOptions, PgServer, blocking, describe, find_bin_dir, free_port, run, running_as_root,
};

/// Replication role created on Gold; GoldDR's Patroni streams (and takes its
/// base backup) as this user. Trusted from 127.0.0.1, no password.
pub const REPLICATION_USER: &str = "replicator";

/// Application name of the harness's own sessions (as in `support::pg`).
const SUPPORT_APP_NAME: &str = "pgtest-support";

// ---------------------------------------------------------------------------
// etcd
// ---------------------------------------------------------------------------

/// A single-member etcd 3.4 on random loopback client and peer ports, with
/// the v2 API enabled too. Dropping it kills it.
pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    log_file: PathBuf,
    // Declared last so the directory outlives the process during drop.
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits (up to 30 s) until `/health` says it is healthy.
    pub fn start() -> Etcd {
        blocking(Self::start_blocking)
    }

    fn start_blocking() -> Etcd {
        let dir = temp_dir("etcdtest-");
        let mut etcd = Etcd {
            child: None,
            client_port: 0,
            log_file: dir.path().join("etcd.log"),
            dir,
        };
        for attempt in 1..=3 {
            etcd.client_port = free_port();
            let peer_port = free_port();
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&etcd.log_file)
                .expect("create etcd log");
            let log_len = log.metadata().map(|m| m.len() as usize).unwrap_or(0);
            let client_url = etcd.url();
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg("etcd0")
                .arg("--data-dir")
                .arg(etcd.dir.path().join(format!("data-{attempt}")))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(format!("etcd0={peer_url}"))
                .args(["--initial-cluster-state", "new"])
                .arg("--enable-v2=true")
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .current_dir(etcd.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone etcd log handle"))
                .stderr(log);
            clear_env(&mut cmd, &["ETCD_"]);
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("spawning etcd: {e}; install it with `apt-get install etcd-server`")
            });
            etcd.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if etcd.healthy() {
                    return etcd;
                }
                let exited = etcd.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if let Some(status) = exited {
                    etcd.child = None;
                    let log = etcd.log();
                    let new_log = log.get(log_len..).unwrap_or(&log);
                    if attempt < 3 && new_log.contains("address already in use") {
                        break; // try again on other ports
                    }
                    panic!("etcd exited ({status}) before becoming healthy\n--- etcd log ---\n{log}");
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd not healthy on {client_url} after 30 s\n--- etcd log ---\n{}",
                    etcd.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        unreachable!()
    }

    /// `http://127.0.0.1:<client port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>`, as Patroni's `etcd3.hosts` wants it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    fn healthy(&self) -> bool {
        http_get(self.client_port, "/health", Duration::from_secs(2))
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|v| v["health"] == "true")
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_file)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Gold
// ---------------------------------------------------------------------------

/// The Gold site: a plain PostgreSQL primary (no Patroni) ready to be
/// replicated. PostgreSQL's defaults already give `wal_level = replica` and 10
/// WAL senders/slots, and the trust `pg_hba.conf` of [`PgServer`] (no
/// password) lets any role replicate from 127.0.0.1; on top of that Gold gets
/// the [`REPLICATION_USER`] role.
pub struct Gold {
    pub pg: PgServer,
}

impl Gold {
    pub fn start() -> Gold {
        let gold = Gold {
            pg: PgServer::start(PgOptions::default()),
        };
        gold.psql(&format!("CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION"));
        gold
    }

    pub fn host(&self) -> &str {
        self.pg.host()
    }

    pub fn port(&self) -> u16 {
        self.pg.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.pg.addr()
    }

    /// Runs `sql` (may hold several statements) as superuser.
    pub async fn execute(&self, sql: &str) {
        self.pg.execute(sql).await;
    }

    /// Crash-like stop (immediate shutdown): the port closes.
    pub fn kill(&self) {
        self.pg.kill();
    }

    /// Clean stop (fast shutdown).
    pub fn stop(&self) {
        self.pg.stop();
    }

    /// Starts it again on the same port (stopping it cleanly first if it runs).
    pub fn restart(&self) {
        self.pg.restart();
    }

    /// Creates a physical replication slot that reserves WAL from now on (so
    /// nothing GoldDR needs between its base backup and its first stream is
    /// recycled). Create it before [`GoldDr::start`] with the same name as
    /// [`GoldDrOptions::slot`].
    pub fn create_slot(&self, name: &str) {
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{}', true)",
            name.replace('\'', "''")
        ));
    }

    /// Runs `sql` through `psql -At` as superuser over the unix socket, blocking;
    /// returns its output. Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        blocking(|| {
            let out = run(Command::new(find_bin_dir().join("psql"))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .arg("-h")
                .arg(self.pg.socket_dir())
                .arg("-p")
                .arg(self.port().to_string())
                .arg("-c")
                .arg(sql)
                .env_remove("PGPASSWORD")
                .env_remove("PGSERVICE")
                .env_remove("PGOPTIONS"));
            assert!(out.status.success(), "psql {sql:?} on Gold: {}", describe(&out));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    }
}

// ---------------------------------------------------------------------------
// GoldDR
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct GoldDrOptions {
    /// Patroni `scope` (the cluster name in the DCS).
    pub scope: String,
    /// Where the standby leader replicates from (and takes its base backup):
    /// `standby_cluster.host`/`port`.
    pub upstream_host: String,
    pub upstream_port: u16,
    /// `standby_cluster.primary_slot_name`; must exist on Gold (see [`Gold::create_slot`]).
    pub slot: String,
    /// Patroni `loop_wait` in seconds.
    pub loop_wait: u32,
    /// Patroni `ttl` in seconds (at least `loop_wait + 2`); `retry_timeout`
    /// is derived as `min(10, (ttl - loop_wait) / 2)`.
    pub ttl: u32,
    /// `restapi.authentication` `(username, password)`: Patroni then wants
    /// basic auth on its unsafe methods (e.g. `PATCH /config`).
    pub restapi_auth: Option<(String, String)>,
}

impl Default for GoldDrOptions {
    /// A random scope, slot `golddr`, `loop_wait` 2, `ttl` 20; the upstream
    /// must still be set (port 0 is refused by [`GoldDr::start`]).
    fn default() -> Self {
        GoldDrOptions {
            scope: format!("golddr-{:08x}", fastrand::u32(..)),
            upstream_host: "127.0.0.1".to_string(),
            upstream_port: 0,
            slot: "golddr".to_string(),
            loop_wait: 2,
            ttl: 20,
            restapi_auth: None,
        }
    }
}

impl GoldDrOptions {
    /// Defaults, replicating from `upstream` through `slot`.
    pub fn new(upstream: SocketAddr, slot: &str) -> Self {
        GoldDrOptions {
            upstream_host: upstream.ip().to_string(),
            upstream_port: upstream.port(),
            slot: slot.to_string(),
            ..Self::default()
        }
    }
}

/// A one-member Patroni standby cluster. Dropping it stops Patroni (SIGTERM,
/// SIGKILL after 10 s) and then any PostgreSQL it left behind.
pub struct GoldDr {
    /// `http://127.0.0.1:<REST API port>`
    pub patroni_url: String,
    /// Its PostgreSQL's TCP port on 127.0.0.1.
    pub pg_port: u16,
    pub scope: String,
    /// The Patroni member name.
    pub name: String,
    /// How long [`GoldDr::start`] took until the standby leader was up.
    pub startup: Duration,
    child: Mutex<Option<Child>>,
    restapi_port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    config_file: PathBuf,
    http: reqwest::Client,
    // Declared last so the directory outlives everything else during drop.
    dir: TempDir,
}

impl GoldDr {
    /// Writes `patroni.yml` (etcd3 DCS at `etcd`; `bootstrap.dcs.standby_cluster`
    /// = the upstream, the slot and `create_replica_methods: [basebackup]`),
    /// starts `patroni` and waits up to 90 s until `GET /patroni` reports
    /// `standby_leader` and `running`. Panics with Patroni's log otherwise.
    pub fn start(etcd: &Etcd, opts: GoldDrOptions) -> GoldDr {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            assert!(
                handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
                "GoldDr::start blocks: use #[tokio::test(flavor = \"multi_thread\")] so a fault proxy \
                 in front of Gold keeps forwarding meanwhile"
            );
        }
        assert!(
            opts.upstream_port != 0,
            "GoldDrOptions: set upstream_host/upstream_port"
        );
        assert!(
            opts.loop_wait >= 1 && opts.ttl >= opts.loop_wait + 2,
            "GoldDrOptions: need loop_wait >= 1 and ttl >= loop_wait + 2, got {opts:?}"
        );
        blocking(|| Self::start_blocking(etcd, opts))
    }

    fn start_blocking(etcd: &Etcd, opts: GoldDrOptions) -> GoldDr {
        let started = Instant::now();
        let dir = temp_dir("patronitest-");
        let root = dir.path().to_path_buf();
        let socket_dir = root.join("sock");
        fs::create_dir(&socket_dir).expect("create socket dir");
        if let Some(user) = postgres_user() {
            for path in [&root, &socket_dir] {
                std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let restapi_port = free_port();
        let pg_port = free_port();
        let name = format!("{}-0", opts.scope);
        let mut golddr = GoldDr {
            patroni_url: format!("http://127.0.0.1:{restapi_port}"),
            pg_port,
            scope: opts.scope.clone(),
            name: name.clone(),
            startup: Duration::ZERO,
            child: Mutex::new(None),
            restapi_port,
            data_dir: root.join("data"),
            log_file: root.join("patroni.log"),
            config_file: root.join("patroni.yml"),
            socket_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("build HTTP client"),
            dir,
        };
        let config = golddr.config(etcd, &opts);
        fs::write(
            &golddr.config_file,
            serde_json::to_string_pretty(&config).expect("serialize patroni.yml"),
        )
        .expect("write patroni.yml");

        let log = fs::File::create(&golddr.log_file).expect("create patroni log");
        let mut cmd = as_postgres(Command::new("patroni"));
        cmd.arg(&golddr.config_file)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone patroni log handle"))
            .stderr(log);
        clear_env(&mut cmd, &["PATRONI_", "PG"]);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning patroni: {e}; install it with `apt-get install patroni`"));
        *golddr.child.get_mut().unwrap() = Some(child);

        let deadline = started + Duration::from_secs(90);
        loop {
            let status = http_get(restapi_port, "/patroni", Duration::from_secs(5))
                .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok());
            if let Some(s) = &status
                && s["role"] == "standby_leader"
                && s["state"] == "running"
            {
                golddr.startup = started.elapsed();
                return golddr;
            }
            let exited = golddr
                .child
                .get_mut()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(code) = exited {
                panic!(
                    "patroni exited ({code}) before GoldDR became standby_leader\n--- patroni log ---\n{}",
                    golddr.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "GoldDR not standby_leader after 90 s (last GET /patroni: {status:?})\n--- patroni log ---\n{}",
                golddr.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn config(&self, etcd: &Etcd, opts: &GoldDrOptions) -> Value {
        let retry_timeout = ((opts.ttl - opts.loop_wait) / 2).clamp(1, 10);
        let restapi = format!("127.0.0.1:{}", self.restapi_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        let mut restapi = json!({ "listen": restapi, "connect_address": restapi });
        if let Some((username, password)) = &opts.restapi_auth {
            restapi["authentication"] = json!({ "username": username, "password": password });
        }
        json!({
            "scope": opts.scope,
            "name": self.name,
            "restapi": restapi,
            "etcd3": { "hosts": [etcd.host_port()], "protocol": "http" },
            "bootstrap": {
                "dcs": {
                    "ttl": opts.ttl,
                    "loop_wait": opts.loop_wait,
                    "retry_timeout": retry_timeout,
                    "standby_cluster": {
                        "host": opts.upstream_host,
                        "port": opts.upstream_port,
                        "primary_slot_name": opts.slot,
                        "create_replica_methods": ["basebackup"],
                    },
                    "postgresql": { "use_pg_rewind": false, "use_slots": true },
                },
            },
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": self.data_dir,
                "bin_dir": find_bin_dir(),
                "pgpass": self.dir.path().join("pgpass"),
                "use_unix_socket": true,
                "authentication": {
                    "superuser": { "username": "postgres" },
                    "replication": { "username": REPLICATION_USER },
                },
                // Don't wait for a spread checkpoint on Gold.
                "basebackup": [{ "checkpoint": "fast" }],
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {
                    "unix_socket_directories": self.socket_dir,
                    "fsync": "off",
                    "synchronous_commit": "off",
                    // full_page_writes stays on: once promoted, GoldDR is
                    // the source a fenced Gold rewinds from, and pg_rewind
                    // requires it of its source.
                    "shared_buffers": "16MB",
                    "max_wal_size": "64MB",
                    "wal_receiver_status_interval": "1s",
                },
            },
            // No /dev/watchdog here.
            "watchdog": { "mode": "off" },
        })
    }

    /// `GET /patroni`, or None if the REST API does not answer with JSON.
    pub async fn status(&self) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}/patroni", self.patroni_url))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    /// The `role` of `GET /patroni` (`standby_leader`, `master`/`primary`,
    /// `replica`, ...), or `unreachable` if the REST API does not answer.
    pub async fn role(&self) -> String {
        self.status()
            .await
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unreachable".to_string())
    }

    /// Whether `GET /patroni` reports a read-write leader: Patroni 3.0 says
    /// `master`, later versions `primary`.
    pub async fn is_primary(&self) -> bool {
        matches!(self.role().await.as_str(), "primary" | "master")
    }

    /// `GET /config`: the dynamic configuration in the DCS.
    pub async fn config_in_dcs(&self) -> Value {
        self.http
            .get(format!("{}/config", self.patroni_url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /config: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET /config body: {e}"))
    }

    /// `PATCH /config` with `body`; returns the HTTP status. E.g.
    /// `json!({"standby_cluster": null})` promotes the standby leader.
    /// `PATCH /config`, its HTTP status. Patroni answers 503 while the DCS
    /// has no config yet (just after bootstrap) and 409 when another write
    /// raced it: both are tried again, for up to 10 s, as an operator would.
    pub async fn patch_config(&self, body: Value) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .http
                .patch(format!("{}/config", self.patroni_url))
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("PATCH /config {body}: {e}"))
                .status()
                .as_u16();
            if !matches!(status, 503 | 409) || Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A superuser connection over the unix socket; its connection task is spawned.
    pub async fn try_superuser_client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&self.socket_dir)
            .port(self.pg_port)
            .user("postgres")
            .dbname("postgres")
            .application_name(SUPPORT_APP_NAME)
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn superuser_client(&self) -> tokio_postgres::Client {
        self.try_superuser_client()
            .await
            .unwrap_or_else(|e| panic!("superuser connection to GoldDR: {e:?}\n{}", self.log_tail()))
    }

    /// `SELECT pg_is_in_recovery()`.
    pub async fn is_in_recovery(&self) -> bool {
        let client = self.superuser_client().await;
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap_or_else(|e| panic!("pg_is_in_recovery() on GoldDR: {e:?}"));
        row.get(0)
    }

    /// The first column of the single row of `sql`, as an i64 (e.g. `count(*)`).
    pub async fn query_i64(&self, sql: &str) -> i64 {
        self.try_query_i64(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql:?} on GoldDR: {e}"))
    }

    /// Like [`query_i64`](Self::query_i64), but an error (no such table yet,
    /// server not up) is returned, for polling.
    pub async fn try_query_i64(&self, sql: &str) -> Result<i64, String> {
        let client = self.try_superuser_client().await.map_err(|e| e.to_string())?;
        let row = client.query_one(sql, &[]).await.map_err(|e| format!("{e:?}"))?;
        row.try_get(0).map_err(|e| e.to_string())
    }

    /// Runs `sql` (may hold several statements) as superuser.
    pub async fn execute(&self, sql: &str) {
        let client = self.superuser_client().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("executing {sql:?} on GoldDR: {e:?}"));
    }

    /// `pg_stat_wal_receiver.status` (`streaming`, `catchup`, ...), or None
    /// if no WAL receiver runs.
    pub async fn wal_receiver_status(&self) -> Option<String> {
        let client = self.superuser_client().await;
        let row = client
            .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
            .await
            .unwrap_or_else(|e| panic!("pg_stat_wal_receiver on GoldDR: {e:?}"))?;
        row.get(0)
    }

    pub fn pg_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.pg_port))
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// PID of the Patroni process, while it runs.
    pub fn patroni_pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// PID of GoldDR's postmaster, if one runs (Patroni detaches it: it is
    /// not a child of the Patroni process).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = read_lossy(&self.data_dir.join("postmaster.pid"));
        let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        // Only if that PID is still this data dir's postmaster.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&*self.data_dir.to_string_lossy())
            .then_some(pid)
    }

    /// Patroni's log (its stdout and stderr, PostgreSQL's server log included).
    pub fn log(&self) -> String {
        read_lossy(&self.log_file)
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- patroni log (tail) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Stops Patroni (SIGTERM, which makes it shut PostgreSQL down; SIGKILL
    /// after 10 s) and then any PostgreSQL still running on the data dir
    /// (immediate shutdown). Idempotent; drop does the same.
    pub fn stop(&self) {
        blocking(|| self.stop_blocking());
    }

    fn stop_blocking(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "TERM");
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = as_postgres(Command::new(find_bin_dir().join("pg_ctl")))
                .args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"])
                .arg(&self.data_dir)
                .current_dir(self.dir.path())
                .stdin(Stdio::null())
                .output();
            if self.postmaster_pid() == Some(pid) {
                signal(pid, "KILL");
            }
        }
    }
}

impl Drop for GoldDr {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

pub(crate) struct OsUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: String,
}

/// The `postgres` OS user if we are root (PostgreSQL refuses to run as root), else None.
pub(crate) fn postgres_user() -> Option<&'static OsUser> {
    static USER: OnceLock<Option<OsUser>> = OnceLock::new();
    USER.get_or_init(|| {
        if !running_as_root() {
            return None;
        }
        let out = run(Command::new("getent").args(["passwd", "postgres"]));
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = line.trim().split(':').collect();
        assert!(
            out.status.success() && fields.len() >= 6,
            "running as root but there is no `postgres` OS user to run PostgreSQL and Patroni as \
             (install the postgresql package): {}",
            describe(&out)
        );
        Some(OsUser {
            uid: fields[2].parse().expect("postgres uid"),
            gid: fields[3].parse().expect("postgres gid"),
            home: fields[5].to_string(),
        })
    })
    .as_ref()
}

/// `cmd`, set to run as the `postgres` OS user if we are root.
pub(crate) fn as_postgres(mut cmd: Command) -> Command {
    if let Some(user) = postgres_user() {
        cmd.uid(user.uid)
            .gid(user.gid)
            .env("HOME", &user.home)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    cmd
}

/// Removes inherited environment variables with these prefixes (they would
/// configure Patroni, libpq or etcd behind the harness's back).
pub(crate) fn clear_env(cmd: &mut Command, prefixes: &[&str]) {
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str()
            && prefixes.iter().any(|p| k.starts_with(p))
        {
            cmd.env_remove(&key);
        }
    }
}

pub(crate) fn temp_dir(prefix: &str) -> TempDir {
    // /tmp, not $TMPDIR: unix socket paths must stay short.
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("create temp dir")
}

/// A blocking HTTP/1.0 GET on 127.0.0.1:`port`: (status, body), or None on
/// any transport error.
pub(crate) fn http_get(port: u16, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Sends SIGname to one process, by PID (the shell's builtin `kill`).
pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            name,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .output();
}

pub(crate) fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

//! Gold as a real Patroni *primary* cluster ([`GoldCluster`]): one or two
//! members on an [`Etcd`] under their own random scope, each member a Patroni
//! with its own PostgreSQL, REST API and data directory, all on 127.0.0.1.
//! Where [`Gold`](crate::support::patroni_cluster::Gold) is a plain
//! PostgreSQL, this one fails over inside the site, restarts as a site, and
//! answers on Patroni's REST API — the site heartbeat a witness probes.
//!
//! Same conventions as [`GoldDr`](crate::support::patroni_cluster::GoldDr):
//! Patroni runs as the `postgres` OS user when the tests run as root, its
//! environment has no `PATRONI_*`/`PG*` variables, fsync is off, the data
//! lives in a temporary directory under /tmp, and drop stops exactly the
//! processes started here (by PID, never by name).
//!
//! Process control and waits block (call them from `#[tokio::test(flavor =
//! "multi_thread")]` tests, where [`blocking`] keeps other tasks such as
//! proxies running); SQL helpers are async.
//!
//! Timings measured on the 2-core machine (loop_wait 2, ttl 14, other builds
//! running; three runs of the harness tests in `e2e_harness.rs`, which print
//! them):
//! - in-Gold failover: after [`GoldCluster::kill_member`] of the leader, the
//!   other member answers 200 on `/primary` 13.0–14.5 s later (the dead
//!   leader's lease must expire first: ~ttl minus the time since its last
//!   renewal, plus one HA loop); a GoldDR streaming through the
//!   [`LeaderRouter`](crate::support::leader_router::LeaderRouter) has a row
//!   written after that 1.5–5.7 s later.
//! - site restart: after [`GoldCluster::kill_site`] and
//!   [`GoldCluster::restart_site`] a second later, the first REST API answers
//!   0.5–0.9 s after the start (503 on `/primary`), and a member is writable
//!   1.0–2.1 s after that first answer: the window in which Gold's heartbeat
//!   is back but its PostgreSQL is not a primary yet. Restarting after the
//!   lease expired (16 s after the kill) gave the same order (0.7 s, 1.1 s).
#![allow(dead_code)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::support::patroni_cluster::{
    Etcd, REPLICATION_USER, as_postgres, clear_env, http_get, postgres_user, read_lossy, temp_dir,
};
use crate::support::pg::{WATCHDOG_USER, blocking, describe, find_bin_dir, free_port, run};
use crate::support::sampler::probe_writable;

/// Application name of the harness's own sessions (as in `support::pg`).
const SUPPORT_APP_NAME: &str = "pgtest-support";

#[derive(Clone, Debug)]
pub struct GoldClusterOptions {
    /// 1 or 2 Patroni members.
    pub members: usize,
    /// Patroni `scope` (the cluster name in the DCS); members are `<scope>-<i>`.
    pub scope: String,
    /// Patroni `loop_wait` in seconds.
    pub loop_wait: u32,
    /// Patroni `ttl` in seconds (the leader lease): a dead leader is replaced
    /// about this long after it last renewed. `retry_timeout` is derived as
    /// `min(10, (ttl - loop_wait) / 2)`.
    pub ttl: u32,
    /// Permanent physical slots (`bootstrap.dcs.slots`): Patroni keeps them
    /// on whichever member leads, so GoldDR can stream with
    /// `primary_slot_name` across an in-Gold failover.
    pub slots: Vec<String>,
}

impl Default for GoldClusterOptions {
    /// One member, a random scope, `loop_wait` 2, `ttl` 14 (a failover inside
    /// Gold then takes 13–14.5 s here, with room left on a busy machine for a
    /// live leader to renew its lease), slot `golddr`.
    fn default() -> Self {
        GoldClusterOptions {
            members: 1,
            scope: format!("gold-{:08x}", fastrand::u32(..)),
            loop_wait: 2,
            ttl: 14,
            slots: vec!["golddr".to_string()],
        }
    }
}

impl GoldClusterOptions {
    /// Defaults with `members` members.
    pub fn members(members: usize) -> Self {
        GoldClusterOptions {
            members,
            ..Self::default()
        }
    }
}

/// A Patroni primary cluster. Dropping it kills every Patroni and stops every
/// PostgreSQL it started (immediate shutdown), leaving no process behind.
pub struct GoldCluster {
    pub scope: String,
    /// How long [`GoldCluster::start`] took until the cluster was healthy.
    pub startup: Duration,
    members: Vec<Member>,
    slots: Vec<String>,
    // Declared last so the directory outlives everything else during drop.
    dir: TempDir,
}

struct Member {
    name: String,
    api_port: u16,
    pg_port: u16,
    root: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    config_file: PathBuf,
    patroni: Mutex<Option<Child>>,
}

impl GoldCluster {
    /// Writes each member's `patroni.yml`, starts all members at once (one
    /// wins the initialize key and bootstraps, the other clones it with
    /// pg_basebackup) and waits up to 120 s until [healthy](Self::wait_healthy).
    pub fn start(etcd: &Etcd, opts: GoldClusterOptions) -> GoldCluster {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            assert!(
                handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
                "GoldCluster::start blocks: use #[tokio::test(flavor = \"multi_thread\")]"
            );
        }
        assert!(
            (1..=2).contains(&opts.members),
            "GoldClusterOptions: 1 or 2 members, not {}",
            opts.members
        );
        assert!(
            opts.loop_wait >= 1 && opts.ttl >= opts.loop_wait + 2,
            "GoldClusterOptions: need loop_wait >= 1 and ttl >= loop_wait + 2, got {opts:?}"
        );
        blocking(|| Self::start_blocking(etcd, opts))
    }

    fn start_blocking(etcd: &Etcd, opts: GoldClusterOptions) -> GoldCluster {
        let started = Instant::now();
        let dir = temp_dir("goldtest-");
        let mut members = Vec::new();
        for i in 0..opts.members {
            let root = dir.path().join(format!("m{i}"));
            let socket_dir = root.join("sock");
            fs::create_dir_all(&socket_dir).expect("create member dirs");
            members.push(Member {
                name: format!("{}-{i}", opts.scope),
                api_port: free_port(),
                pg_port: free_port(),
                data_dir: root.join("data"),
                log_file: root.join("patroni.log"),
                config_file: root.join("patroni.yml"),
                socket_dir,
                root,
                patroni: Mutex::new(None),
            });
        }
        if let Some(user) = postgres_user() {
            let mut paths = vec![dir.path().to_path_buf()];
            for m in &members {
                paths.extend([m.root.clone(), m.socket_dir.clone()]);
            }
            for path in paths {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
            }
        }
        let mut gold = GoldCluster {
            scope: opts.scope.clone(),
            startup: Duration::ZERO,
            members,
            slots: opts.slots.clone(),
            dir,
        };
        for m in &gold.members {
            gold.write_pre_promote(m, "exit 0");
            let config = m.config(etcd, &opts);
            fs::write(
                &m.config_file,
                serde_json::to_string_pretty(&config).expect("serialize patroni.yml"),
            )
            .expect("write patroni.yml");
        }
        for i in 0..gold.members.len() {
            gold.spawn_patroni(i);
        }
        gold.wait_healthy_blocking(Duration::from_secs(120));
        // The probe user logs in over TCP, as the watchdog and witnesses do.
        let leader = gold.leader().expect("a leader right after wait_healthy");
        let out = gold.psql_tcp(leader, WATCHDOG_USER, "SELECT 1");
        assert_eq!(
            out.as_deref(),
            Ok("1"),
            "{WATCHDOG_USER} cannot log in on Gold\n{}",
            gold.logs()
        );
        gold.startup = started.elapsed();
        gold
    }

    /// Number of members.
    pub fn members(&self) -> usize {
        self.members.len()
    }

    /// The Patroni member name of member `i` (`<scope>-<i>`).
    pub fn member_name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Member `i`'s PostgreSQL on 127.0.0.1.
    pub fn member_pg_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].pg_port))
    }

    /// Member `i`'s Patroni REST API on 127.0.0.1.
    pub fn member_api_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].api_port))
    }

    /// `http://127.0.0.1:<REST API port>` of member `i`.
    pub fn api_url(&self, i: usize) -> String {
        format!("http://{}", self.member_api_addr(i))
    }

    /// Every member's REST API base URL, in member order (e.g. joined with
    /// commas for `WATCHDOG_GOLD_HEARTBEAT`).
    pub fn api_urls(&self) -> Vec<String> {
        (0..self.members()).map(|i| self.api_url(i)).collect()
    }

    /// Every member's PostgreSQL address, in member order.
    pub fn pg_addrs(&self) -> Vec<SocketAddr> {
        (0..self.members()).map(|i| self.member_pg_addr(i)).collect()
    }

    pub fn socket_dir(&self, i: usize) -> &Path {
        &self.members[i].socket_dir
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }

    /// The member whose `GET /primary` answers 200 (Patroni holds the leader
    /// key and runs a primary), if any. Asks each member (2 s timeout each).
    pub fn leader(&self) -> Option<usize> {
        blocking(|| (0..self.members()).find(|&i| self.primary_status(i) == Some(200)))
    }

    /// `GET /primary`'s HTTP status for member `i`, or None if its REST API
    /// does not answer.
    pub fn primary_status(&self, i: usize) -> Option<u16> {
        blocking(|| http_get(self.members[i].api_port, "/primary", Duration::from_secs(2)).map(|(s, _)| s))
    }

    /// `GET /patroni` of member `i` (any status), or None if the REST API
    /// does not answer with JSON.
    pub fn status(&self, i: usize) -> Option<Value> {
        blocking(|| {
            http_get(self.members[i].api_port, "/patroni", Duration::from_secs(2))
                .and_then(|(_, body)| serde_json::from_str(&body).ok())
        })
    }

    /// Member `i`'s role per `GET /patroni` (`master`/`primary`, `replica`,
    /// ...), or `unreachable`.
    pub fn role(&self, i: usize) -> String {
        self.status(i)
            .and_then(|s| s["role"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unreachable".to_string())
    }

    /// Blocks until some member is [`leader`](Self::leader) (up to
    /// `timeout`); returns it. Panics with every member's log otherwise.
    pub fn wait_for_leader(&self, timeout: Duration) -> usize {
        blocking(|| {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(leader) = self.leader() {
                    return leader;
                }
                assert!(
                    Instant::now() < deadline,
                    "no Gold leader after {timeout:?}\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }

    /// Blocks until one member is a running primary holding the leader key,
    /// every other *running* member is a replica streaming from it, and the
    /// permanent slots exist on the leader (up to `timeout`). A member killed
    /// and not started again is not waited for.
    pub fn wait_healthy(&self, timeout: Duration) {
        blocking(|| self.wait_healthy_blocking(timeout));
    }

    fn wait_healthy_blocking(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.health() {
                Ok(()) => return,
                Err(why) => why,
            };
            for (i, m) in self.members.iter().enumerate() {
                let exited = m
                    .patroni
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                if let Some(code) = exited {
                    panic!(
                        "Gold member {i}'s patroni exited ({code}) before the cluster was healthy\n{}",
                        self.logs()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "Gold not healthy after {timeout:?}: {last}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Ok if healthy (see [`wait_healthy`](Self::wait_healthy)), else why not.
    fn health(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no member answers 200 on /primary")?;
        let status = self.status(leader).unwrap_or_default();
        if status["state"] != "running" {
            return Err(format!("leader {leader} is {}", status["state"]));
        }
        let slots = self.slots.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>();
        if !slots.is_empty() {
            let sql = format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ({})",
                slots.join(",")
            );
            let n = self.psql(leader, &sql)?;
            if n != slots.len().to_string() {
                return Err(format!("{n} of the permanent slots {slots:?} on leader {leader}"));
            }
        }
        let streaming = self.psql(
            leader,
            "SELECT string_agg(application_name, ',') FROM pg_stat_replication WHERE state = 'streaming'",
        )?;
        let streaming: Vec<&str> = streaming.split(',').collect();
        for (i, m) in self.members.iter().enumerate() {
            if i == leader || m.patroni.lock().unwrap().is_none() {
                continue;
            }
            let role = self.role(i);
            if role != "replica" {
                return Err(format!("member {i} is {role}"));
            }
            if !streaming.contains(&m.name.as_str()) {
                return Err(format!("member {i} does not stream from leader {leader}"));
            }
        }
        Ok(())
    }

    /// SIGKILLs member `i`'s Patroni and its PostgreSQL (postmaster and every
    /// backend), as when its pod crashes: nothing shuts down cleanly, the
    /// leader key (if it held it) stays until its lease expires.
    pub fn kill_member(&self, i: usize) {
        blocking(|| {
            let m = &self.members[i];
            if let Some(mut child) = m.patroni.lock().unwrap().take() {
                // Patroni first, so it cannot start PostgreSQL again meanwhile.
                kill_tree(child.id());
                let _ = child.wait();
            }
            // Patroni detaches its postmaster; find it by its `-D` argument.
            // Twice, in case a postmaster was just being spawned.
            for _ in 0..2 {
                for pid in m.postmasters() {
                    kill_tree(pid);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }

    /// [`kill_member`](Self::kill_member) for every member: the whole site crashes.
    pub fn kill_site(&self) {
        for i in 0..self.members() {
            self.kill_member(i);
        }
    }

    /// Starts member `i`'s Patroni again on its data dir, ports and config,
    /// and returns at once (no wait: tests watch the way back).
    pub fn start_member(&self, i: usize) {
        blocking(|| self.spawn_patroni(i));
    }

    /// [`start_member`](Self::start_member) for every member. Each Patroni's
    /// REST API answers (503 on `/primary`, `state: starting` on `/patroni`)
    /// before its PostgreSQL is a writable primary.
    pub fn restart_site(&self) {
        for i in 0..self.members() {
            self.start_member(i);
        }
    }

    /// PID of member `i`'s Patroni, while started here and not killed.
    pub fn patroni_pid(&self, i: usize) -> Option<u32> {
        self.members[i].patroni.lock().unwrap().as_ref().map(Child::id)
    }

    /// PID of member `i`'s postmaster, if one runs.
    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        self.members[i].postmasters().into_iter().next()
    }

    /// Runs `sql` (may hold several statements) as superuser on the current
    /// leader, retrying for up to 60 s while there is none, it cannot be
    /// reached or it refuses the write as read-only (it was just demoted:
    /// nothing was applied). Other errors panic, as does an error after the
    /// statement was sent (whether it applied is unknown).
    pub async fn execute(&self, sql: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = match self.leader_client().await {
                Ok(client) => match client.batch_execute(sql).await {
                    Ok(()) => return,
                    Err(e)
                        if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
                            || e.code() == Some(&SqlState::CANNOT_CONNECT_NOW) =>
                    {
                        format!("{e:?}")
                    }
                    Err(e) => panic!("executing {sql:?} on the Gold leader: {e:?}\n{}", self.logs()),
                },
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "executing {sql:?}: no usable Gold leader for 60 s (last: {last})\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The first column of the single row of `sql` on the current leader, as
    /// an i64; retried (up to 60 s) on any error, so only for reads.
    pub async fn query_i64(&self, sql: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = match self.leader_client().await {
                Ok(client) => match client.query_one(sql, &[]).await {
                    Ok(row) => row.try_get::<_, i64>(0).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("{e:?}")),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => return v,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{sql:?} on the Gold leader: {e}\n{}",
                    self.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `pg_current_wal_lsn()` on the leader, as text (e.g. `0/3000148`), to
    /// compare with a standby's `pg_last_wal_replay_lsn()`.
    pub async fn current_lsn(&self) -> String {
        let client = self.leader_client().await.unwrap_or_else(|e| panic!("{e}"));
        let row = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("pg_current_wal_lsn()");
        row.get(0)
    }

    /// Blocks (up to `timeout`) until every running replica has replayed all
    /// the leader has written: a failover then loses nothing, and no standby
    /// downstream of Gold can be ahead of the member that takes over.
    pub fn wait_replicas_caught_up(&self, timeout: Duration) {
        blocking(|| {
            let deadline = Instant::now() + timeout;
            loop {
                let leader = self.leader();
                let caught_up = leader.is_some_and(|leader| {
                    let Ok(lsn) = self.psql(leader, "SELECT pg_current_wal_lsn()") else {
                        return false;
                    };
                    (0..self.members())
                        .filter(|&i| i != leader && self.patroni_pid(i).is_some())
                        .all(|i| {
                            let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                            self.psql(i, &sql).as_deref() == Ok("t")
                        })
                });
                if caught_up {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "Gold replicas not caught up after {timeout:?}\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }

    /// Whether member `i` accepts writes: `SELECT NOT pg_is_in_recovery()`
    /// over a fresh TCP connection with a 1 s bound; false on any error.
    pub async fn is_writable(&self, i: usize) -> bool {
        probe_writable(self.member_pg_addr(i), Duration::from_secs(1)).await == Ok(true)
    }

    /// The members that [accept writes](Self::is_writable) right now.
    pub async fn writable_members(&self) -> Vec<usize> {
        let checks = (0..self.members()).map(|i| self.is_writable(i));
        let writable = futures::future::join_all(checks).await;
        (0..self.members()).filter(|&i| writable[i]).collect()
    }

    /// Member `i`'s Patroni log (its stdout and stderr, PostgreSQL's server
    /// log included), across restarts.
    pub fn log(&self, i: usize) -> String {
        read_lossy(&self.members[i].log_file)
    }

    /// The last 40 lines of every member's log, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, m) in self.members.iter().enumerate() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "--- Gold member {i} ({}) patroni log (tail) ---\n{}\n",
                m.name,
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }

    /// A superuser connection to the current leader over its unix socket.
    async fn leader_client(&self) -> Result<tokio_postgres::Client, String> {
        let leader = self.leader().ok_or("no Gold leader")?;
        let m = &self.members[leader];
        let (client, connection) = tokio_postgres::Config::new()
            .host_path(&m.socket_dir)
            .port(m.pg_port)
            .user("postgres")
            .dbname("postgres")
            .application_name(SUPPORT_APP_NAME)
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await
            .map_err(|e| format!("connecting to Gold leader {leader}: {e:?}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// `psql -At` as superuser over member `i`'s unix socket (blocking, 10 s
    /// statement bound): its trimmed output, or the error.
    fn psql(&self, i: usize, sql: &str) -> Result<String, String> {
        let m = &self.members[i];
        let mut cmd = Command::new(find_bin_dir().join("psql"));
        cmd.arg("-h").arg(&m.socket_dir);
        self.run_psql(cmd, m.pg_port, "postgres", sql)
    }

    /// The same over TCP on 127.0.0.1 as `user`.
    /// Sets what every member's `postgresql.pre_promote` runs (a shell
    /// script body, run as the postgres user), e.g. `exec … gate`.
    pub fn set_pre_promote(&self, body: &str) {
        for m in &self.members {
            self.write_pre_promote(m, body);
        }
    }

    fn write_pre_promote(&self, m: &Member, body: &str) {
        let path = m.pre_promote_script();
        fs::write(&path, format!("{body}\n")).expect("write pre_promote.sh");
        if let Some(user) = postgres_user() {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).expect("chown pre_promote.sh");
        }
    }

    /// Runs `sql` on member `i` as the superuser over TCP (psql -At): its
    /// output, or why it failed.
    pub fn psql_member(&self, i: usize, sql: &str) -> Result<String, String> {
        blocking(|| self.psql_tcp(i, "postgres", sql))
    }

    fn psql_tcp(&self, i: usize, user: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(find_bin_dir().join("psql"));
        cmd.args(["-h", "127.0.0.1"]);
        self.run_psql(cmd, self.members[i].pg_port, user, sql)
    }

    fn run_psql(&self, mut cmd: Command, port: u16, user: &str, sql: &str) -> Result<String, String> {
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", "postgres"])
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(user)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "5")
            .env("PGOPTIONS", "-c statement_timeout=10s")
            .env("PGSSLMODE", "disable")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        let out = run(&mut cmd);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(describe(&out))
        }
    }

    fn spawn_patroni(&self, i: usize) {
        let m = &self.members[i];
        let mut slot = m.patroni.lock().unwrap();
        assert!(slot.is_none(), "Gold member {i}'s Patroni already runs");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log_file)
            .expect("open patroni log");
        let mut cmd = as_postgres(Command::new("patroni"));
        cmd.arg(&m.config_file)
            .current_dir(&m.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone patroni log handle"))
            .stderr(log);
        clear_env(&mut cmd, &["PATRONI_", "PG"]);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning patroni: {e}; install it with `apt-get install patroni`"));
        *slot = Some(child);
    }

    fn stop_blocking(&self) {
        for m in &self.members {
            if let Some(mut child) = m.patroni.lock().unwrap_or_else(|e| e.into_inner()).take() {
                kill_tree(child.id());
                let _ = child.wait();
            }
        }
        for m in &self.members {
            if !m.postmasters().is_empty() {
                // Immediate shutdown, not SIGKILL: the postmaster then removes
                // its System V shared memory segment.
                let _ = as_postgres(Command::new(find_bin_dir().join("pg_ctl")))
                    .args(["stop", "-m", "immediate", "-w", "-t", "20", "-D"])
                    .arg(&m.data_dir)
                    .current_dir(&m.root)
                    .stdin(Stdio::null())
                    .output();
                for pid in m.postmasters() {
                    kill_tree(pid);
                }
            }
            m.remove_stale_shared_memory();
        }
    }
}

impl Drop for GoldCluster {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

impl Member {
    fn pre_promote_script(&self) -> PathBuf {
        self.root.join("pre_promote.sh")
    }

    fn config(&self, etcd: &Etcd, opts: &GoldClusterOptions) -> Value {
        let retry_timeout = ((opts.ttl - opts.loop_wait) / 2).clamp(1, 10);
        let restapi = format!("127.0.0.1:{}", self.api_port);
        let pg = format!("127.0.0.1:{}", self.pg_port);
        let slots: serde_json::Map<String, Value> = opts
            .slots
            .iter()
            .map(|s| (s.clone(), json!({ "type": "physical" })))
            .collect();
        json!({
            "scope": opts.scope,
            "name": self.name,
            "restapi": { "listen": restapi, "connect_address": restapi },
            "etcd3": { "hosts": [etcd.host_port()], "protocol": "http" },
            "bootstrap": {
                "dcs": {
                    "ttl": opts.ttl,
                    "loop_wait": opts.loop_wait,
                    "retry_timeout": retry_timeout,
                    // Patroni creates these on the leader, and on a new
                    // leader after a failover.
                    "slots": slots,
                    "postgresql": {
                        // A later test rewinds a diverged Gold member.
                        "use_pg_rewind": true,
                        "use_slots": true,
                        "parameters": {
                            // pg_rewind needs hint bits in the WAL (Patroni
                            // forces it on too; said here so it is seen).
                            "wal_log_hints": "on",
                            // An idle walsender then still talks every
                            // second, so a live Gold keeps GoldDR's WAL
                            // receiver fresh (as e2e.rs sets for Gold).
                            "wal_sender_timeout": "2s",
                        },
                    },
                },
                "initdb": [{ "encoding": "UTF8" }, { "locale": "C" }],
                // Created at bootstrap, so replicas (and GoldDR) clone it.
                "users": { WATCHDOG_USER: { "options": ["LOGIN"] } },
            },
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": self.data_dir,
                "bin_dir": find_bin_dir(),
                "pgpass": self.root.join("pgpass"),
                "use_unix_socket": true,
                "authentication": {
                    "superuser": { "username": "postgres" },
                    // Patroni creates it at bootstrap; the other member and
                    // GoldDR replicate as it.
                    "replication": { "username": REPLICATION_USER },
                },
                // Don't wait for a spread checkpoint on the leader.
                "basebackup": [{ "checkpoint": "fast" }],
                // Patroni runs it before promoting a member; a non-zero exit
                // cancels the promotion. `exit 0` until a test sets it.
                "pre_promote": format!("/bin/sh {}", self.pre_promote_script().display()),
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
                "parameters": {
                    "unix_socket_directories": self.socket_dir,
                    // Throwaway data: no fsync. full_page_writes stays on,
                    // which pg_rewind requires of its source.
                    "fsync": "off",
                    "synchronous_commit": "off",
                    "shared_buffers": "16MB",
                    "max_wal_size": "64MB",
                    "wal_receiver_status_interval": "1s",
                },
            },
            // No /dev/watchdog here.
            "watchdog": { "mode": "off" },
        })
    }

    /// PIDs of postmasters running on this member's data dir, found by their
    /// command line (`postgres -D <data_dir> ...`).
    fn postmasters(&self) -> Vec<u32> {
        let data_dir = self.data_dir.to_string_lossy().into_owned();
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
                args.windows(2)
                    .any(|w| w[0] == b"-D" && w[1] == data_dir.as_bytes())
                    && args.first().is_some_and(|a| a.ends_with(b"postgres"))
            })
            .collect()
    }

    /// After a SIGKILLed postmaster nobody removes its System V shared memory
    /// segment (a new postmaster on the same data dir would). Removes it if
    /// `postmaster.pid` still names it and nothing is attached.
    fn remove_stale_shared_memory(&self) {
        let pid_file = read_lossy(&self.data_dir.join("postmaster.pid"));
        let Some(line) = pid_file.lines().nth(6) else {
            return;
        };
        let mut fields = line.split_whitespace();
        let (Some(Ok(key)), Some(id)) = (fields.next().map(str::parse::<u64>), fields.next()) else {
            return;
        };
        let out = run(Command::new("ipcs").args(["-m"]));
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        // ipcs -m: key shmid owner perms bytes nattch status
        let ours = listed.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6
                && u64::from_str_radix(f[0].trim_start_matches("0x"), 16) == Ok(key)
                && f[1] == id
                && f[5] == "0"
        });
        if ours {
            let _ = run(Command::new("ipcrm").args(["-m", id]));
        }
    }
}

/// SIGKILLs `root` and all its descendants: each is stopped (SIGSTOP) as it is
/// found, so none can fork a new one or be reparented away meanwhile.
/// PostgreSQL's backends are their own session leaders, hence by PPID, not
/// by process group.
pub(crate) fn kill_tree(root: u32) {
    let mut all = vec![root];
    signal_all(&all, "STOP");
    let mut frontier = vec![root];
    while !frontier.is_empty() {
        let children = children_of(&frontier);
        let new: Vec<u32> = children.into_iter().filter(|p| !all.contains(p)).collect();
        signal_all(&new, "STOP");
        all.extend(&new);
        frontier = new;
    }
    signal_all(&all, "KILL");
}

/// Direct children of any of `parents`, per `/proc/<pid>/stat`.
fn children_of(parents: &[u32]) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...; comm may hold spaces and parens.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            rest.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|ppid| parents.contains(&ppid))
        })
        .collect()
}

fn signal_all(pids: &[u32], name: &str) {
    if pids.is_empty() {
        return;
    }
    // One `kill` for all; an already gone PID is no error worth a word.
    let _ = Command::new("kill")
        .arg("-s")
        .arg(name)
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

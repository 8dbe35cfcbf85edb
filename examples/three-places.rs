//! The three places of the end-to-end fencing tests, for scripts/demo.sh:
//! etcd, Gold as a real Patroni cluster (`use_pg_rewind`) behind a leader
//! router (a Service selecting the leader), GoldDR a one-member Patroni
//! standby cluster replicating through the Transport Service, and a fault
//! proxy on every route between the places — all on loopback, built by the
//! tests' own support code (tests/it/support/{gold_cluster,leader_router,
//! patroni_cluster,proxy,sampler}.rs) as `quorum_e2e::Places` builds them,
//! and driven over stdin/stdout like examples/two-sites.rs. The product's
//! processes (witness, guard, DR watchdog) are the script's to start, with
//! the addresses answered here; so is the gate.
//!
//!   cargo run --example three-places -- [--members 1|2]
//!
//! Routes (each a fault proxy; `route NAME FAULT` switches one):
//!   ts       GoldDR → Gold's PostgreSQL (the Transport Service, through the router)
//!   rts      Gold → GoldDR's PostgreSQL (the reverse TS: the guard's probe,
//!            and Gold's replication once it follows GoldDR)
//!   w-pg     witness → Gold's PostgreSQL (through the router)
//!   w-api    witness → every Gold member's Patroni REST API (the site heartbeat)
//!   guard-w  guard → witness, and dr-w GoldDR → witness (after `witness-routes`)
//!
//! Protocol (examples/common/protocol.rs): every answer is zero or more
//! payload lines starting with `| `, then `ok` or `error: <why>`. The first
//! answer (once everything is up) carries `KEY=value` lines: PG_BIN,
//! ETCD_PORT, GOLD_SCOPE, GOLD_MEMBERS, GOLD_API_URL (member 0's Patroni),
//! GOLD_API_URLS, GOLD_PG_PORT (member 0), GOLD_DATA (and GOLD1_DATA),
//! GOLD_STARTUP_S, ROUTER_PORT (Gold's Service: where Gold's applications
//! write), TS_PORT, RTS_PORT, W_PG_PORT, W_HEARTBEAT (the witness's
//! `WATCHDOG_GOLD_HEARTBEAT`), PROBE_USER (the login role of every probe,
//! allowed to read GoldDR's timeline history), REPLICATION_USER, and
//! GOLDDR_URL, GOLDDR_PG_PORT, GOLDDR_SCOPE, GOLDDR_STARTUP_S, GOLDDR_DATA.
//! Gold holds the tables `orders` (a few rows), `ticks` (the writer's) and
//! `pgtest_sampler` (the sampler's), all on GoldDR too. Commands, one a line:
//!
//!   witness-routes PORT     proxies to a witness on 127.0.0.1:PORT: answers
//!                           GUARD_W_PORT and DR_W_PORT
//!   isolate-gold [FAULT]    every link of Gold: ts, rts, w-pg, w-api, guard-w
//!                           (default blackhole); remembers when
//!   heal-gold               all of them forward again; remembers when
//!   route NAME FAULT        one route: forward, refuse, blackhole or reset
//!   sampler-start           the tests' WriteSampler on every Gold member and
//!                           GoldDR (writable = not in recovery and an INSERT
//!                           succeeds), about 6 rounds a second
//!   sampler-report          stops it: ROUNDS, RATE, SAMPLED (yes when it may
//!                           vouch), TWO_WRITABLE (rounds with two writable
//!                           sites), and after isolate-gold or kill-gold
//!                           GOLD_LAST_WRITABLE_S, GOLD_READ_ONLY_S,
//!                           GOLDDR_WRITABLE_S (seconds after the cut or the
//!                           kill, until heal-gold or restart-gold); then the
//!                           per-endpoint summary
//!   writer-start [MS]       an application inserting a row into `ticks` every
//!                           MS (100) ms through the router, while Gold takes them
//!   writer-stop             stops it: WRITES, WRITES_OK
//!   writer-report           the writer's acknowledged rows against GoldDR's
//!                           `ticks`: LOST (acknowledged by Gold, not on GoldDR),
//!                           LOST_IDS, LOST_FROM_S/LOST_TO_S (after the cut), ...
//!   gold-follows ID         whether Gold follows GoldDR: FOLLOWS=yes|no, ROLE,
//!                           RECEIVER, REPLAYED (orders row ID), SINCE_HEAL_S
//!                           (since heal-gold or restart-gold)
//!   state                   GOLD_ROLE, GOLD_WRITABLE, GOLDDR_ROLE,
//!                           GOLDDR_WRITABLE, SINCE_CUT_S, WRITES_OK...
//!   set-pre-promote BODY    what every Gold member's postgresql.pre_promote runs
//!   kill-gold | restart-gold  every Gold member crashes (Patroni and PostgreSQL
//!                           SIGKILLed) / starts again; remembered as a cut and
//!                           a heal
//!   sql gold|golddr SQL     runs SQL as superuser on Gold's leader (or standby
//!                           leader) or GoldDR; rows as `|`-separated columns
//!   log gold|gold1|golddr|etcd [N]  the last N (default 30) lines of that log
//!   stop                    stops everything and exits 0
//!
//! End of input, SIGTERM and SIGINT stop everything too: exactly the
//! processes started here, by PID.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
#[path = "common/protocol.rs"]
mod protocol;

#[allow(dead_code)]
#[path = "../tests/it/support/pg.rs"]
mod pg;

#[allow(dead_code)]
#[path = "../tests/it/support/proxy.rs"]
mod proxy;

#[path = "../tests/it/support/patroni_cluster.rs"]
mod patroni_cluster;

#[path = "../tests/it/support/gold_cluster.rs"]
mod gold_cluster;

#[path = "../tests/it/support/leader_router.rs"]
mod leader_router;

#[path = "../tests/it/support/sampler.rs"]
mod sampler;

/// The support files reach their siblings as `crate::support::*`, as in the
/// test crate.
mod support {
    pub(crate) use crate::{gold_cluster, patroni_cluster, pg, proxy, sampler};
}

use gold_cluster::{GoldCluster, GoldClusterOptions};
use leader_router::LeaderRouter;
use patroni_cluster::{Etcd, GoldDr, GoldDrOptions};
use protocol::{Answer, answer};
use proxy::{Fault, FaultProxy};
use sampler::{SamplerReport, WriteSampler};

const NAME: &str = "three-places";
const SLOT: &str = "golddr";
const ORDERS: i64 = 5;

struct Places {
    // Dropped in this order: the tasks first, then GoldDR, the routes, the
    // router, Gold, etcd, and the runtime that ran the proxies last.
    sampler: Option<WriteSampler>,
    writer: Option<Writer>,
    golddr: GoldDr,
    ts: FaultProxy,
    rts: FaultProxy,
    w_pg: FaultProxy,
    w_api: Vec<FaultProxy>,
    guard_w: Option<FaultProxy>,
    dr_w: Option<FaultProxy>,
    router: LeaderRouter,
    gold: GoldCluster,
    etcd: Etcd,
    cut_at: Option<Instant>,
    healed_at: Option<Instant>,
    rt: tokio::runtime::Runtime,
}

fn main() {
    let mut members = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().as_deref()) {
            ("--members", Some("1")) => members = 1,
            ("--members", Some("2")) => members = 2,
            _ => {
                eprintln!("{NAME}: unknown arguments at {arg}; see the head of examples/three-places.rs");
                std::process::exit(2);
            }
        }
    }
    // Worker threads keep the proxies and the router forwarding while the
    // main thread blocks on process work (GoldDR's base backup goes through
    // the TS).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rx = protocol::inputs(&rt);
    let places = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Places::start(rt, members))) {
        Ok(places) => places,
        Err(panic) => {
            answer(Err(protocol::panic_text(&*panic)));
            return;
        }
    };
    answer(Ok(places.ready()));
    protocol::serve(NAME, &rx, places, |places, line| places.command(line));
}

impl Places {
    fn start(rt: tokio::runtime::Runtime, members: usize) -> Places {
        let etcd = Etcd::start();
        let gold = GoldCluster::start(&etcd, GoldClusterOptions::members(members));
        rt.block_on(gold.execute(&format!(
            "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, \
                                  placed_at timestamptz NOT NULL DEFAULT now()); \
             INSERT INTO orders (id, item) VALUES (1, 'anvil'), (2, 'rocket skates'), (3, 'giant magnet'), \
                                                  (4, 'tornado seeds'); \
             CREATE TABLE ticks (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); \
             CREATE TABLE pgtest_sampler (at timestamptz DEFAULT now()); \
             GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {}",
            pg::WATCHDOG_USER
        )));
        let router = rt.block_on(LeaderRouter::start(&gold));
        let ts = rt.block_on(FaultProxy::start(router.addr()));
        let w_pg = rt.block_on(FaultProxy::start(router.addr()));
        let w_api = (0..gold.members())
            .map(|i| rt.block_on(FaultProxy::start(gold.member_api_addr(i))))
            .collect();
        let golddr = GoldDr::start(&etcd, GoldDrOptions::new(ts.addr(), SLOT));
        // One row streamed rather than in the base backup: GoldDR has
        // replayed a commit, so the age of its data is known.
        rt.block_on(gold.execute(&format!(
            "INSERT INTO orders (id, item) VALUES ({ORDERS}, 'earthquake pills')"
        )));
        let deadline = Instant::now() + Duration::from_secs(60);
        while rt.block_on(golddr.try_query_i64("SELECT count(*) FROM orders")) != Ok(ORDERS) {
            assert!(
                Instant::now() < deadline,
                "Gold's rows not on GoldDR after 60 s\n{}",
                golddr.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let rts = rt.block_on(FaultProxy::start(golddr.pg_addr()));
        Places {
            sampler: None,
            writer: None,
            golddr,
            ts,
            rts,
            w_pg,
            w_api,
            guard_w: None,
            dr_w: None,
            router,
            gold,
            etcd,
            cut_at: None,
            healed_at: None,
            rt,
        }
    }

    fn ready(&self) -> Vec<String> {
        let heartbeat: Vec<String> = self
            .w_api
            .iter()
            .map(|p| format!("http://{}/liveness", p.addr()))
            .collect();
        let mut lines = vec![
            format!("PG_BIN={}", pg::find_bin_dir().display()),
            format!("ETCD_PORT={}", self.etcd.client_port()),
            format!("GOLD_SCOPE={}", self.gold.scope),
            format!("GOLD_MEMBERS={}", self.gold.members()),
            format!("GOLD_API_URL={}", self.gold.api_url(0)),
            format!("GOLD_API_URLS={}", self.gold.api_urls().join(",")),
            format!("GOLD_PG_PORT={}", self.gold.member_pg_addr(0).port()),
            format!("GOLD_DATA={}", self.gold.data_dir(0).display()),
            format!("GOLD_STARTUP_S={:.3}", self.gold.startup.as_secs_f64()),
            format!("ROUTER_PORT={}", self.router.port()),
            format!("TS_PORT={}", self.ts.port()),
            format!("RTS_PORT={}", self.rts.port()),
            format!("W_PG_PORT={}", self.w_pg.port()),
            format!("W_HEARTBEAT={}", heartbeat.join(",")),
            format!("PROBE_USER={}", pg::WATCHDOG_USER),
            format!("REPLICATION_USER={}", patroni_cluster::REPLICATION_USER),
            format!("SLOT={SLOT}"),
            format!("GOLDDR_URL={}", self.golddr.patroni_url),
            format!("GOLDDR_PG_PORT={}", self.golddr.pg_port),
            format!("GOLDDR_SCOPE={}", self.golddr.scope),
            format!("GOLDDR_STARTUP_S={:.3}", self.golddr.startup.as_secs_f64()),
            format!("GOLDDR_DATA={}", self.golddr.data_dir().display()),
        ];
        for i in 1..self.gold.members() {
            lines.push(format!("GOLD{i}_DATA={}", self.gold.data_dir(i).display()));
        }
        lines
    }

    fn command(&mut self, line: &str) -> Answer {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match cmd {
            "witness-routes" => {
                let port: u16 = rest
                    .parse()
                    .map_err(|_| format!("witness-routes: not a port: {rest}"))?;
                let witness = SocketAddr::from(([127, 0, 0, 1], port));
                let guard_w = self.rt.block_on(FaultProxy::start(witness));
                let dr_w = self.rt.block_on(FaultProxy::start(witness));
                let lines = vec![
                    format!("GUARD_W_PORT={}", guard_w.port()),
                    format!("DR_W_PORT={}", dr_w.port()),
                ];
                self.guard_w = Some(guard_w);
                self.dr_w = Some(dr_w);
                Ok(lines)
            }
            "isolate-gold" => {
                let fault = if rest.is_empty() {
                    Fault::Blackhole
                } else {
                    fault(rest)?
                };
                let cut = self.isolate(fault);
                self.cut_at = Some(Instant::now());
                self.healed_at = None;
                Ok(vec![format!("ROUTES={}", cut.join(","))])
            }
            "heal-gold" => {
                let healed = self.isolate(Fault::Forward);
                self.healed_at = Some(Instant::now());
                Ok(vec![format!("ROUTES={}", healed.join(","))])
            }
            "route" => {
                let (name, f) = rest.split_once(' ').unwrap_or((rest, ""));
                let f = fault(f.trim())?;
                let proxies: Vec<&FaultProxy> = match name {
                    "ts" => vec![&self.ts],
                    "rts" => vec![&self.rts],
                    "w-pg" => vec![&self.w_pg],
                    "w-api" => self.w_api.iter().collect(),
                    "guard-w" => self.guard_w.iter().collect(),
                    "dr-w" => self.dr_w.iter().collect(),
                    _ => {
                        return Err(format!(
                            "route: no route {name} (ts, rts, w-pg, w-api, guard-w, dr-w)"
                        ));
                    }
                };
                if proxies.is_empty() {
                    return Err(format!("route {name}: not set up yet (witness-routes)"));
                }
                for p in proxies {
                    self.rt.block_on(p.set(f));
                }
                Ok(Vec::new())
            }
            "sampler-start" => {
                if self.sampler.is_some() {
                    return Err("the sampler already runs".to_string());
                }
                let _rt = self.rt.enter();
                let sampler = WriteSampler::builder()
                    .insert_into("pgtest_sampler")
                    .postgres_all("gold", self.gold.pg_addrs())
                    .postgres("golddr", self.golddr.pg_addr())
                    .start();
                // Not a word until it has heard both sites: a report must
                // vouch for something.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !sampler.snapshot().every_endpoint_answered() {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "the sampler heard not every site in 20 s: {}",
                            sampler.snapshot().summary()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                self.sampler = Some(sampler);
                Ok(Vec::new())
            }
            "sampler-report" => {
                let sampler = self.sampler.take().ok_or("no sampler running (sampler-start)")?;
                let report = self.rt.block_on(sampler.stop());
                Ok(self.sampler_lines(&report))
            }
            "writer-start" => {
                if self.writer.is_some() {
                    return Err("the writer already runs".to_string());
                }
                let ms: u64 = if rest.is_empty() {
                    100
                } else {
                    rest.parse()
                        .map_err(|_| format!("writer-start: not milliseconds: {rest}"))?
                };
                let _rt = self.rt.enter();
                self.writer = Some(Writer::start(
                    self.router.addr(),
                    Duration::from_millis(ms.max(10)),
                ));
                Ok(Vec::new())
            }
            "writer-stop" => {
                let writer = self.writer.as_mut().ok_or("no writer (writer-start)")?;
                self.rt.block_on(writer.stop());
                let attempts = writer.attempts();
                Ok(vec![
                    format!("WRITES={}", attempts.len()),
                    format!("WRITES_OK={}", attempts.iter().filter(|a| a.ok).count()),
                ])
            }
            "writer-report" => self.writer_report(),
            "gold-follows" => {
                let id: i64 = rest
                    .parse()
                    .map_err(|_| format!("gold-follows: not an orders id: {rest}"))?;
                self.gold_follows(id)
            }
            "state" => Ok(self.state()),
            "set-pre-promote" => {
                if rest.is_empty() {
                    return Err("set-pre-promote: no script body".to_string());
                }
                self.gold.set_pre_promote(rest);
                Ok(Vec::new())
            }
            "kill-gold" => {
                self.gold.kill_site();
                self.cut_at = Some(Instant::now());
                self.healed_at = None;
                Ok(Vec::new())
            }
            "restart-gold" => {
                self.gold.restart_site();
                self.healed_at = Some(Instant::now());
                Ok(Vec::new())
            }
            "sql" => {
                let (site, sql) = rest.split_once(' ').unwrap_or((rest, ""));
                let config = match site {
                    "gold" => {
                        let i = self.gold_member();
                        protocol::superuser(self.gold.socket_dir(i), self.gold.member_pg_addr(i).port(), NAME)
                    }
                    "golddr" => protocol::superuser(self.golddr.socket_dir(), self.golddr.pg_port, NAME),
                    _ => return Err(format!("sql: no site {site} (gold or golddr)")),
                };
                protocol::sql(&self.rt, &config, sql)
            }
            "log" => {
                let (site, n) = rest.split_once(' ').unwrap_or((rest, "30"));
                let n: usize = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("log: not a line count: {n}"))?;
                let log = match site {
                    "gold" => self.gold.log(0),
                    "gold1" if self.gold.members() > 1 => self.gold.log(1),
                    "golddr" => self.golddr.log(),
                    "etcd" => self.etcd.log(),
                    _ => return Err(format!("log: no log {site} (gold, gold1, golddr or etcd)")),
                };
                let lines: Vec<String> = log.lines().map(str::to_string).collect();
                Ok(lines[lines.len().saturating_sub(n)..].to_vec())
            }
            _ => Err(format!(
                "unknown command {cmd}; see the head of examples/three-places.rs"
            )),
        }
    }

    /// Sets every link of Gold to `fault`: the TS both ways, the witness's
    /// routes to Gold, the guard's route to the witness. Names what it set.
    fn isolate(&self, fault: Fault) -> Vec<String> {
        let mut names = Vec::new();
        let mut routes: Vec<(String, &FaultProxy)> = vec![
            ("ts".to_string(), &self.ts),
            ("rts".to_string(), &self.rts),
            ("w-pg".to_string(), &self.w_pg),
        ];
        for (i, p) in self.w_api.iter().enumerate() {
            routes.push((format!("w-api{i}"), p));
        }
        if let Some(p) = &self.guard_w {
            routes.push(("guard-w".to_string(), p));
        }
        for (name, p) in routes {
            self.rt.block_on(p.set(fault));
            names.push(name);
        }
        names
    }

    /// The Gold member holding the leader key: the primary, else a standby
    /// leader, else member 0.
    fn gold_member(&self) -> usize {
        self.gold
            .leader()
            .or_else(|| (0..self.gold.members()).find(|&i| self.gold.role(i) == "standby_leader"))
            .unwrap_or(0)
    }

    fn since(&self, t: Option<Instant>) -> String {
        t.map(|t| format!("{:.3}", t.elapsed().as_secs_f64()))
            .unwrap_or_else(|| "-".to_string())
    }

    fn state(&self) -> Vec<String> {
        let roles: Vec<String> = (0..self.gold.members()).map(|i| self.gold.role(i)).collect();
        let (gold_writable, golddr_writable, golddr_role) = self.rt.block_on(async {
            let golddr = sampler::probe_writable(self.golddr.pg_addr(), Duration::from_secs(1));
            let (gold, golddr, role) = tokio::join!(self.gold.writable_members(), golddr, self.golddr.role());
            (!gold.is_empty(), golddr == Ok(true), role)
        });
        let yes = |b: bool| if b { "yes" } else { "no" };
        let mut lines = vec![
            format!("GOLD_ROLE={}", roles.join(",")),
            format!("GOLD_WRITABLE={}", yes(gold_writable)),
            format!("GOLDDR_ROLE={golddr_role}"),
            format!("GOLDDR_WRITABLE={}", yes(golddr_writable)),
            format!("SINCE_CUT_S={}", self.since(self.cut_at)),
            format!("SINCE_HEAL_S={}", self.since(self.healed_at)),
        ];
        if let Some(writer) = &self.writer {
            let attempts = writer.attempts();
            let ok = attempts.iter().filter(|a| a.ok).count();
            let after_cut = self
                .cut_at
                .map(|cut| attempts.iter().filter(|a| a.ok && a.at >= cut).count());
            lines.push(format!("WRITES_OK={ok}"));
            lines.push(format!(
                "WRITES_OK_AFTER_CUT={}",
                after_cut.map_or("-".to_string(), |n| n.to_string())
            ));
            lines.push(format!(
                "WRITER_LAST={}",
                attempts
                    .last()
                    .map_or("-", |a| if a.ok { "ok" } else { "failed" })
            ));
        }
        lines
    }

    fn gold_follows(&self, id: i64) -> Answer {
        let i = self.gold_member();
        let role = self.gold.role(i);
        let config = protocol::superuser(self.gold.socket_dir(i), self.gold.member_pg_addr(i).port(), NAME);
        let row = protocol::sql(
            &self.rt,
            &config,
            &format!(
                "SELECT pg_is_in_recovery(), \
                        coalesce((SELECT status || ' from ' || sender_host || ':' || sender_port \
                                         || ' on timeline ' || received_tli FROM pg_stat_wal_receiver), 'none'), \
                        (SELECT count(*) FROM orders WHERE id = {id})"
            ),
        );
        let since = self.since(self.healed_at);
        let row = match row {
            Ok(rows) => rows.into_iter().next().unwrap_or_default(),
            Err(e) => {
                return Ok(vec![
                    "FOLLOWS=no".to_string(),
                    format!("ROLE={role}"),
                    format!("RECEIVER=(no answer: {e})"),
                    "REPLAYED=no".to_string(),
                    format!("SINCE_HEAL_S={since}"),
                ]);
            }
        };
        let cols: Vec<&str> = row.split('|').collect();
        let recovery = cols.first() == Some(&"t");
        let receiver = cols.get(1).copied().unwrap_or("none");
        let replayed = cols.get(2) == Some(&"1");
        let follows = recovery
            && replayed
            && receiver.starts_with("streaming")
            && matches!(role.as_str(), "standby_leader" | "replica");
        let yes = |b: bool| if b { "yes" } else { "no" };
        Ok(vec![
            format!("FOLLOWS={}", yes(follows)),
            format!("ROLE={role}"),
            format!("RECEIVER={receiver}"),
            format!("REPLAYED={}", yes(replayed)),
            format!("SINCE_HEAL_S={since}"),
        ])
    }

    fn sampler_lines(&self, report: &SamplerReport) -> Vec<String> {
        let sampled = report.rate() >= sampler::MIN_RATE && report.every_endpoint_answered();
        let moments = report.two_writable_moments();
        let mut lines = vec![
            format!("ROUNDS={}", report.round_count()),
            format!("RATE={:.1}", report.rate()),
            format!("LIFETIME_S={:.1}", report.lifetime.as_secs_f64()),
            format!("SAMPLED={}", if sampled { "yes" } else { "no" }),
            format!("TWO_WRITABLE={}", moments.len()),
        ];
        if let Some(cut) = self.cut_at {
            let end = self.healed_at.unwrap_or_else(Instant::now);
            let during: Vec<_> = report
                .rounds
                .iter()
                .filter(|r| r.at >= cut && r.at < end)
                .collect();
            let secs = |at: Instant| format!("{:.2}", at.duration_since(cut).as_secs_f64());
            // Gold read-only from the round after its last writable one: a
            // single slow answer is not a demotion.
            let last = during.iter().rposition(|r| report.site_writable(r, "gold"));
            let read_only = match last {
                Some(i) => during.get(i + 1).map(|r| r.at),
                None => during.first().map(|r| r.at),
            };
            lines.push(format!(
                "GOLD_LAST_WRITABLE_S={}",
                last.map_or("-".to_string(), |i| secs(during[i].at))
            ));
            lines.push(format!(
                "GOLD_READ_ONLY_S={}",
                read_only.map_or("-".to_string(), secs)
            ));
            let golddr = during
                .iter()
                .find(|r| report.site_writable(r, "golddr"))
                .map(|r| r.at);
            lines.push(format!(
                "GOLDDR_WRITABLE_S={}",
                golddr.map_or("-".to_string(), secs)
            ));
        }
        for m in &moments {
            lines.push(format!(
                "two writable sites at {:.2?} after the sampler started: {:?} via {:?}",
                m.at, m.sites, m.endpoints
            ));
        }
        lines.extend(report.summary().lines().map(str::to_string));
        lines
    }

    fn writer_report(&self) -> Answer {
        let writer = self.writer.as_ref().ok_or("no writer (writer-start)")?;
        let attempts = writer.attempts();
        let ids =
            |rows: Vec<String>| -> HashSet<i64> { rows.iter().filter_map(|r| r.parse().ok()).collect() };
        let sql = "SELECT id FROM ticks";
        let on_golddr = ids(protocol::sql(
            &self.rt,
            &protocol::superuser(self.golddr.socket_dir(), self.golddr.pg_port, NAME),
            sql,
        )?);
        let i = self.gold_member();
        let on_gold = protocol::sql(
            &self.rt,
            &protocol::superuser(self.gold.socket_dir(i), self.gold.member_pg_addr(i).port(), NAME),
            sql,
        )
        .map(ids);
        let acked: Vec<&Attempt> = attempts.iter().filter(|a| a.ok).collect();
        let lost: Vec<&Attempt> = acked
            .iter()
            .copied()
            .filter(|a| !on_golddr.contains(&a.id))
            .collect();
        let unacked_kept = attempts
            .iter()
            .filter(|a| !a.ok && on_golddr.contains(&a.id))
            .count();
        let rel = |at: Instant| match self.cut_at {
            Some(cut) if at >= cut => format!("{:.2}", at.duration_since(cut).as_secs_f64()),
            Some(cut) => format!("-{:.2}", cut.duration_since(at).as_secs_f64()),
            None => "-".to_string(),
        };
        let cut = self.cut_at;
        let mut lines = vec![
            format!("WRITES={}", attempts.len()),
            format!("WRITES_OK={}", acked.len()),
            format!("WRITES_FAILED={}", attempts.len() - acked.len()),
            format!(
                "WRITES_OK_AFTER_CUT={}",
                cut.map_or("-".to_string(), |c| acked
                    .iter()
                    .filter(|a| a.at >= c)
                    .count()
                    .to_string())
            ),
            format!(
                "LAST_OK_S={}",
                acked.last().map_or("-".to_string(), |a| rel(a.at))
            ),
            format!("ON_GOLDDR={}", on_golddr.len()),
            format!(
                "ON_GOLD={}",
                on_gold.as_ref().map_or("?".to_string(), |s| s.len().to_string())
            ),
            format!("LOST={}", lost.len()),
            format!("LOST_IDS={}", ranges(lost.iter().map(|a| a.id))),
            format!(
                "LOST_FROM_S={}",
                lost.first().map_or("-".to_string(), |a| rel(a.at))
            ),
            format!("LOST_TO_S={}", lost.last().map_or("-".to_string(), |a| rel(a.at))),
            format!(
                "LOST_BEFORE_CUT={}",
                cut.map_or("-".to_string(), |c| lost
                    .iter()
                    .filter(|a| a.at < c)
                    .count()
                    .to_string())
            ),
            format!(
                "LOST_STILL_ON_GOLD={}",
                on_gold.as_ref().map_or("?".to_string(), |s| lost
                    .iter()
                    .filter(|a| s.contains(&a.id))
                    .count()
                    .to_string())
            ),
            format!("UNACKNOWLEDGED_KEPT={unacked_kept}"),
        ];
        if let Ok(on_gold) = &on_gold {
            lines.push(format!(
                "GOLD_SAME_AS_GOLDDR={}",
                if *on_gold == on_golddr { "yes" } else { "no" }
            ));
        }
        Ok(lines)
    }
}

/// `3-7,9,12-13`
fn ranges(ids: impl Iterator<Item = i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    for id in ids {
        run = match run {
            Some((a, b)) if id == b + 1 => Some((a, id)),
            Some((a, b)) => {
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    if out.is_empty() {
        "-".to_string()
    } else {
        out.join(",")
    }
}

fn fault(name: &str) -> Result<Fault, String> {
    match name {
        "forward" => Ok(Fault::Forward),
        "refuse" => Ok(Fault::Refuse),
        "blackhole" => Ok(Fault::Blackhole),
        "reset" => Ok(Fault::Reset),
        _ => Err(format!("no fault {name:?} (forward, refuse, blackhole or reset)")),
    }
}

/// One INSERT the writer tried.
#[derive(Clone, Debug)]
struct Attempt {
    id: i64,
    at: Instant,
    /// Acknowledged by Gold (committed).
    ok: bool,
}

/// An application at Gold's site: inserts `ticks` row after row through
/// Gold's Service (the router), one every period, over one connection that
/// is opened again after any error; each try bounded by 1 s.
struct Writer {
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    fn start(addr: SocketAddr, period: Duration) -> Writer {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(write_loop(addr, period, Arc::clone(&attempts), stop.clone()));
        Writer {
            attempts,
            stop,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn write_loop(
    addr: SocketAddr,
    period: Duration,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut id: i64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        id += 1;
        let at = Instant::now();
        let try_once = async {
            if client.is_none() {
                let (c, connection) = tokio_postgres::Config::new()
                    .host(addr.ip().to_string())
                    .port(addr.port())
                    .user("postgres")
                    .dbname("postgres")
                    .application_name("demo-writer")
                    .ssl_mode(tokio_postgres::config::SslMode::Disable)
                    .connect_timeout(Duration::from_secs(1))
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client = Some(c);
            }
            match &client {
                Some(c) => c
                    .execute("INSERT INTO ticks (id) VALUES ($1)", &[&id])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Err("no connection".to_string()),
            }
        };
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(1), try_once).await,
            Ok(Ok(()))
        );
        if !ok {
            client = None;
        }
        attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Attempt { id, at, ok });
    }
}

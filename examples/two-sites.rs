//! The two sites of the integration tests, for scripts: etcd, Gold (a plain
//! PostgreSQL primary), a fault proxy in front of Gold standing in for the
//! Transport Service, and GoldDR (a one-member Patroni standby cluster),
//! all on loopback. It is the end-to-end tests' own harness
//! (tests/it/support/patroni_cluster.rs), driven over stdin/stdout, so the
//! demo and the benchmarks set up exactly what the tests do.
//!
//!   cargo run --example two-sites -- [--gold-only] [--no-golddr] [--golddr-via-ts]
//!
//! Without options it starts etcd, Gold, the proxy and GoldDR (replicating
//! from Gold directly through the permanent slot `golddr`); `--no-golddr`
//! leaves GoldDR for a later `start-golddr`; `--gold-only` starts Gold and the
//! proxy only. `--golddr-via-ts` makes GoldDR replicate through the proxy.
//!
//! Protocol: every answer is zero or more payload lines starting with `| `,
//! then one line `ok` or `error: <why>`. The first answer (once everything
//! is up) carries `KEY=value` lines: PG_BIN, GOLD_PORT, GOLD_DATA, TS_PORT,
//! REPLICATION_USER, SLOT, ETCD_PORT and, with GoldDR, GOLDDR_URL,
//! GOLDDR_PG_PORT, GOLDDR_SCOPE, GOLDDR_STARTUP_S, GOLDDR_DATA. Commands,
//! one a line:
//!
//!   kill-gold               immediate shutdown of Gold (a crash: the port closes)
//!   stop-gold               fast shutdown of Gold
//!   start-gold              starts Gold again on the same port
//!   cut-ts | blackhole-ts | heal-ts
//!                           the proxy refuses / swallows / forwards connections
//!   start-golddr [SCOPE]    a fresh GoldDR (stopping the old one; the slot is
//!                           re-created), answers its GOLDDR_* lines
//!   stop-golddr             stops GoldDR (Patroni and its PostgreSQL)
//!   sql gold|golddr SQL     runs SQL (the rest of the line) as superuser;
//!                           answers each row as `|`-separated columns
//!   log gold|golddr|etcd [N]  the last N (default 30) lines of that log
//!   stop                    stops everything and exits 0
//!
//! End of input, SIGTERM and SIGINT stop everything too: exactly the
//! processes started here, by PID.

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

/// patroni_cluster.rs reaches its siblings as `crate::support::*`, as in the
/// test crate.
mod support {
    pub(crate) use crate::pg;
}

use patroni_cluster::{Etcd, Gold, GoldDr, GoldDrOptions};
use protocol::{Answer, answer};
use proxy::{Fault, FaultProxy};

const SLOT: &str = "golddr";

struct Sites {
    // Dropped in this order: GoldDR before etcd and Gold, the runtime that
    // runs the proxy last.
    golddr: Option<GoldDr>,
    etcd: Option<Etcd>,
    proxy: FaultProxy,
    gold: Gold,
    golddr_via_ts: bool,
    runs: u32,
    rt: tokio::runtime::Runtime,
}

fn main() {
    let mut gold_only = false;
    let mut golddr = true;
    let mut golddr_via_ts = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--gold-only" => gold_only = true,
            "--no-golddr" => golddr = false,
            "--golddr-via-ts" => golddr_via_ts = true,
            _ => {
                eprintln!("two-sites: unknown argument {arg}; see the head of examples/two-sites.rs");
                std::process::exit(2);
            }
        }
    }

    // Worker threads keep the proxy forwarding while the main thread blocks
    // on process work (GoldDR's base backup may go through the proxy).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let rx = protocol::inputs(&rt);

    let gold = Gold::start();
    // Gold's walsender then pings GoldDR at least every second while idle,
    // so GoldDR's "last message from Gold" stays fresh while Gold lives
    // (the watchdog's wal_receiver_streaming guard reads it).
    gold.psql("ALTER SYSTEM SET wal_sender_timeout = '2s'");
    gold.psql("SELECT pg_reload_conf()");
    let proxy = rt.block_on(FaultProxy::start(gold.addr()));
    let mut sites = Sites {
        etcd: (!gold_only).then(Etcd::start),
        rt,
        golddr: None,
        proxy,
        gold,
        golddr_via_ts,
        runs: 0,
    };
    let mut ready = vec![
        format!("PG_BIN={}", pg::find_bin_dir().display()),
        format!("GOLD_PORT={}", sites.gold.port()),
        format!("GOLD_DATA={}", sites.gold.pg.data_dir().display()),
        format!("TS_PORT={}", sites.proxy.port()),
        format!("REPLICATION_USER={}", patroni_cluster::REPLICATION_USER),
        format!("SLOT={SLOT}"),
    ];
    if let Some(etcd) = &sites.etcd {
        ready.push(format!("ETCD_PORT={}", etcd.client_port()));
    }
    if golddr && !gold_only {
        match sites.start_golddr(None) {
            Ok(lines) => ready.extend(lines),
            Err(e) => {
                answer(Err(e));
                return;
            }
        }
    }
    answer(Ok(ready));

    protocol::serve("two-sites", &rx, sites, |sites, line| sites.command(line));
}

impl Sites {
    fn command(&mut self, line: &str) -> Answer {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match cmd {
            "kill-gold" => self.gold.kill(),
            "stop-gold" => self.gold.stop(),
            "start-gold" => self.gold.restart(),
            "cut-ts" => self.rt.block_on(self.proxy.set(Fault::Refuse)),
            "blackhole-ts" => self.rt.block_on(self.proxy.set(Fault::Blackhole)),
            "heal-ts" => self.rt.block_on(self.proxy.set(Fault::Forward)),
            "start-golddr" => return self.start_golddr((!rest.is_empty()).then(|| rest.to_string())),
            "stop-golddr" => {
                if let Some(golddr) = self.golddr.take() {
                    golddr.stop();
                }
            }
            "sql" => {
                let (site, sql) = rest.split_once(' ').unwrap_or((rest, ""));
                return self.sql(site, sql);
            }
            "log" => {
                let (site, n) = rest.split_once(' ').unwrap_or((rest, "30"));
                let n: usize = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("log: not a line count: {n}"))?;
                let log = match site {
                    "gold" => self.gold.pg.log_contents(),
                    "golddr" => self.golddr.as_ref().map(GoldDr::log).unwrap_or_default(),
                    "etcd" => self.etcd.as_ref().map(Etcd::log).unwrap_or_default(),
                    _ => return Err(format!("log: no site {site} (gold, golddr or etcd)")),
                };
                let lines: Vec<String> = log.lines().map(str::to_string).collect();
                return Ok(lines[lines.len().saturating_sub(n)..].to_vec());
            }
            _ => {
                return Err(format!(
                    "unknown command {cmd}; see the head of examples/two-sites.rs"
                ));
            }
        }
        Ok(Vec::new())
    }

    /// A fresh GoldDR in a fresh scope, replicating through a re-created
    /// slot (a slot left from an earlier GoldDR would hold WAL it no longer needs).
    fn start_golddr(&mut self, scope: Option<String>) -> Answer {
        let Some(etcd) = &self.etcd else {
            return Err("no etcd: started with --gold-only".to_string());
        };
        if let Some(old) = self.golddr.take() {
            old.stop();
        }
        self.gold.psql(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
        ));
        self.gold.create_slot(SLOT);
        self.runs += 1;
        let upstream = if self.golddr_via_ts {
            self.proxy.addr()
        } else {
            self.gold.addr()
        };
        let mut opts = GoldDrOptions::new(upstream, SLOT);
        opts.scope = scope.unwrap_or_else(|| format!("golddr-{}", self.runs));
        let golddr = GoldDr::start(etcd, opts);
        let lines = vec![
            format!("GOLDDR_URL={}", golddr.patroni_url),
            format!("GOLDDR_PG_PORT={}", golddr.pg_port),
            format!("GOLDDR_SCOPE={}", golddr.scope),
            format!("GOLDDR_STARTUP_S={:.3}", golddr.startup.as_secs_f64()),
            format!("GOLDDR_DATA={}", golddr.data_dir().display()),
        ];
        self.golddr = Some(golddr);
        Ok(lines)
    }

    fn sql(&self, site: &str, sql: &str) -> Answer {
        let config = match site {
            "gold" => protocol::superuser(self.gold.pg.socket_dir(), self.gold.port(), "two-sites"),
            "golddr" => {
                let golddr = self.golddr.as_ref().ok_or("no GoldDR running")?;
                protocol::superuser(golddr.socket_dir(), golddr.pg_port, "two-sites")
            }
            _ => return Err(format!("sql: no site {site} (gold or golddr)")),
        };
        protocol::sql(&self.rt, &config, sql)
    }
}

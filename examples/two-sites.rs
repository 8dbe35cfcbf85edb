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

use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::Duration;

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
use proxy::{Fault, FaultProxy};

const SLOT: &str = "golddr";

enum Input {
    Line(String),
    Eof,
    Signal(&'static str),
}

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

/// One answer: payload lines, or why the command failed.
type Answer = Result<Vec<String>, String>;

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
    let (tx, rx) = mpsc::channel();
    watch_signals(&rt, tx.clone());
    // Stdin is read on its own thread so that a signal is seen while no
    // command comes.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(line) => {
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(Input::Eof);
    });

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

    loop {
        match rx.recv() {
            Ok(Input::Line(line)) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line == "stop" {
                    drop(sites);
                    answer(Ok(Vec::new()));
                    return;
                }
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sites.command(line)))
                    .unwrap_or_else(|panic| Err(panic_text(&*panic)));
                answer(result);
            }
            Ok(Input::Signal(name)) => {
                eprintln!("two-sites: {name}: stopping everything");
                break;
            }
            Ok(Input::Eof) | Err(_) => break,
        }
    }
    drop(sites);
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
            "gold" => superuser(self.gold.pg.socket_dir(), self.gold.port()),
            "golddr" => {
                let golddr = self.golddr.as_ref().ok_or("no GoldDR running")?;
                superuser(golddr.socket_dir(), golddr.pg_port)
            }
            _ => return Err(format!("sql: no site {site} (gold or golddr)")),
        };
        self.rt.block_on(async {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| pg_error(&e))?;
            tokio::spawn(connection);
            let messages = tokio::time::timeout(Duration::from_secs(30), client.simple_query(sql))
                .await
                .map_err(|_| "no answer within 30 s".to_string())?
                .map_err(|e| pg_error(&e))?;
            Ok(messages
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                })
                .collect())
        })
    }
}

fn superuser(socket_dir: &std::path::Path, port: u16) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .application_name("two-sites")
        .connect_timeout(Duration::from_secs(5));
    config
}

/// The server's own message when there is one ("cannot execute INSERT in a
/// read-only transaction"), else the client's.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

fn answer(result: Answer) {
    let mut out = std::io::stdout().lock();
    let text = match result {
        Ok(lines) => {
            let mut text: String = lines.iter().map(|l| format!("| {l}\n")).collect();
            text.push_str("ok\n");
            text
        }
        Err(why) => format!("error: {}\n", why.replace('\n', " ")),
    };
    // Nobody left to read it: we stop anyway at the next EOF.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".to_string())
}

fn watch_signals(rt: &tokio::runtime::Runtime, tx: mpsc::Sender<Input>) {
    use tokio::signal::unix::{SignalKind, signal};
    rt.spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(Input::Signal(name));
    });
}

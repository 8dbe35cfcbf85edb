//! Fencing end to end: the three places of `quorum_e2e`, plus the guard at
//! Gold (a process of the product binary) probing GoldDR through the reverse
//! Transport Service and asking the witness through a route of its own. A
//! sampler counts a site as taking writes only if it is out of recovery and
//! an INSERT succeeds, and asks both sites several times a second.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::quorum_e2e::{FAST, Places, Witness, config_pairs, finish};
use crate::support::gold_cluster::GoldClusterOptions;
use crate::support::pg::WATCHDOG_USER;
use crate::support::proxy::{Fault, FaultProxy};
use crate::support::witness::WitnessProcess;

const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");
const FENCE_AFTER: &str = "1500ms";

/// The guard's fast timing: GoldDR probed every 300 ms.
const GUARD_TIMING: &[(&str, &str)] = &[
    ("WATCHDOG_PROBE_INTERVAL", "300ms"),
    ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
    ("WATCHDOG_FALL", "2"),
    ("WATCHDOG_RISE", "2"),
];

/// The DR watchdog's timing paired with the guard: Gold lost after 45 ×
/// 300 ms (13.5 s), more than FENCE_AFTER plus the 10 s margin.
fn dr_timing() -> Vec<(&'static str, &'static str)> {
    let mut t: Vec<_> = FAST
        .iter()
        .copied()
        .filter(|(k, _)| *k != "WATCHDOG_PROMOTE_AFTER")
        .collect();
    t.push(("WATCHDOG_PROMOTE_AFTER", "45"));
    t.push(("WATCHDOG_GUARD_FENCE_AFTER", FENCE_AFTER));
    t
}

/// The guard beside Gold's (one) member, and its route to the witness.
struct Guard {
    to_witness: FaultProxy,
    process: WitnessProcess,
    vars: Vec<(String, String)>,
}

impl Guard {
    async fn start(places: &Places, witness: &Witness, extra: &[(&str, &str)]) -> Guard {
        Self::beside(places, 0, witness, extra).await
    }

    /// The guard in Gold member `member`'s pod.
    async fn beside(places: &Places, member: usize, witness: &Witness, extra: &[(&str, &str)]) -> Guard {
        let upstream = format!("127.0.0.1:{}", witness.process.port())
            .parse()
            .expect("witness address");
        let to_witness = FaultProxy::start(upstream).await;
        let mut vars: Vec<(String, String)> = [
            ("WATCHDOG_GOLDDR_HOST", "127.0.0.1".to_string()),
            ("WATCHDOG_GOLDDR_PORT", places.rts.port().to_string()),
            ("WATCHDOG_GOLDDR_USER", WATCHDOG_USER.to_string()),
            ("WATCHDOG_GOLDDR_SSLMODE", "disable".to_string()),
            ("WATCHDOG_PATRONI_URL", places.gold.api_url(member)),
            ("WATCHDOG_WITNESSES", format!("http://{}", to_witness.addr())),
            ("WATCHDOG_FENCE_AFTER", FENCE_AFTER.to_string()),
            ("WATCHDOG_LOG_FORMAT", "json".to_string()),
            ("HOSTNAME", format!("gold-{member}-guard")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(GUARD_TIMING.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
        vars.sort();
        vars.dedup_by(|a, b| a.0 == b.0);
        let process = WitnessProcess::start_as("guard", &config_pairs(&vars)).await;
        Guard {
            to_witness,
            process,
            vars,
        }
    }

    async fn status(&self) -> Value {
        self.process.get_json("/status").await.unwrap_or(Value::Null)
    }

    async fn wait(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            last = self.status().await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "guard: timed out waiting for {what}; last status: {last:#}\n--- log ---\n{}",
            self.process.log()
        );
    }

    /// The gate as Gold's `pre_promote` runs it: with the guard's settings.
    fn gate_command(&self) -> String {
        let env: Vec<String> = self
            .vars
            .iter()
            .map(|(k, v)| format!("{k}='{}'", v.replace('\'', "")))
            .collect();
        format!("exec env -i {} {BIN} gate", env.join(" "))
    }

    /// The guard's series as Prometheus scrapes them (checked by promtool).
    async fn series(&self) -> std::collections::BTreeMap<String, String> {
        let addr = format!("127.0.0.1:{}", self.process.port())
            .parse()
            .expect("guard address");
        let (code, _, body) = crate::http::scrape(addr, Some(crate::http::PROMETHEUS_ACCEPT)).await;
        assert_eq!(code, 200, "{body}");
        let (_, _, classic) = crate::http::scrape(addr, None).await;
        let (ok, said) = crate::http::promtool_check(&classic);
        assert!(ok, "promtool: {said}\n{classic}");
        crate::http::series(&body)
    }

    /// `patroni-dr-watchdog check --guard` with the guard's settings: its
    /// exit code and output.
    fn check(&self) -> (i32, String) {
        let out = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(config_pairs(&self.vars))
            .args(["check", "--guard"])
            .output()
            .expect("run check --guard");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    /// `patroni-dr-watchdog gate` with the guard's settings: its exit code.
    fn gate(&self) -> i32 {
        let out = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(config_pairs(&self.vars))
            .arg("gate")
            .output()
            .expect("run gate");
        out.status.code().unwrap_or(-1)
    }
}

/// One Gold member with its guard, the witness, and the DR watchdog whose
/// promote bound is paired with the guard's deadline.
async fn three_places() -> (Places, Witness, Guard, crate::support::app::Running) {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let witness = places.witness("witness-a", FAST).await;
    let guard = Guard::start(&places, &witness, &[]).await;
    let w = places.spawn_watchdog(&[&witness], &dr_timing(), &[]).await;
    (places, witness, guard, w)
}

/// Cuts every route to and from Gold: the TS both ways, the witness's two
/// routes to Gold, and the guard's route to the witness.
async fn isolate_gold(places: &Places, guard: &Guard, fault: Fault) {
    places.ts.set(fault).await;
    places.rts.set(fault).await;
    places.w_pg.set(fault).await;
    for p in &places.w_api {
        p.set(fault).await;
    }
    guard.to_witness.set(fault).await;
}

/// Gold's member follows GoldDR: it replays what is written on GoldDR now
/// (through the reverse TS) and takes no writes.
async fn wait_gold_follows_golddr(places: &Places, timeout: Duration) {
    let id = 5000 + fastrand::i32(0..1000);
    places
        .dr
        .execute(&format!("INSERT INTO orders VALUES ({id}, 'written on GoldDR')"))
        .await;
    let sql = format!("SELECT count(*) FROM orders WHERE id = {id}");
    let deadline = Instant::now() + timeout;
    loop {
        let replayed = places.gold.psql_member(0, &sql).unwrap_or_default() == "1";
        // A standby leader of the fenced cluster, or — when Patroni will not
        // take the lock with a position past the remote's (the member that
        // came back after a crash) — a replica of GoldDR: either way it
        // replays GoldDR and takes no writes.
        let role = places.gold.role(0);
        if replayed
            && matches!(role.as_str(), "standby_leader" | "replica")
            && !places.gold.is_writable(0).await
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "Gold never followed GoldDR (role {}, row {id} replayed: {replayed})\n{}",
                places.gold.role(0),
                places.gold.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The first moment after `from` (since the sampler started) when Gold was
/// no longer writable, from the sampler's rounds.
fn gold_read_only_after(report: &crate::support::sampler::SamplerReport, from: Duration) -> Option<Duration> {
    report
        .rounds
        .iter()
        .filter(|r| r.at.duration_since(report.started) >= from)
        .find(|r| !report.site_writable(r, "gold"))
        .map(|r| r.at.duration_since(report.started) - from)
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_isolated_fences_itself_then_golddr_promotes_and_gold_follows_it() {
    let (places, _witness, guard, w) = three_places().await;
    guard
        .wait("watching, Gold not fenced", Duration::from_secs(20), |s| {
            s["state"] == "watching" && s["golddr"] == "standby" && s["fenced"] == false
        })
        .await;
    let sampler = places.sampler().await;
    let t0 = sampler.snapshot().lifetime;
    // Everything Gold wrote so far reached GoldDR.
    let before = places.gold.query_i64(LSN_NOW).await;
    crate::support::wait_for("GoldDR caught up", Duration::from_secs(30), async || {
        places.dr.try_query_i64(REPLAYED).await.is_ok_and(|r| r >= before)
    })
    .await;

    isolate_gold(&places, &guard, Fault::Blackhole).await;
    // A write Gold takes while cut off, before its fence: the split loses it.
    places
        .gold
        .execute("INSERT INTO orders VALUES (9001, 'only on Gold')")
        .await;
    let written = places.gold.query_i64(LSN_NOW).await;
    let st = guard
        .wait("Gold fenced for isolation", Duration::from_secs(30), |s| {
            s["fenced"] == true
        })
        .await;
    assert_eq!(st["fence"]["reason"], "isolated", "{st:#}");
    let m = guard.series().await;
    assert_eq!(m["patroni_dr_watchdog_fenced"], "1", "{m:#?}");
    assert_eq!(m["patroni_dr_watchdog_isolated"], "1", "{m:#?}");
    assert_eq!(
        m["patroni_dr_watchdog_fences_total{reason=\"isolated\"}"], "1",
        "{m:#?}"
    );
    let st = w
        .wait_status_for(Duration::from_secs(60), "GoldDR promoted", |s| {
            s["promotion"]["result"] == "promoted"
        })
        .await;
    assert!(
        st["promotion"]["reason"].to_string().contains("witnesses agree"),
        "{st:#}"
    );
    places.assert_promoted_with_every_row().await;
    assert!(!places.gold.is_writable(0).await, "Gold stays fenced");

    isolate_gold(&places, &guard, Fault::Forward).await;
    let back = Instant::now();
    wait_gold_follows_golddr(&places, Duration::from_secs(90)).await;
    eprintln!("links back -> Gold streaming from GoldDR in {:?}", back.elapsed());
    let st = guard
        .wait(
            "the fence re-marked: GoldDR was promoted",
            Duration::from_secs(20),
            |s| s["fence"]["reason"] == "golddr_promoted",
        )
        .await;
    assert_eq!(st["fenced"], true, "{st:#}");

    // The report of what only Gold had: from where GoldDR left Gold's
    // timeline (its history file says) to Gold's last position, holding the
    // row written while cut off; and that row is on neither site now.
    let st = guard
        .wait("the rejoin reported", Duration::from_secs(30), |s| {
            !s["rejoin"].is_null()
        })
        .await;
    let r = &st["rejoin"];
    assert!(r["error"].is_null(), "{r:#}");
    let (from, to) = (lsn(&r["lost"]["from"]), lsn(&r["lost"]["to"]));
    let switchpoint = places.dr.query_i64(SWITCHPOINT).await as u64;
    assert_eq!(from, switchpoint, "{r:#}");
    assert_eq!(lsn(&r["switchpoint"]), switchpoint, "{r:#}");
    assert!(
        from >= before as u64 && from < written as u64 && written as u64 <= to,
        "{before} {written} {r:#}"
    );
    assert_eq!(r["lost"]["bytes"].as_u64(), Some(to - from), "{r:#}");
    assert_eq!(
        r["golddr_timeline"],
        r["gold_timeline"].as_u64().unwrap_or(0) + 1,
        "{r:#}"
    );
    assert!(
        r["summary"].as_str().unwrap_or("").contains("pg_waldump"),
        "{r:#}"
    );
    let gone = "SELECT count(*) FROM orders WHERE id = 9001";
    assert_eq!(places.dr.query_i64(gone).await, 0);
    assert_eq!(places.gold.psql_member(0, gone).as_deref(), Ok("0"));
    let m = guard.series().await;
    assert_eq!(
        m["patroni_dr_watchdog_lost_wal_bytes"],
        (to - from).to_string(),
        "{m:#?}"
    );
    assert_eq!(m["patroni_dr_watchdog_rejoins_total"], "1", "{m:#?}");
    assert!(guard.process.log().contains("REJOINED with lost writes"));

    let report = sampler.stop().await;
    if let Some(d) = gold_read_only_after(&report, t0) {
        eprintln!("Gold isolated -> Gold read-only in {d:?}");
    }
    finish(report);
    w.stop().await;
}

/// Positions as bytes, to compare them.
/// The insert position: the write position may lag behind it.
const LSN_NOW: &str = "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint";
const REPLAYED: &str = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint";
/// Where the promoted GoldDR left Gold's timeline, from its history file.
const SWITCHPOINT: &str = "SELECT pg_wal_lsn_diff(split_part(pg_read_file('pg_wal/' || \
     substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.history'), E'\\t', 2)::pg_lsn, '0/0')::bigint";

fn lsn(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a WAL position: {v}"));
    let (hi, lo) = s.split_once('/').expect("X/Y");
    (u64::from_str_radix(hi, 16).expect("hex") << 32) | u64::from_str_radix(lo, 16).expect("hex")
}

#[tokio::test(flavor = "multi_thread")]
async fn golddr_promoted_by_hand_while_gold_is_alive_is_fenced_at_once() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let witness = places.witness("witness-a", FAST).await;
    let guard = Guard::start(&places, &witness, &[]).await;
    guard
        .wait("watching", Duration::from_secs(20), |s| s["golddr"] == "standby")
        .await;
    assert_eq!(guard.gate(), 0, "GoldDR a standby: a Gold promotion is allowed");
    let sampler = places.sampler().await;

    assert_eq!(
        places.dr.patch_config(json!({"standby_cluster": null})).await,
        200
    );
    let st = guard
        .wait("Gold fenced: GoldDR writable", Duration::from_secs(30), |s| {
            s["fenced"] == true
        })
        .await;
    assert_eq!(st["fence"]["reason"], "golddr_promoted", "{st:#}");
    let m = guard.series().await;
    assert_eq!(m["patroni_dr_watchdog_fenced"], "1", "{m:#?}");
    assert_eq!(
        m["patroni_dr_watchdog_fences_total{reason=\"golddr_promoted\"}"], "1",
        "{m:#?}"
    );
    assert_eq!(
        m["patroni_dr_watchdog_fences_total{reason=\"isolated\"}"], "0",
        "{m:#?}"
    );
    assert_eq!(
        m["patroni_dr_watchdog_golddr_seen{golddr=\"writable\"}"], "1",
        "{m:#?}"
    );
    assert_eq!(guard.gate(), 1, "GoldDR writable: the gate refuses");
    crate::support::wait_for("Gold read-only", Duration::from_secs(30), async || {
        !places.gold.is_writable(0).await
    })
    .await;
    wait_gold_follows_golddr(&places, Duration::from_secs(90)).await;

    // Nothing could stop Gold before the guard saw GoldDR writable: the
    // overlap is bounded by a guard interval plus the demotion.
    let report = sampler.stop().await;
    report.assert_sampled();
    let moments = report.two_writable_moments();
    let overlap = match (moments.first(), moments.last()) {
        (Some(a), Some(b)) => b.at - a.at + b.took,
        _ => Duration::ZERO,
    };
    eprintln!(
        "two writable sites for {overlap:?} ({} sampled rounds)",
        moments.len()
    );
    assert!(overlap < Duration::from_secs(15), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ts_cut_in_either_direction_fences_nothing_and_promotes_nothing() {
    let (places, _witness, guard, w) = three_places().await;
    let (code, said) = guard.check();
    assert_eq!(code, 0, "{said}");
    for l in [
        "ok   golddr: a standby at",
        "ok   patroni: primary at",
        "ok   gold config: no standby_cluster",
        "ok   use_pg_rewind: true",
        "ok   rewind prerequisites: wal_log_hints is on",
        "ok   lost-writes report",
        "ok   witness: http://",
    ] {
        assert!(said.contains(l), "{l:?} missing:\n{said}");
    }
    let sampler = places.sampler().await;

    // GoldDR → Gold cut: GoldDR sees Gold lost, the witness sees Gold.
    places.ts.set(Fault::Blackhole).await;
    w.wait_status_for(Duration::from_secs(60), "vetoed by the witness", |s| {
        s["verdict"] == "lost" && crate::quorum_e2e::has_veto(s, "witness_sees_gold")
    })
    .await;
    places.ts.set(Fault::Forward).await;
    // Gold → GoldDR cut: the guard cannot reach GoldDR, the witness sees Gold.
    places.rts.set(Fault::Blackhole).await;
    guard
        .wait(
            "GoldDR out of reach, not isolated",
            Duration::from_secs(20),
            |s| s["golddr"] == "unreachable" && s["isolated"] == false,
        )
        .await;
    assert_eq!(
        guard.gate(),
        0,
        "a witness sees Gold: a failover inside Gold may promote"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = guard.status().await;
    assert_eq!(st["fenced"], false, "{st:#}");
    let (code, said) = guard.check();
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("FAIL golddr: unreachable at 127.0.0.1:"), "{said}");
    places.rts.set(Fault::Forward).await;
    crate::support::wait_for("Gold writable", Duration::from_secs(30), async || {
        places.gold.is_writable(0).await
    })
    .await;
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;

    // What a fenced Gold needs to follow GoldDR, and the report's grant,
    // taken away: `check --guard` names each.
    let patched = reqwest::Client::new()
        .patch(format!("{}/config", places.gold.api_url(0)))
        .json(&json!({"postgresql": {"use_pg_rewind": false}}))
        .send()
        .await
        .expect("PATCH Gold's config");
    assert!(patched.status().is_success(), "{patched:?}");
    places
        .gold
        .execute(&format!(
            "REVOKE EXECUTE ON FUNCTION pg_read_file(text) FROM {WATCHDOG_USER}"
        ))
        .await;
    let mut said = String::new();
    crate::support::wait_for(
        "check --guard to name both",
        Duration::from_secs(30),
        async || {
            let (code, out) = guard.check();
            said = out;
            code == 1
                && said.contains("FAIL use_pg_rewind: not true")
                && said.contains("FAIL lost-writes report")
        },
    )
    .await;
    assert!(
        said.contains("GRANT EXECUTE ON FUNCTION pg_read_file(text)"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_isolated_while_golddr_is_never_promoted_is_unfenced_when_the_links_return() {
    let places = Places::start(GoldClusterOptions::members(1)).await;
    let witness = places.witness("witness-a", FAST).await;
    // No DR watchdog: GoldDR stays a standby whatever happens.
    let guard = Guard::start(&places, &witness, &[]).await;
    guard
        .wait("watching", Duration::from_secs(20), |s| s["golddr"] == "standby")
        .await;
    let sampler = places.sampler().await;

    isolate_gold(&places, &guard, Fault::Blackhole).await;
    guard
        .wait("Gold fenced for isolation", Duration::from_secs(30), |s| {
            s["fenced"] == true
        })
        .await;
    assert_eq!(guard.gate(), 1, "fenced and isolated: the gate refuses");
    crate::support::wait_for("Gold read-only", Duration::from_secs(30), async || {
        !places.gold.is_writable(0).await
    })
    .await;

    isolate_gold(&places, &guard, Fault::Forward).await;
    let st = guard
        .wait("unfenced", Duration::from_secs(30), |s| {
            s["fenced"] == false && s["last_write"]["action"] == "unfence"
        })
        .await;
    assert_eq!(st["fence"]["fenced"], "no", "{st:#}");
    crate::support::wait_for("Gold writable again", Duration::from_secs(60), async || {
        places.gold.is_writable(0).await
    })
    .await;
    assert_eq!(places.dr.role().await, "standby_leader");
    finish(sampler.stop().await);
}

/// Gold's whole site dies, its guard with it: GoldDR is promoted with every
/// row, and never sooner than the guard's deadline plus the pairing margin
/// (a Gold only cut off would have fenced itself by then).
#[tokio::test(flavor = "multi_thread")]
async fn gold_killed_golddr_promotes_only_after_the_guards_deadline_and_margin() {
    let (places, _witness, guard, w) = three_places().await;
    let sampler = places.sampler().await;

    guard.process.kill();
    places.gold.kill_site();
    let killed = Instant::now();
    w.wait_status_for(Duration::from_secs(60), "GoldDR promoted", |s| {
        s["promotion"]["result"] == "promoted"
    })
    .await;
    let after = killed.elapsed();
    let bound = humantime::parse_duration(FENCE_AFTER).expect("FENCE_AFTER") + Duration::from_secs(10);
    assert!(
        after >= bound,
        "promoted {after:?} after the kill, before {bound:?}"
    );
    eprintln!("Gold killed -> GoldDR promoted in {after:?} (never before {bound:?})");
    places.assert_promoted_with_every_row().await;
    finish(sampler.stop().await);
    w.stop().await;
}

/// Gold's site dies with its guard; GoldDR is promoted by the quorum; Gold's
/// site comes back. Its Patroni would promote the member again: the gate
/// (its `pre_promote`) refuses while GoldDR is writable, and the guard,
/// back too, fences Gold so that it follows GoldDR.
#[tokio::test(flavor = "multi_thread")]
async fn gold_killed_and_brought_back_never_takes_writes_beside_the_promoted_golddr() {
    let (places, _witness, guard, w) = three_places().await;
    places.gold.set_pre_promote(&guard.gate_command());
    let sampler = places.sampler().await;

    guard.process.kill();
    places.gold.kill_site();
    w.wait_status_for(Duration::from_secs(60), "GoldDR promoted", |s| {
        s["promotion"]["result"] == "promoted"
    })
    .await;
    places.assert_promoted_with_every_row().await;

    places.gold.restart_site();
    // Patroni's leader race ends in pre_promote, which refuses.
    crate::support::wait_for(
        "the gate refusing Gold's promotion",
        Duration::from_secs(60),
        async || places.gold.log(0).contains("gate: promotion refused"),
    )
    .await;
    assert!(!places.gold.is_writable(0).await);
    let guard = Guard {
        process: WitnessProcess::start_as("guard", &config_pairs(&guard.vars)).await,
        ..guard
    };
    guard
        .wait("Gold fenced: GoldDR writable", Duration::from_secs(30), |s| {
            s["fence"]["reason"] == "golddr_promoted"
        })
        .await;
    wait_gold_follows_golddr(&places, Duration::from_secs(90)).await;
    finish(sampler.stop().await);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn golddr_isolated_or_the_witness_isolated_fences_nothing_and_promotes_nothing() {
    let (places, witness, guard, w) = three_places().await;
    let sampler = places.sampler().await;

    // GoldDR cut off from Gold (both ways) and from the witness.
    places.ts.set(Fault::Blackhole).await;
    places.rts.set(Fault::Blackhole).await;
    witness.route.set(Fault::Blackhole).await;
    w.wait_status_for(Duration::from_secs(60), "no quorum", |s| {
        s["verdict"] == "lost" && crate::quorum_e2e::has_veto(s, "no_quorum")
    })
    .await;
    let st = guard.status().await;
    assert_eq!(
        (st["isolated"].clone(), st["fenced"].clone()),
        (json!(false), json!(false)),
        "{st:#}"
    );
    places.ts.set(Fault::Forward).await;
    places.rts.set(Fault::Forward).await;
    witness.route.set(Fault::Forward).await;
    w.wait_status("Gold up again", |s| s["verdict"] == "up").await;

    // The witness cut off from everything.
    places.w_pg.set(Fault::Blackhole).await;
    for p in &places.w_api {
        p.set(Fault::Blackhole).await;
    }
    witness.route.set(Fault::Blackhole).await;
    guard.to_witness.set(Fault::Blackhole).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = guard.status().await;
    assert_eq!(st["fenced"], false, "GoldDR still reachable: {st:#}");
    crate::support::wait_for("Gold writable", Duration::from_secs(30), async || {
        places.gold.is_writable(0).await
    })
    .await;
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

/// A failover inside Gold during a Transport Service outage: the old
/// leader's pod dies with its guard; the new leader's `pre_promote` cannot
/// reach GoldDR, but the witness hears the surviving member's Patroni, so the
/// gate allows it: Gold gets its primary. GoldDR is not promoted.
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_inside_gold_during_a_ts_outage_still_gets_a_primary() {
    let places = Places::start(GoldClusterOptions::members(2)).await;
    let witness = places.witness("witness-a", FAST).await;
    let leader = places.gold.leader().expect("a Gold leader");
    let other = 1 - leader;
    let guards = [
        Guard::beside(&places, leader, &witness, &[]).await,
        Guard::beside(&places, other, &witness, &[]).await,
    ];
    // The gate reads Gold's config, the same through any member's API.
    places.gold.set_pre_promote(&guards[1].gate_command());
    let timing = dr_timing();
    let w = places.spawn_watchdog(&[&witness], &timing, &[]).await;
    let sampler = places.sampler().await;

    places.ts.set(Fault::Blackhole).await;
    places.rts.set(Fault::Blackhole).await;
    guards[0].process.kill();
    places.gold.kill_member(leader);
    let new = places.gold.wait_for_leader(Duration::from_secs(90));
    assert_eq!(new, other);
    crate::support::wait_for(
        "the gate allowing the promotion",
        Duration::from_secs(15),
        async || places.gold.log(other).contains("gate: promotion allowed"),
    )
    .await;
    // The lock is held before pre_promote runs; PostgreSQL is promoted after.
    crate::support::wait_for("the new leader writable", Duration::from_secs(30), async || {
        places.gold.is_writable(other).await
    })
    .await;
    let st = guards[1].status().await;
    assert_eq!(st["fenced"], false, "{st:#}");
    places.ts.set(Fault::Forward).await;
    places.rts.set(Fault::Forward).await;
    w.wait_status_for(Duration::from_secs(60), "Gold up again", |s| s["verdict"] == "up")
        .await;
    places.assert_golddr_standby(&w).await;
    finish(sampler.stop().await);
    w.stop().await;
}

//! The operator's subcommands besides `run`: `check`, `status`, `promote`
//! and `failback`. Each prints one line per step and says by its exit code
//! whether it succeeded.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::Value;

use crate::act::promoter::Promoter;
use crate::app::{self, Cluster};
use crate::config::{Config, GoldAddress, GoldConcern, ServicePort};
use crate::decide::detector::Verdict;
use crate::decide::guards::{self, Decision, Facts, Limits, Veto};
use crate::decide::quorum::{self, Vote};
use crate::decide::state::{Audit, Written};
use crate::observe::patroni::Role;
use crate::observe::probe::{Outcome, PgProbe, Probe};
use crate::observe::target::{Endpoint, port_of};
use crate::observe::wal::Lsn;
use crate::observe::{signal, witness};

/// How a subcommand ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok,
    Failed,
}

fn line(ok: bool, what: &str, detail: impl AsRef<str>) -> bool {
    println!("{} {what}: {}", if ok { "ok  " } else { "FAIL" }, detail.as_ref());
    ok
}

fn namespace<G: GoldConcern>(config: &Config<G>, kube: Option<&kube::Client>) -> String {
    config
        .namespace
        .clone()
        .or_else(|| kube.map(|k| k.default_namespace().to_string()))
        .unwrap_or_else(|| "default".into())
}

/// Where Gold is right now, as `run` would find it.
async fn gold(config: &Config, kube: Option<&kube::Client>, ns: &str) -> Result<Endpoint, String> {
    let address = &config.gold.address;
    let host = address.host(ns);
    let (svc, port_name) = match address {
        GoldAddress::Static { port, .. }
        | GoldAddress::Service {
            port: ServicePort::Static(port),
            ..
        } => return Ok(Endpoint { host, port: *port }),
        GoldAddress::Service {
            name,
            port: ServicePort::Discovered { port_name },
            ..
        } => (name, port_name),
    };
    let Some(client) = kube else {
        return Err(format!(
            "the port of Service {ns}/{svc} is read from the Kubernetes API: run in a pod or set KUBECONFIG"
        ));
    };
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={svc}")))
        .await
        .map_err(|e| format!("cannot list Service {ns}/{svc}: {}", crate::error_chain(&e)))?;
    let service = list
        .items
        .first()
        .ok_or_else(|| format!("Service {ns}/{svc} not found"))?;
    let port = port_of(service, port_name.as_deref())?;
    Ok(Endpoint { host, port })
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

/// `check`: the settings are valid (or we would not be here), and every
/// party the watchdog talks to answers as it should.
pub async fn check(config: &Config, kube: Option<&kube::Client>) -> Exit {
    let ns = namespace(config, kube);
    let mut ok = line(true, "settings", "valid");
    let mut verdict = "not ready: no_promoter (this watchdog cannot promote)".to_string();
    let mut gold_wal = None;
    let target = gold(config, kube, &ns).await;
    match target.clone() {
        Err(e) => ok &= line(false, "gold target", e),
        Ok(endpoint) => {
            ok &= line(true, "gold target", endpoint.to_string());
            match PgProbe::new(config.gold.clone(), config.probe_timeout) {
                Err(e) => ok &= line(false, "gold probe", e.to_string()),
                Ok(probe) => {
                    let r = probe.probe(&endpoint).await;
                    gold_wal = r.wal;
                    let detail = format!(
                        "{} in {} ms{}",
                        r.outcome,
                        r.duration.as_millis(),
                        r.error.map(|e| format!(": {e}")).unwrap_or_default()
                    );
                    ok &= line(r.outcome == Outcome::Up, "gold probe", detail);
                }
            }
        }
    }
    match app::build_cluster(config, kube, &ns) {
        Err(e) => ok &= line(false, "promoter", crate::error_chain(&e)),
        Ok(None) => {
            line(
                true,
                "promoter",
                "none: this watchdog observes only and cannot promote from here",
            );
        }
        Ok(Some(Cluster {
            mut observer,
            promoter,
            ..
        })) => {
            let o = observer.observe().await;
            let limits = app::limits(config);
            verdict = match guards::readiness(&Facts::new(target.is_ok(), &o, &limits), &limits) {
                guards::Readiness::Ready => {
                    "ready to promote: a loss of Gold now would pass every guard".into()
                }
                guards::Readiness::AlreadyPromoted => {
                    format!("not ready: {} (no standby_cluster)", guards::ALREADY_PROMOTED)
                }
                guards::Readiness::Blocked(v) => format!(
                    "not ready: {}",
                    v.iter().map(Veto::describe).collect::<Vec<_>>().join(", ")
                ),
            };
            if config.uses_patroni() {
                ok &= line(
                    !matches!(o.role, Role::Unreachable(_)),
                    "local patroni",
                    match &o.role {
                        Role::Unreachable(e) => format!("unreachable at {}: {e}", config.patroni.url),
                        role => format!("{} at {}", role.as_str(), config.patroni.url),
                    },
                );
            }
            let switches: Vec<&str> = o.disarm_switches.iter().map(|s| s.into()).collect();
            ok &= match &o.config {
                Err(e) => line(false, "promoter", e),
                Ok(c) => {
                    let disarmed: Vec<&str> = c.disarmed_by.iter().map(|s| s.into()).collect();
                    line(
                        true,
                        "promoter",
                        format!(
                            "{} through {}: standby cluster {}, paused {}, disarmed {}{}",
                            config.promoter.as_str(),
                            promoter.object(),
                            yes_no(Some(c.standby)),
                            yes_no(Some(c.paused)),
                            yes_no(Some(c.disarmed())),
                            if disarmed.is_empty() {
                                String::new()
                            } else {
                                format!(" (by {})", disarmed.join(", "))
                            }
                        ),
                    )
                }
            };
            line(
                true,
                "disarm switch",
                format!(
                    "{}: {}",
                    switches.join(", "),
                    o.disarm_switches
                        .iter()
                        .map(|s| s.how())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            ok &= match &o.wal {
                Err(e) => line(false, "local postgresql", e),
                Ok(w) => {
                    let at = |l: Option<Lsn>| l.map_or("unknown".to_string(), |l| l.to_string());
                    let lag = |b: Option<Lsn>| match (gold_wal, b) {
                        (Some(g), Some(b)) => format!("{} bytes", g.0.saturating_sub(b.0)),
                        _ => "unknown".to_string(),
                    };
                    line(
                        true,
                        "rpo",
                        format!(
                            "Gold at {}, GoldDR received {} and replayed {}: lag {} (replay {}), newest data {}",
                            at(gold_wal),
                            at(w.received),
                            at(w.replayed),
                            lag(w.received),
                            lag(w.replayed),
                            w.wal.data_age.map_or("of unknown age".to_string(), |a| format!(
                                "{:.1} s old",
                                a.as_secs_f64()
                            ))
                        ),
                    );
                    line(
                        true,
                        "local postgresql",
                        format!("WAL receiver {}", w.receiver.as_deref().unwrap_or("not running")),
                    )
                }
            };
        }
    }
    ok &= check_others(config).await;
    // The verdict is the guards' over what was just gathered, as if Gold
    // were lost now; a replica's sidecar is rightly not ready, so it does
    // not decide the exit code.
    println!("{verdict}");
    if ok { Exit::Ok } else { Exit::Failed }
}

/// The lines about who else judges Gold: the mode, each signal, each
/// witness's vote and whether the quorum can be reached. Asked here, not
/// through the cluster observer, so a watchdog without a promoter checks
/// them too.
async fn check_others(config: &Config) -> bool {
    let q = &config.quorum;
    if q.single_observer() {
        line(
            true,
            "judging gold",
            "single observer: without witnesses this watchdog cannot tell a Transport Service outage \
             from the loss of Gold's site; list witnesses in WATCHDOG_WITNESSES",
        );
    } else {
        line(
            true,
            "judging gold",
            format!(
                "quorum: {} of {} witnesses must agree Gold's site is lost",
                q.needed,
                q.witnesses.len()
            ),
        );
    }
    let timeout = config.probe_timeout;
    let (Ok(signal_http), Ok(witness_http)) = (signal::http_client(timeout), witness::http_client(timeout))
    else {
        return line(false, "witness", "cannot build an HTTP client");
    };
    // A signal that is silent now is no failure: it only matters once Gold
    // is lost, and then silence is what we expect.
    for (signal, reading) in signal::check_all(&q.gold_signals, &signal_http, timeout).await {
        line(
            true,
            "gold signal",
            format!(
                "{signal}: {} ({})",
                if reading.alive() {
                    "answers, Gold's site is alive"
                } else {
                    "silent"
                },
                reading.detail()
            ),
        );
    }
    let ballots = futures::future::join_all(q.witnesses.iter().map(|w| {
        let http = &witness_http;
        async move { quorum::vote(w, &witness::ask(w, http, timeout).await, q.witness_max_age) }
    }))
    .await;
    let mut ok = true;
    let mut usable = 0;
    for b in &ballots {
        let gives_a_vote = matches!(b.vote, Vote::SiteLost | Vote::SeesGold | Vote::Undecided);
        usable += usize::from(gives_a_vote);
        ok &= line(
            gives_a_vote,
            "witness",
            format!("{}: {} ({})", b.witness, b.vote, b.detail),
        );
    }
    if !q.single_observer() {
        ok &= line(
            usable >= q.needed,
            "quorum",
            format!(
                "{usable} of {} witnesses answer, {} needed to promote",
                ballots.len(),
                q.needed
            ),
        );
    }
    ok
}

/// `status`: a running watchdog's `/status`, for a human (or raw JSON).
/// `url` may leave out `http://`.
pub async fn status(url: &str, json: bool) -> Exit {
    let base = url.trim_end_matches('/');
    let url = if base.contains("://") {
        format!("{base}/status")
    } else {
        format!("http://{base}/status")
    };
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return Exit::Failed;
        }
    };
    let body: Value = match client.get(&url).send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{url}: not a status document: {e}");
                return Exit::Failed;
            }
        },
        Err(e) => {
            eprintln!("{url}: {}", crate::error_chain(&e.without_url()));
            return Exit::Failed;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
    } else {
        print!("{}", describe_status(&body));
    }
    Exit::Ok
}

/// `/status` in words, one line per part.
fn describe_status(body: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    };
    // " (detail)" when there is one.
    let detail = |v: &Value| match v {
        Value::Null => String::new(),
        v => format!(" ({})", s(v)),
    };
    let mut out = String::new();
    let mut put = |label: &str, text: String| out.push_str(&format!("{label:<12} {text}\n"));

    put("state", s(&body["state"]));
    put(
        "gold",
        match &body["target"]["endpoint"] {
            Value::Null => format!("unknown ({})", s(&body["target"]["reason"])),
            e => format!(
                "{}:{} ({})",
                s(&e["host"]),
                s(&e["port"]),
                s(&body["target"]["source"])
            ),
        },
    );
    let since = match &body["verdict_since"] {
        Value::Null => String::new(),
        t => format!(" since {}", s(t)),
    };
    put(
        "verdict",
        format!(
            "{}{since} ({} consecutive failures)",
            s(&body["verdict"]),
            s(&body["consecutive_failures"])
        ),
    );
    let last = &body["last_probe"];
    put(
        "last probe",
        if last.is_null() {
            "none yet".into()
        } else {
            let error = match &last["error"] {
                Value::Null => String::new(),
                e => format!(": {}", s(e)),
            };
            format!(
                "{}/{} at {}{error}",
                s(&last["outcome"]),
                s(&last["reason"]),
                s(&last["at"])
            )
        },
    );

    let p = &body["promotion"];
    let promoter = s(&p["promoter"]);
    let cluster = &body["cluster"];
    if promoter != "none" {
        let role = &cluster["role"];
        let mut local = if role.is_null() {
            "not observed yet".to_string()
        } else {
            format!(
                "role {}{}, standby cluster {}, paused {}, disarmed {}, WAL receiver {}",
                s(&role["role"]),
                detail(&role["detail"]),
                s(&cluster["standby"]),
                s(&cluster["paused"]),
                s(&cluster["disarmed"]),
                match &cluster["wal_receiver"] {
                    Value::Null => "not running".into(),
                    w => s(w),
                }
            )
        };
        for key in ["config_error", "local_pg_error"] {
            if let Value::String(e) = &cluster[key] {
                local.push_str(&format!("; {e}"));
            }
        }
        put("local", local);
        if !cluster["standby_target"].is_null() {
            put("standby", describe_standby_target(&cluster["standby_target"]));
        }
    }
    let q = &body["quorum"];
    put("judging", s(&q["summary"]));
    for v in q["votes"].as_array().into_iter().flatten() {
        let age = match v["age_seconds"].as_f64() {
            Some(a) => format!(", {a:.1}s old"),
            None => String::new(),
        };
        put(
            "witness",
            format!(
                "{}: {} ({}{age})",
                s(&v["witness"]),
                s(&v["vote"]),
                s(&v["detail"])
            ),
        );
    }
    put(
        "promotion",
        match (&p["result"], promoter.as_str(), s(&p["mode"]).as_str()) {
            (Value::Null, "none", _) => {
                "this watchdog cannot promote from here: WATCHDOG_PROMOTER is none, it only watches".into()
            }
            (Value::Null, _, "observe") => {
                format!("observing only (WATCHDOG_MODE=observe): never promotes through {promoter}")
            }
            (Value::Null, _, "dry-run") => {
                format!("dry run: says what it would promote through {promoter}, writes nothing")
            }
            (Value::Null, _, _) => {
                format!("armed: promotes through {promoter} once Gold is lost and every guard agrees")
            }
            (result, _, _) => format!(
                "{} through {promoter} at {}{}",
                s(result),
                s(&p["at"]),
                detail(&p["reason"])
            ),
        },
    );
    let vetoes: Vec<String> = p["vetoes"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|v| format!("{}{}", s(&v["guard"]), detail(&v["detail"])))
                .collect()
        })
        .unwrap_or_default();
    if !vetoes.is_empty() {
        put("held back by", vetoes.join(", "));
    }
    if let Value::String(e) = &p["last_error"] {
        put("last error", e.clone());
    }
    let rpo = &body["rpo"];
    let bytes = |v: &Value| match v.as_u64() {
        Some(b) => format!("{b} bytes"),
        None => "unknown".into(),
    };
    put(
        "rpo",
        format!(
            "lag {} (replay {}) as of {}; newest data {}",
            bytes(&rpo["replication_lag_bytes"]),
            bytes(&rpo["replay_lag_bytes"]),
            s(&rpo["lag_at"]),
            match rpo["data_age_seconds"].as_f64() {
                Some(a) => format!("{a:.1} s old"),
                None => "of unknown age".into(),
            }
        ),
    );
    let r = &body["readiness"];
    let since = match &r["since"] {
        Value::Null => String::new(),
        t => format!(" since {}", s(t)),
    };
    let blockers: Vec<String> = r["blockers"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|b| format!("{}{}", s(&b["guard"]), detail(&b["detail"])))
                .collect()
        })
        .unwrap_or_default();
    put(
        "readiness",
        if r["ready"] == Value::Bool(true) {
            format!("ready to promote{since}")
        } else {
            format!("not ready{since}: {}", blockers.join(", "))
        },
    );
    if p["split_brain"] == Value::Bool(true) {
        put(
            "SPLIT BRAIN",
            "Gold answers as a writable primary after this site was promoted".into(),
        );
    }
    out
}

/// `/status`'s `cluster.standby_target` in words: whether GoldDR's
/// `standby_cluster` dials the Transport Service the watchdog probes.
fn describe_standby_target(t: &Value) -> String {
    let config = match (&t["config"]["host"], &t["config"]["port"]) {
        (Value::Null, Value::Null) => None,
        (host, port) => Some(format!(
            "{}:{}",
            host.as_str().unwrap_or("?"),
            port.as_str().map_or_else(|| port.to_string(), str::to_string)
        )),
    };
    let followed = match &t["why"] {
        Value::String(why) => format!("; not kept on the Transport Service: {why}"),
        _ => String::new(),
    };
    match (&t["mismatch"], config) {
        (Value::String(m), Some(c)) => {
            let held: Vec<&str> = t["held_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["reason"].as_str())
                .collect();
            let held = if held.is_empty() {
                String::new()
            } else {
                format!(" (held by {})", held.join(", "))
            };
            format!(
                "standby_cluster dials {c}, not the Transport Service at {}: {m}{held}{followed}",
                t["target"].as_str().unwrap_or("?")
            )
        }
        (_, Some(c)) if t["decision"] == "in_sync" => {
            format!("standby_cluster dials the Transport Service ({c}){followed}")
        }
        (_, Some(c)) => format!(
            "standby_cluster dials {c} ({}){followed}",
            t["decision"].as_str().unwrap_or("not compared yet")
        ),
        (_, None) => format!("no standby_cluster address{followed}"),
    }
}

/// The configured observer and promoter, or `None` after saying why not.
fn cluster<G: GoldConcern>(config: &Config<G>, kube: Option<&kube::Client>) -> Option<Cluster> {
    match app::build_cluster(config, kube, &namespace(config, kube)) {
        Ok(Some(c)) => Some(c),
        Ok(None) => {
            eprintln!("WATCHDOG_PROMOTER is none: set the promoter this site uses");
            None
        }
        Err(e) => {
            eprintln!("{}", crate::error_chain(&e));
            None
        }
    }
}

/// `promote --reason`: an operator's promotion, through the same guards
/// (Gold's verdict is the operator's call) unless `force`.
pub async fn promote<G: GoldConcern>(
    config: &Config<G>,
    kube: Option<&kube::Client>,
    reason: &str,
    force: bool,
) -> Exit {
    let Some(Cluster {
        mut observer,
        promoter,
        event_object,
    }) = cluster(config, kube)
    else {
        return Exit::Failed;
    };
    let reason = format!(
        "manual promotion by {}{}: {reason}",
        config.identity,
        if force { " (--force, guards skipped)" } else { "" }
    );
    if !force {
        let observation = observer.observe().await;
        // The operator is the third party: absent witness votes do not hold
        // a manual promotion back, a witness that sees Gold still does.
        let limits = Limits {
            quorum: 0,
            ..app::limits(config)
        };
        match guards::decide(&Facts::new(true, &observation, &limits), &limits) {
            Decision::Veto(v) => {
                line(
                    false,
                    "promote",
                    format!(
                        "vetoed by {}; nothing written (--force skips the guards)",
                        v.iter().map(Veto::describe).collect::<Vec<_>>().join(", ")
                    ),
                );
                return Exit::Failed;
            }
            Decision::AlreadyPromoted => {
                line(true, "promote", "already promoted: nothing written");
                return Exit::Ok;
            }
            Decision::Promote => {}
        }
    }
    let audit = Audit {
        at: SystemTime::now(),
        by: config.identity.clone(),
        reason: reason.clone(),
    };
    let (_lost, verdict) = tokio::sync::watch::channel(Verdict::Lost);
    let (ok, message) = match app::write(&promoter, audit, verdict).await {
        Written::Promoted(_) => (true, format!("promoted {}", promoter.object())),
        Written::AlreadyPromoted => (true, "already promoted: nothing written".to_string()),
        Written::CalledOff(why) => (false, format!("called off: {why}")),
        Written::Failed(e) => (false, format!("failed: {e}")),
    };
    if let (true, Some(client), Some(reference)) = (ok, kube, event_object) {
        let events = crate::report::events::Events::new(
            client.clone(),
            &config.identity,
            reference,
            None,
            prometheus_client::metrics::counter::Counter::default(),
        );
        events
            .publish(true, "PromotedStandbyCluster", "Promote", reason)
            .await;
    }
    line(ok, "promote", message);
    if ok { Exit::Ok } else { Exit::Failed }
}

/// `failback`: make this (promoted) site a standby of `host:port` again.
/// Asks for a typed confirmation unless `yes`.
pub async fn failback<G: GoldConcern>(
    config: &Config<G>,
    kube: Option<&kube::Client>,
    host: &str,
    port: u16,
    yes: bool,
) -> Exit {
    let Some(Cluster { promoter, .. }) = cluster(config, kube) else {
        return Exit::Failed;
    };
    let object = promoter.object();
    eprintln!(
        "\n  !!! FAILBACK !!!\n\n  This re-adds standby_cluster {{host: {host}, port: {port}}} to {object}.\n  \
         This site's primary is demoted to a standby leader replicating from {host}:{port}.\n  \
         Writes made here since the promotion that {host}:{port} does not have will be\n  \
         rewound or lost. Stop applications writing here first, and make sure\n  \
         {host}:{port} is the rebuilt primary site, up to date.\n"
    );
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!("refusing without --yes: stdin is not a terminal to confirm on");
            return Exit::Failed;
        }
        eprint!("  Type 'failback' to go on: ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        if std::io::stdin().lock().read_line(&mut answer).is_err() || answer.trim() != "failback" {
            eprintln!("not confirmed: nothing written");
            return Exit::Failed;
        }
    }
    match promoter.failback(host, port).await {
        Ok(()) => {
            line(
                true,
                "failback",
                format!(
                    "{object} is a standby of {host}:{port} again (at {}). Restart this sidecar to re-arm it",
                    humantime::format_rfc3339_seconds(SystemTime::now())
                ),
            );
            Exit::Ok
        }
        Err(e) => {
            line(false, "failback", format!("{e}; nothing written"));
            Exit::Failed
        }
    }
}

#[cfg(test)]
mod standby_target_tests {
    use serde_json::json;

    use super::describe_standby_target;

    #[test]
    fn the_standby_line_says_where_standby_cluster_dials() {
        let held = json!({
            "following": true, "why": null,
            "config": {"host": "patroni-master-gold", "port": 31234},
            "target": "patroni-master-gold.ns.svc:31999",
            "mismatch": "standby_cluster.port from 31234 to 31999",
            "decision": "hold", "held_by": [{"reason": "paused"}],
        });
        assert_eq!(
            describe_standby_target(&held),
            "standby_cluster dials patroni-master-gold:31234, not the Transport Service at \
             patroni-master-gold.ns.svc:31999: standby_cluster.port from 31234 to 31999 (held by paused)"
        );
        let in_sync = json!({
            "following": true, "why": null,
            "config": {"host": "patroni-master-gold", "port": "31999"},
            "target": "patroni-master-gold.ns.svc:31999",
            "mismatch": null, "decision": "in_sync", "held_by": [],
        });
        assert_eq!(
            describe_standby_target(&in_sync),
            "standby_cluster dials the Transport Service (patroni-master-gold:31999)"
        );
        let plain = json!({"following": false, "why": "a plain standby", "config": null, "mismatch": null});
        assert_eq!(
            describe_standby_target(&plain),
            "no standby_cluster address; not kept on the Transport Service: a plain standby"
        );
    }
}

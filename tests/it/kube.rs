//! The Kubernetes half: the Transport Service's port is discovered live and
//! Gold's loss promotes the DR cluster by patching exactly one key of
//! Patroni's config ConfigMap, once, and only when every guard agrees.
//!
//! Each contract test runs against the in-process API double and, when
//! `WATCHDOG_TEST_KUBECONFIG` is set, against a real cluster:
//! `WATCHDOG_TEST_KUBECONFIG=~/.kube/config cargo nextest run --test it -E 'test(/^kube::/)' --run-ignored all`.
//! Tests that need injected faults run against the double only.

use std::time::Duration;

use crate::support::app::{self, Running};
use crate::support::kube_env::{FakePatroni, KubeEnv, annotations, config_json, labels, unique};
use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use crate::support::proxy::FaultProxy;
use patroni_dr_watchdog::Config;

const STANDBY_CONFIG: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"max_connections":100,"wal_level":"logical"}},"standby_cluster":{"host":"patroni-master-gold","port":31234,"create_replica_methods":["basebackup_fast_xlog"]},"slots":{"patroni_golddr":{"type":"physical"}}}"#;
const PROMOTED_CONFIG: &str = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"max_connections":100,"wal_level":"logical"}},"slots":{"patroni_golddr":{"type":"physical"}}}"#;

macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn api_double() {
                super::$name(&super::KubeEnv::double().await).await
            }

            #[tokio::test(flavor = "multi_thread")]
            #[ignore = "needs a real cluster: set WATCHDOG_TEST_KUBECONFIG and pass --run-ignored"]
            async fn real_cluster() {
                if let Some(env) = super::KubeEnv::real(stringify!($name)).await {
                    super::$name(&env).await
                }
            }
        }
    )*};
}

contract!(
    discovers_the_port_and_follows_changes_live,
    a_deleted_or_portless_service_pauses_probing_and_never_promotes,
    promotion_removes_exactly_standby_cluster_and_nothing_else,
    an_already_promoted_cluster_is_not_written,
    a_malformed_config_is_reported_never_overwritten,
    a_replica_sidecar_never_writes,
    a_paused_cluster_is_not_promoted,
    without_a_quorum_an_event_says_so_and_nothing_is_written,
    a_disarmed_watchdog_observes_only_and_says_so,
    three_sidecars_write_exactly_once,
    the_guard_follows_the_reverse_ts_and_records_its_fence_as_an_event,
    the_standby_cluster_port_follows_a_moved_transport_service,
    a_replica_a_paused_a_disarmed_or_a_dry_run_sidecar_never_rewrites_standby_cluster,
    an_unknown_target_never_rewrites_standby_cluster,
);

struct Scene {
    service: String,
    configmap: String,
    patroni: FakePatroni,
    /// The GoldDR PostgreSQL beside the sidecar: a standby.
    local: PgServer,
}

impl Scene {
    async fn new(env: &KubeEnv, gold_port: u16, role: &str) -> Scene {
        let scene = Scene {
            service: unique("patroni-master-gold"),
            configmap: unique("patroni-config"),
            patroni: FakePatroni::start(role).await,
            local: local_standby(),
        };
        env.create_service(&scene.service, &[(Some("postgres"), gold_port)])
            .await;
        scene
    }

    fn config(&self, env: &KubeEnv, extra: &[(&str, &str)]) -> Config {
        let namespace = env.namespace().to_string();
        let local_port = self.local.port().to_string();
        app::config_from(
            &[
                ("WATCHDOG_TS_SERVICE", self.service.as_str()),
                ("WATCHDOG_TS_PORT_NAME", "postgres"),
                // Never let a test resolve a cluster DNS name.
                ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
                ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
                ("WATCHDOG_GOLD_SSLMODE", "disable"),
                ("WATCHDOG_NAMESPACE", namespace.as_str()),
                ("WATCHDOG_PROMOTER", "configmap"),
                ("WATCHDOG_PATRONI_CONFIGMAP", self.configmap.as_str()),
                ("WATCHDOG_PATRONI_URL", self.patroni.url.as_str()),
                ("WATCHDOG_PROBE_INTERVAL", "200ms"),
                ("WATCHDOG_PROBE_TIMEOUT", "150ms"),
                ("WATCHDOG_FALL", "2"),
                ("WATCHDOG_RISE", "2"),
                ("WATCHDOG_PROMOTE_AFTER", "3"),
                ("WATCHDOG_LISTEN_ADDR", "127.0.0.1:0"),
                ("WATCHDOG_LOCAL_PG_PORT", local_port.as_str()),
                // This standby has no upstream, so the age of its data is
                // unknown; the stale-data guard is shown end to end elsewhere.
                ("WATCHDOG_ALLOW_STALE_PROMOTION", "true"),
                // These configs name a fixed port the Service does not
                // have; following it is shown by the tests that turn it on.
                ("WATCHDOG_FOLLOW_TS", "false"),
                ("HOSTNAME", "patroni-0"),
            ],
            extra,
        )
    }

    async fn spawn(&self, env: &KubeEnv, extra: &[(&str, &str)]) -> Running {
        app::spawn_with(self.config(env, extra), Some(env.client())).await
    }
}

/// Successful updates of the ConfigMap (the tests themselves only create
/// and delete it).
fn updates(d: &crate::support::kube_api::ApiDouble, configmap: &str) -> usize {
    d.requests()
        .iter()
        .filter(|r| matches!(r.method.as_str(), "PATCH" | "PUT") && r.path.ends_with(configmap))
        .filter(|r| (200..300).contains(&r.status))
        .count()
}

/// The HTTP status of every PATCH of the ConfigMap, in order.
fn patch_statuses(d: &crate::support::kube_api::ApiDouble, configmap: &str) -> Vec<u16> {
    d.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(configmap))
        .map(|r| r.status)
        .collect()
}

fn local_standby() -> PgServer {
    PgServer::start(PgOptions {
        standby: true,
        ..Default::default()
    })
}

/// A loopback port nobody listens on: Gold is dead.
fn dead_port() -> u16 {
    crate::support::closed_port().port()
}

/// Gold lost and a guard holding the promotion back: the ConfigMap must not
/// change, however long it stays that way.
async fn assert_vetoed_and_unwritten(env: &KubeEnv, scene: &Scene, w: &Running, guard: &str) {
    let before = env.configmap(&scene.configmap).await;
    let st = w
        .wait_status(&format!("veto {guard}"), |s| {
            s["verdict"] == "lost"
                && s["promotion"]["vetoes"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|v| v["guard"] == guard))
        })
        .await;
    assert_eq!(st["promotion"]["result"], serde_json::Value::Null, "{st:#}");
    // Several more decisions while Gold stays lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        w.metric(&format!("patroni_dr_watchdog_vetoes_total{{guard=\"{guard}\"}}"))
            .await
            >= 2.0
    );
    let after = env.configmap(&scene.configmap).await;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "the ConfigMap was written"
    );
    assert_eq!(annotations(&after)["config"], STANDBY_CONFIG);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        0.0
    );
    if let Some(d) = env.api_double() {
        assert_eq!(updates(d, &scene.configmap), 0);
    }
}

async fn discovers_the_port_and_follows_changes_live(env: &KubeEnv) {
    let gold = PgServer::start(PgOptions::default());
    let other_route = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(env, gold.port(), "replica").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    let w = scene.spawn(env, &[]).await;

    let st = w
        .wait_status("up on the discovered port", |s| s["verdict"] == "up")
        .await;
    assert_eq!(st["target"]["endpoint"]["port"], gold.port());
    assert_eq!(st["target"]["source"], "service");

    // The claim is re-synced: the Transport Service gets a new port.
    env.set_service_port(&scene.service, other_route.port()).await;
    let st = w
        .wait_status("the new port", |s| {
            s["target"]["endpoint"]["port"] == other_route.port() && s["verdict"] == "up"
        })
        .await;
    assert_eq!(st["state"], "watching");
    assert!(other_route.accepted() > 0, "probes now go through the new port");
    let target = format!(
        "patroni_dr_watchdog_target_info{{host=\"127.0.0.1\",port=\"{}\",source=\"service\"}}",
        other_route.port()
    );
    assert_eq!(w.metric(&target).await, 1.0);
    assert!(w.metric("patroni_dr_watchdog_target_changes_total").await >= 2.0);
    w.stop().await;
}

async fn a_deleted_or_portless_service_pauses_probing_and_never_promotes(env: &KubeEnv) {
    let gold = PgServer::start(PgOptions::default());
    let scene = Scene::new(env, gold.port(), "standby_leader").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    let w = scene.spawn(env, &[]).await;
    w.wait_status("up", |s| s["verdict"] == "up").await;

    env.delete_service(&scene.service).await;
    let st = w
        .wait_status("target unknown", |s| s["state"] == "target_unknown")
        .await;
    assert!(
        st["target"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!(
                "Service {}/{} not found",
                env.namespace(),
                scene.service
            ))),
        "{st:#}"
    );
    assert_eq!(st["verdict"], "unknown");
    // Gold dies while we cannot tell where it is: nothing may happen.
    gold.stop();
    let probes = st["counters"]["probes"].as_u64();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = w.status().await;
    assert_eq!(
        st["counters"]["probes"].as_u64(),
        probes,
        "probing a guessed address"
    );
    assert_eq!(st["verdict"], "unknown");

    // Back, but without the named port: still unknown, and says why.
    env.create_service(&scene.service, &[(Some("metrics"), dead_port())])
        .await;
    let st = w
        .wait_status("port missing", |s| {
            s["target"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no port named \"postgres\""))
        })
        .await;
    assert_eq!(st["state"], "target_unknown");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.status().await["verdict"], "unknown");
    assert_eq!(
        annotations(&env.configmap(&scene.configmap).await)["config"],
        STANDBY_CONFIG
    );
    assert_eq!(
        w.metric("patroni_dr_watchdog_state{state=\"target_unknown\"}")
            .await,
        1.0
    );
    w.stop().await;
}

async fn promotion_removes_exactly_standby_cluster_and_nothing_else(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "standby_leader").await;
    let before = env
        .create_patroni_config(
            &scene.configmap,
            STANDBY_CONFIG,
            &[("example.com/owner", "dba-team")],
        )
        .await;
    let w = scene.spawn(env, &[]).await;
    let st = w.wait_status("promoted", |s| s["state"] == "promoted").await;
    assert_eq!(st["promotion"]["result"], "promoted");

    let after = env.configmap(&scene.configmap).await;
    let (a, b) = (annotations(&after), annotations(&before));
    assert_eq!(
        a["config"], PROMOTED_CONFIG,
        "exactly standby_cluster removed, every other byte kept"
    );
    for key in ["initialize", "history", "example.com/owner"] {
        assert_eq!(a[key], b[key], "annotation {key} changed");
    }
    assert_eq!(labels(&after), labels(&before));
    assert_eq!(after.data, before.data);
    assert_eq!(a["patroni-dr-watchdog/promoted-by"], "patroni-0");
    assert!(
        a["patroni-dr-watchdog/reason"].contains("consecutive failed probes"),
        "{a:?}"
    );
    assert!(a["patroni-dr-watchdog/reason"].contains("refused"), "{a:?}");
    assert!(a.contains_key("patroni-dr-watchdog/promoted-at"));
    let ours = [
        "config",
        "patroni-dr-watchdog/promoted-at",
        "patroni-dr-watchdog/promoted-by",
        "patroni-dr-watchdog/reason",
    ];
    let mut rest_after = a.clone();
    let mut rest_before = b.clone();
    for k in ours {
        rest_after.remove(k);
        rest_before.remove(k);
    }
    assert_eq!(rest_after, rest_before, "no other annotation touched");
    assert!(config_json(&after).get("standby_cluster").is_none());

    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        1.0
    );
    let reasons = wait_events(env, &scene.configmap, "PromotedStandbyCluster").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "PromotedStandbyCluster").count(),
        1
    );

    // Latched: Gold stays lost, the process never acts again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = env.configmap(&scene.configmap).await;
    assert_eq!(later.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
            .await,
        1.0
    );
    if let Some(d) = env.api_double() {
        assert_eq!(updates(d, &scene.configmap), 1);
    }
    // Promoted, the site is no longer "not ready" in a way to alert on:
    // DRNotReady keys on this blocker to stay silent until failback.
    w.wait_status("readiness: already promoted", |s| {
        s["readiness"]["blockers"][0]["guard"] == "already_promoted"
    })
    .await;
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotion_blockers{guard=\"already_promoted\"}")
            .await,
        1.0
    );
    assert_eq!(w.metric("patroni_dr_watchdog_promotion_ready").await, 0.0);
    w.stop().await;
}

async fn wait_events(env: &KubeEnv, object: &str, reason: &str) -> Vec<String> {
    for _ in 0..100 {
        let reasons = env.event_reasons(object).await;
        if reasons.iter().any(|r| r == reason) {
            return reasons;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no {reason} Event on {object}: {:?}",
        env.event_reasons(object).await
    );
}

async fn an_already_promoted_cluster_is_not_written(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "standby_leader").await;
    let before = env
        .create_patroni_config(&scene.configmap, PROMOTED_CONFIG, &[])
        .await;
    let w = scene.spawn(env, &[]).await;
    let st = w
        .wait_status("already promoted", |s| {
            s["promotion"]["result"] == "already_promoted"
        })
        .await;
    assert_eq!(st["state"], "promoted");
    let after = env.configmap(&scene.configmap).await;
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(
        w.metric("patroni_dr_watchdog_promotions_total{result=\"already_promoted\"}")
            .await,
        1.0
    );
    w.stop().await;
}

async fn a_malformed_config_is_reported_never_overwritten(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "standby_leader").await;
    let broken = r#"{"ttl":30,"standby_cluster":{"host":"patroni-master-gold","port":31234}"#;
    let before = env.create_patroni_config(&scene.configmap, broken, &[]).await;
    let w = scene.spawn(env, &[]).await;
    let st = w
        .wait_status("config error", |s| {
            s["verdict"] == "lost" && s["promotion"]["vetoes"].as_array().is_some_and(|v| !v.is_empty())
        })
        .await;
    let vetoes = st["promotion"]["vetoes"].to_string();
    assert!(
        vetoes.contains("config_unreadable") && vetoes.contains("not valid JSON"),
        "{st:#}"
    );
    assert!(
        vetoes.contains(&scene.configmap),
        "the error names the object: {vetoes}"
    );
    assert!(st["cluster"]["config_error"].as_str().is_some(), "{st:#}");
    wait_events(env, &scene.configmap, "PromotionVetoed").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = env.configmap(&scene.configmap).await;
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(annotations(&after)["config"], broken);
    // Still running and healthy.
    assert_eq!(w.get("/livez").await.0, 200);
    let probes = w.status().await["counters"]["probes"].as_u64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.status().await["counters"]["probes"].as_u64() > probes);
    w.stop().await;
}

async fn a_replica_sidecar_never_writes(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "replica").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    let w = scene.spawn(env, &[]).await;
    assert_vetoed_and_unwritten(env, &scene, &w, "not_standby_leader").await;
    w.stop().await;
}

async fn without_a_quorum_an_event_says_so_and_nothing_is_written(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "standby_leader").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    let witness = format!("http://{}", crate::support::closed_port());
    let w = scene.spawn(env, &[("WATCHDOG_WITNESSES", &witness)]).await;
    assert_vetoed_and_unwritten(env, &scene, &w, "no_quorum").await;
    wait_events(env, &scene.configmap, "NoQuorum").await;
    w.stop().await;
}

async fn a_paused_cluster_is_not_promoted(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "standby_leader").await;
    let paused = STANDBY_CONFIG.replacen("{\"ttl\":30", "{\"pause\":true,\"ttl\":30", 1);
    env.create_patroni_config(&scene.configmap, &paused, &[]).await;
    let w = scene.spawn(env, &[]).await;
    let before = env.configmap(&scene.configmap).await;
    let st = w
        .wait_status("paused veto", |s| {
            s["promotion"]["vetoes"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["guard"] == "paused"))
        })
        .await;
    assert_eq!(st["cluster"]["paused"], true, "{st:#}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = env.configmap(&scene.configmap).await;
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(w.metric("patroni_dr_watchdog_patroni_paused").await, 1.0);
    w.stop().await;
}

async fn a_disarmed_watchdog_observes_only_and_says_so(env: &KubeEnv) {
    let gold = PgServer::start(PgOptions::default());
    let scene = Scene::new(env, gold.port(), "standby_leader").await;
    env.create_patroni_config(
        &scene.configmap,
        STANDBY_CONFIG,
        &[("patroni-dr-watchdog/disarmed", "true")],
    )
    .await;
    let w = scene.spawn(env, &[]).await;
    // Visible before anything goes wrong.
    let st = w
        .wait_status("disarmed shown", |s| s["cluster"]["disarmed"] == true)
        .await;
    assert_eq!(st["cluster"]["role"]["role"], "standby_leader");
    assert_eq!(w.metric("patroni_dr_watchdog_disarmed").await, 1.0);

    gold.stop();
    assert_vetoed_and_unwritten(env, &scene, &w, "disarmed").await;

    // Re-armed without a restart: the next decision promotes.
    env.annotate(&scene.configmap, "patroni-dr-watchdog/disarmed", "false")
        .await;
    w.wait_status("promoted after re-arming", |s| {
        s["promotion"]["result"] == "promoted"
    })
    .await;
    assert_eq!(
        annotations(&env.configmap(&scene.configmap).await)["config"],
        PROMOTED_CONFIG
    );
    w.stop().await;
}

async fn three_sidecars_write_exactly_once(env: &KubeEnv) {
    let scene = Scene::new(env, dead_port(), "replica").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    let leader_patroni = FakePatroni::start("standby_leader").await;
    let other_replica = FakePatroni::start("replica").await;
    let replica_a = scene.spawn(env, &[("HOSTNAME", "patroni-1")]).await;
    let replica_b = scene
        .spawn(
            env,
            &[
                ("HOSTNAME", "patroni-2"),
                ("WATCHDOG_PATRONI_URL", other_replica.url.as_str()),
            ],
        )
        .await;
    let leader = scene
        .spawn(
            env,
            &[
                ("HOSTNAME", "patroni-0"),
                ("WATCHDOG_PATRONI_URL", leader_patroni.url.as_str()),
            ],
        )
        .await;
    leader
        .wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    for replica in [&replica_a, &replica_b] {
        replica
            .wait_status("replica decided", |s| {
                s["promotion"]["result"] == "already_promoted"
                    || s["promotion"]["vetoes"].as_array().is_some_and(|v| !v.is_empty())
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cm = env.configmap(&scene.configmap).await;
    assert_eq!(annotations(&cm)["patroni-dr-watchdog/promoted-by"], "patroni-0");
    for replica in [&replica_a, &replica_b] {
        assert_eq!(
            replica
                .metric("patroni_dr_watchdog_promotions_total{result=\"promoted\"}")
                .await,
            0.0
        );
    }
    if let Some(d) = env.api_double() {
        assert_eq!(updates(d, &scene.configmap), 1);
    }
    for w in [replica_a, replica_b, leader] {
        w.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_writer_causes_a_conflict_the_promotion_retries_and_keeps_its_change() {
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let scene = Scene::new(&env, dead_port(), "standby_leader").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    // Patroni (say) rewrites the config between our read and our write.
    let concurrent = STANDBY_CONFIG.replace("\"loop_wait\":10", "\"loop_wait\":5");
    let injected = concurrent.clone();
    d.before_next_write("configmaps", "default", &scene.configmap, move |obj| {
        if let Some(obj) = obj {
            obj["metadata"]["annotations"]["config"] = serde_json::Value::String(injected);
        }
    });
    let w = scene.spawn(&env, &[]).await;
    w.wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    let cm = env.configmap(&scene.configmap).await;
    let expected = PROMOTED_CONFIG.replace("\"loop_wait\":10", "\"loop_wait\":5");
    assert_eq!(
        annotations(&cm)["config"],
        expected,
        "the concurrent change survives"
    );
    let patches = patch_statuses(d, &scene.configmap);
    assert_eq!(patches, [409, 200], "one conflict, one retry");
    assert_eq!(updates(d, &scene.configmap), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_during_promotion_are_retried_until_the_api_is_back() {
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let scene = Scene::new(&env, dead_port(), "standby_leader").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    d.fail_next("PATCH", &scene.configmap, 3, 503);
    let w = scene.spawn(&env, &[]).await;
    w.wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    let patches = patch_statuses(d, &scene.configmap);
    assert_eq!(patches, [503, 503, 503, 200]);
    assert_eq!(
        annotations(&env.configmap(&scene.configmap).await)["config"],
        PROMOTED_CONFIG
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_configmap_is_reported_and_the_watchdog_keeps_running() {
    let env = KubeEnv::double().await;
    let scene = Scene::new(&env, dead_port(), "standby_leader").await;
    let w = scene.spawn(&env, &[]).await;
    let st = w
        .wait_status("config_unreadable veto", |s| {
            s["promotion"]["vetoes"].to_string().contains("not found")
        })
        .await;
    assert!(
        st["promotion"]["vetoes"]
            .to_string()
            .contains("WATCHDOG_PATRONI_CONFIGMAP"),
        "{st:#}"
    );
    assert_eq!(w.get("/livez").await.0, 200);
    assert_eq!(w.get("/readyz").await.0, 200);
    w.stop().await;
}

/// Maps a recorded request to the RBAC terms it needs:
/// (API group, resource, object name if any, verb).
fn rbac_terms(r: &crate::support::kube_api::RecordedRequest) -> (String, String, Option<String>, String) {
    let parts: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => panic!("unexpected path {}", r.path),
    };
    let (resource, name) = match rest {
        ["namespaces", _, resource] => (resource.to_string(), None),
        ["namespaces", _, resource, name] => (resource.to_string(), Some(name.to_string())),
        _ => panic!("not a namespaced request: {}", r.path),
    };
    let selected = r
        .query_param("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name=").map(str::to_string));
    let verb = match (r.method.as_str(), &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if r.watch => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("PUT", _) => "update",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, name.or(selected), verb.to_string())
}

/// A Role's rules from an RBAC manifest: `[apiGroups, resources,
/// resourceNames, verbs]` each.
fn role_rules(path: &str) -> Vec<[Vec<String>; 4]> {
    let manifest = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&manifest).expect("RBAC manifest is YAML");
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    assert!(
        !docs.iter().any(|d| d["kind"] == "ClusterRole"),
        "nothing cluster-wide"
    );
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            [
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["resourceNames"]),
                strings(&r["verbs"]),
            ]
        })
        .collect()
}

/// Asserts the Role allows every recorded request; returns the (resource,
/// verb) pairs used.
fn assert_allowed(
    rules: &[[Vec<String>; 4]],
    requests: &[crate::support::kube_api::RecordedRequest],
    manifest: &str,
) -> std::collections::BTreeSet<(String, String)> {
    let mut used = std::collections::BTreeSet::new();
    for r in requests {
        let (group, resource, name, verb) = rbac_terms(r);
        let allowed = rules.iter().any(|[groups, resources, names, verbs]| {
            groups.contains(&group)
                && resources.contains(&resource)
                && verbs.contains(&verb)
                && (names.is_empty() || name.as_ref().is_some_and(|n| names.contains(n)))
        });
        assert!(
            allowed,
            "{} {}?{} needs {verb} on {group}/{resource} {name:?}, which {manifest} does not grant",
            r.method, r.path, r.query
        );
        used.insert((resource, verb));
    }
    used
}

#[tokio::test(flavor = "multi_thread")]
async fn every_api_call_is_allowed_by_the_rbac_manifest_and_every_rule_is_used() {
    let rules = role_rules(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/rbac.yaml"));

    // The manifest's own object names.
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let patroni = FakePatroni::start("standby_leader").await;
    let scene = Scene {
        service: "patroni-master-gold".into(),
        configmap: "patroni-config".into(),
        patroni,
        local: local_standby(),
    };
    // Every write it makes: standby_cluster follows the Transport Service
    // (its port is not 31234), then Gold dies and GoldDR is promoted.
    let gold = PgServer::start(PgOptions::default());
    env.create_service(&scene.service, &[(Some("postgres"), gold.port())])
        .await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    d.clear_requests();
    let w = scene.spawn(&env, &[("WATCHDOG_FOLLOW_TS", "true")]).await;
    w.wait_status("standby_cluster fixed", |s| {
        s["cluster"]["standby_target"]["last"]["result"] == "fixed"
    })
    .await;
    gold.stop();
    w.wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    for _ in 0..100 {
        if d.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("events"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;

    let used = assert_allowed(&rules, &d.requests(), "rbac.yaml");
    for [_, resources, _, verbs] in &rules {
        for resource in resources {
            for verb in verbs {
                // Patching an Event only happens when the same Event repeats.
                if (resource.as_str(), verb.as_str()) == ("events", "patch") {
                    continue;
                }
                assert!(
                    used.contains(&(resource.clone(), verb.clone())),
                    "rbac.yaml grants {verb} on {resource}, which the watchdog never used: {used:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_is_reported_the_moment_it_is_made_not_a_tick_later() {
    let env = KubeEnv::double().await;
    let scene = Scene::new(&env, dead_port(), "standby_leader").await;
    env.create_patroni_config(&scene.configmap, STANDBY_CONFIG, &[])
        .await;
    // One failed probe loses Gold; the next tick would come 4 s later.
    let started = std::time::Instant::now();
    let w = scene
        .spawn(
            &env,
            &[
                ("WATCHDOG_PROBE_INTERVAL", "4s"),
                ("WATCHDOG_PROBE_TIMEOUT", "1s"),
                ("WATCHDOG_FALL", "1"),
                ("WATCHDOG_PROMOTE_AFTER", "1"),
            ],
        )
        .await;
    let st = w
        .wait_status("promoted", |s| s["promotion"]["result"] == "promoted")
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "reported {:?} after start, with the second tick due at 4 s",
        started.elapsed()
    );
    assert_eq!(st["state"], "promoted");
    assert_eq!(st["counters"]["probes"], 1);
    w.stop().await;
}

/// Log lines written while a test's own subscriber is the default (on this
/// thread: run the code under test on a current-thread runtime, not spawned
/// elsewhere).
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Lines;
    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

impl Lines {
    fn capture() -> (Lines, tracing::subscriber::DefaultGuard) {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false)
            .with_env_filter("warn,patroni_dr_watchdog=info")
            .finish();
        (lines, tracing::subscriber::set_default(subscriber))
    }

    fn matching(&self, what: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer"))
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn discovery_logs_an_api_outage_once_and_its_end_once() {
    use patroni_dr_watchdog::observe::target::{self, Discovery, Target};
    let (lines, _guard) = Lines::capture();
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    env.create_service("patroni-master-gold", &[(Some("postgres"), 31234)])
        .await;
    // Three rounds of 503 on the LIST, then the API answers.
    d.fail_next("GET", "/services", 3, 503);
    let errors = prometheus_client::metrics::counter::Counter::default();
    let (tx, mut rx) = tokio::sync::watch::channel(Target::Unknown {
        reason: "looking".into(),
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let discovery = Discovery {
        api: env.services(),
        service: "patroni-master-gold".into(),
        port_name: Some("postgres".into()),
        host: "127.0.0.1".into(),
        server: Some(d.url()),
        errors: errors.clone(),
    };
    let found = async {
        let known = rx.wait_for(|t| matches!(t, Target::Known { .. }));
        tokio::time::timeout(Duration::from_secs(30), known)
            .await
            .expect("the port is found once the API answers")
            .expect("discovery runs");
        shutdown.cancel();
    };
    tokio::join!(target::discover(discovery, tx, shutdown.clone()), found);

    assert_eq!(errors.get(), 3, "every failed round is counted");
    let failing = lines.matching("cannot watch the Transport Service");
    assert_eq!(failing.len(), 1, "{failing:#?}");
    assert!(failing[0].contains("WARN"), "{}", failing[0]);
    assert!(
        failing[0].contains("HTTP 503 ServiceUnavailable") && failing[0].contains(&d.url()),
        "{}",
        failing[0]
    );
    let back = lines.matching("the Kubernetes API answers again");
    assert_eq!(back.len(), 1, "{back:#?}");
    assert!(back[0].contains("failures=3"), "{}", back[0]);
}

#[tokio::test]
async fn events_log_a_failing_api_once_and_its_recovery_once() {
    use patroni_dr_watchdog::report::events::Events;
    let (lines, _guard) = Lines::capture();
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let cm = env
        .create_patroni_config("patroni-config", STANDBY_CONFIG, &[])
        .await;
    let reference = kube::Resource::object_ref(&cm, &());
    let failures = prometheus_client::metrics::counter::Counter::default();
    let events = Events::new(
        env.client(),
        "patroni-0",
        reference,
        Some(d.url()),
        failures.clone(),
    );
    d.fail_next("POST", "/events", 3, 500);
    for reason in [
        "GoldDown",
        "GoldLost",
        "PromotionVetoed",
        "PromotedStandbyCluster",
    ] {
        events
            .publish(true, reason, "Promote", format!("{reason} happened"))
            .await;
    }
    assert_eq!(failures.get(), 3);
    assert_eq!(
        env.event_reasons("patroni-config").await,
        ["PromotedStandbyCluster"]
    );
    let failing = lines.matching("cannot record Kubernetes Events");
    assert_eq!(failing.len(), 1, "{failing:#?}");
    assert!(
        failing[0].contains("publish Event on ConfigMap default/patroni-config")
            && failing[0].contains("HTTP 500 InternalError")
            && failing[0].contains(&d.url()),
        "{}",
        failing[0]
    );
    let back = lines.matching("Kubernetes Events are recorded again");
    assert_eq!(back.len(), 1, "{back:#?}");
}

/// The guard at Gold finds GoldDR through the reverse Transport Service and
/// follows its port; when GoldDR answers as a writable primary it fences
/// Gold with the Service's current port and says so in an Event about its
/// own pod.
async fn the_guard_follows_the_reverse_ts_and_records_its_fence_as_an_event(env: &KubeEnv) {
    use patroni_dr_watchdog::config::GuardConfig;
    // GoldDR as a standby, then (the Service re-synced to another port) a
    // writable primary: promoted.
    let promoted = PgServer::start(PgOptions::default());
    let standby = PgServer::start(PgOptions {
        replica_of: Some(promoted.addr()),
        ..Default::default()
    });
    let service = unique("patroni-master-golddr");
    env.create_service(&service, &[(Some("postgres"), standby.port())])
        .await;
    let patroni = FakePatroni::with_config(
        "primary",
        serde_json::json!({"ttl": 30, "postgresql": {"use_pg_rewind": true}}),
    )
    .await;
    let identity = unique("gold-0");
    let vars = [
        ("WATCHDOG_GOLDDR_TS_SERVICE", service.as_str()),
        ("WATCHDOG_GOLDDR_TS_PORT_NAME", "postgres"),
        ("WATCHDOG_GOLDDR_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLDDR_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLDDR_SSLMODE", "disable"),
        ("WATCHDOG_NAMESPACE", env.namespace()),
        ("WATCHDOG_PATRONI_URL", patroni.url.as_str()),
        ("WATCHDOG_PROBE_INTERVAL", "200ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "150ms"),
        ("WATCHDOG_LISTEN_ADDR", "127.0.0.1:0"),
        ("HOSTNAME", identity.as_str()),
    ];
    let config = GuardConfig::load(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .expect("valid guard config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/status", listener.local_addr().expect("addr"));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let kube = patroni_dr_watchdog::app::Kube {
        client: env.client(),
        server: None,
    };
    let run = tokio::spawn(patroni_dr_watchdog::guard::run(
        config,
        Some(kube),
        listener,
        shutdown.clone(),
    ));
    let wait = async |what: &str, check: &dyn Fn(&serde_json::Value) -> bool| {
        let mut last = serde_json::Value::Null;
        for _ in 0..150 {
            if let Ok(r) = reqwest::get(&url).await {
                last = r.json().await.unwrap_or_default();
                if check(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("guard: no {what}; last status: {last:#}");
    };
    let st = wait("standby on the discovered port", &|s| {
        s["golddr"] == "standby" && s["target"]["source"] == "service"
    })
    .await;
    assert_eq!(st["target"]["endpoint"]["port"], standby.port(), "{st:#}");
    assert_eq!(st["fenced"], false, "{st:#}");
    assert!(patroni.config().get("standby_cluster").is_none());

    env.set_service_port(&service, promoted.port()).await;
    let st = wait("Gold fenced", &|s| s["fenced"] == true).await;
    assert_eq!(st["target"]["endpoint"]["port"], promoted.port(), "{st:#}");
    let config = patroni.config();
    assert_eq!(
        config["standby_cluster"],
        serde_json::json!({"host": "127.0.0.1", "port": promoted.port()}),
        "{config:#}"
    );
    assert_eq!(
        config["patroni_dr_watchdog"]["fence"]["reason"],
        "golddr_promoted"
    );
    assert_eq!(config["patroni_dr_watchdog"]["fence"]["by"], identity.as_str());
    assert_eq!(
        config["postgresql"]["use_pg_rewind"], true,
        "nothing else changed"
    );
    wait_events(env, &identity, "GoldFenced").await;
    shutdown.cancel();
    run.await.expect("guard task").expect("guard ran");
    if let Some(d) = env.api_double() {
        let manifest = "manifests/guard/rbac.yaml";
        let rules = role_rules(&format!("{}/{manifest}", env!("CARGO_MANIFEST_DIR")));
        // The guard's calls: not this test's own (it writes the Service
        // and reads the Events), and under the manifest's Service name.
        let requests: Vec<_> = d
            .requests()
            .into_iter()
            .filter(|r| {
                let tests_own = match r.method.as_str() {
                    "GET" => r.path.contains("/events"),
                    _ => r.path.contains("/services"),
                };
                !tests_own
            })
            .map(|mut r| {
                r.path = r.path.replace(&service, "patroni-master-golddr");
                r.query = r.query.replace(&service, "patroni-master-golddr");
                r
            })
            .collect();
        let used = assert_allowed(&rules, &requests, manifest);
        for want in [("services", "list"), ("services", "watch"), ("events", "create")] {
            assert!(
                used.contains(&(want.0.into(), want.1.into())),
                "{want:?} unused: {used:?}"
            );
        }
    }
}

/// `STANDBY_CONFIG` replicating from `host:port` instead.
fn standby_config(host: &str, port: u16) -> String {
    let text = STANDBY_CONFIG.replace(
        r#""host":"patroni-master-gold","port":31234"#,
        &format!(r#""host":"{host}","port":{port}"#),
    );
    assert_ne!(text, STANDBY_CONFIG);
    text
}

/// Every PATCH of the ConfigMap the double saw, whatever its answer.
fn configmap_patches(d: &crate::support::kube_api::ApiDouble, configmap: &str) -> usize {
    d.requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with(configmap))
        .count()
}

/// The claim is re-synced and the Transport Service moves to a new, working
/// port: `standby_cluster.port` follows, the host (the operator's spelling
/// of the Service's name) and every other byte stay, and the fix is
/// audited, recorded as an Event and counted, once.
async fn the_standby_cluster_port_follows_a_moved_transport_service(env: &KubeEnv) {
    crate::support::init_tracing();
    let gold = PgServer::start(PgOptions::default());
    let route_a = FaultProxy::start(gold.addr()).await;
    let route_b = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(env, route_a.port(), "standby_leader").await;
    let host = format!("{}.{}.svc.cluster.local", scene.service, env.namespace());
    let text = standby_config(&host, route_a.port());
    let before = env
        .create_patroni_config(&scene.configmap, &text, &[("example.com/owner", "dba-team")])
        .await;
    let w = scene.spawn(env, &[("WATCHDOG_FOLLOW_TS", "true")]).await;
    let st = w
        .wait_status("up and in sync", |s| {
            s["verdict"] == "up" && s["cluster"]["standby_target"]["decision"] == "in_sync"
        })
        .await;
    let t = &st["cluster"]["standby_target"];
    assert_eq!(t["following"], true, "{st:#}");
    assert_eq!(t["mismatch"], serde_json::Value::Null, "{st:#}");
    assert_eq!(t["config"]["host"], host.as_str(), "{st:#}");
    assert_eq!(t["config"]["port"], route_a.port(), "{st:#}");
    assert_eq!(w.metric("patroni_dr_watchdog_standby_target_mismatch").await, 0.0);

    // The claim is re-synced: the Service's port changes, the old one closes.
    env.set_service_port(&scene.service, route_b.port()).await;
    route_a.set(crate::support::proxy::Fault::Refuse).await;
    let st = w
        .wait_status("standby_cluster fixed", |s| {
            s["cluster"]["standby_target"]["last"]["result"] == "fixed"
                && s["cluster"]["standby_target"]["decision"] == "in_sync"
        })
        .await;
    assert_eq!(st["target"]["endpoint"]["port"], route_b.port(), "{st:#}");
    assert_eq!(st["verdict"], "up", "probing through the new port: {st:#}");
    let what = st["cluster"]["standby_target"]["last"]["what"].to_string();
    assert!(
        what.contains(&format!(
            "standby_cluster.port from {} to {}",
            route_a.port(),
            route_b.port()
        )) && what.contains(&scene.configmap),
        "{what}"
    );

    let after = env.configmap(&scene.configmap).await;
    let (a, b) = (annotations(&after), annotations(&before));
    assert_eq!(
        a["config"],
        text.replace(
            &format!(r#""port":{}"#, route_a.port()),
            &format!(r#""port":{}"#, route_b.port())
        ),
        "exactly the port's value changed, every other byte kept"
    );
    assert_eq!(config_json(&after)["standby_cluster"]["host"], host.as_str());
    assert_eq!(a["patroni-dr-watchdog/standby-target-fixed-by"], "patroni-0");
    assert!(a.contains_key("patroni-dr-watchdog/standby-target-fixed-at"));
    let reason = &a["patroni-dr-watchdog/standby-target-reason"];
    assert!(
        reason.contains(&format!("to {}", route_b.port()))
            && reason.contains(&format!("{}/{}", env.namespace(), scene.service)),
        "{reason}"
    );
    let ours = [
        "config",
        "patroni-dr-watchdog/standby-target-fixed-at",
        "patroni-dr-watchdog/standby-target-fixed-by",
        "patroni-dr-watchdog/standby-target-reason",
    ];
    let (mut rest_after, mut rest_before) = (a.clone(), b.clone());
    for k in ours {
        rest_after.remove(k);
        rest_before.remove(k);
    }
    assert_eq!(rest_after, rest_before, "no other annotation touched");
    assert_eq!(labels(&after), labels(&before));
    assert_eq!(after.data, before.data);

    wait_events(env, &scene.configmap, "StandbyTargetFixed").await;
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"fixed\"}")
            .await,
        1.0
    );
    assert_eq!(w.metric("patroni_dr_watchdog_standby_target_mismatch").await, 0.0);
    // Right now: nothing more is written.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = env.configmap(&scene.configmap).await;
    assert_eq!(later.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"fixed\"}")
            .await,
        1.0
    );
    if let Some(d) = env.api_double() {
        assert_eq!(updates(d, &scene.configmap), 1);
    }
    w.stop().await;
}

/// A sidecar that must not write `standby_cluster` sees the mismatch, shows
/// it and holds: the ConfigMap is never patched.
async fn assert_standby_target_held(
    env: &KubeEnv,
    configmap: &str,
    w: &Running,
    decision: &str,
    held_by: &str,
) {
    let before = env.configmap(configmap).await;
    let st = w
        .wait_status(&format!("standby target {decision} by {held_by}"), |s| {
            let t = &s["cluster"]["standby_target"];
            t["decision"] == decision
                && t["held_by"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|h| h["reason"] == held_by))
        })
        .await;
    let t = &st["cluster"]["standby_target"];
    assert!(
        t["mismatch"]
            .as_str()
            .is_some_and(|m| m.contains("standby_cluster.port")),
        "{st:#}"
    );
    assert_eq!(w.metric("patroni_dr_watchdog_standby_target_mismatch").await, 1.0);
    // Several more observations.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = env.configmap(configmap).await;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "{held_by}: the ConfigMap was written"
    );
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"fixed\"}")
            .await,
        0.0
    );
    if let Some(d) = env.api_double() {
        assert_eq!(configmap_patches(d, configmap), 0, "{held_by}: a PATCH was sent");
    }
}

async fn a_replica_a_paused_a_disarmed_or_a_dry_run_sidecar_never_rewrites_standby_cluster(env: &KubeEnv) {
    crate::support::init_tracing();
    let gold = PgServer::start(PgOptions::default());
    let route = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(env, route.port(), "replica").await;
    let leader = FakePatroni::start("standby_leader").await;
    // The Service moved while nobody could follow it: the config still
    // names the old port.
    let stale = standby_config(&scene.service, dead_port());
    let follow = ("WATCHDOG_FOLLOW_TS", "true");

    env.create_patroni_config(&scene.configmap, &stale, &[]).await;
    let w = scene.spawn(env, &[follow]).await;
    assert_standby_target_held(env, &scene.configmap, &w, "hold", "not_standby_leader").await;
    w.stop().await;

    let paused = unique("patroni-config");
    let text = stale.replacen("{\"ttl\":30", "{\"pause\":true,\"ttl\":30", 1);
    env.create_patroni_config(&paused, &text, &[]).await;
    let w = scene
        .spawn(
            env,
            &[
                follow,
                ("WATCHDOG_PATRONI_CONFIGMAP", &paused),
                ("WATCHDOG_PATRONI_URL", &leader.url),
            ],
        )
        .await;
    assert_standby_target_held(env, &paused, &w, "hold", "paused").await;
    w.stop().await;

    let disarmed = unique("patroni-config");
    env.create_patroni_config(&disarmed, &stale, &[("patroni-dr-watchdog/disarmed", "true")])
        .await;
    let w = scene
        .spawn(
            env,
            &[
                follow,
                ("WATCHDOG_PATRONI_CONFIGMAP", &disarmed),
                ("WATCHDOG_PATRONI_URL", &leader.url),
            ],
        )
        .await;
    assert_standby_target_held(env, &disarmed, &w, "hold", "disarmed").await;
    w.stop().await;

    // A dry run says once what it would write, and writes nothing.
    let dry = unique("patroni-config");
    env.create_patroni_config(&dry, &stale, &[]).await;
    let w = scene
        .spawn(
            env,
            &[
                follow,
                ("WATCHDOG_PATRONI_CONFIGMAP", &dry),
                ("WATCHDOG_PATRONI_URL", &leader.url),
                ("WATCHDOG_MODE", "dry-run"),
            ],
        )
        .await;
    assert_standby_target_held(env, &dry, &w, "dry_run", "dry_run").await;
    let st = w.status().await;
    let last = &st["cluster"]["standby_target"]["last"];
    assert_eq!(last["result"], "dry_run", "{st:#}");
    assert!(
        last["what"].as_str().is_some_and(|w| w.contains(&format!(
            "would set standby_cluster.port from {} to {}",
            dead_port_of(&stale),
            route.port()
        ))),
        "{st:#}"
    );
    let reasons = wait_events(env, &dry, "DryRunStandbyTarget").await;
    assert_eq!(reasons.iter().filter(|r| *r == "DryRunStandbyTarget").count(), 1);
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"dry_run\"}")
            .await,
        1.0,
        "said once"
    );
    w.stop().await;
    for cm in [&paused, &disarmed, &dry] {
        let _ = env.configmaps().delete(cm, &Default::default()).await;
    }
}

/// The port `standby_config` was given.
fn dead_port_of(text: &str) -> u16 {
    config_json_str(text)["standby_cluster"]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .expect("a port")
}

fn config_json_str(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("config is JSON")
}

/// No Service, or no such port: no target, so nothing to compare with and
/// nothing written, however the config differs from the last known port.
async fn an_unknown_target_never_rewrites_standby_cluster(env: &KubeEnv) {
    let gold = PgServer::start(PgOptions::default());
    let route = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(env, route.port(), "standby_leader").await;
    let text = standby_config(&scene.service, route.port());
    env.create_patroni_config(&scene.configmap, &text, &[]).await;
    let w = scene.spawn(env, &[("WATCHDOG_FOLLOW_TS", "true")]).await;
    w.wait_status("in sync", |s| {
        s["cluster"]["standby_target"]["decision"] == "in_sync"
    })
    .await;
    let before = env.configmap(&scene.configmap).await;

    env.delete_service(&scene.service).await;
    let st = w
        .wait_status("target unknown, nothing compared", |s| {
            s["state"] == "target_unknown" && s["cluster"]["standby_target"]["decision"] == "target_unknown"
        })
        .await;
    assert_eq!(
        st["cluster"]["standby_target"]["mismatch"],
        serde_json::Value::Null
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Back with another port under another name: still no target.
    env.create_service(&scene.service, &[(Some("metrics"), dead_port())])
        .await;
    w.wait_status("port missing", |s| {
        s["target"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no port named \"postgres\""))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let st = w.status().await;
    assert_eq!(
        st["cluster"]["standby_target"]["decision"], "target_unknown",
        "{st:#}"
    );
    let after = env.configmap(&scene.configmap).await;
    assert_eq!(before.metadata.resource_version, after.metadata.resource_version);
    assert_eq!(annotations(&after)["config"], text);
    assert_eq!(w.metric("patroni_dr_watchdog_standby_target_mismatch").await, 0.0);
    if let Some(d) = env.api_double() {
        assert_eq!(configmap_patches(d, &scene.configmap), 0);
    }
    w.stop().await;
}

/// The fix is one conditional patch: a writer that changes the config
/// between our read and our write causes a 409, and the retry keeps both
/// its change and ours.
#[tokio::test(flavor = "multi_thread")]
async fn a_concurrent_writer_causes_a_conflict_and_the_standby_target_fix_keeps_both_changes() {
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let gold = PgServer::start(PgOptions::default());
    let route = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(&env, route.port(), "standby_leader").await;
    let stale_port = dead_port();
    let text = standby_config(&scene.service, stale_port);
    env.create_patroni_config(&scene.configmap, &text, &[]).await;
    let concurrent = text.replace("\"loop_wait\":10", "\"loop_wait\":5");
    let injected = concurrent.clone();
    d.before_next_write("configmaps", "default", &scene.configmap, move |obj| {
        if let Some(obj) = obj {
            obj["metadata"]["annotations"]["config"] = serde_json::Value::String(injected);
        }
    });
    let w = scene.spawn(&env, &[("WATCHDOG_FOLLOW_TS", "true")]).await;
    w.wait_status("standby_cluster fixed", |s| {
        s["cluster"]["standby_target"]["last"]["result"] == "fixed"
    })
    .await;
    let cm = env.configmap(&scene.configmap).await;
    assert_eq!(
        annotations(&cm)["config"],
        concurrent.replace(
            &format!(r#""port":{stale_port}"#),
            &format!(r#""port":{}"#, route.port())
        ),
        "the concurrent change survives beside ours"
    );
    assert_eq!(
        patch_statuses(d, &scene.configmap),
        [409, 200],
        "one conflict, one retry"
    );
    w.stop().await;
}

/// A write the API refuses is said once, as a Warning Event, counted each
/// time, and tried again on every observation until it passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_standby_target_fix_is_said_once_and_tried_again() {
    let env = KubeEnv::double().await;
    let d = env.api_double().expect("double");
    let gold = PgServer::start(PgOptions::default());
    let route = FaultProxy::start(gold.addr()).await;
    let scene = Scene::new(&env, route.port(), "standby_leader").await;
    let text = standby_config(&scene.service, dead_port());
    env.create_patroni_config(&scene.configmap, &text, &[]).await;
    // RBAC without patch, say, for three rounds: not retried within a round.
    d.fail_next("PATCH", &scene.configmap, 3, 403);
    let w = scene.spawn(&env, &[("WATCHDOG_FOLLOW_TS", "true")]).await;
    let st = w
        .wait_status("a failed fix", |s| {
            s["cluster"]["standby_target"]["last"]["result"] == "failed"
        })
        .await;
    let error = st["cluster"]["standby_target"]["last"]["error"].to_string();
    assert!(
        error.contains("403") && error.contains(&scene.configmap),
        "{error}"
    );
    w.wait_status("fixed once the API allows it", |s| {
        s["cluster"]["standby_target"]["last"]["result"] == "fixed"
    })
    .await;
    assert_eq!(
        w.metric("patroni_dr_watchdog_standby_target_fixes_total{result=\"failed\"}")
            .await,
        3.0
    );
    assert_eq!(patch_statuses(d, &scene.configmap), [403, 403, 403, 200]);
    let reasons = wait_events(&env, &scene.configmap, "StandbyTargetFixed").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "StandbyTargetFixFailed").count(),
        1,
        "said once: {reasons:?}"
    );
    w.stop().await;
}

/// A DR watchdog with a configmap promoter (the API double), a fake local
/// Patroni, and a real local standby replicating from Gold through
/// `repl`, a fault proxy standing in for the tunnel's replication path.
struct Replicating {
    env: KubeEnv,
    gold: PgServer,
    repl: FaultProxy,
    scene: Scene,
}

impl Replicating {
    async fn start() -> Replicating {
        let env = KubeEnv::double().await;
        let gold = PgServer::start(PgOptions::default());
        gold.execute("CREATE TABLE rows (id serial, at timestamptz DEFAULT now())")
            .await;
        let repl = FaultProxy::start(gold.addr()).await;
        let local = PgServer::start(PgOptions {
            replica_of: Some(repl.addr()),
            ..Default::default()
        });
        let scene = Scene {
            service: unique("patroni-master-gold"),
            configmap: unique("patroni-config"),
            patroni: FakePatroni::start("standby_leader").await,
            local,
        };
        env.create_service(&scene.service, &[(Some("postgres"), gold.port())])
            .await;
        // standby_cluster on the Transport Service, as a ready DR site has it.
        let host = format!("{}.{}.svc.cluster.local", scene.service, env.namespace());
        env.create_patroni_config(&scene.configmap, &standby_config(&host, gold.port()), &[])
            .await;
        Replicating {
            env,
            gold,
            repl,
            scene,
        }
    }

    /// Commits on Gold every 200 ms until dropped, so GoldDR's newest data
    /// stays young while replication flows.
    fn writer(&self) -> tokio::task::JoinHandle<()> {
        let gold = self.gold.addr();
        tokio::spawn(async move {
            loop {
                if let Ok((client, conn)) = tokio_postgres::connect(
                    &format!(
                        "host=127.0.0.1 port={} user=postgres dbname=postgres",
                        gold.port()
                    ),
                    tokio_postgres::NoTls,
                )
                .await
                {
                    tokio::spawn(conn);
                    while client
                        .execute("INSERT INTO rows DEFAULT VALUES", &[])
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

fn blockers(s: &serde_json::Value) -> Vec<String> {
    s["readiness"]["blockers"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["guard"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Readiness, as `/status` and a scrape show it, for each blocker the issue
/// names: 1, then 0 with exactly that blocker, then 1 again once it is gone.
#[tokio::test(flavor = "multi_thread")]
async fn readiness_flips_to_each_blocker_and_back() {
    let r = Replicating::start().await;
    let witness = app::witness_of(r.gold.addr()).await;
    let witness_addr = witness
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("witness address");
    let to_witness = FaultProxy::start(witness_addr).await;
    let witnesses = format!("http://{}", to_witness.addr());
    let _writer = r.writer();
    let w = r
        .scene
        .spawn(
            &r.env,
            &[
                ("WATCHDOG_WITNESSES", &witnesses),
                ("WATCHDOG_ALLOW_STALE_PROMOTION", "false"),
                ("WATCHDOG_MAX_DATA_AGE", "4s"),
            ],
        )
        .await;
    let ready = async || {
        let st = w.wait_status("ready", |s| s["readiness"]["ready"] == true).await;
        assert!(st["readiness"]["since"].is_string(), "{st:#}");
        assert_eq!(w.metric("patroni_dr_watchdog_promotion_ready").await, 1.0);
    };
    let blocked = async |guard: &str| {
        let st = w
            .wait_status(&format!("not ready: {guard}"), |s| blockers(s) == [guard])
            .await;
        assert_eq!(st["readiness"]["ready"], false, "{st:#}");
        assert_eq!(w.metric("patroni_dr_watchdog_promotion_ready").await, 0.0);
        let series = format!("patroni_dr_watchdog_promotion_blockers{{guard=\"{guard}\"}}");
        assert_eq!(w.metric(&series).await, 1.0, "{series}");
        assert_eq!(
            w.metric("patroni_dr_watchdog_promotion_blockers{guard=\"target_unknown\"}")
                .await,
            0.0
        );
    };
    let config = async |text: &str| r.env.annotate(&r.scene.configmap, "config", text).await;
    ready().await;

    let host = format!("{}.{}.svc.cluster.local", r.scene.service, r.env.namespace());
    let standby = standby_config(&host, r.gold.port());
    let paused = standby.replacen("{\"ttl\":30", "{\"pause\":true,\"ttl\":30", 1);
    assert_ne!(paused, standby);
    config(&paused).await;
    blocked("paused").await;
    config(&standby).await;
    ready().await;

    r.env
        .annotate(&r.scene.configmap, "patroni-dr-watchdog/disarmed", "true")
        .await;
    blocked("disarmed").await;
    r.env
        .annotate(&r.scene.configmap, "patroni-dr-watchdog/disarmed", "false")
        .await;
    ready().await;

    r.scene.patroni.set_role("replica");
    blocked("not_standby_leader").await;
    r.scene.patroni.set_role("standby_leader");
    ready().await;

    r.scene.local.stop();
    blocked("local_pg_unreachable").await;
    r.scene.local.restart();
    ready().await;

    r.repl.set(crate::support::proxy::Fault::Blackhole).await;
    blocked("stale_data").await;
    // What DataAgeHigh compares, as scraped: the age past half the limit.
    let age = w.metric("patroni_dr_watchdog_data_age_seconds").await;
    let limit = w.metric("patroni_dr_watchdog_max_data_age_seconds").await;
    assert_eq!(limit, 4.0);
    assert!(age > limit / 2.0, "data age {age} s, limit {limit} s");
    r.repl.set(crate::support::proxy::Fault::Forward).await;
    ready().await;

    to_witness.set(crate::support::proxy::Fault::Refuse).await;
    blocked("no_quorum").await;
    to_witness.set(crate::support::proxy::Fault::Forward).await;
    ready().await;

    // Readiness only judges: the only writes are this test's own four.
    if let Some(d) = r.env.api_double() {
        assert_eq!(updates(d, &r.scene.configmap), 4);
    }
    w.stop().await;
    witness.stop().await;
}

/// Rows written on Gold while replication is blackholed show as lag in
/// bytes, which returns to about 0 once it flows; with Gold stopped the lag
/// series keep their value and their timestamp stops, never reset to 0.
#[tokio::test(flavor = "multi_thread")]
async fn replication_lag_grows_while_the_tunnel_is_cut_and_is_kept_when_gold_is_gone() {
    let r = Replicating::start().await;
    let w = r.scene.spawn(&r.env, &[]).await;
    let lag = |s: &serde_json::Value| s["rpo"]["replication_lag_bytes"].as_u64();
    w.wait_status("the lag known", |s| lag(s).is_some_and(|l| l < 65_536))
        .await;

    r.repl.set(crate::support::proxy::Fault::Blackhole).await;
    r.gold
        .execute("INSERT INTO rows SELECT FROM generate_series(1, 2000)")
        .await;
    let st = w
        .wait_status("the lag grown", |s| lag(s).is_some_and(|l| l > 50_000))
        .await;
    let scraped = w.metric("patroni_dr_watchdog_replication_lag_bytes").await;
    assert!(scraped > 50_000.0, "{scraped}");
    assert!(
        w.metric("patroni_dr_watchdog_replay_lag_bytes").await >= scraped,
        "replay is never ahead of receipt"
    );
    assert!(st["rpo"]["golddr_received"].is_string(), "{st:#}");

    r.repl.set(crate::support::proxy::Fault::Forward).await;
    w.wait_status_for(Duration::from_secs(60), "the lag back to about 0", |s| {
        lag(s).is_some_and(|l| l < 8192) && s["rpo"]["replay_lag_bytes"].as_u64().is_some_and(|l| l < 8192)
    })
    .await;

    // Gold gone: the probe reads no position; the lag keeps its value and
    // its time, while probes go on.
    let before = w.metric("patroni_dr_watchdog_replication_lag_bytes").await;
    r.gold.stop();
    w.wait_status("Gold down", |s| s["verdict"] == "down" || s["verdict"] == "lost")
        .await;
    let stamp = w
        .metric("patroni_dr_watchdog_replication_lag_timestamp_seconds")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.metric("patroni_dr_watchdog_replication_lag_bytes").await,
        before,
        "kept, not reset"
    );
    assert_eq!(
        w.metric("patroni_dr_watchdog_replication_lag_timestamp_seconds")
            .await,
        stamp,
        "the reading's time stands still"
    );
    assert!(
        w.metric("patroni_dr_watchdog_last_probe_timestamp_seconds").await > stamp + 1.0,
        "while probes go on"
    );
    w.stop().await;
}

/// A `standby_cluster` that does not point at the Transport Service (and is
/// not followed: WATCHDOG_FOLLOW_TS=false) blocks readiness, as scraped,
/// until it does.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_cluster_off_the_tunnel_blocks_readiness_until_it_points_at_it() {
    let env = KubeEnv::double().await;
    let gold = PgServer::start(PgOptions::default());
    let scene = Scene::new(&env, gold.port(), "standby_leader").await;
    let host = format!("{}.{}.svc.cluster.local", scene.service, env.namespace());
    env.create_patroni_config(&scene.configmap, &standby_config(&host, dead_port()), &[])
        .await;
    let w = scene.spawn(&env, &[("WATCHDOG_FOLLOW_TS", "false")]).await;
    let mismatch = |s: &serde_json::Value| blockers(s).iter().any(|b| b == "standby_target_mismatch");
    let st = w.wait_status("the mismatch blocking readiness", mismatch).await;
    assert_eq!(st["readiness"]["ready"], false, "{st:#}");
    let series = "patroni_dr_watchdog_promotion_blockers{guard=\"standby_target_mismatch\"}";
    assert_eq!(w.metric(series).await, 1.0);

    env.annotate(&scene.configmap, "config", &standby_config(&host, gold.port()))
        .await;
    w.wait_status("the blocker gone", |s| {
        !mismatch(s) && s["cluster"]["observed_at"].is_string()
    })
    .await;
    assert_eq!(w.metric(series).await, 0.0);
    w.stop().await;
}

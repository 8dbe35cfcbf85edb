//! No secret ever shows: every secret setting is set to a marker, the
//! release binary runs through a failed and then a real promotion (ConfigMap
//! promoter against the API double, Events recorded there, a webhook), and
//! every place an operator or a machine reads is searched for the markers.

use std::fs::File;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::Api;

use crate::support::kube_env::{FakePatroni, KubeEnv, unique};
use crate::support::pg::{PgOptions, PgServer, WATCHDOG_USER};
use crate::support::webhook::WebhookSink;

const BIN: &str = env!("CARGO_BIN_EXE_patroni-dr-watchdog");

const GOLD_PASSWORD: &str = "gold-pw-MARKER-7c1e";
const LOCAL_PG_PASSWORD: &str = "local-pw-MARKER-52ab";
const PATRONI_PASSWORD: &str = "patroni-pw-MARKER-9d04";
const WEBHOOK_TOKEN: &str = "hook-token-MARKER-e3f8";
const MARKERS: [&str; 4] = [GOLD_PASSWORD, LOCAL_PG_PASSWORD, PATRONI_PASSWORD, WEBHOOK_TOKEN];

const STANDBY_CONFIG: &str =
    r#"{"ttl":30,"loop_wait":10,"standby_cluster":{"host":"patroni-master-gold","port":31234}}"#;

fn assert_clean(place: &str, text: &str) {
    for marker in MARKERS {
        assert!(!text.contains(marker), "{marker} leaked into {place}:\n{text}");
    }
}

async fn get(http: &reqwest::Client, url: &str, accept: &str) -> String {
    http.get(url)
        .header("accept", accept)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_shows_anywhere_across_a_failed_and_a_real_promotion() {
    let env = KubeEnv::double().await;
    let double = env.api_double().expect("the API double");
    let configmap = unique("patroni-config");
    env.create_patroni_config(&configmap, STANDBY_CONFIG, &[]).await;
    let patroni = FakePatroni::start("standby_leader").await;
    let gold = PgServer::start(PgOptions {
        password: Some(GOLD_PASSWORD.into()),
        ..Default::default()
    });
    let local = PgServer::start(PgOptions {
        password: Some(LOCAL_PG_PASSWORD.into()),
        ..Default::default()
    });
    let sink = WebhookSink::start().await;
    let hook = sink.url.replace("t0ken", WEBHOOK_TOKEN);
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: double\n  cluster:\n    server: {}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: double\n    user: test\n    namespace: default\n\
             current-context: test\n",
            double.url()
        ),
    )
    .expect("write kubeconfig");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let (gold_port, local_port) = (gold.port().to_string(), local.port().to_string());
    let vars = [
        ("WATCHDOG_GOLD_HOST", "127.0.0.1"),
        ("WATCHDOG_GOLD_PORT", gold_port.as_str()),
        ("WATCHDOG_GOLD_USER", WATCHDOG_USER),
        ("WATCHDOG_GOLD_PASSWORD", GOLD_PASSWORD),
        ("WATCHDOG_GOLD_SSLMODE", "disable"),
        ("WATCHDOG_LOCAL_PG_HOST", "127.0.0.1"),
        ("WATCHDOG_LOCAL_PG_PORT", local_port.as_str()),
        ("WATCHDOG_LOCAL_PG_USER", WATCHDOG_USER),
        ("WATCHDOG_LOCAL_PG_PASSWORD", LOCAL_PG_PASSWORD),
        ("WATCHDOG_PROMOTER", "configmap"),
        ("WATCHDOG_PATRONI_CONFIGMAP", configmap.as_str()),
        ("WATCHDOG_NAMESPACE", "default"),
        ("WATCHDOG_PATRONI_URL", patroni.url.as_str()),
        ("WATCHDOG_PATRONI_USERNAME", "patroni"),
        ("WATCHDOG_PATRONI_PASSWORD", PATRONI_PASSWORD),
        ("WATCHDOG_WEBHOOK_URL", hook.as_str()),
        // The local server is a primary with no upstream: its data age is unknown.
        ("WATCHDOG_ALLOW_STALE_PROMOTION", "true"),
        ("WATCHDOG_PROBE_INTERVAL", "300ms"),
        ("WATCHDOG_PROBE_TIMEOUT", "250ms"),
        ("WATCHDOG_FALL", "2"),
        ("WATCHDOG_RISE", "2"),
        ("WATCHDOG_PROMOTE_AFTER", "3"),
        ("WATCHDOG_LOG_FORMAT", "json"),
        ("HOSTNAME", "patroni-0"),
    ];
    let (stdout, stderr) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let listen_addr = listen.to_string();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", &kubeconfig)
        .env("WATCHDOG_LISTEN_ADDR", &listen_addr)
        .envs(vars)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("stdout file"))
        .stderr(File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start the watchdog");

    let http = reqwest::Client::builder().no_proxy().build().expect("client");
    let base = format!("http://{listen}");
    let status = async || -> serde_json::Value {
        match http.get(format!("{base}/status")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    };
    crate::support::wait_for(
        "up, beside the standby leader",
        Duration::from_secs(30),
        async || {
            let s = status().await;
            s["verdict"] == "up" && s["cluster"]["role"]["role"] == "standby_leader"
        },
    )
    .await;

    // The first write is refused, for good: a failed promotion, reported.
    double.fail_next("PATCH", &configmap, 1, 403);
    gold.stop();
    crate::support::wait_for("a failed promotion", Duration::from_secs(30), async || {
        !status().await["promotion"]["last_error"].is_null()
    })
    .await;
    crate::support::wait_for("then the promotion", Duration::from_secs(30), async || {
        status().await["promotion"]["result"] == "promoted"
    })
    .await;
    crate::support::wait_for("webhook alerts", Duration::from_secs(30), async || {
        sink.any("promoted the DR standby cluster") && sink.any("promotion failed")
    })
    .await;

    let status_body = get(&http, &format!("{base}/status"), "application/json").await;
    assert!(status_body.contains("<redacted>"), "{status_body}");
    assert_clean("/status", &status_body);
    for accept in ["text/plain", "application/openmetrics-text;version=1.0.0"] {
        let metrics = get(&http, &format!("{base}/metrics"), accept).await;
        assert!(
            metrics.contains("promotions_total{result=\"failed\"} 1"),
            "{metrics}"
        );
        assert_clean("/metrics", &metrics);
    }
    let events: Api<Event> = Api::namespaced(env.client(), "default");
    let events = events.list(&Default::default()).await.expect("list events");
    let reasons: Vec<&str> = events.items.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert!(reasons.contains(&"PromotionFailed"), "{reasons:?}");
    assert!(reasons.contains(&"PromotedStandbyCluster"), "{reasons:?}");
    assert_clean(
        "Events",
        &serde_json::to_string(&events.items).expect("events as JSON"),
    );
    let messages = sink.messages();
    assert!(messages.len() >= 3, "{messages:?}");
    assert_clean("webhook texts", &messages.join("\n"));
    // The annotations the promotion wrote are an audit trail, read by people.
    let cm = env.configmap(&configmap).await;
    assert_clean(
        "the ConfigMap",
        &serde_json::to_string(&cm).expect("ConfigMap as JSON"),
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "{exit}");
    let logs = std::fs::read_to_string(&stderr).expect("stderr")
        + &std::fs::read_to_string(&stdout).expect("stdout");
    assert!(logs.contains("PromotedStandbyCluster"), "{logs}");
    assert!(logs.contains("PromotionFailed"), "{logs}");
    assert_clean("the logs", &logs);
}

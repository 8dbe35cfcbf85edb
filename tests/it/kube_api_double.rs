//! Self-tests of the in-process Kubernetes API double, driven by the real
//! kube client: the semantics the contract tests in `kube.rs` rely on.

use std::time::Duration;

use crate::support::kube_api::ApiDouble;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

fn status_of(err: &kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected kube::Error::Api, got {other}"),
    }
}

fn config_map(name: &str, config: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "pg"}, "annotations": {"config": config}},
        "data": {"k": "v"},
    }))
    .expect("config map")
}

fn service(name: &str, port: i32) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "pg", "port": port}]},
    }))
    .expect("service")
}

fn port_of(svc: &Service) -> i32 {
    svc.spec.as_ref().and_then(|s| s.ports.as_ref()).expect("ports")[0].port
}

fn rv(obj: &impl Resource) -> String {
    obj.meta().resource_version.clone().expect("resourceVersion")
}

fn set_port(port: i32) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"spec": {"ports": [{"name": "pg", "port": port}]}}))
}

#[tokio::test]
async fn configmap_get_create_and_conditional_merge_patch() {
    let double = ApiDouble::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());

    // 404 is a NotFound Status naming the object.
    let err = cms.get("pg-config").await.unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            404,
            "NotFound".into(),
            "configmaps \"pg-config\" not found".into()
        )
    );

    let created = cms
        .create(&PostParams::default(), &config_map("pg-config", "{\"a\":1}"))
        .await
        .unwrap();
    let rv1 = rv(&created);
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        cms.get("pg-config").await.unwrap().annotations()["config"],
        "{\"a\":1}"
    );

    let err = cms
        .create(&PostParams::default(), &config_map("pg-config", "{}"))
        .await
        .unwrap_err();
    assert_eq!(
        (status_of(&err).0, status_of(&err).1.as_str()),
        (409, "AlreadyExists")
    );
    let err = cms
        .create(&PostParams::default(), &config_map("Bad_Name", "{}"))
        .await
        .unwrap_err();
    assert_eq!((status_of(&err).0, status_of(&err).1.as_str()), (422, "Invalid"));

    // Someone else writes: our resourceVersion is stale now.
    let bumped = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"config": "{\"a\":2}"}}})),
        )
        .await
        .unwrap();
    assert_ne!(rv(&bumped), rv1);
    let stale = json!({"metadata": {"resourceVersion": rv1, "annotations": {"config": "x"}}});
    let err = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    let (code, reason, message) = status_of(&err);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");
    assert_eq!(
        cms.get("pg-config").await.unwrap().annotations()["config"],
        "{\"a\":2}"
    );

    // With the current one it applies, and only the patched key changes.
    let ok = json!({"metadata": {"resourceVersion": rv(&bumped), "annotations": {"config": "{\"a\":3}"}}});
    let patched = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Merge(&ok))
        .await
        .unwrap();
    assert_eq!(patched.annotations()["config"], "{\"a\":3}");
    assert_eq!(patched.labels()["app"], "pg");
    assert_eq!(patched.data.as_ref().unwrap()["k"], "v");

    // A patch that changes nothing keeps the resourceVersion.
    let same = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
    assert_eq!(rv(&same), rv(&patched));

    let err = cms
        .patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 404);

    // What the product never sends is refused, not guessed at.
    let err = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"k": "w"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 415);
    let err = cms
        .replace("pg-config", &PostParams::default(), &same)
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 405);

    cms.delete("pg-config", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_of(&cms.get("pg-config").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn services_need_ports_a_cluster_would_accept() {
    let double = ApiDouble::start().await;
    let svcs: Api<Service> = Api::default_namespaced(double.client());
    svcs.create(&PostParams::default(), &service("pg-primary", 5432))
        .await
        .unwrap();
    for bad in [0, 70000] {
        let err = svcs
            .create(&PostParams::default(), &service("other", bad))
            .await
            .unwrap_err();
        assert_eq!(status_of(&err).0, 422, "port {bad}");
    }
    let err = svcs
        .patch("pg-primary", &PatchParams::default(), &set_port(0))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 422);

    // A merge patch replaces the port list whole.
    let patched = svcs
        .patch("pg-primary", &PatchParams::default(), &set_port(6432))
        .await
        .unwrap();
    assert_eq!(port_of(&patched), 6432);
    assert_eq!(patched.spec.unwrap().ports.unwrap().len(), 1);
    svcs.delete("pg-primary", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_of(&svcs.get("pg-primary").await.unwrap_err()).0, 404);
}

type WatchItem = Result<watcher::Event<Service>, watcher::Error>;

fn spawn_watcher(
    api: Api<Service>,
    name: &str,
) -> (mpsc::UnboundedReceiver<WatchItem>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stream = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item).is_err() {
                break;
            }
        }
    });
    (rx, task)
}

/// Waits for an event matching `pred`; returns what came before it.
async fn expect_event(
    rx: &mut mpsc::UnboundedReceiver<WatchItem>,
    what: &str,
    pred: impl Fn(&watcher::Event<Service>) -> bool,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let item = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {seen:?}"))
            .expect("watcher stream ended");
        match item {
            Ok(ev) if pred(&ev) => return seen,
            Ok(ev) => seen.push(format!("{ev:?}").chars().take(80).collect()),
            Err(e) => seen.push(format!("error: {e}")),
        }
    }
}

fn applied_port(ev: &watcher::Event<Service>, port: i32) -> bool {
    matches!(ev, watcher::Event::Apply(s) | watcher::Event::InitApply(s) if port_of(s) == port)
}

#[tokio::test]
async fn watcher_follows_port_changes_and_deletes_and_survives_cut_watches() {
    let double = ApiDouble::start().await;
    let svcs: Api<Service> = Api::default_namespaced(double.client());
    let pp = PatchParams::default();
    svcs.create(&PostParams::default(), &service("pg-primary", 5432))
        .await
        .unwrap();
    svcs.create(&PostParams::default(), &service("other", 1111))
        .await
        .unwrap();
    let (mut rx, task) = spawn_watcher(svcs.clone(), "pg-primary");

    expect_event(&mut rx, "initial object", |ev| applied_port(ev, 5432)).await;
    expect_event(&mut rx, "init done", |ev| matches!(ev, watcher::Event::InitDone)).await;
    assert!(double.wait_for_watches(1, WAIT).await);

    // A port change arrives; the other Service is not selected.
    svcs.patch("other", &pp, &set_port(2222)).await.unwrap();
    svcs.patch("pg-primary", &pp, &set_port(5433)).await.unwrap();
    let seen = expect_event(&mut rx, "port 5433", |ev| applied_port(ev, 5433)).await;
    assert!(seen.is_empty(), "unexpected events: {seen:?}");

    // Cut the stream; a change made meanwhile is replayed on reconnect.
    double.cut_watches();
    svcs.patch("pg-primary", &pp, &set_port(5434)).await.unwrap();
    expect_event(&mut rx, "port 5434 after the cut", |ev| applied_port(ev, 5434)).await;
    assert!(double.wait_for_watches(1, WAIT).await);
    svcs.patch("pg-primary", &pp, &set_port(5435)).await.unwrap();
    expect_event(&mut rx, "port 5435", |ev| applied_port(ev, 5435)).await;

    svcs.delete("pg-primary", &DeleteParams::default()).await.unwrap();
    expect_event(
        &mut rx,
        "delete",
        |ev| matches!(ev, watcher::Event::Delete(s) if s.name_any() == "pg-primary"),
    )
    .await;

    // What kube's watcher sends, and what the double must understand: a LIST
    // by field selector, then WATCH from the list's resourceVersion.
    let reqs = double.requests();
    let list = reqs.iter().find(|r| r.method == "GET" && !r.watch).unwrap();
    assert_eq!(list.path, "/api/v1/namespaces/default/services");
    assert_eq!(
        list.query_param("fieldSelector").as_deref(),
        Some("metadata.name=pg-primary")
    );
    let watch = reqs.iter().find(|r| r.watch).unwrap();
    assert_eq!(
        watch.query_param("fieldSelector").as_deref(),
        Some("metadata.name=pg-primary")
    );
    assert!(watch.query_param("resourceVersion").is_some_and(|rv| rv != "0"));
    task.abort();
}

#[tokio::test]
async fn watcher_relists_after_410_gone() {
    let double = ApiDouble::start().await;
    let svcs: Api<Service> = Api::default_namespaced(double.client());
    svcs.create(&PostParams::default(), &service("pg-primary", 5432))
        .await
        .unwrap();
    let (mut rx, task) = spawn_watcher(svcs.clone(), "pg-primary");
    expect_event(&mut rx, "init done", |ev| matches!(ev, watcher::Event::InitDone)).await;
    assert!(double.wait_for_watches(1, WAIT).await);

    // The watcher's resourceVersion falls out of the retained history.
    svcs.create(&PostParams::default(), &service("unrelated", 1))
        .await
        .unwrap();
    double.compact_history();
    double.cut_watches();

    let seen = expect_event(&mut rx, "relist", |ev| applied_port(ev, 5432)).await;
    assert!(
        seen.iter().any(|s| s.contains("too old resource version")),
        "expected a 410 watch error before the relist, saw {seen:?}"
    );
    let lists = double
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.watch)
        .count();
    assert_eq!(lists, 2, "the watcher must relist after 410");
    task.abort();
}

#[tokio::test]
async fn injected_failures_and_delays_reach_the_caller() {
    let double = ApiDouble::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());
    cms.create(&PostParams::default(), &config_map("pg-config", "{}"))
        .await
        .unwrap();

    double.fail_next("", "/configmaps/pg-config", 2, 503);
    for _ in 0..2 {
        let err = cms.get("pg-config").await.unwrap_err();
        let (code, reason, _) = status_of(&err);
        assert_eq!((code, reason.as_str()), (503, "ServiceUnavailable"));
    }
    cms.get("pg-config").await.unwrap();

    // Only the PATCH fails, and it changes nothing.
    double.fail_next("PATCH", "/configmaps/pg-config", 1, 500);
    cms.get("pg-config").await.unwrap();
    let err = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status_of(&err).0, status_of(&err).1.as_str()),
        (500, "InternalError")
    );
    assert_eq!(cms.get("pg-config").await.unwrap().data.unwrap()["k"], "v");
    let statuses: Vec<u16> = double.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 503, 503, 200, 200, 500, 200]);

    double.set_delay(Duration::from_millis(300));
    let started = std::time::Instant::now();
    cms.get("pg-config").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_concurrent_write_makes_the_resource_version_precondition_fail() {
    let double = ApiDouble::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());
    cms.create(&PostParams::default(), &config_map("pg-config", "{\"mine\":0}"))
        .await
        .unwrap();
    let seen = cms.get("pg-config").await.unwrap();

    double.before_next_write("configmaps", "default", "pg-config", |obj| {
        let obj = obj.as_mut().expect("object exists");
        obj["metadata"]["annotations"]["config"] = json!("{\"theirs\":1}");
    });
    let ours = json!({"metadata": {"resourceVersion": rv(&seen), "annotations": {"config": "{\"mine\":1}"}}});
    let err = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Merge(&ours))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).1, "Conflict");
    let stored = cms.get("pg-config").await.unwrap();
    assert_eq!(stored.annotations()["config"], "{\"theirs\":1}");

    // The hook ran once: reading again and retrying succeeds.
    let ours =
        json!({"metadata": {"resourceVersion": rv(&stored), "annotations": {"config": "{\"mine\":1}"}}});
    cms.patch("pg-config", &PatchParams::default(), &Patch::Merge(&ours))
        .await
        .unwrap();
}

#[tokio::test]
async fn recorder_publishes_events_k8s_io_events_for_a_config_map() {
    let double = ApiDouble::start().await;
    let client = double.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = cms
        .create(&PostParams::default(), &config_map("pg-config", "{}"))
        .await
        .unwrap();
    let reference = cm.object_ref(&());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "patroni-dr-watchdog".into(),
            instance: Some("watchdog-0".into()),
        },
    );
    let event = Event {
        type_: EventType::Warning,
        reason: "PrimaryUnreachable".into(),
        note: Some("primary site did not answer".into()),
        action: "Probe".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();

    let events: Api<EventsV1Event> = Api::default_namespaced(client.clone());
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let ev = &list.items[0];
    assert_eq!(ev.note.as_deref(), Some("primary site did not answer"));
    assert_eq!(ev.reporting_controller.as_deref(), Some("patroni-dr-watchdog"));
    assert_eq!(ev.regarding.as_ref().unwrap().name.as_deref(), Some("pg-config"));
    assert_eq!(ev.regarding.as_ref().unwrap().kind.as_deref(), Some("ConfigMap"));

    // A repeat becomes a series, sent as a merge PATCH of the same Event.
    recorder.publish(&event, &reference).await.unwrap();
    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].series.as_ref().map(|s| s.count), Some(2));
    let writes: Vec<String> = double
        .requests()
        .into_iter()
        .filter(|r| {
            r.path
                .starts_with("/apis/events.k8s.io/v1/namespaces/default/events")
                && r.method != "GET"
        })
        .map(|r| r.method)
        .collect();
    assert_eq!(writes, ["POST", "PATCH"]);

    // events.k8s.io validation holds, e.g. the 1 kB note limit the
    // watchdog truncates its notes for.
    let too_long = Event {
        note: Some("x".repeat(1025)),
        reason: "Other".into(),
        ..event
    };
    let err = recorder.publish(&too_long, &reference).await.unwrap_err();
    assert_eq!(status_of(&err).0, 422);
}

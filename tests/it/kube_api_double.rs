//! Self-tests of the in-process Kubernetes API double, driven by the real kube client.

use std::time::Duration;

use crate::support::kube_api::ApiDouble;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Service};
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

fn status_of(err: &kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

fn config_map(name: &str, config: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "pg"}, "annotations": {"config": config}},
        "data": {"k": "v"},
    }))
    .expect("config map")
}

fn service(name: &str, port: i32) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "pg", "port": port}]},
    })
}

fn port_of(svc: &Service) -> i32 {
    svc.spec.as_ref().and_then(|s| s.ports.as_ref()).expect("ports")[0].port
}

fn rv(obj: &impl Resource) -> String {
    obj.meta().resource_version.clone().expect("resourceVersion")
}

#[tokio::test]
async fn configmap_crud_preconditions_and_error_statuses() {
    let double = ApiDouble::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());

    // 404 is a NotFound Status.
    let err = cms.get("pg-config").await.unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            404,
            "NotFound".into(),
            "configmaps \"pg-config\" not found".into()
        )
    );

    // create sets system fields; the returned object carries kind/apiVersion.
    let created = cms
        .create(&PostParams::default(), &config_map("pg-config", "{\"a\":1}"))
        .await
        .unwrap();
    let rv1 = rv(&created);
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    let raw = double.get_object("configmaps", "default", "pg-config").unwrap();
    assert_eq!(raw["kind"], "ConfigMap");
    assert_eq!(raw["apiVersion"], "v1");

    // create again: 409 AlreadyExists; create with a resourceVersion: 500.
    let err = cms
        .create(&PostParams::default(), &config_map("pg-config", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 409);
    assert_eq!(status_of(&err).1, "AlreadyExists");
    let err = cms.create(&PostParams::default(), &created).await.unwrap_err();
    assert_eq!(status_of(&err).0, 500);

    // Invalid name: 422 Invalid.
    let err = cms
        .create(&PostParams::default(), &config_map("Bad_Name", "{}"))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 422);
    assert_eq!(status_of(&err).1, "Invalid");

    // Someone else writes: our copy is stale now.
    let bumped = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"config": "{\"a\":2}"}}})),
        )
        .await
        .unwrap();
    assert_ne!(rv(&bumped), rv1);

    // PUT with the stale resourceVersion: 409 Conflict.
    let err = cms
        .replace("pg-config", &PostParams::default(), &created)
        .await
        .unwrap_err();
    let (code, reason, message) = status_of(&err);
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(message.contains("the object has been modified"), "{message}");

    // Merge patch with a stale metadata.resourceVersion: 409 Conflict.
    let stale = json!({"metadata": {"resourceVersion": rv1, "annotations": {"config": "x"}}});
    let err = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 409);
    assert_eq!(status_of(&err).1, "Conflict");

    // ... and with the current one it applies.
    let current = rv(&bumped);
    let ok = json!({"metadata": {"resourceVersion": current, "annotations": {"config": "{\"a\":3}"}}});
    let patched = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Merge(&ok))
        .await
        .unwrap();
    assert_eq!(patched.annotations()["config"], "{\"a\":3}");

    // A no-op patch changes nothing, not even the resourceVersion.
    let before = double.resource_version();
    let same = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .unwrap();
    assert_eq!(rv(&same), rv(&patched));
    assert_eq!(double.resource_version(), before);

    // JSON patch with a passing `test` op applies; a failing one is 422 Invalid.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv(&patched)},
        {"op": "replace", "path": "/metadata/annotations/config", "value": "{\"a\":4}"},
    ]))
    .unwrap();
    let jp = cms
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Json::<()>(ops.clone()),
        )
        .await
        .unwrap();
    assert_eq!(jp.annotations()["config"], "{\"a\":4}");
    let err = cms
        .patch("pg-config", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            422,
            "Invalid".into(),
            "the server rejected our request due to an error in our request".into()
        )
    );

    // PUT with the current resourceVersion works.
    let mut fresh = cms.get("pg-config").await.unwrap();
    fresh.data = Some([("k".to_owned(), "w".to_owned())].into());
    let replaced = cms
        .replace("pg-config", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.data.unwrap()["k"], "w");

    // Missing object: PATCH is 404 too.
    let err = cms
        .patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 404);

    // Successful writes only: create, 2 merge patches, no-op patch, json patch, replace.
    assert_eq!(double.writes_to("configmaps", "pg-config"), 6);

    // DELETE of a ConfigMap answers with a Success Status; then it is gone.
    let deleted = cms.delete("pg-config", &DeleteParams::default()).await.unwrap();
    let status = deleted.right().expect("configmaps answer DELETE with a Status");
    assert!(status.is_success());
    assert_eq!(status_of(&cms.get("pg-config").await.unwrap_err()).0, 404);
    assert_eq!(double.writes_to("configmaps", "pg-config"), 7);
}

#[tokio::test]
async fn services_are_defaulted_and_delete_returns_the_object() {
    let double = ApiDouble::start().await;
    let svcs: Api<Service> = Api::default_namespaced(double.client());
    let svc: Service = serde_json::from_value(service("pg-primary", 5432)).unwrap();
    let created = svcs.create(&PostParams::default(), &svc).await.unwrap();
    let spec = created.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert!(
        spec.cluster_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.96."))
    );
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(
            5432
        ))
    );

    // A merge patch replaces the port list; clusterIP is kept.
    let patched = svcs
        .patch(
            "pg-primary",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ports": [{"name": "pg", "port": 6432}]}})),
        )
        .await
        .unwrap();
    assert_eq!(port_of(&patched), 6432);
    assert_eq!(patched.spec.as_ref().unwrap().cluster_ip, spec.cluster_ip);

    let deleted = svcs.delete("pg-primary", &DeleteParams::default()).await.unwrap();
    let last = deleted.left().expect("services answer DELETE with the object");
    assert_eq!(port_of(&last), 6432);
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

fn watch_requests(double: &ApiDouble) -> Vec<crate::support::kube_api::RecordedRequest> {
    double.requests().into_iter().filter(|r| r.watch).collect()
}

async fn wait_for_new_watch(double: &ApiDouble, before: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while watch_requests(double).len() <= before || double.open_watches() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watcher_follows_port_changes_deletes_and_survives_cut_watches() {
    let double = ApiDouble::start().await;
    double.put_object(service("pg-primary", 5432));
    double.put_object(service("other", 1111));
    let api: Api<Service> = Api::default_namespaced(double.client());
    let (mut rx, task) = spawn_watcher(api, "pg-primary");

    expect_event(&mut rx, "initial object", |ev| applied_port(ev, 5432)).await;
    expect_event(&mut rx, "init done", |ev| matches!(ev, watcher::Event::InitDone)).await;
    assert!(double.wait_for_watches(1, WAIT).await);

    // A port change arrives as MODIFIED; the other service is filtered out.
    double.put_object(service("other", 2222));
    double.put_object(service("pg-primary", 5433));
    let seen = expect_event(&mut rx, "port 5433", |ev| applied_port(ev, 5433)).await;
    assert!(seen.is_empty(), "unexpected events: {seen:?}");

    // Cut the stream; a change made while disconnected is replayed on reconnect.
    let watches = watch_requests(&double).len();
    double.cut_watches();
    double.put_object(service("pg-primary", 5434));
    expect_event(&mut rx, "port 5434 after cut", |ev| applied_port(ev, 5434)).await;
    wait_for_new_watch(&double, watches).await;

    // ... and live changes keep flowing on the new stream.
    double.put_object(service("pg-primary", 5435));
    expect_event(&mut rx, "port 5435", |ev| applied_port(ev, 5435)).await;

    double.delete_object("services", "default", "pg-primary").unwrap();
    expect_event(
        &mut rx,
        "delete",
        |ev| matches!(ev, watcher::Event::Delete(s) if s.name_any() == "pg-primary"),
    )
    .await;

    // What kube's watcher sends: a paginated LIST without resourceVersion, then
    // WATCH from the list's resourceVersion with bookmarks and a 290 s timeout.
    let reqs = double.requests();
    let list = reqs.iter().find(|r| r.method == "GET" && !r.watch).unwrap();
    assert_eq!(list.path, "/api/v1/namespaces/default/services");
    assert_eq!(
        list.query_param("fieldSelector").as_deref(),
        Some("metadata.name=pg-primary")
    );
    assert_eq!(list.query_param("limit").as_deref(), Some("500"));
    assert_eq!(list.query_param("resourceVersion"), None);
    let watch = reqs.iter().find(|r| r.watch).unwrap();
    assert_eq!(watch.query_param("allowWatchBookmarks").as_deref(), Some("true"));
    assert_eq!(watch.query_param("timeoutSeconds").as_deref(), Some("290"));
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
    double.put_object(service("pg-primary", 5432));
    let api: Api<Service> = Api::default_namespaced(double.client());
    let (mut rx, task) = spawn_watcher(api, "pg-primary");
    expect_event(&mut rx, "init done", |ev| matches!(ev, watcher::Event::InitDone)).await;
    assert!(double.wait_for_watches(1, WAIT).await);

    // The watcher's resourceVersion falls out of the retained history.
    double.put_object(service("unrelated", 1));
    double.compact_history();
    double.cut_watches();

    let seen = expect_event(&mut rx, "relist", |ev| applied_port(ev, 5432)).await;
    assert!(
        seen.iter().any(|s| s.contains("410") || s.contains("too old")),
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
async fn injected_failures_and_kube_client_retries() {
    let double = ApiDouble::start().await;
    double.put_object(serde_json::to_value(config_map("pg-config", "{}")).unwrap());
    let mut object = double.get_object("configmaps", "default", "pg-config").unwrap();
    object["metadata"]["namespace"] = json!("default");

    // Without kube's retry layer, every injected failure reaches the caller.
    let plain: Api<ConfigMap> = Api::default_namespaced(double.client_without_retry());
    double.fail_next(2, 503);
    for _ in 0..2 {
        let err = plain.get("pg-config").await.unwrap_err();
        let (code, reason, _) = status_of(&err);
        assert_eq!((code, reason.as_str()), (503, "ServiceUnavailable"));
    }
    plain.get("pg-config").await.unwrap();

    // The production-like client retries 503 by itself (3 attempts on the wire).
    double.clear_requests();
    let retrying: Api<ConfigMap> = Api::default_namespaced(double.client());
    double.fail_next(2, 503);
    retrying.get("pg-config").await.unwrap();
    let statuses: Vec<u16> = double.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200]);

    // 500 is not retried.
    double.fail_next(1, 500);
    let err = retrying.get("pg-config").await.unwrap_err();
    assert_eq!(status_of(&err).0, 500);
    assert_eq!(status_of(&err).1, "InternalError");

    // Targeted failure: only the PATCH fails; no write is counted.
    double.fail_next_matching("PATCH", "/configmaps/pg-config", 1, 500);
    retrying.get("pg-config").await.unwrap();
    let err = retrying
        .patch(
            "pg-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 500);
    assert_eq!(double.writes_to("configmaps", "pg-config"), 0);

    // Slow answers.
    double.set_delay(Duration::from_millis(200));
    let started = std::time::Instant::now();
    retrying.get("pg-config").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    double.set_delay(Duration::ZERO);
}

#[tokio::test]
async fn concurrent_writer_hook_makes_the_precondition_fail() {
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
    assert_eq!(double.pending_write_hooks(), 0);
    let stored = double.get_object("configmaps", "default", "pg-config").unwrap();
    assert_eq!(stored["metadata"]["annotations"]["config"], "{\"theirs\":1}");
    // Only the create counts: the hook is not a request, the PATCH failed.
    assert_eq!(double.writes_to("configmaps", "pg-config"), 1);
}

#[tokio::test]
async fn list_selectors_and_pagination() {
    let double = ApiDouble::start().await;
    for (name, app) in [("a", "pg"), ("b", "pg"), ("c", "other"), ("d", "pg"), ("e", "pg")] {
        double.put_object(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
        }));
    }
    double.put_object(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "elsewhere"}}),
    );
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());

    let names =
        |l: kube::api::ObjectList<ConfigMap>| l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>();
    let all = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        all.metadata.resource_version,
        Some(double.resource_version().to_string())
    );
    assert_eq!(names(all), ["a", "b", "c", "d", "e"]);
    let pg = cms.list(&ListParams::default().labels("app=pg")).await.unwrap();
    assert_eq!(names(pg), ["a", "b", "d", "e"]);
    let not_pg = cms.list(&ListParams::default().labels("app!=pg")).await.unwrap();
    assert_eq!(names(not_pg), ["c"]);
    let one = cms
        .list(&ListParams::default().fields("metadata.name=d"))
        .await
        .unwrap();
    assert_eq!(names(one), ["d"]);
    let everywhere: Api<ConfigMap> = Api::all(double.client());
    assert_eq!(
        everywhere.list(&ListParams::default()).await.unwrap().items.len(),
        6
    );

    let page1 = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let token = page1.metadata.continue_.clone().expect("continue token");
    assert_eq!(page1.metadata.remaining_item_count, Some(3));
    assert_eq!(names(page1), ["a", "b"]);
    let page2 = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(page2), ["c", "d"]);

    let err = cms
        .list(&ListParams::default().fields("spec.foo=bar"))
        .await
        .unwrap_err();
    assert_eq!(
        status_of(&err),
        (
            400,
            "BadRequest".into(),
            "field label not supported: spec.foo".into()
        )
    );
}

#[tokio::test]
async fn raw_watch_honours_timeout_seconds() {
    let double = ApiDouble::start().await;
    double.put_object(service("pg-primary", 5432));
    let api: Api<Service> = Api::default_namespaced(double.client());
    let started = std::time::Instant::now();
    let stream = api.watch(&WatchParams::default().timeout(1), "0").await.unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], Ok(WatchEvent::Added(s)) if port_of(s) == 5432));
}

#[tokio::test]
async fn recorder_publishes_events_for_a_config_map() {
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

    // Same storage seen through core/v1 (field names converted).
    let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
    let core_list = core
        .list(&ListParams::default().fields("involvedObject.name=pg-config"))
        .await
        .unwrap();
    assert_eq!(core_list.items.len(), 1);
    assert_eq!(
        core_list.items[0].message.as_deref(),
        Some("primary site did not answer")
    );
    assert_eq!(
        core_list.items[0].reporting_component.as_deref(),
        Some("patroni-dr-watchdog")
    );

    // A repeat within the cache TTL becomes a series, sent as a merge PATCH.
    recorder.publish(&event, &reference).await.unwrap();
    let ev = &events.list(&ListParams::default()).await.unwrap().items[0];
    assert_eq!(ev.series.as_ref().map(|s| s.count), Some(2));
    let writes: Vec<(String, Option<String>)> = double
        .requests()
        .into_iter()
        .filter(|r| {
            r.is_write()
                && r.path
                    .starts_with("/apis/events.k8s.io/v1/namespaces/default/events")
        })
        .map(|r| (r.method, r.content_type))
        .collect();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0].0, "POST");
    assert_eq!(
        writes[1],
        ("PATCH".into(), Some("application/merge-patch+json".into()))
    );

    // events.k8s.io validation is enforced, e.g. the 1 kB note limit.
    let too_long = Event {
        note: Some("x".repeat(1025)),
        reason: "Other".into(),
        ..event
    };
    let err = recorder.publish(&too_long, &reference).await.unwrap_err();
    assert_eq!(status_of(&err).0, 422);
}

#[tokio::test]
async fn generate_name_dry_run_and_strategic_merge() {
    let double = ApiDouble::start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(double.client());
    let mut cm = config_map("", "{}");
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("pg-".into());
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("pg-") && name.len() == 8, "{name}");

    // dryRun validates and answers but stores nothing.
    let before = double.resource_version();
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let answered = cms
        .patch(&name, &dry, &Patch::Merge(json!({"data": {"k": "dry"}})))
        .await
        .unwrap();
    assert_eq!(answered.data.unwrap()["k"], "dry");
    assert_eq!(double.resource_version(), before);
    assert_eq!(double.writes_to("configmaps", &name), 1);

    // Strategic merge patches are applied like merge patches for these kinds.
    let patched = cms
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"annotations": {"config": "{\"s\":1}"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.annotations()["config"], "{\"s\":1}");

    // Server-side apply is not implemented: 415.
    let err = cms
        .patch(
            &name,
            &PatchParams::apply("test"),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap"})),
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(&err).0, 415);
}

//! In-process double of the Kubernetes API server for tests.
//!
//! `ApiDouble::start().await` serves plain HTTP on `127.0.0.1:<random>`; the real
//! `kube::Client` (see [`ApiDouble::client`]) talks to it exactly like it talks to a
//! cluster. The double stores generic JSON objects and mirrors the apiserver's
//! observable contract for what it implements: status codes, `Status` bodies,
//! `kind`/`apiVersion` on returned objects, resourceVersion preconditions, no-op
//! update detection, watch replay from a bounded history with `410 Expired`, and
//! the core/v1 <-> events.k8s.io/v1 Event conversion (both APIs share one storage,
//! as in a real cluster).
//!
//! Deliberately NOT emulated (a real cluster differs here):
//! - `metadata.managedFields`, server-side apply (`application/apply-patch+yaml` is
//!   answered with 415), and strategic merge patch *list merge keys*: a strategic
//!   merge patch is applied as an RFC 7386 merge patch (lists are replaced whole;
//!   `$patch` directives are not interpreted).
//! - Namespaces are not objects: writing into any namespace works (a cluster
//!   answers 404 `namespaces "x" not found` for a missing namespace).
//! - Cluster-scoped resources, subresources (`/status`, `/scale`, ...),
//!   deletecollection, protobuf/CBOR/YAML bodies, authn/authz (everything is
//!   allowed), admission, field validation (`fieldValidation=Strict`), events TTL,
//!   garbage collection.
//! - LIST ignores `resourceVersion`/`resourceVersionMatch` (always the current
//!   state); `limit` is honoured only when `resourceVersion` is unset (as the
//!   apiserver does for `resourceVersion=0`), and `continue` pages read the
//!   *current* state after the last key (a cluster serves a snapshot).
//! - WATCH from a resourceVersion newer than the current one starts from now (a
//!   cluster waits up to 3 s and then sends a 504 "Too large resource version").
//! - Periodic BOOKMARKs are only sent when [`ApiDouble::set_bookmark_interval`]
//!   was set (a cluster sends one about every minute when `allowWatchBookmarks`).
//! - Watches without `timeoutSeconds` never time out (a cluster picks 30-60 min).
//! - Validation covers object names, labels, annotations, ConfigMap keys/size,
//!   Service ports/clusterIP and Event rules; other kinds are stored verbatim.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// One HTTP request as the double received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`, ...
    pub method: String,
    /// URL path, e.g. `/api/v1/namespaces/default/configmaps/pg-config`.
    pub path: String,
    /// Raw (still percent-encoded) query string without the `?`; may be empty.
    pub query: String,
    /// `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Request body as UTF-8 (lossy).
    pub body: String,
    /// HTTP status the double answered with (0 while still being handled).
    pub status: u16,
    /// Whether this was a `watch=true`/`watch=1` request.
    pub watch: bool,
}

impl RecordedRequest {
    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// A decoded query parameter (first occurrence).
    pub fn query_param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_owned)
    }

    /// Whether the request mutates state (POST/PUT/PATCH/DELETE).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// One-shot hook run on the stored object right before a mutating request to it is
/// applied: `Some(obj)` is the object as the request's API version shows it (or
/// `None` if absent). Change it to simulate a concurrent writer, set it to `None` to
/// delete it, or set it to `Some` to create it. The change is committed as its own
/// write (new resourceVersion, watch event) and is not counted by `writes_to`.
pub type WriteHook = Box<dyn FnOnce(&mut Option<Value>) + Send + 'static>;

/// The running API double. Dropping it stops the server and ends open watches.
pub struct ApiDouble {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ApiDouble {
    /// Starts the double on `127.0.0.1:<random port>` (needs a tokio runtime).
    pub async fn start() -> ApiDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the kube API double");
        let addr = listener.local_addr().expect("local addr");
        let (tx, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new(tx)),
            cut: Mutex::new(CancellationToken::new()),
            open_watches: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ApiDouble { inner, addr, server }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `kube::Config` for the double: plain http, no auth, default namespace
    /// "default", and kube's default retry policy (429/503/504 retried) left on, as
    /// `Config::infer()` does in production.
    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("double URL is a valid URI"));
        config.default_namespace = "default".to_owned();
        config
    }

    /// A `kube::Client` configured like production (`default_retry` on).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("kube client for the API double")
    }

    /// A `kube::Client` with kube's built-in retry of 429/503/504 switched off, so
    /// every injected failure reaches the caller.
    pub fn client_without_retry(&self) -> kube::Client {
        let mut config = self.config();
        config.default_retry = false;
        kube::Client::try_from(config).expect("kube client for the API double")
    }

    /// Upserts an object directly (no validation, no preconditions; resourceVersion
    /// in the input is ignored). Its `apiVersion` and `kind` pick the resource,
    /// `metadata.namespace` defaults to "default". Bumps the resourceVersion and
    /// notifies watchers unless nothing changed. Returns the stored object.
    pub fn put_object(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let def = def_for_kind(&api_version, &kind)
            .unwrap_or_else(|| panic!("kube API double: unsupported apiVersion/kind {api_version}/{kind}"));
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .expect("put_object needs metadata.name")
            .to_owned();
        let mut store = self.inner.lock();
        let stored = store.direct_write(def, &namespace, &name, object);
        to_view(def, &stored)
    }

    /// The stored object as `group_resource` shows it (`"configmaps"`, `"services"`,
    /// `"events"`, `"events.events.k8s.io"`, `"leases.coordination.k8s.io"`; the
    /// `"events.k8s.io/events"` form is accepted too).
    pub fn get_object(&self, group_resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = def_for_group_resource(group_resource);
        let store = self.inner.lock();
        store
            .objects
            .get(&(def.storage, namespace.to_owned(), name.to_owned()))
            .map(|o| to_view(def, o))
    }

    /// Deletes an object directly (bumps the resourceVersion, sends DELETED).
    /// Returns the last state, or `None` if it did not exist.
    pub fn delete_object(&self, group_resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let def = def_for_group_resource(group_resource);
        let mut store = self.inner.lock();
        store
            .commit(def.storage, namespace, name, None)
            .map(|o| to_view(def, &o))
    }

    /// All stored objects of a resource, optionally in one namespace, in key order.
    pub fn list_objects(&self, group_resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let def = def_for_group_resource(group_resource);
        let store = self.inner.lock();
        store
            .objects
            .iter()
            .filter(|((s, ns, _), _)| *s == def.storage && namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| to_view(def, o))
            .collect()
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().rv
    }

    /// The next `n` non-watch requests fail with `status` and a matching `Status`
    /// body (e.g. 500 InternalError, 503 ServiceUnavailable, 429 with
    /// `Retry-After: 1`). Note: the default kube client retries 429/503/504 by
    /// itself, and every attempt consumes one failure.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.inner.lock().failures.push(FailRule {
            method: None,
            path_contains: None,
            watch: false,
            remaining: n,
            status,
        });
    }

    /// The next `n` watch requests fail with `status` before the stream starts.
    pub fn fail_next_watches(&self, n: usize, status: u16) {
        self.inner.lock().failures.push(FailRule {
            method: None,
            path_contains: None,
            watch: true,
            remaining: n,
            status,
        });
    }

    /// The next `n` non-watch requests with this method (e.g. "PATCH"; "" = any)
    /// whose path contains `path_contains` fail with `status`.
    pub fn fail_next_matching(&self, method: &str, path_contains: &str, n: usize, status: u16) {
        self.inner.lock().failures.push(FailRule {
            method: (!method.is_empty()).then(|| method.to_ascii_uppercase()),
            path_contains: Some(path_contains.to_owned()),
            watch: false,
            remaining: n,
            status,
        });
    }

    /// Drops all pending injected failures.
    pub fn clear_failures(&self) {
        self.inner.lock().failures.clear();
    }

    /// Every request (watches included) waits this long before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Send a BOOKMARK on watches that asked for them (`allowWatchBookmarks=true`)
    /// at this interval; `None` (the default) sends none except the
    /// `k8s.io/initial-events-end` bookmark of streaming lists.
    pub fn set_bookmark_interval(&self, interval: Option<Duration>) {
        self.inner.lock().bookmark_interval = interval;
    }

    /// How many watch events are kept for replay (default 1000). Older
    /// resourceVersions get a `410 Expired` ERROR event.
    pub fn set_history_limit(&self, limit: usize) {
        let mut store = self.inner.lock();
        store.history_limit = limit.max(1);
        store.trim_history();
    }

    /// Forgets the whole watch history: any watch (re)started from an older
    /// resourceVersion gets a `410 Expired` ERROR event, like after an etcd
    /// compaction, so the client must relist.
    pub fn compact_history(&self) {
        let mut store = self.inner.lock();
        store.history.clear();
        store.compacted_rv = store.rv;
    }

    /// Ends every open watch stream abruptly (the HTTP body is cut mid-stream,
    /// without the terminating chunk); clients must reconnect.
    pub fn cut_watches(&self) {
        let mut cut = self.inner.cut.lock().unwrap_or_else(|e| e.into_inner());
        cut.cancel();
        *cut = CancellationToken::new();
    }

    /// Number of watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watch streams are open; false on timeout.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.open_watches() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.clone()
    }

    /// Forgets the request log (not the write counters).
    pub fn clear_requests(&self) {
        self.inner.lock().requests.clear();
    }

    /// Number of successful (2xx, not dry-run) POST/PUT/PATCH/DELETE requests on
    /// the object `name` of `group_resource` (any namespace). Requests that changed
    /// nothing (no-op updates) count too; direct writes and hooks do not. Core and
    /// events.k8s.io Events share one counter, as they share one storage.
    pub fn writes_to(&self, group_resource: &str, name: &str) -> usize {
        let def = def_for_group_resource(group_resource);
        self.inner
            .lock()
            .writes
            .get(&(def.storage.to_owned(), name.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Registers a one-shot [`WriteHook`] run when the next mutating request
    /// (POST/PUT/PATCH/DELETE) for this object arrives, before it is applied —
    /// e.g. to bump the object between a client's GET and its PATCH so that the
    /// client's resourceVersion precondition fails with 409.
    pub fn before_next_write<F>(&self, group_resource: &str, namespace: &str, name: &str, hook: F)
    where
        F: FnOnce(&mut Option<Value>) + Send + 'static,
    {
        let def = def_for_group_resource(group_resource);
        self.inner.lock().hooks.push(PendingHook {
            storage: def.storage,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            hook: Box::new(hook),
        });
    }

    /// Whether a hook registered with `before_next_write` is still pending.
    pub fn pending_write_hooks(&self) -> usize {
        self.inner.lock().hooks.len()
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.server.abort();
        self.inner.cut.lock().unwrap_or_else(|e| e.into_inner()).cancel();
    }
}

// ---------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    Plain,
    /// events.k8s.io/v1 view of the core/v1 Event storage.
    EventsV1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameRule {
    Subdomain,
    Label1035,
}

#[derive(Debug)]
struct ResourceDef {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    storage: &'static str,
    repr: Repr,
    name_rule: NameRule,
    /// DELETE answers with the object (true) or a `Status` (false).
    return_deleted: bool,
    /// `status` is a subresource: ignored on create/update of the main resource.
    status_subresource: bool,
    /// Field selector labels besides metadata.name / metadata.namespace.
    fields: &'static [&'static str],
}

const CORE_EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

const RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        group: "",
        version: "v1",
        resource: "configmaps",
        kind: "ConfigMap",
        storage: "configmaps",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "services",
        kind: "Service",
        storage: "services",
        repr: Repr::Plain,
        name_rule: NameRule::Label1035,
        return_deleted: true,
        status_subresource: true,
        fields: &["spec.clusterIP", "spec.type"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "events",
        kind: "Event",
        storage: "events",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: CORE_EVENT_FIELDS,
    },
    ResourceDef {
        group: "events.k8s.io",
        version: "v1",
        resource: "events",
        kind: "Event",
        storage: "events",
        repr: Repr::EventsV1,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "secrets",
        kind: "Secret",
        storage: "secrets",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &["type"],
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "endpoints",
        kind: "Endpoints",
        storage: "endpoints",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceDef {
        group: "",
        version: "v1",
        resource: "pods",
        kind: "Pod",
        storage: "pods",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: true,
        status_subresource: true,
        fields: &["spec.nodeName", "status.phase", "status.podIP"],
    },
    ResourceDef {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        kind: "Lease",
        storage: "leases.coordination.k8s.io",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &[],
    },
    ResourceDef {
        group: "discovery.k8s.io",
        version: "v1",
        resource: "endpointslices",
        kind: "EndpointSlice",
        storage: "endpointslices.discovery.k8s.io",
        repr: Repr::Plain,
        name_rule: NameRule::Subdomain,
        return_deleted: false,
        status_subresource: false,
        fields: &[],
    },
];

impl ResourceDef {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `GroupResource.String()`: "configmaps", "events.events.k8s.io".
    fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

fn def_for_path(group: &str, version: &str, resource: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|d| d.group == group && d.version == version && d.resource == resource)
}

fn def_for_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|d| d.api_version() == api_version && d.kind == kind)
}

fn def_for_group_resource(group_resource: &str) -> &'static ResourceDef {
    let found = if let Some((group, resource)) = group_resource.rsplit_once('/') {
        let group = group.split('/').next().unwrap_or_default();
        RESOURCES
            .iter()
            .find(|d| d.group == group && d.resource == resource)
    } else {
        RESOURCES.iter().find(|d| d.group_resource() == group_resource)
    };
    found.unwrap_or_else(|| panic!("kube API double: unknown group resource {group_resource:?}"))
}

// ---------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------

struct Inner {
    store: Mutex<Store>,
    cut: Mutex<CancellationToken>,
    open_watches: AtomicUsize,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type ObjKey = (&'static str, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change, in storage representation.
#[derive(Debug)]
struct Change {
    rv: u64,
    storage: &'static str,
    namespace: String,
    ty: ChangeType,
    /// New state (for Deleted: the last state carrying the deletion rv).
    object: Value,
    /// Previous state (None for Added).
    prev: Option<Value>,
}

struct FailRule {
    method: Option<String>,
    path_contains: Option<String>,
    watch: bool,
    remaining: usize,
    status: u16,
}

struct PendingHook {
    storage: &'static str,
    namespace: String,
    name: String,
    hook: WriteHook,
}

struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted_rv: u64,
    history_limit: usize,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    tx: broadcast::Sender<Arc<Change>>,
    failures: Vec<FailRule>,
    delay: Duration,
    bookmark_interval: Option<Duration>,
    requests: Vec<RecordedRequest>,
    writes: HashMap<(String, String), usize>,
    hooks: Vec<PendingHook>,
    next_ip: u32,
    next_node_port: u32,
}

impl Store {
    fn new(tx: broadcast::Sender<Arc<Change>>) -> Store {
        Store {
            rv: 1,
            compacted_rv: 1,
            history_limit: 1000,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            tx,
            failures: Vec::new(),
            delay: Duration::ZERO,
            bookmark_interval: None,
            requests: Vec::new(),
            writes: HashMap::new(),
            hooks: Vec::new(),
            next_ip: 10,
            next_node_port: 30000,
        }
    }

    fn get(&self, storage: &'static str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(storage, namespace.to_owned(), name.to_owned()))
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(c) = self.history.pop_front() {
                self.compacted_rv = c.rv;
            }
        }
    }

    fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.history.push_back(change.clone());
        self.trim_history();
        let _ = self.tx.send(change);
    }

    /// Writes `new` (storage repr) or deletes (`None`). A write identical to the
    /// stored object is a no-op (no rv bump, no event), as in etcd3 storage.
    /// Returns the stored object (or the deleted one carrying the deletion rv).
    fn commit(
        &mut self,
        storage: &'static str,
        namespace: &str,
        name: &str,
        new: Option<Value>,
    ) -> Option<Value> {
        let key = (storage, namespace.to_owned(), name.to_owned());
        let old = self.objects.get(&key).cloned();
        match (old, new) {
            (None, None) => None,
            (Some(old), None) => {
                self.objects.remove(&key);
                self.rv += 1;
                let mut gone = old.clone();
                set_rv(&mut gone, self.rv);
                self.publish(Change {
                    rv: self.rv,
                    storage,
                    namespace: namespace.to_owned(),
                    ty: ChangeType::Deleted,
                    object: gone.clone(),
                    prev: Some(old),
                });
                Some(gone)
            }
            (old, Some(mut new)) => {
                if let Some(old) = &old {
                    set_rv_str(&mut new, rv_of(old));
                    if &new == old {
                        return Some(new);
                    }
                }
                self.rv += 1;
                set_rv(&mut new, self.rv);
                self.objects.insert(key, new.clone());
                let ty = if old.is_some() {
                    ChangeType::Modified
                } else {
                    ChangeType::Added
                };
                self.publish(Change {
                    rv: self.rv,
                    storage,
                    namespace: namespace.to_owned(),
                    ty,
                    object: new.clone(),
                    prev: old,
                });
                Some(new)
            }
        }
    }

    /// Commit of an update: an object whose deletion is pending and whose last
    /// finalizer was removed is deleted instead (as the registry store does).
    fn commit_update(&mut self, storage: &'static str, namespace: &str, name: &str, new: Value) -> Value {
        let deleting = !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if deleting {
            self.commit(storage, namespace, name, Some(new.clone()));
            return self.commit(storage, namespace, name, None).unwrap_or(new);
        }
        self.commit(storage, namespace, name, Some(new))
            .expect("write returns the object")
    }

    /// Test-side write: upsert without validation or preconditions.
    fn direct_write(&mut self, def: &'static ResourceDef, namespace: &str, name: &str, view: Value) -> Value {
        let mut obj = from_view(def, view);
        let meta = meta_mut(&mut obj);
        meta.insert("namespace".into(), json!(namespace));
        meta.insert("name".into(), json!(name));
        meta.remove("resourceVersion");
        let old = self.get(def.storage, namespace, name).cloned();
        let meta = meta_mut(&mut obj);
        match &old {
            Some(old) => {
                for field in ["uid", "creationTimestamp"] {
                    if meta.get(field).is_none_or(Value::is_null)
                        && let Some(v) = old["metadata"].get(field)
                    {
                        meta.insert(field.into(), v.clone());
                    }
                }
            }
            None => {
                if meta.get("uid").is_none_or(Value::is_null) {
                    meta.insert("uid".into(), json!(new_uid()));
                }
                if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
                }
            }
        }
        if is_service(def) {
            let _ = self.prepare_service(&mut obj, old.as_ref());
            if obj["status"].is_null() {
                obj["status"] = json!({"loadBalancer": {}});
            }
        }
        self.commit_update(def.storage, namespace, name, obj)
    }

    fn take_hook(&mut self, storage: &'static str, namespace: &str, name: &str) -> Option<WriteHook> {
        let idx = self
            .hooks
            .iter()
            .position(|h| h.storage == storage && h.namespace == namespace && h.name == name)?;
        Some(self.hooks.remove(idx).hook)
    }

    fn run_hook(&mut self, def: &'static ResourceDef, namespace: &str, name: &str) {
        let Some(hook) = self.take_hook(def.storage, namespace, name) else {
            return;
        };
        let before = self.get(def.storage, namespace, name).map(|o| to_view(def, o));
        let mut current = before.clone();
        hook(&mut current);
        if current == before {
            return;
        }
        match current {
            None => {
                self.commit(def.storage, namespace, name, None);
            }
            Some(view) => {
                self.direct_write(def, namespace, name, view);
            }
        }
    }

    fn take_failure(&mut self, method: &str, path: &str, watch: bool) -> Option<u16> {
        let rule = self.failures.iter_mut().find(|r| {
            r.remaining > 0
                && r.watch == watch
                && r.method.as_deref().is_none_or(|m| m == method)
                && r.path_contains.as_deref().is_none_or(|p| path.contains(p))
        })?;
        rule.remaining -= 1;
        let status = rule.status;
        self.failures.retain(|r| r.remaining > 0);
        Some(status)
    }

    fn allocate_ip(&mut self) -> String {
        let n = self.next_ip;
        self.next_ip += 1;
        format!("10.96.{}.{}", n / 256, n % 256)
    }

    fn allocate_node_port(&mut self) -> u32 {
        let p = self.next_node_port;
        self.next_node_port = if p >= 32767 { 30000 } else { p + 1 };
        p
    }

    /// Service defaulting and allocation (PrepareForCreate/Update + REST allocators)
    /// plus validation of the spec. `obj` is in storage (= core/v1) form.
    fn prepare_service(&mut self, obj: &mut Value, old: Option<&Value>) -> Vec<FieldErr> {
        let mut errs = Vec::new();
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        let old_spec = old.map(|o| o["spec"].clone()).unwrap_or(Value::Null);
        let spec = obj["spec"].as_object_mut().expect("spec is an object");
        let ty = spec
            .entry("type")
            .or_insert_with(|| json!("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_owned();
        if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty.as_str()) {
            errs.push(FieldErr::not_supported(
                "spec.type",
                json!(ty),
                &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
            ));
        }
        spec.entry("sessionAffinity").or_insert_with(|| json!("None"));
        let mut headless = false;
        if ty == "ExternalName" {
            if spec["externalName"].as_str().unwrap_or_default().is_empty() {
                errs.push(FieldErr::required("spec.externalName", ""));
            }
        } else {
            let cur_ip = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let old_ip = old_spec["clusterIP"].as_str().unwrap_or_default().to_owned();
            if !old_ip.is_empty() {
                if cur_ip.is_empty() {
                    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                        if !old_spec[f].is_null() {
                            spec.insert(f.into(), old_spec[f].clone());
                        }
                    }
                } else if cur_ip != old_ip {
                    errs.push(FieldErr::invalid(
                        "spec.clusterIPs[0]",
                        json!([cur_ip]),
                        "may not change once set",
                    ));
                }
            } else if cur_ip.is_empty() {
                let ip = self.allocate_ip();
                spec.insert("clusterIP".into(), json!(ip));
            }
            let ip = spec["clusterIP"].as_str().unwrap_or_default().to_owned();
            headless = ip == "None";
            if spec.get("clusterIPs").is_none_or(Value::is_null) {
                spec.insert("clusterIPs".into(), json!([ip]));
            }
            if !headless {
                spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
            }
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| json!("SingleStack"));
            spec.entry("internalTrafficPolicy")
                .or_insert_with(|| json!("Cluster"));
        }
        let node_ports = ty == "NodePort" || ty == "LoadBalancer";
        if node_ports {
            spec.entry("externalTrafficPolicy")
                .or_insert_with(|| json!("Cluster"));
        }
        if ty == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert_with(|| json!(true));
        }
        let mut ports = match spec.get("ports") {
            Some(Value::Array(p)) => p.clone(),
            _ => Vec::new(),
        };
        if ports.is_empty() && ty != "ExternalName" && !headless {
            errs.push(FieldErr::required("spec.ports", ""));
        }
        let multi = ports.len() > 1;
        let mut names = Vec::new();
        for (i, port) in ports.iter_mut().enumerate() {
            let Some(p) = port.as_object_mut() else {
                errs.push(FieldErr::invalid(
                    &format!("spec.ports[{i}]"),
                    port.clone(),
                    "must be an object",
                ));
                continue;
            };
            let number = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            if !(1..=65535).contains(&number) {
                errs.push(FieldErr::invalid(
                    &format!("spec.ports[{i}].port"),
                    json!(number),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            p.entry("protocol").or_insert_with(|| json!("TCP"));
            if p.get("targetPort")
                .is_none_or(|t| t.is_null() || t == &json!(0) || t == &json!(""))
            {
                p.insert("targetPort".into(), json!(number));
            }
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if multi && name.is_empty() {
                errs.push(FieldErr::required(&format!("spec.ports[{i}].name"), ""));
            } else if !name.is_empty() && names.contains(&name) {
                errs.push(FieldErr::duplicate(&format!("spec.ports[{i}].name"), json!(name)));
            }
            names.push(name);
            if node_ports && p.get("nodePort").is_none_or(|n| n.is_null() || n == &json!(0)) {
                let reuse = old_spec["ports"]
                    .as_array()
                    .and_then(|ops| ops.iter().find(|op| op["port"] == json!(number)))
                    .and_then(|op| op["nodePort"].as_u64());
                let np = reuse.unwrap_or_else(|| u64::from(self.allocate_node_port()));
                p.insert("nodePort".into(), json!(np));
            }
        }
        if spec.contains_key("ports") || !ports.is_empty() {
            spec.insert("ports".into(), Value::Array(ports));
        }
        errs
    }
}

// ---------------------------------------------------------------------------
// Object helpers
// ---------------------------------------------------------------------------

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

fn rv_of(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or_default()
}

fn set_rv(obj: &mut Value, rv: u64) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rv.to_string()));
}

fn set_rv_str(obj: &mut Value, rv: &str) {
    meta_mut(obj).insert("resourceVersion".into(), json!(rv));
}

fn str_at<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj[field].as_str().unwrap_or_default()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

static UID_SEQ: AtomicU64 = AtomicU64::new(1);

fn random_u64() -> u64 {
    let seq = UID_SEQ.fetch_add(1, Ordering::Relaxed);
    std::hash::RandomState::new().hash_one((seq, std::time::SystemTime::now()))
}

fn new_uid() -> String {
    let a = random_u64();
    let b = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// `names.SimpleNameGenerator`: 5 random characters from a consonant/digit set.
fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = random_u64();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(r % ALPHABET.len() as u64) as usize] as char;
            r /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// core/v1 field name <-> events.k8s.io/v1 field name.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("reportingComponent", "reportingController"),
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
];

fn rename_fields(obj: &mut Value, to_v1: bool) {
    if let Some(map) = obj.as_object_mut() {
        for (core, v1) in EVENT_FIELDS {
            let (from, to) = if to_v1 { (core, v1) } else { (v1, core) };
            if let Some(v) = map.remove(*from) {
                map.insert((*to).to_owned(), v);
            }
        }
    }
}

fn set_type_meta(obj: &mut Value, def: &ResourceDef) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), json!(def.api_version()));
        map.insert("kind".into(), json!(def.kind));
    }
}

/// Storage representation -> what `def`'s API returns.
fn to_view(def: &ResourceDef, stored: &Value) -> Value {
    let mut v = stored.clone();
    if def.repr == Repr::EventsV1 {
        rename_fields(&mut v, true);
    }
    set_type_meta(&mut v, def);
    v
}

/// `def`'s API representation -> storage representation.
fn from_view(def: &ResourceDef, view: Value) -> Value {
    let mut v = view;
    if def.repr == Repr::EventsV1 {
        rename_fields(&mut v, false);
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), json!("v1"));
            map.insert("kind".into(), json!("Event"));
        }
    } else {
        set_type_meta(&mut v, def);
    }
    v
}

fn list_item(def: &ResourceDef, stored: &Value) -> Value {
    let mut v = to_view(def, stored);
    if let Some(map) = v.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
    }
    v
}

// ---------------------------------------------------------------------------
// Errors (metav1.Status)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct ApiError {
    code: u16,
    body: Value,
    retry_after: Option<u32>,
}

fn status_body(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "code": code,
    });
    if !reason.is_empty() {
        body["reason"] = json!(reason);
    }
    if let Some(d) = details {
        body["details"] = d;
    }
    body
}

fn resource_details(def: &ResourceDef, name: &str) -> Value {
    let mut d = Map::new();
    if !name.is_empty() {
        d.insert("name".into(), json!(name));
    }
    if !def.group.is_empty() {
        d.insert("group".into(), json!(def.group));
    }
    d.insert("kind".into(), json!(def.resource));
    Value::Object(d)
}

impl ApiError {
    fn new(code: u16, reason: &str, message: &str, details: Option<Value>) -> ApiError {
        ApiError {
            code,
            body: status_body(code, reason, message, details),
            retry_after: None,
        }
    }

    fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            &format!("{} \"{}\" not found", def.group_resource(), name),
            Some(resource_details(def, name)),
        )
    }

    fn unknown_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        )
    }

    fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            &format!("{} \"{}\" already exists", def.group_resource(), name),
            Some(resource_details(def, name)),
        )
    }

    fn conflict(def: &ResourceDef, name: &str, why: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                def.group_resource(),
                name,
                why
            ),
            Some(resource_details(def, name)),
        )
    }

    fn stale(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::conflict(
            def,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    fn bad_request(message: &str) -> ApiError {
        ApiError::new(400, "BadRequest", message, None)
    }

    fn method_not_allowed() -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some(json!({})),
        )
    }

    fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json (the double does not implement {content_type})"
            ),
            None,
        )
    }

    /// `errors.NewInvalid(groupKind, name, errs)`.
    fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldErr]) -> ApiError {
        let qualified_kind = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let summary = if errs.len() == 1 {
            errs[0].to_string()
        } else {
            format!(
                "[{}]",
                errs.iter()
                    .map(FieldErr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut details = Map::new();
        details.insert("name".into(), json!(name));
        if !group.is_empty() {
            details.insert("group".into(), json!(group));
        }
        details.insert("kind".into(), json!(kind));
        details.insert(
            "causes".into(),
            Value::Array(
                errs.iter()
                    .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
                    .collect(),
            ),
        );
        ApiError::new(
            422,
            "Invalid",
            &format!("{qualified_kind} \"{name}\" is invalid: {summary}"),
            Some(Value::Object(details)),
        )
    }

    fn invalid_object(def: &ResourceDef, name: &str, errs: &[FieldErr]) -> ApiError {
        ApiError::invalid(def.group, def.kind, name, errs)
    }

    /// `errors.NewGenericServerResponse(code, "", GroupResource{}, "", ...)`, e.g.
    /// a failed JSON patch `test` (422 with a fixed message and empty details).
    fn generic(code: u16) -> ApiError {
        let (reason, message) = match code {
            409 => ("Conflict", "the server reported a conflict".to_owned()),
            404 => (
                "NotFound",
                "the server could not find the requested resource".to_owned(),
            ),
            400 => (
                "BadRequest",
                "the server rejected our request for an unknown reason".to_owned(),
            ),
            422 => (
                "Invalid",
                "the server rejected our request due to an error in our request".to_owned(),
            ),
            _ => (
                "",
                format!(
                    "the server responded with the status code {code} but did not return more information"
                ),
            ),
        };
        ApiError::new(code, reason, &message, Some(json!({})))
    }

    /// A plain Go error turned into a Status by `ErrorToAPIStatus` (500, no reason).
    fn internal_plain(message: &str) -> ApiError {
        ApiError::new(500, "", message, None)
    }

    /// Failure injected by `fail_next*`, shaped like what a cluster sends.
    fn injected(code: u16, def: Option<&ResourceDef>, name: &str, verb: &str, namespace: &str) -> ApiError {
        let details = def.map(|d| resource_details(d, name));
        let mut err = match code {
            500 => ApiError::new(
                500,
                "InternalError",
                "Internal error occurred: injected failure",
                Some(json!({"causes": [{"message": "injected failure"}]})),
            ),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
                None,
            ),
            504 => ApiError::new(
                504,
                "Timeout",
                "Timeout: request did not complete within requested timeout - context deadline exceeded",
                Some(json!({})),
            ),
            429 => {
                let mut e = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Too many requests, please try again later.",
                    Some(json!({"retryAfterSeconds": 1})),
                );
                e.retry_after = Some(1);
                e
            }
            401 => ApiError::new(401, "Unauthorized", "Unauthorized", None),
            403 => {
                let resource = def.map(|d| d.resource).unwrap_or("resources");
                let group = def.map(|d| d.group).unwrap_or_default();
                let subject = if name.is_empty() {
                    resource.to_owned()
                } else {
                    format!(
                        "{} \"{name}\"",
                        def.map(ResourceDef::group_resource).unwrap_or_default()
                    )
                };
                ApiError::new(
                    403,
                    "Forbidden",
                    &format!(
                        "{subject} is forbidden: User \"system:serviceaccount:{namespace}:default\" cannot \
                         {verb} resource \"{resource}\" in API group \"{group}\" in the namespace \"{namespace}\""
                    ),
                    details,
                )
            }
            404 => match def {
                Some(d) if !name.is_empty() => ApiError::not_found(d, name),
                _ => ApiError::unknown_path(),
            },
            409 => match def {
                Some(d) if !name.is_empty() => ApiError::stale(d, name),
                _ => ApiError::generic(409),
            },
            410 => ApiError::new(410, "Expired", "too old resource version", None),
            code if code >= 500 => ApiError::new(
                code,
                "InternalError",
                "an error on the server (\"injected failure\") has prevented the request from succeeding",
                Some(json!({})),
            ),
            code => ApiError::generic(code),
        };
        if err.code != code {
            err.code = code;
            err.body["code"] = json!(code);
        }
        err
    }

    fn into_response(self) -> Response {
        let mut resp = json_response(self.code, &self.body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs.to_string()).expect("header value"),
            );
        }
        resp
    }
}

/// A `field.Error`.
#[derive(Debug, Clone)]
struct FieldErr {
    field: String,
    kind: FieldErrKind,
    detail: String,
}

#[derive(Debug, Clone)]
enum FieldErrKind {
    Required,
    Invalid(Value),
    Forbidden,
    TooLong(usize),
    Duplicate(Value),
    NotSupported(Value, Vec<String>),
}

impl FieldErr {
    fn required(field: &str, detail: &str) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::Required,
            detail: detail.to_owned(),
        }
    }

    fn invalid(field: &str, value: Value, detail: &str) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::Invalid(value),
            detail: detail.to_owned(),
        }
    }

    fn forbidden(field: &str, detail: &str) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::Forbidden,
            detail: detail.to_owned(),
        }
    }

    fn too_long(field: &str, max: usize) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::TooLong(max),
            detail: String::new(),
        }
    }

    fn duplicate(field: &str, value: Value) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::Duplicate(value),
            detail: String::new(),
        }
    }

    fn not_supported(field: &str, value: Value, valid: &[&str]) -> FieldErr {
        FieldErr {
            field: field.to_owned(),
            kind: FieldErrKind::NotSupported(value, valid.iter().map(|s| (*s).to_owned()).collect()),
            detail: String::new(),
        }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrKind::Required => "FieldValueRequired",
            FieldErrKind::Invalid(_) => "FieldValueInvalid",
            FieldErrKind::Forbidden => "FieldValueForbidden",
            FieldErrKind::TooLong(_) => "FieldValueTooLong",
            FieldErrKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrKind::NotSupported(..) => "FieldValueNotSupported",
        }
    }

    /// `ErrorBody()`: the message without the field path.
    fn body(&self) -> String {
        let with_detail = |s: String| {
            if self.detail.is_empty() {
                s
            } else {
                format!("{s}: {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrKind::Required => with_detail("Required value".to_owned()),
            FieldErrKind::Invalid(v) => with_detail(format!("Invalid value: {}", go_value(v))),
            FieldErrKind::Forbidden => with_detail("Forbidden".to_owned()),
            FieldErrKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrKind::Duplicate(v) => format!("Duplicate value: {}", go_value(v)),
            FieldErrKind::NotSupported(v, valid) => format!(
                "Unsupported value: {}: supported values: {}",
                go_value(v),
                valid
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl std::fmt::Display for FieldErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.body())
    }
}

fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn is_dns1123_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if !s.split('.').all(is_dns1123_label_chars) {
        errs.push(DNS1123_SUBDOMAIN_MSG.to_owned());
    }
    errs
}

fn dns1035_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !is_dns1123_label_chars(s) || !s.as_bytes()[0].is_ascii_lowercase() {
        errs.push(DNS1035_LABEL_MSG.to_owned());
    }
    errs
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_owned());
        } else {
            errs.extend(
                dns1123_subdomain_errors(p)
                    .into_iter()
                    .map(|m| format!("prefix part {m}")),
            );
        }
        if name.contains('/') {
            errs.push(format!("{QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"));
            return errs;
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_owned());
        }
        if !is_name_part(name) {
            errs.push(QUALIFIED_NAME_MSG.to_owned());
        }
    }
    errs
}

fn label_value_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !s.is_empty() && !is_name_part(s) {
        errs.push(LABEL_VALUE_MSG.to_owned());
    }
    errs
}

fn config_key_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_owned());
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        errs.push(CONFIG_KEY_MSG.to_owned());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        errs.push("must not be '.' or '..' and must not start with '..'".to_owned());
    }
    errs
}

/// Type checks done by decoding into the Go struct: a wrong JSON type is a 400.
fn decode_errors(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let type_err = |go_field: &str, got: &Value| {
        let json_type = match got {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        ApiError::bad_request(&format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {json_type} \
             into Go struct field {go_field} of type string",
            kind = def.kind,
            version = def.version,
        ))
    };
    let meta = &obj["metadata"];
    if !meta.is_null() && !meta.is_object() {
        return Err(ApiError::bad_request(&format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {meta} into Go \
             struct field {kind}.metadata of type v1.ObjectMeta",
            kind = def.kind,
            version = def.version,
        )));
    }
    let mut maps = vec![
        ("ObjectMeta.metadata.labels", &meta["labels"]),
        ("ObjectMeta.metadata.annotations", &meta["annotations"]),
    ];
    if def.kind == "ConfigMap" {
        maps.push(("ConfigMap.data", &obj["data"]));
    }
    for (go_field, map) in maps {
        match map {
            Value::Null => {}
            Value::Object(m) => {
                if let Some(bad) = m.values().find(|v| !v.is_string()) {
                    return Err(type_err(go_field, bad));
                }
            }
            other => return Err(type_err(go_field, other)),
        }
    }
    for field in ["name", "namespace", "generateName", "resourceVersion", "uid"] {
        match &meta[field] {
            Value::Null | Value::String(_) => {}
            other => return Err(type_err(&format!("ObjectMeta.metadata.{field}"), other)),
        }
    }
    Ok(())
}

/// `ValidateObjectMeta` (+ `ValidateObjectMetaUpdate` when `old` is given), on the
/// storage representation.
fn validate_meta(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<FieldErr> {
    let mut errs = Vec::new();
    let meta = &obj["metadata"];
    let name = str_at(meta, "name");
    if old.is_none() {
        let gen_name = str_at(meta, "generateName");
        if name.is_empty() {
            errs.push(FieldErr::required(
                "metadata.name",
                "name or generateName is required",
            ));
        } else {
            let msgs = match def.name_rule {
                NameRule::Subdomain => dns1123_subdomain_errors(name),
                NameRule::Label1035 => dns1035_label_errors(name),
            };
            for m in msgs {
                errs.push(FieldErr::invalid("metadata.name", json!(name), &m));
            }
        }
        if !gen_name.is_empty() && name.is_empty() {
            errs.push(FieldErr::invalid(
                "metadata.generateName",
                json!(gen_name),
                "invalid",
            ));
        }
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            for m in qualified_name_errors(k) {
                errs.push(FieldErr::invalid("metadata.labels", json!(k), &m));
            }
            let v = v.as_str().unwrap_or_default();
            for m in label_value_errors(v) {
                errs.push(FieldErr::invalid("metadata.labels", json!(v), &m));
            }
        }
    }
    if let Some(annotations) = meta["annotations"].as_object() {
        let mut total = 0;
        for (k, v) in annotations {
            for m in qualified_name_errors(&k.to_ascii_lowercase()) {
                errs.push(FieldErr::invalid("metadata.annotations", json!(k), &m));
            }
            total += k.len() + v.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            errs.push(FieldErr::too_long("metadata.annotations", 256 * 1024));
        }
    }
    if let Some(old) = old {
        let old_meta = &old["metadata"];
        for field in ["name", "namespace", "uid"] {
            let (n, o) = (str_at(meta, field), str_at(old_meta, field));
            if n != o {
                errs.push(FieldErr::invalid(
                    &format!("metadata.{field}"),
                    json!(n),
                    "field is immutable",
                ));
            }
        }
    }
    errs
}

fn validate_config_map(obj: &Value) -> Vec<FieldErr> {
    let mut errs = Vec::new();
    let mut total = 0;
    let mut keys = Vec::new();
    for (section, values) in [("data", &obj["data"]), ("binaryData", &obj["binaryData"])] {
        if let Some(map) = values.as_object() {
            for (k, v) in map {
                for m in config_key_errors(k) {
                    errs.push(FieldErr::invalid(section, json!(k), &m));
                }
                if keys.contains(k) {
                    errs.push(FieldErr::invalid(
                        section,
                        json!(k),
                        "duplicate of key present in data",
                    ));
                }
                keys.push(k.clone());
                total += v.as_str().map_or(0, str::len);
            }
        }
    }
    if total > 1024 * 1024 {
        errs.push(FieldErr::too_long("", 1024 * 1024));
    }
    errs
}

fn has_time(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

/// `legacyValidateEvent` + (for events.k8s.io) `ValidateEventCreate`/`Update`,
/// evaluated on the core/v1 storage form with the internal field names.
fn validate_event(strict: bool, ev: &Value, old: Option<&Value>) -> Vec<FieldErr> {
    let mut errs = Vec::new();
    let ns = str_at(&ev["metadata"], "namespace");
    let involved_ns = str_at(&ev["involvedObject"], "namespace");
    let mismatch = || {
        FieldErr::invalid(
            "involvedObject.namespace",
            json!(involved_ns),
            "does not match event.namespace",
        )
    };
    if !has_time(&ev["eventTime"]) {
        if involved_ns.is_empty() {
            if !ns.is_empty() && ns != "default" {
                errs.push(mismatch());
            }
        } else if ns != involved_ns {
            errs.push(mismatch());
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(mismatch());
        }
        let controller = str_at(ev, "reportingComponent");
        if controller.is_empty() {
            errs.push(FieldErr::required("reportingController", ""));
        }
        for m in qualified_name_errors(controller) {
            errs.push(FieldErr::invalid("reportingController", json!(controller), &m));
        }
        let limits = [
            ("reportingInstance", "reportingInstance", 128, true),
            ("action", "action", 128, true),
            ("reason", "reason", 128, true),
            ("message", "message", 1024, false),
        ];
        for (json_field, path, limit, required) in limits {
            let v = str_at(ev, json_field);
            if required && v.is_empty() {
                errs.push(FieldErr::required(path, ""));
            }
            if v.len() > limit {
                errs.push(FieldErr::invalid(
                    path,
                    json!(""),
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
    }
    for m in dns1123_subdomain_errors(ns) {
        errs.push(FieldErr::invalid("namespace", json!(ns), &m));
    }
    if !strict {
        return errs;
    }
    let series_errs = |errs: &mut Vec<FieldErr>| {
        let series = &ev["series"];
        if series.is_object() {
            if series["count"].as_i64().unwrap_or(0) < 2 {
                errs.push(FieldErr::invalid(
                    "series.count",
                    json!(""),
                    "should be at least 2",
                ));
            }
            if !has_time(&series["lastObservedTime"]) {
                errs.push(FieldErr::required("series.lastObservedTime", ""));
            }
        }
    };
    match old {
        None => {
            series_errs(&mut errs);
            if !has_time(&ev["eventTime"]) {
                errs.push(FieldErr::required("eventTime", ""));
            }
            let ty = str_at(ev, "type");
            if ty != "Normal" && ty != "Warning" {
                errs.push(FieldErr::invalid(
                    "type",
                    json!(""),
                    &format!("has invalid value: {ty}"),
                ));
            }
            for f in ["firstTimestamp", "lastTimestamp"] {
                if has_time(&ev[f]) {
                    errs.push(FieldErr::invalid(f, json!(""), "needs to be unset"));
                }
            }
            if ev["count"].as_i64().unwrap_or(0) != 0 {
                errs.push(FieldErr::invalid("count", json!(""), "needs to be unset"));
            }
            if !str_at(&ev["source"], "component").is_empty() || !str_at(&ev["source"], "host").is_empty() {
                errs.push(FieldErr::invalid("source", json!(""), "needs to be unset"));
            }
        }
        Some(old) => {
            if ev["series"] != old["series"] {
                series_errs(&mut errs);
            }
            let immutable = [
                ("involvedObject", "involvedObject"),
                ("reason", "reason"),
                ("message", "message"),
                ("source", "source"),
                ("firstTimestamp", "firstTimestamp"),
                ("lastTimestamp", "lastTimestamp"),
                ("count", "count"),
                ("type", "type"),
                ("eventTime", "eventTime"),
                ("action", "action"),
                ("related", "related"),
                ("reportingComponent", "reportingController"),
                ("reportingInstance", "reportingInstance"),
            ];
            for (json_field, path) in immutable {
                if ev[json_field] != old[json_field] {
                    errs.push(FieldErr::invalid(
                        path,
                        ev[json_field].clone(),
                        "field is immutable",
                    ));
                }
            }
        }
    }
    errs
}

// ---------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct FieldReq {
    path: String,
    value: String,
    equal: bool,
}

fn parse_field_selector(def: &ResourceDef, selector: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut reqs = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once("==") {
            (p, v, true)
        } else if let Some((p, v)) = term.split_once('=') {
            (p, v, true)
        } else {
            return Err(ApiError::bad_request(&format!(
                "invalid selector: '{selector}'; can't understand '{term}'"
            )));
        };
        let path = path.trim();
        if !(path == "metadata.name" || path == "metadata.namespace" || def.fields.contains(&path)) {
            return Err(ApiError::bad_request(&format!(
                "field label not supported: {path}"
            )));
        }
        reqs.push(FieldReq {
            path: path.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(reqs)
}

fn field_value(obj: &Value, path: &str) -> String {
    let path = if path == "source" {
        "source.component"
    } else {
        path
    };
    let mut cur = obj;
    for part in path.split('.') {
        cur = &cur[part];
    }
    match cur {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn parse_label_selector(selector: &str) -> Result<Vec<LabelReq>, ApiError> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    terms.push(cur);
    let bad = |t: &str| {
        ApiError::bad_request(&format!(
            "unable to parse requirement: invalid label selector term {t:?}"
        ))
    };
    let mut reqs = Vec::new();
    for term in terms.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
        let set_values = |rest: &str| -> Result<Vec<String>, ApiError> {
            let rest = rest.trim();
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad(term))?;
            Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
        };
        let req = if let Some(key) = term.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::Ne(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, rest)) = term.split_once(" notin ") {
            LabelReq::NotIn(k.trim().to_owned(), set_values(rest)?)
        } else if let Some((k, rest)) = term.split_once(" in ") {
            LabelReq::In(k.trim().to_owned(), set_values(rest)?)
        } else if term.contains(' ') || term.contains('(') {
            return Err(bad(term));
        } else {
            LabelReq::Exists(term.to_owned())
        };
        reqs.push(req);
    }
    Ok(reqs)
}

fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    reqs.iter().all(|r| match r {
        LabelReq::Eq(k, v) => get(k) == Some(v.as_str()),
        LabelReq::Ne(k, v) => get(k) != Some(v.as_str()),
        LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        LabelReq::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        LabelReq::Exists(k) => get(k).is_some(),
        LabelReq::NotExists(k) => get(k).is_none(),
    })
}

/// Which objects a LIST/WATCH selects.
struct Selection {
    def: &'static ResourceDef,
    namespace: Option<String>,
    fields: Vec<FieldReq>,
    labels: Vec<LabelReq>,
}

impl Selection {
    fn new(
        def: &'static ResourceDef,
        namespace: Option<String>,
        query: &Query,
    ) -> Result<Selection, ApiError> {
        Ok(Selection {
            def,
            namespace,
            fields: parse_field_selector(def, query.get("fieldSelector").unwrap_or_default())?,
            labels: parse_label_selector(query.get("labelSelector").unwrap_or_default())?,
        })
    }

    fn matches(&self, stored: &Value) -> bool {
        let meta = &stored["metadata"];
        if let Some(ns) = &self.namespace
            && str_at(meta, "namespace") != ns
        {
            return false;
        }
        let fields_ok = self
            .fields
            .iter()
            .all(|f| (field_value(stored, &f.path) == f.value) == f.equal);
        fields_ok && labels_match(&self.labels, stored)
    }

    /// `cacheWatcher.convertToWatchEvent`: what a watcher with this selection sees.
    fn watch_event(&self, change: &Change) -> Option<Value> {
        if change.storage != self.def.storage {
            return None;
        }
        let cur = change.ty != ChangeType::Deleted && self.matches(&change.object);
        let old = change.prev.as_ref().is_some_and(|p| self.matches(p));
        let (ty, obj) = match (cur, old) {
            (true, false) => ("ADDED", change.object.clone()),
            (true, true) => ("MODIFIED", change.object.clone()),
            (false, true) => {
                let mut prev = change.prev.clone().unwrap_or(Value::Null);
                set_rv(&mut prev, change.rv);
                ("DELETED", prev)
            }
            (false, false) => return None,
        };
        Some(json!({"type": ty, "object": to_view(self.def, &obj)}))
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("serialize response");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .expect("response")
}

/// A parsed resource URL.
struct Target {
    def: &'static ResourceDef,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Resource(Target),
    Version,
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Route::Unknown,
    };
    let (namespace, resource, name, sub) = match rest {
        ["namespaces", ns, resource] => (Some(*ns), *resource, None, None),
        ["namespaces", ns, resource, name] => (Some(*ns), *resource, Some(*name), None),
        ["namespaces", ns, resource, name, sub] => (Some(*ns), *resource, Some(*name), Some(*sub)),
        [resource] => (None, *resource, None, None),
        _ => return Route::Unknown,
    };
    match def_for_path(group, version, resource) {
        Some(def) => Route::Resource(Target {
            def,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            subresource: sub.map(str::to_owned),
        }),
        None => Route::Unknown,
    }
}

fn k8s_verb(method: &Method, has_name: bool, watch: bool) -> &'static str {
    match (method.as_str(), has_name) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

async fn handle(AxState(inner): AxState<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let watch = method == Method::GET && query.flag("watch");
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let (index, delay) = {
        let mut store = inner.lock();
        store.requests.push(RecordedRequest {
            method: method.to_string(),
            path: path.clone(),
            query: raw_query,
            content_type: content_type.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
            watch,
        });
        (store.requests.len() - 1, store.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let response = respond(
        &inner,
        &method,
        &path,
        &query,
        content_type.as_deref(),
        &body,
        watch,
    );
    let mut store = inner.lock();
    if let Some(r) = store.requests.get_mut(index) {
        r.status = response.status().as_u16();
    }
    response
}

fn respond(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    watch: bool,
) -> Response {
    let target = route(path);
    let injected = inner.lock().take_failure(method.as_str(), path, watch);
    if let Some(code) = injected {
        let (def, name, ns) = match &target {
            Route::Resource(t) => (
                Some(t.def),
                t.name.clone().unwrap_or_default(),
                t.namespace.clone().unwrap_or_default(),
            ),
            _ => (None, String::new(), String::new()),
        };
        let verb = k8s_verb(method, !name.is_empty(), watch);
        return ApiError::injected(code, def, &name, verb, &ns).into_response();
    }
    let target = match target {
        Route::Version => {
            return json_response(
                200,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-apidouble",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
                }),
            );
        }
        Route::Unknown => return ApiError::unknown_path().into_response(),
        Route::Resource(t) => t,
    };
    if target.subresource.is_some() {
        return ApiError::unknown_path().into_response();
    }
    if watch {
        return match start_watch(inner, &target, query) {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
    }
    let result = {
        let mut store = inner.lock();
        dispatch(&mut store, method, &target, query, content_type, body)
    };
    match result {
        Ok((code, value)) => json_response(code, &value),
        Err(e) => e.into_response(),
    }
}

fn dispatch(
    store: &mut Store,
    method: &Method,
    target: &Target,
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let def = target.def;
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    match (method.as_str(), &target.namespace, &target.name) {
        ("GET", _, None) => Ok((200, list(store, target, query)?)),
        ("GET", Some(ns), Some(name)) => store
            .get(def.storage, ns, name)
            .map(|o| (200, to_view(def, o)))
            .ok_or_else(|| ApiError::not_found(def, name)),
        ("POST", Some(ns), None) => {
            if let Ok(peek) = serde_json::from_slice::<Value>(body) {
                let name = str_at(&peek["metadata"], "name").to_owned();
                if !name.is_empty() {
                    store.run_hook(def, ns, &name);
                }
            }
            let (value, name) = create(store, def, ns, body, dry_run)?;
            if !dry_run {
                count_write(store, def, &name);
            }
            Ok((201, value))
        }
        ("PUT", Some(ns), Some(name)) => {
            store.run_hook(def, ns, name);
            let value = replace(store, def, ns, name, body, dry_run)?;
            if !dry_run {
                count_write(store, def, name);
            }
            Ok((200, value))
        }
        ("PATCH", Some(ns), Some(name)) => {
            let kind = patch_kind(content_type)?;
            store.run_hook(def, ns, name);
            let value = patch(store, def, ns, name, kind, body, dry_run)?;
            if !dry_run {
                count_write(store, def, name);
            }
            Ok((200, value))
        }
        ("DELETE", Some(ns), Some(name)) => {
            store.run_hook(def, ns, name);
            let value = delete(store, def, ns, name, body, dry_run)?;
            if !dry_run {
                count_write(store, def, name);
            }
            Ok((200, value))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn count_write(store: &mut Store, def: &ResourceDef, name: &str) {
    *store
        .writes
        .entry((def.storage.to_owned(), name.to_owned()))
        .or_insert(0) += 1;
}

// ---------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------

fn hex_encode(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(store: &Store, target: &Target, query: &Query) -> Result<Value, ApiError> {
    let def = target.def;
    let selection = Selection::new(def, target.namespace.clone(), query)?;
    let rv_param = query.get("resourceVersion").unwrap_or_default();
    if let Some(v) = query.get("resourceVersionMatch").filter(|v| !v.is_empty()) {
        if rv_param.is_empty() {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldErr::forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )],
            ));
        }
        if v != "NotOlderThan" && v != "Exact" {
            return Err(ApiError::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[FieldErr::not_supported(
                    "resourceVersionMatch",
                    json!(v),
                    &["Exact", "NotOlderThan", ""],
                )],
            ));
        }
    }
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut list_rv = store.rv;
    let mut start_after: Option<(String, String)> = None;
    if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
        if !rv_param.is_empty() {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        let decoded: Option<Value> = hex_decode(token).and_then(|s| serde_json::from_str(&s).ok());
        let decoded = decoded.ok_or_else(|| {
            ApiError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            )
        })?;
        list_rv = decoded["rv"].as_u64().unwrap_or(store.rv);
        start_after = Some((
            str_at(&decoded, "ns").to_owned(),
            str_at(&decoded, "name").to_owned(),
        ));
    }
    let mut items: Vec<(&ObjKey, &Value)> = store
        .objects
        .iter()
        .filter(|((s, ns, name), o)| {
            *s == def.storage
                && start_after
                    .as_ref()
                    .is_none_or(|(sns, sname)| (ns.as_str(), name.as_str()) > (sns.as_str(), sname.as_str()))
                && selection.matches(o)
        })
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    let paginate = limit > 0 && (rv_param.is_empty() || start_after.is_some());
    if paginate && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let (_, ns, name) = items[limit - 1].0;
        let token = json!({"rv": list_rv, "ns": ns, "name": name}).to_string();
        metadata["continue"] = json!(hex_encode(&token));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": format!("{}List", def.kind),
        "apiVersion": def.api_version(),
        "metadata": metadata,
        "items": items.into_iter().map(|(_, o)| list_item(def, o)).collect::<Vec<_>>(),
    }))
}

/// Decodes a request body for `def` (as the apiserver's decoder would).
fn parse_body(def: &ResourceDef, body: &[u8]) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("couldn't get version/kind; json parse error: {e}")))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "couldn't get version/kind; json parse error: json: cannot unmarshal non-object into Go value of type struct { APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }",
        ));
    }
    let api_version = str_at(&obj, "apiVersion");
    if !api_version.is_empty() && api_version != def.api_version() {
        return Err(ApiError::bad_request(&format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    let kind = str_at(&obj, "kind");
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(&format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    decode_errors(def, &obj)?;
    set_type_meta(&mut obj, def);
    Ok(obj)
}

/// `rest.EnsureObjectNamespaceMatchesRequestNamespace`.
fn ensure_namespace(obj: &mut Value, namespace: &str) -> Result<(), ApiError> {
    let meta = meta_mut(obj);
    match meta.get("namespace").and_then(Value::as_str).unwrap_or_default() {
        "" => {
            meta.insert("namespace".into(), json!(namespace));
            Ok(())
        }
        ns if ns == namespace => Ok(()),
        _ => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

fn check_name(obj: &Value, name: &str) -> Result<(), ApiError> {
    let obj_name = str_at(&obj["metadata"], "name");
    if obj_name != name {
        return Err(ApiError::bad_request(&format!(
            "the name of the object ({obj_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

/// Resource-specific validation on the storage form (after defaulting).
fn validate_kind(def: &ResourceDef, stored: &Value, old: Option<&Value>) -> Vec<FieldErr> {
    match (def.group, def.resource) {
        ("", "configmaps") => validate_config_map(stored),
        (_, "events") => validate_event(def.repr == Repr::EventsV1, stored, old),
        _ => Vec::new(),
    }
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.resource == "services"
}

fn create(
    store: &mut Store,
    def: &'static ResourceDef,
    namespace: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<(Value, String), ApiError> {
    let mut view = parse_body(def, body)?;
    ensure_namespace(&mut view, namespace)?;
    let mut obj = from_view(def, view);
    // BeforeCreate: system fields, generateName, PrepareForCreate.
    let meta = meta_mut(&mut obj);
    let gen_name = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() && !gen_name.is_empty() {
        loop {
            let candidate = format!("{gen_name}{}", name_suffix());
            if store.get(def.storage, namespace, &candidate).is_none() {
                name = candidate;
                break;
            }
        }
    }
    let meta = meta_mut(&mut obj);
    if !name.is_empty() {
        meta.insert("name".into(), json!(name));
    }
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    let supplied_rv = meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if def.status_subresource
        && let Some(map) = obj.as_object_mut()
    {
        map.remove("status");
    }
    let mut errs = Vec::new();
    if is_service(def) {
        errs.extend(store.prepare_service(&mut obj, None));
        obj["status"] = json!({"loadBalancer": {}});
    }
    errs.extend(validate_kind(def, &obj, None));
    errs.extend(validate_meta(def, &obj, None));
    if !errs.is_empty() {
        return Err(ApiError::invalid_object(def, &name, &errs));
    }
    if !supplied_rv.is_empty() {
        return Err(ApiError::internal_plain(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    if store.get(def.storage, namespace, &name).is_some() {
        return Err(ApiError::already_exists(def, &name));
    }
    if dry_run {
        return Ok((to_view(def, &obj), name));
    }
    let stored = store
        .commit(def.storage, namespace, &name, Some(obj))
        .expect("create stores the object");
    Ok((to_view(def, &stored), name))
}

fn replace(
    store: &mut Store,
    def: &'static ResourceDef,
    namespace: &str,
    name: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Value, ApiError> {
    let mut view = parse_body(def, body)?;
    ensure_namespace(&mut view, namespace)?;
    check_name(&view, name)?;
    let existing = store
        .get(def.storage, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(def, name))?;
    // The object's UID is a precondition of an update (defaultUpdatedObjectInfo).
    let uid = str_at(&view["metadata"], "uid");
    let old_uid = str_at(&existing["metadata"], "uid");
    if !uid.is_empty() && uid != old_uid {
        return Err(ApiError::conflict(
            def,
            name,
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"),
        ));
    }
    update(store, def, namespace, name, view, &existing, dry_run)
}

/// GuaranteedUpdate's tryUpdate: rv precondition, BeforeUpdate, validation, commit.
fn update(
    store: &mut Store,
    def: &'static ResourceDef,
    namespace: &str,
    name: &str,
    view: Value,
    existing: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let rv = str_at(&view["metadata"], "resourceVersion");
    if !rv.is_empty() && rv != rv_of(existing) {
        return Err(ApiError::stale(def, name));
    }
    let mut obj = from_view(def, view);
    let old_meta = existing["metadata"].clone();
    let meta = meta_mut(&mut obj);
    if meta
        .get("uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        meta.insert("uid".into(), old_meta["uid"].clone());
    }
    for field in [
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(field) {
            Some(v) => {
                meta.insert(field.into(), v.clone());
            }
            None => {
                meta.remove(field);
            }
        }
    }
    if def.status_subresource {
        match existing.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(map) = obj.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let mut errs = Vec::new();
    if is_service(def) {
        errs.extend(store.prepare_service(&mut obj, Some(existing)));
    }
    errs.extend(validate_meta(def, &obj, Some(existing)));
    errs.extend(validate_kind(def, &obj, Some(existing)));
    if !errs.is_empty() {
        return Err(ApiError::invalid_object(def, name, &errs));
    }
    if dry_run {
        set_rv_str(&mut obj, rv_of(existing));
        return Ok(to_view(def, &obj));
    }
    let stored = store.commit_update(def.storage, namespace, name, obj);
    Ok(to_view(def, &stored))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKind {
    Json,
    Merge,
    Strategic,
}

fn patch_kind(content_type: Option<&str>) -> Result<PatchKind, ApiError> {
    let ct = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn patch(
    store: &mut Store,
    def: &'static ResourceDef,
    namespace: &str,
    name: &str,
    kind: PatchKind,
    body: &[u8],
    dry_run: bool,
) -> Result<Value, ApiError> {
    let existing = store
        .get(def.storage, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let mut doc = to_view(def, &existing);
    match kind {
        PatchKind::Merge | PatchKind::Strategic => {
            let mut p: Value =
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("Invalid JSON Patch"));
            }
            if kind == PatchKind::Strategic {
                strip_patch_directives(&mut p);
            }
            json_patch::merge(&mut doc, &p);
        }
        PatchKind::Json => {
            let p: json_patch::Patch =
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
            if p.0.len() > 10000 {
                return Err(ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    &format!(
                        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got {}",
                        p.0.len()
                    ),
                    None,
                ));
            }
            json_patch::patch(&mut doc, &p).map_err(|_| ApiError::generic(422))?;
        }
    }
    if !doc.is_object() {
        return Err(ApiError::bad_request("the patched object is not a JSON object"));
    }
    decode_errors(def, &doc)?;
    set_type_meta(&mut doc, def);
    ensure_namespace(&mut doc, namespace)?;
    check_name(&doc, name)?;
    update(store, def, namespace, name, doc, &existing, dry_run)
}

/// Strategic merge patch directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`) are not interpreted by the double: drop them.
fn strip_patch_directives(patch: &mut Value) {
    match patch {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('$'));
            map.values_mut().for_each(strip_patch_directives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_patch_directives),
        _ => {}
    }
}

fn delete(
    store: &mut Store,
    def: &'static ResourceDef,
    namespace: &str,
    name: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Value, ApiError> {
    let existing = store
        .get(def.storage, namespace, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let options: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?
    };
    let pre = &options["preconditions"];
    let meta = &existing["metadata"];
    if let Some(uid) = pre["uid"].as_str()
        && uid != str_at(meta, "uid")
    {
        return Err(ApiError::conflict(
            def,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                str_at(meta, "uid")
            ),
        ));
    }
    if let Some(rv) = pre["resourceVersion"].as_str()
        && rv != rv_of(&existing)
    {
        return Err(ApiError::conflict(
            def,
            name,
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                rv_of(&existing)
            ),
        ));
    }
    let has_finalizers = meta["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if has_finalizers {
        // Graceful: mark for deletion; the object goes once its finalizers are gone.
        let mut marked = existing.clone();
        let m = meta_mut(&mut marked);
        if m.get("deletionTimestamp").is_none_or(Value::is_null) {
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        if dry_run {
            return Ok(to_view(def, &marked));
        }
        let stored = store
            .commit(def.storage, namespace, name, Some(marked))
            .expect("update stores the object");
        return Ok(to_view(def, &stored));
    }
    let gone = if dry_run {
        existing.clone()
    } else {
        store
            .commit(def.storage, namespace, name, None)
            .expect("delete of an existing object")
    };
    if def.return_deleted {
        return Ok(to_view(def, &gone));
    }
    let mut details = resource_details(def, name);
    details["uid"] = json!(str_at(meta, "uid"));
    Ok(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }))
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

struct WatchGuard(Arc<Inner>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

fn event_line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("serialize watch event");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta},
    })
}

struct WatchPlan {
    lines: Vec<Value>,
    end_after_lines: bool,
    rx: broadcast::Receiver<Arc<Change>>,
    start_rv: u64,
    bookmark_interval: Option<Duration>,
}

fn start_watch(inner: &Arc<Inner>, target: &Target, query: &Query) -> Result<Response, ApiError> {
    let def = target.def;
    let mut selection = Selection::new(def, target.namespace.clone(), query)?;
    if let Some(name) = &target.name {
        // Legacy single-object watch (`GET .../{name}?watch=true`).
        selection.fields.push(FieldReq {
            path: "metadata.name".to_owned(),
            value: name.clone(),
            equal: true,
        });
    }
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    let rv_param = query.get("resourceVersion").unwrap_or_default().to_owned();
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    if query.get("sendInitialEvents").is_some() {
        let mut errs = Vec::new();
        if query.get("resourceVersionMatch") != Some("NotOlderThan") {
            errs.push(FieldErr::forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if send_initial && !bookmarks {
            errs.push(FieldErr::forbidden(
                "allowWatchBookmarks",
                "sendInitialEvents requires setting allowWatchBookmarks to true",
            ));
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid("meta.k8s.io", "ListOptions", "", &errs));
        }
    }
    let requested: Option<u64> = match rv_param.as_str() {
        "" | "0" => None,
        other => Some(
            other
                .parse()
                .map_err(|e| ApiError::bad_request(&format!("invalid resource version: {e}")))?,
        ),
    };

    let plan = {
        let store = inner.lock();
        let mut lines = Vec::new();
        let mut end_after_lines = false;
        let initial = send_initial || requested.is_none();
        if initial {
            for (_, obj) in store
                .objects
                .iter()
                .filter(|((s, _, _), o)| *s == def.storage && selection.matches(o))
            {
                lines.push(json!({"type": "ADDED", "object": to_view(def, obj)}));
            }
            if send_initial {
                lines.push(bookmark(def, store.rv, true));
            }
        } else if let Some(from) = requested {
            if from < store.compacted_rv {
                lines.push(json!({
                    "type": "ERROR",
                    "object": status_body(
                        410,
                        "Expired",
                        &format!("too old resource version: {from} ({})", store.compacted_rv),
                        None,
                    ),
                }));
                end_after_lines = true;
            } else {
                for change in store.history.iter().filter(|c| c.rv > from) {
                    if let Some(ev) = selection.watch_event(change) {
                        lines.push(ev);
                    }
                }
            }
        }
        WatchPlan {
            lines,
            end_after_lines,
            rx: store.tx.subscribe(),
            start_rv: store.rv,
            bookmark_interval: if bookmarks { store.bookmark_interval } else { None },
        }
    };
    let token = inner.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    inner.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(inner.clone());
    tokio::spawn(run_watch(guard, selection, plan, token, timeout, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("watch response"))
}

async fn run_watch(
    guard: WatchGuard,
    selection: Selection,
    plan: WatchPlan,
    token: CancellationToken,
    timeout: Option<Duration>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let _guard = guard;
    let WatchPlan {
        lines,
        end_after_lines,
        mut rx,
        start_rv,
        bookmark_interval,
    } = plan;
    for line in &lines {
        if tx.send(Ok(event_line(line))).await.is_err() {
            return;
        }
    }
    if end_after_lines {
        return;
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = bookmark_interval.map(|i| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + i, i);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut last_rv = start_rv;
    loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = token.cancelled() => {
                let _ = tx
                    .send(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch cut by the test")))
                    .await;
                return;
            }
            () = expired => return,
            () = tx.closed() => return,
            () = tick => {
                if tx.send(Ok(event_line(&bookmark(selection.def, last_rv, false)))).await.is_err() {
                    return;
                }
            }
            received = rx.recv() => match received {
                Ok(change) => {
                    if change.rv <= last_rv {
                        continue;
                    }
                    last_rv = change.rv;
                    if let Some(ev) = selection.watch_event(&change)
                        && tx.send(Ok(event_line(&ev))).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher that cannot keep up is terminated, as the apiserver does.
                Err(_) => return,
            },
        }
    }
}

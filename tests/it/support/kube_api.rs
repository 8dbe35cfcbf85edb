//! In-process double of the Kubernetes API server, limited to what the
//! watchdog and its tests call, so that a new kind of API call in the product
//! fails a test (404, 405, 400 or 415) instead of passing against a guess:
//!
//! - Services (core/v1): list and watch by `fieldSelector=metadata.name=`
//!   (discovery); create, merge patch and delete (test set-up).
//! - ConfigMaps (core/v1): get and merge patch, with `metadata.resourceVersion`
//!   in the patch body as a precondition (promotion, failback); create and
//!   delete (test set-up).
//! - Events (events.k8s.io/v1, the only API kube-runtime's `Recorder` uses):
//!   create and merge patch (a repeated Event becomes a series); list (tests).
//!
//! It mirrors the apiserver's observable contract for those: `Status` bodies
//! and codes (404, 409 AlreadyExists/Conflict, 422 Invalid), no-op writes that
//! keep the resourceVersion, the validation a cluster would apply to what the
//! tests write (object names, Service ports, events.k8s.io rules such as the
//! 1 kB note), and watch replay from a resourceVersion with `410 Expired` once
//! the history was compacted.
//!
//! Faults for the tests: injected status codes ([`ApiDouble::fail_next`]),
//! slow answers ([`ApiDouble::set_delay`]), a concurrent writer between a read
//! and a write ([`ApiDouble::before_next_write`]), history compaction
//! ([`ApiDouble::compact_history`]) and cut watch streams
//! ([`ApiDouble::cut_watches`]).
//!
//! Not emulated (a cluster differs): other kinds, other patch types (415),
//! PUT, label selectors, field selectors other than `metadata.name`, server
//! defaults (clusterIP, targetPort, ...), managedFields, namespaces as objects,
//! authn/authz, BOOKMARKs, `timeoutSeconds` (watches stay open) and streaming
//! lists (`sendInitialEvents`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// One HTTP request as the double received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// E.g. `/api/v1/namespaces/default/configmaps/patroni-config`.
    pub path: String,
    /// Raw (percent-encoded) query string without the `?`; may be empty.
    pub query: String,
    pub content_type: Option<String>,
    pub body: String,
    /// The HTTP status answered (0 while still being handled).
    pub status: u16,
    /// A `watch=true` request.
    pub watch: bool,
}

impl RecordedRequest {
    /// A decoded query parameter (first occurrence).
    pub fn query_param(&self, key: &str) -> Option<String> {
        Query::parse(&self.query).get(key).map(str::to_owned)
    }
}

/// The running API double. Dropping it stops the server and ends open watches.
pub struct ApiDouble {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl ApiDouble {
    /// Starts the double on `127.0.0.1:<random port>`.
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

    /// E.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client as the watchdog builds it: kube's own retry of 429/503/504
    /// off, so every injected failure reaches the caller.
    pub fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.url().parse().expect("double URL is a valid URI"));
        config.default_namespace = "default".to_owned();
        config.default_retry = false;
        kube::Client::try_from(config).expect("kube client for the API double")
    }

    /// The next `n` requests with this method (`""` = any; watches are
    /// `GET`s) whose path contains `path_contains` fail with `status` and the
    /// `Status` body a cluster would send.
    pub fn fail_next(&self, method: &str, path_contains: &str, n: usize, status: u16) {
        self.inner.lock().failures.push(FailRule {
            method: (!method.is_empty()).then(|| method.to_ascii_uppercase()),
            path_contains: path_contains.to_owned(),
            remaining: n,
            status,
        });
    }

    /// Every request waits this long before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Runs `hook` on the stored object (`resource`: `"configmaps"`,
    /// `"services"` or `"events"`) right before the next write request to it
    /// is handled, as its own write: a concurrent writer between a client's
    /// read and its conditional write, which then fails with 409.
    pub fn before_next_write<F>(&self, resource: &str, namespace: &str, name: &str, hook: F)
    where
        F: FnOnce(&mut Option<Value>) + Send + 'static,
    {
        let kind = Kind::by_resource(resource);
        self.inner.lock().hooks.push(PendingHook {
            key: (kind, namespace.to_owned(), name.to_owned()),
            hook: Box::new(hook),
        });
    }

    /// Forgets the watch history, as an etcd compaction does: a watch
    /// (re)started from an older resourceVersion gets `410 Expired`.
    pub fn compact_history(&self) {
        let mut store = self.inner.lock();
        store.history.clear();
        store.compacted_rv = store.rv;
    }

    /// Ends every open watch stream abruptly, mid-body.
    pub fn cut_watches(&self) {
        let mut cut = self.inner.cut.lock().unwrap_or_else(|e| e.into_inner());
        cut.cancel();
        *cut = CancellationToken::new();
    }

    pub fn open_watches(&self) -> usize {
        self.inner.open_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watch streams are open; false on timeout.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.open_watches() < n {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.inner.lock().requests.clear();
    }
}

impl Drop for ApiDouble {
    fn drop(&mut self) {
        self.server.abort();
        self.inner.cut.lock().unwrap_or_else(|e| e.into_inner()).cancel();
    }
}

// ---------------------------------------------------------------------------
// Kinds
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    ConfigMap,
    Service,
    Event,
}

impl Kind {
    fn from_path(group: &str, version: &str, resource: &str) -> Option<Kind> {
        match (group, version, resource) {
            ("", "v1", "configmaps") => Some(Kind::ConfigMap),
            ("", "v1", "services") => Some(Kind::Service),
            ("events.k8s.io", "v1", "events") => Some(Kind::Event),
            _ => None,
        }
    }

    fn by_resource(resource: &str) -> Kind {
        match resource {
            "configmaps" => Kind::ConfigMap,
            "services" => Kind::Service,
            "events" => Kind::Event,
            other => panic!("kube API double: no resource {other:?}"),
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::ConfigMap | Kind::Service => "v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::Event => "Event",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Kind::ConfigMap | Kind::Service => "",
            Kind::Event => "events.k8s.io",
        }
    }

    fn resource(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Service => "services",
            Kind::Event => "events",
        }
    }

    /// `GroupResource.String()`, as in a cluster's messages.
    fn group_resource(self) -> String {
        match self.group() {
            "" => self.resource().to_owned(),
            group => format!("{}.{group}", self.resource()),
        }
    }
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

type Key = (Kind, String, String);

/// One committed change.
struct Change {
    rv: u64,
    kind: Kind,
    /// `None`: deleted.
    new: Option<Value>,
    old: Option<Value>,
}

struct FailRule {
    method: Option<String>,
    path_contains: String,
    remaining: usize,
    status: u16,
}

/// A concurrent writer: changes, creates (`Some`) or deletes (`None`) the object.
type WriteHook = Box<dyn FnOnce(&mut Option<Value>) + Send + 'static>;

struct PendingHook {
    key: Key,
    hook: WriteHook,
}

struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Expired.
    compacted_rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Arc<Change>>,
    tx: broadcast::Sender<Arc<Change>>,
    failures: Vec<FailRule>,
    delay: Duration,
    requests: Vec<RecordedRequest>,
    hooks: Vec<PendingHook>,
}

impl Store {
    fn new(tx: broadcast::Sender<Arc<Change>>) -> Store {
        Store {
            rv: 1,
            compacted_rv: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            tx,
            failures: Vec::new(),
            delay: Duration::ZERO,
            requests: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// Writes `new` or deletes (`None`). A write identical to the stored
    /// object changes nothing, not even the resourceVersion, as in etcd3
    /// storage. Returns the stored (or last) state.
    fn commit(&mut self, key: &Key, new: Option<Value>) -> Option<Value> {
        let old = self.objects.get(key).cloned();
        let stored = match (&old, new) {
            (None, None) => return None,
            (Some(old), None) => {
                self.objects.remove(key);
                self.rv += 1;
                let mut gone = old.clone();
                set_rv(&mut gone, self.rv);
                gone
            }
            (old, Some(mut new)) => {
                if let Some(old) = old {
                    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                    if &new == old {
                        return Some(new);
                    }
                }
                self.rv += 1;
                set_rv(&mut new, self.rv);
                self.objects.insert(key.clone(), new.clone());
                new
            }
        };
        let change = Arc::new(Change {
            rv: self.rv,
            kind: key.0,
            new: self.objects.get(key).cloned(),
            old,
        });
        self.history.push(change.clone());
        let _ = self.tx.send(change);
        Some(stored)
    }

    fn run_hook(&mut self, key: &Key) {
        let Some(i) = self.hooks.iter().position(|h| &h.key == key) else {
            return;
        };
        let hook = self.hooks.remove(i).hook;
        let before = self.objects.get(key).cloned();
        let mut object = before.clone();
        hook(&mut object);
        if object != before {
            self.commit(key, object);
        }
    }

    fn take_failure(&mut self, method: &str, path: &str) -> Option<u16> {
        let rule = self.failures.iter_mut().find(|r| {
            r.remaining > 0
                && r.method.as_deref().is_none_or(|m| m == method)
                && path.contains(&r.path_contains)
        })?;
        rule.remaining -= 1;
        let status = rule.status;
        self.failures.retain(|r| r.remaining > 0);
        Some(status)
    }
}

fn set_rv(obj: &mut Value, rv: u64) {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
}

fn rv_of(obj: &Value) -> &str {
    str_at(&obj["metadata"], "resourceVersion")
}

fn str_at<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj[field].as_str().unwrap_or_default()
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn new_uid() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    format!(
        "00000000-0000-4000-8000-{:012x}",
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// What `kind`'s API returns: the stored object with its type.
fn with_type(kind: Kind, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(kind.api_version());
    obj["kind"] = json!(kind.kind());
    obj
}

// ---------------------------------------------------------------------------
// Errors (metav1.Status)
// ---------------------------------------------------------------------------

struct ApiError {
    code: u16,
    body: Value,
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

fn details(kind: Kind, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind.resource()});
    if !kind.group().is_empty() {
        d["group"] = json!(kind.group());
    }
    d
}

impl ApiError {
    fn new(code: u16, reason: &str, message: &str, details: Option<Value>) -> ApiError {
        ApiError {
            code,
            body: status_body(code, reason, message, details),
        }
    }

    fn not_found(kind: Kind, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" not found", kind.group_resource());
        ApiError::new(404, "NotFound", &message, Some(details(kind, name)))
    }

    fn unknown_path() -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource (not emulated by the API double)",
            Some(json!({})),
        )
    }

    fn already_exists(kind: Kind, name: &str) -> ApiError {
        let message = format!("{} \"{name}\" already exists", kind.group_resource());
        ApiError::new(409, "AlreadyExists", &message, Some(details(kind, name)))
    }

    fn stale(kind: Kind, name: &str) -> ApiError {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            kind.group_resource()
        );
        ApiError::new(409, "Conflict", &message, Some(details(kind, name)))
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
        let message = format!(
            "the body of the request was in an unknown format - the API double accepts \
             application/merge-patch+json only, not {content_type:?}"
        );
        ApiError::new(415, "UnsupportedMediaType", &message, None)
    }

    /// `errors.NewInvalid`: 422 with one cause per field error.
    fn invalid(kind: Kind, name: &str, errs: &[(String, String)]) -> ApiError {
        let qualified = match kind.group() {
            "" => kind.kind().to_owned(),
            group => format!("{}.{group}", kind.kind()),
        };
        let summary: Vec<String> = errs.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let summary = match summary.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut d = details(kind, name);
        d["kind"] = json!(kind.kind());
        d["causes"] = errs
            .iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
            .collect();
        ApiError::new(
            422,
            "Invalid",
            &format!("{qualified} \"{name}\" is invalid: {summary}"),
            Some(d),
        )
    }

    /// What a cluster sends with these codes.
    fn injected(code: u16, kind: Option<Kind>, name: &str) -> ApiError {
        match (code, kind) {
            (404, Some(k)) if !name.is_empty() => ApiError::not_found(k, name),
            (409, Some(k)) if !name.is_empty() => ApiError::stale(k, name),
            (410, _) => ApiError::new(410, "Expired", "too old resource version", None),
            (429, _) => ApiError::new(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({"retryAfterSeconds": 1})),
            ),
            (503, _) => ApiError::new(
                503,
                "ServiceUnavailable",
                "the server is currently unable to handle the request",
                None,
            ),
            (504, _) => ApiError::new(
                504,
                "Timeout",
                "Timeout: request did not complete within requested timeout - context deadline exceeded",
                Some(json!({})),
            ),
            (code, _) if code >= 500 => ApiError::new(
                code,
                "InternalError",
                "Internal error occurred: injected failure",
                Some(json!({"causes": [{"message": "injected failure"}]})),
            ),
            (code, _) => ApiError::new(code, "", "injected failure", None),
        }
    }

    fn into_response(self) -> Response {
        json_response(self.code, &self.body)
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

type FieldErrs = Vec<(String, String)>;

fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Services need a DNS-1035 label, the others a DNS-1123 subdomain.
fn validate_name(kind: Kind, name: &str, errs: &mut FieldErrs) {
    let ok = match kind {
        Kind::Service => is_dns1123_label(name) && name.as_bytes()[0].is_ascii_lowercase(),
        Kind::ConfigMap | Kind::Event => name.len() <= 253 && name.split('.').all(is_dns1123_label),
    };
    if !ok {
        errs.push(("metadata.name".into(), format!("Invalid value: {name:?}")));
    }
}

fn validate_service(svc: &Value, errs: &mut FieldErrs) {
    let ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        errs.push(("spec.ports".into(), "Required value".into()));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let number = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errs.push((
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            ));
        }
        let name = str_at(p, "name");
        if ports.len() > 1 && name.is_empty() {
            errs.push((format!("spec.ports[{i}].name"), "Required value".into()));
        } else if !name.is_empty() && names.contains(&name) {
            errs.push((
                format!("spec.ports[{i}].name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        names.push(name);
    }
}

/// events.k8s.io/v1 `ValidateEventCreate`/`ValidateEventUpdate`: what
/// kube-runtime's `Recorder` must get right.
fn validate_event(ev: &Value, old: Option<&Value>, errs: &mut FieldErrs) {
    let mut err = |field: &str, message: String| errs.push((field.to_owned(), message));
    let series = &ev["series"];
    if series.is_object() {
        if series["count"].as_i64().unwrap_or(0) < 2 {
            err("series.count", "should be at least 2".into());
        }
        if str_at(series, "lastObservedTime").is_empty() {
            err("series.lastObservedTime", "Required value".into());
        }
    }
    if let Some(old) = old {
        for field in [
            "regarding",
            "related",
            "reason",
            "note",
            "type",
            "eventTime",
            "action",
            "reportingController",
            "reportingInstance",
        ] {
            if ev[field] != old[field] {
                err(field, "field is immutable".into());
            }
        }
        return;
    }
    if str_at(ev, "eventTime").is_empty() {
        err("eventTime", "Required value".into());
    }
    if !matches!(str_at(ev, "type"), "Normal" | "Warning") {
        err("type", format!("Unsupported value: {:?}", str_at(ev, "type")));
    }
    for (field, limit) in [
        ("reportingController", 253),
        ("reportingInstance", 128),
        ("action", 128),
        ("reason", 128),
    ] {
        let v = str_at(ev, field);
        if v.is_empty() {
            err(field, "Required value".into());
        } else if v.len() > limit {
            err(field, format!("can have at most {limit} characters"));
        }
    }
    if str_at(ev, "note").len() > 1024 {
        err("note", "can have at most 1024 characters".into());
    }
    let regarding_ns = str_at(&ev["regarding"], "namespace");
    if !regarding_ns.is_empty() && regarding_ns != str_at(&ev["metadata"], "namespace") {
        err("regarding.namespace", "does not match event.namespace".into());
    }
}

fn validate(kind: Kind, obj: &Value, old: Option<&Value>) -> FieldErrs {
    let mut errs = Vec::new();
    match kind {
        Kind::Service => validate_service(obj, &mut errs),
        Kind::Event => validate_event(obj, old, &mut errs),
        Kind::ConfigMap => {}
    }
    errs
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
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

/// A namespaced resource URL.
struct Target {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<String> = path.trim_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", ns, resource] => (*ns, *resource, None),
        ["namespaces", ns, resource, name] => (*ns, *resource, Some(*name)),
        _ => return None,
    };
    Some(Target {
        kind: Kind::from_path(group, version, resource)?,
        namespace: namespace.to_owned(),
        name: name.map(str::to_owned),
    })
}

async fn handle(AxState(inner): AxState<Arc<Inner>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let query = Query::parse(&raw_query);
    let watch = parts.method == Method::GET && matches!(query.get("watch"), Some("true" | "1"));
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (index, delay) = {
        let mut store = inner.lock();
        store.requests.push(RecordedRequest {
            method: parts.method.to_string(),
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
        &parts.method,
        &path,
        &query,
        content_type.as_deref(),
        &body,
        watch,
    )
    .unwrap_or_else(ApiError::into_response);
    if let Some(r) = inner.lock().requests.get_mut(index) {
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
) -> Result<Response, ApiError> {
    let target = route(path);
    if let Some(code) = inner.lock().take_failure(method.as_str(), path) {
        let (kind, name) = target
            .as_ref()
            .map(|t| (Some(t.kind), t.name.clone().unwrap_or_default()))
            .unwrap_or_default();
        return Err(ApiError::injected(code, kind, &name));
    }
    let target = target.ok_or_else(ApiError::unknown_path)?;
    let selection = Selection::new(&target, query)?;
    if watch {
        return start_watch(inner, selection, query);
    }
    let mut store = inner.lock();
    let (code, value) = match (method.as_str(), target.name.as_deref()) {
        ("GET", None) => (200, list(&store, &selection)),
        ("GET", Some(name)) => {
            let key = (target.kind, target.namespace.clone(), name.to_owned());
            let obj = store.objects.get(&key).cloned();
            let obj = obj.ok_or_else(|| ApiError::not_found(target.kind, name))?;
            (200, with_type(target.kind, obj))
        }
        ("POST", None) => (201, create(&mut store, &target, body)?),
        ("PATCH", Some(name)) => {
            let ct = content_type.unwrap_or_default();
            if ct.split(';').next().unwrap_or_default().trim() != "application/merge-patch+json" {
                return Err(ApiError::unsupported_media_type(ct));
            }
            (200, patch(&mut store, &target, name, body)?)
        }
        ("DELETE", Some(name)) => (200, delete(&mut store, &target, name)?),
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok(json_response(code, &value))
}

// ---------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------

/// Which objects a LIST or WATCH selects: one namespace, and one name at most.
struct Selection {
    kind: Kind,
    namespace: String,
    name: Option<String>,
}

impl Selection {
    fn new(target: &Target, query: &Query) -> Result<Selection, ApiError> {
        let mut name = None;
        for term in query.get("fieldSelector").unwrap_or_default().split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let value = term
                .strip_prefix("metadata.name==")
                .or_else(|| term.strip_prefix("metadata.name="))
                .ok_or_else(|| {
                    ApiError::bad_request(&format!(
                        "field selector {term:?} is not emulated by the API double (metadata.name= only)"
                    ))
                })?;
            name = Some(value.to_owned());
        }
        if query.get("labelSelector").is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request(
                "label selectors are not emulated by the API double",
            ));
        }
        Ok(Selection {
            kind: target.kind,
            namespace: target.namespace.clone(),
            name,
        })
    }

    fn matches(&self, key: &Key) -> bool {
        key.0 == self.kind && key.1 == self.namespace && self.name.as_ref().is_none_or(|n| *n == key.2)
    }

    fn matches_object(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        self.matches(&(
            self.kind,
            str_at(meta, "namespace").to_owned(),
            str_at(meta, "name").to_owned(),
        ))
    }

    /// What a watcher with this selection sees of `change`.
    fn watch_event(&self, change: &Change) -> Option<Value> {
        if change.kind != self.kind {
            return None;
        }
        let now = change.new.as_ref().filter(|o| self.matches_object(o));
        let before = change.old.as_ref().filter(|o| self.matches_object(o));
        let (ty, obj) = match (now, before) {
            (Some(o), None) => ("ADDED", o.clone()),
            (Some(o), Some(_)) => ("MODIFIED", o.clone()),
            (None, Some(o)) => {
                let mut gone = o.clone();
                set_rv(&mut gone, change.rv);
                ("DELETED", gone)
            }
            (None, None) => return None,
        };
        Some(json!({"type": ty, "object": with_type(self.kind, obj)}))
    }
}

/// Items carry no `kind`/`apiVersion`, as from a cluster.
fn list(store: &Store, selection: &Selection) -> Value {
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(key, _)| selection.matches(key))
        .map(|(_, o)| {
            let mut item = o.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            item
        })
        .collect();
    json!({
        "apiVersion": selection.kind.api_version(),
        "kind": format!("{}List", selection.kind.kind()),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    })
}

fn parse_object(kind: Kind, body: &[u8]) -> Result<Value, ApiError> {
    let obj: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("couldn't get version/kind; json parse error: {e}")))?;
    if !obj.is_object() {
        return Err(ApiError::bad_request("the request body is not a JSON object"));
    }
    for (field, expected) in [("apiVersion", kind.api_version()), ("kind", kind.kind())] {
        let given = str_at(&obj, field);
        if !given.is_empty() && given != expected {
            return Err(ApiError::bad_request(&format!(
                "the {field} in the data ({given}) does not match the expected {field} ({expected})"
            )));
        }
    }
    Ok(obj)
}

fn create(store: &mut Store, target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let kind = target.kind;
    let mut obj = with_type(kind, parse_object(kind, body)?);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let namespace = str_at(&obj["metadata"], "namespace");
    if !namespace.is_empty() && namespace != target.namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = str_at(&obj["metadata"], "name").to_owned();
    let meta = &mut obj["metadata"];
    meta["namespace"] = json!(target.namespace);
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now_rfc3339());
    let mut errs = Vec::new();
    validate_name(kind, &name, &mut errs);
    errs.extend(validate(kind, &obj, None));
    if !errs.is_empty() {
        return Err(ApiError::invalid(kind, &name, &errs));
    }
    let key = (kind, target.namespace.clone(), name.clone());
    store.run_hook(&key);
    if store.objects.contains_key(&key) {
        return Err(ApiError::already_exists(kind, &name));
    }
    Ok(store.commit(&key, Some(obj)).expect("a create stores the object"))
}

/// A JSON merge patch (RFC 7386). A `metadata.resourceVersion` in it is a
/// precondition, as in a cluster.
fn patch(store: &mut Store, target: &Target, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    let kind = target.kind;
    let key = (kind, target.namespace.clone(), name.to_owned());
    store.run_hook(&key);
    let existing = store
        .objects
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let mut doc = existing.clone();
    json_patch::merge(&mut doc, &patch);
    for field in ["name", "namespace", "uid"] {
        if doc["metadata"][field] != existing["metadata"][field] {
            return Err(ApiError::bad_request(&format!(
                "metadata.{field} of the patched object does not match the object on the server"
            )));
        }
    }
    if rv_of(&doc) != rv_of(&existing) {
        return Err(ApiError::stale(kind, name));
    }
    let errs = validate(kind, &doc, Some(&existing));
    if !errs.is_empty() {
        return Err(ApiError::invalid(kind, name, &errs));
    }
    Ok(store.commit(&key, Some(doc)).expect("a patch stores the object"))
}

fn delete(store: &mut Store, target: &Target, name: &str) -> Result<Value, ApiError> {
    let key = (target.kind, target.namespace.clone(), name.to_owned());
    store.run_hook(&key);
    let gone = store
        .commit(&key, None)
        .ok_or_else(|| ApiError::not_found(target.kind, name))?;
    let mut d = details(target.kind, name);
    d["uid"] = gone["metadata"]["uid"].clone();
    Ok(json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "details": d}))
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

fn event_line(event: &Value) -> Result<Bytes, std::io::Error> {
    let mut bytes = event.to_string().into_bytes();
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

/// Without a resourceVersion: the current objects, then live changes. From
/// one: the changes after it from the history, or `410 Expired` when the
/// history no longer reaches back that far.
fn start_watch(inner: &Arc<Inner>, selection: Selection, query: &Query) -> Result<Response, ApiError> {
    if query.get("sendInitialEvents").is_some() {
        return Err(ApiError::bad_request(
            "streaming lists are not emulated by the API double",
        ));
    }
    let from: Option<u64> = match query.get("resourceVersion").unwrap_or_default() {
        "" | "0" => None,
        rv => Some(
            rv.parse()
                .map_err(|e| ApiError::bad_request(&format!("invalid resource version: {e}")))?,
        ),
    };
    let (lines, expired, rx, start_rv) = {
        let store = inner.lock();
        let mut lines = Vec::new();
        let mut expired = false;
        match from {
            None => {
                for (_, obj) in store.objects.iter().filter(|(k, _)| selection.matches(k)) {
                    lines.push(json!({"type": "ADDED", "object": with_type(selection.kind, obj.clone())}));
                }
            }
            Some(rv) if rv < store.compacted_rv => {
                let message = format!("too old resource version: {rv} ({})", store.compacted_rv);
                lines.push(json!({"type": "ERROR", "object": status_body(410, "Expired", &message, None)}));
                expired = true;
            }
            Some(rv) => lines.extend(
                store
                    .history
                    .iter()
                    .filter(|c| c.rv > rv)
                    .filter_map(|c| selection.watch_event(c)),
            ),
        }
        (lines, expired, store.tx.subscribe(), store.rv)
    };
    let cut = inner.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (tx, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    inner.open_watches.fetch_add(1, Ordering::SeqCst);
    let guard = WatchGuard(inner.clone());
    tokio::spawn(async move {
        let _guard = guard;
        for line in &lines {
            if tx.send(event_line(line)).await.is_err() {
                return;
            }
        }
        if !expired {
            stream_changes(selection, rx, start_rv, cut, tx).await;
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(
            body,
        )))
        .expect("watch response"))
}

async fn stream_changes(
    selection: Selection,
    mut rx: broadcast::Receiver<Arc<Change>>,
    mut last_rv: u64,
    cut: CancellationToken,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    loop {
        tokio::select! {
            () = cut.cancelled() => {
                let cut = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "watch cut by the test");
                let _ = tx.send(Err(cut)).await;
                return;
            }
            () = tx.closed() => return,
            received = rx.recv() => match received {
                Ok(change) if change.rv > last_rv => {
                    last_rv = change.rv;
                    if let Some(ev) = selection.watch_event(&change)
                        && tx.send(event_line(&ev)).await.is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                // A watcher that cannot keep up is ended, as by the apiserver.
                Err(_) => return,
            },
        }
    }
}

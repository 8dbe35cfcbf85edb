//! Where the Kubernetes contract tests run: the in-process API double, or a
//! real cluster when `WATCHDOG_TEST_KUBECONFIG` names a kubeconfig (objects
//! go to `WATCHDOG_TEST_NAMESPACE`, default `default`, under unique names).
//! Also a stand-in for the local Patroni REST API.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::kube_api::ApiDouble;

pub enum KubeEnv {
    Double(ApiDouble),
    Real { client: kube::Client, namespace: String },
}

impl KubeEnv {
    pub async fn double() -> KubeEnv {
        KubeEnv::Double(ApiDouble::start().await)
    }

    /// `None`, with a notice, when no cluster is configured.
    pub async fn real(test: &str) -> Option<KubeEnv> {
        let Ok(path) = std::env::var("WATCHDOG_TEST_KUBECONFIG") else {
            eprintln!("skipped {test} against a real cluster: set WATCHDOG_TEST_KUBECONFIG to run it");
            return None;
        };
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read WATCHDOG_TEST_KUBECONFIG");
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig");
        config.default_retry = false;
        let client = kube::Client::try_from(config).expect("client");
        let namespace = std::env::var("WATCHDOG_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
        Some(KubeEnv::Real { client, namespace })
    }

    /// A client as the watchdog builds it: no automatic retries.
    pub fn client(&self) -> kube::Client {
        match self {
            KubeEnv::Double(d) => d.client(),
            KubeEnv::Real { client, .. } => client.clone(),
        }
    }

    pub fn namespace(&self) -> &str {
        match self {
            KubeEnv::Double(_) => "default",
            KubeEnv::Real { namespace, .. } => namespace,
        }
    }

    pub fn api_double(&self) -> Option<&ApiDouble> {
        match self {
            KubeEnv::Double(d) => Some(d),
            KubeEnv::Real { .. } => None,
        }
    }

    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client(), self.namespace())
    }

    pub fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client(), self.namespace())
    }

    pub async fn create_service(&self, name: &str, ports: &[(Option<&str>, u16)]) {
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: n.map(str::to_string),
                            port: i32::from(*p),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        };
        let _ = self.services().delete(name, &DeleteParams::default()).await;
        self.services()
            .create(&PostParams::default(), &svc)
            .await
            .expect("create Service");
    }

    /// Replaces the Service's ports with one `postgres` port, as a re-synced
    /// Transport Service claim does.
    pub async fn set_service_port(&self, name: &str, port: u16) {
        let patch = json!({"spec": {"ports": [{"name": "postgres", "port": port, "targetPort": port}]}});
        self.services()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("patch Service");
    }

    pub async fn delete_service(&self, name: &str) {
        self.services()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete Service");
    }

    /// A ConfigMap shaped like Patroni's `<scope>-config`, with the labels and
    /// annotations Patroni keeps there.
    pub async fn create_patroni_config(&self, name: &str, config: &str, extra: &[(&str, &str)]) -> ConfigMap {
        let mut annotations: BTreeMap<String, String> = [
            ("config", config),
            ("initialize", "7312345678901234567"),
            (
                "history",
                r#"[[1,25165984,"no recovery target specified","2026-11-01T10:00:00+00:00","patroni-0"]]"#,
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            annotations.insert(k.to_string(), v.to_string());
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    [
                        ("application", "spilo"),
                        ("cluster-name", "patroni"),
                        ("app.kubernetes.io/managed-by", "Helm"),
                    ]
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ),
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = self.configmaps().delete(name, &DeleteParams::default()).await;
        self.configmaps()
            .create(&PostParams::default(), &cm)
            .await
            .expect("create ConfigMap")
    }

    pub async fn configmap(&self, name: &str) -> ConfigMap {
        self.configmaps().get(name).await.expect("get ConfigMap")
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.configmaps()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate ConfigMap");
    }

    /// Events about the named object, from either Events API.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client(), self.namespace());
        api.list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }
}

/// The local Patroni REST API, answering `GET /patroni` with a fixed role,
/// and `GET`/`PATCH /config` over a dynamic config kept here (a `PATCH`
/// merges, null removes a key, as Patroni does).
pub struct FakePatroni {
    pub url: String,
    role: Arc<Mutex<String>>,
    config: Arc<Mutex<Value>>,
    shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Clone)]
struct Fake {
    role: Arc<Mutex<String>>,
    config: Arc<Mutex<Value>>,
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                if v.is_null() {
                    into.remove(k);
                } else {
                    merge(into.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

impl FakePatroni {
    pub async fn start(role: &str) -> FakePatroni {
        Self::with_config(role, json!({})).await
    }

    pub async fn with_config(role: &str, config: Value) -> FakePatroni {
        let fake = Fake {
            role: Arc::new(Mutex::new(role.to_string())),
            config: Arc::new(Mutex::new(config)),
        };
        let (role, config) = (fake.role.clone(), fake.config.clone());
        let app = axum::Router::new()
            .route(
                "/patroni",
                get(|State(f): State<Fake>| async move {
                    let role = f.role.lock().expect("role").clone();
                    Json(json!({"state": "running", "role": role, "server_version": 150018}))
                }),
            )
            .route(
                "/config",
                get(|State(f): State<Fake>| async move { Json(f.config.lock().expect("config").clone()) })
                    .patch(|State(f): State<Fake>, Json(patch): Json<Value>| async move {
                        let mut c = f.config.lock().expect("config");
                        merge(&mut c, &patch);
                        Json(c.clone())
                    }),
            )
            .with_state(fake);
        let (addr, shutdown) = crate::support::serve(app).await;
        let url = format!("http://{addr}");
        FakePatroni {
            url,
            role,
            config,
            shutdown,
        }
    }

    /// What `GET /patroni` answers as the role from now on (a switchover).
    pub fn set_role(&self, role: &str) {
        *self.role.lock().expect("role") = role.to_string();
    }

    /// The dynamic config as it is now.
    pub fn config(&self) -> Value {
        self.config.lock().expect("config").clone()
    }
}

impl Drop for FakePatroni {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A unique object name per test, so tests can share a real namespace.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", fastrand::u32(..))
}

pub fn annotations(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.metadata.annotations.clone().unwrap_or_default()
}

pub fn labels(cm: &ConfigMap) -> BTreeMap<String, String> {
    cm.metadata.labels.clone().unwrap_or_default()
}

pub fn config_json(cm: &ConfigMap) -> Value {
    serde_json::from_str(&annotations(cm)["config"]).expect("config is JSON")
}

//! Kubernetes Events on the Patroni config ConfigMap, so that `kubectl
//! describe configmap patroni-config` tells the story of every decision.
//! Also how a failing Kubernetes API call is logged: once per change of what
//! is wrong, and once when it works again, not once per retry.

use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

use crate::observe::api_trouble::{ApiTrouble, describe, situation};

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    reference: ObjectReference,
    /// E.g. `publish Event on ConfigMap ns/patroni-config`, for log lines.
    operation: String,
    server: Option<String>,
    failures: Counter,
    trouble: Arc<Mutex<ApiTrouble>>,
}

/// The API limits a note to 1 kB.
const MAX_NOTE: usize = 1000;

impl Events {
    /// `failures` counts failed API calls. `server` names the API server in
    /// log lines; a `kube::Client` cannot tell which one it talks to.
    pub fn new(
        client: kube::Client,
        identity: &str,
        reference: ObjectReference,
        server: Option<String>,
        failures: Counter,
    ) -> Self {
        let reporter = Reporter {
            controller: "patroni-dr-watchdog".into(),
            instance: Some(identity.to_string()),
        };
        let operation = format!(
            "publish Event on {} {}/{}",
            reference.kind.as_deref().unwrap_or("object"),
            reference.namespace.as_deref().unwrap_or("default"),
            reference.name.as_deref().unwrap_or("?"),
        );
        Events {
            recorder: Recorder::new(client, reporter),
            reference,
            operation,
            server,
            failures,
            trouble: Arc::default(),
        }
    }

    /// Best effort: a failure to record is counted and logged, never fatal.
    pub async fn publish(&self, warning: bool, reason: &str, action: &str, note: String) {
        let mut note = note;
        if note.len() > MAX_NOTE {
            let mut cut = MAX_NOTE;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let result = self.recorder.publish(&event, &self.reference).await;
        let mut trouble = self.trouble.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(()) => {
                if let Some(r) = trouble.succeeded() {
                    info!(
                        operation = %self.operation,
                        server = self.server.as_deref(),
                        failures = r.failures,
                        failing_for = %humantime::format_duration(r.failing_for),
                        "Kubernetes Events are recorded again"
                    );
                }
            }
            Err(e) => {
                self.failures.inc();
                if trouble.failed(situation(&e)) {
                    warn!(
                        operation = %self.operation,
                        server = self.server.as_deref(),
                        reason,
                        error = %describe(&e),
                        "cannot record Kubernetes Events; said again only when the error changes or Events work again"
                    );
                }
            }
        }
    }
}

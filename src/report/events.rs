//! Kubernetes Events on the Patroni config ConfigMap, so that `kubectl
//! describe configmap patroni-config` tells the story of every decision.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

use prometheus_client::metrics::counter::Counter;

#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    reference: ObjectReference,
    errors: Counter,
}

/// The API limits a note to 1 kB.
const MAX_NOTE: usize = 1000;

impl Events {
    pub fn new(client: kube::Client, identity: &str, reference: ObjectReference, errors: Counter) -> Self {
        let reporter = Reporter {
            controller: "patroni-dr-watchdog".into(),
            instance: Some(identity.to_string()),
        };
        Events {
            recorder: Recorder::new(client, reporter),
            reference,
            errors,
        }
    }

    /// Best effort: a failure to record is logged and counted, never fatal.
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
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            self.errors.inc();
            warn!(reason, error = %crate::error_chain(&e), "cannot record Kubernetes Event");
        }
    }
}

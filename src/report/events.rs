//! Kubernetes Events on the Patroni config ConfigMap, so that `kubectl
//! describe configmap patroni-config` tells the story of every decision.
//! Also how a failing Kubernetes API call is logged: once per change of what
//! is wrong, and once when it works again, not once per retry.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use prometheus_client::metrics::counter::Counter;
use tracing::{info, warn};

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

/// A failing Kubernetes API call is retried for as long as the API server is
/// away, often every few seconds; a line per failure would bury the one that
/// matters. This tells which failure starts a new situation, worth a line,
/// and when the call works again, worth one more.
#[derive(Debug, Default)]
pub struct ApiTrouble {
    current: Option<Failing>,
}

#[derive(Debug)]
struct Failing {
    situation: String,
    since: Instant,
    failures: u64,
}

/// Calls that failed before one succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub failures: u64,
    /// Whole seconds, for the log line.
    pub failing_for: Duration,
}

impl ApiTrouble {
    /// A call failed; true when `situation` is new and worth a line.
    pub fn failed(&mut self, situation: String) -> bool {
        match &mut self.current {
            Some(f) if f.situation == situation => {
                f.failures += 1;
                false
            }
            Some(f) => {
                f.situation = situation;
                f.failures += 1;
                true
            }
            None => {
                self.current = Some(Failing {
                    situation,
                    since: Instant::now(),
                    failures: 1,
                });
                true
            }
        }
    }

    /// A call succeeded; `Some` when calls had been failing until now.
    pub fn succeeded(&mut self) -> Option<Recovered> {
        self.current.take().map(|f| Recovered {
            failures: f.failures,
            failing_for: Duration::from_secs(f.since.elapsed().as_secs()),
        })
    }
}

/// What kind of failure `e` is, coarse enough that the retries of one
/// outage compare equal: the HTTP status the API answered, or that it did
/// not answer at all.
pub fn situation(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!("HTTP {}", status.code),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::HttpError(_)
        | kube::Error::ReadEvents(_) => "no answer".into(),
        other => describe(other),
    }
}

/// `e` for people: the API's own answer, or the chain of causes without the
/// repetitions kube's error wrapping adds (and without its Debug text).
pub fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return format!("HTTP {} {}: {}", s.code, s.reason, s.message);
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_situation_and_one_when_it_works_again() {
        let mut t = ApiTrouble::default();
        assert_eq!(t.succeeded(), None, "nothing to recover from");
        assert!(t.failed("no answer".into()));
        assert!(!t.failed("no answer".into()));
        assert!(!t.failed("no answer".into()));
        assert!(t.failed("HTTP 503".into()), "a different failure is news");
        assert!(!t.failed("HTTP 503".into()));
        let r = t.succeeded().expect("recovered");
        assert_eq!(r.failures, 5);
        assert_eq!(t.succeeded(), None);
        assert!(t.failed("HTTP 503".into()), "a new outage is news again");
    }

    #[test]
    fn api_errors_are_described_by_the_api_answer_not_debug_text() {
        let status = kube::core::Status::failure(
            "the server is currently unable to handle the request",
            "ServiceUnavailable",
        )
        .with_code(503);
        let e = kube::Error::Api(Box::new(status));
        assert_eq!(situation(&e), "HTTP 503");
        let text = describe(&e);
        assert_eq!(
            text,
            "HTTP 503 ServiceUnavailable: the server is currently unable to handle the request"
        );
    }
}

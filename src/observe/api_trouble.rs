//! The Kubernetes API as a party that comes and goes: which failure starts
//! a new situation (worth a log line), and how to say it without kube's
//! Debug text. Shared by discovery and Events.

use std::time::{Duration, Instant};

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

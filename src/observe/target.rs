//! Where Gold is. The loop reads the current target from a watch channel so a
//! discovered address can change under it without a restart.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::observe::api_trouble::{ApiTrouble, describe, situation};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Target {
    Known {
        endpoint: Endpoint,
        source: Source,
    },
    /// Never probe a guessed address: while unknown, probing pauses and Gold
    /// cannot be declared lost.
    Unknown {
        reason: String,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Known { endpoint, source } => write!(f, "{endpoint} ({})", source.as_str()),
            Target::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// WATCHDOG_GOLD_HOST/WATCHDOG_GOLD_PORT as given.
    Static,
    /// The port of the Transport Service, watched live.
    Service,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Service => "service",
        }
    }
}

/// A target that never changes. The sender is returned so the channel stays
/// open for the life of the process.
pub fn fixed(endpoint: Endpoint) -> (watch::Sender<Target>, watch::Receiver<Target>) {
    watch::channel(Target::Known {
        endpoint,
        source: Source::Static,
    })
}

/// The port to probe, from the Transport Service: the named port, or the
/// first one. `Err` says why there is none, for `/status`.
pub fn port_of(service: &Service, port_name: Option<&str>) -> Result<u16, String> {
    let name = match (&service.metadata.namespace, &service.metadata.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        (_, None) => "?".into(),
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("Service {name} has no ports"))?;
    let port = match port_name {
        Some(wanted) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(wanted))
            .ok_or_else(|| format!("Service {name} has no port named {wanted:?}"))?,
        None => &ports[0],
    };
    u16::try_from(port.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("Service {name} port {} is outside 1-65535", port.port))
}

/// Where the Transport Service says Gold is: its port (see [`port_of`]) on
/// `host`, or why there is none. `object` (`namespace/name`) names the
/// Service when there is none to name itself.
pub fn resolve(service: Option<&Service>, object: &str, port_name: Option<&str>, host: &str) -> Target {
    let Some(service) = service else {
        return Target::Unknown {
            reason: format!("Service {object} not found"),
        };
    };
    match port_of(service, port_name) {
        Ok(port) => Target::Known {
            endpoint: Endpoint {
                host: host.to_string(),
                port,
            },
            source: Source::Service,
        },
        Err(reason) => Target::Unknown { reason },
    }
}

/// What [`discover`] watches and where it reports.
pub struct Discovery {
    pub api: Api<Service>,
    /// The Transport Service's name.
    pub service: String,
    pub port_name: Option<String>,
    /// The address probed, with the discovered port.
    pub host: String,
    /// The API server, for log lines: a `kube::Client` cannot say which one
    /// it talks to. `None` leaves it out.
    pub server: Option<String>,
    /// Counts failed lists and watches of the Service.
    pub errors: Counter,
}

/// Watches the Transport Service and keeps `tx` on its current port. Watch
/// errors are retried forever with capped exponential backoff; the last known
/// port stays in force meanwhile (the Service is still there, the API server
/// is what failed).
pub async fn discover(d: Discovery, tx: watch::Sender<Target>, shutdown: CancellationToken) {
    let object = format!("{}/{}", d.api.namespace().unwrap_or("default"), d.service);
    let operation = format!("watch Service {object}");
    let config = watcher::Config::default().fields(&format!("metadata.name={}", d.service));
    let mut backoff = Forever::new();
    let mut trouble = ApiTrouble::default();
    loop {
        // A fresh watcher per round rather than kube's own resumption: it
        // starts with a LIST, so a recovered API server shows at once (a
        // resumed watch says nothing until the Service changes).
        let mut events = watcher(d.api.clone(), config.clone()).boxed();
        let mut seen_in_init = false;
        let failure = loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.next() => e,
            };
            let service = match event {
                None => break None,
                Some(Err(e)) => break Some(e),
                // Sent before the LIST is even tried: no sign of an answer.
                Some(Ok(watcher::Event::Init)) => {
                    seen_in_init = false;
                    continue;
                }
                Some(Ok(watcher::Event::InitDone)) if seen_in_init => None,
                Some(Ok(watcher::Event::InitDone | watcher::Event::Delete(_))) => Some(None),
                Some(Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc))) => {
                    seen_in_init = true;
                    Some(Some(svc))
                }
            };
            backoff.reset();
            if let Some(r) = trouble.succeeded() {
                info!(
                    operation = %operation,
                    server = d.server.as_deref(),
                    failures = r.failures,
                    failing_for = %humantime::format_duration(r.failing_for),
                    "the Kubernetes API answers again"
                );
            }
            if let Some(service) = service {
                let next = resolve(service.as_ref(), &object, d.port_name.as_deref(), &d.host);
                set(&tx, &object, next);
            }
        };
        if let Some(e) = failure {
            match watch_error(&e) {
                // Routine: the watch fell behind the API server's history;
                // the next round lists afresh.
                WatchError::Expired => debug!(operation = %operation, "watch expired; listing again"),
                WatchError::Failed { situation, text } => {
                    d.errors.inc();
                    if trouble.failed(situation) {
                        warn!(
                            operation = %operation,
                            server = d.server.as_deref(),
                            error = %text,
                            "cannot watch the Transport Service; retrying with backoff, said again only when the error changes or the API answers"
                        );
                    }
                    // A known port stays in force: the API server failed, not
                    // the Service.
                    if !matches!(*tx.borrow(), Target::Known { .. }) {
                        let reason = format!("cannot read Service {object}: {text}");
                        set(&tx, &object, Target::Unknown { reason });
                    }
                }
            }
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn set(tx: &watch::Sender<Target>, object: &str, next: Target) {
    tx.send_if_modified(|current| {
        if *current == next {
            return false;
        }
        info!(service = %object, from = %current, to = %next, "Transport Service target changed");
        *current = next;
        true
    });
}

enum WatchError {
    Expired,
    Failed { situation: String, text: String },
}

fn watch_error(e: &watcher::Error) -> WatchError {
    let (what, e) = match e {
        watcher::Error::WatchError(status) if status.code == 410 => return WatchError::Expired,
        watcher::Error::WatchError(status) => {
            return WatchError::Failed {
                situation: format!("HTTP {}", status.code),
                text: format!(
                    "watch: HTTP {} {}: {}",
                    status.code, status.reason, status.message
                ),
            };
        }
        watcher::Error::NoResourceVersion => {
            return WatchError::Failed {
                situation: "no resourceVersion".into(),
                text: e.to_string(),
            };
        }
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
    };
    WatchError::Failed {
        situation: situation(e),
        text: format!("{what}: {}", describe(e)),
    }
}

/// Capped exponential backoff with jitter that never gives up: discovery
/// must outlive any API outage. Reset after an answer.
struct Forever {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
}

impl Forever {
    fn new() -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times();
        Forever {
            current: builder.build(),
            builder,
        }
    }

    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

impl Iterator for Forever {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(ports: &[(Option<&str>, i32)]) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some("patroni-master-gold".into()),
                namespace: Some("dr".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, port)| ServicePort {
                            name: name.map(str::to_string),
                            port: *port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn first_port_unless_a_name_is_given() {
        let s = svc(&[(Some("metrics"), 9187), (Some("postgres"), 31234)]);
        assert_eq!(port_of(&s, None), Ok(9187));
        assert_eq!(port_of(&s, Some("postgres")), Ok(31234));
        assert!(
            port_of(&s, Some("pg"))
                .unwrap_err()
                .contains("no port named \"pg\"")
        );
    }

    #[test]
    fn no_usable_port_is_an_explanation_not_a_guess() {
        assert!(port_of(&svc(&[]), None).unwrap_err().contains("no ports"));
        assert!(port_of(&svc(&[(None, 0)]), None).unwrap_err().contains("outside"));
        assert!(
            port_of(&svc(&[(None, 70000)]), None)
                .unwrap_err()
                .contains("outside")
        );
        assert!(
            port_of(&svc(&[(None, -1)]), None)
                .unwrap_err()
                .contains("outside")
        );
        let mut no_spec = svc(&[]);
        no_spec.spec = None;
        assert!(port_of(&no_spec, None).is_err());
    }

    const OBJECT: &str = "dr/patroni-master-gold";

    fn unknown_reason(t: Target) -> String {
        match t {
            Target::Unknown { reason } => reason,
            known => panic!("expected an unknown target, got {known}"),
        }
    }

    #[test]
    fn a_service_port_is_probed_on_the_configured_host() {
        let s = svc(&[(Some("metrics"), 9187), (Some("postgres"), 31234)]);
        assert_eq!(
            resolve(Some(&s), OBJECT, Some("postgres"), "gold.example"),
            Target::Known {
                endpoint: Endpoint {
                    host: "gold.example".into(),
                    port: 31234
                },
                source: Source::Service,
            }
        );
        let first = resolve(Some(&s), OBJECT, None, "gold.example");
        assert_eq!(first.to_string(), "gold.example:9187 (service)");
    }

    #[test]
    fn a_port_change_is_a_new_target_and_the_same_port_is_not() {
        let before = resolve(
            Some(&svc(&[(Some("postgres"), 31234)])),
            OBJECT,
            Some("postgres"),
            "h",
        );
        let resynced = resolve(
            Some(&svc(&[(Some("postgres"), 31234)])),
            OBJECT,
            Some("postgres"),
            "h",
        );
        let moved = resolve(
            Some(&svc(&[(Some("postgres"), 31999)])),
            OBJECT,
            Some("postgres"),
            "h",
        );
        assert_eq!(
            before, resynced,
            "an unchanged Service must not look like a change"
        );
        assert_ne!(before, moved);
        assert!(matches!(moved, Target::Known { endpoint, .. } if endpoint.port == 31999));
    }

    #[test]
    fn without_a_usable_port_the_target_is_unknown_and_says_why() {
        assert_eq!(
            unknown_reason(resolve(None, OBJECT, Some("postgres"), "h")),
            "Service dr/patroni-master-gold not found"
        );
        assert_eq!(
            unknown_reason(resolve(Some(&svc(&[])), OBJECT, None, "h")),
            "Service dr/patroni-master-gold has no ports"
        );
        let mut no_spec = svc(&[]);
        no_spec.spec = None;
        assert!(unknown_reason(resolve(Some(&no_spec), OBJECT, None, "h")).contains("has no ports"));
        assert_eq!(
            unknown_reason(resolve(
                Some(&svc(&[(Some("metrics"), 9187)])),
                OBJECT,
                Some("postgres"),
                "h"
            )),
            "Service dr/patroni-master-gold has no port named \"postgres\""
        );
        for port in [0, -1, 65536, 70000] {
            assert_eq!(
                unknown_reason(resolve(
                    Some(&svc(&[(Some("postgres"), port)])),
                    OBJECT,
                    Some("postgres"),
                    "h"
                )),
                format!("Service dr/patroni-master-gold port {port} is outside 1-65535")
            );
        }
        assert!(matches!(
            resolve(
                Some(&svc(&[(Some("postgres"), 65535)])),
                OBJECT,
                Some("postgres"),
                "h"
            ),
            Target::Known { .. }
        ));
    }

    /// Log lines written by a test's own subscriber.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn an_unreachable_api_server_is_one_line_not_one_per_retry() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines.clone())
            .with_ansi(false)
            .with_env_filter("warn,patroni_dr_watchdog=debug")
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        // A loopback port nobody listens on: connections are refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let server = format!("http://127.0.0.1:{port}");
        let mut config = kube::Config::new(server.parse().unwrap());
        config.default_retry = false;
        let client = kube::Client::try_from(config).unwrap();
        let errors = Counter::default();
        let (tx, rx) = watch::channel(Target::Unknown {
            reason: "looking".into(),
        });
        let shutdown = CancellationToken::new();
        let discovery = Discovery {
            api: Api::namespaced(client, "dr"),
            service: "patroni-master-gold".into(),
            port_name: Some("postgres".into()),
            host: "h".into(),
            server: Some(server.clone()),
            errors: errors.clone(),
        };
        let rounds = async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while errors.get() < 4 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "only {} rounds",
                    errors.get()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            shutdown.cancel();
        };
        tokio::join!(discover(discovery, tx, shutdown.clone()), rounds);

        let text = lines.text();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("cannot watch the Transport Service"))
            .collect();
        assert_eq!(
            ours.len(),
            1,
            "one line over {} failed rounds:\n{text}",
            errors.get()
        );
        let line = ours[0];
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("watch Service dr/patroni-master-gold"), "{line}");
        assert!(line.contains(&server), "names the server: {line}");
        assert!(line.contains("list: "), "{line}");
        assert!(line.to_lowercase().contains("connect"), "says why: {line}");
        assert!(
            !line.contains(" {") && !line.contains("Error("),
            "Debug text: {line}"
        );
        assert!(!text.contains("answers again"), "{text}");
        let reason = unknown_reason(rx.borrow().clone());
        assert!(
            reason.starts_with("cannot read Service dr/patroni-master-gold: list: "),
            "{reason}"
        );
    }

    #[test]
    fn backoff_never_gives_up_and_stays_capped() {
        let mut b = Forever::new();
        let delays: Vec<Duration> = (&mut b).take(200).collect();
        assert_eq!(delays.len(), 200);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)), "{delays:?}");
        b.reset();
        assert!(b.next().is_some_and(|d| d < Duration::from_secs(2)));
    }
}

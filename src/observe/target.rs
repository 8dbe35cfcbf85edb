//! Where Gold is. The loop reads the current target from a watch channel so a
//! discovered address can change under it without a restart.

use std::fmt;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use prometheus_client::metrics::counter::Counter;

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
    let name = service.metadata.name.as_deref().unwrap_or("?");
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

/// Watches the Transport Service and keeps `tx` on its current port. Watch
/// errors are retried forever with capped exponential backoff; the last known
/// port stays in force meanwhile (the Service is still there, the API server
/// is what failed).
pub async fn discover(
    api: Api<Service>,
    service: String,
    port_name: Option<String>,
    host: String,
    tx: watch::Sender<Target>,
    errors: Counter,
    shutdown: CancellationToken,
) {
    let object = format!("{}/{service}", api.namespace().unwrap_or("default"));
    let config = watcher::Config::default().fields(&format!("metadata.name={service}"));
    let mut events = watcher(api, config).backoff(Forever::new()).boxed();
    let mut seen_in_init = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => e,
        };
        let next = match event {
            None => return,
            Some(Err(e)) => {
                errors.inc();
                warn!(service = %object, error = %crate::error_chain(&e), "cannot watch the Transport Service; retrying");
                if matches!(*tx.borrow(), Target::Known { .. }) {
                    continue;
                }
                Target::Unknown {
                    reason: format!("cannot read Service {object}: {e}"),
                }
            }
            Some(Ok(watcher::Event::Init)) => {
                seen_in_init = false;
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) if seen_in_init => continue,
            Some(Ok(watcher::Event::InitDone)) => Target::Unknown {
                reason: format!("Service {object} not found"),
            },
            Some(Ok(watcher::Event::Delete(_))) => Target::Unknown {
                reason: format!("Service {object} was deleted"),
            },
            Some(Ok(watcher::Event::Apply(svc) | watcher::Event::InitApply(svc))) => {
                seen_in_init = true;
                match port_of(&svc, port_name.as_deref()) {
                    Ok(port) => Target::Known {
                        endpoint: Endpoint {
                            host: host.clone(),
                            port,
                        },
                        source: Source::Service,
                    },
                    Err(reason) => Target::Unknown { reason },
                }
            }
        };
        tx.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            info!(service = %object, from = ?current, to = ?next, "Transport Service target changed");
            *current = next;
            true
        });
    }
}

/// Capped exponential backoff with jitter that never gives up: discovery
/// must outlive any API outage. Reset after a success, as kube-runtime does.
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
}

impl Iterator for Forever {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl kube::runtime::utils::Backoff for Forever {
    fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(ports: &[(Option<&str>, i32)]) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some("patroni-master-gold".into()),
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

    #[test]
    fn backoff_never_gives_up_and_stays_capped() {
        let mut b = Forever::new();
        let delays: Vec<Duration> = (&mut b).take(200).collect();
        assert_eq!(delays.len(), 200);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)), "{delays:?}");
        kube::runtime::utils::Backoff::reset(&mut b);
        assert!(b.next().is_some_and(|d| d < Duration::from_secs(2)));
    }
}

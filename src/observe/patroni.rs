//! The local Patroni member's REST API: one client (CA, basic auth) for
//! `GET /patroni` here, which says whether this pod is the standby leader
//! (works with every Patroni since 1.6), and `GET`/`PATCH /config` in the
//! `patroni-api` promoter.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};

use crate::config::{BasicAuth, PatroniApi};
use crate::observe::wal::{Lsn, WalPoint};

/// The local Patroni member's role, from `GET /patroni`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "role", content = "detail", rename_all = "snake_case")]
pub enum Role {
    StandbyLeader,
    /// `primary`, or `master` before Patroni 3.
    Primary,
    Replica,
    Other(String),
    /// Patroni did not answer or answered nonsense.
    Unreachable(String),
}

impl Role {
    /// From the `role` field of `GET /patroni`, accepting every Patroni
    /// version's names.
    pub fn from_patroni(role: &str) -> Role {
        match role {
            "standby_leader" | "standby-leader" => Role::StandbyLeader,
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            other => Role::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Role::StandbyLeader => "standby_leader",
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Other(r) => r,
            Role::Unreachable(_) => "unreachable",
        }
    }
}

/// The local Patroni's REST API, as configured by `WATCHDOG_PATRONI_*`.
#[derive(Clone)]
pub struct PatroniClient {
    http: reqwest::Client,
    url: String,
    auth: Option<BasicAuth>,
}

impl PatroniClient {
    pub fn new(settings: &PatroniApi, timeout: Duration) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The local Patroni is on loopback; a cluster-wide HTTP proxy
            // setting must not reroute it.
            .no_proxy();
        if !settings.ca_certificates.is_empty() {
            // Patroni's restapi.certfile is signed by a private CA: trust that
            // CA alone, not every public one.
            builder = builder.tls_built_in_root_certs(false);
            for cert in &settings.ca_certificates {
                builder = builder.add_root_certificate(reqwest::Certificate::from_der(cert)?);
            }
        }
        Ok(PatroniClient {
            http: builder.build()?,
            url: settings.url.trim_end_matches('/').to_string(),
            auth: settings.auth.clone(),
        })
    }

    /// The base URL, for messages (it never carries credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request to `path` (e.g. `/config`). Patroni asks for
    /// `restapi.authentication` on its unsafe methods only; sending it
    /// always keeps one way of talking to it.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.url));
        match &self.auth {
            Some(auth) => req.basic_auth(&auth.username, Some(auth.password.expose())),
            None => req,
        }
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    /// An error answer, with what to do about it when it is ours to fix.
    pub fn describe_refusal(&self, status: StatusCode, body: &str) -> String {
        let body = body.trim();
        let hint = match (status, &self.auth) {
            (StatusCode::UNAUTHORIZED, None) => {
                "; Patroni's REST API requires authentication (restapi.authentication): set \
                 WATCHDOG_PATRONI_USERNAME and WATCHDOG_PATRONI_PASSWORD (or WATCHDOG_PATRONI_PASSWORD_FILE)"
            }
            (StatusCode::UNAUTHORIZED, Some(_)) => {
                "; Patroni refused the credentials: check WATCHDOG_PATRONI_USERNAME and \
                 WATCHDOG_PATRONI_PASSWORD (or WATCHDOG_PATRONI_PASSWORD_FILE) against its restapi.authentication"
            }
            (StatusCode::FORBIDDEN, _) => "; Patroni's restapi.allowlist may not include this address",
            _ => "",
        };
        format!("HTTP {status}: {body}{hint}")
    }
}

#[derive(Deserialize)]
struct PatroniStatus {
    role: Option<String>,
    /// Present (true) while no member holds the leader lock.
    #[serde(default)]
    cluster_unlocked: bool,
    timeline: Option<u32>,
    #[serde(default)]
    xlog: Xlog,
}

/// `xlog` of `GET /patroni`: `location` on a primary, the received and
/// replayed positions on a standby (as integers).
#[derive(Deserialize, Default)]
struct Xlog {
    location: Option<u64>,
    received_location: Option<u64>,
    replayed_location: Option<u64>,
}

/// The local member as `GET /patroni` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub role: Role,
    /// No member holds the leader lock.
    pub unlocked: bool,
    /// Where its WAL is: written (a primary) or received/replayed, whichever
    /// is further (a standby), on its timeline.
    pub wal: Option<WalPoint>,
}

impl PatroniClient {
    /// `GET /patroni` answers 200 whatever the role (503 on some versions
    /// for replicas), so the body decides, never the status code.
    pub async fn role(&self) -> Role {
        self.member().await.role
    }

    /// The role, whether the cluster has no leader at all (Patroni's
    /// `cluster_unlocked`), and the member's WAL position.
    pub async fn member(&self) -> Member {
        let unreachable = |why: String| Member {
            role: Role::Unreachable(why),
            unlocked: false,
            wal: None,
        };
        let resp = match self.get("/patroni").send().await {
            Ok(r) => r,
            Err(e) => return unreachable(crate::error_chain(&e.without_url())),
        };
        match resp.json::<PatroniStatus>().await {
            Ok(PatroniStatus { role: None, .. }) => unreachable("GET /patroni has no role field".into()),
            Ok(PatroniStatus {
                role: Some(role),
                cluster_unlocked,
                timeline,
                xlog,
            }) => {
                let lsn = xlog
                    .location
                    .or(xlog.received_location.max(xlog.replayed_location));
                Member {
                    role: Role::from_patroni(&role),
                    unlocked: cluster_unlocked,
                    wal: timeline.zip(lsn).map(|(timeline, lsn)| WalPoint {
                        timeline,
                        lsn: Lsn(lsn),
                    }),
                }
            }
            Err(e) => unreachable(format!("GET /patroni: {}", crate::error_chain(&e.without_url()))),
        }
    }
}

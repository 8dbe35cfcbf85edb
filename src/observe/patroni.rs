//! The local Patroni member's REST API: `GET /patroni` says whether this pod
//! is the standby leader (every Patroni since 1.6); `GET /config` and `PATCH
//! /config` read and edit the dynamic config. One client for all of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// The local Patroni's REST API.
#[derive(Clone)]
pub struct PatroniClient {
    http: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct PatroniStatus {
    role: Option<String>,
}

impl PatroniClient {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The local Patroni is on loopback; a cluster-wide HTTP proxy
            // setting must not reroute it.
            .no_proxy()
            .build()?;
        Ok(PatroniClient {
            http,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.patch(format!("{}{path}", self.url))
    }

    /// `GET /patroni` answers 200 whatever the role (503 on some versions
    /// for replicas), so the body decides, never the status code.
    pub async fn role(&self) -> Role {
        let resp = match self.get("/patroni").send().await {
            Ok(r) => r,
            Err(e) => return Role::Unreachable(crate::error_chain(&e.without_url())),
        };
        match resp.json::<PatroniStatus>().await {
            Ok(PatroniStatus { role: Some(role) }) => Role::from_patroni(&role),
            Ok(PatroniStatus { role: None }) => Role::Unreachable("GET /patroni has no role field".into()),
            Err(e) => Role::Unreachable(format!("GET /patroni: {}", crate::error_chain(&e.without_url()))),
        }
    }
}

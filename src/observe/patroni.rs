//! The local Patroni member's REST API (`GET /patroni`), which says whether
//! this pod is the standby leader. Works with every Patroni since 1.6.

use std::time::Duration;

use serde::Deserialize;

use crate::decide::guards::Role;

#[derive(Clone)]
pub struct LocalPatroni {
    http: reqwest::Client,
    url: String,
}

#[derive(Deserialize)]
struct PatroniStatus {
    role: Option<String>,
}

impl LocalPatroni {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // The local Patroni is on loopback; a cluster-wide HTTP proxy
            // setting must not reroute it.
            .no_proxy()
            .build()?;
        Ok(LocalPatroni {
            http,
            url: url.trim_end_matches('/').to_string(),
        })
    }

    /// `GET /patroni` answers 200 whatever the role (503 on some versions
    /// for replicas), so the body decides, never the status code.
    pub async fn role(&self) -> Role {
        let resp = match self.http.get(format!("{}/patroni", self.url)).send().await {
            Ok(r) => r,
            Err(e) => return Role::Unreachable(crate::error_chain(&e)),
        };
        match resp.json::<PatroniStatus>().await {
            Ok(PatroniStatus { role: Some(role) }) => Role::from_patroni(&role),
            Ok(PatroniStatus { role: None }) => Role::Unreachable("GET /patroni has no role field".into()),
            Err(e) => Role::Unreachable(format!("GET /patroni: {}", crate::error_chain(&e))),
        }
    }
}

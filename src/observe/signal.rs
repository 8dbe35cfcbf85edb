//! Signs of life: direct checks of Gold's site through some route other than
//! the probe's. An HTTP answer of any status (Patroni's REST API answers 503
//! on `/primary` while it has no primary, and that still proves the site is
//! up) or an accepted TCP connection means *alive*. Silence is not evidence
//! of death — the route may be what broke — so a silent signal never counts
//! for anything but "no answer".
//!
//! The DR watchdog uses them as `WATCHDOG_GOLD_SIGNALS` (an answer vetoes a
//! promotion); the witness as Gold's site heartbeat.

use std::fmt;
use std::time::Duration;

use futures::future::join_all;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "address", rename_all = "snake_case")]
pub enum Signal {
    Http(String),
    Tcp(String),
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::Http(url) => f.write_str(url),
            Signal::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// What one check of a signal found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reading", content = "detail", rename_all = "snake_case")]
pub enum Reading {
    /// It answered: the site is up.
    Alive(String),
    /// No answer: no evidence either way.
    Silent(String),
}

impl Reading {
    pub fn alive(&self) -> bool {
        matches!(self, Reading::Alive(_))
    }

    pub fn detail(&self) -> &str {
        match self {
            Reading::Alive(d) | Reading::Silent(d) => d,
        }
    }
}

/// Parses a comma-separated list of `http(s)://…` URLs and `tcp://host:port`
/// addresses. Credentials in a URL are refused: they would end up in
/// `/status`, the logs and metric labels.
pub fn parse_list(value: &str) -> Result<Vec<Signal>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(item: &str) -> Result<Signal, String> {
    if let Some(addr) = item.strip_prefix("tcp://") {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("{item}: tcp:// needs host:port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{item}: tcp:// needs host:port with a port 1-65535"));
        }
        return Ok(Signal::Tcp(addr.to_string()));
    }
    match reqwest::Url::parse(item) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => Err(format!(
            "{}: credentials in the URL are not allowed (they would be shown in /status and the logs)",
            u.host_str().unwrap_or("URL")
        )),
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(Signal::Http(item.to_string()))
        }
        _ => Err(format!(
            "{item}: use http(s)://host[:port]/path or tcp://host:port"
        )),
    }
}

/// Checks one signal within `timeout`.
pub async fn check(signal: &Signal, http: &reqwest::Client, timeout: Duration) -> Reading {
    match signal {
        Signal::Http(url) => match http.get(url).timeout(timeout).send().await {
            Ok(r) => Reading::Alive(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Reading::Silent(crate::error_chain(&e.without_url())),
        },
        Signal::Tcp(addr) => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Reading::Alive("accepted a connection".into()),
                Ok(Err(e)) => Reading::Silent(e.to_string()),
                Err(_) => Reading::Silent(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )),
            }
        }
    }
}

/// Checks every signal at once; readings in the order given.
pub async fn check_all(
    signals: &[Signal],
    http: &reqwest::Client,
    timeout: Duration,
) -> Vec<(String, Reading)> {
    join_all(
        signals
            .iter()
            .map(|s| async move { (s.to_string(), check(s, http, timeout).await) }),
    )
    .await
}

/// The HTTP client signals are checked with: no proxy from the environment
/// (a signal is about one route), no redirects (a redirect is an answer).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_tcp_addresses() {
        assert_eq!(
            parse_list(" http://gold-patroni:8008/liveness , tcp://10.1.2.3:5432,").unwrap(),
            vec![
                Signal::Http("http://gold-patroni:8008/liveness".into()),
                Signal::Tcp("10.1.2.3:5432".into())
            ]
        );
        assert_eq!(parse_list("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_what_it_cannot_check_and_credentials() {
        for bad in [
            "gold:5432",
            "tcp://gold",
            "tcp://gold:0",
            "tcp://:5432",
            "ftp://x/y",
            "http://",
        ] {
            assert!(parse_list(bad).is_err(), "{bad}");
        }
        let e = parse_list("http://admin:s3cret@gold:8008/").unwrap_err();
        assert!(e.contains("credentials") && !e.contains("s3cret"), "{e}");
    }

    #[tokio::test]
    async fn any_http_status_is_alive_and_a_closed_port_is_silent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/primary",
            axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no primary") }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = http_client(Duration::from_secs(2)).unwrap();
        let t = Duration::from_secs(2);
        let r = check(&Signal::Http(format!("http://{addr}/primary")), &http, t).await;
        assert_eq!(r, Reading::Alive("HTTP 503".into()));
        assert!(check(&Signal::Tcp(addr.to_string()), &http, t).await.alive());

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(
            !check(&Signal::Http(format!("http://{closed}/")), &http, t)
                .await
                .alive()
        );
        assert!(!check(&Signal::Tcp(closed.to_string()), &http, t).await.alive());
    }
}

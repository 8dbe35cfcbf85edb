//! Independent observers of Gold: an HTTP URL that answers 2xx while Gold is
//! alive (e.g. Gold's Patroni `/primary` through another route, or a
//! third-site monitor), or a TCP address that accepts connections while Gold
//! is alive. Like Orchestrator's and repmgr's consensus: if anyone else can
//! still see Gold, we do not promote.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "address", rename_all = "snake_case")]
pub enum Witness {
    Http(String),
    Tcp(String),
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Witness::Http(url) => f.write_str(url),
            Witness::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "says", content = "detail", rename_all = "snake_case")]
pub enum Testimony {
    GoldAlive(String),
    GoldGone(String),
    /// The witness itself could not be reached.
    CantTell(String),
}

/// Parses `WATCHDOG_WITNESSES`: comma-separated `http(s)://...` URLs and
/// `tcp://host:port` addresses.
pub fn parse_list(value: &str) -> Result<Vec<Witness>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            if let Some(addr) = item.strip_prefix("tcp://") {
                let (host, port) = addr
                    .rsplit_once(':')
                    .ok_or_else(|| format!("{item}: tcp:// needs host:port"))?;
                if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(format!("{item}: tcp:// needs host:port with a port 1-65535"));
                }
                Ok(Witness::Tcp(addr.to_string()))
            } else {
                match reqwest::Url::parse(item) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                        Ok(Witness::Http(item.to_string()))
                    }
                    _ => Err(format!("{item}: use http(s)://host/path or tcp://host:port")),
                }
            }
        })
        .collect()
}

/// Asks one witness, within `timeout`.
pub async fn ask(witness: &Witness, http: &reqwest::Client, timeout: Duration) -> Testimony {
    match witness {
        Witness::Http(url) => match http.get(url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Testimony::GoldAlive(format!("HTTP {}", r.status().as_u16())),
            Ok(r) => Testimony::GoldGone(format!("HTTP {}", r.status().as_u16())),
            Err(e) => Testimony::CantTell(crate::error_chain(&e.without_url())),
        },
        Witness::Tcp(addr) => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            Ok(Ok(_)) => Testimony::GoldAlive("accepted a connection".into()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Testimony::GoldGone("connection refused".into())
            }
            Ok(Err(e)) => Testimony::CantTell(e.to_string()),
            Err(_) => Testimony::CantTell(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_tcp_addresses() {
        assert_eq!(
            parse_list(" http://gold-monitor:8008/primary , tcp://10.1.2.3:5432,").unwrap(),
            vec![
                Witness::Http("http://gold-monitor:8008/primary".into()),
                Witness::Tcp("10.1.2.3:5432".into())
            ]
        );
        assert_eq!(parse_list("").unwrap(), vec![]);
    }

    #[test]
    fn rejects_what_it_cannot_ask() {
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
    }
}

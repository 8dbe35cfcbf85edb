//! What the watchdog tells: the HTTP listener, the log format, the webhook.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use super::parse::{self, invalid, non_empty};
use super::vars::Raw;
use super::{ConfigError, defaults};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A webhook URL often carries a token: only its scheme and host are shown.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
    fn redacted(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(u) => format!("{}://{}/<redacted>", u.scheme(), u.host_str().unwrap_or("?")),
            Err(_) => "<redacted>".into(),
        }
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

pub(super) struct Reporting {
    pub listen_addr: SocketAddr,
    pub log_format: LogFormat,
    pub webhook_url: Option<WebhookUrl>,
}

pub(super) fn load(raw: &mut Raw) -> Result<Reporting, ConfigError> {
    let listen_raw = raw
        .listen_addr
        .take()
        .unwrap_or_else(|| defaults::LISTEN_ADDR.to_string());
    let listen_addr = listen_raw.trim().parse::<SocketAddr>().map_err(|e| {
        invalid(
            "LISTEN_ADDR",
            &listen_raw,
            format!("{e}; use IP:PORT such as 0.0.0.0:9808"),
        )
    })?;
    let log_format = parse::choice(
        "LOG_FORMAT",
        raw.log_format.take(),
        LogFormat::Text,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )?;
    let webhook_url = match non_empty("WEBHOOK_URL", raw.webhook_url.take())? {
        Some(url) => match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(WebhookUrl(url)),
            // Never echo the value: it may hold a token.
            _ => {
                return Err(invalid(
                    "WEBHOOK_URL",
                    "<redacted>",
                    "must be an http:// or https:// URL",
                ));
            }
        },
        None => None,
    };
    Ok(Reporting {
        listen_addr,
        log_format,
        webhook_url,
    })
}

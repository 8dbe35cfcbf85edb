//! How the DR site is promoted, and the local Patroni's REST API (which also
//! says whether this pod is the standby leader).

use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use serde::Serialize;

use super::parse::{self, Password, invalid, non_empty, var};
use super::vars::Raw;
use super::{ConfigError, defaults};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromoterKind {
    /// Observe only: nothing can be promoted.
    None,
    /// Patch `standby_cluster` out of Patroni's `<scope>-config` ConfigMap.
    Configmap,
    /// `PATCH /config` `{"standby_cluster": null}` on the local Patroni
    /// (any DCS).
    PatroniApi,
    /// `SELECT pg_promote()` on a plain streaming standby (no Patroni).
    PgPromote,
}

impl PromoterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromoterKind::None => "none",
            PromoterKind::Configmap => "configmap",
            PromoterKind::PatroniApi => "patroni-api",
            PromoterKind::PgPromote => "pg-promote",
        }
    }
}

/// The local Patroni's REST API.
#[derive(Debug, Clone, Serialize)]
pub struct PatroniApi {
    /// Without a trailing `/` and without credentials.
    pub url: String,
    /// Patroni's `restapi.authentication`, sent with every request.
    pub auth: Option<BasicAuth>,
    /// `WATCHDOG_PATRONI_CAFILE`, for an `https` REST API.
    pub cafile: Option<PathBuf>,
    /// The certificates of `cafile`, parsed at start-up.
    #[serde(skip)]
    pub ca_certificates: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BasicAuth {
    pub username: String,
    pub password: Password,
}

pub(super) struct Promotion {
    pub promoter: PromoterKind,
    pub patroni_configmap: String,
    pub patroni: PatroniApi,
    pub follow_ts: bool,
}

/// `in_cluster`: in a pod, the ConfigMap promoter is the default.
pub(super) fn load(raw: &mut Raw, in_cluster: bool) -> Result<Promotion, ConfigError> {
    let promoter = parse::choice(
        "PROMOTER",
        raw.promoter.take(),
        if in_cluster {
            PromoterKind::Configmap
        } else {
            PromoterKind::None
        },
        &[
            ("configmap", PromoterKind::Configmap),
            ("patroni-api", PromoterKind::PatroniApi),
            ("pg-promote", PromoterKind::PgPromote),
            ("none", PromoterKind::None),
        ],
    )?;
    let patroni_configmap = non_empty("PATRONI_CONFIGMAP", raw.patroni_configmap.take())?
        .unwrap_or_else(|| defaults::PATRONI_CONFIGMAP.to_string());
    parse::k8s_name("PATRONI_CONFIGMAP", &patroni_configmap)?;
    // The promoter's writer also keeps standby_cluster on the Transport
    // Service, unless the operator keeps it themselves.
    let follow_ts = parse::choice(
        "FOLLOW_TS",
        raw.follow_ts.take(),
        true,
        &[("true", true), ("false", false)],
    )?;
    Ok(Promotion {
        promoter,
        patroni_configmap,
        patroni: patroni_api(raw)?,
        follow_ts,
    })
}

pub(super) fn patroni_api(raw: &mut Raw) -> Result<PatroniApi, ConfigError> {
    let url = non_empty("PATRONI_URL", raw.patroni_url.take())?
        .unwrap_or_else(|| defaults::PATRONI_URL.to_string());
    let parsed = match reqwest::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => return Err(invalid("PATRONI_URL", &without_userinfo(&url), e.to_string())),
    };
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(invalid(
            "PATRONI_URL",
            &without_userinfo(&url),
            "must be an http:// or https:// URL",
        ));
    }
    // A password in the URL would show wherever the URL does: in /status,
    // logs and error messages.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "PATRONI_URL",
            &without_userinfo(&url),
            "must not carry credentials: set WATCHDOG_PATRONI_USERNAME and WATCHDOG_PATRONI_PASSWORD \
             (or WATCHDOG_PATRONI_PASSWORD_FILE) instead",
        ));
    }
    let https = parsed.scheme() == "https";

    let username = non_empty("PATRONI_USERNAME", raw.patroni_username.take())?;
    let password = parse::password(
        "PATRONI",
        raw.patroni_password.take(),
        raw.patroni_password_file.take().as_deref(),
    )?;
    let auth = match (username, password) {
        (Some(username), Some(password)) => Some(BasicAuth { username, password }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                var: var("PATRONI_PASSWORD"),
                hint: "WATCHDOG_PATRONI_USERNAME is set: Patroni's restapi.authentication needs its password too \
                       (or set WATCHDOG_PATRONI_PASSWORD_FILE)",
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                var: var("PATRONI_USERNAME"),
                hint: "a Patroni REST API password is set: Patroni's restapi.authentication needs its username too",
            });
        }
    };

    let cafile = parse::path("PATRONI_CAFILE", raw.patroni_cafile.take())?;
    let ca_certificates = match &cafile {
        Some(path) => {
            if !https {
                return Err(ConfigError::Conflict {
                    var: var("PATRONI_CAFILE"),
                    other: var("PATRONI_URL"),
                    reason: "a CA is only used for an https:// Patroni REST API: use https:// in \
                             WATCHDOG_PATRONI_URL, or unset WATCHDOG_PATRONI_CAFILE",
                });
            }
            parse::ca_certificates("PATRONI_CAFILE", &path.display().to_string())?
        }
        None => Vec::new(),
    };
    Ok(PatroniApi {
        url: url.trim_end_matches('/').to_string(),
        auth,
        cafile,
        ca_certificates,
    })
}

/// `url` fit to show: never what stands before an `@`.
fn without_userinfo(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<redacted>@{after}"),
            None => format!("<redacted>@{after}"),
        },
        None => url.to_string(),
    }
}

//! Gold: where it is (a fixed address or the Transport Service) and how the
//! probe logs in. Only the commands that probe Gold load this concern.

use std::path::PathBuf;

use serde::Serialize;

use super::parse::{self, Password, invalid, non_empty, var};
use super::vars::Raw;
use super::{ConfigError, defaults};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where Gold is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GoldAddress {
    /// `WATCHDOG_GOLD_HOST` and `WATCHDOG_GOLD_PORT`.
    Static { host: String, port: u16 },
    /// The Transport Service `WATCHDOG_TS_SERVICE`.
    Service {
        name: String,
        port: ServicePort,
        /// `WATCHDOG_GOLD_HOST`, when the Service's cluster DNS name is not
        /// the way to reach it.
        host_override: Option<String>,
    },
}

/// Which port of the Transport Service Gold listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServicePort {
    /// `WATCHDOG_GOLD_PORT`: no discovery.
    Static(u16),
    /// Read from the Service and followed live: the port named
    /// `WATCHDOG_TS_PORT_NAME`, or its first port.
    Discovered { port_name: Option<String> },
}

impl GoldAddress {
    /// The host to probe: the one given, or the Service's cluster DNS name
    /// in `namespace`.
    pub fn host(&self, namespace: &str) -> String {
        match self {
            GoldAddress::Static { host, .. }
            | GoldAddress::Service {
                host_override: Some(host),
                ..
            } => host.clone(),
            GoldAddress::Service { name, .. } => format!("{name}.{namespace}.svc"),
        }
    }

    /// The port, unless it is discovered from the Service.
    pub fn fixed_port(&self) -> Option<u16> {
        match self {
            GoldAddress::Static { port, .. }
            | GoldAddress::Service {
                port: ServicePort::Static(port),
                ..
            } => Some(*port),
            GoldAddress::Service { .. } => None,
        }
    }

    pub fn discovers_port(&self) -> bool {
        self.fixed_port().is_none()
    }

    /// The Transport Service's name, if Gold is reached through one.
    pub fn service(&self) -> Option<&str> {
        match self {
            GoldAddress::Service { name, .. } => Some(name),
            GoldAddress::Static { .. } => None,
        }
    }
}

/// Where Gold is and how the probe logs in to it.
#[derive(Debug, Clone, Serialize)]
pub struct GoldConn {
    pub address: GoldAddress,
    pub user: String,
    pub password: Option<Password>,
    pub password_file: Option<PathBuf>,
    pub database: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
}

/// For the commands that never probe Gold (`promote --force`, `failback`):
/// Gold's settings are neither required nor checked.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoGold;

/// What a command needs of Gold: [`GoldConn`] or [`NoGold`].
pub trait GoldConcern: Sized + Send + Sync + 'static {
    #[doc(hidden)]
    fn load(raw: &mut Raw) -> Result<Self, ConfigError>;
    /// Whether reaching Gold needs the Kubernetes API.
    fn uses_kubernetes(&self) -> bool;
}

impl GoldConcern for NoGold {
    fn load(_: &mut Raw) -> Result<Self, ConfigError> {
        Ok(NoGold)
    }
    fn uses_kubernetes(&self) -> bool {
        false
    }
}

impl GoldConcern for GoldConn {
    fn load(raw: &mut Raw) -> Result<Self, ConfigError> {
        let address = address(raw)?;
        login(raw, address)
    }
    fn uses_kubernetes(&self) -> bool {
        self.address.service().is_some()
    }
}

fn address(raw: &mut Raw) -> Result<GoldAddress, ConfigError> {
    let service = non_empty("TS_SERVICE", raw.ts_service.take())?;
    let port_name = non_empty("TS_PORT_NAME", raw.ts_port_name.take())?;
    let host = non_empty("GOLD_HOST", raw.gold_host.take())?;
    let port = raw
        .gold_port
        .take()
        .map(|v| parse::port("GOLD_PORT", &v))
        .transpose()?;
    if let Some(name) = &port_name {
        if service.is_none() || port.is_some() {
            return Err(ConfigError::Conflict {
                var: var("TS_PORT_NAME"),
                other: var("GOLD_PORT"),
                reason: "a port name picks a port of WATCHDOG_TS_SERVICE; it means nothing with a static WATCHDOG_GOLD_PORT or without a service",
            });
        }
        if name.parse::<u16>().is_ok() {
            return Err(invalid(
                "TS_PORT_NAME",
                name,
                "must be the port's name, not its number",
            ));
        }
    }
    match (service, host) {
        (None, None) => Err(ConfigError::Missing {
            var: var("GOLD_HOST"),
            hint: "Gold's PostgreSQL as seen from this site; or set WATCHDOG_TS_SERVICE to find it through the Transport Service",
        }),
        (None, Some(host)) => Ok(GoldAddress::Static {
            host,
            port: port.unwrap_or(defaults::GOLD_PORT),
        }),
        (Some(name), host_override) => {
            parse::k8s_name("TS_SERVICE", &name)?;
            Ok(GoldAddress::Service {
                name,
                port: match port {
                    Some(p) => ServicePort::Static(p),
                    None => ServicePort::Discovered { port_name },
                },
                host_override,
            })
        }
    }
}

/// How the probe logs in to Gold at `address`.
fn login(raw: &mut Raw, address: GoldAddress) -> Result<GoldConn, ConfigError> {
    let password_file = raw.gold_password_file.take();
    let password = parse::password("GOLD", raw.gold_password.take(), password_file.as_deref())?;
    let sslmode = match raw.gold_sslmode.take().as_deref().map(str::trim) {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(invalid(
                "GOLD_SSLMODE",
                other,
                "must be one of disable, prefer, require, verify-full",
            ));
        }
    };
    let sslrootcert = parse::path("GOLD_SSLROOTCERT", raw.gold_sslrootcert.take())?;
    if sslmode == SslMode::VerifyFull {
        let Some(ca) = &sslrootcert else {
            return Err(ConfigError::Missing {
                var: var("GOLD_SSLROOTCERT"),
                hint: "verify-full needs the CA certificate (PEM) that signed Gold's server certificate",
            });
        };
        std::fs::metadata(ca).map_err(|e| ConfigError::File {
            var: var("GOLD_SSLROOTCERT"),
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(GoldConn {
        address,
        user: non_empty("GOLD_USER", raw.gold_user.take())?.unwrap_or_else(|| defaults::GOLD_USER.into()),
        password,
        password_file: password_file.map(PathBuf::from),
        database: non_empty("GOLD_DATABASE", raw.gold_database.take())?
            .unwrap_or_else(|| defaults::GOLD_DATABASE.into()),
        sslmode,
        sslrootcert,
    })
}

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
        let mut site = SiteRaw::gold(raw);
        let address = address(&mut site)?;
        login(site, address)
    }
    fn uses_kubernetes(&self) -> bool {
        self.address.service().is_some()
    }
}

/// GoldDR as the guard at Gold probes it (`WATCHDOG_GOLDDR_*`): the same
/// kinds of address and login as Gold's, under their own names. `None` when
/// no GoldDR setting is given.
pub(super) fn load_golddr(raw: &mut Raw) -> Result<Option<GoldConn>, ConfigError> {
    let mut site = SiteRaw::golddr(raw);
    if site.service.is_none() && site.host.is_none() && site.port.is_none() {
        return Ok(None);
    }
    let address = address(&mut site)?;
    login(site, address).map(Some)
}

/// One site's address and login settings, taken out of [`Raw`], with the
/// names to report them by.
struct SiteRaw {
    /// `GOLD` or `GOLDDR`: the prefix of host, port, user, ...
    prefix: &'static str,
    /// The Transport Service settings' names.
    service_var: &'static str,
    port_name_var: &'static str,
    service: Option<String>,
    port_name: Option<String>,
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    database: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl SiteRaw {
    fn gold(raw: &mut Raw) -> Self {
        SiteRaw {
            prefix: "GOLD",
            service_var: "TS_SERVICE",
            port_name_var: "TS_PORT_NAME",
            service: raw.ts_service.take(),
            port_name: raw.ts_port_name.take(),
            host: raw.gold_host.take(),
            port: raw.gold_port.take(),
            user: raw.gold_user.take(),
            password: raw.gold_password.take(),
            password_file: raw.gold_password_file.take(),
            database: raw.gold_database.take(),
            sslmode: raw.gold_sslmode.take(),
            sslrootcert: raw.gold_sslrootcert.take(),
        }
    }

    fn golddr(raw: &mut Raw) -> Self {
        SiteRaw {
            prefix: "GOLDDR",
            service_var: "GOLDDR_TS_SERVICE",
            port_name_var: "GOLDDR_TS_PORT_NAME",
            service: raw.golddr_ts_service.take(),
            port_name: raw.golddr_ts_port_name.take(),
            host: raw.golddr_host.take(),
            port: raw.golddr_port.take(),
            user: raw.golddr_user.take(),
            password: raw.golddr_password.take(),
            password_file: raw.golddr_password_file.take(),
            database: raw.golddr_database.take(),
            sslmode: raw.golddr_sslmode.take(),
            sslrootcert: raw.golddr_sslrootcert.take(),
        }
    }

    /// `GOLD_HOST`, `GOLDDR_PORT`, ...: a setting's name without `WATCHDOG_`.
    fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }
}

fn address(r: &mut SiteRaw) -> Result<GoldAddress, ConfigError> {
    let service = non_empty(r.service_var, r.service.take())?;
    let port_name = non_empty(r.port_name_var, r.port_name.take())?;
    let host = non_empty(&r.name("HOST"), r.host.take())?;
    let port = r
        .port
        .take()
        .map(|v| parse::port(&r.name("PORT"), &v))
        .transpose()?;
    if let Some(name) = &port_name {
        if service.is_none() || port.is_some() {
            return Err(ConfigError::Conflict {
                var: var(r.port_name_var),
                other: var(&r.name("PORT")),
                reason: "a port name picks a port of the Transport Service; it means nothing with a static port or without a service",
            });
        }
        if name.parse::<u16>().is_ok() {
            return Err(invalid(
                r.port_name_var,
                name,
                "must be the port's name, not its number",
            ));
        }
    }
    match (service, host) {
        (None, None) => Err(ConfigError::Missing {
            var: var(&r.name("HOST")),
            hint: if r.prefix == "GOLD" {
                "Gold's PostgreSQL as seen from this site; or set WATCHDOG_TS_SERVICE to find it through the Transport Service"
            } else {
                "GoldDR's PostgreSQL as seen from Gold; or set WATCHDOG_GOLDDR_TS_SERVICE to find it through the reverse Transport Service"
            },
        }),
        (None, Some(host)) => Ok(GoldAddress::Static {
            host,
            port: port.unwrap_or(defaults::GOLD_PORT),
        }),
        (Some(name), host_override) => {
            parse::k8s_name(r.service_var, &name)?;
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

/// How the probe logs in to the site at `address`.
fn login(r: SiteRaw, address: GoldAddress) -> Result<GoldConn, ConfigError> {
    let password = parse::password(r.prefix, r.password.clone(), r.password_file.as_deref())?;
    let sslmode_var = r.name("SSLMODE");
    let sslmode = match r.sslmode.as_deref().map(str::trim) {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-full") => SslMode::VerifyFull,
        Some(other) => {
            return Err(invalid(
                &sslmode_var,
                other,
                "must be one of disable, prefer, require, verify-full",
            ));
        }
    };
    let ca_var = r.name("SSLROOTCERT");
    let sslrootcert = parse::path(&ca_var, r.sslrootcert.clone())?;
    if sslmode == SslMode::VerifyFull {
        let Some(ca) = &sslrootcert else {
            return Err(ConfigError::Missing {
                var: var(&ca_var),
                hint: "verify-full needs the CA certificate (PEM) that signed the server's certificate",
            });
        };
        std::fs::metadata(ca).map_err(|e| ConfigError::File {
            var: var(&ca_var),
            path: ca.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    let (user_var, database_var) = (r.name("USER"), r.name("DATABASE"));
    let user = non_empty(&user_var, r.user)?.unwrap_or_else(|| defaults::GOLD_USER.into());
    let database = non_empty(&database_var, r.database)?.unwrap_or_else(|| defaults::GOLD_DATABASE.into());
    Ok(GoldConn {
        address,
        user,
        password,
        password_file: r.password_file.map(PathBuf::from),
        database,
        sslmode,
        sslrootcert,
    })
}

//! Parsing one value, with an error that names its variable. Shared by the
//! concerns.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use super::{ConfigError, ENV_PREFIX};

/// A secret that cannot leak through `Debug`, `Display` or serialisation.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub(super) String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Password {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

pub(super) fn var(name: &str) -> String {
    format!("{ENV_PREFIX}{name}")
}

pub(super) fn invalid(name: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var(name),
        value: value.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn non_empty(name: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(invalid(name, &v, "must not be empty")),
        other => Ok(other),
    }
}

pub(super) fn duration(
    name: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let d = humantime::parse_duration(v.trim())
        .map_err(|e| invalid(name, &v, format!("{e}; use a duration such as 10s, 1500ms or 1m")))?;
    if d.is_zero() {
        return Err(invalid(name, &v, "must be greater than zero"));
    }
    Ok(d)
}

pub(super) fn count(name: &str, value: Option<String>, default: u32) -> Result<u32, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 1 && n <= i64::from(u32::MAX) => Ok(n as u32),
        _ => Err(invalid(name, &v, "must be a whole number of at least 1")),
    }
}

pub(super) fn port(name: &str, value: &str) -> Result<u16, ConfigError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(name, value, "must be a TCP port between 1 and 65535")),
    }
}

pub(super) fn boolean(name: &str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(
            name,
            value.as_deref().unwrap_or(""),
            "must be true or false",
        )),
    }
}

/// One of a fixed set of words, e.g. `WATCHDOG_MODE`.
pub(super) fn choice<T: Copy>(
    name: &str,
    value: Option<String>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let word = v.trim();
    choices
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
            invalid(name, word, format!("must be {}", or_list(&words)))
        })
}

/// `a, b or c`.
fn or_list(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// A Kubernetes object name (RFC 1123 label): the API would refuse anything
/// else, so say so now, naming the variable.
pub(super) fn k8s_name(name: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            value,
            "must be a Kubernetes object name: lower-case letters, digits, '-' and '.'",
        ))
    }
}

/// `<prefix>_PASSWORD` or `<prefix>_PASSWORD_FILE`, at most one.
pub(super) fn password(
    prefix: &str,
    value: Option<String>,
    file: Option<&str>,
) -> Result<Option<Password>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            var: var(&format!("{prefix}_PASSWORD")),
            other: var(&format!("{prefix}_PASSWORD_FILE")),
            reason: "set only one of them",
        }),
        (Some(p), None) => Ok(Some(Password(p))),
        (None, Some(path)) => Ok(Some(read_password_file(
            &format!("{prefix}_PASSWORD_FILE"),
            path,
        )?)),
        (None, None) => Ok(None),
    }
}

fn read_password_file(name: &str, path: &str) -> Result<Password, ConfigError> {
    let content = std::fs::read_to_string(path).map_err(|e| file_error(name, path, e.to_string()))?;
    // Secrets mounted from Kubernetes often end with a newline nobody typed.
    let trimmed = content.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(file_error(name, path, "the file is empty"));
    }
    Ok(Password(trimmed.to_string()))
}

fn file_error(name: &str, path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::File {
        var: var(name),
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// A PEM file of CA certificates, each parsed as X.509 now so that a wrong
/// file stops the start-up instead of the first TLS handshake.
pub(super) fn ca_certificates(name: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(name, path, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| file_error(name, path, format!("not PEM: {e}")))?;
        roots
            .add(cert.clone())
            .map_err(|e| file_error(name, path, format!("not a CA certificate: {e}")))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(file_error(
            name,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Where a file setting points, shown as given.
pub(super) fn path(name: &str, value: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    Ok(non_empty(name, value)?.map(PathBuf::from))
}

//! One probe of Gold: resolve, connect (optionally over TLS), ask
//! `pg_is_in_recovery()`, close. Everything under one hard timeout, and every
//! failure classified into what it says about Gold.

use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{GoldConn, SslMode};
use crate::observe::target::Endpoint;
use crate::observe::wal::Lsn;

/// Why Gold is considered unreachable or unusable as a primary. Only
/// evidence about Gold's side belongs here: every variant counts toward a
/// promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    Refused,
    Timeout,
    Reset,
    Eof,
    Unreachable,
    ShuttingDown,
    StartingUp,
    InRecovery,
    TlsCut,
    Io,
}

/// Why the probe could not judge Gold: something answered, or the probe
/// itself is misconfigured. Never counts toward a promotion, so every error
/// that is not clear evidence against Gold lands here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlindReason {
    /// Gold refused the credentials (wrong password, no pg_hba.conf entry,
    /// no CONNECT privilege, SCRAM exchange failed).
    AuthFailed,
    /// Gold asked for a password and none is configured.
    PasswordMissing,
    /// Gold asked for an authentication method the probe does not speak
    /// (GSSAPI, SSPI, Kerberos, an unknown SASL mechanism).
    AuthUnsupported,
    UnknownDatabase,
    TooManyConnections,
    /// Gold's certificate is not trusted (unknown CA, expired, bad
    /// signature, ...) or Gold rejected the probe's certificate.
    CertificateRejected,
    /// Gold's certificate is valid but issued to another name.
    CertificateNameMismatch,
    /// `sslmode=require`/`verify-full` and Gold does not offer TLS.
    TlsUnsupported,
    /// No TLS version, cipher suite or key exchange in common.
    TlsIncompatible,
    /// The probe's own settings are unusable (e.g. a host name that is not
    /// a valid TLS server name).
    ProbeConfig,
    /// Something answered, but not as PostgreSQL does: a wrong port, a
    /// middlebox, garbled TLS records.
    ProtocolError,
    /// The probe failed on this side (encoding, randomness, clock).
    ProbeError,
    /// The name did not resolve. That is this site's DNS, not evidence about
    /// Gold, so it must never count toward a promotion.
    Dns,
    ServerError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    Up,
    Down(DownReason),
    Blind(BlindReason),
}

impl DownReason {
    pub const ALL: [DownReason; 10] = [
        DownReason::Refused,
        DownReason::Timeout,
        DownReason::Reset,
        DownReason::Eof,
        DownReason::Unreachable,
        DownReason::ShuttingDown,
        DownReason::StartingUp,
        DownReason::InRecovery,
        DownReason::TlsCut,
        DownReason::Io,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::Refused => "refused",
            DownReason::Timeout => "timeout",
            DownReason::Reset => "reset",
            DownReason::Eof => "eof",
            DownReason::Unreachable => "unreachable",
            DownReason::ShuttingDown => "shutting_down",
            DownReason::StartingUp => "starting_up",
            DownReason::InRecovery => "in_recovery",
            DownReason::TlsCut => "tls_cut",
            DownReason::Io => "io",
        }
    }
}

impl BlindReason {
    pub const ALL: [BlindReason; 14] = [
        BlindReason::AuthFailed,
        BlindReason::PasswordMissing,
        BlindReason::AuthUnsupported,
        BlindReason::UnknownDatabase,
        BlindReason::TooManyConnections,
        BlindReason::CertificateRejected,
        BlindReason::CertificateNameMismatch,
        BlindReason::TlsUnsupported,
        BlindReason::TlsIncompatible,
        BlindReason::ProbeConfig,
        BlindReason::ProtocolError,
        BlindReason::ProbeError,
        BlindReason::Dns,
        BlindReason::ServerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlindReason::AuthFailed => "auth_failed",
            BlindReason::PasswordMissing => "password_missing",
            BlindReason::AuthUnsupported => "auth_unsupported",
            BlindReason::UnknownDatabase => "unknown_database",
            BlindReason::TooManyConnections => "too_many_connections",
            BlindReason::CertificateRejected => "certificate_rejected",
            BlindReason::CertificateNameMismatch => "certificate_name_mismatch",
            BlindReason::TlsUnsupported => "tls_unsupported",
            BlindReason::TlsIncompatible => "tls_incompatible",
            BlindReason::ProbeConfig => "probe_config",
            BlindReason::ProtocolError => "protocol_error",
            BlindReason::ProbeError => "probe_error",
            BlindReason::Dns => "dns",
            BlindReason::ServerError => "server_error",
        }
    }
}

impl Outcome {
    pub fn class(self) -> &'static str {
        match self {
            Outcome::Up => "up",
            Outcome::Down(_) => "down",
            Outcome::Blind(_) => "blind",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Up => "writable",
            Outcome::Down(r) => r.as_str(),
            Outcome::Blind(r) => r.as_str(),
        }
    }

    /// Every outcome, for pre-registering metric label sets.
    pub fn all() -> impl Iterator<Item = Outcome> {
        std::iter::once(Outcome::Up)
            .chain(DownReason::ALL.into_iter().map(Outcome::Down))
            .chain(BlindReason::ALL.into_iter().map(Outcome::Blind))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.class(), self.reason())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    pub outcome: Outcome,
    pub duration: Duration,
    /// The error as the server or the OS gave it; never contains a password.
    pub error: Option<String>,
    /// A primary's current WAL position, read in the same query.
    pub wal: Option<Lsn>,
}

/// The probe as the loop sees it, so the loop can be driven by anything.
pub trait Probe: Send + Sync {
    fn probe(&self, target: &Endpoint) -> impl Future<Output = ProbeReport> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA file {path}: {source}")]
    ReadCa {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("CA file {path} holds no usable certificate")]
    NoCa { path: String },
    #[error("cannot build TLS client: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A PostgreSQL probe; the TLS set-up is built once, at start-up.
pub struct PgProbe {
    conn: GoldConn,
    timeout: Duration,
    tls: MakeRustlsConnect,
}

impl PgProbe {
    pub fn new(conn: GoldConn, timeout: Duration) -> Result<PgProbe, TlsSetupError> {
        let tls = tls_connector(&conn)?;
        Ok(PgProbe { conn, timeout, tls })
    }

    fn pg_config(&self, target: &Endpoint, addrs: &[IpAddr]) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        // One host entry per address, as libpq tries every address a name
        // resolves to; the name stays the TLS server name.
        for addr in addrs {
            cfg.host(&target.host).hostaddr(*addr);
        }
        cfg.port(target.port)
            .user(&self.conn.user)
            .dbname(&self.conn.database)
            .application_name("patroni-dr-watchdog")
            .ssl_mode(match self.conn.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            });
        if let Some(p) = &self.conn.password {
            cfg.password(p.expose());
        }
        cfg
    }

    async fn attempt(
        &self,
        target: &Endpoint,
        addrs: &[IpAddr],
    ) -> Result<(Outcome, Option<Lsn>), (Outcome, String)> {
        let cfg = self.pg_config(target, addrs);
        let (client, connection) = cfg
            .connect(self.tls.clone())
            .await
            .map_err(|e| (classify(&e), describe(&e)))?;
        // The connection is driven here rather than spawned, so that when the
        // probe ends or times out nothing of it outlives this function.
        // The primary's WAL position rides on the same round trip: the RPO
        // metrics cost no extra query. A standby has none to give.
        let query = async move {
            let row = client
                .query_one(
                    "SELECT r, CASE WHEN r THEN NULL ELSE pg_current_wal_lsn() END FROM pg_is_in_recovery() r",
                    &[],
                )
                .await;
            drop(client); // sends Terminate; the connection future then ends
            row
        };
        let (row, _) = tokio::join!(query, connection);
        let (in_recovery, wal): (bool, Option<PgLsn>) = row
            .and_then(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .map_err(|e| (classify(&e), describe(&e)))?;
        Ok(if in_recovery {
            (Outcome::Down(DownReason::InRecovery), None)
        } else {
            (Outcome::Up, wal.map(|l| Lsn(u64::from(l))))
        })
    }
}

/// Why a query over the probe's login failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Connect(String),
    #[error("{message}")]
    Db { code: SqlState, message: String },
    #[error("no answer within {0}")]
    Timeout(String),
}

impl PgProbe {
    /// One query over the probe's login and TLS settings, within `bound`:
    /// for what the guard reads besides the probe itself.
    pub async fn query_one(
        &self,
        target: &Endpoint,
        sql: &str,
        bound: Duration,
    ) -> Result<tokio_postgres::Row, QueryError> {
        let run = async {
            let addrs = resolve(target)
                .await
                .map_err(|e| QueryError::Connect(format!("DNS lookup: {e}")))?;
            let (client, connection) = self
                .pg_config(target, &addrs)
                .connect(self.tls.clone())
                .await
                .map_err(|e| QueryError::Connect(describe(&e)))?;
            let query = async move {
                let row = client.query_one(sql, &[]).await;
                drop(client);
                row
            };
            let (row, _) = tokio::join!(query, connection);
            row.map_err(|e| match e.as_db_error() {
                Some(db) => QueryError::Db {
                    code: db.code().clone(),
                    message: db.message().to_string(),
                },
                None => QueryError::Connect(describe(&e)),
            })
        };
        tokio::time::timeout(bound, run)
            .await
            .map_err(|_| QueryError::Timeout(humantime::format_duration(bound).to_string()))?
    }
}

impl Probe for PgProbe {
    async fn probe(&self, target: &Endpoint) -> ProbeReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start) + self.timeout;
        let timed_out = || format!("no answer within {}", humantime::format_duration(self.timeout));
        // A slow or failing lookup is this site's DNS, not Gold: it gets its
        // own classification instead of counting as a timeout toward loss.
        let (outcome, error, wal) = match tokio::time::timeout_at(deadline, resolve(target)).await {
            Err(_) => (
                Outcome::Blind(BlindReason::Dns),
                Some(format!("DNS lookup: {}", timed_out())),
                None,
            ),
            Ok(Err(e)) => (
                Outcome::Blind(BlindReason::Dns),
                Some(format!("DNS lookup: {e}")),
                None,
            ),
            Ok(Ok(addrs)) => match tokio::time::timeout_at(deadline, self.attempt(target, &addrs)).await {
                Ok(Ok((outcome, wal))) => (outcome, None, wal),
                Ok(Err((outcome, error))) => (outcome, Some(error), None),
                Err(_) => (Outcome::Down(DownReason::Timeout), Some(timed_out()), None),
            },
        };
        let duration = start.elapsed();
        ProbeReport {
            outcome,
            duration,
            error,
            wal,
        }
    }
}

async fn resolve(target: &Endpoint) -> io::Result<Vec<IpAddr>> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut addrs: Vec<IpAddr> = Vec::new();
    for a in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
        if !addrs.contains(&a.ip()) {
            addrs.push(a.ip());
        }
    }
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no address", target.host),
        ));
    }
    Ok(addrs)
}

/// The whole error chain on one line, as an operator wants to read it.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => crate::error_chain(e),
    }
}

// What a failed connection or query says about Gold. The rule: `down` only
// for evidence that Gold's side is gone or unwell; anything that says the
// probe is misconfigured or cannot judge is `blind`, because a `down` counts
// toward a promotion and a misconfiguration must never promote.
//
// tokio-postgres 0.7 error kind (its Display text)  | outcome
// --------------------------------------------------+--------------------------------------
// Db ("db error"): SQLSTATE 57P01, 57P02            | down/shutting_down
//   57P03 "... shutting down"                       | down/shutting_down
//   57P03 otherwise (starting up, not accepting)    | down/starting_up
//   28P01, 28000, 42501                             | blind/auth_failed
//   3D000                                           | blind/unknown_database
//   53300                                           | blind/too_many_connections
//   anything else (a running server answered)       | blind/server_error
// Config ("invalid configuration"): password missing| blind/password_missing
//   any other (host/hostaddr/port counts)           | blind/probe_config
// ConfigParse ("invalid connection string")         | blind/probe_config
// Authentication ("authentication error"):          |
//   unsupported authentication method (GSS, SSPI,   | blind/auth_unsupported
//   Kerberos, SCM), unsupported SASL mechanism,     |
//   server did not use channel binding              |
//   SCRAM exchange failed (nonce, server signature) | blind/auth_failed
// Tls ("error performing TLS handshake"):           |
//   server does not support TLS (sslmode=require)   | blind/tls_unsupported
//   no hostname / sslnegotiation conflicts          | blind/probe_config
//   host is not a valid TLS server name             | blind/probe_config
//   a rustls error                                  | see the rustls table below
//   the connection was cut (EOF, reset)             | down/tls_cut
// Io ("error communicating with the server"),       |
// Connect ("error connecting to server"):           |
//   a rustls error inside                           | see the rustls table below
//   refused / reset, aborted, broken pipe / EOF /   | down/refused, down/reset, down/eof,
//   timed out / host, network unreachable           | down/timeout, down/unreachable
//   invalid data (not the PostgreSQL protocol)      | blind/protocol_error
//   permission denied (a local firewall)            | blind/probe_error
//   any other I/O error                             | down/io
// Closed ("connection closed": EOF mid-conversation)| down/eof
// Timeout ("timeout waiting for server")            | down/timeout
// UnexpectedMessage, Parse, FromSql, Column,        | blind/protocol_error
//   ColumnCount, RowCount (not PostgreSQL's answer) |
// Encode, ToSql, Parameters (our own request)       | blind/probe_error
// a kind this table does not know                   | blind/probe_error
//
// rustls 0.23 error (through tokio-postgres-rustls) | outcome
// --------------------------------------------------+--------------------------------------
// InvalidCertificate(NotValidForName[Context])      | blind/certificate_name_mismatch
// InvalidCertificate(UnknownIssuer, Expired,        | blind/certificate_rejected
//   NotValidYet, BadSignature, Revoked, ...)        |
// NoCertificatesPresented                           | blind/certificate_rejected
// AlertReceived(BadCertificate, UnknownCA,          | blind/certificate_rejected
//   CertificateRequired, AccessDenied, ...)         |   (Gold refused our certificate)
// AlertReceived(HandshakeFailure, ProtocolVersion,  | blind/tls_incompatible
//   InsufficientSecurity, IllegalParameter, ...)    |
// AlertReceived(DecodeError, BadRecordMac, ...)     | blind/protocol_error
// AlertReceived(InternalError)                      | blind/server_error
// AlertReceived(CloseNotify, UserCanceled)          | down/tls_cut
// PeerIncompatible(..), NoApplicationProtocol       | blind/tls_incompatible
// PeerMisbehaved, InvalidMessage, Inappropriate*,   | blind/protocol_error
//   DecryptError, PeerSentOversizedRecord, ECH      |
// HandshakeNotComplete                              | down/tls_cut
// UnsupportedNameType, InvalidCertRevocationList    | blind/probe_config
// EncryptError, FailedToGetCurrentTime,             | blind/probe_error
//   FailedToGetRandomBytes, General, Other, ...     |

/// What a failed connection or query says about Gold (see the table above).
pub fn classify(e: &tokio_postgres::Error) -> Outcome {
    if let Some(db) = e.as_db_error() {
        return classify_sqlstate(db.code(), db.message());
    }
    if let Some(tls) = rustls_source(e) {
        return classify_rustls(tls);
    }
    let cause = e.source().map(|c| c.to_string()).unwrap_or_default();
    match PgKind::of(e) {
        PgKind::Db => Outcome::Blind(BlindReason::ServerError),
        PgKind::Config if cause == "password missing" => Outcome::Blind(BlindReason::PasswordMissing),
        PgKind::Config | PgKind::ConfigParse => Outcome::Blind(BlindReason::ProbeConfig),
        PgKind::Authentication => classify_authentication(&cause),
        PgKind::Tls => match io_source(e) {
            Some(io) if invalid_server_name(io) => Outcome::Blind(BlindReason::ProbeConfig),
            Some(io) => match classify_io(io.kind()) {
                Outcome::Down(DownReason::Eof | DownReason::Reset | DownReason::Io) => {
                    Outcome::Down(DownReason::TlsCut)
                }
                other => other,
            },
            None if cause == "server does not support TLS" => Outcome::Blind(BlindReason::TlsUnsupported),
            None => Outcome::Blind(BlindReason::ProbeConfig),
        },
        PgKind::Io | PgKind::Connect => match io_source(e) {
            Some(io) => classify_io(io.kind()),
            None => Outcome::Down(DownReason::Io),
        },
        PgKind::Closed => Outcome::Down(DownReason::Eof),
        PgKind::Timeout => Outcome::Down(DownReason::Timeout),
        PgKind::UnexpectedMessage | PgKind::Parse | PgKind::FromSql | PgKind::Column | PgKind::RowCount => {
            Outcome::Blind(BlindReason::ProtocolError)
        }
        PgKind::Encode | PgKind::ToSql | PgKind::Parameters | PgKind::Unknown => {
            Outcome::Blind(BlindReason::ProbeError)
        }
    }
}

/// tokio-postgres keeps its error kind private; its Display text is the one
/// public, stable handle on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgKind {
    Io,
    UnexpectedMessage,
    Tls,
    ToSql,
    FromSql,
    Column,
    Parameters,
    Closed,
    Db,
    Parse,
    Encode,
    Authentication,
    ConfigParse,
    Config,
    RowCount,
    Connect,
    Timeout,
    Unknown,
}

impl PgKind {
    fn of(e: &tokio_postgres::Error) -> PgKind {
        Self::from_display(&e.to_string())
    }

    fn from_display(text: &str) -> PgKind {
        match text {
            "error communicating with the server" => PgKind::Io,
            "unexpected message from server" => PgKind::UnexpectedMessage,
            "error performing TLS handshake" => PgKind::Tls,
            "connection closed" => PgKind::Closed,
            "db error" => PgKind::Db,
            "error parsing response from server" => PgKind::Parse,
            "error encoding message to server" => PgKind::Encode,
            "authentication error" => PgKind::Authentication,
            "invalid connection string" => PgKind::ConfigParse,
            "invalid configuration" => PgKind::Config,
            "query returned an unexpected number of rows" => PgKind::RowCount,
            "query returned an unexpected number of columns" => PgKind::Column,
            "error connecting to server" => PgKind::Connect,
            "timeout waiting for server" => PgKind::Timeout,
            t if t.starts_with("error serializing parameter ") => PgKind::ToSql,
            t if t.starts_with("error deserializing column ") => PgKind::FromSql,
            t if t.starts_with("invalid column `") => PgKind::Column,
            t if t.starts_with("expected ") && t.contains(" parameters but got ") => PgKind::Parameters,
            _ => PgKind::Unknown,
        }
    }
}

fn classify_authentication(cause: &str) -> Outcome {
    match cause {
        "unsupported authentication method"
        | "unsupported SASL mechanism"
        | "server did not use channel binding" => Outcome::Blind(BlindReason::AuthUnsupported),
        // The SCRAM exchange itself failed (bad nonce, server signature that
        // does not match our password): Gold answered and disagrees with us.
        _ => Outcome::Blind(BlindReason::AuthFailed),
    }
}

fn io_source(e: &tokio_postgres::Error) -> Option<&io::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

/// tokio-rustls hands rustls' errors over wrapped in an `io::Error`.
fn rustls_source(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = s
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        source = s.source();
    }
    None
}

fn invalid_server_name(io: &io::Error) -> bool {
    io.get_ref()
        .is_some_and(|i| i.is::<rustls::pki_types::InvalidDnsNameError>())
}

pub fn classify_sqlstate(code: &SqlState, message: &str) -> Outcome {
    match *code {
        SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN => Outcome::Down(DownReason::ShuttingDown),
        // 57P03 covers "starting up", "shutting down" and "not yet accepting
        // connections": all mean no usable primary right now.
        SqlState::CANNOT_CONNECT_NOW if message.contains("shutting down") => {
            Outcome::Down(DownReason::ShuttingDown)
        }
        SqlState::CANNOT_CONNECT_NOW => Outcome::Down(DownReason::StartingUp),
        // 42501: the role lacks CONNECT on the database (or EXECUTE on
        // pg_is_in_recovery): the probe's grants, not Gold.
        SqlState::INVALID_PASSWORD
        | SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        | SqlState::INSUFFICIENT_PRIVILEGE => Outcome::Blind(BlindReason::AuthFailed),
        SqlState::INVALID_CATALOG_NAME => Outcome::Blind(BlindReason::UnknownDatabase),
        SqlState::TOO_MANY_CONNECTIONS => Outcome::Blind(BlindReason::TooManyConnections),
        // Anything else came from a running server: Gold is alive.
        _ => Outcome::Blind(BlindReason::ServerError),
    }
}

pub fn classify_io(kind: io::ErrorKind) -> Outcome {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused => Outcome::Down(DownReason::Refused),
        ConnectionReset | ConnectionAborted | BrokenPipe => Outcome::Down(DownReason::Reset),
        UnexpectedEof => Outcome::Down(DownReason::Eof),
        TimedOut => Outcome::Down(DownReason::Timeout),
        HostUnreachable | NetworkUnreachable | AddrNotAvailable | NetworkDown => {
            Outcome::Down(DownReason::Unreachable)
        }
        // Bytes arrived that are not PostgreSQL's protocol: a wrong port or
        // a middlebox answered, which says nothing about Gold.
        InvalidData | InvalidInput => Outcome::Blind(BlindReason::ProtocolError),
        // A local firewall or sandbox forbids the connection.
        PermissionDenied => Outcome::Blind(BlindReason::ProbeError),
        _ => Outcome::Down(DownReason::Io),
    }
}

pub fn classify_rustls(e: &rustls::Error) -> Outcome {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => Outcome::Blind(BlindReason::CertificateNameMismatch),
        E::InvalidCertificate(_) | E::NoCertificatesPresented => {
            Outcome::Blind(BlindReason::CertificateRejected)
        }
        E::AlertReceived(alert) => classify_alert(*alert),
        E::PeerIncompatible(_) | E::NoApplicationProtocol => Outcome::Blind(BlindReason::TlsIncompatible),
        E::PeerMisbehaved(_)
        | E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::DecryptError
        | E::PeerSentOversizedRecord
        | E::InvalidEncryptedClientHello(_) => Outcome::Blind(BlindReason::ProtocolError),
        E::HandshakeNotComplete => Outcome::Down(DownReason::TlsCut),
        E::UnsupportedNameType | E::InvalidCertRevocationList(_) => Outcome::Blind(BlindReason::ProbeConfig),
        // EncryptError, FailedToGetCurrentTime, FailedToGetRandomBytes,
        // General, Other, BadMaxFragmentSize, InconsistentKeys and whatever
        // a later rustls adds: this side's trouble, never evidence.
        _ => Outcome::Blind(BlindReason::ProbeError),
    }
}

fn classify_alert(alert: rustls::AlertDescription) -> Outcome {
    use rustls::AlertDescription as A;
    match alert {
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        | A::NoCertificate
        | A::CertificateRequired
        | A::CertificateUnobtainable
        | A::BadCertificateStatusResponse
        | A::BadCertificateHashValue => Outcome::Blind(BlindReason::CertificateRejected),
        A::UnexpectedMessage
        | A::BadRecordMac
        | A::DecryptionFailed
        | A::RecordOverflow
        | A::DecompressionFailure
        | A::DecodeError
        | A::DecryptError => Outcome::Blind(BlindReason::ProtocolError),
        A::InternalError => Outcome::Blind(BlindReason::ServerError),
        A::CloseNotify | A::UserCanceled => Outcome::Down(DownReason::TlsCut),
        // HandshakeFailure, ProtocolVersion, InsufficientSecurity,
        // IllegalParameter, UnrecognisedName, MissingExtension, ...
        _ => Outcome::Blind(BlindReason::TlsIncompatible),
    }
}

fn tls_connector(conn: &GoldConn) -> Result<MakeRustlsConnect, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match (conn.sslmode, &conn.sslrootcert) {
        (SslMode::VerifyFull, Some(ca)) => {
            let path = ca.display().to_string();
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|source| TlsSetupError::ReadCa {
                path: path.clone(),
                source,
            })? {
                let cert = cert.map_err(|source| TlsSetupError::ReadCa {
                    path: path.clone(),
                    source,
                })?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsSetupError::NoCa { path });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // libpq's prefer/require encrypt without verifying: the same here.
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_split_between_down_and_blind() {
        let cases = [
            (
                SqlState::ADMIN_SHUTDOWN,
                "",
                Outcome::Down(DownReason::ShuttingDown),
            ),
            (
                SqlState::CRASH_SHUTDOWN,
                "",
                Outcome::Down(DownReason::ShuttingDown),
            ),
            (
                SqlState::CANNOT_CONNECT_NOW,
                "the database system is starting up",
                Outcome::Down(DownReason::StartingUp),
            ),
            (
                SqlState::CANNOT_CONNECT_NOW,
                "the database system is shutting down",
                Outcome::Down(DownReason::ShuttingDown),
            ),
            (
                SqlState::INVALID_PASSWORD,
                "",
                Outcome::Blind(BlindReason::AuthFailed),
            ),
            (
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no pg_hba.conf entry",
                Outcome::Blind(BlindReason::AuthFailed),
            ),
            (
                SqlState::INVALID_CATALOG_NAME,
                "",
                Outcome::Blind(BlindReason::UnknownDatabase),
            ),
            (
                SqlState::TOO_MANY_CONNECTIONS,
                "",
                Outcome::Blind(BlindReason::TooManyConnections),
            ),
            (
                SqlState::INSUFFICIENT_PRIVILEGE,
                "permission denied for database",
                Outcome::Blind(BlindReason::AuthFailed),
            ),
            (SqlState::DISK_FULL, "", Outcome::Blind(BlindReason::ServerError)),
        ];
        for (code, msg, want) in cases {
            assert_eq!(classify_sqlstate(&code, msg), want, "{}", code.code());
        }
    }

    #[test]
    fn lost_connections_are_down_foreign_bytes_and_local_refusals_blind() {
        use io::ErrorKind::*;
        let down = |r| Outcome::Down(r);
        assert_eq!(classify_io(ConnectionRefused), down(DownReason::Refused));
        assert_eq!(classify_io(ConnectionReset), down(DownReason::Reset));
        assert_eq!(classify_io(BrokenPipe), down(DownReason::Reset));
        assert_eq!(classify_io(UnexpectedEof), down(DownReason::Eof));
        assert_eq!(classify_io(TimedOut), down(DownReason::Timeout));
        assert_eq!(classify_io(HostUnreachable), down(DownReason::Unreachable));
        assert_eq!(classify_io(Other), down(DownReason::Io));
        assert_eq!(
            classify_io(InvalidData),
            Outcome::Blind(BlindReason::ProtocolError)
        );
        assert_eq!(
            classify_io(PermissionDenied),
            Outcome::Blind(BlindReason::ProbeError)
        );
    }

    #[test]
    fn rustls_errors_blame_gold_only_for_a_cut_handshake() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        let blind = |r| Outcome::Blind(r);
        let cases = [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::InvalidCertificate(C::Expired),
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::InvalidCertificate(C::BadSignature),
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::InvalidCertificate(C::NotValidForName),
                blind(BlindReason::CertificateNameMismatch),
            ),
            (
                E::NoCertificatesPresented,
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::AlertReceived(A::BadCertificate),
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::AlertReceived(A::CertificateRequired),
                blind(BlindReason::CertificateRejected),
            ),
            (
                E::AlertReceived(A::HandshakeFailure),
                blind(BlindReason::TlsIncompatible),
            ),
            (
                E::AlertReceived(A::ProtocolVersion),
                blind(BlindReason::TlsIncompatible),
            ),
            (
                E::AlertReceived(A::DecodeError),
                blind(BlindReason::ProtocolError),
            ),
            (
                E::AlertReceived(A::InternalError),
                blind(BlindReason::ServerError),
            ),
            (
                E::AlertReceived(A::CloseNotify),
                Outcome::Down(DownReason::TlsCut),
            ),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13),
                blind(BlindReason::TlsIncompatible),
            ),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
                blind(BlindReason::TlsIncompatible),
            ),
            (
                E::PeerMisbehaved(rustls::PeerMisbehaved::IncorrectBinder),
                blind(BlindReason::ProtocolError),
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                blind(BlindReason::ProtocolError),
            ),
            (E::DecryptError, blind(BlindReason::ProtocolError)),
            (E::UnsupportedNameType, blind(BlindReason::ProbeConfig)),
            (E::FailedToGetRandomBytes, blind(BlindReason::ProbeError)),
            (E::General("x".into()), blind(BlindReason::ProbeError)),
            (E::HandshakeNotComplete, Outcome::Down(DownReason::TlsCut)),
        ];
        for (error, want) in cases {
            assert_eq!(classify_rustls(&error), want, "{error}");
        }
    }

    #[test]
    fn authentication_errors_split_into_unsupported_and_failed() {
        for cause in [
            "unsupported authentication method",
            "unsupported SASL mechanism",
            "server did not use channel binding",
        ] {
            assert_eq!(
                classify_authentication(cause),
                Outcome::Blind(BlindReason::AuthUnsupported),
                "{cause}"
            );
        }
        assert_eq!(
            classify_authentication("invalid server signature"),
            Outcome::Blind(BlindReason::AuthFailed)
        );
    }

    #[test]
    fn every_display_text_of_tokio_postgres_names_its_kind() {
        let cases = [
            ("error communicating with the server", PgKind::Io),
            ("unexpected message from server", PgKind::UnexpectedMessage),
            ("error performing TLS handshake", PgKind::Tls),
            ("error serializing parameter 0", PgKind::ToSql),
            ("error deserializing column 0", PgKind::FromSql),
            ("invalid column `x`", PgKind::Column),
            ("query returned an unexpected number of columns", PgKind::Column),
            ("expected 1 parameters but got 0", PgKind::Parameters),
            ("connection closed", PgKind::Closed),
            ("db error", PgKind::Db),
            ("error parsing response from server", PgKind::Parse),
            ("error encoding message to server", PgKind::Encode),
            ("authentication error", PgKind::Authentication),
            ("invalid connection string", PgKind::ConfigParse),
            ("invalid configuration", PgKind::Config),
            ("query returned an unexpected number of rows", PgKind::RowCount),
            ("error connecting to server", PgKind::Connect),
            ("timeout waiting for server", PgKind::Timeout),
            ("something new", PgKind::Unknown),
        ];
        for (text, kind) in cases {
            assert_eq!(PgKind::from_display(text), kind, "{text}");
        }
    }

    // The Display texts above are tokio-postgres' private API in practice:
    // these pin them to the version in Cargo.lock with errors it really makes.
    #[tokio::test]
    async fn real_config_errors_are_blind_probe_config() {
        let e = tokio_postgres::Config::new()
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("a config without a host cannot connect");
        assert_eq!(PgKind::of(&e), PgKind::Config);
        assert_eq!(classify(&e), Outcome::Blind(BlindReason::ProbeConfig));

        let e = "host=x sslmode=sometimes"
            .parse::<tokio_postgres::Config>()
            .expect_err("sslmode=sometimes is invalid");
        assert_eq!(PgKind::of(&e), PgKind::ConfigParse);
        assert_eq!(classify(&e), Outcome::Blind(BlindReason::ProbeConfig));
    }

    #[tokio::test]
    async fn a_refused_connection_is_down_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let e = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("x")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens");
        assert_eq!(classify(&e), Outcome::Down(DownReason::Refused), "{e}");
    }

    #[test]
    fn every_outcome_has_its_own_labels() {
        let labels: std::collections::HashSet<_> = Outcome::all().map(|o| (o.class(), o.reason())).collect();
        assert_eq!(labels.len(), 1 + DownReason::ALL.len() + BlindReason::ALL.len());
    }
}

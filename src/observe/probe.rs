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
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{GoldConn, SslMode};
use crate::decide::detector::Observation;
use crate::observe::target::Endpoint;

/// Why Gold is considered unreachable or unusable as a primary.
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

/// Why the probe could not judge Gold although something answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlindReason {
    AuthFailed,
    UnknownDatabase,
    TooManyConnections,
    CertificateRejected,
    TlsUnsupported,
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
    pub const ALL: [BlindReason; 7] = [
        BlindReason::AuthFailed,
        BlindReason::UnknownDatabase,
        BlindReason::TooManyConnections,
        BlindReason::CertificateRejected,
        BlindReason::TlsUnsupported,
        BlindReason::Dns,
        BlindReason::ServerError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlindReason::AuthFailed => "auth_failed",
            BlindReason::UnknownDatabase => "unknown_database",
            BlindReason::TooManyConnections => "too_many_connections",
            BlindReason::CertificateRejected => "certificate_rejected",
            BlindReason::TlsUnsupported => "tls_unsupported",
            BlindReason::Dns => "dns",
            BlindReason::ServerError => "server_error",
        }
    }
}

impl Outcome {
    pub fn observation(self) -> Observation {
        match self {
            Outcome::Up => Observation::Up,
            Outcome::Down(_) => Observation::Down,
            Outcome::Blind(_) => Observation::Blind,
        }
    }

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

    async fn attempt(&self, target: &Endpoint, addrs: &[IpAddr]) -> Result<Outcome, (Outcome, String)> {
        let cfg = self.pg_config(target, addrs);
        let (client, connection) = cfg
            .connect(self.tls.clone())
            .await
            .map_err(|e| (classify(&e), describe(&e)))?;
        // The connection is driven here rather than spawned, so that when the
        // probe ends or times out nothing of it outlives this function.
        let query = async move {
            let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
            drop(client); // sends Terminate; the connection future then ends
            row
        };
        let (row, _) = tokio::join!(query, connection);
        let in_recovery: bool = row
            .and_then(|r| r.try_get(0))
            .map_err(|e| (classify(&e), describe(&e)))?;
        Ok(if in_recovery {
            Outcome::Down(DownReason::InRecovery)
        } else {
            Outcome::Up
        })
    }
}

impl Probe for PgProbe {
    async fn probe(&self, target: &Endpoint) -> ProbeReport {
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start) + self.timeout;
        let timed_out = || format!("no answer within {}", humantime::format_duration(self.timeout));
        // A slow or failing lookup is this site's DNS, not Gold: it gets its
        // own classification instead of counting as a timeout toward loss.
        let (outcome, error) = match tokio::time::timeout_at(deadline, resolve(target)).await {
            Err(_) => (
                Outcome::Blind(BlindReason::Dns),
                Some(format!("DNS lookup: {}", timed_out())),
            ),
            Ok(Err(e)) => (Outcome::Blind(BlindReason::Dns), Some(format!("DNS lookup: {e}"))),
            Ok(Ok(addrs)) => match tokio::time::timeout_at(deadline, self.attempt(target, &addrs)).await {
                Ok(Ok(outcome)) => (outcome, None),
                Ok(Err((outcome, error))) => (outcome, Some(error)),
                Err(_) => (Outcome::Down(DownReason::Timeout), Some(timed_out())),
            },
        };
        let duration = start.elapsed();
        ProbeReport {
            outcome,
            duration,
            error,
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

/// What a failed connection or query says about Gold.
pub fn classify(e: &tokio_postgres::Error) -> Outcome {
    if let Some(db) = e.as_db_error() {
        return classify_sqlstate(db.code(), db.message());
    }
    let during_tls = e.to_string().starts_with("error performing TLS handshake");
    let io = io_source(e);
    if let Some(tls) = io
        .and_then(|io| io.get_ref())
        .and_then(|i| i.downcast_ref::<rustls::Error>())
    {
        return classify_rustls(tls);
    }
    if during_tls && io.is_none() {
        // tokio-postgres's own TLS negotiation errors: the server said it
        // does not do TLS while we require it.
        return Outcome::Blind(BlindReason::TlsUnsupported);
    }
    match io.map(io::Error::kind) {
        Some(kind) => {
            let reason = classify_io(kind);
            if during_tls && matches!(reason, DownReason::Eof | DownReason::Reset | DownReason::Io) {
                Outcome::Down(DownReason::TlsCut)
            } else {
                Outcome::Down(reason)
            }
        }
        None if e.is_closed() => Outcome::Down(DownReason::Eof),
        None => Outcome::Down(DownReason::Io),
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

pub fn classify_sqlstate(code: &SqlState, message: &str) -> Outcome {
    match *code {
        SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN => Outcome::Down(DownReason::ShuttingDown),
        // 57P03 covers "starting up", "shutting down" and "not yet accepting
        // connections": all mean no usable primary right now.
        SqlState::CANNOT_CONNECT_NOW if message.contains("shutting down") => {
            Outcome::Down(DownReason::ShuttingDown)
        }
        SqlState::CANNOT_CONNECT_NOW => Outcome::Down(DownReason::StartingUp),
        SqlState::INVALID_PASSWORD | SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            Outcome::Blind(BlindReason::AuthFailed)
        }
        SqlState::INVALID_CATALOG_NAME => Outcome::Blind(BlindReason::UnknownDatabase),
        SqlState::TOO_MANY_CONNECTIONS => Outcome::Blind(BlindReason::TooManyConnections),
        // Anything else came from a running server: Gold is alive.
        _ => Outcome::Blind(BlindReason::ServerError),
    }
}

pub fn classify_io(kind: io::ErrorKind) -> DownReason {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused => DownReason::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe => DownReason::Reset,
        UnexpectedEof => DownReason::Eof,
        TimedOut => DownReason::Timeout,
        HostUnreachable | NetworkUnreachable | AddrNotAvailable | NetworkDown => DownReason::Unreachable,
        _ => DownReason::Io,
    }
}

pub fn classify_rustls(e: &rustls::Error) -> Outcome {
    match e {
        // The server presented a certificate we do not trust, or it did not
        // accept ours: a TLS server answered, so Gold is there.
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::AlertReceived(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => Outcome::Blind(BlindReason::CertificateRejected),
        _ => Outcome::Down(DownReason::TlsCut),
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
            (SqlState::DISK_FULL, "", Outcome::Blind(BlindReason::ServerError)),
        ];
        for (code, msg, want) in cases {
            assert_eq!(classify_sqlstate(&code, msg), want, "{}", code.code());
        }
    }

    #[test]
    fn io_errors_are_down_with_their_reason() {
        use io::ErrorKind::*;
        assert_eq!(classify_io(ConnectionRefused), DownReason::Refused);
        assert_eq!(classify_io(ConnectionReset), DownReason::Reset);
        assert_eq!(classify_io(BrokenPipe), DownReason::Reset);
        assert_eq!(classify_io(UnexpectedEof), DownReason::Eof);
        assert_eq!(classify_io(TimedOut), DownReason::Timeout);
        assert_eq!(classify_io(HostUnreachable), DownReason::Unreachable);
        assert_eq!(classify_io(Other), DownReason::Io);
    }

    #[test]
    fn a_rejected_certificate_is_blind_a_cut_handshake_is_down() {
        let bad_cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            classify_rustls(&bad_cert),
            Outcome::Blind(BlindReason::CertificateRejected)
        );
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(
            classify_rustls(&name),
            Outcome::Blind(BlindReason::CertificateRejected)
        );
        assert_eq!(
            classify_rustls(&rustls::Error::HandshakeNotComplete),
            Outcome::Down(DownReason::TlsCut)
        );
    }

    #[test]
    fn only_up_and_down_feed_the_detector_as_such() {
        assert_eq!(Outcome::Up.observation(), Observation::Up);
        for r in DownReason::ALL {
            assert_eq!(Outcome::Down(r).observation(), Observation::Down);
        }
        for r in BlindReason::ALL {
            assert_eq!(Outcome::Blind(r).observation(), Observation::Blind);
        }
        let labels: std::collections::HashSet<_> = Outcome::all().map(|o| (o.class(), o.reason())).collect();
        assert_eq!(labels.len(), 1 + DownReason::ALL.len() + BlindReason::ALL.len());
    }
}

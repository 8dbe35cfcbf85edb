//! The local (GoldDR) PostgreSQL: the WAL receiver and stale-data guards read
//! it, and `pg-promote` promotes it.

use serde::Serialize;

use super::parse::{self, Password, non_empty};
use super::vars::Raw;
use super::{ConfigError, defaults};

#[derive(Debug, Clone, Serialize)]
pub struct LocalPgConn {
    /// A host name, an IP, or a unix socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Password>,
    pub database: String,
}

pub(super) fn load(raw: &mut Raw) -> Result<LocalPgConn, ConfigError> {
    Ok(LocalPgConn {
        host: non_empty("LOCAL_PG_HOST", raw.local_pg_host.take())?.unwrap_or_else(|| "127.0.0.1".into()),
        port: match raw.local_pg_port.take() {
            Some(v) => parse::port("LOCAL_PG_PORT", &v)?,
            None => defaults::GOLD_PORT,
        },
        user: non_empty("LOCAL_PG_USER", raw.local_pg_user.take())?
            .unwrap_or_else(|| defaults::GOLD_USER.into()),
        password: parse::password(
            "LOCAL_PG",
            raw.local_pg_password.take(),
            raw.local_pg_password_file.take().as_deref(),
        )?,
        database: non_empty("LOCAL_PG_DATABASE", raw.local_pg_database.take())?
            .unwrap_or_else(|| defaults::GOLD_DATABASE.into()),
    })
}

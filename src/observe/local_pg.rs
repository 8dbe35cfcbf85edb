//! The local (GoldDR) PostgreSQL: its WAL receiver is independent evidence
//! about Gold, its replay position bounds the data a promotion would lose,
//! and for a plain streaming standby it is what `pg_promote()` promotes.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::NoTls;
use tokio_postgres::types::PgLsn;

use crate::config::LocalPgConn;
use crate::observe::cluster_config::DISARMED_SETTING;
use crate::observe::wal::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalReceiver {
    /// `pg_stat_wal_receiver.status`, `None` when no receiver runs.
    pub status: Option<String>,
    /// Time since the receiver last heard from its upstream.
    pub last_msg_age: Option<Duration>,
    /// Time since the last replayed transaction committed on Gold.
    pub replay_age: Option<Duration>,
    pub in_recovery: bool,
    /// How far WAL from Gold has been received and replayed.
    pub received: Option<Lsn>,
    pub replayed: Option<Lsn>,
}

#[derive(Clone)]
pub struct LocalPg {
    config: tokio_postgres::Config,
    timeout: Duration,
}

impl LocalPg {
    pub fn new(conn: &LocalPgConn, timeout: Duration) -> LocalPg {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&conn.host)
            .port(conn.port)
            .user(&conn.user)
            .dbname(&conn.database)
            .application_name("patroni-dr-watchdog")
            .connect_timeout(timeout);
        if let Some(p) = &conn.password {
            config.password(p.expose());
        }
        LocalPg { config, timeout }
    }

    /// Runs `f` on a fresh connection under the timeout; the connection is
    /// closed when it returns.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(tokio_postgres::Client) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let work = async {
            let (client, connection) = self.config.connect(NoTls).await?;
            let (result, _) = tokio::join!(f(client), connection);
            result
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(crate::error_chain(&e)),
            Err(_) => Err(format!(
                "local PostgreSQL: no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    pub async fn wal_receiver(&self) -> Result<WalReceiver, String> {
        self.with_client(|client| async move {
            let row = client
                .query_one(
                    "SELECT pg_is_in_recovery(), \
                       (SELECT status FROM pg_stat_wal_receiver), \
                       (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver), \
                       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
                       pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
                    &[],
                )
                .await;
            drop(client);
            let row = row?;
            let age = |secs: Option<f64>| secs.map(|s| Duration::from_secs_f64(s.max(0.0)));
            let lsn = |l: Option<PgLsn>| l.map(|l| Lsn(u64::from(l)));
            Ok(WalReceiver {
                in_recovery: row.try_get(0)?,
                status: row.try_get(1)?,
                last_msg_age: age(row.try_get(2)?),
                replay_age: age(row.try_get(3)?),
                received: lsn(row.try_get(4)?),
                replayed: lsn(row.try_get(5)?),
            })
        })
        .await
    }

    /// Whether it is still a standby, and whether an operator disarmed the
    /// watchdog with our own setting (see `cluster_config::DISARMED_SETTING`).
    pub async fn recovery_and_disarm(&self) -> Result<(bool, bool), String> {
        let sql = format!(
            "SELECT pg_is_in_recovery(), \
               coalesce(current_setting('{DISARMED_SETTING}', true), '') IN ('on', 'true', 'yes', '1')"
        );
        self.with_client(|client| async move {
            let row = client.query_one(&sql, &[]).await;
            drop(client);
            let row = row?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
        .await
    }

    /// `pg_promote()`, waiting up to 60 s for the end of recovery. `false`
    /// when PostgreSQL did not finish promoting in that time.
    pub async fn promote(&self) -> Result<bool, String> {
        let long = LocalPg {
            config: self.config.clone(),
            timeout: self.timeout + Duration::from_secs(60),
        };
        long.with_client(|client| async move {
            let row = client.query_one("SELECT pg_promote(true, 60)", &[]).await;
            drop(client);
            row?.try_get(0)
        })
        .await
    }
}

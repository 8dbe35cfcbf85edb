//! WAL positions and timeline histories, as PostgreSQL and Patroni give them:
//! what the guard needs to say which writes existed only on Gold's old
//! timeline once Gold follows a promoted GoldDR.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::observe::probe::PgProbe;
use crate::observe::target::Endpoint;

/// A WAL position (`pg_lsn`), shown as PostgreSQL shows it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a WAL position (like 0/3000148)");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A position on a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalPoint {
    pub timeline: u32,
    pub lsn: Lsn,
}

/// One line of a timeline history file: the timeline `parent` ended at
/// `switchpoint`, where its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Branch {
    pub parent: u32,
    pub switchpoint: Lsn,
}

/// Parses a timeline history file (`00000002.history`): one line per
/// ancestor, `parentTLI <tab> switchpoint <tab> reason`; blank lines and `#`
/// comments are allowed, as PostgreSQL's own reader allows them.
pub fn parse_history(text: &str) -> Result<Vec<Branch>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let (Some(parent), Some(switchpoint)) = (fields.next(), fields.next()) else {
                return Err(format!("timeline history line {line:?} has no switchpoint"));
            };
            Ok(Branch {
                parent: parent
                    .parse()
                    .map_err(|_| format!("timeline history line {line:?}: {parent:?} is not a timeline"))?,
                switchpoint: switchpoint.parse()?,
            })
        })
        .collect()
}

/// Why GoldDR's history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "WATCHDOG_GOLDDR_USER may not read GoldDR's timeline history ({0}): on GoldDR run GRANT EXECUTE ON FUNCTION pg_read_file(text) TO that role"
    )]
    NotAllowed(String),
    #[error("GoldDR is still on its first timeline: it was never promoted")]
    NeverPromoted,
    #[error("cannot read GoldDR's timeline history: {0}")]
    Query(String),
    #[error("GoldDR's timeline history: {0}")]
    Malformed(String),
}

/// GoldDR's current timeline and its ancestry, over the guard's own login
/// through the reverse Transport Service. A promoted server's current
/// timeline is in the name of the WAL file it writes; its history file holds
/// every branch it descends from.
pub async fn golddr_history(
    probe: &PgProbe,
    target: &Endpoint,
    bound: std::time::Duration,
) -> Result<(u32, Vec<Branch>), HistoryError> {
    const SQL: &str = "SELECT t.tli, CASE WHEN t.tli = '00000001' THEN NULL \
                       ELSE pg_read_file('pg_wal/' || t.tli || '.history') END \
                       FROM (SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) AS tli) t";
    let row = probe.query_one(target, SQL, bound).await.map_err(|e| match e {
        crate::observe::probe::QueryError::Db { code, message }
            if code == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE =>
        {
            HistoryError::NotAllowed(message)
        }
        e => HistoryError::Query(e.to_string()),
    })?;
    let tli: String = row
        .try_get(0)
        .map_err(|e| HistoryError::Malformed(e.to_string()))?;
    let timeline =
        u32::from_str_radix(&tli, 16).map_err(|_| HistoryError::Malformed(format!("timeline {tli:?}")))?;
    let text: Option<String> = row
        .try_get(1)
        .map_err(|e| HistoryError::Malformed(e.to_string()))?;
    let text = text.ok_or(HistoryError::NeverPromoted)?;
    Ok((timeline, parse_history(&text).map_err(HistoryError::Malformed)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_as_postgresql_does() {
        for s in ["0/3000148", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/0"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("1/0".parse::<Lsn>().unwrap(), Lsn(1 << 32));
        for bad in ["", "3000148", "0/xyz", "1/2/3", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_history_file_lists_every_ancestor() {
        let text = "1\t0/3000148\tno recovery target specified\n\n# a comment\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(
            parse_history(text).unwrap(),
            vec![
                Branch {
                    parent: 1,
                    switchpoint: Lsn(0x0300_0148)
                },
                Branch {
                    parent: 2,
                    switchpoint: Lsn(0x0500_0000)
                },
            ]
        );
        assert!(parse_history("1\n").is_err());
        assert!(parse_history("x\t0/1\treason\n").is_err());
        assert_eq!(parse_history("").unwrap(), vec![]);
    }
}

//! Who else is asked about Gold: the witnesses (and how many must agree),
//! and Gold's signals. Whether any witness is listed also picks the probe's
//! default timing.

use std::time::Duration;

use serde::Serialize;

use super::parse::{self, invalid, var};
use super::vars::Raw;
use super::{ConfigError, defaults, humantime_serde_compat};
use crate::decide::quorum::majority;
use crate::observe::signal::{self, Signal};
use crate::observe::witness::{self, Witness};

#[derive(Debug, Clone, Serialize)]
pub struct Quorum {
    pub witnesses: Vec<Witness>,
    /// How many witnesses must agree; 0 when none is listed.
    pub needed: usize,
    #[serde(with = "humantime_serde_compat")]
    pub witness_max_age: Duration,
    pub gold_signals: Vec<Signal>,
}

impl Quorum {
    /// No witness: this watchdog alone judges Gold, and cannot tell a tunnel
    /// outage from the loss of Gold's site.
    pub fn single_observer(&self) -> bool {
        self.witnesses.is_empty()
    }
}

pub(super) fn load(raw: &mut Raw) -> Result<Quorum, ConfigError> {
    let witnesses = match raw.witnesses.take() {
        Some(v) => witness::parse_list(&v).map_err(|e| invalid("WITNESSES", &v, e))?,
        None => Vec::new(),
    };
    let needed = match raw.quorum.take() {
        None => majority(witnesses.len()) * usize::from(!witnesses.is_empty()),
        Some(_) if witnesses.is_empty() => {
            return Err(ConfigError::Conflict {
                var: var("QUORUM"),
                other: var("WITNESSES"),
                reason: "a quorum needs witnesses: list them in WATCHDOG_WITNESSES, or unset WATCHDOG_QUORUM",
            });
        }
        Some(v) => {
            let n = parse::count("QUORUM", Some(v.clone()), 1)? as usize;
            if n > witnesses.len() {
                return Err(invalid(
                    "QUORUM",
                    &v,
                    format!(
                        "more than the {} witnesses listed in WATCHDOG_WITNESSES: no promotion could ever happen",
                        witnesses.len()
                    ),
                ));
            }
            n
        }
    };
    let witness_max_age = parse::duration(
        "WITNESS_MAX_AGE",
        raw.witness_max_age.take(),
        defaults::WITNESS_MAX_AGE,
    )?;
    let gold_signals = match raw.gold_signals.take() {
        Some(v) => signal::parse_list(&v).map_err(|e| invalid("GOLD_SIGNALS", &v, e))?,
        None => Vec::new(),
    };
    Ok(Quorum {
        witnesses,
        needed,
        witness_max_age,
        gold_signals,
    })
}

/// Gold's site heartbeat, for the witness: required, since without it a
/// witness cannot tell a failover inside Gold from the loss of its site.
pub(super) fn heartbeat(raw: &mut Raw) -> Result<Vec<Signal>, ConfigError> {
    const HINT: &str = "Gold's Patroni REST API as this witness reaches it, e.g. \
                        http://gold-patroni.example:8008/liveness (any HTTP answer proves Gold's site alive); \
                        list every member or a Service in front of them, comma-separated";
    let Some(v) = parse::non_empty("GOLD_HEARTBEAT", raw.gold_heartbeat.take())? else {
        return Err(ConfigError::Missing {
            var: var("GOLD_HEARTBEAT"),
            hint: HINT,
        });
    };
    let signals = signal::parse_list(&v).map_err(|e| invalid("GOLD_HEARTBEAT", &v, e))?;
    if signals.is_empty() {
        return Err(ConfigError::Missing {
            var: var("GOLD_HEARTBEAT"),
            hint: HINT,
        });
    }
    Ok(signals)
}

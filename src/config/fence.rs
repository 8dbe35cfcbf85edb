//! Fencing: when the guard at Gold demotes Gold, what it writes, and the DR
//! watchdog's side of the pairing (it must promote later than the guard
//! fences).

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use super::parse::{self, invalid};
use super::probe::Timing;
use super::vars::Raw;
use super::{ConfigError, defaults, humantime_serde_compat};

/// How long the guard's fence may take beyond `WATCHDOG_FENCE_AFTER`: its
/// own detection (one interval and one timeout, 3 s with its defaults), the
/// write, and Patroni demoting Gold (a restart as a standby, a few seconds),
/// with room to spare on a busy machine.
pub const PAIRING_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct Fencing {
    /// Gold isolated this long without a break: fence.
    #[serde(with = "humantime_serde_compat")]
    pub fence_after: Duration,
    /// Settings written into `standby_cluster` besides GoldDR's host and
    /// port (`primary_slot_name`, `create_replica_methods`, ...).
    pub standby_cluster: Map<String, Value>,
}

pub(super) fn load(raw: &mut Raw) -> Result<Fencing, ConfigError> {
    let fence_after = parse::duration("FENCE_AFTER", raw.fence_after.take(), defaults::FENCE_AFTER)?;
    let standby_cluster = match raw.fence_standby_cluster.take() {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => {
                if let Some(key) = ["host", "port"].into_iter().find(|k| map.contains_key(*k)) {
                    return Err(invalid(
                        "FENCE_STANDBY_CLUSTER",
                        &text,
                        format!("{key} comes from GoldDR's address (WATCHDOG_GOLDDR_*), leave it out"),
                    ));
                }
                map
            }
            Ok(_) => {
                return Err(invalid(
                    "FENCE_STANDBY_CLUSTER",
                    &text,
                    "must be a JSON object of standby_cluster settings, e.g. {\"primary_slot_name\":\"gold\"}",
                ));
            }
            Err(e) => return Err(invalid("FENCE_STANDBY_CLUSTER", &text, format!("not JSON: {e}"))),
        },
    };
    Ok(Fencing {
        fence_after,
        standby_cluster,
    })
}

/// The DR watchdog's side: `WATCHDOG_GUARD_FENCE_AFTER` is the guard's
/// `WATCHDOG_FENCE_AFTER`. Gold's site is declared lost at the earliest
/// (promote_after − 1) × interval after it went silent; by then the guard
/// must have fenced Gold, so that bound must exceed the guard's deadline by
/// [`PAIRING_MARGIN`].
pub(super) fn pairing(raw: &mut Raw, timing: &Timing) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = raw.guard_fence_after.take() else {
        return Ok(None);
    };
    let guard = parse::duration("GUARD_FENCE_AFTER", Some(value.clone()), Duration::ZERO)?;
    let earliest = timing.interval * timing.thresholds.promote_after().saturating_sub(1);
    if earliest < guard + PAIRING_MARGIN {
        return Err(invalid(
            "GUARD_FENCE_AFTER",
            &value,
            format!(
                "GoldDR may promote {} after Gold falls silent (({} - 1) x {}), which does not exceed the guard's \
                 fence deadline plus a {} margin: raise WATCHDOG_PROMOTE_AFTER or WATCHDOG_PROBE_INTERVAL, or \
                 lower the guard's WATCHDOG_FENCE_AFTER",
                humantime::format_duration(earliest),
                timing.thresholds.promote_after(),
                humantime::format_duration(timing.interval),
                humantime::format_duration(PAIRING_MARGIN)
            ),
        ));
    }
    Ok(Some(guard))
}

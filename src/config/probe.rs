//! How often Gold is probed and how many answers decide: the hysteresis.

use std::time::Duration;

use serde::Serialize;

use super::parse::{self, var};
use super::vars::Raw;
use super::{ConfigError, humantime_serde_compat};
use crate::decide::detector::Thresholds;

#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Timing {
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub thresholds: Thresholds,
}

impl Timing {
    /// The longest Gold can be silent before it is declared lost.
    pub fn time_to_lost(&self) -> Duration {
        self.interval * self.thresholds.promote_after() + self.timeout
    }
}

/// The defaults of one mode of judging Gold.
pub struct TimingDefaults {
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub promote_after: u32,
    /// The WAL receiver guard's window: a receiver that heard from Gold this
    /// recently proves Gold alive. Shorter than the time to declare Gold
    /// lost, or a blackholed Gold (whose receiver only notices at
    /// `wal_receiver_timeout`) would hold every promotion back.
    pub wal_receiver_fresh: Duration,
}

pub(super) fn load(raw: &mut Raw, defaults: &TimingDefaults) -> Result<Timing, ConfigError> {
    let interval = parse::duration("PROBE_INTERVAL", raw.probe_interval.take(), defaults.interval)?;
    let timeout = parse::duration("PROBE_TIMEOUT", raw.probe_timeout.take(), defaults.timeout)?;
    if timeout >= interval {
        return Err(ConfigError::Conflict {
            var: var("PROBE_TIMEOUT"),
            other: var("PROBE_INTERVAL"),
            reason: "the probe timeout must be shorter than the probe interval, or probes would pile up",
        });
    }
    let fall = parse::count("FALL", raw.fall.take(), defaults.fall)?;
    let rise = parse::count("RISE", raw.rise.take(), defaults.rise)?;
    let promote_after = parse::count("PROMOTE_AFTER", raw.promote_after.take(), defaults.promote_after)?;
    let thresholds = Thresholds::new(fall, rise, promote_after).map_err(|_| ConfigError::Conflict {
        var: var("PROMOTE_AFTER"),
        other: var("FALL"),
        reason: "PROMOTE_AFTER must be at least FALL: Gold is declared down before it is declared lost",
    })?;
    Ok(Timing {
        interval,
        timeout,
        thresholds,
    })
}

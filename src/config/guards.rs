//! What may hold a promotion back: the mode, the local WAL receiver, the age
//! of the data. (The witnesses are the quorum's concern.)

use std::time::Duration;

use serde::Serialize;

use super::parse::{self, var};
use super::probe::{Timing, TimingDefaults};
use super::vars::Raw;
use super::{ConfigError, defaults};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Promote when every guard agrees.
    Enforce,
    /// Everything up to the write, then report what would have been done.
    DryRun,
    /// Probe and report; never decide.
    Observe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
            Mode::Observe => "observe",
        }
    }
}

pub(super) struct Guards {
    pub mode: Mode,
    pub wal_receiver_fresh: Duration,
    pub max_data_age: Duration,
    pub allow_stale_promotion: bool,
}

/// `WATCHDOG_MODE`, the same for every role that acts.
pub(super) fn mode(raw: &mut Raw) -> Result<Mode, ConfigError> {
    parse::choice(
        "MODE",
        raw.mode.take(),
        Mode::Enforce,
        &[
            ("enforce", Mode::Enforce),
            ("dry-run", Mode::DryRun),
            ("observe", Mode::Observe),
        ],
    )
}

pub(super) fn load(raw: &mut Raw, timing: &Timing, by_mode: &TimingDefaults) -> Result<Guards, ConfigError> {
    let mode = mode(raw)?;
    let wal_receiver_fresh = parse::duration(
        "WAL_RECEIVER_FRESH",
        raw.wal_receiver_fresh.take(),
        by_mode.wal_receiver_fresh,
    )?;
    let max_data_age = parse::duration("MAX_DATA_AGE", raw.max_data_age.take(), defaults::MAX_DATA_AGE)?;
    let allow_stale_promotion = parse::boolean("ALLOW_STALE_PROMOTION", raw.allow_stale_promotion.take())?;
    // Data is at least as old as Gold's death, and Gold is only declared
    // lost promote_after intervals after it: a shorter limit would veto
    // every real loss.
    if !allow_stale_promotion && max_data_age <= timing.time_to_lost() {
        return Err(ConfigError::Conflict {
            var: var("MAX_DATA_AGE"),
            other: var("PROMOTE_AFTER"),
            reason: "WATCHDOG_MAX_DATA_AGE must exceed the time it takes to declare Gold lost \
                     (WATCHDOG_PROMOTE_AFTER x WATCHDOG_PROBE_INTERVAL + WATCHDOG_PROBE_TIMEOUT), \
                     or the stale-data guard would veto every real loss",
        });
    }
    Ok(Guards {
        mode,
        wal_receiver_fresh,
        max_data_age,
        allow_stale_promotion,
    })
}

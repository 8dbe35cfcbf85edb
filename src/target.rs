//! Where Gold is. The loop reads the current target from a watch channel so a
//! discovered address can change under it without a restart.

use std::fmt;

use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Target {
    Known {
        endpoint: Endpoint,
        source: Source,
    },
    /// Never probe a guessed address: while unknown, probing pauses and Gold
    /// cannot be declared lost.
    Unknown {
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// WATCHDOG_GOLD_HOST/WATCHDOG_GOLD_PORT as given.
    Static,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
        }
    }
}

/// A target that never changes. The sender is returned so the channel stays
/// open for the life of the process.
pub fn fixed(endpoint: Endpoint) -> (watch::Sender<Target>, watch::Receiver<Target>) {
    watch::channel(Target::Known {
        endpoint,
        source: Source::Static,
    })
}

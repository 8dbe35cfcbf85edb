//! patroni-dr-watchdog: watches the primary PostgreSQL site ("Gold") from the
//! disaster-recovery site and decides, with hysteresis, whether Gold is lost.
//!
//! Data flows one way: target → probe → detector → (guards → promoter), with
//! state and metrics published over HTTP. The detector is pure; I/O lives in
//! `probe`, `target` and `http`.

pub mod actor;
pub mod cli;
pub mod config;
pub mod detector;
pub mod dynamic_config;
pub mod events;
pub mod guards;
pub mod http;
pub mod local_pg;
pub mod logging;
pub mod metrics;
pub mod patroni;
pub mod probe;
pub mod promoter;
pub mod status;
pub mod target;
pub mod watchdog;
pub mod webhook;
pub mod witness;

pub use config::Config;
pub use watchdog::{Watchdog, run};

/// An error and its sources on one line, as an operator wants to read it.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

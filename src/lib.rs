//! patroni-dr-watchdog: watches the primary PostgreSQL site ("Gold") from the
//! disaster-recovery site and decides, with hysteresis, whether Gold is lost.
//!
//! Data flows one way: target → probe → detector → (guards → promoter), with
//! state and metrics published over HTTP. The detector is pure; I/O lives in
//! `probe`, `target` and `http`.

pub mod act;
pub mod app;
pub mod cli;
pub mod config;
pub mod decide;
pub mod guard;
pub mod logging;
pub mod observe;
pub mod report;
pub mod witness;

pub use app::{Watchdog, run};
pub use config::Config;

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

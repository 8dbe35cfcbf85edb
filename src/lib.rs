//! patroni-dr-watchdog: watches the primary PostgreSQL site ("Gold") from the
//! disaster-recovery site and decides, with hysteresis, whether Gold is lost.
//!
//! Data flows one way: target → probe → detector → (guards → promoter), with
//! state and metrics published over HTTP. The detector is pure; I/O lives in
//! `probe`, `target` and `http`.

pub mod config;
pub mod detector;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod status;
pub mod target;
pub mod watchdog;

pub use config::Config;
pub use watchdog::{Watchdog, run};

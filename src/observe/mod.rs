//! Observe: where Gold is, what a probe of it says, and what the cluster
//! beside us looks like. Everything here does I/O and reports facts; nothing
//! here decides.

pub mod api_trouble;
pub mod cluster;
pub mod cluster_config;
pub mod dynamic_config;
pub mod local_pg;
pub mod patroni;
pub mod probe;
pub mod signal;
pub mod target;
pub mod wal;
pub mod witness;

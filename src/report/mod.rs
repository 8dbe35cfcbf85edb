//! Report: views of the state for people and machines — HTTP endpoints,
//! metrics, status, Kubernetes Events and webhook alerts. Reads, never
//! decides.

pub mod events;
pub mod exposition;
pub mod guard;
pub mod http;
pub mod metrics;
pub mod status;
pub mod webhook;
pub mod witness;

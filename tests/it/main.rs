//! The integration tests, as one binary: real PostgreSQL servers, real
//! Patroni and etcd, the Kubernetes API double and fault proxies, all on
//! loopback. One crate instead of one per file keeps the build and the disk
//! use down; the modules below group the tests by what they show.

mod support;

mod cli;
mod detection;
mod e2e;
mod e2e_harness;
mod fence_e2e;
mod harness;
mod http;
mod kube;
mod kube_api_double;
mod logs;
mod probe;
mod quorum;
mod quorum_e2e;
mod secrets;
mod webhook;

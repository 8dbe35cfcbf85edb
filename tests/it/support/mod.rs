//! Shared support code for the integration tests: throwaway PostgreSQL
//! servers ([`pg`]), a fault-injecting TCP proxy ([`proxy`]) and the
//! watchdog wired up against them ([`app`]); for end to end with Patroni,
//! etcd and GoldDR ([`patroni_cluster`]), Gold as a real Patroni cluster
//! ([`gold_cluster`]) reached through a leader-following forwarder
//! ([`leader_router`]), a split-brain sampler ([`sampler`]) and the witness
//! as its own process ([`witness`]).
#![allow(dead_code)]

pub mod app;
pub mod gold_cluster;
pub mod kube_api;
pub mod kube_env;
pub mod leader_router;
pub mod patroni_cluster;
pub mod pg;
pub mod proxy;
pub mod sampler;
pub mod webhook;
pub mod witness;

use std::time::{Duration, Instant};

/// Installs a test-friendly tracing subscriber (filtered by `RUST_LOG`,
/// `warn` by default). Safe to call from every test.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::WARN.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 50 ms until it returns true; panics naming `what`
/// if that does not happen within `timeout`. Takes `|| async { .. }` as well
/// as `async || { .. }`; the latter may keep borrowing captured state.
pub async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address nobody listens on: connecting is refused at once.
/// (Another test may bind the port later; a refused or failed connection is
/// all callers rely on.)
pub fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

/// Serves `app` on 127.0.0.1:<random> until the returned token is
/// cancelled; for the stand-ins of HTTP peers.
pub async fn serve(app: axum::Router) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (addr, shutdown)
}

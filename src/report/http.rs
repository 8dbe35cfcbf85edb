//! `/livez`, `/readyz`, `/metrics`, `/status`.
//!
//! Neither probe endpoint ever fails because Gold or the API server is down:
//! the sidecar's readiness gates the whole Patroni pod, and a restart loop in
//! the middle of a disaster helps nobody.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::config::Config;
use crate::decide::state::State;
use crate::report::exposition::Format;
use crate::report::metrics::Metrics;
use crate::report::status::Status;

pub use crate::report::exposition::{CLASSIC_TEXT, OPENMETRICS};

#[derive(Clone)]
pub struct AppState {
    status: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
    stale_after: Duration,
}

impl AppState {
    pub fn new(status: watch::Receiver<Status>, metrics: Arc<Metrics>, config: &Config) -> Self {
        AppState {
            status,
            metrics,
            stale_after: stale_after(config.probe_interval, config.probe_timeout),
        }
    }
}

/// How long the loop may go without finishing a tick before it counts as
/// stuck. A tick takes at most jitter + timeout, so three missed intervals
/// cannot happen to a healthy loop, however dead Gold is.
pub fn stale_after(interval: Duration, timeout: Duration) -> Duration {
    interval * 3 + timeout
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

async fn livez(AxumState(app): AxumState<AppState>) -> Response {
    let status = app.status.borrow();
    let since = status.last_tick.unwrap_or(status.started).elapsed();
    if since > app.stale_after {
        let msg = format!(
            "probe loop stuck: no tick finished for {:.1}s (limit {:.1}s)\n",
            since.as_secs_f64(),
            app.stale_after.as_secs_f64()
        );
        (StatusCode::SERVICE_UNAVAILABLE, msg).into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(AxumState(app): AxumState<AppState>) -> Response {
    match app.status.borrow().state {
        State::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
        State::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response(),
        State::Watching | State::TargetUnknown | State::Promoted => (StatusCode::OK, "ok\n").into_response(),
    }
}

/// OpenMetrics for scrapers that ask for it, classic text for the rest
/// (see [`Format::negotiate`]).
async fn metrics(AxumState(app): AxumState<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match app.metrics.encode() {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, format.content_type()),
                (header::VARY, "Accept"),
            ],
            format.render(body),
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn status(AxumState(app): AxumState<AppState>) -> Response {
    let snapshot = app.status.borrow().clone();
    Json(snapshot).into_response()
}

//! `/livez`, `/readyz`, `/metrics`, `/status`.
//!
//! Neither probe endpoint ever fails because Gold or the API server is down:
//! the sidecar's readiness gates the whole Patroni pod, and a restart loop in
//! the middle of a disaster helps nobody.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What the HTTP endpoints read: one role's published state.
pub trait View: Clone + Send + Sync + 'static {
    /// When the loop last finished a tick (`None`: not yet), and when the
    /// process started.
    fn ticks(&self) -> (Option<Instant>, Instant);
    /// `Err` says why not ready.
    fn ready(&self) -> Result<(), &'static str>;
    fn status(&self) -> Response;
    fn encode_metrics(&self) -> Result<String, std::fmt::Error>;
}

/// The DR watchdog's view: its `/status` snapshot and its metrics.
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

impl View for AppState {
    fn ticks(&self) -> (Option<Instant>, Instant) {
        let s = self.status.borrow();
        (s.last_tick, s.started)
    }

    fn ready(&self) -> Result<(), &'static str> {
        match self.status.borrow().state {
            State::Starting => Err("starting"),
            State::Stopping => Err("stopping"),
            State::Watching | State::TargetUnknown | State::Promoted => Ok(()),
        }
    }

    fn status(&self) -> Response {
        let snapshot = self.status.borrow().clone();
        Json(snapshot).into_response()
    }

    fn encode_metrics(&self) -> Result<String, std::fmt::Error> {
        self.metrics.encode()
    }
}

/// How long the loop may go without finishing a tick before it counts as
/// stuck. A tick takes at most jitter + timeout, so three missed intervals
/// cannot happen to a healthy loop, however dead Gold is.
pub fn stale_after(interval: Duration, timeout: Duration) -> Duration {
    interval * 3 + timeout
}

pub fn router(state: AppState) -> Router {
    let stale = state.stale_after;
    routes(state, stale)
}

/// `/livez`, `/readyz`, `/metrics` and `/status` over any role's view.
pub fn routes<V: View>(view: V, stale_after: Duration) -> Router {
    Router::new()
        .route("/livez", get(livez::<V>))
        .route("/readyz", get(readyz::<V>))
        .route("/metrics", get(metrics::<V>))
        .route("/status", get(status::<V>))
        .with_state((view, stale_after))
}

async fn livez<V: View>(AxumState((view, stale_after)): AxumState<(V, Duration)>) -> Response {
    let (last_tick, started) = view.ticks();
    let since = last_tick.unwrap_or(started).elapsed();
    if since > stale_after {
        let msg = format!(
            "probe loop stuck: no tick finished for {:.1}s (limit {:.1}s)\n",
            since.as_secs_f64(),
            stale_after.as_secs_f64()
        );
        (StatusCode::SERVICE_UNAVAILABLE, msg).into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz<V: View>(AxumState((view, _)): AxumState<(V, Duration)>) -> Response {
    match view.ready() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

/// OpenMetrics for scrapers that ask for it, classic text for the rest
/// (see [`Format::negotiate`]).
async fn metrics<V: View>(AxumState((view, _)): AxumState<(V, Duration)>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match view.encode_metrics() {
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

async fn status<V: View>(AxumState((view, _)): AxumState<(V, Duration)>) -> Response {
    view.status()
}

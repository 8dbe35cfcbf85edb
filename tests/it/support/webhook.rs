//! A chat webhook stand-in: records every `{"text": ...}` it is sent, and can
//! fail the first requests or never answer at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<String>>,
    requests: AtomicUsize,
    fail_first: AtomicUsize,
    hang: bool,
}

pub struct WebhookSink {
    pub url: String,
    shared: Arc<Shared>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl WebhookSink {
    pub async fn start() -> WebhookSink {
        Self::with(0, false).await
    }

    /// Answers 500 to the first `n` requests.
    pub async fn failing_first(n: usize) -> WebhookSink {
        Self::with(n, false).await
    }

    /// Accepts requests and never answers.
    pub async fn hanging() -> WebhookSink {
        Self::with(0, true).await
    }

    async fn with(fail_first: usize, hang: bool) -> WebhookSink {
        let shared = Arc::new(Shared {
            fail_first: AtomicUsize::new(fail_first),
            hang,
            ..Default::default()
        });
        let app = axum::Router::new()
            .route("/hooks/{token}", post(receive))
            .with_state(shared.clone());
        let (addr, shutdown) = super::serve(app).await;
        let url = format!("http://{addr}/hooks/t0ken");
        WebhookSink {
            url,
            shared,
            shutdown,
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.shared.messages.lock().expect("lock").clone()
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn any(&self, needle: &str) -> bool {
        self.messages().iter().any(|m| m.contains(needle))
    }
}

async fn receive(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> StatusCode {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if shared.hang {
        std::future::pending::<()>().await;
    }
    let failing = shared
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let text = body["text"].as_str().unwrap_or_default().to_string();
    shared.messages.lock().expect("lock").push(text);
    StatusCode::OK
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

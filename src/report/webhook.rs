//! Alerts to a chat webhook (`{"text": ...}`, as Rocket.Chat, Slack and
//! Mattermost accept). Delivery runs on its own task behind a bounded queue:
//! a slow or dead webhook never blocks the loop, and is retried a few times.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tracing::warn;

#[derive(Clone, Copy, Debug, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
enum Delivery {
    Delivered,
    Failed,
    Dropped,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    result: &'static str,
}

/// `webhook_alerts_total{result}`: this module's own metrics group.
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    alerts: Family<DeliveryLabels, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = WebhookMetrics::default();
        registry.register(
            "webhook_alerts",
            "Webhook alerts by result: delivered, failed, dropped",
            m.alerts.clone(),
        );
        for d in <Delivery as strum::IntoEnumIterator>::iter() {
            let _ = m.alerts.get_or_create(&DeliveryLabels { result: d.into() });
        }
        m
    }

    fn count(&self, d: Delivery) {
        self.alerts
            .get_or_create(&DeliveryLabels { result: d.into() })
            .inc();
    }
}

/// Alerts waiting beyond this are dropped (and counted): a webhook that
/// cannot keep up must not grow memory without bound.
const QUEUE: usize = 64;

#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<String>,
    prefix: String,
    metrics: WebhookMetrics,
}

impl Webhook {
    /// Starts the delivery task. `identity` prefixes every message so a
    /// channel shared by several sidecars says who spoke.
    pub fn spawn(url: String, identity: &str, metrics: WebhookMetrics) -> Result<Webhook, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(deliver(http, url, rx, metrics.clone()));
        Ok(Webhook {
            tx,
            prefix: format!("[patroni-dr-watchdog {identity}] "),
            metrics,
        })
    }

    /// Queues an alert; never waits.
    pub fn send(&self, text: impl AsRef<str>) {
        let message = format!("{}{}", self.prefix, text.as_ref());
        if self.tx.try_send(message).is_err() {
            self.metrics.count(Delivery::Dropped);
            warn!("webhook queue full or closed: alert dropped");
        }
    }
}

async fn deliver(
    http: reqwest::Client,
    url: String,
    mut rx: mpsc::Receiver<String>,
    metrics: WebhookMetrics,
) {
    // Four tries over about 7 s, then give up on this alert.
    let retry = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_max_times(3)
        .with_jitter();
    while let Some(text) = rx.recv().await {
        let body = serde_json::json!({ "text": text });
        let result = (|| async {
            http.post(&url)
                .json(&body)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
        })
        .retry(retry)
        .sleep(tokio::time::sleep)
        .await;
        match result {
            Ok(_) => metrics.count(Delivery::Delivered),
            Err(e) => {
                metrics.count(Delivery::Failed);
                // The URL may embed a token: log the error without it.
                warn!(error = %crate::error_chain(&e.without_url()), "cannot deliver webhook alert");
            }
        }
    }
}

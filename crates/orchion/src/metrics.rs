//! The Prometheus endpoint: `GET /metrics` on its own port (`--metrics-port`, default 9090), so
//! scraping needs no access to the API. Gauges that describe the store and the cluster are
//! sampled here, at scrape time; everything else is recorded where it happens
//! (`orchion-metrics`).

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use orchion_api::Lifecycle;
use orchion_control::NodeRegistry;
use orchion_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a scrape samples.
#[derive(Clone)]
pub struct Scrape {
    pub store: Arc<dyn Store>,
    pub nodes: Arc<NodeRegistry>,
    pub lifecycle: Arc<Lifecycle>,
}

/// Serves `/metrics` until `stop`.
pub async fn serve(listener: TcpListener, scrape: Scrape, stop: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(scrape);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "the metrics endpoint failed");
    }
}

async fn metrics(State(scrape): State<Scrape>) -> Response {
    let m = orchion_metrics::metrics();
    m.nodes.reset();
    for (status, count) in scrape.nodes.count_by_status() {
        m.nodes
            .with_label_values(&[status])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    let now = orchion_store::now();
    match scrape.store.queue_depths(now).await {
        Ok(depths) => {
            m.queue_depth.reset();
            m.queue_oldest_age.reset();
            for depth in depths {
                let labels = [depth.executor.as_str(), depth.labels.as_str()];
                m.queue_depth
                    .with_label_values(&labels)
                    .set(i64::try_from(depth.depth).unwrap_or(i64::MAX));
                m.queue_oldest_age
                    .with_label_values(&labels)
                    .set((now - depth.oldest).as_seconds_f64().max(0.0));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot sample the queue for metrics");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; try again shortly\n",
            )
                .into_response();
        }
    }
    if let Ok(running) = scrape.store.running_workflow_runs().await {
        m.workflows_active
            .set(i64::try_from(running.len()).unwrap_or(i64::MAX));
    }
    m.uptime.set(scrape.lifecycle.uptime().as_secs_f64());
    (
        [(header::CONTENT_TYPE, orchion_metrics::CONTENT_TYPE)],
        m.encode(),
    )
        .into_response()
}

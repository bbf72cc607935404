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

/// The most placement label sets the queue metrics name; the shallower rest are summed per
/// executor under `labels="other"`. Jobs choose their labels, so without a bound every
/// distinct set a client sends would be a series of its own.
const MAX_QUEUE_SERIES: usize = 50;

/// The queue's depths as series: `(executor, labels, depth, oldest)`, the deepest
/// [`MAX_QUEUE_SERIES`] as they are and the others folded into one per executor.
fn bounded_queue_series(
    mut depths: Vec<orchion_store::QueueDepth>,
) -> Vec<(String, String, u64, time::OffsetDateTime)> {
    depths.sort_by_key(|d| std::cmp::Reverse(d.depth));
    let rest = depths.split_off(depths.len().min(MAX_QUEUE_SERIES));
    let mut series: Vec<(String, String, u64, time::OffsetDateTime)> = depths
        .into_iter()
        .map(|d| (d.executor, d.labels, d.depth, d.oldest))
        .collect();
    let mut other: std::collections::BTreeMap<String, (u64, time::OffsetDateTime)> =
        std::collections::BTreeMap::new();
    for d in rest {
        let entry = other.entry(d.executor).or_insert((0, d.oldest));
        entry.0 += d.depth;
        entry.1 = entry.1.min(d.oldest);
    }
    series.extend(
        other
            .into_iter()
            .map(|(executor, (depth, oldest))| (executor, "other".to_owned(), depth, oldest)),
    );
    series
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
            for (executor, labels, depth, oldest) in bounded_queue_series(depths) {
                let labels = [executor.as_str(), labels.as_str()];
                m.queue_depth
                    .with_label_values(&labels)
                    .set(i64::try_from(depth).unwrap_or(i64::MAX));
                m.queue_oldest_age
                    .with_label_values(&labels)
                    .set((now - oldest).as_seconds_f64().max(0.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_label_sets_past_the_bound_fold_into_other_per_executor() {
        let at = |s: i64| time::OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).unwrap();
        let depths: Vec<orchion_store::QueueDepth> = (0..120u64)
            .map(|i| orchion_store::QueueDepth {
                executor: if i % 2 == 0 { "shell" } else { "http" }.to_owned(),
                labels: format!(r#"{{"n":"{i}"}}"#),
                depth: i + 1,
                oldest: at(i as i64),
            })
            .collect();
        let series = bounded_queue_series(depths);
        assert_eq!(series.len(), MAX_QUEUE_SERIES + 2);
        // The deepest keep their labels; the other 70 are summed per executor.
        assert!(series[..MAX_QUEUE_SERIES].iter().all(|s| s.2 > 70));
        let other: Vec<_> = series.iter().filter(|s| s.1 == "other").collect();
        assert_eq!(
            other.iter().map(|s| s.2).sum::<u64>(),
            (1..=70).sum::<u64>()
        );
        assert!(other.iter().any(|s| s.0 == "shell" && s.3 == at(0)));
    }
}

//! Orchion's Prometheus metrics: one registry for the process ([`metrics`]), recorded where
//! things happen (the API's middleware, the work queue, the workflow engine, the node registry)
//! and encoded in the Prometheus text format (0.0.4, what `promtool check metrics` reads) for
//! `GET /metrics` on the metrics port.
//!
//! Gauges that describe the store (queue depth, active workflows, nodes by status) are sampled
//! by the `/metrics` handler just before encoding, so a scrape sees the current state and no
//! background task keeps them.
//!
//! Labels are bounded: API routes are route templates (`/api/v1/jobs/{id}`), never raw paths;
//! queue labels are executors and the placement label sets jobs ask for.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets,
};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric Orchion exposes.
pub struct Metrics {
    registry: Registry,
    /// `method`, `route` (the route template, or `unmatched`), `status`.
    pub api_requests: IntCounterVec,
    /// `method`, `route`.
    pub api_request_duration: HistogramVec,
    /// `kind`: `workflow` or `deployment`.
    pub workflows_started: IntCounterVec,
    /// `status`: the final status.
    pub workflows_finished: IntCounterVec,
    /// `status`.
    pub workflows_duration: HistogramVec,
    /// `kind`: `head` (a run's state), `tasks` (the tasks a result named), `whole` (every task
    /// of a run).
    pub engine_reads: IntCounterVec,
    pub workflows_active: IntGauge,
    /// `status`.
    pub nodes: IntGaugeVec,
    /// `executor`, `labels` (the placement labels, a JSON object).
    pub queue_depth: IntGaugeVec,
    /// `executor`, `labels`.
    pub queue_oldest_age: GaugeVec,
    /// `executor`.
    pub tasks_claimed: IntCounterVec,
    /// `outcome`: `succeeded`, `failed`, `cancelled` or `timed_out`.
    pub attempts: IntCounterVec,
    /// `reason`: `lease_expired` or `node_lost`.
    pub attempts_lost: IntCounterVec,
    pub heartbeat_interval: Histogram,
    /// `operation`.
    pub store_duration: HistogramVec,
    pub event_streams: IntGauge,
    /// HTTP connections closed on arrival because `server.max_connections` were open.
    pub http_connections_refused: IntCounter,
    /// `reconciler`, `outcome`: `ok` or `error`.
    pub reconciler_passes: IntCounterVec,
    /// `reconciler`.
    pub reconciler_pass_duration: HistogramVec,
    /// Seconds since the process started.
    pub uptime: Gauge,
}

/// Buckets for request and store latencies: 0.5 ms to ~16 s.
fn latency() -> Vec<f64> {
    exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()
}

#[allow(clippy::expect_used)] // constant names and labels: a bug the tests catch at once
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

#[allow(clippy::expect_used)] // constant names and labels: a bug the tests catch at once
fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

#[allow(clippy::expect_used)] // constant names: a bug the tests catch at once
fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

#[allow(clippy::expect_used)] // constant names and labels: a bug the tests catch at once
fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

impl Metrics {
    // The names and label sets are constants, so registering cannot fail but by a bug that the
    // tests catch at once.
    #[allow(clippy::expect_used)]
    fn new() -> Self {
        let r = Registry::new();
        let nodes = IntGaugeVec::new(Opts::new("orchion_nodes", "Nodes by status"), &["status"])
            .expect("a valid metric");
        r.register(Box::new(nodes.clone()))
            .expect("registered once");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "orchion_queue_depth",
                "Tasks ready to run and waiting, by executor and the placement labels they need",
            ),
            &["executor", "labels"],
        )
        .expect("a valid metric");
        r.register(Box::new(queue_depth.clone()))
            .expect("registered once");
        let queue_oldest_age = GaugeVec::new(
            Opts::new(
                "orchion_queue_oldest_age_seconds",
                "How long the longest-waiting ready task has waited, by executor and placement labels",
            ),
            &["executor", "labels"],
        )
        .expect("a valid metric");
        r.register(Box::new(queue_oldest_age.clone()))
            .expect("registered once");
        let heartbeat_interval = Histogram::with_opts(
            HistogramOpts::new(
                "orchion_heartbeat_interval_seconds",
                "Time between consecutive heartbeats of a node",
            )
            .buckets(exponential_buckets(0.05, 2.0, 12).unwrap_or_default()),
        )
        .expect("a valid metric");
        r.register(Box::new(heartbeat_interval.clone()))
            .expect("registered once");
        let uptime = Gauge::new(
            "orchion_uptime_seconds",
            "Seconds since this server started",
        )
        .expect("a valid metric");
        r.register(Box::new(uptime.clone()))
            .expect("registered once");
        Self {
            workflows_started: counter(
                &r,
                "orchestrator_workflows_total",
                "Workflow runs and deployments started",
                &["kind"],
            ),
            workflows_finished: counter(
                &r,
                "orchestrator_workflows_finished_total",
                "Workflow runs and deployments that ended, by final status",
                &["status"],
            ),
            engine_reads: counter(
                &r,
                "orchion_workflow_engine_reads_total",
                "Store reads the workflow engine made to move runs on, by what it read",
                &["kind"],
            ),
            workflows_duration: histogram(
                &r,
                "orchestrator_workflows_duration_seconds",
                "How long workflow runs took, from start to end",
                &["status"],
                exponential_buckets(0.1, 2.0, 18).unwrap_or_default(),
            ),
            workflows_active: gauge(
                &r,
                "orchestrator_workflows_active",
                "Workflow runs and deployments running now",
            ),
            api_requests: counter(
                &r,
                "orchestrator_api_requests_total",
                "HTTP API requests, by method, route template and status",
                &["method", "route", "status"],
            ),
            api_request_duration: histogram(
                &r,
                "orchestrator_api_request_duration_seconds",
                "HTTP API request latency, by method and route template",
                &["method", "route"],
                latency(),
            ),
            nodes,
            queue_depth,
            queue_oldest_age,
            tasks_claimed: counter(
                &r,
                "orchion_tasks_claimed_total",
                "Attempts handed to agents, by executor",
                &["executor"],
            ),
            attempts: counter(
                &r,
                "orchion_task_attempts_total",
                "Attempts that ended as their agent reported, by outcome",
                &["outcome"],
            ),
            attempts_lost: counter(
                &r,
                "orchion_task_attempts_lost_total",
                "Attempts lost because their lease expired or their node was lost",
                &["reason"],
            ),
            heartbeat_interval,
            store_duration: histogram(
                &r,
                "orchion_store_operation_duration_seconds",
                "Store latency, by operation",
                &["operation"],
                latency(),
            ),
            event_streams: gauge(
                &r,
                "orchion_event_streams",
                "Open event streams (SSE and WebSocket)",
            ),
            http_connections_refused: plain_counter(
                &r,
                "orchion_http_connections_refused_total",
                "HTTP connections closed on arrival because server.max_connections were open",
            ),
            reconciler_passes: counter(
                &r,
                "orchion_reconciler_passes_total",
                "Passes of the background reconcilers, by reconciler and outcome",
                &["reconciler", "outcome"],
            ),
            reconciler_pass_duration: histogram(
                &r,
                "orchion_reconciler_pass_duration_seconds",
                "How long a reconciler's pass took, by reconciler",
                &["reconciler"],
                latency(),
            ),
            uptime,
            registry: r,
        }
    }

    /// The registry in the Prometheus text exposition format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Records how long a store operation took.
    pub fn store_op(&self, operation: &str, started: std::time::Instant) {
        self.store_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_names_are_exposed() {
        let m = metrics();
        m.api_requests
            .with_label_values(&["GET", "/api/v1/jobs/{id}", "200"])
            .inc();
        m.workflows_started.with_label_values(&["workflow"]).inc();
        m.workflows_duration
            .with_label_values(&["succeeded"])
            .observe(1.5);
        m.api_request_duration
            .with_label_values(&["GET", "/api/v1/jobs/{id}"])
            .observe(0.01);
        let text = m.encode();
        for name in [
            "orchestrator_workflows_total{kind=\"workflow\"} 1",
            "orchestrator_workflows_duration_seconds_bucket",
            "orchestrator_workflows_active 0",
            "orchestrator_api_requests_total{method=\"GET\",route=\"/api/v1/jobs/{id}\",status=\"200\"} 1",
            "orchestrator_api_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/jobs/{id}\"} 1",
        ] {
            assert!(text.contains(name), "{name} in\n{text}");
        }
    }
}

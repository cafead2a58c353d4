//! The metric collector: a Prometheus recorder with real histogram buckets, and the
//! metric names Switchyard records, all in one place. Names follow
//! `switchyard_<component>_<what>_<unit>[_total]`; labels stay low-cardinality
//! (component, endpoint, code — never ids or raw subjects).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const RPC_REQUESTS_TOTAL: &str = "switchyard_rpc_requests_total";
pub const RPC_REQUEST_DURATION_SECONDS: &str = "switchyard_rpc_request_duration_seconds";
pub const NATS_CONNECTED: &str = "switchyard_nats_connected";
pub const NATS_BYTES_IN_TOTAL: &str = "switchyard_nats_in_bytes_total";
pub const NATS_BYTES_OUT_TOTAL: &str = "switchyard_nats_out_bytes_total";
pub const NATS_CONNECTS_TOTAL: &str = "switchyard_nats_connects_total";
pub const READY: &str = "switchyard_ready";
pub const COMPONENT_UP: &str = "switchyard_component_up";
/// Gateway requests (NATS `api.*` and HTTP); labels `service`, `operation`, `code`.
pub const GATEWAY_REQUESTS_TOTAL: &str = "switchyard_gateway_requests_total";
/// Gateway request latency; labels `service`, `operation`.
pub const GATEWAY_REQUEST_DURATION_SECONDS: &str = "switchyard_gateway_request_duration_seconds";
/// Events received by bus subscriptions; labels `mode` (ephemeral, durable) and
/// `outcome` (decoded, malformed).
pub const BUS_EVENTS_RECEIVED_TOTAL: &str = "switchyard_bus_events_received_total";
/// Requests answered by services built with the SDK; labels `service`, `operation`,
/// `code` (200, an error code, or `none` for a request without a reply subject).
pub const SDK_REQUESTS_TOTAL: &str = "switchyard_sdk_requests_total";
/// Handling time of SDK requests, decode to reply; labels `service`, `operation`.
pub const SDK_REQUEST_DURATION_SECONDS: &str = "switchyard_sdk_request_duration_seconds";

/// Messages given up on and stored in stream `DLQ`; labels `component`, `kind`.
pub const DEAD_LETTERS_TOTAL: &str = "switchyard_dead_letters_total";

/// Errors reported to the error logger; labels `component`, `kind`.
pub const ERRORS_TOTAL: &str = "switchyard_errors_total";
/// Error records the error logger could not queue (errors faster than it publishes).
pub const ERROR_LOG_DROPPED_TOTAL: &str = "switchyard_error_log_dropped_total";

/// Records the flow component read from stream DATA; label `outcome` (routed,
/// unrouted, malformed).
pub const FLOW_RECORDS_TOTAL: &str = "switchyard_flow_records_total";
/// Flow rules in force (enabled) in the flow component's view.
pub const FLOW_RULES: &str = "switchyard_flow_rules";
/// Flow rule values the live view refused (invalid, or a target name conflict).
pub const FLOW_RULES_REJECTED_TOTAL: &str = "switchyard_flow_rules_rejected_total";

/// Data sync deliveries settled, per target; label `outcome` (delivered, retried,
/// dead_lettered).
pub const SYNC_DELIVERIES_TOTAL: &str = "switchyard_sync_deliveries_total";
/// Time from sending a record to its target to the target's answer; label `target`.
pub const SYNC_DELIVERY_DURATION_SECONDS: &str = "switchyard_sync_delivery_duration_seconds";
/// Records a target's worker passed over; label `reason` (not_routed, malformed).
pub const SYNC_SKIPPED_TOTAL: &str = "switchyard_sync_records_skipped_total";
/// Targets this instance delivers.
pub const SYNC_WORKERS: &str = "switchyard_sync_workers";

/// Latency buckets from 100 µs to 30 s: request-reply on loopback is sub-millisecond,
/// agent steps take seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns the handle `/metrics`
/// renders from. Later calls (tests running several instances) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours simply renders
            // nothing, which the admin tests would show.
            if let Err(err) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%err, "metrics recorder already installed");
            }
            handle
        })
        .clone()
}

/// One answered (or unanswerable, `code = None`) request at a component endpoint.
pub fn rpc_request(
    component: &'static str,
    endpoint: &'static str,
    code: Option<u16>,
    elapsed: Duration,
) {
    let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
    metrics::counter!(RPC_REQUESTS_TOTAL, "component" => component, "endpoint" => endpoint, "code" => code)
        .increment(1);
    metrics::histogram!(RPC_REQUEST_DURATION_SECONDS, "component" => component, "endpoint" => endpoint)
        .record(elapsed.as_secs_f64());
}

/// One request at an SDK service endpoint (`code = None`: nobody to answer).
pub fn sdk_request(service: &str, operation: &str, code: Option<u16>, elapsed: Duration) {
    let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
    let (service, operation) = (service.to_string(), operation.to_string());
    metrics::counter!(SDK_REQUESTS_TOTAL, "service" => service.clone(), "operation" => operation.clone(), "code" => code)
        .increment(1);
    metrics::histogram!(SDK_REQUEST_DURATION_SECONDS, "service" => service, "operation" => operation)
        .record(elapsed.as_secs_f64());
}

/// Gateway metric handles per route, kept so the hot path neither allocates label
/// strings nor looks labels up in the recorder on every request. Label values are
/// bounded by the caller (registered names or `unknown`).
#[derive(Default)]
pub struct GatewayMetrics {
    routes: RwLock<HashMap<String, HashMap<String, RouteMetrics>>>,
}

struct RouteMetrics {
    duration: metrics::Histogram,
    /// By reply code; a handful at most.
    requests: Vec<(u16, metrics::Counter)>,
}

impl GatewayMetrics {
    /// One request on `service`/`operation`, answered with `code`.
    pub fn record(&self, service: &str, operation: &str, code: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Ok(routes) = self.routes.read()
            && let Some(route) = routes.get(service).and_then(|ops| ops.get(operation))
            && let Some((_, counter)) = route.requests.iter().find(|(c, _)| *c == code)
        {
            counter.increment(1);
            route.duration.record(seconds);
            return;
        }
        let Ok(mut routes) = self.routes.write() else {
            return;
        };
        let route = routes
            .entry(service.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_insert_with(|| RouteMetrics {
                duration: metrics::histogram!(GATEWAY_REQUEST_DURATION_SECONDS,
                    "service" => service.to_string(), "operation" => operation.to_string()),
                requests: Vec::new(),
            });
        if !route.requests.iter().any(|(c, _)| *c == code) {
            let counter = metrics::counter!(GATEWAY_REQUESTS_TOTAL,
                "service" => service.to_string(), "operation" => operation.to_string(),
                "code" => code.to_string());
            route.requests.push((code, counter));
        }
        if let Some((_, counter)) = route.requests.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
        route.duration.record(seconds);
    }
}

/// Mirrors the NATS client's connection and traffic counters into gauges.
pub fn record_nats(client: &async_nats::Client) {
    use std::sync::atomic::Ordering::Relaxed;
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    metrics::gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    let stats = client.statistics();
    metrics::counter!(NATS_BYTES_IN_TOTAL).absolute(stats.in_bytes.load(Relaxed));
    metrics::counter!(NATS_BYTES_OUT_TOTAL).absolute(stats.out_bytes.load(Relaxed));
    metrics::counter!(NATS_CONNECTS_TOTAL).absolute(stats.connects.load(Relaxed));
}

/// Periodic housekeeping the exporter needs when we serve `/metrics` ourselves.
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// Counts one dead letter.
pub fn dead_letter(component: &'static str, kind: crate::error::ErrorKind) {
    metrics::counter!(DEAD_LETTERS_TOTAL, "component" => component, "kind" => kind.as_str())
        .increment(1);
}

/// Counts one reported error.
pub fn error_reported(component: &str, kind: crate::error::ErrorKind) {
    metrics::counter!(ERRORS_TOTAL, "component" => component.to_string(), "kind" => kind.as_str())
        .increment(1);
}

/// Counts one error record the error logger had no room for.
pub fn error_log_dropped() {
    metrics::counter!(ERROR_LOG_DROPPED_TOTAL).increment(1);
}

/// Metric handles of one sync target, taken once per worker so the per-record path
/// only adds to atomics (no label strings, no recorder lookup).
pub struct SyncMetrics {
    pub delivery: metrics::Histogram,
    pub delivered: metrics::Counter,
    pub retried: metrics::Counter,
    pub dead_lettered: metrics::Counter,
    pub not_routed: metrics::Counter,
    pub malformed: metrics::Counter,
}

impl SyncMetrics {
    pub fn new(target: &str) -> SyncMetrics {
        let t = || target.to_string();
        let outcome = |o: &'static str| metrics::counter!(SYNC_DELIVERIES_TOTAL, "target" => t(), "outcome" => o);
        let skipped =
            |r: &'static str| metrics::counter!(SYNC_SKIPPED_TOTAL, "target" => t(), "reason" => r);
        SyncMetrics {
            delivery: metrics::histogram!(SYNC_DELIVERY_DURATION_SECONDS, "target" => t()),
            delivered: outcome("delivered"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            not_routed: skipped("not_routed"),
            malformed: skipped("malformed"),
        }
    }
}

pub fn sync_workers(count: usize) {
    metrics::gauge!(SYNC_WORKERS).set(count as f64);
}

/// Data cache reads answered from memory; label `namespace`.
pub const CACHE_HITS_TOTAL: &str = "switchyard_cache_hits_total";
/// Data cache reads not in memory (read through to KV `cache`); label `namespace`.
pub const CACHE_MISSES_TOTAL: &str = "switchyard_cache_misses_total";
/// Entries leaving a namespace's memory; labels `namespace`, `cause` (size, expired,
/// explicit: deleted or changed elsewhere, replaced: overwritten here).
pub const CACHE_EVICTIONS_TOTAL: &str = "switchyard_cache_evictions_total";
/// Weighted size (key plus value bytes) of a namespace in memory; label `namespace`.
pub const CACHE_SIZE_BYTES: &str = "switchyard_cache_size_bytes";
/// Entries of a namespace in memory; label `namespace`.
pub const CACHE_ENTRIES: &str = "switchyard_cache_entries";

/// The causes `switchyard_cache_evictions_total` counts.
pub const CACHE_EVICTION_CAUSES: [&str; 4] = ["size", "expired", "explicit", "replaced"];

/// Metric handles of one cache namespace, taken once so the hit path only adds to an
/// atomic (no label strings, no recorder lookup).
pub struct CacheMetrics {
    pub hits: metrics::Counter,
    pub misses: metrics::Counter,
    evictions: [metrics::Counter; 4],
    pub size_bytes: metrics::Gauge,
    pub entries: metrics::Gauge,
}

impl CacheMetrics {
    pub fn new(namespace: &str) -> CacheMetrics {
        let ns = || namespace.to_string();
        CacheMetrics {
            hits: metrics::counter!(CACHE_HITS_TOTAL, "namespace" => ns()),
            misses: metrics::counter!(CACHE_MISSES_TOTAL, "namespace" => ns()),
            evictions: CACHE_EVICTION_CAUSES.map(|cause| {
                metrics::counter!(CACHE_EVICTIONS_TOTAL, "namespace" => ns(), "cause" => cause)
            }),
            size_bytes: metrics::gauge!(CACHE_SIZE_BYTES, "namespace" => ns()),
            entries: metrics::gauge!(CACHE_ENTRIES, "namespace" => ns()),
        }
    }

    /// One entry evicted for `cause`, one of [`CACHE_EVICTION_CAUSES`].
    pub fn evicted(&self, cause: &str) {
        if let Some(i) = CACHE_EVICTION_CAUSES.iter().position(|c| *c == cause) {
            self.evictions[i].increment(1);
        }
    }
}

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
/// Retries the gateway made (attempts after the first); label `service`.
pub const GATEWAY_RETRIES_TOTAL: &str = "switchyard_gateway_retries_total";
/// Retries the gateway would have made but the service's retry budget refused; label
/// `service`.
pub const GATEWAY_RETRY_BUDGET_EXHAUSTED_TOTAL: &str =
    "switchyard_gateway_retry_budget_exhausted_total";
/// A service's circuit breaker: 0 closed, 1 half-open, 2 open; label `service`.
pub const GATEWAY_BREAKER_STATE: &str = "switchyard_gateway_breaker_state";
/// Breaker state changes; labels `service`, `to` (closed, half_open, open).
pub const GATEWAY_BREAKER_TRANSITIONS_TOTAL: &str = "switchyard_gateway_breaker_transitions_total";
/// Replies a fallback gave; labels `service`, `kind` (service, cache, static).
pub const GATEWAY_FALLBACKS_TOTAL: &str = "switchyard_gateway_fallbacks_total";
/// Requests the gateway answered 429 at once because `max_in_flight` were being
/// forwarded already (load shed); label `service` (`unknown` when not registered).
pub const GATEWAY_SHED_TOTAL: &str = "switchyard_gateway_shed_total";
/// HTTP requests the gateway refused before forwarding; labels `reason`
/// (unauthenticated, rate_limited) and `key` (the API key's name, `-` when none is
/// known; never the key).
pub const GATEWAY_HTTP_REJECTED_TOTAL: &str = "switchyard_gateway_http_rejected_total";
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
/// Consumer advisories the `deadletter` component read; label `outcome` (stored, gone:
/// stored without the original, skipped: the consumer dead-letters itself, malformed,
/// failed: could not be stored and retrying cannot help).
pub const DEADLETTER_ADVISORIES_TOTAL: &str = "switchyard_deadletter_advisories_total";

/// Firing incidents per alert rule (exported by the leading coordinator); labels
/// `rule`, `severity`.
pub const ALERTS_FIRING: &str = "switchyard_alerts_firing";
/// Log records published to `logs.<level>.<component>`; label `level`.
pub const LOGS_PUBLISHED_TOTAL: &str = "switchyard_logs_published_total";
/// Log records left on stderr only (queue full, over the rate limit, too large).
pub const LOGS_DROPPED_TOTAL: &str = "switchyard_logs_dropped_total";
/// Errors reported to the error logger; labels `component`, `kind`.
pub const ERRORS_TOTAL: &str = "switchyard_errors_total";
/// Error records the error logger could not queue (errors faster than it publishes).
pub const ERROR_LOG_DROPPED_TOTAL: &str = "switchyard_error_log_dropped_total";

/// 1 while this instance leads the coordinators, else 0.
pub const COORDINATOR_LEADER: &str = "switchyard_coordinator_leader";
/// Coordination rules written to KV `coord` that the live view refused.
pub const COORDINATOR_RULES_REJECTED_TOTAL: &str = "switchyard_coordinator_rules_rejected_total";
/// Monitor gauges (every instance running the monitor exports the same values; use
/// `max` across instances): instances by `service` and `health`; messages per `stream`;
/// per `stream` and `consumer`: pending, ack pending, redelivered; the DLQ's depth.
pub const MONITOR_INSTANCES: &str = "switchyard_monitor_instances";
pub const MONITOR_STREAM_MESSAGES: &str = "switchyard_monitor_stream_messages";
pub const MONITOR_CONSUMER_PENDING: &str = "switchyard_monitor_consumer_pending";
pub const MONITOR_CONSUMER_ACK_PENDING: &str = "switchyard_monitor_consumer_ack_pending";
pub const MONITOR_CONSUMER_REDELIVERED: &str = "switchyard_monitor_consumer_redelivered";
pub const MONITOR_DLQ_DEPTH: &str = "switchyard_monitor_dlq_depth";
/// Health changes of service instances; label `to` (healthy, degraded, unhealthy).
pub const HEALTH_CHANGES_TOTAL: &str = "switchyard_health_changes_total";

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

/// Tasks reaching a state; labels `service`, `operation`, `state` (submitted, working,
/// completed, failed, canceled).
pub const TASKS_TRANSITIONS_TOTAL: &str = "switchyard_tasks_transitions_total";
/// How long a task's handler ran, per attempt (completed, failed or retried); labels
/// `service`, `operation`.
pub const TASKS_RUN_DURATION_SECONDS: &str = "switchyard_tasks_run_duration_seconds";

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

/// One service's retry, budget, breaker and fallback handles, taken once when the
/// gateway first routes to the (registered) service, so counting is an atomic add.
pub struct GatewayResilienceMetrics {
    pub retries: metrics::Counter,
    pub budget_exhausted: metrics::Counter,
    pub breaker_state: metrics::Gauge,
    /// By the state moved to: closed, half-open, open (the gauge's values).
    transitions: [metrics::Counter; 3],
    /// By kind: service, cache, static.
    fallbacks: [metrics::Counter; 3],
}

impl GatewayResilienceMetrics {
    pub fn new(service: &str) -> GatewayResilienceMetrics {
        let s = || service.to_string();
        let to = |to: &'static str| metrics::counter!(GATEWAY_BREAKER_TRANSITIONS_TOTAL, "service" => s(), "to" => to);
        let kind = |kind: &'static str| metrics::counter!(GATEWAY_FALLBACKS_TOTAL, "service" => s(), "kind" => kind);
        let state = metrics::gauge!(GATEWAY_BREAKER_STATE, "service" => s());
        state.set(0.0);
        GatewayResilienceMetrics {
            retries: metrics::counter!(GATEWAY_RETRIES_TOTAL, "service" => s()),
            budget_exhausted: metrics::counter!(GATEWAY_RETRY_BUDGET_EXHAUSTED_TOTAL, "service" => s()),
            breaker_state: state,
            transitions: [to("closed"), to("half_open"), to("open")],
            fallbacks: [kind("service"), kind("cache"), kind("static")],
        }
    }

    /// The breaker moved to `state` (0 closed, 1 half-open, 2 open).
    pub fn breaker_moved(&self, state: u8) {
        self.breaker_state.set(f64::from(state));
        if let Some(counter) = self.transitions.get(usize::from(state)) {
            counter.increment(1);
        }
    }

    /// A fallback of `kind` (service, cache, static) answered.
    pub fn fell_back(&self, kind: &str) {
        let index = ["service", "cache", "static"]
            .iter()
            .position(|k| *k == kind);
        if let Some(counter) = index.and_then(|i| self.fallbacks.get(i)) {
            counter.increment(1);
        }
    }
}

/// Counts one request the gateway shed (answered 429 without forwarding it).
pub fn gateway_shed(service: &str) {
    metrics::counter!(GATEWAY_SHED_TOTAL, "service" => service.to_string()).increment(1);
}

/// Counts one HTTP request refused for `reason` (unauthenticated, rate_limited).
pub fn gateway_http_rejected(reason: &'static str, key: &str) {
    metrics::counter!(GATEWAY_HTTP_REJECTED_TOTAL, "reason" => reason, "key" => key.to_string())
        .increment(1);
}

/// Mirrors the NATS clients' connection and traffic counters into gauges: connected
/// when all are, traffic and connects summed (secure mode has one client per component).
pub fn record_nats(clients: &[async_nats::Client]) {
    use std::sync::atomic::Ordering::Relaxed;
    let connected = clients
        .iter()
        .all(|c| c.connection_state() == async_nats::connection::State::Connected);
    metrics::gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    let sum = |counter: fn(&async_nats::Statistics) -> u64| -> u64 {
        clients.iter().map(|c| counter(&c.statistics())).sum()
    };
    metrics::counter!(NATS_BYTES_IN_TOTAL).absolute(sum(|s| s.in_bytes.load(Relaxed)));
    metrics::counter!(NATS_BYTES_OUT_TOTAL).absolute(sum(|s| s.out_bytes.load(Relaxed)));
    metrics::counter!(NATS_CONNECTS_TOTAL).absolute(sum(|s| s.connects.load(Relaxed)));
}

/// Periodic housekeeping the exporter needs when we serve `/metrics` ourselves.
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// Counts one task reaching `state`.
pub fn task_transition(service: &str, operation: &str, state: &'static str) {
    metrics::counter!(TASKS_TRANSITIONS_TOTAL, "service" => service.to_string(), "operation" => operation.to_string(), "state" => state)
        .increment(1);
}

/// Records one run of a task's handler.
pub fn task_run(service: &str, operation: &str, elapsed: Duration) {
    metrics::histogram!(TASKS_RUN_DURATION_SECONDS, "service" => service.to_string(), "operation" => operation.to_string())
        .record(elapsed.as_secs_f64());
}

/// Counts one dead letter.
pub fn dead_letter(component: &'static str, kind: crate::error::ErrorKind) {
    metrics::counter!(DEAD_LETTERS_TOTAL, "component" => component, "kind" => kind.as_str())
        .increment(1);
}

/// The monitor's figures as gauges: instances by service and health, stream messages,
/// consumer pending / ack pending / redelivered, DLQ depth.
pub fn system_status(status: &crate::system::monitor::status::Status) {
    use crate::integration::registry::Health;
    for (service, s) in &status.services {
        for health in [
            Health::Healthy,
            Health::Degraded,
            Health::Unhealthy,
            Health::Draining,
        ] {
            let count = s.instances.iter().filter(|i| i.health == health).count();
            let label = format!("{health:?}").to_lowercase();
            metrics::gauge!(MONITOR_INSTANCES, "service" => service.clone(), "health" => label)
                .set(count as f64);
        }
    }
    for stream in &status.streams {
        metrics::gauge!(MONITOR_STREAM_MESSAGES, "stream" => stream.name.clone())
            .set(stream.messages as f64);
        for c in &stream.consumers {
            let labels = [
                ("stream", stream.name.clone()),
                ("consumer", c.name.clone()),
            ];
            metrics::gauge!(MONITOR_CONSUMER_PENDING, &labels).set(c.pending as f64);
            metrics::gauge!(MONITOR_CONSUMER_ACK_PENDING, &labels).set(c.ack_pending as f64);
            metrics::gauge!(MONITOR_CONSUMER_REDELIVERED, &labels).set(c.redelivered as f64);
        }
    }
    metrics::gauge!(MONITOR_DLQ_DEPTH).set(status.dlq_depth as f64);
}

/// Counts a coordination rule refused by the live view.
pub fn coordinator_rule_rejected() {
    metrics::counter!(COORDINATOR_RULES_REJECTED_TOTAL).increment(1);
}

/// Counts one health change by the state entered.
pub fn health_changed(to: crate::integration::registry::Health) {
    let to = match to {
        crate::integration::registry::Health::Healthy => "healthy",
        crate::integration::registry::Health::Degraded => "degraded",
        crate::integration::registry::Health::Unhealthy => "unhealthy",
        crate::integration::registry::Health::Draining => "draining",
    };
    metrics::counter!(HEALTH_CHANGES_TOTAL, "to" => to).increment(1);
}

/// Whether this instance leads the coordinators.
pub fn coordinator_leader(leading: bool) {
    metrics::gauge!(COORDINATOR_LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// Counts one consumer advisory read by the `deadletter` component.
pub fn deadletter_advisory(outcome: &'static str) {
    metrics::counter!(DEADLETTER_ADVISORIES_TOTAL, "outcome" => outcome).increment(1);
}

/// Firing incidents of one alert rule.
pub fn alerts_firing(rule: &str, severity: &str, count: usize) {
    metrics::gauge!(ALERTS_FIRING, "rule" => rule.to_string(), "severity" => severity.to_string())
        .set(count as f64);
}

/// Counts a log record published on `logs.<level>.<component>`.
pub fn log_published(level: &str) {
    metrics::counter!(LOGS_PUBLISHED_TOTAL, "level" => level.to_string()).increment(1);
}

/// Counts a log record not published (queue full, over the rate, too large).
pub fn log_dropped() {
    metrics::counter!(LOGS_DROPPED_TOTAL).increment(1);
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

/// Resident memory of this process (Linux: `/proc/self/statm`).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "switchyard_process_resident_memory_bytes";
/// CPU time, user plus system, this process used (Linux: `/proc/self/stat`). A gauge
/// holding a monotonic value: `metrics` counters are integers and CPU time needs
/// fractions of a second; `rate()` reads it like a counter.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "switchyard_process_cpu_seconds_total";
/// Open file descriptors of this process (Linux: `/proc/self/fd`).
pub const PROCESS_OPEN_FDS: &str = "switchyard_process_open_fds";

/// Samples this process's memory, CPU time and open files, on every `/metrics` scrape:
/// metrics-exporter-prometheus has no process collector. Where `/proc` is missing the
/// gauges are simply not set.
pub fn record_process() {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    if let Some(pages) = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<f64>().ok())
        && page > 0
    {
        metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(pages * page as f64);
    }
    if let Some(cpu) = super::process::cpu_time("self") {
        metrics::gauge!(PROCESS_CPU_SECONDS_TOTAL).set(cpu.as_secs_f64());
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
}

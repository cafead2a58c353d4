//! `switchyard bench cache`: the data cache's costs in process, on one server.
//!
//! - `get_local` on a warm key: the memory-only hit path (target: median at most 1 µs),
//!   each of 1,000,000 calls timed on its own;
//! - `get` on a warm key: the same through the async API;
//! - `get` of a key this instance has not seen: the read-through (one KV direct get);
//! - `put`: the write-through (one KV publish awaiting its ack, then memory).
//!
//! Per-call timing includes reading the clock twice; that cost is measured and shown
//! next to the figures rather than subtracted. moka applies the reads it recorded in
//! batches of 64 on the calling thread, so one hit in 64 also pays for that batch (a
//! few µs): that is what the p99 of the hit paths shows, not I/O. The keys live in a namespace of their
//! own with a 10-minute TTL, so a run against a shared server (`--nats`) leaves nothing
//! behind for long. [`measure`] is the reusable part (`bench sync` reports it too).

use std::hint::black_box;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::report::RunInfo;
use super::runner::Timing;
use crate::config::Config;
use crate::data::cache::{Cache, CacheConfig, NamespaceRule};
use crate::error::Error;

/// Progress steps: one per figure.
pub const STEPS: u64 = 4;
/// The hit-path target of the issue, median (ns).
pub const TARGET_HIT_MEDIAN_NS: u64 = 1_000;
const LOCAL_CALLS: usize = 1_000_000;
const ASYNC_CALLS: usize = 200_000;
const KV_CALLS: usize = 2_000;
/// A status-sized value.
const VALUE_BYTES: usize = 128;
const NAMESPACE_TTL: Duration = Duration::from_secs(600);

/// One operation's per-call latency.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub operation: &'static str,
    pub calls: usize,
    pub median_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// What [`measure`] finds.
#[derive(Debug, Clone, Serialize)]
pub struct CacheFigures {
    pub get_local_hit: Figure,
    pub get_hit: Figure,
    pub get_read_through: Figure,
    pub put: Figure,
    /// Median cost of the two clock reads around each timed call (ns), included above.
    pub clock_ns: u64,
    pub value_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct CacheReport {
    pub run: RunInfo,
    pub figures: CacheFigures,
    pub target_hit_median_ns: u64,
    pub hit_target_met: bool,
}

/// Runs the suite against `url` (the bucket is provisioned first, as `up` does).
pub async fn bench(
    config: &Config,
    embedded: bool,
    timing: Timing,
    url: &str,
    server: String,
    progress: &ProgressBar,
) -> Result<CacheReport, Error> {
    let (client, run, _) = super::connect_provisioned(
        config,
        embedded,
        url,
        "switchyard-bench-cache",
        server,
        timing,
    )
    .await?;
    let figures = measure(&client, progress).await;
    // Closed before the embedded server stops, so nobody is left reconnecting.
    let _ = client.drain().await;
    let figures = figures?;
    let hit_target_met = figures.get_local_hit.median_ns <= TARGET_HIT_MEDIAN_NS;
    Ok(CacheReport {
        run,
        figures,
        target_hit_median_ns: TARGET_HIT_MEDIAN_NS,
        hit_target_met,
    })
}

/// Measures the four paths with two cache instances on `client` (bucket `cache` must
/// exist), in a namespace of the run's own.
pub async fn measure(client: &Client, progress: &ProgressBar) -> Result<CacheFigures, Error> {
    let simple = uuid::Uuid::now_v7().simple().to_string();
    let namespace = format!("bench-{}", &simple[simple.len() - 8..]);
    let rule = NamespaceRule {
        ttl: Some(NAMESPACE_TTL),
        ..NamespaceRule::default()
    };
    let mut config = CacheConfig::default();
    config.namespaces.insert(namespace.clone(), rule);
    let stop = CancellationToken::new();
    let outcome = async {
        let writer = Cache::start(client, config.clone(), stop.clone()).await?;
        let reader = Cache::start(client, config, stop.clone()).await?;
        let value = Bytes::from(vec![b'v'; VALUE_BYTES]);

        progress.set_message("cache put (write-through)");
        let keys: Vec<String> = (0..KV_CALLS).map(|i| format!("k{i}")).collect();
        let put = time_async("put", &keys, |key| {
            let (writer, namespace, value) = (&writer, &namespace, value.clone());
            async move { writer.put(namespace, key, value).await.map(drop) }
        })
        .await?;
        progress.inc(1);

        // The reader has seen none of the writer's keys: each get reads through.
        progress.set_message("cache get (read-through)");
        let get_read_through = time_async("get, read-through", &keys, |key| {
            let (reader, namespace) = (&reader, &namespace);
            async move { found(reader.get(namespace, key).await?) }
        })
        .await?;
        progress.inc(1);

        progress.set_message("cache get (hit)");
        let warm = vec![keys[0].clone(); ASYNC_CALLS];
        let get_hit = time_async("get, hit", &warm, |key| {
            let (reader, namespace) = (&reader, &namespace);
            async move { found(reader.get(namespace, key).await?) }
        })
        .await?;
        progress.inc(1);

        progress.set_message("cache get_local (hit)");
        let (local, key) = (reader.clone(), keys[0].clone());
        let (get_local_hit, clock_ns) =
            tokio::task::spawn_blocking(move || time_local(&local, &namespace, &key))
                .await
                .map_err(|e| Error::internal(format!("get_local timing failed: {e}")))??;
        progress.inc(1);
        Ok::<_, Error>(CacheFigures {
            get_local_hit,
            get_hit,
            get_read_through,
            put,
            clock_ns,
            value_bytes: VALUE_BYTES,
        })
    }
    .await;
    stop.cancel();
    outcome
}

fn found(value: Option<Bytes>) -> Result<(), Error> {
    value
        .map(drop)
        .ok_or_else(|| Error::internal("a key the bench wrote is missing"))
}

/// Times `op` once per key, one call at a time.
async fn time_async<'a, F, Fut>(
    operation: &'static str,
    keys: &'a [String],
    op: F,
) -> Result<Figure, Error>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut samples = Vec::with_capacity(keys.len());
    for key in keys {
        let started = Instant::now();
        op(key).await?;
        samples.push(nanos(started.elapsed()));
    }
    Ok(figure(operation, samples))
}

/// `get_local` on a warm key, each call timed; and the cost of the clock reads alone.
fn time_local(cache: &Cache, namespace: &str, key: &str) -> Result<(Figure, u64), Error> {
    if cache.get_local(namespace, key).is_none() {
        return Err(Error::internal("the bench's warm key is not in memory"));
    }
    let mut samples = Vec::with_capacity(LOCAL_CALLS);
    let mut misses = 0usize;
    for _ in 0..LOCAL_CALLS {
        let started = Instant::now();
        let hit = black_box(cache.get_local(black_box(namespace), black_box(key)));
        samples.push(nanos(started.elapsed()));
        misses += usize::from(hit.is_none());
    }
    if misses > LOCAL_CALLS / 1000 {
        return Err(Error::internal(format!(
            "{misses} of {LOCAL_CALLS} get_local calls on a warm key missed"
        )));
    }
    let mut clock: Vec<u64> = (0..LOCAL_CALLS)
        .map(|_| {
            let started = Instant::now();
            nanos(black_box(started).elapsed())
        })
        .collect();
    clock.sort_unstable();
    Ok((figure("get_local, hit", samples), percentile(&clock, 0.5)))
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn figure(operation: &'static str, mut samples: Vec<u64>) -> Figure {
    samples.sort_unstable();
    Figure {
        operation,
        calls: samples.len(),
        median_ns: percentile(&samples, 0.5),
        p99_ns: percentile(&samples, 0.99),
        max_ns: samples.last().copied().unwrap_or(0),
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The table `switchyard bench cache` prints.
pub fn render_table(report: &CacheReport) -> String {
    let f = &report.figures;
    let mut out = format!(
        "switchyard bench cache  ({} server, nats-server {}, {} B values)\n\n",
        report.run.server, report.run.machine.nats_server_version, f.value_bytes
    );
    out.push_str(&format!(
        "{:<20} {:>9} {:>12} {:>12} {:>12}\n",
        "operation", "calls", "median", "p99", "max"
    ));
    for row in [&f.get_local_hit, &f.get_hit, &f.get_read_through, &f.put] {
        out.push_str(&format!(
            "{:<20} {:>9} {:>12} {:>12} {:>12}\n",
            row.operation,
            row.calls,
            fmt_ns(row.median_ns),
            fmt_ns(row.p99_ns),
            fmt_ns(row.max_ns)
        ));
    }
    let verdict = if report.hit_target_met {
        "met"
    } else {
        "MISSED"
    };
    out.push_str(&format!(
        "\nhit path target: median get_local <= {} ({verdict}); each timing includes ~{} of clock reads\n",
        fmt_ns(report.target_hit_median_ns),
        fmt_ns(f.clock_ns)
    ));
    out
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..10_000 => format!("{ns} ns"),
        10_000..10_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_units() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.5), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(12_300), "12.3 µs");
        assert_eq!(fmt_ns(25_000_000), "25.0 ms");
    }
}

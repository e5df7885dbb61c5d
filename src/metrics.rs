//! Request metrics, per worker: each worker owns its counters (atomics only it writes, so no
//! cache line is shared on the request path and nothing is locked), and the admin server sums
//! them over workers when scraped. Per backend: requests by status class, a latency histogram,
//! connect errors and retries; per worker: open connections. Encoded with `prometheus-client`
//! (text format) together with the process counters of [`crate::stats`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// One backend's counters in one worker.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    /// Requests by status class: 1xx .. 5xx.
    pub classes: [AtomicU64; 5],
    /// Latency histogram: requests per bucket (not cumulative), the last one +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
    pub connect_errors: AtomicU64,
    pub retries: AtomicU64,
}

impl BackendMetrics {
    /// Counts a finished request: its status and how long it took (head to last byte).
    pub fn request(&self, status: u16, took: Duration) {
        if let Some(c) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }
}

/// The protocols requests are counted by, in `WorkerMetrics::protocols` order.
pub const PROTOCOLS: [&str; 3] = ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"];

/// One worker's metrics.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub connections: AtomicI64,
    /// HTTP/2 streams being served (not exported: the memory trimmer's measure of a burst on
    /// few connections, see `memory.rs`).
    pub streams: AtomicI64,
    /// Requests by client protocol ([`PROTOCOLS`]).
    protocols: [AtomicU64; PROTOCOLS.len()],
    /// RequestMirror copies given up (the mirror fell behind its budget, failed, or the
    /// request's body failed), see `worker/mirror.rs`.
    pub mirrors_abandoned: AtomicU64,
    /// Tunnels (after a 101) closed because no byte passed either way for their idle timeout,
    /// see `worker/conn.rs`.
    pub tunnels_idle_closed: AtomicU64,
    /// Backends this worker has counted for, by name. Locked when a worker meets a backend for
    /// the first time and when scraped; never per request.
    backends: Mutex<Vec<(Key, Arc<BackendMetrics>)>>,
}

impl WorkerMetrics {
    /// Counts a request that came over `protocol` (one of [`PROTOCOLS`]; anything else as
    /// HTTP/1.1).
    pub fn protocol(&self, protocol: &str) {
        let i = PROTOCOLS.iter().position(|&p| p == protocol).unwrap_or(1);
        self.protocols[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers (once per worker) the counters of backend `name` for rule host `host`.
    pub fn register(&self, name: &str, host: &str) -> Arc<BackendMetrics> {
        let m = Arc::new(BackendMetrics::default());
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(((name.into(), host.into()), Arc::clone(&m)));
        m
    }
}

/// One of a worker's plain counters.
type WorkerCounter = fn(&WorkerMetrics) -> &AtomicU64;

/// Everything `/metrics` shows.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub workers: Arc<Vec<Arc<WorkerMetrics>>>,
}

/// Backend name and rule host.
type Key = (Box<str>, Box<str>);

/// One backend's counters summed over workers.
#[derive(Default)]
struct Total {
    classes: [u64; 5],
    buckets: [u64; BUCKETS.len() + 1],
    sum_us: u64,
    connect_errors: u64,
    retries: u64,
}

/// Backend totals over workers, by name (sorted).
fn totals(workers: &[Arc<WorkerMetrics>]) -> Vec<(Key, Total)> {
    let mut map: std::collections::BTreeMap<Key, Total> = std::collections::BTreeMap::new();
    for w in workers {
        let backends = w.backends.lock().unwrap_or_else(|e| e.into_inner());
        for (name, m) in backends.iter() {
            let e = map.entry(name.clone()).or_default();
            for (i, c) in m.classes.iter().enumerate() {
                e.classes[i] += c.load(Ordering::Relaxed);
            }
            for (i, b) in m.buckets.iter().enumerate() {
                e.buckets[i] += b.load(Ordering::Relaxed);
            }
            e.sum_us += m.sum_us.load(Ordering::Relaxed);
            e.connect_errors += m.connect_errors.load(Ordering::Relaxed);
            e.retries += m.retries.load(Ordering::Relaxed);
        }
    }
    map.into_iter().collect()
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = totals(&self.workers);
        {
            let mut e = encoder.encode_descriptor(
                "kedge_requests",
                "Requests answered, by backend, rule host and status class.",
                None,
                MetricType::Counter,
            )?;
            for ((name, host), t) in &totals {
                for (i, n) in t.classes.iter().enumerate() {
                    let class = format!("{}xx", i + 1);
                    let labels = [("backend", &**name), ("host", &**host), ("class", class.as_str())];
                    ConstCounter::new(*n).encode(e.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "kedge_request_duration_seconds",
                "Time from the request head to the last byte of the answer, by backend and rule host.",
                None,
                MetricType::Histogram,
            )?;
            for ((name, host), t) in &totals {
                let count: u64 = t.buckets.iter().sum();
                let bounds: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(t.buckets.iter().copied())
                    .collect();
                e.encode_family(&[("backend", &**name), ("host", &**host)])?
                    .encode_histogram::<Vec<(String, String)>>(t.sum_us as f64 / 1e6, count, &bounds, None)?;
            }
        }
        for (metric, help, retries) in [
            (
                "kedge_upstream_connect_errors",
                "Failed connects (refused, timed out, TLS) to a backend's endpoints.",
                false,
            ),
            (
                "kedge_upstream_retries",
                "Requests sent to another endpoint after a failure.",
                true,
            ),
        ] {
            let mut e = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for ((name, host), t) in &totals {
                let v = if retries { t.retries } else { t.connect_errors };
                ConstCounter::new(v).encode(e.encode_family(&[("backend", &**name), ("host", &**host)])?)?;
            }
        }
        {
            let mut e = encoder.encode_descriptor(
                "kedge_requests_by_protocol",
                "Requests answered, by the protocol the client spoke.",
                None,
                MetricType::Counter,
            )?;
            for (i, protocol) in PROTOCOLS.iter().enumerate() {
                let n: u64 = self
                    .workers
                    .iter()
                    .map(|w| w.protocols[i].load(Ordering::Relaxed))
                    .sum();
                ConstCounter::new(n).encode(e.encode_family(&[("protocol", *protocol)])?)?;
            }
        }
        // Counters each worker keeps one of, summed.
        let summed: [(&str, &str, WorkerCounter); 2] = [
            (
                "kedge_mirror_abandoned",
                "RequestMirror copies abandoned before the whole request reached the mirror (it fell behind, failed, or the request's body failed).",
                |w| &w.mirrors_abandoned,
            ),
            (
                "kedge_tunnels_idle_closed",
                "Tunnels (after a 101, e.g. WebSocket) closed because no byte passed either way for the route's upstream read timeout.",
                |w| &w.tunnels_idle_closed,
            ),
        ];
        for (name, help, counter) in summed {
            let n: u64 = self.workers.iter().map(|w| counter(w).load(Ordering::Relaxed)).sum();
            let e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(e)?;
        }
        {
            let mut e = encoder.encode_descriptor(
                "kedge_connections",
                "Client connections open, by worker.",
                None,
                MetricType::Gauge,
            )?;
            for (i, w) in self.workers.iter().enumerate() {
                let worker = i.to_string();
                ConstGauge::new(w.connections.load(Ordering::Relaxed))
                    .encode(e.encode_family(&[("worker", worker.as_str())])?)?;
            }
        }
        crate::stats::encode(&mut encoder)
    }
}

/// The whole `/metrics` text.
pub fn render(metrics: &Metrics, out: &mut String) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(metrics.clone()));
    let _ = prometheus_client::encoding::text::encode(out, &registry);
}

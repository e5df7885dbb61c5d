//! The last phase of every request: one call that counts it in the backend's metrics and, when
//! the access log is on, writes its line (target `kedge::access`).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::request::RequestView;
use super::{Snapshot, Worker};

/// What the access log and metrics need to know about one request. The text fields are ranges
/// of the connection's reused `meta` buffer, filled only when the access log is on.
#[derive(Default)]
pub(super) struct Record {
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub host: Range<usize>,
    pub request_id: Range<usize>,
    /// How the client spoke: "HTTP/1.0", "HTTP/1.1" or "HTTP/2.0".
    pub protocol: &'static str,
    pub status: u16,
    pub bytes: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    /// The counters of the backend the request went to (`None`: no route).
    pub metrics: Option<Arc<crate::metrics::BackendMetrics>>,
    /// The request's client (see `client.rs`) once its view is built; before, the connection's.
    pub client: Option<IpAddr>,
}

impl Record {
    /// Copies what the access log shows of the request into `meta` (one reused buffer): the
    /// view's borrows end before the request is done.
    pub(super) fn describe(&mut self, meta: &mut String, req: &RequestView<'_>) {
        meta.clear();
        let mut push = |bytes: &[u8]| {
            let start = meta.len();
            meta.push_str(&String::from_utf8_lossy(bytes));
            start..meta.len()
        };
        self.method = push(req.method);
        self.target = push(req.target);
        self.host = push(req.authority);
        self.request_id = push(req.request_id);
    }
}

/// Counts the request and writes its access-log line. `peer`: the connection's client, for a
/// request that failed before its view was built. Returns the instant the request ended (read
/// for its duration): where a keep-alive connection's idle time starts.
pub(super) fn log_request(
    worker: &Worker,
    snap: &Snapshot,
    peer: SocketAddr,
    meta: &str,
    rec: &Record,
    start: Instant,
) -> Instant {
    // The metrics count every request, logged or not.
    let end = Instant::now();
    let took = end.saturating_duration_since(start);
    worker.metrics.protocol(rec.protocol);
    match &rec.metrics {
        Some(m) => m.request(rec.status, took),
        None => worker.backend_metrics("(no route)", "-").request(rec.status, took),
    }
    if !snap.access_log {
        return end;
    }
    let field = |r: &Range<usize>| meta.get(r.clone()).filter(|s| !s.is_empty()).unwrap_or("-");
    tracing::info!(
        target: "kedge::access",
        client = %rec.client.unwrap_or(peer.ip()),
        host = field(&rec.host),
        method = field(&rec.method),
        protocol = if rec.protocol.is_empty() { "-" } else { rec.protocol },
        path = field(&rec.target),
        status = rec.status,
        bytes = rec.bytes,
        upstream = %rec.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        upstream_ms = %Millis(rec.upstream_time),
        total_ms = %Millis(Some(took)),
        request_id = field(&rec.request_id),
    );
    end
}

/// A duration shown as milliseconds with microsecond precision, or `-`.
struct Millis(Option<Duration>);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{:.3}", d.as_secs_f64() * 1e3),
            None => f.write_str("-"),
        }
    }
}

//! Process-wide counters of rare events (per connection at most, never per request) and the
//! control thread's gauges: relaxed atomics (and, for the cluster states and status writers, lists
//! only the control thread writes), encoded into `/metrics` next to the per-worker request metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// A counter (or gauge) with its Prometheus name, label and help text.
pub struct Counter {
    /// The name without `_total` (the encoder adds it to counters).
    pub name: &'static str,
    /// `key=value`, or empty.
    pub label: (&'static str, &'static str),
    pub help: &'static str,
    pub gauge: bool,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, label: (&'static str, &'static str), help: &'static str) -> Counter {
        Counter {
            name,
            label,
            help,
            gauge: false,
            value: AtomicU64::new(0),
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            label: ("", ""),
            help,
            gauge: true,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

const HANDSHAKES: &str = "kedge_tls_handshakes";
const HANDSHAKES_HELP: &str = "TLS handshakes on client connections, by outcome.";

pub static TLS_FULL: Counter = Counter::new(HANDSHAKES, ("result", "full"), HANDSHAKES_HELP);
pub static TLS_RESUMED: Counter = Counter::new(HANDSHAKES, ("result", "resumed"), HANDSHAKES_HELP);
/// The client closed or reset the connection mid-handshake.
pub static TLS_CLOSED: Counter = Counter::new(HANDSHAKES, ("result", "client_closed"), HANDSHAKES_HELP);
/// Plain HTTP on a TLS port.
pub static TLS_PLAIN_HTTP: Counter = Counter::new(HANDSHAKES, ("result", "plain_http"), HANDSHAKES_HELP);
/// A protocol failure: malformed ClientHello, nothing in common, no certificate, an alert.
pub static TLS_FAILED: Counter = Counter::new(HANDSHAKES, ("result", "failed"), HANDSHAKES_HELP);
pub static TLS_TIMEOUT: Counter = Counter::new(HANDSHAKES, ("result", "timeout"), HANDSHAKES_HELP);

/// Problems with the certificates of the last build (a host left on the default certificate,
/// a file that does not parse): each is also a warning in the log and in `kedge backends`.
pub static TLS_CERT_PROBLEMS: Counter = Counter::gauge(
    "kedge_tls_certificate_problems",
    "Certificates that cannot be served as configured (see the warnings).",
);

const H2_ABUSE: &str = "kedge_http2_abuse";
const H2_ABUSE_HELP: &str = "HTTP/2 client connections ended, or streams refused, for abusing the protocol, by kind.";

/// Rapid Reset (CVE-2023-44487): most of many streams reset by the client after kedge took
/// them; the connection ends with GOAWAY ENHANCE_YOUR_CALM.
pub static H2_RAPID_RESET: Counter = Counter::new(H2_ABUSE, ("kind", "rapid_reset"), H2_ABUSE_HELP);
/// Streams reset by the client before kedge took them, past `h2`'s pending-accept limit.
pub static H2_RESET_FLOOD: Counter = Counter::new(H2_ABUSE, ("kind", "reset_flood"), H2_ABUSE_HELP);
/// MadeYouReset (CVE-2025-8671): streams the client made kedge reset (stream errors), past
/// the connection's budget.
pub static H2_MADE_YOU_RESET: Counter = Counter::new(H2_ABUSE, ("kind", "made_you_reset"), H2_ABUSE_HELP);
/// Connections where a stream started while their stream tasks were already at
/// `max_concurrent_streams` (streams reset but not yet wound down): refused, never forwarded
/// (counted once per connection).
pub static H2_OVER_STREAM_LIMIT: Counter = Counter::new(H2_ABUSE, ("kind", "over_stream_limit"), H2_ABUSE_HELP);
/// Endless CONTINUATION frames.
pub static H2_CONTINUATION_FLOOD: Counter = Counter::new(H2_ABUSE, ("kind", "continuation_flood"), H2_ABUSE_HELP);
/// A header block that decodes to far more than `max_header_bytes` (an HPACK bomb).
pub static H2_HEADER_BOMB: Counter = Counter::new(H2_ABUSE, ("kind", "header_bomb"), H2_ABUSE_HELP);
/// Empty or tiny DATA frames past `h2`'s budget.
pub static H2_DATA_FLOOD: Counter = Counter::new(H2_ABUSE, ("kind", "data_flood"), H2_ABUSE_HELP);
/// More control-frame bytes (PING, SETTINGS, PRIORITY, RST_STREAM, unknown frames, frame
/// headers) than request bytes, past 1 MiB: PING and SETTINGS floods.
pub static H2_CONTROL_FLOOD: Counter = Counter::new(H2_ABUSE, ("kind", "control_flood"), H2_ABUSE_HELP);
/// No complete connection preface within `[client] header_timeout`.
pub static H2_PREFACE_TIMEOUT: Counter = Counter::new(H2_ABUSE, ("kind", "preface_timeout"), H2_ABUSE_HELP);
/// Other connection errors kedge's `h2` detected, by the GOAWAY code it sent.
pub static H2_PROTOCOL_ERROR: Counter = Counter::new(H2_ABUSE, ("kind", "protocol_error"), H2_ABUSE_HELP);
pub static H2_FLOW_CONTROL_ERROR: Counter = Counter::new(H2_ABUSE, ("kind", "flow_control_error"), H2_ABUSE_HELP);
pub static H2_FRAME_SIZE_ERROR: Counter = Counter::new(H2_ABUSE, ("kind", "frame_size_error"), H2_ABUSE_HELP);
pub static H2_COMPRESSION_ERROR: Counter = Counter::new(H2_ABUSE, ("kind", "compression_error"), H2_ABUSE_HELP);
pub static H2_OTHER_ERROR: Counter = Counter::new(H2_ABUSE, ("kind", "other"), H2_ABUSE_HELP);

/// Route tables published since start.
pub static TABLE_VERSION: Counter = Counter::gauge(
    "kedge_route_table_version",
    "Route tables published since start (full builds and endpoint updates).",
);
/// When the current table was published (Unix seconds).
pub static TABLE_CHANGED: Counter = Counter::gauge(
    "kedge_route_table_last_change_timestamp_seconds",
    "When the route table in use was published.",
);

const PROXY_ERRORS: &str = "kedge_proxy_protocol_errors";
const PROXY_ERRORS_HELP: &str =
    "Connections closed on a proxy_protocol listener before any request was read, by reason.";

/// From a source outside the listener's `proxy_protocol_from`: closed at once.
pub static PROXY_UNTRUSTED: Counter = Counter::new(PROXY_ERRORS, ("reason", "untrusted_source"), PROXY_ERRORS_HELP);
/// Bytes that are not a PROXY header (none at all, or a malformed one).
pub static PROXY_MALFORMED: Counter = Counter::new(PROXY_ERRORS, ("reason", "malformed"), PROXY_ERRORS_HELP);
/// The peer closed before the header was complete.
pub static PROXY_CLOSED: Counter = Counter::new(PROXY_ERRORS, ("reason", "closed"), PROXY_ERRORS_HELP);
/// No complete header within `[client] header_timeout`.
pub static PROXY_TIMEOUT: Counter = Counter::new(PROXY_ERRORS, ("reason", "timeout"), PROXY_ERRORS_HELP);

/// Connections closed at once because their client already had `[client]
/// max_connections_per_client` open on the worker.
pub static CLIENT_CONNECTION_LIMIT: Counter = Counter::new(
    "kedge_client_connection_limit_refusals",
    ("", ""),
    "Connections closed because their client already had the most allowed open.",
);

/// Every counter, in exposition order (same-name counters together).
pub static ALL: [&Counter; 28] = [
    &TLS_FULL,
    &TLS_RESUMED,
    &TLS_CLOSED,
    &TLS_PLAIN_HTTP,
    &TLS_FAILED,
    &TLS_TIMEOUT,
    &TLS_CERT_PROBLEMS,
    &H2_RAPID_RESET,
    &H2_RESET_FLOOD,
    &H2_MADE_YOU_RESET,
    &H2_OVER_STREAM_LIMIT,
    &H2_CONTINUATION_FLOOD,
    &H2_HEADER_BOMB,
    &H2_DATA_FLOOD,
    &H2_CONTROL_FLOOD,
    &H2_PREFACE_TIMEOUT,
    &H2_PROTOCOL_ERROR,
    &H2_FLOW_CONTROL_ERROR,
    &H2_FRAME_SIZE_ERROR,
    &H2_COMPRESSION_ERROR,
    &H2_OTHER_ERROR,
    &PROXY_UNTRUSTED,
    &PROXY_MALFORMED,
    &PROXY_CLOSED,
    &PROXY_TIMEOUT,
    &CLIENT_CONNECTION_LIMIT,
    &TABLE_VERSION,
    &TABLE_CHANGED,
];

/// A new route table is in use.
pub fn table_published() {
    TABLE_VERSION.inc();
    TABLE_CHANGED.set(crate::time::unix_now().max(0) as u64);
}

/// Each cluster's state and when it was last seen live (Unix seconds, 0: never).
static CLUSTERS: Mutex<Vec<(String, &'static str, u64)>> = Mutex::new(Vec::new());

/// The states the control thread decided after a build.
pub fn clusters(states: Vec<(String, &'static str, bool)>) {
    let mut list = CLUSTERS.lock().unwrap_or_else(|e| e.into_inner());
    let now = crate::time::unix_now().max(0) as u64;
    let next = states
        .into_iter()
        .map(|(name, state, live)| {
            let last = list.iter().find(|(n, ..)| *n == name).map_or(0, |(_, _, t)| *t);
            (name, state, if live { now } else { last })
        })
        .collect();
    *list = next;
}

/// The clusters with publish addresses, and whether this kedge writes their Ingress status (holds
/// their status Lease).
static STATUS_WRITERS: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

/// Whether this kedge is `cluster`'s status writer now (the cluster's election reports it).
pub fn status_writer(cluster: &str, writer: bool) {
    let mut list = STATUS_WRITERS.lock().unwrap_or_else(|e| e.into_inner());
    match list.iter_mut().find(|(n, _)| n == cluster) {
        Some((_, w)) => *w = writer,
        None => list.push((cluster.to_owned(), writer)),
    }
}

/// Each cluster that elects a status writer, and whether this kedge is it, in start order.
pub fn status_writers() -> Vec<(String, bool)> {
    STATUS_WRITERS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The counters and gauges into `encoder`.
pub fn encode(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut i = 0;
    while i < ALL.len() {
        let first = ALL[i];
        let kind = if first.gauge {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let mut e = encoder.encode_descriptor(first.name, first.help, None, kind)?;
        if first.label.0.is_empty() {
            // One unlabelled sample.
            if first.gauge {
                ConstGauge::new(first.get() as i64).encode(e)?;
            } else {
                ConstCounter::new(first.get()).encode(e)?;
            }
            i += 1;
            continue;
        }
        while i < ALL.len() && ALL[i].name == first.name {
            let c = ALL[i];
            let labels = [c.label];
            if c.gauge {
                ConstGauge::new(c.get() as i64).encode(e.encode_family(&labels)?)?;
            } else {
                ConstCounter::new(c.get()).encode(e.encode_family(&labels)?)?;
            }
            i += 1;
        }
    }
    let clusters = CLUSTERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    {
        let mut e = encoder.encode_descriptor(
            "kedge_cluster_state",
            "Each cluster's state (1 for the one it is in): live, disconnected, persisted, not_synced, not_connected.",
            None,
            MetricType::Gauge,
        )?;
        for (name, state, _) in &clusters {
            ConstGauge::new(1i64).encode(e.encode_family(&[("cluster", name.as_str()), ("state", *state)])?)?;
        }
    }
    let mut e = encoder.encode_descriptor(
        "kedge_cluster_last_live_timestamp_seconds",
        "When each cluster was last seen live (synced, watches running) at a build; 0: never.",
        None,
        MetricType::Gauge,
    )?;
    for (name, _, t) in &clusters {
        ConstGauge::new(*t as i64).encode(e.encode_family(&[("cluster", name.as_str())])?)?;
    }
    let mut e = encoder.encode_descriptor(
        "kedge_status_writer",
        "1 while this kedge holds the cluster's status Lease and writes its Ingress status, else 0 (clusters with publish_addresses only).",
        None,
        MetricType::Gauge,
    )?;
    for (name, writer) in status_writers() {
        ConstGauge::new(i64::from(writer)).encode(e.encode_family(&[("cluster", name.as_str())])?)?;
    }
    Ok(())
}

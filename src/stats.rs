//! Process-wide counters of rare events (per connection at most, never per request) and a few
//! gauges the control thread sets: relaxed atomics, read by the admin server (`GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter (or gauge) with its Prometheus name, label and help text.
pub struct Counter {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    /// `counter` or `gauge`.
    pub kind: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, label: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            label,
            help,
            kind: "counter",
            value: AtomicU64::new(0),
        }
    }

    const fn gauge(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            label: "",
            help,
            kind: "gauge",
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

const HANDSHAKES: &str = "kedge_tls_handshakes_total";
const HANDSHAKES_HELP: &str = "TLS handshakes on client connections, by outcome.";

pub static TLS_FULL: Counter = Counter::new(HANDSHAKES, "result=\"full\"", HANDSHAKES_HELP);
pub static TLS_RESUMED: Counter = Counter::new(HANDSHAKES, "result=\"resumed\"", HANDSHAKES_HELP);
/// The client closed or reset the connection mid-handshake.
pub static TLS_CLOSED: Counter = Counter::new(HANDSHAKES, "result=\"client_closed\"", HANDSHAKES_HELP);
/// Plain HTTP on a TLS port.
pub static TLS_PLAIN_HTTP: Counter = Counter::new(HANDSHAKES, "result=\"plain_http\"", HANDSHAKES_HELP);
/// A protocol failure: malformed ClientHello, nothing in common, no certificate, an alert.
pub static TLS_FAILED: Counter = Counter::new(HANDSHAKES, "result=\"failed\"", HANDSHAKES_HELP);
pub static TLS_TIMEOUT: Counter = Counter::new(HANDSHAKES, "result=\"timeout\"", HANDSHAKES_HELP);

/// Problems with the certificates of the last build (a host left on the default certificate,
/// a file that does not parse): each is also a warning in the log.
pub static TLS_CERT_PROBLEMS: Counter = Counter::gauge(
    "kedge_tls_certificate_problems",
    "Certificates that cannot be served as configured (see the warnings in the log).",
);

/// Every counter, in exposition order (same-name counters together).
pub static ALL: [&Counter; 7] = [
    &TLS_FULL,
    &TLS_RESUMED,
    &TLS_CLOSED,
    &TLS_PLAIN_HTTP,
    &TLS_FAILED,
    &TLS_TIMEOUT,
    &TLS_CERT_PROBLEMS,
];

/// The counters in the Prometheus text format.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let mut last = "";
    for c in ALL {
        if c.name != last {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", c.name, c.help, c.name, c.kind);
            last = c.name;
        }
        if c.label.is_empty() {
            let _ = writeln!(out, "{} {}", c.name, c.get());
        } else {
            let _ = writeln!(out, "{}{{{}}} {}", c.name, c.label, c.get());
        }
    }
}

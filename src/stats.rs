//! Process-wide counters of rare events (per connection at most, never per request): relaxed
//! atomics that workers bump and the admin server reads (`GET /metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with its Prometheus name and help text.
pub struct Counter {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, label: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            label,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
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

/// Every counter, in exposition order (same-name counters together).
pub static ALL: [&Counter; 6] = [
    &TLS_FULL,
    &TLS_RESUMED,
    &TLS_CLOSED,
    &TLS_PLAIN_HTTP,
    &TLS_FAILED,
    &TLS_TIMEOUT,
];

/// The counters in the Prometheus text format.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let mut last = "";
    for c in ALL {
        if c.name != last {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} counter", c.name, c.help, c.name);
            last = c.name;
        }
        let _ = writeln!(out, "{}{{{}}} {}", c.name, c.label, c.get());
    }
}

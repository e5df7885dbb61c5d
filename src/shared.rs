//! The one boundary between the control side and the workers: what they share, and nothing
//! else. The control thread builds a [`Snapshot`] and publishes it in [`Shared::snapshot`];
//! workers only ever load it. The rest of [`Shared`] is process state both sides touch off the
//! request path: the shutdown signal, the watchdog heartbeats, the per-worker metrics.
//!
//! Nothing here knows Kubernetes, sockets or a runtime: it is values and the atomics that hand
//! them over.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{ClientSettings, UpstreamSettings};
use crate::routes::RouteTable;

/// Everything a request needs from the control side, swapped as one value so that no request
/// ever sees half a change. Immutable once published: a change is a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    pub client: ClientSettings,
    pub upstream: UpstreamSettings,
    pub access_log: bool,
    /// What TLS listeners accept with (certificates included); `None` without TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub https: HttpsSettings,
}

/// HTTPS behaviour besides the certificates.
#[derive(Debug, Clone, Default)]
pub struct HttpsSettings {
    /// `Strict-Transport-Security: ...\r\n` added to HTTPS responses, or empty.
    pub hsts_line: Box<[u8]>,
    /// Where plain-HTTP requests of TLS hosts are redirected; `None`: no redirects (kedge has no
    /// TLS listener and none was configured).
    pub redirect_port: Option<u16>,
    pub handshake_timeout: Duration,
}

/// State shared by the whole process: read-only on the request path.
pub struct Shared {
    /// The published snapshot: stored by the control thread, loaded by workers.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// `true` once shutdown begins (workers stop accepting and drain).
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Liveness for the systemd watchdog: `[0]` the control thread, `[1 + i]` worker `i`.
    pub hearts: Vec<Arc<crate::notify::Heartbeat>>,
    /// Each worker's request metrics (written by that worker only; summed when scraped).
    pub metrics: Arc<Vec<Arc<crate::metrics::WorkerMetrics>>>,
}

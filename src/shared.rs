//! The one boundary between the control side and the workers: what they share, and nothing
//! else. The control thread builds a [`Snapshot`] and publishes it in [`Shared::snapshot`];
//! workers only ever load it. The rest of [`Shared`] is process state both sides touch off the
//! request path: the shutdown signal, the watchdog heartbeats, the per-worker metrics. And
//! [`ClusterState`], what each cluster serves from, which the control thread decides and the
//! admin server reports.
//!
//! Nothing here knows Kubernetes, sockets or a runtime: it is values and the atomics that hand
//! them over.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{ClientSettings, Http2Settings, UpstreamSettings};
use crate::routes::RouteTable;

/// Everything a request needs from the control side, swapped as one value so that no request
/// ever sees half a change. Immutable once published: a change is a new snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub table: RouteTable,
    pub client: ClientSettings,
    pub upstream: UpstreamSettings,
    pub http2: Http2Settings,
    pub access_log: bool,
    /// What TLS listeners accept with (certificates included); `None` without TLS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The configurations of Gateway scopes with HTTPS listeners (`tls`'s certificates, then
    /// their Gateways' for the names `tls` lacks): scopes bound to addresses first. See
    /// [`Snapshot::tls_for`].
    pub gateway_tls: Vec<ScopedTls>,
    pub https: HttpsSettings,
}

/// The TLS configuration of the connections a Gateway scope takes: those arriving on `port`
/// at one of `addresses` (empty: any local address).
#[derive(Debug, Clone)]
pub struct ScopedTls {
    pub addresses: Vec<std::net::IpAddr>,
    pub port: u16,
    pub config: Arc<rustls::ServerConfig>,
}

impl Snapshot {
    /// The TLS configuration for a connection that arrived on `local`: its Gateway scope's,
    /// so that a Gateway's certificate is served only on its own addresses and port, else the
    /// one of every TLS listener.
    pub fn tls_for(&self, local: std::net::SocketAddr) -> Option<&Arc<rustls::ServerConfig>> {
        let ip = local.ip().to_canonical();
        self.gateway_tls
            .iter()
            .find(|s| s.port == local.port() && (s.addresses.is_empty() || s.addresses.contains(&ip)))
            .map(|s| &s.config)
            .or(self.tls.as_ref())
    }
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

/// What a cluster serves from, decided by the control thread (`control/last_known_good.rs`)
/// and read by the admin server: readiness is [`ClusterState::is_ready`] of every cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterState {
    /// Not synced yet, and no persisted state in use: the cluster adds only what its stores hold
    /// so far (nothing at first).
    NotSynced,
    /// Not synced yet; serving the objects persisted at this time (RFC 3339).
    Persisted(String),
    /// Synced; every watch is running.
    Live,
    /// Synced, but a watch is failing (API server down, slow or answering errors): serving the
    /// last known state while kube retries.
    Disconnected,
}

impl ClusterState {
    /// Ready: synced once, or serving the persisted state.
    pub fn is_ready(&self) -> bool {
        !matches!(self, ClusterState::NotSynced)
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterState::NotSynced => f.write_str("not synced"),
            ClusterState::Persisted(at) => write!(f, "persisted ({at})"),
            ClusterState::Live => f.write_str("live"),
            ClusterState::Disconnected => f.write_str("disconnected"),
        }
    }
}

//! A cluster's kube client, built from its kubeconfig and context, and the client and watch
//! timeouts that notice a silently dead API server in about a minute instead of five. The
//! client carries the [`Observe`] layer, so that watch health sees the API server accept a
//! watch request.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::runtime::watcher;

use super::health::{Health, Observe};
use crate::config::ClusterConfig;

/// Watch requests ask the API server to end them after this many seconds (kube's default: 290).
/// kube's watcher also drops a watch stream that stays silent for this long plus 5 s, and that
/// is what notices an API server gone without closing the connection (host down, partition, a
/// firewall forgetting the flow): after 65 s instead of 295 s. The cost is one watch request per
/// watch per minute, resumed from the last resourceVersion (no relist).
const WATCH_TIMEOUT_SECS: u32 = 60;

/// TCP connect plus TLS handshake to the API server (kube's default: 30 s). The reconnect after
/// the silent watch is dropped fails within this, so a dead API server is logged at most about
/// 75 s after it went away (65 s + 10 s), and right away when it refuses or resets connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the next bytes of a response (kube's default: none). It catches a LIST, or a
/// watch request whose response head never comes, on a connection that died; the watcher's idle
/// timeout covers only an established watch stream. It is longer than a healthy watch can stay
/// silent (the API server ends it after 60 s), so it never cuts one.
const READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Longest wait to send a request (kube's default: 295 s). Requests are small: a send blocked
/// this long is a dead peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client from the cluster's kubeconfig (or `$KUBECONFIG` / `~/.kube/config`) and context,
/// with the timeouts above, reporting accepted watch requests to `health`.
pub async fn client(cfg: &ClusterConfig, health: &Arc<Health>) -> Result<Client, String> {
    let what = |e: &dyn std::fmt::Display| format!("cluster {:?}: {e}", cfg.name);
    let kubeconfig = match &cfg.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path).map_err(|e| what(&e))?,
        None => kube::config::Kubeconfig::read().map_err(|e| what(&e))?,
    };
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| what(&e))?;
    tune_client(&mut config);
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| what(&e))?;
    Ok(builder.with_layer(&Observe(Arc::clone(health))).build())
}

/// Sets the client timeouts above on a cluster's kube config.
fn tune_client(config: &mut kube::Config) {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    // The read timeout counts from when a request is sent, not from when its pooled connection
    // went idle.
    config.reset_reader_on_write = true;
}

/// The watcher configuration of every watch: kube's defaults with [`WATCH_TIMEOUT_SECS`].
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

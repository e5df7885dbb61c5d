//! Logging through `tracing`: text (without timestamps under journald, which adds its own) or
//! JSON, filtered by the configured level or `RUST_LOG`. Access lines use target `kedge::access`.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. Call once, before any thread starts.
pub fn init(log: &LogConfig) {
    // rustls warns on every handshake whose SNI is an IP address; keep that out by default. kube
    // logs every failed request of its retry loops (an error line per watch every few seconds
    // while an API server is down) and every dropped watch connection: kedge logs a watch's
    // failure and its recovery once each instead. h2 warns of what a peer did (a PING ACK never
    // asked for, reset limits reached): a client could fill the log with them; kedge logs its
    // abuse cases at debug level and counts them.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},rustls=error,h2=error,kube_client::client::builder=off,kube_client::client=error",
            log.level
        ))
    });
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if log.json {
        builder.json().flatten_event(true).try_init()
    } else if under_journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
    if let Err(e) = result {
        eprintln!("kedge: logging already initialised: {e}");
    }
}

//! The process: start-up, signals and shutdown. Binds every listener before anything starts
//! (so a busy port fails the start), starts the control thread and waits for its first table,
//! starts the workers, says READY to systemd, then turns signals into commands: SIGHUP reloads,
//! SIGTERM/SIGINT drain and exit.
//!
//! ```text
//! bind listeners + admin ─▶ control::start (first table published) ─▶ worker::spawn × N
//!   ─▶ READY=1 ─▶ signals: HUP → Control::reload │ TERM/INT → drain, join, exit 0
//! ```

use std::sync::Arc;
use std::sync::mpsc;

use arc_swap::ArcSwap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::Config;
use crate::shared::{HttpsSettings, Shared, Snapshot};
use crate::worker::{self, listener::Bound};

/// Runs kedge until SIGTERM or SIGINT, then drains. Returns an error when it cannot start.
pub fn run(cfg: Config) -> Result<(), String> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    // kube's TLS and ours use rustls with aws-lc-rs; say so once for the whole process.
    let _ = crate::tls::default_provider().install_default();

    // Until the control thread's first build: static routes, and no TLS yet (workers start
    // after that build anyway).
    let (table, warnings) = crate::control::translate::static_routes::build(&cfg.routes);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let snap = Snapshot {
        table,
        client: cfg.client.clone(),
        upstream: cfg.upstream.clone(),
        http2: cfg.http2.clone(),
        access_log: cfg.process.log.access_log,
        tls: None,
        gateway_tls: Vec::new(),
        https: HttpsSettings::default(),
    };
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snap)),
        shutdown: tokio::sync::watch::channel(false).0,
        hearts: (0..=cfg.process.workers).map(|_| Arc::default()).collect(),
        metrics: Arc::new((0..cfg.process.workers).map(|_| Arc::default()).collect()),
    });
    let notifier = crate::notify::Notifier::from_env();

    // Bind every listener for every worker before anything else, so a busy port fails the start.
    let p = cfg.process.clone();
    let mut per_worker: Vec<Vec<Bound>> = (0..p.workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for spec in &p.listeners {
        let sockets = worker::listener::bind(spec.address, p.workers).map_err(|e| e.to_string())?;
        let local = sockets[0].local_addr().map_err(|e| e.to_string())?;
        bound.push((local, spec.clone()));
        for (w, socket) in sockets.into_iter().enumerate() {
            per_worker[w].push(Bound {
                spec: spec.clone(),
                socket,
            });
        }
    }
    // The admin listener after them: a busy proxy port is the one to name when both are.
    let admin = p.admin.map(crate::admin::bind).transpose()?;
    // The listeners with the addresses they are bound to (a port 0 made a real one): where
    // Gateway listeners map to, and the first TLS one's port.
    let bound: Vec<crate::config::ListenerSpec> = bound
        .into_iter()
        .map(|(local, spec)| crate::config::ListenerSpec { address: local, ..spec })
        .collect();
    let listening: Vec<(std::net::SocketAddr, bool)> = bound.iter().map(|l| (l.address, l.tls)).collect();

    // The control thread publishes the first full table (after every cluster's first sync, or
    // its sync timeout) before any worker accepts: no 404 storm at start.
    let control = crate::control::start(cfg, bound, Arc::clone(&shared), admin, notifier.clone())?;

    let cores = allowed_cpus();
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, listeners) in per_worker.into_iter().enumerate() {
        // Pin only when there is a core per worker; with more workers than cores, let the
        // scheduler place them.
        let core = (p.workers <= cores.len()).then(|| cores[i]);
        let h = worker::spawn(
            i,
            core,
            listeners,
            Arc::clone(&shared),
            p.driver,
            p.shutdown_grace,
            tx.clone(),
        )
        .map_err(|e| format!("cannot start worker {i}: {e}"))?;
        handles.push(h);
    }
    drop(tx);
    let mut driver = "";
    for _ in 0..p.workers {
        match rx.recv() {
            Ok(Ok(d)) => driver = d,
            Ok(Err(e)) => {
                shared.shutdown.send_replace(true);
                return Err(format!("a worker could not start: {e}"));
            }
            Err(_) => return Err("a worker exited during start-up".into()),
        }
    }
    for (addr, tls) in &listening {
        if *tls {
            tracing::info!("listening on {addr} (tls)");
        } else {
            tracing::info!("listening on {addr}");
        }
    }
    tracing::info!(
        workers = p.workers,
        driver,
        version = env!("CARGO_PKG_VERSION"),
        "kedge started"
    );
    // Every source has synced (or timed out and serves its persisted state) and the workers
    // accept: systemd may start what comes after kedge.
    notifier.send(&format!("READY=1\nSTATUS=serving ({} workers, {driver})", p.workers));
    if notifier.enabled()
        && let Some(interval) = crate::notify::watchdog_interval()
    {
        crate::notify::watchdog(notifier.clone(), interval, shared.hearts.clone());
    }

    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                // READY=1 follows from the control thread once the reload is done.
                notifier.send(&crate::notify::reloading());
                control.reload();
            }
            _ => break,
        }
    }

    notifier.send("STOPPING=1");
    tracing::info!(grace = ?p.shutdown_grace, "shutting down: no new connections, draining");
    control.stop();
    // `send_replace`, not `send`: a worker that has not subscribed yet (a SIGTERM in the first
    // milliseconds) must still find the value; `send` with no receiver stores nothing, and that
    // worker would have served on, SIGTERM or not.
    shared.shutdown.send_replace(true);
    for h in handles {
        let _ = h.join();
    }
    control.join();
    tracing::info!("stopped");
    Ok(())
}

/// The CPUs this process may run on (respects `taskset` and systemd's `CPUAffinity`), read from
/// `/proc/self/status`; falls back to `0..available_parallelism`.
fn allowed_cpus() -> Vec<usize> {
    let from_proc = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|v| parse_cpu_list(v.trim()))
    });
    from_proc.unwrap_or_else(|| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse::<usize>().ok()?),
            None => out.push(part.trim().parse().ok()?),
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::parse_cpu_list;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}

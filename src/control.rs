//! The control side of the process: builds the first snapshot, binds listeners, starts the
//! workers, then waits for signals — SIGHUP re-reads the file and swaps a new snapshot in,
//! SIGTERM/SIGINT drain and stop. Workers only ever *load* what this publishes.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use arc_swap::ArcSwap;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{self, Config};
use crate::routes;
use crate::worker::{self, Shared, Snapshot};

/// Builds the snapshot the workers serve from a validated config.
pub fn snapshot(cfg: &Config) -> (Snapshot, Vec<String>) {
    let (table, warnings) = routes::build_static(&cfg.routes);
    let snap = Snapshot {
        table,
        client: cfg.client.clone(),
        upstream: cfg.upstream.clone(),
        access_log: cfg.process.log.access_log,
    };
    (snap, warnings)
}

/// Runs kedge until SIGTERM or SIGINT, then drains. Returns an error when it cannot start.
pub fn run(cfg: Config) -> Result<(), String> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let (snap, warnings) = snapshot(&cfg);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let routes = cfg.routes.len();
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snap)),
        shutdown: tokio::sync::watch::channel(false).0,
    });

    // Bind every listener for every worker before starting any, so a busy port fails the start.
    let p = &cfg.process;
    let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..p.workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in &p.listeners {
        let sockets = worker::listener::bind(addr, p.workers).map_err(|e| e.to_string())?;
        bound.push(sockets[0].local_addr().map_err(|e| e.to_string())?);
        for (w, s) in sockets.into_iter().enumerate() {
            per_worker[w].push(s);
        }
    }

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
                let _ = shared.shutdown.send(true);
                return Err(format!("a worker could not start: {e}"));
            }
            Err(_) => return Err("a worker exited during start-up".into()),
        }
    }
    for addr in &bound {
        tracing::info!("listening on {addr}");
    }
    tracing::info!(
        workers = p.workers,
        driver,
        routes,
        version = env!("CARGO_PKG_VERSION"),
        "kedge started"
    );

    let mut current = cfg;
    let mut version = 1;
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                if let Some(next) = reload(&current.path, &current, &shared, version + 1) {
                    current = next;
                    version += 1;
                }
            }
            _ => break,
        }
    }

    tracing::info!(grace = ?current.process.shutdown_grace, "shutting down: no new connections, draining");
    let _ = shared.shutdown.send(true);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads the file and swaps in a new snapshot. A file that does not validate leaves the
/// current table serving and says why. Settings fixed at start (listeners, workers, driver)
/// are reported when changed, not applied.
fn reload(path: &Path, current: &Config, shared: &Shared, version: u64) -> Option<Config> {
    let started = Instant::now();
    let next = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
            return None;
        }
    };
    let (p, q) = (&current.process, &next.process);
    if p.listeners != q.listeners || p.workers != q.workers || p.driver != q.driver {
        tracing::warn!("listeners, workers and driver changes take effect on restart only");
    }
    let (snap, warnings) = snapshot(&next);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let hosts = snap.table.host_count();
    shared.snapshot.store(Arc::new(snap));
    tracing::info!(
        version,
        routes = next.routes.len(),
        hosts,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "configuration reloaded"
    );
    Some(next)
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

//! systemd's notification protocol (`sd_notify`), without libsystemd: datagrams to the socket
//! in `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). `READY=1` once the first
//! table is served, `RELOADING=1` / `READY=1` around a SIGHUP reload, `STOPPING=1` at the drain,
//! and `WATCHDOG=1` pings while every worker and the control thread are alive. Without
//! `$NOTIFY_SOCKET` (not under systemd, or `Type=` other than notify) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where notifications go.
#[derive(Clone)]
pub struct Notifier {
    target: Option<Arc<(UnixDatagram, Target)>>,
}

enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a socket that cannot be used is a warning and no notifications.
    pub fn from_env() -> Notifier {
        let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let bytes = addr.as_encoded_bytes();
        let target = match bytes.strip_prefix(b"@") {
            Some(name) => Target::Abstract(name.to_vec()),
            None => Target::Path(addr.clone().into()),
        };
        match UnixDatagram::unbound() {
            Ok(s) => Notifier {
                target: Some(Arc::new((s, target))),
            },
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET is set but no socket can be made: {e}; systemd is not notified");
                Notifier { target: None }
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=value` lines); failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        let Some(t) = &self.target else { return };
        let (sock, target) = &**t;
        let sent = match target {
            Target::Path(p) => sock.send_to(state.as_bytes(), p),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            tracing::warn!("cannot notify systemd ({}): {e}", state.lines().next().unwrap_or(""));
        }
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }
}

/// `RELOADING=1` with the monotonic time systemd wants with it.
pub fn reloading() -> String {
    let usec = crate::time::clock(libc::CLOCK_MONOTONIC).as_micros();
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}

/// A heartbeat a thread bumps; the watchdog pings only while every heartbeat moves.
#[derive(Default)]
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How often workers and the control thread beat.
pub const BEAT: Duration = Duration::from_secs(1);

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` every half interval while all `hearts` beat; a stuck worker or control
/// thread stops the pings, and systemd restarts kedge. Runs until the process ends.
pub fn watchdog(notifier: Notifier, interval: Duration, hearts: Vec<Arc<Heartbeat>>) {
    let every = (interval / 2).max(BEAT * 2);
    let _ = std::thread::Builder::new()
        .name("kedge-watchdog".into())
        .spawn(move || {
            let mut last: Vec<u64> = hearts.iter().map(|h| h.get()).collect();
            let mut since = Instant::now();
            loop {
                std::thread::sleep(every);
                let now: Vec<u64> = hearts.iter().map(|h| h.get()).collect();
                let stuck: Vec<usize> = (0..hearts.len()).filter(|&i| now[i] == last[i]).collect();
                if stuck.is_empty() {
                    notifier.send("WATCHDOG=1");
                    since = Instant::now();
                } else {
                    tracing::error!(
                        stuck = ?stuck,
                        for_s = since.elapsed().as_secs(),
                        "a thread stopped beating (0 = control, then workers); no watchdog ping"
                    );
                }
                last = now;
            }
        });
}

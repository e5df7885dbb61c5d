//! The harness: a kedge child process, upstreams to put behind it (hyper ones, raw TCP ones for
//! shapes hyper will not produce, and a recorder of every byte kedge sends), a raw HTTP/1
//! client that sees every byte, HTTP/2 clients (the `h2` crate's, and a frame-level one), and a
//! fixture Kubernetes API server for the control plane.

pub mod body;
mod client;
mod cluster;
pub mod h2_client;
pub mod h2_frames;
mod kedge;
mod kube_api;
pub mod objects;
mod raw_upstream;
mod recording_upstream;
pub mod tls;
mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use client::{Client, Response};
pub use cluster::{get, readyz, state_file, wait_readyz};
pub use kedge::{Kedge, Setup, Signal};
pub use kube_api::FakeApi;
pub use raw_upstream::{RawBehavior, RawUpstream};
pub use recording_upstream::{ConnLog, Recorded, RecordingUpstream};
pub use upstream::{Handler, Seen, Upstream};

/// The I/O driver a test runs kedge with.
///
/// The default, io_uring, is what `driver = "auto"` picks wherever it works. Tests of the data
/// plane (what a worker reads, writes, times out, pools, upgrades) run on both drivers through
/// [`both_drivers!`]; tests of the control plane (cluster sync, status writes, outages and
/// persisted state, several clusters, the admin server, the command line, systemd
/// notifications) run once, on the default: the control thread does not use the workers' driver,
/// and the traffic those tests send goes through paths the data-plane tests already cover on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    #[default]
    IoUring,
    Epoll,
}

impl Driver {
    /// The value of `[proxy] driver` for this driver.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Defines a data-plane test that runs once per I/O driver: `both_drivers!(fn name(driver) { ... })`
/// makes a module `name` with the tests `name::io_uring` and `name::epoll`, so
/// `cargo test --test it epoll` picks one driver. Control-plane tests are plain `#[test]`s on
/// `Driver::default()` (see [`Driver`]).
macro_rules! both_drivers {
    ($(#[$attr:meta])* fn $name:ident($driver:ident) $body:block) => {
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($driver: $crate::support::Driver) $body

            #[test]
            fn io_uring() {
                run($crate::support::Driver::IoUring)
            }

            #[test]
            fn epoll() {
                run($crate::support::Driver::Epoll)
            }
        }
    };
}
pub(crate) use both_drivers;

/// A directory under the system temp dir, unique to this test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kedge-it-{}-{n}-{nanos}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in this directory, atomically (a reader sees the old file or the
    /// new one, never half of it), and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &path).expect("rename temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 10 ms until it holds; panics saying `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || if cond() { Ok(()) } else { Err("not yet") });
}

/// Polls `probe` every 10 ms until it answers `Ok`, and returns what it answered; panics after
/// `timeout` saying `what` and the last `Err` it gave (what was seen instead).
pub fn wait_for<T, E: std::fmt::Debug>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// An address nothing listens on: a port the kernel just handed out and took back.
pub fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr")
}

/// A config fragment routing every host and path to `upstreams`.
pub fn route_all(upstreams: &[SocketAddr]) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[[route]]\nupstreams = [{}]\n", list.join(", "))
}

/// A listening address where connects hang: its accept queue (backlog 0) is filled and never
/// drained, so the kernel drops further SYNs, as for a host that went away. Keep the returned
/// sockets alive for as long as the address must stay a black hole.
pub fn blackhole_addr() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    l.listen(0).expect("listen");
    let addr = l.local_addr().expect("local addr").as_socket().expect("inet");
    // Each connect that completes takes a place in the queue; once it is full the next ones time out.
    let fillers = (0..4)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
        .collect();
    (addr, fillers, l)
}

/// One TCP socket of a process, as `/proc/net/tcp` lists it: local and remote address in its
/// notation (`proc_net_addr`), and its state (`0A`: LISTEN).
pub struct TcpSocket {
    pub local: String,
    pub remote: String,
    pub state: String,
}

/// The IPv4 TCP sockets process `pid` holds (by its `/proc/PID/fd` inodes).
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && inodes.contains(f[9])).then(|| TcpSocket {
                local: f[1].to_owned(),
                remote: f[2].to_owned(),
                state: f[3].to_owned(),
            })
        })
        .collect()
}

/// `addr` as `/proc/net/tcp` writes it: the IPv4 address as its 32-bit value in host
/// (little-endian) order, then the port, both in hex.
pub fn proc_net_addr(addr: SocketAddr) -> String {
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        panic!("IPv4 only")
    };
    format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), addr.port())
}

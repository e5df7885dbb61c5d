//! Per-worker keep-alive pools of upstream connections, one idle list per endpoint. Owned by one
//! worker thread: no locks, no sharing.

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::upstream::UpstreamStream;

/// What idle connections are kept by: the endpoint, and the TLS settings they were made with
/// (0: plain), so that a connection is only reused the way it was set up.
pub type PoolKey = (SocketAddr, u64);

/// Connections parked for less than this are reused without a liveness check.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// Liveness checks (one syscall each) a sweep makes at most.
const CHECKS_PER_SWEEP: usize = 1024;

/// Idle connections an endpoint may have between sweeps, as a multiple of `max_idle`: what a
/// burst of concurrent requests opened stays for reuse until a sweep finds it parked for
/// [`CHECK_AFTER`] beyond `max_idle` (see [`Pool::sweep`]). Closing them as they come back, as
/// soon as `max_idle` are parked, made every later request of the burst connect again: with
/// 200 HTTP/2 streams in flight to one endpoint, one request in eight opened a connection
/// (BENCHMARKS.md, "HTTP/2 cells").
const BURST_FACTOR: usize = 8;

/// An idle upstream connection and when it was parked.
struct Idle {
    stream: UpstreamStream,
    since: Instant,
}

/// The idle connections to one endpoint.
#[derive(Default)]
struct Idles {
    list: Vec<Idle>,
    /// A connection was parked since the last sweep: the list is kept even when empty (all its
    /// connections busy), so that a busy endpoint's list is not freed and allocated again.
    parked: bool,
}

/// The idle connections of one worker.
#[derive(Default)]
pub struct Pool {
    /// Keys are upstream addresses from the route table, not client input: a fast hash is safe.
    idle: FxHashMap<PoolKey, Idles>,
}

impl Pool {
    /// Takes the most recently parked live connection to `addr`. Connections idle longer than
    /// `idle_timeout`, or that the peer closed while parked, are dropped on the way.
    ///
    /// The liveness check is a syscall, so it is made only for connections parked longer than
    /// [`CHECK_AFTER`]: upstreams close idle connections on their own keep-alive timeout (5 s
    /// for Node.js, more elsewhere), and one that closes sooner (restart, request quota) is
    /// covered by the retry of idempotent requests.
    pub fn take(&mut self, key: PoolKey, idle_timeout: Duration, now: Instant) -> Option<UpstreamStream> {
        let list = &mut self.idle.get_mut(&key)?.list;
        while let Some(idle) = list.pop() {
            let age = now.duration_since(idle.since);
            if age < idle_timeout && (age < CHECK_AFTER || is_open(&idle.stream)) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Parks `stream` for reuse, unless `addr` already has `max_idle` × [`BURST_FACTOR`] idle
    /// connections ([`Pool::sweep`] trims them back to `max_idle`). `now` may be a little
    /// in the past (the start of the request): the connection then only expires a little
    /// early.
    pub fn put(&mut self, key: PoolKey, stream: UpstreamStream, max_idle: usize, now: Instant) {
        let idles = self.idle.entry(key).or_default();
        idles.parked = true;
        if idles.list.len() < max_idle.saturating_mul(BURST_FACTOR) {
            idles.list.push(Idle { stream, since: now });
        }
    }

    /// Closes connections idle longer than `idle_timeout`, and those the upstream closed while
    /// parked; called periodically so idle sockets do not pile up on endpoints that no longer
    /// get traffic, nor sit in CLOSE-WAIT until the idle timeout after a pod stopped. The
    /// liveness check is one peek per connection parked longer than [`CHECK_AFTER`], at most
    /// [`CHECKS_PER_SWEEP`] per sweep (the rest wait for the next sweep). An endpoint keeps at
    /// most `max_idle` and those parked less than [`CHECK_AFTER`] ago; its empty list goes at
    /// the first sweep after a whole period without a connection parked.
    pub fn sweep(&mut self, idle_timeout: Duration, max_idle: usize) {
        let now = Instant::now();
        let mut checks = CHECKS_PER_SWEEP;
        self.idle.retain(|_, idles| {
            let list = &mut idles.list;
            // Parked in order, the front longest: beyond `max_idle`, those parked for
            // [`CHECK_AFTER`] at least go (a busy endpoint's load comes in waves: the ones
            // parked since the last wave are reused in the next).
            let over = list.len().saturating_sub(max_idle);
            let old = list[..over]
                .iter()
                .take_while(|i| now.duration_since(i.since) >= CHECK_AFTER)
                .count();
            list.drain(..old);
            list.retain(|i| {
                let age = now.duration_since(i.since);
                if age >= idle_timeout {
                    return false;
                }
                if age >= CHECK_AFTER && checks > 0 {
                    checks -= 1;
                    return is_open(&i.stream);
                }
                true
            });
            let keep = !idles.list.is_empty() || idles.parked;
            idles.parked = false;
            keep
        });
    }

    /// Closes everything (shutdown).
    pub fn clear(&mut self) {
        self.idle.clear();
    }
}

/// Whether a parked connection still looks usable: a non-blocking peek sees neither EOF, nor an
/// error, nor unexpected bytes (an upstream must not talk while no request is outstanding). One
/// cheap syscall that saves a failed request on a connection the upstream closed while idle.
#[allow(unsafe_code)]
fn is_open(stream: &UpstreamStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the fd belongs to `stream`, which outlives this call; recv writes at most one byte
    // into `byte`, which is valid for writes.
    let n = unsafe {
        libc::recv(
            stream.fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

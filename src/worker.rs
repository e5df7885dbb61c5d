//! Worker threads: one monoio runtime per core, pinned, each with its own SO_REUSEPORT
//! listeners, upstream pools and balancer state. The only cross-thread state a worker reads is
//! the published [`Snapshot`] (immutable, behind an atomic pointer) and the shutdown signal.
//! A connection goes through its listener's stages (`accept.rs`), then the request loop
//! (`conn.rs` for HTTP/1.1, `h2.rs` for HTTP/2) and the request phases (`request.rs`, `decide.rs`, `forward.rs`, `respond.rs`,
//! `log.rs`).

mod accept;
mod balance;
mod bufs;
mod checks;
mod client;
mod conn;
mod decide;
mod error;
mod forward;
mod forward_h2;
mod h2;
mod h2_pool;
mod limits;
pub mod listener;
mod log;
mod mirror;
mod pool;
mod pump;
mod request;
mod respond;
mod session;
mod timer;
mod tls;
mod upstream;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use rustc_hash::FxHashMap;

use crate::config::Driver;
use crate::shared::{Shared, Snapshot};

/// A snapshot held by a worker. Requests share it through a worker-local `Rc`, so taking a
/// handle per request costs no atomic reference count on memory other workers touch.
struct Held(Arc<Snapshot>);

impl std::ops::Deref for Held {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

/// A backend's counters by rule host, in one worker.
type ByHost = FxHashMap<Box<str>, Arc<crate::metrics::BackendMetrics>>;

/// What a worker reports once its runtime is up (or why it is not).
pub type Started = Result<&'static str, String>;

/// Spawns worker `index`, pinned to `core` when given, serving `listeners`.
pub fn spawn(
    index: usize,
    core: Option<usize>,
    listeners: Vec<listener::Bound>,
    shared: Arc<Shared>,
    driver: Driver,
    grace: Duration,
    started: mpsc::Sender<Started>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("kedge-worker-{index}"))
        .spawn(move || {
            if let Some(core) = core
                && let Err(e) = monoio::utils::bind_to_cpu_set([core])
            {
                tracing::warn!(worker = index, core, error = %e, "cannot pin worker to its core");
            }
            let main = worker_main(index, listeners, shared, grace);
            let uring = match driver {
                Driver::Epoll => false,
                Driver::IoUring => true,
                Driver::Auto => monoio::utils::detect_uring(),
            };
            if uring {
                match uring_runtime() {
                    Ok(mut rt) => {
                        let _ = started.send(Ok("io_uring"));
                        return rt.block_on(main);
                    }
                    Err(e) if driver == Driver::IoUring => {
                        let _ = started.send(Err(format!("io_uring runtime: {e}")));
                        return;
                    }
                    Err(e) => {
                        if index == 0 {
                            tracing::warn!(error = %e, "io_uring is unavailable (memlock limit?); using epoll");
                        }
                    }
                }
            } else if driver == Driver::Auto && index == 0 {
                tracing::warn!("the kernel refuses io_uring; using epoll");
            }
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    let _ = started.send(Ok("epoll"));
                    rt.block_on(main)
                }
                Err(e) => {
                    let _ = started.send(Err(format!("epoll runtime: {e}")));
                }
            }
        })
}

/// Builds an io_uring runtime, preferring the ring set-up that costs least per request.
///
/// `DEFER_TASKRUN` (Linux 6.1) runs completion work only when the worker asks for events, so a
/// packet arriving from another CPU does not interrupt the worker; `COOP_TASKRUN` (5.19) at
/// least avoids the inter-processor interrupt. Measured on a 2-core VM: plain ≈ 31k, coop
/// ≈ 53k, defer ≈ 57k requests/s (BENCHMARKS.md). Older kernels refuse the flags with EINVAL,
/// hence the chain. Public for `benches/floor.rs`, which must run on the same ring set-up.
pub fn uring_runtime() -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut defer = io_uring::IoUring::builder();
    defer.setup_single_issuer().setup_defer_taskrun();
    let mut coop = io_uring::IoUring::builder();
    coop.setup_coop_taskrun().setup_taskrun_flag();
    let mut last = None;
    for ring in [defer, coop, io_uring::IoUring::builder()] {
        match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .uring_builder(ring)
            .enable_timer()
            .build()
        {
            Ok(rt) => return Ok(rt),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no io_uring set-up worked")))
}

/// One worker's state. Lives on its thread only (`Rc`, `Cell`, `RefCell`: no atomics, no locks).
struct Worker {
    index: usize,
    shared: Arc<Shared>,
    cache: RefCell<Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>>,
    current: RefCell<Rc<Held>>,
    pool: RefCell<pool::Pool>,
    /// Request buffers of connections that wait for their next request.
    bufs: bufs::BufPool,
    /// Shared HTTP/2 connections to gRPC endpoints.
    h2_pool: RefCell<h2_pool::H2Pool>,
    /// Round-robin position per backend name; kept across table swaps.
    balancer: RefCell<balance::Balancer>,
    limits: RefCell<limits::Limiter>,
    /// Basic-auth credentials checked good (hashes of header value and user list): bcrypt is
    /// slow on purpose, so each is checked once per worker. Bounded; cleared when full.
    auth_ok: RefCell<std::collections::HashSet<u64>>,
    /// What this worker's RequestMirror copies hold, and their counters.
    mirrors: Rc<mirror::Budget>,
    /// This worker's metrics, and its handles on each backend's counters (by name).
    metrics: Arc<crate::metrics::WorkerMetrics>,
    /// By backend, then host.
    backend_metrics: RefCell<FxHashMap<Box<str>, ByHost>>,
    rng: Cell<u64>,
    active: Cell<usize>,
    /// Open connections per client address (after PROXY protocol), for
    /// `[client] max_connections_per_client`; only addresses with one open are kept.
    per_client: RefCell<FxHashMap<std::net::IpAddr, u32>>,
    /// Set once shutdown begins; a worker-local copy of the cross-thread signal so that the
    /// per-request checks and idle waits touch no shared memory.
    stopping: Stopping,
}

/// A worker-local, fire-once signal that any number of tasks can wait for. Every keep-alive
/// connection waits for it between requests: a waiter takes a slot (reused through a free
/// list: no hashing, no allocation once the table has grown to the worker's connections) and
/// gives it back when its wait ends.
#[derive(Default)]
struct Stopping {
    fired: Cell<bool>,
    /// The waiters' wakers by slot; `None`: a free slot (listed in `free`).
    waiters: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Stopping {
    fn is_set(&self) -> bool {
        self.fired.get()
    }

    fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.waiters.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once [`Stopping::fire`] has been called.
    fn wait(&self) -> StopWait<'_> {
        StopWait { stop: self, key: None }
    }
}

struct StopWait<'a> {
    stop: &'a Stopping,
    key: Option<usize>,
}

impl std::future::Future for StopWait<'_> {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let stop = self.stop;
        if stop.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = stop.waiters.borrow_mut();
        match self.key {
            Some(k) => match &mut waiters[k] {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let k = match stop.free.borrow_mut().pop() {
                    Some(k) => {
                        waiters[k] = Some(cx.waker().clone());
                        k
                    }
                    None => {
                        waiters.push(Some(cx.waker().clone()));
                        waiters.len() - 1
                    }
                };
                drop(waiters);
                self.key = Some(k);
            }
        }
        Poll::Pending
    }
}

impl Drop for StopWait<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            // The waker is dropped after the table is released.
            let waker = self.stop.waiters.borrow_mut().get_mut(k).and_then(Option::take);
            self.stop.free.borrow_mut().push(k);
            drop(waker);
        }
    }
}

impl Worker {
    /// The current snapshot. Checking for a new one is one atomic load; the handle is a
    /// worker-local `Rc`, so holding it across a request costs no shared reference count.
    fn snapshot(&self) -> Rc<Held> {
        let mut cache = self.cache.borrow_mut();
        let latest = cache.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(latest, &current.0) {
            *current = Rc::new(Held(Arc::clone(latest)));
        }
        Rc::clone(&current)
    }

    /// Next round-robin start index for backend `name` with `n` endpoints.
    /// This worker's counters of backend `name` for rule host `host` (registered the first
    /// time the pair is met).
    fn backend_metrics(&self, name: &str, host: &str) -> Arc<crate::metrics::BackendMetrics> {
        if let Some(m) = self.backend_metrics.borrow().get(name).and_then(|h| h.get(host)) {
            return Arc::clone(m);
        }
        let m = self.metrics.register(name, host);
        self.backend_metrics
            .borrow_mut()
            .entry(name.into())
            .or_default()
            .insert(host.into(), Arc::clone(&m));
        m
    }

    /// A random number (xorshift64*, the request ids' generator; for draws, not secrets).
    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 128 random bits as 32 hex digits, for request ids (xorshift64*: not cryptographic, only
    /// unique enough to trace a request through logs).
    fn request_id(&self, out: &mut [u8; 32]) {
        for half in out.chunks_exact_mut(16) {
            let mut x = self.rng.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng.set(x);
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            // Two digits per byte, the low nibble's first (as one digit per nibble, lowest
            // first, wrote them).
            for (i, pair) in half.chunks_exact_mut(2).enumerate() {
                pair.copy_from_slice(&HEX_PAIRS[((v >> (i * 8)) & 0xff) as usize]);
            }
        }
    }
}

/// Each byte's two lowercase hex digits, the low nibble's first.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i & 0xf], HEX[i >> 4]];
        i += 1;
    }
    table
};

async fn worker_main(index: usize, listeners: Vec<listener::Bound>, shared: Arc<Shared>, grace: Duration) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        ^ ((index as u64 + 1) << 56)
        | 1;
    let current = Rc::new(Held(shared.snapshot.load_full()));
    let my_metrics = shared.metrics.get(index).cloned().unwrap_or_default();
    let worker = Rc::new(Worker {
        index,
        cache: RefCell::new(Cache::new(Arc::clone(&shared.snapshot))),
        shared,
        current: RefCell::new(current),
        pool: RefCell::new(pool::Pool::default()),
        bufs: bufs::BufPool::default(),
        h2_pool: RefCell::new(h2_pool::H2Pool::default()),
        balancer: RefCell::new(balance::Balancer::new(index)),
        limits: RefCell::new(limits::Limiter::default()),
        auth_ok: RefCell::new(std::collections::HashSet::new()),
        mirrors: Rc::new(mirror::Budget::new(Arc::clone(&my_metrics))),
        metrics: my_metrics,
        backend_metrics: RefCell::new(FxHashMap::default()),
        rng: Cell::new(seed),
        active: Cell::new(0),
        per_client: RefCell::new(FxHashMap::default()),
        stopping: Stopping::default(),
    });
    let mut shutdown = worker.shared.shutdown.subscribe();

    for l in listeners {
        match monoio::net::TcpListener::from_std(l.socket) {
            Ok(socket) => {
                monoio::spawn(accept::accept_loop(Rc::clone(&worker), socket, l.spec));
            }
            Err(e) => tracing::error!(worker = index, error = %e, "cannot register listener"),
        }
    }
    monoio::spawn(sweep_loop(Rc::clone(&worker)));
    // Fault injection for the watchdog test, in debug builds only: this worker's loop blocks
    // (as a stuck worker's would) for a while, a few seconds after start.
    #[cfg(debug_assertions)]
    if std::env::var("KEDGE_TEST_STALL_WORKER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(index)
    {
        monoio::spawn(async {
            monoio::time::sleep(Duration::from_secs(3)).await;
            std::thread::sleep(Duration::from_secs(6));
        });
    }
    if let Some(heart) = worker.shared.hearts.get(index + 1).cloned() {
        // A worker whose loop is stuck stops beating (and systemd's watchdog notices).
        monoio::spawn(async move {
            loop {
                heart.beat();
                monoio::time::sleep(crate::notify::BEAT).await;
            }
        });
    }

    // Run until shutdown is signalled, then drain: accept loops stop by themselves; in-flight
    // requests finish and connections close once idle, up to the grace period.
    let _ = shutdown.wait_for(|&s| s).await;
    worker.stopping.fire();
    let deadline = Instant::now() + grace;
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if worker.active.get() > 0 {
        tracing::warn!(
            worker = index,
            connections = worker.active.get(),
            "grace period over; closing"
        );
    }
    worker.pool.borrow_mut().clear();
    worker.h2_pool.borrow_mut().clear();
}

async fn sweep_loop(worker: Rc<Worker>) {
    loop {
        monoio::time::sleep(Duration::from_secs(5)).await;
        let (idle, max_idle) = {
            let snap = worker.snapshot();
            (snap.upstream.idle_timeout, snap.upstream.max_idle_per_endpoint)
        };
        worker.pool.borrow_mut().sweep(idle, max_idle);
        worker.h2_pool.borrow_mut().sweep(idle);
        worker.balancer.borrow_mut().sweep(Instant::now());
        worker.limits.borrow_mut().sweep(Instant::now());
    }
}

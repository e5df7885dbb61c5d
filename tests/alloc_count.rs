//! Heap allocations per keep-alive HTTP/1.1 request on kedge's worker thread: none.
//!
//! A counting global allocator counts what threads named `kedge-worker-*` allocate. A real
//! worker runs in this process (started through the library as `process::run` starts it, with
//! a static route and no control thread), on each driver the kernel allows; a raw upstream on
//! its own thread answers every request with a fixed response, and a client on the test thread
//! sends plain keep-alive requests over one connection and reads each response before sending
//! the next. After a warm-up, `N` requests must leave the worker's count where it was: the
//! request path (read head, view, decide, forward on a pooled upstream connection, respond,
//! park buffers) allocates nothing. A `String`, a `Vec` or a `format!` per request makes it fail.
//!
//! The allocations the worker makes for the connection itself (task, buffers at accept) happen
//! during the warm-up. Only the worker thread is counted: the client, the upstream and the test
//! harness allocate as they please.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use arc_swap::ArcSwap;
use kedge::config::Driver;
use kedge::shared::{HttpsSettings, Shared, Snapshot};
use kedge::worker::{self, listener::Bound};

struct Counting;

/// Allocations (and reallocations) made by worker threads since the start.
static WORKER_ALLOCS: AtomicU64 = AtomicU64::new(0);
/// While set (and `ALLOC_COUNT_TRACE` is in the environment), each counted allocation prints
/// its backtrace: how to find the one a failure reports.
static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn counted(layout: Layout) {
    WORKER_ALLOCS.fetch_add(1, Ordering::Relaxed);
    if TRACE.load(Ordering::Relaxed) {
        // What the trace allocates is not counted: the thread is "other" meanwhile.
        let _ = KIND.try_with(|k| k.set(2));
        eprintln!(
            "worker allocation of {} bytes:\n{}",
            layout.size(),
            std::backtrace::Backtrace::force_capture()
        );
        let _ = KIND.try_with(|k| k.set(1));
    }
}

thread_local! {
    /// 0: not known yet; 1: a kedge worker thread; 2: any other thread.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn on_worker() -> bool {
    KIND.try_with(|k| match k.get() {
        0 => {
            // Decided once per thread; what the check itself allocates counts as "other".
            k.set(2);
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("kedge-worker-"));
            k.set(if worker { 1 } else { 2 });
            worker
        }
        v => v == 1,
    })
    .unwrap_or(false)
}

// SAFETY: every call goes straight to the system allocator; counting touches no heap.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            counted(layout);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_worker() {
            counted(layout);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_worker() {
            counted(layout);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BODY: &[u8] = b"hello from upstream\n";

/// A raw HTTP/1.1 upstream: every request head (no bodies here) gets the same 200 response, on
/// every connection it accepts, until the test process ends.
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = l.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            std::thread::spawn(move || {
                let mut w = c.try_clone().expect("clone");
                let mut r = BufReader::new(c);
                let _ = w.set_nodelay(true);
                // One write per response (head and body): with two, Nagle's algorithm would
                // hold the second until the first is acknowledged.
                let mut resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                    BODY.len()
                )
                .into_bytes();
                resp.extend_from_slice(BODY);
                let mut line = String::new();
                loop {
                    // One head: lines until the empty one.
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if w.write_all(&resp).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Starts one kedge worker on `driver` in this process with a static route to `upstream`;
/// returns the address it listens on and the shared state (to stop it).
fn start_worker(driver: Driver, upstream: SocketAddr) -> (SocketAddr, Arc<Shared>) {
    let text = format!(
        "[proxy]\nworkers = 1\n[log]\naccess_log = false\nlevel = \"warn\"\n[admin]\nenabled = false\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/\"\nupstreams = [\"{upstream}\"]\n"
    );
    let cfg = kedge::config::parse(std::path::Path::new("alloc_count.toml"), &text).expect("config");
    let (table, warnings) = kedge::control::translate::static_routes::build(&cfg.routes);
    assert!(warnings.is_empty(), "{warnings:?}");
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(Snapshot {
            table,
            client: cfg.client.clone(),
            upstream: cfg.upstream.clone(),
            http2: cfg.http2.clone(),
            access_log: false,
            tls: None,
            gateway_tls: Vec::new(),
            https: HttpsSettings::default(),
        })),
        shutdown: tokio::sync::watch::channel(false).0,
        hearts: vec![Arc::default(), Arc::default()],
        metrics: Arc::new(vec![Arc::default()]),
    });
    let spec = cfg.process.listeners[0].clone();
    let socket = worker::listener::bind(spec.address, 1).expect("bind").remove(0);
    let addr = socket.local_addr().expect("listener address");
    let (tx, rx) = mpsc::channel();
    worker::spawn(
        0,
        None,
        vec![Bound { spec, socket }],
        Arc::clone(&shared),
        driver,
        Duration::from_secs(1),
        tx,
    )
    .expect("spawn worker");
    rx.recv().expect("worker start").expect("worker runtime");
    (addr, shared)
}

/// Sends one keep-alive GET and reads its whole response (Content-Length framed).
fn request(c: &mut BufReader<TcpStream>, line: &mut String) {
    c.get_mut()
        .write_all(
            b"GET /items?id=7 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: alloc-count\r\nAccept: */*\r\n\r\n",
        )
        .expect("send request");
    let mut len = None;
    let mut status = None;
    loop {
        line.clear();
        assert!(
            c.read_line(line).expect("read response") > 0,
            "kedge closed the connection"
        );
        if status.is_none() {
            status = Some(line.split(' ').nth(1).unwrap_or_default().to_owned());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = Some(v.trim().parse::<usize>().expect("content-length"));
        }
    }
    assert_eq!(status.as_deref(), Some("200"), "status line");
    let mut body = vec![0; len.expect("a Content-Length")];
    c.read_exact(&mut body).expect("read body");
    assert_eq!(body, BODY);
}

/// Worker allocations over `n` requests on one connection, after `warm` requests.
fn allocs_over(addr: SocketAddr, warm: usize, n: usize) -> u64 {
    let c = TcpStream::connect(addr).expect("connect to kedge");
    c.set_nodelay(true).expect("nodelay");
    let mut c = BufReader::new(c);
    let mut line = String::new();
    for _ in 0..warm {
        request(&mut c, &mut line);
    }
    let before = WORKER_ALLOCS.load(Ordering::Relaxed);
    TRACE.store(std::env::var_os("ALLOC_COUNT_TRACE").is_some(), Ordering::Relaxed);
    for _ in 0..n {
        request(&mut c, &mut line);
    }
    // The request after the window: once its response is here, the worker has finished every
    // request of the window (log included), so their allocations are all counted.
    request(&mut c, &mut line);
    TRACE.store(false, Ordering::Relaxed);
    WORKER_ALLOCS.load(Ordering::Relaxed) - before
}

#[test]
fn a_keep_alive_request_allocates_nothing_on_the_worker() {
    let up = upstream();
    let mut drivers = vec![Driver::Epoll];
    if monoio::utils::detect_uring() {
        drivers.push(Driver::IoUring);
    }
    for driver in drivers {
        let (addr, shared) = start_worker(driver, up);
        // The counter does count the worker: accepting and serving a new connection allocates.
        let first = allocs_over(addr, 0, 0);
        assert!(first > 0, "{driver:?}: the worker's allocations are not being counted");
        let n = 2000;
        let allocs = allocs_over(addr, 200, n);
        // One request after the window is counted too (see allocs_over): 0 over n + 1.
        assert_eq!(
            allocs,
            0,
            "{driver:?}: the worker allocated {allocs} times over {n} keep-alive requests \
             ({:.3} per request)",
            allocs as f64 / n as f64
        );
        let _ = shared.shutdown.send(true);
    }
}

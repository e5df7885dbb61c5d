//! The floor: the cheapest forwarder on kedge's runtime, for `benches/proxy.sh --targets floor`.
//!
//!   cargo bench --bench floor -- --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//!                                [--driver auto|io_uring|epoll] [--cores 0,1,...]
//!                                [--mode turns|duplex]
//!
//! One monoio thread per listed core (default: one, on core 0), pinned there as kedge pins its
//! workers, each with its own SO_REUSEPORT listener and the ring set-up kedge's workers use
//! (`kedge::worker::uring_runtime`: io_uring with DEFER_TASKRUN where the kernel has it, epoll
//! otherwise or with `--driver epoll`). Each accepted client
//! gets one upstream connection, opened at accept and kept for the client's life; bytes are
//! copied with no HTTP parsing, no routing and no headers added, in one of two modes:
//!
//! - `turns` (the default): one task per client, one 16 KiB buffer, in turns: read the client,
//!   write all of it upstream, read the upstream, write all of it to the client, again. These
//!   are the four operations per keep-alive request an HTTP/1.1 proxy cannot do without, in the
//!   order it does them, and only one read is pending at a time. It assumes what
//!   `proxy.sh`'s load gives it: each request arrives in one read and its whole answer in one
//!   read (small heads and bodies on loopback, one request in flight per connection). A
//!   response that came in two reads would leave the rest unread until the client's next
//!   request, which never comes: the run would show it as wrk timeouts.
//! - `duplex`: each direction is a task looping on one read into a 16 KiB buffer and one write
//!   of all it read; correct for any traffic, but both reads are always pending, so each
//!   request costs two poll arms where `turns` often costs fewer, and it is not the cheapest.
//!
//! Any HTTP proxy does at least the work of `turns` per keep-alive request, so its req/s and
//! CPU per request bound what kedge, nginx or HAProxy can reach on the same machine under the
//! same load.
//!
//! Prints `floor ready on ADDR (DRIVER)` once it accepts; runs until killed.

use std::net::SocketAddr;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

const BUF: usize = 16 * 1024;

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    driver: String,
    cores: Vec<usize>,
    turns: bool,
}

fn args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut driver, mut cores) = (None, None, "auto".to_owned(), vec![0]);
    let mut turns = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(val()?.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--driver" => driver = val()?,
            "--mode" => {
                turns = match val()?.as_str() {
                    "turns" => true,
                    "duplex" => false,
                    m => return Err(format!("--mode {m}: expected turns or duplex")),
                }
            }
            "--cores" => {
                cores = val()?
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|e| format!("--cores: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if !matches!(driver.as_str(), "auto" | "io_uring" | "epoll") {
        return Err(format!("--driver {driver}: expected auto, io_uring or epoll"));
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required")?,
        upstream: upstream.ok_or("--upstream ADDR is required")?,
        driver,
        cores,
        turns,
    })
}

/// Copies `src` to `dst` until `src` ends or either side fails, then shuts `dst`'s write side.
async fn copy(mut src: impl AsyncReadRent, mut dst: impl AsyncWriteRent) {
    let mut buf = Vec::with_capacity(BUF);
    loop {
        let (res, b) = src.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let (res, b) = dst.write_all(buf).await;
        buf = b;
        if res.is_err() {
            break;
        }
        buf.clear();
    }
    let _ = dst.shutdown().await;
}

/// Moves one message from `src` to `dst`: one read, one write of all it read. `false` when
/// `src` ended or either side failed.
async fn relay(src: &mut TcpStream, dst: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let (res, b) = src.read(std::mem::take(buf)).await;
    *buf = b;
    if !matches!(res, Ok(n) if n > 0) {
        return false;
    }
    let (res, b) = dst.write_all(std::mem::take(buf)).await;
    *buf = b;
    res.is_ok()
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, turns: bool) {
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    if turns {
        let mut buf = Vec::with_capacity(BUF);
        while relay(&mut client, &mut up, &mut buf).await && relay(&mut up, &mut client, &mut buf).await {}
        return;
    }
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    monoio::spawn(copy(ur, cw));
    copy(cr, uw).await;
}

async fn run(listener: TcpListener, upstream: SocketAddr, turns: bool) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                monoio::spawn(serve(client, upstream, turns));
            }
            Err(e) => eprintln!("floor: accept: {e}"),
        }
    }
}

/// One thread: pinned to `core`, its own listener on `listen` (SO_REUSEPORT, as kedge's), the
/// runtime kedge's worker would get with `driver`. Reports its driver (or why it has none) once
/// it listens.
fn thread(a: &Args, core: usize, ready: std::sync::mpsc::Sender<Result<&'static str, String>>) {
    if let Err(e) = monoio::utils::bind_to_cpu_set([core]) {
        eprintln!("floor: cannot pin to core {core}: {e}");
    }
    let listen = |driver| {
        let opts = monoio::net::ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(4096);
        match TcpListener::bind_with_config(a.listen, &opts) {
            Ok(l) => {
                let _ = ready.send(Ok(driver));
                Some(l)
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {}: {e}", a.listen)));
                None
            }
        }
    };
    let uring = match a.driver.as_str() {
        "epoll" => false,
        "io_uring" => true,
        _ => monoio::utils::detect_uring(),
    };
    if uring {
        match kedge::worker::uring_runtime() {
            Ok(mut rt) => {
                return rt.block_on(async {
                    if let Some(l) = listen("io_uring") {
                        run(l, a.upstream, a.turns).await;
                    }
                });
            }
            Err(e) if a.driver == "io_uring" => {
                let _ = ready.send(Err(format!("io_uring runtime: {e}")));
                return;
            }
            Err(e) => eprintln!("floor: io_uring is unavailable ({e}); using epoll"),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(async {
            if let Some(l) = listen("epoll") {
                run(l, a.upstream, a.turns).await;
            }
        }),
        Err(e) => {
            let _ = ready.send(Err(format!("epoll runtime: {e}")));
        }
    }
}

fn main() {
    let a = match args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(2);
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let threads: Vec<_> = a
        .cores
        .iter()
        .map(|&core| {
            let (a, tx) = (std::sync::Arc::clone(&a), tx.clone());
            std::thread::spawn(move || thread(&a, core, tx))
        })
        .collect();
    drop(tx);
    let mut driver = "";
    for _ in &threads {
        match rx.recv() {
            Ok(Ok(d)) => driver = d,
            Ok(Err(e)) => {
                eprintln!("floor: {e}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("floor: a thread exited during start-up");
                std::process::exit(1);
            }
        }
    }
    let mode = if a.turns { "turns" } else { "duplex" };
    println!(
        "floor ready on {} ({driver}, {mode}, {} thread(s))",
        a.listen,
        threads.len()
    );
    for t in threads {
        let _ = t.join();
    }
}

//! The floor: the cheapest forwarder on kedge's runtime, for `benches/proxy.sh --targets floor`.
//!
//!   cargo bench --bench floor -- --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//!                                [--driver auto|io_uring|epoll] [--cores 0,1,...]
//!
//! One monoio thread per listed core (default: one, on core 0), pinned there as kedge pins its
//! workers, each with its own SO_REUSEPORT listener and the ring set-up kedge's workers use
//! (`kedge::worker::uring_runtime`: io_uring with DEFER_TASKRUN where the kernel has it, epoll
//! otherwise or with `--driver epoll`). Each accepted client
//! gets one upstream connection, opened at accept and kept for the client's life; bytes are
//! copied both ways with no HTTP parsing, no routing and no headers added: each direction is a
//! loop of one read into a 16 KiB buffer and one write of all it read. Any HTTP proxy does at
//! least this much work per keep-alive request, so its req/s and CPU per request bound what
//! kedge, nginx or HAProxy can reach on the same machine under the same load.
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
}

fn args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut driver, mut cores) = (None, None, "auto".to_owned(), vec![0]);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(val()?.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(val()?.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--driver" => driver = val()?,
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

async fn serve(client: TcpStream, upstream: SocketAddr) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    monoio::spawn(copy(ur, cw));
    copy(cr, uw).await;
}

async fn run(listener: TcpListener, upstream: SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                monoio::spawn(serve(client, upstream));
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
                        run(l, a.upstream).await;
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
                run(l, a.upstream).await;
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
    println!("floor ready on {} ({driver}, {} thread(s))", a.listen, threads.len());
    for t in threads {
        let _ = t.join();
    }
}

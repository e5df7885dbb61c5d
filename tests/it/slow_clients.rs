//! Hostile clients: thousands of slowloris connections (a header byte every second) and slow
//! readers do not starve anyone else, and kedge's memory stays bounded while they are open; a
//! per-client connection limit closes what is over it and leaves other clients alone.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{Client, Handler, Kedge, Upstream, both_drivers, route_all, wait_until};

/// Slow connections held open at once.
const SLOW: usize = 4000;

/// GET `path` for `host` on `c` without panicking: the response, or why there is none.
fn try_get(c: &mut Client, host: &str, path: &str) -> std::io::Result<crate::support::Response> {
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    c.try_read_response(false)
}

/// A client socket from 127.0.0.`last`, so that tests can be several clients.
fn connect_from(last: u8, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())?;
    s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

both_drivers!(
    /// 4,000 connections that send a request head a byte at a time, a byte a second, and 50 that
    /// ask for a large body and never read it: meanwhile, at least 99.9 % of normal requests
    /// succeed, and kedge's peak RSS stays under 256 MB. The slow heads are cut at
    /// `header_timeout` (408 or close), the slow readers at `body_timeout`.
    fn slowloris_and_slow_readers_do_not_starve_normal_clients(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let big = Upstream::start("big", Handler::Stream(8 << 20));
        let frag = format!(
            "[client]\nheader_timeout = \"6s\"\nbody_timeout = \"6s\"\n\n\
             [[route]]\npath = \"/big\"\nupstreams = [\"{}\"]\n\n{}",
            big.addr(),
            route_all(&[up.addr()])
        );
        let kedge = Kedge::setup(driver).workers(2).start(&frag);
        let addr = kedge.addr();

        // The slow readers: ask for 8 MiB, read nothing.
        let mut readers = Vec::new();
        for _ in 0..50 {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /big HTTP/1.1\r\nHost: slow.test\r\n\r\n").expect("write");
            readers.push(s);
        }
        // The slowloris connections: a request line started, then a byte a second.
        let mut slow = Vec::with_capacity(SLOW);
        for i in 0..SLOW {
            let mut s = connect_from(2 + (i % 200) as u8, addr).unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: slow.test\r\nX-Drip: ").expect("write");
            s.set_nonblocking(true).expect("nonblocking");
            slow.push(s);
        }
        let started = Instant::now();
        let mut last_drip = Instant::now();

        // Normal clients meanwhile, on fresh connections and keep-alive ones, until the slow
        // heads have been cut.
        let (mut ok, mut failed) = (0usize, Vec::new());
        let mut keep = Client::connect(addr);
        while started.elapsed() < Duration::from_secs(8) {
            if last_drip.elapsed() >= Duration::from_secs(1) {
                // One byte on each slow connection (those kedge closed refuse it: fine).
                for s in &mut slow {
                    let _ = s.write(b"a");
                }
                last_drip = Instant::now();
            }
            for fresh in [true, false] {
                let r = if fresh {
                    Client::try_connect(addr).and_then(|mut c| try_get(&mut c, "normal.test", "/n"))
                } else {
                    let r = try_get(&mut keep, "normal.test", "/k");
                    if r.is_err() {
                        // Counted as a failure; go on with a new keep-alive connection.
                        keep = Client::connect(addr);
                    }
                    r
                };
                match r {
                    Ok(resp) if resp.status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
        }
        let total = ok + failed.len();
        assert!(total >= 200, "too few normal requests to judge: {total}");
        assert!(
            failed.len() * 1000 <= total,
            "{} of {total} normal requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        let rss = kedge.peak_rss();
        assert!(rss < 256 << 20, "peak RSS {} MB with {SLOW} slow connections", rss >> 20);

        // The slow heads were cut by the header timeout: a slow connection reads an answer or
        // EOF, not silence.
        for s in slow.iter_mut().step_by(400) {
            s.set_nonblocking(false).expect("blocking");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).unwrap_or(0);
            assert!(n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&buf[..n]));
        }
        drop(readers);
    }
);

both_drivers!(
    /// With `max_connections_per_client = 3` (one worker): a client's fourth open connection is
    /// closed at once and counted, its first three are served, another client is not affected,
    /// and a place frees when a connection ends.
    fn the_per_client_connection_limit_closes_only_what_is_over_it(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .workers(1)
            .start(&format!("[client]\nmax_connections_per_client = 3\n\n{}", route_all(&[up.addr()])));
        let addr = kedge.addr();
        let mut held: Vec<Client> = (0..3)
            .map(|_| Client::over(connect_from(5, addr).expect("connect")).expect("client"))
            .collect();
        for c in &mut held {
            assert_eq!(c.get("limit.test", "/").status, 200);
        }
        // The fourth from the same address: closed without an answer.
        let mut fourth = connect_from(5, addr).expect("connect");
        fourth
            .write_all(b"GET / HTTP/1.1\r\nHost: limit.test\r\n\r\n")
            .ok();
        fourth.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 64];
        assert!(matches!(fourth.read(&mut buf), Ok(0) | Err(_)), "the fourth connection was served");
        // Another client is served.
        assert_eq!(Client::over(connect_from(6, addr).expect("connect")).expect("client").get("limit.test", "/").status, 200);
        // The refusal is counted.
        let metrics = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
        assert!(
            metrics.lines().any(|l| l == "kedge_client_connection_limit_refusals_total 1"),
            "{}",
            metrics.lines().filter(|l| l.contains("limit")).collect::<Vec<_>>().join("\n")
        );
        // One ends; the client may open another.
        drop(held.pop());
        wait_until(Duration::from_secs(5), "a place to free up for the client", || {
            connect_from(5, addr)
                .ok()
                .and_then(|s| Client::over(s).ok())
                .is_some_and(|mut c| try_get(&mut c, "limit.test", "/").is_ok_and(|r| r.status == 200))
        });
    }
);

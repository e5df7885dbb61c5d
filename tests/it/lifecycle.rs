//! The process lifecycle: SIGHUP reloads routes under traffic without a failed request (and a
//! broken file keeps the old routes), SIGTERM drains in-flight requests and exits 0.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Client, Handler, Kedge, Signal, Upstream, both_drivers, route_all, wait_until};

const SECOND: Duration = Duration::from_secs(1);

fn route(path: &str, upstream: SocketAddr) -> String {
    format!("[[route]]\npath = \"{path}\"\nupstreams = [\"{upstream}\"]\n\n")
}

/// Client threads sending `GET /r` until stopped, recording every failure and who answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    from_b: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(addr: SocketAddr, threads: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let from_b = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, sent, from_b, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&sent),
                    Arc::clone(&from_b),
                    Arc::clone(&failures),
                );
                std::thread::spawn(move || {
                    let mut client = None;
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        // Mostly keep-alive; every 10th request on a new connection.
                        if i.is_multiple_of(10) {
                            client = None;
                        }
                        let c = match &mut client {
                            Some(c) => c,
                            None => match Client::try_connect(addr) {
                                Ok(c) => client.insert(c),
                                Err(e) => {
                                    failures.lock().expect("lock").push(format!("thread {t}: connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        let result = c
                            .try_send(b"GET /r HTTP/1.1\r\nHost: reload.test\r\n\r\n")
                            .and_then(|()| c.try_read_response(false));
                        sent.fetch_add(1, Ordering::SeqCst);
                        match result {
                            Ok(r) if r.status == 200 => {
                                if r.upstream() == Some("B") {
                                    from_b.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Ok(r) => {
                                failures
                                    .lock()
                                    .expect("lock")
                                    .push(format!("thread {t}: status {}", r.status));
                                client = None;
                            }
                            Err(e) => {
                                failures.lock().expect("lock").push(format!("thread {t}: {e}"));
                                client = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            sent,
            from_b,
            failures,
            threads,
        }
    }

    /// Stops the threads and returns the failures they saw.
    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("traffic thread");
        }
        self.failures.lock().expect("lock").clone()
    }
}

both_drivers!(
    fn reload_under_traffic_loses_nothing(driver) {
        let a = Upstream::start("A", Handler::Echo);
        let b = Upstream::start("B", Handler::Echo);
        let kedge = Kedge::setup(driver).workers(2).start(&route("/r", a.addr()));
        assert_eq!(Client::connect(kedge.addr()).get("reload.test", "/new").status, 404);

        let traffic = Traffic::start(kedge.addr(), 3);
        wait_until(10 * SECOND, "traffic before the reload", || traffic.sent.load(Ordering::SeqCst) >= 60);
        kedge.rewrite_config(&format!("{}{}", route("/r", b.addr()), route("/new", b.addr())));
        kedge.signal(Signal::Hup);
        kedge.wait_log("configuration reloaded", 10 * SECOND);

        // The new table is live for every request that starts after the log line.
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("reload.test", "/new");
        assert_eq!((resp.status, resp.upstream()), (200, Some("B")), "the new route does not answer");
        assert_eq!(c.get("reload.test", "/r").upstream(), Some("B"), "the changed route still goes to A");
        let after = traffic.sent.load(Ordering::SeqCst);
        wait_until(10 * SECOND, "traffic after the reload", || traffic.sent.load(Ordering::SeqCst) >= after + 60);
        wait_until(10 * SECOND, "traffic to reach B", || traffic.from_b.load(Ordering::SeqCst) > 0);
        let failures = traffic.finish();
        assert!(failures.is_empty(), "{} failed requests across the reload: {failures:?}", failures.len());
        assert!(a.request_count() > 0 && b.request_count() > 0);
    }
);

both_drivers!(
    fn broken_file_on_reload_keeps_the_old_routes(driver) {
        let a = Upstream::start("A", Handler::Echo);
        let kedge = Kedge::start(driver, &route("/r", a.addr()));
        kedge.rewrite_config(&format!("{}[client]\nheader_timeout = \"soon\"\n", route("/other", a.addr())));
        kedge.signal(Signal::Hup);
        let line = kedge.wait_log("reload failed", 10 * SECOND);
        assert!(line.contains("kedge.toml:"), "the error does not say where: {line}");
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("reload.test", "/r");
        assert_eq!((resp.status, resp.upstream()), (200, Some("A")), "the old route stopped serving");
        assert_eq!(c.get("reload.test", "/other").status, 404, "half of the broken file was applied");
        assert!(!kedge.logs().iter().any(|l| l.contains("configuration reloaded")));
    }
);

both_drivers!(
    fn sigterm_drains_in_flight_requests_and_exits_zero(driver) {
        let slow = Upstream::start("slow", Handler::Delay(SECOND));
        let fast = Upstream::start("fast", Handler::Echo);
        let config = format!("{}{}", route("/", slow.addr()), route("/warm", fast.addr()));
        let mut kedge = Kedge::setup(driver).proxy("shutdown_grace = \"10s\"").start(&config);
        let addr = kedge.addr();

        // An idle keep-alive connection, and a request in flight.
        let mut idle = Client::connect(addr);
        assert_eq!(idle.get("drain.test", "/warm").status, 200);
        let in_flight = std::thread::spawn(move || Client::connect(addr).get("drain.test", "/slow"));
        wait_until(5 * SECOND, "the slow request to reach the upstream", || slow.request_count() == 1);

        kedge.signal(Signal::Term);
        kedge.wait_log("shutting down", 5 * SECOND);
        wait_until(5 * SECOND, "new connections to be refused", || TcpStream::connect(addr).is_err());
        assert!(idle.is_closed(), "an idle connection was kept open while draining");

        let resp = in_flight.join().expect("in-flight client");
        assert_eq!(resp.status, 200, "the in-flight request was cut: {resp:?}");
        assert!(resp.text().contains("uri=/slow\n"));
        assert!(resp.header_has_token("connection", "close"), "{:?}", resp.headers);

        let status = kedge.wait_exit(10 * SECOND);
        assert!(status.success(), "kedge exited with {status} after SIGTERM");
    }
);

both_drivers!(
    fn grace_period_over_closes_what_is_left(driver) {
        let stuck = Upstream::start("stuck", Handler::Delay(60 * SECOND));
        let mut kedge = Kedge::setup(driver).proxy("shutdown_grace = \"300ms\"").start(&route_all(&[stuck.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /stuck HTTP/1.1\r\nHost: drain.test\r\n\r\n");
        wait_until(5 * SECOND, "the request to reach the upstream", || stuck.request_count() == 1);
        kedge.signal(Signal::Term);
        let status = kedge.wait_exit(10 * SECOND);
        assert!(status.success(), "kedge exited with {status} after SIGTERM");
        assert!(c.try_read_response(false).is_err(), "a response came from nowhere");
    }
);

both_drivers!(
    fn the_port_is_free_the_moment_kedge_has_exited(driver) {
        // `systemctl restart` starts the next kedge as soon as this one has exited: the port
        // must be free by then. Under io_uring the kernel tears a ring down after its process
        // has gone; a listener with an accept still in the ring went on completing handshakes
        // (reset later), and a kedge started at once could not bind, for up to ~15 ms. It
        // showed when kedge had no connection of its own left to close at the stop (clients
        // that connected and said nothing wait in the kernel, not in kedge): about one stop in
        // two, so twenty rounds.
        let config = "[admin]\nenabled = false\n";
        for round in 0..20 {
            let mut kedge = Kedge::start(driver, config);
            let addr = kedge.addr();
            let _silent: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).expect("connect")).collect();
            kedge.signal(Signal::Term);
            let status = kedge.wait_exit_closely(10 * SECOND);
            assert!(status.success(), "round {round}: kedge exited with {status}");
            let connected = TcpStream::connect(addr);
            assert!(connected.is_err(), "round {round}: {addr} still took a connection after kedge exited");
            let bound = std::net::TcpListener::bind(addr);
            assert!(bound.is_ok(), "round {round}: {addr} could not be bound after kedge exited: {bound:?}");
        }
    }
);

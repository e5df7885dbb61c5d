//! Persistent connections: many requests on one client connection and one upstream connection,
//! pooled upstream connections shared by clients in turn (and dropped when the upstream said
//! close or they grew old), HTTP/1.0 clients, `Connection: close`, pipelined requests answered
//! in order, concurrent clients on two workers.

use std::time::Duration;

use crate::support::body::fill;
use crate::support::{Client, Handler, Kedge, RawBehavior, RawUpstream, Upstream, both_drivers, route_all, wait_until};

both_drivers!(
    fn hundred_requests_one_connection_each_side(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        for i in 0..100 {
            let resp = c.get("ka.test", &format!("/req/{i}"));
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
            assert!(!resp.header_has_token("connection", "close"), "request {i} closes: {:?}", resp.headers);
            assert!(resp.text().contains(&format!("uri=/req/{i}\n")), "request {i}: {}", resp.text());
        }
        assert_eq!(up.request_count(), 100);
        assert_eq!(up.connections(), 1, "kedge opened more than one upstream connection for one client connection");
    }
);

both_drivers!(
    fn clients_in_turn_reuse_the_pooled_upstream_connection(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        for i in 1..=3 {
            let mut c = Client::connect(kedge.addr());
            assert_eq!(c.get("pool.test", "/").status, 200);
            drop(c);
            // The access line is written once the request is done, upstream connection pooled.
            kedge.wait_logs("kedge::access", i, Duration::from_secs(5));
        }
        assert_eq!(up.request_count(), 3);
        assert_eq!(up.connections(), 1, "the pooled upstream connection was not reused");
    }
);

both_drivers!(
    fn client_connection_close_is_honoured(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: close.test\r\nConnection: close\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert!(resp.header_has_token("connection", "close"), "{:?}", resp.headers);
        assert!(c.is_closed(), "kedge kept the connection open after Connection: close");
        // The upstream connection stays pooled: the client's close is hop-by-hop.
        let resp = Client::connect(kedge.addr()).get("close.test", "/again");
        assert_eq!(resp.status, 200);
        assert_eq!(up.connections(), 1);
    }
);

/// Segments the socket has received so far (`tcpi_segs_in` of `TCP_INFO`).
#[allow(unsafe_code)]
fn segments_in(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // struct tcp_info up to tcpi_segs_in: 8 bytes of u8 fields, 24 u32, 4 u64, segs_out, segs_in.
    const SEGS_IN: usize = 8 + 24 * 4 + 4 * 8 + 4;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: the fd is `s`'s, open for this call; `info` and `len` live through it and `len` is
    // `info`'s size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= SEGS_IN + 4,
        "TCP_INFO too short ({len} bytes) for tcpi_segs_in"
    );
    u32::from_ne_bytes(info[SEGS_IN..SEGS_IN + 4].try_into().unwrap())
}

/// Sends `request` on a new connection, reads until kedge closes, and returns what came and
/// how many segments brought it.
pub(crate) fn exchange(kedge: std::net::SocketAddr, request: &str) -> (String, u32) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(kedge).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    (String::from_utf8(got).unwrap(), segments_in(&s))
}

both_drivers!(
    /// The last answer to a client that asked to close leaves in one segment with kedge's FIN
    /// (TCP_CORK until the close), so the client wakes once for both; for HTTP/1.0 too. A
    /// request with a body is answered without holding (bytes of it may be left unread, and the
    /// close would then reset the connection, held bytes and all): its answer and the FIN come
    /// in two segments, one more. A pipelined request after `Connection: close` is not answered,
    /// and the answer before it comes whole.
    fn the_last_answer_leaves_with_the_fin(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let post = "POST /body HTTP/1.1\r\nHost: fin.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
        let (answer, unheld) = exchange(kedge.addr(), post);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("uri=/body\n"), "{answer}");
        let close = "GET /close HTTP/1.1\r\nHost: fin.test\r\nConnection: close\r\n\r\n";
        let (answer, with_fin) = exchange(kedge.addr(), close);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("uri=/close\n"), "{answer}");
        assert_eq!(
            with_fin,
            unheld - 1,
            "segments to the client: {with_fin} for a GET, {unheld} for a POST (its FIN alone)"
        );
        let (answer, http10) = exchange(kedge.addr(), "GET /old HTTP/1.0\r\nHost: fin.test\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("uri=/old\n"), "{answer}");
        assert_eq!(http10, with_fin, "HTTP/1.0: {http10} segments, against {with_fin} for Connection: close");

        let pipelined = format!("{close}GET /next HTTP/1.1\r\nHost: fin.test\r\n\r\n");
        let (answer, _) = exchange(kedge.addr(), &pipelined);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("uri=/close\n"), "{answer}");
        assert!(!answer.contains("uri=/next"), "answered a request after Connection: close: {answer}");
    }
);

/// Sends `first` on a new connection and reads until kedge's FIN; then sends `rest` (bytes a
/// client still had on their way when kedge closed) and, a moment later, takes the socket's
/// pending error. Returns the answer and that error: none when kedge closed gently (it read and
/// dropped `rest`); a reset when the bytes met a closed socket (Linux reports it as `EPIPE` on
/// a socket that has had the FIN). A reset can destroy an answer the client has not read yet
/// (RFC 9112 §9.6); Linux keeps it readable, so the error is what the test can see.
pub(crate) fn answer_then_more(
    kedge: std::net::SocketAddr,
    first: &str,
    rest: &str,
) -> (String, Option<std::io::Error>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(kedge).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(first.as_bytes()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    s.write_all(rest.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    (String::from_utf8(got).unwrap(), s.take_error().unwrap())
}

both_drivers!(
    /// A client whose next request is on its way when kedge closes after an answer (here: the
    /// rest of a request pipelined after `Connection: close`, sent once the answer is in) meets
    /// a gentle close: kedge shuts its side, reads and drops what still comes, and the client
    /// sees the end of the connection, not a reset.
    fn a_close_with_a_request_on_its_way_is_gentle(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let first = "GET /close HTTP/1.1\r\nHost: linger.test\r\nConnection: close\r\n\r\nGET /next HTTP/1.1\r\nHo";
        let (answer, reset) = answer_then_more(kedge.addr(), first, "st: linger.test\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("uri=/close\n"), "{answer}");
        assert!(!answer.contains("uri=/next"), "answered a request after Connection: close: {answer}");
        assert!(reset.is_none(), "the rest of the request was answered with a reset: {reset:?}");
        assert_eq!(up.request_count(), 1);
    }
);

/// kedge's open client connections: its sockets whose local end is `listen`, the listener
/// itself (state `0A`, LISTEN) left out.
fn client_sockets(pid: u32, listen: std::net::SocketAddr) -> usize {
    let want = crate::support::proc_net_addr(listen);
    crate::support::tcp_sockets(pid)
        .iter()
        .filter(|s| s.local == want && s.state != "0A")
        .count()
}

both_drivers!(
    /// Every client connection kedge ends is closed: those answered with `Connection: close`
    /// (every operation finished) and those whose head did not come in time (a read left
    /// unfinished when the socket is dropped). None stays open, and the worker serves on.
    fn client_connections_kedge_ends_leave_no_socket_open(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let config = format!("[client]\nheader_timeout = \"300ms\"\n\n{}", route_all(&[up.addr()]));
        let kedge = Kedge::start(driver, &config);
        for i in 0..20 {
            let mut c = Client::connect(kedge.addr());
            c.send(format!("GET /{i} HTTP/1.1\r\nHost: close.test\r\nConnection: close\r\n\r\n").as_bytes());
            assert_eq!(c.read_response().status, 200);
            assert!(c.is_closed(), "request {i}: the connection stayed open");
        }
        for i in 0..3 {
            let mut c = Client::connect(kedge.addr());
            c.send(b"GET / HTTP/1.1\r\nHost: slow.test\r\n");
            assert_eq!(c.read_response().status, 408);
            assert!(c.is_closed(), "slow client {i}: the connection stayed open");
        }
        wait_until(Duration::from_secs(5), "no client connection left open", || {
            client_sockets(kedge.pid(), kedge.addr()) == 0
        });
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("close.test", "/after").status, 200);
        assert_eq!(client_sockets(kedge.pid(), kedge.addr()), 1, "the open connection is counted");
    }
);

both_drivers!(
    fn http10_closes_unless_asked_to_keep_alive(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));

        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /plain HTTP/1.0\r\nHost: old.test\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        assert!(resp.text().contains("uri=/plain\n"), "{}", resp.text());
        assert!(c.is_closed(), "an HTTP/1.0 connection without keep-alive stayed open");

        let mut c = Client::connect(kedge.addr());
        for path in ["/ka/1", "/ka/2"] {
            c.send(format!("GET {path} HTTP/1.0\r\nHost: old.test\r\nConnection: keep-alive\r\n\r\n").as_bytes());
            let resp = c.read_response();
            assert_eq!(resp.status, 200, "{path}");
            assert!(resp.text().contains(&format!("uri={path}\n")), "{}", resp.text());
            assert!(
                resp.header_has_token("connection", "keep-alive"),
                "an HTTP/1.0 client is not told the connection persists: {:?}",
                resp.headers
            );
        }
    }
);

both_drivers!(
    fn http10_request_without_host_uses_the_any_host_route(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /nohost HTTP/1.0\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(up.requests()[0].uri, "/nohost");
    }
);

both_drivers!(
    fn pipelined_requests_are_answered_in_order(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(
            b"GET /one HTTP/1.1\r\nHost: p.test\r\n\r\n\
              POST /two HTTP/1.1\r\nHost: p.test\r\nContent-Length: 5\r\n\r\nhello\
              GET /three HTTP/1.1\r\nHost: p.test\r\n\r\n",
        );
        for (path, len) in [("/one", 0), ("/two", 5), ("/three", 0)] {
            let resp = c.read_response();
            assert_eq!(resp.status, 200, "{path}: {}", resp.text());
            let text = resp.text();
            assert!(text.contains(&format!("uri={path}\n")), "expected {path}, got:\n{text}");
            assert!(text.contains(&format!("body_len={len}\n")), "{path}:\n{text}");
        }
        let seen = up.requests();
        assert_eq!(seen.iter().map(|s| s.uri.as_str()).collect::<Vec<_>>(), ["/one", "/two", "/three"]);
        assert_eq!(up.connections(), 1);
    }
);

both_drivers!(
    fn fifty_pipelined_requests_with_bodies_in_one_write(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        let mut all = Vec::new();
        let mut expected = Vec::new();
        for i in 0..50 {
            let body = fill(i * 1000, (i as usize * 37) % 700);
            match i % 3 {
                0 => {
                    all.extend_from_slice(format!("GET /g{i} HTTP/1.1\r\nHost: p.test\r\n\r\n").as_bytes());
                    expected.push((format!("/g{i}"), 0));
                }
                1 => {
                    let head = format!("POST /l{i} HTTP/1.1\r\nHost: p.test\r\nContent-Length: {}\r\n\r\n", body.len());
                    all.extend_from_slice(head.as_bytes());
                    all.extend_from_slice(&body);
                    expected.push((format!("/l{i}"), body.len()));
                }
                _ => {
                    let head = format!("POST /c{i} HTTP/1.1\r\nHost: p.test\r\nTransfer-Encoding: chunked\r\n\r\n");
                    all.extend_from_slice(head.as_bytes());
                    for piece in body.chunks(100) {
                        all.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                        all.extend_from_slice(piece);
                        all.extend_from_slice(b"\r\n");
                    }
                    all.extend_from_slice(b"0\r\n\r\n");
                    expected.push((format!("/c{i}"), body.len()));
                }
            }
        }
        c.send(&all);
        for (path, len) in &expected {
            let resp = c.read_response();
            let text = resp.text();
            assert_eq!(resp.status, 200, "{path}: {text}");
            assert!(text.contains(&format!("uri={path}\nhost=p.test\nbody_len={len}\n")), "expected {path}:\n{text}");
        }
        assert_eq!(up.request_count(), 50);
    }
);

both_drivers!(
    fn concurrent_clients_on_two_workers(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver).workers(2).start(&route_all(&[up.addr()]));
        let addr = kedge.addr();
        let clients: Vec<_> = (0..16)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    for i in 0..25 {
                        let resp = c.get("many.test", &format!("/{t}/{i}"));
                        assert_eq!(resp.status, 200, "client {t} request {i}");
                        assert!(resp.text().contains(&format!("uri=/{t}/{i}\n")), "client {t} got another's answer");
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client thread");
        }
        assert_eq!(up.request_count(), 16 * 25);
    }
);

both_drivers!(
    fn upstream_connections_that_say_close_are_not_reused(driver) {
        // The upstream keeps the socket open after saying it will not take another request:
        // reusing it would leave the next request unanswered.
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"[..],
            &b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
        ] {
            let shown = String::from_utf8_lossy(reply);
            let up = RawUpstream::start(RawBehavior::ReplyThenStall(reply.to_vec()));
            let config = format!("[upstream]\nread_timeout = \"2s\"\n\n{}", route_all(&[up.addr()]));
            let kedge = Kedge::start(driver, &config);
            let mut c = Client::connect(kedge.addr());
            for i in 0..2 {
                let resp = c.get("close.test", "/");
                assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]), "request {i} after {shown:?}");
            }
            assert_eq!(up.connections(), 2, "reused after {shown:?}");
        }
    }
);

both_drivers!(
    fn a_bursts_connections_wait_in_the_pool_beyond_max_idle(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let config = format!("[upstream]\nmax_idle_per_endpoint = 1\n\n{}", route_all(&[up.addr()]));
        let kedge = Kedge::start(driver, &config);
        // Two bursts of four requests, each burst held at the upstream at once (the bodies not
        // sent yet), so each needs four upstream connections.
        for burst in 1..=2 {
            let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(kedge.addr())).collect();
            for c in &mut clients {
                c.send(b"POST /burst HTTP/1.1\r\nHost: burst.test\r\nContent-Length: 2\r\n\r\n");
            }
            wait_until(Duration::from_secs(5), "four requests at the upstream", || up.in_flight().0 == 4);
            for c in &mut clients {
                c.send(b"ok");
                assert_eq!(c.read_response().status, 200, "burst {burst}");
            }
            // The access line is written once the upstream connection is back in the pool.
            kedge.wait_logs("kedge::access", 4 * burst, Duration::from_secs(5));
        }
        // The pool's sweep (every 5 s) trims to max_idle only connections parked for a second
        // or more, so one falling between the bursts, milliseconds apart, closes none of them.
        assert_eq!(up.connections(), 4, "the first burst's connections beyond max_idle were closed, not reused");
    }
);

both_drivers!(
    fn pooled_connections_expire_after_idle_timeout(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let config = format!("[upstream]\nidle_timeout = \"200ms\"\n\n{}", route_all(&[up.addr()]));
        let kedge = Kedge::start(driver, &config);
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("idle.test", "/1").status, 200);
        // The scenario, not synchronisation: the pooled connection must sit idle for longer than
        // idle_timeout (nothing to observe meanwhile; the upstream's connection count tells after).
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.get("idle.test", "/2").status, 200);
        assert_eq!(up.connections(), 2, "a pooled connection older than idle_timeout was reused");
    }
);

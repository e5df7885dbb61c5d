//! Upstreams that fail: refused connects (502, or the next endpoint), an upstream that never
//! answers (504), keep-alive connections the upstream closes (a GET goes through anyway, a POST
//! is never sent twice), and bodies the upstream cuts short, which must reach the client cut
//! (or, broken before anything went out, become a 502).

use std::time::Duration;

use crate::support::h2_client::H2;
use crate::support::{
    Client, Handler, Kedge, RawBehavior, RawUpstream, Upstream, both_drivers, refused_addr, route_all, wait_until,
};

both_drivers!(
    fn refused_upstream_is_502(driver) {
        let kedge = Kedge::start(driver, &route_all(&[refused_addr()]));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("down.test", "/");
        assert_eq!(resp.status, 502, "{resp:?}");
        assert!(!resp.text().trim().is_empty(), "a 502 should say what happened");
        c.assert_connection_as_announced(&resp, "down.test");
    }
);

both_drivers!(
    fn refused_endpoint_is_skipped_for_the_other(driver) {
        let up = Upstream::start("alive", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[refused_addr(), up.addr()]));
        for i in 0..10 {
            // A new client connection each time, so no request rides on a pooled connection.
            let resp = Client::connect(kedge.addr()).get("half.test", &format!("/{i}"));
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
            assert_eq!(resp.upstream(), Some("alive"));
        }
        let mut c = Client::connect(kedge.addr());
        for i in 0..10 {
            assert_eq!(c.get("half.test", &format!("/ka/{i}")).status, 200, "keep-alive request {i}");
        }
        assert_eq!(up.request_count(), 20);
    }
);

both_drivers!(
    fn silent_upstream_is_504(driver) {
        let up = RawUpstream::start(RawBehavior::Silent);
        let config = format!("[upstream]\nread_timeout = \"300ms\"\n\n{}", route_all(&[up.addr()]));
        let kedge = Kedge::start(driver, &config);
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("slow.test", "/");
        assert_eq!(resp.status, 504, "{resp:?}");
        c.assert_connection_as_announced(&resp, "slow.test");
        assert_eq!(up.request_lines().first().map(String::as_str), Some("GET / HTTP/1.1"));
    }
);

both_drivers!(
    fn get_after_the_upstream_closed_an_idle_connection_succeeds(driver) {
        let up = RawUpstream::start(RawBehavior::AnswerOnce { close_when_idle: true });
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("idle.test", "/1").status, 200);
        wait_until(Duration::from_secs(5), "the upstream to close its connection", || up.closed() == 1);
        let resp = c.get("idle.test", "/2");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body, b"first");
        assert_eq!(up.connections(), 2);
    }
);

both_drivers!(
    fn get_is_retried_when_a_pooled_connection_dies_unanswered(driver) {
        let up = RawUpstream::start(RawBehavior::AnswerOnce { close_when_idle: false });
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("retry.test", "/1").status, 200);
        // The pooled connection takes /2 and closes unanswered; kedge sends it again.
        let resp = c.get("retry.test", "/2");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(up.request_lines(), ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /2 HTTP/1.1"]);
        assert_eq!(up.connections(), 2);
    }
);

both_drivers!(
    fn post_is_never_sent_twice(driver) {
        let up = RawUpstream::start(RawBehavior::AnswerOnce { close_when_idle: false });
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("post.test", "/1").status, 200);
        c.send(b"POST /form HTTP/1.1\r\nHost: post.test\r\nContent-Length: 3\r\n\r\nabc");
        let resp = c.read_response();
        assert_eq!(resp.status, 502, "{resp:?}");
        let posts = up.request_lines().iter().filter(|l| l.starts_with("POST")).count();
        assert_eq!(posts, 1, "a POST was sent to the upstream more than once: {:?}", up.request_lines());
    }
);

/// Sends `GET /` through kedge to `up` and expects a response head whose body can then not be
/// read whole: kedge must cut the client off rather than end the body as if it were complete.
fn assert_cut_short(driver: crate::support::Driver, up: &RawUpstream) {
    let config = format!("[upstream]\nread_timeout = \"300ms\"\n\n{}", route_all(&[up.addr()]));
    let kedge = Kedge::start(driver, &config);
    let mut c = Client::connect(kedge.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: cut.test\r\n\r\n");
    let read = c.try_read_response(false);
    assert!(
        read.is_err(),
        "a truncated upstream body reached the client as a complete one: {read:?}"
    );
}

both_drivers!(
    fn upstream_closing_inside_a_length_body_cuts_the_client_off(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly twenty bytes...".to_vec(),
        ));
        assert_cut_short(driver, &up);
    }
);

both_drivers!(
    fn upstream_closing_inside_a_chunked_body_cuts_the_client_off(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        ));
        assert_cut_short(driver, &up);
    }
);

both_drivers!(
    fn chunked_body_broken_in_what_came_with_the_head_is_502(driver) {
        // Nothing of the answer has gone to the client when kedge sees the bad chunk line, so
        // the client gets a 502 saying so, over HTTP/1.1 and HTTP/2, not a head and a cut.
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        ));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("bad.test", "/");
        assert_eq!(resp.status, 502, "{resp:?}");
        assert_eq!(resp.text(), "upstream sent an invalid response\n");
        assert_eq!(c.get("bad.test", "/again").status, 502, "the client's connection goes on");
        let h = H2::connect(kedge.addr());
        let r = h.get("bad.test", "/");
        assert_eq!(r.status, 502, "{r:?}");
        assert!(r.body_error.is_none(), "{r:?}");
    }
);

both_drivers!(
    fn upstream_stalling_inside_a_close_delimited_body_cuts_the_client_off(driver) {
        // Re-chunked for the client: a timeout must not be turned into a last chunk.
        let up = RawUpstream::start(RawBehavior::ReplyThenStall(b"HTTP/1.1 200 OK\r\n\r\npartial".to_vec()));
        assert_cut_short(driver, &up);
    }
);

both_drivers!(
    fn upstream_stalling_inside_a_chunked_body_cuts_the_client_off(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenStall(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n".to_vec(),
        ));
        assert_cut_short(driver, &up);
    }
);

both_drivers!(
    fn connect_timeout_is_504_and_moves_to_the_next_endpoint(driver) {
        let (hole, _fillers, _listener) = crate::support::blackhole_addr();
        let config = format!("[upstream]\nconnect_timeout = \"300ms\"\n\n{}", route_all(&[hole]));
        let kedge = Kedge::start(driver, &config);
        let resp = Client::connect(kedge.addr()).get("hole.test", "/");
        assert_eq!(resp.status, 504, "{resp:?}");
        assert!(resp.text().contains("connect timed out"), "{}", resp.text());

        let up = Upstream::start("alive", Handler::Echo);
        let config = format!("[upstream]\nconnect_timeout = \"300ms\"\n\n{}", route_all(&[hole, up.addr()]));
        let kedge = Kedge::start(driver, &config);
        for i in 0..4 {
            let resp = Client::connect(kedge.addr()).get("hole.test", &format!("/{i}"));
            assert_eq!(resp.status, 200, "request {i}: {}", resp.text());
            assert_eq!(resp.upstream(), Some("alive"));
        }
    }
);

/// kedge's sockets whose remote end is `remote`.
fn sockets_to(pid: u32, remote: std::net::SocketAddr) -> usize {
    let want = crate::support::proc_net_addr(remote);
    crate::support::tcp_sockets(pid)
        .iter()
        .filter(|s| s.remote == want)
        .count()
}

both_drivers!(
    /// A parked upstream connection whose upstream went away (a pod stopped) is closed by the
    /// worker's sweep within seconds, not held in CLOSE-WAIT until the idle timeout (60 s).
    fn pooled_connections_to_a_stopped_upstream_are_closed_by_the_sweep(driver) {
        let up = Upstream::start("gone", Handler::Echo);
        let addr = up.addr();
        let kedge = Kedge::start(driver, &route_all(&[addr]));
        {
            let mut c = Client::connect(kedge.addr());
            assert_eq!(c.get("gone.test", "/").status, 200);
        }
        wait_until(Duration::from_secs(5), "a pooled connection to the upstream", || {
            sockets_to(kedge.pid(), addr) == 1
        });
        drop(up);
        // The sweep runs every 5 s and checks connections parked for more than a second.
        wait_until(Duration::from_secs(15), "the dead pooled connection closed", || {
            sockets_to(kedge.pid(), addr) == 0
        });
    }
);

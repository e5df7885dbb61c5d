//! `Expect: 100-continue`: the go-ahead before the body, and the body limit checked before it
//! (413 without a 100 and without waiting for the body).

use crate::support::body::{fill, hash};
use crate::support::{Client, Handler, Kedge, Upstream, both_drivers};

fn limited(upstream: std::net::SocketAddr) -> String {
    format!("[[route]]\nupstreams = [\"{upstream}\"]\nmax_body = \"1k\"\n")
}

both_drivers!(
    fn continue_then_body(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &limited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST /e HTTP/1.1\r\nHost: e.test\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n");
        let interim = c.read_response();
        assert_eq!(interim.status, 100, "expected 100 Continue before sending the body, got {interim:?}");
        assert_eq!(interim.version, "HTTP/1.1");
        c.send(&fill(0, 1000));
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        let seen = &up.requests()[0];
        assert_eq!(seen.body_len, 1000);
        assert_eq!(seen.body_hash, hash(&fill(0, 1000)));
        // One 100 only: the next thing on the connection is the next answer.
        assert_eq!(c.get("e.test", "/next").status, 200);
    }
);

both_drivers!(
    fn over_the_limit_is_413_without_continue(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &limited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST /e HTTP/1.1\r\nHost: e.test\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n");
        // No body is sent: kedge must answer from the head alone.
        let resp = c.read_response();
        assert_eq!(resp.status, 413, "{resp:?}");
        assert!(resp.header_has_token("connection", "close"), "{:?}", resp.headers);
        assert!(c.is_closed());
        assert_eq!(up.connections(), 0, "the upstream was contacted for a request over the limit");
    }
);

both_drivers!(
    fn chunked_body_over_the_limit_is_413(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &limited(up.addr()));
        let mut c = Client::connect(kedge.addr());
        let mut req = b"POST /e HTTP/1.1\r\nHost: e.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for i in 0..4 {
            req.extend_from_slice(b"200\r\n");
            req.extend_from_slice(&fill(i * 512, 512));
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        c.send(&req);
        let resp = c.read_response();
        assert_eq!(resp.status, 413, "{resp:?}");
        assert!(c.is_closed());
        assert!(up.requests().iter().all(|s| s.body_len <= 1024), "the upstream got more than the limit");
    }
);

//! Request limits and malformed requests: 414, 431, 413 (with the body already on its way, and
//! per route), 400 for ambiguous framing, 501 for codings kedge does not speak. Each answer is a
//! canned one (`text/plain`, a line saying why) and the upstream never sees the request.

use crate::support::body::fill;
use crate::support::{Client, Handler, Kedge, Upstream, both_drivers};

/// Sends `request` to a kedge with small limits and checks the answer's status and shape.
fn refused(driver: crate::support::Driver, request: &[u8], status: u16) {
    let up = Upstream::start("up", Handler::Echo);
    let config = format!(
        "[client]\nmax_request_line = 256\nmax_header_bytes = 1024\nmax_headers = 10\nmax_body = \"1k\"\n\n\
         [[route]]\nupstreams = [\"{}\"]\n",
        up.addr()
    );
    let kedge = Kedge::start(driver, &config);
    let mut c = Client::connect(kedge.addr());
    c.send(request);
    let resp = c.read_response();
    assert_eq!(resp.status, status, "{resp:?}");
    assert!(
        resp.header("content-type").is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        resp.headers
    );
    assert!(!resp.text().trim().is_empty(), "a {status} should say why");
    assert!(resp.header_has_token("connection", "close"), "{:?}", resp.headers);
    assert!(c.is_closed());
    assert_eq!(up.connections(), 0, "a refused request reached the upstream");
}

both_drivers!(
    fn long_request_line_is_414(driver) {
        let req = format!("GET /{} HTTP/1.1\r\nHost: l.test\r\n\r\n", "a".repeat(300));
        refused(driver, req.as_bytes(), 414);
    }
);

both_drivers!(
    fn large_head_is_431(driver) {
        let req = format!("GET / HTTP/1.1\r\nHost: l.test\r\nX-Big: {}\r\n\r\n", "b".repeat(2000));
        refused(driver, req.as_bytes(), 431);
    }
);

both_drivers!(
    fn too_many_headers_is_431(driver) {
        let mut req = String::from("GET / HTTP/1.1\r\nHost: l.test\r\n");
        for i in 0..20 {
            req.push_str(&format!("X-H{i}: v\r\n"));
        }
        req.push_str("\r\n");
        refused(driver, req.as_bytes(), 431);
    }
);

both_drivers!(
    fn body_over_the_limit_is_413_even_while_it_arrives(driver) {
        // The whole body is sent at once: kedge's answer must survive it (no reset).
        let mut req = b"POST / HTTP/1.1\r\nHost: l.test\r\nContent-Length: 65536\r\n\r\n".to_vec();
        req.extend_from_slice(&fill(0, 65536));
        refused(driver, &req, 413);
    }
);

both_drivers!(
    fn length_and_chunked_together_is_400(driver) {
        let req = b"POST / HTTP/1.1\r\nHost: l.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
                    0\r\n\r\n";
        refused(driver, req, 400);
    }
);

both_drivers!(
    fn unknown_transfer_coding_is_501(driver) {
        let req = b"POST / HTTP/1.1\r\nHost: l.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        refused(driver, req, 501);
    }
);

both_drivers!(
    fn missing_host_on_http11_is_400(driver) {
        refused(driver, b"GET / HTTP/1.1\r\n\r\n", 400);
    }
);

both_drivers!(
    fn route_max_body_overrides_the_default(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let config = format!(
            "[client]\nmax_body = \"1k\"\n\n[[route]]\npath = \"/big\"\nmax_body = \"64k\"\nupstreams = [\"{0}\"]\n\n\
             [[route]]\nupstreams = [\"{0}\"]\n",
            up.addr()
        );
        let kedge = Kedge::start(driver, &config);
        let post = |path: &str| {
            let mut c = Client::connect(kedge.addr());
            c.send(format!("POST {path} HTTP/1.1\r\nHost: l.test\r\nContent-Length: 10000\r\n\r\n").as_bytes());
            c.send(&fill(0, 10_000));
            c.read_response().status
        };
        assert_eq!(post("/big"), 200, "the route's larger limit was not applied");
        assert_eq!(post("/small"), 413, "the default limit was not applied");
        assert_eq!(up.requests()[0].body_len, 10_000);
    }
);

both_drivers!(
    fn bare_line_feeds_are_400(driver) {
        refused(driver, b"GET / HTTP/1.1\nHost: l.test\n\n", 400);
    }
);

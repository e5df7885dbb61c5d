//! Request headers on the way to the upstream: X-Forwarded-For/Proto/Host/Port, X-Real-IP and
//! X-Request-ID set by kedge, Host and end-to-end headers kept, hop-by-hop headers dropped (and
//! dropped from responses too).

use crate::support::{Client, Handler, Kedge, RawBehavior, RawUpstream, Seen, Upstream, both_drivers, route_all};

/// Sends `head` (a full request head) through a fresh kedge and returns what the upstream saw.
fn through(driver: crate::support::Driver, head: &str) -> (Seen, u16) {
    let up = Upstream::start("up", Handler::Echo);
    let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
    let mut c = Client::connect(kedge.addr());
    c.send(head.as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let mut seen = up.requests();
    assert_eq!(seen.len(), 1);
    (seen.remove(0), kedge.addr().port())
}

fn is_request_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

both_drivers!(
    fn forwarded_headers_are_set(driver) {
        let (seen, port) = through(
            driver,
            "GET /h HTTP/1.1\r\nHost: front.test\r\nX-Forwarded-For: 10.0.0.1\r\n\
             X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\n\r\n",
        );
        assert_eq!(seen.header_all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"], "{:?}", seen.headers);
        // What kedge itself knows replaces what the client claims.
        assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"], "{:?}", seen.headers);
        assert_eq!(seen.header_all("x-forwarded-proto"), ["http"], "{:?}", seen.headers);
        assert_eq!(seen.header_all("x-forwarded-port"), [port.to_string()], "{:?}", seen.headers);
        assert_eq!(seen.header_all("x-forwarded-host"), ["front.test"], "{:?}", seen.headers);
        assert!(seen.header("x-request-id").is_some_and(is_request_id), "{:?}", seen.headers);
    }
);

both_drivers!(
    fn forwarded_for_is_created_when_absent(driver) {
        let (seen, _) = through(driver, "GET / HTTP/1.1\r\nHost: front.test\r\n\r\n");
        assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"], "{:?}", seen.headers);
    }
);

both_drivers!(
    fn host_is_preserved(driver) {
        let (seen, _) = through(driver, "GET / HTTP/1.1\r\nHost: Front.Test:8443\r\n\r\n");
        assert_eq!(seen.header_all("host"), ["Front.Test:8443"], "{:?}", seen.headers);
        assert!(
            seen.header("x-forwarded-host").is_some_and(|h| h.eq_ignore_ascii_case("front.test:8443")),
            "{:?}",
            seen.headers
        );
    }
);

both_drivers!(
    fn request_id_is_kept_or_generated(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /given HTTP/1.1\r\nHost: id.test\r\nX-Request-ID: trace-123\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        assert_eq!(c.get("id.test", "/new1").status, 200);
        assert_eq!(c.get("id.test", "/new2").status, 200);
        let seen = up.requests();
        assert_eq!(seen[0].header_all("x-request-id"), ["trace-123"], "{:?}", seen[0].headers);
        let (a, b) = (seen[1].header("x-request-id"), seen[2].header("x-request-id"));
        assert!(a.is_some_and(is_request_id), "{:?}", seen[1].headers);
        assert!(b.is_some_and(is_request_id), "{:?}", seen[2].headers);
        assert_ne!(a, b, "two requests got the same id");
    }
);

both_drivers!(
    fn hop_by_hop_headers_are_dropped(driver) {
        let (seen, _) = through(
            driver,
            "GET /hop HTTP/1.1\r\nHost: hop.test\r\nConnection: keep-alive, X-Secret-Hop\r\n\
             Keep-Alive: timeout=5\r\nX-Secret-Hop: 1\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
             X-End-To-End: yes\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n",
        );
        for name in ["keep-alive", "x-secret-hop", "te", "proxy-connection"] {
            assert_eq!(seen.header(name), None, "{name} reached the upstream: {:?}", seen.headers);
        }
        for value in seen.header_all("connection") {
            assert!(!value.to_ascii_lowercase().contains("x-secret-hop"), "client's Connection forwarded: {value}");
        }
        assert_eq!(seen.header_all("x-end-to-end"), ["yes"]);
        assert_eq!(seen.header_all("x-multi"), ["a", "b"], "repeated headers lost or reordered");
    }
);

both_drivers!(
    fn hop_by_hop_response_headers_are_dropped(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nX-Kept: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok"
                .to_vec(),
        ));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("hop.test", "/");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"ok");
        for name in ["x-hop", "keep-alive"] {
            assert!(!resp.has_header(name), "{name} reached the client: {:?}", resp.headers);
        }
        assert!(!resp.header_has_token("connection", "x-hop"), "{:?}", resp.headers);
        assert_eq!(resp.header("x-kept"), Some("yes"));
        let cookies: Vec<&str> =
            resp.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie")).map(|(_, v)| v.as_str()).collect();
        assert_eq!(cookies, ["a=1", "b=2"], "repeated response headers lost or merged");
    }
);

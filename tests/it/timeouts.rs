//! Client-side timeouts: a request head that does not arrive in time (408), a body that stalls
//! (408), a new connection that says nothing, an idle keep-alive connection.

use crate::support::{Client, Handler, Kedge, Upstream, both_drivers, route_all};

fn with_client(settings: &str, upstream: std::net::SocketAddr) -> String {
    format!("[client]\n{settings}\n\n{}", route_all(&[upstream]))
}

both_drivers!(
    fn partial_head_is_408_and_close(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &with_client("header_timeout = \"300ms\"", up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET / HTTP/1.1\r\nHost: slow.test\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 408, "{resp:?}");
        assert!(resp.header_has_token("connection", "close"), "{:?}", resp.headers);
        assert!(c.is_closed());
        assert_eq!(up.connections(), 0);
    }
);

both_drivers!(
    fn silent_new_connection_is_closed_without_an_answer(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &with_client("header_timeout = \"300ms\"", up.addr()));
        let mut c = Client::connect(kedge.addr());
        assert!(c.is_closed(), "a connection that sent nothing was not closed (or got bytes)");
    }
);

both_drivers!(
    fn stalled_body_is_408(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &with_client("body_timeout = \"300ms\"", up.addr()));
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST / HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100\r\n\r\n0123456789");
        let resp = c.read_response();
        assert_eq!(resp.status, 408, "{resp:?}");
        assert!(c.is_closed());
    }
);

both_drivers!(
    fn idle_keepalive_connection_is_closed(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &with_client("keepalive_timeout = \"300ms\"", up.addr()));
        let mut c = Client::connect(kedge.addr());
        assert_eq!(c.get("idle.test", "/").status, 200);
        assert!(c.is_closed(), "an idle keep-alive connection outlived keepalive_timeout");
    }
);

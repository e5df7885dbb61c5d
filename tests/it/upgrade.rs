//! Protocol upgrades: a WebSocket-style 101 from the upstream turns the connection into a
//! tunnel that carries bytes both ways (early ones included); a declined upgrade stays HTTP; a
//! 101 nobody asked for is refused.

use crate::support::body::fill;
use crate::support::{Client, Handler, Kedge, RawBehavior, RawUpstream, Upstream, both_drivers, route_all, wait_until};

const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

both_drivers!(
    fn websocket_upgrade_echoes_both_ways(driver) {
        let up = Upstream::start("ws", Handler::WebSocket);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(UPGRADE_REQUEST);
        let resp = c.read_response();
        assert_eq!(resp.status, 101, "{resp:?}");
        assert!(resp.header_has_token("upgrade", "websocket"), "{:?}", resp.headers);
        assert!(resp.header_has_token("connection", "upgrade"), "{:?}", resp.headers);

        let seen = &up.requests()[0];
        assert_eq!(seen.header("upgrade"), Some("websocket"), "Upgrade not forwarded: {:?}", seen.headers);
        assert!(
            seen.header("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
            "Connection: upgrade not forwarded: {:?}",
            seen.headers
        );
        assert_eq!(seen.header("sec-websocket-key"), Some("dGhlIHNhbXBsZSBub25jZQ=="));

        c.send(b"hello");
        assert_eq!(c.read_exact_raw(5), b"hello");
        let big = fill(7, 300_000);
        c.send(&big);
        assert!(c.read_exact_raw(big.len()) == big, "tunnelled bytes changed");
        // Closing our side ends the tunnel: the upstream echoes EOF back.
        c.shutdown_write();
        assert!(c.is_closed(), "the tunnel stayed open after both sides finished");
    }
);

both_drivers!(
    fn unrequested_switching_protocols_is_a_502(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(SWITCH.to_vec()));
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let resp = Client::connect(kedge.addr()).get("ws.test", "/plain");
        assert_eq!(resp.status, 502, "{resp:?}");
    }
);

both_drivers!(
    fn bytes_right_behind_the_upgrade_request_are_not_lost(driver) {
        let up = Upstream::start("ws", Handler::WebSocket);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        let mut first = UPGRADE_REQUEST.to_vec();
        first.extend_from_slice(b"early bytes");
        c.send(&first);
        assert_eq!(c.read_response().status, 101);
        assert_eq!(c.read_exact_raw(11), b"early bytes");
        c.send(b"later");
        assert_eq!(c.read_exact_raw(5), b"later");
    }
);

both_drivers!(
    fn declined_upgrade_stays_plain_http(driver) {
        // An upstream that ignores the Upgrade header answers an ordinary 200.
        let up = Upstream::start("plain", Handler::Echo);
        let kedge = Kedge::start(driver, &route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(UPGRADE_REQUEST);
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{resp:?}");
        assert!(resp.text().contains("uri=/ws\n"));
        c.assert_connection_as_announced(&resp, "ws.test");
    }
);

both_drivers!(
    /// A tunnel ends once no byte has passed either way for the route's upstream read timeout,
    /// as nginx ends an upgraded connection after `proxy_read_timeout`: bytes one way keep it
    /// open (this upstream takes what comes and sends nothing), and when they stop kedge closes
    /// it and counts it (`kedge_tunnels_idle_closed_total`). A client's half-close is passed
    /// on: an upstream that then closes ends the tunnel (not counted as idle); one that keeps
    /// its side open, silent, leaves a half-closed tunnel that ends when idle, instead of
    /// holding both sockets for ever.
    fn an_idle_tunnel_closes_after_the_read_timeout(driver) {
        use std::time::{Duration, Instant};
        let (_up, kedge) = tunnelling_kedge(driver, RawBehavior::ReplyThenStall(SWITCH.to_vec()));
        let mut c = upgraded(&kedge);
        // Three timeouts' worth of a byte every 100 ms toward the upstream.
        for _ in 0..12 {
            c.send(b"x");
            std::thread::sleep(Duration::from_millis(100));
        }
        let quiet = Instant::now();
        assert!(c.closed_within(Duration::from_secs(5)), "the idle tunnel stayed open");
        let after = quiet.elapsed();
        assert!(after >= Duration::from_millis(250), "closed {after:?} after the last byte, before the 400 ms timeout");
        wait_until(Duration::from_secs(5), "the idle close counted", || idle_closed(&kedge) == 1);

        let mut c = upgraded(&kedge);
        c.shutdown_write();
        assert!(c.closed_within(Duration::from_secs(5)), "the half-closed tunnel stayed open");
        assert_eq!(idle_closed(&kedge), 1, "a tunnel its upstream closed was counted as idle");

        // A half-closed tunnel whose upstream keeps its side open, silent: idle, so it ends.
        let (_holder, kedge) = tunnelling_kedge(driver, RawBehavior::ReplyThenHold(SWITCH.to_vec()));
        let mut c = upgraded(&kedge);
        c.shutdown_write();
        assert!(c.closed_within(Duration::from_secs(5)), "the half-closed idle tunnel stayed open");
        wait_until(Duration::from_secs(5), "the idle close counted", || idle_closed(&kedge) == 1);
    }
);

/// A raw upstream's answer that switches to a WebSocket tunnel.
const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";

/// A raw upstream that behaves as `behavior`, and kedge in front of it with a 400 ms upstream
/// read timeout (the tunnels' idle timeout).
fn tunnelling_kedge(driver: crate::support::Driver, behavior: RawBehavior) -> (RawUpstream, Kedge) {
    let up = RawUpstream::start(behavior);
    let config = format!("[upstream]\nread_timeout = \"400ms\"\n\n{}", route_all(&[up.addr()]));
    let kedge = Kedge::start(driver, &config);
    (up, kedge)
}

/// A client connection to `kedge` upgraded to a tunnel.
fn upgraded(kedge: &Kedge) -> Client {
    let mut c = Client::connect(kedge.addr());
    c.send(UPGRADE_REQUEST);
    assert_eq!(c.read_response().status, 101);
    c
}

/// `kedge_tunnels_idle_closed_total` on /metrics.
fn idle_closed(kedge: &Kedge) -> u64 {
    let text = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
    let line = text
        .lines()
        .find(|l| l.starts_with("kedge_tunnels_idle_closed_total "))
        .unwrap_or_else(|| panic!("no tunnel counter in /metrics:\n{text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count")
}

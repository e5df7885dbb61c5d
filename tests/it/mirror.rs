//! RequestMirror with request bodies: an HTTPRoute rule mirroring to a second Service, real hyper
//! upstreams for the primary and the mirror (a raw socket that never reads for a stalled one),
//! and bodies of every kind (chunked, 1 and 10 MiB with a Content-Length, HTTP/2 DATA) checked
//! byte for byte at both ends through their length and hash.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;

use crate::gateway_routes::{GW, gateway, gateway_class};
use crate::support::body::{fill, hash, pattern_hash};
use crate::support::h2_client::H2;
use crate::support::objects::{ingress_class, service, slice};
use crate::support::{
    Client, Driver, FakeApi, Handler, Kedge, Seen, TempDir, Upstream, both_drivers, get, wait_for, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const HOST: &str = "m.example.com";

/// The fixture API server with kedge's Gateway, an HTTPRoute for [`HOST`] to Service `a`
/// mirroring to Service `m` (whose endpoint is `mirror_port`) every path but `/ready` (kedge's
/// readiness probe here, so that the mirror sees only the test's requests), and kedge
/// following it, with `[upstream] mirror_buffer` set to `mirror_buffer`.
struct World {
    _api: FakeApi,
    kedge: Kedge,
    primary: Upstream,
    _dir: TempDir,
}

impl World {
    fn start(driver: Driver, tag: &str, mirror_port: u16, mirror_buffer: &str) -> World {
        let api = FakeApi::start();
        api.install_gateway_api();
        api.apply("ingressclasses", ingress_class());
        let primary = Upstream::start("a", Handler::Echo);
        for (name, port) in [("a", primary.addr().port()), ("m", mirror_port)] {
            api.apply("services", service(name));
            api.apply("endpointslices", slice(name, port, &["127.0.0.1"]));
        }
        api.apply("gatewayclasses", gateway_class());
        let dir = TempDir::new(tag);
        let tables = format!(
            "[client]\nmax_body = 0\n\n[upstream]\nmirror_buffer = \"{mirror_buffer}\"\n\n[http2]\nenabled = true\n"
        );
        let kedge = Kedge::setup(driver).tables(&tables).follow(&api, &dir, "");
        api.apply("gateways", gateway("edge", kedge.addr().port(), &[]));
        api.apply(
            "httproutes",
            json!({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "mirrored", "namespace": "default"},
                   "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [HOST], "rules": [
                       {"matches": [{"path": {"type": "Exact", "value": "/ready"}}], "backendRefs": [{"name": "a", "port": 80}]},
                       {"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}}}],
                        "backendRefs": [{"name": "a", "port": 80}]}]}}),
        );
        wait_for(WAIT, "the mirrored route", || match get(&kedge, HOST, "/ready") {
            (200, Some(up)) if up == "a" => Ok(()),
            other => Err(other),
        });
        World {
            _api: api,
            kedge,
            primary,
            _dir: dir,
        }
    }

    /// Sends `head` then `body` on a new connection and reads the answer's status.
    fn post(&self, head: &str, body: &[u8]) -> u16 {
        let mut c = Client::connect(self.kedge.addr());
        c.send(head.as_bytes());
        c.send(body);
        let r = c.read_response();
        assert_eq!(r.upstream(), Some("a"), "{head}: answered by the primary");
        r.status
    }

    /// `kedge_mirror_abandoned_total` on /metrics.
    fn abandoned(&self) -> u64 {
        let text = Client::connect(self.kedge.admin_addr()).get("admin", "/metrics").text();
        let line = text
            .lines()
            .find(|l| l.starts_with("kedge_mirror_abandoned_total "))
            .unwrap_or_else(|| panic!("no mirror counter in /metrics:\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count")
    }
}

/// What `up` saw at `uri` (waiting for it).
fn seen(up: &Upstream, uri: &str) -> Seen {
    wait_for(WAIT, &format!("{uri} at {}", up.addr()), || {
        up.requests().into_iter().find(|s| s.uri == uri).ok_or(())
    })
}

/// Asserts that the primary and the mirror both got `uri` with a whole body of `len` bytes
/// hashing to `want`, and returns the mirror's copy.
fn both_got(w: &World, mirror: &Upstream, uri: &str, len: u64, want: u64) -> Seen {
    let at_a = seen(&w.primary, uri);
    let at_m = seen(mirror, uri);
    for (who, s) in [("primary", &at_a), ("mirror", &at_m)] {
        assert!(s.body_complete, "{uri}: the {who}'s body ended early");
        assert_eq!((s.body_len, s.body_hash), (len, want), "{uri}: the {who}'s body");
    }
    at_m
}

/// A chunked body, 1 MiB and 10 MiB Content-Length bodies and HTTP/2 bodies (with and without a
/// content-length) reach the mirror byte for byte, as they reach the primary; a bodiless GET
/// still is copied.
fn bodies_of_every_kind_are_mirrored(driver: Driver) {
    let mirror = Upstream::start("m", Handler::Echo);
    // A buffer larger than any body here: whether a mirror keeps up with its request depends
    // on the machine's load (the stalled test checks what happens when it does not); that every
    // byte reaches it, in order and framed, is kedge's business.
    let w = World::start(driver, "mirror-bodies", mirror.addr().port(), "64m");

    let head = format!("POST /chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let (one, two) = (fill(0, 70_000), fill(70_000, 5));
    let mut body = format!("{:x}\r\n", one.len()).into_bytes();
    body.extend_from_slice(&one);
    body.extend_from_slice(format!("\r\n{:x}\r\n", two.len()).as_bytes());
    body.extend_from_slice(&two);
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(w.post(&head, &body), 200);
    let copy = both_got(&w, &mirror, "/chunked", 70_005, pattern_hash(70_005));
    assert_eq!(
        copy.header("transfer-encoding"),
        Some("chunked"),
        "mirrored chunked, as sent"
    );

    for (uri, len) in [("/one-mib", 1u64 << 20), ("/ten-mib", 10 << 20)] {
        let head = format!("POST {uri} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n");
        assert_eq!(w.post(&head, &fill(0, len as usize)), 200);
        let copy = both_got(&w, &mirror, uri, len, pattern_hash(len));
        assert_eq!(copy.header("content-length"), Some(len.to_string().as_str()));
    }

    let h2 = H2::connect(w.kedge.addr());
    let data = fill(0, 300_000);
    let req = h2.req("POST", HOST, "/h2-streamed").body(()).expect("request");
    assert_eq!(h2.request(req, Some(data.clone())).status, 200);
    both_got(&w, &mirror, "/h2-streamed", 300_000, hash(&data));
    let req = h2
        .req("PUT", HOST, "/h2-length")
        .header("content-length", "300000")
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, Some(data.clone())).status, 200);
    both_got(&w, &mirror, "/h2-length", 300_000, hash(&data));

    let r = Client::connect(w.kedge.addr()).get(HOST, "/no-body");
    assert_eq!(r.status, 200);
    assert_eq!(seen(&mirror, "/no-body").method, "GET");
    assert_eq!(w.abandoned(), 0, "no mirror was given up");
}

both_drivers!(
    fn every_request_body_is_mirrored_byte_exact(driver) {
        bodies_of_every_kind_are_mirrored(driver);
    }
);

/// A mirror that accepts the connection and never reads: once the bytes it has not taken pass
/// the per-request budget it is abandoned (counted, its connection closed before the request's
/// end), and the primary gets the whole 8 MiB body and answers as if there were no mirror.
fn stalled_mirror(driver: Driver) {
    // A small receive window, so that the stall shows after little more than the budget.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(8).expect("listen");
    let listener: TcpListener = sock.into();
    let port = listener.local_addr().expect("addr").port();
    let (tx, accepted) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((s, _)) = listener.accept() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    let w = World::start(driver, "mirror-stalled", port, "256k");
    let before = w.abandoned();

    let len: u64 = 8 << 20;
    let head = format!("POST /big HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len}\r\n\r\n");
    assert_eq!(w.post(&head, &fill(0, len as usize)), 200);
    let at_a = seen(&w.primary, "/big");
    assert!(at_a.body_complete);
    assert_eq!((at_a.body_len, at_a.body_hash), (len, pattern_hash(len)));
    wait_until(WAIT, "the stalled mirror counted as abandoned", || {
        w.abandoned() > before
    });

    // kedge closed the mirror connection: reading it now ends, short of the request's end.
    let mut conn = accepted.recv_timeout(WAIT).expect("kedge connected to the mirror");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let end = conn.read_to_end(&mut got);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the mirror connection was closed: {end:?}"
    );
    assert!(
        (got.len() as u64) < len,
        "the mirror got {} bytes of an {len}-byte body",
        got.len()
    );
}

both_drivers!(
    fn a_stalled_mirror_is_abandoned_and_the_primary_completes(driver) {
        stalled_mirror(driver);
    }
);

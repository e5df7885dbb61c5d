//! Behind an L4 load balancer: PROXY protocol v1 and v2 on plain and TLS listeners (the carried
//! address is the client's everywhere), accepted only from `proxy_protocol_from`; missing or
//! malformed headers closed and counted; X-Forwarded-For from `trusted_proxies` only.
//!
//! The "balancer" is 127.0.0.2 (a client socket bound there); carried addresses come from
//! 192.0.2.0/24 and 2001:db8::/32.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::json;

use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::tls::TestCa;
use crate::support::{
    Client, Driver, FakeApi, Handler, Kedge, RecordingUpstream, TempDir, Upstream, both_drivers, route_all,
};

const WAIT: Duration = Duration::from_secs(5);
/// The listener keys: PROXY protocol from the balancer only.
pub(crate) const FROM_LB: &str = "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2\"]";

/// A TCP connection from 127.0.0.`last` to `addr`.
pub(crate) fn connect_from(last: u8, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())
        .expect("bind 127.0.0.x");
    s.connect_timeout(&addr.into(), WAIT).expect("connect to kedge");
    s.into()
}

/// A v1 header from `src` (port 40000) to `addr`.
fn v1(src: IpAddr, addr: SocketAddr) -> Vec<u8> {
    let (proto, dst) = match src {
        IpAddr::V4(_) => ("TCP4", addr.ip()),
        IpAddr::V6(_) => ("TCP6", "::1".parse().unwrap()),
    };
    format!("PROXY {proto} {src} {dst} 40000 {}\r\n", addr.port()).into_bytes()
}

/// A v2 PROXY (`local`: LOCAL) header from `src` (port 40000), with a TLV to skip.
fn v2(src: IpAddr, local: bool) -> Vec<u8> {
    let mut block = Vec::new();
    let fam = match src {
        IpAddr::V4(ip) => {
            block.extend_from_slice(&ip.octets());
            block.extend_from_slice(&[127, 0, 0, 1]);
            0x11
        }
        IpAddr::V6(ip) => {
            block.extend_from_slice(&ip.octets());
            block.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    block.extend_from_slice(&40000u16.to_be_bytes());
    block.extend_from_slice(&443u16.to_be_bytes());
    block.extend_from_slice(&[0x04, 0x00, 0x02, b'h', b'i']);
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(fam);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(&block);
    h
}

/// `header` from the balancer to `addr`, then a client on that connection (TLS when `tls`).
fn client_via_lb(addr: SocketAddr, header: &[u8], tls: Option<&TestCa>) -> Client {
    use std::io::Write;
    let mut tcp = connect_from(2, addr);
    tcp.write_all(header).expect("send PROXY header");
    match tls {
        None => Client::over(tcp).expect("client"),
        Some(ca) => Client::tls_over(tcp, ca.client(), "www.example.com").expect("TLS over PROXY"),
    }
}

/// The value of `name{reason="reason"}` on kedge's `/metrics`.
fn proxy_errors(kedge: &Kedge, reason: &str) -> u64 {
    let body = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
    let key = format!("kedge_proxy_protocol_errors_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{body}"))
}

both_drivers!(
    fn the_carried_address_is_the_client_on_plain_and_tls_listeners(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("pp");
        let (cert, key) = ca.leaf(&["www.example.com"]).write(&dir, "default");
        let up = Upstream::start("app", Handler::Echo);
        let fragment = format!(
            "[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n\n{}",
            cert.display(),
            key.display(),
            route_all(&[up.addr()])
        );
        let kedge = Kedge::setup(driver).tls().listener(FROM_LB).start(&fragment);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        let lb: IpAddr = "127.0.0.2".parse().unwrap();
        for (addr, tls) in [(kedge.addr(), None), (kedge.tls_addr(), Some(&ca))] {
            let cases = [
                ("v1 tcp4", v1(v4, addr), v4),
                ("v1 tcp6", v1(v6, addr), v6),
                ("v2 inet", v2(v4, false), v4),
                ("v2 inet6", v2(v6, false), v6),
                ("v2 LOCAL keeps the socket's", v2(v4, true), lb),
            ];
            for (what, header, client) in cases {
                let mut c = client_via_lb(addr, &header, tls);
                // Two requests: the address holds for the connection.
                for _ in 0..2 {
                    let resp = c.get("www.example.com", "/who");
                    assert_eq!(resp.status, 200, "{what} tls={}: {resp:?}", tls.is_some());
                    let seen = up.requests().pop().expect("a request upstream");
                    let want = client.to_string();
                    assert_eq!(seen.header("x-forwarded-for"), Some(want.as_str()), "{what}");
                    assert_eq!(seen.header("x-real-ip"), Some(want.as_str()), "{what}");
                }
            }
        }
        // The access log names the carried client.
        kedge.wait_log("client=192.0.2.7", WAIT);
        kedge.wait_log("client=2001:db8::7", WAIT);
    }
);

both_drivers!(
    fn missing_malformed_and_unlisted_sources_are_closed_and_counted(driver) {
        let up = RecordingUpstream::start();
        let kedge = Kedge::setup(driver).listener(FROM_LB).start(&route_all(&[up.addr()]));
        let addr = kedge.addr();
        let request = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";

        // A header from anyone but the balancer: refused before it is read.
        let mut header = v1("192.0.2.7".parse().unwrap(), addr);
        header.extend_from_slice(request);
        let mut c = Client::over(connect_from(1, addr)).unwrap();
        c.send(&header);
        assert!(c.is_closed(), "a source outside proxy_protocol_from is refused");
        assert_eq!(proxy_errors(&kedge, "untrusted_source"), 1);

        // From the balancer: no header, a malformed v1 line, a bad v2 family.
        let mut bad_v2 = v2("192.0.2.7".parse().unwrap(), false);
        bad_v2[13] = 0x12; // UDP
        bad_v2.extend_from_slice(request);
        let cases: [(&str, Vec<u8>); 3] = [
            ("plain HTTP", request.to_vec()),
            ("bad v1", [&b"PROXY TCP4 192.0.2.7 nope 1 2\r\n"[..], request].concat()),
            ("v2 over UDP", bad_v2),
        ];
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let mut c = Client::over(connect_from(2, addr)).unwrap();
            c.send(bytes);
            assert!(c.is_closed(), "{what}: closed");
            assert_eq!(proxy_errors(&kedge, "malformed"), i as u64 + 1, "{what}");
        }
        assert_eq!(up.connections(), 0, "nothing reaches the upstream");

        // A good header still works.
        let mut c = client_via_lb(addr, &v1("192.0.2.9".parse().unwrap(), addr), None);
        assert_eq!(c.get("h", "/").status, 200);
        assert_eq!(up.conns()[0].requests[0].header_all("x-real-ip"), ["192.0.2.9"]);
    }
);

both_drivers!(
    fn forwarded_for_counts_only_from_trusted_proxies(driver) {
        let up = Upstream::start("app", Handler::Echo);
        // Behind the balancer, 192.0.2.1 is an L7 proxy kedge trusts; 192.0.2.2 is anyone.
        let kedge = Kedge::setup(driver)
            .listener(FROM_LB)
            .tables("[client]\ntrusted_proxies = [\"192.0.2.1\"]\n")
            .start(&route_all(&[up.addr()]));
        let addr = kedge.addr();
        let request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.1, 198.51.100.9\r\n\
                        X-Forwarded-Proto: https\r\nX-Forwarded-Port: 443\r\n\r\n";
        let cases = [
            ("192.0.2.1", "198.51.100.9", "203.0.113.1, 198.51.100.9, 192.0.2.1", "https", "443"),
            ("192.0.2.2", "192.0.2.2", "203.0.113.1, 198.51.100.9, 192.0.2.2", "http", ""),
        ];
        for (peer, client, xff, proto, port) in cases {
            let mut c = client_via_lb(addr, &v1(peer.parse().unwrap(), addr), None);
            c.send(request);
            assert_eq!(c.read_response().status, 200);
            let seen = up.requests().pop().unwrap();
            assert_eq!(seen.header("x-real-ip"), Some(client), "from {peer}");
            assert_eq!(seen.header("x-forwarded-for"), Some(xff), "from {peer}");
            assert_eq!(seen.header("x-forwarded-proto"), Some(proto), "from {peer}");
            let port = if port.is_empty() { addr.port().to_string() } else { port.to_owned() };
            assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()), "from {peer}");
        }
        kedge.wait_log("client=198.51.100.9", WAIT);
    }
);

/// whitelist-source-range through the fixture API server allows and denies by the carried
/// address (and by the trusted X-Forwarded-For one).
#[test]
fn allow_lists_see_the_carried_address() {
    let up = Upstream::start("app", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", up.addr().port(), &["127.0.0.1"]));
    let mut ing = ingress("only", "kedge", "only.example.com", "/", "app");
    ing["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/whitelist-source-range": "192.0.2.0/24"});
    api.apply("ingresses", ing);
    let dir = TempDir::new("pp-allow");
    let kedge = Kedge::setup(Driver::default())
        .listener(FROM_LB)
        .tables("[client]\ntrusted_proxies = [\"198.51.100.1\"]\n")
        .follow(&api, &dir, "");
    let addr = kedge.addr();
    let get = |carried: &str, xff: &str| {
        let mut c = client_via_lb(addr, &v1(carried.parse().unwrap(), addr), None);
        c.send(format!("GET / HTTP/1.1\r\nHost: only.example.com\r\nX-Forwarded-For: {xff}\r\n\r\n").as_bytes());
        c.read_response().status
    };
    assert_eq!(get("192.0.2.7", "203.0.113.1"), 200, "carried address in the range");
    assert_eq!(
        get("198.51.100.7", "192.0.2.7"),
        403,
        "carried address outside; its XFF is not trusted"
    );
    assert_eq!(
        get("198.51.100.1", "192.0.2.7"),
        200,
        "a trusted proxy's XFF names the client"
    );
    assert_eq!(
        get("198.51.100.1", "203.0.113.1"),
        403,
        "a trusted proxy's XFF names the client"
    );
    assert_eq!(up.request_count(), 2);
}

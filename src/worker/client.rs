//! The client address of one request, for every phase after the view (allow and deny lists,
//! limits, hashing, X-Real-IP, the access log): the connection's peer, which is already the
//! address a PROXY header carried, unless that peer is one of `[client] trusted_proxies`. Then
//! X-Forwarded-For names the client, as ingress-nginx's `use-forwarded-headers` with
//! `proxy-real-ip-cidr` (nginx's `real_ip_recursive on`): its rightmost address that is not
//! itself trusted, or the leftmost when all are. Both front ends call [`resolve`] on the view
//! they built, so HTTP/1.1 and HTTP/2 requests follow the same rule.
//!
//! Pure and allocation-free: the address text goes into a buffer on the caller's stack.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use super::request::{Header, RequestView};
use crate::policy::Cidr;

/// Room for an IP address as text (the longest, an IPv4-mapped IPv6 address in full, is 45).
pub(super) type Text = [u8; 48];

/// Whether `ip` is in one of `trusted`.
fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|c| c.contains(ip))
}

/// The client X-Forwarded-For names, walking its addresses (over every X-Forwarded-For field,
/// in order) from the right: the first that is not trusted, or the last one read when every
/// one is, or when the next one is not an address. `None`: no address at all.
fn from_forwarded_for(trusted: &[Cidr], headers: &[Header<'_>]) -> Option<IpAddr> {
    let fields = headers
        .iter()
        .rev()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"x-forwarded-for"));
    let mut client = None;
    for element in fields.flat_map(|&(_, v)| v.rsplit(|&b| b == b',')) {
        let element = element.trim_ascii();
        if element.is_empty() {
            continue;
        }
        let Some(ip) = std::str::from_utf8(element).ok().and_then(|t| t.parse::<IpAddr>().ok()) else {
            break;
        };
        client = Some(ip.to_canonical());
        if !is_trusted(trusted, ip) {
            break;
        }
    }
    client
}

/// Resolves the view's client in place (`peer`, `client_ip`); returns whether the request came
/// from a trusted proxy (whose X-Forwarded-Proto and -Port are then passed on). `text` holds
/// the client's address text when it is not the connection's.
pub(super) fn resolve<'a>(view: &mut RequestView<'a>, trusted: &[Cidr], text: &'a mut Text) -> bool {
    if trusted.is_empty() || !is_trusted(trusted, view.peer.ip()) {
        return false;
    }
    let Some(ip) = from_forwarded_for(trusted, view.headers) else {
        return true;
    };
    let len = {
        let mut w = &mut text[..];
        // 48 bytes hold any address.
        let _ = write!(w, "{ip}");
        48 - w.len()
    };
    // The port the client used is not known.
    view.peer = SocketAddr::new(ip, 0);
    view.client_ip = &text[..len];
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_from_trusted_peers_only() {
        let trusted = Cidr::parse_list("127.0.0.0/8, 10.0.0.0/8, 2001:db8:ffff::/48").unwrap();
        // (peer, X-Forwarded-For fields, client, from a trusted proxy)
        #[rustfmt::skip]
        let cases: &[(&str, &[&str], &str, bool)] = &[
            ("192.0.2.1", &["198.51.100.9"], "192.0.2.1", false),
            ("127.0.0.2", &[], "127.0.0.2", true),
            ("127.0.0.2", &["198.51.100.9"], "198.51.100.9", true),
            ("127.0.0.2", &["203.0.113.5, 198.51.100.9"], "198.51.100.9", true),
            ("127.0.0.2", &["203.0.113.5, 198.51.100.9, 10.1.1.1"], "198.51.100.9", true),
            ("127.0.0.2", &["203.0.113.5", "198.51.100.9, 10.1.1.1"], "198.51.100.9", true),
            ("127.0.0.2", &["10.2.2.2, 10.1.1.1"], "10.2.2.2", true),
            ("127.0.0.2", &["198.51.100.9, junk, 10.1.1.1"], "10.1.1.1", true),
            ("127.0.0.2", &["junk"], "127.0.0.2", true),
            ("127.0.0.2", &[" , ,"], "127.0.0.2", true),
            ("127.0.0.2", &["2001:db8::7, 2001:db8:ffff::1"], "2001:db8::7", true),
            ("127.0.0.2", &["::ffff:192.0.2.7"], "192.0.2.7", true),
            ("127.0.0.2", &["192.0.2.7:1234"], "127.0.0.2", true),
            ("2001:db8:ffff::9", &["192.0.2.7"], "192.0.2.7", true),
            ("::ffff:10.0.0.1", &["192.0.2.7"], "192.0.2.7", true),
        ];
        for &(peer, xff, want, want_trusted) in cases {
            let headers: Vec<Header<'_>> = xff.iter().map(|v| (&b"X-Forwarded-For"[..], v.as_bytes())).collect();
            let peer_ip: IpAddr = peer.parse().unwrap();
            let peer_text = peer_ip.to_canonical().to_string();
            let view = RequestView {
                method: b"GET",
                scheme: "http",
                authority: b"h",
                path: Some(b"/"),
                query: None,
                target: b"/",
                headers: &headers,
                request_id: b"",
                body: super::super::request::Body::None,
                expect_continue: false,
                upgrade: None,
                keep_alive: true,
                peer: SocketAddr::new(peer_ip, 1),
                local: "127.0.0.1:80".parse().unwrap(),
                client_ip: peer_text.as_bytes(),
            };
            let mut text = [0; 48];
            let mut got = view;
            let from_trusted = resolve(&mut got, &trusted, &mut text);
            assert_eq!(
                (
                    got.peer.ip().to_canonical().to_string(),
                    std::str::from_utf8(got.client_ip).unwrap(),
                    from_trusted
                ),
                (want.to_owned(), want, want_trusted),
                "{peer} {xff:?}"
            );
        }
        let mut text = [0; 48];
        let headers = [(&b"x-forwarded-for"[..], &b"192.0.2.7"[..])];
        let mut got = RequestView {
            method: b"GET",
            scheme: "http",
            authority: b"h",
            path: None,
            query: None,
            target: b"/",
            headers: &headers,
            request_id: b"",
            body: super::super::request::Body::None,
            expect_continue: false,
            upgrade: None,
            keep_alive: true,
            peer: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            client_ip: b"127.0.0.1",
        };
        let trusted = resolve(&mut got, &[], &mut text);
        assert_eq!(
            (got.client_ip, trusted),
            (&b"127.0.0.1"[..], false),
            "off without trusted_proxies"
        );
    }
}

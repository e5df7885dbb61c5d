//! Static routes into a table: redirects for hosts with certificates.

use std::net::SocketAddr;

use super::*;
use crate::routes::PathType;

fn route(name: &str, host: Option<&str>, path: &str, path_type: PathType) -> StaticRoute {
    StaticRoute {
        name: name.into(),
        host: host.map(str::to_owned),
        path: path.into(),
        path_type,
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], 9000))],
        max_body: None,
        ssl_redirect: None,
        upstream_tls: None,
        upstream_h2: false,
    }
}

#[test]
fn duplicate_route_keeps_the_first_and_warns() {
    let routes = [
        route("first", Some("foo.com"), "/a", PathType::Prefix),
        route("second", Some("foo.com"), "/a/", PathType::Prefix),
    ];
    let (table, warnings) = build(&routes);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("route \"second\""), "{warnings:?}");
    assert!(warnings[0].contains("route \"first\""), "{warnings:?}");
    assert_eq!(table.route(b"foo.com", "/a/b").map(|b| &*b.name), Some("first"));
}

#[test]
fn static_routes_redirect_for_hosts_with_certificates() {
    let mut secure = route("a", Some("secure.example.com"), "/", PathType::Prefix);
    let plain = route("b", Some("plain.example.com"), "/", PathType::Prefix);
    let mut opted_out = route("c", Some("optout.example.com"), "/", PathType::Prefix);
    opted_out.ssl_redirect = Some(false);
    let mut forced = route("d", Some("forced.example.com"), "/", PathType::Prefix);
    forced.ssl_redirect = Some(true);
    secure.ssl_redirect = None;
    let mut b = TableBuilder::default();
    let tls_hosts = ["secure.example.com".to_owned(), "optout.example.com".to_owned()];
    let w = add(&mut b, &[secure, plain, opted_out, forced], &tls_hosts);
    assert!(w.is_empty(), "{w:?}");
    let t = b.build();
    let redirect = |h: &str| t.lookup(h.as_bytes(), "/x").map(|(_, o)| o.ssl_redirect);
    assert_eq!(redirect("secure.example.com"), Some(true));
    assert_eq!(redirect("plain.example.com"), Some(false));
    assert_eq!(redirect("optout.example.com"), Some(false));
    assert_eq!(redirect("forced.example.com"), Some(true));
}

//! Route matching as data: (host, path) → the backend name that must answer, or none.

use std::net::SocketAddr;

use super::*;

/// One rule: backend name, host (`None`: any), path, path type.
type Rule<'a> = (&'a str, Option<&'a str>, &'a str, PathType);

fn route<'a>(name: &'a str, host: Option<&'a str>, path: &'a str, path_type: PathType) -> Rule<'a> {
    (name, host, path, path_type)
}

/// A table with one backend per rule (named after it), rules added in order; the warnings name
/// the rules that lost to an earlier one.
fn build(rules: &[Rule<'_>]) -> (RouteTable, Vec<String>) {
    let mut b = TableBuilder::default();
    let mut warnings = Vec::new();
    for &(name, host, path, path_type) in rules {
        let id = b.backend(Backend {
            name: name.into(),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 9000))],
            tls: None,
            h2: false,
        });
        if let Err(c) = b.rule_with(host, path, path_type, id, Arc::new(Policy::default()), name) {
            warnings.push(format!("{name} lost to {}", c.winner));
        }
    }
    (b.build(), warnings)
}

fn check(routes: &[Rule<'_>], cases: &[(&str, &str, Option<&str>)]) {
    let (table, warnings) = build(routes);
    assert!(warnings.is_empty(), "{warnings:?}");
    for &(host, path, want) in cases {
        let got = table.route(host.as_bytes(), path).map(|b| &*b.name);
        assert_eq!(got, want, "host {host:?} path {path:?}");
    }
}

use PathType::{Exact, Prefix};

#[test]
fn prefix_matches_whole_path_elements() {
    let routes = [route("aaa", Some("foo.com"), "/aaa", Prefix)];
    check(
        &routes,
        &[
            ("foo.com", "/aaa", Some("aaa")),
            ("foo.com", "/aaa/", Some("aaa")),
            ("foo.com", "/aaa/ccc", Some("aaa")),
            ("foo.com", "/aaaccc", None),
            ("foo.com", "/", None),
            ("foo.com", "/AAA", None),
        ],
    );
}

#[test]
fn trailing_slash_in_prefix_rule_is_ignored() {
    let routes = [route("aaa", Some("foo.com"), "/aaa/", Prefix)];
    check(
        &routes,
        &[
            ("foo.com", "/aaa", Some("aaa")),
            ("foo.com", "/aaa/b", Some("aaa")),
            ("foo.com", "/aaab", None),
        ],
    );
}

#[test]
fn exact_is_case_and_slash_sensitive() {
    let routes = [route("foo", Some("foo.com"), "/foo", Exact)];
    check(
        &routes,
        &[
            ("foo.com", "/foo", Some("foo")),
            ("foo.com", "/foo/", None),
            ("foo.com", "/FOO", None),
            ("foo.com", "/fo", None),
        ],
    );
}

#[test]
fn longest_match_wins_and_exact_beats_prefix() {
    let routes = [
        route("root", Some("foo.com"), "/", Prefix),
        route("foo-prefix", Some("foo.com"), "/foo", Prefix),
        route("foo-exact", Some("foo.com"), "/foo", Exact),
        route("foobar", Some("foo.com"), "/foo/bar", Prefix),
    ];
    check(
        &routes,
        &[
            ("foo.com", "/foo", Some("foo-exact")),
            ("foo.com", "/foo/", Some("foo-prefix")),
            ("foo.com", "/foo/bar/baz", Some("foobar")),
            ("foo.com", "/foo/barn", Some("foo-prefix")),
            ("foo.com", "/other", Some("root")),
        ],
    );
}

#[test]
fn hosts_exact_wildcard_case_and_port() {
    let routes = [
        route("exact", Some("foo.bar.com"), "/", Prefix),
        route("wild", Some("*.bar.com"), "/", Prefix),
        route("any", None, "/", Prefix),
    ];
    check(
        &routes,
        &[
            ("foo.bar.com", "/", Some("exact")),
            ("FOO.Bar.COM:8080", "/x", Some("exact")),
            ("foo.bar.com.", "/", Some("exact")),
            ("baz.bar.com", "/", Some("wild")),
            ("baz.bar.com:443", "/", Some("wild")),
            // One label only: deeper names and the bare suffix are not the wildcard's.
            ("a.baz.bar.com", "/", Some("any")),
            ("bar.com", "/", Some("any")),
            ("other.example", "/", Some("any")),
            ("", "/", Some("any")),
            ("[2001:db8::1]:80", "/", Some("any")),
        ],
    );
}

#[test]
fn host_with_rules_does_not_fall_back_to_any_host_rules() {
    let routes = [
        route("api", Some("foo.com"), "/api", Prefix),
        route("any", None, "/", Prefix),
    ];
    check(
        &routes,
        &[
            ("foo.com", "/api/x", Some("api")),
            ("foo.com", "/web", None),
            ("bar.com", "/web", Some("any")),
        ],
    );
}

#[test]
fn no_rules_no_route() {
    check(&[], &[("foo.com", "/", None), ("", "/", None)]);
}

#[test]
fn duplicate_rule_keeps_the_first_and_warns() {
    let routes = [
        route("first", Some("foo.com"), "/a", Prefix),
        route("second", Some("foo.com"), "/a/", Prefix),
    ];
    let (table, warnings) = build(&routes);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("second"), "{warnings:?}");
    assert_eq!(table.route(b"foo.com", "/a/b").map(|b| &*b.name), Some("first"));
}

#[test]
fn host_normalisation_rejects_junk() {
    let mut buf = [0u8; MAX_HOST];
    assert_eq!(normalize_host(b"Foo.COM:80", &mut buf), Some("foo.com"));
    assert_eq!(normalize_host(b"[::1]:80", &mut buf), Some("::1"));
    assert_eq!(normalize_host(b"foo bar", &mut buf), None);
    assert_eq!(normalize_host(&[b'a'; 300], &mut buf), None);
    assert_eq!(normalize_host(b"", &mut buf), None);
    // Lowercase names are used as sent; a trailing dot and a port are dropped either way.
    assert_eq!(
        normalize_host(b"foo.example.com.:8080", &mut buf),
        Some("foo.example.com")
    );
    assert_eq!(
        normalize_host(b"MiXeD.Example.COM.", &mut buf),
        Some("mixed.example.com")
    );
    // Not ASCII (UTF-8 of "é"), nor graphic: no host.
    assert_eq!(normalize_host("caf\u{e9}.example.com".as_bytes(), &mut buf), None);
    assert_eq!(normalize_host(b"foo\x7f.com", &mut buf), None);
}

#[test]
fn endpoint_updates_keep_rules_and_replace_only_the_named_backends() {
    let routes = [
        route("a", Some("a.com"), "/", Prefix),
        route("b", Some("b.com"), "/", Prefix),
    ];
    let (table, _) = build(&routes);
    let id = table.backend_id("b").expect("backend b");
    let new: Vec<SocketAddr> = vec![
        SocketAddr::from(([192, 0, 2, 1], 80)),
        SocketAddr::from(([192, 0, 2, 2], 80)),
    ];
    let next = table.with_endpoints([(id, new.clone())]);
    assert_eq!(next.route(b"b.com", "/").map(|b| b.endpoints.clone()), Some(new));
    assert_eq!(next.route(b"a.com", "/x").map(|b| &*b.name), Some("a"));
    assert_eq!(
        next.route(b"a.com", "/").map(|b| b.endpoints.clone()),
        table.route(b"a.com", "/").map(|b| b.endpoints.clone())
    );
    assert_eq!(next.host_count(), table.host_count());
    assert_eq!(table.backend_id("nope"), None);
}

/// An endpoint update copies only the chunks of the backends it changes: the new table shares
/// the others with the old one, and both answer for every backend as before.
#[test]
fn endpoint_updates_share_the_untouched_backend_chunks() {
    let n = Backends::CHUNK * 3 + 5;
    let names: Vec<String> = (0..n).map(|i| format!("b{i}")).collect();
    let hosts: Vec<String> = (0..n).map(|i| format!("h{i}.com")).collect();
    let routes: Vec<Rule<'_>> = (0..n).map(|i| route(&names[i], Some(&hosts[i]), "/", Prefix)).collect();
    let (table, _) = build(&routes);
    assert_eq!(table.backends.len(), n);
    assert_eq!(table.backends.chunks.len(), 4);
    let new = vec![SocketAddr::from(([192, 0, 2, 9], 80))];
    // Two backends of the second chunk, one of the last (partial) one.
    let ids: Vec<BackendId> = [Backends::CHUNK + 1, Backends::CHUNK + 7, n - 1]
        .iter()
        .map(|&i| table.backend_id(&names[i]).expect("a backend"))
        .collect();
    let next = table.with_endpoints(ids.iter().map(|&id| (id, new.clone())));
    assert_eq!(next.backends.len(), n);
    for (i, host) in hosts.iter().enumerate() {
        let (old, now) = (
            table.route(host.as_bytes(), "/").expect("routed"),
            next.route(host.as_bytes(), "/").expect("routed"),
        );
        assert_eq!(now.name, old.name);
        let id = table.backend_id(&names[i]).expect("a backend");
        if ids.contains(&id) {
            assert_eq!(now.endpoints, new, "{host}");
        } else {
            assert_eq!(now.endpoints, old.endpoints, "{host}");
        }
        assert_eq!(&next.backends[id], now);
    }
    let changed: Vec<usize> = ids.iter().map(|id| id / Backends::CHUNK).collect();
    for (k, (a, b)) in table.backends.chunks.iter().zip(&next.backends.chunks).enumerate() {
        assert_eq!(Arc::ptr_eq(a, b), !changed.contains(&k), "chunk {k}");
    }
    assert_eq!(next.backends.iter().count(), n);
}

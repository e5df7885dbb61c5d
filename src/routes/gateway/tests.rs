//! Gateway scopes as data: rules added in a known order, requests, and the rule each must get
//! (named by its action's backend id), or 404, or "not the Gateway's".

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;

fn action(id: BackendId) -> Arc<Action> {
    Arc::new(Action {
        request_headers: None,
        response_headers: None,
        redirect: None,
        cors: None,
        mirrors: Vec::new(),
        rewrite: None,
        backends: vec![Weighted {
            weight: 1,
            backend: Some(id),
            headers: None,
        }],
        request_timeout: None,
        backend_timeout: None,
        policy: Arc::new(Policy::default()),
    })
}

fn m(path: PathMatch) -> Match {
    Match {
        path,
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
    }
}

fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

const A1: &str = "127.0.0.1:80";
const A2: &str = "127.0.0.2:80";

fn scopes() -> Scopes {
    let mut s = Scopes::default();
    let one: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
    let h = Some("a.example");
    // Added oldest first; precedence reorders all but ties.
    s.add(&one, 80, None, h, m(prefix("/")), action(1));
    s.add(&one, 80, None, h, m(prefix("/api/")), action(2));
    s.add(&one, 80, None, h, m(PathMatch::Exact("/api".into())), action(3));
    s.add(&one, 80, None, h, m(prefix("/api/v1")), action(4));
    s.add(
        &one,
        80,
        None,
        h,
        Match {
            method: Some("POST".into()),
            ..m(prefix("/api"))
        },
        action(5),
    );
    s.add(
        &one,
        80,
        None,
        h,
        Match {
            headers: vec![("x-env".into(), ValueMatch::Exact("canary".into()))],
            ..m(prefix("/api"))
        },
        action(6),
    );
    s.add(
        &one,
        80,
        None,
        h,
        Match {
            headers: vec![
                ("x-env".into(), ValueMatch::Exact("canary".into())),
                ("x-team".into(), ValueMatch::Regex(anchored_regex("ops|dev").unwrap())),
            ],
            ..m(prefix("/api"))
        },
        action(7),
    );
    s.add(
        &one,
        80,
        None,
        h,
        Match {
            query: vec![("v".into(), ValueMatch::Exact("2".into()))],
            ..m(prefix("/api"))
        },
        action(8),
    );
    // A later route with the same match loses the tie.
    s.add(&one, 80, None, h, m(prefix("/api/v1/")), action(9));
    s.add(
        &one,
        80,
        None,
        h,
        m(PathMatch::Regex(anchored_regex("/items/[0-9]+").unwrap())),
        action(10),
    );
    // Host selection: listener `*.b.example` with an exact and a wildcard route hostname, and a
    // listener without hostname; only `/only` on the exact one.
    s.add(
        &one,
        80,
        Some("*.b.example"),
        Some("x.b.example"),
        m(prefix("/only")),
        action(20),
    );
    s.add(
        &one,
        80,
        Some("*.b.example"),
        Some("*.b.example"),
        m(prefix("/")),
        action(21),
    );
    s.add(&one, 80, None, None, m(prefix("/")), action(22));
    // Another Gateway on 127.0.0.2, same port: isolated.
    let two: [IpAddr; 1] = ["127.0.0.2".parse().unwrap()];
    s.add(&two, 80, None, Some("a.example"), m(prefix("/")), action(30));
    s.finish();
    s
}

fn got(s: &Scopes, local: &str, host: &str, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.as_bytes())),
        None => (target, None),
    };
    let headers: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
    let req = Request {
        method: method.as_bytes(),
        path,
        query,
        headers: &headers,
    };
    let local: SocketAddr = local.parse().unwrap();
    match s.lookup(local, host, &req) {
        Lookup::NotGateway => "ingress".into(),
        Lookup::NoRule => "404".into(),
        Lookup::Routed(r) => format!("{:?}", r.action.backends[0].backend.unwrap()),
    }
}

/// Local address, host, method, target, headers, and the backend id wanted.
type Case<'a> = (&'a str, &'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn precedence_and_hosts() {
    let s = scopes();
    #[rustfmt::skip]
    let cases: &[Case<'_>] = &[
        (A1, "a.example", "GET", "/", &[], "1"),
        (A1, "a.example", "GET", "/api", &[], "3"),
        (A1, "a.example", "GET", "/api/", &[], "2"),
        (A1, "a.example", "GET", "/api/x", &[], "2"),
        (A1, "a.example", "GET", "/apix", &[], "1"),
        (A1, "a.example", "GET", "/api/v1", &[], "4"),
        (A1, "a.example", "GET", "/api/v1/x", &[], "4"),
        (A1, "a.example", "GET", "/api/v10", &[], "2"),
        // Same prefix /api: method first, then most headers, then most query params.
        // (`/api/` and `/api` are the same prefix.)
        (A1, "a.example", "POST", "/api/x", &[("x-env", "canary"), ("x-team", "ops")], "5"),
        (A1, "a.example", "GET", "/api/x", &[("x-env", "canary"), ("x-team", "ops")], "7"),
        (A1, "a.example", "GET", "/api/x", &[("X-Env", "canary"), ("x-team", "qa")], "6"),
        (A1, "a.example", "GET", "/api/x?v=2", &[("x-env", "canary")], "6"),
        (A1, "a.example", "GET", "/api/x?v=2", &[], "8"),
        (A1, "a.example", "POST", "/api", &[("x-env", "canary"), ("x-team", "ops")], "3"),
        (A1, "a.example", "PUT", "/api/w", &[], "2"),
        (A1, "a.example", "GET", "/apiz", &[], "1"),
        (A1, "a.example", "GET", "/items/12", &[], "10"),
        (A1, "a.example", "GET", "/items/12/x", &[], "1"),
        (A1, "b.example", "GET", "/", &[], "22"),
        (A1, "x.b.example", "GET", "/only/1", &[], "20"),
        (A1, "x.b.example", "GET", "/other", &[], "404"),
        (A1, "y.z.b.example", "GET", "/other", &[], "21"),
        (A1, "b.example", "GET", "/x", &[], "22"),
        (A2, "a.example", "GET", "/api", &[], "30"),
        (A2, "b.example", "GET", "/", &[], "ingress"),
        ("127.0.0.1:81", "a.example", "GET", "/", &[], "ingress"),
    ];
    let mut failed = Vec::new();
    for (local, host, method, target, headers, want) in cases {
        let g = got(&s, local, host, method, target, headers);
        if g != *want {
            failed.push(format!(
                "{local} {host} {method} {target} {headers:?}: got {g}, want {want}"
            ));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

/// /api with a prefix of the same length: header and query matches order the rules.
#[test]
fn predicates_order_equal_paths() {
    let mut s = Scopes::default();
    let h = Some("a.example");
    let add = |s: &mut Scopes, m: Match, id| s.add(&[], 80, None, h, m, action(id));
    add(&mut s, m(prefix("/p")), 1);
    add(
        &mut s,
        Match {
            query: vec![("v".into(), ValueMatch::Exact("2".into()))],
            ..m(prefix("/p"))
        },
        2,
    );
    add(
        &mut s,
        Match {
            headers: vec![("x-env".into(), ValueMatch::Exact("canary".into()))],
            ..m(prefix("/p"))
        },
        3,
    );
    add(
        &mut s,
        Match {
            method: Some("POST".into()),
            ..m(prefix("/p"))
        },
        4,
    );
    s.finish();
    let any = "192.0.2.1:80";
    assert_eq!(got(&s, any, "a.example", "GET", "/p", &[]), "1");
    assert_eq!(got(&s, any, "a.example", "GET", "/p?a=1&v=2", &[]), "2");
    assert_eq!(got(&s, any, "a.example", "GET", "/p?v=20", &[]), "1");
    assert_eq!(got(&s, any, "a.example", "GET", "/p?v=2", &[("x-env", "canary")]), "3");
    assert_eq!(got(&s, any, "a.example", "POST", "/p?v=2", &[("x-env", "canary")]), "4");
    assert_eq!(got(&s, any, "a.example", "GET", "/q", &[]), "404");
    assert_eq!(got(&s, any, "c.example", "GET", "/p", &[]), "ingress");
}

/// A repeated header is matched as its values joined with ", " (RFC 7230 §3.2.2), names in
/// any case; a repeated query parameter by its first value.
#[test]
fn repeated_headers_are_joined_and_repeated_query_parameters_use_the_first() {
    let mut s = Scopes::default();
    let h = Some("a.example");
    let add = |s: &mut Scopes, m: Match, id| s.add(&[], 80, None, h, m, action(id));
    add(
        &mut s,
        Match {
            headers: vec![("x-env".into(), ValueMatch::Exact("a, b".into()))],
            ..m(prefix("/exact"))
        },
        1,
    );
    add(
        &mut s,
        Match {
            headers: vec![(
                "x-env".into(),
                ValueMatch::Regex(anchored_regex("a(, [a-z])*").unwrap()),
            )],
            ..m(prefix("/regex"))
        },
        2,
    );
    add(
        &mut s,
        Match {
            query: vec![("v".into(), ValueMatch::Exact("1".into()))],
            ..m(prefix("/query"))
        },
        3,
    );
    s.finish();
    let any = "192.0.2.1:80";
    // Target, headers, the backend id wanted.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("/exact", &[("x-env", "a, b")], "1"),
        ("/exact", &[("X-Env", "a"), ("x-other", "z"), ("x-ENV", "b")], "1"),
        // Only the values joined: the first alone, or another order, is not the same value.
        ("/exact", &[("x-env", "a")], "404"),
        ("/exact", &[("x-env", "b"), ("x-env", "a")], "404"),
        ("/exact", &[("x-env", "a"), ("x-env", "b"), ("x-env", "c")], "404"),
        ("/regex", &[("x-env", "a")], "2"),
        ("/regex", &[("x-env", "a"), ("x-env", "b"), ("x-env", "c")], "2"),
        ("/regex", &[("x-env", "b"), ("x-env", "a")], "404"),
        ("/regex", &[], "404"),
        ("/query?v=1&v=2", &[], "3"),
        ("/query?v=2&v=1", &[], "404"),
    ];
    for (target, headers, want) in cases {
        assert_eq!(
            got(&s, any, "a.example", "GET", target, headers),
            *want,
            "{target} {headers:?}"
        );
    }
}

#[test]
fn weights() {
    let b = |weight, backend| Weighted {
        weight,
        backend,
        headers: None,
    };
    let a = Action {
        backends: vec![b(0, Some(1)), b(3, Some(2)), b(1, None)],
        ..(*action(0)).clone()
    };
    let picks: Vec<Option<BackendId>> = (0..8).map(|d| a.pick(d).and_then(|w| w.backend)).collect();
    assert_eq!(
        picks,
        [Some(2), Some(2), Some(2), None, Some(2), Some(2), Some(2), None]
    );
    let none = Action {
        backends: vec![b(0, Some(1))],
        ..(*action(0)).clone()
    };
    assert!(none.pick(0).is_none());
    let empty = Action {
        backends: Vec::new(),
        ..(*action(0)).clone()
    };
    assert!(empty.pick(7).is_none());
}

#[test]
fn replace_prefix_as_the_spec_tabulates() {
    #[rustfmt::skip]
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/bar", "/", "/xyz", "/xyz/bar"),
        ("/", "/", "/xyz", "/xyz/"),
    ];
    for (path, prefix, replacement, want) in cases {
        let (head, tail) = replace_prefix(path, prefix, replacement);
        assert_eq!(format!("{head}{tail}"), want, "{path} {prefix} {replacement}");
    }
}

#[test]
fn cors_origins() {
    let c = Cors {
        allow_origins: vec!["https://www.example.com".into(), "https://*.example.org".into()],
        ..Cors::default()
    };
    assert!(c.allows(b"https://www.example.com"));
    assert!(c.allows(b"HTTPS://WWW.example.com"));
    assert!(c.allows(b"https://a.example.org"));
    assert!(c.allows(b"https://a.b.example.org"));
    assert!(!c.allows(b"https://example.org"));
    assert!(!c.allows(b"http://a.example.org"));
    assert!(!c.allows(b"https://www.example.com.evil"));
    assert!(!c.allows(b"null"));
    let any = Cors {
        allow_origins: vec!["*".into()],
        ..Cors::default()
    };
    assert!(any.allows(b"https://anything.example") && any.any_origin());
}

/// A request whose host selects a listener gets that listener's routes or a 404, even when
/// the listener has no routes at all: never a less specific listener's, never the Ingress's.
/// Only a listener without hostname lets a host none of its routes name go on to the Ingress.
#[test]
fn listener_isolation() {
    let mut s = Scopes::default();
    s.add(&[], 8080, Some("*.c.example"), None, m(prefix("/")), action(40));
    s.add_listener(&[], 8080, Some("quiet.c.example"));
    s.add_listener(&[], 8080, Some("*.q.c.example"));
    s.add(
        &[],
        8080,
        Some("*.e.example"),
        Some("x.e.example"),
        m(prefix("/")),
        action(42),
    );
    s.add(&[], 8080, None, Some("named.example"), m(prefix("/")), action(41));
    // Adding a listener again (it has routes now) changes nothing.
    s.add_listener(&[], 8080, Some("*.c.example"));
    s.finish();
    const A: &str = "127.0.0.1:8080";
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("a.c.example", "40"),
        ("quiet.c.example", "404"),
        ("a.q.c.example", "404"),
        ("q.c.example", "40"),
        ("x.e.example", "42"),
        ("y.e.example", "404"),
        ("named.example", "41"),
        ("other.example", "ingress"),
    ];
    let failed: Vec<String> = cases
        .iter()
        .filter_map(|(host, want)| {
            let g = got(&s, A, host, "GET", "/", &[]);
            (g != *want).then(|| format!("{host}: got {g}, want {want}"))
        })
        .collect();
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

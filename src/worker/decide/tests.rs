//! `decide` as data: a route table with one rule per policy feature, requests as views, and
//! the decision each must get, written as one line of text (`404`, `308 https://…`,
//! `→ backend /target`, …). No sockets, no worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::policy::{Affinity, Cidr, Redirect, Rewrite};
use crate::routes::PathType::{Exact, Prefix, Regex};
use crate::routes::{Backend, Canary, TableBuilder};
use crate::worker::request::{Body, Header};

fn backend(b: &mut TableBuilder, name: &str, port: u16) -> usize {
    b.backend(Backend {
        name: name.into(),
        endpoints: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        tls: None,
        h2: false,
    })
}

/// One host, `t.example`, with a rule per feature; `any` routes every other host.
fn table() -> RouteTable {
    let mut b = TableBuilder::default();
    let main = backend(&mut b, "main", 9000);
    let canary = backend(&mut b, "canary", 9001);
    let h = Some("t.example");
    let mut rule = |path: &str, path_type, backend, policy: Policy| {
        let policy = Arc::new(Policy {
            host: "t.example".into(),
            ..policy
        });
        b.rule_with(h, path, path_type, backend, policy, "test").unwrap();
    };
    rule("/", Prefix, main, Policy::default());
    rule(
        "/secure",
        Prefix,
        main,
        Policy {
            ssl_redirect: true,
            ..Policy::default()
        },
    );
    rule(
        "/moved",
        Prefix,
        main,
        Policy {
            redirect: Some(Redirect {
                status: 301,
                location: "https://new.example/".into(),
            }),
            ..Policy::default()
        },
    );
    rule(
        "/.well-known",
        Prefix,
        main,
        Policy {
            ssl_redirect: true,
            ..Policy::default()
        },
    );
    let rewrite = |target: &str| Rewrite {
        pattern: crate::routes::regex_path("/api(/|$)(.*)").unwrap(),
        target: target.into(),
    };
    rule(
        "/api(/|$)(.*)",
        Regex,
        main,
        Policy {
            rewrite: Some(rewrite("/v1/$2")),
            ..Policy::default()
        },
    );
    rule(
        "/q",
        Prefix,
        main,
        Policy {
            rewrite: Some(Rewrite {
                pattern: crate::routes::regex_path("/q(/|$)(.*)").unwrap(),
                target: "/search?kind=$2".into(),
            }),
            ..Policy::default()
        },
    );
    rule(
        "/internal",
        Prefix,
        main,
        Policy {
            allow: Cidr::parse_list("10.0.0.0/8").unwrap(),
            deny: Cidr::parse_list("10.9.0.0/16").unwrap(),
            ..Policy::default()
        },
    );
    rule(
        "/upload",
        Prefix,
        main,
        Policy {
            max_body: Some(10),
            ..Policy::default()
        },
    );
    let (auth, problems) = crate::auth::BasicAuth::parse("Staff only", "ann:plain-text-ignored");
    let _ = problems;
    rule(
        "/private",
        Prefix,
        main,
        Policy {
            auth: Some(Arc::new(auth)),
            rate: Some(crate::policy::Rate {
                per_sec: 1.0,
                burst: 1.0,
            }),
            limit_id: 7,
            limit_exempt: Cidr::parse_list("192.0.2.99").unwrap(),
            ..Policy::default()
        },
    );
    rule(
        "/sticky",
        Prefix,
        main,
        Policy {
            affinity: Some(Affinity {
                cookie: "route".into(),
                path: "/".into(),
                max_age: None,
                expires: None,
                secure: false,
                samesite: None,
                change_on_failure: false,
            }),
            connect_timeout: Some(Duration::from_secs(1)),
            tries: Some(100),
            ..Policy::default()
        },
    );
    rule(
        "/hashed",
        Prefix,
        main,
        Policy {
            balance: Balance::Hash(HashBy::parse("$arg_user").unwrap()),
            ..Policy::default()
        },
    );
    rule("/beta", Prefix, main, Policy::default());
    let app_root = Arc::new(Policy {
        app_root: Some("/home".into()),
        ..Policy::default()
    });
    b.rule_with(Some("app.example"), "/", Prefix, main, app_root, "test")
        .unwrap();
    b.rule_with(
        Some("app.example"),
        "/exact",
        Exact,
        canary,
        Arc::new(Policy::default()),
        "test",
    )
    .unwrap();
    b.canary(
        h,
        "/beta",
        Prefix,
        Canary {
            backend: canary,
            header: Some(("x-canary".into(), None)),
            pattern: None,
            cookie: Some("canary".into()),
            weight: 10,
            total: 100,
        },
        "test",
    )
    .unwrap();
    b.build()
}

fn client() -> ClientSettings {
    ClientSettings {
        header_timeout: Duration::from_secs(10),
        keepalive_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(10),
        max_request_line: 8192,
        max_header_bytes: 32768,
        max_headers: 100,
        max_body: 1000,
        trusted_proxies: Vec::new(),
        max_connections_per_client: 0,
    }
}

fn upstream() -> UpstreamSettings {
    UpstreamSettings {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(60),
        send_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_idle_per_endpoint: 8,
        connect_attempts: 3,
        max_failures: 0,
        ejection_time: Duration::from_secs(30),
        max_ejection_percent: 50,
        mirror_buffer: 4 << 20,
    }
}

/// A request as a front end would describe it.
struct Req {
    scheme: &'static str,
    method: &'static str,
    host: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Body,
    peer: &'static str,
    /// kedge's address the connection arrived on.
    local: &'static str,
    /// The canary weight draw.
    draw: u64,
    /// What the worker-state checks found: the limits refused (why), the credentials were good.
    refused: Option<&'static str>,
    authenticated: bool,
}

const GET: Req = Req {
    scheme: "http",
    method: "GET",
    host: "t.example",
    target: "/",
    headers: &[],
    body: Body::None,
    peer: "192.0.2.1:40000",
    local: "127.0.0.1:80",
    draw: 99,
    refused: None,
    authenticated: false,
};

/// The decision for `r`, in one line.
fn decided(table: &RouteTable, r: &Req) -> String {
    let (client, upstream) = (client(), upstream());
    let settings = Settings {
        table,
        client: &client,
        upstream: &upstream,
        redirect_port: Some(8443),
    };
    let headers: Vec<Header<'_>> = r.headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
    let (path, query) = match r.target.split_once('?') {
        Some((p, q)) => (p, Some(q.as_bytes())),
        None => (r.target, None),
    };
    let view = RequestView {
        method: r.method.as_bytes(),
        scheme: r.scheme,
        authority: r.host.as_bytes(),
        path: (!path.is_empty()).then_some(path.as_bytes()),
        query,
        target: r.target.as_bytes(),
        headers: &headers,
        request_id: b"rid",
        body: r.body,
        expect_continue: false,
        upgrade: None,
        keep_alive: true,
        peer: r.peer.parse().unwrap(),
        local: r.local.parse().unwrap(),
        client_ip: r.peer.split(':').next().unwrap().as_bytes(),
    };
    let mut rewritten = String::new();
    let mut decision = decide(&settings, &view, r.draw, &mut rewritten);
    decision.after_checks(r.refused, r.authenticated);
    match decision {
        Decision::Answer(a) => {
            let mut out = Vec::new();
            crate::worker::respond::write_answer(&mut out, &mut Vec::new(), &a, false);
            let text = String::from_utf8(out).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("Location: ") || l.starts_with("WWW-Authenticate: "))
                .unwrap_or(a.reason);
            format!("{} {line}", a.status)
        }
        Decision::Forward(f) => {
            let mut s = format!("→ {}", f.routed.backend.name);
            if f.rewritten {
                s += &format!(" {rewritten}");
            }
            if let Some(sticky) = f.pick.sticky {
                s += &format!(" sticky={sticky:x}");
            }
            if f.pick.key.is_some() {
                s += " hashed";
            }
            if f.max_body != 1000 {
                s += &format!(" max_body={}", f.max_body);
            }
            if let Some(gw) = f.gw {
                if let Some(h) = gw.host() {
                    s += &format!(" host={h}");
                }
                let mut out = Vec::new();
                gw.request_headers(&headers, &mut out);
                if out != headers {
                    let h: Vec<String> = out
                        .iter()
                        .map(|(n, v)| format!("{}={}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
                        .collect();
                    s += &format!(" [{}]", h.join(" "));
                }
            }
            s
        }
    }
}

#[test]
fn decisions() {
    let table = table();
    #[rustfmt::skip]
    let cases: &[(&str, Req, &str)] = &[
        ("routed", Req { target: "/x?y=1", ..GET }, "→ main"),
        ("unknown host", Req { host: "other.example", ..GET }, "404 no route for this host and path"),
        ("https redirect keeps path and query, drops the port",
            Req { host: "t.example:8080", target: "/secure/a?b=1&c", ..GET },
            "308 Location: https://t.example:8443/secure/a?b=1&c"),
        ("no https redirect over https", Req { scheme: "https", target: "/secure/a", ..GET }, "→ main"),
        ("ACME challenges are not redirected", Req { target: "/.well-known/acme-challenge/x", ..GET }, "→ main"),
        ("other well-known paths are", Req { target: "/.well-known/other", ..GET }, "308 Location: https://t.example:8443/.well-known/other"),
        ("a target without a path routes as /", Req { host: "t.example", target: "", ..GET }, "→ main"),
        ("fixed redirect", Req { target: "/moved/anything", ..GET }, "301 Location: https://new.example/"),
        ("app-root on /", Req { host: "app.example", target: "/?x=1", ..GET }, "302 Location: /home"),
        ("app-root only on /", Req { host: "APP.example", target: "/exact", ..GET }, "→ canary"),
        ("rewrite", Req { target: "/api/users", ..GET }, "→ main /v1/users"),
        ("rewrite joins the query", Req { target: "/api/users?page=2", ..GET }, "→ main /v1/users?page=2"),
        ("rewrite with its own query joins with &", Req { target: "/q/books?page=2", ..GET }, "→ main /search?kind=books&page=2"),
        ("allow list", Req { target: "/internal", peer: "10.1.2.3:1", ..GET }, "→ main"),
        ("outside the allow list", Req { target: "/internal", ..GET }, "403 client address not allowed"),
        ("deny list wins", Req { target: "/internal", peer: "10.9.1.1:1", ..GET }, "403 client address not allowed"),
        ("body over the rule's limit", Req { target: "/upload", body: Body::Length(11), ..GET }, "413 request body larger than allowed"),
        ("body at the rule's limit", Req { target: "/upload", body: Body::Length(10), ..GET }, "→ main max_body=10"),
        ("streamed body is checked while streaming", Req { target: "/upload", body: Body::Streamed, ..GET }, "→ main max_body=10"),
        ("body over the default limit", Req { body: Body::Length(1001), ..GET }, "413 request body larger than allowed"),
        ("auth challenge", Req { target: "/private", ..GET }, "401 WWW-Authenticate: Basic realm=\"Staff only\""),
        ("good credentials", Req { target: "/private", authenticated: true, ..GET }, "→ main"),
        ("limits refuse before auth",
            Req { target: "/private", refused: Some("request rate limit exceeded"), ..GET }, "503 request rate limit exceeded"),
        ("affinity cookie read", Req { target: "/sticky", headers: &[("Cookie", "a=b; route=00000000000000ff")], ..GET }, "→ main sticky=ff"),
        ("hash key", Req { target: "/hashed?user=ann", ..GET }, "→ main hashed"),
        ("canary by header", Req { target: "/beta", headers: &[("X-Canary", "always")], ..GET }, "→ canary"),
        ("canary header says never, weight ignored", Req { target: "/beta", headers: &[("x-canary", "never")], draw: 0, ..GET }, "→ main"),
        ("canary by cookie", Req { target: "/beta", headers: &[("Cookie", "canary=always")], ..GET }, "→ canary"),
        ("canary by weight: drawn in", Req { target: "/beta", draw: 109, ..GET }, "→ canary"),
        ("canary by weight: drawn out", Req { target: "/beta", draw: 110, ..GET }, "→ main"),
    ];
    let mut failed = Vec::new();
    for (label, req, want) in cases {
        let got = decided(&table, req);
        if got != *want {
            failed.push(format!("{label}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

/// The checks name what the worker must run, and only for requests past the address filter.
#[test]
fn checks_are_named_for_the_worker() {
    let table = table();
    let (client, upstream) = (client(), upstream());
    let settings = Settings {
        table: &table,
        client: &client,
        upstream: &upstream,
        redirect_port: None,
    };
    let check = |peer: &str, path: &'static str| {
        let view = RequestView {
            method: b"GET",
            scheme: "http",
            authority: b"t.example",
            path: Some(path.as_bytes()),
            query: None,
            target: path.as_bytes(),
            headers: &[],
            request_id: b"",
            body: Body::None,
            expect_continue: false,
            upgrade: None,
            keep_alive: true,
            peer: peer.parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            client_ip: b"",
        };
        let d = decide(&settings, &view, 0, &mut String::new());
        let c = d.checks();
        (c.limit.map(|l| l.key.0), c.auth.map(|a| a.realm.to_string()))
    };
    assert_eq!(check("192.0.2.1:1", "/private"), (Some(7), Some("Staff only".into())));
    assert_eq!(
        check("192.0.2.99:1", "/private"),
        (None, Some("Staff only".into())),
        "exempt"
    );
    assert_eq!(check("192.0.2.1:1", "/"), (None, None));
    assert_eq!(check("192.0.2.1:1", "/internal"), (None, None), "403 before any check");
}

#[test]
fn a_path_that_is_not_utf8_is_refused_before_routing() {
    let table = table();
    let (client, upstream) = (client(), upstream());
    let settings = Settings {
        table: &table,
        client: &client,
        upstream: &upstream,
        redirect_port: None,
    };
    let view = RequestView {
        method: b"GET",
        scheme: "http",
        authority: b"t.example",
        path: Some(b"/caf\xe9"),
        query: None,
        target: b"/caf\xe9",
        headers: &[],
        request_id: b"",
        body: Body::None,
        expect_continue: false,
        upgrade: None,
        keep_alive: true,
        peer: "192.0.2.1:1".parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
        client_ip: b"",
    };
    match decide(&settings, &view, 0, &mut String::new()) {
        Decision::Answer(a) => assert_eq!((a.status, a.reason), (400, "request target is not valid UTF-8")),
        other => panic!("{other:?}"),
    }
}

/// Timeouts and tries: the rule's, else the defaults; tries clamped.
#[test]
fn forward_carries_timeouts_and_tries() {
    let table = table();
    let (client, upstream) = (client(), upstream());
    let settings = Settings {
        table: &table,
        client: &client,
        upstream: &upstream,
        redirect_port: None,
    };
    let forward = |path: &'static str| {
        let view = RequestView {
            method: b"GET",
            scheme: "http",
            authority: b"t.example",
            path: Some(path.as_bytes()),
            query: None,
            target: path.as_bytes(),
            headers: &[],
            request_id: b"",
            body: Body::None,
            expect_continue: false,
            upgrade: None,
            keep_alive: true,
            peer: "192.0.2.1:1".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            client_ip: b"",
        };
        match decide(&settings, &view, 0, &mut String::new()) {
            Decision::Forward(f) => (f.timeouts.connect, f.tries),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(forward("/"), (Duration::from_secs(5), 3));
    assert_eq!(forward("/sticky"), (Duration::from_secs(1), MAX_TRIES));
}

/// A table with Gateway routes on 127.0.0.1:80 (for `g.example`, and the Ingress host
/// `t.example` claimed by an HTTPRoute too) next to the Ingress rules of [`table`].
fn gateway_table() -> RouteTable {
    use crate::routes::gateway::{Action, HeaderMod, Match, PathChange, PathMatch, Redirect, Rewrite, Weighted};
    let mut b = TableBuilder::default();
    let main = backend(&mut b, "main", 9000);
    let gw1 = backend(&mut b, "gw1", 9001);
    let gw2 = backend(&mut b, "gw2", 9002);
    b.rule(Some("t.example"), "/", Prefix, main, "test").unwrap();
    b.rule(Some("i.example"), "/", Prefix, main, "test").unwrap();
    let plain = Action {
        request_headers: None,
        response_headers: None,
        redirect: None,
        cors: None,
        mirrors: Vec::new(),
        rewrite: None,
        backends: vec![Weighted {
            weight: 1,
            backend: Some(gw1),
            headers: None,
        }],
        request_timeout: None,
        backend_timeout: None,
        policy: Arc::new(Policy::default()),
    };
    let local: [std::net::IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
    let mut rule = |host: &str, path: &str, action: Action| {
        let m = Match {
            path: PathMatch::Prefix(path.into()),
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        };
        b.gateway_rule(&local, 80, None, Some(host), m, Arc::new(action), "HTTPRoute test");
    };
    let redirect = |scheme: Option<&str>, hostname: Option<&str>, port, path, status| Action {
        redirect: Some(Box::new(Redirect {
            scheme: scheme.map(Into::into),
            hostname: hostname.map(Into::into),
            port,
            path,
            status,
        })),
        ..plain.clone()
    };
    rule("g.example", "/", plain.clone());
    rule("t.example", "/", plain.clone());
    rule("g.example", "/https", redirect(Some("https"), None, None, None, 301));
    rule(
        "g.example",
        "/elsewhere",
        redirect(None, Some("new.example"), None, None, 302),
    );
    rule("g.example", "/port", redirect(None, None, Some(8080), None, 307));
    rule(
        "g.example",
        "/full",
        redirect(None, None, None, Some(PathChange::Full("/landing".into())), 308),
    );
    rule(
        "g.example",
        "/old",
        redirect(
            Some("http"),
            None,
            Some(80),
            Some(PathChange::Prefix("/new".into())),
            303,
        ),
    );
    let rewrite = |hostname: Option<&str>, path| Action {
        rewrite: Some(Box::new(Rewrite {
            hostname: hostname.map(Into::into),
            path,
        })),
        ..plain.clone()
    };
    rule(
        "g.example",
        "/rw",
        rewrite(None, Some(PathChange::Prefix("/v2".into()))),
    );
    rule(
        "g.example",
        "/rwroot",
        rewrite(None, Some(PathChange::Prefix("/".into()))),
    );
    rule(
        "g.example",
        "/rwfull",
        rewrite(Some("inner.example"), Some(PathChange::Full("/x".into()))),
    );
    rule(
        "g.example",
        "/headers",
        Action {
            request_headers: Some(Box::new(HeaderMod {
                set: vec![("X-Set".into(), "1".into())],
                add: vec![("X-Add".into(), "2".into())],
                remove: vec!["x-drop".into()],
            })),
            backends: vec![Weighted {
                weight: 1,
                backend: Some(gw2),
                headers: Some(Box::new(HeaderMod {
                    set: vec![("x-add".into(), "3".into())],
                    ..HeaderMod::default()
                })),
            }],
            ..plain.clone()
        },
    );
    rule(
        "g.example",
        "/split",
        Action {
            backends: vec![
                Weighted {
                    weight: 0,
                    backend: Some(main),
                    headers: None,
                },
                Weighted {
                    weight: 1,
                    backend: Some(gw1),
                    headers: None,
                },
                Weighted {
                    weight: 1,
                    backend: None,
                    headers: None,
                },
            ],
            ..plain.clone()
        },
    );
    rule(
        "g.example",
        "/none",
        Action {
            backends: Vec::new(),
            ..plain.clone()
        },
    );
    b.build()
}

#[test]
fn gateway_decisions() {
    let table = gateway_table();
    let g = Req {
        host: "g.example",
        ..GET
    };
    #[rustfmt::skip]
    let cases: &[(&str, Req, &str)] = &[
        ("gateway host", Req { target: "/a", ..g }, "→ gw1"),
        ("host port ignored", Req { host: "G.example:80", target: "/a", ..g }, "→ gw1"),
        ("an HTTPRoute wins the host an Ingress claims too", Req { host: "t.example", ..g }, "→ gw1"),
        ("another host on the same address: Ingress", Req { host: "i.example", ..g }, "→ main"),
        ("another address: Ingress only", Req { host: "t.example", local: "127.0.0.2:80", ..g }, "→ main"),
        ("another address, Gateway-only host: 404", Req { local: "127.0.0.2:80", ..g }, "404 no route for this host and path"),
        ("scheme redirect drops the default port", Req { target: "/https/x?q=1", ..g }, "301 Location: https://g.example/https/x?q=1"),
        ("hostname redirect keeps the listener port", Req { host: "g.example:8000", target: "/elsewhere", local: "127.0.0.1:80", ..g }, "302 Location: http://new.example/elsewhere"),
        ("port redirect", Req { target: "/port", ..g }, "307 Location: http://g.example:8080/port"),
        ("full path redirect", Req { target: "/full/a/b", ..g }, "308 Location: http://g.example/landing"),
        ("prefix redirect", Req { target: "/old/a?b", ..g }, "303 Location: http://g.example/new/a?b"),
        ("prefix redirect of the prefix itself", Req { target: "/old", ..g }, "303 Location: http://g.example/new"),
        ("prefix rewrite", Req { target: "/rw/a?x=1", ..g }, "→ gw1 /v2/a?x=1"),
        ("prefix rewrite to /", Req { target: "/rwroot/a", ..g }, "→ gw1 /a"),
        ("prefix rewrite to / of the prefix", Req { target: "/rwroot", ..g }, "→ gw1 /"),
        ("full rewrite and host", Req { target: "/rwfull/a", ..g }, "→ gw1 /x host=inner.example"),
        ("header changes: rule's, then the backendRef's",
            Req { target: "/headers", headers: &[("X-Drop", "a"), ("x-set", "old"), ("Accept", "*/*")], ..g },
            "→ gw2 [Accept=*/* X-Set=1 x-add=3]"),
        ("weight 0 gets nothing", Req { target: "/split", draw: 0, ..g }, "→ gw1"),
        ("unusable backend: 500 for its share", Req { target: "/split", draw: 1, ..g }, "500 route backend is not usable"),
        ("no backendRefs: 500", Req { target: "/none", ..g }, "500 route has no backend"),
    ];
    let mut failed = Vec::new();
    for (label, req, want) in cases {
        let got = decided(&table, req);
        if got != *want {
            failed.push(format!("{label}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

/// A CORS preflight is answered by kedge: the allowed origin, methods, headers and max age; an
/// origin not allowed gets no CORS fields; a request that is not a preflight is forwarded.
#[test]
fn cors_preflights() {
    use crate::routes::gateway::{Action, Cors, Match, PathMatch, Weighted};
    let mut b = TableBuilder::default();
    let gw1 = backend(&mut b, "gw1", 9001);
    let action = Action {
        request_headers: None,
        response_headers: None,
        redirect: None,
        mirrors: Vec::new(),
        cors: Some(Box::new(Cors {
            allow_origins: vec!["https://www.example.com".into(), "https://*.example.org".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["x-a".into()],
            allow_credentials: true,
            max_age: 600,
        })),
        rewrite: None,
        backends: vec![Weighted {
            weight: 1,
            backend: Some(gw1),
            headers: None,
        }],
        request_timeout: None,
        backend_timeout: None,
        policy: Arc::new(Policy::default()),
    };
    let m = Match {
        path: PathMatch::Prefix("/".into()),
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
    };
    b.gateway_rule(&[], 80, None, Some("c.example"), m, Arc::new(action), "HTTPRoute test");
    let table = b.build();
    let (client, upstream) = (client(), upstream());
    let settings = Settings {
        table: &table,
        client: &client,
        upstream: &upstream,
        redirect_port: None,
    };
    let answer = |headers: &[(&'static str, &'static str)], method: &'static str| {
        let headers: Vec<Header<'_>> = headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
        let view = RequestView {
            method: method.as_bytes(),
            scheme: "https",
            authority: b"c.example",
            path: Some(b"/x"),
            query: None,
            target: b"/x",
            headers: &headers,
            request_id: b"",
            body: Body::None,
            expect_continue: false,
            upgrade: None,
            keep_alive: true,
            peer: "192.0.2.1:1".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
            client_ip: b"",
        };
        match decide(&settings, &view, 0, &mut String::new()) {
            Decision::Answer(a) => {
                let mut out = Vec::new();
                crate::worker::respond::write_answer(&mut out, &mut Vec::new(), &a, false);
                let text = String::from_utf8(out).unwrap();
                let mut lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Access-Control-")).collect();
                lines.insert(0, text.lines().next().unwrap_or_default());
                lines.join("\n")
            }
            Decision::Forward(f) => format!("→ {}", f.routed.backend.name),
        }
    };
    let preflight = [
        ("Origin", "https://api.example.org"),
        ("Access-Control-Request-Method", "PUT"),
        ("Access-Control-Request-Headers", "x-token"),
    ];
    assert_eq!(
        answer(&preflight, "OPTIONS"),
        "HTTP/1.1 200 OK\n\
         Access-Control-Allow-Origin: https://api.example.org\n\
         Access-Control-Allow-Credentials: true\n\
         Access-Control-Allow-Methods: GET, PUT\n\
         Access-Control-Allow-Headers: x-token\n\
         Access-Control-Max-Age: 600"
    );
    let other = [
        ("Origin", "https://evil.example"),
        ("Access-Control-Request-Method", "PUT"),
    ];
    assert_eq!(answer(&other, "OPTIONS"), "HTTP/1.1 200 OK");
    assert_eq!(answer(&[("Origin", "https://www.example.com")], "OPTIONS"), "→ gw1");
    assert_eq!(answer(&preflight, "GET"), "→ gw1");
}

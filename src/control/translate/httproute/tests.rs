//! HTTPRoute translation as data: routes written as JSON, attached by hand (as `gateway.rs`
//! attaches them), translated next to an Ingress, then requests looked up in the table.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::control::gateway_types::{HttpRoute, Listener, ReferenceGrant};
use crate::control::translate::gateway::Bind;
use crate::control::translate::ingress::tests::*;
use crate::routes::RouteTable;
use crate::routes::gateway::{Lookup, Request};

fn route(ns: &str, name: &str, created: &str, spec: Value) -> Arc<HttpRoute> {
    obj(json!({"metadata": {"namespace": ns, "name": name, "creationTimestamp": created}, "spec": spec}))
}

fn listener(hostname: Option<&str>) -> Listener {
    Listener {
        name: "http".into(),
        hostname: hostname.map(Into::into),
        port: 80,
        protocol: "HTTP".into(),
        tls: None,
        allowed_routes: None,
    }
}

struct Gw {
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    grants: Vec<Arc<ReferenceGrant>>,
    ingresses: Vec<Arc<k8s_openapi::api::networking::v1::Ingress>>,
}

use k8s_openapi::api::core::v1::Service;

fn world() -> Gw {
    Gw {
        services: vec![
            web_service("web", "shop"),
            web_service("web", "cart"),
            web_service("other", "billing"),
        ],
        slices: vec![
            ready_slice("web", "shop", &["192.0.2.1"]),
            ready_slice("web", "cart", &["192.0.2.2"]),
            ready_slice("other", "billing", &["192.0.2.3"]),
        ],
        grants: Vec::new(),
        ingresses: Vec::new(),
    }
}

/// Translates `routes`, each attached to one listener (hostname `listener_host`) of a Gateway
/// on 127.0.0.1:80 with the route's own hostnames, after the Ingresses.
fn run(
    g: &Gw,
    listener_host: Option<&str>,
    routes: &[Arc<HttpRoute>],
) -> (RouteTable, Vec<String>, Vec<(String, String, String)>) {
    let classes = vec![class("kedge", OURS, false)];
    let objs = Objects {
        ingresses: &g.ingresses,
        classes: &classes,
        services: &g.services,
        slices: &g.slices,
        reference_grants: &g.grants,
        ..Objects::default()
    };
    let l = listener(listener_host);
    let attached: Vec<Attached<'_>> = routes
        .iter()
        .map(|r| Attached {
            bind: Arc::new(Bind {
                addresses: vec!["127.0.0.1".parse().unwrap()],
                port: 80,
                tls: false,
            }),
            gateway: "infra/gw".into(),
            listener: &l,
            route: RouteRef::Http(r),
            hostnames: r.spec.hostnames.clone().into(),
        })
        .collect();
    let mut b = TableBuilder::default();
    let mut warnings: Vec<String> = crate::control::translate::translate(&mut b, &spec(), &objs)
        .warnings
        .into_iter()
        .map(|w| format!("{}: {}", w.object, w.message))
        .collect();
    warnings.extend(
        translate(&mut b, &spec(), &objs, &attached)
            .warnings
            .into_iter()
            .map(|w| format!("{}: {}", w.object, w.message)),
    );
    let overlaps = b.gateway_overlaps();
    (b.build(), warnings, overlaps)
}

/// The backend (name) a request gets, `500` for an unusable share, `404`, `ingress`, or
/// `redirect <status>`.
fn got(t: &RouteTable, host: &str, method: &str, target: &str, headers: &[(&str, &str)], draw: u64) -> String {
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
    let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
    match t.gateway_lookup(local, host.as_bytes(), &req) {
        Lookup::NotGateway => "ingress".into(),
        Lookup::NoRule => "404".into(),
        Lookup::Routed(r) => {
            if let Some(rd) = &r.action.redirect {
                return format!("redirect {}", rd.status);
            }
            match r.action.pick(draw) {
                None => "500".into(),
                Some(w) => match w.backend {
                    None => "500".into(),
                    Some(id) => {
                        let b = &t.backends[id];
                        format!("{} {:?}", b.name, b.endpoints)
                    }
                },
            }
        }
    }
}

fn backend(name: &str, port: i64) -> Value {
    json!({"name": name, "port": port})
}

/// Host, method, target, headers, and what answers.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn matches_hostnames_and_backends() {
    let g = world();
    let r1 = route(
        "web",
        "shop",
        T1,
        json!({
            "hostnames": ["shop.example"],
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}], "backendRefs": [backend("cart", 80)]},
                {"matches": [{"path": {"type": "Exact", "value": "/exact"}, "method": "GET"}], "backendRefs": [backend("cart", 80)]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/item/[0-9]+"}}], "backendRefs": [backend("cart", 80)]},
                {"matches": [{"headers": [{"name": "X-Env", "value": "canary"}]}, {"queryParams": [{"name": "v", "value": "2", "type": "Exact"}]}],
                 "backendRefs": [backend("cart", 80)]},
                {"backendRefs": [backend("shop", 80)]},
            ],
        }),
    );
    let (t, warnings, _) = run(&g, None, &[r1]);
    assert_eq!(warnings, Vec::<String>::new());
    let cart = "c1/web/cart:80 [192.0.2.2:8080]";
    let shop = "c1/web/shop:80 [192.0.2.1:8080]";
    #[rustfmt::skip]
    let cases: &[Case<'_>] = &[
        ("shop.example", "GET", "/", &[], shop),
        ("shop.example", "GET", "/cart/x", &[], cart),
        ("shop.example", "GET", "/cartx", &[], shop),
        ("shop.example", "GET", "/exact", &[], cart),
        ("shop.example", "POST", "/exact", &[], shop),
        ("shop.example", "GET", "/item/7", &[], cart),
        ("shop.example", "GET", "/item/7/8", &[], shop),
        ("shop.example", "GET", "/x", &[("x-env", "canary")], cart),
        ("shop.example", "GET", "/x?v=2", &[], cart),
        ("shop.example", "GET", "/x?V=2", &[], shop),
        ("other.example", "GET", "/", &[], "ingress"),
    ];
    for (host, method, target, headers, want) in cases {
        assert_eq!(
            got(&t, host, method, target, headers, 0),
            *want,
            "{host} {method} {target} {headers:?}"
        );
    }
}

#[test]
fn weights_and_unusable_backends() {
    let g = world();
    let r = route(
        "web",
        "split",
        T1,
        json!({
            "rules": [
                {"matches": [{"path": {"value": "/w"}}], "backendRefs": [
                    {"name": "shop", "port": 80, "weight": 0},
                    {"name": "cart", "port": 80, "weight": 1},
                    {"name": "missing", "port": 80, "weight": 1},
                ]},
                {"matches": [{"path": {"value": "/kind"}}], "backendRefs": [{"name": "x", "kind": "Bucket", "group": "example.com", "port": 80}]},
                {"matches": [{"path": {"value": "/cross"}}], "backendRefs": [{"name": "billing", "namespace": "other", "port": 80}]},
                {"matches": [{"path": {"value": "/noport"}}], "backendRefs": [{"name": "shop"}]},
                {"matches": [{"path": {"value": "/none"}}]},
            ],
        }),
    );
    let (t, warnings, _) = run(&g, None, std::slice::from_ref(&r));
    let cart = "c1/web/cart:80 [192.0.2.2:8080]";
    assert_eq!(got(&t, "a.example", "GET", "/w", &[], 0), cart);
    assert_eq!(got(&t, "a.example", "GET", "/w", &[], 1), "500");
    assert_eq!(got(&t, "a.example", "GET", "/kind", &[], 0), "500");
    assert_eq!(got(&t, "a.example", "GET", "/cross", &[], 0), "500");
    assert_eq!(got(&t, "a.example", "GET", "/noport", &[], 0), "500");
    assert_eq!(got(&t, "a.example", "GET", "/none", &[], 0), "500");
    assert_eq!(got(&t, "a.example", "GET", "/elsewhere", &[], 0), "404");
    // Reported by `gateway.rs` (ResolvedRefs), not twice.
    assert_eq!(warnings, Vec::<String>::new());
    // With a ReferenceGrant in the target namespace, the cross-namespace one is served.
    let mut g = world();
    g.grants.push(obj(json!({
        "metadata": {"namespace": "other", "name": "g"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "web"}],
                 "to": [{"group": "", "kind": "Service"}]},
    })));
    let (t, _, _) = run(&g, None, &[r]);
    assert_eq!(
        got(&t, "a.example", "GET", "/cross", &[], 0),
        "c1/other/billing:80 [192.0.2.3:8080]"
    );
}

#[test]
fn older_routes_win_ties_and_filters_are_checked() {
    let g = world();
    let young = route(
        "web",
        "a-young",
        T2,
        json!({"rules": [{"backendRefs": [backend("cart", 80)]}]}),
    );
    let old = route(
        "web",
        "z-old",
        T1,
        json!({"rules": [{"backendRefs": [backend("shop", 80)]}]}),
    );
    let bad = route(
        "web",
        "bad",
        T3,
        json!({
            "hostnames": ["bad.example"],
            "rules": [
                {"matches": [{"path": {"value": "/mirror"}}], "filters": [{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Thing", "name": "x"}}],
                 "backendRefs": [backend("shop", 80)]},
                {"matches": [{"path": {"type": "Exact", "value": "/prefix"}}],
                 "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/x"}}}],
                 "backendRefs": [backend("shop", 80)]},
                {"matches": [{"path": {"type": "RegularExpression", "value": "(unclosed"}}], "backendRefs": [backend("shop", 80)]},
                {"matches": [{"path": {"value": "/redirect"}}],
                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "statusCode": 301}}]},
                {"matches": [{"path": {"value": "/slow"}}], "timeouts": {"request": "1m30s", "backendRequest": "500ms"},
                 "backendRefs": [backend("shop", 80)]},
            ],
        }),
    );
    let (t, warnings, _) = run(&g, None, &[young, old, bad]);
    assert_eq!(
        got(&t, "a.example", "GET", "/", &[], 0),
        "c1/web/shop:80 [192.0.2.1:8080]"
    );
    assert_eq!(got(&t, "bad.example", "GET", "/mirror", &[], 0), "500");
    assert_eq!(got(&t, "bad.example", "GET", "/prefix", &[], 0), "500");
    assert_eq!(got(&t, "bad.example", "GET", "/redirect", &[], 0), "redirect 301");
    assert_eq!(got(&t, "bad.example", "GET", "/other", &[], 0), "404");
    let req = Request {
        method: b"GET",
        path: "/slow",
        query: None,
        headers: &[],
    };
    match t.gateway_lookup("127.0.0.1:80".parse().unwrap(), b"bad.example", &req) {
        Lookup::Routed(r) => assert_eq!(
            (r.action.request_timeout, r.action.backend_timeout),
            (Some(Duration::from_secs(90)), Some(Duration::from_millis(500)))
        ),
        other => panic!("{other:?}"),
    }
    let o = "HTTPRoute web/bad: ";
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(&format!("{o}rule 0: filter ExtensionRef is not supported")),
        "{warnings:#?}"
    );
    assert_eq!(
        warnings[1],
        format!("{o}rule 1: ReplacePrefixMatch needs PathPrefix matches only; answering 500")
    );
    assert!(
        warnings[2].starts_with(&format!("{o}rule 2 match 0: not a regex")),
        "{warnings:#?}"
    );
}

#[test]
fn listener_hostnames_and_ingress_overlap() {
    let mut g = world();
    g.ingresses.push(ours("web", "legacy", T1, shop_rule("shop.example")));
    let r = route(
        "web",
        "shop",
        T2,
        json!({"hostnames": ["shop.example"], "rules": [{"backendRefs": [backend("cart", 80)]}]}),
    );
    let (t, _, overlaps) = run(&g, Some("*.example"), &[r]);
    assert_eq!(
        got(&t, "shop.example", "GET", "/", &[], 0),
        "c1/web/cart:80 [192.0.2.2:8080]"
    );
    // `x.example` selects the listener `*.example`: its routes (none for it) or a 404, not
    // the Ingress.
    assert_eq!(got(&t, "x.example", "GET", "/", &[], 0), "404");
    assert_eq!(
        overlaps,
        [(
            "shop.example".to_owned(),
            "HTTPRoute web/shop of cluster c1".to_owned(),
            "Ingress web/legacy of cluster c1".to_owned()
        )]
    );
    // The Ingress and the HTTPRoute share the backend of the same Service port.
    let shop = t.backend_id("c1/web/shop:80");
    assert!(shop.is_some());
}

#[test]
fn durations() {
    let d = |s: &str| duration(Some(s));
    assert_eq!(d("10s"), Ok(Some(Duration::from_secs(10))));
    assert_eq!(d("500ms"), Ok(Some(Duration::from_millis(500))));
    assert_eq!(d("1h2m"), Ok(Some(Duration::from_secs(3720))));
    assert_eq!(d("1h2m3s4ms"), Ok(Some(Duration::from_millis(3_723_004))));
    assert_eq!(d("0s"), Ok(None));
    assert_eq!(duration(None), Ok(None));
    for bad in ["", "10", "s", "1d", "1.5s", "123456s", "1h1h1h1h1h", "-1s"] {
        assert!(d(bad).is_err(), "{bad}");
    }
}

#[test]
fn grpc_routes_match_service_and_method_and_speak_http2() {
    let g = world();
    let r: Arc<crate::control::gateway_types::GrpcRoute> = obj(json!({
        "metadata": {"namespace": "web", "name": "rpc", "creationTimestamp": T1},
        "spec": {"rules": [
            {"matches": [{"method": {"service": "shop.Cart", "method": "Add"}}], "backendRefs": [backend("cart", 80)]},
            {"matches": [{"method": {"service": "shop.Cart"}}], "backendRefs": [backend("shop", 80)]},
            {"matches": [{"method": {"method": "Remove"}}], "backendRefs": [backend("cart", 80)]},
            {"matches": [{"method": {"method": "Check"}, "headers": [{"name": "x-any", "value": "1"}]}],
             "backendRefs": [backend("cart", 80)]},
            {"matches": [{"headers": [{"name": "x-any", "value": "1"}]}], "backendRefs": [backend("shop", 80)]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "shop\\.B.*", "method": "Get.*"}},
                         {"headers": [{"name": "x-route", "value": "billing"}]}],
             "backendRefs": [backend("billing-missing", 80)]},
        ]},
    }));
    let classes = vec![class("kedge", OURS, false)];
    let objs = Objects {
        classes: &classes,
        services: &g.services,
        slices: &g.slices,
        ..Objects::default()
    };
    let l = listener(None);
    let attached = [Attached {
        bind: Arc::new(Bind {
            addresses: Vec::new(),
            port: 80,
            tls: false,
        }),
        gateway: "infra/gw".into(),
        listener: &l,
        route: RouteRef::Grpc(&r),
        hostnames: Arc::from([]),
    }];
    let mut b = TableBuilder::default();
    let out = translate(&mut b, &spec(), &objs, &attached);
    assert_eq!(out.warnings, []);
    assert_eq!(out.refusals, Default::default());
    let t = b.build();
    let cart = "c1/web/cart:80 [192.0.2.2:8080]";
    let shop = "c1/web/shop:80 [192.0.2.1:8080]";
    assert_eq!(got(&t, "a.example", "POST", "/shop.Cart/Add", &[], 0), cart);
    // Service characters first: the service-only rule beats the method-only one.
    assert_eq!(got(&t, "a.example", "POST", "/shop.Cart/Remove", &[], 0), shop);
    assert_eq!(got(&t, "a.example", "POST", "/shop.Other/Remove", &[], 0), cart);
    // Method characters before header matches.
    assert_eq!(got(&t, "a.example", "POST", "/x.Y/Check", &[("x-any", "1")], 0), cart);
    assert_eq!(got(&t, "a.example", "POST", "/x.Y/Other", &[("x-any", "1")], 0), shop);
    assert_eq!(got(&t, "a.example", "POST", "/shop.Billing/GetInvoice", &[], 0), "500");
    assert_eq!(got(&t, "a.example", "POST", "/shop.Billing/Pay", &[], 0), "404");
    assert_eq!(
        got(&t, "a.example", "POST", "/x.Y/Z", &[("x-route", "billing")], 0),
        "500"
    );
    let id = t.backend_id("c1/web/cart:80").unwrap();
    assert!(t.backends[id].h2, "gRPC backends speak HTTP/2");
}

/// Overlaps are reported for wildcards too: a Gateway `*.suffix` over an Ingress's exact name
/// or same/narrower wildcard, an Ingress `*.suffix` over a route's name one label under it; a
/// name two labels under an Ingress wildcard (which covers one label) is no overlap.
#[test]
fn wildcard_overlaps_with_ingresses_are_reported() {
    let mut g = world();
    for (i, host) in [
        "a.wild.example",
        "*.wide.example",
        "*.same.example",
        "*.deep.example",
        "*.x.under.example",
    ]
    .iter()
    .enumerate()
    {
        g.ingresses.push(ours("web", &format!("ing{i}"), T1, shop_rule(host)));
    }
    let rules = json!([{"backendRefs": [backend("cart", 80)]}]);
    let routes: Vec<Arc<HttpRoute>> = [
        ("wild", "*.wild.example"),
        ("wide", "b.wide.example"),
        ("same", "*.same.example"),
        ("deep", "x.y.deep.example"),
        ("under", "*.under.example"),
    ]
    .iter()
    .map(|(name, host)| route("web", name, T2, json!({"hostnames": [host], "rules": rules})))
    .collect();
    let (_, _, overlaps) = run(&g, None, &routes);
    let got: Vec<(&str, &str, &str)> = overlaps
        .iter()
        .map(|(h, r, o)| (h.as_str(), r.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "*.same.example",
                "HTTPRoute web/same of cluster c1",
                "Ingress web/ing2 of cluster c1"
            ),
            (
                "*.x.under.example",
                "HTTPRoute web/under of cluster c1",
                "Ingress web/ing4 of cluster c1"
            ),
            (
                "a.wild.example",
                "HTTPRoute web/wild of cluster c1",
                "Ingress web/ing0 of cluster c1"
            ),
            (
                "b.wide.example",
                "HTTPRoute web/wide of cluster c1",
                "Ingress web/ing1 of cluster c1"
            ),
        ]
    );
}

/// The action a request on `host` reaches (GET, no headers), to compare by address.
fn action_of<'t>(t: &'t RouteTable, host: &str, path: &str) -> &'t Action {
    let req = Request {
        method: b"GET",
        path,
        query: None,
        headers: &[],
    };
    match t.gateway_lookup("127.0.0.1:80".parse().unwrap(), host.as_bytes(), &req) {
        Lookup::Routed(r) => r.action,
        other => panic!("{host}{path} not routed: {other:?}"),
    }
}

/// Rules of one route that do the same share one action (and every rule of a route one
/// policy); rules that differ, and equal rules of another route, do not.
#[test]
fn rules_that_do_the_same_share_one_action() {
    let g = world();
    let to_shop = json!([{"name": "shop", "port": 80}]);
    let a = route(
        "web",
        "a",
        "2025-01-01T00:00:00Z",
        json!({"hostnames": ["a.example.com"], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to_shop},
            {"matches": [{"path": {"type": "Exact", "value": "/healthz"}}], "backendRefs": to_shop},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/cart"}}],
             "backendRefs": [{"name": "cart", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/h"}}], "backendRefs": to_shop,
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]},
        ]}),
    );
    let b = route(
        "web",
        "b",
        "2025-01-01T00:00:01Z",
        json!({"hostnames": ["b.example.com"], "rules": [{"backendRefs": to_shop}]}),
    );
    let (t, warnings, _) = run(&g, None, &[a, b]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let root = action_of(&t, "a.example.com", "/");
    assert!(std::ptr::eq(root, action_of(&t, "a.example.com", "/healthz")));
    let cart = action_of(&t, "a.example.com", "/cart");
    let header = action_of(&t, "a.example.com", "/h");
    assert!(!std::ptr::eq(root, cart));
    assert!(!std::ptr::eq(root, header));
    assert!(header.request_headers.is_some() && root.request_headers.is_none());
    assert!(Arc::ptr_eq(&root.policy, &cart.policy), "one policy per route");
    let other = action_of(&t, "b.example.com", "/");
    assert!(!std::ptr::eq(root, other), "another route's rule");
    assert_eq!(&*other.policy.host, "b.example.com");
    assert_eq!(
        got(&t, "a.example.com", "GET", "/cart/x", &[], 0),
        "c1/web/cart:80 [192.0.2.2:8080]"
    );
    assert_eq!(
        got(&t, "a.example.com", "GET", "/healthz", &[], 0),
        "c1/web/shop:80 [192.0.2.1:8080]"
    );
}

//! Translation as data: objects written as JSON (as `kubectl get -o json` would show them) go
//! through `translate` into a real table; each case is a request (host, path) and the backend
//! name and endpoints that must answer it, plus the exact warnings.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::control::translate::{UpstreamMode, service_endpoints};
use crate::routes::RouteTable;

// ---- objects ----

pub(in crate::control::translate) const OURS: &str = "kedge.dev/ingress-controller";
pub(in crate::control::translate) const T1: &str = "2024-01-01T00:00:00Z";
pub(in crate::control::translate) const T2: &str = "2024-02-01T00:00:00Z";
pub(in crate::control::translate) const T3: &str = "2024-03-01T00:00:00Z";

pub(in crate::control::translate) fn obj<T: DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).unwrap_or_else(|e| panic!("bad test object: {e}")))
}

pub(in crate::control::translate) fn ingress(ns: &str, name: &str, created: &str, spec: Value) -> Arc<Ingress> {
    obj(json!({
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
        "spec": spec,
    }))
}

/// Our class's Ingress with the given rules.
pub(in crate::control::translate) fn ours(ns: &str, name: &str, created: &str, rules: Value) -> Arc<Ingress> {
    ingress(ns, name, created, json!({"ingressClassName": "kedge", "rules": rules}))
}

/// Adds annotations to any object.
pub(in crate::control::translate) fn annotated<T: Metadata<Ty = ObjectMeta> + Clone>(
    o: Arc<T>,
    annotations: Value,
) -> Arc<T> {
    let mut o = (*o).clone();
    o.metadata_mut().annotations = Some(serde_json::from_value(annotations).expect("string map"));
    Arc::new(o)
}

pub(in crate::control::translate) fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
    obj(json!({
        "metadata": {
            "name": name,
            "annotations": {"ingressclass.kubernetes.io/is-default-class": default.to_string()},
        },
        "spec": {"controller": controller},
    }))
}

pub(in crate::control::translate) fn service(ns: &str, name: &str, spec: Value) -> Arc<Service> {
    obj(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
}

/// A ClusterIP Service with one port `http` (80 → 8080, nodePort 30080).
pub(in crate::control::translate) fn web_service(ns: &str, name: &str) -> Arc<Service> {
    service(
        ns,
        name,
        json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
    )
}

pub(in crate::control::translate) fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    ports: Value,
    endpoints: Value,
) -> Arc<EndpointSlice> {
    obj(json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
}

/// One IPv4 slice of `svc` with port `http` = 8080 and these ready pod IPs.
pub(in crate::control::translate) fn ready_slice(ns: &str, svc: &str, ips: &[&str]) -> Arc<EndpointSlice> {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    slice(
        ns,
        &format!("{svc}-abc"),
        svc,
        "IPv4",
        json!([{"name": "http", "port": 8080}]),
        json!(eps),
    )
}

pub(in crate::control::translate) fn node(name: &str, ready: &str, unschedulable: bool, addresses: Value) -> Arc<Node> {
    obj(json!({
        "metadata": {"name": name},
        "spec": {"unschedulable": unschedulable},
        "status": {"conditions": [{"type": "Ready", "status": ready}], "addresses": addresses},
    }))
}

pub(in crate::control::translate) fn internal(ip: &str) -> Value {
    json!([{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "n.example.com"}])
}

/// A rule: host (or none) and paths.
pub(in crate::control::translate) fn rule(host: Option<&str>, paths: Value) -> Value {
    match host {
        Some(h) => json!({"host": h, "http": {"paths": paths}}),
        None => json!({"http": {"paths": paths}}),
    }
}

/// A path to `svc` at `port`: a number, or a port name.
pub(in crate::control::translate) fn path(p: &str, path_type: &str, svc: &str, port: Value) -> Value {
    json!({"path": p, "pathType": path_type, "backend": backend(svc, port)})
}

pub(in crate::control::translate) fn backend(svc: &str, port: Value) -> Value {
    let port = if port.is_number() {
        json!({"number": port})
    } else {
        json!({"name": port})
    };
    json!({"service": {"name": svc, "port": port}})
}

// ---- running ----

pub(in crate::control::translate) fn spec() -> ClusterSpec {
    ClusterSpec {
        name: "c1".into(),
        ingress_class: "kedge".into(),
        controller: OURS.into(),
        upstream: UpstreamMode::Pods,
        node_address_type: "InternalIP".into(),
    }
}

pub(in crate::control::translate) fn nodeports() -> ClusterSpec {
    ClusterSpec {
        upstream: UpstreamMode::NodePorts,
        ..spec()
    }
}

#[derive(Default)]
pub(in crate::control::translate) struct World {
    pub(in crate::control::translate) ingresses: Vec<Arc<Ingress>>,
    pub(in crate::control::translate) classes: Vec<Arc<IngressClass>>,
    pub(in crate::control::translate) services: Vec<Arc<Service>>,
    pub(in crate::control::translate) slices: Vec<Arc<EndpointSlice>>,
    pub(in crate::control::translate) nodes: Vec<Arc<Node>>,
    pub(in crate::control::translate) secrets: Vec<Arc<Secret>>,
}

impl World {
    /// A world with our IngressClass `kedge` (not default).
    pub(in crate::control::translate) fn new() -> Self {
        World {
            classes: vec![class("kedge", OURS, false)],
            ..World::default()
        }
    }

    pub(in crate::control::translate) fn run(&self, spec: &ClusterSpec) -> (RouteTable, Outcome) {
        // A kind added later is empty here until a test needs it.
        #[allow(clippy::needless_update)]
        let objs = Objects {
            ingresses: &self.ingresses,
            classes: &self.classes,
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
            secrets: &self.secrets,
            ..Objects::default()
        };
        let mut b = TableBuilder::default();
        let out = translate(&mut b, spec, &objs);
        (b.build(), out)
    }
}

/// What answers a request: backend name and endpoints.
pub(in crate::control::translate) type Want<'a> = Option<(&'a str, &'a [&'a str])>;

pub(in crate::control::translate) fn check_routes(table: &RouteTable, cases: &[(&str, &str, Want<'_>)]) {
    for &(host, path, want) in cases {
        let got = table.route(host.as_bytes(), path).map(|b| {
            (
                b.name.to_string(),
                b.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )
        });
        let want = want.map(|(n, eps)| (n.to_owned(), eps.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()));
        assert_eq!(got, want, "host {host:?} path {path:?}");
    }
}

pub(in crate::control::translate) fn check_warnings(out: &Outcome, want: &[&str]) {
    let got: Vec<String> = out
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.object, w.message))
        .collect();
    assert_eq!(got, want);
}

pub(in crate::control::translate) fn check_served(out: &Outcome, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want.iter().map(|&(a, b)| (a.into(), b.into())).collect();
    assert_eq!(*out.served, *want);
}

pub(in crate::control::translate) const SHOP: Want<'static> = Some(("c1/web/shop:80", &["192.0.2.1:8080"]));

/// A world with Service web/shop (one ready pod 192.0.2.1) and the given Ingresses.
pub(in crate::control::translate) fn shop_world(ingresses: Vec<Arc<Ingress>>) -> World {
    World {
        ingresses,
        services: vec![web_service("web", "shop")],
        slices: vec![ready_slice("web", "shop", &["192.0.2.1"])],
        ..World::new()
    }
}

pub(in crate::control::translate) fn shop_rule(host: &str) -> Value {
    json!([rule(Some(host), json!([path("/", "Prefix", "shop", json!(80))]))])
}

/// A rule routing `host` to Service `svc` port 80.
fn shop_rule_to(host: &str, svc: &str) -> Value {
    json!([rule(Some(host), json!([path("/", "Prefix", svc, json!(80))]))])
}

// ---- classes ----

#[test]
fn class_selection() {
    let with_class = |name: &str, class: &str| {
        ingress(
            "web",
            name,
            T1,
            json!({"ingressClassName": class, "rules": shop_rule(&format!("{name}.example.com"))}),
        )
    };
    let legacy = |name: &str, class: &str| {
        annotated(
            ingress(
                "web",
                name,
                T1,
                json!({"rules": shop_rule(&format!("{name}.example.com"))}),
            ),
            json!({"kubernetes.io/ingress.class": class}),
        )
    };
    let classless = ingress("web", "none", T1, json!({"rules": shop_rule("none.example.com")}));
    let ingresses = vec![
        with_class("mine", "kedge"),
        with_class("renamed", "edge-b"), // another class name, but our controller
        with_class("theirs", "nginx"),
        with_class("unknown", "missing"),
        legacy("legacy", "kedge"),
        legacy("legacy-nginx", "nginx"),
        classless.clone(),
        // The field wins over the annotation (the API refuses both only when they differ).
        annotated(
            with_class("field-wins", "nginx"),
            json!({"kubernetes.io/ingress.class": "kedge"}),
        ),
    ];
    let classes = vec![
        class("kedge", OURS, false),
        class("edge-b", OURS, false),
        class("nginx", "k8s.io/ingress-nginx", true),
    ];
    let w = World {
        classes: classes.clone(),
        ..shop_world(ingresses.clone())
    };
    let (table, out) = w.run(&spec());
    check_served(&out, &[("web", "legacy"), ("web", "mine"), ("web", "renamed")]);
    check_warnings(&out, &[]);
    check_routes(
        &table,
        &[
            ("mine.example.com", "/", SHOP),
            ("renamed.example.com", "/", SHOP),
            ("legacy.example.com", "/", SHOP),
            ("theirs.example.com", "/", None),
            ("unknown.example.com", "/", None),
            ("legacy-nginx.example.com", "/", None),
            ("none.example.com", "/", None),
        ],
    );

    // Once one of *our* classes is the default, class-less Ingresses are ours too (nginx's
    // default class above did not make them nginx's business to kedge).
    let mut classes = classes;
    classes[1] = class("edge-b", OURS, true);
    let w = World {
        classes,
        ..shop_world(ingresses)
    };
    let (table, out) = w.run(&spec());
    check_served(
        &out,
        &[("web", "legacy"), ("web", "mine"), ("web", "none"), ("web", "renamed")],
    );
    check_routes(
        &table,
        &[("none.example.com", "/", SHOP), ("theirs.example.com", "/", None)],
    );
}

#[test]
fn our_class_name_without_an_ingress_class_is_reported() {
    let w = World {
        classes: vec![],
        ..shop_world(vec![ours("web", "a", T1, shop_rule("a.example.com"))])
    };
    let (table, out) = w.run(&spec());
    check_served(&out, &[]);
    check_warnings(
        &out,
        &[
            "Ingress web/a: ingressClassName \"kedge\" names no IngressClass; create one with controller \
           \"kedge.dev/ingress-controller\" for kedge to serve this Ingress",
        ],
    );
    check_routes(&table, &[("a.example.com", "/", None)]);
}

// ---- hosts ----

#[test]
fn hosts_exact_wildcard_and_any() {
    let w = shop_world(vec![
        ours("web", "exact", T1, shop_rule("Shop.Example.COM")),
        ingress(
            "web",
            "wild",
            T2,
            json!({"ingressClassName": "kedge", "rules": [
                rule(Some("*.apps.example.com"), json!([path("/", "Prefix", "shop", json!(80))])),
                rule(None, json!([path("/any", "Prefix", "shop", json!(80))])),
                rule(Some("bad_host!.example.com"), json!([path("/", "Prefix", "shop", json!(80))])),
                rule(Some("*"), json!([path("/", "Prefix", "shop", json!(80))])),
                {"host": "tls-only.example.com"},
            ]}),
        ),
    ]);
    let (table, out) = w.run(&spec());
    check_routes(
        &table,
        &[
            ("shop.example.com", "/", SHOP),
            ("SHOP.example.com:8443", "/cart", SHOP),
            ("a.apps.example.com", "/", SHOP),
            ("b.a.apps.example.com", "/", None),
            ("apps.example.com", "/", None),
            ("other.example.org", "/any/x", SHOP),
            ("other.example.org", "/", None),
            ("tls-only.example.com", "/", None),
        ],
    );
    check_warnings(
        &out,
        &[
            "Ingress web/wild: host \"*\" is not a DNS name or *.suffix wildcard; rule ignored",
            "Ingress web/wild: host \"bad_host!.example.com\" is not a DNS name or *.suffix wildcard; rule ignored",
        ],
    );
    check_served(&out, &[("web", "exact"), ("web", "wild")]);
}

// ---- paths ----

#[test]
fn path_types() {
    let paths = json!([
        path("/exact", "Exact", "shop", json!(80)),
        path("/prefix/", "Prefix", "shop", json!(80)),
        path("/impl", "ImplementationSpecific", "api", json!(80)),
        {"pathType": "ImplementationSpecific", "backend": backend("root", json!(80))},
        path("relative", "Prefix", "shop", json!(80)),
        path("/weird", "Regex", "shop", json!(80)),
        {"path": "/untyped", "backend": backend("shop", json!(80))},
    ]);
    let ing = ours("web", "paths", T1, json!([rule(Some("shop.example.com"), paths)]));
    let mut w = shop_world(vec![ing]);
    w.services
        .extend([web_service("web", "api"), web_service("web", "root")]);
    w.slices.extend([
        ready_slice("web", "api", &["192.0.2.2"]),
        ready_slice("web", "root", &["192.0.2.3"]),
    ]);
    let (table, out) = w.run(&spec());
    let api = Some(("c1/web/api:80", &["192.0.2.2:8080"][..]));
    let root = Some(("c1/web/root:80", &["192.0.2.3:8080"][..]));
    check_routes(
        &table,
        &[
            ("shop.example.com", "/exact", SHOP),
            ("shop.example.com", "/exact/", root),
            ("shop.example.com", "/exactly", root),
            ("shop.example.com", "/prefix", SHOP),
            ("shop.example.com", "/prefix/a/b", SHOP),
            ("shop.example.com", "/prefixes", root),
            ("shop.example.com", "/impl/x", api),
            ("shop.example.com", "/implx", root),
            ("shop.example.com", "/relative", root),
            ("shop.example.com", "/untyped", root),
        ],
    );
    check_warnings(
        &out,
        &[
            "Ingress web/paths: host shop.example.com: path \"/untyped\" has no pathType; path ignored",
            "Ingress web/paths: host shop.example.com: path \"/weird\" has unknown pathType \"Regex\"; path ignored",
            "Ingress web/paths: host shop.example.com: path \"relative\" does not start with '/'; path ignored",
        ],
    );
}

#[test]
fn rules_for_one_host_merge_across_ingresses_longest_match_wins() {
    let mut w = shop_world(vec![
        ours(
            "web",
            "shop",
            T2,
            json!([rule(
                Some("example.com"),
                json!([path("/", "Prefix", "shop", json!(80))])
            )]),
        ),
        ours(
            "api",
            "api",
            T1,
            json!([rule(
                Some("example.com"),
                json!([
                    path("/api", "Prefix", "api", json!(80)),
                    path("/api/v1/health", "Exact", "api", json!(80)),
                ])
            )]),
        ),
    ]);
    w.services.push(web_service("api", "api"));
    w.slices.push(ready_slice("api", "api", &["198.51.100.7"]));
    let (table, out) = w.run(&spec());
    let api = Some(("c1/api/api:80", &["198.51.100.7:8080"][..]));
    check_routes(
        &table,
        &[
            ("example.com", "/", SHOP),
            ("example.com", "/apis", SHOP),
            ("example.com", "/api", api),
            ("example.com", "/api/v1/health", api),
            ("example.com", "/cart", SHOP),
        ],
    );
    check_warnings(&out, &[]);
    check_served(&out, &[("api", "api"), ("web", "shop")]);
}

#[test]
fn conflict_goes_to_the_oldest_and_names_both() {
    let mut w = shop_world(vec![
        // Listed youngest first: order in the store must not matter.
        ours(
            "web",
            "young",
            T3,
            json!([rule(
                Some("example.com"),
                json!([path("/", "Prefix", "other", json!(80))])
            )]),
        ),
        ours("web", "old", T1, shop_rule("example.com")),
        // Same age as web/old: the name breaks the tie, so web/old wins again; and its other
        // rule still goes in, so it is served.
        ours(
            "web",
            "same-age",
            T1,
            json!([rule(
                Some("example.com"),
                json!([
                    path("/", "Prefix", "other", json!(80)),
                    path("/other", "Exact", "other", json!(80)),
                ])
            )]),
        ),
    ]);
    w.services.push(web_service("web", "other"));
    w.slices.push(ready_slice("web", "other", &["192.0.2.9"]));
    let (table, out) = w.run(&spec());
    check_routes(
        &table,
        &[
            ("example.com", "/", SHOP),
            ("example.com", "/other", Some(("c1/web/other:80", &["192.0.2.9:8080"]))),
        ],
    );
    check_warnings(
        &out,
        &[
            "Ingress web/same-age: host example.com path / (Prefix) is already routed by Ingress web/old of cluster c1; ignored",
            "Ingress web/young: host example.com path / (Prefix) is already routed by Ingress web/old of cluster c1; ignored",
        ],
    );
    check_served(&out, &[("web", "old"), ("web", "same-age")]);
}

#[test]
fn default_backend_oldest_wins() {
    let mut w = shop_world(vec![
        ingress(
            "web",
            "fallback-new",
            T2,
            json!({"ingressClassName": "kedge", "defaultBackend": backend("other", json!("http"))}),
        ),
        ingress(
            "web",
            "fallback",
            T1,
            json!({"ingressClassName": "kedge", "defaultBackend": backend("shop", json!("http")), "rules": []}),
        ),
        ours(
            "web",
            "api",
            T3,
            json!([rule(
                Some("api.example.com"),
                json!([path("/v1", "Prefix", "other", json!(80))])
            )]),
        ),
    ]);
    w.services.push(web_service("web", "other"));
    let (table, out) = w.run(&spec());
    let other = Some(("c1/web/other:80", &[][..]));
    check_routes(
        &table,
        &[
            ("unknown.example.com", "/", SHOP),
            ("api.example.com", "/v1/x", other),
            ("api.example.com", "/v2", SHOP),
            ("", "/", SHOP),
        ],
    );
    check_warnings(
        &out,
        &[
            "Ingress web/fallback-new: the default backend is already set by Ingress web/fallback of cluster c1; ignored",
        ],
    );
    check_served(&out, &[("web", "api"), ("web", "fallback")]);
}

#[test]
fn served_needs_a_rule_or_default_backend_in_the_table() {
    let w = shop_world(vec![
        ours("web", "old", T1, shop_rule("example.com")),
        ours("web", "loser", T2, shop_rule("example.com")),
        ours("web", "hosts-only", T2, json!([{"host": "tls.example.com"}])),
        ingress("web", "empty", T2, json!({"ingressClassName": "kedge"})),
        ours(
            "web",
            "resource",
            T2,
            json!([rule(
                None,
                json!([{"path": "/", "pathType": "Prefix", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}])
            )]),
        ),
    ]);
    let (_, out) = w.run(&spec());
    check_served(&out, &[("web", "old")]);
}

// ---- robustness ----

#[test]
fn odd_shapes_do_not_panic() {
    let w = World {
        ingresses: vec![
            obj(json!({})),
            obj(json!({"metadata": {}, "spec": {}})),
            obj(
                json!({"metadata": {"name": "x"}, "spec": {"ingressClassName": "kedge", "rules": [{}, {"http": {"paths": [{}]}}]}}),
            ),
            obj(
                json!({"metadata": {"namespace": "web", "name": "y", "annotations": {"nginx.ingress.kubernetes.io/use-regex": "yes please"}},
                       "spec": {"ingressClassName": "kedge", "defaultBackend": {}, "rules": [{"host": "é.example.com", "http": {"paths": []}}]}}),
            ),
            ours(
                "web",
                "ports",
                T1,
                json!([rule(
                    None,
                    json!([
                        path("/big", "Prefix", "big", json!(80)),
                        {"path": "/both-empty", "pathType": "Prefix", "backend": {"service": {"name": "shop", "port": {"name": ""}}}},
                    ])
                )]),
            ),
        ],
        classes: vec![
            obj(json!({})),
            obj(json!({"metadata": {"name": "kedge"}, "spec": {"controller": OURS}})),
        ],
        services: vec![
            obj(json!({})),
            service("web", "nospec", json!(null)),
            service(
                "web",
                "big",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 70000}]}),
            ),
        ],
        slices: vec![
            obj(json!({})),
            obj(json!({"metadata": {"labels": {}}})),
            slice(
                "web",
                "big-1",
                "big",
                "IPv4",
                json!([{"port": 99999}, {"port": -1}]),
                json!([{"addresses": ["192.0.2.1"]}]),
            ),
            slice(
                "web",
                "big-2",
                "big",
                "IPv4",
                json!([{}]),
                json!([{"addresses": ["garbage", ""]}]),
            ),
        ],
        nodes: vec![
            obj(json!({})),
            obj(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        ],
        secrets: vec![
            obj(json!({})),
            obj(json!({"metadata": {"name": "s", "namespace": "web"}, "type": "kubernetes.io/tls", "data": {}})),
        ],
    };
    for spec in [spec(), nodeports()] {
        let (table, out) = w.run(&spec);
        check_routes(&table, &[("example.com", "/big", Some(("c1/web/big:80", &[])))]);
        assert!(!out.warnings.is_empty());
        // Sorted and without duplicates.
        assert!(out.warnings.windows(2).all(|p| p[0] < p[1]), "{:?}", out.warnings);
    }
}

/// 10k Ingresses, each with its own host, Service and 5-endpoint slice: every one is served
/// and routes to its own endpoints. (Speed is measured in benches/, never asserted here.)
#[test]
fn ten_thousand_ingresses() {
    const N: usize = 10_000;
    let ip = |i: usize, k: usize| {
        let n = i * 5 + k;
        format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)
    };
    let mut w = World::new();
    for i in 0..N {
        let ns = format!("ns{}", i % 100);
        let name = format!("app{i}");
        w.ingresses.push(ours(
            &ns,
            &name,
            T1,
            shop_rule_to(&format!("app{i}.example.com"), &name),
        ));
        w.services.push(web_service(&ns, &name));
        let ips: Vec<String> = (0..5).map(|k| ip(i, k)).collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        w.slices.push(ready_slice(&ns, &name, &ips));
    }
    let (table, out) = w.run(&spec());
    check_warnings(&out, &[]);
    assert_eq!(out.served.len(), N);
    assert_eq!(table.backends.len(), N);
    for i in [0, 1, 4_999, N - 1] {
        let b = table
            .route(format!("app{i}.example.com").as_bytes(), "/x")
            .expect("routed");
        assert_eq!(&*b.name, format!("c1/ns{}/app{i}:80", i % 100));
        let mut want: Vec<SocketAddr> = (0..5).map(|k| format!("{}:8080", ip(i, k)).parse().unwrap()).collect();
        want.sort();
        assert_eq!(b.endpoints, want);
    }
}

// ---- endpoint-only updates ----

/// After an EndpointSlice change, `service_endpoints` gives the touched Service's backends the
/// same endpoints a full translation gives them, under the same backend names, in both modes.
#[test]
fn service_endpoints_agree_with_a_full_translation() {
    for spec in [spec(), nodeports()] {
        let mut world = shop_world(vec![ours(
            "web",
            "shop",
            "2024-01-01T00:00:00Z",
            shop_rule("shop.example.com"),
        )]);
        world.nodes = vec![node("n1", "True", false, internal("198.51.100.1"))];
        world.slices = vec![ready_slice("web", "shop", &["192.0.2.1", "192.0.2.2", "192.0.2.3"])];
        let (table, _) = world.run(&spec);
        // A kind added later is empty here until a test needs it.
        #[allow(clippy::needless_update)]
        let objs = Objects {
            ingresses: &world.ingresses,
            classes: &world.classes,
            services: &world.services,
            slices: &world.slices,
            nodes: &world.nodes,
            secrets: &world.secrets,
            ..Objects::default()
        };
        let touched = vec![
            ("web".to_owned(), "shop".to_owned()),
            ("web".to_owned(), "missing".to_owned()),
        ];
        let updated = service_endpoints(&spec, &objs, &touched);
        assert_eq!(updated.len(), 1, "one port of the one existing Service: {updated:?}");
        let (name, endpoints) = &updated[0];
        let id = table
            .backend_id(name)
            .unwrap_or_else(|| panic!("{name} is a backend of the full table"));
        assert_eq!(&table.backends[id].endpoints, endpoints, "{:?}", spec.upstream);
    }
}

/// The fast path resolves only the touched Services: their endpoints come from their own
/// EndpointSlices (all of them), never from another Service's, even one of the same name in
/// another namespace or one in the same namespace; Services not touched get no update.
#[test]
fn service_endpoints_resolve_only_the_touched_services() {
    let mut world = shop_world(vec![
        ours("web", "shop", "2024-01-01T00:00:00Z", shop_rule("shop.example.com")),
        ours(
            "web",
            "cart",
            "2024-01-01T00:00:01Z",
            shop_rule_to("cart.example.com", "cart"),
        ),
        ours("other", "shop", "2024-01-01T00:00:02Z", shop_rule("other.example.com")),
    ]);
    world.services = vec![
        web_service("web", "shop"),
        web_service("web", "cart"),
        web_service("other", "shop"),
    ];
    world.slices = vec![
        ready_slice("web", "shop", &["192.0.2.1", "192.0.2.2"]),
        ready_slice("web", "cart", &["192.0.2.10"]),
        ready_slice("other", "shop", &["192.0.2.20"]),
        ready_slice("web", "shop", &["192.0.2.3"]),
    ];
    let (table, out) = world.run(&spec());
    check_warnings(&out, &[]);
    #[allow(clippy::needless_update)]
    let objs = Objects {
        ingresses: &world.ingresses,
        classes: &world.classes,
        services: &world.services,
        slices: &world.slices,
        nodes: &world.nodes,
        secrets: &world.secrets,
        ..Objects::default()
    };
    let touched = vec![("web".to_owned(), "shop".to_owned())];
    let updated = service_endpoints(&spec(), &objs, &touched);
    assert_eq!(updated.len(), 1, "{updated:?}");
    let (name, endpoints) = &updated[0];
    assert_eq!(name, "c1/web/shop:80");
    let want: Vec<SocketAddr> = ["192.0.2.1:8080", "192.0.2.2:8080", "192.0.2.3:8080"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(endpoints, &want);
    let id = table.backend_id(name).expect("a backend of the full table");
    assert_eq!(&table.backends[id].endpoints, endpoints);
}

// ---- tls ----

#[test]
fn tls_secrets_are_checked_and_the_plain_http_fallback_is_said() {
    let tls_secret = |ns: &str, name: &str, ty: &str, keys: bool| -> Arc<Secret> {
        let data = if keys {
            json!({"tls.crt": "Y3J0", "tls.key": "a2V5"})
        } else {
            json!({"tls.crt": "Y3J0"})
        };
        obj(json!({"metadata": {"namespace": ns, "name": name}, "type": ty, "data": data}))
    };
    let with_tls = |name: &str, secret: &str| {
        let mut spec = json!({"ingressClassName": "kedge", "rules": shop_rule(&format!("{name}.example.com"))});
        spec["tls"] = json!([{"hosts": [format!("{name}.example.com")], "secretName": secret}]);
        ingress("web", name, T1, spec)
    };
    let mut w = shop_world(vec![
        with_tls("good", "good-cert"),
        with_tls("missing", "nope"),
        with_tls("opaque", "opaque-cert"),
        with_tls("halfkey", "half-cert"),
        with_tls("elsewhere", "other-ns-cert"),
    ]);
    w.secrets = vec![
        tls_secret("web", "good-cert", "kubernetes.io/tls", true),
        tls_secret("web", "opaque-cert", "Opaque", true),
        tls_secret("web", "half-cert", "kubernetes.io/tls", false),
        tls_secret("other", "other-ns-cert", "kubernetes.io/tls", true),
    ];
    let (table, out) = w.run(&spec());
    // Every one of them is still routed (over plain HTTP).
    for host in ["good", "missing", "opaque", "halfkey", "elsewhere"] {
        check_routes(&table, &[(&format!("{host}.example.com"), "/", SHOP)]);
    }
    let secret_warnings: Vec<&str> = out
        .warnings
        .iter()
        .filter(|w| w.message.contains("not found"))
        .map(|w| w.object.as_str())
        .collect();
    assert_eq!(
        secret_warnings,
        [
            "Ingress web/elsewhere",
            "Ingress web/halfkey",
            "Ingress web/missing",
            "Ingress web/opaque"
        ],
        "{:#?}",
        out.warnings
    );
    // Only the usable Secret becomes a certificate; every listed host has TLS, so each one
    // redirects plain HTTP (those without a certificate get the default one).
    let bound: Vec<(&str, &str)> = out
        .tls
        .iter()
        .map(|b| (b.host.as_str(), b.secret.metadata.name.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(bound, [("good.example.com", "good-cert")]);
    for host in ["good", "missing", "opaque", "halfkey", "elsewhere"] {
        let (_, opts) = table.lookup(format!("{host}.example.com").as_bytes(), "/").unwrap();
        assert!(opts.ssl_redirect, "{host}");
    }
}

#[test]
fn ssl_redirect_annotations() {
    let tls_ing = |name: &str, annotations: Value, tls: bool| {
        let mut spec = json!({"ingressClassName": "kedge", "rules": shop_rule(&format!("{name}.example.com"))});
        if tls {
            spec["tls"] = json!([{"secretName": "cert"}]); // no hosts: the rule hosts
        }
        let mut i = (*ingress("web", name, T1, spec)).clone();
        i.metadata.annotations = serde_json::from_value(annotations).unwrap();
        Arc::new(i)
    };
    let w = shop_world(vec![
        tls_ing("default", json!({}), true),
        tls_ing(
            "off",
            json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
            true,
        ),
        tls_ing("plain", json!({}), false),
        tls_ing(
            "forced",
            json!({"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}),
            false,
        ),
    ]);
    let (table, out) = w.run(&spec());
    let redirect = |h: &str| {
        table
            .lookup(format!("{h}.example.com").as_bytes(), "/")
            .unwrap()
            .1
            .ssl_redirect
    };
    assert!(redirect("default"));
    assert!(!redirect("off"));
    assert!(!redirect("plain"));
    assert!(redirect("forced"));
    // The Secret is missing: a warning each, and no certificate bindings.
    assert!(out.tls.is_empty());
    assert_eq!(
        out.warnings.iter().filter(|w| w.message.contains("not found")).count(),
        2
    );
}

#[test]
fn backend_protocol_https_is_decided_by_the_first_ingress_of_a_service_port() {
    let with = |name: &str, created: &str, annotations: Value| {
        let spec = json!({"ingressClassName": "kedge", "rules": shop_rule(&format!("{name}.example.com"))});
        let mut i = (*ingress("web", name, created, spec)).clone();
        i.metadata.annotations = serde_json::from_value(annotations).unwrap();
        Arc::new(i)
    };
    let w = shop_world(vec![
        with(
            "first",
            "2024-01-01T00:00:00Z",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
        ),
        with("second", "2024-02-01T00:00:00Z", json!({})),
        with(
            "grpc",
            "2024-03-01T00:00:00Z",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        ),
        with(
            "fcgi",
            "2024-04-01T00:00:00Z",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "FCGI"}),
        ),
    ]);
    let (table, out) = w.run(&spec());
    // GRPC would make the Service port speak HTTP/2: the first Ingress decided otherwise.
    assert!(!table.route(b"grpc.example.com", "/").unwrap().h2);
    let tls = table
        .route(b"second.example.com", "/")
        .unwrap()
        .tls
        .as_ref()
        .expect("HTTPS from the first Ingress");
    assert_eq!(tls.settings.name, "shop.web.svc");
    assert_eq!(tls.settings.verify, crate::tls::Verify::Off);
    assert!(!tls.settings.sni);
    let msgs: Vec<(&str, &str)> = out
        .warnings
        .iter()
        .map(|w| (w.object.as_str(), w.message.as_str()))
        .collect();
    assert!(
        msgs.iter()
            .any(|(o, m)| *o == "Ingress web/second" && m.contains("already set by Ingress web/first")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|(o, m)| *o == "Ingress web/grpc" && m.contains("already set by Ingress web/first")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|(o, m)| *o == "Ingress web/fcgi" && m.contains("\"FCGI\" is not supported")),
        "{msgs:#?}"
    );
}

#[test]
fn use_regex_and_rewrite_target_as_ingress_nginx() {
    let regex_paths = json!([
        path("/exact", "Exact", "shop", json!(80)),
        path("/api/v[0-9]+", "Prefix", "api", json!(80)),
        path("/", "ImplementationSpecific", "root", json!(80)),
        path("/bad(", "Prefix", "api", json!(80)),
    ]);
    let rewrite_paths = json!([path("/something(/|$)(.*)", "ImplementationSpecific", "api", json!(80))]);
    let mut w = shop_world(vec![
        annotated(
            ours("web", "regex", T1, json!([rule(Some("re.example.com"), regex_paths)])),
            json!({"nginx.ingress.kubernetes.io/use-regex": "true"}),
        ),
        annotated(
            ours(
                "web",
                "rewrite",
                T1,
                json!([rule(Some("rw.example.com"), rewrite_paths)]),
            ),
            json!({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}),
        ),
    ]);
    w.services
        .extend([web_service("web", "api"), web_service("web", "root")]);
    w.slices.extend([
        ready_slice("web", "api", &["192.0.2.2"]),
        ready_slice("web", "root", &["192.0.2.3"]),
    ]);
    let (table, out) = w.run(&spec());
    let api = Some(("c1/web/api:80", &["192.0.2.2:8080"][..]));
    let root = Some(("c1/web/root:80", &["192.0.2.3:8080"][..]));
    check_routes(
        &table,
        &[
            ("re.example.com", "/exact", SHOP),
            ("re.example.com", "/api/v2/users", api),
            ("re.example.com", "/API/V2", api),
            ("re.example.com", "/api/vx", root),
            ("re.example.com", "/anything", root),
            ("rw.example.com", "/something/new", api),
        ],
    );
    let (_, policy) = table.lookup(b"rw.example.com", "/something/new").unwrap();
    let mut out_path = String::new();
    assert!(policy.rewrite_into("/something/new", &mut out_path));
    assert_eq!(out_path, "/new");
    check_warnings(
        &out,
        &[
            "Ingress web/regex: host re.example.com: path \"/bad(\": not a regex kedge supports (RE2 syntax, no look-around or backreferences): error: unclosed group; path ignored",
        ],
    );
}

#[test]
fn annotations_are_typed_and_bad_values_are_reported_one_by_one() {
    let ing = annotated(
        ours("web", "policy", T1, shop_rule("p.example.com")),
        json!({
            "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "120",
            "nginx.ingress.kubernetes.io/proxy-connect-timeout": "soon",
            "nginx.ingress.kubernetes.io/whitelist-source-range": "192.0.2.0/24, 198.51.100.7",
            "nginx.ingress.kubernetes.io/denylist-source-range": "192.0.2.300",
            "nginx.ingress.kubernetes.io/permanent-redirect": "https://example.com/new",
            "nginx.ingress.kubernetes.io/permanent-redirect-code": "302",
            "nginx.ingress.kubernetes.io/app-root": "app",
            "nginx.ingress.kubernetes.io/configuration-snippet": "more_set_headers \"X: y\";",
            "nginx.ingress.kubernetes.io/custom-http-errors": "404,503",
        }),
    );
    let (table, out) = shop_world(vec![ing]).run(&spec());
    let (_, p) = table.lookup(b"p.example.com", "/").unwrap();
    assert_eq!(p.max_body, Some(8 << 20));
    assert_eq!(p.read_timeout, Some(std::time::Duration::from_secs(120)));
    assert_eq!(p.connect_timeout, None);
    assert!(p.allows("198.51.100.7".parse().unwrap()) && !p.allows("203.0.113.1".parse().unwrap()));
    assert!(p.deny.is_empty());
    let r = p.redirect.as_ref().unwrap();
    assert_eq!((r.status, &*r.location), (301, "https://example.com/new"));
    assert_eq!(p.app_root, None);
    let msgs: Vec<&str> = out.warnings.iter().map(|w| w.message.as_str()).collect();
    for want in [
        "nginx.ingress.kubernetes.io/proxy-connect-timeout: \"soon\" is not a number of seconds",
        "nginx.ingress.kubernetes.io/denylist-source-range: \"192.0.2.300\" is not a list of CIDR ranges",
        "nginx.ingress.kubernetes.io/permanent-redirect-code: \"302\" is not one of [301, 308]; using 301",
        "nginx.ingress.kubernetes.io/app-root: \"app\" is not a path starting with /",
        "nginx.ingress.kubernetes.io/configuration-snippet: nginx configuration snippets are never executed",
        "nginx.ingress.kubernetes.io/custom-http-errors is not supported by this version of kedge; ignored",
    ] {
        assert!(
            msgs.iter().any(|m| m.starts_with(want)),
            "no warning {want:?} in {msgs:#?}"
        );
    }
    assert_eq!(msgs.len(), 6, "{msgs:#?}");
    // The Ingress is still served.
    check_routes(&table, &[("p.example.com", "/", SHOP)]);
}

#[test]
fn every_bad_annotation_is_one_warning_and_the_ingress_is_still_served() {
    let n = "nginx.ingress.kubernetes.io/";
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("use-regex", "yes")],
            "use-regex: \"yes\" is not \"true\" or \"false\"",
        ),
        (&[("rewrite-target", "/a b")], "rewrite-target: \"/a b\" is not a path"),
        (
            &[("app-root", "app")],
            "app-root: \"app\" is not a path starting with /",
        ),
        (
            &[("proxy-body-size", "huge")],
            "proxy-body-size: \"huge\" is not a size",
        ),
        (
            &[("proxy-read-timeout", "0")],
            "proxy-read-timeout: \"0\" is not a number of seconds",
        ),
        (
            &[("proxy-send-timeout", "x")],
            "proxy-send-timeout: \"x\" is not a number of seconds",
        ),
        (
            &[("allowlist-source-range", "10.0.0.0/40")],
            "allowlist-source-range: \"10.0.0.0/40\" is not a list of CIDR ranges",
        ),
        (
            &[("whitelist-source-range", ",")],
            "whitelist-source-range: \",\" lists no address",
        ),
        (
            &[("permanent-redirect", "not a url")],
            "permanent-redirect: \"not a url\" is not a URL",
        ),
        (
            &[
                ("temporal-redirect", "https://example.com/"),
                ("temporal-redirect-code", "301"),
            ],
            "temporal-redirect-code: \"301\" is not one of [302, 303, 307]",
        ),
        (&[("load-balance", "random")], "load-balance: \"random\" is not one of"),
        (
            &[("upstream-hash-by", "$nonsense")],
            "upstream-hash-by: \"$nonsense\" $nonsense is not a variable kedge knows",
        ),
        (&[("affinity", "ip")], "affinity: \"ip\" is not \"cookie\""),
        (
            &[("affinity", "cookie"), ("session-cookie-name", "a b")],
            "session-cookie-name: \"a b\" is not a cookie name",
        ),
        (
            &[("affinity", "cookie"), ("session-cookie-max-age", "-1")],
            "session-cookie-max-age: \"-1\" is not a number of seconds",
        ),
        (
            &[("affinity", "cookie"), ("session-cookie-samesite", "Sometimes")],
            "session-cookie-samesite: \"Sometimes\" is not one of None, Lax, Strict",
        ),
        (
            &[("affinity", "cookie"), ("affinity-mode", "sticky")],
            "affinity-mode: \"sticky\" is not",
        ),
        (
            &[("proxy-next-upstream", "http_418")],
            "proxy-next-upstream: \"http_418\" is not a status nginx retries on",
        ),
        (
            &[("proxy-next-upstream-tries", "99")],
            "proxy-next-upstream-tries: \"99\" is not a number from 0 to 16",
        ),
        (
            &[("proxy-next-upstream-timeout", "soon")],
            "proxy-next-upstream-timeout: \"soon\" is not a number of seconds",
        ),
        (
            &[("limit-rps", "-3")],
            "limit-rps: \"-3\" is not a positive whole number",
        ),
        (
            &[("limit-connections", "0")],
            "limit-connections: \"0\" is not a positive whole number",
        ),
        (
            &[("limit-allowlist", "nope")],
            "limit-allowlist: \"nope\" is not a list of CIDR ranges",
        ),
        (
            &[("backend-protocol", "FCGI")],
            "backend-protocol: \"FCGI\" is not supported",
        ),
        (&[("auth-type", "digest")], "auth-type: \"digest\" is not supported"),
        (
            &[("server-snippet", "return 200;")],
            "server-snippet: nginx configuration snippets are never executed",
        ),
        (
            &[("x-made-up", "1")],
            "x-made-up is not supported by this version of kedge",
        ),
    ];
    for (annotations, want) in cases {
        let map: serde_json::Map<String, Value> =
            annotations.iter().map(|(k, v)| (format!("{n}{k}"), json!(v))).collect();
        let ing = annotated(
            ours("web", "shop", T1, shop_rule("shop.example.com")),
            Value::Object(map),
        );
        let (table, out) = shop_world(vec![ing]).run(&spec());
        let msgs: Vec<&str> = out.warnings.iter().map(|w| w.message.as_str()).collect();
        assert_eq!(msgs.len(), 1, "{annotations:?}: {msgs:#?}");
        assert!(msgs[0].contains(want), "{annotations:?}: {msgs:#?}");
        assert_eq!(out.warnings[0].object, "Ingress web/shop");
        check_routes(&table, &[("shop.example.com", "/", SHOP)]);
    }
}

#[test]
fn backend_protocol_grpc_and_grpcs_speak_http2() {
    let with = |name: &str, protocol: &str| {
        let spec = json!({"ingressClassName": "kedge", "rules": shop_rule(&format!("{name}.example.com"))});
        let mut i = (*ingress("web", name, T1, spec)).clone();
        i.metadata.annotations = serde_json::from_value(json!({
            "nginx.ingress.kubernetes.io/backend-protocol": protocol,
            "nginx.ingress.kubernetes.io/proxy-ssl-name": "grpc.internal",
        }))
        .unwrap();
        Arc::new(i)
    };
    for (protocol, tls) in [("GRPC", false), ("grpcs", true)] {
        let (table, out) = shop_world(vec![with("api", protocol)]).run(&spec());
        assert!(out.warnings.is_empty(), "{protocol}: {:?}", out.warnings);
        let backend = table.route(b"api.example.com", "/").unwrap();
        assert!(backend.h2, "{protocol}");
        assert_eq!(backend.tls.is_some(), tls, "{protocol}");
        if let Some(t) = &backend.tls {
            assert!(t.settings.h2, "ALPN h2");
            assert_eq!(t.settings.name, "grpc.internal");
            assert_eq!(t.config.alpn_protocols, vec![b"h2".to_vec()]);
        }
    }
}

//! Backend resolution as data: Service ports by number and name, EndpointSlice conditions and
//! merging, NodePort mode, and what happens when a backend cannot be resolved.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use serde_json::{Value, json};

use crate::control::translate::ClusterSpec;
use crate::control::translate::ingress::tests::*;

// ---- ports ----

#[test]
fn service_port_by_number_and_by_name_through_slice_port_names() {
    let svc = service(
        "web",
        "multi",
        json!({"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9090, "targetPort": 9100},
        ]}),
    );
    // The slice holds the *target* ports, named after the Service ports; one slice per port
    // set, as during a rolling update that changes the container port.
    let s1 = slice(
        "web",
        "multi-1",
        "multi",
        "IPv4",
        json!([{"name": "metrics", "port": 9100}, {"name": "http", "port": 8080}]),
        json!([{"addresses": ["192.0.2.1"]}]),
    );
    let s2 = slice(
        "web",
        "multi-2",
        "multi",
        "IPv4",
        json!([{"name": "http", "port": 8081}, {"name": "metrics", "port": 9100}]),
        json!([{"addresses": ["192.0.2.2"]}]),
    );
    let unnamed = service("web", "single", json!({"ports": [{"port": 443, "targetPort": 8443}]}));
    let s3 = slice(
        "web",
        "single-1",
        "single",
        "IPv4",
        json!([{"port": 8443}]),
        json!([{"addresses": ["192.0.2.3"]}]),
    );
    let paths = json!([
        path("/by-number", "Prefix", "multi", json!(80)),
        path("/by-name", "Prefix", "multi", json!("http")),
        path("/metrics", "Prefix", "multi", json!("metrics")),
        path("/single", "Prefix", "single", json!(443)),
    ]);
    let w = World {
        ingresses: vec![ours("web", "ports", T1, json!([rule(Some("example.com"), paths)]))],
        services: vec![svc, unnamed],
        slices: vec![s1, s2, s3],
        ..World::new()
    };
    let (table, out) = w.run(&spec());
    // By number and by name resolve to the same backend.
    let http = Some(("c1/web/multi:80", &["192.0.2.1:8080", "192.0.2.2:8081"][..]));
    check_routes(
        &table,
        &[
            ("example.com", "/by-number", http),
            ("example.com", "/by-name", http),
            (
                "example.com",
                "/metrics",
                Some(("c1/web/multi:9090", &["192.0.2.1:9100", "192.0.2.2:9100"])),
            ),
            (
                "example.com",
                "/single",
                Some(("c1/web/single:443", &["192.0.2.3:8443"])),
            ),
        ],
    );
    assert_eq!(table.backends.len(), 3);
    check_warnings(&out, &[]);
}

// ---- endpoints ----

#[test]
fn endpoint_conditions_ready_then_serving_terminating() {
    let ports = json!([{"name": "http", "port": 8080}]);
    let cases: &[(Value, &[&str])] = &[
        // ready true, ready absent, no conditions at all: ready. Not ready: out.
        (
            json!([
                {"addresses": ["192.0.2.1"], "conditions": {"ready": true}},
                {"addresses": ["192.0.2.2"], "conditions": {}},
                {"addresses": ["192.0.2.3"]},
                {"addresses": ["192.0.2.4"], "conditions": {"ready": false, "serving": false}},
                {"addresses": ["192.0.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            ]),
            &["192.0.2.1:8080", "192.0.2.2:8080", "192.0.2.3:8080"],
        ),
        // None ready: the serving ones among the terminating (serving absent counts as true).
        (
            json!([
                {"addresses": ["192.0.2.4"], "conditions": {"ready": false, "serving": false, "terminating": true}},
                {"addresses": ["192.0.2.5"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                {"addresses": ["192.0.2.6"], "conditions": {"ready": false, "terminating": true}},
                {"addresses": ["192.0.2.7"], "conditions": {"ready": false, "serving": true}},
            ]),
            &["192.0.2.5:8080", "192.0.2.6:8080"],
        ),
        // Nothing usable: no endpoints (503), and no warning: a Service scaled to zero is fine.
        (
            json!([{"addresses": ["192.0.2.4"], "conditions": {"ready": false, "serving": false}}]),
            &[],
        ),
    ];
    for (endpoints, want) in cases {
        let w = World {
            slices: vec![slice("web", "shop-1", "shop", "IPv4", ports.clone(), endpoints.clone())],
            ..shop_world(vec![ours("web", "shop", T1, shop_rule("example.com"))])
        };
        let (table, out) = w.run(&spec());
        check_routes(&table, &[("example.com", "/", Some(("c1/web/shop:80", want)))]);
        check_warnings(&out, &[]);
    }
}

#[test]
fn slices_merge_across_families_dedupe_and_skip_fqdn() {
    let ports = json!([{"name": "http", "port": 8080}]);
    let eps = |ips: &[&str]| json!(ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>());
    let w = World {
        slices: vec![
            slice(
                "web",
                "shop-a",
                "shop",
                "IPv4",
                ports.clone(),
                eps(&["192.0.2.2", "192.0.2.1"]),
            ),
            // The same pod in two slices (while the controller moves it) counts once.
            slice(
                "web",
                "shop-b",
                "shop",
                "IPv4",
                ports.clone(),
                eps(&["192.0.2.1", "203.0.113.5"]),
            ),
            slice("web", "shop-c", "shop", "IPv6", ports.clone(), eps(&["2001:db8::1"])),
            slice(
                "web",
                "shop-d",
                "shop",
                "FQDN",
                ports.clone(),
                eps(&["pod.example.com"]),
            ),
            // Slices of another Service, or of a same-named Service elsewhere, are not ours.
            slice("web", "cart-a", "cart", "IPv4", ports.clone(), eps(&["198.51.100.1"])),
            slice("other", "shop-a", "shop", "IPv4", ports.clone(), eps(&["198.51.100.2"])),
            // A slice whose ports do not include the Service port's name holds no endpoint for it.
            slice(
                "web",
                "shop-e",
                "shop",
                "IPv4",
                json!([{"name": "grpc", "port": 9000}]),
                eps(&["198.51.100.3"]),
            ),
        ],
        ..shop_world(vec![ours("web", "shop", T1, shop_rule("example.com"))])
    };
    let (table, out) = w.run(&spec());
    check_routes(
        &table,
        &[(
            "example.com",
            "/",
            Some((
                "c1/web/shop:80",
                &[
                    "192.0.2.1:8080",
                    "192.0.2.2:8080",
                    "203.0.113.5:8080",
                    "[2001:db8::1]:8080",
                ],
            )),
        )],
    );
    check_warnings(&out, &[]);
}

// ---- what cannot be resolved ----

#[test]
fn broken_backends_are_reported_and_the_rest_is_served() {
    let paths = json!([
        path("/ok", "Prefix", "shop", json!(80)),
        path("/missing", "Prefix", "missing", json!(80)),
        path("/missing-again", "Prefix", "missing", json!(80)),
        path("/bad-port", "Prefix", "shop", json!(81)),
        path("/bad-port-name", "Prefix", "shop", json!("grpc")),
        path("/external", "Prefix", "external", json!(80)),
        {"path": "/bucket", "pathType": "Prefix", "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "assets"}}},
        {"path": "/no-port", "pathType": "Prefix", "backend": {"service": {"name": "shop"}}},
    ]);
    let mut w = shop_world(vec![ours(
        "web",
        "broken",
        T1,
        json!([rule(Some("example.com"), paths)]),
    )]);
    w.services.push(service(
        "web",
        "external",
        json!({"type": "ExternalName", "externalName": "shop.example.org"}),
    ));
    let (table, out) = w.run(&spec());
    check_routes(
        &table,
        &[
            ("example.com", "/ok", SHOP),
            // Unresolvable Service ports still own their path and answer 503, rather than
            // falling through to another application.
            ("example.com", "/missing", Some(("c1/web/missing:80", &[]))),
            ("example.com", "/missing-again", Some(("c1/web/missing:80", &[]))),
            ("example.com", "/bad-port", Some(("c1/web/shop:81", &[]))),
            ("example.com", "/bad-port-name", Some(("c1/web/shop:grpc", &[]))),
            ("example.com", "/external", Some(("c1/web/external:80", &[]))),
            // Paths that name no Service are not routed at all.
            ("example.com", "/bucket", None),
            ("example.com", "/no-port", None),
        ],
    );
    check_warnings(
        &out,
        &[
            "Ingress web/broken: Service web/external is of type ExternalName, which kedge does not route to; \
             answering 503",
            "Ingress web/broken: Service web/missing not found; answering 503",
            "Ingress web/broken: Service web/shop has no port 81; answering 503",
            "Ingress web/broken: Service web/shop has no port grpc; answering 503",
            "Ingress web/broken: backend service \"shop\" names no port; path ignored",
            "Ingress web/broken: backend.resource is not supported; path ignored",
        ],
    );
    check_served(&out, &[("web", "broken")]);
}

// ---- NodePort mode ----

fn nodes() -> Vec<Arc<Node>> {
    vec![
        node("n1", "True", false, internal("10.0.0.1")),
        node("n2", "True", false, internal("10.0.0.2")),
        node("n3", "False", false, internal("10.0.0.3")),
        node("n4", "Unknown", false, internal("10.0.0.4")),
        node("n5", "True", true, internal("10.0.0.5")),
        node(
            "n6",
            "True",
            false,
            json!([{"type": "ExternalIP", "address": "203.0.113.6"}]),
        ),
        node(
            "n7",
            "True",
            false,
            json!([{"type": "InternalIP", "address": "not-an-ip"}]),
        ),
    ]
}

#[test]
fn nodeports_on_ready_schedulable_nodes() {
    let w = World {
        nodes: nodes(),
        ..shop_world(vec![ours("web", "shop", T1, shop_rule("example.com"))])
    };
    let (table, out) = w.run(&nodeports());
    check_routes(
        &table,
        &[(
            "example.com",
            "/",
            Some(("c1/web/shop:80", &["10.0.0.1:30080", "10.0.0.2:30080"])),
        )],
    );
    check_warnings(
        &out,
        &[
            "Node n6: no InternalIP address; node not used for nodeports",
            "Node n7: InternalIP address \"not-an-ip\" is not an IP address; node not used for nodeports",
        ],
    );

    // Another address type, as configured.
    let external = ClusterSpec {
        node_address_type: "ExternalIP".into(),
        ..nodeports()
    };
    let (table, _) = w.run(&external);
    check_routes(
        &table,
        &[("example.com", "/", Some(("c1/web/shop:80", &["203.0.113.6:30080"])))],
    );
}

#[test]
fn nodeports_local_policy_only_nodes_with_a_ready_endpoint() {
    let svc = service(
        "web",
        "shop",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
               "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]}),
    );
    let eps = json!([
        {"addresses": ["192.0.2.1"], "nodeName": "n2", "conditions": {"ready": true}},
        {"addresses": ["192.0.2.2"], "nodeName": "n1", "conditions": {"ready": false}},
        {"addresses": ["192.0.2.3"], "nodeName": "n5", "conditions": {"ready": true}},
    ]);
    let w = World {
        nodes: nodes(),
        services: vec![svc],
        slices: vec![slice(
            "web",
            "shop-1",
            "shop",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            eps,
        )],
        ..shop_world(vec![ours("web", "shop", T1, shop_rule("example.com"))])
    };
    let (table, _) = w.run(&nodeports());
    // n1 hosts only a pod that is not ready; n5 hosts a ready one but is cordoned.
    check_routes(
        &table,
        &[("example.com", "/", Some(("c1/web/shop:80", &["10.0.0.2:30080"])))],
    );
}

#[test]
fn nodeports_without_a_node_port() {
    let w = World {
        nodes: nodes(),
        services: vec![service(
            "web",
            "shop",
            json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )],
        ..shop_world(vec![ours("web", "shop", T1, shop_rule("example.com"))])
    };
    let (table, out) = w.run(&nodeports());
    check_routes(&table, &[("example.com", "/", Some(("c1/web/shop:80", &[])))]);
    check_warnings(
        &out,
        &[
            "Ingress web/shop: Service web/shop port 80 has no nodePort (type ClusterIP), which nodeports mode needs; \
           answering 503",
        ],
    );
}

#[test]
fn upstream_mode_annotation_overrides_the_cluster() {
    let mode = |svc: Arc<Service>, m: &str| annotated(svc, json!({"kedge.dev/upstream-mode": m}));
    let paths = json!([
        path("/default", "Prefix", "shop", json!(80)),
        path("/pods", "Prefix", "pods", json!(80)),
        path("/nodes", "Prefix", "nodes", json!(80)),
        path("/garbage", "Prefix", "garbage", json!(80)),
    ]);
    let w = World {
        nodes: nodes(),
        services: vec![
            web_service("web", "shop"),
            mode(web_service("web", "pods"), "pods"),
            mode(web_service("web", "nodes"), "nodeports"),
            mode(web_service("web", "garbage"), "Pods!"),
        ],
        slices: ["shop", "pods", "nodes", "garbage"]
            .iter()
            .map(|s| ready_slice("web", s, &["192.0.2.1"]))
            .collect(),
        ..World::new()
    };
    let w = World {
        ingresses: vec![ours("web", "shop", T1, json!([rule(Some("example.com"), paths)]))],
        ..w
    };
    let pod = &["192.0.2.1:8080"][..];
    let node = &["10.0.0.1:30080", "10.0.0.2:30080"][..];
    for (cluster, default, garbage) in [(spec(), pod, pod), (nodeports(), node, node)] {
        let (table, out) = w.run(&cluster);
        check_routes(
            &table,
            &[
                ("example.com", "/default", Some(("c1/web/shop:80", default))),
                ("example.com", "/pods", Some(("c1/web/pods:80", pod))),
                ("example.com", "/nodes", Some(("c1/web/nodes:80", node))),
                ("example.com", "/garbage", Some(("c1/web/garbage:80", garbage))),
            ],
        );
        let garbage_warning = format!(
            "Service web/garbage: kedge.dev/upstream-mode: \"Pods!\" is neither \"pods\" nor \"nodeports\"; \
             using the cluster's mode ({:?})",
            cluster.upstream
        );
        assert!(
            out.warnings
                .iter()
                .any(|w| format!("{}: {}", w.object, w.message) == garbage_warning),
            "{out:?}"
        );
    }
}

// ---- the Service → EndpointSlices index ----

/// The index of a set of slices finds each Service's slices by name; `set` follows a slice
/// that changes Service, loses its label or goes, and says which Service it left.
#[test]
fn slice_index_follows_slices_between_services() {
    use crate::control::translate::SliceIndex;
    let eps = json!([{"addresses": ["192.0.2.1"]}]);
    let ports = json!([{"name": "http", "port": 8080}]);
    let slices = [
        slice("web", "a-1", "a", "IPv4", ports.clone(), eps.clone()),
        slice("web", "a-2", "a", "IPv4", ports.clone(), eps.clone()),
        slice("web", "b-1", "b", "IPv4", ports.clone(), eps.clone()),
        slice("other", "a-1", "a", "IPv4", ports, eps),
    ];
    let mut index = SliceIndex::of(&slices);
    let of = |index: &SliceIndex, ns: &str, svc: &str| index.slices(ns, svc).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(of(&index, "web", "a"), ["a-1", "a-2"]);
    assert_eq!(of(&index, "web", "b"), ["b-1"]);
    assert_eq!(of(&index, "other", "a"), ["a-1"], "namespaces apart");
    assert!(of(&index, "web", "c").is_empty());

    // a-2 moves to b; then loses its label; a-1 goes.
    assert_eq!(index.set("web", "a-2", Some("b")).as_deref(), Some("a"));
    assert_eq!(of(&index, "web", "a"), ["a-1"]);
    assert_eq!(of(&index, "web", "b"), ["a-2", "b-1"]);
    assert_eq!(index.set("web", "a-2", None).as_deref(), Some("b"));
    assert_eq!(of(&index, "web", "b"), ["b-1"]);
    assert_eq!(index.set("web", "a-1", None).as_deref(), Some("a"));
    assert!(of(&index, "web", "a").is_empty());
    // Setting what is already so changes nothing; a new slice belonged to no Service.
    assert_eq!(index.set("web", "b-1", Some("b")).as_deref(), Some("b"));
    assert_eq!(of(&index, "web", "b"), ["b-1"]);
    assert_eq!(index.set("web", "c-1", Some("c")), None);
    assert_eq!(of(&index, "web", "c"), ["c-1"]);
}

//! Attachment, listeners, addresses, allowedRoutes, hostnames and references, from objects
//! written as JSON.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::{Value, json};

use super::*;
use crate::control::gateway_types::GrpcRoute;

const GW: &str = "gateway.networking.k8s.io";
const CONTROLLER: &str = "kedge.dev/gateway-controller";

/// One cluster's objects, added as JSON by kind.
#[derive(Default)]
struct World {
    classes: Vec<Arc<GatewayClass>>,
    gateways: Vec<Arc<Gateway>>,
    http: Vec<Arc<HttpRoute>>,
    grpc: Vec<Arc<GrpcRoute>>,
    grants: Vec<Arc<ReferenceGrant>>,
    services: Vec<Arc<Service>>,
    secrets: Vec<Arc<Secret>>,
    namespaces: Vec<Arc<Namespace>>,
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("object"))
}

impl World {
    /// kedge's GatewayClass `kedge` and another controller's `other`.
    fn new() -> World {
        let mut w = World::default();
        w.add(json!({"kind": "GatewayClass", "metadata": {"name": "kedge"}, "spec": {"controllerName": CONTROLLER}}));
        w.add(json!({"kind": "GatewayClass", "metadata": {"name": "other"}, "spec": {"controllerName": "acme.io/gw"}}));
        w
    }

    fn add(&mut self, v: Value) -> &mut World {
        match v["kind"].as_str().expect("kind") {
            "GatewayClass" => self.classes.push(from(v)),
            "Gateway" => self.gateways.push(from(v)),
            "HTTPRoute" => self.http.push(from(v)),
            "GRPCRoute" => self.grpc.push(from(v)),
            "ReferenceGrant" => self.grants.push(from(v)),
            "Service" => self.services.push(from(v)),
            "Secret" => self.secrets.push(from(v)),
            "Namespace" => self.namespaces.push(from(v)),
            k => panic!("no kind {k}"),
        }
        self
    }

    fn objects(&self) -> Objects<'_> {
        Objects {
            gateway_classes: &self.classes,
            gateways: &self.gateways,
            http_routes: &self.http,
            grpc_routes: &self.grpc,
            reference_grants: &self.grants,
            services: &self.services,
            secrets: &self.secrets,
            namespaces: &self.namespaces,
            ..Objects::default()
        }
    }

    fn attach(&self) -> Attachment<'_> {
        attach(&self.objects(), &settings(), &listeners())
    }
}

/// kedge listening on 0.0.0.0:80 (plain), 0.0.0.0:443 (TLS) and 198.51.100.5:8443 (TLS, an
/// address not configured on the host: bound with ip_nonlocal_bind).
fn listeners() -> Vec<ListenerSpec> {
    let l = |a: &str, tls: bool| ListenerSpec {
        address: a.parse::<SocketAddr>().expect("address"),
        tls,
        proxy_protocol: None,
    };
    vec![
        l("0.0.0.0:80", false),
        l("0.0.0.0:443", true),
        l("198.51.100.5:8443", true),
    ]
}

fn settings() -> GatewaySettings {
    GatewaySettings {
        controller: CONTROLLER.into(),
        publish_addresses: vec!["203.0.113.10".into(), "edge.example.com".into()],
        host_addresses: ["127.0.0.1", "192.0.2.7", "203.0.113.10", "::1"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect(),
    }
}

fn gateway(name: &str, class: &str, listeners: Value) -> Value {
    json!({"kind": "Gateway", "metadata": {"name": name, "namespace": "infra"},
           "spec": {"gatewayClassName": class, "listeners": listeners}})
}

fn http_listener(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}})
}

fn route(ns: &str, name: &str, parent_refs: Value, hostnames: Value) -> Value {
    json!({"kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
           "spec": {"parentRefs": parent_refs, "hostnames": hostnames,
                    "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}})
}

fn service(ns: &str, name: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80}]}})
}

/// Base64 of `text`, as a Secret's data holds it.
fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// PEM blocks of the right kinds (their contents are not checked before certificates are built).
const CRT: &str = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\na2V5\n-----END PRIVATE KEY-----\n";

fn tls_secret(ns: &str, name: &str) -> Value {
    json!({"kind": "Secret", "metadata": {"name": name, "namespace": ns}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": b64(CRT), "tls.key": b64(KEY)}})
}

/// The (status, reason) of condition `type_`.
fn cond<'c>(conds: &'c [Cond], type_: &str) -> (bool, &'c str) {
    let c = conds
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conds:#?}"));
    (c.status, c.reason)
}

fn gw<'a, 'b>(a: &'b Attachment<'a>, name: &str) -> &'b GatewayState<'a> {
    a.gateways
        .iter()
        .find(|g| g.gateway.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Gateway {name}"))
}

fn listener_of<'b>(g: &'b GatewayState<'_>, name: &str) -> &'b ListenerState {
    g.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

/// The parent entries of route `ns/name`.
fn parents<'b>(a: &'b Attachment<'_>, key: &str) -> Vec<&'b RouteParent<'b>> {
    a.parents.iter().filter(|p| p.route.key() == key).collect()
}

/// (route, gateway, listener, hostnames) of every attached route.
fn served(a: &Attachment<'_>) -> Vec<(String, String, String, Vec<String>)> {
    a.routes
        .iter()
        .map(|r| {
            (
                r.route.key(),
                r.gateway.to_string(),
                r.listener.name.clone(),
                r.hostnames.to_vec(),
            )
        })
        .collect()
}

#[test]
fn only_kedges_classes_and_their_gateways() {
    let mut w = World::new();
    w.add(service("apps", "web"))
        .add(gateway("ours", "kedge", json!([http_listener("http", 80)])))
        .add(gateway("theirs", "other", json!([http_listener("http", 80)])))
        .add(gateway("classless", "missing", json!([http_listener("http", 80)])))
        .add(route(
            "apps",
            "web",
            json!([{"name": "ours", "namespace": "infra"}, {"name": "theirs", "namespace": "infra"},
                   {"name": "nowhere", "namespace": "infra"},
                   {"group": "", "kind": "Service", "name": "web"}]),
            json!([]),
        ));
    let a = w.attach();
    let classes: Vec<_> = a.classes.iter().map(|c| c.metadata.name.as_deref()).collect();
    assert_eq!(classes, [Some("kedge")]);
    let gateways: Vec<_> = a.gateways.iter().map(|g| g.gateway.metadata.name.as_deref()).collect();
    assert_eq!(gateways, [Some("ours")]);
    // One parent entry: the one naming kedge's Gateway, group and kind written out.
    let p = parents(&a, "apps/web");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].parent_ref.name, "ours");
    assert_eq!(p[0].parent_ref.group.as_deref(), Some(GW));
    assert_eq!(p[0].parent_ref.kind.as_deref(), Some("Gateway"));
    assert_eq!(p[0].parent_ref.namespace.as_deref(), Some("infra"));
    assert_eq!(cond(&p[0].conditions, "Accepted"), (true, "Accepted"));
    assert_eq!(cond(&p[0].conditions, "ResolvedRefs"), (true, "ResolvedRefs"));
    assert_eq!(
        served(&a),
        [("apps/web".into(), "infra/ours".into(), "http".into(), vec![])]
    );
    assert_eq!(a.routes[0].bind.port, 80);
    assert!(!a.routes[0].bind.tls);
    assert!(a.warnings.is_empty(), "{:#?}", a.warnings);
}

#[test]
fn listeners_map_to_kedges_by_port_and_protocol() {
    let mut w = World::new();
    w.add(service("infra", "web")).add(gateway(
        "edge",
        "kedge",
        json!([
            http_listener("http", 80),
            http_listener("unserved", 8080),
            {"name": "plain-as-tls", "port": 80, "hostname": "a.example.com", "protocol": "HTTPS",
             "tls": {"certificateRefs": [{"name": "cert"}]}},
            {"name": "tls-as-plain", "port": 443, "protocol": "HTTP"},
            {"name": "tcp", "port": 9000, "protocol": "TCP"},
            {"name": "passthrough", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
            {"name": "udp", "port": 53, "protocol": "UDP"},
        ]),
    ));
    let a = w.attach();
    let g = gw(&a, "edge");
    let accepted = |l: &str| cond(&listener_of(g, l).conditions, "Accepted");
    assert_eq!(accepted("http"), (true, "Accepted"));
    assert_eq!(accepted("unserved"), (false, "PortUnavailable"));
    assert_eq!(accepted("tls-as-plain"), (false, "PortUnavailable"));
    assert_eq!(accepted("tcp"), (false, "UnsupportedProtocol"));
    assert_eq!(accepted("passthrough"), (false, "UnsupportedProtocol"));
    assert_eq!(accepted("udp"), (false, "UnsupportedProtocol"));
    // HTTP and HTTPS on port 80: a protocol conflict, both not programmed.
    for l in ["http", "plain-as-tls"] {
        assert_eq!(
            cond(&listener_of(g, l).conditions, "Conflicted"),
            (true, "ProtocolConflict"),
            "{l}"
        );
        assert_eq!(cond(&listener_of(g, l).conditions, "Programmed"), (false, "Invalid"));
    }
    assert_eq!(
        cond(&listener_of(g, "unserved").conditions, "Programmed"),
        (false, "Invalid")
    );
    assert_eq!(cond(&g.conditions, "Accepted"), (false, "ListenersNotValid"));
    // Unsupported protocols have no route kinds; HTTP takes both by default.
    assert!(listener_of(g, "tcp").supported_kinds.is_empty());
}

#[test]
fn a_gateway_with_valid_and_invalid_listeners_is_accepted_and_programmed() {
    let mut w = World::new();
    w.add(service("infra", "web"))
        .add(tls_secret("infra", "cert"))
        .add(gateway(
            "edge",
            "kedge",
            json!([
                http_listener("http", 80),
                {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "secure.example.com",
                 "tls": {"certificateRefs": [{"name": "cert"}]}},
                http_listener("unserved", 8080),
                {"name": "same-host-1", "port": 80, "protocol": "HTTP", "hostname": "dup.example.com"},
                {"name": "same-host-2", "port": 80, "protocol": "HTTP", "hostname": "DUP.example.com"},
            ]),
        ));
    let a = w.attach();
    let g = gw(&a, "edge");
    assert_eq!(cond(&g.conditions, "Accepted"), (true, "ListenersNotValid"));
    assert_eq!(cond(&g.conditions, "Programmed"), (true, "Programmed"));
    for l in ["http", "https"] {
        let c = &listener_of(g, l).conditions;
        assert_eq!(cond(c, "Accepted"), (true, "Accepted"), "{l}");
        assert_eq!(cond(c, "ResolvedRefs"), (true, "ResolvedRefs"), "{l}");
        assert_eq!(cond(c, "Programmed"), (true, "Programmed"), "{l}");
        assert_eq!(cond(c, "Conflicted"), (false, "NoConflicts"), "{l}");
        let kinds: Vec<(&str, &str)> = listener_of(g, l)
            .supported_kinds
            .iter()
            .map(|k| (k.group.as_deref().unwrap_or(""), k.kind.as_str()))
            .collect();
        assert_eq!(kinds, [(GW, "HTTPRoute"), (GW, "GRPCRoute")]);
    }
    for l in ["same-host-1", "same-host-2"] {
        assert_eq!(
            cond(&listener_of(g, l).conditions, "Conflicted"),
            (true, "HostnameConflict")
        );
    }
    // The HTTPS listener's certificate, for its hostname.
    assert_eq!(a.certificates.len(), 1);
    assert_eq!(a.certificates[0].hostname.as_deref(), Some("secure.example.com"));
    assert_eq!(a.certificates[0].bind.port, 443);
    assert!(a.certificates[0].bind.tls);
    // Problems are warnings (the conflict is a condition, told by the listener's Programmed).
    assert!(
        a.warnings
            .iter()
            .any(|w| w.object == "Gateway infra/edge" && w.message.contains("unserved: PortUnavailable")),
        "{:#?}",
        a.warnings
    );
}

#[test]
fn addresses() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let mut w = World::new();
    let with = |name: &str, addresses: Value, port: u16, protocol: &str| {
        let mut g = gateway(
            name,
            "kedge",
            json!([{"name": "l", "port": port, "protocol": protocol,
                    "tls": {"certificateRefs": [{"name": "cert"}]}}]),
        );
        g["spec"]["addresses"] = addresses;
        g
    };
    w.add(tls_secret("infra", "cert"))
        // On the host, kedge on 0.0.0.0:80: usable.
        .add(with(
            "on-host",
            json!([{"type": "IPAddress", "value": "192.0.2.7"}]),
            80,
            "HTTP",
        ))
        // Not on the host: not usable with a listener on 0.0.0.0.
        .add(with(
            "off-host",
            json!([{"value": "192.0.2.7"}, {"value": "198.51.100.99"}]),
            80,
            "HTTP",
        ))
        // Not on the host, but a listener is bound to it.
        .add(with("bound", json!([{"value": "198.51.100.5"}]), 8443, "HTTPS"))
        // Bound on 8443, but the Gateway's listener is on 443 (0.0.0.0, not on the host).
        .add(with("wrong-port", json!([{"value": "198.51.100.5"}]), 80, "HTTP"))
        .add(with(
            "hostname",
            json!([{"type": "Hostname", "value": "edge.example.com"}]),
            80,
            "HTTP",
        ))
        .add(with("not-an-ip", json!([{"value": "edge.example.com"}]), 80, "HTTP"))
        .add(with("no-addresses", json!([]), 80, "HTTP"));
    let a = w.attach();

    let g = gw(&a, "on-host");
    assert_eq!(cond(&g.conditions, "Accepted"), (true, "Accepted"));
    assert_eq!(cond(&g.conditions, "Programmed"), (true, "Programmed"));
    assert_eq!(
        serde_json::to_value(&g.addresses).expect("json"),
        json!([{"type": "IPAddress", "value": "192.0.2.7"}])
    );

    let g = gw(&a, "off-host");
    assert_eq!(cond(&g.conditions, "Accepted"), (true, "Accepted"));
    assert_eq!(cond(&g.conditions, "Programmed"), (false, "AddressNotUsable"));
    assert!(
        g.conditions[1].message.contains("198.51.100.99"),
        "{:?}",
        g.conditions[1]
    );
    // Served on the usable one.
    assert_eq!(
        serde_json::to_value(&g.addresses).expect("json"),
        json!([{"type": "IPAddress", "value": "192.0.2.7"}])
    );

    let g = gw(&a, "bound");
    assert_eq!(cond(&g.conditions, "Programmed"), (true, "Programmed"));
    assert_eq!(a.certificates.len(), 1);
    assert_eq!(a.certificates[0].bind.addresses, [ip("198.51.100.5")]);

    let g = gw(&a, "wrong-port");
    assert_eq!(cond(&g.conditions, "Programmed"), (false, "AddressNotUsable"));
    assert!(g.addresses.is_empty());
    assert_eq!(cond(&g.listeners[0].conditions, "Programmed"), (false, "Invalid"));

    for name in ["hostname", "not-an-ip"] {
        let g = gw(&a, name);
        assert_eq!(cond(&g.conditions, "Accepted"), (false, "UnsupportedAddress"), "{name}");
        assert_eq!(cond(&g.conditions, "Programmed"), (false, "Invalid"), "{name}");
    }

    // Without addresses: the publish addresses, typed.
    let g = gw(&a, "no-addresses");
    assert_eq!(
        serde_json::to_value(&g.addresses).expect("json"),
        json!([{"type": "IPAddress", "value": "203.0.113.10"}, {"type": "Hostname", "value": "edge.example.com"}])
    );
}

#[test]
fn binds_follow_addresses_and_publish_addresses() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let mut w = World::new();
    let mut on_host = gateway("on-host", "kedge", json!([http_listener("http", 80)]));
    on_host["spec"]["addresses"] = json!([{"value": "192.0.2.7"}]);
    w.add(service("infra", "web"))
        .add(on_host)
        .add(gateway("published", "kedge", json!([http_listener("http", 80)])))
        .add(route(
            "infra",
            "web",
            json!([{"name": "on-host"}, {"name": "published"}]),
            json!([]),
        ));
    let a = w.attach();
    let binds: Vec<(&str, Vec<IpAddr>)> = a
        .routes
        .iter()
        .map(|r| (&*r.gateway, r.bind.addresses.clone()))
        .collect();
    // The publish address 203.0.113.10 is on the host; edge.example.com is a name.
    assert_eq!(
        binds,
        [
            ("infra/on-host", vec![ip("192.0.2.7")]),
            ("infra/published", vec![ip("203.0.113.10")])
        ]
    );

    // Publish addresses that are not this host's (a load balancer's): every local address.
    let mut s = settings();
    s.publish_addresses = vec!["198.51.100.200".into()];
    let a = attach(&w.objects(), &s, &listeners());
    assert_eq!(a.routes[1].bind.addresses, Vec::<IpAddr>::new());
    assert_eq!(
        serde_json::to_value(&gw(&a, "published").addresses).expect("json"),
        json!([{"type": "IPAddress", "value": "198.51.100.200"}])
    );
    // No publish addresses: what kedge is bound to (the host's non-loopback addresses for
    // 0.0.0.0).
    s.publish_addresses.clear();
    let a = attach(&w.objects(), &s, &listeners());
    assert_eq!(
        serde_json::to_value(&gw(&a, "published").addresses).expect("json"),
        json!([{"type": "IPAddress", "value": "192.0.2.7"}, {"type": "IPAddress", "value": "203.0.113.10"}])
    );
}

#[test]
fn allowed_routes_namespaces_and_kinds() {
    let mut w = World::new();
    let l = |name: &str, port: u16, allowed: Value| json!({"name": name, "port": port, "protocol": "HTTP", "allowedRoutes": allowed});
    let mut g = gateway(
        "edge",
        "kedge",
        json!([
            {"name": "same", "port": 80, "protocol": "HTTP"},
            l("all", 80, json!({"namespaces": {"from": "All"}})),
            l("selected", 80, json!({"namespaces": {"from": "Selector", "selector": {
                "matchLabels": {"team": "a"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]}}})),
            l("http-only", 80, json!({"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]})),
            l("bad-kinds", 80, json!({"namespaces": {"from": "All"}, "kinds": [{"kind": "TCPRoute"}, {"group": "", "kind": "GRPCRoute"}]})),
        ]),
    );
    // Distinct hostnames so that the listeners do not conflict.
    for (i, name) in ["all", "selected", "http-only", "bad-kinds"].iter().enumerate() {
        g["spec"]["listeners"][i + 1]["hostname"] = json!(format!("{name}.example.com"));
    }
    w.add(g);
    for ns in ["infra", "a-prod", "a-dev", "b-prod"] {
        w.add(service(ns, "web"));
    }
    w.add(json!({"kind": "Namespace", "metadata": {"name": "a-prod", "labels": {"team": "a", "env": "prod"}}}))
        .add(json!({"kind": "Namespace", "metadata": {"name": "a-dev", "labels": {"team": "a", "env": "dev"}}}))
        .add(json!({"kind": "Namespace", "metadata": {"name": "b-prod", "labels": {"team": "b", "env": "prod"}}}));
    for ns in ["infra", "a-prod", "a-dev", "b-prod"] {
        w.add(route(
            ns,
            "web",
            json!([{"name": "edge", "namespace": "infra"}]),
            json!([]),
        ));
    }
    w.add(
        json!({"kind": "GRPCRoute", "metadata": {"name": "rpc", "namespace": "a-prod"},
                 "spec": {"parentRefs": [{"name": "edge", "namespace": "infra"}],
                          "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );
    let a = w.attach();
    let on = |key: &str| -> Vec<String> {
        a.routes
            .iter()
            .filter(|r| format!("{} {}", r.route.kind(), r.route.key()) == key)
            .map(|r| r.listener.name.clone())
            .collect()
    };
    assert_eq!(on("HTTPRoute infra/web"), ["same", "all", "http-only"]);
    assert_eq!(on("HTTPRoute a-prod/web"), ["all", "selected", "http-only"]);
    assert_eq!(on("HTTPRoute a-dev/web"), ["all", "http-only"]);
    assert_eq!(on("HTTPRoute b-prod/web"), ["all", "http-only"]);
    assert_eq!(on("GRPCRoute a-prod/rpc"), ["all", "selected"]);
    let g = gw(&a, "edge");
    let attached: Vec<i32> = g.listeners.iter().map(|l| l.attached_routes).collect();
    assert_eq!(attached, [1, 5, 2, 4, 0]);
    // Kinds kedge does not serve: named in ResolvedRefs, the valid ones still supported.
    let bad = listener_of(g, "bad-kinds");
    assert_eq!(cond(&bad.conditions, "ResolvedRefs"), (false, "InvalidRouteKinds"));
    assert!(bad.supported_kinds.is_empty(), "{:?}", bad.supported_kinds);
    let only = listener_of(g, "http-only");
    assert_eq!(only.supported_kinds.len(), 1);
    assert_eq!(only.supported_kinds[0].kind, "HTTPRoute");

    // A listener that allows nothing of the route: NotAllowedByListeners.
    let mut w2 = World::new();
    w2.add(gateway(
        "edge",
        "kedge",
        json!([{"name": "same", "port": 80, "protocol": "HTTP"}]),
    ))
    .add(service("apps", "web"))
    .add(route(
        "apps",
        "web",
        json!([{"name": "edge", "namespace": "infra"}]),
        json!([]),
    ));
    let a = w2.attach();
    let p = parents(&a, "apps/web");
    assert_eq!(cond(&p[0].conditions, "Accepted"), (false, "NotAllowedByListeners"));
    assert!(a.routes.is_empty());
    assert_eq!(gw(&a, "edge").listeners[0].attached_routes, 0);
}

#[test]
fn hostname_intersection() {
    let s = |v: &[&str]| v.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    /// (listener hostname, route hostnames, intersection).
    type Case<'c> = (Option<&'c str>, &'c [&'c str], Option<&'c [&'c str]>);
    let cases: &[Case<'_>] = &[
        (None, &[], Some(&[])),
        (
            None,
            &["A.example.com", "*.example.org"],
            Some(&["*.example.org", "a.example.com"]),
        ),
        (Some("a.example.com"), &[], Some(&["a.example.com"])),
        (
            Some("a.example.com"),
            &["a.example.com", "b.example.com"],
            Some(&["a.example.com"]),
        ),
        (Some("a.example.com"), &["b.example.com"], None),
        // A route wildcard narrowed to the listener's name.
        (Some("a.example.com"), &["*.example.com"], Some(&["a.example.com"])),
        (Some("example.com"), &["*.example.com"], None),
        // A listener wildcard: names within it (any number of labels), not the bare suffix.
        (
            Some("*.example.com"),
            &["a.example.com", "x.y.example.com", "example.com", "a.example.org"],
            Some(&["a.example.com", "x.y.example.com"]),
        ),
        // Two wildcards: the narrower one.
        (Some("*.example.com"), &["*.a.example.com"], Some(&["*.a.example.com"])),
        (Some("*.a.example.com"), &["*.example.com"], Some(&["*.a.example.com"])),
        (Some("*.example.com"), &["*.example.com"], Some(&["*.example.com"])),
        (Some("*.example.com"), &["*.example.org"], None),
        (Some("*.example.com"), &["*.com"], Some(&["*.example.com"])),
    ];
    for (listener, route, want) in cases {
        let got = intersect(*listener, &s(route));
        assert_eq!(got, want.map(s), "{listener:?} × {route:?}");
    }
}

#[test]
fn parent_refs_section_port_and_hostnames() {
    let mut w = World::new();
    w.add(service("infra", "web")).add(gateway(
        "edge",
        "kedge",
        json!([
            {"name": "a", "port": 80, "protocol": "HTTP", "hostname": "a.example.com"},
            {"name": "wild", "port": 80, "protocol": "HTTP", "hostname": "*.example.org"},
        ]),
    ));
    let r = |name: &str, refs: Value, hosts: Value| w_route(name, refs, hosts);
    fn w_route(name: &str, refs: Value, hosts: Value) -> Value {
        route("infra", name, refs, hosts)
    }
    w.add(r("whole", json!([{"name": "edge"}]), json!([])))
        .add(r(
            "section",
            json!([{"name": "edge", "sectionName": "wild"}]),
            json!(["x.example.org"]),
        ))
        .add(r(
            "no-section",
            json!([{"name": "edge", "sectionName": "nope"}]),
            json!([]),
        ))
        .add(r(
            "port",
            json!([{"name": "edge", "port": 80, "sectionName": "a"}]),
            json!([]),
        ))
        .add(r("no-port", json!([{"name": "edge", "port": 81}]), json!([])))
        .add(r("no-host", json!([{"name": "edge"}]), json!(["b.example.com"])))
        // Two references to one listener: served once, counted once.
        .add(r(
            "twice",
            json!([{"name": "edge"}, {"name": "edge", "sectionName": "a"}]),
            json!(["a.example.com"]),
        ));
    let a = w.attach();
    let accepted = |key: &str, i: usize| {
        let p = parents(&a, key);
        let (s, r) = cond(&p[i].conditions, "Accepted");
        (s, r.to_owned())
    };
    assert_eq!(accepted("infra/whole", 0), (true, "Accepted".into()));
    assert_eq!(accepted("infra/section", 0), (true, "Accepted".into()));
    assert_eq!(accepted("infra/no-section", 0), (false, "NoMatchingParent".into()));
    assert_eq!(accepted("infra/port", 0), (true, "Accepted".into()));
    assert_eq!(accepted("infra/no-port", 0), (false, "NoMatchingParent".into()));
    assert_eq!(
        accepted("infra/no-host", 0),
        (false, "NoMatchingListenerHostname".into())
    );
    assert_eq!(accepted("infra/twice", 0), (true, "Accepted".into()));
    assert_eq!(accepted("infra/twice", 1), (true, "Accepted".into()));
    assert_eq!(
        parents(&a, "infra/twice")[1].parent_ref.section_name.as_deref(),
        Some("a")
    );
    let want: Vec<(String, String, String, Vec<String>)> = vec![
        (
            "infra/whole".into(),
            "infra/edge".into(),
            "a".into(),
            vec!["a.example.com".into()],
        ),
        (
            "infra/whole".into(),
            "infra/edge".into(),
            "wild".into(),
            vec!["*.example.org".into()],
        ),
        (
            "infra/section".into(),
            "infra/edge".into(),
            "wild".into(),
            vec!["x.example.org".into()],
        ),
        (
            "infra/port".into(),
            "infra/edge".into(),
            "a".into(),
            vec!["a.example.com".into()],
        ),
        (
            "infra/twice".into(),
            "infra/edge".into(),
            "a".into(),
            vec!["a.example.com".into()],
        ),
    ];
    assert_eq!(served(&a), want);
    let g = gw(&a, "edge");
    assert_eq!(listener_of(g, "a").attached_routes, 3);
    assert_eq!(listener_of(g, "wild").attached_routes, 2);
    // Every refused parent is a warning on its route.
    assert!(
        a.warnings
            .iter()
            .any(|w| w.object == "HTTPRoute infra/no-host" && w.message.contains("NoMatchingListenerHostname")),
        "{:#?}",
        a.warnings
    );
}

#[test]
fn resolve_backends() {
    let mut w = World::new();
    w.add(service("apps", "web"))
        .add(service("backends", "db"))
        .add(service("backends", "open"))
        .add(
            json!({"kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "backends"},
                    "spec": {"from": [{"group": GW, "kind": "HTTPRoute", "namespace": "apps"}],
                             "to": [{"group": "", "kind": "Service", "name": "open"}]}}),
        );
    let objects = w.objects();
    let r = |v: Value| serde_json::from_value::<BackendRef>(v).expect("backendRef");
    let refs = RefIndex::new(&objects);
    let check = |kind: &str, v: Value| resolve_backend(&refs, "apps", kind, &r(v)).map_err(|p| p.reason);
    assert_eq!(
        check("HTTPRoute", json!({"name": "web", "port": 80})),
        Ok(("apps".into(), "web".into(), 80))
    );
    assert_eq!(
        check(
            "HTTPRoute",
            json!({"group": "", "kind": "Service", "name": "web", "port": 80})
        ),
        Ok(("apps".into(), "web".into(), 80))
    );
    assert_eq!(
        check("HTTPRoute", json!({"name": "web", "port": 81})),
        Err("BackendNotFound")
    );
    assert_eq!(check("HTTPRoute", json!({"name": "web"})), Err("BackendNotFound"));
    assert_eq!(
        check("HTTPRoute", json!({"name": "nope", "port": 80})),
        Err("BackendNotFound")
    );
    assert_eq!(
        check(
            "HTTPRoute",
            json!({"kind": "Bucket", "group": "example.com", "name": "web", "port": 80})
        ),
        Err("InvalidKind")
    );
    assert_eq!(
        check("HTTPRoute", json!({"kind": "Pod", "name": "web", "port": 80})),
        Err("InvalidKind")
    );
    // Across namespaces: only with a grant, and before saying whether it exists.
    assert_eq!(
        check("HTTPRoute", json!({"name": "db", "namespace": "backends", "port": 80})),
        Err("RefNotPermitted")
    );
    assert_eq!(
        check(
            "HTTPRoute",
            json!({"name": "gone", "namespace": "backends", "port": 80})
        ),
        Err("RefNotPermitted")
    );
    assert_eq!(
        check(
            "HTTPRoute",
            json!({"name": "open", "namespace": "backends", "port": 80})
        ),
        Ok(("backends".into(), "open".into(), 80))
    );
    assert_eq!(
        check(
            "GRPCRoute",
            json!({"name": "open", "namespace": "backends", "port": 80})
        ),
        Err("RefNotPermitted")
    );
}

#[test]
fn unresolved_backends_leave_the_route_accepted_and_counted() {
    let mut w = World::new();
    w.add(gateway("edge", "kedge", json!([http_listener("http", 80)])))
        .add(service("backends", "db"))
        .add(
            json!({"kind": "HTTPRoute", "metadata": {"name": "cross", "namespace": "apps"},
                    "spec": {"parentRefs": [{"name": "edge", "namespace": "infra"}],
                             "rules": [{"backendRefs": [{"name": "db", "namespace": "backends", "port": 80}]}]}}),
        )
        .add(route(
            "apps",
            "missing",
            json!([{"name": "edge", "namespace": "infra"}]),
            json!([]),
        ));
    let a = w.attach();
    let p = parents(&a, "apps/cross");
    assert_eq!(cond(&p[0].conditions, "Accepted"), (true, "Accepted"));
    assert_eq!(cond(&p[0].conditions, "ResolvedRefs"), (false, "RefNotPermitted"));
    let p = parents(&a, "apps/missing");
    assert_eq!(cond(&p[0].conditions, "ResolvedRefs"), (false, "BackendNotFound"));
    assert_eq!(gw(&a, "edge").listeners[0].attached_routes, 2);
    assert_eq!(a.routes.len(), 2);

    // With the grant: resolved.
    w.add(
        json!({"kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "backends"},
                 "spec": {"from": [{"group": GW, "kind": "HTTPRoute", "namespace": "apps"}],
                          "to": [{"group": "", "kind": "Service"}]}}),
    );
    let a = w.attach();
    assert_eq!(
        cond(&parents(&a, "apps/cross")[0].conditions, "ResolvedRefs"),
        (true, "ResolvedRefs")
    );
}

#[test]
fn certificate_refs() {
    let mut w = World::new();
    let https = |name: &str, host: &str, refs: Value| {
        json!({"name": name, "port": 443, "protocol": "HTTPS", "hostname": host,
               "tls": {"certificateRefs": refs}})
    };
    w.add(tls_secret("infra", "local"))
        .add(tls_secret("certs", "shared"))
        .add(tls_secret("certs", "granted"))
        .add(
            json!({"kind": "Secret", "metadata": {"name": "opaque", "namespace": "infra"}, "type": "Opaque",
                    "data": {"tls.crt": b64(CRT), "tls.key": b64(KEY)}}),
        )
        .add(
            json!({"kind": "Secret", "metadata": {"name": "empty", "namespace": "infra"}, "type": "kubernetes.io/tls",
                    "data": {"tls.crt": b64(CRT)}}),
        )
        .add(
            json!({"kind": "Secret", "metadata": {"name": "malformed", "namespace": "infra"}, "type": "kubernetes.io/tls",
                    "data": {"tls.crt": b64("not a certificate"), "tls.key": b64(KEY)}}),
        )
        .add(
            json!({"kind": "ReferenceGrant", "metadata": {"name": "g", "namespace": "certs"},
                    "spec": {"from": [{"group": GW, "kind": "Gateway", "namespace": "infra"}],
                             "to": [{"group": "", "kind": "Secret", "name": "granted"}]}}),
        )
        .add(gateway(
            "edge",
            "kedge",
            json!([
                https("local", "local.example.com", json!([{"name": "local"}])),
                https("granted", "granted.example.com", json!([{"name": "granted", "namespace": "certs"}])),
                https("not-granted", "shared.example.com", json!([{"name": "shared", "namespace": "certs"}])),
                https("missing", "missing.example.com", json!([{"name": "nope"}])),
                https("opaque", "opaque.example.com", json!([{"name": "opaque"}])),
                https("empty", "empty.example.com", json!([{"name": "empty"}])),
                https("malformed", "malformed.example.com", json!([{"name": "malformed"}])),
                https("kind", "kind.example.com", json!([{"group": "example.com", "kind": "Vault", "name": "x"}])),
                https("partly", "partly.example.com", json!([{"name": "local"}, {"name": "nope"}])),
                {"name": "none", "port": 443, "protocol": "HTTPS", "hostname": "none.example.com"},
            ]),
        ));
    let a = w.attach();
    let g = gw(&a, "edge");
    let state = |l: &str| {
        let c = &listener_of(g, l).conditions;
        (cond(c, "ResolvedRefs"), cond(c, "Programmed").0)
    };
    assert_eq!(state("local"), ((true, "ResolvedRefs"), true));
    assert_eq!(state("granted"), ((true, "ResolvedRefs"), true));
    assert_eq!(state("not-granted"), ((false, "RefNotPermitted"), false));
    for l in ["missing", "opaque", "empty", "malformed", "kind", "none"] {
        assert_eq!(state(l), ((false, "InvalidCertificateRef"), false), "{l}");
    }
    // One usable certificate of two: served with it, the other reported.
    assert_eq!(state("partly"), ((false, "InvalidCertificateRef"), true));
    let certs: Vec<(Option<&str>, &str)> = a
        .certificates
        .iter()
        .map(|c| (c.hostname.as_deref(), c.secret.metadata.name.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        certs,
        [
            (Some("local.example.com"), "local"),
            (Some("granted.example.com"), "granted"),
            (Some("partly.example.com"), "local"),
        ]
    );
    assert_eq!(a.certificates[0].owner, "Gateway infra/edge local");
}

fn grant(ns: &str, from_ns: &str, to_name: Option<&str>) -> Arc<ReferenceGrant> {
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "g", "namespace": ns},
            "spec": {
                "from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_ns}],
                "to": [{"group": "", "kind": "Service", "name": to_name}],
            }
        }))
        .unwrap(),
    )
}

#[test]
fn reference_grants() {
    let gw = "gateway.networking.k8s.io";
    let check = |grants: &[Arc<ReferenceGrant>], from_ns: &str, name: &str| {
        ref_permitted(grants, from_ns, gw, "HTTPRoute", "backends", "", "Service", name)
    };
    // Same namespace: always.
    assert!(ref_permitted(&[], "a", gw, "HTTPRoute", "a", "", "Service", "s"));
    // Another namespace: only with a grant in the target namespace.
    assert!(!check(&[], "apps", "s"));
    assert!(check(&[grant("backends", "apps", None)], "apps", "s"));
    assert!(check(&[grant("backends", "apps", Some("s"))], "apps", "s"));
    assert!(!check(&[grant("backends", "apps", Some("t"))], "apps", "s"));
    assert!(!check(&[grant("backends", "other", None)], "apps", "s"));
    // A grant in the source namespace grants nothing.
    assert!(!check(&[grant("apps", "apps", None)], "apps", "s"));
    // Kind must match.
    assert!(!ref_permitted(
        &[grant("backends", "apps", None)],
        "apps",
        gw,
        "GRPCRoute",
        "backends",
        "",
        "Service",
        "s"
    ));
}

/// Everything an attachment decided, as text.
fn dump(a: &Attachment<'_>) -> String {
    let mut s = format!("{:?}\n", served(a));
    for p in &a.parents {
        s += &format!("parent {} {:?} {:?}\n", p.route.key(), p.parent_ref, p.conditions);
    }
    for g in &a.gateways {
        s += &format!("gateway {:?} {:?}\n", g.conditions, g.listeners);
    }
    s += &format!("{:?}\n{:?}\n", a.listeners, a.warnings);
    s
}

/// An update's attachment, which takes the unchanged routes' decisions from the last build,
/// equals one decided from nothing: after a route change, a Service change (named as changed),
/// and changes that every decision depends on (a Namespace's labels, a ReferenceGrant, a
/// Gateway), which decide every route again.
#[test]
fn kept_decisions_equal_decisions_from_nothing() {
    let mut w = World::new();
    w.add(gateway(
        "edge",
        "kedge",
        json!([
            {"name": "selected", "port": 80, "protocol": "HTTP", "hostname": "*.example.com",
             "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}},
            http_listener("all", 80),
        ]),
    ));
    w.add(json!({"kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "a"}}}))
        .add(json!({"kind": "Namespace", "metadata": {"name": "b", "labels": {"team": "b"}}}));
    w.add(service("a", "web")).add(service("b", "web"));
    for (ns, name, host) in [("a", "one", "one.example.com"), ("b", "two", "two.example.com")] {
        w.add(route(
            ns,
            name,
            json!([{"name": "edge", "namespace": "infra"}]),
            json!([host]),
        ));
    }
    // A reference into namespace b, without a grant yet.
    w.add(
        json!({"kind": "HTTPRoute", "metadata": {"name": "cross", "namespace": "a"},
                 "spec": {"parentRefs": [{"name": "edge", "namespace": "infra", "sectionName": "selected"}],
                          "rules": [{"backendRefs": [{"name": "web", "namespace": "b", "port": 80}]}]}}),
    );
    let mut cache = RouteCache::default();
    let first = attach_with(&w.objects(), &settings(), &listeners(), &mut cache, None);
    assert_eq!(dump(&first), dump(&w.attach()));
    drop(first);
    assert_eq!(cache.len(), 3);
    let none = BTreeSet::new();
    let step = |w: &World, cache: &mut RouteCache, changed: &BTreeSet<(String, String)>, what: &str| {
        let kept = attach_with(&w.objects(), &settings(), &listeners(), cache, Some(changed));
        assert_eq!(dump(&kept), dump(&w.attach()), "after {what}");
        dump(&kept)
    };
    // A route changes: it moves to another hostname.
    w.http[0] = from(route(
        "a",
        "one",
        json!([{"name": "edge", "namespace": "infra"}]),
        json!(["uno.example.com"]),
    ));
    assert!(step(&w, &mut cache, &none, "a route change").contains("uno.example.com"));
    // Service b/web loses port 80: route two's and cross's backend no longer resolves.
    w.services[1] = from(json!({"kind": "Service", "metadata": {"name": "web", "namespace": "b"},
                                "spec": {"ports": [{"name": "http", "port": 81}]}}));
    let changed = BTreeSet::from([("b".to_owned(), "web".to_owned())]);
    assert!(step(&w, &mut cache, &changed, "a Service change").contains("has no port 80"));
    // Namespace b joins team a: route two attaches to listener selected too.
    w.namespaces[1] = from(json!({"kind": "Namespace", "metadata": {"name": "b", "labels": {"team": "a"}}}));
    step(&w, &mut cache, &none, "a Namespace change");
    // A grant lets route cross refer to b/web (still without port 80).
    w.grants.push(grant("b", "a", None));
    assert!(!step(&w, &mut cache, &none, "a ReferenceGrant").contains("RefNotPermitted"));
    // The Gateway loses listener selected.
    w.gateways[0] = from(gateway("edge", "kedge", json!([http_listener("all", 80)])));
    step(&w, &mut cache, &none, "a Gateway change");
    // Routes deleted.
    w.http.truncate(1);
    step(&w, &mut cache, &none, "routes deleted");
}

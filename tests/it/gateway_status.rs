//! Gateway API status end to end: kedge follows the fixture API server with the Gateway API
//! installed, and what it writes into the status of GatewayClasses, Gateways and routes is read
//! back from the fixture (polled, never slept for): classes accepted, Gateways accepted and
//! programmed with their addresses, listeners kedge cannot serve, routes attached or not (and
//! counted), backend references with and without ReferenceGrants, `observedGeneration`
//! following spec changes, and only the status Lease holder writing; and HTTPS listeners'
//! certificates served by SNI to a real TLS client.

use serde_json::{Value, json};

use crate::leader::{WAIT, edge, renewals};
use crate::support::objects::{gateway, gateway_class, http_route};
use crate::support::tls::TestCa;
use crate::support::{Client, Driver, FakeApi, Kedge, Signal, TempDir, wait_for, wait_until};

const CONTROLLER: &str = "kedge.dev/gateway-controller";
const GROUP: &str = "gateway.networking.k8s.io";

/// The fixture with the Gateway API installed, kedge's GatewayClass `kedge` and another
/// controller's `other`.
fn api() -> FakeApi {
    let api = FakeApi::start();
    api.install_gateway_api();
    api.apply("gatewayclasses", gateway_class("kedge", CONTROLLER));
    api.apply("gatewayclasses", gateway_class("other", "acme.io/gateway-controller"));
    api
}

/// Service `ns/name` with port 80.
fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80}]}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// An HTTP listener on `port` taking routes from every namespace.
fn http(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}})
}

fn get(api: &FakeApi, resource: &str, ns: Option<&str>, name: &str) -> Value {
    api.get(resource, ns, name)
        .unwrap_or_else(|| panic!("{resource} {ns:?}/{name} exists"))
}

/// Polls object `resource` `ns/name` until `check` holds for it; returns it. Panics after
/// [`WAIT`] with the status last seen.
fn wait_status(
    api: &FakeApi,
    resource: &str,
    ns: Option<&str>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(WAIT, what, || {
        let obj = get(api, resource, ns, name);
        if check(&obj) {
            Ok(obj)
        } else {
            Err(obj["status"].clone())
        }
    })
}

/// (status, reason, observedGeneration) of condition `type_` in `conditions`; empty strings
/// and -1 when it is not there.
fn cond(conditions: &Value, type_: &str) -> (String, String, i64) {
    conditions
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .map_or((String::new(), String::new(), -1), |c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["observedGeneration"].as_i64().unwrap_or(-1),
            )
        })
}

fn is(conditions: &Value, type_: &str, status: &str, reason: &str) -> bool {
    let (s, r, _) = cond(conditions, type_);
    s == status && r == reason
}

/// The status entry of listener `name` of a Gateway.
fn listener(gw: &Value, name: &str) -> Value {
    gw["status"]["listeners"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// kedge's parent entries of a route.
fn ours(route: &Value) -> Vec<Value> {
    route["status"]["parents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["controllerName"] == CONTROLLER)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// kedge following `api` (its state in a temporary directory named after `tag`), and Gateway
/// `infra/edge` of class `kedge` with an HTTP listener on kedge's port; returns the directory,
/// kedge and the `parentRefs` naming that Gateway.
fn follow_with_edge(api: &FakeApi, tag: &str) -> (TempDir, Kedge, Value) {
    let dir = TempDir::new(tag);
    let kedge = Kedge::follow(api, &dir, "");
    let port = kedge.addr().port();
    api.apply(
        "gateways",
        gateway("infra", "edge", "kedge", json!([http("http", port)])),
    );
    (dir, kedge, json!([{"name": "edge", "namespace": "infra"}]))
}

/// Waits until HTTPRoute `ns/name` has one parent entry of kedge's with `Accepted` and
/// `ResolvedRefs` as given; returns that entry.
fn wait_parent(api: &FakeApi, ns: &str, name: &str, accepted: (&str, &str), resolved: (&str, &str)) -> Value {
    wait_parent_of(api, "httproutes", ns, name, accepted, resolved)
}

/// [`wait_parent`] for a route of `resource` (`httproutes`, `grpcroutes`).
fn wait_parent_of(
    api: &FakeApi,
    resource: &str,
    ns: &str,
    name: &str,
    accepted: (&str, &str),
    resolved: (&str, &str),
) -> Value {
    let what = format!("{resource} {ns}/{name} {accepted:?} {resolved:?}");
    let route = wait_status(api, resource, Some(ns), name, &what, |r| {
        ours(r).first().is_some_and(|p| {
            is(&p["conditions"], "Accepted", accepted.0, accepted.1)
                && is(&p["conditions"], "ResolvedRefs", resolved.0, resolved.1)
        })
    });
    ours(&route).remove(0)
}

#[test]
fn kedges_class_is_accepted_and_its_gateway_programmed_with_addresses() {
    let api = api();
    let dir = TempDir::new("gw-status");
    let kedge = Kedge::follow(&api, &dir, "");
    let port = kedge.addr().port();
    api.apply(
        "gateways",
        gateway("infra", "edge", "kedge", json!([http("http", port)])),
    );
    api.apply(
        "gateways",
        gateway("infra", "theirs", "other", json!([http("http", port)])),
    );

    let class = wait_status(&api, "gatewayclasses", None, "kedge", "kedge's class accepted", |c| {
        is(&c["status"]["conditions"], "Accepted", "True", "Accepted")
    });
    assert_eq!(cond(&class["status"]["conditions"], "Accepted").2, 1);
    assert!(class["status"]["supportedFeatures"].is_array(), "{:#}", class["status"]);

    let gw = wait_status(&api, "gateways", Some("infra"), "edge", "the Gateway programmed", |g| {
        is(&g["status"]["conditions"], "Programmed", "True", "Programmed")
    });
    let status = &gw["status"];
    assert_eq!(
        cond(&status["conditions"], "Accepted"),
        ("True".into(), "Accepted".into(), 1)
    );
    // No spec or publish addresses: the address kedge's listener is bound to.
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    let l = listener(&gw, "http");
    assert_eq!(l["attachedRoutes"], 0);
    assert_eq!(
        l["supportedKinds"],
        json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
    );
    for (t, s, r) in [
        ("Accepted", "True", "Accepted"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Programmed", "True", "Programmed"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        assert_eq!(cond(&l["conditions"], t), (s.into(), r.into(), 1), "{t}");
    }
    // Another controller's class and Gateway: never written.
    assert!(get(&api, "gatewayclasses", None, "other")["status"].is_null());
    assert!(get(&api, "gateways", Some("infra"), "theirs")["status"].is_null());
    assert_eq!(api.status_writes_of("gatewayclasses", None, "other"), 0);
    assert_eq!(api.status_writes_of("gateways", Some("infra"), "theirs"), 0);
    assert!(
        api.request_log()
            .iter()
            .any(|r| r.starts_with("PATCH /apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/edge/status")),
        "a PATCH of the status subresource: {:#?}",
        api.request_log()
    );
}

#[test]
fn listeners_and_addresses_kedge_cannot_serve() {
    let api = api();
    let dir = TempDir::new("gw-status");
    let kedge = Kedge::follow(&api, &dir, "");
    let port = kedge.addr().port();
    // A port kedge does not listen on: its own port + 1 is not one of kedge's listeners.
    let unserved = port.wrapping_add(1);
    api.apply(
        "gateways",
        gateway(
            "infra",
            "edge",
            "kedge",
            json!([
                http("http", port),
                http("unserved", unserved),
                {"name": "tcp", "port": 9000, "protocol": "TCP"},
            ]),
        ),
    );
    let with_address = |name: &str, address: Value| {
        let mut g = gateway("infra", name, "kedge", json!([http("http", port)]));
        g["spec"]["addresses"] = json!([address]);
        g
    };
    api.apply(
        "gateways",
        with_address("bound", json!({"type": "IPAddress", "value": "127.0.0.1"})),
    );
    api.apply("gateways", with_address("elsewhere", json!({"value": "198.51.100.1"})));
    api.apply(
        "gateways",
        with_address("named", json!({"type": "Hostname", "value": "edge.example.com"})),
    );

    let gw = wait_status(&api, "gateways", Some("infra"), "edge", "the Gateway's status", |g| {
        !g["status"]["listeners"].is_null()
    });
    assert!(
        is(
            &listener(&gw, "unserved")["conditions"],
            "Accepted",
            "False",
            "PortUnavailable"
        ),
        "{:#}",
        gw["status"]
    );
    assert!(is(
        &listener(&gw, "unserved")["conditions"],
        "Programmed",
        "False",
        "Invalid"
    ));
    assert!(is(
        &listener(&gw, "tcp")["conditions"],
        "Accepted",
        "False",
        "UnsupportedProtocol"
    ));
    assert_eq!(listener(&gw, "tcp")["supportedKinds"], json!([]));
    assert!(is(&listener(&gw, "http")["conditions"], "Accepted", "True", "Accepted"));
    // Some listeners are not valid, the Gateway is accepted and programmed for the others.
    assert!(is(&gw["status"]["conditions"], "Accepted", "True", "ListenersNotValid"));
    assert!(is(&gw["status"]["conditions"], "Programmed", "True", "Programmed"));

    let bound = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "bound",
        "the Gateway on 127.0.0.1",
        |g| is(&g["status"]["conditions"], "Programmed", "True", "Programmed"),
    );
    assert_eq!(
        bound["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "127.0.0.1"}])
    );
    let elsewhere = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "elsewhere",
        "the Gateway on another address",
        |g| is(&g["status"]["conditions"], "Programmed", "False", "AddressNotUsable"),
    );
    assert!(is(&elsewhere["status"]["conditions"], "Accepted", "True", "Accepted"));
    assert_eq!(elsewhere["status"]["addresses"], json!([]));
    let named = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "named",
        "the Gateway with a Hostname address",
        |g| is(&g["status"]["conditions"], "Accepted", "False", "UnsupportedAddress"),
    );
    assert!(is(&named["status"]["conditions"], "Programmed", "False", "Invalid"));
    // Each is a warning in kedge's log.
    kedge.wait_log("listener unserved: PortUnavailable", WAIT);
}

#[test]
fn routes_attach_by_parent_namespace_and_hostname_and_are_counted() {
    let api = api();
    api.apply("namespaces", namespace("infra", json!({})));
    api.apply("namespaces", namespace("apps", json!({"team": "a"})));
    api.apply("namespaces", namespace("other", json!({"team": "b"})));
    for ns in ["infra", "apps", "other"] {
        api.apply("services", service(ns, "web"));
    }
    let dir = TempDir::new("gw-status");
    let kedge = Kedge::follow(&api, &dir, "");
    let port = kedge.addr().port();
    api.apply(
        "gateways",
        gateway(
            "infra",
            "edge",
            "kedge",
            json!([
                {"name": "same", "port": port, "protocol": "HTTP", "hostname": "web.example.com"},
                {"name": "team-a", "port": port, "protocol": "HTTP", "hostname": "*.example.org",
                 "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}}},
            ]),
        ),
    );
    let edge = json!([{"name": "edge", "namespace": "infra"}]);
    let web = json!([{"name": "web", "port": 80}]);
    api.apply(
        "httproutes",
        http_route("infra", "web", edge.clone(), json!(["web.example.com"]), web.clone()),
    );
    api.apply(
        "httproutes",
        http_route("apps", "web", edge.clone(), json!(["a.example.org"]), web.clone()),
    );
    api.apply(
        "httproutes",
        http_route("other", "web", edge.clone(), json!(["b.example.org"]), web.clone()),
    );
    api.apply(
        "httproutes",
        http_route(
            "infra",
            "elsewhere",
            edge.clone(),
            json!(["web.example.net"]),
            web.clone(),
        ),
    );
    api.apply(
        "httproutes",
        http_route(
            "infra",
            "no-section",
            json!([{"name": "edge", "sectionName": "nope"}]),
            json!([]),
            web.clone(),
        ),
    );

    // A GRPCRoute attaches the same way.
    api.apply(
        "grpcroutes",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
               "metadata": {"name": "rpc", "namespace": "apps"},
               "spec": {"parentRefs": edge, "hostnames": ["rpc.example.org"],
                        "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}),
    );

    let accepted = wait_parent(&api, "infra", "web", ("True", "Accepted"), ("True", "ResolvedRefs"));
    assert_eq!(
        accepted["parentRef"],
        json!({"group": GROUP, "kind": "Gateway", "name": "edge", "namespace": "infra"})
    );
    assert_eq!(accepted["controllerName"], CONTROLLER);
    wait_parent(&api, "apps", "web", ("True", "Accepted"), ("True", "ResolvedRefs"));
    wait_parent(
        &api,
        "other",
        "web",
        ("False", "NotAllowedByListeners"),
        ("True", "ResolvedRefs"),
    );
    wait_parent(
        &api,
        "infra",
        "elsewhere",
        ("False", "NoMatchingListenerHostname"),
        ("True", "ResolvedRefs"),
    );
    wait_parent(
        &api,
        "infra",
        "no-section",
        ("False", "NoMatchingParent"),
        ("True", "ResolvedRefs"),
    );
    let gw = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "the routes counted on each listener",
        |g| listener(g, "same")["attachedRoutes"] == 1 && listener(g, "team-a")["attachedRoutes"] == 2,
    );
    let rpc = wait_parent_of(
        &api,
        "grpcroutes",
        "apps",
        "rpc",
        ("True", "Accepted"),
        ("True", "ResolvedRefs"),
    );
    assert_eq!(rpc["parentRef"]["kind"], "Gateway");
    assert!(is(&gw["status"]["conditions"], "Accepted", "True", "Accepted"));

    // Namespace labels change: the other team's route is allowed too, and counted.
    api.apply("namespaces", namespace("other", json!({"team": "a"})));
    wait_parent(&api, "other", "web", ("True", "Accepted"), ("True", "ResolvedRefs"));
    wait_status(&api, "gateways", Some("infra"), "edge", "three routes on team-a", |g| {
        listener(g, "team-a")["attachedRoutes"] == 3
    });
}

#[test]
fn backend_references_resolve_across_namespaces_only_with_a_grant() {
    let api = api();
    api.apply("services", service("backends", "db"));
    let (_dir, _kedge, edge) = follow_with_edge(&api, "gw-status");
    api.apply(
        "httproutes",
        http_route(
            "apps",
            "cross",
            edge.clone(),
            json!([]),
            json!([{"name": "db", "namespace": "backends", "port": 80}]),
        ),
    );
    api.apply(
        "httproutes",
        http_route(
            "apps",
            "missing",
            edge.clone(),
            json!([]),
            json!([{"name": "nope", "port": 80}]),
        ),
    );
    api.apply(
        "httproutes",
        http_route(
            "apps",
            "kind",
            edge.clone(),
            json!([]),
            json!([{"group": "example.com", "kind": "Bucket", "name": "b", "port": 80}]),
        ),
    );

    let p = wait_parent(
        &api,
        "apps",
        "cross",
        ("True", "Accepted"),
        ("False", "RefNotPermitted"),
    );
    let (_, _, generation) = cond(&p["conditions"], "ResolvedRefs");
    assert_eq!(generation, 1);
    wait_parent(
        &api,
        "apps",
        "missing",
        ("True", "Accepted"),
        ("False", "BackendNotFound"),
    );
    wait_parent(&api, "apps", "kind", ("True", "Accepted"), ("False", "InvalidKind"));
    // Accepted routes count, their references resolved or not.
    wait_status(&api, "gateways", Some("infra"), "edge", "three routes attached", |g| {
        listener(g, "http")["attachedRoutes"] == 3
    });

    api.apply(
        "referencegrants",
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "apps-to-db", "namespace": "backends"},
               "spec": {"from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": "apps"}],
                        "to": [{"group": "", "kind": "Service", "name": "db"}]}}),
    );
    wait_parent(&api, "apps", "cross", ("True", "Accepted"), ("True", "ResolvedRefs"));
    // The Service appears: resolved.
    api.apply("services", service("apps", "nope"));
    wait_parent(&api, "apps", "missing", ("True", "Accepted"), ("True", "ResolvedRefs"));
}

#[test]
fn observed_generation_follows_spec_changes_and_nothing_is_rewritten() {
    let api = api();
    api.apply("services", service("infra", "web"));
    let dir = TempDir::new("gw-status");
    let kedge = Kedge::follow(&api, &dir, "");
    let port = kedge.addr().port();
    api.apply(
        "gateways",
        gateway("infra", "edge", "kedge", json!([http("http", port)])),
    );
    let edge = json!([{"name": "edge"}]);
    let web = json!([{"name": "web", "port": 80}]);
    api.apply(
        "httproutes",
        http_route("infra", "web", edge.clone(), json!([]), web.clone()),
    );
    let gw = wait_status(&api, "gateways", Some("infra"), "edge", "the route attached", |g| {
        listener(g, "http")["attachedRoutes"] == 1
    });
    let accepted_at = gw["status"]["conditions"][0]["lastTransitionTime"].clone();
    wait_parent(&api, "infra", "web", ("True", "Accepted"), ("True", "ResolvedRefs"));
    let gw_writes = api.status_writes_of("gateways", Some("infra"), "edge");
    let route_writes = api.status_writes_of("httproutes", Some("infra"), "web");

    // The Gateway's spec changes (a second listener): generation 2, every condition follows,
    // and the Accepted condition that did not change keeps its transition time.
    let mut g = get(&api, "gateways", Some("infra"), "edge");
    g["spec"]["listeners"] =
        json!([http("http", port), {"name": "other", "port": port, "protocol": "HTTP", "hostname": "b.example.com"}]);
    api.apply("gateways", g);
    assert_eq!(
        get(&api, "gateways", Some("infra"), "edge")["metadata"]["generation"],
        2
    );
    let gw = wait_status(&api, "gateways", Some("infra"), "edge", "observedGeneration 2", |g| {
        cond(&g["status"]["conditions"], "Programmed").2 == 2
            && cond(&listener(g, "other")["conditions"], "Programmed").2 == 2
            && cond(&listener(g, "http")["conditions"], "Accepted").2 == 2
    });
    assert_eq!(cond(&gw["status"]["conditions"], "Accepted").2, 2);
    assert_eq!(gw["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(gw["status"]["conditions"][0]["lastTransitionTime"], accepted_at);

    // The route's spec changes: its entry follows.
    let mut r = get(&api, "httproutes", Some("infra"), "web");
    r["spec"]["hostnames"] = json!(["web.example.com"]);
    api.apply("httproutes", r);
    wait_status(
        &api,
        "httproutes",
        Some("infra"),
        "web",
        "the route's observedGeneration 2",
        |r| {
            ours(r)
                .first()
                .is_some_and(|p| cond(&p["conditions"], "Accepted").2 == 2)
        },
    );
    // A route that needs a write gets it once the writer has seen the builds before it; the
    // Gateway and the first route had one write per change, none for the rebuilds between.
    api.apply(
        "httproutes",
        http_route("infra", "later", edge.clone(), json!([]), web.clone()),
    );
    wait_parent(&api, "infra", "later", ("True", "Accepted"), ("True", "ResolvedRefs"));
    wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "the later route attached",
        |g| listener(g, "http")["attachedRoutes"] == 2 && listener(g, "other")["attachedRoutes"] == 1,
    );
    assert_eq!(
        api.status_writes_of("httproutes", Some("infra"), "web"),
        route_writes + 1
    );
    // The Gateway: one write for generation 2, then one for the counts after the route's
    // change and the later route (two if the writer saw them in separate builds).
    let now = api.status_writes_of("gateways", Some("infra"), "edge");
    assert!((gw_writes + 2..=gw_writes + 3).contains(&now), "{gw_writes} then {now}");
    assert_eq!(api.status_writes_of("httproutes", Some("infra"), "later"), 1);
}

#[test]
fn only_the_lease_holder_writes_gateway_status() {
    let api = api();
    let dirs = [TempDir::new("gw-leader-a"), TempDir::new("gw-leader-b")];
    let a = edge(&api, &dirs[0], "203.0.113.1");
    let b = edge(&api, &dirs[1], "203.0.113.2");
    let address = |ip: &str| json!([{"type": "IPAddress", "value": ip}]);
    // Each kedge serves the Gateway's listener on its own port; the holder's view is written.
    api.apply(
        "gateways",
        gateway(
            "infra",
            "edge",
            "kedge",
            json!([http("a", a.addr().port()), http("b", b.addr().port())]),
        ),
    );
    let gw = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "a kedge to write the Gateway's status",
        |g| !g["status"]["addresses"].is_null(),
    );
    let (mut holder, other, theirs, their_listener) = if gw["status"]["addresses"] == address("203.0.113.1") {
        (a, b, "203.0.113.2", "b")
    } else {
        (b, a, "203.0.113.1", "a")
    };
    let mine = gw["status"]["addresses"].clone();
    // Several renewals later only the holder has written: one write of the Gateway, its view
    // (the other kedge's port is not the holder's: PortUnavailable there).
    renewals(&api, 3);
    let gw = get(&api, "gateways", Some("infra"), "edge");
    assert_eq!(gw["status"]["addresses"], mine);
    assert!(is(
        &listener(&gw, their_listener)["conditions"],
        "Accepted",
        "False",
        "PortUnavailable"
    ));
    assert_eq!(
        api.status_writes_of("gateways", Some("infra"), "edge"),
        1,
        "only the holder writes"
    );
    assert_eq!(api.status_writes_of("gatewayclasses", None, "kedge"), 1);

    // The holder stops: the other takes over and writes its own view.
    holder.signal(Signal::Term);
    assert!(holder.wait_exit(WAIT).success());
    wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "the other kedge's status",
        |g| {
            g["status"]["addresses"] == address(theirs)
                && is(
                    &listener(g, their_listener)["conditions"],
                    "Accepted",
                    "True",
                    "Accepted",
                )
        },
    );
    other.wait_log("became the status writer for cluster test", WAIT);
    assert_eq!(api.status_writes_of("gateways", Some("infra"), "edge"), 2);
}

/// The leaf certificate served for `sni` on kedge's TLS listener, the handshake verified by
/// `ca`; `None` when the handshake fails.
fn served_leaf(kedge: &Kedge, ca: &TestCa, sni: &str) -> Option<rustls::pki_types::CertificateDer<'static>> {
    Client::try_connect_tls(kedge.tls_addr(), ca.client(), sni)
        .ok()
        .map(|c| c.peer_leaf())
}

#[test]
fn https_listeners_serve_their_certificate_refs_by_sni() {
    let ca = TestCa::new();
    let api = api();
    let dir = TempDir::new("gw-tls");
    // kedge's TLS listener without any certificate of its own: a handshake for a name no
    // certificate names is refused.
    let kedge = Kedge::setup(Driver::default()).tls().follow(&api, &dir, "");
    let port = kedge.tls_addr().port();
    let secure = ca.leaf(&["secure.example.com"]);
    let any = ca.leaf(&["any.example.com"]);
    let shared = ca.leaf(&["shared.example.com"]);
    api.apply("secrets", secure.secret("infra", "secure-tls"));
    api.apply("secrets", any.secret("infra", "any-tls"));
    api.apply("secrets", shared.secret("certs", "shared-tls"));
    let https = |name: &str, hostname: Option<&str>, cert: Value| {
        let mut l = json!({"name": name, "port": port, "protocol": "HTTPS", "tls": {"certificateRefs": [cert]}});
        if let Some(h) = hostname {
            l["hostname"] = json!(h);
        }
        l
    };
    api.apply(
        "gateways",
        gateway(
            "infra",
            "edge",
            "kedge",
            json!([
                https("secure", Some("secure.example.com"), json!({"name": "secure-tls"})),
                https("any", None, json!({"name": "any-tls"})),
                https(
                    "shared",
                    Some("shared.example.com"),
                    json!({"name": "shared-tls", "namespace": "certs"})
                ),
                https("missing", Some("missing.example.com"), json!({"name": "nope"})),
            ]),
        ),
    );

    // The listener's hostname selects its certificate.
    wait_until(WAIT, "secure.example.com served with its certificate", || {
        served_leaf(&kedge, &ca, "secure.example.com") == Some(secure.der.clone())
    });
    // A listener without hostname: its certificate serves the names it carries.
    assert!(served_leaf(&kedge, &ca, "any.example.com") == Some(any.der.clone()));
    // Another namespace's Secret without a ReferenceGrant: not served, and said so. (The status
    // may first show a build that had the Gateway but not yet the Secrets.)
    let refs = |g: &Value| {
        let resolved = |l: &str, s: &str, r: &str| is(&listener(g, l)["conditions"], "ResolvedRefs", s, r);
        resolved("shared", "False", "RefNotPermitted")
            && resolved("missing", "False", "InvalidCertificateRef")
            && resolved("secure", "True", "ResolvedRefs")
            && resolved("any", "True", "ResolvedRefs")
    };
    let gw = wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "the listeners' references",
        refs,
    );
    let programmed = |l: &str| cond(&listener(&gw, l)["conditions"], "Programmed").0;
    assert_eq!(
        ["secure", "any", "shared", "missing"].map(programmed),
        ["True", "True", "False", "False"]
    );
    assert!(served_leaf(&kedge, &ca, "shared.example.com").is_none());

    // The grant comes: served.
    api.apply(
        "referencegrants",
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
               "metadata": {"name": "infra-gateways", "namespace": "certs"},
               "spec": {"from": [{"group": GROUP, "kind": "Gateway", "namespace": "infra"}],
                        "to": [{"group": "", "kind": "Secret"}]}}),
    );
    wait_until(WAIT, "shared.example.com served once granted", || {
        served_leaf(&kedge, &ca, "shared.example.com") == Some(shared.der.clone())
    });
    wait_status(
        &api,
        "gateways",
        Some("infra"),
        "edge",
        "the granted listener resolved",
        |g| {
            is(
                &listener(g, "shared")["conditions"],
                "ResolvedRefs",
                "True",
                "ResolvedRefs",
            ) && is(&listener(g, "shared")["conditions"], "Programmed", "True", "Programmed")
        },
    );
}

/// What the rule translation refuses in a route (a filter kedge does not implement, a regex it
/// cannot compile, a RequestRedirect with a URLRewrite) turns its parent's `Accepted` False with
/// the spec's reason, and back when the route is fixed; a sound route next to them is accepted.
#[test]
fn refused_filters_and_matches_reach_the_route_parent() {
    let api = api();
    api.apply("services", service("apps", "web"));
    let (_dir, _kedge, edge) = follow_with_edge(&api, "gw-status-refused");
    let web = json!([{"name": "web", "port": 80}]);
    let with_rules = |name: &str, rules: Value| {
        let mut r = http_route("apps", name, edge.clone(), json!([]), json!([]));
        r["spec"]["rules"] = rules;
        r
    };
    let ext = |filters: Value| {
        with_rules(
            "ext",
            json!([{"filters": filters, "backendRefs": web},
                   {"matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}], "backendRefs": web}]),
        )
    };
    api.apply(
        "httproutes",
        ext(json!([{"type": "ExtensionRef", "extensionRef": {"group": "example.com", "kind": "Plugin", "name": "p"}}])),
    );
    api.apply(
        "httproutes",
        with_rules(
            "both",
            json!([{"filters": [
                       {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
                       {"type": "URLRewrite", "urlRewrite": {"hostname": "other.example.com"}}],
                    "backendRefs": web}]),
        ),
    );
    api.apply(
        "httproutes",
        with_rules(
            "regex",
            json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/items/(["}}], "backendRefs": web}]),
        ),
    );
    api.apply("httproutes", with_rules("sound", json!([{"backendRefs": web}])));

    let p = wait_parent(
        &api,
        "apps",
        "ext",
        ("False", "UnsupportedValue"),
        ("True", "ResolvedRefs"),
    );
    let message = p["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Accepted"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("rule 0") && message.contains("ExtensionRef"),
        "{message}"
    );
    wait_parent(
        &api,
        "apps",
        "both",
        ("False", "IncompatibleFilters"),
        ("True", "ResolvedRefs"),
    );
    wait_parent(
        &api,
        "apps",
        "regex",
        ("False", "UnsupportedValue"),
        ("True", "ResolvedRefs"),
    );
    wait_parent(&api, "apps", "sound", ("True", "Accepted"), ("True", "ResolvedRefs"));
    // Refused routes still count as attached: they are served but for what was refused.
    wait_status(&api, "gateways", Some("infra"), "edge", "4 routes attached", |g| {
        listener(g, "http")["attachedRoutes"] == 4
    });
    // Fixed: accepted again.
    api.apply("httproutes", ext(json!([])));
    wait_parent(&api, "apps", "ext", ("True", "Accepted"), ("True", "ResolvedRefs"));
}

/// How many route tables kedge published with `why="WHY"`.
fn published(kedge: &Kedge, why: &str) -> usize {
    let why = format!("why=\"{why}\"");
    kedge
        .logs()
        .iter()
        .filter(|l| l.contains("route table published") && l.contains(&why))
        .count()
}

/// A status write (kedge's own coming back, or another controller's) does not bump an object's
/// generation and does not rebuild the table: the status writers get a fresh view from an
/// update with no change once changes are quiet ("status"), not from a build from nothing. A
/// spec change is still published at once.
#[test]
fn status_writes_do_not_rebuild_the_table() {
    let api = api();
    api.apply("services", service("infra", "web"));
    let (_dir, kedge, edge) = follow_with_edge(&api, "gw-status-only");
    let web = json!([{"name": "web", "port": 80}]);
    api.apply(
        "httproutes",
        http_route("infra", "web", edge.clone(), json!([]), web.clone()),
    );
    wait_parent(&api, "infra", "web", ("True", "Accepted"), ("True", "ResolvedRefs"));
    // kedge's own status writes came back as status-only changes: a fresh view follows them.
    kedge.wait_logs("why=\"status\"", 1, WAIT);

    // Another controller writes its entry into the route's status: same generation.
    let mut r = get(&api, "httproutes", Some("infra"), "web");
    let generation = r["metadata"]["generation"].clone();
    r["status"]["parents"].as_array_mut().expect("parents").push(
        json!({"parentRef": {"name": "elsewhere"}, "controllerName": "acme.io/gateway-controller",
                     "conditions": []}),
    );
    let watch = published(&kedge, "watch");
    let settled = published(&kedge, "status");
    api.apply("httproutes", r);
    assert_eq!(
        get(&api, "httproutes", Some("infra"), "web")["metadata"]["generation"],
        generation
    );
    kedge.wait_logs("why=\"status\"", settled + 1, WAIT);
    assert_eq!(published(&kedge, "watch"), watch, "no rebuild for a status write");
    assert_eq!(
        published(&kedge, "settle"),
        0,
        "no build from nothing for a status write"
    );
    assert_eq!(ours(&get(&api, "httproutes", Some("infra"), "web")).len(), 1);

    // A spec change is published at once: an update of the route's hosts.
    let updates = published(&kedge, "update");
    let mut r = get(&api, "httproutes", Some("infra"), "web");
    r["spec"]["hostnames"] = json!(["web.example.com"]);
    api.apply("httproutes", r);
    kedge.wait_logs("why=\"update\"", updates + 1, WAIT);
}

/// A route that changes while kedge is still making the status writes of one view (a Gateway
/// that appears with many routes): kedge makes no view meanwhile (the writer would stop and
/// plan again), and the changed route's status follows once those writes are done.
#[test]
fn a_route_changed_during_many_status_writes_gets_its_status() {
    const ROUTES: usize = 1000;
    let api = api();
    api.apply("services", service("infra", "web"));
    let edge = json!([{"name": "edge", "namespace": "infra"}]);
    let web = json!([{"name": "web", "port": 80}]);
    let name = |i: usize| format!("r-{i}");
    for i in 0..ROUTES {
        api.apply(
            "httproutes",
            http_route("infra", &name(i), edge.clone(), json!([]), web.clone()),
        );
    }
    let (_dir, _kedge, _) = follow_with_edge(&api, "gw-status-busy");
    let written = || {
        (0..ROUTES)
            .filter(|&i| api.status_writes_of("httproutes", Some("infra"), &name(i)) > 0)
            .count()
    };
    wait_for(WAIT, "kedge's first route status writes", || {
        let n = written();
        if n > 0 { Ok(n) } else { Err(n) }
    });
    let last = name(ROUTES - 1);
    let mut r = get(&api, "httproutes", Some("infra"), &last);
    r["spec"]["hostnames"] = json!(["web.example.com"]);
    api.apply("httproutes", r);
    wait_status(&api, "httproutes", Some("infra"), &last, "observedGeneration 2", |r| {
        ours(r)
            .first()
            .is_some_and(|p| cond(&p["conditions"], "Accepted") == ("True".into(), "Accepted".into(), 2))
    });
    assert_eq!(written(), ROUTES, "every route's status written");
}

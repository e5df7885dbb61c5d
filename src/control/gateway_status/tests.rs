//! The status view from attachments of objects written as JSON: what kedge writes, and that a
//! build that changes nothing writes nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use serde_json::{Value, json};

use super::*;
use crate::config::ListenerSpec;
use crate::control::translate::gateway::{GatewaySettings, attach};

const CONTROLLER: &str = "kedge.dev/gateway-controller";
const NOW: &str = "2026-12-05T22:00:00Z";
const LATER: &str = "2026-12-05T23:00:00Z";

fn from<T: serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("object"))
}

struct World {
    classes: Vec<Arc<GatewayClass>>,
    gateways: Vec<Arc<Gateway>>,
    http: Vec<Arc<HttpRoute>>,
    services: Vec<Arc<Service>>,
}

impl World {
    fn objects(&self) -> Objects<'_> {
        Objects {
            gateway_classes: &self.classes,
            gateways: &self.gateways,
            http_routes: &self.http,
            services: &self.services,
            ..Objects::default()
        }
    }

    fn view(&self, now: &str) -> Vec<Item> {
        self.view_with(now, &mut Unchanged::default())
    }

    /// [`World::view`] remembering what earlier views decided.
    fn view_with(&self, now: &str, unchanged: &mut Unchanged) -> Vec<Item> {
        let settings = GatewaySettings {
            controller: CONTROLLER.into(),
            publish_addresses: vec!["203.0.113.10".into()],
            host_addresses: vec![],
        };
        let listeners = [ListenerSpec {
            address: "0.0.0.0:80".parse::<SocketAddr>().expect("addr"),
            tls: false,
            proxy_protocol: None,
        }];
        let objects = self.objects();
        let a = attach(&objects, &settings, &listeners);
        super::view_with(&a, &objects, CONTROLLER, now, unchanged)
    }

    /// Applies the items' status to the objects, as the API server would (a new
    /// resourceVersion), and returns how many there were.
    fn write(&mut self, items: &[Item]) -> usize {
        fn apply<T: serde::de::DeserializeOwned + Serialize>(obj: &mut Arc<T>, status: &Value) {
            let mut v = serde_json::to_value(&**obj).expect("json");
            json_patch::merge(&mut v, &json!({ "status": status }));
            v["metadata"]["resourceVersion"] = json!("written");
            *obj = from(v);
        }
        for item in items {
            let (r, ns, name) = &*item.key;
            let is = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                m.name.as_deref() == Some(name) && m.namespace.as_deref().unwrap_or("") == ns
            };
            match r {
                Resource::GatewayClass => {
                    let o = self.classes.iter_mut().find(|o| is(&o.metadata)).expect("class");
                    apply(o, &item.status);
                }
                Resource::Gateway => {
                    let o = self.gateways.iter_mut().find(|o| is(&o.metadata)).expect("gateway");
                    apply(o, &item.status);
                }
                Resource::HttpRoute => {
                    let o = self.http.iter_mut().find(|o| is(&o.metadata)).expect("route");
                    apply(o, &item.status);
                }
                Resource::GrpcRoute => unreachable!(),
            }
        }
        items.len()
    }
}

fn world() -> World {
    World {
        classes: vec![
            from(json!({"metadata": {"name": "kedge", "generation": 1}, "spec": {"controllerName": CONTROLLER}})),
            from(json!({"metadata": {"name": "other", "generation": 1}, "spec": {"controllerName": "acme.io/gw"}})),
        ],
        gateways: vec![from(json!({
            "metadata": {"name": "edge", "namespace": "infra", "generation": 3, "resourceVersion": "10"},
            "spec": {"gatewayClassName": "kedge", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}},
                {"name": "other", "port": 8080, "protocol": "HTTP"}]}}))],
        http: vec![from(json!({
            "metadata": {"name": "web", "namespace": "apps", "generation": 7, "resourceVersion": "11"},
            "spec": {"parentRefs": [{"name": "edge", "namespace": "infra"}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
            "status": {"parents": [{"parentRef": {"name": "mesh", "kind": "Service", "group": ""},
                                    "controllerName": "acme.io/mesh",
                                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                    "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}]}}))],
        services: vec![from(json!({"metadata": {"name": "web", "namespace": "apps"},
                                   "spec": {"ports": [{"port": 80}]}}))],
    }
}

fn item<'i>(items: &'i [Item], r: Resource, name: &str) -> &'i Item {
    items
        .iter()
        .find(|i| i.key.0 == r && i.key.2 == name)
        .unwrap_or_else(|| panic!("no {r:?} {name} in {items:#?}"))
}

/// The condition of `type_` in a conditions list.
fn cond<'v>(conditions: &'v Value, type_: &str) -> &'v Value {
    conditions
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} in {conditions:#}"))
}

#[test]
fn what_kedge_writes() {
    let w = world();
    let items = w.view(NOW);
    assert_eq!(items.len(), 3, "{items:#?}");

    let class = item(&items, Resource::GatewayClass, "kedge");
    assert_eq!(class.key.1, "");
    let accepted = cond(&class.status["conditions"], "Accepted");
    assert_eq!(accepted["status"], "True");
    assert_eq!(accepted["observedGeneration"], 1);
    assert_eq!(accepted["lastTransitionTime"], NOW);
    assert_eq!(
        class.status["supportedFeatures"],
        json!(
            SUPPORTED_FEATURES
                .iter()
                .map(|f| json!({"name": f}))
                .collect::<Vec<_>>()
        )
    );

    let gw = item(&items, Resource::Gateway, "edge");
    assert_eq!(gw.rv.as_deref(), Some("10"));
    assert_eq!(
        gw.status["addresses"],
        json!([{"type": "IPAddress", "value": "203.0.113.10"}])
    );
    let c = &gw.status["conditions"];
    assert_eq!(cond(c, "Accepted")["reason"], "ListenersNotValid");
    assert_eq!(cond(c, "Programmed")["status"], "True");
    assert_eq!(cond(c, "Programmed")["observedGeneration"], 3);
    let http = &gw.status["listeners"][0];
    assert_eq!(http["name"], "http");
    assert_eq!(http["attachedRoutes"], 1);
    assert_eq!(
        http["supportedKinds"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
               {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}])
    );
    for t in ["Accepted", "ResolvedRefs", "Programmed", "Conflicted"] {
        assert_eq!(cond(&http["conditions"], t)["observedGeneration"], 3, "{t}");
    }
    let other = &gw.status["listeners"][1];
    assert_eq!(cond(&other["conditions"], "Accepted")["reason"], "PortUnavailable");
    assert_eq!(other["attachedRoutes"], 0);

    // The route: the mesh's entry kept first, kedge's after it.
    let route = item(&items, Resource::HttpRoute, "web");
    let parents = route.status["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0]["controllerName"], "acme.io/mesh");
    assert_eq!(parents[1]["controllerName"], CONTROLLER);
    assert_eq!(
        parents[1]["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "edge", "namespace": "infra"})
    );
    assert_eq!(cond(&parents[1]["conditions"], "Accepted")["status"], "True");
    assert_eq!(cond(&parents[1]["conditions"], "ResolvedRefs")["status"], "True");
    assert_eq!(cond(&parents[1]["conditions"], "Accepted")["observedGeneration"], 7);
}

#[test]
fn nothing_changed_nothing_written_and_transition_times_kept() {
    let mut w = world();
    assert_eq!(w.write(&w.view(NOW)), 3);
    // Written: a later build wants nothing.
    assert_eq!(w.view(LATER), vec![]);

    // A spec change (generation 8) that keeps the route accepted: observedGeneration follows,
    // the transition time stays.
    let mut v = serde_json::to_value(&*w.http[0]).expect("json");
    v["metadata"]["generation"] = json!(8);
    v["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("missing");
    w.http[0] = from(v);
    let items = w.view(LATER);
    assert_eq!(items.len(), 1, "{items:#?}");
    let parents = &items[0].status["parents"];
    let accepted = cond(&parents[1]["conditions"], "Accepted");
    assert_eq!(accepted["observedGeneration"], 8);
    assert_eq!(accepted["lastTransitionTime"], NOW);
    // ResolvedRefs turned False: a new transition time.
    let resolved = cond(&parents[1]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "BackendNotFound");
    assert_eq!(resolved["lastTransitionTime"], LATER);
    // The mesh's entry untouched.
    assert_eq!(
        parents[0]["conditions"][0]["lastTransitionTime"],
        "2020-01-01T00:00:00Z"
    );
    w.write(&items);
    assert_eq!(w.view(LATER), vec![]);

    // The route leaves kedge's Gateway: kedge's entry goes, the mesh's stays.
    let mut v = serde_json::to_value(&*w.http[0]).expect("json");
    v["spec"]["parentRefs"] = json!([{"name": "mesh", "kind": "Service", "group": ""}]);
    w.http[0] = from(v);
    let items = w.view(LATER);
    let route = item(&items, Resource::HttpRoute, "web");
    let parents = route.status["parents"].as_array().expect("parents");
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0]["controllerName"], "acme.io/mesh");
    w.write(&items);
    assert_eq!(w.view(LATER), vec![]);
}

#[test]
fn other_condition_types_are_kept() {
    let ours = [Cond {
        type_: "Accepted",
        status: true,
        reason: "Accepted",
        message: "ok".into(),
    }];
    let current = json!([
        {"type": "Accepted", "status": "False", "reason": "Pending", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        {"type": "example.com/Audited", "status": "True", "reason": "Yes", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"},
    ]);
    let got = conditions(&ours, &current, Some(2), NOW);
    assert_eq!(
        got,
        json!([
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok", "lastTransitionTime": NOW, "observedGeneration": 2},
            {"type": "example.com/Audited", "status": "True", "reason": "Yes", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        ])
    );
}

#[test]
fn a_write_not_yet_watched_back_is_not_repeated() {
    let w = world();
    let items = w.view(NOW);
    let mut sent = HashMap::new();
    assert_eq!(plan(&items, &mut sent).len(), 3);
    for i in &items {
        sent.insert(i.key.clone(), (i.rv.clone(), i.status.clone()));
    }
    // The same view again (the watch has not brought the writes back): nothing.
    assert!(plan(&items, &mut sent).is_empty());
    assert_eq!(sent.len(), 3);
    // The Gateway moved on without kedge's status (someone replaced it): written again.
    let mut moved = items.clone();
    moved[1].rv = Some("99".into());
    let again = plan(&moved, &mut sent);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].key.0, Resource::Gateway);
}

/// README's list of advertised features is what kedge writes, in the same order.
#[test]
fn readme_lists_the_supported_features() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    let prefix = "supportedFeatures written into kedge's GatewayClasses: ";
    let line = readme
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .expect("README lists the supported features");
    let listed: Vec<&str> = line
        .trim_end_matches('.')
        .split(", ")
        .map(|f| f.trim_matches('`'))
        .collect();
    assert_eq!(listed, SUPPORTED_FEATURES);
}

/// Every advertised feature is a Gateway API v1.x feature name, and an end-to-end test under
/// `tests/it/` exercises it: the table names that test, and the test must exist.
#[test]
fn features_are_known_and_each_is_tested() {
    // The feature names of `pkg/features` (Gateway API v1.x) kedge could claim.
    const KNOWN: &[&str] = &[
        "GRPCRoute",
        "Gateway",
        "GatewayAddressEmpty",
        "GatewayHTTPListenerIsolation",
        "GatewayInfrastructurePropagation",
        "GatewayPort8080",
        "GatewayStaticAddresses",
        "HTTPRoute",
        "HTTPRoute303RedirectStatusCode",
        "HTTPRoute307RedirectStatusCode",
        "HTTPRoute308RedirectStatusCode",
        "HTTPRouteBackendProtocolH2C",
        "HTTPRouteBackendProtocolWebSocket",
        "HTTPRouteBackendRequestHeaderModification",
        "HTTPRouteBackendTimeout",
        "HTTPRouteCORS",
        "HTTPRouteDestinationPortMatching",
        "HTTPRouteHostRewrite",
        "HTTPRouteMethodMatching",
        "HTTPRouteNamedRouteRule",
        "HTTPRouteParentRefPort",
        "HTTPRoutePathRedirect",
        "HTTPRoutePathRewrite",
        "HTTPRoutePortRedirect",
        "HTTPRouteQueryParamMatching",
        "HTTPRouteRequestMirror",
        "HTTPRouteRequestMultipleMirrors",
        "HTTPRouteRequestPercentageMirror",
        "HTTPRouteRequestTimeout",
        "HTTPRouteResponseHeaderModification",
        "HTTPRouteSchemeRedirect",
        "ReferenceGrant",
    ];
    // Feature → (file under tests/it, the test showing it).
    const TESTED_BY: &[(&str, &str, &str)] = &[
        ("GRPCRoute", "grpc.rs", "grpcroute_methods_headers_and_weights"),
        (
            "Gateway",
            "gateway_status.rs",
            "kedges_class_is_accepted_and_its_gateway_programmed_with_addresses",
        ),
        (
            "GatewayHTTPListenerIsolation",
            "gateway_routes.rs",
            "a_listener_without_routes_still_owns_its_hostname",
        ),
        (
            "GatewayStaticAddresses",
            "gateway_status.rs",
            "listeners_and_addresses_kedge_cannot_serve",
        ),
        (
            "HTTPRoute",
            "gateway_routes.rs",
            "paths_headers_query_method_hostnames_and_ingress_side_by_side",
        ),
        (
            "HTTPRoute303RedirectStatusCode",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRoute307RedirectStatusCode",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRoute308RedirectStatusCode",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRouteBackendRequestHeaderModification",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRouteBackendTimeout",
            "gateway_routes.rs",
            "request_timeouts_answer_504",
        ),
        ("HTTPRouteCORS", "gateway_routes.rs", "filters_on_both_front_ends"),
        (
            "HTTPRouteHostRewrite",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRouteMethodMatching",
            "gateway_routes.rs",
            "paths_headers_query_method_hostnames_and_ingress_side_by_side",
        ),
        (
            "HTTPRouteParentRefPort",
            "gateway_routes.rs",
            "a_parent_ref_port_attaches_to_that_port_only",
        ),
        (
            "HTTPRoutePathRedirect",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRoutePathRewrite",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRoutePortRedirect",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRouteQueryParamMatching",
            "gateway_routes.rs",
            "paths_headers_query_method_hostnames_and_ingress_side_by_side",
        ),
        (
            "HTTPRouteRequestMirror",
            "gateway_routes.rs",
            "request_mirror_copies_requests_and_bounded_bodies",
        ),
        (
            "HTTPRouteRequestMultipleMirrors",
            "gateway_routes.rs",
            "several_mirrors_each_get_their_share_of_copies",
        ),
        (
            "HTTPRouteRequestPercentageMirror",
            "gateway_routes.rs",
            "several_mirrors_each_get_their_share_of_copies",
        ),
        (
            "HTTPRouteRequestTimeout",
            "gateway_routes.rs",
            "request_timeouts_answer_504",
        ),
        (
            "HTTPRouteResponseHeaderModification",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "HTTPRouteSchemeRedirect",
            "gateway_routes.rs",
            "filters_on_both_front_ends",
        ),
        (
            "ReferenceGrant",
            "gateway_status.rs",
            "backend_references_resolve_across_namespaces_only_with_a_grant",
        ),
    ];
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/");
    for f in SUPPORTED_FEATURES {
        assert!(KNOWN.contains(f), "{f} is not a Gateway API feature name");
        let (_, file, test) = TESTED_BY
            .iter()
            .find(|(name, _, _)| name == f)
            .unwrap_or_else(|| panic!("{f}: no end-to-end test named"));
        let source = std::fs::read_to_string(format!("{dir}{file}")).expect("the test file");
        assert!(
            source.contains(&format!("fn {test}(")),
            "{f}: no test {test} in tests/it/{file}"
        );
    }
    let names: Vec<&str> = TESTED_BY.iter().map(|t| t.0).collect();
    assert_eq!(names, SUPPORTED_FEATURES, "the table follows the list");
}

/// A view that remembers what the previous one decided per route object gives what a view
/// from nothing gives, write after write, without the routes' status being read again; a
/// remembered write keeps the time of the view that first decided it.
#[test]
fn remembered_views_equal_views_from_nothing() {
    let mut w = world();
    let mut unchanged = Unchanged::default();
    let first = w.view_with(NOW, &mut unchanged);
    assert_eq!(first, w.view(NOW));
    assert!(!first.is_empty());
    // Nothing written yet: the same writes; a route's keeps the first view's time.
    let again = w.view_with(LATER, &mut unchanged);
    let from_nothing = w.view(LATER);
    assert_eq!(again.len(), from_nothing.len());
    for (a, f) in again.iter().zip(&from_nothing) {
        match a.key.0 {
            Resource::HttpRoute => assert_eq!(Some(a), first.iter().find(|i| i.key == a.key)),
            _ => assert_eq!(a, f),
        }
    }
    // Written: nothing more to write, remembered or not.
    w.write(&first);
    assert_eq!(w.view_with(LATER, &mut unchanged), w.view(LATER));
    assert!(w.view_with(LATER, &mut unchanged).is_empty());
}

/// A route's written status, come back through the typed form (as the watch brings it), is
/// recognized field by field as the write; a status that differs in any field is not.
#[test]
fn a_write_that_came_back_is_recognized_and_nothing_else() {
    let items = world().view(NOW);
    let written = &item(&items, Resource::HttpRoute, "web").status;
    let typed = |v: &Value| serde_json::from_value::<RouteStatus>(v.clone()).expect("a route status");
    assert!(is_written(Some(&typed(written)), written));
    assert!(!is_written(None, written));
    for (at, key, value) in [
        (
            "/parents/1/conditions/0",
            "lastTransitionTime",
            json!("2026-12-05T22:00:01Z"),
        ),
        ("/parents/1/conditions/0", "observedGeneration", json!(6)),
        ("/parents/1/conditions/0", "message", json!("another")),
        ("/parents/1/conditions/1", "status", json!("False")),
        ("/parents/1/parentRef", "port", json!(80)),
        ("/parents/1/parentRef", "sectionName", json!("http")),
        ("/parents/0", "controllerName", json!("acme.io/other")),
        ("/parents/0/parentRef", "kind", json!("Gateway")),
    ] {
        let mut changed = (**written).clone();
        let o = changed.pointer_mut(at).and_then(Value::as_object_mut).expect(at);
        o.insert(key.into(), value);
        assert!(!is_written(Some(&typed(&changed)), written), "{at}/{key}");
    }
    let mut fewer = (**written).clone();
    fewer["parents"].as_array_mut().expect("parents").remove(0);
    assert!(!is_written(Some(&typed(&fewer)), written));
}

/// A remembered view takes a route object whose status is its write come back (same uid and
/// generation) as needing nothing, without deciding it again; a new object whose kedge entry
/// someone else changed is decided again, as a view from nothing does.
#[test]
fn a_write_come_back_needs_nothing_and_a_changed_entry_is_written_again() {
    let mut w = world();
    let mut v = serde_json::to_value(&*w.http[0]).expect("json");
    v["metadata"]["uid"] = json!("00000000-0000-4000-8000-000000000001");
    w.http[0] = from(v);
    let mut unchanged = Unchanged::default();
    let first = w.view_with(NOW, &mut unchanged);
    assert_eq!(unchanged.read(), 1);
    w.write(&first);
    assert!(w.view_with(LATER, &mut unchanged).is_empty());
    assert_eq!(unchanged.read(), 0, "the write come back is not read");
    let at = Arc::as_ptr(&w.http[0]) as usize;
    assert_eq!(unchanged.routes.at_of("00000000-0000-4000-8000-000000000001"), Some(at));
    assert_eq!(
        unchanged.routes.get(at).expect("recorded").item,
        None,
        "the record follows the object"
    );

    let mut v = serde_json::to_value(&*w.http[0]).expect("json");
    v["status"]["parents"][1]["conditions"][0]["message"] = json!("edited");
    v["metadata"]["resourceVersion"] = json!("edited");
    w.http[0] = from(v);
    let again = w.view_with(LATER, &mut unchanged);
    assert_eq!(unchanged.read(), 1);
    assert_eq!(again, w.view(LATER));
    assert_eq!(again.len(), 1, "{again:#?}");
    let accepted = |items: &[Item]| {
        let parents = &item(items, Resource::HttpRoute, "web").status["parents"];
        cond(&parents[1]["conditions"], "Accepted")["message"].clone()
    };
    assert_eq!(accepted(&again), accepted(&first), "kedge's own message again");
}

/// Three copies of the world's route, each with a uid of its own.
fn world_of_three() -> World {
    let mut w = world();
    let base = serde_json::to_value(&*w.http[0]).expect("json");
    w.http = (0..3)
        .map(|i| {
            let mut v = base.clone();
            v["metadata"]["name"] = json!(format!("web-{i}"));
            v["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-00000000000{i}"));
            from(v)
        })
        .collect();
    w
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]
    /// A view that remembers what the earlier ones decided gives what a view from nothing
    /// gives, whatever comes back between them: every write of the last view, one route's
    /// write, another writer's edit of kedge's entry (same generation) alone or with kedge's
    /// write, a spec change (a new generation).
    #[test]
    fn remembered_views_equal_views_from_nothing_whatever_comes_back(
        steps in proptest::collection::vec((0u8..5, 0usize..3), 1..16)
    ) {
        let mut w = world_of_three();
        let mut unchanged = Unchanged::default();
        let mut last = w.view_with(NOW, &mut unchanged);
        for (n, (what, i)) in steps.into_iter().enumerate() {
            let name = format!("web-{i}");
            match what {
                0 => {
                    w.write(&last);
                }
                1 => {
                    let one: Vec<Item> = last.iter().filter(|it| it.key.2 == name).cloned().collect();
                    w.write(&one);
                }
                2 | 3 => {
                    if what == 3 {
                        // Its write and another writer's edit in one new object.
                        let one: Vec<Item> = last.iter().filter(|it| it.key.2 == name).cloned().collect();
                        w.write(&one);
                    }
                    let mut v = serde_json::to_value(&*w.http[i]).expect("json");
                    for p in v["status"]["parents"].as_array_mut().into_iter().flatten() {
                        if p["controllerName"] == CONTROLLER {
                            p["conditions"][0]["message"] = json!(format!("edited {n}"));
                        }
                    }
                    v["metadata"]["resourceVersion"] = json!(format!("edited-{n}"));
                    w.http[i] = from(v);
                }
                _ => {
                    let mut v = serde_json::to_value(&*w.http[i]).expect("json");
                    let generation = v["metadata"]["generation"].as_i64().unwrap_or(1);
                    v["metadata"]["generation"] = json!(generation + 1);
                    let backend = &mut v["spec"]["rules"][0]["backendRefs"][0]["name"];
                    *backend = json!(if *backend == "web" { "missing" } else { "web" });
                    w.http[i] = from(v);
                }
            }
            last = w.view_with(NOW, &mut unchanged);
            proptest::prop_assert_eq!(&last, &w.view(NOW));
        }
    }
}

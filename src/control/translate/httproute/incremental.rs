//! The property that makes Gateway route updates safe: after any sequence of changes to a
//! cluster, a build that translates again only the (scope, listener, route hostname)s the
//! changed routes touch ([`Incremental::plan`], [`TableBuilder::update`],
//! [`Incremental::update`], next to the Ingresses' update; or, where they refuse, a build from
//! nothing, as the control loop does) gives the same table (Ingress and Gateway rules, in
//! precedence order), warnings, overlaps and Gateway API conditions (what the status view is
//! made of) as a translation from nothing.
//! The generated cluster is small on purpose, so that routes share hosts and scopes (two
//! Gateways, one on its own address), tie in age, share Services with each other, with
//! GRPCRoutes and with Ingresses, claim Ingress hosts, and have refused rules and matches and
//! unresolvable references.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;

use super::Incremental;
use crate::config::ListenerSpec;
use crate::control::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};
use crate::control::translate::gateway::{GatewaySettings, RouteCache, attach_with};
use crate::control::translate::ingress::tests::{OURS, class, obj, ready_slice, service, spec};
use crate::control::translate::{Incremental as Ingresses, Objects};
use crate::routes::{RouteTable, TableBuilder};

const CONTROLLER: &str = "kedge.dev/gateway-controller";
const ROUTES: usize = 8;
const GRPC: usize = 2;
const INGRESSES: usize = 3;
const NAMESPACES: [&str; 2] = ["web", "shop"];
const SERVICES: usize = 3;
const TIMES: [Option<&str>; 3] = [Some("2024-01-01T00:00:00Z"), Some("2024-02-01T00:00:00Z"), None];

fn ns_of(i: usize) -> &'static str {
    NAMESPACES[i % NAMESPACES.len()]
}

/// HTTPRoute slot `i` in variant `v`, at generation `generation`.
fn http_route(i: usize, v: usize, generation: i64) -> Arc<HttpRoute> {
    let parents = match v % 4 {
        0 => json!([{"name": "edge", "namespace": "infra"}]),
        1 => json!([{"name": "edge", "namespace": "infra", "sectionName": "plain"}]),
        2 => json!([{"name": "lan", "namespace": "infra"}]),
        _ => json!([{"name": "edge", "namespace": "infra"}, {"name": "lan", "namespace": "infra"}]),
    };
    let hostnames = match v / 4 % 5 {
        0 => json!(["a.example.com"]),
        1 => json!(["b.example.com"]),
        2 => json!(["*.example.com"]),
        3 => json!([]),
        _ => json!(["a.example.com", "c.example.org"]),
    };
    let path = match v / 2 % 4 {
        0 => json!({"type": "PathPrefix", "value": "/"}),
        1 => json!({"type": "Exact", "value": "/x"}),
        2 => json!({"type": "PathPrefix", "value": "/x"}),
        _ => json!({"type": "RegularExpression", "value": if v.is_multiple_of(3) { "(" } else { "/r.*" }}),
    };
    let port = if v % 7 == 3 { 81 } else { 80 };
    let mut rule = json!({"matches": [{"path": path}],
                          "backendRefs": [{"name": format!("svc-{}", v % SERVICES), "port": port}]});
    match v % 11 {
        4 => {
            rule["filters"] =
                json!([{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}])
        }
        6 => {
            rule["filters"] = json!([{"type": "RequestMirror",
                                      "requestMirror": {"backendRef": {"name": format!("svc-{}", (v + 1) % SERVICES), "port": 80}}}])
        }
        _ => {}
    }
    let mut rules = vec![rule];
    if v % 5 == 2 {
        rules.push(
            json!({"matches": [{"path": {"type": "Exact", "value": "/healthz"}, "method": "GET"}],
                          "backendRefs": [{"name": format!("svc-{}", (v + 2) % SERVICES), "port": 80}]}),
        );
    }
    let mut meta = json!({"namespace": ns_of(i), "name": format!("route-{i}"), "uid": format!("route-{i}"),
                          "generation": generation});
    if let Some(t) = TIMES[(i + v) % TIMES.len()] {
        meta["creationTimestamp"] = json!(t);
    }
    obj(json!({"metadata": meta, "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}}))
}

/// `o` as a status (or metadata) write brings it back: a new object, at resourceVersion `rv`,
/// of the same uid and generation.
fn written<T: Clone + kube::Resource>(o: &Arc<T>, rv: &str) -> Arc<T> {
    let mut n = (**o).clone();
    n.meta_mut().resource_version = Some(rv.to_owned());
    Arc::new(n)
}

/// `r` as a new object under its name: its uid is its name and `n`.
fn created_again(r: Arc<HttpRoute>, n: i64) -> Arc<HttpRoute> {
    let mut r = (*r).clone();
    r.metadata.uid = Some(format!("{}-{n}", r.metadata.name.as_deref().unwrap_or_default()));
    Arc::new(r)
}

/// GRPCRoute slot `i` in variant `v`: its backends speak HTTP/2, which HTTPRoutes and Ingresses
/// using the same Service contest.
fn grpc_route(i: usize, v: usize, generation: i64) -> Arc<GrpcRoute> {
    let hostnames = if v.is_multiple_of(2) {
        json!(["g.example.com"])
    } else {
        json!(["a.example.com"])
    };
    let mut meta = json!({"namespace": ns_of(i), "name": format!("grpc-{i}"), "uid": format!("grpc-{i}"),
                          "generation": generation});
    if let Some(t) = TIMES[(i + v) % TIMES.len()] {
        meta["creationTimestamp"] = json!(t);
    }
    obj(json!({"metadata": meta, "spec": {
        "parentRefs": [{"name": "edge", "namespace": "infra"}], "hostnames": hostnames,
        "rules": [{"matches": [{"method": {"service": "pkg.Svc"}}],
                   "backendRefs": [{"name": grpc_backend(v), "port": 80}]}]}}))
}

/// A Service the HTTPRoutes use too (one variant in three: their protocols are contested), or
/// one that does not exist (nothing contested).
fn grpc_backend(v: usize) -> String {
    match v % 3 {
        0 => format!("svc-{}", v / 3 % SERVICES),
        _ => "missing".into(),
    }
}

fn ingress(i: usize, v: usize) -> Arc<Ingress> {
    // Mostly hosts no route claims (a change that overlaps the routes' needs a build from
    // nothing).
    let host = ["d.example.net", "e.example.net", "a.example.com", "*.example.com"][v % 4];
    let mut meta = json!({"namespace": ns_of(i), "name": format!("ing-{i}")});
    if let Some(t) = TIMES[(i + v) % TIMES.len()] {
        meta["creationTimestamp"] = json!(t);
    }
    obj(
        json!({"metadata": meta, "spec": {"ingressClassName": "kedge", "rules": [{"host": host, "http": {"paths": [
        {"path": "/", "pathType": "Prefix",
         "backend": {"service": {"name": format!("svc-{}", v / 4 % SERVICES), "port": {"number": 80}}}}]}}]}}),
    )
}

fn service_variant(j: usize, v: usize) -> Option<Arc<Service>> {
    let (ns, name) = (ns_of(j), format!("svc-{}", j / NAMESPACES.len()));
    match v % 4 {
        0 | 1 => Some(service(
            ns,
            &name,
            json!({"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        )),
        2 => Some(service(
            ns,
            &name,
            json!({"ports": [{"name": "http", "port": 81, "targetPort": 8080}]}),
        )),
        _ => None,
    }
}

fn slice_variant(j: usize, v: usize) -> Arc<EndpointSlice> {
    let (ns, name) = (ns_of(j), format!("svc-{}", j / NAMESPACES.len()));
    let ips: Vec<String> = (0..v % 3).map(|k| format!("192.0.2.{}", j * 10 + k + v % 5)).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    ready_slice(ns, &name, &ips)
}

/// Gateway `edge` (every address): listener `web` for `*.example.com` (or, in odd variants,
/// `a.example.com`) and `plain` without hostname, both on port 80; Gateway `lan` on 127.0.0.1
/// port 80, without hostname, for routes of every namespace (or, in variants `3k + 2`, of the
/// namespaces labelled `open: "yes"`).
fn gateways(v: usize) -> Vec<Arc<Gateway>> {
    let all = json!({"namespaces": {"from": "All"}});
    let lan = if v % 3 == 2 {
        json!({"namespaces": {"from": "Selector", "selector": {"matchLabels": {"open": "yes"}}}})
    } else {
        all.clone()
    };
    let web_host = if v.is_multiple_of(2) {
        "*.example.com"
    } else {
        "a.example.com"
    };
    vec![
        obj(
            json!({"metadata": {"namespace": "infra", "name": "edge", "uid": "gw-edge", "generation": 1},
                   "spec": {"gatewayClassName": "kedge", "listeners": [
                       {"name": "web", "port": 80, "protocol": "HTTP", "hostname": web_host, "allowedRoutes": all},
                       {"name": "plain", "port": 80, "protocol": "HTTP", "allowedRoutes": all}]}}),
        ),
        obj(
            json!({"metadata": {"namespace": "infra", "name": "lan", "uid": "gw-lan", "generation": 1},
                   "spec": {"gatewayClassName": "kedge", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                            "listeners": [{"name": "plain", "port": 80, "protocol": "HTTP", "allowedRoutes": lan}]}}),
        ),
    ]
}

fn listeners() -> Vec<ListenerSpec> {
    vec![ListenerSpec {
        address: "0.0.0.0:80".parse::<SocketAddr>().expect("address"),
        tls: false,
        proxy_protocol: None,
    }]
}

fn settings() -> GatewaySettings {
    GatewaySettings {
        controller: CONTROLLER.into(),
        publish_addresses: Vec::new(),
        host_addresses: ["127.0.0.1", "192.0.2.7"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect(),
    }
}

struct Cluster {
    routes: Vec<Option<Arc<HttpRoute>>>,
    grpc: Vec<Option<Arc<GrpcRoute>>>,
    ingresses: Vec<Option<Arc<Ingress>>>,
    services: Vec<Option<Arc<Service>>>,
    slices: Vec<Arc<EndpointSlice>>,
    gateways: Vec<Arc<Gateway>>,
    classes: Vec<Arc<GatewayClass>>,
    ingress_classes: Vec<Arc<IngressClass>>,
    namespaces: Vec<Arc<Namespace>>,
    generation: i64,
    /// No GRPCRoutes (whose protocol contests make every update a build from nothing).
    plain: bool,
}

/// One build's Ingress and Gateway route state.
#[derive(Default)]
struct State {
    ingresses: Ingresses,
    routes: Incremental,
    attached: RouteCache,
}

fn flat<T>(v: &[Option<Arc<T>>]) -> Vec<Arc<T>> {
    v.iter().flatten().cloned().collect()
}

impl Cluster {
    fn new(plain: bool) -> Cluster {
        let mut c = Cluster {
            routes: Vec::new(),
            grpc: Vec::new(),
            ingresses: (0..INGRESSES).map(|i| Some(ingress(i, [0, 1, 4][i]))).collect(),
            services: (0..SERVICES * NAMESPACES.len())
                .map(|j| service_variant(j, 0))
                .collect(),
            slices: (0..SERVICES * NAMESPACES.len())
                .map(|j| slice_variant(j, j + 1))
                .collect(),
            gateways: gateways(0),
            classes: vec![obj(
                json!({"metadata": {"name": "kedge", "uid": "class-kedge", "generation": 1},
                                     "spec": {"controllerName": CONTROLLER}}),
            )],
            ingress_classes: vec![class("kedge", OURS, false)],
            namespaces: NAMESPACES
                .iter()
                .chain(&["infra"])
                .map(|n| obj(json!({"metadata": {"name": n}})))
                .collect(),
            generation: 1,
            plain,
        };
        c.routes = (0..ROUTES).map(|i| Some(http_route(i, i * 3, 1))).collect();
        c.grpc = (0..GRPC).map(|i| (!plain).then(|| grpc_route(i, i, 1))).collect();
        c
    }

    /// Applies change `(what, a, b)`; records the Services it touched, as the watches would.
    /// `Some(true)`: a change the control loop answers with a build from nothing (Gateways, a
    /// Namespace while a listener selects namespaces by label); `None`: one it answers with
    /// nothing at all (a Namespace otherwise).
    fn change(&mut self, (what, a, b): (u8, usize, usize), services: &mut BTreeSet<(String, String)>) -> Option<bool> {
        self.generation += 1;
        let key = |j: usize| (ns_of(j).to_owned(), format!("svc-{}", j / NAMESPACES.len()));
        match what {
            0..=3 => self.routes[a % ROUTES] = Some(http_route(a % ROUTES, b, self.generation)),
            4 => {
                let slot = &mut self.routes[a % ROUTES];
                *slot = match slot {
                    Some(_) => None,
                    None => Some(http_route(a % ROUTES, b, self.generation)),
                };
            }
            5 if !self.plain => {
                let slot = &mut self.grpc[a % GRPC];
                *slot = match (slot.is_some(), b % 3) {
                    (true, 0) => None,
                    _ => Some(grpc_route(a % GRPC, b, self.generation)),
                };
            }
            6 => {
                let j = a % self.services.len();
                self.services[j] = service_variant(j, b);
                services.insert(key(j));
            }
            7 => {
                let j = a % self.slices.len();
                self.slices[j] = slice_variant(j, b);
                services.insert(key(j));
            }
            8 => self.ingresses[a % INGRESSES] = Some(ingress(a % INGRESSES, b)),
            9 => {
                self.gateways = gateways(b);
                return Some(true);
            }
            11 => {
                // A status (or metadata) write: a new object of the same generation, which the
                // control loop answers with no build; the next update finds it.
                let rv = self.generation.to_string();
                if b.is_multiple_of(2) || self.plain {
                    if let Some(r) = &mut self.routes[a % ROUTES] {
                        *r = written(r, &rv);
                    }
                } else if let Some(r) = &mut self.grpc[a % GRPC] {
                    *r = written(r, &rv);
                }
                return None;
            }
            12 => {
                // Deleted and created again within one update: the same name, generation 1
                // again (the API server starts a new object there), a new uid.
                let i = a % ROUTES;
                self.routes[i] = Some(created_again(http_route(i, b, 1), self.generation));
            }
            10 => {
                let n = a % self.namespaces.len();
                let mut ns = (*self.namespaces[n]).clone();
                let open = if b.is_multiple_of(2) { "yes" } else { "no" };
                ns.metadata.labels = Some([("open".to_owned(), open.to_owned())].into_iter().collect());
                self.namespaces[n] = Arc::new(ns);
                return crate::control::translate::gateway::selects_namespaces(&self.gateways).then_some(true);
            }
            _ => {}
        }
        Some(false)
    }

    fn with_objects<T>(&self, f: impl FnOnce(&Objects<'_>) -> T) -> T {
        let (routes, grpc, ingresses, services) = (
            flat(&self.routes),
            flat(&self.grpc),
            flat(&self.ingresses),
            flat(&self.services),
        );
        let grants: Vec<Arc<ReferenceGrant>> = Vec::new();
        let objs = Objects {
            ingresses: &ingresses,
            classes: &self.ingress_classes,
            services: &services,
            slices: &self.slices,
            namespaces: &self.namespaces,
            gateway_classes: &self.classes,
            gateways: &self.gateways,
            http_routes: &routes,
            grpc_routes: &grpc,
            reference_grants: &grants,
            ..Objects::default()
        };
        f(&objs)
    }

    /// What `control::build` does, for one cluster: an update of `prev` after a change to
    /// `services` when both states allow it (`Some`), else a build from nothing (recorded in
    /// `state`), dumped.
    fn build(
        &self,
        state: &mut State,
        prev: Option<&RouteTable>,
        services: &BTreeSet<(String, String)>,
    ) -> (RouteTable, String, bool) {
        let spec = spec();
        if let Some(prev) = prev {
            let updated = self.with_objects(|objs| {
                let plan = state.ingresses.plan(&spec, objs, services, &BTreeSet::new()).ok()?;
                let mut b = TableBuilder::update(prev, plan.hosts.iter().map(|h| h.as_deref()));
                let out = state.ingresses.update(&mut b, &spec, objs, &plan);
                let mut attachment = attach_with(objs, &settings(), &listeners(), &mut state.attached, Some(services));
                let routes = match state.routes.plan(objs, &attachment.routes, services) {
                    Ok(p) => {
                        // As the cluster does: only the Services the plan names, with their
                        // slices.
                        let wanted = p.services(&attachment.routes);
                        let named = |ns: Option<&String>, name: Option<&str>| {
                            wanted.iter().any(|(n, s)| Some(n) == ns && Some(s.as_str()) == name)
                        };
                        let services: Vec<_> = objs
                            .services
                            .iter()
                            .filter(|s| named(s.metadata.namespace.as_ref(), s.metadata.name.as_deref()))
                            .cloned()
                            .collect();
                        let slices: Vec<_> = objs
                            .slices
                            .iter()
                            .filter(|s| {
                                named(
                                    s.metadata.namespace.as_ref(),
                                    crate::control::translate::slice_service(s),
                                )
                            })
                            .cloned()
                            .collect();
                        let objs = Objects {
                            services: &services,
                            slices: &slices,
                            ..*objs
                        };
                        state.routes.update(&mut b, &spec, &objs, &attachment.routes, p)
                    }
                    Err(_) => {
                        state.routes.clear();
                        return None;
                    }
                };
                attachment.refuse(&routes.refusals);
                Some(finish(b, out.warnings, &attachment, routes.warnings)).filter(|(_, _, full)| !full)
            });
            if let Some((t, d, _)) = updated {
                return (t, d, true);
            }
        }
        let (t, d) = self.with_objects(|objs| {
            let mut b = TableBuilder::default();
            let out = state.ingresses.full(&mut b, &spec, objs);
            let mut attachment = attach_with(objs, &settings(), &listeners(), &mut state.attached, None);
            let routes = state.routes.full(&mut b, &spec, objs, &attachment.routes);
            attachment.refuse(&routes.refusals);
            let (t, d, _) = finish(b, out.warnings, &attachment, routes.warnings);
            (t, d)
        });
        (t, d, false)
    }

    /// A translation from nothing with fresh states, dumped.
    fn translated_from_nothing(&self) -> String {
        self.build(&mut State::default(), None, &BTreeSet::new()).1
    }
}

/// The rest of a build: listeners, overlaps, the table; everything it hands on dumped in a
/// canonical text form (rules with backends by name: an update keeps the previous table's
/// backend ids). `true`: the builder needs a build from nothing.
fn finish(
    mut b: TableBuilder,
    ingress_warnings: Vec<crate::control::translate::Warning>,
    attachment: &crate::control::translate::gateway::Attachment<'_>,
    route_warnings: Vec<crate::control::translate::Warning>,
) -> (RouteTable, String, bool) {
    for (bind, hostname) in &attachment.listeners {
        b.gateway_listener(&bind.addresses, bind.port, hostname.as_deref());
    }
    let overlaps = b.gateway_overlaps();
    let full = b.needs_full();
    let table = b.build();
    let mut s = String::new();
    let backend = |id: usize| {
        let b = &table.backends[id];
        format!("{} {:?} {}", b.name, b.endpoints, b.h2)
    };
    for (host, path, path_type, id, policy, _) in table.rules() {
        let _ = writeln!(s, "rule {host} {path} {path_type:?} -> {} {policy:?}", backend(id));
    }
    let mut gw = table.gateway_rules();
    // Hosts come in hash order; a host's rules in precedence order (kept by the stable sort).
    gw.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for (scope, host, path, backends) in gw {
        let names: Vec<String> = backends.into_iter().map(|b| b.map_or("500".into(), backend)).collect();
        let _ = writeln!(s, "gateway {scope} {host} {path} -> {names:?}");
    }
    for w in ingress_warnings
        .iter()
        .chain(&attachment.warnings)
        .chain(&route_warnings)
    {
        let _ = writeln!(s, "warning {}: {}", w.object, w.message);
    }
    let _ = writeln!(s, "overlaps {overlaps:?}");
    // What the status view is made of (with the objects, which are the same): every Gateway
    // API condition kedge decided, the routes' refusals included.
    for g in &attachment.gateways {
        let _ = writeln!(
            s,
            "gateway {:?} {:?} {:?}",
            g.gateway.metadata.name, g.conditions, g.listeners
        );
    }
    for p in &attachment.parents {
        let _ = writeln!(s, "parent {} {:?} {:?}", p.route.key(), p.parent_ref, p.conditions);
    }
    (table, s, full)
}

fn changes() -> impl Strategy<Value = Vec<(u8, usize, usize)>> {
    // Route changes (what updates are for) more often than the others.
    // Status writes (new objects of the same generation) often: they are most of the events.
    vec(
        (
            prop_oneof![8 => 0u8..9, 2 => 9u8..11, 4 => Just(11u8), 1 => Just(12u8)],
            0usize..64,
            0usize..64,
        ),
        1..24,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// After each change, what the control loop publishes equals a translation from nothing.
    #[test]
    fn route_updates_equal_a_translation_from_nothing(changes in changes(), plain in any::<bool>()) {
        let mut cluster = Cluster::new(plain);
        let mut state = State::default();
        let (mut table, mut dump, _) = cluster.build(&mut state, None, &BTreeSet::new());
        for (step, change) in changes.iter().enumerate() {
            let mut services = BTreeSet::new();
            if let Some(full) = cluster.change(*change, &mut services) {
                let (next, next_dump, _) = cluster.build(&mut state, (!full).then_some(&table), &services);
                table = next;
                dump = next_dump;
            }
            // After nothing built too: what is served is still exact.
            prop_assert_eq!(&dump, &cluster.translated_from_nothing(), "after change {} {:?}", step, change);
        }
    }
}

/// A cluster with one Ingress (for a host no route claims: a claimed one needs a build from
/// nothing) built from nothing, then route-0 replaced by `route` and built again, which must
/// serve what a translation from nothing does: the dumps of both builds, and whether the
/// second was an update.
fn route_0_replaced(route: Arc<HttpRoute>) -> (String, String, bool) {
    let mut cluster = Cluster::new(true);
    cluster.ingresses = vec![Some(ingress(0, 0)), None, None];
    let mut state = State::default();
    let (table, before, _) = cluster.build(&mut state, None, &BTreeSet::new());
    cluster.routes[0] = Some(route);
    let (_, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert_eq!(dump, cluster.translated_from_nothing());
    (before, dump, updated)
}

/// An HTTPRoute change is an update (not a build from nothing) when nothing contests it.
#[test]
fn a_route_change_is_an_update() {
    // route-0 (variant 0: Gateway edge, a.example.com, PathPrefix /) → variant 7 (edge and
    // lan, b.example.com, a regular expression).
    let (_, dump, updated) = route_0_replaced(http_route(0, 7, 2));
    assert!(updated, "an update, not a build from nothing");
    assert!(
        dump.contains("gateway 127.0.0.1:80 b.example.com ~ ^(?:/r.*)$"),
        "{dump}"
    );
}

/// A route whose status kedge wrote comes back as a new object of the same generation: the
/// next update takes its attachment as decided; a new generation is decided again.
#[test]
fn status_writes_coming_back_are_not_decided_again() {
    let mut cluster = Cluster::new(true);
    let mut state = State::default();
    let (table, _, _) = cluster.build(&mut state, None, &BTreeSet::new());
    assert_eq!(state.attached.decided(), ROUTES);
    for r in cluster.routes.iter_mut().flatten() {
        *r = written(r, "2");
    }
    let (table, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(state.attached.decided(), 0, "status writes decided again");
    assert_eq!(dump, cluster.translated_from_nothing());
    // The same spec at a new generation (what the API server does at a spec change).
    cluster.routes[0] = Some(http_route(0, 0, 2));
    let (_, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(state.attached.decided(), 1);
    assert_eq!(dump, cluster.translated_from_nothing());
}

/// A Gateway or GatewayClass status write (kedge's own coming back) is a new object of the same
/// uid and generation: no route is decided again. A new generation decides every route again.
#[test]
fn gateway_status_writes_decide_no_route_again() {
    let mut cluster = Cluster::new(true);
    let mut state = State::default();
    let (table, _, _) = cluster.build(&mut state, None, &BTreeSet::new());
    cluster.gateways = cluster.gateways.iter().map(|g| written(g, "7")).collect();
    cluster.classes = cluster.classes.iter().map(|c| written(c, "7")).collect();
    let (table, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(state.attached.decided(), 0, "routes decided again");
    assert_eq!(dump, cluster.translated_from_nothing());
    // A new generation (a spec change, which the control loop answers with a build from
    // nothing): every route is decided again, even in an update.
    cluster.gateways = cluster
        .gateways
        .iter()
        .map(|g| {
            let mut n = (**g).clone();
            n.metadata.generation = Some(2);
            Arc::new(n)
        })
        .collect();
    let (_, dump, _) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert_eq!(state.attached.decided(), ROUTES);
    assert_eq!(dump, cluster.translated_from_nothing());
}

/// A route deleted and created again within one update comes back under its name at
/// generation 1, like the object it replaces: its new uid says it is new, and its rules are
/// translated again.
#[test]
fn a_route_created_again_under_its_name_is_translated_again() {
    // route-0 (variant 0, generation 1) → variant 7 (b.example.com), generation 1, a new uid.
    let (before, dump, updated) = route_0_replaced(created_again(http_route(0, 7, 1), 2));
    assert!(!before.contains("b.example.com"), "{before}");
    assert!(updated, "an update, not a build from nothing");
    assert!(
        dump.contains("gateway 127.0.0.1:80 b.example.com ~ ^(?:/r.*)$"),
        "{dump}"
    );
}

/// Ingress updates stay updates next to Gateway routes when the Ingress hosts do not overlap
/// the routes'.
#[test]
fn ingress_updates_stay_updates_next_to_gateway_routes() {
    let mut cluster = Cluster::new(true);
    let mut state = State::default();
    let (table, _, _) = cluster.build(&mut state, None, &BTreeSet::new());
    // ing-0 moves from e.example.net to d.example.net, hosts no route claims.
    cluster.ingresses[0] = Some(ingress(0, 1));
    let (table, _, _) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    cluster.ingresses[0] = Some(ingress(0, 4));
    let (table, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(dump, cluster.translated_from_nothing());
    assert!(dump.contains("rule d.example.net / Prefix"), "{dump}");
    // To a host a route claims: a build from nothing (which says who wins where).
    cluster.ingresses[0] = Some(ingress(0, 2));
    let (_, dump, updated) = cluster.build(&mut state, Some(&table), &BTreeSet::new());
    assert!(!updated, "a build from nothing");
    assert_eq!(dump, cluster.translated_from_nothing());
    assert!(dump.contains("overlaps [(\"a.example.com\""), "{dump}");
}

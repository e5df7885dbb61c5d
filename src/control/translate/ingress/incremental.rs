//! The property that makes updates safe: after any sequence of changes to a cluster, a build
//! that translates again only the hosts the change touches ([`Incremental::plan`],
//! [`TableBuilder::update`], [`Incremental::update`]; or, where they refuse, a build from
//! nothing, as the control loop does) gives the same table, warnings, served Ingresses and
//! certificates as a translation from nothing. The generated cluster is small on purpose, so
//! that Ingresses conflict (same hosts and paths, ages that tie), share Services, read Secrets,
//! have canaries, TLS sections, default backends, NodePort Services and broken references.

use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;

use super::tests::{OURS, annotated, class, internal, node, obj, ready_slice, service, spec};
use super::{Incremental, translate};
use crate::control::translate::{NodeUse, Objects, Outcome, service_endpoints, slice_service, uses_node_ports};
use crate::routes::{RouteTable, TableBuilder};
use std::collections::BTreeSet;

const INGRESSES: usize = 10;
const NAMESPACES: [&str; 2] = ["web", "shop"];
const SERVICES: usize = 3;
const HOSTS: [Option<&str>; 4] = [
    Some("a.example.com"),
    Some("b.example.com"),
    Some("*.example.com"),
    None,
];
const TIMES: [Option<&str>; 3] = [Some("2024-01-01T00:00:00Z"), Some("2024-02-01T00:00:00Z"), None];

/// One cluster's objects, by slot (an empty slot: no such object).
struct Cluster {
    ingresses: Vec<Option<Arc<Ingress>>>,
    classes: Vec<Arc<IngressClass>>,
    services: Vec<Option<Arc<Service>>>,
    slices: Vec<Arc<EndpointSlice>>,
    secrets: Vec<Option<Arc<Secret>>>,
    nodes: Vec<Arc<Node>>,
    spec: crate::control::translate::ClusterSpec,
    /// Only [`plain_variant`]s of Ingresses.
    plain: bool,
}

fn ns_of(i: usize) -> &'static str {
    NAMESPACES[i % NAMESPACES.len()]
}

/// The first variant from `v` on without a TLS section, a default backend or a backend
/// protocol: Ingresses whose changes an update can take.
fn plain_variant(mut v: usize) -> usize {
    while v.is_multiple_of(5) || v % 11 == 5 || matches!(v % 7, 3 | 5) {
        v += 1;
    }
    v
}

/// Ingress slot `i` in its variant `v`.
fn ingress(i: usize, v: usize) -> Arc<Ingress> {
    let ns = ns_of(i);
    let svc = format!("svc-{}", v % SERVICES);
    let port = match v % 4 {
        0 | 1 => json!({"number": 80}),
        2 => json!({"name": "http"}),
        _ => json!({"number": 81}),
    };
    let (path, path_type) = match v / 4 % 3 {
        0 => ("/", "Prefix"),
        1 => ("/x", "Exact"),
        _ => ("/x/", "Prefix"),
    };
    let backend = json!({"service": {"name": svc, "port": port}});
    let host = HOSTS[v / 2 % HOSTS.len()];
    let mut rule = json!({"http": {"paths": [{"path": path, "pathType": path_type, "backend": backend}]}});
    if let Some(h) = host {
        rule["host"] = json!(h);
    }
    let class_name = if v % 13 == 6 { "other" } else { "kedge" };
    let mut spec = json!({"ingressClassName": class_name, "rules": [rule]});
    if v.is_multiple_of(5) {
        spec["tls"] = json!([{"hosts": host.into_iter().collect::<Vec<_>>(), "secretName": "cert"}]);
    }
    if v % 11 == 5 {
        spec["defaultBackend"] =
            json!({"service": {"name": format!("svc-{}", (v + 1) % SERVICES), "port": {"number": 80}}});
    }
    let mut meta = json!({"namespace": ns, "name": format!("ing-{i}")});
    if let Some(t) = TIMES[(i + v) % TIMES.len()] {
        meta["creationTimestamp"] = json!(t);
    }
    let ing: Arc<Ingress> = obj(json!({"metadata": meta, "spec": spec}));
    let annotations = match v % 7 {
        1 => json!({"nginx.ingress.kubernetes.io/canary": "true", "nginx.ingress.kubernetes.io/canary-weight": "30"}),
        2 => {
            json!({"nginx.ingress.kubernetes.io/auth-type": "basic", "nginx.ingress.kubernetes.io/auth-secret": "auth"})
        }
        3 => json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
        4 => json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
        5 => json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        _ => return ing,
    };
    annotated(ing, annotations)
}

/// Service slot `j` (namespace `j % 2`, `svc-{j / 2}`) in variant `v`.
fn service_variant(j: usize, v: usize) -> Option<Arc<Service>> {
    let (ns, name) = (ns_of(j), format!("svc-{}", j / NAMESPACES.len()));
    let ports = json!([{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]);
    let svc = match v % 5 {
        0 | 1 => service(ns, &name, json!({"type": "NodePort", "ports": ports})),
        2 => service(ns, &name, json!({"type": "ClusterIP", "ports": []})),
        3 => annotated(
            service(ns, &name, json!({"type": "NodePort", "ports": ports})),
            json!({"kedge.dev/upstream-mode": if v.is_multiple_of(2) { "nodeports" } else { "sideways" }}),
        ),
        _ => return None,
    };
    Some(svc)
}

fn slice_variant(j: usize, v: usize) -> Arc<EndpointSlice> {
    let (ns, name) = (ns_of(j), format!("svc-{}", j / NAMESPACES.len()));
    let ips: Vec<String> = (0..v % 3).map(|k| format!("192.0.2.{}", j * 10 + k + v % 5)).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    ready_slice(ns, &name, &ips)
}

fn secret_variant(k: usize, v: usize) -> Option<Arc<Secret>> {
    let ns = ns_of(k);
    let pem = |s: &str| json!(base64_of(s));
    match (k / NAMESPACES.len(), v % 3) {
        (_, 2) => None,
        // Present but unusable (no key): its hosts have no certificate of their own.
        (0, _) if v % 6 == 1 => Some(obj(json!({
            "metadata": {"namespace": ns, "name": "cert"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": pem(&format!("crt{v}")), "tls.key": ""},
        }))),
        (0, _) => Some(obj(json!({
            "metadata": {"namespace": ns, "name": "cert"},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": pem(&format!("crt{v}")), "tls.key": pem("key")},
        }))),
        _ => Some(obj(json!({
            "metadata": {"namespace": ns, "name": "auth"},
            "type": "Opaque",
            "data": {"auth": pem(if v.is_multiple_of(3) { "user:{PLAIN}secret\n" } else { "broken" })},
        }))),
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn node_variant(n: usize, v: usize) -> Arc<Node> {
    match v % 4 {
        0 => node(
            &format!("n{n}"),
            "True",
            false,
            internal(&format!("198.51.100.{}", n + 1)),
        ),
        1 => node(
            &format!("n{n}"),
            "False",
            false,
            internal(&format!("198.51.100.{}", n + 1)),
        ),
        2 => node(&format!("n{n}"), "True", false, internal("not-an-ip")),
        // As 0, with a label: a change that bears on nothing kedge serves (as a heartbeat).
        _ => {
            let mut n = (*node_variant(n, 0)).clone();
            n.metadata.labels = Some([("v".to_owned(), v.to_string())].into_iter().collect());
            Arc::new(n)
        }
    }
}

impl Cluster {
    fn new(spec: crate::control::translate::ClusterSpec) -> Cluster {
        Cluster {
            spec,
            ingresses: (0..INGRESSES).map(|i| Some(ingress(i, i * 3))).collect(),
            plain: false,
            classes: vec![class("kedge", OURS, false)],
            services: (0..SERVICES * NAMESPACES.len())
                .map(|j| service_variant(j, j))
                .collect(),
            slices: (0..SERVICES * NAMESPACES.len())
                .map(|j| slice_variant(j, j + 1))
                .collect(),
            secrets: (0..2 * NAMESPACES.len()).map(|k| secret_variant(k, k)).collect(),
            nodes: (0..2).map(|n| node_variant(n, 0)).collect(),
        }
    }

    fn ingress(&self, i: usize, v: usize) -> Arc<Ingress> {
        ingress(i, if self.plain { plain_variant(v) } else { v })
    }

    /// Applies change `(what, a, b)`; records the Services and Secrets it touched, as the
    /// watches would. `true`: a change the control loop answers with a build from nothing
    /// (Nodes, IngressClasses).
    fn change(
        &mut self,
        (what, a, b): (u8, usize, usize),
        services: &mut BTreeSet<(String, String)>,
        secrets: &mut BTreeSet<(String, String)>,
    ) -> bool {
        let key = |j: usize| (ns_of(j).to_owned(), format!("svc-{}", j / NAMESPACES.len()));
        match what {
            0..=2 => self.ingresses[a % INGRESSES] = Some(self.ingress(a % INGRESSES, b)),
            3 => {
                let next = self.ingress(a % INGRESSES, b);
                let slot = &mut self.ingresses[a % INGRESSES];
                *slot = match slot {
                    Some(_) => None,
                    None => Some(next),
                };
            }
            4 => {
                let j = a % self.services.len();
                self.services[j] = service_variant(j, b);
                services.insert(key(j));
            }
            5 => {
                let j = a % self.slices.len();
                self.slices[j] = slice_variant(j, b);
                services.insert(key(j));
            }
            6 => {
                let k = a % self.secrets.len();
                let name = if k / NAMESPACES.len() == 0 { "cert" } else { "auth" };
                self.secrets[k] = secret_variant(k, b);
                secrets.insert((ns_of(k).to_owned(), name.to_owned()));
            }
            7 => {
                let n = a % self.nodes.len();
                self.nodes[n] = node_variant(n, b);
                return true;
            }
            _ => {
                self.classes = vec![class(
                    "kedge",
                    if b.is_multiple_of(4) { "someone-else" } else { OURS },
                    b.is_multiple_of(2),
                )];
                return true;
            }
        }
        false
    }

    fn with_objects<T>(&self, f: impl FnOnce(&Objects<'_>) -> T) -> T {
        let (ingresses, services, secrets) = (flat(&self.ingresses), flat(&self.services), flat(&self.secrets));
        let objs = Objects {
            ingresses: &ingresses,
            classes: &self.classes,
            services: &services,
            slices: &self.slices,
            nodes: &self.nodes,
            secrets: &secrets,
            ..Objects::default()
        };
        f(&objs)
    }

    /// A build from nothing, recorded in `state`.
    fn full(&self, state: &mut Incremental) -> (RouteTable, Outcome) {
        let spec = self.spec.clone();
        self.with_objects(|objs| {
            let mut b = TableBuilder::default();
            let out = state.full(&mut b, &spec, objs);
            (b.build(), out)
        })
    }

    /// What the control loop does after a change: an update when the plan and the builder
    /// allow it (`true`), else a build from nothing.
    fn next(
        &self,
        state: &mut Incremental,
        prev: &RouteTable,
        services: &BTreeSet<(String, String)>,
        secrets: &BTreeSet<(String, String)>,
    ) -> (RouteTable, Outcome, bool) {
        let spec = self.spec.clone();
        let updated = self.with_objects(|objs| {
            let plan = state.plan(&spec, objs, services, secrets).ok()?;
            // As the control loop: only the Services the update resolves, and their EndpointSlices.
            let wanted = state.services(&plan);
            let slices: Vec<Arc<EndpointSlice>> = objs
                .slices
                .iter()
                .filter(|s| {
                    let ns = s.metadata.namespace.as_deref().unwrap_or("");
                    slice_service(s).is_some_and(|svc| wanted.iter().any(|(n, v)| n == ns && v == svc))
                })
                .cloned()
                .collect();
            let services: Vec<Arc<Service>> = objs
                .services
                .iter()
                .filter(|s| {
                    let (ns, name) = (s.metadata.namespace.as_deref(), s.metadata.name.as_deref());
                    wanted
                        .iter()
                        .any(|(n, v)| Some(n.as_str()) == ns && Some(v.as_str()) == name)
                })
                .cloned()
                .collect();
            let objs = &Objects {
                slices: &slices,
                services: &services,
                ..*objs
            };
            let mut b = TableBuilder::update(prev, plan.hosts.iter().map(|h| h.as_deref()));
            let out = state.update(&mut b, &spec, objs, &plan);
            (!b.needs_full()).then(|| (b.build(), out))
        });
        match updated {
            Some((t, o)) => (t, o, true),
            None => {
                let (t, o) = self.full(state);
                (t, o, false)
            }
        }
    }

    /// What the control loop does after a Node change that changed what the table takes from
    /// the Nodes: `prev` with new endpoints for the Services in NodePort mode (the endpoint
    /// fast path; the warnings wait for the full build once changes are quiet).
    fn nodes_changed(&self, prev: &RouteTable) -> RouteTable {
        let services: Vec<Arc<Service>> = flat(&self.services);
        let touched: Vec<(String, String)> = services
            .iter()
            .filter(|s| uses_node_ports(&self.spec, s))
            .map(|s| {
                let m = &s.metadata;
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let endpoints = self.with_objects(|objs| service_endpoints(&self.spec, objs, &touched));
        prev.with_endpoints(
            endpoints
                .into_iter()
                .filter_map(|(name, eps)| Some((prev.backend_id(&name)?, eps))),
        )
    }

    /// The changed `secrets` some Ingress reads, as the cluster keeps them
    /// (`Cluster::take_changes`): the others change nothing.
    fn read(&self, secrets: &BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
        let ingresses = flat(&self.ingresses);
        super::secrets_read(&ingresses)
            .filter(|(ns, name)| secrets.iter().any(|(n, s)| n == ns && s == name))
            .map(|(n, s)| (n.to_owned(), s.to_owned()))
            .collect()
    }

    /// A translation from nothing, dumped.
    fn translated_from_nothing(&self) -> String {
        self.with_objects(|objs| {
            let mut b = TableBuilder::default();
            let out = translate(&mut b, &self.spec, objs);
            dump(&b.build(), &out)
        })
    }
}

fn flat<T>(v: &[Option<Arc<T>>]) -> Vec<Arc<T>> {
    v.iter().flatten().cloned().collect()
}

/// Everything a build hands on, in a canonical text form: rules with their backends by name
/// (an update keeps the previous table's backend ids, and backends no rule uses), warnings,
/// served Ingresses, certificates.
fn dump(table: &RouteTable, out: &Outcome) -> String {
    let mut s = String::new();
    let backend = |id: usize| {
        let b = &table.backends[id];
        let tls = b.tls.as_ref().map(|t| (&t.settings, t.id));
        format!("{} {:?} {tls:?} {}", b.name, b.endpoints, b.h2)
    };
    for (host, path, path_type, id, policy, canary) in table.rules() {
        let _ = writeln!(
            s,
            "rule {host} {path} {path_type:?} -> {} {policy:?} canary {:?}",
            backend(id),
            canary.map(backend)
        );
    }
    for w in &out.warnings {
        let _ = writeln!(s, "warning {}: {}", w.object, w.message);
    }
    let _ = writeln!(s, "served {:?}", out.served);
    // The certificate itself: an update that kept a rotated Secret's old object would differ.
    for t in &out.tls {
        let crt = t.secret.data.as_ref().and_then(|d| d.get("tls.crt"));
        let _ = writeln!(s, "tls {} {} {:?} {crt:?}", t.host, t.owner, t.secret.metadata.name);
    }
    s
}

fn changes() -> impl Strategy<Value = Vec<(u8, usize, usize)>> {
    // Ingress and Service changes (what updates are for) more often than the others, and
    // Secrets (certificates that rotate, appear, go or break) as often as Services.
    vec(
        (
            prop_oneof![6 => 0u8..6, 1 => 6u8..9, 1 => Just(6u8)],
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
    fn updates_equal_a_translation_translated_from_nothing(changes in changes(), nodeports in any::<bool>(), plain in any::<bool>(), tls in any::<bool>()) {
        let mut spec = spec();
        if nodeports {
            spec.upstream = crate::control::translate::UpstreamMode::NodePorts;
        }
        let mut cluster = Cluster::new(spec);
        if plain {
            cluster.plain = true;
            cluster.ingresses = (0..INGRESSES).map(|i| Some(cluster.ingress(i, i * 3))).collect();
        }
        if tls {
            // Every other Ingress with a `tls` section (naming its namespace's `cert`) and no
            // contested protocol, the others plain: the certificates' changes (rotated, gone,
            // back, unusable) are updates that the other changes do not keep from happening.
            cluster.plain = true;
            cluster.ingresses = (0..INGRESSES)
                .map(|i| Some(if i % 2 == 0 { ingress(i, [0, 20, 25, 30, 55][i / 2 % 5]) } else { cluster.ingress(i, i * 3) }))
                .collect();
        }
        let mut state = Incremental::default();
        let (mut table, mut out) = cluster.full(&mut state);
        for (step, change) in changes.iter().enumerate() {
            let (mut services, mut secrets) = (BTreeSet::new(), BTreeSet::new());
            let nodes_before = NodeUse::of(&cluster.spec, &cluster.nodes);
            let full = cluster.change(*change, &mut services, &mut secrets);
            let nodes_after = NodeUse::of(&cluster.spec, &cluster.nodes);
            let secrets = cluster.read(&secrets);
            if (change.0 == 7 && nodes_before == nodes_after) || (change.0 == 6 && secrets.is_empty()) {
                // The control loop does nothing: what it serves is still exact.
                prop_assert_eq!(dump(&table, &out), cluster.translated_from_nothing(), "after change {} {:?}", step, change);
                continue;
            }
            if change.0 == 7 {
                // The endpoint fast path first: the rules and endpoints are exact at once.
                let patched = cluster.nodes_changed(&table);
                let mut b = TableBuilder::default();
                cluster.with_objects(|objs| translate(&mut b, &cluster.spec, objs));
                prop_assert_eq!(dump(&patched, &Outcome::default()), dump(&b.build(), &Outcome::default()), "after change {} {:?}", step, change);
            }
            let (next, next_out) = if full {
                cluster.full(&mut state)
            } else {
                let (t, o, _) = cluster.next(&mut state, &table, &services, &secrets);
                (t, o)
            };
            prop_assert_eq!(dump(&next, &next_out), cluster.translated_from_nothing(), "after change {} {:?}", step, change);
            table = next;
            out = next_out;
        }
    }
}

/// An Ingress change rebuilds its host only: the new table shares every other host's rules
/// with the previous one, and routes the change.
#[test]
fn an_ingress_change_rebuilds_its_host_only() {
    let mut cluster = Cluster::new(spec());
    // Two Ingresses without TLS sections, default backends or protocols: host a (variant 9,
    // Prefix /x/), host b (variant 2, Prefix /).
    cluster.ingresses = vec![Some(ingress(0, 9)), Some(ingress(1, 2))];
    let mut state = Incremental::default();
    let (table, _) = cluster.full(&mut state);
    let before = dump(&table, &Outcome::default());
    // ing-0 becomes variant 41: host a, Exact /x.
    cluster.ingresses[0] = Some(ingress(0, 41));
    let (next, out, updated) = cluster.next(&mut state, &table, &BTreeSet::new(), &BTreeSet::new());
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(dump(&next, &out), cluster.translated_from_nothing());
    assert_ne!(dump(&next, &Outcome::default()), before);
    assert!(!next.shares_host_rules(&table, "a.example.com"), "host a was rebuilt");
    assert!(next.shares_host_rules(&table, "b.example.com"), "host b is shared");
}

/// A certificate rotation (a Secret a `tls` section names, usable before and after) rebuilds
/// no host: the update swaps the certificate into the bindings and shares every host's rules.
/// One that goes away, or comes back, changes the bindings and warnings only: an update too.
#[test]
fn a_certificate_rotation_rebuilds_no_host() {
    let mut cluster = Cluster::new(spec());
    // ing-0 (web): host a with a tls section naming web/cert; ing-1 (shop): host b.
    cluster.ingresses = vec![Some(ingress(0, 0)), Some(ingress(1, 11))];
    let mut state = Incremental::default();
    let (table, _) = cluster.full(&mut state);
    let cert = BTreeSet::from([("web".to_owned(), "cert".to_owned())]);
    assert_eq!(cluster.read(&cert), cert, "the tls section reads it");
    // web/cert becomes variant `v`: an update after `prev`, exact, host a's rules shared.
    let mut secret_becomes = |v: usize, prev: &RouteTable| {
        cluster.secrets[0] = secret_variant(0, v);
        let (next, out, updated) = cluster.next(&mut state, prev, &BTreeSet::new(), &cert);
        assert!(updated, "an update, not a build from nothing");
        assert_eq!(dump(&next, &out), cluster.translated_from_nothing());
        assert!(next.shares_host_rules(prev, "a.example.com"), "host a is shared");
        (next, out)
    };
    let (next, out) = secret_becomes(3, &table);
    let bound: Vec<&[u8]> = out
        .tls
        .iter()
        .filter_map(|t| t.secret.data.as_ref()?.get("tls.crt").map(|c| c.0.as_slice()))
        .collect();
    assert_eq!(bound, [b"crt3"], "the new certificate is bound");
    assert!(next.shares_host_rules(&table, "b.example.com"), "host b is shared");
    // Gone: an update too. Its host keeps TLS without a certificate of its own (the default
    // one), and a warning says so; no host's rules change.
    let (gone, out) = secret_becomes(2, &next);
    assert!(out.tls.is_empty());
    assert!(
        out.warnings
            .iter()
            .any(|w| w.message.contains("Secret web/cert not found")),
        "{:?}",
        out.warnings
    );
    assert!(gone.shares_host_rules(&next, "b.example.com"), "host b is shared");
    // Back (the Secret created after the Ingress): bound, the warning gone, an update.
    let (_, out) = secret_becomes(4, &gone);
    assert_eq!(out.tls.len(), 1);
    assert!(
        !out.warnings.iter().any(|w| w.message.contains("web/cert")),
        "{:?}",
        out.warnings
    );
}

/// An `auth-secret` change rebuilds the hosts of the Ingresses that read it, and only those;
/// a Secret no Ingress reads is not even planned for.
#[test]
fn an_auth_secret_change_rebuilds_the_hosts_that_read_it() {
    let mut cluster = Cluster::new(spec());
    // ing-0 (web): host b, auth-secret web/auth (absent at first); ing-1 (shop): host a.
    cluster.ingresses = vec![Some(ingress(0, 2)), Some(ingress(1, 41))];
    assert!(cluster.secrets[2].is_none(), "web/auth is absent");
    let mut state = Incremental::default();
    let (table, out) = cluster.full(&mut state);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.message.contains("Secret web/auth not found")),
        "{:?}",
        out.warnings
    );
    let auth = BTreeSet::from([("web".to_owned(), "auth".to_owned())]);
    assert_eq!(cluster.read(&auth), auth);
    let other = BTreeSet::from([("shop".to_owned(), "auth".to_owned())]);
    assert!(cluster.read(&other).is_empty(), "no Ingress reads shop/auth");
    cluster.secrets[2] = secret_variant(2, 0);
    let (next, out, updated) = cluster.next(&mut state, &table, &BTreeSet::new(), &auth);
    assert!(updated, "an update, not a build from nothing");
    assert_eq!(dump(&next, &out), cluster.translated_from_nothing());
    assert!(
        !out.warnings.iter().any(|w| w.message.contains("web/auth")),
        "{:?}",
        out.warnings
    );
    assert!(!next.shares_host_rules(&table, "b.example.com"), "host b was rebuilt");
    assert!(next.shares_host_rules(&table, "a.example.com"), "host a is shared");
}

//! Control-plane cost: how long kedge takes to turn a cluster's objects into a route table, and
//! how much memory the objects and the table hold, for 1k and 10k Ingresses, and for 10k
//! HTTPRoutes (the same hosts, paths and Services, as Gateway API routes attached to one
//! Gateway: attachment, status decisions and rule translation are timed with the build).
//!
//! ```sh
//! cargo bench --bench control_plane              # all scenarios, Markdown table on stdout
//! cargo bench --bench control_plane -- 10k       # only scenarios whose name contains "10k"
//! ```
//!
//! Each scenario generates its objects (not timed), as kube's reflector stores hold them
//! (`Arc`s of `k8s_openapi` structs), then measures:
//! - **cold**: `translate` + `TableBuilder::build` from nothing, median of several runs;
//! - **rebuild**: after one EndpointSlice changed (one endpoint replaced), what the control
//!   loop does on a watch event: snapshot the stores (clone the `Arc` lists), translate, build.
//!   kedge rebuilds the whole table on every change (never patches it), so this is the cold
//!   cost plus the snapshot; the change is checked to be in the new table;
//! - **Ingress change**, **Service change** (scenarios with Ingresses): what the control loop
//!   does for a watched change now: the same snapshot but the EndpointSlices' (the update looks
//!   up those of the Services it resolves through the index), then an update (the hosts of the
//!   changed Ingress, or of the Ingresses using the changed Service, are translated again;
//!   every other host's rules are shared with the previous table), then the build;
//!   p50/p99/max over 31 changes, each checked to be in the new table and to be an update;
//! - **memory**: a counting global allocator gives the bytes the objects hold, the bytes the
//!   finished table holds, and the peak of live bytes during a build (objects excluded); the
//!   process's `VmHWM` (peak RSS) after the scenario is printed too.
//!
//! Every Ingress has one host (`app-N.ns-M.example.com`) and two paths (`/` Prefix and
//! `/healthz` Exact) to one Service port; each Service has one EndpointSlice with 5 ready
//! endpoints (distinct 10.x.y.z addresses, spread over 100 nodes); 100 namespaces; distinct
//! creation times. The nodeports scenario routes the same objects to `NodeIP:nodePort` of 100
//! Ready nodes instead, i.e. 100 endpoints per backend.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kedge::config::ListenerSpec;
use kedge::control::gateway_status::{Resource, Unchanged, view_with};
use kedge::control::gateway_types::{Gateway, GatewayClass, HttpRoute};
use kedge::control::lean::{LAST_APPLIED, Lean};
use kedge::control::translate::gateway::{Attachment, GatewaySettings, attach};
use kedge::control::translate::{
    ClusterSpec, Incremental, NodeUse, Objects, SliceIndex, UpstreamMode, httproute, service_endpoints, slice_service,
    translate, uses_node_ports,
};
use kedge::routes::gateway::{Lookup, Request};
use kedge::routes::{RouteTable, TableBuilder};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

// ---- a counting allocator ----

/// The system allocator, counting the bytes live now and the most live at once.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from the bytes live now.
fn reset_peak() -> usize {
    let now = live();
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

// ---- objects ----

fn obj<T: DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

/// One cluster's objects, as the reflector stores hold them.
#[derive(Clone, Default)]
struct Stores {
    ingresses: Vec<Arc<Ingress>>,
    classes: Vec<Arc<IngressClass>>,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    nodes: Vec<Arc<Node>>,
    gateway_classes: Vec<Arc<GatewayClass>>,
    gateways: Vec<Arc<Gateway>>,
    http_routes: Vec<Arc<HttpRoute>>,
}

impl Stores {
    /// The stores' state() but the EndpointSlices' (what an update copies).
    fn without_slices(&self) -> Stores {
        Stores {
            ingresses: self.ingresses.clone(),
            classes: self.classes.clone(),
            services: self.services.clone(),
            slices: Vec::new(),
            nodes: self.nodes.clone(),
            gateway_classes: self.gateway_classes.clone(),
            gateways: self.gateways.clone(),
            http_routes: self.http_routes.clone(),
        }
    }

    fn objects(&self) -> Objects<'_> {
        Objects {
            ingresses: &self.ingresses,
            classes: &self.classes,
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
            gateway_classes: &self.gateway_classes,
            gateways: &self.gateways,
            http_routes: &self.http_routes,
            ..Objects::default()
        }
    }
}

const NAMESPACES: usize = 100;
const NODES: usize = 100;
const NODE_PORT: u16 = 30080;

fn ns_of(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn host_of(i: usize) -> String {
    format!("app-{i}.{}.example.com", ns_of(i))
}

/// The `k`-th distinct pod address: 10.x.y.z.
fn pod_ip(k: usize) -> String {
    let k = k + 1;
    format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)
}

fn slice(i: usize, eps: usize, first_ip: usize) -> Arc<EndpointSlice> {
    let endpoints: Vec<Value> = (0..eps)
        .map(|j| {
            json!({"addresses": [pod_ip(first_ip + j)], "conditions": {"ready": true, "serving": true,
                   "terminating": false}, "nodeName": format!("node-{}", (first_ip + j) % NODES)})
        })
        .collect();
    obj(json!({
        "metadata": {"namespace": ns_of(i), "name": format!("app-{i}-x7k2p"),
                     "labels": {"kubernetes.io/service-name": format!("app-{i}"),
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

/// `n` Ingresses (or, with `http_routes`, HTTPRoutes attached to Gateway `ns-0/edge` on port
/// 80), each with its own Service and EndpointSlice of `eps` ready endpoints.
fn generate(n: usize, eps: usize, http_routes: bool) -> Stores {
    let mut s = Stores {
        classes: vec![obj(json!({"metadata": {"name": "kedge"},
                                  "spec": {"controller": "kedge.dev/ingress-controller"}}))],
        ..Stores::default()
    };
    for i in 0..n {
        let (ns, name) = (ns_of(i), format!("app-{i}"));
        let created = format!("2025-01-01T{:02}:{:02}:{:02}Z", i / 3600 % 24, i / 60 % 60, i % 60);
        if http_routes {
            s.http_routes.push(obj(json!({
                "metadata": {"namespace": ns, "name": name, "creationTimestamp": created,
                             "uid": format!("00000000-0000-4000-8000-{i:012x}"), "generation": 1},
                "spec": {"parentRefs": [{"name": "edge", "namespace": ns_of(0)}], "hostnames": [host_of(i)], "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                     "backendRefs": [{"name": name, "port": 80}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/healthz"}}],
                     "backendRefs": [{"name": name, "port": 80}]},
                ]},
            })));
        } else {
            s.ingresses.push(obj(json!({
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": {"ingressClassName": "kedge", "rules": [{"host": host_of(i), "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": name, "port": {"name": "http"}}}},
                {"path": "/healthz", "pathType": "Exact",
                 "backend": {"service": {"name": name, "port": {"number": 80}}}},
            ]}}]},
            })));
        }
        s.services.push(obj(json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "NodePort", "selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": NODE_PORT}]},
        })));
        s.slices.push(slice(i, eps, i * eps));
    }
    if http_routes {
        s.gateway_classes.push(obj(json!({"metadata": {"name": "kedge"},
                                           "spec": {"controllerName": GATEWAY_CONTROLLER}})));
        s.gateways.push(obj(json!({
            "metadata": {"namespace": ns_of(0), "name": "edge"},
            "spec": {"gatewayClassName": "kedge", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        })));
    }
    for k in 0..NODES {
        s.nodes.push(obj(json!({
            "metadata": {"name": format!("node-{k}")},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", k / 250, k % 250 + 1)}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        })));
    }
    s
}

// ---- measurement ----

struct Scenario {
    name: &'static str,
    ingresses: usize,
    endpoints_each: usize,
    mode: UpstreamMode,
    /// HTTPRoutes instead of Ingresses.
    http_routes: bool,
    runs: usize,
    /// Changes timed for the incremental rebuilds (Ingress change, Service change).
    changes: usize,
}

struct Row {
    name: &'static str,
    backends: usize,
    endpoints: usize,
    objects_bytes: usize,
    cold: Vec<Duration>,
    /// The `TableBuilder::build` part of each cold run.
    finishes: Vec<Duration>,
    rebuild: Vec<Duration>,
    /// The endpoint-only fast path after one EndpointSlice changed.
    patch: Vec<Duration>,
    /// An incremental rebuild after one Ingress changed.
    ingress_change: Vec<Duration>,
    /// An incremental rebuild after one Service changed.
    service_change: Vec<Duration>,
    /// NodePort mode: a Node change that changes nothing the table takes from Nodes (a new
    /// object, same readiness and address: a heartbeat), and one that does (a node turns not
    /// Ready), as the control loop answers them.
    node_same: Vec<Duration>,
    node_change: Vec<Duration>,
    /// Bytes the update state (`Incremental`) holds between builds.
    cache_bytes: usize,
    /// Gateway API scenarios: the status views of `status_views`.
    status_views: Option<[(Duration, usize); 3]>,
    /// The 10k scenarios in pod mode: `watch_decode`.
    watch_decode: Vec<Decode>,
    table_bytes: usize,
    build_peak_bytes: usize,
    vm_hwm: u64,
}

fn spec(mode: UpstreamMode) -> ClusterSpec {
    ClusterSpec {
        name: "bench".into(),
        ingress_class: "kedge".into(),
        controller: "kedge.dev/ingress-controller".into(),
        upstream: mode,
        node_address_type: "InternalIP".into(),
    }
}

const GATEWAY_CONTROLLER: &str = "kedge.dev/gateway-controller";

/// Where the benchmark's Gateway routes are served: kedge's plain listener on port 80.
fn local() -> std::net::SocketAddr {
    "192.0.2.10:80".parse().expect("an address")
}

/// translate + build, as the control loop does for one cluster (Ingresses, then the Gateway
/// API: attachment, the routes' rules, every programmed listener); also how long `build()` took.
fn build(spec: &ClusterSpec, stores: &Stores) -> (RouteTable, Duration) {
    build_with(spec, stores, None)
}

/// What changed since the previous table (`prev`), for an update: the Services (namespace,
/// name) whose objects changed; a changed Ingress is a new object. With a previous table, the
/// EndpointSlices are looked up as the control loop does: only those of the Services the update
/// resolves, through the Service → EndpointSlices index and the slices by (namespace, name).
type Update<'u> = (
    &'u mut Incremental,
    Option<(&'u RouteTable, &'u SliceIndex, &'u SliceStore)>,
    &'u BTreeSet<(String, String)>,
);

/// The EndpointSlices by (namespace, name), as the reflector store finds one.
type SliceStore = HashMap<(String, String), Arc<EndpointSlice>>;
type ServiceStore = HashMap<(String, String), Arc<Service>>;

/// [`build`] with the control loop's update state: with a previous table, an update (only the
/// hosts the change touches are translated again, the others shared); without, a build from
/// nothing that records the state.
fn build_with(spec: &ClusterSpec, stores: &Stores, update: Option<Update<'_>>) -> (RouteTable, Duration) {
    let objects = stores.objects();
    let mut builder = TableBuilder::default();
    let outcome = match update {
        Some((state, None, _)) => state.full(&mut builder, spec, &objects),
        // The Service changes rename a port: its Ingress is warned about.
        Some((state, Some((prev, index, slice_store)), services)) => {
            let plan = state
                .plan(spec, &objects, services, &BTreeSet::new())
                .expect("an update");
            let slices = slices_of(index, slice_store, &state.services(&plan));
            let objects = Objects {
                slices: &slices,
                ..objects
            };
            builder = TableBuilder::update(prev, plan.hosts.iter().map(|h| h.as_deref()));
            state.update(&mut builder, spec, &objects, &plan)
        }
        None => {
            let outcome = translate(&mut builder, spec, &objects);
            assert!(
                outcome.warnings.is_empty(),
                "unexpected warnings: {:?}",
                &outcome.warnings[..1]
            );
            outcome
        }
    };
    drop(outcome);
    if !stores.gateways.is_empty() {
        let attachment = gateway_attachment(&mut builder, spec, &objects);
        for (bind, hostname) in &attachment.listeners {
            builder.gateway_listener(&bind.addresses, bind.port, hostname.as_deref());
        }
    }
    assert!(!builder.needs_full(), "an update, not a build from nothing");
    let t = Instant::now();
    let table = builder.build();
    (table, t.elapsed())
}

/// The Gateway API part of a build: the routes attached to the Gateway, translated into
/// `builder`, with the translation's refusals in the attachment (as the status view reads it).
fn gateway_attachment<'o>(builder: &mut TableBuilder, spec: &ClusterSpec, objects: &Objects<'o>) -> Attachment<'o> {
    let settings = GatewaySettings {
        controller: GATEWAY_CONTROLLER.into(),
        publish_addresses: Vec::new(),
        host_addresses: vec![local().ip()],
    };
    let listeners = [ListenerSpec {
        address: "0.0.0.0:80".parse().expect("an address"),
        tls: false,
        proxy_protocol: None,
    }];
    let mut attachment = attach(objects, &settings, &listeners);
    assert!(
        attachment.warnings.is_empty(),
        "unexpected warnings: {:?}",
        &attachment.warnings[..1]
    );
    let translated = httproute::translate(builder, spec, objects, &attachment.routes);
    assert!(
        translated.warnings.is_empty(),
        "unexpected warnings: {:?}",
        &translated.warnings[..1]
    );
    attachment.refuse(&translated.refusals);
    attachment
}

/// The Gateway API status view (`gateway_status::view_with`, as the control thread makes it
/// after a build), timed three times: the first (every route's status decided), once every
/// route's written status has come back (10k new route objects: each one's status read and
/// compared again; what the quiet-time view after kedge's start-up writes does), and again
/// with nothing changed (every decision kept). Each with the number of items it hands the
/// writer.
fn status_views(spec: &ClusterSpec, stores: &mut Stores) -> [(Duration, usize); 3] {
    let mut unchanged = Unchanged::default();
    let view = |stores: &Stores, unchanged: &mut Unchanged| {
        let objects = stores.objects();
        let attachment = gateway_attachment(&mut TableBuilder::default(), spec, &objects);
        let t = Instant::now();
        let items = view_with(
            &attachment,
            &objects,
            GATEWAY_CONTROLLER,
            "2026-01-01T00:00:00Z",
            unchanged,
        );
        (t.elapsed(), items)
    };
    let (first, items) = view(stores, &mut unchanged);
    let written: HashMap<(String, String), Arc<Value>> = items
        .iter()
        .filter(|i| i.key.0 == Resource::HttpRoute)
        .map(|i| ((i.key.1.clone(), i.key.2.clone()), Arc::clone(&i.status)))
        .collect();
    assert_eq!(
        written.len(),
        stores.http_routes.len(),
        "every route's status is written"
    );
    for r in &mut stores.http_routes {
        let m = &r.metadata;
        let key = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let mut back = (**r).clone();
        back.status = Some(serde_json::from_value((*written[&key]).clone()).expect("a route status"));
        back.metadata.resource_version = Some("2".into());
        *r = Arc::new(back);
    }
    let (came_back, items_back) = view(stores, &mut unchanged);
    assert_eq!(unchanged.read(), 0, "no route's status is read again");
    assert!(
        !items_back.iter().any(|i| i.key.0 == Resource::HttpRoute),
        "no route is written again once its status came back"
    );
    let (again, items_again) = view(stores, &mut unchanged);
    assert_eq!(items_again.len(), items_back.len());
    [
        (first, items.len()),
        (came_back, items_back.len()),
        (again, items_again.len()),
    ]
}

/// A set of watch events decoded, each object read plainly (its type's own `Deserialize`) and
/// as kedge's watches read it (`Lean`: managedFields and the last-applied copy skipped unread).
struct Decode {
    what: &'static str,
    bytes: usize,
    /// The objects carry kubectl's last-applied copy (see [`event_lines`]).
    last_applied: bool,
    plain: Duration,
    lean: Duration,
}

/// The field manager of an object applied with kubectl (client-side).
const KUBECTL: &str = "kubectl-client-side-apply";

/// A field set (`FieldsV1`) naming every field of `v`, as the API server records one.
fn field_set(v: &Value, top: bool) -> Value {
    let Value::Object(fields) = v else {
        return json!({});
    };
    let mut set = serde_json::Map::new();
    if !top {
        set.insert(".".into(), json!({}));
    }
    for (k, v) in fields {
        set.insert(format!("f:{k}"), field_set(v, false));
    }
    Value::Object(set)
}

/// One `MODIFIED` watch event per object, as the API server sends it: with `managedFields`
/// (the writer of everything but metadata and status, `manager`, and kedge's status write when
/// the object has a status, each with its field set) and, for objects applied with kubectl
/// (`manager` [`KUBECTL`]), kubectl's last-applied copy of the object.
fn event_lines<T: serde::Serialize>(objects: &[Arc<T>], api_version: &str, kind: &str, manager: &str) -> Vec<Vec<u8>> {
    objects
        .iter()
        .map(|obj| {
            let mut o = serde_json::to_value(&**obj).expect("object JSON");
            o["apiVersion"] = json!(api_version);
            o["kind"] = json!(kind);
            let entry = |manager: &str, fields: Value, subresource: Option<&str>| {
                let mut e = json!({
                    "apiVersion": api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields,
                    "manager": manager,
                    "operation": "Update",
                    "time": "2026-01-01T00:00:00Z",
                });
                if let Some(s) = subresource {
                    e["subresource"] = json!(s);
                }
                e
            };
            let mut written = o.clone();
            let fields = written.as_object_mut().expect("an object");
            for k in ["metadata", "status", "apiVersion", "kind"] {
                fields.remove(k);
            }
            let mut entries = vec![entry(manager, field_set(&written, true), None)];
            if !o["status"].is_null() {
                entries.push(entry(
                    "kedge",
                    field_set(&json!({"status": o["status"]}), true),
                    Some("status"),
                ));
            }
            if manager == KUBECTL {
                written["apiVersion"] = json!(api_version);
                written["kind"] = json!(kind);
                written["metadata"] = json!({"name": o["metadata"]["name"], "namespace": o["metadata"]["namespace"]});
                o["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{written}\n"));
            }
            o["metadata"]["managedFields"] = json!(entries);
            let mut line = br#"{"type":"MODIFIED","object":"#.to_vec();
            serde_json::to_writer(&mut line, &o).expect("event JSON");
            line.push(b'}');
            line
        })
        .collect()
}

/// The watch events of `objects` (see [`event_lines`]) decoded as kube's watcher decodes them,
/// into `K` and into `Lean<K>`: medians of 5 passes over all the lines each, the two kinds of
/// pass alternating.
fn decode<K>(what: &'static str, objects: &[Arc<K>], api_version: &str, kind: &str, manager: &str) -> Decode
where
    K: serde::Serialize + DeserializeOwned,
{
    fn pass<T: DeserializeOwned>(lines: &[Vec<u8>]) -> Duration {
        let t = Instant::now();
        for line in lines {
            let event: kube::api::WatchEvent<T> = serde_json::from_slice(line).expect("a watch event");
            std::hint::black_box(event);
        }
        t.elapsed()
    }
    let lines = event_lines(objects, api_version, kind, manager);
    let (mut plain, mut lean) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        plain.push(pass::<K>(&lines));
        lean.push(pass::<Lean<K>>(&lines));
    }
    plain.sort();
    lean.sort();
    Decode {
        what,
        bytes: lines.iter().map(Vec::len).sum(),
        last_applied: manager == KUBECTL,
        plain: plain[2],
        lean: lean[2],
    }
}

/// The watch events of a 10k scenario's objects, decoded (see [`decode`]): every route coming
/// back after its status write; or every Ingress, Service and EndpointSlice, the objects of a
/// first list.
fn watch_decode(stores: &Stores, routes: bool) -> Vec<Decode> {
    if routes {
        let api = "gateway.networking.k8s.io/v1";
        return vec![decode("HTTPRoutes", &stores.http_routes, api, "HTTPRoute", KUBECTL)];
    }
    vec![
        decode(
            "Ingresses",
            &stores.ingresses,
            "networking.k8s.io/v1",
            "Ingress",
            KUBECTL,
        ),
        decode("Services", &stores.services, "v1", "Service", KUBECTL),
        decode(
            "EndpointSlices",
            &stores.slices,
            "discovery.k8s.io/v1",
            "EndpointSlice",
            "endpointslice-controller",
        ),
    ]
}

/// p50 / p99 / max in ms (with fewer than 100 samples, p99 is the largest).
fn quantiles(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    let at = |q: f64| {
        v[((v.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    format!("{} / {} / {}", ms(at(0.5)), ms(at(0.99)), ms(v[v.len() - 1]))
}

/// The backend `GET /` on the `i`-th host reaches: through the Gateway's scope for HTTPRoutes,
/// else the Ingress rules.
/// The EndpointSlices of `services`, found through the index and looked up in the store.
fn slices_of(index: &SliceIndex, slice_store: &SliceStore, services: &[(String, String)]) -> Vec<Arc<EndpointSlice>> {
    services
        .iter()
        .flat_map(|(ns, svc)| index.slices(ns, svc).map(move |n| (ns.clone(), n.to_owned())))
        .filter_map(|k| slice_store.get(&k).cloned())
        .collect()
}

/// The table with the endpoints of the `touched` Services resolved again, as the control loop's
/// endpoint patch does: their Services and EndpointSlices (found through the index) looked up in
/// the stores, nothing else read.
fn patch_endpoints(
    spec: &ClusterSpec,
    table: &RouteTable,
    (service_store, slice_store, index): (&ServiceStore, &SliceStore, &SliceIndex),
    nodes: &[Arc<Node>],
    touched: &[(String, String)],
) -> RouteTable {
    let services: Vec<_> = touched.iter().filter_map(|k| service_store.get(k).cloned()).collect();
    let slices = slices_of(index, slice_store, touched);
    let objects = Objects {
        services: &services,
        slices: &slices,
        nodes,
        ..Objects::default()
    };
    let updates: Vec<_> = service_endpoints(spec, &objects, touched)
        .into_iter()
        .filter_map(|(name, endpoints)| table.backend_id(&name).map(|id| (id, endpoints)))
        .collect();
    table.with_endpoints(updates)
}

fn routed(table: &RouteTable, http_routes: bool, i: usize) -> &kedge::routes::Backend {
    if !http_routes {
        return table.route(host_of(i).as_bytes(), "/").expect("routed");
    }
    let req = Request {
        method: b"GET",
        path: "/",
        query: None,
        headers: &[],
    };
    match table.gateway_lookup(local(), host_of(i).as_bytes(), &req) {
        Lookup::Routed(r) => &table.backends[r.action.backends[0].backend.expect("a backend")],
        other => panic!("{} not routed: {other:?}", host_of(i)),
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn run(sc: &Scenario) -> Row {
    let spec = spec(sc.mode);
    let before = live();
    let mut stores = generate(sc.ingresses, sc.endpoints_each, sc.http_routes);
    let objects_bytes = live() - before;

    // Cold builds; the last table is kept for its size.
    let (mut cold, mut finishes) = (Vec::new(), Vec::new());
    let (mut table_bytes, mut build_peak_bytes) = (0, 0);
    let mut table = None;
    for _ in 0..sc.runs {
        drop(table.take());
        let base = reset_peak();
        let t = Instant::now();
        let (built, finish) = build(&spec, &stores);
        cold.push(t.elapsed());
        finishes.push(finish);
        build_peak_bytes = build_peak_bytes.max(peak() - base);
        table_bytes = live() - base;
        table = Some(built);
    }
    let mut table = table.expect("at least one run");
    let backends = table.backends.len();
    let endpoints = table.backends.iter().map(|b| b.endpoints.len()).sum();
    assert_eq!(backends, sc.ingresses, "one backend per Service");

    // The endpoint-only fast path (`update_endpoints` in src/control.rs, `changed_endpoints`
    // in src/control/cluster.rs) after one EndpointSlice changed: the changed slice looked up
    // in its store, the Service → EndpointSlices index updated, the touched Service and its
    // slices looked up, their endpoints resolved, a table that shares the current one's rules.
    // The reflector stores are maps by namespace and name (as kube's); the index is what the
    // last full build left.
    let by_name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    let service_store: ServiceStore = stores
        .services
        .iter()
        .map(|s| (by_name(&s.metadata), Arc::clone(s)))
        .collect();
    let mut slice_store: SliceStore = stores
        .slices
        .iter()
        .map(|s| (by_name(&s.metadata), Arc::clone(s)))
        .collect();
    let mut index = SliceIndex::of(&stores.slices);
    let mut patch = Vec::new();
    for r in 0..sc.runs {
        let i = (r * 6007 + 1) % sc.ingresses;
        let new_ip = sc.ingresses * sc.endpoints_each + 1_000 + r;
        let eps = sc.endpoints_each - 1;
        stores.slices[i] = slice(i, eps, new_ip);
        let changed = by_name(&stores.slices[i].metadata);
        slice_store.insert(changed.clone(), Arc::clone(&stores.slices[i]));
        let t = Instant::now();
        let (ns, name) = &changed;
        let now = slice_store.get(&changed).cloned();
        let service = now.as_deref().and_then(slice_service);
        let mut touched = BTreeSet::new();
        if let Some(before) = index.set(ns, name, service) {
            touched.insert((ns.clone(), before));
        }
        if let Some(svc) = service {
            touched.insert((ns.clone(), svc.to_owned()));
        }
        let touched: Vec<(String, String)> = touched.into_iter().collect();
        let stored = (&service_store, &slice_store, &index);
        let next = patch_endpoints(&spec, &table, stored, &stores.nodes, &touched);
        patch.push(t.elapsed());
        let b = routed(&next, sc.http_routes, i);
        assert_eq!(
            b.endpoints.len(),
            if sc.mode == UpstreamMode::Pods { eps } else { NODES }
        );
        if sc.mode == UpstreamMode::Pods {
            assert!(
                b.endpoints.iter().any(|a| a.ip().to_string() == pod_ip(new_ip)),
                "the change is in the patched table"
            );
        }
        table = next;
    }
    // Node changes (NodePort mode), as the control loop answers them: what the table takes from
    // the Nodes is worked out again and compared with the last; when it changed, the endpoints
    // of every Service in NodePort mode are resolved again (their EndpointSlices found through
    // the index) and patched into the table, as after an EndpointSlice change.
    let (mut node_same, mut node_change) = (Vec::new(), Vec::new());
    if sc.mode == UpstreamMode::NodePorts {
        let mut last = NodeUse::of(&spec, &stores.nodes);
        for r in 0..sc.runs {
            let n = r % NODES;
            stores.nodes[n] = Arc::new((*stores.nodes[n]).clone());
            let t = Instant::now();
            let now = NodeUse::of(&spec, &stores.nodes);
            assert!(now == last, "a heartbeat changes nothing");
            node_same.push(t.elapsed());
            let mut node = (*stores.nodes[n]).clone();
            if let Some(c) = node
                .status
                .as_mut()
                .and_then(|s| s.conditions.as_mut())
                .and_then(|c| c.first_mut())
            {
                c.status = "False".into();
            }
            stores.nodes[n] = Arc::new(node);
            let t = Instant::now();
            let now = NodeUse::of(&spec, &stores.nodes);
            assert!(now != last, "a node left");
            last = now;
            let touched: Vec<(String, String)> = service_store
                .iter()
                .filter(|(_, s)| uses_node_ports(&spec, s))
                .map(|(k, _)| k.clone())
                .collect();
            let stored = (&service_store, &slice_store, &index);
            let next = patch_endpoints(&spec, &table, stored, &stores.nodes, &touched);
            node_change.push(t.elapsed());
            assert_eq!(routed(&next, sc.http_routes, r).endpoints.len(), NODES - r - 1);
            table = next;
        }
    }
    drop(table);

    // Rebuilds after one EndpointSlice changed: each run replaces one endpoint of another
    // Service, as a watch event would, then does what the control loop does.
    let mut rebuild = Vec::new();
    for r in 0..sc.runs {
        let i = (r * 7919) % sc.ingresses;
        // A fresh address, after the generated ones.
        let new_ip = sc.ingresses * sc.endpoints_each + r;
        let mut eps = sc.endpoints_each;
        if sc.mode == UpstreamMode::Pods {
            // The first endpoint is replaced by a fresh address.
            let old = &stores.slices[i];
            let mut changed = (**old).clone();
            changed.endpoints[0].addresses = vec![pod_ip(new_ip)];
            stores.slices[i] = Arc::new(changed);
        } else {
            // NodePort backends do not depend on pod addresses: drop one endpoint instead.
            eps -= 1;
            stores.slices[i] = slice(i, eps, new_ip);
        }
        let t = Instant::now();
        let snapshot = stores.clone(); // the reflector stores' state(): Arc clones
        let (table, _) = build(&spec, &snapshot);
        rebuild.push(t.elapsed());
        let b = routed(&table, sc.http_routes, i);
        if sc.mode == UpstreamMode::Pods {
            assert!(
                b.endpoints.iter().any(|a| a.ip().to_string() == pod_ip(new_ip)),
                "the change is in the new table"
            );
        }
        drop(table);
        drop(snapshot);
    }
    // Updates, as the control loop does them for a watched change: the update state and the
    // table of the previous build, told which Services changed (a changed Ingress is a new
    // object). Each Ingress change adds a path to one Ingress; each Service change renames the
    // port of one Service (so its Ingress's named-port path loses its endpoints) and back.
    let (mut ingress_change, mut service_change) = (Vec::new(), Vec::new());
    let mut cache_bytes = 0;
    if !sc.http_routes {
        let mut state = Incremental::default();
        let none = BTreeSet::new();
        let base = live();
        let (mut table, _) = build_with(&spec, &stores, Some((&mut state, None, &none)));
        // What the state holds beyond the table.
        cache_bytes = (live() - base).saturating_sub(table_bytes);
        for r in 0..sc.changes {
            let i = (r * 4049 + 3) % sc.ingresses;
            let mut changed = (*stores.ingresses[i]).clone();
            let path = format!("/v{r}");
            let other = (i + NAMESPACES) % sc.ingresses;
            if let Some(rules) = changed.spec.as_mut().and_then(|s| s.rules.as_mut())
                && let Some(http) = rules[0].http.as_mut()
            {
                // An exact path to another Service of the namespace.
                let mut p = http.paths[1].clone();
                p.path = Some(path.clone());
                if let Some(svc) = p.backend.service.as_mut() {
                    svc.name = format!("app-{other}");
                }
                http.paths.push(p);
            }
            stores.ingresses[i] = Arc::new(changed);
            let t = Instant::now();
            let snapshot = stores.without_slices();
            let (next, _) = build_with(
                &spec,
                &snapshot,
                Some((&mut state, Some((&table, &index, &slice_store)), &none)),
            );
            ingress_change.push(t.elapsed());
            assert!(
                next.shares_host_rules(&table, &host_of(i ^ 1)),
                "other hosts are shared"
            );
            table = next;
            let b = table.route(host_of(i).as_bytes(), &path).expect("routed");
            assert!(
                b.name.ends_with(&format!("/app-{other}:80")),
                "the new path is in the new table: {}",
                b.name
            );
            drop(snapshot);
        }
        for r in 0..sc.changes {
            let i = (r * 3079 + 5) % sc.ingresses;
            let mut changed = (*stores.services[i]).clone();
            let port = &mut changed.spec.as_mut().expect("a spec").ports.as_mut().expect("ports")[0];
            let renamed = port.name.as_deref() == Some("http");
            port.name = Some(if renamed { "web" } else { "http" }.into());
            stores.services[i] = Arc::new(changed);
            let services: BTreeSet<(String, String)> = [(ns_of(i), format!("app-{i}"))].into_iter().collect();
            let t = Instant::now();
            let snapshot = stores.without_slices();
            let (next, _) = build_with(
                &spec,
                &snapshot,
                Some((&mut state, Some((&table, &index, &slice_store)), &services)),
            );
            service_change.push(t.elapsed());
            table = next;
            let b = table.route(host_of(i).as_bytes(), "/").expect("routed");
            assert_eq!(
                b.endpoints.is_empty(),
                renamed,
                "the Service change is in the new table"
            );
            drop(snapshot);
        }
        drop(table);
        drop(state);
    }
    let status_views = sc.http_routes.then(|| status_views(&spec, &mut stores));
    let watch_decode = match (sc.ingresses >= 10_000, &sc.mode) {
        (true, UpstreamMode::Pods) => watch_decode(&stores, sc.http_routes),
        _ => Vec::new(),
    };
    let vm_hwm = vm_hwm();
    drop(stores);
    Row {
        status_views,
        watch_decode,
        ingress_change,
        service_change,
        node_same,
        node_change,
        cache_bytes,
        name: sc.name,
        backends,
        endpoints,
        objects_bytes,
        cold,
        finishes,
        rebuild,
        patch,
        table_bytes,
        build_peak_bytes,
        vm_hwm,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn ms3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a filter on scenario names.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let scenarios = [
        Scenario {
            name: "1k Ingresses, 5k endpoints",
            ingresses: 1_000,
            endpoints_each: 5,
            mode: UpstreamMode::Pods,
            http_routes: false,
            runs: 21,
            changes: 31,
        },
        Scenario {
            name: "10k Ingresses, 50k endpoints",
            ingresses: 10_000,
            endpoints_each: 5,
            mode: UpstreamMode::Pods,
            http_routes: false,
            runs: 9,
            changes: 31,
        },
        Scenario {
            name: "10k Ingresses, nodeports, 100 nodes",
            ingresses: 10_000,
            endpoints_each: 5,
            mode: UpstreamMode::NodePorts,
            http_routes: false,
            runs: 9,
            changes: 31,
        },
        Scenario {
            name: "10k HTTPRoutes, 50k endpoints",
            ingresses: 10_000,
            endpoints_each: 5,
            mode: UpstreamMode::Pods,
            http_routes: true,
            runs: 9,
            changes: 31,
        },
    ];
    let start_hwm = vm_hwm();
    let mut rows = Vec::new();
    for sc in &scenarios {
        if !filter.is_empty() && !filter.iter().any(|f| sc.name.contains(f.as_str())) {
            continue;
        }
        eprintln!("running: {} ({} runs)", sc.name, sc.runs);
        rows.push(run(sc));
    }

    println!("VmHWM before the scenarios: {} MB\n", mb(start_hwm));
    println!(
        "| scenario | backends | endpoints in table | cold translate+build ms (median; min–max) | of which build() ms | rebuild after 1 change ms \
         (median; max) | endpoint patch after 1 change ms (median; max) | objects MB | table MB | build peak MB | VmHWM after MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let min = r.cold.iter().min().copied().unwrap_or_default();
        let max = r.cold.iter().max().copied().unwrap_or_default();
        let rmax = r.rebuild.iter().max().copied().unwrap_or_default();
        let pmax = r.patch.iter().max().copied().unwrap_or_default();
        println!(
            "| {} | {} | {} | {} ({}–{}) | {} | {} ({}) | {} ({}) | {} | {} | {} | {} |",
            r.name,
            r.backends,
            r.endpoints,
            ms(median(&r.cold)),
            ms(min),
            ms(max),
            ms(median(&r.finishes)),
            ms(median(&r.rebuild)),
            ms(rmax),
            ms3(median(&r.patch)),
            ms3(pmax),
            mb(r.objects_bytes as u64),
            mb(r.table_bytes as u64),
            mb(r.build_peak_bytes as u64),
            mb(r.vm_hwm),
        );
    }
    println!(
        "\n| scenario | changes | Ingress change → new table ms (p50 / p99 / max) | Service change → new table ms (p50 / p99 / \
         max) | Ingress cache MB |"
    );
    println!("|---|---|---|---|---|");
    for r in rows.iter().filter(|r| !r.ingress_change.is_empty()) {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.ingress_change.len(),
            quantiles(&r.ingress_change),
            quantiles(&r.service_change),
            mb(r.cache_bytes as u64),
        );
    }
    if rows.iter().any(|r| !r.node_change.is_empty()) {
        println!(
            "\n| scenario | runs | Node heartbeat → nothing to do ms (median; max) | Node not Ready → NodePort endpoints \
             patched ms (p50 / p99 / max) |"
        );
        println!("|---|---|---|---|");
        for r in rows.iter().filter(|r| !r.node_change.is_empty()) {
            println!(
                "| {} | {} | {} ({}) | {} |",
                r.name,
                r.node_change.len(),
                ms3(median(&r.node_same)),
                ms3(r.node_same.iter().max().copied().unwrap_or_default()),
                quantiles(&r.node_change),
            );
        }
    }
    for r in &rows {
        if let Some([(first, n), (back, n_back), (again, n_again)]) = r.status_views {
            println!(
                "\n{}: Gateway API status view: first {} ms ({n} items); once every route's written status came \
                 back {} ms ({n_back} items); nothing changed {} ms ({n_again} items)",
                r.name,
                ms(first),
                ms(back),
                ms(again),
            );
        }
    }
    for r in &rows {
        for d in &r.watch_decode {
            println!(
                "\n{}: {}' watch events as the API server sends them ({} MB with managedFields{}), decoded: \
                 plain {} ms, as kedge's watches read them (Lean) {} ms",
                r.name,
                d.what,
                mb(d.bytes as u64),
                if d.last_applied {
                    " and kubectl's last-applied copy"
                } else {
                    ""
                },
                ms(d.plain),
                ms(d.lean),
            );
        }
    }
    println!(
        "\nobjects = the generated k8s_openapi objects (what kube's reflector stores hold); table = bytes the finished \
         route table holds; build peak = most bytes live at once during translate+build, beyond the objects; \
         VmHWM = this process's peak RSS so far (all scenarios up to this one, object generation included)."
    );
}

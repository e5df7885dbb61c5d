//! Gateway API attachment: which HTTPRoutes and GRPCRoutes attach to which listeners of kedge's
//! Gateways, on which local addresses and ports, for which hostnames; and the ReferenceGrant
//! check every cross-namespace reference goes through.
//!
//! The split: this module decides *where* a route is served (parentRefs, allowedRoutes,
//! hostname intersection, the Gateway's addresses and kedge's listeners) and what the Gateway,
//! listener and parent conditions are; `httproute.rs` turns each [`Attached`] route's rules into
//! table entries (matches, filters, weighted backends) and reports its backend references.
//!
//! [`attach`] is a pure function of one cluster's objects, the cluster's Gateway settings and
//! kedge's bound listeners:
//!
//! - **Classes**: kedge's GatewayClasses are those whose `controllerName` is the cluster's
//!   `gateway_controller`; kedge's Gateways are those of kedge's classes. Nothing else is read.
//! - **Addresses**: a Gateway's `spec.addresses` must be of type `IPAddress` with an IP address
//!   as value, else the Gateway is `Accepted=False/UnsupportedAddress` (and serves nothing). An
//!   IP address is usable when a kedge listener on one of the Gateway's ports is bound to it, or
//!   to the unspecified address of its family (`[::]` takes both) while the address is configured
//!   on this host; one that is not makes the Gateway `Programmed=False/AddressNotUsable`, and
//!   the Gateway serves on its usable addresses only. A Gateway without addresses serves on the
//!   cluster's IP `publish_addresses` that are usable in that sense, or, when none is, on every
//!   local address of kedge's listener on the port (a publish address behind NAT, a load
//!   balancer's). `status.addresses` says what clients use: the usable requested addresses, or
//!   every publish address (IP addresses as `IPAddress`, names as `Hostname`), or without those
//!   the addresses kedge's listeners are bound to (the host's non-loopback addresses for an
//!   unspecified one).
//! - **Listeners**: `HTTP` maps to a plain kedge listener on the same port, `HTTPS` (mode
//!   `Terminate`) to a TLS one; a port kedge does not serve that way is `Accepted=False/
//!   PortUnavailable`, any other protocol `UnsupportedProtocol`. Listeners of one Gateway on one
//!   port with different protocols are `Conflicted=True/ProtocolConflict`, with the same
//!   hostname `HostnameConflict`; a conflicted listener is not programmed. An HTTPS listener's
//!   `certificateRefs` must name `kubernetes.io/tls` Secrets (another namespace's only with a
//!   ReferenceGrant), else `ResolvedRefs=False/RefNotPermitted` or `InvalidCertificateRef`; with
//!   none usable the listener is `Programmed=False/Invalid` and serves nothing.
//! - **Routes**: a `parentRef` of group `gateway.networking.k8s.io` and kind `Gateway` (the
//!   defaults) naming one of kedge's Gateways makes a parent entry of kedge's; references to
//!   anything else are another controller's business and get no entry. The listeners it
//!   selects (`sectionName`, `port`) must be accepted, allow the route's namespace (`allowedRoutes`
//!   From Same, All, or Selector on the Namespace's labels) and kind, and share a hostname with
//!   it; the first that fails for every listener gives the reason (`NoMatchingParent`,
//!   `NotAllowedByListeners`, `NoMatchingListenerHostname`). A route attached to a listener
//!   counts in its `attachedRoutes` and, when the listener is programmed, is served there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rustc_hash::FxHashMap;

use super::super::gateway_types::{
    BackendRef, GROUP, Gateway, GatewayAddress, GatewayClass, GrpcRoute, HttpRoute, Listener, ObjectRef, ParentRef,
    ReferenceGrant, RouteGroupKind,
};
use super::{Objects, Warning, ns_name};
use crate::config::ListenerSpec;

/// Where one Gateway listener takes connections on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bind {
    /// The local addresses (of a kedge listener on `port`) whose connections this Gateway
    /// serves: its `spec.addresses` of type IPAddress that kedge takes connections for on
    /// `port`, or, for a Gateway without addresses, the cluster's `publish_addresses` that are
    /// IP addresses kedge takes connections for on `port`. Empty: every local address of
    /// kedge's listener on `port` (a Gateway without addresses, in a cluster without such
    /// publish addresses). Sorted.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// The kedge listener on `port` terminates TLS (the Gateway listener is `HTTPS`).
    pub tls: bool,
}

/// A route, HTTP or gRPC.
#[derive(Debug, Clone, Copy)]
pub enum RouteRef<'a> {
    Http(&'a HttpRoute),
    Grpc(&'a GrpcRoute),
}

/// One route accepted by one Gateway listener. Its parts are shared with the listener's and
/// the route's other builds (an update attaches 10k unchanged routes without allocating).
#[derive(Debug, Clone)]
pub struct Attached<'a> {
    pub bind: Arc<Bind>,
    /// The Gateway's `namespace/name`.
    pub gateway: Arc<str>,
    pub listener: &'a Listener,
    pub route: RouteRef<'a>,
    /// The hostnames this route is served for on this listener: the intersection of the
    /// route's `hostnames` with the listener's `hostname` (lower case; exact names or
    /// `*.suffix`). Empty: any host (neither restricts it).
    pub hostnames: Arc<[String]>,
}

/// Whether a ReferenceGrant in `to_ns` lets an object of `from_group`/`from_kind` in `from_ns`
/// refer to the object `to_group`/`to_kind`/`to_name` in `to_ns`. A reference within one
/// namespace needs no grant. Groups are `""` for the core group.
#[allow(clippy::too_many_arguments)]
pub fn ref_permitted(
    grants: &[std::sync::Arc<ReferenceGrant>],
    from_ns: &str,
    from_group: &str,
    from_kind: &str,
    to_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_name: &str,
) -> bool {
    if from_ns == to_ns {
        return true;
    }
    grants
        .iter()
        .filter(|g| g.metadata.namespace.as_deref() == Some(to_ns))
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.namespace == from_ns && f.group == from_group && f.kind == from_kind)
                && g.spec
                    .to
                    .iter()
                    .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
        })
}

/// What [`attach`] needs of the cluster and the host besides the objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySettings {
    /// `[[cluster]] gateway_controller`: the `controllerName` of kedge's GatewayClasses.
    pub controller: String,
    /// `[[cluster]] publish_addresses` (IP addresses and host names, in config order).
    pub publish_addresses: Vec<String>,
    /// The IP addresses configured on this host's interfaces, for listeners bound to an
    /// unspecified address.
    pub host_addresses: Vec<IpAddr>,
}

/// One status condition as kedge decides it; the status writer adds `observedGeneration` and
/// `lastTransitionTime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            type_,
            status: true,
            reason,
            message: message.into(),
        }
    }

    fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            type_,
            status: false,
            reason,
            message: message.into(),
        }
    }
}

/// What one of kedge's Gateways should show in its status.
#[derive(Debug, Clone)]
pub struct GatewayState<'a> {
    pub gateway: &'a Gateway,
    /// `Accepted` and `Programmed`.
    pub conditions: Vec<Cond>,
    /// `status.addresses`: what clients use.
    pub addresses: Vec<GatewayAddress>,
    /// One per listener of the spec, in its order.
    pub listeners: Vec<ListenerState>,
}

/// What one Gateway listener should show in its status.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerState {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Routes accepted on this listener (their backend references resolved or not).
    pub attached_routes: i32,
    /// `Accepted`, `ResolvedRefs`, `Programmed`, `Conflicted`.
    pub conditions: Vec<Cond>,
}

/// One parent entry of a route that is kedge's: a `parentRef` naming one of kedge's Gateways.
/// The reference and the conditions are shared with the builds that decided the same (see
/// [`RouteCache`]).
#[derive(Debug, Clone)]
pub struct RouteParent<'a> {
    pub route: RouteRef<'a>,
    /// The reference as the route spells it, with `group` and `kind` written out.
    pub parent_ref: Arc<ParentRef>,
    /// `Accepted` and `ResolvedRefs`.
    pub conditions: Arc<Vec<Cond>>,
}

/// A certificate an HTTPS listener of a programmed Gateway names (`tls.certificateRefs`),
/// resolved: a `kubernetes.io/tls` Secret kedge may use, not yet parsed.
#[derive(Debug, Clone)]
pub struct ListenerCert {
    pub bind: Bind,
    /// The listener's hostname (lower case; exact or `*.suffix`); `None`: any name.
    pub hostname: Option<String>,
    pub secret: Arc<Secret>,
    /// `Gateway namespace/name listener`.
    pub owner: String,
}

/// Everything [`attach`] decided: the routes to serve where, and every status kedge owns.
#[derive(Debug, Default)]
pub struct Attachment<'a> {
    /// Each route once per programmed listener it is attached to, in the order routes are
    /// listed (HTTPRoutes, then GRPCRoutes), then Gateway and listener order.
    pub routes: Vec<Attached<'a>>,
    /// kedge's GatewayClasses (they are `Accepted`).
    pub classes: Vec<&'a GatewayClass>,
    /// kedge's Gateways, by namespace/name.
    pub gateways: Vec<GatewayState<'a>>,
    /// Every route parent entry of kedge's.
    pub parents: Vec<RouteParent<'a>>,
    /// Certificates of the programmed HTTPS listeners, in Gateway and listener order.
    pub certificates: Vec<ListenerCert>,
    /// Every programmed listener (where, and its hostname: lower case, exact or `*.suffix`;
    /// `None`: any), routes attached or not, in Gateway and listener order: each selects its
    /// hosts in its scope.
    pub listeners: Vec<(Bind, Option<String>)>,
    /// Sorted, without duplicates.
    pub warnings: Vec<Warning>,
}

/// What the rule translation refused in one route (rules that answer 500 for it, matches left
/// out), for its parents' `Accepted` condition. Keyed by (kind, `namespace/name`).
pub type Refusals = BTreeMap<(&'static str, String), Refusal>;

/// The problems of one route: the spec's reason for the first, and each problem once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusal {
    /// `UnsupportedValue` or `IncompatibleFilters`.
    pub reason: &'static str,
    pub problems: BTreeSet<String>,
}

impl Attachment<'_> {
    /// Which listeners of kedge's Gateways are programmed, by Gateway (namespace, name) and
    /// listener name, in order. Routes attach only to programmed listeners, and an HTTPS
    /// listener is programmed only with a usable certificate: after a certificate change, the
    /// routes attach as before when this is unchanged.
    pub fn programmed(&self) -> Vec<(String, String, String, bool)> {
        self.gateways
            .iter()
            .flat_map(|g| {
                let (ns, name) = ns_name(&g.gateway.metadata);
                g.listeners.iter().map(move |l| {
                    let on = l.conditions.iter().any(|c| c.type_ == "Programmed" && c.status);
                    (ns.to_owned(), name.to_owned(), l.name.clone(), on)
                })
            })
            .collect()
    }

    /// Turns the `Accepted` condition of every parent entry of a route with refusals (an
    /// accepted one: a parent that refused the route keeps its reason) into `Accepted=False`
    /// with the refusal's reason. The rest of the route is still served; the message says so.
    pub fn refuse(&mut self, refusals: &Refusals) {
        if refusals.is_empty() {
            return;
        }
        for p in &mut self.parents {
            let Some(r) = refusals.get(&(p.route.kind(), p.route.key())) else {
                continue;
            };
            if !p.conditions.iter().any(|c| c.type_ == "Accepted" && c.status) {
                continue;
            }
            for c in Arc::make_mut(&mut p.conditions)
                .iter_mut()
                .filter(|c| c.type_ == "Accepted" && c.status)
            {
                let problems: Vec<&str> = r.problems.iter().map(String::as_str).collect();
                *c = Cond::no(
                    "Accepted",
                    r.reason,
                    format!(
                        "{}; the route's other rules and matches are served",
                        problems.join("; ")
                    ),
                );
            }
        }
    }
}

impl<'a> RouteRef<'a> {
    /// `HTTPRoute` or `GRPCRoute`.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteRef::Http(_) => "HTTPRoute",
            RouteRef::Grpc(_) => "GRPCRoute",
        }
    }

    pub fn meta(&self) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            RouteRef::Http(r) => &r.metadata,
            RouteRef::Grpc(r) => &r.metadata,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        let (ns, name) = ns_name(self.meta());
        format!("{ns}/{name}")
    }

    pub fn parent_refs(&self) -> &'a [ParentRef] {
        match self {
            RouteRef::Http(r) => &r.spec.parent_refs,
            RouteRef::Grpc(r) => &r.spec.parent_refs,
        }
    }

    pub fn hostnames(&self) -> &'a [String] {
        match self {
            RouteRef::Http(r) => &r.spec.hostnames,
            RouteRef::Grpc(r) => &r.spec.hostnames,
        }
    }

    /// Every backend reference of every rule, per-rule mirrors included.
    pub fn backend_refs(&self) -> Vec<&'a BackendRef> {
        let mut out = Vec::new();
        let mut filters = |fs: &'a [super::super::gateway_types::HttpRouteFilter]| {
            for f in fs {
                if let Some(m) = &f.request_mirror {
                    out.push(&m.backend_ref);
                }
            }
        };
        let mut refs = Vec::new();
        match self {
            RouteRef::Http(r) => {
                for rule in &r.spec.rules {
                    filters(&rule.filters);
                    for b in &rule.backend_refs {
                        refs.push(b);
                        filters(&b.filters);
                    }
                }
            }
            RouteRef::Grpc(r) => {
                for rule in &r.spec.rules {
                    filters(&rule.filters);
                    for b in &rule.backend_refs {
                        refs.push(b);
                        filters(&b.filters);
                    }
                }
            }
        }
        refs.extend(out);
        refs
    }
}

/// Why a backend reference cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefProblem {
    /// `BackendNotFound`, `InvalidKind` or `RefNotPermitted`: the route's `ResolvedRefs` reason.
    pub reason: &'static str,
    pub message: String,
}

/// The Service a route's backend reference names: (namespace, name, port). Only core
/// `Service`s (no group and kind, or group `""` and kind `Service`) are backends; the Service
/// must exist and have the port (`port` is required), and one in another namespace needs a
/// ReferenceGrant from the route's kind (`route_kind`: `HTTPRoute`, `GRPCRoute`) there.
/// Services and ReferenceGrants by namespace (and name), built once per table build: resolving
/// a backendRef is then a hash lookup, not a scan of every Service and grant (quadratic with
/// thousands of routes). The Services are indexed at the `SCANS`th lookup: an update that
/// decides a route or two again finds its few Services by a scan instead of indexing 10k.
pub struct RefIndex<'a> {
    all: &'a [Arc<Service>],
    services: std::cell::OnceCell<FxHashMap<(&'a str, &'a str), &'a Service>>,
    scans: std::cell::Cell<usize>,
    /// By the namespace they are in (the one they grant access to).
    grants: FxHashMap<&'a str, Vec<Arc<ReferenceGrant>>>,
}

/// How many Service lookups a [`RefIndex`] answers by a scan before it indexes them all.
const SCANS: usize = 8;

impl<'a> RefIndex<'a> {
    pub fn new(objects: &Objects<'a>) -> RefIndex<'a> {
        let mut grants: FxHashMap<&'a str, Vec<Arc<ReferenceGrant>>> = FxHashMap::default();
        for g in objects.reference_grants {
            grants
                .entry(g.metadata.namespace.as_deref().unwrap_or(""))
                .or_default()
                .push(Arc::clone(g));
        }
        RefIndex {
            all: objects.services,
            services: std::cell::OnceCell::new(),
            scans: std::cell::Cell::new(0),
            grants,
        }
    }

    /// Service `ns`/`name`.
    fn service(&self, ns: &str, name: &str) -> Option<&'a Service> {
        if self.services.get().is_none() && self.scans.get() < SCANS {
            self.scans.set(self.scans.get() + 1);
            return self
                .all
                .iter()
                .find(|s| ns_name(&s.metadata) == (ns, name))
                .map(|s| &**s);
        }
        let all = self.all;
        let services = self
            .services
            .get_or_init(|| all.iter().map(|s| (ns_name(&s.metadata), &**s)).collect());
        services.get(&(ns, name)).copied()
    }

    /// The ReferenceGrants in namespace `ns`.
    fn grants(&self, ns: &str) -> &[Arc<ReferenceGrant>] {
        self.grants.get(ns).map_or(&[], Vec::as_slice)
    }
}

pub fn resolve_backend(
    refs: &RefIndex<'_>,
    route_ns: &str,
    route_kind: &str,
    r: &BackendRef,
) -> Result<(String, String, u16), RefProblem> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        let gk = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        return Err(RefProblem {
            reason: "InvalidKind",
            message: format!("backendRef {}: kind {gk} is not supported (only Service)", r.name),
        });
    }
    let ns = r.namespace.as_deref().unwrap_or(route_ns);
    if !ref_permitted(refs.grants(ns), route_ns, GROUP, route_kind, ns, "", "Service", &r.name) {
        return Err(RefProblem {
            reason: "RefNotPermitted",
            message: format!(
                "backendRef {ns}/{}: no ReferenceGrant in {ns} lets {route_kind}s of {route_ns} refer to it",
                r.name
            ),
        });
    }
    let Some(port) = r.port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("backendRef {ns}/{}: no port", r.name),
        });
    };
    let Some(svc) = refs.service(ns, &r.name) else {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("backendRef {ns}/{}: no such Service", r.name),
        });
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or(&[]);
    if !ports.is_empty() && !ports.iter().any(|p| p.port == i32::from(port)) {
        return Err(RefProblem {
            reason: "BackendNotFound",
            message: format!("backendRef {ns}/{}: the Service has no port {port}", r.name),
        });
    }
    Ok((ns.to_owned(), r.name.clone(), port))
}

/// The route kinds kedge serves on HTTP and HTTPS listeners.
const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// One Gateway listener as evaluated.
struct Eval<'a> {
    listener: &'a Listener,
    /// `Accepted=False` reason and message; `None` when accepted.
    refused: Option<(&'static str, String)>,
    /// `Conflicted=True` reason.
    conflict: Option<&'static str>,
    /// Route kinds it takes (valid ones of `allowedRoutes.kinds`, or both).
    kinds: Vec<&'static str>,
    /// `ResolvedRefs=False` reason and message.
    unresolved: Option<(&'static str, String)>,
    /// Certificates it may serve (HTTPS).
    certs: Vec<Arc<Secret>>,
    /// Where it takes connections (accepted listeners).
    bind: Option<Arc<Bind>>,
    /// `Programmed=False` message, `None` when programmed.
    not_programmed: Option<String>,
    /// How many routes attach, for `attachedRoutes`.
    attached: usize,
}

/// Whether a kedge listener bound to `bound` takes connections for local address `ip`.
fn takes(bound: IpAddr, ip: IpAddr, host: &[IpAddr]) -> bool {
    if bound == ip {
        return true;
    }
    let family = match bound {
        IpAddr::V4(b) => b.is_unspecified() && ip.is_ipv4(),
        // `[::]` takes IPv4 too (dual stack).
        IpAddr::V6(b) => b.is_unspecified(),
    };
    family && host.contains(&ip)
}

/// The protocol's TLS side: `Some(false)` for HTTP, `Some(true)` for HTTPS, `None` otherwise.
fn protocol_tls(protocol: &str) -> Option<bool> {
    match protocol {
        "HTTP" => Some(false),
        "HTTPS" => Some(true),
        _ => None,
    }
}

/// Decides where routes attach and every status kedge owns, for one cluster's objects.
/// `listeners`: kedge's listeners with the addresses they are bound to (actual ports).
pub fn attach<'a>(objects: &Objects<'a>, settings: &GatewaySettings, listeners: &[ListenerSpec]) -> Attachment<'a> {
    attach_with(objects, settings, listeners, &mut RouteCache::default(), None)
}

/// What [`attach_with`] decided for each route, kept between builds so that an update decides
/// again only the routes it must. A route's parent entries and the listeners it attaches to
/// depend on the route object, kedge's GatewayClasses and Gateways (their listeners evaluated
/// with the settings and kedge's listeners), the Namespaces (labels for `allowedRoutes`), the
/// ReferenceGrants and the Services its backendRefs name (`ResolvedRefs`), and nothing else.
/// So a decision is used again while its route is the same object (kept alive here, so that
/// its address names no other) or a new object of the same route (uid) with the same
/// `metadata.generation` (only its status or metadata changed: kedge's own status write coming
/// back, most often; the decision reads neither), none of its Services is among the changed
/// ones, and the GatewayClasses, Gateways and ReferenceGrants (the same specs: uid and
/// generation), Namespaces (the same objects), in the same order, settings and listeners are
/// those it was made with; anything else decides every
/// route again. Whether a listener is programmed (what it serves) is read at every build, not
/// kept.
#[derive(Default)]
pub struct RouteCache {
    /// The GatewayClasses, Gateways, Namespaces and ReferenceGrants the decisions were made
    /// with ([`world_of`]), with the settings and kedge's listeners.
    world: Option<(Vec<Seen>, GatewaySettings, Vec<ListenerSpec>)>,
    /// By the address of the route object, and the uid that finds a new object's predecessor
    /// (to use its decision again for the same generation).
    routes: RouteRecords<Decided>,
    /// How many routes the last [`attach_with`] decided (the rest it took as decided).
    decided: usize,
}

/// A route object of the stores, held (by the route cache, the route translation's state and
/// the status view's records) so that its address names no other object while held.
#[derive(Clone)]
pub enum RouteObject {
    Http(Arc<HttpRoute>),
    Grpc(Arc<GrpcRoute>),
}

impl RouteObject {
    /// The address of the object (what the stores hand out again while it is unchanged).
    pub fn address(&self) -> usize {
        match self {
            RouteObject::Http(r) => Arc::as_ptr(r) as usize,
            RouteObject::Grpc(r) => Arc::as_ptr(r) as usize,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            RouteObject::Http(r) => &r.metadata,
            RouteObject::Grpc(r) => &r.metadata,
        }
    }

    /// The address of its metadata (how [`attach`] tells routes apart).
    pub fn meta_address(&self) -> usize {
        std::ptr::from_ref(self.meta()) as usize
    }
}

/// Whether `new` is the object `old` with only its status or metadata changed: the same uid
/// and the same generation (which the API server bumps at every change of the spec).
pub(crate) fn same_generation(
    old: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    new: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    old.uid.is_some() && old.generation.is_some() && old.uid == new.uid && old.generation == new.generation
}

/// What [`attach_with`] decided for one route object.
struct Decided {
    object: RouteObject,
    /// The Services its backendRefs name (namespace, name): a change to one decides it again.
    services: Vec<(String, String)>,
    /// One per parentRef naming one of kedge's Gateways, in the route's order.
    parents: Vec<DecidedParent>,
}

struct DecidedParent {
    /// The Gateway's index among kedge's (sorted by namespace/name).
    gateway: usize,
    /// The listeners (index in the Gateway's spec) that accept it, with the hostnames it is
    /// served for there and whether this is the route's first parent entry to attach there
    /// (two parentRefs may name the same listener: the route attaches once); empty when
    /// refused.
    listeners: Vec<(usize, Arc<[String]>, bool)>,
    parent_ref: Arc<ParentRef>,
    conditions: Arc<Vec<Cond>>,
}

impl RouteCache {
    /// How many route decisions are kept.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route decision is kept.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// How many routes the last [`attach_with`] decided (the rest it took as decided).
    pub fn decided(&self) -> usize {
        self.decided
    }
}

/// What every route's decision depends on besides the route and its Services: each
/// GatewayClass, Gateway and ReferenceGrant by uid and generation (their specs; a status write,
/// kedge's own most often, is a new object of the same generation and changes no decision),
/// each Namespace by address (its labels are metadata, with no generation).
fn world_of(objects: &Objects<'_>) -> Vec<Seen> {
    fn spec<T: kube::Resource>(v: &[Arc<T>]) -> impl Iterator<Item = Seen> + '_ {
        v.iter().map(|o| match (&o.meta().uid, o.meta().generation) {
            (Some(uid), Some(generation)) => Seen::Spec(uid.clone(), generation),
            _ => Seen::At(Arc::as_ptr(o) as usize),
        })
    }
    let mut w = Vec::with_capacity(
        objects.gateway_classes.len()
            + objects.gateways.len()
            + objects.namespaces.len()
            + objects.reference_grants.len()
            + 4,
    );
    // The lengths separate the kinds.
    w.push(Seen::Count(objects.gateway_classes.len()));
    w.extend(spec(objects.gateway_classes));
    w.push(Seen::Count(objects.gateways.len()));
    w.extend(spec(objects.gateways));
    w.push(Seen::Count(objects.namespaces.len()));
    w.extend(objects.namespaces.iter().map(|n| Seen::At(Arc::as_ptr(n) as usize)));
    w.push(Seen::Count(objects.reference_grants.len()));
    w.extend(spec(objects.reference_grants));
    w
}

/// One entry of [`world_of`].
#[derive(PartialEq, Eq)]
enum Seen {
    Count(usize),
    /// An object by address (the same object).
    At(usize),
    /// An object by uid and generation (the same spec).
    Spec(String, i64),
}

/// Per-route records kept between builds (the route cache's decisions, the status view's), by
/// the address of the store's route object, which each record holds so that the address names
/// no other object while kept: an unchanged route's record is found without hashing a string.
/// An index by uid finds the record of the object a new one replaced (a status write coming
/// back is a new object). Records of objects the stores no longer hold are let go once there
/// are an eighth as many of them as routes: a pass over every route now and then, not one per
/// build.
pub struct RouteRecords<V> {
    by_address: FxHashMap<usize, V>,
    /// The address each route (by uid) was last recorded at.
    by_uid: FxHashMap<String, usize>,
}

impl<V> Default for RouteRecords<V> {
    fn default() -> Self {
        RouteRecords {
            by_address: FxHashMap::default(),
            by_uid: FxHashMap::default(),
        }
    }
}

impl<V> RouteRecords<V> {
    /// The record of the object at `at`.
    pub fn get(&self, at: usize) -> Option<&V> {
        self.by_address.get(&at)
    }

    /// Takes out the record of the object that route `uid`'s object at `at` replaced (the one
    /// the uid was last recorded at, if another).
    pub fn take_replaced(&mut self, uid: Option<&str>, at: usize) -> Option<V> {
        let was = *self.by_uid.get(uid?)?;
        if was == at {
            return None;
        }
        self.by_address.remove(&was)
    }

    /// Keeps `record` for the object at `at` of route `uid`.
    pub fn insert(&mut self, uid: Option<&str>, at: usize, record: V) {
        self.by_address.insert(at, record);
        if let Some(uid) = uid {
            match self.by_uid.get_mut(uid) {
                Some(was) => *was = at,
                None => {
                    self.by_uid.insert(uid.to_owned(), at);
                }
            }
        }
    }

    /// Where route `uid` was last recorded.
    pub fn at_of(&self, uid: &str) -> Option<usize> {
        self.by_uid.get(uid).copied()
    }

    pub fn len(&self) -> usize {
        self.by_address.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty()
    }

    pub fn clear(&mut self) {
        self.by_address.clear();
        self.by_uid.clear();
    }

    /// Lets go of the records of objects `objects` no longer holds (changed or deleted
    /// routes), once there are an eighth as many of them as routes.
    pub fn forget_gone(&mut self, objects: &Objects<'_>) {
        let total = objects.http_routes.len() + objects.grpc_routes.len();
        if self.by_address.len() > total + total / 8 + 64 {
            let now: rustc_hash::FxHashSet<usize> = objects
                .http_routes
                .iter()
                .map(|r| Arc::as_ptr(r) as usize)
                .chain(objects.grpc_routes.iter().map(|r| Arc::as_ptr(r) as usize))
                .collect();
            self.by_address.retain(|at, _| now.contains(at));
        }
        if self.by_uid.len() > self.by_address.len() {
            let by_address = &self.by_address;
            self.by_uid.retain(|_, at| by_address.contains_key(at));
        }
    }
}

/// [`attach`], deciding again only what it must: with `changed` (an update: the Services whose
/// objects or endpoints changed), a route whose decision `cache` holds (see [`RouteCache`]) is
/// attached as decided without being looked at; without (a build from nothing) every route is
/// decided. `cache` then holds this build's decisions, of every route (and, for a while, those
/// of objects no longer in the stores).
pub fn attach_with<'a>(
    objects: &Objects<'a>,
    settings: &GatewaySettings,
    listeners: &[ListenerSpec],
    cache: &mut RouteCache,
    changed: Option<&BTreeSet<(String, String)>>,
) -> Attachment<'a> {
    let mut out = Attachment::default();
    let mut warnings: BTreeSet<Warning> = BTreeSet::new();
    // Indexed on first use: a cluster without attached routes (an Ingress update's), or an
    // update that decides no route again, never indexes its Services.
    let refs = std::cell::LazyCell::new(|| RefIndex::new(objects));
    let ours: BTreeSet<&str> = objects
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == settings.controller)
        .map(|c| {
            out.classes.push(c);
            c.metadata.name.as_deref().unwrap_or("")
        })
        .collect();
    let mut gateways: Vec<&'a Gateway> = objects
        .gateways
        .iter()
        .map(|g| &**g)
        .filter(|g| ours.contains(g.spec.gateway_class_name.as_str()))
        .collect();
    gateways.sort_by(|a, b| ns_name(&a.metadata).cmp(&ns_name(&b.metadata)));

    // Each Gateway's listeners, evaluated, and whether the Gateway is accepted.
    let mut evals: Vec<(bool, Vec<Eval<'a>>)> = Vec::new();
    for gw in &gateways {
        let (state, ev) = gateway(objects, settings, listeners, gw);
        out.gateways.push(state);
        evals.push(ev);
    }

    // The decisions of the last build, when they may be used again.
    let world = (world_of(objects), settings.clone(), listeners.to_vec());
    if changed.is_none() || cache.world.as_ref() != Some(&world) {
        cache.routes.clear();
    }
    cache.world = Some(world);
    cache.decided = 0;
    // Namespace labels by name, for allowedRoutes selectors (built when a route is decided).
    let labels = std::cell::LazyCell::new(|| -> Labels<'a> {
        objects
            .namespaces
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref())))
            .collect()
    });
    let routes = objects
        .http_routes
        .iter()
        .map(|r| (RouteRef::Http(r), Arc::as_ptr(r) as usize, None))
        .chain(
            objects
                .grpc_routes
                .iter()
                .map(|r| (RouteRef::Grpc(r), Arc::as_ptr(r) as usize, Some(r))),
        );
    let gateway_names: Vec<Arc<str>> = gateways
        .iter()
        .map(|g| {
            let (ns, name) = ns_name(&g.metadata);
            Arc::from(format!("{ns}/{name}"))
        })
        .collect();
    for (i, (route, object, grpc)) in routes.enumerate() {
        let fresh = |d: &Decided| !changed.is_some_and(|c| d.services.iter().any(|s| c.contains(s)));
        if !cache.routes.get(object).is_some_and(fresh) {
            let kept = match grpc {
                None => RouteObject::Http(Arc::clone(&objects.http_routes[i])),
                Some(r) => RouteObject::Grpc(Arc::clone(r)),
            };
            let uid = route.meta().uid.as_deref();
            // A new object of a route decided before, with the same generation: the same
            // decision, moved to this object.
            let renewed = (cache.routes)
                .take_replaced(uid, object)
                .filter(|d| same_generation(d.object.meta(), route.meta()) && fresh(d));
            let decided = match renewed {
                Some(d) => Decided { object: kept, ..d },
                None => {
                    cache.decided += 1;
                    decide(route, kept, &gateways, &evals, &labels, &refs)
                }
            };
            cache.routes.insert(uid, object, decided);
        }
        let Some(decided) = cache.routes.get(object) else {
            continue;
        };
        for p in &decided.parents {
            let gi = p.gateway;
            for (li, hostnames, first) in &p.listeners {
                if !first {
                    continue;
                }
                let eval = &mut evals[gi].1[*li];
                eval.attached += 1;
                if eval.not_programmed.is_some() {
                    continue;
                }
                if let Some(bind) = &eval.bind {
                    out.routes.push(Attached {
                        bind: Arc::clone(bind),
                        gateway: Arc::clone(&gateway_names[gi]),
                        listener: eval.listener,
                        route,
                        hostnames: Arc::clone(hostnames),
                    });
                }
            }
            out.parents.push(RouteParent {
                route,
                parent_ref: Arc::clone(&p.parent_ref),
                conditions: Arc::clone(&p.conditions),
            });
        }
    }
    cache.routes.forget_gone(objects);

    for ((gw, (_, ev)), state) in gateways.iter().zip(evals).zip(&mut out.gateways) {
        let (ns, name) = ns_name(&gw.metadata);
        for (eval, ls) in ev.into_iter().zip(&mut state.listeners) {
            ls.attached_routes = i32::try_from(eval.attached).unwrap_or(i32::MAX);
            if let (Some(bind), None) = (&eval.bind, &eval.not_programmed) {
                let hostname = eval.listener.hostname.as_deref().map(str::to_ascii_lowercase);
                out.listeners.push(((**bind).clone(), hostname.clone()));
                for secret in eval.certs {
                    out.certificates.push(ListenerCert {
                        bind: (**bind).clone(),
                        hostname: hostname.clone(),
                        secret,
                        owner: format!("Gateway {ns}/{name} {}", eval.listener.name),
                    });
                }
            }
            for c in &ls.conditions {
                if !c.status && c.type_ != "Conflicted" {
                    warnings.insert(Warning {
                        object: format!("Gateway {ns}/{name}"),
                        message: format!("listener {}: {}: {}", eval.listener.name, c.reason, c.message),
                    });
                }
            }
        }
        for c in &state.conditions {
            if !c.status {
                warnings.insert(Warning {
                    object: format!("Gateway {ns}/{name}"),
                    message: format!("{}: {}", c.reason, c.message),
                });
            }
        }
    }
    for p in &out.parents {
        for c in p.conditions.iter().filter(|c| !c.status) {
            warnings.insert(Warning {
                object: format!("{} {}", p.route.kind(), p.route.key()),
                message: format!("parent {}: {}: {}", p.parent_ref.name, c.reason, c.message),
            });
        }
    }
    out.warnings = warnings.into_iter().collect();
    out
}

/// One Gateway's state and its listeners evaluated (`true`: the Gateway is accepted).
fn gateway<'a>(
    objects: &Objects<'a>,
    settings: &GatewaySettings,
    listeners: &[ListenerSpec],
    gw: &'a Gateway,
) -> (GatewayState<'a>, (bool, Vec<Eval<'a>>)) {
    let host = &settings.host_addresses;
    let ports: BTreeSet<u16> = gw
        .spec
        .listeners
        .iter()
        .filter_map(|l| u16::try_from(l.port).ok())
        .collect();
    let on_ports = |ip: IpAddr| {
        listeners
            .iter()
            .any(|k| ports.contains(&k.address.port()) && takes(k.address.ip(), ip, host))
    };

    // spec.addresses: IPAddress only; usable when one of kedge's listeners on the Gateway's
    // ports takes connections for it.
    let mut unsupported = Vec::new();
    let mut requested = Vec::new();
    for a in &gw.spec.addresses {
        match (a.type_.as_deref().unwrap_or("IPAddress"), a.value.parse::<IpAddr>()) {
            ("IPAddress", Ok(ip)) => requested.push(ip),
            (t, _) => unsupported.push(format!("{t} {}", a.value)),
        }
    }
    let (usable, unusable): (Vec<IpAddr>, Vec<IpAddr>) = requested.iter().partition(|ip| on_ports(**ip));
    // The addresses this Gateway serves on (before the port): requested, or publish; `None`
    // for every address.
    let publish_ips: Vec<IpAddr> = settings
        .publish_addresses
        .iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect();
    let serve_on: &[IpAddr] = if gw.spec.addresses.is_empty() {
        &publish_ips
    } else {
        &usable
    };

    let mut evals: Vec<Eval<'a>> = gw.spec.listeners.iter().map(|l| listener(objects, gw, l)).collect();
    // Protocol and hostname conflicts among listeners of a supported protocol.
    let mut by_port: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (i, e) in evals.iter().enumerate() {
        if protocol_tls(&e.listener.protocol).is_some() {
            by_port.entry(e.listener.port).or_default().push(i);
        }
    }
    for same_port in by_port.values() {
        let protocols: BTreeSet<&str> = same_port.iter().map(|&i| evals[i].listener.protocol.as_str()).collect();
        if protocols.len() > 1 {
            for &i in same_port {
                evals[i].conflict = Some("ProtocolConflict");
            }
            continue;
        }
        let mut by_host: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
        for &i in same_port {
            let h = evals[i].listener.hostname.as_deref().map(str::to_ascii_lowercase);
            by_host.entry(h).or_default().push(i);
        }
        for same in by_host.values().filter(|v| v.len() > 1) {
            for &i in same {
                evals[i].conflict = Some("HostnameConflict");
            }
        }
    }
    // Ports: each listener on a kedge listener of its port and TLS side.
    for e in &mut evals {
        if e.refused.is_some() {
            continue;
        }
        let Some(tls) = protocol_tls(&e.listener.protocol) else {
            continue;
        };
        let port = u16::try_from(e.listener.port).unwrap_or(0);
        let on_port: Vec<&ListenerSpec> = listeners.iter().filter(|k| k.address.port() == port).collect();
        let fitting: Vec<&ListenerSpec> = on_port.iter().copied().filter(|k| k.tls == tls).collect();
        if on_port.is_empty() {
            e.refused = Some(("PortUnavailable", format!("kedge does not listen on port {port}")));
            continue;
        }
        if fitting.is_empty() {
            let what = if tls {
                "does not terminate TLS"
            } else {
                "terminates TLS"
            };
            e.refused = Some(("PortUnavailable", format!("kedge's listener on port {port} {what}")));
            continue;
        }
        let mut addresses: Vec<IpAddr> = serve_on
            .iter()
            .copied()
            .filter(|ip| fitting.iter().any(|k| takes(k.address.ip(), *ip, host)))
            .collect();
        addresses.sort();
        addresses.dedup();
        if !gw.spec.addresses.is_empty() && addresses.is_empty() {
            if !usable.is_empty() {
                e.refused = Some((
                    "PortUnavailable",
                    format!("no kedge listener on port {port} takes connections for the Gateway's addresses"),
                ));
            } else {
                e.not_programmed = Some("the Gateway has no usable address".into());
            }
            continue;
        }
        e.bind = Some(Arc::new(Bind { addresses, port, tls }));
    }
    for e in &mut evals {
        if e.conflict.is_some() && e.not_programmed.is_none() {
            e.not_programmed = Some("the listener conflicts with another one".into());
        }
        if e.refused.is_some() {
            e.bind = None;
            e.not_programmed = Some("the listener is not accepted".into());
        }
        if protocol_tls(&e.listener.protocol) == Some(true) && e.certs.is_empty() && e.not_programmed.is_none() {
            e.not_programmed = Some("no usable certificate".into());
        }
    }

    let any_valid = evals.iter().any(|e| e.refused.is_none() && e.conflict.is_none());
    let all_valid = evals.iter().all(|e| e.refused.is_none() && e.conflict.is_none());
    let accepted = if !unsupported.is_empty() {
        Cond::no(
            "Accepted",
            "UnsupportedAddress",
            format!(
                "kedge serves IPAddress addresses only (IP addresses as values): {}",
                unsupported.join(", ")
            ),
        )
    } else if !any_valid {
        Cond::no("Accepted", "ListenersNotValid", "no listener is valid")
    } else if !all_valid {
        Cond::yes("Accepted", "ListenersNotValid", "some listeners are not valid")
    } else {
        Cond::yes("Accepted", "Accepted", "accepted by kedge")
    };
    let gateway_ok = accepted.status;
    if !gateway_ok {
        for e in &mut evals {
            e.bind = None;
            if e.not_programmed.is_none() {
                e.not_programmed = Some("the Gateway is not accepted".into());
            }
        }
    }
    let programmed = if !gateway_ok {
        Cond::no("Programmed", "Invalid", "the Gateway is not accepted")
    } else if !unusable.is_empty() {
        let list: Vec<String> = unusable.iter().map(ToString::to_string).collect();
        Cond::no(
            "Programmed",
            "AddressNotUsable",
            format!(
                "no kedge listener on the Gateway's ports takes connections for {} (listen on the address, or on 0.0.0.0 or [::] with the address configured on this host)",
                list.join(", ")
            ),
        )
    } else if evals.iter().all(|e| e.not_programmed.is_some()) {
        Cond::no("Programmed", "Invalid", "no listener is programmed")
    } else {
        Cond::yes("Programmed", "Programmed", "programmed in kedge's route table")
    };

    let addresses = if !gw.spec.addresses.is_empty() {
        usable
            .iter()
            .map(|ip| GatewayAddress {
                type_: Some("IPAddress".into()),
                value: ip.to_string(),
            })
            .collect()
    } else if !settings.publish_addresses.is_empty() {
        settings
            .publish_addresses
            .iter()
            .map(|a| GatewayAddress {
                type_: Some(
                    if a.parse::<IpAddr>().is_ok() {
                        "IPAddress"
                    } else {
                        "Hostname"
                    }
                    .into(),
                ),
                value: a.clone(),
            })
            .collect()
    } else {
        bound_addresses(listeners, &ports, host)
    };

    let states = evals.iter().map(listener_state).collect();
    (
        GatewayState {
            gateway: gw,
            conditions: vec![accepted, programmed],
            addresses,
            listeners: states,
        },
        (gateway_ok, evals),
    )
}

/// Without spec or publish addresses: the addresses kedge's listeners on `ports` are bound to,
/// the host's non-loopback ones for an unspecified address (its loopback ones when it has
/// nothing else).
fn bound_addresses(listeners: &[ListenerSpec], ports: &BTreeSet<u16>, host: &[IpAddr]) -> Vec<GatewayAddress> {
    let mut ips = BTreeSet::new();
    for k in listeners.iter().filter(|k| ports.contains(&k.address.port())) {
        let ip = k.address.ip();
        if ip.is_unspecified() {
            let mut local: Vec<IpAddr> = host
                .iter()
                .copied()
                .filter(|h| takes(ip, *h, host) && !h.is_loopback())
                .collect();
            if local.is_empty() {
                local = host.iter().copied().filter(|h| takes(ip, *h, host)).collect();
            }
            ips.extend(local);
        } else {
            ips.insert(ip);
        }
    }
    ips.into_iter()
        .map(|ip| GatewayAddress {
            type_: Some("IPAddress".into()),
            value: ip.to_string(),
        })
        .collect()
}

/// A listener on its own: protocol, route kinds, certificates.
fn listener<'a>(objects: &Objects<'a>, gw: &'a Gateway, l: &'a Listener) -> Eval<'a> {
    let (gw_ns, _) = ns_name(&gw.metadata);
    let mut e = Eval {
        listener: l,
        refused: None,
        conflict: None,
        kinds: Vec::new(),
        unresolved: None,
        certs: Vec::new(),
        bind: None,
        not_programmed: None,
        attached: 0,
    };
    let Some(tls) = protocol_tls(&l.protocol) else {
        e.refused = Some((
            "UnsupportedProtocol",
            format!("kedge serves HTTP and HTTPS listeners, not {}", l.protocol),
        ));
        return e;
    };
    let wanted = l.allowed_routes.as_ref().map_or(&[][..], |a| &a.kinds[..]);
    if wanted.is_empty() {
        e.kinds = ROUTE_KINDS.to_vec();
    } else {
        let mut invalid = Vec::new();
        for k in wanted {
            let group = k.group.as_deref().unwrap_or(GROUP);
            match ROUTE_KINDS.iter().find(|r| **r == k.kind) {
                Some(r) if group == GROUP => {
                    if !e.kinds.contains(r) {
                        e.kinds.push(r);
                    }
                }
                _ => invalid.push(if group.is_empty() {
                    k.kind.clone()
                } else {
                    format!("{}.{group}", k.kind)
                }),
            }
        }
        if !invalid.is_empty() {
            e.unresolved = Some((
                "InvalidRouteKinds",
                format!("kedge does not serve route kinds {}", invalid.join(", ")),
            ));
        }
    }
    if tls {
        let mode = l.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate");
        if mode != "Terminate" {
            e.refused = Some((
                "UnsupportedValue",
                format!("kedge terminates TLS on HTTPS listeners; tls.mode {mode} is not supported"),
            ));
            return e;
        }
        let refs = l.tls.as_ref().map_or(&[][..], |t| &t.certificate_refs[..]);
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        if refs.is_empty() {
            problems.push(("InvalidCertificateRef", "no tls.certificateRefs".into()));
        }
        for r in refs {
            match certificate(objects, gw_ns, r) {
                Ok(secret) => e.certs.push(secret),
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            // RefNotPermitted first: it is what the user must fix before anything else.
            let reason = if problems.iter().any(|p| p.0 == "RefNotPermitted") {
                "RefNotPermitted"
            } else {
                "InvalidCertificateRef"
            };
            let message: Vec<String> = problems.into_iter().map(|p| p.1).collect();
            if e.unresolved.is_none() {
                e.unresolved = Some((reason, message.join("; ")));
            }
        }
    }
    e
}

/// A certificate reference of a listener of a Gateway in `gw_ns`: a `kubernetes.io/tls` Secret
/// with a certificate and key, in the Gateway's namespace or granted by a ReferenceGrant.
fn certificate(objects: &Objects<'_>, gw_ns: &str, r: &ObjectRef) -> Result<Arc<Secret>, (&'static str, String)> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    let ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef {}: kind {kind} is not supported (only Secret)", r.name),
        ));
    }
    if !ref_permitted(
        objects.reference_grants,
        gw_ns,
        GROUP,
        "Gateway",
        ns,
        "",
        "Secret",
        &r.name,
    ) {
        return Err((
            "RefNotPermitted",
            format!(
                "certificateRef {ns}/{}: no ReferenceGrant in {ns} lets Gateways of {gw_ns} refer to it",
                r.name
            ),
        ));
    }
    let secret = objects
        .secrets
        .iter()
        .find(|s| ns_name(&s.metadata) == (ns, r.name.as_str()))
        .ok_or_else(|| {
            (
                "InvalidCertificateRef",
                format!("certificateRef {ns}/{}: no such Secret", r.name),
            )
        })?;
    let data = |k: &str| secret.data.as_ref().and_then(|d| d.get(k)).map(|v| v.0.as_slice());
    let (Some(crt), Some(key), Some("kubernetes.io/tls")) = (data("tls.crt"), data("tls.key"), secret.type_.as_deref())
    else {
        return Err((
            "InvalidCertificateRef",
            format!(
                "certificateRef {ns}/{}: not a kubernetes.io/tls Secret with tls.crt and tls.key",
                r.name
            ),
        ));
    };
    // The PEM's shape only: the certificate itself is parsed (and checked for the listener's
    // hostname and expiry, a warning if not) where certificates are built.
    crate::tls::pem_shape(crt, key)
        .map_err(|e| ("InvalidCertificateRef", format!("certificateRef {ns}/{}: {e}", r.name)))?;
    Ok(Arc::clone(secret))
}

/// A listener's status (without `attachedRoutes`, counted later).
fn listener_state(e: &Eval<'_>) -> ListenerState {
    let accepted = match &e.refused {
        Some((reason, message)) => Cond::no("Accepted", reason, message.clone()),
        None => Cond::yes("Accepted", "Accepted", "accepted by kedge"),
    };
    let resolved = match &e.unresolved {
        Some((reason, message)) => Cond::no("ResolvedRefs", reason, message.clone()),
        None => Cond::yes("ResolvedRefs", "ResolvedRefs", "every reference resolved"),
    };
    let programmed = match &e.not_programmed {
        Some(message) => Cond::no("Programmed", "Invalid", message.clone()),
        None => Cond::yes("Programmed", "Programmed", "programmed in kedge's route table"),
    };
    let conflicted = match e.conflict {
        Some(reason) => Cond::yes(
            "Conflicted",
            reason,
            "another listener of the Gateway has the same port and hostname or another protocol",
        ),
        None => Cond::no("Conflicted", "NoConflicts", "no conflict"),
    };
    ListenerState {
        name: e.listener.name.clone(),
        supported_kinds: e
            .kinds
            .iter()
            .map(|k| RouteGroupKind {
                group: Some(GROUP.into()),
                kind: (*k).into(),
            })
            .collect(),
        attached_routes: 0,
        conditions: vec![accepted, resolved, programmed, conflicted],
    }
}

/// The listeners of `gw` a route's parent reference attaches to (index, hostnames), or why
/// none (`Accepted=False` reason and message).
#[allow(clippy::type_complexity)]
fn accept(
    labels: &Labels<'_>,
    route: &RouteRef<'_>,
    pr: &ParentRef,
    gw: &Gateway,
    (gateway_ok, evals): &(bool, Vec<Eval<'_>>),
) -> Result<Vec<(usize, Vec<String>)>, (&'static str, String)> {
    let (gw_ns, gw_name) = ns_name(&gw.metadata);
    let candidates: Vec<usize> = evals
        .iter()
        .enumerate()
        .filter(|(_, e)| pr.section_name.as_deref().is_none_or(|s| s == e.listener.name))
        .filter(|(_, e)| pr.port.is_none_or(|p| p == e.listener.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let what = match (&pr.section_name, pr.port) {
            (Some(s), Some(p)) => format!("no listener {s} on port {p}"),
            (Some(s), None) => format!("no listener {s}"),
            (None, Some(p)) => format!("no listener on port {p}"),
            (None, None) => "no listener".into(),
        };
        return Err(("NoMatchingParent", format!("Gateway {gw_ns}/{gw_name} has {what}")));
    }
    if !*gateway_ok {
        return Err((
            "NotAllowedByListeners",
            format!("Gateway {gw_ns}/{gw_name} is not accepted"),
        ));
    }
    let valid: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| evals[i].refused.is_none() && evals[i].conflict.is_none())
        .collect();
    if valid.is_empty() {
        return Err(("NotAllowedByListeners", "no selected listener is accepted".into()));
    }
    let (route_ns, _) = ns_name(route.meta());
    let allowed: Vec<usize> = valid
        .into_iter()
        .filter(|&i| evals[i].kinds.contains(&route.kind()))
        .filter(|&i| namespace_allowed(labels, evals[i].listener, gw_ns, route_ns))
        .collect();
    if allowed.is_empty() {
        return Err((
            "NotAllowedByListeners",
            format!(
                "no selected listener allows {}s from namespace {route_ns}",
                route.kind()
            ),
        ));
    }
    let attached: Vec<(usize, Vec<String>)> = allowed
        .into_iter()
        .filter_map(|i| intersect(evals[i].listener.hostname.as_deref(), route.hostnames()).map(|h| (i, h)))
        .collect();
    if attached.is_empty() {
        return Err((
            "NoMatchingListenerHostname",
            "no hostname of the route matches a selected listener's hostname".into(),
        ));
    }
    Ok(attached)
}

/// The Secrets (namespace, name) the listeners of `gateways` (of any class) name in their
/// `certificateRefs`.
pub fn secrets_read(gateways: &[Arc<Gateway>]) -> impl Iterator<Item = (&str, &str)> + '_ {
    gateways.iter().flat_map(|g| {
        let (gw_ns, _) = ns_name(&g.metadata);
        g.spec
            .listeners
            .iter()
            .flat_map(|l| l.tls.iter().flat_map(|t| t.certificate_refs.iter()))
            .map(move |r| (r.namespace.as_deref().unwrap_or(gw_ns), r.name.as_str()))
    })
}

/// Whether a listener of `gateways` (of any class) selects route namespaces by label: only
/// then does a Namespace change bear on the table.
pub fn selects_namespaces(gateways: &[Arc<Gateway>]) -> bool {
    gateways.iter().flat_map(|g| &g.spec.listeners).any(|l| {
        l.allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
            .and_then(|n| n.from.as_deref())
            == Some("Selector")
    })
}

/// Namespace name → its labels.
type Labels<'a> = std::collections::HashMap<&'a str, Option<&'a BTreeMap<String, String>>>;

/// Whether a listener's `allowedRoutes.namespaces` lets routes of `route_ns` attach (for
/// `Selector`, by the labels of the Namespace object; an unknown namespace is not selected).
fn namespace_allowed(labels: &Labels<'_>, l: &Listener, gw_ns: &str, route_ns: &str) -> bool {
    let spec = l.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
    match spec.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Same" => route_ns == gw_ns,
        "Selector" => {
            let Some(selector) = spec.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            labels.get(route_ns).is_some_and(|l| selects(selector, *l))
        }
        _ => false,
    }
}

/// Whether a label selector selects an object with `labels` (every `matchLabels` pair and
/// every `matchExpressions` entry must hold; an empty selector selects everything).
fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| get(k) == Some(v));
    let exprs = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            _ => false,
        }
    });
    pairs && exprs
}

/// Whether `name` (exact) is within `pattern` (exact, or `*.suffix`: one or more labels before
/// `.suffix`, as the Gateway API's wildcards).
fn within(name: &str, pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1 && name.ends_with(suffix) && name[..name.len() - suffix.len()].ends_with('.')
        }
        None => name == pattern,
    }
}

/// The hostnames a route serves on a listener: the listener's `hostname` intersected with the
/// route's `hostnames` (lower case, sorted, without duplicates). `Some(empty)`: any host (neither
/// restricts it); `None`: no hostname in common.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let lower = |s: &str| s.to_ascii_lowercase();
    let out: BTreeSet<String> = match listener.map(lower) {
        None => route.iter().map(|h| lower(h)).collect(),
        Some(l) if route.is_empty() => [l].into(),
        Some(l) => route
            .iter()
            .map(|h| lower(h))
            .filter_map(|h| {
                let h_wild = h.starts_with("*.");
                let l_wild = l.starts_with("*.");
                match (h_wild, l_wild) {
                    (false, false) => (h == l).then_some(h),
                    (false, true) => within(&h, &l).then_some(h),
                    (true, false) => within(&l, &h).then(|| l.clone()),
                    // The narrower of two wildcards, when one contains the other.
                    (true, true) => {
                        if h == l || within(&h[2..], &l) {
                            Some(h)
                        } else if within(&l[2..], &h) {
                            Some(l.clone())
                        } else {
                            None
                        }
                    }
                }
            })
            .collect(),
    };
    if out.is_empty() && (listener.is_some() || !route.is_empty()) {
        return None;
    }
    Some(out.into_iter().collect())
}

/// A route's `ResolvedRefs` condition: every backend reference resolved, or the first
/// problem's reason with every problem in the message.
/// Decides one route: its parent entries of kedge's and the listeners that accept it.
fn decide<'a>(
    route: RouteRef<'a>,
    object: RouteObject,
    gateways: &[&'a Gateway],
    evals: &[(bool, Vec<Eval<'a>>)],
    labels: &Labels<'a>,
    refs: &RefIndex<'a>,
) -> Decided {
    let (route_ns, _) = ns_name(route.meta());
    let mut resolved: Option<Cond> = None;
    let mut parents = Vec::new();
    for pr in route.parent_refs() {
        let group = pr.group.as_deref().unwrap_or(GROUP);
        let kind = pr.kind.as_deref().unwrap_or("Gateway");
        if group != GROUP || kind != "Gateway" {
            continue;
        }
        let gw_ns = pr.namespace.as_deref().unwrap_or(route_ns);
        let Some(gi) = gateways
            .iter()
            .position(|g| ns_name(&g.metadata) == (gw_ns, pr.name.as_str()))
        else {
            continue;
        };
        let accepted = accept(labels, &route, pr, gateways[gi], &evals[gi]);
        let resolved = resolved.get_or_insert_with(|| route_refs(refs, &route)).clone();
        let (listeners, accepted) = match accepted {
            Ok(attached) => (
                attached
                    .into_iter()
                    .map(|(li, h)| {
                        let first = !parents
                            .iter()
                            .any(|p: &DecidedParent| p.gateway == gi && p.listeners.iter().any(|l| l.0 == li));
                        (li, Arc::from(h), first)
                    })
                    .collect(),
                Cond::yes("Accepted", "Accepted", "accepted by kedge"),
            ),
            Err((reason, message)) => (Vec::new(), Cond::no("Accepted", reason, message)),
        };
        let mut parent_ref = pr.clone();
        parent_ref.group = Some(GROUP.to_owned());
        parent_ref.kind = Some("Gateway".to_owned());
        parents.push(DecidedParent {
            gateway: gi,
            listeners,
            parent_ref: Arc::new(parent_ref),
            conditions: Arc::new(vec![accepted, resolved]),
        });
    }
    let mut services: Vec<(String, String)> = route
        .backend_refs()
        .into_iter()
        .map(|b| (b.namespace.as_deref().unwrap_or(route_ns).to_owned(), b.name.clone()))
        .collect();
    services.sort_unstable();
    services.dedup();
    Decided {
        object,
        services,
        parents,
    }
}

fn route_refs(refs: &RefIndex<'_>, route: &RouteRef<'_>) -> Cond {
    let (ns, _) = ns_name(route.meta());
    let problems: Vec<RefProblem> = route
        .backend_refs()
        .into_iter()
        .filter_map(|r| resolve_backend(refs, ns, route.kind(), r).err())
        .collect();
    match problems.first() {
        None => Cond::yes("ResolvedRefs", "ResolvedRefs", "every backend reference resolved"),
        Some(first) => {
            let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
            Cond::no("ResolvedRefs", first.reason, messages.join("; "))
        }
    }
}

#[cfg(test)]
mod tests;

//! Ingress backends → table backends: a Service port resolved to pod endpoints (EndpointSlices)
//! or to `NodeIP:nodePort`, once per translation whatever the number of paths pointing at it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::IngressBackend;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{
    ClusterSpec, Objects, UPSTREAM_MODE_ANNOTATION, UpstreamMode, Warning, Warnings, annotation, ns_name, warn,
};
use crate::routes::{Backend, BackendId, TableBuilder};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// How an Ingress names a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

impl fmt::Display for PortRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A resolved (namespace, service, port): the backend, and what the Ingress using it is told.
#[derive(Clone)]
struct Resolved {
    id: BackendId,
    /// What its users are told; boxed, as most Service ports have nothing to tell (the cache
    /// holds one entry per Service port of the cluster).
    told: Option<Box<Told>>,
}

/// What the users of a resolved Service port are told.
#[derive(Clone)]
struct Told {
    problem: Option<String>,
    /// Warnings on other objects found while resolving (the Service's upstream-mode
    /// annotation, Nodes without a usable address): told with every use, so that what each
    /// Ingress is told does not depend on which one used the Service first (an update
    /// translates only some of them).
    side: Vec<Warning>,
}

impl Resolved {
    fn new(id: BackendId, problem: Option<String>, side: Warnings) -> Self {
        let told = (problem.is_some() || !side.is_empty()).then(|| {
            Box::new(Told {
                problem,
                side: side.into_iter().collect(),
            })
        });
        Resolved { id, told }
    }
}

/// Resolves Ingress backends against one cluster's objects, caching each Service port.
pub(super) struct Resolver<'a> {
    spec: &'a ClusterSpec,
    services: HashMap<(&'a str, &'a str), &'a Service>,
    /// EndpointSlices by (namespace, service name).
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    objs: Objects<'a>,
    /// Ready, schedulable nodes with their address, by name; worked out on first NodePort use.
    nodes: Option<Vec<(&'a str, IpAddr)>>,
    /// What is wrong with the Nodes, found with `nodes`.
    node_warnings: Vec<Warning>,
    cache: HashMap<(&'a str, &'a str, PortRef<'a>), Resolved>,
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label); `None`: a
/// slice of no Service, which routes nothing.
pub fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

/// Which EndpointSlices belong to which Service, by name: what the endpoint fast path reads
/// instead of a pass over every EndpointSlice of the cluster. Built from a full set of objects
/// ([`SliceIndex::of`]) and kept up to date slice by slice ([`SliceIndex::set`]).
#[derive(Debug, Default)]
pub struct SliceIndex {
    /// (namespace, Service) → the names of its EndpointSlices.
    by_service: HashMap<(String, String), BTreeSet<String>>,
    /// (namespace, EndpointSlice) → its Service.
    service_of: HashMap<(String, String), String>,
}

impl SliceIndex {
    /// The index of `slices`.
    pub fn of(slices: &[Arc<EndpointSlice>]) -> SliceIndex {
        let mut index = SliceIndex::default();
        for s in slices {
            let (ns, name) = ns_name(&s.metadata);
            index.set(ns, name, slice_service(s));
        }
        index
    }

    /// Records that the EndpointSlice `ns/name` belongs to `service` now (`None`: to no Service,
    /// or it is gone), and returns the Service it belonged to before.
    pub fn set(&mut self, ns: &str, name: &str, service: Option<&str>) -> Option<String> {
        let key = (ns.to_owned(), name.to_owned());
        let before = match service {
            Some(svc) => self.service_of.insert(key, svc.to_owned()),
            None => self.service_of.remove(&key),
        };
        if let Some(old) = &before
            && Some(old.as_str()) != service
        {
            let key = (ns.to_owned(), old.clone());
            if let Some(names) = self.by_service.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_service.remove(&key);
                }
            }
        }
        if let Some(svc) = service {
            self.by_service
                .entry((ns.to_owned(), svc.to_owned()))
                .or_default()
                .insert(name.to_owned());
        }
        before
    }

    /// The names of the EndpointSlices of Service `ns/service`.
    pub fn slices(&self, ns: &str, service: &str) -> impl Iterator<Item = &str> {
        self.by_service
            .get(&(ns.to_owned(), service.to_owned()))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

/// The endpoints of every port of the Services `services` (namespace, name), under the backend
/// names [`translate`](super::translate) gives them, resolved exactly as a full translation
/// would. For refreshing a table after a change that touched only EndpointSlices; warnings are
/// left to the next full translation.
pub fn service_endpoints<'a>(
    spec: &'a ClusterSpec,
    objs: &Objects<'a>,
    services: &'a [(String, String)],
) -> Vec<(String, Vec<SocketAddr>)> {
    let mut r = Resolver::only(spec, objs, services);
    let mut ignored = Warnings::new();
    let mut out = Vec::new();
    for (ns, name) in services {
        let Some(&svc) = r.services.get(&(ns.as_str(), name.as_str())) else {
            continue;
        };
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
        for sp in ports {
            let endpoints = match r.mode(svc, &mut ignored) {
                UpstreamMode::Pods => r.pod_endpoints(ns, name, sp),
                UpstreamMode::NodePorts => match sp.node_port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) {
                    Some(node_port) => r.node_endpoints(ns, name, svc, sp, node_port, &mut ignored),
                    None => Vec::new(),
                },
            };
            out.push((format!("{}/{ns}/{name}:{}", spec.name, sp.port), endpoints));
        }
    }
    out
}

impl<'a> Resolver<'a> {
    /// A resolver that knows only the Services `only` and their EndpointSlices: indexing
    /// every Service and EndpointSlice of a large cluster costs more than resolving the few an
    /// EndpointSlice change touched.
    pub(super) fn only(spec: &'a ClusterSpec, objs: &Objects<'a>, only: &'a [(String, String)]) -> Self {
        let wanted: HashSet<(&str, &str)> = only.iter().map(|(ns, name)| (ns.as_str(), name.as_str())).collect();
        let services = objs
            .services
            .iter()
            .map(|s| (ns_name(&s.metadata), &**s))
            .filter(|(key, _)| wanted.contains(key))
            .collect();
        let mut slices: HashMap<_, Vec<_>> = HashMap::default();
        for s in objs.slices {
            let Some(svc) = slice_service(s) else {
                continue;
            };
            let key = (s.metadata.namespace.as_deref().unwrap_or(""), svc);
            if wanted.contains(&key) {
                slices.entry(key).or_default().push(&**s);
            }
        }
        Resolver {
            spec,
            services,
            slices,
            objs: *objs,
            nodes: None,
            node_warnings: Vec::new(),
            cache: HashMap::default(),
        }
    }

    pub(super) fn new(spec: &'a ClusterSpec, objs: &Objects<'a>) -> Self {
        let services = objs.services.iter().map(|s| (ns_name(&s.metadata), &**s)).collect();
        let mut slices: HashMap<_, Vec<_>> = HashMap::default();
        slices.reserve(objs.slices.len());
        for s in objs.slices {
            let Some(svc) = slice_service(s) else {
                continue;
            };
            let ns = s.metadata.namespace.as_deref().unwrap_or("");
            slices.entry((ns, svc)).or_default().push(&**s);
        }
        Resolver {
            spec,
            services,
            slices,
            objs: *objs,
            nodes: None,
            node_warnings: Vec::new(),
            cache: HashMap::default(),
        }
    }

    /// The backend for `be` (in namespace `ns`), added to `b` on first use. `None` when the
    /// path cannot be routed at all (no Service named); problems are reported on `owner`.
    pub(super) fn backend(
        &mut self,
        b: &mut TableBuilder,
        ns: &'a str,
        be: &'a IngressBackend,
        owner: &str,
        w: &mut Warnings,
    ) -> Option<BackendId> {
        let Some(svc) = &be.service else {
            let what = if be.resource.is_some() {
                "backend.resource is not supported"
            } else {
                "backend names no service"
            };
            warn(w, owner, format!("{what}; path ignored"));
            return None;
        };
        // The API requires exactly one of number and name.
        let port = match svc.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
            Some((Some(n), _)) => PortRef::Number(n),
            Some((None, Some(n))) if !n.is_empty() => PortRef::Name(n),
            _ => {
                let msg = format!("backend service {:?} names no port; path ignored", svc.name);
                warn(w, owner, msg);
                return None;
            }
        };
        Some(self.cached(b, (ns, svc.name.as_str(), port), owner, w))
    }

    /// The backend for port number `port` of Service `ns`/`name` (a Gateway API backendRef),
    /// added to `b` on first use under the name Ingress backends of that port get.
    pub(super) fn service_port(
        &mut self,
        b: &mut TableBuilder,
        ns: &'a str,
        name: &'a str,
        port: i32,
        owner: &str,
        w: &mut Warnings,
    ) -> BackendId {
        self.cached(b, (ns, name, PortRef::Number(port)), owner, w)
    }

    /// The backend of a Service port, resolved once per build (Ingress and Gateway routes
    /// share it); its problem, if any, is reported on every `owner` using it.
    fn cached(
        &mut self,
        b: &mut TableBuilder,
        key: (&'a str, &'a str, PortRef<'a>),
        owner: &str,
        w: &mut Warnings,
    ) -> BackendId {
        let resolved = match self.cache.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = self.resolve(b, key);
                self.cache.insert(key, r.clone());
                r
            }
        };
        if let Some(told) = resolved.told {
            if let Some(p) = told.problem {
                warn(w, owner, p);
            }
            w.extend(told.side);
        }
        resolved.id
    }

    fn resolve(&mut self, b: &mut TableBuilder, (ns, name, port): (&'a str, &'a str, PortRef<'a>)) -> Resolved {
        let cluster: &'a str = &self.spec.name;
        let mut side = Warnings::new();
        let mut empty = |problem: String| {
            let id = b.backend(Backend {
                name: format!("{cluster}/{ns}/{name}:{port}").into(),
                endpoints: Vec::new(),
                tls: None,
                h2: false,
            });
            Resolved::new(id, Some(format!("{problem}; answering 503")), Warnings::new())
        };
        let Some(&svc) = self.services.get(&(ns, name)) else {
            return empty(format!("Service {ns}/{name} not found"));
        };
        let spec = svc.spec.as_ref();
        let svc_type = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
        if svc_type == "ExternalName" {
            return empty(format!(
                "Service {ns}/{name} is of type ExternalName, which kedge does not route to"
            ));
        }
        let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let found = ports.iter().find(|sp| match port {
            PortRef::Number(n) => sp.port == n,
            PortRef::Name(n) => sp.name.as_deref() == Some(n),
        });
        let Some(sp) = found else {
            return empty(format!("Service {ns}/{name} has no port {port}"));
        };
        let (endpoints, problem) = match self.mode(svc, &mut side) {
            UpstreamMode::Pods => (self.pod_endpoints(ns, name, sp), None),
            UpstreamMode::NodePorts => match sp.node_port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0) {
                Some(node_port) => (self.node_endpoints(ns, name, svc, sp, node_port, &mut side), None),
                None => (
                    Vec::new(),
                    Some(format!(
                        "Service {ns}/{name} port {port} has no nodePort (type {svc_type}), which nodeports mode \
                         needs; answering 503"
                    )),
                ),
            },
        };
        let name = format!("{cluster}/{ns}/{name}:{}", sp.port);
        let id = b.backend(Backend {
            name: name.into(),
            endpoints,
            tls: None,
            h2: false,
        });
        Resolved::new(id, problem, side)
    }

    /// The Service's upstream mode: its annotation, else the cluster's.
    fn mode(&self, svc: &Service, w: &mut Warnings) -> UpstreamMode {
        match annotation(&svc.metadata, UPSTREAM_MODE_ANNOTATION) {
            None => self.spec.upstream,
            Some("pods") => UpstreamMode::Pods,
            Some("nodeports") => UpstreamMode::NodePorts,
            Some(other) => {
                let (ns, name) = ns_name(&svc.metadata);
                warn(
                    w,
                    &format!("Service {ns}/{name}"),
                    format!(
                        "{UPSTREAM_MODE_ANNOTATION}: {other:?} is neither \"pods\" nor \"nodeports\"; using the \
                         cluster's mode ({:?})",
                        self.spec.upstream
                    ),
                );
                self.spec.upstream
            }
        }
    }

    /// The endpoints traffic may go to, with their port: the ready ones of all the Service's
    /// EndpointSlices; if none is ready, the ones still serving while terminating (so a
    /// Service whose pods are all being replaced keeps answering until the new ones are ready).
    fn chosen_endpoints(&self, ns: &str, svc: &str, sp: &ServicePort) -> Vec<(&'a Endpoint, u16)> {
        // Slice ports carry the Service port's name (not its number: they hold the target port).
        let want = sp.name.as_deref().unwrap_or("");
        let (mut ready, mut fallback) = (Vec::new(), Vec::new());
        for slice in self.slices.get(&(ns, svc)).into_iter().flatten() {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue; // FQDN endpoints name no address to connect to.
            }
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == want)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0);
            let Some(port) = port else { continue };
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                if c.and_then(|c| c.ready).unwrap_or(true) {
                    ready.push((ep, port));
                } else if c.and_then(|c| c.serving).unwrap_or(true) && c.and_then(|c| c.terminating).unwrap_or(false) {
                    fallback.push((ep, port));
                }
            }
        }
        if ready.is_empty() { fallback } else { ready }
    }

    fn pod_endpoints(&self, ns: &str, svc: &str, sp: &ServicePort) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .chosen_endpoints(ns, svc, sp)
            .into_iter()
            .flat_map(|(ep, port)| {
                ep.addresses
                    .iter()
                    .filter_map(move |a| a.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port)))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `NodeIP:nodePort` of the usable nodes; with `externalTrafficPolicy: Local`, only of those
    /// hosting an endpoint of the Service (kube-proxy drops traffic on the other nodes).
    fn node_endpoints(
        &mut self,
        ns: &str,
        svc_name: &str,
        svc: &Service,
        sp: &ServicePort,
        node_port: u16,
        w: &mut Warnings,
    ) -> Vec<SocketAddr> {
        let local = svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
        let hosting: Option<HashSet<&str>> = local.then(|| {
            self.chosen_endpoints(ns, svc_name, sp)
                .into_iter()
                .filter_map(|(ep, _)| ep.node_name.as_deref())
                .collect()
        });
        self.nodes();
        w.extend(self.node_warnings.iter().cloned());
        let nodes = self.nodes.as_deref().unwrap_or_default();
        let mut out: Vec<SocketAddr> = nodes
            .iter()
            .filter(|(n, _)| hosting.as_ref().is_none_or(|h| h.contains(n)))
            .map(|&(_, ip)| SocketAddr::new(ip, node_port))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Nodes that take NodePort traffic ([`usable_nodes`]), worked out once.
    fn nodes(&mut self) {
        if self.nodes.is_some() {
            return;
        }
        let (nodes, w) = usable_nodes(self.spec, self.objs.nodes);
        self.nodes = Some(nodes);
        self.node_warnings = w.into_iter().collect();
    }
}

/// Nodes that take NodePort traffic: Ready condition `True`, not cordoned, with an address of
/// the configured type, sorted by name; a Ready node without that address is reported.
fn usable_nodes<'a>(spec: &ClusterSpec, nodes: &'a [Arc<Node>]) -> (Vec<(&'a str, IpAddr)>, Warnings) {
    let addr_type = spec.node_address_type.as_str();
    let mut w = Warnings::new();
    let mut out = Vec::new();
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        if !ready || cordoned {
            continue;
        }
        let addr = status
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == addr_type));
        match addr.map(|a| (a, a.address.parse::<IpAddr>())) {
            Some((_, Ok(ip))) => out.push((name, ip)),
            Some((a, Err(_))) => warn(
                &mut w,
                &format!("Node {name}"),
                format!(
                    "{addr_type} address {:?} is not an IP address; node not used for nodeports",
                    a.address
                ),
            ),
            None => warn(
                &mut w,
                &format!("Node {name}"),
                format!("no {addr_type} address; node not used for nodeports"),
            ),
        }
    }
    out.sort_unstable();
    (out, w)
}

/// All that the table and its warnings take from a cluster's Nodes: the nodes that take NodePort
/// traffic with their addresses, and what is wrong with the others. A Node change that leaves
/// it equal (a heartbeat, a label, a condition other than Ready) changes nothing kedge serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUse {
    nodes: Vec<(String, IpAddr)>,
    warnings: Warnings,
}

impl NodeUse {
    pub fn of(spec: &ClusterSpec, nodes: &[Arc<Node>]) -> NodeUse {
        let (used, warnings) = usable_nodes(spec, nodes);
        NodeUse {
            nodes: used.into_iter().map(|(n, ip)| (n.to_owned(), ip)).collect(),
            warnings,
        }
    }
}

/// The Services (namespace, name) of `services` whose traffic goes to their nodes' NodePorts:
/// those whose endpoints a change of [`NodeUse`] changes.
pub fn node_port_services<'s>(
    spec: &'s ClusterSpec,
    services: &'s [Arc<Service>],
) -> impl Iterator<Item = (String, String)> + 's {
    services.iter().filter(|s| uses_node_ports(spec, s)).map(|s| {
        let (ns, name) = ns_name(&s.metadata);
        (ns.to_owned(), name.to_owned())
    })
}

/// Whether a Service's traffic goes to its nodes' NodePorts (the cluster's mode, unless the
/// Service's [`UPSTREAM_MODE_ANNOTATION`] says otherwise; an unknown value is the cluster's
/// mode, as in translation).
pub fn uses_node_ports(spec: &ClusterSpec, svc: &Service) -> bool {
    let mode = match annotation(&svc.metadata, UPSTREAM_MODE_ANNOTATION) {
        Some("pods") => UpstreamMode::Pods,
        Some("nodeports") => UpstreamMode::NodePorts,
        _ => spec.upstream,
    };
    mode == UpstreamMode::NodePorts
}

#[cfg(test)]
mod tests;

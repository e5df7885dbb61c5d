//! The translators: pure functions from one source's objects to rules and backends in a
//! [`TableBuilder`](crate::routes::TableBuilder), with what was wrong with which object as
//! [`Warning`]s. No I/O, no clock, no runtime: the control thread calls them on copies of its
//! reflector stores (or a cluster's persisted objects), the tests on objects written as JSON.
//!
//! - [`static_routes`]: the TOML file's `[[route]]`s (added first: they win conflicts);
//! - `ingress.rs`: a cluster's Ingresses (class, hosts, paths, TLS, canaries), with
//!   `annotations.rs` (ingress-nginx annotations into a rule's policy) and `backends.rs`
//!   (a Service port into endpoints: pod addresses or NodePorts), which other translators of
//!   Kubernetes objects can share.
//!
//! With `status.rs` (a served Ingress's status), these are the only modules that read the
//! contents of `k8s_openapi` types; the table knows nothing of them.

use std::collections::BTreeSet;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};

mod annotations;
mod backends;
pub mod gateway;
pub mod httproute;
mod ingress;
pub mod static_routes;

pub use backends::{NodeUse, SliceIndex, node_port_services, service_endpoints, slice_service, uses_node_ports};
pub use ingress::{Incremental, NeedFull, Plan as IngressPlan, secrets_read, translate};

/// How one cluster's Ingresses become routes.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name from the config; prefixes backend names: `{cluster}/{ns}/{svc}:{port}`.
    pub name: String,
    /// Class name (e.g. `kedge`) the legacy `kubernetes.io/ingress.class` annotation must carry.
    pub ingress_class: String,
    /// `IngressClass.spec.controller` that marks a class as kedge's
    /// (default `kedge.dev/ingress-controller`).
    pub controller: String,
    /// Where traffic goes unless a Service says otherwise ([`UPSTREAM_MODE_ANNOTATION`]).
    pub upstream: UpstreamMode,
    /// Node address type used in NodePort mode (`InternalIP` by default).
    pub node_address_type: String,
}

/// Where a Service's traffic goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Straight to the pod IPs of the Service's EndpointSlices.
    Pods,
    /// To `NodeIP:nodePort` of the cluster's Ready, schedulable nodes.
    NodePorts,
}

/// Per-Service override of the cluster's upstream mode: `kedge.dev/upstream-mode: pods|nodeports`.
pub const UPSTREAM_MODE_ANNOTATION: &str = "kedge.dev/upstream-mode";

/// The reflected objects of one cluster, as translation reads them: a view of its live stores
/// or of its persisted state. The control plane builds it from its kinds table
/// (`control/kinds.rs`), which must name the same fields.
#[derive(Clone, Copy, Default)]
pub struct Objects<'a> {
    pub ingresses: &'a [Arc<Ingress>],
    pub classes: &'a [Arc<IngressClass>],
    pub services: &'a [Arc<Service>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub nodes: &'a [Arc<Node>],
    /// Secrets of type `kubernetes.io/tls` and `Opaque` (only the former while a cluster serves
    /// its persisted state).
    pub secrets: &'a [Arc<Secret>],
    /// Every Namespace (labels for Gateway listeners' `allowedRoutes` selectors).
    pub namespaces: &'a [Arc<Namespace>],
    /// The Gateway API kinds: empty while their CRDs are not installed (see `gateway.rs`).
    pub gateway_classes: &'a [Arc<GatewayClass>],
    pub gateways: &'a [Arc<Gateway>],
    pub http_routes: &'a [Arc<HttpRoute>],
    pub grpc_routes: &'a [Arc<GrpcRoute>],
    pub reference_grants: &'a [Arc<ReferenceGrant>],
}

/// Something wrong with one object; the rest is still served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// The object at fault, as `Kind namespace/name` (`Node name` for nodes).
    pub object: String,
    pub message: String,
}

/// What a translation did besides feeding the builder.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Sorted and without duplicates, so the caller can log only what changed.
    pub warnings: Vec<Warning>,
    /// Ingresses of our class that got at least one rule or default backend into the table
    /// (they get status addresses); (namespace, name), sorted. Shared: an update that serves
    /// the same Ingresses hands on the previous build's list.
    pub served: Arc<[(String, String)]>,
    /// Certificates named by the Ingresses' `tls` sections, oldest Ingress first.
    pub tls: Vec<TlsBinding>,
}

/// A host whose certificate is in a Secret (an Ingress's `tls` section, a Gateway listener's
/// `certificateRefs`).
#[derive(Debug, Clone)]
pub struct TlsBinding {
    /// Lower-case DNS name or `*.suffix`; empty: every DNS name the certificate itself carries
    /// (a Gateway listener without hostname).
    pub host: String,
    /// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key` (not yet parsed).
    pub secret: Arc<Secret>,
    /// `Ingress namespace/name`, `Gateway namespace/name listener`.
    pub owner: String,
    /// A Gateway listener's: the local addresses (empty: any) and port of its scope, the only
    /// connections it is served on. `None` (an Ingress's): every TLS connection.
    pub scope: Option<(Vec<std::net::IpAddr>, u16)>,
}

/// Warnings collected during one translation: a set, so they come out sorted and deduplicated.
type Warnings = BTreeSet<Warning>;

fn warn(w: &mut Warnings, object: &str, message: String) {
    w.insert(Warning {
        object: object.to_owned(),
        message,
    });
}

/// Sort key for "oldest first": creation time (absent = youngest), then namespace/name.
fn age(m: &ObjectMeta) -> (bool, Option<&Time>, &str, &str) {
    let (ns, name) = ns_name(m);
    (m.creation_timestamp.is_none(), m.creation_timestamp.as_ref(), ns, name)
}

/// Namespace and name; absent ones are empty (the API server always sets them).
fn ns_name(m: &ObjectMeta) -> (&str, &str) {
    (m.namespace.as_deref().unwrap_or(""), m.name.as_deref().unwrap_or(""))
}

fn annotation<'m>(m: &'m ObjectMeta, key: &str) -> Option<&'m str> {
    m.annotations.as_ref()?.get(key).map(String::as_str)
}

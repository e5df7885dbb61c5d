//! Gateway API attachment: which HTTPRoutes and GRPCRoutes attach to which listeners of kedge's
//! Gateways, on which local addresses and ports, for which hostnames; and the ReferenceGrant
//! check every cross-namespace reference goes through.
//!
//! The split: this module decides *where* a route is served (parentRefs, allowedRoutes,
//! hostname intersection, the Gateway's addresses and kedge's listeners) and what the Gateway,
//! listener and parent conditions are; `httproute.rs` turns each [`Attached`] route's rules into
//! table entries (matches, filters, weighted backends) and reports its backend references.

use std::net::IpAddr;

use super::super::gateway_types::{GrpcRoute, HttpRoute, Listener, ReferenceGrant};

/// Where one Gateway listener takes connections on this host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bind {
    /// The local addresses (of a kedge listener on `port`) whose connections this Gateway
    /// serves: its `spec.addresses` of type IPAddress that kedge listens on, or, for a Gateway
    /// without addresses, the cluster's `publish_addresses` that are IP addresses. Empty: every
    /// local address of kedge's listener on `port` (a Gateway without addresses, in a cluster
    /// without IP publish addresses).
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

/// One route accepted by one Gateway listener.
#[derive(Debug, Clone)]
pub struct Attached<'a> {
    pub bind: Bind,
    /// The Gateway's `namespace/name`.
    pub gateway: String,
    pub listener: &'a Listener,
    pub route: RouteRef<'a>,
    /// The hostnames this route is served for on this listener: the intersection of the
    /// route's `hostnames` with the listener's `hostname` (lower case; exact names or
    /// `*.suffix`). Empty: any host (neither restricts it).
    pub hostnames: Vec<String>,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
}

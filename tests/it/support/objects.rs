//! Kubernetes objects for the fixture API server, as JSON, the way a test reads best: an
//! IngressClass, a Service with one `http` port, EndpointSlices, Ingresses, all in `default`;
//! Gateway API objects in the namespaces a test names.

use serde_json::{Value, json};

use super::FakeApi;

/// A fixture API server holding the usual small cluster: IngressClass `kedge`, Service `web`
/// with two ready pods on `port` (127.0.0.1 and 127.0.0.2), and Ingress `web` for
/// `web.example.com` to it.
pub fn api_with_web(port: u16) -> FakeApi {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", port, &["127.0.0.1", "127.0.0.2"]));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    api
}

/// IngressClass `kedge` with kedge's controller.
pub fn ingress_class() -> Value {
    class("kedge", "kedge.dev/ingress-controller")
}

/// An IngressClass `name` of `controller`.
pub fn class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
           "metadata": {"name": name}, "spec": {"controller": controller}})
}

/// Service `name` with port 80 named `http` (target 8080).
pub fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// An EndpointSlice of Service `svc` with ready endpoints `ips` on `port`.
pub fn slice(svc: &str, port: u16, ips: &[&str]) -> Value {
    slice_of(
        svc,
        port,
        ips.iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect(),
    )
}

/// An EndpointSlice of Service `svc` on `port` with the given endpoints (see [`endpoint`]).
pub fn slice_of(svc: &str, port: u16, endpoints: Vec<Value>) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-abc"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints})
}

/// An EndpointSlice endpoint with explicit conditions, on node `node` if given.
pub fn endpoint(ip: &str, ready: bool, serving: bool, terminating: bool, node: Option<&str>) -> Value {
    let mut ep = json!({"addresses": [ip],
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating}});
    if let Some(n) = node {
        ep["nodeName"] = json!(n);
    }
    ep
}

/// Ingress `name` of class `class`: `host` + Prefix `path` to Service `svc` port `http`.
pub fn ingress(name: &str, class: &str, host: &str, path: &str, svc: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"ingressClassName": class, "rules": [{"host": host, "http": {"paths": [
               {"path": path, "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"name": "http"}}}}]}}]}})
}

/// GatewayClass `name` of `controller`.
pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
           "metadata": {"name": name}, "spec": {"controllerName": controller}})
}

/// Gateway `ns/name` of class `class` with `listeners` (a JSON array).
pub fn gateway(ns: &str, name: &str, class: &str, listeners: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"gatewayClassName": class, "listeners": listeners}})
}

/// HTTPRoute `ns/name` with `parent_refs` and `hostnames`, one rule to each of `backends`
/// (`[{"name": ..., "port": ...}]`).
pub fn http_route(ns: &str, name: &str, parent_refs: Value, hostnames: Value, backends: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"parentRefs": parent_refs, "hostnames": hostnames,
                    "rules": [{"backendRefs": backends}]}})
}

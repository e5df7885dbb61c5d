//! The upstream example manifests (tests/fixtures/gateway-api) read into kedge's types.

use std::path::Path;

use serde_json::Value;

use super::*;

/// Every object of every fixture file, as (file, object).
fn fixtures() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gateway-api");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read fixture");
        let docs: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        out.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    out
}

fn read<T: serde::de::DeserializeOwned>(file: &str, v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}\n{v:#}"))
}

/// The one object named `name` in `file`.
fn one<T: serde::de::DeserializeOwned>(file: &str, name: &str) -> T {
    let all = fixtures();
    let (_, v) = all
        .iter()
        .find(|(f, v)| f == file && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {file}"));
    read(file, v)
}

/// Every object deserializes into the type of its kind, and writing it back out loses nothing
/// kedge reads (reading that again gives the same value).
#[test]
fn every_upstream_example_deserializes() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (file, v) in fixtures() {
        let kind = v["kind"].as_str().expect("kind").to_owned();
        fn round_trip<T>(file: &str, v: &Value)
        where
            T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
        {
            let t: T = read(file, v);
            let again: T = read(file, &serde_json::to_value(&t).expect("serialize"));
            assert_eq!(t, again, "{file}");
        }
        match kind.as_str() {
            "GatewayClass" => round_trip::<GatewayClass>(&file, &v),
            "Gateway" => round_trip::<Gateway>(&file, &v),
            "HTTPRoute" => round_trip::<HttpRoute>(&file, &v),
            "GRPCRoute" => round_trip::<GrpcRoute>(&file, &v),
            "ReferenceGrant" => round_trip::<ReferenceGrant>(&file, &v),
            other => panic!("{file}: a {other} in the Gateway API fixtures"),
        }
        *kinds.entry(kind).or_default() += 1;
    }
    let seen: Vec<&str> = kinds.keys().map(String::as_str).collect();
    assert_eq!(
        seen,
        ["GRPCRoute", "Gateway", "GatewayClass", "HTTPRoute", "ReferenceGrant"]
    );
}

#[test]
fn gateway_class_and_gateway_fields() {
    let class: GatewayClass = one("basic-http.json", "example");
    assert_eq!(class.spec.controller_name, "acme.io/gateway-controller");

    let gw: Gateway = one("tls-cert-cross-namespace.json", "cross-namespace-tls-gateway");
    assert_eq!(gw.spec.gateway_class_name, "example");
    let l = &gw.spec.listeners[0];
    assert_eq!((l.name.as_str(), l.port, l.protocol.as_str()), ("https", 443, "HTTPS"));
    assert_eq!(l.hostname.as_deref(), Some("*.example.com"));
    let cert = &l.tls.as_ref().expect("tls").certificate_refs[0];
    assert_eq!(cert.name, "wildcard-example-com-cert");
    assert_eq!(cert.namespace.as_deref(), Some("gateway-api-example-ns2"));
    assert_eq!(cert.kind.as_deref(), Some("Secret"));

    let gw: Gateway = one("gateway-addresses.json", "gateway-addresses");
    assert_eq!(gw.spec.addresses.len(), 11);
    assert_eq!(gw.spec.addresses[0].type_, None);
    let last = gw.spec.addresses.last().expect("addresses");
    assert_eq!(
        (last.type_.as_deref(), last.value.as_str()),
        (Some("Hostname"), "example.com")
    );
    let from = gw.spec.listeners[0]
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    assert_eq!(from.and_then(|n| n.from.as_deref()), Some("Same"));

    let gw: Gateway = one("gateway-namespaces.json", "prod-gateway");
    let allowed = gw.spec.listeners[0].allowed_routes.as_ref().expect("allowedRoutes");
    assert_eq!(allowed.kinds[0].kind, "HTTPRoute");
    let ns = allowed.namespaces.as_ref().expect("namespaces");
    assert_eq!(ns.from.as_deref(), Some("Selector"));
    let labels = ns
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .expect("matchLabels");
    assert_eq!(labels.get("expose-apps").map(String::as_str), Some("true"));
}

#[test]
fn http_route_matches_and_backends() {
    let r: HttpRoute = one("basic-http.json", "http-app-1");
    assert_eq!(r.spec.parent_refs[0].name, "my-gateway");
    assert_eq!(r.spec.hostnames, ["foo.com"]);
    let m = &r.spec.rules[1].matches[0];
    let path = m.path.as_ref().expect("path");
    assert_eq!(
        (path.type_.as_deref(), path.value.as_deref()),
        (Some("PathPrefix"), Some("/some/thing"))
    );
    assert_eq!(
        (m.headers[0].name.as_str(), m.headers[0].value.as_str()),
        ("magic", "foo")
    );
    assert_eq!(m.query_params[0].name, "great");
    assert_eq!(m.method.as_deref(), Some("GET"));
    assert_eq!(r.spec.rules[1].backend_refs[0].port, Some(8080));

    let r: HttpRoute = one("traffic-split-2.json", "foo-route");
    let weights: Vec<_> = r.spec.rules[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, [("foo-v1", Some(90)), ("foo-v2", Some(10))]);

    let r: HttpRoute = one("timeout-example.json", "timeout-example");
    let t = r.spec.rules[0].timeouts.as_ref().expect("timeouts");
    assert_eq!(
        (t.request.as_deref(), t.backend_request.as_deref()),
        (Some("10s"), Some("2s"))
    );
}

#[test]
fn http_route_filters() {
    let r: HttpRoute = one("httproute-redirect-full.json", "http-filter-redirect");
    let f = &r.spec.rules[0].filters[0];
    assert_eq!(f.type_, "RequestRedirect");
    let redirect = f.request_redirect.as_ref().expect("requestRedirect");
    assert_eq!(redirect.status_code, Some(302));
    let path = redirect.path.as_ref().expect("path");
    assert_eq!(
        (path.type_.as_str(), path.replace_full_path.as_deref()),
        ("ReplaceFullPath", Some("/paprika"))
    );

    let r: HttpRoute = one("conformance-httproute-rewrite-path.json", "rewrite-path");
    let rewrite = r.spec.rules[0].filters[0].url_rewrite.as_ref().expect("urlRewrite");
    let path = rewrite.path.as_ref().expect("path");
    assert_eq!(
        (path.type_.as_str(), path.replace_prefix_match.as_deref()),
        ("ReplacePrefixMatch", Some("/one"))
    );
    let headers = r.spec.rules[3].filters[1]
        .request_header_modifier
        .as_ref()
        .expect("modifier");
    assert_eq!(headers.set[0].name, "X-Header-Set");
    assert_eq!(headers.add.len(), 2);
    assert_eq!(headers.remove, ["X-Header-Remove"]);

    let r: HttpRoute = one("httproute-rewrite.json", "http-filter-rewrite");
    let rewrite = r.spec.rules[0].filters[0].url_rewrite.as_ref().expect("urlRewrite");
    assert_eq!(rewrite.hostname.as_deref(), Some("elsewhere.example"));

    let r: HttpRoute = one(
        "conformance-httproute-response-header-modifier.json",
        "request-header-modifier",
    );
    let multiple = r.spec.rules[3].filters[0]
        .response_header_modifier
        .as_ref()
        .expect("modifier");
    assert_eq!(
        (multiple.set.len(), multiple.add.len(), multiple.remove.len()),
        (2, 3, 2)
    );

    let r: HttpRoute = one("httproute-mirroring.json", "http-filter-mirror");
    let mirror = r.spec.rules[0].filters[0]
        .request_mirror
        .as_ref()
        .expect("requestMirror");
    assert_eq!(
        (mirror.backend_ref.name.as_str(), mirror.backend_ref.port),
        ("foo-v2", Some(8080))
    );

    let r: HttpRoute = one("httproute-all-fields-set.json", "cors-allow-credentials");
    let f = &r.spec.rules[0].filters[0];
    assert_eq!(f.type_, "CORS");
    assert_eq!(f.cors.as_ref().expect("cors")["maxAge"], 3600);
}

#[test]
fn grpc_route_and_reference_grant_fields() {
    let r: GrpcRoute = one("basic-grpc.json", "grpc-app-1");
    let m = &r.spec.rules[1].matches[0];
    let method = m.method.as_ref().expect("method");
    assert_eq!(
        (method.service.as_deref(), method.method.as_deref()),
        (Some("com.example.Things"), Some("DoThing"))
    );
    assert_eq!(m.headers[0].type_.as_deref(), Some("Exact"));
    assert_eq!(r.spec.rules[1].backend_refs[0].port, Some(50051));

    let r: GrpcRoute = one("grpc-filter.json", "grpc-filter-1");
    let f = &r.spec.rules[0].filters[0];
    assert_eq!(
        f.request_header_modifier.as_ref().expect("modifier").add[0].name,
        "my-header"
    );

    let g: ReferenceGrant = one("tls-cert-cross-namespace.json", "allow-ns1-gateways-to-ref-secrets");
    let from = &g.spec.from[0];
    assert_eq!(
        (from.group.as_str(), from.kind.as_str(), from.namespace.as_str()),
        (GROUP, "Gateway", "gateway-api-example-ns1")
    );
    assert_eq!(
        (g.spec.to[0].group.as_str(), g.spec.to[0].kind.as_str()),
        ("", "Secret")
    );
}

/// Fields the CRDs add later are ignored, not refused.
#[test]
fn unknown_fields_are_ignored() {
    let v = serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"someFutureField": {"x": 1}, "rules": [{"backendRefs": [{"name": "a", "port": 80,
            "futureKnob": true}], "sessionPersistence": {"type": "Cookie"}}]},
        "status": {"parents": []}});
    let r: HttpRoute = read("inline", &v);
    assert_eq!(r.spec.rules[0].backend_refs[0].name, "a");
}

#[test]
fn resource_identity() {
    use kube::Resource;
    assert_eq!(HttpRoute::api_version(&()), "gateway.networking.k8s.io/v1");
    assert_eq!(ReferenceGrant::api_version(&()), "gateway.networking.k8s.io/v1beta1");
    assert_eq!(GatewayClass::plural(&()), "gatewayclasses");
    assert_eq!(GrpcRoute::kind(&()), "GRPCRoute");
    assert_eq!(
        Gateway::url_path(&(), Some("web")),
        "/apis/gateway.networking.k8s.io/v1/namespaces/web/gateways"
    );
}

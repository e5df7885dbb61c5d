use k8s_openapi::api::core::v1::{Namespace, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::WatchEvent;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::control::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ReferenceGrant};

/// Metadata as the API server sends it: managedFields, kubectl's copy of the object, an
/// escaped key (not borrowable from the input) and every other field.
fn metadata() -> Value {
    json!({
        "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Ingress\"}\n",
            "nginx.ingress.kubernetes.io/rewrite-target": "/",
        },
        "creationTimestamp": "2026-12-06T10:00:00Z",
        "finalizers": ["example.com/keep"],
        "generation": 3,
        "labels": {"app": "web", "kubernetes.io/service-name": "web"},
        "managedFields": [{
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:rules": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}},
            "manager": "kubectl-client-side-apply",
            "operation": "Update",
            "time": "2026-12-06T10:00:00Z",
        }],
        "name": "web",
        "namespace": "shop",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-0"}],
        "resourceVersion": "42",
        "uid": "u-1",
    })
}

/// A kind's name, [`same`] for it, and an object of it.
type Kind = (&'static str, fn(&str), Value);

fn kind<K>(name: &'static str, object: Value) -> Kind
where
    K: DeserializeOwned + Resource + PartialEq + fmt::Debug,
{
    (name, same::<K>, object)
}

/// One object of each kind kedge watches, each with a part of its own besides metadata.
fn objects() -> Vec<Kind> {
    vec![
        kind::<Ingress>(
            "Ingress",
            json!({"spec": {"ingressClassName": "kedge", "rules": [{"host": "www.example.com"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}}),
        ),
        kind::<IngressClass>("IngressClass", json!({"spec": {"controller": "example.com/kedge"}})),
        kind::<Service>(
            "Service",
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}], "type": "ClusterIP"}}),
        ),
        kind::<EndpointSlice>(
            "EndpointSlice",
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["198.51.100.7"],
            "conditions": {"ready": true}}], "ports": [{"port": 8080}]}),
        ),
        kind::<Secret>(
            "Secret",
            json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        ),
        kind::<Node>(
            "Node",
            json!({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
        ),
        kind::<Namespace>("Namespace", json!({"status": {"phase": "Active"}})),
        kind::<HttpRoute>("HTTPRoute", json!({"spec": {"hostnames": ["www.example.com"]}})),
        kind::<GrpcRoute>("GRPCRoute", json!({"spec": {"hostnames": ["grpc.example.com"]}})),
        kind::<Gateway>(
            "Gateway",
            json!({"spec": {"gatewayClassName": "kedge",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
        ),
        kind::<GatewayClass>("GatewayClass", json!({"spec": {"controllerName": "example.com/kedge"}})),
        kind::<ReferenceGrant>(
            "ReferenceGrant",
            json!({"spec": {"from": [{"group": "gateway.networking.k8s.io",
            "kind": "HTTPRoute", "namespace": "web"}], "to": [{"group": "", "kind": "Service"}]}}),
        ),
    ]
}

/// `text` decoded as a watch decodes it, through `Lean`, and plainly then stripped of what
/// `Lean` skips: the two must be equal.
fn same<K>(text: &str)
where
    K: DeserializeOwned + Resource + PartialEq + fmt::Debug,
{
    let lean: Lean<K> = serde_json::from_str(text).expect("lean");
    let mut plain: K = serde_json::from_str(text).expect("plain");
    let meta = plain.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = &mut meta.annotations {
        a.remove(LAST_APPLIED);
    }
    assert_eq!(lean.0, plain, "{text}");
}

#[test]
fn every_watched_kind_reads_the_same_less_managed_fields_and_the_last_applied_copy() {
    for (kind, same, mut object) in objects() {
        object["metadata"] = metadata();
        // An escaped key: serde_json cannot lend it, so the filter reads it as an owned string.
        object["metadata"]["labels"]["example.com/\"quoted\""] = json!("x");
        same(&object.to_string());
        // The skipped parts are there to skip (the comparison is not vacuous).
        assert!(object["metadata"]["managedFields"].is_array(), "{kind}");
        assert!(object["metadata"]["annotations"][LAST_APPLIED].is_string(), "{kind}");
    }
}

#[test]
fn absent_null_and_empty_metadata_parts_read_as_before() {
    for meta in [
        json!({}),
        json!({"annotations": null, "labels": null, "managedFields": null}),
        json!({"annotations": {}, "managedFields": []}),
        json!({"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}),
    ] {
        same::<Ingress>(&json!({"metadata": meta}).to_string());
    }
    same::<Ingress>("{}");
    // Only metadata's own keys are skipped: the same key names elsewhere are kept.
    let text = json!({"metadata": {"name": "a"}, "spec": {"rules": [{"host": "managedFields"}]}}).to_string();
    let lean: Lean<Ingress> = serde_json::from_str(&text).expect("lean");
    let rules = lean.0.spec.expect("spec").rules.expect("rules");
    assert_eq!(rules[0].host.as_deref(), Some("managedFields"));
}

#[test]
fn a_wrong_type_is_still_an_error() {
    for text in [
        r#"{"metadata": {"name": 7}}"#,
        r#"{"metadata": {"annotations": {"a": 1}}}"#,
        r#"{"metadata": {"managedFields": [], "labels": []}}"#,
        r#"{"metadata": [], "spec": {}}"#,
        r#"{"spec": {"rules": 3}}"#,
        r#"{"metadata": {"managedFields": [}}"#,
    ] {
        assert!(serde_json::from_str::<Lean<Ingress>>(text).is_err(), "{text}");
        assert!(serde_json::from_str::<Ingress>(text).is_err(), "{text}");
    }
}

#[test]
fn watch_events_decode_through_lean() {
    let mut object = objects().remove(0).2;
    object["metadata"] = metadata();
    for ty in ["ADDED", "MODIFIED", "DELETED"] {
        let line = format!(r#"{{"type":"{ty}","object":{object}}}"#);
        let event: WatchEvent<Lean<Ingress>> = serde_json::from_str(&line).expect("event");
        let (WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) = event else {
            panic!("{ty}: not an object event");
        };
        assert_eq!(o.0.metadata.name.as_deref(), Some("web"));
        assert!(o.0.metadata.managed_fields.is_none());
        assert!(
            !o.0.metadata
                .annotations
                .expect("annotations")
                .contains_key(LAST_APPLIED)
        );
    }
    // The resource is the wrapped kind's: the same URL and kind.
    assert_eq!(
        Lean::<Ingress>::url_path(&(), Some("shop")),
        Ingress::url_path(&(), Some("shop"))
    );
    assert_eq!(Lean::<Ingress>::kind(&()), "Ingress");
}

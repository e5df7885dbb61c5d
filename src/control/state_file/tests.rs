//! The state file: format, round trip, files of earlier versions, what is refused, the atomic
//! write. The helpers here (objects, a temp dir) serve the last known good tests too.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};

use super::*;
use crate::control::kinds::ClusterObjects;

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kedge-state-{}-{n}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn object<K: serde::de::DeserializeOwned>(v: Value) -> Arc<K> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

pub fn ingress(name: &str, host: &str) -> Arc<Ingress> {
    object(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "7",
                     "annotations": {"nginx.ingress.kubernetes.io/use-regex": "true"}},
        "spec": {"ingressClassName": "kedge", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}))
}

/// One object of every kind, with `hosts` as Ingresses.
pub fn sample(hosts: &[&str]) -> ClusterObjects {
    ClusterObjects {
        ingresses: hosts.iter().map(|h| ingress(h, h)).collect(),
        classes: vec![object(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "kedge"}, "spec": {"controller": "kedge.dev/ingress-controller"}}),
        )],
        services: vec![object(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}))],
        slices: vec![object(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}]}),
        )],
        nodes: vec![object(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}),
        )],
        secrets: vec![object(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "web-tls", "namespace": "default"},
            "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
        )],
        ..ClusterObjects::default()
    }
}

/// `sample(hosts)` and one object of every Gateway API kind.
pub fn sample_with_gateway_api(hosts: &[&str]) -> ClusterObjects {
    let gw = "gateway.networking.k8s.io/v1";
    ClusterObjects {
        gateway_classes: vec![object(json!({"apiVersion": gw, "kind": "GatewayClass",
            "metadata": {"name": "kedge"}, "spec": {"controllerName": "kedge.dev/gateway-controller"}}))],
        gateways: vec![object(json!({"apiVersion": gw, "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "default"},
            "spec": {"gatewayClassName": "kedge", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}))],
        http_routes: vec![object(json!({"apiVersion": gw, "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["a.example.com"],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 3}]}]}}))],
        grpc_routes: vec![object(json!({"apiVersion": gw, "kind": "GRPCRoute",
            "metadata": {"name": "rpc", "namespace": "default"},
            "spec": {"rules": [{"matches": [{"method": {"service": "a.B"}}], "backendRefs": [{"name": "rpc", "port": 50051}]}]}}))],
        reference_grants: vec![object(
            json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
            "metadata": {"name": "from-web", "namespace": "other"},
            "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                     "to": [{"group": "", "kind": "Service"}]}}),
        )],
        ..sample(hosts)
    }
}

/// Every object of a set as JSON, per kind, for comparisons.
pub fn as_json(s: &ClusterObjects) -> Vec<Vec<Value>> {
    fn all<K: serde::Serialize>(v: &[Arc<K>]) -> Vec<Value> {
        v.iter().map(|o| serde_json::to_value(&**o).expect("JSON")).collect()
    }
    vec![
        all(&s.ingresses),
        all(&s.classes),
        all(&s.services),
        all(&s.slices),
        all(&s.nodes),
        all(&s.secrets),
        all(&s.gateway_classes),
        all(&s.gateways),
        all(&s.http_routes),
        all(&s.grpc_routes),
        all(&s.reference_grants),
    ]
}

pub fn hosts(s: &ClusterObjects) -> Vec<String> {
    let mut v: Vec<String> = s.ingresses.iter().filter_map(|i| i.metadata.name.clone()).collect();
    v.sort();
    v
}

#[test]
fn the_state_file_round_trips() {
    let s = sample_with_gateway_api(&["a.example.com", "b.example.com"]);
    let bytes = encode("prod", "2025-01-02T03:04:05Z", &s).expect("encode");
    let file: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(file["format"], FORMAT);
    assert_eq!(file["cluster"], "prod");
    assert_eq!(file["saved_at"], "2025-01-02T03:04:05Z");
    for key in [
        "ingresses",
        "ingressclasses",
        "services",
        "endpointslices",
        "nodes",
        "secrets",
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
    ] {
        assert!(
            file[key].as_array().is_some_and(|a| a.len() == 1 || key == "ingresses"),
            "{key}: one object"
        );
    }
    assert_eq!(file["httproutes"][0]["spec"]["rules"][0]["backendRefs"][0]["weight"], 3);
    assert_eq!(file["ingresses"][0]["kind"], "Ingress");

    let (saved_at, back) = decode("prod", &bytes).expect("decode");
    assert_eq!(saved_at, "2025-01-02T03:04:05Z");
    assert_eq!(as_json(&back), as_json(&s));

    let empty = ClusterObjects::default();
    let bytes = encode("prod", "2025-01-02T03:04:05Z", &empty).expect("encode");
    assert_eq!(as_json(&decode("prod", &bytes).expect("decode").1), as_json(&empty));
}

/// A state file as the first version of the format wrote it (before the kinds table), of
/// `sample(&["a.example.com", "b.example.com"])`.
const V1_FILE: &[u8] = include_bytes!("cluster-prod-v1.json");

#[test]
fn a_file_of_the_first_version_still_loads_and_is_written_the_same() {
    let want = sample(&["a.example.com", "b.example.com"]);
    let (saved_at, back) = decode("prod", V1_FILE).expect("decode");
    assert_eq!(saved_at, "2025-01-02T03:04:05Z");
    assert_eq!(as_json(&back), as_json(&want));

    // Today's writer says everything that file says, the same way (it may say more: kinds
    // added since).
    let old: serde_json::Map<String, Value> = serde_json::from_slice(V1_FILE).expect("JSON");
    let new: Value =
        serde_json::from_slice(&encode("prod", "2025-01-02T03:04:05Z", &want).expect("encode")).expect("JSON");
    for (key, value) in &old {
        assert_eq!(&new[key], value, "{key}");
    }
}

#[test]
fn kinds_missing_from_a_file_load_as_empty() {
    let mut file: Value = serde_json::from_slice(V1_FILE).expect("JSON");
    let map = file.as_object_mut().expect("an object");
    map.remove("endpointslices");
    map.remove("secrets");
    let (_, back) = decode("prod", file.to_string().as_bytes()).expect("decode");
    assert!(back.slices.is_empty() && back.secrets.is_empty());
    // The first version had no Gateway API kinds either.
    assert!(back.gateways.is_empty() && back.http_routes.is_empty() && back.reference_grants.is_empty());
    let mut want = sample(&["a.example.com", "b.example.com"]);
    want.slices.clear();
    want.secrets.clear();
    assert_eq!(as_json(&back), as_json(&want));
}

#[test]
fn foreign_and_damaged_files_are_refused_saying_why() {
    let good = encode("prod", "2025-01-02T03:04:05Z", &sample(&["a"])).expect("encode");
    let mut other_format: Value = serde_json::from_slice(&good).expect("JSON");
    other_format["format"] = json!("kedge.dev/cluster-state/v9");
    let mut damaged: Value = serde_json::from_slice(&good).expect("JSON");
    damaged["ingresses"] = json!([{"kind": "Ingress", "apiVersion": "networking.k8s.io/v1", "spec": 5}]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("prod", b"{not json".to_vec(), "not a kedge state file"),
        ("prod", b"[1, 2]".to_vec(), "not a kedge state file"),
        ("prod", br#"{"hello": "world"}"#.to_vec(), "no \"format\""),
        (
            "prod",
            other_format.to_string().into_bytes(),
            "format \"kedge.dev/cluster-state/v9\"",
        ),
        (
            "staging",
            good.clone(),
            "the state of cluster \"prod\", not \"staging\"",
        ),
        ("prod", damaged.to_string().into_bytes(), "damaged"),
        ("prod", good[..good.len() / 2].to_vec(), "not a kedge state file"),
    ];
    for (cluster, bytes, want) in cases {
        let got = decode(cluster, &bytes).map(|_| ()).expect_err("refused");
        assert!(got.contains(want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn a_missing_file_is_nothing_persisted() {
    let dir = TempDir::new("missing");
    assert!(matches!(load(&dir.path().join("cluster-x.json"), "x"), Ok(None)));
}

#[test]
fn writes_are_atomic_replacements() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("atomic");
    let path = dir.path().join("cluster-prod.json");
    write_atomic(&path, b"first").expect("write");
    assert_eq!(fs::read(&path).expect("read"), b"first");
    write_atomic(&path, b"second, longer than the first").expect("rewrite");
    assert_eq!(fs::read(&path).expect("read"), b"second, longer than the first");
    write_atomic(&path, b"3").expect("rewrite");
    assert_eq!(
        fs::read(&path).expect("read"),
        b"3",
        "a shorter write leaves no tail behind"
    );
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["cluster-prod.json"], "no temp file left behind");
    let mode = fs::metadata(&path).expect("metadata").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A write that cannot happen leaves the old file alone.
    let missing = dir.path().join("no-such-dir").join("cluster-prod.json");
    assert!(write_atomic(&missing, b"x").is_err());
    assert!(!missing.exists());
}

#[test]
fn an_unusable_state_dir_turns_persistence_off() {
    let dir = TempDir::new("unusable");
    let file = dir.path().join("a-file");
    fs::write(&file, "x").expect("write");
    assert!(StateDir::open(&file.join("state")).is_none(), "under a regular file");
    let ok = StateDir::open(&dir.path().join("new").join("state")).expect("created");
    assert_eq!(ok.cluster_file("prod"), dir.path().join("new/state/cluster-prod.json"));
    assert_eq!(
        fs::read_dir(dir.path().join("new/state")).expect("list").count(),
        0,
        "no probe left"
    );
}

#[test]
fn only_certificate_secrets_are_written() {
    let mut s = sample(&["a.example.com"]);
    s.secrets
        .push(object(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "htpasswd", "namespace": "default"}, "data": {"auth": "eHg="}})));
    let bytes = encode("prod", "2025-01-02T03:04:05Z", &s).expect("encode");
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.contains("htpasswd"), "an Opaque Secret reached the state file");
    let (_, back) = decode("prod", &bytes).expect("decode");
    assert_eq!(back.secrets.len(), 1);
    assert_eq!(back.secrets[0].type_.as_deref(), Some("kubernetes.io/tls"));
}

//! The state file (format, round trip, what is refused), the atomic write, and the choice
//! between persisted and live objects as a cluster syncs and its watches fail and recover.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::Ingress;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::*;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kedge-persist-{}-{n}-{label}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn object<K: serde::de::DeserializeOwned>(v: Value) -> Arc<K> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

fn ingress(name: &str, host: &str) -> Arc<Ingress> {
    object(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": "7",
                     "annotations": {"nginx.ingress.kubernetes.io/use-regex": "true"}},
        "spec": {"ingressClassName": "kedge", "rules": [{"host": host, "http": {"paths": [
            {"path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "web", "port": {"name": "http"}}}}]}}]}}))
}

/// One object of every kind, with `hosts` as Ingresses.
fn snapshot(hosts: &[&str]) -> Snapshot {
    Snapshot {
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
    }
}

/// Every object of a snapshot as JSON, per kind, for comparisons.
fn as_json(s: &Snapshot) -> Vec<Vec<Value>> {
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
    ]
}

fn hosts(s: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = s.ingresses.iter().filter_map(|i| i.metadata.name.clone()).collect();
    v.sort();
    v
}

#[test]
fn the_state_file_round_trips() {
    let s = snapshot(&["a.example.com", "b.example.com"]);
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
    ] {
        assert!(file[key].is_array(), "{key} is a JSON array");
    }
    assert_eq!(file["ingresses"][0]["kind"], "Ingress");

    let (saved_at, back) = decode("prod", &bytes).expect("decode");
    assert_eq!(saved_at, "2025-01-02T03:04:05Z");
    assert_eq!(as_json(&back), as_json(&s));

    let empty = Snapshot {
        ingresses: Vec::new(),
        classes: Vec::new(),
        services: Vec::new(),
        slices: Vec::new(),
        nodes: Vec::new(),
        secrets: Vec::new(),
    };
    let bytes = encode("prod", "2025-01-02T03:04:05Z", &empty).expect("encode");
    assert_eq!(as_json(&decode("prod", &bytes).expect("decode").1), as_json(&empty));
}

/// A state file as this version writes it, of `snapshot(&["a.example.com", "b.example.com"])`:
/// files already on disk must keep loading.
const V1_FILE: &[u8] = include_bytes!("cluster-prod-v1.json");

#[test]
fn a_file_of_the_first_version_still_loads_and_is_written_the_same() {
    let want = snapshot(&["a.example.com", "b.example.com"]);
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
fn foreign_and_damaged_files_are_refused_saying_why() {
    let good = encode("prod", "2025-01-02T03:04:05Z", &snapshot(&["a"])).expect("encode");
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

/// Polls `cond` on the current runtime until it holds; panics after 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn persisted_objects_serve_until_the_live_sync_then_the_live_ones_are_written() {
    let dir = TempDir::new("lkg");
    let state_dir = StateDir::open(dir.path()).expect("state dir");
    let file = state_dir.cluster_file("prod");
    write_atomic(
        &file,
        &encode("prod", "2025-01-02T03:04:05Z", &snapshot(&["old"])).expect("encode"),
    )
    .expect("write");
    let changed = Arc::new(Notify::new());
    let health = Health::new("prod", &changed);
    let lkg = LastKnownGood::new("prod", Some(&state_dir), Arc::clone(&health));
    let live = || snapshot(&["new"]);

    assert_eq!(lkg.state(), State::NotSynced);
    assert!(!lkg.state().is_ready());
    assert_eq!(
        hosts(&lkg.choose(false, live)),
        ["new"],
        "nothing loaded before the timeout"
    );
    lkg.sync_timed_out(Duration::from_secs(1));
    assert_eq!(lkg.state(), State::Persisted("2025-01-02T03:04:05Z".into()));
    assert!(lkg.state().is_ready());
    assert_eq!(hosts(&lkg.choose(false, live)), ["old"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, on_disk) = load(&file, "prod").expect("load").expect("a file");
    assert_eq!(hosts(&on_disk), ["old"], "nothing written before the live sync");

    // Synced: the live objects replace the persisted ones, and are written.
    assert_eq!(hosts(&lkg.choose(true, live)), ["new"]);
    assert_eq!(lkg.state(), State::Live);
    eventually("the live state on disk", || {
        load(&file, "prod")
            .ok()
            .flatten()
            .is_some_and(|(_, s)| hosts(&s) == ["new"])
    })
    .await;

    // A burst of changes: the latest is what ends up on disk. (That writes are at most one a
    // second is a property of the writer's loop, not asserted on the clock here: tests do not
    // time things.)
    for i in 0..20 {
        health.dirty.store(true, Ordering::Relaxed);
        let host = format!("burst-{i:02}");
        lkg.choose(true, || snapshot(&[&host]));
    }
    eventually("the end of the burst on disk", || {
        load(&file, "prod")
            .ok()
            .flatten()
            .is_some_and(|(_, s)| hosts(&s) == ["burst-19"])
    })
    .await;

    // Without a change, nothing is offered: what is on disk stays.
    lkg.choose(true, live);
    tokio::time::sleep(WRITE_EVERY + Duration::from_millis(200)).await;
    let (_, on_disk) = load(&file, "prod").expect("load").expect("a file");
    assert_eq!(hosts(&on_disk), ["burst-19"]);
}

#[test]
fn watch_failures_and_recoveries_set_the_state() {
    let changed = Arc::new(Notify::new());
    let health = Health::new("prod", &changed);
    let lkg = LastKnownGood::new("prod", None, Arc::clone(&health));
    let services = health.watch("services", "/api/v1/services");
    let nodes = health.watch("nodes", "/api/v1/nodes");
    let live = || snapshot(&["a"]);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), State::Live);

    let down = watcher::Error::NoResourceVersion;
    health.error(&services, &down);
    health.error(&services, &down);
    health.error(&nodes, &down);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), State::Disconnected);
    assert!(lkg.state().is_ready(), "still serving the last known state");

    // The API server accepts the services watch again (no event needed), and a node event
    // arrives (`Init` alone says nothing: the watcher sends it before it lists).
    health.watch_accepted("/api/v1/services");
    health.event::<Ingress>(&nodes, &watcher::Event::Init);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), State::Disconnected);
    health.event::<Ingress>(&nodes, &watcher::Event::InitDone);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), State::Live);

    // 410 Gone is a relist, not an outage.
    let gone = kube::core::Status {
        code: 410,
        ..Default::default()
    };
    health.error(&nodes, &watcher::Error::WatchError(Box::new(gone)));
    lkg.choose(true, live);
    assert_eq!(lkg.state(), State::Live);
}

#[test]
fn without_persistence_a_timeout_leaves_the_cluster_not_synced() {
    let changed = Arc::new(Notify::new());
    let lkg = LastKnownGood::new("prod", None, Health::new("prod", &changed));
    lkg.sync_timed_out(Duration::from_secs(1));
    assert_eq!(lkg.state(), State::NotSynced);
    assert_eq!(hosts(&lkg.choose(false, || snapshot(&["a"]))), ["a"]);
}

#[test]
fn only_certificate_secrets_are_written() {
    let mut s = snapshot(&["a.example.com"]);
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

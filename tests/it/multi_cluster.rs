//! What a cluster contributes: two clusters behind one kedge merge their routes into one table
//! (a host both define goes to the cluster listed first, and the loser is reported); a cluster
//! limited to some namespaces ignores the others.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Driver, FakeApi, Kedge, TempDir, Upstream, get};

fn objects(api: &FakeApi, svc: &str, port: u16, ip: &str, host: &str) {
    objects_in(api, "default", svc, port, ip, host);
}

fn objects_in(api: &FakeApi, ns: &str, svc: &str, port: u16, ip: &str, host: &str) {
    api.apply(
        "ingressclasses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "kedge"}, "spec": {"controller": "kedge.dev/ingress-controller"}}),
    );
    api.apply(
        "services",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc, "namespace": ns},
               "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    api.apply(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{svc}-1"), "namespace": ns,
                            "labels": {"kubernetes.io/service-name": svc}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]}),
    );
    let rules: Vec<Value> = [host, "shared.example.com"]
        .iter()
        .map(|h| {
            json!({"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}})
        })
        .collect();
    api.apply(
        "ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": svc, "namespace": ns},
               "spec": {"ingressClassName": "kedge", "rules": rules}}),
    );
}

#[test]
fn routes_of_two_clusters_merge_and_the_first_cluster_wins_a_shared_host() {
    let (east_pods, east_port) = Upstream::pods("east", 1);
    let (west_pods, west_port) = Upstream::pods("west", 1);
    let (east, west) = (FakeApi::start(), FakeApi::start());
    objects(&east, "east", east_port, "127.0.0.1", "east.example.com");
    objects(&west, "west", west_port, "127.0.0.1", "west.example.com");
    let dir = TempDir::new("clusters");
    let (ke, kw) = (dir.path().join("east"), dir.path().join("west"));
    east.write_kubeconfig(&ke);
    west.write_kubeconfig(&kw);
    let kedge = Kedge::start(
        Driver::default(),
        &format!(
            "[[cluster]]\nname = \"east\"\nkubeconfig = \"{}\"\n\n[[cluster]]\nname = \"west\"\nkubeconfig = \"{}\"\n",
            ke.display(),
            kw.display()
        ),
    );
    let who = |host: &str| get(&kedge, host, "/").1;
    assert_eq!(who("east.example.com").as_deref(), Some("east-0"));
    assert_eq!(who("west.example.com").as_deref(), Some("west-0"));
    assert_eq!(
        who("shared.example.com").as_deref(),
        Some("east-0"),
        "the first cluster listed wins"
    );
    let line = kedge.wait_log("is already routed by", Duration::from_secs(5));
    assert!(line.contains("cluster west") && line.contains("cluster east"), "{line}");
    drop((east_pods, west_pods));
}

#[test]
fn a_cluster_limited_to_namespaces_ignores_the_others() {
    let (pods, port) = Upstream::pods("ns", 1);
    let api = FakeApi::start();
    objects_in(&api, "web", "inside", port, "127.0.0.1", "inside.example.com");
    objects_in(&api, "other", "outside", port, "127.0.0.1", "outside.example.com");
    let dir = TempDir::new("namespaces");
    let kedge = Kedge::follow(&api, &dir, "namespaces = [\"web\"]");
    let status = |host: &str| get(&kedge, host, "/").0;
    assert_eq!(status("inside.example.com"), 200);
    assert_eq!(status("outside.example.com"), 404);
    // Only namespaced watches were opened for the namespaced kinds.
    let log = api.request_log();
    assert!(log.iter().any(|l| l.contains("/namespaces/web/ingresses")), "{log:#?}");
    assert!(!log.iter().any(|l| l.contains("/namespaces/other/")), "{log:#?}");
    drop(pods);
}

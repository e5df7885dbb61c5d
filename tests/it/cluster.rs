//! Routes from a cluster, end to end: objects applied to the fixture API server reach kedge
//! through the real kube client and a generated kubeconfig, and traffic flows to real upstream
//! listeners standing in for pods (127.0.0.x, each answering with its own name).

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, Driver, FakeApi, Kedge, TempDir, Upstream, both_drivers, wait_until};

/// kedge following `api`, with nothing else configured.
fn kedge_for(driver: Driver, api: &FakeApi, dir: &TempDir) -> Kedge {
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    Kedge::start(
        driver,
        &format!(
            "[[cluster]]\nname = \"test\"\nkubeconfig = \"{}\"\nsync_timeout = \"10s\"\n",
            kubeconfig.display()
        ),
    )
}

fn ingress_class() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
           "metadata": {"name": "kedge"}, "spec": {"controller": "kedge.dev/ingress-controller"}})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// An EndpointSlice of Service `svc` with ready endpoints `ips` on `port`.
fn slice(svc: &str, port: u16, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-abc"), "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints})
}

fn ingress(name: &str, class: &str, host: &str, path: &str, svc: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"ingressClassName": class, "rules": [{"host": host, "http": {"paths": [
               {"path": path, "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"name": "http"}}}}]}}]}})
}

/// GET `path` on `host`; the status and the name of the upstream that answered.
fn get(kedge: &Kedge, host: &str, path: &str) -> (u16, Option<String>) {
    let resp = Client::connect(kedge.addr()).get(host, path);
    (resp.status, resp.upstream().map(str::to_owned))
}

both_drivers!(
    fn ingress_routes_to_pod_endpoints_after_the_first_sync(driver) {
        let (pods, port) = Upstream::pods("web", 2);
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        api.apply("services", service("web"));
        api.apply("endpointslices", slice("web", port, &["127.0.0.1", "127.0.0.2"]));
        api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
        let dir = TempDir::new("cluster");
        let kedge = kedge_for(driver, &api, &dir);
        // Served from the first request on: workers start only after the first full sync.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..8 {
            let (status, who) = get(&kedge, "web.example.com", &format!("/{i}"));
            assert_eq!(status, 200, "request {i}");
            seen.insert(who.expect("an upstream answered"));
        }
        assert_eq!(seen.len(), 2, "both endpoints get traffic: {seen:?}");
        assert_eq!(pods.iter().map(Upstream::request_count).sum::<usize>(), 8);
        // Not our host, not our route.
        assert_eq!(get(&kedge, "other.example.com", "/").0, 404);
    }
);

both_drivers!(
    fn changes_apply_without_restart(driver) {
        let (pods, port) = Upstream::pods("app", 3);
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        let dir = TempDir::new("cluster");
        let kedge = kedge_for(driver, &api, &dir);
        assert_eq!(get(&kedge, "app.example.com", "/").0, 404, "nothing applied yet");

        api.apply("services", service("app"));
        api.apply("endpointslices", slice("app", port, &["127.0.0.1"]));
        api.apply("ingresses", ingress("app", "kedge", "app.example.com", "/", "app"));
        wait_until(Duration::from_secs(10), "the new Ingress is served", || {
            get(&kedge, "app.example.com", "/").0 == 200
        });

        // Scale out: the new endpoints get traffic.
        api.apply("endpointslices", slice("app", port, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]));
        wait_until(Duration::from_secs(10), "all three endpoints answer", || {
            (0..9).filter_map(|_| get(&kedge, "app.example.com", "/").1).collect::<std::collections::BTreeSet<_>>().len()
                == 3
        });

        // Scale in to one: only it answers.
        api.apply("endpointslices", slice("app", port, &["127.0.0.3"]));
        wait_until(Duration::from_secs(10), "only app-2 answers", || {
            (0..6).all(|_| get(&kedge, "app.example.com", "/").1.as_deref() == Some("app-2"))
        });

        // No endpoint left: 503, not a hang or a 502.
        api.apply("endpointslices", slice("app", port, &[]));
        wait_until(Duration::from_secs(10), "503 without endpoints", || get(&kedge, "app.example.com", "/").0 == 503);

        // Ingress deleted: 404.
        api.delete("ingresses", Some("default"), "app");
        wait_until(Duration::from_secs(10), "404 after the Ingress is deleted", || {
            get(&kedge, "app.example.com", "/").0 == 404
        });
        drop(pods);
    }
);

both_drivers!(
    fn an_ingress_of_another_class_gets_no_traffic(driver) {
        let (_pods, port) = Upstream::pods("other", 1);
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        api.apply(
            "ingressclasses",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
        );
        api.apply("services", service("other"));
        api.apply("endpointslices", slice("other", port, &["127.0.0.1"]));
        api.apply("ingresses", ingress("theirs", "nginx", "other.example.com", "/", "other"));
        api.apply("ingresses", ingress("ours", "kedge", "ours.example.com", "/", "other"));
        let dir = TempDir::new("cluster");
        let kedge = kedge_for(driver, &api, &dir);
        assert_eq!(get(&kedge, "ours.example.com", "/").0, 200);
        assert_eq!(get(&kedge, "other.example.com", "/").0, 404);
    }
);

both_drivers!(
    fn a_broken_ingress_is_reported_and_the_rest_still_served(driver) {
        let (_pods, port) = Upstream::pods("good", 1);
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        api.apply("services", service("good"));
        api.apply("endpointslices", slice("good", port, &["127.0.0.1"]));
        api.apply("ingresses", ingress("good", "kedge", "good.example.com", "/", "good"));
        api.apply("ingresses", ingress("broken", "kedge", "broken.example.com", "/", "missing"));
        let dir = TempDir::new("cluster");
        let kedge = kedge_for(driver, &api, &dir);
        assert_eq!(get(&kedge, "good.example.com", "/").0, 200);
        assert_eq!(get(&kedge, "broken.example.com", "/").0, 503);
        kedge.wait_log("Ingress default/broken", Duration::from_secs(5));
    }
);

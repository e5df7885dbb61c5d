//! Routes from a cluster, end to end: objects applied to the fixture API server reach kedge
//! through the real kube client and a generated kubeconfig, and traffic flows to real upstream
//! listeners standing in for pods (127.0.0.x, each answering with its own name). In NodePort
//! mode the same listeners stand in for nodes (kube-proxy on NodeIP:nodePort).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{api_with_web, endpoint, ingress, ingress_class, service, slice, slice_of};
use crate::support::{FakeApi, Kedge, Signal, TempDir, Upstream, get, wait_until};

/// A fixture API server with kedge's IngressClass and three Ready, schedulable nodes `node-0`,
/// `node-1`, `node-2` on 127.0.0.1..=3 (where `Upstream::pods("node", 3)` listens).
fn node_cluster() -> FakeApi {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    for i in 0..3 {
        api.apply(
            "nodes",
            node(&format!("node-{i}"), &format!("127.0.0.{}", i + 1), true, false),
        );
    }
    api
}

/// A Node with one InternalIP, a Ready condition, and maybe cordoned.
fn node(name: &str, ip: &str, ready: bool, unschedulable: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"unschedulable": unschedulable},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                      "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                      "reason": if ready { "KubeletReady" } else { "KubeletNotReady" }}]}})
}

/// A Service of type NodePort with port `http` (80 → 8080) on `node_port`.
fn nodeport_service(name: &str, node_port: u16, local: bool, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "annotations": annotations},
           "spec": {"type": "NodePort", "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": node_port}]}})
}

/// [`node_cluster`] with NodePort Service `web` on `node_port` (`externalTrafficPolicy: Local`
/// when `local`), its EndpointSlice of `endpoints`, and Ingress `web.example.com` → `web`;
/// kedge following it in `nodeports` mode.
fn nodeports_web(node_port: u16, local: bool, endpoints: Vec<Value>) -> (FakeApi, TempDir, Kedge) {
    let api = node_cluster();
    api.apply("services", nodeport_service("web", node_port, local, json!({})));
    api.apply("endpointslices", slice_of("web", 8080, endpoints));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "upstream = \"nodeports\"");
    (api, dir, kedge)
}

/// `n` GETs on fresh connections: how many each upstream answered. Panics on a status other
/// than 200 (`what` says where).
fn spread(kedge: &Kedge, host: &str, n: usize, what: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let (status, who) = get(kedge, host, &format!("/{i}"));
        assert_eq!(status, 200, "{what}: request {i}");
        *seen.entry(who.expect("an upstream answered")).or_default() += 1;
    }
    seen
}

/// The upstream names in `names` as a set, for comparisons.
fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until `n` requests in a row are answered by exactly the upstreams `want` (every one
/// of them at least once, no other), then checks that it stays so for `3 * n` more.
fn wait_served_by(kedge: &Kedge, host: &str, want: &[&str], n: usize, what: &str) {
    let want = names(want);
    wait_until(Duration::from_secs(10), what, || {
        spread(kedge, host, n, what).into_keys().collect::<BTreeSet<_>>() == want
    });
    let after = spread(kedge, host, 3 * n, what);
    assert!(
        after.keys().all(|k| want.contains(k)),
        "{what}: once served by {want:?}, traffic still went elsewhere: {after:?}"
    );
}

#[test]
fn ingress_routes_to_pod_endpoints_after_the_first_sync() {
    let (pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
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

#[test]
fn changes_apply_without_restart() {
    let (pods, port) = Upstream::pods("app", 3);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
    assert_eq!(get(&kedge, "app.example.com", "/").0, 404, "nothing applied yet");

    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", port, &["127.0.0.1"]));
    api.apply("ingresses", ingress("app", "kedge", "app.example.com", "/", "app"));
    wait_until(Duration::from_secs(10), "the new Ingress is served", || {
        get(&kedge, "app.example.com", "/").0 == 200
    });

    // Scale out: the new endpoints get traffic.
    api.apply(
        "endpointslices",
        slice("app", port, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
    );
    wait_until(Duration::from_secs(10), "all three endpoints answer", || {
        (0..9)
            .filter_map(|_| get(&kedge, "app.example.com", "/").1)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3
    });
    // An EndpointSlice-only change took the fast path (endpoints swapped into the current
    // table), which is exact: no build from nothing follows once things are quiet.
    let fast = kedge.wait_log("why=\"endpoints\"", Duration::from_secs(10));
    assert!(fast.contains("services=1") && fast.contains("endpoints=3"), "{fast}");
    let full = publications(&kedge, "why=\"watch\"");
    std::thread::sleep(QUIET);
    assert_eq!(
        publications(&kedge, "why=\"settle\""),
        0,
        "no build from nothing once quiet"
    );
    assert_eq!(publications(&kedge, "why=\"watch\""), full);

    // Scale in to one: only it answers.
    api.apply("endpointslices", slice("app", port, &["127.0.0.3"]));
    wait_until(Duration::from_secs(10), "only app-2 answers", || {
        (0..6).all(|_| get(&kedge, "app.example.com", "/").1.as_deref() == Some("app-2"))
    });

    // No endpoint left: 503, not a hang or a 502.
    api.apply("endpointslices", slice("app", port, &[]));
    wait_until(Duration::from_secs(10), "503 without endpoints", || {
        get(&kedge, "app.example.com", "/").0 == 503
    });

    // Ingress deleted: 404.
    api.delete("ingresses", Some("default"), "app");
    wait_until(Duration::from_secs(10), "404 after the Ingress is deleted", || {
        get(&kedge, "app.example.com", "/").0 == 404
    });
    drop(pods);
}

/// Longer than kedge waits for changes to be quiet (its `SETTLE`, 1 s) before the builds it
/// makes then.
const QUIET: Duration = Duration::from_millis(1500);

/// How many route tables kedge published with `why` in the line.
fn publications(kedge: &Kedge, why: &str) -> usize {
    kedge
        .logs()
        .iter()
        .filter(|l| l.contains("route table published") && l.contains(why))
        .count()
}

/// An Ingress change is an update: only its hosts are built again (the others are shared with
/// the current table). It is exact: no build from nothing follows once changes are quiet, and
/// one (a SIGHUP) serves the same.
#[test]
fn an_ingress_change_is_an_update_of_its_hosts() {
    // app-0 on 127.0.0.1 behind Service app, app-1 on 127.0.0.2 behind Service web.
    let (pods, port) = Upstream::pods("app", 2);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("app", port, &["127.0.0.1"]));
    api.apply("endpointslices", slice("web", port, &["127.0.0.2"]));
    api.apply("ingresses", ingress("a", "kedge", "a.example.com", "/", "app"));
    api.apply("ingresses", ingress("b", "kedge", "b.example.com", "/", "web"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
    let by = |host: &str| get(&kedge, host, "/").1;
    wait_until(Duration::from_secs(10), "both Ingresses are served", || {
        by("a.example.com").as_deref() == Some("app-0") && by("b.example.com").as_deref() == Some("app-1")
    });
    let updates = publications(&kedge, "why=\"update\"");
    let full = || publications(&kedge, "why=\"watch\"") + publications(&kedge, "why=\"settle\"");
    let built = full();

    // Ingress a now sends to Service web.
    api.apply("ingresses", ingress("a", "kedge", "a.example.com", "/", "web"));
    wait_until(Duration::from_secs(10), "host a follows its Ingress", || {
        by("a.example.com").as_deref() == Some("app-1")
    });
    assert!(
        publications(&kedge, "why=\"update\"") > updates,
        "published as an update"
    );
    assert_eq!(by("b.example.com").as_deref(), Some("app-1"), "host b unchanged");
    std::thread::sleep(QUIET);
    assert_eq!(full(), built, "no build from nothing after the update");

    // Deleted: its host answers 404, the other still routes.
    let updates = publications(&kedge, "why=\"update\"");
    api.delete("ingresses", Some("default"), "a");
    wait_until(Duration::from_secs(10), "404 after the Ingress is deleted", || {
        get(&kedge, "a.example.com", "/").0 == 404
    });
    assert!(
        publications(&kedge, "why=\"update\"") > updates,
        "published as an update"
    );
    assert_eq!(by("b.example.com").as_deref(), Some("app-1"));

    std::thread::sleep(QUIET);
    assert_eq!(full(), built, "no build from nothing after the update");

    // A build from nothing serves the same.
    kedge.signal(Signal::Hup);
    kedge.wait_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(publications(&kedge, "why=\"reload\""), 1);
    assert_eq!(get(&kedge, "a.example.com", "/").0, 404);
    assert_eq!(by("b.example.com").as_deref(), Some("app-1"));
    drop(pods);
}

/// `resync`: that long after the first update since the last build from nothing, kedge makes
/// one anyway (a bound on what a bug in updates could leave behind), once, serving the same;
/// without updates, none.
#[test]
fn a_build_from_nothing_follows_updates_after_resync() {
    let (pods, port) = Upstream::pods("app", 1);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", port, &["127.0.0.1"]));
    api.apply("ingresses", ingress("a", "kedge", "a.example.com", "/", "app"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "resync = \"3s\"");
    wait_until(Duration::from_secs(10), "host a is served", || {
        get(&kedge, "a.example.com", "/").0 == 200
    });
    let resyncs = || publications(&kedge, "why=\"resync\"");
    let updates = publications(&kedge, "why=\"update\"");
    api.apply("ingresses", ingress("b", "kedge", "b.example.com", "/", "app"));
    wait_until(Duration::from_secs(10), "host b is served", || {
        get(&kedge, "b.example.com", "/").0 == 200
    });
    let served = std::time::Instant::now();
    assert!(
        publications(&kedge, "why=\"update\"") > updates,
        "published as an update"
    );
    kedge.wait_log("why=\"resync\"", Duration::from_secs(10));
    assert!(
        served.elapsed() >= Duration::from_secs(2),
        "resync came {:?} after the update was served",
        served.elapsed()
    );
    assert_eq!(get(&kedge, "a.example.com", "/").0, 200);
    assert_eq!(get(&kedge, "b.example.com", "/").0, 200);
    // No update since: no other.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(resyncs(), 1);
    drop(pods);
}

/// EndpointSlice `name` of Service `svc` (`None`: no Service label) with ready endpoints `ips`.
fn named_slice(name: &str, svc: Option<&str>, port: u16, ips: &[&str]) -> Value {
    let mut s = slice(svc.unwrap_or("none"), port, ips);
    s["metadata"]["name"] = json!(name);
    match svc {
        Some(svc) => s["metadata"]["labels"] = json!({"kubernetes.io/service-name": svc}),
        None => s["metadata"]["labels"] = json!({}),
    }
    s
}

/// The fast path's Nth update (1-based): its log line, once there.
fn nth_endpoint_update(kedge: &Kedge, n: usize) -> String {
    kedge.wait_logs("why=\"endpoints\"", n, Duration::from_secs(10))[n - 1].clone()
}

/// The endpoint fast path resolves a Service from all its EndpointSlices, not only the changed
/// one, and follows a slice that leaves its Service (relabelled, unlabelled, deleted): each
/// update's table has exactly the endpoints a full build would give (the log line counts
/// them; the table has the one backend).
#[test]
fn endpoint_updates_see_every_slice_of_the_service() {
    let (pods, port) = Upstream::pods("web", 3);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("services", service("other"));
    api.apply(
        "endpointslices",
        named_slice("web-a", Some("web"), port, &["127.0.0.1"]),
    );
    api.apply(
        "endpointslices",
        named_slice("web-b", Some("web"), port, &["127.0.0.2"]),
    );
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
    wait_served_by(&kedge, "web.example.com", &["web-0", "web-1"], 8, "both slices");

    // One slice changes: the other one's endpoint stays.
    api.apply(
        "endpointslices",
        named_slice("web-a", Some("web"), port, &["127.0.0.3"]),
    );
    let line = nth_endpoint_update(&kedge, 1);
    assert!(line.contains(" endpoints=2 "), "{line}");
    wait_served_by(&kedge, "web.example.com", &["web-1", "web-2"], 8, "web-a changed");

    // A slice moves to another Service: its endpoint leaves this one.
    api.apply(
        "endpointslices",
        named_slice("web-b", Some("other"), port, &["127.0.0.2"]),
    );
    let line = nth_endpoint_update(&kedge, 2);
    assert!(line.contains(" endpoints=1 "), "{line}");
    wait_served_by(&kedge, "web.example.com", &["web-2"], 8, "web-b moved away");

    // It comes back, then loses its label: in, then out again.
    api.apply(
        "endpointslices",
        named_slice("web-b", Some("web"), port, &["127.0.0.2"]),
    );
    let line = nth_endpoint_update(&kedge, 3);
    assert!(line.contains(" endpoints=2 "), "{line}");
    api.apply("endpointslices", named_slice("web-b", None, port, &["127.0.0.2"]));
    let line = nth_endpoint_update(&kedge, 4);
    assert!(line.contains(" endpoints=1 "), "{line}");

    // The last slice deleted: no endpoint left, 503.
    api.delete("endpointslices", Some("default"), "web-a");
    let line = nth_endpoint_update(&kedge, 5);
    assert!(line.contains(" endpoints=0 "), "{line}");
    wait_until(Duration::from_secs(10), "503 without endpoints", || {
        get(&kedge, "web.example.com", "/").0 == 503
    });
    drop(pods);
}

#[test]
fn an_ingress_of_another_class_gets_no_traffic() {
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
    api.apply(
        "ingresses",
        ingress("theirs", "nginx", "other.example.com", "/", "other"),
    );
    api.apply("ingresses", ingress("ours", "kedge", "ours.example.com", "/", "other"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
    assert_eq!(get(&kedge, "ours.example.com", "/").0, 200);
    assert_eq!(get(&kedge, "other.example.com", "/").0, 404);
}

#[test]
fn a_broken_ingress_is_reported_and_the_rest_still_served() {
    let (_pods, port) = Upstream::pods("good", 1);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("good"));
    api.apply("endpointslices", slice("good", port, &["127.0.0.1"]));
    api.apply("ingresses", ingress("good", "kedge", "good.example.com", "/", "good"));
    api.apply(
        "ingresses",
        ingress("broken", "kedge", "broken.example.com", "/", "missing"),
    );
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");
    assert_eq!(get(&kedge, "good.example.com", "/").0, 200);
    assert_eq!(get(&kedge, "broken.example.com", "/").0, 503);
    kedge.wait_log("Ingress default/broken", Duration::from_secs(5));
}

#[test]
fn ten_endpoints_all_get_traffic() {
    let (pods, port) = Upstream::pods("web", 10);
    let ips: Vec<String> = (1..=10).map(|i| format!("127.0.0.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", port, &ips));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");

    let seen = spread(&kedge, "web.example.com", 50, "ten endpoints");
    let counts: Vec<usize> = pods.iter().map(Upstream::request_count).collect();
    assert_eq!(seen.len(), 10, "every endpoint answers: {seen:?}");
    assert!(counts.iter().all(|&c| c > 0), "every upstream saw requests: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 50, "{counts:?}");
}

/// What the table takes from Nodes includes the warnings about those it cannot use: a Node
/// change that brings one is an endpoint update at once, and its warning comes with the build
/// from nothing made once changes are quiet (updates do not make one any more).
#[test]
fn a_node_without_a_usable_address_is_warned_about_once_quiet() {
    let (_nodes, node_port) = Upstream::pods("node", 3);
    let (api, _dir, kedge) = nodeports_web(
        node_port,
        false,
        vec![endpoint("10.244.0.10", true, true, false, Some("node-0"))],
    );
    spread(&kedge, "web.example.com", 3, "three ready nodes");
    let settled = publications(&kedge, "why=\"settle\"");
    // node-3: Ready, but with a Hostname address only.
    api.apply(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-3"},
               "status": {"addresses": [{"type": "Hostname", "address": "node-3"}],
                          "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
    );
    let warned = kedge.wait_log("Node node-3", Duration::from_secs(10));
    assert!(warned.contains("no InternalIP address"), "{warned}");
    // Logged by the build once quiet.
    kedge.wait_logs("why=\"settle\"", settled + 1, Duration::from_secs(10));
    assert_eq!(spread(&kedge, "web.example.com", 3, "still served").len(), 3);
}

#[test]
fn nodeports_mode_follows_node_readiness_and_cordons() {
    // Three "nodes" listening on the nodePort (kube-proxy's part); the pod IPs behind them
    // are not reachable from here, so any request answered proves it went through a node.
    let (_nodes, node_port) = Upstream::pods("node", 3);
    let (api, _dir, kedge) = nodeports_web(
        node_port,
        false,
        vec![endpoint("10.244.0.10", true, true, false, Some("node-0"))],
    );

    // Cluster policy: every Ready node takes traffic, whichever node hosts the pod.
    let seen = spread(&kedge, "web.example.com", 9, "three ready nodes");
    assert_eq!(
        seen.into_keys().collect::<BTreeSet<_>>(),
        names(&["node-0", "node-1", "node-2"])
    );

    // A node going NotReady stops getting traffic.
    api.apply("nodes", node("node-2", "127.0.0.3", false, false));
    wait_served_by(
        &kedge,
        "web.example.com",
        &["node-0", "node-1"],
        6,
        "node-2 NotReady is left out",
    );

    // A cordoned node (spec.unschedulable) too.
    api.apply("nodes", node("node-1", "127.0.0.2", true, true));
    wait_served_by(&kedge, "web.example.com", &["node-0"], 4, "cordoned node-1 is left out");

    // Both come back.
    api.apply("nodes", node("node-1", "127.0.0.2", true, false));
    api.apply("nodes", node("node-2", "127.0.0.3", true, false));
    wait_served_by(
        &kedge,
        "web.example.com",
        &["node-0", "node-1", "node-2"],
        9,
        "all nodes back",
    );

    // A node deleted is gone too.
    api.delete("nodes", None, "node-0");
    wait_served_by(
        &kedge,
        "web.example.com",
        &["node-1", "node-2"],
        6,
        "deleted node-0 is left out",
    );
}

#[test]
fn nodeports_local_policy_sends_only_to_nodes_hosting_a_ready_endpoint() {
    let (_nodes, node_port) = Upstream::pods("node", 3);
    // A ready pod on node-1; one on node-2 not ready yet (kube-proxy there would drop).
    let (api, _dir, kedge) = nodeports_web(
        node_port,
        true,
        vec![
            endpoint("10.244.1.10", true, true, false, Some("node-1")),
            endpoint("10.244.2.10", false, false, false, Some("node-2")),
        ],
    );

    let seen = spread(&kedge, "web.example.com", 9, "Local policy, one ready pod");
    assert_eq!(seen.into_keys().collect::<BTreeSet<_>>(), names(&["node-1"]));

    // The pod on node-2 becomes ready: node-2 joins.
    api.apply(
        "endpointslices",
        slice_of(
            "web",
            8080,
            vec![
                endpoint("10.244.1.10", true, true, false, Some("node-1")),
                endpoint("10.244.2.10", true, true, false, Some("node-2")),
            ],
        ),
    );
    wait_served_by(
        &kedge,
        "web.example.com",
        &["node-1", "node-2"],
        6,
        "node-2 hosts a ready pod",
    );

    // The pod moves to node-0: only node-0.
    api.apply(
        "endpointslices",
        slice_of(
            "web",
            8080,
            vec![endpoint("10.244.0.11", true, true, false, Some("node-0"))],
        ),
    );
    wait_served_by(&kedge, "web.example.com", &["node-0"], 4, "the pod moved to node-0");

    // Back to Cluster policy: every node.
    api.apply("services", nodeport_service("web", node_port, false, json!({})));
    wait_served_by(
        &kedge,
        "web.example.com",
        &["node-0", "node-1", "node-2"],
        9,
        "Cluster policy",
    );

    // Local with no endpoint at all: no node may take it, 503.
    api.apply("services", nodeport_service("web", node_port, true, json!({})));
    api.apply("endpointslices", slice_of("web", 8080, vec![]));
    wait_until(Duration::from_secs(10), "503 with Local and no endpoint", || {
        get(&kedge, "web.example.com", "/").0 == 503
    });
}

#[test]
fn a_service_annotation_switches_it_to_nodeports_in_a_pods_cluster() {
    let (_pods, pod_port) = Upstream::pods("pod", 2);
    let (_nodes, node_port) = Upstream::pods("node", 2);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("nodes", node("node-0", "127.0.0.1", true, false));
    api.apply("nodes", node("node-1", "127.0.0.2", true, false));
    // Both Services have the same pods; only the annotated one goes through the nodes.
    api.apply("services", nodeport_service("direct", node_port, false, json!({})));
    api.apply(
        "services",
        nodeport_service(
            "via-nodes",
            node_port,
            false,
            json!({"kedge.dev/upstream-mode": "nodeports"}),
        ),
    );
    api.apply("endpointslices", slice("direct", pod_port, &["127.0.0.1", "127.0.0.2"]));
    api.apply(
        "endpointslices",
        slice("via-nodes", pod_port, &["127.0.0.1", "127.0.0.2"]),
    );
    api.apply(
        "ingresses",
        ingress("direct", "kedge", "direct.example.com", "/", "direct"),
    );
    api.apply(
        "ingresses",
        ingress("via-nodes", "kedge", "nodes.example.com", "/", "via-nodes"),
    );
    let dir = TempDir::new("cluster");
    let kedge = Kedge::follow(&api, &dir, "");

    let direct = spread(&kedge, "direct.example.com", 6, "pods mode");
    assert_eq!(direct.into_keys().collect::<BTreeSet<_>>(), names(&["pod-0", "pod-1"]));
    let via = spread(&kedge, "nodes.example.com", 6, "annotated nodeports");
    assert_eq!(via.into_keys().collect::<BTreeSet<_>>(), names(&["node-0", "node-1"]));

    // The annotation removed: back to the pods.
    api.apply("services", nodeport_service("via-nodes", node_port, false, json!({})));
    wait_served_by(
        &kedge,
        "nodes.example.com",
        &["pod-0", "pod-1"],
        6,
        "annotation removed",
    );
}

/// A path of an Ingress rule to Service `svc` port `http`.
fn ing_path(path: &str, path_type: &str, svc: &str) -> Value {
    json!({"path": path, "pathType": path_type, "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

#[test]
fn ingress_semantics_end_to_end() {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    let mut pods = Vec::new();
    for svc in ["exact", "app", "wild", "fallback"] {
        let (p, port) = Upstream::pods(svc, 1);
        api.apply("services", service(svc));
        api.apply("endpointslices", slice(svc, port, &["127.0.0.1"]));
        pods.push(p);
    }
    api.apply(
        "ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "routes", "namespace": "default"},
               "spec": {"ingressClassName": "kedge", "rules": [
                   {"host": "exact.example.com", "http": {"paths": [
                       ing_path("/exact", "Exact", "exact"),
                       ing_path("/app/", "Prefix", "app")]}},
                   {"host": "*.wild.example.com", "http": {"paths": [ing_path("/", "Prefix", "wild")]}}]}}),
    );
    api.apply(
        "ingresses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "fallback", "namespace": "default"},
               "spec": {"ingressClassName": "kedge",
                        "defaultBackend": {"service": {"name": "fallback", "port": {"name": "http"}}}}}),
    );
    let dir = TempDir::new("semantics");
    let kedge = Kedge::follow(&api, &dir, "");
    let cases: &[(&str, &str, &str)] = &[
        ("exact.example.com", "/exact", "exact-0"),
        // Exact is case- and slash-sensitive: the rest falls to the default backend.
        ("exact.example.com", "/exact/", "fallback-0"),
        ("exact.example.com", "/EXACT", "fallback-0"),
        // Prefix by whole elements; the rule's trailing slash does not matter.
        ("exact.example.com", "/app", "app-0"),
        ("exact.example.com", "/app/", "app-0"),
        ("exact.example.com", "/app/deep/er?q=1", "app-0"),
        ("exact.example.com", "/appx", "fallback-0"),
        // Hosts: case-insensitive, port ignored.
        ("EXACT.Example.COM:8080", "/app", "app-0"),
        // Wildcards: exactly one extra label.
        ("a.wild.example.com", "/", "wild-0"),
        ("a.b.wild.example.com", "/", "fallback-0"),
        ("wild.example.com", "/", "fallback-0"),
        ("unknown.example.com", "/", "fallback-0"),
    ];
    for &(host, path, want) in cases {
        let (status, who) = get(&kedge, host, path);
        assert_eq!((status, who.as_deref()), (200, Some(want)), "{host} {path}");
    }
    // Without a default backend, what no rule matches is kedge's 404.
    api.delete("ingresses", Some("default"), "fallback");
    wait_until(Duration::from_secs(10), "404 once the default backend is gone", || {
        get(&kedge, "unknown.example.com", "/").0 == 404
    });
    assert_eq!(get(&kedge, "exact.example.com", "/appx").0, 404);
    assert_eq!(get(&kedge, "exact.example.com", "/app").1.as_deref(), Some("app-0"));
    // Each object change is logged, like a controller's sync log.
    kedge.wait_log(
        "deleted cluster=\"test\" what=\"ingresses\" object=\"default/fallback\"",
        Duration::from_secs(5),
    );
    drop(pods);
}

#[test]
fn tls_secrets_are_watched_by_type_and_a_missing_one_is_reported() {
    let (_pods, port) = Upstream::pods("tls", 1);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("tls"));
    api.apply("endpointslices", slice("tls", port, &["127.0.0.1"]));
    let mut ing = ingress("tls", "kedge", "tls.example.com", "/", "tls");
    ing["spec"]["tls"] = json!([{"hosts": ["tls.example.com"], "secretName": "tls-cert"}]);
    api.apply("ingresses", ing);
    // Another type of Secret is never listed: kedge asks only for kubernetes.io/tls ones.
    api.apply(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "tls-cert", "namespace": "default"}, "data": {"password": "cHc="}}),
    );
    let dir = TempDir::new("tls");
    let kedge = Kedge::follow(&api, &dir, "");
    assert_eq!(
        get(&kedge, "tls.example.com", "/").0,
        200,
        "still served (this kedge has no TLS listener)"
    );
    kedge.wait_log("Secret default/tls-cert not found", Duration::from_secs(5));
    let log = api.request_log();
    assert!(
        log.iter()
            .any(|l| l.contains("/secrets") && l.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")),
        "{log:#?}"
    );
    // Once the right Secret exists, the warning is gone. (Its PEM is not parsed: this kedge
    // has no TLS listener to use it on.)
    api.apply(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "tls-cert2", "namespace": "default"},
               "data": {"tls.crt": "Y3J0", "tls.key": "a2V5"}}),
    );
    let mut ing = ingress("tls", "kedge", "tls.example.com", "/", "tls");
    ing["spec"]["tls"] = json!([{"hosts": ["tls.example.com"], "secretName": "tls-cert2"}]);
    api.apply("ingresses", ing);
    wait_until(Duration::from_secs(5), "no warning left", || {
        let logs = kedge.logs();
        let last = logs.iter().rev().find(|l| l.contains("route table published"));
        last.is_some_and(|l| l.contains("warnings=0"))
    });
}

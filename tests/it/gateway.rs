//! The Gateway API kinds through the fixture API server: a cluster without their CRDs syncs and
//! serves as before, saying so once; CRDs installed later are discovered and watched; the state
//! file keeps their objects; kedge's GatewayClasses (`gateway_controller`) are counted. (Routing
//! from them is later work: nothing here is served.)

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{api_with_web, ingress};
use crate::support::{Driver, FakeApi, Kedge, TempDir, Upstream, get, readyz, state_file, wait_until};

/// Discovery is checked again every `watch_retry_max`: short here, so that installing the
/// CRDs is noticed quickly (the tests wait for what it leads to, never for a time).
const FAST_RECHECK: &str = "watch_retry_max = \"500ms\"";

const DISCOVERY: &str = "GET /apis/gateway.networking.k8s.io/v1";

/// What kedge logs, once, for a cluster without the Gateway API.
const ABSENT: &str = "the Gateway API is absent (CRDs not installed)";

const KINDS: [(&str, &str); 5] = [
    ("gatewayclasses", "/apis/gateway.networking.k8s.io/v1/gatewayclasses"),
    ("gateways", "/apis/gateway.networking.k8s.io/v1/gateways"),
    ("httproutes", "/apis/gateway.networking.k8s.io/v1/httproutes"),
    ("grpcroutes", "/apis/gateway.networking.k8s.io/v1/grpcroutes"),
    (
        "referencegrants",
        "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
    ),
];

/// One object of every Gateway API kind.
fn apply_gateway_objects(api: &FakeApi) {
    let gw = "gateway.networking.k8s.io/v1";
    api.apply(
        "gatewayclasses",
        json!({"apiVersion": gw, "kind": "GatewayClass",
        "metadata": {"name": "kedge"}, "spec": {"controllerName": "kedge.dev/gateway-controller"}}),
    );
    api.apply(
        "gateways",
        json!({"apiVersion": gw, "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "default"},
        "spec": {"gatewayClassName": "kedge", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    );
    api.apply(
        "httproutes",
        json!({"apiVersion": gw, "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["gw.example.com"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": "web", "port": 80, "weight": 7}]}]}}),
    );
    api.apply("grpcroutes", json!({"apiVersion": gw, "kind": "GRPCRoute",
        "metadata": {"name": "rpc", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge"}],
                 "rules": [{"matches": [{"method": {"service": "a.B"}}], "backendRefs": [{"name": "web", "port": 80}]}]}}));
    api.apply(
        "referencegrants",
        json!({"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "from-default", "namespace": "other"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "default"}],
                 "to": [{"group": "", "kind": "Service"}]}}),
    );
}

fn kedge_with_state(api: &FakeApi, dir: &TempDir, state_dir: &Path, extra: &str) -> Kedge {
    Kedge::setup(Driver::default())
        .state_dir(state_dir)
        .follow(api, dir, &format!("{FAST_RECHECK}\n{extra}"))
}

/// Whether the state file holds the objects of [`apply_gateway_objects`], as applied.
fn has_gateway_objects(file: &Value) -> bool {
    let one = |key: &str| file[key].as_array().is_some_and(|a| a.len() == 1);
    KINDS.iter().all(|(key, _)| one(key))
        && file["gatewayclasses"][0]["spec"]["controllerName"] == "kedge.dev/gateway-controller"
        && file["gateways"][0]["spec"]["listeners"][0]["port"] == 80
        && file["httproutes"][0]["spec"]["rules"][0]["backendRefs"][0]["weight"] == 7
        && file["grpcroutes"][0]["spec"]["rules"][0]["matches"][0]["method"]["service"] == "a.B"
        && file["referencegrants"][0]["spec"]["to"][0]["kind"] == "Service"
}

/// Whether each Gateway API object in the state file carries a status (kedge's; ReferenceGrants
/// have none) and the resourceVersion the API server holds now: kedge's own status writes have
/// come back and are persisted.
fn settled(api: &FakeApi, file: &Value) -> bool {
    KINDS.iter().all(|(key, _)| {
        file[key].as_array().into_iter().flatten().all(|o| {
            let meta = &o["metadata"];
            let name = meta["name"].as_str().unwrap_or_default();
            (*key == "referencegrants" || !o["status"].is_null())
                && api
                    .get(key, meta["namespace"].as_str(), name)
                    .is_some_and(|now| now["metadata"]["resourceVersion"] == meta["resourceVersion"])
        })
    })
}

/// Watch requests on the Gateway API kinds so far, per kind.
fn gateway_watches(api: &FakeApi) -> Vec<usize> {
    let log = api.request_log();
    KINDS
        .iter()
        .map(|(_, path)| {
            log.iter()
                .filter(|l| l.starts_with(&format!("GET {path}?")) && l.contains("watch=true"))
                .count()
        })
        .collect()
}

#[test]
fn a_cluster_without_the_gateway_api_syncs_and_says_so_once() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("gateway-absent");
    let kedge = kedge_with_state(&api, &dir, &dir.path().join("state"), "");

    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
    let (ready, body) = readyz(&kedge);
    assert_eq!(ready, 200, "{body}");
    assert!(body.contains("live"), "{body}");
    kedge.wait_log(ABSENT, Duration::from_secs(10));
    // Discovery asked again (twice more) and still found nothing: said once all the same, and
    // nothing of the Gateway API was listed or watched.
    wait_until(Duration::from_secs(10), "discovery asked three times", || {
        api.request_log().iter().filter(|l| l.as_str() == DISCOVERY).count() >= 3
    });
    let said = kedge.logs().iter().filter(|l| l.contains(ABSENT)).count();
    assert_eq!(said, 1, "said once");
    let missing = kedge
        .logs()
        .into_iter()
        .find(|l| l.contains(ABSENT))
        .unwrap_or_default();
    for (kind, _) in KINDS {
        assert!(missing.contains(kind), "{kind} named in {missing:?}");
    }
    assert!(
        !api.request_log()
            .iter()
            .any(|l| l.contains("/gateways") || l.contains("/httproutes")),
        "{:#?}",
        api.request_log()
    );
    assert!(
        !kedge.logs().iter().any(|l| l.contains("watch failed")),
        "{:#?}",
        kedge.logs()
    );
    assert_eq!(readyz(&kedge).0, 200);
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
}

#[test]
fn gateway_api_crds_installed_later_are_watched_and_persisted() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("gateway-later");
    let state_dir = dir.path().join("state");
    let kedge = kedge_with_state(&api, &dir, &state_dir, "");
    kedge.wait_log(ABSENT, Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "the state file", || {
        state_file(&state_dir).is_some()
    });
    let file = state_file(&state_dir).unwrap_or_default();
    for (kind, _) in KINDS {
        assert_eq!(file[kind], json!([]), "{kind} in the state file while absent");
    }

    api.install_gateway_api();
    kedge.wait_log("the Gateway API is served now; watching it", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "a watch on every Gateway API kind", || {
        gateway_watches(&api).iter().all(|&n| n >= 1)
    });
    // Objects applied after the watches started reach the state file.
    apply_gateway_objects(&api);
    wait_until(Duration::from_secs(10), "the Gateway API objects persisted", || {
        state_file(&state_dir).is_some_and(|f| has_gateway_objects(&f))
    });
    // kedge's GatewayClass (controllerName kedge.dev/gateway-controller, the default
    // gateway_controller) is counted, another controller's is not.
    api.apply(
        "gatewayclasses",
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "other"}, "spec": {"controllerName": "acme.io/gateway-controller"}}),
    );
    wait_until(Duration::from_secs(10), "the other GatewayClass persisted", || {
        state_file(&state_dir).is_some_and(|f| f["gatewayclasses"].as_array().is_some_and(|a| a.len() == 2))
    });
    // The first build after the watch saw it says how many are kedge's.
    let applied = |l: &String| l.contains("applied") && l.contains("gatewayclasses") && l.contains("other");
    let mut counted = String::new();
    wait_until(
        Duration::from_secs(10),
        "a table published after the other GatewayClass",
        || {
            let logs = kedge.logs();
            let after = logs.iter().position(applied).map_or(logs.len(), |i| i + 1);
            counted = logs[after..]
                .iter()
                .find(|l| l.contains("route table published"))
                .cloned()
                .unwrap_or_default();
            !counted.is_empty()
        },
    );
    assert!(counted.contains("gateway_classes=1 "), "{counted}");
    // The cluster stayed ready and served its Ingress throughout.
    assert_eq!(readyz(&kedge).0, 200);
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
}

#[test]
fn the_state_file_round_trips_gateway_api_objects() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    api.install_gateway_api();
    apply_gateway_objects(&api);
    let dir = TempDir::new("gateway-persisted");
    let state_dir = dir.path().join("state");

    let mut first = kedge_with_state(&api, &dir, &state_dir, "sync_timeout = \"10s\"");
    // As they are once kedge's status writes on them have come back: a restarted kedge finds
    // them so, and writes no status of its own.
    wait_until(Duration::from_secs(10), "the Gateway API objects persisted", || {
        state_file(&state_dir).is_some_and(|f| has_gateway_objects(&f) && settled(&api, &f))
    });
    assert!(!first.logs().iter().any(|l| l.contains(ABSENT)), "{:#?}", first.logs());
    first.signal(crate::support::Signal::Term);
    assert!(first.wait_exit(Duration::from_secs(10)).success());
    let written = state_file(&state_dir).expect("state file");

    // Restarted while the API server is away: the file, Gateway API kinds and all, loads (a
    // file that does not is reported, and the live sync awaited) and is served from.
    api.pause();
    let second = kedge_with_state(&api, &dir, &state_dir, "sync_timeout = \"5m\"");
    second.wait_log(
        "cluster \"test\" not reachable; serving the state persisted at",
        Duration::from_secs(5),
    );
    assert_eq!(get(&second, "web.example.com", "/").0, 200);

    // Back: the live sync writes the same objects again.
    api.resume();
    second.wait_log(
        "its live state replaces the state persisted at",
        Duration::from_secs(20),
    );
    api.apply("ingresses", ingress("new", "kedge", "new.example.com", "/", "web"));
    wait_until(Duration::from_secs(10), "the state file rewritten live", || {
        state_file(&state_dir).is_some_and(|f| f["ingresses"].as_array().is_some_and(|a| a.len() == 2))
    });
    let again = state_file(&state_dir).expect("state file");
    assert!(has_gateway_objects(&again), "{again:#}");
    for (kind, _) in KINDS {
        assert_eq!(again[kind], written[kind], "{kind}");
    }
}

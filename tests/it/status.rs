//! Ingress status, end to end: kedge writes its `publish_addresses` into
//! `status.loadBalancer.ingress` of the Ingresses it serves (through the fixture API server's
//! status subresource), clears what it wrote when it stops serving one, never touches another
//! class's Ingress, writes nothing when nothing changed, and nothing at all without
//! publish addresses.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{class, gateway, gateway_class, http_route, ingress, service, slice};
use crate::support::{FakeApi, Kedge, TempDir, Upstream, get, wait_until};

const WAIT: Duration = Duration::from_secs(10);
const PUBLISH: &str = r#"publish_addresses = ["203.0.113.10", "edge.example.com"]"#;

/// What kedge writes for [`PUBLISH`].
fn ours() -> Value {
    json!([{"ip": "203.0.113.10"}, {"hostname": "edge.example.com"}])
}

/// The classes, a Service `web` with one endpoint, and a kedge-class Ingress `web` for
/// `web.example.com`. Returns the pods (keep them alive) and their port.
fn web_cluster(api: &FakeApi) -> (Vec<Upstream>, u16) {
    let (pods, port) = Upstream::pods("web", 2);
    api.apply("ingressclasses", class("kedge", "kedge.dev/ingress-controller"));
    api.apply("ingressclasses", class("nginx", "k8s.io/ingress-nginx"));
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", port, &["127.0.0.1"]));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    (pods, port)
}

/// `status.loadBalancer.ingress` of Ingress `default/name`, `Null` when absent.
fn lb(api: &FakeApi, name: &str) -> Value {
    let obj = api.get("ingresses", Some("default"), name).expect("the Ingress exists");
    obj["status"]["loadBalancer"]["ingress"].clone()
}

/// No addresses: the list absent, `null` or empty.
fn cleared(v: &Value) -> bool {
    v.is_null() || v.as_array().is_some_and(Vec::is_empty)
}

/// Replaces Ingress `name` with `edit` applied to it as stored, status included (as a user's
/// `kubectl edit` of the spec leaves the status alone).
fn edit(api: &FakeApi, name: &str, edit: impl FnOnce(&mut Value)) {
    let mut obj = api.get("ingresses", Some("default"), name).expect("the Ingress exists");
    edit(&mut obj);
    api.apply("ingresses", obj);
}

#[test]
fn a_served_ingress_gets_the_publish_addresses_and_another_class_none() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    // Another controller's Ingress, one with no status and one with its controller's address.
    api.apply("ingresses", ingress("plain", "nginx", "plain.example.com", "/", "web"));
    let mut theirs = ingress("theirs", "nginx", "theirs.example.com", "/", "web");
    theirs["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}});
    api.apply("ingresses", theirs);
    let dir = TempDir::new("status");
    let kedge = Kedge::follow(&api, &dir, PUBLISH);

    wait_until(WAIT, "the served Ingress to get kedge's addresses", || {
        lb(&api, "web") == ours()
    });
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
    assert!(
        api.request_log()
            .iter()
            .any(|r| r.starts_with("PATCH /apis/networking.k8s.io/v1/namespaces/default/ingresses/web/status")),
        "a PATCH of the status subresource: {:?}",
        api.request_log()
    );
    // The writer has run: the other class's Ingresses got nothing, and kept what they had.
    assert!(cleared(&lb(&api, "plain")), "{}", lb(&api, "plain"));
    assert_eq!(lb(&api, "theirs"), json!([{"ip": "198.51.100.1"}]));
    assert_eq!(api.status_writes("default", "plain"), 0);
    assert_eq!(api.status_writes("default", "theirs"), 0);
}

#[test]
fn the_status_is_cleared_when_kedge_stops_serving_the_ingress() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    // A second one, to lose its only valid rule.
    api.apply("ingresses", ingress("api", "kedge", "api.example.com", "/", "web"));
    let dir = TempDir::new("status");
    let kedge = Kedge::follow(&api, &dir, PUBLISH);
    wait_until(WAIT, "both Ingresses to get kedge's addresses", || {
        lb(&api, "web") == ours() && lb(&api, "api") == ours()
    });

    // Moved to another class: kedge takes its addresses back.
    edit(&api, "web", |i| i["spec"]["ingressClassName"] = json!("nginx"));
    wait_until(WAIT, "the status of the Ingress moved to nginx to be cleared", || {
        cleared(&lb(&api, "web"))
    });
    assert_eq!(get(&kedge, "web.example.com", "/").0, 404);

    // Still kedge's, but with no rule kedge can route (a resource backend): not served.
    edit(&api, "api", |i| {
        i["spec"]["rules"][0]["http"]["paths"][0]["backend"] =
            json!({"resource": {"apiGroup": "example.com", "kind": "Bucket", "name": "b"}});
    });
    wait_until(
        WAIT,
        "the status of the Ingress without a valid rule to be cleared",
        || cleared(&lb(&api, "api")),
    );
    assert_eq!(get(&kedge, "api.example.com", "/").0, 404);

    // Back to kedge: the addresses come back.
    edit(&api, "web", |i| i["spec"]["ingressClassName"] = json!("kedge"));
    wait_until(WAIT, "the Ingress moved back to get kedge's addresses", || {
        lb(&api, "web") == ours()
    });
}

#[test]
fn nothing_is_written_when_nothing_changed() {
    let api = FakeApi::start();
    let (_pods, port) = web_cluster(&api);
    let dir = TempDir::new("status");
    let kedge = Kedge::follow(&api, &dir, PUBLISH);
    wait_until(WAIT, "the served Ingress to get kedge's addresses", || {
        lb(&api, "web") == ours()
    });
    let writes = api.status_writes("default", "web");
    assert_eq!(writes, 1, "one write sets the status");

    // Changes that rebuild the table without changing any status: a new endpoint and an
    // unrelated Service. Traffic reaching the new endpoint shows a table built after them.
    api.apply("services", service("unrelated"));
    api.apply("endpointslices", slice("web", port, &["127.0.0.1", "127.0.0.2"]));
    wait_until(WAIT, "traffic to reach the new endpoint", || {
        (0..4).any(|_| get(&kedge, "web.example.com", "/").1.as_deref() == Some("web-1"))
    });
    // A new Ingress gets its status: the writer has caught up with a build at least as new
    // as those changes.
    api.apply("ingresses", ingress("later", "kedge", "later.example.com", "/", "web"));
    wait_until(WAIT, "the new Ingress to get kedge's addresses", || {
        lb(&api, "later") == ours()
    });

    assert_eq!(
        api.status_writes("default", "web"),
        writes,
        "no write when the status is already right"
    );
    assert_eq!(
        api.status_writes("default", "later"),
        1,
        "one write per Ingress that needs one"
    );
}

/// Status writes go at the cluster's `status_writes_per_second`, with a burst of as many: 30
/// Ingresses at 10 a second take at least two seconds from the first write to the last (the
/// first 10 at once, then one every 100 ms), and every one of them gets its status.
#[test]
fn status_writes_are_paced() {
    let api = FakeApi::start();
    let (_pods, _port) = web_cluster(&api);
    let names: Vec<String> = (0..30).map(|i| format!("app-{i}")).collect();
    for n in &names {
        api.apply(
            "ingresses",
            ingress(n, "kedge", &format!("{n}.example.com"), "/", "web"),
        );
    }
    let dir = TempDir::new("status");
    let _kedge = Kedge::follow(&api, &dir, &format!("{PUBLISH}\nstatus_writes_per_second = 10"));
    let written = || names.iter().filter(|n| api.status_writes("default", n) > 0).count();
    wait_until(WAIT, "the first status write", || written() > 0);
    let first = std::time::Instant::now();
    wait_until(Duration::from_secs(30), "every Ingress's status written", || {
        written() == names.len()
    });
    let took = first.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "30 writes at 10 a second (a burst of 10) took {took:?} from the first to the last"
    );
    for n in &names {
        assert_eq!(lb(&api, n), ours(), "{n}");
        assert_eq!(api.status_writes("default", n), 1, "{n}");
    }
}

/// kedge's status write coming back through the watch is a change of status alone: not a line
/// of the change log at info (at 10k Ingresses that was 10k lines at start-up). A change of
/// annotations, which shapes routes, is.
#[test]
fn a_status_write_coming_back_is_not_logged_as_a_change() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    let dir = TempDir::new("status");
    let kedge = Kedge::follow(&api, &dir, PUBLISH);
    wait_until(WAIT, "the served Ingress to get kedge's addresses", || {
        lb(&api, "web") == ours()
    });
    // After the write: its watch event comes before this one's.
    edit(&api, "web", |i| {
        i["metadata"]["annotations"] = json!({"example.com/team": "web"});
    });
    let changes = || -> Vec<String> {
        kedge
            .logs()
            .into_iter()
            .filter(|l| l.contains("ingresses") && l.contains("default/web"))
            .filter(|l| ["applied", "deleted", "status changed"].iter().any(|w| l.contains(w)))
            .collect()
    };
    wait_until(WAIT, "the annotation change in the log", || !changes().is_empty());
    let lines = changes();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("applied"), "{lines:#?}");
    assert_eq!(api.status_writes("default", "web"), 1);
}

#[test]
fn without_publish_addresses_no_status_is_written() {
    let api = FakeApi::start();
    let (_pods, port) = web_cluster(&api);
    let dir = TempDir::new("status");
    let kedge = Kedge::follow(&api, &dir, "");
    kedge.wait_log("no publish_addresses", WAIT);
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
    // Rebuilds come and go; still nothing is written.
    api.apply("endpointslices", slice("web", port, &["127.0.0.1", "127.0.0.2"]));
    wait_until(WAIT, "traffic to reach the new endpoint", || {
        (0..4).any(|_| get(&kedge, "web.example.com", "/").1.as_deref() == Some("web-1"))
    });
    assert_eq!(api.status_writes("default", "web"), 0);
    assert!(cleared(&lb(&api, "web")));
    let patches: Vec<String> = api
        .request_log()
        .into_iter()
        .filter(|r| !r.starts_with("GET"))
        .collect();
    assert!(patches.is_empty(), "kedge only reads: {patches:?}");
    let said = kedge
        .logs()
        .iter()
        .filter(|l| l.contains("no publish_addresses"))
        .count();
    assert_eq!(said, 1, "said once");
}

#[test]
fn the_shipped_rbac_covers_every_request_kedge_makes() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    // With the Gateway API installed, so that its discovery, lists and watches are checked too.
    api.install_gateway_api();
    let dir = TempDir::new("rbac");
    let kedge = Kedge::follow(&api, &dir, PUBLISH);
    wait_until(Duration::from_secs(10), "the HTTPRoutes watched", || {
        api.request_log()
            .iter()
            .any(|l| l.starts_with("GET /apis/gateway.networking.k8s.io/v1/httproutes?") && l.contains("watch=true"))
    });
    // kedge's GatewayClass, a Gateway on kedge's port and a route, whose status kedge writes.
    api.apply("gatewayclasses", gateway_class("kedge", "kedge.dev/gateway-controller"));
    let listener = json!([{"name": "http", "port": kedge.addr().port(), "protocol": "HTTP"}]);
    api.apply("gateways", gateway("default", "edge", "kedge", listener));
    api.apply(
        "httproutes",
        http_route(
            "default",
            "web",
            json!([{"name": "edge"}]),
            json!([]),
            json!([{"name": "web", "port": 80}]),
        ),
    );
    let written = [
        ("gatewayclasses", None, "kedge"),
        ("gateways", Some("default"), "edge"),
        ("httproutes", Some("default"), "web"),
    ];
    wait_until(Duration::from_secs(10), "the Gateway API status is written", || {
        written
            .iter()
            .all(|(r, ns, name)| api.status_writes_of(r, *ns, name) >= 1)
    });
    wait_until(Duration::from_secs(10), "the status is written", || {
        lb(&api, "web") == ours()
    });
    // The Lease created, then renewed (an update) at least once.
    wait_until(Duration::from_secs(10), "the status Lease to be renewed", || {
        api.writes("leases", Some("default"), "kedge-kedge") >= 2
    });
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/rbac.yaml")).unwrap();
    // "METHOD /api(s)/.../RESOURCE[/name[/sub]]?query" → (resource[/sub], verb).
    let mut needed = std::collections::BTreeSet::new();
    for line in api.request_log() {
        let (method, rest) = line.split_once(' ').unwrap_or(("", &line));
        let path = rest.split(['?', ' ']).next().unwrap_or("");
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // api/v1/[namespaces/NS/]RES[/NAME[/SUB]] or apis/GROUP/VERSION/[namespaces/NS/]RES[...]
        let mut rest: &[&str] = if parts.first() == Some(&"api") {
            &parts[2..]
        } else {
            &parts[3.min(parts.len())..]
        };
        if rest.first() == Some(&"namespaces") && rest.len() > 2 {
            rest = &rest[2..];
        }
        let Some(resource) = rest.first() else { continue };
        let resource = match rest.get(2) {
            Some(sub) => format!("{resource}/{sub}"),
            None => (*resource).to_owned(),
        };
        let verb = match (method, line.contains("watch=true")) {
            ("GET", true) => "watch",
            ("GET", false) if rest.len() > 1 => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", _) => "delete",
            (m, _) => m,
        };
        needed.insert((resource, verb.to_owned()));
    }
    for status in [
        "ingresses/status",
        "gatewayclasses/status",
        "gateways/status",
        "httproutes/status",
    ] {
        assert!(needed.iter().any(|(r, _)| r == status), "{status}: {needed:?}");
    }
    assert!(
        needed.contains(&("namespaces".to_owned(), "watch".to_owned())),
        "{needed:?}"
    );
    assert!(
        needed.contains(&("referencegrants".to_owned(), "watch".to_owned())),
        "{needed:?}"
    );
    for verb in ["get", "create", "update"] {
        assert!(needed.contains(&("leases".to_owned(), verb.to_owned())), "{needed:?}");
    }
    for (resource, verb) in &needed {
        // The rule naming the resource also grants the verb.
        let granted = rbac
            .split("- apiGroups:")
            .any(|rule| rule.contains(&format!("\"{resource}\"")) && rule.contains(&format!("\"{verb}\"")));
        assert!(
            granted,
            "config/rbac.yaml does not grant {verb} on {resource}: {needed:?}"
        );
    }
}

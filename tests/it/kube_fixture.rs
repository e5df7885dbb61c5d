//! The fixture API server (`support::FakeApi`) through the real kube client, as the control
//! plane will use it: lists, gets and a refused token; the watcher and a reflector through adds,
//! deletes, selectors, bookmarks, an outage and a 410; status and Lease writes.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::{FakeApi, TempDir};

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn lists_gets_and_refuses_a_wrong_token() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-list");
    api.apply("services", service("default", "web", "web"));
    api.apply("services", service("default", "api", "api"));
    let mut older = service("shop", "web", "web");
    older["metadata"]["creationTimestamp"] = json!("2020-01-02T03:04:05Z");
    api.apply("services", older);
    api.apply(
        "nodes",
        json!({"metadata": {"name": "node-a"},
               "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.7"}]}}),
    );
    let client = client(&api, &dir).await;
    let all: Api<Service> = Api::all(client.clone());

    let list = within("a list", all.list(&ListParams::default())).await.expect("list");
    assert_eq!(keys(&list.items), ["default/api", "default/web", "shop/web"]);
    assert_eq!(list.metadata.resource_version.as_deref(), Some("4"));
    let web = &list.items[1];
    assert_eq!(
        web.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("192.0.2.10")
    );
    assert!(web.metadata.uid.is_some() && web.metadata.creation_timestamp.is_some());

    let by_label = all.list(&ListParams::default().labels("app=web")).await.expect("list");
    assert_eq!(keys(&by_label.items), ["default/web", "shop/web"]);
    let by_label = all
        .list(&ListParams::default().labels("app!=web,app"))
        .await
        .expect("list");
    assert_eq!(keys(&by_label.items), ["default/api"]);
    let by_set = all
        .list(&ListParams::default().labels("app in (api,other)"))
        .await
        .expect("list");
    assert_eq!(keys(&by_set.items), ["default/api"]);
    let by_field = all
        .list(&ListParams::default().fields("metadata.namespace=shop"))
        .await
        .expect("list");
    assert_eq!(keys(&by_field.items), ["shop/web"]);

    // Pages: a snapshot behind the continue token, at the first page's resourceVersion.
    let first = all.list(&ListParams::default().limit(2)).await.expect("page 1");
    assert_eq!(keys(&first.items), ["default/api", "default/web"]);
    let token = first.metadata.continue_.clone().expect("a continue token");
    api.apply("services", service("default", "zzz", "web"));
    let second = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(keys(&second.items), ["shop/web"]);
    assert_eq!(second.metadata.continue_, None);
    assert_eq!(second.metadata.resource_version, first.metadata.resource_version);

    let shop: Api<Service> = Api::namespaced(client.clone(), "shop");
    assert_eq!(
        keys(&shop.list(&ListParams::default()).await.expect("list").items),
        ["shop/web"]
    );
    let got = shop.get("web").await.expect("get");
    let created = got.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string());
    assert_eq!(
        created.as_deref(),
        Some("2020-01-02T03:04:05Z"),
        "a creationTimestamp the test sets is kept"
    );
    assert_eq!(
        got.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str),
        Some("web")
    );
    match shop.get("api").await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404, got {:?}", other.map(|s| s.name_any())),
    }

    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        keys(&nodes.list(&ListParams::default()).await.expect("nodes").items),
        ["node-a"]
    );

    let log = api.request_log();
    assert!(
        log.contains(&"GET /api/v1/namespaces/shop/services/web".to_owned()),
        "{log:#?}"
    );
    assert!(log.contains(&"GET /api/v1/nodes?".to_owned()), "{log:#?}");

    let bad_path = dir.path().join("bad-kubeconfig");
    api.kubeconfig_with_token(&bad_path, "not-the-token");
    let text = std::fs::read_to_string(&bad_path).expect("kubeconfig");
    assert!(text.contains(&format!("server: https://{}\n", api.addr())), "{text}");
    let refused = Api::<Service>::all(client_from(&bad_path).await);
    match within("a refused list", refused.list(&ListParams::default())).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (401, "Unauthorized")),
        other => panic!("expected 401, got {:?}", other.map(|l| keys(&l.items))),
    }
}

#[tokio::test]
async fn watcher_sees_init_then_changes() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-watch");
    api.apply("services", service("default", "web", "web"));
    api.apply("services", service("default", "api", "api"));
    let client = client(&api, &dir).await;

    let mut events = spawn_events(watcher(Api::<Service>::all(client.clone()), watcher::Config::default()));
    for expected in ["Init", "InitApply default/api", "InitApply default/web", "InitDone"] {
        assert_eq!(describe(&next(&mut events).await), expected);
    }
    api.apply("services", service("default", "new", "new"));
    assert_eq!(describe(&next(&mut events).await), "Apply default/new");
    api.apply("services", service("default", "web", "web-v2"));
    match next(&mut events).await {
        Ok(Event::Apply(svc)) => assert_eq!(svc.labels().get("app").map(String::as_str), Some("web-v2")),
        other => panic!("expected the relabelled Service, got {}", describe(&other)),
    }
    api.delete("services", Some("default"), "api");
    assert_eq!(describe(&next(&mut events).await), "Delete default/api");

    let log = api.request_log();
    assert_eq!(
        log[..2],
        [
            "GET /api/v1/services?&limit=500",
            "GET /api/v1/services?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=2",
        ]
    );

    // The same through a reflector: its store ends with what the server holds.
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(writer, watcher(Api::all(client.clone()), watcher::Config::default()));
    let _events = spawn_events(stream);
    within("the reflector's first sync", reader.wait_until_ready())
        .await
        .expect("store ready");
    assert_eq!(keys(reader.state()), ["default/new", "default/web"]);
    api.apply("services", service("shop", "web", "web"));
    api.delete("services", Some("default"), "new");
    eventually("the store to follow", || {
        keys(reader.state()) == ["default/web", "shop/web"]
    })
    .await;

    // And through a streaming list (sendInitialEvents, ended by an annotated bookmark).
    let streaming = watcher::Config::default().streaming_lists();
    let mut events = spawn_events(watcher(Api::<Service>::all(client), streaming));
    for expected in ["Init", "InitApply default/web", "InitApply shop/web", "InitDone"] {
        assert_eq!(describe(&next(&mut events).await), expected);
    }
    let log = api.request_log();
    let last = log.last().expect("a request");
    assert!(last.contains("sendInitialEvents=true"), "{last}");
}

#[tokio::test]
async fn selectors_apply_to_watches() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-select");
    api.apply("services", service("default", "web", "web"));
    api.apply("services", service("default", "api", "api"));
    let client = client(&api, &dir).await;

    let config = watcher::Config::default().labels("app=web");
    let mut events = spawn_events(watcher(Api::<Service>::all(client), config));
    for expected in ["Init", "InitApply default/web", "InitDone"] {
        assert_eq!(describe(&next(&mut events).await), expected);
    }
    // An object that starts matching is ADDED; one that stops matching is DELETED.
    api.apply("services", service("default", "api", "web"));
    assert_eq!(describe(&next(&mut events).await), "Apply default/api");
    api.apply("services", service("default", "web", "other"));
    assert_eq!(describe(&next(&mut events).await), "Delete default/web");
    api.apply("services", service("default", "unrelated", "other"));
    api.delete("services", Some("default"), "api");
    assert_eq!(describe(&next(&mut events).await), "Delete default/api");
}

#[tokio::test]
async fn bookmarks_arrive_and_leave_the_watcher_alone() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-bookmarks");
    let web = api.apply("services", service("default", "web", "web"));
    let client = client(&api, &dir).await;
    let all: Api<Service> = Api::all(client.clone());

    // The raw stream (kube asks for bookmarks by default): ADDED for what exists (from "0"), then
    // bookmarks carrying the latest version.
    let raw = within("a watch", all.watch(&WatchParams::default(), "0"))
        .await
        .expect("watch");
    let mut raw = Box::pin(raw);
    match within("an event", raw.next()).await {
        Some(Ok(WatchEvent::Added(svc))) => assert_eq!(key(&svc), "default/web"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    match within("a bookmark", raw.next()).await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(
                Some(b.metadata.resource_version.as_str()),
                web["metadata"]["resourceVersion"].as_str()
            );
            assert_eq!((b.types.api_version.as_str(), b.types.kind.as_str()), ("v1", "Service"));
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    drop(raw);
    eventually("the raw watch to close", || api.open_watches() == 0).await;

    // The watcher (bookmarks on by default) through several: no event, no error, no new watch.
    let mut events = spawn_events(watcher(all, watcher::Config::default()));
    for expected in ["Init", "InitApply default/web", "InitDone"] {
        assert_eq!(describe(&next(&mut events).await), expected);
    }
    eventually("the watcher's watch", || api.open_watches() == 1).await;
    let before = api.bookmarks_sent();
    eventually("two more bookmarks", || api.bookmarks_sent() >= before + 2).await;
    assert!(events.try_recv().is_err(), "bookmarks must not surface as events");
    api.apply("services", service("default", "api", "api"));
    assert_eq!(describe(&next(&mut events).await), "Apply default/api");
    assert_eq!(api.watch_count(), 2, "{:#?}", api.request_log());
}

/// The API server writes each watch event with its type before its object (Go's field order);
/// a client that reads the type first decodes the object straight into its type, without
/// buffering it. The fixture must not cost kedge what no real cluster would.
#[tokio::test]
async fn watch_events_come_type_first_one_per_line() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-raw-watch");
    api.apply("services", service("default", "web", "web"));
    let client = client(&api, &dir).await;

    let request = http::Request::get("/api/v1/services?watch=true&resourceVersion=0&timeoutSeconds=1")
        .body(Vec::new())
        .expect("request");
    let body = within("a watch that times out", client.request_text(request))
        .await
        .expect("watch");
    let lines: Vec<&str> = body.lines().collect();
    assert!(!lines.is_empty(), "{body}");
    for line in &lines {
        assert!(line.starts_with(r#"{"type":""#), "{line}");
        let event: Value = serde_json::from_str(line).expect("one event per line");
        assert!(event["object"].is_object(), "{line}");
    }
    assert!(lines[0].starts_with(r#"{"type":"ADDED","object":{"#), "{}", lines[0]);
}

#[tokio::test]
async fn an_expired_watch_relists_after_an_outage() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-gone");
    api.apply("services", service("default", "web", "web"));
    let old = api.apply("services", service("default", "old", "old"));
    let listed_at = old["metadata"]["resourceVersion"].as_str().expect("rv").to_owned();
    let client = client(&api, &dir).await;
    let all: Api<Service> = Api::all(client.clone());

    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(writer, watcher(all.clone(), watcher::Config::default())).backoff(Quick);
    let mut events = spawn_events(stream);
    within("the first sync", reader.wait_until_ready())
        .await
        .expect("store ready");
    eventually("the watch", || api.open_watches() == 1).await;

    api.pause();
    assert_eq!(api.open_watches(), 0);
    assert!(
        within("a list during the outage", all.list(&ListParams::default()))
            .await
            .is_err()
    );
    api.apply("services", service("default", "late", "late"));
    api.delete("services", Some("default"), "old");
    api.compact();
    api.resume();

    eventually("the store after the relist", || {
        keys(reader.state()) == ["default/late", "default/web"]
    })
    .await;
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push(describe(&ev));
    }
    assert!(seen.iter().any(|e| e == "WatchError 410"), "{seen:#?}");

    // The log: list, watch from the list's version, (outage), the same watch again (410), relist.
    let log = api.request_log();
    let lists: Vec<usize> = (0..log.len())
        .filter(|&i| log[i].starts_with("GET /api/v1/services?&limit=500"))
        .collect();
    let expired_watch = format!("watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={listed_at}");
    let watches: Vec<usize> = (0..log.len()).filter(|&i| log[i].ends_with(&expired_watch)).collect();
    assert!(lists.len() >= 2 && watches.len() >= 2, "{log:#?}");
    assert!(
        lists[0] < watches[0] && watches[watches.len() - 1] < lists[lists.len() - 1],
        "{log:#?}"
    );

    // The 410 itself, on the wire.
    let mut stale = Box::pin(all.watch(&WatchParams::default(), &listed_at).await.expect("watch"));
    match within("an ERROR event", stale.next()).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(within("the end of the stream", stale.next()).await.is_none());
}

#[tokio::test]
async fn status_writes_are_stored_counted_and_watched() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-status");
    api.apply("ingresses", ingress("default", "web"));
    let client = client(&api, &dir).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    let mut events = spawn_events(watcher(Api::<Ingress>::all(client), watcher::Config::default()));
    for expected in ["Init", "InitApply default/web", "InitDone"] {
        assert_eq!(describe(&next(&mut events).await), expected);
    }

    let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}});
    let patched = within(
        "a merge patch",
        ingresses.patch_status("web", &PatchParams::default(), &Patch::Merge(&lb)),
    )
    .await
    .expect("patch status");
    assert_eq!(lb_addresses(&patched), ["203.0.113.10"]);
    assert_eq!(api.status_writes("default", "web"), 1);
    let stored = api.get("ingresses", Some("default"), "web").expect("stored");
    assert_eq!(stored["status"], lb["status"]);
    assert_eq!(
        stored["metadata"]["generation"], 1,
        "status writes leave generation alone"
    );
    assert_eq!(lb_addresses(&applied(next(&mut events).await)), ["203.0.113.10"]);
    // Who wrote what, as the API server records it: the test's apply as kubectl's, the patch
    // under the client's User-Agent (no fieldManager given), for the status subresource.
    let managers = |o: &Value| -> Value {
        let entries = o["metadata"]["managedFields"].as_array().expect("managedFields");
        entries
            .iter()
            .map(|e| json!([e["manager"], e["operation"], e["subresource"]]))
            .collect()
    };
    // kube-rs sends no User-Agent: the manager is empty, as the API server would record it.
    assert_eq!(
        managers(&stored),
        json!([["kubectl-client-side-apply", "Update", null], ["", "Update", "status"]])
    );
    assert_eq!(
        stored["metadata"]["managedFields"][1]["fieldsV1"],
        json!({"f:status": {".": {}, "f:loadBalancer": {".": {}, "f:ingress": {}}}})
    );
    assert_eq!(
        stored["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:rules"],
        json!({}),
        "a list is a leaf"
    );

    let apply = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "status": {"loadBalancer": {"ingress": [{"hostname": "edge.example.com"}]}},
    });
    let params = PatchParams::apply("kedge");
    let patched = ingresses
        .patch_status("web", &params, &Patch::Apply(&apply))
        .await
        .expect("apply");
    assert_eq!(lb_addresses(&patched), ["edge.example.com"]);
    assert_eq!(api.status_writes("default", "web"), 2);
    assert_eq!(lb_addresses(&applied(next(&mut events).await)), ["edge.example.com"]);
    let log = api.request_log();
    let last = log.last().expect("a request");
    assert!(
        last.starts_with(
            "PATCH /apis/networking.k8s.io/v1/namespaces/default/ingresses/web/status?&fieldManager=kedge"
        ),
        "{last}"
    );

    // The same status again: counted, but no new resourceVersion and no event.
    let again = ingresses
        .patch_status("web", &params, &Patch::Apply(&apply))
        .await
        .expect("apply");
    assert_eq!(again.metadata.resource_version, patched.metadata.resource_version);
    assert_eq!(
        again.metadata.managed_fields, patched.metadata.managed_fields,
        "a write that changes nothing records nothing"
    );
    let stored = api.get("ingresses", Some("default"), "web").expect("stored");
    assert_eq!(
        managers(&stored),
        json!([
            ["kubectl-client-side-apply", "Update", null],
            ["", "Update", "status"],
            ["kedge", "Apply", "status"]
        ])
    );

    // A JSON patch; a status write that tries to change the spec changes only the status.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/status/loadBalancer/ingress/0/hostname", "value": "edge2.example.com"},
        {"op": "replace", "path": "/spec/rules/0/host", "value": "evil.example.com"},
    ]))
    .expect("JSON patch");
    let patched = ingresses
        .patch_status("web", &PatchParams::default(), &Patch::Json::<()>(ops))
        .await
        .expect("json patch");
    assert_eq!(lb_addresses(&patched), ["edge2.example.com"]);
    let host = |i: &Ingress| {
        i.spec
            .as_ref()
            .and_then(|s| s.rules.as_ref())
            .map(|r| r[0].host.clone())
    };
    assert_eq!(host(&patched), Some(Some("web.example.com".to_owned())));
    assert_eq!(lb_addresses(&applied(next(&mut events).await)), ["edge2.example.com"]);

    // A PUT of the status.
    let mut whole = patched;
    let status_json = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.11"}]}});
    whole.status = Some(serde_json::from_value(status_json).expect("status"));
    let replaced = ingresses
        .replace_status("web", &PostParams::default(), &whole)
        .await
        .expect("replace status");
    assert_eq!(lb_addresses(&replaced), ["203.0.113.11"]);
    assert_eq!(lb_addresses(&applied(next(&mut events).await)), ["203.0.113.11"]);
    assert_eq!(api.status_writes("default", "web"), 5);
    assert_eq!(api.writes("ingresses", Some("default"), "web"), 5);

    // The test's own apply (a spec change) bumps generation.
    let mut changed = ingress("default", "web");
    changed["spec"]["rules"][0]["host"] = json!("www.example.com");
    let stored = api.apply("ingresses", changed);
    assert_eq!(stored["metadata"]["generation"], 2);
    assert_eq!(
        host(&applied(next(&mut events).await)),
        Some(Some("www.example.com".to_owned()))
    );
}

#[tokio::test]
async fn leases_take_create_replace_patch_and_apply() {
    let api = FakeApi::start();
    let dir = TempDir::new("kube-lease");
    let client = client(&api, &dir).await;
    let leases: Api<Lease> = Api::namespaced(client, "kedge-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "kedge"},
        "spec": {"holderIdentity": "edge-a", "leaseDurationSeconds": 15},
    }))
    .expect("lease");
    let holder = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone());

    let created = within("a create", leases.create(&PostParams::default(), &lease))
        .await
        .expect("create");
    assert_eq!(holder(&created).as_deref(), Some("edge-a"));
    match leases.create(&PostParams::default(), &lease).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "AlreadyExists")),
        other => panic!("expected 409, got {:?}", other.map(|l| l.name_any())),
    }

    // Replace with the current resourceVersion wins; with a stale one it conflicts.
    let mut next_holder = created.clone();
    next_holder.spec.as_mut().expect("spec").holder_identity = Some("edge-b".to_owned());
    let replaced = leases
        .replace("kedge", &PostParams::default(), &next_holder)
        .await
        .expect("replace");
    assert_eq!(holder(&replaced).as_deref(), Some("edge-b"));
    match leases.replace("kedge", &PostParams::default(), &next_holder).await {
        Err(kube::Error::Api(status)) => assert_eq!((status.code, status.reason.as_str()), (409, "Conflict")),
        other => panic!("expected 409, got {:?}", other.map(|l| l.name_any())),
    }

    let merge = json!({"spec": {"holderIdentity": "edge-c"}});
    let patched = leases
        .patch("kedge", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("patch");
    assert_eq!(holder(&patched).as_deref(), Some("edge-c"));
    assert_eq!(patched.spec.as_ref().and_then(|s| s.lease_duration_seconds), Some(15));
    assert_eq!(
        api.writes("leases", Some("kedge-system"), "kedge"),
        3,
        "refused writes are not counted"
    );

    // Server-side apply creates what is missing; a client's delete removes it.
    let apply = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "other"},
        "spec": {"holderIdentity": "edge-d"},
    });
    let made = leases
        .patch("other", &PatchParams::apply("kedge"), &Patch::Apply(&apply))
        .await
        .expect("apply");
    assert_eq!(holder(&made).as_deref(), Some("edge-d"));
    assert!(api.get("leases", Some("kedge-system"), "other").is_some());
    leases.delete("other", &DeleteParams::default()).await.expect("delete");
    assert_eq!(api.get("leases", Some("kedge-system"), "other"), None);
    assert_eq!(api.writes("leases", Some("kedge-system"), "other"), 2);
}

/// Retries a failed watch after 50 ms, always: quick enough for an outage the test ends itself.
struct Quick;

impl Iterator for Quick {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_millis(50))
    }
}

impl kube::runtime::utils::Backoff for Quick {
    fn reset(&mut self) {}
}

type Events<K> = mpsc::UnboundedReceiver<Result<Event<K>, watcher::Error>>;

/// Polls `stream` on a task of its own (so its watch stays open between the test's reads) and
/// hands its items over.
fn spawn_events<K: Send + 'static>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> Events<K> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next<K>(events: &mut Events<K>) -> Result<Event<K>, watcher::Error> {
    within("a watcher event", events.recv())
        .await
        .expect("the watcher stopped")
}

fn describe<K: Resource>(ev: &Result<Event<K>, watcher::Error>) -> String {
    match ev {
        Ok(Event::Init) => "Init".to_owned(),
        Ok(Event::InitApply(o)) => format!("InitApply {}", key(o)),
        Ok(Event::InitDone) => "InitDone".to_owned(),
        Ok(Event::Apply(o)) => format!("Apply {}", key(o)),
        Ok(Event::Delete(o)) => format!("Delete {}", key(o)),
        Err(watcher::Error::WatchError(status)) => format!("WatchError {}", status.code),
        Err(e) => format!("Error {e}"),
    }
}

fn applied<K: Resource>(ev: Result<Event<K>, watcher::Error>) -> K {
    match ev {
        Ok(Event::Apply(o)) => o,
        other => panic!("expected Apply, got {}", describe(&other)),
    }
}

fn key<K: Resource>(o: &K) -> String {
    let meta = o.meta();
    let name = meta.name.clone().unwrap_or_default();
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// `namespace/name` of each object (given as `&K` or `Arc<K>`), sorted.
fn keys<K: Resource>(objects: impl IntoIterator<Item = impl std::ops::Deref<Target = K>>) -> Vec<String> {
    let mut keys: Vec<String> = objects.into_iter().map(|o| key(&*o)).collect();
    keys.sort();
    keys
}

fn lb_addresses(ing: &Ingress) -> Vec<String> {
    let lb = ing.status.as_ref().and_then(|s| s.load_balancer.as_ref());
    lb.and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        .collect()
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// Polls `cond` every 10 ms until it holds; fails the test after `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn client(api: &FakeApi, dir: &TempDir) -> Client {
    let path = dir.path().join("kubeconfig");
    api.write_kubeconfig(&path);
    client_from(&path).await
}

/// A client from a kubeconfig file, as the control plane makes one, except that every request
/// (and every silence in a watch, which bookmarks break every 500 ms) is bounded by `WAIT`.
async fn client_from(path: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    config.connect_timeout = Some(WAIT);
    config.read_timeout = Some(WAIT);
    config.write_timeout = Some(WAIT);
    config.reset_reader_on_write = true;
    Client::try_from(config).expect("kube client")
}

fn service(namespace: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "192.0.2.10",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    })
}

fn ingress(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ingressClassName": "kedge",
            "rules": [{
                "host": "web.example.com",
                "http": {"paths": [{
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}},
                }]},
            }],
        },
    })
}

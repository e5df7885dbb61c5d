//! Gateway API status: what [`attach`](super::translate::gateway::attach) decided, written into
//! the status of kedge's GatewayClasses (`Accepted`, `supportedFeatures`), Gateways (`Accepted`,
//! `Programmed`, `addresses`, per listener `supportedKinds`, `attachedRoutes` and conditions)
//! and the parent entries of HTTPRoutes and GRPCRoutes that name kedge's Gateways (`parentRef`,
//! `controllerName`, `Accepted`, `ResolvedRefs`).
//!
//! [`view_with`] is pure: from a build's attachment and objects it makes the status each object
//! should have and keeps only the objects whose status differs. Every condition carries the
//! object's `metadata.generation` as `observedGeneration`; a condition whose status did not
//! change keeps its `lastTransitionTime` (copied as read, so that a rebuild that changes
//! nothing compares equal); conditions of types kedge does not set are kept as they are, and
//! so are the route parent entries of other controllers (another `controllerName`). A route
//! that no longer names kedge's Gateways loses kedge's entries.
//!
//! The control thread hands each build's view to a [`Writer`] (a `watch` channel: only the
//! latest matters) and goes on; the writer task patches the `/status` subresource of each
//! object with a JSON merge patch carrying the resourceVersion the view was made from (a list
//! replaces a list whole, so a concurrent change of another controller's parent entry gives a
//! 409 Conflict instead of being lost; the change itself brings the next view). As the Ingress
//! writer (`super::status`, whose loop it runs: `write_loop`), it writes only while this
//! kedge holds the cluster's status Lease, never writes again what it wrote until the watch
//! brings the object back, logs a failing object once per failure streak and retries after a
//! while.
//!
//! The writer and the Lease election start with the first build that has one of kedge's
//! GatewayClasses: a cluster without them never writes, nor takes the Lease for them.

use std::collections::HashMap;

use kube::Client;
use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::gateway_types::{Gateway, GatewayClass, GrpcRoute, HttpRoute, ParentRef, RouteParentStatus, RouteStatus};
use super::status::{Logged, Pace, Patching, WriterKind, write_loop};
use super::translate::Objects;
use super::translate::gateway::{Attachment, Cond, RouteObject, RouteParent, RouteRecords, RouteRef, same_generation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The Gateway API features kedge implements, as `status.supportedFeatures` of its
/// GatewayClasses says: only what the code does and an end-to-end test shows (attachment and
/// status here, rules in the route translation and the data plane; the test
/// `features_are_known_and_each_is_tested` names the test of each). Sorted, as the API keeps
/// them.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "GRPCRoute",
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayStaticAddresses",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteCORS",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// The kinds whose status kedge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
}

impl Resource {
    fn kind(self) -> &'static str {
        match self {
            Resource::GatewayClass => "GatewayClass",
            Resource::Gateway => "Gateway",
            Resource::HttpRoute => "HTTPRoute",
            Resource::GrpcRoute => "GRPCRoute",
        }
    }
}

/// (kind, namespace or "", name).
pub type Key = (Resource, String, String);

/// One object whose status should change.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Shared, as the rest: a view hands every pending item over again (10k of them while
    /// kedge's first status writes at 10k routes are under way), and the writer plans each.
    pub key: Arc<Key>,
    /// The object's resourceVersion in the view: the write's precondition.
    pub rv: Option<Arc<str>>,
    /// The status fields kedge owns, whole (each list replaces the object's in the patch);
    /// shared with the views that decide the same (see [`Unchanged`]).
    pub status: Arc<Value>,
}

/// `True`/`False`.
fn truth(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Conditions as they should be: kedge's (`observedGeneration` = `generation`; the current
/// `lastTransitionTime` when the status is unchanged, else `now`), then the current ones of
/// other types, as they are.
fn conditions(ours: &[Cond], current: &Value, generation: Option<i64>, now: &str) -> Value {
    let current = current.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut out: Vec<Value> = ours
        .iter()
        .map(|c| {
            let status = truth(c.status);
            let was = current.iter().find(|v| v["type"] == c.type_);
            let since = match was {
                Some(v) if v["status"] == status && !v["lastTransitionTime"].is_null() => {
                    v["lastTransitionTime"].clone()
                }
                _ => json!(now),
            };
            let mut v = json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": since,
            });
            if let Some(g) = generation {
                v["observedGeneration"] = json!(g);
            }
            v
        })
        .collect();
    out.extend(
        current
            .iter()
            .filter(|v| !ours.iter().any(|c| v["type"] == c.type_))
            .cloned(),
    );
    Value::Array(out)
}

/// `v[key]` with an absent or null list read as empty.
fn list(v: &Value, key: &str) -> Value {
    match &v[key] {
        Value::Null => json!([]),
        other => other.clone(),
    }
}

fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// Whether `current` already has every field of `target` (the fields kedge owns).
fn same(current: &Value, target: &Value) -> bool {
    target
        .as_object()
        .is_some_and(|t| t.iter().all(|(k, v)| list(current, k) == *v))
}

/// The objects of one build whose status should change, and to what. `controller`: the
/// cluster's `gateway_controller`; `now`: the time written into changed conditions. A route
/// whose object and entries are those `unchanged` remembers (what the previous view of the same
/// controller decided) gets that decision again, without its status being read; `unchanged`
/// is then what this view decided.
pub fn view_with(
    attachment: &Attachment<'_>,
    objects: &Objects<'_>,
    controller: &str,
    now: &str,
    unchanged: &mut Unchanged,
) -> Vec<Item> {
    let mut items = Vec::new();
    let mut push = |key: Key, rv: &Option<String>, current: &Value, status: Value| {
        if !same(current, &status) {
            items.push(Item {
                key: Arc::new(key),
                rv: rv.as_deref().map(Arc::from),
                status: Arc::new(status),
            });
        }
    };
    let features: Vec<Value> = SUPPORTED_FEATURES.iter().map(|f| json!({"name": f})).collect();
    for class in &attachment.classes {
        let m = &class.metadata;
        let current = to_json(&class.status);
        let accepted = Cond {
            type_: "Accepted",
            status: true,
            reason: "Accepted",
            message: format!("kedge is the controller of {controller}"),
        };
        let status = json!({
            "conditions": conditions(&[accepted], &list(&current, "conditions"), m.generation, now),
            "supportedFeatures": features,
        });
        let key = (
            Resource::GatewayClass,
            String::new(),
            m.name.clone().unwrap_or_default(),
        );
        push(key, &m.resource_version, &current, status);
    }
    for g in &attachment.gateways {
        let m = &g.gateway.metadata;
        let current = to_json(&g.gateway.status);
        let current_listeners = list(&current, "listeners");
        let listeners: Vec<Value> = g
            .listeners
            .iter()
            .map(|l| {
                let was = current_listeners
                    .as_array()
                    .and_then(|a| a.iter().find(|v| v["name"] == l.name.as_str()))
                    .map_or(Value::Null, |v| list(v, "conditions"));
                json!({
                    "name": l.name,
                    "supportedKinds": to_json(&l.supported_kinds),
                    "attachedRoutes": l.attached_routes,
                    "conditions": conditions(&l.conditions, &was, m.generation, now),
                })
            })
            .collect();
        let status = json!({
            "addresses": to_json(&g.addresses),
            "conditions": conditions(&g.conditions, &list(&current, "conditions"), m.generation, now),
            "listeners": listeners,
        });
        let key = (
            Resource::Gateway,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        push(key, &m.resource_version, &current, status);
    }
    // kedge's parent entries of each route: `attach` lists them route by route, in the order
    // of `objects` (HTTPRoutes, then GRPCRoutes), each route's in the order of its
    // parentRefs; so they are taken from the front as the routes come (no map of 10k routes).
    let address = |p: &RouteParent<'_>| match p.route {
        RouteRef::Http(r) => std::ptr::from_ref(r) as usize,
        RouteRef::Grpc(r) => std::ptr::from_ref(r) as usize,
    };
    let mut rest: &[RouteParent<'_>] = &attachment.parents;
    unchanged.read = 0;
    let routes = objects
        .http_routes
        .iter()
        .map(|r| (Resource::HttpRoute, Arc::as_ptr(r) as usize, None))
        .chain(
            objects
                .grpc_routes
                .iter()
                .map(|r| (Resource::GrpcRoute, Arc::as_ptr(r) as usize, Some(r))),
        );
    for (i, (resource, at, grpc)) in routes.enumerate() {
        let n = rest.iter().take_while(|p| address(p) == at).count();
        let (theirs, later) = rest.split_at(n);
        rest = later;
        let mine = (n > 0).then_some(theirs);
        // The same object with the same entries as a view last decided: the same write, or
        // none (the decision stays where it is).
        if let Some(before) = unchanged.routes.get(at)
            && before.same(mine.unwrap_or(&[]))
        {
            items.extend(before.item.clone());
            continue;
        }
        let held = || match grpc {
            None => RouteObject::Http(Arc::clone(&objects.http_routes[i])),
            Some(r) => RouteObject::Grpc(Arc::clone(r)),
        };
        let (m, status) = match grpc {
            None => (&objects.http_routes[i].metadata, objects.http_routes[i].status.as_ref()),
            Some(r) => (&r.metadata, r.status.as_ref()),
        };
        // A new object of a route, of the same generation and entries, whose status is what
        // kedge decided to write: the write came back, nothing is left to write.
        if let Some(before) = unchanged.routes.take_replaced(m.uid.as_deref(), at)
            && same_generation(before.object.meta(), m)
            && before.same(mine.unwrap_or(&[]))
            && before.item.as_ref().is_some_and(|w| is_written(status, &w.status))
        {
            let came_back = Written {
                item: None,
                object: held(),
                ..before
            };
            unchanged.routes.insert(m.uid.as_deref(), at, came_back);
            continue;
        }
        let held = held();
        unchanged.read += 1;
        let current = to_json(&status);
        let (ns, name) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        let parents = list(&current, "parents");
        let parents = parents.as_array().map(Vec::as_slice).unwrap_or(&[]);
        let had = parents.iter().any(|p| p["controllerName"] == controller);
        let written = |held: RouteObject, item: Option<Item>| Written {
            entries: mine
                .into_iter()
                .flatten()
                .map(|p| (Arc::clone(&p.parent_ref), Arc::clone(&p.conditions)))
                .collect(),
            item,
            object: held,
        };
        if mine.is_none() && !had {
            unchanged.routes.insert(m.uid.as_deref(), at, written(held, None));
            continue;
        }
        let mut target: Vec<Value> = parents
            .iter()
            .filter(|p| p["controllerName"] != controller)
            .cloned()
            .collect();
        for p in mine.into_iter().flatten() {
            let parent_ref = to_json(&*p.parent_ref);
            let was = parents
                .iter()
                .find(|c| c["controllerName"] == controller && c["parentRef"] == parent_ref)
                .map_or(Value::Null, |c| list(c, "conditions"));
            target.push(json!({
                "parentRef": parent_ref,
                "controllerName": controller,
                "conditions": conditions(&p.conditions, &was, m.generation, now),
            }));
        }
        // The API's limit; kedge's entries come last and are the ones cut.
        target.truncate(32);
        let status = json!({ "parents": target });
        let item = (!same(&current, &status)).then(|| Item {
            key: Arc::new((resource, ns, name)),
            rv: m.resource_version.as_deref().map(Arc::from),
            status: Arc::new(status),
        });
        items.extend(item.clone());
        unchanged.routes.insert(m.uid.as_deref(), at, written(held, item));
    }
    debug_assert!(rest.is_empty(), "parent entries out of the routes' order");
    unchanged.routes.forget_gone(objects);
    items
}

/// What a view decided for each route, by the address of the store's object: while the store
/// holds that object (kept alive here, so that the address names no other) its status is the
/// one read, so a later view that decides the same parent entries for it makes the same write
/// (or none) without reading its status again (at 10k routes, most of a view's work). A new
/// object of a route (same uid, generation and entries) whose status is exactly the write
/// decided for the one before is that write come back: no write, without its status being
/// read (after kedge's 10k start-up writes, the quiet-time view's work). The write keeps the
/// `lastTransitionTime` of the view that first decided it: when kedge saw the condition change.
#[derive(Default)]
pub struct Unchanged {
    /// By object address; by uid only for an object they do not know.
    routes: RouteRecords<Written>,
    /// How many routes the last view decided by reading their status (the rest it took as
    /// decided, or as their write come back).
    read: usize,
}

impl Unchanged {
    /// How many routes the last view decided by reading their status.
    pub fn read(&self) -> usize {
        self.read
    }
}

/// A route object, the parent entries kedge decided for it and the write they make.
struct Written {
    entries: Vec<(Arc<ParentRef>, Arc<Vec<Cond>>)>,
    item: Option<Item>,
    object: RouteObject,
}

impl Written {
    fn same(&self, now: &[RouteParent<'_>]) -> bool {
        self.entries.len() == now.len()
            && self.entries.iter().zip(now).all(|((r, c), p)| {
                (Arc::ptr_eq(r, &p.parent_ref) || *r == p.parent_ref)
                    && (Arc::ptr_eq(c, &p.conditions) || *c == p.conditions)
            })
    }
}

/// Whether a route's status is exactly `written` (`{"parents": [...]}`, a status kedge
/// decided to write), compared field by field without making JSON of the status (at 10k routes
/// come back, that was most of the view). A field it does not know makes it say no: the route
/// is then decided as any other.
fn is_written(status: Option<&RouteStatus>, written: &Value) -> bool {
    let parents = status.map_or(&[][..], |s| &s.parents[..]);
    let Some(w) = written.as_object() else {
        return false;
    };
    let Some(entries) = w.get("parents").and_then(Value::as_array) else {
        return false;
    };
    w.len() == 1 && parents.len() == entries.len() && parents.iter().zip(entries).all(|(p, v)| parent_is(p, v))
}

fn parent_is(p: &RouteParentStatus, v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let Some(conditions) = o.get("conditions").and_then(Value::as_array) else {
        return false;
    };
    o.len() == 3
        && o.get("controllerName").and_then(Value::as_str) == Some(p.controller_name.as_str())
        && o.get("parentRef").is_some_and(|r| parent_ref_is(&p.parent_ref, r))
        && p.conditions.len() == conditions.len()
        && p.conditions.iter().zip(conditions).all(|(c, v)| condition_is(c, v))
}

fn parent_ref_is(r: &ParentRef, v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let text = |key: &str, want: Option<&str>| o.get(key).map(|v| v.as_str()) == want.map(Some);
    let fields = 1
        + [&r.group, &r.kind, &r.namespace, &r.section_name]
            .iter()
            .filter(|f| f.is_some())
            .count()
        + usize::from(r.port.is_some());
    o.len() == fields
        && text("name", Some(&r.name))
        && text("group", r.group.as_deref())
        && text("kind", r.kind.as_deref())
        && text("namespace", r.namespace.as_deref())
        && text("sectionName", r.section_name.as_deref())
        && o.get("port").map(Value::as_i64) == r.port.map(|p| Some(i64::from(p)))
}

fn condition_is(c: &Condition, v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    let text = |key: &str, want: &str| o.get(key).and_then(Value::as_str) == Some(want);
    let since = o
        .get("lastTransitionTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
    o.len() == 5 + usize::from(c.observed_generation.is_some())
        && text("type", &c.type_)
        && text("status", &c.status)
        && text("reason", &c.reason)
        && text("message", &c.message)
        && o.get("observedGeneration").map(Value::as_i64) == c.observed_generation.map(Some)
        && since == Some(c.last_transition_time.0)
}

/// The handle the control thread keeps for one cluster's Gateway API status writer task.
/// Dropping it stops the task.
pub struct Writer {
    latest: watch::Sender<Option<std::sync::Arc<Vec<Item>>>>,
    task: tokio::task::JoinHandle<()>,
    /// Set while the task has writes of a view to make.
    writing: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer task on the current runtime, writing while `holding`.
    /// `pace`: the cluster's, shared with its Ingress status writer.
    pub(super) fn spawn(client: Client, cluster: &str, pace: Arc<Pace>, holding: watch::Receiver<bool>) -> Writer {
        let (latest, views) = watch::channel(None);
        let writing = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(
            client,
            cluster.to_owned(),
            views,
            holding,
            Arc::clone(&writing),
            pace,
        ));
        Writer { latest, task, writing }
    }

    /// Whether the task is still making the writes of a view it was offered (a view offered
    /// now would stop it, to plan again from nothing but what came back).
    pub fn writing(&self) -> bool {
        self.writing.load(Ordering::Acquire)
    }

    /// Hands over the latest build's items, replacing any the task has not looked at yet.
    pub fn offer(&self, items: Vec<Item>) {
        self.latest.send_replace(Some(std::sync::Arc::new(items)));
    }

    /// Stops writing (writes in flight are abandoned).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// What the writer wrote, by object: the resourceVersion it wrote against and the status.
type Sent = HashMap<Arc<Key>, (Option<Arc<str>>, Arc<Value>)>;

/// The items not written yet: `sent` keeps only the writes still waiting for their watch event
/// (same resourceVersion, same status).
fn plan(items: &[Item], sent: &mut Sent) -> Vec<Item> {
    let mut waiting = HashMap::new();
    let mut writes = Vec::new();
    for item in items {
        if let Some(s) = sent.remove(&item.key)
            && s.0 == item.rv
            && s.1 == item.status
        {
            waiting.insert(item.key.clone(), s);
            continue;
        }
        writes.push(item.clone());
    }
    *sent = waiting;
    writes
}

/// The merge patch of one item's status: kedge's fields, and the resourceVersion it was
/// planned from (a 409 if the object has moved on since).
#[derive(Serialize)]
struct Body<'a> {
    metadata: Precondition<'a>,
    status: &'a Value,
}

#[derive(Serialize)]
struct Precondition<'a> {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<&'a str>,
}

/// One status patch.
async fn patch(client: Client, item: &Item, params: &PatchParams) -> Result<(), kube::Error> {
    let body = Body {
        metadata: Precondition {
            resource_version: item.rv.as_deref(),
        },
        status: &item.status,
    };
    let p = Patch::Merge(&body);
    let (_, ns, name) = &*item.key;
    let url = match item.key.0 {
        Resource::GatewayClass => <GatewayClass as kube::Resource>::url_path(&(), None),
        Resource::Gateway => <Gateway as kube::Resource>::url_path(&(), Some(ns)),
        Resource::HttpRoute => <HttpRoute as kube::Resource>::url_path(&(), Some(ns)),
        Resource::GrpcRoute => <GrpcRoute as kube::Resource>::url_path(&(), Some(ns)),
    };
    super::status::patch_status(&client, &url, name, params, &p).await
}

/// The Gateway API half of the writer loop: the items of a build, a merge patch naming the
/// resourceVersion each was planned from.
struct Items {
    sent: Sent,
}

impl WriterKind for Items {
    type View = Vec<Item>;
    type Write = Item;
    type Key = Arc<Key>;
    const CONFLICT_IS_QUIET: bool = true;

    fn plan(&mut self, view: &Vec<Item>) -> Vec<Item> {
        plan(view, &mut self.sent)
    }

    fn key(w: &Item) -> &Arc<Key> {
        &w.key
    }

    fn patch(&self, client: Client, params: PatchParams, w: Item) -> Patching<Item> {
        Box::pin(async move {
            let result = patch(client, &w, &params).await;
            (w, result)
        })
    }

    fn written(&mut self, w: Item) {
        self.sent.insert(w.key, (w.rv, w.status));
    }

    fn log(cluster: &str, w: &Item, what: Logged<'_>) {
        let (resource, ns, name) = &*w.key;
        let object = if ns.is_empty() {
            format!("{} {name}", resource.kind())
        } else {
            format!("{} {ns}/{name}", resource.kind())
        };
        match what {
            Logged::Written => tracing::debug!(cluster, object, "status written"),
            Logged::WrittenAgain => tracing::info!(cluster, object, "status written again"),
            Logged::Conflict => tracing::debug!(cluster, object, "status not written: the object changed"),
            Logged::Failing(error) => {
                tracing::warn!(cluster, object, error = %error, "cannot write status; retrying");
            }
        }
    }
}

/// The writer task of one cluster: the Ingress writer's loop, for these kinds.
async fn run(
    client: Client,
    cluster: String,
    views: watch::Receiver<Option<std::sync::Arc<Vec<Item>>>>,
    holding: watch::Receiver<bool>,
    writing: Arc<AtomicBool>,
    pace: Arc<Pace>,
) {
    let kind = Items { sent: HashMap::new() };
    write_loop(client, cluster, kind, views, holding, &writing, &pace).await;
}

#[cfg(test)]
mod tests;

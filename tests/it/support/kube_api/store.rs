//! The fixture's etcd: objects by kind, namespace and name; one resourceVersion counter for all
//! of them; the history of changes that watches replay (until `compact` forgets it); and the
//! snapshots behind `continue` tokens. Pure data, no I/O: the HTTP side calls in under a lock.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::select::Filter;

/// A resource the fixture serves, as the API server's discovery would describe it.
#[derive(Debug)]
pub(super) struct Kind {
    /// `v1` for the core group, `group/version` otherwise.
    pub(super) api_version: &'static str,
    pub(super) plural: &'static str,
    pub(super) kind: &'static str,
    pub(super) namespaced: bool,
    /// `status` is a subresource: written only through `.../status`, and left alone by writes to
    /// the object itself (as for the real Service, Node and Ingress).
    pub(super) has_status: bool,
    /// Defined by a CRD of the Gateway API: served only once the test installs it
    /// ([`FakeApi::install_gateway_api`](super::FakeApi::install_gateway_api)).
    pub(super) crd: bool,
}

pub(super) static KINDS: &[Kind] = &[
    Kind::new("v1", "services", "Service", true, true),
    Kind::new("v1", "nodes", "Node", false, true),
    Kind::new("v1", "secrets", "Secret", true, false),
    Kind::new("v1", "namespaces", "Namespace", false, true),
    Kind::new("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", true, false),
    Kind::new("networking.k8s.io/v1", "ingresses", "Ingress", true, true),
    Kind::new("networking.k8s.io/v1", "ingressclasses", "IngressClass", false, false),
    Kind::new("coordination.k8s.io/v1", "leases", "Lease", true, false),
    Kind::crd("gateway.networking.k8s.io/v1", "gatewayclasses", "GatewayClass", false),
    Kind::crd("gateway.networking.k8s.io/v1", "gateways", "Gateway", true),
    Kind::crd("gateway.networking.k8s.io/v1", "httproutes", "HTTPRoute", true),
    Kind::crd("gateway.networking.k8s.io/v1", "grpcroutes", "GRPCRoute", true),
    Kind::crd(
        "gateway.networking.k8s.io/v1beta1",
        "referencegrants",
        "ReferenceGrant",
        true,
    ),
];

impl Kind {
    const fn new(
        api_version: &'static str,
        plural: &'static str,
        kind: &'static str,
        namespaced: bool,
        has_status: bool,
    ) -> Kind {
        Kind {
            api_version,
            plural,
            kind,
            namespaced,
            has_status,
            crd: false,
        }
    }

    /// A Gateway API kind, with a status subresource (ReferenceGrant has none, but kedge never
    /// writes one).
    const fn crd(api_version: &'static str, plural: &'static str, kind: &'static str, namespaced: bool) -> Kind {
        let mut k = Kind::new(api_version, plural, kind, namespaced, true);
        k.crd = true;
        k
    }

    pub(super) fn by_plural(plural: &str) -> Option<&'static Kind> {
        KINDS.iter().find(|k| k.plural == plural)
    }

    pub(super) fn by_path(api_version: &str, plural: &str) -> Option<&'static Kind> {
        KINDS
            .iter()
            .find(|k| k.api_version == api_version && k.plural == plural)
    }

    /// `services`, `ingresses.networking.k8s.io`: how the API server names a resource in errors.
    fn qualified(&self) -> String {
        match self.api_version.split_once('/') {
            Some((group, _)) => format!("{}.{group}", self.plural),
            None => self.plural.to_owned(),
        }
    }
}

/// A failed request, answered with this HTTP status and a `Status` object.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub(super) fn not_found(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", kind.qualified()))
    }

    fn conflict(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                kind.qualified()
            ),
        )
    }

    /// The `Status` object the API server sends for this error, in a response or an ERROR event.
    pub(super) fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// How a PATCH request changes an object, by its Content-Type.
#[derive(Debug)]
pub(super) enum PatchBody {
    /// `application/merge-patch+json` (RFC 7386), also used for strategic merge patches.
    Merge(Value),
    /// `application/json-patch+json` (RFC 6902).
    Json(json_patch::Patch),
    /// `application/apply-patch+yaml`, server-side apply: merged like a merge patch, and creates
    /// the object when it is missing.
    Apply(Value),
}

/// One change, kept while history is: what a watch from an older resourceVersion replays.
#[derive(Debug)]
struct Change {
    rv: u64,
    kind: &'static Kind,
    /// The object after the change; `None` once deleted.
    object: Option<Value>,
    /// The object before the change (for a deletion: with the deletion's resourceVersion).
    prev: Option<Value>,
}

/// (plural, namespace or "", name), ordered as etcd orders its keys.
type Key = (&'static str, String, String);

/// Who makes a write, as the API server records it in `metadata.managedFields`: the field
/// manager (the request's `fieldManager`, else its User-Agent up to the first `/`) and
/// whether the write is a server-side apply (operation `Apply`) or not (`Update`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Manager<'a> {
    pub(super) name: &'a str,
    pub(super) apply: bool,
}

/// The manager the API server records for the test's own writes (`FakeApi::apply`): what
/// `kubectl apply` (client-side) records.
const KUBECTL: Manager<'static> = Manager {
    name: "kubectl-client-side-apply",
    apply: false,
};

#[derive(Debug, Default)]
pub(super) struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    next_uid: u64,
    next_page: u64,
    /// `continue` token → (the list's resourceVersion, the items left to send).
    pages: HashMap<String, (u64, Vec<Value>)>,
    /// Writes accepted through the HTTP API, per object.
    writes: HashMap<Key, usize>,
    /// Of these, the writes to the status subresource.
    status_writes: HashMap<Key, usize>,
}

fn key(kind: &Kind, namespace: Option<&str>, name: &str) -> Key {
    let ns = if kind.namespaced { namespace.unwrap_or("") } else { "" };
    (kind.plural, ns.to_owned(), name.to_owned())
}

impl Store {
    /// The latest resourceVersion.
    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    pub(super) fn get(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&key(kind, namespace, name))
    }

    pub(super) fn writes(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> usize {
        self.writes.get(&key(kind, namespace, name)).copied().unwrap_or(0)
    }

    pub(super) fn status_writes(&self, kind: &Kind, namespace: Option<&str>, name: &str) -> usize {
        let k = key(kind, namespace, name);
        self.status_writes.get(&k).copied().unwrap_or(0)
    }

    /// Forgets history and open `continue` tokens: watches and pages from before now get 410.
    pub(super) fn compact(&mut self) {
        self.history.clear();
        self.pages.clear();
        self.compacted = self.rv;
    }

    /// The test's create-or-replace: every field as given (status too), the namespace
    /// defaulting to `default`, `creationTimestamp` kept when set.
    pub(super) fn apply(&mut self, kind: &'static Kind, mut obj: Value) -> Value {
        let meta = metadata(&mut obj);
        assert!(
            meta.get("name").and_then(Value::as_str).is_some(),
            "apply: metadata.name is required"
        );
        if kind.namespaced {
            meta.entry("namespace").or_insert_with(|| json!("default"));
        } else {
            meta.remove("namespace");
        }
        self.commit(kind, obj, KUBECTL, false)
    }

    pub(super) fn delete(&mut self, kind: &'static Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        let mut prev = self.objects.remove(&key(kind, namespace, name))?;
        self.rv += 1;
        metadata(&mut prev).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.history.push(Change {
            rv: self.rv,
            kind,
            object: None,
            prev: Some(prev.clone()),
        });
        Some(prev)
    }

    /// A client's DELETE.
    pub(super) fn remove(
        &mut self,
        kind: &'static Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let deleted = self
            .delete(kind, namespace, name)
            .ok_or_else(|| ApiError::not_found(kind, name))?;
        self.count(kind, namespace, name, false);
        Ok(deleted)
    }

    /// POST to a collection.
    pub(super) fn create(
        &mut self,
        kind: &'static Kind,
        namespace: Option<&str>,
        mut obj: Value,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        let meta = metadata(&mut obj);
        let Some(name) = meta.get("name").and_then(Value::as_str).map(str::to_owned) else {
            return Err(ApiError::new(
                422,
                "Invalid",
                "metadata.name: Required value: name is required",
            ));
        };
        if let Some(ns) = namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        if self.get(kind, namespace, &name).is_some() {
            let message = format!("{} \"{name}\" already exists", kind.qualified());
            return Err(ApiError::new(409, "AlreadyExists", message));
        }
        self.count(kind, namespace, &name, false);
        Ok(self.write(kind, None, obj, manager, false))
    }

    /// PUT of an object or of its status.
    pub(super) fn replace(
        &mut self,
        kind: &'static Kind,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        mut obj: Value,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        let current = self.get(kind, namespace, name).cloned();
        let current = current.ok_or_else(|| ApiError::not_found(kind, name))?;
        if obj["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the name of the object does not match the name in the URL",
            ));
        }
        precondition(kind, name, &current, &obj)?;
        if let Some(ns) = namespace {
            metadata(&mut obj).insert("namespace".into(), json!(ns));
        }
        self.count(kind, namespace, name, status);
        Ok(self.write(kind, Some(current), obj, manager, status))
    }

    /// PATCH of an object or of its status.
    pub(super) fn patch(
        &mut self,
        kind: &'static Kind,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        patch: &PatchBody,
        manager: Manager<'_>,
    ) -> Result<Value, ApiError> {
        let manager = Manager {
            apply: matches!(patch, PatchBody::Apply(_)),
            ..manager
        };
        let current = self.get(kind, namespace, name).cloned();
        let mut candidate = match (&current, patch) {
            (Some(c), _) => c.clone(),
            (None, PatchBody::Apply(_)) if !status => json!({"metadata": {"name": name, "namespace": namespace}}),
            (None, _) => return Err(ApiError::not_found(kind, name)),
        };
        match patch {
            PatchBody::Merge(p) | PatchBody::Apply(p) => {
                if let Some(c) = &current {
                    precondition(kind, name, c, p)?;
                }
                json_patch::merge(&mut candidate, p);
            }
            PatchBody::Json(ops) => json_patch::patch(&mut candidate, ops)
                .map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch failed: {e}")))?,
        }
        // The URL names the object; a patch cannot move it.
        let meta = metadata(&mut candidate);
        meta.insert("name".into(), json!(name));
        match namespace {
            Some(ns) => meta.insert("namespace".into(), json!(ns)),
            None => meta.remove("namespace"),
        };
        self.count(kind, namespace, name, status);
        Ok(self.write(kind, current, candidate, manager, status))
    }

    /// A LIST: one page of `limit` items (all of them when `limit` is unset), the rest kept
    /// behind a `continue` token as a snapshot at this resourceVersion.
    pub(super) fn list(
        &mut self,
        kind: &'static Kind,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (rv, mut items) = match continue_token {
            Some(token) => self.pages.remove(token).ok_or_else(|| {
                ApiError::new(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                )
            })?,
            None => (self.rv, self.matching(kind, filter)),
        };
        let rest = match limit {
            Some(n) if n > 0 && n < items.len() => items.split_off(n),
            _ => Vec::new(),
        };
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if !rest.is_empty() {
            self.next_page += 1;
            let token = format!("page-{}", self.next_page);
            meta["continue"] = json!(token);
            meta["remainingItemCount"] = json!(rest.len());
            self.pages.insert(token, (rv, rest));
        }
        // As the API server, list items carry no apiVersion or kind: the list says them once.
        for item in &mut items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("apiVersion");
                obj.remove("kind");
            }
        }
        Ok(json!({
            "apiVersion": kind.api_version,
            "kind": format!("{}List", kind.kind),
            "metadata": meta,
            "items": items,
        }))
    }

    /// The objects of `kind` that `filter` selects, in key order.
    pub(super) fn matching(&self, kind: &Kind, filter: &Filter) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((plural, _, _), obj)| *plural == kind.plural && filter.matches(obj))
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// The watch events after resourceVersion `since` for `kind` and `filter`, and the
    /// resourceVersion they bring the watch to; 410 Expired when history no longer goes back
    /// that far. An object that starts or stops matching the filter is ADDED or DELETED.
    pub(super) fn events_since(&self, kind: &Kind, filter: &Filter, since: u64) -> Result<(Vec<Value>, u64), ApiError> {
        if since < self.compacted {
            let message = format!("too old resource version: {since} ({})", self.compacted);
            return Err(ApiError::new(410, "Expired", message));
        }
        let start = self.history.partition_point(|c| c.rv <= since);
        let events = self.history[start..]
            .iter()
            .filter(|c| c.kind.plural == kind.plural)
            .filter_map(|c| {
                let now = c.object.as_ref().filter(|o| filter.matches(o));
                let before = c.prev.as_ref().filter(|o| filter.matches(o));
                let (kind, object) = match (now, before) {
                    (Some(o), Some(_)) => ("MODIFIED", o.clone()),
                    (Some(o), None) => ("ADDED", o.clone()),
                    (None, Some(p)) => ("DELETED", c.object.clone().unwrap_or_else(|| p.clone())),
                    (None, None) => return None,
                };
                Some(json!({"type": kind, "object": object}))
            })
            .collect();
        Ok((events, self.rv.max(since)))
    }

    fn count(&mut self, kind: &'static Kind, namespace: Option<&str>, name: &str, status: bool) {
        let k = key(kind, namespace, name);
        if status {
            *self.status_writes.entry(k.clone()).or_default() += 1;
        }
        *self.writes.entry(k).or_default() += 1;
    }

    /// A client's write: to the status subresource only `status` changes; to the object itself
    /// `status` stays as it was (and starts empty) for kinds with a status subresource. What
    /// the server owns (uid, creationTimestamp, generation, resourceVersion) a client cannot set.
    fn write(
        &mut self,
        kind: &'static Kind,
        current: Option<Value>,
        candidate: Value,
        manager: Manager<'_>,
        status: bool,
    ) -> Value {
        let mut obj = match (&current, status) {
            (Some(c), true) => c.clone(),
            _ => candidate.clone(),
        };
        let status_from = if status { Some(&candidate) } else { current.as_ref() };
        if status || kind.has_status {
            let fields = obj.as_object_mut().expect("objects are JSON objects");
            match status_from.and_then(|o| o.get("status")) {
                Some(s) => fields.insert("status".into(), s.clone()),
                None => fields.remove("status"),
            };
        }
        let meta = metadata(&mut obj);
        for owned in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            meta.remove(owned);
        }
        self.commit(kind, obj, manager, status)
    }

    /// Stores `obj`, filling what the server owns: apiVersion, kind, uid, creationTimestamp
    /// (unless given), generation (bumped when anything but metadata and status changes) and
    /// resourceVersion; and `managedFields`, where `manager`'s entry (for the status
    /// subresource when `status`) becomes the fields this write set. A write that changes
    /// nothing keeps the old resourceVersion and `managedFields` and makes no event, as with the
    /// API server.
    fn commit(&mut self, kind: &'static Kind, mut obj: Value, manager: Manager<'_>, status: bool) -> Value {
        let fields = obj.as_object_mut().expect("objects are JSON objects");
        fields.insert("apiVersion".into(), json!(kind.api_version));
        fields.insert("kind".into(), json!(kind.kind));
        let meta = metadata(&mut obj);
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let namespace = meta.get("namespace").and_then(Value::as_str).map(str::to_owned);
        let k = key(kind, namespace.as_deref(), &name);
        let prev = self.objects.get(&k).cloned();
        let (uid, generation, rv) = match &prev {
            Some(p) => (
                p["metadata"]["uid"].clone(),
                p["metadata"]["generation"].as_u64().unwrap_or(1),
                p["metadata"]["resourceVersion"].clone(),
            ),
            None => {
                self.next_uid += 1;
                let uid = format!("00000000-0000-4000-8000-{:012x}", self.next_uid);
                (json!(uid), 1, json!(""))
            }
        };
        meta.insert("uid".into(), uid);
        match prev.as_ref().map(|p| &p["metadata"]["managedFields"]) {
            Some(m) if !m.is_null() => meta.insert("managedFields".into(), m.clone()),
            _ => meta.remove("managedFields"),
        };
        meta.insert("generation".into(), json!(generation));
        meta.insert("resourceVersion".into(), rv);
        if !meta.contains_key("creationTimestamp") {
            let created = prev
                .as_ref()
                .map_or_else(|| json!(now_rfc3339()), |p| p["metadata"]["creationTimestamp"].clone());
            meta.insert("creationTimestamp".into(), created);
        }
        if prev.as_ref() == Some(&obj) {
            return obj;
        }
        managed_by(&mut obj, kind, manager, status);
        if prev.as_ref().is_some_and(|p| spec_of(p) != spec_of(&obj)) {
            metadata(&mut obj).insert("generation".into(), json!(generation + 1));
        }
        self.rv += 1;
        metadata(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.objects.insert(k, obj.clone());
        self.history.push(Change {
            rv: self.rv,
            kind,
            object: Some(obj.clone()),
            prev,
        });
        obj
    }
}

/// Makes `manager`'s entry of `obj`'s `managedFields` name the fields it wrote (its status,
/// or everything but the status and what the server owns), written now.
fn managed_by(obj: &mut Value, kind: &Kind, manager: Manager<'_>, status: bool) {
    let written = if status {
        json!({"status": obj.get("status").cloned().unwrap_or(Value::Null)})
    } else {
        let mut o = obj.clone();
        let fields = o.as_object_mut().expect("objects are JSON objects");
        for server in ["apiVersion", "kind", "status"] {
            fields.remove(server);
        }
        let meta = metadata(&mut o);
        for owned in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "managedFields",
            "name",
            "namespace",
        ] {
            meta.remove(owned);
        }
        o
    };
    let operation = if manager.apply { "Apply" } else { "Update" };
    let mut entry = json!({
        "manager": manager.name,
        "operation": operation,
        "apiVersion": kind.api_version,
        "time": now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": field_set(&written, true),
    });
    if status {
        entry["subresource"] = json!("status");
    }
    let meta = metadata(obj);
    let entries = meta.entry("managedFields").or_insert_with(|| json!([]));
    let Some(entries) = entries.as_array_mut() else {
        *entries = json!([entry]);
        return;
    };
    let same = |e: &Value| {
        e["manager"] == entry["manager"]
            && e["operation"] == entry["operation"]
            && e["subresource"] == entry["subresource"]
    };
    match entries.iter_mut().find(|e| same(e)) {
        Some(e) => *e = entry,
        None => entries.push(entry),
    }
}

/// The field set (`fieldsV1`) of `v` as the API server writes it: `f:<key>` for each field of
/// an object, `.` for an object below the top that is itself set, lists and scalars as leaves.
fn field_set(v: &Value, top: bool) -> Value {
    let Value::Object(fields) = v else {
        return json!({});
    };
    let mut set = Map::new();
    if !top {
        set.insert(".".into(), json!({}));
    }
    for (k, v) in fields {
        set.insert(format!("f:{k}"), field_set(v, false));
    }
    Value::Object(set)
}

/// A write that names a resourceVersion must name the current one.
fn precondition(kind: &Kind, name: &str, current: &Value, body: &Value) -> Result<(), ApiError> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(kind, name))
        }
        _ => Ok(()),
    }
}

/// `obj.metadata`, made an object if it is missing.
fn metadata(obj: &mut Value) -> &mut Map<String, Value> {
    let fields = obj.as_object_mut().expect("objects are JSON objects");
    let meta = fields.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut().expect("metadata is an object")
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(fields) = v.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    v
}

/// The current time as Kubernetes writes it: `2006-01-02T15:04:05Z`.
fn now_rfc3339() -> String {
    kedge::time::format_time(kedge::time::unix_now())
}

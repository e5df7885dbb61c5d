//! Attached HTTPRoutes → Gateway rules in the table: each rule's matches, filters, timeouts and
//! weighted backendRefs, under the scope (local addresses and port) and the hostnames
//! `gateway.rs` attached the route with. Routes are added oldest first (creation time, then
//! namespace/name), so that the table's "first added wins a tie" is the spec's precedence.
//!
//! Choices where the spec leaves room, or kedge does less than it allows:
//! - A backendRef that `gateway::resolve_backend` refuses (unknown group or kind, a Service or
//!   Service port that does not exist, another namespace without a ReferenceGrant) keeps its
//!   weight and answers 500 for its share; `gateway.rs` reports it. A resolved Service without
//!   ready endpoints is routed as for Ingress (503).
//! - A filter kedge does not implement (ExtensionRef, or any other) makes its rule
//!   answer 500 rather than serve the request without it; so does a RequestRedirect together
//!   with a URLRewrite, and a ReplacePrefixMatch on a rule whose matches are not all
//!   PathPrefix. A match kedge cannot use (bad regex, a path not starting with `/`) is left out
//!   of its rule. Each is a warning on the route and turns its parents' `Accepted` condition
//!   False (`IncompatibleFilters` for RequestRedirect with URLRewrite, else `UnsupportedValue`)
//!   through [`Translated::refusals`].
//! - Backends are shared with Ingress backends of the same Service port (same name), and speak
//!   plain HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use super::backends::Resolver;
use super::gateway::{Attached, RefIndex, Refusal, Refusals, RouteObject, RouteRef, resolve_backend};
use super::{ClusterSpec, Objects, Warning, Warnings, age, ns_name, warn};
use crate::control::gateway_types::{self as gw, BackendRef, HttpRouteRule};
use crate::policy::Policy;
use crate::routes::TableBuilder;
use crate::routes::gateway::{
    Action, Cors, HeaderMod, Match, PathChange, PathMatch, Redirect, Rewrite, ValueMatch, Weighted, anchored_regex,
};

/// One rule of an HTTPRoute or a GRPCRoute, as the translation reads it.
struct RuleIn<'a> {
    /// The matches kedge can use (a GRPCRoute's as paths `/service/method`), or why not.
    matches: Vec<Result<Match, String>>,
    /// Every match is a PathPrefix (ReplacePrefixMatch needs that).
    all_prefix: bool,
    filters: &'a [gw::HttpRouteFilter],
    backend_refs: &'a [BackendRef],
    timeouts: Option<&'a gw::HttpRouteTimeouts>,
}

/// One route, HTTP or gRPC.
struct RouteIn<'a> {
    attached: &'a Attached<'a>,
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    /// `HTTPRoute` or `GRPCRoute`.
    kind: &'static str,
    /// Backends speak HTTP/2 (gRPC).
    h2: bool,
    rules: Vec<RuleIn<'a>>,
    /// It lost an upstream protocol to another user of a backend.
    contested: std::cell::Cell<bool>,
}

/// What translating the attached routes found besides the table.
#[derive(Debug, Default)]
pub struct Translated {
    /// Sorted.
    pub warnings: Vec<Warning>,
    /// What kedge refused in each route, for [`Attachment::refuse`](super::gateway::Attachment::refuse).
    pub refusals: Refusals,
    /// An update built some (scope, listener, route hostname)'s rules again.
    pub rebuilt: bool,
}

/// The error of a rule that combines a RequestRedirect and a URLRewrite.
const INCOMPATIBLE: &str = "RequestRedirect and URLRewrite cannot be combined";

/// Records a refused rule or match of `route` under the spec's reason for it.
fn refuse(refusals: &mut Refusals, route: &RouteIn<'_>, problem: String) {
    let reason = if problem.contains(INCOMPATIBLE) {
        "IncompatibleFilters"
    } else {
        "UnsupportedValue"
    };
    let r = refusals.entry((route.kind, route.attached.route.key())).or_default();
    if r.reason.is_empty() {
        r.reason = reason;
    }
    r.problems.insert(problem);
}

/// Adds the rules of every attached HTTPRoute and GRPCRoute to `builder`, oldest route first.
/// Returns the warnings, sorted, and what each route had refused.
pub fn translate<'a>(
    builder: &mut TableBuilder,
    spec: &ClusterSpec,
    objs: &Objects<'a>,
    attached: &'a [Attached<'a>],
) -> Translated {
    let mut t = Translated::default();
    let mut w = Warnings::new();
    for r in translate_routes(builder, spec, objs, attached.iter(), None, &mut t.refusals) {
        w.extend(r.warnings);
    }
    t.warnings = w.into_iter().collect();
    t
}

/// Where a Gateway rule goes in the table: a scope (local addresses, port), a listener
/// hostname and a route hostname (`None`: any; lower case).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    addresses: Vec<std::net::IpAddr>,
    port: u16,
    listener: Option<String>,
    host: Option<String>,
}

/// The keys an attached route adds rules under.
fn keys_of(a: &Attached<'_>) -> Vec<Key> {
    let listener = a.listener.hostname.as_deref().map(str::to_ascii_lowercase);
    let key = |host: Option<&String>| Key {
        addresses: a.bind.addresses.clone(),
        port: a.bind.port,
        listener: listener.clone(),
        host: host.cloned(),
    };
    match &a.hostnames[..] {
        [] => vec![key(None)],
        h => h.iter().map(|h| key(Some(h))).collect(),
    }
}

/// What one route's translation gave, for [`Incremental`].
struct RouteOut {
    /// (kind, `namespace/name`).
    id: (&'static str, String),
    warnings: Warnings,
    /// It lost an upstream protocol to another user of a backend.
    contested: bool,
}

/// Translates the routes of `attached` (in any order: they are sorted here, oldest first),
/// adding only the rules under `only`'s keys when given; one [`RouteOut`] per route.
fn translate_routes<'a, 'b>(
    builder: &mut TableBuilder,
    spec: &ClusterSpec,
    objs: &Objects<'a>,
    attached: impl Iterator<Item = &'b Attached<'a>>,
    only: Option<&rustc_hash::FxHashSet<Key>>,
    refusals: &mut Refusals,
) -> Vec<RouteOut>
where
    'a: 'b,
{
    let mut routes: Vec<RouteIn<'b>> = attached
        .map(|a| match a.route {
            RouteRef::Http(r) => RouteIn {
                attached: a,
                meta: &r.metadata,
                kind: "HTTPRoute",
                h2: false,
                rules: r.spec.rules.iter().map(http_rule).collect(),
                contested: std::cell::Cell::new(false),
            },
            RouteRef::Grpc(r) => RouteIn {
                attached: a,
                meta: &r.metadata,
                kind: "GRPCRoute",
                h2: true,
                rules: r.spec.rules.iter().map(grpc_rule).collect(),
                contested: std::cell::Cell::new(false),
            },
        })
        .collect();
    if routes.is_empty() {
        // Without routes, not even the Services are indexed (every build of a cluster without
        // Gateway routes comes here).
        return Vec::new();
    }
    routes.sort_by(|a, b| age(a.meta).cmp(&age(b.meta)));
    // A build from nothing indexes every Service; an update only those its routes use.
    let wanted: Vec<(String, String)> = match only {
        None => Vec::new(),
        Some(_) => {
            let mut v: Vec<(String, String)> = routes
                .iter()
                .flat_map(|r| {
                    let (ns, _) = ns_name(r.meta);
                    r.attached
                        .route
                        .backend_refs()
                        .into_iter()
                        .map(move |b| (b.namespace.as_deref().unwrap_or(ns).to_owned(), b.name.clone()))
                })
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    let mut resolver = match only {
        None => Resolver::new(spec, objs),
        Some(_) => Resolver::only(spec, objs, &wanted),
    };
    let refs = RefIndex::new(objs);
    let mut out: Vec<RouteOut> = Vec::new();
    for route in &routes {
        let mut w = Warnings::new();
        let a = route.attached;
        let (ns, name) = ns_name(route.meta);
        let owner = format!("{} {ns}/{name}", route.kind);
        let table_owner = format!("{owner} of cluster {}", spec.name);
        let host = a.hostnames.first().map_or("*", String::as_str);
        let mut hosts: Vec<Option<&str>> = match &a.hostnames[..] {
            [] => vec![None],
            h => h.iter().map(|h| Some(h.as_str())).collect(),
        };
        if let Some(only) = only {
            let keys = keys_of(a);
            hosts.retain(|h| keys.iter().any(|k| k.host.as_deref() == *h && only.contains(k)));
        }
        // One policy for every rule of the route (what it holds is the route's), and one action
        // for every rule of it that does the same (most often: the same backendRefs).
        let policy = Arc::new(Policy {
            host: host.into(),
            ..Policy::default()
        });
        let mut actions: Vec<Arc<Action>> = Vec::new();
        for (i, rule) in route.rules.iter().enumerate() {
            let action = rule_action(builder, &mut resolver, &refs, route, rule, &policy, &owner, &mut w)
                .unwrap_or_else(|e| {
                    warn(&mut w, &owner, format!("rule {i}: {e}; answering 500"));
                    refuse(refusals, route, format!("rule {i}: {e}: it answers 500"));
                    failing(&policy)
                });
            let action = match actions.iter().find(|a| ***a == action) {
                Some(same) => Arc::clone(same),
                None => {
                    let new = Arc::new(action);
                    actions.push(Arc::clone(&new));
                    new
                }
            };
            for (j, m) in rule.matches.iter().enumerate() {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        warn(&mut w, &owner, format!("rule {i} match {j}: {e}; match ignored"));
                        refuse(refusals, route, format!("rule {i} match {j}: {e}: left out"));
                        continue;
                    }
                };
                for host in &hosts {
                    builder.gateway_rule(
                        &a.bind.addresses,
                        a.bind.port,
                        a.listener.hostname.as_deref(),
                        *host,
                        m.clone(),
                        Arc::clone(&action),
                        &table_owner,
                    );
                }
            }
        }
        out.push(RouteOut {
            id: (route.kind, a.route.key()),
            warnings: w,
            contested: route.contested.get(),
        });
    }
    out
}

/// One route as the last build translated it.
struct Entry {
    /// The store's object it was recorded from (or found the same as, by uid and
    /// generation), kept alive so that its address names no other object while recorded.
    object: RouteObject,
    /// Where its rules are, over every listener it is attached to.
    keys: Vec<Key>,
    warnings: Warnings,
    refusal: Option<Refusal>,
}

/// What the last build translated of one cluster's HTTPRoutes and GRPCRoutes, so that an
/// update after route changes translates again only the (scope, listener, route hostname)s
/// the changed routes had or have rules in, every route attached there (precedence across
/// routes is decided per host: a host rebuilt from all its routes is exact), and shares every
/// other host's rules with the current table. Like the Ingresses' [`super::Incremental`], it
/// holds no rules and no backends: per route, its object (uid and generation), keys, warnings and refusals.
/// An unchanged route is found by its object's address (no key built, nothing copied), the
/// routes under a key through an index: an update's cost follows what it touches, not the
/// number of routes.
#[derive(Default)]
pub struct Incremental {
    /// By (kind, `namespace/name`).
    entries: rustc_hash::FxHashMap<RouteId, Entry>,
    /// Each entry's route by the address of its object.
    by_object: rustc_hash::FxHashMap<usize, RouteId>,
    /// The routes with rules under each key.
    by_key: rustc_hash::FxHashMap<Key, rustc_hash::FxHashSet<RouteId>>,
    /// Some route lost an upstream protocol to another user: who wins is decided over every
    /// host, so no update until the next build from nothing.
    contested: bool,
    /// A build from nothing recorded this state (and no update failed since).
    ready: bool,
}

/// A route: (kind, `namespace/name`).
type RouteId = (&'static str, String);

/// What an update translates again, found by [`Incremental::plan`].
pub struct Plan {
    /// The keys whose rules are built again.
    dirty: rustc_hash::FxHashSet<Key>,
    /// The routes whose keys hold a dirty one, or that changed.
    again: rustc_hash::FxHashSet<RouteId>,
    /// The addresses of those routes' objects' metadata.
    again_at: rustc_hash::FxHashSet<usize>,
    /// New and changed routes: their object.
    changed: Vec<(RouteId, RouteObject)>,
    /// Routes found unchanged (same uid and generation) in a new object (a status write).
    renewed: rustc_hash::FxHashMap<RouteId, RouteObject>,
    /// Routes gone from the stores.
    gone: Vec<RouteId>,
}

impl Plan {
    /// Nothing to translate again.
    pub fn is_empty(&self) -> bool {
        self.again.is_empty()
    }

    /// The Services (namespace, name) the routes translated again name: all that
    /// [`Incremental::update`] resolves (the caller may hand it only those, with their
    /// EndpointSlices).
    pub fn services(&self, attached: &[Attached<'_>]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = Vec::new();
        if self.again_at.is_empty() {
            return v;
        }
        for a in attached {
            if !self.again_at.contains(&(std::ptr::from_ref(a.route.meta()) as usize)) {
                continue;
            }
            let (ns, _) = ns_name(a.route.meta());
            v.extend(
                a.route
                    .backend_refs()
                    .into_iter()
                    .map(|b| (b.namespace.as_deref().unwrap_or(ns).to_owned(), b.name.clone())),
            );
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Every route object of `objs`.
fn all_routes<'a>(objs: &Objects<'a>) -> impl Iterator<Item = &'a Arc<gw::HttpRoute>> + use<'a> {
    objs.http_routes.iter()
}

/// Every route of `objs` as an [`RouteObject`] reference: HTTPRoutes, then GRPCRoutes.
fn objects_of<'a>(objs: &Objects<'a>) -> impl Iterator<Item = ObjectRef<'a>> + use<'a> {
    all_routes(objs)
        .map(ObjectRef::Http)
        .chain(objs.grpc_routes.iter().map(ObjectRef::Grpc))
}

/// A route object of the stores, borrowed.
#[derive(Clone, Copy)]
enum ObjectRef<'a> {
    Http(&'a Arc<gw::HttpRoute>),
    Grpc(&'a Arc<gw::GrpcRoute>),
}

impl<'a> ObjectRef<'a> {
    fn address(self) -> usize {
        match self {
            ObjectRef::Http(r) => Arc::as_ptr(r) as usize,
            ObjectRef::Grpc(r) => Arc::as_ptr(r) as usize,
        }
    }

    fn route(self) -> RouteRef<'a> {
        match self {
            ObjectRef::Http(r) => RouteRef::Http(r),
            ObjectRef::Grpc(r) => RouteRef::Grpc(r),
        }
    }

    fn owned(self) -> RouteObject {
        match self {
            ObjectRef::Http(r) => RouteObject::Http(Arc::clone(r)),
            ObjectRef::Grpc(r) => RouteObject::Grpc(Arc::clone(r)),
        }
    }
}

impl Incremental {
    /// A build from nothing: translates every attached route ([`translate`]) and records what
    /// the next update needs.
    pub fn full<'a>(
        &mut self,
        builder: &mut TableBuilder,
        spec: &ClusterSpec,
        objs: &Objects<'a>,
        attached: &'a [Attached<'a>],
    ) -> Translated {
        *self = Incremental::default();
        let mut refusals = Refusals::new();
        let outs = translate_routes(builder, spec, objs, attached.iter(), None, &mut refusals);
        // By the address of the metadata (as attached routes are told apart).
        let mut ids: rustc_hash::FxHashMap<usize, RouteId> = rustc_hash::FxHashMap::default();
        for o in objects_of(objs) {
            let r = o.route();
            let id = (r.kind(), r.key());
            let object = o.owned();
            ids.insert(object.meta_address(), id.clone());
            self.by_object.insert(object.address(), id.clone());
            self.entries.insert(
                id,
                Entry {
                    object,
                    keys: Vec::new(),
                    warnings: Warnings::new(),
                    refusal: None,
                },
            );
        }
        for a in attached {
            if let Some(id) = ids.get(&(std::ptr::from_ref(a.route.meta()) as usize)) {
                self.add_keys(id, keys_of(a));
            }
        }
        self.record(outs, &refusals);
        self.ready = true;
        self.outcome()
    }

    /// Records that route `id` has rules under `keys`.
    fn add_keys(&mut self, id: &RouteId, keys: Vec<Key>) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        for k in &keys {
            self.by_key.entry(k.clone()).or_default().insert(id.clone());
        }
        e.keys.extend(keys);
    }

    /// Forgets the keys of route `id` (and, with `remove`, the route).
    fn forget(&mut self, id: &RouteId, remove: bool) {
        let keys = match self.entries.get_mut(id) {
            Some(e) => std::mem::take(&mut e.keys),
            None => return,
        };
        for k in keys {
            if let Some(ids) = self.by_key.get_mut(&k) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_key.remove(&k);
                }
            }
        }
        if remove && let Some(e) = self.entries.remove(id) {
            self.by_object.remove(&e.object.address());
        }
    }

    /// Forgets the last build (the next one must be [`Incremental::full`]).
    pub fn clear(&mut self) {
        *self = Incremental::default();
    }

    fn record(&mut self, outs: Vec<RouteOut>, refusals: &Refusals) {
        for out in outs {
            self.contested |= out.contested;
            if let Some(e) = self.entries.get_mut(&out.id) {
                e.refusal = refusals.get(&out.id).cloned();
                e.warnings.extend(out.warnings);
            }
        }
    }

    fn outcome(&self) -> Translated {
        let mut w = Warnings::new();
        let mut refusals = Refusals::new();
        for (id, e) in &self.entries {
            w.extend(e.warnings.iter().cloned());
            if let Some(r) = &e.refusal {
                refusals.insert(id.clone(), r.clone());
            }
        }
        Translated {
            warnings: w.into_iter().collect(),
            refusals,
            rebuilt: false,
        }
    }

    /// What an update after the stores became `objs` (attached as `attached`) translates again:
    /// the routes that are new objects with a new uid or generation, that are gone, or that use a
    /// Service in `services` (whose object or endpoints changed), and every route sharing a key
    /// with them. `Err` when only a build from nothing is exact: no previous build, or an
    /// upstream protocol contested. The caller has checked that nothing but routes, Ingresses,
    /// Services and EndpointSlices changed (a route's attachment depends on nothing else).
    pub fn plan(
        &mut self,
        objs: &Objects<'_>,
        attached: &[Attached<'_>],
        services: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<Plan, super::NeedFull> {
        if !self.ready {
            return Err(super::NeedFull("no previous build of the Gateway routes"));
        }
        if self.contested {
            return Err(super::NeedFull("an upstream protocol is contested by a Gateway route"));
        }
        let mut again: rustc_hash::FxHashSet<RouteId> = rustc_hash::FxHashSet::default();
        let mut again_at: rustc_hash::FxHashSet<usize> = rustc_hash::FxHashSet::default();
        let mut changed = Vec::new();
        let mut renewed = rustc_hash::FxHashMap::default();
        // Routes of the stores with an entry.
        let mut seen = 0;
        for o in objects_of(objs) {
            let route = o.route();
            let at = std::ptr::from_ref(route.meta()) as usize;
            let uses = || {
                let (ns, _) = ns_name(route.meta());
                route.backend_refs().iter().any(|b| {
                    let bns = b.namespace.as_deref().unwrap_or(ns);
                    services.iter().any(|(n, s)| n == bns && *s == b.name)
                })
            };
            // The same object as recorded: unchanged (no key built).
            if let Some(id) = self.by_object.get(&o.address()) {
                seen += 1;
                if !services.is_empty() && uses() {
                    again.insert(id.clone());
                    again_at.insert(at);
                }
                continue;
            }
            let id = (route.kind(), route.key());
            match self.entries.get(&id) {
                // A new object with the uid and generation recorded: its status or metadata
                // changed. (A route deleted and created again within one update has the same
                // name and generation 1 again, but a new uid.)
                Some(e) if super::gateway::same_generation(e.object.meta(), route.meta()) => {
                    seen += 1;
                    if !services.is_empty() && uses() {
                        again.insert(id.clone());
                        again_at.insert(at);
                    }
                    renewed.insert(id, o.owned());
                }
                e => {
                    seen += usize::from(e.is_some());
                    again.insert(id.clone());
                    again_at.insert(at);
                    changed.push((id, o.owned()));
                }
            }
        }
        // Gone routes: looked for only when some entry was not seen.
        let mut gone = Vec::new();
        if seen != self.entries.len() {
            let now: rustc_hash::FxHashSet<usize> = objects_of(objs).map(ObjectRef::address).collect();
            let found: rustc_hash::FxHashSet<&RouteId> = changed.iter().map(|c| &c.0).chain(renewed.keys()).collect();
            gone = self
                .entries
                .iter()
                .filter(|(id, e)| !now.contains(&e.object.address()) && !found.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
        }
        // The old keys of the changed and gone routes, and the new keys of the changed ones.
        let mut dirty: rustc_hash::FxHashSet<Key> = rustc_hash::FxHashSet::default();
        for id in again.iter().chain(&gone) {
            if let Some(e) = self.entries.get(id) {
                dirty.extend(e.keys.iter().cloned());
            }
        }
        if !again_at.is_empty() {
            for a in attached {
                if again_at.contains(&(std::ptr::from_ref(a.route.meta()) as usize)) {
                    dirty.extend(keys_of(a));
                }
            }
        }
        // Every route with rules under a dirty key is translated again there.
        for k in &dirty {
            for id in self.by_key.get(k).into_iter().flatten() {
                if again.insert(id.clone())
                    && let Some(e) = self.entries.get(id)
                {
                    // Its current object: recorded, or renewed below.
                    let object = renewed.get(id).unwrap_or(&e.object);
                    again_at.insert(object.meta_address());
                }
            }
        }
        for id in &gone {
            again.remove(id);
        }
        Ok(Plan {
            dirty,
            again,
            again_at,
            changed,
            renewed,
            gone,
        })
    }

    /// Translates again the plan's routes, their rules under its dirty keys only, into
    /// `builder` (made by [`TableBuilder::update`] from the previous table) after dropping
    /// those keys' rules, and returns the whole cluster's warnings and refusals, equal to a
    /// build from nothing's. The caller must check [`TableBuilder::needs_full`] before
    /// publishing, and on `true` build from nothing (with [`Incremental::full`]).
    pub fn update<'a>(
        &mut self,
        builder: &mut TableBuilder,
        spec: &ClusterSpec,
        objs: &Objects<'a>,
        attached: &'a [Attached<'a>],
        plan: Plan,
    ) -> Translated {
        for k in &plan.dirty {
            builder.gateway_remove(&k.addresses, k.port, k.listener.as_deref(), k.host.as_deref());
        }
        // The entries as the stores now are: gone ones dropped, new objects recorded, the
        // keys, warnings and refusals of the routes translated again taken again below.
        for id in &plan.gone {
            self.forget(id, true);
        }
        for (id, object) in plan.renewed {
            if let Some(e) = self.entries.get_mut(&id) {
                self.by_object.remove(&e.object.address());
                self.by_object.insert(object.address(), id);
                e.object = object;
            }
        }
        for id in &plan.again {
            self.forget(id, false);
            if let Some(e) = self.entries.get_mut(id) {
                e.warnings = Warnings::new();
                e.refusal = None;
            }
        }
        for (id, object) in plan.changed {
            if let Some(e) = self.entries.get(&id) {
                self.by_object.remove(&e.object.address());
            }
            self.by_object.insert(object.address(), id.clone());
            self.entries.insert(
                id,
                Entry {
                    object,
                    keys: Vec::new(),
                    warnings: Warnings::new(),
                    refusal: None,
                },
            );
        }
        let again: Vec<&Attached<'a>> = if plan.again_at.is_empty() {
            Vec::new()
        } else {
            attached
                .iter()
                .filter(|a| plan.again_at.contains(&(std::ptr::from_ref(a.route.meta()) as usize)))
                .collect()
        };
        for a in &again {
            let id = (a.route.kind(), a.route.key());
            self.add_keys(&id, keys_of(a));
        }
        let mut refusals = Refusals::new();
        let outs = translate_routes(builder, spec, objs, again.into_iter(), Some(&plan.dirty), &mut refusals);
        self.record(outs, &refusals);
        Translated {
            rebuilt: !plan.dirty.is_empty(),
            ..self.outcome()
        }
    }
}

/// Every path: what a rule without matches matches.
fn match_all() -> Match {
    Match {
        path: PathMatch::Prefix("/".into()),
        method: None,
        headers: Vec::new(),
        query: Vec::new(),
    }
}

fn http_rule(rule: &HttpRouteRule) -> RuleIn<'_> {
    let matches = match rule.matches.is_empty() {
        true => vec![Ok(match_all())],
        false => rule.matches.iter().map(one_match).collect(),
    };
    let all_prefix = rule.matches.iter().all(|m| {
        m.path
            .as_ref()
            .is_none_or(|p| p.type_.as_deref().unwrap_or("PathPrefix") == "PathPrefix")
    });
    RuleIn {
        matches,
        all_prefix,
        filters: &rule.filters,
        backend_refs: &rule.backend_refs,
        timeouts: rule.timeouts.as_ref(),
    }
}

/// A GRPCRoute rule: a method match is a path match on `/service/method` (Exact with both,
/// element-wise PathPrefix `/service` with the service only, any service's method with the
/// method only, an anchored regex for RegularExpression), so that the table's precedence is
/// the GRPCRoute's: service characters, then method characters, then header matches.
fn grpc_rule(rule: &gw::GrpcRouteRule) -> RuleIn<'_> {
    let matches = match rule.matches.is_empty() {
        true => vec![Ok(match_all())],
        false => rule.matches.iter().map(grpc_match).collect(),
    };
    RuleIn {
        matches,
        all_prefix: false,
        filters: &rule.filters,
        backend_refs: &rule.backend_refs,
        timeouts: None,
    }
}

fn grpc_match(m: &gw::GrpcRouteMatch) -> Result<Match, String> {
    let path = match &m.method {
        None => PathMatch::Prefix("/".into()),
        Some(mm) => {
            let (svc, method) = (mm.service.as_deref(), mm.method.as_deref());
            match (mm.type_.as_deref().unwrap_or("Exact"), svc, method) {
                ("Exact", Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}").into()),
                ("Exact", Some(s), None) => PathMatch::Prefix(format!("/{s}").into()),
                ("Exact", None, Some(m)) => PathMatch::GrpcMethod(m.into()),
                ("Exact", None, None) => PathMatch::Prefix("/".into()),
                ("RegularExpression", s, m) => PathMatch::Regex(anchored_regex(&format!(
                    "/(?:{})/(?:{})",
                    s.unwrap_or("[^/]+"),
                    m.unwrap_or("[^/]+")
                ))?),
                (other, _, _) => return Err(format!("method match type {other:?} is not supported")),
            }
        }
    };
    let headers = header_matches(&m.headers, true)?;
    Ok(Match {
        path,
        method: None,
        headers,
        query: Vec::new(),
    })
}

/// An action that answers 500 (what a rule kedge cannot serve as written does).
fn failing(policy: &Arc<Policy>) -> Action {
    Action {
        request_headers: None,
        response_headers: None,
        redirect: None,
        cors: None,
        mirrors: Vec::new(),
        rewrite: None,
        backends: Vec::new(),
        request_timeout: None,
        backend_timeout: None,
        policy: Arc::clone(policy),
    }
}

fn one_match(m: &gw::HttpRouteMatch) -> Result<Match, String> {
    let (kind, value) = match &m.path {
        None => ("PathPrefix", "/"),
        Some(p) => (
            p.type_.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
    };
    let path = match kind {
        "Exact" | "PathPrefix" if !value.starts_with('/') => {
            return Err(format!("path {value:?} does not start with /"));
        }
        "Exact" => PathMatch::Exact(value.into()),
        "PathPrefix" => PathMatch::Prefix(value.into()),
        "RegularExpression" => PathMatch::Regex(anchored_regex(value)?),
        other => return Err(format!("path match type {other:?} is not supported")),
    };
    Ok(Match {
        path,
        method: m.method.as_deref().map(Into::into),
        headers: header_matches(&m.headers, true)?,
        query: header_matches(&m.query_params, false)?,
    })
}

/// Header (names lower-cased) or query parameter matches.
fn header_matches(list: &[gw::HeaderMatch], lower: bool) -> Result<Vec<(Box<str>, ValueMatch)>, String> {
    list.iter()
        .map(|h| {
            let name: Box<str> = match lower {
                true => h.name.to_ascii_lowercase().into(),
                false => h.name.as_str().into(),
            };
            let value = match h.type_.as_deref().unwrap_or("Exact") {
                "Exact" => ValueMatch::Exact(h.value.as_str().into()),
                "RegularExpression" => ValueMatch::Regex(anchored_regex(&h.value)?),
                other => return Err(format!("match type {other:?} is not supported")),
            };
            Ok((name, value))
        })
        .collect()
}

/// A rule's filters, timeouts and backends. `Err`: why the rule answers 500.
#[allow(clippy::too_many_arguments)]
fn rule_action<'a>(
    builder: &mut TableBuilder,
    resolver: &mut Resolver<'a>,
    refs: &RefIndex<'a>,
    route: &RouteIn<'a>,
    rule: &RuleIn<'a>,
    policy: &Arc<Policy>,
    owner: &str,
    w: &mut Warnings,
) -> Result<Action, String> {
    let mut action = failing(policy);
    let all_prefix = rule.all_prefix;
    for f in rule.filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                action.request_headers = Some(Box::new(header_mod(f.request_header_modifier.as_ref())))
            }
            "ResponseHeaderModifier" => {
                action.response_headers = Some(Box::new(header_mod(f.response_header_modifier.as_ref())));
            }
            "RequestRedirect" => {
                let r = f
                    .request_redirect
                    .as_ref()
                    .ok_or("RequestRedirect without its settings")?;
                let status = match r.status_code.unwrap_or(302) {
                    s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                    s => return Err(format!("redirect status {s} is not 301, 302, 303, 307 or 308")),
                };
                let scheme = match r.scheme.as_deref() {
                    None => None,
                    Some(s @ ("http" | "https")) => Some(s.into()),
                    Some(s) => return Err(format!("redirect scheme {s:?} is not http or https")),
                };
                let port = match r.port {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(p)
                            .ok()
                            .filter(|&p| p != 0)
                            .ok_or(format!("bad redirect port {p}"))?,
                    ),
                };
                action.redirect = Some(Box::new(Redirect {
                    scheme,
                    hostname: r.hostname.as_deref().map(str::to_ascii_lowercase).map(Into::into),
                    port,
                    path: path_change(r.path.as_ref(), all_prefix)?,
                    status,
                }));
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or("URLRewrite without its settings")?;
                action.rewrite = Some(Box::new(Rewrite {
                    hostname: r.hostname.as_deref().map(Into::into),
                    path: path_change(r.path.as_ref(), all_prefix)?,
                }));
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref().ok_or("RequestMirror without its settings")?;
                let (route_ns, _) = ns_name(route.meta);
                let be = &m.backend_ref;
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => u32::try_from(*p).unwrap_or(0).min(100),
                    (None, Some(fr)) => {
                        let num = fr.get("numerator").and_then(serde_json::Value::as_u64).unwrap_or(0);
                        let den = fr
                            .get("denominator")
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(100)
                            .max(1);
                        u32::try_from((num * 100 / den).min(100)).unwrap_or(100)
                    }
                    (None, None) => 100,
                };
                // A mirror that cannot be resolved mirrors nothing (gateway.rs reports it).
                if resolve_backend(refs, route_ns, route.kind, be).is_ok()
                    && let Some(port) = be.port
                {
                    let ns = be.namespace.as_deref().unwrap_or(route_ns);
                    let id = resolver.service_port(builder, ns, &be.name, port, owner, w);
                    action.mirrors.push((id, percent));
                } else {
                    warn(
                        w,
                        owner,
                        format!("RequestMirror to {}: not resolved; nothing mirrored", be.name),
                    );
                }
            }
            "CORS" => action.cors = Some(Box::new(cors(f.cors.as_ref().ok_or("CORS without its settings")?)?)),
            other => return Err(format!("filter {other} is not supported by kedge yet")),
        }
    }
    if action.redirect.is_some() && action.rewrite.is_some() {
        return Err(INCOMPATIBLE.into());
    }
    if let Some(t) = rule.timeouts {
        action.request_timeout = duration(t.request.as_deref()).map_err(|e| format!("timeouts.request: {e}"))?;
        action.backend_timeout =
            duration(t.backend_request.as_deref()).map_err(|e| format!("timeouts.backendRequest: {e}"))?;
    }
    let (route_ns, _) = ns_name(route.meta);
    for be in rule.backend_refs {
        // What cannot be resolved answers 500 for its share; `gateway.rs` reports it (the
        // route's ResolvedRefs condition and a warning), so it is not reported twice here.
        let resolved = resolve_backend(refs, route_ns, route.kind, be)
            .ok()
            .and_then(|_| Some((be.namespace.as_deref().unwrap_or(route_ns), be.name.as_str(), be.port?)));
        let backend = match resolved {
            Some((ns, svc, port)) => {
                let id = resolver.service_port(builder, ns, svc, port, owner, w);
                if let Err(c) = builder.backend_tls(id, None, route.h2, owner) {
                    route.contested.set(true);
                    let speaks = if route.h2 { "gRPC (HTTP/2)" } else { "plain HTTP/1.1" };
                    let msg = format!(
                        "the upstream protocol of Service {ns}/{svc} port {port} was set by {}; requests go to \
                         it that way, not as {speaks}",
                        c.winner
                    );
                    warn(w, owner, msg);
                }
                Some(id)
            }
            None => None,
        };
        let headers = be
            .filters
            .iter()
            .filter(|f| f.type_ == "RequestHeaderModifier")
            .find_map(|f| f.request_header_modifier.as_ref())
            .map(|m| Box::new(header_mod(Some(m))));
        if let Some(f) = be.filters.iter().find(|f| f.type_ != "RequestHeaderModifier") {
            warn(
                w,
                owner,
                format!("backendRef filter {} is not supported by kedge; ignored", f.type_),
            );
        }
        action.backends.push(Weighted {
            weight: u32::try_from(be.weight.unwrap_or(1)).unwrap_or(0),
            backend,
            headers,
        });
    }
    action.backends.shrink_to_fit();
    action.mirrors.shrink_to_fit();
    Ok(action)
}

/// The CORS filter's settings (kept as JSON in the types: the field is newer than the rest).
fn cors(v: &serde_json::Value) -> Result<Cors, String> {
    let list = |key: &str| -> Result<Vec<Box<str>>, String> {
        match v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(Into::into)
                        .ok_or(format!("cors.{key} holds a non-string"))
                })
                .collect(),
            Some(_) => Err(format!("cors.{key} is not a list")),
        }
    };
    Ok(Cors {
        allow_origins: list("allowOrigins")?,
        allow_methods: list("allowMethods")?,
        allow_headers: list("allowHeaders")?,
        expose_headers: list("exposeHeaders")?,
        allow_credentials: v
            .get("allowCredentials")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        max_age: v
            .get("maxAge")
            .and_then(serde_json::Value::as_u64)
            .map_or(5, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    })
}

fn header_mod(m: Option<&gw::HeaderModifier>) -> HeaderMod {
    let pairs = |l: &[gw::HeaderValue]| {
        l.iter()
            .map(|h| (h.name.as_str().into(), h.value.as_str().into()))
            .collect()
    };
    match m {
        None => HeaderMod::default(),
        Some(m) => HeaderMod {
            set: pairs(&m.set),
            add: pairs(&m.add),
            remove: m.remove.iter().map(|r| r.as_str().into()).collect(),
        },
    }
}

fn path_change(p: Option<&gw::PathModifier>, all_prefix: bool) -> Result<Option<PathChange>, String> {
    let Some(p) = p else { return Ok(None) };
    match p.type_.as_str() {
        "ReplaceFullPath" => Ok(Some(PathChange::Full(
            p.replace_full_path.as_deref().unwrap_or("/").into(),
        ))),
        "ReplacePrefixMatch" if !all_prefix => Err("ReplacePrefixMatch needs PathPrefix matches only".into()),
        "ReplacePrefixMatch" => Ok(Some(PathChange::Prefix(
            p.replace_prefix_match.as_deref().unwrap_or("/").into(),
        ))),
        other => Err(format!("path modifier {other:?} is not supported")),
    }
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, `1h2m3s`: one to four number-unit pairs,
/// units h, m, s, ms). `0s` (or absent) means no timeout.
pub fn duration(text: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(text) = text else { return Ok(None) };
    let bad = || format!("{text:?} is not a duration like 10s, 500ms or 1h2m");
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut pairs = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match rest.as_bytes().first() {
                Some(b'h') => (Duration::from_secs(3600), 1),
                Some(b'm') => (Duration::from_secs(60), 1),
                Some(b's') => (Duration::from_secs(1), 1),
                _ => return Err(bad()),
            }
        };
        rest = &rest[len..];
        total += unit * u32::try_from(n).map_err(|_| bad())?;
        pairs += 1;
    }
    if pairs == 0 || pairs > 4 {
        return Err(bad());
    }
    Ok((!total.is_zero()).then_some(total))
}

#[cfg(test)]
mod incremental;
#[cfg(test)]
mod tests;

//! Ingresses → rules: class selection, hosts, paths and path types, `defaultBackend`, `tls`
//! sections, canaries, and conflicts between Ingresses (the oldest wins). The Services behind
//! each path are resolved by [`backends`](super::backends); annotations become a rule's policy
//! in [`annotations`](super::annotations).
//!
//! Choices where the API leaves room (as ingress-nginx unless said otherwise):
//! - A path whose Service, Service port or nodePort cannot be resolved still goes into the
//!   table, to a backend with no endpoints, so kedge answers 503 for it (ingress-nginx does the
//!   same). Skipping the rule instead would let the request fall through to a shorter prefix or
//!   the default backend, i.e. to another application.
//! - A path kedge cannot route at all (`backend.resource`, no port, bad path, bad host) is
//!   skipped and reported; the rest of the Ingress is served.
//! - `ImplementationSpecific` is `Prefix`; with an empty path it is the prefix `/`.
//! - An Ingress without `creationTimestamp` counts as the youngest: it cannot claim to be oldest.
//! - Backend names use the Service port *number* once resolved, so a path naming the port
//!   `http` and one naming `80` share one backend (and its balancer state).
//! - The endpoints with `serving` absent count as serving, `terminating` absent as not
//!   terminating (as the API documents), the same as `ready` absent counts as ready.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{HTTPIngressPath, Ingress, IngressClass};
use rustc_hash::FxHashSet as HashSet;

use super::backends::Resolver;
use super::{
    ClusterSpec, Objects, Outcome, TlsBinding, Warning, Warnings, age, annotation, annotations, ns_name, warn,
};
use crate::policy::{Policy, Rewrite};
use crate::routes::{PathType, TableBuilder};

/// Legacy class annotation, from before `spec.ingressClassName`.
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks an IngressClass as the class of Ingresses that name none.
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// `"false"` turns off the HTTP → HTTPS redirect of hosts that have TLS (on by default).
const SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/ssl-redirect";
/// `"true"` redirects HTTP → HTTPS even for hosts without TLS of their own.
const FORCE_SSL_REDIRECT_ANNOTATION: &str = "nginx.ingress.kubernetes.io/force-ssl-redirect";
/// `"true"`: this Ingress is a canary of another one with the same host and path.
const CANARY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/canary";
/// `HTTPS`: TLS to the endpoints (`HTTP`, the default: plain); `GRPC`: HTTP/2 in plain text
/// (h2c); `GRPCS`: HTTP/2 over TLS (ALPN `h2`).
const BACKEND_PROTOCOL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/backend-protocol";
/// `"on"`: verify the endpoints' certificates (off by default, as in ingress-nginx).
const PROXY_SSL_VERIFY_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-verify";
/// `namespace/name` (or `name`, in the Ingress's namespace) of the htpasswd Secret.
const AUTH_SECRET_ANNOTATION: &str = "nginx.ingress.kubernetes.io/auth-secret";
/// `namespace/name` of a Secret whose `ca.crt` verifies the endpoints.
const PROXY_SSL_SECRET_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";
/// The name the endpoints' certificates must carry (default `service.namespace.svc`).
const PROXY_SSL_NAME_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-name";
/// `"on"`: send that name as SNI.
const PROXY_SSL_SERVER_NAME_ANNOTATION: &str = "nginx.ingress.kubernetes.io/proxy-ssl-server-name";

/// Adds the routes of one cluster's Ingresses to `builder`, oldest Ingress first, so that on
/// a conflict the oldest wins.
pub fn translate(builder: &mut TableBuilder, spec: &ClusterSpec, objs: &Objects<'_>) -> Outcome {
    full(builder, spec, objs, None)
}

/// [`translate`], recording into `record` (when given) what each Ingress contributed to each
/// host, for [`Incremental::update`].
fn full(
    builder: &mut TableBuilder,
    spec: &ClusterSpec,
    objs: &Objects<'_>,
    mut record: Option<&mut Incremental>,
) -> Outcome {
    let mut warnings = Warnings::new();
    // Recording: each Ingress's warnings that no host's rules decide (class, annotations, TLS,
    // default backend, hosts that are not names), by the address of its `Arc`. Otherwise they
    // go to `warnings` directly.
    let mut globals: rustc_hash::FxHashMap<usize, Warnings> = rustc_hash::FxHashMap::default();
    let recording = record.is_some();
    macro_rules! global {
        ($ing:expr) => {
            if recording {
                globals.entry(Arc::as_ptr($ing) as usize).or_default()
            } else {
                &mut warnings
            }
        };
    }
    let classes = Classes::new(spec, objs.classes);
    let mut ours: Vec<&Arc<Ingress>> = Vec::new();
    for i in objs.ingresses {
        if classes.serves(i, spec, global!(i)) {
            ours.push(i);
        } else if let Some(rec) = record.as_deref_mut()
            && let Some(gw) = globals.remove(&(Arc::as_ptr(i) as usize)).filter(|w| !w.is_empty())
        {
            warnings.extend(gw.iter().cloned());
            rec.insert(i, gw, Vec::new(), false, false);
        }
    }
    ours.sort_by(|a, b| age(&a.metadata).cmp(&age(&b.metadata)));

    let mut resolver = Resolver::new(spec, objs);
    let secrets = usable_certificates(objs);
    // Hosts with TLS, over all our Ingresses: as in ingress-nginx, a host has TLS (and its
    // plain-HTTP requests are redirected) when any Ingress lists it in a `tls` section.
    let mut tls_hosts = HashSet::default();
    let mut tls = Vec::new();
    for ing in &ours {
        collect_tls(ing, &secrets, &mut tls_hosts, &mut tls, global!(*ing));
    }
    let all_secrets: rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>> =
        objs.secrets.iter().map(|s| (ns_name(&s.metadata), s)).collect();
    let mut served = Vec::new();
    let mut contested = false;
    // Canary Ingresses attach to the rules of the others, so they come after all of them.
    let (canaries, mains): (Vec<_>, Vec<_>) = ours
        .into_iter()
        .partition(|i| annotation(&i.metadata, CANARY_ANNOTATION) == Some("true"));
    for (ing, canary) in mains
        .into_iter()
        .map(|m| (m, false))
        .chain(canaries.into_iter().map(|c| (c, true)))
    {
        let tls = IngressTls {
            hosts: &tls_hosts,
            secrets: &all_secrets,
        };
        let mut sink = Sink::new(global!(ing), None);
        if canary {
            add_canary(builder, &mut resolver, &spec.name, ing, &mut sink);
        } else {
            add_ingress(builder, &mut resolver, &spec.name, ing, &tls, &mut sink);
        }
        let (parts, default, conflict) = (sink.parts, sink.default, sink.contested);
        contested |= conflict;
        if default || parts.iter().any(|p| p.added) {
            let (ns, name) = ns_name(&ing.metadata);
            served.push((ns.to_owned(), name.to_owned()));
        }
        for p in &parts {
            warnings.extend(p.warnings.iter().cloned());
        }
        if let Some(rec) = record.as_deref_mut() {
            let gw = globals.remove(&(Arc::as_ptr(ing) as usize)).unwrap_or_default();
            warnings.extend(gw.iter().cloned());
            rec.insert(ing, gw, parts, default, true);
        }
    }
    served.sort();
    let served: Arc<[(String, String)]> = served.into();
    let warnings: Vec<Warning> = warnings.into_iter().collect();
    if let Some(rec) = record {
        rec.tls.clone_from(&tls);
        rec.tls_hosts = tls_hosts;
        rec.contested = contested;
        rec.served = Arc::clone(&served);
        rec.warnings.clone_from(&warnings);
        rec.ready = true;
    }
    Outcome { warnings, served, tls }
}

/// A host's key in the table, hashed: an exact name, `*.suffix`, or (`None`) the any-host
/// rules. A collision only makes an update rebuild a host it could have kept, which the builder
/// refuses ([`TableBuilder::needs_full`]).
fn host_key(host: Option<&str>) -> u64 {
    let mut h = crate::hash::Fnv::default();
    match host {
        None => h.write(b"\0"),
        Some(name) => h.write(name.as_bytes()),
    }
    crate::hash::mix(h.0)
}

/// What one Ingress's rules of one host did in a build.
#[derive(Debug)]
struct Part {
    host: u64,
    /// A rule (or canary) of it went into the table.
    added: bool,
    warnings: Warnings,
}

/// Where one Ingress's translation puts what it finds: warnings that no host decides, and per
/// host its part; with a `filter` (an update), only the rules of those hosts are added.
struct Sink<'w> {
    global: &'w mut Warnings,
    parts: Vec<Part>,
    filter: Option<&'w HashSet<u64>>,
    /// Its default backend went in.
    default: bool,
    /// An upstream protocol it asked for lost to an earlier Ingress's.
    contested: bool,
}

impl<'w> Sink<'w> {
    fn new(global: &'w mut Warnings, filter: Option<&'w HashSet<u64>>) -> Self {
        Sink {
            global,
            parts: Vec::new(),
            filter,
            default: false,
            contested: false,
        }
    }

    /// The part of `host`, or `None` when this (update) does not rebuild that host.
    fn part(&mut self, host: Option<&str>) -> Option<&mut Part> {
        let key = host_key(host);
        if self.filter.is_some_and(|f| !f.contains(&key)) {
            return None;
        }
        let i = match self.parts.iter().position(|p| p.host == key) {
            Some(i) => i,
            None => {
                self.parts.push(Part {
                    host: key,
                    added: false,
                    warnings: Warnings::new(),
                });
                self.parts.len() - 1
            }
        };
        Some(&mut self.parts[i])
    }
}

/// One Ingress as the last build translated it.
struct Entry {
    ing: Arc<Ingress>,
    /// Of our class.
    ours: bool,
    /// Its warnings that no host's rules decide (class, annotations, TLS, default backend,
    /// hosts that are not DNS names).
    global: Warnings,
    default: bool,
    parts: Vec<Part>,
    /// The last [`Incremental::plan`] that found it in the stores.
    seen: u64,
}

impl Entry {
    /// It got routes (a rule, a canary or the default backend).
    fn served(&self) -> bool {
        self.default || self.parts.iter().any(|p| p.added)
    }

    /// It has warnings.
    fn warned(&self) -> bool {
        !self.global.is_empty() || self.parts.iter().any(|p| !p.warnings.is_empty())
    }

    fn key(&self) -> (String, String) {
        let (ns, name) = ns_name(&self.ing.metadata);
        (ns.to_owned(), name.to_owned())
    }
}

/// One cluster's Ingresses as the last build translated them, per Ingress and host, so that
/// after a change only the hosts it touches are translated again ([`Incremental::plan`],
/// [`TableBuilder::update`], [`Incremental::update`]) and the others' rules stay shared with
/// the previous table. It holds no rules and no backends (those are the table's): the
/// Ingress objects (shared with the stores), and each one's hosts (hashed), warnings and
/// whether it got routes.
#[derive(Default)]
pub struct Incremental {
    /// By the address of the stores' `Arc` (a changed object is a new `Arc`).
    entries: rustc_hash::FxHashMap<usize, Entry>,
    tls: Vec<TlsBinding>,
    tls_hosts: HashSet<String>,
    /// Some Ingress lost an upstream protocol to an older one: who wins is decided over every
    /// host, so no update until the next build from nothing.
    contested: bool,
    /// A build from nothing recorded this state (and no update failed since).
    ready: bool,
    pass: u64,
    /// The last build's served Ingresses and warnings, as its [`Outcome`] had them: an update
    /// that changes neither (no Ingress it touches had or has warnings, or became served or
    /// unserved) hands them on without a pass over every Ingress.
    served: Arc<[(String, String)]>,
    warnings: Vec<Warning>,
    /// [`Incremental::plan`] changed some Ingress's warnings that no host decides (a
    /// certificate appeared or went): the next update gathers the warnings again.
    rewarn: bool,
}

/// What an update translates again, found by [`Incremental::plan`].
pub struct Plan {
    /// The dirty hosts, as [`TableBuilder::update`] takes them: exact names, `*.suffix`,
    /// `None` for the any-host rules.
    pub hosts: Vec<Option<String>>,
    keys: HashSet<u64>,
    /// Ingresses that are new objects (new, or changed).
    new: Vec<Arc<Ingress>>,
}

impl Plan {
    /// Adds hosts other clusters' changes touch: rules from several clusters meet in one
    /// table, and each cluster adds its rules of every dirty host again.
    pub fn extend_hosts(&mut self, hosts: &[Option<String>]) {
        for h in hosts {
            if self.keys.insert(host_key(h.as_deref())) {
                self.hosts.push(h.clone());
            }
        }
    }
}

/// Why an update would not equal a build from nothing; the caller builds from nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedFull(pub &'static str);

impl Incremental {
    /// A build from nothing ([`translate`]) that records what the next update needs.
    pub fn full(&mut self, builder: &mut TableBuilder, spec: &ClusterSpec, objs: &Objects<'_>) -> Outcome {
        *self = Incremental::default();
        full(builder, spec, objs, Some(self))
    }

    /// Forgets the last build (the next one must be [`Incremental::full`]).
    pub fn clear(&mut self) {
        *self = Incremental::default();
    }

    fn insert(&mut self, ing: &Arc<Ingress>, global: Warnings, parts: Vec<Part>, default: bool, ours: bool) {
        self.entries.insert(
            Arc::as_ptr(ing) as usize,
            Entry {
                ing: Arc::clone(ing),
                ours,
                global,
                default,
                parts,
                seen: self.pass,
            },
        );
    }

    /// The hosts to build again after the stores became `objs`: every host of the Ingresses
    /// that are new objects, that are gone, that use a Service in `services` (whose object
    /// or endpoints changed), or whose `auth-secret` is one of the changed `secrets`; the
    /// certificates of changed `secrets` that `tls` sections name are swapped in (no host is
    /// built again for them). `Err` when only a build from nothing is exact: no previous
    /// build, an upstream protocol contested, such an Ingress (not one that only reads a
    /// changed Secret) has a `tls` section, one has a default backend (both decided over every
    /// Ingress), or a `proxy-ssl-secret` changed. A certificate that appeared, went or became
    /// unusable changes the bindings only (see `swap_certificates`).
    pub fn plan(
        &mut self,
        spec: &ClusterSpec,
        objs: &Objects<'_>,
        services: &std::collections::BTreeSet<(String, String)>,
        secrets: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<Plan, NeedFull> {
        if !self.ready {
            return Err(NeedFull("no previous build"));
        }
        if self.contested {
            return Err(NeedFull("an upstream protocol is contested"));
        }
        let changed: HashSet<(&str, &str)> = secrets.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
        if !changed.is_empty() {
            self.swap_certificates(objs, &changed);
        }
        self.pass += 1;
        let pass = self.pass;
        let classes = Classes::new(spec, objs.classes);
        let mut hosts: HashSet<Option<String>> = HashSet::default();
        let mut new = Vec::new();
        // Ingresses of ours translated again as new objects because a Secret they read changed.
        let mut reread: HashSet<usize> = HashSet::default();
        for ing in objs.ingresses {
            match self.entries.get_mut(&(Arc::as_ptr(ing) as usize)) {
                Some(e) if e.ours && !changed.is_empty() && reads_annotation_secret(ing, &changed)? => {
                    // Its warnings that no host decides come from the Secret too: translated
                    // again whole, as a changed object (its `tls` section, unchanged, decides
                    // what it did).
                    if ing.spec.as_ref().is_some_and(|s| s.default_backend.is_some()) {
                        return Err(NeedFull("an Ingress with a default backend reads a changed Secret"));
                    }
                    if annotation(&ing.metadata, BACKEND_PROTOCOL_ANNOTATION)
                        .is_some_and(|p| !p.eq_ignore_ascii_case("HTTP"))
                    {
                        return Err(NeedFull("an Ingress with a backend-protocol reads a changed Secret"));
                    }
                    hosts.extend(rule_hosts(ing));
                    reread.insert(Arc::as_ptr(ing) as usize);
                    new.push(Arc::clone(ing));
                }
                Some(e) => {
                    e.seen = pass;
                    if e.ours && !services.is_empty() && uses_service(ing, services) {
                        global_parts(ing)?;
                        hosts.extend(rule_hosts(ing));
                    }
                }
                None => {
                    if classes.serves(ing, spec, &mut Warnings::new()) {
                        global_parts(ing)?;
                        hosts.extend(rule_hosts(ing));
                    }
                    new.push(Arc::clone(ing));
                }
            }
        }
        // Gone from the stores: deleted, or the previous object of a changed one.
        for e in self
            .entries
            .values()
            .filter(|e| e.seen != pass && e.ours && !reread.contains(&(Arc::as_ptr(&e.ing) as usize)))
        {
            global_parts(&e.ing)?;
            // The upstream protocol it decided for a backend may have been the only say.
            if annotation(&e.ing.metadata, BACKEND_PROTOCOL_ANNOTATION).is_some_and(|p| !p.eq_ignore_ascii_case("HTTP"))
            {
                return Err(NeedFull("a changed Ingress had a backend-protocol"));
            }
            hosts.extend(rule_hosts(&e.ing));
        }
        let keys = hosts.iter().map(|h| host_key(h.as_deref())).collect();
        Ok(Plan {
            hosts: hosts.into_iter().collect(),
            keys,
            new,
        })
    }

    /// The certificates of the `changed` Secrets that our Ingresses' `tls` sections name: each
    /// one usable before (it has bindings) and still usable is swapped into those bindings,
    /// which is all a build from nothing would change. One that appeared, went or became
    /// unusable changes which hosts get it (the others the default certificate) and the `tls`
    /// warnings of the Ingresses naming it, not which hosts have TLS (any `tls` section gives
    /// its hosts TLS, certificate or not): the bindings are collected again over our Ingresses,
    /// in a build from nothing's order, and those Ingresses' `tls` warnings are redone; no
    /// host's rules change.
    fn swap_certificates(&mut self, objs: &Objects<'_>, changed: &HashSet<(&str, &str)>) {
        let named: HashSet<(&str, &str)> = self
            .entries
            .values()
            .filter(|e| e.ours)
            .flat_map(|e| tls_secret_refs(&e.ing))
            .filter(|r| changed.contains(r))
            .collect();
        let mut rebind = false;
        for (ns, name) in named {
            let now = objs
                .secrets
                .iter()
                .find(|s| ns_name(&s.metadata) == (ns, name))
                .filter(|s| usable_tls(s));
            let bound = self.tls.iter().any(|b| ns_name(&b.secret.metadata) == (ns, name));
            let Some(now) = now.filter(|_| bound) else {
                rebind = true;
                continue;
            };
            for b in &mut self.tls {
                if ns_name(&b.secret.metadata) == (ns, name) {
                    b.secret = Arc::clone(now);
                }
            }
        }
        if rebind {
            self.rebind(objs, changed);
        }
    }

    /// A certificate Secret in `changed` appeared, went or became unusable: the bindings of
    /// every Ingress of ours again (oldest first, as [`full`]), and the `tls` warnings of those
    /// naming a changed Secret (the warnings are handed on again by the next update).
    fn rebind(&mut self, objs: &Objects<'_>, changed: &HashSet<(&str, &str)>) {
        let usable = usable_certificates(objs);
        let none = rustc_hash::FxHashMap::default();
        let mut ours: Vec<&mut Entry> = self
            .entries
            .values_mut()
            .filter(|e| {
                e.ours
                    && e.ing
                        .spec
                        .as_ref()
                        .is_some_and(|s| s.tls.as_ref().is_some_and(|t| !t.is_empty()))
            })
            .collect();
        ours.sort_by(|a, b| age(&a.ing.metadata).cmp(&age(&b.ing.metadata)));
        let mut tls = Vec::new();
        for e in ours {
            let ing = Arc::clone(&e.ing);
            if tls_secret_refs(&ing).any(|r| changed.contains(&r)) {
                // Every `tls` warning it may have had (each Secret it names missing) goes, then
                // those of the Secrets as they are now come back.
                let mut before = Warnings::new();
                collect_tls(&ing, &none, &mut HashSet::default(), &mut Vec::new(), &mut before);
                e.global.retain(|w| !before.contains(w));
                collect_tls(&ing, &usable, &mut HashSet::default(), &mut tls, &mut e.global);
                self.rewarn = true;
            } else {
                collect_tls(&ing, &usable, &mut HashSet::default(), &mut tls, &mut Warnings::new());
            }
        }
        self.tls = tls;
    }

    /// The Services (namespace, name) an update with `plan` resolves: those the Ingresses it
    /// translates again use (a superset: every new Ingress's, whatever its class). Their
    /// EndpointSlices are all of `objs.slices` that [`Incremental::update`] reads, so the caller
    /// may pass only those instead of every EndpointSlice of the cluster.
    pub fn services(&self, plan: &Plan) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let again = self
            .entries
            .values()
            .filter(|e| e.seen == self.pass && e.ours && e.parts.iter().any(|p| plan.keys.contains(&p.host)))
            .map(|e| &e.ing)
            .chain(&plan.new);
        for ing in again {
            let (ns, _) = ns_name(&ing.metadata);
            out.extend(service_refs(ing).map(|svc| (ns.to_owned(), svc.to_owned())));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Translates again every Ingress with rules in the plan's hosts, those hosts' rules only,
    /// into `builder` (made by [`TableBuilder::update`] from the previous table with the same
    /// hosts), and returns the whole cluster's outcome, equal to a build from nothing's. The
    /// caller must check [`TableBuilder::needs_full`] before publishing, and on `true` build
    /// from nothing (with [`Incremental::full`]).
    pub fn update(
        &mut self,
        builder: &mut TableBuilder,
        spec: &ClusterSpec,
        objs: &Objects<'_>,
        plan: &Plan,
    ) -> Outcome {
        let pass = self.pass;
        let classes = Classes::new(spec, objs.classes);
        // The Ingresses this update touches, by key: served before, served after; and whether
        // any of them had or has warnings.
        let mut touched: rustc_hash::FxHashMap<(String, String), (bool, bool)> = rustc_hash::FxHashMap::default();
        let mut warned = std::mem::take(&mut self.rewarn);
        self.entries.retain(|_, e| {
            if e.seen == pass {
                return true;
            }
            touched.entry(e.key()).or_default().0 |= e.served();
            warned |= e.warned();
            false
        });
        // (Ingress, new object, its warnings that no host decides)
        let mut again: Vec<(Arc<Ingress>, bool, Warnings)> = self
            .entries
            .values()
            .filter(|e| e.ours && e.parts.iter().any(|p| plan.keys.contains(&p.host)))
            .map(|e| (Arc::clone(&e.ing), false, Warnings::new()))
            .collect();
        // The certificates, for the warnings of the `tls` sections of Ingresses translated
        // again because a Secret they read changed (new Ingresses have none: see `plan`).
        let usable = std::cell::LazyCell::new(|| {
            objs.secrets
                .iter()
                .filter(|s| usable_tls(s))
                .map(|s| (ns_name(&s.metadata), s))
                .collect::<rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>>>()
        });
        for ing in &plan.new {
            let mut gw = Warnings::new();
            if classes.serves(ing, spec, &mut gw) {
                if ing
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.tls.as_ref().is_some_and(|t| !t.is_empty()))
                {
                    // Its bindings and TLS hosts are the previous build's (its spec is the same).
                    collect_tls(ing, &usable, &mut HashSet::default(), &mut Vec::new(), &mut gw);
                }
                again.push((Arc::clone(ing), true, gw));
            } else if !gw.is_empty() {
                self.insert(ing, gw, Vec::new(), false, false);
            }
        }
        again.sort_by(|a, b| age(&a.0.metadata).cmp(&age(&b.0.metadata)));
        let (again, mut gws): (Vec<(Arc<Ingress>, bool)>, Vec<Warnings>) =
            again.into_iter().map(|(i, n, w)| ((i, n), w)).unzip();
        // Only the Services these Ingresses use are indexed.
        let mut services: Vec<(String, String)> = Vec::new();
        for (ing, _) in &again {
            let (ns, _) = ns_name(&ing.metadata);
            services.extend(service_refs(ing).map(|svc| (ns.to_owned(), svc.to_owned())));
        }
        services.sort_unstable();
        services.dedup();
        let mut resolver = Resolver::only(spec, objs, &services);
        let all_secrets: rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>> =
            objs.secrets.iter().map(|s| (ns_name(&s.metadata), s)).collect();
        let tls_hosts = std::mem::take(&mut self.tls_hosts);
        // Canary Ingresses attach to the rules of the others, so they come after all of them.
        let canary = |i: &usize| annotation(&again[*i].0.metadata, CANARY_ANNOTATION) == Some("true");
        let order: Vec<usize> = (0..again.len())
            .filter(|i| !canary(i))
            .chain((0..again.len()).filter(|i| canary(i)))
            .collect();
        let mut parts: Vec<Vec<Part>> = (0..again.len()).map(|_| Vec::new()).collect();
        for i in order {
            let ing: &Ingress = &again[i].0;
            let tls = IngressTls {
                hosts: &tls_hosts,
                secrets: &all_secrets,
            };
            let mut sink = Sink::new(&mut gws[i], Some(&plan.keys));
            if canary(&i) {
                add_canary(builder, &mut resolver, &spec.name, ing, &mut sink);
            } else {
                add_ingress(builder, &mut resolver, &spec.name, ing, &tls, &mut sink);
            }
            self.contested |= sink.contested;
            parts[i] = sink.parts;
        }
        drop(resolver);
        self.tls_hosts = tls_hosts;
        for (((ing, is_new), gw), parts) in again.iter().zip(gws).zip(parts) {
            let key = Arc::as_ptr(ing) as usize;
            if *is_new {
                self.insert(ing, gw, parts, false, true);
            } else if let Some(e) = self.entries.get_mut(&key) {
                touched.entry(e.key()).or_default().0 |= e.served();
                warned |= e.warned();
                // Its other hosts' parts and its warnings that no host decides are unchanged.
                e.parts.retain(|p| !plan.keys.contains(&p.host));
                e.parts.extend(parts);
            }
            if let Some(e) = self.entries.get(&key) {
                touched.entry(e.key()).or_default().1 |= e.served();
                warned |= e.warned();
            }
        }
        // New Ingresses not ours, with warnings of their own.
        warned |= plan.new.iter().any(|i| {
            self.entries
                .get(&(Arc::as_ptr(i) as usize))
                .is_some_and(|e| !e.ours && e.warned())
        });
        if warned {
            let mut warnings = Warnings::new();
            for e in self.entries.values() {
                warnings.extend(e.global.iter().cloned());
                for p in &e.parts {
                    warnings.extend(p.warnings.iter().cloned());
                }
            }
            self.warnings = warnings.into_iter().collect();
        }
        if touched.values().any(|(before, after)| before != after) {
            let mut served: Vec<(String, String)> =
                self.entries.values().filter(|e| e.served()).map(Entry::key).collect();
            served.sort_unstable();
            self.served = served.into();
        }
        Outcome {
            warnings: self.warnings.clone(),
            served: Arc::clone(&self.served),
            tls: self.tls.clone(),
        }
    }
}

/// An Ingress's parts that an update cannot translate alone: a `tls` section (which hosts have
/// TLS is decided over every Ingress) and a default backend (the oldest Ingress's wins).
fn global_parts(ing: &Ingress) -> Result<(), NeedFull> {
    let Some(spec) = &ing.spec else { return Ok(()) };
    if spec.tls.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(NeedFull("a changed Ingress has a tls section"));
    }
    if spec.default_backend.is_some() {
        return Err(NeedFull("a changed Ingress has a default backend"));
    }
    Ok(())
}

/// The hosts an Ingress has rules for (those with `http`), as the table names them.
fn rule_hosts(ing: &Ingress) -> impl Iterator<Item = Option<String>> + '_ {
    ing.spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter(|r| r.http.is_some())
        .filter_map(|r| match r.host.as_deref().filter(|h| !h.is_empty()) {
            None => Some(None),
            Some(h) => parse_host(h).map(Some),
        })
}

/// The names of the Services an Ingress's paths and default backend use (its namespace's).
fn service_refs(ing: &Ingress) -> impl Iterator<Item = &str> + '_ {
    let spec = ing.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| s.rules.iter().flatten())
        .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
        .map(|p| &p.backend)
        .chain(spec.and_then(|s| s.default_backend.as_ref()))
        .filter_map(|b| b.service.as_ref().map(|s| s.name.as_str()))
}

/// Whether an Ingress uses one of `services` (namespace, name).
fn uses_service(ing: &Ingress, services: &std::collections::BTreeSet<(String, String)>) -> bool {
    let (ns, _) = ns_name(&ing.metadata);
    service_refs(ing).any(|svc| services.iter().any(|(n, s)| n == ns && s == svc))
}

/// The Secrets (namespace, name) an Ingress's `tls` sections name (in its namespace).
fn tls_secret_refs(ing: &Ingress) -> impl Iterator<Item = (&str, &str)> + '_ {
    let (ns, _) = ns_name(&ing.metadata);
    ing.spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(move |t| Some((ns, t.secret_name.as_deref().filter(|s| !s.is_empty())?)))
}

/// The Secrets (namespace, name) an Ingress's annotations name: `auth-secret`,
/// `proxy-ssl-secret` (`name` alone: in the Ingress's namespace).
fn annotation_secret_refs(ing: &Ingress) -> impl Iterator<Item = (&str, &str)> + '_ {
    let (ns, _) = ns_name(&ing.metadata);
    [AUTH_SECRET_ANNOTATION, PROXY_SSL_SECRET_ANNOTATION]
        .into_iter()
        .filter_map(move |key| annotation(&ing.metadata, key))
        .map(move |r| r.split_once('/').unwrap_or((ns, r)))
}

/// Whether an Ingress's `auth-secret` is one of the `changed` Secrets; `Err` when its
/// `proxy-ssl-secret` is (a backend's upstream TLS is decided over every Ingress that uses it).
fn reads_annotation_secret(ing: &Ingress, changed: &HashSet<(&str, &str)>) -> Result<bool, NeedFull> {
    let (ns, _) = ns_name(&ing.metadata);
    let named = |key: &str| {
        annotation(&ing.metadata, key).is_some_and(|r| changed.contains(&r.split_once('/').unwrap_or((ns, r))))
    };
    if named(PROXY_SSL_SECRET_ANNOTATION) {
        return Err(NeedFull("a proxy-ssl-secret Secret changed"));
    }
    Ok(named(AUTH_SECRET_ANNOTATION))
}

/// The Secrets (namespace, name) Ingresses (of any class) read: in `tls` sections, as
/// `auth-secret` or as `proxy-ssl-secret`. A change of a Secret no Ingress reads (nor a Gateway
/// listener) changes nothing kedge serves.
pub fn secrets_read<'a>(ingresses: &'a [Arc<Ingress>]) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    ingresses
        .iter()
        .flat_map(|ing| tls_secret_refs(ing).chain(annotation_secret_refs(ing)))
}

/// The Secrets of `objs` that are usable certificates, by (namespace, name).
fn usable_certificates<'a>(objs: &Objects<'a>) -> rustc_hash::FxHashMap<(&'a str, &'a str), &'a Arc<Secret>> {
    objs.secrets
        .iter()
        .filter(|s| usable_tls(s))
        .map(|s| (ns_name(&s.metadata), s))
        .collect()
}

/// Whether a Secret can serve as a certificate: type `kubernetes.io/tls` with a non-empty
/// `tls.crt` and `tls.key` (parsing the PEM is the TLS listener's business).
fn usable_tls(s: &Secret) -> bool {
    let has = |k: &str| s.data.as_ref().and_then(|d| d.get(k)).is_some_and(|v| !v.0.is_empty());
    s.type_.as_deref() == Some("kubernetes.io/tls") && has("tls.crt") && has("tls.key")
}

/// Collects an Ingress's `tls` entries: their hosts have TLS; those with a usable Secret (same
/// namespace) get its certificate, the others the default one (with a warning when the Secret
/// is missing or unusable). An entry without hosts covers the Ingress's rule hosts; one without
/// `secretName` uses the default certificate, as in ingress-nginx.
fn collect_tls(
    ing: &Ingress,
    secrets: &rustc_hash::FxHashMap<(&str, &str), &Arc<Secret>>,
    tls_hosts: &mut HashSet<String>,
    out: &mut Vec<TlsBinding>,
    w: &mut Warnings,
) {
    let Some(spec) = &ing.spec else { return };
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    for entry in spec.tls.iter().flatten() {
        let listed: Vec<&str> = entry.hosts.iter().flatten().map(String::as_str).collect();
        let hosts: Vec<&str> = if listed.is_empty() {
            spec.rules
                .iter()
                .flatten()
                .filter_map(|r| r.host.as_deref())
                .filter(|h| !h.is_empty())
                .collect()
        } else {
            listed
        };
        let secret = match entry.secret_name.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(secret) => match secrets.get(&(ns, secret)) {
                Some(s) => Some(*s),
                None => {
                    warn(
                        w,
                        &owner,
                        format!(
                            "tls: Secret {ns}/{secret} not found, or not a kubernetes.io/tls Secret with tls.crt and \
                             tls.key; its hosts get the default certificate"
                        ),
                    );
                    None
                }
            },
        };
        for h in hosts {
            let Some(host) = parse_host(h) else {
                warn(
                    w,
                    &owner,
                    format!("tls: host {h:?} is not a DNS name or *.suffix wildcard; ignored"),
                );
                continue;
            };
            if let Some(secret) = secret {
                out.push(TlsBinding {
                    host: host.clone(),
                    secret: Arc::clone(secret),
                    owner: owner.clone(),
                    scope: None,
                });
            }
            tls_hosts.insert(host);
        }
    }
}

/// The cluster's IngressClasses, as far as class selection needs them.
struct Classes<'a> {
    /// Names of the classes whose controller is ours.
    ours: HashSet<&'a str>,
    /// Names of all classes.
    all: HashSet<&'a str>,
    /// One of ours is marked default.
    default: bool,
}

impl<'a> Classes<'a> {
    fn new(spec: &ClusterSpec, classes: &'a [Arc<IngressClass>]) -> Self {
        let mut c = Classes {
            ours: HashSet::default(),
            all: HashSet::default(),
            default: false,
        };
        for class in classes {
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            c.all.insert(name);
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller == Some(spec.controller.as_str()) {
                c.ours.insert(name);
                c.default |= annotation(&class.metadata, DEFAULT_CLASS_ANNOTATION) == Some("true");
            }
        }
        c
    }

    /// Whether `ing` is ours: its `ingressClassName` is one of our classes; or, without one,
    /// its legacy annotation names our class; or, with neither, one of our classes is default.
    /// An Ingress of another class is someone else's business and gets no warning, except one
    /// that names our class name when no IngressClass of that name exists: that is almost
    /// certainly meant for us, and the fix (create the IngressClass) is worth saying.
    fn serves(&self, ing: &Ingress, spec: &ClusterSpec, w: &mut Warnings) -> bool {
        let class_name = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref());
        match class_name.filter(|n| !n.is_empty()) {
            Some(n) if self.ours.contains(n) => true,
            Some(n) => {
                if n == spec.ingress_class && !self.all.contains(n) {
                    let (ns, name) = ns_name(&ing.metadata);
                    warn(
                        w,
                        &format!("Ingress {ns}/{name}"),
                        format!(
                            "ingressClassName {n:?} names no IngressClass; create one with controller {:?} \
                             for kedge to serve this Ingress",
                            spec.controller
                        ),
                    );
                }
                false
            }
            None => match annotation(&ing.metadata, LEGACY_CLASS_ANNOTATION) {
                Some(a) => a == spec.ingress_class,
                None => self.default,
            },
        }
    }
}

/// Adds one Ingress's rules and default backend. Returns whether anything went in.
/// What an Ingress's translation needs to know about TLS.
struct IngressTls<'t> {
    /// Hosts with TLS (listed in some Ingress's `tls` section).
    hosts: &'t HashSet<String>,
    /// The watched Secrets, for `proxy-ssl-secret`.
    secrets: &'t rustc_hash::FxHashMap<(&'t str, &'t str), &'t Arc<Secret>>,
}

/// The upstream TLS an Ingress asks for through ingress-nginx's annotations, for Service `svc`
/// in its namespace (`None`: plain), and whether the endpoints speak HTTP/2 (`GRPC`, `GRPCS`).
fn upstream_tls(
    ing: &Ingress,
    svc: &str,
    tls: &IngressTls<'_>,
    owner: &str,
    w: &mut Warnings,
) -> (Option<crate::tls::UpstreamTlsSettings>, bool) {
    use crate::tls::{UpstreamTlsSettings, Verify};
    let m = &ing.metadata;
    let h2 = match annotation(m, BACKEND_PROTOCOL_ANNOTATION)
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("HTTP") => return (None, false),
        Some("GRPC") => return (None, true),
        Some("HTTPS") => false,
        Some("GRPCS") => true,
        Some(other) => {
            warn(
                w,
                owner,
                format!(
                    "{BACKEND_PROTOCOL_ANNOTATION}: {other:?} is not supported (HTTP, HTTPS, GRPC and GRPCS are); \
                     using HTTP"
                ),
            );
            return (None, false);
        }
    };
    let (ns, _) = ns_name(m);
    let on = |k: &str| annotation(m, k) == Some("on");
    let verify = match annotation(m, PROXY_SSL_SECRET_ANNOTATION) {
        Some(reference) => {
            let (sns, sname) = reference.split_once('/').unwrap_or((ns, reference));
            let ca = tls
                .secrets
                .get(&(sns, sname))
                .and_then(|s| s.data.as_ref()?.get("ca.crt"))
                .map(|b| b.0.clone());
            match ca {
                Some(pem) => Verify::Ca(pem),
                None => {
                    warn(
                        w,
                        owner,
                        format!(
                            "{PROXY_SSL_SECRET_ANNOTATION}: Secret {sns}/{sname} not found or without ca.crt (kedge reads \
                             kubernetes.io/tls and Opaque Secrets only); verifying against the system's CAs"
                        ),
                    );
                    Verify::System
                }
            }
        }
        None if on(PROXY_SSL_VERIFY_ANNOTATION) => Verify::System,
        None => Verify::Off,
    };
    let verify = if on(PROXY_SSL_VERIFY_ANNOTATION) || matches!(verify, Verify::Off) {
        verify
    } else {
        Verify::Off // a CA without proxy-ssl-verify: on is not used (as ingress-nginx)
    };
    let name = annotation(m, PROXY_SSL_NAME_ANNOTATION)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{svc}.{ns}.svc"));
    let settings = UpstreamTlsSettings {
        verify,
        name,
        sni: on(PROXY_SSL_SERVER_NAME_ANNOTATION),
        h2,
    };
    (Some(settings), h2)
}

fn add_ingress<'a>(
    b: &mut TableBuilder,
    r: &mut Resolver<'a>,
    cluster: &str,
    ing: &'a Ingress,
    tls: &IngressTls<'_>,
    sink: &mut Sink<'_>,
) {
    let tls_hosts = tls.hosts;
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    // In the table, rules from several clusters meet: say which cluster a winning rule is from.
    let table_owner = format!("{owner} of cluster {cluster}");
    let Some(spec) = &ing.spec else { return };
    let mut ann = annotations::read(&ing.metadata, &owner, sink.global);
    ann.base.auth = annotations::basic_auth(&ing.metadata, tls.secrets, &owner, sink.global);
    let force_redirect = annotation(&ing.metadata, FORCE_SSL_REDIRECT_ANNOTATION) == Some("true");
    let tls_redirect = annotation(&ing.metadata, SSL_REDIRECT_ANNOTATION) != Some("false");
    let mut contested = false;
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule_host(rule, &owner, sink.global) else {
            continue;
        };
        // A rule without `http` only names a host (for TLS); it routes nothing.
        let Some(http) = &rule.http else { continue };
        let Some(part) = sink.part(host.as_deref()) else {
            continue;
        };
        let (w, added) = (&mut part.warnings, &mut part.added);
        let shown = host.as_deref().unwrap_or("*");
        let ssl_redirect = force_redirect || tls_redirect && host.as_ref().is_some_and(|h| tls_hosts.contains(h));
        // Rules without a rewrite share one policy; its limits count per Ingress and host.
        let mut id = crate::hash::Fnv::default();
        id.write(table_owner.as_bytes());
        id.write(shown.as_bytes());
        let shared = std::sync::Arc::new(Policy {
            ssl_redirect,
            limit_id: id.0,
            host: shown.into(),
            ..ann.base.clone()
        });
        for p in &http.paths {
            let Some((path, path_type)) = rule_path(p, shown, ann.regex, &owner, w) else {
                continue;
            };
            let policy = match (&ann.rewrite_target, path_type) {
                (Some(target), PathType::Regex) => match crate::routes::regex_path(path) {
                    Ok(pattern) => std::sync::Arc::new(Policy {
                        rewrite: Some(Rewrite {
                            pattern,
                            target: target.as_str().into(),
                        }),
                        ..(*shared).clone()
                    }),
                    Err(e) => {
                        warn(w, &owner, format!("host {shown}: path {path:?}: {e}; path ignored"));
                        continue;
                    }
                },
                (_, PathType::Regex) => match crate::routes::regex_path(path) {
                    Ok(_) => std::sync::Arc::clone(&shared),
                    Err(e) => {
                        warn(w, &owner, format!("host {shown}: path {path:?}: {e}; path ignored"));
                        continue;
                    }
                },
                _ => std::sync::Arc::clone(&shared),
            };
            // The affinity cookie's path defaults to the rule's (as ingress-nginx); `/` for a
            // regex path.
            let policy = match &policy.affinity {
                Some(a) if a.path.is_empty() => {
                    let mut p = (*policy).clone();
                    if let Some(a) = &mut p.affinity {
                        a.path = if path_type == PathType::Regex {
                            "/".into()
                        } else {
                            path.into()
                        };
                    }
                    std::sync::Arc::new(p)
                }
                _ => policy,
            };
            let Some(id) = r.backend(b, ns, &p.backend, &owner, w) else {
                continue;
            };
            contested |= !set_backend_tls(
                b,
                id,
                ing,
                p.backend.service.as_ref().map_or("", |s| s.name.as_str()),
                tls,
                (&owner, &table_owner),
                w,
            );
            match b.rule_with(host.as_deref(), path, path_type, id, policy, &table_owner) {
                Ok(()) => *added = true,
                Err(c) => warn(
                    w,
                    &owner,
                    format!(
                        "host {shown} path {path} ({path_type:?}) is already routed by {}; ignored",
                        c.winner
                    ),
                ),
            }
        }
    }
    sink.contested |= contested;
    // The default backend is decided over every Ingress: an update keeps the previous one.
    if sink.filter.is_some() {
        return;
    }
    let w = &mut *sink.global;
    if let Some(db) = &spec.default_backend
        && let Some(id) = r.backend(b, ns, db, &owner, w)
    {
        sink.contested |= !set_backend_tls(
            b,
            id,
            ing,
            db.service.as_ref().map_or("", |s| s.name.as_str()),
            tls,
            (&owner, &table_owner),
            w,
        );
        match b.default_backend(id, &table_owner) {
            Ok(()) => sink.default = true,
            Err(c) => warn(
                w,
                &owner,
                format!("the default backend is already set by {}; ignored", c.winner),
            ),
        }
    }
}

/// Attaches a canary Ingress's paths to the rules of the main Ingress with the same host, path
/// and type. Returns whether any was attached.
fn add_canary<'a>(b: &mut TableBuilder, r: &mut Resolver<'a>, cluster: &str, ing: &'a Ingress, sink: &mut Sink<'_>) {
    let (ns, name) = ns_name(&ing.metadata);
    let owner = format!("Ingress {ns}/{name}");
    let table_owner = format!("{owner} of cluster {cluster}");
    let Some(spec) = &ing.spec else { return };
    let Some(selectors) = annotations::canary(&ing.metadata, &owner, sink.global) else {
        return;
    };
    let regex = annotation(&ing.metadata, "nginx.ingress.kubernetes.io/use-regex") == Some("true")
        || annotation(&ing.metadata, "nginx.ingress.kubernetes.io/rewrite-target").is_some();
    for rule in spec.rules.iter().flatten() {
        let Some(host) = rule_host(rule, &owner, sink.global) else {
            continue;
        };
        let Some(http) = &rule.http else { continue };
        let Some(part) = sink.part(host.as_deref()) else {
            continue;
        };
        let (w, added) = (&mut part.warnings, &mut part.added);
        let shown = host.as_deref().unwrap_or("*");
        for p in &http.paths {
            let Some((path, path_type)) = rule_path(p, shown, regex, &owner, w) else {
                continue;
            };
            let Some(id) = r.backend(b, ns, &p.backend, &owner, w) else {
                continue;
            };
            let canary = crate::routes::Canary {
                backend: id,
                ..selectors.clone()
            };
            match b.canary(host.as_deref(), path, path_type, canary, &table_owner) {
                Ok(()) => *added = true,
                Err(None) => warn(
                    w,
                    &owner,
                    format!("canary: no other Ingress routes host {shown} path {path} ({path_type:?}); ignored"),
                ),
                Err(Some(winner)) => warn(
                    w,
                    &owner,
                    format!("canary: host {shown} path {path} already has a canary from {winner}; ignored"),
                ),
            }
        }
    }
}

/// Gives backend `id` the upstream TLS the Ingress asks for, reporting a conflict with an
/// earlier Ingress that decided otherwise for the same Service port.
fn set_backend_tls(
    b: &mut TableBuilder,
    id: crate::routes::BackendId,
    ing: &Ingress,
    svc: &str,
    tls: &IngressTls<'_>,
    (owner, table_owner): (&str, &str),
    w: &mut Warnings,
) -> bool {
    let (settings, h2) = upstream_tls(ing, svc, tls, owner, w);
    let wanted = match settings {
        None => None,
        Some(settings) => match crate::tls::upstream_tls(&settings) {
            Ok(t) => Some(t),
            Err(e) => {
                warn(w, owner, format!("upstream TLS: {e}; its paths answer 502"));
                Some(crate::tls::broken_upstream_tls())
            }
        },
    };
    if let Err(c) = b.backend_tls(id, wanted, h2, table_owner) {
        warn(
            w,
            owner,
            format!(
                "Service {svc}: its upstream protocol is already set by {} (the first Ingress using it decides); \
                 ignored",
                c.winner
            ),
        );
        return false;
    }
    true
}

/// A rule's host: `Some(None)` for any host, `Some(Some(host))` for a valid one, `None` (with a
/// warning) for one that is neither: the rule is skipped.
fn rule_host(
    rule: &k8s_openapi::api::networking::v1::IngressRule,
    owner: &str,
    w: &mut Warnings,
) -> Option<Option<String>> {
    match rule.host.as_deref().filter(|h| !h.is_empty()) {
        None => Some(None),
        Some(h) => match parse_host(h) {
            Some(h) => Some(Some(h)),
            None => {
                warn(
                    w,
                    owner,
                    format!("host {h:?} is not a DNS name or *.suffix wildcard; rule ignored"),
                );
                None
            }
        },
    }
}

/// A path's rule, or `None` (with a warning) when it cannot be routed. With `regex` (use-regex,
/// rewrite-target), Prefix and ImplementationSpecific paths are regexes; Exact stays exact, as
/// ingress-nginx's `location =`.
fn rule_path<'p>(
    p: &'p HTTPIngressPath,
    shown: &str,
    regex: bool,
    owner: &str,
    w: &mut Warnings,
) -> Option<(&'p str, PathType)> {
    match path_rule(p) {
        Ok((path, PathType::Prefix)) if regex => Some((path, PathType::Regex)),
        Ok(r) => Some(r),
        Err(e) => {
            warn(w, owner, format!("host {shown}: {e}; path ignored"));
            None
        }
    }
}

/// A rule's host, lower-cased, when it is a DNS name or a `*.suffix` wildcard.
fn parse_host(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(h)
}

/// A path's table rule: its path and how it matches.
fn path_rule(p: &HTTPIngressPath) -> Result<(&str, PathType), String> {
    let path = p.path.as_deref().unwrap_or("");
    let path_type = match p.path_type.as_str() {
        "Exact" => PathType::Exact,
        "Prefix" => PathType::Prefix,
        // As ingress-nginx without use-regex; an empty path there means "/".
        "ImplementationSpecific" if path.is_empty() => return Ok(("/", PathType::Prefix)),
        "ImplementationSpecific" => PathType::Prefix,
        "" => return Err(format!("path {path:?} has no pathType")),
        other => return Err(format!("path {path:?} has unknown pathType {other:?}")),
    };
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with '/'"));
    }
    Ok((path, path_type))
}

#[cfg(test)]
mod incremental;
#[cfg(test)]
pub(super) mod tests;

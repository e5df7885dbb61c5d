//! The watches of one kind: a kube reflector per namespace and field selector, each run by a
//! tokio task that keeps its store, records how each event bears on the table ([`Changes`]),
//! counts its first full list, and reports to the cluster's watch health (which wakes the
//! control loop). Errors (API server down, 410 Gone, auth) are retried with a capped, jittered
//! backoff ([`RetryBackoff`]); the stores keep what they hold meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use super::health::Health;
use super::kube_client;
use super::lean::Lean;
use super::translate::slice_service;

/// What the watches saw change since the last build, so that a change that touched only
/// EndpointSlices can update endpoints in the current table instead of rebuilding it, and one
/// that touched only Ingresses, Services and EndpointSlices can update the hosts it touches.
#[derive(Debug, Default)]
pub struct Changes {
    /// Something other than Ingresses, Services and EndpointSlices changed (or a relist
    /// happened): rebuild everything.
    pub full: bool,
    /// Services (namespace, name) whose EndpointSlices changed.
    pub services: BTreeSet<(String, String)>,
    /// Some Ingress changed (the update finds which: they are new objects in the store).
    pub ingresses: bool,
    /// Some HTTPRoute or GRPCRoute changed its spec, or was deleted (the update finds which:
    /// by generation).
    pub routes: bool,
    /// Services (namespace, name) whose objects changed.
    pub service_objects: BTreeSet<(String, String)>,
    /// The EndpointSlices (namespace, name) that changed: the control loop looks each one up
    /// in its store to keep its Service → EndpointSlices index (a slice may have changed
    /// Service, or lost its Service label).
    pub slices: BTreeSet<(String, String)>,
    /// A Node changed (applied or deleted). [`Cluster::take_changes`](super::cluster::Cluster::take_changes)
    /// turns it into what it bears on before the control loop sees it: nothing (the nodes that
    /// take NodePort traffic and their addresses are the same), the endpoints of the Services
    /// in NodePort mode, or a build from nothing.
    pub nodes: bool,
    /// What the table takes from Nodes changed ([`Cluster::take_changes`](super::cluster::Cluster::take_changes)
    /// sets it with the NodePort Services' endpoints to refresh): the warnings about Nodes come
    /// only with a build from nothing, which follows once changes are quiet.
    pub node_use: bool,
    /// A Gateway API object changed without a new generation: its status or metadata only
    /// (most often kedge's own status write coming back). The table does not depend on it; the
    /// status writers' next view does: an update with no change makes one once changes are quiet.
    pub status_only: bool,
    /// Secrets (namespace, name) applied or deleted. [`Cluster::take_changes`](super::cluster::Cluster::take_changes)
    /// keeps only those something reads (an Ingress's `tls`, `auth-secret` or
    /// `proxy-ssl-secret`; a Gateway listener's `certificateRefs`, which build from nothing):
    /// a Secret nothing reads builds nothing.
    pub secrets: BTreeSet<(String, String)>,
    /// A Namespace changed (applied or deleted): its labels matter only to Gateway listeners
    /// that select route namespaces by label (then a build from nothing), which
    /// [`Cluster::take_changes`](super::cluster::Cluster::take_changes) decides.
    pub namespaces: bool,
}

impl Changes {
    /// The Services whose EndpointSlices or objects changed: those whose users an update
    /// decides again.
    pub fn touched_services(&self) -> BTreeSet<(String, String)> {
        self.services.union(&self.service_objects).cloned().collect()
    }

    /// Nothing but EndpointSlices changed.
    pub fn endpoints_only(&self) -> bool {
        !self.full
            && !self.ingresses
            && !self.nodes
            && !self.routes
            && self.service_objects.is_empty()
            && self.secrets.is_empty()
            && !self.namespaces
    }

    /// Nothing that bears on the table changed.
    pub fn is_empty(&self) -> bool {
        self.endpoints_only() && self.services.is_empty() && self.slices.is_empty()
    }

    /// Adds what `later` recorded (changes taken in two steps, one debounce apart).
    pub fn merge(&mut self, later: Changes) {
        self.full |= later.full;
        self.ingresses |= later.ingresses;
        self.nodes |= later.nodes;
        self.node_use |= later.node_use;
        self.routes |= later.routes;
        self.services.extend(later.services);
        self.service_objects.extend(later.service_objects);
        self.slices.extend(later.slices);
        self.status_only |= later.status_only;
        self.secrets.extend(later.secrets);
        self.namespaces |= later.namespaces;
    }
}

/// How one watch event bears on the table.
pub enum Touch {
    /// Not yet: a relist's first events (the store changes at its `InitDone`).
    Nothing,
    /// A full rebuild.
    Full,
    /// Only the endpoints of the Service of this EndpointSlice: (namespace, slice name, its
    /// Service's name when it has the label).
    Slice(String, String, Option<String>),
    /// An Ingress.
    Ingress,
    /// A Node.
    Node,
    /// This Service (namespace, name) itself.
    ServiceObject(String, String),
    /// An object whose `metadata.generation` counts the changes that matter (a Gateway API
    /// kind) was applied or listed: a full rebuild unless its generation is the one last seen.
    Spec,
    /// The same for an HTTPRoute or a GRPCRoute, whose changes get an update, not a full
    /// rebuild (as its deletion).
    Route,
    /// This Secret (namespace, name).
    Secret(String, String),
    /// A Namespace.
    Namespace,
}

/// For every kind but EndpointSlice: a change or a relist means a full rebuild.
pub fn touches_all<K>(event: &Event<K>) -> Touch {
    match event {
        Event::Init | Event::InitApply(_) => Touch::Nothing,
        _ => Touch::Full,
    }
}

/// A Gateway API object: the table reads its spec, whose changes bump its generation; a write
/// of its status (kedge's own, for one) does not. A deletion or a relist: everything.
pub fn touches_spec<K>(event: &Event<K>) -> Touch {
    match event {
        Event::Apply(_) | Event::InitApply(_) => Touch::Spec,
        other => touches_all(other),
    }
}

/// An HTTPRoute or a GRPCRoute: as [`touches_spec`], but a change or a deletion is an update
/// of the routes (a relist: everything).
pub fn touches_route<K>(event: &Event<K>) -> Touch {
    match event {
        Event::Apply(_) | Event::InitApply(_) | Event::Delete(_) => Touch::Route,
        other => touches_all(other),
    }
}

/// Whether an applied or listed object `obj` has a generation other than the one `seen` last
/// holds for its uid (recording it): `false` for a status or metadata change. An object
/// without generation always counts as changed.
fn new_generation<K: Resource>(seen: &mut HashMap<String, i64>, obj: &K) -> bool {
    let meta = obj.meta();
    let (Some(uid), Some(generation)) = (meta.uid.as_ref(), meta.generation) else {
        return true;
    };
    match seen.get_mut(uid) {
        Some(g) if *g == generation => false,
        Some(g) => {
            *g = generation;
            true
        }
        None => {
            seen.insert(uid.clone(), generation);
            true
        }
    }
}

/// An Ingress change touches the hosts of its old and new rules (a relist: everything).
pub fn touches_ingress(event: &Event<k8s_openapi::api::networking::v1::Ingress>) -> Touch {
    match event {
        Event::Apply(_) | Event::Delete(_) => Touch::Ingress,
        other => touches_all(other),
    }
}

/// A Node change touches NodePort endpoints at most (a relist: everything).
pub fn touches_node(event: &Event<k8s_openapi::api::core::v1::Node>) -> Touch {
    match event {
        Event::Apply(_) | Event::Delete(_) => Touch::Node,
        other => touches_all(other),
    }
}

/// A Service change touches the hosts of the Ingresses that use it (a relist: everything).
pub fn touches_service_object(event: &Event<k8s_openapi::api::core::v1::Service>) -> Touch {
    touches_named(event, Touch::ServiceObject)
}

/// A Secret change touches what reads it, if anything (a relist: everything).
pub fn touches_secret(event: &Event<k8s_openapi::api::core::v1::Secret>) -> Touch {
    touches_named(event, Touch::Secret)
}

/// A change or a deletion touches this object, by (namespace, name) (a relist: everything).
fn touches_named<K: Resource>(event: &Event<K>, touch: fn(String, String) -> Touch) -> Touch {
    match event {
        Event::Apply(o) | Event::Delete(o) => {
            let meta = o.meta();
            touch(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            )
        }
        other => touches_all(other),
    }
}

/// A Namespace change touches the Gateway listeners that select namespaces by label, if any
/// (a relist: everything).
pub fn touches_namespace(event: &Event<k8s_openapi::api::core::v1::Namespace>) -> Touch {
    match event {
        Event::Apply(_) | Event::Delete(_) => Touch::Namespace,
        other => touches_all(other),
    }
}

/// An EndpointSlice change touches only its Service's endpoints.
pub fn touches_service(event: &Event<EndpointSlice>) -> Touch {
    let slice = match event {
        Event::Init | Event::InitApply(_) => return Touch::Nothing,
        Event::InitDone => return Touch::Full,
        Event::Apply(s) | Event::Delete(s) => s,
    };
    match (slice.metadata.namespace.as_ref(), slice.metadata.name.as_ref()) {
        (Some(ns), Some(name)) => Touch::Slice(ns.clone(), name.clone(), slice_service(slice).map(str::to_owned)),
        _ => Touch::Nothing, // the API server always names them
    }
}

/// What every watch of one cluster shares: where it watches, and what it reports to (the
/// cluster's watch health, the count of watches that have listed once, the changes).
pub struct Watches<'a> {
    /// The cluster's name, for logs.
    pub cluster: &'a str,
    pub client: &'a Client,
    /// The namespaces of namespaced kinds: the configured ones, or `[None]` for all.
    pub namespaces: &'a [Option<&'a str>],
    /// Told of every event and error; wakes the control loop.
    pub health: &'a Arc<Health>,
    /// Counts the watches that have completed their first full list.
    pub listed: &'a Arc<AtomicUsize>,
    /// Where each event's [`Touch`] is recorded, before the control loop is woken.
    pub changes: &'a Arc<Mutex<Changes>>,
    /// The longest wait between two attempts of a failing watch (`watch_retry_max`).
    pub retry_max: Duration,
}

/// Where a kind is watched, decided by its type: a namespaced kind once per configured
/// namespace (or once over all namespaces), a cluster-scoped kind once.
pub trait Scope {
    /// The collections to watch.
    fn apis<K>(client: &Client, namespaces: &[Option<&str>]) -> Vec<Api<K>>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default;
}

impl Scope for NamespaceResourceScope {
    fn apis<K>(client: &Client, namespaces: &[Option<&str>]) -> Vec<Api<K>>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        let api = |ns: &Option<&str>| match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        namespaces.iter().map(api).collect()
    }
}

impl Scope for ClusterResourceScope {
    fn apis<K>(client: &Client, _: &[Option<&str>]) -> Vec<Api<K>>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        vec![Api::all(client.clone())]
    }
}

/// Starts the watches of kind `K` (the resource `what`, e.g. `"ingresses"`) on the current
/// runtime and returns their stores: one per collection of its [`Scope`] and field selector in
/// `fields` (one without a selector when `fields` is empty). `what` names the watches in logs.
pub fn start<K>(w: &Watches<'_>, what: &'static str, fields: &[&str], touch: fn(&Event<K>) -> Touch) -> Vec<Store<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    K::Scope: Scope,
{
    let configs: Vec<watcher::Config> = if fields.is_empty() {
        vec![kube_client::watcher_config()]
    } else {
        fields.iter().map(|f| kube_client::watcher_config().fields(f)).collect()
    };
    let mut stores = Vec::new();
    for api in <K::Scope as Scope>::apis::<Lean<K>>(w.client, w.namespaces) {
        for config in &configs {
            stores.push(watch(api.clone(), what, w, touch, config.clone()));
        }
    }
    stores
}

/// An event of the watch of [`Lean<K>`], as the store and everything after it take it: the
/// plain object. `Lean` decodes objects without what kedge never reads, so that neither the
/// stores nor the state file keep it (managedFields and kubectl's last-applied copy); kedge
/// writes only status patches, never whole objects, so nothing it writes back depends on either.
fn plain<K>(event: Event<Lean<K>>) -> Event<K> {
    match event {
        Event::Apply(o) => Event::Apply(o.0),
        Event::Delete(o) => Event::Delete(o.0),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(o.0),
        Event::InitDone => Event::InitDone,
    }
}

/// Starts one reflector for `api` and returns its store. A failure and the recovery are each
/// logged once (by the cluster's watch health).
fn watch<K>(
    api: Api<Lean<K>>,
    what: &'static str,
    w: &Watches<'_>,
    touch: fn(&Event<K>) -> Touch,
    config: watcher::Config,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let me = w.health.watch(what, api.resource_url());
    // Each change is logged before the reflector applies it, while the store still holds the
    // object's previous version.
    let (known, cluster) = (reader.clone(), w.cluster.to_owned());
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, config)
            .backoff(RetryBackoff::new(w.retry_max))
            .map(|event| event.map(plain))
            .inspect(move |event| {
                if let Ok(event) = event {
                    log_change(&cluster, what, event, &known);
                }
            }),
    );
    let health = Arc::clone(w.health);
    let listed = Arc::clone(w.listed);
    let changes = Arc::clone(w.changes);
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut first_list = true;
        // Generations by uid, for `Touch::Spec` kinds.
        let mut generations: HashMap<String, i64> = HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if let Event::Delete(o) = &event
                        && let Some(uid) = &o.meta().uid
                    {
                        generations.remove(uid);
                    }
                    // Recorded before the control loop is woken, so it finds the change.
                    match touch(&event) {
                        Touch::Nothing => {}
                        Touch::Full => changes.lock().unwrap_or_else(|e| e.into_inner()).full = true,
                        Touch::Slice(ns, slice, svc) => {
                            let mut changes = changes.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(svc) = svc {
                                changes.services.insert((ns.clone(), svc));
                            }
                            changes.slices.insert((ns, slice));
                        }
                        Touch::Ingress => changes.lock().unwrap_or_else(|e| e.into_inner()).ingresses = true,
                        Touch::Node => changes.lock().unwrap_or_else(|e| e.into_inner()).nodes = true,
                        t @ (Touch::Spec | Touch::Route) => match (&event, matches!(t, Touch::Route)) {
                            // A relist's objects are recorded; its end (InitDone) rebuilds.
                            (Event::InitApply(o), _) => {
                                new_generation(&mut generations, o);
                            }
                            (Event::Apply(o), route) => {
                                let spec = new_generation(&mut generations, o);
                                let mut changes = changes.lock().unwrap_or_else(|e| e.into_inner());
                                if spec && route {
                                    changes.routes = true;
                                } else if spec {
                                    changes.full = true;
                                } else {
                                    changes.status_only = true;
                                }
                            }
                            (Event::Delete(_), true) => {
                                changes.lock().unwrap_or_else(|e| e.into_inner()).routes = true;
                            }
                            _ => changes.lock().unwrap_or_else(|e| e.into_inner()).full = true,
                        },
                        Touch::Secret(ns, name) => {
                            changes
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .secrets
                                .insert((ns, name));
                        }
                        Touch::Namespace => changes.lock().unwrap_or_else(|e| e.into_inner()).namespaces = true,
                        Touch::ServiceObject(ns, svc) => {
                            changes
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .service_objects
                                .insert((ns, svc));
                        }
                    }
                    if first_list && matches!(event, Event::InitDone) {
                        // The reflector has already filled the store.
                        first_list = false;
                        listed.fetch_add(1, Ordering::Release);
                    }
                    // Marks the watch working and wakes the control loop for the events that
                    // change the store: a relist arrives as Init, InitApply..., InitDone and
                    // replaces the store at InitDone, so the rebuild happens then, not per object.
                    health.event(&me, &event);
                }
                Err(e) => health.error(&me, &e),
            }
        }
    });
    reader
}

/// One line per object change, like a controller's sync log: at info for the objects that shape
/// routes; at debug for EndpointSlices (a rollout changes them many times a second) and for a
/// change of status alone ([`status_only`]: kedge's own status writes coming back are such
/// changes, 10k of them at start-up with 10k routes, which at info would flood the journal).
fn log_change<K>(cluster: &str, what: &'static str, event: &Event<K>, known: &Store<K>)
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (verb, o) = match event {
        Event::Apply(o) => ("applied", o),
        Event::Delete(o) => ("deleted", o),
        _ => return,
    };
    let meta = o.meta();
    let object = match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    };
    if what == "endpointslices" {
        tracing::debug!(cluster, what, object, "{verb}");
    } else if matches!(event, Event::Apply(_))
        && known
            .get(&ObjectRef::from_obj(o))
            .is_some_and(|old| status_only(old.meta(), meta))
    {
        tracing::debug!(cluster, what, object, "status changed");
    } else {
        tracing::info!(cluster, what, object, "{verb}");
    }
}

/// Whether an object's new version differs from its previous one at most in its status: the
/// same generation (which the API server moves on every change of spec; an object without one
/// is never taken for a status change) and the same labels, annotations (ingress-nginx's
/// settings among them), owners, finalizers and deletion.
fn status_only(old: &ObjectMeta, new: &ObjectMeta) -> bool {
    new.generation.is_some()
        && old.generation == new.generation
        && old.labels == new.labels
        && old.annotations == new.annotations
        && old.owner_references == new.owner_references
        && old.finalizers == new.finalizers
        && old.deletion_timestamp == new.deletion_timestamp
}

/// The wait between attempts of a failing watch: from [`RetryBackoff::FIRST`], doubling, at most
/// `max`, each wait drawn from the upper half of its step ("equal jitter", so that several edge
/// hosts do not retry in step). kube resets it on the watch's first success.
///
/// kube's default grows to 30 s (client-go's reflector), so after an outage of half a minute a
/// change could wait that long to be seen; with the cap (5 s by default) the watches are back
/// within a few seconds of the API server, whatever the outage's length.
pub struct RetryBackoff {
    max: Duration,
    step: Duration,
    rng: u64,
}

impl RetryBackoff {
    /// The first wait's step.
    pub const FIRST: Duration = Duration::from_millis(500);

    pub fn new(max: Duration) -> RetryBackoff {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // A different sequence per watch and process; not for secrets.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((NEXT.fetch_add(1, Ordering::Relaxed) as u64) << 48);
        RetryBackoff {
            max,
            step: Self::FIRST.min(max),
            rng: seed | 1,
        }
    }
}

impl Iterator for RetryBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let half = step / 2;
        let jitter = half.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64);
        Some(half + jitter)
    }
}

impl kube::runtime::utils::Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.step = Self::FIRST.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use kube::runtime::utils::Backoff;

    use super::{RetryBackoff, status_only};

    /// A status write keeps everything `status_only` compares; each of those changed is more
    /// than status; without a generation nothing is taken for a status change.
    #[test]
    fn a_change_of_status_alone_keeps_generation_and_metadata() {
        let old = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            generation: Some(2),
            resource_version: Some("10".into()),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            annotations: Some(BTreeMap::from([(
                "nginx.ingress.kubernetes.io/rewrite-target".into(),
                "/".into(),
            )])),
            ..ObjectMeta::default()
        };
        let written = ObjectMeta {
            resource_version: Some("11".into()),
            ..old.clone()
        };
        assert!(status_only(&old, &written));
        let changes: [fn(&mut ObjectMeta); 6] = [
            |m| m.generation = Some(3),
            |m| m.labels = None,
            |m| {
                m.annotations
                    .as_mut()
                    .expect("annotations")
                    .insert("nginx.ingress.kubernetes.io/rewrite-target".into(), "/v2".into());
            },
            |m| {
                m.owner_references = Some(vec![OwnerReference {
                    name: "owner".into(),
                    ..OwnerReference::default()
                }]);
            },
            |m| m.finalizers = Some(vec!["example.com/keep".into()]),
            |m| m.deletion_timestamp = Some(Time(Default::default())),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut new = written.clone();
            change(&mut new);
            assert!(!status_only(&old, &new), "change {i} is more than status");
        }
        let (mut old, mut new) = (old, written);
        old.generation = None;
        new.generation = None;
        assert!(!status_only(&old, &new));
    }

    /// Waits double from 0.5 s up to the cap and stay there, each in the upper half of its step;
    /// a reset starts again from the first.
    #[test]
    fn retry_waits_grow_to_the_cap_with_jitter() {
        let max = Duration::from_secs(5);
        let mut b = RetryBackoff::new(max);
        let steps = [500, 1000, 2000, 4000, 5000, 5000, 5000, 5000];
        for (i, &step) in steps.iter().enumerate() {
            let step = Duration::from_millis(step);
            let wait = b.next().expect("endless");
            assert!(
                wait >= step / 2 && wait <= step,
                "wait {i}: {wait:?} not within ({:?}, {step:?})",
                step / 2
            );
        }
        b.reset();
        let first = b.next().expect("endless");
        assert!(first <= RetryBackoff::FIRST, "after a reset: {first:?}");
        // At the cap, the waits still differ: they are jittered.
        let waits: Vec<Duration> = (0..16).map(|_| b.next().expect("endless")).skip(8).collect();
        assert!(waits.iter().all(|&w| w >= max / 2 && w <= max), "{waits:?}");
        assert!(waits.windows(2).any(|w| w[0] != w[1]), "{waits:?}");
    }
}

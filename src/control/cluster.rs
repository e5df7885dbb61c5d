//! One watched cluster: a `kube` client built from its kubeconfig, and a reflector per kind the
//! translation reads (per namespace when the config limits namespaces). Every change wakes the
//! control loop; the stores are read whole when the next table is built, so a lost watch event
//! can never leave a stale route behind (the reflector's relist replaces the store).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::persist::{self, LastKnownGood};
use super::status;
use super::translate::{ClusterSpec, Objects, UpstreamMode};
use crate::config::{self, ClusterConfig};

/// The reflected state of one cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    pub spec: ClusterSpec,
    ingresses: Vec<Store<Ingress>>,
    services: Vec<Store<Service>>,
    slices: Vec<Store<EndpointSlice>>,
    /// Secrets of type `kubernetes.io/tls` (certificates) and `Opaque` (htpasswd files, CA
    /// bundles), by field selectors: no service-account tokens, no Helm releases.
    secrets: Vec<Store<Secret>>,
    classes: Store<IngressClass>,
    nodes: Store<Node>,
    /// Writes Ingress status with its own clone of the cluster's client; `None` without
    /// publish addresses.
    status: Option<status::Writer>,
    /// Watches that have completed their first full list.
    listed: Arc<AtomicUsize>,
    /// Persisted or live objects, the cluster's state, its state file.
    lkg: LastKnownGood,
    /// What changed since the control loop last looked.
    changes: Arc<Mutex<Changes>>,
}

/// What the watches saw change since the last build, so that a change that touched only
/// EndpointSlices can update endpoints in the current table instead of rebuilding it.
#[derive(Debug, Default)]
pub struct Changes {
    /// Something other than EndpointSlices changed (or a relist happened): rebuild everything.
    pub full: bool,
    /// Services (namespace, name) whose EndpointSlices changed.
    pub services: BTreeSet<(String, String)>,
}

/// How one watch event bears on the table.
enum Touch {
    Nothing,
    Full,
    Service(String, String),
}

/// For every kind but EndpointSlice: a change or a relist means a full rebuild.
fn touches_all<K>(event: &Event<K>) -> Touch {
    match event {
        Event::Init | Event::InitApply(_) => Touch::Nothing,
        _ => Touch::Full,
    }
}

/// An EndpointSlice change touches only its Service's endpoints.
fn touches_service(event: &Event<EndpointSlice>) -> Touch {
    let slice = match event {
        Event::Init | Event::InitApply(_) => return Touch::Nothing,
        Event::InitDone => return Touch::Full,
        Event::Apply(s) | Event::Delete(s) => s,
    };
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"));
    match (slice.metadata.namespace.as_ref(), service) {
        (Some(ns), Some(svc)) => Touch::Service(ns.clone(), svc.clone()),
        _ => Touch::Nothing, // a slice of no Service routes nothing
    }
}

/// Owned copies of a cluster's objects (cheap: `Arc`s), for one translation.
#[derive(Clone)]
pub struct Snapshot {
    pub(super) ingresses: Vec<Arc<Ingress>>,
    pub(super) classes: Vec<Arc<IngressClass>>,
    pub(super) services: Vec<Arc<Service>>,
    pub(super) slices: Vec<Arc<EndpointSlice>>,
    pub(super) nodes: Vec<Arc<Node>>,
    /// Never persisted (no private keys on disk): empty when serving persisted state.
    pub(super) secrets: Vec<Arc<Secret>>,
}

impl Snapshot {
    pub fn objects(&self) -> Objects<'_> {
        Objects {
            ingresses: &self.ingresses,
            classes: &self.classes,
            services: &self.services,
            slices: &self.slices,
            nodes: &self.nodes,
            secrets: &self.secrets,
        }
    }
}

impl Cluster {
    /// Builds the client and starts the watches (on the current tokio runtime). Fails only when
    /// the kubeconfig cannot be read or used; an unreachable API server is retried with backoff.
    pub async fn connect(
        cfg: &ClusterConfig,
        changed: Arc<Notify>,
        state_dir: Option<&persist::StateDir>,
    ) -> Result<Cluster, String> {
        let health = persist::Health::new(&cfg.name, &changed);
        let client = client(cfg, &health).await?;
        // One watch per namespace when the config names them, else one over all namespaces.
        let namespaces: Vec<Option<&str>> = if cfg.namespaces.is_empty() {
            vec![None]
        } else {
            cfg.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut ingresses = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut secrets = Vec::new();
        let listed = Arc::new(AtomicUsize::new(0));
        let changes = Arc::new(Mutex::new(Changes::default()));
        let w = Watched {
            cluster: &cfg.name,
            health: &health,
            listed: &listed,
            changes: &changes,
        };
        for ns in namespaces {
            ingresses.push(watch(scoped::<Ingress>(&client, ns), "ingresses", &w, touches_all));
            services.push(watch(scoped::<Service>(&client, ns), "services", &w, touches_all));
            slices.push(watch(
                scoped::<EndpointSlice>(&client, ns),
                "endpointslices",
                &w,
                touches_service,
            ));
            secrets.push(watch_with(
                scoped::<Secret>(&client, ns),
                "secrets",
                &w,
                touches_all,
                persist::watcher_config().fields("type=kubernetes.io/tls"),
            ));
            // Opaque Secrets hold htpasswd files (auth-secret) and CA bundles
            // (proxy-ssl-secret); they are never persisted.
            secrets.push(watch_with(
                scoped::<Secret>(&client, ns),
                "secrets",
                &w,
                touches_all,
                persist::watcher_config().fields("type=Opaque"),
            ));
        }
        let classes = watch(
            Api::<IngressClass>::all(client.clone()),
            "ingressclasses",
            &w,
            touches_all,
        );
        let nodes = watch(Api::<Node>::all(client.clone()), "nodes", &w, touches_all);
        Ok(Cluster {
            spec: ClusterSpec {
                name: cfg.name.clone(),
                ingress_class: cfg.ingress_class.clone(),
                controller: cfg.controller.clone(),
                upstream: match cfg.upstream {
                    config::UpstreamMode::Pods => UpstreamMode::Pods,
                    config::UpstreamMode::Nodeports => UpstreamMode::NodePorts,
                },
                node_address_type: cfg.node_address_type.clone(),
            },
            config: cfg.clone(),
            ingresses,
            services,
            slices,
            secrets,
            classes,
            nodes,
            status: status::Writer::spawn(client, cfg),
            listed,
            lkg: LastKnownGood::new(&cfg.name, state_dir, health),
            changes,
        })
    }

    /// Takes what changed since the last call.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Resolves once every watch has completed its first full list.
    pub async fn wait_ready(&self) {
        for s in &self.ingresses {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.services {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.slices {
            let _ = s.wait_until_ready().await;
        }
        for s in &self.secrets {
            let _ = s.wait_until_ready().await;
        }
        let _ = self.classes.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }

    /// Whether every watch has completed its first full list (unlike `wait_ready`, without
    /// waiting, and without taking over the stores' single readiness waker).
    pub fn synced(&self) -> bool {
        let watches = self.ingresses.len() + self.services.len() + self.slices.len() + self.secrets.len() + 2;
        self.listed.load(Ordering::Acquire) == watches
    }

    /// Hands what a build served to the Ingress status writer, once the cluster is synced (a
    /// half-listed view, e.g. without the IngressClasses, would clear the status of Ingresses
    /// that are in fact served). The writer task runs on this runtime only when the control
    /// loop next waits, i.e. after the table of this build is published.
    pub fn offer_status(&self, objects: &Objects<'_>, served: &[(String, String)]) {
        if let Some(writer) = &self.status
            && self.synced()
        {
            writer.offer(objects.ingresses, served);
        }
    }

    /// The objects to translate: those persisted in the state directory while the cluster
    /// serves from them (not synced within `sync_timeout` at start), else a copy of every store.
    pub fn snapshot(&self) -> Snapshot {
        self.lkg.choose(self.synced(), || Snapshot {
            ingresses: self.ingresses.iter().flat_map(Store::state).collect(),
            classes: self.classes.state(),
            services: self.services.iter().flat_map(Store::state).collect(),
            slices: self.slices.iter().flat_map(Store::state).collect(),
            nodes: self.nodes.state(),
            secrets: self.secrets.iter().flat_map(Store::state).collect(),
        })
    }

    /// Brings the cluster's state (live, disconnected, ...) up to date with its watches, without
    /// a build: what a build's [`Cluster::snapshot`] does first.
    pub fn refresh_state(&self) {
        let _ = self.snapshot();
    }

    /// What the cluster serves from: nothing synced yet, its persisted state, live stores.
    pub fn state(&self) -> persist::State {
        self.lkg.state()
    }

    /// Start-up waited `sync_timeout` for the first sync in vain: serve the persisted state, if
    /// any, until the live sync completes.
    pub fn sync_timed_out(&self) {
        self.lkg.sync_timed_out(self.config.sync_timeout);
    }
}

/// A client from the cluster's kubeconfig (or `$KUBECONFIG` / `~/.kube/config`) and context.
async fn client(cfg: &ClusterConfig, health: &Arc<persist::Health>) -> Result<Client, String> {
    let what = |e: &dyn std::fmt::Display| format!("cluster {:?}: {e}", cfg.name);
    let kubeconfig = match &cfg.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path).map_err(|e| what(&e))?,
        None => kube::config::Kubeconfig::read().map_err(|e| what(&e))?,
    };
    let options = kube::config::KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| what(&e))?;
    persist::tune_client(&mut config);
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| what(&e))?;
    Ok(builder.with_layer(&persist::Observe(Arc::clone(health))).build())
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What every watch of one cluster reports to: the cluster's watch health (which logs and wakes
/// the control loop), the count of watches that have listed once.
struct Watched<'a> {
    cluster: &'a str,
    health: &'a Arc<persist::Health>,
    listed: &'a Arc<AtomicUsize>,
    changes: &'a Arc<Mutex<Changes>>,
}

/// Starts a reflector for `api` on the current runtime and returns its store. Errors (API server
/// down, 410 Gone, auth) are retried with kube's default backoff; the last good store keeps
/// serving meanwhile. A failure and the recovery are each logged once.
fn watch<K>(api: Api<K>, what: &'static str, w: &Watched<'_>, touch: fn(&Event<K>) -> Touch) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    watch_with(api, what, w, touch, persist::watcher_config())
}

/// [`watch`] with its own watcher configuration (a field selector).
fn watch_with<K>(
    api: Api<K>,
    what: &'static str,
    w: &Watched<'_>,
    touch: fn(&Event<K>) -> Touch,
    config: watcher::Config,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let me = w.health.watch(what, api.resource_url());
    let stream = reflector::reflector(writer, watcher::watcher(api, config).default_backoff());
    let health = Arc::clone(w.health);
    let listed = Arc::clone(w.listed);
    let changes = Arc::clone(w.changes);
    let cluster = w.cluster.to_owned();
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        let mut first_list = true;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    log_change(&cluster, what, &event);
                    // Recorded before the control loop is woken, so it finds the change.
                    match touch(&event) {
                        Touch::Nothing => {}
                        Touch::Full => changes.lock().unwrap_or_else(|e| e.into_inner()).full = true,
                        Touch::Service(ns, svc) => {
                            changes
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .services
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
/// routes, at debug for EndpointSlices (a rollout changes them many times a second).
fn log_change<K: Resource>(cluster: &str, what: &'static str, event: &Event<K>) {
    let (verb, o) = match event {
        Event::Apply(o) => ("applied", o),
        Event::Delete(o) => ("deleted", o),
        _ => return,
    };
    let object = match o.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", o.meta().name.as_deref().unwrap_or("")),
        None => o.meta().name.clone().unwrap_or_default(),
    };
    if what == "endpointslices" {
        tracing::debug!(cluster, what, object, "{verb}");
    } else {
        tracing::info!(cluster, what, object, "{verb}");
    }
}

//! One watched cluster: a `kube` client built from its kubeconfig, a reflector per watched kind
//! (see [`kinds`](super::kinds); per namespace when the config limits namespaces), its Ingress
//! and Gateway API status writers (with their Lease election) and its last known good. Every change wakes the control loop; the stores are
//! read whole when the next table is built, so a lost watch event can never leave a stale route
//! behind (the reflector's relist replaces the store).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::Notify;

use super::gateway_status;
use super::health::Health;
use super::kinds::{ClusterObjects, Stores};
use super::kube_client;
use super::last_known_good::LastKnownGood;
use super::lease::Election;
use super::state_file::StateDir;
use super::status;
use super::translate::gateway::{Attachment, GatewaySettings, RouteCache};
use super::translate::{
    self, ClusterSpec, Incremental, IngressPlan, NeedFull, NodeUse, Objects, Outcome, SliceIndex, UpstreamMode,
};
use super::watch::Watches;
use crate::config::{self, ClusterConfig};
use crate::shared::ClusterState;

/// What changed since the last build, as [`Cluster::take_changes`] hands it over.
pub use super::watch::Changes;

/// The reflected state of one cluster.
pub struct Cluster {
    pub config: ClusterConfig,
    pub spec: ClusterSpec,
    stores: Stores,
    /// Writes Ingress status with its own clone of the cluster's client; `None` without
    /// publish addresses.
    status: Option<status::Writer>,
    /// Writes Gateway API status; started by the first build with one of kedge's GatewayClasses.
    gateway_status: OnceLock<gateway_status::Writer>,
    /// The routes the last Gateway API status view found written as kedge wants them.
    gateway_written: Mutex<gateway_status::Unchanged>,
    /// No status view since one was put off: only a quiet build makes the next.
    view_owed: std::sync::atomic::AtomicBool,
    /// The status Lease election both writers follow: started with the Ingress writer, or with
    /// the Gateway API one.
    election: OnceLock<Election>,
    /// The pace of both writers' status writes (`status_writes_per_second`).
    pace: Arc<status::Pace>,
    client: kube::Client,
    /// Watches that have completed their first full list.
    listed: Arc<AtomicUsize>,
    /// Persisted or live objects, the cluster's state, its state file.
    lkg: LastKnownGood,
    /// How its watches are doing (shared with `lkg` and the client).
    health: Arc<Health>,
    /// What changed since the control loop last looked.
    changes: Arc<Mutex<Changes>>,
    /// The cluster's Ingresses as the last build translated them, for updates.
    ingresses: Mutex<Incremental>,
    /// The cluster's Gateway routes as the last build translated them, for updates.
    routes: Mutex<translate::httproute::Incremental>,
    /// Where the last build attached each Gateway route, for updates.
    attached: Mutex<RouteCache>,
    /// Service → EndpointSlices of the objects the last build read, kept up to date by the
    /// endpoint fast path ([`Cluster::changed_endpoints`]).
    slice_index: Mutex<SliceIndex>,
    /// What the table took from the Nodes at the last build or Node change, to tell a Node
    /// change that bears on NodePort endpoints from one that does not.
    node_use: Mutex<Option<NodeUse>>,
    /// Which Gateway listeners the last build programmed ([`Attachment::programmed`]).
    programmed: Mutex<Vec<(String, String, String, bool)>>,
}

impl Cluster {
    /// Builds the client and starts the watches (on the current tokio runtime). Fails only when
    /// the kubeconfig cannot be read or used; an unreachable API server is retried with backoff.
    pub async fn connect(
        cfg: &ClusterConfig,
        changed: Arc<Notify>,
        state_dir: Option<&StateDir>,
    ) -> Result<Cluster, String> {
        let health = Health::new(&cfg.name, &changed);
        let client = kube_client::client(cfg, &health).await?;
        // One watch per namespace when the config names them, else one over all namespaces.
        let namespaces: Vec<Option<&str>> = if cfg.namespaces.is_empty() {
            vec![None]
        } else {
            cfg.namespaces.iter().map(|n| Some(n.as_str())).collect()
        };
        let listed = Arc::new(AtomicUsize::new(0));
        let changes = Arc::new(Mutex::new(Changes::default()));
        let stores = Stores::start(&Watches {
            cluster: &cfg.name,
            client: &client,
            namespaces: &namespaces,
            health: &health,
            listed: &listed,
            changes: &changes,
            retry_max: cfg.watch_retry_max,
        });
        let election = OnceLock::new();
        let pace = status::Pace::new(cfg.status_writes_per_second);
        let status = status::Writer::spawn(client.clone(), cfg, Arc::clone(&pace), || {
            election.get_or_init(|| Election::start(client.clone(), cfg)).holding()
        });
        let lkg = LastKnownGood::new(&cfg.name, state_dir, Arc::clone(&health));
        let live = stores.clone();
        lkg.read_live_with(move || live.objects());
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
            stores,
            status,
            gateway_status: OnceLock::new(),
            gateway_written: Mutex::default(),
            view_owed: std::sync::atomic::AtomicBool::new(false),
            election,
            pace,
            client,
            listed,
            lkg,
            health,
            changes,
            ingresses: Mutex::default(),
            routes: Mutex::default(),
            attached: Mutex::default(),
            slice_index: Mutex::default(),
            node_use: Mutex::default(),
            programmed: Mutex::default(),
        })
    }

    /// Translates the cluster's Ingresses into `builder`: all of them (`plan` `None`, a build
    /// from nothing), or the hosts of `plan` only (`builder` made by `TableBuilder::update`; the
    /// objects from [`Cluster::update_objects`]).
    pub fn translate_ingresses(
        &self,
        builder: &mut crate::routes::TableBuilder,
        objects: &Objects<'_>,
        plan: Option<&IngressPlan>,
    ) -> Outcome {
        let mut state = self.ingresses.lock().unwrap_or_else(|e| e.into_inner());
        match plan {
            None => state.full(builder, &self.spec, objects),
            Some(plan) => {
                // An update (which reads the live stores) resolves only the Services its
                // Ingresses use: looked up in the store, not picked out of every Service.
                let services: Vec<_> = state
                    .services(plan)
                    .iter()
                    .filter_map(|(ns, name)| self.stores.service(ns, name))
                    .collect();
                let objects = Objects {
                    services: &services,
                    ..*objects
                };
                state.update(builder, &self.spec, &objects, plan)
            }
        }
    }

    /// Decides where the cluster's Gateway routes attach and every Gateway API condition
    /// kedge owns: every route in a build from nothing (`services` `None`), in an update (after
    /// changes to routes and to `services`) only the routes that are new objects or use one of
    /// `services`, the others as the last build decided them
    /// ([`translate::gateway::attach_with`]).
    pub fn attach<'a>(
        &self,
        objects: &Objects<'a>,
        settings: &GatewaySettings,
        listeners: &[config::ListenerSpec],
        services: Option<&std::collections::BTreeSet<(String, String)>>,
    ) -> Attachment<'a> {
        translate::gateway::attach_with(objects, settings, listeners, &mut lock(&self.attached), services)
    }

    /// Translates the attached Gateway routes into `builder`: all of them (`services` `None`, a
    /// build from nothing), or, in an update (`builder` made by `TableBuilder::update`) after
    /// changes to routes and to `services`, those the changes touch. `Err`: only a build from
    /// nothing is exact.
    pub fn translate_routes<'a>(
        &self,
        builder: &mut crate::routes::TableBuilder,
        objects: &Objects<'a>,
        attached: &'a [translate::gateway::Attached<'a>],
        services: Option<&std::collections::BTreeSet<(String, String)>>,
    ) -> Result<translate::httproute::Translated, NeedFull> {
        let mut state = lock(&self.routes);
        match services {
            None => Ok(state.full(builder, &self.spec, objects, attached)),
            Some(services) => match state.plan(objects, attached, services) {
                Ok(plan) => {
                    // Only the Services the routes translated again use are resolved: looked
                    // up in the stores with their EndpointSlices (through the index), not
                    // picked out of every one.
                    let wanted = plan.services(attached);
                    let services: Vec<_> = wanted
                        .iter()
                        .filter_map(|(ns, name)| self.stores.service(ns, name))
                        .collect();
                    let index = lock(&self.slice_index);
                    let slices: Vec<_> = wanted
                        .iter()
                        .flat_map(|(ns, svc)| index.slices(ns, svc).map(move |name| (ns, name)))
                        .filter_map(|(ns, name)| self.stores.slice(ns, name))
                        .collect();
                    drop(index);
                    let objects = Objects {
                        services: &services,
                        slices: &slices,
                        ..*objects
                    };
                    Ok(state.update(builder, &self.spec, &objects, attached, plan))
                }
                Err(e) => {
                    state.clear();
                    Err(e)
                }
            },
        }
    }

    /// The hosts an update after changes to the Ingresses, to `services` and to `secrets`
    /// translates again.
    pub fn plan_update(
        &self,
        objects: &Objects<'_>,
        services: &std::collections::BTreeSet<(String, String)>,
        secrets: &std::collections::BTreeSet<(String, String)>,
    ) -> Result<IngressPlan, NeedFull> {
        let mut state = self.ingresses.lock().unwrap_or_else(|e| e.into_inner());
        state.plan(&self.spec, objects, services, secrets)
    }

    /// Takes what changed since the last call, a Node change turned into what it bears on
    /// ([`Changes::nodes`]), and Secret and Namespace changes too ([`Changes::secrets`],
    /// [`Changes::namespaces`]).
    pub fn take_changes(&self) -> Changes {
        let mut changes = std::mem::take(&mut *lock(&self.changes));
        if std::mem::take(&mut changes.nodes) {
            self.node_changes(&mut changes);
        }
        if !changes.secrets.is_empty() || changes.namespaces {
            self.secret_changes(&mut changes);
        }
        changes
    }

    /// Whether `changes` are (now) a build from nothing: one was due already, or the cluster does
    /// not serve live stores (then an update has nothing exact to start from).
    fn builds_from_nothing(&self, changes: &mut Changes) -> bool {
        changes.full = changes.full || !self.synced() || self.lkg.serving_persisted();
        changes.full
    }

    /// Secrets or Namespaces changed. A Namespace's labels matter only to Gateway listeners
    /// that select route namespaces by label (then a build from nothing; else nothing). A
    /// Secret matters only if an Ingress or a Gateway listener names it: one that none does is
    /// dropped (nothing to build); the others are left for the update (see
    /// `translate::Incremental::plan`; a Gateway listener's certificate is read again by the
    /// attachment every update makes, which builds from nothing if the listeners programmed
    /// change). Found by a pass over the Ingress and Gateway stores, no object copied. A build
    /// from nothing while the cluster does not serve live stores.
    fn secret_changes(&self, changes: &mut Changes) {
        if self.builds_from_nothing(changes) {
            return;
        }
        let gateways = self.stores.all_gateways();
        if std::mem::take(&mut changes.namespaces) && translate::gateway::selects_namespaces(&gateways) {
            changes.full = true;
            return;
        }
        if changes.secrets.is_empty() {
            return;
        }
        let changed: rustc_hash::FxHashSet<(&str, &str)> =
            changes.secrets.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect();
        let ingresses = self.stores.all_ingresses();
        let read: std::collections::BTreeSet<(String, String)> = translate::secrets_read(&ingresses)
            .chain(translate::gateway::secrets_read(&gateways))
            .filter(|r| changed.contains(r))
            .map(|(n, s)| (n.to_owned(), s.to_owned()))
            .collect();
        drop(changed);
        changes.secrets = read;
    }

    /// A Node changed: the nodes that take NodePort traffic (Ready, schedulable, with an
    /// address of the configured type), their addresses and the warnings about the others are
    /// all the table takes from Nodes. When those are unchanged (a heartbeat, a label, another
    /// condition), nothing is to be done; else the endpoints of every Service in NodePort
    /// mode are (what the endpoint fast path refreshes; the warnings come with the full build
    /// once changes are quiet, [`Changes::node_use`]). A build from nothing while the cluster
    /// does not serve live stores, or when one is due anyway.
    fn node_changes(&self, changes: &mut Changes) {
        if self.builds_from_nothing(changes) {
            return;
        }
        let now = NodeUse::of(&self.spec, &self.stores.nodes());
        let mut last = lock(&self.node_use);
        if last.as_ref() == Some(&now) {
            return;
        }
        *last = Some(now);
        drop(last);
        changes.node_use = true;
        let services = self.stores.all_services();
        changes
            .services
            .extend(translate::node_port_services(&self.spec, &services));
    }

    /// Records which Gateway listeners this build programs; `true` when that changed since the
    /// last build (then where routes attach may have too: an update is not exact).
    pub fn programmed_changed(&self, attachment: &Attachment<'_>) -> bool {
        let now = attachment.programmed();
        let mut last = lock(&self.programmed);
        let changed = *last != now;
        *last = now;
        changed
    }

    /// Resolves once every watch has completed its first full list.
    pub async fn wait_ready(&self) {
        self.stores.wait_ready().await;
    }

    /// Whether every watch has completed its first full list (unlike `wait_ready`, without
    /// waiting, and without taking over the stores' single readiness waker).
    pub fn synced(&self) -> bool {
        self.listed.load(Ordering::Acquire) == self.stores.watches()
    }

    /// Hands what a build served to the Ingress status writer, once the cluster is synced (a
    /// half-listed view, e.g. without the IngressClasses, would clear the status of Ingresses
    /// that are in fact served). The writer task runs on this runtime only when the control
    /// loop next waits, i.e. after the table of this build is published.
    pub fn offer_status(&self, objects: &Objects<'_>, served: &Arc<[(String, String)]>) {
        if let Some(writer) = &self.status
            && self.synced()
        {
            writer.offer(objects.ingresses, served);
        }
    }

    /// Hands a build's Gateway API status view to its writer, once the cluster is synced,
    /// starting the writer (and the Lease election) with the first build that has one of
    /// kedge's GatewayClasses. While the writer is still making the writes of the last view
    /// (10k of them after a Gateway with 10k routes appears) no view is made: it would be
    /// milliseconds of the control thread per build, and would stop the writer to plan again.
    /// The view is then owed, and only a `quiet` build makes it (one made once changes are
    /// quiet, or from nothing): at 10k routes changed by the writes coming back it is hundreds
    /// of milliseconds, which a change must not meet. [`Cluster::view_owed`] tells the control
    /// loop to make one.
    pub fn offer_gateway_status(&self, attachment: &Attachment<'_>, objects: &Objects<'_>, quiet: bool) {
        if !self.synced() || (attachment.classes.is_empty() && self.gateway_status.get().is_none()) {
            return;
        }
        let busy = self.gateway_status.get().is_some_and(gateway_status::Writer::writing);
        if busy || (!quiet && self.view_owed.load(Ordering::Relaxed)) {
            self.view_owed.store(true, Ordering::Relaxed);
            return;
        }
        self.view_owed.store(false, Ordering::Relaxed);
        let now = crate::time::format_time(crate::time::unix_now());
        let started = std::time::Instant::now();
        let mut unchanged = lock(&self.gateway_written);
        let items = gateway_status::view_with(
            attachment,
            objects,
            &self.config.gateway_controller,
            &now,
            &mut unchanged,
        );
        let (read, view_ms) = (unchanged.read(), started.elapsed().as_secs_f64() * 1e3);
        drop(unchanged);
        // Once per quiet time (after a burst of changes) at info: what the view cost.
        macro_rules! logged {
            ($level:ident) => {
                tracing::$level!(
                    cluster = self.config.name,
                    routes_read = read,
                    items = items.len(),
                    view_ms = format!("{view_ms:.3}"),
                    "Gateway API status view"
                )
            };
        }
        if quiet {
            logged!(info);
        } else {
            logged!(debug);
        }
        let writer = self.gateway_status.get_or_init(|| {
            let election = self
                .election
                .get_or_init(|| Election::start(self.client.clone(), &self.config));
            gateway_status::Writer::spawn(
                self.client.clone(),
                &self.config.name,
                Arc::clone(&self.pace),
                election.holding(),
            )
        });
        writer.offer(items);
    }

    /// Whether a Gateway API status view was put off and none made since
    /// ([`Cluster::offer_gateway_status`]): the control loop makes one once changes are quiet.
    pub fn view_owed(&self) -> bool {
        self.view_owed.load(Ordering::Relaxed)
    }

    /// A clean stop: stops writing status and releases the status Lease if this kedge holds it
    /// (another edge takes over at once instead of after the lease duration), then writes the
    /// state file if it owes a write.
    pub async fn stop(&mut self) {
        if let Some(writer) = self.status.take() {
            writer.stop().await;
        }
        if let Some(writer) = self.gateway_status.take() {
            writer.stop().await;
        }
        if let Some(election) = self.election.take() {
            election.stop().await;
        }
        let synced = self.synced();
        self.lkg.stop(synced).await;
    }

    /// The objects to translate from nothing: those persisted in the state directory while the
    /// cluster serves from them (not synced within `sync_timeout` at start), else a copy of
    /// every store. Indexes their EndpointSlices by Service for the endpoint fast path and
    /// updates.
    pub fn objects(&self) -> ClusterObjects {
        let objects = self.lkg.choose(self.synced(), || self.stores.objects());
        *lock(&self.slice_index) = SliceIndex::of(&objects.slices);
        *lock(&self.node_use) = Some(NodeUse::of(&self.spec, &objects.nodes));
        objects
    }

    /// The objects an update after `changes` reads, or `None` when only a build from nothing
    /// is exact (the cluster serves its persisted objects, or has just left them): a copy of
    /// every store but the EndpointSlices', whose index is brought up to date with the changed
    /// slices instead; [`Cluster::slices_for_update`] adds the few the update resolves. The
    /// state file gets the live objects after the update is published
    /// ([`Cluster::persist_changes`]).
    pub fn update_objects(&self, changes: &Changes) -> Option<ClusterObjects> {
        if !self.lkg.live_for_update(self.synced()) {
            return None;
        }
        self.index_slices(&changes.slices);
        Some(self.stores.objects_except("endpointslices"))
    }

    /// Adds to `objects` (from [`Cluster::update_objects`]) the EndpointSlices an update with
    /// `plan` reads: those of the Services its Ingresses use, found through the index (the
    /// Gateway routes' are looked up by [`Cluster::translate_routes`]).
    pub fn slices_for_update(&self, objects: &mut ClusterObjects, plan: &IngressPlan) {
        let services = lock(&self.ingresses).services(plan);
        let index = lock(&self.slice_index);
        objects.slices = services
            .iter()
            .flat_map(|(ns, svc)| index.slices(ns, svc).map(move |name| (ns, name)))
            .filter_map(|(ns, name)| self.stores.slice(ns, name))
            .collect();
    }

    /// Brings the Service → EndpointSlices index up to date with the changed `slices`, as the
    /// stores hold them now; returns the Services whose slices changed (before and after).
    fn index_slices(&self, slices: &std::collections::BTreeSet<(String, String)>) -> Vec<(String, String)> {
        let mut index = lock(&self.slice_index);
        let mut touched = Vec::new();
        for (ns, name) in slices {
            let now = self.stores.slice(ns, name);
            let service = now.as_deref().and_then(translate::slice_service);
            // A slice that left its Service (deleted, relabelled) takes its endpoints along.
            if let Some(before) = index.set(ns, name, service) {
                touched.push((ns.clone(), before));
            }
            if let Some(svc) = service {
                touched.push((ns.clone(), svc.to_owned()));
            }
        }
        touched
    }

    /// The endpoints of the Services whose EndpointSlices changed (`changes` holds nothing
    /// else), by backend name, resolved as a full translation would but from the few objects
    /// concerned: the changed slices and the touched Services are looked up in the stores,
    /// their Services' other slices found through the index. Nothing while the cluster serves
    /// its persisted objects (which do not change; a full build follows the live sync).
    pub fn changed_endpoints(&self, changes: Changes) -> Vec<(String, Vec<SocketAddr>)> {
        if self.lkg.serving_persisted() {
            return Vec::new();
        }
        let mut touched = changes.services;
        touched.extend(self.index_slices(&changes.slices));
        let touched: Vec<(String, String)> = touched.into_iter().collect();
        let index = lock(&self.slice_index);
        let services: Vec<_> = touched
            .iter()
            .filter_map(|(ns, name)| self.stores.service(ns, name))
            .collect();
        let slices: Vec<_> = touched
            .iter()
            .flat_map(|(ns, svc)| index.slices(ns, svc).map(move |name| (ns, name)))
            .filter_map(|(ns, name)| self.stores.slice(ns, name))
            .collect();
        drop(index);
        let nodes = self.stores.nodes();
        let objects = Objects {
            services: &services,
            slices: &slices,
            nodes: &nodes,
            ..Objects::default()
        };
        translate::service_endpoints(&self.spec, &objects, &touched)
    }

    /// After an update (which reads no store whole): the state file writer copies the live
    /// objects when it next writes (see [`LastKnownGood::offer_live`]).
    pub fn persist_changes(&self) {
        self.lkg.offer_live(self.synced());
    }

    /// Brings the cluster's state (live, disconnected, ...) up to date with its watches, without
    /// a build: what a build's [`Cluster::objects`] does first (the EndpointSlices are indexed
    /// again only when the cluster is not serving live stores it served before).
    pub fn refresh_state(&self) {
        if self.lkg.live_for_update(self.synced()) {
            // The state file gets what changed (a status write coming back, most often) as
            // after an update: copied when the file is written, not here.
            self.lkg.offer_live(true);
        } else {
            drop(self.objects());
        }
    }

    /// What the cluster serves from: nothing synced yet, its persisted state, live stores.
    pub fn state(&self) -> ClusterState {
        self.lkg.state()
    }

    /// Start-up waited `sync_timeout` for the first sync in vain: serve the persisted state, if
    /// any, until the live sync completes.
    pub fn sync_timed_out(&self) {
        self.lkg.sync_timed_out(self.config.sync_timeout);
    }

    /// Resolves once a watch of this cluster has failed (at once if one already has).
    pub async fn watch_failed(&self) {
        self.health.failed().await;
    }

    /// A watch failed before the first sync: serve the persisted state at once if there is one
    /// (`true`), else keep waiting for the sync.
    pub fn unreachable(&self) -> bool {
        self.lkg.unreachable()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

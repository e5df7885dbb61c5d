//! The control thread (tokio + `kube`): it watches the configured clusters and is the only
//! place where snapshots are built and published ([`crate::process`] starts it and forwards
//! signals to it as `Control` calls):
//!
//! ```text
//! static routes ─┐
//! cluster stores ┴▶ TableBuilder ▶ RouteTable ▶ Snapshot ▶ ArcSwap::store ▶ workers load it
//! ```
//!
//! A snapshot is rebuilt whole after SIGHUP, a relist and the watched changes no update
//! handles (debounced). Changes that touched only EndpointSlices get a new table that shares
//! the current one's rules and has new endpoints for the touched Services (resolved from the
//! stores for those Services only: their EndpointSlices are found through the cluster's
//! Service → EndpointSlices index, no store is copied). Changes that touched only Ingresses,
//! Gateway routes, Services, EndpointSlices and the Secrets Ingresses read get an update (a
//! Secret or Namespace nothing reads, nothing at all): the hosts of the Ingresses they touch
//! (and the Gateway hosts of the routes they touch) are translated again and every other
//! host's rules are shared with the current table (`TableBuilder::update`,
//! `translate::Incremental`, `httproute::Incremental`), unless only a build from nothing is
//! exact (then it runs). Both are exact: no build from nothing follows them, except one
//! `resync` (a cluster setting) after the first of them, as a bound on a bug's reach, and one
//! once changes are quiet after a change of what the table takes from Nodes (the warnings
//! about them). Status writes coming back build nothing; once they are quiet an update with no
//! change hands the status writers a fresh view. Endpoint-only changes and updates are
//! published at once when the loop was idle; bursts (and every full rebuild) wait out
//! `DEBOUNCE` (a wake-up that brought no change, such as a status write coming back, is no
//! burst). A published snapshot is never modified. Workers only ever *load* what this
//! publishes.

mod certs;
mod cluster;
pub mod gateway_status;
pub mod gateway_types;
mod health;
mod kinds;
mod kube_client;
mod last_known_good;
pub mod lean;
mod lease;
mod state_file;
mod status;
pub mod translate;
mod watch;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use self::cluster::{Changes, Cluster};
use crate::config::{self, Config, ListenerSpec};
use crate::routes::TableBuilder;
use crate::shared::{HttpsSettings, Shared, Snapshot};

use self::certs::Certs;

/// How long the control loop waits after a change for more changes before rebuilding: a
/// rolling update touches many objects within milliseconds and one rebuild covers them all.
/// An endpoint-only change is not held back when the loop was idle (its update costs little,
/// and waiting would be all of its delay); changes within this time of the last one wait out
/// the rest of it, so a burst still makes one update per window.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// Quiet time after status writes come back (kedge's own most often) before the status
/// writers get a fresh view (an update that changes no rule), and after a change of what the
/// table takes from Nodes before the build from nothing that refreshes the warnings about them.
const SETTLE: Duration = Duration::from_secs(1);

/// How long after the first update (or endpoint change) since the last build from nothing
/// kedge makes one anyway: the clusters' shortest `resync` (10 min by default). Every update is
/// exact by construction, and the property tests compare each with a build from nothing; this
/// bounds what a bug there could leave behind. It is not after every change: at 10k routes a
/// build from nothing is hundreds of milliseconds that a change arriving meanwhile would wait
/// for.
fn resync_after(cfg: &Config) -> Duration {
    cfg.clusters
        .iter()
        .map(|c| c.resync)
        .min()
        .unwrap_or(Duration::from_secs(600))
}

/// How often the control loop looks at the host's addresses (Gateways' `spec.addresses` are
/// served only while configured on this host, for listeners on an unspecified address).
const HOST_CHECK: Duration = Duration::from_secs(2);

/// The longest a fresh status view (or the build for the warnings about Nodes) waits for
/// changes to be quiet: changes that never stop (endpoints churning in a big cluster) do not
/// hold it back for ever.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// What waits for changes to be quiet (`SETTLE`, at most `SETTLE_MAX` after it was asked for):
/// a fresh status view for the status writers (an update with no change), or a build from
/// nothing.
#[derive(Default)]
struct Settle {
    /// When it is due.
    at: Option<tokio::time::Instant>,
    /// When it was first asked for.
    since: Option<tokio::time::Instant>,
    /// A build from nothing (else a status view).
    full: bool,
}

impl Settle {
    fn ask(&mut self, now: tokio::time::Instant, full: bool) {
        self.since.get_or_insert(now);
        self.full |= full;
        self.push(now);
    }

    /// A change came: what waits for quiet waits on (within `SETTLE_MAX`).
    fn push(&mut self, now: tokio::time::Instant) {
        if let Some(since) = self.since {
            self.at = Some((now + SETTLE).min(since + SETTLE_MAX));
        }
    }
}

/// When the control loop last took changes, for [`DEBOUNCE`]: a wake-up within it of that is
/// part of a burst and waits out the rest of it.
#[derive(Default)]
struct Burst {
    last: Option<tokio::time::Instant>,
}

impl Burst {
    /// Until when a wake-up at `now` waits before it takes the changes (`None`: at once).
    fn wait(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.last.map(|at| at + DEBOUNCE).filter(|&until| until > now)
    }

    /// The loop took changes at `now`; `nothing`: the wake-up brought none. Only a change
    /// starts a burst: kedge's own status writes coming back (a thousand a second while it
    /// writes 10k routes' statuses), a watch failing or recovering, must not hold the next
    /// change back.
    fn took(&mut self, now: tokio::time::Instant, nothing: bool) {
        if !nothing {
            self.last = Some(now);
        }
    }
}

/// What the main thread asks of the control thread.
enum Command {
    Reload,
    Stop,
}

/// The running control thread, as the main thread holds it.
pub(crate) struct Control {
    commands: tokio::sync::mpsc::UnboundedSender<Command>,
    thread: std::thread::JoinHandle<()>,
}

/// Starts the control thread and returns once it has published its first full table (after
/// every cluster's first sync, or its sync timeout). `listeners`: kedge's listeners with the
/// addresses they are bound to.
pub(crate) fn start(
    cfg: Config,
    listeners: Vec<ListenerSpec>,
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    notifier: crate::notify::Notifier,
) -> Result<Control, String> {
    let tls_port = listeners.iter().find(|l| l.tls).map(|l| l.address.port());
    let tls = TlsState {
        certs: Certs::new()?,
        listening: tls_port.is_some(),
        port: tls_port,
    };
    let local = Local {
        addresses: host_addresses(),
        listeners,
    };
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("kedge-control".into())
        .spawn(move || control_thread(cfg, (tls, local), shared, admin, (cmd_rx, notifier), ready_tx))
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    if ready_rx.recv().is_err() {
        return Err("the control thread stopped during start-up".into());
    }
    Ok(Control {
        commands: cmd_tx,
        thread,
    })
}

impl Control {
    /// Re-read the file and publish what it says (SIGHUP); READY=1 follows when done.
    pub(crate) fn reload(&self) {
        let _ = self.commands.send(Command::Reload);
    }

    /// Stop watching and building.
    pub(crate) fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }

    /// Waits for the thread to end (after [`Control::stop`]).
    pub(crate) fn join(self) {
        let _ = self.thread.join();
    }
}

/// The control thread: a current-thread tokio runtime that owns the cluster watches and every
/// snapshot build.
fn control_thread(
    cfg: Config,
    (mut tls, mut local): (TlsState, Local),
    shared: Arc<Shared>,
    admin: Option<std::net::TcpListener>,
    (mut commands, notifier): (tokio::sync::mpsc::UnboundedReceiver<Command>, crate::notify::Notifier),
    ready: mpsc::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the control runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        // Serves from now on (not ready until the first table), on this runtime.
        let metrics = crate::metrics::Metrics {
            workers: Arc::clone(&shared.metrics),
        };
        let admin = crate::admin::Admin::start(admin, &cfg.clusters, Arc::clone(&shared.snapshot), metrics);
        let changed = Arc::new(Notify::new());
        let state_dir = (!cfg.clusters.is_empty())
            .then(|| state_file::StateDir::open(&cfg.process.state_dir))
            .flatten();
        let mut clusters = Vec::new();
        for c in &cfg.clusters {
            match Cluster::connect(c, Arc::clone(&changed), state_dir.as_ref()).await {
                Ok(cluster) => clusters.push(cluster),
                Err(e) => tracing::error!("{e}; this cluster is not served"),
            }
        }
        // Every cluster's first sync at once: start-up waits for the slowest one, at most its
        // `sync_timeout`, never the sum of them.
        let started = Instant::now();
        // A cluster whose API server cannot be reached (a watch fails before the first sync)
        // serves its persisted state at once, if it has one; `sync_timeout` bounds the wait for
        // one that answers but slowly, or that has nothing persisted.
        futures_util::future::join_all(clusters.iter().map(|c| async move {
            let live = tokio::time::timeout(c.config.sync_timeout, c.wait_ready());
            tokio::pin!(live);
            let synced = tokio::select! {
                r = &mut live => r,
                () = c.watch_failed() => {
                    if c.unreachable() {
                        return;
                    }
                    live.await
                }
            };
            match synced {
                Ok(()) => tracing::info!(
                    cluster = c.config.name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "cluster synced"
                ),
                // Serves the persisted state, if any, until the live sync (logged either way).
                Err(_) => c.sync_timed_out(),
            }
        }))
        .await;
        let mut cfg = cfg;
        let mut logged = BTreeSet::new();
        // What the watches recorded up to now (each first list's end asks for a full build) is
        // in the start build, which reads every store: not a second full build right after it.
        for c in &clusters {
            drop(c.take_changes());
        }
        publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "start");
        admin.warnings(logged.iter().cloned().collect());
        let _ = ready.send(());
        // Once changes are quiet: a fresh status view after status writes came back, or a build
        // from nothing for the warnings about Nodes.
        let mut settle = Settle::default();
        // The build from nothing that bounds how long updates go without one (`resync_after`).
        let mut resync: Option<tokio::time::Instant> = None;
        let mut heartbeat = tokio::time::interval(crate::notify::BEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let control_heart = Arc::clone(&shared.hearts[0]);
        // Gives memory back to the system after bursts of connections (see memory.rs).
        let mut trimmer = crate::memory::Trimmer::default();
        let mut cert_check = tokio::time::interval(certs::FILE_CHECK);
        cert_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut host_check = tokio::time::interval(HOST_CHECK);
        host_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut burst = Burst::default();

        loop {
            // Back to waiting after a build: the admin server reports the states it decided.
            admin.published(clusters.iter().map(|c| (c.config.name.as_str(), c.state())));
            // A status view a build put off (the writer was busy): once changes are quiet, an
            // update with no change makes it (or puts it off again). Changes push it back.
            if settle.at.is_none() && clusters.iter().any(Cluster::view_owed) {
                settle.ask(tokio::time::Instant::now(), false);
            }
            let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
            let settle_at = settle.at.unwrap_or_else(far);
            let resync_at = resync.unwrap_or_else(far);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Reload) => {
                        if let Some(next) = reload(&cfg) {
                            cfg = next;
                            publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "reload");
                            (settle, resync) = (Settle::default(), None);
                            admin.warnings(logged.iter().cloned().collect());
                            // Said only once the new table is live, so that whoever waits for
                            // this line can rely on it.
                            tracing::info!("configuration reloaded");
                        }
                        // Done either way (a bad file keeps the old configuration serving).
                        notifier.send("READY=1");
                    }
                    Some(Command::Stop) | None => break,
                },
                () = changed.notified() => {
                    if let Some(until) = burst.wait(tokio::time::Instant::now()) {
                        tokio::time::sleep_until(until).await;
                    }
                    let mut changes: Vec<Changes> = clusters.iter().map(Cluster::take_changes).collect();
                    if changes.iter().any(|c| c.full) {
                        // A full rebuild is worth batching: what else comes within DEBOUNCE
                        // joins it.
                        tokio::time::sleep(DEBOUNCE).await;
                        for (c, ch) in clusters.iter().zip(&mut changes) {
                            ch.merge(c.take_changes());
                        }
                    }
                    let nothing = changes.iter().all(Changes::is_empty);
                    let now = tokio::time::Instant::now();
                    burst.took(now, nothing);
                    let endpoints_only = changes.iter().all(Changes::endpoints_only) && !nothing;
                    let updatable = changes.iter().all(|c| !c.full) && !nothing;
                    // Not quiet: what waits for quiet waits on.
                    settle.push(now);
                    // The warnings about Nodes come only with a build from nothing.
                    if changes.iter().any(|c| c.node_use) {
                        settle.ask(now, true);
                    }
                    if nothing {
                        // A wake-up without an object change: a watch failed or recovered, or
                        // the wake-up of events already handled, or only Gateway API statuses
                        // changed. The table stays; only the clusters' states (live,
                        // disconnected) are brought up to date, and after a status change the
                        // status writers get a fresh view once quiet (so kedge's own status
                        // writes never sit between a change and traffic).
                        for c in &clusters {
                            c.refresh_state();
                        }
                        if changes.iter().any(|c| c.status_only) {
                            settle.ask(now, false);
                        }
                    } else if endpoints_only {
                        update_endpoints(&clusters, changes, &shared);
                        resync.get_or_insert(now + resync_after(&cfg));
                    } else if updatable {
                        // The hosts the change touches: all a build from nothing would change.
                        let why = publish_with(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, ("watch", "update"), (Some(&changes), false));
                        admin.warnings(logged.iter().cloned().collect());
                        if why == "update" {
                            resync.get_or_insert(now + resync_after(&cfg));
                        } else {
                            (settle, resync) = (Settle::default(), None);
                        }
                    } else {
                        publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "watch");
                        admin.warnings(logged.iter().cloned().collect());
                        (settle, resync) = (Settle::default(), None);
                    }
                }
                _ = heartbeat.tick() => {
                    control_heart.beat();
                    trimmer.tick(&shared.metrics);
                }
                _ = host_check.tick() => {
                    // An address moved to or from this host (a VRRP address, a new interface):
                    // Gateways that ask for it are served or not from now on.
                    let now = host_addresses();
                    if now != local.addresses {
                        local.addresses = now;
                        publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "host addresses");
                        admin.warnings(logged.iter().cloned().collect());
                        (settle, resync) = (Settle::default(), None);
                    }
                }
                _ = cert_check.tick(), if tls.listening => {
                    if tls.certs.stale(crate::time::unix_now()) {
                        publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "certificates");
                        admin.warnings(logged.iter().cloned().collect());
                        (settle, resync) = (Settle::default(), None);
                    }
                }
                () = tokio::time::sleep_until(settle_at), if settle.at.is_some() => {
                    let full = if std::mem::take(&mut settle).full {
                        publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "settle");
                        true
                    } else {
                        // An update with no change: the same rules, a view of the statuses as
                        // they now are (a build from nothing only when no update is exact).
                        let none: Vec<Changes> = clusters.iter().map(|_| Changes::default()).collect();
                        publish_with(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, ("settle", "status"), (Some(&none), true)) != "status"
                    };
                    admin.warnings(logged.iter().cloned().collect());
                    if full {
                        resync = None;
                    }
                }
                () = tokio::time::sleep_until(resync_at), if resync.is_some() => {
                    publish(&cfg, &clusters, (&mut tls, &local), &shared, &mut logged, "resync");
                    admin.warnings(logged.iter().cloned().collect());
                    (settle, resync) = (Settle::default(), None);
                }
            }
        }
        // A clean stop hands the status Leases over and writes the state files that owe a write
        // (bounded; the workers drain meanwhile).
        futures_util::future::join_all(clusters.iter_mut().map(Cluster::stop)).await;
    });
}

/// The fast path for changes that touched only EndpointSlices (a rollout, a scale, a pod
/// turning ready): the new table shares the current one's hosts and paths and gets new
/// endpoints for the backends of the touched Services, resolved exactly as a full translation
/// would. Milliseconds instead of a full rebuild's tens of milliseconds at 10k Ingresses.
fn update_endpoints(clusters: &[Cluster], changes: Vec<Changes>, shared: &Shared) {
    let (started, cpu) = (Instant::now(), thread_cpu());
    let current = shared.snapshot.load_full();
    let mut updates = Vec::new();
    let mut services = 0;
    for (c, ch) in clusters.iter().zip(changes) {
        if ch.is_empty() {
            continue;
        }
        services += ch.services.len();
        for (name, endpoints) in c.changed_endpoints(ch) {
            if let Some(id) = current.table.backend_id(&name) {
                updates.push((id, endpoints));
            }
        }
    }
    let table = current.table.with_endpoints(updates);
    let backends = table.backends.len();
    let endpoints: usize = table.backends.iter().map(|b| b.endpoints.len()).sum();
    let hosts = table.host_count();
    crate::stats::table_published();
    shared.snapshot.store(Arc::new(Snapshot {
        table,
        client: current.client.clone(),
        upstream: current.upstream.clone(),
        http2: current.http2.clone(),
        access_log: current.access_log,
        tls: current.tls.clone(),
        gateway_tls: current.gateway_tls.clone(),
        https: current.https.clone(),
    }));
    tracing::info!(
        why = "endpoints",
        services,
        hosts,
        backends,
        endpoints,
        build_ms = format!("{:.3}", started.elapsed().as_secs_f64() * 1e3),
        cpu_ms = format!("{:.3}", thread_cpu().saturating_sub(cpu).as_secs_f64() * 1e3),
        "route table published"
    );
    // The state file, once the new endpoints are served.
    for c in clusters {
        c.persist_changes();
    }
}

/// What one build produced besides the snapshot.
struct Built {
    warnings: Vec<String>,
    /// Ingresses that got routes, over all clusters.
    served: usize,
    /// Host names with a certificate of their own.
    tls_hosts: usize,
    /// GatewayClasses that are kedge's, over all clusters.
    gateway_classes: usize,
    /// An update met what only a build from nothing decides (`TableBuilder::needs_full`): its
    /// snapshot must not be published.
    inexact: bool,
    /// It was an update (exact).
    updated: bool,
}

/// This host as Gateways see it: kedge's listeners (bound addresses, real ports) and the IP
/// addresses configured on its interfaces.
struct Local {
    listeners: Vec<ListenerSpec>,
    addresses: Vec<std::net::IpAddr>,
}

/// The CPU time the calling thread has used (zero when the kernel will not say). Next to a
/// build's wall time (`build_ms`) its `cpu_ms` tells a build that worked long from one that
/// waited for a core (a host whose cores are busy).
fn thread_cpu() -> Duration {
    crate::time::clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The IP addresses configured on this host's interfaces, sorted (empty when the kernel will
/// not say).
#[allow(unsafe_code)]
fn host_addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocates, freed below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; `ifa_addr`,
        // when not null, points to a sockaddr of the family it names, as large as that family's.
        unsafe {
            let addr = (*cur).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*addr.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*addr.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// The control thread's TLS state: certificates, and what the listeners are.
struct TlsState {
    certs: Certs,
    /// Whether kedge has a TLS listener at all.
    listening: bool,
    /// The first TLS listener's port (the redirect target unless `[tls] redirect_port`).
    port: Option<u16>,
}

/// What an update starts from: the builder made from the current table without the dirty
/// hosts, each cluster's plan (their union of dirty hosts), the static routes' warnings.
type UpdateStart = (TableBuilder, Vec<translate::IngressPlan>, Vec<String>);

/// The start of an update after `changes` (one per cluster) to the table `prev`, with the
/// objects it reads, or `None` when only a build from nothing is exact (said at debug level).
fn start_update(
    cfg: &Config,
    clusters: &[Cluster],
    prev: &crate::routes::RouteTable,
    changes: &[Changes],
    tls_hosts: &[String],
) -> Option<(Vec<kinds::ClusterObjects>, UpdateStart)> {
    let mut objects = Vec::new();
    for (c, ch) in clusters.iter().zip(changes) {
        objects.push(c.update_objects(ch)?);
    }
    let mut plans = Vec::new();
    for ((c, o), ch) in clusters.iter().zip(&objects).zip(changes) {
        let services = ch.touched_services();
        match c.plan_update(&o.view(), &services, &ch.secrets) {
            Ok(p) => plans.push(p),
            Err(translate::NeedFull(why)) => {
                tracing::debug!(cluster = c.config.name, "a build from nothing: {why}");
                return None;
            }
        }
    }
    let all: Vec<Option<String>> = plans.iter().flat_map(|p| p.hosts.iter().cloned()).collect();
    for p in &mut plans {
        p.extend_hosts(&all);
    }
    for ((c, o), p) in clusters.iter().zip(&mut objects).zip(&plans) {
        c.slices_for_update(o, p);
    }
    // Static routes come first in their hosts: a dirty host with one is built from nothing.
    if cfg.routes.iter().any(|r| all.contains(&r.host)) {
        tracing::debug!("a build from nothing: a static route's host changed");
        return None;
    }
    // Their warnings depend on them alone (they are added first).
    let warnings = translate::static_routes::add(&mut TableBuilder::default(), &cfg.routes, tls_hosts);
    Some((
        objects,
        (
            TableBuilder::update(prev, all.iter().map(|h| h.as_deref())),
            plans,
            warnings,
        ),
    ))
}

/// Builds the snapshot the workers serve: static routes first (they win conflicts), then each
/// cluster's Ingresses; certificates in the same order. With `update` (the current table and
/// what changed since it was built, one entry per cluster), only the hosts the changes touch
/// are built again when that is exact (else from nothing).
/// Builds a snapshot and hands it to `publish` with what the build found (`true`: it serves
/// now; an inexact update is refused); then, if it does, the Gateway API status views go to the
/// status writers (after the swap: at 10k routes a view is milliseconds that traffic need not
/// wait for). Returns whether it was published. `quiet`: an update made once changes are quiet
/// (it makes the status views that updates put off, see `Cluster::offer_gateway_status`).
fn build(
    cfg: &Config,
    clusters: &[Cluster],
    (tls, local): (&mut TlsState, &Local),
    update: Option<(&crate::routes::RouteTable, &[Changes])>,
    quiet: bool,
    publish: &mut dyn FnMut(Snapshot, Built) -> bool,
) -> bool {
    let tls_hosts: Vec<String> = cfg.tls.certificates.iter().flat_map(|c| c.hosts.clone()).collect();
    // An update reads what the changes touch; a build from nothing every object.
    let (objects, started) = match update.and_then(|(prev, ch)| start_update(cfg, clusters, prev, ch, &tls_hosts)) {
        Some((objects, started)) => (objects, Some(started)),
        None => (clusters.iter().map(Cluster::objects).collect(), None),
    };
    let updating = started.is_some();
    let (mut builder, plans, mut warnings) = match started {
        Some((builder, plans, warnings)) => (builder, Some(plans), warnings),
        None => {
            let mut builder = TableBuilder::default();
            let warnings = translate::static_routes::add(&mut builder, &cfg.routes, &tls_hosts);
            (builder, None, warnings)
        }
    };
    let mut served = 0;
    let mut gateway_classes = 0;
    let mut outcomes = Vec::new();
    // Each cluster's attachment, for its status view once the snapshot is published.
    let mut attachments = Vec::with_capacity(clusters.len());
    // An update of the Gateway routes met what only a build from nothing decides.
    let mut routes_inexact = false;
    let (mut gateway_clusters, mut routes_rebuilt) = (0, false);
    for (i, (c, objects)) in clusters.iter().zip(&objects).enumerate() {
        let plan = plans.as_ref().and_then(|p| p.get(i));
        let outcome = c.translate_ingresses(&mut builder, &objects.view(), plan);
        c.offer_status(&objects.view(), &outcome.served);
        served += outcome.served.len();
        // Gateway API: where routes attach (and every Gateway API status), next to the Ingresses.
        let settings = translate::gateway::GatewaySettings {
            controller: c.config.gateway_controller.clone(),
            publish_addresses: c.config.publish_addresses.clone(),
            host_addresses: local.addresses.clone(),
        };
        // In an update, the Services that changed (the routes using one are decided again).
        let services = update
            .filter(|_| updating)
            .and_then(|(_, ch)| ch.get(i))
            .map(Changes::touched_services);
        let mut attachment = c.attach(&objects.view(), &settings, &local.listeners, services.as_ref());
        // Routes attach only to programmed listeners (an HTTPS one needs a usable certificate):
        // an update keeps the other routes' rules, so a change there needs a build from nothing.
        routes_inexact |= c.programmed_changed(&attachment) && updating;
        // The attached routes' rules, in their scopes (in an update, those the changes touch);
        // what they refuse reaches their status.
        let translated = c
            .translate_routes(&mut builder, &objects.view(), &attachment.routes, services.as_ref())
            .unwrap_or_else(|translate::NeedFull(why)| {
                tracing::debug!(cluster = c.config.name, "a build from nothing: {why}");
                routes_inexact = true;
                translate::httproute::Translated::default()
            });
        // Clusters' Gateway rules may share a scope and host, where each adds its rules again:
        // an update rebuilds one cluster's only when no other has any.
        gateway_clusters += usize::from(!attachment.routes.is_empty());
        routes_rebuilt |= translated.rebuilt;
        let route_warnings = translated.warnings;
        attachment.refuse(&translated.refusals);
        // Every programmed listener, routes or not: a host it selects is its routes' or a 404.
        for (bind, hostname) in &attachment.listeners {
            builder.gateway_listener(&bind.addresses, bind.port, hostname.as_deref());
        }
        gateway_classes += attachment.classes.len();
        // The HTTPS listeners' certificates, each served in its Gateway's scope only (after the
        // Ingresses', which win a host both name).
        let mut tls_bindings = outcome.tls;
        tls_bindings.extend(attachment.certificates.iter().map(|c| translate::TlsBinding {
            host: c.hostname.clone().unwrap_or_default(),
            secret: Arc::clone(&c.secret),
            owner: c.owner.clone(),
            scope: Some((c.bind.addresses.clone(), c.bind.port)),
        }));
        warnings.extend(
            outcome
                .warnings
                .into_iter()
                .chain(std::mem::take(&mut attachment.warnings))
                .chain(route_warnings)
                .map(|w| format!("cluster {}: {}: {}", c.config.name, w.object, w.message)),
        );
        outcomes.push((c.config.name.as_str(), tls_bindings));
        attachments.push(attachment);
    }
    // A host both an HTTPRoute and an Ingress (or a static route) claim: on the Gateway's
    // addresses and port the HTTPRoute decides, elsewhere the Ingress.
    for (host, route, other) in builder.gateway_overlaps() {
        warnings.push(format!(
            "host {host}: claimed by {route} and by {other}; on the Gateway's addresses and port the HTTPRoute \
             decides"
        ));
    }
    let mut tls_hosts = 0;
    let mut gateway_tls = Vec::new();
    let config = if tls.listening {
        let bindings: Vec<(&str, &translate::TlsBinding)> = outcomes
            .iter()
            .flat_map(|(c, b)| b.iter().map(move |b| (*c, b)))
            .collect();
        match tls
            .certs
            .build(&cfg.tls, &bindings, cfg.http2.enabled, crate::time::unix_now())
        {
            Ok(built) => {
                crate::stats::TLS_CERT_PROBLEMS.set(built.warnings.len() as u64);
                warnings.extend(built.warnings);
                tls_hosts = built.hosts;
                gateway_tls = built.scoped;
                Some(built.config)
            }
            Err(e) => {
                warnings.push(format!("TLS: {e}; TLS listeners refuse handshakes"));
                None
            }
        }
    } else {
        None
    };
    let hsts_line = if cfg.tls.hsts.is_empty() {
        Box::default()
    } else {
        format!("Strict-Transport-Security: {}\r\n", cfg.tls.hsts)
            .into_bytes()
            .into_boxed_slice()
    };
    routes_inexact |= routes_rebuilt && gateway_clusters > 1;
    let inexact = updating && (builder.needs_full() || routes_inexact);
    let snap = Snapshot {
        table: builder.build(),
        client: cfg.client.clone(),
        upstream: cfg.upstream.clone(),
        http2: cfg.http2.clone(),
        access_log: cfg.process.log.access_log,
        tls: config,
        gateway_tls,
        https: HttpsSettings {
            hsts_line,
            redirect_port: cfg.tls.redirect_port.or(tls.port),
            handshake_timeout: cfg.tls.handshake_timeout,
        },
    };
    let built = Built {
        warnings,
        served,
        tls_hosts,
        gateway_classes,
        inexact,
        updated: updating && !inexact,
    };
    let published = publish(snap, built);
    if published {
        for ((c, objects), attachment) in clusters.iter().zip(&objects).zip(&attachments) {
            c.offer_gateway_status(attachment, &objects.view(), quiet);
        }
    }
    published
}

/// Builds and swaps in a new snapshot, logging what it took and the warnings that are new
/// since the last build (each problem is logged once per change, not once per rebuild).
fn publish(
    cfg: &Config,
    clusters: &[Cluster],
    tls: (&mut TlsState, &Local),
    shared: &Shared,
    logged: &mut BTreeSet<String>,
    why: &'static str,
) {
    publish_with(cfg, clusters, tls, shared, logged, (why, why), (None, true));
}

/// [`publish`], as an update when `changes` (one per cluster) allow one; `why`: what a build
/// from nothing and what an update are logged as; `quiet`: made once changes are quiet (an
/// update of changes is not: it puts off the status views owed, see
/// `Cluster::offer_gateway_status`). Returns which it published.
fn publish_with(
    cfg: &Config,
    clusters: &[Cluster],
    (tls, local): (&mut TlsState, &Local),
    shared: &Shared,
    logged: &mut BTreeSet<String>,
    (why, why_update): (&'static str, &'static str),
    (changes, quiet): (Option<&[Changes]>, bool),
) -> &'static str {
    let (started, cpu) = (Instant::now(), thread_cpu());
    let current = changes.map(|_| shared.snapshot.load_full());
    let update = current.as_deref().map(|s| &s.table).zip(changes);
    // What was published (`"update"` or `why`), said in the log as soon as it serves, before
    // the status views.
    let mut published = None;
    let mut swap = |snap: Snapshot, b: Built| {
        if b.inexact {
            return false;
        }
        let (took, cpu_took) = (started.elapsed(), thread_cpu().saturating_sub(cpu));
        let backends = snap.table.backends.len();
        let endpoints: usize = snap.table.backends.iter().map(|b| b.endpoints.len()).sum();
        let hosts = snap.table.host_count();
        shared.snapshot.store(Arc::new(snap));
        crate::stats::table_published();
        let why = if b.updated { why_update } else { why };
        if b.updated {
            // The state file, once the update is served (it read no store whole).
            for c in clusters {
                c.persist_changes();
            }
        }
        let current: BTreeSet<String> = b.warnings.into_iter().collect();
        for w in current.difference(logged) {
            tracing::warn!("{w}");
        }
        let warnings = current.len();
        *logged = current;
        tracing::info!(
            why,
            hosts,
            ingresses = b.served,
            backends,
            endpoints,
            tls_hosts = b.tls_hosts,
            gateway_classes = b.gateway_classes,
            warnings,
            build_ms = format!("{:.3}", took.as_secs_f64() * 1e3),
            cpu_ms = format!("{:.3}", cpu_took.as_secs_f64() * 1e3),
            "route table published"
        );
        published = Some(why);
        true
    };
    if !build(cfg, clusters, (&mut *tls, local), update, quiet, &mut swap) {
        tracing::debug!("a build from nothing: the update met what only one decides");
        build(cfg, clusters, (&mut *tls, local), None, true, &mut swap);
    }
    drop(current);
    // A build from nothing is always published.
    published.unwrap_or(why)
}

/// Re-reads the file. A file that does not validate leaves the current configuration serving
/// and says why. Settings fixed at start (listeners, workers, driver, clusters) are reported
/// when changed, not applied.
fn reload(current: &Config) -> Option<Config> {
    let next = match config::load(&current.path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
            return None;
        }
    };
    let (p, q) = (&current.process, &next.process);
    if p.listeners != q.listeners
        || p.workers != q.workers
        || p.driver != q.driver
        || p.state_dir != q.state_dir
        || p.admin != q.admin
    {
        tracing::warn!("listeners, workers, driver, state_dir and [admin] changes take effect on restart only");
    }
    if current.clusters != next.clusters {
        tracing::warn!("[[cluster]] changes take effect on restart only");
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    /// The host's addresses include the loopback ones every Linux host has, sorted and unique.
    #[test]
    fn host_addresses_come_from_the_interfaces() {
        let addresses = super::host_addresses();
        assert!(
            addresses.contains(&std::net::IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
        let mut sorted = addresses.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(addresses, sorted);
    }

    /// A change within DEBOUNCE of the last change waits out the rest of it; wake-ups that
    /// brought nothing (status writes coming back) neither start a burst nor prolong one.
    #[test]
    fn only_changes_make_a_burst() {
        use super::{Burst, DEBOUNCE};
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let mut burst = Burst::default();
        assert_eq!(burst.wait(t0), None, "an idle loop takes a change at once");
        burst.took(t0, true);
        assert_eq!(burst.wait(ms(1)), None, "a status write coming back is no burst");
        burst.took(t0, false);
        assert_eq!(burst.wait(ms(1)), Some(t0 + DEBOUNCE), "a change 1 ms after a change");
        burst.took(ms(3), true);
        assert_eq!(burst.wait(ms(4)), Some(t0 + DEBOUNCE), "nothing does not prolong it");
        assert_eq!(burst.wait(t0 + DEBOUNCE), None, "the window is over");
    }
}

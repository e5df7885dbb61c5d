//! Last known good, and what each cluster serves from while its API server is away.
//!
//! - **Persistence.** Once a cluster has synced live, the objects translation reads (Ingresses,
//!   IngressClasses, Services, EndpointSlices, Nodes) are written to
//!   `{state_dir}/cluster-{name}.json` after every change, at most once per [`WRITE_EVERY`] (a
//!   burst of changes is written once it is over), atomically (temp file, fsync, rename, fsync
//!   of the directory), by a task of the control runtime with the encoding and the file I/O on
//!   tokio's blocking pool. Never before the first live sync: a store that is still empty must
//!   not overwrite good state.
//! - **Start during an outage.** A cluster that has not synced within its `sync_timeout` serves
//!   the objects persisted last ([`LastKnownGood::sync_timed_out`]) until its live stores are
//!   ready; [`LastKnownGood::choose`] is the one place that picks persisted or live objects.
//! - **State.** [`State`] says what a cluster serves from (nothing synced yet, the persisted
//!   objects, live stores, live stores with a failing watch); every change is logged once.
//! - **Health.** [`Health`] follows each watch: failed on an error, recovered on an event or as
//!   soon as the API server accepts the watch request again. kube's watcher says nothing when a
//!   watch restarts quietly, so [`Observe`], a layer on the cluster's client, sees that answer.
//! - **Timeouts.** [`tune_client`] and [`watcher_config`] make a silently dead API server
//!   noticed in about a minute instead of five.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::Notify;

use super::cluster::Snapshot;

/// What a state file says it is; a file that says anything else is not read.
const FORMAT: &str = "kedge.dev/cluster-state/v1";

/// The shortest time between two writes of one cluster's state file.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// Watch requests ask the API server to end them after this many seconds (kube's default: 290).
/// kube's watcher also drops a watch stream that stays silent for this long plus 5 s, and that
/// is what notices an API server gone without closing the connection (host down, partition, a
/// firewall forgetting the flow): after 65 s instead of 295 s. The cost is one watch request per
/// watch per minute, resumed from the last resourceVersion (no relist).
const WATCH_TIMEOUT_SECS: u32 = 60;

/// TCP connect plus TLS handshake to the API server (kube's default: 30 s). The reconnect after
/// the silent watch is dropped fails within this, so a dead API server is logged at most about
/// 75 s after it went away (65 s + 10 s), and right away when it refuses or resets connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the next bytes of a response (kube's default: none). It catches a LIST, or a
/// watch request whose response head never comes, on a connection that died; the watcher's idle
/// timeout covers only an established watch stream. It is longer than a healthy watch can stay
/// silent (the API server ends it after 60 s), so it never cuts one.
const READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Longest wait to send a request (kube's default: 295 s). Requests are small: a send blocked
/// this long is a dead peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets the client timeouts above on a cluster's kube config.
pub fn tune_client(config: &mut kube::Config) {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    // The read timeout counts from when a request is sent, not from when its pooled connection
    // went idle.
    config.reset_reader_on_write = true;
}

/// The watcher configuration of every watch: kube's defaults with [`WATCH_TIMEOUT_SECS`].
pub fn watcher_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

// ---- state -------------------------------------------------------------------------------------

/// What a cluster serves from. Readiness is [`State::is_ready`] of every cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not synced yet, and no persisted state in use: the cluster adds only what its stores hold
    /// so far (nothing at first).
    NotSynced,
    /// Not synced yet; serving the objects persisted at this time (RFC 3339).
    Persisted(String),
    /// Synced; every watch is running.
    Live,
    /// Synced, but a watch is failing (API server down, slow or answering errors): serving the
    /// last known state while kube retries.
    Disconnected,
}

impl State {
    /// Ready: synced once, or serving the persisted state.
    pub fn is_ready(&self) -> bool {
        !matches!(self, State::NotSynced)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::NotSynced => f.write_str("not synced"),
            State::Persisted(at) => write!(f, "persisted ({at})"),
            State::Live => f.write_str("live"),
            State::Disconnected => f.write_str("disconnected"),
        }
    }
}

/// One cluster's choice between persisted and live objects, its [`State`], and its state file.
/// Owned by the cluster and used on the control thread.
pub struct LastKnownGood {
    cluster: String,
    health: Arc<Health>,
    /// `None` when persistence is off.
    file: Option<PathBuf>,
    writer: Option<Arc<Slot>>,
    inner: Mutex<Inner>,
}

struct Inner {
    state: State,
    /// The loaded objects, while the state is `Persisted`.
    persisted: Option<Snapshot>,
}

impl LastKnownGood {
    /// For cluster `name`, persisting under `dir` (`None`: not at all). Starts the file writer
    /// on the current tokio runtime.
    pub fn new(name: &str, dir: Option<&StateDir>, health: Arc<Health>) -> LastKnownGood {
        let file = dir.map(|d| d.cluster_file(name));
        let writer = file.clone().map(|f| spawn_writer(name.to_owned(), f));
        LastKnownGood {
            cluster: name.to_owned(),
            health,
            file,
            writer,
            inner: Mutex::new(Inner {
                state: State::NotSynced,
                persisted: None,
            }),
        }
    }

    pub fn state(&self) -> State {
        lock(&self.inner).state.clone()
    }

    /// Start-up gave up waiting for the first sync: serve the persisted objects, if any, until
    /// the live stores are ready.
    pub fn sync_timed_out(&self, timeout: Duration) {
        let cluster = self.cluster.as_str();
        let Some(file) = &self.file else {
            tracing::warn!(
                cluster,
                ?timeout,
                "cluster {cluster:?} not reachable, and state persistence is off; serving without it until it syncs"
            );
            return;
        };
        match load(file, cluster) {
            Ok(Some((saved_at, objects))) => {
                tracing::warn!(
                    cluster,
                    ?timeout,
                    file = %file.display(),
                    ingresses = objects.ingresses.len(),
                    "cluster {cluster:?} not reachable; serving the state persisted at {saved_at}"
                );
                let mut inner = lock(&self.inner);
                inner.state = State::Persisted(saved_at);
                inner.persisted = Some(objects);
            }
            Ok(None) => tracing::warn!(
                cluster,
                ?timeout,
                file = %file.display(),
                "cluster {cluster:?} not reachable, and no state persisted for it; serving without it until it syncs"
            ),
            Err(e) => tracing::warn!(
                cluster,
                ?timeout,
                file = %file.display(),
                "cluster {cluster:?} not reachable, and its persisted state cannot be used ({e}); \
                 serving without it until it syncs"
            ),
        }
    }

    /// The objects to translate now: the persisted ones until the cluster has `synced`, else
    /// (or when nothing was persisted) `live()`. Logs a change of state, and hands the live
    /// objects to the file writer when they changed since they were last handed over.
    pub fn choose(&self, synced: bool, live: impl FnOnce() -> Snapshot) -> Snapshot {
        let mut inner = lock(&self.inner);
        let next = match (&inner.state, synced) {
            (_, true) if self.health.failing() => State::Disconnected,
            (_, true) => State::Live,
            (State::Persisted(at), false) => State::Persisted(at.clone()),
            (_, false) => State::NotSynced,
        };
        if next != inner.state {
            log_change(&self.cluster, &inner.state, &next);
            if synced && !matches!(inner.state, State::Live | State::Disconnected) {
                // The first live state is written whatever happened before.
                inner.persisted = None;
                self.health.dirty.store(true, Ordering::Relaxed);
            }
            inner.state = next;
        }
        if let Some(persisted) = &inner.persisted {
            return persisted.clone();
        }
        drop(inner);
        let objects = live();
        if synced
            && let Some(writer) = &self.writer
            && self.health.dirty.swap(false, Ordering::Relaxed)
        {
            writer.offer(objects.clone());
        }
        objects
    }
}

fn log_change(cluster: &str, from: &State, to: &State) {
    let state = to.to_string();
    match (from, to) {
        (State::Persisted(at), State::Live | State::Disconnected) => tracing::info!(
            cluster,
            state,
            "cluster {cluster:?} synced: its live state replaces the state persisted at {at}"
        ),
        (State::Live, State::Disconnected) => tracing::warn!(
            cluster,
            state,
            "cluster {cluster:?}: API server unreachable or failing; serving the last known state until it is back"
        ),
        (State::Disconnected, State::Live) => {
            tracing::info!(
                cluster,
                state,
                "cluster {cluster:?}: API server back; every watch is running"
            )
        }
        (State::NotSynced, State::Live | State::Disconnected) => {
            tracing::info!(cluster, state, "cluster {cluster:?} synced: serving its live state")
        }
        _ => tracing::info!(cluster, state, "cluster {cluster:?} is now {state}"),
    }
}

// ---- watch health ------------------------------------------------------------------------------

/// How a cluster's watches are doing. Shared by its watch tasks, its client ([`Observe`]) and
/// its [`LastKnownGood`]; every change wakes the control loop, which logs the cluster's state.
pub struct Health {
    cluster: String,
    changed: Arc<Notify>,
    /// Set by every change to a store; taken when the live objects go to the file writer.
    dirty: AtomicBool,
    /// Watches failing now.
    failing: AtomicUsize,
    watches: Mutex<Vec<Arc<Watch>>>,
}

/// One watch, as [`Health`] follows it.
pub struct Watch {
    what: &'static str,
    /// The collection's path (`/api/v1/namespaces/web/services`), as in the watch requests.
    path: String,
    failing: AtomicBool,
}

impl Health {
    /// For cluster `name`; `changed` wakes the control loop.
    pub fn new(name: &str, changed: &Arc<Notify>) -> Arc<Health> {
        Arc::new(Health {
            cluster: name.to_owned(),
            changed: Arc::clone(changed),
            dirty: AtomicBool::new(false),
            failing: AtomicUsize::new(0),
            watches: Mutex::new(Vec::new()),
        })
    }

    /// Follows a watch of the collection at `path` (`Api::resource_url`).
    pub fn watch(&self, what: &'static str, path: &str) -> Arc<Watch> {
        let w = Arc::new(Watch {
            what,
            path: path.to_owned(),
            failing: AtomicBool::new(false),
        });
        lock(&self.watches).push(Arc::clone(&w));
        w
    }

    fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) > 0
    }

    /// An event from watch `w`. `Init` says nothing (the watcher sends it before it lists);
    /// any other event means the watch works. The events that change the store (a relist's
    /// `InitDone`, `Apply`, `Delete`) wake the control loop.
    pub fn event<K>(&self, w: &Watch, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Init => {}
            watcher::Event::InitApply(_) => self.ok(w),
            _ => {
                self.ok(w);
                self.dirty.store(true, Ordering::Relaxed);
                self.changed.notify_one();
            }
        }
    }

    /// An error from watch `w`: logged when the watch was working until now. A 410 Gone is the
    /// API server saying "relist", which the watcher does at once: not a failure.
    pub fn error(&self, w: &Watch, error: &watcher::Error) {
        let (cluster, what) = (self.cluster.as_str(), w.what);
        if let watcher::Error::WatchError(status) = error
            && status.code == 410
        {
            tracing::info!(cluster, what, "watch expired (410 Gone); relisting");
            return;
        }
        if !w.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(cluster, what, error = %error, "watch failed; retrying, still serving the last known state");
            self.failing.fetch_add(1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    fn ok(&self, w: &Watch) {
        if w.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(cluster = self.cluster, what = w.what, "watch recovered");
            self.failing.fetch_sub(1, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    /// The API server accepted a watch request on `path`.
    fn watch_accepted(&self, path: &str) {
        let watches: Vec<Arc<Watch>> = lock(&self.watches).iter().filter(|w| w.path == path).cloned().collect();
        for w in watches {
            self.ok(&w);
        }
    }
}

/// A layer on a cluster's kube client that tells [`Health`] when the API server accepts a
/// watch request (a 2xx response head): the watch works again even if no event follows.
pub struct Observe(pub Arc<Health>);

impl<S> tower::Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            health: Arc::clone(&self.0),
        }
    }
}

/// The service [`Observe`] makes.
pub struct Observed<S> {
    inner: S,
    health: Arc<Health>,
}

type Request = http::Request<kube::client::Body>;

impl<S, B> tower::Service<Request> for Observed<S>
where
    S: tower::Service<Request, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let path = watch.then(|| req.uri().path().to_owned());
        let health = Arc::clone(&self.health);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            if let (Some(path), Ok(r)) = (path, &response)
                && r.status().is_success()
            {
                health.watch_accepted(&path);
            }
            response
        })
    }
}

// ---- the state directory and its files ---------------------------------------------------------

/// The state directory, known to be writable.
#[derive(Debug)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// Creates `path` if needed and checks that a file can be written in it. When it cannot,
    /// says so once and returns `None`: kedge then runs without persistence.
    pub fn open(path: &Path) -> Option<StateDir> {
        let probe = path.join(".kedge-probe");
        // Owner-only: the files hold TLS private keys.
        let usable = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .and_then(|()| write_atomic(&probe, b"kedge\n"))
            .and_then(|()| fs::remove_file(&probe));
        match usable {
            Ok(()) => Some(StateDir(path.to_owned())),
            Err(e) => {
                tracing::warn!(
                    "state_dir {}: {e}; running without persistence (a restart while an API server \
                     is unreachable serves nothing from that cluster)",
                    path.display()
                );
                None
            }
        }
    }

    /// The file that holds cluster `name`'s state (names are `[a-z0-9-]+`, safe in a path).
    pub fn cluster_file(&self, name: &str) -> PathBuf {
        self.0.join(format!("cluster-{name}.json"))
    }
}

/// A state file as written: the objects are borrowed from a snapshot.
#[derive(Serialize)]
struct FileOut<'a> {
    format: &'a str,
    cluster: &'a str,
    saved_at: &'a str,
    ingresses: Arcs<'a, Ingress>,
    ingressclasses: Arcs<'a, IngressClass>,
    services: Arcs<'a, Service>,
    endpointslices: Arcs<'a, EndpointSlice>,
    nodes: Arcs<'a, Node>,
    /// `kubernetes.io/tls` Secrets: without them a restart during an outage would serve the
    /// TLS hosts with the default certificate. The file is 0600 in a directory of kedge's.
    secrets: Arcs<'a, Secret>,
}

/// Serializes `[Arc<K>]` as the sequence of `K`s (serde's `Arc` support needs its `rc` feature).
struct Arcs<'a, K>(&'a [Arc<K>]);

impl<K: Serialize> Serialize for Arcs<'_, K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|a| &**a))
    }
}

/// What a file must say before the rest of it is read.
#[derive(Deserialize)]
struct Header {
    format: Option<String>,
    cluster: Option<String>,
}

#[derive(Deserialize)]
struct FileIn {
    saved_at: String,
    ingresses: Vec<Ingress>,
    ingressclasses: Vec<IngressClass>,
    services: Vec<Service>,
    endpointslices: Vec<EndpointSlice>,
    nodes: Vec<Node>,
    /// Absent from files of kedge versions that did not persist Secrets.
    #[serde(default)]
    secrets: Vec<Secret>,
}

/// The state file of `cluster`, as JSON.
fn encode(cluster: &str, saved_at: &str, s: &Snapshot) -> serde_json::Result<Vec<u8>> {
    // Certificates only: other Secrets (htpasswd files...) are never written to disk.
    let tls_secrets: Vec<Arc<Secret>> = s
        .secrets
        .iter()
        .filter(|x| x.type_.as_deref() == Some("kubernetes.io/tls"))
        .cloned()
        .collect();
    serde_json::to_vec(&FileOut {
        format: FORMAT,
        cluster,
        saved_at,
        ingresses: Arcs(&s.ingresses),
        ingressclasses: Arcs(&s.classes),
        services: Arcs(&s.services),
        endpointslices: Arcs(&s.slices),
        nodes: Arcs(&s.nodes),
        secrets: Arcs(&tls_secrets),
    })
}

/// Reads a state file of `cluster` back: its time and objects. Anything else (not JSON, another
/// format, another cluster's) is an error that says what it is.
fn decode(cluster: &str, bytes: &[u8]) -> Result<(String, Snapshot), String> {
    let header: Header = serde_json::from_slice(bytes).map_err(|e| format!("not a kedge state file: {e}"))?;
    match header.format.as_deref() {
        Some(FORMAT) => {}
        Some(other) => return Err(format!("format {other:?}, not {FORMAT:?}")),
        None => return Err(format!("not a kedge state file (no \"format\": {FORMAT:?})")),
    }
    match header.cluster.as_deref() {
        Some(c) if c == cluster => {}
        Some(other) => return Err(format!("the state of cluster {other:?}, not {cluster:?}")),
        None => return Err("not a kedge state file (no \"cluster\")".into()),
    }
    let file: FileIn = serde_json::from_slice(bytes).map_err(|e| format!("damaged: {e}"))?;
    Ok((
        file.saved_at,
        Snapshot {
            ingresses: file.ingresses.into_iter().map(Arc::new).collect(),
            classes: file.ingressclasses.into_iter().map(Arc::new).collect(),
            services: file.services.into_iter().map(Arc::new).collect(),
            slices: file.endpointslices.into_iter().map(Arc::new).collect(),
            nodes: file.nodes.into_iter().map(Arc::new).collect(),
            secrets: file.secrets.into_iter().map(Arc::new).collect(),
        },
    ))
}

/// Loads `cluster`'s state from `file`: `None` when there is no file.
fn load(file: &Path, cluster: &str) -> Result<Option<(String, Snapshot)>, String> {
    match fs::read(file) {
        Ok(bytes) => decode(cluster, &bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces `path` with `bytes` so that a reader (or a crash) sees the old file or the new one,
/// never a part: a temp file next to it, written and fsynced, renamed over it, then the
/// directory fsynced so that the rename itself survives a power cut.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// Now, as RFC 3339 to the second.
fn now_rfc3339() -> String {
    crate::time::format_time(crate::time::unix_now())
}

// ---- the writer --------------------------------------------------------------------------------

/// The latest objects waiting to be written (a newer offer replaces an older one), and the
/// writer task's wake-up.
#[derive(Default)]
struct Slot {
    latest: Mutex<Option<Snapshot>>,
    wake: Notify,
}

impl Slot {
    fn offer(&self, objects: Snapshot) {
        *lock(&self.latest) = Some(objects);
        self.wake.notify_one();
    }
}

/// Starts the task that writes what is offered to `file`, at most once per [`WRITE_EVERY`]:
/// what arrives meanwhile waits in the slot, and only the latest is written.
fn spawn_writer(cluster: String, file: PathBuf) -> Arc<Slot> {
    let slot = Arc::new(Slot::default());
    let s = Arc::clone(&slot);
    tokio::spawn(async move {
        let mut last: Option<Instant> = None;
        let mut failing = false;
        loop {
            s.wake.notified().await;
            if let Some(at) = last {
                tokio::time::sleep_until((at + WRITE_EVERY).into()).await;
            }
            let Some(objects) = lock(&s.latest).take() else {
                continue;
            };
            let started = Instant::now();
            let (c, f) = (cluster.clone(), file.clone());
            let written = tokio::task::spawn_blocking(move || {
                let bytes = encode(&c, &now_rfc3339(), &objects).map_err(io::Error::other)?;
                write_atomic(&f, &bytes).map(|()| bytes.len())
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
            last = Some(Instant::now());
            let (cluster, file) = (cluster.as_str(), file.display());
            match written {
                Ok(bytes) => {
                    if failing {
                        tracing::info!(cluster, %file, "cluster state persisted again");
                        failing = false;
                    }
                    let took_ms = started.elapsed().as_millis() as u64;
                    tracing::debug!(cluster, %file, bytes, took_ms, "cluster state persisted");
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(cluster, %file, "cannot persist the cluster state: {e}; retrying on the next change");
                        failing = true;
                    }
                }
            }
        }
    });
    slot
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

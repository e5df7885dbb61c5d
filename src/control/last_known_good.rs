//! Last known good: what each cluster serves from, and its state file kept up to date.
//!
//! - **Persistence.** Once a cluster has synced live, its objects (every kind's, as
//!   [`kinds`](super::kinds) says what is kept) are written to its state file after every
//!   change, at most once per [`WRITE_EVERY`] (a burst of changes is written once it is over),
//!   by a task of the control runtime, with the encoding and the file I/O on a thread of its
//!   own at the lowest priority (`SCHED_IDLE`, [`lower_priority`]). Never before the first live sync: a store that is still empty must not overwrite
//!   good state. A clean stop ([`LastKnownGood::stop`]) writes what is still waiting at once, so
//!   the file ends with the last change kedge saw, not with the one before its last second.
//! - **Start during an outage.** A cluster whose watches fail before their first sync (the API
//!   server cannot be reached) serves the objects persisted last at once
//!   ([`LastKnownGood::unreachable`]); one that answers but has not synced within its
//!   `sync_timeout` does so then ([`LastKnownGood::sync_timed_out`]). Either way until its live
//!   stores are ready; [`LastKnownGood::choose`] is the one place that picks persisted or live
//!   objects.
//! - **State.** [`ClusterState`] says what a cluster serves from (nothing synced yet, the
//!   persisted objects, live stores, live stores with a failing watch); every change is logged
//!   once.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::health::Health;
use super::kinds::ClusterObjects;
use super::state_file::{self, StateDir};
use crate::shared::ClusterState;

/// The shortest time between two writes of one cluster's state file.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// The longest a clean stop waits for the last write.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One cluster's choice between persisted and live objects, its [`ClusterState`], and its state file.
/// Owned by the cluster and used on the control thread.
pub struct LastKnownGood {
    cluster: String,
    health: Arc<Health>,
    /// `None` when persistence is off.
    file: Option<PathBuf>,
    writer: Option<Writer>,
    inner: Mutex<Inner>,
}

/// The file writer task and the slot it takes its work from.
struct Writer {
    slot: Arc<Slot>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    state: ClusterState,
    /// The loaded objects, while the state is `Persisted`.
    persisted: Option<ClusterObjects>,
}

impl LastKnownGood {
    /// For cluster `name`, persisting under `dir` (`None`: not at all). Starts the file writer
    /// on the current tokio runtime.
    pub fn new(name: &str, dir: Option<&StateDir>, health: Arc<Health>) -> LastKnownGood {
        let file = dir.map(|d| d.cluster_file(name));
        let writer = file.clone().and_then(|f| spawn_writer(name.to_owned(), f));
        LastKnownGood {
            cluster: name.to_owned(),
            health,
            file,
            writer,
            inner: Mutex::new(Inner {
                state: ClusterState::NotSynced,
                persisted: None,
            }),
        }
    }

    pub fn state(&self) -> ClusterState {
        lock(&self.inner).state.clone()
    }

    /// A watch failed before the first sync (the API server cannot be reached, or refuses):
    /// serve the persisted objects at once, if there are usable ones (`true`). Without them
    /// nothing changes, and start-up goes on waiting for the sync until `sync_timeout`, which
    /// reports what is missing.
    pub fn unreachable(&self) -> bool {
        let cluster = self.cluster.as_str();
        let Some(file) = &self.file else { return false };
        match state_file::load(file, cluster) {
            Ok(Some((saved_at, objects))) => {
                tracing::warn!(
                    cluster,
                    file = %file.display(),
                    ingresses = objects.ingresses.len(),
                    "cluster {cluster:?} not reachable; serving the state persisted at {saved_at}"
                );
                self.serve(saved_at, objects);
                true
            }
            Ok(None) | Err(_) => false,
        }
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
        match state_file::load(file, cluster) {
            Ok(Some((saved_at, objects))) => {
                tracing::warn!(
                    cluster,
                    ?timeout,
                    file = %file.display(),
                    ingresses = objects.ingresses.len(),
                    "cluster {cluster:?} not reachable; serving the state persisted at {saved_at}"
                );
                self.serve(saved_at, objects);
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

    /// Serves `objects`, persisted at `saved_at`, until the live sync.
    fn serve(&self, saved_at: String, objects: ClusterObjects) {
        let mut inner = lock(&self.inner);
        inner.state = ClusterState::Persisted(saved_at);
        inner.persisted = Some(objects);
    }

    /// The objects to translate now: the persisted ones until the cluster has `synced`, else
    /// (or when nothing was persisted) `live()`. Logs a change of state, and hands the live
    /// objects to the file writer when they changed since they were last handed over.
    pub fn choose(&self, synced: bool, live: impl FnOnce() -> ClusterObjects) -> ClusterObjects {
        let mut inner = lock(&self.inner);
        self.step(&mut inner, synced);
        if let Some(persisted) = &inner.persisted {
            return persisted.clone();
        }
        drop(inner);
        let objects = live();
        if synced
            && let Some(writer) = &self.writer
            && self.health.take_dirty()
        {
            writer.slot.offer(Pending::Objects(Box::new(objects.clone())));
        }
        objects
    }
}

impl LastKnownGood {
    /// For an update, which reads the live stores a few objects at a time instead of through
    /// [`LastKnownGood::choose`]: brings the state up to date as `choose` does and says whether
    /// the cluster served its live stores before this call and still does (`false`: its
    /// persisted objects, or it has just left them: only a build from nothing is exact). The
    /// state file gets the live objects after the update ([`LastKnownGood::offer_live`]).
    pub fn live_for_update(&self, synced: bool) -> bool {
        let mut inner = lock(&self.inner);
        let was_persisted = inner.persisted.is_some();
        self.step(&mut inner, synced);
        synced && !was_persisted && inner.persisted.is_none()
    }

    /// The state after the watches' news (`synced`), logged when it changes; the persisted
    /// objects are let go at the first live sync.
    fn step(&self, inner: &mut Inner, synced: bool) {
        let next = match (&inner.state, synced) {
            (_, true) if self.health.failing() => ClusterState::Disconnected,
            (_, true) => ClusterState::Live,
            (ClusterState::Persisted(at), false) => ClusterState::Persisted(at.clone()),
            (_, false) => ClusterState::NotSynced,
        };
        if next != inner.state {
            log_change(&self.cluster, &inner.state, &next);
            if synced && !matches!(inner.state, ClusterState::Live | ClusterState::Disconnected) {
                // The first live state is written whatever happened before.
                inner.persisted = None;
                self.health.mark_dirty();
            }
            inner.state = next;
        }
    }

    /// Whether the cluster serves its persisted objects (until its live sync).
    pub fn serving_persisted(&self) -> bool {
        lock(&self.inner).persisted.is_some()
    }

    /// How the file writer copies the live stores when it writes after [`LastKnownGood::offer_live`]
    /// (set once, by the cluster that owns the stores).
    pub fn read_live_with(&self, live: impl Fn() -> ClusterObjects + Send + Sync + 'static) {
        if let Some(writer) = &self.writer {
            let _ = writer.slot.live.set(Box::new(live));
        }
    }

    /// For a cluster that serves its live stores (`synced`, not its persisted objects), after an
    /// update or a status write coming back, which read no store whole: if the objects changed
    /// since the file writer last got some, asks it to copy the live stores when it next writes
    /// (at most once per [`WRITE_EVERY`]). So a burst of changes copies the stores once per
    /// write, not once per change (at 10k Gateway routes kedge's own status writes come back as
    /// 10k changes), and the file still ends with the last one. Without a state directory,
    /// nothing.
    pub fn offer_live(&self, synced: bool) {
        if !synced || self.serving_persisted() {
            return;
        }
        if let Some(writer) = &self.writer
            && self.health.take_dirty()
        {
            writer.slot.offer(Pending::Live);
        }
    }

    /// A clean stop, once kedge writes no more status (`synced` as for [`LastKnownGood::offer_live`]):
    /// what changed since the file was last written (kedge's own status writes coming back, most
    /// often) is written now instead of up to [`WRITE_EVERY`] later, which a stopping process
    /// would never see; then the writer ends. Waits at most [`STOP_TIMEOUT`].
    pub async fn stop(&mut self, synced: bool) {
        self.offer_live(synced);
        let Some(writer) = self.writer.take() else { return };
        writer.slot.stop.notify_one();
        if tokio::time::timeout(STOP_TIMEOUT, writer.task).await.is_err() {
            let cluster = self.cluster.as_str();
            tracing::warn!(cluster, timeout = ?STOP_TIMEOUT, "the state file was not written in time at the stop; it keeps the write before");
        }
    }
}

fn log_change(cluster: &str, from: &ClusterState, to: &ClusterState) {
    let state = to.to_string();
    match (from, to) {
        (ClusterState::Persisted(at), ClusterState::Live | ClusterState::Disconnected) => tracing::info!(
            cluster,
            state,
            "cluster {cluster:?} synced: its live state replaces the state persisted at {at}"
        ),
        (ClusterState::Live, ClusterState::Disconnected) => tracing::warn!(
            cluster,
            state,
            "cluster {cluster:?}: API server unreachable or failing; serving the last known state until it is back"
        ),
        (ClusterState::Disconnected, ClusterState::Live) => {
            tracing::info!(
                cluster,
                state,
                "cluster {cluster:?}: API server back; every watch is running"
            )
        }
        (ClusterState::NotSynced, ClusterState::Live | ClusterState::Disconnected) => {
            tracing::info!(cluster, state, "cluster {cluster:?} synced: serving its live state")
        }
        _ => tracing::info!(cluster, state, "cluster {cluster:?} is now {state}"),
    }
}

/// What waits to be written (a newer offer replaces an older one), the writer task's wake-up,
/// and how it copies the live stores.
#[derive(Default)]
struct Slot {
    latest: Mutex<Option<Pending>>,
    wake: Notify,
    /// A clean stop: write what waits at once, then end.
    stop: Notify,
    live: OnceLock<LiveObjects>,
}

/// A copy of a cluster's live stores, made when called.
type LiveObjects = Box<dyn Fn() -> ClusterObjects + Send + Sync>;

/// What the file writer writes next.
enum Pending {
    /// These objects (a build's).
    Objects(Box<ClusterObjects>),
    /// The live stores as they are when it writes.
    Live,
}

impl Slot {
    fn offer(&self, pending: Pending) {
        *lock(&self.latest) = Some(pending);
        self.wake.notify_one();
    }

    /// What to write now, if anything: the objects offered last, or a copy of the live stores.
    /// The copy is cheap (the stores hold `Arc`s) and is made on the control thread, like every
    /// other read of the stores: no lock of theirs is ever held by the low-priority thread.
    fn take(&self) -> Option<ClusterObjects> {
        let pending = lock(&self.latest).take()?;
        match pending {
            Pending::Objects(objects) => Some(*objects),
            Pending::Live => self.live.get().map(|live| live()),
        }
    }
}

/// The nice value of the thread that encodes and writes a state file, where it cannot run
/// under `SCHED_IDLE` ([`lower_priority`]). That work is bulky (at 10k Ingresses and 50k
/// endpoints about a quarter of a second of CPU on a slow core, at most once a second while
/// objects change) and never urgent.
const WRITER_NICE: libc::c_int = 10;

/// A job for the writer thread.
type Job = Box<dyn FnOnce() + Send>;

/// Puts the calling thread (on Linux a scheduling policy and a nice value belong to a thread:
/// this one only) under `SCHED_IDLE`: it runs only on a core nothing else wants, and any other
/// thread that wakes takes the core from it at once. So a state file write never delays a
/// worker or the control thread (at nice 10 it still took a share of a busy core and could
/// hold one when the control thread woke for an update), and still gets done, later, on a busy
/// host. Lowering one's own priority needs no privilege; where the policy is refused (a seccomp
/// filter, say) the thread takes nice [`WRITER_NICE`] instead, and failing that stays at the
/// default priority, which works too.
#[allow(unsafe_code)]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system calls on the calling thread (pid 0: the caller; its own id), with
    // a pointer to a live `sched_param` that the call only reads.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, WRITER_NICE);
        }
    }
}

/// Starts the thread that runs the writer task's jobs under `SCHED_IDLE` ([`lower_priority`]);
/// it ends when the sender is dropped.
fn spawn_writer_thread() -> io::Result<std::sync::mpsc::Sender<Job>> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new().name("kedge-state".into()).spawn(move || {
        lower_priority();
        for job in rx {
            job();
        }
    })?;
    Ok(tx)
}

/// Starts the task that writes what is offered to `file`, at most once per [`WRITE_EVERY`]:
/// what arrives meanwhile waits in the slot, and only the latest is written. Its thread (under
/// `SCHED_IDLE`) encodes and writes; the task waits for it. At a stop the task writes what
/// waits at once and ends. `None` (logged) when the thread cannot be started.
fn spawn_writer(cluster: String, file: PathBuf) -> Option<Writer> {
    let jobs = match spawn_writer_thread() {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(
                cluster,
                "cannot start the state file writer: {e}; running without persistence"
            );
            return None;
        }
    };
    let slot = Arc::new(Slot::default());
    let s = Arc::clone(&slot);
    let task = tokio::spawn(async move {
        let mut last: Option<Instant> = None;
        let mut failing = false;
        loop {
            let mut stopping = tokio::select! {
                () = s.wake.notified() => false,
                () = s.stop.notified() => true,
            };
            if !stopping && let Some(at) = last {
                stopping = tokio::select! {
                    () = tokio::time::sleep_until((at + WRITE_EVERY).into()) => false,
                    () = s.stop.notified() => true,
                };
            }
            let Some(objects) = s.take() else {
                if stopping {
                    return;
                }
                continue;
            };
            let started = Instant::now();
            let (c, f) = (cluster.clone(), file.clone());
            let (done, written) = tokio::sync::oneshot::channel();
            let job: Job = Box::new(move || {
                let written = state_file::encode(&c, &now_rfc3339(), &objects)
                    .map_err(io::Error::other)
                    .and_then(|bytes| state_file::write_atomic(&f, &bytes).map(|()| bytes.len()));
                let _ = done.send(written);
            });
            let ended = || io::Error::other("the state file writer thread has ended");
            let written = match jobs.send(job) {
                Ok(()) => written.await.unwrap_or_else(|_| Err(ended())),
                Err(_) => Err(ended()),
            };
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
            if stopping {
                return;
            }
        }
    });
    Some(Writer { slot, task })
}

/// Now, as RFC 3339 to the second.
fn now_rfc3339() -> String {
    crate::time::format_time(crate::time::unix_now())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

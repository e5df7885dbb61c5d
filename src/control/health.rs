//! Watch health: which of a cluster's watches are failing now. A watch fails on an error (other
//! than 410 Gone, which is a relist) and recovers on an event, or as soon as the API server
//! accepts its watch request again: kube's watcher says nothing when a watch restarts without
//! news, so [`Observe`], a layer on the cluster's client, sees that answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use kube::runtime::watcher;
use tokio::sync::Notify;

/// How a cluster's watches are doing. Shared by its watch tasks, its client ([`Observe`]) and
/// its last known good; every change wakes the control loop, which logs the cluster's state.
pub struct Health {
    cluster: String,
    changed: Arc<Notify>,
    /// Set by every change to a store; taken when the live objects go to the file writer.
    dirty: AtomicBool,
    /// Watches failing now.
    failing: AtomicUsize,
    /// Whether any watch has failed since start (start-up then serves a persisted state).
    failed_once: tokio::sync::watch::Sender<bool>,
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
            failed_once: tokio::sync::watch::channel(false).0,
            watches: Mutex::new(Vec::new()),
        })
    }

    /// Resolves once any watch has failed (at once if one already has).
    pub async fn failed(&self) {
        let mut rx = self.failed_once.subscribe();
        let _ = rx.wait_for(|&f| f).await;
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

    /// Whether any watch is failing now.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed) > 0
    }

    /// Marks the stores changed, so that the next live objects go to the file writer.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// A discovered kind's stores have joined the cluster's: its objects go to the file writer,
    /// and the control loop builds.
    pub fn stores_added(&self) {
        self.mark_dirty();
        self.changed.notify_one();
    }

    /// Whether a store changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
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
                self.mark_dirty();
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
            self.failed_once.send_replace(true);
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

    /// The API server accepted a watch request on `path` (what [`Observe`] sees).
    pub fn watch_accepted(&self, path: &str) {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

//! Ingress status: `status.loadBalancer.ingress` is set to the cluster's `publish_addresses`
//! (`{"ip": ...}` for an IP address, `{"hostname": ...}` for a host name, in config order) on
//! every Ingress kedge serves, and cleared on an Ingress it no longer serves whose status lists
//! exactly those addresses (so kedge wrote it; another controller's addresses are never
//! touched). An Ingress of another class never gets a status from kedge. With no
//! `publish_addresses`, no status is written at all (said once at start).
//!
//! "Serves" is [`Outcome::served`](super::translate::Outcome::served) of the latest build. The
//! control thread hands each build's Ingresses and served set to a [`Writer`] (a `watch`
//! channel: only the latest build matters, older ones are dropped unseen) and goes on; one task
//! per cluster compares that with the status each Ingress had in the same build's view and
//! writes only what differs, so a rebuild that changes nothing writes nothing, and a slow API
//! server never delays a table. Workers have nothing to do with any of this.
//!
//! Writes are JSON merge patches (RFC 7386) of the status subresource, field manager `kedge`:
//! `{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.10"},{"hostname":"edge.example.com"}]}}}`
//! to set (a merge patch replaces a list whole), `{"status":{"loadBalancer":{"ingress":null}}}`
//! to clear (`null` deletes the key, leaving `loadBalancer: {}`, which is how an Ingress nobody
//! has published looks). A merge patch carries no resourceVersion, so it cannot conflict with
//! a concurrent spec change; it needs RBAC `patch` on `ingresses/status`.
//!
//! A failed write is logged once per Ingress per failure streak (and its recovery once), and
//! retried on the next build or after [`RETRY`], whichever comes first. When the API server
//! cannot be reached at all, the rest of that round is not attempted.
//!
//! Of several edge hosts following the same cluster, only one writes: the holder of the
//! cluster's `status_lease` ([`super::lease`]). The task writes only while its kedge holds the
//! Lease; when it becomes the holder it plans against the latest view at once, and when it
//! stops being the holder it starts no further write (those in flight finish). A stop aborts
//! the task before the Lease is released, so the next holder's writes come after this one's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::Client;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ClusterConfig;

/// How long after a failed round the writer tries again if no build comes first.
const RETRY: Duration = Duration::from_secs(5);
/// Status writes in flight at once per cluster.
const CONCURRENCY: usize = 8;
/// The field manager named in every write.
const FIELD_MANAGER: &str = "kedge";

/// The pace of one cluster's status writes, Ingress and Gateway API alike (the cluster's
/// `status_writes_per_second`): a token bucket that fills at that rate and holds one second's
/// worth. A few writes go at once; thousands (10k routes' first statuses, a Gateway change
/// every route's status reflects) go at the rate, as client-go's QPS limit paces a
/// controller, so that neither the API server (its etcd writes, the watch events they send
/// every watcher) nor kedge's control thread (the writes and their events coming back, before
/// the next change in line) gets the whole burst at once.
pub(super) struct Pace {
    per_second: f64,
    /// Tokens, and when they were counted.
    bucket: std::sync::Mutex<(f64, Instant)>,
}

impl Pace {
    pub(super) fn new(per_second: u32) -> Arc<Pace> {
        let per_second = f64::from(per_second.max(1));
        Arc::new(Pace {
            per_second,
            bucket: std::sync::Mutex::new((per_second, Instant::now())),
        })
    }

    /// Takes a write's token at `now`; `Err(when)`: none now, the next one is there at `when`.
    fn take(&self, now: Instant) -> Result<(), Instant> {
        let mut bucket = self.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = *bucket;
        // Never counted back: a `now` read before another writer's take adds no time twice.
        let now = now.max(at);
        let tokens = (tokens + (now - at).as_secs_f64() * self.per_second).min(self.per_second);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            *bucket = (tokens, now);
            Err(now + Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

/// An Ingress's (namespace, name).
type Key = (String, String);

/// One build's view, as handed to the writer: the Ingresses it translated, and those it served.
struct View {
    ingresses: Vec<Arc<Ingress>>,
    /// Sorted (as `Outcome::served` is); shared with the build's outcome.
    served: Arc<[Key]>,
}

/// The handle the control thread keeps for one cluster's Ingress status writer task. Dropping
/// it stops the task.
pub struct Writer {
    latest: watch::Sender<Option<Arc<View>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts the writer task for one cluster on the current runtime, writing while `holding`
    /// (the cluster's [`Election`](super::lease::Election)) says so; `None` (said once, at info
    /// level) when the cluster has no `publish_addresses`: no Ingress status.
    pub fn spawn(
        client: Client,
        cfg: &ClusterConfig,
        pace: Arc<Pace>,
        holding: impl FnOnce() -> watch::Receiver<bool>,
    ) -> Option<Writer> {
        if cfg.publish_addresses.is_empty() {
            tracing::info!(
                cluster = cfg.name,
                "no publish_addresses for this cluster: kedge writes no Ingress status"
            );
            return None;
        }
        let (latest, views) = watch::channel(None);
        let task = tokio::spawn(run(
            client,
            cfg.name.clone(),
            addresses(&cfg.publish_addresses),
            views,
            holding(),
            pace,
        ));
        Some(Writer { latest, task })
    }

    /// Stops writing (writes in flight are abandoned); the caller releases the Lease after.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Hands over the latest build's Ingresses and which of them it served (sorted), replacing
    /// any view the task has not looked at yet. Never waits.
    pub fn offer(&self, ingresses: &[Arc<Ingress>], served: &Arc<[Key]>) {
        self.latest.send_replace(Some(Arc::new(View {
            ingresses: ingresses.to_vec(),
            served: Arc::clone(served),
        })));
    }
}

/// The status entries for `publish_addresses`: an IP address as `ip`, anything else (the
/// config has checked it is a host name) as `hostname`.
fn addresses(publish: &[String]) -> Vec<IngressLoadBalancerIngress> {
    publish
        .iter()
        .map(|a| {
            let is_ip = a.parse::<std::net::IpAddr>().is_ok();
            IngressLoadBalancerIngress {
                ip: is_ip.then(|| a.clone()),
                hostname: (!is_ip).then(|| a.clone()),
                ports: None,
            }
        })
        .collect()
}

/// What one write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Our addresses.
    Set,
    /// No addresses.
    Clear,
}

/// One status write to make.
#[derive(Debug, PartialEq, Eq)]
struct Write {
    key: Key,
    want: Want,
    /// The Ingress's resourceVersion in the view the write was planned from.
    rv: Option<String>,
}

/// A write that succeeded but that the watch has not brought back yet: the Ingress is still at
/// `rv` in the views, with its old status, and must not be written again for that.
struct Sent {
    want: Want,
    rv: Option<String>,
}

/// The status entries an Ingress has now (none when any level is absent).
fn current(ing: &Ingress) -> &[IngressLoadBalancerIngress] {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[])
}

/// The writes that bring the view's Ingresses to what they should show, in (namespace, name)
/// order of the view. `sent` keeps only the entries still waiting for their watch event.
fn plan(ours: &[IngressLoadBalancerIngress], view: &View, sent: &mut HashMap<Key, Sent>) -> Vec<Write> {
    let mut writes = Vec::new();
    let mut waiting = HashMap::new();
    for ing in &view.ingresses {
        let ns = ing.metadata.namespace.as_deref().unwrap_or("");
        let name = ing.metadata.name.as_deref().unwrap_or("");
        let now = current(ing);
        let served = view
            .served
            .binary_search_by(|(n, m)| (n.as_str(), m.as_str()).cmp(&(ns, name)))
            .is_ok();
        let (want, target) = if served {
            (Want::Set, ours)
        } else if now == ours {
            (Want::Clear, &[][..])
        } else {
            continue;
        };
        if now == target {
            continue;
        }
        let key = (ns.to_owned(), name.to_owned());
        let rv = ing.metadata.resource_version.clone();
        if let Some(s) = sent.remove(&key)
            && s.want == want
            && s.rv == rv
        {
            waiting.insert(key, s);
            continue;
        }
        writes.push(Write { key, want, rv });
    }
    *sent = waiting;
    writes
}

/// The body of the merge patch that makes `want` so.
fn patch_body(want: Want, ours: &Value) -> Value {
    let ingress = match want {
        Want::Set => ours.clone(),
        Want::Clear => Value::Null,
    };
    json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

/// The Ingress half of the writer loop: `plan` against the publish addresses, a merge patch
/// per write.
struct Ingresses {
    ours: Vec<IngressLoadBalancerIngress>,
    ours_json: Value,
    sent: HashMap<Key, Sent>,
}

impl WriterKind for Ingresses {
    type View = View;
    type Write = Write;
    type Key = Key;
    const CONFLICT_IS_QUIET: bool = false;

    fn plan(&mut self, view: &View) -> Vec<Write> {
        plan(&self.ours, view, &mut self.sent)
    }

    fn key(w: &Write) -> &Key {
        &w.key
    }

    fn patch(&self, client: Client, params: PatchParams, w: Write) -> Patching<Write> {
        let body = patch_body(w.want, &self.ours_json);
        Box::pin(async move {
            let url = <Ingress as kube::Resource>::url_path(&(), Some(&w.key.0));
            let result = patch_status(&client, &url, &w.key.1, &params, &Patch::Merge(&body)).await;
            (w, result)
        })
    }

    fn written(&mut self, w: Write) {
        self.sent.insert(w.key, Sent { want: w.want, rv: w.rv });
    }

    fn log(cluster: &str, w: &Write, what: Logged<'_>) {
        let ingress = format!("{}/{}", w.key.0, w.key.1);
        match what {
            Logged::Written => tracing::debug!(cluster, ingress, want = ?w.want, "Ingress status written"),
            Logged::WrittenAgain => tracing::info!(cluster, ingress, "Ingress status written again"),
            // Not quiet: logged as a failure.
            Logged::Conflict => {}
            Logged::Failing(error) => {
                tracing::warn!(cluster, ingress, error = %error, "cannot write Ingress status; retrying");
            }
        }
    }
}

/// The writer task of one cluster's Ingress status.
async fn run(
    client: Client,
    cluster: String,
    ours: Vec<IngressLoadBalancerIngress>,
    views: watch::Receiver<Option<Arc<View>>>,
    holding: watch::Receiver<bool>,
    pace: Arc<Pace>,
) {
    let ours_json = serde_json::to_value(&ours).unwrap_or(Value::Null);
    let kind = Ingresses {
        ours,
        ours_json,
        sent: HashMap::new(),
    };
    write_loop(client, cluster, kind, views, holding, &AtomicBool::new(false), &pace).await;
}

/// PATCH of the status of object `name` of the collection at `url` (`Resource::url_path`). The
/// answer (the whole object) is checked for an error status but not decoded: the watch brings
/// the object back anyway, and at 10k status writes decoding each answer was a third of the
/// writer's time on the control thread.
pub(super) async fn patch_status<P: serde::Serialize>(
    client: &Client,
    url: &str,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error> {
    let request = kube::core::Request::new(url)
        .patch_subresource("status", name, params, patch)
        .map_err(kube::Error::BuildRequest)?;
    client.request_text(request).await.map(drop)
}

/// A write in flight: it gives the write back with its result.
pub(super) type Patching<W> = std::pin::Pin<Box<dyn std::future::Future<Output = (W, Result<(), kube::Error>)> + Send>>;

/// What a status writer loop logs of one write.
pub(super) enum Logged<'e> {
    Written,
    /// Written after a failure streak.
    WrittenAgain,
    /// 409: the object changed since the view (only with `CONFLICT_IS_QUIET`).
    Conflict,
    /// The first failure of a streak.
    Failing(&'e kube::Error),
}

/// What one status writer writes (Ingress status here, Gateway API status in
/// `gateway_status.rs`): the part of [`write_loop`] that knows a kind.
pub(super) trait WriterKind: Send + 'static {
    /// One build's view, as the control thread offers it.
    type View: Send + Sync + 'static;
    type Write: Send + 'static;
    type Key: Clone + Eq + std::hash::Hash + Send;
    /// A 409 Conflict (a write naming a resourceVersion the object has moved on from) is
    /// retried quietly (at debug level, never a failure streak) rather than as a failure.
    const CONFLICT_IS_QUIET: bool;

    /// The writes that bring `view`'s objects to what they should show, leaving out those
    /// written and still waiting for their watch event.
    fn plan(&mut self, view: &Self::View) -> Vec<Self::Write>;
    fn key(w: &Self::Write) -> &Self::Key;
    /// The status patch of `w`.
    fn patch(&self, client: Client, params: PatchParams, w: Self::Write) -> Patching<Self::Write>;
    /// `w` was written: not to be written again for the same view of its object.
    fn written(&mut self, w: Self::Write);
    fn log(cluster: &str, w: &Self::Write, what: Logged<'_>);
}

/// The writer task of one cluster, for either kind: waits for a view (or the retry time after
/// a failed round, or for becoming the holder), plans against the latest view, writes while
/// `holding`, at most [`CONCURRENCY`] at once. A write of an object deleted since (404) is
/// dropped; a failure is logged once per streak and retried after [`RETRY`] or at the next
/// view; when the API server cannot be reached at all, the rest of the round is not attempted,
/// nor when a newer view arrives or the Lease is lost. Ends when the view's sender is dropped.
/// `writing` is set while a round has writes to make.
pub(super) async fn write_loop<K: WriterKind>(
    client: Client,
    cluster: String,
    mut kind: K,
    mut views: watch::Receiver<Option<Arc<K::View>>>,
    mut holding: watch::Receiver<bool>,
    writing: &AtomicBool,
    pace: &Pace,
) {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    // Objects whose last write failed: logged at the first failure, and at the recovery.
    let mut failing: HashSet<K::Key> = HashSet::new();
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = views.changed() => if changed.is_err() {
                return;
            },
            changed = holding.changed() => if changed.is_err() {
                return;
            },
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        retry_at = None;
        // Marked seen either way; a kedge that becomes the holder plans against it then.
        let view = views.borrow_and_update().clone();
        if !*holding.borrow_and_update() {
            continue;
        }
        let Some(view) = view else {
            continue;
        };
        let writes = kind.plan(&view);
        let planned: HashSet<&K::Key> = writes.iter().map(K::key).collect();
        failing.retain(|k| planned.contains(k));
        drop(planned);

        writing.store(!writes.is_empty(), Ordering::Release);
        let mut todo = writes.into_iter().peekable();
        let mut in_flight = FuturesUnordered::new();
        // Set when a newer view arrived or the API server is unreachable: finish what is in
        // flight, start nothing more.
        let mut stop = false;
        loop {
            // When the next write's token comes, if it is what holds the next write back.
            let mut paced = None;
            while !stop && in_flight.len() < CONCURRENCY && todo.peek().is_some() {
                match pace.take(Instant::now()) {
                    Ok(()) => {
                        let w = todo.next().expect("peeked");
                        in_flight.push(kind.patch(client.clone(), params.clone(), w));
                    }
                    Err(at) => {
                        paced = Some(at);
                        break;
                    }
                }
            }
            let next = tokio::select! {
                next = in_flight.next(), if !in_flight.is_empty() => next,
                () = tokio::time::sleep_until(paced.unwrap_or_else(Instant::now)), if paced.is_some() => {
                    // A token: start the next write (unless the round is to stop by now).
                    stop |= views.has_changed().unwrap_or(true) || !*holding.borrow();
                    continue;
                }
                else => None,
            };
            let Some((w, result)) = next else {
                break;
            };
            match result {
                Ok(()) => {
                    K::log(&cluster, &w, Logged::Written);
                    if failing.remove(K::key(&w)) {
                        K::log(&cluster, &w, Logged::WrittenAgain);
                    }
                    kind.written(w);
                }
                // Deleted since the view: nothing left to write.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // Changed since the view: the change brings the next one (retried anyway).
                Err(kube::Error::Api(e)) if e.code == 409 && K::CONFLICT_IS_QUIET => {
                    K::log(&cluster, &w, Logged::Conflict);
                    retry_at = Some(Instant::now() + RETRY);
                }
                Err(e) => {
                    if failing.insert(K::key(&w).clone()) {
                        K::log(&cluster, &w, Logged::Failing(&e));
                    }
                    // No answer from the API server at all: the rest would fail the same way.
                    stop |= !matches!(e, kube::Error::Api(_));
                    retry_at = Some(Instant::now() + RETRY);
                }
            }
            stop |= views.has_changed().unwrap_or(true) || !*holding.borrow();
        }
        writing.store(false, Ordering::Release);
        // Whatever was not attempted is planned again from the newer view, or at the retry.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(name: &str, rv: &str, status: Value) -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
                "spec": {},
                "status": status,
            }))
            .expect("ingress"),
        )
    }

    fn key(name: &str) -> Key {
        ("default".to_owned(), name.to_owned())
    }

    fn ours() -> Vec<IngressLoadBalancerIngress> {
        addresses(&["203.0.113.10".to_owned(), "edge.example.com".to_owned()])
    }

    fn lb(entries: Value) -> Value {
        json!({"loadBalancer": {"ingress": entries}})
    }

    #[test]
    fn publish_addresses_become_ip_or_hostname_entries_in_order() {
        let json = serde_json::to_value(ours()).expect("json");
        assert_eq!(json, json!([{"ip": "203.0.113.10"}, {"hostname": "edge.example.com"}]));
        assert_eq!(
            serde_json::to_value(addresses(&["2001:db8::1".to_owned()])).expect("json"),
            json!([{"ip": "2001:db8::1"}])
        );
    }

    #[test]
    fn patches_set_the_list_whole_and_clear_it_with_null() {
        let ours_json = serde_json::to_value(ours()).expect("json");
        assert_eq!(
            patch_body(Want::Set, &ours_json),
            json!({"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "edge.example.com"}]}}})
        );
        assert_eq!(
            patch_body(Want::Clear, &ours_json),
            json!({"status": {"loadBalancer": {"ingress": null}}})
        );
    }

    #[test]
    fn plans_only_what_differs() {
        let mine = serde_json::to_value(ours()).expect("json");
        let view = View {
            ingresses: vec![
                // Served, no status yet: set.
                ingress("new", "1", json!({})),
                // Served, already ours: nothing.
                ingress("done", "2", lb(mine.clone())),
                // Served, someone else's (or an old) address: set.
                ingress("stale", "3", lb(json!([{"ip": "198.51.100.1"}]))),
                // Not served, ours: clear.
                ingress("gone", "4", lb(mine.clone())),
                // Not served, someone else's: never touched.
                ingress("theirs", "5", lb(json!([{"ip": "198.51.100.1"}]))),
                // Not served, our addresses in another order: not exactly ours, untouched.
                ingress(
                    "mixed",
                    "6",
                    lb(json!([{"hostname": "edge.example.com"}, {"ip": "203.0.113.10"}])),
                ),
                // Not served, no status: nothing.
                ingress("other", "7", json!({"loadBalancer": {}})),
            ],
            served: vec![key("done"), key("new"), key("stale")].into(),
        };
        let mut sent = HashMap::new();
        let writes = plan(&ours(), &view, &mut sent);
        let got: Vec<(&str, Want)> = writes.iter().map(|w| (w.key.1.as_str(), w.want)).collect();
        assert_eq!(got, [("new", Want::Set), ("stale", Want::Set), ("gone", Want::Clear)]);
    }

    #[test]
    fn a_write_not_yet_watched_back_is_not_repeated() {
        let view = View {
            ingresses: vec![ingress("web", "7", json!({}))],
            served: vec![key("web")].into(),
        };
        let mut sent = HashMap::new();
        assert_eq!(plan(&ours(), &view, &mut sent).len(), 1);
        sent.insert(
            key("web"),
            Sent {
                want: Want::Set,
                rv: Some("7".into()),
            },
        );
        // Another build before the watch brought the written Ingress back: same rv, no write.
        assert!(plan(&ours(), &view, &mut sent).is_empty());
        assert!(sent.contains_key(&key("web")));
        // The Ingress moved on without our status (someone replaced it): write again.
        let moved = View {
            ingresses: vec![ingress("web", "9", json!({}))],
            served: vec![key("web")].into(),
        };
        assert_eq!(plan(&ours(), &moved, &mut sent).len(), 1);
        assert!(sent.is_empty());
    }

    /// A second's worth of writes goes at once; then one per 1/rate, never two for one token;
    /// an idle second fills the bucket again, never beyond a second's worth.
    #[test]
    fn status_writes_are_paced_by_a_token_bucket() {
        let pace = Pace::new(4);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..4 {
            assert_eq!(pace.take(t0), Ok(()));
        }
        assert_eq!(pace.take(t0), Err(at(250)), "the fifth waits a quarter of a second");
        assert_eq!(pace.take(at(100)), Err(at(250)), "asking again brings it no sooner");
        assert_eq!(pace.take(at(250)), Ok(()));
        assert_eq!(pace.take(at(250)), Err(at(500)));
        // A writer whose clock read came before the last take gets no token from the past.
        assert_eq!(pace.take(at(200)), Err(at(500)));
        assert_eq!(pace.take(at(500)), Ok(()));
        // Ten idle seconds: four at once again, not forty.
        let later = at(10_500);
        for _ in 0..4 {
            assert_eq!(pace.take(later), Ok(()));
        }
        assert!(pace.take(later).is_err());
    }
}

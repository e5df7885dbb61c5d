//! The choice between persisted and live objects as a cluster syncs, its state file kept up to
//! date, and its state as its watches fail and recover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::watcher;
use tokio::sync::Notify;

use super::*;
use crate::control::state_file::tests::{TempDir, hosts, sample};

/// Polls `cond` on the current runtime until it holds; panics after 5 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Cluster `prod` persisting to a new state directory (`what` names it): the directory, kept
/// for the test's life, the cluster's state file, its health and its last known good.
fn persisting(what: &str) -> (TempDir, PathBuf, Arc<Health>, LastKnownGood) {
    let dir = TempDir::new(what);
    let state_dir = StateDir::open(dir.path()).expect("state dir");
    let file = state_dir.cluster_file("prod");
    let health = Health::new("prod", &Arc::new(Notify::new()));
    let lkg = LastKnownGood::new("prod", Some(&state_dir), Arc::clone(&health));
    (dir, file, health, lkg)
}

#[tokio::test]
async fn persisted_objects_serve_until_the_live_sync_then_the_live_ones_are_written() {
    let (_dir, file, health, lkg) = persisting("lkg");
    state_file::write_atomic(
        &file,
        &state_file::encode("prod", "2025-01-02T03:04:05Z", &sample(&["old"])).expect("encode"),
    )
    .expect("write");
    let live = || sample(&["new"]);

    assert_eq!(lkg.state(), ClusterState::NotSynced);
    assert!(!lkg.state().is_ready());
    assert_eq!(
        hosts(&lkg.choose(false, live)),
        ["new"],
        "nothing loaded before the timeout"
    );
    lkg.sync_timed_out(Duration::from_secs(1));
    assert_eq!(lkg.state(), ClusterState::Persisted("2025-01-02T03:04:05Z".into()));
    assert!(lkg.state().is_ready());
    assert_eq!(hosts(&lkg.choose(false, live)), ["old"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, on_disk) = state_file::load(&file, "prod").expect("load").expect("a file");
    assert_eq!(hosts(&on_disk), ["old"], "nothing written before the live sync");

    // Synced: the live objects replace the persisted ones, and are written.
    assert_eq!(hosts(&lkg.choose(true, live)), ["new"]);
    assert_eq!(lkg.state(), ClusterState::Live);
    eventually("the live state on disk", || {
        state_file::load(&file, "prod")
            .ok()
            .flatten()
            .is_some_and(|(_, s)| hosts(&s) == ["new"])
    })
    .await;

    // A burst of changes: the latest is what ends up on disk. (That writes are at most one a
    // second is a property of the writer's loop, not asserted on the clock here: tests do not
    // time things.)
    for i in 0..20 {
        health.mark_dirty();
        let host = format!("burst-{i:02}");
        lkg.choose(true, || sample(&[&host]));
    }
    eventually("the end of the burst on disk", || {
        state_file::load(&file, "prod")
            .ok()
            .flatten()
            .is_some_and(|(_, s)| hosts(&s) == ["burst-19"])
    })
    .await;

    // Without a change, nothing is offered: what is on disk stays.
    lkg.choose(true, live);
    tokio::time::sleep(WRITE_EVERY + Duration::from_millis(200)).await;
    let (_, on_disk) = state_file::load(&file, "prod").expect("load").expect("a file");
    assert_eq!(hosts(&on_disk), ["burst-19"]);
}

#[test]
fn watch_failures_and_recoveries_set_the_state() {
    let changed = Arc::new(Notify::new());
    let health = Health::new("prod", &changed);
    let lkg = LastKnownGood::new("prod", None, Arc::clone(&health));
    let services = health.watch("services", "/api/v1/services");
    let nodes = health.watch("nodes", "/api/v1/nodes");
    let live = || sample(&["a"]);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), ClusterState::Live);

    let down = watcher::Error::NoResourceVersion;
    health.error(&services, &down);
    health.error(&services, &down);
    health.error(&nodes, &down);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), ClusterState::Disconnected);
    assert!(lkg.state().is_ready(), "still serving the last known state");

    // The API server accepts the services watch again (no event needed), and a node event
    // arrives (`Init` alone says nothing: the watcher sends it before it lists).
    health.watch_accepted("/api/v1/services");
    health.event::<Ingress>(&nodes, &watcher::Event::Init);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), ClusterState::Disconnected);
    health.event::<Ingress>(&nodes, &watcher::Event::InitDone);
    lkg.choose(true, live);
    assert_eq!(lkg.state(), ClusterState::Live);

    // 410 Gone is a relist, not an outage.
    let gone = kube::core::Status {
        code: 410,
        ..Default::default()
    };
    health.error(&nodes, &watcher::Error::WatchError(Box::new(gone)));
    lkg.choose(true, live);
    assert_eq!(lkg.state(), ClusterState::Live);
}

#[test]
fn without_persistence_a_timeout_leaves_the_cluster_not_synced() {
    let changed = Arc::new(Notify::new());
    let lkg = LastKnownGood::new("prod", None, Health::new("prod", &changed));
    lkg.sync_timed_out(Duration::from_secs(1));
    assert_eq!(lkg.state(), ClusterState::NotSynced);
    assert_eq!(hosts(&lkg.choose(false, || sample(&["a"]))), ["a"]);
}

#[tokio::test]
async fn changes_after_updates_are_copied_from_the_live_stores_once_per_write() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (_dir, file, health, lkg) = persisting("lkg-live");
    // The live stores, and how often the writer copied them.
    let live = Arc::new(Mutex::new(String::from("first")));
    let copies = Arc::new(AtomicUsize::new(0));
    lkg.read_live_with({
        let (live, copies) = (Arc::clone(&live), Arc::clone(&copies));
        move || {
            copies.fetch_add(1, Ordering::SeqCst);
            sample(&[live.lock().expect("live").as_str()])
        }
    });
    let on_disk = |want: &str| {
        state_file::load(&file, "prod")
            .ok()
            .flatten()
            .is_some_and(|(_, s)| hosts(&s) == [want])
    };
    // The first live build's objects are written as they are.
    lkg.choose(true, || sample(&["first"]));
    eventually("the first build on disk", || on_disk("first")).await;
    assert_eq!(copies.load(Ordering::SeqCst), 0, "a build's objects need no copy");

    // A burst of updates (the test's runtime runs nothing else meanwhile): no copy per update,
    // one when the file is written, and the file ends with the last change.
    for i in 0..20 {
        *live.lock().expect("live") = format!("burst-{i:02}");
        health.mark_dirty();
        lkg.offer_live(true);
        assert_eq!(copies.load(Ordering::SeqCst), 0, "copied at an update");
    }
    eventually("the end of the burst on disk", || on_disk("burst-19")).await;
    assert_eq!(copies.load(Ordering::SeqCst), 1);

    // Without a change (or before the sync) nothing is copied nor written.
    *live.lock().expect("live") = String::from("unchanged");
    lkg.offer_live(true);
    health.mark_dirty();
    lkg.offer_live(false);
    tokio::time::sleep(WRITE_EVERY + Duration::from_millis(200)).await;
    assert_eq!(copies.load(Ordering::SeqCst), 1);
    assert!(on_disk("burst-19"));
}

#[tokio::test]
async fn a_stop_writes_what_waits_at_once_and_ends_the_writer() {
    let (_dir, file, health, mut lkg) = persisting("lkg-stop");
    let live = Arc::new(std::sync::Mutex::new(String::from("first")));
    lkg.read_live_with({
        let live = Arc::clone(&live);
        move || sample(&[live.lock().expect("live").as_str()])
    });
    let on_disk = || state_file::load(&file, "prod").ok().flatten().map(|(_, s)| hosts(&s));
    lkg.choose(true, || sample(&["first"]));
    eventually("the first build on disk", || on_disk().is_some()).await;

    // A change right after that write waits for the next one, a second later; a stop does not
    // wait for it (the change is on disk when `stop` returns), nor for the change being handed
    // over first (the store is dirty, no update has offered it yet).
    *live.lock().expect("live") = String::from("last");
    health.mark_dirty();
    let writer = lkg.writer.as_ref().map(|w| w.task.abort_handle()).expect("writer");
    lkg.stop(true).await;
    assert_eq!(on_disk(), Some(vec![String::from("last")]));
    assert!(writer.is_finished(), "the writer ends");

    // Stopped again, or after a stop, nothing more is written.
    *live.lock().expect("live") = String::from("after");
    health.mark_dirty();
    lkg.offer_live(true);
    lkg.stop(true).await;
    assert_eq!(on_disk(), Some(vec![String::from("last")]));
}

#[tokio::test]
async fn the_file_is_written_by_a_thread_at_the_lowest_priority() {
    let (_dir, _file, _health, lkg) = persisting("lkg-idle");
    // The scheduling policy of every thread of this process named `kedge-state` (field 41 of
    // its stat, counted after the command name in parentheses, which ends at field 2).
    let policies = || -> Vec<i64> {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|t| {
                let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
                (name == "kedge-state").then(|| rest.split(' ').nth(41 - 3)?.parse().ok())?
            })
            .collect()
    };
    // (A thread just started sets its policy first thing: other tests start some too.)
    eventually("kedge-state threads, every one under SCHED_IDLE", || {
        let v = policies();
        !v.is_empty() && v.iter().all(|&p| p == i64::from(libc::SCHED_IDLE))
    })
    .await;
    drop(lkg);
}

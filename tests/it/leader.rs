//! One Ingress status writer per cluster among several kedges (edge hosts) following it: two
//! kedges on one fixture API server, each with publish addresses of its own so that a write by
//! the one not holding the status Lease would show. Exactly one writes; when it dies (SIGKILL,
//! no release) the other takes over within the lease time, and when it stops cleanly (SIGTERM)
//! it releases the Lease and the other takes over at once; the status never goes back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::objects::{class, ingress, service, slice};
use crate::support::{Client, FakeApi, Kedge, Signal, TempDir, Upstream, wait_until};

pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// client-go's lease duration, which kedge uses.
const LEASE: Duration = Duration::from_secs(15);
/// What a takeover after a crash may take: the lease duration counted from when the survivor
/// last saw the record change (up to one jittered retry, 4.4 s, after the last renewal), then
/// its next jittered try, then the write.
const TAKEOVER: Duration = Duration::from_secs(30);

/// A kedge with publish address `ip`.
pub(crate) fn edge(api: &FakeApi, dir: &TempDir, ip: &str) -> Kedge {
    Kedge::follow(api, dir, &format!("publish_addresses = [\"{ip}\"]\n"))
}

fn addr(ip: &str) -> Value {
    json!([{"ip": ip}])
}

/// The classes, a Service `web` with one endpoint and a kedge-class Ingress `web`.
fn web_cluster(api: &FakeApi) -> Vec<Upstream> {
    let (pods, port) = Upstream::pods("web", 1);
    api.apply("ingressclasses", class("kedge", "kedge.dev/ingress-controller"));
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", port, &["127.0.0.1"]));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    pods
}

/// `status.loadBalancer.ingress` of Ingress `default/name`.
fn lb(api: &FakeApi, name: &str) -> Value {
    let obj = api.get("ingresses", Some("default"), name).expect("the Ingress exists");
    obj["status"]["loadBalancer"]["ingress"].clone()
}

/// The status Lease's spec as stored.
fn lease(api: &FakeApi) -> Value {
    api.get("leases", Some("default"), "kedge-kedge")
        .expect("the Lease exists")["spec"]
        .clone()
}

/// Writes to the status Lease so far (create, renewals, release).
fn lease_writes(api: &FakeApi) -> usize {
    api.writes("leases", Some("default"), "kedge-kedge")
}

/// `kedge_status_writer{cluster="test"}` on this kedge's `/metrics`.
fn gauge(kedge: &Kedge) -> String {
    let text = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
    text.lines()
        .find(|l| l.starts_with("kedge_status_writer{cluster=\"test\"}"))
        .unwrap_or("")
        .to_owned()
}

/// Two kedges started one after the other; returns them as (holder, other, holder's address,
/// other's address), once the holder's address is on the Ingress.
fn two_edges(api: &FakeApi, dirs: &[TempDir; 2]) -> (Kedge, Kedge, &'static str, &'static str) {
    let a = edge(api, &dirs[0], "203.0.113.1");
    let b = edge(api, &dirs[1], "203.0.113.2");
    wait_until(WAIT, "one kedge to write its address", || !lb(api, "web").is_null());
    if lb(api, "web") == addr("203.0.113.1") {
        (a, b, "203.0.113.1", "203.0.113.2")
    } else {
        (b, a, "203.0.113.2", "203.0.113.1")
    }
}

/// Waits until the Lease has been written `n` more times: that many renewals (every 2 s), in
/// which the kedge that does not hold it has tried as often.
pub(crate) fn renewals(api: &FakeApi, n: usize) {
    let start = lease_writes(api);
    wait_until(
        WAIT + Duration::from_secs(2 * n as u64),
        "the Lease to be renewed",
        || lease_writes(api) >= start + n,
    );
}

#[test]
fn one_edge_writes_and_the_other_takes_over_when_it_dies() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    let dirs = [TempDir::new("leader-a"), TempDir::new("leader-b")];
    let (holder, other, mine, theirs) = two_edges(&api, &dirs);

    // Several renewals later only the holder has written: one write, its address; the other
    // serves the same routes and says it is not the writer.
    renewals(&api, 3);
    assert_eq!(lb(&api, "web"), addr(mine));
    assert_eq!(api.status_writes("default", "web"), 1, "only the holder writes");
    assert_eq!(gauge(&holder), "kedge_status_writer{cluster=\"test\"} 1");
    assert_eq!(gauge(&other), "kedge_status_writer{cluster=\"test\"} 0");
    assert_eq!(crate::support::get(&other, "web.example.com", "/").0, 200);
    holder.wait_log("became the status writer for cluster test", WAIT);
    assert!(!other.logs().iter().any(|l| l.contains("became the status writer")));
    // A change while the other is not the holder: still only the holder writes.
    api.apply("ingresses", ingress("later", "kedge", "later.example.com", "/", "web"));
    wait_until(WAIT, "the new Ingress to get the holder's address", || {
        lb(&api, "later") == addr(mine)
    });
    renewals(&api, 1);
    assert_eq!(api.status_writes("default", "later"), 1);
    let spec = lease(&api);
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    let first_holder = spec["holderIdentity"].clone();

    // The holder dies without releasing the Lease: the other waits the lease out, then writes.
    let killed = Instant::now();
    drop(holder);
    wait_until(TAKEOVER, "the other kedge to take the status over", || {
        lb(&api, "web") == addr(theirs) && lb(&api, "later") == addr(theirs)
    });
    let took = killed.elapsed();
    assert!(
        took >= LEASE - Duration::from_secs(3),
        "not before the lease ran out: {took:?}"
    );
    other.wait_log("became the status writer for cluster test", WAIT);
    assert_eq!(gauge(&other), "kedge_status_writer{cluster=\"test\"} 1");
    let spec = lease(&api);
    assert_ne!(spec["holderIdentity"], first_holder);
    assert_eq!(spec["leaseTransitions"], 1);

    // It goes on writing, and nothing goes back.
    api.apply("ingresses", ingress("newer", "kedge", "newer.example.com", "/", "web"));
    wait_until(WAIT, "the new holder to write a new Ingress", || {
        lb(&api, "newer") == addr(theirs)
    });
    renewals(&api, 2);
    assert_eq!(lb(&api, "web"), addr(theirs));
    assert_eq!(api.status_writes("default", "web"), 2, "one write each, no flapping");
    assert_eq!(api.status_writes("default", "later"), 2);
    assert_eq!(api.status_writes("default", "newer"), 1);
    let became = other
        .logs()
        .iter()
        .filter(|l| l.contains("became the status writer"))
        .count();
    assert_eq!(became, 1, "said once");
}

#[test]
fn a_clean_stop_hands_the_status_over_at_once() {
    let api = FakeApi::start();
    let _pods = web_cluster(&api);
    let dirs = [TempDir::new("leader-a"), TempDir::new("leader-b")];
    let (mut holder, other, _, theirs) = two_edges(&api, &dirs);
    renewals(&api, 1);

    let stopped = Instant::now();
    holder.signal(Signal::Term);
    holder.wait_log("status Lease released", WAIT);
    assert!(holder.wait_exit(WAIT).success());
    assert!(holder.logs().iter().any(|l| l.contains("no longer the status writer")));
    // Released: the other takes it at its next try (at most 4.4 s apart), long before the
    // 15 s a crashed holder's Lease would take.
    wait_until(
        LEASE - Duration::from_secs(5),
        "the other kedge to take the status over",
        || lb(&api, "web") == addr(theirs),
    );
    let took = stopped.elapsed();
    assert!(took < LEASE - Duration::from_secs(5), "{took:?}");
    assert_eq!(api.status_writes("default", "web"), 2);
    assert_eq!(lease(&api)["leaseTransitions"], 1);
    other.wait_log("became the status writer for cluster test", WAIT);
}

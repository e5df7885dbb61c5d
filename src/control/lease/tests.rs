//! The election's decisions as a function of (record seen, when it was seen to change, now, me).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tokio::time::Instant;

use super::{Elector, identity};

fn lease(holder: Option<&str>, duration: i32, renew: &str, transitions: i32, rv: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": "kedge-kedge", "namespace": "default", "resourceVersion": rv},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "acquireTime": "2026-12-01T10:00:00.000000Z",
            "renewTime": renew,
            "leaseTransitions": transitions,
        },
    }))
    .expect("lease")
}

fn wall() -> Timestamp {
    "2026-12-05T12:00:00Z".parse().expect("timestamp")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// (holder, transitions, acquire time kept) of a claim, `None` for no claim.
fn claim(el: &Elector, now: Instant) -> Option<(Option<String>, Option<i32>, bool)> {
    el.claim(now, wall()).map(|s| {
        assert_eq!(s.lease_duration_seconds, Some(15));
        assert_eq!(s.renew_time.as_ref().map(|t| t.0), Some(wall()));
        let kept = s.acquire_time.as_ref().map(|t| t.0) != Some(wall());
        (s.holder_identity, s.lease_transitions, kept)
    })
}

#[test]
fn no_record_seen_claims_a_fresh_one() {
    let el = Elector::new("a".into());
    let t0 = Instant::now();
    assert_eq!(claim(&el, t0), Some((Some("a".into()), Some(0), false)));
    assert!(!el.is_leader());
    assert_eq!(el.release(wall()), None, "nothing to release");
}

#[test]
fn another_holder_is_waited_out_by_the_local_clock() {
    let t0 = Instant::now();
    let mut el = Elector::new("b".into());
    // The remote renewTime is long past (a skewed clock): it does not matter, only when this
    // kedge saw the record change does.
    el.observe(&lease(Some("a"), 15, "2020-01-01T00:00:00.000000Z", 3, "10"), t0);
    assert_eq!(el.holder(), Some("a"));
    assert_eq!(claim(&el, t0), None);
    assert_eq!(claim(&el, t0 + secs(14)), None);
    // The same record read again does not restart the clock.
    el.observe(
        &lease(Some("a"), 15, "2020-01-01T00:00:00.000000Z", 3, "10"),
        t0 + secs(10),
    );
    assert_eq!(claim(&el, t0 + secs(14)), None);
    // Expired: take over, one more transition, a new acquire time.
    assert_eq!(claim(&el, t0 + secs(15)), Some((Some("b".into()), Some(4), false)));
}

#[test]
fn a_renewal_seen_restarts_the_clock() {
    let t0 = Instant::now();
    let mut el = Elector::new("b".into());
    el.observe(&lease(Some("a"), 15, "2026-12-05T11:59:00.000000Z", 0, "10"), t0);
    el.observe(
        &lease(Some("a"), 15, "2026-12-05T11:59:02.000000Z", 0, "11"),
        t0 + secs(12),
    );
    assert_eq!(claim(&el, t0 + secs(20)), None, "seen renewed 8 s ago");
    assert!(claim(&el, t0 + secs(27)).is_some(), "15 s after the renewal was seen");
}

#[test]
fn the_records_own_duration_counts() {
    let t0 = Instant::now();
    let mut el = Elector::new("b".into());
    el.observe(&lease(Some("a"), 60, "2026-12-05T11:59:00.000000Z", 0, "10"), t0);
    assert_eq!(claim(&el, t0 + secs(59)), None);
    assert!(claim(&el, t0 + secs(60)).is_some());
}

#[test]
fn a_released_or_empty_lease_is_taken_at_once() {
    let t0 = Instant::now();
    let mut el = Elector::new("b".into());
    el.observe(&lease(None, 1, "2026-12-05T11:59:00.000000Z", 2, "10"), t0);
    assert_eq!(el.holder(), None);
    assert_eq!(claim(&el, t0), Some((Some("b".into()), Some(3), false)));
    let mut el = Elector::new("b".into());
    el.observe(&lease(Some(""), 15, "2026-12-05T11:59:00.000000Z", 2, "10"), t0);
    assert_eq!(claim(&el, t0), Some((Some("b".into()), Some(3), false)));
}

#[test]
fn the_holder_renews_keeping_acquire_time_and_transitions() {
    let t0 = Instant::now();
    let mut el = Elector::new("a".into());
    el.observe(&lease(Some("a"), 15, "2026-12-05T11:59:00.000000Z", 5, "10"), t0);
    assert!(el.is_leader());
    // Renews whenever asked, even after its record would have expired for others.
    assert_eq!(claim(&el, t0 + secs(1)), Some((Some("a".into()), Some(5), true)));
    assert_eq!(claim(&el, t0 + secs(30)), Some((Some("a".into()), Some(5), true)));
    // The update names the resourceVersion seen.
    let update = el.update("kedge-kedge", el.claim(t0, wall()).expect("claim"));
    assert_eq!(update.metadata.resource_version.as_deref(), Some("10"));
}

#[test]
fn the_holder_releases_with_no_holder_and_a_one_second_duration() {
    let t0 = Instant::now();
    let mut el = Elector::new("a".into());
    el.observe(&lease(Some("a"), 15, "2026-12-05T11:59:00.000000Z", 5, "10"), t0);
    let released = el.release(wall()).expect("a release");
    assert_eq!(released.holder_identity, None);
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, Some(5));
    // Another's record is never released by this kedge.
    el.observe(
        &lease(Some("b"), 15, "2026-12-05T11:59:00.000000Z", 6, "11"),
        t0 + secs(1),
    );
    assert!(!el.is_leader());
    assert_eq!(el.release(wall()), None);
}

#[test]
fn the_identity_is_the_host_name_and_a_uuid() {
    let a = identity();
    let (host, uuid) = a.rsplit_once('_').expect("host_uuid");
    assert!(!host.is_empty());
    let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
    assert!(uuid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
    assert_eq!(&uuid[14..15], "4", "version 4");
    assert_ne!(identity(), a, "a new one each time");
}

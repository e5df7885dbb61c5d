//! Endpoint churn under constant load, end to end through the fixture API server: client threads
//! send requests without pause (keep-alive runs and fresh connections mixed) while the test
//! changes the Service's EndpointSlice, and every single response must be a 200.
//!
//! What a failure would mean is reported precisely (request, connection, status or error), so
//! that a 502 during a rolling update can be traced to its cause: a pooled connection to an
//! endpoint that went away, a retry that did not happen, a table published late.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::objects::{endpoint, ingress, ingress_class, service, slice_of};
use crate::support::{Client, Driver, FakeApi, Kedge, TempDir, Upstream, both_drivers, wait_until};

const HOST: &str = "web.example.com";

/// How long each phase of the rolling update lasts once kedge has published it, so that the
/// load runs through every phase (pacing, not an assertion).
const PHASE: Duration = Duration::from_millis(50);

/// A small xorshift generator: the tests need variety, not quality (and print their seed).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `lo..=hi` (near enough).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// One element of a non-empty set.
    fn pick(&mut self, set: &BTreeSet<u8>) -> u8 {
        let v: Vec<u8> = set.iter().copied().collect();
        v[self.next() as usize % v.len()]
    }
}

/// What the load threads saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    connections: usize,
    /// One line per failed request: thread, connection, request on it, what went wrong.
    failures: Vec<String>,
    by_upstream: BTreeMap<String, usize>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.connections += other.connections;
        self.failures.extend(other.failures);
        for (k, v) in other.by_upstream {
            *self.by_upstream.entry(k).or_default() += v;
        }
    }
}

/// Client threads sending GETs to `addr` until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// `threads` clients, each: open a connection, send 1 to 8 requests on it (the last one
    /// sometimes with `Connection: close`; a quarter of the connections carry one request
    /// only), close, repeat.
    fn start(addr: std::net::SocketAddr, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || client_loop(addr, t, &stop))
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for t in self.threads {
            all.merge(t.join().expect("load thread"));
        }
        all
    }
}

fn client_loop(addr: std::net::SocketAddr, t: usize, stop: &AtomicBool) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng::seeded();
    rng.0 ^= (t as u64 + 1) << 32;
    let started = Instant::now();
    let mut conn_no = 0;
    while !stop.load(Ordering::SeqCst) {
        conn_no += 1;
        tally.connections += 1;
        let at = started.elapsed();
        let mut c = match Client::try_connect(addr) {
            Ok(c) => c,
            Err(e) => {
                tally
                    .failures
                    .push(format!("thread {t} conn {conn_no} at {at:?}: connect: {e}"));
                continue;
            }
        };
        let n = if rng.range(0, 3) == 0 { 1 } else { rng.range(1, 8) };
        let close_last = rng.range(0, 1) == 0;
        for i in 1..=n {
            let close = i == n && close_last;
            let req = format!(
                "GET /t{t}/c{conn_no}/r{i} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            );
            let at = started.elapsed();
            let where_ = format!("thread {t} conn {conn_no} request {i}/{n} at {at:?}");
            if let Err(e) = c.try_send(req.as_bytes()) {
                tally.failures.push(format!("{where_}: send: {e}"));
                break;
            }
            match c.try_read_response(false) {
                Ok(resp) if resp.status == 200 => {
                    tally.ok += 1;
                    let who = resp.upstream().unwrap_or("?").to_owned();
                    *tally.by_upstream.entry(who).or_default() += 1;
                    if resp.header_has_token("connection", "close") {
                        break;
                    }
                }
                Ok(resp) => {
                    tally
                        .failures
                        .push(format!("{where_}: status {} {:?}", resp.status, resp.text().trim()));
                    break;
                }
                Err(e) => {
                    tally.failures.push(format!("{where_}: read: {e}"));
                    break;
                }
            }
        }
    }
    tally
}

/// Service `web` behind Ingress `HOST` with ready pods 127.0.0.1..=10 on `port`, and a kedge
/// with 2 workers following it. The TempDir must outlive kedge.
fn ten_pod_service(driver: Driver, port: u16, label: &str) -> (FakeApi, TempDir, Kedge) {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply(
        "endpointslices",
        slice_state(port, &(1..=10).collect(), &BTreeSet::new()),
    );
    api.apply("ingresses", ingress("web", "kedge", HOST, "/", "web"));
    let dir = TempDir::new(label);
    let kedge = Kedge::setup(driver).workers(2).follow(&api, &dir, "");
    (api, dir, kedge)
}

/// The slice with `ready` endpoints (indices into 127.0.0.1.., all ready) and `draining` ones
/// (not ready, still serving, terminating: a pod shutting down).
fn slice_state(port: u16, ready: &BTreeSet<u8>, draining: &BTreeSet<u8>) -> Value {
    let mut eps: Vec<Value> = ready
        .iter()
        .map(|i| endpoint(&format!("127.0.0.{i}"), true, true, false, None))
        .collect();
    eps.extend(
        draining
            .iter()
            .map(|i| endpoint(&format!("127.0.0.{i}"), false, true, true, None)),
    );
    slice_of("web", port, eps)
}

/// Route table publications logged so far whose line contains `what` too.
fn published(kedge: &Kedge, what: &str) -> usize {
    kedge
        .logs()
        .iter()
        .filter(|l| l.contains("route table published") && l.contains(what))
        .count()
}

/// Waits for one more publication (with `what` in its line) than `before`.
fn wait_published(kedge: &Kedge, what: &str, before: usize, why: &str) {
    wait_until(Duration::from_secs(10), why, || published(kedge, what) > before);
}

fn assert_no_failures(tally: &Tally, seed: u64, what: &str) {
    eprintln!(
        "{what}: {} requests ok on {} connections, {} failed; by upstream {:?}",
        tally.ok,
        tally.connections,
        tally.failures.len(),
        tally.by_upstream
    );
    assert!(
        tally.failures.is_empty(),
        "{what}: {} of {} requests failed (seed {seed}); upstreams {:?}:\n{}",
        tally.failures.len(),
        tally.ok + tally.failures.len(),
        tally.by_upstream,
        tally.failures.join("\n")
    );
}

both_drivers!(
    fn endpoints_added_and_removed_under_load_fail_no_request(driver) {
        // Ten pods, all listening the whole time; which of them the slice lists changes every
        // 200-500 ms, with pods leaving either at once or through "terminating" first.
        let (pods, port) = Upstream::pods("web", 10);
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        api.apply("services", service("web"));
        let mut ready: BTreeSet<u8> = (1..=5).collect();
        let mut draining: BTreeSet<u8> = BTreeSet::new();
        api.apply("endpointslices", slice_state(port, &ready, &draining));
        api.apply("ingresses", ingress("web", "kedge", HOST, "/", "web"));
        let dir = TempDir::new("churn");
        let kedge = Kedge::setup(driver).workers(2).follow(&api, &dir, "");

        let mut rng = Rng::seeded();
        let seed = rng.0;
        let load = Load::start(kedge.addr(), 3);
        let started = Instant::now();
        let mut changes = 0;
        while started.elapsed() < Duration::from_secs(4) {
            // Pacing, not synchronisation: the scenario is a change every 200-500 ms under load,
            // whether or not kedge has applied the last one (the end state is waited for below).
            std::thread::sleep(Duration::from_millis(rng.range(200, 500)));
            // Draining pods finish terminating: gone from the slice.
            draining.clear();
            let add = ready.len() <= 2 || (ready.len() < 10 && rng.range(0, 1) == 0);
            for _ in 0..rng.range(1, 3) {
                let absent: BTreeSet<u8> = (1..=10).filter(|i| !ready.contains(i)).collect();
                if add && !absent.is_empty() {
                    ready.insert(rng.pick(&absent));
                } else if !add && ready.len() > 1 {
                    let i = rng.pick(&ready);
                    ready.remove(&i);
                    // Half of the leaving pods go through "terminating" first.
                    if rng.range(0, 1) == 0 {
                        draining.insert(i);
                    }
                }
            }
            api.apply("endpointslices", slice_state(port, &ready, &draining));
            changes += 1;
        }
        let tally = load.finish();
        assert_no_failures(&tally, seed, "endpoint churn");
        assert!(changes >= 6, "only {changes} changes");
        assert!(tally.ok >= 100, "the load barely ran: {} requests", tally.ok);
        assert!(tally.by_upstream.len() >= 3, "traffic reached few pods: {:?}", tally.by_upstream);

        // Whatever the churn, kedge ends up serving exactly the last state.
        let want: BTreeSet<String> = ready.iter().map(|i| format!("web-{}", i - 1)).collect();
        wait_until(Duration::from_secs(10), "kedge serves the final endpoints", || {
            let mut seen = BTreeSet::new();
            for _ in 0..4 * want.len() {
                let resp = Client::connect(kedge.addr()).get(HOST, "/final");
                assert_eq!(resp.status, 200);
                seen.insert(resp.upstream().expect("an upstream answered").to_owned());
            }
            seen == want
        });
        drop(pods);
    }
);

both_drivers!(
    fn rolling_update_of_ten_pods_fails_no_request(driver) {
        // Old pods on 127.0.0.1..=10, their replacements on 127.0.0.11..=20, all on one port.
        let (all, port) = Upstream::pods("web", 20);
        let mut pods: Vec<Option<Upstream>> = all.into_iter().map(Some).collect();
        let mut ready: BTreeSet<u8> = (1..=10).collect();
        let mut draining: BTreeSet<u8> = BTreeSet::new();
        let (api, _dir, kedge) = ten_pod_service(driver, port, "rolling");

        let load = Load::start(kedge.addr(), 3);
        for (old, new) in (1..=10u8).zip(11..=20u8) {
            // The new pod is up (its listener runs) and becomes ready: 11 endpoints.
            let before = published(&kedge, "endpoints=11 ");
            ready.insert(new);
            api.apply("endpointslices", slice_state(port, &ready, &draining));
            wait_published(&kedge, "endpoints=11 ", before, "the new pod is published");
            // Pacing (see PHASE): the load runs against this phase before the next one starts.
            std::thread::sleep(PHASE);

            // The old pod starts terminating: not ready, still serving. 10 ready endpoints.
            let before = published(&kedge, "endpoints=10 ");
            ready.remove(&old);
            draining.insert(old);
            api.apply("endpointslices", slice_state(port, &ready, &draining));
            wait_published(&kedge, "endpoints=10 ", before, "the old pod is published as terminating");
            // Pacing, as above.
            std::thread::sleep(PHASE);

            // It leaves the slice, and only then stops listening.
            let before = published(&kedge, "");
            draining.remove(&old);
            api.apply("endpointslices", slice_state(port, &ready, &draining));
            wait_published(&kedge, "", before, "the old pod's removal is published");
            drop(pods[usize::from(old) - 1].take());
        }
        // Every new pod takes its share of the load before it stops.
        wait_until(Duration::from_secs(10), "every new pod gets traffic", || {
            pods[10..].iter().flatten().all(|p| p.request_count() > 0)
        });
        let tally = load.finish();
        assert_no_failures(&tally, 0, "rolling update");
        assert!(tally.ok >= 100, "the load barely ran: {} requests", tally.ok);
        drop(pods);
    }
);

both_drivers!(
    fn pods_that_die_before_kedge_hears_of_it_fail_no_idempotent_request(driver) {
        // The harsh case: each old pod stops listening (connections reset, connects refused)
        // *before* the slice says anything, as when a pod crashes or skips its drain. Pooled
        // connections to it are dead; kedge must retry GETs on another endpoint.
        let (all, port) = Upstream::pods("web", 20);
        let mut pods: Vec<Option<Upstream>> = all.into_iter().map(Some).collect();
        let mut ready: BTreeSet<u8> = (1..=10).collect();
        let none = BTreeSet::new();
        let (api, _dir, kedge) = ten_pod_service(driver, port, "crash");

        let load = Load::start(kedge.addr(), 3);
        for (old, new) in (1..=10u8).zip(11..=20u8) {
            // Pacing (see PHASE), not synchronisation: the load runs a while on the last table,
            // then a while against a dead pod kedge has not heard of (the case under test).
            std::thread::sleep(PHASE);
            drop(pods[usize::from(old) - 1].take());
            std::thread::sleep(PHASE);
            let before = published(&kedge, "");
            ready.remove(&old);
            ready.insert(new);
            api.apply("endpointslices", slice_state(port, &ready, &none));
            wait_published(&kedge, "", before, "the replacement is published");
        }
        let tally = load.finish();
        assert_no_failures(&tally, 0, "pods dying before their removal");
        assert!(tally.ok >= 100, "the load barely ran: {} requests", tally.ok);
        drop(pods);
    }
);

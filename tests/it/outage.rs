//! The API server away: kedge keeps serving its table under load while the fixture API server
//! is paused, relists after a 410, serves the state it persisted when it restarts during an
//! outage (until the live sync takes over), and shrugs off a state file it cannot use. These
//! are control-plane tests: one driver (the default) is enough.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{api_with_web, ingress, slice};
use crate::support::{Client, Driver, FakeApi, Kedge, TempDir, Upstream, get, state_file, wait_until};

/// Long enough for kube's backoff (0.8 s doubling, with jitter) to come round after an outage
/// of a few seconds, on a loaded machine.
const RECOVERY: Duration = Duration::from_secs(40);

/// kedge following `api` as cluster `test`, keeping its state in `state_dir` (where a restarted
/// kedge finds it), with this sync timeout.
fn kedge_with_state(api: &FakeApi, dir: &TempDir, state_dir: &Path, sync_timeout: &str) -> Kedge {
    Kedge::setup(Driver::default())
        .state_dir(state_dir)
        .follow(api, dir, &format!("sync_timeout = \"{sync_timeout}\""))
}

/// The hosts of the Ingresses in a state file.
fn persisted_hosts(file: &Value) -> Vec<String> {
    let mut hosts: Vec<String> = file["ingresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["spec"]["rules"][0]["host"].as_str().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts
}

/// Clients sending GETs to one host on keep-alive connections, a thread each, until stopped;
/// every answer but a 200 and every I/O error counts as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr, host: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, host) = (Arc::clone(&stop), Arc::clone(&ok), host.to_owned());
                std::thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut conn: Option<Client> = None;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && failures.len() < 20 {
                        n += 1;
                        let mut c = match conn.take().map_or_else(|| Client::try_connect(addr), Ok) {
                            Ok(c) => c,
                            Err(e) => {
                                failures.push(format!("client {i}: connect: {e}"));
                                continue;
                            }
                        };
                        let req = format!("GET /load/{i}/{n} HTTP/1.1\r\nHost: {host}\r\n\r\n");
                        match c.try_send(req.as_bytes()).and_then(|()| c.try_read_response(false)) {
                            Ok(resp) if resp.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if !resp.header_has_token("connection", "close") {
                                    conn = Some(c);
                                }
                            }
                            Ok(resp) => {
                                failures.push(format!("client {i}: request {n}: {} {}", resp.status, resp.text()))
                            }
                            Err(e) => failures.push(format!("client {i}: request {n}: {e}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Requests answered 200 so far.
    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests have been answered.
    fn wait_for_more(&self, more: usize, what: &str) {
        let target = self.ok() + more;
        wait_until(Duration::from_secs(20), what, || self.ok() >= target);
    }

    /// Stops the clients; every failure they saw.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("load thread"))
            .collect()
    }
}

#[test]
fn an_api_server_outage_under_load_fails_no_request() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("outage");
    let kedge = Kedge::follow(&api, &dir, "");
    let load = Load::start(kedge.addr(), "web.example.com", 3);
    load.wait_for_more(50, "traffic before the outage");

    let watches = api.open_watches();
    assert!(watches > 0, "kedge watches nothing before the outage");
    api.pause();
    kedge.wait_log("watch failed", Duration::from_secs(10));
    kedge.wait_log("API server unreachable or failing", Duration::from_secs(10));
    load.wait_for_more(100, "traffic during the outage");
    // Keep the API server away until kedge has been turned away twice per watch: kube's backoff
    // has grown meanwhile, and the recovery below must come round from there.
    wait_until(RECOVERY, "kedge retrying through the outage (twice per watch)", || {
        api.turned_away() >= 2 * watches
    });
    load.wait_for_more(50, "traffic late in the outage");
    api.resume();

    api.apply("ingresses", ingress("new", "kedge", "new.example.com", "/", "web"));
    wait_until(RECOVERY, "the Ingress applied after the outage is served", || {
        get(&kedge, "new.example.com", "/").0 == 200
    });
    // Every watch runs again, even those that got no event since (the API server accepted
    // their watch requests).
    kedge.wait_log("API server back; every watch is running", RECOVERY);
    load.wait_for_more(50, "traffic after the outage");
    let failures = load.stop();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
}

#[test]
fn an_expired_watch_relists_and_serves_the_changes_under_load() {
    let (pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("outage");
    let kedge = Kedge::follow(&api, &dir, "");
    let load = Load::start(kedge.addr(), "web.example.com", 2);
    load.wait_for_more(50, "traffic before the outage");

    api.pause();
    api.apply("ingresses", ingress("late", "kedge", "late.example.com", "/", "web"));
    api.apply("endpointslices", slice("web", port, &["127.0.0.2"]));
    api.compact();
    load.wait_for_more(50, "traffic during the outage");
    let resumed_at = api.request_log().len();
    api.resume();

    wait_until(RECOVERY, "the Ingress applied during the outage is served", || {
        get(&kedge, "late.example.com", "/").0 == 200
    });
    wait_until(RECOVERY, "only the endpoint left answers", || {
        (0..4).all(|_| get(&kedge, "web.example.com", "/").1.as_deref() == Some("web-1"))
    });
    kedge.wait_log("watch expired (410 Gone); relisting", Duration::from_secs(5));

    // The log: the watch resumed from its last resourceVersion (with kedge's 60 s timeout),
    // refused with a 410, then a relist.
    let log = api.request_log().split_off(resumed_at);
    let ingresses = "GET /apis/networking.k8s.io/v1/ingresses?";
    let watch = log.iter().position(|l| {
        l.starts_with(ingresses)
            && l.contains("watch=true")
            && l.contains("timeoutSeconds=60")
            && l.contains("resourceVersion=")
    });
    let relist = log
        .iter()
        .rposition(|l| l.starts_with(ingresses) && !l.contains("watch=true"));
    assert!(
        matches!((watch, relist), (Some(w), Some(l)) if w < l),
        "a watch then a LIST of ingresses after the outage: {log:#?}"
    );

    load.wait_for_more(50, "traffic after the relist");
    let failures = load.stop();
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    drop(pods);
}

#[test]
fn a_restart_during_an_outage_serves_the_persisted_state_until_the_live_sync() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("outage");
    let state_dir = dir.path().join("state");

    let mut first = kedge_with_state(&api, &dir, &state_dir, "10s");
    assert_eq!(get(&first, "web.example.com", "/").0, 200);
    wait_until(Duration::from_secs(10), "the state file", || {
        state_file(&state_dir).is_some_and(|f| persisted_hosts(&f) == ["web.example.com"])
    });
    first.signal(crate::support::Signal::Term);
    assert!(first.wait_exit(Duration::from_secs(10)).success());

    // Restarted while the API server is away: the persisted Ingress is served from the first
    // request on, and the log and /readyz say where it comes from. At once, not after the
    // sync timeout (a long one here: the harness gives up on a kedge that does not listen
    // within 10 s), since the API server cannot be reached at all.
    api.pause();
    let second = kedge_with_state(&api, &dir, &state_dir, "5m");
    second.wait_log(
        "cluster \"test\" not reachable; serving the state persisted at",
        Duration::from_secs(5),
    );
    let (ready, body) = crate::support::readyz(&second);
    assert_eq!(ready, 200, "{body}");
    assert!(body.contains("persisted"), "{body}");
    let (status, who) = get(&second, "web.example.com", "/");
    assert_eq!(status, 200);
    assert!(who.is_some_and(|w| w.starts_with("web-")));
    assert_eq!(get(&second, "other.example.com", "/").0, 404);

    // Back: the live state takes over, and what changes from then on is served and persisted.
    api.resume();
    second.wait_log("its live state replaces the state persisted at", RECOVERY);
    api.apply("ingresses", ingress("new", "kedge", "new.example.com", "/", "web"));
    wait_until(RECOVERY, "the Ingress applied after the live sync is served", || {
        get(&second, "new.example.com", "/").0 == 200
    });
    assert_eq!(get(&second, "web.example.com", "/").0, 200);
    wait_until(Duration::from_secs(10), "the new Ingress persisted", || {
        state_file(&state_dir).is_some_and(|f| persisted_hosts(&f) == ["new.example.com", "web.example.com"])
    });
}

#[test]
fn a_clean_stop_writes_the_last_change_to_the_state_file() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let dir = TempDir::new("stop-writes");
    let state_dir = dir.path().join("state");
    let mut kedge = kedge_with_state(&api, &dir, &state_dir, "10s");
    wait_until(Duration::from_secs(10), "the state file", || {
        state_file(&state_dir).is_some_and(|f| persisted_hosts(&f) == ["web.example.com"])
    });
    // A change well within a second of that write: the file writer holds it back (one write a
    // second at most), and SIGTERM comes before the second is over.
    api.apply("ingresses", ingress("new", "kedge", "new.example.com", "/", "web"));
    wait_until(Duration::from_secs(10), "the new Ingress served", || {
        get(&kedge, "new.example.com", "/").0 == 200
    });
    kedge.signal(crate::support::Signal::Term);
    assert!(kedge.wait_exit(Duration::from_secs(10)).success());
    let file = state_file(&state_dir).expect("state file");
    assert_eq!(persisted_hosts(&file), ["new.example.com", "web.example.com"]);
}

#[test]
fn a_corrupt_or_foreign_state_file_is_reported_and_the_live_sync_awaited() {
    let (_pods, port) = Upstream::pods("web", 1);
    let api = api_with_web(port);
    let dir = TempDir::new("outage");
    let corrupt = dir.path().join("corrupt");
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&corrupt).expect("mkdir");
    std::fs::create_dir_all(&foreign).expect("mkdir");
    std::fs::write(
        corrupt.join("cluster-test.json"),
        "{\"format\": \"kedge.dev/cluster-state/v1\", \"clus",
    )
    .expect("write");
    let other = json!({"format": "kedge.dev/cluster-state/v1", "cluster": "prod", "saved_at": "2025-01-01T00:00:00Z",
                       "ingresses": [], "ingressclasses": [], "services": [], "endpointslices": [], "nodes": []});
    std::fs::write(foreign.join("cluster-test.json"), other.to_string()).expect("write");

    api.pause();
    let kedges: Vec<Kedge> = [
        (&corrupt, "not a kedge state file"),
        (&foreign, "the state of cluster \"prod\""),
    ]
    .into_iter()
    .map(|(state_dir, why)| {
        let kedge = kedge_with_state(&api, &dir, state_dir, "1s");
        let line = kedge.wait_log("its persisted state cannot be used", Duration::from_secs(5));
        assert!(line.contains(why), "{line}");
        assert_eq!(get(&kedge, "web.example.com", "/").0, 404, "nothing to serve yet");
        kedge
    })
    .collect();

    api.resume();
    for (kedge, state_dir) in kedges.iter().zip([&corrupt, &foreign]) {
        wait_until(RECOVERY, "the live sync", || {
            get(kedge, "web.example.com", "/").0 == 200
        });
        kedge.wait_log(
            "cluster \"test\" synced: serving its live state",
            Duration::from_secs(5),
        );
        wait_until(Duration::from_secs(10), "the state file replaced", || {
            state_file(state_dir).is_some_and(|f| f["cluster"] == "test" && persisted_hosts(&f) == ["web.example.com"])
        });
    }
}

/// After an outage long enough for kube's default backoff to reach 12.8 s and more, a change is
/// routed within 10 s of the API server's return: the watches retry at most `watch_retry_max`
/// apart (2 s here; 5 s by default).
#[test]
fn a_change_after_a_long_outage_is_routed_within_ten_seconds() {
    let (_pods, port) = Upstream::pods("web", 1);
    let api = api_with_web(port);
    let dir = TempDir::new("outage");
    let kedge = Kedge::follow(&api, &dir, "watch_retry_max = \"2s\"");
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);

    let watches = api.open_watches();
    assert!(watches > 0, "kedge watches nothing before the outage");
    api.pause();
    kedge.wait_log("API server unreachable or failing", Duration::from_secs(10));
    // Six failed attempts per watch: with kube's default backoff (0.8 s doubling) the next
    // wait would be 25 s; with the cap it is at most 2 s.
    wait_until(
        RECOVERY,
        "kedge retrying through the outage (six times per watch)",
        || api.turned_away() >= 6 * watches,
    );
    api.resume();
    api.apply("ingresses", ingress("new", "kedge", "new.example.com", "/", "web"));
    wait_until(
        Duration::from_secs(10),
        "the Ingress applied after the outage to be served within 10 s",
        || get(&kedge, "new.example.com", "/").0 == 200,
    );
}

/// What kedge keeps of an object leaves out what it never reads: the API server's
/// `managedFields` (on every object) and kubectl's `last-applied-configuration` copy of an
/// applied object. The state file, written from the stores, shows what they hold; the
/// annotations kedge reads stay.
#[test]
fn managed_fields_and_the_last_applied_copy_are_not_kept() {
    let (_pods, port) = Upstream::pods("web", 2);
    let api = api_with_web(port);
    let mut ing = ingress("web", "kedge", "web.example.com", "/", "web");
    let last_applied = serde_json::to_string(&ing).expect("JSON");
    ing["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": last_applied,
        "nginx.ingress.kubernetes.io/ssl-redirect": "false",
    });
    let stored = api.apply("ingresses", ing);
    assert!(
        stored["metadata"]["managedFields"].is_array(),
        "the fixture records managedFields: {stored}"
    );
    let dir = TempDir::new("outage-lean");
    let state_dir = dir.path().join("state");
    let kedge = kedge_with_state(&api, &dir, &state_dir, "10s");
    assert_eq!(get(&kedge, "web.example.com", "/").0, 200);
    let mut file = Value::Null;
    wait_until(Duration::from_secs(10), "the state file", || {
        file = state_file(&state_dir).unwrap_or(Value::Null);
        persisted_hosts(&file) == ["web.example.com"]
    });
    let mut objects = 0;
    for (kind, list) in file.as_object().expect("a state file is an object") {
        for o in list.as_array().into_iter().flatten() {
            objects += 1;
            assert!(o["metadata"].get("managedFields").is_none(), "{kind}: {o}");
        }
    }
    assert!(objects >= 4, "the Ingress, its class, Service and slice: {file}");
    let annotations = &file["ingresses"][0]["metadata"]["annotations"];
    assert_eq!(
        annotations,
        &json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"}),
        "{file}"
    );
}

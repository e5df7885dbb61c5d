//! Change propagation, end to end: the time from an EndpointSlice change (or an HTTPRoute
//! change) written to the API server until kedge sends every new request to the new endpoint.
//!
//! ```sh
//! cargo bench --bench propagation            # every scenario, Markdown table on stdout
//! cargo bench --bench propagation -- small   # only the scenarios whose name contains "small"
//! cargo bench --bench propagation -- gw      # only the Gateway API (HTTPRoute) scenarios
//! ```
//!
//! Setup: the integration tests' harness (`tests/it/support`): the fixture API server (real
//! list/watch over HTTPS, reached by kube through a kubeconfig), the release `kedge` binary with
//! 2 workers (io_uring, access log off), two echo upstreams standing in for pods (`pod-0` on
//! 127.0.0.1, `pod-1` on 127.0.0.2, one port), and 2 load threads sending keep-alive GETs without
//! pause for the whole run.
//!
//! One sample: wait 50 ms (so that samples do not share a debounce window; 0.8 to 1.8 s in the
//! `sporadic` scenarios, see below), `apply` an
//! EndpointSlice that lists only the other pod, then send GETs on fresh connections back to back
//! (SO_REUSEPORT spreads fresh connections over both workers) until 16 in a row are answered by
//! the new pod. Reported per sample:
//! - **first**: apply → the first request (sent after the apply) answered by the new pod;
//! - **all**: apply → the first request of the final run of 16, i.e. from when on every request,
//!   on any worker, went to the new pod (requests still in flight on the old table excepted).
//!
//! Scenarios: `small` (one Ingress in the cluster) and `10k` (the same plus 10,000 other
//! Ingresses, each with its own Service and EndpointSlice of 5 endpoints: kedge rebuilds the
//! whole table on every change, so this is propagation including a full 10k rebuild). The
//! `10k` scenario also reports kedge's start (process spawn → listening, after the first full
//! sync), its sync and build times from its log, and its peak RSS (`VmHWM`).
//!
//! `ingress-change` scenarios (`small`, and `big` with the same 10,000 others): the change is the
//! probe Ingress itself, its backend moved between Services `probe-0` (pod-0) and `probe-1`
//! (pod-1): an update that rebuilds only the probe host.
//!
//! `secret-change` scenarios (`small`, `10k` with the same 10,000 others, none with TLS): kedge
//! has a TLS listener and the probe Ingress a `tls` section naming Secret `probe-tls`; a sample
//! rotates it (a new certificate for the probe host, from the same test CA) and then makes TLS
//! handshakes on fresh connections until 16 in a row get the new certificate (first / all as
//! above). `secret-unread` scenarios: a sample applies an Opaque Secret nothing reads (a new one
//! each time) and waits until kedge logs that its watch saw it (first = all = that wait); what
//! matters there is the control thread's CPU. `secret-appear 10k`: before the clock, `probe-tls`
//! is deleted and kedge waited for until the probe host has no certificate of its own; the
//! sample creates it with a new certificate (cert-manager's flow) and makes handshakes until 16
//! in a row get it. `secret-gone 10k`: before the clock a new certificate is applied and waited
//! for; the sample deletes the Secret, until 16 handshakes in a row no longer get it (the
//! handshake fails or another certificate is served). In both, a sample's control thread CPU
//! covers two Secret changes (the one before the clock and the one measured).
//!
//! Every scenario also notes what kedge logged during its slowest sample and the 200 ms before
//! it (builds with their wall and CPU time, state file writes, which kedge logs at debug here,
//! and the like), how many state file writes there were during the samples, and the p50 of the
//! samples that met one against the others': what a p99 that stands out met.
//!
//! Scenarios whose change kedge logs at info (all but the EndpointSlice ones) also split the
//! samples into where their time went: the watch (the change written → kedge's watch logged
//! it), the build (→ "route table published") and the pick-up (→ the first request answered).
//!
//! Every scenario also reports the CPU time kedge's control thread (`kedge-control`) used
//! during the samples, per sample (from `/proc/PID/task/TID/schedstat`), 300 ms after the last.
//!
//! Gateway API scenarios (`gw`): the probe host is an HTTPRoute of Gateway `default/edge`, whose
//! HTTP listener is kedge's own port (applied once kedge listens), and the 10,000 others are
//! HTTPRoutes attached to it. `gw-endpoints` changes the EndpointSlice behind the probe route, as
//! above; `gw-route` changes the probe HTTPRoute itself: its backendRef moves between Services
//! `probe-0` (pod-0) and `probe-1` (pod-1), a change that is not endpoints-only: an update of
//! the routes it touches. `gw-route-settled` starts its samples once kedge has written the
//! status of every route and made the build that follows once those writes are quiet (steady
//! state); `gw-route` starts them while the writes are still coming. Gateway scenarios also
//! report how many HTTPRoute status writes kedge made during the samples.
//!
//! `sporadic` scenarios (`gw-route-sporadic 10k`, `ingress-change-sporadic big`): the same
//! changes as `gw-route` (after the statuses are written) and `ingress-change`, 0.8 to 1.8 s
//! apart, each alone: the gaps sweep over the second after a change at which kedge used to
//! make a build from nothing once changes were quiet, which a change arriving then waits for.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use support::{Client, Driver, FakeApi, Kedge, TempDir, Upstream};

const HOST: &str = "probe.example.com";
/// Requests in a row the new pod must answer.
const RUN: usize = 16;

fn ingress(ns: &str, name: &str, host: &str, svc: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"ingressClassName": "kedge", "rules": [{"host": host, "http": {"paths": [
               {"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": svc, "port": {"name": "http"}}}}]}}]}})
}

/// HTTPRoute `name` in `ns` on Gateway `default/edge` for `host`, to Service `svc` port 80.
fn http_route(ns: &str, name: &str, host: &str, svc: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"parentRefs": [{"name": "edge", "namespace": "default"}], "hostnames": [host],
                    "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                               "backendRefs": [{"name": svc, "port": 80}]}]}})
}

fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(ns: &str, svc: &str, port: u16, ips: &[String]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-abc"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": endpoints})
}

/// Keep-alive GETs from `threads` threads until stopped; counts answers and non-200s.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut c) = Client::try_connect(addr) else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let req = format!("GET /load HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
                            let answered = c.try_send(req.as_bytes()).and_then(|()| c.try_read_response(false));
                            match answered {
                                Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            };
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the threads; (answered, failed).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// One GET on a fresh connection: the upstream that answered.
fn probe(addr: SocketAddr) -> String {
    let resp = Client::connect(addr).get(HOST, "/probe");
    assert_eq!(resp.status, 200, "probe: {}", resp.text());
    resp.upstream().unwrap_or("?").to_owned()
}

/// What one sample changes.
#[derive(Clone, Copy, PartialEq)]
enum Change {
    /// The probe Service's EndpointSlice lists only the other pod.
    Endpoints,
    /// The probe HTTPRoute's backendRef moves to the other pod's Service.
    Route,
    /// The probe Ingress's backend moves to the other pod's Service (an update of its host).
    Ingress,
    /// The probe host's certificate (Secret `probe-tls`) is replaced by a new one.
    Certificate,
    /// An Opaque Secret nothing reads is applied (a new one per sample).
    Unread,
    /// The probe host's certificate Secret, deleted before the clock starts (and no longer
    /// served), is created again with a new certificate (cert-manager's flow: the Ingress
    /// first, its Secret later).
    Appear,
    /// The probe host's certificate Secret, created before the clock starts (and served), is
    /// deleted: done when handshakes no longer get it.
    Gone,
}

/// The TLS side of the `secret-*` scenarios: the CA the probe host's certificates come from.
struct Tls {
    ca: support::tls::TestCa,
    client: Arc<rustls::ClientConfig>,
}

/// The certificate a TLS handshake for the probe host gets.
fn handshake(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    Client::connect_tls(addr, Arc::clone(client), HOST).peer_leaf().to_vec()
}

/// The certificate a TLS handshake for the probe host gets, `None` when the handshake fails
/// (no certificate of its own: the default one, not trusted by the test client, or none).
fn try_handshake(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> Option<Vec<u8>> {
    Client::try_connect_tls(addr, Arc::clone(client), HOST)
        .ok()
        .map(|c| c.peer_leaf().to_vec())
}

/// Nanoseconds of CPU the thread named `name` of process `pid` has used (`schedstat`'s first
/// field).
fn thread_cpu_ns(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).expect("schedstat");
            return stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .expect("a number");
        }
    }
    panic!("no thread {name} in process {pid}");
}

/// The routes the scenario's hosts are: Ingresses or HTTPRoutes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ingress,
    Gateway,
}

/// One change: apply, then probe until `RUN` in a row reach `want`. (first, all) after the apply.
/// Sample `s` of a `secret-*` scenario (`tls`): a new certificate, or a new Secret nothing reads.
fn sample(
    api: &FakeApi,
    kedge: &Kedge,
    port: u16,
    (want, s): (usize, usize),
    change: Change,
    tls: Option<&Tls>,
) -> (Duration, Duration, SystemTime) {
    let ip = format!("127.0.0.{}", want + 1);
    let svc = format!("probe-{want}");
    let want = format!("pod-{want}");
    // Made before the clock starts.
    let leaf = matches!(change, Change::Certificate | Change::Appear | Change::Gone)
        .then(|| tls.expect("TLS").ca.leaf(&[HOST]));
    let unread = format!("unread-{s}");
    // The state the change starts from, reached before the clock starts: for `Appear` no
    // certificate of its own for the probe host, for `Gone` the new one served.
    if let (Some(leaf), Some(tls)) = (&leaf, tls) {
        let served = || try_handshake(kedge.tls_addr(), &tls.client);
        if change == Change::Appear {
            let before = served();
            api.delete("secrets", Some("default"), "probe-tls");
            support::wait_until(Duration::from_secs(30), "the certificate no longer served", || {
                served() != before
            });
            std::thread::sleep(Duration::from_millis(50));
        } else if change == Change::Gone {
            api.apply("secrets", leaf.secret("default", "probe-tls"));
            support::wait_until(Duration::from_secs(30), "the certificate served", || {
                served().is_some_and(|l| l == leaf.der.to_vec())
            });
            // What that set off (its debounce, its build) is done before the clock starts.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let (t0, wall) = (Instant::now(), SystemTime::now());
    match change {
        Change::Endpoints => api.apply("endpointslices", slice("default", "probe", port, &[ip])),
        Change::Route => api.apply("httproutes", http_route("default", "probe", HOST, &svc)),
        Change::Ingress => api.apply("ingresses", ingress("default", "probe", HOST, &svc)),
        Change::Certificate | Change::Appear => {
            api.apply("secrets", leaf.as_ref().expect("a leaf").secret("default", "probe-tls"))
        }
        Change::Gone => {
            api.delete("secrets", Some("default"), "probe-tls");
            Value::Null
        }
        Change::Unread => api.apply(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": unread, "namespace": "default"}, "data": {"key": "dmFsdWU="}}),
        ),
    };
    if change == Change::Unread {
        kedge.wait_log(&format!("object=\"default/{unread}\""), Duration::from_secs(30));
        return (t0.elapsed(), t0.elapsed(), wall);
    }
    let (mut first, mut run_start, mut in_row) = (None, Duration::ZERO, 0);
    while in_row < RUN {
        let sent = t0.elapsed();
        let now = match (&leaf, tls) {
            (Some(leaf), Some(tls)) if change == Change::Gone => {
                try_handshake(kedge.tls_addr(), &tls.client).is_none_or(|l| l != leaf.der.to_vec())
            }
            // (Until it appears, the host's handshakes may fail.)
            (Some(leaf), Some(tls)) if change == Change::Appear => {
                try_handshake(kedge.tls_addr(), &tls.client).is_some_and(|l| l == leaf.der.to_vec())
            }
            (Some(leaf), Some(tls)) => handshake(kedge.tls_addr(), &tls.client) == leaf.der.to_vec(),
            _ => probe(kedge.addr()) == want,
        };
        if now {
            first.get_or_insert(sent);
            if in_row == 0 {
                run_start = sent;
            }
            in_row += 1;
        } else {
            in_row = 0;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the change never propagated");
    }
    (first.expect("seen"), run_start, wall)
}

/// When a kedge log line was written: its leading RFC 3339 timestamp (UTC, to the microsecond).
fn logged_at(line: &str) -> Option<SystemTime> {
    let at = line.trim_start().split(' ').next()?.strip_suffix('Z')?;
    let (date, time) = at.split_once('T')?;
    let num = |s: &str| s.parse::<i64>().ok();
    let mut d = date.split('-').map(num);
    let days = kedge::time::days_from_civil(d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(num);
    let secs = days * 86_400 + t.next()?? * 3600 + t.next()?? * 60 + t.next()??;
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?) + Duration::from_micros(micros))
}

/// kedge's log lines from `from` to `to` (wall clock), each with its offset from `from` in ms.
fn logged_between(logs: &[String], from: SystemTime, to: SystemTime) -> Vec<String> {
    logs.iter()
        .filter_map(|l| {
            let at = logged_at(l)?;
            let offset = at.duration_since(from).ok()?;
            let rest = l.trim_start().split_once(' ')?.1.trim();
            (at <= to).then(|| format!("+{} ms {rest}", ms(offset)))
        })
        .collect()
}

/// The state file writes kedge logged (at debug), as wall-clock intervals: from its log line
/// less `took_ms` to the line.
fn state_writes(logs: &[String]) -> Vec<(SystemTime, SystemTime)> {
    logs.iter()
        .filter(|l| l.contains("cluster state persisted"))
        .filter_map(|l| {
            let end = logged_at(l)?;
            let took = logged_in(std::slice::from_ref(l), "cluster state persisted", "took_ms")
                .first()
                .copied()?;
            Some((end - Duration::from_secs_f64(took / 1e3), end))
        })
        .collect()
}

/// Where each sample's time went, from kedge's log: **watch**, the change written → kedge's
/// watch logged it ("applied"/"deleted" of the probe object, at info for every kind but
/// EndpointSlices); **build**, that line → the next "route table published" (the build, the
/// swap and the line itself); **pick-up**, that line → the first request answered by the new
/// state (`first`; negative when a worker answered from the new table before the line was
/// written). p50 / p90 / max of each over the samples that have both lines; `None` for the
/// scenarios whose change is not logged at info.
fn phases(logs: &[String], walls: &[SystemTime], first: &[Duration]) -> Option<String> {
    let probe = |l: &String| {
        (l.contains(" applied ") || l.contains(" deleted "))
            && (l.contains("object=\"default/probe\"") || l.contains("object=\"default/probe-tls\""))
    };
    let signed_ms = |from: SystemTime, to: SystemTime| match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    };
    let (mut watch, mut build, mut pickup) = (Vec::new(), Vec::new(), Vec::new());
    for (&wall, &first) in walls.iter().zip(first) {
        let Some((i, seen)) = logs
            .iter()
            .enumerate()
            .filter(|(_, l)| probe(l))
            .find_map(|(i, l)| logged_at(l).filter(|&at| at >= wall).map(|at| (i, at)))
        else {
            continue;
        };
        let Some(published) = logs[i..]
            .iter()
            .filter(|l| l.contains("route table published"))
            .find_map(|l| logged_at(l))
        else {
            continue;
        };
        watch.push(signed_ms(wall, seen));
        build.push(signed_ms(seen, published));
        pickup.push(signed_ms(published, wall + first));
    }
    if watch.is_empty() {
        return None;
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        format!("{:.1} / {:.1} / {:.1}", pct(v, 50.0), pct(v, 90.0), v[v.len() - 1])
    };
    Some(format!(
        "where the time went ({} samples; p50 / p90 / max ms): watch {}; build {}; pick-up {}",
        watch.len(),
        summary(&mut watch),
        summary(&mut build),
        summary(&mut pickup),
    ))
}

/// Nearest-rank percentile of sorted `v`.
fn pct<T: Copy>(v: &[T], p: f64) -> T {
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The numbers logged as `key=value` (quoted or not) in the lines containing `what`.
fn logged(kedge: &Kedge, what: &str, key: &str) -> Vec<f64> {
    logged_in(&kedge.logs(), what, key)
}

/// [`logged`] in `lines`.
fn logged_in(lines: &[String], what: &str, key: &str) -> Vec<f64> {
    let pat = format!("{key}=");
    lines
        .iter()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let v = &l[l.find(&pat)? + pat.len()..];
            let v = v.trim_start_matches('"');
            v[..v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len())]
                .parse()
                .ok()
        })
        .collect()
}

struct Outcome {
    name: &'static str,
    samples: usize,
    first: Vec<Duration>,
    all: Vec<Duration>,
    build_ms: Vec<f64>,
    load: (usize, usize),
    /// CPU of kedge's control thread per sample.
    control_cpu: Duration,
    notes: Vec<String>,
}

/// The namespace and name of the `i`th object besides the probe (Ingress or HTTPRoute, with
/// its Service and EndpointSlice).
fn other(i: usize) -> (String, String) {
    (format!("ns-{}", i % 100), format!("app-{i}"))
}

/// When the samples start and how far apart they are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// 50 ms apart, from as soon as the probe is served (Gateway scenarios: while kedge's 10k
    /// status writes, and their watch events, are still coming).
    Busy,
    /// 50 ms apart, once kedge has written the status of every route and made the build that
    /// follows once its status writes are quiet (steady state).
    Settled,
    /// As `Settled`, but 0.8 to 1.8 s apart (sweeping over the time after a change at which
    /// kedge makes a build once changes are quiet): sporadic changes, each alone.
    Sporadic,
}

impl Pace {
    /// The wait before sample `s`.
    fn gap(self, s: usize) -> Duration {
        match self {
            Pace::Busy | Pace::Settled => Duration::from_millis(50),
            Pace::Sporadic => Duration::from_millis(800 + (s as u64 * 347) % 1000),
        }
    }
}

fn scenario(name: &'static str, extra: usize, samples: usize, kind: Kind, change: Change, pace: Pace) -> Outcome {
    let (pods, port) = Upstream::pods("pod", 2);
    let api = FakeApi::start();
    let tls = matches!(
        change,
        Change::Certificate | Change::Unread | Change::Appear | Change::Gone
    )
    .then(|| {
        let ca = support::tls::TestCa::new();
        let client = ca.client();
        Tls { ca, client }
    });
    if let Some(tls) = &tls {
        api.apply("secrets", tls.ca.leaf(&[HOST]).secret("default", "probe-tls"));
    }
    api.apply(
        "ingressclasses",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
               "metadata": {"name": "kedge"}, "spec": {"controller": "kedge.dev/ingress-controller"}}),
    );
    api.apply("services", service("default", "probe"));
    api.apply("endpointslices", slice("default", "probe", port, &["127.0.0.1".into()]));
    if change != Change::Endpoints {
        // One Service per pod, for the route (or Ingress) changes to move between.
        for p in 0..2 {
            let svc = format!("probe-{p}");
            api.apply("services", service("default", &svc));
            api.apply(
                "endpointslices",
                slice("default", &svc, port, &[format!("127.0.0.{}", p + 1)]),
            );
        }
    }
    if kind == Kind::Gateway {
        api.install_gateway_api();
        api.apply(
            "gatewayclasses",
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
                   "metadata": {"name": "kedge"}, "spec": {"controllerName": "kedge.dev/gateway-controller"}}),
        );
        api.apply("httproutes", http_route("default", "probe", HOST, "probe"));
    } else {
        let mut probe = ingress("default", "probe", HOST, "probe");
        if tls.is_some() {
            probe["spec"]["tls"] = json!([{"hosts": [HOST], "secretName": "probe-tls"}]);
            // The load and the probe stay on plain HTTP.
            probe["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/ssl-redirect": "false"});
        }
        api.apply("ingresses", probe);
    }
    for i in 0..extra {
        let (ns, name) = other(i);
        let ips: Vec<String> = (0..5)
            .map(|j| {
                let k = i * 5 + j + 1;
                format!("10.{}.{}.{}", (k >> 16) & 255, (k >> 8) & 255, k & 255)
            })
            .collect();
        api.apply("services", service(&ns, &name));
        api.apply("endpointslices", slice(&ns, &name, 8080, &ips));
        let host = format!("{name}.{ns}.example.com");
        match kind {
            Kind::Ingress => api.apply("ingresses", ingress(&ns, &name, &host, &name)),
            Kind::Gateway => api.apply("httproutes", http_route(&ns, &name, &host, &name)),
        };
    }

    let dir = TempDir::new("propagation");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let spawned = Instant::now();
    let mut setup = Kedge::setup(Driver::IoUring).workers(2);
    if tls.is_some() {
        setup = setup.tls();
    }
    // KEDGE_BENCH_LOG: another log level for kedge (more of it at debug, to see what the
    // slowest sample met); the state file writes must stay at debug for the split below.
    let level = std::env::var("KEDGE_BENCH_LOG").unwrap_or_else(|_| "info".into());
    let kedge = setup.start(&format!(
        "[log]\naccess_log = false\nlevel = \"{level},kedge::control::last_known_good=debug\"\n\n[[cluster]]\nname = \"bench\"\nkubeconfig = \"{}\"\nsync_timeout = \"60s\"\n",
        kubeconfig.display()
    ));
    let started = spawned.elapsed();
    if kind == Kind::Gateway {
        // The Gateway's listener is kedge's port, known now: every route attaches in one build.
        api.apply(
            "gateways",
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                   "metadata": {"name": "edge", "namespace": "default"},
                   "spec": {"gatewayClassName": "kedge", "listeners": [
                       {"name": "http", "port": kedge.addr().port(), "protocol": "HTTP",
                        "allowedRoutes": {"namespaces": {"from": "All"}}}]}}),
        );
        support::wait_until(Duration::from_secs(60), "the probe HTTPRoute routed", || {
            Client::try_connect(kedge.addr())
                .and_then(|mut c| {
                    c.try_send(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())?;
                    c.try_read_response(false)
                })
                .is_ok_and(|r| r.status == 200)
        });
    }
    let mut notes = Vec::new();
    // The HTTPRoutes (namespace, name): the probe, then the others.
    let names: Vec<(String, String)> = if kind == Kind::Gateway {
        std::iter::once(("default".to_owned(), "probe".to_owned()))
            .chain((0..extra).map(other))
            .collect()
    } else {
        Vec::new()
    };
    if pace != Pace::Busy && kind == Kind::Gateway {
        let waited = Instant::now();
        let mut next = 0;
        support::wait_until(Duration::from_secs(300), "kedge's status write of every route", || {
            while next < names.len() && api.status_writes_of("httproutes", Some(&names[next].0), &names[next].1) > 0 {
                next += 1;
            }
            next == names.len()
        });
        let written = waited.elapsed();
        let before = kedge.logs().len();
        support::wait_until(
            Duration::from_secs(60),
            "the build once status writes are quiet",
            || {
                kedge.logs()[before..].iter().any(|l| {
                    l.contains("route table published") && (l.contains("settle") || l.contains("why=\"status\""))
                })
            },
        );
        // The status view of that build: how many routes it read, and what it took.
        support::wait_until(Duration::from_secs(10), "its status view", || {
            kedge.logs()[before..]
                .iter()
                .any(|l| l.contains("Gateway API status view"))
        });
        let field = |key: &str| {
            logged_in(&kedge.logs()[before..], "Gateway API status view", key)
                .first()
                .map_or("?".into(), f64::to_string)
        };
        notes.push(format!(
            "statuses of {} routes written {} ms after the probe was served; the build once quiet {} ms later; \
             its status view read {} routes in {} ms",
            names.len(),
            ms(written),
            ms(waited.elapsed() - written),
            field("routes_read"),
            field("view_ms"),
        ));
    }
    if extra > 0 {
        let synced = logged(&kedge, "cluster synced", "took_ms");
        let built = logged(&kedge, "route table published", "build_ms");
        notes.push(format!(
            "start with {} {}: spawn → listening {} ms (first full sync {} ms, first build {} ms); kedge \
             VmHWM after start {:.1} MB",
            extra + 1,
            if kind == Kind::Gateway {
                "HTTPRoutes (Gateway applied after)"
            } else {
                "Ingresses"
            },
            ms(started),
            synced.first().map_or("?".into(), |v| format!("{v:.0}")),
            built.last().map_or("?".into(), |v| format!("{v:.1}")),
            kedge.peak_rss() as f64 / (1024.0 * 1024.0)
        ));
    }
    assert_eq!(probe(kedge.addr()), "pod-0");
    let builds_before = logged(&kedge, "route table published", "build_ms").len();
    let logs_before = kedge.logs().len();
    // kedge's HTTPRoute status writes so far (a write per sample is the probe route's).
    let route_writes = || -> usize {
        names
            .iter()
            .map(|(ns, name)| api.status_writes_of("httproutes", Some(ns), name))
            .sum()
    };
    let writes_before = route_writes();

    let load = Load::start(kedge.addr(), 2);
    let (mut first, mut all, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu_before = 0;
    // One warm-up sample (not counted), then the measured ones, alternating pods.
    for s in 0..=samples {
        std::thread::sleep(pace.gap(s));
        if s == 1 {
            // After the warm-up sample's work (and its debounce) is done.
            cpu_before = thread_cpu_ns(kedge.pid(), "kedge-control");
        }
        let (f, a, wall) = sample(&api, &kedge, port, ((s + 1) % 2, s), change, tls.as_ref());
        if s > 0 {
            first.push(f);
            all.push(a);
            walls.push(wall);
        }
    }
    // What the last sample set off (a debounced build, a change that builds nothing) is done.
    std::thread::sleep(Duration::from_millis(300));
    let control_cpu =
        Duration::from_nanos((thread_cpu_ns(kedge.pid(), "kedge-control") - cpu_before) / samples.max(1) as u64);
    let load = load.finish();
    let build_ms = logged(&kedge, "route table published", "build_ms")[builds_before..].to_vec();
    // What the builds during the samples were (a full rebuild there delays the sample it meets).
    let mut why = std::collections::BTreeMap::<String, usize>::new();
    for l in kedge
        .logs()
        .iter()
        .filter(|l| l.contains("route table published"))
        .skip(builds_before)
    {
        let w = l
            .split("why=")
            .nth(1)
            .and_then(|w| w.split_whitespace().next())
            .unwrap_or("?");
        *why.entry(w.trim_matches('"').to_owned()).or_default() += 1;
    }
    notes.push(format!("builds during the samples, by why: {why:?}"));
    if kind == Kind::Gateway {
        notes.push(format!(
            "HTTPRoute status writes by kedge: {writes_before} before the samples, {} during them",
            route_writes() - writes_before
        ));
    }
    // What came just before each full build during the samples (the log lines of object
    // changes, watch restarts and state changes; the endpoint changes are logged at debug).
    let logs = kedge.logs();
    let published: Vec<usize> = (0..logs.len())
        .filter(|&i| logs[i].contains("route table published"))
        .collect();
    let full = |i: usize| logs[i].contains("why=\"watch\"") || logs[i].contains("why=watch");
    // The first two (a scenario whose every change is a full build has one per sample).
    for w in published
        .windows(2)
        .skip(builds_before.saturating_sub(1))
        .filter(|w| full(w[1]))
        .take(2)
    {
        let before: Vec<&str> = logs[w[0] + 1..w[1]].iter().rev().take(4).map(|l| l.trim()).collect();
        notes.push(format!("a full build during the samples came after: {before:?}"));
    }
    // What kedge logged during the slowest sample (and the 200 ms before it): a build, a state
    // file write, a status view that met it. And whether the samples that met a state file
    // write (its encoding and I/O, on a thread of its own) were slower than the others.
    let writes = state_writes(&logs[logs_before..]);
    let met_write = |i: usize| {
        let end = walls[i] + all[i];
        writes.iter().any(|&(from, to)| from <= end && to >= walls[i])
    };
    if let Some((i, slowest)) = all.iter().enumerate().max_by_key(|(_, d)| **d) {
        let from = walls[i] - Duration::from_millis(200);
        let lines = logged_between(&logs, from, walls[i] + *slowest);
        notes.push(format!(
            "the slowest sample ({} ms; a state file write {}): kedge logged, in ms from 200 ms before it: {lines:#?}",
            ms(*slowest),
            if met_write(i) { "met it" } else { "did not meet it" },
        ));
    }
    if let Some(phases) = phases(&logs[logs_before..], &walls, &first) {
        notes.push(phases);
    }
    let (mut met, mut clear): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for (i, d) in all.iter().enumerate() {
        if met_write(i) { &mut met } else { &mut clear }.push(*d);
    }
    met.sort();
    clear.sort();
    let median = |v: &[Duration]| if v.is_empty() { "-".to_owned() } else { ms(pct(v, 50.0)) };
    notes.push(format!(
        "state file writes during the samples: {} (took_ms max {:.0}); samples that met one: {}, all p50 {} ms / max {} ms; the others: {}, p50 {} ms / max {} ms",
        writes.len(),
        writes.iter().map(|(f, t)| t.duration_since(*f).unwrap_or_default().as_secs_f64() * 1e3).fold(0.0, f64::max),
        met.len(),
        median(&met),
        met.last().map_or("-".to_owned(), |d| ms(*d)),
        clear.len(),
        median(&clear),
        clear.last().map_or("-".to_owned(), |d| ms(*d)),
    ));
    if extra > 0 {
        notes.push(format!(
            "kedge VmHWM after the samples: {:.1} MB",
            kedge.peak_rss() as f64 / (1024.0 * 1024.0)
        ));
    }
    drop(kedge);
    drop(pods);
    first.sort();
    all.sort();
    // Every sample, so that runs can be pooled: with 30 samples a run's p99 is its largest.
    notes.push(format!(
        "first, every sample in ms: {}",
        first
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Outcome {
        name,
        samples,
        first,
        all,
        build_ms,
        load,
        control_cpu,
        notes,
    }
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let mut results = Vec::new();
    let scenarios = [
        ("small: 1 Ingress", 0, 40, Kind::Ingress, Change::Endpoints, Pace::Busy),
        (
            "10k: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Endpoints,
            Pace::Busy,
        ),
        (
            "ingress-change small: 1 Ingress",
            0,
            40,
            Kind::Ingress,
            Change::Ingress,
            Pace::Busy,
        ),
        (
            "ingress-change big: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Ingress,
            Pace::Busy,
        ),
        (
            "gw-endpoints small: 1 HTTPRoute",
            0,
            40,
            Kind::Gateway,
            Change::Endpoints,
            Pace::Busy,
        ),
        (
            "gw-route small: 1 HTTPRoute",
            0,
            40,
            Kind::Gateway,
            Change::Route,
            Pace::Busy,
        ),
        (
            "gw-endpoints 10k: 10,001 HTTPRoutes, 50k endpoints",
            10_000,
            30,
            Kind::Gateway,
            Change::Endpoints,
            Pace::Busy,
        ),
        (
            "gw-route 10k: 10,001 HTTPRoutes, 50k endpoints",
            10_000,
            30,
            Kind::Gateway,
            Change::Route,
            Pace::Busy,
        ),
        (
            "gw-route-settled 10k: 10,001 HTTPRoutes, 50k endpoints, statuses written",
            10_000,
            30,
            Kind::Gateway,
            Change::Route,
            Pace::Settled,
        ),
        (
            "gw-route-sporadic 10k: 10,001 HTTPRoutes, 50k endpoints, statuses written, changes 0.8-1.8 s apart",
            10_000,
            30,
            Kind::Gateway,
            Change::Route,
            Pace::Sporadic,
        ),
        (
            "ingress-change-sporadic big: 10,001 Ingresses, 50k endpoints, changes 0.8-1.8 s apart",
            10_000,
            30,
            Kind::Ingress,
            Change::Ingress,
            Pace::Sporadic,
        ),
        (
            "secret-change small: 1 Ingress with TLS",
            0,
            40,
            Kind::Ingress,
            Change::Certificate,
            Pace::Busy,
        ),
        (
            "secret-change 10k: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Certificate,
            Pace::Busy,
        ),
        (
            "secret-unread 10k: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Unread,
            Pace::Busy,
        ),
        (
            "secret-appear 10k: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Appear,
            Pace::Busy,
        ),
        (
            "secret-gone 10k: 10,001 Ingresses, 50k endpoints",
            10_000,
            30,
            Kind::Ingress,
            Change::Gone,
            Pace::Busy,
        ),
    ];
    for (name, extra, samples, kind, change, pace) in scenarios {
        if wanted(name) {
            eprintln!("running: {name}");
            results.push(scenario(name, extra, samples, kind, change, pace));
        }
    }

    println!(
        "| scenario | samples | first: p50 / p99 / max ms | all: p50 / p99 / max ms | kedge build_ms p50 / max | control \
         thread CPU ms per sample | load requests (failed) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &results {
        let mut b = r.build_ms.clone();
        b.sort_by(f64::total_cmp);
        // No build at all is what a change nothing reads should cost (`secret-unread`).
        let builds = match b.as_slice() {
            [] => "no build".to_owned(),
            _ => format!("{:.2} / {:.2}", b[b.len() / 2], b[b.len() - 1]),
        };
        println!(
            "| {} | {} | {} / {} / {} | {} / {} / {} | {} | {:.2} | {} ({}) |",
            r.name,
            r.samples,
            ms(pct(&r.first, 50.0)),
            ms(pct(&r.first, 99.0)),
            ms(pct(&r.first, 100.0)),
            ms(pct(&r.all, 50.0)),
            ms(pct(&r.all, 99.0)),
            ms(pct(&r.all, 100.0)),
            builds,
            r.control_cpu.as_secs_f64() * 1e3,
            r.load.0,
            r.load.1,
        );
    }
    for r in &results {
        for n in &r.notes {
            println!("\n{}: {n}", r.name);
        }
    }
    println!(
        "\nfirst = apply → first request answered by the new pod; all = apply → start of the run of {RUN} fresh-connection \
         requests in a row answered by it. With {} samples or fewer, p99 is the largest sample.",
        results.iter().map(|r| r.samples).max().unwrap_or(0)
    );
}

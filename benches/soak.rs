//! Soak: kedge under mixed, paced load for `--minutes N` (default 30) while the cluster changes
//! under it the way a live one does: a rolling deployment of the pods and TLS Secret rotation.
//!
//! ```sh
//! cargo bench --bench soak                   # 30 minutes
//! cargo bench --bench soak -- --minutes 2    # a short run while developing
//! ```
//!
//! Setup (the integration tests' harness, `tests/it/support`): the fixture API server, the
//! release `kedge` binary with 2 workers (io_uring, access log off) following it, and Service
//! `app` whose pods are echo upstreams on 127.0.0.x (one port). Ingresses: `plain.example.com`
//! (no TLS), `secure.example.com` and `api.example.com` (TLS from the `kubernetes.io/tls`
//! Secrets `secure-tls` and `api-tls`, both signed by one test CA).
//!
//! Load (paced, about 1,000 requests/s in all; it does not need the machine to itself), one
//! thread per class, every answer must be a 200 (101 for the upgrade):
//! - `h1-keepalive`: GETs on keep-alive connections (2 threads);
//! - `h1-new`: one GET per new connection;
//! - `h1-post`: POSTs of 0 B, 1 KiB, 64 KiB and 256 KiB on a keep-alive connection;
//! - `tls-keepalive`: GETs on a keep-alive TLS connection, reconnecting every 1,000 requests;
//! - `tls-resumed`: one GET per new TLS connection, resuming the session;
//! - `tls-full`: one GET per new TLS connection with a full handshake;
//! - `h2`: HTTP/2 over TLS, GETs and 64 KiB POSTs, a new connection every 500 requests;
//! - `upgrade`: a WebSocket-style upgrade on a new connection, 16 bytes echoed through the
//!   tunnel, then closed.
//!
//! Churn: every 5 s a new pod starts and is added to the EndpointSlice (ready); 1 s later the
//! oldest of the 3 live ones is marked terminating (not ready, not serving); 1 s later it is
//! removed from the slice; it is stopped 2 s after that. Every 30 s one of the two TLS Secrets
//! is replaced by a new certificate for the same host (same CA); a new handshake must then see
//! the new certificate.
//!
//! Every 10 s a sample: kedge's VmRSS and open fds (`/proc/PID/fd`), requests ok / failed per
//! class since the last sample, and the p99 latency of all requests in the interval. At the end:
//! one table row per minute, and a verdict: failed requests (must be 0), RSS drift (the mean of
//! the last sixth of the run against that of its second sixth, minutes 25–30 against 5–10 in 30
//! minutes: at most 8 MB), fd drift (the largest count of the last sixth against that of the
//! second sixth: at most 8 more), and fds after the load stops (every client closed, pods
//! stopped) within 8 of the count before it started, within 90 s (kedge's upstream idle timeout
//! of 60 s and its 5 s sweep closing the last pooled connections). Exit status 1 when the verdict fails.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::h2_client::H2;
use support::h2_client::H2Options;
use support::objects::{endpoint, ingress, ingress_class, service, slice_of};
use support::tls::TestCa;
use support::{Client, Driver, FakeApi, Handler, Kedge, TempDir, Upstream};

const PLAIN: &str = "plain.example.com";
/// TLS hosts and their Secrets.
const TLS_HOSTS: [(&str, &str); 2] = [("secure.example.com", "secure-tls"), ("api.example.com", "api-tls")];
const CLASSES: [&str; 9] = [
    "h1-keepalive",
    "h1-new",
    "h1-post",
    "tls-keepalive",
    "tls-resumed",
    "tls-full",
    "h2",
    "upgrade",
    "probe",
];
/// Live pods in the rolling deployment.
const LIVE: usize = 3;
const SAMPLE: Duration = Duration::from_secs(10);
const TOLERANCE_MB: f64 = 8.0;
const TOLERANCE_FDS: i64 = 8;
/// How long the fds may take to come back after the load: kedge's default upstream idle
/// timeout (60 s) and its sweep period (5 s), with a margin.
const QUIET: Duration = Duration::from_secs(90);

/// Counters shared by the load threads, taken and reset at every sample.
struct Stats {
    ok: [AtomicU64; CLASSES.len()],
    failed: [AtomicU64; CLASSES.len()],
    /// Latencies (µs) of the interval.
    latencies: Mutex<Vec<u32>>,
    /// The first failures, for the report.
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, class: usize, started: Instant, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok[class].fetch_add(1, Relaxed);
                let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
                self.latencies.lock().unwrap().push(us);
            }
            Err(e) => {
                self.failed[class].fetch_add(1, Relaxed);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(format!(
                        "{} (took {:.1} s): {e}",
                        CLASSES[class],
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    }
}

fn status_ok(r: std::io::Result<support::Response>, want: u16) -> Result<support::Response, String> {
    match r {
        Ok(r) if r.status == want => Ok(r),
        Ok(r) => Err(format!(
            "status {}: {}",
            r.status,
            r.text().chars().take(200).collect::<String>()
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn get(c: &mut Client, host: &str) -> Result<(), String> {
    c.try_send(format!("GET /soak HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    status_ok(c.try_read_response(false), 200).map(drop)
}

fn get_close(c: &mut Client, host: &str) -> Result<(), String> {
    c.try_send(format!("GET /soak HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    status_ok(c.try_read_response(false), 200).map(drop)
}

/// Runs `step` every `period` (paced: a slow step delays the next, none is skipped) until
/// `stop`.
fn paced(stop: &AtomicBool, period: Duration, mut step: impl FnMut(u64)) {
    let mut next = Instant::now();
    let mut i = 0;
    while !stop.load(Relaxed) {
        step(i);
        i += 1;
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

struct Target {
    plain: SocketAddr,
    tls: SocketAddr,
    ca: Arc<TestCa>,
}

/// One load class's thread body.
type LoadFn = Box<dyn FnOnce(&Target, &Stats, &AtomicBool) + Send>;

fn spawn_load(target: &Arc<Target>, stats: &Arc<Stats>, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let mut spawn = |f: LoadFn| {
        let (t, s, x) = (Arc::clone(target), Arc::clone(stats), Arc::clone(stop));
        threads.push(std::thread::spawn(move || f(&t, &s, &x)));
    };
    for _ in 0..2 {
        spawn(Box::new(|t, s, stop| {
            let mut c: Option<Client> = None;
            paced(stop, Duration::from_millis(5), |_| {
                let t0 = Instant::now();
                let r = match c.as_mut() {
                    Some(c) => get(c, PLAIN),
                    None => Client::try_connect(t.plain)
                        .map_err(|e| format!("connect: {e}"))
                        .and_then(|mut n| get(&mut n, PLAIN).map(|()| c = Some(n))),
                };
                if r.is_err() {
                    c = None;
                }
                s.record(0, t0, r);
            })
        }));
    }
    spawn(Box::new(|t, s, stop| {
        paced(stop, Duration::from_millis(10), |_| {
            let t0 = Instant::now();
            let r = Client::try_connect(t.plain)
                .map_err(|e| format!("connect: {e}"))
                .and_then(|mut c| get_close(&mut c, PLAIN));
            s.record(1, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        const SIZES: [usize; 4] = [0, 1024, 64 * 1024, 256 * 1024];
        let bodies: Vec<Vec<u8>> = SIZES.iter().map(|&n| support::body::fill(0, n)).collect();
        let mut c: Option<Client> = None;
        paced(stop, Duration::from_millis(20), |i| {
            let body = &bodies[i as usize % bodies.len()];
            let t0 = Instant::now();
            let once = |c: &mut Client| -> Result<(), String> {
                let mut req = format!(
                    "POST /upload HTTP/1.1\r\nHost: {PLAIN}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                req.extend_from_slice(body);
                c.try_send(&req).map_err(|e| format!("send: {e}"))?;
                status_ok(c.try_read_response(false), 200).map(drop)
            };
            let r = match c.as_mut() {
                Some(c) => once(c),
                None => Client::try_connect(t.plain)
                    .map_err(|e| format!("connect: {e}"))
                    .and_then(|mut n| once(&mut n).map(|()| c = Some(n))),
            };
            if r.is_err() {
                c = None;
            }
            s.record(2, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        let config = t.ca.client();
        let mut c: Option<Client> = None;
        paced(stop, Duration::from_millis(5), |i| {
            let host = TLS_HOSTS[0].0;
            if i % 1000 == 0 {
                c = None;
            }
            let t0 = Instant::now();
            let r = match c.as_mut() {
                Some(c) => get(c, host),
                None => Client::try_connect_tls(t.tls, Arc::clone(&config), host)
                    .map_err(|e| format!("TLS connect: {e}"))
                    .and_then(|mut n| get(&mut n, host).map(|()| c = Some(n))),
            };
            if r.is_err() {
                c = None;
            }
            s.record(3, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        let config = t.ca.client();
        paced(stop, Duration::from_millis(20), |i| {
            let host = TLS_HOSTS[i as usize % 2].0;
            let t0 = Instant::now();
            let r = Client::try_connect_tls(t.tls, Arc::clone(&config), host)
                .map_err(|e| format!("TLS connect: {e}"))
                .and_then(|mut c| get_close(&mut c, host));
            s.record(4, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        let mut config = Arc::unwrap_or_clone(t.ca.client());
        config.resumption = rustls::client::Resumption::disabled();
        let config = Arc::new(config);
        paced(stop, Duration::from_millis(50), |i| {
            let host = TLS_HOSTS[i as usize % 2].0;
            let t0 = Instant::now();
            let r = Client::try_connect_tls(t.tls, Arc::clone(&config), host)
                .map_err(|e| format!("TLS connect: {e}"))
                .and_then(|mut c| {
                    if c.resumed() {
                        return Err("resumed although resumption is off".into());
                    }
                    get_close(&mut c, host)
                });
            s.record(5, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        let config = t.ca.client_alpn(&[b"h2"]);
        let post = support::body::fill(3, 64 * 1024);
        let mut c: Option<H2> = None;
        paced(stop, Duration::from_millis(5), |i| {
            let host = TLS_HOSTS[1].0;
            if i % 500 == 0 {
                c = None;
            }
            let t0 = Instant::now();
            if c.is_none() {
                match H2::try_connect_tls(t.tls, Arc::clone(&config), host, H2Options::default()) {
                    Ok(n) => c = Some(n),
                    Err(e) => return s.record(6, t0, Err(format!("h2 connect: {e}"))),
                }
            }
            let h2 = c.as_ref().expect("connected");
            let (head, body) = if i % 10 == 9 {
                (
                    h2.req("POST", host, "/upload").body(()).expect("head"),
                    Some(post.clone()),
                )
            } else {
                (h2.req("GET", host, "/soak").body(()).expect("head"), None)
            };
            let r = match h2.try_request(head, body) {
                Ok(r) if r.status == 200 && r.body_error.is_none() => Ok(()),
                Ok(r) => Err(format!("h2 status {} body_error {:?}", r.status, r.body_error)),
                Err(e) => Err(format!("h2: {e:?}")),
            };
            if r.is_err() {
                c = None;
            }
            s.record(6, t0, r);
        })
    }));
    spawn(Box::new(|t, s, stop| {
        paced(stop, Duration::from_millis(500), |_| {
            let t0 = Instant::now();
            let r = (|| -> Result<(), String> {
                let mut c = Client::try_connect(t.plain).map_err(|e| format!("connect: {e}"))?;
                c.try_send(
                    format!(
                        "GET /ws HTTP/1.1\r\nHost: {PLAIN}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .map_err(|e| format!("send: {e}"))?;
                status_ok(c.try_read_response(false), 101)?;
                c.try_send(b"0123456789abcdef")
                    .map_err(|e| format!("tunnel send: {e}"))?;
                let echoed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_exact_raw(16)))
                    .map_err(|_| "tunnel read failed".to_owned())?;
                if echoed != b"0123456789abcdef" {
                    return Err("tunnel changed the bytes".into());
                }
                Ok(())
            })();
            s.record(7, t0, r);
        })
    }));
    threads
}

/// Service `app`'s EndpointSlice: `pods` (ip, ready).
fn app_slice(port: u16, pods: &[(Ipv4Addr, bool)]) -> Value {
    let endpoints = pods
        .iter()
        .map(|(ip, ready)| endpoint(&ip.to_string(), *ready, *ready, !*ready, None))
        .collect();
    slice_of("app", port, endpoints)
}

struct Pod {
    ip: Ipv4Addr,
    /// Held while the pod lives: dropping it stops the pod (listener and connections).
    _up: Upstream,
}

/// The rolling deployment: pods on 127.0.0.2.. (cycling through 127.0.0.2..=127.0.0.250).
struct Deployment {
    port: u16,
    next_ip: u8,
    next_name: u64,
    live: VecDeque<Pod>,
    /// Removed pods and when to stop them.
    stopping: VecDeque<(Instant, Pod)>,
    rolled: u64,
}

impl Deployment {
    fn start_pod(&mut self) -> Pod {
        loop {
            let ip = Ipv4Addr::new(127, 0, 0, self.next_ip);
            self.next_ip = if self.next_ip >= 250 { 2 } else { self.next_ip + 1 };
            let in_use = self
                .live
                .iter()
                .chain(self.stopping.iter().map(|(_, p)| p))
                .any(|p| p.ip == ip);
            if in_use {
                continue;
            }
            let name = format!("pod-{}", self.next_name);
            if let Ok(up) = Upstream::pod(&name, ip, self.port, Handler::WebSocket) {
                self.next_name += 1;
                return Pod { ip, _up: up };
            }
        }
    }

    fn slice(&self, terminating: Option<Ipv4Addr>) -> Value {
        let pods: Vec<(Ipv4Addr, bool)> = self.live.iter().map(|p| (p.ip, Some(p.ip) != terminating)).collect();
        app_slice(self.port, &pods)
    }
}

fn read_status(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with(key)).expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("value")
}

fn fds(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds").count() as i64
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: i64,
    ok: [u64; CLASSES.len()],
    failed: [u64; CLASSES.len()],
    p99_us: u32,
    rolled: u64,
    rotated: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: f64 = args
        .iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--minutes N"))
        .unwrap_or(30.0);
    let run = Duration::from_secs_f64(minutes * 60.0);

    // The cluster.
    let ca = Arc::new(TestCa::new());
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    let port = {
        // A port free on 127.0.0.1 for the first pods; each pod binds its own address.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut deploy = Deployment {
        port,
        next_ip: 2,
        next_name: 0,
        live: VecDeque::new(),
        stopping: VecDeque::new(),
        rolled: 0,
    };
    for _ in 0..LIVE {
        let p = deploy.start_pod();
        deploy.live.push_back(p);
    }
    api.apply("endpointslices", deploy.slice(None));
    api.apply("ingresses", ingress("plain", "kedge", PLAIN, "/", "app"));
    let mut certs = Vec::new();
    for (host, secret) in TLS_HOSTS {
        let leaf = ca.leaf(&[host]);
        api.apply("secrets", leaf.secret("default", secret));
        certs.push(leaf.der.clone());
        let mut ing = ingress(secret.trim_end_matches("-tls"), "kedge", host, "/", "app");
        ing["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
        api.apply("ingresses", ing);
    }

    let dir = TempDir::new("soak");
    let kedge = Kedge::setup(Driver::IoUring)
        .workers(2)
        .tls()
        .tables("[log]\naccess_log = false")
        .follow(&api, &dir, "sync_timeout = \"30s\"");
    let pid = kedge.pid();
    // Ready when every host answers.
    support::wait_until(Duration::from_secs(20), "every host served", || {
        let plain = Client::try_connect(kedge.addr()).is_ok_and(|mut c| get(&mut c, PLAIN).is_ok());
        plain
            && TLS_HOSTS.iter().all(|(h, _)| {
                Client::try_connect_tls(kedge.tls_addr(), ca.client(), h).is_ok_and(|mut c| get(&mut c, h).is_ok())
            })
    });
    let fds_before = fds(pid);
    let rss_before = read_status(pid, "VmRSS:");
    eprintln!("soak: {minutes} min, kedge pid {pid}, {rss_before} KiB RSS and {fds_before} fds before the load");

    let stats = Arc::new(Stats {
        ok: Default::default(),
        failed: Default::default(),
        latencies: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let target = Arc::new(Target {
        plain: kedge.addr(),
        tls: kedge.tls_addr(),
        ca: Arc::clone(&ca),
    });
    let threads = spawn_load(&target, &stats, &stop);

    let start = Instant::now();
    let mut next_sample = start + SAMPLE;
    let mut next_roll = start + Duration::from_secs(5);
    let mut next_rotate = start + Duration::from_secs(30);
    let mut rotated = 0u64;
    let mut rotate_checks = 0u64;
    // Pending steps of the current roll: (when, what).
    let mut pending: VecDeque<(Instant, Ipv4Addr, bool)> = VecDeque::new();
    let mut samples = Vec::new();
    let mut rotate_errors = Vec::new();
    while start.elapsed() < run {
        let now = Instant::now();
        if now >= next_roll {
            next_roll += Duration::from_secs(5);
            let p = deploy.start_pod();
            deploy.live.push_back(p);
            api.apply("endpointslices", deploy.slice(None));
            let oldest = deploy.live.front().expect("pods").ip;
            pending.push_back((now + Duration::from_secs(1), oldest, false));
            pending.push_back((now + Duration::from_secs(2), oldest, true));
            deploy.rolled += 1;
        }
        while pending.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, ip, remove) = pending.pop_front().expect("step");
            if remove {
                let i = deploy.live.iter().position(|p| p.ip == ip).expect("live pod");
                let pod = deploy.live.remove(i).expect("pod");
                api.apply("endpointslices", deploy.slice(None));
                deploy.stopping.push_back((now + Duration::from_secs(2), pod));
            } else {
                api.apply("endpointslices", deploy.slice(Some(ip)));
            }
        }
        while deploy.stopping.front().is_some_and(|(at, _)| *at <= now) {
            drop(deploy.stopping.pop_front());
        }
        if now >= next_rotate {
            next_rotate += Duration::from_secs(30);
            let (host, secret) = TLS_HOSTS[rotated as usize % 2];
            let leaf = ca.leaf(&[host]);
            api.apply("secrets", leaf.secret("default", secret));
            rotated += 1;
            // A new handshake sees the new certificate (polled, with a deadline).
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(10);
            loop {
                let seen = Client::try_connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"http/1.1"]), host)
                    .map(|c| c.peer_leaf() == leaf.der);
                stats.record(8, t0, seen.as_ref().map(drop).map_err(|e| e.to_string()));
                if matches!(seen, Ok(true)) {
                    rotate_checks += 1;
                    break;
                }
                if Instant::now() > deadline {
                    rotate_errors.push(format!("{secret}: the new certificate not served after 10 s"));
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if now >= next_sample {
            next_sample += SAMPLE;
            let mut lat = std::mem::take(&mut *stats.latencies.lock().unwrap());
            lat.sort_unstable();
            let p99_us = if lat.is_empty() {
                0
            } else {
                lat[((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1]
            };
            let s = Sample {
                at: start.elapsed(),
                rss_kib: read_status(pid, "VmRSS:"),
                fds: fds(pid),
                ok: std::array::from_fn(|i| stats.ok[i].swap(0, Relaxed)),
                failed: std::array::from_fn(|i| stats.failed[i].swap(0, Relaxed)),
                p99_us,
                rolled: deploy.rolled,
                rotated,
            };
            eprintln!(
                "{:>6.0} s  rss {:>6} KiB  fds {:>4}  ok {:>6}  failed {}  p99 {:.1} ms",
                s.at.as_secs_f64(),
                s.rss_kib,
                s.fds,
                s.ok.iter().sum::<u64>(),
                s.failed.iter().sum::<u64>(),
                s.p99_us as f64 / 1e3
            );
            samples.push(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    let ok_tail: [u64; CLASSES.len()] = std::array::from_fn(|i| stats.ok[i].load(Relaxed));
    let failed_tail: [u64; CLASSES.len()] = std::array::from_fn(|i| stats.failed[i].load(Relaxed));
    // After the load: every client closed; stop the pods too. kedge closes its idle upstream
    // connections after `upstream.idle_timeout` (60 s by default), swept every 5 s: the fds
    // must come back by then (polled, with a deadline past that).
    drop(deploy);
    let quiet_deadline = Instant::now() + QUIET;
    let mut fds_after = fds(pid);
    while fds_after > fds_before + TOLERANCE_FDS && Instant::now() < quiet_deadline {
        std::thread::sleep(Duration::from_millis(200));
        fds_after = fds(pid);
    }
    let rss_after = read_status(pid, "VmRSS:");

    report(
        minutes,
        &samples,
        ok_tail,
        failed_tail,
        (fds_before, fds_after),
        (rss_before, rss_after),
        rotated,
        rotate_checks,
        &rotate_errors,
        &stats.errors.lock().unwrap(),
    );
    drop(kedge);
}

#[allow(clippy::too_many_arguments)]
fn report(
    minutes: f64,
    samples: &[Sample],
    ok_tail: [u64; CLASSES.len()],
    failed_tail: [u64; CLASSES.len()],
    (fds_before, fds_after): (i64, i64),
    (rss_before, rss_after): (u64, u64),
    rotated: u64,
    rotate_checks: u64,
    rotate_errors: &[String],
    errors: &[String],
) {
    let mut ok = ok_tail;
    let mut failed = failed_tail;
    for s in samples {
        for i in 0..CLASSES.len() {
            ok[i] += s.ok[i];
            failed[i] += s.failed[i];
        }
    }
    println!(
        "| minute | RSS MB (last sample) | fds (last sample) | requests ok | failed | p99 ms (worst sample) | pods rolled | Secrets rotated |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let per_minute = (60 / SAMPLE.as_secs()) as usize;
    for (m, chunk) in samples.chunks(per_minute).enumerate() {
        let last = chunk.last().expect("sample");
        println!(
            "| {} | {:.1} | {} | {} | {} | {:.1} | {} | {} |",
            m + 1,
            last.rss_kib as f64 / 1024.0,
            last.fds,
            chunk.iter().map(|s| s.ok.iter().sum::<u64>()).sum::<u64>(),
            chunk.iter().map(|s| s.failed.iter().sum::<u64>()).sum::<u64>(),
            chunk.iter().map(|s| s.p99_us).max().unwrap_or(0) as f64 / 1e3,
            last.rolled,
            last.rotated,
        );
    }
    println!("\n| class | requests ok | failed |\n|---|---|---|");
    for i in 0..CLASSES.len() {
        println!("| {} | {} | {} |", CLASSES[i], ok[i], failed[i]);
    }

    // Windows: the second sixth of the run against the last sixth.
    let n = samples.len();
    let early = &samples[n / 6..(n / 3).max(n / 6 + 1).min(n)];
    let late = &samples[n - (n / 6).max(1)..];
    let mean_mb = |w: &[Sample]| w.iter().map(|s| s.rss_kib as f64).sum::<f64>() / w.len() as f64 / 1024.0;
    let max_fds = |w: &[Sample]| w.iter().map(|s| s.fds).max().unwrap_or(0);
    let rss_drift = mean_mb(late) - mean_mb(early);
    let fd_drift = max_fds(late) - max_fds(early);
    let total_failed: u64 = failed.iter().sum();
    let total_ok: u64 = ok.iter().sum();
    let mut verdict = Vec::new();
    if total_failed > 0 {
        verdict.push(format!("{total_failed} failed requests"));
    }
    if !rotate_errors.is_empty() {
        verdict.push(rotate_errors.join("; "));
    }
    if rss_drift.abs() > TOLERANCE_MB {
        verdict.push(format!("RSS drift {rss_drift:+.1} MB"));
    }
    if fd_drift > TOLERANCE_FDS {
        verdict.push(format!("fd drift {fd_drift:+}"));
    }
    if fds_after > fds_before + TOLERANCE_FDS {
        verdict.push(format!("{fds_after} fds after the load, {fds_before} before"));
    }
    let secs = samples.last().map_or(0.0, |s| s.at.as_secs_f64());
    println!(
        "\n{minutes} min, {} samples: {total_ok} requests ok ({:.0}/s), {total_failed} failed; {rotated} Secret \
         rotations ({rotate_checks} seen by a new handshake); RSS {:.1} MB before the load, mean {:.1} MB in samples \
         {}–{} and {:.1} MB in samples {}–{} (drift {rss_drift:+.1} MB), {:.1} MB after; fds {fds_before} before, \
         max {} / {} in those windows (drift {fd_drift:+}), {fds_after} after the load.",
        samples.len(),
        total_ok as f64 / secs.max(1.0),
        rss_before as f64 / 1024.0,
        mean_mb(early),
        n / 6 + 1,
        n / 6 + early.len(),
        mean_mb(late),
        n - late.len() + 1,
        n,
        rss_after as f64 / 1024.0,
        max_fds(early),
        max_fds(late),
    );
    for e in errors {
        println!("- failure: {e}");
    }
    if verdict.is_empty() {
        println!("\nverdict: PASS");
    } else {
        println!("\nverdict: FAIL: {}", verdict.join("; "));
        std::process::exit(1);
    }
}

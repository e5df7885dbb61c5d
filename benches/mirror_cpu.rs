//! What RequestMirror costs kedge: CPU time per POST of a 64 KiB and a 1 MiB body on a rule
//! that mirrors, against the same POST on a rule that does not.
//!
//! ```sh
//! cargo bench --bench mirror_cpu                      # io_uring, 5 rounds
//! cargo bench --bench mirror_cpu -- --driver epoll --rounds 3
//! ```
//!
//! Setup: the integration tests' harness (`tests/it/support`): the fixture API server, the
//! release `kedge` binary with one worker (access log off, `[client] max_body = 0`), kedge's
//! Gateway on its own port, one HTTPRoute with two rules: `/plain` to Service `a`, and
//! `/mirrored` to `a` with a RequestMirror to Service `m`; `a` and `m` are the tests' hyper echo
//! upstreams (they read and hash every body). One client sends the POSTs back to back on one
//! keep-alive connection, reading each answer before the next.
//!
//! One round: for each size, `N` POSTs to `/plain`, then `N` to `/mirrored` (`N` = 500 for
//! 64 KiB, 100 for 1 MiB); kedge's on-CPU time over each batch is the sum of its threads'
//! `/proc/PID/task/*/schedstat` (nanoseconds), divided by `N`. Reported: the median over the
//! rounds per size and rule, and the extra CPU per mirrored request. A mirrored request costs a
//! connect to the mirror (no pooling: one connection per copy), the copy of every body byte into
//! the mirror's queue, its writes, and reading the mirror's answer head. The load of the
//! machine barely moves CPU time per request (it moves wall time), so the figure holds on a
//! shared machine; throughput does not, and is not reported.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::json;

use support::objects::{ingress_class, service, slice};
use support::{Client, Driver, FakeApi, Handler, Kedge, TempDir, Upstream, get, wait_for};

const GW: &str = "gateway.networking.k8s.io/v1";
const HOST: &str = "m.example.com";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let driver = match opt("--driver").as_deref() {
        Some("epoll") => Driver::Epoll,
        _ => Driver::IoUring,
    };
    let rounds: usize = opt("--rounds").and_then(|r| r.parse().ok()).unwrap_or(5);

    let api = FakeApi::start();
    api.install_gateway_api();
    api.apply("ingressclasses", ingress_class());
    let a = Upstream::start("a", Handler::Echo);
    let m = Upstream::start("m", Handler::Echo);
    for (name, up) in [("a", &a), ("m", &m)] {
        api.apply("services", service(name));
        api.apply("endpointslices", slice(name, up.addr().port(), &["127.0.0.1"]));
    }
    api.apply(
        "gatewayclasses",
        json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "kedge"},
               "spec": {"controllerName": "kedge.dev/gateway-controller"}}),
    );
    let dir = TempDir::new("mirror-cpu");
    let kedge = Kedge::setup(driver)
        .workers(1)
        .tables("[log]\naccess_log = false\n\n[client]\nmax_body = 0\n")
        .follow(&api, &dir, "");
    api.apply(
        "gateways",
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
               "spec": {"gatewayClassName": "kedge",
                        "listeners": [{"name": "http", "port": kedge.addr().port(), "protocol": "HTTP"}]}}),
    );
    let to_a = json!([{"name": "a", "port": 80}]);
    api.apply(
        "httproutes",
        json!({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": "bench", "namespace": "default"},
               "spec": {"parentRefs": [{"name": "edge"}], "hostnames": [HOST], "rules": [
                   {"matches": [{"path": {"type": "PathPrefix", "value": "/plain"}}], "backendRefs": to_a},
                   {"matches": [{"path": {"type": "PathPrefix", "value": "/mirrored"}}], "backendRefs": to_a,
                    "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}}}]}]}}),
    );
    wait_for(Duration::from_secs(30), "the routes", || {
        match (get(&kedge, HOST, "/plain"), get(&kedge, HOST, "/mirrored")) {
            ((200, Some(x)), (200, Some(y))) if x == "a" && y == "a" => Ok(()),
            other => Err(other),
        }
    });

    let pid = kedge.pid();
    let cpu_ns = || -> u64 {
        let mut sum = 0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("kedge's threads")
            .flatten()
        {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            sum += stat.split(' ').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
        sum
    };
    let cases = [("64k", 64 * 1024, 500usize), ("1m", 1024 * 1024, 100)];
    let mut client = Client::connect(kedge.addr());
    // Per case and rule (plain, mirrored): microseconds of kedge CPU per request, per round.
    let mut samples = vec![[Vec::new(), Vec::new()]; cases.len()];
    for round in 0..=rounds {
        for (c, &(_, size, n)) in cases.iter().enumerate() {
            let body = vec![b'x'; size];
            for (r, path) in ["/plain", "/mirrored"].into_iter().enumerate() {
                let head = format!("POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {size}\r\n\r\n");
                let before = cpu_ns();
                for _ in 0..n {
                    client.send(head.as_bytes());
                    client.send(&body);
                    let resp = client.read_response();
                    assert_eq!(resp.status, 200, "{path}");
                }
                let per = (cpu_ns() - before) as f64 / 1e3 / n as f64;
                // Round 0 warms up (connections, buffers, the allocator) and is not counted.
                if round > 0 {
                    samples[c][r].push(per);
                }
            }
        }
    }
    println!(
        "kedge CPU per POST, median of {rounds} rounds ({} driver, 1 worker):\n",
        driver.name()
    );
    println!("| body | not mirrored | mirrored | extra per mirrored request |");
    println!("|---|---|---|---|");
    for (c, &(name, _, _)) in cases.iter().enumerate() {
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (plain, mirrored) = (med(&mut samples[c][0]), med(&mut samples[c][1]));
        println!(
            "| {name} | {plain:.1} µs | {mirrored:.1} µs | {:.1} µs ({:+.0} %) |",
            mirrored - plain,
            (mirrored / plain - 1.0) * 100.0
        );
    }
}

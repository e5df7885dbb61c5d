//! Choosing endpoints, end to end through the fixture API server: round-robin, least-request,
//! consistent hashing by header, cookie affinity across workers and scaling, and passive
//! outlier detection with a refusing and a hanging endpoint under load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{ingress, ingress_class, service};
use crate::support::{Client, FakeApi, Handler, Kedge, RawBehavior, RawUpstream, TempDir, Upstream, refused_addr};

/// One EndpointSlice per address (each with its own port) for Service `svc`.
fn apply_endpoints(api: &FakeApi, svc: &str, addrs: &[SocketAddr]) {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    for (i, (a, ep)) in addrs.iter().zip(endpoints).enumerate() {
        api.apply(
            "endpointslices",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                   "metadata": {"name": format!("{svc}-{i}"), "namespace": "default",
                                "labels": {"kubernetes.io/service-name": svc}},
                   "addressType": "IPv4", "ports": [{"name": "http", "port": a.port()}], "endpoints": [ep]}),
        );
    }
}

/// A cluster with Service `web` on `addrs`, Ingress `web` for `web.example.com` with
/// `annotations`, and kedge (`workers`) following it.
fn setup(addrs: &[SocketAddr], annotations: Value, workers: usize) -> (FakeApi, TempDir, Kedge) {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    apply_endpoints(&api, "web", addrs);
    let mut ing = ingress("web", "kedge", "web.example.com", "/", "web");
    ing["metadata"]["annotations"] = annotations;
    api.apply("ingresses", ing);
    let dir = TempDir::new("balancing");
    let kedge = Kedge::setup(crate::support::Driver::default())
        .workers(workers)
        .follow(&api, &dir, "");
    (api, dir, kedge)
}

/// GET on a new connection with `headers`; the answering upstream and the response.
fn get(kedge: &Kedge, headers: &str) -> (String, crate::support::Client, u16, Option<String>) {
    let mut c = Client::connect(kedge.addr());
    c.send(format!("GET / HTTP/1.1\r\nHost: web.example.com\r\n{headers}\r\n").as_bytes());
    let r = c.read_response();
    let cookie = r.header("set-cookie").map(str::to_owned);
    (r.upstream().unwrap_or("-").to_owned(), c, r.status, cookie)
}

#[test]
fn round_robin_is_even_and_least_request_avoids_the_slow_endpoint() {
    let ups: Vec<Upstream> = (0..3)
        .map(|i| Upstream::start(&format!("rr-{i}"), Handler::Echo))
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let (_api, _dir, kedge) = setup(&addrs, json!({}), 1);
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        *seen.entry(get(&kedge, "").0).or_insert(0) += 1;
    }
    assert_eq!(seen.values().copied().collect::<Vec<_>>(), [10, 10, 10], "{seen:?}");

    // Slow against the others even when a loaded machine makes them take tens of
    // milliseconds (at 300 ms it once got 48 of 240 under a load average of 12).
    let slow = Upstream::start("slow", Handler::Delay(Duration::from_millis(600)));
    let fast: Vec<Upstream> = (0..2)
        .map(|i| Upstream::start(&format!("fast-{i}"), Handler::Echo))
        .collect();
    let addrs = [slow.addr(), fast[0].addr(), fast[1].addr()];
    let (_api, _dir, kedge) = setup(&addrs, json!({"nginx.ingress.kubernetes.io/load-balance": "ewma"}), 1);
    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (addr, counts) = (kedge.addr(), Arc::clone(&counts));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                // Enough requests that the first wave (before any latency is known, when every
                // endpoint gets its turn) is a small part of the total.
                for _ in 0..24 {
                    let r = c.get("web.example.com", "/");
                    assert_eq!(r.status, 200);
                    *counts
                        .lock()
                        .unwrap()
                        .entry(r.upstream().unwrap().to_owned())
                        .or_insert(0) += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = counts.lock().unwrap();
    let slow_share = counts.get("slow").copied().unwrap_or(0);
    // Round-robin would give it a third (80 of 240); least-request far less (a fifth at most).
    assert!(slow_share < 48, "the slow endpoint got {slow_share} of 240: {counts:?}");
}

#[test]
fn hashing_by_header_sends_a_key_to_one_endpoint_on_every_worker() {
    let ups: Vec<Upstream> = (0..3)
        .map(|i| Upstream::start(&format!("h-{i}"), Handler::Echo))
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let (_api, _dir, kedge) = setup(
        &addrs,
        json!({"nginx.ingress.kubernetes.io/upstream-hash-by": "$http_x_user"}),
        2,
    );
    let mut owners = BTreeMap::new();
    for u in 0..24 {
        let mut got = Vec::new();
        // New connections: they land on either worker.
        for _ in 0..6 {
            got.push(get(&kedge, &format!("X-User: user-{u}\r\n")).0);
        }
        got.dedup();
        assert_eq!(got.len(), 1, "user-{u} went to {got:?}");
        owners.insert(u, got.pop().unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = owners.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "24 keys over 3 endpoints use all of them: {owners:?}"
    );
}

#[test]
fn cookie_affinity_holds_across_workers_and_scaling() {
    let ups: Vec<Upstream> = (0..4)
        .map(|i| Upstream::start(&format!("s-{i}"), Handler::Echo))
        .collect();
    let addrs: Vec<SocketAddr> = ups.iter().map(Upstream::addr).collect();
    let (api, _dir, kedge) = setup(
        &addrs[..3],
        json!({"nginx.ingress.kubernetes.io/affinity": "cookie",
               "nginx.ingress.kubernetes.io/session-cookie-name": "route",
               "nginx.ingress.kubernetes.io/session-cookie-max-age": "3600",
               "nginx.ingress.kubernetes.io/session-cookie-change-on-failure": "true"}),
        2,
    );
    // Sessions: each client's first answer sets the cookie.
    let mut sessions = Vec::new();
    for _ in 0..9 {
        let (who, _, status, cookie) = get(&kedge, "");
        assert_eq!(status, 200);
        let cookie = cookie.expect("Set-Cookie on a first request");
        assert!(
            cookie.starts_with("route=") && cookie.contains("; Path=/; Max-Age=3600;") && cookie.ends_with("HttpOnly"),
            "{cookie}"
        );
        let value = cookie.split(';').next().unwrap().to_owned();
        sessions.push((value, who));
    }
    let check = |sessions: &[(String, String)]| {
        for (cookie, who) in sessions {
            for _ in 0..4 {
                let (now, _, status, set) = get(&kedge, &format!("Cookie: other=1; {cookie}\r\n"));
                assert_eq!((status, &now), (200, who), "{cookie}");
                assert_eq!(set, None, "a client already on its endpoint gets no new cookie");
            }
        }
    };
    check(&sessions);
    // Scale up: every session stays where it was.
    apply_endpoints(&api, "web", &addrs);
    crate::support::wait_until(Duration::from_secs(10), "the fourth endpoint serves", || {
        (0..8).any(|_| get(&kedge, "").0 == "s-3")
    });
    check(&sessions);
    // Scale down: the sessions of the endpoint that left move, and get a new cookie.
    let (gone_cookie, gone) = sessions[0].clone();
    let gone_index: usize = gone.trim_start_matches("s-").parse().unwrap();
    // One slice per endpoint (`web-{i}` holds `addrs[i]`): deleting that one slice is the whole
    // scale-down, in one event. (Deleting all four and applying three anew passed through
    // tables with fewer endpoints, where the other sessions moved for a moment.)
    api.delete("endpointslices", Some("default"), &format!("web-{gone_index}"));
    crate::support::wait_until(Duration::from_secs(10), "the endpoint is gone", || {
        let (now, _, _, set) = get(&kedge, &format!("Cookie: {gone_cookie}\r\n"));
        now != gone && set.is_some()
    });
    let others: Vec<_> = sessions.iter().filter(|(_, w)| *w != gone).cloned().collect();
    check(&others);
}

#[test]
fn failing_endpoints_are_ejected_and_no_get_fails() {
    let good: Vec<Upstream> = (0..2)
        .map(|i| Upstream::start(&format!("ok-{i}"), Handler::Echo))
        .collect();
    let hanging = RawUpstream::start(RawBehavior::Silent);
    let refusing = refused_addr();
    let addrs = [good[0].addr(), good[1].addr(), hanging.addr(), refusing];
    let (_api, _dir, kedge) = setup(
        &addrs,
        json!({"nginx.ingress.kubernetes.io/proxy-read-timeout": "1",
               "nginx.ingress.kubernetes.io/proxy-next-upstream-tries": "4"}),
        1,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop, ok, failures) = (kedge.addr(), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Client::connect(addr);
                    let r = c.get("web.example.com", "/");
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.lock().unwrap().push(format!("{} {}", r.status, r.text()));
                    }
                }
            })
        })
        .collect();
    let ejected = |addr: SocketAddr| {
        kedge
            .logs()
            .iter()
            .any(|l| l.contains("endpoint ejected") && l.contains(&format!("upstream={addr}")))
    };
    crate::support::wait_until(Duration::from_secs(30), "both bad endpoints ejected", || {
        ejected(refusing) && ejected(hanging.addr())
    });
    let at = ok.load(Ordering::Relaxed);
    crate::support::wait_until(Duration::from_secs(20), "traffic after the ejections", || {
        ok.load(Ordering::Relaxed) > at + 200
    });
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed GETs: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // The good endpoints were never ejected.
    assert!(!ejected(good[0].addr()) && !ejected(good[1].addr()));
}

#[test]
fn canary_ingresses_take_their_share_by_header_cookie_and_weight() {
    let main = Upstream::start("main", Handler::Echo);
    let canary = Upstream::start("canary", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    for (svc, up) in [("main", &main), ("canary", &canary)] {
        api.apply("services", service(svc));
        apply_endpoints(&api, svc, &[up.addr()]);
    }
    api.apply("ingresses", ingress("main", "kedge", "web.example.com", "/", "main"));
    let mut c = ingress("main-canary", "kedge", "web.example.com", "/", "canary");
    c["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-by-header": "X-Canary",
        "nginx.ingress.kubernetes.io/canary-by-header-pattern": "yes.*",
        "nginx.ingress.kubernetes.io/canary-by-cookie": "canary",
        "nginx.ingress.kubernetes.io/canary-weight": "30",
    });
    api.apply("ingresses", c);
    // A canary of nothing is reported.
    let mut orphan = ingress("orphan", "kedge", "nobody.example.com", "/", "canary");
    orphan["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/canary": "true"});
    api.apply("ingresses", orphan);
    let dir = TempDir::new("canary");
    let kedge = Kedge::setup(crate::support::Driver::default())
        .workers(2)
        .follow(&api, &dir, "");

    for _ in 0..10 {
        assert_eq!(get(&kedge, "X-Canary: always\r\n").0, "canary");
        assert_eq!(get(&kedge, "X-Canary: never\r\n").0, "main");
        assert_eq!(get(&kedge, "Cookie: canary=always\r\n").0, "canary");
        assert_eq!(get(&kedge, "Cookie: canary=never\r\n").0, "main");
    }
    // A value matching the pattern selects the canary; one that does not is ignored (weight).
    assert_eq!(
        get(&kedge, "X-Canary: yes-please\r\nCookie: canary=never\r\n").0,
        "canary"
    );
    assert_eq!(get(&kedge, "X-Canary: no\r\nCookie: canary=never\r\n").0, "main");
    // The header decides before the cookie.
    assert_eq!(get(&kedge, "X-Canary: never\r\nCookie: canary=always\r\n").0, "main");
    let mut to_canary = 0;
    for _ in 0..400 {
        if get(&kedge, "").0 == "canary" {
            to_canary += 1;
        }
    }
    // 30 % of 400 is 120; a binomial spread of ±4 standard deviations is about ±37.
    assert!((83..=157).contains(&to_canary), "{to_canary} of 400 went to the canary");
    kedge.wait_log(
        "Ingress default/orphan: canary: no other Ingress routes host nobody.example.com path / (Prefix); ignored",
        Duration::from_secs(5),
    );
    assert_eq!(Client::connect(kedge.addr()).get("nobody.example.com", "/").status, 404);
}

#[test]
fn proxy_next_upstream_retries_idempotent_requests_on_listed_statuses() {
    let failing = Upstream::start("failing", Handler::Status(503));
    let good = Upstream::start("good", Handler::Echo);
    let (_api, _dir, kedge) = setup(
        &[failing.addr(), good.addr()],
        json!({"nginx.ingress.kubernetes.io/proxy-next-upstream": "error timeout http_503",
               "nginx.ingress.kubernetes.io/proxy-next-upstream-tries": "2"}),
        1,
    );
    // A POST is never sent twice: the failing endpoint's 503 reaches the client. (First: five
    // failures in a row would eject the endpoint.)
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(kedge.addr());
        c.send(b"POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 2\r\n\r\nhi");
        statuses.push(c.read_response().status);
    }
    assert!(statuses.contains(&503) && statuses.contains(&200), "{statuses:?}");
    // GETs are retried on the other endpoint.
    let before = failing.request_count();
    for _ in 0..4 {
        assert_eq!(get(&kedge, "").2, 200);
    }
    assert!(
        failing.request_count() > before,
        "round-robin reached the failing endpoint"
    );
}

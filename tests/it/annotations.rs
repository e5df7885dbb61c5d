//! ingress-nginx annotations end to end, through the fixture API server: rewrite-target with
//! regex captures, app-root, redirects, source ranges, body size and timeouts per Ingress, and
//! bad values reported without taking the rest down.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::{Client, FakeApi, Handler, Kedge, TempDir, Upstream, both_drivers, wait_until};

/// Ingress `name` for `name.example.com` with `path` (ImplementationSpecific) to Service
/// `svc`, with `annotations`.
fn annotated(name: &str, path: &str, svc: &str, annotations: Value) -> Value {
    let mut ing = ingress(name, "kedge", &format!("{name}.example.com"), path, svc);
    ing["spec"]["rules"][0]["http"]["paths"][0]["pathType"] = json!("ImplementationSpecific");
    ing["metadata"]["annotations"] = annotations;
    ing
}

both_drivers!(
    fn annotations_shape_each_ingress_and_bad_ones_are_reported(driver) {
        let up = Upstream::start("app", Handler::Echo);
        let slow = Upstream::start("slow", Handler::Delay(Duration::from_secs(5)));
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        api.apply("services", service("app"));
        api.apply("endpointslices", slice("app", up.addr().port(), &["127.0.0.1"]));
        api.apply("services", service("slow"));
        api.apply("endpointslices", slice("slow", slow.addr().port(), &["127.0.0.1"]));
        let n = "nginx.ingress.kubernetes.io/";
        for (name, path, svc, annotations) in [
            ("rewrite", "/something(/|$)(.*)", "app", json!({format!("{n}rewrite-target"): "/$2"})),
            ("root", "/", "app", json!({format!("{n}app-root"): "/app/"})),
            ("moved", "/", "app", json!({format!("{n}permanent-redirect"): "https://example.com/new"})),
            ("away", "/", "app", json!({format!("{n}temporal-redirect"): "https://example.com/tmp",
                                         format!("{n}temporal-redirect-code"): "307"})),
            ("allowed", "/", "app", json!({format!("{n}allowlist-source-range"): "127.0.0.0/8"})),
            ("others", "/", "app", json!({format!("{n}whitelist-source-range"): "192.0.2.0/24"})),
            ("denied", "/", "app", json!({format!("{n}denylist-source-range"): "127.0.0.1/32"})),
            ("small", "/", "app", json!({format!("{n}proxy-body-size"): "1k"})),
            ("unlimited", "/", "app", json!({format!("{n}proxy-body-size"): "0"})),
            ("impatient", "/", "slow", json!({format!("{n}proxy-read-timeout"): "1"})),
            ("broken", "/", "app", json!({format!("{n}proxy-body-size"): "lots",
                                           format!("{n}server-snippet"): "return 200;"})),
        ] {
            api.apply("ingresses", annotated(name, path, svc, annotations));
        }
        let dir = TempDir::new("annotations");
        let kedge = Kedge::setup(driver).follow(&api, &dir, "");
        let mut c = Client::connect(kedge.addr());

        // rewrite-target: the path upstream is the rewritten one, with the query kept.
        let resp = c.get("rewrite.example.com", "/something/new/page?x=1");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(up.requests().last().unwrap().uri, "/new/page?x=1");
        assert_eq!(c.get("rewrite.example.com", "/something").status, 200);
        assert_eq!(up.requests().last().unwrap().uri, "/");

        // app-root: only `/` is redirected.
        let resp = c.get("root.example.com", "/");
        assert_eq!((resp.status, resp.header("location")), (302, Some("/app/")));
        assert_eq!(c.get("root.example.com", "/app/").status, 200);

        // Redirects answer every request without proxying it.
        let before = up.request_count();
        let resp = c.get("moved.example.com", "/anything");
        assert_eq!((resp.status, resp.header("location")), (301, Some("https://example.com/new")));
        let resp = c.get("away.example.com", "/");
        assert_eq!((resp.status, resp.header("location")), (307, Some("https://example.com/tmp")));
        assert_eq!(up.request_count(), before);

        // Source ranges: the client is 127.0.0.1.
        assert_eq!(c.get("allowed.example.com", "/").status, 200);
        let resp = c.get("others.example.com", "/");
        assert_eq!(resp.status, 403, "{resp:?}");
        assert!(resp.text().contains("client address not allowed"));
        assert_eq!(c.get("denied.example.com", "/").status, 403);
        // A 403 keeps the connection.
        assert_eq!(c.get("allowed.example.com", "/").status, 200);

        // Body size per Ingress: 1k refuses 2k; 0 is unlimited (the default would be 1m).
        let body = vec![b'x'; 2048];
        let mut small = Client::connect(kedge.addr());
        let mut req = b"POST / HTTP/1.1\r\nHost: small.example.com\r\nContent-Length: 2048\r\n\r\n".to_vec();
        req.extend_from_slice(&body);
        small.send(&req);
        assert_eq!(small.read_response().status, 413);
        let big = vec![b'y'; 2 << 20];
        let mut unlimited = Client::connect(kedge.addr());
        let mut req = format!(
            "POST / HTTP/1.1\r\nHost: unlimited.example.com\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .into_bytes();
        req.extend_from_slice(&big);
        unlimited.send(&req);
        assert_eq!(unlimited.read_response().status, 200);

        // proxy-read-timeout: 1 s instead of the default 60 s, for this Ingress only.
        let resp = Client::connect(kedge.addr()).get("impatient.example.com", "/");
        assert_eq!(resp.status, 504, "{resp:?}");

        // A bad value is one warning naming the annotation; the Ingress is still served.
        kedge.wait_log(
            "Ingress default/broken: nginx.ingress.kubernetes.io/proxy-body-size: \"lots\" is not a size",
            Duration::from_secs(5),
        );
        kedge.wait_log(
            "Ingress default/broken: nginx.ingress.kubernetes.io/server-snippet: nginx configuration snippets are never executed",
            Duration::from_secs(5),
        );
        assert_eq!(c.get("broken.example.com", "/").status, 200);
    }
);

#[test]
fn rate_and_concurrency_limits_per_client() {
    let up = Upstream::start("app", Handler::Echo);
    let slow = Upstream::start("slow", Handler::Delay(Duration::from_secs(2)));
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    for (svc, u) in [("app", &up), ("slow", &slow)] {
        api.apply("services", service(svc));
        api.apply("endpointslices", slice(svc, u.addr().port(), &["127.0.0.1"]));
    }
    let n = "nginx.ingress.kubernetes.io/";
    for (name, svc, annotations) in [
        (
            "rated",
            "app",
            json!({format!("{n}limit-rpm"): "1", format!("{n}limit-burst-multiplier"): "3"}),
        ),
        (
            "exempt",
            "app",
            json!({format!("{n}limit-rps"): "1", format!("{n}limit-burst-multiplier"): "1",
                                 format!("{n}limit-allowlist"): "127.0.0.0/8"}),
        ),
        ("single", "slow", json!({format!("{n}limit-connections"): "1"})),
    ] {
        api.apply("ingresses", annotated(name, "/", svc, annotations));
    }
    let dir = TempDir::new("limits");
    let kedge = Kedge::follow(&api, &dir, "");
    let mut c = Client::connect(kedge.addr());
    // A burst of 3 (1 r/min × 3: no refill within the test), then 503s.
    let statuses: Vec<u16> = (0..6).map(|_| c.get("rated.example.com", "/").status).collect();
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].iter().all(|&s| s == 503), "{statuses:?}");
    // Exempt clients are not limited.
    assert!((0..6).all(|_| c.get("exempt.example.com", "/").status == 200));
    // One request in progress per client: a second one at the same time is refused.
    let addr = kedge.addr();
    let first = std::thread::spawn(move || Client::connect(addr).get("single.example.com", "/").status);
    // In progress once the upstream has it (it answers 2 s later).
    wait_until(
        Duration::from_secs(10),
        "the first request to reach the slow upstream",
        || slow.request_count() == 1,
    );
    let second = Client::connect(kedge.addr()).get("single.example.com", "/");
    assert_eq!(second.status, 503, "{second:?}");
    assert!(second.text().contains("too many requests in progress"));
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(slow.request_count(), 1, "the refused request reached the upstream");
    // Once it is done, the next one goes through.
    assert_eq!(Client::connect(kedge.addr()).get("single.example.com", "/").status, 200);
}

#[test]
fn basic_auth_from_an_htpasswd_secret() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let up = Upstream::start("app", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", up.addr().port(), &["127.0.0.1"]));
    // `openssl passwd -apr1 -salt r31..... password`, and {SHA} of "password".
    let htpasswd = "ann:$apr1$r31.....$ARC3pREO82RIm0aQ2zszC0\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";
    api.apply(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "users", "namespace": "default"}, "data": {"auth": b64(htpasswd)}}),
    );
    let n = "nginx.ingress.kubernetes.io/";
    api.apply(
        "ingresses",
        annotated(
            "private",
            "/",
            "app",
            json!({format!("{n}auth-type"): "basic",
            format!("{n}auth-secret"): "users", format!("{n}auth-realm"): "Staff only"}),
        ),
    );
    api.apply(
        "ingresses",
        annotated(
            "locked",
            "/",
            "app",
            json!({format!("{n}auth-type"): "basic",
            format!("{n}auth-secret"): "missing"}),
        ),
    );
    let dir = TempDir::new("auth");
    let kedge = Kedge::follow(&api, &dir, "");
    let ask = |host: &str, creds: Option<&str>| {
        let mut c = Client::connect(kedge.addr());
        let auth = creds.map_or(String::new(), |c| format!("Authorization: Basic {}\r\n", b64(c)));
        c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").as_bytes());
        c.read_response()
    };
    let r = ask("private.example.com", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Staff only\""));
    assert_eq!(ask("private.example.com", Some("ann:wrong")).status, 401);
    assert_eq!(ask("private.example.com", Some("nobody:password")).status, 401);
    let before = up.request_count();
    for _ in 0..3 {
        assert_eq!(ask("private.example.com", Some("ann:password")).status, 200);
    }
    assert_eq!(ask("private.example.com", Some("bob:password")).status, 200);
    assert_eq!(
        up.request_count(),
        before + 4,
        "only authenticated requests reach the upstream"
    );
    // A missing Secret refuses everyone, with a warning.
    assert_eq!(ask("locked.example.com", Some("ann:password")).status, 401);
    kedge.wait_log(
        "Ingress default/locked: nginx.ingress.kubernetes.io/auth-secret: Secret default/missing not found",
        Duration::from_secs(5),
    );
    // Opaque Secrets are watched by type, and never persisted.
    assert!(
        api.request_log()
            .iter()
            .any(|l| l.contains("fieldSelector=type%3DOpaque"))
    );
}

/// An `auth-secret` change takes effect as an update of the hosts of the Ingresses that read
/// it (no build from nothing): a Secret created after its Ingress lets its users in, a user
/// taken out of it is refused from then on, and its deletion refuses everyone.
#[test]
fn an_auth_secret_change_takes_effect_as_an_update() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let users = |htpasswd: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "users", "namespace": "default"}, "data": {"auth": b64(htpasswd)}})
    };
    let up = Upstream::start("app", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", up.addr().port(), &["127.0.0.1"]));
    let n = "nginx.ingress.kubernetes.io/";
    api.apply(
        "ingresses",
        annotated(
            "private",
            "/",
            "app",
            json!({format!("{n}auth-type"): "basic", format!("{n}auth-secret"): "users"}),
        ),
    );
    api.apply("ingresses", annotated("public", "/", "app", json!({})));
    let dir = TempDir::new("auth-update");
    let kedge = Kedge::follow(&api, &dir, "");
    let ask = |creds: &str| {
        let mut c = Client::connect(kedge.addr());
        c.send(
            format!(
                "GET / HTTP/1.1\r\nHost: private.example.com\r\nAuthorization: Basic {}\r\n\r\n",
                b64(creds)
            )
            .as_bytes(),
        );
        c.read_response().status
    };
    let published = |why: &str| {
        kedge
            .logs()
            .iter()
            .filter(|l| l.contains("route table published") && l.contains(why))
            .count()
    };
    // No Secret yet: everyone refused, with a warning.
    assert_eq!(ask("ann:password"), 401);
    kedge.wait_log("Secret default/users not found", Duration::from_secs(10));

    // {SHA} of "password" for ann and bob.
    let (ann, bob) = (
        "ann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
        "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
    );
    api.apply("secrets", users(&format!("{ann}{bob}")));
    wait_until(Duration::from_secs(10), "the new Secret's users get in", || {
        ask("bob:password") == 200
    });
    assert_eq!(ask("ann:password"), 200);
    // (The line follows the table's publication.)
    kedge.wait_logs("why=\"update\"", 1, Duration::from_secs(10));
    // bob taken out.
    api.apply("secrets", users(ann));
    wait_until(Duration::from_secs(10), "bob is refused", || ask("bob:password") == 401);
    assert_eq!(ask("ann:password"), 200);
    // Gone: everyone refused.
    api.delete("secrets", Some("default"), "users");
    wait_until(Duration::from_secs(10), "ann is refused", || ask("ann:password") == 401);
    kedge.wait_logs("why=\"update\"", 3, Duration::from_secs(10));
    assert_eq!(published("why=\"watch\""), 0, "no build from nothing");
    assert_eq!(published("why=\"update\""), 3);
    // The other host was never touched.
    assert_eq!(Client::connect(kedge.addr()).get("public.example.com", "/").status, 200);
}

#[test]
fn connect_timeout_retry_budget_and_auth_map() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (hole, _fillers, _listener) = crate::support::blackhole_addr();
    let up = Upstream::start("app", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("hole"));
    api.apply("endpointslices", slice("hole", hole.port(), &["127.0.0.1"]));
    api.apply("services", service("app"));
    api.apply("endpointslices", slice("app", up.addr().port(), &["127.0.0.1"]));
    api.apply(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "map", "namespace": "default"},
               "data": {"carol": b64("{PLAIN}pw"), "dave": b64("not-a-hash")}}),
    );
    let n = "nginx.ingress.kubernetes.io/";
    api.apply(
        "ingresses",
        annotated("hole", "/", "hole", json!({format!("{n}proxy-connect-timeout"): "1"})),
    );
    api.apply(
        "ingresses",
        annotated(
            "mapped",
            "/",
            "app",
            json!({format!("{n}auth-type"): "basic",
            format!("{n}auth-secret"): "map", format!("{n}auth-secret-type"): "auth-map"}),
        ),
    );
    let dir = TempDir::new("connect-timeout");
    let kedge = Kedge::follow(&api, &dir, "");
    // proxy-connect-timeout: 1 s instead of the default 5 s, then 504 (one endpoint only).
    let resp = Client::connect(kedge.addr()).get("hole.example.com", "/");
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(resp.text().contains("connect timed out"), "{}", resp.text());
    // auth-map: a key per user; a key whose value is no hash is reported and left out.
    let mut c = Client::connect(kedge.addr());
    c.send(
        format!(
            "GET / HTTP/1.1\r\nHost: mapped.example.com\r\nAuthorization: Basic {}\r\n\r\n",
            b64("carol:pw")
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 200);
    c.send(
        format!(
            "GET / HTTP/1.1\r\nHost: mapped.example.com\r\nAuthorization: Basic {}\r\n\r\n",
            b64("dave:not-a-hash")
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 401);
    kedge.wait_log(
        "Secret default/map: key \"dave\": not a supported hash",
        Duration::from_secs(5),
    );
}

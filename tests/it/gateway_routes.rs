//! Gateway API routing end to end: a GatewayClass of kedge's, a Gateway whose listener is
//! kedge's plain listener (its real port), HTTPRoutes through the fixture API server, and real
//! clients (HTTP/1.1 and HTTP/2) against real echo upstreams standing in for Services. What
//! each test waits for is an answer, never a time.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::h2_client::H2;
use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::{
    Client, Driver, FakeApi, Handler, Kedge, Response, Setup, TempDir, Upstream, get, wait_for, wait_until,
};

pub(crate) const GW: &str = "gateway.networking.k8s.io/v1";
const H2_ON: &str = "[http2]\nenabled = true\n";
const WAIT: Duration = Duration::from_secs(15);

pub(crate) fn gateway_class() -> Value {
    json!({"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "kedge"},
           "spec": {"controllerName": "kedge.dev/gateway-controller"}})
}

/// Gateway `name` in `default` with one HTTP listener on `port` (and `addresses`, if any).
pub(crate) fn gateway(name: &str, port: u16, addresses: &[&str]) -> Value {
    let mut g = json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "default"},
           "spec": {"gatewayClassName": "kedge", "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}]}});
    if !addresses.is_empty() {
        g["spec"]["addresses"] = addresses
            .iter()
            .map(|a| json!({"type": "IPAddress", "value": a}))
            .collect();
    }
    g
}

/// HTTPRoute `name` in `default`, attached to Gateway `parent`, for `hostnames`.
fn route(name: &str, parent: &str, hostnames: &[&str], rules: Value) -> Value {
    json!({"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": "default"},
           "spec": {"parentRefs": [{"name": parent}], "hostnames": hostnames, "rules": rules}})
}

fn to(svc: &str) -> Value {
    json!([{"name": svc, "port": 80}])
}

/// The fixture API server with the Gateway API, kedge's GatewayClass and one echo upstream per
/// Service name (answering `x-upstream: NAME`), and kedge following it.
struct World {
    api: FakeApi,
    kedge: Kedge,
    /// The upstreams by Service name.
    ups: Vec<(String, Upstream)>,
    _dir: TempDir,
}

impl World {
    fn start(driver: Driver, tag: &str, services: &[&str]) -> World {
        World::start_with(tag, services, Kedge::setup(driver).tables(H2_ON))
    }

    fn start_with(tag: &str, services: &[&str], setup: Setup) -> World {
        let api = FakeApi::start();
        api.install_gateway_api();
        api.apply("ingressclasses", ingress_class());
        let mut ups = Vec::new();
        for s in services {
            let up = Upstream::start(s, Handler::Echo);
            api.apply("services", service(s));
            api.apply("endpointslices", slice(s, up.addr().port(), &["127.0.0.1"]));
            ups.push((s.to_string(), up));
        }
        api.apply("gatewayclasses", gateway_class());
        let dir = TempDir::new(tag);
        let kedge = setup.follow(&api, &dir, "");
        World {
            api,
            kedge,
            ups,
            _dir: dir,
        }
    }

    fn up(&self, name: &str) -> &Upstream {
        let found = self.ups.iter().find(|(n, _)| n == name);
        &found.expect("an upstream of that name").1
    }

    /// Sends `raw` (a whole HTTP/1.1 request) on a new connection and reads the answer.
    fn send(&self, raw: &str) -> Response {
        let mut c = Client::connect(self.kedge.addr());
        c.send(raw.as_bytes());
        c.read_response()
    }

    /// Waits until `GET path` on `host` gets `want` (status, upstream).
    fn wait_routed(&self, host: &str, path: &str, want: (u16, Option<&str>)) {
        wait_for(WAIT, &format!("{host}{path} → {want:?}"), || {
            let (status, up) = get(&self.kedge, host, path);
            if (status, up.as_deref()) == want {
                Ok(())
            } else {
                Err((status, up))
            }
        });
    }
}

fn answered(r: &Response) -> (u16, Option<&str>) {
    (r.status, r.upstream())
}

#[test]
fn paths_headers_query_method_hostnames_and_ingress_side_by_side() {
    let w = World::start(Driver::default(), "gw-match", &["a", "b", "c", "web"]);
    let port = w.kedge.addr().port();
    w.api
        .apply("ingresses", ingress("legacy", "kedge", "ing.example.com", "/", "web"));
    w.api
        .apply("ingresses", ingress("both", "kedge", "gw.example.com", "/", "web"));
    w.wait_routed("gw.example.com", "/", (200, Some("web")));
    w.api.apply("gateways", gateway("edge", port, &[]));
    w.api.apply(
        "httproutes",
        route(
            "shop",
            "edge",
            &["gw.example.com"],
            json!([
                {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": to("a")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": to("b")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}], "backendRefs": to("a")},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}], "backendRefs": to("c")},
                {"matches": [{"path": {"value": "/api"}, "headers": [{"name": "X-Env", "value": "canary"}]}], "backendRefs": to("c")},
                {"matches": [{"path": {"value": "/api"}, "queryParams": [{"name": "v", "value": "2"}]}], "backendRefs": to("a")},
                {"matches": [{"path": {"value": "/tags"}, "headers": [{"name": "X-Tag", "value": "a, b"}]}], "backendRefs": to("c")},
                {"matches": [{"path": {"value": "/"}}], "backendRefs": to("a")},
            ]),
        ),
    );
    w.api.apply(
        "httproutes",
        route(
            "strict",
            "edge",
            &["strict.example.com"],
            json!([{"matches": [{"path": {"value": "/only"}}], "backendRefs": to("b")}]),
        ),
    );
    // The HTTPRoute takes gw.example.com from the Ingress on the Gateway's address and port.
    w.wait_routed("gw.example.com", "/", (200, Some("a")));
    w.wait_routed("strict.example.com", "/only/x", (200, Some("b")));
    let h = "gw.example.com";
    let cases: &[(&str, (u16, Option<&str>))] = &[
        (&format!("GET /exact HTTP/1.1\r\nHost: {h}\r\n\r\n"), (200, Some("a"))),
        (&format!("GET /exact/x HTTP/1.1\r\nHost: {h}\r\n\r\n"), (200, Some("a"))),
        (
            &format!("GET /api HTTP/1.1\r\nHost: {h}:{port}\r\n\r\n"),
            (200, Some("b")),
        ),
        (&format!("GET /api/x HTTP/1.1\r\nHost: {h}\r\n\r\n"), (200, Some("b"))),
        (&format!("GET /apix HTTP/1.1\r\nHost: {h}\r\n\r\n"), (200, Some("a"))),
        (
            &format!("POST /api/x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n"),
            (200, Some("a")),
        ),
        (
            &format!("GET /items/42 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            (200, Some("c")),
        ),
        (
            &format!("GET /items/42/x HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            (200, Some("a")),
        ),
        (
            &format!("GET /api/x HTTP/1.1\r\nHost: {h}\r\nx-env: canary\r\n\r\n"),
            (200, Some("c")),
        ),
        (
            &format!("GET /api/x HTTP/1.1\r\nHost: {h}\r\nx-env: prod\r\n\r\n"),
            (200, Some("b")),
        ),
        (
            &format!("GET /api/x?a=1&v=2 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            (200, Some("a")),
        ),
        (
            &format!("GET /api/x?V=2 HTTP/1.1\r\nHost: {h}\r\n\r\n"),
            (200, Some("b")),
        ),
        // A repeated header is matched as its values joined with ", ".
        (
            &format!("GET /tags HTTP/1.1\r\nHost: {h}\r\nX-Tag: a\r\nx-tag: b\r\n\r\n"),
            (200, Some("c")),
        ),
        (
            &format!("GET /tags HTTP/1.1\r\nHost: {h}\r\nX-Tag: a\r\n\r\n"),
            (200, Some("a")),
        ),
        // No rule of the host matches: 404, not the Ingress of the same host.
        ("GET /other HTTP/1.1\r\nHost: strict.example.com\r\n\r\n", (404, None)),
        // A host no route names: the Ingress rules.
        ("GET / HTTP/1.1\r\nHost: ing.example.com\r\n\r\n", (200, Some("web"))),
    ];
    for (raw, want) in cases {
        let r = w.send(raw);
        assert_eq!(answered(&r), *want, "{raw:?}");
    }
    // The same over HTTP/2.
    let h2 = H2::connect(w.kedge.addr());
    assert_eq!(h2.get(h, "/items/7").upstream(), Some("c"));
    let req = h2
        .req("GET", h, "/api/x")
        .header("x-env", "canary")
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, None).upstream(), Some("c"));
    let req = h2
        .req("GET", h, "/tags")
        .header("x-tag", "a")
        .header("x-tag", "b")
        .body(())
        .expect("request");
    assert_eq!(h2.request(req, None).upstream(), Some("c"));
    assert_eq!(h2.get("strict.example.com", "/nope").status, 404);
    // The overlap is reported, naming both.
    w.kedge.wait_log(
        "host gw.example.com: claimed by HTTPRoute default/shop of cluster test and by Ingress default/both",
        WAIT,
    );
}

#[test]
fn weights_unusable_backends_and_rules_without_backends() {
    let w = World::start(Driver::default(), "gw-weights", &["a", "b", "z"]);
    let port = w.kedge.addr().port();
    w.api.apply("gateways", gateway("edge", port, &[]));
    w.api.apply(
        "httproutes",
        route(
            "split",
            "edge",
            &["w.example.com"],
            json!([
                {"matches": [{"path": {"value": "/split"}}], "backendRefs": [
                    {"name": "a", "port": 80, "weight": 1},
                    {"name": "b", "port": 80, "weight": 1},
                    {"name": "z", "port": 80, "weight": 0},
                ]},
                {"matches": [{"path": {"value": "/half"}}], "backendRefs": [
                    {"name": "a", "port": 80, "weight": 1},
                    {"name": "missing", "port": 80, "weight": 1},
                ]},
                {"matches": [{"path": {"value": "/nothing"}}]},
            ]),
        ),
    );
    wait_until(WAIT, "the split route", || {
        get(&w.kedge, "w.example.com", "/split").0 == 200
    });
    let before = w.up("z").request_count();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let (status, up) = get(&w.kedge, "w.example.com", "/split");
        assert_eq!(status, 200);
        *seen.entry(up.unwrap_or_default()).or_default() += 1;
    }
    assert!(seen.get("a").copied().unwrap_or(0) > 0, "{seen:?}");
    assert!(seen.get("b").copied().unwrap_or(0) > 0, "{seen:?}");
    assert_eq!(seen.get("z"), None, "weight 0 gets nothing: {seen:?}");
    assert_eq!(w.up("z").request_count(), before);
    // The missing Service's share is answered 500, the rest served.
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..60 {
        *statuses.entry(get(&w.kedge, "w.example.com", "/half").0).or_default() += 1;
    }
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(statuses.get(&500).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(get(&w.kedge, "w.example.com", "/nothing").0, 500);
    // `/backends` shows the Gateway rules with their scope.
    let view = Client::connect(w.kedge.admin_addr()).get("x", "/backends").text();
    let view: Value = serde_json::from_str(&view).expect("JSON");
    let a = view["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "test/default/a:80"))
        .expect("backend a");
    let rules = a["rules"].as_array().expect("rules");
    assert!(
        rules.iter().any(|r| r["host"] == "w.example.com"
            && r["path"] == "/split"
            && r["path_type"] == "Gateway"
            && r["scope"] == format!("*:{port}")),
        "{rules:#?}"
    );
}

crate::support::both_drivers!(
    fn filters_on_both_front_ends(driver) {
        let w = World::start(driver, "gw-filters", &["a"]);
        let port = w.kedge.addr().port();
        w.api.apply("gateways", gateway("edge", port, &[]));
        w.api.apply(
            "httproutes",
            route(
                "filters",
                "edge",
                &["f.example.com"],
                json!([
                    {"matches": [{"path": {"value": "/headers"}}],
                     "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                            "set": [{"name": "X-Set", "value": "set"}],
                            "add": [{"name": "X-Add", "value": "added"}],
                            "remove": ["X-Drop"]}},
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                            "set": [{"name": "X-Upstream", "value": "hidden"}],
                            "add": [{"name": "X-Resp", "value": "yes"}]}}],
                     "backendRefs": [{"name": "a", "port": 80, "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "X-Backend", "value": "a"}]}}]}]},
                    {"matches": [{"path": {"value": "/old"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {
                        "scheme": "https", "hostname": "new.example.com", "statusCode": 301,
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
                    {"matches": [{"path": {"value": "/port"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"port": 8443}}]},
                    {"matches": [{"path": {"value": "/see-other"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "o.example.com", "statusCode": 303}}]},
                    {"matches": [{"path": {"value": "/temporary"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "o.example.com", "statusCode": 307}}]},
                    {"matches": [{"path": {"value": "/permanent"}}],
                     "filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": "o.example.com", "statusCode": 308}}]},
                    {"matches": [{"path": {"value": "/rewrite"}}],
                     "filters": [{"type": "URLRewrite", "urlRewrite": {
                        "hostname": "inner.example.com",
                        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}],
                     "backendRefs": to("a")},
                    {"matches": [{"path": {"value": "/cors"}}],
                     "filters": [{"type": "CORS", "cors": {
                        "allowOrigins": ["https://app.example.com"], "allowMethods": ["GET", "POST"],
                        "allowHeaders": ["x-token"], "exposeHeaders": ["x-total"], "maxAge": 60}}],
                     "backendRefs": to("a")},
                    {"matches": [{"path": {"value": "/full"}}],
                     "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/fixed"}}}],
                     "backendRefs": to("a")},
                ]),
            ),
        );
        wait_until(WAIT, "the filters route", || get(&w.kedge, "f.example.com", "/full").0 == 200);
        let up = w.up("a");

        // Header changes, HTTP/1.1.
        let r = w.send("GET /headers HTTP/1.1\r\nHost: f.example.com\r\nX-Set: old\r\nX-Drop: x\r\nX-Keep: k\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("hidden"), "{:?}", r.headers);
        assert_eq!(r.header("x-resp"), Some("yes"));
        let seen = up.requests().pop().expect("a request");
        assert_eq!(seen.header_all("x-set"), ["set"]);
        assert_eq!(seen.header_all("x-add"), ["added"]);
        assert_eq!(seen.header("x-backend"), Some("a"));
        assert_eq!(seen.header("x-drop"), None);
        assert_eq!(seen.header("x-keep"), Some("k"));

        // Redirects.
        let r = w.send("GET /old/page?q=1 HTTP/1.1\r\nHost: f.example.com\r\n\r\n");
        assert_eq!((r.status, r.header("location")), (301, Some("https://new.example.com/new/page?q=1")));
        let r = w.send("GET /port HTTP/1.1\r\nHost: f.example.com\r\n\r\n");
        assert_eq!((r.status, r.header("location")), (302, Some("http://f.example.com:8443/port")));
        for (path, status) in [("/see-other", 303), ("/temporary", 307), ("/permanent", 308)] {
            let r = w.send(&format!("GET {path} HTTP/1.1\r\nHost: f.example.com\r\n\r\n"));
            let want = format!("http://o.example.com:{port}{path}");
            assert_eq!((r.status, r.header("location")), (status, Some(want.as_str())), "{path}");
        }

        // Rewrites: path and Host.
        let r = w.send("GET /rewrite/x?y=1 HTTP/1.1\r\nHost: f.example.com\r\n\r\n");
        assert_eq!(r.status, 200);
        let seen = up.requests().pop().expect("a request");
        assert_eq!(seen.uri, "/v2/x?y=1");
        assert_eq!(seen.header_all("host"), ["inner.example.com"]);
        assert_eq!(seen.header("x-forwarded-host"), Some("f.example.com"));
        let r = w.send("GET /full/a/b HTTP/1.1\r\nHost: f.example.com\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(up.requests().pop().expect("a request").uri, "/fixed");

        // CORS: the preflight answered by kedge, the response of an allowed origin marked.
        let before = up.request_count();
        let r = w.send(
            "OPTIONS /cors HTTP/1.1\r\nHost: f.example.com\r\nOrigin: https://app.example.com\r\n\
             Access-Control-Request-Method: POST\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(r.header("access-control-allow-headers"), Some("x-token"));
        assert_eq!(r.header("access-control-max-age"), Some("60"));
        assert_eq!(up.request_count(), before, "a preflight is not forwarded");
        let r = w.send("GET /cors HTTP/1.1\r\nHost: f.example.com\r\nOrigin: https://app.example.com\r\n\r\n");
        assert_eq!(answered(&r), (200, Some("a")));
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
        assert_eq!(r.header("access-control-expose-headers"), Some("x-total"));
        let r = w.send("GET /cors HTTP/1.1\r\nHost: f.example.com\r\nOrigin: https://other.example.com\r\n\r\n");
        assert_eq!(answered(&r), (200, Some("a")));
        assert_eq!(r.header("access-control-allow-origin"), None);

        // The same over HTTP/2.
        let h2 = H2::connect(w.kedge.addr());
        let req = h2
            .req("GET", "f.example.com", "/cors")
            .header("origin", "https://app.example.com")
            .body(())
            .expect("request");
        let r = h2.request(req, None);
        assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
        let req = h2
            .req("OPTIONS", "f.example.com", "/cors")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "GET")
            .body(())
            .expect("request");
        let r = h2.request(req, None);
        assert_eq!((r.status, r.header("access-control-allow-methods")), (200, Some("GET, POST")));
        let req = h2
            .req("GET", "f.example.com", "/headers")
            .header("x-drop", "x")
            .body(())
            .expect("request");
        let r = h2.request(req, None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-upstream"), Some("hidden"));
        assert_eq!(r.header("x-resp"), Some("yes"));
        let seen = up.requests().pop().expect("a request");
        assert_eq!(seen.header_all("x-set"), ["set"]);
        assert_eq!(seen.header("x-drop"), None);
        let r = h2.get("f.example.com", "/old/page");
        assert_eq!((r.status, r.header("location")), (301, Some("https://new.example.com/new/page")));
        assert_eq!(h2.get("f.example.com", "/rewrite/z").status, 200);
        let seen = up.requests().pop().expect("a request");
        assert_eq!(seen.uri, "/v2/z");
        assert_eq!(seen.header_all("host"), ["inner.example.com"]);
        assert_eq!(seen.header("x-forwarded-host"), Some("f.example.com"));
    }
);

#[test]
fn request_timeouts_answer_504() {
    let slow = Upstream::start("slow", Handler::Delay(Duration::from_secs(5)));
    let w = World::start(Driver::default(), "gw-timeouts", &[]);
    w.api.apply("services", service("slow"));
    w.api
        .apply("endpointslices", slice("slow", slow.addr().port(), &["127.0.0.1"]));
    let port = w.kedge.addr().port();
    w.api.apply("gateways", gateway("edge", port, &[]));
    w.api.apply(
        "httproutes",
        route(
            "slow",
            "edge",
            &["t.example.com"],
            json!([
                {"matches": [{"path": {"value": "/request"}}], "timeouts": {"request": "200ms"}, "backendRefs": to("slow")},
                {"matches": [{"path": {"value": "/backend"}}], "timeouts": {"backendRequest": "200ms"}, "backendRefs": to("slow")},
            ]),
        ),
    );
    // Routed (the slow upstream saw the request), and answered 504 by kedge.
    wait_until(WAIT, "the timeout route", || {
        get(&w.kedge, "t.example.com", "/request").0 == 504
    });
    assert!(slow.request_count() >= 1);
    let r = w.send("GET /request HTTP/1.1\r\nHost: t.example.com\r\n\r\n");
    assert_eq!(r.status, 504);
    assert!(r.text().contains("request timeout"), "{}", r.text());
    let r = w.send("GET /backend HTTP/1.1\r\nHost: t.example.com\r\n\r\n");
    assert_eq!(r.status, 504);
}

/// A port free on both 127.0.0.1 and 127.0.0.2 (as far as one can tell before binding it).
fn free_port_on_both() -> u16 {
    wait_for(WAIT, "a port free on 127.0.0.1 and 127.0.0.2", || {
        let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = a.local_addr().map_err(|e| e.to_string())?.port();
        std::net::TcpListener::bind(("127.0.0.2", port)).map_err(|e| e.to_string())?;
        Ok::<u16, String>(port)
    })
}

/// Behind PROXY protocol the scope is still chosen by kedge's own address: a header naming
/// another destination changes nothing.
#[test]
fn proxy_protocol_does_not_change_the_scope() {
    use crate::proxy_protocol::{FROM_LB, connect_from};
    let port = free_port_on_both();
    let listener = format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\n{FROM_LB}\n");
    let setup = Kedge::setup(Driver::default()).tables(&listener);
    let w = World::start_with("gw-proxy", &["one"], setup);
    w.api.apply("gateways", gateway("gw-one", port, &["127.0.0.1"]));
    w.api.apply(
        "httproutes",
        route("r1", "gw-one", &["p.example.com"], json!([{"backendRefs": to("one")}])),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let ask = || {
        // The balancer (127.0.0.2) says the client reached 127.0.0.2, not kedge's 127.0.0.1.
        let mut c = Client::over(connect_from(2, addr)).expect("client");
        c.send(
            format!("PROXY TCP4 192.0.2.7 127.0.0.2 40000 {port}\r\nGET / HTTP/1.1\r\nHost: p.example.com\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        (r.status, r.upstream().map(str::to_owned))
    };
    wait_for(WAIT, "routed through the PROXY header", || {
        let got = ask();
        if got == (200, Some("one".to_owned())) {
            Ok(())
        } else {
            Err(got)
        }
    });
    let seen = w.up("one").requests().pop().expect("a request");
    assert_eq!(seen.header("x-real-ip"), Some("192.0.2.7"));
}

#[test]
fn two_gateways_on_one_port_are_isolated_by_address() {
    // kedge listens on 127.0.0.1 and 127.0.0.2 on one port; each Gateway has one address.
    let port = free_port_on_both();
    let listeners =
        format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n[[listener]]\naddress = \"127.0.0.2:{port}\"\n");
    let setup = Kedge::setup(Driver::default()).tables(&listeners);
    let w = World::start_with("gw-isolated", &["one", "two"], setup);
    w.api.apply("gateways", gateway("gw-one", port, &["127.0.0.1"]));
    w.api.apply("gateways", gateway("gw-two", port, &["127.0.0.2"]));
    w.api.apply(
        "httproutes",
        route(
            "r1",
            "gw-one",
            &["same.example.com"],
            json!([{"backendRefs": to("one")}]),
        ),
    );
    w.api.apply(
        "httproutes",
        route(
            "r2",
            "gw-two",
            &["same.example.com"],
            json!([{"backendRefs": to("two")}]),
        ),
    );
    w.api.apply(
        "httproutes",
        route(
            "r3",
            "gw-one",
            &["only-one.example.com"],
            json!([{"backendRefs": to("one")}]),
        ),
    );
    let ask = |ip: &str, host: &str| {
        let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("address");
        let r = Client::connect(addr).get(host, "/");
        (r.status, r.upstream().map(str::to_owned))
    };
    wait_until(WAIT, "both Gateways routed", || {
        ask("127.0.0.1", "same.example.com").1.as_deref() == Some("one")
            && ask("127.0.0.2", "same.example.com").1.as_deref() == Some("two")
    });
    assert_eq!(ask("127.0.0.1", "only-one.example.com"), (200, Some("one".into())));
    // Not a host of the second Gateway: no Ingress either, 404.
    assert_eq!(ask("127.0.0.2", "only-one.example.com").0, 404);
}

/// RequestMirror: a copy of each request goes to the mirror backend, its answer discarded; its
/// body is copied too, chunked or not (larger bodies, HTTP/2 and a stalled mirror: `mirror.rs`).
#[test]
fn request_mirror_copies_requests_and_bounded_bodies() {
    let w = World::start(Driver::default(), "gw-mirror", &["a", "m"]);
    let port = w.kedge.addr().port();
    w.api.apply("gateways", gateway("edge", port, &[]));
    w.api.apply(
        "httproutes",
        route(
            "mirrored",
            "edge",
            &["m.example.com"],
            json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m", "port": 80}}}],
                    "backendRefs": to("a")}]),
        ),
    );
    w.wait_routed("m.example.com", "/first", (200, Some("a")));
    let r = w.send("POST /posted HTTP/1.1\r\nHost: m.example.com\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(answered(&r), (200, Some("a")));
    let r = w.send(
        "POST /chunked HTTP/1.1\r\nHost: m.example.com\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    );
    assert_eq!(answered(&r), (200, Some("a")));
    let r = w.send("GET /copied?x=1 HTTP/1.1\r\nHost: m.example.com\r\nX-Trace: t1\r\n\r\n");
    assert_eq!(answered(&r), (200, Some("a")));
    let mirror = w.up("m");
    wait_until(WAIT, "the mirror got the GET and both POSTs", || {
        let seen = mirror.requests();
        ["/copied?x=1", "/posted", "/chunked"]
            .iter()
            .all(|uri| seen.iter().any(|s| s.uri == *uri))
    });
    let seen = mirror.requests();
    let copy = seen.iter().find(|s| s.uri == "/copied?x=1").expect("the copy");
    assert_eq!((copy.method.as_str(), copy.header("x-trace")), ("GET", Some("t1")));
    let posted = seen.iter().find(|s| s.uri == "/posted").expect("the POST's copy");
    assert_eq!(posted.method, "POST");
    assert!(posted.body_complete);
    assert_eq!(
        (posted.body_len, posted.body_hash),
        (5, crate::support::body::hash(b"hello"))
    );
    let chunked = seen
        .iter()
        .find(|s| s.uri == "/chunked")
        .expect("the chunked POST's copy");
    assert!(chunked.body_complete);
    assert_eq!(
        (chunked.body_len, chunked.body_hash),
        (2, crate::support::body::hash(b"hi"))
    );
    // The backend got everything, bodies whole.
    let at_a = w.up("a").requests();
    assert_eq!(at_a.iter().filter(|s| s.uri != "/first").count(), 3);
    let posted = at_a.iter().find(|s| s.uri == "/posted").expect("the POST");
    assert_eq!((posted.body_len, posted.body_complete), (5, true));
}

/// A listener whose hostname a request's host selects answers with its own routes or a 404,
/// even with no route attached: its host falls through neither to a wildcard listener of the
/// Gateway nor to an Ingress for the same host.
#[test]
fn a_listener_without_routes_still_owns_its_hostname() {
    let w = World::start(Driver::default(), "gw-listener-isolation", &["wild", "quiet", "web"]);
    let port = w.kedge.addr().port();
    w.api
        .apply("ingresses", ingress("legacy", "kedge", "quiet.example.com", "/", "web"));
    w.wait_routed("quiet.example.com", "/", (200, Some("web")));
    w.api.apply(
        "gateways",
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
               "spec": {"gatewayClassName": "kedge", "listeners": [
                   {"name": "wild", "port": port, "protocol": "HTTP", "hostname": "*.example.com"},
                   {"name": "quiet", "port": port, "protocol": "HTTP", "hostname": "quiet.example.com"}]}}),
    );
    let mut wild = route("wild", "edge", &[], json!([{"backendRefs": to("wild")}]));
    wild["spec"]["parentRefs"][0]["sectionName"] = json!("wild");
    w.api.apply("httproutes", wild);
    // The route and both listeners arrive in one table.
    w.wait_routed("other.example.com", "/", (200, Some("wild")));
    assert_eq!(get(&w.kedge, "quiet.example.com", "/"), (404, None));
    // A route attached to the listener serves it.
    let mut quiet = route("quiet", "edge", &[], json!([{"backendRefs": to("quiet")}]));
    quiet["spec"]["parentRefs"][0]["sectionName"] = json!("quiet");
    w.api.apply("httproutes", quiet);
    w.wait_routed("quiet.example.com", "/", (200, Some("quiet")));
    assert_eq!(get(&w.kedge, "other.example.com", "/"), (200, Some("wild".into())));
}

/// kedge's listeners: TLS on `port` of 127.0.0.1 and of 127.0.0.2.
fn tls_on_both(port: u16) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:{port}\"\ntls = true\n\n[[listener]]\naddress = \"127.0.0.2:{port}\"\ntls = true\n"
    )
}

/// A TLS GET / of `host` to `ip:port`: the certificate served, the status and the upstream that
/// answered; `None` when the handshake fails.
fn ask_tls(
    ca: &crate::support::tls::TestCa,
    ip: &str,
    port: u16,
    host: &str,
) -> Option<(rustls::pki_types::CertificateDer<'static>, u16, Option<String>)> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("address");
    let mut c = Client::try_connect_tls(addr, ca.client(), host).ok()?;
    let r = c.get(host, "/");
    Some((c.peer_leaf(), r.status, r.upstream().map(str::to_owned)))
}

/// Two Gateways on one port, one on 127.0.0.1 and one on 127.0.0.2, each with an HTTPS listener
/// for the same hostname and a certificate of its own: each address serves its own Gateway's
/// certificate (and routes), never the other Gateway's, whichever came first.
#[test]
fn two_gateways_on_one_port_serve_their_own_certificates_for_one_hostname() {
    use crate::support::tls::TestCa;
    let ca = TestCa::new();
    let port = free_port_on_both();
    let setup = Kedge::setup(Driver::default()).tables(&tls_on_both(port));
    let w = World::start_with("gw-certs", &["one", "two"], setup);
    let first = ca.leaf(&["same.example.com"]);
    let second = ca.leaf(&["same.example.com"]);
    w.api.apply("secrets", first.secret("default", "one-tls"));
    w.api.apply("secrets", second.secret("default", "two-tls"));
    for (name, address, secret, svc) in [
        ("gw-one", "127.0.0.1", "one-tls", "one"),
        ("gw-two", "127.0.0.2", "two-tls", "two"),
    ] {
        w.api.apply(
            "gateways",
            json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name, "namespace": "default"},
                   "spec": {"gatewayClassName": "kedge", "addresses": [{"type": "IPAddress", "value": address}],
                            "listeners": [{"name": "https", "port": port, "protocol": "HTTPS",
                                           "hostname": "same.example.com",
                                           "tls": {"certificateRefs": [{"name": secret}]}}]}}),
        );
        w.api.apply(
            "httproutes",
            route(svc, name, &["same.example.com"], json!([{"backendRefs": to(svc)}])),
        );
    }
    // The certificate served on `ip`, and where a request over that connection went.
    let ask = |ip: &str| ask_tls(&ca, ip, port, "same.example.com");
    wait_until(WAIT, "each address serves its own Gateway's certificate", || {
        ask("127.0.0.1") == Some((first.der.clone(), 200, Some("one".into())))
            && ask("127.0.0.2") == Some((second.der.clone(), 200, Some("two".into())))
    });
    // The first Gateway goes: its address no longer serves any certificate for the name (kedge
    // has none of its own), while the second's is unchanged.
    w.api.delete("gateways", Some("default"), "gw-one");
    wait_until(WAIT, "127.0.0.1 without a certificate", || ask("127.0.0.1").is_none());
    assert_eq!(ask("127.0.0.2"), Some((second.der.clone(), 200, Some("two".into()))));
}

/// An Ingress and a Gateway HTTPS listener name the same host with different certificates: on
/// the Gateway's address its routes decide, and so does its certificate; on another address the
/// Ingress's certificate and routes serve. When the Gateway goes, the Ingress serves both.
#[test]
fn on_a_gateways_address_its_certificate_beats_an_ingress_for_the_same_host() {
    use crate::support::tls::TestCa;
    let ca = TestCa::new();
    let port = free_port_on_both();
    let setup = Kedge::setup(Driver::default()).tables(&tls_on_both(port));
    let w = World::start_with("gw-ing-certs", &["gw", "ing"], setup);
    let gateway_cert = ca.leaf(&["same.example.com"]);
    let ingress_cert = ca.leaf(&["same.example.com"]);
    w.api.apply("secrets", gateway_cert.secret("default", "gw-tls"));
    w.api.apply("secrets", ingress_cert.secret("default", "ing-tls"));
    let mut ing = ingress("ing", "kedge", "same.example.com", "/", "ing");
    ing["spec"]["tls"] = json!([{"hosts": ["same.example.com"], "secretName": "ing-tls"}]);
    w.api.apply("ingresses", ing);
    w.api.apply(
        "gateways",
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
               "spec": {"gatewayClassName": "kedge", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                        "listeners": [{"name": "https", "port": port, "protocol": "HTTPS",
                                       "hostname": "same.example.com",
                                       "tls": {"certificateRefs": [{"name": "gw-tls"}]}}]}}),
    );
    w.api.apply(
        "httproutes",
        route("gw", "edge", &["same.example.com"], json!([{"backendRefs": to("gw")}])),
    );
    let ask = |ip: &str| ask_tls(&ca, ip, port, "same.example.com");
    wait_until(WAIT, "the Gateway's certificate and route on its address", || {
        ask("127.0.0.1") == Some((gateway_cert.der.clone(), 200, Some("gw".into())))
    });
    assert_eq!(
        ask("127.0.0.2"),
        Some((ingress_cert.der.clone(), 200, Some("ing".into())))
    );
    w.api.delete("gateways", Some("default"), "edge");
    wait_until(WAIT, "the Ingress's certificate on the former Gateway address", || {
        ask("127.0.0.1") == Some((ingress_cert.der.clone(), 200, Some("ing".into())))
    });
    assert_eq!(
        ask("127.0.0.2"),
        Some((ingress_cert.der.clone(), 200, Some("ing".into())))
    );
}

/// A Gateway listener's certificate rotated is served after an update (no build from nothing:
/// the listener stays programmed, the routes attach as before); deleted, the listener is no
/// longer programmed, which a build from nothing decides.
#[test]
fn a_gateway_certificate_rotation_is_an_update() {
    use crate::support::tls::TestCa;
    let ca = TestCa::new();
    let port = free_port_on_both();
    let setup = Kedge::setup(Driver::default()).tables(&tls_on_both(port));
    let w = World::start_with("gw-rotation", &["one"], setup);
    let first = ca.leaf(&["rot.example.com"]);
    w.api.apply("secrets", first.secret("default", "rot-tls"));
    w.api.apply(
        "gateways",
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
               "spec": {"gatewayClassName": "kedge", "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
                        "listeners": [{"name": "https", "port": port, "protocol": "HTTPS",
                                       "hostname": "rot.example.com",
                                       "tls": {"certificateRefs": [{"name": "rot-tls"}]}}]}}),
    );
    w.api.apply(
        "httproutes",
        route("one", "edge", &["rot.example.com"], json!([{"backendRefs": to("one")}])),
    );
    let ask = || ask_tls(&ca, "127.0.0.1", port, "rot.example.com");
    wait_until(WAIT, "the Gateway's certificate and route", || {
        ask() == Some((first.der.clone(), 200, Some("one".into())))
    });
    let count = |why: &str| {
        w.kedge
            .logs()
            .iter()
            .filter(|l| l.contains("route table published") && l.contains(&format!("why=\"{why}\"")))
            .count()
    };
    let (full, updates) = (count("watch"), count("update"));
    let second = ca.leaf(&["rot.example.com"]);
    w.api.apply("secrets", second.secret("default", "rot-tls"));
    wait_until(WAIT, "the new certificate", || {
        ask() == Some((second.der.clone(), 200, Some("one".into())))
    });
    // (The line follows the table's publication.)
    w.kedge.wait_logs("why=\"update\"", updates + 1, WAIT);
    assert_eq!(count("watch"), full, "no build from nothing");
    // Gone: no usable certificate, the listener is not programmed.
    w.api.delete("secrets", Some("default"), "rot-tls");
    wait_until(WAIT, "no certificate for the name", || ask().is_none());
    w.kedge.wait_logs("why=\"watch\"", full + 1, WAIT);
}

/// HTTPRouteRequestMultipleMirrors and HTTPRouteRequestPercentageMirror: every RequestMirror
/// filter of a rule gets its own copy; `percent: 0` mirrors nothing, a `fraction` of 1/2 about
/// half of the requests, none and `percent: 100` every one.
#[test]
fn several_mirrors_each_get_their_share_of_copies() {
    let w = World::start(Driver::default(), "gw-mirrors", &["a", "all", "full", "none", "half"]);
    let port = w.kedge.addr().port();
    w.api.apply("gateways", gateway("edge", port, &[]));
    let mirror = |svc: &str, share: Value| {
        let mut m = json!({"backendRef": {"name": svc, "port": 80}});
        if let Value::Object(o) = share {
            m.as_object_mut().expect("an object").extend(o);
        }
        json!({"type": "RequestMirror", "requestMirror": m})
    };
    w.api.apply(
        "httproutes",
        route(
            "mirrors",
            "edge",
            &["mm.example.com"],
            json!([{"filters": [
                        mirror("all", json!(null)),
                        mirror("full", json!({"percent": 100})),
                        mirror("none", json!({"percent": 0})),
                        mirror("half", json!({"fraction": {"numerator": 1, "denominator": 2}})),
                    ],
                    "backendRefs": to("a")}]),
        ),
    );
    w.wait_routed("mm.example.com", "/warm-up", (200, Some("a")));
    const N: usize = 60;
    for i in 0..N {
        let r = w.send(&format!("GET /n{i} HTTP/1.1\r\nHost: mm.example.com\r\n\r\n"));
        assert_eq!(answered(&r), (200, Some("a")));
    }
    let copies = |svc: &str| w.up(svc).requests().iter().filter(|s| s.uri.starts_with("/n")).count();
    wait_until(WAIT, "both full mirrors got every request", || {
        copies("all") == N && copies("full") == N
    });
    // Each copy is the request, once: the full mirrors saw each path exactly once.
    let mut paths: Vec<String> = w.up("full").requests().into_iter().map(|s| s.uri).collect();
    paths.retain(|p| p.starts_with("/n"));
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), N);
    // Half of 60: far from both 0 and 60 (a binomial(60, 1/2) is outside 10..=50 with a
    // probability below 1e-7).
    wait_until(WAIT, "the half mirror got some copies", || copies("half") >= 10);
    assert!(copies("half") <= 50, "half mirrored {} of {N}", copies("half"));
    assert_eq!(copies("none"), 0, "percent 0 mirrors nothing");
    assert_eq!(
        w.up("a").requests().iter().filter(|s| s.uri.starts_with("/n")).count(),
        N
    );
}

/// HTTPRouteParentRefPort: a parentRef's `port` attaches the route to the Gateway's listeners on
/// that port only; a port no listener has attaches it nowhere (`Accepted=False`,
/// `NoMatchingParent`).
#[test]
fn a_parent_ref_port_attaches_to_that_port_only() {
    let (one, two) = {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        (
            a.local_addr().expect("address").port(),
            b.local_addr().expect("address").port(),
        )
    };
    let listeners =
        format!("[[listener]]\naddress = \"127.0.0.1:{one}\"\n\n[[listener]]\naddress = \"127.0.0.1:{two}\"\n");
    let setup = Kedge::setup(Driver::default()).tables(&listeners);
    let w = World::start_with("gw-parent-port", &["a"], setup);
    w.api.apply(
        "gateways",
        json!({"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge", "namespace": "default"},
               "spec": {"gatewayClassName": "kedge", "listeners": [
                   {"name": "one", "port": one, "protocol": "HTTP"},
                   {"name": "two", "port": two, "protocol": "HTTP"}]}}),
    );
    let mut by_port = route(
        "by-port",
        "edge",
        &["port.example.com"],
        json!([{"backendRefs": to("a")}]),
    );
    by_port["spec"]["parentRefs"][0]["port"] = json!(two);
    w.api.apply("httproutes", by_port);
    // A port the Gateway has no listener on (kedge's listeners are on `one` and `two`).
    let nowhere = if one == 1 || two == 1 { 2 } else { 1 };
    let mut lost = route("lost", "edge", &["lost.example.com"], json!([{"backendRefs": to("a")}]));
    lost["spec"]["parentRefs"][0]["port"] = json!(nowhere);
    w.api.apply("httproutes", lost);
    let ask = |port: u16, host: &str| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let r = Client::connect(addr).get(host, "/");
        (r.status, r.upstream().map(str::to_owned))
    };
    wait_until(WAIT, "the route served on its port", || {
        ask(two, "port.example.com") == (200, Some("a".into()))
    });
    assert_eq!(ask(one, "port.example.com").0, 404, "not attached to the other port");
    wait_until(WAIT, "the route without a listener on its port refused", || {
        w.api
            .get("httproutes", Some("default"), "lost")
            .and_then(|r| {
                let parents = r["status"]["parents"].as_array()?.clone();
                let conditions = parents.first()?["conditions"].as_array()?.clone();
                conditions.iter().find(|c| c["type"] == "Accepted").cloned()
            })
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "NoMatchingParent")
    });
    assert_eq!(ask(two, "lost.example.com").0, 404);
}

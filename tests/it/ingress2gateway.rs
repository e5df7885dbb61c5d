//! Migrating from ingress-nginx to the Gateway API on one kedge, as README.md tells it: an
//! app's Ingresses are served; what `ingress2gateway` (its ingress-nginx provider) makes of
//! them (`tests/fixtures/ingress2gateway/`) is applied next to them with kedge's class and its
//! listeners' ports, and its status read; then the Ingresses are removed. The same requests get
//! the same answers at each step: status, upstream, redirect, certificate.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::gateway_routes::gateway_class;
use crate::support::objects::{ingress_class, service, slice};
use crate::support::tls::{Leaf, TestCa};
use crate::support::{Client, Driver, FakeApi, Handler, Kedge, TempDir, Upstream, wait_for, wait_until};

const WAIT: Duration = Duration::from_secs(15);

/// The objects of `tests/fixtures/ingress2gateway/NAME`.
fn fixture(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/fixtures/ingress2gateway/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the README's steps change before applying: the Ingress and Gateway classes become
/// kedge's, and the Gateway's ports 80 and 443 (listeners and `parentRefs`) kedge's listeners'
/// (an edge host listening on 80 and 443 keeps them as they are).
fn adapt(mut obj: Value, http: u16, https: u16) -> Value {
    let port = |p: &mut Value| match p.as_u64() {
        Some(80) => *p = json!(http),
        Some(443) => *p = json!(https),
        _ => {}
    };
    let spec = obj["spec"].as_object_mut().expect("a spec");
    for class in ["ingressClassName", "gatewayClassName"] {
        if let Some(c) = spec.get_mut(class) {
            *c = json!("kedge");
        }
    }
    for list in ["listeners", "parentRefs"] {
        for item in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(p) = item.get_mut("port") {
                port(p);
            }
        }
    }
    obj
}

fn resource(obj: &Value) -> &'static str {
    match obj["kind"].as_str() {
        Some("Ingress") => "ingresses",
        Some("Gateway") => "gateways",
        Some("HTTPRoute") => "httproutes",
        other => panic!("kind {other:?} in a fixture"),
    }
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().expect("a name")
}

/// One request: over TLS (SNI the host) or plain, host, target, extra header lines.
struct Probe {
    tls: bool,
    host: &'static str,
    target: &'static str,
    headers: &'static str,
}

/// What a probe must get: status, upstream, `Location`.
type Want = (u16, Option<&'static str>, Option<&'static str>);

const fn plain(host: &'static str, target: &'static str, headers: &'static str) -> Probe {
    Probe {
        tls: false,
        host,
        target,
        headers,
    }
}

const fn tls(host: &'static str, target: &'static str) -> Probe {
    Probe {
        tls: true,
        host,
        target,
        headers: "",
    }
}

/// kedge with a plain and a TLS listener (redirects to HTTPS name port 443, as on an edge
/// host), following the fixture API server with kedge's classes and one echo upstream per
/// Service.
struct Migration {
    api: FakeApi,
    kedge: Kedge,
    ca: TestCa,
    _ups: Vec<Upstream>,
    _dir: TempDir,
}

impl Migration {
    fn start(tag: &str, services: &[&str]) -> Migration {
        let api = FakeApi::start();
        api.install_gateway_api();
        api.apply("ingressclasses", ingress_class());
        api.apply("gatewayclasses", gateway_class());
        let mut ups = Vec::new();
        for s in services {
            let up = Upstream::start(s, Handler::Echo);
            api.apply("services", service(s));
            api.apply("endpointslices", slice(s, up.addr().port(), &["127.0.0.1"]));
            ups.push(up);
        }
        let dir = TempDir::new(tag);
        let kedge = Kedge::setup(Driver::default())
            .tls()
            .tables("[tls]\nredirect_port = 443\n")
            .follow(&api, &dir, "");
        Migration {
            api,
            kedge,
            ca: TestCa::new(),
            _ups: ups,
            _dir: dir,
        }
    }

    /// Applies the objects of fixture `file`, adapted.
    fn apply(&self, file: &str) -> Vec<Value> {
        let (http, https) = (self.kedge.addr().port(), self.kedge.tls_addr().port());
        let objs: Vec<Value> = fixture(file).into_iter().map(|o| adapt(o, http, https)).collect();
        for o in &objs {
            self.api.apply(resource(o), o.clone());
        }
        objs
    }

    /// The answer to `p`: status, upstream, Location, and the certificate served over TLS
    /// (status 0 when the handshake fails).
    fn ask(&self, p: &Probe) -> (u16, Option<String>, Option<String>, Option<Vec<u8>>) {
        let raw = format!("GET {} HTTP/1.1\r\nHost: {}\r\n{}\r\n", p.target, p.host, p.headers);
        let (mut c, leaf) = if p.tls {
            match Client::try_connect_tls(self.kedge.tls_addr(), self.ca.client(), p.host) {
                Ok(c) => {
                    let leaf = c.peer_leaf().to_vec();
                    (c, Some(leaf))
                }
                Err(_) => return (0, None, None, None),
            }
        } else {
            (Client::connect(self.kedge.addr()), None)
        };
        c.send(raw.as_bytes());
        let r = c.read_response();
        let up = r.upstream().map(str::to_owned);
        (r.status, up, r.header("location").map(str::to_owned), leaf)
    }

    /// Every probe's answer against what it must get (and over TLS, `leaf`): the differences.
    fn differences(&self, probes: &[(Probe, Want)], leaf: Option<&Leaf>) -> Vec<String> {
        let mut out = Vec::new();
        for (p, want) in probes {
            let (status, up, location, served) = self.ask(p);
            let got = (status, up.as_deref(), location.as_deref());
            let cert_ok = !p.tls || served.as_deref() == leaf.map(|l| l.der.as_ref());
            if got != *want || !cert_ok {
                out.push(format!(
                    "{} {}{} {:?}: got {got:?} (certificate as expected: {cert_ok}), want {want:?}",
                    if p.tls { "https" } else { "http" },
                    p.host,
                    p.target,
                    p.headers
                ));
            }
        }
        out
    }

    /// The kinds of rule (`path_type`) kedge serves, from `/backends`.
    fn rule_kinds(&self) -> BTreeSet<String> {
        let view = Client::connect(self.kedge.admin_addr()).get("x", "/backends").text();
        let view: Value = serde_json::from_str(&view).expect("JSON");
        let backends = view["backends"].as_array().cloned().unwrap_or_default();
        backends
            .iter()
            .flat_map(|b| b["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["path_type"].as_str().map(str::to_owned))
            .collect()
    }

    /// The whole migration of one app: its Ingresses, then the Gateway API objects next to
    /// them, then without them; `probes` answered as they must at each step.
    fn run(&self, app: &str, probes: &[(Probe, Want)], leaf: Option<&Leaf>) {
        let check = |step: &str| {
            wait_for(WAIT, &format!("{app}: {step}"), || {
                let d = self.differences(probes, leaf);
                if d.is_empty() { Ok(()) } else { Err(d) }
            });
        };
        // 1. ingress-nginx's Ingresses, served by kedge.
        let ingresses = self.apply(&format!("{app}.ingress.json"));
        check("the Ingresses");
        // 2. ingress2gateway's output next to them; its status says every route is accepted.
        let gateway_api = self.apply(&format!("{app}.gateway.json"));
        for route in gateway_api.iter().filter(|o| o["kind"] == "HTTPRoute") {
            wait_until(WAIT, &format!("HTTPRoute {} accepted", name(route)), || {
                let r = self.api.get("httproutes", Some("default"), name(route));
                let parents = r.map(|r| r["status"]["parents"].clone()).unwrap_or_default();
                let parents = parents.as_array().cloned().unwrap_or_default();
                !parents.is_empty()
                    && parents.iter().all(|p| {
                        ["Accepted", "ResolvedRefs"].iter().all(|t| {
                            p["conditions"]
                                .as_array()
                                .is_some_and(|c| c.iter().any(|c| c["type"] == *t && c["status"] == "True"))
                        })
                    })
            });
        }
        wait_until(WAIT, "the Gateway routes served", || {
            self.rule_kinds().contains("Gateway")
        });
        check("Ingresses and Gateway API side by side");
        // 3. The Ingresses removed: only the Gateway API routes are left, and answer the same.
        for i in &ingresses {
            self.api.delete("ingresses", Some("default"), name(i));
        }
        wait_until(WAIT, "only Gateway routes left", || {
            self.rule_kinds() == BTreeSet::from(["Gateway".to_owned()])
        });
        let d = self.differences(probes, leaf);
        assert!(d.is_empty(), "{app}: the Gateway API alone:\n{}", d.join("\n"));
    }
}

/// TLS from a Secret, ingress-nginx's `ssl-redirect` (a 308 to HTTPS, the query kept), Prefix
/// paths by whole path elements and an Exact path.
#[test]
fn an_app_with_tls_redirect_and_exact_paths_answers_the_same() {
    let m = Migration::start("i2gw-shop", &["web", "api"]);
    let leaf = m.ca.leaf(&["shop.example.com"]);
    m.api.apply("secrets", leaf.secret("default", "shop-tls"));
    let h = "shop.example.com";
    let probes = [
        (plain(h, "/", ""), (308, None, Some("https://shop.example.com/"))),
        (
            plain(h, "/api/items?id=7", ""),
            (308, None, Some("https://shop.example.com/api/items?id=7")),
        ),
        (tls(h, "/"), (200, Some("web"), None)),
        (tls(h, "/api/items?id=7"), (200, Some("api"), None)),
        (tls(h, "/apix"), (200, Some("web"), None)),
        (tls(h, "/healthz"), (200, Some("api"), None)),
        (tls(h, "/healthz/deep"), (200, Some("web"), None)),
        (plain("other.example.com", "/", ""), (404, None, None)),
    ];
    m.run("shop", &probes, Some(&leaf));
    // While both claimed the host, kedge said which one decides.
    m.kedge.wait_log(
        "host shop.example.com: claimed by HTTPRoute default/shop-shop-example-com of cluster test and by Ingress \
         default/shop",
        WAIT,
    );
}

/// ingress-nginx's canary by header (`always`, `never`) and by weight becomes weighted
/// `backendRefs` and header matches: the header decides alike, and without it both versions
/// get traffic.
#[test]
fn a_canary_by_header_and_weight_answers_the_same() {
    let m = Migration::start("i2gw-canary", &["app-v1", "app-v2"]);
    let h = "app.example.com";
    let probes = [
        (plain(h, "/", "X-Canary: always\r\n"), (200, Some("app-v2"), None)),
        (
            plain(h, "/deep/path", "X-Canary: always\r\n"),
            (200, Some("app-v2"), None),
        ),
        (plain(h, "/", "X-Canary: never\r\n"), (200, Some("app-v1"), None)),
    ];
    let split = || {
        let mut seen = BTreeSet::new();
        for _ in 0..60 {
            let (status, up, _, _) = m.ask(&plain(h, "/", ""));
            assert_eq!(status, 200);
            seen.insert(up.unwrap_or_default());
        }
        seen
    };
    let both = BTreeSet::from(["app-v1".to_owned(), "app-v2".to_owned()]);
    m.run("canary", &probes, None);
    // The weights (70/30) with only the Gateway API left: both versions get requests (each
    // missing all 60 has a chance under 1e-9).
    assert_eq!(split(), both);
}

//! Routing end to end: exact, wildcard and any-host routes; host case and port; exact against
//! prefix paths; the longest prefix; absolute-form targets; 404 when nothing matches.

use crate::support::{Client, Driver, Handler, Kedge, Upstream, both_drivers};

/// Upstreams named A..G behind the route table the routing tests share.
struct Table {
    kedge: Kedge,
    _upstreams: Vec<Upstream>,
}

fn table(driver: Driver) -> Table {
    let ups: Vec<Upstream> = ["A", "B", "C", "D", "E", "F", "G"]
        .iter()
        .map(|n| Upstream::start(n, Handler::Echo))
        .collect();
    let a = |i: usize| ups[i].addr();
    let config = format!(
        r#"
[[route]]
host = "exact.test"
upstreams = ["{}"]

[[route]]
host = "*.wild.test"
upstreams = ["{}"]

[[route]]
host = "paths.test"
path = "/exact"
path_type = "exact"
upstreams = ["{}"]

[[route]]
host = "paths.test"
path = "/exact"
upstreams = ["{}"]

[[route]]
host = "paths.test"
path = "/api"
upstreams = ["{}"]

[[route]]
host = "paths.test"
path = "/api/v2/"
upstreams = ["{}"]

[[route]]
upstreams = ["{}"]
"#,
        a(0),
        a(1),
        a(2),
        a(3),
        a(4),
        a(5),
        a(6)
    );
    Table {
        kedge: Kedge::start(driver, &config),
        _upstreams: ups,
    }
}

/// Sends `GET path` with `Host: host` on a new connection; `expected` is the upstream name
/// that must answer, or `None` for kedge's 404.
fn check(kedge: &Kedge, host: &str, path: &str, expected: Option<&str>) {
    let resp = Client::connect(kedge.addr()).get(host, path);
    match expected {
        Some(name) => {
            assert_eq!(resp.status, 200, "{host} {path}: {}", resp.text());
            assert_eq!(resp.upstream(), Some(name), "{host} {path}");
        }
        None => {
            assert_eq!(resp.status, 404, "{host} {path} answered by {:?}", resp.upstream());
            assert_eq!(resp.upstream(), None, "{host} {path}");
        }
    }
}

both_drivers!(
    fn hosts(driver) {
        let t = table(driver);
        check(&t.kedge, "exact.test", "/", Some("A"));
        check(&t.kedge, "exact.test", "/any/thing?q=1", Some("A"));
        check(&t.kedge, "EXACT.Test:8080", "/x", Some("A"));
        check(&t.kedge, "a.wild.test", "/", Some("B"));
        check(&t.kedge, "Www.WILD.test:81", "/deep/path", Some("B"));
        // A wildcard covers exactly one label; these fall to the any-host route.
        check(&t.kedge, "a.b.wild.test", "/", Some("G"));
        check(&t.kedge, "wild.test", "/", Some("G"));
        check(&t.kedge, "unknown.test", "/whatever", Some("G"));
    }
);

both_drivers!(
    fn paths(driver) {
        let t = table(driver);
        check(&t.kedge, "paths.test", "/exact", Some("C"));
        check(&t.kedge, "paths.test", "/exact?x=1", Some("C"));
        check(&t.kedge, "paths.test", "/exact/", Some("D"));
        check(&t.kedge, "paths.test", "/exact/more", Some("D"));
        check(&t.kedge, "paths.test", "/api", Some("E"));
        check(&t.kedge, "paths.test", "/api/users", Some("E"));
        check(&t.kedge, "paths.test", "/api/v2", Some("F"));
        check(&t.kedge, "paths.test", "/api/v2/users", Some("F"));
        // Prefixes match whole path elements.
        check(&t.kedge, "paths.test", "/api/v20", Some("E"));
        check(&t.kedge, "paths.test", "/exactly", None);
        // A host with rules of its own does not fall back to the any-host route.
        check(&t.kedge, "paths.test", "/other", None);
    }
);

both_drivers!(
    fn absolute_form_target_routes_by_its_authority(driver) {
        let t = table(driver);
        let mut c = Client::connect(t.kedge.addr());
        c.send(b"GET http://exact.test/abs?q=1 HTTP/1.1\r\nHost: paths.test\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.upstream(), Some("A"));
    }
);

both_drivers!(
    fn absolute_form_is_forwarded_in_origin_form(driver) {
        // RFC 9112 §3.2.1: a request to an origin server carries only path and query, and its
        // Host (§3.2.2) is the target's authority.
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &crate::support::route_all(&[up.addr()]));
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET http://exact.test/abs?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n");
        assert_eq!(c.read_response().status, 200);
        let seen = &up.requests()[0];
        assert_eq!(
            (seen.uri.as_str(), seen.header_all("host")),
            ("/abs?q=1", vec!["exact.test"]),
            "target and Host the upstream saw; headers: {:?}",
            seen.headers
        );
    }
);

both_drivers!(
    fn a_404_leaves_a_pipelined_request_intact(driver) {
        let up = Upstream::start("only", Handler::Echo);
        let config = format!("[[route]]\npath = \"/ok\"\nupstreams = [\"{}\"]\n", up.addr());
        let kedge = Kedge::start(driver, &config);
        let mut c = Client::connect(kedge.addr());
        c.send(b"GET /nope HTTP/1.1\r\nHost: p.test\r\n\r\nGET /ok HTTP/1.1\r\nHost: p.test\r\n\r\n");
        let resp = c.read_response();
        assert_eq!(resp.status, 404);
        if resp.header_has_token("connection", "close") {
            assert!(c.is_closed(), "the 404 said Connection: close but the connection stayed open");
        } else {
            let next = c.read_response();
            assert_eq!(next.status, 200, "the request behind a 404 was lost: {next:?}");
            assert!(next.text().contains("uri=/ok\n"), "{}", next.text());
        }
    }
);

both_drivers!(
    fn path_and_query_reach_the_upstream_unchanged(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::start(driver, &crate::support::route_all(&[up.addr()]));
        let target = "/a/b%20c/./d?x=1&y=%2F";
        let resp = Client::connect(kedge.addr()).get("h.test", target);
        assert_eq!(resp.status, 200);
        let seen = up.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].uri, target);
        assert_eq!(seen[0].method, "GET");
    }
);

both_drivers!(
    fn no_route_is_a_404_saying_so(driver) {
        let up = Upstream::start("only", Handler::Echo);
        let config = format!("[[route]]\nhost = \"only.test\"\nupstreams = [\"{}\"]\n", up.addr());
        let kedge = Kedge::start(driver, &config);
        let mut c = Client::connect(kedge.addr());
        let resp = c.get("elsewhere.test", "/");
        assert_eq!(resp.status, 404);
        assert!(resp.text().contains("no route"), "404 body: {:?}", resp.text());
        assert!(resp.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", resp.headers);
        assert_eq!(up.request_count(), 0);
        c.assert_connection_as_announced(&resp, "elsewhere.test");
        check(&kedge, "only.test", "/", Some("only"));
    }
);

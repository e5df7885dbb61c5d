//! HTTP/2 to clients, end to end, in front of the harness's HTTP/1.1 upstreams: h2c with prior
//! knowledge next to HTTP/1.1 on a plain port, ALPN on TLS, `[http2] enabled = false`; the same
//! policies as HTTP/1.1 (routing by `:authority`, 404, 308, 401, 503, 413, 405 for CONNECT); what
//! the upstream receives; malformed requests reset and never forwarded; bodiless answers
//! without DATA, trailers, large bodies under flow control, a hundred concurrent streams, an
//! upstream cut off mid-body; the access log's protocol; GOAWAY on SIGTERM and after
//! `max_requests`. Clients: the `h2` crate, a frame-level client for what it refuses to send or
//! hides, and curl (nghttp2).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use h2::Reason;
use http::Request;
use serde_json::json;

use crate::access_log::text_field;
use crate::support::body::{fill, hash, pattern_hash};
use crate::support::h2_client::{H2, H2Options, exchange, open, read_response};
use crate::support::h2_frames::{
    self, CANCEL, ENHANCE_YOUR_CALM, GOAWAY, INTERNAL_ERROR, NO_ERROR, PREFACE, PROTOCOL_ERROR, REFUSED_STREAM, RawH2,
    SETTINGS,
};
use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::tls::{Leaf, TestCa};
use crate::support::{
    Client, FakeApi, Handler, Kedge, RawBehavior, RawUpstream, Recorded, RecordingUpstream, Signal, TempDir, Upstream,
    both_drivers, route_all, wait_for, wait_until,
};

const SECOND: Duration = Duration::from_secs(1);
/// The section that turns HTTP/2 on.
const H2_ON: &str = "[http2]\nenabled = true\n";
/// Bodies that no buffer of kedge's may hold whole.
const BIG: u64 = 64 << 20;
/// Peak RSS kedge must stay under while moving a [`BIG`] body (as in `bodies.rs`).
const RSS_LIMIT: u64 = 48 << 20;

/// Starts kedge with HTTP/2 on and `fragment`.
fn start(driver: crate::support::Driver, fragment: &str) -> Kedge {
    Kedge::setup(driver).tables(H2_ON).start(fragment)
}

/// `[tls]` with `leaf` as the default certificate and a route for every host to `up`.
fn tls_fragment(dir: &TempDir, leaf: &Leaf, up: &Upstream) -> String {
    let (cert, key) = leaf.write(dir, "default");
    format!(
        "[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n\n{}",
        cert.display(),
        key.display(),
        route_all(&[up.addr()])
    )
}

/// Runs curl with `args` and returns the HTTP version it used (`2`, `1.1`), the status and the
/// body.
fn curl(args: &[&str]) -> (String, u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, last) = text.rsplit_once('\n').expect("curl's -w line");
    let (version, status) = last.split_once(' ').expect("version and status");
    (version.to_owned(), status.parse().expect("status"), body.to_owned())
}

fn is_request_id(v: &str) -> bool {
    v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// GET `path` as a raw HEADERS frame (ending the stream) on stream `id`.
fn raw_get(raw: &mut RawH2, id: u32, authority: &str, path: &str) {
    raw.headers(
        id,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
        ],
        true,
    );
}

/// The highest stream id: a first, graceful GOAWAY names it (RFC 9113 §6.8).
const MAX_STREAM_ID: u32 = (1 << 31) - 1;

both_drivers!(
    fn h2c_prior_knowledge_and_http11_share_the_plain_port(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start(driver, &route_all(&[up.addr()]));
        let h = H2::connect(kedge.addr());
        let r = h.get("h2.test", "/a?b=1");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.upstream(), Some("up"));
        assert!(r.text().contains("uri=/a?b=1\nhost=h2.test\n"), "{}", r.text());
        // Streams one after another on the same connection.
        for i in 0..3 {
            let r = h.get("h2.test", &format!("/again/{i}"));
            assert_eq!(r.status, 200, "stream {i}: {r:?}");
        }
        assert_eq!(up.request_count(), 4);

        // HTTP/1.1 on the same port.
        let mut c = Client::connect(kedge.addr());
        let r = c.get("h1.test", "/b");
        assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200), "{r:?}");
        assert!(r.text().contains("uri=/b\n"));

        // curl with prior knowledge (nghttp2).
        let (version, status, body) = curl(&["--http2-prior-knowledge", &format!("http://{}/curl", kedge.addr())]);
        assert_eq!((version.as_str(), status), ("2", 200), "{body}");
        assert!(body.contains("uri=/curl\n"), "{body}");
    }
);

both_drivers!(
    fn tls_alpn_chooses_h2_when_offered_and_http11_otherwise(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("h2-tls");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver).tls().tables(H2_ON).start(&tls_fragment(&dir, &leaf, &up));
        let addr = kedge.tls_addr();

        let h = H2::connect_tls(addr, ca.client_alpn(&[b"h2", b"http/1.1"]), "www.example.com");
        let r = h.get("www.example.com", "/tls");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains"),
            "{:?}",
            r.headers
        );
        assert_eq!(up.requests()[0].header("x-forwarded-proto"), Some("https"));

        // Offering http/1.1 only, or no ALPN at all: HTTP/1.1.
        for alpn in [&[&b"http/1.1"[..]][..], &[]] {
            let mut c = Client::connect_tls(addr, ca.client_alpn(alpn), "www.example.com");
            let expected = alpn.first().copied();
            assert_eq!(c.tls().alpn_protocol(), expected, "offered {alpn:?}");
            let r = c.get("www.example.com", "/h1");
            assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200), "offered {alpn:?}: {r:?}");
        }

        let ca_file = dir.write("ca.pem", leaf.ca_pem());
        let port = addr.port();
        let (version, status, body) = curl(&[
            "--http2",
            "--cacert",
            &ca_file.display().to_string(),
            "--resolve",
            &format!("www.example.com:{port}:127.0.0.1"),
            &format!("https://www.example.com:{port}/curl"),
        ]);
        assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    }
);

both_drivers!(
    fn disabled_http2_is_http11_only_on_both_listeners(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("h2-off");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tls()
            .tables("[http2]\nenabled = false\n")
            .start(&tls_fragment(&dir, &leaf, &up));

        // TLS: h2 offered first, http/1.1 chosen.
        let mut c = Client::connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"h2", b"http/1.1"]), "www.example.com");
        assert_eq!(c.tls().alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(c.get("www.example.com", "/").status, 200);
        // Only h2 offered: never h2 (a refused handshake or no ALPN are both fine).
        if let Ok(c) = Client::try_connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"h2"]), "www.example.com") {
            assert_ne!(c.tls().alpn_protocol(), Some(&b"h2"[..]), "h2 chosen with [http2] enabled = false");
        }

        // Plain: the preface is answered as HTTP/1.1 would answer it (an error), then closed.
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&h2_frames::frame(SETTINGS, 0, 0, &[]));
        let (bytes, closed) = h2_frames::answer_to(kedge.addr(), &hello, 64 << 10).expect("connect");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 5"),
            "the preface got {text:?}"
        );
        assert!(closed, "the connection stayed open after the error: {text:?}");
        let attempt = H2::try_connect(kedge.addr(), H2Options::default())
            .and_then(|h| h.try_request(h.req("GET", "x.test", "/").body(()).expect("request"), None).map_err(|e| e.text));
        assert!(attempt.is_err(), "HTTP/2 served with [http2] enabled = false: {attempt:?}");
        assert_eq!(up.request_count(), 1, "only the HTTP/1.1 request reaches the upstream");
        // HTTP/1.1 on the plain port is unaffected.
        assert_eq!(Client::connect(kedge.addr()).get("x.test", "/").status, 200);
    }
);

both_drivers!(
    fn authority_routes_unknown_hosts_get_404_and_connect_405(driver) {
        let a = Upstream::start("A", Handler::Echo);
        let b = Upstream::start("B", Handler::Echo);
        let frag = format!(
            "[[route]]\nhost = \"a.test\"\nupstreams = [\"{}\"]\n\n[[route]]\nhost = \"b.test\"\nupstreams = [\"{}\"]\n",
            a.addr(),
            b.addr()
        );
        let kedge = start(driver, &frag);
        let h = H2::connect(kedge.addr());
        assert_eq!(h.get("a.test", "/").upstream(), Some("A"));
        let r = h.get("b.test:8080", "/x");
        assert_eq!((r.status, r.upstream()), (200, Some("B")), "{r:?}");
        assert!(r.text().contains("host=b.test:8080\n"), "{}", r.text());

        let r = h.get("nowhere.test", "/");
        assert_eq!(r.status, 404, "{r:?}");
        assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", r.headers);
        assert!(!r.text().trim().is_empty(), "a 404 should say why");
        assert_eq!(r.upstream(), None);

        // No :authority: the Host field routes.
        let mut raw = RawH2::connect(kedge.addr());
        raw.headers(
            1,
            &[(":method", "GET"), (":scheme", "http"), (":path", "/by-host"), ("host", "b.test")],
            true,
        );
        let end = raw.finish(1);
        assert!(end.ended() && end.reset.is_none(), "{end:?}");
        assert!(
            b.requests().iter().any(|s| s.uri == "/by-host" && s.header("host") == Some("b.test")),
            "{:?}",
            b.requests()
        );

        // CONNECT (no extended CONNECT): 405, and nothing forwarded.
        let connect = Request::builder().method("CONNECT").uri("a.test:443").body(()).expect("request");
        let r = h.request(connect, None);
        assert_eq!(r.status, 405, "{r:?}");
        let methods: Vec<String> = a.requests().into_iter().chain(b.requests()).map(|s| s.method).collect();
        assert!(!methods.iter().any(|m| m == "CONNECT"), "{methods:?}");
        // The connection serves on after all of these.
        assert_eq!(h.get("a.test", "/last").status, 200);
    }
);

both_drivers!(
    fn plain_h2_for_a_tls_host_is_redirected_with_308(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("h2-redirect");
        let leaf = ca.leaf(&["www.example.com"]);
        let (cert, key) = leaf.write(&dir, "www");
        let up = Upstream::start("app", Handler::Echo);
        let frag = format!(
            "[[tls.certificate]]\nhosts = [\"www.example.com\"]\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[route]]\nhost = \"www.example.com\"\nupstreams = [\"{}\"]\n",
            cert.display(),
            key.display(),
            up.addr()
        );
        let kedge = Kedge::setup(driver).tls().tables(H2_ON).start(&frag);
        let port = kedge.tls_addr().port();
        let h = H2::connect(kedge.addr());
        let r = h.get("www.example.com", "/shop/cart?id=7");
        assert_eq!(r.status, 308, "{r:?}");
        assert_eq!(
            r.header("location"),
            Some(format!("https://www.example.com:{port}/shop/cart?id=7").as_str())
        );
        assert_eq!(up.request_count(), 0, "a redirected request reached the upstream");
        let s = H2::connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"h2"]), "www.example.com");
        assert_eq!(s.get("www.example.com", "/shop").status, 200);
    }
);

/// Ingress `name` for `name.example.com` `/` to Service `svc`, with `annotations`.
fn annotated(name: &str, svc: &str, annotations: serde_json::Value) -> serde_json::Value {
    let mut ing = ingress(name, "kedge", &format!("{name}.example.com"), "/", svc);
    ing["metadata"]["annotations"] = annotations;
    ing
}

both_drivers!(
    fn basic_auth_and_limits_answer_over_http2(driver) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let up = Upstream::start("app", Handler::Echo);
        let slow = Upstream::start("slow", Handler::Delay(2 * SECOND));
        let api = FakeApi::start();
        api.apply("ingressclasses", ingress_class());
        for (svc, u) in [("app", &up), ("slow", &slow)] {
            api.apply("services", service(svc));
            api.apply("endpointslices", slice(svc, u.addr().port(), &["127.0.0.1"]));
        }
        // {SHA} of "password".
        let htpasswd = "bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";
        api.apply(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "users", "namespace": "default"}, "data": {"auth": b64(htpasswd)}}),
        );
        let n = "nginx.ingress.kubernetes.io/";
        for (name, svc, annotations) in [
            (
                "private",
                "app",
                json!({format!("{n}auth-type"): "basic", format!("{n}auth-secret"): "users",
                       format!("{n}auth-realm"): "Staff only"}),
            ),
            (
                "rated",
                "app",
                json!({format!("{n}limit-rpm"): "1", format!("{n}limit-burst-multiplier"): "3"}),
            ),
            ("single", "slow", json!({format!("{n}limit-connections"): "1"})),
        ] {
            api.apply("ingresses", annotated(name, svc, annotations));
        }
        let dir = TempDir::new("h2-policies");
        let kedge = Kedge::setup(driver).tables(H2_ON).follow(&api, &dir, "");
        let h = H2::connect(kedge.addr());

        let r = h.get("private.example.com", "/");
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"Staff only\""));
        let with = |creds: &str| {
            let req = h
                .req("GET", "private.example.com", "/")
                .header("authorization", format!("Basic {}", b64(creds)))
                .body(())
                .expect("request");
            h.request(req, None).status
        };
        assert_eq!(with("bob:wrong"), 401);
        assert_eq!(with("bob:password"), 200);
        assert_eq!(up.request_count(), 1, "only the authenticated request reaches the upstream");

        // A burst of 3, then 503s, all on one connection.
        let statuses: Vec<u16> = (0..5).map(|_| h.get("rated.example.com", "/").status).collect();
        assert_eq!(statuses, [200, 200, 200, 503, 503]);

        // One request in progress per client: a second stream at the same time, on the same
        // connection, is refused.
        let first = h.spawn(exchange(
            h.sender(),
            h.req("GET", "single.example.com", "/first").body(()).expect("request"),
            None,
        ));
        wait_until(10 * SECOND, "the first stream to reach the slow upstream", || slow.request_count() == 1);
        let second = h.get("single.example.com", "/second");
        assert_eq!(second.status, 503, "{second:?}");
        assert!(second.text().contains("too many requests in progress"), "{}", second.text());
        let first = h.join(first).expect("first response");
        assert_eq!(first.status, 200, "{first:?}");
        assert_eq!(slow.request_count(), 1, "the refused stream reached the upstream");
    }
);

both_drivers!(
    fn content_length_over_max_body_is_413_and_the_connection_stays(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start(driver, &format!("[client]\nmax_body = \"1k\"\n\n{}", route_all(&[up.addr()])));
        let h = H2::connect(kedge.addr());
        let req = h
            .req("POST", "l.test", "/big")
            .header("content-length", "2000")
            .body(())
            .expect("request");
        let r = h.request(req, Some(fill(0, 2000)));
        assert_eq!(r.status, 413, "{r:?}");
        assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", r.headers);
        assert!(!r.text().trim().is_empty(), "a 413 should say why");
        assert_eq!(up.connections(), 0, "a refused request reached the upstream");
        // The stream was refused, not the connection; a body within the limit goes through.
        let req = h
            .req("POST", "l.test", "/small")
            .header("content-length", "1000")
            .body(())
            .expect("request");
        let r = h.request(req, Some(fill(0, 1000)));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(up.requests()[0].body_len, 1000);
    }
);

both_drivers!(
    /// An HTTP/1.1 upstream that refuses an upload by its head (answers, then closes without
    /// reading the body) gets its answer to the HTTP/2 client, not a 502; the stream's unread
    /// body is refused (RST_STREAM NO_ERROR), and the connection serves on.
    fn an_upload_the_upstream_refuses_early_gets_its_answer(driver) {
        let up = Upstream::start("up", Handler::Refuse(413));
        let kedge = start(driver, &format!("[client]\nmax_body = 0\n\n{}", route_all(&[up.addr()])));
        let h = H2::connect(kedge.addr());
        let len = 8 << 20;
        let req = h
            .req("POST", "r.test", "/upload")
            .header("content-length", len.to_string())
            .body(())
            .expect("request");
        let r = h.request(req, Some(fill(0, len)));
        assert_eq!(r.status, 413, "{r:?}");
        assert_eq!(r.upstream(), Some("up"), "not the upstream's answer: {r:?}");
        assert_eq!(r.text(), "refused\n");
        assert!(!up.requests()[0].body_complete);
        assert_eq!(h.get("r.test", "/after").status, 413);
        assert_eq!(up.connections(), 2, "the connection that answered early was reused");
    }
);

/// The request `rec` recorded whose request line starts with `start`.
fn recorded(rec: &RecordingUpstream, start: &str) -> Recorded {
    let all: Vec<_> = rec.conns().into_iter().flat_map(|c| c.requests).collect();
    all.iter()
        .find(|r| r.request_line().starts_with(start))
        .cloned()
        .unwrap_or_else(|| panic!("no {start:?} among {all:#?}"))
}

both_drivers!(
    fn upstream_gets_http11_with_host_forwarded_fields_joined_cookies_and_framing(driver) {
        let rec = RecordingUpstream::start();
        let kedge = start(driver, &route_all(&[rec.addr()]));
        let port = kedge.addr().port().to_string();
        let h = H2::connect(kedge.addr());

        let req = h
            .req("GET", "front.test", "/h?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-end-to-end", "yes")
            .body(())
            .expect("request");
        let r = h.request(req, None);
        assert_eq!((r.status, r.upstream()), (200, Some("recorder")), "{r:?}");
        let seen = recorded(&rec, "GET /h?x=1 ");
        assert_eq!(seen.request_line(), "GET /h?x=1 HTTP/1.1");
        assert_eq!(seen.header_all("host"), ["front.test"], "{}", seen.head);
        assert_eq!(seen.header_all("cookie"), ["a=1; b=2"], "{}", seen.head);
        assert_eq!(seen.header_all("x-forwarded-for"), ["10.0.0.1, 127.0.0.1"], "{}", seen.head);
        assert_eq!(seen.header_all("x-forwarded-proto"), ["http"], "{}", seen.head);
        assert_eq!(seen.header_all("x-forwarded-host"), ["front.test"], "{}", seen.head);
        assert_eq!(seen.header_all("x-forwarded-port"), [port.as_str()], "{}", seen.head);
        assert_eq!(seen.header_all("x-real-ip"), ["127.0.0.1"], "{}", seen.head);
        let ids = seen.header_all("x-request-id");
        assert!(ids.len() == 1 && is_request_id(ids[0]), "{}", seen.head);
        assert_eq!(seen.header_all("x-end-to-end"), ["yes"], "{}", seen.head);
        // HEADERS ended the stream: no body and no framing for one.
        assert!(seen.header_all("content-length").is_empty(), "{}", seen.head);
        assert!(seen.header_all("transfer-encoding").is_empty(), "{}", seen.head);
        assert!(seen.body.is_empty());
        assert!(!seen.head.split("\r\n").any(|l| l.starts_with(':')), "pseudo-fields forwarded: {}", seen.head);

        // A length from the client: Content-Length to the upstream; a given request id kept.
        let req = h
            .req("POST", "front.test", "/len")
            .header("content-length", "11")
            .header("x-request-id", "trace-h2-1")
            .body(())
            .expect("request");
        assert_eq!(h.request(req, Some(b"hello world".to_vec())).status, 200);
        let seen = recorded(&rec, "POST /len ");
        assert_eq!(seen.header_all("content-length"), ["11"], "{}", seen.head);
        assert!(seen.header_all("transfer-encoding").is_empty(), "{}", seen.head);
        assert_eq!(seen.header_all("x-request-id"), ["trace-h2-1"], "{}", seen.head);
        assert_eq!(seen.body, b"hello world");

        // No length: chunked to the upstream.
        let body = fill(5, 70_000);
        let req = h.req("POST", "front.test", "/chunked").body(()).expect("request");
        assert_eq!(h.request(req, Some(body.clone())).status, 200);
        let seen = recorded(&rec, "POST /chunked ");
        assert_eq!(seen.header_all("transfer-encoding"), ["chunked"], "{}", seen.head);
        assert!(seen.header_all("content-length").is_empty(), "{}", seen.head);
        assert!(seen.body == body, "the body changed on the way ({} bytes arrived)", seen.body.len());
    }
);

both_drivers!(
    fn connection_specific_fields_and_wrong_lengths_reset_the_stream(driver) {
        // The `h2` client refuses to send any of these fields (UserError::MalformedHeaders), so
        // they go out as raw frames.
        let rec = RecordingUpstream::start();
        let kedge = start(driver, &route_all(&[rec.addr()]));
        let mut raw = RawH2::connect(kedge.addr());
        let fields = [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ];
        let mut id = 1;
        for (name, value) in fields {
            let path = format!("/bad/{name}");
            raw.headers(
                id,
                &[(":method", "GET"), (":scheme", "http"), (":authority", "bad.test"), (":path", &path), (name, value)],
                true,
            );
            let end = raw.finish(id);
            assert_eq!(end.reset, Some(PROTOCOL_ERROR), "{name}: {value}: {end:?}");
            assert_eq!(end.headers(), 0, "{name}: {value} was answered: {end:?}");
            id += 2;
        }
        // A DATA total short of, or beyond, the Content-Length.
        for (length, path) in [("10", "/short"), ("3", "/long")] {
            raw.headers(
                id,
                &[(":method", "POST"), (":scheme", "http"), (":authority", "bad.test"), (":path", path),
                  ("content-length", length)],
                false,
            );
            raw.data(id, b"hello", true);
            let end = raw.finish(id);
            assert_eq!(end.reset, Some(PROTOCOL_ERROR), "content-length {length} with 5 bytes: {end:?}");
            id += 2;
        }
        // `te: trailers` is allowed, and the connection serves on.
        raw.headers(
            id,
            &[(":method", "GET"), (":scheme", "http"), (":authority", "bad.test"), (":path", "/good"),
              ("te", "trailers")],
            true,
        );
        let end = raw.finish(id);
        assert!(end.ended() && end.reset.is_none() && end.headers() == 1, "{end:?}");
        // Not one malformed request reached the upstream complete.
        let complete: Vec<String> = rec
            .conns()
            .iter()
            .flat_map(|c| c.requests.iter().map(|r| r.request_line().to_owned()))
            .collect();
        assert_eq!(complete, ["GET /good HTTP/1.1"], "upstream bytes: {:?}", String::from_utf8_lossy(&rec.all_bytes()));
        let bytes = String::from_utf8_lossy(&rec.all_bytes()).into_owned();
        assert!(!bytes.contains("/bad/"), "a request with a connection-specific field was forwarded: {bytes}");
    }
);

both_drivers!(
    fn head_204_and_304_answers_have_no_data_frames(driver) {
        let fixed = Upstream::start("fixed", Handler::Fixed(1234));
        let no_content = Upstream::start("204", Handler::Status(204));
        let not_modified = Upstream::start("304", Handler::Status(304));
        let frag = format!(
            "[[route]]\npath = \"/204\"\nupstreams = [\"{}\"]\n\n[[route]]\npath = \"/304\"\nupstreams = [\"{}\"]\n\n{}",
            no_content.addr(),
            not_modified.addr(),
            route_all(&[fixed.addr()])
        );
        let kedge = start(driver, &frag);
        let h = H2::connect(kedge.addr());
        let r = h.request(h.req("HEAD", "n.test", "/f").body(()).expect("request"), None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-length"), Some("1234"), "{:?}", r.headers);
        assert!(r.body.is_empty() && r.body_error.is_none(), "{r:?}");
        assert_eq!(fixed.requests()[0].method, "HEAD");
        for code in [204, 304] {
            let r = h.get("n.test", &format!("/{code}"));
            assert_eq!((r.status, r.upstream()), (code, Some(code.to_string().as_str())), "{r:?}");
            assert!(r.body.is_empty() && r.body_error.is_none(), "{r:?}");
        }

        // Frame by frame: one HEADERS frame that ends the stream, no DATA frame at all.
        let mut raw = RawH2::connect(kedge.addr());
        raw.headers(
            1,
            &[(":method", "HEAD"), (":scheme", "http"), (":authority", "n.test"), (":path", "/f")],
            true,
        );
        raw_get(&mut raw, 3, "n.test", "/204");
        raw_get(&mut raw, 5, "n.test", "/304");
        for id in [1, 3, 5] {
            let end = raw.finish(id);
            assert!(end.ended() && end.reset.is_none(), "stream {id}: {end:?}");
            assert_eq!((end.headers(), end.data_frames()), (1, 0), "stream {id}: {end:?}");
        }
        // The count does see DATA where there is a body.
        raw_get(&mut raw, 7, "n.test", "/f");
        let end = raw.finish(7);
        assert!(end.ended() && end.data_frames() >= 1, "{end:?}");
    }
);

both_drivers!(
    fn chunked_trailers_become_http2_trailers_and_hop_by_hop_fields_go(driver) {
        let up = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: X-Hop\r\n\
              X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n"
                .to_vec(),
        ));
        let kedge = start(driver, &route_all(&[up.addr()]));
        let h = H2::connect(kedge.addr());
        let r = h.get("t.test", "/");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body_error.is_none(), "{r:?}");
        assert_eq!(r.body, b"hello world");
        assert_eq!(r.trailers, [("x-checksum".to_owned(), "42".to_owned())], "{r:?}");
        for name in ["transfer-encoding", "connection", "keep-alive", "x-hop"] {
            assert!(!r.has_header(name), "{name} reached the HTTP/2 client: {:?}", r.headers);
        }
        assert_eq!(r.header("x-kept"), Some("yes"));
        let cookies: Vec<&str> = r.headers.iter().filter(|(n, _)| n == "set-cookie").map(|(_, v)| v.as_str()).collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
    }
);

both_drivers!(
    /// Request trailers reach an HTTP/1.1 upstream as chunked trailer fields when the body is
    /// chunked (no Content-Length from the client), fields that may not be trailers left out;
    /// with the client's Content-Length they are dropped and the body arrives intact.
    fn request_trailers_reach_an_http11_upstream_when_chunked(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start(driver, &route_all(&[up.addr()]));
        let h = H2::connect(kedge.addr());
        let post = |length: Option<usize>| {
            let send = h.sender();
            let mut head = h.req("POST", "t.test", if length.is_some() { "/sized" } else { "/streamed" });
            if let Some(n) = length {
                head = head.header("content-length", n);
            }
            let head = head.body(()).expect("request");
            h.within(10 * SECOND, "a request with trailers", async move {
                let (resp, mut stream) = open(send, head, false).await.expect("open");
                stream.send_data(bytes::Bytes::from_static(b"hello"), false).expect("data");
                let mut t = http::HeaderMap::new();
                t.insert("x-checksum", "42".parse().unwrap());
                t.insert("content-type", "text/evil".parse().unwrap());
                stream.send_trailers(t).expect("trailers");
                read_response(resp.await.expect("head"), |_| None).await
            })
        };
        assert_eq!(post(None).status, 200);
        assert_eq!(post(Some(5)).status, 200);
        let seen = up.requests();
        let streamed = seen.iter().find(|r| r.uri == "/streamed").expect("the chunked request");
        assert_eq!(streamed.body_len, 5);
        assert_eq!(streamed.trailers, [("x-checksum".to_owned(), "42".to_owned())], "{streamed:?}");
        let sized = seen.iter().find(|r| r.uri == "/sized").expect("the sized request");
        assert_eq!((sized.body_len, sized.body_complete), (5, true), "{sized:?}");
        assert!(sized.trailers.is_empty(), "{sized:?}");
    }
);

fn unlimited(upstream: std::net::SocketAddr) -> String {
    format!("[client]\nmax_body = 0\n\n{}", route_all(&[upstream]))
}

fn assert_streamed(kedge: &Kedge) {
    let peak = kedge.peak_rss();
    assert!(
        peak < RSS_LIMIT,
        "kedge peaked at {} MiB moving a {} MiB body over HTTP/2: it buffers",
        peak >> 20,
        BIG >> 20
    );
}

both_drivers!(
    fn big_request_bodies_reach_the_upstream_intact(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start(driver, &unlimited(up.addr()));
        let h = H2::connect(kedge.addr());
        // With a length; kedge's receive window paces the client.
        let req = h
            .req("POST", "b.test", "/len")
            .header("content-length", BIG.to_string())
            .body(())
            .expect("request");
        let r = h.request(req, Some(fill(0, BIG as usize)));
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = &up.requests()[0];
        assert!(seen.body_complete);
        assert_eq!(seen.body_len, BIG);
        assert_eq!(seen.body_hash, pattern_hash(BIG), "request body changed on the way");
        assert_eq!(seen.header("content-length"), Some(BIG.to_string().as_str()));
        assert_streamed(&kedge);
        // Without one (chunked upstream), 8 MiB.
        let len = 8 << 20;
        let req = h.req("PUT", "b.test", "/chunked").body(()).expect("request");
        let r = h.request(req, Some(fill(7, len)));
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = &up.requests()[1];
        assert_eq!(seen.body_len, len as u64);
        assert_eq!(seen.body_hash, hash(&fill(7, len)));
    }
);

both_drivers!(
    fn a_content_length_answer_of_many_reads_arrives_whole_and_its_connection_is_reused(driver) {
        // Read from the upstream into buffers h2 sends as they are: several reads and DATA
        // frames, an odd length, and nothing read past the body (the connection goes back to
        // the pool and serves the next stream).
        const LEN: usize = (3 << 20) + 5;
        let up = Upstream::start("fixed", Handler::Fixed(LEN));
        let kedge = start(driver, &route_all(&[up.addr()]));
        let h = H2::connect(kedge.addr());
        for i in 0..2 {
            let r = h.get("f.test", &format!("/big/{i}"));
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            assert!(r.body_error.is_none(), "request {i}: {:?}", r.body_error);
            assert_eq!(r.body.len(), LEN, "request {i}");
            assert_eq!(hash(&r.body), hash(&fill(0, LEN)), "request {i}: the body changed on the way");
        }
        assert_eq!(up.connections(), 1, "the upstream connection was not reused after a whole body");
    }
);

both_drivers!(
    fn big_response_is_held_back_for_a_reader_that_stalls(driver) {
        let big = Upstream::start("big", Handler::Stream(BIG));
        let kedge = start(driver, &unlimited(big.addr()));
        let h = H2::connect(kedge.addr());
        let get = h.req("GET", "b.test", "/big").body(()).expect("request");
        let (response, _stream) = h.within(20 * SECOND, "opening a stream", open(h.sender(), get, true)).expect("open");
        let response = h.within(20 * SECOND, "the response head", response).expect("response head");
        assert_eq!(response.status(), 200);

        // The client gives no window back (64 KiB for the stream and the connection): kedge
        // has to stop reading the upstream once its buffers and the sockets are full.
        let mut last = (u64::MAX, Instant::now());
        let held = wait_for(20 * SECOND, "the upstream to stop being read", || {
            let now = big.streamed_bytes();
            if now != last.0 {
                last = (now, Instant::now());
            }
            if now >= BIG {
                panic!("kedge read the whole {BIG}-byte body for a client that took 64 KiB of it");
            }
            if last.1.elapsed() >= Duration::from_millis(500) { Ok(now) } else { Err(now) }
        });
        assert!(
            held < BIG / 2,
            "kedge read {held} bytes from the upstream for a client that took 64 KiB"
        );

        // Then a slow reader to the end: pauses every 4 MiB.
        let r = h.within(120 * SECOND, "the whole body", read_response(response, |n| {
            (n % (4 << 20) < 16 << 10).then_some(Duration::from_millis(20))
        }));
        assert!(r.body_error.is_none(), "{:?}", r.body_error);
        assert_eq!(r.body.len() as u64, BIG);
        assert_eq!(hash(&r.body), pattern_hash(BIG), "response body changed on the way");
        assert_streamed(&kedge);
    }
);

both_drivers!(
    fn a_hundred_concurrent_streams_on_one_connection(driver) {
        // Each answer takes 300 ms: served one after another they would take 30 s, longer than
        // the client waits.
        let up = Upstream::start("up", Handler::Delay(Duration::from_millis(300)));
        let kedge = start(driver, &route_all(&[up.addr()]));
        let h = H2::connect(kedge.addr());
        let tasks: Vec<_> = (0..100u64)
            .map(|i| {
                let (method, body) = if i % 2 == 1 { ("POST", Some(fill(i, 10_000 + i as usize))) } else { ("GET", None) };
                let req = h.req(method, "c.test", &format!("/c/{i}")).body(()).expect("request");
                h.spawn(exchange(h.sender(), req, body))
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let r = h.join(task).unwrap_or_else(|e| panic!("stream {i}: {e:?}"));
            assert_eq!(r.status, 200, "stream {i}: {r:?}");
            let text = r.text();
            assert!(text.contains(&format!("uri=/c/{i}\n")), "stream {i} got another's answer: {text}");
            let (len, body_hash) = if i % 2 == 1 {
                let body = fill(i as u64, 10_000 + i);
                (body.len(), hash(&body))
            } else {
                (0, hash(b""))
            };
            assert!(text.contains(&format!("body_len={len}\nbody_hash={body_hash}\n")), "stream {i}: {text}");
        }
        assert_eq!(up.request_count(), 100);
    }
);

both_drivers!(
    fn an_upstream_dying_mid_body_resets_the_stream(driver) {
        let mut cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        cut.extend_from_slice(&fill(0, 1000));
        let cut = RawUpstream::start(RawBehavior::ReplyThenClose(cut));
        let chunked = RawUpstream::start(RawBehavior::ReplyThenClose(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        ));
        let fine = Upstream::start("fine", Handler::Echo);
        let frag = format!(
            "[[route]]\npath = \"/cut\"\nupstreams = [\"{}\"]\n\n[[route]]\npath = \"/chunked\"\nupstreams = [\"{}\"]\n\n{}",
            cut.addr(),
            chunked.addr(),
            route_all(&[fine.addr()])
        );
        let kedge = start(driver, &frag);
        let h = H2::connect(kedge.addr());
        for path in ["/cut", "/chunked"] {
            // When the reset follows the response head closely, the h2 client may report the
            // reset instead of the head (it checks the stream's state first); either way the
            // stream must end in a reset, never cleanly. The frames are checked below.
            let head = h.req("GET", "d.test", path).body(()).expect("request");
            let e = match h.try_request(head, None) {
                Ok(r) => {
                    assert_eq!(r.status, 200, "{path}: {r:?}");
                    r.body_error.clone().unwrap_or_else(|| {
                        panic!("{path}: the stream ended cleanly after {} bytes: a cut-off body looks complete", r.body.len())
                    })
                }
                Err(e) => e,
            };
            assert!(e.is_reset && e.is_remote, "{path}: {e:?}");
            assert_eq!(e.reason, Some(Reason::INTERNAL_ERROR), "{path}: {e:?}");
        }
        // The same, frame by frame: RST_STREAM, never END_STREAM. (The response head comes
        // first when the connection wrote it before the reset; h2 drops a reset stream's frames
        // still queued, so on a fast cut the client may get the reset alone.)
        for (id, path) in [(1, "/cut"), (3, "/chunked")] {
            let mut raw = RawH2::connect(kedge.addr());
            raw_get(&mut raw, id, "d.test", path);
            let end = raw.finish(id);
            assert!(end.headers() <= 1, "{path}: {end:?}");
            assert_eq!(end.reset, Some(INTERNAL_ERROR), "{path}: {end:?}");
            assert!(!end.frames.iter().any(|f| f.ends_stream()), "{path}: {end:?}");
        }
        // The connection outlives the stream.
        assert_eq!(h.get("d.test", "/after").status, 200);
    }
);

both_drivers!(
    fn access_log_names_the_protocol(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = start(driver, &format!("[log]\nformat = \"text\"\n\n{}", route_all(&[up.addr()])));
        let h = H2::connect(kedge.addr());
        let req = h
            .req("GET", "log.test", "/over-h2")
            .header("x-request-id", "trace-h2-log")
            .body(())
            .expect("request");
        assert_eq!(h.request(req, None).status, 200);
        assert_eq!(Client::connect(kedge.addr()).get("log.test", "/over-h11").status, 200);
        let mut c10 = Client::connect(kedge.addr());
        c10.send(b"GET /over-h10 HTTP/1.0\r\nHost: log.test\r\n\r\n");
        assert_eq!(c10.read_response().status, 200);

        let lines = kedge.wait_logs("kedge::access", 3, 5 * SECOND);
        let line = |path: &str| {
            lines
                .iter()
                .find(|l| l.contains(path))
                .unwrap_or_else(|| panic!("no access line for {path}: {lines:#?}"))
        };
        let h2 = line("/over-h2");
        assert_eq!(text_field(h2, "protocol"), Some("HTTP/2.0"), "{h2}");
        assert_eq!(text_field(h2, "status"), Some("200"), "{h2}");
        assert_eq!(text_field(h2, "request_id"), Some("trace-h2-log"), "{h2}");
        assert_eq!(text_field(line("/over-h11"), "protocol"), Some("HTTP/1.1"));
        assert_eq!(text_field(line("/over-h10"), "protocol"), Some("HTTP/1.0"));
        // And /metrics counts requests by protocol: one of each here.
        let metrics = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
        for protocol in ["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"] {
            let want = format!("kedge_requests_by_protocol_total{{protocol=\"{protocol}\"}} 1");
            assert!(metrics.lines().any(|l| l == want), "no {want:?} in:\n{metrics}");
        }

        // JSON lines carry it too.
        let kedge = start(driver, &format!("[log]\nformat = \"json\"\n\n{}", route_all(&[up.addr()])));
        assert_eq!(H2::connect(kedge.addr()).get("log.test", "/json-h2").status, 200);
        let line = kedge.wait_log("/json-h2", 5 * SECOND);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["protocol"], "HTTP/2.0", "{line}");
    }
);

both_drivers!(
    fn sigterm_sends_goaway_lets_open_streams_finish_and_refuses_new_ones(driver) {
        let slow = Upstream::start("slow", Handler::Delay(SECOND));
        let mut kedge = Kedge::setup(driver)
            .proxy("shutdown_grace = \"10s\"")
            .tables(H2_ON)
            .start(&route_all(&[slow.addr()]));
        let addr = kedge.addr();
        // Two connections with a stream open each: one through the `h2` client (to read the
        // answer), one raw (to see the GOAWAY and open a stream after it).
        let mut h = H2::connect(addr);
        let in_flight = h.spawn(exchange(
            h.sender(),
            h.req("GET", "drain.test", "/slow-h2").body(()).expect("request"),
            None,
        ));
        let mut raw = RawH2::connect(addr);
        raw_get(&mut raw, 1, "drain.test", "/slow-raw");
        wait_until(5 * SECOND, "both streams to reach the upstream", || slow.request_count() == 2);

        kedge.signal(Signal::Term);
        // A graceful shutdown is two GOAWAYs (RFC 9113 §6.8): the first names stream 2^31-1
        // (streams already on their way are still taken), the second, a PING round trip
        // later, the last stream really taken. A stream opened after that one is refused.
        let first = raw
            .wait_frame(|f| f.kind == GOAWAY)
            .unwrap_or_else(|| panic!("the connection ended without a GOAWAY: {:?}", raw.received));
        assert_eq!(first.error_code(), Some(NO_ERROR), "{first:?}");
        let goaway = if first.last_stream_id() == Some(MAX_STREAM_ID) {
            raw.wait_frame(|f| f.kind == GOAWAY)
                .unwrap_or_else(|| panic!("no final GOAWAY after the first: {:?}", raw.received))
        } else {
            first
        };
        assert_eq!(goaway.error_code(), Some(NO_ERROR), "{goaway:?}");
        assert_eq!(goaway.last_stream_id(), Some(1), "the final GOAWAY must keep the open stream: {goaway:?}");
        raw_get(&mut raw, 3, "drain.test", "/late");

        let end = raw.finish(1);
        assert!(end.ended() && end.reset.is_none() && end.data_frames() >= 1, "the open stream was cut: {end:?}");
        let late = raw.finish(3);
        assert_eq!(late.headers(), 0, "a stream opened after the GOAWAY was answered: {late:?}");
        assert!(late.reset == Some(REFUSED_STREAM) || late.connection_ended, "{late:?}");
        assert!(raw.closed_within(5 * SECOND), "the drained connection stayed open");

        let r = h.join(in_flight).expect("the in-flight stream's answer");
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.text().contains("uri=/slow-h2\n") && r.body_error.is_none(), "{r:?}");
        assert!(h.wait_closed(5 * SECOND).is_ok(), "the h2 connection did not end cleanly");
        assert_eq!(slow.request_count(), 2, "the stream opened after the GOAWAY reached the upstream");

        wait_until(5 * SECOND, "new connections to be refused", || TcpStream::connect(addr).is_err());
        let status = kedge.wait_exit(10 * SECOND);
        assert!(status.success(), "kedge exited with {status} after SIGTERM");
    }
);

both_drivers!(
    fn max_requests_ends_the_connection_with_goaway(driver) {
        let up = Upstream::start("up", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tables("[http2]\nenabled = true\nmax_requests = 2\n")
            .start(&route_all(&[up.addr()]));
        let mut raw = RawH2::connect(kedge.addr());
        for id in [1, 3] {
            raw_get(&mut raw, id, "m.test", &format!("/{id}"));
            let end = raw.finish(id);
            assert!(end.ended() && end.reset.is_none(), "stream {id}: {end:?}");
        }
        // The final GOAWAY (after the graceful first one naming 2^31-1) names the last stream.
        let goaway = raw
            .wait_frame(|f| f.kind == GOAWAY && f.last_stream_id() != Some(MAX_STREAM_ID))
            .unwrap_or_else(|| panic!("no final GOAWAY after max_requests streams: {:?}", raw.received));
        assert_eq!(goaway.error_code(), Some(NO_ERROR), "{goaway:?}");
        assert_eq!(goaway.last_stream_id(), Some(3), "{goaway:?}");
        assert!(raw.closed_within(5 * SECOND), "the connection stayed open after its last stream");
        assert_eq!(up.request_count(), 2);
        // A new connection is served.
        assert_eq!(H2::connect(kedge.addr()).get("m.test", "/next").status, 200);
    }
);

/// kedge with HTTP/2 on and a 300 ms keep-alive timeout, in front of an echo upstream.
fn idle_after_300ms(driver: crate::support::Driver) -> (Upstream, Kedge) {
    let up = Upstream::start("up", Handler::Echo);
    let frag = format!("[client]\nkeepalive_timeout = \"300ms\"\n\n{}", route_all(&[up.addr()]));
    let kedge = start(driver, &frag);
    (up, kedge)
}

both_drivers!(
    fn idle_connection_is_closed_after_keepalive_timeout(driver) {
        let (_up, kedge) = idle_after_300ms(driver);
        let mut h = H2::connect(kedge.addr());
        assert_eq!(h.get("i.test", "/").status, 200);
        assert!(h.wait_closed(5 * SECOND).is_ok(), "the idle connection did not end cleanly");
    }
);

both_drivers!(
    /// The close after GOAWAY lingers, as nginx's since 1.19.1: a frame the client sends after
    /// kedge's GOAWAY and FIN (here a PING, once the connection has ended for idleness) is read
    /// and dropped, not answered with a reset that could destroy the GOAWAY and the last
    /// answers before the client reads them.
    fn the_close_after_goaway_lingers(driver) {
        let (_up, kedge) = idle_after_300ms(driver);
        let mut c = RawH2::connect(kedge.addr());
        c.settled();
        c.headers(
            1,
            &[(":method", "GET"), (":scheme", "http"), (":authority", "l.test"), (":path", "/")],
            true,
        );
        assert!(c.wait_frame(|f| f.kind == GOAWAY).is_some(), "no GOAWAY: {:?}", c.received);
        assert!(c.wait_frame(|_| false).is_none());
        c.write(&h2_frames::frame(h2_frames::PING, 0, 0, b"12345678"));
        std::thread::sleep(Duration::from_millis(200));
        let reset = c.take_error();
        assert!(reset.is_none(), "a frame after kedge's close was answered with a reset: {reset:?}");
    }
);

both_drivers!(
    /// Rapid Reset (CVE-2023-44487): streams the client resets once kedge has taken them (their
    /// request already on its way upstream) count against the connection. Up to 100 of them, or
    /// half the streams, the connection serves on; past that it ends with GOAWAY
    /// ENHANCE_YOUR_CALM, counted in /metrics.
    fn a_reset_flood_ends_the_connection(driver) {
        let slow = Upstream::start("slow", Handler::Delay(30 * SECOND));
        let fast = Upstream::start("fast", Handler::Echo);
        let frag = format!(
            "[[route]]\npath = \"/slow\"\nupstreams = [\"{}\"]\n\n{}",
            slow.addr(),
            route_all(&[fast.addr()])
        );
        let kedge = start(driver, &frag);
        let mut raw = RawH2::connect(kedge.addr());
        let mut id = 1;
        let reset_once_forwarded = |raw: &mut RawH2, id: u32| {
            let before = slow.request_count();
            raw_get(raw, id, "flood.test", "/slow");
            wait_until(5 * SECOND, "the stream's request to reach the upstream", || {
                slow.request_count() > before
            });
            raw.reset(id, CANCEL);
        };
        for _ in 0..100 {
            reset_once_forwarded(&mut raw, id);
            id += 2;
        }
        // 100 premature resets out of 101 streams: still served.
        raw_get(&mut raw, id, "flood.test", "/fast");
        let end = raw.finish(id);
        assert!(end.ended() && end.reset.is_none() && end.headers() == 1, "{end:?}");
        id += 2;
        // One more, and the connection goes away.
        reset_once_forwarded(&mut raw, id);
        let goaway = raw
            .wait_frame(|f| f.kind == GOAWAY)
            .unwrap_or_else(|| panic!("no GOAWAY after the flood: {:?}", raw.received.last()));
        assert_eq!(goaway.error_code(), Some(ENHANCE_YOUR_CALM), "{goaway:?}");
        assert!(raw.closed_within(5 * SECOND), "the flooding connection stayed open");

        let metrics = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
        assert!(
            metrics.lines().any(|l| l == "kedge_http2_abuse_total{kind=\"rapid_reset\"} 1"),
            "{}",
            metrics.lines().filter(|l| l.contains("reset")).collect::<Vec<_>>().join("\n")
        );
        // Other connections are not affected.
        assert_eq!(H2::connect(kedge.addr()).get("flood.test", "/fast").status, 200);
    }
);

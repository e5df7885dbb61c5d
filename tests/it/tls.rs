//! TLS listeners with real rustls clients (and openssl where a test needs RSA or PKCS#1/SEC1
//! keys): SNI choosing certificates from files and from Ingress Secrets, the default
//! certificate, rotation without a restart and without a failed request, resumption on TLS 1.2
//! and 1.3, redirects and HSTS, bad certificates, and clients that are not TLS at all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::tls::{Leaf, TestCa};
use rustls::pki_types::pem::PemObject;

use crate::support::{Client, FakeApi, Handler, Kedge, TempDir, Upstream, both_drivers, wait_until};

const UPGRADE_REQUEST: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: www.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// `[tls]` with a default certificate and `[[tls.certificate]]`s, and a route to `up` for every
/// host.
fn static_tls(dir: &TempDir, default: &Leaf, certs: &[(&[&str], &Leaf)], up: &Upstream, extra: &str) -> String {
    let (dc, dk) = default.write(dir, "default");
    let mut s = format!(
        "[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n{extra}\n",
        dc.display(),
        dk.display()
    );
    for (i, (hosts, leaf)) in certs.iter().enumerate() {
        let (c, k) = leaf.write(dir, &format!("cert{i}"));
        s.push_str(&format!(
            "[[tls.certificate]]\nhosts = {hosts:?}\ncert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    s.push_str(&format!("[[route]]\nupstreams = [\"{}\"]\n", up.addr()));
    s
}

/// A GET over a new TLS connection; returns the status and the leaf certificate served.
fn tls_get(kedge: &Kedge, ca: &TestCa, sni: &str, host: &str) -> (u16, rustls::pki_types::CertificateDer<'static>) {
    let mut c = Client::connect_tls(kedge.tls_addr(), ca.client(), sni);
    let resp = c.get(host, "/");
    (resp.status, c.peer_leaf())
}

/// The value of counter `kedge_tls_handshakes_total{result="RESULT"}` on the admin server.
fn handshakes(kedge: &Kedge, result: &str) -> u64 {
    let mut c = Client::connect(kedge.admin_addr());
    let m = c.get("admin", "/metrics").text();
    let key = format!("kedge_tls_handshakes_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {m}"))
}

both_drivers!(
    fn sni_chooses_exact_then_wildcard_then_default(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-sni");
        let default = ca.leaf(&["default.example.net", "127.0.0.1"]);
        let exact = ca.leaf(&["www.example.com"]);
        let wild = ca.leaf(&["*.example.com"]);
        let up = Upstream::start("app", Handler::Echo);
        let frag = static_tls(&dir, &default, &[(&["www.example.com"], &exact), (&["*.example.com"], &wild)], &up, "");
        let kedge = Kedge::setup(driver).tls().start(&frag);

        let (status, leaf) = tls_get(&kedge, &ca, "www.example.com", "www.example.com");
        assert_eq!(status, 200);
        assert!(leaf == exact.der, "exact name gets its own certificate");
        // The client verifies the name: a wildcard certificate for a one-label name.
        let (_, leaf) = tls_get(&kedge, &ca, "api.example.com", "api.example.com");
        assert!(leaf == wild.der, "one extra label gets the wildcard certificate");
        let (_, leaf) = tls_get(&kedge, &ca, "default.example.net", "default.example.net");
        assert!(leaf == default.der);
        // Two extra labels are not covered by the wildcard: the default certificate, which does
        // not name the host, so a verifying client refuses it.
        let e = Client::try_connect_tls(kedge.tls_addr(), ca.client(), "a.b.example.com").err().expect("refused");
        assert!(e.to_string().contains("certificate"), "{e}");
        // No SNI (the client connects by IP): the default certificate.
        let c = Client::connect_tls(kedge.tls_addr(), ca.client(), "127.0.0.1");
        assert!(c.peer_leaf() == default.der);
        // ALPN http/1.1 and both protocol versions.
        let c13 = Client::connect_tls(kedge.tls_addr(), ca.client_with(&[&rustls::version::TLS13]), "www.example.com");
        assert_eq!(c13.tls().alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(c13.tls().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let mut c12 = Client::connect_tls(kedge.tls_addr(), ca.client_with(&[&rustls::version::TLS12]), "www.example.com");
        assert_eq!(c12.tls().protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(c12.get("www.example.com", "/").status, 200);
    }
);

both_drivers!(
    fn https_is_forwarded_with_proto_hsts_bodies_and_upgrades(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-https");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("ws", Handler::WebSocket);
        let kedge = Kedge::setup(driver).tls().start(&static_tls(&dir, &leaf, &[], &up, ""));
        let mut c = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
        let resp = c.get("www.example.com", "/a");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
        let seen = &up.requests()[0];
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        // Keep-alive, and a body larger than a TLS record both ways.
        let body = crate::support::body::fill(3, 300_000);
        let mut req = format!(
            "POST /up HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        c.send(&req);
        let resp = c.read_response();
        assert_eq!(resp.status, 200);
        let seen = &up.requests()[1];
        assert_eq!(seen.body_len, body.len() as u64);
        assert_eq!(seen.body_hash, crate::support::body::hash(&body));
        // A WebSocket tunnel over TLS.
        let mut ws = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
        ws.send(UPGRADE_REQUEST);
        assert_eq!(ws.read_response().status, 101);
        ws.send(b"hello over tls");
        assert_eq!(ws.read_exact_raw(14), b"hello over tls");
        let big = crate::support::body::fill(9, 100_000);
        ws.send(&big);
        assert!(ws.read_exact_raw(big.len()) == big, "tunnelled bytes changed");
        ws.shutdown_write();
        assert!(ws.is_closed(), "the tunnel stayed open after both sides finished");
    }
);

both_drivers!(
    fn plain_http_for_tls_hosts_is_redirected_with_308(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-redirect");
        let leaf = ca.leaf(&["www.example.com", "optout.example.com"]);
        let (c, k) = leaf.write(&dir, "www");
        let up = Upstream::start("app", Handler::Echo);
        let frag = format!(
            "[[tls.certificate]]\nhosts = [\"www.example.com\", \"optout.example.com\"]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[route]]\nhost = \"www.example.com\"\nupstreams = [\"{a}\"]\n\
             [[route]]\nhost = \"optout.example.com\"\nupstreams = [\"{a}\"]\nssl_redirect = false\n\
             [[route]]\nhost = \"plain.example.com\"\nupstreams = [\"{a}\"]\n\
             [[route]]\nhost = \"forced.example.com\"\nupstreams = [\"{a}\"]\nssl_redirect = true\n",
            c.display(),
            k.display(),
            a = up.addr()
        );
        let kedge = Kedge::setup(driver).tls().start(&frag);
        let port = kedge.tls_addr().port();
        let mut client = Client::connect(kedge.addr());
        let resp = client.get("www.example.com:80", "/shop/cart?id=7&x=%20");
        assert_eq!(resp.status, 308, "{resp:?}");
        assert_eq!(
            resp.header("location"),
            Some(format!("https://www.example.com:{port}/shop/cart?id=7&x=%20").as_str())
        );
        // The connection stays usable after a redirect of a request without a body.
        let resp = client.get("forced.example.com", "/");
        assert_eq!(resp.status, 308);
        assert_eq!(resp.header("location"), Some(format!("https://forced.example.com:{port}/").as_str()));
        // Opted out, no certificate, and ACME HTTP-01 challenges: proxied over plain HTTP.
        assert_eq!(client.get("optout.example.com", "/").status, 200);
        assert_eq!(client.get("plain.example.com", "/").status, 200);
        assert_eq!(client.get("www.example.com", "/.well-known/acme-challenge/token").status, 200);
        assert_eq!(up.request_count(), 3, "redirected requests never reach the upstream");
        // A request with a body is redirected too (308 keeps method and body), then closed.
        let mut post = Client::connect(kedge.addr());
        post.send(b"POST /form HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 5\r\n\r\nhello");
        let resp = post.read_response();
        assert_eq!(resp.status, 308);
        assert!(resp.header_has_token("connection", "close"));
        assert!(post.is_closed());
        // kedge's own last answer to a client that asked to close leaves with the FIN, as a
        // proxied one does (keepalive::the_last_answer_leaves_with_the_fin): one segment fewer
        // than the answer to a request with a body.
        let get = "GET /x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n";
        let (answer, held) = crate::keepalive::exchange(kedge.addr(), get);
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        let post = "POST /x HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello";
        let (answer, unheld) = crate::keepalive::exchange(kedge.addr(), post);
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        assert_eq!(held, unheld - 1, "segments to the client: {held} for a GET, {unheld} for a POST");
        // A body still on its way when kedge has redirected and closes is read and dropped: the
        // client ends with kedge's FIN, not a reset that could take the 308 with it.
        let head = "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 10\r\n\r\nhello";
        let (answer, reset) = crate::keepalive::answer_then_more(kedge.addr(), head, "world");
        assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
        assert!(reset.is_none(), "the rest of the redirected upload was answered with a reset: {reset:?}");
        // Over HTTPS the same host is served, not redirected.
        let mut s = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
        assert_eq!(s.get("www.example.com", "/").status, 200);
    }
);

/// A cluster with Service `web` (one pod: `up`) and Ingress `web` for `host` with TLS from
/// Secret `web-tls`.
fn tls_cluster(up_port: u16, host: &str) -> FakeApi {
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", up_port, &["127.0.0.1"]));
    let mut ing = ingress("web", "kedge", host, "/", "web");
    ing["spec"]["tls"] = json!([{"hosts": [host], "secretName": "web-tls"}]);
    api.apply("ingresses", ing);
    api
}

both_drivers!(
    fn ingress_tls_from_a_secret_rotates_under_load_without_a_failure(driver) {
        let ca = TestCa::new();
        let up = Upstream::start("web", Handler::Echo);
        let api = tls_cluster(up.addr().port(), "foo.bar.com");
        let first = ca.leaf(&["foo.bar.com"]);
        api.apply("secrets", first.secret("default", "web-tls"));
        let dir = TempDir::new("tls-secret");
        let kedge = Kedge::setup(driver).tls().follow(&api, &dir, "");

        // The conformance case: TLS for foo.bar.com, the client verifying the host name.
        let mut kept = Client::connect_tls(kedge.tls_addr(), ca.client(), "foo.bar.com");
        let resp = kept.get("foo.bar.com", "/");
        assert_eq!(resp.status, 200);
        assert!(kept.peer_leaf() == first.der);
        assert_eq!(up.requests()[0].header("x-forwarded-proto"), Some("https"));

        // Load: new connections (full handshakes) and requests, all through the rotation.
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let load: Vec<_> = (0..3)
            .map(|_| {
                let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
                let (addr, config) = (kedge.tls_addr(), ca.client());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match Client::try_connect_tls(addr, Arc::clone(&config), "foo.bar.com") {
                            Ok(mut c) => {
                                for _ in 0..3 {
                                    match c.try_send(b"GET / HTTP/1.1\r\nHost: foo.bar.com\r\n\r\n") {
                                        Ok(()) => match c.try_read_response(false) {
                                            Ok(r) if r.status == 200 => {
                                                ok.fetch_add(1, Ordering::Relaxed);
                                            }
                                            other => failures.lock().unwrap().push(format!("{other:?}")),
                                        },
                                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                                    }
                                }
                            }
                            Err(e) => failures.lock().unwrap().push(format!("handshake: {e}")),
                        }
                    }
                })
            })
            .collect();
        wait_until(Duration::from_secs(10), "load under way", || ok.load(Ordering::Relaxed) > 50);
        let second = ca.leaf(&["foo.bar.com"]);
        api.apply("secrets", second.secret("default", "web-tls"));
        wait_until(Duration::from_secs(10), "new handshakes get the new certificate", || {
            Client::connect_tls(kedge.tls_addr(), ca.client(), "foo.bar.com").peer_leaf() == second.der
        });
        let at_rotation = ok.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(10), "more load after the rotation", || {
            ok.load(Ordering::Relaxed) > at_rotation + 50
        });
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.join().expect("load thread");
        }
        let failures = failures.lock().unwrap();
        assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(5)]);
        // A connection from before the rotation goes on with its session.
        assert_eq!(kept.get("foo.bar.com", "/").status, 200);
        assert!(kept.peer_leaf() == first.der);
    }
);

/// A client configuration that accepts any certificate: to see which one a host gets when it
/// is one the client would refuse.
fn any_cert_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAll(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

both_drivers!(
    fn post_quantum_x25519mlkem768_is_preferred_and_classic_groups_still_work(driver) {
        use rustls::crypto::aws_lc_rs::kx_group;
        use rustls::version::{TLS12, TLS13};
        let ca = TestCa::new();
        let dir = TempDir::new("tls-kx");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("app", Handler::Echo);
        let kedge = Kedge::setup(driver).tls().start(&static_tls(&dir, &leaf, &[], &up, ""));
        let negotiated = |versions: &[&'static rustls::SupportedProtocolVersion],
                          groups: &[&'static dyn rustls::crypto::SupportedKxGroup]| {
            let mut c = Client::connect_tls(kedge.tls_addr(), ca.client_kx(versions, groups), "www.example.com");
            assert_eq!(c.get("www.example.com", "/").status, 200);
            let group = c.tls().negotiated_key_exchange_group().expect("a key exchange group");
            format!("{:?}", group.name())
        };
        // A client offering only the hybrid post-quantum group gets it.
        assert_eq!(negotiated(&[&TLS13], &[kx_group::X25519MLKEM768]), "X25519MLKEM768");
        // The client's order decides (rustls takes its first group kedge supports).
        assert_eq!(negotiated(&[&TLS13], &[kx_group::X25519, kx_group::X25519MLKEM768]), "X25519");
        // Classic clients, each group alone, on TLS 1.3 and 1.2.
        for versions in [&[&TLS13][..], &[&TLS12][..]] {
            assert_eq!(negotiated(versions, &[kx_group::X25519]), "X25519", "{versions:?}");
            assert_eq!(negotiated(versions, &[kx_group::SECP256R1]), "secp256r1", "{versions:?}");
            assert_eq!(negotiated(versions, &[kx_group::SECP384R1]), "secp384r1", "{versions:?}");
        }
    }
);

#[test]
fn bad_certificates_fall_back_to_the_default_and_break_nothing_else() {
    let ca = TestCa::new();
    let up = Upstream::start("web", Handler::Echo);
    let api = tls_cluster(up.addr().port(), "good.example.com");
    let good = ca.leaf(&["good.example.com"]);
    api.apply("secrets", good.secret("default", "web-tls"));
    let bad: [(&str, Leaf); 4] = [
        ("expired", ca.leaf_valid(&["expired.example.com"], (2020, 2021))),
        ("wrongname", ca.leaf(&["other.example.com"])),
        ("mismatch", {
            let mut l = ca.leaf(&["mismatch.example.com"]);
            l.key_pem = ca.leaf(&["mismatch.example.com"]).key_pem;
            l
        }),
        ("garbage", {
            let mut l = ca.leaf(&["garbage.example.com"]);
            l.chain_pem = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into();
            l
        }),
    ];
    for (name, leaf) in &bad {
        api.apply("secrets", leaf.secret("default", &format!("{name}-tls")));
        let host = format!("{name}.example.com");
        let mut ing = ingress(name, "kedge", &host, "/", "web");
        ing["spec"]["tls"] = json!([{"hosts": [host], "secretName": format!("{name}-tls")}]);
        api.apply("ingresses", ing);
    }
    let dir = TempDir::new("tls-bad");
    let default = ca.leaf(&["default.example.net"]);
    let (dc, dk) = default.write(&dir, "default");
    let kedge = Kedge::setup(crate::support::Driver::default()).tls().start(&format!(
        "[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n[[cluster]]\nname = \"test\"\nkubeconfig = \"{}\"\n",
        dc.display(),
        dk.display(),
        {
            let k = dir.path().join("kubeconfig");
            api.write_kubeconfig(&k);
            k.display().to_string()
        }
    ));
    for why in [
        "expired.example.com: the certificate expired at 2021-01-01T00:00:00Z; it gets the default certificate",
        "wrongname.example.com: the certificate does not name wrongname.example.com",
        "Secret default/mismatch-tls: the private key does not belong to the certificate",
        "Secret default/garbage-tls: the leaf certificate is not valid X.509 DER",
    ] {
        kedge.wait_log(why, Duration::from_secs(10));
    }
    // Counted on /metrics too.
    let metrics = Client::connect(kedge.admin_addr()).get("admin", "/metrics").text();
    assert!(metrics.contains("\nkedge_tls_certificate_problems 4\n"), "{metrics}");
    // Each bad host gets the default certificate, and is still routed.
    for (name, _) in &bad {
        let host = format!("{name}.example.com");
        let mut c = Client::connect_tls(kedge.tls_addr(), any_cert_client(), &host);
        assert!(c.peer_leaf() == default.der, "{host}");
        assert_eq!(c.get(&host, "/").status, 200, "{host}");
    }
    // The good one keeps its own, verified.
    let mut c = Client::connect_tls(kedge.tls_addr(), ca.client(), "good.example.com");
    assert!(c.peer_leaf() == good.der);
    assert_eq!(c.get("good.example.com", "/").status, 200);
    // Fixing a Secret fixes its host.
    let fixed = ca.leaf(&["expired.example.com"]);
    api.apply("secrets", fixed.secret("default", "expired-tls"));
    wait_until(Duration::from_secs(10), "the fixed certificate is served", || {
        Client::try_connect_tls(kedge.tls_addr(), ca.client(), "expired.example.com")
            .is_ok_and(|c| c.peer_leaf() == fixed.der)
    });
}

both_drivers!(
    fn certificate_files_are_picked_up_without_a_restart(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-files");
        let default = ca.leaf(&["default.example.net"]);
        let first = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("app", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tls()
            .start(&static_tls(&dir, &default, &[(&["www.example.com"], &first)], &up, ""));
        let mut kept = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
        assert_eq!(kept.get("www.example.com", "/").status, 200);
        assert!(kept.peer_leaf() == first.der);

        let second = ca.leaf(&["www.example.com"]);
        second.write(&dir, "cert0");
        wait_until(Duration::from_secs(10), "the new file is served", || {
            Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com").peer_leaf() == second.der
        });
        // A half-written rotation (the key of another certificate) keeps the last good one.
        dir.write("cert0.key", &ca.leaf(&["www.example.com"]).key_pem);
        kedge.wait_log("the private key does not belong to the certificate; the previous certificate is still served", Duration::from_secs(10));
        assert!(Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com").peer_leaf() == second.der);
        // The connection from before any of it still works.
        assert_eq!(kept.get("www.example.com", "/").status, 200);
    }
);

#[test]
fn sessions_resume_on_tls12_and_tls13_across_workers() {
    let ca = TestCa::new();
    let dir = TempDir::new("tls-resume");
    let leaf = ca.leaf(&["www.example.com"]);
    let up = Upstream::start("app", Handler::Echo);
    let kedge = Kedge::setup(crate::support::Driver::default())
        .workers(2)
        .tls()
        .start(&static_tls(&dir, &leaf, &[], &up, ""));
    let ids_only = {
        let mut cfg = (*ca.client_with(&[&rustls::version::TLS12])).clone();
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(16)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        Arc::new(cfg)
    };
    for (what, config) in [
        ("TLS 1.3 tickets", ca.client_with(&[&rustls::version::TLS13])),
        ("TLS 1.2 tickets", ca.client_with(&[&rustls::version::TLS12])),
        ("TLS 1.2 session IDs", ids_only),
    ] {
        let mut first = Client::connect_tls(kedge.tls_addr(), Arc::clone(&config), "www.example.com");
        // TLS 1.3 tickets come after the handshake: read a response to have them.
        assert_eq!(first.get("www.example.com", "/").status, 200);
        assert!(!first.resumed());
        drop(first);
        // Several connections, so that both workers (SO_REUSEPORT spreads them) resume.
        for i in 0..8 {
            let mut c = Client::connect_tls(kedge.tls_addr(), Arc::clone(&config), "www.example.com");
            assert!(c.resumed(), "{what}: connection {i} did a full handshake");
            assert_eq!(c.get("www.example.com", "/").status, 200);
        }
    }
    assert!(handshakes(&kedge, "resumed") >= 24);
    assert_eq!(handshakes(&kedge, "full"), 3);
}

/// The first flight of a real TLS client: a complete ClientHello record.
fn client_hello(ca: &TestCa) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("www.example.com").unwrap();
    let mut conn = rustls::ClientConnection::new(ca.client(), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

both_drivers!(
    fn clients_that_do_not_speak_tls_are_closed_counted_and_harmless(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-bad-clients");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("app", Handler::Echo);
        let kedge = Kedge::setup(driver)
            .tls()
            .start(&static_tls(&dir, &leaf, &[], &up, "handshake_timeout = \"1s\""));
        let addr = kedge.tls_addr();
        // A good connection across all of it.
        let mut good = Client::connect_tls(addr, ca.client(), "www.example.com");
        assert_eq!(good.get("www.example.com", "/").status, 200);

        // Plain HTTP on the TLS port: a plain-text 400, then the close.
        let mut plain = Client::connect(addr);
        let resp = plain.get("www.example.com", "/");
        assert_eq!(resp.status, 400);
        assert!(resp.text().contains("plain HTTP request sent to an HTTPS port"), "{}", resp.text());
        assert!(plain.is_closed());

        // A malformed ClientHello: a handshake record of garbage. An alert, then the close.
        let mut junk = Client::connect(addr);
        junk.send(b"\x16\x03\x01\x00\x10garbagegarbage!!");
        assert!(junk.is_closed());

        // A client that says nothing: closed after the handshake timeout.
        let mut silent = Client::connect(addr);
        assert!(silent.closed_within(Duration::from_secs(10)), "a silent client was kept");

        // A client that vanishes mid-handshake.
        let hello = client_hello(&ca);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        drop(s);

        // A complete ClientHello, then gone before the server's flight is read.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        let mut first = [0u8; 5];
        s.read_exact(&mut first).unwrap();
        assert_eq!(first[0], 0x16, "a handshake record comes back");
        drop(s);

        wait_until(Duration::from_secs(10), "every failure counted", || {
            handshakes(&kedge, "plain_http") >= 1
                && handshakes(&kedge, "failed") >= 1
                && handshakes(&kedge, "timeout") >= 1
                && handshakes(&kedge, "client_closed") >= 1
        });
        // Nothing else was affected.
        assert_eq!(good.get("www.example.com", "/").status, 200);
        let mut fresh = Client::connect_tls(addr, ca.client(), "www.example.com");
        assert_eq!(fresh.get("www.example.com", "/").status, 200);
    }
);

#[test]
fn unknown_names_can_be_refused() {
    let ca = TestCa::new();
    let dir = TempDir::new("tls-refuse");
    let default = ca.leaf(&["default.example.net"]);
    let www = ca.leaf(&["www.example.com"]);
    let up = Upstream::start("app", Handler::Echo);
    let frag = static_tls(
        &dir,
        &default,
        &[(&["www.example.com"], &www)],
        &up,
        "unknown_sni = \"refuse\"",
    );
    let kedge = Kedge::setup(crate::support::Driver::default()).tls().start(&frag);
    let mut c = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
    assert_eq!(c.get("www.example.com", "/").status, 200);
    for sni in ["default.example.net", "127.0.0.1"] {
        let e = Client::try_connect_tls(kedge.tls_addr(), any_cert_client(), sni)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("AccessDenied"), "{sni}: {e}");
    }
    wait_until(Duration::from_secs(5), "refusals counted", || {
        handshakes(&kedge, "failed") >= 2
    });
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &TempDir, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir.path())
        .output()
        .expect("run openssl (the tests need it: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rsa_and_ecdsa_keys_in_pkcs1_sec1_and_pkcs8_from_openssl() {
    let dir = TempDir::new("tls-openssl");
    // A CA, and leaves signed by it: RSA 2048 with a PKCS#1 key, P-256 with a SEC1 key, P-384
    // with a PKCS#8 key.
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=kedge openssl CA",
        ],
    );
    let leaves = [
        (
            "rsa",
            "rsa.example.com",
            vec!["genrsa", "-traditional", "-out", "rsa.key", "2048"],
        ),
        (
            "ec",
            "ec.example.com",
            vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ec.key"],
        ),
        (
            "p384",
            "p384.example.com",
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "p384.key",
            ],
        ),
    ];
    let mut frag = String::new();
    for (name, host, genkey) in &leaves {
        openssl(&dir, genkey);
        openssl(
            &dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={host}"),
            ],
        );
        dir.write(&format!("{name}.ext"), &format!("subjectAltName=DNS:{host}\n"));
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
        frag.push_str(&format!(
            "[[tls.certificate]]\nhosts = [\"{host}\"]\ncert = \"{d}/{name}.crt\"\nkey = \"{d}/{name}.key\"\n",
            d = dir.path().display()
        ));
    }
    let first_line = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(first_line("rsa.key"), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(first_line("ec.key"), "-----BEGIN EC PRIVATE KEY-----");
    assert_eq!(first_line("p384.key"), "-----BEGIN PRIVATE KEY-----");
    let up = Upstream::start("app", Handler::Echo);
    frag.push_str(&format!("[[route]]\nupstreams = [\"{}\"]\n", up.addr()));
    let kedge = Kedge::setup(crate::support::Driver::default()).tls().start(&frag);

    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(dir.path().join("ca.crt")).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        );
        for (_, host, _) in &leaves {
            let mut c = Client::connect_tls(kedge.tls_addr(), Arc::clone(&config), host);
            assert_eq!(c.get(host, "/").status, 200, "{host} {versions:?}");
        }
    }
}

both_drivers!(
    fn static_routes_reach_https_upstreams_verified_or_not(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-upstream");
        let backend = ca.leaf(&["backend.internal"]);
        let up = Upstream::start_tls("secure", Handler::WebSocket, backend.server_config());
        let ca_file = dir.write("ca.pem", backend.ca_pem());
        let frag = format!(
            "[[route]]\nhost = \"plain.example.com\"\nupstreams = [\"{a}\"]\nupstream_protocol = \"https\"\n\
             [[route]]\nhost = \"verified.example.com\"\nupstreams = [\"{a}\"]\nupstream_protocol = \"https\"\n\
             upstream_verify = true\nupstream_ca = \"{ca}\"\nupstream_server_name = \"backend.internal\"\n\
             [[route]]\nhost = \"wrongname.example.com\"\nupstreams = [\"{a}\"]\nupstream_protocol = \"https\"\n\
             upstream_ca = \"{ca}\"\nupstream_server_name = \"other.internal\"\n",
            a = up.addr(),
            ca = ca_file.display()
        );
        let kedge = Kedge::start(driver, &frag);
        let mut c = Client::connect(kedge.addr());
        for _ in 0..3 {
            let resp = c.get("plain.example.com", "/");
            assert_eq!((resp.status, resp.upstream()), (200, Some("secure")), "{resp:?}");
        }
        assert_eq!(up.connections(), 1, "the TLS upstream connection is pooled and reused");
        let resp = c.get("verified.example.com", "/");
        assert_eq!((resp.status, resp.upstream()), (200, Some("secure")), "{resp:?}");
        // A verification failure is a 502, never an unverified request.
        let before = up.request_count();
        let resp = c.get("wrongname.example.com", "/");
        assert_eq!(resp.status, 502, "{resp:?}");
        assert!(resp.text().contains("TLS handshake with upstream failed"), "{}", resp.text());
        assert_eq!(up.request_count(), before);
        // A WebSocket tunnel to a TLS upstream.
        let mut ws = Client::connect(kedge.addr());
        ws.send(&UPGRADE_REQUEST.to_vec().replace_host("plain.example.com"));
        assert_eq!(ws.read_response().status, 101);
        ws.send(b"through two TLS hops");
        assert_eq!(ws.read_exact_raw(20), b"through two TLS hops");
        ws.shutdown_write();
        assert!(ws.is_closed());
    }
);

#[test]
fn ingress_backend_protocol_https_with_ingress_nginx_annotations() {
    let ca = TestCa::new();
    let backend = ca.leaf(&["web.default.svc", "named.internal"]);
    let up = Upstream::start_tls("secure", Handler::Echo, backend.server_config());
    let port = up.addr().port();
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    // A kubernetes.io/tls Secret with the CA in ca.crt.
    let mut ca_secret = ca.leaf(&["unused.internal"]).secret("default", "backend-ca");
    ca_secret["data"]["ca.crt"] = json!(base64_of(backend.ca_pem()));
    api.apply("secrets", ca_secret);
    let cases = [
        (
            "web",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
            200,
        ),
        (
            "verified",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret": "default/backend-ca",
            "nginx.ingress.kubernetes.io/proxy-ssl-name": "named.internal",
            "nginx.ingress.kubernetes.io/proxy-ssl-server-name": "on"}),
            200,
        ),
        (
            "wrongname",
            json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
            "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret": "default/backend-ca"}),
            502,
        ),
        ("plain", json!({}), 502),
    ];
    for (name, annotations, _) in &cases {
        api.apply("services", service(name));
        api.apply("endpointslices", slice(name, port, &["127.0.0.1"]));
        let mut ing = ingress(name, "kedge", &format!("{name}.example.com"), "/", name);
        ing["metadata"]["annotations"] = annotations.clone();
        api.apply("ingresses", ing);
    }
    let dir = TempDir::new("tls-backend-protocol");
    let kedge = Kedge::follow(&api, &dir, "");
    let mut c = Client::connect(kedge.addr());
    for (name, _, want) in &cases {
        let resp = c.get(&format!("{name}.example.com"), "/");
        assert_eq!(resp.status, *want, "{name}: {resp:?}");
        if resp.status == 502 {
            c = Client::connect(kedge.addr());
        }
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Puts another Host into a request head.
trait ReplaceHost {
    fn replace_host(self, host: &str) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replace_host(self, host: &str) -> Vec<u8> {
        String::from_utf8(self)
            .expect("ASCII head")
            .replace("Host: www.example.com", &format!("Host: {host}"))
            .into_bytes()
    }
}

#[test]
fn a_restart_during_an_outage_keeps_the_tls_hosts_certificates() {
    let ca = TestCa::new();
    let up = Upstream::start("web", Handler::Echo);
    let api = tls_cluster(up.addr().port(), "secure.example.com");
    let leaf = ca.leaf(&["secure.example.com"]);
    api.apply("secrets", leaf.secret("default", "web-tls"));
    let dir = TempDir::new("tls-outage");
    let state_dir = dir.path().join("state");
    let start = |sync_timeout: &str| {
        Kedge::setup(crate::support::Driver::default())
            .tls()
            .state_dir(&state_dir)
            .follow(&api, &dir, &format!("sync_timeout = \"{sync_timeout}\""))
    };
    let first = start("10s");
    wait_until(Duration::from_secs(10), "the Secret is persisted", || {
        std::fs::read_to_string(state_dir.join("cluster-test.json")).is_ok_and(|f| f.contains("web-tls"))
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state_dir), 0o700, "the state directory holds private keys");
    assert_eq!(mode(&state_dir.join("cluster-test.json")), 0o600);
    drop(first);

    api.pause();
    let second = start("1s");
    second.wait_log("serving the state persisted at", Duration::from_secs(10));
    let mut c = Client::connect_tls(second.tls_addr(), ca.client(), "secure.example.com");
    assert!(c.peer_leaf() == leaf.der, "the persisted certificate is served");
    assert_eq!(c.get("secure.example.com", "/").status, 200);
}

both_drivers!(
    /// Between requests a keep-alive TLS connection parks its request buffers, and after a long
    /// wait it waits for readiness with no read buffer at all (the idle-memory work). Requests
    /// after idle pauses, a request split over two records with a pause inside, and pipelined
    /// requests still arrive whole, on the same connection.
    fn idle_keepalive_tls_connections_wait_without_buffers_and_keep_working(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-idle");
        let leaf = ca.leaf(&["www.example.com"]);
        let up = Upstream::start("app", Handler::Echo);
        let frag = static_tls(&dir, &leaf, &[], &up, "");
        let kedge = Kedge::setup(driver).tls().start(&frag);
        let mut c = Client::connect_tls(kedge.tls_addr(), ca.client(), "www.example.com");
        // Pacing, not synchronisation: each pause is longer than what kedge counts as a long
        // wait (100 ms), so the waits after it hold no buffer.
        let pause = || std::thread::sleep(Duration::from_millis(150));
        for i in 0..3 {
            pause();
            let r = c.get("www.example.com", &format!("/idle{i}"));
            assert_eq!(r.status, 200);
            assert!(r.text().contains(&format!("uri=/idle{i}\n")), "{}", r.text());
        }
        // One request in two TLS records (each `send` is one), the second after a pause.
        pause();
        c.send(b"GET /split HTTP/1.1\r\nHost: www.exa");
        pause();
        c.send(b"mple.com\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert!(r.text().contains("uri=/split\n"), "{}", r.text());
        // Two pipelined requests in one record, after a pause.
        pause();
        c.send(b"GET /p1 HTTP/1.1\r\nHost: www.example.com\r\n\r\nGET /p2 HTTP/1.1\r\nHost: www.example.com\r\n\r\n");
        for p in ["/p1", "/p2"] {
            let r = c.read_response();
            assert_eq!(r.status, 200);
            assert!(r.text().contains(&format!("uri={p}\n")), "{}", r.text());
        }
        // And quick requests after it (the buffered wait again).
        for i in 0..5 {
            assert_eq!(c.get("www.example.com", &format!("/quick{i}")).status, 200);
        }
    }
);

/// The route tables kedge published after the first `skip`, each line whole.
fn published_since(kedge: &Kedge, skip: usize) -> Vec<String> {
    let lines: Vec<String> = kedge
        .logs()
        .into_iter()
        .filter(|l| l.contains("route table published"))
        .collect();
    lines[skip.min(lines.len())..].to_vec()
}

/// Secret and Namespace changes build only what reads them: a Secret nothing names (an Opaque
/// one, a certificate no `tls` section names) and a Namespace (no Gateway selects namespaces by
/// label) build nothing; a certificate rotation is one update that serves the new certificate
/// (no build from nothing); its deletion is one too (the host keeps TLS without a certificate
/// of its own, with a warning, as a build from nothing has it), and so is its coming back.
#[test]
fn secret_changes_build_only_what_reads_them() {
    use base64::Engine as _;
    let ca = TestCa::new();
    let up = Upstream::start("web", Handler::Echo);
    let api = tls_cluster(up.addr().port(), "foo.bar.com");
    let first = ca.leaf(&["foo.bar.com"]);
    api.apply("secrets", first.secret("default", "web-tls"));
    let dir = TempDir::new("tls-secret-update");
    let kedge = Kedge::setup(crate::support::Driver::default())
        .tls()
        .follow(&api, &dir, "");
    let served = || Client::connect_tls(kedge.tls_addr(), ca.client(), "foo.bar.com").peer_leaf();
    assert!(served() == first.der);
    let start = published_since(&kedge, 0).len();

    // Nothing reads these: each is seen (logged), and builds nothing.
    api.apply(
        "secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": "app-config", "namespace": "default"},
               "data": {"password": base64::engine::general_purpose::STANDARD.encode("hunter2")}}),
    );
    api.apply(
        "secrets",
        ca.leaf(&["other.example.com"]).secret("default", "unused-tls"),
    );
    api.apply(
        "namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}}),
    );
    api.delete("secrets", Some("default"), "unused-tls");
    for (object, lines) in [("default/app-config", 1), ("team-a", 1), ("default/unused-tls", 2)] {
        kedge.wait_logs(&format!("object={object:?}"), lines, Duration::from_secs(10));
    }

    // The rotation: recorded after the changes above (the watches log before they record, on
    // the control thread's runtime), so its build is the first that can follow them.
    let second = ca.leaf(&["foo.bar.com"]);
    api.apply("secrets", second.secret("default", "web-tls"));
    wait_until(
        Duration::from_secs(10),
        "new handshakes get the new certificate",
        || served() == second.der,
    );
    // The `n`th table since `start` (and the last) is an update with `tls_hosts` hosts that
    // have a certificate, and plain HTTP still redirects to HTTPS: the host's rules are the
    // same. (The line follows the table's publication.)
    let nth_is_an_update = |n: usize, tls_hosts: usize| {
        kedge.wait_logs("route table published", start + n, Duration::from_secs(10));
        let after = published_since(&kedge, start);
        assert_eq!(after.len(), n, "one table per change: {after:#?}");
        let last = &after[n - 1];
        assert!(last.contains("why=\"update\""), "an update: {last}");
        assert!(last.contains(&format!("tls_hosts={tls_hosts}")), "{last}");
        let resp = Client::connect(kedge.addr()).get("foo.bar.com", "/");
        assert_eq!(resp.status, 308, "{resp:?}");
    };
    // One table for all those changes.
    nth_is_an_update(1, 1);

    // Deleted: an update too. The host keeps TLS (its plain HTTP still redirects) without a
    // certificate of its own, as a build from nothing would have it: the same handshake
    // outcome, host count and warning as a kedge that starts from these objects.
    api.delete("secrets", Some("default"), "web-tls");
    nth_is_an_update(2, 0);
    // (The warning is logged before the line.)
    kedge.wait_log("Secret default/web-tls not found", Duration::from_secs(10));
    let handshake = |k: &Kedge| {
        Client::try_connect_tls(k.tls_addr(), ca.client(), "foo.bar.com")
            .map(|c| c.peer_leaf())
            .map_err(|e| e.to_string())
    };
    let updated = handshake(&kedge);
    assert!(
        updated.as_ref().map_or(true, |l| *l != first.der && *l != second.der),
        "{updated:?}"
    );
    {
        let fresh_dir = TempDir::new("tls-secret-update-fresh");
        let fresh = Kedge::setup(crate::support::Driver::default())
            .tls()
            .follow(&api, &fresh_dir, "");
        fresh.wait_log("route table published", Duration::from_secs(10));
        let built = published_since(&fresh, 0);
        assert!(built.last().is_some_and(|l| l.contains("tls_hosts=0")), "{built:#?}");
        fresh.wait_log("Secret default/web-tls not found", Duration::from_secs(10));
        assert_eq!(handshake(&fresh).map_err(|_| ()), updated.clone().map_err(|_| ()));
        let resp = Client::connect(fresh.addr()).get("foo.bar.com", "/");
        assert_eq!(resp.status, 308, "{resp:?}");
    }

    // It appears again (cert-manager's flow: the Ingress first, its Secret later): an update
    // that serves it.
    let third = ca.leaf(&["foo.bar.com"]);
    api.apply("secrets", third.secret("default", "web-tls"));
    wait_until(
        Duration::from_secs(10),
        "new handshakes get the certificate that appeared",
        || handshake(&kedge).is_ok_and(|l| l == third.der),
    );
    nth_is_an_update(3, 1);
}

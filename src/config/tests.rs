//! Config validation as data: good files give typed values; bad ones give `file:line:column`
//! and the key.

use std::path::Path;
use std::time::Duration;

use super::*;

fn parse_ok(text: &str) -> Config {
    parse(Path::new("kedge.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match parse(Path::new("kedge.toml"), text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n";

#[test]
fn defaults() {
    let c = parse_ok(MINIMAL);
    assert!(c.process.workers >= 1);
    assert_eq!(c.process.driver, Driver::Auto);
    assert_eq!(c.client.max_body, 1 << 20);
    assert_eq!(c.client.header_timeout, Duration::from_secs(15));
    assert_eq!(c.upstream.connect_attempts, 3);
    assert_eq!(
        c.http2,
        Http2Settings {
            enabled: true,
            max_concurrent_streams: 128,
            max_requests: 1000,
            initial_window_size: 65536,
        }
    );
    assert!(c.routes.is_empty());
}

#[test]
fn http2_section() {
    let c = parse_ok(&format!(
        "{MINIMAL}[http2]\nenabled = false\nmax_concurrent_streams = 8\nmax_requests = 2\ninitial_window_size = \"1m\"\n"
    ));
    assert!(!c.http2.enabled);
    assert_eq!(c.http2.max_concurrent_streams, 8);
    assert_eq!(c.http2.max_requests, 2);
    assert_eq!(c.http2.initial_window_size, 1 << 20);
}

#[test]
fn tls_listeners_and_certificate_files() {
    let dir = std::env::temp_dir().join(format!("kedge-config-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["www.example.com".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("www.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("www.key"), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("other.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let file = dir.join("kedge.toml");
    let text = "[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = true\n\
                [tls]\ndefault_cert = \"www.crt\"\ndefault_key = \"www.key\"\nhsts = \"\"\n\
                [[tls.certificate]]\nhosts = [\"WWW.example.com\"]\ncert = \"www.crt\"\nkey = \"www.key\"\n";
    let c = parse(&file, text).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.process.listeners[0].tls);
    // Relative paths are relative to the config file.
    assert_eq!(c.tls.default_cert.as_ref().unwrap().cert, dir.join("www.crt"));
    assert_eq!(c.tls.certificates[0].hosts, ["www.example.com"]);
    assert_eq!(c.tls.hsts, "");
    assert_eq!(c.tls.unknown_sni, UnknownSni::Default);
    assert_eq!(c.tls.handshake_timeout, Duration::from_secs(10));
    // A key that is not the certificate's is caught with the line and the key.
    let bad = text.replace("default_key = \"www.key\"", "default_key = \"other.key\"");
    let e = parse(&file, &bad).unwrap_err().to_string();
    assert!(
        e.contains("kedge.toml:5:16: tls.default_cert:") && e.contains("does not belong"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shipped_config_is_valid() {
    let text = include_str!("../../config/kedge.toml");
    let c = parse_ok(text);
    assert!(!c.routes.is_empty());
}

#[test]
fn full_route() {
    let c = parse_ok(&format!(
        "{MINIMAL}[client]\nmax_body = \"16k\"\n[[route]]\nhost = \"*.Example.com\"\npath = \"/api\"\npath_type = \"exact\"\n\
         upstreams = [\"192.0.2.1:80\", \"[2001:db8::1]:8080\"]\nmax_body = 0\n"
    ));
    assert_eq!(c.client.max_body, 16 * 1024);
    let r = &c.routes[0];
    assert_eq!(r.host.as_deref(), Some("*.example.com"));
    assert_eq!(r.path_type, PathType::Exact);
    assert_eq!(r.upstreams.len(), 2);
    assert_eq!(r.max_body, Some(0));
    assert_eq!(r.name, "static/*.example.com/api (exact)");
}

#[test]
fn errors_point_at_line_column_and_key() {
    let cases: &[(&str, &str)] = &[
        (
            "[[listener]]\naddress = \"nope\"\n",
            "kedge.toml:2:11: listener[0].address:",
        ),
        ("[proxy]\nworkerz = 2\n", "kedge.toml:2:1:"),
        (
            "[proxy]\ndriver = \"kqueue\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n",
            "kedge.toml:2:10: proxy.driver:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[client]\nheader_timeout = \"soon\"\n",
            "kedge.toml:4:18: client.header_timeout:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[client]\nmax_headers = 0\n",
            "kedge.toml:4:15: client.max_headers:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nhost = \"a b\"\nupstreams = [\"127.0.0.1:2\"]\n",
            "kedge.toml:4:8: route[0].host:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"api\"\nupstreams = [\"127.0.0.1:2\"]\n",
            "kedge.toml:4:8: route[0].path:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = []\n",
            "kedge.toml:4:13: route[0].upstreams:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = [\"127.0.0.1:2\", \"x\"]\n",
            "kedge.toml:4:29: route[0].upstreams[1]:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[tls]\ndefault_cert = \"/nonexistent/c.pem\"\ndefault_key = \"/k\"\n",
            "kedge.toml:4:16: tls.default_cert: cannot read /nonexistent/c.pem",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[tls]\ndefault_key = \"/k\"\n",
            "kedge.toml:4:15: tls.default_cert: needed with default_key",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[tls]\nunknown_sni = \"drop\"\n",
            "kedge.toml:4:15: tls.unknown_sni: \"drop\" is not one of",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[tls.certificate]]\nhosts = [\"bad host\"]\ncert = \"c\"\nkey = \"k\"\n",
            "kedge.toml:4:10: tls.certificate[0].hosts:",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = [\"127.0.0.1:2\"]\nupstream_protocol = \"h2\"\n",
            "kedge.toml:5:21: route[0].upstream_protocol: \"h2\" is not one of",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = [\"127.0.0.1:2\"]\nupstream_protocol = \"https\"\nupstream_verify = true\n",
            "kedge.toml:6:19: route[0].upstream_server_name: needed to verify",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = [\"127.0.0.1:2\"]\nupstream_verify = true\n",
            "route[0].upstream_protocol: upstream TLS settings need upstream_protocol = \"https\"",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nupstreams = [\"127.0.0.1:2\"]\nupstream_protocol = \"https\"\nupstream_ca = \"/nonexistent/ca.pem\"\n",
            "kedge.toml:6:15: route[0].upstream_ca: cannot read /nonexistent/ca.pem",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[tls]\nredirect_port = 70000\n",
            "kedge.toml:4:17: tls.redirect_port: must be between 1 and 65535",
        ),
        (
            "[log]\nlevel = \"info\"\n",
            "listener: at least one [[listener]] is needed",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n",
            "kedge.toml:4:11:",
        ),
        ("[[listener]\n", "kedge.toml:1:"),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = true\n",
            "kedge.toml:3:18: listener[0].proxy_protocol: needs proxy_protocol_from",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
            "kedge.toml:3:24: listener[0].proxy_protocol_from: has no effect without proxy_protocol = true",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            "kedge.toml:4:38: listener[0].proxy_protocol_from: \"10.0.0.0/33\": the prefix length must be 0 to 32",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[client]\ntrusted_proxies = [\"lb\"]\n",
            "kedge.toml:4:20: client.trusted_proxies: \"lb\" is not an address or CIDR range",
        ),
    ];
    for (text, want) in cases {
        let got = parse_err(text);
        assert!(
            got.starts_with(want) || got.contains(want),
            "for {text:?}\n got: {got}\nwant: {want}"
        );
    }
}

#[test]
fn proxy_protocol_and_trusted_proxies() {
    let c = parse_ok(MINIMAL);
    assert_eq!(c.process.listeners[0].proxy_protocol, None);
    assert!(c.client.trusted_proxies.is_empty(), "off by default");
    let c = parse_ok(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nproxy_protocol = true\n\
         proxy_protocol_from = [\"192.0.2.0/24\", \"2001:db8::1\"]\n\
         [[listener]]\naddress = \"127.0.0.1:2\"\nproxy_protocol = false\n\
         [client]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    let from = c.process.listeners[0].proxy_protocol.as_deref().expect("on");
    assert_eq!(
        from,
        [
            Cidr::parse("192.0.2.0/24").unwrap(),
            Cidr::parse("2001:db8::1").unwrap()
        ]
    );
    assert_eq!(c.process.listeners[1].proxy_protocol, None);
    assert_eq!(c.client.trusted_proxies, [Cidr::parse("10.0.0.0/8").unwrap()]);
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("-5s").is_err());
    assert_eq!(Size::Text("1m".into()).bytes(), Ok(1 << 20));
    assert_eq!(Size::Text("16K".into()).bytes(), Ok(16 << 10));
    assert_eq!(Size::Bytes(7).bytes(), Ok(7));
    assert!(Size::Text("lots".into()).bytes().is_err());
}

#[test]
fn clusters() {
    let c = parse_ok(&format!("{MINIMAL}[[cluster]]\nname = \"prod\"\n"));
    let k = &c.clusters[0];
    assert_eq!(k.name, "prod");
    assert_eq!(k.kubeconfig, None);
    assert_eq!(k.ingress_class, "kedge");
    assert_eq!(k.controller, "kedge.dev/ingress-controller");
    assert_eq!(k.gateway_controller, "kedge.dev/gateway-controller");
    assert_eq!(k.upstream, UpstreamMode::Pods);
    assert_eq!(k.node_address_type, "InternalIP");
    assert_eq!(k.sync_timeout, Duration::from_secs(30));
    assert_eq!(k.watch_retry_max, Duration::from_secs(5));
    assert_eq!(k.resync, Duration::from_secs(600));
    assert_eq!(k.status_writes_per_second, 200);
    assert_eq!(k.status_lease.to_string(), "default/kedge-kedge");

    let c = parse_ok(&format!(
        "{MINIMAL}[[cluster]]\nname = \"edge-1\"\nupstream = \"nodeports\"\nnode_address_type = \"ExternalIP\"\n\
         namespaces = [\"web\"]\npublish_addresses = [\"203.0.113.10\", \"lb.example.com\"]\n\
         watch_retry_max = \"2s\"\nresync = \"1m\"\nstatus_writes_per_second = 50\ningress_class = \"edge\"\ngateway_controller = \"example.com/edge\"\n"
    ));
    assert_eq!(c.clusters[0].gateway_controller, "example.com/edge");
    let k = &c.clusters[0];
    assert_eq!(
        k.status_lease.to_string(),
        "default/kedge-edge",
        "named after the class"
    );
    assert_eq!(k.watch_retry_max, Duration::from_secs(2));
    assert_eq!(k.resync, Duration::from_secs(60));
    assert_eq!(k.status_writes_per_second, 50);
    assert_eq!(k.upstream, UpstreamMode::Nodeports);
    assert_eq!(k.namespaces, ["web"]);
    assert_eq!(k.publish_addresses, ["203.0.113.10", "lb.example.com"]);

    let c = parse_ok(&format!(
        "{MINIMAL}[[cluster]]\nname = \"a\"\nstatus_lease = \"kedge/edge-status.prod\"\n"
    ));
    let lease = &c.clusters[0].status_lease;
    assert_eq!(
        (lease.namespace.as_str(), lease.name.as_str()),
        ("kedge", "edge-status.prod")
    );

    let cases: &[(&str, &str)] = &[
        ("[[cluster]]\nname = \"Prod\"\n", "kedge.toml:4:8: cluster[0].name:"),
        (
            "[[cluster]]\nname = \"a\"\nkubeconfig = \"/nonexistent/kubeconfig\"\n",
            "kedge.toml:5:14: cluster[0].kubeconfig: cannot use /nonexistent/kubeconfig",
        ),
        (
            "[[cluster]]\nname = \"a\"\nnode_address_type = \"IP\"\n",
            "kedge.toml:5:21: cluster[0].node_address_type:",
        ),
        (
            "[[cluster]]\nname = \"a\"\npublish_addresses = [\"not an address\"]\n",
            "kedge.toml:5:22: cluster[0].publish_addresses[0]:",
        ),
        ("[[cluster]]\nname = \"a\"\nupstream = \"nodes\"\n", "kedge.toml:5:"),
        (
            "[[cluster]]\nname = \"a\"\nwatch_retry_max = \"100ms\"\n",
            "kedge.toml:5:19: cluster[0].watch_retry_max: must be from 500ms to 5m",
        ),
        (
            "[[cluster]]\nname = \"a\"\nresync = \"500ms\"\n",
            "kedge.toml:5:10: cluster[0].resync: must be from 1s to 24h",
        ),
        (
            "[[cluster]]\nname = \"a\"\nstatus_writes_per_second = 0\n",
            "kedge.toml:5:28: cluster[0].status_writes_per_second: must be between 1 and 100000",
        ),
        (
            "[[cluster]]\nname = \"a\"\n[[cluster]]\nname = \"a\"\n",
            "cluster[1].name: \"a\" is used twice",
        ),
        ("[[cluster]]\nkubeconfig = \"x\"\n", "kedge.toml:3:"),
        (
            "[http2]\nmax_concurrent_streams = 0\n",
            "kedge.toml:4:26: http2.max_concurrent_streams:",
        ),
        (
            "[http2]\nmax_requests = 2000000\n",
            "kedge.toml:4:16: http2.max_requests:",
        ),
        (
            "[http2]\ninitial_window_size = \"4g\"\n",
            "kedge.toml:4:23: http2.initial_window_size:",
        ),
        (
            "[http2]\ninitial_window_size = \"soon\"\n",
            "kedge.toml:4:23: http2.initial_window_size:",
        ),
        ("[http2]\nenabled = \"yes\"\n", "kedge.toml:4:"),
        ("[http2]\nmax_streams = 1\n", "kedge.toml:4:1:"),
        (
            "[[cluster]]\nname = \"a\"\nstatus_lease = \"kedge-status\"\n",
            "kedge.toml:5:16: cluster[0].status_lease: \"kedge-status\" is not \"namespace/name\"",
        ),
        (
            "[[cluster]]\nname = \"a\"\nstatus_lease = \"Edge/x\"\n",
            "cluster[0].status_lease:",
        ),
        (
            "[[cluster]]\nname = \"a\"\nstatus_lease = \"edge/\"\n",
            "cluster[0].status_lease:",
        ),
        (
            "[[cluster]]\nname = \"a\"\nstatus_lease = \"edge/a/b\"\n",
            "cluster[0].status_lease:",
        ),
    ];
    for (tail, want) in cases {
        let got = parse_err(&format!("{MINIMAL}{tail}"));
        assert!(got.contains(want), "for {tail:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn state_dir() {
    assert_eq!(parse_ok(MINIMAL).process.state_dir, Path::new("/var/lib/kedge"));
    let c = parse_ok(&format!("[proxy]\nstate_dir = \"/srv/kedge/state\"\n{MINIMAL}"));
    assert_eq!(c.process.state_dir, Path::new("/srv/kedge/state"));
    for bad in ["state", "", "./state"] {
        let got = parse_err(&format!("[proxy]\nstate_dir = \"{bad}\"\n{MINIMAL}"));
        assert!(
            got.starts_with("kedge.toml:2:13: proxy.state_dir:") && got.contains("not an absolute directory path"),
            "for {bad:?}: {got}"
        );
    }
}

#[test]
fn admin() {
    let default = parse_ok(MINIMAL).process.admin;
    assert_eq!(default, Some("127.0.0.1:9180".parse().expect("addr")));
    let c = parse_ok(&format!("{MINIMAL}[admin]\naddress = \"[::1]:0\"\n"));
    assert_eq!(c.process.admin, Some("[::1]:0".parse().expect("addr")));
    let c = parse_ok(&format!("{MINIMAL}[admin]\nenabled = false\n"));
    assert_eq!(c.process.admin, None);
    // Port 0 is the kernel's choice, never a listener's.
    parse_ok("[[listener]]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n");

    let cases: &[(&str, &str)] = &[
        (
            "[admin]\naddress = \"localhost:9180\"\n",
            "kedge.toml:4:11: admin.address:",
        ),
        ("[admin]\naddress = \"\"\n", "kedge.toml:4:11: admin.address:"),
        ("[admin]\naddress = \"127.0.0.1\"\n", "kedge.toml:4:11: admin.address:"),
        ("[admin]\nadress = \"127.0.0.1:1\"\n", "kedge.toml:4:1:"),
        ("[admin]\nenabled = \"no\"\n", "kedge.toml:4:11:"),
        (
            "[admin]\naddress = \"127.0.0.1:8080\"\n",
            "kedge.toml:4:11: admin.address: 127.0.0.1:8080 is also a [[listener]] address",
        ),
    ];
    for (tail, want) in cases {
        let got = parse_err(&format!("{MINIMAL}{tail}"));
        assert!(got.contains(want), "for {tail:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn kubeconfigs_are_parsed_and_the_context_must_exist() {
    let dir = std::env::temp_dir().join(format!("kedge-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("good.kubeconfig");
    std::fs::write(
        &good,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: prod\n  context:\n    cluster: c\n    user: u\n\
         current-context: prod\n",
    )
    .expect("write");
    let bad = dir.join("bad.kubeconfig");
    std::fs::write(&bad, "clusters: [this is: not: a kubeconfig\n").expect("write");
    let cluster = |path: &std::path::Path, context: &str| {
        format!(
            "{MINIMAL}[[cluster]]\nname = \"a\"\nkubeconfig = \"{}\"\n{context}",
            path.display()
        )
    };
    assert_eq!(
        parse_ok(&cluster(&good, "context = \"prod\"\n")).clusters[0]
            .context
            .as_deref(),
        Some("prod")
    );
    let err = parse_err(&cluster(&good, "context = \"staging\"\n"));
    assert!(
        err.contains("cluster[0].context:") && err.contains("has no context \"staging\""),
        "{err}"
    );
    let err = parse_err(&cluster(&bad, ""));
    assert!(
        err.starts_with("kedge.toml:5:14: cluster[0].kubeconfig: cannot use"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grpc_routes() {
    let route = |protocol: &str| {
        parse_ok(&format!(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\nhost = \"api.example\"\nupstreams = [\"127.0.0.1:2\"]\n\
             upstream_protocol = \"{protocol}\"\n"
        ))
        .routes
        .remove(0)
    };
    let plain = route("grpc");
    assert!(plain.upstream_h2 && plain.upstream_tls.is_none());
    let tls = route("grpcs");
    assert!(tls.upstream_h2);
    let settings = tls.upstream_tls.expect("TLS");
    assert!(settings.h2, "ALPN h2");
    assert_eq!(settings.name, "api.example");
    let https = route("https");
    assert!(!https.upstream_h2 && !https.upstream_tls.expect("TLS").h2);
    assert!(!route("http").upstream_h2);
}

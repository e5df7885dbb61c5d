//! The admin listener: `/healthz`, `/readyz` through a cluster's states (live, disconnected while
//! the API server is away, not synced, persisted), what it refuses, and its configuration. The
//! admin server runs on the control thread, not on the workers: one driver (the default) is enough.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::support::{Client, Driver, FakeApi, Kedge, TempDir, Upstream, readyz, wait_readyz, wait_until};

/// Long enough for kube's backoff (0.8 s doubling, with jitter) to come round after an outage,
/// on a loaded machine.
const RECOVERY: Duration = Duration::from_secs(40);

/// Sends `raw` to the admin server at `addr` and reads the answer (to a GET, unless `head`).
fn ask(addr: SocketAddr, raw: &str, head: bool) -> (Client, u16, String, Vec<(String, String)>) {
    let mut c = Client::connect(addr);
    c.send(raw.as_bytes());
    let resp = if head {
        c.read_head_response()
    } else {
        c.read_response()
    };
    let text = resp.text();
    (c, resp.status, text, resp.headers)
}

#[test]
fn healthz_answers_and_the_rest_is_refused() {
    let kedge = Kedge::start(Driver::default(), "");
    let admin = kedge.admin_addr();
    assert_ne!(admin, kedge.addr());

    let (mut c, status, body, headers) = ask(admin, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("connection").as_deref(), Some("close"));
    assert_eq!(header("content-type").as_deref(), Some("text/plain; charset=utf-8"));
    assert!(c.is_closed(), "the connection stays open after the answer");

    // HEAD: the same head, no body. A query string is ignored. HTTP/1.0 is answered too.
    let (_, status, body, headers) = ask(admin, "HEAD /healthz HTTP/1.1\r\n\r\n", true);
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("content-length") && v == "3")
    );
    assert_eq!(ask(admin, "GET /healthz?probe=1 HTTP/1.0\r\n\r\n", false).1, 200);

    // Unknown paths, other methods.
    let (_, status, body, _) = ask(admin, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/healthz, /readyz, /metrics and /backends"), "{body}");
    // The counters, in the Prometheus text format.
    let (_, status, body, _) = ask(admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE kedge_tls_handshakes counter\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("kedge_tls_handshakes_total{result=\"full\"} 0\n"),
        "{body}"
    );
    let (_, status, _, _) = ask(admin, "GET /healthz/ HTTP/1.1\r\nHost: x\r\n\r\n", false);
    assert_eq!(status, 404);
    let (mut c, status, _, headers) = ask(
        admin,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        false,
    );
    assert_eq!(status, 405);
    assert!(
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("allow") && v == "GET, HEAD")
    );
    assert!(c.is_closed());
    assert_eq!(ask(admin, "DELETE /readyz HTTP/1.1\r\nHost: x\r\n\r\n", false).1, 405);

    // A head that is not HTTP: 400, then the close.
    let (mut c, status, _, _) = ask(admin, "NOT HTTP AT ALL\r\n\r\n", false);
    assert_eq!(status, 400);
    assert!(c.is_closed(), "the connection stays open after a 400");
    // A head over 8 KiB: 431.
    let big = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let (mut c, status, _, _) = ask(admin, &big, false);
    assert_eq!(status, 431);
    assert!(c.is_closed());

    // The admin paths are not on the proxy's listener (no route there: kedge's own 404).
    let resp = Client::connect(kedge.addr()).get("x", "/healthz");
    assert_eq!(resp.status, 404);
}

#[test]
fn an_idle_admin_connection_is_closed() {
    let kedge = Kedge::start(Driver::default(), "");
    let mut c = Client::connect(kedge.admin_addr());
    c.send(b"GET /healthz HTTP/1.1\r\n");
    // The rest of the head never comes: 408 after 5 s, then the close.
    let resp = c.read_response();
    assert_eq!(resp.status, 408);
    assert!(c.is_closed());
}

#[test]
fn readyz_without_clusters_is_ready() {
    let kedge = Kedge::start(Driver::default(), "");
    let body = wait_readyz(&kedge, Duration::from_secs(5), 200, "ready");
    assert_eq!(body, "ready\n");
    let (_, status, body, _) = ask(kedge.admin_addr(), "HEAD /readyz HTTP/1.1\r\n\r\n", true);
    assert_eq!((status, body.as_str()), (200, ""));
}

#[test]
fn readyz_follows_the_api_server_through_an_outage() {
    let api = FakeApi::start();
    let dir = TempDir::new("admin");
    let kedge = Kedge::follow(&api, &dir, "");
    let body = wait_readyz(&kedge, Duration::from_secs(5), 200, "test: live");
    assert_eq!(body, "ready\ntest: live\n");

    // Away after the sync: still ready (the last known table is served), and it says so.
    api.pause();
    let body = wait_readyz(
        &kedge,
        Duration::from_secs(20),
        200,
        "test: disconnected (serving the last known state)",
    );
    assert!(body.starts_with("ready\n"), "{body}");
    kedge.wait_log("API server unreachable or failing", Duration::from_secs(5));

    api.resume();
    wait_readyz(&kedge, RECOVERY, 200, "test: live");
    kedge.wait_log("API server back; every watch is running", Duration::from_secs(5));
}

#[test]
fn readyz_is_503_until_a_cluster_first_syncs() {
    let api = FakeApi::start();
    api.pause();
    let dir = TempDir::new("admin");
    // Nothing persisted: after its sync timeout the cluster is served without its objects.
    let kedge = Kedge::follow(&api, &dir, "sync_timeout = \"1s\"");
    kedge.wait_log("no state persisted for it", Duration::from_secs(5));
    let (status, body) = readyz(&kedge);
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert!(body.lines().any(|l| l == "test: not synced"), "{body}");
    // Alive all the same.
    assert_eq!(ask(kedge.admin_addr(), "GET /healthz HTTP/1.1\r\n\r\n", false).1, 200);

    api.resume();
    let body = wait_readyz(&kedge, RECOVERY, 200, "test: live");
    assert!(body.starts_with("ready\n"), "{body}");
}

#[test]
fn readyz_is_200_while_serving_the_persisted_state() {
    let api = FakeApi::start();
    let dir = TempDir::new("admin");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("mkdir");
    // A state file as kedge writes it (see outage.rs), for cluster "test".
    let saved = json!({"format": "kedge.dev/cluster-state/v1", "cluster": "test", "saved_at": "2025-01-01T00:00:00Z",
                       "ingresses": [], "ingressclasses": [], "services": [], "endpointslices": [], "nodes": []});
    std::fs::write(state_dir.join("cluster-test.json"), saved.to_string()).expect("write");

    api.pause();
    let kedge = Kedge::setup(Driver::default())
        .state_dir(&state_dir)
        .follow(&api, &dir, "sync_timeout = \"1s\"");
    kedge.wait_log(
        "serving the state persisted at 2025-01-01T00:00:00Z",
        Duration::from_secs(5),
    );
    wait_readyz(
        &kedge,
        Duration::from_secs(5),
        200,
        "test: persisted (serving the state saved at 2025-01-01T00:00:00Z)",
    );

    api.resume();
    wait_readyz(&kedge, RECOVERY, 200, "test: live");
}

#[test]
fn readyz_is_503_for_a_cluster_that_cannot_be_connected() {
    let dir = TempDir::new("admin");
    // A kubeconfig that parses (so `kedge check` passes it) but whose context names a cluster it
    // does not define: no client can be made from it.
    let kubeconfig = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters: []\nusers: []\ncontexts:\n- name: ghost\n  context:\n    \
         cluster: nowhere\n    user: nobody\ncurrent-context: ghost\n",
    );
    let kedge = Kedge::start(
        Driver::default(),
        &format!(
            "[[cluster]]\nname = \"broken\"\nkubeconfig = \"{}\"\n",
            kubeconfig.display()
        ),
    );
    kedge.wait_log("this cluster is not served", Duration::from_secs(5));
    let body = wait_readyz(&kedge, Duration::from_secs(5), 503, "broken: not connected");
    assert!(body.starts_with("not ready\n"), "{body}");
}

#[test]
fn admin_can_be_turned_off() {
    let kedge = Kedge::start(Driver::default(), "[admin]\nenabled = false\n");
    // The line would come before `listening on`, which the start waited for.
    assert!(
        !kedge.logs().iter().any(|l| l.contains("admin listening on")),
        "{:#?}",
        kedge.logs()
    );
}

/// Runs `kedge SUBCOMMAND --config FILE` on `text`: exit code, stderr, the file's path.
fn run_on(subcommand: &str, text: &str) -> (Option<i32>, String, String) {
    let dir = TempDir::new("admin-cli");
    let path = dir.write("kedge.toml", text);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kedge"))
        .arg(subcommand)
        .arg("--config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kedge");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut code = None;
    wait_until(Duration::from_secs(10), "kedge to exit", || {
        code = child.try_wait().expect("try_wait").map(|s| s.code());
        code.is_some()
    });
    let stderr = reader.join().expect("stderr reader");
    (code.flatten(), stderr, path.display().to_string())
}

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\n";

#[test]
fn a_bad_admin_address_is_a_config_error() {
    let (code, stderr, path) = run_on("check", &format!("{LISTENER}\n[admin]\naddress = \"localhost:9180\"\n"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{path}:5:11: admin.address:")), "{stderr}");
    let (code, stderr, path) = run_on("check", &format!("{LISTENER}\n[admin]\nport = 9180\n"));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{path}:5:1:")), "{stderr}");
}

#[test]
fn a_busy_admin_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (code, stderr, _) = run_on(
        "run",
        &format!("[proxy]\nworkers = 1\n\n{LISTENER}\n[admin]\naddress = \"{addr}\"\n"),
    );
    assert!(code.is_some_and(|c| c != 0 && c != 64), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr} ([admin] address)")),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// Parses the Prometheus/OpenMetrics text format: `name{labels} value` samples by their full
/// series text (`name{a="1",b="2"}`), checking every line is a comment or a sample.
fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(
            series
                .bytes()
                .take_while(|&b| b != b'{')
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name: {line}"
        );
        out.insert(series.to_owned(), value);
    }
    out
}

#[test]
fn metrics_count_known_traffic_by_backend_status_and_latency() {
    let up = Upstream::start("app", crate::support::Handler::Echo);
    let kedge = Kedge::setup(Driver::default()).workers(2).start(&format!(
        "[[route]]\nname = \"app\"\nhost = \"app.example.com\"\nupstreams = [\"{}\"]\n\
         [[route]]\nname = \"dead\"\nhost = \"dead.example.com\"\nupstreams = [\"{}\"]\n",
        up.addr(),
        crate::support::refused_addr()
    ));
    for _ in 0..7 {
        assert_eq!(Client::connect(kedge.addr()).get("app.example.com", "/").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            Client::connect(kedge.addr()).get("nowhere.example.com", "/").status,
            404
        );
    }
    assert_eq!(Client::connect(kedge.addr()).get("dead.example.com", "/").status, 502);
    // One connection kept open.
    let mut open = Client::connect(kedge.addr());
    assert_eq!(open.get("app.example.com", "/").status, 200);

    // A request is counted in its log phase, just after its answer went out: the last one may
    // reach the client before it is counted, so wait for the counts to settle at the totals.
    let want = r#"kedge_requests_total{backend="app",host="app.example.com",class="2xx"}"#;
    let mut resp = None;
    crate::support::wait_until(Duration::from_secs(5), "every request counted", || {
        let r = Client::connect(kedge.admin_addr()).get("admin", "/metrics");
        let done = parse_metrics(&r.text()).get(want) == Some(&8.0);
        resp = Some(r);
        done
    });
    let resp = resp.expect("a /metrics answer");
    assert!(
        resp.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text"))
    );
    let m = parse_metrics(&resp.text());
    let get = |s: &str| *m.get(s).unwrap_or_else(|| panic!("no {s} in {m:#?}"));
    assert_eq!(
        get(r#"kedge_requests_total{backend="app",host="app.example.com",class="2xx"}"#),
        8.0
    );
    assert_eq!(
        get(r#"kedge_requests_total{backend="(no route)",host="-",class="4xx"}"#),
        3.0
    );
    assert_eq!(
        get(r#"kedge_requests_total{backend="dead",host="dead.example.com",class="5xx"}"#),
        1.0
    );
    assert_eq!(
        get(r#"kedge_request_duration_seconds_count{backend="app",host="app.example.com"}"#),
        8.0
    );
    assert_eq!(
        get(r#"kedge_request_duration_seconds_bucket{le="+Inf",backend="app",host="app.example.com"}"#),
        8.0
    );
    assert!(get(r#"kedge_request_duration_seconds_sum{backend="app",host="app.example.com"}"#) > 0.0);
    assert_eq!(
        get(r#"kedge_upstream_connect_errors_total{backend="dead",host="dead.example.com"}"#),
        1.0
    );
    // Summed over both workers: the open connection is on one of them.
    let open_conns = get(r#"kedge_connections{worker="0"}"#) + get(r#"kedge_connections{worker="1"}"#);
    assert_eq!(open_conns, 1.0);
    assert!(get("kedge_route_table_version") >= 1.0);
    assert!(get("kedge_route_table_last_change_timestamp_seconds") > 1.7e9);
    drop(open);
}

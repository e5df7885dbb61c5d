//! The command line: `kedge check` says `file:line:column` and exits 64 on a bad file, 0 on a
//! good one (with warnings); `kedge run` refuses a bad file the same way, and a busy port
//! otherwise; `kedge version`.

use std::process::{Command, Output};

use crate::support::TempDir;

fn kedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kedge"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run kedge")
}

/// Writes `text` as a config file and runs `kedge SUBCOMMAND --config FILE` on it.
fn on_file(subcommand: &str, text: &str) -> (Output, String, TempDir) {
    let dir = TempDir::new("cli");
    let path = dir.write("kedge.toml", text);
    let path = path.to_str().expect("utf-8 temp path").to_owned();
    (kedge(&[subcommand, "--config", &path]), path, dir)
}

/// `kedge check` on `text` must exit 64 and point at `line:column`.
fn check_bad(text: &str, line_col: &str) {
    let (out, path, _dir) = on_file("check", text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(64),
        "exit status for {text:?}; stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{path}:{line_col}")),
        "expected {path}:{line_col} in: {stderr}"
    );
}

const LISTENER: &str = "[[listener]]\naddress = \"127.0.0.1:0\"\n";

#[test]
fn check_points_at_the_mistake() {
    // A value that does not parse: the column of the value.
    check_bad(&format!("{LISTENER}\n[client]\nheader_timeout = \"soon\"\n"), "5:18");
    // An unknown key: the key.
    check_bad(&format!("{LISTENER}\n[upstream]\nread_timout = \"1s\"\n"), "5:1");
    // A TOML syntax error.
    check_bad(&format!("{LISTENER}\n[[route]\n"), "4:");
    // An upstream that is not an IP:port: the value in the list.
    check_bad(&format!("{LISTENER}\n[[route]]\nupstreams = [\"localhost\"]\n"), "5:14");
}

#[test]
fn check_accepts_a_good_file() {
    let (out, _, _dir) = on_file(
        "check",
        &format!("{LISTENER}\n[[route]]\nupstreams = [\"127.0.0.1:9\"]\n"),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_warns_about_a_shadowed_route() {
    let route = "[[route]]\nhost = \"a.test\"\npath = \"/x\"\nupstreams = [\"127.0.0.1:9\"]\n";
    let (out, _, _dir) = on_file("check", &format!("{LISTENER}\n{route}\n{route}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning:") && stderr.contains("a.test"),
        "no warning for a duplicate route: {stderr}"
    );
}

#[test]
fn run_fails_clearly_when_the_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (out, _, _dir) = on_file(
        "run",
        &format!("[proxy]\nworkers = 1\n\n[[listener]]\naddress = \"{addr}\"\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kedge started on a port another socket holds: {stderr}"
    );
    assert_ne!(out.status.code(), Some(64), "a busy port is not a bad config: {stderr}");
    assert!(
        stderr.contains(&addr.to_string()),
        "the error does not name the address: {stderr}"
    );
}

#[test]
fn run_refuses_a_bad_file() {
    let (out, path, _dir) = on_file("run", &format!("{LISTENER}\n[proxy]\nworkers = \"two\"\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("{path}:")), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

#[test]
fn version_names_itself() {
    let out = kedge(&["version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("kedge {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    // The commit the build script recorded: the same for this test crate and the binary (one
    // build), and, in a git checkout, a commit of this repository. Not compared with HEAD, which
    // may have moved since the build.
    let commit = env!("KEDGE_COMMIT");
    assert!(stdout.contains(&format!("(commit {commit}, driver: ")), "{stdout}");
    let in_checkout = std::process::Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_checkout {
        let known = std::process::Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(known, "commit {commit} is not one of this checkout's");
    }
}

#[test]
fn backends_shows_endpoints_rules_and_warnings_of_the_running_kedge() {
    use crate::support::objects::{ingress, ingress_class, service, slice};
    use crate::support::tls::TestCa;
    use crate::support::{FakeApi, Handler, Kedge, Upstream};
    let up = Upstream::start("web", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", up.addr().port(), &["127.0.0.1"]));
    let mut ing = ingress("web", "kedge", "web.example.com", "/", "web");
    ing["spec"]["tls"] = serde_json::json!([{"hosts": ["web.example.com"], "secretName": "web-tls"}]);
    ing["metadata"]["annotations"] = serde_json::json!({"nginx.ingress.kubernetes.io/affinity": "cookie"});
    api.apply("ingresses", ing);
    // A certificate for another name: the host falls back to the default certificate.
    api.apply(
        "secrets",
        TestCa::new().leaf(&["other.example.com"]).secret("default", "web-tls"),
    );
    let dir = TempDir::new("backends");
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let running = Kedge::setup(crate::support::Driver::default()).tls().start(&format!(
        "[admin]\naddress = \"127.0.0.1:{admin_port}\"\n[[cluster]]\nname = \"test\"\nkubeconfig = \"{}\"\n",
        kubeconfig.display()
    ));
    running.wait_log("does not name web.example.com", std::time::Duration::from_secs(5));
    let config = running.config_path().to_str().unwrap().to_owned();
    let out = kedge(&["backends", "--config", &config]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("test/default/web:80\n"), "{text}");
    assert!(
        text.contains(&format!("  endpoints: 127.0.0.1:{}\n", up.addr().port())),
        "{text}"
    );
    assert!(
        text.contains("  rule: web.example.com/ (Prefix) [round_robin, affinity cookie INGRESSCOOKIE]"),
        "{text}"
    );
    assert!(
        text.contains("warnings:\n") && text.contains("the certificate does not name web.example.com"),
        "{text}"
    );
    // JSON, and one backend.
    let out = kedge(&[
        "backends",
        "--config",
        &config,
        "--json",
        "--backend",
        "test/default/web:80",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["backends"].as_array().unwrap().len(), 1);
    let out = kedge(&["backends", "--config", &config, "--backend", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no backend named \"nope\""));
    // The cluster's state is on /metrics too.
    let metrics = crate::support::Client::connect(running.admin_addr())
        .get("admin", "/metrics")
        .text();
    assert!(
        metrics.contains("\nkedge_cluster_state{cluster=\"test\",state=\"live\"} 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kedge_cluster_last_live_timestamp_seconds{cluster=\"test\"} 0\n"),
        "{metrics}"
    );
    // Nobody listening: a clear error.
    let copy = dir.write("kedge.toml", &std::fs::read_to_string(&config).unwrap());
    drop(running);
    let out = kedge(&["backends", "--config", copy.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach kedge's admin listener"),
        "{:?}",
        out
    );
}

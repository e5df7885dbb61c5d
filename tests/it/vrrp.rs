//! Two edge hosts behind one virtual IP, with a real VRRP daemon: keepalived (Debian's package)
//! in network namespaces this test creates, joined by veth pairs to a bridge in a third
//! namespace that plays the clients' network. Each edge runs kedge and an upstream; keepalived
//! tracks kedge through its admin `/readyz` (the example in `config/examples/keepalived.conf`).
//! Kill the master's kedge and the address moves to the other edge; the only requests that fail
//! are those that reached the dead edge before the move.
//!
//! It needs root (network namespaces), `ip`, `keepalived`, `curl` and `python3` (the upstreams:
//! Python's http.server, one more HTTP stack); `scripts/test.sh` installs what is missing. Every
//! namespace and process it starts is removed when it ends, passed or not. Ports inside the
//! namespaces are fixed: nothing else lives there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{TempDir, wait_until};

/// The virtual IP the edges share (documentation range; it exists only inside the namespaces).
const VIP: &str = "192.0.2.100";

/// Namespaces (clients, edge a, edge b) and the processes started in them; all removed on drop.
struct Hosts {
    prefix: String,
    children: Vec<(String, Child)>,
}

impl Hosts {
    /// `{prefix}c` holds bridge `br0` (192.0.2.1/24); `{prefix}a` and `{prefix}b` each have an
    /// `eth0` on it (192.0.2.2 and .3).
    fn new() -> Hosts {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("kv{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let hosts = Hosts {
            prefix,
            children: Vec::new(),
        };
        let (c, a, b) = (hosts.ns("c"), hosts.ns("a"), hosts.ns("b"));
        for ns in [&c, &a, &b] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &c, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &c, "link", "set", "br0", "up"]);
        ip(&["-n", &c, "addr", "add", "192.0.2.1/24", "dev", "br0"]);
        for (ns, addr) in [(&a, "192.0.2.2/24"), (&b, "192.0.2.3/24")] {
            let (inner, outer) = (format!("{ns}i"), format!("{ns}o"));
            ip(&["link", "add", &inner, "type", "veth", "peer", "name", &outer]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["link", "set", &outer, "netns", &c]);
            ip(&["-n", &c, "link", "set", &outer, "master", "br0", "up"]);
            ip(&["-n", ns, "link", "set", &inner, "name", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        }
        hosts
    }

    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// Starts `cmd` inside namespace `which`, output to `log`.
    fn spawn(&mut self, which: &str, name: &str, cmd: &[&str], cwd: &Path, log: &Path) {
        let out = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(which)])
            .args(cmd)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} in {which}: {e}"));
        self.children.push((format!("{which}/{name}"), child));
    }

    /// Kills process `which/name` at once (SIGKILL: no drain, no goodbye).
    fn kill(&mut self, which: &str, name: &str) {
        let key = format!("{which}/{name}");
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("no process {key}"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// GET `path` on the virtual IP from the clients' namespace: the body, or `None` when the
    /// request failed (refused, reset, timed out, not a 200).
    fn get_vip(&self, path: &str) -> Option<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("c"), "curl", "-sf", "--max-time", "1"])
            .arg(format!("http://{VIP}:8080{path}"))
            .output()
            .expect("run curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for which in ["a", "b", "c"] {
            let ns = self.ns(which);
            // Anything still running in the namespace (keepalived's children) goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// Runs `ip args`, panicking with its error output when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root and network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// keepalived's configuration for one edge: the shipped example with this edge's priority and
/// the namespace's interface.
fn keepalived_conf(priority: u16) -> String {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/keepalived.conf"))
            .expect("config/examples/keepalived.conf");
    example
        .replace("priority 150", &format!("priority {priority}"))
        .replace("203.0.113.10/24", &format!("{VIP}/24"))
}

/// Fails at once, naming what is missing, when a command the test runs inside the namespaces is
/// not installed: started through `ip netns exec`, a missing one would only show as an edge that
/// never answers.
fn require_commands() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for cmd in ["ip", "keepalived", "curl", "python3"] {
        assert!(
            std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()),
            "the VRRP test needs `{cmd}` on PATH: run the suite with scripts/test.sh, which installs it"
        );
    }
}

#[test]
fn the_virtual_ip_moves_when_the_masters_kedge_dies() {
    require_commands();
    let dir = TempDir::new("vrrp");
    let mut hosts = Hosts::new();
    for (which, priority) in [("a", 150), ("b", 100)] {
        let home = dir.path().join(which);
        let www = home.join("www");
        std::fs::create_dir_all(&www).expect("dir");
        std::fs::write(www.join("who"), which).expect("file");
        std::fs::write(
            home.join("kedge.toml"),
            format!(
                "[proxy]\nworkers = 1\nstate_dir = \"{}\"\n\n[[listener]]\naddress = \"0.0.0.0:8080\"\n\n\
                 [[route]]\npath = \"/\"\nupstreams = [\"127.0.0.1:9000\"]\n",
                home.join("state").display()
            ),
        )
        .expect("kedge.toml");
        std::fs::write(home.join("keepalived.conf"), keepalived_conf(priority)).expect("keepalived.conf");
        let path = |f: &str| home.join(f).display().to_string();
        hosts.spawn(
            which,
            "upstream",
            &["python3", "-m", "http.server", "9000", "--bind", "127.0.0.1"],
            &www,
            &home.join("upstream.log"),
        );
        hosts.spawn(
            which,
            "kedge",
            &[env!("CARGO_BIN_EXE_kedge"), "run", "--config", &path("kedge.toml")],
            &home,
            &home.join("kedge.log"),
        );
        let (k, v, c) = (path("keepalived.pid"), path("vrrp.pid"), path("checkers.pid"));
        let conf = path("keepalived.conf");
        hosts.spawn(
            which,
            "keepalived",
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--vrrp",
                "-f",
                &conf,
                "-p",
                &k,
                "-r",
                &v,
                "-c",
                &c,
            ],
            &home,
            &home.join("keepalived.log"),
        );
    }

    // Edge a (the higher priority, its kedge ready) holds the address.
    wait_until(Duration::from_secs(30), "the virtual IP to answer from edge a", || {
        hosts.get_vip("/who").as_deref() == Some("a")
    });

    // Kill a's kedge. keepalived sees /readyz fail, gives the address up, and b takes it.
    hosts.kill("a", "kedge");
    let killed = Instant::now();
    let mut during = Vec::new();
    let moved = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the virtual IP did not move to edge b: {during:?}\n{}",
            std::fs::read_to_string(dir.path().join("b/keepalived.log")).unwrap_or_default()
        );
        match hosts.get_vip("/who") {
            Some(who) if who == "b" => break killed.elapsed(),
            other => during.push(other),
        }
        std::thread::sleep(Duration::from_millis(100)); // pacing the probe, not waiting for it
    };
    // While the address was still on a, requests failed (a's kedge is gone): none was answered
    // wrongly, and none was answered by a.
    assert!(
        during.iter().all(Option::is_none),
        "answers during the move: {during:?}"
    );
    // From the move on, every request is served by b.
    for i in 0..20 {
        assert_eq!(
            hosts.get_vip("/who").as_deref(),
            Some("b"),
            "request {i} after the move ({moved:?})"
        );
    }
}

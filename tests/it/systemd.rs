//! systemd's notification protocol, on a test NOTIFY_SOCKET: READY=1 once serving,
//! RELOADING=1 then READY=1 around a SIGHUP, WATCHDOG=1 pings, STOPPING=1 at SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::{Handler, Kedge, Signal, TempDir, Upstream, route_all, wait_until};

/// The next notification that is not a watchdog ping (those are counted into `pings`).
fn next(sock: &UnixDatagram, pings: &mut usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no notification within 10 s");
        let n = sock.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg == "WATCHDOG=1" {
            *pings += 1;
            continue;
        }
        return msg;
    }
}

#[test]
fn notifies_ready_reloading_watchdog_and_stopping_in_order() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let up = Upstream::start("app", Handler::Echo);
    let mut kedge = Kedge::setup(crate::support::Driver::default())
        .workers(2)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "2000000")
        .start(&route_all(&[up.addr()]));
    let mut pings = 0;
    let ready = next(&sock, &mut pings);
    assert!(ready.starts_with("READY=1\nSTATUS=serving (2 workers"), "{ready:?}");
    // Pings while every thread beats (every second here: half of 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 64];
    while pings < 2 {
        assert!(Instant::now() < deadline, "no watchdog pings");
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        pings += 1;
    }
    kedge.signal(Signal::Hup);
    let reloading = next(&sock, &mut pings);
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(next(&sock, &mut pings), "READY=1");
    kedge.wait_log("configuration reloaded", Duration::from_secs(5));
    kedge.signal(Signal::Term);
    assert_eq!(next(&sock, &mut pings), "STOPPING=1");
    assert!(kedge.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn the_unit_file_verifies() {
    // systemd-analyze checks the unit against this systemd: keys, values, the ExecStart binary
    // (pointed at the one under test), the system-call filter names.
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/kedge.service")).unwrap();
    let path = dir.write(
        "kedge.service",
        &unit.replace("/usr/bin/kedge", env!("CARGO_BIN_EXE_kedge")),
    );
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (scripts/test.sh installs it: apt-get install systemd)");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && errors.trim().is_empty(), "{errors}");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=",
        "StateDirectoryMode=0700",
        "io_uring_setup",
    ] {
        assert!(unit.contains(key), "{key}");
    }
}

#[test]
fn ready_waits_for_the_first_cluster_sync() {
    use crate::support::FakeApi;
    use crate::support::objects::{ingress, ingress_class, service, slice};
    let dir = TempDir::new("notify-sync");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let up = Upstream::start("web", Handler::Echo);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("web"));
    api.apply("endpointslices", slice("web", up.addr().port(), &["127.0.0.1"]));
    api.apply("ingresses", ingress("web", "kedge", "web.example.com", "/", "web"));
    // The API server is away when kedge starts: it cannot sync, nor say READY, until it is back.
    api.pause();
    let kedge = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Once kedge has come to the API server and been turned away, it is in its first
            // sync (30 s allowed): it must not have said READY yet.
            wait_until(Duration::from_secs(5), "kedge to try the API server", || {
                api.turned_away() >= 1
            });
            sock.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            let early = sock
                .recv(&mut buf)
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
            sock.set_nonblocking(false).unwrap();
            assert!(
                early
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "notified before the first sync: {early:?}"
            );
            api.resume();
        });
        Kedge::setup(crate::support::Driver::default())
            .env("NOTIFY_SOCKET", path.to_str().unwrap())
            .follow(&api, &dir, "sync_timeout = \"30s\"\n")
    });
    // READY once the API server is back, after the first sync (not its timeout).
    let mut pings = 0;
    let ready = next(&sock, &mut pings);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    // (Said only when a cluster syncs within its timeout; a timeout is logged otherwise.)
    kedge.wait_log("cluster synced", Duration::from_secs(1));
    // And it serves at once.
    let resp = crate::support::Client::connect(kedge.addr()).get("web.example.com", "/");
    assert_eq!(resp.status, 200);
}

#[test]
fn a_stuck_worker_stops_the_watchdog_pings_until_it_recovers() {
    let dir = TempDir::new("notify-stuck");
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let up = Upstream::start("app", Handler::Echo);
    // Worker 1's loop blocks for 6 s, 3 s after start (a fault injected in debug builds).
    let kedge = Kedge::setup(crate::support::Driver::default())
        .workers(2)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "2000000")
        .env("KEDGE_TEST_STALL_WORKER", "1")
        .start(&route_all(&[up.addr()]));
    let mut pings = 0;
    assert!(next(&sock, &mut pings).starts_with("READY=1"));
    // The watchdog says which thread stopped beating, and holds its pings meanwhile.
    kedge.wait_log("a thread stopped beating", Duration::from_secs(15));
    let line = kedge.wait_log("no watchdog ping", Duration::from_secs(1));
    assert!(line.contains("stuck=[2]"), "worker 1 is heart 2: {line}");
    // Drop the pings sent before the stall (none come during it)...
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 64];
    while sock.recv(&mut buf).is_ok() {}
    // ...then, once the worker runs again, so do the pings.
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("pings again after the stall");
    assert_eq!(&buf[..n], b"WATCHDOG=1");
}

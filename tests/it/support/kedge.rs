//! A kedge child process: its own config file in a temp dir, its own port (the kernel's choice),
//! and its log captured line by line for the test to wait on and inspect.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Driver, TempDir};

/// How long kedge may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running kedge. Dropping it kills the process (and prints its log if the test failed).
pub struct Kedge {
    child: Child,
    dir: TempDir,
    config: PathBuf,
    /// The `[proxy]` section this instance was started with; rewrites keep it.
    proxy: String,
    /// Whether it has a TLS listener too; rewrites keep it.
    tls: bool,
    /// Keys added to every `[[listener]]`; rewrites keep them.
    listener: String,
    addr: SocketAddr,
    logs: Arc<Logs>,
}

/// What to start: driver, workers and extra `[proxy]` keys.
pub struct Setup {
    driver: Driver,
    workers: usize,
    proxy_extra: String,
    tls: bool,
    listener: String,
    env: Vec<(String, String)>,
    /// Tables added before the test's fragment (see [`Setup::tables`]).
    tables: String,
}

/// Signals a test sends to kedge.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Hup,
    Term,
}

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Kedge {
    /// Starts one worker with `driver`, serving `fragment` ([[route]]s and settings tables).
    pub fn start(driver: Driver, fragment: &str) -> Kedge {
        Kedge::setup(driver).start(fragment)
    }

    /// Starts one worker on the default driver following `api` as cluster `test` (see
    /// [`Setup::follow`]): how a control-plane test starts kedge.
    pub fn follow(api: &super::FakeApi, dir: &TempDir, cluster_extra: &str) -> Kedge {
        Kedge::setup(Driver::default()).follow(api, dir, cluster_extra)
    }

    /// A start with more choices (workers, `[proxy]` keys).
    pub fn setup(driver: Driver) -> Setup {
        Setup {
            driver,
            workers: 1,
            proxy_extra: String::new(),
            tls: false,
            listener: String::new(),
            env: Vec::new(),
            tables: String::new(),
        }
    }

    /// The address kedge listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of kedge's TLS listener (started with [`Setup::tls`]).
    pub fn tls_addr(&self) -> SocketAddr {
        assert!(self.tls, "started without a TLS listener");
        let line = self.wait_log(TLS_LISTENING_END, Duration::from_secs(5));
        addr_after(&line, "listening on ").unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The address of kedge's admin server (`[admin]`, port 0 unless the test's fragment has an
    /// `[admin]` table), from its `admin listening on` line.
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_log(ADMIN_LISTENING, Duration::from_secs(5));
        addr_after(&line, ADMIN_LISTENING).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// The config file this instance runs with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A snapshot of every log line so far (stderr and stdout, in arrival order per stream).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a log line contains `substr` and returns it; panics after `timeout`.
    pub fn wait_log(&self, substr: &str, timeout: Duration) -> String {
        self.wait_logs(substr, 1, timeout).pop().expect("one line")
    }

    /// Waits until `count` log lines contain `substr` and returns them; panics after `timeout`.
    pub fn wait_logs(&self, substr: &str, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.logs.lines.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<String> = lines.iter().filter(|l| l.contains(substr)).cloned().collect();
            if found.len() >= count {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A panic while holding the lock would poison it for `Drop`, which prints the log.
                let log = lines.join("\n");
                drop(lines);
                panic!("timed out after {timeout:?} waiting for {count} log line(s) with {substr:?}; log:\n{log}");
            }
            lines = self
                .logs
                .grew
                .wait_timeout(lines, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn signal(&self, sig: Signal) {
        let name = match sig {
            Signal::Hup => "-HUP",
            Signal::Term => "-TERM",
        };
        let status = Command::new("kill")
            .arg(name)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {name} {} failed", self.pid());
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit_polling(timeout, Duration::from_millis(10))
    }

    /// [`Kedge::wait_exit`], noticing the exit within 100 µs (as a shell's `wait` or systemd
    /// would), for what must hold the moment the process has gone.
    pub fn wait_exit_closely(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit_polling(timeout, Duration::from_micros(100))
    }

    fn wait_exit_polling(&mut self, timeout: Duration, poll: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "kedge did not exit within {timeout:?}; log:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(poll);
        }
    }

    /// Replaces the config file with the same `[proxy]` and listener and a new `fragment`
    /// (atomically; send [`Signal::Hup`] to apply it).
    pub fn rewrite_config(&self, fragment: &str) {
        self.dir
            .write("kedge.toml", &compose(&self.proxy, fragment, self.tls, &self.listener));
    }

    /// The most memory the process has held at once (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("VmHWM value");
        kib * 1024
    }
}

impl Setup {
    pub fn workers(mut self, n: usize) -> Setup {
        self.workers = n;
        self
    }

    /// Sets an environment variable for the kedge process.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a TLS listener (on a port of the kernel's choice) next to the plain one.
    pub fn tls(mut self) -> Setup {
        self.tls = true;
        self
    }

    /// Adds one `key = value` line to every `[[listener]]` (plain and TLS).
    pub fn listener(mut self, line: &str) -> Setup {
        self.listener.push_str(line);
        self.listener.push('\n');
        self
    }

    /// Adds one `key = value` line to the `[proxy]` section.
    pub fn proxy(mut self, line: &str) -> Setup {
        self.proxy_extra.push_str(line);
        self.proxy_extra.push('\n');
        self
    }

    /// Adds whole tables (`[http2]` ...) to the config file, ahead of the fragment given to
    /// `start` or `follow`. Not kept by [`Kedge::rewrite_config`].
    pub fn tables(mut self, text: &str) -> Setup {
        self.tables.push_str(text);
        self.tables.push('\n');
        self
    }

    /// Keeps cluster state in `dir` (one a restarted kedge finds again) instead of this
    /// instance's own directory.
    pub fn state_dir(self, dir: &std::path::Path) -> Setup {
        self.proxy(&format!("state_dir = \"{}\"", dir.display()))
    }

    /// Starts kedge following `api` as cluster `test` (its kubeconfig written into `dir`), with
    /// `cluster_extra` (`key = value` lines) added to the `[[cluster]]`. The sync timeout is
    /// 10 s unless `cluster_extra` sets one.
    pub fn follow(self, api: &super::FakeApi, dir: &TempDir, cluster_extra: &str) -> Kedge {
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let sync_timeout = if cluster_extra.contains("sync_timeout") {
            ""
        } else {
            "sync_timeout = \"10s\"\n"
        };
        self.start(&format!(
            "[[cluster]]\nname = \"test\"\nkubeconfig = \"{}\"\n{sync_timeout}{cluster_extra}\n",
            kubeconfig.display()
        ))
    }

    /// Writes the config, starts kedge and waits until it listens.
    pub fn start(self, fragment: &str) -> Kedge {
        let dir = TempDir::new(self.driver.name());
        // Cluster state goes to this instance's own directory unless the test picks one: never
        // to /var/lib/kedge, shared by every test.
        let mut proxy_extra = self.proxy_extra;
        if !proxy_extra.contains("state_dir") {
            proxy_extra.push_str(&format!("state_dir = \"{}\"\n", dir.path().join("state").display()));
        }
        let proxy = format!(
            "[proxy]\nworkers = {}\ndriver = \"{}\"\n{}",
            self.workers,
            self.driver.name(),
            proxy_extra
        );
        let fragment = format!("{}{fragment}", self.tables);
        let config = dir.write("kedge.toml", &compose(&proxy, &fragment, self.tls, &self.listener));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kedge"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kedge");
        let logs = Arc::new(Logs::default());
        let readers = [
            capture(child.stderr.take().expect("stderr"), &logs),
            capture(child.stdout.take().expect("stdout"), &logs),
        ];

        let addr = wait_listening(&mut child, &logs, readers);
        Kedge {
            child,
            dir,
            config,
            proxy,
            tls: self.tls,
            listener: self.listener,
            addr,
            logs,
        }
    }
}

impl Drop for Kedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- kedge log ({}; {}) ----",
                self.proxy.replace('\n', " "),
                self.config.display()
            );
            for line in self.logs() {
                eprintln!("{line}");
            }
        }
    }
}

/// The config file: `[proxy]`, the test's fragment, the listener, and an admin server on a port
/// of the kernel's choice unless the fragment has its own `[admin]` (the default port would be
/// shared by every test).
fn compose(proxy: &str, fragment: &str, tls: bool, listener: &str) -> String {
    let admin = if fragment.contains("[admin]") {
        ""
    } else {
        "[admin]\naddress = \"127.0.0.1:0\"\n"
    };
    let tls = if tls {
        format!("[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\n{listener}")
    } else {
        String::new()
    };
    format!(
        "# written by kedge's integration tests\n{proxy}\n{fragment}\n[[listener]]\naddress = \"127.0.0.1:0\"\n{listener}{tls}{admin}"
    )
}

/// Reads `stream` line by line into `logs` on a thread of its own, until its end.
fn capture(stream: impl Read + Send + 'static, logs: &Arc<Logs>) -> std::thread::JoinHandle<()> {
    let logs = Arc::clone(logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            logs.lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            logs.grew.notify_all();
        }
    })
}

/// Waits for `listening on 127.0.0.1:PORT` and returns that address.
fn wait_listening(child: &mut Child, logs: &Logs, readers: [std::thread::JoinHandle<()>; 2]) -> SocketAddr {
    // Benches starting with 10k objects on a loaded machine may need longer.
    let timeout = std::env::var("KEDGE_START_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(START_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let mut lines = logs.lines.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(addr) = lines.iter().find_map(|l| listening_addr(l)) {
            return addr;
        }
        let exited = child.try_wait().expect("try_wait");
        if exited.is_some() || Instant::now() > deadline {
            drop(lines);
            // Once the process is dead its pipes end: the readers have every line when they stop.
            let _ = child.kill();
            let _ = child.wait();
            for r in readers {
                let _ = r.join();
            }
            panic!(
                "kedge did not start listening (exit: {exited:?}); log:\n{}",
                logs.lines.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
            );
        }
        lines = logs
            .grew
            .wait_timeout(lines, Duration::from_millis(50))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// What kedge logs once its admin server is bound.
const ADMIN_LISTENING: &str = "admin listening on ";

/// How kedge's line for a TLS listener ends.
const TLS_LISTENING_END: &str = " (tls)";

/// The proxy's plain-HTTP address from its `listening on ADDR` line (not from the admin
/// server's, nor a TLS listener's).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if line.contains(ADMIN_LISTENING) || line.ends_with(TLS_LISTENING_END) {
        return None;
    }
    addr_after(line, "listening on ")
}

/// The `IP:port` that follows `marker` in `line`.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

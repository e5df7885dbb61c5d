//! The admin listener: a tiny HTTP/1.1 server for probes, on the control thread's tokio runtime
//! (never on a worker), loopback by default (`[admin] address`).
//!
//! - `GET /healthz`: 200 `ok`. It is answered by a task of the control runtime, so an answer
//!   means that the process is alive and that the control loop's thread is running (a control
//!   thread that is gone or stuck leaves it unanswered).
//! - `GET /readyz`: 200 once the first route table is published and every configured cluster is
//!   ready ([`ClusterState::is_ready`]: live, disconnected after a sync, or serving its persisted
//!   state), else 503. The body says `ready` or `not ready`, then each cluster and its state,
//!   one per line (`prod: live`).
//! - `GET /metrics`: the process counters ([`crate::stats`]) in the Prometheus text format.
//!
//! One request per connection: the head is read (at most [`MAX_HEAD`] bytes, within
//! [`HEAD_TIMEOUT`]), answered with `Connection: close`, and the connection closed. GET and HEAD
//! only (405 otherwise), 404 for other paths, 400 for a head that does not parse.
//!
//! The control thread hands the cluster states over through a `tokio::sync::watch` channel:
//! [`Admin::published`] each time the control loop goes back to waiting, i.e. after every build,
//! which is when a cluster's state is decided. A request only borrows the latest value: nothing
//! here waits for the control loop, takes part in a build, or touches the workers' snapshot.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use arc_swap::ArcSwap;

use crate::config::ClusterConfig;
use crate::shared::ClusterState;
use crate::shared::Snapshot;

/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The whole request head must arrive within this; the answer must be sent within it too.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; further ones are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 32;

/// After the answer, how long what the client still sends is read and dropped, so that the
/// close does not turn into a reset that could destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Binds the admin address (before any worker starts, so that a busy port fails the start).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let socket = || -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(64)?;
        Ok(s)
    };
    match socket() {
        Ok(s) => Ok(s.into()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {addr} ([admin] address): {e} (is another server using it?)"
        )),
        Err(e) => Err(format!("cannot listen on {addr} ([admin] address): {e}")),
    }
}

/// What the admin server reports, as of the last build.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    /// The first route table is published.
    published: bool,
    /// Every configured cluster, in the file's order, and its state; `None` for one whose
    /// client could not be made (it is not served at all).
    clusters: Vec<(String, Option<ClusterState>)>,
    /// The warnings of the last build (bad objects, certificates...), sorted.
    warnings: Arc<Vec<String>>,
}

/// The control thread's handle on the admin server: where it reports the cluster states.
pub struct Admin {
    /// The configured clusters' names, in the file's order.
    names: Vec<String>,
    status: watch::Sender<Status>,
}

impl Admin {
    /// Starts serving `listener` (`None`: the admin server is off) on the current tokio runtime,
    /// reporting on the `clusters` of the configuration kedge started with (cluster changes
    /// need a restart). Until [`Admin::published`], it is not ready.
    pub fn start(
        listener: Option<std::net::TcpListener>,
        clusters: &[ClusterConfig],
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: crate::metrics::Metrics,
    ) -> Admin {
        let (status, rx) = watch::channel(Status {
            published: false,
            clusters: clusters
                .iter()
                .map(|c| (c.name.clone(), Some(ClusterState::NotSynced)))
                .collect(),
            warnings: Arc::default(),
        });
        if let Some(listener) = listener {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    match l.local_addr() {
                        Ok(addr) => tracing::info!("admin listening on {addr}"),
                        Err(e) => tracing::info!("admin listening (address unknown: {e})"),
                    }
                    tokio::spawn(serve(l, rx, Arc::new((snapshot, metrics))));
                }
                Err(e) => tracing::error!("cannot serve the admin address: {e}; running without it"),
            }
        }
        Admin {
            names: clusters.iter().map(|c| c.name.clone()).collect(),
            status,
        }
    }

    /// A route table was published; `clusters` are the clusters being followed and their states
    /// (a configured cluster missing from them could not be connected).
    pub fn published<'a>(&self, clusters: impl IntoIterator<Item = (&'a str, ClusterState)>) {
        let states: Vec<(&str, ClusterState)> = clusters.into_iter().collect();
        let next = Status {
            published: true,
            warnings: Arc::clone(&self.status.borrow().warnings),
            clusters: self
                .names
                .iter()
                .map(|name| {
                    let state = states.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone());
                    (name.clone(), state)
                })
                .collect(),
        };
        crate::stats::clusters(
            next.clusters
                .iter()
                .map(|(name, state)| {
                    let (label, live) = match state {
                        None => ("not_connected", false),
                        Some(ClusterState::NotSynced) => ("not_synced", false),
                        Some(ClusterState::Persisted(_)) => ("persisted", false),
                        Some(ClusterState::Live) => ("live", true),
                        Some(ClusterState::Disconnected) => ("disconnected", false),
                    };
                    (name.clone(), label, live)
                })
                .collect(),
        );
        self.status.send_if_modified(|s| {
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

impl Admin {
    /// The warnings of the build just published.
    pub fn warnings(&self, warnings: Vec<String>) {
        self.status.send_if_modified(|s| {
            let changed = *s.warnings != warnings;
            if changed {
                s.warnings = Arc::new(warnings);
            }
            changed
        });
    }
}

/// Accepts admin connections for as long as the control runtime runs.
/// What the admin answers from besides the status: the published snapshot and the metrics.
type Views = (Arc<ArcSwap<Snapshot>>, crate::metrics::Metrics);

async fn serve(listener: TcpListener, status: watch::Receiver<Status>, views: Arc<Views>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                failing = false;
                // Over the limit: dropped, i.e. closed at once.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    continue;
                };
                let status = status.clone();
                let views = Arc::clone(&views);
                tokio::spawn(async move {
                    connection(stream, &status, &views).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of file descriptors, typically: say it once per streak, do not spin.
                if !failing {
                    tracing::warn!("admin: cannot accept a connection: {e}; retrying");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One admin connection: a request head, an answer, the close.
async fn connection(mut stream: TcpStream, status: &watch::Receiver<Status>, views: &Views) {
    let answer = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Head::Request { method, path })) => {
            let status = status.borrow().clone();
            respond(&method, &path, &status, views)
        }
        Ok(Ok(Head::TooLarge)) => Answer::text(431, "Request Header Fields Too Large", "request head too large"),
        Ok(Ok(Head::Bad)) => Answer::text(400, "Bad Request", "malformed request"),
        // Closed or failed before a whole head: nobody to answer.
        Ok(Err(_)) => return,
        Err(_) => Answer::text(408, "Request Timeout", "request head timeout"),
    };
    let sent = tokio::time::timeout(HEAD_TIMEOUT, async {
        stream.write_all(&answer.encode()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(LINGER, drain(&mut stream)).await;
    }
}

/// What the start of a connection held.
enum Head {
    Request { method: String, path: String },
    TooLarge,
    Bad,
}

/// Reads until the request head is complete, [`MAX_HEAD`] bytes are in, or the head is malformed.
/// An error: the peer closed or the socket failed before that.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Some(head) => return Ok(head),
            None if buf.len() >= MAX_HEAD => return Ok(Head::TooLarge),
            None => {}
        }
    }
}

/// The request's method and path, `None` while the head is incomplete.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => Some(Head::Request {
            method: req.method.unwrap_or_default().to_owned(),
            path: req.path.unwrap_or_default().to_owned(),
        }),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Head::TooLarge),
        Err(_) => Some(Head::Bad),
    }
}

/// Reads and drops what the client still sends, until it closes.
async fn drain(stream: &mut TcpStream) {
    let mut chunk = [0u8; 1024];
    while let Ok(n) = stream.read(&mut chunk).await
        && n > 0
    {}
}

/// The answer to `method` on `path` (its query, if any, is ignored).
fn respond(method: &str, path: &str, status: &Status, (snapshot, metrics): &Views) -> Answer {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let mut answer = match path {
        "/healthz" => Answer::text(200, "OK", "ok"),
        "/readyz" => readiness(status),
        "/backends" => {
            let mut a = Answer::text(200, "OK", "");
            a.body = backends_json(&snapshot.load(), &status.warnings);
            a.content_type = "application/json";
            a
        }
        "/metrics" => {
            let mut a = Answer::text(200, "OK", "");
            a.body.clear();
            crate::metrics::render(metrics, &mut a.body);
            a.content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            a
        }
        _ => {
            return Answer::text(
                404,
                "Not Found",
                "not found: the admin paths are /healthz, /readyz, /metrics and /backends",
            );
        }
    };
    match method {
        "GET" => {}
        "HEAD" => answer.head_only = true,
        _ => {
            answer = Answer::text(405, "Method Not Allowed", "method not allowed: GET or HEAD only");
            answer.allow = true;
        }
    }
    answer
}

/// `/readyz`: 200 or 503, and a line per cluster.
fn readiness(s: &Status) -> Answer {
    let mut ready = s.published;
    let mut lines = String::new();
    for (name, state) in &s.clusters {
        ready &= state.as_ref().is_some_and(ClusterState::is_ready);
        let what = match state {
            None => "not connected (its kubeconfig could not be used; see the log)".to_owned(),
            Some(ClusterState::NotSynced) => "not synced".to_owned(),
            Some(ClusterState::Persisted(at)) => format!("persisted (serving the state saved at {at})"),
            Some(ClusterState::Live) => "live".to_owned(),
            Some(ClusterState::Disconnected) => "disconnected (serving the last known state)".to_owned(),
        };
        let _ = writeln!(lines, "{name}: {what}");
    }
    let verdict = match (ready, s.published) {
        (true, _) => "ready",
        (false, false) => "not ready: starting, no route table published yet",
        (false, true) => "not ready",
    };
    let mut answer = if ready {
        Answer::text(200, "OK", verdict)
    } else {
        Answer::text(503, "Service Unavailable", verdict)
    };
    answer.body.push_str(&lines);
    answer
}

/// A canned answer: a short text body, then the close.
struct Answer {
    status: u16,
    content_type: &'static str,
    reason: &'static str,
    body: String,
    /// An answer to HEAD: the head alone.
    head_only: bool,
    /// Says `Allow: GET, HEAD` (a 405).
    allow: bool,
}

impl Answer {
    /// `status` with `line` as its body.
    fn text(status: u16, reason: &'static str, line: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            reason,
            body: format!("{line}\n"),
            head_only: false,
            allow: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// `/backends`: every backend with its endpoints, upstream TLS and the rules that use it, and
/// the current warnings (what `kedge backends` shows).
fn backends_json(snap: &Snapshot, warnings: &[String]) -> String {
    use serde_json::{Value, json};
    let table = &snap.table;
    let mut rules: Vec<Vec<Value>> = vec![Vec::new(); table.backends.len()];
    for (host, path, kind, backend, policy, canary) in table.rules() {
        let balance = match &policy.balance {
            crate::policy::Balance::RoundRobin => "round_robin",
            crate::policy::Balance::LeastRequest => "least_request",
            crate::policy::Balance::Hash(_) => "hash",
        };
        let rule = json!({
            "host": host,
            "path": path,
            "path_type": format!("{kind:?}"),
            "balance": balance,
            "affinity_cookie": policy.affinity.as_ref().map(|a| a.cookie.to_string()),
            "canary": canary.and_then(|c| table.backends.get(c)).map(|b| b.name.to_string()),
        });
        if let Some(r) = rules.get_mut(backend) {
            r.push(rule);
        }
    }
    // Gateway API rules: the scope (local addresses and port) they are served on.
    for (scope, host, path, ids) in table.gateway_rules() {
        for id in ids.into_iter().flatten() {
            if let Some(r) = rules.get_mut(id) {
                r.push(json!({
                    "host": host,
                    "path": path,
                    "path_type": "Gateway",
                    "balance": "weighted",
                    "scope": scope,
                }));
            }
        }
    }
    let backends: Vec<Value> = table
        .backends
        .iter()
        .zip(rules)
        .map(|(b, rules)| {
            json!({
                "name": b.name.to_string(),
                "endpoints": b.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "upstream_tls": b.tls.as_ref().map(|t| json!({
                    "verify": match &t.settings.verify {
                        crate::tls::Verify::Off => "off",
                        crate::tls::Verify::System => "system",
                        crate::tls::Verify::Ca(_) => "ca",
                    },
                    "name": t.settings.name,
                    "sni": t.settings.sni,
                })),
                "rules": rules,
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&json!({"backends": backends, "warnings": warnings}))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}

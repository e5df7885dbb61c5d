//! TLS load generator for `benches/tls.sh` (kedge vs nginx over HTTPS).
//!
//! ```text
//! tls_load --addr 127.0.0.1:18443 --sni bench.example.com --ca ca.pem
//!          --mode full|resumed|keepalive|idle [--concurrency N] [--duration S] [--warmup S]
//!          [--tls12 [--session-id]] [--insecure] [--pq] [--idle-conns N] [--hold S]
//!          [--proxy-pid PID] [--backend-pid PID]
//! ```
//!
//! Modes (every request is `GET / HTTP/1.1`, the response is read completely and must be 200):
//!
//! - `full`: each of N tasks loops over: TCP connect, full handshake (client resumption
//!   disabled), one request with `Connection: close`, read the response and then until the
//!   server closes. rate = handshakes/s.
//! - `resumed`: the same with one in-memory session store shared by all tasks, so handshakes
//!   resume: TLS 1.3 tickets; with `--tls12`, TLS 1.2 tickets, or with `--tls12 --session-id`
//!   the server's session-ID cache (the client sends no ticket extension). The fraction of
//!   resumed handshakes during the measured window is reported (`resumed=`).
//! - `keepalive`: N persistent connections, each sending requests back to back (one in flight
//!   per connection). rate = requests/s.
//! - `idle`: opens `--idle-conns` connections (at most N handshakes at once), one keep-alive
//!   request on each, then holds them idle for `--hold` seconds. Prints `ready ...` when they are
//!   all open. With `--proxy-pid`, samples the VmRSS of the proxy's process tree before opening,
//!   after `--hold`, and after closing, and reports the growth per idle connection. After the
//!   hold every connection sends one more request (`alive=` counts the answers), so a proxy that
//!   dropped idle connections cannot look lean.
//!
//! For the rate modes there is a warm-up (`--warmup`, default 1 s, not counted), then the
//! measured window (`--duration`). With `--proxy-pid` / `--backend-pid` the CPU time of those
//! process trees (utime+stime of the process and its descendants) during the window is
//! reported as % of one core, with this process's own CPU and `other_cpu` = machine-wide busy
//! time (`/proc/stat`) not accounted for by the three, i.e. foreign load (a compiler...).
//!
//! Key exchange: X25519 first (then P-256, P-384), what nginx's OpenSSL 3.0 also prefers;
//! `--pq` offers the hybrid post-quantum X25519MLKEM768 first (kedge only: a server without it
//! would answer with a HelloRetryRequest).
//!
//! Certificates: `--ca FILE` verifies the chain and the name (what a real client does);
//! `--insecure` skips the chain and name check but still verifies the server's handshake
//! signature (like wrk, h2load: the client then costs less CPU per handshake).
//!
//! Output: one machine-readable line on stdout, `result mode=... rate=... errors=...`; progress
//! and error details on stderr. Exit status 0 even with request errors (they are counted);
//! 2 for bad arguments or setup failures.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls12Resumption, Tls13ClientSessionValue,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, HandshakeKind, NamedGroup, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ---- arguments -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    Resumed,
    Keepalive,
    Idle,
}

#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    sni: String,
    host: Option<String>,
    path: String,
    ca: Option<PathBuf>,
    insecure: bool,
    /// Offer X25519MLKEM768 first (a key share for it) instead of X25519.
    pq: bool,
    mode: Mode,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    tls12: bool,
    session_id: bool,
    idle_conns: usize,
    hold: f64,
    proxy_pid: Option<u32>,
    backend_pid: Option<u32>,
}

const USAGE: &str = "usage: tls_load --addr IP:PORT --sni NAME (--ca FILE | --insecure) \
--mode full|resumed|keepalive|idle [--concurrency N] [--duration S] [--warmup S] [--tls12 [--session-id]] \
[--pq] [--idle-conns N] [--hold S] [--host H] [--path P] [--proxy-pid PID] [--backend-pid PID]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:18443".parse().unwrap(),
        sni: "bench.example.com".into(),
        host: None,
        path: "/".into(),
        ca: None,
        insecure: false,
        pq: false,
        mode: Mode::Full,
        concurrency: 50,
        duration: 5.0,
        warmup: 1.0,
        tls12: false,
        session_id: false,
        idle_conns: 1000,
        hold: 3.0,
        proxy_pid: None,
        backend_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("{flag}: not a number: {v}"));
        let int = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: not an integer: {v}"));
        match flag.as_str() {
            "--addr" => a.addr = val()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--sni" => a.sni = val()?,
            "--host" => a.host = Some(val()?),
            "--path" => a.path = val()?,
            "--ca" => a.ca = Some(val()?.into()),
            "--insecure" => a.insecure = true,
            "--mode" => {
                a.mode = match val()?.as_str() {
                    "full" => Mode::Full,
                    "resumed" => Mode::Resumed,
                    "keepalive" => Mode::Keepalive,
                    "idle" => Mode::Idle,
                    m => return Err(format!("unknown --mode {m}")),
                }
            }
            "--concurrency" | "-c" => a.concurrency = int(val()?)?,
            "--duration" | "-d" => a.duration = num(val()?)?,
            "--warmup" => a.warmup = num(val()?)?,
            "--tls12" => a.tls12 = true,
            "--pq" => a.pq = true,
            "--session-id" => a.session_id = true,
            "--idle-conns" => a.idle_conns = int(val()?)?,
            "--hold" => a.hold = num(val()?)?,
            "--proxy-pid" => a.proxy_pid = Some(int(val()?)? as u32),
            "--backend-pid" => a.backend_pid = Some(int(val()?)? as u32),
            // `cargo bench` passes --bench to harness = false targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            f => return Err(format!("unknown argument {f}")),
        }
    }
    if a.ca.is_none() && !a.insecure {
        return Err("give --ca FILE (verify the certificate) or --insecure".into());
    }
    if a.concurrency == 0 || a.duration <= 0.0 || a.warmup < 0.0 || a.hold < 0.0 {
        return Err("--concurrency and --duration must be > 0, --warmup and --hold >= 0".into());
    }
    if a.session_id && !(a.tls12 && a.mode == Mode::Resumed) {
        return Err("--session-id goes with --mode resumed --tls12 (TLS 1.3 resumes with tickets only)".into());
    }
    Ok(a)
}

// ---- TLS client configuration --------------------------------------------------------------

/// Accepts any certificate but checks the handshake signature with the certificate's key:
/// the server still has to sign, the client skips chain building and name checks.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A session store shared by all tasks for the one server this tool talks to. Unlike
/// `ClientSessionMemoryCache` (at most 8 TLS 1.3 tickets per server) it keeps enough tickets
/// for every task to resume at once.
#[derive(Debug, Default)]
struct SharedSessions {
    inner: Mutex<SessionsInner>,
}

#[derive(Debug, Default)]
struct SessionsInner {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

const MAX_TICKETS: usize = 16_384;

impl ClientSessionStore for SharedSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.inner.lock().unwrap().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.lock().unwrap().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.lock().unwrap().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.lock().unwrap().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.inner.lock().unwrap().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut s = self.inner.lock().unwrap();
        if s.tls13.len() == MAX_TICKETS {
            s.tls13.pop_front();
        }
        s.tls13.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // Newest first: the freshest ticket, like ClientSessionMemoryCache.
        self.inner.lock().unwrap().tls13.pop_back()
    }
}

fn kx_groups(pq: bool) -> Vec<&'static dyn rustls::crypto::SupportedKxGroup> {
    use rustls::crypto::aws_lc_rs::kx_group::*;
    match pq {
        true => vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1],
        false => vec![X25519, SECP256R1, SECP384R1],
    }
}

fn client_config(a: &Args) -> Result<Arc<rustls::ClientConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = if a.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ClientConfig::builder_with_protocol_versions(versions);
    let mut cfg = if a.insecure {
        let provider = CryptoProvider::get_default().ok_or("no default crypto provider")?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly(Arc::clone(provider))))
            .with_no_client_auth()
    } else {
        let ca = a.ca.as_ref().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate", ca.display()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = match a.mode {
        Mode::Resumed if a.session_id => {
            Resumption::store(Arc::new(SharedSessions::default())).tls12_resumption(Tls12Resumption::SessionIdOnly)
        }
        Mode::Resumed => Resumption::store(Arc::new(SharedSessions::default())),
        _ => Resumption::disabled(),
    };
    Ok(Arc::new(cfg))
}

// ---- one connection ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ErrKind {
    Connect,
    Handshake,
    Io,
    Status,
    Timeout,
}

#[derive(Debug)]
struct Failure(ErrKind, String);

type Conn = TlsStream<TcpStream>;

struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    name: ServerName<'static>,
    req_close: Vec<u8>,
    req_keepalive: Vec<u8>,
}

impl Client {
    async fn connect(&self) -> Result<Conn, Failure> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| Failure(ErrKind::Connect, e.to_string()))?;
        tcp.set_nodelay(true).ok();
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| Failure(ErrKind::Handshake, e.to_string()))
    }

    /// Sends one request and reads its whole response (Content-Length or chunked).
    async fn request(&self, conn: &mut Conn, buf: &mut Vec<u8>, close: bool) -> Result<(), Failure> {
        let io = |e: std::io::Error| Failure(ErrKind::Io, e.to_string());
        conn.write_all(if close { &self.req_close } else { &self.req_keepalive })
            .await
            .map_err(io)?;
        conn.flush().await.map_err(io)?;
        buf.clear();
        let (status, head_len, body) = loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity().max(4096));
            }
            let n = conn.read_buf(buf).await.map_err(io)?;
            if n == 0 {
                return Err(Failure(
                    ErrKind::Io,
                    "connection closed before the response head".into(),
                ));
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut body = Body::None;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                            body = Body::Length(v.ok_or_else(|| Failure(ErrKind::Io, "bad Content-Length".into()))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") && h.value.ends_with(b"chunked") {
                            body = Body::Chunked;
                        }
                    }
                    break (resp.code.unwrap_or(0), len, body);
                }
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(Failure(ErrKind::Io, format!("bad response head: {e}"))),
            }
        };
        loop {
            let got = &buf[head_len..];
            let done = match body {
                Body::Length(n) => got.len() >= n,
                // Good enough for the small responses here: the last chunk ends the body.
                Body::Chunked => got.ends_with(b"0\r\n\r\n"),
                Body::None => true,
            };
            if done {
                break;
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity().max(4096));
            }
            if conn.read_buf(buf).await.map_err(io)? == 0 {
                return Err(Failure(
                    ErrKind::Io,
                    "connection closed inside the response body".into(),
                ));
            }
        }
        if status != 200 {
            return Err(Failure(ErrKind::Status, format!("status {status}")));
        }
        Ok(())
    }
}

enum Body {
    None,
    Length(usize),
    Chunked,
}

// ---- shared counters -----------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    measuring: AtomicBool,
    stop: AtomicBool,
    done: AtomicU64,
    resumed: AtomicU64,
    reconnects: AtomicU64,
    /// `full`/`resumed`: the server closed the TCP connection without a TLS close_notify.
    unclean_closes: AtomicU64,
    errors: Mutex<BTreeMap<ErrKind, (u64, String)>>,
    latencies_us: Mutex<Vec<u32>>,
    /// Protocol, cipher suite, key exchange and whether the first handshake was resumed.
    negotiated: Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, f: Failure) {
        let mut e = self.errors.lock().unwrap();
        let slot = e.entry(f.0).or_insert((0, f.1));
        slot.0 += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.lock().unwrap().values().map(|v| v.0).sum()
    }

    fn note_negotiated(&self, conn: &Conn) {
        let mut n = self.negotiated.lock().unwrap();
        if n.is_none() {
            let c = conn.get_ref().1;
            *n = Some(format!(
                "proto={:?} suite={:?} kx={} alpn={}",
                c.protocol_version().unwrap(),
                c.negotiated_cipher_suite().unwrap().suite(),
                c.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name()))
                    .unwrap_or("-".into()),
                c.alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or("-".into()),
            ));
        }
    }
}

const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// `full` / `resumed`: a new connection per request.
async fn handshake_loop(client: Arc<Client>, stats: Arc<Stats>) {
    let mut buf = Vec::with_capacity(4096);
    while !stats.stop.load(Relaxed) {
        let start = Instant::now();
        let r = tokio::time::timeout(OP_TIMEOUT, async {
            let mut conn = client.connect().await?;
            let resumed = conn.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
            stats.note_negotiated(&conn);
            client.request(&mut conn, &mut buf, true).await?;
            // Connection: close — the server closes; read until it does (this also takes in
            // TLS 1.3 tickets sent after the response, and close_notify). A TCP close without
            // close_notify is no error here, only counted (unclean_closes).
            let mut sink = [0u8; 512];
            loop {
                match conn.read(&mut sink).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof && stats.measuring.load(Relaxed) {
                            stats.unclean_closes.fetch_add(1, Relaxed);
                        }
                        break;
                    }
                }
            }
            Ok::<bool, Failure>(resumed)
        })
        .await;
        match r {
            Ok(Ok(resumed)) => {
                if stats.measuring.load(Relaxed) {
                    stats.done.fetch_add(1, Relaxed);
                    stats.resumed.fetch_add(resumed as u64, Relaxed);
                    stats
                        .latencies_us
                        .lock()
                        .unwrap()
                        .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Ok(Err(f)) => {
                stats.error(f);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => stats.error(Failure(ErrKind::Timeout, "no answer within 10 s".into())),
        }
    }
}

/// `keepalive`: requests back to back on one connection (reconnects when it is closed).
async fn keepalive_loop(client: Arc<Client>, stats: Arc<Stats>) {
    let mut buf = Vec::with_capacity(4096);
    let mut conn: Option<Conn> = None;
    while !stats.stop.load(Relaxed) {
        let start = Instant::now();
        let r = tokio::time::timeout(OP_TIMEOUT, async {
            if conn.is_none() {
                let c = client.connect().await?;
                stats.note_negotiated(&c);
                conn = Some(c);
            }
            client.request(conn.as_mut().unwrap(), &mut buf, false).await
        })
        .await;
        match r {
            Ok(Ok(())) => {
                if stats.measuring.load(Relaxed) {
                    stats.done.fetch_add(1, Relaxed);
                    stats
                        .latencies_us
                        .lock()
                        .unwrap()
                        .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            Ok(Err(f)) => {
                if conn.take().is_some() {
                    stats.reconnects.fetch_add(1, Relaxed);
                }
                stats.error(f);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => {
                conn = None;
                stats.error(Failure(ErrKind::Timeout, "no answer within 10 s".into()));
            }
        }
    }
}

// ---- /proc sampling ------------------------------------------------------------------------

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, utime+stime ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    Some((
        rest.get(1)?.parse().ok()?,
        rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?,
    ))
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some((ppid, _)) = proc_stat(p)
            {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let (mut out, mut todo) = (Vec::new(), vec![pid]);
    while let Some(p) = todo.pop() {
        out.push(p);
        todo.extend(children.get(&p).into_iter().flatten());
    }
    out
}

fn tree_ticks(pid: Option<u32>) -> Option<u64> {
    pid.map(|p| tree(p).into_iter().filter_map(proc_stat).map(|s| s.1).sum())
}

/// Sum of VmRSS (KiB) over `pid` and its descendants (nginx: master + workers).
fn tree_rss_kib(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// Busy jiffies of all CPUs together (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = s.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    if v.len() < 5 {
        return 0;
    }
    // user nice system idle iowait irq softirq steal (guest is already in user)
    v.iter().take(8).sum::<u64>() - v[3] - v[4]
}

struct CpuSnap {
    proxy: Option<u64>,
    backend: Option<u64>,
    own: u64,
    machine: u64,
}

fn cpu_snap(a: &Args) -> CpuSnap {
    CpuSnap {
        proxy: tree_ticks(a.proxy_pid),
        backend: tree_ticks(a.backend_pid),
        own: proc_stat(std::process::id()).map(|s| s.1).unwrap_or(0),
        machine: machine_busy_ticks(),
    }
}

// ---- modes ---------------------------------------------------------------------------------

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn error_summary(stats: &Stats) -> String {
    let e = stats.errors.lock().unwrap();
    for (k, (n, first)) in e.iter() {
        eprintln!("tls_load: {n} {k:?} error(s), first: {first}");
    }
    e.iter()
        .map(|(k, (n, _))| format!("{k:?}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn run_rate(a: &Args, client: Arc<Client>) -> String {
    let stats = Arc::new(Stats::default());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (c, s) = (Arc::clone(&client), Arc::clone(&stats));
        match a.mode {
            Mode::Keepalive => tasks.spawn(keepalive_loop(c, s)),
            _ => tasks.spawn(handshake_loop(c, s)),
        };
    }
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let errors_before = stats.error_count();
    let c0 = cpu_snap(a);
    let t0 = Instant::now();
    stats.measuring.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    stats.measuring.store(false, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let c1 = cpu_snap(a);
    stats.stop.store(true, Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let done = stats.done.load(Relaxed);
    let rate = done as f64 / elapsed;
    let mut lat = std::mem::take(&mut *stats.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let tck = clk_tck();
    let pct = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(100.0 * (b.saturating_sub(a)) as f64 / tck / elapsed),
        _ => None,
    };
    let proxy_cpu = pct(c0.proxy, c1.proxy);
    let backend_cpu = pct(c0.backend, c1.backend);
    let own_cpu = pct(Some(c0.own), Some(c1.own)).unwrap();
    let busy = pct(Some(c0.machine), Some(c1.machine)).unwrap();
    let other = (busy - own_cpu - proxy_cpu.unwrap_or(0.0) - backend_cpu.unwrap_or(0.0)).max(0.0);
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or("-".into());
    let per_core = proxy_cpu.filter(|c| *c > 0.0).map(|c| rate / (c / 100.0));
    let errors = stats.error_count();
    let kinds = error_summary(&stats);
    let mode = match a.mode {
        Mode::Full => "full",
        Mode::Resumed => "resumed",
        _ => "keepalive",
    };
    format!(
        "result mode={mode} tls12_only={} session_id_only={} {} concurrency={} duration={elapsed:.2} requests={done} rate={rate:.1} \
         errors={errors} errors_warmup={errors_before} error_kinds={} resumed={:.3} reconnects={} unclean_closes={} p50_ms={:.3} \
         p99_ms={:.3} proxy_cpu={} per_proxy_core={} backend_cpu={} self_cpu={own_cpu:.1} other_cpu={other:.1}",
        a.tls12,
        a.session_id,
        stats
            .negotiated
            .lock()
            .unwrap()
            .clone()
            .unwrap_or("proto=- suite=- kx=- alpn=-".into()),
        a.concurrency,
        if kinds.is_empty() { "-".into() } else { kinds },
        if done > 0 {
            stats.resumed.load(Relaxed) as f64 / done as f64
        } else {
            0.0
        },
        stats.reconnects.load(Relaxed),
        stats.unclean_closes.load(Relaxed),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        opt(proxy_cpu),
        opt(per_core),
        opt(backend_cpu),
    )
}

async fn run_idle(a: &Args, client: Arc<Client>) -> String {
    let stats = Arc::new(Stats::default());
    let rss = |pid: Option<u32>| pid.map(tree_rss_kib);
    let rss_before = rss(a.proxy_pid);
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.idle_conns {
        let (c, s, sem) = (Arc::clone(&client), Arc::clone(&stats), Arc::clone(&sem));
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = tokio::time::timeout(OP_TIMEOUT, async {
                let mut conn = c.connect().await?;
                s.note_negotiated(&conn);
                let mut buf = Vec::with_capacity(1024);
                c.request(&mut conn, &mut buf, false).await?;
                Ok::<Conn, Failure>(conn)
            })
            .await;
            match r {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(f)) => {
                    s.error(f);
                    None
                }
                Err(_) => {
                    s.error(Failure(ErrKind::Timeout, "no answer within 10 s".into()));
                    None
                }
            }
        });
    }
    let mut conns = Vec::with_capacity(a.idle_conns);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(c)) = r {
            conns.push(c);
        }
    }
    let open_s = t0.elapsed().as_secs_f64();
    let opened = conns.len();
    // Let the proxy finish whatever it does after a request (buffers returned, pool settled).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_ready = rss(a.proxy_pid);
    println!(
        "ready conns={opened} open_s={open_s:.2} rss_kib={}",
        rss_ready.map(|v| v.to_string()).unwrap_or("-".into())
    );
    std::io::stdout().flush().ok();
    tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
    let rss_idle = rss(a.proxy_pid);

    // Are they still open? One more request on each (at most `concurrency` at once).
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns.drain(..) {
        let (c, sem) = (Arc::clone(&client), Arc::clone(&sem));
        tasks.spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let mut buf = Vec::with_capacity(1024);
            let ok = matches!(
                tokio::time::timeout(OP_TIMEOUT, c.request(&mut conn, &mut buf, false)).await,
                Ok(Ok(()))
            );
            (ok, conn)
        });
    }
    let mut alive = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((ok, conn)) = r {
            alive += ok as usize;
            conns.push(conn);
        }
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(a.proxy_pid);

    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(i)) if opened > 0 => format!("{:.2}", (i as f64 - b as f64) / opened as f64),
        _ => "-".into(),
    };
    let kib = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("-".into());
    let errors = stats.error_count();
    let kinds = error_summary(&stats);
    format!(
        "result mode=idle tls12_only={} {} conns={} opened={opened} alive={alive} errors={errors} error_kinds={} \
         open_s={open_s:.2} hold_s={:.1} rss_before_kib={} rss_ready_kib={} rss_idle_kib={} rss_after_close_kib={} \
         per_conn_kib={per_conn}",
        a.tls12,
        stats
            .negotiated
            .lock()
            .unwrap()
            .clone()
            .unwrap_or("proto=- suite=- kx=- alpn=-".into()),
        a.idle_conns,
        if kinds.is_empty() { "-".into() } else { kinds },
        a.hold,
        kib(rss_before),
        kib(rss_ready),
        kib(rss_idle),
        kib(rss_after),
    )
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls_load: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // aws-lc-rs, the provider kedge uses. Classic groups (X25519 first) unless --pq: nginx's
    // OpenSSL 3.0 has no post-quantum group, and a client preferring one would pay a second
    // ClientHello there.
    let _ = rustls::crypto::CryptoProvider {
        kx_groups: kx_groups(a.pq),
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
    .install_default();
    let cfg = client_config(&a).unwrap_or_else(|e| {
        eprintln!("tls_load: {e}");
        std::process::exit(2);
    });
    let name = ServerName::try_from(a.sni.clone()).unwrap_or_else(|e| {
        eprintln!("tls_load: --sni {}: {e}", a.sni);
        std::process::exit(2);
    });
    let host = a.host.clone().unwrap_or_else(|| a.sni.clone());
    let req = |close: bool| {
        format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kedge-tls-load\r\nAccept: */*\r\n{}\r\n",
            a.path,
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes()
    };
    let client = Arc::new(Client {
        connector: TlsConnector::from(cfg),
        addr: a.addr,
        name,
        req_close: req(true),
        req_keepalive: req(false),
    });
    // One thread: taskset in tls.sh gives this process one core (shared with the backend).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let line = rt.block_on(async {
        match a.mode {
            Mode::Idle => run_idle(&a, client).await,
            _ => run_rate(&a, client).await,
        }
    });
    println!("{line}");
    // Leave without waiting for aborted tasks' sockets.
    std::io::stdout().flush().ok();
    std::process::exit(0);
}

//! Upstreams written with hyper on a tokio runtime of their own (a background thread per
//! upstream): they count accepted connections and record every request they see.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::body::{self, BodyHash};

/// What an upstream answers.
#[derive(Debug, Clone)]
pub enum Handler {
    /// 200 with `x-upstream: NAME` and a text body describing the request (see [`Seen`]).
    Echo,
    /// 200 with this many pattern bytes and a Content-Length.
    Fixed(usize),
    /// 200 with this many pattern bytes, chunked, generated as the client reads.
    Stream(u64),
    /// Waits this long after reading the request, then answers as `Echo`.
    Delay(Duration),
    /// This status with no body (204, 304, ...).
    Status(u16),
    /// This status at once, the request body unread: an application that refuses an upload by
    /// its head (hyper then closes the connection, not reading the rest). The request is
    /// recorded with `body_complete` false.
    Refuse(u16),
    /// A WebSocket-style upgrade: 101 with `Upgrade: websocket`, then echoes bytes on the
    /// upgraded connection. Requests without `Upgrade` get `Echo`.
    WebSocket,
}

/// One request as an upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_hash: u64,
    /// False when the body ended in an error (the peer left before its end).
    pub body_complete: bool,
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A hyper upstream on 127.0.0.1:0. Stops when dropped.
pub struct Upstream {
    server: Server,
    state: Arc<State>,
}

struct State {
    name: String,
    handler: Handler,
    requests: Mutex<Vec<Seen>>,
    /// Body bytes `Handler::Stream` has handed to hyper so far (over all requests).
    streamed: Arc<AtomicU64>,
    /// Requests being handled now (hyper drops a handler whose connection closed), and the
    /// most there ever were at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// Counts one request in flight while alive.
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn begin(st: &'a State) -> InFlight<'a> {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

impl Upstream {
    pub fn start(name: &str, handler: Handler) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Upstream::on(listener, name, handler)
    }

    /// `n` echo upstreams standing in for the pods of one Service: they share one port on
    /// 127.0.0.1, 127.0.0.2, ... (as pod IPs share a container port) and answer as `name-0`,
    /// `name-1`, ...
    pub fn pods(name: &str, n: u8) -> (Vec<Upstream>, u16) {
        'again: for _ in 0..20 {
            let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
            let port = first.local_addr().expect("addr").port();
            let mut ups = vec![Upstream::on(first, &format!("{name}-0"), Handler::Echo)];
            for i in 2..=n {
                let ip = std::net::Ipv4Addr::new(127, 0, 0, i);
                match Upstream::pod(&format!("{name}-{}", i - 1), ip, port, Handler::Echo) {
                    Ok(up) => ups.push(up),
                    Err(_) => continue 'again, // the port is taken on that address: pick another
                }
            }
            return (ups, port);
        }
        panic!("no port free on 127.0.0.1..=127.0.0.{n}");
    }

    /// One more pod of a Service whose pods share `port`: an upstream on `ip:port` answering
    /// as `name` with `handler`. Fails if that address is taken.
    pub fn pod(name: &str, ip: std::net::Ipv4Addr, port: u16, handler: Handler) -> std::io::Result<Upstream> {
        let listener = std::net::TcpListener::bind((ip, port))?;
        Ok(Upstream::on(listener, name, handler))
    }

    /// An upstream that speaks HTTPS (hyper over tokio-rustls) with `config`.
    pub fn start_tls(name: &str, handler: Handler, config: Arc<rustls::ServerConfig>) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let state = Arc::new(State {
            name: name.to_owned(),
            handler,
            requests: Mutex::new(Vec::new()),
            streamed: Arc::default(),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let server = Server::serve(listener, move |stream| {
            let st = Arc::clone(&st);
            let acceptor = acceptor.clone();
            async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return; // a handshake the test meant to fail
                };
                let service = service_fn(move |req| handle(Arc::clone(&st), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        });
        Upstream { server, state }
    }

    fn on(listener: std::net::TcpListener, name: &str, handler: Handler) -> Upstream {
        let state = Arc::new(State {
            name: name.to_owned(),
            handler,
            requests: Mutex::new(Vec::new()),
            streamed: Arc::default(),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        let server = Server::serve(listener, move |stream| {
            let st = Arc::clone(&st);
            async move {
                let service = service_fn(move |req| handle(Arc::clone(&st), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            }
        });
        Upstream { server, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.server.connections.load(Ordering::SeqCst)
    }

    /// Every request seen so far, in the order their bodies completed.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// Requests being handled now (a `Delay` upstream holds them), and the most at once so far.
    pub fn in_flight(&self) -> (usize, usize) {
        (
            self.state.in_flight.load(Ordering::SeqCst),
            self.state.peak_in_flight.load(Ordering::SeqCst),
        )
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("requests lock").len()
    }

    /// Body bytes a [`Handler::Stream`] upstream has produced so far: what hyper asked for,
    /// so at most what the socket took plus one 64 KiB piece. A proxy that stops reading
    /// holds this back.
    pub fn streamed_bytes(&self) -> u64 {
        self.state.streamed.load(Ordering::SeqCst)
    }
}

async fn handle(st: Arc<State>, mut req: Request<Incoming>) -> Result<Reply, Infallible> {
    let _in_flight = InFlight::begin(&st);
    let wants_upgrade = req.headers().contains_key(UPGRADE);
    let upgrade = (matches!(st.handler, Handler::WebSocket) && wants_upgrade).then(|| hyper::upgrade::on(&mut req));
    let (parts, mut incoming) = req.into_parts();
    if let Handler::Refuse(code) = st.handler {
        st.requests.lock().expect("requests lock").push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers: pairs(&parts.headers),
            body_len: 0,
            body_hash: 0,
            body_complete: false,
            trailers: Vec::new(),
        });
        let mut resp = Response::new(Full::new(Bytes::from_static(b"refused\n")).boxed());
        *resp.status_mut() = StatusCode::from_u16(code).expect("status code");
        return Ok(named(&st.name, resp));
    }
    let mut hash = BodyHash::default();
    let mut len = 0u64;
    let mut trailers = Vec::new();
    let mut body_complete = true;
    while let Some(frame) = incoming.frame().await {
        let Ok(frame) = frame else {
            body_complete = false;
            break;
        };
        match frame.into_data() {
            Ok(data) => {
                len += data.len() as u64;
                hash.update(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = pairs(&t);
                }
            }
        }
    }
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: pairs(&parts.headers),
        body_len: len,
        body_hash: hash.finish(),
        body_complete,
        trailers,
    };
    st.requests.lock().expect("requests lock").push(seen.clone());

    if let Some(on) = upgrade {
        return Ok(switch_protocols(on));
    }
    let reply = match &st.handler {
        Handler::Echo | Handler::WebSocket => echo(&st.name, &seen),
        Handler::Delay(d) => {
            tokio::time::sleep(*d).await;
            echo(&st.name, &seen)
        }
        Handler::Fixed(n) => named(
            &st.name,
            Response::new(Full::new(Bytes::from(body::fill(0, *n))).boxed()),
        ),
        Handler::Stream(n) => named(
            &st.name,
            Response::new(
                PatternBody {
                    at: 0,
                    len: *n,
                    streamed: Arc::clone(&st.streamed),
                }
                .boxed(),
            ),
        ),
        Handler::Refuse(_) => unreachable!("answered before the body"),
        Handler::Status(code) => {
            let mut resp = Response::new(Empty::new().boxed());
            *resp.status_mut() = StatusCode::from_u16(*code).expect("status code");
            named(&st.name, resp)
        }
    };
    Ok(reply)
}

/// Answers 101 and echoes whatever arrives on the upgraded connection.
fn switch_protocols(on: hyper::upgrade::OnUpgrade) -> Reply {
    tokio::spawn(async move {
        if let Ok(upgraded) = on.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    resp
}

fn echo(name: &str, seen: &Seen) -> Reply {
    let text = format!(
        "upstream={name}\nmethod={}\nuri={}\nhost={}\nbody_len={}\nbody_hash={}\n",
        seen.method,
        seen.uri,
        seen.header("host").unwrap_or("-"),
        seen.body_len,
        seen.body_hash
    );
    let mut resp = Response::new(Full::new(Bytes::from(text)).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    named(name, resp)
}

fn named(name: &str, mut resp: Reply) -> Reply {
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_str(name).expect("upstream name"));
    resp
}

fn pairs(map: &hyper::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// `len` pattern bytes, made 64 KiB at a time as hyper asks for them (no size hint: chunked).
struct PatternBody {
    at: u64,
    len: u64,
    streamed: Arc<AtomicU64>,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.at >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.at).min(64 * 1024) as usize;
        let data = body::fill(self.at, n);
        self.at += n as u64;
        self.streamed.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

/// A TCP accept loop on its own thread and current-thread runtime, calling `serve` for each
/// connection. Shared by hyper and raw upstreams; stops (dropping every connection) on drop.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub(super) fn start<F, Fut>(serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Server::serve(listener, serve)
    }

    /// Serves on an already bound listener.
    pub(super) fn serve<F, Fut>(listener: std::net::TcpListener, serve: F) -> Server
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("upstream addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("upstream-{addr}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let _ = stream.set_nodelay(true);
                                count.fetch_add(1, Ordering::SeqCst);
                                tokio::spawn(serve(stream));
                            }
                        }
                    }
                });
            })
            .expect("spawn upstream thread");
        Server {
            addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

//! An HTTP/2 client for kedge's HTTP/2 front end: the `h2` crate's client over tokio TCP (prior
//! knowledge, "h2c") or over tokio-rustls (ALPN `h2`), on a runtime of its own so that the
//! connection keeps running (SETTINGS, PING, WINDOW_UPDATE, GOAWAY) between a test's calls.
//! Requests are sent and read whole ([`H2::request`]) or driven by the test inside
//! [`H2::block_on`] when it needs to read slowly or to hold a stream open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Method, Request};
use tokio::net::TcpStream;

/// How long a test waits for a connection or a whole exchange before it fails.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP/2 connection to kedge.
pub struct H2 {
    send: SendRequest<Bytes>,
    /// The connection's own task; its result says how the connection ended.
    conn: Option<tokio::task::JoinHandle<Result<(), h2::Error>>>,
    /// `http` or `https`, for the `:scheme` of requests.
    scheme: &'static str,
    /// Declared last: dropped after the handles that live on it.
    rt: tokio::runtime::Runtime,
}

/// The settings a test may change from the `h2` defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct H2Options {
    /// This client's per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: Option<u32>,
    /// This client's connection receive window.
    pub conn_window: Option<u32>,
}

/// One answer, read to its end (or to the error that ended it).
#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    /// Names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// How the response body ended when it did not end cleanly (a RST_STREAM, a GOAWAY, a
    /// broken connection).
    pub body_error: Option<H2Error>,
}

/// An error from the `h2` crate, reduced to what tests compare.
#[derive(Debug, Clone)]
pub struct H2Error {
    /// The error code of a RST_STREAM or GOAWAY, if it was one.
    pub reason: Option<Reason>,
    pub is_reset: bool,
    pub is_remote: bool,
    /// The whole error, for failure messages.
    pub text: String,
}

impl From<&h2::Error> for H2Error {
    fn from(e: &h2::Error) -> H2Error {
        H2Error {
            reason: e.reason(),
            is_reset: e.is_reset(),
            is_remote: e.is_remote(),
            text: e.to_string(),
        }
    }
}

impl H2Response {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-upstream` header that the test upstreams set to their name.
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-upstream")
    }
}

impl H2 {
    /// HTTP/2 with prior knowledge on a plain connection.
    pub fn connect(addr: SocketAddr) -> H2 {
        H2::try_connect(addr, H2Options::default()).unwrap_or_else(|e| panic!("h2c connect to kedge at {addr}: {e}"))
    }

    /// HTTP/2 with prior knowledge, with `opts`; the error says what failed (TCP or the
    /// HTTP/2 handshake).
    pub fn try_connect(addr: SocketAddr, opts: H2Options) -> Result<H2, String> {
        let rt = runtime();
        let (send, conn) = rt.block_on(async {
            let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| "TCP connect timed out".to_owned())?
                .map_err(|e| format!("TCP connect: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            handshake(tcp, opts).await
        })?;
        Ok(H2::new(rt, send, conn, "http"))
    }

    /// HTTP/2 over TLS with `config` (which must offer ALPN `h2`), sending `sni`. Fails when
    /// the handshake fails or the server chose another protocol than `h2`.
    pub fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>, sni: &str) -> H2 {
        H2::try_connect_tls(addr, config, sni, H2Options::default())
            .unwrap_or_else(|e| panic!("h2 over TLS to kedge at {addr} ({sni}): {e}"))
    }

    pub fn try_connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
        opts: H2Options,
    ) -> Result<H2, String> {
        let rt = runtime();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let (send, conn) = rt.block_on(async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("TCP connect: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let tls = tokio::time::timeout(IO_TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let alpn = tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            if alpn.as_deref() != Some("h2") {
                return Err(format!("the server chose ALPN {alpn:?}, not \"h2\""));
            }
            handshake(tls, opts).await
        })?;
        Ok(H2::new(rt, send, conn, "https"))
    }

    fn new(
        rt: tokio::runtime::Runtime,
        send: SendRequest<Bytes>,
        conn: h2::client::Connection<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static, Bytes>,
        scheme: &'static str,
    ) -> H2 {
        let conn = rt.spawn(conn);
        H2 {
            send,
            conn: Some(conn),
            scheme,
            rt,
        }
    }

    /// A request head for `authority` and `path` (`:scheme` from the connection).
    pub fn req(&self, method: &str, authority: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("{}://{authority}{path}", self.scheme))
    }

    /// GET `path` on `authority`, read whole.
    pub fn get(&self, authority: &str, path: &str) -> H2Response {
        self.request(self.req("GET", authority, path).body(()).expect("request"), None)
    }

    /// Sends `head` (its HEADERS ending the stream when `body` is `None`) and `body` as DATA
    /// under flow control, and reads the answer whole. Panics when no answer head comes.
    pub fn request(&self, head: Request<()>, body: Option<Vec<u8>>) -> H2Response {
        let what = format!("{} {}", head.method(), head.uri());
        self.try_request(head, body)
            .unwrap_or_else(|e| panic!("{what} over HTTP/2: no response: {e:?}"))
    }

    /// As [`H2::request`]; `Err` when the stream or connection failed before a response head.
    pub fn try_request(&self, head: Request<()>, body: Option<Vec<u8>>) -> Result<H2Response, H2Error> {
        let send = self.send.clone();
        self.block_on(async move {
            tokio::time::timeout(IO_TIMEOUT, exchange(send, head, body))
                .await
                .unwrap_or_else(|_| panic!("no complete HTTP/2 exchange within {IO_TIMEOUT:?}"))
        })
    }

    /// A handle to open streams with from tasks (see [`exchange`]).
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }

    /// Runs `fut` on this connection's runtime.
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Runs `fut` on this connection's runtime; panics saying `what` when it takes longer
    /// than `timeout`.
    pub fn within<F: std::future::Future>(&self, timeout: Duration, what: &str, fut: F) -> F::Output {
        self.rt.block_on(async {
            tokio::time::timeout(timeout, fut)
                .await
                .unwrap_or_else(|_| panic!("{what}: not done within {timeout:?}"))
        })
    }

    /// Waits for a task spawned with [`H2::spawn`] (at most [`IO_TIMEOUT`]).
    pub fn join<T>(&self, task: tokio::task::JoinHandle<T>) -> T {
        self.within(IO_TIMEOUT, "an HTTP/2 exchange", task)
            .unwrap_or_else(|e| panic!("HTTP/2 task failed: {e}"))
    }

    /// Spawns `fut` on this connection's runtime.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(fut)
    }

    /// Waits until the server ends the connection and says how it ended: `Ok` for a clean
    /// end (after a GOAWAY with NO_ERROR and the close), else the error.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<(), H2Error> {
        let conn = self.conn.take().expect("the connection was already waited for");
        self.rt.block_on(async {
            match tokio::time::timeout(timeout, conn).await {
                Err(_) => panic!("the HTTP/2 connection was still open after {timeout:?}"),
                Ok(Err(join)) => panic!("the HTTP/2 connection task failed: {join}"),
                Ok(Ok(result)) => result.map_err(|e| H2Error::from(&e)),
            }
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn handshake<T>(io: T, opts: H2Options) -> Result<(SendRequest<Bytes>, h2::client::Connection<T, Bytes>), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    if let Some(w) = opts.stream_window {
        builder.initial_window_size(w);
    }
    if let Some(w) = opts.conn_window {
        builder.initial_connection_window_size(w);
    }
    let (send, conn) = tokio::time::timeout(IO_TIMEOUT, builder.handshake(io))
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_owned())?
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    Ok((send, conn))
}

/// Opens a stream with `head`, sends `body` (if any) from a task of its own while the answer
/// is read, and reads the answer whole. `Err` when no response head came.
pub async fn exchange(
    send: SendRequest<Bytes>,
    head: Request<()>,
    body: Option<Vec<u8>>,
) -> Result<H2Response, H2Error> {
    let (response, stream) = open(send, head, body.is_none()).await?;
    let sender = body.map(|b| tokio::spawn(send_body(stream, b)));
    let response = response.await.map_err(|e| H2Error::from(&e))?;
    let out = read_response(response, |_| None).await;
    if let Some(s) = sender {
        let _ = s.await; // a body refused half-way (413, a reset) is the answer's business
    }
    Ok(out)
}

/// Opens a stream: waits until the connection may open one, then sends `head`.
pub async fn open(
    send: SendRequest<Bytes>,
    head: Request<()>,
    end_stream: bool,
) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), H2Error> {
    let mut send = send.ready().await.map_err(|e| H2Error::from(&e))?;
    send.send_request(head, end_stream).map_err(|e| H2Error::from(&e))
}

/// Sends `body` as DATA frames under flow control (asking for capacity, sending what is
/// granted) and ends the stream.
pub async fn send_body(mut stream: SendStream<Bytes>, body: Vec<u8>) -> Result<(), H2Error> {
    let mut body = Bytes::from(body);
    if body.is_empty() {
        return stream.send_data(Bytes::new(), true).map_err(|e| H2Error::from(&e));
    }
    while !body.is_empty() {
        stream.reserve_capacity(body.len());
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(H2Error::from(&e)),
            None => return Err(H2Error::from(&h2::Error::from(Reason::CANCEL))),
        };
        let piece = body.split_to(granted.min(body.len()));
        stream
            .send_data(piece, body.is_empty())
            .map_err(|e| H2Error::from(&e))?;
    }
    Ok(())
}

/// Reads `response` whole. `pause` is asked after every DATA frame with the bytes read so far,
/// and may return how long to wait before giving the window back (a slow reader).
pub async fn read_response(
    response: http::Response<RecvStream>,
    mut pause: impl FnMut(u64) -> Option<Duration>,
) -> H2Response {
    let (parts, mut body) = response.into_parts();
    let mut out = H2Response {
        status: parts.status.as_u16(),
        headers: pairs(&parts.headers),
        body: Vec::new(),
        trailers: Vec::new(),
        body_error: None,
    };
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(data) => {
                out.body.extend_from_slice(&data);
                if let Some(d) = pause(out.body.len() as u64) {
                    tokio::time::sleep(d).await;
                }
                let _ = body.flow_control().release_capacity(data.len());
            }
            Err(e) => {
                out.body_error = Some(H2Error::from(&e));
                return out;
            }
        }
    }
    match body.trailers().await {
        Ok(Some(t)) => out.trailers = pairs(&t),
        Ok(None) => {}
        Err(e) => out.body_error = Some(H2Error::from(&e)),
    }
    out
}

fn pairs(map: &HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

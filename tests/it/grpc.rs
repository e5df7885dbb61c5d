//! gRPC to pods, end to end: HTTP/2 clients (the `h2` crate, h2c and TLS) through kedge to a
//! gRPC-style upstream written here with the `h2` crate's server (5-byte length-prefixed
//! messages, `content-type: application/grpc`, `grpc-status` trailers), plain (`grpc`) and TLS
//! with ALPN h2 (`grpcs`). Unary, server-, client- and bidirectional streaming, trailers and
//! trailers-only answers, resets both ways, an 8 MiB message, streams sharing one upstream
//! connection, a refused endpoint skipped, kedge's own errors as gRPC statuses, the static route
//! and the Ingress annotation, and what an HTTP/1.1 client gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Request, Response};
use serde_json::json;

use crate::support::h2_client::{H2, H2Response, open, read_response, send_body};
use crate::support::h2_frames;
use crate::support::objects::{ingress, ingress_class, service, slice};
use crate::support::tls::TestCa;
use crate::support::{Client, FakeApi, Kedge, TempDir, both_drivers};

const H2_ON: &str = "[http2]\nenabled = true\n";
const WAIT: Duration = Duration::from_secs(20);

/// A gRPC-style upstream: each method is the last segment of the path (see [`serve_stream`]).
struct GrpcUpstream {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// What the upstream saw of streams kedge reset (`reset <reason>`).
    events: std::sync::mpsc::Receiver<String>,
    _rt: tokio::runtime::Runtime,
}

impl GrpcUpstream {
    fn start(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> GrpcUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, events) = std::sync::mpsc::channel();
        let count = Arc::clone(&connections);
        rt.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(cfg) => {
                            let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                                return;
                            };
                            serve_conn(s, name, tx).await;
                        }
                        None => serve_conn(tcp, name, tx).await,
                    }
                });
            }
        });
        GrpcUpstream {
            addr,
            connections,
            events,
            _rt: rt,
        }
    }

    fn event(&self) -> String {
        self.events.recv_timeout(WAIT).expect("an event at the upstream")
    }
}

async fn serve_conn<T>(io: T, name: &'static str, tx: std::sync::mpsc::Sender<String>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(100)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        let tx = tx.clone();
        tokio::spawn(serve_stream(req, respond, name, tx));
    }
}

/// A pod that answers every stream with GOAWAY (NO_ERROR) naming an earlier last stream id,
/// then closes: the stream was not processed (RFC 9113 §8.7). Raw frames on blocking sockets.
struct GoawayUpstream {
    addr: SocketAddr,
    /// GOAWAY frames sent.
    goaways: Arc<AtomicUsize>,
}

impl GoawayUpstream {
    fn start() -> GoawayUpstream {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let goaways = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&goaways);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                let count = Arc::clone(&count);
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(WAIT));
                    let mut preface = [0u8; 24];
                    if s.read_exact(&mut preface).is_err() {
                        return;
                    }
                    let _ = s.write_all(&h2_frames::frame(h2_frames::SETTINGS, 0, 0, &[]));
                    let mut head = [0u8; 9];
                    while s.read_exact(&mut head).is_ok() {
                        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                        let mut payload = vec![0u8; len];
                        if s.read_exact(&mut payload).is_err() {
                            return;
                        }
                        match head[3] {
                            h2_frames::SETTINGS if head[4] & h2_frames::ACK == 0 => {
                                let _ = s.write_all(&h2_frames::frame(h2_frames::SETTINGS, h2_frames::ACK, 0, &[]));
                            }
                            h2_frames::HEADERS => {
                                // Last stream id 0: none of kedge's streams was processed.
                                let mut goaway = 0u32.to_be_bytes().to_vec();
                                goaway.extend_from_slice(&h2_frames::NO_ERROR.to_be_bytes());
                                let _ = s.write_all(&h2_frames::frame(h2_frames::GOAWAY, 0, 0, &goaway));
                                count.fetch_add(1, Ordering::SeqCst);
                                // Close once kedge has read it (a close with unread bytes
                                // would be a reset that can overtake the GOAWAY).
                                let _ = s.shutdown(std::net::Shutdown::Write);
                                while s.read(&mut head).is_ok_and(|n| n > 0) {}
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        GoawayUpstream { addr, goaways }
    }
}

/// Splits complete length-prefixed messages off `buf`.
fn messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// One message, length-prefixed.
fn frame(msg: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(5 + msg.len());
    b.push(0);
    b.extend_from_slice(&u32::try_from(msg.len()).expect("size").to_be_bytes());
    b.extend_from_slice(msg);
    b.into()
}

fn grpc_head(name: &str) -> Response<()> {
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("x-upstream", name)
        .body(())
        .expect("head")
}

fn ok_trailers(extra: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("x-custom", extra.parse().unwrap());
    t
}

/// The methods: `Unary` and `Bidi` echo each message as it arrives; `ClientStream` answers one
/// `count=N` message at the end; `ServerStream` sends as many messages as its request says;
/// `TrailersOnly` answers NOT_FOUND in one HEADERS frame; `Reset` sends one message then resets
/// (ENHANCE_YOUR_CALM); `Hang` sends headers and reports the reset it waits for;
/// `Silent` reports `silent started`, answers nothing and reports the reset it waits for
/// (`silent reset <reason>`);
/// `WithHsts` is `Unary` with a Strict-Transport-Security field in its answer;
/// `RefusedBy<name>` is refused (RST_STREAM REFUSED_STREAM, reported as `refused`) by the
/// upstream called `name` and is `Unary` elsewhere. A request body broken off by a reset is
/// reported as `<method> reset`.
async fn serve_stream(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    name: &'static str,
    tx: std::sync::mpsc::Sender<String>,
) {
    let mut method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
    if let Some(who) = method.strip_prefix("RefusedBy") {
        if who == name {
            respond.send_reset(Reason::REFUSED_STREAM);
            let _ = tx.send("refused".to_owned());
            return;
        }
        method = "Unary".to_owned();
    }
    let te = req.headers().get("te").map(|v| v.to_str().unwrap_or("").to_owned());
    let client_trailer = Arc::new(std::sync::Mutex::new(String::new()));
    let mut body = req.into_body();
    if method == "TrailersOnly" {
        let mut head = grpc_head(name);
        head.headers_mut().insert("grpc-status", "5".parse().unwrap());
        head.headers_mut()
            .insert("grpc-message", "no such thing".parse().unwrap());
        let _ = respond.send_response(head, true);
        return;
    }
    if method == "Silent" {
        let _ = tx.send("silent started".to_owned());
        let reason = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        let reason = reason.map_or_else(|e| format!("error {e}"), |r| format!("{r:?}"));
        let _ = tx.send(format!("silent reset {reason}"));
        return;
    }
    let mut head = grpc_head(name);
    if method == "WithHsts" {
        head.headers_mut()
            .insert("strict-transport-security", "max-age=60".parse().unwrap());
        method = "Unary".to_owned();
    }
    let Ok(mut send) = respond.send_response(head, false) else {
        return;
    };
    if method == "Hang" {
        let reason = std::future::poll_fn(|cx| send.poll_reset(cx)).await;
        let reason = reason.map_or_else(|e| format!("error {e}"), |r| format!("{r:?}"));
        let _ = tx.send(format!("reset {reason}"));
        return;
    }
    let mut buf = BytesMut::new();
    let mut count = 0usize;
    let mut total = 0usize;
    loop {
        let data = match body.data().await {
            None => break,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                let _ = tx.send(format!("{} reset", method.to_lowercase()));
                return;
            }
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
        for m in messages(&mut buf) {
            count += 1;
            total += m.len();
            match method.as_str() {
                "Unary" | "Bidi" => {
                    let _ = send.send_data(frame(&m), false);
                }
                "ServerStream" => {
                    let n: usize = std::str::from_utf8(&m).unwrap_or("0").parse().unwrap_or(0);
                    for i in 0..n {
                        let _ = send.send_data(frame(format!("msg {i}").as_bytes()), false);
                    }
                }
                "Reset" => {
                    let _ = send.send_data(frame(&m), false);
                    send.send_reset(Reason::ENHANCE_YOUR_CALM);
                    return;
                }
                _ => {}
            }
        }
    }
    if let Ok(Some(t)) = body.trailers().await {
        *client_trailer.lock().unwrap() = t
            .get("x-client-trailer")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
    }
    if method == "ClientStream" {
        let _ = send.send_data(frame(format!("count={count} bytes={total}").as_bytes()), false);
    }
    let seen = client_trailer.lock().unwrap().clone();
    let _ = send.send_trailers(ok_trailers(&format!(
        "te={} client-trailer={seen}",
        te.unwrap_or_default()
    )));
}

/// A gRPC request head for `method`.
fn call_head(h2: &H2, authority: &str, method: &str) -> Request<()> {
    h2.req("POST", authority, &format!("/test.Echo/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// The messages of a whole response body.
fn body_messages(resp: &H2Response) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::from(&resp.body[..]);
    let out = messages(&mut buf).into_iter().map(|b| b.to_vec()).collect();
    assert!(buf.is_empty(), "a partial message at the end");
    out
}

fn trailer<'a>(resp: &'a H2Response, name: &str) -> Option<&'a str> {
    resp.trailers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// One call: `msgs` sent whole, the answer read whole.
fn call(h2: &H2, authority: &str, method: &str, msgs: &[&[u8]]) -> H2Response {
    let body: Vec<u8> = msgs.iter().flat_map(|m| frame(m).to_vec()).collect();
    h2.request(call_head(h2, authority, method), Some(body))
}

fn grpc_route(upstreams: &[SocketAddr], protocol: &str, extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[route]]\nupstreams = [{}]\nupstream_protocol = \"{protocol}\"\n{extra}",
        list.join(", ")
    )
}

fn start(driver: crate::support::Driver, fragment: &str) -> Kedge {
    Kedge::setup(driver).tables(H2_ON).start(fragment)
}

both_drivers!(
    /// Unary, server-streaming and client-streaming calls with their trailers; `te: trailers`
    /// reaches the upstream, and client trailers too.
    fn unary_and_streaming_calls(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());

        let r = call(&h2, "api.example", "Unary", &[b"hello"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/grpc"));
        assert_eq!(r.upstream(), Some("g1"));
        assert_eq!(body_messages(&r), vec![b"hello".to_vec()]);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"), "{r:?}");
        assert_eq!(trailer(&r, "x-custom"), Some("te=trailers client-trailer="));

        let r = call(&h2, "api.example", "ServerStream", &[b"5"]);
        let got = body_messages(&r);
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], b"msg 4");
        assert_eq!(trailer(&r, "grpc-status"), Some("0"));

        let r = call(&h2, "api.example", "ClientStream", &[b"a", b"bb", b"ccc"]);
        assert_eq!(body_messages(&r), vec![b"count=3 bytes=6".to_vec()]);

        // Client trailers pass to the upstream.
        let send = h2.sender();
        let head = call_head(&h2, "api.example", "ClientStream");
        let r = h2.within(WAIT, "a call with client trailers", async move {
            let (resp, mut stream) = open(send, head, false).await.expect("open");
            stream.send_data(frame(b"x"), false).expect("data");
            let mut t = HeaderMap::new();
            t.insert("x-client-trailer", "yes".parse().unwrap());
            stream.send_trailers(t).expect("trailers");
            read_response(resp.await.expect("head"), |_| None).await
        });
        assert_eq!(trailer(&r, "x-custom"), Some("te=trailers client-trailer=yes"), "{r:?}");
    }
);

both_drivers!(
    /// A bidirectional stream, ping-pong: each answer arrives before the next message is sent,
    /// which only full duplex allows.
    fn bidirectional_ping_pong(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        let send = h2.sender();
        let head = call_head(&h2, "api.example", "Bidi");
        let trailers = h2.within(WAIT, "ping-pong", async move {
            let (resp, mut stream) = open(send, head, false).await.expect("open");
            stream.send_data(frame(b"ping 0"), false).expect("data");
            let resp = resp.await.expect("head");
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            for i in 0..10 {
                let want = format!("ping {i}");
                let got = loop {
                    if let Some(m) = messages(&mut buf).pop() {
                        break m;
                    }
                    let data = body.data().await.expect("more").expect("data");
                    let _ = body.flow_control().release_capacity(data.len());
                    buf.extend_from_slice(&data);
                };
                assert_eq!(&got[..], want.as_bytes());
                if i < 9 {
                    stream.send_data(frame(format!("ping {}", i + 1).as_bytes()), false).expect("data");
                }
            }
            stream.send_data(Bytes::new(), true).expect("end");
            assert!(body.data().await.is_none());
            body.trailers().await.expect("trailers").expect("some")
        });
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    }
);

both_drivers!(
    /// A trailers-only answer stays one HEADERS frame; an upstream reset reaches the client with
    /// its code; a client reset reaches the upstream.
    fn trailers_only_and_resets_both_ways(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());

        let r = call(&h2, "api.example", "TrailersOnly", &[b"x"]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("grpc-status"), Some("5"), "{r:?}");
        assert_eq!(r.header("grpc-message"), Some("no such thing"));
        assert!(r.body.is_empty() && r.trailers.is_empty());

        // The pod resets right after its headers: the client sees the reset, before or after
        // the headers depending on when kedge read them.
        let body = frame(b"x").to_vec();
        let err = match h2.try_request(call_head(&h2, "api.example", "Reset"), Some(body)) {
            Ok(r) => r.body_error.expect("a reset"),
            Err(e) => e,
        };
        assert!(err.is_reset, "{err:?}");
        assert!(
            matches!(err.reason, Some(Reason::ENHANCE_YOUR_CALM | Reason::INTERNAL_ERROR)),
            "{err:?}"
        );

        let send = h2.sender();
        let head = call_head(&h2, "api.example", "Hang");
        h2.within(WAIT, "a call the client cancels", async move {
            let (resp, mut stream) = open(send, head, false).await.expect("open");
            stream.send_data(frame(b"x"), false).expect("data");
            let resp = resp.await.expect("head");
            assert_eq!(resp.status(), 200);
            stream.send_reset(Reason::CANCEL);
        });
        assert_eq!(up.event(), "reset CANCEL");
    }
);

both_drivers!(
    /// The read timeout (1 s here) applies between messages: a bidirectional stream whose
    /// messages come every 250 ms lives on past it; once it goes quiet, the client gets
    /// UNAVAILABLE in the trailers and the pod a reset. (The pauses are the subject, not a way
    /// to wait for something.)
    fn timeouts_apply_between_messages(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = Kedge::setup(driver)
            .tables(&format!("{H2_ON}[upstream]\nread_timeout = \"1s\"\n"))
            .start(&grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        let send = h2.sender();
        let head = call_head(&h2, "api.example", "Bidi");
        let trailers = h2.within(WAIT, "a long stream", async move {
            let (resp, mut stream) = open(send, head, false).await.expect("open");
            stream.send_data(frame(b"0"), false).expect("data");
            let mut body = resp.await.expect("head").into_body();
            let mut buf = BytesMut::new();
            for i in 0..10 {
                let got = loop {
                    if let Some(m) = messages(&mut buf).pop() {
                        break m;
                    }
                    let data = body.data().await.expect("more").expect("data");
                    let _ = body.flow_control().release_capacity(data.len());
                    buf.extend_from_slice(&data);
                };
                assert_eq!(&got[..], i.to_string().as_bytes());
                tokio::time::sleep(Duration::from_millis(250)).await;
                stream.send_data(frame((i + 1).to_string().as_bytes()), false).expect("data");
            }
            // Quiet from here: the echo of the last message, then the timeout.
            while let Some(d) = body.data().await {
                let _ = body.flow_control().release_capacity(d.expect("data").len());
            }
            body.trailers().await.expect("trailers").expect("some")
        });
        assert_eq!(trailers.get("grpc-status").unwrap(), "14", "{trailers:?}");
        assert_eq!(up.event(), "bidi reset");
    }
);

both_drivers!(
    /// An 8 MiB message each way, under flow control (the route's `max_body` counts every
    /// request byte of a stream, as for any request).
    fn an_eight_mebibyte_message(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", "max_body = \"16m\"\n"));
        let h2 = H2::connect(kedge.addr());
        let big: Vec<u8> = (0..(8u32 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let r = call(&h2, "api.example", "Unary", &[&big]);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"), "{:?}", r.body_error);
        let got = body_messages(&r);
        assert_eq!(got.len(), 1);
        assert!(got[0] == big, "the message came back changed");
    }
);

both_drivers!(
    /// Streams share the upstream connection: twenty concurrent calls from the start (those
    /// that arrive while it is being opened wait for it), over one connection.
    fn concurrent_streams_share_one_connection(driver) {
        let up = GrpcUpstream::start("g1", None);
        let kedge = Kedge::setup(driver).workers(1).tables(H2_ON).start(&grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let send = h2.sender();
                let head = call_head(&h2, "api.example", "Unary");
                h2.spawn(async move {
                    let (resp, stream) = open(send, head, false).await.expect("open");
                    let msg = format!("call {i}");
                    tokio::spawn(send_body(stream, frame(msg.as_bytes()).to_vec()));
                    let r = read_response(resp.await.expect("head"), |_| None).await;
                    (msg, r)
                })
            })
            .collect();
        for t in tasks {
            let (msg, r) = h2.join(t);
            assert_eq!(body_messages(&r), vec![msg.into_bytes()]);
            assert_eq!(trailer(&r, "grpc-status"), Some("0"));
        }
        assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    }
);

both_drivers!(
    /// An endpoint that refuses connections is skipped: every call lands on the other one.
    fn a_refused_endpoint_is_skipped(driver) {
        let up = GrpcUpstream::start("alive", None);
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let kedge = start(driver, &grpc_route(&[dead_addr, up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        for _ in 0..4 {
            let r = call(&h2, "api.example", "Unary", &[b"x"]);
            assert_eq!(r.upstream(), Some("alive"), "{r:?}");
            assert_eq!(trailer(&r, "grpc-status"), Some("0"));
        }
    }
);

both_drivers!(
    /// A stream the upstream refuses (REFUSED_STREAM), or leaves out of its GOAWAY, was not
    /// processed (RFC 9113 §8.7): it goes to the next endpoint with its body, within the route's
    /// tries; with every endpoint refusing, the client gets UNAVAILABLE.
    fn a_refused_stream_is_retried_on_another_endpoint(driver) {
        let refusing = GrpcUpstream::start("r1", None);
        let ok = GrpcUpstream::start("ok", None);
        let kedge = start(driver, &grpc_route(&[refusing.addr, ok.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        for i in 0..6 {
            let msg = format!("call {i}");
            let r = call(&h2, "api.example", "RefusedByr1", &[msg.as_bytes()]);
            assert_eq!(r.upstream(), Some("ok"), "{r:?}");
            assert_eq!(body_messages(&r), vec![msg.into_bytes()], "the body was not sent again whole");
            assert_eq!(trailer(&r, "grpc-status"), Some("0"));
        }
        let refusals = refusing.events.try_iter().filter(|e| e == "refused").count();
        assert!(refusals >= 1, "no call went to the refusing endpoint first");

        // A pod going away leaves a stream out of its GOAWAY (last stream id below it): not
        // processed either.
        let leaving = GoawayUpstream::start();
        let kedge2 = start(driver, &grpc_route(&[leaving.addr, ok.addr], "grpc", ""));
        let h2b = H2::connect(kedge2.addr());
        for i in 0..4 {
            let msg = format!("after goaway {i}");
            let r = call(&h2b, "api.example", "Unary", &[msg.as_bytes()]);
            assert_eq!(r.upstream(), Some("ok"), "{r:?}");
            assert_eq!(body_messages(&r), vec![msg.into_bytes()]);
        }
        assert!(leaving.goaways.load(Ordering::SeqCst) >= 1, "no call went to the leaving pod first");

        let alone = start(driver, &grpc_route(&[refusing.addr], "grpc", ""));
        let h2 = H2::connect(alone.addr());
        let r = call(&h2, "api.example", "RefusedByr1", &[b"x"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
        assert_eq!(refusing.event(), "refused");
    }
);

both_drivers!(
    /// Over TLS kedge adds its Strict-Transport-Security field to gRPC answers, unless the pod
    /// sent one: then the pod's alone.
    fn hsts_is_added_once(driver) {
        let ca = TestCa::new();
        let dir = TempDir::new("grpc-hsts");
        let leaf = ca.leaf(&["api.example"]);
        let (cert, key) = leaf.write(&dir, "default");
        let up = GrpcUpstream::start("g", None);
        let frag = format!(
            "[tls]\ndefault_cert = \"{}\"\ndefault_key = \"{}\"\n\n{}",
            cert.display(),
            key.display(),
            grpc_route(&[up.addr], "grpc", "")
        );
        let kedge = Kedge::setup(driver).tls().tables(H2_ON).start(&frag);
        let h2 = H2::connect_tls(kedge.tls_addr(), ca.client_alpn(&[b"h2"]), "api.example");
        let hsts = |r: &H2Response| -> Vec<String> {
            r.headers
                .iter()
                .filter(|(n, _)| n == "strict-transport-security")
                .map(|(_, v)| v.clone())
                .collect()
        };
        let r = call(&h2, "api.example", "Unary", &[b"x"]);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"), "{r:?}");
        assert_eq!(hsts(&r), ["max-age=31536000; includeSubDomains"], "kedge's HSTS: {r:?}");
        let r = call(&h2, "api.example", "WithHsts", &[b"x"]);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"), "{r:?}");
        assert_eq!(hsts(&r), ["max-age=60"], "{r:?}");
    }
);

both_drivers!(
    /// `grpc-timeout` bounds the call: past it the client gets DEADLINE_EXCEEDED (trailers-only
    /// when the pod sent no headers yet, else in the trailers of the open answer) and the pod's
    /// stream is cancelled.
    fn grpc_timeout_ends_the_call_with_deadline_exceeded(driver) {
        let up = GrpcUpstream::start("g", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", ""));
        let h2 = H2::connect(kedge.addr());
        let with_timeout = |method: &str| {
            let mut head = call_head(&h2, "api.example", method);
            head.headers_mut().insert("grpc-timeout", "300m".parse().unwrap());
            let started = std::time::Instant::now();
            let r = h2.request(head, Some(frame(b"x").to_vec()));
            (r, started.elapsed())
        };
        let (r, took) = with_timeout("Silent");
        assert_eq!(up.event(), "silent started");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("grpc-status"), Some("4"), "trailers-only DEADLINE_EXCEEDED: {r:?}");
        assert!(r.body.is_empty() && r.trailers.is_empty(), "{r:?}");
        assert!(took >= Duration::from_millis(300), "answered before the deadline: {took:?}");
        assert_eq!(up.event(), "silent reset CANCEL");

        let (r, _) = with_timeout("Hang");
        assert_eq!(r.header("x-upstream"), Some("g"), "the pod's head: {r:?}");
        assert_eq!(trailer(&r, "grpc-status"), Some("4"), "{r:?}");
        assert_eq!(up.event(), "reset CANCEL");

        // Within its deadline a call is untouched.
        let mut head = call_head(&h2, "api.example", "Unary");
        head.headers_mut().insert("grpc-timeout", "10S".parse().unwrap());
        let r = h2.request(head, Some(frame(b"y").to_vec()));
        assert_eq!(trailer(&r, "grpc-status"), Some("0"), "{r:?}");
    }
);

both_drivers!(
    /// Rapid Reset against a gRPC backend: calls the client resets once their stream reached
    /// the pod (and before its answer) count as on HTTP/1.1 upstreams; past 100 and half the
    /// streams the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    fn a_reset_flood_of_grpc_calls_ends_the_connection(driver) {
        let up = GrpcUpstream::start("g", None);
        let kedge = start(driver, &grpc_route(&[up.addr], "grpc", ""));
        let mut raw = h2_frames::RawH2::connect(kedge.addr());
        let call = |path: &'static str| {
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "api.example"),
                (":path", path),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        };
        let reset_once_at_the_pod = |raw: &mut h2_frames::RawH2, id: u32| {
            raw.headers(id, &call("/test.Echo/Silent"), true);
            assert_eq!(up.event(), "silent started");
            raw.reset(id, h2_frames::CANCEL);
            assert_eq!(up.event(), "silent reset CANCEL");
        };
        let mut id = 1;
        for _ in 0..100 {
            reset_once_at_the_pod(&mut raw, id);
            id += 2;
        }
        raw.headers(id, &call("/test.Echo/TrailersOnly"), true);
        let end = raw.finish(id);
        assert!(end.ended() && end.reset.is_none(), "100 resets of 101 streams: still served: {end:?}");
        id += 2;
        reset_once_at_the_pod(&mut raw, id);
        let goaway = raw
            .wait_frame(|f| f.kind == h2_frames::GOAWAY && f.error_code() != Some(h2_frames::NO_ERROR))
            .unwrap_or_else(|| panic!("no GOAWAY after the flood: {:?}", raw.received.last()));
        assert_eq!(goaway.error_code(), Some(h2_frames::ENHANCE_YOUR_CALM), "{goaway:?}");
        assert!(raw.closed_within(Duration::from_secs(5)), "the flooding connection stayed open");
    }
);

both_drivers!(
    /// kedge's own errors for gRPC requests are gRPC statuses in a trailers-only 200: no route
    /// UNIMPLEMENTED, no endpoint and connect failures UNAVAILABLE. An HTTP/1.1 request to a
    /// gRPC backend gets a 502 saying why.
    fn own_errors_are_grpc_statuses(driver) {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        drop(dead);
        let kedge = start(
            driver,
            &format!(
                "{}path = \"/test.Echo/\"\nhost = \"api.example\"\n",
                grpc_route(&[dead_addr], "grpc", "")
            ),
        );
        let h2 = H2::connect(kedge.addr());
        let r = call(&h2, "other.example", "Unary", &[b"x"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("grpc-status"), Some("12"), "{r:?}");
        assert!(r.header("grpc-message").is_some_and(|m| m.contains("no route")), "{r:?}");
        assert!(r.body.is_empty() && r.trailers.is_empty());

        let r = call(&h2, "api.example", "Unary", &[b"x"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
        assert!(r.header("grpc-message").is_some_and(|m| m.contains("connect")), "{r:?}");

        let mut c = Client::connect(kedge.addr());
        let resp = c.get("api.example", "/test.Echo/Unary");
        assert_eq!(resp.status, 502);
        assert!(String::from_utf8_lossy(&resp.body).contains("HTTP/2"), "{resp:?}");
    }
);

both_drivers!(
    /// `upstream_protocol = "grpcs"`: TLS with ALPN h2 to the upstream, verified against a CA.
    fn grpcs_to_the_upstream(driver) {
        let ca = TestCa::new();
        let leaf = ca.leaf(&["grpc.internal"]);
        let mut server = Arc::unwrap_or_clone(leaf.server_config());
        server.alpn_protocols = vec![b"h2".to_vec()];
        let up = GrpcUpstream::start("secure", Some(Arc::new(server)));
        let dir = TempDir::new("grpcs");
        let ca_path = dir.write("ca.pem", leaf.ca_pem());
        let kedge = Kedge::setup(driver).tables(H2_ON).start(&grpc_route(
            &[up.addr],
            "grpcs",
            &format!(
                "upstream_ca = \"{}\"\nupstream_server_name = \"grpc.internal\"\n",
                ca_path.display()
            ),
        ));
        let h2 = H2::connect(kedge.addr());
        let r = call(&h2, "api.example", "ServerStream", &[b"3"]);
        assert_eq!(r.upstream(), Some("secure"), "{r:?}");
        assert_eq!(body_messages(&r).len(), 3);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"));
    }
);

/// `backend-protocol: GRPC` on an Ingress routes gRPC over h2c to the Service's pods.
#[test]
fn ingress_backend_protocol_grpc() {
    let up = GrpcUpstream::start("pod", None);
    let api = FakeApi::start();
    api.apply("ingressclasses", ingress_class());
    api.apply("services", service("echo"));
    api.apply("endpointslices", slice("echo", up.addr.port(), &["127.0.0.1"]));
    let mut ing = ingress("echo", "kedge", "grpc.example.com", "/", "echo");
    ing["metadata"]["annotations"] = json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"});
    api.apply("ingresses", ing);
    let dir = TempDir::new("grpc-ingress");
    let kedge = Kedge::setup(crate::support::Driver::default())
        .tables(H2_ON)
        .follow(&api, &dir, "");
    let h2 = H2::connect(kedge.addr());
    let r = call(&h2, "grpc.example.com", "Unary", &[b"over ingress"]);
    assert_eq!(r.upstream(), Some("pod"), "{r:?}");
    assert_eq!(body_messages(&r), vec![b"over ingress".to_vec()]);
    assert_eq!(trailer(&r, "grpc-status"), Some("0"));
}

/// A GRPCRoute: service/method and header matches, weights (0 gets nothing), a response
/// header filter, on an HTTP/2 (h2c) backend; a call no rule matches gets kedge's 404 as a
/// gRPC status.
#[test]
fn grpcroute_methods_headers_and_weights() {
    use crate::gateway_routes::{GW, gateway, gateway_class};
    let (cart, pay, never) = (
        GrpcUpstream::start("cart", None),
        GrpcUpstream::start("pay", None),
        GrpcUpstream::start("never", None),
    );
    let api = FakeApi::start();
    api.install_gateway_api();
    for (name, up) in [("cart", &cart), ("pay", &pay), ("never", &never)] {
        api.apply("services", service(name));
        api.apply("endpointslices", slice(name, up.addr.port(), &["127.0.0.1"]));
    }
    api.apply("gatewayclasses", gateway_class());
    let dir = TempDir::new("grpcroute");
    let kedge = Kedge::setup(crate::support::Driver::default())
        .tables(H2_ON)
        .follow(&api, &dir, "");
    api.apply("gateways", gateway("edge", kedge.addr().port(), &[]));
    let to = |svc: &str, weight: u32| json!({"name": svc, "port": 80, "weight": weight});
    api.apply(
        "grpcroutes",
        json!({"apiVersion": GW, "kind": "GRPCRoute", "metadata": {"name": "rpc", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "edge"}], "hostnames": ["rpc.example.com"], "rules": [
            {"matches": [{"method": {"service": "test.Echo", "method": "Unary"}}],
             "backendRefs": [to("cart", 1), to("never", 0)]},
            {"matches": [{"method": {"type": "RegularExpression", "service": "test\\.E.*", "method": "Bi.*"}}],
             "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                 "set": [{"name": "x-upstream", "value": "pay-renamed"}], "add": [{"name": "x-gw", "value": "yes"}]}}],
             "backendRefs": [to("pay", 1)]},
            {"matches": [{"headers": [{"name": "x-route", "value": "pay"}]}],
             "backendRefs": [to("pay", 1)]},
        ]}}),
    );
    let h2 = H2::connect(kedge.addr());
    crate::support::wait_until(WAIT, "the GRPCRoute", || {
        call(&h2, "rpc.example.com", "Unary", &[b"x"]).upstream() == Some("cart")
    });
    for _ in 0..20 {
        let r = call(&h2, "rpc.example.com", "Unary", &[b"hello"]);
        assert_eq!(r.upstream(), Some("cart"), "{r:?}");
        assert_eq!(body_messages(&r), vec![b"hello".to_vec()]);
        assert_eq!(trailer(&r, "grpc-status"), Some("0"));
    }
    assert_eq!(never.connections.load(Ordering::SeqCst), 0, "weight 0 gets nothing");
    let r = call(&h2, "rpc.example.com", "Bidi", &[b"b"]);
    assert_eq!(
        (r.upstream(), r.header("x-gw")),
        (Some("pay-renamed"), Some("yes")),
        "{r:?}"
    );
    assert_eq!(body_messages(&r), vec![b"b".to_vec()]);
    let mut head = call_head(&h2, "rpc.example.com", "ServerStream");
    head.headers_mut().insert("x-route", "pay".parse().unwrap());
    let r = h2.request(head, Some(frame(b"2").to_vec()));
    assert_eq!(r.upstream(), Some("pay"));
    assert_eq!(body_messages(&r).len(), 2);
    // No rule: kedge's 404, as gRPC UNIMPLEMENTED (12).
    let r = call(&h2, "rpc.example.com", "ClientStream", &[b"c"]);
    assert_eq!(r.upstream(), None);
    assert_eq!(
        trailer(&r, "grpc-status").or(r.header("grpc-status")),
        Some("12"),
        "{r:?}"
    );
}

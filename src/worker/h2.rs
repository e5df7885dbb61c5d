//! The HTTP/2 front end: one client connection served with hyperium `h2`, each stream run
//! through the same request phases as an HTTP/1.1 request (view → decide → checks → answer |
//! forward → respond → log), to HTTP/1.1 upstreams.
//!
//! `h2` speaks tokio's `AsyncRead`/`AsyncWrite`; the client stream (plain TCP or kedge's own TLS
//! stream, both owned-buffer monoio streams) is split into halves and adapted by [`Duplex`]:
//! one copy each way through its buffers, and `h2`'s frames gathered into one write per flush
//! (a 64 KiB answer: one or two writes, not eight; see [`Writer`]). monoio's `poll-io` would only
//! cover the TCP stream (measured, not kept: BENCHMARKS.md). No tokio runtime is involved: `h2`
//! is polled by this connection's monoio task.
//!
//! The connection task drives the connection (accepting streams) and spawns one monoio task per
//! stream. It closes the connection with GOAWAY when the worker stops, after `max_requests`
//! streams, and after `[client] keepalive_timeout` without an open stream. Bodies stream with
//! flow control both ways: request DATA is released to the client only once written upstream,
//! response bytes are read from the upstream only once the client granted window for the bytes
//! before them.

use std::cell::Cell;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::bufs::{BufPool, Class, Lease, PairsLease};
use super::checks;
use super::client;
use super::decide::{self, Decision, Forward};
use super::error::{ErrorKind, RequestError};
use super::forward::{self, SendBody, Sending};
use super::forward_h2;
use super::log::{self, Record};
use super::pump::{self, ReadResult};
use super::request::{self, Body, RequestView};
use super::respond;
use super::session::{ClientStream, Ctx, PeerText, UpstreamBufs};
use super::upstream::UpstreamStream;
use super::{Snapshot, Worker};
use crate::http::{self as h1, ChunkEvent, ChunkedDecoder, Framing, HeaderSpan, Parsed, ResponseHead};

/// The client connection preface (RFC 9113 §3.4) that starts HTTP/2 with prior knowledge.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What every stream of a connection shares.
struct ConnInfo {
    peer: SocketAddr,
    /// The local address the connection arrived on (Gateway scope; its port is the listener's).
    local: SocketAddr,
    scheme: &'static str,
    /// The client's IP address as X-Forwarded-For carries it.
    peer_text: PeerText,
    /// Streams running, and when the last one ended (the idle timeout).
    open: Cell<usize>,
    /// Streams accepted, and those the client reset before their answer began (see
    /// [`too_many_resets`]); `flood` fires when the latter are too many.
    accepted: Cell<u32>,
    premature_resets: Cell<u32>,
    /// Fired when the connection is to end with GOAWAY ENHANCE_YOUR_CALM; `flood_kind` says
    /// why (the counter to count it in).
    flood: super::Stopping,
    flood_kind: Cell<&'static crate::stats::Counter>,
    /// What the client's frames looked like so far, to tell `h2`'s ENHANCE_YOUR_CALM apart.
    frames: Cell<FrameStats>,
    last_end: Cell<Instant>,
    /// `[http2] max_concurrent_streams`: stream tasks beyond it are refused (see [`stream`]),
    /// and whether that happened.
    max_streams: usize,
    over_limit: Cell<bool>,
}

impl ConnInfo {
    /// The client reset a stream kedge had taken before its answer began (see
    /// [`too_many_resets`]).
    fn premature_reset(&self) {
        let resets = self.premature_resets.get() + 1;
        self.premature_resets.set(resets);
        if too_many_resets(resets, self.accepted.get()) {
            self.flooded(&crate::stats::H2_RAPID_RESET);
        }
    }

    /// Ends the connection with GOAWAY ENHANCE_YOUR_CALM, counted in `kind`.
    fn flooded(&self, kind: &'static crate::stats::Counter) {
        if !self.flood.is_set() {
            self.flood_kind.set(kind);
            self.flood.fire();
        }
    }
}

/// Streams a connection may make kedge reset with a stream error (MadeYouReset,
/// CVE-2025-8671: WINDOW_UPDATE 0 or DATA on a half-closed stream, malformed requests) before
/// `h2` ends it with GOAWAY ENHANCE_YOUR_CALM.
const MAX_LOCAL_ERROR_RESETS: usize = 100;

/// Serves one HTTP/2 connection until it closes. `early`: bytes already read from `client`
/// (the preface, on a plain listener).
pub(super) async fn serve<S: ClientStream + Unpin>(
    worker: &Rc<Worker>,
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
    early: Vec<u8>,
) {
    let snap = worker.snapshot();
    let settings = &snap.http2;
    let peer_text = PeerText::new(peer.ip());
    let info = Rc::new(ConnInfo {
        peer,
        local,
        scheme: S::SCHEME,
        peer_text,
        open: Cell::new(0),
        accepted: Cell::new(0),
        premature_resets: Cell::new(0),
        flood: super::Stopping::default(),
        flood_kind: Cell::new(&crate::stats::H2_RAPID_RESET),
        frames: Cell::new(FrameStats::default()),
        last_end: Cell::new(Instant::now()),
        max_streams: settings.max_concurrent_streams as usize,
        over_limit: Cell::new(false),
    });
    // A second descriptor of the socket, for the lingering close once `h2` has dropped its own.
    let linger_fd = super::session::dup_socket(client.raw_fd());
    let io = Rewind {
        early,
        pos: 0,
        inner: duplex(client.halves()),
        meter: FrameMeter::default(),
        sent: FrameMeter::sending(),
        info: Rc::clone(&info),
    };
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.initial_window_size)
        .initial_connection_window_size(settings.initial_window_size.max(1 << 20))
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(u32::try_from(snap.client.max_header_bytes).unwrap_or(u32::MAX))
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(64 * 1024);
    let handshake = monoio::time::timeout(snap.client.header_timeout, builder.handshake::<_, Bytes>(io));
    let mut conn = monoio::select! {
        r = handshake => match r {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                connection_error(peer, &e, info.frames.get());
                return;
            }
            Err(_) => {
                crate::stats::H2_PREFACE_TIMEOUT.inc();
                tracing::debug!(client = %peer, "no HTTP/2 preface within the header timeout; closing");
                return;
            }
        },
        _ = worker.stopping.wait() => return,
    };
    let max_requests = settings.max_requests;
    let keepalive = snap.client.keepalive_timeout;
    drop(snap);

    /// What woke the connection task.
    enum Event<T> {
        Stream(T),
        Stop,
        Flood,
        Tick,
    }
    let mut accepted = 0u32;
    let mut draining = false;
    // ENHANCE_YOUR_CALM went out (the client's frames are no longer read).
    let mut calmed = false;
    loop {
        let next = if draining {
            // GOAWAY is out: streams already started finish; `accept` ends with the connection.
            // A flood still ends it at once.
            monoio::select! {
                r = conn.accept() => Event::Stream(r),
                _ = info.flood.wait(), if !calmed => Event::Flood,
            }
        } else {
            let wait = match info.open.get() {
                0 => keepalive.saturating_sub(info.last_end.get().elapsed()),
                _ => keepalive,
            };
            monoio::select! {
                r = conn.accept() => Event::Stream(r),
                _ = worker.stopping.wait() => Event::Stop,
                _ = info.flood.wait() => Event::Flood,
                _ = monoio::time::sleep(wait) => Event::Tick,
            }
        };
        match next {
            Event::Stream(None) => break,
            Event::Stream(Some(Err(e))) => {
                connection_error(peer, &e, info.frames.get());
                break;
            }
            Event::Stream(Some(Ok((req, respond)))) => {
                accepted += 1;
                info.accepted.set(accepted);
                info.open.set(info.open.get() + 1);
                let (w, i) = (Rc::clone(worker), Rc::clone(&info));
                worker.metrics.streams.fetch_add(1, Ordering::Relaxed);
                monoio::spawn(async move {
                    stream(&w, &i, req, respond).await;
                    w.metrics.streams.fetch_sub(1, Ordering::Relaxed);
                    i.open.set(i.open.get() - 1);
                    i.last_end.set(Instant::now());
                });
                if accepted >= max_requests && !draining {
                    conn.graceful_shutdown();
                    draining = true;
                }
            }
            Event::Stop => {
                conn.graceful_shutdown();
                draining = true;
            }
            Event::Flood => {
                let kind = info.flood_kind.get();
                tracing::debug!(client = %peer, kind = kind.label.1, accepted, resets = info.premature_resets.get(), "HTTP/2 abuse; closing with ENHANCE_YOUR_CALM");
                kind.inc();
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                draining = true;
                calmed = true;
            }
            Event::Tick => {
                if info.open.get() == 0 && info.last_end.get().elapsed() >= keepalive {
                    conn.graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
    drop(conn);
    // Not for a client that flooded: what it still sends is not worth reading.
    if let Some(fd) = linger_fd
        && !calmed
    {
        linger(fd).await;
    }
}

/// The lingering close of an HTTP/2 connection (as nginx's since 1.19.1), on `fd`, the socket's
/// second descriptor, after `h2` has closed its own: kedge sends its FIN and reads and drops
/// what the client still sends (a request it sent before it read the GOAWAY, a WINDOW_UPDATE)
/// for up to 2 s, until the client closes. Those bytes would otherwise meet a closed socket and
/// come back as a reset, which can destroy the GOAWAY and the last answers before the client
/// reads them.
async fn linger(fd: std::os::fd::OwnedFd) {
    let std = std::net::TcpStream::from(fd);
    let _ = std.shutdown(std::net::Shutdown::Write);
    let Ok(mut tcp) = monoio::net::TcpStream::from_std(std) else {
        return;
    };
    pump::drain_lingering(&mut tcp, Vec::new()).await;
}

/// Counts and logs (at debug) a connection error: those `h2` detected in the client's frames
/// by kind (the GOAWAY code it sent), the rest (the client's own GOAWAY, I/O errors) only
/// logged. `h2` does not hand out which of its limits an ENHANCE_YOUR_CALM was for (its
/// debug data stays on the wire): the client's last frames tell (see [`FrameStats::calm_kind`]).
fn connection_error(peer: SocketAddr, e: &h2::Error, frames: FrameStats) {
    tracing::debug!(client = %peer, error = %e, "HTTP/2 connection failed");
    if !(e.is_go_away() && e.is_library()) {
        return;
    }
    use crate::stats::*;
    let counter = match e.reason() {
        Some(Reason::ENHANCE_YOUR_CALM) => frames.calm_kind(),
        Some(Reason::PROTOCOL_ERROR) => &H2_PROTOCOL_ERROR,
        Some(Reason::FLOW_CONTROL_ERROR) => &H2_FLOW_CONTROL_ERROR,
        Some(Reason::FRAME_SIZE_ERROR) => &H2_FRAME_SIZE_ERROR,
        Some(Reason::COMPRESSION_ERROR) => &H2_COMPRESSION_ERROR,
        _ => &H2_OTHER_ERROR,
    };
    counter.inc();
}

/// Streams reset by the client before their answer, out of `accepted`, that end the connection
/// (GOAWAY ENHANCE_YOUR_CALM): more than [`RESET_FLOOR`], and more than half of all streams, as
/// Envoy's premature-reset limit. A browser cancels some requests (navigation, aborted fetches),
/// never most of hundreds.
fn too_many_resets(resets: u32, accepted: u32) -> bool {
    resets > RESET_FLOOR && u64::from(resets) * 2 > u64::from(accepted)
}

/// Premature resets a connection may always make (see [`too_many_resets`]).
const RESET_FLOOR: u32 = 100;

#[cfg(test)]
mod reset_tests {
    use super::too_many_resets;

    #[test]
    fn a_reset_flood_is_most_of_many_streams() {
        let cases = [
            (0, 1, false),
            (100, 101, false),
            (100, 100, false),
            (101, 102, true),
            (101, 201, true),
            (101, 202, false),
            (500, 1000, false),
            (501, 1000, true),
        ];
        for (resets, accepted, flood) in cases {
            assert_eq!(too_many_resets(resets, accepted), flood, "{resets} of {accepted}");
        }
    }
}

/// One stream: the request phases, then its access-log line.
async fn stream(worker: &Rc<Worker>, info: &ConnInfo, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    // `h2` frees a stream's place once it is reset, before its task has wound down (its
    // upstream request cancelled): a client that resets (or makes kedge reset) streams
    // quickly could otherwise have more requests upstream than the stream limit.
    if info.open.get() > info.max_streams {
        // Counted once per connection: process-wide counters are never touched per request.
        if !info.over_limit.replace(true) {
            crate::stats::H2_OVER_STREAM_LIMIT.inc();
        }
        tracing::debug!(client = %info.peer, open = info.open.get(), "HTTP/2 stream over the stream limit; refused");
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let snap = worker.snapshot();
    let start = Instant::now();
    let mut rec = Record {
        protocol: "HTTP/2.0",
        ..Record::default()
    };
    let mut meta = String::new();
    let mut responded = false;
    let (parts, body) = req.into_parts();
    let done = handle(
        worker,
        &snap,
        info,
        &parts,
        body,
        &mut respond,
        &mut responded,
        &mut rec,
        &mut meta,
        start,
    )
    .await;
    if let Err(e) = done {
        match e.answer() {
            Some((status, why)) if !responded && is_grpc(&parts.headers) => {
                tracing::debug!(side = ?e.side(), error = ?e.kind, "gRPC request failed");
                rec.status = status;
                send_grpc_error(&mut respond, status, why);
            }
            Some((status, why)) if !responded => {
                tracing::debug!(side = ?e.side(), error = ?e.kind, "request failed");
                rec.status = status;
                let _ = send_text(&mut respond, status, why, b"", snap.client.body_timeout).await;
            }
            _ => {
                let reason = match e.kind {
                    ErrorKind::ClientGone => Reason::CANCEL,
                    _ => Reason::INTERNAL_ERROR,
                };
                respond.send_reset(reason);
                if rec.status == 0 || !responded {
                    rec.status = 499;
                }
            }
        }
    }
    log::log_request(worker, &snap, info.peer, &meta, &rec, start);
}

/// The phases of one stream. `responded` turns true once response headers went out (an error
/// after that resets the stream instead of answering).
#[expect(clippy::too_many_arguments, reason = "the phases' state, passed once")]
async fn handle(
    worker: &Rc<Worker>,
    snap: &Snapshot,
    info: &ConnInfo,
    parts: &http::request::Parts,
    body: RecvStream,
    respond: &mut SendResponse<Bytes>,
    responded: &mut bool,
    rec: &mut Record,
    meta: &mut String,
    start: Instant,
) -> Result<(), RequestError> {
    let method = parts.method.as_str().as_bytes();
    if parts.method == http::Method::CONNECT {
        return Err(ErrorKind::Connect.into());
    }
    // `:authority` routes; without it, Host (RFC 9113 §8.3.1).
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    // Several cookie fields go upstream as one (RFC 9113 §8.2.3).
    let mut cookie = Vec::new();
    for v in parts.headers.get_all(http::header::COOKIE) {
        if !cookie.is_empty() {
            cookie.extend_from_slice(b"; ");
        }
        cookie.extend_from_slice(v.as_bytes());
    }
    let mut pairs = PairsLease::new(&worker.bufs);
    let mut cookie_done = false;
    for (name, value) in &parts.headers {
        if name == http::header::COOKIE {
            if !cookie_done {
                pairs.push((b"cookie", &cookie));
                cookie_done = true;
            }
            continue;
        }
        if name == http::header::HOST && authority.is_some() {
            continue;
        }
        pairs.push((name.as_str().as_bytes(), value.as_bytes()));
    }
    let has_host = authority.is_none() && parts.headers.contains_key(http::header::HOST);
    let authority = authority
        .or_else(|| parts.headers.get(http::header::HOST).map(HeaderValue::as_bytes))
        .unwrap_or_default();
    let target = parts.uri.path_and_query().map_or(&b"/"[..], |p| p.as_str().as_bytes());
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    // The same target rules as HTTP/1.1: `*` for OPTIONS only; no fragment, backslash or bad
    // percent-encoding.
    if path == b"*" && method != b"OPTIONS" {
        return Err(ErrorKind::AsteriskNotOptions.into());
    }
    request::check_path(path, query)?;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse::<u64>().ok());
    let body_kind = match (body.is_end_stream(), declared) {
        (true, _) => Body::None,
        (false, Some(n)) => Body::Length(n),
        (false, None) => Body::Streamed,
    };
    let mut rid = [0u8; 32];
    let request_id = match pairs.iter().find(|(n, _)| *n == b"x-request-id") {
        Some(&(_, v)) => v,
        None => {
            worker.request_id(&mut rid);
            &rid[..]
        }
    };
    let view = RequestView {
        method,
        scheme: info.scheme,
        authority,
        path: (!path.is_empty() && path != b"*").then_some(path),
        query,
        target,
        headers: &pairs,
        request_id,
        body: body_kind,
        expect_continue: false,
        upgrade: None,
        keep_alive: true,
        peer: info.peer,
        local: info.local,
        client_ip: &info.peer_text,
    };
    let mut client_text: client::Text = [0; 48];
    let mut view = view;
    let from_trusted = client::resolve(&mut view, &snap.client.trusted_proxies, &mut client_text);
    rec.client = Some(view.peer.ip());
    if snap.access_log {
        rec.describe(meta, &view);
    }
    let settings = decide::Settings {
        table: &snap.table,
        client: &snap.client,
        upstream: &snap.upstream,
        redirect_port: snap.https.redirect_port,
    };
    let mut rewritten = String::new();
    let mut decision = decide::decide(&settings, &view, worker.random(), &mut rewritten);
    rec.metrics = decision
        .routed()
        .map(|r| worker.backend_metrics(&r.backend.name, &r.policy.host));
    // Per-client limits hold until the stream is done.
    let _in_progress = checks::run(worker, &mut decision, &view, start);
    let f = match decision {
        Decision::Answer(a) if is_grpc(&parts.headers) => {
            rec.status = a.status;
            *responded = true;
            send_grpc_error(respond, a.status, answer_reason(a.status));
            return Ok(());
        }
        Decision::Answer(a) => {
            rec.status = a.status;
            let mut out = Vec::new();
            let mut scratch = Vec::new();
            respond::write_answer(&mut out, &mut scratch, &a, false);
            *responded = true;
            return send_h1_answer(respond, &out, snap.client.body_timeout).await;
        }
        Decision::Forward(f) => f,
    };
    let origin = view.header(b"origin");
    // A Gateway rule's header changes and host rewrite.
    let mut changed = Vec::new();
    let (headers, new_host) = match &f.gw {
        None => (&pairs[..], None),
        Some(gw) => {
            gw.request_headers(&pairs, &mut changed);
            (&changed[..], gw.host())
        }
    };
    let fwd = h1::Forwarded {
        client_ip: view.client_ip,
        peer_ip: &info.peer_text,
        from_trusted,
        proto: info.scheme,
        host: authority,
        port: info.local.port(),
        request_id,
        target: f.rewritten.then_some(rewritten.as_bytes()),
        upstream_host: new_host.map(str::as_bytes),
    };
    let framing = match body_kind {
        Body::None => Framing::None,
        Body::Length(n) => Framing::Length(n),
        Body::Streamed => Framing::Chunked,
    };
    let out_req = h1::RequestOut {
        method,
        target,
        headers,
        has_host,
        framing,
        upgrade: None,
        lines: None,
    };
    // The head, answer lines and upstream reads come from the worker's buffer pool and go
    // back when the stream is done, as an HTTP/1.1 connection's do between requests.
    let mut out = Lease::new(&worker.bufs, Class::Output);
    h1::write_request_head(&mut out, &out_req, &fwd);
    if body_kind == Body::None {
        // A request with a body is mirrored as the body streams (mirror::Teed).
        super::mirror::send(worker, snap, &f, &out);
    }
    if f.routed.backend.h2 {
        // gRPC: HTTP/2 end to end.
        let te_trailers = parts
            .headers
            .get(http::header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        let hsts = (info.scheme == "https").then_some(&*snap.https.hsts_line);
        let extra = |addr, answer: &HeaderMap| {
            let mut extra = Vec::new();
            let upstream_hsts = || answer.contains_key(http::header::STRICT_TRANSPORT_SECURITY);
            respond::response_lines(&mut extra, hsts, upstream_hsts, &f, addr, origin);
            extra
        };
        // The client's deadline bounds the call (the field goes upstream unchanged).
        let deadline = parts
            .headers
            .get("grpc-timeout")
            .and_then(|v| forward_h2::grpc_timeout(v.as_bytes()))
            .map(|d| start + d);
        let cx = Ctx { worker, snap, start };
        let call = forward_h2::Call {
            head: &out,
            te_trailers,
            deadline,
        };
        let done = forward_h2::forward(cx, &f, call, body, respond, responded, extra, rec).await;
        // A reset before the answer began counts as on HTTP/1.1 upstreams (Rapid Reset).
        if let Err(e) = &done
            && e.kind == ErrorKind::ClientGone
            && !*responded
        {
            info.premature_reset();
        }
        return done;
    }
    let sending = Sending {
        has_body: body_kind != Body::None,
        is_head: parts.method == http::Method::HEAD,
        retry_ok: view.retryable(),
        expect_continue: false,
        upgrade: false,
    };
    let sender = H2Body {
        recv: body,
        chunked: framing == Framing::Chunked,
        body_timeout: snap.client.body_timeout,
    };
    let mut up = PooledUpstream::new(&worker.bufs);
    let cx = Ctx { worker, snap, start };
    let mut sender = super::mirror::Teed::new(cx, &f, sender);
    // A client that resets the stream before the answer cancels the upstream request (its
    // connection is dropped mid-request), and counts against the connection's budget of such
    // resets (Rapid Reset, CVE-2023-44487: h2 bounds only resets of streams not yet accepted).
    let forwarding = forward::forward(cx, &f, sending, &mut out, &mut sender, &mut up, rec);
    let client_reset = poll_fn(|cx| respond.poll_reset(cx));
    let exchange = monoio::select! {
        r = forwarding => r?,
        _ = client_reset => {
            info.premature_reset();
            return Err(ErrorKind::ClientGone.into());
        }
    };
    if exchange.resp.status == 101 {
        return Err(ErrorKind::UnaskedSwitch.into());
    }
    let mut upstream = exchange.upstream;
    let (addr, resp, body_cut) = (exchange.addr, exchange.resp, exchange.body_cut);
    respond::check_answer_start(&up.buf, &resp)?;
    let mut extra = Lease::new(&worker.bufs, Class::Output);
    let hsts = (info.scheme == "https").then_some(&*snap.https.hsts_line);
    respond::response_lines(
        &mut extra,
        hsts,
        || up.has_field(b"strict-transport-security"),
        &f,
        addr,
        origin,
    );
    let head = response_head(&up.buf, &resp, &up.headers, &extra, sending.is_head, |name| {
        respond::drops_response_field(&f, name)
    });
    let no_body = resp.framing == Framing::None || resp.framing == Framing::Length(0);
    let mut send = respond
        .send_response(head, no_body)
        .map_err(|_| RequestError::from(ErrorKind::ClientGone))?;
    *responded = true;
    up.buf.drain(..resp.head_len);
    if !no_body {
        let moved = body_out(&mut upstream, &mut up.buf, resp.framing, &mut send, &f, snap).await;
        match moved {
            Ok(n) => rec.bytes = n,
            Err(e) => {
                tracing::debug!(upstream = %addr, error = ?e.kind, "response body cut short");
                send.send_reset(Reason::INTERNAL_ERROR);
                return Ok(());
            }
        }
    }
    // After an early answer (`body_cut`) the stream's unread body is refused when it is
    // dropped (h2 sends RST_STREAM NO_ERROR, RFC 9113 §8.1), and the upstream is not reused.
    if !body_cut && resp.keep_alive && resp.framing != Framing::CloseDelimited && up.buf.is_empty() {
        forward::release(worker, snap, f.routed.backend, addr, upstream, start);
    }
    Ok(())
}

/// A new upstream read buffer's room: the answer's head and the start of its body (a
/// Content-Length body's rest is read into buffers of its own, see [`read_owned`]). Every stream
/// in flight holds one, and a read with less than 8 KiB of room would reserve 16 KiB
/// (`pump::read_with_timeout`): 8 KiB is half the memory per stream of a 16 KiB buffer (at
/// 2,000 streams in flight, 16 MB less at the peak), and copies less of a body's start.
const HEAD_READ: usize = 8 * 1024;

/// A stream's upstream read buffer and header spans, taken from the worker's pool and given back
/// when the stream is done (an HTTP/1.1 connection keeps one set across its requests).
struct PooledUpstream<'p> {
    pool: &'p BufPool,
    up: UpstreamBufs,
}

impl<'p> PooledUpstream<'p> {
    fn new(pool: &'p BufPool) -> Self {
        let mut buf = pool.take(Class::Input);
        if buf.capacity() == 0 {
            buf.reserve_exact(HEAD_READ);
        }
        let up = UpstreamBufs {
            buf,
            headers: pool.take_spans(),
        };
        PooledUpstream { pool, up }
    }
}

impl std::ops::Deref for PooledUpstream<'_> {
    type Target = UpstreamBufs;
    fn deref(&self) -> &UpstreamBufs {
        &self.up
    }
}

impl std::ops::DerefMut for PooledUpstream<'_> {
    fn deref_mut(&mut self) -> &mut UpstreamBufs {
        &mut self.up
    }
}

impl Drop for PooledUpstream<'_> {
    fn drop(&mut self) {
        self.pool.give(Class::Input, std::mem::take(&mut self.up.buf));
        self.pool.give_spans(std::mem::take(&mut self.up.headers));
    }
}

/// The response head for the client: the upstream's status and end-to-end fields (hop-by-hop
/// and framing ones dropped), Content-Length when the length is known (for HEAD and 304 the one
/// the upstream declared), then kedge's `extra` lines (`Name: value\r\n` each).
fn response_head(
    buf: &[u8],
    resp: &ResponseHead,
    spans: &[HeaderSpan],
    extra: &[u8],
    is_head: bool,
    drop: impl Fn(&[u8]) -> bool,
) -> Response<()> {
    let length = match resp.framing {
        Framing::Length(n) => Some(n),
        Framing::None if (is_head || resp.status == 304) => h1::declared_length(buf, spans),
        _ => None,
    };
    // Every value is a slice of one copy of the head (and the Content-Length digits after it):
    // one allocation for the values, not one each.
    let head_len = resp.head_len.min(buf.len());
    let mut copy = Vec::with_capacity(head_len + 20);
    copy.extend_from_slice(&buf[..head_len]);
    if let Some(n) = length {
        let _ = write!(copy, "{n}");
    }
    let shared = Bytes::from(copy);
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for h in spans {
        let name = &buf[h.name.clone()];
        if h.value.end > head_len || !h1::passes(buf, spans, name) || drop(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(shared.slice(h.value.clone())),
        ) {
            headers.append(n, v);
        }
    }
    if length.is_some()
        && let Ok(v) = HeaderValue::from_maybe_shared(shared.slice(head_len..))
    {
        headers.insert(http::header::CONTENT_LENGTH, v);
    }
    respond::append_lines(&mut headers, extra);
    let mut r = Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(resp.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    *r.headers_mut() = headers;
    r
}

/// Sends one of kedge's answers, written as HTTP/1.1 by `respond::write_answer` (the one
/// place answers are made), as an HTTP/2 response.
async fn send_h1_answer(
    respond: &mut SendResponse<Bytes>,
    answer: &[u8],
    timeout: Duration,
) -> Result<(), RequestError> {
    let mut spans = Vec::new();
    let limits = h1::Limits::default();
    let Ok(Parsed::Complete(resp)) = h1::parse_response(answer, &limits, false, &mut spans) else {
        return Err(ErrorKind::ClientGone.into());
    };
    let head = response_head(answer, &resp, &spans, b"", false, |_| false);
    let body = &answer[resp.head_len..];
    let mut send = respond
        .send_response(head, body.is_empty())
        .map_err(|_| RequestError::from(ErrorKind::ClientGone))?;
    if !body.is_empty() {
        send_bytes(&mut send, body, timeout).await?;
        send.send_data(Bytes::new(), true)
            .map_err(|_| RequestError::from(ErrorKind::ClientGone))?;
    }
    Ok(())
}

/// Whether a request is gRPC (`content-type: application/grpc`, `application/grpc+proto`…).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status kedge answers with, as gRPC's own HTTP-to-gRPC mapping
/// (doc/http-grpc-status-mapping.md): 404 UNIMPLEMENTED, 502/503/504 and 429 UNAVAILABLE,
/// 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 400 INTERNAL, 413 RESOURCE_EXHAUSTED, else
/// UNKNOWN.
fn grpc_status(http_status: u16) -> u8 {
    match http_status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        413 => 8,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// The message of one of kedge's own answers, for `grpc-message`.
fn answer_reason(status: u16) -> &'static str {
    match status {
        404 => "no route for this host and path",
        503 => "no endpoint available for this backend",
        401 => "authentication required",
        403 => "forbidden",
        413 => "request body larger than allowed",
        429 => "too many requests",
        301..=308 => "redirected; gRPC clients do not follow redirects",
        _ => "refused by the proxy",
    }
}

/// Answers a gRPC request with kedge's own error as gRPC clients expect it (see
/// [`forward_h2::trailers_only`]).
fn send_grpc_error(respond: &mut SendResponse<Bytes>, http_status: u16, why: &str) {
    forward_h2::trailers_only(respond, grpc_status(http_status), why);
}

/// Sends an error answer (status and one text line).
async fn send_text(
    respond: &mut SendResponse<Bytes>,
    status: u16,
    why: &str,
    extra: &[u8],
    timeout: Duration,
) -> Result<(), RequestError> {
    let mut out = Vec::new();
    h1::write_canned(&mut out, status, why, extra, false);
    send_h1_answer(respond, &out, timeout).await
}

/// Sends a copy of `data` (one) as DATA frames as the client's flow-control window allows,
/// waiting for window at most `timeout` at a time.
async fn send_bytes(send: &mut SendStream<Bytes>, data: &[u8], timeout: Duration) -> Result<(), RequestError> {
    send_owned(send, Bytes::copy_from_slice(data), timeout).await
}

/// Most bytes of a Content-Length response body read from the upstream at a time.
const BODY_READ: usize = 64 * 1024;

/// Reads at most `want` bytes (more than 0) from the upstream into `chunk`'s room and returns
/// them, not copied: `h2` sends them as they are and drops them once written. `chunk` gets its
/// room back (the same allocation) when `h2` dropped the bytes before the next read, else a new
/// one. Never reads past `want`: what follows a body stays unread.
async fn read_owned(
    upstream: &mut UpstreamStream,
    chunk: &mut BytesMut,
    want: usize,
    timeout: Duration,
) -> Result<Bytes, RequestError> {
    chunk.clear();
    chunk.reserve(want);
    let b = std::mem::take(chunk);
    match monoio::time::timeout(timeout, upstream.read(b.slice_mut(0..want))).await {
        Ok((Ok(n), slice)) if n > 0 => {
            *chunk = slice.into_inner();
            Ok(chunk.split().freeze())
        }
        _ => Err(ErrorKind::ResponseBroken.into()),
    }
}

/// [`send_bytes`] for bytes `h2` may keep as they are: split at each window grant, not copied.
async fn send_owned(send: &mut SendStream<Bytes>, mut data: Bytes, timeout: Duration) -> Result<(), RequestError> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = monoio::time::timeout(timeout, poll_fn(|cx| send.poll_capacity(cx))).await;
        let n = match granted {
            Ok(Some(Ok(n))) => n,
            _ => return Err(ErrorKind::ClientGone.into()),
        };
        if n == 0 {
            continue;
        }
        let part = data.split_to(n.min(data.len()));
        send.send_data(part, false)
            .map_err(|_| RequestError::from(ErrorKind::ClientGone))?;
    }
    Ok(())
}

/// Moves the upstream's response body to the client stream, decoded from its HTTP/1.1 framing:
/// chunked trailers become HTTP/2 trailers. `buf` holds what was read past the head; on success
/// it holds what followed the body. Returns the body bytes moved.
async fn body_out(
    upstream: &mut UpstreamStream,
    buf: &mut Vec<u8>,
    framing: Framing,
    send: &mut SendStream<Bytes>,
    f: &Forward<'_>,
    snap: &Snapshot,
) -> Result<u64, RequestError> {
    let (read_timeout, write_timeout) = (f.timeouts.read, snap.client.body_timeout);
    let broken = || RequestError::from(ErrorKind::ResponseBroken);
    let mut moved = 0u64;
    let read = async |upstream: &mut UpstreamStream, buf: &mut Vec<u8>| match pump::read_with_timeout(
        upstream,
        buf,
        read_timeout,
    )
    .await
    {
        ReadResult::Data(_) => Ok(true),
        ReadResult::Eof => Ok(false),
        ReadResult::Timeout | ReadResult::Error => Err(broken()),
    };
    match framing {
        Framing::None => {}
        Framing::Length(mut remaining) => {
            // What came with the head is copied; the rest is read straight into buffers that
            // go to `h2` as they are (see `read_owned`).
            let k = remaining.min(buf.len() as u64) as usize;
            if k > 0 {
                send_bytes(send, &buf[..k], write_timeout).await?;
                buf.drain(..k);
                remaining -= k as u64;
                moved += k as u64;
            }
            let mut chunk = BytesMut::new();
            while remaining > 0 {
                let want = remaining.min(BODY_READ as u64) as usize;
                let data = read_owned(upstream, &mut chunk, want, read_timeout).await?;
                remaining -= data.len() as u64;
                moved += data.len() as u64;
                send_owned(send, data, write_timeout).await?;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                let (used, event) = decoder.step(buf).map_err(|_| broken())?;
                match event {
                    ChunkEvent::Data(r) => {
                        moved += r.len() as u64;
                        send_bytes(send, &buf[r], write_timeout).await?;
                        buf.drain(..used);
                    }
                    ChunkEvent::End { trailers } => {
                        let fields = trailer_fields(&buf[trailers]);
                        buf.drain(..used);
                        if !fields.is_empty() {
                            send.send_trailers(fields).map_err(|_| broken())?;
                            return Ok(moved);
                        }
                        break;
                    }
                    ChunkEvent::NeedMore => {
                        buf.drain(..used);
                        if !read(upstream, buf).await? {
                            return Err(broken());
                        }
                    }
                }
            }
        }
        Framing::CloseDelimited => loop {
            if !buf.is_empty() {
                moved += buf.len() as u64;
                send_bytes(send, buf, write_timeout).await?;
                buf.clear();
            }
            if !read(upstream, buf).await? {
                break;
            }
        },
    }
    send.send_data(Bytes::new(), true)
        .map_err(|_| RequestError::from(ErrorKind::ClientGone))?;
    Ok(moved)
}

/// The fields of a chunked body's trailer section (`Name: value\r\n` lines) that
/// [`h1::trailer_passes`].
fn trailer_fields(section: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in section.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if !h1::trailer_passes(name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    map
}

/// The HTTP/2 front end's request body: DATA frames from the stream, written upstream with the
/// framing the head announced, the client's window released only as bytes go out.
struct H2Body {
    recv: RecvStream,
    chunked: bool,
    body_timeout: Duration,
}

impl SendBody for H2Body {
    async fn send<W: AsyncWriteRent>(
        &mut self,
        upstream: &mut W,
        out: &mut Vec<u8>,
        send_timeout: Duration,
        max_body: u64,
    ) -> Result<(), RequestError> {
        let sink = |_| RequestError::from(ErrorKind::UpstreamBodyFailed);
        pump::flush(upstream, out, send_timeout).await.map_err(sink)?;
        let mut total = 0u64;
        loop {
            let next = monoio::time::timeout(self.body_timeout, self.recv.data()).await;
            let data = match next {
                Err(_) => return Err(ErrorKind::BodyTimeout.into()),
                Ok(None) => break,
                // A reset, or a DATA total that contradicts content-length (h2 resets the
                // stream with PROTOCOL_ERROR itself).
                Ok(Some(Err(_))) => return Err(ErrorKind::ClientGone.into()),
                Ok(Some(Ok(d))) => d,
            };
            total += data.len() as u64;
            if total > max_body {
                return Err(ErrorKind::BodyTooLarge.into());
            }
            if data.is_empty() {
                continue;
            }
            if self.chunked {
                h1::write_chunk_header(out, data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            pump::flush(upstream, out, send_timeout).await.map_err(sink)?;
            let _ = self.recv.flow_control().release_capacity(data.len());
        }
        // Trailers: chunked trailer fields; with the client's Content-Length HTTP/1.1 has no
        // place for them.
        let trailers = match poll_fn(|cx| self.recv.poll_trailers(cx)).await {
            Ok(t) => t,
            Err(_) => return Err(ErrorKind::ClientGone.into()),
        };
        if self.chunked {
            out.extend_from_slice(b"0\r\n");
            if let Some(t) = &trailers {
                write_trailer_lines(out, t);
            }
            out.extend_from_slice(b"\r\n");
            pump::flush(upstream, out, send_timeout).await.map_err(sink)?;
        } else if trailers.is_some() {
            tracing::debug!("request trailers dropped: the body has a Content-Length, HTTP/1.1 cannot carry them");
        }
        Ok(())
    }
}

/// Request trailer fields as chunked trailer lines (`name: value\r\n`): those
/// [`h1::trailer_passes`].
fn write_trailer_lines(out: &mut Vec<u8>, trailers: &HeaderMap) {
    for (name, value) in trailers {
        let n = name.as_str().as_bytes();
        if !h1::trailer_passes(n) {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes the adapter reads from the client at a time: one read takes a full 16 KiB DATA frame
/// (the default SETTINGS_MAX_FRAME_SIZE) with its header.
const READ_SIZE: usize = 16 * 1024 + 9;

/// Most bytes of `h2`'s frames gathered for one write (see [`Writer`]): four 16 KiB DATA
/// frames with their heads, a 64 KiB answer; rustls takes at most 64 KiB per write anyway.
const WRITE_GATHER: usize = 64 * 1024;

/// The client stream as `h2` takes it (tokio's IO traits) over the halves of kedge's owned-buffer
/// stream (plain TCP or kedge's TLS stream): each half is moved into the operation that uses it
/// and back, so no operation borrows the adapter and no `unsafe` is needed; one allocation per
/// half holds its operation for the connection's life.
struct Duplex<R, FR, W, FW> {
    r: Reader<R, FR>,
    w: Writer<W, FW>,
}

fn duplex<R: AsyncReadRent, W: AsyncWriteRent>((r, w): (R, W)) -> impl AsyncRead + AsyncWrite + Unpin {
    Duplex {
        r: Reader {
            half: Some(r),
            op: Box::pin(None),
            start: read_in,
            buf: Vec::new(),
            pos: 0,
        },
        w: Writer {
            half: Some(w),
            op: Box::pin(None),
            start: write_out,
            pending: Vec::new(),
            spare: Vec::new(),
            closed: false,
        },
    }
}

/// What an operation hands back: the half, the buffer, the outcome.
type Done<H, T> = (H, Vec<u8>, T);

/// One read into `buf` (its length set to what was read).
async fn read_in<R: AsyncReadRent>(mut r: R, mut buf: Vec<u8>) -> Done<R, io::Result<usize>> {
    buf.clear();
    buf.reserve(READ_SIZE);
    let (res, buf) = r.read(buf).await;
    (r, buf, res)
}

/// Writes all of `buf`, then, with `shutdown`, ends the stream (TLS: close_notify).
async fn write_out<W: AsyncWriteRent>(mut w: W, buf: Vec<u8>, shutdown: bool) -> Done<W, io::Result<()>> {
    let (res, buf) = if buf.is_empty() {
        (Ok(0), buf)
    } else {
        w.write_all(buf).await
    };
    let res = match res {
        Ok(_) if shutdown => w.shutdown().await,
        r => r.map(drop),
    };
    (w, buf, res)
}

/// The read half: reads of up to [`READ_SIZE`] bytes into its own buffer, handed to `h2` from
/// there (the one copy on the way in).
struct Reader<R, F> {
    /// `None` while a read runs (the read owns it).
    half: Option<R>,
    op: Pin<Box<Option<F>>>,
    start: fn(R, Vec<u8>) -> F,
    buf: Vec<u8>,
    pos: usize,
}

/// The write half. `h2` writes a frame head and its payload in separate calls and flushes after
/// every DATA frame; written one by one, every call became a write of its own (a TLS record
/// each) and the next call waited for it, so a 64 KiB answer took eight writes one after the
/// other. Here the calls only gather bytes (up to [`WRITE_GATHER`]); a flush starts one write
/// of all that is gathered and does not wait for it: what `h2` writes meanwhile is gathered
/// for the next write, started by the first flush after this one completes (the completion
/// wakes the connection task, whose every turn ends with a flush). `h2` is held up only when
/// [`WRITE_GATHER`] bytes wait behind a running write. Shutdown writes everything first.
struct Writer<W, F> {
    /// `None` while a write runs (the write owns it).
    half: Option<W>,
    op: Pin<Box<Option<F>>>,
    start: fn(W, Vec<u8>, bool) -> F,
    /// Gathered, not yet being written.
    pending: Vec<u8>,
    /// The buffer of the last completed write, emptied, for the next gathering.
    spare: Vec<u8>,
    /// The shutdown was started.
    closed: bool,
}

// The halves are moved, never pinned: the operations are pinned in their own boxes.
impl<R, F> Unpin for Reader<R, F> {}
impl<W, F> Unpin for Writer<W, F> {}

impl<R, F: Future<Output = Done<R, io::Result<usize>>>> Reader<R, F> {
    fn poll_read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.remaining());
                out.put_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(half) = self.half.take() {
                self.pos = 0;
                let buf = std::mem::take(&mut self.buf);
                self.op.as_mut().set(Some((self.start)(half, buf)));
            }
            let Some(op) = self.op.as_mut().as_pin_mut() else {
                unreachable!("a read runs whenever the half is away")
            };
            let (half, buf, res) = std::task::ready!(op.poll(cx));
            self.op.as_mut().set(None);
            self.half = Some(half);
            self.buf = buf;
            if res? == 0 {
                // End of stream: nothing put in `out`.
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<W, F: Future<Output = Done<W, io::Result<()>>>> Writer<W, F> {
    /// Polls the running write, if any: `Ready` once none runs, with its outcome.
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(op) = self.op.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(()));
        };
        let (half, mut buf, res) = std::task::ready!(op.poll(cx));
        self.op.as_mut().set(None);
        self.half = Some(half);
        buf.clear();
        if self.pending.capacity() == 0 {
            self.pending = buf;
        } else {
            self.spare = buf;
        }
        Poll::Ready(res)
    }

    /// Starts writing what is gathered (then the shutdown, with `shutdown`); none may run.
    fn start_write(&mut self, cx: &mut Context<'_>, shutdown: bool) -> Poll<io::Result<()>> {
        let Some(half) = self.half.take() else {
            unreachable!("a write started while another ran")
        };
        let buf = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        self.op.as_mut().set(Some((self.start)(half, buf, shutdown)));
        self.poll_op(cx)
    }

    /// Makes room to gather: `Pending` only while [`WRITE_GATHER`] bytes wait behind a write.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.len() < WRITE_GATHER {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_op(cx))?;
        if let Poll::Ready(Err(e)) = self.start_write(cx, false) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_room(cx))?;
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(WRITE_GATHER.saturating_sub(self.pending.len()));
            self.pending.extend_from_slice(&b[..k]);
            n += k;
            if k < b.len() {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.poll_op(cx) {
                Poll::Ready(r) => r?,
                // Still writing: what was gathered since goes out after it (see above).
                Poll::Pending => return Poll::Ready(Ok(())),
            }
            if self.pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Poll::Ready(Err(e)) = self.start_write(cx, false) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            std::task::ready!(self.poll_op(cx))?;
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            self.closed = true;
            std::task::ready!(self.start_write(cx, true))?;
        }
    }
}

impl<R, FR: Future<Output = Done<R, io::Result<usize>>>, W, FW> AsyncRead for Duplex<R, FR, W, FW> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().r.poll_read(cx, buf)
    }
}

impl<R, FR, W, FW: Future<Output = Done<W, io::Result<()>>>> AsyncWrite for Duplex<R, FR, W, FW> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().w.poll_write(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().w.poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().w.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().w.poll_shutdown(cx)
    }
}

/// The client stream for `h2`: bytes read before the protocol was known first, then the
/// stream through the adapter. What the client sends is metered on its way in, and what kedge
/// sends it on its way out ([`FrameMeter`]); once the client floods, nothing more is read and
/// the connection task ends the connection.
struct Rewind<T> {
    early: Vec<u8>,
    pos: usize,
    /// The client stream as `h2` takes it ([`Duplex`]).
    inner: T,
    meter: FrameMeter,
    sent: FrameMeter,
    info: Rc<ConnInfo>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.info.flood.is_set() {
            // The connection task, woken by the signal, sends GOAWAY and closes.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if this.pos < this.early.len() {
            let n = (this.early.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.early[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.early.len() {
                this.early = Vec::new();
                this.pos = 0;
            }
        } else {
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        }
        this.meter.feed(&buf.filled()[before..]);
        this.info.frames.set(this.meter.stats);
        if floods(&this.meter, &this.sent) {
            this.info.flooded(&crate::stats::H2_CONTROL_FLOOD);
        }
        Poll::Ready(Ok(()))
    }
}

/// Control bytes a connection may send beyond its request bytes (see [`floods`]).
const OVERHEAD_ALLOWANCE: u64 = 1 << 20;

/// Whether a client floods: more overhead than payload in what it sent (`received`), beyond
/// [`OVERHEAD_ALLOWANCE`] and one byte per 16 of the answers kedge sent it (`sent`: a gRPC
/// client that downloads sends a PING per round trip to size its window).
fn floods(received: &FrameMeter, sent: &FrameMeter) -> bool {
    received.overhead > received.payload + sent.payload / 16 + OVERHEAD_ALLOWANCE
}

/// Meters the frames of one direction, as nginx does against floods of frames that cost the
/// server work but carry no request (PING, SETTINGS, PRIORITY, RST_STREAM, unknown types,
/// empty frames): every byte is either payload (of HEADERS, CONTINUATION and DATA frames) or
/// overhead (frame headers, the payload of other frames). WINDOW_UPDATE frames are neither:
/// a client that downloads sends them in proportion to what it receives. Sans-io: bytes in,
/// counts out (see [`floods`]).
#[derive(Default)]
struct FrameMeter {
    /// The connection preface was passed (it is neither).
    started: bool,
    /// The frame header being read, and how much of it.
    head: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to come, and what they count as.
    left: u64,
    counts_as: Share,
    overhead: u64,
    payload: u64,
    stats: FrameStats,
}

/// What a connection's frames looked like: enough to tell which of `h2`'s limits a GOAWAY
/// ENHANCE_YOUR_CALM was for.
#[derive(Default, Clone, Copy)]
struct FrameStats {
    /// The type and flags of the last frame begun.
    last_kind: u8,
    last_flags: u8,
    /// CONTINUATION frames since the last HEADERS.
    continuations: u32,
    /// DATA frames under 256 bytes (what `h2` charges against its budget of small frames).
    small_data: u32,
}

impl FrameStats {
    fn calm_kind(self) -> &'static crate::stats::Counter {
        use crate::stats::*;
        const END_HEADERS: u8 = 0x4;
        match self.last_kind {
            0x9 if self.last_flags & END_HEADERS == 0 && self.continuations > 1 => &H2_CONTINUATION_FLOOD,
            0x1 | 0x9 => &H2_HEADER_BOMB,
            0x0 if self.small_data > 100 => &H2_DATA_FLOOD,
            0x3 => &H2_RESET_FLOOD,
            // Resets kedge had to make: DATA on closed streams, windows overflowed.
            _ => &H2_MADE_YOU_RESET,
        }
    }
}

#[derive(Default, Clone, Copy, PartialEq)]
enum Share {
    #[default]
    Overhead,
    Payload,
    Neither,
}

impl FrameMeter {
    /// The meter of what kedge sends (no preface on that side).
    fn sending() -> FrameMeter {
        FrameMeter {
            started: true,
            ..FrameMeter::default()
        }
    }

    /// Takes the next bytes of the connection.
    fn feed(&mut self, mut bytes: &[u8]) {
        if !self.started {
            self.left = PREFACE.len() as u64;
            self.counts_as = Share::Neither;
            self.started = true;
        }
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = self.left.min(bytes.len() as u64);
                match self.counts_as {
                    Share::Overhead => self.overhead += n,
                    Share::Payload => self.payload += n,
                    Share::Neither => {}
                }
                self.left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            self.left = u64::from(u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]));
            let st = &mut self.stats;
            (st.last_kind, st.last_flags) = (self.head[3], self.head[4]);
            match self.head[3] {
                0x0 if self.left < 256 => st.small_data = st.small_data.saturating_add(1),
                0x1 => st.continuations = 0,
                0x9 => st.continuations = st.continuations.saturating_add(1),
                _ => {}
            }
            // DATA, HEADERS, CONTINUATION carry requests; WINDOW_UPDATE follows responses.
            self.counts_as = match self.head[3] {
                0x0 | 0x1 | 0x9 => Share::Payload,
                0x8 => Share::Neither,
                _ => Share::Overhead,
            };
            if self.counts_as != Share::Neither {
                self.overhead += 9;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.sent.feed(&buf[..written.min(buf.len())]);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = written;
        for b in bufs {
            let k = left.min(b.len());
            this.sent.feed(&b[..k]);
            left -= k;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_beyond_requests_flood() {
        let frame = |kind: u8, len: usize| {
            let mut f = vec![0, (len >> 8) as u8, len as u8, kind, 0, 0, 0, 0, 1];
            f.resize(9 + len, 0);
            f
        };
        let ping = frame(0x6, 8);
        let nothing_sent = FrameMeter::sending();
        // The preface is not counted; a request's HEADERS buys room for control frames.
        let mut m = FrameMeter::default();
        m.feed(PREFACE);
        m.feed(&frame(0x1, 1000));
        assert_eq!((m.overhead, m.payload), (9, 1000));
        // Fed a byte at a time, frames are still found.
        for b in frame(0x8, 4).iter().chain(ping.iter()) {
            m.feed(std::slice::from_ref(b));
        }
        assert_eq!((m.overhead, m.payload), (9 + 17, 1000));
        let per = ping.len() as u64;
        let pings_allowed = (OVERHEAD_ALLOWANCE + 1000 - 9 - 17) / per;
        m.feed(&ping.repeat(pings_allowed as usize));
        assert!(!floods(&m, &nothing_sent));
        m.feed(&ping);
        assert!(floods(&m, &nothing_sent), "one PING more floods");
        // Big DATA frames keep a connection far from it.
        let mut m = FrameMeter::default();
        m.feed(PREFACE);
        for _ in 0..100_000 {
            m.feed(&frame(0x0, 100));
        }
        assert!(!floods(&m, &nothing_sent));
    }

    #[test]
    fn answers_sent_buy_room_for_pings() {
        // A download: one small request, then a PING per 16 KiB DATA frame sent (a gRPC
        // client sizing its window), for 1 GiB.
        let mut received = FrameMeter::default();
        received.feed(PREFACE);
        received.feed(&[0, 0, 20, 0x1, 0x4, 0, 0, 0, 1]);
        received.feed(&[0; 20]);
        let mut sent = FrameMeter::sending();
        let data = {
            let mut f = vec![0, 0x40, 0, 0x0, 0, 0, 0, 0, 1];
            f.resize(9 + (16 << 10), 0);
            f
        };
        let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        for _ in 0..(1 << 16) {
            sent.feed(&data);
            received.feed(&ping);
        }
        assert!(received.overhead > OVERHEAD_ALLOWANCE, "the PINGs alone would flood");
        assert!(!floods(&received, &sent));
        // The same PINGs without the download flood.
        assert!(floods(&received, &FrameMeter::sending()));
    }

    #[test]
    fn trailers_keep_end_to_end_fields_only() {
        let map =
            trailer_fields(b"Grpc-Status: 0\r\nConnection: x\r\nX-Sum:  abc \r\nContent-Length: 5\r\nHost: h\r\n");
        assert_eq!(map.get("grpc-status").unwrap(), "0");
        assert_eq!(map.get("x-sum").unwrap(), "abc");
        assert_eq!(map.len(), 2, "{map:?}");
    }

    #[test]
    fn answers_become_h2_heads() {
        let mut out = Vec::new();
        h1::write_canned(&mut out, 404, "no route for this host and path", b"", true);
        let mut spans = Vec::new();
        let Ok(Parsed::Complete(resp)) = h1::parse_response(&out, &h1::Limits::default(), false, &mut spans) else {
            panic!("unparsable answer");
        };
        let head = response_head(&out, &resp, &spans, b"Set-Cookie: a=b\r\n", false, |_| false);
        assert_eq!(head.status(), 404);
        assert!(head.headers().get("connection").is_none());
        assert_eq!(head.headers().get("content-length").unwrap(), "32");
        assert_eq!(head.headers().get("set-cookie").unwrap(), "a=b");
        assert_eq!(&out[resp.head_len..], b"no route for this host and path\n");
    }

    /// Counts the writes the adapter starts; each is written whole here, so the count does not
    /// depend on how much the kernel takes at a time.
    struct Counted<W> {
        w: W,
        writes: Rc<Cell<usize>>,
    }

    impl<W: AsyncWriteRent> AsyncWriteRent for Counted<W> {
        async fn write<T: monoio::buf::IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
            self.writes.set(self.writes.get() + 1);
            let (len, mut done, mut buf) = (buf.bytes_init(), 0, buf);
            while done < len {
                let (res, slice) = self.w.write(buf.slice(done..)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                    Ok(n) => done += n,
                    Err(e) => return (Err(e), buf),
                }
            }
            (Ok(len), buf)
        }

        async fn writev<T: monoio::buf::IoVecBuf>(&mut self, bufs: T) -> monoio::BufResult<usize, T> {
            (Err(io::Error::other("not used")), bufs)
        }

        async fn flush(&mut self) -> io::Result<()> {
            self.w.flush().await
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            self.w.shutdown().await
        }
    }

    /// A DATA frame as `h2` writes it: its 9-byte head, then a 16 KiB payload (`n`'s pattern).
    fn data_frame(n: u8) -> Vec<u8> {
        let mut f = vec![0x00, 0x40, 0x00, 0x00, 0x00, 0, 0, 0, 1];
        f.extend((0..16_384u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(n)));
        f
    }

    /// What the peer got, the writes for three frames gathered under one flush, the writes for
    /// four frames flushed one by one.
    async fn gather_over_loopback() -> (Vec<u8>, Vec<u8>, usize, usize) {
        use tokio::io::AsyncWriteExt as _;
        let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let peer = monoio::spawn(async move {
            let mut c = monoio::net::TcpStream::connect(addr).await.expect("connect");
            let mut got = Vec::new();
            loop {
                let (res, buf) = c.read(Vec::with_capacity(64 * 1024)).await;
                match res.expect("read") {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let writes = Rc::new(Cell::new(0));
        let (r, w) = monoio::io::Splitable::into_split(tcp);
        let mut io = duplex((
            r,
            Counted {
                w,
                writes: Rc::clone(&writes),
            },
        ));
        let mut sent = Vec::new();
        for n in 0..3 {
            let f = data_frame(n);
            io.write_all(&f[..9]).await.expect("gather");
            io.write_all(&f[9..]).await.expect("gather");
            sent.extend_from_slice(&f);
        }
        assert_eq!(writes.get(), 0, "nothing is written before a flush");
        io.flush().await.expect("flush");
        let gathered = writes.get();
        for n in 3..7 {
            let f = data_frame(n);
            io.write_all(&f[..9]).await.expect("gather");
            io.write_all(&f[9..]).await.expect("gather");
            io.flush().await.expect("flush");
            sent.extend_from_slice(&f);
        }
        io.shutdown().await.expect("shutdown writes all, then ends the stream");
        let one_by_one = writes.get() - gathered;
        (peer.await, sent, gathered, one_by_one)
    }

    /// `h2` writes a frame's head and payload in two calls and flushes after each DATA frame:
    /// the adapter makes one write of what a flush finds gathered, at most one per flush (the
    /// calls one by one made eight writes of four frames), and the shutdown comes after every
    /// byte, in order. Both drivers, a real loopback connection.
    #[test]
    fn writes_gather_frames_and_shutdown_comes_last() {
        let check = |(got, sent, gathered, one_by_one): (Vec<u8>, Vec<u8>, usize, usize), driver: &str| {
            assert_eq!(got.len(), sent.len(), "{driver}: bytes lost or added");
            assert!(got == sent, "{driver}: bytes out of order");
            assert_eq!(gathered, 1, "{driver}: three frames under one flush");
            assert!(
                (1..=4).contains(&one_by_one),
                "{driver}: four frames each flushed took {one_by_one} writes"
            );
        };
        let legacy = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(gather_over_loopback());
        check(legacy, "epoll");
        // io_uring where the kernel allows it (kedge falls back to epoll where it does not).
        if let Ok(mut rt) = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            check(rt.block_on(gather_over_loopback()), "io_uring");
        }
    }
}

//! Forwarding an HTTP/2 client stream to an HTTP/2 upstream (gRPC backends): the stream opened
//! on a shared connection of `h2_pool.rs`, with the same retry state as HTTP/1.1
//! (`forward::Tries`: a failed connect, a stream that could not be sent, or one the upstream
//! refused unprocessed, moves on to another endpoint; the request body taken so far is kept,
//! shared, for that until the answer begins), then both bodies moved at once, full duplex,
//! under flow control both ways: request DATA is released to the client only once the
//! upstream granted window for it, response DATA likewise. Trailers pass both ways, a trailers-only answer stays one HEADERS
//! frame, and a reset on either side resets the other (with the same code towards the client).
//!
//! The upstream read timeout applies between messages, not to the whole stream: any DATA in
//! either direction restarts it, so a long-lived stream lives as long as messages flow. The
//! client's `grpc-timeout` bounds the whole call: past it, DEADLINE_EXCEEDED.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::poll_fn;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderValue, Request, Response};

use super::decide::Forward;
use super::error::{ErrorKind, RequestError, Side};
use super::forward::{self, InFlight, Tries};
use super::h2_pool;
use super::log::Record;
use super::session::Ctx;

/// What the call asks for besides its body.
pub(super) struct Call<'a> {
    /// The upstream request head as `http::write_request_head` wrote it for HTTP/1.1, with
    /// kedge's forwarding fields.
    pub head: &'a [u8],
    /// The client sent `te: trailers`.
    pub te_trailers: bool,
    /// When the client's `grpc-timeout` runs out.
    pub deadline: Option<Instant>,
}

/// Sends the request (`call`) to an endpoint of `f`'s backend over HTTP/2 and relays the
/// exchange both ways until it ends. Past `call.deadline` the client gets DEADLINE_EXCEEDED
/// (trailers-only before the answer's head, else in the answer's trailers) and the upstream
/// stream is reset (CANCEL).
///
/// `extra(addr, upstream's answer fields)` gives kedge's response header lines (`Name:
/// value\r\n`). `responded` turns true once the client got response headers or a reset.
///
/// A stream the upstream did not process (RST_STREAM REFUSED_STREAM, or a graceful GOAWAY
/// that left it out: RFC 9113 §8.7) is sent again to the next endpoint, like a failed
/// connect, within the route's tries, as long as the request body taken so far (kept, shared,
/// up to [`REPLAY_MAX`]) can be sent again.
#[expect(clippy::too_many_arguments, reason = "the stream's state, passed once")]
pub(super) async fn forward(
    cx: Ctx<'_>,
    f: &Forward<'_>,
    call: Call<'_>,
    client_body: RecvStream,
    respond: &mut SendResponse<Bytes>,
    responded: &mut bool,
    extra: impl Fn(SocketAddr, &http::HeaderMap) -> Vec<u8>,
    rec: &mut Record,
) -> Result<(), RequestError> {
    let Call {
        head,
        te_trailers,
        deadline,
    } = call;
    let backend = f.routed.backend;
    if backend.endpoints.is_empty() {
        return Err(ErrorKind::NoEndpoint.into());
    }
    let t_up = cx.snap.access_log.then(Instant::now);
    let scheme = if backend.tls.is_some() { "https" } else { "http" };
    let mut body = RequestBody {
        ended: client_body.is_end_stream().then_some(None),
        recv: client_body,
        kept: Vec::new(),
        kept_len: 0,
        whole: true,
        total: 0,
    };
    // The upstream request, made once from the head; a later try makes its own again.
    let mut first = Some(upstream_request(head, scheme, te_trailers)?);
    let mut tries = Tries::default();
    let mut fresh_to: Option<SocketAddr> = None;
    let mut refreshed = false;
    loop {
        // Nothing of the body yet, or all of it ended with the client's HEADERS.
        let end = matches!(body.ended, Some(None)) && body.kept.is_empty();
        let (addr, lease, response, send) = loop {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                deadline_exceeded(respond, responded, rec);
                return Ok(());
            }
            let addr = match fresh_to.take() {
                Some(a) => a,
                None => tries.next(cx, f, rec)?,
            };
            rec.upstream = Some(addr);
            let lease = match h2_pool::lease(cx.worker, cx.snap, backend, addr, f.timeouts.connect).await {
                Ok(l) => l,
                Err(e) => {
                    tries.connect_failed(cx, f, addr, e, rec);
                    continue;
                }
            };
            let req = match first.take() {
                Some(r) => r,
                None => upstream_request(head, scheme, te_trailers)?,
            };
            let sender = lease.sender();
            let ready = monoio::time::timeout(f.timeouts.connect, sender.ready()).await;
            let sent = match ready {
                Ok(Ok(mut s)) => s.send_request(req, end),
                Ok(Err(e)) => Err(e),
                Err(_) => {
                    tries.connect_failed(cx, f, addr, ErrorKind::ConnectTimeout.into(), rec);
                    continue;
                }
            };
            match sent {
                Ok((response, send)) => break (addr, lease, response, send),
                Err(e) => {
                    // GOAWAY received or the connection broke: nothing of this stream left
                    // kedge. The connection takes no new stream; a new one to the same
                    // endpoint gets it once, then the next endpoint.
                    tracing::debug!(upstream = %addr, error = %e, "stream not sent; retrying");
                    lease.close();
                    tries.last = ErrorKind::UpstreamClosed.into();
                    if !std::mem::replace(&mut refreshed, true) {
                        fresh_to = Some(addr);
                    }
                }
            }
        };
        let _inflight = InFlight::begin(cx.worker, addr);
        let exchanged = exchange(
            cx, f, addr, end, deadline, response, send, &mut body, respond, responded, &extra, rec, t_up,
        )
        .await;
        drop(lease);
        match exchanged {
            Ok(()) => return Ok(()),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Refused) if body.whole => {
                tracing::debug!(upstream = %addr, "stream refused by the upstream, not processed; trying another endpoint");
                tries.last = ErrorKind::StreamRefused.into();
            }
            Err(Attempt::Refused) => {
                tracing::debug!(upstream = %addr, "stream refused by the upstream; its body cannot be sent again");
                return Err(ErrorKind::StreamRefused.into());
            }
        }
    }
}

/// The request body kept for another try: at most this many bytes.
const REPLAY_MAX: usize = 64 * 1024;

/// The client's request body, and what of it was taken so far while it can still be sent
/// again (the DATA frames' own `Bytes`, shared, not copied).
struct RequestBody {
    recv: RecvStream,
    kept: Vec<Bytes>,
    kept_len: usize,
    /// `kept` holds everything taken from the client.
    whole: bool,
    /// The client's body ended, with these trailers.
    ended: Option<Option<http::HeaderMap>>,
    total: u64,
}

/// How one try of an exchange failed.
enum Attempt {
    /// The upstream did not process the stream: another endpoint may take it.
    Refused,
    Failed(RequestError),
}

impl From<RequestError> for Attempt {
    fn from(e: RequestError) -> Attempt {
        Attempt::Failed(e)
    }
}

/// Whether an upstream stream's error says it was not processed (RFC 9113 §8.7): reset with
/// REFUSED_STREAM, or above the last stream id of a graceful GOAWAY (one with an error code may
/// have cut off streams it had begun).
fn not_processed(e: &h2::Error) -> bool {
    e.is_remote()
        && ((e.is_reset() && e.reason() == Some(Reason::REFUSED_STREAM))
            || (e.is_go_away() && e.reason() == Some(Reason::NO_ERROR)))
}

/// One try: the request body to `send` while the response head comes, then both bodies until
/// the exchange ends.
#[expect(clippy::too_many_arguments, reason = "the stream's state, passed once")]
async fn exchange(
    cx: Ctx<'_>,
    f: &Forward<'_>,
    addr: SocketAddr,
    end: bool,
    deadline: Option<Instant>,
    response: h2::client::ResponseFuture,
    send: SendStream<Bytes>,
    body: &mut RequestBody,
    respond: &mut SendResponse<Bytes>,
    responded: &mut bool,
    extra: &impl Fn(SocketAddr, &http::HeaderMap) -> Vec<u8>,
    rec: &mut Record,
    t_up: Option<Instant>,
) -> Result<(), Attempt> {
    let activity = Cell::new(Instant::now());
    // Until the answer begins, the body taken is kept for another try.
    let keep = Cell::new(true);
    let read_timeout = f.timeouts.read;
    let mut req_pump = pin!(pump_request(
        body,
        send,
        end,
        &keep,
        &activity,
        f.timeouts.send,
        f.max_body
    ));
    let mut req_done = end;
    let mut idle = pin!(idle_watch(&activity, read_timeout));
    let mut expired = pin!(until(deadline));
    // The response head, while the request body flows.
    let mut response = pin!(response);
    let head = poll_fn(|c| {
        if !req_done && let Poll::Ready(r) = req_pump.as_mut().poll(c) {
            req_done = true;
            match r {
                Err(e) if e.kind != ErrorKind::UpstreamBodyFailed => return Poll::Ready(Err(Ok(e))),
                // The upstream stopped taking the body: its answer (or reset) says why.
                _ => {}
            }
        }
        if respond.poll_reset(c).is_ready() {
            return Poll::Ready(Err(Ok(ErrorKind::ClientGone.into())));
        }
        if idle.as_mut().poll(c).is_ready() {
            return Poll::Ready(Err(Ok(ErrorKind::UpstreamTimeout.into())));
        }
        if expired.as_mut().poll(c).is_ready() {
            return Poll::Ready(Err(Ok(ErrorKind::GrpcDeadline.into())));
        }
        response.as_mut().poll(c).map(|r| r.map_err(Err))
    })
    .await;
    let resp = match head {
        Ok(r) => r,
        Err(Ok(e)) if e.kind == ErrorKind::GrpcDeadline => {
            // Dropping the upstream stream's handles on return resets it (CANCEL).
            tracing::debug!(upstream = %addr, "grpc-timeout passed before the answer");
            deadline_exceeded(respond, responded, rec);
            return Ok(());
        }
        Err(Ok(e)) => {
            // A client that left says nothing about the endpoint.
            if e.side() == Side::Upstream {
                forward::report(cx, f, addr, false);
            }
            return Err(e.into());
        }
        Err(Err(e)) => {
            forward::report(cx, f, addr, false);
            tracing::debug!(upstream = %addr, error = %e, "upstream stream failed before its answer");
            if not_processed(&e) {
                return Err(Attempt::Refused);
            }
            match e.reason() {
                Some(reason) if e.is_reset() => {
                    respond.send_reset(reason);
                    *responded = true;
                    rec.status = 502;
                    return Ok(());
                }
                _ => return Err(RequestError::from(ErrorKind::StreamRefused).into()),
            }
        }
    };
    keep.set(false);
    let (parts, up_body) = resp.into_parts();
    forward::report(cx, f, addr, parts.status.as_u16() < 500);
    rec.upstream_time = t_up.map(|t| t.elapsed());
    rec.status = parts.status.as_u16();
    let lines = extra(addr, &parts.headers);
    let mut out = Response::from_parts(parts, ());
    // A Gateway rule's ResponseHeaderModifier: what it removes or sets goes first.
    if let Some(m) = super::respond::response_mod(f) {
        for name in m.remove.iter().chain(m.set.iter().map(|(n, _)| n)) {
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                out.headers_mut().remove(name);
            }
        }
    }
    super::respond::append_lines(out.headers_mut(), &lines);
    let up_end = up_body.is_end_stream();
    let gone = || Attempt::Failed(ErrorKind::ClientGone.into());
    let mut client_send = respond.send_response(out, up_end).map_err(|_| gone())?;
    *responded = true;
    if up_end {
        // Trailers-only: the whole answer was that HEADERS frame.
        return Ok(());
    }

    // Both bodies at once; the exchange ends with the response.
    let client_timeout = cx.snap.client.body_timeout;
    let ended = {
        let mut resp_pump = pin!(pump_response(up_body, &mut client_send, &activity, client_timeout));
        poll_fn(|c| {
            if !req_done && let Poll::Ready(r) = req_pump.as_mut().poll(c) {
                req_done = true;
                match r {
                    Err(e) if e.kind != ErrorKind::UpstreamBodyFailed => return Poll::Ready(Err(e)),
                    _ => {}
                }
            }
            if idle.as_mut().poll(c).is_ready() {
                return Poll::Ready(Err(ErrorKind::ResponseTimeout.into()));
            }
            if expired.as_mut().poll(c).is_ready() {
                return Poll::Ready(Err(ErrorKind::GrpcDeadline.into()));
            }
            resp_pump.as_mut().poll(c)
        })
        .await
    };
    // Whatever ends the exchange early drops the upstream stream's handles: `h2` resets it
    // (CANCEL).
    match ended {
        Ok(n) => {
            rec.bytes = n;
            Ok(())
        }
        Err(e) if e.kind == ErrorKind::ResponseTimeout => {
            // A gRPC client gets a status it understands rather than a bare reset.
            tracing::debug!(upstream = %addr, "no message within the read timeout; ending the stream");
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("14"));
            t.insert(
                "grpc-message",
                HeaderValue::from_static("upstream sent nothing within the read timeout"),
            );
            client_send.send_trailers(t).map_err(|_| gone())
        }
        Err(e) if e.kind == ErrorKind::GrpcDeadline => {
            tracing::debug!(upstream = %addr, "grpc-timeout passed; ending the stream");
            client_send
                .send_trailers(status_fields(DEADLINE_EXCEEDED, DEADLINE_MESSAGE))
                .map_err(|_| gone())
        }
        Err(e) => Err(e.into()),
    }
}

/// gRPC's DEADLINE_EXCEEDED, and kedge's message with it.
const DEADLINE_EXCEEDED: u8 = 4;
const DEADLINE_MESSAGE: &str = "deadline exceeded (grpc-timeout)";

/// The call's deadline passed before the answer began: a trailers-only DEADLINE_EXCEEDED.
fn deadline_exceeded(respond: &mut SendResponse<Bytes>, responded: &mut bool, rec: &mut Record) {
    trailers_only(respond, DEADLINE_EXCEEDED, DEADLINE_MESSAGE);
    *responded = true;
    rec.status = 200;
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => monoio::time::sleep(d.saturating_duration_since(Instant::now())).await,
        None => std::future::pending().await,
    }
}

/// The `grpc-timeout` field's duration (gRPC over HTTP/2: 1 to 8 digits and a unit, `H` `M`
/// `S` `m` `u` `n`); `None` for anything else (the call then has no deadline of its own).
pub(super) fn grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-status` and `grpc-message` (percent-encoded as gRPC says).
fn status_fields(code: u8, why: &str) -> http::HeaderMap {
    let mut message = String::with_capacity(why.len());
    for b in why.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            message.push(char::from(b));
        } else {
            message.push_str(&format!("%{b:02X}"));
        }
    }
    let mut h = http::HeaderMap::with_capacity(3);
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&message) {
        h.insert("grpc-message", v);
    }
    h
}

/// Answers a gRPC call as gRPC clients expect an error: a trailers-only response (one HEADERS
/// frame ending the stream) with HTTP 200, `content-type: application/grpc`, `grpc-status`
/// and `grpc-message`.
pub(super) fn trailers_only(respond: &mut SendResponse<Bytes>, code: u8, why: &str) {
    let mut r = Response::new(());
    *r.headers_mut() = status_fields(code, why);
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let _ = respond.send_response(r, true);
}

/// The HTTP/2 request for the upstream from the HTTP/1.1 head kedge wrote for it: Host becomes
/// `:authority`, framing fields go (HTTP/2 frames the body), `te: trailers` stays when the
/// client sent it (gRPC servers require it).
fn upstream_request(head: &[u8], scheme: &str, te_trailers: bool) -> Result<Request<()>, RequestError> {
    // One field per line at most: kedge wrote the head, so it parses; only the authority (the
    // client's) may still be refused by `Uri`.
    let lines = head.windows(2).filter(|w| *w == b"\r\n").count();
    let mut fields = vec![httparse::EMPTY_HEADER; lines];
    let mut parsed = httparse::Request::new(&mut fields);
    let bad = || RequestError::from(ErrorKind::BadAuthority);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(head) else {
        return Err(bad());
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err(bad());
    };
    let mut req = Request::builder().method(method);
    let mut authority = None;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            authority = Some(h.value);
            continue;
        }
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        req = req.header(name, h.value);
    }
    if te_trailers {
        req = req.header(http::header::TE, "trailers");
    }
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(authority.unwrap_or(b"localhost"))
        .path_and_query(path)
        .build()
        .map_err(|_| bad())?;
    req.uri(uri).body(()).map_err(|_| bad())
}

/// Resolves once nothing moved for `limit` (`activity`: when something last did).
async fn idle_watch(activity: &Cell<Instant>, limit: Duration) {
    loop {
        let left = limit.saturating_sub(activity.get().elapsed());
        if left.is_zero() {
            return;
        }
        monoio::time::sleep(left).await;
    }
}

/// Sends `data` on `send` as the peer grants window, waiting at most `timeout` for each grant.
async fn send_flow(send: &mut SendStream<Bytes>, mut data: Bytes, timeout: Duration) -> Result<(), ()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = monoio::time::timeout(timeout, poll_fn(|c| send.poll_capacity(c))).await;
        let n = match granted {
            Ok(Some(Ok(n))) => n,
            _ => return Err(()),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, false).map_err(drop)?;
    }
    Ok(())
}

/// The client's request DATA and trailers to the upstream stream (on a new try, what was taken
/// before first; `end`: the request's HEADERS ended the stream), keeping what it takes while
/// `keep` holds. A client reset resets the upstream stream (CANCEL).
async fn pump_request(
    body: &mut RequestBody,
    mut up: SendStream<Bytes>,
    end: bool,
    keep: &Cell<bool>,
    activity: &Cell<Instant>,
    send_timeout: Duration,
    max_body: u64,
) -> Result<(), RequestError> {
    if end {
        return Ok(());
    }
    let failed = |_| RequestError::from(ErrorKind::UpstreamBodyFailed);
    for chunk in &body.kept {
        activity.set(Instant::now());
        send_flow(&mut up, chunk.clone(), send_timeout).await.map_err(failed)?;
    }
    if body.ended.is_none() {
        while let Some(next) = body.recv.data().await {
            let Ok(data) = next else {
                up.send_reset(Reason::CANCEL);
                return Err(ErrorKind::ClientGone.into());
            };
            let n = data.len();
            body.total += n as u64;
            if body.total > max_body {
                up.send_reset(Reason::CANCEL);
                return Err(ErrorKind::BodyTooLarge.into());
            }
            activity.set(Instant::now());
            if body.whole {
                if keep.get() && body.kept_len + n <= REPLAY_MAX {
                    body.kept.push(data.clone());
                    body.kept_len += n;
                } else {
                    body.whole = false;
                    body.kept = Vec::new();
                }
            }
            send_flow(&mut up, data, send_timeout).await.map_err(failed)?;
            let _ = body.recv.flow_control().release_capacity(n);
        }
        match poll_fn(|c| body.recv.poll_trailers(c)).await {
            Ok(t) => body.ended = Some(t),
            Err(_) => {
                up.send_reset(Reason::CANCEL);
                return Err(ErrorKind::ClientGone.into());
            }
        }
    }
    let sent = match &body.ended {
        Some(Some(trailers)) => up.send_trailers(trailers.clone()),
        _ => up.send_data(Bytes::new(), true),
    };
    sent.map_err(|_| ErrorKind::UpstreamBodyFailed.into())
}

/// The upstream's response DATA and trailers to the client stream; returns the body bytes
/// moved. An upstream reset resets the client stream with the same code; a client reset ends
/// this with `ClientGone` (the caller drops the upstream stream, which resets it).
async fn pump_response(
    mut up: RecvStream,
    client: &mut SendStream<Bytes>,
    activity: &Cell<Instant>,
    client_timeout: Duration,
) -> Result<u64, RequestError> {
    let gone = || RequestError::from(ErrorKind::ClientGone);
    let mut moved = 0u64;
    loop {
        let next = monoio::select! {
            d = up.data() => d,
            _ = poll_fn(|c| client.poll_reset(c)) => return Err(gone()),
        };
        match next {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upstream stream reset mid-answer");
                client.send_reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR));
                return Ok(moved);
            }
            Some(Ok(data)) => {
                let n = data.len();
                activity.set(Instant::now());
                send_flow(client, data, client_timeout).await.map_err(|()| gone())?;
                let _ = up.flow_control().release_capacity(n);
                moved += n as u64;
            }
        }
    }
    match poll_fn(|c| up.poll_trailers(c)).await {
        Ok(Some(trailers)) => client.send_trailers(trailers).map_err(|_| gone())?,
        Ok(None) => client.send_data(Bytes::new(), true).map_err(|_| gone())?,
        Err(e) => client.send_reset(e.reason().unwrap_or(Reason::INTERNAL_ERROR)),
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::{grpc_timeout, upstream_request};
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_are_read_as_the_spec_writes_them() {
        let cases: [(&[u8], Option<Duration>); 12] = [
            (b"1H", Some(Duration::from_secs(3600))),
            (b"2M", Some(Duration::from_secs(120))),
            (b"30S", Some(Duration::from_secs(30))),
            (b"100m", Some(Duration::from_millis(100))),
            (b"250u", Some(Duration::from_micros(250))),
            (b"99999999n", Some(Duration::from_nanos(99_999_999))),
            (b"123456789m", None),
            (b"m", None),
            (b"10", None),
            (b"10s", None),
            (b"-1S", None),
            (b"1 S", None),
        ];
        for (text, want) in cases {
            assert_eq!(grpc_timeout(text), want, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn h1_heads_become_h2_requests() {
        let head = b"POST /pkg.Svc/Call HTTP/1.1\r\nContent-Type: application/grpc\r\nHost: api.example\r\n\
                     X-Forwarded-For: 10.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let req = upstream_request(head, "http", true).unwrap();
        assert_eq!(req.method(), "POST");
        assert_eq!(req.uri().to_string(), "http://api.example/pkg.Svc/Call");
        assert_eq!(req.headers().get("te").unwrap(), "trailers");
        assert_eq!(req.headers().get("x-forwarded-for").unwrap(), "10.0.0.1");
        assert!(req.headers().get("transfer-encoding").is_none());
        assert!(req.headers().get("host").is_none());
    }
}

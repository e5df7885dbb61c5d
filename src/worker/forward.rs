//! Getting a request to an upstream and its response head back: the connector (pooled
//! connection, else TCP then TLS), sending the head and streaming the body, reading the response
//! head, and the retry state machine around them:
//!
//! - a failed connect moves on to another endpoint, while tries remain;
//! - an idempotent request without a body moves on when the connection dies or times out before
//!   any response byte, and (`proxy-next-upstream`) when the answer is a status the rule retries;
//! - a reused pooled connection found dead is replaced by a fresh one to the same endpoint,
//!   without counting as a try;
//! - a request whose body was sent is never repeated;
//! - an upstream that stops taking the body (it closed, or stalled past the send timeout) may
//!   have answered early, as an upload it refuses often is: that answer, read from its socket,
//!   goes to the client instead of a 502 (the exchange says the body was cut).
//!
//! Each try is counted in flight on its endpoint (least-request balancing) and reported to the
//! balancer (outlier ejection); retries and connect errors go to the backend's metrics.
//!
//! It knows no front end: the caller hands it the upstream request head (built by
//! `http::write_request_head` from the request view) and a [`SendBody`] that streams the body
//! from wherever the client's bytes are (the HTTP/1.1 connection buffer and socket, an HTTP/2
//! stream); the response head lands in the caller's [`UpstreamBufs`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use super::balance::{PickInput, Tried};
use super::decide::Forward;
use super::error::{ErrorKind, RequestError, Retry};
use super::log::Record;
use super::pump::{self, ReadResult};
use super::session::{Ctx, UpstreamBufs};
use super::timer;
use super::tls::TlsStream;
use super::upstream::UpstreamStream;
use super::{Snapshot, Worker};
use crate::http::{self, Parsed, ResponseHead};
use crate::routes::Backend;

/// Limits for upstream response heads (not user-configurable: upstreams are trusted more).
const UPSTREAM_HEAD_LIMITS: http::Limits = http::Limits {
    max_request_line: 64 * 1024,
    max_header_bytes: 64 * 1024,
    max_headers: 200,
};

/// An upstream that answered: its connection, address and response head (still in `ubuf`),
/// counted in flight until dropped.
pub(super) struct Exchange<'w> {
    pub upstream: UpstreamStream,
    pub addr: SocketAddr,
    pub resp: ResponseHead,
    /// The upstream answered before it took the whole request body: its connection is not
    /// reused, and the client's body is left unread (its connection closes after the answer).
    pub body_cut: bool,
    pub _inflight: InFlight<'w>,
}

/// How long an upstream that stopped taking the request body has to show an early answer. An
/// answer it sent is in its socket already; this only bounds the wait when there is none.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// A front end's way of sending a request body to an upstream connection.
pub(super) trait SendBody {
    /// Writes `out` (the request head) and then the body to `upstream`, re-framed as the head
    /// announced, under `send_timeout` per write and `max_body` in all. `out` comes back empty.
    /// `upstream` is the connection, or a `mirror::Tee` over it that copies what it takes.
    async fn send<W: AsyncWriteRent>(
        &mut self,
        upstream: &mut W,
        out: &mut Vec<u8>,
        send_timeout: Duration,
        max_body: u64,
    ) -> Result<(), RequestError>;
}

/// What the forward phase needs of the request besides its head bytes.
#[derive(Clone, Copy)]
pub(super) struct Sending {
    /// The request has a body (streamed by the [`SendBody`]; never sent twice).
    pub has_body: bool,
    /// A HEAD request (its response has no body whatever it says).
    pub is_head: bool,
    /// Idempotent and without a body: safe to send again.
    pub retry_ok: bool,
    /// The client waits for 100 Continue before sending its body.
    pub expect_continue: bool,
    /// The client asked to switch protocols (a 101 is only accepted then).
    pub upgrade: bool,
}

/// Sends the request (its head in `out`, its body streamed by `body`) to an endpoint of `f`'s
/// backend, retrying as the module describes, and reads the response head into `up`. `out`
/// keeps the head while a retry may need it.
pub(super) async fn forward<'w, B: SendBody>(
    cx: Ctx<'w>,
    f: &Forward<'_>,
    req: Sending,
    out: &mut Vec<u8>,
    body: &mut B,
    up: &mut UpstreamBufs,
    rec: &mut Record,
) -> Result<Exchange<'w>, RequestError> {
    // A Gateway rule's `timeouts.request` bounds the whole request, from its start to the
    // response head.
    match f.gw.and_then(|g| g.action.request_timeout) {
        None => forward_tries(cx, f, req, out, body, up, rec).await,
        // Inline, as the per-try one below: a `timer::timeout` adds a few words to the task.
        Some(t) => {
            let left = t.saturating_sub(cx.start.elapsed());
            timer::timeout(left, forward_tries(cx, f, req, out, body, up, rec))
                .await
                .unwrap_or(Err(ErrorKind::RouteTimeout.into()))
        }
    }
}

/// [`forward`] without the route's request timeout.
async fn forward_tries<'w, B: SendBody>(
    cx: Ctx<'w>,
    f: &Forward<'_>,
    req: Sending,
    out: &mut Vec<u8>,
    body: &mut B,
    up: &mut UpstreamBufs,
    rec: &mut Record,
) -> Result<Exchange<'w>, RequestError> {
    let Ctx { worker, snap, start } = cx;
    let (backend, policy) = (f.routed.backend, f.routed.policy);
    if backend.h2 {
        return Err(ErrorKind::NeedsHttp2.into());
    }
    let report = |addr, ok| report(cx, f, addr, ok);
    // Timing the upstream costs clock reads; only the access log wants it.
    let t_up = snap.access_log.then(Instant::now);
    let mut tries = Tries::default();
    let mut fresh_to: Option<SocketAddr> = None;
    if backend.endpoints.is_empty() {
        return Err(ErrorKind::NoEndpoint.into());
    }
    let exchange = loop {
        let addr = match fresh_to.take() {
            Some(a) => a,
            None => tries.next(cx, f, rec)?,
        };
        rec.upstream = Some(addr);
        let (mut upstream, reused) = match connect(worker, backend, addr, snap, f.timeouts.connect, start).await {
            Ok(c) => c,
            Err(e) => {
                tries.connect_failed(cx, f, addr, e, rec);
                continue;
            }
        };
        let inflight = InFlight::begin(worker, addr);
        let read = {
            // Pinned where it is made: awaited directly or under a timeout, it is not moved (a
            // move copies the whole future, the I/O futures of both steps included).
            let attempt = std::pin::pin!(async {
                let sent = match req.has_body {
                    false => send_head(&mut upstream, out, f.timeouts.send).await,
                    true => body.send(&mut upstream, out, f.timeouts.send, f.max_body).await,
                };
                match sent {
                    Ok(()) => read_response_head(&mut upstream, up, req.is_head, f.timeouts.read)
                        .await
                        .map(|r| (r, false)),
                    // An early answer, if the upstream gave one, is what it means; else the
                    // body's failure is the error.
                    Err(e) if e.kind == ErrorKind::UpstreamBodyFailed => {
                        match read_response_head(&mut upstream, up, req.is_head, EARLY_ANSWER_WAIT).await {
                            Ok(r) => {
                                tracing::debug!(upstream = %addr, status = r.status, "upstream answered before taking the whole body");
                                Ok((r, true))
                            }
                            Err(_) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            });
            // A Gateway rule's `timeouts.backendRequest` bounds each try, to its response head.
            match f.gw.and_then(|g| g.action.backend_timeout) {
                None => attempt.await,
                Some(t) => timer::timeout(t, attempt)
                    .await
                    .unwrap_or(Err(ErrorKind::UpstreamTimeout.into())),
            }
        };
        match read {
            // proxy-next-upstream http_5xx: an idempotent request without a body whose
            // answer is one of those statuses goes to another endpoint while tries remain;
            // the answer is dropped with its connection.
            Ok((resp, _))
                if req.retry_ok
                    && policy.retry_on.contains(&resp.status)
                    && tries.count() < f.tries.min(backend.endpoints.len()) =>
            {
                report(addr, false);
                tracing::debug!(upstream = %addr, status = resp.status, "retrying on another endpoint");
                tries.last = ErrorKind::AllTriedFailed.into();
                drop(upstream);
            }
            Ok((resp, body_cut)) => {
                break Exchange {
                    upstream,
                    addr,
                    resp,
                    body_cut,
                    _inflight: inflight,
                };
            }
            Err(e) if e.retry() == Retry::IfIdempotent => {
                let dead_reused = reused && e.kind == ErrorKind::UpstreamClosed;
                if dead_reused && req.retry_ok {
                    tracing::debug!(upstream = %addr, "reused upstream connection was dead; retrying on a new one");
                    fresh_to = Some(addr);
                    continue;
                }
                // A reused connection that died says nothing about the endpoint.
                if !dead_reused {
                    report(addr, false);
                }
                if !req.retry_ok {
                    return Err(e);
                }
                tries.last = e;
                tracing::debug!(upstream = %addr, "no response from upstream; trying another endpoint");
            }
            Err(e) => return Err(e),
        }
    };
    report(exchange.addr, exchange.resp.status < 500);
    rec.upstream_time = t_up.map(|t| t.elapsed());
    rec.status = exchange.resp.status;
    Ok(exchange)
}

/// The endpoints one request tried and why the last try failed: the retry state that every
/// upstream kind (HTTP/1.1 connections here, HTTP/2 streams in `forward_h2.rs`) steps through.
#[derive(Default)]
pub(super) struct Tries {
    tried: Tried,
    /// Why the last try failed (a connect failure when none was made).
    pub last: RequestError,
}

impl Tries {
    /// Endpoints tried so far.
    pub fn count(&self) -> usize {
        self.tried.len()
    }

    /// The next endpoint to try, or the error that ends the request: tries used up, the
    /// rule's `retry_timeout` past, or no endpoint left to pick.
    pub fn next(&mut self, cx: Ctx<'_>, f: &Forward<'_>, rec: &Record) -> Result<SocketAddr, RequestError> {
        let (backend, policy) = (f.routed.backend, f.routed.policy);
        let n = self.tried.len();
        if n >= f.tries {
            return Err(self.last);
        }
        if n > 0
            && let Some(limit) = policy.retry_timeout
            && cx.start.elapsed() >= limit
        {
            return Err(self.last);
        }
        let input = PickInput {
            seed: cx.worker.random(),
            ..f.pick
        };
        let picked = cx
            .worker
            .balancer
            .borrow_mut()
            .pick(backend, policy, input, &self.tried, cx.start);
        let Some(a) = picked else { return Err(self.last) };
        if n > 0
            && let Some(m) = &rec.metrics
        {
            m.retries.fetch_add(1, Relaxed);
        }
        self.tried.push(a);
        Ok(a)
    }

    /// A connect (TCP or TLS) to `addr` failed: reported to the balancer and counted; the
    /// request moves on.
    pub fn connect_failed(&mut self, cx: Ctx<'_>, f: &Forward<'_>, addr: SocketAddr, e: RequestError, rec: &Record) {
        report(cx, f, addr, false);
        if let Some(m) = &rec.metrics {
            m.connect_errors.fetch_add(1, Relaxed);
        }
        debug_assert_eq!(e.retry(), Retry::Always);
        self.last = e;
    }
}

/// Tells the balancer how a try on `addr` went (outlier ejection).
pub(super) fn report(cx: Ctx<'_>, f: &Forward<'_>, addr: SocketAddr, ok: bool) {
    cx.worker
        .balancer
        .borrow_mut()
        .report(addr, ok, f.routed.backend, &cx.snap.upstream, Instant::now);
}

/// Writes a bodiless request's head; `out` keeps it after the write, for a retry.
async fn send_head(
    upstream: &mut UpstreamStream,
    out: &mut Vec<u8>,
    send_timeout: Duration,
) -> Result<(), RequestError> {
    let head = std::mem::take(out);
    let (res, head) = pump::write_all(upstream, head, send_timeout)
        .await
        .map_err(|()| RequestError::from(ErrorKind::SendTimeout))?;
    *out = head;
    res.map(drop).map_err(|_| ErrorKind::UpstreamClosed.into())
}

/// Reads the upstream's response head into `up`, skipping interim 1xx answers other than 101.
async fn read_response_head(
    upstream: &mut UpstreamStream,
    up: &mut UpstreamBufs,
    is_head: bool,
    read_timeout: Duration,
) -> Result<ResponseHead, RequestError> {
    up.buf.clear();
    let mut got_any = false;
    loop {
        // Nothing read yet (the first pass): nothing to parse.
        let parsed = if up.buf.is_empty() {
            Ok(Parsed::Partial)
        } else {
            http::parse_response(&up.buf, &UPSTREAM_HEAD_LIMITS, is_head, &mut up.headers)
        };
        match parsed {
            Ok(Parsed::Complete(resp)) if (100..200).contains(&resp.status) && resp.status != 101 => {
                up.buf.drain(..resp.head_len);
                continue;
            }
            Ok(Parsed::Complete(resp)) => return Ok(resp),
            Ok(Parsed::Partial) => {}
            Err(e) => {
                tracing::debug!(error = ?e, "invalid response head from upstream");
                return Err(ErrorKind::BadResponse.into());
            }
        }
        let kind = match pump::read_with_timeout(upstream, &mut up.buf, read_timeout).await {
            ReadResult::Data(_) => {
                got_any = true;
                continue;
            }
            ReadResult::Timeout if !got_any => ErrorKind::UpstreamTimeout,
            ReadResult::Timeout => ErrorKind::ResponseTimeout,
            ReadResult::Eof | ReadResult::Error if !got_any => ErrorKind::UpstreamClosed,
            ReadResult::Eof | ReadResult::Error => ErrorKind::ResponseCutShort,
        };
        return Err(kind.into());
    }
}

/// A connection to `addr`: an idle pooled one (`true`: reused) or a new one (TCP, then TLS for
/// a backend with upstream TLS), under `connect_timeout` each.
async fn connect(
    worker: &Worker,
    backend: &Backend,
    addr: SocketAddr,
    snap: &Snapshot,
    connect_timeout: Duration,
    now: Instant,
) -> Result<(UpstreamStream, bool), RequestError> {
    if let Some(stream) = worker
        .pool
        .borrow_mut()
        .take((addr, tls_id(backend)), snap.upstream.idle_timeout, now)
    {
        return Ok((stream, true));
    }
    // Boxed: connecting (TCP, maybe a TLS handshake) is the largest state of a request, and it
    // is rare with pooled connections; inline it would grow every connection's task for good.
    Ok((Box::pin(connect_new(backend, addr, connect_timeout)).await?, false))
}

/// A new connection to `addr`: TCP, then TLS for a backend with upstream TLS, under
/// `connect_timeout` each.
pub(super) async fn connect_new(
    backend: &Backend,
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<UpstreamStream, RequestError> {
    let kind = match timer::timeout(connect_timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let Some(tls) = &backend.tls else {
                return Ok(UpstreamStream::Plain(stream));
            };
            let handshake = TlsStream::connect(stream, Arc::clone(&tls.config), tls.name.clone());
            match timer::timeout(connect_timeout, handshake).await {
                Ok(Ok(s)) => return Ok(UpstreamStream::Tls(Box::new(s))),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %addr, error = %e, "TLS handshake with upstream failed");
                    ErrorKind::TlsFailed
                }
                Err(_) => {
                    tracing::debug!(upstream = %addr, "TLS handshake with upstream timed out");
                    ErrorKind::TlsTimeout
                }
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %addr, error = %e, "connect failed");
            ErrorKind::ConnectFailed
        }
        Err(_) => {
            tracing::debug!(upstream = %addr, "connect timed out");
            ErrorKind::ConnectTimeout
        }
    };
    Err(kind.into())
}

/// Parks a connection whose response ended cleanly in the worker's pool for the next request
/// to the same endpoint.
pub(super) fn release(
    worker: &Worker,
    snap: &Snapshot,
    backend: &Backend,
    addr: SocketAddr,
    upstream: UpstreamStream,
    now: Instant,
) {
    worker.pool.borrow_mut().put(
        (addr, tls_id(backend)),
        upstream,
        snap.upstream.max_idle_per_endpoint,
        now,
    );
}

/// A request in flight to an endpoint, for least-request balancing: counted from the request
/// being sent until this is dropped (the response done, or the request failed).
pub(super) struct InFlight<'w> {
    worker: &'w Worker,
    addr: SocketAddr,
}

impl<'w> InFlight<'w> {
    pub(super) fn begin(worker: &'w Worker, addr: SocketAddr) -> InFlight<'w> {
        worker.balancer.borrow_mut().begin(addr);
        InFlight { worker, addr }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.balancer.borrow_mut().end(self.addr);
    }
}

/// The pool key part for a backend's TLS settings (0: plain).
pub(super) fn tls_id(backend: &Backend) -> u64 {
    backend.tls.as_ref().map_or(0, |t| t.id)
}

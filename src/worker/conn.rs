//! One client connection: the loop that waits for a request, reads its head, and runs the
//! request's phases in order, while keep-alive holds:
//!
//! ```text
//! read head → view (request.rs) → decide (decide.rs, pure) → checks (limits, auth)
//!   → answer (respond.rs)
//!   | forward (forward.rs: connect / pool / retry, send head + body, read response head)
//!     → respond (respond.rs: 101 → tunnel; response head + body, park upstream)
//! → log (log.rs)
//! ```
//!
//! Everything a phase reads of the request comes from the protocol-neutral
//! [`RequestView`](super::request::RequestView); the HTTP/1.1 head leaves the buffer as soon as
//! the view is done with, before any body is read. Every failure is a
//! [`RequestError`], answered (or not) in one place.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::bufs::Class;
use super::checks::{self, InProgress};
use super::client;
use super::decide::{self, Decision, Forward};
use super::error::{ErrorKind, RequestError};
use super::forward::{self, SendBody, Sending};
use super::log::{self, Record};
use super::mirror;
use super::pump::{self, BadChunks, PumpError, PumpLimits, ReadResult};
use super::request::{self, HeaderBuf};
use super::respond::{self, Ending};
use super::session::{ClientStream, Conn, Ctx, Next, PeerText, UpstreamBufs, write_client};
use super::timer;
use super::upstream::UpstreamStream;
use super::{Snapshot, Worker};
use crate::http::{self, Framing, Parsed, RequestHead, Version};

/// A wait between requests at least this long marks a connection as mostly idle: its next wait
/// frees its TLS read buffer and waits for readiness (`Conn::wait_idle`).
const LONG_WAIT: Duration = Duration::from_millis(100);

/// Serves one accepted client connection until it closes. `cbuf`: the connection's read
/// buffer, maybe holding the first bytes already (read by the protocol stage).
pub(super) async fn serve<S: ClientStream>(
    worker: &Rc<Worker>,
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
    cbuf: Vec<u8>,
) {
    let mut conn = Conn {
        client,
        peer,
        local,
        cbuf,
        up: UpstreamBufs {
            buf: worker.bufs.take(Class::Input),
            headers: worker.bufs.take_spans(),
        },
        out: worker.bufs.take(Class::Output),
        headers: worker.bufs.take_spans(),
        pairs: HeaderBuf::default(),
        gw_pairs: HeaderBuf::default(),
        origin: Vec::new(),
        meta: String::new(),
        rewritten: String::new(),
        extra: Vec::new(),
        peer_text: PeerText::new(peer.ip()),
        waits_long: true,
        lingers: false,
    };
    match conn.run(worker).await {
        // Boxed: a tunnel (after a 101) is rare and larger than the request loop it follows.
        Some((upstream, idle)) => {
            if Box::pin(conn.tunnel(upstream, idle)).await {
                worker
                    .metrics
                    .tunnels_idle_closed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        None => {
            conn.client.close().await;
            let pool = &worker.bufs;
            pool.give(Class::Input, conn.cbuf);
            pool.give(Class::Input, conn.up.buf);
            pool.give(Class::Output, conn.out);
            pool.give_spans(conn.headers);
            pool.give_spans(conn.up.headers);
        }
    }
}

/// What the decision phase leaves for the acting phases.
#[expect(
    clippy::large_enum_variant,
    reason = "one per request, on the stack; boxing the forward would allocate per request"
)]
enum Plan<'s> {
    /// kedge's answer is in `out`; `keep`: the connection stays open after it.
    Answer { status: u16, keep: bool },
    /// Forward as decided; the upstream request head is in `out`.
    Forward(Forward<'s>, Sending),
}

impl<S: ClientStream> Conn<S> {
    /// The request loop. Returns the upstream to tunnel to after a 101 and the tunnel's idle
    /// timeout, else `None` when the connection is done.
    async fn run(&mut self, worker: &Rc<Worker>) -> Option<(UpstreamStream, Duration)> {
        let conn = self;
        let mut first = true;
        // When the last request ended: the idle wait's timeout counts from there.
        let mut idle_since = None;
        loop {
            let snap = worker.snapshot();
            let start = conn.wait_for_request(worker, &snap, first, idle_since).await?;
            first = false;
            // Until a head says otherwise (an unparsable one is logged as HTTP/1.1).
            let mut rec = Record {
                protocol: "HTTP/1.1",
                ..Record::default()
            };
            let head = match conn.read_head(&snap, start).await {
                Ok(h) => h,
                Err(e) => {
                    if let Some((status, why)) = e.answer() {
                        rec.status = status;
                        conn.answer_error(status, why, true).await;
                        log::log_request(worker, &snap, conn.peer, &conn.meta, &rec, start);
                        conn.close_gently().await;
                    }
                    return None;
                }
            };
            let keep = match conn.handle(worker, &snap, &head, &mut rec, start).await {
                Ok(Next::KeepAlive) => true,
                Ok(Next::Close) => false,
                Ok(Next::Tunnel(upstream, idle)) => {
                    log::log_request(worker, &snap, conn.peer, &conn.meta, &rec, start);
                    return Some((upstream, idle));
                }
                Err(e) => match e.answer() {
                    Some((status, why)) => {
                        tracing::debug!(side = ?e.side(), error = ?e.kind, "request failed");
                        rec.status = status;
                        let body = respond::body_of(head.framing);
                        let stopping = worker.stopping.is_set();
                        let keep = respond::keep_alive(head.keep_alive, body, Ending::Answered(status), stopping);
                        conn.answer_error(status, why, !keep).await;
                        keep
                    }
                    None => {
                        if rec.status == 0 {
                            rec.status = 499; // client closed the connection (nginx's convention)
                        }
                        false
                    }
                },
            };
            let end = log::log_request(worker, &snap, conn.peer, &conn.meta, &rec, start);
            if !keep {
                conn.close_gently().await;
                return None;
            }
            idle_since = Some(end);
        }
    }

    /// Waits until the next request's first byte is buffered. `None`: the client closed, the
    /// idle timeout passed, or the process is shutting down. Returns when the request started.
    /// `idle_since`: when the previous request ended (the wait's timeout counts from there; `None`:
    /// from the wait's start).
    async fn wait_for_request(
        &mut self,
        worker: &Worker,
        snap: &Snapshot,
        first: bool,
        idle_since: Option<Instant>,
    ) -> Option<Instant> {
        if !self.cbuf.is_empty() {
            return Some(Instant::now()); // pipelined
        }
        if worker.stopping.is_set() {
            return None;
        }
        // A new connection gets the header timeout for its first byte; an idle keep-alive
        // connection gets the keep-alive timeout. Either way silence is closed without an answer.
        let wait = if first {
            snap.client.header_timeout
        } else {
            snap.client.keepalive_timeout
        };
        // Biased: no random draw per wait (the data first; a stop is seen at the next check).
        let mut woke = None;
        let r = monoio::select! {
            biased;
            r = self.wait_idle(worker, wait, first, idle_since, &mut woke) => r,
            _ = worker.stopping.wait() => return None,
        };
        match r {
            ReadResult::Data(_) => Some(woke.unwrap_or_else(Instant::now)),
            ReadResult::Eof | ReadResult::Timeout | ReadResult::Error => None,
        }
    }

    /// Reads the next request's first bytes into the empty `cbuf`, within `wait`. Meanwhile the
    /// request buffers wait in the worker's pool (`bufs.rs`): an idle connection holds none of
    /// them, and a TLS connection not even `cbuf` (it waits on its ciphertext buffer). Under
    /// load this is a few pool pushes and pops per request, no allocation and no syscall.
    /// `woke`: when the data came, where the wait read the clock (the request's start).
    async fn wait_idle(
        &mut self,
        worker: &Worker,
        wait: Duration,
        first: bool,
        idle_since: Option<Instant>,
        woke: &mut Option<Instant>,
    ) -> ReadResult {
        let pool = &worker.bufs;
        pool.give(Class::Input, std::mem::take(&mut self.up.buf));
        pool.give(Class::Output, std::mem::take(&mut self.out));
        pool.give_spans(std::mem::take(&mut self.up.headers));
        pool.give_spans(std::mem::take(&mut self.headers));
        if S::WAITS_WITHOUT_BUFFER {
            pool.give(Class::Input, std::mem::take(&mut self.cbuf));
            // A connection whose last wait was long is likely idle again: it waits holding
            // nothing. One whose requests come quickly keeps its read buffer posted, so a busy
            // connection pays no extra operation per request.
            let bare = self.waits_long;
            let since = idle_since.unwrap_or_else(Instant::now);
            match timer::timeout_from(since, wait, self.client.wait_data(bare)).await {
                Err(_) => return ReadResult::Timeout,
                Ok(Err(_)) => return ReadResult::Error,
                Ok(Ok(false)) => return ReadResult::Eof,
                Ok(Ok(true)) => self.cbuf = pool.take(Class::Input),
            }
            // The wait for the first request (right after the handshake) says nothing of the
            // client's pace.
            let now = Instant::now();
            *woke = Some(now);
            if !first {
                self.waits_long = now.duration_since(since) >= LONG_WAIT;
            }
        }
        // TLS: the bytes are there, or the rest of a record is on its way (a deadline from the
        // read's first wait). Plain: this is the idle wait itself.
        let r = match S::WAITS_WITHOUT_BUFFER {
            true => pump::read_with_timeout(&mut self.client, &mut self.cbuf, wait).await,
            false => pump::read_with_deadline(&mut self.client, &mut self.cbuf, idle_since, wait).await,
        };
        self.up.buf = pool.take(Class::Input);
        self.out = pool.take(Class::Output);
        self.up.headers = pool.take_spans();
        self.headers = pool.take_spans();
        r
    }

    /// Reads until a whole request head is buffered and parses it.
    async fn read_head(&mut self, snap: &Snapshot, start: Instant) -> Result<RequestHead, RequestError> {
        let c = &snap.client;
        let limits = http::Limits {
            max_request_line: c.max_request_line,
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
        };
        let deadline = start + c.header_timeout;
        loop {
            if let Parsed::Complete(head) = http::parse_request(&self.cbuf, &limits, &mut self.headers)? {
                return Ok(head);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match pump::read_with_timeout(&mut self.client, &mut self.cbuf, left).await {
                ReadResult::Data(_) => {}
                ReadResult::Timeout => return Err(ErrorKind::HeadTimeout.into()),
                ReadResult::Eof | ReadResult::Error => return Err(ErrorKind::ClientGone.into()),
            }
        }
    }

    /// One request after its head is parsed: plan it, then act on the plan.
    async fn handle(
        &mut self,
        worker: &Rc<Worker>,
        snap: &Snapshot,
        head: &RequestHead,
        rec: &mut Record,
        start: Instant,
    ) -> Result<Next, RequestError> {
        rec.protocol = match head.version {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        };
        let planned = self.plan(worker, snap, head, rec, start);
        // The head leaves the buffer whatever was decided: what follows is body or the next
        // request.
        self.cbuf.drain(..head.head_len);
        // Per-client limits hold until the request is done.
        let (plan, _in_progress) = planned?;
        match plan {
            Plan::Answer { status, keep } => {
                rec.status = status;
                // Not before an error's close: it lingers, reading what the client still sends,
                // and a held answer would wait that long.
                if !respond::is_error(status) {
                    self.before_last_answer(head);
                }
                self.send_answer(snap, head, status, !keep).await?;
                Ok(if keep { Next::KeepAlive } else { Next::Close })
            }
            Plan::Forward(f, sending) => {
                let cx = Ctx { worker, snap, start };
                let body = H1Body {
                    client: &mut self.client,
                    cbuf: &mut self.cbuf,
                    framing: head.framing,
                    expect_continue: sending.expect_continue,
                    body_timeout: snap.client.body_timeout,
                };
                let mut body = mirror::Teed::new(cx, &f, body);
                // Each phase's future is pinned where it is made: awaiting it by value would
                // first copy all of it into place (a few hundred bytes, every request).
                let exchange = std::pin::pin!(forward::forward(
                    cx,
                    &f,
                    sending,
                    &mut self.out,
                    &mut body,
                    &mut self.up,
                    rec
                ))
                .await?;
                std::pin::pin!(self.respond(cx, head, &f, sending.upgrade, exchange, rec)).await
            }
        }
    }

    /// The phases that read the request head, without I/O: view → decide → checks, then the
    /// bytes to send (the answer, or the upstream request head) into `out`.
    fn plan<'s, 'w>(
        &mut self,
        worker: &'w Worker,
        snap: &'s Snapshot,
        head: &RequestHead,
        rec: &mut Record,
        start: Instant,
    ) -> Result<(Plan<'s>, Option<InProgress<'w>>), RequestError> {
        let mut pairs = self.pairs.take();
        request::h1_headers(&self.cbuf, &self.headers, &mut pairs);
        let mut rid = [0u8; 32];
        let mut client_text: client::Text = [0; 48];
        let mut planned = || {
            // The view is changed in place below, not rebuilt: it is a few hundred bytes.
            let mut view = request::from_h1(
                &self.cbuf,
                head,
                &pairs,
                S::SCHEME,
                self.peer,
                self.local,
                &self.peer_text,
            )?;
            // The client's X-Request-ID is kept; without one, kedge makes one up.
            view.request_id = match view.header(b"x-request-id") {
                Some(given) => given,
                None => {
                    worker.request_id(&mut rid);
                    &rid[..]
                }
            };
            let from_trusted = client::resolve(&mut view, &snap.client.trusted_proxies, &mut client_text);
            rec.client = Some(view.peer.ip());
            if snap.access_log {
                rec.describe(&mut self.meta, &view);
            }
            let settings = decide::Settings {
                table: &snap.table,
                client: &snap.client,
                upstream: &snap.upstream,
                redirect_port: snap.https.redirect_port,
            };
            let mut decision = decide::decide(&settings, &view, worker.random(), &mut self.rewritten);
            rec.metrics = decision
                .routed()
                .map(|r| worker.backend_metrics(&r.backend.name, &r.policy.host));
            let in_progress = checks::run(worker, &mut decision, &view, start);
            self.out.clear();
            let plan = match decision {
                Decision::Answer(a) => {
                    let stopping = worker.stopping.is_set();
                    let keep = respond::keep_alive(view.keep_alive, view.body, Ending::Answered(a.status), stopping);
                    respond::write_answer(&mut self.out, &mut self.extra, &a, !keep);
                    Plan::Answer { status: a.status, keep }
                }
                Decision::Forward(f) => {
                    if head.framing == Framing::Chunked {
                        check_buffered_chunks(&self.cbuf[head.head_len..], f.max_body)?;
                    }
                    // The upstream head, built once: a retry on another connection sends the
                    // same bytes.
                    // A Gateway rule's CORS needs the Origin when the response comes.
                    self.origin.clear();
                    if f.gw.is_some_and(|g| g.action.cors.is_some())
                        && let Some(o) = view.header(b"origin")
                    {
                        self.origin.extend_from_slice(o);
                    }
                    // A Gateway rule's header changes and host rewrite.
                    let mut changed = self.gw_pairs.take();
                    // The fields as they came (their lines copied as they are), or as changed.
                    let (headers, host, lines) = match &f.gw {
                        None => {
                            let lines = http::FieldLines::new(&self.cbuf, &self.headers, head.head_len);
                            (view.headers, None, Some(lines))
                        }
                        Some(gw) => {
                            gw.request_headers(view.headers, &mut changed);
                            (&changed[..], gw.host(), None)
                        }
                    };
                    let fwd = http::Forwarded {
                        client_ip: view.client_ip,
                        peer_ip: &self.peer_text,
                        from_trusted,
                        proto: S::SCHEME,
                        host: view.authority,
                        port: self.local.port(),
                        request_id: view.request_id,
                        target: f.rewritten.then_some(self.rewritten.as_bytes()),
                        upstream_host: host.map(str::as_bytes),
                    };
                    let req = http::RequestOut {
                        method: view.method,
                        target: view.target,
                        headers,
                        has_host: head.host.is_some(),
                        framing: head.framing,
                        upgrade: view.upgrade,
                        lines,
                    };
                    http::write_request_head(&mut self.out, &req, &fwd);
                    self.gw_pairs.put(changed);
                    if head.framing == Framing::None {
                        // A request with a body is mirrored as the body streams (mirror::Teed).
                        mirror::send(worker, snap, &f, &self.out);
                    }
                    let sending = Sending {
                        has_body: head.framing != Framing::None,
                        is_head: view.method == b"HEAD",
                        retry_ok: view.retryable(),
                        expect_continue: view.expect_continue,
                        upgrade: view.upgrade.is_some(),
                    };
                    Plan::Forward(f, sending)
                }
            };
            Ok((plan, in_progress))
        };
        let planned = planned();
        self.pairs.put(pairs);
        planned
    }
}

/// The HTTP/1.1 front end's request body: the bytes already buffered, then the client socket.
struct H1Body<'c, S> {
    client: &'c mut S,
    cbuf: &'c mut Vec<u8>,
    framing: Framing,
    expect_continue: bool,
    body_timeout: Duration,
}

impl<S: ClientStream> SendBody for H1Body<'_, S> {
    async fn send<W: AsyncWriteRent>(
        &mut self,
        upstream: &mut W,
        out: &mut Vec<u8>,
        send_timeout: Duration,
        max_body: u64,
    ) -> Result<(), RequestError> {
        if self.expect_continue && self.cbuf.is_empty() {
            // The client waits for a go-ahead before sending the body; kedge gives it, since it
            // now has an upstream connection to stream the body to.
            let cont = http::CONTINUE.to_vec();
            write_client(self.client, cont, self.body_timeout).await?;
        }
        let limits = PumpLimits {
            read_timeout: self.body_timeout,
            write_timeout: send_timeout,
            max: max_body,
        };
        let chunked = self.framing == Framing::Chunked;
        let r = pump::pump(self.client, upstream, self.cbuf, out, self.framing, chunked, &limits).await;
        r.map(drop).map_err(|e| match e {
            PumpError::SourceTimeout => ErrorKind::BodyTimeout.into(),
            PumpError::SourceIo => ErrorKind::ClientGone.into(),
            PumpError::SourceFraming(e) => e.into(),
            PumpError::TooLarge => ErrorKind::BodyTooLarge.into(),
            PumpError::Sink => ErrorKind::UpstreamBodyFailed.into(),
        })
    }
}

/// A request whose chunked body is malformed in the bytes that came with its head (the usual
/// case for small requests) is refused with not a byte of it forwarded ([`pump::check_buffered_chunks`]);
/// framing errors in bytes that arrive later are caught while streaming, and the upstream then
/// sees the connection close before the last chunk, never a completed request.
fn check_buffered_chunks(body: &[u8], max_body: u64) -> Result<(), RequestError> {
    pump::check_buffered_chunks(body, max_body).map_err(|e| match e {
        BadChunks::TooLarge => ErrorKind::BodyTooLarge.into(),
        BadChunks::Framing(e) => e.into(),
    })
}

impl<S: ClientStream> Conn<S> {
    /// Copies bytes both ways between client and upstream after a 101, until both sides close
    /// or no byte has passed either way for `idle` (as nginx's `proxy_read_timeout` ends an
    /// upgraded connection): a tunnel whose peers went quiet, vanished without a FIN, or left
    /// it half-closed does not hold its sockets for ever. `true`: it ended for being idle.
    async fn tunnel(self, upstream: UpstreamStream, idle: Duration) -> bool {
        match upstream {
            UpstreamStream::Plain(u) => self.tunnel_to(u, idle).await,
            UpstreamStream::Tls(u) => self.tunnel_to(*u, idle).await,
        }
    }

    async fn tunnel_to<U: ClientStream>(mut self, mut upstream: U, idle: Duration) -> bool {
        // Bytes that arrived early on either side belong to the new protocol.
        if !self.cbuf.is_empty() {
            let early = std::mem::take(&mut self.cbuf);
            if upstream.write_all(early).await.0.is_err() {
                return false;
            }
        }
        if !self.up.buf.is_empty() {
            let early = std::mem::take(&mut self.up.buf);
            if self.client.write_all(early).await.0.is_err() {
                return false;
            }
        }
        let (mut cr, mut cw) = self.client.halves();
        let (mut ur, mut uw) = upstream.halves();
        let last = Cell::new(Instant::now());
        let (up, down) = monoio::join!(
            relay(&mut cr, &mut uw, idle, &last),
            relay(&mut ur, &mut cw, idle, &last)
        );
        up || down
    }
}

/// One direction of a tunnel: copies `from` to `to` until `from` ends (then shuts `to`'s
/// sending side, passing the half-close on), a write fails or stalls for `idle`, or nothing
/// has passed either way for `idle` (`last`: when a byte last passed, in either direction).
/// An idle tunnel ends both ways: each direction finds it so when its own wait runs out.
/// `true`: this direction ended for being idle.
async fn relay<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    to: &mut W,
    idle: Duration,
    last: &Cell<Instant>,
) -> bool {
    let mut buf = Vec::new();
    let mut idled = false;
    loop {
        let left = idle.saturating_sub(last.get().elapsed());
        match pump::read_with_timeout(from, &mut buf, left).await {
            ReadResult::Data(_) => {
                last.set(Instant::now());
                if pump::flush(to, &mut buf, idle).await.is_err() {
                    return false;
                }
            }
            // The other direction moved bytes meanwhile: wait for the rest of the time.
            ReadResult::Timeout if last.get().elapsed() < idle => {}
            ReadResult::Timeout => {
                tracing::debug!(idle = ?idle, "tunnel idle: closing it");
                idled = true;
                break;
            }
            ReadResult::Eof | ReadResult::Error => break,
        }
    }
    let _ = to.shutdown().await;
    idled
}

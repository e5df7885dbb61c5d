//! One client connection: read a request head, route it, forward it to an upstream, stream the
//! response back, repeat while keep-alive holds. The phases are plain functions called in order:
//!
//! ```text
//! read_head → route → check limits → connect (pool / retry) → send head + body → read response
//! head (1xx skipped, 101 → tunnel) → send response head + body → pool upstream → access log
//! ```
//!
//! Every failure is a [`Fail`]: either an answer the client still can get (a status with a
//! one-line body, then close) or an abort (a response was already under way: just close).

use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use super::balance::{PickInput, Tried};
use super::pump::{self, PumpError, PumpLimits, ReadResult};
use super::tls::TlsStream;
use super::upstream::UpstreamStream;
use super::{Snapshot, Worker};
use crate::http::{self, Framing, HeaderSpan, HttpError, Parsed, RequestHead, ResponseHead, Version};
use crate::policy::{Balance, HashBy, HashPart, MAX_TRIES};
use crate::routes::Backend;

/// Limits for upstream response heads (not user-configurable: upstreams are trusted more).
const UPSTREAM_HEAD_LIMITS: http::Limits = http::Limits {
    max_request_line: 64 * 1024,
    max_header_bytes: 64 * 1024,
    max_headers: 200,
};

/// Why a request could not be completed.
#[derive(Debug, Clone, Copy)]
enum Fail {
    /// The client can still get an answer: this status and a one-line reason, then close.
    Answer(u16, &'static str),
    /// Nothing more can be said (the client left, or a response was half sent): close.
    Abort,
}

impl From<HttpError> for Fail {
    fn from(e: HttpError) -> Self {
        Fail::Answer(e.status(), e.reason())
    }
}

/// What the access log needs to know about one request. The text fields are ranges of
/// [`Conn::meta`], filled only when the access log is on.
#[derive(Default)]
struct Record {
    method: Range<usize>,
    target: Range<usize>,
    host: Range<usize>,
    request_id: Range<usize>,
    status: u16,
    bytes: u64,
    upstream: Option<SocketAddr>,
    upstream_time: Option<Duration>,
    /// The counters of the backend the request went to (`None`: no route).
    metrics: Option<Arc<crate::metrics::BackendMetrics>>,
}

/// A client connection: plain TCP or TLS. The connection loop is generic over it.
pub(super) trait ClientStream: AsyncReadRent + AsyncWriteRent + 'static {
    /// `http` or `https`: X-Forwarded-Proto, and whether redirects and HSTS apply.
    const SCHEME: &'static str;
    /// Halves that read and write at the same time (a tunnel after 101).
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent);
    /// Ends the connection politely (TLS: close_notify). Best effort, bounded.
    async fn close(&mut self);
}

impl ClientStream for TcpStream {
    const SCHEME: &'static str = "http";
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent) {
        self.into_split()
    }
    async fn close(&mut self) {}
}

impl ClientStream for TlsStream {
    const SCHEME: &'static str = "https";
    fn halves(self) -> (impl AsyncReadRent, impl AsyncWriteRent) {
        self.into_split()
    }
    async fn close(&mut self) {
        TlsStream::close(self).await;
    }
}

/// ACME HTTP-01 challenges are answered over plain HTTP, never redirected (as ingress-nginx).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Per-connection buffers, reused for every request on the connection.
struct Conn<S> {
    client: S,
    peer: SocketAddr,
    port: u16,
    /// Bytes read from the client and not yet consumed (head, body start, pipelined requests).
    cbuf: Vec<u8>,
    /// Bytes read from the upstream and not yet consumed.
    ubuf: Vec<u8>,
    /// Bytes being assembled for a write (heads, re-framed chunks, canned answers).
    out: Vec<u8>,
    headers: Vec<HeaderSpan>,
    uheaders: Vec<HeaderSpan>,
    /// Method, target, host and request id of the current request, for the access log.
    meta: String,
    /// The client's IP address as sent in X-Forwarded-For and X-Real-IP.
    peer_text: Vec<u8>,
    /// Whether the current request's head has been removed from `cbuf`.
    head_consumed: bool,
    /// The rewritten path and query of the current request (reused).
    rewritten: String,
    /// Header lines kedge adds to the current response (reused).
    extra: Vec<u8>,
}

/// Serves one accepted client connection until it closes.
pub(super) async fn serve<S: ClientStream>(worker: &Rc<Worker>, client: S, peer: SocketAddr, port: u16) {
    let mut conn = Conn {
        client,
        peer,
        port,
        cbuf: Vec::with_capacity(16 * 1024),
        ubuf: Vec::new(),
        out: Vec::with_capacity(4 * 1024),
        headers: Vec::with_capacity(32),
        uheaders: Vec::with_capacity(32),
        meta: String::new(),
        head_consumed: false,
        rewritten: String::new(),
        extra: Vec::new(),
        peer_text: Vec::with_capacity(16),
    };
    http::client_ip_text(&mut conn.peer_text, peer.ip());
    match conn.run(worker).await {
        Some(upstream) => conn.tunnel(upstream).await,
        None => conn.client.close().await,
    }
}

impl<S: ClientStream> Conn<S> {
    /// The request loop. Returns the upstream to tunnel to after a 101, else `None` when the
    /// connection is done.
    async fn run(&mut self, worker: &Rc<Worker>) -> Option<UpstreamStream> {
        let conn = self;
        let mut first = true;
        loop {
            let snap = worker.snapshot();
            let start = match conn.wait_for_request(worker, &snap, first).await {
                Some(t) => t,
                None => return None,
            };
            first = false;
            let head = match conn.read_head(&snap, start).await {
                Ok(h) => h,
                Err(Fail::Answer(status, why)) => {
                    conn.answer(status, why, true).await;
                    let rec = Record {
                        status,
                        ..Record::default()
                    };
                    log_access(worker, conn, &snap, &rec, start);
                    return None;
                }
                Err(Fail::Abort) => return None,
            };
            let mut rec = Record::default();
            let outcome = conn.handle(worker, &snap, &head, &mut rec, start).await;
            let keep = match outcome {
                Ok(Next::KeepAlive) => true,
                Ok(Next::Close) => false,
                Ok(Next::Tunnel(upstream)) => {
                    log_access(worker, conn, &snap, &rec, start);
                    return Some(upstream);
                }
                Err(Fail::Answer(status, why)) => {
                    rec.status = status;
                    // Routing and upstream failures leave the client connection in a clean state
                    // when no request body was involved: keep it. Anything else closes.
                    let keep = head.keep_alive
                        && head.framing == Framing::None
                        && matches!(status, 403 | 404 | 502 | 503 | 504)
                        && !worker.stopping.is_set();
                    if keep && !conn.head_consumed {
                        conn.cbuf.drain(..head.head_len);
                    }
                    conn.answer(status, why, !keep).await;
                    keep
                }
                Err(Fail::Abort) => {
                    if rec.status == 0 {
                        rec.status = 499; // client closed the connection (nginx's convention)
                    }
                    false
                }
            };
            log_access(worker, conn, &snap, &rec, start);
            if !keep {
                return None;
            }
        }
    }
}

/// How the connection goes on after a request.
enum Next {
    KeepAlive,
    Close,
    /// The upstream switched protocols: tunnel bytes both ways until either side closes.
    Tunnel(UpstreamStream),
}

impl<S: ClientStream> Conn<S> {
    /// Waits until the next request's first byte is buffered. `None`: the client closed, the
    /// idle timeout passed, or the process is shutting down. Returns when the request started.
    async fn wait_for_request(&mut self, worker: &Worker, snap: &Snapshot, first: bool) -> Option<Instant> {
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
        let read = pump::read_with_timeout(&mut self.client, &mut self.cbuf, wait);
        let r = monoio::select! {
            r = read => r,
            _ = worker.stopping.wait() => return None,
        };
        match r {
            ReadResult::Data(_) => Some(Instant::now()),
            ReadResult::Eof | ReadResult::Timeout | ReadResult::Error => None,
        }
    }

    /// Reads until a whole request head is buffered and parses it.
    async fn read_head(&mut self, snap: &Snapshot, start: Instant) -> Result<RequestHead, Fail> {
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
                ReadResult::Timeout => return Err(Fail::Answer(408, "request head not received in time")),
                ReadResult::Eof | ReadResult::Error => return Err(Fail::Abort),
            }
        }
    }

    /// Routes and forwards one request, and streams its response back.
    async fn handle(
        &mut self,
        worker: &Rc<Worker>,
        snap: &Snapshot,
        head: &RequestHead,
        rec: &mut Record,
        start: Instant,
    ) -> Result<Next, Fail> {
        // Everything needed from the head is taken before the head leaves `cbuf`.
        self.head_consumed = false;
        let (host, path) = target_host_path(&self.cbuf, head)?;
        let method = &self.cbuf[head.method.clone()];
        let is_head = method == b"HEAD";
        let retry_ok = head.framing == Framing::None && is_idempotent(method);
        // The client's X-Request-ID is kept; without one, kedge makes one up.
        let given_rid = self
            .headers
            .iter()
            .find(|h| self.cbuf[h.name.clone()].eq_ignore_ascii_case(b"x-request-id"))
            .map(|h| h.value.clone());
        let mut rid = [0u8; 32];
        if given_rid.is_none() {
            worker.request_id(&mut rid);
        }
        if snap.access_log {
            self.record_meta(head, host.clone(), given_rid, &rid, rec);
        }
        let path_s = path_str(&self.cbuf, path.clone())?;
        let Some(route) = snap.table.lookup_route(&self.cbuf[host.clone()], path_s) else {
            return Err(Fail::Answer(404, "no route for this host and path"));
        };
        let policy = route.policy;
        let backend = match route.canary {
            Some((c, canary_backend)) if self.canary_selected(c, worker) => canary_backend,
            _ => route.backend,
        };
        rec.metrics = Some(worker.backend_metrics(&backend.name, &policy.host));
        if !policy.allows(self.peer.ip()) {
            return Err(Fail::Answer(403, "client address not allowed"));
        }
        // Per-client limits, held until this request is done.
        let mut _in_progress = None;
        if (policy.rate.is_some() || policy.max_conns.is_some())
            && !policy
                .limit_exempt
                .iter()
                .any(|c| c.contains(self.peer.ip().to_canonical()))
        {
            let key = (policy.limit_id, self.peer.ip());
            if let Some(rate) = policy.rate
                && !worker.limits.borrow_mut().admit(key, rate, start)
            {
                return Err(Fail::Answer(503, "request rate limit exceeded"));
            }
            if let Some(max) = policy.max_conns {
                if !worker.limits.borrow_mut().begin(key, max) {
                    return Err(Fail::Answer(503, "too many requests in progress from this client"));
                }
                _in_progress = Some(InProgress { worker, key });
            }
        }
        let stopping = worker.stopping.is_set();
        if let Some(auth) = &policy.auth
            && !self.authenticated(auth, worker)
        {
            return self
                .early(head, Early::Challenge(&auth.realm), snap, stopping, rec)
                .await;
        }
        if policy.ssl_redirect
            && S::SCHEME == "http"
            && let Some(port) = snap.https.redirect_port
            && !path_s.starts_with(ACME_CHALLENGE)
        {
            return self
                .early(head, Early::Https(host, path, port), snap, stopping, rec)
                .await;
        }
        if let Some(r) = &policy.redirect {
            return self
                .early(head, Early::To(r.status, &r.location), snap, stopping, rec)
                .await;
        }
        if let Some(root) = &policy.app_root
            && path_s == "/"
        {
            return self.early(head, Early::To(302, root), snap, stopping, rec).await;
        }
        // The path sent upstream, when the rule rewrites it (then with the client's query).
        let mut rewritten = std::mem::take(&mut self.rewritten);
        let rewrite = policy.rewrite_into(path_s, &mut rewritten);
        if rewrite {
            let t = head.target.clone();
            if let Some(q) = self.cbuf[t].iter().position(|&b| b == b'?') {
                let query = &self.cbuf[head.target.start + q + 1..head.target.end];
                rewritten.push(if rewritten.contains('?') { '&' } else { '?' });
                rewritten.push_str(std::str::from_utf8(query).unwrap_or_default());
            }
        }
        let max_body = match policy.max_body.unwrap_or(snap.client.max_body) {
            0 => u64::MAX,
            n => n,
        };
        if let Framing::Length(n) = head.framing
            && n > max_body
        {
            return Err(Fail::Answer(413, "request body larger than allowed"));
        }
        if head.framing == Framing::Chunked {
            check_buffered_chunks(&self.cbuf[head.head_len..], max_body)?;
        }

        // What the balancer needs from the head, taken before it leaves `cbuf`.
        let pick = PickInput {
            key: match &policy.balance {
                Balance::Hash(hb) => Some(self.hash_key(hb, head, host.clone(), path.clone())),
                _ => None,
            },
            sticky: policy.affinity.as_ref().and_then(|a| {
                let v = cookie(&self.cbuf, &self.headers, a.cookie.as_bytes())?;
                u64::from_str_radix(std::str::from_utf8(v).ok()?, 16).ok()
            }),
            seed: 0,
        };

        // The upstream head, built once: a retry on another connection sends the same bytes.
        self.out.clear();
        let fwd = http::Forwarded {
            client_ip: &self.peer_text,
            proto: S::SCHEME,
            host: &self.cbuf[host],
            port: self.port,
            request_id: &rid,
            target: rewrite.then_some(rewritten.as_bytes()),
        };
        http::write_request_head(&mut self.out, &self.cbuf, head, &self.headers, &fwd);
        self.rewritten = rewritten;
        let timeouts = Timeouts {
            connect: policy.connect_timeout.unwrap_or(snap.upstream.connect_timeout),
            read: policy.read_timeout.unwrap_or(snap.upstream.read_timeout),
            send: policy.send_timeout.unwrap_or(snap.upstream.send_timeout),
        };
        self.cbuf.drain(..head.head_len);
        self.head_consumed = true;

        // Connect, send, read the response head. A failed connect moves on to another endpoint;
        // so does a request without a body that is safe to repeat when the connection fails or
        // times out before any response byte. A reused connection that turns out dead is
        // replaced by a fresh one to the same endpoint, without counting as a try.
        // Timing the upstream costs clock reads; only the access log wants it.
        let t_up = snap.access_log.then(Instant::now);
        let tries = policy
            .tries
            .unwrap_or(snap.upstream.connect_attempts)
            .clamp(1, MAX_TRIES);
        let mut tried = Tried::default();
        let mut last = Fail::Answer(502, "cannot connect to upstream");
        let mut fresh_to: Option<SocketAddr> = None;
        if backend.endpoints.is_empty() {
            return Err(Fail::Answer(503, "no endpoint available for this backend"));
        }
        let (mut upstream, addr, resp, _inflight) = loop {
            let addr = match fresh_to.take() {
                Some(a) => a,
                None => {
                    if tried.len() >= tries {
                        return Err(last);
                    }
                    if tried.len() > 0
                        && let Some(limit) = policy.retry_timeout
                        && start.elapsed() >= limit
                    {
                        return Err(last);
                    }
                    let input = PickInput {
                        seed: worker.random(),
                        ..pick
                    };
                    let picked = worker.balancer.borrow_mut().pick(backend, policy, input, &tried, start);
                    let Some(a) = picked else { return Err(last) };
                    if tried.len() > 0
                        && let Some(m) = &rec.metrics
                    {
                        m.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tried.push(a);
                    a
                }
            };
            rec.upstream = Some(addr);
            let (mut upstream, reused) = match connect(worker, backend, addr, snap, timeouts.connect, start).await {
                Ok(c) => c,
                Err(f) => {
                    worker
                        .balancer
                        .borrow_mut()
                        .report(addr, false, backend, &snap.upstream, Instant::now());
                    if let Some(m) = &rec.metrics {
                        m.connect_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    last = f;
                    continue;
                }
            };
            let inflight = InFlight::begin(worker, addr);
            let sent = self
                .send_request(&mut upstream, head, snap, timeouts.send, max_body)
                .await;
            let read = match sent {
                Ok(()) => self.read_response_head(&mut upstream, is_head, timeouts.read).await,
                Err(e) => Err(e),
            };
            match read {
                // proxy-next-upstream http_5xx: an idempotent request without a body whose
                // answer is one of those statuses goes to another endpoint while tries remain;
                // the answer is dropped with its connection.
                Ok(resp)
                    if retry_ok
                        && policy.retry_on.contains(&resp.status)
                        && tried.len() < tries.min(backend.endpoints.len()) =>
                {
                    worker
                        .balancer
                        .borrow_mut()
                        .report(addr, false, backend, &snap.upstream, Instant::now());
                    tracing::debug!(upstream = %addr, status = resp.status, "retrying on another endpoint");
                    last = Fail::Answer(502, "every endpoint tried answered with an error");
                    drop(upstream);
                }
                Ok(resp) => break (upstream, addr, resp, inflight),
                Err(SendFail::Retryable) if reused && retry_ok => {
                    tracing::debug!(upstream = %addr, "reused upstream connection was dead; retrying on a new one");
                    fresh_to = Some(addr);
                }
                Err(e @ (SendFail::Retryable | SendFail::Timeout)) => {
                    // A reused connection that died says nothing about the endpoint.
                    if !(reused && matches!(e, SendFail::Retryable)) {
                        worker
                            .balancer
                            .borrow_mut()
                            .report(addr, false, backend, &snap.upstream, Instant::now());
                    }
                    last = match e {
                        SendFail::Timeout => Fail::Answer(504, "upstream did not answer in time"),
                        _ => Fail::Answer(502, "upstream closed the connection"),
                    };
                    if !retry_ok {
                        return Err(last);
                    }
                    tracing::debug!(upstream = %addr, "no response from upstream; trying another endpoint");
                }
                Err(SendFail::Fail(f)) => return Err(f),
            }
        };
        worker
            .balancer
            .borrow_mut()
            .report(addr, resp.status < 500, backend, &snap.upstream, Instant::now());
        rec.upstream_time = t_up.map(|t| t.elapsed());
        rec.status = resp.status;

        if resp.status == 101 {
            if head.upgrade.is_none() {
                return Err(Fail::Answer(
                    502,
                    "upstream switched protocols without an upgrade request",
                ));
            }
            self.response_head(&resp, Framing::None, head.version, true, b"");
            let out = std::mem::take(&mut self.out);
            self.out = write_client(&mut self.client, out, snap.client.body_timeout).await?;
            return Ok(Next::Tunnel(upstream));
        }

        // Client-side framing: lengths pass through; chunked and close-delimited bodies go
        // chunked to HTTP/1.1 clients and close-delimited to HTTP/1.0 ones.
        let out_framing = match resp.framing {
            Framing::None => Framing::None,
            Framing::Length(n) => Framing::Length(n),
            Framing::Chunked | Framing::CloseDelimited if head.version == Version::Http11 => Framing::Chunked,
            Framing::Chunked | Framing::CloseDelimited => Framing::CloseDelimited,
        };
        let keep_client = head.keep_alive && !worker.stopping.is_set() && out_framing != Framing::CloseDelimited;
        let keep_upstream = resp.keep_alive && resp.framing != Framing::CloseDelimited;

        // (A bodiless HEAD or 304 answer keeps the Content-Length the upstream declared.)
        let hsts: &[u8] = if S::SCHEME == "https" {
            &snap.https.hsts_line
        } else {
            b""
        };
        // Affinity: (re)set the cookie when the client did not name this endpoint.
        let mut extra = std::mem::take(&mut self.extra);
        extra.clear();
        extra.extend_from_slice(hsts);
        if let Some(a) = &policy.affinity {
            let key = crate::policy::endpoint_key(addr);
            if pick.sticky != Some(key) {
                a.set_cookie_line(key, crate::time::unix_now(), &mut extra);
            }
        }
        self.response_head(&resp, out_framing, head.version, keep_client, &extra);
        self.extra = extra;
        let limits = PumpLimits {
            read_timeout: timeouts.read,
            write_timeout: snap.client.body_timeout,
            max: u64::MAX,
        };
        let moved = pump::pump(
            &mut upstream,
            &mut self.client,
            &mut self.ubuf,
            &mut self.out,
            resp.framing,
            out_framing == Framing::Chunked,
            &limits,
        )
        .await;
        match moved {
            Ok(n) => rec.bytes = n,
            Err(e) => {
                tracing::debug!(upstream = %addr, error = ?e, "response body cut short");
                return Err(Fail::Abort);
            }
        }
        if keep_upstream && self.ubuf.is_empty() {
            worker.pool.borrow_mut().put(
                (addr, tls_id(backend)),
                upstream,
                snap.upstream.max_idle_per_endpoint,
                start,
            );
        }
        self.ubuf.clear();
        Ok(if keep_client { Next::KeepAlive } else { Next::Close })
    }

    /// Whether the request's `Authorization: Basic` credentials are in `auth`'s list.
    fn authenticated(&self, auth: &crate::auth::BasicAuth, worker: &Worker) -> bool {
        let Some(h) = self
            .headers
            .iter()
            .find(|h| self.cbuf[h.name.clone()].eq_ignore_ascii_case(b"authorization"))
        else {
            return false;
        };
        let value = &self.cbuf[h.value.clone()];
        let mut k = crate::hash::Fnv::default();
        k.write(value);
        let key = crate::hash::mix(k.0 ^ auth.id);
        if worker.auth_ok.borrow().contains(&key) {
            return true;
        }
        let Some((user, password)) = crate::auth::credentials(value) else {
            return false;
        };
        let ok = auth
            .hash_of(&user)
            .is_some_and(|hash| crate::auth::verify(&password, hash));
        if ok {
            let mut cache = worker.auth_ok.borrow_mut();
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    /// Whether this request goes to the rule's canary: by header, then cookie, then weight (as
    /// ingress-nginx).
    fn canary_selected(&self, c: &crate::routes::Canary, worker: &Worker) -> bool {
        if let Some((name, value)) = &c.header
            && let Some(h) = self
                .headers
                .iter()
                .find(|h| self.cbuf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
        {
            let v = &self.cbuf[h.value.clone()];
            match value {
                Some(want) if v == want.as_bytes() => return true,
                Some(_) => {}
                None if v == b"always" => return true,
                None if v == b"never" => return false,
                None => {
                    if let Some(re) = &c.pattern
                        && std::str::from_utf8(v).is_ok_and(|v| re.is_match(v))
                    {
                        return true;
                    }
                }
            }
        }
        if let Some(name) = &c.cookie
            && let Some(v) = cookie(&self.cbuf, &self.headers, name.as_bytes())
        {
            match v {
                b"always" => return true,
                b"never" => return false,
                _ => {}
            }
        }
        c.weight > 0 && (worker.random() % u64::from(c.total)) < u64::from(c.weight)
    }

    /// The hash of the request's `upstream-hash-by` key (a missing header or cookie hashes as
    /// empty, as an unset nginx variable).
    fn hash_key(&self, hb: &HashBy, head: &RequestHead, host: Range<usize>, path: Option<Range<usize>>) -> u64 {
        let mut h = crate::hash::Fnv::default();
        let target = &self.cbuf[head.target.clone()];
        for part in &hb.0 {
            match part {
                HashPart::Text(t) => h.write(t.as_bytes()),
                HashPart::ClientIp => h.write(&self.peer_text),
                HashPart::Host => h.write(http::host_without_port(&self.cbuf[host.clone()])),
                HashPart::RequestUri => h.write(target),
                HashPart::Path => h.write(path.as_ref().map_or(b"/", |p| &self.cbuf[p.clone()])),
                HashPart::Header(name) => {
                    if let Some(v) = self
                        .headers
                        .iter()
                        .find(|x| self.cbuf[x.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
                    {
                        h.write(&self.cbuf[v.value.clone()]);
                    }
                }
                HashPart::Cookie(name) => {
                    if let Some(v) = cookie(&self.cbuf, &self.headers, name.as_bytes()) {
                        h.write(v);
                    }
                }
                HashPart::Arg(name) => {
                    let query = target
                        .iter()
                        .position(|&b| b == b'?')
                        .map_or(&b""[..], |i| &target[i + 1..]);
                    if let Some(v) = query.split(|&b| b == b'&').find_map(|kv| {
                        let (k, v) = kv.split_at(kv.iter().position(|&b| b == b'=').unwrap_or(kv.len()));
                        (k == name.as_bytes()).then(|| v.get(1..).unwrap_or_default())
                    }) {
                        h.write(v);
                    }
                }
            }
        }
        crate::hash::mix(h.0)
    }

    /// Answers instead of proxying: a redirect or an auth challenge (the request body, if any,
    /// is not read: the connection closes after the answer).
    async fn early(
        &mut self,
        head: &RequestHead,
        to: Early<'_>,
        snap: &Snapshot,
        stopping: bool,
        rec: &mut Record,
    ) -> Result<Next, Fail> {
        let keep = head.keep_alive && head.framing == Framing::None && !stopping;
        self.out.clear();
        match to {
            Early::Https(host, path, port) => {
                let t = head.target.clone();
                // The path and query: all of an origin-form target, the part after the
                // authority of an absolute-form one.
                let rest = match (self.cbuf[t.start], path) {
                    (b'/', _) => t.clone(),
                    (_, Some(p)) => p.start..t.end,
                    (_, None) => t.end..t.end,
                };
                http::write_redirect(
                    &mut self.out,
                    http::host_without_port(&self.cbuf[host]),
                    port,
                    &self.cbuf[rest],
                    !keep,
                );
                rec.status = 308;
            }
            Early::To(status, location) => {
                http::write_location(&mut self.out, status, &[location.as_bytes()], !keep);
                rec.status = status;
            }
            Early::Challenge(realm) => {
                http::write_canned(&mut self.out, 401, "authentication required", !keep);
                // The challenge goes in before the blank line that ends the head.
                if let Some(end) = self.out.windows(4).position(|w| w == b"\r\n\r\n") {
                    let line = format!(
                        "WWW-Authenticate: Basic realm=\"{}\"\r\n",
                        realm.replace(['"', '\\'], "")
                    );
                    self.out.splice(end + 2..end + 2, line.into_bytes());
                }
                rec.status = 401;
            }
        }
        if !self.head_consumed {
            self.cbuf.drain(..head.head_len);
            self.head_consumed = true;
        }
        let out = std::mem::take(&mut self.out);
        self.out = write_client(&mut self.client, out, snap.client.body_timeout).await?;
        Ok(if keep { Next::KeepAlive } else { Next::Close })
    }

    /// Rebuilds the upstream's response head for the client into `out` (replacing what it
    /// held) and drops it from `ubuf`, leaving any body bytes that came with it.
    /// `hsts`: whole header lines to add (HSTS, unless the upstream sent its own, and an
    /// affinity cookie), or empty.
    fn response_head(
        &mut self,
        resp: &ResponseHead,
        framing: Framing,
        version: Version,
        keep_alive: bool,
        hsts: &[u8],
    ) {
        self.out.clear();
        http::write_response_head(
            &mut self.out,
            &self.ubuf,
            resp,
            &self.uheaders,
            framing,
            version,
            keep_alive,
        );
        if !hsts.is_empty() {
            // Before the blank line that ends the head; an HSTS line only when the upstream
            // sent none.
            let upstream_hsts = self
                .uheaders
                .iter()
                .any(|h| self.ubuf[h.name.clone()].eq_ignore_ascii_case(b"strict-transport-security"));
            self.out.truncate(self.out.len() - 2);
            for line in hsts.split_inclusive(|&b| b == b'\n') {
                if !(upstream_hsts && line.starts_with(b"Strict-Transport-Security:")) {
                    self.out.extend_from_slice(line);
                }
            }
            self.out.extend_from_slice(b"\r\n");
        }
        self.ubuf.drain(..resp.head_len);
    }

    /// Copies what the access log shows of the request into `meta` (one reused buffer).
    fn record_meta(
        &mut self,
        head: &RequestHead,
        host: Range<usize>,
        given_rid: Option<Range<usize>>,
        generated_rid: &[u8; 32],
        rec: &mut Record,
    ) {
        let m = &mut self.meta;
        m.clear();
        let mut push = |bytes: &[u8]| {
            let start = m.len();
            m.push_str(&String::from_utf8_lossy(bytes));
            start..m.len()
        };
        rec.method = push(&self.cbuf[head.method.clone()]);
        rec.target = push(&self.cbuf[head.target.clone()]);
        rec.host = push(&self.cbuf[host]);
        rec.request_id = match given_rid {
            Some(r) => push(&self.cbuf[r]),
            None => push(generated_rid),
        };
    }

    /// Sends the request head in `out` and then the body (streamed from the client).
    async fn send_request(
        &mut self,
        upstream: &mut UpstreamStream,
        head: &RequestHead,
        snap: &Snapshot,
        send_timeout: Duration,
        max_body: u64,
    ) -> Result<(), SendFail> {
        if head.framing == Framing::None {
            // `out` keeps the head after the write, for a retry.
            let out = std::mem::take(&mut self.out);
            let (res, out) = pump::write_all(upstream, out, send_timeout)
                .await
                .map_err(|()| SendFail::Fail(Fail::Answer(504, "upstream did not take the request in time")))?;
            self.out = out;
            return res.map(drop).map_err(|_| SendFail::Retryable);
        }
        if head.expect_continue && self.cbuf.is_empty() {
            // The client waits for a go-ahead before sending the body; kedge gives it, since it
            // now has an upstream connection to stream the body to.
            let cont = http::CONTINUE.to_vec();
            write_client(&mut self.client, cont, snap.client.body_timeout)
                .await
                .map_err(SendFail::Fail)?;
        }
        let limits = PumpLimits {
            read_timeout: snap.client.body_timeout,
            write_timeout: send_timeout,
            max: max_body,
        };
        let r = pump::pump(
            &mut self.client,
            upstream,
            &mut self.cbuf,
            &mut self.out,
            head.framing,
            head.framing == Framing::Chunked,
            &limits,
        )
        .await;
        r.map(drop).map_err(|e| {
            SendFail::Fail(match e {
                PumpError::SourceTimeout => Fail::Answer(408, "request body not received in time"),
                PumpError::SourceIo => Fail::Abort,
                PumpError::SourceFraming(e) => Fail::from(e),
                PumpError::TooLarge => Fail::Answer(413, "request body larger than allowed"),
                PumpError::Sink => Fail::Answer(502, "upstream failed while receiving the request body"),
            })
        })
    }

    /// Reads the upstream's response head, skipping interim 1xx answers other than 101.
    async fn read_response_head(
        &mut self,
        upstream: &mut UpstreamStream,
        is_head: bool,
        read_timeout: Duration,
    ) -> Result<ResponseHead, SendFail> {
        self.ubuf.clear();
        let mut got_any = false;
        loop {
            match http::parse_response(&self.ubuf, &UPSTREAM_HEAD_LIMITS, is_head, &mut self.uheaders) {
                Ok(Parsed::Complete(resp)) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    self.ubuf.drain(..resp.head_len);
                    continue;
                }
                Ok(Parsed::Complete(resp)) => return Ok(resp),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    tracing::debug!(error = ?e, "invalid response head from upstream");
                    return Err(SendFail::Fail(Fail::Answer(502, "upstream sent an invalid response")));
                }
            }
            match pump::read_with_timeout(upstream, &mut self.ubuf, read_timeout).await {
                ReadResult::Data(_) => got_any = true,
                ReadResult::Timeout if !got_any => return Err(SendFail::Timeout),
                ReadResult::Timeout => {
                    return Err(SendFail::Fail(Fail::Answer(504, "upstream did not answer in time")));
                }
                ReadResult::Eof | ReadResult::Error if !got_any => return Err(SendFail::Retryable),
                ReadResult::Eof | ReadResult::Error => {
                    return Err(SendFail::Fail(Fail::Answer(
                        502,
                        "upstream closed before a complete response head",
                    )));
                }
            }
        }
    }

    /// Sends a canned answer, then closes gently: shut our side, and read (discarding) what the
    /// client still sends for a moment, so that a request body in flight does not turn the close
    /// into a reset that would destroy the answer before the client reads it.
    async fn answer(&mut self, status: u16, why: &str, close: bool) {
        self.out.clear();
        http::write_canned(&mut self.out, status, why, close);
        let out = std::mem::take(&mut self.out);
        match write_client(&mut self.client, out, Duration::from_secs(5)).await {
            Ok(b) => self.out = b,
            Err(_) => return,
        }
        if !close {
            return;
        }
        let _ = self.client.shutdown().await;
        let mut sink = std::mem::take(&mut self.cbuf);
        let deadline = Instant::now() + Duration::from_secs(2);
        for _ in 0..64 {
            sink.clear();
            let left = deadline.saturating_duration_since(Instant::now());
            match pump::read_with_timeout(&mut self.client, &mut sink, left).await {
                ReadResult::Data(_) => {}
                _ => break,
            }
        }
    }

    /// Copies bytes both ways between client and upstream after a 101, until both sides close.
    async fn tunnel(self, upstream: UpstreamStream) {
        match upstream {
            UpstreamStream::Plain(u) => self.tunnel_to(u).await,
            UpstreamStream::Tls(u) => self.tunnel_to(u).await,
        }
    }

    async fn tunnel_to<U: ClientStream>(mut self, mut upstream: U) {
        // Bytes that arrived early on either side belong to the new protocol.
        if !self.cbuf.is_empty() {
            let early = std::mem::take(&mut self.cbuf);
            if upstream.write_all(early).await.0.is_err() {
                return;
            }
        }
        if !self.ubuf.is_empty() {
            let early = std::mem::take(&mut self.ubuf);
            if self.client.write_all(early).await.0.is_err() {
                return;
            }
        }
        let (mut cr, mut cw) = self.client.halves();
        let (mut ur, mut uw) = upstream.halves();
        let up = async {
            let _ = monoio::io::copy(&mut cr, &mut uw).await;
            let _ = uw.shutdown().await;
        };
        let down = async {
            let _ = monoio::io::copy(&mut ur, &mut cw).await;
            let _ = cw.shutdown().await;
        };
        monoio::join!(up, down);
    }
}

/// An answer kedge gives instead of proxying.
enum Early<'a> {
    /// The same URL over HTTPS: host, path (as `target_host_path` found them), HTTPS port.
    Https(Range<usize>, Option<Range<usize>>, u16),
    /// A redirect with a fixed status and location.
    To(u16, &'a str),
    /// 401 asking for basic-auth credentials in this realm.
    Challenge(&'a str),
}

/// The upstream timeouts of one request (the rule's, else `[upstream]`'s).
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    read: Duration,
    send: Duration,
}

/// Failure while sending a request or waiting for its response head.
enum SendFail {
    /// The upstream connection died before any response byte: the request may be retried if
    /// nothing of its body was sent and it is idempotent.
    Retryable,
    /// No response byte within the read timeout: the same, but a 504 when not retried.
    Timeout,
    Fail(Fail),
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
) -> Result<(UpstreamStream, bool), Fail> {
    if let Some(stream) = worker
        .pool
        .borrow_mut()
        .take((addr, tls_id(backend)), snap.upstream.idle_timeout, now)
    {
        return Ok((stream, true));
    }
    match monoio::time::timeout(connect_timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let Some(tls) = &backend.tls else {
                return Ok((UpstreamStream::Plain(stream), false));
            };
            let handshake = TlsStream::connect(stream, Arc::clone(&tls.config), tls.name.clone());
            match monoio::time::timeout(connect_timeout, handshake).await {
                Ok(Ok(s)) => Ok((UpstreamStream::Tls(s), false)),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %addr, error = %e, "TLS handshake with upstream failed");
                    Err(Fail::Answer(502, "TLS handshake with upstream failed"))
                }
                Err(_) => {
                    tracing::debug!(upstream = %addr, "TLS handshake with upstream timed out");
                    Err(Fail::Answer(504, "upstream TLS handshake timed out"))
                }
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %addr, error = %e, "connect failed");
            Err(Fail::Answer(502, "cannot connect to upstream"))
        }
        Err(_) => {
            tracing::debug!(upstream = %addr, "connect timed out");
            Err(Fail::Answer(504, "upstream connect timed out"))
        }
    }
}

/// A request counted against its client's `limit-connections` until dropped.
struct InProgress<'w> {
    worker: &'w Worker,
    key: (u64, std::net::IpAddr),
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.worker.limits.borrow_mut().end(self.key);
    }
}

/// A request in flight to an endpoint, for least-request balancing: counted from the request
/// being sent until this is dropped (the response done, or the request failed).
struct InFlight<'w> {
    worker: &'w Worker,
    addr: SocketAddr,
}

impl<'w> InFlight<'w> {
    fn begin(worker: &'w Worker, addr: SocketAddr) -> InFlight<'w> {
        worker.balancer.borrow_mut().begin(addr);
        InFlight { worker, addr }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.worker.balancer.borrow_mut().end(self.addr);
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'b>(buf: &'b [u8], headers: &[HeaderSpan], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| buf[h.name.clone()].eq_ignore_ascii_case(b"cookie"))
        .flat_map(|h| buf[h.value.clone()].split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// The pool key part for a backend's TLS settings (0: plain).
fn tls_id(backend: &Backend) -> u64 {
    backend.tls.as_ref().map_or(0, |t| t.id)
}

/// Writes `out` to the client under `timeout`, handing the buffer back (cleared).
async fn write_client<S: AsyncWriteRent>(client: &mut S, out: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, Fail> {
    match pump::write_all(client, out, timeout).await {
        Ok((Ok(_), mut b)) => {
            b.clear();
            Ok(b)
        }
        _ => Err(Fail::Abort),
    }
}

/// The host (a range of the buffer, maybe empty) and path (a range, or `None` for `/`) to route
/// on. Origin-form takes the Host header; absolute-form takes the authority from the target.
fn target_host_path(
    buf: &[u8],
    head: &RequestHead,
) -> Result<(std::ops::Range<usize>, Option<std::ops::Range<usize>>), Fail> {
    let t = head.target.clone();
    let target = &buf[t.clone()];
    let path_end = |from: usize| from + buf[from..t.end].iter().position(|&b| b == b'?').unwrap_or(t.end - from);
    let host = head.host.clone().unwrap_or(t.start..t.start);
    if target.first() == Some(&b'/') {
        return Ok((host, Some(t.start..path_end(t.start))));
    }
    if target == b"*" {
        return Ok((host, None));
    }
    let scheme_len = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        7
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        8
    } else if &buf[head.method.clone()] == b"CONNECT" {
        return Err(Fail::Answer(405, "CONNECT is not supported"));
    } else {
        return Err(Fail::Answer(400, "request target is not a path or an absolute URI"));
    };
    let auth_start = t.start + scheme_len;
    let authority_end = buf[auth_start..t.end]
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(t.end, |i| auth_start + i);
    // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error; and the authority must be a host.
    if !http::valid_host(&buf[auth_start..authority_end]) {
        return Err(Fail::Answer(400, "invalid authority in the request target"));
    }
    let auth_end = auth_start
        + buf[auth_start..t.end]
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .unwrap_or(t.end - auth_start);
    let path = if buf.get(auth_end) == Some(&b'/') && auth_end < t.end {
        Some(auth_end..path_end(auth_end))
    } else {
        None
    };
    Ok((auth_start..auth_end, path))
}

fn path_str(buf: &[u8], path: Option<std::ops::Range<usize>>) -> Result<&str, Fail> {
    match path {
        None => Ok("/"),
        Some(r) => std::str::from_utf8(&buf[r]).map_err(|_| Fail::Answer(400, "request target is not valid UTF-8")),
    }
}

/// RFC 9110 §9.2.2 idempotent methods.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// One access-log line per request (target `kedge::access`).
fn log_access<S>(worker: &Worker, conn: &Conn<S>, snap: &Snapshot, rec: &Record, start: Instant) {
    // The metrics count every request, logged or not.
    let took = start.elapsed();
    match &rec.metrics {
        Some(m) => m.request(rec.status, took),
        None => worker.backend_metrics("(no route)", "-").request(rec.status, took),
    }
    if !snap.access_log {
        return;
    }
    let m = &conn.meta;
    let field = |r: &Range<usize>| m.get(r.clone()).filter(|s| !s.is_empty()).unwrap_or("-");
    tracing::info!(
        target: "kedge::access",
        client = %conn.peer.ip(),
        host = field(&rec.host),
        method = field(&rec.method),
        path = field(&rec.target),
        status = rec.status,
        bytes = rec.bytes,
        upstream = %rec.upstream.map_or_else(|| "-".to_owned(), |a| a.to_string()),
        upstream_ms = %Millis(rec.upstream_time),
        total_ms = %Millis(Some(took)),
        request_id = field(&rec.request_id),
    );
}

/// A duration shown as milliseconds with microsecond precision, or `-`.
struct Millis(Option<Duration>);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{:.3}", d.as_secs_f64() * 1e3),
            None => f.write_str("-"),
        }
    }
}

/// Checks the chunked framing of the body bytes already buffered, before anything is sent
/// upstream: a malformed body that arrived with its head (the usual case for small requests)
/// is refused with not a byte of it forwarded. Framing errors in bytes that arrive later are
/// caught while streaming; the upstream then sees the connection close before the last chunk,
/// never a completed request.
fn check_buffered_chunks(mut body: &[u8], max_body: u64) -> Result<(), Fail> {
    let mut decoder = http::ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        match decoder.step(body)? {
            (used, http::ChunkEvent::Data(r)) => {
                total += r.len() as u64;
                if total > max_body {
                    return Err(Fail::Answer(413, "request body larger than allowed"));
                }
                body = &body[used..];
            }
            (_, http::ChunkEvent::NeedMore | http::ChunkEvent::End { .. }) => return Ok(()),
        }
    }
}

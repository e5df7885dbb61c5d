//! A listener's stages. Each accepted connection goes through them in order, as its
//! [`ListenerSpec`] says:
//!
//! ```text
//! accept ─▶ PROXY header (proxy_protocol = true) ─▶ TLS handshake (tls = true; ALPN)
//!        ─▶ protocol dispatch ─┬▶ conn::serve (HTTP/1.1)
//!                              └▶ h2::serve (HTTP/2)
//! ```
//!
//! The PROXY stage decides the connection's client address: the one its header carries (or
//! the socket's, for a LOCAL or UNKNOWN header). It is the `peer` every later stage and every
//! request phase gets, so nothing after it knows whether a balancer was in front. Bytes read
//! past the header go on to the next stage. The dispatch goes by ALPN on TLS, by the
//! connection preface on plain listeners (when `[http2] enabled`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::Worker;
use super::bufs::Class;
use super::pump::{self, ReadResult};
use super::tls::{HandshakeError, TlsStream};
use super::{conn, h2};
use crate::config::ListenerSpec;
use crate::policy::Cidr;
use crate::proxy_protocol::{self, Parsed};
use crate::stats;

/// Accepts connections until shutdown and runs each through the listener's stages in a task
/// of its own.
pub(super) async fn accept_loop(worker: Rc<Worker>, listener: monoio::net::TcpListener, spec: ListenerSpec) {
    // The local address a connection arrived on selects its Gateway scope. A listener bound to
    // one address knows it without asking; one bound to every address asks the kernel once per
    // connection (getsockname).
    let bound = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let spec = Rc::new(spec);
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.stopping.wait() => {
                stop_listening(&listener);
                return;
            }
        };
        match accepted {
            Ok((stream, peer)) => {
                // The connection's future is the task's own, not wrapped in another: starting
                // the task moves it once (into the task), not once more per level of wrapping.
                monoio::spawn(connection(Rc::clone(&worker), Rc::clone(&spec), stream, peer, bound));
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(worker = worker.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes the listener out of the LISTEN state at once: `shutdown(2)` on a listening socket
/// stops it, resets the connections waiting in its queue, and has new ones refused. Dropping
/// it is not enough under io_uring: the ring holds the socket while an accept is in flight, and
/// when the process exits the kernel tears the ring down after the process has gone, so the
/// port went on completing handshakes (reset later) and could not be bound by the next kedge
/// for up to ~15 ms after exit (`systemctl restart` starts it at once).
fn stop_listening(listener: &monoio::net::TcpListener) {
    super::session::with_socket(std::os::fd::AsRawFd::as_raw_fd(listener), |s| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
}

/// One accepted connection through the stages after accept, counted as open until it ends.
/// `bound`: the listener's address; the one the connection arrived on (`local`: its port is
/// X-Forwarded-Port; with PROXY protocol too it is kedge's own address, never the one the
/// header carries: it selects the Gateway scope) is asked of the kernel only when that is a
/// wildcard.
async fn connection(
    worker: Rc<Worker>,
    spec: Rc<ListenerSpec>,
    mut stream: TcpStream,
    peer: SocketAddr,
    bound: SocketAddr,
) {
    let _open = Open::count(&worker);
    let (worker, spec) = (&worker, &*spec);
    let local = match bound.ip().is_unspecified() {
        true => stream.local_addr().unwrap_or(bound),
        false => bound,
    };
    // Without PROXY protocol nothing is read yet and the peer is the socket's.
    let (peer, early) = match &spec.proxy_protocol {
        None => (peer, Vec::new()),
        Some(from) => match proxy_stage(worker, &mut stream, peer, from).await {
            Some(found) => found,
            None => return,
        },
    };
    // The client's open connections on this worker, counted until this one ends.
    let Some(_slot) = ClientSlot::take(worker, peer) else {
        stats::CLIENT_CONNECTION_LIMIT.inc();
        tracing::debug!(client = %peer, "too many connections from this client; closed");
        return;
    };
    // The TLS handshake and both protocol loops are boxed, so the task holds only the small
    // stages before them. Starting a task copies its future several times over (monoio moves
    // it into place), and a loop's future is kilobytes: boxed, it is copied once, into its
    // box; the handshake's and HTTP/2's, larger, would besides size every connection's task
    // (held for its life, idle or not) for the largest of them.
    if spec.tls {
        if let Some(tls) = boxed(|| tls_stage(worker, stream, peer, local, early)).await {
            match tls.alpn_h2() {
                true => boxed(|| h2::serve(worker, tls, peer, local, Vec::new())).await,
                false => boxed(|| conn::serve(worker, tls, peer, local, Vec::new())).await,
            }
        }
    } else {
        // The dispatch only reads; the protocol's loop starts here, not nested in it (one
        // copy of the loop's future less).
        match plain_dispatch(worker, &mut stream, peer, early).await {
            Some(Plain::Http1(buf)) => boxed(|| conn::serve(worker, stream, peer, local, buf)).await,
            Some(Plain::Http2(buf)) => boxed(|| h2::serve(worker, stream, peer, local, buf)).await,
            None => {}
        }
    }
}

/// The future `make` returns, built in a box of its own. `Box::pin(make())` builds it on the
/// stack and then copies all of it into the box: a protocol loop's future is kilobytes, and
/// copying it was the largest single cost of a new connection in user space. With the box
/// allocated first the compiler builds the future in place: only its arguments are written.
#[inline(always)]
fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// An open connection in a worker's counts (the drain waits for them; the metrics show them),
/// from accept until it is dropped: the connection's end, or its task's.
struct Open<'w>(&'w Worker);

impl<'w> Open<'w> {
    fn count(worker: &'w Worker) -> Self {
        worker.active.set(worker.active.get() + 1);
        worker
            .metrics
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Open(worker)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let worker = self.0;
        worker.active.set(worker.active.get() - 1);
        worker
            .metrics
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client's place among its open connections on this worker (`[client]
/// max_connections_per_client`), given back when dropped. Worker-local: no lock, no atomic.
struct ClientSlot<'w> {
    worker: &'w Worker,
    ip: std::net::IpAddr,
}

impl<'w> ClientSlot<'w> {
    /// A place for a connection from `peer`, or `None` when its client has the most allowed.
    /// Without a limit nothing is counted.
    fn take(worker: &'w Worker, peer: SocketAddr) -> Option<Option<ClientSlot<'w>>> {
        let limit = worker.snapshot().client.max_connections_per_client;
        if limit == 0 {
            return Some(None);
        }
        let ip = peer.ip().to_canonical();
        let mut open = worker.per_client.borrow_mut();
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Some(ClientSlot { worker, ip }))
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut open = self.worker.per_client.borrow_mut();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The PROXY stage: from a source in `from` only, reads the header (bounded by `[client]
/// header_timeout`, abandoned at shutdown). Returns the client address it carries (the
/// socket's own for LOCAL and UNKNOWN) and the bytes read after it; `None`: the connection is
/// to be closed (counted, logged at debug level: a scanner must not flood the log).
async fn proxy_stage(
    worker: &Worker,
    stream: &mut TcpStream,
    peer: SocketAddr,
    from: &[Cidr],
) -> Option<(SocketAddr, Vec<u8>)> {
    let source = peer.ip().to_canonical();
    if !from.iter().any(|c| c.contains(source)) {
        stats::PROXY_UNTRUSTED.inc();
        tracing::debug!(client = %peer, "PROXY protocol connection from outside proxy_protocol_from; closed");
        return None;
    }
    let deadline = Instant::now() + worker.snapshot().client.header_timeout;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Parsed::Done { len, addresses }) => {
                buf.drain(..len);
                return Some((addresses.map_or(peer, |a| a.source), buf));
            }
            Ok(Parsed::NeedMore) => {}
            Err(e) => {
                stats::PROXY_MALFORMED.inc();
                tracing::debug!(client = %peer, error = %e, "bad PROXY protocol header; connection closed");
                return None;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let read = pump::read_with_timeout(stream, &mut buf, left);
        let r = monoio::select! {
            r = read => r,
            _ = worker.stopping.wait() => return None,
        };
        match r {
            ReadResult::Data(_) => {}
            ReadResult::Timeout => {
                stats::PROXY_TIMEOUT.inc();
                tracing::debug!(client = %peer, "no PROXY protocol header in time; connection closed");
                return None;
            }
            ReadResult::Eof | ReadResult::Error => {
                stats::PROXY_CLOSED.inc();
                return None;
            }
        }
    }
}

/// What a plain connection speaks, with the bytes read so far (its protocol's first buffer).
enum Plain {
    Http1(Vec<u8>),
    Http2(Vec<u8>),
}

/// The protocol stage of a plain listener. With HTTP/2 on, the first bytes are read here: the
/// connection preface means HTTP/2 with prior knowledge, anything else is HTTP/1.1, which
/// starts with those bytes in its buffer (the same one read, so HTTP/1.1 pays nothing for it).
/// `buf`: bytes an earlier stage read (or an empty Vec without an allocation). `None`: the
/// connection is to be closed.
async fn plain_dispatch(worker: &Worker, stream: &mut TcpStream, peer: SocketAddr, mut buf: Vec<u8>) -> Option<Plain> {
    if buf.capacity() == 0 {
        // A spare buffer of the worker's (a new connection is not a reason to allocate one).
        buf = worker.bufs.take(Class::Input);
        buf.reserve(16 * 1024);
    }
    let snap = worker.snapshot();
    let (enabled, wait) = (snap.http2.enabled, snap.client.header_timeout);
    drop(snap);
    if enabled {
        let deadline = Instant::now() + wait;
        // Until the bytes stop looking like the preface (one read, nearly always).
        while buf.len() < h2::PREFACE.len() && h2::PREFACE.starts_with(&buf) {
            let left = deadline.saturating_duration_since(Instant::now());
            // (A read that times out leaves `buf` empty.)
            let partial = !buf.is_empty();
            let read = pump::read_with_timeout(stream, &mut buf, left);
            let r = monoio::select! {
                r = read => r,
                _ = worker.stopping.wait() => return None,
            };
            match r {
                ReadResult::Data(_) => {}
                ReadResult::Timeout if partial => {
                    stats::H2_PREFACE_TIMEOUT.inc();
                    tracing::debug!(client = %peer, "no complete HTTP/2 preface within the header timeout; closing");
                    return None;
                }
                ReadResult::Eof | ReadResult::Timeout | ReadResult::Error => return None,
            }
        }
        if buf.starts_with(h2::PREFACE) {
            return Some(Plain::Http2(buf));
        }
    }
    Some(Plain::Http1(buf))
}

/// The TLS stage: the handshake (bounded by `[tls] handshake_timeout`, abandoned at shutdown).
/// `None`: no TLS connection came of it. Failures are counted and logged at debug level: a scanner or a
/// client that gives up must not flood the log.
/// `early`: bytes an earlier stage read past its own (the start of the ClientHello).
/// The TLS handshake with the configuration of the connection's local address (`local`: its
/// Gateway scope's certificates, if any).
async fn tls_stage(
    worker: &Rc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    early: Vec<u8>,
) -> Option<TlsStream> {
    let snap = worker.snapshot();
    let Some(config) = snap.tls_for(local).cloned() else {
        stats::TLS_FAILED.inc();
        tracing::debug!(client = %peer, "no TLS configuration; connection closed");
        return None;
    };
    let handshake = monoio::time::timeout(snap.https.handshake_timeout, TlsStream::accept(stream, config, early));
    drop(snap);
    let done = monoio::select! {
        r = handshake => r,
        _ = worker.stopping.wait() => return None,
    };
    let stream = match done {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            match e {
                HandshakeError::Closed => stats::TLS_CLOSED.inc(),
                HandshakeError::PlainHttp => stats::TLS_PLAIN_HTTP.inc(),
                HandshakeError::Tls(_) | HandshakeError::Io(_) => stats::TLS_FAILED.inc(),
            }
            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            stats::TLS_TIMEOUT.inc();
            tracing::debug!(client = %peer, "TLS handshake timed out");
            return None;
        }
    };
    if stream.resumed() {
        stats::TLS_RESUMED.inc();
    } else {
        stats::TLS_FULL.inc();
    }
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns.
    fn future_size<A, B, C, D, E, Fut, F: FnOnce(A, B, C, D, E) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task holds the stages before a protocol loop, not the loop: starting a
    /// task copies its future several times, and a loop inline (kilobytes) would be copied
    /// with it on every new connection.
    #[test]
    fn connection_task_holds_no_protocol_loop() {
        let task = future_size(&connection);
        let h1 = future_size::<&'static Rc<Worker>, TcpStream, SocketAddr, SocketAddr, Vec<u8>, _, _>(
            &conn::serve::<TcpStream>,
        );
        assert!(task < h1 / 2, "connection task {task} bytes, HTTP/1.1 loop {h1}");
    }
}

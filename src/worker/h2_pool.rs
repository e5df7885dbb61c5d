//! Per-worker multiplexed HTTP/2 connections to gRPC endpoints (`backend-protocol: GRPC|GRPCS`):
//! one list of shared connections per endpoint and TLS settings, each carrying as many streams
//! as its server allows (SETTINGS_MAX_CONCURRENT_STREAMS); another connection opens when all are
//! full. Each connection is driven by a monoio task of its own (hyperium `h2`'s client over
//! `monoio-compat`'s adapter, on a plain or TLS upstream stream with ALPN `h2`).
//!
//! A connection that received GOAWAY, failed or closed takes no new stream (its in-flight
//! streams finish: `h2` keeps the connection until they end). Connections without a stream
//! for the upstream idle timeout are closed by [`H2Pool::sweep`]. Every [`PING_EVERY`] the
//! connection task sends a PING; a connection that does not answer within [`PING_TIMEOUT`] is
//! closed (a pod gone without a FIN would otherwise hold streams until their timeouts).

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use monoio_compat::StreamWrapper;
use rustc_hash::FxHashMap;

use super::error::{ErrorKind, RequestError};
use super::forward;
use super::pool::PoolKey;
use super::{Snapshot, Stopping, Worker};
use crate::routes::Backend;

/// How often an upstream connection is checked with a PING.
const PING_EVERY: Duration = Duration::from_secs(30);

/// How long the PING answer may take before the connection is given up.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// One shared HTTP/2 connection.
struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it (leases alive).
    open: Cell<usize>,
    /// No new stream may go here (GOAWAY received, failed, closed); set by the connection task
    /// or by a stream that could not be sent.
    closed: Rc<Cell<bool>>,
    /// When its last stream ended.
    idle_since: Cell<Instant>,
}

/// A stream's place on a connection, counted until dropped.
pub(super) struct Lease {
    conn: Rc<H2Conn>,
}

impl Lease {
    fn new(conn: Rc<H2Conn>) -> Lease {
        conn.open.set(conn.open.get() + 1);
        Lease { conn }
    }

    /// A handle to open the stream with (each clone waits for its own readiness).
    pub(super) fn sender(&self) -> SendRequest<Bytes> {
        self.conn.send.clone()
    }

    /// The connection takes no new stream (a stream could not be sent on it).
    pub(super) fn close(&self) {
        self.conn.closed.set(true);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let open = self.conn.open.get().saturating_sub(1);
        self.conn.open.set(open);
        if open == 0 {
            self.conn.idle_since.set(Instant::now());
        }
    }
}

/// The HTTP/2 upstream connections of one worker.
#[derive(Default)]
pub(super) struct H2Pool {
    /// Keys are upstream addresses from the route table, not client input: a fast hash is safe.
    conns: FxHashMap<PoolKey, Vec<Rc<H2Conn>>>,
    /// Connections being opened: streams for the same key wait for them rather than open
    /// their own.
    connecting: FxHashMap<PoolKey, Rc<Stopping>>,
}

/// Ends a connection attempt however it ends (success, failure, the stream dropped): the
/// streams waiting for it look again.
struct Connecting<'w> {
    worker: &'w Worker,
    key: PoolKey,
}

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        if let Some(signal) = self.worker.h2_pool.borrow_mut().connecting.remove(&self.key) {
            signal.fire();
        }
    }
}

impl H2Pool {
    /// A stream place on an open connection to `key` with room for one more stream.
    fn take(&mut self, key: PoolKey) -> Option<Lease> {
        let list = self.conns.get_mut(&key)?;
        list.retain(|c| !c.closed.get());
        let conn = list.iter().find(|c| c.open.get() < c.send.current_max_send_streams())?;
        Some(Lease::new(Rc::clone(conn)))
    }

    /// Closes connections that failed, and those without a stream for `idle_timeout` (the
    /// connection task ends once its last handle is gone).
    pub(super) fn sweep(&mut self, idle_timeout: Duration) {
        self.conns.retain(|_, list| {
            list.retain(|c| !c.closed.get() && (c.open.get() > 0 || c.idle_since.get().elapsed() < idle_timeout));
            !list.is_empty()
        });
    }

    /// Drops every connection (shutdown).
    pub(super) fn clear(&mut self) {
        self.conns.clear();
    }

    /// Someone is opening a connection to `key`: resolves when that attempt ended.
    fn pending(&self, key: PoolKey) -> Option<Rc<Stopping>> {
        self.connecting.get(&key).cloned()
    }
}

/// A stream place on a connection to `addr`: a shared one with room (waiting for one being
/// opened, if any), else a new connection (TCP, TLS with ALPN `h2` for GRPCS, the HTTP/2
/// preface) under `connect_timeout`, whose task is spawned on this worker.
pub(super) async fn lease(
    worker: &Worker,
    snap: &Snapshot,
    backend: &Backend,
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<Lease, RequestError> {
    let key = (addr, forward::tls_id(backend));
    loop {
        let pending = {
            let mut pool = worker.h2_pool.borrow_mut();
            if let Some(l) = pool.take(key) {
                return Ok(l);
            }
            pool.pending(key)
        };
        match pending {
            Some(signal) => signal.wait().await,
            None => break,
        }
    }
    worker
        .h2_pool
        .borrow_mut()
        .connecting
        .insert(key, Rc::new(Stopping::default()));
    let _connecting = Connecting { worker, key };
    let stream = forward::connect_new(backend, addr, connect_timeout).await?;
    let window = snap.http2.initial_window_size.max(1 << 20);
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(window)
        .initial_connection_window_size(window.saturating_mul(4))
        .max_send_buffer_size(256 * 1024);
    // Boxed: `StreamWrapper` lets a write run on after `poll_write` returned (the preface,
    // written during the handshake), through a pointer to the stream inside it; the
    // connection is moved after the handshake (into its task), so the stream must not move
    // with it.
    let handshake = builder.handshake::<_, Bytes>(Box::new(StreamWrapper::new(stream)));
    let (send, conn) = match monoio::time::timeout(connect_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(upstream = %addr, error = %e, "HTTP/2 handshake with upstream failed");
            return Err(ErrorKind::ConnectFailed.into());
        }
        Err(_) => return Err(ErrorKind::ConnectTimeout.into()),
    };
    let closed = Rc::new(Cell::new(false));
    let task_closed = Rc::clone(&closed);
    monoio::spawn(async move {
        drive(conn, addr).await;
        task_closed.set(true);
    });
    let c = Rc::new(H2Conn {
        send,
        open: Cell::new(0),
        closed,
        idle_since: Cell::new(Instant::now()),
    });
    let lease = Lease::new(Rc::clone(&c));
    worker.h2_pool.borrow_mut().conns.entry(key).or_default().push(c);
    Ok(lease)
}

/// Runs one upstream connection until it ends, with PING keepalive.
async fn drive<T>(mut conn: h2::client::Connection<T, Bytes>, addr: SocketAddr)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut ping = conn.ping_pong();
    let mut conn = std::pin::pin!(conn);
    loop {
        let tick = monoio::time::sleep(PING_EVERY);
        let ended = monoio::select! {
            r = &mut conn => Some(r),
            _ = tick => None,
        };
        if let Some(r) = ended {
            if let Err(e) = r {
                tracing::debug!(upstream = %addr, error = %e, "HTTP/2 upstream connection ended");
            }
            return;
        }
        let Some(p) = ping.as_mut() else { continue };
        let pong = monoio::time::timeout(PING_TIMEOUT, p.ping(h2::Ping::opaque()));
        let answered = monoio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(upstream = %addr, error = %e, "HTTP/2 upstream connection ended");
                }
                return;
            }
            r = pong => matches!(r, Ok(Ok(_))),
        };
        if !answered {
            tracing::debug!(upstream = %addr, "HTTP/2 upstream did not answer a PING; closing");
            return;
        }
    }
}

//! A listener's stages. Each accepted connection goes through them in order, as its
//! [`ListenerSpec`] says:
//!
//! ```text
//! accept ─▶ TLS handshake (tls = true; ALPN) ─▶ protocol dispatch ─▶ conn::serve (HTTP/1.1)
//! ```
//!
//! A PROXY-protocol stage belongs between accept and TLS; HTTP/2 is a second arm of the
//! dispatch (chosen by ALPN on TLS, by the connection preface on plain listeners).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;

use super::Worker;
use super::conn;
use super::session::ClientStream;
use super::tls::{HandshakeError, TlsStream};
use crate::config::ListenerSpec;
use crate::stats;

/// Accepts connections until shutdown and runs each through the listener's stages in a task
/// of its own.
pub(super) async fn accept_loop(worker: Rc<Worker>, listener: monoio::net::TcpListener, spec: ListenerSpec) {
    let port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = worker.stopping.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let w = Rc::clone(&worker);
                monoio::spawn(async move {
                    w.active.set(w.active.get() + 1);
                    w.metrics.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    connection(&w, stream, peer, port, spec).await;
                    w.active.set(w.active.get() - 1);
                    w.metrics.connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
            Err(e) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(worker = worker.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection through the stages after accept. `port`: the listener's port (for
/// X-Forwarded-Port).
async fn connection(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr, port: u16, spec: ListenerSpec) {
    if spec.tls {
        if let Some(tls) = tls_stage(worker, stream, peer).await {
            dispatch(worker, tls, peer, port).await;
        }
    } else {
        dispatch(worker, stream, peer, port).await;
    }
}

/// The protocol stage: hands the connection to the protocol it speaks. HTTP/1.1 is the only
/// one today (TLS listeners offer ALPN `http/1.1` alone).
async fn dispatch<S: ClientStream>(worker: &Rc<Worker>, stream: S, peer: SocketAddr, port: u16) {
    conn::serve(worker, stream, peer, port).await;
}

/// The TLS stage: the handshake (bounded by `[tls] handshake_timeout`, abandoned at shutdown).
/// `None`: no TLS connection came of it. Failures are counted and logged at debug level: a scanner or a
/// client that gives up must not flood the log.
async fn tls_stage(worker: &Rc<Worker>, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream> {
    let snap = worker.snapshot();
    let Some(config) = snap.tls.clone() else {
        stats::TLS_FAILED.inc();
        tracing::debug!(client = %peer, "no TLS configuration; connection closed");
        return None;
    };
    let handshake = monoio::time::timeout(snap.https.handshake_timeout, TlsStream::accept(stream, config));
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

//! A Gateway rule's RequestMirror: a copy of the upstream request head, and of its body when
//! the whole body came with the head and is at most [`MAX_BODY`] (a `Content-Length` body
//! already in the HTTP/1.1 read buffer: no byte is held back or read for it), sent to an
//! endpoint of each mirror backend from a task of its own; the answer's head is read and the
//! connection dropped. The client's request neither waits for it nor sees it fail. Other
//! requests with a body (larger, chunked, still arriving, or over HTTP/2) are not mirrored:
//! the body is streamed once, to the backend.

use std::net::SocketAddr;

use super::decide::Forward;
use super::forward;
use super::pump::{self, ReadResult};
use super::{Snapshot, Worker};
use crate::routes::Backend;

/// The largest request body mirrored.
pub(super) const MAX_BODY: u64 = 64 * 1024;

/// Starts the mirror copies of a request whose upstream head is `head` and whose whole body is
/// `body` (empty: none; `None`: a body that cannot be mirrored, see the module documentation).
/// Costs nothing for a rule without mirrors.
pub(super) fn send(worker: &Worker, snap: &Snapshot, f: &Forward<'_>, head: &[u8], body: Option<&[u8]>) {
    let Some(gw) = f.gw else { return };
    if gw.action.mirrors.is_empty() {
        return;
    }
    let Some(body) = body else { return };
    for &(id, percent) in &gw.action.mirrors {
        if percent < 100 && worker.random() % 100 >= u64::from(percent) {
            continue;
        }
        let Some(b) = snap.table.backends.get(id) else { continue };
        if b.endpoints.is_empty() || b.h2 {
            continue;
        }
        let n = b.endpoints.len() as u64;
        let addr = b.endpoints[usize::try_from(worker.random() % n).unwrap_or(0)];
        let backend = Backend {
            name: Box::default(),
            endpoints: Vec::new(),
            tls: b.tls.clone(),
            h2: false,
        };
        let up = &snap.upstream;
        let (connect, timeout) = (up.connect_timeout, up.read_timeout.min(up.send_timeout));
        let mut copy = Vec::with_capacity(head.len() + body.len());
        copy.extend_from_slice(head);
        copy.extend_from_slice(body);
        monoio::spawn(mirror(backend, addr, copy, connect, timeout));
    }
}

/// Sends `request` (head and body) to `addr` and reads the answer's head.
async fn mirror(
    backend: Backend,
    addr: SocketAddr,
    request: Vec<u8>,
    connect: std::time::Duration,
    timeout: std::time::Duration,
) {
    let Ok(mut up) = forward::connect_new(&backend, addr, connect).await else {
        tracing::debug!(mirror = %addr, "mirror connect failed");
        return;
    };
    match pump::write_all(&mut up, request, timeout).await {
        Ok((Ok(_), _)) => {}
        _ => return,
    }
    // Until the answer's head has come (or the mirror closes or stalls): then dropped.
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match pump::read_with_timeout(&mut up, &mut buf, timeout).await {
            ReadResult::Data(_) => {}
            ReadResult::Eof | ReadResult::Timeout | ReadResult::Error => return,
        }
    }
}

//! A Gateway rule's RequestMirror: a copy of the upstream request head, for a request without a
//! body, sent to an endpoint of each mirror backend from a task of its own; the answer's head is
//! read and the connection dropped. The client's request neither waits for it nor sees it
//! fail. Requests with a body are not mirrored (the body is streamed once, to the backend).

use std::net::SocketAddr;

use super::decide::Forward;
use super::forward;
use super::pump::{self, ReadResult};
use super::{Snapshot, Worker};
use crate::routes::Backend;

/// Starts the mirror copies of a request whose upstream head is `head`. Costs nothing for a
/// rule without mirrors.
pub(super) fn send(worker: &Worker, snap: &Snapshot, f: &Forward<'_>, head: &[u8], has_body: bool) {
    let Some(gw) = f.gw else { return };
    if gw.action.mirrors.is_empty() || has_body {
        return;
    }
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
        let head = head.to_vec();
        monoio::spawn(mirror(backend, addr, head, connect, timeout));
    }
}

async fn mirror(
    backend: Backend,
    addr: SocketAddr,
    head: Vec<u8>,
    connect: std::time::Duration,
    timeout: std::time::Duration,
) {
    let Ok(mut up) = forward::connect_new(&backend, addr, connect).await else {
        tracing::debug!(mirror = %addr, "mirror connect failed");
        return;
    };
    match pump::write_all(&mut up, head, timeout).await {
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
